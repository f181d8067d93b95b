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

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import torch  # noqa: E402

import mixture_probe as probe  # noqa: E402
import samplers as bench  # noqa: E402
from flip_anatomy import continue_ode  # noqa: E402
from diffkit import sample  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.samplers import REGISTRY  # noqa: E402
from diffkit.sampling import sampler_grid  # noqa: E402


def main(argv=None):
    p = probe.Parser(description=__doc__.split("\n")[0])
    p.add_argument("--mixture", type=int, default=1, choices=range(len(bench.MIXTURES)))
    p.add_argument("--specs", nargs="+", default=[])
    p.add_argument("--all", type=probe.nfe_list, default=None, metavar="NFES",
                   help="comma-separated NFEs: every deterministic sampler")
    p.add_argument("--samples", type=probe.positive_int, default=10_000, help="per noise seed")
    p.add_argument("--cache", type=Path, default=None, help="file to keep the reference ODE solution in")
    args = p.parse_args(argv)
    cfg, schedule, mixture, eps_fn, den = probe.mixture_setup(args.mixture)
    diffusers = probe.deterministic_diffusers()
    specs = list(args.specs)
    try:
        if not specs and not args.all:
            raise DiffkitError("give --specs SPEC ... or --all NFES")
        for spec in specs:
            if "=" in spec:
                label, nfe = spec.rsplit("=", 1)
                if not nfe.isdigit() or int(nfe) < 1:
                    raise DiffkitError(f"{spec!r}: give LABEL=NFE with an NFE >= 1, e.g. 'PNDM-PLMS[leading]=20'")
                probe.check_diffusers_label(label, int(nfe), diffusers)
            else:
                probe.check_diffkit_spec(den, spec)
        for nfe in args.all or ():
            mine, theirs = probe.all_deterministic_specs(den, nfe, diffusers)
            specs += mine + [f"{label}={nfe}" for label in theirs]
        x_T = bench.starting_noise(args.samples, mixture.dim, bench.NOISE_SEEDS)
        ref = probe.reference(args.cache, args.mixture, args.samples, eps_fn, schedule, x_T)
    except DiffkitError as err:
        p.exit(2, f"error: {err}\n")
    ref_comp = mixture.class_log_posterior(ref, 1.0, 0.0).argmax(1)
    own = {}
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


if __name__ == "__main__":
    main()
