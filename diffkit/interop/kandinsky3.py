"""Kandinsky 3 folders (``Kandinsky3Pipeline`` / ``Kandinsky3Img2ImgPipeline``, diffusers 0.42.1), sampled with
diffkit's samplers.

Kandinsky 3 (Arkhipkin et al. 2023, "Kandinsky 3.0 Technical Report") drops Kandinsky 2.2's prior: a latent
diffusion UNet (``Kandinsky3UNet``) cross-attends to a T5 encoder's states of the prompt, and the MoVQ of Kandinsky
2.2 (a ``VQModel``, :class:`~.kandinsky.KandinskyDecoder`: its decoder, its latent size rule, its scheduler step and
its img2img start are reused from :mod:`.kandinsky`) maps latents to pixels. As the pipelines compute it:

* the prompt (``encode_prompt`` with ``_cut_context=True``): T5-tokenised, padded / truncated to 128 tokens, encoded
  under its attention mask; the states at masked positions zeroed, then the batch cut to L = (the batch's longest
  mask) + 1 tokens (``process_embeds``), the mask cut with them. The UNet's ``Kandinsky3AttentionPooling`` averages
  the states over all L positions, so a prompt's image depends on L, i.e. on the longest prompt drawn in its batch
  (as the pipeline called with that batch's prompts); ``diffkit sample`` draws ``--batch-size`` rows at a time.
* the negative: without a negative prompt all-zero states under an all-zero mask (not the empty prompt's encoding);
  with one, its states cut to the prompt's L and zeroed where its own mask is 0.
* classifier-free guidance (Ho & Salimans 2022, eq. 6): eps = (1 + g) eps_c - g eps_u with the pipeline's
  ``guidance_scale`` g (default 3), i.e. diffkit's seed convention w = g (diffusers' convention s = g + 1), and
  none at all for g <= 1 (``do_classifier_free_guidance``); diffkit therefore takes w = 0 (one unguided call, no
  negative prompt) or w > 1, and refuses 0 < w <= 1 and w < 0 in one line rather than drawing what the pipeline
  cannot.
* the latents: z_T (B, 4, h, w) ~ N(0, I), h = ceil(H / 64) 8 for H pixels (``downscale_height_and_width(height,
  width, 8)``: the pipeline's fixed 8, whatever the MoVQ's factor f; the images are f h, which is H rounded up to 64
  for the released MoVQ's f = 8), default 1024 x 1024.
* the scheduler (:func:`folder_sampler`): the folder's ``DDPMScheduler`` (``variance_type="fixed_small"``: the UNet
  predicts no variance; its ``clip_sample`` / ``thresholding`` as :func:`.deepfloyd_if.folder_sampler` maps them) is
  diffkit's ``ddpm`` on its own timesteps, default 25 steps (a ``DDIMScheduler`` ``ddim``,
  :func:`.kandinsky.decoder_sampler`), on the folder's float32 alphas_cumprod
  (:func:`.deepfloyd_if.pipeline_schedule`). With ``steps_offset=1`` the DDPMScheduler's last step starts at t = 1
  and adds noise of std 1e-10 (:func:`.kandinsky.last_step_noise`): :func:`image_to_image` adds it as the pipeline
  does (:func:`.kandinsky.folder_loop`); :func:`text_to_image` (:func:`.pixart.text_to_image`'s loop) does not, a
  difference below 1e-9.
* the images: ``movq.decode(z, force_not_quantize=True)``, (x / 2 + 0.5).clamp(0, 1).

Img2img (:func:`image_to_image`, ``Kandinsky3Img2ImgPipeline``): the images (B, 3, H, W) in [-1, 1], H and W
multiples of the MoVQ's f (the pipeline's image processor floors other sizes), encoded by the MoVQ's encoder and
noised to the first of the last int(steps strength) timesteps (SDEdit, Meng et al. 2022; strength 0.3 by default),
then the rest of the loop: :func:`.kandinsky.strength_grid`, :func:`.kandinsky.noised_images`,
:func:`.kandinsky.folder_loop`, as Kandinsky 2.2's img2img. Row i draws from ``generator[i]`` (default seed + i).

Refused in one line before any weight is read (:func:`check_kandinsky3_folder`): another pipeline class, a missing
component, a UNet that is not a ``Kandinsky3UNet`` of 4 input channels (the pipelines' fixed latent channels) or a
MoVQ of other latent channels, a scheduler other than a DDPMScheduler with ``variance_type="fixed_small"`` or a
DDIMScheduler; ``max_sequence_length`` other than 128.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, read_json_object
from . import from_pretrained, library_progress_bars, require
from .kandinsky import KandinskyDecoder

K3_PIPELINE, K3_IMG2IMG_PIPELINE = "Kandinsky3Pipeline", "Kandinsky3Img2ImgPipeline"
K3_PIPELINES = (K3_PIPELINE, K3_IMG2IMG_PIPELINE)  # the same five components
K3_DEFAULTS = (3.0, 25)  # both pipelines' (guidance_scale g = diffkit's seed-convention w, num_inference_steps)
K3_SIZE = 1024  # Kandinsky3Pipeline's default height and width
K3_STRENGTH = 0.3  # Kandinsky3Img2ImgPipeline's default strength
K3_MAX_LENGTH = 128  # encode_prompt's fixed max_length
K3_DOWNSCALE = 8  # downscale_height_and_width(height, width, 8): fixed, not the MoVQ's factor
K3_CHANNELS = 4  # the pipeline's fixed latent channels
REQUIRED = ("tokenizer", "text_encoder", "unet", "scheduler", "movq")
MASK = "encoder_attention_mask"  # the cond key passed through to Kandinsky3UNet (.denoiser.DiffusersNet)


def kandinsky3_kind(path) -> Optional[str]:
    """``model_index.json``'s ``_class_name`` where it is :data:`K3_PIPELINE` or :data:`K3_IMG2IMG_PIPELINE`."""
    from .sd_xl import pipeline_class
    name = pipeline_class(path)
    return name if name in K3_PIPELINES else None


