"""FLUX.1 LoRA files under Black Forest Labs' module names (kohya / sd-scripts, ComfyUI, ai-toolkit's BFL keys),
fused into a diffusers ``FluxTransformer2DModel`` as ``FluxPipeline.load_lora_weights`` + ``fuse_lora`` do.

The key formats (what diffusers 0.42.1's ``_convert_kohya_flux_lora_to_diffusers`` reads, and the PEFT-named
variant of the same names):

* kohya: ``lora_unet_<bfl module, dots as _>.lora_down.weight`` (A, (r, in)), ``.lora_up.weight`` (B, (out, r)),
  ``.alpha`` (default r); CLIP's ``lora_te_`` / ``lora_te1_<module>`` keys (:mod:`.sd_lora`'s kohya text encoder).
* BFL / ComfyUI: ``diffusion_model.<bfl module>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` and CLIP's
  ``text_encoders.clip_l.transformer.<module>...``; the same modules with PEFT's ``.lora_A.weight`` /
  ``.lora_B.weight`` (``diffusion_model.`` or ``base_model.model.`` prefix; alpha r unless ``.alpha``).

Each BFL module is one diffusers Linear or a fused one whose output rows are diffusers' layers stacked: the double
blocks' ``img_attn.qkv`` = (``to_q``; ``to_k``; ``to_v``), ``txt_attn.qkv`` = (``add_q_proj``; ``add_k_proj``;
``add_v_proj``), the single blocks' ``linear1`` = (``to_q``; ``to_k``; ``to_v``; ``proj_mlp``). The LoRA of a fused
layer, Delta W = (alpha / r) B A (Hu et al. 2021, eq. 3), restricted to a part's rows is (alpha / r) B_rows A, so each
part gets A itself and its rows of B, rank and alpha unchanged: the fused layer's update, split exactly. (diffusers
splits B the same way; when r is a multiple of the part count and B block-diagonal it chunks A and B instead, the
same Delta W.) ``final_layer.adaLN_modulation.1`` (``norm_out.linear``) emits (shift, scale) where diffusers' emits
(scale, shift): B's two row halves are swapped. The single blocks' ``linear1`` is split at the transformer's own
sizes (diffusers hard-codes FLUX.1's 3072 / 12288).

Alpha as sd-scripts applies it in training, alpha / r, on every module: diffusers 0.42.1 drops the ``.alpha`` of
the two ``final_layer`` modules (scale 1 there); the two agree where that alpha is r or absent.

Refused in one line, naming the first such key: a module that diffusers does not convert (the blocks' q / k norms,
``diff`` / ``diff_b`` tensors, which diffusers drops with a log line), T5 keys (``lora_te2_``,
``text_encoders.t5xxl.``, dropped by diffusers), LyCORIS tensors on the transformer, a block the transformer lacks,
two keys for one tensor, and an up matrix whose rows are not the layer's (or layers') outputs.
"""
from __future__ import annotations

import re

import torch

from ..errors import DiffkitError

DOUBLE = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"), "img_attn.proj": ("attn.to_out.0",),
          "img_mlp.0": ("ff.net.0.proj",), "img_mlp.2": ("ff.net.2",), "img_mod.lin": ("norm1.linear",),
          "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
          "txt_attn.proj": ("attn.to_add_out",), "txt_mlp.0": ("ff_context.net.0.proj",),
          "txt_mlp.2": ("ff_context.net.2",), "txt_mod.lin": ("norm1_context.linear",)}
SINGLE = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "linear2": ("proj_out",),
          "modulation.lin": ("norm.linear",)}
TOP = {"img_in": "x_embedder", "txt_in": "context_embedder", "final_layer.linear": "proj_out",
       "final_layer.adaLN_modulation.1": "norm_out.linear"}
TOP.update({f"{bfl}_in.{layer}_layer": f"time_text_embed.{name}_embedder.linear_{i}"
            for bfl, name in (("time", "timestep"), ("vector", "text"), ("guidance", "guidance"))
            for i, layer in ((1, "in"), (2, "out"))})
SWAPPED = "final_layer_adaLN_modulation_1"  # BFL's (shift, scale) rows; diffusers' (scale, shift)
BLOCKS = {"double": ("transformer_blocks", DOUBLE), "single": ("single_transformer_blocks", SINGLE)}
_UNDER = {kind: {k.replace(".", "_"): v for k, v in table.items()} for kind, (_, table) in BLOCKS.items()}
_TOP = {k.replace(".", "_"): v for k, v in TOP.items()}
PREFIXES = {"diffusion_model.": "lora_unet_", "base_model.model.": "lora_unet_",  # BFL names, dotted
            "text_encoders.clip_l.transformer.": "lora_te_"}  # ComfyUI's CLIP keys
PARTS = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight", "lora_down.weight": None,
         "lora_up.weight": None, "alpha": None}
ALLOWED = ("double_blocks.N.{img,txt}_{attn.qkv, attn.proj, mlp.0, mlp.2, mod.lin}, single_blocks.N.{linear1, "
           "linear2, modulation.lin}, img_in, txt_in, {time,vector,guidance}_in.{in,out}_layer, final_layer.{linear, "
           "adaLN_modulation.1}")


