"""Winograd F(2x2, 3x3) for bf16 convolutions on the CPU: a planar prototype and the package's path (issue 8).

The bf16 training cells of issue 8 are bounded by 3x3 convolutions that already run at the bf16
units' peak (``benchmarks/conv_roofline.py``); F(2x2, 3x3) needs 2.25x fewer multiplications
and its transforms have only 0, +-1 and +-1/2 as coefficients. This script builds the prototype
transforms of ``benchmarks/prototypes/winograd_2x2_bf16.cpp`` (planar kernels for the contiguous
layout bf16 networks without diffkit's kernels run in) and prints:

1. accuracy: relative error against float64 of the output, the input gradient and the weight
   gradient, for the direct bf16 convolution and for F(2x2, 3x3) with bf16 transformed tiles,
   bf16 products (oneDNN's bf16 batched product rounds its output to bf16) and float transforms;
2. speed per layer (batch 16, 2 threads, median): the direct bf16 convolution (contiguous and
   channels_last) against F(2x2, 3x3), forward and forward + backward: the planar prototype, and
   the package's channels_last path (``diffkit.models.winograd``, opt-in ``DIFFKIT_BF16_WINOGRAD=1``),
   with the time of each part (transforms, batched products).

    PYTHONPATH=. python benchmarks/winograd_bf16_prototype.py [--repeats 9]
        [--out benchmarks/out/winograd_bf16_prototype.json]

Findings are in docs/performance.md ("What bounds the cells still under 1.3x").
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
import torch.nn.functional as F

from winograd_layers import median_seconds

from diffkit.models.cpu_kernels import cpu_kernels
from diffkit.models.winograd import WinogradConv2d, set_bf16_winograd_enabled

HERE = Path(__file__).resolve().parent
G = torch.tensor([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], dtype=torch.float64)  # Lavin & Gray 4.1
KRON = torch.kron(G, G).float()  # (16, 9): vec(G g G^T) = KRON vec(g)
WORKSPACE = 1 << 23  # bf16 values per transformed-tile buffer (16 MiB)


def build():
    from torch.utils.cpp_extension import load

    from diffkit.models.cpu_kernels import _build_name_and_flags
    _, flags = _build_name_and_flags()
    return load("diffkit_winograd_2x2_prototype", [str(HERE / "prototypes" / "winograd_2x2_bf16.cpp")],
                extra_cflags=["-O3", "-std=c++20", *flags], verbose=False)


class Planar:
    """F(2x2, 3x3) on contiguous (N, C, H, W) bf16 maps; buffers reused between calls."""

    def __init__(self, ext):
        self.ext, self.buffers = ext, {}

    def buffer(self, slot, shape):
        numel = shape[0] * shape[1] * shape[2]
        buf = self.buffers.get(slot)
        if buf is None or buf.numel() < numel:
            buf = self.buffers[slot] = torch.empty(max(numel, WORKSPACE), dtype=torch.bfloat16)
        return buf[:numel].view(shape)

    @staticmethod
    def weight(w):  # (Co, Ci, 3, 3) -> (16, Co, Ci) bf16, transformed in float
        co, ci = w.shape[:2]
        return (KRON @ w.float().permute(2, 3, 0, 1).reshape(9, co * ci)).view(16, co, ci).bfloat16()

    def images_per_chunk(self, n, channels, tiles):
        return max(1, min(n, WORKSPACE // (16 * channels * tiles)))

    def conv(self, x, u, bias=None):
        n, ci, h, w = x.shape
        co, tiles = u.shape[1], (h // 2) * (w // 2)
        y = torch.empty(n, co, h, w, dtype=torch.bfloat16)
        step = self.images_per_chunk(n, max(ci, co), tiles)
        for n0 in range(0, n, step):
            k = min(step, n - n0)
            v, m = self.buffer(0, (16, ci, k * tiles)), self.buffer(1, (16, co, k * tiles))
            self.ext.input_transform_2x2(x, v, n0)
            torch.bmm(u, v, out=m)
            self.ext.output_transform_2x2(m, y, n0, bias)
        return y

    def weight_grad(self, x, dy):
        n, ci, h, w = x.shape
        co, tiles = dy.shape[1], (h // 2) * (w // 2)
        du = torch.zeros(16, co, ci)
        step = self.images_per_chunk(n, max(ci, co), tiles)
        for n0 in range(0, n, step):
            k = min(step, n - n0)
            v, dm = self.buffer(0, (16, ci, k * tiles)), self.buffer(1, (16, co, k * tiles))
            self.ext.input_transform_2x2(x, v, n0)
            self.ext.output_gradient_transform_2x2(dy, dm, n0)
            du += torch.bmm(dm, v.transpose(1, 2)).float()
        return (KRON.T @ du.view(16, co * ci)).view(3, 3, co, ci).permute(2, 3, 0, 1)

    def forward_backward(self, x, w, dy):
        self.conv(x, self.weight(w))
        self.conv(dy, self.weight(w.flip(2, 3).transpose(0, 1)))
        self.weight_grad(x, dy)


def median_ms(fn, repeats):
    return 1e3 * median_seconds(fn, repeats)


def accuracy(planar):
    rows = []
    torch.manual_seed(0)
    for channels, size in [(128, 32), (256, 16), (384, 8)]:
        x = torch.randn(4, channels, size, size, dtype=torch.float64)
        w = torch.randn(channels, channels, 3, 3, dtype=torch.float64) / (3 * channels ** 0.5)
        dy = torch.randn(4, channels, size, size, dtype=torch.float64)
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        exact = F.conv2d(xr, wr, padding=1)
        exact.backward(dy)
        xb, wb, dyb = x.bfloat16().requires_grad_(), w.bfloat16().requires_grad_(), dy.bfloat16()
        direct = F.conv2d(xb, wb, padding=1)
        direct.backward(dyb)
        rel = lambda a, ref: ((a.double() - ref).norm() / ref.norm()).item()  # noqa: E731
        wino = planar.conv(xb.detach(), planar.weight(w))
        dx = planar.conv(dyb, planar.weight(w.flip(2, 3).transpose(0, 1)))
        dw = planar.weight_grad(xb.detach(), dyb)
        row = {"channels": channels, "size": size,
               "direct": [rel(direct, exact), rel(xb.grad, xr.grad), rel(wb.grad, wr.grad)],
               "winograd_2x2": [rel(wino, exact), rel(dx, xr.grad), rel(dw, wr.grad)]}
        rows.append(row)
        print(f"{channels} ch {size}x{size}: relative error y / dx / dw: direct bf16 "
              + " / ".join(f"{e:.1e}" for e in row["direct"]) + ", F(2x2, 3x3) "
              + " / ".join(f"{e:.1e}" for e in row["winograd_2x2"]))
    return rows


def speed(ext, planar, repeats):
    rows = []
    print("\n| C | size | direct fwd NCHW / CL | F(2,3) fwd planar / CL | direct fwd+bwd NCHW / CL "
          "| F(2,3) fwd+bwd planar / CL | planar parts: in / out / grad transform, product (ms) |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for channels, size in [(128, 32), (256, 16), (256, 8), (384, 8), (64, 16)]:
        x = torch.randn(16, channels, size, size).bfloat16()
        w = torch.randn(channels, channels, 3, 3) / (3 * channels ** 0.5)
        dy = torch.randn(16, channels, size, size).bfloat16()
        times = {}
        for layout, fmt in (("nchw", torch.contiguous_format), ("cl", torch.channels_last)):
            xr = x.contiguous(memory_format=fmt).requires_grad_()
            wr = w.bfloat16().contiguous(memory_format=fmt).requires_grad_()
            dyr = dy.contiguous(memory_format=fmt)

            def fwd():
                with torch.no_grad():
                    F.conv2d(xr, wr, padding=1)

            def fwd_bwd():
                torch.autograd.grad(F.conv2d(xr, wr, padding=1), (xr, wr), dyr)
            times[f"direct_fwd_{layout}"] = median_ms(fwd, repeats)
            times[f"direct_fwd_bwd_{layout}"] = median_ms(fwd_bwd, repeats)
        times["planar_fwd"] = median_ms(lambda: planar.conv(x, planar.weight(w)), repeats)
        times["planar_fwd_bwd"] = median_ms(lambda: planar.forward_backward(x, w, dy), repeats)
        tiles = 16 * (size // 2) ** 2
        v = torch.empty(16, channels, tiles, dtype=torch.bfloat16)
        m = torch.randn(16, channels, tiles).bfloat16()
        y = torch.empty_like(x)
        u = planar.weight(w)
        times["planar_in"] = median_ms(lambda: ext.input_transform_2x2(x, v, 0), repeats)
        times["planar_out"] = median_ms(lambda: ext.output_transform_2x2(m, y, 0, None), repeats)
        times["planar_grad"] = median_ms(lambda: ext.output_gradient_transform_2x2(dy, v, 0), repeats)
        times["planar_product"] = median_ms(lambda: torch.bmm(u, v, out=m), repeats)
        # channels_last: the package's path (diffkit.models.winograd, F2), as a network runs it
        package = cpu_kernels()
        conv = WinogradConv2d(channels, channels, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
        with torch.no_grad():
            conv.weight.copy_(w)
        xc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
        dyc = dy.contiguous(memory_format=torch.channels_last)
        set_bf16_winograd_enabled(True)
        try:
            def cl_fwd():
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                    conv(xc)

            def cl_fwd_bwd():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = conv(xc)
                torch.autograd.grad(y, (xc, conv.weight), dyc)
            times["cl_fwd"] = median_ms(cl_fwd, repeats)
            times["cl_fwd_bwd"] = median_ms(cl_fwd_bwd, repeats)
        finally:
            set_bf16_winograd_enabled(False)
        xh = x.permute(0, 2, 3, 1).contiguous()
        vh = torch.empty(16, tiles, channels, dtype=torch.bfloat16)
        yh = torch.empty_like(xh)
        times["cl_in"] = median_ms(lambda: package.input_transform_2x2(xh, vh, 0), repeats)
        times["cl_out"] = median_ms(lambda: package.output_transform_2x2(vh, yh, 0, None), repeats)
        rows.append({"channels": channels, "size": size, **times})
        t = times
        cells = [f"{t['direct_fwd_nchw']:.2f} / {t['direct_fwd_cl']:.2f}", f"{t['planar_fwd']:.2f} / {t['cl_fwd']:.2f}",
                 f"{t['direct_fwd_bwd_nchw']:.2f} / {t['direct_fwd_bwd_cl']:.2f}",
                 f"{t['planar_fwd_bwd']:.2f} / {t['cl_fwd_bwd']:.2f}",
                 f"{t['planar_in']:.2f} / {t['planar_out']:.2f} / {t['planar_grad']:.2f}, {t['planar_product']:.2f} "
                 f"(CL in / out {t['cl_in']:.2f} / {t['cl_out']:.2f})"]
        print(f"| {channels} | {size}x{size} | " + " | ".join(cells) + " |", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/out/winograd_bf16_prototype.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ext = build()
    planar = Planar(ext)
    result = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "accuracy": accuracy(planar), "speed": speed(ext, planar, args.repeats)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
