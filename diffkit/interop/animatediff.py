"""An AnimateDiff diffusers folder (``AnimateDiffPipeline``, diffusers 0.42.1): text-to-video with a Stable Diffusion
1.x UNet turned into a video UNet by a motion adapter, sampled with any diffkit sampler.

AnimateDiff (Guo et al. 2024, "AnimateDiff: Animate Your Personalized Text-to-Image Diffusion Models without Specific
Tuning", ICLR) inserts temporal transformer blocks (a *motion module*, Sec. 4.2: self-attention along the frames at
each pixel, with sinusoidal frame positions) after the spatial blocks of a frozen Stable Diffusion UNet; the frames of
a video are the UNet's batch (Sec. 4.1, eq. 3-4: the same eps-prediction loss on latent videos z (B, C, F, h, w)).
diffkit drives it as Stable Diffusion (:mod:`.stable_diffusion`: its prompt encoding, guidance, scheduler mapping and
VAE decoding), as ``AnimateDiffPipeline.__call__`` does:

* the folder: what ``save_pretrained`` writes, ``unet/`` a ``UNetMotionModel`` (the adapter's motion modules already
  in it; the ``motion_adapter/`` beside it is not read), or a ``UNet2DConditionModel`` with a ``motion_adapter/``
  (``MotionAdapter``), joined as the pipeline's ``UNetMotionModel.from_unet2d(unet, motion_adapter)``.
* prompts: SD's CLIP text states (:meth:`.stable_diffusion.StableDiffusion.encode_prompts`; ``clip_skip`` on the
  prompts only), the negative prompt (default "") the same; the UNet gets each video's states once per frame
  (``repeat_interleave(num_frames)``, :class:`MotionNet`).
* guidance: classifier-free guidance eps_u + s (eps_c - eps_u) (Ho & Salimans 2022, eq. 6; diffusers' convention) for
  s > 1, default 7.5; s <= 1: one unguided call (a negative prompt refused, :func:`.auraflow.guided`).
* the grid and its step: the folder's scheduler after ``set_timesteps(steps)`` (default 50), as a diffkit grid
  (:func:`.pixart.own_scheduler_grid`), and the sampler computing its step (:func:`folder_sampler`): DDIM -> ``ddim``,
  PNDM -> ``pndm-skip-prk`` / ``pndm``, Euler -> ``euler``, DPM-Solver multistep -> ``dpm-solver++-2m`` ...; an
  ``LCMScheduler`` folder (AnimateLCM) is a latent consistency model (:mod:`.lcm`: the consistency function around the
  guided UNet, ``consistency`` on LCMScheduler's own timesteps), a ``TCDScheduler`` one ``tcd``
  (:mod:`.sd_scheduler`). The start z_T = ``init_noise_sigma`` n is diffkit's state n (the VE form of the same
  start), but for Euler on ``linspace`` / ``trailing`` timesteps (AnimateDiff-Lightning's), where diffusers scales n
  by sigma_max instead of sqrt(1 + sigma_max^2): sigma_max / sqrt(1 + sigma_max^2) n (:meth:`AnimateDiff.start_scale`).
* frames and size: 16 frames (at most the motion modules' ``motion_max_seq_length``: their frame positions), 512 x 512
  (the UNet's ``sample_size`` x the VAE factor; multiples of the VAE factor).
* LoRA files (``lora=``): Stable Diffusion's reader and merger (:mod:`.sd_lora`) on the ``UNetMotionModel``'s module
  names, so an SD LoRA and a motion LoRA (``motion_modules.`` attention) merge alike, as the pipeline's
  ``load_lora_weights`` + ``fuse_lora``.
* decoding: frame by frame, ``decode_chunk_size`` (16) frames of the batch at a time, x = D(z / scaling_factor);
  videos (B, T, C, H, W) in [-1, 1] (clamped), or in [0, 1] as ``output_type="pt"``.

Refused in one line before any weight is read (:func:`check_animatediff_folder`): another pipeline class, a missing
component, a UNet of another class, a UNet2DConditionModel without a ``MotionAdapter``, a UNet SD's text-to-image
driver refuses (SD-XL's added conditions, extra input channels, a guidance input ``time_cond_proj_dim``, which
``AnimateDiffPipeline`` never gives). ``AnimateDiffSDXLPipeline``: :mod:`.animatediff_sdxl` (this module's video
parts on SD-XL's driver). ControlNets (``AnimateDiffControlNetPipeline``):
:mod:`.animatediff_controlnet`; SparseCtrl: :mod:`.animatediff_sparsectrl`. Not driven: IP-Adapters, FreeInit /
FreeNoise.

Video-to-video (``AnimateDiffVideoToVideoPipeline``, the same parts; :func:`video_to_video`): SDEdit (Meng et al.
2022) as its ``prepare_latents`` / ``get_timesteps`` (``enforce_inference_steps`` off): each input video resized and
normalised by diffusers' own ``VideoProcessor.preprocess_video``, its frames encoded ``decode_chunk_size`` (16) at a
time with the posteriors **sampled** from video i's generator, x ``scaling_factor`` (z_0, (B, F, C, h, w)); the last
min(int(N strength), N) of the N steps kept (:func:`diffkit.editing.strength_grid`, default strength 0.8); eps drawn
after the posteriors in that layout; z_0 noised to the first kept timestep t, as diffkit's state
sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps (``scheduler.add_noise``; an Euler scheduler's x_0 + sigma_t eps scaled by
its ``scale_model_input``), then the folder's step (or any sampler) from there. The output has the input's frames.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, read_json_object
from . import require
from .denoiser import DiffusersNet
from .stable_diffusion import SD_PIPELINE_GUIDANCE, StableDiffusion

ANIMATEDIFF_PIPELINE = "AnimateDiffPipeline"
ANIMATEDIFF_SDXL_PIPELINE = "AnimateDiffSDXLPipeline"  # .animatediff_sdxl
ANIMATEDIFF_V2V_PIPELINE = "AnimateDiffVideoToVideoPipeline"  # video_to_video
SD_MOTION_PIPELINES = (ANIMATEDIFF_PIPELINE, ANIMATEDIFF_V2V_PIPELINE)  # load_animatediff's (Stable Diffusion 1.x)
MOTION_PIPELINES = SD_MOTION_PIPELINES + (ANIMATEDIFF_SDXL_PIPELINE,)
ANIMATEDIFF_STRENGTH = 0.8  # AnimateDiffVideoToVideoPipeline.__call__'s strength
MOTION_UNETS = ("UNetMotionModel", "UNet2DConditionModel")  # the latter joined with motion_adapter/
REQUIRED = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
ANIMATEDIFF_GUIDANCE = SD_PIPELINE_GUIDANCE  # AnimateDiffPipeline.__call__'s guidance_scale (7.5)
ANIMATEDIFF_STEPS = 50  # its num_inference_steps
ANIMATEDIFF_FRAMES = 16  # its num_frames
DECODE_CHUNK_SIZE = 16  # its decode_chunk_size
ANIMATEDIFF_PAG_LAYERS = ("mid_block.*attn1",)  # AnimateDiffPAGPipeline's pag_applied_layers


class MotionNet(DiffusersNet):
    """``net(x, t, context=..., ...)`` over a ``UNetMotionModel`` on latent videos x (B, C, F, h, w): each video's
    ``context`` (B, L, d) repeated once per frame (B F, L, d), as the pipeline's ``repeat_interleave(num_frames)``."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, y=None, context: Optional[torch.Tensor] = None, w=None,
                **extra) -> torch.Tensor:
        if x.ndim != 5:
            raise DiffkitError(f"an AnimateDiff UNet takes latent videos (B, C, F, h, w); got shape {tuple(x.shape)}")
        if context is not None:
            context = context.repeat_interleave(x.shape[2], dim=0)
        return super().forward(x, t, y, context, w, **extra)


