"""``diffkit sample --checkpoint HUNYUAN_IMAGE_FOLDER --prompt TEXT``: a HunyuanImage 2.1 diffusers folder
(:mod:`diffkit.interop.hunyuan_image`) as ``HunyuanImagePipeline`` with any diffkit sampler (a MeanFlow transformer:
the pipeline's loop alone): Chroma's command code (:mod:`._chroma`) with :class:`HunyuanImageFamily`, dispatched from
:func:`diffkit.commands.sample.sample_to_files` (``diffkit edit`` refuses it in one line, as it refuses a
``HunyuanImageRefinerPipeline`` folder, which diffkit does not drive)."""
from __future__ import annotations

from ._chroma import Family

TAKES = ("--prompt, --negative-prompt, --guidance-scale (--guidance-convention; the guider's CFG scale, or a "
         "distilled transformer's embedded one), --height / --width, --steps / --nfe, --sampler and its grid options "
         "(--flow-shift with another sampler than the pipeline's loop; a MeanFlow transformer: the loop alone)")


class HunyuanImageFamily(Family):
    """A HunyuanImage folder's: sampling only, the folder's guiders (CFG, then APG) against ``--negative-prompt``
    (default ""), 50 steps; no LoRA, textual inversion or IP-Adapter (refused in one line)."""

    kind, takes, adapters, lora, edits = "HunyuanImage", TAKES, False, False, False

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.hunyuan_image import load_hunyuan_image
        return load_hunyuan_image(directory, device, progress=progress)

    @staticmethod
    def functions() -> tuple:
        from ..interop.hunyuan_image import image_to_image, text_to_image
        return text_to_image, image_to_image

    @classmethod
    def check_request(cls, directory, request, edit: bool = False) -> None:
        """The folder's JSON checks (a refiner folder: one line) before any weight is read."""
        from ..interop.hunyuan_image import check_hunyuan_image_folder
        check_hunyuan_image_folder(directory)


REFINER_EDIT_TAKES = ("--images, --prompt, --negative-prompt (with an enabled guider), --guidance-scale "
                      "(--guidance-convention; the embedded distilled scale, or an enabled guider's CFG scale), "
                      "--height / --width, --steps, --sampler and its grid options, --eta")
REFINER_EDIT_FLAGS = {  # diffkit edit's dests a refiner folder takes (the rest must stay at their defaults)
    "command", "func", "checkpoint", "images", "out", "prompts", "negative_prompt", "sampler", "steps", "spacing",
    "final", "eta", "guidance_scale", "guidance_convention", "posterior", "seed", "batch_size", "device", "progress",
    "height", "width"}


class HunyuanImageRefinerFamily(HunyuanImageFamily):
    """A ``HunyuanImageRefinerPipeline`` folder's: ``diffkit edit`` only (:func:`diffkit.interop.
    hunyuan_image_refiner.refine`: each image redrawn from noise beside its own latents, 4 steps, the embedded
    guidance 3.25); ``diffkit sample`` refuses it in one line."""

    kind, samples, edits = "HunyuanImage refiner", False, True
    edit_takes, edit_flags = REFINER_EDIT_TAKES, REFINER_EDIT_FLAGS

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.hunyuan_image_refiner import load_hunyuan_image_refiner
        return load_hunyuan_image_refiner(directory, device, progress=progress)

    @staticmethod
    def functions() -> tuple:
        from ..interop.hunyuan_image_refiner import refine
        return None, refine

    @classmethod
    def check_request(cls, directory, request, edit: bool = False) -> None:
        from ..interop.hunyuan_image_refiner import check_hunyuan_image_refiner_folder
        check_hunyuan_image_refiner_folder(directory)
