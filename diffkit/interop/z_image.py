"""A Z-Image diffusers folder (``ZImagePipeline`` / ``ZImageImg2ImgPipeline`` / ``ZImageInpaintPipeline``, diffusers
0.42.1), sampled and edited with any diffkit sampler.

Z-Image (Z-Image Team 2025, "Z-Image: An Efficient Image Generation Foundation Model with Single-Stream Diffusion
Transformer") is a single-stream DiT (``ZImageTransformer2DModel``, S3-DiT: text and image tokens in one sequence)
trained with flow matching (x_s = (1 - s) x_0 + s eps, Esser et al. 2024, Sec. 2, eq. 1) on FLUX.1's 16-channel
``AutoencoderKL`` (``scaling_factor``, ``shift_factor``) and conditioned on a Qwen3 model's states. diffkit runs it
as a flow-prediction :class:`~diffkit.denoiser.Denoiser` with FLUX.1's shapes, grid and editing (:class:`ZImage` is
a :class:`.chroma.Chroma`, so :func:`.chroma.text_to_image` / :func:`.chroma.image_to_image` drive it). Every
diffusers 0.42.1 pipeline step is reproduced:

* prompts (``_encode_prompt``): each prompt becomes the tokenizer's chat template of one user message
  (``apply_chat_template(add_generation_prompt=True, enable_thinking=True)``), tokenised to ``max_sequence_length``
  tokens (default 512; padding as the tokenizer pads), encoded by the Qwen3 model under that mask, and its
  **second-to-last** hidden states (``hidden_states[-2]``) kept at the real tokens only: a variable-length list.
  diffkit keeps the padded states with the mask in cond and selects the same rows for every call
  (:class:`ZImageNet`). The negative prompt (default "") is encoded the same way, only where guidance is on.
* the transformer takes lists of latents (C, 1, h, w) and of those states; its time runs the other way, called at
  ``(1000 - t) / 1000`` = 1 - s (0 noise, 1 image), and it returns x_0 - eps: the velocity is u = -output (the
  pipeline's ``noise_pred = -noise_pred``), as Lumina-Image 2.0's (:class:`.lumina2.Lumina2Net`, whose guided call
  :class:`ZImageNet` reuses).
* guidance (``guidance_scale`` W, default 5.0, is the weight itself: v = v_c + W (v_c - v_u), diffkit's "seed"
  convention; CFG for W > 0, the pipeline's ``do_classifier_free_guidance``; W <= 0: the conditional call alone).
  ``cfg_normalization`` k (default off; True is 1): where ||v|| > k ||v_c|| (norms over each sample's whole
  prediction) v is scaled down to k ||v_c||. ``cfg_truncation`` r (default 1; above 1: off): a step whose
  ``(1000 - t) / 1000`` exceeds r runs the conditional call alone. diffkit guides at flow times s >= the midpoint
  between the last guided and the first unguided sigma of the pipeline's schedule (:func:`.lumina2.guided_from`),
  exactly those steps on its grid (img2img's cut of it too).
* the scheduler: ``FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas=linspace(1, 1/N, N), mu=mu)`` (default N =
  50) with mu = FLUX.1's ``calculate_shift`` of (h / 2)(w / 2) (:meth:`.flux.Flux.scheduler_grid`; it matters only
  with ``use_dynamic_shifting``: Z-Image-Turbo's folder has a fixed ``shift`` 3), flow Euler ``ddim`` its step.
* latents (B, C, h, w) = (B, in_channels, H / f, W / f), f the VAE's factor, H and W multiples of 2 f (default
  1024); drawn in float32; decoding x = D(z / scaling_factor + shift_factor).
* img2img (``ZImageImg2ImgPipeline``: strength 0.6, 50 steps) and inpainting (``ZImageInpaintPipeline``: strength
  1.0, 50 steps; the mask binarised and nearest-resized to the latents, the kept region blended back at
  ``scale_noise(z, next sigma, noise)`` after each step; its masked-image latents feed nothing): FLUX.1's
  (:func:`.flow_latents.edit_latents`), image i's posterior from its generator, then its noise.

A ``ZImageOmniPipeline`` folder (SigLIP inputs, condition images) is :mod:`.z_image_omni`'s (:func:`load_z_image`
dispatches there). Refused in one line before any weight is read (:func:`check_z_image_folder`): another pipeline
class (the ControlNet ones), a missing component, a transformer / VAE / scheduler of another class, a transformer
with SigLIP inputs (Omni's) or whose input channels are not the VAE's latent channels, a ``num_train_timesteps``
other than 1000 (the pipeline's time is ``(1000 - t) / 1000``), the scheduler options FLUX.1's loop refuses.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import model_dtype, require
from .chroma import Chroma
from .lumina2 import Lumina2Net

Z_IMAGE_TRANSFORMER = "ZImageTransformer2DModel"
Z_IMAGE_PIPELINES = ("ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline")  # one folder layout
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
Z_IMAGE_OMNI_PIPELINE = "ZImageOmniPipeline"  # :mod:`.z_image_omni`: and its SigLIP
OMNI_REQUIRED = ("siglip", "siglip_processor")
Z_IMAGE_GUIDANCE = 5.0  # the pipelines' default guidance_scale (the weight W)
Z_IMAGE_STEPS = 50  # their default num_inference_steps
MAX_SEQUENCE_LENGTH = 512  # their default max_sequence_length


def is_z_image_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names a ``ZImage...`` pipeline (so that ``diffkit sample`` /
    ``diffkit edit`` dispatch; Omni's: :mod:`.z_image_omni`; the ControlNet ones are refused there in one line)."""
    from .sd_xl import pipeline_class
    return str(pipeline_class(path) or "").startswith("ZImage")


