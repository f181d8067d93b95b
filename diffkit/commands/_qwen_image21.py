"""``diffkit sample --checkpoint QWEN_IMAGE_21_FOLDER --prompt TEXT``: a Qwen-Image 2.1 diffusers folder
(:mod:`diffkit.interop.qwen_image21`) as ``QwenImage21Pipeline`` with any diffkit sampler: Chroma's command code
(:mod:`._chroma`) with :class:`QwenImage21Family` (``diffkit edit`` refuses it: diffkit does not drive the
pipeline's condition images)."""
from __future__ import annotations

from ._chroma import Family

TAKES = ("--prompt, --negative-prompt with --guidance-scale > 1 (--guidance-convention), --height / --width, "
         "--steps / --nfe, --sampler and its grid options (--flow-shift with another sampler than the pipeline's "
         "loop)")


class QwenImage21Family(Family):
    """A Qwen-Image 2.1 folder's: sampling only, unguided by default (CFG with a negative prompt and a scale > 1),
    the folder's sample_sigmas or 40 steps; no LoRA, textual inversion, IP-Adapter or --max-sequence-length (refused
    in one line)."""

    kind, takes, adapters, lora, edits = "Qwen-Image 2.1", TAKES, False, False, False
    no_edit = "diffkit does not drive QwenImage21Pipeline's condition images, its image="

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.qwen_image21 import load_qwen_image21
        return load_qwen_image21(directory, device, progress=progress)

    @staticmethod
    def functions() -> tuple:
        from ..interop.qwen_image21 import text_to_image
        return text_to_image, None
