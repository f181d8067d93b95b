"""LoRA files on an Ideogram 4 folder: what diffusers 0.42.1's ``Ideogram4Pipeline.load_lora_weights``
(``Ideogram4LoraLoaderMixin``) loads, fused as its ``fuse_lora``.

The loader adapts ``transformer`` only (``_lora_loadable_modules = ["transformer"]``): the conditional transformer;
the ``unconditional_transformer`` of the guidance keeps its weights. A file with a key starting ``diffusion_model.``
(ai-toolkit) or holding ``.attention.qkv.`` is converted as ``_convert_non_diffusers_ideogram4_lora_to_diffusers``
does it (:func:`ideogram4_tensors`): the first of the prefixes ``diffusion_model.`` / ``conditional_transformer.``
that a key has removed from every key; kohya ``lora_down`` / ``lora_up`` (where any key is one) or ``lora_A`` /
``lora_B`` pairs of ``layers.i.attention.qkv`` (one A for ``to_q`` / ``to_k`` / ``to_v``, B's thirds),
``layers.i.attention.o`` (-> ``to_out.0``), ``layers.i.feed_forward.w1`` / ``w2`` / ``w3`` and
``layers.i.adaln_modulation``, each module's ``.alpha`` / r folded into A and B as the converter splits it
(:func:`.z_image_lora.split_alpha`; then alpha = r). Any other file must hold diffusers / PEFT keys,
``transformer.<module>.lora_A.weight`` / ``.lora_B.weight`` (a DoRA ``.lora_magnitude_vector`` too), as
``Ideogram4Pipeline.save_lora_weights`` writes them; alpha / rank patterns from the file's ``lora_adapter_metadata``
(without it alpha = r). :func:`.sana_lora.read_transformer_lora` reads them and :mod:`.sd_lora`'s merger fuses them,
W = W0 + s (alpha / r) B A (Hu et al. 2021, eq. 3).

Refused in one line naming the file's key, before any weight is read: LyCORIS tensors
(:func:`.lycoris_flow.refuse_lycoris`: the loader converts none); ``dora_scale`` (diffusers drops it with a warning
and merges the rest: not the file's DoRA); in a converted file, a key the converter leaves over (another module, the
other pair's names, an A without its B: it raises "``state_dict`` should be empty" or a KeyError), an alpha that is
not one number and two keys the prefix removal makes one (diffusers keeps the last); in a diffusers-format file, a
key outside ``transformer.`` (a ``conditional_transformer.`` file without a fused qkv is not converted, and
``load_lora_adapter`` silently drops such keys) or not a PEFT tensor (``.alpha``: "Invalid LoRA checkpoint";
``lora_down`` / ``lora_up``: an IndexError in it).
"""
from __future__ import annotations

import re

from ..errors import DiffkitError

PIPELINE = "Ideogram4Pipeline"
PREFIXES = ("diffusion_model.", "conditional_transformer.")  # the converter removes the first one a key has
MODULES = {"attention.qkv": "attention", "attention.o": "attention.to_out.0", "feed_forward.w1": "feed_forward.w1",
           "feed_forward.w2": "feed_forward.w2", "feed_forward.w3": "feed_forward.w3",
           "adaln_modulation": "adaln_modulation"}  # the converter's modules, renamed (qkv: split into to_q/k/v)
KEY = re.compile(r"(layers\.\d+)\.(" + "|".join(re.escape(m) for m in MODULES) + r")(\.lora_(?:A|B|down|up)\.weight|"
                 r"\.alpha)$")
ALLOWED = ("transformer.<module> keys ending in .lora_A.weight / .lora_B.weight / .lora_magnitude_vector (diffusers / "
           "PEFT, as Ideogram4Pipeline.save_lora_weights writes them), or a diffusion_model. / fused-qkv file of "
           "layers.i.attention.qkv / attention.o / feed_forward.w1-w3 / adaln_modulation .lora_A / .lora_B (or "
           ".lora_down / .lora_up) weights and .alpha")


def refuse_key(path, key: str, why: str, folder: str = "an Ideogram 4 folder", allowed: str = ALLOWED):
    """One line: the LoRA file's ``key`` is not supported on ``folder`` (``why``), what is ``allowed``."""
    raise DiffkitError(f"--lora {path}: key {key!r} is not supported on {folder} ({why}); allowed: {allowed}")


