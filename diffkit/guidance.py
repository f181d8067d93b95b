"""Guidance: denoisers that wrap a denoiser (README "Design"; the team's design sketch, abstraction 3).

* :class:`ClassifierFreeGuidance` - Ho & Salimans 2022 (seed 002):
  eps-bar = (1 + w) eps(x_t, y) - w eps(x_t, null), with the conditional and the null-class
  passes in one batched network call; optional guidance rescale (Lin et al. 2024, Sec. 3.4),
  guidance interval (Kynkaanniemi et al. 2024) and adaptive projected guidance (APG; Sadat et al.
  2025: the update projected onto the conditional x_0, rescaled, with reverse momentum).
* :class:`PerturbedAttentionGuidance` - Ahn et al. 2024 (PAG): eps~ = eps(x_t) + s (eps(x_t) - eps-hat(x_t)),
  eps-hat the network with the identity as the attention map of chosen self-attention layers; over
  :class:`ClassifierFreeGuidance` the null, conditional and perturbed passes share one batched call;
  optional diffusers' adaptive scale (:func:`adaptive_pag_scale`).
* :class:`GuidanceScaleInput` - a w-conditioned model (LCM, Luo et al. 2023, Sec. 4.2) given w as
  an input: one network call per step.
* :class:`ClassifierGuidance` - Dhariwal & Nichol 2021, Algorithm 2 (seed 000):
  eps-hat = eps(x_t) - sqrt(1 - abar_t) s grad_x log p_phi(y | x_t); usable by every sampler
  that reads eps/x0 from a denoiser.
* :func:`classifier_guided_ddpm` - Algorithm 1 (seed 000): ancestral sampling from
  N(mu + s Sigma grad_x log p_phi(y | x_t), Sigma).
* :class:`ReconstructionGuidance` - Ho et al. 2022 ("Video Diffusion Models", Sec. 3.1):
  x0-tilde = x0-hat - (w alpha_t / 2) grad_{x_t} ||x_known - x0-hat||^2 on the known part, for
  inpainting / imputation / forecasting (:func:`diffkit.inpaint`, :mod:`diffkit.forecasting`).
* :class:`CLIPGuidance` - GLIDE (Nichol et al. 2022, Sec. 2, "CLIP Guidance"): classifier guidance
  with the gradient of a CLIP image-text similarity, on the predicted x_0 through the network
  (default: an ordinary CLIP) or on x_t (GLIDE's noise-aware CLIP).

Every wrapper keeps the denoiser contract ``denoiser(x, t, **cond) -> Prediction`` with a
consistent pair (x_t = alpha_t x0 + sigma_t eps holds for the returned eps and x0), and exposes
``schedule``, ``nfe``, ``reset_nfe()`` and ``learned_variance`` of the wrapped denoiser.

NFE: ``nfe`` counts network calls. A classifier-free guidance step is one call on a batch of
2B (cond and null concatenated), so it counts 1, as diffusers counts one UNet call per step;
the work per call is that of 2B images. Classifier gradients are not network evaluations of the
diffusion model and are counted separately in ``ClassifierGuidance.classifier_calls``.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Optional, Sequence

import torch

from . import diffusion
from .denoiser import Prediction, Wrapper, reset_states, with_x0
from .errors import DiffkitError, DiffkitWarning, check_choice, check_float32, check_range
from .noise import randn_like
from .sampling import check_noise
from .schedule import as_cpu_times
from .samplers.common import report, steps

CONVENTIONS = ("seed", "diffusers")
RESCALE_SPACES = ("x0", "eps", "v", "flow")


def _times64(t, batch: int) -> torch.Tensor:
    """Times as float64 CPU (B,)."""
    t = as_cpu_times(t)
    return t.expand(batch) if t.ndim == 0 else t.reshape(batch)


def _std_per_sample(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).std(dim=1).reshape(-1, *([1] * (x.ndim - 1)))


def pipeline_scale(guidance_scale: Optional[float], default: float, convention: str = "diffusers") -> float:
    """diffusers' CFG scale s of a pipeline call (eps_u + s (eps_c - eps_u)): the pipeline's ``default`` (already s)
    when ``guidance_scale`` is None, else ``guidance_scale`` read in ``convention`` ("diffusers": s itself; "seed":
    the weight W of Ho & Salimans 2022 eq. 6, s = 1 + W)."""
    if guidance_scale is None:
        return float(default)
    return float(guidance_scale) if convention == "diffusers" else 1 + float(guidance_scale)


def guidance_weight(scale: float, convention: str = "seed") -> float:
    """The seed-002 weight w of eps-bar = (1 + w) eps_c - w eps_u.

    ``seed``: ``scale`` is w itself (w = 0: the conditional model; Ho & Salimans 2022 eq. 6).
    ``diffusers``: ``scale`` is s of eps_u + s (eps_c - eps_u) (s = 1: the conditional model),
    so w = s - 1. Allowed: w >= -1 (w = -1 is the unconditional model).
    """
    check_choice("guidance convention", convention, CONVENTIONS)
    check_float32("guidance scale", check_range("guidance scale", scale, None, None))
    if not math.isfinite(scale):
        raise DiffkitError(f"guidance scale={scale!r} must be finite")
    w = float(scale) if convention == "seed" else float(scale) - 1.0
    if w < -1:
        low = -1 if convention == "seed" else 0
        raise DiffkitError(f"guidance scale={scale!r} is out of range; allowed: >= {low} ({convention} convention)")
    return w


def interval_from_karras_sigmas(schedule, sigma_lo: float, sigma_hi: float) -> tuple[float, float]:
    """A guidance interval given, as Kynkaanniemi et al. 2024 give it, in EDM noise levels
    sigma = sqrt((1 - abar)/abar), converted to training-timestep units (t_lo, t_hi)."""
    t = schedule.t_from_karras_sigma(torch.tensor([sigma_lo, sigma_hi], dtype=torch.float64))
    return float(t[0]), float(t[1])


def _checked_interval(interval, denoiser, what: str = "guidance interval") -> Optional[tuple[float, float]]:
    """A guidance interval (t_lo, t_hi) in training timesteps (Kynkaanniemi et al. 2024), checked: t_lo <= t_hi
    within [-1, T] of ``denoiser``'s schedule; None stays None (guide everywhere)."""
    if interval is None:
        return None
    if len(interval) != 2 or not all(math.isfinite(float(v)) for v in interval) \
            or not float(interval[0]) <= float(interval[1]):  # NaN: its own words, not a misordering
        raise DiffkitError(f"{what}={tuple(interval)!r} must be (t_lo, t_hi) with t_lo <= t_hi, both finite numbers")
    interval = (float(interval[0]), float(interval[1]))
    top = getattr(getattr(denoiser, "schedule", None), "num_timesteps", None)
    if top is not None and not -1.0 <= interval[0] <= interval[1] <= top:
        raise DiffkitError(f"{what}={interval!r} is not allowed; the times lie in [-1, {top}] (training timesteps)")
    return interval


def _in_interval(interval: Optional[tuple[float, float]], t64: torch.Tensor) -> torch.Tensor:
    """Per sample (B,) bool: t_lo <= t <= t_hi (everywhere without an interval)."""
    if interval is None:
        return torch.ones_like(t64, dtype=torch.bool)
    lo, hi = interval
    return (t64 >= lo) & (t64 <= hi)


def _repeated(cond: dict, batch: int, copies: int) -> dict:
    """``cond`` for a batch of ``copies`` concatenated copies of the samples: per-sample tensors (first
    dimension ``batch``) repeated, anything else passed as it is."""
    return {k: torch.cat([v] * copies) if isinstance(v, torch.Tensor) and v.shape[:1] == (batch,) else v
            for k, v in cond.items()}