def is_kandinsky3_folder(path) -> bool:
    """True for a Kandinsky 3 folder (either pipeline's: both sample and edit)."""
    return kandinsky3_kind(path) is not None


def folder_sampler(config: dict) -> tuple:
    """(sampler, options) computing the folder's scheduler step on its own timesteps
    (:func:`.kandinsky.decoder_sampler`): a ``DDPMScheduler`` with ``variance_type="fixed_small"`` -> ``ddpm``, a
    ``DDIMScheduler`` -> ``ddim``; anything else (a learned variance: the UNet predicts none) one line."""
    from .kandinsky import decoder_sampler
    name, variance = config.get("_class_name"), config.get("variance_type", "fixed_small")
    if name not in ("DDPMScheduler", "DDIMScheduler") or name == "DDPMScheduler" and variance != "fixed_small":
        raise DiffkitError(f"the Kandinsky 3 folder's scheduler is a {name!r} with variance_type={variance!r}; "
                           f"allowed: a DDPMScheduler with variance_type 'fixed_small' (Kandinsky3UNet predicts no "
                           f"variance) or a DDIMScheduler")
    return decoder_sampler(config)


def check_kandinsky3_folder(directory) -> tuple:
    """(model_index dict, UNet config, scheduler config) of a Kandinsky 3 folder, checked from its JSON alone."""
    from .pixart import check_pipeline_folder
    directory = Path(directory)
    index = check_pipeline_folder(directory, kandinsky3_kind(directory) or K3_PIPELINE, "Kandinsky 3", REQUIRED, {
        "unet": ("Kandinsky3UNet",), "movq": ("VQModel",), "text_encoder": ("T5EncoderModel",)})
    unet = read_json_object(directory / "unet" / "config.json", "unet config")
    movq = read_json_object(directory / "movq" / "config.json", "movq config")
    channels = (unet.get("in_channels", K3_CHANNELS), movq.get("latent_channels", K3_CHANNELS))
    if channels != (K3_CHANNELS, K3_CHANNELS):
        raise DiffkitError(f"{directory}'s UNet in_channels and MoVQ latent_channels are {channels[0]!r}, "
                           f"{channels[1]!r}; allowed: {K3_CHANNELS}, {K3_CHANNELS} (the pipelines' fixed latents)")
    scheduler = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    folder_sampler(scheduler)
    return index, unet, scheduler


