"""GroupNorm for every CPU layout and precision, optionally fused with the SiLU that follows it.

GroupNorm (Wu & He 2018, "Group Normalization", eq. 1-2 and the per-channel affine of eq. 4)
normalises each (image, group of C/G channels) over its channels and pixels; diffkit's residual
blocks follow it with SiLU (Elfwing et al. 2018), ``silu(x) = x * sigmoid(x)``.

:class:`GroupNorm` is ``nn.GroupNorm`` (same parameters and state dict) with two CPU paths:

* fp32 channels_last (diffkit's CPU training and sampling layout): a C++ kernel
  (``_group_norm_kernels.cpp``, built with the Winograd kernels by :mod:`diffkit.models.cpu_kernels`)
  that works along the contiguous channel axis of each pixel, and that applies and differentiates
  the following SiLU in the same pass (:meth:`GroupNorm.forward_silu`). PyTorch's channels_last
  kernel is slow when a group holds few channels: (16, 32, 28, 28) with 8 groups takes 0.39 ms
  forward on 2 threads against 0.09 ms here, and with the SiLU 1.36 against 0.72 ms forward +
  backward (4 channels per group in the small networks' 32- and 64-channel levels); with the
  SiLU fused, no separate SiLU pass runs and the normalised map is not kept for the backward pass
  (``benchmarks/group_norm_layers.py``; at 256-512 channels on 4x4-16x16 maps it is on par or
  slower per call, docs/performance.md). Statistics are summed in double (a group whose
  float block sums overflow is summed again in double, so huge finite values still normalise).
  Used for fp32 CPU tensors outside autocast and ``torch.compile``; ``DIFFKIT_CPU_KERNELS=0``
  or a machine without a compiler keeps PyTorch's kernel.
* half precision channels_last: PyTorch's contiguous kernel between two layout copies
  (``_GroupNormViaContiguous``, below).

Everything else (contiguous maps, CUDA, mps) is ``nn.GroupNorm`` [+ ``F.silu``]. The fused paths
are first-order differentiable (no double backward).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .cpu_kernels import compiling, cpu_autocast, cpu_kernels

__all__ = ["GroupNorm", "fused_group_norm_applies"]


def _strictly_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def fused_group_norm_applies(norm: nn.GroupNorm, x: torch.Tensor) -> bool:
    """Whether ``norm(x)`` runs the C++ channels_last kernel (see the module docstring)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or not _strictly_channels_last(x):
        return False
    if not norm.affine or norm.weight.dtype != torch.float32 or norm.weight.device.type != "cpu":
        return False
    if cpu_autocast() or compiling() or torch.jit.is_scripting():
        return False
    return cpu_kernels() is not None


class _FusedGroupNorm(torch.autograd.Function):
    """GroupNorm [+ SiLU] of a channels_last fp32 map by the C++ kernels; keeps x, mean and rstd."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float, silu: bool):
        y, mean, rstd = cpu_kernels().group_norm_forward(x, weight.contiguous(), bias.contiguous(), groups, eps,
                                                          silu)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.groups, ctx.silu = groups, silu
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        dx, dw, db = cpu_kernels().group_norm_backward(dy.contiguous(memory_format=torch.channels_last), x, mean,
                                                       rstd, weight.contiguous(), bias.contiguous(), ctx.groups,
                                                       ctx.silu)
        return dx, dw, db, None, None, None


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and state dict) with fast CPU paths for channels_last
    maps, and :meth:`forward_silu` for ``SiLU(GroupNorm(x))`` in one pass (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalize(x, silu=False)

    def forward_silu(self, x: torch.Tensor) -> torch.Tensor:
        """``F.silu(self(x))``, fused on the C++ path (module hooks do not see this call)."""
        return self._normalize(x, silu=True)

    def _normalize(self, x: torch.Tensor, silu: bool) -> torch.Tensor:
        if fused_group_norm_applies(self, x):
            return _FusedGroupNorm.apply(x, self.weight, self.bias, self.num_groups, self.eps, silu)
        if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16) and _strictly_channels_last(x):
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
    def backward(ctx, grad):
        x, weight, mean, rstd = ctx.saved_tensors
        n, c, height, width = x.shape
        need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        dx, dw, db = torch.ops.aten.native_group_norm_backward(
            grad.contiguous(), x.contiguous(), mean, rstd, weight, n, c, height * width, ctx.groups, need)
        if dx is not None:
            dx = dx.contiguous(memory_format=torch.channels_last)
        return dx, dw, db, None, None
