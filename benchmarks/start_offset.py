"""How much of a sampler's RMS to the accurate ODE endpoint is its grid's start.

The benchmark's exact answer is the probability-flow ODE from x_T at t = T-1. A grid that starts
lower (the DDIM linear grid and diffusers' ``leading`` spacing start at t = floor((S-1) T/S), e.g.
950 for S = 20) takes x_T as the state there, i.e. solves the ODE from another starting point. For
each ``NAME[@SPACING][:FINAL]:NFE`` (diffkit) or diffusers label (``samplers.diffusers_configs``)
with ``=NFE`` this prints: the first grid time t0; the RMS and flips of the accurate endpoint from
x_T taken at t0 (the start's own error, no solver error); the sampler's RMS and flips against the
accurate endpoint from t = T-1 (the benchmark's figure) and against the accurate endpoint of its own
starting point (the solver's error). Pooled benchmark noise, one mixture.

    PYTHONPATH=. python benchmarks/start_offset.py --mixture 1 --specs unipc-eps:20 "PNDM-PLMS[leading]=20"

``--all 15,20`` instead runs every deterministic diffkit sampler (registered defaults) and every
deterministic diffusers setting of the benchmark at those NFEs and prints each library's best RMS
both ways: to the benchmark's answer (issue 4's cell) and to the exact endpoint of its own start.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import torch  # noqa: E402

import samplers as bench  # noqa: E402
from flip_anatomy import continue_ode  # noqa: E402
from diffkit import Denoiser, NoiseSchedule, sample  # noqa: E402
from diffkit.analytic import GaussianMixture  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.samplers import REGISTRY  # noqa: E402
from diffkit.sampling import sampler_grid  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mixture", type=int, default=1, choices=range(len(bench.MIXTURES)))
    p.add_argument("--specs", nargs="+", default=[])
    p.add_argument("--all", default=None, metavar="NFES", help="comma-separated NFEs: every deterministic sampler")
    p.add_argument("--samples", type=int, default=10_000, help="per noise seed")
    p.add_argument("--cache", type=Path, default=None, help="file to keep the reference ODE solution in")
    args = p.parse_args(argv)
    diffusers = {label: (cls, kw) for label, cls, kw, det in bench.diffusers_configs() if det}
    for spec in args.specs:
        try:
            if "=" in spec:
                label, nfe = spec.rsplit("=", 1)
                if label not in diffusers or not nfe.isdigit():
                    raise DiffkitError(f"{spec!r}: give LABEL=NFE with a deterministic diffusers label of "
                                       f"samplers.diffusers_configs, e.g. 'PNDM-PLMS[leading]=20'")
            else:
                bench.parse_profile(spec)
        except DiffkitError as err:
            p.exit(2, f"error: {err}\n")
    cfg = bench.MIXTURES[args.mixture]
    schedule = NoiseSchedule.linear()
    mixture = GaussianMixture.random(cfg["dim"], cfg["components"], seed=cfg["seed"])
    eps_fn = bench.MixtureEps(mixture)
    den = Denoiser(bench.diffkit_network(eps_fn, schedule), schedule, data_scale=mixture.data_scale())
    x_T = bench.starting_noise(args.samples, mixture.dim, bench.NOISE_SEEDS)
    if args.cache is not None and args.cache.exists():
        ref = torch.load(args.cache)
    else:
        ref = bench.reference_ode(eps_fn, schedule, x_T)
        if args.cache is not None:
            torch.save(ref, args.cache)
    ref_comp = mixture.class_log_posterior(ref, 1.0, 0.0).argmax(1)
    own = {}
    specs = list(args.specs)
    if args.all:
        for nfe in (int(v) for v in args.all.split(",")):
            specs += [f"{name}:{nfe}" for name, info in REGISTRY.items()
                      if not info.stochastic and not info.adaptive and _spends(info, nfe)]
            specs += [f"{label}={nfe}" for label, (cls, kw) in diffusers.items()
                      if bench.diffusers_steps_for_nfe(cls, kw, nfe) is not None]
    best = {}
    print(f"mixture {cfg}, {x_T.shape[0]} trajectories; RMS (flips)")
    for spec in specs:
        lib = "diffusers" if "=" in spec else "diffkit"
        if "=" in spec:
            label, nfe = spec.rsplit("=", 1)
            cls, kw = diffusers[label]
            steps = bench.diffusers_steps_for_nfe(cls, kw, int(nfe))
            sched = bench.make_scheduler(cls, kw)
            sched.set_timesteps(steps)
            t0 = float(sched.timesteps[0])
            x = bench.run_diffusers(cls, kw, steps, x_T.clone(), eps_fn)
        else:
            name, nfe, spacing, final = bench.parse_profile(spec)
            grid = sampler_grid(den, REGISTRY[name], nfe=nfe, spacing=spacing, final=final)
            t0 = float(grid[0])
            x = sample(den, x_T.clone(), sampler=name, grid=grid, progress=False)
        nfe = int(nfe)
        if t0 not in own:
            tt = torch.tensor(t0, dtype=torch.float64)
            own[t0] = continue_ode(eps_fn, x_T / schedule.alpha(tt).item(), schedule.karras_sigma(tt).item())
        start = bench.endpoint_errors(own[t0], ref, mixture, ref_comp)
        total = bench.endpoint_errors(x, ref, mixture, ref_comp)
        solver = bench.endpoint_errors(x, own[t0], mixture)
        print(f"{spec:38s} t0 {t0:6.1f}: start alone {start['rms']:.2e} ({start['flips']}), "
              f"sampler vs the benchmark's answer {total['rms']:.2e} ({total['flips']}), "
              f"vs its own start's {solver['rms']:.2e} ({solver['flips']})")
        for key, value in (("answer", total["rms"]), ("own", solver["rms"])):
            if value == value and value < best.get((lib, nfe, key), (float("inf"),))[0]:
                best[(lib, nfe, key)] = (value, spec)
    for nfe in sorted({k[1] for k in best}):
        for key, what in (("answer", "the benchmark's answer (from t = T-1)"), ("own", "its own start's")):
            mine, theirs = best.get(("diffkit", nfe, key)), best.get(("diffusers", nfe, key))
            if mine and theirs:
                print(f"NFE {nfe}, RMS to {what}: diffkit best {mine[0]:.2e} ({mine[1]}), diffusers best "
                      f"{theirs[0]:.2e} ({theirs[1]}), ratio {mine[0] / theirs[0]:.2f}")


def _spends(info, nfe: int) -> bool:
    try:
        info.steps_for_nfe(nfe)
    except ValueError:
        return False
    return True


if __name__ == "__main__":
    main()
