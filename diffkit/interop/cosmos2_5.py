"""A Cosmos Predict 2.5 diffusers folder (``Cosmos2_5_PredictBasePipeline``, diffusers 0.42.1): text-to-world,
image-to-world and video-to-world in one pipeline, sampled with any diffkit sampler on the folder's grid.

Cosmos Predict 2.5 (NVIDIA 2025) keeps Cosmos Predict2's ``CosmosTransformer3DModel`` (:mod:`.cosmos2`,
:mod:`.cosmos2_video`: the condition-mask channel, the zero padding-mask channel) and the Wan 2.1 VAE, but is
sampled as a plain rectified flow (x_s = (1 - s) x_0 + s eps, velocity u = eps - x_0; no VE state) and reads a
Qwen2.5-VL text encoder. diffkit drives it with :class:`.cosmos2_video.Cosmos2VideoNet` (the conditioning frames) and
:class:`.wan.WanFolder`'s flow grid, start and decoding. As ``Cosmos2_5_PredictBasePipeline.__call__``:

* prompts (``_get_prompt_embeds``): each a chat of the pipeline's system message and the prompt
  (``apply_chat_template``, no generation prompt) padded / truncated to ``max_sequence_length`` (default 512), run
  through Qwen2.5-VL with no mask; every layer's hidden state but the embeddings', each standardised over its
  features ((h - mean) / (std + 1e-8), unbiased std), concatenated on the features; the transformer's
  ``crossattn_proj`` maps them to its width.
* guidance: u_c + g (u_c - u_u) with the pipeline's ``guidance_scale`` g (default 7) for g > 1, diffkit's seed
  convention w = g (as :mod:`.cosmos2`), against ``DEFAULT_NEGATIVE_PROMPT`` by default.
* the grid: the folder's ``UniPCMultistepScheduler`` after ``set_timesteps(steps)`` (default 36; Cosmos' config:
  Karras flow sigmas 200 / 201 .. 0.01 / 1.01, then 0), the sampler of its step (:func:`.hidream.folder_sampler`:
  ``unipc`` with its order and corrector); the transformer's timestep is the sigma s itself (float, per frame).
* the start: z = eps (B, C, F, h, w), F = (num_frames - 1) / 4 + 1, taken as the flow state at the first sigma
  (:func:`.pixart.flow_start`), video i's eps from ``seed + i``.
* the condition (``prepare_latents``): text-to-world none (the mask channel zeros); image-to-world the image
  (``to_tensor``, nearest-neighbour resize to height x width) then num_frames - 1 black frames, its first latent
  frame conditioning (n = 1); video-to-world the input video's frames resized (bilinear), its **last**
  4 (k - 1) + 1 frames (k = ``num_latent_conditional_frames``, 1 or 2, default 2) padded with the last to
  num_frames, n = k. Encoded by the Wan VAE (posterior mode), c = (E(x) - mean) / std. On its first n latent frames
  the transformer sees c at the timestep ``conditional_frame_timestep`` 1e-4 (:class:`Cosmos25Net`), the mask
  channel 1 there, and their velocity is eps - c (the pipeline's ``gt_velocity``, eps the start latents, fixed for
  the whole run; not (x_s - c) / s: the start eps is the state at sigma 200 / 201, not 1), for every sampler.
* videos: D(z std + mean) (:meth:`.wan.WanFolder.decode_video`), (B, T, 3, H, W); defaults 93 frames of 704 x 1280.

The safety checker (Cosmos Guardrail, the ``cosmos_guardrail`` package) is treated as for :mod:`.cosmos2`: not
loaded, not run; checking prompts and videos as the NVIDIA Open Model License asks is the user's. Unlike the pipeline
(one image, or one video with one prompt) each video may have its own image or input video. Refused in one line
before any weight is read: another pipeline / part class, a transformer without ``use_crossattn_projection`` or
whose ``crossattn_proj_in_channels`` is not the encoder's layers x width, a UniPC config ``unipc`` does not compute,
``num_frames`` not 4 k + 1, conditioning frames filling the whole video, both an image and a video, an input video
shorter than its conditioning frames, ``--flow-shift``, and what :mod:`.cosmos2` refuses of the transformer / VAE.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import require
from .cosmos2 import COSMOS_TRANSFORMER, Cosmos2, check_cosmos2_folder
from .cosmos2_video import TEMPORAL, Cosmos2VideoNet
from .wan import WanFolder

COSMOS25_PIPELINE = "Cosmos2_5_PredictBasePipeline"
COSMOS25_CLASSES = {"transformer": (COSMOS_TRANSFORMER,), "vae": ("AutoencoderKLWan",),
                    "text_encoder": ("Qwen2_5_VLForConditionalGeneration",), "scheduler": ("UniPCMultistepScheduler",)}
COSMOS25_STEPS = 36  # its num_inference_steps
COSMOS25_FRAMES = 93  # its num_frames
COSMOS25_SIZE = (704, 1280)  # its height, width
COSMOS25_FPS = 16  # its docs' export_to_video(..., fps=16)
CONDITION_TIMESTEP = 1e-4  # its conditional_frame_timestep
LATENT_CONDITION_FRAMES = 2  # its num_latent_conditional_frames (video-to-world)
SYSTEM_MESSAGE = "You are a helpful assistant who will provide prompts to an image generator."  # _get_prompt_embeds'


class Cosmos25Net(Cosmos2VideoNet):
    """:class:`.cosmos2_video.Cosmos2VideoNet` as Cosmos 2.5 calls its transformer: the conditioning frames at the
    timestep 1e-4 itself, no ``fps`` (module docstring)."""

    def __init__(self, transformer, num_timesteps: int, padding: bool):
        super().__init__(transformer, num_timesteps, padding, fps=None)

    def condition_timestep(self, device) -> torch.Tensor:
        return torch.tensor(CONDITION_TIMESTEP, dtype=torch.float32, device=device)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, condition: torch.Tensor = None,
                start: torch.Tensor = None) -> torch.Tensor:
        """The velocity; on the conditioning frames the pipeline's ``gt_velocity`` eps - c, eps the start latents
        ``start`` (B, C, F, h, w)."""
        if start is None:
            raise DiffkitError("a Cosmos Predict 2.5 transformer needs cond {'context', 'condition', 'start'} "
                               "(cosmos2_5.generate)")
        out, n = super().forward(x, t, context, condition), condition.shape[2]
        return torch.cat([(start[:, :, :n] - condition).to(out.dtype), out[:, :, n:]], dim=2)


@dataclass
class Cosmos25(WanFolder):
    """The loaded components of a ``Cosmos2_5_PredictBasePipeline`` folder (:func:`load_cosmos2_5`)."""

    transformer: object
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler_config: dict
    schedule: object
    device: torch.device
    dtype: torch.dtype = torch.float32
    padding: bool = True
    _sigmas: dict = field(default_factory=dict, repr=False)
    _denoiser: object = field(default=None, repr=False)

    pipeline = pipeline_name = COSMOS25_PIPELINE
    default_steps = COSMOS25_STEPS
    size_multiple = 16  # its check_inputs
    max_sequence_length = 512
    check_guidance_scale = Cosmos2.check_guidance_scale  # g > 1 or none, diffkit's seed convention
    prompt_guidance = Cosmos2.prompt_guidance  # CFG against DEFAULT_NEGATIVE_PROMPT (the same text as Predict2's)

    @property
    def denoiser(self):
        """The unguided ``flow_prediction`` Denoiser of :class:`Cosmos25Net` on the folder's flow schedule."""
        from ..denoiser import Denoiser
        if self._denoiser is None:
            self._denoiser = Denoiser(Cosmos25Net(self.transformer, self.schedule.num_timesteps, self.padding),
                                      self.schedule, "flow_prediction")
            self._denoiser.model = self.transformer
        return self._denoiser

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: int = 512) -> torch.Tensor:
        """The standardised, concatenated Qwen2.5-VL hidden states (B, L, layers x d) of ``_get_prompt_embeds``
        (module docstring), in the text encoder's dtype."""
        from .stable_diffusion import prompt_list
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) \
                or max_sequence_length < 1:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed; give a positive integer")
        ids = []
        for prompt in prompt_list(prompts):
            chat = [{"role": role, "content": [{"type": "text", "text": text}]}
                    for role, text in (("system", SYSTEM_MESSAGE), ("user", prompt))]
            tokens = self.tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=False,
                                                        add_vision_id=False, max_length=max_sequence_length,
                                                        truncation=True, padding="max_length", return_dict=True)
            ids.append(torch.as_tensor(tokens["input_ids"], dtype=torch.long))
        with torch.no_grad():
            states = self.text_encoder(torch.stack(ids).to(self.device), output_hidden_states=True).hidden_states[1:]
        return torch.cat([(h - h.mean(dim=-1, keepdim=True)) / (h.std(dim=-1, keepdim=True) + 1e-8)
                          for h in states], dim=-1).to(self.text_encoder.dtype)

    def condition(self, pixels: torch.Tensor, given: int) -> torch.Tensor:
        """c (B, C, n, h, w): videos (B, 3, T, H, W) in [-1, 1] (the condition's ``given`` frames, then padding)
        through the Wan VAE (posterior mode), (z - mean) / std, the first n = (given - 1) / 4 + 1 latent frames."""
        from .stable_diffusion import vae_latents
        z = vae_latents(self.vae, pixels, self.device).float()
        mean, std = (s[:, :, None] for s in self._stats(z))
        return ((z - mean) / std)[:, :, :(given - 1) // TEMPORAL + 1]


def is_cosmos2_5_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``Cosmos2_5_PredictBasePipeline``."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == COSMOS25_PIPELINE


def check_cosmos2_5_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of a ``Cosmos2_5_PredictBasePipeline`` folder, from its JSON alone:
    :func:`.cosmos2.check_cosmos2_folder` with 2.5's classes, the condition-mask channel and the text projection,
    whose input width must be the Qwen2.5-VL layers x width, and a scheduler ``unipc`` computes
    (:func:`.hidream.folder_sampler`); a one-line DiffkitError otherwise."""
    from ..errors import read_json_object
    from .hidream import folder_sampler
    directory = Path(directory)
    index, sched = check_cosmos2_folder(directory, COSMOS25_PIPELINE, mask_channels=1, classes=COSMOS25_CLASSES,
                                        projection=True)
    config = read_json_object(directory / "transformer" / "config.json", "transformer config")
    text = read_json_object(directory / "text_encoder" / "config.json", "text_encoder config")
    text = text.get("text_config") or text
    width = int(text.get("num_hidden_layers", 0)) * int(text.get("hidden_size", 0))
    if config.get("crossattn_proj_in_channels", 1024) != width:
        raise DiffkitError(f"{directory}'s transformer has crossattn_proj_in_channels="
                           f"{config.get('crossattn_proj_in_channels', 1024)!r}; allowed: {width} (the text "
                           f"encoder's num_hidden_layers x hidden_size: its layers' states concatenated)")
    folder_sampler(sched)
    return index, sched


def load_cosmos2_5(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                   progress: bool = True) -> Cosmos25:
    """Load a ``Cosmos2_5_PredictBasePipeline`` folder, checked first (:func:`check_cosmos2_5_folder`), never
    downloading nor unpickling, without the safety checker; the padding-mask channel moved into
    :class:`Cosmos25Net` (:func:`.cosmos2.take_padding`)."""
    from ..schedule import NoiseSchedule
    from .cosmos2 import take_padding
    from .flow_latents import frozen_on, load_flow_parts
    from .sana import flow_shift_of
    from .schedulers import train_timesteps
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_cosmos2_5_folder(directory)
    parts = load_flow_parts(directory, index, diffusers.CosmosTransformer3DModel,
                            {"": "Qwen2_5_VLForConditionalGeneration"}, dtype, progress,
                            vae_cls=diffusers.AutoencoderKLWan)
    device = frozen_on(parts, device)
    model = Cosmos25(**{k: parts[k] for k in ("transformer", "vae", "text_encoder", "tokenizer")},
                     scheduler_config=sched, schedule=NoiseSchedule.flow(train_timesteps(sched), flow_shift_of(sched)),
                     device=device, dtype=dtype)
    return take_padding(model)


def image_pixels(image, height: int, width: int, frames: int) -> torch.Tensor:
    """(3, frames, H, W) in [-1, 1]: a PIL image (``to_tensor``, nearest-neighbour resize) then black frames, as
    the pipeline's image-to-world input."""
    from .qwen_image_edit import _pixels
    first = torch.nn.functional.interpolate(_pixels([image]), size=(height, width))[0]
    return torch.cat([first[:, None], first.new_full((3, frames - 1, height, width), -1.0)], dim=1)


def video_pixels(video: list, height: int, width: int, frames: int, given: int) -> torch.Tensor:
    """(3, frames, H, W) in [-1, 1]: a video's (PIL frames) last ``given`` frames resized (bilinear), padded with the
    last to ``frames``, as the pipeline's video-to-world input."""
    from PIL import Image

    from .qwen_image_edit import _pixels
    if len(video) < given:
        raise DiffkitError(f"an input video of {len(video)} frames is not allowed; give at least {given} (its last "
                           f"{given} frames are the conditioning ones)")
    kept = _pixels([frame.resize((width, height), resample=Image.BILINEAR) for frame in video[-given:]])
    return torch.cat([kept, kept[-1:].expand(frames - given, -1, -1, -1)]).transpose(0, 1)


def generate(model: Cosmos25, prompts: Union[str, Sequence[str]], images=None, videos=None, *, negative_prompt=None,
             guidance_scale: Optional[float] = None, convention: str = "diffusers", steps: Optional[int] = None,
             sampler: Optional[str] = None, num_frames: Optional[int] = None, height: Optional[int] = None,
             width: Optional[int] = None, num_latent_conditional_frames: int = LATENT_CONDITION_FRAMES,
             seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None,
             max_sequence_length: Optional[int] = None, output_range: str = "-1,1", return_latents: bool = False,
             progress: bool = False, **options) -> torch.Tensor:
    """Videos (B, T, 3, H, W) of ``prompts`` as ``Cosmos2_5_PredictBasePipeline`` (module docstring): text-to-world
    without ``images`` / ``videos``; image-to-world from ``images`` (PIL images: one for every prompt, or one each);
    video-to-world from ``videos`` (lists of PIL frames, or (T, 3, H, W) in [-1, 1]; one, or one each), its last
    4 (k - 1) + 1 frames conditioning, k = ``num_latent_conditional_frames`` (1 or 2).

    guidance_scale: in ``convention`` (diffusers': s = g + 1, default 8, the pipeline's g = 7; ``"seed"``: g),
    against ``negative_prompt``. steps: the scheduler's (default 36); sampler: None for its own step, or any diffkit
    sampler on its grid (``options``: its options). num_frames: 4 k + 1 (default 93), height x width: multiples of
    16 (default 704 x 1280). latents: eps (B, C, F, h, w) (the pipeline's ``latents``), default N(0, I) from video
    i's ``seed + i``. Returns videos in ``output_range`` ("-1,1" or "0,1"), or with ``return_latents`` the final
    latents."""
    from ..errors import check_choice
    from .cosmos2_video import input_videos
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    from .wan import check_frames
    check_choice("output_range", output_range, OUTPUT_RANGES)
    shift = options.pop("flow_shift", None)
    if shift is not None:
        raise DiffkitError(f"flow_shift={shift!r} is not allowed for a Cosmos Predict 2.5 folder (its grid is its "
                           f"scheduler's Karras flow sigmas); drop it")
    if images is not None and videos is not None:
        raise DiffkitError("images and videos are both given; a Cosmos Predict 2.5 folder takes one condition: an "
                           "image (image-to-world) or a video (video-to-world)")
    if num_latent_conditional_frames not in (1, 2):
        raise DiffkitError(f"num_latent_conditional_frames={num_latent_conditional_frames!r} is not allowed; "
                           f"allowed: 1 or 2 (Cosmos2_5_PredictBasePipeline's)")
    frames, prompts = check_frames(COSMOS25_FRAMES if num_frames is None else num_frames), prompt_list(prompts)
    height, width = COSMOS25_SIZE[0] if height is None else height, COSMOS25_SIZE[1] if width is None else width
    model.check_size(height, width)
    clips = None if images is None else [clip[0] for clip in input_videos(images)]
    given = 1
    if videos is not None:
        clips, given = input_videos(list(videos)), TEMPORAL * (num_latent_conditional_frames - 1) + 1
    if clips is not None:
        clips = clips * len(prompts) if len(clips) == 1 else clips
        if len(clips) != len(prompts) and len(prompts) != 1:
            raise DiffkitError(f"{len(clips)} conditions for {len(prompts)} prompts are not allowed; give one, or "
                               f"one per prompt")
        prompts = prompts * len(clips) if len(prompts) == 1 else prompts
    shape = model.latent_video_shape(len(prompts), frames, height, width)
    most = list(model.transformer.config.max_size)  # (frames, rows, columns) of its position tables
    if shape[2] > most[0] or shape[3] > 2 * most[1] or shape[4] > 2 * most[2]:
        raise DiffkitError(f"{frames} frames of {height}x{width} are not allowed; give at most "
                           f"{TEMPORAL * (most[0] - 1) + 1} frames of {16 * most[1]}x{16 * most[2]} (the "
                           f"transformer's max_size {most} latent frames and 2 x 2 patches)")
    n = 0 if clips is None else (given - 1) // TEMPORAL + 1
    if clips is not None and n >= shape[2]:
        raise DiffkitError(f"num_frames={frames} is not allowed with {n} conditioning latent frames; give at least "
                           f"{TEMPORAL * n + 1} (frames to generate after the condition)")
    pixels = None if clips is None else torch.stack([
        image_pixels(clip, height, width, frames) if videos is None
        else video_pixels(clip, height, width, frames, given) for clip in clips])
    steps, grid, sampler, options, latents = model.start_latents(steps, sampler, options, shape, latents, seed)
    max_sequence_length = model.max_sequence_length if max_sequence_length is None else max_sequence_length
    denoiser, cond = model.prompt_guidance(prompts, guidance_scale, convention, negative_prompt, max_sequence_length)
    cond["condition"] = latents.new_zeros(*shape[:2], 0, *shape[3:]).to(model.device) if pixels is None \
        else model.condition(pixels, given)
    cond["start"] = latents.to(model.device, torch.float32)
    z = model.sample_latents(denoiser, cond, grid, sampler, latents, seed, progress, options)
    return model.output_videos(z, output_range, return_latents)


__all__ = ["Cosmos25", "Cosmos25Net", "load_cosmos2_5", "is_cosmos2_5_folder", "check_cosmos2_5_folder", "generate",
           "COSMOS25_PIPELINE", "COSMOS25_STEPS", "COSMOS25_FRAMES", "COSMOS25_SIZE", "COSMOS25_FPS"]
