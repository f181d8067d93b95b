"""Stable Video Diffusion folders (``StableVideoDiffusionPipeline``, diffusers 0.42.1): image-to-video without a
prompt, with any diffkit sampler.

Stable Video Diffusion (Blattmann et al. 2023, "Stable Video Diffusion: Scaling Latent Video Diffusion Models to Large
Datasets") is a latent video UNet (``UNetSpatioTemporalConditionModel``: SD's 2-D blocks with temporal convolutions
and attention between them) trained with EDM's preconditioning (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Table 1, eq. 7) in v-prediction form. As ``StableVideoDiffusionPipeline.__call__``:

* latents: (B, F, C, h, w), frame-major as the pipeline's (F = ``num_frames``, default the UNet's ``num_frames``: 14
  for ``img2vid``, 25 for ``-xt``; no temporal compression), h x w = H / f x W / f (f = 2^(len(VAE blocks) - 1), 8);
  sizes multiples of 8 (``check_inputs``), default 576 x 1024 (the pipeline's, not the image's).
* the image condition, twice: CLIP's ``CLIPVisionModelWithProjection`` ``image_embeds`` (B, 1, d) of the original
  image (x / 255, resized to 224 x 224 by the pipeline's own ``_resize_with_antialiasing``: a Gaussian blur then
  bicubic, then the folder's ``CLIPImageProcessor`` normalisation alone) as the cross-attention context; and the image
  resized to H x W (PIL's Lanczos, x / 255 * 2 - 1), noise-augmented x + a n (a = ``noise_aug_strength``, default
  0.02, n video i's first draw from its generator), encoded by the VAE (the posterior's mode, *not* scaled by
  ``scaling_factor``), repeated over the F frames and concatenated after the latents along the channels (2 C in).
* ``added_time_ids`` = [fps - 1, ``motion_bucket_id`` (default 127), a]: the UNet's micro-conditioning (the pipeline's
  ``fps`` argument, default 7, conditions as fps - 1; diffusers' docs export the videos at that same fps).
* the network: D(x~; sigma) = x~ / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) F(x~ / sqrt(sigma^2 + 1), ln(sigma) / 4)
  (``EulerDiscreteScheduler`` with ``prediction_type="v_prediction"``, ``timestep_type="continuous"``: its
  ``scale_model_input``, ``timesteps`` 0.25 ln sigma and step's x_0), EDM's preconditioning at sigma_data = 1 with
  c_out negated: a diffkit :class:`~diffkit.denoiser.Denoiser` of ``prediction_type="edm"``, ``sigma_data=1`` around
  -F (:class:`SVDNet`) on the VP schedule of EDM's noise levels (:meth:`~diffkit.schedule.NoiseSchedule.edm` with the
  scheduler's ``sigma_min`` 0.002 / ``sigma_max`` 700, rho 7), whose VP state is the scheduled input c_in x~.
* the grid and its step: the scheduler after ``set_timesteps(steps)`` (default 25): its Karras sigmas (rho 7) from
  sigma_max to sigma_min, then 0, placed at diffkit's times of equal sigma (:func:`.sd_latent_upscale.
  euler_scheduler_start`); the step is Euler's (EDM Alg. 1 without the correction, s_churn 0): diffkit's ``euler``
  (:func:`.pixart.folder_sampler`'s mapping of ``EulerDiscreteScheduler``). Any other diffkit sampler runs on that
  grid. The start: ``init_noise_sigma`` n (sqrt(sigma_max^2 + 1) for ``leading`` spacing, SVD's), n video i's second
  draw from its generator.
* guidance, per frame: D = D_u + s_f (D_c - D_u) with s_f = linspace(``min_guidance_scale`` 1, ``max_guidance_scale``
  3, F)[f] (diffusers' convention), the unconditional pass with zero image embeddings and zero image latents (the same
  ``added_time_ids``); none when ``max_guidance_scale`` <= 1 (:class:`FrameGuidance`).
* dtypes: the UNet, CLIP and VAE in ``dtype``; a float16 VAE with ``force_upcast`` encodes in float32 (the
  pipeline's ``needs_upcasting``); the latents and the sampler's state in float32 (the pipeline's: the UNet's dtype).
* output: the VAE's ``AutoencoderKLTemporalDecoder`` on z / ``scaling_factor``, ``decode_chunk_size`` frames at a time
  (default all F, the pipeline's), the frames (B, F, 3, H, W).

Refused in one line before any weight is read (:func:`check_svd_folder`): another pipeline class, a missing
component or one of another class, a UNet whose ``in_channels`` is not twice the VAE's latent channels, a scheduler
that is not an ``EulerDiscreteScheduler`` with v-prediction, continuous timesteps and Karras sigmas between its own
``sigma_min`` and ``sigma_max`` (final sigma 0). Not driven: LoRA files (the pipeline loads none), a tensor image in
[0, 1] without resizing (diffkit reads tensors in [-1, 1] as 8-bit images), ``num_videos_per_prompt``, custom
``sigmas``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch

from ..denoiser import Prediction, Wrapper
from ..errors import DiffkitError

SVD_PIPELINE = "StableVideoDiffusionPipeline"
REQUIRED = ("vae", "image_encoder", "unet", "scheduler", "feature_extractor")
SVD_CLASSES = {"vae": ("AutoencoderKLTemporalDecoder",), "image_encoder": ("CLIPVisionModelWithProjection",),
               "unet": ("UNetSpatioTemporalConditionModel",), "scheduler": ("EulerDiscreteScheduler",),
               "feature_extractor": ("CLIPImageProcessor", "CLIPImageProcessorPil", "CLIPImageProcessorFast")}
SVD_STEPS = 25  # the pipeline's num_inference_steps
SVD_SIZE = (576, 1024)  # its height, width
SVD_FPS = 7  # its fps (conditioned as fps - 1; the rate diffusers' docs export at)
MOTION_BUCKET_ID = 127
NOISE_AUG_STRENGTH = 0.02
MIN_GUIDANCE, MAX_GUIDANCE = 1.0, 3.0
SIZE_MULTIPLE = 8  # check_inputs
CLIP_SIZE = (224, 224)  # _encode_image's resize
KARRAS_RHO = 7.0  # diffusers' _convert_to_karras
SIGMA_DATA = 1.0
SVD_SAMPLER = "euler"  # the scheduler's own step (EulerDiscreteScheduler -> euler, as .pixart.folder_sampler maps it)
# the scheduler options (and their defaults) under which the module docstring's D and grid are the pipeline's
_SCHEDULER_FIXED = {"prediction_type": ("epsilon", "v_prediction"), "timestep_type": ("discrete", "continuous"),
                    "use_karras_sigmas": (False, True), "use_exponential_sigmas": (False, False),
                    "use_beta_sigmas": (False, False), "final_sigmas_type": ("zero", "zero")}


def is_svd_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``StableVideoDiffusionPipeline`` (JSON only)."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == SVD_PIPELINE


def check_svd_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of a ``StableVideoDiffusionPipeline`` folder, checked from its JSON alone
    (module docstring); a one-line DiffkitError for what diffkit does not drive."""
    from ..errors import read_json_object
    from .pixart import check_classes, named_index
    directory = Path(directory)
    index = named_index(directory, (SVD_PIPELINE,), "Stable Video Diffusion")
    check_classes(directory, index, REQUIRED, "Stable Video Diffusion", SVD_CLASSES)
    unet = read_json_object(directory / "unet" / "config.json", "unet config")
    vae = read_json_object(directory / "vae" / "config.json", "vae config")
    channels = int(vae.get("latent_channels", 4))
    if unet.get("in_channels", 8) != 2 * channels or unet.get("out_channels", 4) != channels:
        raise DiffkitError(f"{directory}'s unet has in_channels, out_channels = {unet.get('in_channels', 8)!r}, "
                           f"{unet.get('out_channels', 4)!r}; allowed: {2 * channels}, {channels} (the latents and "
                           f"the image latents in, the VAE's {channels} latent channels out)")
    sched = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    for key, (default, want) in _SCHEDULER_FIXED.items():
        if sched.get(key, default) != want:
            raise DiffkitError(f"{directory}'s scheduler has {key}={sched.get(key, default)!r}; allowed: {want!r} "
                               f"(SVD's EDM preconditioning: v-prediction at 0.25 ln sigma on Karras sigmas to 0)")
    for key in ("sigma_min", "sigma_max"):
        value = sched.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise DiffkitError(f"{directory}'s scheduler has {key}={value!r}; allowed: a positive number (SVD's "
                               f"Karras sigmas run from sigma_max 700 to sigma_min 0.002)")
    if not sched["sigma_min"] < sched["sigma_max"]:
        raise DiffkitError(f"{directory}'s scheduler has sigma_min={sched['sigma_min']!r} >= sigma_max="
                           f"{sched['sigma_max']!r}; allowed: sigma_min < sigma_max")
    return index, sched


