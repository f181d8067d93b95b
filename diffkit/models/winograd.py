"""Winograd 3x3 convolutions for fp32 (and, opt-in, bf16) training and sampling on the CPU.

The 3x3 convolutions are about 75% of a CPU training step (docs/performance.md), computed by
the same oneDNN kernels as in any other PyTorch network. Winograd's minimal filtering
F(4x4, 3x3) (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks", eq. 8:
Y = A^T [(G g G^T) . (B^T d B)] A per 4x4 output tile) needs 36 products per 16 outputs instead
of 144: 4x fewer. Here the tile transforms are C++ kernels (``_winograd_kernels.cpp``, built
once per machine by :mod:`diffkit.models.cpu_kernels` and cached, parallel over tiles), and
the products are one batched matrix product per chunk of tiles. The backward pass is Winograd
too: the input gradient is the convolution of the output gradient with the flipped, transposed
kernel, and the weight gradient is a batched product in the transformed domain,
G^T [sum_tiles (A dY A^T) . (B^T d B)] G.

It is used where it was measured to be faster (``benchmarks/winograd_layers.py``): fp32 on the
CPU, stride 1, padding 1, sides that are multiples of 4 and at least 8, at least 64 input and
64 output channels, and at least 128 tiles of 4x4 outputs in the batch when gradients are
computed, 64 without (the transformed weights, 36 x Ci x Co, are made and read once per call, and
three times with the backward pass, so a small batch cannot repay them: 0.3-0.8x for training at
16-64 tiles; sampling 4 images of 32x32 through the seed network with its 16x16 level at 64 tiles
included: 1.26-1.29x of diffusers against 1.08-1.09x without); everything else (CUDA, half
precision and autocast, ``torch.compile``, small layers and batches) goes to ``F.conv2d``. The
fp32 result differs from the direct convolution's by about 2e-6 relative (the direct one's own
rounding error is about 2e-7). Set ``DIFFKIT_WINOGRAD=0`` to turn it off (``DIFFKIT_CPU_KERNELS=0``
turns off every C++ kernel); without a C++ compiler it turns itself off with one warning.

**fp32 F(2x2, 3x3)** (``F2_FP32``) takes the even sides F(4x4, 3x3) cannot tile (10x10, 14x14,
18x18, ...: a 28x28 or 56x56 image's lower levels) from 192 input and output channels, with the same
pixel counts: 1.19-1.36x forward + backward there, 1.00-1.09x at 128 channels and 0.86-1.04x at
64-96, where its batched products run at about 2/3 of the direct kernel's rate
(``benchmarks/winograd_layers.py --variant f2``). Its transforms (the bf16 path's kernels, in
float32) hold only 0, +-1 and +-1/2: about 3e-7 relative error, closer to float64 than the direct
fp32 convolution.

**bf16, opt-in** (``DIFFKIT_BF16_WINOGRAD=1`` or :func:`set_bf16_winograd_enabled`; off by
default): under bf16 autocast (or for a bf16 network) on channels_last maps, F(2x2, 3x3)
(Lavin & Gray 2016, section 4.1; 16 products per 4 outputs instead of 36: 2.25x fewer), whose
transforms have only 0, +-1 and +-1/2 as coefficients (F(4x4, 3x3) loses 11x accuracy in bf16).
Transforms in C++ (``_winograd_2x2_kernels.cpp``: float arithmetic, each result rounded to bf16
once; the weights' transforms straight from the fp32 parameters), products in bf16 (oneDNN rounds
them to bf16: PyTorch has no bf16 product with a float32 result on the CPU), the weight gradient
summed over chunks in float32. Its error is about twice the direct bf16 convolution's (output,
input gradient and weight gradient: 5.1-5.6e-3 relative against float64, direct 2.9e-3;
``benchmarks/winograd_bf16_prototype.py``), hence opt-in. Used from 128 input and output channels
on maps of at least 64 pixels with even sides (forward + backward, batch 16, against channels_last
bf16 ``F.conv2d``: 1.37x at 128 channels on 32x32, 1.44x at 256 on 16x16, 1.16-1.22x at 256-384
on 8x8, 0.97x at 64 channels).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from .. import memory
from ..errors import DiffkitError
from .cpu_kernels import compiling, cpu_autocast, cpu_kernels, environment_switch, strictly_channels_last

__all__ = ["WinogradConv2d", "winograd_available", "winograd_applies", "winograd_conv3x3", "set_winograd_enabled",
           "set_bf16_winograd_enabled", "winograd_variant"]

# Lavin & Gray (2016), section 4.2.
_G = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
      [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
_BIAS_POSITION = 7  # (1, 1): column 1 of A^T is all ones, so M[7] reaches each output of a tile once
# per buffer: a chunk of transformed tiles is at most 16 MiB (smaller: slower, BENCHMARKS.md)
_WORKSPACE_FLOATS = 1 << 22
# Where it pays (fp32 forward + backward, 2 threads, against channels_last F.conv2d;
# docs/performance.md): 1.25-2.2x from 64 channels and 128 tiles up; 0.9-1.05x with 32 output
# channels, 0.3-0.8x at 16-64 tiles (batch 1-4 of 16x16 or 32x32 maps), 1.05x at 4x4. Without
# gradients (sampling) one weight transform per call instead of three: 64 tiles pay.
_MIN_SIDE = 8
_MIN_CHANNELS = 64
_MIN_TILES = 128
_MIN_TILES_NO_GRAD = 64
# fp32 F(2x2, 3x3) on the even sides F(4x4, 3x3) cannot tile (10x10, 14x14, 18x18; forward + backward, batch 16,
# one thread, against channels_last F.conv2d; benchmarks/winograd_layers.py --variant f2): 1.19-1.36x from 192
# channels, 1.00-1.09x at 128, 0.86-1.04x at 64-96 (its batched products run at 2/3 of the direct kernel's speed)
_F2_MIN_CHANNELS = 192
# bf16 F(2x2, 3x3) (channels_last maps; benchmarks/winograd_bf16_prototype.py, batch 16, forward +
# backward): 1.37x at 128 channels on 32x32, 1.44x at 256 on 16x16, 1.16-1.22x at 256-384 on 8x8,
# 0.97x at 64 channels
_BF16_MIN_CHANNELS = 128
_BF16_MIN_PIXELS = 64


@dataclass(frozen=True)
class Variant:
    """One Winograd algorithm F(tile x tile, 3x3): its G matrix, dtype and transform kernels."""
    tile: int
    g: tuple
    dtype: torch.dtype
    input: str
    output_gradient: str

    @property
    def positions(self) -> int:  # values of a transformed tile, (tile + 2)^2
        return (self.tile + 2) ** 2


F4 = Variant(4, tuple(map(tuple, _G)), torch.float32, "input_transform", "output_gradient_transform")
# Lavin & Gray (2016), section 4.1
_G2 = ((1, 0, 0), (1 / 2, 1 / 2, 1 / 2), (1 / 2, -1 / 2, 1 / 2), (0, 0, 1))
F2 = Variant(2, _G2, torch.bfloat16, "input_transform_2x2", "output_gradient_transform_2x2")
F2_FP32 = Variant(2, _G2, torch.float32, "input_transform_2x2", "output_gradient_transform_2x2")


def _enabled_by_environment() -> bool:
    return environment_switch("DIFFKIT_WINOGRAD")


def _bf16_enabled_by_environment() -> bool:
    return environment_switch("DIFFKIT_BF16_WINOGRAD", default=False)


_state = {"enabled": _enabled_by_environment(), "bf16": _bf16_enabled_by_environment()}
_local = threading.local()


def set_winograd_enabled(enabled: bool) -> None:
    """Turn the fp32 Winograd path on or off for this process (the default comes from DIFFKIT_WINOGRAD)."""
    _state["enabled"] = bool(enabled)


def set_bf16_winograd_enabled(enabled: bool) -> None:
    """Turn the bf16 F(2x2, 3x3) path on or off for this process (the default, off, comes from
    DIFFKIT_BF16_WINOGRAD; see the module docstring for its accuracy)."""
    _state["bf16"] = bool(enabled)


def _extension():
    return cpu_kernels()


def winograd_available() -> bool:
    """True when the Winograd path is enabled and its kernels are built (builds them once)."""
    return _state["enabled"] and _extension() is not None


def _plain_3x3(conv: torch.nn.Conv2d) -> bool:
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


def _bf16_autocast() -> bool:
    if not cpu_autocast():
        return False
    try:
        return torch.get_autocast_dtype("cpu") == torch.bfloat16
    except AttributeError:  # torch < 2.4
        return torch.get_autocast_cpu_dtype() == torch.bfloat16


def winograd_variant(conv: torch.nn.Conv2d, x: torch.Tensor):
    """The Winograd variant ``conv(x)`` runs through (``F4`` or ``F2_FP32`` for fp32, ``F2`` for bf16),
    or None for ``F.conv2d`` (see the module docstring for the rules)."""
    if x.device.type != "cpu" or x.dim() != 4 or not _plain_3x3(conv):
        return None
    if compiling() or torch.jit.is_scripting():
        return None
    height, width = x.shape[-2:]
    channels = min(conv.in_channels, conv.out_channels)
    if x.dtype == torch.float32 and conv.weight.dtype == torch.float32 and not cpu_autocast():
        if not _state["enabled"] or height % 2 or width % 2 or min(height, width) < _MIN_SIDE:
            return None
        training = torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad)
        min_tiles = _MIN_TILES if training else _MIN_TILES_NO_GRAD
        fits_f4 = height % 4 == 0 and width % 4 == 0
        if channels < (_MIN_CHANNELS if fits_f4 else _F2_MIN_CHANNELS) or x.shape[0] * height * width < 16 * min_tiles:
            return None
        variant = F4 if fits_f4 else F2_FP32
    else:
        bf16 = (_bf16_autocast() and x.dtype in (torch.float32, torch.bfloat16)) or (
            not cpu_autocast() and x.dtype == conv.weight.dtype == torch.bfloat16)
        if not (_state["bf16"] and bf16 and strictly_channels_last(x)) or height % 2 or width % 2:
            return None
        if channels < _BF16_MIN_CHANNELS or height * width < _BF16_MIN_PIXELS:
            return None
        variant = F2
    return variant if _extension() is not None else None


def winograd_applies(conv: torch.nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether ``conv(x)`` takes a Winograd path (see the module docstring for the rules)."""
    return winograd_variant(conv, x) is not None


