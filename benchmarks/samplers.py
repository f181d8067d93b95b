"""Sampler benchmark: every diffkit sampler against diffusers' schedulers on Gaussian-mixture data
with the exact noise predictor eps* (diffkit.analytic), so the only error is the solver's.

For each mixture (several dims / component counts) and each NFE in 5, 6, 8, 10, 15, 20, 50, every
sampler maps the same noise vectors x_T (10k from each of three seeds, pooled) to samples and we report
  * FD: the Frechet distance between the sample mean/covariance and the mixture's closed-form
    mean/covariance, and the *excess FD* = FD - FD of the accurate ODE solution from the same noise;
  * RMS: for deterministic samplers, the RMS distance to that accurate ODE solution (scipy DOP853,
    rtol = atol = 1e-10, on dx~/dsigma~ = eps*, sigma~ = sqrt((1 - abar)/abar), from t = T-1 to
    clean data), and how it is made up: the RMS without the worst 0.1% of trajectories, the median
    trajectory's error and the flips (``endpoint_errors``).
diffusers' schedulers are driven by the same eps*, evaluated at the noise level each scheduler
itself uses (its sigma for the current step, with scale_model_input), over their reasonable
settings (spacings, Karras / exponential / Lu-lambda sigmas, orders, final_sigmas_type). diffkit
samplers run with their one registered default setting at every NFE.
Also: per-step overhead with a model that costs nothing, diffkit vs diffusers per family.

Run (about 30-45 minutes on 2 CPU cores; a third of that per seed):
    PYTHONPATH=. python benchmarks/samplers.py            # writes benchmarks/out/samplers.{json,md,png}
    PYTHONPATH=. python benchmarks/samplers.py --quick    # 2k samples, one mixture, the first seed (a smoke run)
    PYTHONPATH=. python benchmarks/samplers.py --noise-seeds 1234   # one 10k draw (the tables before 2026-12-02)
    PYTHONPATH=. python benchmarks/samplers.py --profile unipc-3@logsnr_skip:zero:15   # where the error comes from
    PYTHONPATH=. python benchmarks/samplers.py --nfes 15,20 --no-overhead   # only some NFEs
    # the same in parallel, one process per mixture, then merged:
    PYTHONPATH=. python benchmarks/samplers.py --mixtures 0 --out OUT0   (1 and 2 with --no-overhead)
    PYTHONPATH=. python benchmarks/samplers.py --merge OUT0/samplers.json OUT1/samplers.json OUT2/samplers.json
    PYTHONPATH=. python benchmarks/samplers.py --overhead-only --out OUTO   # alone, on a quiet machine
    PYTHONPATH=. python benchmarks/samplers.py --overhead-only --overhead-clock thread --out OUTO   # a loaded one
    PYTHONPATH=. python benchmarks/samplers.py --overhead-only --overhead-samplers ipndm,lms --out OUTO  # some
"""
from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
import warnings
from pathlib import Path

import torch

from diffkit import Denoiser, NoiseSchedule, sample
from diffkit.analytic import GaussianMixture
from diffkit.errors import DiffkitError
from diffkit.samplers import REGISTRY
from diffkit.samplers.registry import get_sampler, split_sampler_spec
from diffkit.sampling import sampler_grid

torch.set_num_threads(1)
warnings.filterwarnings("ignore")
NFES = (5, 6, 8, 10, 15, 20, 50)
MIXTURES = ({"dim": 2, "components": 8, "seed": 0}, {"dim": 8, "components": 4, "seed": 1},
            {"dim": 16, "components": 6, "seed": 2})
OUT = Path(__file__).resolve().parent / "out"
# Seeds of the starting noise x_T (--noise-seeds), n samples each, pooled: the RMS is carried by
# the ~1% of trajectories that pass near a boundary between components, so one 10k draw moves a
# ratio by +-15% (docs/samplers.md); three draws pooled give a verdict that does not hinge on one.
NOISE_SEEDS = (1234, 99, 7777)
BETAS = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}


