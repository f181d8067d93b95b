"""``diffkit sample --checkpoint GLM_IMAGE_FOLDER --prompt TEXT`` and ``diffkit edit --checkpoint GLM_IMAGE_FOLDER
--images PNG|DIR --prompt TEXT``: a GLM-Image diffusers folder (:mod:`diffkit.interop.glm_image`) as
``GlmImagePipeline`` with any diffkit sampler for its diffusion stage (the prior tokens from the folder's AR model,
diffusers' own ``generate_prior_tokens``; with condition images :mod:`diffkit.interop.glm_image_edit`'s): Chroma's
command code (:mod:`._chroma`) with :class:`GlmImageFamily`."""
from __future__ import annotations

from ._chroma import NO_ADAPTER_EDIT_FLAGS, Family

TAKES = ("--prompt (its quoted texts: the glyphs), --guidance-scale (--guidance-convention), --max-sequence-length, "
         "--height / --width, --steps / --nfe, --sampler and its grid options (--flow-shift with another sampler "
         "than the pipeline's loop)")
EDIT_TAKES = ("--images (each the condition image of one edit, the output at its size), --prompt, --image-reference "
              "(repeatable: more condition images, seen after each), --guidance-scale (--guidance-convention), "
              "--max-sequence-length, --steps, --sampler and its grid options, --eta")


def _edit_call(model, images, prompts, strength=None, *, mask=None, posterior=None, references=(), seed=0,
               **options):
    """:func:`._chroma.edit_chroma`'s image_to_image call on :func:`diffkit.interop.glm_image_edit.image_to_image`:
    image i (in [-1, 1], back to 8-bit PIL as read) with ``references`` after it, the condition images of its prompt,
    from ``seed + i``; each prompt's prior tokens from seed 0, as ``diffkit sample``'s. The arguments the folder does
    not take come from flags it refuses first (``edit_flags``), at their defaults."""
    import torch

    from ..interop.glm_image_edit import image_to_image
    from ..interop.qwen_image_edit import _pil_images
    return torch.cat([image_to_image(model, _pil_images(images[i:i + 1]) + list(references), prompts[i],
                                     seed=seed + i, **options) for i in range(images.shape[0])])


class GlmImageFamily(Family):
    """A GLM-Image folder's: CFG s = 1.5 against the empty glyphs with the prior tokens dropped, 50 steps; each
    prompt's prior tokens drawn once by the AR model from seed 0 (``--seed`` seeds the DiT's noise); ``diffkit edit``:
    each image (and the ``--image-reference`` ones) the condition images of a new image of its size; no negative
    prompt, LoRA, textual inversion, IP-Adapter, mask or strength (refused in one line)."""

    kind, takes, edit_takes, adapters, lora, resizes = "GLM-Image", TAKES, EDIT_TAKES, False, False, True
    edit_flags = NO_ADAPTER_EDIT_FLAGS - {"mask", "strength", "posterior", "height", "width"} | {"image_reference"}

    @classmethod
    def check_request(cls, directory, request, edit: bool = False) -> None:
        """``--negative-prompt``: one line before any weight is read (the pipeline has no negative prompt)."""
        from ..errors import DiffkitError
        from ..interop.glm_image import NO_NEGATIVE
        if request.negative_prompt is not None:
            raise DiffkitError(NO_NEGATIVE)

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.glm_image import load_glm_image
        return load_glm_image(directory, device, progress=progress)

    @staticmethod
    def functions() -> tuple:
        from ..interop.glm_image import text_to_image
        return text_to_image, _edit_call

    @staticmethod
    def edit_inputs(args) -> dict:
        """``--image-reference``'s pictures (:func:`._qwen_image.reference_pictures`), read before any weight."""
        from ..interop.glm_image import GLM_IMAGE_PIPELINE
        from ._qwen_image import reference_pictures
        if args.image_reference is None:
            return {}
        return {"references": reference_pictures(args, GLM_IMAGE_PIPELINE, "GLM-Image", "")}
