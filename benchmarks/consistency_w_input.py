"""Sampling cost of LCM's w input against classifier-free guidance (docs/consistency.md).

A w-conditioned consistency model (``consistency_guidance_range``) given w spends one network call
of batch B per step; classifier-free guidance on a consistency model of the same network spends one
call of batch 2B. Times ``--steps`` consistency steps for ``--batch`` samples on the CPU (one
thread; the minimum of ``--repeats``), the w-conditioned model against the plain consistency
function of its teacher under classifier-free guidance (the network without the w input):

    python benchmarks/consistency_w_input.py --w-model runs/lcm/checkpoints --teacher runs/cdemo/checkpoints
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import diffkit  # noqa: E402
from diffkit.consistency import ConsistencyDenoiser  # noqa: E402
from diffkit.guidance import ClassifierFreeGuidance, GuidanceScaleInput  # noqa: E402
from diffkit.loading import load_denoiser  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--w-model", required=True, help="a w-conditioned consistency checkpoint")
    p.add_argument("--teacher", required=True, help="the class-conditional diffusion checkpoint it was distilled from")
    p.add_argument("--w", type=float, default=6.0, help="guidance weight, seed convention (default 6)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    w_model = load_denoiser(args.w_model)
    models = {"w input (batch B)": GuidanceScaleInput(w_model, args.w, trained_range=w_model.guidance_range),
              "classifier-free (batch 2B)": ClassifierFreeGuidance(
                  ConsistencyDenoiser(load_denoiser(args.teacher)), args.w)}
    shape = (args.batch, w_model.meta["unet"]["in_channels"], w_model.meta["unet"]["img_size"],
             w_model.meta["unet"]["img_size"])
    y = torch.arange(args.batch) % w_model.meta["unet"]["num_classes"]
    for name, den in models.items():
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            diffkit.sample(den, shape, sampler="consistency", steps=args.steps, seed=0, cond={"y": y}, progress=False)
            best = min(best, time.perf_counter() - start)
        print(f"{name}: {best:.3f} s for {args.batch} samples, {args.steps} steps")


if __name__ == "__main__":
    main()
