"""Which step of a sampler makes the trajectories that flip to another mixture component.

On a Gaussian mixture the RMS distance to the accurate ODE endpoint is carried by a few dozen
trajectories that start near a boundary between two components' basins (docs/samplers.md, "How
the RMS cells are made up"). For the worst 1% of trajectories (by final error) this script takes
the sampler's state after each step, x_k at sigma~_k, and solves the probability-flow ODE from
there to sigma~ = 0 accurately (DOP853, rtol = atol = 1e-10): the endpoint that the state x_k
*commits to*. Its distance to the accurate endpoint from x_T is the error the first k steps have
made; its growth from step to step says which steps create the final error, and the step at
which the committed endpoint first lies in another component than the accurate one is where the
flip is decided (the last row is the sampler's output itself). It also prints between which
components the flips go and the share of the squared error each pair carries.

    PYTHONPATH=. python benchmarks/flip_anatomy.py --mixture 1 --specs unipc-eps:20,unipc-3:20

Each spec is ``NAME[@SPACING][:FINAL]:NFE`` (as ``samplers.py --profile``). The pooled noise of the
benchmark (seeds 1234, 99, 7777; ``--samples`` per seed) and its reference ODE solution are used.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import torch  # noqa: E402

import mixture_probe as probe  # noqa: E402
import samplers as bench  # noqa: E402
from diffkit import sample  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.samplers import REGISTRY  # noqa: E402
from diffkit.sampling import sampler_grid  # noqa: E402


def continue_ode(eps_fn, x_tilde: torch.Tensor, sigma: float) -> torch.Tensor:
    """Solve dx~/dsigma~ = eps*(alpha x~) from (sigma, x_tilde) to sigma~ = 0 (DOP853, 1e-10)."""
    from scipy.integrate import solve_ivp
    if sigma <= 0:
        return x_tilde.to(torch.float64)
    shape = x_tilde.shape

    def rhs(s, y):
        a = 1.0 / math.sqrt(1.0 + s * s)
        return eps_fn(torch.from_numpy(y).reshape(shape) * a, a, s * a).reshape(-1).numpy()

    sol = solve_ivp(rhs, (sigma, 0.0), x_tilde.to(torch.float64).reshape(-1).numpy(), method="DOP853",
                    rtol=1e-10, atol=1e-10)
    return torch.from_numpy(sol.y[:, -1]).reshape(shape)


def anatomy(spec: str, den, eps_fn, mixture, x_T, ref, ref_comp, worst_share=0.01, log=print) -> dict:
    name, nfe, spacing, final = bench.parse_profile(spec)
    info = REGISTRY[name]
    spacing, final = spacing or info.default_spacing, final or info.default_final
    schedule = den.schedule
    grid = sampler_grid(den, info, nfe=nfe, spacing=spacing, final=final)
    states = []
    x = sample(den, x_T.clone(), sampler=name, grid=grid, progress=False,
               callback=lambda d: states.append((float(d["s"]), d["x"].clone())))
    err = bench.endpoint_errors(x, ref, mixture, ref_comp)
    per = (x.to(torch.float64) - ref).pow(2).sum(1)
    total = float(per.sum())
    comp = mixture.class_log_posterior(x.to(torch.float64), 1.0, 0.0).argmax(1)
    flipped = comp != ref_comp
    n_w = max(1, int(worst_share * x.shape[0]))
    worst = per.argsort(descending=True)[:n_w]
    log(f"{spec} ({spacing}, {final}): RMS {err['rms']:.3e}, flips {err['flips']}, "
        f"flips carry {100 * float(per[flipped].sum()) / total:.0f}% of the squared error, "
        f"worst {n_w} carry {100 * float(per[worst].sum()) / total:.0f}%")
    pairs = {}
    for i in flipped.nonzero().flatten().tolist():
        key = tuple(sorted((int(ref_comp[i]), int(comp[i]))))
        count, part = pairs.get(key, (0, 0.0))
        pairs[key] = (count + 1, part + float(per[i]) / total)
    means = mixture.means.to(torch.float64)
    log("  flips by pair of components (distance between their means): " + "; ".join(
        f"{a}-{b} ({float((means[a] - means[b]).norm()):.2f}): {c} carrying {100 * part:.0f}%"
        for (a, b), (c, part) in sorted(pairs.items())))
    rows = []
    prev = 0.0
    for s_time, xs in states:
        if s_time < 0:
            sig, committed = 0.0, xs[worst].to(torch.float64)
        else:
            tt = torch.tensor(s_time, dtype=torch.float64)
            sig = schedule.karras_sigma(tt).item()
            committed = continue_ode(eps_fn, xs[worst].to(torch.float64) / schedule.alpha(tt).item(), sig)
        e2 = (committed - ref[worst]).pow(2).sum(1)
        c = mixture.class_log_posterior(committed, 1.0, 0.0).argmax(1)
        nflip = int((c != ref_comp[worst]).sum())
        share = float(e2.sum()) / total
        rows.append({"sigma": sig, "share": share, "flips": nflip})
        log(f"  after the step to sigma~ {sig:7.4f}: committed endpoint carries {100 * share:5.1f}% of the "
            f"total squared error (+{100 * (share - prev):5.1f}), {nflip:3d} of the worst {n_w} committed "
            f"to another component")
        prev = share
    return {"spec": spec, "spacing": spacing, "final": final, **err, "rows": rows,
            "pairs": {f"{a}-{b}": v for (a, b), v in pairs.items()}}


def main(argv=None):
    p = probe.Parser(description=__doc__.split("\n")[0])
    p.add_argument("--mixture", type=int, default=1, choices=range(len(bench.MIXTURES)))
    p.add_argument("--specs", required=True, help="comma-separated NAME[@SPACING][:FINAL]:NFE")
    p.add_argument("--samples", type=probe.positive_int, default=10_000, help="per noise seed (default %(default)s)")
    p.add_argument("--cache", type=Path, default=None, help="file to keep the reference ODE solution in")
    args = p.parse_args(argv)
    cfg, schedule, mixture, eps_fn, den = probe.mixture_setup(args.mixture)
    specs = args.specs.split(",")
    try:
        for spec in specs:
            probe.check_diffkit_spec(den, spec)
        x_T = bench.starting_noise(args.samples, mixture.dim, bench.NOISE_SEEDS)
        t0 = time.time()
        ref = probe.reference(args.cache, args.mixture, args.samples, eps_fn, schedule, x_T)
    except DiffkitError as err:
        p.exit(2, f"error: {err}\n")
    print(f"mixture {cfg}: {x_T.shape[0]} trajectories, reference {time.time() - t0:.0f} s")
    ref_comp = mixture.class_log_posterior(ref, 1.0, 0.0).argmax(1)
    for spec in specs:
        anatomy(spec, den, eps_fn, mixture, x_T, ref, ref_comp)


if __name__ == "__main__":
    main()
