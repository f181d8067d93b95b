"""Diffusion Transformer (DiT; Peebles & Xie 2023, "Scalable Diffusion Models with Transformers"):
``net(x, t, y=None) -> (B, C, H, W)`` (``(B, 2C, H, W)`` with a learned variance).

The image is cut into p x p patches, each a token (DiT Sec. 3.1, "Patchify": a convolution with
kernel = stride = p), plus the fixed 2-D sin-cos position embedding of MAE / ViT (Sec. 3.1). The
conditioning c = MLP(sinusoidal(t)) + embed(y) (Sec. 3.1, "DiT block design": the timestep and class
embeddings summed; the last of ``num_classes + 1`` rows is the null label of classifier-free guidance,
Sec. 2 and Ho & Salimans 2022) drives N blocks with adaLN-Zero (Sec. 3.1, "adaLN-Zero block"): each block regresses
shift, scale and gate for its attention and its MLP from c,

    x = x + gate_msa * Attn(LN(x) * (1 + scale_msa) + shift_msa)
    x = x + gate_mlp * MLP(LN(x) * (1 + scale_mlp) + shift_mlp),

with the regression zero-initialised, so every block starts as the identity. The final layer
(adaLN, then a zero-initialised linear to p*p*C_out per token, Sec. 3.1 "Transformer decoder")
is unpatchified back to (B, C_out, H, W). ``learned_variance`` outputs [eps, v] (2C channels) as
DiT does for its hybrid loss (Sec. 2: Sigma_theta learned with the full L, after Improved DDPM eq. 15-16).

Weights map one to one onto diffusers' ``DiTTransformer2DModel`` (which repeats the timestep and
class embedders inside every block's ``AdaLayerNormZero``; DiT shares one: :mod:`diffkit.interop.dit`).
Its timestep embedding uses ``freq_shift = 1`` (diffusers' ``downscale_freq_shift``); the DiT
paper's code has 0. Both are recorded in :class:`DiTConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DiffkitError, check_range
from .layers import TimeEmbedding, num_parameters, to_caller_layout
from .unet import add_class_embedding, broadcast_time

TIME_FREQUENCIES = 256  # the sinusoidal timestep features (DiT's TimestepEmbedder, frequency_embedding_size)
MLP_RATIO = 4  # the MLP's hidden width per token / model width (DiT Table 1, all sizes)
NORM_EPS = 1e-6  # LayerNorm eps of every block and the final layer (DiT's code; DiTConfig.norm_eps: the MLP's)


@dataclass(frozen=True)
class DiTConfig:
    """A DiT's shape (DiT Table 1: DiT-S is 12 layers, 6 heads of 64; DiT-B 12, 12 of 64).

    The model width (DiT's hidden size) is ``num_attention_heads * attention_head_dim`` (diffusers'
    ``inner_dim``); ``img_size`` must be a multiple of ``patch_size``; ``learned_variance`` and
    ``num_classes`` as :class:`~diffkit.models.unet.UNetConfig`'s; ``freq_shift`` as
    :func:`~diffkit.models.layers.timestep_embedding`'s; ``norm_eps`` the eps of the LayerNorm before each
    block's MLP, diffusers' ``norm_eps``, which sets that one only (its attention and final LayerNorms keep
    1e-6): DiT's code has 1e-6 everywhere, diffusers runs the DiT-XL/2 folders (no norm_eps) at its default 1e-5."""

    img_size: int = 32
    in_channels: int = 3
    patch_size: int = 2
    num_layers: int = 12
    num_attention_heads: int = 6
    attention_head_dim: int = 64
    learned_variance: bool = False
    num_classes: int | None = None
    freq_shift: int = 1
    norm_eps: float = NORM_EPS

    def __post_init__(self):
        for name in ("img_size", "in_channels", "patch_size", "num_layers", "num_attention_heads",
                     "attention_head_dim"):
            check_range(name, getattr(self, name), 1, None, integer=True)
        if self.img_size % self.patch_size:
            raise DiffkitError(f"patch_size={self.patch_size} must divide img_size={self.img_size} (DiT cuts the "
                               f"image into patch_size x patch_size patches)")
        if self.hidden_size % 4:
            raise DiffkitError(f"num_attention_heads * attention_head_dim = {self.hidden_size} must be a multiple "
                               f"of 4 (the 2-D sin-cos position embedding: sin and cos of rows and of columns)")
        if not isinstance(self.learned_variance, bool):
            raise DiffkitError(f"learned_variance={self.learned_variance!r} is not allowed; give True or False")
        if self.num_classes is not None:
            check_range("num_classes", self.num_classes, 1, None, integer=True)
        if isinstance(self.norm_eps, bool) or not isinstance(self.norm_eps, (int, float)) or \
                not 0 < self.norm_eps < 1:
            raise DiffkitError(f"norm_eps={self.norm_eps!r} is not allowed; give a LayerNorm eps in (0, 1) (DiT: 1e-6)")
        if self.freq_shift not in (0, 1):
            raise DiffkitError(f"freq_shift={self.freq_shift!r} is not allowed; give 0 (DiT's code) or 1 (diffusers)")

    @property
    def hidden_size(self) -> int:
        """The model width: heads times their width."""
        return self.num_attention_heads * self.attention_head_dim

    @property
    def output_channels(self) -> int:
        """Channels the network returns (doubled with a learned variance)."""
        return 2 * self.in_channels if self.learned_variance else self.in_channels


