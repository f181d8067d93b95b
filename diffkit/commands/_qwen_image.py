"""``diffkit sample --checkpoint QWEN_IMAGE_FOLDER --prompt TEXT`` and ``diffkit edit --checkpoint QWEN_IMAGE_FOLDER
--images PNG|DIR --prompt TEXT``: a Qwen-Image diffusers folder (:mod:`diffkit.interop.qwen_image`) as
``QwenImagePipeline`` / ``QwenImageImg2ImgPipeline`` / ``QwenImageInpaintPipeline`` with any diffkit sampler:
Chroma's command code (:mod:`._chroma`) with Qwen-Image's :class:`QwenImageFamily` (a Qwen-Image-Edit folder's
instruction edits: :class:`QwenImageEditFamily`), dispatched from
:func:`diffkit.commands.sample.sample_to_files` and :func:`diffkit.commands.edit.run`."""
from __future__ import annotations

from ..errors import DiffkitError
from ._chroma import NO_ADAPTER_EDIT_FLAGS, Family

TAKES = ("--prompt, --negative-prompt (true CFG), --guidance-scale (--guidance-convention), "
         "--max-sequence-length, --height / --width, --lora, --controlnet with --control-image(s), "
         "--controlnet-scale, --control-guidance-start / -end, --steps / --nfe, --sampler and its grid options "
         "(--flow-shift with another sampler than the pipeline's loop)")
EDIT_TAKES = ("--images, --mask, --prompt, --negative-prompt (true CFG), --guidance-scale "
              "(--guidance-convention), --strength, --max-sequence-length, --posterior, --height / --width, "
              "--lora, --controlnet (an inpainting ControlNet, with --mask) with --controlnet-scale and "
              "--control-guidance-start / -end, --steps, --sampler and its grid options, --eta")
CONTROL_FLAGS = {"controlnets", "controlnet_scales", "control_starts", "control_ends"}  # diffkit edit's dests
PLUS_PIPELINE = "QwenImageEditPlusPipeline"


class QwenImageFamily(Family):
    """A Qwen-Image folder's: LoRA files (:mod:`diffkit.interop.qwen_image_lora`), ControlNets in diffkit sample
    (:mod:`diffkit.interop.qwen_image_controlnet`), no textual inversion or IP-Adapter (refused in one line); true
    CFG only with ``--negative-prompt``
    (:meth:`diffkit.interop.qwen_image.QwenImage.prompt_guidance`)."""

    kind, takes, edit_takes, adapters, lora = "Qwen-Image", TAKES, EDIT_TAKES, False, True
    controlnet = control_from_noise = True  # QwenImageControlNetPipeline, its inpainting one from noise
    edit_flags = NO_ADAPTER_EDIT_FLAGS | {"lora"} | CONTROL_FLAGS

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.qwen_image import load_qwen_image
        return load_qwen_image(directory, device, progress=progress, lora=lora)

    @staticmethod
    def functions() -> tuple:
        from ..interop.qwen_image import image_to_image, text_to_image
        return text_to_image, image_to_image

    @staticmethod
    def control_options(controlnet, cond: dict) -> dict:
        if controlnet is None:
            return {}
        return {"controlnet": controlnet, "control_seed": cond["control_seeds"][0],
                "control_rows": cond.get("control_rows")}

    @staticmethod
    def edit_control(args, count: int, mask=None):
        """``diffkit edit --controlnet DIR --mask PNG``: an inpainting ControlNet whose control images are the
        ``--images`` (QwenImageControlNetInpaintPipeline, from noise); a
        :class:`~._controlnet.ControlRequest`, or one line for no mask, ``--control-image`` or ``--strength``."""
        from ._controlnet import ControlRequest
        if not getattr(args, "controlnets", None):
            return None
        why = "no --mask" if args.mask is None else "--control-image" if args.control_images else \
            f"--strength {args.strength}" if args.strength is not None else None
        if why is not None:
            raise DiffkitError(f"--controlnet with {why} on a Qwen-Image folder in diffkit edit: it runs "
                               f"QwenImageControlNetInpaintPipeline (an inpainting ControlNet, from noise; the "
                               f"--images are its control images), which takes --mask and no --control-image or "
                               f"--strength")
        args.control_images = [args.images]
        return ControlRequest.from_args(args, args.checkpoint, edited=count)


