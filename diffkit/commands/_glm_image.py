"""``diffkit sample --checkpoint GLM_IMAGE_FOLDER --prompt TEXT`` and ``diffkit edit --checkpoint GLM_IMAGE_FOLDER
--images PNG|DIR --prompt TEXT``: a GLM-Image diffusers folder (:mod:`diffkit.interop.glm_image`) as
``GlmImagePipeline`` with any diffkit sampler for its diffusion stage (the prior tokens from the folder's AR model,
diffusers' own ``generate_prior_tokens``; with condition images :mod:`diffkit.interop.glm_image_edit`'s): Chroma's
command code (:mod:`._chroma`) with :class:`GlmImageFamily`."""
from __future__ import annotations

from ..errors import DiffkitError
from ._chroma import NO_ADAPTER_EDIT_FLAGS, Family

TAKES = ("--prompt (its quoted texts: the glyphs), --guidance-scale (--guidance-convention), --max-sequence-length, "
         "--height / --width, --steps / --nfe, --sampler and its grid options (--flow-shift with another sampler "
         "than the pipeline's loop)")
EDIT_TAKES = ("--images (each the condition image of one edit, the output at its size), --prompt, --image-reference "
              "(repeatable: more condition images, seen after each) or --prompt-references (each image's own), "
              "--guidance-scale (--guidance-convention), "
              "--max-sequence-length, --steps, --sampler and its grid options, --eta")


def add_glm_image_flags(parser) -> None:
    """``--prompt-references`` (GLM-Image folders: each ``--images`` file's own condition images)."""
    parser.add_argument("--prompt-references", dest="prompt_references", action="append", metavar="PNG[,PNG...]",
                        help="GLM-Image folders, instead of --image-reference: the condition images seen after one "
                             "--images file, comma-separated (repeatable: the k-th use the k-th file's, in the files' "
                             "order, the edit of its --prompt; as GlmImagePipeline's image list per prompt; once: "
                             "every file's)")


def check_prompt_references(args) -> None:
    """One line for ``--prompt-references`` on a checkpoint that is no GLM-Image folder."""
    from ..interop.glm_image import GLM_IMAGE_PIPELINE, is_glm_image_folder
    if args.prompt_references is not None and not is_glm_image_folder(args.checkpoint):
        raise DiffkitError(f"--prompt-references applies to a GLM-Image folder ({GLM_IMAGE_PIPELINE}); "
                           f"{args.checkpoint} is not one")


def _prompt_references(args) -> list:
    """``--prompt-references``' pictures (RGB PIL, per use in order); one line for ``--image-reference`` too, an
    empty entry or a path that is no file (a folder), before any weight is read."""
    from pathlib import Path

    from ..interop.controlnet import open_control_image
    if args.image_reference is not None:
        raise DiffkitError("--image-reference and --prompt-references are given together; give the condition images "
                           "one way (--image-reference: every image's, --prompt-references: once per --images file)")
    uses = []
    for text in args.prompt_references:
        paths = [entry.strip() for entry in text.split(",")]
        for path in paths:
            if not path or not Path(path).is_file():
                raise DiffkitError(f"--prompt-references {text!r}: {path!r} is not a file; give the condition images "
                                   f"of one --images file as comma-separated PNGs (the flag once per file)")
        uses.append([open_control_image(path, "--prompt-references").convert("RGB") for path in paths])
    return uses


def _edit_call(model, images, prompts, strength=None, *, mask=None, posterior=None, references=(),
               own_references=None, seed=0, **options):
    """:func:`._chroma.edit_chroma`'s image_to_image call on :func:`diffkit.interop.glm_image_edit.image_to_image`:
    image i (in [-1, 1], back to 8-bit PIL as read) with ``references`` (or its ``own_references[i]``) after it, the
    condition images of its prompt, from ``seed + i``; each prompt's prior tokens from seed 0, as ``diffkit
    sample``'s. The arguments the folder does not take come from flags it refuses first (``edit_flags``), at their
    defaults."""
    import torch

    from ..interop.glm_image_edit import image_to_image
    from ..interop.qwen_image_edit import _pil_images
    return torch.cat([image_to_image(model, _pil_images(images[i:i + 1]) + list(
        references if own_references is None else own_references[i]), prompts[i], seed=seed + i, **options)
        for i in range(images.shape[0])])


class GlmImageFamily(Family):
    """A GLM-Image folder's: CFG s = 1.5 against the empty glyphs with the prior tokens dropped, 50 steps; each
    prompt's prior tokens drawn once by the AR model from seed 0 (``--seed`` seeds the DiT's noise); ``diffkit edit``:
    each image (and the ``--image-reference`` ones) the condition images of a new image of its size; no negative
    prompt, LoRA, textual inversion, IP-Adapter, mask or strength (refused in one line)."""

    kind, takes, edit_takes, adapters, lora, resizes = "GLM-Image", TAKES, EDIT_TAKES, False, False, True
    edit_flags = NO_ADAPTER_EDIT_FLAGS - {"mask", "strength", "posterior", "height", "width"} | {
        "image_reference", "prompt_references"}

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
        """``--image-reference``'s pictures (:func:`._qwen_image.reference_pictures`) or ``--prompt-references``'
        (per use), read before any weight."""
        from ..interop.glm_image import GLM_IMAGE_PIPELINE
        from ._qwen_image import reference_pictures
        if args.prompt_references is not None:
            return {"own_references": _prompt_references(args)}
        if args.image_reference is None:
            return {}
        return {"references": reference_pictures(args, GLM_IMAGE_PIPELINE, "GLM-Image", "")}

    @staticmethod
    def edit_batch_inputs(inputs: dict, count: int):
        """``--prompt-references``' pictures of the images start .. start + n - 1 (given once: every image's); one
        line for another count than 1 or the ``--images`` files'."""
        own = inputs.get("own_references")
        if own is None:
            return lambda start, n: inputs
        if len(own) not in (1, count):
            raise DiffkitError(f"--prompt-references is given {len(own)} times for {count} images; give it once "
                               f"(every image) or once per --images file ({count}, in the files' order)")
        own = own * count if len(own) == 1 else own
        return lambda start, n: {"own_references": own[start:start + n]}
