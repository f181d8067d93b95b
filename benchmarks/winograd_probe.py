"""Probe (not used by diffkit): would Winograd 3x3 convolutions make the CPU training step faster?

The convolutions are about 75% of a CPU training step and are the same oneDNN kernels in
diffkit and diffusers (docs/performance.md), so the only way to a step much faster than
diffusers' at equal precision is fewer multiplications. Winograd's minimal filtering
F(m x m, 3 x 3) (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks", eq. 8:
Y = A^T [(G g G^T) . (B^T d B)] A per tile) spends (m + 2)^2 products per m x m outputs instead
of 9 m^2: 2.25x fewer for m = 2, 4x fewer for m = 4. This script implements it for 3x3, stride 1,
padding 1 in eager PyTorch (channels_last; the transforms as linear combinations of strided
slices, the products as one batched matrix product over the (m + 2)^2 tile positions; the
backward pass as Winograd too: the input gradient is the same convolution with the flipped,
transposed kernel, the weight gradient a batched product in the transformed domain), checks
it against ``F.conv2d`` in float64 (forward and all gradients), then times it against
``F.conv2d`` for the seed network's 3x3 convolution shapes (batch 16, fp32):

    PYTHONPATH=. python benchmarks/winograd_probe.py [--threads 2] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

# Lavin & Gray (2016), section 4.1 (F(2x2, 3x3)) and 4.2 (F(4x4, 3x3)).
MATRICES = {
    2: dict(
        BT=[[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        G=[[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
        AT=[[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: dict(
        BT=[[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        G=[[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
           [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        AT=[[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}


def _combine(matrix, pieces, outs):
    """outs[i] = sum_k matrix[i][k] * pieces[k], written in place, zero coefficients skipped."""
    for row, out in zip(matrix, outs):
        terms = [(c, pieces[k]) for k, c in enumerate(row) if c != 0]
        (c0, p0), rest = terms[0], terms[1:]
        if rest and c0 == 1:
            torch.add(p0, rest[0][1], alpha=rest[0][0], out=out)
            rest = rest[1:]
        else:
            torch.mul(p0, c0, out=out)
        for c, p in rest:
            out.add_(p, alpha=c)


def _pad_to_tiles(xh, m):
    ph, pw = -xh.shape[1] % m, -xh.shape[2] % m
    return F.pad(xh, (0, 0, 0, pw, 0, ph)) if ph or pw else xh


def input_transform(xh, m):
    """(N, H, W, C), H and W multiples of m -> B^T d B of every tile, ((m+2)^2, N*H*W/m^2, C)."""
    bt, a = MATRICES[m]["BT"], m + 2
    n, hh, ww, c = xh.shape
    h, w = hh // m, ww // m
    xp = F.pad(xh, (0, 0, 1, 1, 1, 1))
    rows = xh.new_empty((a, n, h, ww + 2, c))
    _combine(bt, [xp[:, k:k + m * h:m] for k in range(a)], rows)
    v = xh.new_empty((a, a, n, h, w, c))
    for i in range(a):
        _combine(bt, [rows[i][:, :, k:k + m * w:m] for k in range(a)], v[i])
    return v.view(a * a, n * h * w, c)


def weight_transform(weight, m):
    """(Co, Ci, 3, 3) -> G g G^T, ((m+2)^2, Ci, Co)."""
    g = torch.tensor(MATRICES[m]["G"], dtype=weight.dtype)
    return torch.einsum("ak,oikl,bl->abio", g, weight, g).reshape(-1, weight.shape[1], weight.shape[0])


def output_transform(mm, m, n, h, w):
    """((m+2)^2, N*h*w, Co) -> A^T M A of every tile, (N, m*h, m*w, Co)."""
    at, a, co = MATRICES[m]["AT"], m + 2, mm.shape[2]
    mm = mm.view(a, a, n, h, w, co)
    s = mm.new_empty((m, a, n, h, w, co))
    _combine(at, list(mm), s)
    y = mm.new_empty((n, h, m, w, m, co))
    for i in range(m):
        _combine(at, list(s[i]), [y[:, :, i, :, j] for j in range(m)])
    return y.view(n, m * h, m * w, co)


def output_gradient_transform(dyh, m):
    """dY (N, H, W, Co) -> A dY A^T of every tile, ((m+2)^2, N*h*w, Co): the adjoint of output_transform."""
    a_matrix = [list(col) for col in zip(*MATRICES[m]["AT"])]
    a = m + 2
    n, hh, ww, co = dyh.shape
    h, w = hh // m, ww // m
    y = dyh.reshape(n, h, m, w, m, co)
    rows = dyh.new_empty((a, n, h, w, m, co))
    _combine(a_matrix, [y[:, :, i] for i in range(m)], rows)
    dm = dyh.new_empty((a, a, n, h, w, co))
    for i in range(a):
        _combine(a_matrix, [rows[i][..., j, :] for j in range(m)], dm[i])
    return dm.view(a * a, n * h * w, co)


def winograd_nhwc(xh, u, bias, m):
    hh, ww = xh.shape[1:3]
    xh = _pad_to_tiles(xh, m)
    n, h, w = xh.shape[0], xh.shape[1] // m, xh.shape[2] // m
    mm = torch.bmm(input_transform(xh, m), u)
    if bias is not None:
        mm[m + 3].add_(bias)  # position (1, 1): column 1 of A^T is all ones, so it reaches every output once
    return output_transform(mm, m, n, h, w)[:, :hh, :ww]


class WinogradConv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, m):
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.m = bias is not None, m
        xh = x.permute(0, 2, 3, 1).contiguous()
        return winograd_nhwc(xh, weight_transform(weight, m), bias, m).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        m = ctx.m
        dyh = dy.permute(0, 2, 3, 1).contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            flipped = weight.flip(2, 3).transpose(0, 1)
            dx = winograd_nhwc(dyh, weight_transform(flipped, m), None, m).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            v = input_transform(_pad_to_tiles(x.permute(0, 2, 3, 1).contiguous(), m), m)
            du = torch.bmm(v.transpose(1, 2), output_gradient_transform(_pad_to_tiles(dyh, m), m))
            g = torch.tensor(MATRICES[m]["G"], dtype=weight.dtype)
            dw = torch.einsum("ak,bl,abio->oikl", g, g, du.view(m + 2, m + 2, *du.shape[1:]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum((0, 2, 3))
        return dx, dw, db, None


def check_against_conv2d():
    """Forward and every gradient equal F.conv2d's in float64 (odd sizes padded to whole tiles)."""
    torch.manual_seed(0)
    for m in MATRICES:
        for n, ci, co, hh, ww in [(2, 3, 5, 4, 6), (3, 8, 6, 8, 8), (2, 3, 4, 7, 5), (1, 2, 3, 1, 1)]:
            x = torch.randn(n, ci, hh, ww, dtype=torch.float64, requires_grad=True)
            w = torch.randn(co, ci, 3, 3, dtype=torch.float64, requires_grad=True)
            b = torch.randn(co, dtype=torch.float64, requires_grad=True)
            y, ref = WinogradConv3x3.apply(x, w, b, m), F.conv2d(x, w, b, padding=1)
            dy = torch.randn_like(ref)
            got, want = torch.autograd.grad(y, (x, w, b), dy), torch.autograd.grad(ref, (x, w, b), dy)
            for a, r in zip((y, *got), (ref, *want)):
                if not torch.allclose(a, r, rtol=1e-10, atol=1e-10):
                    raise SystemExit(f"F({m}x{m},3x3) differs from F.conv2d by {(a - r).abs().max():.2e}")
        x, w = torch.randn(16, 128, 32, 32), torch.randn(128, 128, 3, 3) * 0.03
        exact = F.conv2d(x.double(), w.double(), padding=1)
        rel = lambda y: ((y.double() - exact).norm() / exact.norm()).item()  # noqa: E731
        print(f"F({m}x{m},3x3) equals F.conv2d in float64; fp32 relative error {rel(WinogradConv3x3.apply(x, w, None, m)):.1e}"
              f" (F.conv2d: {rel(F.conv2d(x, w, padding=1)):.1e})")