def norm_matched_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float, normalize: bool = True,
                     bounds: Optional[tuple] = None, eps: float = 0.0, floor: Optional[float] = None) -> torch.Tensor:
    """The network-output CFG of the diffusers pipelines that guide their transformer's prediction directly:
    v = v_u + s (v_c - v_u) (Ho & Salimans 2022, eq. 6 in diffusers' convention), with ``normalize`` rescaled to
    v ||v_c|| / ||v||, the norms over the **last axis** (``torch.norm(dim=-1, keepdim=True)``): per packed token of
    4C channels in ``QwenImagePipeline`` ("true CFG", :mod:`diffkit.interop.qwen_image`), per image row of
    ``Lumina2Pipeline`` with ``cfg_normalization`` (:mod:`diffkit.interop.lumina2`). Nonlinear in v, so it runs on
    the network's output, not in :class:`ClassifierFreeGuidance`'s eps / x0 mix. ``bounds`` (lo, hi) / ``eps``:
    ``LongCatImagePipeline``'s ``enable_cfg_renorm``, the factor clamp(||v_c|| / (||v|| + eps), lo, hi)
    (:mod:`diffkit.interop.longcat_image`). ``floor``: the guided norm clamped from below first (the JoyImage Edit
    pipelines' ``clamp_min(1e-6)``, :mod:`diffkit.interop.joyimage`)."""
    guided = uncond + scale * (cond - uncond)
    if not normalize:
        return guided
    norm = guided.norm(dim=-1, keepdim=True)
    norm = norm if floor is None else norm.clamp_min(floor)
    factor = cond.norm(dim=-1, keepdim=True) / (norm + eps if eps else norm)
    return guided * (factor if bounds is None else factor.clamp(*bounds))


