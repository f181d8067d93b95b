"""diffkit's convolution choices at the MNIST network's shapes, per layer (issue 8).

For each convolution shape of ``benchmarks/speed_configs.py``'s ``mnist`` U-Net (batch 16, fp32):
forward + backward of ``F.conv2d`` in channels_last (diffkit's CPU layout) and contiguous, and,
for 3x3 layers on sides that are multiples of 4, Winograd F(4x4, 3x3) (``winograd_conv3x3``,
forced on, whatever its rule says), interleaved, medians of ``--repeats`` (process CPU time with
``--threads 1``, the steadier figure on a shared machine; wall time otherwise). Writes
``benchmarks/out/mnist_conv_choices.json``.

    PYTHONPATH=. python benchmarks/mnist_conv_choices.py [--threads 1] [--repeats 15]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from diffkit.models.winograd import winograd_available, winograd_conv3x3

# (in channels, out channels, side, kernel) of the mnist U-Net's convolutions
SHAPES = [(32, 32, 28, 3), (64, 32, 28, 3), (96, 32, 28, 3), (64, 64, 28, 3), (64, 64, 14, 3), (128, 64, 14, 3),
          (64, 64, 7, 3), (128, 64, 7, 3), (96, 32, 28, 1), (32, 1, 28, 3)]


def _layer(cin: int, cout: int, side: int, kernel: int, layout: torch.memory_format, winograd: bool):
    x = torch.randn(16, cin, side, side).contiguous(memory_format=layout).requires_grad_()
    w = (torch.randn(cout, cin, kernel, kernel) / (kernel * cin ** 0.5)).contiguous(memory_format=layout)
    w.requires_grad_()
    b = torch.zeros(cout, requires_grad=True)
    grad = torch.randn(16, cout, side, side).contiguous(memory_format=layout)
    if winograd:
        return lambda: winograd_conv3x3(x, w, b).backward(grad)
    return lambda: F.conv2d(x, w, b, padding=kernel // 2).backward(grad)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default="benchmarks/out/mnist_conv_choices.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    rows = []
    print(f"forward + backward, batch 16, fp32, {args.threads} thread(s), ms (median of {args.repeats}); "
          "ratios: time / channels_last direct time, median of the per-repeat ratios")
    for cin, cout, side, kernel in SHAPES:
        calls = {"channels_last": _layer(cin, cout, side, kernel, torch.channels_last, False),
                 "contiguous": _layer(cin, cout, side, kernel, torch.contiguous_format, False)}
        if kernel == 3 and side % 4 == 0 and winograd_available():
            calls["winograd"] = _layer(cin, cout, side, kernel, torch.channels_last, True)
        for call in calls.values():
            call(), call()
        times = {name: [] for name in calls}
        for _ in range(args.repeats):
            for name, call in calls.items():
                start = clock()
                call(), call()
                times[name].append((clock() - start) / 2)
        row = {"in": cin, "out": cout, "side": side, "kernel": kernel,
               "ms": {name: 1e3 * statistics.median(t) for name, t in times.items()},
               "ratio": {name: statistics.median(a / b for a, b in zip(t, times["channels_last"]))
                         for name, t in times.items() if name != "channels_last"}}
        rows.append(row)
        print(f"{cin:4d} -> {cout:3d} {kernel}x{kernel} at {side}x{side}: "
              + ", ".join(f"{name} {ms:.2f}" + (f" ({row['ratio'][name]:.2f}x)" if name in row["ratio"] else "")
                          for name, ms in row["ms"].items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**vars(args), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
