"""An Ideogram 4 diffusers folder (``Ideogram4Pipeline``, diffusers 0.42.1), sampled with any diffkit sampler.

Ideogram 4 (Ideogram AI 2026) is a rectified flow (Esser et al. 2024, Sec. 2, eq. 1: x_s = (1 - s) x_0 + s eps,
velocity u = eps - x_0) with two ``Ideogram4Transformer2DModel`` s on FLUX.2's latents (``AutoencoderKLFlux2``):
``transformer`` sees the prompt, ``unconditional_transformer`` (a separately trained network) never does. diffkit
runs it as a :class:`.flux2.Flux2` (its batch-norm decoding and size rules); what is Ideogram 4's own, as
``Ideogram4Pipeline`` does it:

* latents: the pipeline's (B, h w, 4 C) tokens, its ``randn`` draw, are diffkit's z (B, 4 C, h, w)
  (:func:`latents_from_tokens`), h = H / 2f; the 2 x 2 patches are **patch-major** (channel (2 p_y + p_x) C + c;
  FLUX.2's are channel-major): :func:`unpatchify` after z sigma_bn + mu_bn of the VAE's batch norm, then
  ``vae.decode``.
* prompts (:meth:`Ideogram4.encode_prompts`): the chat [user: [text: prompt]] with the generation prompt through
  the tokenizer's chat template, tokenised without special tokens; the ``Qwen3VLModel``'s language model run on it
  and the outputs of its decoder layers 0, 3, ..., 33, 35 (:data:`ACTIVATION_LAYERS`) stacked per token,
  **interleaved** (feature 13 j + k: width j of layer k), float32. The pipeline left-pads every prompt to
  ``max_sequence_length`` (default 2048; a longer prompt is refused) and runs the encoder under that mask; diffkit
  encodes each prompt alone (the causal encoder's states of the real tokens are the same) and keeps the batch's
  longest prompt as the text block (padding tokens have segment id -1: they attend only to each other, and the
  velocities of the image tokens do not depend on how many there are).
* the conditional call (:class:`Ideogram4Net`): one packed sequence [left padding | text | image], the latents after
  zero text slots, the text features before zero image slots; MRoPE ids (k, k, k) for text token k and
  65536 + (0, row, column) for the image; segment ids 1 (-1 on the padding); role indicators 3 (text) / 2 (image);
  ``timestep`` the model time 1 - s (0 = noise); the image tokens' output is the velocity toward the data, -u.
  The unconditional call: the image tokens alone, zero text features.
* schedule (:func:`logit_normal_sigmas`): sigma = sigmoid(mu' + std z_q) at the normal quantiles z_q of
  q = linspace(0, 1, N + 1) (a logit-normal's quantiles), mu' = mu + log(H W / 512^2) / 2 (default mu 0), std 1.5,
  clamped to log-SNR [-15, 18]; the first N (decreasing) given to ``set_timesteps(sigmas=...)`` (the scheduler's
  fixed ``shift`` then applies; a ``use_dynamic_shifting`` scheduler is refused: the pipeline passes no mu); the
  first sigma is below 1, so z is the flow state there (diffkit's x_T = (alpha + sigma) z, :func:`.pixart.flow_start`).
  A diffkit sampler's own grid takes the scheduler's fixed shift (``--flow-shift`` to move it).
* guidance (:class:`Ideogram4Guidance`): u = u_neg + s_i (u_c - u_neg), the pipeline's g pos + (1 - g) neg (Ho &
  Salimans 2022, eq. 6 in diffusers' convention) with u_neg from the *unconditional transformer* and a per-step scale
  s_i: ``guidance_schedule`` (default 7.0 for the first N - 3 steps, 3.0 for the last 3: the pipeline's own at
  N = 48) or one ``guidance_scale`` for every step. Step i's scale holds on (sigma_{i+1}, sigma_i] of the pipeline's
  sigmas at that length, so another sampler or grid reads it by noise level; s = 1 everywhere: the conditional call
  alone (the blend is then u_c exactly). There is no negative prompt.
* defaults: 48 steps, 2048 x 2048 pixels (sides multiples of 2 f).

Not driven: ``prompt_upsampling`` (the optional ``prompt_enhancer_head`` grafted onto the text encoder *generates* a
JSON caption by sampling); diffkit encodes the prompt as given (the pipeline's default ``prompt_upsampling=False``;
a caption written by hand in that schema is a prompt like any other). The head is not loaded.

Refused in one line before any weight is read (:func:`check_ideogram4_folder`): another pipeline class, a missing
component or one of another class, a transformer whose channels are not 4 x the VAE's latent channels, transformers
whose ``llm_features_dim`` is not 13 x the text encoder's width or a text encoder with fewer than 36 layers,
``invert_sigmas`` / ``stochastic_sampling`` / ``use_dynamic_shifting`` schedulers.
LoRA files: those the pipeline's ``Ideogram4LoraLoaderMixin`` loads (:mod:`.ideogram4_lora`: diffusers / PEFT keys and
the ai-toolkit / kohya / fused-qkv files it converts), fused into ``transformer`` (not the unconditional one) as
``load_lora_weights`` + ``fuse_lora``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..denoiser import Prediction, Wrapper
from ..diffusion import expand
from ..errors import DiffkitError, check_choice, check_float32, read_json_object
from . import model_dtype, require
from .flux2 import Flux2, check_patched_channels

PIPELINE = "Ideogram4Pipeline"
TRANSFORMER = "Ideogram4Transformer2DModel"
REQUIRED = ("transformer", "unconditional_transformer", "vae", "text_encoder", "tokenizer", "scheduler")
CLASSES = {"transformer": (TRANSFORMER,), "unconditional_transformer": (TRANSFORMER,), "vae": ("AutoencoderKLFlux2",),
           "text_encoder": ("Qwen3VLModel",), "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
ACTIVATION_LAYERS = (0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 35)  # QWEN3_VL_ACTIVATION_LAYERS
IDEOGRAM4_STEPS, IDEOGRAM4_SIZE = 48, 2048  # the pipeline's defaults
MAIN_SCALE, POLISH_SCALE, POLISH_STEPS = 7.0, 3.0, 3  # its default guidance_schedule: (7.0,) * 45 + (3.0,) * 3
BASE_MU, STD = 0.0, 1.5  # its mu / std of the logit-normal schedule
LOGSNR_RANGE = (-15.0, 18.0)  # _logit_normal_sigmas' clamp
BASE_PIXELS = 512 * 512  # _resolution_aware_mu's base resolution
MAX_SEQUENCE_LENGTH = 2048
IMAGE_POSITION_OFFSET, OUTPUT_IMAGE, LLM_TOKEN, PADDING = 65536, 2, 3, -1  # transformer_ideogram4's constants


def logit_normal_sigmas(steps: int, mu: float, std: float = STD) -> torch.Tensor:
    """The pipeline's N = ``steps`` input sigmas (``_logit_normal_sigmas``): t = 1 - sigmoid(mu + std z_q) at the
    normal quantiles z_q of q = linspace(0, 1, N + 1), clamped to [1 / (1 + e^(18/2)), 1 / (1 + e^(-15/2))] (log-SNR
    in [-15, 18]), sigma = 1 - t reversed (decreasing), the last (0) dropped; float64, then float32."""
    q = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    t = 1.0 - torch.special.expit(mu + std * torch.special.ndtri(q))
    t = t.clamp(1.0 / (1.0 + math.exp(0.5 * LOGSNR_RANGE[1])), 1.0 / (1.0 + math.exp(0.5 * LOGSNR_RANGE[0])))
    return (1.0 - t).flip(0)[:-1].to(torch.float32)


def resolution_mu(height: int, width: int, mu: float = BASE_MU) -> float:
    """The schedule's mean at ``height`` x ``width`` pixels: mu + log(H W / 512^2) / 2 (``_resolution_aware_mu``)."""
    return mu + 0.5 * math.log(height * width / BASE_PIXELS)