class ClassifierFreeGuidance(Wrapper):
    """Classifier-free guidance (Ho & Salimans 2022; seed 002):

        eps-bar(x_t, y) = (1 + w) eps(x_t, y) - w eps(x_t, null).

    Args:
        denoiser: a conditional denoiser; its network takes labels ``y`` with the null class at
            index ``null_class`` (diffkit's U-Net: ``num_classes``).
        scale: the guidance strength in ``convention``: ``seed`` (w; 0 = no guidance, the default
            here and in the CLI) or ``diffusers`` (s = 1 + w; 1 = no guidance).
        rescale: phi of guidance rescale (Lin et al. 2024, Sec. 3.4): the guided prediction is
            scaled per sample to the standard deviation of the conditional one and mixed,
            phi * rescaled + (1 - phi) * guided; 0 disables it.
        rescale_space: ``x0`` (rescale the predicted x_0), ``eps`` (the noise prediction) or ``v``
            (the velocity alpha eps - sigma x_0) or ``flow`` (a flow velocity eps - x_0, Lipman et al.
            2023, eq. 23); the others are recomputed from it. diffusers' ``rescale_noise_cfg`` rescales
            the network's output: ``eps`` for an epsilon network, ``v`` for a v-prediction one,
            ``flow`` for a flow transformer's (LTX-Video's, :mod:`diffkit.interop.ltx`).
        interval: ``(t_lo, t_hi)`` in training-timestep units: guide only where
            t_lo <= t <= t_hi, elsewhere return the conditional model with one network call of
            batch B (Kynkaanniemi et al. 2024; see :func:`interval_from_karras_sigmas`).
        null_class: the null label; default ``num_classes`` of the wrapped network's config.
        null_context: for cross-attention models, the context of the unconditional pass
            (e.g. the empty prompt's embedding, (1 or B, seq, dim)); without it a ``context`` in
            cond is shared by both passes. With ``null_context`` and no class labels (a
            text-conditional model) the condition is the context alone:
            eps-bar = (1 + w) eps(x_t, c) - w eps(x_t, c_null), c_null = the empty prompt's context.
            A ``null_context`` of another length than the context (FLUX.1 Redux's 512 + N tokens against a
            negative prompt's 512) runs the two passes as two network calls (without PAG's perturbed pass).
        null_cond: other ``cond`` keys whose unconditional pass takes another value (1 or B rows), as
            ``null_context`` does for ``context``: e.g. SD-XL's pooled prompt embedding ``text_embeds``
            and size conditions ``time_ids`` (:mod:`diffkit.interop.sd_xl`).
        weight_input: take w per call and per sample from ``cond["w"]`` (seed convention; a number
            or (B,)) instead of ``scale``; ``w`` is not passed on to the network. The guided teacher
            of LCM's w-conditioned distillation (Alg. 1, eq. 8), whose student receives the same w.
        apg_eta, apg_norm_threshold, apg_momentum: adaptive projected guidance (Sadat, Hilliges &
            Weber 2025, "Eliminating oversaturation and artifacts of high guidance scales in
            diffusion models", Sec. 4, Alg. 1) on the predicted x_0: x0 = x0_c + w * update with
            update = :func:`adaptive_projected_update` of the difference x0_c - x0_u (its component
            parallel to x0_c weighted by eta in [0, 1], its norm capped at r > 0 per sample) after
            the reverse momentum beta in (-1, 1) (:meth:`_momentum`). The defaults eta = 1, r = inf,
            beta = 0 are plain classifier-free guidance (the APG code does not run). The momentum
            is state across calls: :meth:`reset_state`, which :func:`diffkit.sample` calls at the
            start of every run.

    One call runs the network once on the batch ``cat([x, x])`` with labels ``cat([y, null])``
    and splits the output, so it counts as 1 in ``nfe`` (see the module docstring). With a
    learned variance the conditional pass's ``var_values`` are returned. eps and x0 are mixed with
    the same weights, so the pair stays consistent (x_t = alpha x0 + sigma eps) for every sampler.
    """

    def __init__(self, denoiser, scale: float = 0.0, convention: str = "seed", rescale: float = 0.0,
                 interval: Optional[Sequence[float]] = None, *, rescale_space: str = "x0",
                 null_class: Optional[int] = None, null_context: Optional[torch.Tensor] = None,
                 null_cond: Optional[dict] = None, weight_input: bool = False, apg_eta: float = 1.0,
                 apg_norm_threshold: float = math.inf, apg_momentum: float = 0.0):
        if getattr(denoiser, "guidance_range", None) is not None:  # also under other wrappers
            raise DiffkitError("this consistency model takes the guidance weight w as its input (distilled with "
                               "consistency_guidance_range); guide it with GuidanceScaleInput(model, w), one call "
                               "per step")
        self.inner, self.weight_input = denoiser, bool(weight_input)
        self.convention = convention
        self.w = guidance_weight(scale, convention)
        check_range("guidance rescale", rescale, 0.0, 1.0)
        self.rescale = float(rescale)
        self.rescale_space = check_choice("rescale_space", rescale_space, RESCALE_SPACES)
        self.interval = _checked_interval(interval, denoiser)
        classes = _num_classes_of(denoiser)
        if null_class is not None and (isinstance(null_class, bool) or not isinstance(null_class, int)
                                       or null_class < 0 or (classes is not None and null_class > classes)):
            allowed = f"0..{classes}" if classes is not None else "an integer >= 0"
            raise DiffkitError(f"null_class={null_class!r} is not allowed; allowed: {allowed} (the network's "
                               f"unconditional label)")
        self.null_class = null_class if null_class is not None else classes
        if self.null_class is None and null_context is None:
            raise DiffkitError("classifier-free guidance needs a class-conditional model (its network has no "
                               "num_classes); pass null_class= for a custom network")
        self.null_context = null_context
        self.null_cond = dict(null_cond or {})
        self.apg_eta, self.apg_norm_threshold, self.apg_momentum = check_apg(apg_eta, apg_norm_threshold, apg_momentum)
        self.apg = (self.apg_eta, self.apg_norm_threshold, self.apg_momentum) != (1.0, math.inf, 0.0)
        self.reset_state()

    def reset_state(self) -> None:
        """Forget APG's momentum: the next guided call starts a new running average. :func:`diffkit.sample`
        (and so every command) calls it at the start of each run; call it between runs of a sampler
        function used directly."""
        self._running = self._running_before = self._running_times = None

    def _momentum(self, diff: torch.Tensor, t64: torch.Tensor, guided: torch.Tensor) -> torch.Tensor:
        """APG's reverse momentum (Sadat et al. 2025, Sec. 4, Alg. 1): the running average
        D-bar_t = diff_t + beta D-bar_{t_prev} (D-bar = 0 before the first guided call), per sample.

        One entry per distinct time: a call at the time of the previous call (Heun's corrector at
        t_{i+1} then the next step's predictor there; PNDM's repeated times) replaces that time's
        entry (it starts again from the average before it) instead of adding one, so Heun's second
        call per step does not count as a step (a call at a new time does: DPM-Solver-2's midpoint,
        Restart's jumps back up; docs/guidance.md). A sample outside the guidance interval keeps
        its average unchanged. The state is the (B, ...) average: a batch of another shape without
        :meth:`reset_state` is refused."""
        if self._running is None:
            self._running = self._running_before = torch.zeros_like(diff)
            self._running_times = torch.full_like(t64, math.nan)
        if self._running.shape != diff.shape:
            raise DiffkitError(f"APG momentum holds a running average of shape {tuple(self._running.shape)}, not "
                               f"{tuple(diff.shape)}: call reset_state() between sampling runs (diffkit.sample does)")
        same_time = diffusion.expand(t64 == self._running_times, diff).to(torch.bool)
        before = torch.where(same_time, self._running_before, self._running.to(diff.dtype))
        running = torch.where(diffusion.expand(guided, diff).to(torch.bool), diff + self.apg_momentum * before,
                              before)
        self._running, self._running_before, self._running_times = running, before, t64
        return running

    def _guided_mask(self, t64: torch.Tensor) -> torch.Tensor:
        return _in_interval(self.interval, t64)

    def __call__(self, x: torch.Tensor, t, y: Optional[torch.Tensor] = None, **cond) -> Prediction:
        return self._guide(x, t, y, cond)

    def _guide(self, x: torch.Tensor, t, y, cond: dict, perturbed=None) -> Prediction:
        """Classifier-free guidance; with ``perturbed`` = (a :class:`PerturbedAttentionGuidance`, its
        per-sample scale s) also PAG's perturbed conditional pass in the same batched call (diffusers'
        order is null, cond, perturbed; here cond, null, perturbed):
        eps = eps_c + w (eps_c - eps_u) + s (eps_c - eps_p)."""
        weight = self.w
        if self.weight_input:  # per-sample w (LCM Alg. 1)
            if "w" not in cond:
                raise DiffkitError("this guidance takes its weights from cond['w'] (weight_input=True); pass w")
            weight = torch.as_tensor(cond.pop("w"), dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        text_only = y is None and self.null_context is not None and "context" in cond
        if y is None and not text_only:
            raise DiffkitError("classifier-free guidance needs class labels: pass cond={'y': labels} "
                               "(or, with null_context, cond={'context': ...})")
        batch = x.shape[0]
        if not text_only:
            y = torch.as_tensor(y, device=x.device).long().reshape(-1).expand(batch)
        t64 = _times64(t, batch)
        guided = self._guided_mask(t64)
        if (not self.weight_input and self.w == 0) or not guided.any():
            if perturbed is not None:  # PAG alone: the conditional and perturbed passes
                return perturbed[0]._guide(self.inner, x, t, cond if text_only else {**cond, "y": y}, perturbed[1])
            return self.inner(x, t, **cond) if text_only else self.inner(x, t, y=y, **cond)
        copies = 2 if perturbed is None else 3  # [cond, null] (+ [perturbed cond])
        both = _repeated(cond, batch, copies)
        apart = perturbed is None and self._unequal_contexts(cond)  # e.g. FLUX.1 Redux's longer prompt: two calls
        if self.null_context is not None and "context" in cond and not apart:
            null = self.null_context.to(device=x.device, dtype=cond["context"].dtype)
            both["context"] = torch.cat([cond["context"], null.expand_as(cond["context"]), cond["context"]][:copies])
        for key in self.null_cond.keys() & cond.keys() if not apart else ():  # e.g. SD-XL's pooled embedding
            null = self.null_cond[key].to(device=x.device, dtype=cond[key].dtype).expand_as(cond[key])
            both[key] = torch.cat([cond[key], null, cond[key]][:copies])
        t_both = torch.cat([t64] * copies) if torch.as_tensor(t).ndim else t
        if not text_only:
            both["y"] = torch.cat([y, torch.full_like(y, self.null_class), y][:copies])
        if apart:
            pred = self._two_calls(x, t, cond, batch)
        elif perturbed is None:
            pred = self.inner(torch.cat([x, x]), t_both, **both)
        else:
            with perturbed[0].perturbing(batch, copies, x.device):
                pred = self.inner(torch.cat([x] * copies), t_both, **both)
        eps_c, eps_u = pred.eps.chunk(copies)[:2]
        x0_c, x0_u = pred.x0.chunk(copies)[:2]
        var_values = None if pred.var_values is None else pred.var_values.chunk(copies)[0]
        w = diffusion.expand(torch.where(guided.to(x.device), weight, 0.0), x)  # per-sample weight (interval)
        if self.apg:  # Sadat et al. 2025, Alg. 1, on x_0; eps from the same update: x_t = alpha x0 + sigma eps
            diff = x0_c - x0_u
            if self.apg_momentum != 0:
                diff = self._momentum(diff, t64, guided.to(x.device))
            update = adaptive_projected_update(diff, x0_c, self.apg_eta, self.apg_norm_threshold)
            x0 = x0_c + w * update
            eps = eps_c - w * diffusion.expand(self.schedule.alpha(t64) / self.schedule.sigma(t64), x) * update
        else:
            eps = eps_c + w * (eps_c - eps_u)  # = (1 + w) eps_c - w eps_u   (seed 002)
            x0 = x0_c + w * (x0_c - x0_u)
        if perturbed is not None:  # + s (eps_c - eps-hat_c)   (PAG, Ahn et al. 2024; diffusers' order)
            s = perturbed[0]._expanded(perturbed[1], x)
            eps = eps + s * (eps_c - pred.eps.chunk(3)[2])
            x0 = x0 + s * (x0_c - pred.x0.chunk(3)[2])
        if self.rescale > 0:
            eps, x0 = self._rescaled(x, t64, eps, x0, eps_c, x0_c)
        return Prediction(eps=eps, x0=x0, var_values=var_values)

    def _unequal_contexts(self, cond: dict) -> bool:
        """True where ``null_context`` has another shape than ``cond["context"]`` past the batch (e.g. FLUX.1
        Redux's 512 + N tokens against the negative prompt's 512, :mod:`diffkit.interop.flux_redux`)."""
        return self.null_context is not None and "context" in cond \
            and tuple(self.null_context.shape[1:]) != tuple(cond["context"].shape[1:])

    def _two_calls(self, x, t, cond: dict, batch: int) -> Prediction:
        """The conditional and the unconditional pass as two network calls (contexts of two lengths cannot share
        a batch; diffusers' true-CFG pipelines run the two passes apart too), stacked as the batched call's."""
        null = {**cond, "context": self.null_context.to(x.device, cond["context"].dtype).expand(
            batch, *self.null_context.shape[1:])}
        for key in self.null_cond.keys() & cond.keys():  # (a text mask: the null context's length)
            value = self.null_cond[key].to(device=x.device, dtype=cond[key].dtype)
            null[key] = value.expand(cond[key].shape[0], *value.shape[1:])
        preds = [self.inner(x, t, **cond), self.inner(x, t, **null)]
        var_values = None if preds[0].var_values is None else torch.cat([p.var_values for p in preds])
        return Prediction(eps=torch.cat([p.eps for p in preds]), x0=torch.cat([p.x0 for p in preds]),
                          var_values=var_values)

    def _rescaled(self, x, t64, eps, x0, eps_c, x0_c):
        """Lin et al. 2024, Sec. 3.4: v_rescaled = v_cfg std(v_pos)/std(v_cfg);
        v_final = phi v_rescaled + (1 - phi) v_cfg, per sample, in ``rescale_space``."""
        if x[0].numel() < 2:
            raise DiffkitError("guidance rescale matches each sample's standard deviation, which needs samples of "
                               "more than one value; drop the rescale")
        alpha, sigma = self.schedule.alpha(t64), self.schedule.sigma(t64)
        phi = self.rescale
        if self.rescale_space == "x0":
            x0 = phi * x0 * _std_per_sample(x0_c) / _std_per_sample(x0) + (1 - phi) * x0
            return diffusion.eps_from_x0(x, x0, alpha, sigma), x0
        if self.rescale_space in ("v", "flow"):  # the network's output: v, or a flow velocity eps - x0
            kind = "v_prediction" if self.rescale_space == "v" else "flow_prediction"
            v, v_c = (diffusion.target_for(kind, a, e, alpha, sigma) for a, e in ((x0, eps), (x0_c, eps_c)))
            v = phi * v * _std_per_sample(v_c) / _std_per_sample(v) + (1 - phi) * v
            return diffusion.eps_x0_from_output(v, x, alpha, sigma, kind)
        eps = phi * eps * _std_per_sample(eps_c) / _std_per_sample(eps) + (1 - phi) * eps
        return eps, diffusion.x0_from_eps(x, eps, alpha, sigma)


DIFFUSERS_TRAIN_TIMESTEPS = 1000  # the T diffusers' pag_adaptive_scale formula is written for


def adaptive_pag_scale(scale: float, adaptive_scale: float, t, num_timesteps: int) -> torch.Tensor:
    """diffusers' adaptive PAG scale (``PAGMixin._get_pag_scale``, ``pag_adaptive_scale``), per time (float64 CPU):

        s_t = max(s - a (1000 - t'), 0),   t' = t * 1000 / T,

    t in training timesteps of a schedule of T = ``num_timesteps`` (0 .. T-1; diffusers' integer timesteps when
    T = 1000, where t' = t exactly and s_t are diffusers' numbers bit for bit). diffusers writes 1000 for its
    number of training timesteps; here t is rescaled to it, so ``a`` means the same on any T: s falls by 1000 a
    over the whole range of t, and reaches 0 at t = T (1 - s / (1000 a)). Not in the PAG paper (Ahn et al. 2024).
    """
    t64 = as_cpu_times(t)
    return (scale - adaptive_scale * (DIFFUSERS_TRAIN_TIMESTEPS - t64 * (DIFFUSERS_TRAIN_TIMESTEPS / num_timesteps))
            ).clamp(min=0.0)


class PerturbedAttentionGuidance(Wrapper):
    """Perturbed-Attention Guidance (Ahn et al. 2024, "Self-Rectifying Diffusion Sampling with
    Perturbed-Attention Guidance", arXiv:2403.17377, the method section; equation numbers not checked here):

        eps~(x_t) = eps(x_t) + s (eps(x_t) - eps-hat(x_t)),

    eps-hat the same network with the self-attention map softmax(Q K^T / sqrt(d)) of the chosen layers
    replaced by the identity, so that those layers output out_proj(V) (the paper's A = I;
    :meth:`diffkit.models.unet.UNet.perturbed_self_attention`). It guides away from the structure-less
    prediction the perturbed network makes, without labels: it works for unconditional models.

    Over a :class:`ClassifierFreeGuidance` (``PerturbedAttentionGuidance(ClassifierFreeGuidance(...))``,
    with nothing between them) the three passes run in one network call of batch 3B, as diffusers'
    ``StableDiffusionPAGPipeline``:

        eps = eps_c + w (eps_c - eps_u) + s (eps_c - eps-hat_c)

    (seed convention; = eps_u + (1 + w)(eps_c - eps_u) + s (eps_c - eps-hat_c), diffusers' formula with
    its guidance_scale 1 + w), the perturbed pass conditional (eps-hat_c: labels / context of eps_c), and
    guidance rescale, if set, applied to the sum against eps_c (diffusers' ``rescale_noise_cfg(noise_pred,
    noise_pred_text)`` after its PAG step). Otherwise one call of batch 2B, [x, x] with the second half
    perturbed. Each call counts 1 in ``nfe`` (as classifier-free guidance's; the module docstring).
    x0 is mixed with the same weights as eps, so the pair stays consistent for every sampler. Another
    PerturbedAttentionGuidance under this one, or a ClassifierFreeGuidance under another wrapper, is
    refused at construction (the blocks hold one perturbation, for one batch); other guidance wraps this.

    Args:
        denoiser: a denoiser of a diffkit :class:`~diffkit.models.unet.UNet` (latent ones included), or a
            :class:`ClassifierFreeGuidance` of one.
        scale: s >= 0; 0 is the wrapped denoiser itself, bit for bit (diffusers' ``pag_scale``; the
            paper samples with s around 3 on Stable Diffusion).
        layers: the self-attention layers to perturb, by name: ``mid`` (the default, as diffusers'),
            ``down.L``, ``up.L`` for a level L (an index into ``channel_mult``) in the config's ``attn``
            (:func:`diffkit.models.unet.self_attention_layer_names`; diffusers counts its up blocks from
            the lowest resolution).
        interval: ``(t_lo, t_hi)`` in training timesteps: guide only there, elsewhere the wrapped
            denoiser (as :class:`ClassifierFreeGuidance`'s interval).
        adaptive_scale: a >= 0, diffusers' ``pag_adaptive_scale``: the scale at t is
            :func:`adaptive_pag_scale` s_t = max(s - a (1000 - 1000 t / T), 0), decaying towards t = 0 (inside
            ``interval``; 0 outside it). 0 (the default): s at every t. Where s_t = 0 for every sample of a
            call there is no perturbed pass (the wrapped denoiser's call, as outside the interval); diffusers
            still runs the 3B (2B) batch there and adds 0 times the difference.
        network: the U-Net to perturb; default the one under ``denoiser``. Or any object with
            ``check_self_attention_layers(layers)`` (the checked names) and the context manager
            ``perturbed_self_attention(layers, identity)``: a diffusers UNet2DConditionModel's is
            :class:`diffkit.interop.sd_pag.DiffusersSelfAttention` (diffusers' ``pag_applied_layers`` names).
        adaptive_times: the times the adaptive scale reads, from diffkit's (float64 CPU, (B,)); default those
            themselves. A flow model's pipeline reads its scheduler's timestep sigma T instead
            (:mod:`diffkit.interop.sd3_pag`).
    """

    def __init__(self, denoiser, scale: float, layers: Sequence[str] = ("mid",), interval=None, *, network=None,
                 adaptive_scale: float = 0.0, adaptive_times=None):
        from .models.unet import UNet, check_self_attention_layers
        check_float32("perturbed-attention guidance scale", check_range("perturbed-attention guidance scale", scale,
                                                                         0.0, None))
        check_range("perturbed-attention guidance adaptive scale", adaptive_scale, 0.0, None)
        _check_perturbable(denoiser)
        self.inner, self.scale, self.adaptive_scale = denoiser, float(scale), float(adaptive_scale)
        self.adaptive_times = adaptive_times
        self.interval = _checked_interval(interval, denoiser, "perturbed-attention guidance interval")
        self.num_timesteps = getattr(getattr(denoiser, "schedule", None), "num_timesteps", None)
        if self.adaptive_scale and self.num_timesteps is None:
            raise DiffkitError("an adaptive perturbed-attention guidance scale needs the denoiser's schedule (its "
                               "number of training timesteps T); this denoiser has none")
        self.net = _unet_of(denoiser) if network is None else network
        if callable(getattr(self.net, "check_self_attention_layers", None)):  # diffusers' UNet (.interop.sd_pag)
            self.layers = self.net.check_self_attention_layers(layers)
            return
        if not isinstance(self.net, UNet):
            raise DiffkitError(f"perturbed-attention guidance perturbs the self-attention of a diffkit U-Net; this "
                               f"network ({type(self.net).__name__}) has none it can perturb")
        cfg = self.net.config
        self.layers = check_self_attention_layers(layers, cfg.attn, len(cfg.channel_mult))

    @contextlib.contextmanager
    def perturbing(self, batch: int, copies: int, device):
        """The network's chosen self-attention layers perturbed for the last ``batch`` of ``copies * batch``
        samples (the perturbed pass) within the context."""
        identity = torch.arange(copies * batch, device=device) >= (copies - 1) * batch
        with self.net.perturbed_self_attention(self.layers, identity):
            yield

    def _scales(self, t, batch: int):
        """s per sample (B,) on the CPU (0 outside the interval; s_t with an adaptive scale)."""
        t64 = _times64(t, batch)
        scale = self.scale if not self.adaptive_scale else adaptive_pag_scale(
            self.scale, self.adaptive_scale, t64 if self.adaptive_times is None else self.adaptive_times(t64),
            self.num_timesteps)
        return torch.where(_in_interval(self.interval, t64), scale, 0.0)

    @staticmethod
    def _expanded(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return diffusion.expand(s.to(x.device), x)

    def __call__(self, x: torch.Tensor, t, **cond) -> Prediction:
        if self.scale == 0:
            return self.inner(x, t, **cond)
        s = self._scales(t, x.shape[0])
        if not bool((s > 0).any()):
            return self.inner(x, t, **cond)
        if isinstance(self.inner, ClassifierFreeGuidance):
            return self.inner._guide(x, t, cond.pop("y", None), cond, perturbed=(self, s))
        return self._guide(self.inner, x, t, cond, s)

    def _guide(self, inner, x: torch.Tensor, t, cond: dict, s: torch.Tensor) -> Prediction:
        """eps + s (eps - eps-hat) from one call of ``inner`` on [x, x], the second half perturbed."""
        batch = x.shape[0]
        t_both = torch.cat([_times64(t, batch)] * 2) if torch.as_tensor(t).ndim else t
        with self.perturbing(batch, 2, x.device):
            pred = inner(torch.cat([x, x]), t_both, **_repeated(cond, batch, 2))
        (eps, eps_p), (x0, x0_p) = pred.eps.chunk(2), pred.x0.chunk(2)
        s = self._expanded(s, x)
        var_values = None if pred.var_values is None else pred.var_values.chunk(2)[0]
        return Prediction(eps=eps + s * (eps - eps_p), x0=x0 + s * (x0 - x0_p), var_values=var_values)


def _check_perturbable(denoiser) -> None:
    """A one-line error for what PerturbedAttentionGuidance cannot wrap: another one (the inner call sets the
    blocks' perturbation for its own batch over the outer's: overlapping layers silently drop the outer guidance,
    others fail on the batch) or a ClassifierFreeGuidance under another wrapper (it doubles the batch under the
    mask)."""
    inner, depth = denoiser, 0
    while inner is not None and depth < 16:
        if isinstance(inner, PerturbedAttentionGuidance):
            raise DiffkitError("perturbed-attention guidance over another PerturbedAttentionGuidance is not "
                               "supported; give one PerturbedAttentionGuidance all the layers")
        if depth and isinstance(inner, ClassifierFreeGuidance):
            raise DiffkitError(f"perturbed-attention guidance goes directly over ClassifierFreeGuidance (one batched "
                               f"call); here a {type(denoiser).__name__} lies between them: wrap it around the "
                               f"PerturbedAttentionGuidance instead")
        inner, depth = getattr(inner, "inner", None), depth + 1


def _unet_of(denoiser):
    """The U-Net under a (possibly wrapped, compiled) denoiser: its ``net``, unwrapped from
    ``torch.compile`` (``_orig_mod``) and from a text-conditional model's text encoder (``unet``)."""
    from .denoiser import _innermost
    net = getattr(_innermost(denoiser), "net", None)
    net = getattr(net, "_orig_mod", net)
    return getattr(net, "unet", net)


APG_NAMES = ("APG eta", "APG norm threshold", "APG momentum")


def check_apg(eta: float = 1.0, norm_threshold: float = math.inf, momentum: float = 0.0,
              names: Sequence[str] = APG_NAMES) -> tuple[float, float, float]:
    """APG's settings as floats, or a one-line error naming the bad one (``names``: the CLI's flags):
    eta in [0, 1] (the weight of the parallel part: 1 keeps it, as CFG does, 0 drops it), the norm
    threshold r in (0, inf] (inf: no rescaling), the momentum beta in (-1, 1) (the paper's is negative,
    e.g. -0.5; |beta| < 1 keeps the running average bounded)."""
    return (float(check_range(names[0], eta, 0.0, 1.0)),
            float(check_range(names[1], norm_threshold, 0.0, None, low_inclusive=False, finite=False)),
            float(check_range(names[2], momentum, -1.0, 1.0, low_inclusive=False, high_inclusive=False)))


def apg_options(eta: float = 1.0, norm_threshold: float = math.inf, momentum: float = 0.0,
                names: Sequence[str] = APG_NAMES) -> dict:
    """The APG keyword arguments of :class:`ClassifierFreeGuidance` for a guidance built elsewhere (a diffusers
    folder's ``text_to_image``), checked by :func:`check_apg` before any work: {} for the defaults (plain
    classifier-free guidance, the APG code does not run), else ``apg_eta`` / ``apg_norm_threshold`` /
    ``apg_momentum``."""
    values = check_apg(eta, norm_threshold, momentum, names)
    if values == (1.0, math.inf, 0.0):
        return {}
    return dict(zip(("apg_eta", "apg_norm_threshold", "apg_momentum"), values))


def adaptive_projected_update(diff: torch.Tensor, x0_cond: torch.Tensor, eta: float = 1.0,
                              norm_threshold: float = math.inf) -> torch.Tensor:
    """The update of adaptive projected guidance (Sadat, Hilliges & Weber 2025, Sec. 4, Alg. 1), per
    sample (norms and inner products over every dimension but the first):

        diff     <- diff * min(1, r / ||diff||)                                  (rescaling)
        diff_par  = (<diff, D_c> / <D_c, D_c>) D_c,   diff_orth = diff - diff_par   (projection onto D_c)
        update    = diff_orth + eta * diff_par,

    with ``diff`` = D_c - D_u of the denoised (x_0) predictions (after momentum) and D_c =
    ``x0_cond``; the guided prediction is D_c + w * update in the seed convention (the paper's
    D_c + (w_paper - 1) * update, w_paper = 1 + w). eta = 1 and r = inf give update = diff, plain
    classifier-free guidance. The inner products run in float64 (float32 on MPS), as in the
    paper's listing; a D_c of zero has no parallel part."""
    if math.isfinite(norm_threshold):
        norm = diff.flatten(1).norm(dim=1)
        diff = diff * diffusion.expand(torch.clamp(norm_threshold / norm, max=1.0), diff)  # norm 0: factor 1
    if eta == 1:
        return diff
    wide = torch.float32 if diff.device.type == "mps" else torch.float64
    d, c = diff.flatten(1).to(wide), x0_cond.flatten(1).to(wide)
    coef = (d * c).sum(dim=1) / (c * c).sum(dim=1).clamp_min(torch.finfo(wide).tiny)
    parallel = (coef[:, None] * c).reshape(diff.shape)
    return (diff.to(wide) - (1 - eta) * parallel).to(diff.dtype)  # diff_orth + eta diff_par


class GuidanceScaleInput(Wrapper):
    """A w-conditioned model (LCM Sec. 4.2; a U-Net with ``guidance_embedding_dim``) asked for
    guidance weight ``w`` (seed convention; ``convention='diffusers'`` reads s = 1 + w): each call
    passes ``w`` to the network in ``cond``, so a guided step is one call of batch B, not
    classifier-free guidance's two. ``trained_range``: the model's [w_min, w_max] (default: the
    range a loaded w-conditioned model was distilled on); a w outside it is allowed (the network
    extrapolates) with a warning."""

    guidance_range = None  # w is given: wrappers above this one see a model without a w input

    def __init__(self, denoiser, scale: float, convention: str = "seed", trained_range=None):
        self.inner, self.w = denoiser, guidance_weight(scale, convention)
        if trained_range is None:
            trained_range = getattr(denoiser, "guidance_range", None)
        if trained_range is not None and not float(trained_range[0]) <= self.w <= float(trained_range[1]):
            import warnings
            low, high = trained_range
            warnings.warn(f"guidance weight w={self.w:g} (seed convention) lies outside the range [{low:g}, {high:g}] "
                          f"this model was distilled on; it extrapolates there", DiffkitWarning, stacklevel=2)

    def __call__(self, x: torch.Tensor, t, **cond) -> Prediction:
        return self.inner(x, t, **{**cond, "w": self.w})


def _num_classes_of(denoiser) -> Optional[int]:
    """num_classes of the network under a (possibly wrapped) denoiser, if it says."""
    seen = 0
    while denoiser is not None and seen < 16:
        for holder in (getattr(denoiser, "net", None), getattr(denoiser, "model", None)):
            config = getattr(holder, "config", None)
            if getattr(config, "num_classes", None) is not None:
                return int(config.num_classes)
        denoiser, seen = getattr(denoiser, "inner", None), seen + 1
    return None


def null_trained(meta: Optional[dict]) -> bool:
    """Whether a conditional checkpoint's metadata ``meta`` says it trained its null condition (the null
    class K, or a text model's empty prompt): its config's ``p_uncond`` > 0 (0.1, the default, when the
    config does not say, as in checkpoints older than the key; True without metadata)."""
    return bool(((meta or {}).get("config") or {}).get("p_uncond", 0.1))


def null_class_trained(denoiser) -> bool:
    """:func:`null_trained` of the checkpoint metadata under a (possibly wrapped) denoiser."""
    from .denoiser import _innermost
    return null_trained(getattr(_innermost(denoiser), "meta", None))


def check_null_trained(meta: Optional[dict], null: str = "null class") -> None:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6) extrapolates away from eps(x, null): a one-line
    error when ``meta`` says the checkpoint was trained with ``p_uncond`` = 0, so that ``null`` (the null
    class; "empty prompt" for a text model) never was; the CLI's one check (``diffkit sample``,
    ``diffkit edit --series``)."""
    if not null_trained(meta):
        raise DiffkitError(f"this checkpoint was trained with p_uncond=0, so its {null} is untrained; classifier-free "
                           f"guidance needs a model trained with label dropout (p_uncond > 0)")


def _guide_input_dtype(guide: Callable, x: torch.Tensor) -> torch.dtype:
    """The dtype a classifier or a CLIP takes: an ``nn.Module``'s floating weights' (its parameters,
    else its buffers), else a ``dtype`` attribute of its own (:class:`diffkit.clip.LocalCLIP`), else
    ``x``'s with float16 / bfloat16 promoted to float32 (a float32 module refuses half or float64
    input, and a half-precision one float32 input)."""
    if isinstance(guide, torch.nn.Module):
        for tensors in (guide.parameters(), guide.buffers()):
            weight = next((p for p in tensors if p.is_floating_point()), None)
            if weight is not None:
                return weight.dtype
    dtype = getattr(guide, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def classifier_log_prob_grad(classifier: Callable, x: torch.Tensor, t, y: torch.Tensor) -> torch.Tensor:
    """grad_x log p_phi(y | x_t) for each sample, through ``log_softmax(classifier(x, t))``.

    ``classifier(x, t)`` returns logits (B, K); ``t`` is passed as a float (B,) tensor in
    training-timestep units. Gradients are enabled locally, so this works inside ``no_grad``.
    The classifier runs outside any autocast, on x in the dtype of its weights (float32 for a
    callable without weights given half-precision x); the gradient is returned in x's dtype."""
    batch = x.shape[0]
    t_net = _times64(t, batch).to(device=x.device, dtype=torch.float32)
    y = torch.as_tensor(y, device=x.device).long().reshape(-1)
    if y.numel() not in (1, batch):
        raise DiffkitError(f"{y.numel()} class labels for a batch of {batch}; give one label or one per sample")
    y = y.expand(batch)
    # outside autocast (diffkit.sample holds the denoiser's open around the whole loop, and the
    # classifier is not the denoiser), in the classifier's own precision: its weights' dtype (a
    # float32 classifier refuses half or float64 input), or float32 for half-precision samples
    with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        x_in = x.detach().to(_guide_input_dtype(classifier, x)).requires_grad_(True)
        logits = classifier(x_in, t_net)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != batch or logits.shape[1] < 2:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise DiffkitError(f"the classifier gave {shape}; classifier guidance needs logits (batch, classes) "
                               f"= ({batch}, K) with K >= 2")
        if not logits.requires_grad:
            raise DiffkitError("the classifier's logits do not depend on x (no gradient): guidance needs a "
                               "differentiable classifier(x, t)")
        labels_ok = bool(((y >= 0) & (y < logits.shape[1])).all())
        if not labels_ok:
            raise DiffkitError(f"class labels must lie in 0..{logits.shape[1] - 1} for this classifier")
        log_p = torch.log_softmax(logits, dim=-1)
        chosen = log_p.gather(1, y.to(log_p.device)[:, None]).sum()
        (grad,) = torch.autograd.grad(chosen, x_in)
    return grad.to(x.dtype)


