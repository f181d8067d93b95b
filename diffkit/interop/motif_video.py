"""Motif-Video diffusers folders (``MotifVideoPipeline``, ``MotifVideoImage2VideoPipeline``, diffusers 0.42.1):
videos from prompts, or from an image and prompts, with any diffkit sampler.

Motif-Video is a rectified-flow video transformer (Esser et al. 2024, Sec. 2, eq. 1: x_s = (1 - s) x_0 + s eps,
velocity u = eps - x_0; ``MotifVideoTransformer3DModel``: dual- then single-stream blocks, 3-D RoPE) on the latent
video of the Wan VAE (``AutoencoderKLWan``), conditioned on T5Gemma 2's encoder states. diffkit reuses Wan's latent
video, noise, decoding and sampling (:class:`.wan.WanFolder`), FLUX.1's resolution shift (:func:`.flux.calculate_shift`,
:func:`.flux.scheduler_shift`) and HunyuanVideo 1.5's guider (:func:`.hunyuan_video15.run_guider`). As
``MotifVideoPipeline.__call__``:

* prompts: the tokenizer's ``max_sequence_length`` tokens (default 512, padded, truncated), T5Gemma 2's encoder
  output under that mask, the mask handed to the transformer; the negative prompt (default "") the same.
* the network input: cat([z, condition, mask]) on the channels (in_channels = 2 C + 1): zeros in text-to-video; the
  timestep s T.
* guidance: the folder's ``guider`` (``ClassifierFreeGuidance``; ``__call__`` has no scale): u_u + s (u_c - u_u) (Ho &
  Salimans 2022, eq. 6; ``use_original_formulation``: u_c + s (u_c - u_u)), rescaled by ``guidance_rescale`` on the
  velocity; a disabled guider or s at its no-guidance value: one conditional call (a negative prompt refused).
  ``guidance_scale`` replaces the guider's s (in ``convention``).
* the grid: the folder's ``FlowMatchEulerDiscreteScheduler`` after ``set_timesteps(sigmas=linspace(1, 1/N, N),
  mu)``, mu FLUX.1's ``calculate_shift`` of the packed sequence length F h w / 4 (with ``use_dynamic_shifting``; else
  its fixed shift), each sigma at equal log-SNR on ``NoiseSchedule.flow(T, shift)`` of that run; flow Euler
  (``ddim``) its step, or any diffkit sampler on that grid.
* frames and size: 121 frames (4 k + 1) of 736 x 1280 by default, sizes multiples of 16 (the VAE's 8 times the 2 x 2
  patches); the latents (B, C, (frames - 1) / 4 + 1, H / 8, W / 8) in float32, video i's from seed + i.
* output: x = D(z std + mean) (:meth:`.wan.WanFolder.decode_video`); ``return_latents``: the final latents.

Image-to-video (``MotifVideoImage2VideoPipeline``, :func:`image_to_video`): each image resized to height x width
(Lanczos), encoded alone by the Wan VAE as a one-frame video, a posterior *draw* from video i's generator (seed + i,
after its noise), normalised (z - mean) / std, is latent frame 0 of the condition channels (the others 0) with the
mask channel 1 there; the image in [0, 1] through the folder's ``feature_extractor`` (SigLIP) and T5Gemma 2's
``vision_tower`` gives the ``image_embeds``. Every latent frame is sampled. Unlike the pipeline (one image, batch 1)
each video may have its own image.

Refused in one line before any weight is read (:func:`check_motif_video_folder`): another pipeline class, a missing
component or one of another class, a transformer whose channels are not 2 C + 1 in and C out (C the VAE's z_dim),
patches other than (1, 2, 2), an image-to-video transformer without ``image_embed_dim``, a scheduler other than
FlowMatchEuler (or with ``invert_sigmas``, ``stochastic_sampling``, ``use_flow_sigmas``), a guider with a ``start`` /
``stop`` window.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import model_dtype, require
from .wan import WanFolder

MOTIF_VIDEO_PIPELINE = "MotifVideoPipeline"
MOTIF_I2V_PIPELINE = "MotifVideoImage2VideoPipeline"
PIPELINES = (MOTIF_VIDEO_PIPELINE, MOTIF_I2V_PIPELINE)
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler", "guider")
I2V_REQUIRED = REQUIRED + ("feature_extractor",)
MOTIF_CLASSES = {"transformer": ("MotifVideoTransformer3DModel",), "vae": ("AutoencoderKLWan",),
                 "text_encoder": ("T5Gemma2Encoder",), "scheduler": ("FlowMatchEulerDiscreteScheduler",),
                 "guider": ("ClassifierFreeGuidance",)}
I2V_CLASSES = {**MOTIF_CLASSES, "feature_extractor": ("SiglipImageProcessor", "SiglipImageProcessorPil",
                                                      "SiglipImageProcessorFast")}
MOTIF_STEPS = 50  # MotifVideoPipeline.__call__'s num_inference_steps
MOTIF_FRAMES = 121  # its num_frames
MOTIF_HEIGHT, MOTIF_WIDTH = 736, 1280  # its height, width
MOTIF_FPS = 24.0  # its example's export_to_video(video, "output.mp4", fps=24)
MAX_SEQUENCE_LENGTH = 512  # its max_sequence_length


class MotifVideoNet(torch.nn.Module):
    """``net(z, t, context, mask, condition=None, image_embeds=None)`` over a ``MotifVideoTransformer3DModel`` on
    latent videos z (B, C, F, h, w): ``context`` / ``mask`` T5Gemma 2's states and mask, ``condition`` the condition
    latents and mask channel (B, C + 1, F, h, w) concatenated after z (zeros where None: text-to-video),
    ``image_embeds`` the vision states (image-to-video); ``t`` the flow time s T; the velocity in z's dtype."""

    def __init__(self, transformer):
        super().__init__()
        self.model = transformer

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None,
                condition: torch.Tensor = None, image_embeds: torch.Tensor = None) -> torch.Tensor:
        if context is None or mask is None:
            raise DiffkitError("a Motif-Video transformer needs cond {'context', 'mask'} (MotifVideo.encode_prompts)")
        dtype, (b, c, f, h, w) = model_dtype(self.model), x.shape
        condition = x.new_zeros(b, c + 1, f, h, w) if condition is None else condition.to(x)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(b)
        extra = {} if image_embeds is None else {"image_embeds": image_embeds.to(dtype)}
        return self.model(hidden_states=torch.cat([x, condition], 1).to(dtype), timestep=t,
                          encoder_hidden_states=context.to(dtype), encoder_attention_mask=mask.bool(),
                          return_dict=False, **extra)[0].to(x.dtype)