# ---------------------------------------------------------------- the exact model, fast
class MixtureEps:
    """eps*(x; alpha, sigma) for a Gaussian mixture with one noise level for the whole batch
    (the same formula as diffkit.analytic.GaussianMixture.eps, vectorised for a scalar time)."""

    def __init__(self, mixture: GaussianMixture):
        self.m = mixture
        self.calls = 0

    def __call__(self, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        self.calls += 1
        m = self.m
        xf = x.to(torch.float64)
        diff = xf[:, None, :] - alpha * m.means[None]                          # (B, K, D)
        z = torch.einsum("kde,bkd->bke", m.eigvecs, diff)
        var = alpha ** 2 * m.eigvals + sigma ** 2                              # (K, D)
        log_n = -0.5 * ((z ** 2 / var).sum(-1) + torch.log(var).sum(-1)) + torch.log(m.weights)
        resp = torch.softmax(log_n, dim=1)
        solved = torch.einsum("kde,bke->bkd", m.eigvecs, resp[:, :, None] * z / var)
        return (sigma * solved.sum(1)).to(x.dtype)


def diffkit_network(eps_fn: MixtureEps, schedule: NoiseSchedule):
    cache = {}

    def net(x, t):
        key = float(t[0])
        if key not in cache:
            tt = torch.tensor(key, dtype=torch.float64)
            cache[key] = (schedule.alpha(tt).item(), schedule.sigma(tt).item())
        return eps_fn(x, *cache[key])
    return net


# ---------------------------------------------------------------- metrics
def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2) (eigen-decomposition, float64)."""
    l1, u1 = torch.linalg.eigh(cov1)
    s1 = u1 @ torch.diag(l1.clamp(min=0).sqrt()) @ u1.T
    cross = torch.linalg.eigvalsh(s1 @ cov2 @ s1).clamp(min=0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * cross)


def sample_fd(x: torch.Tensor, mixture: GaussianMixture) -> float:
    x = x.to(torch.float64)
    if not torch.isfinite(x).all():
        return float("nan")
    return frechet_distance(x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1]), mixture.mean(), mixture.cov())


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.to(torch.float64) - b.to(torch.float64)).pow(2).mean().sqrt())


# The share of trajectories left out of the trimmed RMS: the worst 0.1%.
TRIM = 1e-3


def endpoint_errors(x: torch.Tensor, ref: torch.Tensor, mixture: GaussianMixture, ref_components=None) -> dict:
    """The RMS distance to the accurate ODE endpoints and how it is made up. On a mixture a few
    trajectories start near the boundary between two components' basins; a small solver error sends
    them to the other component (a *flip*, an error of the size of the distance between means), and
    the number of such trajectories grows with the solver's error, so flips carry the RMS of a large
    draw (docs/samplers.md). Returned, in the same per-coordinate units as ``rms``: ``rms``;
    ``rms_trimmed``, without the worst ``TRIM`` share of trajectories; ``median`` per-trajectory
    error; and ``flips``, the trajectories whose endpoint is most likely under another component
    than the accurate endpoint's."""
    x = x.to(torch.float64)
    per_sample = (x - ref).pow(2).mean(1)
    if not torch.isfinite(per_sample).all():
        return {"rms": float("nan"), "rms_trimmed": float("nan"), "median": float("nan"), "flips": None}
    keep = per_sample.numel() - math.ceil(TRIM * per_sample.numel())
    if ref_components is None:
        ref_components = mixture.class_log_posterior(ref, 1.0, 0.0).argmax(1)
    flips = int((mixture.class_log_posterior(x, 1.0, 0.0).argmax(1) != ref_components).sum())
    return {"rms": rms(x, ref), "rms_trimmed": float(per_sample.sort().values[:keep].mean().sqrt()),
            "median": float(per_sample.median().sqrt()), "flips": flips}


def reference_ode(eps_fn: MixtureEps, schedule: NoiseSchedule, x_T: torch.Tensor, at_sigmas=None):
    """The probability-flow ODE dx~/dsigma~ = eps*(alpha x~) from t = T-1 to sigma~ = 0 (DOP853): the
    endpoint, or with ``at_sigmas`` (decreasing sigma~ values) the list of x~ states there."""
    from scipy.integrate import solve_ivp
    T = schedule.num_timesteps
    sig_max = schedule.karras_sigma(T - 1.0).item()
    alpha_T = schedule.alpha(T - 1.0).item()
    shape = x_T.shape

    def rhs(s, y):
        a = 1.0 / math.sqrt(1.0 + s * s)
        xt = torch.from_numpy(y).reshape(shape) * a
        return eps_fn(xt, a, s * a).reshape(-1).numpy()

    sol = solve_ivp(rhs, (sig_max, 0.0), (x_T.to(torch.float64) / alpha_T).reshape(-1).numpy(),
                    method="DOP853", rtol=1e-10, atol=1e-10,
                    t_eval=None if at_sigmas is None else [min(float(v), sig_max) for v in at_sigmas])
    if at_sigmas is not None:
        return [torch.from_numpy(sol.y[:, j]).reshape(shape) for j in range(sol.y.shape[1])]
    return torch.from_numpy(sol.y[:, -1]).reshape(shape)


