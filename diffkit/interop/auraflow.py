"""An AuraFlow diffusers folder (``AuraFlowPipeline``, diffusers 0.42.1), sampled with any diffkit sampler.

AuraFlow (fal.ai 2024, v0.1-0.3) is a rectified-flow transformer (``AuraFlowTransformer2DModel``: MMDiT blocks as
SD3's, Esser et al. 2024, Sec. 3.1, then single-stream DiT blocks, learned position embeddings and register tokens)
on an SD-XL-style ``AutoencoderKL``'s latents, conditioned on one UMT5 encoder (``UMT5EncoderModel``). diffkit runs
it through :mod:`.sana`'s / :mod:`.pixart`'s code (:class:`AuraFlow` is a :class:`~.sana.Sana`: the masked-prompt
CFG, the FlowMatchEuler scheduler's sigmas as diffkit's grid with flow Euler ``ddim`` as its step, ``diffkit
sample``). What is AuraFlow's own, as ``AuraFlowPipeline.__call__`` / ``encode_prompt``:

* prompts: tokenised as given (no lower-casing) to ``max_sequence_length`` tokens (default 256; padded,
  truncated), UMT5's last states under that mask, then **multiplied by the mask** (padding states set to 0); the
  transformer takes no mask. The negative prompt (default "") the same, at the prompts' length.
* the transformer is called at timestep t / 1000 with t = s T the scheduler's timestep (the sigma s for T = 1000;
  its ``Timesteps(scale=1000)`` multiplies it back); the velocity u = eps - x_0 (eq. 1 of Esser et al. 2024).
* guidance: CFG u_u + s (u_c - u_u) (Ho & Salimans 2022, eq. 6 in diffusers' convention) for s > 1, default 3.5
  (the ``__call__`` default; its docstring's 5.0 is stale); s <= 1: one unguided call (a negative prompt refused).
* the grid: the folder's ``FlowMatchEulerDiscreteScheduler`` after ``set_timesteps(steps)`` (default 50; its fixed
  ``shift``, 1.73 in AuraFlow's releases), the sigmas placed at equal log-SNR
  (:func:`.flow_latents.flow_sigmas_grid`); the draws: z (B, C, H / f, W / f), sample i from ``seed + i`` (the
  pipeline draws the batch from one generator: give ``latents`` to match it).
* size: default 1024 x 1024 (the ``__call__`` default), sides multiples of 2 f (its ``check_inputs``) and of f x
  patch; decoding x = D(z / scaling_factor) (no shift).

Refused in one line before any weight is read (:func:`check_auraflow_folder`): another pipeline class, a missing
component, a transformer / VAE / text encoder / scheduler of another class, a transformer whose channels are not
the VAE's latent channels, a ``use_dynamic_shifting`` scheduler (the pipeline passes no mu).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, check_choice
from . import model_dtype, require
from .flow_latents import FlowLatentVAE, frozen_on, load_flow_parts
from .pixart import checked_folder, fixed_shift_scheduler
from .sana import Sana

AURAFLOW_PIPELINE = "AuraFlowPipeline"
AURAFLOW_CLASSES = {"transformer": ("AuraFlowTransformer2DModel",), "vae": ("AutoencoderKL",),
                    "text_encoder": ("UMT5EncoderModel",), "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
AURAFLOW_GUIDANCE = 3.5  # AuraFlowPipeline.__call__'s default guidance_scale
AURAFLOW_STEPS = 50  # its default num_inference_steps
AURAFLOW_SIZE = 1024  # its default height and width
AURAFLOW_MAX_SEQUENCE_LENGTH = 256


def is_auraflow_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``AuraFlowPipeline`` (so ``diffkit sample`` dispatches)."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == AURAFLOW_PIPELINE


def check_auraflow_folder(directory) -> tuple:
    """(model_index dict, transformer config, scheduler config) of an ``AuraFlowPipeline`` folder, checked from its
    JSON alone (module docstring); a one-line DiffkitError for what diffkit does not drive."""
    from .schedulers import flow_shift_from_diffusers
    directory = Path(directory)
    index, config, vae = checked_folder(directory, AURAFLOW_PIPELINE, REQUIRED, "AuraFlow", AURAFLOW_CLASSES)
    latents = int(vae.get("latent_channels", 4))
    channels = (config.get("in_channels", 4), config.get("out_channels", 4))
    if channels[0] != latents or channels[1] not in (None, latents):
        raise DiffkitError(f"{directory}'s transformer has in_channels, out_channels = {channels[0]!r}, "
                           f"{channels[1]!r}; allowed: the VAE's latent channels {latents} (out_channels or null)")
    sched = fixed_shift_scheduler(directory, AURAFLOW_PIPELINE)
    flow_shift_from_diffusers(sched)  # its other keys: one line
    return index, config, sched


def guided(guidance_scale: float, convention: str, negative_prompt=None) -> bool:
    """True where the pipeline's ``do_classifier_free_guidance`` is on: diffusers' scale s > 1 (``convention``
    "seed": w = s - 1 > 0); off, a ``negative_prompt`` (which feeds only CFG) is one line (AuraFlow's, HiDream's)."""
    check_choice("convention", convention, ["diffusers", "seed"])
    scale = float(guidance_scale) if convention == "diffusers" else 1 + float(guidance_scale)
    if scale <= 1 and negative_prompt is not None:
        raise DiffkitError(f"a negative prompt with guidance_scale={guidance_scale:g} ({convention} convention) "
                           f"is not allowed: it feeds only CFG (diffusers' scale > 1); raise the scale or drop it")
    return scale > 1


class AuraFlowNet(torch.nn.Module):
    """``net(x, t, context, mask=None)`` over an ``AuraFlowTransformer2DModel``: ``context`` (the masked UMT5
    states) -> ``encoder_hidden_states``, ``t`` (the flow time s T) / 1000 -> ``timestep`` (the pipeline's
    ``t / 1000``); ``mask`` is not passed (the pipeline gives the transformer none); the velocity in x's dtype."""

    def __init__(self, transformer):
        super().__init__()
        self.model = transformer

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None):
        if context is None:
            raise DiffkitError("an AuraFlow transformer needs cond {'context'} (AuraFlow.encode_prompts)")
        dtype = model_dtype(self.model)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0]) / 1000
        out = self.model(x.to(dtype), encoder_hidden_states=context.to(dtype), timestep=t.to(dtype),
                         return_dict=False)[0]
        return out.to(x.dtype)


