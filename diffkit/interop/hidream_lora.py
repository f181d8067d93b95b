"""LoRA files on a HiDream-I1 folder: what diffusers 0.42.1's ``HiDreamImagePipeline.load_lora_weights``
(``HiDreamImageLoraLoaderMixin``) loads, fused as its ``fuse_lora``.

The loader adapts the transformer only (``_lora_loadable_modules = ["transformer"]``) and takes two kinds of file:

* diffusers / PEFT: ``transformer.<module>.lora_A.weight`` / ``.lora_B.weight`` (a DoRA ``.lora_magnitude_vector``
  too), as ``HiDreamImagePipeline.save_lora_weights`` writes them; alpha / rank patterns from the file's
  ``lora_adapter_metadata`` (without it alpha = r).
* what ``_convert_non_diffusers_hidream_lora_to_diffusers`` converts: a file with ``diffusion_model`` in a key
  (ComfyUI, ai-toolkit) whose keys **all** begin ``diffusion_model.``: the prefix becomes ``transformer.``; the
  module names are the transformer's own (HiDream's original names are diffusers'), so the rest is the first kind.

Each is merged by :mod:`.sd_lora`'s merger, W = W0 + s (alpha / r) B A (Hu et al. 2021, eq. 3), on any Linear of
the ``HiDreamImageTransformer2DModel`` — the mixture-of-experts feed-forwards' shared expert and each routed
expert (``ff_i.shared_experts.w1``, ``ff_i.experts.<k>.w1`` ...) included; the router (``ff_i.gate``, a bare
weight, no Linear) is not a layer a LoRA adapts (PEFT refuses it too). Refused in one line before any weight is
read (or, for a module the transformer lacks, before any is merged): a ``diffusion_model`` file with another key
(diffusers raises), ``.alpha`` / ``lora_down`` / ``lora_up`` keys (the loader has no converter for them: an
``.alpha`` fails its ``'lora'`` check, ``lora_down`` / ``lora_up`` an IndexError in it), any other key (a
text-encoder one: the loader has none and merges nothing) and ``dora_scale`` (diffusers drops it with a warning
and merges the rest: not the file's DoRA).
"""
from __future__ import annotations

from ..errors import DiffkitError

CONVERTED = "diffusion_model"  # HiDreamImageLoraLoaderMixin.lora_state_dict converts a file with this in a key
ALLOWED = ("transformer.<module> keys ending in .lora_A.weight / .lora_B.weight / .lora_magnitude_vector (diffusers "
           "/ PEFT, as HiDreamImagePipeline.save_lora_weights writes them), or all keys diffusion_model.<module>... "
           "so ending, as HiDreamImagePipeline converts them")


def hidream_tensors(path, tensors: dict) -> dict:
    """``tensors`` of a HiDream LoRA file under the keys ``HiDreamImageLoraLoaderMixin`` loads (a ``diffusion_model.``
    file's prefix made ``transformer.``, module docstring); a key it would not load: one line naming it."""
    from .lycoris_flow import refuse_lycoris
    from .sd3_lora import PARTS
    refuse_lycoris(path, tensors, "HiDreamImagePipeline.load_lora_weights")
    keys = sorted(tensors)
    origin = {k: k for k in keys}  # the loaded key: the file's
    key = next((k for k in keys if "dora_scale" in k), None)
    why = "diffusers drops dora_scale and merges the rest, which is not the file's DoRA"
    if key is None and any(CONVERTED in k for k in keys):
        key = next((k for k in keys if not k.startswith(CONVERTED + ".")), None)
        why = "a diffusion_model file's keys all begin diffusion_model.; diffusers cannot convert this one"
        origin = {"transformer." + k.removeprefix(CONVERTED + "."): k for k in keys}
    if key is None:
        key = next((origin[k] for k in sorted(origin) if not (k.startswith("transformer.") and k.endswith(PARTS))),
                   None)
        why = "HiDreamImageLoraLoaderMixin adapts the transformer only and converts no .alpha / lora_down / lora_up"
    if key is not None:
        raise DiffkitError(f"--lora {path}: key {key!r} is not supported on a HiDream folder ({why}); "
                           f"allowed: {ALLOWED}")
    return {k: tensors[old] for k, old in origin.items()}


def read_hidream_lora(path) -> dict:
    """:func:`.sd_lora.parse_sd_lora` of a HiDream LoRA file, its keys checked and converted first
    (:func:`hidream_tensors`)."""
    from .sd_lora import parse_sd_lora, read_lora_tensors
    tensors, meta = read_lora_tensors(path, flux_check=False)  # no FLUX.1 check: a FLUX file fails the keys' check
    return parse_sd_lora(path, hidream_tensors(path, tensors), meta)


def read_hidream_loras(adapters) -> list:
    """:func:`.sd_lora.read_sd_loras` of HiDream LoRA files (paths or (path, scale) pairs), each read and checked
    with :func:`read_hidream_lora` before the folder loads; :func:`.sd_lora.merge_sd_loras` fuses them (as the
    pipeline's ``load_lora_weights`` + ``fuse_lora``)."""
    from .sd_lora import read_sd_loras
    return read_sd_loras(adapters, read_hidream_lora)


__all__ = ["hidream_tensors", "read_hidream_lora", "read_hidream_loras", "CONVERTED"]
