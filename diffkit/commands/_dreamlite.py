"""``diffkit sample --checkpoint DREAMLITE_FOLDER --prompt TEXT`` and ``diffkit edit --checkpoint DREAMLITE_FOLDER
--images PNG|DIR --prompt TEXT``: a DreamLite diffusers folder (:mod:`diffkit.interop.dreamlite`) as
``DreamLitePipeline`` / ``DreamLiteMobilePipeline`` without or with ``image=`` (an instruction edit), with any diffkit
sampler: Chroma's command code (:mod:`._chroma`) with :class:`DreamLiteFamily` / :class:`DreamLiteMobileFamily`,
dispatched from :func:`diffkit.commands.sample.sample_to_files` and :func:`diffkit.commands.edit.run`."""
from __future__ import annotations

from ..errors import DiffkitError
from ._chroma import NO_ADAPTER_EDIT_FLAGS, Family
from ._omnigen import OmniGenFamily

TAKES = ("--prompt, --negative-prompt, --guidance-scale (--guidance-convention), --max-sequence-length, --height / "
         "--width, --steps / --nfe, --sampler and its grid options (--flow-shift with another sampler than the "
         "pipeline's loop)")
EDIT_TAKES = ("--images, --prompt (the instruction), --negative-prompt, --guidance-scale (--guidance-convention), "
              "--image-guidance-scale, --height / --width (the output's; the pipeline resizes the images), --steps, "
              "--sampler and its grid options, --eta")
MOBILE_TAKES = ("--prompt, --max-sequence-length, --height / --width, --steps / --nfe, --sampler and its grid "
                "options (--flow-shift with another sampler than the pipeline's loop)")
MOBILE_EDIT_TAKES = ("--images, --prompt (the instruction), --height / --width (the output's; the pipeline resizes the "
                     "images), --steps, --sampler and its grid options, --eta")
GUIDANCE_FLAGS = {"negative_prompt", "guidance_scale", "guidance_convention", "image_guidance_scale"}


def _edit_call(model, images, prompts, strength=None, *, mask=None, posterior=None, max_sequence_length=None,
               ip_adapter=None, **options):
    """:func:`._chroma.edit_chroma`'s image_to_image call on :func:`diffkit.interop.dreamlite.edit_image`; the
    arguments a DreamLite folder does not take come from flags it refuses first (``edit_flags``), at their
    defaults."""
    from ..interop.dreamlite import edit_image
    return edit_image(model, images, prompts, **options)


class DreamLiteFamily(Family):
    """A DreamLitePipeline folder's: CFG s = 3.5 against ``--negative-prompt`` (default ""), 30 steps; ``diffkit
    edit``: the pipeline with ``image=`` (from noise: no ``--strength`` or ``--mask``; its three-way guidance with
    ``--image-guidance-scale``, default 1.5), the images resized by the library as the pipeline does (``--height`` /
    ``--width``: the output's size, :meth:`edit_inputs`); no LoRA, textual inversion or IP-Adapter."""

    kind, takes, edit_takes, adapters, lora, resizes = "DreamLite", TAKES, EDIT_TAKES, False, False, True
    edit_flags = NO_ADAPTER_EDIT_FLAGS - {"mask", "strength", "posterior", "max_sequence_length"} \
        | {"image_guidance_scale"}

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.dreamlite import load_dreamlite
        return load_dreamlite(directory, device, progress=progress)

    @staticmethod
    def functions() -> tuple:
        from ..interop.dreamlite import text_to_image
        return text_to_image, _edit_call

    guide = staticmethod(OmniGenFamily.guide)  # image_guidance_scale of --image-guidance-scale (diffkit edit)

    @staticmethod
    def edit_inputs(args) -> dict:
        """``--height`` / ``--width`` as the output's size (the library resizes each image to it, and to 512 x 512
        for its prompt, as the pipeline does), so :func:`.edit.read_edit_inputs` reads the images as they are."""
        size = {"height": args.height, "width": args.width}
        args.height = args.width = None
        return size


class DreamLiteMobileFamily(DreamLiteFamily):
    """A DreamLiteMobilePipeline folder's: :class:`DreamLiteFamily`'s, guidance-distilled (4 steps, one branch):
    ``--negative-prompt``, ``--guidance-scale`` and ``--image-guidance-scale`` refused in one line (the pipeline
    ignores its scales and takes no negative prompt)."""

    kind, takes, edit_takes = "DreamLite Mobile", MOBILE_TAKES, MOBILE_EDIT_TAKES
    edit_flags = DreamLiteFamily.edit_flags - GUIDANCE_FLAGS

    @classmethod
    def check_request(cls, directory, request, edit: bool = False) -> None:
        """One line, before loading, for ``--negative-prompt`` / ``--guidance-scale`` (diffkit sample; diffkit edit
        refuses them with its flags)."""
        for flag, value in (("--negative-prompt", request.negative_prompt),
                            ("--guidance-scale", request.guidance_scale)):
            if value is not None:
                raise DiffkitError(f"{flag} does not apply to a DreamLite Mobile folder ({directory}; "
                                   f"DreamLiteMobilePipeline's guidance is distilled: one branch, no negative "
                                   f"prompt); it takes {cls.edit_takes if edit else cls.takes}")
