"""LoRA adapters for diffkit's networks (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large
Language Models", eq. 3 and Sec. 4.1).

A frozen layer with weight W0 (d_out x d_in) gets two trainable matrices A (r x d_in) and
B (d_out x r); its output becomes

    h = W0 x + b + (alpha / r) B A x                                   (Hu et al. 2021, eq. 3)

with A initialised randomly and B = 0, so an adapted network starts as the base network, bit for
bit (adding ``(alpha / r) * 0`` leaves every float as it was). A is Kaiming-uniform as in the
paper's reference code (loralib's ``kaiming_uniform_(a=sqrt(5))``, nn.Linear's own init, peft's
default; Sec. 4.1's text says "random Gaussian", diffusers' LoRA scripts use N(0, 1/r)), alpha
defaults to r (scale 1). A 3x3 convolution is adapted as diffusers' ``LoRACompatibleConv`` does: A is
an r-channel convolution with the base's kernel, stride and padding, B a 1x1 convolution from r
channels, so B A is the kernel ``Delta W[o, i, :, :] = sum_k B[o, k] A[k, i, :, :]``.

Targets (``lora_targets``, comma-separated): ``attention`` (default; the attention projections,
as diffusers' LoRA scripts' to_q / to_k / to_v / to_out: an :class:`~diffkit.models.layers.AttentionBlock`'s
``qkv`` and ``proj``, a :class:`~diffkit.models.layers.SpatialTransformer`'s self-attention ``qkv`` and
``self_out`` and its cross-attention ``to_q``, ``to_kv``, ``to_out``) and ``resblock`` (each residual
block's two 3x3 convolutions ``conv1``, ``conv2``). The adapters are parameters of the adapted layer
itself (``qkv.lora_A``, ``qkv.lora_B``), so the base's state-dict keys do not change.

:func:`add_lora` adapts a network in place and freezes everything else; :func:`merge_lora` folds
each adapter into its base weight, W = W0 + (alpha / r) B A, and gives the layers back their
plain class: what :func:`diffkit.loading.load_model` does when it loads a LoRA checkpoint, so
sampling costs nothing extra. Hand-written, not ``peft``: peft is not a dependency (it pulls in
accelerate and more), and it adapts ``nn.Linear`` / ``nn.Conv2d`` by module names, while diffkit's
attention projections are fused (``qkv``) and its 3x3 convolutions are its own
:class:`~diffkit.models.winograd.WinogradConv2d`; the few lines here keep diffkit's state-dict keys
and layers.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DiffkitError, check_range

LORA_TARGETS = ("attention", "resblock")
# the attention projections of each attention block type (diffusers' to_q / to_k / to_v / to_out)
_ATTENTION_LAYERS = {"AttentionBlock": ("qkv", "proj"), "SpatialTransformer": ("qkv", "self_out"),
                     "_CrossAttention": ("to_q", "to_kv", "to_out")}
_RESBLOCK_LAYERS = {"ResBlock": ("conv1", "conv2")}


def parse_targets(targets: str) -> tuple[str, ...]:
    """``lora_targets`` ("attention", "attention,resblock") as a tuple; a one-line error for an
    unknown or empty name."""
    if not isinstance(targets, str):
        raise DiffkitError(f"lora_targets={targets!r} is not allowed; give a comma-separated string of "
                           f"{', '.join(LORA_TARGETS)}")
    names = tuple(dict.fromkeys(t.strip() for t in targets.split(",")))
    for name in names:
        if name not in LORA_TARGETS:
            raise DiffkitError(f"lora_targets entry {name!r} is not allowed; choose from {', '.join(LORA_TARGETS)} "
                               f"(comma-separated)")
    return names


def check_lora(rank, alpha, targets: str = "attention") -> float:
    """Check the LoRA settings (one-line errors) and return the scale alpha / r."""
    check_range("lora_rank", rank, 1, integer=True)
    if alpha is not None:
        check_range("lora_alpha", alpha, 0.0, None, low_inclusive=False)
    parse_targets(targets)
    return float(rank if alpha is None else alpha) / rank


class _LoRALayer:
    """Mixin of an adapted layer: ``forward(x) = base forward(x) + scale * delta(x)`` (eq. 3)."""

    lora_scale: float

    def forward(self, x):
        out = super().forward(x)
        return out + self.lora_scale * self.lora_delta(x)

    def delta_weight(self) -> torch.Tensor:
        """B A in the base weight's shape (without the scale)."""
        b = self.lora_B.reshape(self.lora_B.shape[0], -1)
        return (b @ self.lora_A.reshape(self.lora_A.shape[0], -1)).reshape(self.weight.shape)


