"""A CogView3-Plus diffusers folder (``CogView3PlusPipeline``, diffusers 0.42.1), sampled with any diffkit sampler.

CogView3-Plus (Zheng et al. 2024, "CogView3: Finer and Faster Text-to-Image Generation via Relay Diffusion"; the
3-Plus release is its DiT successor) is a ``CogView3PlusTransformer2DModel`` (text and image tokens in one sequence,
adaLN from the timestep and SD-XL-style size conditions) on a 16-channel ``AutoencoderKL``'s latents, conditioned on
T5's states, trained as a v-prediction DDPM (Salimans & Ho 2022) with CogVideoX's schedule. diffkit runs it through
:mod:`.pixart`'s masked-text-folder code (:class:`CogView3Plus` is a :class:`~.pixart.PixArt`: grid, latents,
``diffkit sample``). What is CogView3-Plus's own, as ``CogView3PlusPipeline.__call__`` / ``encode_prompt``:

* prompts: tokenised as written, padded / truncated to ``max_sequence_length`` (default 224) tokens, T5's last
  states with **no attention mask**. The null half: the negative prompt encoded the same way, or, **without one,
  zeros** of the prompts' shape (not the empty prompt's states).
* size conditions: ``original_size`` / ``target_size`` / ``crop_coords`` as :func:`.cogview4.size_conditions`.
* the schedule (:func:`cogvideox_schedule`): ``CogVideoXDDIMScheduler``'s betas (``scaled_linear``), then
  alpha_bar -> alpha_bar / (k + (1 - k) alpha_bar) with k = ``snr_shift_scale`` (every SNR divided by k), then
  (``rescale_betas_zero_snr``, the release's) zero terminal SNR (Lin et al. 2024, Alg. 1), v-prediction; its step
  is DDIM's with eta 0 (``prev = a_t x + b_t x0``, no clipping), diffkit's ``ddim`` on the scheduler's
  ``set_timesteps`` grid (``trailing`` in the release: the first step at t = T - 1, alpha_bar 0, x0 = -v).
* the transformer is called at the integer timestep t; CFG v_u + s (v_c - v_u), default s = 5.0; s <= 1: one
  unguided call (a negative prompt refused).
* size: default sample_size x f, sides multiples of 8 (``check_inputs``) and of f x patch; decoding
  x = D(z / scaling_factor).

Refused in one line before any weight is read (:func:`check_cogview3plus_folder`): a missing component, a
transformer / VAE / text encoder / scheduler of another class (``CogVideoXDPMScheduler``'s step draws noise), a
transformer whose channels are not the VAE's latent channels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, read_json_object
from . import require
from .flow_latents import frozen_on, load_flow_parts
from .pixart import PixArt, check_pipeline_folder

COGVIEW3PLUS_PIPELINE = "CogView3PlusPipeline"
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
COGVIEW3PLUS_CLASSES = {"transformer": ("CogView3PlusTransformer2DModel",), "vae": ("AutoencoderKL",),
                        "text_encoder": ("T5EncoderModel",), "scheduler": ("CogVideoXDDIMScheduler",)}
COGVIEW3PLUS_MAX_SEQUENCE_LENGTH = 224  # CogView3PlusPipeline.__call__'s default max_sequence_length


def is_cogview3plus_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``CogView3PlusPipeline``."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == COGVIEW3PLUS_PIPELINE


def check_cogview3plus_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of a ``CogView3PlusPipeline`` folder, checked from its JSON alone."""
    directory = Path(directory)
    index = check_pipeline_folder(directory, COGVIEW3PLUS_PIPELINE, "CogView3Plus", REQUIRED, COGVIEW3PLUS_CLASSES)
    check_latent_channels(directory)
    sched = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    cogvideox_schedule(sched)  # its keys: one line
    return index, sched


def check_latent_channels(directory: Path, note: str = "both") -> None:
    """One line unless the folder's transformer takes and returns the VAE's latent channels (its JSON; ``note``
    closes the message)."""
    config = read_json_object(directory / "transformer" / "config.json", "transformer config")
    latents = int(read_json_object(directory / "vae" / "config.json", "vae config").get("latent_channels", 4))
    channels = (config.get("in_channels", 16), config.get("out_channels", 16))
    if channels != (latents, latents):
        raise DiffkitError(f"{directory}'s transformer has in_channels, out_channels = {channels[0]!r}, "
                           f"{channels[1]!r}; allowed: the VAE's latent channels {latents} ({note})")


