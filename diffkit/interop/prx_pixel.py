"""A PRXPixel diffusers folder (Photoroom's ``PRXPixelPipeline``, diffusers 0.42.1), sampled with any diffkit sampler.

PRXPixel is PRX (:mod:`.prx`) in pixel space: the same ``PRXTransformer2DModel`` (here with ``in_channels`` 3, a
bottleneck ``img_in`` and the resolution embedder) denoises RGB directly, with no VAE, conditioned on a Qwen3-VL text
tower (``Qwen3VLTextModel``), and trained to predict the clean image x_0 (x-prediction; Li & He 2025, "Back to
Basics: Let Denoising Generative Models Denoise") from noise of scale ``noise_scale`` (2). diffkit runs it through
:mod:`.prx`'s code (:class:`PRXPixel` is a :class:`~.prx.PRX`: its transformer wrapper, the masked-prompt CFG with
s <= 1 unguided, the FlowMatchEuler scheduler's sigmas as diffkit's grid with flow Euler ``ddim`` as its step,
resolution binning, ``diffkit sample``). What is PRXPixel's own, as ``PRXPixelPipeline.__call__``:

* prompts: the pipeline's light ``_basic_clean`` (``ftfy.fix_text``, HTML entities unescaped twice, stripped; called,
  with the identity for ``fix_text`` where ftfy is not installed, as :mod:`.prx`), tokenised to the fixed
  ``prompt_max_tokens`` (model_index.json, default 256; the pipeline ignores ``tokenizer_max_length``, so another
  ``max_sequence_length`` is refused), the Qwen3-VL tower's ``last_hidden_state`` under that mask (the transformer
  gets the mask as ``attention_mask``). The negative prompt (default "") the same.
* x-prediction: the transformer's x_0 at the flow state x_s is turned into the velocity (x_s - x_0) / max(s, 0.05)
  before the scheduler's step (s = t / T). diffkit's :class:`~diffkit.denoiser.Denoiser` takes it as a ``sample``
  network of the flow state (``flow_state=True``): x_0 is the VP state's too, and the shared ``sample`` conversion
  (:func:`diffkit.diffusion.eps_x0_from_output`) gives eps, so every diffkit sampler runs it. At s >= 0.05 the
  pipeline's velocity is that of x_0 exactly; below, it is that of lerp(x_s, x_0, s / 0.05) (= x_s - s u), which
  :class:`PRXPixelNet` returns there: the scheduler's last sigma (about shift / T) is below 0.05, so the pipeline's
  last step ends on that blend, not on x_0.
* noise of scale 2: the pipeline starts from z = ``noise_scale`` eps, the flow path x_s = (1 - s) x_0 + s z. diffkit's
  latents are the pixels / ``noise_scale`` (a linear "VAE" of ``scaling_factor`` 1 / ``noise_scale``), on which the
  noise is unit: sample i from ``seed + i`` is the pipeline's ``randn * noise_scale`` of that seed, and diffkit's
  stochastic samplers add unit noise as the model was trained (x / 2 and 2 x are exact in floating point).
  ``latents=``: diffkit's z_T (the pipeline's ``latents`` / ``noise_scale``); ``return_latents``: z_0 (the
  pipeline's ``output_type="latent"`` pixels / ``noise_scale``); images x = ``noise_scale`` z_0, then
  (x / 2 + 0.5).clamp(0, 1) (its ``output_type="np"``).
* size: default ``default_sample_size`` (model_index.json, 1024) square, sides multiples of the transformer's
  ``patch_size`` (its ``check_inputs``, ``vae_scale_factor`` 1); ``resolution_binning=True`` is its
  ``use_resolution_binning`` (its default) with its one table, ``default_sample_size`` 1024.
* guidance: CFG x_u + s (x_c - x_u) on the x_0 predictions (the same as on the velocities: the conversion is affine
  with weights summing to 1) for s > 1, default 4.0; 28 steps.

Refused in one line before any weight is read (:func:`check_prx_pixel_folder`): another pipeline class, a missing
component, a transformer / text encoder / scheduler of another class, a transformer whose ``in_channels`` are not 3,
a ``noise_scale`` or ``prompt_max_tokens`` that is not a positive number, a ``use_dynamic_shifting`` scheduler.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, read_json_object
from . import require
from .prx import PRX, PRX_PIXEL_PIPELINE, PRXNet, _text_cleaning, text_to_image  # text_to_image: both kinds

PRX_PIXEL_CLASSES = {"transformer": ("PRXTransformer2DModel",), "text_encoder": ("Qwen3VLTextModel",),
                     "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
REQUIRED = ("transformer", "text_encoder", "tokenizer", "scheduler")
PRX_PIXEL_SIZE = 1024  # PRX_PIXEL_DEFAULT_RESOLUTION
PRX_PIXEL_TOKENS = 256  # PRX_PIXEL_DEFAULT_MAX_TOKENS (prompt_max_tokens)
PRX_PIXEL_NOISE = 2.0  # noise_scale's default
X0_FLOOR = 0.05  # the pipeline's clamp of t / T in its velocity (x_s - x_0) / max(t / T, 0.05)


def is_prx_pixel_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``PRXPixelPipeline``."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == PRX_PIXEL_PIPELINE


def check_prx_pixel_folder(directory) -> tuple:
    """(model_index dict, transformer config, scheduler config) of a ``PRXPixelPipeline`` folder, checked from its
    JSON alone (module docstring); a one-line DiffkitError for what diffkit does not drive."""
    from .pixart import check_pipeline_folder, fixed_shift_scheduler
    from .schedulers import flow_shift_from_diffusers
    directory = Path(directory)
    index = check_pipeline_folder(directory, PRX_PIXEL_PIPELINE, "PRXPixel", REQUIRED, PRX_PIXEL_CLASSES)
    config = read_json_object(directory / "transformer" / "config.json", "transformer config")
    if config.get("in_channels", 16) != 3:
        raise DiffkitError(f"{directory}'s transformer has in_channels={config.get('in_channels', 16)!r}; allowed: 3 "
                           f"(PRXPixelPipeline denoises RGB pixels)")
    for key, default in (("noise_scale", PRX_PIXEL_NOISE), ("prompt_max_tokens", PRX_PIXEL_TOKENS)):
        value = index.get(key, default)
        integral = key == "prompt_max_tokens"
        if isinstance(value, bool) or not isinstance(value, int if integral else (int, float)) or \
                not 0 < value < math.inf:
            raise DiffkitError(f"{directory}'s model_index.json has {key}={value!r}; allowed: a positive "
                               f"{'integer' if integral else 'finite number'}")
    sched = fixed_shift_scheduler(directory, PRX_PIXEL_PIPELINE)
    flow_shift_from_diffusers(sched)  # its other keys: one line
    return index, config, sched


class PRXPixelNet(PRXNet):
    """:class:`~.prx.PRXNet` on diffkit's latents z = pixels / ``noise_scale``: the transformer gets the flow state
    ``noise_scale`` x and returns x_0 in pixels, given back / ``noise_scale``; below flow time s = ``X0_FLOOR`` the
    x_0 whose velocity is the pipeline's (x_s - x_0) / max(s, 0.05): lerp(x_s, x_0, s / 0.05) (module docstring)."""

    def __init__(self, transformer, train_timesteps: int, noise_scale: float):
        super().__init__(transformer, train_timesteps)
        self.noise_scale = noise_scale

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None):
        x0 = super().forward(x * self.noise_scale, t, context, mask) / self.noise_scale
        s = (torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
             / self.train_timesteps).reshape(-1, *[1] * (x.ndim - 1))
        if not bool((s < X0_FLOOR).any()):
            return x0
        return torch.where(s < X0_FLOOR, torch.lerp(x, x0, (s / X0_FLOOR).to(x.dtype)), x0)


