"""AdamW (Loshchilov & Hutter 2019, Alg. 2) through PyTorch's fused kernel, channels_last-aware.

PyTorch's fused CPU AdamW kernel updates each parameter, its gradient and its two moments as flat
arrays in memory order (so all four must share one layout; ``checkpoint.match_parameter_layout``
keeps resumed moments in the parameters' strides), but first makes a contiguous copy of every
gradient that is not contiguous in the default (NCHW) sense, which it then does not use. A
channels_last 3x3 convolution weight is such a gradient: the copies cost about half of the
optimiser step (seed network, 83M parameters: 52-60 ms with them, 28-29 without; CIFAR-10
network, 36M: 26 / 15 ms) (``docs/performance.md``, "The optimiser step"). :class:`FusedAdamW` hands the kernel each
channels_last parameter, gradient and moments as their (O, kH, kW, I) permutation, which is
contiguous and the same memory: the same update element by element, without the copies.
"""
from __future__ import annotations

import torch


def _channels_last_only(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def pass_channels_last_as_contiguous(per_parameter: list[list[torch.Tensor]]) -> None:
    """In each list (parameters, gradients, moments, ... of the same parameters, index by index),
    replace the tensors of a parameter whose 4-d tensors are all channels_last (and not also
    contiguous) by their ``permute(0, 2, 3, 1)`` views; a parameter with any other layout among
    its tensors keeps them all as they are."""
    lists = [tensors for tensors in per_parameter if tensors and len(tensors) == len(per_parameter[0])]
    for i in range(len(lists[0]) if lists else 0):
        four_d = [tensors[i] for tensors in lists if tensors[i].dim() == 4]
        if four_d and four_d[0].device.type == "cpu" and all(_channels_last_only(t) for t in four_d):
            for tensors in lists:
                if tensors[i].dim() == 4:
                    tensors[i] = tensors[i].permute(0, 2, 3, 1)


class FusedAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW(..., fused=True)`` whose CPU kernel sees channels_last tensors as
    contiguous ones (module docstring); same arguments, state and ``state_dict``."""

    def __init__(self, params, **kwargs):
        super().__init__(params, fused=True, **kwargs)

    def _init_group(self, group, *lists):
        has_complex = super()._init_group(group, *lists)
        pass_channels_last_as_contiguous([tensors for tensors in lists if isinstance(tensors, list)])
        return has_complex
