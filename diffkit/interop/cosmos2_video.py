"""A Cosmos Predict2 Video2World diffusers folder (``Cosmos2VideoToWorldPipeline``, diffusers 0.42.1): an image plus
a prompt -> a video continuing it, sampled with any diffkit sampler on the pipeline's grid.

The folder is a Cosmos Predict2 text-to-image one (:mod:`.cosmos2`: the same ``CosmosTransformer3DModel``, T5, Wan
2.1 VAE and Karras ``FlowMatchEulerDiscreteScheduler``) whose transformer takes one more input channel, the
condition mask, and runs on a video of F = (num_frames - 1) / 4 + 1 latent frames. Everything :mod:`.cosmos2`'s
docstring says of the sampling holds (EDM's Euler sampler on Karras sigmas 80 .. 0.002 is DDIM on the VP schedule of
EDM's noise levels, a ``flow_prediction`` Denoiser at s = sigma / (1 + sigma); T5 states zeroed past each prompt;
CFG D_c + g (D_c - D_u), g = 7 by default against the pipeline's ``DEFAULT_NEGATIVE_PROMPT``; N - 1 network calls
for the pipeline's N, ending at the VE latent at sigma_min), and for the video (``prepare_latents`` and the loop):

* the condition: the image (or an input video of K < num_frames frames, the pipeline's ``video``) resized to
  height x width (Lanczos, ``VideoProcessor.preprocess``) and padded with its last frame to num_frames frames,
  encoded by the Wan VAE as a posterior *sample* (``retrieve_latents(..., generator)``: mean + std n, n drawn from
  video i's generator ``seed + i`` before its start noise), normalised c = (E(x) - mean) / std sigma_data; its first
  n = (K - 1) / 4 + 1 latent frames (the input's own: the VAE is causal) are the conditioning frames
  (``cond_indicator``; an image: n = 1);
* the conditioning frame at every step (:class:`Cosmos2VideoNet`): the transformer sees c itself there (not the
  noisy state) at the timestep s_c = sigma_c / (1 + sigma_c) of ``sigma_conditioning`` 1e-4 (a per-frame timestep
  (B, 1, F, 1, 1)), with the condition mask channel 1 there and 0 elsewhere, and the frame's x_0 is c (the loop's
  ``noise_pred = cond_indicator c + ...``, both passes of CFG): diffkit returns the velocity u = (x_s - c) / s
  there, whose x_0 = x_s - s u is c, so every sampler sees it; the frame's state itself follows the sampler towards
  c (the pipeline neither resets nor replaces it: its final latents carry it at sigma_min);
* ``fps`` (default 16) goes to the transformer (its RoPE's temporal frequencies, ``seq / fps * base_fps``);
* videos: the Wan VAE decodes D(z std / sigma_data + mean) into (B, T, 3, H, W), T = 4 (F - 1) + 1; defaults 93
  frames of 704 x 1280, 35 steps.

The safety checker (Cosmos Guardrail) is treated as for text-to-image (docs/interop/cosmos2.md): not loaded, not
run; checking prompts and videos as the NVIDIA Open Model License asks is the user's. Not driven (one line):
``num_frames`` not 4 k + 1 or under 5 (one latent frame is the condition alone), an input video of num_frames frames
or more, latent frames past the transformer's ``max_size``, a VAE whose temporal factor is not 4, and whatever
:mod:`.cosmos2` refuses.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import model_dtype
from .cosmos2 import SIGMA_DATA, Cosmos2, Cosmos2Net, check_cosmos2_folder

COSMOS2_VIDEO_PIPELINE = "Cosmos2VideoToWorldPipeline"
VIDEO_GUIDANCE = 7.0  # its guidance_scale g (diffkit's seed convention)
VIDEO_STEPS = 35  # its num_inference_steps
VIDEO_FRAMES = 93  # its num_frames
VIDEO_SIZE = (704, 1280)  # its height, width
VIDEO_FPS = 16  # its fps (the transformer's RoPE; its docs' export_to_video(..., fps=16))
SIGMA_CONDITIONING = 1e-4  # its sigma_conditioning: the conditioning frames' noise level
TEMPORAL = 4  # the Wan 2.1 VAE's frames per latent frame (2^sum(temperal_downsample))


class Cosmos2VideoNet(Cosmos2Net):
    """``net(z, t, context, condition)`` over a Video2World ``CosmosTransformer3DModel`` on flow states z (B, C, F, h,
    w) (module docstring): the first n frames replaced by ``condition`` (B, C, n, h, w) at the timestep of
    ``SIGMA_CONDITIONING``, the others at s = t / T, the condition mask (and the zero padding mask) appended as
    channels, ``fps`` to the transformer; the velocity, (x_s - c) / s on the conditioning frames (their x_0 is c)."""

    def __init__(self, transformer, num_timesteps: int, padding: bool, fps: float = VIDEO_FPS):
        super().__init__(transformer, num_timesteps, padding)
        self.fps = fps

    def condition_timestep(self, device) -> torch.Tensor:
        """The conditioning frames' timestep s_c = sigma_c / (1 + sigma_c) of ``SIGMA_CONDITIONING`` (float32)."""
        sigma_c = torch.tensor(SIGMA_CONDITIONING, dtype=torch.float32, device=device)
        return sigma_c / (sigma_c + 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None,
                condition: torch.Tensor = None) -> torch.Tensor:
        if context is None or condition is None:
            raise DiffkitError("a Cosmos Video2World transformer needs cond {'context', 'condition'} "
                               "(cosmos2_video.image_to_video)")
        dtype, (b, _, frames, h, w), n = model_dtype(self.model), x.shape, condition.shape[2]
        s = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(b) / self.num_timesteps
        timestep = torch.cat([self.condition_timestep(x.device).expand(b, n), s[:, None].expand(b, frames - n)], dim=1)
        mask = x.new_zeros(b, 1, frames, h, w)
        mask[:, :, :n] = 1
        inputs = [torch.cat([condition.to(x.dtype), x[:, :, n:]], dim=2), mask]
        if self.padding:  # the pipeline's zero padding_mask (cosmos2.Cosmos2Net)
            inputs.append(x.new_zeros(b, 1, frames, h, w))
        out = self.model(hidden_states=torch.cat(inputs, dim=1).to(dtype),
                         timestep=timestep.view(b, 1, frames, 1, 1).to(dtype), encoder_hidden_states=context.to(dtype),
                         fps=self.fps, return_dict=False)[0].to(x.dtype)
        held = (x[:, :, :n] - condition.to(x.dtype)) / s.view(b, 1, 1, 1, 1).to(x.dtype)
        return torch.cat([held, out[:, :, n:]], dim=2)


