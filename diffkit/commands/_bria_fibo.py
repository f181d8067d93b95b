"""``diffkit sample --checkpoint FIBO_FOLDER --prompt JSON``: a Bria FIBO diffusers folder
(:mod:`diffkit.interop.bria_fibo`) as ``BriaFiboPipeline`` with any diffkit sampler: Chroma's command code
(:mod:`._chroma`) with :class:`BriaFiboFamily`, dispatched from :func:`diffkit.commands.sample.sample_to_files`
(``diffkit edit``: one line)."""
from __future__ import annotations

from ..errors import DiffkitError
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

    @classmethod
    def check_request(cls, directory, request, edit: bool = False) -> None:
        """One line for a BriaFiboEditPipeline folder (its edits: the library's
        :func:`diffkit.interop.bria_fibo_edit.edit_image`)."""
        from ..interop.bria_fibo import FIBO_EDIT_PIPELINE
        from ..interop.sd_xl import pipeline_class
        if pipeline_class(directory) == FIBO_EDIT_PIPELINE:
            raise DiffkitError(f"{directory} is a {FIBO_EDIT_PIPELINE} folder, which diffkit sample does not take; "
                               f"edit with the library's diffkit.interop.bria_fibo_edit.edit_image")

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.bria_fibo import load_bria_fibo
        return load_bria_fibo(directory, device, progress=progress)

    @staticmethod
    def functions() -> tuple:
        from ..interop.bria_fibo import text_to_image
        return text_to_image, None
