"""``diffkit sample --checkpoint BRIA_FOLDER --prompt TEXT``: a Bria 3.2 diffusers folder (:mod:`diffkit.interop.bria`)
as ``BriaPipeline`` with any diffkit sampler: Chroma's command code (:mod:`._chroma`) with :class:`BriaFamily`,
dispatched from :func:`diffkit.commands.sample.sample_to_files` (``diffkit edit``: one line, no Bria img2img or
inpainting pipeline in diffusers 0.42.1)."""
from __future__ import annotations

from ._chroma import Family

TAKES = ("--prompt, --negative-prompt, --guidance-scale (--guidance-convention), --bria-normalize, --bria-clip-value, "
         "--max-sequence-length, --height / --width, --steps / --nfe, --sampler and its grid options (--flow-shift "
         "with another sampler than the pipeline's loop)")


class BriaFamily(Family):
    """A Bria 3.2 folder's: sampling only, no LoRA, textual inversion or IP-Adapter (BriaPipeline has no loaders:
    refused in one line); CFG against ``--negative-prompt`` (empty: the pipeline's zero states)."""

    kind, takes, adapters, lora, edits = "Bria", TAKES, False, False, False
    options = ("bria_normalize", "bria_clip_value")  # BriaPipeline's normalize / clip_value (._family_options)

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.bria import load_bria
        return load_bria(directory, device, progress=progress)

    @staticmethod
    def functions() -> tuple:
        from ..interop.bria import text_to_image
        return text_to_image, None
