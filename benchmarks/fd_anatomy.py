"""What a sampler's excess FD on a Gaussian mixture is made of, against the accurate ODE solution.

FD compares only the samples' mean and covariance with the mixture's, so one number mixes three
things a sampler can get wrong: trajectories that end in another component (*flips*), the spread
of each component (within-component variance), and where each component's samples sit (their mean,
shifted outward or inward). Errors of opposite sign cancel in the global covariance, so a sampler
that is far from the ODE solution can still have a small FD. For each sampler this prints the
excess FD, the RMS and flips, the excess FD left when the flipped trajectories are replaced by the
ODE endpoints, and per component (by the ODE endpoint's component) the change of the trace of the
covariance and the outward shift of the mean, over the trajectories that did not flip.

``--gaussian`` instead prints the error of the *variance* a sampler gives Gaussian data N(0, s^2)
(one dimension), against the closed form of the ODE map (``analytic.gaussian_ode_solution``): the
sampler is linear there, so one trajectory says it all.

    PYTHONPATH=. python benchmarks/fd_anatomy.py --mixture 0 --nfe 10
        --samplers "unipc,unipc:zero,plms-3,UniPC-bh2-3[default]"
    PYTHONPATH=. python benchmarks/fd_anatomy.py --gaussian --nfe 10 --samplers unipc,unipc:zero,dpm-solver++-3m

Sampler names are diffkit's ``NAME[@SPACING][:FINAL]`` or the labels of diffusers settings in
``benchmarks/samplers.py`` (with the optional ``diffusers`` extra). A diagnostic, not a CI test.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import torch  # noqa: E402

import samplers as bench  # noqa: E402
from diffkit import Denoiser, NoiseSchedule, sample  # noqa: E402
from diffkit.analytic import GaussianMixture, gaussian_ode_solution  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.samplers.registry import get_sampler, split_sampler_spec  # noqa: E402

GAUSSIAN_STDS = (0.1, 0.2, 0.35, 0.5, 1.0, 2.0)


def run_sampler(spec: str, den: Denoiser, x_T: torch.Tensor, eps_fn, nfe: int) -> torch.Tensor:
    """A diffkit ``NAME[@SPACING][:FINAL]`` or a diffusers setting's label, spending ``nfe`` calls."""
    diffusers = {label: (cls, kw) for label, cls, kw, det in bench.diffusers_configs() if det}
    if spec in diffusers:
        cls, kw = diffusers[spec]
        steps = bench.diffusers_steps_for_nfe(cls, kw, nfe)
        if steps is None:
            raise DiffkitError(f"{spec} cannot spend exactly nfe={nfe}")
        try:
            return bench.run_diffusers(cls, kw, steps, x_T.clone(), eps_fn)
        except ImportError:
            raise DiffkitError(f"{spec} is a diffusers setting; install the optional extra: "
                               "pip install -e '.[diffusers]'") from None
    name, spacing, final = split_sampler_spec(spec)
    if get_sampler(name).stochastic:
        raise DiffkitError(f"{name!r} is stochastic; compare deterministic samplers with the ODE solution")
    return sample(den, x_T.clone(), sampler=name, nfe=nfe, spacing=spacing, final=final, progress=False)


