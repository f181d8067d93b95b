"""LoRA files on a Qwen-Image folder: what diffusers 0.42.1's ``QwenImagePipeline.load_lora_weights``
(``QwenImageLoraLoaderMixin``, also the Img2Img / Inpaint / Edit pipelines' and ``QwenImage21Pipeline``'s) loads,
fused as its ``fuse_lora``.

The loader adapts the transformer only (``_lora_loadable_modules = ["transformer"]``) and takes two kinds of file:

* diffusers / PEFT: ``transformer.<module>.lora_A.weight`` / ``.lora_B.weight`` (a DoRA ``.lora_magnitude_vector``
  too), as ``QwenImagePipeline.save_lora_weights`` writes them; alpha / rank patterns from the file's
  ``lora_adapter_metadata`` (without it alpha = r). :mod:`.sd_lora` reads these as they are.
* what ``_convert_non_diffusers_qwen_lora_to_diffusers`` converts, i.e. a file with a ``diffusion_model.`` key
  (ComfyUI, musubi-tuner), a ``lora_unet_`` key (kohya: the module name with ``.`` written ``_``), a ``.alpha``
  key, or PEFT's ``default.`` adapter name in a key. The prefix (and ``default.``) goes; the module's
  ``.lora_down.weight`` / ``.lora_up.weight`` (or ``.lora_A.weight`` / ``.lora_B.weight``) are A and B, its
  ``.alpha`` (default r) scales A by alpha / r, and the loader's own alpha (the metadata's, else r) applies on
  top, so the module's alpha here is (alpha_file / r) alpha_meta. diffusers finds a kohya module by re-dotting
  the name at fixed word pairs (:func:`kohya_dotted`); diffkit by writing the transformer's Linear names with ``_``,
  the same layer for every Linear of a ``QwenImageTransformer2DModel``. Not so for Qwen-Image 2.1's
  ``QwenImage21Transformer2DModel``: its ``txt_in.in_layer`` / ``txt_in.out_layer`` / ``modulation.1`` come out of
  that re-dotting as no module (the loader raises) and ``img_mlp.gate_layer`` as ``img_mlp.gate.layer`` (dropped,
  the rest loaded; alone: it raises), so a kohya key on those is refused in one line (their ``diffusion_model.``
  keys load).

Each is merged by :mod:`.sd_lora`'s merger, W = W0 + s (alpha / r) B A (Hu et al. 2021, eq. 3). Refused in one line,
before any weight is read (or, for a module the transformer lacks, before any is merged): a key of neither kind
(a text-encoder key included: the loader has none), a converted file mixing lora_down / lora_up with lora_A /
lora_B keys or a kohya file with a key that is not ``lora_unet_`` (diffusers raises on both), any other tensor
(LyCORIS, a DoRA magnitude in a converted file), and ``dora_scale`` (diffusers drops it with a warning and merges
the rest: not the file's DoRA).
"""
from __future__ import annotations

import torch

from ..errors import DiffkitError

CONVERTED = ("diffusion_model.", "lora_unet_")  # the prefixes QwenImageLoraLoaderMixin.lora_state_dict converts
_DOWN_UP, _A_B = ("lora_down.weight", "lora_up.weight"), ("lora_A.weight", "lora_B.weight")
ALLOWED = ("transformer.<module> keys ending in .lora_A.weight / .lora_B.weight / .lora_magnitude_vector (diffusers "
           "/ PEFT), or diffusion_model.<module> / lora_unet_<module with _> keys ending in .lora_down.weight / "
           ".lora_up.weight / .alpha (or .lora_A.weight / .lora_B.weight / .alpha), as QwenImagePipeline converts them")


# _convert_non_diffusers_qwen_lora_to_diffusers' kohya names: its top-level map and the word groups kept whole
KOHYA_TOP = {"img_in": "img_in", "txt_in": "txt_in", "proj_out": "proj_out", "norm_out_linear": "norm_out.linear",
             "time_text_embed_timestep_embedder_linear_1": "time_text_embed.timestep_embedder.linear_1",
             "time_text_embed_timestep_embedder_linear_2": "time_text_embed.timestep_embedder.linear_2"}
KOHYA_WORDS = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "to_q", "to_k", "to_v", "to_out", "add_q",
               "add_k", "add_v", "txt_mlp", "img_mlp", "txt_mod", "img_mod")  # longest first, as diffusers matches


