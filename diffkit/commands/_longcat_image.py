"""``diffkit sample --checkpoint LONGCAT_FOLDER --prompt TEXT`` and ``diffkit edit --checkpoint LONGCAT_EDIT_FOLDER
--images PNG|DIR --prompt TEXT``: a LongCat-Image diffusers folder (:mod:`diffkit.interop.longcat_image`) as
``LongCatImagePipeline`` (``enable_prompt_rewrite=False``) / ``LongCatImageEditPipeline`` with any diffkit sampler:
Chroma's command code (:mod:`._chroma`) with :class:`LongCatImageFamily` / :class:`LongCatImageEditFamily`,
dispatched from :func:`diffkit.commands.sample.sample_to_files` and :func:`diffkit.commands.edit.run`."""
from __future__ import annotations

from ._chroma import NO_ADAPTER_EDIT_FLAGS, Family

TAKES = ("--prompt, --negative-prompt, --guidance-scale (--guidance-convention), --cfg-renorm-min / --no-cfg-renorm, "
         "--height / --width, --steps / "
         "--nfe, --sampler and its grid options (--flow-shift with another sampler than the pipeline's loop)")
EDIT_TAKES = ("--images, --prompt (the instruction), --negative-prompt, --guidance-scale (--guidance-convention), "
              "--max-area, --steps, --sampler and its grid options, --eta")


class LongCatImageFamily(Family):
    """A LongCat-Image folder's: no LoRA, textual inversion or IP-Adapter (refused in one line); CFG s = 4.5 against
    ``--negative-prompt`` (default "") renormalised as the pipeline's ``enable_cfg_renorm`` (min 0.0); no
    ``diffkit edit`` (diffusers has no img2img pipeline for it)."""

    kind, takes, edit_takes, adapters, lora, edits = "LongCat-Image", TAKES, EDIT_TAKES, False, False, False
    edit_flags = NO_ADAPTER_EDIT_FLAGS
    options = ("cfg_renorm_min", "cfg_renorm")  # --cfg-renorm-min, --no-cfg-renorm (._family_options)

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.longcat_image import load_longcat_image
        return load_longcat_image(directory, device, progress=progress)

    @staticmethod
    def functions() -> tuple:
        from ..interop.longcat_image import text_to_image
        return text_to_image, None


def _edit_call(model, images, prompts, strength=None, *, mask=None, posterior=None, max_sequence_length=None,
               ip_adapter=None, seed=0, **options):
    """:func:`._chroma.edit_chroma`'s image_to_image call on :func:`diffkit.interop.longcat_image.edit_image`, one
    image each (the pipeline's batch 1; image i from seed + i, as a batch draws it); the arguments an edit folder
    does not take come from flags it refuses first (``edit_flags``), at their defaults."""
    import torch

    from ..interop.longcat_image import edit_image
    return torch.cat([edit_image(model, images[i:i + 1], prompts[i], seed=seed + i, **options)
                      for i in range(images.shape[0])])


class LongCatImageEditFamily(LongCatImageFamily):
    """A LongCat-Image-Edit folder's (LongCatImageEditPipeline): ``diffkit edit`` only, each image resized to its
    aspect ratio at 1024^2 pixels (``--max-area``: another area), CFG without renormalisation."""

    kind, samples, edits, resizes = "LongCat-Image-Edit", False, True, True
    options = ()  # (its pipeline has no renormalisation)
    edit_flags = NO_ADAPTER_EDIT_FLAGS - {"posterior", "max_sequence_length", "height", "width", "mask",
                                          "strength"} | {"max_area"}

    @staticmethod
    def functions() -> tuple:
        from ..interop.longcat_image import text_to_image
        return text_to_image, _edit_call
