"""The bias of inpainting by replacement (``diffkit.inpaint``; docs/editing.md), measured on
correlated 2-D Gaussian data with the exact model (:mod:`diffkit.analytic`), where the right
answer is the Gaussian conditional.

Data N(mu, S), mu = (0.2, -0.1), S = 0.25 [[1, rho], [rho, 1]]; dim 0 kept at x_k = 0.6, dim 1
repainted. The exact conditional is N(mu_u + S_uk/S_kk (x_k - mu_k), S_uu - S_uk^2/S_kk); the
unconditional marginal N(mu_u, S_uu). For each sampler: the unconditional sample's moments (the
sampler's own error) and the repainted dim's; then DDPM with RePaint's resampling; then reconstruction
guidance (Ho et al. 2022, Sec. 3.1; ``inpaint(..., reconstruction_weight=w)``) at several weights.

    python benchmarks/inpainting_bias.py [--n 4000] [--rho 0.9]

Prints a markdown table (seconds on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RUNS = [("ddpm", 1000), ("ddpm", 100), ("euler-ancestral", 100), ("ddim", 1000), ("ddim", 100),
        ("unipc", 20), ("dpm-solver++-2m", 20), ("heun", 50)]
RESAMPLED = [(50, 5, 1), (50, 5, 2), (50, 5, 5), (50, 5, 10), (100, 10, 10)]  # ddpm: steps, jump_length, jump_n_sample
GUIDED = [(sampler, 50, w) for sampler in ("ddpm", "ddim") for w in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--rho", type=float, default=0.9)
    parser.add_argument("--known", type=float, default=0.6)
    args = parser.parse_args()
    import torch

    import diffkit
    from diffkit import Denoiser, NoiseSchedule
    from diffkit.analytic import GaussianMixture

    schedule = NoiseSchedule.linear(1000)
    mu = torch.tensor([0.2, -0.1], dtype=torch.float64)
    cov = 0.25 * torch.tensor([[1.0, args.rho], [args.rho, 1.0]], dtype=torch.float64)
    den = Denoiser(GaussianMixture([1.0], mu[None], cov[None]).network(schedule), schedule)
    known = torch.zeros(args.n, 2, dtype=torch.float64)
    known[:, 0] = args.known
    mask = torch.tensor([0.0, 1.0])
    cond_mean = mu[1] + cov[0, 1] / cov[0, 0] * (args.known - mu[0])
    cond_var = cov[1, 1] - cov[0, 1] ** 2 / cov[0, 0]
    print(f"exact conditional: mean {cond_mean:.3f}, var {cond_var:.4f}; marginal: mean {mu[1]:.3f}, "
          f"var {cov[1, 1]:.4f}; n = {args.n} (standard error of the mean ~{(cov[1, 1] / args.n) ** 0.5:.3f})\n")
    print("| sampler | steps | unconditional mean | unconditional var | repainted mean | repainted var |")
    print("| --- | --- | --- | --- | --- | --- |")
    for sampler, steps in RUNS:
        unc = diffkit.sample(den, (args.n, 2), sampler, steps, generator=torch.Generator().manual_seed(1),
                             progress=False, dtype=torch.float64)[:, 1]
        out = diffkit.inpaint(den, known, mask, sampler, steps, generator=torch.Generator().manual_seed(0),
                              progress=False, value_range=None)[:, 1]
        print(f"| {sampler} | {steps} | {unc.mean():.3f} | {unc.var():.4f} | {out.mean():.3f} | {out.var():.4f} |")
    print("\nRePaint resampling (ddpm):\n\n| steps | jump_length | jump_n_sample | network calls | repainted mean "
          "| repainted var |\n| --- | --- | --- | --- | --- | --- |")
    for steps, jump_length, jump_n_sample in RESAMPLED:
        den.reset_nfe()
        out = diffkit.inpaint(den, known, mask, "ddpm", steps, jump_length=jump_length, jump_n_sample=jump_n_sample,
                              generator=torch.Generator().manual_seed(0), progress=False, value_range=None)[:, 1]
        print(f"| {steps} | {jump_length} | {jump_n_sample} | {den.nfe} | {out.mean():.3f} | {out.var():.4f} |")
    print("\nReconstruction guidance:\n\n| sampler | steps | weight w | repainted mean | repainted var |\n"
          "| --- | --- | --- | --- | --- |")
    for sampler, steps, weight in GUIDED:
        out = diffkit.inpaint(den, known, mask, sampler, steps, reconstruction_weight=weight,
                              generator=torch.Generator().manual_seed(0), progress=False, value_range=None)[:, 1]
        print(f"| {sampler} | {steps} | {weight:g} | {out.mean():.3f} | {out.var():.4f} |")


if __name__ == "__main__":
    main()
