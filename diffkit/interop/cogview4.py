"""A CogView4 diffusers folder (``CogView4Pipeline``, diffusers 0.42.1), sampled with any diffkit sampler.

CogView4 (Zhipu AI / THUDM 2025, CogView4-6B) is a rectified-flow DiT (``CogView4Transformer2DModel``: text and
image tokens in one sequence with 2-D RoPE on the image patches, adaLN from the timestep plus SD-XL-style size
conditions, Podell et al. 2023, Sec. 2.2) on a 16-channel ``AutoencoderKL``'s latents, conditioned on a GLM-4
decoder's states (``GlmModel``). diffkit runs it through :mod:`.pixart`'s masked-text-folder code (:class:`CogView4`
is a :class:`~.pixart.PixArt`: prompts, grid, latents, ``diffkit sample``) as a flow-prediction
:class:`~diffkit.denoiser.Denoiser`. What is CogView4's own, as ``CogView4Pipeline.__call__`` / ``_get_glm_embeds``:

* prompts: tokenised as given, padded to the batch's **longest** prompt (the tokenizer's own padding side) and
  truncated to ``max_sequence_length`` (default 1024), then **left-padded** with ``pad_token_id`` to a multiple of
  16 tokens; GLM is run with **no attention mask** (pads attended) and its **second-to-last** hidden states are
  the context. The negative prompt (default "") is encoded the same way on its own, so its length may differ from
  the prompts' (the two CFG passes are then two network calls, as the pipeline's).
* micro-conditions: ``original_size`` (default (height, width)), ``target_size`` = (height, width) and
  ``crop_coords`` (default (0, 0)), in pixels, each (B, 2).
* the time grid: timesteps t_i = int(linspace(T, 1, N)) (whole numbers), sigmas t_i / T, then the folder's
  ``FlowMatchEulerDiscreteScheduler.set_timesteps(timesteps=t, sigmas=t / T, mu=mu)`` with CogView4's own
  ``calculate_shift`` mu = sqrt(L / base_image_seq_len) max_shift + base_shift (:func:`cogview4_mu`; L = (h / p)
  (w / p) image tokens). Its released scheduler has ``use_dynamic_shifting`` with ``time_shift_type`` "linear":
  s -> mu / (mu + 1/s - 1), SD3's shift map (Esser et al. 2024, eq. 23) with shift mu (e^mu for "exponential", or
  the fixed ``shift``; :func:`.flux.scheduler_shift`), so the schedule of an image size is
  ``NoiseSchedule.flow(T, shift)``, and each shifted sigma is placed on diffkit's grid at equal log-SNR
  (:func:`.flow_latents.flow_sigmas_grid`), flow Euler ``ddim`` being the scheduler's step.
* the transformer's time: the **unshifted** timestep t_i, not s T: the scheduler keeps the given timesteps while
  shifting only the sigmas. :class:`CogView4Net` inverts the shift, t = T s / (shift - (shift - 1) s)
  (:func:`cogview4_timestep`), rounded to the whole t_i on the scheduler's grid (:meth:`CogView4.
  scheduler_denoiser`); on any other grid the network gets that unrounded time.
* guidance: CFG u_u + s (u_c - u_u) (Ho & Salimans 2022) for s > 1, default 5.0; s <= 1: one unguided call (a
  negative prompt refused, as :mod:`.auraflow`).
* size: default sample_size x f (1024 for the release), sides multiples of 16 (``check_inputs``) and of f x patch;
  decoding x = D(z / scaling_factor) (no shift).

A ``CogView4ControlPipeline`` folder (CogView4-6B-Control) is the same with a transformer of 2 C input channels: the
control image's latents concatenated after z at every call (:class:`.flux_channels.ChannelConcatNet`), E(c)
scaling_factor with c the control image (RGB resized to the output size, in [-1, 1]) and E(c) a posterior draw (the
pipeline's ``latent_dist.sample()`` from torch's global generator; here sample i's from the generator
``control_seed + i``, as FLUX.1 Depth / Canny's, :func:`.flux_channels.control_cond`) or its mean; no shift (the
pipeline's ``vae_shift_factor = 0``). ``text_to_image(control_image=)``, ``diffkit sample --control-image``.

Refused in one line before any weight is read (:func:`check_cogview4_folder`): another pipeline class
(``CogView3PlusPipeline``), a missing component, a transformer / VAE / text encoder /
scheduler of another class, a transformer whose channels are not the VAE's latent channels (in: twice them for
the Control pipeline), a scheduler whose
sigmas are not the shifted t / T (``use_karras_sigmas`` and the like, ``shift_terminal``, ``invert_sigmas``,
``stochastic_sampling``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import DiffkitError, read_json_object
from . import model_dtype, require
from .flow_latents import flow_sigmas_grid, frozen_on, load_flow_parts
from .pixart import PixArt, check_pipeline_folder, folder_sampler

COGVIEW4_PIPELINE = "CogView4Pipeline"
COGVIEW4_CONTROL_PIPELINE = "CogView4ControlPipeline"  # the control image's latents as extra input channels
CONTROL_WHAT = "a CogView4 Control folder (CogView4ControlPipeline: latents + control-image latents in)"
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
COGVIEW4_CLASSES = {"transformer": ("CogView4Transformer2DModel",), "vae": ("AutoencoderKL",),
                    "text_encoder": ("GlmModel",), "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
COGVIEW4_GUIDANCE = 5.0  # CogView4Pipeline.__call__'s default guidance_scale
COGVIEW4_STEPS = 50  # its default num_inference_steps
COGVIEW4_MAX_SEQUENCE_LENGTH = 1024  # its default max_sequence_length
TOKEN_MULTIPLE = 16  # _get_glm_embeds pads the tokens (on the left) to a multiple of 16
# scheduler keys (their defaults) under which its sigmas are the shifted t / T that CogView4Net inverts
_SIGMA_KEYS = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
               "shift_terminal": None, "invert_sigmas": False}


def is_cogview4_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``CogView4Pipeline`` or ``CogView4ControlPipeline`` (so
    ``diffkit sample`` dispatches)."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) in (COGVIEW4_PIPELINE, COGVIEW4_CONTROL_PIPELINE)


def check_cogview4_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of a ``CogView4Pipeline`` folder, checked from its JSON alone (module
    docstring); a one-line DiffkitError for what diffkit does not drive."""
    from .sd_xl import pipeline_class
    directory = Path(directory)
    control = pipeline_class(directory) == COGVIEW4_CONTROL_PIPELINE
    index = check_pipeline_folder(directory, COGVIEW4_CONTROL_PIPELINE if control else COGVIEW4_PIPELINE,
                                  "CogView4", REQUIRED, COGVIEW4_CLASSES)
    config = read_json_object(directory / "transformer" / "config.json", "transformer config")
    vae = read_json_object(directory / "vae" / "config.json", "vae config")
    latents = int(vae.get("latent_channels", 4))
    channels = (config.get("in_channels", 16), config.get("out_channels", 16))
    if channels != ((1 + control) * latents, latents):
        raise DiffkitError(f"{directory}'s transformer has in_channels, out_channels = {channels[0]!r}, "
                           f"{channels[1]!r}; allowed: {(1 + control) * latents}, {latents} (the VAE's latent "
                           f"channels{', twice in: z and the control latents' if control else ''})")
    return index, shifted_scheduler(directory, "CogView4")