@dataclass
class MotifVideo(WanFolder):
    """The loaded components of a Motif-Video folder (:func:`load_motif_video`; ``pipeline``: its class): Wan's
    latent video, noise and decoding (:class:`.wan.WanFolder`) with T5Gemma 2 prompts, the folder's guider config and
    a per-size flow schedule (:meth:`at_size`)."""

    transformer: object
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler_config: dict
    schedule: object
    device: torch.device
    dtype: torch.dtype = torch.float32
    guider: Optional[dict] = None
    pipeline: str = MOTIF_VIDEO_PIPELINE
    feature_extractor: object = None
    mu: Optional[float] = None  # the run's calculate_shift (at_size)
    _sigmas: dict = field(default_factory=dict, repr=False)

    pipeline_name = MOTIF_VIDEO_PIPELINE
    default_steps = MOTIF_STEPS

    @property
    def size_multiple(self) -> int:
        """The VAE factor times the transformer's patch (16): ``check_inputs`` asks for the factor, the patches for
        the rest."""
        return self.vae_scale_factor * int(self.transformer.config.patch_size)

    def at_size(self, shape: tuple) -> "MotifVideo":
        """This folder with the flow schedule and mu of latent videos ``shape`` (B, C, F, h, w): mu =
        ``calculate_shift(F h w / 4)`` of the scheduler config, the shift it makes (:func:`.flux.scheduler_shift`)."""
        from ..schedule import NoiseSchedule
        from .flux import calculate_shift, scheduler_shift
        from .schedulers import train_timesteps
        _, _, f, h, w = shape
        patch = int(self.transformer.config.patch_size)
        mu = calculate_shift(f * (h // patch) * (w // patch), self.scheduler_config)
        shift = scheduler_shift(self.scheduler_config, lambda: mu, h, w)
        return replace(self, schedule=NoiseSchedule.flow(train_timesteps(self.scheduler_config), shift), mu=mu,
                       _sigmas={})

    def _scheduler_after(self, steps: int) -> tuple:
        """(sigmas, timesteps) after the pipeline's ``set_timesteps(sigmas=linspace(1, 1/steps, steps), mu=mu)``."""
        import numpy as np
        diffusers = require("diffusers")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise DiffkitError(f"steps={steps!r} is not allowed; give a positive integer")
        if steps not in self._sigmas:
            scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
            scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=self.mu)
            self._sigmas[steps] = (scheduler.sigmas.detach().to("cpu", torch.float64),
                                   scheduler.timesteps.detach().to("cpu", torch.float64))
        return self._sigmas[steps]

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> tuple:
        """(T5Gemma 2's encoder states (B, L, d) in the transformer's dtype, mask (B, L) bool) of ``prompts`` padded
        and truncated to L = ``max_sequence_length`` tokens (``_get_prompt_embeds``)."""
        from .stable_diffusion import prompt_list
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) \
                or max_sequence_length < 1:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed; give a positive integer")
        tokens = self.tokenizer(prompt_list(prompts), padding="max_length", max_length=max_sequence_length,
                                truncation=True, add_special_tokens=True, return_attention_mask=True,
                                return_tensors="pt")
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        with torch.no_grad():
            states = self.text_encoder(input_ids=ids, attention_mask=mask)[0]
        return states.to(model_dtype(self.transformer)), mask.bool()

    def denoiser(self):
        """The unguided flow-prediction Denoiser (:class:`MotifVideoNet`) on this run's flow schedule."""
        from ..denoiser import Denoiser
        denoiser = Denoiser(MotifVideoNet(self.transformer), self.schedule, "flow_prediction")
        denoiser.model = self.transformer
        return denoiser

    def prompt_guidance(self, prompts, negative_prompt, guidance_scale, convention: str,
                        max_sequence_length: int) -> tuple:
        """(denoiser, cond): :meth:`denoiser` wrapped in the guider's CFG against ``negative_prompt`` (default "")
        where it guides (:func:`.hunyuan_video15.run_guider`; a negative prompt without guidance: one line)."""
        from ..guidance import ClassifierFreeGuidance
        from .stable_diffusion import negative_prompts
        guider = run_guider(self.guider, guidance_scale, convention, negative_prompt)
        context, mask = self.encode_prompts(prompts, max_sequence_length)
        denoiser = self.denoiser()
        if guider is not None:
            null, null_mask = self.encode_prompts(negative_prompts(negative_prompt, context.shape[0]),
                                                  max_sequence_length)
            denoiser = ClassifierFreeGuidance(denoiser, guider.scale, guider.convention, rescale=guider.rescale,
                                              rescale_space="flow", null_context=null, null_cond={"mask": null_mask})
        return denoiser, {"context": context, "mask": mask}

    def image_condition(self, pil: Sequence, frames: int, generators) -> tuple:
        """(condition latents and mask channel (B, C + 1, frames, h, w), vision states (B, N, d)) of PIL images of
        the run's size as ``_prepare_first_frame_conditioning``: each encoded alone as a one-frame video, a
        posterior draw from its ``generators`` entry, normalised, on latent frame 0 (mask 1 there); its [0, 1]
        pixels through the feature extractor and T5Gemma 2's ``vision_tower``."""
        from .qwen_image_edit import _pixels
        from .stable_diffusion import vae_latents
        pixels = _pixels(pil).to(self.device)
        z = vae_latents(self.vae, pixels[:, :, None], self.device, generators, sample=True)[:, :, 0].float()
        mean, std = self._stats(z)
        condition = z.new_zeros(z.shape[0], z.shape[1] + 1, frames, *z.shape[2:])
        condition[:, :-1, 0], condition[:, -1, 0] = (z - mean) / std, 1.0
        vision = self.text_encoder.vision_tower
        features = self.feature_extractor.preprocess(images=((pixels + 1) / 2).clamp(0, 1).float().cpu(),
                                                     do_resize=True, do_rescale=False, do_normalize=True,
                                                     do_convert_rgb=True, return_tensors="pt")
        features = features.to(device=self.device, dtype=next(vision.parameters()).dtype)
        with torch.no_grad():
            embeds = vision(**features).last_hidden_state
        return condition, embeds.to(model_dtype(self.transformer))


