"""diffusers scheduler configs <-> :class:`~diffkit.schedule.NoiseSchedule` and prediction type.

A diffusers scheduler (``DDPMScheduler``, ``DDIMScheduler``, ``PNDMScheduler``, ...) stores its
training noise schedule as ``num_train_timesteps``, ``beta_start``, ``beta_end``,
``beta_schedule`` (or explicit ``trained_betas``) and ``rescale_betas_zero_snr``; the map is

    linear             beta_t = linspace(beta_start, beta_end, T)              -> NoiseSchedule.linear
    scaled_linear      beta_t = linspace(sqrt(beta_start), sqrt(beta_end), T)^2 -> NoiseSchedule.scaled_linear
    squaredcos_cap_v2  Improved DDPM eq. 17 (s = 0.008, betas capped at 0.999)  -> NoiseSchedule.cosine
    sigmoid            sigmoid(linspace(-6, 6, T)) (beta_end - beta_start) + beta_start -> NoiseSchedule.sigmoid
    trained_betas      any array                                                -> NoiseSchedule.from_betas
    rescale_betas_zero_snr (Lin et al. 2024, Algorithm 1) -> NoiseSchedule.rescale_zero_terminal_snr

diffkit builds the betas in float64 from the same formula; diffusers builds them in float32, so
the betas agree to float32 rounding and ``alphas_cumprod`` to the float32 error of diffusers'
cumulative product (tests/test_interop_diffusers.py measures both). ``prediction_type`` has
the same names in both libraries (``epsilon``, ``sample``, ``v_prediction``).

Flow matching (docs/flow_matching.md): ``FlowMatchEulerDiscreteScheduler(num_train_timesteps=T,
shift=shift)`` <-> ``NoiseSchedule.flow(T, shift)`` with ``prediction_type="flow_prediction"``: its
sigmas s_i = shift((i + 1)/T) (SD3 eq. 23) are the flow times of diffkit's steps, and its timesteps
s * T are the flow network's time input (:func:`flow_scheduler_config`, :func:`flow_shift_from_diffusers`).

Time grids: diffusers' timestep ``k`` is diffkit's time ``t = k`` (both count training steps
from 0). DDIM/PNDM's last step goes to ``final_alpha_cumprod``: 1 (``set_alpha_to_one=True``,
diffkit's final ``t = -1``) or ``alphas_cumprod[0]`` (diffkit's ``t = 0``, ``final="sigma_min"``);
:func:`grid_from_diffusers` turns a scheduler's ``timesteps`` into the diffkit grid.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping, Optional

import torch

from ..diffusion import VP_PREDICTION_TYPES as PREDICTION_TYPES
from ..errors import DiffkitError, DiffkitWarning, check_choice
from ..schedule import NoiseSchedule, as_cpu_times

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
FLOW_SCHEDULER = "FlowMatchEulerDiscreteScheduler"
# FlowMatchEulerDiscreteScheduler options and the values under which its schedule is diffkit's flow schedule
_FLOW_FIXED = {"use_dynamic_shifting": False, "invert_sigmas": False}
# options that only change its inference grid or step (diffkit's sampler, grid and eta choose those)
_FLOW_SAMPLING = {"shift_terminal": None, "use_karras_sigmas": False, "use_exponential_sigmas": False,
                  "use_beta_sigmas": False, "stochastic_sampling": False}
SCHEDULER_KINDS = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "pndm": "PNDMScheduler"}
_TOL = 1e-12  # relative: a schedule "is" a named one when its float64 betas agree this closely


def _config_of(scheduler_or_config) -> Mapping[str, Any]:
    if isinstance(scheduler_or_config, Mapping):
        return scheduler_or_config
    config = getattr(scheduler_or_config, "config", None)
    if isinstance(config, Mapping):
        return config
    raise DiffkitError(f"expected a diffusers scheduler or its config dict; got {type(scheduler_or_config).__name__}")


def train_timesteps(config: dict) -> int:
    """A scheduler config's ``num_train_timesteps`` (default 1000); one line where it is not a positive integer."""
    T = config.get("num_train_timesteps", 1000)
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise DiffkitError(f"num_train_timesteps={T!r} is not allowed; expected a positive integer")
    return T