class _LoRALinear(_LoRALayer):
    def lora_delta(self, x):
        return F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype))


class _LoRAConv2d(_LoRALayer):
    def lora_delta(self, x):
        a, b = self.lora_A.to(x.dtype), self.lora_B.to(x.dtype)
        return F.conv2d(F.conv2d(x, a, None, self.stride, self.padding, self.dilation), b)


_CLASSES: dict[type, type] = {}


def _adapted_class(cls: type) -> type:
    """The adapted subclass of a layer class (one per class, made once)."""
    if cls not in _CLASSES:
        mixin = _LoRAConv2d if issubclass(cls, nn.Conv2d) else _LoRALinear
        _CLASSES[cls] = type(f"LoRA{cls.__name__}", (mixin, cls), {"__module__": __name__, "lora_base": cls})
    return _CLASSES[cls]


def adapt_layer(layer: nn.Module, rank: int, alpha: Optional[float] = None) -> nn.Module:
    """Give ``layer`` (an ``nn.Linear`` or a groups=1 ``nn.Conv2d``, diffkit's WinogradConv2d included)
    the LoRA matrices A (Kaiming-uniform) and B (zero) in place; returns it."""
    scale = check_lora(rank, alpha)
    w = layer.weight
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise DiffkitError(f"LoRA adapts convolutions with groups=1; this one has groups={layer.groups}")
        a = torch.empty(rank, layer.in_channels, *layer.kernel_size, dtype=w.dtype, device=w.device)
        b = torch.zeros(layer.out_channels, rank, 1, 1, dtype=w.dtype, device=w.device)
    elif isinstance(layer, nn.Linear):
        a = torch.empty(rank, layer.in_features, dtype=w.dtype, device=w.device)
        b = torch.zeros(layer.out_features, rank, dtype=w.dtype, device=w.device)
    else:
        raise DiffkitError(f"LoRA adapts nn.Linear and nn.Conv2d layers, not {type(layer).__name__}")
    nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # loralib's (and nn.Linear's) init of A
    layer.lora_A = nn.Parameter(a)
    layer.lora_B = nn.Parameter(b)
    layer.lora_scale = scale
    layer.__class__ = _adapted_class(type(layer))
    return layer


def target_layers(model: nn.Module, targets: str = "attention") -> list[tuple[str, nn.Module]]:
    """(name, layer) of every layer of ``model`` that ``targets`` names, in module order."""
    wanted: dict[str, tuple[str, ...]] = {}
    for name in parse_targets(targets):
        wanted.update(_ATTENTION_LAYERS if name == "attention" else _RESBLOCK_LAYERS)
    found = []
    for prefix, module in model.named_modules():
        for attr in wanted.get(type(module).__name__, ()):
            layer = getattr(module, attr, None)
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                found.append((f"{prefix}.{attr}" if prefix else attr, layer))
    return found


def add_lora(model: nn.Module, rank: int, alpha: Optional[float] = None, targets: str = "attention") -> nn.Module:
    """Adapt the ``targets`` layers of ``model`` with rank-``rank`` LoRA (scale alpha / r) and freeze
    every other parameter (``requires_grad`` False): only the A and B matrices train. A one-line
    error when the network has no such layer (e.g. no attention level)."""
    check_lora(rank, alpha, targets)
    layers = target_layers(model, targets)
    if not layers:
        raise DiffkitError(f"lora_targets={targets!r} finds no layer to adapt in this network (attention needs "
                           f"attention levels: attn=[...]; add resblock to adapt the residual blocks)")
    model.requires_grad_(False)
    for _, layer in layers:
        adapt_layer(layer, rank, alpha)
    return model


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of the adapted layers of ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _LoRALayer)]


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight, W = W0 + (alpha / r) B A, and make the layers plain
    again (their own class, no ``lora_A`` / ``lora_B``): the same function, without the extra
    products. In place; returns ``model``."""
    for _, layer in lora_layers(model):
        delta = layer.delta_weight().to(layer.weight.dtype)
        layer.weight.add_(delta, alpha=layer.lora_scale)
        del layer.lora_A, layer.lora_B, layer.lora_scale
        layer.__class__ = type(layer).lora_base
    return model


def lora_meta(rank: int, alpha: Optional[float], targets: str) -> dict:
    """What a checkpoint records of its adapters (``meta["lora"]``): rank, alpha and targets."""
    return {"rank": int(rank), "alpha": float(rank if alpha is None else alpha), "targets": targets}
