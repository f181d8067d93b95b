"""Winograd 3x3 convolutions for fp32 training and sampling on the CPU.

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
"""
from __future__ import annotations

import threading

import torch

from ..errors import DiffkitError
from .cpu_kernels import compiling, cpu_autocast, cpu_kernels, environment_switch

__all__ = ["WinogradConv2d", "winograd_available", "winograd_applies", "winograd_conv3x3", "set_winograd_enabled"]

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

def _enabled_by_environment() -> bool:
    return environment_switch("DIFFKIT_WINOGRAD")


_state = {"enabled": _enabled_by_environment()}
_local = threading.local()


def set_winograd_enabled(enabled: bool) -> None:
    """Turn the Winograd path on or off for this process (the default comes from DIFFKIT_WINOGRAD)."""
    _state["enabled"] = bool(enabled)


def _extension():
    return cpu_kernels()


def winograd_available() -> bool:
    """True when the Winograd path is enabled and its kernels are built (builds them once)."""
    return _state["enabled"] and _extension() is not None


def winograd_applies(conv: torch.nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether ``conv(x)`` takes the Winograd path (see the module docstring for the rule)."""
    if not _state["enabled"] or x.device.type != "cpu" or x.dim() != 4:
        return False
    if x.dtype != torch.float32 or conv.weight.dtype != torch.float32 or cpu_autocast():
        return False
    if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) \
            or conv.dilation != (1, 1) or conv.groups != 1 or conv.padding_mode != "zeros":
        return False
    height, width = x.shape[-2:]
    if height % 4 or width % 4 or min(height, width) < _MIN_SIDE:
        return False
    training = torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad)
    min_tiles = _MIN_TILES if training else _MIN_TILES_NO_GRAD
    if min(conv.in_channels, conv.out_channels) < _MIN_CHANNELS or x.shape[0] * height * width < 16 * min_tiles:
        return False
    if compiling() or torch.jit.is_scripting():
        return False
    return _extension() is not None


def _buffer(slot: int, shape: tuple) -> torch.Tensor:
    """A reused scratch tensor of ``shape`` (per thread): no fresh pages to fault in at every call."""
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    numel = shape[0] * shape[1] * shape[2]
    buf = buffers.get(slot)
    if buf is None or buf.numel() < numel:  # allocated once at full size: never freed and re-grown
        buf = buffers[slot] = torch.empty(max(numel, _WORKSPACE_FLOATS), dtype=torch.float32)
    return buf[:numel].view(shape)


def _kron(matrix, dtype) -> torch.Tensor:
    m = torch.tensor(matrix, dtype=torch.float64)
    return torch.kron(m, m).to(dtype)


def _weight_transform(weight: torch.Tensor) -> torch.Tensor:
    """(Co, Ci, 3, 3) -> G g G^T for each (ci, co): (36, Ci, Co)."""
    co, ci = weight.shape[:2]
    return (_kron(_G, weight.dtype) @ weight.permute(2, 3, 1, 0).reshape(9, ci * co)).view(36, ci, co)


def _tiles_per_chunk(tiles: int, channels: int) -> int:
    return max(1, min(tiles, _WORKSPACE_FLOATS // (36 * channels)))


def _convolve(ext, xh: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """xh (N, H, W, Ci) contiguous, u (36, Ci, Co) -> (N, H, W, Co)."""
    n, height, width, ci = xh.shape
    co = u.shape[2]
    tiles = n * (height // 4) * (width // 4)
    y = xh.new_empty((n, height, width, co))
    step = _tiles_per_chunk(tiles, max(ci, co))
    for p0 in range(0, tiles, step):
        q = min(step, tiles - p0)
        v, m = _buffer(0, (36, q, ci)), _buffer(1, (36, q, co))
        ext.input_transform(xh, v, p0)
        torch.bmm(v, u, out=m)
        if bias is not None:
            m[_BIAS_POSITION].add_(bias)
        ext.output_transform(m, y, p0)
    return y


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous()  # free for a channels_last map


def _in_layout_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y (NCHW) in x's memory layout, as F.conv2d and its gradients come (free where it already is)."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return y.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class _WinogradConv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ext = _extension()
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _in_layout_of(x, _convolve(ext, _nhwc(x), _weight_transform(weight), bias).permute(0, 3, 1, 2))

    @staticmethod
    def backward(ctx, dy):
        ext = _extension()
        x, weight = ctx.saved_tensors
        dyh = _nhwc(dy)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            flipped = weight.flip(2, 3).transpose(0, 1)
            dx = _in_layout_of(x, _convolve(ext, dyh, _weight_transform(flipped), None).permute(0, 3, 1, 2))
        if ctx.needs_input_grad[1]:
            xh = _nhwc(x)
            n, height, width, ci = xh.shape
            co = dyh.shape[3]
            tiles = n * (height // 4) * (width // 4)
            du = torch.zeros((36, ci, co), dtype=x.dtype)
            step = _tiles_per_chunk(tiles, max(ci, co))
            for p0 in range(0, tiles, step):
                q = min(step, tiles - p0)
                v, dm = _buffer(0, (36, q, ci)), _buffer(1, (36, q, co))
                ext.input_transform(xh, v, p0)
                ext.output_gradient_transform(dyh, dm, p0)
                du.baddbmm_(v.transpose(1, 2), dm)
            dw = (_kron(_G, x.dtype).T @ du.view(36, ci * co)).view(3, 3, ci, co).permute(3, 2, 0, 1)
            dw = _in_layout_of(weight, dw)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dyh.sum((0, 1, 2))
        return dx, dw, db


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
    return _WinogradConv3x3.apply(x, weight, bias)


class WinogradConv2d(torch.nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state dict) that runs through Winograd F(4x4, 3x3)
    where :func:`winograd_applies` holds and as ``nn.Conv2d`` everywhere else."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if winograd_applies(self, x):
            return winograd_conv3x3(x, self.weight, self.bias)
        return self._conv_forward(x, self.weight, self.bias)