def schedule_from_diffusers(scheduler_or_config) -> tuple[NoiseSchedule, str]:
    """(NoiseSchedule, prediction_type) of a diffusers scheduler or its config (dict or object)."""
    cfg = _config_of(scheduler_or_config)
    name = cfg.get("_class_name") or type(scheduler_or_config).__name__
    is_flow = name == FLOW_SCHEDULER
    if cfg and not is_flow and "beta_schedule" not in cfg and cfg.get("trained_betas") is None:
        # EDM*Scheduler, ...: no DDPM betas to build a schedule from
        raise DiffkitError(f"{name} has no beta schedule (beta_schedule or trained_betas): it is not a DDPM-family "
                           f"scheduler (EDM schedulers are not diffusion schedules diffkit can sample); allowed: "
                           f"schedulers such as DDPMScheduler, DDIMScheduler, PNDMScheduler, {FLOW_SCHEDULER}")
    T = train_timesteps(cfg)
    if is_flow:
        return NoiseSchedule.flow(T, flow_shift_from_diffusers(cfg)), "flow_prediction"
    prediction_type = cfg.get("prediction_type", "epsilon")
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    trained = cfg.get("trained_betas")
    if trained is not None:
        schedule = NoiseSchedule.from_betas(torch.as_tensor(trained, dtype=torch.float64))
    else:
        name = cfg.get("beta_schedule", "linear")
        check_choice("beta_schedule", name, BETA_SCHEDULES)
        start, end = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
        if name == "linear":
            schedule = NoiseSchedule.linear(T, start, end)
        elif name == "scaled_linear":
            schedule = NoiseSchedule.scaled_linear(T, start, end)
        elif name == "sigmoid":
            schedule = NoiseSchedule.sigmoid(T, start, end)
        else:
            schedule = NoiseSchedule.cosine(T)
    if cfg.get("rescale_betas_zero_snr", False):
        schedule = schedule.rescale_zero_terminal_snr()
    return schedule, prediction_type


def flow_shift_from_diffusers(scheduler_or_config) -> float:
    """The ``flow_shift`` of a ``FlowMatchEulerDiscreteScheduler`` (its ``shift``, SD3 eq. 23)
    whose training schedule is diffkit's ``NoiseSchedule.flow(T, shift)``. A resolution-dependent
    shift (``use_dynamic_shifting``), inverted sigmas or a shift that is not a positive number is a
    one-line DiffkitError naming the key; the options that only change diffusers' inference grid or
    step (``shift_terminal``, Karras / exponential / beta sigmas, ``stochastic_sampling``) are not
    kept: a warning names them (diffkit's sampler and grid choose those)."""
    cfg = _config_of(scheduler_or_config)
    for key, want in _FLOW_FIXED.items():
        if cfg.get(key, want) != want:
            raise DiffkitError(f"{FLOW_SCHEDULER} {key}={cfg[key]!r} cannot be expressed by diffkit's flow schedule "
                               f"(one fixed shift of s = (i + 1)/T, SD3 eq. 23); allowed: {key}={want!r}")
    shift = cfg.get("shift", 1.0)
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not 0 < shift < float("inf"):
        raise DiffkitError(f"{FLOW_SCHEDULER} shift={shift!r} is not allowed; expected a positive finite number "
                           f"(SD3 eq. 23's shift, diffkit's flow_shift)")
    dropped = [f"{k}={cfg[k]!r}" for k, default in _FLOW_SAMPLING.items() if cfg.get(k, default) != default]
    if dropped:
        warnings.warn(f"{FLOW_SCHEDULER} {', '.join(dropped)} only change(s) diffusers' inference grid or step; the "
                      f"diffkit checkpoint keeps the training schedule (choose the grid with diffkit's sampler)",
                      DiffkitWarning, stacklevel=3)
    return float(shift)


def flow_scheduler_config(schedule: NoiseSchedule, shift: float = 1.0) -> dict:
    """diffusers ``FlowMatchEulerDiscreteScheduler`` config of a flow checkpoint's schedule:
    ``num_train_timesteps = T``, ``shift`` (SD3 eq. 23), a fixed shift (no dynamic shifting, no
    inverted, Karras, exponential or beta sigmas, deterministic steps), so diffusers' sigmas are
    the flow times of ``NoiseSchedule.flow(T, shift)``; a schedule that is not that one (to float64
    round-off) is a one-line DiffkitError."""
    T = schedule.num_timesteps
    flow = NoiseSchedule.flow(T, shift)
    if not torch.allclose(flow.alphas_cumprod, schedule.alphas_cumprod, rtol=_TOL, atol=1e-15):
        raise DiffkitError(f"the checkpoint's schedule is not the flow schedule of T={T}, flow_shift={shift!r} "
                           f"(NoiseSchedule.flow), so {FLOW_SCHEDULER} cannot express it")
    return {"_class_name": FLOW_SCHEDULER, "num_train_timesteps": T, "shift": float(shift),
            "use_dynamic_shifting": False, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
            "max_image_seq_len": 4096, "invert_sigmas": False, "shift_terminal": None, "use_karras_sigmas": False,
            "use_exponential_sigmas": False, "use_beta_sigmas": False, "time_shift_type": "exponential",
            "stochastic_sampling": False}