@dataclass
class AnimateDiff(StableDiffusion):
    """The loaded components of an ``AnimateDiffPipeline`` folder (:func:`load_animatediff`): Stable Diffusion's, its
    ``unet`` a ``UNetMotionModel``."""

    video_guidance = ANIMATEDIFF_GUIDANCE  # the pipeline's default guidance_scale (not a field)
    pipeline: str = ANIMATEDIFF_PIPELINE  # the folder's class (AnimateDiffVideoToVideoPipeline: video_to_video)

    @property
    def network_denoiser(self):
        """The eps (or v) :class:`~diffkit.denoiser.Denoiser` of the motion UNet (:class:`MotionNet`)."""
        if self._denoiser is None:
            from ..denoiser import Denoiser
            self._denoiser = Denoiser(MotionNet(self.unet, uses_labels=False), self.schedule, self.prediction_type)
            self._denoiser.model = self.unet
        return self._denoiser

    video_strength = ANIMATEDIFF_STRENGTH  # the video-to-video pipeline's default strength (not a field)

    @property
    def takes_videos(self) -> bool:
        """True for a video-to-video folder (:func:`video_to_video`)."""
        return self.pipeline == ANIMATEDIFF_V2V_PIPELINE

    def frame_count(self, num_frames) -> int:
        """The frames of :func:`text_to_video` (:func:`check_frames`)."""
        return check_frames(self, num_frames)

    @property
    def max_frames(self) -> int:
        """The motion modules' ``motion_max_seq_length`` (their frame positions)."""
        return int(self.unet.config.get("motion_max_seq_length", 32))

    def scheduler_grid(self, steps: int) -> torch.Tensor:
        """diffkit's grid of the folder's scheduler after ``set_timesteps(steps)``: its own class's timesteps
        (:func:`.pixart.own_scheduler_grid`), LCMScheduler's / TCDScheduler's as Stable Diffusion's."""
        if self.consistency is not None or self.scheduler_override:
            return super().scheduler_grid(steps)
        from .pixart import own_scheduler_grid
        return own_scheduler_grid(self.scheduler_config, steps)

    def start_scale(self, steps: int) -> float:
        """The factor of the pipeline's z_T = ``init_noise_sigma`` n as diffkit's state: ``init_noise_sigma`` times
        the scheduler's ``scale_model_input`` at its first timestep; 1 but for an Euler-type (VE) scheduler on
        ``linspace`` / ``trailing`` timesteps, whose z_T is sigma_max n (not sqrt(sigma_max^2 + 1) n):
        sigma_max / sqrt(1 + sigma_max^2)."""
        scheduler = getattr(require("diffusers"), self.scheduler_config["_class_name"]).from_config(
            self.scheduler_config)
        scheduler.set_timesteps(steps)
        one = torch.ones(1, dtype=torch.float64)
        return float(scheduler.init_noise_sigma) * float(scheduler.scale_model_input(one, scheduler.timesteps[0]))

    def video_conditioning(self, prompts: list, negative_prompt, scale: float, convention: str, cfg: bool,
                           clip_skip: Optional[int], size: tuple) -> tuple:
        """(denoiser, cond) of :func:`text_to_video`: the guided denoiser and cond of :meth:`prompt_guidance` (``cfg``),
        else the plain denoiser and the prompts' context (``size``: the videos' (H, W), unused here)."""
        if cfg:
            return self.prompt_guidance(prompts, negative_prompt, scale, convention, 0.0, clip_skip=clip_skip)
        return self.denoiser, {"context": self.encode_prompts(prompts, clip_skip)}

    def video_latents(self, videos: list, height: int, width: int, generators,
                      chunk: int = DECODE_CHUNK_SIZE) -> torch.Tensor:
        """Video-to-video's z_0 (B, F, C, h, w): the videos (lists of PIL frames, one count) by diffusers' own
        ``VideoProcessor.preprocess_video``, each video's frames encoded ``chunk`` at a time, their posteriors sampled
        from its generator (``encode_video``), x scaling_factor."""
        require("diffusers")
        from diffusers.video_processor import VideoProcessor
        pixels = VideoProcessor(vae_scale_factor=self.vae_scale_factor).preprocess_video(videos, height=height,
                                                                                    width=width)
        pixels = pixels.permute(0, 2, 1, 3, 4).to(self.device, self.dtype)
        with torch.no_grad():
            z = torch.stack([torch.cat([self.vae.encode(video[i:i + chunk]).latent_dist.sample(
                None if generators is None else generators[b]) for i in range(0, len(video), chunk)])
                for b, video in enumerate(pixels)])
        return z * self.vae.config.scaling_factor

    def decode_video(self, latents: torch.Tensor, chunk: int = DECODE_CHUNK_SIZE) -> torch.Tensor:
        """Videos (B, T, C, H, W) in [-1, 1] (not clamped) of latent videos (B, C, F, h, w)
        (:func:`decode_frames`)."""
        return decode_frames(self, latents, chunk)


