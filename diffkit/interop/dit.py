"""diffkit's DiT <-> diffusers' ``DiTTransformer2DModel``: the config and the weights, name by name.

diffusers' blocks each hold a timestep + class embedder (``transformer_blocks.i.norm1.emb``) where DiT
(Peebles & Xie 2023, Sec. 3.1) has one, shared by every block and the final layer: to diffusers the
shared one is copied into every block; from diffusers the copies must agree (else a one-line error), and
the first is taken (diffusers' final layer reads block 0's). diffusers' attention has separate q, k, v
projections where diffkit's has one fused ``qkv`` (rows [q; k; v]). diffusers' DiT is class-conditional
only: an unconditional diffkit DiT maps to one class whose embedding is zero (label 0 gives c = MLP(t)).
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..errors import DiffkitError
from ..models.dit import DiTConfig

_EMBEDDER = {"time_embed.linear_1": "timestep_embedder.linear_1", "time_embed.linear_2": "timestep_embedder.linear_2"}
_BLOCK = {"modulation": "norm1.linear", "proj": "attn1.to_out.0", "mlp.0": "ff.net.0.proj", "mlp.2": "ff.net.2"}
_TOP = {"patch_embed": "pos_embed.proj", "out_modulation": "proj_out_1", "out_proj": "proj_out_2"}


def diffusers_config(cfg: DiTConfig) -> dict:
    """The ``DiTTransformer2DModel`` keyword arguments of the same network (its LayerNorms at the DiT's eps)."""
    if cfg.freq_shift != 1:
        raise DiffkitError(f"freq_shift={cfg.freq_shift}: diffusers' DiT embeds timesteps with freq_shift=1")
    return {"num_attention_heads": cfg.num_attention_heads, "attention_head_dim": cfg.attention_head_dim,
            "in_channels": cfg.in_channels, "out_channels": cfg.output_channels, "num_layers": cfg.num_layers,
            "sample_size": cfg.img_size, "patch_size": cfg.patch_size,
            "num_embeds_ada_norm": cfg.num_classes if cfg.num_classes is not None else 1, "norm_eps": cfg.norm_eps}


def to_diffusers_state(state: Mapping[str, torch.Tensor], cfg: DiTConfig) -> dict[str, torch.Tensor]:
    """A diffkit DiT's state dict as the state dict of :func:`diffusers_config`'s model."""
    out: dict[str, torch.Tensor] = {}
    width = cfg.hidden_size
    class_table = state.get("class_embed.weight")
    if class_table is None:  # unconditional: diffusers' one class plus its null row, both zero
        class_table = torch.zeros(2, width, dtype=state["patch_embed.weight"].dtype)
    for i in range(cfg.num_layers):
        emb = f"transformer_blocks.{i}.norm1.emb."
        for ours, theirs in _EMBEDDER.items():
            for kind in ("weight", "bias"):
                out[f"{emb}{theirs}.{kind}"] = state[f"{ours}.{kind}"].clone()
        out[f"{emb}class_embedder.embedding_table.weight"] = class_table.clone()
        for kind in ("weight", "bias"):
            q, k, v = state[f"blocks.{i}.qkv.{kind}"].split(width, dim=0)
            for name, part in (("to_q", q), ("to_k", k), ("to_v", v)):
                out[f"transformer_blocks.{i}.attn1.{name}.{kind}"] = part.clone()
            for ours, theirs in _BLOCK.items():
                out[f"transformer_blocks.{i}.{theirs}.{kind}"] = state[f"blocks.{i}.{ours}.{kind}"].clone()
    for ours, theirs in _TOP.items():
        for kind in ("weight", "bias"):
            out[f"{theirs}.{kind}"] = state[f"{ours}.{kind}"].clone()
    return out


def from_diffusers_state(state: Mapping[str, torch.Tensor], cfg: DiTConfig) -> dict[str, torch.Tensor]:
    """A ``DiTTransformer2DModel`` state dict (of :func:`diffusers_config`'s shape) as a diffkit DiT's. The
    blocks' timestep and class embedders must be equal (DiT shares one): a one-line error names the first
    block whose embedder differs from block 0's."""
    first = "transformer_blocks.0.norm1.emb."
    for i in range(1, cfg.num_layers):
        prefix = f"transformer_blocks.{i}.norm1.emb."
        for key in (k[len(first):] for k in state if k.startswith(first)):
            if not torch.equal(state[prefix + key], state[first + key]):
                raise DiffkitError(f"block {i}'s timestep/class embedder ({prefix}{key}) differs from block 0's; "
                                   f"diffkit's DiT shares one embedder (DiT Sec. 3.1), so this model has no "
                                   f"diffkit equivalent")
    out = {f"{ours}.{kind}": state[f"{first}{theirs}.{kind}"].clone()
           for ours, theirs in _EMBEDDER.items() for kind in ("weight", "bias")}
    if cfg.num_classes is not None:
        out["class_embed.weight"] = state[f"{first}class_embedder.embedding_table.weight"].clone()
    for i in range(cfg.num_layers):
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.qkv.{kind}"] = torch.cat([state[f"transformer_blocks.{i}.attn1.{name}.{kind}"]
                                                       for name in ("to_q", "to_k", "to_v")])
            for ours, theirs in _BLOCK.items():
                out[f"blocks.{i}.{ours}.{kind}"] = state[f"transformer_blocks.{i}.{theirs}.{kind}"].clone()
    for ours, theirs in _TOP.items():
        for kind in ("weight", "bias"):
            out[f"{ours}.{kind}"] = state[f"{theirs}.{kind}"].clone()
    return out


