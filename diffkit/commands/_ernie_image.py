"""``diffkit sample --checkpoint ERNIE_IMAGE_FOLDER --prompt TEXT``: an ERNIE-Image diffusers folder
(:mod:`diffkit.interop.ernie_image`) as ``ErnieImagePipeline`` (``use_pe=False``) with any diffkit sampler: Chroma's
command code (:mod:`._chroma`) with :class:`ErnieImageFamily`, dispatched from
:func:`diffkit.commands.sample.sample_to_files` (``diffkit edit`` refuses it in one line: diffusers 0.42.1 has no
ERNIE-Image img2img pipeline)."""
from __future__ import annotations

from ._chroma import Family

TAKES = ("--prompt, --negative-prompt, --guidance-scale (--guidance-convention), --height / --width, --steps / "
         "--nfe, --lora, --sampler and its grid options (--flow-shift with another sampler than the pipeline's loop)")


class ErnieImageFamily(Family):
    """An ERNIE-Image folder's: sampling only, CFG s = 4.0 against ``--negative-prompt`` (default ""), 50 steps,
    1024 x 1024; LoRA files (``ErnieImagePipeline.load_lora_weights``, :mod:`diffkit.interop.ernie_image_lora`), no
    textual inversion or IP-Adapter (refused in one line)."""

    kind, takes, adapters, lora, edits = "ERNIE-Image", TAKES, False, True, False

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.ernie_image import load_ernie_image
        return load_ernie_image(directory, device, progress=progress, lora=lora)

    @staticmethod
    def functions() -> tuple:
        from ..interop.ernie_image import text_to_image
        return text_to_image, None