def kohya_dotted(name: str):
    """The module diffusers 0.42.1's Qwen-Image conversion makes of a kohya module ``name`` (``lora_unet_`` and the
    ``.lora_down.weight`` part removed): :data:`KOHYA_TOP`'s, else ``transformer_blocks.`` + the rest after
    ``transformer_blocks_`` split at ``_`` but for :data:`KOHYA_WORDS`; None where it makes no module name (a
    top-level name not in its map: the loader raises)."""
    if name in KOHYA_TOP:
        return KOHYA_TOP[name]
    if not name.startswith("transformer_blocks_"):
        return None
    words, merged = name[len("transformer_blocks_"):].split("_"), []
    while words:
        group = next((g for g in KOHYA_WORDS if words[:g.count("_") + 1] == g.split("_")), words[0])
        merged.append(group)
        words = words[group.count("_") + 1:]
    return "transformer_blocks." + ".".join(merged)


def _refuse(path, key, why: str, kind: str = "Qwen-Image", pipeline: str = "QwenImagePipeline"):
    raise DiffkitError(f"--lora {path}: key {key!r} is not supported on a {kind} folder ({why}); "
                       f"allowed: {ALLOWED.replace('QwenImagePipeline', pipeline)}")


def converted_keys(path, tensors: dict, kind: str = "Qwen-Image", pipeline: str = "QwenImagePipeline") -> tuple:
    """(tensors under kohya keys ``lora_unet_<module with _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``,
    {kohya key: the file's key}, True for a kohya file) of a file ``QwenImageLoraLoaderMixin`` converts (module
    docstring; ``kind`` / ``pipeline``: the folder's, for the messages); None for a diffusers-format file (no
    ``diffusion_model.`` / ``lora_unet_`` / ``.alpha`` / ``default.`` key)."""
    from functools import partial

    from .lycoris_flow import refuse_lycoris
    refuse = partial(_refuse, kind=kind, pipeline=pipeline)
    refuse_lycoris(path, tensors, f"{pipeline}.load_lora_weights")
    keys = sorted(tensors)
    dora = next((k for k in keys if "dora_scale" in k), None)
    if dora is not None:
        refuse(path, dora, "diffusers drops dora_scale and merges the rest, which is not the file's DoRA")
    prefixed = [p for p in CONVERTED if any(k.startswith(p) for k in keys)]
    if not prefixed and not any(k.endswith(".alpha") or "default." in k for k in keys):
        return None
    kohya = "lora_unet_" in prefixed
    names = [k.removeprefix("diffusion_model.") for k in keys]
    stray = next((k for k, n in zip(keys, names) if kohya and not n.startswith("lora_unet_")), None)
    if stray is not None:
        refuse(path, stray, "a kohya file's keys all begin lora_unet_; diffusers cannot convert this one")
    names = [n.removeprefix("lora_unet_").replace("default.", "") for n in names]
    parts = _DOWN_UP if any(n.endswith(tuple("." + p for p in _DOWN_UP)) for n in names) else _A_B
    out, origin = {}, {}
    for key, name in zip(keys, names):
        part = next((p for p in parts + ("alpha",) if name.endswith("." + p)), None)
        if part is None:
            refuse(path, key, f"a converted file's keys end in .{' / .'.join(parts)} / .alpha")
        module = name[:-len(part) - 1]
        new = f"lora_unet_{module if kohya else module.replace('.', '_')}." + \
            (_DOWN_UP[parts.index(part)] if part != "alpha" else part)
        if new in out:
            raise DiffkitError(f"--lora {path}: keys {origin[new]!r} and {key!r} are the same tensor; allowed: one")
        out[new], origin[new] = tensors[key], key
    return out, origin, kohya


