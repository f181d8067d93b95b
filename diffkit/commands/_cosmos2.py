"""``diffkit sample --checkpoint COSMOS2_FOLDER --prompt TEXT``: a Cosmos Predict2 text-to-image diffusers folder
(:mod:`diffkit.interop.cosmos2`) as ``Cosmos2TextToImagePipeline`` with any diffkit sampler: Chroma's command code
(:mod:`._chroma`) with :class:`Cosmos2Family`, dispatched from :func:`diffkit.commands.sample.sample_to_files`
(``diffkit edit``: one line, no Cosmos Predict2 image-to-image pipeline in diffusers 0.42.1; every other Cosmos
pipeline's folder: one line at loading)."""
from __future__ import annotations

from ._chroma import Family

TAKES = ("--prompt, --negative-prompt (default the pipeline's), --guidance-scale (--guidance-convention; the "
         "pipeline's guidance_scale g is the seed convention's w: g = 7 is diffusers' 8), --max-sequence-length, "
         "--height / --width (multiples of 16), --steps (>= 2 for the pipeline's loop) / --nfe, --sampler and its "
         "grid options")


class Cosmos2Family(Family):
    """A Cosmos Predict2 text-to-image folder's: sampling only, no LoRA, textual inversion or IP-Adapter (the
    pipeline has no loaders: refused in one line); CFG g = 7 against the pipeline's default negative prompt."""

    kind, takes, adapters, lora, edits = "Cosmos Predict2", TAKES, False, False, False
    no_edit = "Cosmos2TextToImagePipeline generates; diffusers 0.42.1 has no Cosmos Predict2 image-to-image pipeline"

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.cosmos2 import load_cosmos2
        return load_cosmos2(directory, device, progress=progress)

    @staticmethod
    def functions() -> tuple:
        from ..interop.cosmos2 import text_to_image
        return text_to_image, None
