"""A HunyuanImage 2.1 refiner folder (``HunyuanImageRefinerPipeline``, diffusers 0.42.1), run with any diffkit sampler.

The refiner redraws an image (HunyuanImage 2.1's second stage) with the base model's transformer class
(``HunyuanImageTransformer2DModel``, 3-D patches over one latent frame, a guidance embedding) on the latents of a 16x
video VAE (``AutoencoderKLHunyuanImageRefiner``), conditioned on Qwen2.5-VL and on the image: diffkit runs it as a
:class:`.hunyuan_image.HunyuanImage` (the same network, guider arithmetic, grid and flow Euler ``ddim`` as the
pipeline's step). What is the refiner's own, as ``HunyuanImageRefinerPipeline.__call__``:

* prompts: a Llama-3-style system template, 256 + 36 tokens, Qwen2.5-VL's hidden state -3 with the first 36
  dropped, and the mask; no glyph encoder.
* the image (B, 3, H, W) in [-1, 1] as one frame: its VAE posterior **sample** e (B, C, 1, h, w), the first frame
  repeated and the two frames folded into the channels, e' = fold([e, e]) (B, 2C, h, w) (``_reorder_image_tokens``),
  times ``scaling_factor``; the condition c = 0.25 n + 0.75 e' (``prepare_latents``' fixed strength) with a second
  draw n, concatenated to the noisy latents on the channels at every call.
* draws, per sample i from one generator (``seed + i``, or ``generator``): the posterior sample, then z at s = 1, then
  n, as the pipeline draws them with a list of generators.
* guidance: the embedded 1000 x ``distilled_guidance_scale`` (default 3.25) on every call; the folder's ``guider``
  as the base pipeline's (CFG, then APG; none in the released folder).
* the grid: ``set_timesteps(sigmas=linspace(1, 0, N + 1)[:-1])`` with the fixed shift, default **4** steps.
* decoding: z / ``scaling_factor``, its channels unfolded into two frames, the first dropped, the VAE's decode of
  the other.

Refused in one line before any weight is read: a component of another class, a transformer whose input is not 4 x
(output 2 x) the VAE's latent channels or whose patches are not 3-D with a temporal patch of 1, a
``use_dynamic_shifting`` scheduler, the guider options :mod:`.hunyuan_image` refuses. Also refused: a mask
(no inpainting), a ``strength`` (the pipeline's noise mix is fixed), the posterior mean, LoRA files, adapters.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import require
from .hunyuan_image import HUNYUAN_IMAGE_TRANSFORMER, HIDDEN_STATE, HunyuanImage, _guider_config

REFINER_PIPELINE = "HunyuanImageRefinerPipeline"
REFINER_CLASSES = {"transformer": (HUNYUAN_IMAGE_TRANSFORMER,), "vae": ("AutoencoderKLHunyuanImageRefiner",),
                   "text_encoder": ("Qwen2_5_VLForConditionalGeneration",),
                   "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
REFINER_STEPS = 4  # __call__'s default num_inference_steps
REFINER_NOISE = 0.25  # prepare_latents' strength: the condition's share of fresh noise
REFINER_TEMPLATE = ("<|start_header_id|>system<|end_header_id|>\n\nDescribe the image by detailing the color, shape, "
                    "size, texture, quantity, text, spatial relationships of the objects and background:<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>")  # its prompt_template_encode
REFINER_DROP = 36  # its prompt_template_encode_start_idx
REFINER_MAX_LENGTH = 256  # its tokenizer_max_length


def fold_frames(e: torch.Tensor) -> torch.Tensor:
    """(B, 2C, h, w) of one-frame latents e (B, C, 1, h, w): the frame repeated, the two frames folded into the
    channels frame-major (``_reorder_image_tokens``)."""
    b, c, _, h, w = e.shape
    return torch.cat([e, e], dim=2).permute(0, 2, 1, 3, 4).reshape(b, 2 * c, h, w)


def unfold_frames(z: torch.Tensor) -> torch.Tensor:
    """(B, C, 1, h, w) of latents z (B, 2C, h, w): the channels split into two frames, the first dropped
    (``_restore_image_tokens_order``)."""
    b, c, h, w = z.shape
    return z.reshape(b, 2, c // 2, h, w).permute(0, 2, 1, 3, 4)[:, :, 1:]


@dataclass
class HunyuanImageRefiner(HunyuanImage):
    """The loaded components of a ``HunyuanImageRefinerPipeline`` folder (:func:`load_hunyuan_image_refiner`):
    a :class:`.hunyuan_image.HunyuanImage` with the refiner's prompts, latents, VAE and defaults (no glyph encoder:
    ``text_encoder_2`` None)."""

    default_steps = REFINER_STEPS
    img2img_defaults = (REFINER_STEPS, REFINER_NOISE, None, None)  # (diffkit edit's summary line: the noise mix)

    @property
    def default_image_size(self) -> int:
        return 64 * self.vae_scale_factor  # its default_sample_size 64

    @property
    def meanflow(self) -> bool:
        return False  # the refiner's loop passes no timestep_r

    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """(batch, in_channels / 2, height / f, width / f): the noisy half of the transformer's input."""
        shape = super().latent_shape(batch, height, width)
        return (batch, int(self.transformer.config.in_channels) // 2, *shape[2:])

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: Optional[int] = None) -> tuple:
        """(Qwen states (B, 256, d), mask (B, 256), None, None) as the refiner's ``encode_prompt``."""
        from .stable_diffusion import prompt_list
        if max_sequence_length is not None:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed for a HunyuanImage "
                               f"refiner folder (its Qwen length is fixed at {REFINER_MAX_LENGTH}); drop it")
        tokens = self.tokenizer([REFINER_TEMPLATE.format(p) for p in prompt_list(prompts)], padding="max_length",
                                max_length=REFINER_MAX_LENGTH + REFINER_DROP, truncation=True,
                                return_tensors="pt").to(self.device)
        with torch.no_grad():
            states = self.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                                       output_hidden_states=True).hidden_states[HIDDEN_STATE]
        context = states[:, REFINER_DROP:].to(self.text_encoder.dtype).to(self.transformer.dtype)
        return context, tokens.attention_mask[:, REFINER_DROP:], None, None

    def encode(self, images: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """scaling_factor x :func:`fold_frames` of each image's VAE posterior sample (image i's from
        ``generators[i]``), images (B, 3, H, W) in [-1, 1] (``_encode_vae_image`` with a list of generators)."""
        with torch.no_grad():
            frames = images.to(self.device, self.vae.dtype).unsqueeze(2)
            e = torch.cat([self.vae.encode(frames[i:i + 1]).latent_dist.sample(g) for i, g in enumerate(generators)])
        return (fold_frames(e) * self.scaling_factor).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """x = D(:func:`unfold_frames` (z / scaling_factor)), its one frame, in [-1, 1] (not clamped)."""
        with torch.no_grad():
            z = unfold_frames(latents.to(device=self.device, dtype=self.vae.dtype) / self.scaling_factor)
            return self.vae.decode(z, return_dict=False)[0][:, :, 0].float()


def is_hunyuan_image_refiner_folder(path: Union[str, Path]) -> bool:
    """True for a folder whose ``model_index.json`` names ``HunyuanImageRefinerPipeline``."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == REFINER_PIPELINE


def check_hunyuan_image_refiner_folder(directory) -> tuple:
    """(model_index dict, scheduler config, guider config) of a ``HunyuanImageRefinerPipeline`` folder, checked from
    its JSON alone (module docstring)."""
    from .flux import check_flux_scheduler
    from .pixart import checked_folder, fixed_shift_scheduler
    directory = Path(directory)
    index, config, vae = checked_folder(directory, REFINER_PIPELINE, REQUIRED, "HunyuanImage refiner",
                                        REFINER_CLASSES)
    latents = vae.get("latent_channels", 32)
    channels = (config.get("in_channels", 64), config.get("out_channels", 64))
    if channels != (4 * latents, 2 * latents):
        raise DiffkitError(f"{directory}'s transformer has in_channels, out_channels = {channels[0]!r}, "
                           f"{channels[1]!r}; allowed: {4 * latents}, {2 * latents} (4 x and 2 x the VAE's latent "
                           f"channels: the image's two folded frames beside the noisy ones)")
    patch = list(config.get("patch_size", (1, 1)))
    if len(patch) != 3 or patch[0] != 1:
        raise DiffkitError(f"{directory}'s transformer has patch_size={patch!r}; allowed: [1, p, p] (one frame)")
    sched = fixed_shift_scheduler(directory, REFINER_PIPELINE)
    check_flux_scheduler(directory, REFINER_PIPELINE)
    return index, sched, _guider_config(directory, index, "guider")


def load_hunyuan_image_refiner(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                               progress: bool = True) -> HunyuanImageRefiner:
    """Load a ``HunyuanImageRefinerPipeline`` folder (never downloads, never unpickles); what diffkit does not drive
    is refused in one line before any weight is read (:func:`check_hunyuan_image_refiner_folder`)."""
    from .flow_latents import frozen_on, load_flow_parts
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched, guider = check_hunyuan_image_refiner_folder(directory)
    parts = load_flow_parts(directory, index, diffusers.HunyuanImageTransformer2DModel,
                            {"": "Qwen2_5_VLForConditionalGeneration"}, dtype, progress,
                            vae_cls=diffusers.AutoencoderKLHunyuanImageRefiner)
    device = frozen_on(parts, device)
    model = HunyuanImageRefiner(**parts, text_encoder_2=None, tokenizer_2=None, scheduler_config=sched,
                                device=device, dtype=dtype, guider=guider)
    width, encoder = model.transformer.config.text_embed_dim, model.text_encoder.config.text_config.hidden_size
    if width != encoder:
        raise DiffkitError(f"{directory}: the transformer's text_embed_dim={width} does not fit its text encoder's "
                           f"width {encoder}")
    return model


def refine(model: HunyuanImageRefiner, images: torch.Tensor, prompts: Union[str, Sequence[str]],
           strength: Optional[float] = None, *, mask=None, sampler: Optional[str] = None,
           steps: Optional[int] = None, guidance_scale: Optional[float] = None, convention: str = "diffusers",
           negative_prompt=None, distilled_guidance_scale: Optional[float] = None, posterior: str = "sample",
           seed: Optional[int] = 0, generator=None, max_sequence_length: Optional[int] = None,
           output_range: str = "0,1", return_latents: bool = False, progress: bool = False, ip_adapter=None,
           **options) -> torch.Tensor:
    """``images`` (B, 3, H, W) in [-1, 1] refined towards ``prompts`` (one, or one per image) as
    ``HunyuanImageRefinerPipeline`` (module docstring) at the images' size (multiples of 2 f).

    sampler / grid (in ``options``): both None, the pipeline's loop (flow Euler on its sigmas, 4 steps by default);
    otherwise that sampler on its grid of the flow schedule. ``distilled_guidance_scale``: the embedded scale
    (default 3.25; ``guidance_scale`` sets it where the folder has no enabled guider, else the guider's CFG scale).
    ``seed`` / ``generator`` (a list, one per image): the draws. ``strength``, ``mask``, ``posterior`` other than
    "sample", ``max_sequence_length``, ``ip_adapter``: refused in one line. options: passed to :func:`diffkit.sample`.
    """
    from ..errors import check_choice
    from ..noise import generators_from_seed
    from ..sampling import sample
    from .flow_latents import edit_prompts, finish_images, pipeline_grid
    from .stable_diffusion import OUTPUT_RANGES
    check_choice("output_range", output_range, OUTPUT_RANGES)
    for name, value, why in (("strength", strength, "its noise mix is fixed at 0.25"),
                             ("mask", mask, "the refiner does not inpaint")):
        if value is not None:
            raise DiffkitError(f"{name} is not allowed for a HunyuanImage refiner folder ({why}); drop it")
    if posterior != "sample":
        raise DiffkitError(f"posterior={posterior!r} is not allowed; allowed: sample (the pipeline draws the "
                           f"image's posterior)")
    prompts = edit_prompts(images, prompts)
    batch = images.shape[0]
    h, w = model.latent_shape(1, images.shape[2], images.shape[3])[2:]
    if generator is None:
        if seed is None:
            raise DiffkitError("refine needs a seed or a generator per image (the posterior and noise draws)")
        generators = generators_from_seed(seed, batch)
    else:
        generators = list(generator) if isinstance(generator, (list, tuple)) else [generator]
        if len(generators) != batch:
            raise DiffkitError(f"{len(generators)} generators for {batch} images; give one per image")
    sampler, grid, steps = pipeline_grid(sampler, options.pop("grid", None), steps, options.get("nfe"),
                                         model.default_steps, lambda n: model.scheduler_grid(n, h, w),
                                         options.get("flow_shift"))
    guide = {} if distilled_guidance_scale is None else {"distilled_guidance_scale": distilled_guidance_scale}
    denoiser, cond = model.prompt_guidance(prompts, h, w, guidance_scale, negative_prompt, max_sequence_length,
                                           convention, ip_adapter, **guide)
    shape = (1, model.latent_shape(1, images.shape[2], images.shape[3])[1], 1, h, w)
    image = model.encode(images, generators)  # the posterior draws first, then z, then n (the pipeline's order)
    z = torch.cat([torch.randn(shape, generator=g) for g in generators])[:, :, 0]
    noise = torch.cat([torch.randn(shape, generator=g) for g in generators])[:, :, 0]
    cond = {k: v for k, v in cond.items() if v is not None}
    cond["image"] = (REFINER_NOISE * noise + (1 - REFINER_NOISE) * image).to(model.device, model.dtype)
    z0 = sample(denoiser, z.to(model.device, model.dtype), sampler, steps, grid=grid, seed=seed, cond=cond,
                progress=progress, device=model.device, dtype=model.dtype, **options)
    return finish_images(model, z0, return_latents, output_range)


__all__ = ["HunyuanImageRefiner", "load_hunyuan_image_refiner", "is_hunyuan_image_refiner_folder",
           "check_hunyuan_image_refiner_folder", "refine", "fold_frames", "unfold_frames", "REFINER_STEPS"]
