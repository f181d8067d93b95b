"""diffusers' ``padding_mask_crop`` for inpainting (``diffkit edit --mask M --padding-mask-crop N``), one module for
every inpainting pipeline that offers it (StableDiffusion(XL)InpaintPipeline with 4- or 9-channel UNets,
StableDiffusion3InpaintPipeline, FluxInpaintPipeline, Flux2KleinInpaintPipeline (the box at the image's own size)
and StableDiffusion(XL)ControlNetInpaintPipeline, whose control images are cropped with the same box and resized
with the same mode: :func:`.controlnet.prepare_control_image`; diffusers 0.42.1):

1. :func:`crop_region` is ``VaeImageProcessor.get_crop_region(mask, width, height, pad=N)``: the bounding box of the
   mask's non-zero pixels, N pixels of margin on each side (clipped to the image), then grown about its centre
   along one side to the processing size's aspect ratio ``width / height`` (shifted back inside the image, clipped
   where it cannot fit);
2. :meth:`MaskCrop.inputs`: image and mask cropped to that box and resized to height x width with
   ``resize_mode="fill"`` (aspect kept, Lanczos, the rest filled by stretching the edge rows / columns), the mask
   binarised, as the pipelines' ``image_processor`` / ``mask_processor.preprocess(..., crops_coords=box,
   resize_mode="fill")`` (:func:`diffkit.commands._image_size.resized_pngs`: the same processor);
3. the crop is inpainted as any other image, and :meth:`MaskCrop.overlaid` pastes the 8-bit result back as
   ``VaeImageProcessor.apply_overlay(mask, image, result, box)``: resized into the box (``resize_mode="crop"``)
   and under the original image, which covers it where the (unbinarised) mask is below 255, alpha 255 - mask.

The output keeps the original image's size; outside the box it is the original image, bit for bit."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import DiffkitError


def crop_region(mask: np.ndarray, width: int, height: int, pad: int = 0, name: str = "the mask") -> tuple:
    """(x1, y1, x2, y2) of ``VaeImageProcessor.get_crop_region``: the box of ``mask``'s (H, W) non-zero pixels
    widened by ``pad`` (clipped to the mask), then grown to the aspect ratio ``width / height`` of the processing
    size: the side that is too short gains int(desired - side) pixels, half (rounded down) before, and the box is
    shifted back inside the mask (and clipped if it is still larger). A mask without a non-zero pixel: a one-line
    DiffkitError naming it as ``name`` (diffusers returns a reversed or empty box there)."""
    nonzero = np.asarray(mask) != 0
    rows, cols = np.flatnonzero(nonzero.any(1)), np.flatnonzero(nonzero.any(0))
    if cols.size == 0:
        raise DiffkitError(f"{name} has no non-zero pixel: padding_mask_crop crops around the white (repainted) "
                           f"region; give a mask with white pixels")
    h, w = nonzero.shape
    x1, y1 = max(int(cols[0]) - pad, 0), max(int(rows[0]) - pad, 0)
    x2, y2 = min(int(cols[-1]) + 1 + pad, w), min(int(rows[-1]) + 1 + pad, h)
    ratio_processing = width / height  # the same float operations as diffusers', so int() truncates alike
    if (x2 - x1) / (y2 - y1) > ratio_processing:
        y1, y2 = _grown(y1, y2, int((x2 - x1) / ratio_processing - (y2 - y1)), h)
    else:
        x1, x2 = _grown(x1, x2, int((y2 - y1) * ratio_processing - (x2 - x1)), w)
    return x1, y1, x2, y2


def _grown(low: int, high: int, extra: int, size: int) -> tuple:
    """[low, high) grown by ``extra`` (half before), shifted back into [0, size), clipped to it."""
    low, high = low - extra // 2, high + extra - extra // 2
    if high > size:
        low, high = low - (high - size), size
    if low < 0:
        low, high = 0, high - low
    return low, min(high, size)


@dataclass
class MaskCrop:
    """``padding_mask_crop``'s box of one mask at one processing size (see the module)."""
    mask_file: Path
    mask: object  # the --mask as a PIL "L" image (the overlay's alpha, unbinarised)
    box: tuple  # (x1, y1, x2, y2), from crop_region
    height: int
    width: int

    @classmethod
    def of(cls, mask_file, height: int, width: int, pad: int) -> "MaskCrop":
        """The crop of ``mask_file`` (a grey PNG, read as diffkit reads masks) for a height x width edit."""
        from ..commands._image_size import pil_image
        mask = pil_image(mask_file, "L")
        box = crop_region(np.asarray(mask), width, height, pad, name=f"--mask {str(mask_file)!r}")
        return cls(Path(mask_file), mask, box, height, width)

    def inputs(self, files) -> tuple:
        """(images (B, 3, height, width) in [-1, 1], mask (1, 1, height, width) binarised): the ``files`` and the
        mask cropped to the box and resized with ``resize_mode="fill"``, as the pipelines prepare them."""
        from ..commands._image_size import resized_pngs
        size = (self.height, self.width)
        return (resized_pngs(files, *size, box=self.box),
                resized_pngs([self.mask_file], *size, mask=True, box=self.box))

    def overlaid(self, edited, files, processor=None):
        """``edited`` (B, 3, height, width) in [-1, 1], the inpainted crops of ``files``, at 8 bits (as the
        pipelines' ``output_type="pil"``) pasted into the original images by ``apply_overlay``: (B, 3, H0, W0)
        in [-1, 1] of the originals' size. ``processor``: the pipeline's image processor where it is not a
        ``VaeImageProcessor()`` (Flux2KleinInpaintPipeline's ``Flux2ImageProcessor``, whose ``resize_mode="crop"``
        centre-crops the output to the box's size without resizing it)."""
        import torch
        from PIL import Image

        from ..commands._image_size import pil_image
        from ..images import to_uint8
        from . import require
        processor = processor or require("diffusers").image_processor.VaeImageProcessor()  # Lanczos, as theirs
        out = []
        for crop, path in zip(to_uint8(edited), files):
            pasted = processor.apply_overlay(self.mask, pil_image(path, "RGB"), Image.fromarray(crop), self.box)
            out.append(torch.from_numpy(np.array(pasted)).permute(2, 0, 1))
        return torch.stack(out).float() / 127.5 - 1.0