def guidance_w(scale: float, convention: str, negative_prompt=None, kind: str = "Kandinsky 3") -> float:
    """The pipelines' g of ``scale`` in ``convention``: diffkit's seed-convention w (module docstring); one line for
    0 < w <= 1 or w < 0 (the pipelines draw no such guidance), and for a negative prompt at w = 0. ``kind``: the
    folder kind the lines name (Cosmos Predict2's pipeline guides so too, :mod:`.cosmos2`)."""
    from ..guidance import guidance_weight
    w = guidance_weight(scale, convention)
    if w != 0 and w <= 1:
        raise DiffkitError(f"guidance scale {scale:g} ({convention} convention, w = {w:g}) is not allowed on a "
                           f"{kind} folder; allowed: w = 0 (none) or w > 1 (its pipelines' guidance_scale "
                           f"is w and guides only above 1)")
    if w == 0 and negative_prompt is not None:
        raise DiffkitError(f"negative_prompt needs guidance (w > 1; the {kind} pipelines ignore it without)")
    return w


@dataclass
class Kandinsky3(KandinskyDecoder):
    """The loaded components of a Kandinsky 3 folder (:func:`load_kandinsky3`): Kandinsky 2.2's decoder (the MoVQ,
    the UNet as an unguided denoiser, the scheduler) with the T5 encoder, and the interface of
    :class:`~.pixart.PixArt` that :func:`.pixart.text_to_image` and ``diffkit sample`` use."""

    text_encoder: object = None
    tokenizer: object = None

    default_guidance_scale = K3_DEFAULTS[0] + 1  # in diffusers' convention (pixart.text_to_image's default)
    default_steps = K3_DEFAULTS[1]
    default_size = K3_SIZE
    downscale = K3_DOWNSCALE
    latent_scale_factor = K3_DOWNSCALE  # pixels per latent in the size rule (flow_latents.start_latents)
    latents_are_flow_state = False
    max_sequence_length = K3_MAX_LENGTH

    @property
    def vae_scale_factor(self) -> int:
        return self.scale_factor

    def folder_sampler(self) -> tuple:
        return folder_sampler(self.scheduler_config)

    def scheduler_denoiser(self):
        return self.denoiser

    def scheduler_grid(self, steps: int) -> torch.Tensor:
        """diffkit's grid of the folder's scheduler after ``set_timesteps(steps)``."""
        from .pixart import own_scheduler_grid
        return own_scheduler_grid(self.scheduler_config, steps)

    def _encode(self, prompts: Sequence[str], length: Optional[int] = None) -> tuple:
        """(states, mask) of ``prompts``: T5 at 128 tokens, cut to ``length`` (default the batch's longest mask + 1)
        and zeroed where the mask is 0 (module docstring)."""
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=K3_MAX_LENGTH, truncation=True,
                                return_tensors="pt")
        mask = tokens.attention_mask.to(self.device)
        with torch.no_grad():
            states = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        length = int(mask.sum(-1).max()) + 1 if length is None else length
        mask = mask[:, :length]
        return states[:, :length] * mask.unsqueeze(2).to(states.dtype), mask

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: Optional[int] = None) -> tuple:
        """(context (B, L, d), mask (B, L)) of ``prompts`` as ``encode_prompt(_cut_context=True)``;
        ``max_sequence_length``: 128 or None (the pipelines' fixed length)."""
        from .stable_diffusion import prompt_list
        if max_sequence_length not in (None, K3_MAX_LENGTH):
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed on a Kandinsky 3 folder; "
                               f"allowed: {K3_MAX_LENGTH} (the pipelines' fixed T5 length)")
        return self._encode(prompt_list(prompts))

    def prompt_guidance(self, prompts, negative_prompt=None, guidance_scale: Optional[float] = None,
                        convention: str = "diffusers", max_sequence_length: Optional[int] = None,
                        size: Optional[tuple] = None, denoiser=None) -> tuple:
        """(denoiser, cond): the prompts' states and mask, guided (seed convention w > 1) against the negative
        prompt's, or the zero states under a zero mask (module docstring); w = 0: one unguided call. ``size``:
        unused (no size conditions)."""
        from ..guidance import ClassifierFreeGuidance
        from .stable_diffusion import negative_prompts
        scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        w = guidance_w(scale, convention, negative_prompt)
        context, mask = self.encode_prompts(prompts, max_sequence_length)
        denoiser, cond = denoiser or self.denoiser, {"context": context, MASK: mask}
        if w == 0:
            return denoiser, cond
        if negative_prompt is None:
            null_context, null_mask = torch.zeros_like(context), torch.zeros_like(mask)
        else:
            null_context, null_mask = self._encode(negative_prompts(negative_prompt, context.shape[0]),
                                                   context.shape[1])
        return ClassifierFreeGuidance(denoiser, w, "seed", null_context=null_context,
                                      null_cond={MASK: null_mask}), cond