def cogvideox_ddim_grid(config: dict, steps: int) -> torch.Tensor:
    """diffkit's grid of a ``CogVideoXDDIMScheduler`` of ``config`` after ``set_timesteps(steps)``."""
    from .schedulers import grid_from_diffusers
    diffusers = require("diffusers")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DiffkitError(f"steps={steps!r} is not allowed; give a positive integer")
    scheduler = diffusers.CogVideoXDDIMScheduler.from_config(config)
    scheduler.set_timesteps(steps)
    return grid_from_diffusers(scheduler)


def cogvideox_schedule(config: dict) -> tuple:
    """(NoiseSchedule, prediction_type) of a ``CogVideoXDDIMScheduler`` config: the betas of
    :func:`.schedulers.schedule_from_diffusers`, alpha_bar / (k + (1 - k) alpha_bar) with k = ``snr_shift_scale``
    (default 3; SNR / k), then ``rescale_betas_zero_snr`` (CogVideoXDDIMScheduler.__init__'s order)."""
    from ..schedule import NoiseSchedule
    from .schedulers import schedule_from_diffusers
    k = config.get("snr_shift_scale", 3.0)
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 < k < float("inf"):
        raise DiffkitError(f"the scheduler's snr_shift_scale={k!r} is not allowed; expected a positive number")
    base, prediction_type = schedule_from_diffusers({key: value for key, value in config.items()
                                                     if key not in ("_class_name", "rescale_betas_zero_snr")})
    bar = base.alphas_cumprod / (k + (1 - k) * base.alphas_cumprod)
    schedule = NoiseSchedule(1.0 - torch.cat([bar[:1], bar[1:] / bar[:-1]]))
    if config.get("rescale_betas_zero_snr", False):
        schedule = schedule.rescale_zero_terminal_snr()
    return schedule, prediction_type


def unmasked_t5_states(tokenizer, text_encoder, prompts: list, length: int, device) -> tuple:
    """(T5's last states (B, L, d) in the encoder's dtype, token ids (B, L)) of ``prompts`` tokenised as written,
    padded / truncated to ``length`` tokens and encoded with **no attention mask**, as CogView3-Plus' and CogVideoX's
    ``_get_t5_prompt_embeds``."""
    ids = tokenizer(prompts, padding="max_length", max_length=length, truncation=True, add_special_tokens=True,
                    return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        states = text_encoder(ids)[0]
    return states.to(text_encoder.dtype), ids


class CogView3PlusNet(torch.nn.Module):
    """``net(x, t, context, original_size, target_size, crop_coords)`` over a ``CogView3PlusTransformer2DModel``:
    ``t`` (training timesteps) -> ``timestep``, the size conditions as :func:`.cogview4.call_with_sizes`."""

    def __init__(self, transformer):
        super().__init__()
        self.model = transformer

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, original_size=None,
                target_size=None, crop_coords=None):
        from .cogview4 import call_with_sizes
        if context is None or original_size is None:
            raise DiffkitError("a CogView3-Plus transformer needs cond {'context', 'original_size', 'target_size', "
                               "'crop_coords'} (CogView3Plus.prompt_guidance)")
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        return call_with_sizes(self.model, x, t, context, (original_size, target_size, crop_coords))