def guided_eps_step(schedule, x: torch.Tensor, t64: torch.Tensor, pred: Prediction, scale: float,
                    grad: torch.Tensor) -> Prediction:
    """Dhariwal & Nichol 2021, Algorithm 2, line 3: eps-hat = eps - sqrt(1 - abar_t) s grad, with
    x0-hat recomputed from eps-hat (a consistent pair); ``grad`` is cast to x's dtype. The step of
    classifier guidance (grad log p(y | x_t)) and of CLIP guidance (grad of the CLIP similarity)."""
    alpha, sigma = schedule.alpha(t64), schedule.sigma(t64)
    eps = pred.eps - diffusion.expand(sigma, x) * scale * grad.to(x.dtype)
    return Prediction(eps=eps, x0=diffusion.x0_from_eps(x, eps, alpha, sigma), var_values=pred.var_values)


class ClassifierGuidance(Wrapper):
    """Classifier guidance through eps (Dhariwal & Nichol 2021, Algorithm 2; seed 000):

        eps-hat = eps_theta(x_t) - sqrt(1 - abar_t) * s * grad_x log p_phi(y | x_t),

    and x0-hat = (x_t - sqrt(1 - abar_t) eps-hat) / sqrt(abar_t). With s = 1 and the exact
    p(y | x_t), eps-hat is the exact noise predictor of p(x_t | y), since
    grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t) and eps = -sigma_t * score.

    Args:
        denoiser: the diffusion model (usually unconditional).
        classifier: any callable ``(x, t) -> logits (B, num_classes)`` trained on noisy x_t.
        scale: the gradient scale s (>= 0).
        conditional_model: also pass ``y`` to the wrapped denoiser (a class-conditional model
            guided by a classifier, as in ADM); by default ``y`` goes to the classifier only.

    ``y`` (class labels, (B,)) is required in every call. ``classifier_calls`` counts the
    classifier forward+backward passes.
    """

    def __init__(self, denoiser, classifier: Callable, scale: float = 1.0, *, conditional_model: bool = False):
        check_range("classifier scale", scale, 0.0, None)
        self.inner, self.classifier, self.scale = denoiser, classifier, float(scale)
        self.conditional_model = conditional_model
        self.classifier_calls = 0

    def __call__(self, x: torch.Tensor, t, y: Optional[torch.Tensor] = None, **cond) -> Prediction:
        if y is None:
            raise DiffkitError("classifier guidance needs class labels: pass cond={'y': labels}")
        pred = self.inner(x, t, **({"y": y} if self.conditional_model else {}), **cond)
        if self.scale == 0:
            return pred
        grad = classifier_log_prob_grad(self.classifier, x, t, y)
        self.classifier_calls += 1
        return guided_eps_step(self.schedule, x, _times64(t, x.shape[0]), pred, self.scale, grad)


