"""LoRA files on a FLUX.2 folder: what diffusers 0.42.1's ``Flux2Pipeline.load_lora_weights`` (``Flux2LoraLoaderMixin``,
also ``Flux2KleinPipeline``'s) loads, fused as its ``fuse_lora``.

The loader adapts the transformer only and takes three kinds of LoRA file:

* diffusers / PEFT: ``transformer.<module>.lora_A.weight`` / ``.lora_B.weight`` (a DoRA ``.lora_magnitude_vector``
  too), as ``Flux2Pipeline.save_lora_weights`` writes them; alpha / rank patterns from ``lora_adapter_metadata``.
* ai-toolkit (``_convert_non_diffusers_flux2_lora_to_diffusers``): ``diffusion_model.<BFL module>.lora_A.weight`` /
  ``.lora_B.weight`` (PEFT's ``base_model.model.`` prefix read as ``diffusion_model.``), or the same prefix on
  diffusers' own block names (``transformer_blocks.`` / ``single_transformer_blocks.``, ``sformer_blocks.``); no
  ``.alpha`` (diffusers raises on one): alpha is the metadata's, else r.
* kohya (``_convert_kohya_flux2_lora_to_diffusers``, any key with ``.lora_down.weight``):
  ``lora_unet_<BFL module, dots as _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` (default r), alpha / r
  baked into A and the loader's alpha (metadata, else r) on top: (alpha_file / r) alpha_meta here.

BFL module -> diffusers Linear (:data:`DOUBLE`, :data:`SINGLE`, :data:`TOP`): FLUX.2's single blocks keep ``linear1``
fused (``attn.to_qkv_mlp_proj``); a double block's ``img_attn.qkv`` / ``txt_attn.qkv`` is (``to_q``; ``to_k``;
``to_v``) / (``add_q_proj``; ...) stacked, so each part gets A itself and a third of B's rows, as diffusers splits it
(the fused layer's Delta W = (alpha / r) B A, Hu et al. 2021 eq. 3, restricted to the part's rows, as
:mod:`.flux_lora`). Merged by :mod:`.sd_lora`'s merger.

Refused in one line, before any weight is read (a block the transformer lacks: before any is merged): a key
diffusers drops or cannot convert (kohya's modulation / guidance / final adaLN modules and any ``lora_te`` key,
logged "Unsupported keys" and left out; a ``diffusion_model.`` ``.lora_down`` file, which goes the kohya way and
loads nothing; ai-toolkit ``.alpha``), ``final_layer.adaLN_modulation.1`` in an ai-toolkit file (diffusers maps it
to ``norm_out.linear`` without swapping BFL's (shift, scale) halves, which its single-file converter swaps: neither
reading is taken), LyCORIS LoHa keys (diffusers converts none), ``dora_scale`` (diffusers drops it), mixed formats.

LyCORIS LoKr files (``.lokr_`` keys, without ``.lora_down.weight`` ones) are read as the loader reads them
(:func:`lokr_keys`, merged by :mod:`.lycoris`: W0 + s (alpha / r) W1 (x) W2, :mod:`.lycoris_flow`); a LoKr on a
double block's fused qkv merges into the stacked to_q / to_k / to_v (:class:`.lycoris.Stacked`), and an adapter on an
unfused q / k / v projection beside it, in any of the files, is refused (diffusers fuses the model's projections and
leaves it unused).
"""
from __future__ import annotations

import re

from ..errors import DiffkitError
from .lycoris import LOHA
from .lycoris_flow import check_lokr_metadata, kohya_lokr, loha_why

DOUBLE = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"), "img_attn.proj": ("attn.to_out.0",),
          "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
          "txt_attn.proj": ("attn.to_add_out",), "img_mlp.0": ("ff.linear_in",), "img_mlp.2": ("ff.linear_out",),
          "txt_mlp.0": ("ff_context.linear_in",), "txt_mlp.2": ("ff_context.linear_out",)}