def to_diffusers(net):
    """A diffusers ``DiTTransformer2DModel`` computing what the diffkit DiT ``net`` computes (an unconditional
    ``net``: call it with ``class_labels`` 0)."""
    from . import require
    model = require("diffusers").DiTTransformer2DModel(**diffusers_config(net.config))
    model.load_state_dict(to_diffusers_state({k: v.detach().cpu() for k, v in net.state_dict().items()}, net.config))
    return model.eval()


def from_diffusers(model):
    """The diffkit DiT of a diffusers ``DiTTransformer2DModel`` (class-conditional, its table's last row the null
    label; one class with an all-zero table, as :func:`to_diffusers` writes an unconditional DiT, gives an
    unconditional DiT); a one-line error for settings diffkit's DiT does not have."""
    from ..models.dit import DiT
    c = model.config
    fixed = {"activation_fn": "gelu-approximate", "attention_bias": True, "norm_type": "ada_norm_zero",
             "norm_elementwise_affine": False, "upcast_attention": False}
    for name, value in fixed.items():
        if c.get(name) != value:
            raise DiffkitError(f"this DiTTransformer2DModel has {name}={c.get(name)!r}; diffkit's DiT has {value!r}")
    out = c.out_channels if c.out_channels is not None else c.in_channels
    if out not in (c.in_channels, 2 * c.in_channels):
        raise DiffkitError(f"out_channels={out} with in_channels={c.in_channels}: diffkit's DiT outputs the input's "
                           f"channels (or twice them, with a learned variance)")
    table = model.transformer_blocks[0].norm1.emb.class_embedder.embedding_table.weight
    if table.shape[0] != c.num_embeds_ada_norm + 1:
        raise DiffkitError(f"the class table has {table.shape[0]} rows for {c.num_embeds_ada_norm} classes; diffkit's "
                           f"DiT needs the null row of classifier-free guidance (num_classes + 1)")
    # one class whose rows are zero: what to_diffusers writes for an unconditional DiT (embed(y) adds nothing)
    unconditional = c.num_embeds_ada_norm == 1 and not table.detach().any()
    cfg = DiTConfig(img_size=c.sample_size, in_channels=c.in_channels, patch_size=c.patch_size,
                    num_layers=c.num_layers, num_attention_heads=c.num_attention_heads,
                    attention_head_dim=c.attention_head_dim, learned_variance=out == 2 * c.in_channels,
                    num_classes=None if unconditional else c.num_embeds_ada_norm, freq_shift=1,
                    norm_eps=float(c.norm_eps))
    net = DiT(cfg)
    net.load_state_dict(from_diffusers_state(model.state_dict(), cfg))
    return net.eval()