def shifted_scheduler(directory: Path, kind: str) -> dict:
    """The folder's scheduler config where its sigmas are the shifted t / T that :class:`CogView4Net` inverts
    (no ``use_karras_sigmas`` and the like, no ``stochastic_sampling``); one line naming ``kind`` otherwise
    (CogView4's, GLM-Image's: :mod:`.glm_image`)."""
    sched = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    for key, default in _SIGMA_KEYS.items():
        if sched.get(key) not in (None, False):
            raise DiffkitError(f"{directory}'s scheduler has {key}={sched[key]!r}, whose sigmas are not the shifted "
                               f"t / T {kind}'s transformer time is read from; allowed: {default!r}")
    folder_sampler(sched, flow=True)  # one line for stochastic_sampling
    return sched


def cogview4_mu(image_seq_len: int, config: dict) -> float:
    """CogView4Pipeline's ``calculate_shift``: mu = sqrt(L / base_image_seq_len) max_shift + base_shift (defaults
    256, 0.25, 0.75) for L image tokens; not FLUX's line (:func:`.flux.calculate_shift`)."""
    base = config.get("base_image_seq_len", 256)
    return math.sqrt(image_seq_len / base) * config.get("max_shift", 0.75) + config.get("base_shift", 0.25)


def cogview4_timestep(t: torch.Tensor, T: int, shift: float) -> torch.Tensor:
    """The transformer's time T s_u of the flow time ``t`` = s T on ``NoiseSchedule.flow(T, shift)``: s_u the
    unshifted sigma, the inverse of SD3's shift map (eq. 23), which is the same map with 1 / shift
    (:func:`diffkit.schedule.flow_shift`); CogView4Pipeline hands the transformer its timesteps before
    ``set_timesteps`` shifts the sigmas."""
    from ..schedule import flow_shift
    return flow_shift(t / T, 1.0 / shift) * T


