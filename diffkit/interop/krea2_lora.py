"""LoRA files on a Krea 2 folder: what diffusers 0.42.1's ``Krea2Pipeline.load_lora_weights``
(``Krea2LoraLoaderMixin``) loads, fused as its ``fuse_lora``.

The loader adapts the transformer only (``_lora_loadable_modules = ["transformer"]``). A file with any key starting
``diffusion_model.`` (the Krea 2 reference trainer / ComfyUI) or ``base_model.model.`` (ai-toolkit) is converted as
``_convert_non_diffusers_krea2_lora_to_diffusers`` does it: both prefixes removed from every key, then each
``<module>.lora_A.weight`` / ``.lora_B.weight`` of an original ``krea-ai/krea-2`` module renamed
``transformer.<diffusers module>`` (:data:`ATTN`, :data:`FF`, :data:`STANDALONE`: ``blocks.i.attn.wq`` ->
``transformer_blocks.i.attn.to_q``, ``txtfusion.refiner_blocks.i.mlp.up`` -> ``text_fusion.refiner_blocks.i.ff.up``,
``first`` -> ``img_in`` ...). Any other file must hold diffusers / PEFT keys, ``transformer.<module>.lora_A.weight``
/ ``.lora_B.weight`` (a DoRA ``.lora_magnitude_vector`` too), as ``Krea2Pipeline.save_lora_weights`` writes them;
alpha / rank patterns from the file's ``lora_adapter_metadata`` (without it alpha = r). :func:`.sana_lora.
read_transformer_lora` reads them and :mod:`.sd_lora`'s merger fuses them, W = W0 + s (alpha / r) B A (Hu et al.
2021, eq. 3).

Refused in one line naming the file's key, before any weight is read: LyCORIS tensors
(:func:`.lycoris_flow.refuse_lycoris`: the loader converts none); ``dora_scale`` (diffusers drops it with a warning
and merges the rest: not the file's DoRA); in a converted file, a key that is not a ``lora_A`` / ``lora_B`` weight
of a module the converter knows (it raises "``state_dict`` should be empty") and two keys the prefix removal makes
one (diffusers silently keeps the last); in a diffusers-format file, a key outside ``transformer.`` (a text-encoder
one: ``load_lora_adapter`` silently drops it) or not a PEFT tensor (``.alpha`` / ``lora_down`` / ``lora_up``:
"Invalid LoRA checkpoint").
"""
from __future__ import annotations

import re

from ..errors import DiffkitError

PIPELINE = "Krea2Pipeline"
PREFIXES = ("base_model.model.", "diffusion_model.")  # removed in this order, from every key, where any key has one
ATTN = {"wq": "to_q", "wk": "to_k", "wv": "to_v", "wo": "to_out.0", "gate": "to_gate"}  # the converter's attn_map
FF = {"gate": "ff.gate", "up": "ff.up", "down": "ff.down"}  # its ff_map
STANDALONE = {"first": "img_in", "last.linear": "final_layer.linear", "tmlp.0": "time_embed.linear_1",
              "tmlp.2": "time_embed.linear_2", "tproj.1": "time_mod_proj", "txtmlp.1": "txt_in.linear_1",
              "txtmlp.3": "txt_in.linear_2", "txtfusion.projector": "text_fusion.projector"}  # its standalone_map
BLOCK = re.compile(r"(blocks|txtfusion\.(?:layerwise_blocks|refiner_blocks))\.(\d+)\.(attn|mlp)\.(\w+)$")
ALLOWED = ("transformer.<module> keys ending in .lora_A.weight / .lora_B.weight / .lora_magnitude_vector (diffusers / "
           "PEFT, as Krea2Pipeline.save_lora_weights writes them), or a file under diffusion_model. / "
           "base_model.model. of the original krea-2 modules' .lora_A.weight / .lora_B.weight only")


def diffusers_module(module: str):
    """The ``Krea2Transformer2DModel`` module of an original ``krea-ai/krea-2`` one (``convert_module``), or None."""
    match = BLOCK.match(module)
    if match is None:
        return STANDALONE.get(module)
    blocks, index, kind, sub = match.groups()
    blocks = "transformer_blocks" if blocks == "blocks" else "text_fusion." + blocks.split(".")[1]
    if kind == "attn":
        return f"{blocks}.{index}.attn.{ATTN[sub]}" if sub in ATTN else None
    return f"{blocks}.{index}.{FF[sub]}" if sub in FF else None


def _refuse(path, key: str, why: str):
    raise DiffkitError(f"--lora {path}: key {key!r} is not supported on a Krea 2 folder ({why}); allowed: {ALLOWED}")


def krea2_tensors(path, tensors: dict) -> dict:
    """``tensors`` of a Krea 2 LoRA file under the keys ``Krea2LoraLoaderMixin.lora_state_dict`` returns (module
    docstring); a key it would not load as the file says: one line naming it."""
    from .sd3_lora import PARTS
    for key in sorted(tensors):
        if "dora_scale" in key:
            _refuse(path, key, "diffusers drops dora_scale and merges the rest, which is not the file's DoRA")
    if not any(k.startswith(PREFIXES) for k in tensors):
        for key in sorted(tensors):
            if not (key.startswith("transformer.") and key.endswith(PARTS)):
                _refuse(path, key, f"{PIPELINE}'s loader adapts the transformer only and converts no .alpha / "
                                   f"lora_down / lora_up keys")
        return dict(tensors)
    out, origin = {}, {}
    for key in sorted(tensors):
        bare = key.removeprefix(PREFIXES[0]).removeprefix(PREFIXES[1])
        match = re.search(r"\.lora_[AB]\.weight$", bare)
        module = diffusers_module(bare[:match.start()]) if match else None
        if module is None:
            _refuse(path, key, f"{PIPELINE} converts a diffusion_model. / base_model.model. file's lora_A / lora_B "
                               f"weights of the original krea-2 modules only and fails on any other key")
        new = f"transformer.{module}{bare[match.start():]}"
        if origin.setdefault(new, key) != key:
            raise DiffkitError(f"--lora {path}: keys {origin[new]!r} and {key!r} are one key once {PIPELINE} removes "
                               f"the {' / '.join(PREFIXES)} prefixes (diffusers keeps either); allowed: one of them")
        out[new] = tensors[key]
    return out


def read_krea2_loras(adapters) -> list:
    """:func:`.sana_lora.read_transformer_loras` of Krea 2 LoRA files (paths or (path, scale) pairs), each read,
    converted and checked with :func:`krea2_tensors` before the folder loads; :func:`.sd_lora.merge_sd_loras` fuses
    them (as the pipeline's ``load_lora_weights`` + ``fuse_lora``)."""
    from .sana_lora import read_transformer_loras
    return read_transformer_loras(adapters, "Krea 2", "a Krea 2 folder", PIPELINE, krea2_tensors, flux_check=False)


__all__ = ["krea2_tensors", "read_krea2_loras", "diffusers_module"]
