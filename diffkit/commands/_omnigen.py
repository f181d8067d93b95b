"""``diffkit sample --checkpoint OMNIGEN_FOLDER --prompt TEXT`` and ``diffkit edit --checkpoint OMNIGEN_FOLDER --images
PNG|DIR --prompt "... <img><|image_1|></img> ..." [--image-guidance-scale S]``: an OmniGen diffusers folder
(:mod:`diffkit.interop.omnigen`) as ``OmniGenPipeline`` with any diffkit sampler: Chroma's command code
(:mod:`._chroma`) with OmniGen's :class:`OmniGenFamily`, dispatched from
:func:`diffkit.commands.sample.sample_to_files` and :func:`diffkit.commands.edit.run`."""
from __future__ import annotations

from ..errors import DiffkitError
from ._chroma import NO_ADAPTER_EDIT_FLAGS, Family

TAKES = ("--prompt, --guidance-scale (--guidance-convention), --height / --width, --steps / --nfe, --sampler and "
         "its grid options (--flow-shift with another sampler than the pipeline's loop)")
EDIT_TAKES = ("--images, --prompt (naming the image as <img><|image_1|></img>), --guidance-scale "
              "(--guidance-convention), --image-guidance-scale, --posterior, --height / --width (the images resized "
              "first), --steps, --sampler and its grid options, --eta")


def _sample_call(model, prompts, *, negative_prompt=None, max_sequence_length=None, ip_adapter=None, **options):
    """:func:`._chroma.sample_chroma`'s text_to_image call on :func:`diffkit.interop.omnigen.text_to_image`; the
    arguments an OmniGen folder does not take come from flags refused first (:meth:`OmniGenFamily.check_request`)."""
    from ..interop.omnigen import text_to_image
    return text_to_image(model, prompts, **options)


def _edit_call(model, images, prompts, strength=None, *, mask=None, negative_prompt=None, max_sequence_length=None,
               ip_adapter=None, **options):
    """:func:`._chroma.edit_chroma`'s image_to_image call on :func:`diffkit.interop.omnigen.edit_image` (each image
    the prompt's <|image_1|>, the output its size); the arguments it does not take come from refused flags."""
    from ..interop.omnigen import edit_image
    return edit_image(model, images, prompts, **options)


class OmniGenFamily(Family):
    """An OmniGen folder's: no negative prompt or text length (OmniGenPipeline has neither), no adapters;
    ``diffkit edit``: OmniGenPipeline with ``input_images`` (``use_input_image_size_as_output``) and its
    ``img_guidance_scale`` (``--image-guidance-scale``), not img2img (no ``--strength`` or ``--mask``)."""

    kind, takes, edit_takes, adapters, lora, resizes = "OmniGen", TAKES, EDIT_TAKES, False, False, True
    edit_flags = NO_ADAPTER_EDIT_FLAGS - {"mask", "negative_prompt", "max_sequence_length", "strength"} \
        | {"image_guidance_scale"}

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.omnigen import load_omnigen
        return load_omnigen(directory, device, progress=progress)

    @staticmethod
    def functions() -> tuple:
        return _sample_call, _edit_call

    @staticmethod
    def guide(request) -> dict:
        """``image_guidance_scale`` of ``--image-guidance-scale`` (diffkit edit; given)."""
        scale = getattr(request, "image_guidance_scale", None)
        return {} if scale is None else {"image_guidance_scale": scale}

    @classmethod
    def check_request(cls, directory, request, edit: bool = False) -> None:
        """One line, before loading, for ``--negative-prompt`` (``--max-sequence-length`` is refused before, as on
        every folder kind without a T5 length) and for prompts whose image tags do not fit: ``diffkit sample`` takes
        none, ``diffkit edit`` one ``<img><|image_1|></img>`` each (:func:`~diffkit.interop.omnigen.check_image_tags`).
        """
        from ..interop.omnigen import check_image_tags
        if request.negative_prompt is not None:
            raise DiffkitError(f"--negative-prompt does not apply to an OmniGen folder ({directory}; OmniGenPipeline "
                               f"has none: its negative branch is its processor's fixed prompt); it takes {cls.takes}")
        check_image_tags(request.prompts, edit)
