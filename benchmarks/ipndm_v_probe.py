"""iPNDM-v (ComfyUI's k-diffusion ``sample_ipndm_v``, from zju-pi/diff-sampler's diff-solvers) beside
``ipndm`` and ``lms``: the evidence for docs/samplers.md, "Not registered: ipndm-v".

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/ipndm_v_probe.py [--out JSON]

iPNDM-v's step is x~' = x~ + h_n sum_j c_j d_{i-j} (sigma~ variables, d = eps, newest first) with
h_n = sigma_{i+1} - sigma_i, h_k = sigma_{i-k+1} - sigma_{i-k}, ratios rho_k = h_{k-1}/h_k (rho_1 =
h_n/h_1) and, as the source computes them,

    order 2:  c = (1 + rho_1/2, -rho_1/2)
    order 3:  a = (1 - h_n/(3(h_n + h_1)) * P) / 2,   P = h_n (h_n + h_1) / (h_1 (h_1 + h_2))
              c = order-2 c + (a, -(1 + h_1/h_2) a, (h_1/h_2) a)
    order 4:  b = ((1 - h_n/(3(h_n + h_1)))/2 + (1 - h_n/(2(h_n + h_1))) h_n/(6(h_n + h_1 + h_2)))
                  * h_n (h_n + h_1)(h_n + h_1 + h_2) / (h_1 (h_1 + h_2)(h_1 + h_2 + h_3)),
              B = h_1 (h_1 + h_2) / (h_2 (h_2 + h_3)),
              c = order-3 c + (b, -(1 + h_1/h_2 + B) b, (h_1/h_2 + B (1 + h_2/h_3)) b, -B (h_1/h_2) b)

(the step to sigma = 0 is Euler, x~ -> D, ComfyUI's branch). Written here from the formulas, run
through diffkit's own multistep loop (``karras._sigma_multistep``, which ``ipndm`` and ``lms`` use).
It prints: (1) the equal-step order-4 weights against AB4's; (2) the order-4 weight sum, which is
1 + b B (h_2/h_3 - h_1/h_2) (not 1 off a grid geometric in sigma~); (3) the order-3 weight as
written and with the parenthesis closed after h_n/(3(h_n + h_1)), against ``lms(order=3)``'s exact
variable-step AB3 weights; (4) the RMS error on 4-d Gaussian data (64 samples, exact eps*, float64)
against 1000-step ``lms`` on the same kind of grid, on Karras grids ending at sigma_min (t = 0) and
at zero. A grid to zero ends with the step sigma_min -> 0 whatever the step count (Euler in
iPNDM(-v), AB over it in the ``lms`` reference), an N-independent error floor, so the orders are
read on the sigma_min grids.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from diffkit import Denoiser, NoiseSchedule
from diffkit.analytic import GaussianMixture
from diffkit.samplers.karras import _sigma_multistep, ipndm, lms, lms_coefficients
from diffkit.samplers.pndm import PLMS_COEFFICIENTS
from diffkit.timesteps import make_grid

F64 = torch.float64
STEPS = (16, 32, 64, 128, 256)


def ipndm_v_weights(sigmas, i: int, order: int, closed_parenthesis: bool = False) -> list:
    """iPNDM-v's c_j times h_n for the step sigmas[i] -> sigmas[i+1] (module doc); with
    ``closed_parenthesis`` the order-3 (and the order-4 step's order-3 part) weight a reads
    (1 - h_n/(3(h_n + h_1))) P / 2."""
    h = sigmas[i + 1] - sigmas[i]
    if sigmas[i + 1] == 0.0 or order == 1:
        return [h]
    h1 = sigmas[i] - sigmas[i - 1]
    r1 = h / h1
    c = [1 + r1 / 2, -r1 / 2]
    if order >= 3:
        h2 = sigmas[i - 1] - sigmas[i - 2]
        p = h * (h + h1) / (h1 * (h1 + h2))
        third = h / (3 * (h + h1))
        a = (1 - third) * p / 2 if closed_parenthesis else (1 - third * p) / 2
        c = [c[0] + a, c[1] - (1 + h1 / h2) * a, (h1 / h2) * a]
    if order == 4:
        h3 = sigmas[i - 2] - sigmas[i - 3]
        b = (((1 - h / (3 * (h + h1))) / 2 + (1 - h / (2 * (h + h1))) * h / (6 * (h + h1 + h2)))
             * h * (h + h1) * (h + h1 + h2) / (h1 * (h1 + h2) * (h1 + h2 + h3)))
        big = h1 * (h1 + h2) / (h2 * (h2 + h3))
        c = [c[0] + b, c[1] - (1 + h1 / h2 + big) * b, c[2] + (h1 / h2 + big * (1 + h2 / h3)) * b,
             -big * (h1 / h2) * b]
    return [h * w for w in c]


def ipndm_v(den, x, grid, order=4, closed_parenthesis=False):
    weights = lambda s, i, k: ipndm_v_weights(s, i, k, closed_parenthesis)  # noqa: E731
    return _sigma_multistep(den, x, grid, "ipndm-v", weights, order, None, None, False)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    S = NoiseSchedule.linear()
    out = {}

    # (1) equal steps: the order-4 weights (c_j, since h_n = h multiplies them) against AB4's
    eq = [w / -1.0 for w in ipndm_v_weights([10.0, 9.0, 8.0, 7.0, 6.0], 3, 4)]
    out["equal_step_order4"] = {"ipndm_v": eq, "ab4": PLMS_COEFFICIENTS[4]}
    print("(1) equal-step order-4 weights x24:", [round(24 * w, 9) for w in eq], "AB4:",
          [round(24 * w, 9) for w in PLMS_COEFFICIENTS[4]])

    # (2) the order-4 weight sums (over h_n): Karras grids of STEPS steps and a 32-step log-SNR grid, to sigma_min
    for spacing, counts in (("karras", STEPS), ("logsnr", (32,))):
        worst, formula = [], 0.0
        for n in counts:
            sig = S.karras_sigma(make_grid(S, n, spacing, final="sigma_min")).tolist()
            dev = []
            for i in range(3, len(sig) - 1):
                w = ipndm_v_weights(sig, i, 4)
                h, h1, h2, h3 = (sig[i + 1] - sig[i], sig[i] - sig[i - 1], sig[i - 1] - sig[i - 2],
                                 sig[i - 2] - sig[i - 3])
                big = h1 * (h1 + h2) / (h2 * (h2 + h3))
                b = -w[3] / h / (big * h1 / h2)
                dev.append((sum(w) / h - 1, b * big * (h2 / h3 - h1 / h2)))
            worst.append(max(abs(d) for d, _ in dev))
            formula = max(formula, max(abs(d - f) for d, f in dev))
        out[f"order4_weight_sum_minus_1_{spacing}"] = {"steps": list(counts), "max_abs": worst}
        print(f"(2) {spacing}, steps {'/'.join(map(str, counts))}: max |sum c_j - 1| = "
              + " / ".join(f"{v:.1e}" for v in worst) + f"; distance to b B (h2/h3 - h1/h2): {formula:.1e}")

    # (3) the order-3 weights against lms(order=3)'s exact variable-step AB3 on a Karras grid
    sig = S.karras_sigma(make_grid(S, 32, "karras", final="sigma_min")).tolist()
    for closed in (False, True):
        diff = max(abs(a - b) / abs(sig[i + 1] - sig[i]) for i in range(2, len(sig) - 1)
                   for a, b in zip(ipndm_v_weights(sig, i, 3, closed), lms_coefficients(sig, i, 3)))
        key = "closed_parenthesis" if closed else "as_written"
        out[f"order3_weights_minus_ab3_{key}"] = diff
        print(f"(3) order-3 weights {key}: max |c_j - AB3_j| = {diff:.2e}")

    # (4) RMS error against 1000-step lms on 4-d Gaussian data
    gm = GaussianMixture.random(dim=4, num_components=1, seed=4)
    den = Denoiser(gm.network(S), S)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    runs = {"ipndm_v order 4": lambda g: ipndm_v(den, x.clone(), g, 4),
            "ipndm_v order 3": lambda g: ipndm_v(den, x.clone(), g, 3),
            "ipndm_v order 3, parenthesis closed": lambda g: ipndm_v(den, x.clone(), g, 3, True),
            "ipndm": lambda g: ipndm(den, x.clone(), g),
            "lms": lambda g: lms(den, x.clone(), g),
            "lms order 3": lambda g: lms(den, x.clone(), g, order=3)}
    for final in ("sigma_min", "zero"):
        ref = lms(den, x.clone(), make_grid(S, 1000, "karras", final=final))
        table = {name: [(run(make_grid(S, n, "karras", final=final)) - ref).pow(2).mean().sqrt().item()
                        for n in STEPS] for name, run in runs.items()}
        out[f"rms_vs_lms1000_karras_{final}"] = {"steps": list(STEPS), **table}
        print(f"\n(4) Karras grid to {final}: RMS against 1000-step lms, steps {'/'.join(map(str, STEPS))}")
        for name, errs in table.items():
            slopes = [math.log2(a / b) for a, b in zip(errs[:-1], errs[1:])]
            print(f"  {name:36s} " + " / ".join(f"{e:.1e}" for e in errs)
                  + "   log2 ratios " + " ".join(f"{s:.1f}" for s in slopes))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