def classifier_guided_ddpm(denoiser, classifier: Callable, x: torch.Tensor, grid: torch.Tensor, *,
                           scale: float = 1.0, y: torch.Tensor, variance_type: Optional[str] = None,
                           cond: Optional[dict] = None, generator=None, callback=None,
                           progress: bool = False) -> torch.Tensor:
    """Classifier-guided ancestral sampling (Dhariwal & Nichol 2021, Algorithm 1; seed 000):

        x_s ~ N(mu + s Sigma grad_x log p_phi(y | x_t), Sigma)

    for each grid step t -> s, with (mu, Sigma) the DDPM reverse step of the (unguided)
    ``denoiser`` (posterior mean at the predicted x_0; Sigma beta-tilde, beta or learned, as in
    :func:`diffkit.samplers.ddpm`). ``cond`` goes to the denoiser; ``y`` to the classifier.
    On the step to clean data (s = -1) no noise is added but the mean is still shifted.
    Half-precision ``x`` is promoted to float32, as :func:`diffkit.sample` does
    (:func:`~diffkit.sampling.check_noise`).
    """
    check_range("classifier scale", scale, 0.0, None)
    x = check_noise(x)
    cond = cond or {}
    schedule = denoiser.schedule
    if variance_type is None:
        variance_type = "learned_range" if getattr(denoiser, "learned_variance", False) else "fixed_small"
    check_choice("variance_type", variance_type, diffusion.VARIANCE_TYPES)
    reset_states(denoiser)  # a new run, as in diffkit.sample
    with torch.no_grad():
        for i in steps(grid, progress, "ddpm-classifier"):
            t, s = grid[i], grid[i + 1]
            pred = denoiser(x, t, **cond)
            var_values = pred.var_values if variance_type == "learned_range" else None
            mean, log_var = diffusion.p_mean_variance(schedule, x, pred.x0, t, s, variance_type, var_values)
            if scale > 0:
                mean = mean + scale * torch.exp(log_var) * classifier_log_prob_grad(classifier, x, t, y)
            x = mean + torch.exp(0.5 * log_var) * randn_like(x, generator) if s >= 0 else mean
            report(callback, i, t, s, x, pred.x0)
    return x


