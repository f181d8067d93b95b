"""``diffkit sample --checkpoint FIBO2_FOLDER --prompt JSON`` and ``diffkit edit --checkpoint FIBO2_FOLDER --images
PNG|DIR --prompt INSTRUCTION``: a Bria FIBO 2 diffusers folder (:mod:`diffkit.interop.bria_fibo2`) as
``BriaFibo2Pipeline`` with any diffkit sampler: Chroma's command code (:mod:`._chroma`) with
:class:`BriaFibo2Family`, dispatched from :func:`diffkit.commands.sample.sample_to_files` and
:func:`diffkit.commands.edit.run`."""
from __future__ import annotations

from ._chroma import EDIT_FLAGS, Family

TAKES = ("--prompt (a JSON caption or a short description), --negative-prompt, --guidance-scale "
         "(--guidance-convention), --height / --width, --steps / --nfe, --lora, --sampler and its grid options "
         "(--flow-shift with another sampler than the pipeline's loop)")


def _edit_call(model, images, prompts, strength=None, **options):
    """Bria FIBO Edit's per-image call (:func:`._bria_fibo._edit_call`) on
    :func:`diffkit.interop.bria_fibo2.edit_image`: image i edited alone with its own prompt and ``--mask``."""
    from ..interop.bria_fibo2 import edit_image
    from ._bria_fibo import _edit_call as each_image
    return each_image(model, images, prompts, strength, edit_image=edit_image, **options)


class BriaFibo2Family(Family):
    """A Bria FIBO 2 folder's: sampling, and editing each ``--images`` file (cropped by the pipeline's rules, the
    output at its trained size for the image's aspect ratio; ``--mask`` greyed out); CFG against
    ``--negative-prompt`` (default the null caption); LoRA files (``BriaFibo2Pipeline.load_lora_weights``, diffusers
    / PEFT keys); no textual inversion, IP-Adapter, ``--max-sequence-length``, strength or posterior (refused in one
    line)."""

    kind, takes, adapters, lora, edits, resizes = "Bria FIBO 2", TAKES, False, True, True, True
    edit_takes = ("--images (each edited alone), --prompt (the instruction, or a JSON caption with "
                  "\"edit_instruction\"), --mask (greyed out), --negative-prompt, --guidance-scale "
                  "(--guidance-convention), --steps, --lora, --sampler and its grid options, --eta")
    edit_flags = EDIT_FLAGS - {"strength", "posterior", "height", "width", "max_sequence_length",
                               "textual_inversion", "ip_adapter", "ip_adapter_image", "image_encoder",
                               "negative_ip_adapter_image"}

    @classmethod
    def check_request(cls, directory, request, edit: bool = False) -> None:
        """One line, before loading, for ``diffkit edit`` prompts the pipeline refuses (a JSON object without
        ``"edit_instruction"``: :func:`~diffkit.interop.bria_fibo2.check_edit_prompts`)."""
        if edit:
            from ..interop.bria_fibo2 import check_edit_prompts
            check_edit_prompts(request.prompts)

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.bria_fibo2 import load_bria_fibo2
        return load_bria_fibo2(directory, device, progress=progress, lora=lora)

    @staticmethod
    def functions() -> tuple:
        from ..interop.bria_fibo2 import text_to_image
        return text_to_image, _edit_call