@dataclass
class AuraFlow(Sana):
    """The loaded components of an ``AuraFlowPipeline`` folder (:func:`load_auraflow`): a :class:`~.sana.Sana`
    (the flow scheduler's grid and step, the masked CFG) whose prompts, network, VAE and defaults are AuraFlow's."""

    default_guidance_scale = AURAFLOW_GUIDANCE
    default_steps = AURAFLOW_STEPS
    vae_scale_factor = FlowLatentVAE.vae_scale_factor  # an AutoencoderKL's 2^(levels - 1), not DC-AE's

    @property
    def size_multiple(self) -> int:
        """AuraFlowPipeline.check_inputs: height and width multiples of 2 f."""
        return 2 * self.vae_scale_factor

    @property
    def max_sequence_length(self) -> int:
        return AURAFLOW_MAX_SEQUENCE_LENGTH

    @property
    def max_length_limit(self) -> int:
        return 512  # (UMT5's relative positions take any length; its training length)

    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """:meth:`.pixart.PixArt.latent_shape` with the pipeline's default size 1024 x 1024; a side past the
        transformer's square grid of ``pos_embed_max_size`` learned positions (sqrt of it patches): one line."""
        shape = super().latent_shape(batch, AURAFLOW_SIZE if height is None else height,
                                     AURAFLOW_SIZE if width is None else width)
        config = self.transformer.config
        side = int(int(config.pos_embed_max_size) ** 0.5) * int(config.patch_size)  # in latents
        if max(shape[2:]) > side:
            f = self.vae_scale_factor
            raise DiffkitError(f"height x width {shape[2] * f}x{shape[3] * f} is not allowed; give sides of at most "
                               f"{side * f} (the transformer's {side // int(config.patch_size)} x "
                               f"{side // int(config.patch_size)} learned positions of {int(config.patch_size) * f} "
                               f"pixels)")
        return shape

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: Optional[int] = None) -> tuple:
        """(UMT5 states x mask (B, L, d), attention mask (B, L)) of ``prompts`` as ``AuraFlowPipeline.encode_prompt``:
        L = ``max_sequence_length`` (default 256) tokens, encoded under their mask, the states multiplied by it."""
        from .stable_diffusion import prompt_list
        length = self.max_sequence_length if max_sequence_length is None else max_sequence_length
        self.check_length(length)
        tokens = self.tokenizer(prompt_list(prompts), truncation=True, max_length=length, padding="max_length",
                                return_tensors="pt")
        mask = tokens.attention_mask.to(self.device)
        with torch.no_grad():
            states = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        return (states * mask[..., None]).to(self.text_encoder.dtype), mask

    def encode_negative_prompts(self, prompts: Sequence[str], length: int) -> tuple:
        return self.encode_prompts(prompts, length)

    def aspect_ratio_bins(self) -> dict:
        return {}  # AuraFlowPipeline has no resolution binning

    def _new_denoiser(self, whole: bool):
        from ..denoiser import Denoiser
        denoiser = Denoiser(AuraFlowNet(self.transformer), self.schedule, "flow_prediction")
        denoiser.model = self.transformer
        return denoiser

    def prompt_guidance(self, prompts, negative_prompt=None, guidance_scale: float = AURAFLOW_GUIDANCE,
                        convention: str = "diffusers", max_sequence_length: Optional[int] = None,
                        size: Optional[tuple] = None, denoiser=None, **encode) -> tuple:
        """:meth:`.pixart.PixArt.prompt_guidance` for a diffusers-convention scale s > 1; s <= 1 (the pipeline's
        ``do_classifier_free_guidance`` off): the unguided denoiser, and a negative prompt is refused."""
        if guided(guidance_scale, convention, negative_prompt):
            return super().prompt_guidance(prompts, negative_prompt, guidance_scale, convention,
                                           max_sequence_length, size, denoiser, **encode)
        context, mask = self.encode_prompts(prompts, max_sequence_length, **encode)
        return denoiser or self.denoiser, {"context": context, "mask": mask}