def size_conditions(height: int, width: int, original_size: Optional[tuple] = None,
                    crops_coords_top_left: tuple = (0, 0), dtype=torch.float32, device="cpu") -> dict:
    """{'original_size', 'target_size', 'crop_coords'}: (1, 2) pixel pairs as the CogView4 / CogView3-Plus pipelines
    pass them (SD-XL's micro-conditioning, Podell et al. 2023, Sec. 2.2; default original_size (height, width), crops
    (0, 0)); the networks broadcast them over the batch. Not two finite numbers each: one line."""
    pairs = {"original_size": (height, width) if original_size is None else original_size,
             "target_size": (height, width), "crop_coords": crops_coords_top_left}
    for name, pair in pairs.items():
        if len(tuple(pair)) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                             and math.isfinite(v) for v in pair):
            raise DiffkitError(f"{name}={pair!r} is not allowed; give two finite numbers (pixels: height, width)")
    return {name: torch.tensor([list(pair)], dtype=dtype, device=device) for name, pair in pairs.items()}


def call_with_sizes(model, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, sizes: tuple) -> torch.Tensor:
    """``model(x, encoder_hidden_states=context, timestep=t, original_size, target_size, crop_coords)`` of a CogView4 /
    CogView3-Plus transformer, the (1 or B, 2) size conditions expanded to x's batch; the output in x's dtype."""
    dtype, b = model_dtype(model), x.shape[0]
    sizes = [c.expand(b, 2) if c.shape[0] == 1 else c for c in sizes]
    out = model(x.to(dtype), encoder_hidden_states=context.to(dtype), timestep=t, original_size=sizes[0],
                target_size=sizes[1], crop_coords=sizes[2], return_dict=False)[0]
    return out.to(x.dtype)