def refuse_dora(path, tensors: dict, pipeline: str = PIPELINE, refuse=refuse_key) -> None:
    """One line (``refuse``) at a ``dora_scale`` key: the ``pipeline``'s loader drops it and merges the rest."""
    for key in sorted(tensors):
        if "dora_scale" in key:
            refuse(path, key, f"{pipeline} drops dora_scale and merges the rest, which is not the file's DoRA")


def check_transformer_keys(path, tensors: dict, why: str, refuse=refuse_key) -> None:
    """One line (``refuse``, ``why``) at the first key of an unconverted file that is not a diffusers / PEFT tensor
    under ``transformer.``."""
    from .sd3_lora import PARTS
    for key in sorted(tensors):
        if not (key.startswith("transformer.") and key.endswith(PARTS)):
            refuse(path, key, why)


def ideogram4_tensors(path, tensors: dict) -> dict:
    """``tensors`` of an Ideogram 4 LoRA file under the keys (and, converted, the values)
    ``Ideogram4LoraLoaderMixin.lora_state_dict`` returns (module docstring); a key it would not load as the file
    says: one line naming it."""
    from .z_image_lora import split_alpha
    refuse_dora(path, tensors, "diffusers")
    if not any(k.startswith(PREFIXES[0]) or ".attention.qkv." in k for k in tensors):
        check_transformer_keys(path, tensors, f"{PIPELINE}'s loader adapts the transformer only and converts a "
                                              f"diffusion_model. or fused-qkv file alone")
        return dict(tensors)
    prefix = next((p for p in PREFIXES if any(k.startswith(p) for k in tensors)), "")
    names = {}
    for key in sorted(tensors):
        name = key.removeprefix(prefix)
        if names.setdefault(name, key) != key:
            raise DiffkitError(f"--lora {path}: keys {names[name]!r} and {key!r} are one key once {PIPELINE} removes "
                               f"the {prefix} prefix (diffusers keeps either); allowed: one of them")
    kohya = any(".lora_down.weight" in n for n in names)
    down, up = (".lora_down.weight", ".lora_up.weight") if kohya else (".lora_A.weight", ".lora_B.weight")
    out = {}
    for name in sorted(names):
        match = KEY.match(name)
        if match is None or match.group(3) not in (down, up, ".alpha"):
            refuse_key(path, names[name], f"{PIPELINE}'s converter leaves it over and fails")
        base = name[:match.start(3)]
        if base + down not in names or base + up not in names:
            refuse_key(path, names[name], f"no {(up if base + down in names else down)[1:-7]} matrix beside it: "
                                       f"{PIPELINE}'s converter fails")
        if match.group(3) != down:
            continue
        a, b, low, high = tensors[names[name]], tensors[names[base + up]], 1.0, 1.0
        if base + ".alpha" in names:
            alpha = tensors[names[base + ".alpha"]]
            if alpha.numel() != 1:
                refuse_key(path, names[base + ".alpha"], f"an alpha of shape {tuple(alpha.shape)}, not one number")
            low, high = split_alpha(alpha.item(), a.shape[0])
        layer, module = match.group(1), MODULES[match.group(2)]
        targets = [f"{layer}.{module}.to_{p}" for p in "qkv"] if module == "attention" else [f"{layer}.{module}"]
        for target, part in zip(targets, (b * high).chunk(len(targets))):
            out[f"transformer.{target}.lora_A.weight"] = a * low
            out[f"transformer.{target}.lora_B.weight"] = part.contiguous()
    return out


def read_ideogram4_loras(adapters) -> list:
    """:func:`.sana_lora.read_transformer_loras` of Ideogram 4 LoRA files (paths or (path, scale) pairs), each read,
    converted and checked with :func:`ideogram4_tensors` before the folder loads; :func:`.sd_lora.merge_sd_loras`
    fuses them into the conditional transformer (as the pipeline's ``load_lora_weights`` + ``fuse_lora``)."""
    from .sana_lora import read_transformer_loras
    return read_transformer_loras(adapters, "Ideogram 4", "an Ideogram 4 folder", PIPELINE, ideogram4_tensors,
                                  flux_check=False)


__all__ = ["ideogram4_tensors", "read_ideogram4_loras", "refuse_key", "refuse_dora", "check_transformer_keys"]