def decode_frames(model, latents: torch.Tensor, chunk: int) -> torch.Tensor:
    """Videos (B, T, C, H, W) in [-1, 1] (not clamped) of latent videos (B, C, F, h, w): the frames decoded by
    ``model.decode`` ``chunk`` at a time, in the pipelines' order (AnimateDiff's and Latte's ``decode_latents``)."""
    b, c, f, h, w = latents.shape
    frames = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    images = torch.cat([model.decode(frames[i:i + chunk]) for i in range(0, b * f, chunk)])
    return images.reshape(b, f, *images.shape[1:])


def is_animatediff_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``AnimateDiffPipeline`` or
    ``AnimateDiffVideoToVideoPipeline`` (``diffkit video`` dispatches)."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) in SD_MOTION_PIPELINES


def refuse_animatediff_folder(path, command: str = "diffkit sample / diffkit edit") -> None:
    """One line for an AnimateDiff folder (``AnimateDiffPipeline``, ``AnimateDiffSDXLPipeline`` or
    ``AnimateDiffVideoToVideoPipeline``) given where an image folder is expected (``command``: what it was given to),
    from its JSON."""
    from .sd_xl import pipeline_class
    name = pipeline_class(path)
    if name in MOTION_PIPELINES:
        v2v = name == ANIMATEDIFF_V2V_PIPELINE
        raise DiffkitError(f"{path} is an {name} folder ({'video-to-video' if v2v else 'text-to-video'}), which "
                           f"{command} does not take; generate videos with diffkit video --checkpoint {path}"
                           f"{' --video FILE' if v2v else ''} --prompt TEXT")