def read_qwen_image_lora(path, kind: str = "Qwen-Image", pipeline: str = "QwenImagePipeline") -> dict:
    """:func:`.sd_lora.parse_sd_lora` of a Qwen-Image LoRA file (``kind`` / ``pipeline``: a Qwen-Image 2.1
    folder's, for the messages), its keys checked first (module docstring); a converted file's adapters are under
    ``unet`` with kohya names (``origin``: the file's keys; ``dotted``: a kohya file's :func:`kohya_dotted` names)
    until :func:`transformer_adapters` places them."""
    from .sd3_lora import PARTS
    from .sd_lora import parse_sd_lora, read_lora_tensors
    tensors, meta = read_lora_tensors(path, flux_check=False)
    converted = converted_keys(path, tensors, kind, pipeline)
    if converted is None:
        key = next((k for k in sorted(tensors) if not (k.startswith("transformer.") and k.endswith(PARTS))), None)
        if key is not None:
            _refuse(path, key, "QwenImageLoraLoaderMixin adapts the transformer only and loads no such key", kind,
                    pipeline)
        return parse_sd_lora(path, tensors, meta)
    read = parse_sd_lora(path, converted[0], meta)
    dotted = {name: kohya_dotted(name) for name in read["unet"]} if converted[2] else None
    return {**read, "origin": converted[1], **({"dotted": dotted} if dotted else {})}


def read_qwen_image_loras(adapters, kind: str = "Qwen-Image", pipeline: str = "QwenImagePipeline") -> list:
    """:func:`.sd_lora.read_sd_loras` of Qwen-Image (or Qwen-Image 2.1: ``kind``, ``pipeline``) LoRA files (paths
    or (path, scale) pairs), each read and checked with :func:`read_qwen_image_lora` before the folder loads."""
    from functools import partial
    from .sd_lora import read_sd_loras
    return read_sd_loras(adapters, partial(read_qwen_image_lora, kind=kind, pipeline=pipeline))


def transformer_adapters(path, read: dict, transformer, kind: str = "Qwen-Image") -> dict:
    """``read`` (:func:`read_qwen_image_lora`; FLUX.2's :func:`.flux2_lora.read_flux2_lora`) with a converted file's
    adapters moved to ``transformer``'s Linear layers, each alpha (alpha_file / r) alpha_meta as diffusers'
    conversion and loader (module docstring); a module the ``kind`` transformer lacks, or a kohya name diffusers
    re-dots as another module (``read["dotted"]``, :func:`kohya_dotted`): one line naming the file's key. A
    diffusers-format ``read``: as it is."""
    if "origin" not in read:
        return read
    layers = {n.replace(".", "_"): n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    layers.update({n.replace(".", "_"): n for n, members in read.get("stacked", {}).get("transformer", {}).items()
                   if all(m.replace(".", "_") in layers for m in members)})  # FLUX.2's fused qkv (.lycoris.Stacked)
    out = {}
    for name, (down, up, alpha, prefix, parts) in read["unet"].items():
        key = f"{prefix}{name}.lora_down.weight"
        if name not in layers:
            raise DiffkitError(f"--lora {path}: key {read['origin'].get(key, key)!r} names no Linear layer of the "
                               f"{kind} transformer ({type(transformer).__name__} has no {name}, dots written _)")
        dotted = read.get("dotted", {}).get(name, layers[name])
        if dotted != layers[name]:
            raise DiffkitError(f"--lora {path}: key {read['origin'].get(key, key)!r} is not supported on a {kind} "
                               f"folder (diffusers 0.42.1's kohya conversion re-dots it as "
                               f"{dotted or 'no module name'}, not {layers[name]}: its loader raises or drops it); "
                               f"allowed: diffusion_model.{layers[name]}.lora_down.weight / .lora_up.weight / .alpha")
        rank = down.shape[0] if down is not None and down.ndim == 2 else 0
        if rank:  # (any other shape: .sd_lora's one line)
            alpha = (rank if alpha is None else float(alpha)) / rank * read["alpha_of"]["transformer"](layers[name],
                                                                                                       rank)
        out[name] = [down, up, alpha, prefix, parts]
    return {**read, "unet": {}, "transformer": out}


def transformer_loras(loras: list, transformer, kind: str = "Qwen-Image") -> list:
    """:func:`read_qwen_image_loras`' (or FLUX.2's) list with every file's adapters placed on ``transformer``
    (:func:`transformer_adapters`), for :func:`.sd_lora.merge_sd_loras`."""
    return [(path, scale, transformer_adapters(path, read, transformer, kind)) for path, scale, read in loras]


__all__ = ["converted_keys", "kohya_dotted", "read_qwen_image_lora", "read_qwen_image_loras", "transformer_adapters",
           "transformer_loras", "CONVERTED", "KOHYA_TOP", "KOHYA_WORDS"]