def learned_variance_of(scheduler_or_config) -> Optional[bool]:
    """Whether a diffusers scheduler's ``variance_type`` means diffkit's learned variance (True for
    ``learned_range``, Improved DDPM eq. 15), a fixed one (False), or says nothing (None);
    ``learned`` (the network outputs the variance itself) has no diffkit equivalent and is
    refused. ``fixed_large`` is a sampling choice in diffkit (``ddpm``'s ``variance_type``):
    a warning says so."""
    cfg = _config_of(scheduler_or_config) if scheduler_or_config is not None else {}
    variance = cfg.get("variance_type")
    if variance is None:
        return None
    allowed = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned_range")
    if variance == "learned":
        raise DiffkitError("scheduler variance_type='learned' (the variance itself) is not diffkit's learned "
                           "variance; allowed: learned_range (Improved DDPM eq. 15) or a fixed variance")
    check_choice("scheduler variance_type", variance, allowed)
    if variance.startswith("fixed_large"):
        warnings.warn(f"the scheduler's variance_type={variance!r} is a sampling choice in diffkit: its 'ddpm' "
                      "sampler uses fixed_small unless given variance_type='fixed_large'", DiffkitWarning,
                      stacklevel=3)
    return variance == "learned_range"


def _named_schedule(schedule: NoiseSchedule) -> Optional[dict]:
    """The diffusers name and parameters that rebuild ``schedule`` (to float64 round-off), if any."""
    betas, T = schedule.betas, schedule.num_timesteps
    first, last = float(betas[0]), float(betas[-1])
    rescaled = last == 1.0
    candidates = []
    if not rescaled and 0 < first < 1 and 0 < last < 1:
        candidates += [("linear", first, last, lambda: NoiseSchedule.linear(T, first, last)),
                       ("scaled_linear", first, last, lambda: NoiseSchedule.scaled_linear(T, first, last))]
    candidates.append(("squaredcos_cap_v2", 1e-4, 0.02, lambda: NoiseSchedule.cosine(T)))
    for name, start, end, build in candidates:
        try:
            other = build()
        except DiffkitError:
            continue
        if torch.allclose(other.betas, betas, rtol=_TOL, atol=0):
            return {"beta_schedule": name, "beta_start": start, "beta_end": end, "rescale_betas_zero_snr": False}
    return None


def scheduler_config(schedule: NoiseSchedule, prediction_type: str = "epsilon", *, kind: str = "ddpm",
                     learned_variance: bool = False, clip_sample: bool = False) -> dict:
    """A diffusers scheduler config (``DDPMScheduler`` / ``DDIMScheduler`` / ``PNDMScheduler``) for
    a diffkit schedule: a named ``beta_schedule`` when the betas are one (linear, scaled-linear,
    cosine), else the exact betas as ``trained_betas``.

    ``learned_variance`` sets DDPM's ``variance_type="learned_range"`` (Improved DDPM eq. 15, the
    same interpolation diffkit uses); otherwise ``fixed_small`` (beta-tilde, diffkit's default).
    ``clip_sample=False`` (default) keeps diffkit's unclipped x_0; diffusers' own default is True.
    """
    if prediction_type == "flow_prediction":
        raise DiffkitError(f"a flow-matching model (prediction_type='flow_prediction') has no DDPM-family scheduler; "
                           f"use flow_scheduler_config ({FLOW_SCHEDULER})")
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    check_choice("scheduler kind", kind, SCHEDULER_KINDS)
    config: dict[str, Any] = {"_class_name": SCHEDULER_KINDS[kind], "num_train_timesteps": schedule.num_timesteps}
    named = _named_schedule(schedule)
    if named is None:
        config.update({"beta_schedule": "linear", "beta_start": float(schedule.betas[0]),
                       "beta_end": float(schedule.betas[-1]), "rescale_betas_zero_snr": False,
                       "trained_betas": schedule.betas.tolist()})
    else:
        config.update(named)
        config["trained_betas"] = None
    if kind != "pndm":
        config["prediction_type"] = prediction_type
        config["clip_sample"] = bool(clip_sample)
    elif prediction_type not in ("epsilon", "v_prediction"):
        raise DiffkitError(f"prediction_type={prediction_type!r} is not supported by diffusers' PNDMScheduler; "
                           f"allowed: epsilon, v_prediction (use kind='ddpm' or 'ddim')")
    else:
        config["prediction_type"] = prediction_type
    if kind == "ddpm":
        config["variance_type"] = "learned_range" if learned_variance else "fixed_small"
    if kind in ("ddim", "pndm"):
        config["set_alpha_to_one"] = True  # the last step lands on clean data, as diffkit's final="zero"
        config["steps_offset"] = 0
    return config


def scheduler_from_schedule(schedule: NoiseSchedule, prediction_type: str = "epsilon", *, kind: str = "ddpm",
                            **options):
    """The diffusers scheduler object of :func:`scheduler_config` (options as there)."""
    from . import require
    diffusers = require("diffusers")
    config = scheduler_config(schedule, prediction_type, kind=kind, **options)
    cls = getattr(diffusers, config.pop("_class_name"))
    return cls(**config)


