"""How close the CPU's convolutions already run to the machine's peak, fp32 and bf16 (issue 8).

The convolutions are the same oneDNN kernels in diffkit and diffusers, so a training step can only
be much faster than diffusers' if the rest of the step is cut or the convolutions do fewer
multiplications. This prints, for the 3x3 convolutions of the benchmark networks (batch 16),
the rate of a forward convolution in GFLOP/s (2 x multiply-adds / time) next to the rate of a
large matrix product of the same precision (what the machine's vector units reach), and the rate
of the same convolution written as one matrix product of its unfolded input (im2col), the
obvious alternative. ``--winograd23`` adds the probe of Winograd F(2x2, 3x3) in bf16 (Lavin &
Gray 2016; transforms with coefficients 0, +-1/2, +-1 only): its error against float64 next to
the direct bf16 convolution's, and the time of its 16 batched bf16 matrix products alone against
the direct convolution.

    PYTHONPATH=. python benchmarks/conv_roofline.py [--threads 2] [--repeats 10] [--winograd23]

Writes ``benchmarks/out/conv_roofline.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
import torch.nn.functional as F

from winograd_layers import median_seconds

# (channels in = out, map side): the seed / CIFAR-10 / MNIST networks' levels
SHAPES = [(128, 32), (256, 16), (256, 32), (512, 8), (64, 14), (32, 28)]


def im2col_product(x_nhwc: torch.Tensor, weight_matrix: torch.Tensor, side: int) -> torch.Tensor:
    """3x3 convolution (padding 1) as one matrix product of the unfolded channels_last input."""
    padded = F.pad(x_nhwc, (0, 0, 1, 1, 1, 1))
    columns = torch.cat([padded[:, i:i + side, j:j + side, :] for i in range(3) for j in range(3)], dim=-1)
    return columns.reshape(-1, columns.shape[-1]) @ weight_matrix


def winograd23(x: torch.Tensor, w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """F(2x2, 3x3) of float64 ``x``, ``w`` with the transformed tiles and weights rounded to
    ``dtype`` and their products summed in float32 (as a bf16 matrix product does)."""
    bt = torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=torch.float64)
    g = torch.tensor([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], dtype=torch.float64)
    at = torch.tensor([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=torch.float64)
    n, c, side, _ = x.shape
    tiles = F.pad(x, (1, 1, 1, 1)).unfold(2, 4, 2).unfold(3, 4, 2)  # (n, c, side/2, side/2, 4, 4)
    v = torch.einsum("ij,nchwjk,lk->ilnhwc", bt, tiles, bt).reshape(16, -1, c)
    u = torch.einsum("ij,ocjk,lk->ilco", g, w, g).reshape(16, c, w.shape[0])
    m = torch.bmm(v.to(dtype).float(), u.to(dtype).float()).double()
    m = m.reshape(4, 4, n, side // 2, side // 2, w.shape[0])
    return torch.einsum("ij,jlnhwo,kl->nohiwk", at, m, at).reshape(n, w.shape[0], side, side)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--winograd23", action="store_true")
    parser.add_argument("--out", default="benchmarks/out/conv_roofline.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"machine": platform.processor() or platform.machine(), "threads": args.threads, "batch": args.batch,
              "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "rows": []}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        peak = 2 * 2048 ** 3 / median_seconds(lambda: a @ b, args.repeats) / 1e9
        result[f"matmul_gflops_{str(dtype)[6:]}"] = peak
        print(f"{str(dtype)[6:]}: 2048^3 matrix product {peak:.0f} GFLOP/s ({args.threads} threads)")
        print("| channels | size | conv fwd GFLOP/s (contiguous / channels_last) | of the matrix product | "
              "im2col GFLOP/s |")
        print("|---:|---:|---|---:|---:|")
        for channels, side in SHAPES:
            x = torch.randn(args.batch, channels, side, side, dtype=dtype)
            w = torch.randn(channels, channels, 3, 3, dtype=dtype)
            flops = 2 * args.batch * side * side * channels * channels * 9
            rates = []
            for layout in (torch.contiguous_format, torch.channels_last):
                xl, wl = x.contiguous(memory_format=layout), w.contiguous(memory_format=layout)
                rates.append(flops / median_seconds(lambda: F.conv2d(xl, wl, padding=1), args.repeats) / 1e9)
            x_nhwc, w_matrix = x.permute(0, 2, 3, 1).contiguous(), w.permute(2, 3, 1, 0).reshape(-1, channels)
            im2col = flops / median_seconds(lambda: im2col_product(x_nhwc, w_matrix, side), args.repeats) / 1e9
            result["rows"].append({"dtype": str(dtype)[6:], "channels": channels, "size": side,
                                   "conv_gflops_contiguous": rates[0], "conv_gflops_channels_last": rates[1],
                                   "im2col_gflops": im2col})
            print(f"| {channels} | {side}x{side} | {rates[0]:.0f} / {rates[1]:.0f} | {max(rates) / peak:.2f} | "
                  f"{im2col:.0f} |")
    if args.winograd23:
        torch.manual_seed(0)
        x = torch.randn(4, 128, 16, 16, dtype=torch.float64)
        w = torch.randn(128, 128, 3, 3, dtype=torch.float64) / (3 * 128 ** 0.5)
        exact = F.conv2d(x, w, padding=1)

        def relative(y):
            return ((y.double() - exact).norm() / exact.norm()).item()

        xb, wb = x.bfloat16().double(), w.bfloat16().double()
        errors = {"direct_bf16": relative(F.conv2d(x.bfloat16(), w.bfloat16(), padding=1)),
                  "winograd23_bf16": relative(winograd23(xb, wb, torch.bfloat16))}
        print(f"Winograd F(2x2, 3x3) in bf16: relative error {errors['winograd23_bf16']:.2e} against "
              f"{errors['direct_bf16']:.2e} for the direct bf16 convolution (128 channels, 16x16, float64 reference)")
        print("| channels | size | 16 bf16 batched products ms | direct bf16 convolution ms |")
        print("|---:|---:|---:|---:|")
        timings = []
        for channels, side in ((256, 32), (128, 32), (512, 8)):
            tiles = args.batch * (side // 2) ** 2
            v = torch.randn(16, tiles, channels, dtype=torch.bfloat16)
            u = torch.randn(16, channels, channels, dtype=torch.bfloat16)
            xd = torch.randn(args.batch, channels, side, side, dtype=torch.bfloat16)
            wd = torch.randn(channels, channels, 3, 3, dtype=torch.bfloat16)
            products = 1e3 * median_seconds(lambda: torch.bmm(v, u), args.repeats)
            direct = 1e3 * median_seconds(lambda: F.conv2d(xd, wd, padding=1), args.repeats)
            timings.append({"channels": channels, "size": side, "bmm_ms": products, "direct_ms": direct})
            print(f"| {channels} | {side}x{side} | {products:.2f} | {direct:.2f} |")
        result["winograd23"] = {"errors": errors, "timings": timings}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
