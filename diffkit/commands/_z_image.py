"""``diffkit sample --checkpoint Z_IMAGE_FOLDER --prompt TEXT`` and ``diffkit edit --checkpoint Z_IMAGE_FOLDER --images
PNG|DIR --prompt TEXT``: a Z-Image diffusers folder (:mod:`diffkit.interop.z_image`) as ``ZImagePipeline`` /
``ZImageImg2ImgPipeline`` / ``ZImageInpaintPipeline`` with any diffkit sampler: Chroma's command code
(:mod:`._chroma`) with Z-Image's :class:`ZImageFamily`, dispatched from :func:`diffkit.commands.sample.sample_to_files`
and :func:`diffkit.commands.edit.run`."""
from __future__ import annotations

from ._chroma import NO_ADAPTER_EDIT_FLAGS, Family

TAKES = ("--prompt, --negative-prompt, --guidance-scale (W, --guidance-convention), --cfg-trunc-ratio, "
         "--cfg-normalization, --max-sequence-length, --height / --width, --lora, --controlnet (--control-image, "
         "--controlnet-scale), --steps / --nfe, --sampler and its grid options (--flow-shift with another sampler "
         "than the pipeline's loop)")
EDIT_TAKES = ("--images, --mask, --prompt, --negative-prompt, --guidance-scale (W, --guidance-convention), "
              "--cfg-trunc-ratio, --cfg-normalization, --strength, --max-sequence-length, --posterior, --height / "
              "--width, --lora, --controlnet with --mask (--control-image, --controlnet-scale), --steps, --sampler and "
              "its grid options, --eta")


class ZImageFamily(Family):
    """A Z-Image folder's: LoRA files (``ZImagePipeline.load_lora_weights``, :mod:`diffkit.interop.z_image_lora`),
    no textual inversion or IP-Adapter (refused in one line), the pipelines' ``cfg_truncation``
    (``--cfg-trunc-ratio``) and ``cfg_normalization`` (``--cfg-normalization K``); ``diffkit sample --controlnet``:
    one ``ZImageControlNetModel`` as ``ZImageControlNetPipeline`` (:mod:`diffkit.interop.z_image_controlnet`)."""

    kind, takes, edit_takes, adapters, lora, controlnet = "Z-Image", TAKES, EDIT_TAKES, False, True, True
    edit_flags = NO_ADAPTER_EDIT_FLAGS | {"cfg_trunc_ratio", "cfg_norm_cap", "lora", "controlnets", "control_images",
                                          "controlnet_scales", "control_starts", "control_ends", "guess_mode"}

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.z_image import load_z_image
        return load_z_image(directory, device, progress=progress, lora=lora)

    @staticmethod
    def check_control(control, mask=False, strength=None) -> None:
        """One line, before any weight is read, for ControlNet flags ZImageControlNetPipeline (``diffkit edit``:
        ZImageControlNetInpaintPipeline, which needs ``--mask``) does not take."""
        from ..interop.z_image_controlnet import check_inpaint_options, check_z_image_control_options
        check_z_image_control_options(len(control.folders), control.starts, control.ends, control.guess_mode)
        if mask is not False:  # diffkit edit's
            check_inpaint_options(mask is not None, strength, "--mask", "--strength")

    @staticmethod
    def control_options(controlnet, cond: dict) -> dict:
        if controlnet is None:
            return {}
        return {"controlnets": controlnet, **({"control_rows": cond["control_rows"]} if "control_rows" in cond else {})}

    @staticmethod
    def edit_control_options(controlnet, start: int, n: int) -> dict:  # ZImageControlNetInpaintPipeline's
        return {"controlnets": controlnet,
                "control_rows": list(range(start, start + n)) if controlnet.per_prompt > 1 else None}

    @staticmethod
    def functions() -> tuple:
        from ..interop.z_image import image_to_image, text_to_image
        return text_to_image, image_to_image

    @staticmethod
    def guide(request) -> dict:
        """``cfg_truncation`` / ``cfg_normalization`` of ``--cfg-trunc-ratio`` / ``--cfg-normalization`` (given)."""
        out = {}
        if getattr(request, "cfg_trunc_ratio", None) is not None:
            out["cfg_truncation"] = request.cfg_trunc_ratio
        if getattr(request, "cfg_norm_cap", None) is not None:
            out["cfg_normalization"] = request.cfg_norm_cap
        return out


OMNI_TAKES = ("--prompt, --negative-prompt, --reference-image (repeatable), --guidance-scale (W, "
              "--guidance-convention), --cfg-trunc-ratio, --cfg-normalization, --max-sequence-length, --height / --width, --steps / --nfe, "
              "--sampler and its grid options (--flow-shift with another sampler than the pipeline's loop)")


class ZImageOmniFamily(ZImageFamily):
    """A Z-Image Omni folder's (``ZImageOmniPipeline``, :mod:`diffkit.interop.z_image_omni`): Z-Image's guidance
    options and ``--reference-image`` files as its condition images (the same for every sample; the size defaults
    to the last one's processed size); no LoRA, ControlNet or ``diffkit edit`` (diffusers 0.42.1 has no Omni
    img2img / inpainting pipeline)."""

    kind, takes, lora, controlnet, edits = "Z-Image Omni", OMNI_TAKES, False, False, False

    @staticmethod
    def reference_options(model, files, height, width) -> tuple:
        """({"references": ...}, height, width) of the condition images (:func:`.z_image_omni.omni_references`)."""
        if not files:
            return {}, height, width
        from ..interop.z_image_omni import omni_references
        references, size = omni_references(model, files, height, width)
        height, width = size[0] if height is None else height, size[1] if width is None else width
        return {"references": references}, height, width