class SVDNet(torch.nn.Module):
    """``net(x, t, context, image_latents, time_ids)`` = -``unet(cat([x, image_latents], 2), t,
    encoder_hidden_states=context, added_time_ids=time_ids)``: F of EDM's preconditioning (c_out = +sigma /
    sqrt(sigma^2 + 1)) from SVD's v-prediction output (whose c_out is -sigma / sqrt(sigma^2 + 1)); x (B, F, C, h, w)
    the scaled latents, t = ln(sigma) / 4."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t, context=None, image_latents=None, time_ids=None) -> torch.Tensor:
        from . import model_dtype
        if context is None or image_latents is None or time_ids is None:
            raise DiffkitError("this is a Stable Video Diffusion UNet: give cond['context'], cond['image_latents'] "
                               "and cond['time_ids'] (svd.image_to_video)")
        dtype = model_dtype(self.unet)
        out = self.unet(torch.cat([x, image_latents.to(x.dtype)], dim=2).to(dtype), t,
                        encoder_hidden_states=context.to(dtype), added_time_ids=time_ids.to(dtype),
                        return_dict=False)[0]
        return -out.to(x.dtype)


class FrameGuidance(Wrapper):
    """Classifier-free guidance with one scale per frame (SVD's): D = D_u + s_f (D_c - D_u) (Ho & Salimans 2022,
    eq. 6, diffusers' convention s), eps mixed alike; ``scales`` (F,) over dim 1 of (B, F, C, h, w). The
    unconditional pass: the keys of ``null`` zeroed (SVD's zero image embeddings and image latents), the rest of
    cond as it is; one batched call [unconditional, conditional], as the pipeline."""

    def __init__(self, inner, scales: torch.Tensor, null=("context", "image_latents")):
        self.inner, self.scales, self.null = inner, scales, tuple(null)

    def __call__(self, x: torch.Tensor, t, **cond) -> Prediction:
        both = {key: torch.cat([torch.zeros_like(value) if key in self.null else value, value])
                for key, value in cond.items()}
        t = torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.ndim else t
        pred = self.inner(torch.cat([x, x]), t, **both)
        s = self.scales.to(x.device, x.dtype).reshape(1, -1, *([1] * (x.ndim - 2)))
        eps_u, eps_c = pred.eps.chunk(2)
        x0_u, x0_c = pred.x0.chunk(2)
        return Prediction(eps=eps_u + s * (eps_c - eps_u), x0=x0_u + s * (x0_c - x0_u))


@dataclass
class SVD:
    """The loaded components of a ``StableVideoDiffusionPipeline`` folder (:func:`load_svd`)."""

    unet: object
    vae: object
    image_encoder: object
    feature_extractor: object
    scheduler_config: dict
    schedule: object
    device: torch.device
    dtype: torch.dtype = torch.float32
    _denoiser: object = field(default=None, repr=False)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_frames(self) -> int:
        return int(self.unet.config.num_frames)

    @property
    def denoiser(self):
        """The unguided ``edm`` Denoiser (sigma_data 1) around :class:`SVDNet`, made once."""
        from ..denoiser import Denoiser
        if self._denoiser is None:
            self._denoiser = Denoiser(SVDNet(self.unet), self.schedule, "edm", sigma_data=SIGMA_DATA)
            self._denoiser.model = self.unet
        return self._denoiser

    def check_size(self, height, width) -> None:
        """One line unless ``height`` x ``width`` are positive multiples of 8 (``check_inputs``)."""
        for value in (height, width):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % SIZE_MULTIPLE:
                raise DiffkitError(f"height x width {height}x{width} is not allowed; give positive multiples of "
                                   f"{SIZE_MULTIPLE} (StableVideoDiffusionPipeline's check_inputs)")

    def encode_images(self, images) -> torch.Tensor:
        """(B, 1, d) CLIP ``image_embeds`` of PIL ``images`` as the pipeline's ``_encode_image`` (each at its own
        size: x / 255, its ``_resize_with_antialiasing`` to 224 x 224, the processor's normalisation alone)."""
        from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import \
            _resize_with_antialiasing
        from .qwen_image_edit import _pixels
        rows = []
        for image in images:
            pixels = _resize_with_antialiasing(_pixels([image]), CLIP_SIZE)
            pixels = self.feature_extractor(images=(pixels + 1.0) / 2.0, do_normalize=True, do_center_crop=False,
                                            do_resize=False, do_rescale=False, return_tensors="pt").pixel_values
            with torch.no_grad():
                rows.append(self.image_encoder(pixels.to(self.device, self.dtype)).image_embeds)
        return torch.cat(rows)[:, None]

    def image_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """The VAE posterior's mode (B, C, h, w) of noise-augmented ``pixels`` (B, 3, H, W), unscaled
        (``_encode_vae_image``); a float16 VAE with ``force_upcast`` (SVD's) encodes in float32, as the pipeline."""
        from .stable_diffusion import vae_latents
        upcast = self.vae.dtype == torch.float16 and bool(getattr(self.vae.config, "force_upcast", False))
        if not upcast:
            return vae_latents(self.vae, pixels, self.device).to(self.dtype)
        try:
            return vae_latents(self.vae.to(dtype=torch.float32), pixels, self.device).to(self.dtype)
        finally:
            self.vae.to(dtype=torch.float16)

    def decode(self, latents: torch.Tensor, chunk: Optional[int] = None) -> torch.Tensor:
        """(B, F, 3, H, W) in [-1, 1] (not clamped) of latents (B, F, C, h, w): the temporal decoder on
        z / ``scaling_factor``, ``chunk`` frames a call (default all F; ``decode_latents``)."""
        b, frames = latents.shape[:2]
        chunk = frames if chunk is None else chunk
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise DiffkitError(f"decode_chunk_size={chunk!r} is not allowed; give a positive integer (frames the "
                               f"VAE decodes at a time)")
        z = latents.flatten(0, 1).to(self.device, self.vae.dtype) / self.vae.config.scaling_factor
        with torch.no_grad():
            out = torch.cat([self.vae.decode(z[i:i + chunk], num_frames=z[i:i + chunk].shape[0]).sample
                             for i in range(0, z.shape[0], chunk)])
        return out.reshape(b, frames, *out.shape[1:]).float()

    def scheduler_start(self, steps: int) -> tuple:
        """(grid, init_noise_sigma) of the folder's scheduler (:func:`.sd_latent_upscale.euler_scheduler_start`)."""
        from .sd_latent_upscale import euler_scheduler_start
        return euler_scheduler_start(self.scheduler_config, self.schedule, steps)


def load_svd(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32, progress: bool = True,
             lora=None) -> SVD:
    """Load a ``StableVideoDiffusionPipeline`` folder (never downloads, never unpickles), checked first
    (:func:`check_svd_folder`). ``lora``: refused (the pipeline loads no LoRA files)."""
    from ..schedule import NoiseSchedule
    from . import from_pretrained, library_progress_bars, require
    from .schedulers import train_timesteps
    if lora:
        raise DiffkitError("lora is not allowed for a Stable Video Diffusion folder (StableVideoDiffusionPipeline "
                           "loads no LoRA files)")
    diffusers, transformers = require("diffusers"), require("transformers")
    directory = Path(directory)
    _, sched = check_svd_folder(directory)
    schedule = NoiseSchedule.edm(train_timesteps(sched), float(sched["sigma_min"]), float(sched["sigma_max"]),
                                 KARRAS_RHO)
    common = {"local_files_only": True, "torch_dtype": dtype, "use_safetensors": True}
    with library_progress_bars(progress):
        unet = from_pretrained(diffusers.UNetSpatioTemporalConditionModel, directory / "unet", **common)
        vae = from_pretrained(diffusers.AutoencoderKLTemporalDecoder, directory / "vae", **common)
        encoder = from_pretrained(transformers.CLIPVisionModelWithProjection, directory / "image_encoder", **common)
        processor = from_pretrained(transformers.CLIPImageProcessor, directory / "feature_extractor",
                                    local_files_only=True)
    device = torch.device(device)
    for module in (unet, vae, encoder):
        module.to(device).eval().requires_grad_(False)
    if unet.config.cross_attention_dim != encoder.config.projection_dim:
        raise DiffkitError(f"{directory}: the unet's cross_attention_dim={unet.config.cross_attention_dim} does not "
                           f"fit the image encoder's projection_dim {encoder.config.projection_dim}")
    return SVD(unet, vae, encoder, processor, sched, schedule, device, dtype)


def check_guidance(min_guidance_scale, max_guidance_scale,
                   names: tuple = ("min_guidance_scale", "max_guidance_scale")) -> bool:
    """Whether the pipeline guides (``max_guidance_scale`` > 1); one line (naming ``names``) for a non-number, or
    for ``min_guidance_scale`` > 1 >= ``max_guidance_scale`` (the pipeline then encodes no unconditional image but
    guides: it fails)."""
    for name, value in zip(names, (min_guidance_scale, max_guidance_scale)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise DiffkitError(f"{name}={value!r} is not allowed; give a number (diffusers' convention: 1 = the "
                               f"conditional prediction)")
    if max_guidance_scale <= 1 < min_guidance_scale:
        raise DiffkitError(f"{names[0]}={min_guidance_scale!r} > 1 with {names[1]}={max_guidance_scale!r} <= 1 is not "
                           f"allowed (StableVideoDiffusionPipeline guides only when the max scale is > 1); raise "
                           f"{names[1]}")
    return max_guidance_scale > 1


def _number(name: str, value, low: float, inclusive: bool = True) -> float:
    from ..errors import check_range
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DiffkitError(f"{name}={value!r} is not allowed; give a number")
    check_range(name, value, low, None, low_inclusive=inclusive)
    return value


def image_to_video(model: SVD, images, *, min_guidance_scale: Optional[float] = None,
                   max_guidance_scale: Optional[float] = None, fps: Optional[float] = None,
                   motion_bucket_id: Optional[float] = None, noise_aug_strength: Optional[float] = None,
                   decode_chunk_size: Optional[int] = None, steps: Optional[int] = None,
                   sampler: Optional[str] = None, num_frames: Optional[int] = None, height: Optional[int] = None,
                   width: Optional[int] = None, seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None,
                   output_range: str = "-1,1", return_latents: bool = False, progress: bool = False,
                   **options) -> torch.Tensor:
    """Videos (B, F, 3, H, W) from ``images`` (PIL images, or (B, 3, H, W) in [-1, 1]; one video each) as
    ``StableVideoDiffusionPipeline`` (module docstring), in ``output_range``.

    min_guidance_scale / max_guidance_scale: the per-frame scales' ends (default 1 and 3; :func:`check_guidance`);
    fps (default 7; the UNet sees fps - 1), motion_bucket_id (127), noise_aug_strength (0.02): ``added_time_ids``;
    decode_chunk_size: frames the VAE decodes at a time (default all); steps (default 25) of the folder's scheduler;
    sampler: None for its own step (``euler``), or any diffkit sampler on its grid; num_frames (default the UNet's),
    height x width (default 576 x 1024). Video i draws its augmentation noise, then its latents, from ``seed`` + i
    (:func:`diffkit.noise.generators_from_seed`, as the pipeline with a generator per video); latents: the pipeline's
    (B, F, C, h, w) before ``init_noise_sigma``. ``return_latents``: the final latents (B, F, C, h, w)."""
    from PIL import Image

    from ..errors import check_choice
    from ..noise import generators_from_seed, randn
    from ..sampling import sample
    from .qwen_image_edit import _pil_images, _pixels
    from .stable_diffusion import OUTPUT_RANGES
    check_choice("output_range", output_range, OUTPUT_RANGES)
    low = MIN_GUIDANCE if min_guidance_scale is None else min_guidance_scale
    high = MAX_GUIDANCE if max_guidance_scale is None else max_guidance_scale
    guide = check_guidance(low, high)
    fps = _number("fps", SVD_FPS if fps is None else fps, 0.0, inclusive=False)
    bucket = _number("motion_bucket_id", MOTION_BUCKET_ID if motion_bucket_id is None else motion_bucket_id, 0.0)
    aug = _number("noise_aug_strength", NOISE_AUG_STRENGTH if noise_aug_strength is None else noise_aug_strength, 0.0)
    frames = model.default_frames if num_frames is None else num_frames
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise DiffkitError(f"num_frames={frames!r} is not allowed; give a positive integer")
    height = SVD_SIZE[0] if height is None else height
    width = SVD_SIZE[1] if width is None else width
    model.check_size(height, width)
    pil = _pil_images(images)
    if not pil:
        raise DiffkitError("images must hold at least one image")
    sampler = SVD_SAMPLER if sampler is None else sampler
    grid, init = model.scheduler_start(SVD_STEPS if steps is None else steps)
    f, batch = model.vae_scale_factor, len(pil)
    channels = int(model.vae.config.latent_channels)
    shape = (batch, frames, channels, height // f, width // f)
    generators = None if seed is None else generators_from_seed(seed, batch)
    pixels = _pixels([image.resize((width, height), resample=Image.LANCZOS) for image in pil]).to(model.device)
    pixels = pixels + aug * randn(pixels.shape, generators, device=model.device)  # the pipeline's first draw
    if latents is None:
        latents = randn(shape, generators, device=model.device)
    elif tuple(latents.shape) != shape:
        raise DiffkitError(f"latents of shape {tuple(latents.shape)} are not allowed; expected {shape}")
    context = model.encode_images(pil)
    image_latents = model.image_latents(pixels)[:, None].repeat(1, frames, 1, 1, 1)
    time_ids = torch.tensor([[fps - 1, bucket, aug]], dtype=model.dtype, device=model.device).repeat(batch, 1)
    cond = {"context": context, "image_latents": image_latents, "time_ids": time_ids}
    denoiser = model.denoiser
    if guide:
        denoiser = FrameGuidance(denoiser, torch.linspace(low, high, frames))
    sigma = model.schedule.karras_sigma(grid[0]).item()
    state = torch.float32  # the pipeline's latents, whatever the UNet's dtype
    noise = latents.to(model.device, state) * (init / (1.0 + sigma * sigma) ** 0.5)  # x~ = init n: VP alpha_0 x~
    z = sample(denoiser, noise, sampler, grid=grid, seed=seed, cond=cond, progress=progress, device=model.device,
               dtype=state, **options)
    if return_latents:
        return z
    videos = model.decode(z, decode_chunk_size)
    return (videos / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else videos.clamp(-1, 1)


__all__ = ["SVD", "SVDNet", "FrameGuidance", "load_svd", "is_svd_folder", "check_svd_folder", "check_guidance",
           "image_to_video", "SVD_PIPELINE", "SVD_STEPS", "SVD_SIZE", "SVD_FPS", "MOTION_BUCKET_ID",
           "NOISE_AUG_STRENGTH", "MIN_GUIDANCE", "MAX_GUIDANCE"]