def check_animatediff_folder(directory, pipeline: Union[str, tuple] = SD_MOTION_PIPELINES,
                             kind: str = "AnimateDiff", required: tuple = REQUIRED, check_unet=None) -> tuple:
    """(model_index dict, scheduler config) of an ``AnimateDiffPipeline`` or ``AnimateDiffVideoToVideoPipeline``
    folder, checked from its JSON alone (module docstring); a one-line DiffkitError for what diffkit does not drive.
    ``pipeline`` (a class name or a tuple of them), ``kind``, ``required``, ``check_unet`` (default
    :func:`.stable_diffusion.check_stable_diffusion_unet`): another motion pipeline's (its class(es), label,
    components and UNet check; :mod:`.animatediff_sdxl`)."""
    from .pixart import check_classes, named_index
    from .sd3 import _entry
    from .stable_diffusion import check_stable_diffusion_unet
    directory = Path(directory)
    index = named_index(directory, (pipeline,) if isinstance(pipeline, str) else tuple(pipeline), kind)
    classes = {"unet": MOTION_UNETS, "vae": ("AutoencoderKL",)}
    if _entry(index, "unet") == "UNet2DConditionModel":
        classes["motion_adapter"] = ("MotionAdapter",)
    check_classes(directory, index, required + tuple(k for k in classes if k not in required), kind, classes)
    sched = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    unet = read_json_object(directory / "unet" / "config.json", "unet config")
    if unet.get("time_cond_proj_dim") is not None:
        raise DiffkitError(f"{directory}'s unet has time_cond_proj_dim={unet['time_cond_proj_dim']!r} (a guidance "
                           f"input {index['_class_name']} never gives); allowed: null")
    (check_unet or check_stable_diffusion_unet)(unet, directory, lcm=sched.get("_class_name") == "LCMScheduler")
    return index, sched


