"""GroupNorm for every CPU layout and precision, optionally fused with the SiLU that follows it.

GroupNorm (Wu & He 2018, "Group Normalization", eq. 1-2 and the per-channel affine of eq. 4)
normalises each (image, group of C/G channels) over its channels and pixels; diffkit's residual
blocks follow it with SiLU (Elfwing et al. 2018), ``silu(x) = x * sigmoid(x)``.

:class:`GroupNorm` is ``nn.GroupNorm`` (same parameters and state dict) with three CPU paths:

* channels_last fp32 (diffkit's fp32 CPU training and sampling layout) and bf16: a C++ kernel
  (``_group_norm_kernels.cpp``, built with the Winograd kernels by :mod:`diffkit.models.cpu_kernels`)
  that works along the contiguous channel axis of each pixel, and that applies and differentiates
  the following SiLU in the same pass (:meth:`GroupNorm.forward_silu`). PyTorch's channels_last
  kernel is slow when a group holds few channels: (16, 32, 28, 28) with 8 groups takes 0.48 ms
  forward on 2 threads against 0.12 ms here, and with the SiLU 1.04 against 0.43 ms forward +
  backward (4 channels per group in the small networks' 32- and 64-channel levels); with the
  SiLU fused, no separate SiLU pass runs and the normalised map is not kept for the backward pass
  (``benchmarks/group_norm_layers.py``; at 512 channels on 4x4 maps it is slower per call,
  docs/performance.md). Statistics are summed in double (a group whose float block sums overflow
  is summed again in double, so huge finite values still normalise). The backward pass keeps
  SiLU's input gradient in the output's memory between its two passes (one sigmoid per element).
  Used for fp32 CPU tensors outside autocast and for bf16 ones (read into float, the output and
  the input gradient rounded once; SiLU's input gradient kept in float between the passes),
  outside ``torch.compile``. bf16 channels_last forward + backward, batch 16, 2 threads: see
  docs/performance.md (PyTorch's bf16 channels_last GroupNorm is slow; it used to run through
  two layout copies, below).
* GroupNorm + SiLU of contiguous fp32 or bf16 maps of at least 128 pixels (bf16 CPU networks
  without the kernels' channels_last path, or laid out contiguous; under autocast too): a second
  kernel normalises one (image, group) block per task, its sums then its output from the same
  cache lines, reading bf16 into float and rounding the result once (PyTorch's bf16 GroupNorm then
  SiLU rounds twice). Forward +
  backward, bf16, batch 16, 2 threads: 1.7 against 2.3 ms at 128 channels x 32x32, 3.8 against
  5.8 ms at 256 x 32x32; a bf16 CIFAR-10 training step 0-3.5% faster, and 17-18% fewer step tensor
  bytes (SiLU's input and output are no longer kept). Plain GroupNorm keeps PyTorch's kernel.
* fp16 channels_last, and bf16 channels_last without the kernels: PyTorch's contiguous kernel
  between two layout copies (``_GroupNormViaContiguous``, below).

``DIFFKIT_CPU_KERNELS=0`` or a machine without a compiler keeps PyTorch's kernels. Everything
else (CUDA, mps, fp16, small or plain contiguous GroupNorm) is ``nn.GroupNorm`` [+ ``F.silu``].
The fused paths are first-order differentiable (no double backward).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .cpu_kernels import compiling, cpu_autocast, cpu_kernels, strictly_channels_last

__all__ = ["GroupNorm", "fused_group_norm_applies", "fused_group_norm_layout"]


# Smallest H * W for the contiguous kernel: on smaller maps its per-plane loops are too short
# (GroupNorm + SiLU, forward + backward, bf16, batch 16: 384 channels at 8x8 0.92x of PyTorch's,
# 64 channels at 14x14 1.12x; benchmarks/group_norm_layers.py --bf16).
_NCHW_MIN_PIXELS = 128


def fused_group_norm_layout(norm: nn.GroupNorm, x: torch.Tensor, silu: bool = True) -> torch.memory_format | None:
    """The layout in which ``norm(x)`` [+ SiLU] runs a C++ kernel, or None for PyTorch's operators
    (see the module docstring): ``torch.channels_last`` for channels_last maps, fp32 (outside
    autocast) or bf16;
    ``torch.contiguous_format`` for GroupNorm + SiLU of contiguous fp32 / bf16 maps of at least
    ``_NCHW_MIN_PIXELS`` pixels (without the SiLU PyTorch's contiguous kernel is as fast)."""
    if x.device.type != "cpu" or x.dim() != 4 or x.dtype not in (torch.float32, torch.bfloat16):
        return None
    if not norm.affine or norm.weight.dtype != torch.float32 or norm.weight.device.type != "cpu":
        return None
    if compiling() or torch.jit.is_scripting():
        return None
    if strictly_channels_last(x) and (x.dtype == torch.bfloat16 or not cpu_autocast()):
        layout = torch.channels_last
    elif silu and x.is_contiguous() and x.shape[2] * x.shape[3] >= _NCHW_MIN_PIXELS:
        layout = torch.contiguous_format
    else:
        return None
    return layout if cpu_kernels() is not None else None


def fused_group_norm_applies(norm: nn.GroupNorm, x: torch.Tensor, silu: bool = True) -> bool:
    """Whether ``norm(x)`` [+ SiLU] runs one of the C++ kernels (see the module docstring)."""
    return fused_group_norm_layout(norm, x, silu) is not None


class _FusedGroupNorm(torch.autograd.Function):
    """GroupNorm [+ SiLU] by the C++ kernels of ``layout``; keeps x, mean and rstd."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float, silu: bool, layout: torch.memory_format):
        kernel = (cpu_kernels().group_norm_forward if layout == torch.channels_last
                  else cpu_kernels().group_norm_nchw_forward)
        y, mean, rstd = kernel(x, weight.contiguous(), bias.contiguous(), groups, eps, silu)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.groups, ctx.silu, ctx.layout = groups, silu, layout
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        kernel = (cpu_kernels().group_norm_backward if ctx.layout == torch.channels_last
                  else cpu_kernels().group_norm_nchw_backward)
        dx, dw, db = kernel(dy.to(x.dtype).contiguous(memory_format=ctx.layout), x, mean, rstd, weight.contiguous(),
                            bias.contiguous(), ctx.groups, ctx.silu)
        return dx, dw, db, None, None, None, None


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and state dict) with fast CPU paths for channels_last
    maps, and :meth:`forward_silu` for ``SiLU(GroupNorm(x))`` in one pass (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalize(x, silu=False)

    def forward_silu(self, x: torch.Tensor) -> torch.Tensor:
        """``F.silu(self(x))``, fused on the C++ path (module hooks do not see this call)."""
        return self._normalize(x, silu=True)

    def _normalize(self, x: torch.Tensor, silu: bool) -> torch.Tensor:
        layout = fused_group_norm_layout(self, x, silu)
        if layout is not None:
            return _FusedGroupNorm.apply(x, self.weight, self.bias, self.num_groups, self.eps, silu, layout)
        if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16) and strictly_channels_last(x):
            # PyTorch's CPU kernel for channels_last bf16 is slow: for a (250, 64, 14, 14) map on
            # one thread 22.6 ms against 1.6 ms for the same tensor contiguous. Under bf16 autocast
            # on a CPU with AMX it was 68% of an MNIST U-Net forward; two layout copies around the
            # contiguous kernel make a bf16 training step 1.5x faster (docs/performance.md).
            y = _GroupNormViaContiguous.apply(x, self.weight, self.bias, self.num_groups, self.eps)
        else:
            y = super().forward(x)
        return F.silu(y) if silu else y


class _GroupNormViaContiguous(torch.autograd.Function):
    """group_norm of a channels_last ``x`` by the contiguous kernel, returned channels_last.

    Gradients go back in each tensor's own layout: ``Tensor.contiguous`` would pass the
    contiguous kernel's input gradient through as it is, and the residual branch's channels_last
    gradient would then be added to it (a mixed-layout ``add_`` costs 2-3x a copy plus a
    same-layout add). ``x`` itself is kept for the backward pass, not its contiguous copy: a
    residual block's input is also kept by its 1x1 skip convolution, and holding both layouts
    doubled it (the backward pass copies it again; no slower measurably, 8% less activation
    memory in a bf16 CIFAR-10 step)."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float):
        n, c, height, width = x.shape
        y, mean, rstd = torch.ops.aten.native_group_norm(x.contiguous(), weight, bias, n, c, height * width,
                                                         groups, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.groups = groups
        return y.contiguous(memory_format=torch.channels_last)

    @staticmethod
    @once_differentiable  # mean and rstd are kept without their graph: second derivatives would be wrong
    def backward(ctx, grad):
        x, weight, mean, rstd = ctx.saved_tensors
        n, c, height, width = x.shape
        need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        dx, dw, db = torch.ops.aten.native_group_norm_backward(
            grad.contiguous(), x.contiguous(), mean, rstd, weight, n, c, height * width, ctx.groups, need)
        if dx is not None:
            dx = dx.contiguous(memory_format=torch.channels_last)
        return dx, dw, db, None, None
