"""``diffkit sample --checkpoint GLM_IMAGE_FOLDER --prompt TEXT``: a GLM-Image diffusers folder
(:mod:`diffkit.interop.glm_image`) as ``GlmImagePipeline`` with any diffkit sampler for its diffusion stage (the
prior tokens from the folder's AR model, diffusers' own ``generate_prior_tokens``): Chroma's command code
(:mod:`._chroma`) with :class:`GlmImageFamily` (``diffkit edit`` refuses it in one line: its image-to-image mode is
not driven)."""
from __future__ import annotations

from ._chroma import Family

TAKES = ("--prompt (its quoted texts: the glyphs), --guidance-scale (--guidance-convention), --max-sequence-length, "
         "--height / --width, --steps / --nfe, --sampler and its grid options (--flow-shift with another sampler "
         "than the pipeline's loop)")


class GlmImageFamily(Family):
    """A GLM-Image folder's: sampling only, CFG s = 1.5 against the empty glyphs with the prior tokens dropped, 50
    steps; each prompt's prior tokens drawn once by the AR model from seed 0 (``--seed`` seeds the DiT's noise);
    no negative prompt, LoRA, textual inversion or IP-Adapter (refused in one line)."""

    kind, takes, adapters, lora, edits = "GLM-Image", TAKES, False, False, False
    no_edit = "GlmImagePipeline's image-to-image mode (condition images through the DiT's KV cache) is not driven"

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
        from ..interop.glm_image import image_to_image, text_to_image
        return text_to_image, image_to_image