def check_z_image_folder(directory, omni: bool = False) -> tuple:
    """(model_index dict, scheduler config) of a Z-Image folder that :func:`load_z_image` drives (``omni``: a
    ``ZImageOmniPipeline`` folder, :mod:`.z_image_omni`: its SigLIP too), checked from its JSON alone; a one-line
    DiffkitError for what diffkit does not drive (module docstring)."""
    from .flow_latents import check_flow_configs
    from .flux import check_flux_scheduler
    from .sd_xl import _index
    directory = Path(directory)
    index = _index(directory)
    name = None if index is None else index.get("_class_name")
    allowed = (Z_IMAGE_OMNI_PIPELINE,) if omni else Z_IMAGE_PIPELINES
    if name not in allowed:
        raise DiffkitError(f"{directory} is a {name!r} folder, which diffkit does not drive here; allowed: "
                           f"{', '.join(allowed)}")
    vae, transformer = check_flow_configs(directory, index, REQUIRED + (OMNI_REQUIRED if omni else ()), "Z-Image",
                                          Z_IMAGE_TRANSFORMER)
    if (transformer.get("siglip_feat_dim") is not None) != omni:
        raise DiffkitError(f"{directory}'s transformer has siglip_feat_dim={transformer.get('siglip_feat_dim')!r} "
                           f"(Z-Image Omni's image inputs, which diffkit drives in {Z_IMAGE_OMNI_PIPELINE} folders "
                           f"only); allowed: {'a number' if omni else 'null'}")
    latents, channels = int(vae.get("latent_channels", 4)), transformer.get("in_channels", 16)
    if channels != latents:
        raise DiffkitError(f"{directory}'s transformer has in_channels={channels!r}; allowed: {latents} (the VAE's "
                           f"latent channels)")
    sched = check_flux_scheduler(directory, "ZImagePipeline")
    if sched.get("num_train_timesteps", 1000) != 1000:
        raise DiffkitError(f"{directory}'s scheduler has num_train_timesteps={sched['num_train_timesteps']!r}; "
                           f"allowed: 1000 (ZImagePipeline calls the transformer at (1000 - t) / 1000)")
    return index, sched