SINGLE = {"linear1": ("attn.to_qkv_mlp_proj",), "linear2": ("attn.to_out",)}
FUSED = {"attn.to_qkv": "img_attn.qkv", "attn.to_added_qkv": "txt_attn.qkv"}  # fuse_qkv_projections' names
UNFUSED = re.compile(r"transformer_blocks[._]\d+[._]attn[._](to_[qkv]|add_[qkv]_proj)$")  # what it leaves unused
KOHYA_TOP = {"img_in": "x_embedder", "txt_in": "context_embedder",
             "time_in.in_layer": "time_guidance_embed.timestep_embedder.linear_1",
             "time_in.out_layer": "time_guidance_embed.timestep_embedder.linear_2", "final_layer.linear": "proj_out"}
TOP = {**KOHYA_TOP, "guidance_in.in_layer": "time_guidance_embed.guidance_embedder.linear_1",
       "guidance_in.out_layer": "time_guidance_embed.guidance_embedder.linear_2",
       "single_stream_modulation.lin": "single_stream_modulation.linear",
       "double_stream_modulation_img.lin": "double_stream_modulation_img.linear",
       "double_stream_modulation_txt.lin": "double_stream_modulation_txt.linear"}  # ai-toolkit's (no adaLN: docstring)
EXPANDED = {"transformer_blocks.": "transformer_blocks.", "single_transformer_blocks.": "single_transformer_blocks.",
            "sformer_blocks.": "transformer_blocks."}  # diffusers' names under diffusion_model.
ALLOWED = ("transformer.<module> keys ending in .lora_A.weight / .lora_B.weight / .lora_magnitude_vector (diffusers "
           "/ PEFT); diffusion_model. / base_model.model. keys of double_blocks.N.{img,txt}_{attn.qkv, attn.proj, "
           "mlp.0, mlp.2}, single_blocks.N.linear{1,2}, {img,txt}_in, {time,guidance}_in.{in,out}_layer, "
           "final_layer.linear, {single,double}_stream_modulation*.lin or diffusers' block names, ending in "
           ".lora_A.weight / .lora_B.weight (ai-toolkit); lora_unet_ keys of those double / single block modules, "
           "img_in, txt_in, time_in_{in,out}_layer, final_layer_linear ending in .lora_down.weight / .lora_up.weight "
           "/ .alpha (kohya)")


def _refuse(path, key, why: str):
    raise DiffkitError(f"--lora {path}: key {key!r} is not supported on a FLUX.2 folder ({why}); allowed: {ALLOWED}")


def bfl_targets(name: str, kohya: bool):
    """The diffusers Linear names (row order) of a BFL module (dotted; ``kohya``: dots written ``_``), or None."""
    under = (lambda table: {k.replace(".", "_"): v for k, v in table.items()}) if kohya else (lambda table: table)
    match = re.fullmatch(r"(double|single)_blocks[._](\d+)[._](\w+(?:\.\w+)*)", name)
    if match:
        prefix, table = ("transformer_blocks", DOUBLE) if match[1] == "double" else ("single_transformer_blocks",
                                                                                     SINGLE)
        leaf = under(table).get(match[3])
        return leaf and tuple(f"{prefix}.{int(match[2])}.{t}" for t in leaf)
    top = under(KOHYA_TOP if kohya else TOP).get(name)
    return top and (top,)


