"""LoRA files on a Z-Image folder: the keys diffusers 0.42.1's ``ZImagePipeline.load_lora_weights``
(``ZImageLoraLoaderMixin``) loads, fused as its ``fuse_lora``.

That loader adapts the transformer only (``_lora_loadable_modules = ["transformer"]``). A diffusers / PEFT file
(``transformer.<module>.lora_A.weight`` / ``.lora_B.weight``, optionally a DoRA ``.lora_magnitude_vector``, alpha /
rank patterns from its ``lora_adapter_metadata``, as ``ZImagePipeline.save_lora_weights`` writes it) loads as is.
A file with ``.alpha`` keys, ``lora_unet_`` (kohya) keys, ``diffusion_model.`` (ComfyUI / ai-toolkit) keys or PEFT's
``default.`` names is first converted (``lora_conversion_utils._convert_non_diffusers_z_image_lora_to_diffusers``),
and :func:`z_image_keys` repeats that conversion key by key: the ``diffusion_model.`` / ``lora_unet_`` prefix
dropped, a kohya name's ``_`` read as ``.`` except inside ``to_q`` / ``to_k`` / ``to_v`` / ``to_out`` /
``feed_forward`` and Z-Image's own module names (``noise_refiner``, ``adaLN_modulation``, ``all_x_embedder``, ...),
a bare attention ``out`` read as ``to_out.0``, ``default.`` dropped, ``lora_down`` / ``lora_up`` as A / B, each
module's alpha / r folded into A and B as the converter splits it (then alpha = r: a scale of 1). The merge is
:mod:`.sd_lora`'s, W = W0 + s (alpha / r) B A (Hu et al. 2021, eq. 3).

Refused in one line before any weight is read: a key the loader drops or fails on (any other prefix: it loads
``transformer.`` keys only, e.g. a text encoder's; a key the converter leaves over, which makes it raise; an A
without its B), the converted files diffkit does not map (the dotted ``.lora.down.weight`` form with its fused
``qkv``), LyCORIS LoHa keys (diffusers converts none), and ``dora_scale`` keys (the loader drops them with a warning
and merges the rest as a plain LoRA). LyCORIS LoKr files (``.lokr_`` keys) are read as the loader reads them:
:func:`lokr_keys`, :mod:`.lycoris_flow`.
"""
from __future__ import annotations

import re

from ..errors import DiffkitError
from .lycoris import LOHA
from .lycoris_flow import check_lokr_metadata, kohya_lokr, loha_why

PIPELINE = "ZImagePipeline"
PARTS = (".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector")  # peft's LoRA / DoRA tensors
_PROTECTED = {("to", "q"), ("to", "k"), ("to", "v"), ("to", "out"), ("feed", "forward")}  # the converter's n-grams
_FIXUPS = {"context.refiner.": "context_refiner.", "noise.refiner.": "noise_refiner.",
           "adaLN.modulation.": "adaLN_modulation.", "all.final.layer.": "all_final_layer.",
           "all.x.embedder.": "all_x_embedder.", "cap.embedder.": "cap_embedder.", "t.embedder.": "t_embedder."}
_BARE_OUT = re.compile(r"\.out(?=\.(?:lora_down|lora_up)\.weight$|\.alpha$)")


def split_alpha(alpha: float, rank: int) -> tuple:
    """(A's factor, B's factor) of a kohya file's alpha / r as diffusers' converters fold it in
    (``get_alpha_scales``: alpha / r on A, doubled and B's 1 halved while A's is under half B's; the product is
    alpha / r, powers of two apart)."""
    low, high = alpha / rank, 1.0
    while low * 2 < high:
        low, high = low * 2, high / 2
    return low, high


def _refused(path, key: str, why: str) -> DiffkitError:
    return DiffkitError(f"--lora {path}: key {key!r} is not supported on a Z-Image folder ({why}); allowed: "
                        f"transformer. keys ending in {' / '.join(PARTS)} (diffusers / PEFT, as "
                        f"{PIPELINE}.save_lora_weights writes them), the lora_unet_ / diffusion_model. / .alpha "
                        f"files its loader converts, or LoKr files (.lokr_w1 / .lokr_w1_a / .lokr_w1_b / .lokr_w2 / "
                        f".lokr_w2_a / .lokr_w2_b, .alpha) under diffusion_model. or transformer. names")