def sincos_position_embedding(width: int, grid: int) -> Tensor:
    """The fixed 2-D sin-cos position embedding of a ``grid`` x ``grid`` token map, ``(grid**2, width)`` in
    row-major token order (MAE's ``get_2d_sincos_pos_embed``, used by DiT Sec. 3.1): the first half of the
    channels embeds each token's column, the second half its row, each as [sin(pos w_i), cos(pos w_i)]
    with ``w_i = 10000 ** (-i / (width / 4))``, i < width / 4 (Vaswani et al. 2017, Sec. 3.5)."""
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def one_axis(p: Tensor) -> Tensor:
        args = p.reshape(-1, 1) * omega[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)

    return torch.cat([one_axis(cols), one_axis(rows)], dim=1).float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x * (1 + scale) + shift per sample (DiT Sec. 3.1), x (B, N, D), shift/scale (B, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """One adaLN-Zero transformer block (DiT Sec. 3.1, Fig. 3): multi-head self-attention and a GELU(tanh)
    MLP, each after a LayerNorm without affine weights, modulated and gated by the conditioning c."""

    def __init__(self, width: int, heads: int, mlp_eps: float = NORM_EPS):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=NORM_EPS)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=mlp_eps)  # diffusers' norm_eps
        self.mlp = nn.Sequential(nn.Linear(width, MLP_RATIO * width), nn.GELU(approximate="tanh"),
                                 nn.Linear(MLP_RATIO * width, width))
        self.modulation = nn.Linear(width, 6 * width)  # adaLN-Zero: zero-initialised by DiT.__init__

    def attention(self, h: Tensor) -> Tensor:
        """Self-attention, softmax(Q K^T / sqrt(d)) V per head (Vaswani et al. 2017, eq. 1), fused by
        :func:`torch.nn.functional.scaled_dot_product_attention`."""
        b, n, width = h.shape
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, width))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(F.silu(c)).chunk(6, dim=1)
        x = x + gate_msa[:, None] * self.attention(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class DiT(nn.Module):
    """Diffusion Transformer over p x p patches; see the module docstring."""

    def __init__(self, config: DiTConfig = DiTConfig()):
        super().__init__()
        self.config = cfg = config
        width, p = cfg.hidden_size, cfg.patch_size
        self.patch_embed = nn.Conv2d(cfg.in_channels, width, p, stride=p)
        self.time_embed = TimeEmbedding(TIME_FREQUENCIES, width, freq_shift=cfg.freq_shift)
        self.class_embed = nn.Embedding(cfg.num_classes + 1, width) if cfg.num_classes is not None else None
        self.blocks = nn.ModuleList([DiTBlock(width, cfg.num_attention_heads, cfg.norm_eps)
                                     for _ in range(cfg.num_layers)])
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=NORM_EPS)
        self.out_modulation = nn.Linear(width, 2 * width)
        self.out_proj = nn.Linear(width, p * p * cfg.output_channels)
        self._initialize()

    def _initialize(self) -> None:
        """DiT's initialisation (its code's ``initialize_weights``): Xavier-uniform linear layers and patch
        projection (as a linear map), N(0, 0.02) class and timestep-MLP weights, and zero adaLN-Zero
        regressions and output layer (Sec. 3.1: each block starts as the identity, the output at 0)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=0.02)
        nn.init.normal_(self.time_embed.linear_1.weight, std=0.02)
        nn.init.normal_(self.time_embed.linear_2.weight, std=0.02)
        for layer in [block.modulation for block in self.blocks] + [self.out_modulation, self.out_proj]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def patchify(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, (H/p)(W/p), D) tokens in row-major order, plus the position embedding."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        grid = x.shape[2] // self.config.patch_size
        return tokens + sincos_position_embedding(tokens.shape[2], grid).to(tokens.device, tokens.dtype)

    def unpatchify(self, tokens: Tensor, grid: int) -> Tensor:
        """(B, grid**2, p*p*C) -> (B, C, grid*p, grid*p): token (h, w)'s (p, q, c) entry is pixel
        (c, h*p + p', w*p + q') (DiT's ``unpatchify``)."""
        p, c = self.config.patch_size, self.config.output_channels
        x = tokens.reshape(tokens.shape[0], grid, grid, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(tokens.shape[0], c, grid * p, grid * p)

    def forward(self, x: Tensor, t, y: Tensor | None = None) -> Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[2:] != (cfg.img_size, cfg.img_size):
            raise DiffkitError(f"x has shape {tuple(x.shape)}; allowed: (batch, {cfg.in_channels}, {cfg.img_size}, "
                               f"{cfg.img_size})")
        batch = x.shape[0]
        c = self.time_embed(broadcast_time(t, batch, x.device))
        c = add_class_embedding(c, self.class_embed, y, cfg.num_classes, "DiT")
        h = self.patchify(x)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.out_modulation(F.silu(c)).chunk(2, dim=1)
        out = self.out_proj(modulate(self.norm_out(h), shift, scale))
        return to_caller_layout(self.unpatchify(out, cfg.img_size // cfg.patch_size), x)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of scalar parameters."""
        return num_parameters(self, trainable_only)