def is_motif_video_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``MotifVideoPipeline`` or
    ``MotifVideoImage2VideoPipeline``."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) in PIPELINES


def check_motif_video_folder(directory, pipeline: str = MOTIF_VIDEO_PIPELINE) -> tuple:
    """(model_index dict, scheduler config, guider config) of a ``pipeline`` folder, checked from its JSON alone
    (module docstring); a one-line DiffkitError for what diffkit does not drive."""
    from ..errors import read_json_object
    from .flow_latents import check_part_configs
    from .flux import check_flux_scheduler
    from .hunyuan_video15 import GUIDER_DEFAULTS
    from .pixart import checked_folder
    directory = Path(directory)
    i2v = pipeline == MOTIF_I2V_PIPELINE
    index, config, vae = checked_folder(directory, pipeline, I2V_REQUIRED if i2v else REQUIRED, "Motif-Video",
                                        I2V_CLASSES if i2v else MOTIF_CLASSES)
    z_dim = vae.get("z_dim", 16)
    check_part_configs(directory, {"transformer": config, "vae": vae}, (
        ("transformer", "in_channels", 33, 2 * z_dim + 1, "the VAE's z_dim, condition latents and a mask channel"),
        ("transformer", "out_channels", 16, z_dim, "the VAE's z_dim"),
        ("transformer", "patch_size", 2, 2, "the pipeline's 2 x 2 patches"),
        ("transformer", "patch_size_t", 1, 1, "one latent frame a patch"),
        ("vae", "patch_size", None, None, "the Wan 2.1 VAE")))
    if i2v and config.get("image_embed_dim") is None:
        raise DiffkitError(f"{directory}'s transformer has image_embed_dim=None; allowed: the vision tower's width "
                           f"({pipeline} passes image_embeds)")
    sched = check_flux_scheduler(directory, pipeline)
    guider = read_json_object(directory / "guider" / "guider_config.json", "guider config")
    for key in ("start", "stop"):
        if guider.get(key, GUIDER_DEFAULTS[key]) != GUIDER_DEFAULTS[key]:
            raise DiffkitError(f"{directory}'s guider has {key}={guider[key]!r}, a window of the pipeline's steps "
                               f"diffkit does not drive; allowed: {key}={GUIDER_DEFAULTS[key]!r}")
    return index, sched, guider