# schedulers whose last step always ends at t = 0's sigma (no final_sigmas_type), with diffkit's sampler
# and a short name for the advice
_SIGMA_MIN_ONLY = {"DEISMultistepScheduler": ("deis", "DEIS"), "SASolverScheduler": ("sa-solver", "SA-Solver")}


def grid_from_diffusers(scheduler) -> torch.Tensor:
    """diffkit's time grid for a diffusers scheduler after ``set_timesteps``: its evaluation
    timesteps (repeats removed: PNDM's skip_prk_steps evaluates its second timestep twice, the
    second stage of an improved-Euler step, and Heun each of its inner times twice; for PNDM with
    PRK steps its base grid, whose half steps diffkit's ``pndm`` makes itself) followed by the
    target of the last step: -1 (clean data: ``final_alpha_cumprod = 1``, ``final_sigmas_type =
    "zero"``) or 0 (``alphas_cumprod[0]``, ``final_sigmas_type = "sigma_min"``, and
    ``DEISMultistepScheduler`` and ``SASolverScheduler``, which have no other end). KDPM2's grid,
    which interleaves midpoints, is refused (diffkit's ``dpm2`` makes its own)."""
    times = getattr(scheduler, "timesteps", None)
    # before set_timesteps a scheduler holds all T training timesteps and no num_inference_steps
    if times is None or len(times) == 0 or getattr(scheduler, "num_inference_steps", 0) is None:
        raise DiffkitError("the scheduler has no timesteps; call scheduler.set_timesteps(steps) first")
    name = type(scheduler).__name__
    if name.startswith("KDPM2"):
        raise DiffkitError(f"{name}'s timesteps interleave its midpoint evaluations; use diffkit's 'dpm2' sampler "
                           f"(spacing='karras' for its Karras sigmas) instead of the scheduler's grid")
    config = scheduler.config
    if name == "PNDMScheduler" and not config.get("skip_prk_steps", False):
        times = sorted(set(int(t) for t in scheduler._timesteps), reverse=True)  # PRK's base grid, not its half steps
    times = as_cpu_times(times)
    keep = torch.cat([torch.ones(1, dtype=torch.bool), times[1:] != times[:-1]])
    times = times[keep]
    final_alpha = getattr(scheduler, "final_alpha_cumprod", None)
    if final_alpha is not None and len(times) > 1:  # DDIM / PNDM step from t to t - T // S
        T = config.num_train_timesteps
        stride = T // scheduler.num_inference_steps
        gaps = (times[:-1] - times[1:]).unique().tolist()
        if gaps != [stride]:
            raise DiffkitError(f"the scheduler's timesteps are not spaced by T // steps = {stride} (gaps {gaps[:4]}); "
                               f"{name} steps from t to t - {stride}, which is not its next timestep; use a step "
                               f"count that divides num_train_timesteps={T}, or timestep_spacing 'leading'")
    ddim_like = final_alpha is not None
    final_alpha = 1.0 if final_alpha is None else final_alpha
    end = -1.0 if float(final_alpha) == 1.0 else 0.0
    if ddim_like and len(times) > 1 and times[-1] - stride >= 0:
        # DDIM / PNDM's last step also goes to t - T // S; final_alpha_cumprod only where that is < 0
        end = float(times[-1] - stride)
    if config.get("final_sigmas_type") == "sigma_min" or name in _SIGMA_MIN_ONLY:
        end = 0.0  # DPMSolver*, UniPC, ... with sigma_min, and DEIS / SA-Solver always: the last step ends at t = 0
    if times[-1] <= end and name in _SIGMA_MIN_ONLY:
        raise DiffkitError(f"{name}'s last timestep is {times[-1].item():g}: with use_karras_sigmas, "
                           f"use_exponential_sigmas or use_beta_sigmas it repeats its last sigma (a last step of "
                           f"length 0); give diffkit's {_SIGMA_MIN_ONLY[name][0]} spacing='karras' instead, or "
                           f"{_SIGMA_MIN_ONLY[name][1]} without those options")
    if times[-1] <= end:
        raise DiffkitError(f"the scheduler's last timestep {times[-1].item():g} leaves no step to its final noise "
                           f"level (t = {end:g}); use set_alpha_to_one=True, steps_offset=1 or "
                           f"final_sigmas_type='zero'")
    return torch.cat([times, torch.tensor([end], dtype=torch.float64)])


__all__ = ["BETA_SCHEDULES", "FLOW_SCHEDULER", "schedule_from_diffusers", "flow_shift_from_diffusers",
           "flow_scheduler_config", "learned_variance_of", "scheduler_config",
           "scheduler_from_schedule", "grid_from_diffusers"]