def folder_sampler(config: dict) -> tuple:
    """(diffkit sampler, its options) computing the step of the folder's scheduler (``config``: its JSON) on its own
    timesteps: ``LCMScheduler`` -> ``consistency``, ``TCDScheduler`` -> ``tcd`` (:func:`.sd_scheduler.default_sampler`),
    ``PNDMScheduler`` -> ``pndm-skip-prk`` / ``pndm`` (:func:`.ldm.folder_sampler`), ``DDIMScheduler``,
    ``EulerDiscreteScheduler``, ``DPMSolverMultistepScheduler`` as :func:`.pixart.folder_sampler`; another class (or an
    option no sampler computes) is one line (give a sampler)."""
    from .sd_scheduler import SCHEDULER_OVERRIDES, default_sampler
    name = config.get("_class_name")
    if name in ("LCMScheduler", SCHEDULER_OVERRIDES["tcd"]):
        return default_sampler("tcd" if name == SCHEDULER_OVERRIDES["tcd"] else None, True), {}
    if name == "PNDMScheduler":
        from .ldm import folder_sampler as pndm_sampler
        return pndm_sampler(config), {}
    from .pixart import folder_sampler as own_sampler
    return own_sampler(config)


def load_animatediff(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                     progress: bool = True, lora=None, check=None) -> AnimateDiff:
    """Load an ``AnimateDiffPipeline`` folder (never downloads, never unpickles), checked first
    (:func:`check_animatediff_folder`, or ``check``: another motion pipeline's, e.g. :func:`.pia.check_pia_folder`):
    Stable Diffusion's components (:func:`.stable_diffusion._load_stable_diffusion`) with the ``UNetMotionModel``, or
    the UNet joined with ``motion_adapter/`` as the pipeline joins them. ``lora``:
    Stable Diffusion LoRA files (paths or (path, scale) pairs; :mod:`.sd_lora`) merged into the UNet and text encoder
    as the pipeline's ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)``."""
    from . import library_progress_bars
    from .sd_lora import merge_sd_loras, read_sd_loras
    from .stable_diffusion import _load_stable_diffusion
    diffusers = require("diffusers")
    directory = Path(directory)
    index, _ = (check or check_animatediff_folder)(directory)
    loras = read_sd_loras(lora) if lora else []
    joined = index["unet"][1] == "UNet2DConditionModel"
    with library_progress_bars(progress):
        sd = _load_stable_diffusion(directory, device, dtype, check_unet=lambda *a, **k: None,
                                    unet_class=None if joined else diffusers.UNetMotionModel)
        if joined:
            join_motion_adapter(sd, directory, dtype)
    model = AnimateDiff(**{f.name: getattr(sd, f.name) for f in fields(sd)}, pipeline=index["_class_name"])
    merge_sd_loras(model, loras)
    return model


def join_motion_adapter(sd, directory: Path, dtype: torch.dtype) -> None:
    """``sd.unet`` (a UNet2DConditionModel) joined with ``directory / "motion_adapter"`` in place, as the pipelines'
    ``__init__``: ``UNetMotionModel.from_unet2d(unet, motion_adapter)``."""
    from . import from_pretrained
    diffusers = require("diffusers")
    adapter = from_pretrained(diffusers.MotionAdapter, directory / "motion_adapter", local_files_only=True,
                              torch_dtype=dtype, use_safetensors=True)
    sd.unet = diffusers.UNetMotionModel.from_unet2d(sd.unet.to("cpu"), adapter).to(sd.device, dtype)
    sd.unet.eval().requires_grad_(False)


def check_frames(model: AnimateDiff, num_frames) -> int:
    """``num_frames`` (default 16), one line unless a positive integer up to the motion modules' frame positions."""
    frames = ANIMATEDIFF_FRAMES if num_frames is None else num_frames
    if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= model.max_frames:
        raise DiffkitError(f"num_frames={frames!r} is not allowed; give 1 to {model.max_frames} (the motion modules' "
                           f"motion_max_seq_length: their frame positions)")
    return frames


