"""GroupNorm [+ SiLU] on channels_last fp32 CPU maps: diffkit's kernel against PyTorch's per shape.

Forward and forward + backward of ``GroupNorm`` (diffkit's group count: 32 groups, at least 4
channels each) and of ``SiLU(GroupNorm(x))``, for diffkit's ``GroupNorm`` with its C++ kernel
(``diffkit.models.group_norm``) and for ``F.group_norm`` [+ ``F.silu``] on the same tensors,
interleaved, median of ``--repeats``. Prints a table and writes ``benchmarks/out/group_norm_layers.json``.

    PYTHONPATH=. python benchmarks/group_norm_layers.py [--threads 2] [--repeats 20] [--batch 16]
        [--bf16 | --bf16-channels-last]

``--bf16``: contiguous bf16 maps under autocast, the layout diffkit's bf16 CPU networks use (the
contiguous kernel; shapes under 128 pixels keep PyTorch's kernel on both sides).
``--bf16-channels-last``: channels_last bf16 maps under autocast (the channels_last kernel).

``--vector-widths`` instead compares two builds of diffkit's kernels on an AVX-512 CPU, with the
AVX2 flags (256-bit vectors) and with the AVX-512 ones the build uses there (512-bit vectors):
GroupNorm + SiLU forward and backward, the kernels called directly, interleaved; writes
``benchmarks/out/group_norm_vector_widths.json``.
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

from diffkit.models.cpu_kernels import cpu_kernels
from diffkit.models.group_norm import GroupNorm
from diffkit.models.layers import norm_groups
from winograd_layers import median_seconds

SHAPES = [(32, 28), (64, 14), (64, 7), (96, 28), (128, 32), (256, 16), (384, 8), (512, 4), (256, 32)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--bf16", action="store_true",
                        help="contiguous bf16 maps under autocast (the layout of bf16 CPU networks)")
    parser.add_argument("--bf16-channels-last", action="store_true",
                        help="channels_last bf16 maps under autocast")
    parser.add_argument("--vector-widths", action="store_true",
                        help="AVX2 against AVX-512 builds of the kernels (an AVX-512 CPU)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.vector_widths:
        return compare_vector_widths(args)
    bf16 = args.bf16 or args.bf16_channels_last
    suffix = "_bf16_channels_last" if args.bf16_channels_last else "_bf16" if args.bf16 else ""
    args.out = args.out or f"benchmarks/out/group_norm_layers{suffix}.json"
    rows = []
    maps = ("channels_last bf16 maps under autocast" if args.bf16_channels_last else
            "contiguous bf16 maps under autocast" if args.bf16 else "channels_last fp32 maps")
    print(f"GroupNorm on {maps}, batch {args.batch}, {args.threads} threads, median of "
          f"{args.repeats} (microseconds; PyTorch / diffkit)")
    print("| C | size | groups | forward | fwd + bwd | + SiLU forward | + SiLU fwd + bwd |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for channels, size in SHAPES:
        groups = norm_groups(channels)
        norm = GroupNorm(groups, channels)
        x = torch.randn(args.batch, channels, size, size)
        x = x.bfloat16() if bf16 else x
        x = x if args.bf16 else x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        if cpu_kernels() is None:
            raise SystemExit("diffkit's CPU kernels are not available here (no compiler, or DIFFKIT_CPU_KERNELS=0)")
        dy = torch.randn_like(x)
        params = (x, norm.weight, norm.bias)
        cells = {}
        for silu in (False, True):
            def torch_forward():
                y = F.group_norm(x, groups, norm.weight, norm.bias, norm.eps)
                return F.silu(y) if silu else y

            def diffkit_forward():
                return norm.forward_silu(x) if silu else norm(x)

            for name, plain_forward in (("torch", torch_forward), ("diffkit", diffkit_forward)):
                def forward(plain_forward=plain_forward):
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        return plain_forward()

                with torch.no_grad():
                    cells[(silu, name, "forward")] = 1e6 * median_seconds(forward, args.repeats)
                both = lambda: torch.autograd.grad(forward(), params, dy)  # noqa: E731
                cells[(silu, name, "both")] = 1e6 * median_seconds(both, args.repeats)
        row = {"channels": channels, "size": size, "groups": groups,
               **{f"{'silu_' if s else ''}{n}_{k}_us": v for (s, n, k), v in cells.items()}}
        rows.append(row)
        print(f"| {channels} | {size}x{size} | {groups} | " + " | ".join(
            f"{cells[(s, 'torch', k)]:.0f} / {cells[(s, 'diffkit', k)]:.0f}"
            for s in (False, True) for k in ("forward", "both")) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "threads": args.threads,
                               "batch": args.batch, "torch": torch.__version__, "rows": rows}, indent=1))
    print(f"wrote {out}")


def compare_vector_widths(args) -> None:
    """GroupNorm + SiLU forward / backward of the AVX2 and the AVX-512 build, interleaved."""
    from diffkit.models.cpu_kernels import _build_name_and_flags, build

    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        raise SystemExit("--vector-widths needs a CPU on which PyTorch uses AVX-512")
    builds = {}
    for capability in ("AVX2", "AVX512"):
        name, flags = _build_name_and_flags(capability)
        builds[capability] = build(name + ("_ab" if capability == "AVX2" else ""), flags)
    rows = []
    print(f"GroupNorm + SiLU kernels, batch {args.batch}, {args.threads} threads, median of {args.repeats} "
          "(microseconds; AVX2 build / AVX-512 build)")
    print("| C | size | groups | forward | backward |")
    print("|---:|---:|---:|---:|---:|")
    for channels, size in SHAPES:
        groups = norm_groups(channels)
        x = torch.randn(args.batch, channels, size, size).contiguous(memory_format=torch.channels_last)
        dy, weight, bias = torch.randn_like(x), torch.randn(channels), torch.randn(channels)
        times = {}
        for _ in range(args.repeats):
            for capability, ext in builds.items():
                start = time.perf_counter()
                _, mean, rstd = ext.group_norm_forward(x, weight, bias, groups, 1e-5, True)
                middle = time.perf_counter()
                ext.group_norm_backward(dy, x, mean, rstd, weight, bias, groups, True)
                end = time.perf_counter()
                times.setdefault((capability, "forward"), []).append(middle - start)
                times.setdefault((capability, "backward"), []).append(end - middle)
        cell = {key: 1e6 * statistics.median(values) for key, values in times.items()}
        rows.append({"channels": channels, "size": size, "groups": groups,
                     **{f"{c.lower()}_{k}_us": v for (c, k), v in cell.items()}})
        print(f"| {channels} | {size}x{size} | {groups} | " + " | ".join(
            f"{cell[('AVX2', k)]:.0f} / {cell[('AVX512', k)]:.0f}" for k in ("forward", "backward")) + " |")
    out = Path(args.out or "benchmarks/out/group_norm_vector_widths.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "threads": args.threads,
                               "batch": args.batch, "torch": torch.__version__, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