def is_bfl_lora(tensors: dict) -> bool:
    """True for a FLUX LoRA file in kohya or BFL format (any key with a kohya or BFL prefix)."""
    return any(k.startswith(tuple(PREFIXES) + ("lora_unet_", "lora_te")) for k in tensors)


def bfl_targets(name: str):
    """The diffusers module names (in row order) of a BFL module written with underscores
    (``double_blocks_0_img_attn_qkv``), or None for a module diffusers does not convert."""
    match = re.fullmatch(r"(double|single)_blocks_(\d+)_(\w+)", name)
    if match:
        leaf = _UNDER[match[1]].get(match[3])
        return leaf and tuple(f"{BLOCKS[match[1]][0]}.{int(match[2])}.{t}" for t in leaf)
    return (_TOP[name],) if name in _TOP else None


def kohya_keys(path, tensors: dict, origin: dict = None) -> dict:
    """``tensors`` under kohya keys (``lora_unet_<bfl module>.lora_down.weight`` ..., ``lora_te_``): BFL / ComfyUI
    prefixes and PEFT's lora_A / lora_B renamed; a one-line error at the first key that is not a LoRA tensor of a
    module diffusers converts (module docstring). ``origin``: filled with {kohya key: the file's key}, so that later
    errors name the file's own keys."""
    out, origin = {}, {} if origin is None else origin
    for key in sorted(tensors):
        prefix = next((p for p in PREFIXES if key.startswith(p)), None)
        name, part = key, None
        if prefix:
            part = next((p for p in PARTS if key.endswith("." + p)), None)
            name = PREFIXES[prefix] + key[len(prefix):len(key) - len(part or "") - 1].replace(".", "_")
        else:
            name, _, part = key.partition(".")
        kohya = PARTS.get(part) or part
        unet = name.startswith("lora_unet_")
        known = bfl_targets(name[len("lora_unet_"):]) if unet else name.startswith(("lora_te_", "lora_te1_"))
        if not known or part not in PARTS and (unet or prefix):  # CLIP's kohya keys: .sd_lora's LyCORIS parts too
            raise DiffkitError(f"--lora {path}: key {key!r} is not supported in a FLUX LoRA file; allowed: LoRA "
                               f"tensors (.lora_down.weight / .lora_up.weight / .lora_A.weight / .lora_B.weight / "
                               f".alpha) of the transformer's {ALLOWED} (lora_unet_ / diffusion_model. / "
                               f"base_model.model. keys) and of CLIP (lora_te_ / lora_te1_ / "
                               f"text_encoders.clip_l.transformer. keys)")
        new = f"{name}.{kohya}"
        if new in out:
            raise DiffkitError(f"--lora {path}: keys {origin[new]!r} and {key!r} are the same tensor; allowed: one")
        out[new], origin[new] = tensors[key], key
    return out


def transformer_adapters(path, read: dict, transformer) -> dict:
    """:func:`.sd_lora.parse_sd_lora`'s ``read`` of :func:`kohya_keys` with its ``unet`` (BFL) adapters moved to
    ``transformer``'s diffusers layers (underscore names, kohya style): fused layers split by output rows, the final
    modulation's halves swapped (module docstring); one-line errors for a layer the transformer lacks or an up
    matrix that does not fit."""
    layers = {n: m for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    named = read.get("origin", {})  # the file's own keys (BFL / PEFT names) of the kohya keys
    out = {}
    for name, (down, up, alpha, prefix, _) in read["unet"].items():
        key = f"{prefix}{name}.lora_down.weight"  # LoRA tensors only (kohya_keys refused any other)
        key = named.get(key, key)
        targets = bfl_targets(name)
        missing = next((t for t in targets if t not in layers), None)
        if missing:
            config, kind = transformer.config, "FLUX" if "guidance_embeds" in transformer.config else "Chroma"
            raise DiffkitError(f"--lora {path}: key {key!r} adapts {missing}, which this {kind} transformer lacks "
                               f"(num_layers={config.num_layers}, num_single_layers={config.num_single_layers}, "
                               + (f"guidance_embeds={config.guidance_embeds})" if kind == "FLUX" else
                                  "no modulation linears: its approximator modulates every block)"))
        sizes = [layers[t].out_features for t in targets]
        if up.ndim != 2 or up.shape[0] != sum(sizes):
            up_key = named.get(f"{prefix}{name}.lora_up.weight", f"{prefix}{name}.lora_up.weight")
            raise DiffkitError(f"--lora {path}: {up_key} is {tuple(up.shape)}; allowed: "
                               f"({sum(sizes)}, r), the rows of {' + '.join(targets)}")
        if name == SWAPPED:
            up = torch.cat(up.chunk(2)[::-1])
        for target, rows in zip(targets, up.split(sizes)):
            out[target.replace(".", "_")] = [down, rows.contiguous(), alpha, prefix, {}]
    return {**read, "unet": {}, "transformer": out}


__all__ = ["is_bfl_lora", "bfl_targets", "kohya_keys", "transformer_adapters", "DOUBLE", "SINGLE", "TOP"]