@dataclass
class Cosmos2Video(Cosmos2):
    """The loaded components of a ``Cosmos2VideoToWorldPipeline`` folder (:func:`load_cosmos2_video`)."""

    default_steps = VIDEO_STEPS
    pipeline = COSMOS2_VIDEO_PIPELINE

    def video_denoiser(self, fps: float = VIDEO_FPS):
        """The unguided ``flow_prediction`` Denoiser of :class:`Cosmos2VideoNet` on :attr:`denoiser`'s schedule."""
        from ..denoiser import Denoiser
        schedule = self.denoiser.schedule
        denoiser = Denoiser(Cosmos2VideoNet(self.transformer, schedule.num_timesteps, self.padding, fps), schedule,
                            "flow_prediction")
        denoiser.model = self.transformer
        return denoiser

    def condition(self, pixels: torch.Tensor, frames: int, generator=None) -> torch.Tensor:
        """c (B, C, n, h, w), the conditioning latent frames of input videos (B, 3, K, H, W) in [-1, 1] of
        K < ``frames`` frames (an image: K = 1) (module docstring): each padded with its last frame to ``frames``
        frames through the Wan VAE, a posterior sample from ``generator`` (one per video), (z - mean) / std
        sigma_data; its first n = (K - 1) / 4 + 1 latent frames."""
        from .stable_diffusion import vae_latents
        given = pixels.shape[2]
        video = torch.cat([pixels, pixels[:, :, -1:].expand(-1, -1, frames - given, -1, -1)], dim=2)
        z = vae_latents(self.vae, video, self.device, generator, sample=True).float()
        mean, std = (s[:, :, None] for s in self._stats(z))
        return ((z - mean) / std * SIGMA_DATA)[:, :, :(given - 1) // TEMPORAL + 1]

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Videos (B, T, 3, H, W) in [-1, 1] (not clamped) of VE latents (B, C, F, h, w): D(z std / sigma_data +
        mean), as the pipeline decodes."""
        with torch.no_grad():
            z = latents.to(device=self.device, dtype=self.vae.dtype)
            mean, std = (s[:, :, None] for s in self._stats(z))
            video = self.vae.decode(z * std / SIGMA_DATA + mean, return_dict=False)[0]
        return video.float().permute(0, 2, 1, 3, 4)


def is_cosmos2_video_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``Cosmos2VideoToWorldPipeline``."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == COSMOS2_VIDEO_PIPELINE


def check_cosmos2_video_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of a ``Cosmos2VideoToWorldPipeline`` folder, checked from its JSON alone
    (:func:`.cosmos2.check_cosmos2_folder` with the condition mask's input channel, and a Wan VAE of temporal factor
    4); a one-line DiffkitError for what diffkit does not drive."""
    from ..errors import read_json_object
    directory = Path(directory)
    found = check_cosmos2_folder(directory, COSMOS2_VIDEO_PIPELINE, mask_channels=1)
    downsample = read_json_object(directory / "vae" / "config.json", "vae config").get("temperal_downsample",
                                                                                      [False, True, True])
    if 2 ** sum(bool(d) for d in downsample) != TEMPORAL:
        raise DiffkitError(f"{directory}'s vae has temperal_downsample={downsample!r}; allowed: two temporal levels "
                           f"(the pipeline's vae_scale_factor_temporal {TEMPORAL}, Wan 2.1's [false, true, true])")
    return found


def load_cosmos2_video(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                       progress: bool = True, lora=None) -> Cosmos2Video:
    """Load a ``Cosmos2VideoToWorldPipeline`` folder as :func:`.cosmos2.load_cosmos2` does (never downloads, no
    safety checker), checked first (:func:`check_cosmos2_video_folder`); ``lora``: refused (the pipeline has no LoRA
    loader)."""
    from .cosmos2 import _load_cosmos2
    if lora:
        raise DiffkitError("a LoRA is not supported for a Cosmos Predict2 Video2World folder: "
                           "Cosmos2VideoToWorldPipeline (diffusers 0.42.1) has no load_lora_weights; drop it")
    return _load_cosmos2(Cosmos2Video, directory, device, dtype, progress, check_cosmos2_video_folder)


def check_frames(num_frames) -> int:
    """The frame count (default 93): 4 k + 1, at least 5 (the Wan VAE's 1 + 4 k; one latent frame would be the
    condition alone)."""
    frames = VIDEO_FRAMES if num_frames is None else num_frames
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < TEMPORAL + 1 or (frames - 1) % TEMPORAL:
        raise DiffkitError(f"num_frames={frames!r} is not allowed; give 4 k + 1 frames, at least {TEMPORAL + 1} (the "
                           f"Wan VAE's 1 + 4 k; the first latent frame is the image's)")
    return frames


def input_videos(images) -> list:
    """The conditioning inputs of :func:`image_to_video` as lists of PIL frames: ``images`` a PIL image, a list of
    them, (B, 3, H, W) in [-1, 1] (one frame each), or a list of videos (lists of PIL frames or (T, 3, H, W) in
    [-1, 1], :func:`diffkit.video.read_video`'s) of one frame count; a one-line DiffkitError otherwise."""
    from .qwen_image_edit import _pil_images
    items = list(images) if isinstance(images, (list, tuple)) else None
    if not items or not all(isinstance(v, (list, tuple)) or isinstance(v, torch.Tensor) and v.ndim == 4
                            for v in items):
        return [[image] for image in _pil_images(images)]
    videos = [_pil_images(v) if isinstance(v, torch.Tensor) else _pil_images(list(v)) for v in items]
    if len({len(v) for v in videos}) != 1 or not videos[0]:
        raise DiffkitError(f"input videos of {sorted({len(v) for v in videos})} frames are not allowed; give videos "
                           f"of one frame count, at least 1 (the pipeline encodes them as one batch)")
    return videos


def prompt_videos(videos, prompts: list, num_frames, strength) -> Optional[list]:
    """Video-to-video's inputs (CogVideoX's, AnimateDiff's ``video_to_video``): ``videos`` as :func:`input_videos`'
    lists of PIL frames, one per prompt, their frame count the output's (``num_frames`` must be None), or None
    without videos (``strength`` must be None then); one line otherwise."""
    if videos is None:
        if strength is not None:
            raise DiffkitError(f"strength={strength!r} is not allowed without input videos (video_to_video)")
        return None
    if num_frames is not None:
        raise DiffkitError(f"num_frames={num_frames!r} is not allowed for video-to-video; the input videos' frame "
                           f"count is the output's")
    videos = input_videos(list(videos))
    if len(videos) != len(prompts):
        raise DiffkitError(f"{len(videos)} videos for {len(prompts)} prompts are not allowed; give one per prompt")
    return videos


def image_to_video(model: Cosmos2Video, images, prompts: Union[str, Sequence[str]], *, negative_prompt=None,
                   guidance_scale: Optional[float] = None, convention: str = "diffusers", steps: Optional[int] = None,
                   sampler: Optional[str] = None, num_frames: Optional[int] = None, height: Optional[int] = None,
                   width: Optional[int] = None, fps: Optional[float] = None, seed: Optional[int] = 0,
                   latents: Optional[torch.Tensor] = None, max_sequence_length: Optional[int] = None,
                   output_range: str = "-1,1", return_latents: bool = False, progress: bool = False,
                   **options) -> torch.Tensor:
    """Videos (B, T, 3, H, W) continuing ``images`` (PIL images or (B, 3, H, W) in [-1, 1], or input videos of K
    frames, :func:`input_videos`; one for every prompt, or one per prompt) by ``prompts`` (one, or one per image) as
    ``Cosmos2VideoToWorldPipeline`` (module docstring; its ``image``, or its ``video``: the first (K - 1) / 4 + 1
    latent frames conditioning, K < num_frames).

    guidance_scale: in ``convention`` (diffusers': s = g + 1, default 8, the pipeline's g = 7; ``"seed"``: g), against
    ``negative_prompt`` (default the pipeline's). steps: the pipeline's (default 35, at least 2); sampler: None for
    its loop (``ddim`` on its Karras sigmas), or any diffkit sampler on that grid. num_frames: 4 k + 1 (default 93);
    height / width: multiples of 16 (default 704 x 1280), each image resized to it (Lanczos); fps: the transformer's
    (default 16). latents: eps (B, C, F, h, w) of the start sigma_max eps (the pipeline's ``latents``), default
    N(0, I) from video i's generator ``seed + i`` after its condition's posterior sample. Returns videos in
    ``output_range`` ("-1,1" or "0,1"), or with ``return_latents`` the VE latents at sigma_min (B, C, F, h, w)."""
    from PIL import Image

    from ..errors import check_choice, check_range
    from ..noise import generators_from_seed, randn
    from .cosmos2 import ve_sample
    from .flow_latents import edit_prompts
    from .qwen_image_edit import _pixels
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    frames = check_frames(num_frames)
    fps = VIDEO_FPS if fps is None else fps
    check_range("fps", fps, 0.0, None, low_inclusive=False)
    if options.get("flow_shift") is not None:
        raise DiffkitError(f"flow_shift={options['flow_shift']!r} moves a flow schedule's grid; a Cosmos Predict2 "
                           f"folder samples on EDM's Karras sigmas; drop it")
    clips, prompts = input_videos(images), prompt_list(prompts)
    clips = clips * len(prompts) if len(clips) == 1 else clips
    prompts = edit_prompts(torch.empty(len(clips), 3, 1, 1), prompts)
    if len(clips[0]) >= frames:
        raise DiffkitError(f"input videos of {len(clips[0])} frames are not allowed for num_frames={frames}; give "
                           f"fewer frames than the video (every latent frame would be a conditioning one)")
    height = VIDEO_SIZE[0] if height is None else height
    width = VIDEO_SIZE[1] if width is None else width
    batch, channels, h, w = model.latent_shape(len(clips), height, width)
    latent_frames = (frames - 1) // TEMPORAL + 1
    if latent_frames > model.transformer.config.max_size[0]:
        raise DiffkitError(f"num_frames={frames} is not allowed; give at most "
                           f"{TEMPORAL * (model.transformer.config.max_size[0] - 1) + 1} (the transformer's max_size "
                           f"{list(model.transformer.config.max_size)} latent frames)")
    shape = (batch, channels, latent_frames, h, w)
    grid = model.scheduler_grid(model.default_steps if steps is None else steps)
    max_sequence_length = model.max_sequence_length if max_sequence_length is None else max_sequence_length
    denoiser, cond = model.prompt_guidance(prompts, guidance_scale, convention, negative_prompt, max_sequence_length,
                                           denoiser=model.video_denoiser(fps))
    generators = None if seed is None else generators_from_seed(seed, batch)
    pixels = torch.stack([_pixels([frame.resize((width, height), resample=Image.LANCZOS) for frame in clip])
                          for clip in clips]).permute(0, 2, 1, 3, 4)  # (B, 3, K, H, W)
    cond["condition"] = model.condition(pixels, frames, generators)
    state = torch.float32  # the pipeline's latents and scheduler state, whatever the transformer's dtype
    if latents is None:  # eps from seed + i after the condition's draw; the generators then go on to the sampler
        latents = randn(shape, generators, device=model.device, dtype=state)
    elif tuple(latents.shape) != shape:
        raise DiffkitError(f"latents of shape {tuple(latents.shape)} are not allowed; expected {shape}")
    draws = {"seed": seed} if generators is None else {"generator": generators}
    z = ve_sample(model, denoiser, latents.to(model.device, state), sampler or "ddim", None, None, grid, cond,
                  progress, draws, options, dtype=state)
    if return_latents:
        return z
    videos = model.decode_video(z)
    return (videos / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else videos.clamp(-1, 1)


__all__ = ["Cosmos2Video", "Cosmos2VideoNet", "load_cosmos2_video", "is_cosmos2_video_folder",
           "check_cosmos2_video_folder", "check_frames", "input_videos", "prompt_videos", "image_to_video",
           "COSMOS2_VIDEO_PIPELINE", "VIDEO_GUIDANCE", "VIDEO_STEPS", "VIDEO_FRAMES", "VIDEO_SIZE", "VIDEO_FPS"]
