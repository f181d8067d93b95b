"""``diffkit sample --checkpoint KREA2_FOLDER --prompt TEXT``: a Krea 2 diffusers folder
(:mod:`diffkit.interop.krea2`) as ``Krea2Pipeline`` with any diffkit sampler: Chroma's command code (:mod:`._chroma`)
with :class:`Krea2Family`, dispatched from :func:`diffkit.commands.sample.sample_to_files` (``diffkit edit`` refuses
it in one line: diffusers 0.42.1 has no Krea 2 img2img pipeline)."""
from __future__ import annotations

from ._chroma import Family

TAKES = ("--prompt, --negative-prompt, --guidance-scale (--guidance-convention; the pipeline's 4.5 is seed's), "
         "--max-sequence-length, --height / --width, --steps / --nfe, --lora, --sampler and its grid options "
         "(--flow-shift with another sampler than the pipeline's loop)")


class Krea2Family(Family):
    """A Krea 2 folder's: sampling only, CFG s = 5.5 (diffusers' convention; Krea's 4.5) against
    ``--negative-prompt`` (default ""), 28 steps, 1024 x 1024; LoRA files (``Krea2Pipeline.load_lora_weights``,
    :mod:`diffkit.interop.krea2_lora`), no textual inversion or IP-Adapter (refused in one line)."""

    kind, takes, adapters, lora, edits = "Krea 2", TAKES, False, True, False

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.krea2 import load_krea2
        return load_krea2(directory, device, progress=progress, lora=lora)

    @staticmethod
    def functions() -> tuple:
        from ..interop.krea2 import text_to_image
        return text_to_image, None