def converted_keys(path, tensors: dict):
    """(tensors under kohya keys ``lora_unet_<diffusers module with _>.lora_down.weight`` / ``.lora_up.weight`` /
    ``.alpha``, {kohya key: the file's key}) of a file ``Flux2LoraLoaderMixin`` converts (module docstring), a fused
    qkv's B split in three; None for a diffusers-format file (``transformer.`` keys)."""
    import torch
    keys = sorted(tensors)
    bad = next((k for k in keys if "dora_scale" in k or k.rpartition(".")[2] in LOHA), None)
    if bad is not None:
        _refuse(path, bad, "diffusers drops dora_scale and merges the rest" if "dora_scale" in bad else
                loha_why("Flux2LoraLoaderMixin"))
    kohya = any(".lora_down.weight" in k for k in keys)
    if not kohya and any(".lokr_" in k for k in keys):
        return lokr_keys(path, tensors)
    if not kohya and not any(k.startswith(("diffusion_model.", "base_model.model.")) for k in keys):
        return None
    out, origin = {}, {}
    for key in keys:
        if kohya:
            name, _, part = key.partition(".")
            if not name.startswith("lora_unet_") or part not in ("lora_down.weight", "lora_up.weight", "alpha"):
                _refuse(path, key, "a kohya file (a .lora_down.weight key): diffusers converts lora_unet_ keys ending "
                                   "in .lora_down.weight / .lora_up.weight / .alpha and drops or cannot load the rest")
            name = name[len("lora_unet_"):]
        else:
            name = key.replace("base_model.model.", "diffusion_model.", 1)
            if not name.startswith("diffusion_model.") or not name.endswith((".lora_A.weight", ".lora_B.weight")):
                _refuse(path, key, "an ai-toolkit file (a diffusion_model. key): diffusers converts diffusion_model. "
                                   "keys ending in .lora_A.weight / .lora_B.weight and raises on the rest")
            name, _, part = name[len("diffusion_model."):].rpartition(".lora_")
            part = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}[part]
        expanded = next((p for p in EXPANDED if not kohya and name.startswith(p)), None)
        targets = (EXPANDED[expanded] + name[len(expanded):],) if expanded else bfl_targets(name, kohya)
        if not targets:
            _refuse(path, key, "diffusers logs it as unsupported and leaves it out" if kohya else
                    "final_layer.adaLN_modulation.1: diffusers' LoRA conversion keeps BFL's (shift, scale) order, its "
                    "single-file conversion swaps it" if name == "final_layer.adaLN_modulation.1" else
                    "not a module diffusers' ai-toolkit conversion maps")
        value = tensors[key]
        if part == "lora_up.weight" and len(targets) > 1:
            if value.ndim != 2 or value.shape[0] % len(targets):
                raise DiffkitError(f"--lora {path}: {key} is {tuple(value.shape)}; allowed: (3 n, r), the rows of "
                                   f"{' + '.join(targets)} (diffusers splits it in three)")
            parts = value.chunk(len(targets))
        else:
            parts = (value,) * len(targets)
        for target, piece in zip(targets, parts):
            new = f"lora_unet_{target.replace('.', '_')}.{part}"
            if new in out:
                raise DiffkitError(f"--lora {path}: keys {origin[new]!r} and {key!r} are the same tensor; allowed: one")
            out[new], origin[new] = piece.contiguous() if isinstance(piece, torch.Tensor) else piece, key
    return out, origin


def lokr_keys(path, tensors: dict):
    """:func:`converted_keys` of a LoKr file (``.lokr_`` keys, no ``.lora_down.weight``), as ``Flux2LoraLoaderMixin``
    reads it: LyCORIS' ``lycoris_<diffusers block module, dots as _>`` keys
    (``_convert_lycoris_flux2_lokr_to_diffusers``: the block modules of :data:`DOUBLE` / :data:`SINGLE`), BFL names
    under ``diffusion_model.`` / ``base_model.model.`` (``_convert_non_diffusers_flux2_lokr_to_diffusers``:
    :data:`TOP`'s modules and the blocks', a double block's ``img_attn.qkv`` / ``txt_attn.qkv`` on the fused
    ``attn.to_qkv`` / ``attn.to_added_qkv``), diffusers' module names bare (with or without ``.alpha``:
    ``_convert_non_diffusers_lokr_to_diffusers``) or under ``transformer.`` (peft's, no ``.alpha``); plus {fused
    name: the Linear layers it stacks} (:class:`.lycoris.Stacked`: diffusers fuses the model's projections for such a
    module, ``_maybe_fuse_qkv_projections_for_lokr``)."""
    keys = [k.replace("base_model.model.", "diffusion_model.", 1) for k in sorted(tensors)]
    origin = dict(zip(keys, sorted(tensors)))
    lycoris = any(k.startswith("lycoris_") for k in keys)
    bfl = not lycoris and any(k.startswith("diffusion_model.") for k in keys)
    peft = not lycoris and not bfl and any(k.startswith("transformer.") for k in keys)
    leaves = {leaf.replace(".", "_"): leaf for table in (DOUBLE, SINGLE) for targets in table.values()
              for leaf in targets}
    modules = {}
    for key in keys:
        name, _, tail = key.rpartition(".")
        if lycoris:
            match = re.fullmatch(r"lycoris_((?:single_)?transformer_blocks)_(\d+)_(.+)", name)
            module = match and match[3] in leaves and f"{match[1]}.{match[2]}.{leaves[match[3]]}"
            why = "a LyCORIS file: diffusers maps lycoris_{single_,}transformer_blocks_N_<module> keys and raises on " \
                  "the rest"
        elif bfl:
            targets = name.startswith("diffusion_model.") and bfl_targets(name[len("diffusion_model."):], False)
            module = targets and (targets[0] if len(targets) == 1 else targets[0].replace(".to_q", ".to_qkv").replace(
                ".add_q_proj", ".to_added_qkv"))
            why = "final_layer.adaLN_modulation.1: diffusers' LoKr conversion keeps BFL's (shift, scale) order, its " \
                  "single-file conversion swaps it" if name.endswith("final_layer.adaLN_modulation.1") else \
                  "a BFL-named LoKr file (a diffusion_model. key): diffusers maps BFL module names, raises on the rest"
        else:  # diffusers' names: bare (converted, .alpha folded in) or peft's transformer. keys (loaded as they are)
            module = name if not peft else name[len("transformer."):] if name.startswith("transformer.") and \
                tail != "alpha" else None
            why = "an .alpha in a transformer. LoKr file: diffusers raises 'Invalid adapter checkpoint'" if \
                tail == "alpha" else "the loader adapts the transformer only and loads no such key"
        if not module:
            _refuse(path, origin[key], why)
        modules.setdefault(module, {})[tail] = origin[key]
    stacked = {fused: tuple(fused.rsplit(".", 1)[0] + "." + leaf.rsplit(".", 1)[1] for leaf in DOUBLE[bfl_key])
               for fused in modules for suffix, bfl_key in FUSED.items()
               if re.fullmatch(rf"transformer_blocks\.\d+\.{re.escape(suffix)}", fused)}
    out, origin = kohya_lokr(path, tensors, modules, lambda key, why: _refuse(path, key, why))
    return out, origin, stacked


