"""``diffkit sample --checkpoint QWEN_IMAGE_21_FOLDER --prompt TEXT``: a Qwen-Image 2.1 diffusers folder
(:mod:`diffkit.interop.qwen_image21`) as ``QwenImage21Pipeline`` with any diffkit sampler: Chroma's command code
(:mod:`._chroma`) with :class:`QwenImage21Family`. ``diffkit edit --checkpoint QWEN_IMAGE_21_FOLDER --images PNG|DIR
[--image-reference PNG ...] --prompt TEXT``: each image (RGBA as read) the pipeline's condition image, seeing the
repeatable ``--image-reference`` pictures after it (``image=[image i, *references]``;
:func:`diffkit.interop.qwen_image21.edit_image`, :func:`._chroma.edit_chroma`)."""
from __future__ import annotations

from ._chroma import NO_ADAPTER_EDIT_FLAGS, Family

TAKES = ("--prompt, --negative-prompt with --guidance-scale > 1 (--guidance-convention), --height / --width, "
         "--steps / --nfe, --lora, --sampler and its grid options (--flow-shift with another sampler than the "
         "pipeline's loop)")
EDIT_TAKES = ("--images (each the condition image of its own call), --image-reference (repeatable: more condition "
              "images after it), --prompt, --negative-prompt with --guidance-scale > 1 (--guidance-convention), "
              "--max-area (the pipeline's output_resolution squared), --lora, --steps, --sampler and its grid "
              "options, --eta")


def _edit_call(model, images, prompts, strength=None, *, mask=None, posterior=None, max_sequence_length=None,
               ip_adapter=None, references=(), seed=0, **options):
    """:func:`._chroma.edit_chroma`'s image_to_image call on :func:`diffkit.interop.qwen_image21.edit_image`: image i
    (in [-1, 1], RGBA, back to 8-bit PIL as read) with ``references`` after it, for its prompt from ``seed + i`` (the
    pipeline's one image set per call); the arguments the folder does not take come from flags it refuses first
    (``edit_flags``), at their defaults."""
    import torch

    from ..interop.qwen_image21 import edit_image
    from ..interop.qwen_image_edit import _pil_images
    return torch.cat([edit_image(model, _pil_images(images[i:i + 1], "RGBA") + list(references), prompts[i],
                                 seed=seed + i, **options) for i in range(images.shape[0])])


class QwenImage21Family(Family):
    """A Qwen-Image 2.1 folder's: sampling, unguided by default (CFG with a negative prompt and a scale > 1), the
    folder's sample_sigmas or 40 steps; editing (``diffkit edit``): condition images as the pipeline's ``image=``;
    LoRA files in both (``QwenImageLoraLoaderMixin``, :mod:`diffkit.interop.qwen_image_lora`); no textual inversion,
    IP-Adapter, mask, strength or --max-sequence-length (refused in one line)."""

    kind, takes, adapters, lora = "Qwen-Image 2.1", TAKES, False, True
    edit_takes, resizes, image_mode = EDIT_TAKES, True, "RGBA"
    edit_flags = NO_ADAPTER_EDIT_FLAGS - {"mask", "strength", "posterior", "max_sequence_length", "height",
                                          "width"} | {"image_reference", "max_area", "lora"}

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.qwen_image21 import load_qwen_image21
        return load_qwen_image21(directory, device, progress=progress, lora=lora)

    @staticmethod
    def functions() -> tuple:
        from ..interop.qwen_image21 import text_to_image
        return text_to_image, _edit_call

    @staticmethod
    def edit_inputs(args) -> dict:
        """``--image-reference``'s pictures (RGBA; :func:`._qwen_image.reference_pictures`), read before any
        weight."""
        from ..interop.qwen_image21 import PIPELINE
        from ._qwen_image import reference_pictures
        if args.image_reference is None:
            return {}
        return {"references": reference_pictures(args, PIPELINE, "Qwen-Image 2.1", "", "RGBA")}