def _buffer(slot: int, shape: tuple, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A reused scratch tensor of ``shape`` (per thread and dtype): no fresh pages to fault in at every call."""
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    numel = shape[0] * shape[1] * shape[2]
    if memory.tracking():  # --batch-size auto's probe: what this call uses grows with the batch
        memory.note_workspace_use((threading.get_ident(), slot, dtype), numel * dtype.itemsize)
    buf = buffers.get((slot, dtype))
    if buf is None or buf.numel() < numel:  # allocated once at full size: never freed and re-grown
        old, buf = buf, torch.empty(max(numel, _WORKSPACE_FLOATS), dtype=dtype)
        buffers[(slot, dtype)] = buf
        memory.register_workspace(buf, replaces=old)
    return buf[:numel].view(shape)


def _kron(matrix, dtype) -> torch.Tensor:
    m = torch.tensor(matrix, dtype=torch.float64)
    return torch.kron(m, m).to(dtype)


def _weight_transform(weight: torch.Tensor, variant: "Variant", flipped: bool = False) -> torch.Tensor:
    """(Co, Ci, 3, 3) -> G g G^T for each (ci, co): (P, Ci, Co) in the variant's dtype, computed in
    float32 from the weight's own values (fp32 parameters under autocast are rounded once, after).
    ``flipped``: of the kernel flipped and transposed (Ci and Co swapped), which convolves the
    output gradient into the input gradient: (P, Co, Ci)."""
    if variant.dtype == torch.bfloat16:  # one C++ pass along the input channels: (16, Co, Ci)
        u = _extension().weight_transform_2x2(weight.float().contiguous(memory_format=torch.channels_last), flipped)
        return u if flipped else u.transpose(1, 2)  # (in, out) per position: a free view for the product
    if flipped:
        weight = weight.flip(2, 3).transpose(0, 1)
    co, ci = weight.shape[:2]
    g = weight.float().permute(2, 3, 1, 0).reshape(9, ci * co)
    return (_kron(variant.g, torch.float32) @ g).view(variant.positions, ci, co).to(variant.dtype)


def _tiles_per_chunk(tiles: int, positions: int, channels: int) -> int:
    return max(1, min(tiles, _WORKSPACE_FLOATS // (positions * channels)))


def _convolve(ext, variant: "Variant", xh: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """xh (N, H, W, Ci) contiguous in the variant's dtype, u (P, Ci, Co) -> (N, H, W, Co)."""
    n, height, width, ci = xh.shape
    co, positions = u.shape[2], variant.positions
    tiles = n * (height // variant.tile) * (width // variant.tile)
    y = xh.new_empty((n, height, width, co))
    step = _tiles_per_chunk(tiles, positions, max(ci, co))
    for p0 in range(0, tiles, step):
        q = min(step, tiles - p0)
        v, m = _buffer(0, (positions, q, ci), variant.dtype), _buffer(1, (positions, q, co), variant.dtype)
        getattr(ext, variant.input)(xh, v, p0)
        torch.bmm(v, u, out=m)
        if variant is F4:
            if bias is not None:
                m[_BIAS_POSITION].add_(bias)
            ext.output_transform(m, y, p0)
        else:  # the bias is added in float before the output's one rounding
            ext.output_transform_2x2(m, y, p0, None if bias is None else bias.float().contiguous())
    return y


def _weight_gradient(ext, variant: "Variant", xh: torch.Tensor, dyh: torch.Tensor) -> torch.Tensor:
    """dL/dweight (Co, Ci, 3, 3), float32: G^T [sum over tiles (A dY A^T) . (B^T d B)] G."""
    n, height, width, ci = xh.shape
    co, positions = dyh.shape[3], variant.positions
    tiles = n * (height // variant.tile) * (width // variant.tile)
    du = None
    step = _tiles_per_chunk(tiles, positions, max(ci, co))
    for p0 in range(0, tiles, step):
        q = min(step, tiles - p0)
        v, dm = _buffer(0, (positions, q, ci), variant.dtype), _buffer(1, (positions, q, co), variant.dtype)
        getattr(ext, variant.input)(xh, v, p0)
        getattr(ext, variant.output_gradient)(dyh, dm, p0)
        product = torch.bmm(v.transpose(1, 2), dm)  # bf16 products: each chunk's sum, added in float32
        du = product.float() if du is None else du.add_(product)
    return (_kron(variant.g, torch.float32).T @ du.view(positions, ci * co)).view(3, 3, ci, co).permute(3, 2, 0, 1)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous()  # free for a channels_last map


def _in_layout_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y (NCHW) in x's memory layout, as F.conv2d and its gradients come (free where it already is)."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return y.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class _WinogradConv3x3(torch.autograd.Function):
    """conv2d(x, weight, bias, padding=1) by ``variant``; the output in the variant's dtype, the
    gradients in their tensors' dtypes and layouts."""

    @staticmethod
    def forward(ctx, x, weight, bias, variant):
        ext = _extension()
        with torch.autocast("cpu", enabled=False):
            xv = x.to(variant.dtype)
            ctx.save_for_backward(xv, weight)
            ctx.bias_dtype = None if bias is None else bias.dtype
            ctx.variant, ctx.x_dtype = variant, x.dtype
            y = _convolve(ext, variant, _nhwc(xv), _weight_transform(weight, variant), bias)
            return _in_layout_of(x, y.permute(0, 3, 1, 2))

    @staticmethod
    @once_differentiable  # second derivatives would miss x -> xv; PyTorch says so in one line
    def backward(ctx, dy):
        ext, variant = _extension(), ctx.variant
        xv, weight = ctx.saved_tensors
        dx = dw = db = None
        with torch.autocast("cpu", enabled=False):
            dyh = _nhwc(dy.to(variant.dtype))
            if ctx.needs_input_grad[0]:
                flipped = _weight_transform(weight, variant, flipped=True)
                dx = _in_layout_of(xv, _convolve(ext, variant, dyh, flipped, None).permute(0, 3, 1, 2))
                dx = dx.to(ctx.x_dtype)
            if ctx.needs_input_grad[1]:
                dw = _in_layout_of(weight, _weight_gradient(ext, variant, _nhwc(xv), dyh).to(weight.dtype))
            if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
                db = dyh.sum((0, 1, 2), dtype=torch.float32).to(ctx.bias_dtype)
        return dx, dw, db, None


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for a 3x3 kernel by Winograd F(4x4, 3x3), in x's
    memory layout: fp32 CPU tensors, x (N, Ci, H, W) with H and W multiples of 4, weight (Co, Ci, 3, 3)."""
    if x.dim() != 4 or x.shape[-2] % 4 or x.shape[-1] % 4 or tuple(weight.shape[1:]) != (x.shape[1], 3, 3):
        raise DiffkitError(f"winograd_conv3x3: input {tuple(x.shape)} and weight {tuple(weight.shape)}; allowed: "
                           "(N, Ci, H, W) with H and W multiples of 4 and a (Co, Ci, 3, 3) weight")
    if {x.dtype, weight.dtype} != {torch.float32} or x.device.type != "cpu" or weight.device.type != "cpu":
        raise DiffkitError(f"winograd_conv3x3: {x.dtype} on {x.device} with a {weight.dtype} weight on "
                           f"{weight.device}; allowed: float32 on the CPU")
    if _extension() is None:
        raise DiffkitError("winograd_conv3x3: the CPU kernels are off (DIFFKIT_CPU_KERNELS=0) or could not be built "
                           "here (see the warning); use F.conv2d")
    return _WinogradConv3x3.apply(x, weight, bias, F4)


class WinogradConv2d(torch.nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state dict) that runs through Winograd F(4x4, 3x3) or
    F(2x2, 3x3) in fp32, or F(2x2, 3x3) in bf16, where :func:`winograd_variant` gives one, and as
    ``nn.Conv2d`` everywhere else."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variant = winograd_variant(self, x)
        if variant is F4:
            return winograd_conv3x3(x, self.weight, self.bias)
        if variant is not None:
            return _WinogradConv3x3.apply(x, self.weight, self.bias, variant)
        return self._conv_forward(x, self.weight, self.bias)
