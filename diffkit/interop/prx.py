"""A PRX diffusers folder (Photoroom's ``PRXPipeline``, diffusers 0.42.1), sampled with any diffkit sampler.

PRX (Photoroom 2025) is a flow-matching transformer (``PRXTransformer2DModel``: its own 2 x 2 patching, 2-D RoPE
over the patches, blocks whose image queries attend to the image and the text tokens together under the text's
mask) on an ``AutoencoderKL``'s (8x) or a DC-AE's (``AutoencoderDC``, 32x) latents, conditioned on the last states
of a T5Gemma encoder (``T5GemmaEncoder``, Zhang et al. 2025, "Encoder-Decoder Gemma"). diffkit runs it through
:mod:`.auraflow`'s / :mod:`.sana`'s / :mod:`.pixart`'s code (:class:`PRX` is an :class:`~.auraflow.AuraFlow`: the
masked-prompt CFG, s <= 1 unguided, the FlowMatchEuler scheduler's sigmas as diffkit's grid with flow Euler
``ddim`` as its step, resolution binning, ``diffkit sample``). What is PRX's own, as ``PRXPipeline.__call__`` /
``encode_prompt``:

* prompts: cleaned by the pipeline's own ``TextPreprocessor.clean_text`` (DeepFloyd-style: lower-cased, URLs,
  handles, CJK, bad punctuation removed, ``ftfy.fix_text``; without ftfy installed diffkit skips that one call, the
  identity on text without mojibake, control characters or ``\\r``, while diffusers' pipeline does not run at
  all), tokenised to ``max_sequence_length`` tokens (default the tokenizer's ``model_max_length``; padded,
  truncated), T5Gemma's ``last_hidden_state`` under that mask; the transformer takes the mask (bool) as
  ``attention_mask``. The negative prompt (default "") the same.
* the transformer is called at timestep t / T (T = ``num_train_timesteps``; t = s T the scheduler's timestep, so
  the sigma s; its embedding multiplies by ``time_factor``); the velocity u = eps - x_0 (Esser et al. 2024, eq. 1).
* guidance: CFG u_u + s (u_c - u_u) (Ho & Salimans 2022, eq. 6 in diffusers' convention) for s > 1, default 4.0;
  s <= 1: one unguided call (a negative prompt refused; the pipeline raises for s < 1).
* the grid: the folder's ``FlowMatchEulerDiscreteScheduler`` after ``set_timesteps(steps)`` (default 28; its
  fixed ``shift``), the sigmas placed at equal log-SNR (:func:`.flow_latents.flow_sigmas_grid`); the draws: z (B,
  C, H / f, W / f) at s = 1, sample i from ``seed + i`` (give ``latents`` to match the pipeline's one generator).
* size: default ``default_sample_size`` x ``default_sample_size`` (model_index.json, 512 in the releases), sides
  multiples of f x patch (its ``check_inputs``). ``use_resolution_binning`` (the pipeline's default on):
  ``resolution_binning=True`` with its tables for ``default_sample_size`` 256, 512, 1024 (the images resized and
  cropped back); off by default, as for PixArt / Sana. Decoding x = D(z / scaling_factor + shift_factor) (the
  config's, 0.18215 and 0 where absent; a null ``shift_factor``, on which the pipeline's decode fails, as 0).

A pixel-space ``PRXPixelPipeline`` folder (x-prediction from noise of scale 2) loads as a
:class:`.prx_pixel.PRXPixel` (:func:`load_prx` hands it to :func:`.prx_pixel.load_prx_pixel`).

Refused in one line before any weight is read (:func:`check_prx_folder`): another pipeline class, a missing
component (the VAE included, optional in the pipeline), a transformer / VAE / text encoder / scheduler of another
class, a transformer whose ``in_channels`` are not the VAE's latent channels, a ``use_dynamic_shifting`` scheduler
(the pipeline passes no mu).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, read_json_object
from . import model_dtype, require
from .auraflow import AuraFlow
from .flow_latents import FlowLatentVAE, frozen_on, load_flow_parts
from .pixart import PixArt, checked_folder, fixed_shift_scheduler

PRX_PIPELINE = "PRXPipeline"
PRX_PIXEL_PIPELINE = "PRXPixelPipeline"
PRX_CLASSES = {"transformer": ("PRXTransformer2DModel",), "vae": ("AutoencoderKL", "AutoencoderDC"),
               "text_encoder": ("T5GemmaEncoder",), "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
PRX_GUIDANCE = 4.0  # PRXPipeline.__call__'s default guidance_scale
PRX_STEPS = 28  # its default num_inference_steps
PRX_SIZE = 512  # its DEFAULT_RESOLUTION (default_sample_size when model_index.json has none)


def is_prx_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names a PRX pipeline (``PRXPipeline``, or ``PRXPixelPipeline``:
    :mod:`.prx_pixel`), so ``diffkit sample`` dispatches."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) in (PRX_PIPELINE, PRX_PIXEL_PIPELINE)


def check_prx_folder(directory) -> tuple:
    """(model_index dict, transformer config, scheduler config) of a ``PRXPipeline`` folder, checked from its JSON
    alone (module docstring); a one-line DiffkitError for what diffkit does not drive."""
    from .schedulers import flow_shift_from_diffusers
    directory = Path(directory)
    index, config, vae = checked_folder(directory, PRX_PIPELINE, REQUIRED, "PRX", PRX_CLASSES)
    latents = int(vae.get("latent_channels", 4))
    if config.get("in_channels", 16) != latents:
        raise DiffkitError(f"{directory}'s transformer has in_channels={config.get('in_channels', 16)!r}; allowed: "
                           f"the VAE's latent channels {latents}")
    sched = fixed_shift_scheduler(directory, PRX_PIPELINE)
    flow_shift_from_diffusers(sched)  # its other keys: one line
    return index, config, sched


@contextlib.contextmanager
def ftfy_or_identity(module):
    """The block run with a diffusers pipeline ``module``'s ``ftfy.fix_text`` as the identity while ftfy is not
    installed (the module then has no ``ftfy``; restored after): its own text cleaning as it runs without ftfy's fixes
    (PRX's ``TextPreprocessor``, ChronoEdit's ``prompt_clean``, :mod:`.chronoedit`)."""
    if hasattr(module, "ftfy"):
        yield
        return
    import types
    module.ftfy = types.SimpleNamespace(fix_text=lambda text: text)
    try:
        yield
    finally:
        del module.ftfy


@contextlib.contextmanager
def _text_cleaning(module: str = "pipeline_prx"):
    """diffusers' PRX pipeline module ``module`` (``pipeline_prx``: its ``TextPreprocessor``; ``pipeline_prx_pixel``:
    its ``_basic_clean``) under :func:`ftfy_or_identity`."""
    import importlib
    require("diffusers")
    pipeline = importlib.import_module(f"diffusers.pipelines.prx.{module}")
    with ftfy_or_identity(pipeline):
        yield pipeline


class PRXNet(torch.nn.Module):
    """``net(x, t, context, mask)`` over a ``PRXTransformer2DModel``: ``context`` (T5Gemma's states) ->
    ``encoder_hidden_states``, ``mask`` -> ``attention_mask`` (bool), ``t`` (the flow time s T) / T -> ``timestep``
    (the pipeline's ``t / num_train_timesteps``); the velocity in x's dtype."""

    def __init__(self, transformer, train_timesteps: int):
        super().__init__()
        self.model = transformer
        self.train_timesteps = train_timesteps

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None):
        if context is None or mask is None:
            raise DiffkitError("a PRX transformer needs cond {'context', 'mask'} (PRX.encode_prompts)")
        dtype = model_dtype(self.model)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        out = self.model(x.to(dtype), timestep=(t / self.train_timesteps).to(dtype),
                         encoder_hidden_states=context.to(dtype), attention_mask=mask.bool(), return_dict=False)[0]
        return out.to(x.dtype)


@dataclass
class PRX(AuraFlow):
    """The loaded components of a ``PRXPipeline`` folder (:func:`load_prx`): an :class:`~.auraflow.AuraFlow` (the
    masked CFG, unguided at s <= 1, the flow scheduler's grid and step) whose prompts, network, VAE, sizes and
    defaults are PRX's."""

    index: dict = field(default_factory=dict, repr=False)  # model_index.json (its default_sample_size)

    default_guidance_scale = PRX_GUIDANCE
    default_steps = PRX_STEPS
    @property
    def size_multiple(self) -> int:
        """PRXPipeline.check_inputs: height and width multiples of f x patch (whole patches)."""
        return self.vae_scale_factor * int(self.transformer.config.patch_size)

    bins_key_name = "a default_sample_size"

    @property
    def vae_scale_factor(self) -> int:
        """The pipeline's: the VAE's ``spatial_compression_ratio`` (DC-AE's), else 2^(levels - 1) (an
        AutoencoderKL's)."""
        ratio = getattr(self.vae, "spatial_compression_ratio", None)
        return int(ratio) if ratio is not None else FlowLatentVAE.vae_scale_factor.fget(self)

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215))

    @property
    def shift_factor(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", 0.0) or 0.0)

    @property
    def default_sample_size(self) -> int:
        return int(self.index.get("default_sample_size") or PRX_SIZE)

    @property
    def default_side(self) -> int:
        """``default_sample_size`` pixels (the pipeline's ``get_default_resolution``)."""
        return self.default_sample_size

    @property
    def bins_key(self) -> int:
        return self.default_sample_size

    @property
    def max_sequence_length(self) -> int:
        """The tokenizer's ``model_max_length`` (the pipeline's default ``tokenizer_max_length``)."""
        return int(self.tokenizer.model_max_length)

    @property
    def max_length_limit(self) -> int:
        """T5Gemma's positions."""
        return int(self.text_encoder.config.max_position_embeddings)

    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """:meth:`.pixart.PixArt.latent_shape` at the default size :attr:`default_side` (no learned positions)."""
        return PixArt.latent_shape(self, batch, height, width)

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: Optional[int] = None) -> tuple:
        """(T5Gemma last states (B, L, d), bool mask (B, L)) of ``prompts`` as ``PRXPipeline._encode_prompt_standard``:
        cleaned (``clean_text``), L = ``max_sequence_length`` (default the tokenizer's) tokens, under their mask."""
        from .stable_diffusion import prompt_list
        length = self.max_sequence_length if max_sequence_length is None else max_sequence_length
        self.check_length(length)
        with _text_cleaning() as pipeline:
            cleaner = pipeline.TextPreprocessor()
            texts = [cleaner.clean_text(text) for text in prompt_list(prompts)]
        return self.encoded(texts, length)

    def encoded(self, texts: Sequence[str], length: int) -> tuple:
        """(last states (B, L, d), bool mask (B, L)) of the cleaned ``texts``: padded / truncated to L = ``length``
        tokens, encoded under their mask (``_encode_prompt_standard``'s, PRXPixelPipeline's too)."""
        tokens = self.tokenizer(list(texts), padding="max_length", max_length=length, truncation=True,
                                return_attention_mask=True, return_tensors="pt")
        mask = tokens.attention_mask.bool().to(self.device)
        with torch.no_grad():
            states = self.text_encoder(input_ids=tokens.input_ids.to(self.device), attention_mask=mask)
        return states["last_hidden_state"].to(self.text_encoder.dtype), mask

    def aspect_ratio_bins(self) -> dict:
        """PRXPipeline's tables: ``default_sample_size`` 256, 512, 1024."""
        require("diffusers")
        from diffusers.pipelines.prx.pipeline_prx import ASPECT_RATIO_BINS
        return dict(ASPECT_RATIO_BINS)

    def _new_denoiser(self, whole: bool):
        from ..denoiser import Denoiser
        denoiser = Denoiser(PRXNet(self.transformer, self.schedule.num_timesteps), self.schedule, "flow_prediction")
        denoiser.model = self.transformer
        return denoiser


def _load_text_encoder(directory: Path, dtype) -> tuple:
    """(T5GemmaEncoder, tokenizer) of the folder: the encoder's config read by its ``model_type`` (a
    ``T5GemmaModuleConfig``, as ``save_pretrained`` writes it, or a whole ``T5GemmaConfig``'s ``encoder``) and given
    to ``from_pretrained`` (whose own config class would read the former as a default-sized model)."""
    from . import from_pretrained
    transformers = require("transformers")
    from transformers.models.t5gemma import configuration_t5gemma as configs, modeling_t5gemma
    from .sd3 import _entry
    path = directory / "text_encoder"
    kind = read_json_object(path / "config.json", "text encoder config").get("model_type")
    if kind not in ("t5_gemma_module", "t5gemma"):
        raise DiffkitError(f"{path}'s config has model_type={kind!r}; allowed: 't5_gemma_module' or 't5gemma'")
    config = configs.T5GemmaModuleConfig.from_pretrained(path) if kind == "t5_gemma_module" else \
        configs.T5GemmaConfig.from_pretrained(path).encoder
    encoder = from_pretrained(modeling_t5gemma.T5GemmaEncoder, path, config=config, local_files_only=True,
                              torch_dtype=dtype, use_safetensors=True)
    tok_cls = getattr(transformers, _entry(read_json_object(directory / "model_index.json", "model index"),
                                           "tokenizer"), None) or transformers.AutoTokenizer
    return encoder, from_pretrained(tok_cls, directory / "tokenizer", local_files_only=True)


def load_prx(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
             progress: bool = True) -> PRX:
    """Load a ``PRXPipeline`` diffusers folder (never downloads, never unpickles); what diffkit does not drive is
    refused in one line before any weight is read (:func:`check_prx_folder`). A ``PRXPixelPipeline`` folder:
    :func:`.prx_pixel.load_prx_pixel`."""
    from ..schedule import NoiseSchedule
    from .schedulers import flow_shift_from_diffusers, train_timesteps
    from .sd3 import _entry
    from .sd_xl import pipeline_class
    directory = Path(directory)
    if pipeline_class(directory) == PRX_PIXEL_PIPELINE:
        from .prx_pixel import load_prx_pixel
        return load_prx_pixel(directory, device, dtype, progress)
    diffusers = require("diffusers")
    index, _, sched = check_prx_folder(directory)
    schedule = NoiseSchedule.flow(train_timesteps(sched), flow_shift_from_diffusers(sched))
    parts = load_flow_parts(directory, index, diffusers.PRXTransformer2DModel, {}, dtype, progress,
                            vae_cls=getattr(diffusers, _entry(index, "vae")))
    parts["text_encoder"], parts["tokenizer"] = _load_text_encoder(directory, dtype)
    device = frozen_on(parts, device)
    model = PRX(pipeline=PRX_PIPELINE, **parts, schedule=schedule, prediction_type="flow_prediction",
                scheduler_config=sched, device=device, dtype=dtype, index=index)
    return model


def text_to_image(prx: PRX, prompts: Union[str, Sequence[str]], **options) -> torch.Tensor:
    """Images of a PRX (or PRXPixel, :mod:`.prx_pixel`) folder for ``prompts``: :func:`.pixart.text_to_image`
    (sampler / grid, default the scheduler's loop; steps (default 28); guidance (default s = 4); negative prompt;
    latents; height / width (default ``default_sample_size``); ``max_sequence_length`` (default the tokenizer's;
    PRXPixel's fixed ``prompt_max_tokens``); ``resolution_binning`` (the pipeline's tables); output options)."""
    from .pixart import text_to_image as pixart_text_to_image
    return pixart_text_to_image(prx, prompts, **options)


__all__ = ["PRX", "PRXNet", "load_prx", "is_prx_folder", "check_prx_folder", "text_to_image", "PRX_GUIDANCE",
           "PRX_STEPS"]
