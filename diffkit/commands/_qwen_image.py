"""``diffkit sample --checkpoint QWEN_IMAGE_FOLDER --prompt TEXT`` and ``diffkit edit --checkpoint QWEN_IMAGE_FOLDER
--images PNG|DIR --prompt TEXT``: a Qwen-Image diffusers folder (:mod:`diffkit.interop.qwen_image`) as
``QwenImagePipeline`` / ``QwenImageImg2ImgPipeline`` / ``QwenImageInpaintPipeline`` with any diffkit sampler:
Chroma's command code (:mod:`._chroma`) with Qwen-Image's :class:`QwenImageFamily`, dispatched from
:func:`diffkit.commands.sample.sample_to_files` and :func:`diffkit.commands.edit.run`."""
from __future__ import annotations

from ._chroma import NO_ADAPTER_EDIT_FLAGS, Family

TAKES = ("--prompt, --negative-prompt (true CFG), --guidance-scale (--guidance-convention), "
         "--max-sequence-length, --height / --width, --lora, --steps / --nfe, --sampler and its grid options "
         "(--flow-shift with another sampler than the pipeline's loop)")
EDIT_TAKES = ("--images, --mask, --prompt, --negative-prompt (true CFG), --guidance-scale "
              "(--guidance-convention), --strength, --max-sequence-length, --posterior, --height / --width, "
              "--lora, --steps, --sampler and its grid options, --eta")


class QwenImageFamily(Family):
    """A Qwen-Image folder's: LoRA files (:mod:`diffkit.interop.qwen_image_lora`), no textual inversion or
    IP-Adapter (refused in one line); true CFG only with ``--negative-prompt``
    (:meth:`diffkit.interop.qwen_image.QwenImage.prompt_guidance`)."""

    kind, takes, edit_takes, adapters, lora = "Qwen-Image", TAKES, EDIT_TAKES, False, True
    edit_flags = NO_ADAPTER_EDIT_FLAGS | {"lora"}

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.qwen_image import load_qwen_image
        return load_qwen_image(directory, device, progress=progress, lora=lora)

    @staticmethod
    def functions() -> tuple:
        from ..interop.qwen_image import image_to_image, text_to_image
        return text_to_image, image_to_image