class ReconstructionGuidance(Wrapper):
    """Reconstruction guidance (Ho et al. 2022, "Video Diffusion Models", Sec. 3.1): the x_0 of the
    part to generate (``mask`` 1) is corrected by the gradient of how badly the model's x_0
    reconstructs the known part (``mask`` 0),

        x0-tilde = x0-hat(x_t) - (w alpha_t / 2) m * grad_{x_t} || (1 - m) (x_known - x0-hat(x_t)) ||^2,

    and eps is recomputed from it (:func:`~diffkit.denoiser.with_x0`), so every sampler runs it.
    It follows from E[x^b | x_t, x^a] = E[x^b | x_t] + (sigma_t^2 / alpha_t) grad_{x_t^b} log q(x^a | x_t)
    with q(x^a | x_t) approximated by N(x0-hat^a(x_t), (sigma_t^2 / alpha_t^2) I / w): w = 1 is
    that Gaussian, larger w a sharper one (the paper uses w > 1). DPS (Chung et al. 2023, Alg. 1)
    takes the same gradient, as a step on x; Diffusion-TS (Yuan & Qiao 2024) guides its forecasting
    and imputation with a gradient of the same reconstruction error. The known part's x_0 is left as the model's:
    wrapped by :class:`~diffkit.editing.InpaintingDenoiser` (``diffkit.inpaint(..., reconstruction_weight=w)``)
    it is replaced by x_known, so w = 0 is plain replacement.

    Each call runs the wrapped denoiser once with gradients (one network evaluation in ``nfe``) and
    back-propagates through it once (counted in ``gradient_calls``): about 3 times the work of a
    plain step. The denoiser must be differentiable in x (a diffkit network, or the exact
    :mod:`diffkit.analytic` model).

    Args:
        denoiser: the (unconditional) denoiser.
        known: the known values, shaped like the samples (B, ...); where ``mask`` is 1 unused.
        mask: 1 = generate, 0 = known (diffkit.inpaint's convention), values in [0, 1], x's shape.
        weight: w >= 0.
    """

    def __init__(self, denoiser, known: torch.Tensor, mask: torch.Tensor, weight: float = 1.0):
        check_range("reconstruction weight", weight, 0.0, None)
        if known.shape != mask.shape:
            raise DiffkitError(f"known values of shape {tuple(known.shape)} and mask of shape {tuple(mask.shape)} "
                               f"differ; give both shaped like the samples")
        self.inner, self.known, self.mask, self.weight = denoiser, known, mask, float(weight)
        self.gradient_calls = 0

    def __call__(self, x: torch.Tensor, t, **cond) -> Prediction:
        if self.weight == 0:
            return self.inner(x, t, **cond)

        def error(x0: torch.Tensor) -> torch.Tensor:  # samples independent: the sum gives per-sample grads
            kept = 1 - _usable(self.mask).to(device=x.device, dtype=x0.dtype)
            residual = kept * (_usable(self.known).to(device=x.device, dtype=x0.dtype) - x0)
            return residual.pow(2).sum()
        pred, grad = gradient_through_denoiser(self.inner, x, t, cond, error, "reconstruction guidance")
        self.gradient_calls += 1
        alpha = diffusion.expand(self.schedule.alpha(_times64(t, x.shape[0])), x).to(x.dtype)
        x0 = pred.x0 - 0.5 * self.weight * alpha * self.mask.to(x.device, x.dtype) * grad.to(x.dtype)
        return with_x0(self.schedule, x, t, x0, pred)


