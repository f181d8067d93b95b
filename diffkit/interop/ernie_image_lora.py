"""LoRA files on an ERNIE-Image folder: what diffusers 0.42.1's ``ErnieImagePipeline.load_lora_weights``
(``ErnieImageLoraLoaderMixin``) loads, fused as its ``fuse_lora``.

The loader adapts the transformer only (``_lora_loadable_modules = ["transformer"]``); its ``lora_state_dict`` has no
converter in ``lora_conversion_utils``, only two renames of the keys, done here as it does them (``str.replace`` on
every key):

* a file with a key starting ``base_model.model.`` (peft's ``PeftModel`` layout): ``base_model.model.`` ->
  ``diffusion_model.`` in every key;
* then a file with a key starting ``diffusion_model.`` (ai-toolkit / ComfyUI): ``diffusion_model.`` ->
  ``transformer.`` in every key (ERNIE-Image's original module names are diffusers', ``layers.i.self_attention.to_q``
  ...).

What is left must be diffusers / PEFT keys, ``transformer.<module>.lora_A.weight`` / ``.lora_B.weight`` (a DoRA
``.lora_magnitude_vector`` too), as ``ErnieImagePipeline.save_lora_weights`` writes them; alpha / rank patterns from
the file's ``lora_adapter_metadata`` (without it alpha = r). :func:`.sana_lora.read_transformer_lora` reads them and
:mod:`.sd_lora`'s merger fuses them, W = W0 + s (alpha / r) B A (Hu et al. 2021, eq. 3), on any Linear of the
``ErnieImageTransformer2DModel``. Refused in one line naming the file's key, before any weight is read: LyCORIS
tensors (:func:`.lycoris_flow.refuse_lycoris`: the loader converts none), ``dora_scale`` (diffusers drops it with a
warning and merges the rest: not the file's DoRA), ``.alpha`` / ``lora_down`` / ``lora_up`` keys (kohya's: the
loader fails on them, "Invalid LoRA checkpoint" / an IndexError), any key outside the transformer after the renames
(a text-encoder one: the loader drops it) and two keys the renames make one (diffusers keeps either).
"""
from __future__ import annotations

from ..errors import DiffkitError

PIPELINE = "ErnieImagePipeline"
RENAMES = (("base_model.model.", "diffusion_model."), ("diffusion_model.", "transformer."))  # lora_state_dict's
ALLOWED = ("transformer.<module> keys ending in .lora_A.weight / .lora_B.weight / .lora_magnitude_vector (diffusers / "
           "PEFT, as ErnieImagePipeline.save_lora_weights writes them), or so named under base_model.model. / "
           "diffusion_model., which ErnieImagePipeline renames transformer.")


def ernie_image_tensors(path, tensors: dict) -> dict:
    """``tensors`` of an ERNIE-Image LoRA file under the keys ``ErnieImageLoraLoaderMixin`` loads (module docstring);
    a key it would not load as the file says: one line naming it."""
    from .sd3_lora import PARTS
    origin = {k: k for k in tensors}  # the loaded key: the file's
    for old, new in RENAMES:
        if any(k.startswith(old) for k in origin):
            renamed = {}
            for key, first in sorted(origin.items(), key=lambda item: item[1]):
                if renamed.setdefault(key.replace(old, new), first) != first:
                    raise DiffkitError(f"--lora {path}: keys {renamed[key.replace(old, new)]!r} and {first!r} are "
                                       f"one key once {PIPELINE} renames {old!r} to {new!r}; allowed: one of them")
            origin = renamed
    for key in sorted(origin, key=origin.get):
        file_key = origin[key]
        why = ("diffusers drops dora_scale and merges the rest, which is not the file's DoRA" if "dora_scale" in key
               else f"{PIPELINE}'s loader adapts the transformer only and converts no .alpha / lora_down / lora_up"
               if not (key.startswith("transformer.") and key.endswith(PARTS)) else None)
        if why is not None:
            raise DiffkitError(f"--lora {path}: key {file_key!r} is not supported on an ERNIE-Image folder ({why}); "
                               f"allowed: {ALLOWED}")
    return {k: tensors[old] for k, old in origin.items()}


def read_ernie_image_loras(adapters) -> list:
    """:func:`.sana_lora.read_transformer_loras` of ERNIE-Image LoRA files (paths or (path, scale) pairs), each read,
    renamed and checked with :func:`ernie_image_tensors` before the folder loads; :func:`.sd_lora.merge_sd_loras`
    fuses them (as the pipeline's ``load_lora_weights`` + ``fuse_lora``)."""
    from .sana_lora import read_transformer_loras
    return read_transformer_loras(adapters, "ERNIE-Image", "an ERNIE-Image folder", PIPELINE, ernie_image_tensors,
                                  flux_check=False)


__all__ = ["ernie_image_tensors", "read_ernie_image_loras", "RENAMES"]