def _kohya_name(key: str) -> str:
    """The converter's ``convert_key``: ``layers_0_attention_to_q.lora_down.weight`` ->
    ``layers.0.attention.to_q.lora_down.weight``."""
    base, dot, suffix = key.rpartition(".") if "." in key else (key, "", "")
    parts, merged, i = base.split("_"), [], 0
    while i < len(parts):
        if tuple(parts[i:i + 2]) in _PROTECTED:
            merged.append("_".join(parts[i:i + 2]))
            i += 2
        else:
            merged.append(parts[i])
            i += 1
    return ".".join(merged) + dot + suffix


def z_image_keys(path, tensors: dict):
    """``tensors`` of a Z-Image LoRA file in diffusers / PEFT form (``transformer.`` keys, alphas folded in), as
    ``ZImageLoraLoaderMixin.lora_state_dict`` converts them (module docstring); a LoKr file's :func:`lokr_keys`; a
    one-line error for a key it would not load or diffkit does not map."""
    for key in sorted(tensors):
        if "dora_scale" in key or key.rpartition(".")[2] in LOHA:
            why = ("diffusers drops dora_scale keys and merges the rest as a plain LoRA" if "dora_scale" in key else
                   loha_why("ZImageLoraLoaderMixin"))
            raise _refused(path, key, why)
    if any(".lokr_" in k for k in tensors):
        return lokr_keys(path, tensors)
    if not any(k.endswith(".alpha") or k.startswith(("lora_unet_", "diffusion_model.")) or "default." in k
               for k in tensors):  # a diffusers / PEFT file: loaded as it is, transformer. keys only
        key = next((k for k in sorted(tensors) if not (k.startswith("transformer.") and k.endswith(PARTS))), None)
        if key is not None:
            raise _refused(path, key, f"diffusers 0.42.1's {PIPELINE}.load_lora_weights loads nothing from it")
        return tensors
    names = {}
    for key in sorted(tensors):  # each rule on every key when any key calls for it, as the converter
        name = key.removeprefix("diffusion_model.") if any(k.startswith("diffusion_model.") for k in tensors) else key
        if any(k.removeprefix("diffusion_model.").startswith("lora_unet_") for k in tensors):
            name = _kohya_name(name.removeprefix("lora_unet_"))
        name = name if ".to_out" in name else _BARE_OUT.sub(".to_out.0", name)
        name = name.replace("default.", "") if any("default." in k for k in tensors) else name
        for dotted, underscored in _FIXUPS.items():
            name = name.replace(dotted, underscored)
        if name in names:
            raise _refused(path, key, f"it and {names[name]!r} are both {name!r} once converted")
        names[name] = key
    dot = (".lora.down.weight", ".lora.up.weight")  # kohya names come out dotted: to.q.lora.down.weight
    pairs = (".lora_down.weight", ".lora_up.weight") if any(n.endswith(".lora_down.weight") for n in names) else \
        (".lora_A.weight", ".lora_B.weight")
    out, used = {}, set()

    def fold(down: str, alpha: str, module: str, chunks: int = 1) -> None:
        """A and B of ``down`` (its up beside it) as ``module``'s, alpha / r folded in as ``get_alpha_scales``
        splits it (a fused qkv: B's thirds for to_q / to_k / to_v)."""
        down_up = dot if down.endswith(dot[0]) else pairs
        up = down[:-len(down_up[0])] + down_up[1]
        if up not in names:
            raise _refused(path, names[down], f"no {up.rsplit('.', 2)[-2]} matrix beside it: {PIPELINE}'s converter "
                                              f"fails")
        a, b, low, high = tensors[names[down]], tensors[names[up]], 1.0, 1.0
        if alpha in names:
            if tensors[names[alpha]].numel() != 1:
                raise _refused(path, names[alpha], f"an alpha of shape {tuple(tensors[names[alpha]].shape)}; "
                                                   f"allowed: one number")
            low, high = split_alpha(tensors[names[alpha]].item(), a.shape[0])
        for target, part in zip((module,) if chunks == 1 else [f"{module}.to_{p}" for p in "qkv"], b.chunk(chunks)):
            out[f"transformer.{target}.lora_A.weight"] = a * low
            out[f"transformer.{target}.lora_B.weight"] = part * high
        used.update((down, up, alpha))

    for name in sorted(n for n in names if n.endswith(pairs[0])):
        fold(name, name[:-len(pairs[0])] + ".alpha", name[:-len(pairs[0])])
    for name in sorted(n for n in names if n.endswith(dot[0])):  # the converter's dotted branch
        base = name[:-len(dot[0])]
        if base.endswith(".qkv") or re.search(r"\.out$", base) and ".to_out" not in base:
            block, fused = base.rsplit(".", 1)
            split = [f"{block}.{p}{dot[0]}" for p in ("to.q", "to_q", "to.k", "to_k", "to.v", "to_v", "to_out.0")]
            if any(n in names for n in (split[:-1] if fused == "qkv" else split[-1:])) or base + dot[1] not in names:
                used.update((name, base + dot[1]) + ((base + ".alpha",) if fused == "qkv" else ()))
                continue  # redundant beside the split keys, or no up matrix: dropped, as the converter drops them
            fold(name, base + ".alpha" if fused == "qkv" else block + ".to_out.0.alpha",
                 block if fused == "qkv" else block + ".to_out.0", 3 if fused == "qkv" else 1)
        else:
            module = re.sub(r"\.to\.([qkv])$", r".to_\1", base)
            fold(name, module + ".alpha", module)
    key = next((names[n] for n in sorted(names) if n not in used), None)
    if key is not None:
        raise _refused(path, key, f"{PIPELINE}'s converter leaves it over and fails")
    if not out:
        raise _refused(path, min(tensors), f"the file loads nothing once {PIPELINE}'s converter drops its redundant "
                                           f"or incomplete keys")
    return out