def mask_crop(args) -> Optional[MaskCrop]:
    """``diffkit edit``'s :class:`MaskCrop` (None without ``--padding-mask-crop``): the box of ``--mask`` at the
    edit's size (``--height`` / ``--width``, else the images' own), the mask of the images' size."""
    if args.padding_mask_crop is None:
        return None
    from ..commands._image_size import edit_size
    from ..commands.edit import image_files, mask_file, read_mask, read_pngs
    from ..metrics.features import _check_same_size
    files = image_files(args.images)
    _check_same_size(files)
    read_mask(args.mask, read_pngs(files[0], "RGB")[0])  # the overlay pastes with it: the images' size
    size = edit_size(args.checkpoint, args.height, args.width, files[0])
    return MaskCrop.of(mask_file(args.mask), *size, args.padding_mask_crop)


def overlaid_edits(args, files, edited, processor=None):
    """``edited`` as :meth:`MaskCrop.overlaid` pastes it back with ``--padding-mask-crop`` (with ``processor``);
    else unchanged."""
    crop = mask_crop(args)
    return edited if crop is None else crop.overlaid(edited, files, processor)


def check_mask_crop(args) -> None:
    """One line, before anything loads, for ``--padding-mask-crop`` where diffusers has no ``padding_mask_crop``
    or diffkit does not offer it: without ``--mask``, off the SD / SD-XL / SD3 / FLUX.1 folders, on FLUX.1 Fill,
    Depth / Canny and Kontext folders and Chroma folders (diffusers 0.42.1's ChromaInpaintPipeline, as
    FluxKontextInpaintPipeline, returns the inpainted crop without pasting it back), with ``--controlnet`` on SD3 /
    FLUX.1 folders (SD / SD-XL ControlNets take the crop: their control images cropped and resized alike, as
    StableDiffusion(XL)ControlNetInpaintPipeline's),
    with ``--refiner``, with ``--pag-scale`` on SD 1.x / 2.x
    (StableDiffusionPAGInpaintPipeline passes ``output_type=None`` to its ``check_inputs``, which then raises)."""
    value = getattr(args, "padding_mask_crop", None)
    if value is None:
        return
    from .flux import is_flux_folder
    from .flux_channels import folder_variant
    from .flux_kontext import is_kontext_folder
    from .sd3 import is_sd3_folder
    from .stable_diffusion import is_stable_diffusion_folder
    flag = f"--padding-mask-crop {value}"
    if args.mask is None or args.images is None:
        raise DiffkitError(f"{flag} (crop around the mask, inpaint, paste back) goes with --images and --mask; give "
                           f"--mask PNG (white = repaint)")
    folder = args.checkpoint
    if is_kontext_folder(folder):
        raise DiffkitError(f"{flag} is not offered for a FLUX.1 Kontext folder ({folder}): "
                           f"FluxKontextInpaintPipeline crops but pastes nothing back; crop the images instead")
    from .chroma import is_chroma_folder
    if is_chroma_folder(folder):
        raise DiffkitError(f"{flag} is not offered for a Chroma folder ({folder}): ChromaInpaintPipeline crops "
                           f"but pastes nothing back; crop the images instead")
    if is_flux_folder(folder) and folder_variant(folder) is not None:
        raise DiffkitError(f"{flag} does not apply to {folder} ({folder_variant(folder)}: "
                           f"FluxFillPipeline / FluxControlInpaintPipeline have no padding_mask_crop); it goes with "
                           f"FLUX.1 dev / schnell folders")
    from .flux2 import is_flux2_folder  # FLUX.2 Klein (Flux2KleinInpaintPipeline): its folder kind checked there
    if not (is_stable_diffusion_folder(folder) or is_sd3_folder(folder) or is_flux_folder(folder)
            or is_flux2_folder(folder)):
        raise DiffkitError(f"{flag} applies to diffusers folders (Stable Diffusion, SD-XL, SD3, FLUX.1; their "
                           f"inpainting pipelines' padding_mask_crop, and FLUX.2 Klein's); {folder} is not one")
    if args.controlnets and not is_stable_diffusion_folder(folder):
        raise DiffkitError(f"{flag} does not go with --controlnet on an SD3 / FLUX.1 folder (diffusers 0.42.1: "
                           f"StableDiffusion3ControlNetInpaintingPipeline has no padding_mask_crop, "
                           f"FluxControlNetInpaintPipeline leaves the control image uncropped and pastes nothing "
                           f"back); drop one")
    if getattr(args, "refiner", None):
        raise DiffkitError(f"{flag} does not go with --refiner (not offered: the refiner's latents would need the "
                           f"crop too); drop one")
    from .sd_xl import is_sd_xl_folder
    if getattr(args, "pag_scale", None) and is_stable_diffusion_folder(folder) and not is_sd_xl_folder(folder):
        raise DiffkitError(f"{flag} does not go with --pag-scale on an SD 1.x / 2.x folder: diffusers 0.42.1's "
                           f"StableDiffusionPAGInpaintPipeline refuses padding_mask_crop (SD-XL's takes it); drop one")
