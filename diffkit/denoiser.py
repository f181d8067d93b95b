"""Denoiser: "given x_t at time t, what are eps and x_0?" (README "Design"; the team's design sketch, abstraction 3).

A :class:`Denoiser` wraps any network ``net(x, t, **cond)`` with its prediction type and the
schedule, counts network evaluations (NFE), and answers with a :class:`Prediction`. Samplers see
only denoisers, never networks. Wrappers (guidance, thresholding) are denoisers around a denoiser.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import diffusion
from .config import EDM_SIGMA_DATA, MIXED_PRECISION
from .errors import DiffkitError, check_choice, check_range
from .schedule import NoiseSchedule, as_cpu_times

THRESHOLDING = (None, "clip", "dynamic")
COMPILE_MODES = ("no", "default", "reduce-overhead", "max-autotune")  # torch.compile modes
FLOW_STATE_TYPES = ("sample", "epsilon", "flow_prediction")  # predictions of a network that takes the flow state
_AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(mixed_precision: str, device_type: str):
    """The ``torch.autocast`` context of ``mixed_precision`` (no | bf16 | fp16) on ``device_type``
    (a no-op for ``no``; fp16 needs CUDA; bf16 on CUDA a device that supports it)."""
    if mixed_precision == "no":
        return contextlib.nullcontext()
    if mixed_precision == "fp16" and device_type != "cuda":
        raise DiffkitError("mixed_precision='fp16' needs a CUDA device; use 'bf16' on cpu/mps")
    if mixed_precision == "bf16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DiffkitError("mixed_precision='bf16' needs a CUDA device with bfloat16 support; this one "
                           "has none (torch.cuda.is_bf16_supported() is False): use 'fp16' or 'no'")
    return torch.autocast(device_type, dtype=_AUTOCAST_DTYPE[mixed_precision])


@dataclass
class Prediction:
    """The model's answer at (x_t, t): noise ``eps``, clean data ``x0`` and, for networks with a
    learned variance (Improved DDPM), the interpolation output ``var_values`` in [-1, 1]."""

    eps: torch.Tensor
    x0: torch.Tensor
    var_values: Optional[torch.Tensor] = None


class Denoiser:
    """Wraps ``net(x, t, **cond)`` (``t``: float tensor (B,), training-timestep units).

    Args:
        net: the network (or any callable with that signature).
        schedule: the noise schedule the network was trained with.
        prediction_type: ``epsilon``, ``sample`` (x_0) or ``v_prediction`` (diffusers names), or
            ``flow_prediction``: a rectified-flow network ``net(x_s, s * T)`` that predicts the
            velocity u = eps - x_0 of the flow state x_s = (1 - s) x_0 + s eps (docs/flow_matching.md).
            The denoiser answers for the VP state of equal SNR: it gives the network
            x_s = x_t / (alpha_t + sigma_t) at flow time s = sigma_t / (alpha_t + sigma_t) in units
            of T (s T: diffusers' and SD3's timestep for T = 1000) and converts u back to eps and
            x_0 (:func:`diffkit.diffusion.eps_x0_from_flow`), so every sampler runs it unchanged.
            ``edm``: EDM's preconditioned network F (Karras et al. 2022, Table 1; docs/edm.md), which gets
            c_in x at time c_noise = ln(sigma)/4 of the VE state x = x_t / alpha_t at sigma = sigma_t / alpha_t
            (equal SNR) and answers x_0 = D = c_skip x + c_out F (:func:`diffkit.diffusion.eps_x0_from_edm`).
        learned_variance: the network outputs 2C channels: the prediction, then v in [-1, 1].
        mixed_precision: ``no`` (default), ``bf16`` or ``fp16`` (CUDA only): the network runs
            under ``torch.autocast`` in that dtype and its output is cast back to ``x``'s dtype,
            so the samplers' arithmetic stays in ``x``'s precision (on a CPU with AMX, bf16 makes
            the MNIST U-Net's forward about 2x faster; docs/performance.md). The network's layout
            is left as it is; :func:`diffkit.loading.load_denoiser` also gives it the faster one
            for the precision (``models.layers.preferred_memory_format``: channels_last on the
            CPU, for bf16 where diffkit's CPU kernels are built).
        data_scale: the scale of the data the network was trained on (square root of the largest
            eigenvalue of its covariance, :func:`diffkit.data.data_scale`), or ``None``; it places
            the ``logsnr_graded`` grid (:func:`diffkit.timesteps.grade_sigmas_for`).
        sigma_data: an ``edm`` network's sigma_data (EDM Table 1; 0.5 by default, as EDM); unused otherwise.
        flow_state: the network takes the flow state x_s at flow time s T, as a ``flow_prediction`` one, whatever it
            predicts: with ``sample``, a flow-matching network that predicts x_0 (x-prediction, Li & He 2025, "Back
            to Basics: Let Denoising Generative Models Denoise"; PRXPixel's, :mod:`diffkit.interop.prx_pixel`), whose
            x_0 is the VP state's too (equal SNR), so the ``sample`` conversion gives eps (``epsilon`` likewise).
            Default: only ``flow_prediction`` networks.
    """

    def __init__(self, net: Callable, schedule: NoiseSchedule, prediction_type: str = "epsilon",
                 learned_variance: bool = False, mixed_precision: str = "no", data_scale: Optional[float] = None,
                 sigma_data: float = EDM_SIGMA_DATA, flow_state: bool = False):
        check_choice("prediction_type", prediction_type, diffusion.PREDICTION_TYPES)
        if flow_state and prediction_type not in FLOW_STATE_TYPES:
            raise DiffkitError(f"flow_state=True is not allowed with prediction_type={prediction_type!r}; allowed: "
                               f"{', '.join(FLOW_STATE_TYPES)} (x_0 and eps are the flow state's too)")
        check_choice("mixed_precision", mixed_precision, MIXED_PRECISION)
        if not callable(net):
            raise DiffkitError(f"net of type {type(net).__name__} is not allowed; give a network net(x, t, **cond)")
        if not isinstance(schedule, NoiseSchedule):
            raise DiffkitError(f"schedule of type {type(schedule).__name__} is not allowed; give a "
                               f"diffkit.NoiseSchedule (e.g. NoiseSchedule.from_name('linear', 1000))")
        self.net = net
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.flow_state = bool(flow_state) or prediction_type == "flow_prediction"  # the network's x_s, s T
        self.learned_variance = bool(learned_variance)
        self.mixed_precision = mixed_precision
        if data_scale is not None:
            check_range("data_scale", data_scale, 0.0, None, low_inclusive=False)
            if not math.isfinite(data_scale):
                raise DiffkitError(f"data_scale={data_scale} is not allowed; give a finite scale > 0 or None")
        self.data_scale = data_scale
        self.sigma_data = check_range("sigma_data", sigma_data, 0.0, None, low_inclusive=False)
        self.nfe = 0
        self._coefficient_cache: dict = {}
        self._input_checked: dict = {}  # (dtype, device) of x -> the dtype the network takes
        self.compiled = "no"

    def compile(self, mode: str = "default", backend="inductor") -> "Denoiser":
        """Run the network through ``torch.compile(net, mode=mode, backend=backend)`` from now on.

        ``mode``: ``default``; ``reduce-overhead`` (on CUDA, replays the step as a CUDA graph:
        it pays for small batches, where kernel launches dominate); ``max-autotune``; ``no``
        leaves the network as it is. The first call compiles (seconds on a GPU, minutes on a
        CPU); a new batch size compiles once more, after which the batch dimension is dynamic.
        The time tensor is an input, so new times do not recompile. Samples are those of the
        eager network up to float round-off (docs/performance.md measures what it buys).
        ``backend``: a ``torch.compile`` backend, by name or as a callable."""
        check_choice("compile", mode, COMPILE_MODES)
        if mode != "no" and self.compiled == "no":
            self.net = torch.compile(self.net, mode=None if mode == "default" else mode, backend=backend)
            self._input_checked.clear()
            self.compiled = mode
        return self

    def reset_nfe(self) -> None:
        self.nfe = 0

    def precision(self, device_type: str):
        """The autocast context of ``mixed_precision`` on ``device_type`` (a no-op for ``no``).

        :func:`diffkit.sample` holds it open around the whole sampling loop: autocast caches the
        low-precision copy of each weight until its outermost context exits, so one context per
        network call would re-cast every weight at every step (for the 83M-parameter seed U-Net
        that made bf16 sampling 1.4x slower than diffusers' pipeline under one autocast)."""
        return autocast(self.mixed_precision, device_type)

    def network_times(self, t, x: torch.Tensor) -> torch.Tensor:
        """Times as the (B,) float tensor on x's device that a VP network receives (a
        ``flow_prediction`` network receives its flow time s T instead: :meth:`__call__`)."""
        return self._network_times_cpu(t, x).to(x.device)

    def _network_times_cpu(self, t, x: torch.Tensor) -> torch.Tensor:
        """:meth:`network_times` on the CPU (float32): alpha and sigma are read from it there, with
        no copy back from the device."""
        t = as_cpu_times(t)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise DiffkitError(f"t has shape {tuple(t.shape)}; expected a scalar or ({x.shape[0]},)")
        if (t < 0).any():
            raise DiffkitError(f"the network cannot be evaluated at t={t.min().item()} < 0 (clean data)")
        return t.to(torch.float32)

    def _network_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the dtype of the network's weights (a float64 or float32 sampling state meets
        a float32 or bf16 network), and a one-line error when they are on different devices."""
        key = (x.dtype, x.device)
        known = self._input_checked.get(key)
        if known is None:
            weight = next(iter(self.net.parameters()), None) if isinstance(self.net, torch.nn.Module) else None
            if weight is not None and weight.device != x.device and weight.device.type != "meta":
                raise DiffkitError(f"the samples are on {x.device} but the network is on {weight.device}; pass "
                                   f"device= to diffkit.sample (or move the network)")
            known = self._input_checked[key] = (weight.dtype if weight is not None and weight.is_floating_point()
                                                else x.dtype)
        return x if known == x.dtype else x.to(known)

    def _scalar_coefficients(self, t: float, x: torch.Tensor):
        """(float32 time, alpha, sigma) for one time shared by the batch, cached per time: samplers
        call with the same grid times over and over, and this keeps the schedule off the per-step
        path. alpha and sigma are taken at the float32 time the network receives."""
        hit = self._coefficient_cache.get(t)
        if hit is None:
            if not t >= 0:
                raise DiffkitError(f"the network cannot be evaluated at t={t} < 0 (clean data)")
            t32 = torch.tensor(t, dtype=torch.float32)
            t64 = t32.to(torch.float64)
            alpha, sigma = self.schedule.alpha(t64).item(), self.schedule.sigma(t64).item()
            if self.flow_state:  # the network's time: s T (class docstring)
                t32 = torch.tensor(diffusion.flow_time(alpha, sigma) * self.schedule.num_timesteps,
                                   dtype=torch.float32)
            elif self.prediction_type == "edm":  # the network's time: c_noise = ln(sigma)/4 (EDM Table 1)
                t32 = torch.tensor(diffusion.edm_preconditioning(diffusion.edm_sigma(alpha, sigma), 1.0)[3],
                                   dtype=torch.float32)
            hit = (t32.item(), alpha, sigma, {})
            if len(self._coefficient_cache) > 100_000:
                self._coefficient_cache.clear()
            self._coefficient_cache[t] = hit
        t32, alpha, sigma, net_times = hit
        key = (x.shape[0], x.device)
        t_net = net_times.get(key)
        if t_net is None:  # the (B,) time tensor the network receives, made once per batch/device
            t_net = net_times[key] = torch.full((x.shape[0],), t32, dtype=torch.float32, device=x.device)
        return t_net, alpha, sigma

    def __call__(self, x: torch.Tensor, t, **cond) -> Prediction:
        if isinstance(t, (float, int)) or (isinstance(t, torch.Tensor) and t.ndim == 0):
            t_net, alpha, sigma = self._scalar_coefficients(float(t), x)
        else:
            t_cpu = self._network_times_cpu(t, x)
            t64, t_net = t_cpu.to(torch.float64), t_cpu.to(x.device)
            alpha, sigma = self.schedule.alpha(t64), self.schedule.sigma(t64)
            if self.flow_state:
                t_net = (diffusion.flow_time(alpha, sigma) * self.schedule.num_timesteps).to(x.device, torch.float32)
            elif self.prediction_type == "edm":
                t_net = diffusion.edm_preconditioning(diffusion.edm_sigma(alpha, sigma), 1.0)[3].to(x.device,
                                                                                                   torch.float32)
        x_net = x
        if self.flow_state:
            x_net = diffusion.flow_input(x, alpha, sigma)
        elif self.prediction_type == "edm":
            x_net = diffusion.edm_input(x, alpha, sigma, self.sigma_data)
        if self.mixed_precision == "no":
            out = self.net(self._network_input(x_net), t_net, **cond)
        else:
            with self.precision(x.device.type):
                out = self.net(x_net, t_net, **cond)
        if not isinstance(out, torch.Tensor):
            raise DiffkitError(f"the network returned a {type(out).__name__}; expected a tensor shaped like its "
                               f"input {tuple(x.shape)} (unwrap e.g. diffusers' output with return_dict=False)")
        # a CUDA graph (compile mode reduce-overhead) writes every replay's output into the same
        # buffer: multistep samplers keep earlier outputs, so those are copied out of it
        copy = self.compiled == "reduce-overhead" and out.device.type == "cuda"
        if copy or out.dtype != x.dtype:  # (a no-op .to still costs about 1 us a call)
            out = out.to(x.dtype, copy=copy)
        self.nfe += 1
        var_values = None
        if self.learned_variance:
            if out.shape != (x.shape[0], 2 * x.shape[1], *x.shape[2:]):
                raise DiffkitError(f"learned_variance=True needs an output of shape "
                                   f"{(x.shape[0], 2 * x.shape[1], *x.shape[2:])}; the network gave {tuple(out.shape)}")
            out, var_values = out.chunk(2, dim=1)
        elif out.shape != x.shape:
            raise DiffkitError(f"network output shape {tuple(out.shape)} differs from input shape "
                               f"{tuple(x.shape)} (learned variance needs learned_variance=True)")
        if self.prediction_type == "edm":
            eps, x0 = diffusion.eps_x0_from_edm(x, out, alpha, sigma, self.sigma_data)
            return Prediction(eps=eps, x0=x0, var_values=var_values)
        if isinstance(alpha, float):
            return _LazyPrediction(out, x, alpha, sigma, self.prediction_type, var_values)
        eps, x0 = diffusion.eps_x0_from_output(out, x, alpha, sigma, self.prediction_type)
        return Prediction(eps=eps, x0=x0, var_values=var_values)


class _LazyPrediction(Prediction):
    """A :class:`Prediction` for one time shared by the batch whose eps / x0 are converted from
    the network output on first access (a sampler that needs only one of them pays for one)."""

    def __init__(self, out, x, alpha: float, sigma: float, prediction_type: str, var_values=None):
        self._args = (out, x, alpha, sigma, prediction_type)
        self._pair = None
        self.var_values = var_values

    def _convert(self):
        if self._pair is None:
            self._pair = diffusion.eps_x0_from_output(*self._args)
        return self._pair

    @property
    def eps(self):
        out, _, _, _, kind = self._args
        return out if kind == "epsilon" else self._convert()[0]

    @property
    def x0(self):
        out, _, _, _, kind = self._args
        return out if kind == "sample" else self._convert()[1]


class Wrapper:
    """Base of the denoisers around a denoiser (thresholding, guidance): forwards the parts of the
    denoiser contract that a wrapper does not change to ``self.inner``."""

    inner = None
    schedule = property(lambda self: self.inner.schedule)
    nfe = property(lambda self: self.inner.nfe, lambda self, value: setattr(self.inner, "nfe", value))  # one count
    learned_variance = property(lambda self: getattr(self.inner, "learned_variance", False))
    data_scale = property(lambda self: getattr(self.inner, "data_scale", None))
    consistency_times = property(lambda self: getattr(self.inner, "consistency_times", None))  # the lcm spacing's
    consistency_boundary_sigma = property(lambda self: getattr(self.inner, "consistency_boundary_sigma", None))
    guidance_range = property(lambda self: getattr(self.inner, "guidance_range", None))  # a w input's range

    def reset_nfe(self) -> None:
        self.inner.reset_nfe()


class ThresholdedDenoiser(Wrapper):
    """Clips (``clip``) or dynamically thresholds (``dynamic``, Imagen) the predicted x_0, and
    recomputes eps from it so that every sampler sees a consistent pair.

    ``clip``: x0 clipped to [-max_value, max_value] (default 1). ``dynamic`` (Saharia et al. 2022,
    Sec. 2.3): per sample s = max(1, the ``ratio`` quantile of |x0|), capped at ``max_value``
    (default: no cap, as in Imagen; diffusers' ``sample_max_value`` defaults to 1.0, which makes
    its dynamic thresholding the same as clip), then x0 -> clip(x0, -s, s) / s. A learned
    variance passes through unchanged."""

    def __init__(self, inner, mode: str, ratio: float = 0.995, max_value: Optional[float] = None):
        check_choice("thresholding", mode, [m for m in THRESHOLDING if m])
        check_range("dynamic_thresholding_ratio", ratio, 0.0, 1.0)
        if max_value is None:
            max_value = 1.0 if mode == "clip" else math.inf
        check_range("sample_max_value", max_value, 1.0 if mode == "dynamic" else 0.0, None,
                    low_inclusive=mode == "dynamic", finite=False)  # inf: no cap
        self.inner, self.mode, self.ratio, self.max_value = inner, mode, ratio, max_value

    def __call__(self, x: torch.Tensor, t, **cond) -> Prediction:
        pred = self.inner(x, t, **cond)
        if self.mode == "clip":
            x0 = diffusion.clip_x0(pred.x0, self.max_value)
        else:
            x0 = diffusion.dynamic_threshold(pred.x0, self.ratio, self.max_value)
        return with_x0(self.schedule, x, t, x0, pred)


def with_x0(schedule: NoiseSchedule, x: torch.Tensor, t, x0: torch.Tensor, pred: Prediction) -> Prediction:
    """``pred`` with its x_0 replaced by ``x0`` and eps recomputed from it at (x_t, t),
    eps = (x_t - alpha_t x_0) / sigma_t, so that every sampler sees a consistent pair (the
    wrappers that edit x_0: thresholding, inpainting). A learned variance passes through."""
    t64 = as_cpu_times(t)
    t64 = t64.expand(x.shape[0]) if t64.ndim == 0 else t64
    alpha, sigma = schedule.alpha(t64), schedule.sigma(t64)
    eps = diffusion.eps_from_x0(x, x0, alpha, sigma)
    return Prediction(eps=eps, x0=x0, var_values=pred.var_values)


def _innermost(denoiser):
    """The denoiser inside any wrappers (objects with ``.inner``)."""
    while not isinstance(denoiser, Denoiser) and hasattr(denoiser, "inner"):
        denoiser = denoiser.inner
    return denoiser


def reset_states(denoiser) -> None:
    """The start of a sampling run: each wrapper in the chain (``.inner``) that keeps state across
    calls (a ``reset_state`` method of its class: APG's momentum in
    :class:`~diffkit.guidance.ClassifierFreeGuidance`) starts afresh."""
    seen = set()
    while denoiser is not None and id(denoiser) not in seen:
        seen.add(id(denoiser))
        reset = getattr(type(denoiser), "reset_state", None)  # its own, not one forwarded by __getattr__
        if callable(reset):
            reset(denoiser)
        denoiser = getattr(denoiser, "inner", None)


def model_variance_type(denoiser) -> str:
    """The Sigma of the model's reverse process: ``learned_range`` for a learned variance, else
    the ``fixed_variance`` its checkpoint was trained with (``loss="vlb"``; a loaded checkpoint's
    ``meta["config"]``), else ``fixed_small`` (beta-tilde)."""
    if getattr(denoiser, "learned_variance", False):
        return "learned_range"
    config = (getattr(_innermost(denoiser), "meta", None) or {}).get("config") or {}
    return config.get("fixed_variance") or "fixed_small"


def network_device(denoiser) -> torch.device:
    """The device of the network inside any wrappers (objects with ``.inner``): its ``model``
    (what :func:`diffkit.load_denoiser` attaches) or ``net``; the CPU for parameter-free networks."""
    denoiser = _innermost(denoiser)
    for module in (getattr(denoiser, "model", None), getattr(denoiser, "net", None)):
        if isinstance(module, torch.nn.Module):
            weight = next(iter(module.parameters()), None)
            if weight is not None:
                return weight.device
    return torch.device("cpu")


def precision_context(denoiser, device_type: str):
    """The :meth:`Denoiser.precision` context of the denoiser inside any wrappers (guidance,
    thresholding: objects with ``.inner``); a no-op for networks without mixed precision."""
    denoiser = _innermost(denoiser)
    return denoiser.precision(device_type) if isinstance(denoiser, Denoiser) else contextlib.nullcontext()