def load_motif_video(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                     progress: bool = True) -> MotifVideo:
    """Load a ``MotifVideoPipeline`` / ``MotifVideoImage2VideoPipeline`` folder (never downloads, never unpickles;
    the latter's ``feature_extractor`` too), checked first (:func:`check_motif_video_folder`)."""
    from ..schedule import NoiseSchedule
    from . import from_pretrained, library_progress_bars
    from .flow_latents import frozen_on, load_flow_parts
    from .sd3 import _entry
    from .sd_xl import pipeline_class
    from .wan import check_widths
    diffusers, transformers = require("diffusers"), require("transformers")
    directory = Path(directory)
    pipeline = pipeline_class(directory)
    pipeline = pipeline if pipeline in PIPELINES else MOTIF_VIDEO_PIPELINE  # (checked_folder names what it is not)
    index, sched, guider = check_motif_video_folder(directory, pipeline)
    parts = load_flow_parts(directory, index, diffusers.MotifVideoTransformer3DModel, {"": "T5Gemma2Encoder"}, dtype,
                            progress, vae_cls=diffusers.AutoencoderKLWan)
    device = frozen_on(parts, device)
    if pipeline == MOTIF_I2V_PIPELINE:
        with library_progress_bars(progress):
            parts["feature_extractor"] = from_pretrained(getattr(transformers, _entry(index, "feature_extractor")),
                                                         directory / "feature_extractor", local_files_only=True)
    model = MotifVideo(**parts, scheduler_config=sched, schedule=NoiseSchedule.flow(1000, 1.0), device=device,
                       dtype=dtype, guider=guider, pipeline=pipeline)
    config, text = model.transformer.config, model.text_encoder.config
    widths = [(config.text_embed_dim, text.text_config.hidden_size, "text_embed_dim")]
    if pipeline == MOTIF_I2V_PIPELINE:
        widths.append((config.image_embed_dim, text.vision_config.hidden_size, "image_embed_dim"))
    check_widths(directory, widths)
    return model


def run_guider(config: Optional[dict], guidance_scale, convention: str, negative_prompt):
    """The run's guider (:func:`.hunyuan_video15.run_guider`; None where it does not guide) of the folder's guider
    ``config``; one line for a ``guidance_scale`` given to a disabled guider or a negative prompt where nothing
    guides."""
    from .hunyuan_video15 import GUIDER_DEFAULTS, check_negative_prompt
    from .hunyuan_video15 import run_guider as guider_of
    if guidance_scale is not None and not {**GUIDER_DEFAULTS, **(config or {})}["enabled"]:
        raise DiffkitError(f"guidance_scale={guidance_scale!r} is not allowed: this Motif-Video folder's guider is "
                           f"disabled (enabled false); drop it")
    guider = guider_of(config, guidance_scale, convention)
    check_negative_prompt(guider, negative_prompt)
    return guider


def check_frames(num_frames) -> int:
    """The pipeline's ``num_frames`` (default 121) of the form 4 k + 1 (:func:`.wan.check_frames`)."""
    from .wan import check_frames as wan_frames
    return wan_frames(num_frames, MOTIF_FRAMES)