class CogView4Net(torch.nn.Module):
    """``net(x, t, context, original_size, target_size, crop_coords, mask=None)`` over a
    ``CogView4Transformer2DModel``: ``t`` (the flow time s T on the shifted schedule) -> ``timestep`` =
    :func:`cogview4_timestep` (rounded with ``whole_timesteps``), the size conditions passed as given, ``mask`` not
    passed (the pipeline has none); the velocity in x's dtype."""

    def __init__(self, transformer, T: int, shift: float, whole_timesteps: bool = False):
        super().__init__()
        self.model, self.T, self.shift, self.whole_timesteps = transformer, T, shift, whole_timesteps

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, original_size=None,
                target_size=None, crop_coords=None, mask: torch.Tensor = None):
        if context is None or original_size is None:
            raise DiffkitError("a CogView4 transformer needs cond {'context', 'original_size', 'target_size', "
                               "'crop_coords'} (CogView4.prompt_guidance)")
        t = torch.as_tensor(t, device=x.device, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        t = cogview4_timestep(t, self.T, self.shift)
        if self.whole_timesteps:
            t = t.round()
        return call_with_sizes(self.model, x, t.to(torch.float32), context, (original_size, target_size, crop_coords))


@dataclass
class CogView4(PixArt):
    """The loaded components of a ``CogView4Pipeline`` folder (:func:`load_cogview4`): a :class:`~.pixart.PixArt`
    whose prompts, network, guidance and (size-dependent) schedule are CogView4's; :meth:`at_size` gives the one of
    an image size."""

    latents_hw: Optional[Tuple[int, int]] = None
    _sized: dict = field(default_factory=dict, repr=False)
    _whole: object = field(default=None, repr=False)

    default_guidance_scale = COGVIEW4_GUIDANCE
    default_steps = COGVIEW4_STEPS
    size_multiple = 16  # CogView4Pipeline.check_inputs

    @property
    def max_sequence_length(self) -> int:
        return COGVIEW4_MAX_SEQUENCE_LENGTH

    @property
    def max_length_limit(self) -> int:
        """GLM's positions, at least the pipeline's default 1024 (a cap: the prompts take the batch's longest)."""
        return max(int(self.text_encoder.config.max_position_embeddings), COGVIEW4_MAX_SEQUENCE_LENGTH)

    @property
    def learned_variance(self) -> bool:
        return False

    @property
    def T(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    @property
    def control(self) -> bool:
        """A ``CogView4ControlPipeline`` folder: the transformer takes the control image's latents too."""
        return self.pipeline == COGVIEW4_CONTROL_PIPELINE

    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """:meth:`.pixart.PixArt.latent_shape` with the transformer's out_channels (a Control transformer's input
        holds the control latents too)."""
        shape = super().latent_shape(batch, height, width)
        return (shape[0], int(self.transformer.config.out_channels), *shape[2:])

    def aspect_ratio_bins(self) -> dict:
        raise DiffkitError("CogView4Pipeline has no resolution binning; draw without it")

    def folder_sampler(self) -> tuple:
        return folder_sampler(self.scheduler_config, flow=True)

    # ------------------------------------------------------------------ the size-dependent schedule
    def mu(self, h: int, w: int) -> float:
        """The pipeline's mu at latents h x w: :func:`cogview4_mu` of (h / p)(w / p) image tokens."""
        patch = int(self.transformer.config.patch_size)
        return cogview4_mu((h * w) // patch ** 2, self.scheduler_config)

    def shift(self, h: int, w: int) -> float:
        """The flow shift of the scheduler at latents h x w (mu, e^mu or its fixed ``shift``:
        :func:`.flux.scheduler_shift`)."""
        from .flux import scheduler_shift
        return scheduler_shift(self.scheduler_config, lambda: self.mu(h, w), h, w)

    def at_size(self, h: int, w: int) -> "CogView4":
        """This folder with the schedule ``NoiseSchedule.flow(T, shift(h, w))`` of latents h x w (cached; the
        weights shared), whose denoisers, grid and guidance are that size's."""
        from ..schedule import NoiseSchedule
        if (h, w) == self.latents_hw:
            return self
        if (h, w) not in self._sized:
            self._sized[(h, w)] = dataclasses.replace(
                self, schedule=NoiseSchedule.flow(self.T, self.shift(h, w)), latents_hw=(h, w), _denoiser=None,
                _whole=None, _sized={})
        return self._sized[(h, w)]

    def _sized_self(self) -> "CogView4":
        return self if self.latents_hw is not None else self.at_size(*self.latent_shape(1)[2:])

    def _new_denoiser(self, whole: bool):
        from ..denoiser import Denoiser
        from .flux_channels import CONTROL_KEY, ChannelConcatNet
        net = CogView4Net(self.transformer, self.T, self.shift(*self.latents_hw), whole)
        if self.control:
            net = ChannelConcatNet(net, (CONTROL_KEY,), CONTROL_WHAT)
        denoiser = Denoiser(net, self.schedule, "flow_prediction")
        denoiser.model = self.transformer
        return denoiser

    @property
    def denoiser(self):
        """The unguided flow-prediction :class:`~diffkit.denoiser.Denoiser` (cond: ``context`` and the size
        conditions) of this size (the default size's where none is set), the network at :func:`cogview4_timestep`."""
        sized = self._sized_self()
        if sized._denoiser is None:
            sized._denoiser = sized._new_denoiser(False)
        return sized._denoiser

    def scheduler_denoiser(self):
        """The denoiser on the scheduler's grid: the network at the whole timesteps the pipeline hands it."""
        sized = self._sized_self()
        if sized._whole is None:
            sized._whole = sized._new_denoiser(True)
        return sized._whole

    def scheduler_sigmas(self, steps: int) -> torch.Tensor:
        """The scheduler's sigmas (final 0 included) after the pipeline's ``set_timesteps(timesteps=t, sigmas=t / T,
        mu=mu)``, t = int(linspace(T, 1, steps)), at this size's latents."""
        diffusers = require("diffusers")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise DiffkitError(f"steps={steps!r} is not allowed; give a positive integer")
        h, w = self._sized_self().latents_hw
        timesteps = np.linspace(self.T, 1.0, steps).astype(np.int64).astype(np.float32)
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(timesteps=timesteps, sigmas=timesteps / self.T, mu=self.mu(h, w))
        return scheduler.sigmas

    def scheduler_grid(self, steps: int) -> torch.Tensor:
        """diffkit's grid of :meth:`scheduler_sigmas` on this size's schedule (:func:`.flow_latents.
        flow_sigmas_grid`)."""
        return flow_sigmas_grid(self._sized_self().schedule, self.scheduler_sigmas(steps), steps)

    # ------------------------------------------------------------------ prompts and guidance
    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: Optional[int] = None) -> tuple:
        """(GLM second-to-last states (B, L, d), ones (B, L)) of ``prompts`` as ``CogView4Pipeline._get_glm_embeds``
        (module docstring): the batch's longest, at most ``max_sequence_length`` tokens, left-padded to a multiple
        of 16, encoded with no mask (the ones: every token attended)."""
        from .stable_diffusion import prompt_list
        length = self.max_sequence_length if max_sequence_length is None else max_sequence_length
        self.check_length(length)
        ids = self.tokenizer(prompt_list(prompts), padding="longest", max_length=length, truncation=True,
                             add_special_tokens=True, return_tensors="pt").input_ids
        pad = (TOKEN_MULTIPLE - ids.shape[1] % TOKEN_MULTIPLE) % TOKEN_MULTIPLE
        ids = torch.cat([torch.full((ids.shape[0], pad), self.tokenizer.pad_token_id, dtype=ids.dtype), ids], 1)
        with torch.no_grad():
            states = self.text_encoder(ids.to(self.device), output_hidden_states=True).hidden_states[-2]
        return states.to(self.text_encoder.dtype), torch.ones(ids.shape, dtype=torch.long, device=self.device)

    def micro_conditions(self, batch: int, height: int, width: int, original_size: Optional[tuple] = None,
                         crops_coords_top_left: tuple = (0, 0)) -> dict:
        """:func:`size_conditions` in the text encoder's dtype."""
        return size_conditions(height, width, original_size, crops_coords_top_left, self.text_encoder.dtype,
                               self.device)

    def prompt_guidance(self, prompts, negative_prompt=None, guidance_scale: float = COGVIEW4_GUIDANCE,
                        convention: str = "diffusers", max_sequence_length: Optional[int] = None,
                        size: Optional[tuple] = None, denoiser=None, original_size: Optional[tuple] = None,
                        crops_coords_top_left: tuple = (0, 0), extra: Optional[dict] = None) -> tuple:
        """(denoiser, cond) of ``CogView4Pipeline``'s guidance (module docstring): the prompts' states and the size
        conditions of the image ``size`` (h, w) in pixels, guided against ``negative_prompt`` (None: "") encoded on
        its own, for a diffusers-convention scale s > 1; s <= 1: the unguided ``denoiser`` (default this size's).
        ``extra``: more cond entries of both passes (a Control folder's control latents)."""
        from ..guidance import ClassifierFreeGuidance
        from .auraflow import guided
        from .stable_diffusion import negative_prompts
        sized = self if size is None else self.at_size(size[0] // self.vae_scale_factor,
                                                       size[1] // self.vae_scale_factor)
        denoiser = denoiser or sized.denoiser
        context, _ = self.encode_prompts(prompts, max_sequence_length)
        size = size or tuple(s * self.vae_scale_factor for s in sized.latents_hw)
        cond = {"context": context, **self.micro_conditions(context.shape[0], *size, original_size,
                                                             crops_coords_top_left), **(extra or {})}
        if not guided(guidance_scale, convention, negative_prompt):
            return denoiser, cond
        negatives = negative_prompts(negative_prompt, context.shape[0])
        if len(set(negatives)) == 1:
            negatives = negatives[:1]  # one row, broadcast by the guidance to every sample
        null_context, _ = self.encode_prompts(negatives, max_sequence_length)
        return ClassifierFreeGuidance(denoiser, guidance_scale, convention, null_context=null_context), cond


def load_cogview4(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                  progress: bool = True, lora=None) -> CogView4:
    """Load a ``CogView4Pipeline`` / ``CogView4ControlPipeline`` diffusers folder (never downloads, never unpickles);
    what diffkit does not drive is refused in one line before any weight is read (:func:`check_cogview4_folder`).
    ``lora``: LoRA files (paths or (path, scale) pairs) with diffusers-format ``transformer.`` keys
    (``CogView4LoraLoaderMixin`` converts nothing), read and checked first, fused as ``load_lora_weights`` +
    ``fuse_lora(lora_scale=scale)`` (:func:`.sana_lora.read_transformer_loras`, :func:`.sd_lora.merge_sd_loras`);
    a Control folder's pipeline has no LoRA loader: one line."""
    from .sana_lora import read_transformer_loras
    from .sd_lora import merge_sd_loras
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_cogview4_folder(directory)
    if lora and index["_class_name"] != COGVIEW4_PIPELINE:
        raise DiffkitError(f"LoRA files are not allowed on {directory}: {index['_class_name']} has no LoRA loader "
                           f"(diffusers 0.42.1); allowed on a {COGVIEW4_PIPELINE} folder")
    loras = read_transformer_loras(lora, "CogView4", "a CogView4 folder", COGVIEW4_PIPELINE,
                                   flux_check=False) if lora else []
    from .schedulers import train_timesteps
    train_timesteps(sched)  # checked (CogView4's own grid is set below)
    parts = load_flow_parts(directory, index, diffusers.CogView4Transformer2DModel, {"": "GlmModel"}, dtype, progress)
    device = frozen_on(parts, device)
    model = CogView4(pipeline=index["_class_name"], **parts, schedule=None, prediction_type="flow_prediction",
                     scheduler_config=sched, device=device, dtype=dtype)
    model.schedule = model._sized_self().schedule  # the default size's (a shift past the flow schedule: one line)
    merge_sd_loras(model, loras)
    return model


def text_to_image(cogview: CogView4, prompts: Union[str, Sequence[str]], *, original_size: Optional[tuple] = None,
                  crops_coords_top_left: tuple = (0, 0), control_image=None, control_seed: int = 0,
                  control_posterior: str = "sample", control_rows=None, **options) -> torch.Tensor:
    """Images of a CogView4 folder for ``prompts``: :func:`.pixart.text_to_image` (sampler / grid, default the
    scheduler's loop; steps (default 50); guidance (default s = 5.0); negative prompt; latents; height / width
    (default sample_size x f); ``max_sequence_length`` (default 1024); output options) on the schedule of the
    image's size (:meth:`CogView4.at_size`), with the pipeline's ``original_size`` / ``crops_coords_top_left``.
    A Control folder's ``control_image`` (a PIL image, path or (1, 3, H, W) tensor in [0, 1], or one per prompt
    with ``control_rows``): sample i's posterior draw from ``control_seed + i`` (``control_posterior="mean"``: the
    mean), :func:`.flux_channels.control_cond`. ``resolution_binning``: refused."""
    from .flow_latents import start_latents
    from .pixart import text_to_image as pixart_text_to_image
    from .stable_diffusion import prompt_list
    if options.get("resolution_binning"):
        cogview.aspect_ratio_bins()
    if (control_image is None) == cogview.control:
        raise DiffkitError(f"this is {CONTROL_WHAT}: give control_image (diffkit sample --control-image PNG)"
                           if cogview.control else "control_image (--control-image) feeds a CogView4 Control "
                           "transformer (CogView4ControlPipeline); this CogView4Pipeline folder has none")
    _, shape = start_latents(cogview, options.get("latents"), len(prompt_list(prompts)), options.get("height"),
                             options.get("width"))
    encode = {"original_size": original_size, "crops_coords_top_left": crops_coords_top_left}
    if control_image is not None:
        from .flux_channels import control_cond
        encode["extra"] = control_cond(cogview, control_image, shape, control_seed, control_posterior, control_rows)
    return pixart_text_to_image(cogview.at_size(*shape[2:]), prompts, encode=encode, **options)


__all__ = ["CogView4", "CogView4Net", "load_cogview4", "is_cogview4_folder", "check_cogview4_folder",
           "text_to_image", "cogview4_mu", "cogview4_timestep", "COGVIEW4_PIPELINE", "COGVIEW4_CONTROL_PIPELINE",
           "COGVIEW4_GUIDANCE", "COGVIEW4_STEPS", "COGVIEW4_MAX_SEQUENCE_LENGTH", "CONTROL_WHAT"]