def load_auraflow(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                  progress: bool = True, lora=None) -> AuraFlow:
    """Load an ``AuraFlowPipeline`` diffusers folder (never downloads, never unpickles); what diffkit does not drive
    is refused in one line before any weight is read (:func:`check_auraflow_folder`). ``lora``: LoRA files (paths
    or (path, scale) pairs) with diffusers-format ``transformer.`` keys (``AuraFlowLoraLoaderMixin`` converts
    nothing), read and checked first, fused as ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)``
    (:func:`.sana_lora.read_transformer_loras`, :func:`.sd_lora.merge_sd_loras`)."""
    from ..schedule import NoiseSchedule
    from .sana_lora import read_transformer_loras
    from .schedulers import flow_shift_from_diffusers
    from .sd_lora import merge_sd_loras
    diffusers = require("diffusers")
    directory = Path(directory)
    index, _, sched = check_auraflow_folder(directory)
    loras = read_transformer_loras(lora, "AuraFlow", "an AuraFlow folder", "AuraFlowPipeline",
                                   flux_check=False) if lora else []
    schedule = NoiseSchedule.flow(int(sched.get("num_train_timesteps", 1000)), flow_shift_from_diffusers(sched))
    parts = load_flow_parts(directory, index, diffusers.AuraFlowTransformer2DModel, {"": "UMT5EncoderModel"}, dtype,
                            progress)
    device = frozen_on(parts, device)
    model = AuraFlow(pipeline=AURAFLOW_PIPELINE, **parts, schedule=schedule, prediction_type="flow_prediction",
                     scheduler_config=sched, device=device, dtype=dtype)
    merge_sd_loras(model, loras)
    return model


def text_to_image(auraflow: AuraFlow, prompts: Union[str, Sequence[str]], **options) -> torch.Tensor:
    """Images of an AuraFlow folder for ``prompts``: :func:`.pixart.text_to_image` (sampler / grid, default the
    scheduler's loop; steps (default 50); guidance (default s = 3.5); negative prompt; latents; height / width
    (default 1024); ``max_sequence_length`` (default 256); output options). ``resolution_binning``: refused."""
    from .pixart import text_to_image as pixart_text_to_image
    if options.get("resolution_binning"):
        raise DiffkitError("resolution_binning is not allowed for an AuraFlow folder (AuraFlowPipeline has none)")
    latents = options.get("latents")
    if isinstance(latents, torch.Tensor) and latents.ndim == 4 and options.get("height") is options.get("width") \
            is None:  # the latents' size, not the default 1024 (which may be past the transformer's positions)
        f = auraflow.vae_scale_factor
        options.update(height=latents.shape[2] * f, width=latents.shape[3] * f)
    return pixart_text_to_image(auraflow, prompts, **options)


__all__ = ["AuraFlow", "AuraFlowNet", "load_auraflow", "is_auraflow_folder", "check_auraflow_folder",
           "text_to_image", "AURAFLOW_GUIDANCE", "AURAFLOW_STEPS", "AURAFLOW_MAX_SEQUENCE_LENGTH"]
