"""``diffkit edit --checkpoint JOYIMAGE_FOLDER --images PNG|DIR --prompt TEXT``: a JoyImage Edit diffusers folder
(:mod:`diffkit.interop.joyimage`) edits each image as ``JoyImageEditPipeline`` (a ``JoyImageEditPlusPipeline``
folder: seeing the repeatable ``--image-reference`` pictures after it) with any diffkit sampler: Chroma's command code
(:func:`._chroma.edit_chroma`) with :class:`JoyImageFamily`, dispatched from :func:`diffkit.commands.edit.run`."""
from __future__ import annotations

from ._chroma import NO_ADAPTER_EDIT_FLAGS, Family


def _edit_call(model, images, prompts, strength=None, *, mask=None, posterior=None, ip_adapter=None, references=(),
               chosen_posterior=None, seed=0, **options):
    """:func:`._chroma.edit_chroma`'s image_to_image call on :func:`diffkit.interop.joyimage.edit_image`: image i
    (in [-1, 1], back to 8-bit PIL as read) edited alone with its prompt from ``seed + i`` (the pipelines' one image
    per call), a Plus folder's seeing ``references`` after it; ``chosen_posterior``: ``--posterior`` as given (None:
    the pipeline's, Edit "sample", Plus "mean"); the arguments the folder does not take come from flags it refuses
    first (``edit_flags``), at their defaults."""
    import torch

    from ..interop.joyimage import edit_image
    from ..interop.qwen_image_edit import _pil_images
    return torch.cat([edit_image(model, _pil_images(images[i:i + 1]) + list(references), prompts[i], seed=seed + i,
                                 posterior=chosen_posterior, **options) for i in range(images.shape[0])])


class JoyImageFamily(Family):
    """A JoyImage Edit folder's (JoyImageEditPipeline / JoyImageEditPlusPipeline): ``diffkit edit`` only, each image
    edited alone at its bucket size (diffusers' 1024 table); no mask, strength, size or adapters (the pipelines have
    none)."""

    kind, samples, resizes, adapters, lora = "JoyImage Edit", False, True, False, False
    edit_takes = ("--images (each edited alone), --prompt (the instruction), --image-reference (Plus: repeatable, seen "
                  "after each image), --negative-prompt, --guidance-scale (--guidance-convention), --posterior, "
                  "--max-sequence-length, --steps, --sampler and its grid options, --eta")
    edit_flags = NO_ADAPTER_EDIT_FLAGS - {"mask", "strength", "height", "width"} | {"image_reference"}

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.joyimage import load_joyimage
        return load_joyimage(directory, device, progress=progress)

    @staticmethod
    def functions() -> tuple:
        return None, _edit_call

    @staticmethod
    def edit_inputs(args) -> dict:
        """``--posterior`` as given and a Plus folder's ``--image-reference`` pictures
        (:func:`._qwen_image.reference_pictures`), read before any weight."""
        from ..interop.joyimage import PLUS_PIPELINE
        from ._qwen_image import reference_pictures
        inputs = {"chosen_posterior": args.posterior}
        if args.image_reference is not None:
            inputs["references"] = reference_pictures(args, PLUS_PIPELINE, "JoyImage Edit Plus", "")
        return inputs