def mixture_anatomy(mix_index: int, specs, nfe: int, n: int, log=print) -> list:
    cfg = bench.MIXTURES[mix_index]
    schedule = NoiseSchedule.linear()
    mixture = GaussianMixture.random(cfg["dim"], cfg["components"], seed=cfg["seed"])
    eps_fn = bench.MixtureEps(mixture)
    den = Denoiser(bench.diffkit_network(eps_fn, schedule), schedule, data_scale=mixture.data_scale())
    x_T = bench.starting_noise(n, mixture.dim, bench.NOISE_SEEDS)
    ref = bench.reference_ode(eps_fn, schedule, x_T)
    fd_ref = bench.sample_fd(ref, mixture)
    ref_comp = mixture.class_log_posterior(ref, 1.0, 0.0).argmax(1)
    center = mixture.mean()
    log(f"mixture {cfg}, {x_T.shape[0]} samples, NFE {nfe}, FD of the ODE solution {fd_ref:.2e}")
    rows = []
    for spec in specs:
        x = run_sampler(spec, den, x_T, eps_fn, nfe).to(torch.float64)
        kept = mixture.class_log_posterior(x, 1.0, 0.0).argmax(1) == ref_comp
        unflipped = torch.where(kept[:, None], x, ref)
        within, shift = [], []
        for k in range(mixture.num_components):
            m = (ref_comp == k) & kept
            if int(m.sum()) < 3:
                within.append(float("nan"))
                shift.append(float("nan"))
                continue
            within.append(float(torch.cov(x[m].T).trace() / torch.cov(ref[m].T).trace()) - 1)
            outward = ref[m].mean(0) - center
            shift.append(float((x[m].mean(0) - ref[m].mean(0)) @ outward / outward.norm()))
        row = {"sampler": spec, "excess_fd": bench.sample_fd(x, mixture) - fd_ref,
               "excess_fd_without_flips": bench.sample_fd(unflipped, mixture) - fd_ref,
               "rms": bench.rms(x, ref), "flips": int((~kept).sum()), "within_variance": within,
               "outward_shift": shift}
        rows.append(row)
        log(f"{spec:36s} excess FD {row['excess_fd']:+.2e} (without flips {row['excess_fd_without_flips']:+.2e}), "
            f"RMS {row['rms']:.2e}, flips {row['flips']}")
        log(f"{'':36s} within-component variance " + " ".join(f"{v * 100:+.0f}%" for v in within))
        log(f"{'':36s} outward shift of the means " + " ".join(f"{v:+.3f}" for v in shift))
    return rows


def gaussian_variance_errors(spec: str, nfe: int, stds=GAUSSIAN_STDS) -> list:
    """Relative error of the output variance for data N(0, s^2), per s (unit-scale graded grid)."""
    schedule = NoiseSchedule.linear()
    T = schedule.num_timesteps
    x_T = torch.ones(1, 1, dtype=torch.float64)
    errors = []
    for s in stds:
        gaussian = GaussianMixture([1.0], [[0.0]], [[[s * s]]])
        eps_fn = bench.MixtureEps(gaussian)
        den = Denoiser(bench.diffkit_network(eps_fn, schedule), schedule)
        exact = gaussian_ode_solution(gaussian.means[0], gaussian.covs[0], x_T, schedule.alpha(T - 1.0),
                                      schedule.sigma(T - 1.0), 1.0, 0.0)
        out = run_sampler(spec, den, x_T, eps_fn, nfe)
        errors.append(float(out / exact) ** 2 - 1)
    return errors


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samplers", required=True, help="comma-separated diffkit NAME[@SPACING][:FINAL] or diffusers "
                   "labels (labels with commas: separate with ';')")
    p.add_argument("--nfe", type=int, default=10)
    p.add_argument("--mixture", type=int, default=0, choices=range(len(bench.MIXTURES)))
    p.add_argument("--samples", type=int, default=10_000, help="noise vectors per seed (3 seeds, pooled)")
    p.add_argument("--gaussian", action="store_true", help="the variance error on Gaussian data instead")
    args = p.parse_args(argv)
    specs = [s.strip() for s in args.samplers.split(";" if ";" in args.samplers else ",") if s.strip()]
    torch.set_num_threads(1)
    try:
        if args.gaussian:
            print(f"variance error on N(0, s^2) data at NFE {args.nfe}; s = " + ", ".join(map(str, GAUSSIAN_STDS)))
            for spec in specs:
                errors = gaussian_variance_errors(spec, args.nfe)
                print(f"{spec:36s} " + " ".join(f"{e * 100:+7.2f}%" for e in errors))
        else:
            mixture_anatomy(args.mixture, specs, args.nfe, args.samples)
    except DiffkitError as err:
        p.exit(2, f"error: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