CLIP_INPUTS = ("x0", "x_t")


def _cosine_similarity(clip: Callable, images: torch.Tensor, t, text: torch.Tensor) -> torch.Tensor:
    """cos(clip(images, t), text) per sample (B,), from the (not necessarily unit) embeddings; the
    caller runs it, and its backward, outside autocast."""
    batch = images.shape[0]
    emb = clip(images, t)
    if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] != batch or emb.shape[1] != text.shape[-1]:
        shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise DiffkitError(f"the CLIP image encoder gave {shape}; CLIP guidance needs embeddings (batch, dim) = "
                           f"({batch}, {text.shape[-1]}), the text embedding's dim")
    if not emb.requires_grad:
        raise DiffkitError("the CLIP image embedding does not depend on the images (no gradient): CLIP guidance "
                           "needs a differentiable image encoder")
    text = _usable(text).to(device=emb.device, dtype=emb.dtype)  # (a text embedding made under inference mode)
    return (torch.nn.functional.normalize(emb, dim=-1) * text).sum(dim=-1)


def _similarity_gradient(clip: Callable, images: torch.Tensor, t, text: torch.Tensor, what: str) -> torch.Tensor:
    """grad_images cos(clip(images, t), text) (summed over samples: per-sample gradients), in
    ``images``' dtype. The CLIP runs forward *and* backward outside autocast (``diffkit.sample``
    holds a mixed-precision denoiser's open around the whole loop; the CLIP is not the denoiser, as
    the classifier of :func:`classifier_log_prob_grad`), on images in its own dtype
    (:func:`_guide_input_dtype`). Works inside ``no_grad`` and ``torch.inference_mode()``."""
    with _gradients(what, "the CLIP"), torch.autocast(images.device.type, enabled=False):
        x_in = _usable(images.detach()).to(_guide_input_dtype(clip, images)).requires_grad_(True)
        (grad,) = torch.autograd.grad(_cosine_similarity(clip, x_in, t, text).sum(), x_in)
    return grad.to(images.dtype)