def lokr_keys(path, tensors: dict) -> tuple[dict, dict]:
    """(kohya-named tensors, {kohya key: the file's key}) of a LoKr file (``.lokr_`` keys) as
    ``ZImageLoraLoaderMixin`` reads it (:mod:`.lycoris_flow`): with a ``diffusion_model.`` or an ``.alpha`` key,
    ``_convert_non_diffusers_lokr_to_diffusers`` (the ``diffusion_model.`` prefix dropped, diffusers' module names
    left, each ``.alpha`` folded in); without, peft's ``transformer.<module>`` keys as they are."""
    converted = any(k.startswith("diffusion_model.") or k.endswith(".alpha") for k in tensors)
    modules = {}
    for key in sorted(tensors):
        name = key.removeprefix("diffusion_model.") if converted else key[len("transformer."):] \
            if key.startswith("transformer.") else None
        if name is None:
            raise _refused(path, key, f"a LoKr file without diffusion_model. or .alpha keys is loaded as it is, and "
                                      f"{PIPELINE}'s loader takes transformer. keys only")
        module, _, tail = name.rpartition(".")
        modules.setdefault(module, {})[tail] = key

    def refuse(key, why):
        raise _refused(path, key, why)
    return kohya_lokr(path, tensors, modules, refuse)


def read_z_image_lora(path) -> dict:
    """:func:`.sd_lora.parse_sd_lora` of a Z-Image LoRA file, converted and checked first (:func:`z_image_keys`); a
    LoKr file's adapters under ``unet`` with kohya names (``origin``: the file's keys) until
    :func:`.qwen_image_lora.transformer_adapters` places them."""
    from .sd_lora import parse_sd_lora, read_lora_tensors
    tensors, meta = read_lora_tensors(path, flux_check=False)
    converted = z_image_keys(path, tensors)
    if isinstance(converted, tuple):
        check_lokr_metadata(path, meta)
        return {**parse_sd_lora(path, converted[0], meta), "origin": converted[1]}
    return parse_sd_lora(path, converted, meta)


def read_z_image_loras(adapters) -> list:
    """:func:`.sd_lora.read_sd_loras` of Z-Image LoRA files (paths or (path, scale) pairs), each read and checked
    with :func:`read_z_image_lora` before the folder loads; :func:`.sd_lora.merge_sd_loras` fuses them (as
    ``load_lora_weights`` + ``fuse_lora(lora_scale=s)``)."""
    from .sd_lora import read_sd_loras
    return read_sd_loras(adapters, read_z_image_lora)


__all__ = ["split_alpha", "z_image_keys", "read_z_image_lora", "read_z_image_loras"]