def text_to_video(model: AnimateDiff, prompts: Union[str, Sequence[str]], *, negative_prompt=None,
                  guidance_scale: Optional[float] = None, convention: str = "diffusers", steps: Optional[int] = None,
                  sampler: Optional[str] = None, num_frames: Optional[int] = None, height: Optional[int] = None,
                  width: Optional[int] = None, seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None,
                  output_range: str = "-1,1", return_latents: bool = False, progress: bool = False,
                  clip_skip: Optional[int] = None, videos=None, strength: Optional[float] = None, controlnet=None,
                  pag_scale: Optional[float] = None, pag_layers=None, pag_adaptive_scale: Optional[float] = None,
                  **options) -> torch.Tensor:
    """Videos (B, T, C, H, W) of ``prompts`` as ``AnimateDiffPipeline`` (module docstring; an
    :class:`.animatediff_sdxl.AnimateDiffSDXL` as ``AnimateDiffSDXLPipeline``); ``videos`` and ``strength`` only
    through :func:`video_to_video` (``AnimateDiffVideoToVideoPipeline`` folders), ``controlnet`` through
    :func:`.animatediff_controlnet.text_to_video` (``AnimateDiffControlNetPipeline``) and
    :func:`.animatediff_sparsectrl.text_to_video` (SparseCtrl): an object whose ``controlling(model, height, width,
    grid)`` gives the model with its residuals.

    guidance_scale: in ``convention`` (default the model's ``video_guidance``: s = 7.5, diffusers'; 5 for SD-XL),
    against ``negative_prompt`` (default ""); s <= 1 unguided. steps: the scheduler's (default 50); sampler: None for
    the scheduler's own step (:func:`folder_sampler`), or any diffkit sampler on its grid. num_frames (default 16),
    height / width (default the UNet's sample size x the VAE factor, 512; 1024 for SD-XL). clip_skip: the pipeline's
    (:mod:`.sd_prompts`). latents: z_T (B, C, F, h, w) (the pipeline's ``latents``), default N(0, I) from per-video
    ``seed + i``. pag_scale (S > 0), pag_layers, pag_adaptive_scale: perturbed-attention guidance as
    ``AnimateDiffPAGPipeline`` (:func:`pag_guidance`; AnimateDiffPipeline folders, no ControlNet). Returns videos in
    ``output_range`` ("-1,1" or "0,1": ``output_type="pt"``), or with ``return_latents`` the final latents
    (B, C, F, h, w)."""
    from ..errors import check_choice
    from ..noise import generators_from_seed, randn
    from ..sampling import sample
    from .auraflow import guided
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    prompts = prompt_list(prompts)
    if model.takes_videos != (videos is not None):
        raise DiffkitError(f"this {model.pipeline} folder is video-to-video; call video_to_video(model, videos, "
                           f"prompts)" if videos is None else f"this {model.pipeline} folder is text-to-video; "
                           f"video_to_video takes a video-to-video folder")
    from .cosmos2_video import prompt_videos
    videos = prompt_videos(videos, prompts, num_frames, strength)
    frames = model.frame_count(num_frames if videos is None else len(videos[0]))
    scale = model.video_guidance if guidance_scale is None else guidance_scale
    convention = "diffusers" if guidance_scale is None else convention
    cfg = guided(scale, convention, negative_prompt)
    b, c, h, w = model.latent_shape(len(prompts), height, width)
    shape = (b, c, frames, h, w)
    if latents is not None and tuple(latents.shape) != shape:
        raise DiffkitError(f"latents of shape {tuple(latents.shape)} are not allowed; expected {shape}")
    perturbed = pag_guidance(model, pag_scale, pag_layers, pag_adaptive_scale, controlnet)
    steps = ANIMATEDIFF_STEPS if steps is None else steps
    grid = model.scheduler_grid(steps)
    if videos is not None:  # the pipeline's get_timesteps: the strength's last steps
        from ..editing import strength_grid
        grid = strength_grid(grid, model.video_strength if strength is None else strength)
    own, own_options = folder_sampler(model.scheduler_config)
    if sampler is None:
        sampler, options = own, {**own_options, **options}
    f = model.vae_scale_factor
    if controlnet is not None:  # .animatediff_controlnet: the ControlNets' residuals per frame
        model = controlnet.controlling(model, h * f, w * f, grid)
    denoiser, cond = model.video_conditioning(prompts, negative_prompt, scale, convention, cfg, clip_skip,
                                              (h * f, w * f))
    if perturbed is not None:
        denoiser = perturbed(denoiser)
    generators = None if seed is None else generators_from_seed(seed, shape[0])  # z_T's, then the steps' noise
    if videos is not None:  # prepare_latents: the posteriors, then eps, noised to the first kept timestep
        if latents is None:
            from ..diffusion import q_sample
            z0 = model.video_latents(videos, h * f, w * f, generators)
            eps = randn(z0.shape, generators, device=model.device, dtype=torch.float32)
            t = torch.full((shape[0],), float(grid[0]), dtype=torch.float64)
            latents = q_sample(model.schedule, z0.float(), t, eps).permute(0, 2, 1, 3, 4)
        noise = latents.to(device=model.device, dtype=model.dtype)
    else:
        if latents is None:
            latents = randn(shape, generators, device=model.device)
        scale = model.start_scale(steps)  # init_noise_sigma, as diffkit's state
        noise = latents.to(device=model.device, dtype=model.dtype) * scale
    z = sample(denoiser, noise, sampler, grid=grid, generator=generators, cond=cond, progress=progress,
               device=model.device, dtype=model.dtype, **options)
    if return_latents:
        return z
    videos = model.decode_video(z)
    return (videos / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else videos.clamp(-1, 1)


def pag_guidance(model: AnimateDiff, scale: Optional[float], layers=None, adaptive_scale: Optional[float] = None,
                 controlnet=None):
    """Perturbed-attention guidance (Ahn et al. 2024) as ``AnimateDiffPAGPipeline`` (diffusers 0.42.1): Stable
    Diffusion's (:func:`.sd_pag.pag_request`: one call of cond, null and perturbed thirds, eps_u + s (eps_c - eps_u) +
    S (eps_c - eps-hat_c), diffusers' adaptive scale) on the motion UNet, whose frames are its batch (the perturbed
    videos' frames the last third); default layers the pipeline's ``pag_applied_layers="mid_block.*attn1"`` (the
    middle block's spatial and temporal ``attn1``; a motion module's ``attn2`` is self-attention too, so SD's "mid"
    would select more). None without a scale; one line on an SD-XL, video-to-video or controlled model (diffusers has
    no PAG pipeline for them)."""
    from .sd_pag import pag_request
    if scale and (model.pipeline != ANIMATEDIFF_PIPELINE or controlnet is not None):
        what = "a ControlNet" if controlnet is not None else f"an {model.pipeline} folder"
        raise DiffkitError(f"perturbed-attention guidance is not supported with {what} (diffusers has no PAG pipeline "
                           f"for it); allowed: an AnimateDiffPipeline folder (AnimateDiffPAGPipeline)")
    return pag_request(model, scale, ANIMATEDIFF_PAG_LAYERS if layers is None and scale else layers, adaptive_scale)


def video_to_video(model: AnimateDiff, videos, prompts: Union[str, Sequence[str]], *,
                   strength: Optional[float] = None, **options) -> torch.Tensor:
    """Videos (B, T, C, H, W) of input ``videos`` (one per prompt: lists of PIL frames or (T, 3, H, W) in [-1, 1],
    :func:`diffkit.video.read_video`'s; one frame count, the output's) and ``prompts`` as
    ``AnimateDiffVideoToVideoPipeline`` (module docstring): noised to ``strength`` (default 0.8), then the folder's
    loop; the options: :func:`text_to_video`'s (``latents``: the noised start itself, diffkit's state)."""
    return text_to_video(model, prompts, videos=list(videos), strength=strength, **options)


__all__ = ["AnimateDiff", "MotionNet", "load_animatediff", "is_animatediff_folder", "check_animatediff_folder",
           "refuse_animatediff_folder", "folder_sampler", "pag_guidance", "check_frames", "join_motion_adapter",
           "text_to_video",
           "video_to_video", "decode_frames", "ANIMATEDIFF_PIPELINE", "ANIMATEDIFF_SDXL_PIPELINE",
           "ANIMATEDIFF_V2V_PIPELINE", "MOTION_PIPELINES", "ANIMATEDIFF_STRENGTH", "ANIMATEDIFF_GUIDANCE",
           "ANIMATEDIFF_STEPS", "ANIMATEDIFF_FRAMES"]