class CLIPGuidance(Wrapper):
    """CLIP guidance: classifier guidance with the classifier's log p(y | x) replaced by the
    similarity of a CLIP image embedding f and the prompt's text embedding g(c).

    GLIDE (Nichol et al. 2022, Sec. 2, "CLIP Guidance") perturbs the reverse step's mean,

        mu-hat(x_t | c) = mu(x_t | c) + s Sigma(x_t | c) grad_{x_t} (f(x_t, t) . g(c)),

    with a *noise-aware* CLIP f(x_t, t) trained on noised images (``on="x_t"``). As Dhariwal &
    Nichol's Algorithm 2 does for the mean shift of their Algorithm 1, diffkit applies it through eps,

        eps-hat = eps(x_t) - sqrt(1 - abar_t) s grad_{x_t} sim,                          (Alg. 2, line 3)

    so every sampler runs it. ``on="x0"`` (the default) is the variant practitioners use with an
    ordinary (unnoised) CLIP: sim = cos(f(x0-hat(x_t)), g(c)) on the model's predicted x_0, the
    gradient taken through the network (Crowson's CLIP-guided diffusion; diffusers' community
    CLIPGuidedStableDiffusion, whose ``cond_fn`` returns noise_pred - sqrt(1 - abar_t) grad). It is
    the default because it works with any CLIP checkpoint: an ordinary CLIP never saw noisy
    images, so its gradient on x_t at high noise is that of an off-distribution input, and no
    noise-aware CLIP is published in transformers' format. The price is a backward pass through
    the diffusion network each step, as in reconstruction guidance.

    In both modes sim is the cosine similarity, the unit embeddings' dot product (GLIDE's code
    multiplies it by CLIP's exp(logit_scale), about 100 for a trained CLIP: its scale s_GLIDE is
    s / exp(logit_scale) here).

    Args:
        denoiser: the diffusion model; ``cond`` is passed on to it.
        clip: a callable ``clip(images, t) -> embeddings (B, D)``, images in [-1, 1] shaped like the
            samples; ``t`` is None for ``on="x0"`` (clean images), else a float (B,) tensor of
            training timesteps (:class:`diffkit.clip.LocalCLIP` ignores it).
        text_embedding: g(c), (D,) for every sample or (B, D); normalised here.
        scale: s >= 0; 0 is the wrapped denoiser itself.
        on: ``"x0"`` (default) or ``"x_t"`` (GLIDE's noise-aware CLIP).

    ``clip_calls`` counts CLIP forward+backward passes; ``nfe`` counts diffusion-model calls (one
    per call in both modes; with ``on="x0"`` it runs with gradients).

    The CLIP runs forward and backward outside autocast, on images in its own dtype
    (:func:`_guide_input_dtype`); with ``on="x0"`` its gradient g0 at the detached x0-hat is then
    pushed through the network (grad_{x_t} = J^T g0), which runs as it runs. The step itself is
    :func:`guided_eps_step`, classifier guidance's.
    """

    def __init__(self, denoiser, clip: Callable, text_embedding: torch.Tensor, scale: float = 1.0, *,
                 on: str = "x0"):
        check_range("CLIP guidance scale", scale, 0.0, None)
        self.on = check_choice("CLIP guidance input", on, CLIP_INPUTS)
        text = torch.as_tensor(text_embedding).detach()
        if text.ndim not in (1, 2) or text.shape[-1] < 1:
            raise DiffkitError(f"text embedding of shape {tuple(text.shape)}; give (dim,) or (batch, dim)")
        self.inner, self.clip, self.scale = denoiser, clip, float(scale)
        self.text = torch.nn.functional.normalize(text if text.is_floating_point() else text.float(), dim=-1)
        self.clip_calls = 0

    def __call__(self, x: torch.Tensor, t, **cond) -> Prediction:
        if self.scale == 0:
            return self.inner(x, t, **cond)
        batch = x.shape[0]
        if self.text.ndim == 2 and self.text.shape[0] not in (1, batch):
            raise DiffkitError(f"{self.text.shape[0]} text embeddings for a batch of {batch}; give one or one per "
                               f"sample")
        text = (self.text if self.text.ndim == 2 else self.text[None]).expand(batch, -1)
        t64 = _times64(t, batch)
        if self.on == "x0":
            # the CLIP's gradient at x0-hat on its own, outside autocast, then pushed back through the
            # network (which runs as it runs, as in reconstruction guidance)
            pred, grad = gradient_through_denoiser(
                self.inner, x, t, cond, what="CLIP guidance on x0",
                x0_gradient=lambda x0: _similarity_gradient(self.clip, x0, None, text, "CLIP guidance on x0"))
        else:
            pred = self.inner(x, t, **cond)
            grad = _similarity_gradient(self.clip, x, t64.to(device=x.device, dtype=torch.float32), text,
                                        "CLIP guidance on x_t")
        self.clip_calls += 1
        return guided_eps_step(self.schedule, x, t64, pred, self.scale, grad)  # Alg. 2, line 3


def _usable(value):
    """``value``, or a copy of it if it is an inference tensor (those cannot be saved for backward)."""
    return value.clone() if isinstance(value, torch.Tensor) and torch.is_inference(value) else value


@contextlib.contextmanager
def _gradients(what: str, whose: str):
    """Gradients on and inference mode off for one guidance gradient (under torch.inference_mode()
    no graph is recorded even with enable_grad); the error of weights that are inference tensors
    (they cannot be saved for backward) as one line naming ``whose`` weights."""
    with torch.inference_mode(False), torch.enable_grad():
        try:
            yield
        except RuntimeError as err:
            if "Inference tensors cannot be saved for backward" not in str(err):
                raise
            raise DiffkitError(f"{what} needs gradients through {whose}, but its weights were made under "
                               f"torch.inference_mode(); load it outside it") from None


def gradient_through_denoiser(denoiser, x: torch.Tensor, t, cond: dict, objective: Optional[Callable] = None,
                              what: str = "guidance", *,
                              x0_gradient: Optional[Callable] = None) -> tuple[Prediction, torch.Tensor]:
    """(the denoiser's prediction, detached; grad_{x_t} J(x0-hat(x_t))) with the gradient taken
    through the network, as reconstruction guidance (Ho et al. 2022, Sec. 3.1) and CLIP guidance on
    the predicted x_0 need it. Give ``objective(x0)``, J itself (a scalar: a sum over samples, so
    the gradient is per sample), differentiated together with the network; or ``x0_gradient(x0)``,
    grad_{x0} J at the (detached) x0-hat, computed as the caller wishes (CLIP guidance: outside
    autocast), then pushed through the network as a vector-Jacobian product. One network
    evaluation and one backward pass; works inside ``no_grad`` and ``torch.inference_mode()``
    (the step leaves inference mode, on copies). ``what`` names the guidance in the one-line errors."""
    if (objective is None) == (x0_gradient is None):
        raise TypeError("gradient_through_denoiser takes objective or x0_gradient, one of them")
    with _gradients(what, "the network"):
        x_in = (x.clone() if torch.is_inference(x) else x.detach()).requires_grad_(True)
        cond_in = {k: _usable(v) for k, v in cond.items()}
        pred = denoiser(x_in, _usable(t), **cond_in)
        if not pred.x0.requires_grad:
            raise DiffkitError(f"the denoiser's x0 does not depend on x (no gradient): {what} needs a "
                               f"differentiable network")
        if objective is not None:
            (grad,) = torch.autograd.grad(objective(pred.x0), x_in)
        else:
            g0 = x0_gradient(pred.x0.detach()).to(pred.x0.dtype)
            (grad,) = torch.autograd.grad(pred.x0, x_in, grad_outputs=g0)
    var_values = None if pred.var_values is None else pred.var_values.detach()
    return Prediction(eps=pred.eps.detach(), x0=pred.x0.detach(), var_values=var_values), grad
