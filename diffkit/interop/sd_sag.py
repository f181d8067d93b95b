"""Self-attention guidance on a Stable Diffusion folder, as diffusers 0.42.1's ``StableDiffusionSAGPipeline``
(Hong et al. 2023, "Improving Sample Quality of Diffusion Models Using Self-Attention Guidance", ICCV,
arXiv:2210.00939).

SAG guides away from the model's prediction on a copy of x_t whose salient parts were blurred. At each step:

1. the self-attention map A_t of the UNet's mid block (diffusers' ``mid_block.attentions[0].transformer_blocks[0]
   .attn1``) is kept from the step's own call (the unconditional half with classifier-free guidance, eq. 25: "we only
   use the unconditional one"), and the mask M_t = 1[mean_heads sum_queries A_t > 1] (the keys that attract more than
   their share of attention) is upsampled (nearest) to the latent (eq. 16);
2. the predicted x0-hat (of the unconditional prediction) is blurred where M_t = 1: x0-tilde = (1 - M_t) x0-hat +
   M_t Blur(x0-hat), a Gaussian of 9 x 9 taps, sigma 1, reflect-padded (eq. 17-18), and re-noised with the step's
   own eps-hat to x~_t = sqrt(abar_t) x0-tilde + sqrt(1 - abar_t) eps-hat (eq. 19);
3. one more UNet call on x~_t (the null prompt; the prompt without classifier-free guidance), and the guided output

       out = out_cfg + s (out_u - out(x~_t))      (eq. 25; without CFG: out_c + s (out_c - out(x~_t)), eq. 20)

   in the network's own prediction space (eps, v or x0: the pipeline adds the UNet outputs), the pair (eps, x0)
   taken from it at x_t.

:class:`SelfAttentionGuidance` wraps the folder's :class:`~diffkit.guidance.ClassifierFreeGuidance` (or its plain
denoiser where s = 1, the pipeline's ``guidance_scale <= 1``); the attention map comes from diffusers' own
``CrossAttnStoreProcessor`` of that pipeline module, installed on that one layer for the call (the previous processor
back after), and the map's size from a hook on the mid block's attention, as the pipeline does. The pipeline takes
``unet.config.attention_head_dim`` (its last entry) as the number of heads in the mask's reshape; so does this module.
It raises for a scheduler of non-integer timesteps (Euler, Heun, LMS, DPM-SDE, ...): :func:`sag_request` refuses a
sigma grid (karras, logsnr) up front and the wrapper any network call at a non-integer time, in one line (diffkit's
samplers on integer grids: ddim, pndm-skip-prk, plms, ddpm; dpm-solver++-2m, unipc, deis with ``@trailing``; not
pndm, whose PRK warm-up evaluates half steps).
Refused too: LCM / TCD sampling, an SD-XL folder (diffusers has no SAG pipeline for it), and what the pipeline has
no option for: guidance rescale, APG, PAG, ControlNets, T2I-Adapters, an IP-Adapter.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .. import diffusion
from ..denoiser import Prediction, Wrapper
from ..errors import DiffkitError, check_float32, check_range
from . import require

BLUR_KERNEL, BLUR_SIGMA = 9, 1.0  # the pipeline's gaussian_blur_2d(kernel_size=9, sigma=1.0) (paper Sec. 4.2)
MASK_THRESHOLD = 1.0  # attn_map.mean(heads).sum(queries) > 1.0


def gaussian_blur(images: torch.Tensor, kernel_size: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Each channel convolved with the separable Gaussian of ``kernel_size`` taps and std ``sigma`` (normalised to
    sum 1), reflect-padded to keep the size (SAG eq. 17's Blur, as the pipeline's ``gaussian_blur_2d``)."""
    half = (kernel_size - 1) * 0.5
    taps = torch.exp(-0.5 * (torch.linspace(-half, half, steps=kernel_size) / sigma).pow(2))
    taps = (taps / taps.sum()).to(device=images.device, dtype=images.dtype)
    kernel = torch.mm(taps[:, None], taps[None, :]).expand(images.shape[-3], 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    return F.conv2d(F.pad(images, [pad] * 4, mode="reflect"), kernel, groups=images.shape[-3])


def attention_mask(probs: torch.Tensor, heads: int, map_size, latent_shape) -> torch.Tensor:
    """SAG eq. 16: from the stored self-attention probabilities (batch * heads, queries, keys) the mask
    1[mean over heads of the sum over queries > 1] per key position, reshaped to the map's (h, w), repeated over the
    latent's channels and upsampled (nearest) to the latent's (H, W)."""
    batch, channels, height, width = latent_shape
    mask = probs.reshape(batch, heads, *probs.shape[1:]).mean(1).sum(1) > MASK_THRESHOLD
    mask = mask.reshape(batch, 1, *map_size).repeat(1, channels, 1, 1).to(probs.dtype)
    return F.interpolate(mask, (height, width))


class _Recording(Wrapper):
    """The network denoiser, remembering its last prediction (the guided call's halves)."""

    def __init__(self, inner):
        self.inner, self.last = inner, None

    def __call__(self, x, t, **cond):
        self.last = self.inner(x, t, **cond)
        return self.last


class SelfAttentionGuidance(Wrapper):
    """SAG (module docstring, eq. 16-20, 25) over ``denoiser``: the folder's ClassifierFreeGuidance (the guided
    output and, from its batched call, the null half's prediction and attention map) or its plain network denoiser
    (the conditional prediction's). ``unet``: the diffusers UNet2DConditionModel under it; ``prediction_type``: the
    UNet's output (epsilon, v_prediction, sample), the space the guidance adds in. s = ``scale`` >= 0 (diffusers'
    ``sag_scale``; 0 is the wrapped denoiser, bit for bit). Each step costs one more UNet call of batch B."""

    def __init__(self, denoiser, scale: float, unet, prediction_type: str):
        from ..guidance import ClassifierFreeGuidance
        self.inner, self.scale, self.unet, self.prediction_type = denoiser, float(scale), unet, prediction_type
        self.guided = isinstance(denoiser, ClassifierFreeGuidance)
        self.network = denoiser.inner if self.guided else denoiser
        heads = unet.config.attention_head_dim  # sag_masking's h
        self.heads = int(heads[-1] if isinstance(heads, (list, tuple)) else heads)

    @contextlib.contextmanager
    def _stored_attention(self):
        """diffusers' CrossAttnStoreProcessor on the mid block's first self-attention, and the map's size from a
        forward hook on the mid block's attention, within the context (the processor put back after)."""
        module = require("diffusers").pipelines.deprecated.stable_diffusion_sag.pipeline_stable_diffusion_sag
        attention = self.unet.mid_block.attentions[0]
        layer = attention.transformer_blocks[0].attn1
        store, previous, size = module.CrossAttnStoreProcessor(), layer.processor, {}

        def map_size(_module, _inputs, output):
            size["map"] = output[0].shape[-2:]
        layer.processor = store
        try:
            with attention.register_forward_hook(map_size):
                yield store, size
        finally:
            layer.processor = previous

    @staticmethod
    def _check_time(t, batch: int) -> torch.Tensor:
        """The times (float64, (B,)), refused in one line where one is not an integer timestep."""
        from ..guidance import _times64
        t64 = _times64(t, batch)
        if not bool((t64 == t64.round()).all()):
            raise DiffkitError(f"self-attention guidance needs the scheduler's integer timesteps (as "
                               f"StableDiffusionSAGPipeline); this sampler calls the UNet at t={float(t64[0]):g}: "
                               f"allowed: samplers on integer grids (ddim, pndm-skip-prk, plms, ddpm; "
                               f"dpm-solver++-2m@trailing, ...)")
        return t64

    def __call__(self, x: torch.Tensor, t, **cond) -> Prediction:
        if self.scale == 0:
            return self.inner(x, t, **cond)
        batch = x.shape[0]
        t64 = self._check_time(t, batch)
        recording = _Recording(self.network)
        if self.guided:
            self.inner.inner = recording
        try:
            with self._stored_attention() as (store, size):
                pred = (self.inner if self.guided else recording)(x, t, **cond)
                whole = recording.last
                halves = whole.eps.shape[0] // batch  # 2: cond, null (diffkit's order); 1: no guidance (s = 1)
                eps_u, x0_u = whole.eps[-batch:], whole.x0[-batch:]  # the null half (eq. 25), or the only one
                probs = store.attention_probs.chunk(halves)[-1]
                alpha, sigma = (diffusion.expand(f(t64), x) for f in (self.schedule.alpha, self.schedule.sigma))
                mask = attention_mask(probs, self.heads, size["map"], x.shape)
                degraded = gaussian_blur(x0_u) * mask + x0_u * (1 - mask)  # eq. 17-18
                renoised = alpha * degraded + sigma * eps_u  # eq. 19
                null = dict(cond)
                if halves == 2:
                    context = self.inner.null_context.to(device=x.device, dtype=cond["context"].dtype)
                    null["context"] = context.expand_as(cond["context"])
                pred_degraded = self.network(renoised, t, **null)
        finally:
            if self.guided:
                self.inner.inner = self.network
        kind = self.prediction_type
        out, out_u = (diffusion.target_for(kind, p.x0, p.eps, alpha, sigma) for p in (pred, Prediction(eps_u, x0_u)))
        out_degraded = diffusion.target_for(kind, pred_degraded.x0, pred_degraded.eps, alpha, sigma)
        eps, x0 = diffusion.eps_x0_from_output(out + self.scale * (out_u - out_degraded), x, alpha, sigma, kind)
        return Prediction(eps=eps, x0=x0)  # eq. 20 / 25


def sag_request(sd, scale, *, refused: dict = None, sampler: str = "ddim", spacing=None, grid=None):
    """``text_to_image``'s ``sag_scale`` checked before any work: None where it is None or 0 (the sampling bit for
    bit as without), else a function wrapping the folder's guided denoiser in :class:`SelfAttentionGuidance`.
    ``refused``: name -> value of the options that do not combine with it (the first given one is named);
    ``sampler`` / ``spacing`` / ``grid``: the run's, a sigma spacing (karras, logsnr: times between the integer
    timesteps) refused up front where no grid is given (the wrapper refuses any other non-integer time)."""
    if not scale:
        check_range("sag_scale", scale or 0.0, 0.0, None)
        return None
    scale = float(check_float32("sag_scale", check_range("sag_scale", scale, 0.0, None)))
    if sd.consistency is not None or sd.scheduler_override or sd.guidance_embedding_dim:
        raise DiffkitError("self-attention guidance is not supported with LCMScheduler / TCD sampling or an LCM UNet "
                           "with a guidance input; allowed: the folder's own scheduler and classifier-free guidance")
    from .sd_xl import StableDiffusionXL
    if isinstance(sd, StableDiffusionXL):
        raise DiffkitError("self-attention guidance is offered for Stable Diffusion 1.x / 2.x folders (diffusers' "
                           "StableDiffusionSAGPipeline); this is an SD-XL folder")
    if sd.prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise DiffkitError(f"self-attention guidance needs an epsilon, v_prediction or sample UNet; this folder's "
                           f"prediction_type is {sd.prediction_type!r}")
    for name, value in (refused or {}).items():
        if value is not None and value is not False and value != 0:
            raise DiffkitError(f"{name} does not go with sag_scale (diffusers' StableDiffusionSAGPipeline has no "
                               f"such option); drop one of them")

    from ..sampling import resolve_sampler
    from ..timesteps import SIGMA_SPACINGS
    info, spacing, _ = resolve_sampler(sampler, spacing)
    if grid is None and (spacing or info.default_spacing) in SIGMA_SPACINGS:
        raise DiffkitError(f"self-attention guidance needs the scheduler's integer timesteps (as "
                           f"StableDiffusionSAGPipeline); sampler {info.name!r} on the "
                           f"{spacing or info.default_spacing} grid runs between them: allowed: a linear / leading / "
                           f"trailing grid (e.g. ddim, dpm-solver++-2m@trailing)")

    def self_attention_guided(denoiser):
        return SelfAttentionGuidance(denoiser, scale, sd.unet, sd.prediction_type)
    return self_attention_guided


__all__ = ["SelfAttentionGuidance", "attention_mask", "gaussian_blur", "sag_request"]