class CogView3Plus(PixArt):
    """The loaded components of a ``CogView3PlusPipeline`` folder (:func:`load_cogview3plus`)."""

    default_guidance_scale = 5.0  # CogView3PlusPipeline.__call__'s defaults
    default_steps = 50
    latents_are_flow_state = False

    @property
    def max_sequence_length(self) -> int:
        return COGVIEW3PLUS_MAX_SEQUENCE_LENGTH

    @property
    def learned_variance(self) -> bool:
        return False

    def aspect_ratio_bins(self) -> dict:
        raise DiffkitError("CogView3PlusPipeline has no resolution binning; draw without it")

    def folder_sampler(self) -> tuple:
        return "ddim", {}  # CogVideoXDDIMScheduler.step: DDIM, eta 0 (module docstring)

    @property
    def denoiser(self):
        """The unguided :class:`~diffkit.denoiser.Denoiser` (cond: ``context`` and the size conditions)."""
        if self._denoiser is None:
            from ..denoiser import Denoiser
            self._denoiser = Denoiser(CogView3PlusNet(self.transformer), self.schedule, self.prediction_type)
            self._denoiser.model = self.transformer
        return self._denoiser

    def scheduler_grid(self, steps: int) -> torch.Tensor:
        """diffkit's grid of the folder's ``CogVideoXDDIMScheduler`` after ``set_timesteps(steps)``."""
        return cogvideox_ddim_grid(self.scheduler_config, steps)

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: Optional[int] = None) -> tuple:
        """(T5 states (B, L, d), ones (B, L)) as ``_get_t5_prompt_embeds``: L = ``max_sequence_length`` (default
        224) tokens, as written, encoded with no mask."""
        from .stable_diffusion import prompt_list
        length = self.max_sequence_length if max_sequence_length is None else max_sequence_length
        self.check_length(length)
        states, ids = unmasked_t5_states(self.tokenizer, self.text_encoder, prompt_list(prompts), length, self.device)
        return states, torch.ones_like(ids)

    def micro_conditions(self, batch: int, height: int, width: int, original_size: Optional[tuple] = None,
                         crops_coords_top_left: tuple = (0, 0)) -> dict:
        from .cogview4 import size_conditions
        return size_conditions(height, width, original_size, crops_coords_top_left, self.text_encoder.dtype,
                               self.device)

    def prompt_guidance(self, prompts, negative_prompt=None, guidance_scale: float = 5.0,
                        convention: str = "diffusers", max_sequence_length: Optional[int] = None,
                        size: Optional[tuple] = None, denoiser=None, original_size: Optional[tuple] = None,
                        crops_coords_top_left: tuple = (0, 0)) -> tuple:
        """(denoiser, cond) of the pipeline's guidance (module docstring): the null half zeros without a negative
        prompt; s <= 1: the unguided denoiser."""
        from ..guidance import ClassifierFreeGuidance
        from .auraflow import guided
        from .stable_diffusion import negative_prompts
        denoiser = denoiser or self.denoiser
        context, _ = self.encode_prompts(prompts, max_sequence_length)
        cond = {"context": context, **self.micro_conditions(context.shape[0], *size, original_size,
                                                             crops_coords_top_left)}
        if not guided(guidance_scale, convention, negative_prompt):
            return denoiser, cond
        null = torch.zeros_like(context[:1]) if negative_prompt is None else \
            self.encode_prompts(negative_prompts(negative_prompt, context.shape[0]), max_sequence_length)[0]
        return ClassifierFreeGuidance(denoiser, guidance_scale, convention, null_context=null), cond


def load_cogview3plus(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                      progress: bool = True) -> CogView3Plus:
    """Load a ``CogView3PlusPipeline`` diffusers folder (never downloads, never unpickles); what diffkit does not
    drive is refused in one line before any weight is read (:func:`check_cogview3plus_folder`)."""
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_cogview3plus_folder(directory)
    schedule, prediction_type = cogvideox_schedule(sched)
    parts = load_flow_parts(directory, index, diffusers.CogView3PlusTransformer2DModel, {"": "T5EncoderModel"}, dtype,
                            progress)
    device = frozen_on(parts, device)
    return CogView3Plus(pipeline=COGVIEW3PLUS_PIPELINE, **parts, schedule=schedule, prediction_type=prediction_type,
                        scheduler_config=sched, device=device, dtype=dtype)


def text_to_image(cogview: CogView3Plus, prompts: Union[str, Sequence[str]], *,
                  original_size: Optional[tuple] = None, crops_coords_top_left: tuple = (0, 0), **options):
    """Images of a CogView3-Plus folder: :func:`.pixart.text_to_image` (sampler / grid, default the scheduler's
    DDIM loop; steps (default 50); guidance (default s = 5.0); negative prompt (default: zeros); latents; size;
    ``max_sequence_length`` (default 224); output options) with the pipeline's size conditions."""
    from .pixart import text_to_image as pixart_text_to_image
    if options.get("resolution_binning"):
        cogview.aspect_ratio_bins()
    encode = {"original_size": original_size, "crops_coords_top_left": crops_coords_top_left}
    return pixart_text_to_image(cogview, prompts, encode=encode, **options)


__all__ = ["CogView3Plus", "CogView3PlusNet", "load_cogview3plus", "is_cogview3plus_folder",
           "check_cogview3plus_folder", "check_latent_channels", "cogvideox_schedule", "cogvideox_ddim_grid",
           "unmasked_t5_states", "text_to_image",
           "COGVIEW3PLUS_PIPELINE"]