def median_seconds(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    check_against_conv2d()
    torch.set_num_threads(args.threads)
    print(f"\nbatch 16, fp32, channels_last, {args.threads} threads, median of {args.repeats}; ms (speed-up over F.conv2d)")
    print("| layer | forward F.conv2d | F(2x2) | F(4x4) | fwd+bwd F.conv2d | F(2x2) | F(4x4) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for ci, co, size in [(3, 128, 32), (128, 128, 32), (256, 128, 32), (256, 256, 16), (384, 384, 8), (512, 512, 4)]:
        cl = torch.channels_last
        x = torch.randn(16, ci, size, size).contiguous(memory_format=cl).requires_grad_(ci != 3)
        w = (torch.randn(co, ci, 3, 3) * 0.03).contiguous(memory_format=cl).requires_grad_()
        b = torch.zeros(co, requires_grad=True)
        dy = torch.randn(16, co, size, size).contiguous(memory_format=cl)
        convs = [lambda: F.conv2d(x, w, b, padding=1)] + [
            (lambda m=m: WinogradConv3x3.apply(x, w, b, m)) for m in MATRICES]
        with torch.no_grad():
            forward = [median_seconds(f, args.repeats) for f in convs]
        both = [median_seconds(lambda f=f: f().backward(dy), args.repeats) for f in convs]
        cells = [f"{t * 1e3:.1f}" + ("" if i % 3 == 0 else f" ({row[0] / t:.2f}x)")
                 for row in (forward, both) for i, t in enumerate(row)]
        print(f"| {ci}->{co} at {size}x{size} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
