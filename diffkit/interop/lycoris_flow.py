"""LyCORIS LoKr files on the flow-transformer folders whose diffusers 0.42.1 loader converts them (Z-Image, FLUX.2),
and the one-line refusal of LyCORIS files everywhere else.

Two loaders take LoKr files, ``ZImageLoraLoaderMixin`` and ``Flux2LoraLoaderMixin`` (which layouts:
:mod:`.z_image_lora`, :mod:`.flux2_lora`). Their converters (``lora_conversion_utils._bake_lokr_alpha_``) fold each
module's ``.alpha`` / r into W1, r being ``lokr_w2_b``'s rows, else ``lokr_w1_b``'s, and drop it when W1 and W2 are
both full matrices; ``peft_utils._create_lokr_config`` then builds peft's ``LoKrConfig`` with alpha = r, so
``fuse_lora(lora_scale=s)`` gives

    W = W0 + s (alpha / r) W1 (x) W2        (Yeh et al. 2023, Sec. 3; W1 = ``lokr_w1`` or ``lokr_w1_a lokr_w1_b``,
                                            W2 = ``lokr_w2`` or ``lokr_w2_a lokr_w2_b``)

which is :mod:`.lycoris`' LoKr merge with LyCORIS' scale rule; :func:`kohya_lokr` hands the modules to it under
kohya names. Their LoKr keys are diffusers' ``_LOKR_SUFFIXES`` (no ``lokr_t2``: a Tucker core is a convolution's,
and these transformers adapt Linear layers). diffusers converts no LoHa (``.hada_``) file, and the other flow
folders' loaders (FLUX.1, Chroma, HiDream, Qwen-Image, Sana, SD3, Lumina-Image 2.0, AuraFlow, CogView4, ERNIE-Image)
no LyCORIS file at all: :func:`refuse_lycoris`.
"""
from __future__ import annotations

from ..errors import DiffkitError
from .lycoris import LOHA, LOKR

LOKR_PARTS = LOKR[:-1]  # diffusers' _LOKR_SUFFIXES


def lycoris_key(tensors) -> str | None:
    """The first key of ``tensors`` holding a LyCORIS LoKr / LoHa tensor (or LyCORIS' ``lycoris_`` prefix)."""
    return next((k for k in sorted(tensors) if k.startswith("lycoris_") or
                 k.rpartition(".")[2] in LOKR + LOHA), None)


def refuse_lycoris(path, tensors, loader: str) -> None:
    """One line naming the first LyCORIS key of a LoRA file for a folder whose diffusers ``loader`` converts none."""
    key = lycoris_key(tensors)
    if key is not None:
        kind = "LoHa" if key.rpartition(".")[2] in LOHA else "LoKr"
        raise DiffkitError(f"--lora {path}: key {key!r} is a LyCORIS {kind} tensor; diffusers 0.42.1's {loader} loads "
                           f"LoRA files only (diffusers converts LoKr files for Z-Image and FLUX.2 folders alone, "
                           f"LoHa files for none); allowed: a LoRA file")


def loha_why(loader: str) -> str:
    """Why a LoHa key is refused on a folder whose ``loader`` converts LoKr files."""
    return f"a LyCORIS LoHa tensor: diffusers 0.42.1's {loader} converts LoRA and LoKr files, no LoHa"


def check_lokr_metadata(path, meta: dict) -> None:
    """One line for a LoKr file with ``lora_adapter_metadata``: diffusers builds peft's ``LoKrConfig`` from it
    (``_create_lokr_config``: alpha, rank and factor patterns of their own), which diffkit does not read."""
    if meta.get("lora_adapter_metadata"):
        raise DiffkitError(f"--lora {path} is a LoKr file with lora_adapter_metadata, from which diffusers builds "
                           f"peft's LoKrConfig (its alpha / rank patterns); diffkit reads LoKr files without it; "
                           f"allowed: the file's tensors without that metadata")


def kohya_lokr(path, tensors: dict, modules: dict, refuse) -> tuple[dict, dict]:
    """(tensors under kohya keys ``lora_unet_<module, dots written _>.<part>``, {kohya key: the file's key}) of a
    LoKr file's ``tensors`` grouped as ``modules`` ({diffusers module name: {key tail: the file's key}});
    ``refuse(key, why)`` raises for a key diffusers' LoKr loading would not load as the file says."""
    out, origin = {}, {}
    for module, parts in sorted(modules.items()):
        for tail, key in sorted(parts.items()):
            if tail not in LOKR_PARTS + ("alpha",):
                refuse(key, "a LoKr file's keys end in ." + " / .".join(LOKR_PARTS) + " / .alpha; diffusers' LoKr "
                            "loading raises on the others or drops them" if tail != "lokr_t2" else
                            "a LoKr Tucker core, which diffusers' conversion does not carry: these transformers adapt "
                            "Linear layers")
            new = f"lora_unet_{module.replace('.', '_')}.{tail}"
            if new in out:
                raise DiffkitError(f"--lora {path}: keys {origin[new]!r} and {key!r} are the same tensor; allowed: "
                                   f"one")
            out[new], origin[new] = tensors[key], key
        if set(parts) == {"alpha"}:
            refuse(parts["alpha"], "an alpha without LoKr factors: diffusers' alpha folding fails on it")
    return out, origin


__all__ = ["LOKR_PARTS", "check_lokr_metadata", "kohya_lokr", "loha_why", "lycoris_key", "refuse_lycoris"]
