"""Dropout with a CPU mask that costs a fraction of ``F.dropout``'s, and is not kept for backward.

Inverted dropout (Srivastava et al. 2014, JMLR 15, Sec. 4, with the kept units scaled at training
time instead of the weights at test time): every element is zeroed with probability ``p`` and the
kept ones are multiplied by 1 / (1 - p), so E[dropout(x)] = x.

On the CPU, ``F.dropout`` draws its mask with ``bernoulli_``, one generator draw and a float
comparison per element: 24 ms for a (16, 256, 32, 32) map on 2 threads, against 0.3-0.9 ms to
multiply the same tensor by a number; in a bf16 training step of the DDPM CIFAR-10 U-Net that was
7.5% of the step (docs/performance.md). Here each element gets 16 random bits (``random_`` of
whole 64-bit words, four elements per word) compared with a threshold, so the drop probability
is ``p`` rounded to the nearest multiple of 2^-16 (0.1 -> 0.1000061; below 2^-17 nothing is
dropped) and the scale is the exact inverse of the kept probability, which keeps the expectation
exact. The comparison writes the mask straight into the input's dtype (a boolean mask would need
a slow conversion or ``masked_fill``, 5-10x the cost of a multiplication), so dropout is a
product with the mask and the scale, and so is its backward (autograd keeps the mask, as it does
for ``F.dropout``). Other devices, where the fused dropout kernel is fast, use ``F.dropout``, and
so does code being traced by ``torch.compile``: Dynamo cannot trace the in-place ``random_`` (a
graph break in every residual block), and inductor fuses ``F.dropout``'s mask into its own kernels.

With diffkit's C++ CPU kernels (:mod:`diffkit.models.cpu_kernels`), fp32 and bf16 tensors take a
third path (nineteenth session): one draw from the generator gives a 64-bit seed, and element i's
16 bits are the top bits of SplitMix64's output mix (Steele, Lea & Flood 2014) of seed + (i + 1)
times the golden gamma, computed where the product is written (``_dropout_kernels.cpp``). Same
rounding of p, same scale; nothing is kept for the backward pass, which recomputes the mask from
the seed (one map fewer per residual block than ``x * mask``), and forward + backward take 1.4 ms
for a (16, 128, 32, 32) map on 2 threads against 6.0 ms with ``random_`` words (bf16: 1.4 against
4.2 ms; ``benchmarks/cpu_kernel_ab.py --kernel dropout --layer``).
The mask depends on the element's index only: the same for any thread count.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import check_range
from .cpu_kernels import compiling, cpu_kernels, strictly_channels_last

__all__ = ["dropout", "keep_mask"]

_LEVELS = 1 << 16  # 16 random bits per element


def _dense(x: torch.Tensor) -> bool:
    """Whether ``x``'s strides map its elements one-to-one onto its storage's first numel slots."""
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def _drop_levels(p: float) -> int:
    """k of P(drop) = k / 2^16: p rounded to the nearest multiple of 2^-16."""
    return min(round(p * _LEVELS), _LEVELS - 1)


class _RecomputedMaskDropout(torch.autograd.Function):
    """``x * scale`` where the C++ kernel's mask of (k, seed) keeps an element, 0 elsewhere; the
    backward pass applies the same mask to the gradient (recomputed, nothing kept), itself through
    this function, so higher derivatives exist."""

    @staticmethod
    def forward(ctx, x, k: int, scale: float, seed: int):
        ctx.mask = (k, scale, seed)
        ctx.layout = torch.channels_last if strictly_channels_last(x) else torch.contiguous_format
        return cpu_kernels().dropout_apply(x, k, scale, seed)

    @staticmethod
    def backward(ctx, grad):
        return _RecomputedMaskDropout.apply(grad.contiguous(memory_format=ctx.layout), *ctx.mask), None, None, None


def keep_mask(x: torch.Tensor, p: float, generator: Optional[torch.Generator] = None):
    """Inverted dropout's mask and scale: a tensor with ``x``'s shape, dtype and strides, 1 where
    an element is kept and 0 where it is dropped, with P(drop) = k / 2^16, k = round(p 2^16), and
    the scale 2^16 / (2^16 - k) of the kept ones. ``x`` must be a dense CPU tensor (contiguous or
    channels_last)."""
    k = _drop_levels(p)
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64)
    words.random_(-(1 << 63), None, generator=generator)  # all 64 bits uniform
    lanes = words.view(torch.int16)[: x.numel()]  # uniform on [-2^15, 2^15)
    keep = torch.empty(x.numel(), dtype=x.dtype)
    torch.ge(lanes, k - (1 << 15), out=keep)  # straight into x's dtype
    return keep.as_strided(x.shape, x.stride()), _LEVELS / (_LEVELS - k)


def dropout(x: torch.Tensor, p: float, training: bool = True,
            generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Inverted dropout of ``x`` with drop probability ``p`` (module docstring); the identity when
    not ``training`` or ``p == 0``. Draws from ``generator`` (CPU) or torch's default one."""
    if not training or p == 0.0:
        return x
    check_range("dropout", p, 0.0, 1.0, high_inclusive=False)
    if (x.device.type != "cpu" or not x.is_floating_point() or x.numel() == 0 or not _dense(x)
            or compiling()):
        return F.dropout(x, p=p, training=True)
    if x.dtype in (torch.float32, torch.bfloat16) and cpu_kernels() is not None:
        k = _drop_levels(p)
        seed = int(torch.randint(-(1 << 63), (1 << 63) - 1, (), dtype=torch.int64, generator=generator))
        return _RecomputedMaskDropout.apply(x, k, _LEVELS / (_LEVELS - k), seed)
    keep, scale = keep_mask(x, p, generator)
    if x.element_size() >= 4:
        return x * keep.mul_(scale)
    # bf16 / fp16 cannot hold 1 / (1 - p) (0.1: 1.109375 in bf16, a 0.16% bias); a scalar
    # multiplication rounds x * scale once instead
    return (x * keep).mul_(scale)
