"""``diffkit sample --height H --width W``: the size of the images a diffusers folder draws (Stable Diffusion
1.x/2.x, SD-XL, SD3, FLUX.1), checked from the folder's JSON configs before anything loads.

The multiple each pipeline requires (its ``check_inputs``): Stable Diffusion / SD-XL 8, and the VAE factor f
(8 in real folders), so lcm(8, f); SD3 f x the transformer's ``patch_size`` (16); FLUX.1 2 f (16: latents are
packed in 2 x 2 patches). FluxPipeline floors other sizes to that multiple with a warning; diffkit refuses them
in one line instead, naming the multiple, so that the grid is always the size asked for."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from ..errors import DiffkitError, read_json_object


# the kinds check_image_size lets through
SAMPLE_SIZED = ("Stable Diffusion, SD-XL, Kolors, SD3, FLUX.1, FLUX.2, Chroma, Z-Image, Qwen-Image, PixArt, Sana, "
                "Lumina-Image 2.0, Lumina-Next, AuraFlow, HunyuanDiT, HiDream-I1, CogView4, DeepFloyd IF, "
                "Kandinsky 2.2, Kandinsky 3, Ovis-Image, latent-diffusion text-to-image, Bria 3.2 / FIBO / FIBO 2, "
                "LongCat-Image, OmniGen, ERNIE-Image, PRX, Krea 2, NucleusMoE-Image, Qwen-Image 2.1, HunyuanImage, "
                "GLM-Image, DreamLite, Cosmos Predict2, Ideogram 4")
EDIT_SIZED = ("Stable Diffusion, SD-XL, Kolors, SD3, FLUX.1, Chroma, Z-Image, Qwen-Image, OmniGen, "
              "HunyuanImage refiner, DreamLite")  # diffkit edit's


def vae_factor(directory) -> tuple:
    """(the folder's VAE config, its AutoencoderKL factor f = 2^(levels - 1))."""
    vae = read_json_object(Path(directory) / "vae" / "config.json", "VAE config")
    return vae, 2 ** (len(vae.get("block_out_channels", [0])) - 1)


def size_multiple(directory) -> tuple:
    """(multiple, what it is) that ``--height`` / ``--width`` must be for the diffusers folder ``directory``."""
    from ..interop.deepfloyd_if import is_deepfloyd_if_folder
    if is_deepfloyd_if_folder(directory):  # pixels: the UNet's downsamplings (.interop.deepfloyd_if)
        unet = read_json_object(Path(directory) / "unet" / "config.json", "unet config")
        f = 2 ** (len(unet.get("block_out_channels", [0])) - 1)
        return f, f"the UNet's {f}x downsampling"
    from ..interop.ldm import LDM_TEXT2IM, ldm_kind
    if ldm_kind(directory) == LDM_TEXT2IM:  # its latents of height // 8, width // 8 (.interop.ldm)
        return 8, "LDMTextToImagePipeline's latents of height // 8 x width // 8"
    from ..interop.kandinsky import is_kandinsky_folder, kandinsky_kind
    if is_kandinsky_folder(directory):  # latents of side ceil(H / f^2) f, decoded to f times that (.kandinsky)
        movq = read_json_object(Path(directory) / "movq" / "config.json", "movq config")
        f = 2 ** (len(movq.get("block_out_channels", [0])) - 1)
        return f * f, f"the MoVQ factor {f} squared; {kandinsky_kind(directory)} would round other sizes up"
    from ..interop.kandinsky3 import is_kandinsky3_folder
    if is_kandinsky3_folder(directory):  # latents of side ceil(H / 64) 8, whatever the MoVQ (.kandinsky3)
        return 64, "the pipeline's latent side ceil(H / 64) x 8; Kandinsky3Pipeline would round other sizes up"
    from ..interop.dreamlite import is_dreamlite_folder
    if is_dreamlite_folder(directory):  # AutoencoderTiny's f; the pipeline's image processor floors to 2 f
        vae = read_json_object(Path(directory) / "vae" / "config.json", "vae config")
        f = 2 ** (len(vae.get("encoder_block_out_channels", [0] * 4)) - 1)
        return 2 * f, f"the pipeline's 2 x the VAE factor {f}"
    from ..interop.prx_pixel import is_prx_pixel_folder
    if is_prx_pixel_folder(directory):  # PRXPixelPipeline.check_inputs: whole patches of pixels (no VAE)
        patch = int(read_json_object(Path(directory) / "transformer" / "config.json",
                                     "transformer config").get("patch_size", 2))
        return patch, f"the transformer's patch size {patch} (pixel space)"
    from ..interop.flux import is_flux_folder
    from ..interop.sd3 import is_sd3_folder
    vae, f = vae_factor(directory)
    if is_sd3_folder(directory):
        patch = int(read_json_object(Path(directory) / "transformer" / "config.json",
                                     "transformer config").get("patch_size", 2))
        return f * patch, f"the VAE factor {f} x the transformer's patch size {patch}"
    from ..interop.qwen_image import is_qwen_image_folder
    from ..interop.qwen_image21 import VAE_FACTOR, is_qwen_image21_folder
    if is_qwen_image21_folder(directory):  # its fixed vae_scale_factor 16, latents in 2 x 2 image slots
        return 2 * VAE_FACTOR, (f"the pipeline's VAE factor {VAE_FACTOR} x 2; QwenImage21Pipeline would floor other "
                                f"sizes")
    from ..interop.krea2 import is_krea2_folder
    from ..interop.nucleusmoe import is_nucleusmoe_folder
    # AutoencoderKLQwenImage: 2^len(temperal_..)
    if is_qwen_image_folder(directory) or is_krea2_folder(directory) or is_nucleusmoe_folder(directory):
        f = 2 ** len(vae.get("temperal_downsample", [False, True, True]))
        how = "Krea2Pipeline would round other sizes up" if is_krea2_folder(directory) else \
            "NucleusMoEImagePipeline would floor other sizes" if is_nucleusmoe_folder(directory) else \
            "QwenImagePipeline would floor other sizes"
        return 2 * f, f"the VAE factor {f} x the 2 x 2 packing; {how}"
    from ..interop.glm_image import is_glm_image_folder
    if is_glm_image_folder(directory):  # the AR model's d32 token grid, upsampled 2 x 2 to the DiT's patches
        patch = int(read_json_object(Path(directory) / "transformer" / "config.json",
                                     "transformer config").get("patch_size", 2))
        return 2 * patch * f, f"GLM-Image's prior-token grid: 2 x the patch size {patch} x the VAE factor {f}"
    from ..interop.hunyuan_image import is_hunyuan_image_folder
    if is_hunyuan_image_folder(directory):  # its own VAE's spatial_compression_ratio f; check_inputs' 2 f
        f = int(vae.get("spatial_compression_ratio", 32))
        return 2 * f, f"the pipeline's 2 x the VAE factor {f}"
    from ..interop.bria_fibo2 import is_bria_fibo2_folder
    if is_bria_fibo2_folder(directory):  # FLUX.2's VAE, the transformer's 2 x 2 patches (check_inputs' 2 f)
        return 2 * f, f"the VAE factor {f} x the transformer's 2 x 2 patches; BriaFibo2Pipeline refuses other sizes"
    from ..interop.cosmos2 import SIZE_MULTIPLE as COSMOS_MULTIPLE, is_cosmos_folder
    if is_cosmos_folder(directory):  # its check_inputs' 16 (latents H / 8 in 2 x 2 patches)
        return COSMOS_MULTIPLE, f"Cosmos2TextToImagePipeline's check_inputs: multiples of {COSMOS_MULTIPLE}"
    from ..interop.bria_fibo import VAE_SCALE_FACTOR as FIBO_FACTOR, is_bria_fibo_folder
    if is_bria_fibo_folder(directory):  # latents of H / 16, whatever the VAE (the pipeline's check_inputs)
        return FIBO_FACTOR, f"BriaFiboPipeline's fixed vae_scale_factor {FIBO_FACTOR}"
    from ..interop.bria import is_bria_folder
    from ..interop.chroma import is_chroma_folder
    from ..interop.flux2 import is_flux2_folder
    from ..interop.ovis_image import is_ovis_image_folder
    if is_flux_folder(directory) or is_chroma_folder(directory) or is_flux2_folder(directory) \
            or is_ovis_image_folder(directory) or is_bria_folder(directory):  # (BriaPipeline's vae_scale_factor is 2 f)
        return 2 * f, f"the VAE factor {f} x the 2 x 2 packing; FluxPipeline would floor other sizes"
    from ..interop.longcat_image import is_longcat_folder
    if is_longcat_folder(directory):  # FLUX.1's packing on FLUX.1's VAE
        return 2 * f, f"the VAE factor {f} x the 2 x 2 packing; LongCatImagePipeline would floor other sizes"
    from ..interop.z_image import is_z_image_folder
    if is_z_image_folder(directory):  # ZImagePipeline's check: vae_scale_factor * 2
        return 2 * f, f"the pipeline's 2 x the VAE factor {f}"
    from ..interop.omnigen import is_omnigen_folder
    if is_omnigen_folder(directory):  # its processor's one token per 16 x 16 pixels (f = 8, patch 2)
        return 2 * f, f"the pipeline's 2 x the VAE factor {f}"
    from ..interop.ernie_image import is_ernie_image_folder
    if is_ernie_image_folder(directory):  # ErnieImagePipeline's check: 2^levels = 2 f (FLUX.2's patchified latents)
        return 2 * f, f"the VAE factor {f} x the 2 x 2 patches; ErnieImagePipeline refuses other sizes"
    from ..interop.ideogram4 import is_ideogram4_folder
    if is_ideogram4_folder(directory):  # Ideogram4Pipeline's check: vae_scale_factor * patch_size (2 f)
        return 2 * f, f"the VAE factor {f} x the 2 x 2 patches; Ideogram4Pipeline refuses other sizes"
    from ..interop.pixart import is_pixart_folder
    from ..interop.prx import is_prx_folder
    from ..interop.sana import is_sana_folder
    if is_prx_folder(directory):  # PRXPipeline.check_inputs: whole patches of its VAE's factor (DC-AE's or KL's)
        if "encoder_block_out_channels" in vae:
            f = 2 ** (len(vae["encoder_block_out_channels"]) - 1)
        patch = int(read_json_object(Path(directory) / "transformer" / "config.json",
                                     "transformer config").get("patch_size", 2))
        return f * patch, f"the VAE factor {f} x the transformer's patch size {patch}"
    if is_sana_folder(directory):  # DC-AE's factor; SanaPipeline.check_inputs' 32
        f = 2 ** (len(vae.get("encoder_block_out_channels", [0])) - 1)
        patch = int(read_json_object(Path(directory) / "transformer" / "config.json",
                                     "transformer config").get("patch_size", 1))
        return math.lcm(32, f * patch), f"the pipeline's 32 and the DC-AE factor {f} x the patch size {patch}"
    from ..interop.lumina2 import is_lumina2_folder
    from ..interop.lumina_next import is_lumina_next_folder
    if is_lumina2_folder(directory) or is_lumina_next_folder(directory):  # their fixed factor 8, check_inputs' 16
        patch = int(read_json_object(Path(directory) / "transformer" / "config.json",
                                     "transformer config").get("patch_size", 2))
        return math.lcm(16, 8 * patch), f"the pipeline's 16 and its VAE factor 8 x the patch size {patch}"
    from ..interop.hunyuan_dit import is_hunyuan_dit_folder
    if is_hunyuan_dit_folder(directory):  # HunyuanDiTPipeline's 16 (it floors other sizes) and its factor 8 x patch
        patch = int(read_json_object(Path(directory) / "transformer" / "config.json",
                                     "transformer config").get("patch_size", 2))
        return math.lcm(16, 8 * patch), f"the pipeline's 16 and its VAE factor 8 x the patch size {patch}"
    from ..interop.hidream import is_hidream_folder
    if is_hidream_folder(directory):  # HiDreamImagePipeline's sides after its area rescaling (check_image_size)
        return 2 * f, f"the pipeline's 2 x the VAE factor {f}"
    from ..interop.auraflow import is_auraflow_folder
    if is_auraflow_folder(directory):  # AuraFlowPipeline.check_inputs' 2 f, and whole patches
        patch = int(read_json_object(Path(directory) / "transformer" / "config.json",
                                     "transformer config").get("patch_size", 2))
        return math.lcm(2 * f, f * patch), f"the pipeline's 2 x the VAE factor {f}, and {f} x the patch size {patch}"
    from ..interop.cogview3plus import is_cogview3plus_folder
    from ..interop.cogview4 import is_cogview4_folder
    if is_cogview4_folder(directory) or is_cogview3plus_folder(directory):  # check_inputs' 16 (8), whole patches
        patch = int(read_json_object(Path(directory) / "transformer" / "config.json",
                                     "transformer config").get("patch_size", 2))
        own = 16 if is_cogview4_folder(directory) else 8
        return math.lcm(own, f * patch), f"the pipeline's {own} and the VAE factor {f} x the patch size {patch}"
    if is_pixart_folder(directory):
        patch = int(read_json_object(Path(directory) / "transformer" / "config.json",
                                     "transformer config").get("patch_size", 2))
        return math.lcm(8, f * patch), f"the pipeline's 8 and the VAE factor {f} x the transformer's patch size {patch}"
    return math.lcm(8, f), f"the pipeline's 8 and the VAE factor {f}"


def size_limit(directory) -> Optional[tuple]:
    """(largest side in pixels, what it is) of an SD3 folder: its transformer's ``pos_embed_max_size`` patches x
    ``patch_size`` x the VAE factor (``PatchEmbed.cropped_pos_embed`` raises a ValueError past it); None for
    other folders (no such limit)."""
    from ..interop.sd3 import is_sd3_folder
    if not is_sd3_folder(directory):
        return None
    config = read_json_object(Path(directory) / "transformer" / "config.json", "transformer config")
    if config.get("pos_embed_max_size") is None:
        return None
    multiple, _ = size_multiple(directory)  # f x patch
    limit = int(config["pos_embed_max_size"]) * multiple
    return limit, f"the transformer's pos_embed_max_size {config['pos_embed_max_size']} patches of {multiple} pixels"


def check_size_limit(checkpoint, height: Optional[int], width: Optional[int]) -> None:
    """One line for a side past :func:`size_limit` (SD3)."""
    limit = size_limit(checkpoint)
    for name, value in (("--height", height), ("--width", width)):
        if limit is not None and value is not None and value > limit[0]:
            raise DiffkitError(f"{name} {value} is not allowed; give at most {limit[0]} ({limit[1]})")


def check_image_size(checkpoint, height: Optional[int], width: Optional[int], t2i_adapter: bool = False,
                     edit: bool = False) -> None:
    """One-line DiffkitError for ``--height`` / ``--width`` (either may be None: the folder's default) that the
    checkpoint cannot draw: not a diffusers folder (a diffkit checkpoint's size is fixed by training), with
    ``t2i_adapter`` (the control image sets the size: the adapter pipelines resize it with their own
    ``_preprocess_adapter_image``, not checked against the library's), or not a positive multiple of
    :func:`size_multiple`. ControlNets take the size: their images are resized to it as diffusers' ControlNet
    pipelines do (:func:`diffkit.interop.controlnet.prepare_control_image`, the same ``VaeImageProcessor``).
    ``edit``: ``diffkit edit``'s (its message names the kinds it edits, :data:`EDIT_SIZED`)."""
    if height is None and width is None:
        return
    from ..interop.flux import is_flux_folder
    from ..interop.sd3 import is_sd3_folder
    from ..interop.stable_diffusion import is_stable_diffusion_folder
    from ..interop.pixart import masked_text_folder
    from ..interop.chroma import is_chroma_folder
    from ..interop.qwen_image import is_qwen_image_folder
    from ..interop.flux2 import is_flux2_folder
    from ..interop.z_image import is_z_image_folder
    from ..interop.kandinsky import is_kandinsky_folder
    from ..interop.ovis_image import is_ovis_image_folder
    from ..interop.ldm import LDM_TEXT2IM, ldm_kind
    from ..interop.bria import is_bria_folder
    from ..interop.longcat_image import is_longcat_folder
    from ..interop.omnigen import is_omnigen_folder
    from ..interop.ernie_image import is_ernie_image_folder
    from ..interop.krea2 import is_krea2_folder
    from ..interop.nucleusmoe import is_nucleusmoe_folder
    from ..interop.qwen_image21 import is_qwen_image21_folder
    from ..interop.hunyuan_image import is_hunyuan_image_folder
    from ..interop.glm_image import is_glm_image_folder
    from ..interop.dreamlite import is_dreamlite_folder
    from ..interop.cosmos2 import is_cosmos_folder
    from ..interop.ideogram4 import is_ideogram4_folder
    flag = "--height" if height is not None else "--width"
    from ..interop.stable_cascade import is_stable_cascade_folder
    if is_stable_cascade_folder(checkpoint):  # the prior's ceil(H / resolution_multiple): any positive size
        return
    from ..interop.joyimage import is_joyimage_folder
    if is_joyimage_folder(checkpoint):  # its buckets set the size: refused by its family's flags (._joyimage)
        return
    if not (is_stable_diffusion_folder(checkpoint) or is_sd3_folder(checkpoint) or is_flux_folder(checkpoint)
            or masked_text_folder(checkpoint) or is_chroma_folder(checkpoint) or is_qwen_image_folder(checkpoint)
            or is_flux2_folder(checkpoint) or is_z_image_folder(checkpoint) or is_kandinsky_folder(checkpoint)
            or is_ovis_image_folder(checkpoint)
            or ldm_kind(checkpoint) == LDM_TEXT2IM or is_bria_folder(checkpoint) or is_longcat_folder(checkpoint)
            or is_omnigen_folder(checkpoint) or is_ernie_image_folder(checkpoint) or is_krea2_folder(checkpoint)
            or is_nucleusmoe_folder(checkpoint) or is_qwen_image21_folder(checkpoint)
            or is_hunyuan_image_folder(checkpoint) or is_glm_image_folder(checkpoint)
            or is_dreamlite_folder(checkpoint) or is_cosmos_folder(checkpoint) or is_ideogram4_folder(checkpoint)):
        raise DiffkitError(f"{flag} applies to diffusers folders ({EDIT_SIZED if edit else SAMPLE_SIZED}); "
                           f"{checkpoint} works at the size it was trained at")
    if t2i_adapter:
        raise DiffkitError(f"{flag} with --t2i-adapter: the control image sets the size; resize the control image "
                           f"instead")
    multiple, why = size_multiple(checkpoint)
    for name, value in (("--height", height), ("--width", width)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0
                                  or value % multiple):
            raise DiffkitError(f"{name} {value} is not allowed; give a positive multiple of {multiple} ({why})")
    check_size_limit(checkpoint, height, width)
    from ..interop.hidream import drawn_size, is_hidream_folder
    if is_hidream_folder(checkpoint):  # one area for every size: one line for a size it would change
        drawn_size(vae_factor(checkpoint)[1], height, width)


def add_edit_size_flags(parser) -> None:
    """``diffkit edit --height H --width W``: the size the images (and ``--mask``) are resized to first."""
    from ._common import positive_int
    parser.add_argument("--height", type=positive_int, metavar="H",
                        help="diffusers folders (SD, SD-XL, Kolors, SD3, FLUX.1, Chroma, Z-Image, Qwen-Image): "
                             "resize the images and --mask to height H first, as the pipelines' image / mask "
                             "processors do with height=H (Lanczos; "
                             "the mask then binarised; a multiple as diffkit sample's --height; default: the images' "
                             "own)")
    parser.add_argument("--width", type=positive_int, metavar="W", help="as --height, the width the images take")


def edit_size(checkpoint, height: Optional[int], width: Optional[int], first_image) -> tuple:
    """(height, width) the edit's images take: ``--height`` / ``--width`` (checked by :func:`check_image_size`),
    the other side the first image's own (a multiple too, else one line asking for the flag)."""
    from PIL import Image
    with Image.open(first_image) as image:
        own = {"--height": image.height, "--width": image.width}
    multiple, why = size_multiple(checkpoint)
    size = {"--height": height, "--width": width}
    for flag, value in size.items():
        if value is None:
            if own[flag] % multiple:
                raise DiffkitError(f"the images are {own['--width']}x{own['--height']}: their {flag[2:]} "
                                   f"{own[flag]} is no multiple of {multiple} ({why}); give {flag} too")
            size[flag] = own[flag]
    limit = size_limit(checkpoint)
    for flag, value in size.items():
        if limit is not None and value > limit[0]:
            if {"--height": height, "--width": width}[flag] is not None:
                raise DiffkitError(f"{flag} {value} is not allowed; give at most {limit[0]} ({limit[1]})")
            raise DiffkitError(f"the images are {own['--width']}x{own['--height']}: their {flag[2:]} {value} is past "
                               f"{limit[0]} ({limit[1]}); give --height / --width (at most {limit[0]}) to resize "
                               f"them")
    return size["--height"], size["--width"]


def pil_image(path, mode: str):
    """The PNG ``path`` as diffkit reads it (:func:`~diffkit.metrics.features.load_image_batch`: 16-bit grey scaled
    to 8 bits), back as the PIL image of 0..255 in ``mode`` "L" or "RGB" that diffusers' processors take."""
    import torch
    from PIL import Image

    from ..metrics.features import load_image_batch
    pixels = ((load_image_batch([path], mode)[0] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0)
    return Image.fromarray(pixels.numpy()[..., 0] if mode == "L" else pixels.numpy(), mode)


def resized_pngs(files, height: int, width: int, mask: bool = False, box: Optional[tuple] = None):
    """The PNGs ``files`` (1 x 3 or 1 x 1 each, stacked) resized to ``height`` x ``width`` as diffusers' edit
    pipelines prepare ``image`` / ``mask_image`` given height and width (``VaeImageProcessor.preprocess``: Lanczos
    on the PIL image, then [0, 1]): images RGB scaled to [-1, 1] (their ``image_processor``), masks grey and
    binarised at 0.5 (their ``mask_processor``: ``do_binarize``, ``do_convert_grayscale``). ``box`` (x1, y1, x2, y2):
    cropped to it first and resized with ``resize_mode="fill"``, as with ``padding_mask_crop``
    (:mod:`diffkit.interop.mask_crop`)."""
    import torch

    from ..interop import require
    processor = require("diffusers").image_processor.VaeImageProcessor(
        vae_scale_factor=1, do_normalize=not mask, do_binarize=mask, do_convert_grayscale=mask)
    crop = {} if box is None else {"crops_coords": box, "resize_mode": "fill"}
    return torch.cat([processor.preprocess(pil_image(path, "L" if mask else "RGB"), height=height, width=width,
                                           **crop).to(torch.float32) for path in files])