@dataclass
class PRXPixel(PRX):
    """The loaded components of a ``PRXPixelPipeline`` folder (:func:`load_prx_pixel`): a :class:`~.prx.PRX` with no
    VAE (``vae`` None) whose prompts, network, latents and defaults are PRXPixel's."""

    vae_scale_factor = 1  # pixel space
    shift_factor = 0.0
    bins_key_name = "a default_sample_size"

    @property
    def noise_scale(self) -> float:
        return float(self.index.get("noise_scale", PRX_PIXEL_NOISE))

    @property
    def scaling_factor(self) -> float:
        """1 / ``noise_scale``: diffkit's latents are the pixels / ``noise_scale`` (unit noise)."""
        return 1.0 / self.noise_scale

    @property
    def size_multiple(self) -> int:
        """PRXPixelPipeline.check_inputs: multiples of the patch size (its vae_scale_factor is 1)."""
        return int(self.transformer.config.patch_size)

    @property
    def default_sample_size(self) -> int:
        return int(self.index.get("default_sample_size") or PRX_PIXEL_SIZE)

    @property
    def max_sequence_length(self) -> int:
        """The folder's fixed ``prompt_max_tokens``."""
        return int(self.index.get("prompt_max_tokens", PRX_PIXEL_TOKENS))

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: Optional[int] = None) -> tuple:
        """(Qwen3-VL last states (B, L, d), bool mask (B, L)) of ``prompts`` as the pipeline's
        ``_encode_prompt_standard``: ``_basic_clean``, L = ``prompt_max_tokens`` (another ``max_sequence_length``:
        one line)."""
        from .stable_diffusion import prompt_list
        length = self.max_sequence_length
        if max_sequence_length is not None and max_sequence_length != length:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed for a PRXPixel folder "
                               f"(PRXPixelPipeline always pads / truncates to its prompt_max_tokens={length}); drop it")
        with _text_cleaning("pipeline_prx_pixel") as pipeline:
            texts = [pipeline._basic_clean(text) for text in prompt_list(prompts)]
        return self.encoded(texts, length)

    def aspect_ratio_bins(self) -> dict:
        """PRXPixelPipeline's table: ``default_sample_size`` 1024."""
        require("diffusers")
        from diffusers.pipelines.prx.pipeline_prx_pixel import ASPECT_RATIO_BINS
        return dict(ASPECT_RATIO_BINS)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The pixels x = ``noise_scale`` z in [-1, 1] (not clamped): the pipeline's final latents."""
        return latents.to(device=self.device, dtype=torch.float32) * self.noise_scale

    def encode(self, images: torch.Tensor, generator=None, sample: bool = False) -> torch.Tensor:
        """z = x / ``noise_scale`` of images in [-1, 1], the inverse of :meth:`decode`."""
        return images.to(device=self.device, dtype=torch.float32) * self.scaling_factor

    def _new_denoiser(self, whole: bool):
        from ..denoiser import Denoiser
        net = PRXPixelNet(self.transformer, self.schedule.num_timesteps, self.noise_scale)
        denoiser = Denoiser(net, self.schedule, "sample", flow_state=True)
        denoiser.model = self.transformer
        return denoiser