def _edit_call(model, images, prompts, strength=None, *, mask=None, posterior=None, max_sequence_length=None,
               ip_adapter=None, references=(), **options):
    """:func:`._chroma.edit_chroma`'s image_to_image call on :func:`diffkit.interop.qwen_image_edit.edit_image`; the
    arguments an Edit folder does not take come from flags it refuses first (``edit_flags``), at their defaults. A
    Plus folder's edits one image each (the pipeline's batch 1; image i from seed + i, as a batch draws it), seeing
    ``references`` (``--image-reference``'s PIL images) after it: the pipeline's ``image=[image i, *references]``."""
    import torch

    from ..interop.qwen_image_edit import _pil_images, edit_image
    options.update(mask=mask, strength=strength)  # a mask: QwenImageEditInpaintPipeline (a Plus folder: refused)
    if not model.plus:
        return edit_image(model, images, prompts, **options)
    seed = options.pop("seed")
    return torch.cat([edit_image(model, _pil_images(images[i:i + 1]) + list(references) if references else
                                 images[i:i + 1], prompts[i], seed=seed + i, **options)
                      for i in range(images.shape[0])])


def reference_pictures(args, plus: str = PLUS_PIPELINE, kind: str = "Qwen-Image-Edit-Plus",
                       models: str = " (Qwen-Image-Edit-2509 / 2511)", mode: str = "RGB") -> list:
    """``--image-reference``'s images (PIL, in ``mode``: RGB, or Qwen-Image 2.1's RGBA, :mod:`._qwen_image21`; in the
    flags' order) for a ``plus`` folder (a ``kind`` one: a Qwen-Image-Edit-Plus folder, or JoyImage Edit Plus's,
    :mod:`._joyimage`); on another folder of the kind, a folder or a file that is no image: one line, before any
    weight is read."""
    from pathlib import Path

    from ..interop.controlnet import open_control_image
    from ..interop.sd_xl import pipeline_class
    pipeline = pipeline_class(args.checkpoint)
    if pipeline != plus:
        raise DiffkitError(f"--image-reference does not apply to a {pipeline} folder ({args.checkpoint}): it adds "
                           f"pictures to a {plus} folder's{models} image list")
    pictures = []
    for path in args.image_reference:
        if Path(path).is_dir():
            raise DiffkitError(f"--image-reference {path} is a folder; a {kind} folder takes one PNG "
                               f"per --image-reference (repeat the flag for more pictures)")
        pictures.append(open_control_image(path, "--image-reference").convert(mode))
    return pictures


class QwenImageEditFamily(QwenImageFamily):
    """A Qwen-Image-Edit folder's (QwenImageEditPipeline / QwenImageEditPlusPipeline): ``diffkit edit`` only, each
    image resized to its aspect ratio at 1024^2 pixels (``--max-area``: another area;
    :func:`diffkit.interop.qwen_image_edit.edit_image`); ``--mask`` (and ``--strength``): QwenImageEditInpaintPipeline
    (not a Plus folder); no posterior, size or text length (the pipelines have none)."""

    kind, samples, resizes, controlnet = "Qwen-Image-Edit", False, True, False
    edit_takes = ("--images, --prompt (the instruction), --mask and --strength (inpainting), --image-reference "
                  "(Plus), --negative-prompt (true CFG), --guidance-scale "
                  "(--guidance-convention), --max-area, --lora, --steps, --sampler and its grid options, --eta")
    edit_flags = QwenImageFamily.edit_flags - {"posterior", "max_sequence_length", "height", "width"} - \
        CONTROL_FLAGS | {"max_area", "image_reference"}

    @staticmethod
    def edit_inputs(args) -> dict:
        """A Plus folder's ``--image-reference`` pictures (:func:`reference_pictures`), seen after each image."""
        return {} if args.image_reference is None else {"references": reference_pictures(args)}

    @staticmethod
    def functions() -> tuple:
        from ..interop.qwen_image import text_to_image
        return text_to_image, _edit_call