def default_schedule(steps: int) -> list:
    """diffkit's default per-step scales at ``steps``: 7.0, then 3.0 for the last 3 steps (the pipeline's default
    ``guidance_schedule`` at its 48 steps; the pipeline takes no other length without a scale)."""
    return [MAIN_SCALE] * max(steps - POLISH_STEPS, 0) + [POLISH_SCALE] * min(steps, POLISH_STEPS)


def latents_from_tokens(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """diffkit's z (B, 4 C, h, w) of the pipeline's latents (B, h w, 4 C) (its ``latents=`` and
    ``output_type="latent"``): token row-major, the channels as they are."""
    return tokens.reshape(tokens.shape[0], h, w, tokens.shape[2]).permute(0, 3, 1, 2)


def tokens_from_latents(z: torch.Tensor) -> torch.Tensor:
    """The pipeline's (B, h w, 4 C) of z (B, 4 C, h, w), the inverse of :func:`latents_from_tokens`."""
    return z.flatten(2).transpose(1, 2)


def unpatchify(z: torch.Tensor) -> torch.Tensor:
    """(B, 4 C, h, w) -> (B, C, 2 h, 2 w) of patch-major 2 x 2 patches (channel (2 p_y + p_x) C + c), the pipeline's
    ``view(B, h, w, 2, 2, C).permute(0, 5, 1, 3, 2, 4)``."""
    b, c, h, w = z.shape
    return z.reshape(b, 2, 2, c // 4, h, w).permute(0, 3, 4, 1, 5, 2).reshape(b, c // 4, 2 * h, 2 * w)


def patchify(z: torch.Tensor) -> torch.Tensor:
    """(B, C, 2 h, 2 w) -> (B, 4 C, h, w), the inverse of :func:`unpatchify`."""
    b, c, h, w = z.shape
    return z.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 1, 2, 4).reshape(b, 4 * c, h // 2, w // 2)


def image_ids(h: int, w: int, device=None) -> torch.Tensor:
    """(h w, 3) MRoPE ids of the image tokens: 65536 + (0, row, column)."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(h * w, 3)
    return (ids + IMAGE_POSITION_OFFSET).to(device)


class Ideogram4Net(torch.nn.Module):
    """``net(z, t, context, lens)`` over an ``Ideogram4Transformer2DModel`` on z (B, 4 C, h, w) (module
    docstring): the text features ``context`` (B, L, D) left-padded, ``lens`` (B,) their real tokens;
    ``unconditional``: the image tokens alone with zero features, ``llm_features_dim`` wide (the pipeline's call of
    ``unconditional_transformer``). ``timestep`` 1 - t / T; returns u = -(the image tokens' output) in z's layout."""

    def __init__(self, transformer, unconditional: bool = False):
        super().__init__()
        self.model, self.unconditional = transformer, unconditional

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None,
                lens: torch.Tensor = None) -> torch.Tensor:
        if not self.unconditional and (context is None or lens is None):
            raise DiffkitError("an Ideogram 4 transformer needs cond {'context', 'lens'} (Ideogram4.text_cond)")
        dtype, (b, c, h, w) = model_dtype(self.model), x.shape
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(b)
        t_model = (1.0 - t / self.num_timesteps).to(dtype)
        tokens, n = tokens_from_latents(x).to(dtype), h * w
        image = image_ids(h, w, x.device).expand(b, n, 3)
        if self.unconditional:
            features = torch.zeros(b, n, self.model.config.llm_features_dim, device=x.device, dtype=dtype)
            ones = torch.ones(b, n, dtype=torch.long, device=x.device)
            out = self.model(hidden_states=tokens, timestep=t_model, encoder_hidden_states=features,
                             position_ids=image, segment_ids=ones, indicator=ones * OUTPUT_IMAGE, return_dict=False)[0]
            return -out.transpose(1, 2).reshape(b, c, h, w).to(x.dtype)
        length = context.shape[1]
        lengths = lens.to(x.device).reshape(-1, 1).expand(b, 1)
        slot = torch.arange(length, device=x.device).expand(b, length)
        text = slot >= length - lengths  # the real tokens, at the right end of the text block
        k = (slot - (length - lengths)).clamp(min=0)  # each prompt's own positions 0 .. n - 1
        ids = torch.cat([torch.where(text, k, 0).unsqueeze(-1).expand(b, length, 3), image], dim=1)
        segments = torch.cat([torch.where(text, 1, PADDING), torch.ones(b, n, dtype=torch.long, device=x.device)], 1)
        roles = torch.cat([torch.where(text, LLM_TOKEN, 0), torch.full((b, n), OUTPUT_IMAGE, device=x.device)], 1)
        hidden = torch.cat([tokens.new_zeros(b, length, c), tokens], dim=1)
        features = torch.cat([context.to(x.device, dtype).expand(b, -1, -1),
                              context.new_zeros(b, n, context.shape[2]).to(x.device, dtype)], dim=1)
        out = self.model(hidden_states=hidden, timestep=t_model, encoder_hidden_states=features, position_ids=ids,
                         segment_ids=segments, indicator=roles, return_dict=False)[0][:, length:]
        return -out.transpose(1, 2).reshape(b, c, h, w).to(x.dtype)

    num_timesteps = 1000  # the scheduler's num_train_timesteps (set by Ideogram4.network)


class Ideogram4Guidance(Wrapper):
    """u = u_neg + s (u_c - u_neg) with u_neg of a second denoiser (``unconditional``: the unconditional
    transformer's, no cond) and a per-step scale (Ho & Salimans 2022, eq. 6 in diffusers' convention;
    ``Ideogram4Pipeline``'s g pos + (1 - g) neg). ``scales``: s_0 .. s_{N-1}; ``bounds``: the grid times t_1 ..
    t_{N-1} of the pipeline's sigmas at N steps: a call at time t takes s_i for t in (t_{i+1}, t_i] (the pipeline's
    loop calls at t_i). eps and x_0 are mixed with the same weights (both affine in u at (x_t, t)). One count in
    ``nfe`` per call, as classifier-free guidance's."""

    def __init__(self, denoiser, unconditional, scales: Sequence[float], bounds: torch.Tensor):
        self.inner, self.unconditional = denoiser, unconditional
        self.scales = torch.tensor([float(s) for s in scales], dtype=torch.float64)
        self.bounds = torch.as_tensor(bounds, dtype=torch.float64).reshape(-1)

    def scale_at(self, t, batch: int) -> torch.Tensor:
        """(B,) float64: s_i at each sample's time t (1e-6 T of slack at the grid times)."""
        from ..schedule import as_cpu_times
        t = as_cpu_times(t)
        t = t.expand(batch) if t.ndim == 0 else t.reshape(batch)
        slack = 1e-6 * self.inner.schedule.num_timesteps
        step = (self.bounds.unsqueeze(0) >= (t.unsqueeze(1) - slack)).sum(dim=1)
        return self.scales[step]

    def __call__(self, x: torch.Tensor, t, **cond) -> Prediction:
        scale = self.scale_at(t, x.shape[0])
        pred = self.inner(x, t, **cond)
        if bool((scale == 1).all()):
            return pred
        free = self.unconditional(x, t)
        s = expand(scale.to(x.device, x.dtype), x)
        return Prediction(eps=free.eps + s * (pred.eps - free.eps), x0=free.x0 + s * (pred.x0 - free.x0),
                          var_values=pred.var_values)


@dataclass
class Ideogram4(Flux2):
    """The loaded components of an Ideogram 4 folder (:func:`load_ideogram4`): :class:`.flux2.Flux2`'s fields and
    the ``unconditional_transformer``; the patch-major latents, logit-normal schedule and two-transformer guidance
    of the module docstring."""

    unconditional_transformer: object = None
    pipeline: str = PIPELINE
    default_image_size = IDEOGRAM4_SIZE
    default_steps = IDEOGRAM4_STEPS  # (diffkit sample's, ..commands._chroma)
    max_sequence_length = MAX_SEQUENCE_LENGTH
    patchify = staticmethod(patchify)
    unpatchify = staticmethod(unpatchify)

    def mu(self, h: int, w: int, steps: Optional[int] = None):
        """None: the pipeline passes the scheduler no mu (its fixed shift; dynamic shifting is refused)."""
        return None

    def network(self) -> torch.nn.Module:
        net = Ideogram4Net(self.transformer)
        net.num_timesteps = int(self.scheduler_config.get("num_train_timesteps", 1000))
        return net

    def unconditional_denoiser(self, h: int, w: int):
        """The flow-prediction Denoiser of the unconditional transformer on :meth:`denoiser_for` (h, w)'s schedule."""
        from ..denoiser import Denoiser
        schedule = self.denoiser_for(h, w).schedule
        key = ("unconditional", self.shift(h, w))
        if key not in self._denoisers:
            net = Ideogram4Net(self.unconditional_transformer, unconditional=True)
            net.num_timesteps = int(self.scheduler_config.get("num_train_timesteps", 1000))
            self._denoisers[key] = Denoiser(net, schedule, "flow_prediction")
            self._denoisers[key].model = self.unconditional_transformer
        return self._denoisers[key]

    def scheduler_sigmas(self, steps: int, h: int, w: int, mu: float = BASE_MU, std: float = STD) -> torch.Tensor:
        """The folder's scheduler's sigmas (final 0 included) after the pipeline's ``set_timesteps(sigmas=
        logit_normal_sigmas(steps, resolution_mu(H, W, mu), std))`` at latents h x w (H = 2 f h)."""
        diffusers = require("diffusers")
        self.check_scheduler_steps(steps)
        f = self.latent_scale_factor
        sigmas = logit_normal_sigmas(steps, resolution_mu(h * f, w * f, mu), std)
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(sigmas=sigmas.tolist())
        return scheduler.sigmas

    def scheduler_grid(self, steps: int, h: int, w: int, mu: float = BASE_MU, std: float = STD) -> torch.Tensor:
        """diffkit's grid of :meth:`scheduler_sigmas` on :meth:`denoiser_for` (h, w)'s schedule."""
        from .flow_latents import flow_sigmas_grid
        self.check_scheduler_steps(steps)
        return flow_sigmas_grid(self.denoiser_for(h, w).schedule, self.scheduler_sigmas(steps, h, w, mu, std), steps)

    def check_guidance_scale(self, guidance_scale: Optional[float]) -> None:
        """One line for a scale that is no finite float32 number (:func:`check_scale`); None is the default."""
        if guidance_scale is not None:
            check_scale(guidance_scale)

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: Optional[int] = None) -> list:
        """[(L_i, 13 d) float32]: each prompt's stacked layer states (module docstring; ``encode_prompt``'s rows
        without their left padding). A prompt of more than ``max_sequence_length`` tokens (default 2048): one line,
        as the pipeline refuses it."""
        from .stable_diffusion import prompt_list
        limit = MAX_SEQUENCE_LENGTH if max_sequence_length is None else max_sequence_length
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed; give a positive integer "
                               f"(Ideogram4Pipeline's most text tokens, default {MAX_SEQUENCE_LENGTH})")
        language = self.text_encoder.language_model
        states = []
        for prompt in prompt_list(prompts):
            chat = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
            text = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            if ids.shape[1] > limit:
                raise DiffkitError(f"a prompt of {ids.shape[1]} tokens is not allowed with max_sequence_length="
                                   f"{limit} (Ideogram4Pipeline refuses it); shorten it or raise the limit")
            taps = {}
            hooks = [language.layers[k].register_forward_hook(
                lambda _, __, out, k=k: taps.__setitem__(k, out[0] if isinstance(out, tuple) else out))
                for k in ACTIVATION_LAYERS]
            try:
                with torch.no_grad():
                    language(input_ids=ids.to(self.device), use_cache=False)
            finally:
                for hook in hooks:
                    hook.remove()
            stacked = torch.stack([taps[k][0] for k in ACTIVATION_LAYERS], dim=-1)  # (L, d, 13): interleaved
            states.append(stacked.reshape(stacked.shape[0], -1).float())
        return states

    def text_cond(self, prompts: Sequence[str], max_sequence_length: Optional[int] = None) -> dict:
        """{"context": (B, L, 13 d) the states left-padded with zeros to the longest, "lens": (B,) their lengths}
        (:func:`.ernie_image.padded_states`)."""
        from .ernie_image import padded_states
        return padded_states(self.encode_prompts(prompts, max_sequence_length), self.device, left=True)

    def guidance_scales(self, steps: int, guidance_scale=None, guidance_schedule=None,
                        convention: str = "diffusers") -> list:
        """The per-step scales s_i in diffusers' convention (``convention="seed"``: each read as W, s = 1 + W):
        ``guidance_schedule`` (a sequence of numbers), ``guidance_scale`` at every one of ``steps``, or
        :func:`default_schedule` (``steps``); one line for both, or a bad value."""
        check_choice("convention", convention, ["diffusers", "seed"])
        if guidance_scale is not None and guidance_schedule is not None:
            raise DiffkitError("guidance_scale with guidance_schedule is not allowed; give one (a scale for every "
                               "step, or one per step)")
        if guidance_schedule is None:
            self.check_guidance_scale(guidance_scale)
            if guidance_scale is None:
                return default_schedule(steps)
            scales = [guidance_scale] * steps
        else:
            scales = schedule_values(guidance_schedule)
        return [float(s) if convention == "diffusers" else 1.0 + float(s) for s in scales]

    def prompt_guidance(self, prompts, h: int, w: int, steps: Optional[int] = None, guidance_scale=None,
                        negative_prompt=None, max_sequence_length: Optional[int] = None,
                        convention: str = "diffusers", guidance_schedule=None, mu: float = BASE_MU,
                        std: float = STD) -> tuple:
        """(denoiser, cond) at latents h x w: :class:`Ideogram4Guidance` of :meth:`guidance_scales` (``steps``:
        default 48) placed on the pipeline's sigmas of that many steps (``mu`` / ``std``), or the conditional
        denoiser alone where every scale is 1. ``negative_prompt``: refused (the unconditional transformer reads
        no text)."""
        if negative_prompt is not None:
            raise DiffkitError("a negative prompt is not allowed for an Ideogram 4 folder (its unconditional branch "
                               "is a second transformer that reads no text; Ideogram4Pipeline takes none); drop it")
        scales = self.guidance_scales(IDEOGRAM4_STEPS if steps is None else steps, guidance_scale,
                                      guidance_schedule, convention)
        denoiser, cond = self.denoiser_for(h, w), self.text_cond(prompts, max_sequence_length)
        if all(s == 1 for s in scales):
            return denoiser, cond
        bounds = self.scheduler_grid(len(scales), h, w, mu, std)[1:len(scales)]
        return Ideogram4Guidance(denoiser, self.unconditional_denoiser(h, w), scales, bounds), cond


def check_scale(value) -> None:
    """One line unless ``value`` is a finite float32 number (a guidance scale of every step)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DiffkitError(f"guidance_scale={value!r} is not allowed; give a finite number (the blend g u_c + (1 - g) "
                           f"u_neg of every step; the pipeline's default schedule is {MAIN_SCALE:g}, then "
                           f"{POLISH_SCALE:g} for the last {POLISH_STEPS} steps)")
    check_float32("guidance_scale", value)


def schedule_values(guidance_schedule) -> list:
    """``guidance_schedule`` as a list of finite float32 numbers (a sequence or a 1-D tensor), else one line."""
    values = guidance_schedule.tolist() if isinstance(guidance_schedule, torch.Tensor) else guidance_schedule
    try:
        values = list(values) if not isinstance(values, (str, bytes, dict)) else []
        for value in values:
            check_scale(value)
    except (TypeError, DiffkitError):
        values = []
    if not values:
        raise DiffkitError(f"guidance_schedule={guidance_schedule!r} is not allowed; give one finite number per step "
                           f"(diffusers' s of u_neg + s (u_c - u_neg), or W in the seed convention)")
    return [float(v) for v in values]


def check_schedule_options(mu, std) -> None:
    """One line unless ``mu`` is a finite number and ``std`` a positive one (the logit-normal schedule's)."""
    for name, value, low in (("mu", mu, None), ("std", std, 0.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or (low is not None and value <= low):
            what = "a finite number > 0 (the logit-normal schedule's standard deviation)" if low is not None else \
                "a finite number (the logit-normal schedule's mean)"
            raise DiffkitError(f"{name}={value!r} is not allowed; give {what}")


def is_ideogram4_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names an ``Ideogram4...`` pipeline or its transformer."""
    from .flow_latents import names_pipeline
    return names_pipeline(path, "Ideogram4", TRANSFORMER)


def check_ideogram4_folder(directory) -> tuple:
    """(index, scheduler config) of an Ideogram 4 folder, checked from its JSON alone (module docstring)."""
    from .flux import check_flux_scheduler
    from .pixart import check_classes, named_index
    directory = Path(directory)
    index = named_index(directory, (PIPELINE,), "Ideogram 4")
    check_classes(directory, index, REQUIRED, "Ideogram 4", CLASSES)
    text = read_json_object(directory / "text_encoder" / "config.json", "text encoder config").get("text_config", {})
    depth, width = int(text.get("num_hidden_layers", 36)), int(text.get("hidden_size", 4096))
    if depth <= max(ACTIVATION_LAYERS):
        raise DiffkitError(f"{directory}'s text encoder has {depth} layers; allowed: at least "
                           f"{max(ACTIVATION_LAYERS) + 1} (Ideogram4Pipeline stacks the outputs of layers "
                           f"{', '.join(map(str, ACTIVATION_LAYERS))})")
    for part in ("transformer", "unconditional_transformer"):
        check_patched_channels(directory, part)
        got = read_json_object(directory / part / "config.json", f"{part} config").get("llm_features_dim", 53248)
        if got != len(ACTIVATION_LAYERS) * width:
            raise DiffkitError(f"{directory}'s {part} has llm_features_dim={got!r}; allowed: "
                               f"{len(ACTIVATION_LAYERS) * width} ({len(ACTIVATION_LAYERS)} layers x the text "
                               f"encoder's width {width})")
    return index, check_flux_scheduler(directory, PIPELINE, fixed_shift=True)


def load_ideogram4(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                   progress: bool = True, lora=None) -> Ideogram4:
    """Load an Ideogram 4 diffusers folder (never downloads, never unpickles; its optional ``prompt_enhancer_head``
    is not loaded); what diffkit does not drive is refused in one line before any weight is read. ``lora``: LoRA
    files (paths or (path, scale) pairs) in the layouts ``Ideogram4LoraLoaderMixin`` loads, read and checked first
    (:func:`.ideogram4_lora.read_ideogram4_loras`), fused into the conditional ``transformer`` as
    ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)`` (:func:`.sd_lora.merge_sd_loras`)."""
    from . import from_pretrained, library_progress_bars
    from .flow_latents import frozen_on, load_flow_parts
    from .ideogram4_lora import read_ideogram4_loras
    from .sd_lora import merge_sd_loras
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_ideogram4_folder(directory)
    loras = read_ideogram4_loras(lora) if lora else []
    parts = load_flow_parts(directory, index, diffusers.Ideogram4Transformer2DModel, {"": "Qwen3VLModel"}, dtype,
                            progress, vae_cls=diffusers.AutoencoderKLFlux2)
    with library_progress_bars(progress):
        free = from_pretrained(diffusers.Ideogram4Transformer2DModel, directory / "unconditional_transformer",
                               local_files_only=True, torch_dtype=dtype, use_safetensors=True)
    device = frozen_on(parts, device)
    free.to(device).eval().requires_grad_(False)
    model = Ideogram4(**parts, text_encoder_2=None, tokenizer_2=None, scheduler_config=sched, device=device,
                      dtype=dtype, unconditional_transformer=free)
    merge_sd_loras(model, loras)
    return model


def text_to_image(model: Ideogram4, prompts: Union[str, Sequence[str]], *, sampler: Optional[str] = None,
                  steps: Optional[int] = None, nfe: Optional[int] = None, guidance_scale: Optional[float] = None,
                  guidance_schedule: Optional[Sequence[float]] = None, convention: str = "diffusers",
                  negative_prompt=None, seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None,
                  height: Optional[int] = None, width: Optional[int] = None,
                  grid: Union[None, str, torch.Tensor] = None, max_sequence_length: Optional[int] = None,
                  mu: float = BASE_MU, std: float = STD, output_range: str = "0,1", return_latents: bool = False,
                  progress: bool = False, ip_adapter=None, **options) -> torch.Tensor:
    """Images of an Ideogram 4 folder for ``prompts`` as ``Ideogram4Pipeline`` (``prompt_upsampling=False``; module
    docstring) with any diffkit sampler.

    sampler / grid: both None: the pipeline's loop, flow Euler (``ddim``) on its logit-normal sigmas (48 steps by
    default; ``mu`` / ``std`` its schedule's); otherwise a diffkit sampler on its own grid (the scheduler's fixed
    shift, ``flow_shift`` to move it). guidance_scale / guidance_schedule / convention: :meth:`Ideogram4.
    guidance_scales` (with the pipeline's loop a schedule has one scale per step; with another sampler it is placed
    on the pipeline's sigmas of its length). latents: z at s = 1 (B, 4 C, h, w): the pipeline's (B, h w, 4 C) draw
    through :func:`latents_from_tokens`; default N(0, I) in z's layout from per-sample ``seed + i`` (not the
    pipeline's generator draw, which is in the token layout). height / width: default 2048, multiples of 2 f.
    max_sequence_length: the most tokens of a prompt (default 2048). ``return_latents``: z_0 in z's layout
    (``output_type="latent"`` is its :func:`tokens_from_latents`). options: passed to :func:`diffkit.sample`."""
    from ..sampling import sample
    from .flow_latents import finish_images, pipeline_grid, start_latents
    from .pixart import flow_start
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    for name, value in (("ip_adapter", ip_adapter), ("references", options.pop("references", None))):
        if value is not None:  # (diffkit sample passes ip_adapter=None)
            raise DiffkitError(f"{name} is not allowed for an Ideogram 4 folder (Ideogram4Pipeline takes none); "
                               f"drop it")
    check_choice("output_range", output_range, OUTPUT_RANGES)
    check_schedule_options(mu, std)
    prompts = prompt_list(prompts)
    noise, expected = start_latents(model, latents, len(prompts), height, width, " (B, 4C, H/2f, W/2f)")
    h, w = expected[2:]
    own = (sampler is None and grid is None) or isinstance(grid, str)
    sampler, grid, steps = pipeline_grid(sampler, grid, steps, nfe, IDEOGRAM4_STEPS,
                                         lambda n: model.scheduler_grid(n, h, w, mu, std), options.get("flow_shift"))
    length = len(grid) - 1 if own else steps  # (None: the pipeline's 48)
    if guidance_schedule is not None:
        guidance_schedule = schedule_values(guidance_schedule)
        if own and len(guidance_schedule) != length:
            raise DiffkitError(f"a guidance_schedule of {len(guidance_schedule)} scales is not allowed with {length} "
                               f"steps of the pipeline's loop; give one per step")
    denoiser, cond = model.prompt_guidance(prompts, h, w, length, guidance_scale, negative_prompt,
                                           max_sequence_length, convention, guidance_schedule, mu, std)
    if isinstance(grid, torch.Tensor):  # z is the flow state at the first sigma (< 1: the log-SNR clamp)
        noise = flow_start(denoiser.schedule, noise, grid, seed, model.device, model.dtype)
    z0 = sample(denoiser, noise, sampler, steps, nfe=nfe, grid=grid, seed=seed, cond=cond, progress=progress,
                device=model.device, dtype=model.dtype, **options)
    return finish_images(model, z0, return_latents, output_range)


__all__ = ["Ideogram4", "Ideogram4Net", "Ideogram4Guidance", "load_ideogram4", "is_ideogram4_folder",
           "check_ideogram4_folder", "text_to_image", "logit_normal_sigmas", "resolution_mu", "default_schedule",
           "latents_from_tokens", "tokens_from_latents", "patchify", "unpatchify", "IDEOGRAM4_STEPS"]
