"""The sampler registry: names -> functions with their metadata (order, model calls per step,
stochastic or not, default time grid). One table serves the CLI, the benchmarks and the tests."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Union

from ..errors import DiffkitError, check_choice, check_range
from .consistency import consistency
from .ddim import ddim
from .ddpm import ddpm
from .deis import deis
from .dpm_adaptive import dpm_adaptive
from .dpm_solver import dpm_solver_multistep, dpm_solver_singlestep
from .karras import dpm2, dpm2_ancestral, dpmpp_2s_ancestral, dpmpp_sde, euler, euler_ancestral, heun, ipndm, lms
from .ode import ode
from .pc import pc
from .pndm import fon, plms, pndm, pndm_skip_prk, s_pndm
from .restart import RESTARTS, check_restarts, restart, restart_calls
from .sa_solver import sa_solver
from .tcd import tcd
from .unipc import unipc


@dataclass(frozen=True)
class SamplerInfo:
    """A sampler and what it costs. ``fn(denoiser, x, grid, *, cond, generator, callback,
    progress, **options)`` maps noise at grid[0] to data at grid[-1]."""

    name: str
    fn: Callable
    order: Union[int, str]  # "adaptive": the sampler picks its own steps (ode, dpm-adaptive); steps / nfe do not apply
    calls_per_step: int
    stochastic: bool
    description: str
    default_spacing: str = "linear"
    default_final: str = "zero"
    options: dict = field(default_factory=dict)
    # its first step can start where alpha_bar = 0 (a zero-terminal-SNR schedule's last time, where
    # 'trailing' grids start): an x-space step from the network's own x0 and eps, with no division
    # by alpha or sigma there (tests/test_sample_inputs.py runs every sampler from there)
    infinite_noise_start: bool = False
    # For samplers whose NFE is not calls_per_step * steps: nfe_of_steps(steps, final) (the grid's
    # final target matters to samplers whose step into clean data needs fewer calls).
    nfe_of_steps: Optional[Callable[[int, str], int]] = None
    nfe_rule: str = ""  # the rule in words, for ``diffkit samplers``
    # For samplers whose calls per step depend on an option (pc's corrector_steps):
    # calls_per_step_of(options) with the registered options updated by the caller's
    calls_per_step_of: Optional[Callable[[dict], int]] = None
    # For samplers whose NFE rule depends on an option (restart's intervals): nfe_of_steps_of(options)
    # -> nfe_of_steps, with the registered options updated by the caller's
    nfe_of_steps_of: Optional[Callable[[dict], Callable[[int, str], int]]] = None
    # The fewest steps it runs with at its default settings (restart: 2, as the one-step Karras grid to
    # clean data has one positive sigma~, no room for a restart interval); steps_for_nfe picks no fewer.
    # min_steps_of(options) for samplers where an option sets it (restart with restarts=() is Heun: 1)
    min_steps: int = 1
    min_steps_of: Optional[Callable[[dict], int]] = None

    @property
    def adaptive(self) -> bool:
        """Whether the sampler picks its own steps (its NFE is set by its tolerances, not by steps)."""
        return self.order == "adaptive"

    def check_fixed_steps(self, given: str = "steps") -> None:
        """A one-line error when ``given`` (steps, nfe, spacing) is set for an adaptive sampler."""
        if self.adaptive:
            raise DiffkitError(f"sampler {self.name!r} picks its own steps, so {given} does not apply; set its "
                               f"accuracy with rtol / atol (--rtol / --atol)")

    def check_not_adaptive(self, user: str) -> None:
        """A one-line error when ``user`` (a command that spends a step count) is given an adaptive sampler."""
        if self.adaptive:
            raise DiffkitError(f"{user} samples with a step count (--steps); sampler {self.name!r} picks its own "
                               f"steps: give a fixed-step sampler (diffkit samplers)")

    def nfe(self, steps: int, final: Optional[str] = None) -> int:
        """Network evaluations spent by ``steps`` steps on a grid ending at ``final``
        (default: the sampler's default final)."""
        self.check_fixed_steps()
        final = final or self.default_final
        return self.nfe_of_steps(steps, final) if self.nfe_of_steps else self.calls_per_step * steps

    def with_options(self, options: dict) -> "SamplerInfo":
        """This sampler as it runs with ``options`` (the caller's, over the registered ones): its
        calls per step, and so its NFE, where an option sets them."""
        merged = {**self.options, **options}
        changes = {}
        if self.calls_per_step_of is not None:
            changes["calls_per_step"] = self.calls_per_step_of(merged)
        if self.nfe_of_steps_of is not None:
            changes["nfe_of_steps"] = self.nfe_of_steps_of(merged)
        if self.min_steps_of is not None:
            changes["min_steps"] = self.min_steps_of(merged)
        return replace(self, **changes) if changes else self

    def steps_for_nfe(self, nfe: int, final: Optional[str] = None) -> int:
        """The step count that spends exactly ``nfe`` evaluations, or a one-line error."""
        self.check_fixed_steps("nfe")
        check_range("nfe", nfe, 1, None, integer=True)
        lo, hi = self.min_steps, max(nfe, self.min_steps)  # nfe(s) grows with s and nfe(s) >= s: bisect for
        while lo < hi:                                      # the first s >= min_steps with nfe(s) >= nfe
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if self.nfe(mid, final) < nfe else (lo, mid)
        if self.nfe(lo, final) == nfe:
            return lo
        possible = sorted({self.nfe(s, final) for s in range(max(self.min_steps, lo - 4), lo + 5)})
        near = [n for n in possible if abs(n - nfe) <= 3 * self.calls_per_step] or possible[:5]
        smallest = self.nfe(self.min_steps, final)
        below = f"; the smallest NFE it can spend is {smallest} ({self.min_steps} steps)" if nfe < smallest else ""
        raise DiffkitError(f"sampler {self.name!r} cannot spend exactly nfe={nfe}; it can spend "
                           f"{', '.join(map(str, near))} (calls per step: {self.calls_per_step}){below}")


REGISTRY: dict[str, SamplerInfo] = {}


def register(info: SamplerInfo) -> SamplerInfo:
    REGISTRY[info.name] = info
    return info


def get_sampler(name: str) -> SamplerInfo:
    check_choice("sampler", name, REGISTRY)
    return REGISTRY[name]


def with_grid(settings: dict) -> dict:
    """``settings`` with the time grid written out: ``spacing`` and ``final`` are the sampler's
    defaults when not given (settings of an unregistered sampler come back as they are)."""
    info = REGISTRY.get(settings.get("sampler"))
    if info is None:
        return dict(settings)
    spacing = {} if info.adaptive else {"spacing": settings.get("spacing") or info.default_spacing}
    return {**settings, **spacing, "final": settings.get("final") or info.default_final}


def canonical_settings(settings: dict) -> dict:
    """``{"sampler": NAME, "steps": S, **options}`` as the key of the sample cache and the score
    ledger: options given at their default value are dropped (ddim's ``eta=0``,
    ``thresholding=None``, ...), so two calls that sample the same way get one key, while the time
    grid is always written out (``spacing`` and ``final``, the sampler's defaults when not given), so
    a cell recorded before a sampler's default grid changed is not taken for one on the new grid."""
    info = REGISTRY.get(settings.get("sampler"))
    defaults: dict = {"thresholding": [None]}
    if info is not None:
        for key, param in inspect.signature(info.fn).parameters.items():
            if param.default is not inspect.Parameter.empty:
                defaults.setdefault(key, []).append(param.default)
        for key, value in info.options.items():
            defaults[key] = [value]  # a registered option replaces the function's own default

    def same(a, b):  # 0 and 0.0 are one eta; True and 1 are not one value
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
        return a == b and (numbers or type(a) is type(b))

    def at_default(key, value):
        return any(same(value, d) for d in defaults.get(key, ()))

    def plain(value):  # numpy scalars as the Python numbers they equal (np.int64(50) is steps 50)
        return value.item() if type(value).__module__ == "numpy" and hasattr(value, "item") else value
    return {k: plain(v) for k, v in with_grid(settings).items()
            if k in ("sampler", "steps", "spacing", "final") or not at_default(k, plain(v))}


def split_sampler_spec(spec: str) -> tuple:
    """``"NAME[@SPACING][:FINAL]"`` -> (name, spacing or None, final or None), e.g. ``"unipc"``,
    ``"unipc@logsnr"``, ``"unipc:zero"``; an unknown spacing or final is a one-line error (the name
    is not checked: callers decide whether an unknown sampler is an error)."""
    from ..timesteps import FINALS, SPACINGS
    head, colon, final = spec.partition(":")
    name, at, spacing = head.partition("@")
    if at or spacing:
        check_choice("spacing", spacing, SPACINGS)  # "ddim@" names no spacing: an error, not the default
    if colon or final:
        check_choice("final", final, FINALS)
    return name, spacing or None, final or None


register(SamplerInfo("ddpm", ddpm, order=1, calls_per_step=1, stochastic=True,
                     description="DDPM ancestral sampling (Ho et al. 2020, Alg. 2); respaced on S < T steps",
                     infinite_noise_start=True))
register(SamplerInfo("ddim", ddim, order=1, calls_per_step=1, stochastic=False,
                     description="DDIM (Song et al. 2021, eq. 12); eta=0 deterministic, eta>0 stochastic",
                     infinite_noise_start=True))
register(SamplerInfo("consistency", consistency, order=1, calls_per_step=1, stochastic=True,
                     description="multistep consistency sampling (Song et al. 2023, Alg. 1; LCMScheduler) for "
                                 "consistency models: f, then renoise to the next time",
                     default_spacing="lcm", default_final="zero", infinite_noise_start=True))
register(SamplerInfo("tcd", tcd, order=1, calls_per_step=1, stochastic=True,
                     description="TCD's strategic stochastic sampling (Zheng et al. 2024; TCDScheduler): DDIM to "
                                 "s = (1 - gamma) t', renoise to t'; gamma 0.3, 0 = DDIM, 1 = consistency",
                     default_spacing="lcm", default_final="zero",
                     infinite_noise_start=True))
# the samplers of consistency models: on one (an LCM folder, a distilled checkpoint) they default to its own steps
CONSISTENCY_SAMPLERS = ("consistency", "tcd")


# ---------------------------------------------------------------- fast samplers
def _last_step_single(calls: int):
    """NFE of samplers with ``calls`` per step whose step into clean data is one Euler call
    (EDM Algorithm 2 line 9): calls*steps - (calls - 1) when final='zero'."""
    return lambda steps, final: calls * steps - ((calls - 1) if final == "zero" else 0)


def _heun_first_step(steps: int, final: str) -> int:
    """NFE of samplers whose first step is S-PNDM's improved Euler (2 calls) and the rest 1 call;
    a single step into clean data cannot evaluate its end, so it costs 1."""
    return steps + (1 if steps > 1 or final != "zero" else 0)


register(SamplerInfo("pndm", pndm, order=4, calls_per_step=4, stochastic=False,
                     description="F-PNDM (Liu et al. 2022, Alg. 2): 3 pseudo Runge-Kutta steps, then PLMS",
                     default_spacing="linear", default_final="zero",
                     nfe_of_steps=lambda steps, final: steps + 3 * min(3, steps - (final == "zero")),
                     nfe_rule="steps+3*min(3,steps-1) [zero]; steps+3*min(3,steps) [sigma_min]"))
register(SamplerInfo("plms", plms, order=4, calls_per_step=1, stochastic=False,
                     description="PLMS (PNDM eq. 13) with Adams-Bashforth orders 1-3 as warm-up",
                     default_spacing="linear", default_final="zero", options={"order": 4}))
register(SamplerInfo("plms-3", plms, order=3, calls_per_step=1, stochastic=False,
                     description="PLMS with 3rd-order Adams-Bashforth, (23 e_t - 16 e_t-d + 5 e_t-2d)/12",
                     default_spacing="linear", default_final="zero", options={"order": 3}))
register(SamplerInfo("s-pndm", s_pndm, order=2, calls_per_step=1, stochastic=False,
                     description="S-PNDM: pseudo improved Euler first step, then 2nd-order PLMS",
                     default_spacing="linear", default_final="zero", nfe_of_steps=_heun_first_step,
                     nfe_rule="steps+1 (1 if steps=1 [zero])"))
register(SamplerInfo("pndm-skip-prk", pndm_skip_prk, order=4, calls_per_step=1, stochastic=False,
                     description="diffusers' PNDMScheduler(skip_prk_steps=True): improved-Euler first step, PLMS 2-4",
                     default_spacing="linear", default_final="zero", nfe_of_steps=_heun_first_step,
                     nfe_rule="steps+1 (1 if steps=1 [zero])"))
register(SamplerInfo("fon", fon, order=4, calls_per_step=4, stochastic=False,
                     description="FON: classical RK4 on the probability-flow ODE in x and t (PNDM baseline)",
                     default_spacing="linear", default_final="zero",
                     nfe_of_steps=_last_step_single(4), nfe_rule="4*steps-3 [zero]; 4*steps [sigma_min]"))

register(SamplerInfo("dpm-solver", dpm_solver_singlestep, order=3, calls_per_step=1, stochastic=False,
                     description="DPM-Solver-fast (Lu et al. 2022): singlestep order-3 chunks, remainder lower",
                     default_spacing="logsnr", default_final="zero",
                     options={"solver_order": 3, "algorithm_type": "dpmsolver"}))
register(SamplerInfo("dpm-solver-2", dpm_solver_singlestep, order=2, calls_per_step=1, stochastic=False,
                     description="DPM-Solver-2 singlestep (Lu et al. 2022, Alg. 1), r1 from the grid",
                     default_spacing="logsnr", default_final="zero",
                     options={"solver_order": 2, "algorithm_type": "dpmsolver"}))
register(SamplerInfo("dpm-solver-2m", dpm_solver_multistep, order=2, calls_per_step=1, stochastic=False,
                     description="multistep DPM-Solver-2 (noise prediction)",
                     default_spacing="logsnr", default_final="zero",
                     options={"solver_order": 2, "algorithm_type": "dpmsolver"}))
register(SamplerInfo("dpm-solver-3m", dpm_solver_multistep, order=3, calls_per_step=1, stochastic=False,
                     description="multistep DPM-Solver-3 (noise prediction)",
                     default_spacing="logsnr", default_final="zero",
                     options={"solver_order": 3, "algorithm_type": "dpmsolver"}))
register(SamplerInfo("dpm-solver++-2s", dpm_solver_singlestep, order=2, calls_per_step=1, stochastic=False,
                     description="DPM-Solver++(2S) (Lu et al. 2022b, Alg. 1), data prediction",
                     default_spacing="logsnr", default_final="zero",
                     options={"solver_order": 2, "algorithm_type": "dpmsolver++"}))
register(SamplerInfo("dpm-solver++-2m", dpm_solver_multistep, order=2, calls_per_step=1, stochastic=False,
                     description="DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2), data prediction",
                     default_spacing="logsnr", default_final="zero",
                     options={"solver_order": 2, "algorithm_type": "dpmsolver++"}))
register(SamplerInfo("dpm-solver++-3m", dpm_solver_multistep, order=3, calls_per_step=1, stochastic=False,
                     description="DPM-Solver++(3M), data prediction",
                     default_spacing="logsnr", default_final="zero",
                     options={"solver_order": 3, "algorithm_type": "dpmsolver++"}))
register(SamplerInfo("sde-dpm-solver++-2m", dpm_solver_multistep, order=2, calls_per_step=1, stochastic=True,
                     description="SDE-DPM-Solver++(2M) (Lu et al. 2022b; diffusers 'sde-dpmsolver++')",
                     default_spacing="logsnr", default_final="zero", infinite_noise_start=True,
                     options={"solver_order": 2, "algorithm_type": "sde-dpmsolver++"}))

register(SamplerInfo("sde-dpm-solver++-3m", dpm_solver_multistep, order=3, calls_per_step=1, stochastic=True,
                     description="SDE-DPM-Solver++(3M) (k-diffusion 'DPM++ 3M SDE', sample_dpmpp_3m_sde, eta=1)",
                     default_spacing="logsnr", default_final="zero",
                     options={"solver_order": 3, "algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}))
register(SamplerInfo("deis", deis, order=2, calls_per_step=1, stochastic=False,
                     description="DEIS order 2: exponential Adams-Bashforth in log rho (Zhang & Chen 2023; "
                                 "diffusers' logrho DEIS)",
                     default_spacing="logsnr", default_final="zero", options={"solver_order": 2}))
register(SamplerInfo("deis-3", deis, order=3, calls_per_step=1, stochastic=False,
                     description="DEIS order 3: eps's quadratic in log rho through 3 steps, integrated exactly",
                     default_spacing="logsnr", default_final="zero", options={"solver_order": 3}))

register(SamplerInfo("euler", euler, order=1, calls_per_step=1, stochastic=False,
                     description="Euler in sigma = sqrt((1-abar)/abar) (Karras et al. 2022); churn optional",
                     default_spacing="karras", default_final="zero"))
register(SamplerInfo("heun", heun, order=2, calls_per_step=2, stochastic=False,
                     description="Heun (Karras et al. 2022, Alg. 2); last step to sigma=0 is Euler",
                     default_spacing="karras", default_final="zero", nfe_of_steps=_last_step_single(2),
                     nfe_rule="2*steps-1 [zero]; 2*steps [sigma_min]"))
register(SamplerInfo("euler-ancestral", euler_ancestral, order=1, calls_per_step=1, stochastic=True,
                     description="Euler ancestral (k-diffusion), eta=1",
                     default_spacing="karras", default_final="zero", options={"eta": 1.0}))
register(SamplerInfo("dpm2", dpm2, order=2, calls_per_step=2, stochastic=False,
                     description="DPM2 (k-diffusion): midpoint in log sigma; last step to sigma=0 is Euler",
                     default_spacing="karras", default_final="zero", nfe_of_steps=_last_step_single(2),
                     nfe_rule="2*steps-1 [zero]; 2*steps [sigma_min]"))
register(SamplerInfo("dpm2-ancestral", dpm2_ancestral, order=2, calls_per_step=2, stochastic=True,
                     description="DPM2 ancestral (k-diffusion sample_dpm_2_ancestral): DPM2 to sigma_down, noise "
                                 "sigma_up",
                     default_spacing="karras", default_final="zero", options={"eta": 1.0},
                     nfe_of_steps=_last_step_single(2), nfe_rule="2*steps-1 [zero]; 2*steps [sigma_min]"))
register(SamplerInfo("dpm-solver++-2s-ancestral", dpmpp_2s_ancestral, order=2, calls_per_step=2, stochastic=True,
                     description="DPM++ 2S a (k-diffusion sample_dpmpp_2s_ancestral): DPM-Solver++(2S) to sigma_down, "
                                 "noise sigma_up",
                     default_spacing="karras", default_final="zero", options={"eta": 1.0},
                     nfe_of_steps=_last_step_single(2), nfe_rule="2*steps-1 [zero]; 2*steps [sigma_min]"))
register(SamplerInfo("lms", lms, order=4, calls_per_step=1, stochastic=False,
                     description="K-LMS (k-diffusion): linear multistep in sigma, order 4",
                     default_spacing="karras", default_final="zero", options={"order": 4}))
register(SamplerInfo("dpm-solver++-sde", dpmpp_sde, order=2, calls_per_step=2, stochastic=True,
                     description="DPM++ SDE (k-diffusion sample_dpmpp_sde, eta=1, r=1/2): stochastic DPM-Solver++(2S), "
                                 "noise from one Brownian path per step",
                     default_spacing="karras", default_final="zero", options={"eta": 1.0},
                     nfe_of_steps=_last_step_single(2), nfe_rule="2*steps-1 [zero]; 2*steps [sigma_min]"))
register(SamplerInfo("ipndm", ipndm, order=4, calls_per_step=1, stochastic=False,
                     description="iPNDM (Zhang & Chen 2023; ComfyUI's k-diffusion sample_ipndm): Adams-Bashforth 1-4 "
                                 "in sigma, fixed-step weights",
                     default_spacing="karras", default_final="zero", options={"order": 4}))

register(SamplerInfo("unipc", unipc, order=2, calls_per_step=1, stochastic=False,
                     description="UniPC-bh2 (Zhao et al. 2023): UniP-2 + UniC, data prediction",
                     default_spacing="logsnr_graded", default_final="sigma_min",
                     options={"solver_order": 2, "solver_type": "bh2"}))
register(SamplerInfo("unipc-3", unipc, order=3, calls_per_step=1, stochastic=False,
                     description="UniPC-bh2 with UniP-3 + UniC, data prediction",
                     default_spacing="logsnr_graded", default_final="sigma_min",
                     options={"solver_order": 3, "solver_type": "bh2"}))
register(SamplerInfo("unipc-bh1", unipc, order=3, calls_per_step=1, stochastic=False,
                     description="UniPC-bh1 with UniP-3 + UniC, data prediction",
                     default_spacing="logsnr_graded", default_final="sigma_min",
                     options={"solver_order": 3, "solver_type": "bh1"}))
register(SamplerInfo("unipc-eps", unipc, order=2, calls_per_step=1, stochastic=False,
                     description="UniPC-bh2 with UniP-2 + UniC, noise prediction, on the DDIM/PNDM linear grid",
                     default_spacing="linear", default_final="zero",
                     options={"solver_order": 2, "solver_type": "bh2", "predict_x0": False}))
register(SamplerInfo("unipc-eps-bh1", unipc, order=2, calls_per_step=1, stochastic=False,
                     description="UniPC-bh1 with UniP-2 + UniC, noise prediction, on the DDIM/PNDM linear grid",
                     default_spacing="linear", default_final="zero",
                     options={"solver_order": 2, "solver_type": "bh1", "predict_x0": False}))

register(SamplerInfo("sa-solver", sa_solver, order=2, calls_per_step=1, stochastic=True,
                     description="SA-Solver (Xue et al. 2023; diffusers' SASolverScheduler): stochastic Adams "
                                 "predictor 2 + corrector 2, data prediction, tau=1 (the reverse SDE)",
                     default_spacing="logsnr", default_final="zero",
                     options={"predictor_order": 2, "corrector_order": 2, "tau": 1.0}))


def _restart_nfe(options: dict):
    """restart's NFE rule: Heun's on the main grid plus the calls of its restart intervals."""
    extra = restart_calls(options["restarts"])
    heun_nfe = _last_step_single(2)
    return lambda steps, final: heun_nfe(steps, final) + extra


def _restart_min_steps(options: dict) -> int:
    """2 steps with a restart interval (a one-step grid to clean data holds one positive sigma~); 1 without."""
    return 1 if len(check_restarts(RESTARTS if options["restarts"] is None else options["restarts"])) == 0 else 2


register(SamplerInfo("restart", restart, order=2, calls_per_step=2, stochastic=True,
                     description="Restart (Xu et al. 2023, Alg. 1; ComfyUI sample_restart): Heun, with one restart: "
                                 "noise sigma~ 0.1 -> 2, then 5 Heun steps back",
                     default_spacing="karras", default_final="zero", options={"restarts": None},
                     nfe_of_steps=_restart_nfe({"restarts": None}), nfe_of_steps_of=_restart_nfe,
                     min_steps=2, min_steps_of=_restart_min_steps,
                     nfe_rule="2*steps-1+2nK [zero]; 2*steps+2nK [sigma_min]; 2nK=10; steps >= 2"))


def _pc_calls(options: dict) -> int:
    return 1 + check_range("corrector_steps", options["corrector_steps"], 0, None, integer=True)


register(SamplerInfo("pc", pc, order=1, calls_per_step=2, stochastic=True,
                     description="predictor-corrector (Song et al. 2021, App. G Alg. 3, 5): reverse diffusion + "
                                 "Langevin, snr 0.16",
                     default_spacing="linear", default_final="zero",
                     options={"snr": 0.16, "corrector_steps": 1, "predictor": "reverse_diffusion"},
                     calls_per_step_of=_pc_calls, nfe_rule="steps*(1+corrector_steps)"))


register(SamplerInfo("ode", ode, order="adaptive", calls_per_step=0, stochastic=False,
                     description="probability-flow ODE by Dormand-Prince RK45 (rtol = atol = 1e-5; Song et al. 2021, "
                                 "Sec. 4.3), per-sample steps, in log-SNR",
                     default_spacing="adaptive", default_final="zero",
                     nfe_rule="set by rtol/atol (adaptive)"))
register(SamplerInfo("dpm-adaptive", dpm_adaptive, order="adaptive", calls_per_step=0, stochastic=False,
                     description="DPM-Solver-23 with adaptive steps in lambda (Lu et al. 2022, Alg. 4; rtol 0.05, "
                                 "atol 0.0078), per-sample steps",
                     default_spacing="adaptive", default_final="zero",
                     nfe_rule="set by rtol/atol (adaptive)"))
