"""Where Winograd pays: diffkit's fp32 F(4x4, 3x3) (or, ``--variant f2``, F(2x2, 3x3)) against ``F.conv2d`` per layer.

Forward + backward of one 3x3 convolution (C -> C channels, batch 16, fp32, channels_last, the
layout diffkit trains in on the CPU), Winograd on and off in the same process, interleaved,
median of ``--repeats``. The rule in ``diffkit/models/winograd.py`` (``winograd_applies``) was
read off this table; shapes outside the rule are timed too (the path is forced on for every cell).
Prints a table and writes ``benchmarks/out/winograd_layers.json``.

    PYTHONPATH=. python benchmarks/winograd_layers.py [--threads 2] [--repeats 5]
    PYTHONPATH=. python benchmarks/winograd_layers.py --variant f2 --sizes 6,10,14,18 --threads 1 --clock cpu

F(2x2, 3x3) is timed on even sides that F(4x4, 3x3) cannot tile (``--sizes`` that are multiples of 4 are
skipped for it, as odd ones are); ``--clock cpu`` times process CPU time (with ``--threads 1``: the
steadier figure on a shared machine).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from diffkit.models import winograd


def bf16_errors():
    """Why the path stays off in bf16: relative error against float64 of a bf16 direct convolution
    (bf16 inputs, exact sums) and of Winograd with its transformed tiles and weights rounded to bf16
    (the products summed in fp32, as a bf16 matrix product would)."""
    import torch.nn.functional as F
    ext = winograd._extension()
    torch.manual_seed(0)
    for channels, size in [(128, 32), (256, 16)]:
        x = torch.randn(4, channels, size, size)
        w = torch.randn(channels, channels, 3, 3) / (3 * channels ** 0.5)
        exact = F.conv2d(x.double(), w.double(), padding=1)
        direct = F.conv2d(x.bfloat16().double(), w.bfloat16().double(), padding=1)
        xh = x.permute(0, 2, 3, 1).contiguous()
        v = torch.empty(36, 4 * (size // 4) ** 2, channels)
        ext.input_transform(xh, v, 0)
        m = torch.bmm(v.bfloat16().float(), winograd._weight_transform(w, winograd.F4).bfloat16().float())
        y = torch.empty_like(xh)
        ext.output_transform(m, y, 0)
        rel = lambda t: ((t.double() - exact).norm() / exact.norm()).item()  # noqa: E731
        print(f"bf16, {channels} channels at {size}x{size}: direct convolution {rel(direct):.1e}, "
              f"Winograd {rel(y.permute(0, 3, 1, 2)):.1e} relative error")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--sizes", default="8,12,16,28,32")
    parser.add_argument("--channels", default="32,64,96,128,256,384,512")
    parser.add_argument("--variant", choices=("f4", "f2"), default="f4")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--out", default="benchmarks/out/winograd_layers.json")
    args = parser.parse_args(argv)
    if not winograd.winograd_available():
        raise SystemExit("the Winograd kernels could not be built here (see the warning above)")
    if args.variant == "f4":
        bf16_errors()
    torch.set_num_threads(args.threads)
    tile = 4 if args.variant == "f4" else 2
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def seconds(fn):
        fn()
        start = clock()
        fn()
        return clock() - start

    rows = []
    print(f"3x3 convolution C -> C, batch {args.batch}, fp32 channels_last, F({tile}x{tile}, 3x3), "
          f"{args.threads} threads, forward + backward, {args.clock} time, median of {args.repeats} (ms)")
    print("| C | size | F.conv2d | Winograd | speed-up | used by default |")
    print("|---:|---:|---:|---:|---:|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        for channels in (int(c) for c in args.channels.split(",")):
            if size % tile or (tile == 2 and size % 4 == 0) or channels * size * size > 256 * 32 * 32:
                continue
            cl = torch.channels_last
            conv = winograd.WinogradConv2d(channels, channels, 3, padding=1).to(memory_format=cl)
            x = torch.randn(args.batch, channels, size, size).contiguous(memory_format=cl).requires_grad_()
            dy = torch.randn(args.batch, channels, size, size).contiguous(memory_format=cl)
            default = winograd.winograd_applies(conv, x)

            def direct():
                conv._conv_forward(x, conv.weight, conv.bias).backward(dy)

            def fast():
                if tile == 4:
                    winograd.winograd_conv3x3(x, conv.weight, conv.bias).backward(dy)
                else:
                    winograd._WinogradConv3x3.apply(x, conv.weight, conv.bias, winograd.F2_FP32).backward(dy)

            t_direct, t_fast = [], []
            for _ in range(args.repeats):
                t_direct.append(seconds(direct))
                t_fast.append(seconds(fast))
            d, w = statistics.median(t_direct), statistics.median(t_fast)
            rows.append({"channels": channels, "size": size, "direct_s": d, "winograd_s": w, "speedup": d / w,
                         "default": default})
            print(f"| {channels} | {size}x{size} | {d * 1e3:.1f} | {w * 1e3:.1f} | {d / w:.2f}x | "
                  f"{'yes' if default else 'no'} |", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                               "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                               "threads": args.threads, "batch": args.batch, "variant": args.variant,
                               "clock": args.clock, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
