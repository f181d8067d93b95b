"""LoRA files on an LTX-Video folder: what diffusers 0.42.1's ``LTXPipeline.load_lora_weights``
(``LTXVideoLoraLoaderMixin``, also ``LTXImageToVideoPipeline``'s) loads into its ``LTXVideoTransformer3DModel``, fused
as its ``fuse_lora``.

The loader adapts the transformer only. Two layouts: diffusers / PEFT ``transformer.<module>.lora_A.weight`` /
``.lora_B.weight`` (a DoRA ``.lora_magnitude_vector`` too), as ``save_lora_weights`` writes them, alpha / rank
patterns from the file's ``lora_adapter_metadata`` (without it alpha = r); and LTX-Video's original
``diffusion_model.<module>`` names (the same module names), converted by diffusers' own
``lora_conversion_utils._convert_non_diffusers_ltxv_lora_to_diffusers`` (called, not copied), as ``lora_state_dict``
does where any key starts with ``diffusion_model.``. Read by :func:`.sana_lora.read_transformer_lora` (the shared
transformer reader) and fused by :mod:`.sd_lora`'s merger, W = W0 + s (alpha / r) B A (Hu et al. 2021, eq. 3).

Refused in one line naming the key, before any weight of the folder is read: LyCORIS tensors, ``dora_scale``
(diffusers drops it and merges the rest as a plain LoRA), a ``diffusion_model.`` file with keys of another prefix
(diffusers' converter raises "Invalid LoRA state dict"), and any key that is not a PEFT tensor under ``transformer.``
after the conversion (kohya's ``lora_down`` / ``lora_up``, ``.alpha``, a text encoder's).
"""
from __future__ import annotations

from ..errors import DiffkitError

ORIGINAL = "diffusion_model."  # LTXVideoLoraLoaderMixin.lora_state_dict's non-diffusers prefix


def convert_ltx_lora(path, tensors: dict) -> dict:
    """``tensors`` as ``LTXVideoLoraLoaderMixin.lora_state_dict`` returns them: a file with any ``diffusion_model.``
    key through diffusers' converter, any other file unchanged; ``dora_scale`` or a key of another prefix beside
    ``diffusion_model.`` ones: one line."""
    from ..interop import require
    dora = next((key for key in sorted(tensors) if "dora_scale" in key), None)
    if dora is not None:
        raise DiffkitError(f"--lora {path}: key {dora!r} is not allowed (LTXPipeline drops dora_scale and merges the "
                           f"rest, which is not the file's DoRA); give a file without dora_scale keys")
    if not any(key.startswith(ORIGINAL) for key in tensors):
        return tensors
    other = next((key for key in sorted(tensors) if not key.startswith(ORIGINAL)), None)
    if other is not None:
        raise DiffkitError(f"--lora {path}: key {other!r} is not allowed beside {ORIGINAL!r} keys (LTXPipeline's "
                           f"converter fails: 'Invalid LoRA state dict for LTX-Video'); give one format per file")
    require("diffusers")
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_ltxv_lora_to_diffusers
    return _convert_non_diffusers_ltxv_lora_to_diffusers(dict(tensors))


def read_ltx_loras(adapters) -> list:
    """:func:`.sana_lora.read_transformer_loras` of LTX-Video LoRA files (paths or (path, scale) pairs), converted
    and checked before the folder loads (module docstring)."""
    from .sana_lora import read_transformer_loras
    return read_transformer_loras(adapters, kind="LTX-Video", folder="an LTX-Video folder", pipeline="LTXPipeline",
                                  convert=convert_ltx_lora)


__all__ = ["convert_ltx_lora", "read_ltx_loras"]