def load_kandinsky3(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                    progress: bool = True) -> Kandinsky3:
    """Load a Kandinsky 3 folder (never downloading nor unpickling), checked first
    (:func:`check_kandinsky3_folder`)."""
    from .kandinsky import decoder_fields
    from .sd3 import _entry
    diffusers, transformers = require("diffusers"), require("transformers")
    directory = Path(directory)
    index, _, scheduler = check_kandinsky3_folder(directory)
    fields = decoder_fields(directory, index, scheduler, diffusers.Kandinsky3UNet, device, dtype, progress,
                            text_encoder=(transformers.T5EncoderModel, "text_encoder"))
    tok_cls = getattr(transformers, _entry(index, "tokenizer") or "", None) or transformers.AutoTokenizer
    with library_progress_bars(progress):
        tokenizer = from_pretrained(tok_cls, directory / "tokenizer", local_files_only=True)
    return Kandinsky3(**fields, tokenizer=tokenizer)


def text_to_image(model: Kandinsky3, prompts: Union[str, Sequence[str]], **options) -> torch.Tensor:
    """``Kandinsky3Pipeline(prompts, ...)``'s images (module docstring): :func:`.pixart.text_to_image` with its
    keywords (``guidance_scale`` in ``convention``, default the pipeline's g = 3 as diffusers' s = 4; ``steps``
    default 25; ``height`` / ``width`` default 1024; ``latents``; ``seed``: row i from seed + i, z_T then the steps'
    noise)."""
    from .pixart import text_to_image as draw
    return draw(model, prompts, **options)


def check_edit_images(model: Kandinsky3, images: torch.Tensor) -> None:
    """One line unless ``images`` are (B, 3, H, W) with H, W multiples of the MoVQ's factor f (the size
    ``Kandinsky3Img2ImgPipeline``'s image processor keeps; it floors other sizes)."""
    f = model.scale_factor
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] % f or images.shape[3] % f:
        raise DiffkitError(f"images of shape {tuple(images.shape)} are not allowed; give (B, 3, H, W) in [-1, 1] "
                           f"with H, W multiples of {f} (the MoVQ's factor)")


def image_to_image(model: Kandinsky3, images: torch.Tensor, prompts: Union[str, Sequence[str]], *,
                   strength: float = K3_STRENGTH, negative_prompt: Union[None, str, Sequence[str]] = None,
                   guidance_scale: Optional[float] = None, convention: str = "diffusers", steps: Optional[int] = None,
                   seed: Optional[int] = 0, generator=None, output_range: str = "0,1", return_latents: bool = False,
                   progress: bool = False) -> torch.Tensor:
    """``Kandinsky3Img2ImgPipeline(prompts, image=images, strength, ...)`` (module docstring): ``images`` (B, 3, H,
    W) in [-1, 1], H and W multiples of the MoVQ's factor; ``prompts`` one or one per image; guidance as
    :meth:`Kandinsky3.prompt_guidance`; 25 steps by default, of which int(steps strength) are run."""
    from ..errors import check_choice
    from .flow_latents import finish_images
    from .kandinsky import _generators, folder_loop, noised_images, strength_grid
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    grid = strength_grid(model, strength, steps)
    check_edit_images(model, images)
    prompts = prompt_list(prompts)
    if len(prompts) not in (1, images.shape[0]):
        raise DiffkitError(f"{len(prompts)} prompts for {images.shape[0]} images; give one or one per image")
    prompts = prompts * images.shape[0] if len(prompts) == 1 else prompts
    denoiser, cond = model.prompt_guidance(prompts, negative_prompt, guidance_scale, convention)
    generators = _generators(generator, seed, images.shape[0])
    z = folder_loop(model, denoiser, noised_images(model, images, grid, generators), grid, generators, cond, progress)
    return finish_images(model, z, return_latents, output_range)


__all__ = ["Kandinsky3", "load_kandinsky3", "text_to_image", "image_to_image", "check_kandinsky3_folder",
           "folder_sampler", "guidance_w", "kandinsky3_kind", "check_edit_images", "is_kandinsky3_folder",
           "K3_PIPELINE", "K3_IMG2IMG_PIPELINE", "K3_DEFAULTS", "K3_STRENGTH"]