def text_to_video(model: MotifVideo, prompts: Union[str, Sequence[str]], **options) -> torch.Tensor:
    """Videos (B, T, 3, H, W) of ``prompts`` (one string, or a list: one video each) as ``MotifVideoPipeline``
    (module docstring); ``options``: :func:`generate`'s."""
    return generate(model, prompts, None, **options)


def image_to_video(model: MotifVideo, images, prompts: Union[str, Sequence[str]], **options) -> torch.Tensor:
    """Videos (B, T, 3, H, W) from ``images`` (PIL images or (B, 3, H, W) in [-1, 1]; one for every prompt, or one
    per video) and ``prompts`` (one, or one per video) as ``MotifVideoImage2VideoPipeline`` (module docstring);
    ``options``: :func:`generate`'s."""
    if model.pipeline != MOTIF_I2V_PIPELINE:
        raise DiffkitError(f"image_to_video needs a {MOTIF_I2V_PIPELINE} folder (its feature_extractor); this one is "
                           f"a {model.pipeline} folder")
    return generate(model, prompts, images, **options)


def generate(model: MotifVideo, prompts: Union[str, Sequence[str]], images=None, *, negative_prompt=None,
             guidance_scale: Optional[float] = None, convention: str = "diffusers", steps: Optional[int] = None,
             sampler: Optional[str] = None, num_frames: Optional[int] = None, height: Optional[int] = None,
             width: Optional[int] = None, seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None,
             max_sequence_length: int = MAX_SEQUENCE_LENGTH, output_range: str = "-1,1",
             return_latents: bool = False, progress: bool = False, **options) -> torch.Tensor:
    """The Motif-Video pipelines' loop: text-to-video, or image-to-video with ``images`` (:func:`image_to_video`).

    guidance_scale: the guider's CFG scale s (default its config's), read in ``convention``, against
    ``negative_prompt`` (default ""; one, or one per video). steps: the scheduler's (default 50); sampler: None for
    its flow Euler step, or any diffkit sampler on its grid (``options``: its options). num_frames (default 121,
    4 k + 1), height x width (default 736 x 1280, multiples of 16). latents: z at s = 1 (B, C, F, h, w) (the
    pipeline's ``latents``), default N(0, I) from per-video ``seed + i``. Returns frames in ``output_range`` ("-1,1"
    or "0,1"), or with ``return_latents`` the final latents (B, C, F, h, w)."""
    from PIL import Image

    from ..errors import check_choice
    from ..noise import generators_from_seed, randn
    from .qwen_image_edit import _pil_images
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    prompts = prompt_list(prompts)
    pil = None if images is None else _pil_images(images)
    count = max(len(prompts), len(pil or ()))
    for what, given in (("images", pil), ("prompts", prompts)):
        if given is not None and len(given) not in (1, count):
            raise DiffkitError(f"{len(given)} {what} for {count} videos; give one, or one per video")
    prompts = prompts * count if len(prompts) == 1 else prompts
    frames = check_frames(num_frames)
    height = MOTIF_HEIGHT if height is None else height
    width = MOTIF_WIDTH if width is None else width
    model.check_size(height, width)
    shape = model.latent_video_shape(count, frames, height, width)
    run = model.at_size(shape)
    generators = None if seed is None else generators_from_seed(seed, count)
    if latents is None:  # drawn here: image-to-video's posterior draw continues video i's generator
        latents = randn(shape, generators, device=model.device)
    steps, grid, sampler, options, latents = run.start_latents(steps, sampler, options, shape, latents, seed)
    denoiser, cond = run.prompt_guidance(prompts, negative_prompt, guidance_scale, convention, max_sequence_length)
    if pil is not None:
        resized = [image.resize((width, height), resample=Image.LANCZOS) for image in pil * (count // len(pil))]
        cond["condition"], cond["image_embeds"] = run.image_condition(resized, shape[2], generators)
    z = run.sample_latents(denoiser, cond, grid, sampler, latents, seed, progress, options)
    return run.output_videos(z, output_range, return_latents)


__all__ = ["MotifVideo", "MotifVideoNet", "load_motif_video", "is_motif_video_folder", "check_motif_video_folder",
           "check_frames", "run_guider", "text_to_video", "image_to_video", "generate", "MOTIF_VIDEO_PIPELINE",
           "MOTIF_I2V_PIPELINE", "MOTIF_STEPS", "MOTIF_FRAMES", "MOTIF_FPS"]
