"""``diffkit sample --checkpoint IDEOGRAM4_FOLDER --prompt TEXT``: an Ideogram 4 diffusers folder
(:mod:`diffkit.interop.ideogram4`) as ``Ideogram4Pipeline`` (``prompt_upsampling=False``) with any diffkit sampler:
Chroma's command code (:mod:`._chroma`) with :class:`Ideogram4Family`, dispatched from
:func:`diffkit.commands.sample.sample_to_files` (``diffkit edit`` refuses it in one line: diffusers 0.42.1 has no
Ideogram 4 img2img pipeline)."""
from __future__ import annotations

from ..errors import DiffkitError
from ._chroma import Family

TAKES = ("--prompt, --guidance-scale (--guidance-convention; default the pipeline's schedule 7.0, then 3.0 for the "
         "last 3 steps) or --guidance-schedule, --max-sequence-length, --height / --width, --steps / --nfe, --lora, "
         "--sampler and its grid options (--flow-shift with another sampler than the pipeline's loop)")


class Ideogram4Family(Family):
    """An Ideogram 4 folder's: sampling only, the unconditional transformer's guidance with the pipeline's per-step
    scales (or ``--guidance-scale`` at every step), 48 steps, 2048 x 2048; LoRA files on the conditional transformer
    (``Ideogram4Pipeline.load_lora_weights``, :mod:`diffkit.interop.ideogram4_lora`); no negative prompt, textual
    inversion or IP-Adapter (refused in one line)."""

    kind, takes, adapters, lora, edits = "Ideogram 4", TAKES, False, True, False
    options = ("guidance_schedule",)  # Ideogram4Pipeline's guidance_schedule (._family_options)

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.ideogram4 import load_ideogram4
        return load_ideogram4(directory, device, progress=progress, lora=lora)

    @staticmethod
    def functions() -> tuple:
        from ..interop.ideogram4 import text_to_image
        return text_to_image, None

    @classmethod
    def check_request(cls, directory, request, edit: bool = False) -> None:
        """One line, before loading, for ``--negative-prompt`` (the unconditional transformer reads no text)."""
        if request.negative_prompt is not None:
            raise DiffkitError(f"--negative-prompt does not apply to an Ideogram 4 folder ({directory}; its "
                               f"unconditional branch is a second transformer that reads no text); it takes "
                               f"{cls.takes}")
