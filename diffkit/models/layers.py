"""Building blocks shared by the U-Net and the noisy-image classifier.

The blocks follow the DDPM U-Net (Ho et al. 2020, Appendix B) with the ADM refinements
(Dhariwal & Nichol 2021, Section 3): GroupNorm + SiLU residual blocks that receive the
timestep (and class) embedding, optionally as an adaptive GroupNorm scale and shift
("AdaGN", ADM eq. in Sec. 3), multi-head self-attention, BigGAN-style up/down-sampling
residual blocks, zero-initialised output convolutions, and the latent-diffusion
"spatial transformer" cross-attention block (Rombach et al. 2022, Sec. 3.3).

Every block takes ``(h, emb, context)`` so that a trunk is a plain list of blocks; blocks that
ignore the embedding or the context simply do not read them. Attention (:mod:`.attention`) runs on
token tensors laid out ``(batch, height*width, channels)``, which is a free view of a
``channels_last`` feature map.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MEMORY_FORMATS, MIXED_PRECISION
from ..errors import DiffkitError, check_choice, check_positive_int_list, check_range
from .attention import attention, identity_attention
from .cpu_kernels import cpu_kernels
from .dropout import dropout
from .group_norm import GroupNorm
from .winograd import WinogradConv2d

__all__ = [
    "TrunkConfig", "timestep_embedding", "norm_groups", "GroupNorm", "group_norm", "zero_module",
    "TimeEmbedding", "ResBlock", "AttentionBlock", "SpatialTransformer", "Downsample",
    "Upsample", "AttentionPool2d", "attention_heads", "attention_block", "BlockChain",
    "build_down_path", "build_middle", "run_blocks", "num_parameters", "preferred_memory_format",
    "to_compute_layout", "to_caller_layout", "use_memory_format",
]


# --------------------------------------------------------------------------- configuration
@dataclass
class TrunkConfig:
    """Settings of the U-Net's downsampling trunk, shared by :class:`UNetConfig` and
    :class:`ClassifierConfig`. Field names follow the seed's ``modelConfig`` keys.

    channel: base channel count; level ``i`` has ``channel * channel_mult[i]`` channels.
    channel_mult: channel multiplier per resolution level (level ``i`` runs at
        ``img_size / 2**i``).
    attn: 0-based level indices (into ``channel_mult``) whose blocks get self-attention.
    num_res_blocks: residual blocks per level on the way down (the way up has one more).
    dropout: dropout probability inside residual blocks, in [0, 1).
    img_size: input height and width; divisible by ``2**(len(channel_mult)-1)``.
    in_channels: input image channels.
    scale_shift_norm: ADM's adaptive GroupNorm (embedding gives a scale and a shift).
    num_heads: attention heads (used when ``head_channels`` is None).
    head_channels: channels per attention head; overrides ``num_heads`` when set.
    resblock_updown: resample with residual blocks (BigGAN style) instead of convolutions.
    """

    channel: int = 128
    channel_mult: Sequence[int] = field(default_factory=lambda: [1, 2, 3, 4])
    attn: Sequence[int] = field(default_factory=lambda: [2])
    num_res_blocks: int = 2
    dropout: float = 0.15
    img_size: int = 32
    in_channels: int = 3
    scale_shift_norm: bool = False
    num_heads: int = 1
    head_channels: int | None = None
    resblock_updown: bool = False

    def __post_init__(self):
        check_range("channel", self.channel, 2, integer=True)  # the time embedding needs a sin/cos pair
        self.channel_mult = check_positive_int_list("channel_mult", self.channel_mult)
        levels = len(self.channel_mult)
        attn = self.attn
        if isinstance(attn, (str, bytes)) or not isinstance(attn, Sequence):
            raise DiffkitError(f"attn={attn!r} is not allowed; use a list of level indices in 0..{levels - 1}")
        for level in attn:
            if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < levels:
                raise DiffkitError(f"attn level {level!r} is out of range; allowed: integers in 0..{levels - 1} "
                                   f"(channel_mult has {levels} levels)")
        self.attn = sorted(set(int(a) for a in attn))
        check_range("num_res_blocks", self.num_res_blocks, 1, integer=True)
        check_range("dropout", self.dropout, 0.0, 1.0, high_inclusive=False)
        check_range("img_size", self.img_size, 1, integer=True)
        factor = 2 ** (levels - 1)
        if self.img_size % factor:
            raise DiffkitError(f"img_size={self.img_size} is not allowed; with {levels} levels in channel_mult "
                               f"it must be divisible by 2**{levels - 1}={factor}")
        check_range("in_channels", self.in_channels, 1, integer=True)
        check_range("num_heads", self.num_heads, 1, integer=True)
        if self.head_channels is not None:
            check_range("head_channels", self.head_channels, 1, integer=True)
        for width in self.attention_widths():
            attention_heads(width, self.num_heads, self.head_channels)

    def level_channels(self) -> list[int]:
        """Channels of each resolution level."""
        return [self.channel * m for m in self.channel_mult]

    def attention_widths(self) -> list[int]:
        """Channel counts of every attention block (the attention levels and the middle)."""
        return [self.channel * self.channel_mult[a] for a in self.attn] + [self.channel * self.channel_mult[-1]]


def attention_heads(channels: int, num_heads: int = 1, head_channels: int | None = None) -> int:
    """Number of heads for an attention block of ``channels`` width; one-line error if uneven."""
    if head_channels is not None:
        if channels % head_channels:
            raise DiffkitError(f"head_channels={head_channels} does not divide the attention width {channels}; "
                               f"choose a divisor of {channels}")
        return channels // head_channels
    if channels % num_heads:
        raise DiffkitError(f"num_heads={num_heads} does not divide the attention width {channels}; "
                           f"choose a divisor of {channels}")
    return num_heads


# --------------------------------------------------------------------------- small helpers
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, freq_shift: int = 0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) times, ``(batch,) -> (batch, dim)``.

    Transformer positional encoding (Vaswani et al. 2017, Sec. 3.5) as used by DDPM/ADM:
    ``emb[:, i] = cos(t * w_i)`` and ``emb[:, half + i] = sin(t * w_i)`` with
    ``w_i = max_period ** (-i / (half - freq_shift))``, ``half = dim // 2``; an odd ``dim`` gets a
    zero last column. Computed in float32. ``freq_shift`` is diffusers' ``downscale_freq_shift``
    (0 here and in the DiT paper's code; 1 in diffusers' ``DiTTransformer2DModel``).
    """
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=t.device)
    if freq_shift:  # rounded in diffusers' order, so a converted DiT computes its embedding to the last bit
        freqs = torch.exp(-math.log(max_period) * steps / (half - freq_shift))
    else:
        freqs = torch.exp(steps * (-math.log(max_period) / half))
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def guidance_scale_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of guidance weights w (seed convention), ``(batch,) -> (batch, dim)``:
    LCM's w-conditioning (Luo et al. 2023, Sec. 4.2), exactly diffusers'
    ``LatentConsistencyModelPipeline.get_guidance_scale_embedding`` (after VDM): of 1000 w,
    ``emb[:, i] = sin(1000 w f_i)`` and ``emb[:, half + i] = cos(1000 w f_i)`` with
    ``f_i = exp(-i log(10000) / (half - 1))``, ``half = dim // 2`` (sin first and half - 1, unlike
    :func:`timestep_embedding`); an odd ``dim`` gets a zero last column. Computed in float32."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device) * (-math.log(10000.0) / (half - 1)))
    args = (w * 1000.0).to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def norm_groups(channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
    """GroupNorm group count: the largest divisor of ``channels`` that is at most 32 and leaves at
    least 4 channels per group (32 groups for the usual >= 128 channels, as DDPM/ADM).

    A group of one channel would subtract each channel's spatial mean and so erase the time and
    class embedding that a residual block adds as a per-channel constant before its second norm."""
    limit = max(1, min(max_groups, channels // min_group_size))
    return max(g for g in range(1, limit + 1) if channels % g == 0)


def group_norm(channels: int) -> GroupNorm:
    """GroupNorm with :func:`norm_groups` groups (Wu & He 2018), eps 1e-5 as in DDPM/ADM."""
    return GroupNorm(norm_groups(channels), channels, eps=1e-5)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` (ADM: residual branches start as the identity)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def num_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module`` (only trainable ones if asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def preferred_memory_format(device, mixed_precision: str = "no") -> torch.memory_format:
    """The layout in which diffkit's convolutional networks run fastest on ``device`` (a
    ``torch.device`` or its name) under ``mixed_precision`` (``no``, ``bf16``, ``fp16``).

    ``channels_last`` on the CPU in fp32 (a training step 4-13% faster than contiguous for the
    CIFAR-10 and MNIST networks, a seed-network forward 5%) and in bf16 where diffkit's CPU
    kernels are built (their channels_last GroupNorm + SiLU takes bf16 since the twentieth
    session: a bf16 training step 10% faster than contiguous for the MNIST network, 2% for
    CIFAR-10, equal for the seed network; a bf16 forward 12% faster for MNIST, equal for the
    others). Contiguous everywhere else: bf16 on a CPU without the kernels (PyTorch's channels_last
    bf16 GroupNorm needs layout copies; contiguous was 7-8% faster), on CUDA (H200, torch 2.11,
    batch 128: a seed / CIFAR-10 training step 13% / 18% faster in fp32 and 10% / 13% in bf16; only
    the small MNIST network in bf16 was faster channels_last; diffusers' sampling loop too ran
    faster contiguous; BENCHMARKS.md) and on mps. docs/performance.md has the measurements."""
    check_choice("mixed_precision", mixed_precision, MIXED_PRECISION)
    device_type = torch.device(device).type if not isinstance(device, torch.device) else device.type
    if device_type == "cpu" and (mixed_precision == "no" or (mixed_precision == "bf16" and cpu_kernels() is not None)):
        return torch.channels_last
    return torch.contiguous_format


_LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def resolve_memory_format(name: str, device, mixed_precision: str = "no") -> torch.memory_format:
    """The layout a config's ``memory_format`` names: ``auto`` is :func:`preferred_memory_format`
    for ``device`` and ``mixed_precision``; ``channels_last`` and ``contiguous`` force that layout
    (e.g. to measure both on a GPU)."""
    check_choice("memory_format", name, MEMORY_FORMATS)
    return preferred_memory_format(device, mixed_precision) if name == "auto" else _LAYOUTS[name]


def to_compute_layout(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``x`` laid out in the network's ``memory_format`` (:func:`use_memory_format`) on the CPU and
    on CUDA; unchanged elsewhere."""
    if x.device.type in ("cpu", "cuda"):
        return x.contiguous(memory_format=memory_format)
    return x


def to_caller_layout(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The network's output ``out`` in the layout of its input ``x`` (contiguous or channels_last;
    a small copy when they differ)."""
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return out.contiguous(memory_format=torch.channels_last)
    return out.contiguous()


def _contiguous_state(module, state_dict, prefix, _metadata):
    """State-dict post-hook: channels_last weights are saved contiguous (safetensors needs it)."""
    for key, value in state_dict.items():
        if key.startswith(prefix) and not isinstance(value, nn.Parameter) and not value.is_contiguous():
            state_dict[key] = value.contiguous()


@contextlib.contextmanager
def evaluating(module: nn.Module):
    """``module`` in eval mode inside the block; its previous train/eval mode is restored after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def to_device(module: nn.Module, device, mixed_precision: str = "no") -> nn.Module:
    """``module`` on ``device`` in the layout it runs fastest in there (:func:`preferred_memory_format`;
    diffkit's networks are built channels_last, the CPU's layout)."""
    return use_memory_format(module.to(device), preferred_memory_format(device, mixed_precision))


def use_memory_format(module: nn.Module, memory_format: torch.memory_format = torch.channels_last) -> nn.Module:
    """Store ``module``'s convolution weights in ``memory_format`` and make its forward lay its
    input out the same way (``module.memory_format``, read by :func:`to_compute_layout`).

    Weights in the activations' layout save a weight (and weight-gradient) re-layout per
    convolution call, about 8% of a CPU training step of the seed U-Net. Change it before an
    optimiser holds state for the weights (fused AdamW needs moments in the weights' layout).
    ``state_dict()`` still returns contiguous tensors (so safetensors can save them) and
    ``load_state_dict`` keeps the module's layout."""
    check_choice("memory_format", memory_format, tuple(_LAYOUTS.values()))
    module.to(memory_format=memory_format)
    for sub in module.modules():  # the networks inside a wrapper (a text-conditioned U-Net) too
        if sub is module or hasattr(sub, "memory_format"):
            sub.memory_format = memory_format
    if not getattr(module, "_saves_contiguous_state", False):
        module.register_state_dict_post_hook(_contiguous_state)
        module._saves_contiguous_state = True
    return module


def _to_tokens(h: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C); a view when ``h`` is channels_last."""
    b, c, hh, ww = h.shape
    return h.permute(0, 2, 3, 1).reshape(b, hh * ww, c)


def _from_tokens(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W) laid out channels_last (a view, no copy)."""
    b, _, c = tokens.shape
    return tokens.reshape(b, height, width, c).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------- blocks
class TimeEmbedding(nn.Module):
    """t -> sinusoidal(channel) -> Linear -> SiLU -> Linear (DDPM Appendix B), width ``4*channel``.

    ``cond_dim`` > 0 adds ``cond_proj`` (Linear(cond_dim, channel), no bias) of a condition
    embedding to the sinusoidal features before ``linear_1``: diffusers' ``TimestepEmbedding``
    with ``cond_proj_dim`` (LCM's guidance-scale input). It starts at zero here, so a network
    given the teacher's other weights computes the teacher's function (docs/consistency.md).
    ``freq_shift``: :func:`timestep_embedding`'s (1 for diffusers' DiT)."""

    def __init__(self, channel: int, emb_dim: int, cond_dim: int = 0, freq_shift: int = 0):
        super().__init__()
        self.channel, self.freq_shift = channel, freq_shift
        self.linear_1 = nn.Linear(channel, emb_dim)
        self.linear_2 = nn.Linear(emb_dim, emb_dim)
        self.cond_proj = zero_module(nn.Linear(cond_dim, channel, bias=False)) if cond_dim else None

    def forward(self, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        emb = timestep_embedding(t, self.channel, freq_shift=self.freq_shift).to(self.linear_1.weight.dtype)
        if cond is not None:
            emb = emb + self.cond_proj(cond.to(emb.dtype))
        return self.linear_2(F.silu(self.linear_1(emb)))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv residual block conditioned on an embedding (DDPM App. B; ADM Sec. 3).

    ``out = skip(x) + conv2(dropout(SiLU(norm2(h) [*(1+scale)+shift])))`` with
    ``h = conv1(SiLU(norm1(x))) [+ proj(emb)]``; ``conv2`` starts at zero. ``resample``
    'up'/'down' makes it a BigGAN-style resampling block (nearest x2 / 2x2 average pool,
    applied to both branches). The block receives the embedding already passed through SiLU.
    ``emb_dim=None`` builds it without an embedding (``h = conv1(SiLU(norm1(x)))``), the
    residual block of the latent autoencoder (Rombach et al. 2022, App. G); ``emb`` is then ignored.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int | None, dropout: float = 0.0,
                 scale_shift_norm: bool = False, resample: str | None = None):
        super().__init__()
        self.scale_shift_norm = scale_shift_norm
        self.resample = resample
        self.dropout = dropout
        self.norm1 = group_norm(in_channels)
        self.conv1 = WinogradConv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = (None if emb_dim is None else
                         nn.Linear(emb_dim, 2 * out_channels if scale_shift_norm else out_channels))
        self.norm2 = group_norm(out_channels)
        self.conv2 = zero_module(WinogradConv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1.forward_silu(x)
        if self.resample is not None:
            h, x = self._resample(h), self._resample(x)
        h = self.conv1(h)
        e = None if self.emb_proj is None else self.emb_proj(emb)[:, :, None, None]
        if e is None:
            h = self.norm2.forward_silu(h)
        elif self.scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm2(h), scale + 1.0))
        else:
            h = self.norm2.forward_silu(h + e)
        if self.dropout > 0.0:
            h = dropout(h, self.dropout, self.training)
        h = self.conv2(h)
        skip = x if self.skip is None else self.skip(x)
        return skip + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all positions with a residual (DDPM App. B; ADM Sec. 3).

    ``x + proj(attention(qkv(norm(x))))``; ``proj`` starts at zero.
    """

    # Perturbed-Attention Guidance (UNet.perturbed_self_attention): None (plain attention), True or a
    # (B,) bool mask of the samples whose attention map is the identity (attention.identity_attention)
    identity_attention = None

    def __init__(self, channels: int, heads: int = 1):
        super().__init__()
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_module(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        _, _, height, width = x.shape
        q, k, v = self.qkv(_to_tokens(self.norm(x))).chunk(3, dim=-1)
        identity = self.identity_attention
        out = self.proj(attention(q, k, v, self.heads) if identity is None
                        else identity_attention(q, k, v, self.heads, identity))
        return x + _from_tokens(out, height, width)


class _CrossAttention(nn.Module):
    """Multi-head attention of queries (B, L, C) on a context (B, M, context_dim) (LDM Sec. 3.3)."""

    def __init__(self, channels: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * channels, bias=False)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        k, v = self.to_kv(context).chunk(2, dim=-1)
        return self.to_out(attention(self.to_q(x), k, v, self.heads))


class SpatialTransformer(nn.Module):
    """Latent-diffusion transformer block on a feature map (Rombach et al. 2022, Sec. 3.3).

    tokens = proj_in(norm(x)); tokens += self-attn(LN); tokens += cross-attn(LN, context);
    tokens += GEGLU feed-forward(LN); ``x + proj_out(tokens)`` with ``proj_out`` zero at start.
    Without a context (``context=None``) the cross-attention step is skipped. ``identity_attention``
    (Perturbed-Attention Guidance, as :class:`AttentionBlock`'s) perturbs the self-attention only.
    """

    identity_attention = None

    def __init__(self, channels: int, context_dim: int, heads: int = 1, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm = group_norm(channels)
        self.proj_in = nn.Linear(channels, channels)
        self.norm_self = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.self_out = nn.Linear(channels, channels)
        self.norm_cross = nn.LayerNorm(channels)
        self.cross = _CrossAttention(channels, context_dim, heads)
        self.norm_ff = nn.LayerNorm(channels)
        self.ff_in = nn.Linear(channels, 8 * channels)  # GEGLU: value and gate, 4*channels each
        self.ff_out = nn.Linear(4 * channels, channels)
        self.proj_out = zero_module(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        _, _, height, width = x.shape
        h = self.proj_in(_to_tokens(self.norm(x)))
        q, k, v = self.qkv(self.norm_self(h)).chunk(3, dim=-1)
        identity = self.identity_attention
        h = h + self.self_out(attention(q, k, v, self.heads) if identity is None
                              else identity_attention(q, k, v, self.heads, identity))
        if context is not None:
            h = h + self.cross(self.norm_cross(h), context.to(h.dtype))
        value, gate = self.ff_in(self.norm_ff(h)).chunk(2, dim=-1)
        ff = value * F.gelu(gate)
        if self.dropout > 0.0:
            ff = dropout(ff, self.dropout, self.training)
        h = h + self.ff_out(ff)
        return x + _from_tokens(self.proj_out(h), height, width)


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 convolution (DDPM App. B)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour x2 then a 3x3 convolution (DDPM App. B)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = WinogradConv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class AttentionPool2d(nn.Module):
    """Attention pooling of a feature map to one vector (CLIP, Radford et al. 2021; ADM classifier).

    The mean token, prepended to the H*W tokens, with a learned positional embedding, attends to
    all tokens; its output is projected to ``out_dim``.
    """

    def __init__(self, spatial_size: int, channels: int, out_dim: int, heads: int = 1):
        super().__init__()
        self.heads = heads
        self.positional = nn.Parameter(torch.randn(spatial_size * spatial_size + 1, channels) / channels ** 0.5)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = _to_tokens(x)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1) + self.positional.to(tokens.dtype)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        pooled = attention(q[:, :1], k, v, self.heads)
        return self.out(pooled[:, 0])


# --------------------------------------------------------------------------- trunks
def attention_block(channels: int, cfg: TrunkConfig, context_dim: int | None) -> nn.Module:
    """Self-attention block, or a spatial transformer when a cross-attention context is configured."""
    heads = attention_heads(channels, cfg.num_heads, cfg.head_channels)
    if context_dim is not None:
        return SpatialTransformer(channels, context_dim, heads, dropout=cfg.dropout)
    return AttentionBlock(channels, heads)


def build_down_path(cfg: TrunkConfig, emb_dim: int, context_dim: int | None = None
                    ) -> tuple[nn.ModuleList, list[int]]:
    """The U-Net's downsampling trunk after the input convolution (DDPM App. B / ADM).

    Returns the list of blocks and the channel count each block leaves on the skip stack
    (``skip_channels[0]`` is the input convolution's). Level ``i`` has ``num_res_blocks``
    residual blocks (each followed by attention if ``i in cfg.attn``) and, except the last
    level, a downsampler.
    """
    blocks = nn.ModuleList()
    widths = cfg.level_channels()
    ch = cfg.channel
    skip_channels = [ch]
    for level, width in enumerate(widths):
        for _ in range(cfg.num_res_blocks):
            layers = [ResBlock(ch, width, emb_dim, cfg.dropout, cfg.scale_shift_norm)]
            ch = width
            if level in cfg.attn:
                layers.append(attention_block(ch, cfg, context_dim))
            blocks.append(BlockChain(layers))
            skip_channels.append(ch)
        if level != len(widths) - 1:
            if cfg.resblock_updown:
                down = ResBlock(ch, ch, emb_dim, cfg.dropout, cfg.scale_shift_norm, resample="down")
            else:
                down = Downsample(ch)
            blocks.append(BlockChain([down]))
            skip_channels.append(ch)
    return blocks, skip_channels


def build_middle(cfg: TrunkConfig, emb_dim: int, context_dim: int | None = None) -> nn.Module:
    """ResBlock -> attention -> ResBlock at the lowest resolution (DDPM App. B)."""
    ch = cfg.level_channels()[-1]
    return BlockChain([
        ResBlock(ch, ch, emb_dim, cfg.dropout, cfg.scale_shift_norm),
        attention_block(ch, cfg, context_dim),
        ResBlock(ch, ch, emb_dim, cfg.dropout, cfg.scale_shift_norm),
    ])


class BlockChain(nn.ModuleList):
    """Blocks applied in order, each given ``(h, emb, context)``."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        for block in self:
            h = block(h, emb, context)
        return h


def run_blocks(blocks: Sequence[nn.Module], h: torch.Tensor, emb: torch.Tensor,
               context: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Apply ``blocks`` in order and return every block's output (the U-Net skip stack)."""
    outputs = []
    for block in blocks:
        h = block(h, emb, context)
        outputs.append(h)
    return outputs