class ZImageNet(Lumina2Net):
    """``net(x, t, context, mask, null_context=None, null_mask=None)`` over a ``ZImageTransformer2DModel``: each
    sample's latents (C, 1, h, w) and its states at ``mask`` (the pipeline's variable-length list), the velocity
    u = -transformer(x, 1 - t / T, ...), guided as the pipelines (module docstring: ``scale`` s = 1 + W, ``normalize``
    k (0: off), ``trunc_sigma``)."""

    def _call(self, x, time, context, mask):
        dtype = model_dtype(self.model)
        states = [row[keep.bool()].to(dtype) for row, keep in zip(context.expand(x.shape[0], -1, -1),
                                                                  mask.expand(x.shape[0], -1))]
        latents = list(x.to(dtype).unsqueeze(2).unbind(0))
        out = self.model(latents, time, states, controlnet_block_samples=self.hints(latents, time, states),
                         return_dict=False)[0]
        return torch.stack([o.float() for o in out]).squeeze(2).to(x.dtype)

    def hints(self, latents: list, time, states: list) -> Optional[dict]:
        """A ControlNet's ``controlnet_block_samples`` of this call: none here (:mod:`.z_image_controlnet`)."""
        return None

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The pipelines' ``(1000 - t) / 1000`` in float32 (T = 1000), rounded as theirs."""
        return (self.T - t) / self.T

    def combine(self, out: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        """v_c + W (v_c - v_u) with W = s - 1, its norm capped at k ||v_c|| per sample (``cfg_normalization``; not
        :func:`diffkit.guidance.norm_matched_cfg`, Lumina2's / Qwen-Image's, which rescales every row of the last
        axis to ||v_c||)."""
        pred = out + (self.scale - 1) * (out - uncond)
        if self.normalize:
            ceiling = self.normalize * torch.linalg.vector_norm(out.flatten(1), dim=1)
            norm = torch.linalg.vector_norm(pred.flatten(1), dim=1)
            factor = torch.where(norm > ceiling, ceiling / norm, torch.ones_like(norm))  # (the pipeline's if)
            pred = pred * factor.reshape(-1, *[1] * (out.ndim - 1))
        return pred


@dataclass
class ZImage(Chroma):
    """The loaded components of a Z-Image folder (:func:`load_z_image`): :class:`.chroma.Chroma`'s (FLUX.1's shapes,
    grid, VAE) with the Qwen3 model as ``text_encoder``, Z-Image's network, prompts, guidance and defaults."""

    default_image_size = 1024  # the pipelines' height / width
    default_steps = Z_IMAGE_STEPS
    img2img_defaults = (Z_IMAGE_STEPS, 0.6, None, MAX_SEQUENCE_LENGTH)  # ZImageImg2ImgPipeline's
    inpaint_defaults = (Z_IMAGE_STEPS, 1.0, None, MAX_SEQUENCE_LENGTH)  # ZImageInpaintPipeline's
    guidance_hint = f"the CFG weight W, > 0 guides; the pipeline's default {Z_IMAGE_GUIDANCE}"

    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    def check_patches(self, h: int, w: int) -> None:
        """A one-line DiffkitError for latents h x w with more than ``axes_lens`` patches a side (the
        transformer's rotary table; past it diffusers fails with an IndexError)."""
        config = self.transformer.config
        patch, lens, f = int(config.all_patch_size[0]), list(config.axes_lens), self.vae_scale_factor
        for name, side, most in (("height", h, lens[1]), ("width", w, lens[2])):
            if side // patch > most:
                raise DiffkitError(f"{name} {side * f} is not allowed; give at most {most * patch * f} (the "
                                   f"transformer's axes_lens {most} patches of {patch * f} pixels)")

    def network(self) -> torch.nn.Module:
        return ZImageNet(self.transformer, 1000)

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> tuple:
        """(states (B, L, d), mask (B, L) bool) as the pipelines' ``_encode_prompt``: the chat template, L =
        ``max_sequence_length`` tokens, Qwen3's second-to-last hidden states (module docstring)."""
        from .stable_diffusion import prompt_list
        texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                    add_generation_prompt=True, enable_thinking=True)
                 for text in prompt_list(prompts)]
        return self.encoded_texts(texts, max_sequence_length)

    def encoded_texts(self, texts: list, max_sequence_length: int) -> tuple:
        """(Qwen3's second-to-last states (B, L, d), mask (B, L) bool) of templated ``texts`` padded / cut to L =
        ``max_sequence_length`` tokens (positive, and within the transformer's caption positions)."""
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) \
                or max_sequence_length < 1:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed; give a positive integer "
                               f"(ZImagePipeline's default {MAX_SEQUENCE_LENGTH})")
        most = int(self.transformer.config.axes_lens[0]) - 1  # the text's positions 1 .. L (padded to 32)
        if -(-max_sequence_length // 32) * 32 > most:
            raise DiffkitError(f"max_sequence_length={max_sequence_length} is not allowed; give at most "
                               f"{most // 32 * 32} (the transformer's axes_lens {most + 1} positions)")
        tokens = self.tokenizer(texts, padding="max_length", max_length=max_sequence_length, truncation=True,
                                return_tensors="pt")
        mask = tokens.attention_mask.to(self.device).bool()
        with torch.no_grad():
            out = self.text_encoder(input_ids=tokens.input_ids.to(self.device), attention_mask=mask,
                                    output_hidden_states=True)
        return out.hidden_states[-2], mask

    def guided_denoiser(self, h: int, w: int, scale: float = 1.0, normalize: float = 0.0,
                        trunc_sigma: Optional[float] = None):
        """The flow-prediction Denoiser of :class:`ZImageNet` (s = ``scale``) on the flow schedule of latents h x w
        (:meth:`.flux.Flux.denoiser_for`'s)."""
        key = (self.shift(h, w), float(scale), float(normalize), trunc_sigma)
        if key not in self._denoisers:
            from ..denoiser import Denoiser
            schedule = self.denoiser_for(h, w).schedule
            self._denoisers[key] = Denoiser(ZImageNet(self.transformer, 1000, *key[1:]), schedule, "flow_prediction")
            self._denoisers[key].model = self.transformer
        return self._denoisers[key]

    def trunc_sigma(self, cfg_truncation: float, steps: int, h: int, w: int) -> Optional[float]:
        """The flow time from which guidance runs under ``cfg_truncation`` r with the pipeline's ``steps``-step
        schedule at latents h x w: steps with (1000 - t) / 1000 <= r are guided (all for r > 1), as the pipeline
        computes it in float32 (:func:`.lumina2.guided_from`)."""
        import math
        if isinstance(cfg_truncation, bool) or not isinstance(cfg_truncation, (int, float)) \
                or not math.isfinite(cfg_truncation):
            raise DiffkitError(f"cfg_truncation={cfg_truncation!r} is not allowed; give a finite number (steps with "
                               f"(1000 - t) / 1000 above it are not guided; default 1)")
        if cfg_truncation > 1:
            return None
        from .lumina2 import guided_from
        sigmas = self.scheduler_sigmas(steps, h, w)
        t = (sigmas[:-1] * 1000).to(torch.float32)  # the scheduler's timesteps
        return guided_from(sigmas, int(((1000 - t) / 1000 <= cfg_truncation).sum()))

    def prompt_guidance(self, prompts, h: int, w: int, guidance_scale: Optional[float] = None,
                        negative_prompt=None, max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                        convention: str = "seed", ip_adapter=None, cfg_normalization: Union[bool, float] = False,
                        cfg_truncation: float = 1.0, steps: int = Z_IMAGE_STEPS, controlnets=None,
                        control_rows=None, control_inpaint: Optional[tuple] = None,
                        references: Optional[tuple] = None) -> tuple:
        """(denoiser, cond) at latents h x w of the pipelines' guidance (module docstring): ``guidance_scale`` W
        (default 5.0 whatever ``convention``; ``convention="diffusers"`` reads s = 1 + W) against
        ``negative_prompt`` (None: ""; one, or one per prompt), ``cfg_normalization``, ``cfg_truncation`` of the
        pipeline's ``steps``-step schedule. W <= 0: unguided (a negative prompt is then refused, the pipeline
        ignores it). ``ip_adapter``: refused (the pipelines take none). ``controlnets``: a ``ZImageControlNetModel``
        (:class:`~.controlnet.ControlNets`; ``control_rows``: each sample's control image where there is one per
        prompt) as ``ZImageControlNetPipeline`` (:func:`.z_image_controlnet.controlled`; ``control_inpaint``: (images,
        mask) as ``ZImageControlNetInpaintPipeline``). ``references``: a Z-Image Omni folder's condition images
        (:func:`.z_image_omni.omni_references`), seen by its prompts and network."""
        import math
        from ..guidance import guidance_weight
        from .stable_diffusion import negative_prompts
        if ip_adapter is not None:
            raise DiffkitError("ZImagePipeline takes no IP-Adapter; drop it")
        weight = Z_IMAGE_GUIDANCE if guidance_scale is None else guidance_weight(guidance_scale, convention)
        if isinstance(cfg_normalization, bool):
            cfg_normalization = float(cfg_normalization)
        if not isinstance(cfg_normalization, (int, float)) or not math.isfinite(cfg_normalization) \
                or cfg_normalization < 0:
            raise DiffkitError(f"cfg_normalization={cfg_normalization!r} is not allowed; give False (off), True or "
                               f"a number k > 0 (the guided prediction's norm capped at k times the conditional's)")
        self.check_patches(h, w)
        if controlnets is not None:  # one line before the prompts are encoded
            from .z_image_controlnet import check_z_image_controlnets
            check_z_image_controlnets(controlnets, self.transformer, control_inpaint is not None)
        trunc = self.trunc_sigma(cfg_truncation, steps, h, w)
        if weight <= 0 and negative_prompt is not None:
            raise DiffkitError(f"a negative prompt with guidance weight W={weight:g} is not allowed: it feeds only "
                               f"CFG (W > 0); raise the scale or drop it")
        seen = {} if references is None else {"references": references}  # (Z-Image Omni's, .z_image_omni)
        context, mask = self.encode_prompts(prompts, max_sequence_length, **seen)
        cond = {"context": context, "mask": mask}
        if weight <= 0:
            denoiser = self.guided_denoiser(h, w, **seen)
        else:
            cond["null_context"], cond["null_mask"] = self.encode_prompts(
                negative_prompts(negative_prompt, context.shape[0]), max_sequence_length, **seen)
            denoiser = self.guided_denoiser(h, w, 1 + weight, cfg_normalization, trunc, **seen)
        if controlnets is None:
            return denoiser, cond
        from .z_image_controlnet import controlled
        return controlled(self, denoiser, cond, controlnets, h, w, control_rows, control_inpaint)


def load_z_image(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                 progress: bool = True, lora=None) -> ZImage:
    """Load a Z-Image diffusers folder (never downloads, never unpickles); what diffkit does not drive is refused in
    one line before any weight is read (:func:`check_z_image_folder`). ``lora``: LoRA files (paths or (path, scale)
    pairs) of the transformer, read, converted and checked first (:func:`.z_image_lora.read_z_image_loras`: diffusers
    / PEFT, kohya, ``diffusion_model.`` keys), fused as ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)``
    (:func:`.sd_lora.merge_sd_loras`)."""
    from .flow_latents import load_one_text_folder
    from .qwen_image_lora import transformer_loras
    from .sd_lora import merge_sd_loras
    from .z_image_lora import read_z_image_loras
    from .sd_xl import pipeline_class
    diffusers = require("diffusers")
    directory = Path(directory)
    if pipeline_class(directory) == Z_IMAGE_OMNI_PIPELINE:  # its SigLIP too (.z_image_omni)
        from .z_image_omni import load_z_image_omni
        return load_z_image_omni(directory, device, dtype, progress, lora)
    index, sched = check_z_image_folder(directory)
    loras = read_z_image_loras(lora) if lora else []
    model = load_one_text_folder(ZImage, directory, index, sched, diffusers.ZImageTransformer2DModel, "Qwen3Model",
                                 device, dtype, progress, "cap_feat_dim")
    merge_sd_loras(model, transformer_loras(loras, model.transformer, "Z-Image"))  # a LoKr file: kohya names placed
    return model


def _guide(steps, defaults: int, cfg_normalization, cfg_truncation, controlnets=None, control_rows=None,
           control_inpaint=None) -> dict:
    """:meth:`ZImage.prompt_guidance`'s own options, with the steps of the pipeline's schedule (and a ControlNet)."""
    return {"cfg_normalization": cfg_normalization, "cfg_truncation": cfg_truncation,
            "steps": defaults if steps is None else steps, **({} if controlnets is None else {
                "controlnets": controlnets, "control_rows": control_rows, "control_inpaint": control_inpaint})}


def text_to_image(zimage: ZImage, prompts: Union[str, Sequence[str]], *, steps: Optional[int] = None,
                  convention: str = "seed", max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                  cfg_normalization: Union[bool, float] = False, cfg_truncation: float = 1.0, controlnets=None,
                  control_rows=None, control_inpaint: Optional[tuple] = None, references: Optional[tuple] = None,
                  **options):
    """Images of a Z-Image folder for ``prompts`` as ``ZImagePipeline``: :func:`.chroma.text_to_image` (sampler /
    grid, steps (default 50), ``guidance_scale`` (W, default 5.0, in ``convention``), negative prompt, latents,
    height / width (default 1024), output options) with the pipeline's ``cfg_normalization`` and ``cfg_truncation``
    (of its ``steps``-step schedule; :meth:`ZImage.prompt_guidance`); ``controlnets``: a ``ZImageControlNetModel``
    with its control image as ``ZImageControlNetPipeline`` (:mod:`.z_image_controlnet`; the pipeline's scale 0.75
    is given as the :class:`~.controlnet.ControlNets`' ``scales``; ``control_inpaint``: :func:`image_to_image`'s);
    ``references``: a Z-Image Omni folder's condition images (:func:`.z_image_omni.text_to_image`)."""
    from .chroma import text_to_image as chroma_text_to_image
    guide = _guide(steps, zimage.default_steps, cfg_normalization, cfg_truncation, controlnets, control_rows,
                   control_inpaint)
    if references is not None:
        guide["references"] = references
    return chroma_text_to_image(zimage, prompts, steps=steps, convention=convention,
                                max_sequence_length=max_sequence_length, guide=guide, **options)


def image_to_image(zimage: ZImage, images: torch.Tensor, prompts: Union[str, Sequence[str]],
                   strength: Optional[float] = None, *, steps: Optional[int] = None, convention: str = "seed",
                   mask: Optional[torch.Tensor] = None, cfg_normalization: Union[bool, float] = False,
                   cfg_truncation: float = 1.0, controlnets=None, control_rows=None, **options):
    """SDEdit of ``images`` (B, 3, H, W) in [-1, 1] as ``ZImageImg2ImgPipeline`` (strength 0.6, 50 steps), or with
    ``mask`` (1 = repaint) inpainting as ``ZImageInpaintPipeline`` (strength 1.0): :func:`.chroma.image_to_image`
    (FLUX.1's img2img / replacement inpainting, :func:`.flow_latents.edit_latents`) with Z-Image's prompts and
    guidance (:meth:`ZImage.prompt_guidance`; ``guidance_scale`` W in ``convention``, default "seed"). With
    ``controlnets`` (a Union 2.0 / 2.1 ``ZImageControlNetModel``; ``control_rows``: each image's control image where
    there is one per image) and ``mask``: ``ZImageControlNetInpaintPipeline``
    (:func:`.z_image_controlnet.controlnet_inpaint`: from noise, no strength)."""
    from .chroma import image_to_image as chroma_image_to_image
    if controlnets is not None:
        from .z_image_controlnet import controlnet_inpaint
        return controlnet_inpaint(zimage, images, prompts, mask, controlnets, strength, control_rows, steps=steps,
                                  convention=convention, cfg_normalization=cfg_normalization,
                                  cfg_truncation=cfg_truncation, **options)
    guide = _guide(steps, zimage.default_steps, cfg_normalization, cfg_truncation)
    return chroma_image_to_image(zimage, images, prompts, strength, steps=steps, convention=convention, mask=mask,
                                 guide=guide, **options)


__all__ = ["ZImage", "ZImageNet", "load_z_image", "is_z_image_folder", "check_z_image_folder", "text_to_image",
           "image_to_image", "Z_IMAGE_GUIDANCE", "Z_IMAGE_STEPS", "Z_IMAGE_PIPELINES"]
