"""The DDPM / ADM U-Net (Ho et al. 2020, Appendix B; Dhariwal & Nichol 2021, Section 3).

``UNet(UNetConfig(...))(x, t, y=None, context=None)`` predicts eps (and, with
``learned_variance``, the variance interpolation v of Nichol & Dhariwal 2021, eq. 15) for a
noisy image ``x`` at (possibly fractional) training time ``t``. Config field names follow the
seed's ``modelConfig`` keys (``channel``, ``channel_mult``, ``attn``, ``num_res_blocks``,
``dropout``, ``img_size``), so a config can be passed through verbatim.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DiffkitError, check_range
from .layers import (AttentionBlock, BlockChain, ResBlock, SpatialTransformer, TimeEmbedding, TrunkConfig, Upsample,
                     attention_block, build_down_path, build_middle, group_norm, guidance_scale_embedding,
                     num_parameters, run_blocks, to_caller_layout, to_compute_layout, use_memory_format, zero_module)

__all__ = ["UNetConfig", "UNet", "num_parameters", "self_attention_layer_names", "check_self_attention_layers"]

_LAYER_NAME = re.compile(r"(mid)|(down|up)\.(\d+)")


def self_attention_layer_names(attn: Sequence[int], levels: int) -> list[str]:
    """The names of a U-Net's self-attention layers, as Perturbed-Attention Guidance selects them
    (:meth:`UNet.perturbed_self_attention`): ``down.L`` (the attention blocks of level L on the way down,
    L an index into ``channel_mult`` as in the config's ``attn``: resolution img_size / 2^L), ``mid`` (the
    middle block's, always there) and ``up.L`` (level L on the way up), for the levels in ``attn``.
    diffusers' ``pag_applied_layers`` names them alike ("mid", "down.1", "up.0"), except that its up
    blocks count from the lowest resolution: its ``up.0`` is diffkit's ``up.{levels-1}``."""
    attn = sorted(set(int(a) for a in attn))
    return [f"down.{a}" for a in attn] + ["mid"] + [f"up.{a}" for a in reversed(attn)]


def check_self_attention_layers(layers, attn: Sequence[int] | None, levels: int | None,
                                model: str = "this U-Net") -> list[str]:
    """``layers`` (names, or one comma-separated string) checked against a U-Net whose levels
    ``0..levels-1`` have self-attention at ``attn``: a one-line error for a name that is no layer name
    (listing the valid ones) and for a level without self-attention; returns the names, deduplicated.
    ``attn`` and ``levels`` None: the names' form alone (mid, down.L, up.L), before a model is known."""
    if isinstance(layers, str):
        layers = layers.split(",")
    names = [str(name).strip() for name in layers]
    valid = None if attn is None else self_attention_layer_names(attn, levels)
    form = "mid, or down.L / up.L for a level L" + ("" if levels is None else f" in 0..{levels - 1}") + \
        " of channel_mult"
    if not names:
        raise DiffkitError(f"no self-attention layer was named; give {form}")
    for name in names:
        match = _LAYER_NAME.fullmatch(name)
        if match is None or (levels is not None and match.group(3) is not None and int(match.group(3)) >= levels):
            has = "" if valid is None else f"{model} has {', '.join(valid)} "
            hint = "; diffusers' layer names are a Stable Diffusion folder's" if "_block" in name else ""
            raise DiffkitError(f"unknown self-attention layer {name!r}; {has}({form}){hint}")
        if valid is not None and name not in valid:
            raise DiffkitError(f"{model} has no self-attention at {name} (level {match.group(3)} is not in its attn "
                               f"{sorted(set(int(a) for a in attn))}); its self-attention layers: {', '.join(valid)}")
    return list(dict.fromkeys(names))


@dataclass
class UNetConfig(TrunkConfig):
    """Settings of :class:`UNet`; see :class:`~diffkit.models.layers.TrunkConfig` for the trunk.

    out_channels: predicted channels (None: same as ``in_channels``).
    learned_variance: also output v (Improved DDPM eq. 15), doubling the output channels.
    num_classes: class-conditional with ``num_classes + 1`` embeddings, the last being the
        learned null class for classifier-free guidance (``y=None`` means the null class).
    context_dim: add cross-attention (spatial transformer) blocks at the attention levels and
        the middle, attending to ``context`` of shape (batch, seq_len, context_dim).
    context_pooled: also add a linear map of the context's mean over the sequence to the
        timestep embedding, as Imagen (Saharia et al. 2022, Sec. 2.5) and SD-XL (Podell et al.
        2023, Sec. 2.1) add a pooled text embedding; it lets a small model pick up the prompt as
        fast as a class embedding. Needs ``context_dim``.
    guidance_embedding_dim: 0 (default: none) or the width (>= 4) of LCM's guidance-scale input
        (Luo et al. 2023, Sec. 4.2): ``forward(..., w=...)`` embeds the guidance weight w (seed
        convention) with :func:`~diffkit.models.layers.guidance_scale_embedding` and adds its
        projection (``time_embed.cond_proj``, zero at start) to the timestep features, as
        diffusers' ``UNet2DConditionModel(time_cond_proj_dim=...)``. Set by w-conditioned
        consistency distillation (docs/consistency.md).
    low_res_size: None (default) or the side of a super-resolution model's low-resolution input
        (improved-diffusion's ``SuperResModel``; SR3, Saharia et al. 2021): ``forward(..., low_res=...)``
        takes (B, in_channels, low_res_size, low_res_size), upsamples it bilinearly to x's size and
        concatenates it after x on the channel axis, so the input convolution takes
        ``2 * in_channels`` channels (:mod:`diffkit.super_res`; docs/super_resolution.md).
    low_res_noise: a super-resolution model trained with conditioning augmentation (Ho et al. 2021,
        "Cascaded Diffusion Models", Sec. 4.1; diffusers' upscaler ``noise_level``): ``forward(...,
        noise_level=...)`` takes the augmentation level of ``low_res`` (a number or (B,), in timesteps)
        and adds its embedding (``noise_level_embed``, a timestep embedding) to the timestep's.
    """

    out_channels: int | None = None
    learned_variance: bool = False
    num_classes: int | None = None
    context_dim: int | None = None
    context_pooled: bool = False
    guidance_embedding_dim: int = 0
    low_res_size: int | None = None
    low_res_noise: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.out_channels is not None:
            check_range("out_channels", self.out_channels, 1, integer=True)
        if self.num_classes is not None:
            check_range("num_classes", self.num_classes, 1, integer=True)
        if self.context_dim is not None:
            check_range("context_dim", self.context_dim, 1, integer=True)
        check_range("guidance_embedding_dim", self.guidance_embedding_dim, 0, integer=True)
        if 0 < self.guidance_embedding_dim < 4:  # diffusers' embedding divides by dim // 2 - 1
            raise DiffkitError(f"guidance_embedding_dim={self.guidance_embedding_dim} is not allowed; give 0 (none) "
                               f"or a width >= 4")
        if self.low_res_size is not None:
            check_range("low_res_size", self.low_res_size, 1, integer=True)
            if self.img_size % self.low_res_size or self.low_res_size >= self.img_size:
                raise DiffkitError(f"low_res_size={self.low_res_size} is not allowed; give a side that divides "
                                   f"img_size={self.img_size} and is smaller than it")
        if self.low_res_noise and self.low_res_size is None:
            raise DiffkitError("low_res_noise=True (conditioning augmentation) needs low_res_size (a super-resolution "
                               "model)")
        if self.context_pooled and self.context_dim is None:
            raise DiffkitError("context_pooled=True needs context_dim (the width of the context it pools)")

    @property
    def output_channels(self) -> int:
        """Channels the network returns (doubled with a learned variance)."""
        out = self.in_channels if self.out_channels is None else self.out_channels
        return 2 * out if self.learned_variance else out


def broadcast_time(t, batch: int, device: torch.device) -> torch.Tensor:
    """Times as a float32 tensor of shape (batch,); a scalar (Python or 0-d/1-element) is broadcast."""
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0 or (t.numel() == 1 and batch != 1):
        return t.reshape(()).to(torch.float32).expand(batch)
    if t.ndim != 1 or t.shape[0] != batch:
        raise DiffkitError(f"t has shape {tuple(t.shape)}; allowed: a scalar or shape ({batch},) "
                           f"for a batch of {batch}")
    return t.to(torch.float32)


def check_class_labels(y, batch: int, num_classes: int) -> None:
    """y: integer labels, one per sample, in 0..num_classes (num_classes = the null label of
    classifier-free guidance). The range test costs a host sync; compiled graphs skip it."""
    n = num_classes
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise DiffkitError(f"class labels y of type {getattr(y, 'dtype', type(y).__name__)} are not allowed; give "
                           f"an integer tensor of {batch} labels in 0..{n - 1} ({n}: unconditional)")
    if y.shape != (batch,):
        raise DiffkitError(f"class labels y of shape {tuple(y.shape)} are not allowed; "
                           f"give ({batch},), one per sample")
    from .cpu_kernels import compiling
    if not compiling() and bool(((y < 0) | (y > n)).any()):  # one host sync
        bad = y[(y < 0) | (y > n)][0].item()
        raise DiffkitError(f"class label {bad} is out of range; allowed: 0..{n - 1} ({n}: unconditional)")


def add_class_embedding(emb: torch.Tensor, class_embed: nn.Embedding | None, y, num_classes: int | None,
                        network: str) -> torch.Tensor:
    """``emb`` + the embedding of labels ``y`` (ADM Sec. 3; the image and the 1-D U-Net alike): ``y=None``
    is the learned null class ``num_classes`` of classifier-free guidance (Ho & Salimans 2022, Sec. 3.2)
    for every sample; labels are checked by :func:`check_class_labels`. An unconditional network
    (``class_embed`` None) refuses labels in one line."""
    if class_embed is None:
        if y is not None:
            raise DiffkitError(f"y was given but the {network} is unconditional; set num_classes in its config")
        return emb
    batch = emb.shape[0]
    if y is None:
        y = torch.full((batch,), num_classes, dtype=torch.long, device=emb.device)
    else:
        check_class_labels(y, batch, num_classes)
    return emb + class_embed(y)


class UNet(nn.Module):
    """DDPM/ADM U-Net: ``forward(x, t, y=None, context=None, w=None, low_res=None, noise_level=None)
    -> (B, output_channels, H, W)``."""

    freeu = None  # a diffkit.models.freeu.FreeU while sampling with FreeU (diffkit.models.freeu.freeu_enabled)

    def __init__(self, config: UNetConfig | None = None, **overrides):
        super().__init__()
        if config is None:
            config = UNetConfig(**overrides)
        elif overrides:
            raise DiffkitError(f"pass either a UNetConfig or keyword settings, not both (got {sorted(overrides)})")
        self.config = cfg = config
        emb_dim = 4 * cfg.channel
        self.time_embed = TimeEmbedding(cfg.channel, emb_dim, cfg.guidance_embedding_dim)
        self.class_embed = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes is not None else None
        self.context_embed = nn.Linear(cfg.context_dim, emb_dim) if cfg.context_pooled else None
        self.noise_level_embed = TimeEmbedding(cfg.channel, emb_dim) if cfg.low_res_noise else None
        inputs = cfg.in_channels * (2 if cfg.low_res_size is not None else 1)  # [x_t, upsampled low_res]
        self.input_conv = nn.Conv2d(inputs, cfg.channel, 3, padding=1)
        self.down, skip_channels = build_down_path(cfg, emb_dim, cfg.context_dim)
        self.middle = build_middle(cfg, emb_dim, cfg.context_dim)
        self.up = nn.ModuleList()
        widths = cfg.level_channels()
        ch = widths[-1]
        for level in reversed(range(len(widths))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), widths[level], emb_dim, cfg.dropout,
                                   cfg.scale_shift_norm)]
                ch = widths[level]
                if level in cfg.attn:
                    layers.append(attention_block(ch, cfg, cfg.context_dim))
                if level > 0 and i == cfg.num_res_blocks:
                    if cfg.resblock_updown:
                        layers.append(ResBlock(ch, ch, emb_dim, cfg.dropout, cfg.scale_shift_norm, resample="up"))
                    else:
                        layers.append(Upsample(ch))
                self.up.append(BlockChain(layers))
        self.out_norm = group_norm(ch)
        self.out_conv = zero_module(nn.Conv2d(ch, cfg.output_channels, 3, padding=1))
        use_memory_format(self)

    def embedding(self, t: torch.Tensor, y: torch.Tensor | None, batch: int, w=None) -> torch.Tensor:
        """Timestep (+ guidance weight) (+ class) embedding, width ``4*channel`` (DDPM App. B; ADM
        Sec. 3; LCM Sec. 4.2 for w)."""
        dim = self.config.guidance_embedding_dim
        if dim and w is None:
            raise DiffkitError(f"this U-Net takes the guidance weight w as input (guidance_embedding_dim={dim}); pass "
                               f"w (seed convention), e.g. cond={{'w': 3.0}}")
        if w is not None and not dim:
            raise DiffkitError("w was given but the U-Net has no guidance-scale input; set guidance_embedding_dim")
        cond = None
        if w is not None:
            if not torch.is_tensor(w):
                try:
                    w = torch.as_tensor(w, dtype=torch.float32)
                except (TypeError, ValueError, RuntimeError):
                    raise DiffkitError(f"w={w!r} is not allowed; give guidance weights as a number or a tensor "
                                       f"of shape ({batch},)") from None
            w_shape = tuple(getattr(w, "shape", ()))
            if w_shape not in ((), (1,), (batch,)) or getattr(w, "is_complex", lambda: False)():
                raise DiffkitError(f"w of shape {w_shape} is not allowed; give one guidance weight or ({batch},)")
            cond = guidance_scale_embedding(broadcast_time(w, batch, t.device), dim)
        emb = self.time_embed(t, cond)
        return add_class_embedding(emb, self.class_embed, y, self.config.num_classes, "UNet")

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None,
                context: torch.Tensor | None = None, w=None, low_res: torch.Tensor | None = None,
                noise_level=None) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise DiffkitError(f"x has shape {tuple(x.shape)}; allowed: (batch, {cfg.in_channels}, height, width)")
        factor = 2 ** (len(cfg.channel_mult) - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise DiffkitError(f"x has spatial size {tuple(x.shape[2:])}; allowed: multiples of {factor}")
        batch = x.shape[0]
        if context is not None:
            if cfg.context_dim is None:
                raise DiffkitError("context was given but the UNet has no cross-attention; "
                                   "set context_dim in its config")
            if (not isinstance(context, torch.Tensor) or context.ndim != 3 or context.shape[0] != batch
                    or context.shape[2] != cfg.context_dim):
                raise DiffkitError(f"context of shape {tuple(getattr(context, 'shape', ()))} is not allowed; give "
                                   f"(batch, tokens, context_dim) = ({batch}, L, {cfg.context_dim})")
        emb = self.embedding(broadcast_time(t, batch, x.device), y, batch, w)
        if self.context_embed is not None and context is not None:  # pooled context (Imagen Sec. 2.5)
            emb = emb + self.context_embed(context.mean(dim=1).to(emb.dtype))
        if self.noise_level_embed is not None or noise_level is not None:  # conditioning augmentation's level
            emb = emb + self._noise_level_embedding(noise_level, batch, x.device)
        emb = F.silu(emb)
        x_in = x if cfg.low_res_size is None and low_res is None else self._with_low_res(x, low_res)
        skips = [self.input_conv(to_compute_layout(x_in, self.memory_format))]
        skips += run_blocks(self.down, skips[0], emb, context)
        h = self.middle(skips[-1], emb, context)
        freeu = self.freeu  # FreeU (.freeu; None: off, the U-Net as before)
        for i, block in enumerate(self.up):
            skip = skips.pop()
            if freeu is not None:
                h, skip = freeu.apply(freeu.stage_of(i, cfg.num_res_blocks), h, skip)
            h = block(torch.cat([h, skip], dim=1), emb, context)
        out = self.out_conv(self.out_norm.forward_silu(h))
        return to_caller_layout(out, x)

    def _noise_level_embedding(self, noise_level, batch: int, device) -> torch.Tensor:
        """The embedding of the augmentation level of ``low_res`` (``low_res_noise``)."""
        if self.noise_level_embed is None:
            raise DiffkitError("noise_level was given but the U-Net was not trained with conditioning augmentation; "
                               "set low_res_noise in its config (super_res_noise when training)")
        if noise_level is None:
            raise DiffkitError("this super-resolution U-Net takes noise_level, the augmentation level of low_res "
                               "(0: a clean low-resolution image; diffkit upscale --noise-level)")
        return self.noise_level_embed(broadcast_time(noise_level, batch, device))

    def _with_low_res(self, x: torch.Tensor, low_res) -> torch.Tensor:
        """[x, upsampled low_res] of a super-resolution U-Net (:func:`diffkit.super_res.concat_low_res`)."""
        from ..super_res import concat_low_res
        cfg = self.config
        if cfg.low_res_size is None:
            raise DiffkitError("low_res was given but the U-Net is not a super-resolution model; set low_res_size in "
                               "its config")
        # the trained ratio img_size / low_res_size (at img_size: low_res_size x low_res_size)
        want = (x.shape[0], cfg.in_channels, *(s * cfg.low_res_size // cfg.img_size for s in x.shape[2:]))
        if low_res is None:
            raise DiffkitError(f"this U-Net is a super-resolution model: it needs low_res, the low-resolution images "
                               f"{want} (cond={{'low_res': ...}}; diffkit upscale, diffkit.super_res.upscale)")
        if not isinstance(low_res, torch.Tensor) or tuple(low_res.shape) != want:
            raise DiffkitError(f"low_res of shape {tuple(getattr(low_res, 'shape', ()))} is not allowed; give {want} "
                               f"for x of shape {tuple(x.shape)} (the trained ratio {cfg.img_size}/{cfg.low_res_size})")
        return concat_low_res(x, low_res)

    def self_attention_layers(self) -> dict[str, list[nn.Module]]:
        """The self-attention blocks by layer name (:func:`self_attention_layer_names`): the
        :class:`~diffkit.models.layers.AttentionBlock` or, with cross-attention, the
        :class:`~diffkit.models.layers.SpatialTransformer` (whose self-attention alone is perturbed)."""
        cfg = self.config
        levels = len(cfg.channel_mult)
        down_levels = [level for level in range(levels)
                       for _ in range(cfg.num_res_blocks + (level != levels - 1))]  # res blocks, downsampler
        up_levels = [level for level in reversed(range(levels)) for _ in range(cfg.num_res_blocks + 1)]
        layers = {name: [] for name in self_attention_layer_names(cfg.attn, levels)}
        for path, chains, chain_levels in (("down", self.down, down_levels), ("mid", [self.middle], [None]),
                                           ("up", self.up, up_levels)):
            for chain, level in zip(chains, chain_levels):
                name = path if level is None else f"{path}.{level}"
                found = [m for m in chain if isinstance(m, (AttentionBlock, SpatialTransformer))]
                if found:
                    layers[name] += found
        return layers

    @contextlib.contextmanager
    def perturbed_self_attention(self, layers: Sequence[str] = ("mid",), identity=True):
        """Within the context, the self-attention of the layers named ``layers`` (``mid``, ``down.L``,
        ``up.L``: :func:`self_attention_layer_names`) has the identity as its attention map, so that its
        output is out_proj(V) (+ the block's residual): the perturbed network eps-hat of Perturbed-Attention
        Guidance (Ahn et al. 2024, arXiv:2403.17377; :class:`diffkit.guidance.PerturbedAttentionGuidance`).
        Cross-attention is left as it is. ``identity``: True (every sample) or a (B,) bool tensor of the
        samples to perturb, so that plain and perturbed passes share one batched forward. Outside the
        context (the default) the blocks run as before, bit for bit: they test one attribute. The state is
        the blocks' (restored on exit, also when the forward raises): not for two threads running one U-Net."""
        cfg = self.config
        blocks = [block for name in check_self_attention_layers(layers, cfg.attn, len(cfg.channel_mult))
                  for block in self.self_attention_layers()[name]]
        before = [block.__dict__.get("identity_attention") for block in blocks]
        try:
            for block in blocks:
                block.identity_attention = identity
            yield self
        finally:
            for block, value in zip(blocks, before):
                if value is None:
                    block.__dict__.pop("identity_attention", None)  # the class's None again
                else:
                    block.identity_attention = value

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of scalar parameters."""
        return num_parameters(self, trainable_only)
