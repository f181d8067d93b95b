"""``diffkit sample --checkpoint FIBO_FOLDER --prompt JSON``: a Bria FIBO diffusers folder
(:mod:`diffkit.interop.bria_fibo`) as ``BriaFiboPipeline`` with any diffkit sampler: Chroma's command code
(:mod:`._chroma`) with :class:`BriaFiboFamily`, dispatched from :func:`diffkit.commands.sample.sample_to_files`
(``diffkit edit``: one line)."""
from __future__ import annotations

from ._bria import BriaFamily

TAKES = ("--prompt (FIBO's JSON prompt string), --negative-prompt, --guidance-scale (--guidance-convention), "
         "--max-sequence-length, --height / --width (multiples of 16), --steps / --nfe, --sampler and its grid "
         "options (--flow-shift with another sampler than the pipeline's loop)")


class BriaFiboFamily(BriaFamily):
    """A Bria FIBO folder's: sampling only, no LoRA, textual inversion or IP-Adapter (refused in one line: diffkit
    drives no FIBO LoRA, BriaFiboPipeline has no textual-inversion or IP-Adapter loader); CFG against
    ``--negative-prompt`` (default "")."""

    kind, takes = "Bria FIBO", TAKES
    no_edit = "diffkit drives BriaFiboPipeline, not yet BriaFiboEditPipeline"

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.bria_fibo import load_bria_fibo
        return load_bria_fibo(directory, device, progress=progress)

    @staticmethod
    def functions() -> tuple:
        from ..interop.bria_fibo import text_to_image
        return text_to_image, None
