"""diffkit's DPM-Solver++(2M) at few steps against diffusers' DPMSolverMultistepScheduler on a trained model.

Checks that the 85.5 FD of the eps demo model with ``dpm-solver++-2m`` at NFE 5 (BENCHMARKS.md, few-step
subsection) is the method on its grid, not a diffkit bug. For each diffusers configuration (solver_order 2,
``dpmsolver++``, lower_order_final, final_sigmas_type "zero"; ``use_lu_lambdas=True`` is diffkit's default
uniform log-SNR grid, the plain scheduler is ``timestep_spacing="linspace"``) and the diffkit sampler spec that
names the same grid:

* the step-by-step agreement on ``--compare`` samples: diffkit run on diffusers' own sigmas (mapped to continuous
  times) against diffusers' loop with the network called at those same times (the same algorithm agrees to float32
  round-off), and the maximum relative difference of the final samples to diffusers' loop as it is (its network
  sees the rounded integer timesteps);
* the FD-classifier of ``--num`` samples of diffusers' loop as it is (sample i from noise seed i, the noise of
  ``diffkit.evaluation.generate_samples``), next to diffkit's FD from ``benchmarks/flow_few_step.py``.

    PYTHONPATH=. python benchmarks/dpm_solver_diffusers_few_step.py --checkpoint CKPT --evaluator EV
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import diffkit  # noqa: E402
from diffkit.evaluation import sample_shape  # noqa: E402
from diffkit.experiments import experiment_scorer  # noqa: E402
from diffkit.interop import require  # noqa: E402
from diffkit.interop.schedulers import scheduler_config  # noqa: E402
from diffkit.loading import load_denoiser  # noqa: E402
from diffkit.metrics import extract_features, feature_statistics  # noqa: E402
from diffkit.metrics.frechet import frechet_distance_of_stats  # noqa: E402
from diffkit.noise import generators_from_seed, randn  # noqa: E402
from diffkit.sampling import plan  # noqa: E402

# (label, diffusers DPMSolverMultistepScheduler options, diffkit sampler spec on the same grid)
CONFIGS = (("use_lu_lambdas=True", {"use_lu_lambdas": True}, "dpm-solver++-2m"),
           ("timestep_spacing=linspace", {"timestep_spacing": "linspace"}, "dpm-solver++-2m@linspace"))


def make_scheduler(den, steps: int, options: dict):
    """diffusers' DPMSolver++(2M) on the denoiser's betas, ``steps`` steps set."""
    cfg = scheduler_config(den.schedule, den.prediction_type, kind="ddpm")
    keep = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "trained_betas", "prediction_type")
    scheduler = require("diffusers").DPMSolverMultistepScheduler(
        **{k: cfg[k] for k in keep}, solver_order=2, algorithm_type="dpmsolver++", lower_order_final=True,
        final_sigmas_type="zero", thresholding=False, **options)
    scheduler.set_timesteps(steps)
    return scheduler


def diffusers_loop(den, scheduler, x, net_times=None, trajectory=None):
    """diffusers' loop; the network at ``net_times`` (continuous) instead of its timesteps when given."""
    for i, t in enumerate(scheduler.timesteps):
        with torch.no_grad():
            eps = den(x, float(t) if net_times is None else float(net_times[i])).eps
        x = scheduler.step(eps, t, x).prev_sample
        if trajectory is not None:
            trajectory.append(x)
    return x


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="an eps-prediction diffkit checkpoint (the demo model)")
    p.add_argument("--evaluator", required=True, help="diffkit train-evaluator --dataset digits's checkpoint")
    p.add_argument("--steps", type=int, default=5, help="steps = NFE (one call a step)")
    p.add_argument("--num", type=int, default=1000, help="samples scored per configuration")
    p.add_argument("--compare", type=int, default=64, help="samples of the step-by-step comparison")
    p.add_argument("--batch-size", type=int, default=500)
    args = p.parse_args(argv)
    den = load_denoiser(args.checkpoint, device="cpu")
    shape = sample_shape(den.meta["unet"])
    scorer = experiment_scorer("fd-classifier", den, evaluator=args.evaluator, batch_size=args.batch_size)
    schedule = den.schedule
    x_T = randn((args.compare, *shape), generators_from_seed(0, args.compare))
    for label, options, spec in CONFIGS:
        scheduler = make_scheduler(den, args.steps, options)
        sigmas = scheduler.sigmas.to(torch.float64)  # sigma~ = sigma/alpha; the last one 0: clean data
        grid = torch.cat([schedule.t_from_karras_sigma(sigmas[:-1]), torch.tensor([-1.0], dtype=torch.float64)])
        ours, theirs = [], []
        diffkit.sample(den, x_T.clone(), spec, grid=grid, progress=False, callback=lambda d: ours.append(d["x"]))
        diffusers_loop(den, scheduler, x_T.clone(), net_times=grid[:-1], trajectory=theirs)
        print(f"\n{label} ({spec}): diffusers timesteps {scheduler.timesteps.tolist()}, sigma~ "
              + ", ".join(f"{s:.4g}" for s in sigmas.tolist()))
        own_grid = plan(den, spec, nfe=args.steps)[1]
        print("  diffkit's own grid  ", ", ".join(f"{t:.2f}" for t in own_grid.tolist()))
        print("  same times, step by step, max relative difference: "
              + ", ".join(f"{relative(a, b):.1e}" for a, b in zip(ours, theirs)))
        as_is = diffusers_loop(den, make_scheduler(den, args.steps, options), x_T.clone())
        own = diffkit.sample(den, x_T.clone(), spec, nfe=args.steps, progress=False)
        print(f"  diffkit ({spec}, nfe={args.steps}) against diffusers' loop as it is: {relative(own, as_is):.1e}")
        images = []
        for start in range(0, args.num, args.batch_size):
            n = min(args.batch_size, args.num - start)
            x = randn((n, *shape), generators_from_seed(start, n))
            images.append(diffusers_loop(den, make_scheduler(den, args.steps, options), x).clamp(-1, 1))
        features = extract_features(scorer.evaluator.features_and_logits, torch.cat(images), args.batch_size, "cpu",
                                    progress=False)[0]
        fd = frechet_distance_of_stats(feature_statistics(features), scorer.reference_classifier)
        print(f"  FD-classifier of diffusers' loop, {args.num} samples: {fd:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
