"""``diffkit sample --checkpoint OVIS_IMAGE_FOLDER --prompt TEXT``: an Ovis-Image diffusers folder
(:mod:`diffkit.interop.ovis_image`) as ``OvisImagePipeline`` with any diffkit sampler: Chroma's command code
(:mod:`._chroma`) with :class:`OvisImageFamily`, dispatched from :func:`diffkit.commands.sample.sample_to_files`
(``diffkit edit`` refuses it in one line: diffusers 0.42.1 has no Ovis-Image img2img pipeline)."""
from __future__ import annotations

from ._chroma import Family

TAKES = ("--prompt, --negative-prompt, --guidance-scale (--guidance-convention), --max-sequence-length (at most "
         "256), --height / --width, --steps / --nfe, --sampler and its grid options (--flow-shift with another "
         "sampler than the pipeline's loop)")


class OvisImageFamily(Family):
    """An Ovis-Image folder's: sampling only, no LoRA, textual inversion or IP-Adapter (the pipeline has no loader
    for them: refused in one line)."""

    kind, takes, adapters, lora, edits = "Ovis-Image", TAKES, False, False, False

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.ovis_image import load_ovis_image
        return load_ovis_image(directory, device, progress=progress)

    @staticmethod
    def functions() -> tuple:
        from ..interop.ovis_image import image_to_image, text_to_image
        return text_to_image, image_to_image