def load_prx_pixel(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                   progress: bool = True) -> PRXPixel:
    """Load a ``PRXPixelPipeline`` diffusers folder (never downloads, never unpickles); what diffkit does not drive is
    refused in one line before any weight is read (:func:`check_prx_pixel_folder`)."""
    from ..schedule import NoiseSchedule
    from .flow_latents import frozen_on, load_flow_parts
    from .schedulers import flow_shift_from_diffusers, train_timesteps
    diffusers = require("diffusers")
    directory = Path(directory)
    index, _, sched = check_prx_pixel_folder(directory)
    schedule = NoiseSchedule.flow(train_timesteps(sched), flow_shift_from_diffusers(sched))
    parts = load_flow_parts(directory, index, diffusers.PRXTransformer2DModel, {"": "Qwen3VLTextModel"}, dtype,
                            progress, vae_cls=False)
    device = frozen_on(parts, device)
    return PRXPixel(pipeline=PRX_PIXEL_PIPELINE, **parts, schedule=schedule, prediction_type="sample",
                    scheduler_config=sched, device=device, dtype=dtype, index=index)


__all__ = ["PRXPixel", "PRXPixelNet", "load_prx_pixel", "is_prx_pixel_folder", "check_prx_pixel_folder",
           "text_to_image", "X0_FLOOR"]