def read_flux2_lora(path, pipeline: str = "Flux2Pipeline") -> dict:
    """:func:`.sd_lora.parse_sd_lora` of a FLUX.2 LoRA file, its keys checked first (module docstring); a converted
    file's adapters under ``unet`` with kohya names (``origin``: the file's keys) until
    :func:`.qwen_image_lora.transformer_adapters` places them."""
    from .sd3_lora import PARTS
    from .sd_lora import parse_sd_lora, read_lora_tensors
    tensors, meta = read_lora_tensors(path, flux_check=False)
    converted = converted_keys(path, tensors)
    if converted is None:
        key = next((k for k in sorted(tensors) if not (k.startswith("transformer.") and k.endswith(PARTS))), None)
        if key is not None:
            _refuse(path, key, f"{pipeline}'s loader adapts the transformer only and loads no such key")
        return parse_sd_lora(path, tensors, meta)
    stacked = {"transformer": converted[2]} if len(converted) > 2 else {}
    if stacked:  # a LoKr file
        check_lokr_metadata(path, meta)
    return {**parse_sd_lora(path, converted[0], meta), "origin": converted[1], "stacked": stacked}


def read_flux2_loras(adapters, pipeline: str = "Flux2Pipeline") -> list:
    """:func:`.sd_lora.read_sd_loras` of FLUX.2 LoRA files (paths or (path, scale) pairs), each read and checked
    with :func:`read_flux2_lora` before the folder loads."""
    from functools import partial
    from .sd_lora import read_sd_loras
    loras = read_sd_loras(adapters, partial(read_flux2_lora, pipeline=pipeline))
    fused = next((path for path, _, read in loras if read.get("stacked", {}).get("transformer")), None)
    for path, _, read in loras if fused is not None else ():
        name = next((n for c in ("unet", "transformer") for n in read[c] if UNFUSED.search(n)), None)
        if name is not None:
            raise DiffkitError(f"--lora {path}: module {name} is an unfused q / k / v projection, and {fused} has a "
                               f"LoKr on a fused one, for which diffusers fuses the model's projections and leaves "
                               f"this adapter unused (or raises, this one loaded first); allowed: either file alone")
    return loras


__all__ = ["bfl_targets", "converted_keys", "read_flux2_lora", "read_flux2_loras", "DOUBLE", "SINGLE", "TOP"]