# ---------------------------------------------------------------- diffusers
def diffusers_configs():
    """(label, scheduler class name, constructor kwargs, deterministic?) over reasonable settings."""
    cfg = []
    for sp in ("leading", "trailing", "linspace"):
        cfg.append((f"DDIM[{sp}]", "DDIMScheduler", {"timestep_spacing": sp, "clip_sample": False}, True))
    for sp in ("leading", "trailing", "linspace"):
        cfg.append((f"PNDM-PLMS[{sp}]", "PNDMScheduler", {"skip_prk_steps": True, "timestep_spacing": sp}, True))
    cfg.append(("PNDM-PRK[leading]", "PNDMScheduler", {"skip_prk_steps": False}, True))
    sigmas = {"": {}, ",karras": {"use_karras_sigmas": True}, ",exp": {"use_exponential_sigmas": True},
              ",lu": {"use_lu_lambdas": True}}
    for order in (2, 3):
        for sname, skw in sigmas.items():
            for final in ("zero", "sigma_min"):
                cfg.append((f"DPM++{order}M[{final}{sname}]", "DPMSolverMultistepScheduler",
                            {"solver_order": order, "final_sigmas_type": final, **skw}, True))
        cfg.append((f"DPM{order}M[sigma_min]", "DPMSolverMultistepScheduler",
                    {"solver_order": order, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}, True))
    cfg.append(("DPM++2M-heun[zero,karras]", "DPMSolverMultistepScheduler",
                {"solver_order": 2, "solver_type": "heun", "use_karras_sigmas": True}, True))
    cfg.append(("SDE-DPM++2M[zero,karras]", "DPMSolverMultistepScheduler",
                {"solver_order": 2, "algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}, False))
    cfg.append(("SDE-DPM++3M[zero,karras]", "DPMSolverMultistepScheduler",  # (its D2 weight: docs/samplers.md)
                {"solver_order": 3, "algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}, False))
    for order in (2, 3):
        for sname in ("", ",karras"):
            cfg.append((f"DPM-single{order}[{sname[1:] or 'default'}]", "DPMSolverSinglestepScheduler",
                        {"solver_order": order, **sigmas[sname]}, True))
    for variant in ("bh1", "bh2"):
        for order in (2, 3):
            for sname in ("", ",karras", ",exp"):
                cfg.append((f"UniPC-{variant}-{order}[{sname[1:] or 'default'}]", "UniPCMultistepScheduler",
                            {"solver_type": variant, "solver_order": order, **sigmas[sname]}, True))
    # noise prediction (predict_x0=False), on the DDIM-style grids where eps-space multistep methods
    # such as PLMS do well; diffusers needs final_sigmas_type="sigma_min" there (with "zero" its
    # UniPC step into clean data divides by sigma = 0, and dpmsolver refuses it)
    for variant in ("bh1", "bh2"):
        for order in (2, 3):
            for sp in ("leading", "trailing"):
                cfg.append((f"UniPC-eps-{variant}-{order}[{sp},sigma_min]", "UniPCMultistepScheduler",
                            {"solver_type": variant, "solver_order": order, "predict_x0": False,
                             "timestep_spacing": sp, "final_sigmas_type": "sigma_min"}, True))
    for order in (2, 3):
        cfg.append((f"DPM{order}M[leading,sigma_min]", "DPMSolverMultistepScheduler",
                    {"solver_order": order, "algorithm_type": "dpmsolver", "timestep_spacing": "leading",
                     "final_sigmas_type": "sigma_min"}, True))
    for order in (2, 3):
        for sname in ("", ",karras"):
            cfg.append((f"DEIS-{order}[{sname[1:] or 'default'}]", "DEISMultistepScheduler",
                        {"solver_order": order, **sigmas[sname]}, True))
    for cls, label, det in (("EulerDiscreteScheduler", "Euler", True), ("HeunDiscreteScheduler", "Heun", True),
                            ("LMSDiscreteScheduler", "LMS", True), ("KDPM2DiscreteScheduler", "KDPM2", True),
                            ("EulerAncestralDiscreteScheduler", "EulerA", False),
                            ("KDPM2AncestralDiscreteScheduler", "KDPM2A", False)):
        for sname in ("", ",karras"):
            if not det and sname:  # the stochastic ones (FD only) on their default sigmas
                continue
            cfg.append((f"{label}[{sname[1:] or 'default'}]", cls, dict(sigmas[sname]), det))
    return cfg


OWN_SCHEDULE = ("IPNDMScheduler",)  # schedulers that take no betas (IPNDMScheduler: v-diffusion's trig schedule)


def make_scheduler(cls_name: str, kwargs: dict):
    """The scheduler with the DDPM betas, except those named in :data:`OWN_SCHEDULE` (by name, so that
    a scheduler whose ``__init__`` takes ``**kwargs`` cannot silently run on its default betas)."""
    import diffusers
    return getattr(diffusers, cls_name)(**({} if cls_name in OWN_SCHEDULE else BETAS), **kwargs)


def diffusers_steps_for_nfe(cls_name: str, kwargs: dict, nfe: int):
    """The num_inference_steps whose timestep list has exactly ``nfe`` entries (model calls), or None."""
    for steps in range(1, nfe + 1):
        try:
            sched = make_scheduler(cls_name, kwargs)
            sched.set_timesteps(steps)
        except Exception:
            continue
        if len(sched.timesteps) == nfe:
            return steps
    return None


def run_diffusers(cls_name: str, kwargs: dict, steps: int, x_T: torch.Tensor, eps_fn, generator=None):
    """The usual diffusers loop; eps* is evaluated at the scheduler's own noise level."""
    sched = make_scheduler(cls_name, kwargs)
    sched.set_timesteps(steps)
    acp = sched.alphas_cumprod.to(torch.float64)
    x = x_T * float(sched.init_noise_sigma)
    karras_space = hasattr(sched, "init_noise_sigma") and float(sched.init_noise_sigma) != 1.0
    one = torch.ones(1, dtype=x.dtype)
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t)
        if karras_space:  # x~ space: the input scale is 1/sqrt(sigma~^2 + 1)
            a = float(sched.scale_model_input(one, t)[0])
            alpha, sigma = a, math.sqrt(max(1.0 - a * a, 0.0))
        elif getattr(sched, "sigmas", None) is not None and cls_name not in ("DDIMScheduler", "PNDMScheduler"):
            idx = sched.step_index if sched.step_index is not None else 0
            sk = float(sched.sigmas[idx])
            alpha = 1.0 / math.sqrt(1.0 + sk * sk)
            sigma = sk * alpha
        else:
            abar = float(acp[int(t)])
            alpha, sigma = math.sqrt(abar), math.sqrt(1.0 - abar)
        eps = eps_fn(x_in, alpha, sigma)
        kw = {"generator": generator} if generator is not None else {}
        x = sched.step(eps, t, x, **kw).prev_sample
    return x


# ---------------------------------------------------------------- overhead
OVERHEAD_CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


# diffkit sampler -> the diffusers scheduler (and its options) whose per-step overhead it is timed against
OVERHEAD_PAIRS = {
    "ddim": ("DDIMScheduler", {}), "plms": ("PNDMScheduler", {"skip_prk_steps": True}),
    "dpm-solver++-2m": ("DPMSolverMultistepScheduler", {}),
    "dpm-solver": ("DPMSolverSinglestepScheduler", {"solver_order": 3}),
    "unipc": ("UniPCMultistepScheduler", {}), "euler": ("EulerDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}), "lms": ("LMSDiscreteScheduler", {}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "dpm2": ("KDPM2DiscreteScheduler", {}), "dpm2-ancestral": ("KDPM2AncestralDiscreteScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "sde-dpm-solver++-3m": ("DPMSolverMultistepScheduler", {"solver_order": 3, "solver_type": "heun",
                                                            "algorithm_type": "sde-dpmsolver++"}),
    "dpm-solver++-sde": ("DPMSolverSDEScheduler", {}),
    # a different schedule (v-diffusion's trig one), the same per-step work: AB1-4 on eps
    "ipndm": ("IPNDMScheduler", {}),
    # ancestral DDPM (fixed_small, both): the posterior mean and variance of each step
    "ddpm": ("DDPMScheduler", {})}


def overhead_names(names) -> list:
    """``names`` (default: every key of :data:`OVERHEAD_PAIRS`), checked: a one-line DiffkitError names
    the unknown ones and lists the allowed ones."""
    if names is None:
        return list(OVERHEAD_PAIRS)
    unknown = [name for name in names if name not in OVERHEAD_PAIRS]
    if unknown:
        raise DiffkitError(f"--overhead-samplers: unknown {', '.join(map(repr, unknown))}; "
                           f"allowed: {', '.join(OVERHEAD_PAIRS)}")
    return list(names)


def overhead(repeats: int = 15, clock: str = "wall", names=None) -> dict:
    """Per-step cost with a model that costs nothing (returns zeros), batch 4 x 16: the slope of
    time between 20 and 100 model calls (10 and 50 steps of the two-call samplers), so the
    once-per-run setup (grid, coefficients; set_timesteps) is not counted. Each of ``repeats``
    rounds times the four runs (diffkit and diffusers, few and many steps) once, in a random
    order, and gives one slope per library; the figures are the medians over the rounds (a load
    that comes and goes moves a few rounds, not the median; the best of each run count measured
    apart, as before 5 December 2026, made slopes of 8 and 32 us from one code). ``clock``:
    ``wall`` (time.perf_counter), or ``thread``, this thread's CPU time (time.thread_time; one
    thread with OMP_NUM_THREADS=1): what other processes add by preempting the run is not counted.
    ``names``: only these diffkit samplers (default: every pair). A diffusers counterpart that cannot
    be built here (DPMSolverSDEScheduler needs torchsde) leaves its diffusers columns empty (None)."""
    now = OVERHEAD_CLOCKS[clock]
    schedule = NoiseSchedule.linear()
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    den = Denoiser(zero, schedule)
    x0 = torch.randn(4, 16)
    pairs = {name: OVERHEAD_PAIRS[name] for name in overhead_names(names)}

    def run_diffkit(name, steps):
        t0 = now()
        sample(den, x0, sampler=name, steps=steps, progress=False)
        return now() - t0

    def run_diffusers(cls_name, kw, steps):
        sched = make_scheduler(cls_name, kw)
        t0 = now()
        sched.set_timesteps(steps)
        x = x0 * sched.init_noise_sigma
        for t in sched.timesteps:
            xin = sched.scale_model_input(x, t)
            x = sched.step(zero(xin, t), t, x).prev_sample
        return now() - t0, len(sched.timesteps)

    out = {}
    order = random.Random(0)
    for name, (cls_name, kw) in pairs.items():
        info = REGISTRY[name]
        lo, hi = (10, 50) if info.calls_per_step == 2 else (20, 100)
        try:
            make_scheduler(cls_name, kw)
            libs = ("diffkit", "diffusers")
        except ImportError:  # a scheduler whose extra dependency is not installed
            libs = ("diffkit",)
        runs = [(lib, steps) for lib in libs for steps in (lo, hi)]
        dk_per, df_per, dk_lo, df_lo = [], [], [], []
        for _ in range(repeats):
            took = {}
            for lib, steps in order.sample(runs, len(runs)):
                took[lib, steps] = ((run_diffkit(name, steps), info.nfe(steps)) if lib == "diffkit"
                                    else run_diffusers(cls_name, kw, steps))
            for lib, per, first in (("diffkit", dk_per, dk_lo), ("diffusers", df_per, df_lo))[:len(libs)]:
                (t_lo, n_lo), (t_hi, n_hi) = took[lib, lo], took[lib, hi]
                per.append((t_hi - t_lo) / (n_hi - n_lo))
                first.append((t_lo, n_lo))
        dk = statistics.median(dk_per)
        df = statistics.median(df_per) if df_per else None
        out[name] = {"diffusers": cls_name if df is not None else f"{cls_name} (not installed)",
                     "diffkit_us_per_call": 1e6 * dk,
                     "diffusers_us_per_call": None if df is None else 1e6 * df,
                     "ratio": None if df is None else dk / df,
                     "diffkit_setup_us": 1e6 * statistics.median(t - n * dk for t, n in dk_lo),
                     "diffusers_setup_us": None if df is None else
                     1e6 * statistics.median(t - n * df for t, n in df_lo),
                     "clock": clock, "rounds": repeats}
    return out


# ---------------------------------------------------------------- error analysis
def parse_profile(text: str) -> tuple:
    """``NAME[@SPACING][:FINAL]:NFE`` (the sampler spec of every script, then the NFE) ->
    (name, nfe, spacing or None, final or None); a bad value is a one-line error."""
    spec, _, nfe = text.rpartition(":")
    if not spec or not nfe.isdigit() or int(nfe) < 1:
        raise DiffkitError(f"--profile {text!r}: give NAME[@SPACING][:FINAL]:NFE with NFE >= 1, "
                           "e.g. unipc-3@logsnr_skip:zero:15")
    name, spacing, final = split_sampler_spec(spec)
    get_sampler(name)
    return name, int(nfe), spacing, final


def error_profile(mix_cfg: dict, n: int, sampler: str, nfe: int, spacing=None, final=None, log=print) -> list:
    """Where a sampler's error comes from: the RMS distance (in x~ = x/alpha) between its state after
    each step and the accurate ODE solution at that grid time, from the same noise; plus how much of
    the final squared error the worst 1% of samples carry, and where their error is made (their
    median error after each step), and the bias FD sees: the samples' mean minus the ODE solution's,
    and their variance per dimension as a ratio to its (over- or under-dispersion).
    Returns [(sigma~, rms), ...]."""
    schedule = NoiseSchedule.linear()
    mixture = GaussianMixture.random(mix_cfg["dim"], mix_cfg["components"], seed=mix_cfg["seed"])
    eps_fn = MixtureEps(mixture)
    den = Denoiser(diffkit_network(eps_fn, schedule), schedule, data_scale=mixture.data_scale())
    x_T = starting_noise(n, mixture.dim, NOISE_SEEDS[:1])
    info = REGISTRY[sampler]
    spacing, final = spacing or info.default_spacing, final or info.default_final
    grid = sampler_grid(den, info, nfe=nfe, spacing=spacing, final=final)  # graded at the data scale, as sample()
    sig = schedule.karras_sigma(grid).tolist()
    refs = reference_ode(eps_fn, schedule, x_T, at_sigmas=sig)
    states = []
    x = sample(den, x_T.clone(), sampler=sampler, grid=grid, progress=False,
               callback=lambda d: states.append((d["s"], d["x"].clone())))
    times = grid.tolist()
    err2, order = (x.to(torch.float64) - refs[-1]).pow(2).sum(1).sort(descending=True)
    worst = order[: max(1, n // 100)]
    prof, worst_prof = [], []
    for s_time, xs in states:
        j = times.index(s_time)
        alpha = schedule.alpha(torch.tensor(s_time, dtype=torch.float64)).item() if s_time >= 0 else 1.0
        prof.append((sig[j], rms(xs / alpha, refs[j])))
        worst_prof.append(float((xs[worst].to(torch.float64) / alpha - refs[j][worst]).norm(dim=1).median()))
    top = float(err2[: len(worst)].sum() / err2.sum())
    log(f"{sampler} NFE {nfe} ({spacing}, {final}), mixture {mix_cfg}: final RMS "
        f"{rms(x, refs[-1]):.2e}, worst 1% of samples carry {100 * top:.0f}% of the squared error, median "
        f"error {float(err2.sqrt().median()):.1e}")
    log("  RMS after each step (sigma~: rms): " + " ".join(f"{a:.3g}: {b:.1e}" for a, b in prof))
    xf, rf = x.to(torch.float64), refs[-1]
    spread = (xf.var(0) / rf.var(0)).tolist()
    log(f"  FD {sample_fd(xf, mixture):.2e} (ODE solution {sample_fd(rf, mixture):.2e}); mean - ODE solution's mean "
        + " ".join(f"{v:+.1e}" for v in (xf.mean(0) - rf.mean(0)).tolist()[:8])
        + "; variance / ODE solution's " + " ".join(f"{v:.3f}" for v in spread[:8])
        + (" ..." if len(spread) > 8 else ""))
    log("  worst 1%, median error after each step: " + " ".join(f"{a:.3g}: {b:.1e}"
                                                              for (a, _), b in zip(prof, worst_prof)))
    return prof


# ---------------------------------------------------------------- main
def starting_noise(n: int, dim: int, noise_seeds) -> torch.Tensor:
    """x_T: n float64 normal draws per seed, concatenated (the benchmark's pooled starting noise)."""
    return torch.cat([torch.randn(n, dim, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
                      for seed in noise_seeds])


def benchmark(mix_cfg: dict, n: int, nfes, log, noise_seeds=NOISE_SEEDS) -> dict:
    schedule = NoiseSchedule.linear()
    mixture = GaussianMixture.random(mix_cfg["dim"], mix_cfg["components"], seed=mix_cfg["seed"])
    eps_fn = MixtureEps(mixture)
    # the fast eps* agrees with the library's
    probe = torch.randn(64, mixture.dim, dtype=torch.float64)
    a, s = schedule.alpha(300.0), schedule.sigma(300.0)
    assert torch.allclose(eps_fn(probe, a.item(), s.item()), mixture.eps(probe, a, s), atol=1e-10)
    den = Denoiser(diffkit_network(eps_fn, schedule), schedule, data_scale=mixture.data_scale())
    x_T = starting_noise(n, mixture.dim, noise_seeds)
    total = x_T.shape[0]
    t0 = time.time()
    ref = reference_ode(eps_fn, schedule, x_T)
    ref_components = mixture.class_log_posterior(ref, 1.0, 0.0).argmax(1)
    fd_ref = sample_fd(ref, mixture)
    log(f"  reference ODE: {eps_fn.calls} evaluations, {time.time() - t0:.1f} s, FD = {fd_ref:.5f}, "
        f"FD of {total} true samples = "
        f"{sample_fd(mixture.sample(total, torch.Generator().manual_seed(5))[0], mixture):.5f}")
    rows = []
    for name, info in REGISTRY.items():
        for nfe in nfes:
            try:
                steps = info.steps_for_nfe(nfe)
            except ValueError:
                continue
            gens = [torch.Generator().manual_seed(10_000 + i) for i in range(total)] if info.stochastic else None
            try:  # a grid that this sampler's settings do not fit (restart's interval on too short a grid)
                x = sample(den, x_T.clone(), sampler=name, steps=steps, generator=gens, progress=False)
            except DiffkitError as err:
                log(f"  {name} nfe={nfe}: {err}")
                continue
            fd = sample_fd(x, mixture)
            errors = {} if info.stochastic else endpoint_errors(x, ref, mixture, ref_components)
            rows.append({"lib": "diffkit", "sampler": name, "nfe": nfe, "fd": fd, "excess_fd": fd - fd_ref,
                         "rms": None, **errors, "stochastic": info.stochastic})
    log(f"  diffkit done ({time.time() - t0:.0f} s)")
    for label, cls_name, kw, det in diffusers_configs():
        for nfe in nfes:
            steps = diffusers_steps_for_nfe(cls_name, kw, nfe)
            if steps is None:
                continue
            gen = None if det else torch.Generator().manual_seed(10_000)
            try:
                x = run_diffusers(cls_name, kw, steps, x_T.clone(), eps_fn, gen)
                fd = sample_fd(x, mixture)
            except Exception as err:  # a scheduler setting that diffusers rejects at this NFE
                log(f"  {label} nfe={nfe}: {type(err).__name__}: {str(err)[:80]}")
                continue
            errors = endpoint_errors(x, ref, mixture, ref_components) if det else {}
            rows.append({"lib": "diffusers", "sampler": label, "nfe": nfe, "fd": fd, "excess_fd": fd - fd_ref,
                         "rms": None, **errors, "stochastic": not det})
    log(f"  diffusers done ({time.time() - t0:.0f} s)")
    return {"mixture": mix_cfg, "n": total, "noise_seeds": [int(v) for v in noise_seeds], "fd_reference": fd_ref,
            "rows": rows}


def summarize(result: dict, nfes) -> list:
    """Per NFE: each library's best |excess FD| and best RMS (deterministic samplers)."""
    lines = []
    for nfe in nfes:
        entry = {"nfe": nfe}
        for lib in ("diffkit", "diffusers"):
            rows = [r for r in result["rows"] if r["lib"] == lib and r["nfe"] == nfe and math.isfinite(r["fd"])]
            if not rows:
                continue
            best = min(rows, key=lambda r: abs(r["excess_fd"]))
            det = [r for r in rows if r["rms"] is not None]
            best_rms = min(det, key=lambda r: r["rms"]) if det else None
            entry[lib] = {"best_excess_fd": abs(best["excess_fd"]), "best_fd_sampler": best["sampler"],
                          "best_rms": best_rms["rms"] if best_rms else None,
                          "best_rms_sampler": best_rms["sampler"] if best_rms else None}
            trimmed = [r for r in det if r.get("rms_trimmed") is not None and math.isfinite(r["rms_trimmed"])]
            if trimmed:  # runs before the eighth session did not record it
                best_trim = min(trimmed, key=lambda r: r["rms_trimmed"])
                best_median = min(trimmed, key=lambda r: r["median"])
                entry[lib].update(best_rms_trimmed=best_trim["rms_trimmed"],
                                  best_rms_trimmed_sampler=best_trim["sampler"],
                                  best_rms_trimmed_flips=best_trim["flips"], best_rms_flips=best_rms.get("flips"),
                                  best_median=best_median["median"], best_median_sampler=best_median["sampler"])
        if "diffkit" in entry and "diffusers" in entry:
            entry["fd_ratio"] = entry["diffkit"]["best_excess_fd"] / max(entry["diffusers"]["best_excess_fd"], 1e-300)
            entry["rms_ratio"] = entry["diffkit"]["best_rms"] / entry["diffusers"]["best_rms"]
            if "best_rms_trimmed" in entry["diffkit"] and "best_rms_trimmed" in entry["diffusers"]:
                entry["rms_trimmed_ratio"] = (entry["diffkit"]["best_rms_trimmed"]
                                              / entry["diffusers"]["best_rms_trimmed"])
                entry["median_ratio"] = entry["diffkit"]["best_median"] / entry["diffusers"]["best_median"]
        lines.append(entry)
    return lines


def write_outputs(results, over, nfes, out_dir: Path):
    out_dir.mkdir(parents=True, exist_ok=True)
    for res in results:
        res["summary"] = summarize(res, nfes)
    (out_dir / "samplers.json").write_text(json.dumps({"nfes": list(nfes), "results": results, "overhead": over},
                                                      indent=1))
    md = ["# Sampler benchmark (benchmarks/samplers.py)", ""]
    for res in results:
        m = res["mixture"]
        md += [f"## Mixture dim={m['dim']} components={m['components']} (n={res['n']}, "
               f"noise seeds {', '.join(str(v) for v in res.get('noise_seeds', [res.get('noise_seed')]))}, "
               f"FD of the accurate ODE solution = {res['fd_reference']:.5f})", "",
               "| NFE | diffkit best excess FD | diffusers best excess FD | ratio | diffkit best RMS | "
               "diffusers best RMS | ratio |", "|---|---|---|---|---|---|---|"]
        for e in res["summary"]:
            dk, df = e.get("diffkit"), e.get("diffusers")
            if not dk or not df:
                continue
            md.append(f"| {e['nfe']} | {dk['best_excess_fd']:.2e} ({dk['best_fd_sampler']}) | "
                      f"{df['best_excess_fd']:.2e} ({df['best_fd_sampler']}) | {e['fd_ratio']:.2f} | "
                      f"{dk['best_rms']:.2e} ({dk['best_rms_sampler']}) | {df['best_rms']:.2e} "
                      f"({df['best_rms_sampler']}) | {e['rms_ratio']:.2f} |")
        trimmed = [e for e in res["summary"] if "rms_trimmed_ratio" in e]
        if trimmed:
            md += ["", f"How the RMS is made up: the RMS without the worst {100 * TRIM:g}% of trajectories (with the "
                   "flips, trajectories ending in another component than the accurate solution's, of that sampler), "
                   "the median trajectory's error, and the flips of the best-RMS samplers above:", "",
                   "| NFE | diffkit best trimmed RMS (flips) | diffusers best trimmed RMS (flips) | ratio | "
                   "diffkit best median | diffusers best median | ratio | flips of the best-RMS samplers, "
                   "diffkit / diffusers |", "|---|---|---|---|---|---|---|---|"]
            for e in trimmed:
                dk, df = e["diffkit"], e["diffusers"]
                md.append(f"| {e['nfe']} | {dk['best_rms_trimmed']:.2e} ({dk['best_rms_trimmed_sampler']}, "
                          f"{dk['best_rms_trimmed_flips']}) | {df['best_rms_trimmed']:.2e} "
                          f"({df['best_rms_trimmed_sampler']}, {df['best_rms_trimmed_flips']}) | "
                          f"{e['rms_trimmed_ratio']:.2f} | {dk['best_median']:.1e} ({dk['best_median_sampler']}) | "
                          f"{df['best_median']:.1e} ({df['best_median_sampler']}) | {e['median_ratio']:.2f} | "
                          f"{dk['best_rms_flips']} / {df['best_rms_flips']} |")
        md += ["", "<details><summary>all samplers: excess FD / RMS by NFE</summary>", "",
               "| lib | sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
               "|---|---|" + "---|" * len(nfes)]
        names = []
        for r in res["rows"]:
            if (r["lib"], r["sampler"]) not in names:
                names.append((r["lib"], r["sampler"]))
        for lib, name in names:
            cells = []
            for k in nfes:
                r = next((r for r in res["rows"] if r["lib"] == lib and r["sampler"] == name and r["nfe"] == k), None)
                if r is None:
                    cells.append("-")
                else:
                    cells.append(f"{r['excess_fd']:.1e}" + (f" / {r['rms']:.1e}" if r["rms"] is not None else ""))
            md.append(f"| {lib} | {name} | " + " | ".join(cells) + " |")
        md += ["", "</details>", ""]
    how = next((f"; median of {o['rounds']} rounds, {o['clock']} clock" for o in over.values() if "rounds" in o), "")
    md += [f"## Per-step overhead (model returning zeros, batch 4x16; slope between 20 and 100 calls{how})", "",
           "| diffkit sampler | diffusers scheduler | diffkit us/call | diffusers us/call | ratio | "
           "diffkit setup us | diffusers setup us |", "|---|---|---|---|---|---|---|"]
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)
    for name, o in over.items():
        md.append(f"| {name} | {o['diffusers']} | {o['diffkit_us_per_call']:.1f} | "
                  f"{fmt(o['diffusers_us_per_call'], '.1f')} | {fmt(o['ratio'], '.2f')} | "
                  f"{o['diffkit_setup_us']:.0f} | {fmt(o['diffusers_setup_us'], '.0f')} |")
    (out_dir / "samplers.md").write_text("\n".join(md) + "\n")
    if results:
        _plot(results, nfes, out_dir / "samplers.png")


def _plot(results, nfes, path: Path):
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, res in zip(axes[0], results):
        for lib, style in (("diffkit", "-"), ("diffusers", "--")):
            names = sorted({r["sampler"] for r in res["rows"] if r["lib"] == lib})
            for name in names:
                pts = sorted((r["nfe"], abs(r["excess_fd"])) for r in res["rows"]
                             if r["lib"] == lib and r["sampler"] == name and math.isfinite(r["fd"]))
                if pts:
                    ax.plot(*zip(*pts), style, lw=0.8, alpha=0.5, color="C0" if lib == "diffkit" else "C1")
            best = [(e["nfe"], e[lib]["best_excess_fd"]) for e in res["summary"] if lib in e]
            ax.plot(*zip(*best), style, lw=2.5, color="C0" if lib == "diffkit" else "C1", label=f"{lib} best")
        m = res["mixture"]
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="|FD - FD(accurate ODE)|",
               title=f"mixture d={m['dim']}, K={m['components']}")
        ax.set_xticks(list(nfes), [str(k) for k in nfes])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run_settings(args, parser) -> tuple:
    """(samples per seed, noise seeds, NFEs, mixtures) of a benchmark run's flags. ``--quick``
    shrinks the sizes (2k samples, one mixture, the first default seed); seeds given with
    ``--noise-seeds`` are used as given."""
    n = 2000 if args.quick else args.samples
    try:
        seeds = [int(v) for v in args.noise_seeds.split(",")] if args.noise_seeds else list(NOISE_SEEDS)
    except ValueError:
        parser.error(f"--noise-seeds must be comma-separated integers, got {args.noise_seeds!r}")
    if args.quick and not args.noise_seeds:
        seeds = seeds[:1]
    try:
        nfes = tuple(int(v) for v in args.nfes.split(","))
        if min(nfes) < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--nfes must be comma-separated positive integers, got {args.nfes!r}")
    mixtures = MIXTURES[:1] if args.quick else MIXTURES
    if args.mixtures:
        try:
            mixtures = [MIXTURES[int(i)] for i in args.mixtures.split(",")]
        except (ValueError, IndexError):
            parser.error(f"--mixtures must be comma-separated indices in 0..{len(MIXTURES) - 1}, got {args.mixtures!r}")
    return n, seeds, nfes, mixtures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2k samples, one mixture, and the first noise seed unless --noise-seeds is given")
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--profile", metavar="NAME[@SPACING][:FINAL]:NFE",
                        help="only the error analysis: per-step RMS to the accurate ODE along the grid "
                             "(the 2-d mixture, or --mixture), then exit; e.g. unipc-3@logsnr_skip:zero:15")
    parser.add_argument("--mixture", type=int, default=0, choices=range(len(MIXTURES)),
                        help="mixture index for --profile")
    parser.add_argument("--mixtures", default=None, help="comma-separated mixture indices to run (default: all)")
    parser.add_argument("--noise-seeds",
                        help="comma-separated seeds of the starting noise, --samples draws each, pooled "
                             f"(default {','.join(map(str, NOISE_SEEDS))}); one seed shows how a single draw moves")
    parser.add_argument("--nfes", default=",".join(map(str, NFES)), help="comma-separated NFEs (default: %(default)s)")
    parser.add_argument("--no-overhead", action="store_true", help="skip the per-step overhead measurement")
    parser.add_argument("--overhead-only", action="store_true",
                        help="only the per-step overhead (needs a quiet machine); --merge it with mixture runs")
    parser.add_argument("--overhead-samplers", type=lambda v: v.split(","), default=None, metavar="NAME,...",
                        help="time the overhead of these diffkit samplers only (default: every family)")
    parser.add_argument("--overhead-clock", choices=sorted(OVERHEAD_CLOCKS), default="wall",
                        help="time the overhead by the wall clock (default) or by this thread's CPU time "
                             "(what a loaded machine's other processes add is not counted)")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                        help="only merge the samplers.json of separate runs (e.g. one per mixture) into --out")
    args = parser.parse_args(argv)
    try:
        overhead_names(args.overhead_samplers)
    except DiffkitError as err:
        parser.exit(2, f"error: {err}\n")
    if args.profile:
        try:
            name, nfe, spacing, final = parse_profile(args.profile)
            error_profile(MIXTURES[args.mixture], args.samples if args.samples != 10_000 else 2000, name, nfe,
                          spacing, final)
        except DiffkitError as err:
            parser.exit(2, f"error: {err}\n")
        return
    if args.merge:
        runs = [json.loads(path.read_text()) for path in args.merge]
        results = [res for run in runs for res in run["results"]]
        over = next((run["overhead"] for run in runs if run["overhead"]), {})
        write_outputs(results, over, tuple(sorted({k for run in runs for k in run["nfes"]})), args.out)
        print((args.out / "samplers.md").read_text())
        return
    if args.overhead_only:
        write_outputs([], overhead(clock=args.overhead_clock, names=args.overhead_samplers), NFES, args.out)
        print((args.out / "samplers.md").read_text())
        return
    n, seeds, nfes, mixtures = run_settings(args, parser)
    results = []
    for mix in mixtures:
        print(f"mixture {mix}", flush=True)
        results.append(benchmark(mix, n, nfes, lambda s: print(s, flush=True), seeds))
    over = {} if args.no_overhead else overhead(clock=args.overhead_clock, names=args.overhead_samplers)
    write_outputs(results, over, nfes, args.out)
    print((args.out / "samplers.md").read_text())


if __name__ == "__main__":
    main()
