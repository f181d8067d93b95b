"""Training-step speed: diffkit's UNet vs diffusers' UNet2DModel of the same shape, on the CPU.

Both networks are built in the seed 000 configuration (32x32x3, channel 128, channel_mult
[1, 2, 3, 4], attention at level 2 (8x8) and in the middle with one head, 2 residual blocks
per level, dropout 0.15) and timed, interleaved in one run, for one forward + backward pass
(MSE against a fixed target) on a batch of 32, in train mode. Prints a table of medians (wall
and process CPU time) and writes ``benchmarks/out/unet_speed.json``.

    python benchmarks/unet_speed.py [--threads 2] [--batch 32] [--repeats 7]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from diffkit.models import UNet, UNetConfig, num_parameters

SEED_MODEL_CONFIG = {"channel": 128, "channel_mult": [1, 2, 3, 4], "attn": [2], "num_res_blocks": 2,
                     "dropout": 0.15, "img_size": 32}


def diffusers_unet():
    """diffusers' UNet2DModel with the seed's shape: attention (one head) at the third level."""
    from diffusers import UNet2DModel
    return UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 384, 512),
        layers_per_block=2, dropout=0.15, attention_head_dim=None, norm_num_groups=32,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    )


def training_step_seconds(model, call, x, t, target) -> tuple[float, float]:
    """Wall time and process CPU time of one forward + backward pass.

    The CPU time (summed over threads) is less disturbed than the wall time when other
    processes share the cores."""
    model.zero_grad(set_to_none=True)
    start, start_cpu = time.perf_counter(), time.process_time()
    loss = F.mse_loss(call(model, x, t), target)
    loss.backward()
    return time.perf_counter() - start, time.process_time() - start_cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "unet_speed.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=generator)
    t = torch.randint(0, 1000, (args.batch,), generator=generator).float()
    target = torch.randn(args.batch, 3, 32, 32, generator=generator)
    x_cl, target_cl = (v.contiguous(memory_format=torch.channels_last) for v in (x, target))

    ours = UNet(UNetConfig(**SEED_MODEL_CONFIG)).train()
    theirs = diffusers_unet().train()
    theirs_cl = diffusers_unet().train().to(memory_format=torch.channels_last)
    runs = {  # the diffkit UNet computes in channels_last itself; diffusers is shown both ways
        "diffkit UNet": (ours, lambda m, x, t: m(x, t), x, target),
        "diffusers UNet2DModel": (theirs, lambda m, x, t: m(x, t).sample, x, target),
        "diffusers UNet2DModel, channels_last": (theirs_cl, lambda m, x, t: m(x, t).sample, x_cl, target_cl),
    }
    wall = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    for rep in range(args.warmup + args.repeats):
        for name, (model, call, xx, tgt) in runs.items():  # interleaved: drift hits all alike
            seconds, cpu_seconds = training_step_seconds(model, call, xx, t, tgt)
            if rep >= args.warmup:
                wall[name].append(seconds)
                cpu[name].append(cpu_seconds)

    reference = statistics.median(wall["diffusers UNet2DModel"])
    reference_cpu = statistics.median(cpu["diffusers UNet2DModel"])
    rows = []
    for name, (model, *_rest) in runs.items():
        median, median_cpu = statistics.median(wall[name]), statistics.median(cpu[name])
        rows.append({"model": name, "parameters": num_parameters(model), "median_s": median,
                     "min_s": min(wall[name]), "images_per_s": args.batch / median,
                     "speedup_vs_diffusers": reference / median, "median_cpu_s": median_cpu,
                     "cpu_speedup_vs_diffusers": reference_cpu / median_cpu,
                     "wall_s": wall[name], "cpu_s": cpu[name]})
    print(f"forward+backward, batch {args.batch} x 3x32x32, {args.threads} CPU threads, "
          f"median of {args.repeats} (after {args.warmup} warm-up); speedups relative to diffusers' default")
    print(f"{'model':38s} {'params':>11s} {'wall s':>7s} {'img/s':>6s} {'speedup':>8s} {'cpu s':>7s} {'speedup':>8s}")
    for r in rows:
        print(f"{r['model']:38s} {r['parameters']:11,d} {r['median_s']:7.2f} {r['images_per_s']:6.2f} "
              f"{r['speedup_vs_diffusers']:7.2f}x {r['median_cpu_s']:7.2f} {r['cpu_speedup_vs_diffusers']:7.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "batch": args.batch, "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup,
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "config": SEED_MODEL_CONFIG, "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
