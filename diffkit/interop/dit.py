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
from ..models.dit import NORM_EPS, DiTConfig

_EMBEDDER = {"time_embed.linear_1": "timestep_embedder.linear_1", "time_embed.linear_2": "timestep_embedder.linear_2"}
_BLOCK = {"modulation": "norm1.linear", "proj": "attn1.to_out.0", "mlp.0": "ff.net.0.proj", "mlp.2": "ff.net.2"}
_TOP = {"patch_embed": "pos_embed.proj", "out_modulation": "proj_out_1", "out_proj": "proj_out_2"}


def diffusers_config(cfg: DiTConfig) -> dict:
    """The ``DiTTransformer2DModel`` keyword arguments of the same network (its LayerNorms at DiT's eps)."""
    if cfg.freq_shift != 1:
        raise DiffkitError(f"freq_shift={cfg.freq_shift}: diffusers' DiT embeds timesteps with freq_shift=1")
    return {"num_attention_heads": cfg.num_attention_heads, "attention_head_dim": cfg.attention_head_dim,
            "in_channels": cfg.in_channels, "out_channels": cfg.output_channels, "num_layers": cfg.num_layers,
            "sample_size": cfg.img_size, "patch_size": cfg.patch_size,
            "num_embeds_ada_norm": cfg.num_classes if cfg.num_classes is not None else 1, "norm_eps": NORM_EPS}


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
