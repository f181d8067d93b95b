"""``diffkit edit``: SDEdit img2img, inpainting with ``--mask``, or latent interpolation with
``--interpolate``, of PNG images with any fixed-step sampler (docs/editing.md).

``--images`` is one PNG or a folder of PNGs of the model's size (grey or RGB, converted to the
model's channels). Without ``--mask`` each image is noised to the strength's time and denoised
(``diffkit.img2img``; ``--strength`` default 0.8, diffusers' meaning); with ``--mask M.png`` (a
grey PNG of the images' size: white = repaint, black = keep) the white region is repainted
(``diffkit.inpaint``; ``--strength`` default 1; ``--jump-n-sample R`` with ``--sampler ddpm``:
RePaint's resampling). The results go to ``--out`` as
``edit_00000.png``, ... in the order of the input files; output i depends only on ``--seed`` + i.
With ``--interpolate K`` the images are taken in pairs (1st with 2nd, 3rd with 4th, ...) and
``--out``/interpolation.png shows each pair's row of K images at weights 0, 1/(K-1), ..., 1
(``diffkit.interpolate``: ``--method ddpm``, DDPM Sec. 4.4 at ``--t``, default T/2 - 1; or ``ddim``,
DDIM Sec. 5.3 on ``--steps``); pair p depends only on ``--seed`` + p.

A latent checkpoint (its autoencoder inside) or a Stable Diffusion folder (``--checkpoint SD_FOLDER``)
is edited in its latent space, as diffusers' StableDiffusionImg2ImgPipeline and (4-channel UNet)
StableDiffusionInpaintPipeline: the images are encoded (z = s E(x); ``--posterior mean|sample``), the
latents edited as above (the mask nearest-downsampled to the latent size; inpainting at strength 1
from pure noise, as diffusers: ``inpaint``'s ``start="noise"``), and decoded
(``diffkit.latent_editing``; ``--paste-known``: the kept pixels pasted back); a folder with a 9-channel
inpainting UNet takes ``--mask`` only, as StableDiffusionInpaintPipeline with it (the mask and the masked
image's latents are the UNet's input; ``diffkit.interop.sd_inpaint``); an SD 2 depth-to-image folder (a 5-channel
UNet) edits as StableDiffusionDepth2ImgPipeline, its depth ``--control-image`` or its own DPT's (``._sd_depth``,
``diffkit.interop.sd_depth``). An SD-XL folder (4-channel base
UNet, or 9-channel inpainting UNet with --mask) is edited the same way, as StableDiffusionXLImg2ImgPipeline /
StableDiffusionXLInpaintPipeline (time ids of the images' size; ``diffkit.interop.sd_xl``); with ``--refiner FOLDER
[--denoising-end F]`` the base edits until F and an SD-XL refiner the rest from its latents, as those pipelines with
denoising_end / denoising_start (``diffkit.commands._refiner``). An LCMScheduler or
TCDScheduler folder, or ``--scheduler lcm|tcd`` (an LCM- / TCD-LoRA in ``--lora``), is edited as those pipelines
with that scheduler (``consistency`` / ``tcd`` in 4 steps, ``--gamma``), an SD 1.x LCM whose UNet takes w as
LatentConsistencyModelImg2ImgPipeline (``diffkit.interop.lcm_edit``). An SD3 folder is edited as
StableDiffusion3Img2ImgPipeline / (with ``--mask``) StableDiffusion3InpaintPipeline (strength 0.6 by default;
``diffkit.interop.sd3``, ``--prompt-3``, ``--lora``), a FLUX.1 folder as FluxImg2ImgPipeline (strength 0.6,
the embedded guidance 7.0; ``diffkit.interop.flux``, ``--prompt-2``, ``--lora``, ``--textual-inversion``; with
``--mask`` FluxInpaintPipeline;
a FLUX.1 Fill folder takes ``--mask`` only, as FluxFillPipeline, strength 1; a FLUX.1 Depth / Canny folder with
``--control-image``: FluxControlImg2ImgPipeline / FluxControlInpaintPipeline), a FLUX.1 Kontext folder as
FluxKontextPipeline (the image in context, no strength; ``--max-area``, ``--no-auto-resize``; with ``--mask``
FluxKontextInpaintPipeline; ``diffkit.interop.flux_kontext``), a VisualCloze folder generates each ``--query``'s
targets from the ``--example`` rows and ``--task-prompt`` as VisualClozeGenerationPipeline (no ``--images``;
``--strength``, ``--height``, ``--width``: VisualClozePipeline's upsampling stage; ``diffkit.interop.visualcloze``,
``._visualcloze``); on every FLUX.1 folder ``--redux DIR --redux-image
PNG`` makes FLUX.1 Redux's embeddings the prompt (``._flux_redux``). A Chroma folder is edited as
ChromaImg2ImgPipeline (strength 0.9) / (with ``--mask``) ChromaInpaintPipeline (strength 0.6;
``diffkit.interop.chroma``, ``._chroma``); a Qwen-Image folder as QwenImageImg2ImgPipeline / QwenImageInpaintPipeline
(strength 0.6; ``diffkit.interop.qwen_image``, the same path); a FLUX.2 Klein folder takes ``--mask`` only, as
Flux2KleinInpaintPipeline (strength 0.8, CFG 8.0, ``--image-reference PNG`` in context;
``diffkit.interop.flux2_inpaint``, ``._flux2``); a Qwen-Image-Edit folder as QwenImageEditPipeline
(the instruction's prompt sees the image, its latents beside the noisy ones, the size of its aspect ratio at 1024^2 or
``--max-area``; a Plus folder, 2511's too, edits each image alone, seeing the repeatable ``--image-reference`` PNGs
after it as Pictures 2, 3, ...; ``diffkit.interop.qwen_image_edit``); a Qwen-Image-Layered folder decomposes each
image into ``--layers N`` RGBA layers as QwenImageLayeredPipeline (``edit_{i}_layer_{k}.png``;
``diffkit.interop.qwen_image_layered``, ``._qwen_image_layered``); a ChronoEdit folder as ChronoEditPipeline
(the image the first frame of a short video, the edit its last frame, written as the PNG;
``--temporal-reasoning-steps N``, ``--temporal-reasoning-frames N``; ``diffkit.interop.chronoedit``,
``._chronoedit``); a JoyImage Edit folder as JoyImageEditPipeline (each image alone at its bucket size, its
Qwen3-VL prompt seeing it; a Plus folder seeing the repeatable
``--image-reference`` PNGs after it; ``diffkit.interop.joyimage``, ``._joyimage``); a Qwen-Image 2.1 folder as
QwenImage21Pipeline with ``image=`` (each image, read as RGBA, with the repeatable ``--image-reference`` PNGs after
it; ``diffkit.interop.qwen_image21``, ``._qwen_image21``); a GLM-Image folder as
GlmImagePipeline's image-to-image mode (from noise at each image's size, the image and the repeatable
``--image-reference`` PNGs after it the condition images its DiT reads through the KV cache, their prior tokens from
the AR model; ``diffkit.interop.glm_image_edit``, ``._glm_image``); a HunyuanImage refiner
folder as HunyuanImageRefinerPipeline (from noise, the image's folded latents beside the noisy ones, 4 steps, no
strength or mask; ``diffkit.interop.hunyuan_image_refiner``, ``._hunyuan_image``). A Sana Sprint folder is
edited as SanaSprintImg2ImgPipeline (strength 0.6, 2 consistency steps on the SCM thetas;
``diffkit.interop.sana_sprint``, ``._pixart.edit_sana_sprint``). A Kandinsky 5 image-to-image folder is edited as
Kandinsky5I2IPipeline (from pure noise: the prompt sees the image, its latents are the transformer's extra channels;
``diffkit.interop.kandinsky5_edit``, ``._kandinsky5``). A DreamLite (Mobile) folder is edited as the pipeline with
``image=`` (from pure noise: the prompt sees the image at 512^2, its latents beside the noisy ones along the width,
three-way guidance with ``--image-guidance-scale``; ``diffkit.interop.dreamlite``, ``._dreamlite``). A DeepFloyd IF
stage-I folder is edited as
IFImg2ImgPipeline / IFInpaintingPipeline, a stage-II one with ``--control-image`` (the stage-I images) as
IFImg2ImgSuperResolutionPipeline / IFInpaintingSuperResolutionPipeline (pixels; ``diffkit.interop.deepfloyd_if_edit``,
``._deepfloyd_if``). With ``--mask``, ``--padding-mask-crop N`` inpaints
the mask's box and pastes it back as the SD / SD-XL / SD3 / FLUX.1 inpainting pipelines' ``padding_mask_crop``
(``diffkit.interop.mask_crop``).
A Stable Diffusion / SD-XL folder whose UNet takes 8 channels (InstructPix2Pix) is edited as
StableDiffusion(XL)InstructPix2PixPipeline: from pure noise, the images' latents in every UNet call,
``--image-guidance-scale`` s_I beside the text's ``--guidance-scale`` (no ``--strength`` or ``--mask``;
``diffkit.interop.sd_instruct_pix2pix``). A text-conditional
checkpoint or folder takes ``--prompt TEXT`` (once for every image, or once per image in the files'
order) and ``--guidance-scale`` (classifier-free guidance with the empty prompt as null). On a diffusers folder
``--height`` / ``--width`` resize the images and the mask first, as the pipelines' height / width (:mod:`._image_size`).

With ``--series FILE.csv|.npy`` (instead of ``--images``) a time-series checkpoint forecasts the next
``--horizon H`` rows after the file's rows, or, without ``--horizon``, imputes its empty / NaN cells
(``diffkit.forecast`` / ``diffkit.impute``; a horizon or a file beyond one window goes window by window,
``--chunk K`` new rows each; ``--reconstruction-weight W``: reconstruction guidance,
default 1 with ``--series`` and ``--sampler`` default ddpm; ``--jump-n-sample R``: RePaint), writing
``--num`` samples to ``--out`` (.csv or .npy) in the file's units; see :mod:`diffkit.commands.edit_series`.
"""
from __future__ import annotations

from pathlib import Path

from .sample import add_guidance_convention_flag, add_rescale_interval_flags
from ._controlnet import ControlRequest, add_controlnet_flags
from ._ip_adapter import IPAdapterRequest, add_ip_adapter_flags
from ._refiner import add_edit_refiner_flags, edit_refiner_options, edit_refiner_request
from ._common import (add_flow_shift_flag, add_lora_flags, add_network_flags, add_progress_flag, add_solver_flags,
                      add_textual_inversion_flag, batch_size_or_auto, check_flow_shift, check_lora_flags,
                      check_writable_dir, eta_value, int_in, MAX_COUNT, missing_dirs, non_negative_float, path_arg,
                      positive_int, removed_if_empty_on_failure, seed_int, tolerance_options)
from ._common import add_freeu_flag, add_stochasticity_flags, check_freeu_checkpoint
from ._sd_prompts import add_prompt_encoding_flags
from ._sd_pag import add_edit_pag_flags, check_edit_pag_flags, edit_pag
from ._image_size import add_edit_size_flags
from ._flux_kontext import add_kontext_flags, check_kontext_flags
from ._instruct_pix2pix import add_image_guidance_flag, instruct_pix2pix_edit
from ._flux_redux import ReduxRequest, add_redux_flags


def strength_value(text: str) -> float:
    import argparse
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is out of range; allowed: a number in (0, 1]")
    return value


def register(sub) -> None:
    p = sub.add_parser("edit", help="img2img (SDEdit), inpainting or interpolation of PNG images; forecast / impute "
                                    "a series (--series)", description=__doc__)
    p.add_argument("--checkpoint", type=path_arg,
                   required=True, help="a .safetensors checkpoint, a run's checkpoint folder or a diffusers "
                                       "folder (SD, SD-XL, SD3, FLUX.1, Chroma, Qwen-Image(-Edit); docs/interop.md), "
                                       "or an original-format SD 1.x / 2.x, SD-XL, SD3 or FLUX.1 single file "
                                       "(.safetensors) with --config FOLDER")
    p.add_argument("--config", type=path_arg, metavar="FOLDER",
                   help="with --checkpoint MODEL.safetensors (an SD / SD-XL / SD3 / FLUX.1 single file): the local "
                        "diffusers folder of its model (JSON files, tokenizers, scheduler); the file is converted "
                        "into a temporary folder for this command (docs/interop.md, single-file checkpoints)")
    p.add_argument("--images", type=path_arg, metavar="PNG|DIR", help="a PNG or a folder of PNGs to edit")
    p.add_argument("--out", type=path_arg,
                   required=True, metavar="DIR", help="folder for edit_00000.png, ... (or interpolation.png; "
                   "with --series a .csv or .npy file)")
    p.add_argument("--seed", type=seed_int, default=0, help="output i (image, pair or --series sample) uses seed + i "
                   "(independent of batch size; default 0)")
    p.add_argument("--batch-size", type=batch_size_or_auto,
                   help="images or pairs per batch (default 16); with --series the windows per sampler call, or "
                        "auto (the --series default): the largest batch that fits in free memory")
    add_network_flags(p)
    add_lora_flags(p)
    add_textual_inversion_flag(p)
    add_freeu_flag(p)
    add_progress_flag(p)
    from ._kandinsky import add_prior_flags
    add_prior_flags(p)  # a Kandinsky 2.2 decoder's --prior (._kandinsky)
    m = p.add_argument_group("img2img and inpainting (docs/editing.md)")
    m.add_argument("--mask", type=path_arg,
                   metavar="PNG", help="inpainting: a grey PNG of the images' size, white = repaint (a FLUX.1 "
                                       "Fill or FLUX.2 Klein folder: required; with --ledits: LEDITS++'s user_mask, "
                                       "white = where the concepts act)")
    m.add_argument("--padding-mask-crop", type=int_in(0, MAX_COUNT), metavar="N",
                   help="with --mask on SD / SD-XL / SD3 / FLUX.1 / FLUX.2 Klein folders: inpaint only the mask's "
                        "bounding box plus N pixels, grown to the edit's aspect ratio and resized to its size, then "
                        "paste it back into the original image under the mask (diffusers' padding_mask_crop; "
                        "docs/editing.md)")
    m.add_argument("--strength", type=strength_value,
                   help="how far to noise, in (0, 1]: of --steps, int(steps * strength) are run (default 0.8, "
                        "1 with --mask; SD3 / FLUX.1 folders 0.6, FLUX.1 Fill 1; FLUX.1 Kontext: --mask only; "
                        "Chroma 0.9, 0.6 with --mask; Qwen-Image 0.6; FLUX.2 Klein 0.8; DeepFloyd IF: its pipelines'; "
                        "VisualCloze: the upsampling stage's, 1.0 on a VisualClozePipeline folder)")
    m.add_argument("--jump-n-sample", type=positive_int, default=1,
                   help="with --mask or --series, and --sampler ddpm: RePaint's resampling, each jump this many "
                        "times (default 1: none)")
    m.add_argument("--jump-length", type=positive_int, default=10, help="RePaint's jump length in steps (default 10)")
    m.add_argument("--reconstruction-weight", type=non_negative_float, metavar="W",
                   help="with --series or --mask: reconstruction guidance weight w (Ho et al. 2022; 0 = replacement "
                        "only; default 1 with --series, 0 with --mask; w > 0 costs a backward pass per step)")
    m.add_argument("--posterior", type=str, choices=("mean", "sample"),
                   help="latent models: encode each image to the posterior mean or to a sample of it (drawn from "
                        "the image's seed before its noise, as diffusers' img2img); default mean for a diffkit "
                        "latent checkpoint (what it was trained on), sample for a Stable Diffusion folder")
    m.add_argument("--paste-known", action="store_true",
                   help="latent models with --mask: paste the kept pixels back into the decoded images (decoding "
                        "changes them slightly; diffusers does not paste)")
    s = p.add_argument_group("sampler and time grid (docs/samplers.md)")
    s.add_argument("--sampler", help="see 'diffkit samplers' (default ddim; ddpm with --series); NAME@SPACING:FINAL "
                   "also sets the grid")
    s.add_argument("--steps", type=positive_int, help="steps of the full grid (default 50)")
    s.add_argument("--eta", type=eta_value, help="DDIM eta: a number >= 0 (0 = deterministic) or sigma_hat")
    add_stochasticity_flags(s)  # --gamma (tcd), --tau (sa-solver)
    add_solver_flags(s, adaptive=False)  # --spacing, --final, --restarts (edits refuse adaptive samplers)
    add_flow_shift_flag(s)
    s.add_argument("--scheduler", choices=("lcm", "tcd"),
                   help="Stable Diffusion / SD-XL folders: edit as diffusers' img2img / inpaint pipelines with "
                        "LCMScheduler (lcm) / TCDScheduler (tcd) .from_config of the folder's, e.g. with an LCM-LoRA "
                        "in --lora: default sampler consistency (tcd), 4 steps, --guidance-scale 1 (docs/editing.md)")
    i = p.add_argument_group("interpolation (--interpolate; docs/editing.md)")
    i.add_argument("--interpolate", type=int_in(2, 64), metavar="K",
                   help="interpolate pairs of images at K weights from 0 to 1 (writes OUT/interpolation.png)")
    i.add_argument("--method", choices=("ddpm", "ddim"),
                   help="with --interpolate: ddpm (lerp at --t, DDPM Sec. 4.4; default) or ddim (inversion + slerp)")
    i.add_argument("--t", type=int, metavar="T", help="with --interpolate --method ddpm: the time to noise to "
                   "(default T/2 - 1: DDPM's t = 500 of 1000 is 499 in diffkit's time)")
    t = p.add_argument_group("time series (--series; docs/editing.md)")
    t.add_argument("--series", type=path_arg,
                   metavar="CSV|NPY", help="time-series checkpoints: the rows to forecast from "
                   "(--horizon) or to impute (empty / NaN cells), in the training file's columns and units")
    t.add_argument("--horizon", type=positive_int, metavar="H",
                   help="with --series: forecast H rows after the file's rows (from its last seq_length - H rows; "
                        "H > seq_length - 1 rolls window after window, see --chunk)")
    t.add_argument("--chunk", type=positive_int, metavar="K",
                   help="with --series, a forecast or a file longer than one window: the new rows of each window "
                        "(1..seq_length - 1; the other seq_length - K rows are its context; default: a horizon that "
                        "fits one window in one, else seq_length // 4; for a horizon above seq_length / 4, "
                        "seq_length // 4 measured better; imputation: windows K apart, default seq_length // 2)")
    t.add_argument("--num", type=int_in(1, 100_000), metavar="N",
                   help="with --series: samples of the forecast / imputation (default 1; sample i uses --seed + i)")
    g = p.add_argument_group("classes, prompts and guidance (docs/guidance.md, docs/interop.md)")
    g.add_argument("--class", dest="class_id", type=int, metavar="ID",
                   help="class-conditional checkpoints: the class every image is edited towards (with --series: "
                        "every sample's and window's class; default the file's label column (an imputation: each "
                        "window its rows' label), else the null class, if trained: p_uncond > 0)")
    g.add_argument("--prompt", dest="prompts", action="append", type=str, metavar="TEXT",
                   help="text-conditional checkpoints and diffusers folders (SD, SD-XL, SD3, FLUX.1, Kontext, Chroma): "
                        "the prompt every image is edited towards (Kontext, Qwen-Image-Edit: the instruction); repeat "
                        "it once per image (in the files' order) for one each")
    g.add_argument("--negative-prompt", metavar="TEXT",
                   help="Stable Diffusion / SD-XL / SD3 / Chroma / Z-Image / Qwen-Image folders with --prompt: the "
                        "null condition of classifier-free guidance, for every image (default: the empty prompt; "
                        "SD-XL: zeros if its force_zeros_for_empty_prompt), as the img2img pipelines' "
                        "negative_prompt; FLUX folders: with --true-cfg-scale")
    add_prompt_encoding_flags(g, true_cfg=True, z_image=True)  # --clip-skip, --prompt-2, ... (SD, SD-XL, SD3, FLUX)
    g.add_argument("--guidance-scale", type=float, metavar="W",
                   help="with --series and a class, or --prompt: classifier-free guidance (1+W) eps(x,y) - "
                        "W eps(x,null), as diffkit sample (0 = conditional model; --guidance-convention diffusers: "
                        "s = 1 + W; a Stable Diffusion folder's default is diffusers' s = 7.5)")
    add_image_guidance_flag(g)  # --image-guidance-scale (InstructPix2Pix folders)
    add_guidance_convention_flag(g, needs="with --series or --prompt, and --guidance-scale: ")  # diffkit sample's
    add_rescale_interval_flags(g, needs="with --series or --prompt, and --guidance-scale: ")
    add_edit_pag_flags(g)  # --pag-scale, --pag-layers, --pag-adaptive-scale, --pag-interval (SD / SD-XL folders)
    z = p.add_argument_group("image size (diffusers folders; docs/interop.md)")
    add_edit_size_flags(z)  # --height, --width (diffusers folders: the images resized first)
    from ._size_conditions import add_size_condition_flags
    add_size_condition_flags(z, edit=True)  # --original-size, ..., --negative-...: SD-XL / Kolors folders
    add_kontext_flags(z)  # --max-area, --no-auto-resize (FLUX.1 Kontext folders)
    z.add_argument("--layers", type=positive_int, metavar="N",
                   help="Qwen-Image-Layered folders: the layers each image is decomposed into "
                        "(QwenImageLayeredPipeline's layers, default 4), written as edit_{i}_layer_{k}.png (RGBA)")
    z.add_argument("--english-caption", action="store_true", default=None,
                   help="Qwen-Image-Layered folders: caption an image without a prompt with the English annotator "
                        "prompt (QwenImageLayeredPipeline's use_en_prompt=True; default its Chinese one)")
    from ._chronoedit import add_chronoedit_flags
    add_chronoedit_flags(z)  # --temporal-reasoning-steps (ChronoEdit folders)
    add_controlnet_flags(p)
    add_ip_adapter_flags(p)
    add_redux_flags(p)  # --redux, --redux-image, ... (FLUX.1 folders)
    add_edit_refiner_flags(p)
    from ._ledits_pp import add_ledits_flags
    add_ledits_flags(p)  # --ledits, --ledits-remove, ...: LEDITS++ on SD 1.x / 2.x and SD-XL folders
    from ._visualcloze import add_visualcloze_flags
    add_visualcloze_flags(p)  # --example, --query, --task-prompt, --resolution: VisualCloze folders
    p.set_defaults(func=run)


def image_files(path) -> list:
    """The PNGs ``--images`` names: a folder's (name order) or the one file; one line when it does not exist."""
    from ..errors import DiffkitError
    from ..metrics.features import list_images
    path = Path(path)
    if path.is_dir():
        return list_images(path)
    if path.is_file():
        return [path]
    raise DiffkitError(f"--images {str(path)!r} does not exist; give a PNG file or a folder of PNGs")


def read_pngs(path, mode: str):
    """(images (B, C, H, W) in [-1, 1] in ``mode`` "L" or "RGB", files) of one PNG or a folder."""
    from ..metrics.features import _check_same_size, load_image_batch
    files = image_files(path)
    _check_same_size(files)
    return load_image_batch(files, mode), files


def read_mask(path, images):
    """``--mask``: a grey PNG of the images' size as (1, 1, H, W) in [0, 1] (white = 1 = repaint); one line
    otherwise."""
    from ..errors import DiffkitError
    mask = (read_pngs(mask_file(path), "L")[0] + 1) / 2  # [0, 255] -> [0, 1]
    if mask.shape[2:] != images.shape[2:]:
        raise DiffkitError(f"--mask is {mask.shape[3]}x{mask.shape[2]} but the images are "
                           f"{images.shape[3]}x{images.shape[2]}; give a mask of the images' size")
    return mask


def mask_file(path) -> Path:
    """``--mask``'s file; one line when it is not one."""
    from ..errors import DiffkitError
    if not Path(path).is_file():
        raise DiffkitError(f"--mask {str(path)!r} does not exist; give a grey PNG, white = repaint")
    return Path(path)


def read_edit_inputs(args, mode: str = "RGB") -> tuple:
    """(images, files, mask or None) of ``--images`` and ``--mask`` (:func:`read_pngs`, :func:`read_mask`); with
    ``--height`` / ``--width`` (a diffusers folder) each resized to that size first, as the pipelines' image and
    mask processors do (:func:`._image_size.resized_pngs`; the mask may then be of any size, as diffusers')."""
    from ..interop.mask_crop import mask_crop
    crop = mask_crop(args)  # --padding-mask-crop: the mask's box cropped and resized ("fill"; .interop.mask_crop)
    if crop is not None:
        files = image_files(args.images)
        images, mask = crop.inputs(files)
        return images, files, mask
    if args.height is None and args.width is None:
        images, files = read_pngs(args.images, mode)
        return images, files, read_mask(args.mask, images) if args.mask else None
    from ._image_size import edit_size, resized_pngs
    files = image_files(args.images)
    from ..metrics.features import _check_same_size
    _check_same_size(files)
    size = edit_size(args.checkpoint, args.height, args.width, files[0])
    mask = resized_pngs([mask_file(args.mask)], *size, mask=True) if args.mask else None
    return resized_pngs(files, *size), files, mask


def grid_options(args, info, spacing, final) -> dict:
    """The sampler options of edit's flags: ``eta``, the time grid (``spacing`` / ``final``, given as flags
    or in ``--sampler NAME@SPACING:FINAL``; ``flow_shift``, checked against the checkpoint's header),
    ``restarts``, ``gamma`` and ``tau`` (:func:`tolerance_options`: the restart, tcd and sa-solver samplers')."""
    options = {} if args.eta is None else {"eta": args.eta}
    options.update({key: value for key, value in (("spacing", spacing), ("final", final)) if value})
    options.update(tolerance_options(args, info))
    if args.flow_shift is not None:
        check_flow_shift(args.checkpoint, info, args.flow_shift)
        options["flow_shift"] = args.flow_shift
    return options


def run(args) -> int:
    from ..interop.single_file import single_file_args
    with single_file_args(args, progress=args.progress, own_config=True) as args:  # a single file: its folder
        return _run(args)


def _run(args) -> int:
    import torch

    from ..config import resolve_device
    from ..denoiser import autocast
    from ..editing import img2img, inpaint
    from ..errors import DiffkitError
    from ..images import check_image_folder, save_images
    from ..memory import batches_with_oom_retry
    from ..loading import load_denoiser
    from ..interop.mask_crop import check_mask_crop, mask_crop, overlaid_edits
    from ..models.network import check_image_model, is_series_model
    from ..sampling import check_eta, resolve_sampler

    from .video import refuse_video_folder
    refuse_video_folder(args.checkpoint, "edit")  # a video folder (diffkit video, VIDEO_KINDS)
    check_lora_flags(args)
    from ._ledits_pp import check_no_ledits_options, edit_ledits
    if args.ledits:  # LEDITS++ on an SD 1.x / 2.x or SD-XL folder, as LEditsPPPipelineStableDiffusion(XL)
        return edit_ledits(args)
    check_no_ledits_options(args)
    instruct = instruct_pix2pix_edit(args)  # an InstructPix2Pix folder: its flags checked (._instruct_pix2pix)
    check_mask_crop(args)  # --padding-mask-crop: SD / SD-XL / SD3 / FLUX.1 inpainting only (.interop.mask_crop)
    from ._size_conditions import edit_size_conditions
    sizes = edit_size_conditions(args)  # --original-size, ...: SD-XL / Kolors folders, from their JSON
    from ._qwen_image_layered import check_layers_flag, edit_layered, is_layered_folder
    if is_layered_folder(args.checkpoint):  # Qwen-Image-Layered: N RGBA layers of each image
        return edit_layered(args)
    check_layers_flag(args)  # --layers: that folder's only
    from ..interop.visualcloze import is_visualcloze_folder
    from ._visualcloze import check_visualcloze_flags, edit_visualcloze
    if is_visualcloze_folder(args.checkpoint):  # VisualCloze: in-context generation (._visualcloze)
        return edit_visualcloze(args)
    check_visualcloze_flags(args)  # --example, --query, ...: a VisualCloze folder's
    from ._chronoedit import check_chronoedit_flag, edit_chronoedit
    from ..interop.chronoedit import is_chronoedit_folder
    if is_chronoedit_folder(args.checkpoint):  # ChronoEdit: the edit is the last frame of a short video
        return edit_chronoedit(args)
    check_chronoedit_flag(args)  # --temporal-reasoning-steps: that folder's only
    from ..interop.flux_kontext import is_kontext_folder
    if is_kontext_folder(args.checkpoint):  # FLUX.1 Kontext: the image in context, as FluxKontextPipeline
        from ._flux_kontext import edit_kontext
        return edit_kontext(args)
    from ..interop.pixart import masked_text_folder
    label = masked_text_folder(args.checkpoint)
    from ..interop.sana import SANA_SPRINT_PIPELINE, sana_kind
    if label == "Sana" and sana_kind(args.checkpoint) == SANA_SPRINT_PIPELINE:  # as SanaSprintImg2ImgPipeline
        from ._pixart import edit_sana_sprint
        return edit_sana_sprint(args)
    if label == "Kandinsky 3":  # as Kandinsky3Img2ImgPipeline (._kandinsky3)
        from ._kandinsky3 import edit_kandinsky3
        return edit_kandinsky3(args)
    if label == "DeepFloyd IF":  # IFImg2Img / IFInpainting(SuperResolution)Pipeline (._deepfloyd_if)
        from ._deepfloyd_if import edit_if
        return edit_if(args)
    if label == "Kandinsky 5":  # as Kandinsky5I2IPipeline (._kandinsky5); a T2I folder: one line there
        from ._kandinsky5 import edit_kandinsky5
        return edit_kandinsky5(args)
    if label:
        from ._pixart import articled
        raise DiffkitError(articled(f"{args.checkpoint} is a {label} folder, which diffkit edit does not take "
                                    f"(diffusers 0.42 has no img2img or inpainting pipeline for a {label} folder"
                                    f"{'; a Sana Sprint one edits' if label == 'Sana' else ''}); sample it with "
                                    f"diffkit sample"))
    from ..interop.kandinsky import is_kandinsky_folder, kandinsky_kind
    if is_kandinsky_folder(args.checkpoint):  # the decoder with --prior, as KandinskyV22Img2ImgPipeline
        from ._kandinsky import edit_kandinsky
        return edit_kandinsky(args)
    if kandinsky_kind(args.checkpoint):
        from ..interop.kandinsky21 import kandinsky_names
        version, _, decoder, _ = kandinsky_names(args.checkpoint)
        raise DiffkitError(f"{args.checkpoint} is a Kandinsky {version} prior folder: give it as --prior, with the "
                           f"decoder folder ({decoder}) as --checkpoint")
    if getattr(args, "prior", None) is not None:
        raise DiffkitError(f"--prior applies to a Kandinsky 2.2 decoder folder (KandinskyV22Pipeline) or a Kandinsky "
                           f"2.1 one (KandinskyPipeline) as --checkpoint; {args.checkpoint} is not one")
    from ..interop.flux2 import is_flux2_folder
    if is_flux2_folder(args.checkpoint):  # a Klein folder with --mask, as Flux2KleinInpaintPipeline (._flux2)
        from ._flux2 import edit_flux2
        return edit_flux2(args)
    from ..interop.stable_cascade import is_stable_cascade_folder
    if is_stable_cascade_folder(args.checkpoint):
        raise DiffkitError(f"{args.checkpoint} is a Stable Cascade folder, which diffkit edit does not take (diffusers "
                           f"0.42 has no img2img or inpainting pipeline for it); sample it with diffkit sample "
                           f"--checkpoint PRIOR --decoder DECODER")
    from ._chroma import folder_family
    family = folder_family(args.checkpoint)  # Chroma, Qwen-Image, Z-Image: img2img / inpainting as their pipelines
    if family is not None and not family.edits:  # Bria 3.2, Ovis-Image, a LongCat-Image text-to-image folder
        from ._pixart import articled
        raise DiffkitError(articled(f"{args.checkpoint} is a {family.kind} folder, which diffkit edit does not take "
                                    f"({family.no_edit}); sample it with diffkit sample"))
    from ._image_size import check_image_size
    check_image_size(args.checkpoint, args.height, args.width, edit=True)  # a diffusers folder's multiple, first
    if family is not None:
        from ._chroma import edit_chroma
        return edit_chroma(args, family)
    from ..interop.flux import is_flux_folder
    from ..interop.sd3 import is_sd3_folder
    if is_sd3_folder(args.checkpoint) or is_flux_folder(args.checkpoint):  # SD3 / FLUX.1: img2img as their pipelines
        from ._sd3 import edit_sd3
        return edit_sd3(args, flux=not is_sd3_folder(args.checkpoint))
    check_kontext_flags(args)  # --max-area, --no-auto-resize: a Kontext folder's
    ReduxRequest.from_args(args, args.checkpoint)  # --redux: a FLUX.1 folder's (one line here)
    from ..interop.stable_diffusion import is_stable_diffusion_folder
    if args.textual_inversion and not is_stable_diffusion_folder(args.checkpoint):
        raise DiffkitError(f"--textual-inversion applies to a Stable Diffusion folder (diffusers format); "
                           f"{args.checkpoint} is not one")
    check_freeu_checkpoint(args.checkpoint, args.freeu)  # a DiT or a time-series model: refused here
    from ..interop.sd_scheduler import check_scheduler_override
    check_scheduler_override(args.checkpoint, args.scheduler)  # JSON only: a Stable Diffusion folder's, not an LCM's
    check_edit_pag_flags(args)  # --pag-scale: a Stable Diffusion / SD-XL base folder only (.interop.sd_pag)
    if args.series is not None:
        return _series(args)
    if args.images is None:
        raise DiffkitError("give --images PNG|DIR (an image checkpoint) or --series CSV|NPY (a time-series one)")
    if args.batch_size == "auto":
        raise DiffkitError("--batch-size auto goes with --series; give the images or pairs per batch (default 16)")
    args.batch_size = args.batch_size or 16
    guidance_flags = (("--guidance-scale", args.guidance_scale, None),
                      ("--guidance-convention", args.guidance_convention, "seed"),
                      ("--guidance-rescale", args.guidance_rescale, 0.0),
                      ("--guidance-interval", args.guidance_interval, None),
                      ("--apg-eta", args.apg_eta, None),
                      ("--apg-norm-threshold", args.apg_norm_threshold, None),
                      ("--apg-momentum", args.apg_momentum, None))
    for flag, value, default in guidance_flags if args.prompts is None else ():
        if value != default:
            raise DiffkitError(f"{flag} is not available for --images (image edits take --class without "
                               f"guidance); it goes with --series, or with --prompt (a text-conditional checkpoint "
                               f"or a Stable Diffusion folder)")
    for flag, value in (("--horizon", args.horizon), ("--num", args.num), ("--chunk", args.chunk)):
        if value is not None:
            raise DiffkitError(f"{flag} goes with --series (a time-series checkpoint)")
    if args.reconstruction_weight and args.mask is None:
        raise DiffkitError("--reconstruction-weight (reconstruction guidance) goes with --mask or --series")
    if args.interpolate is None:
        for flag, value in (("--method", args.method), ("--t", args.t)):
            if value is not None:
                raise DiffkitError(f"{flag} goes with --interpolate")
    else:
        for flag, value in (("--mask", args.mask), ("--strength", args.strength), ("--sampler", args.sampler),
                            ("--eta", args.eta), ("--restarts", args.restarts), ("--gamma", args.gamma),
                            ("--tau", args.tau), ("--spacing", args.spacing), ("--final", args.final),
                            ("--flow-shift", args.flow_shift)):
            if value is not None:
                raise DiffkitError(f"{flag} does not go with --interpolate (its --method picks the sampler)")
    from ..interop.lcm_edit import edit_sampling  # an LCM / TCD folder or --scheduler: consistency / tcd, 4 steps
    sampler, args.steps = edit_sampling(args.checkpoint, args.sampler, args.steps, args.spacing, args.scheduler,
                                        bool(args.controlnets))
    info, spacing, final = resolve_sampler(sampler, args.spacing, args.final)  # fails before loading
    info.check_not_adaptive("diffkit edit")
    check_eta(info.name, args.eta)
    options = grid_options(args, info, spacing, final)
    if args.mask is None and (args.jump_n_sample != 1 or args.jump_length != 10):
        raise DiffkitError("--jump-n-sample / --jump-length (RePaint's resampling) go with --mask")
    if args.paste_known and args.mask is None:
        raise DiffkitError("--paste-known (the kept pixels pasted back) goes with --mask")
    if args.apg_momentum and args.jump_n_sample != 1:  # each RePaint segment is its own sampling run
        raise DiffkitError(f"--apg-momentum {args.apg_momentum} does not go with --jump-n-sample "
                           f"{args.jump_n_sample} (RePaint's resampling restarts APG's running average); drop one")
    request = _prompt_request(args, info.name)
    refiner = edit_refiner_request(args)  # --refiner: the base's latents at its cut to an SD-XL refiner
    micro, begin = edit_refiner_options(args)  # an SD-XL refiner's flags, from model_index.json
    micro = {**sizes, **micro}  # the size conditions (._size_conditions), the base's with --refiner
    if sizes and refiner is not None:  # the refiner's half: what applies to it
        from dataclasses import replace
        from ._size_conditions import refiner_size_conditions
        refiner = replace(refiner, conditioning={**refiner_size_conditions(sizes, refiner.folder),
                                                 **refiner.conditioning})
    out = Path(args.out)
    images_path = Path(args.images)
    from ._sd_depth import DepthRequest  # an SD 2 depth folder: its --control-image is the depth map, taken here
    depth = DepthRequest.from_args(args, images_path)
    edited = len(image_files(images_path)) if args.controlnets else None  # a --control-image folder: one per file
    control = ControlRequest.from_args(args, args.checkpoint, edited=edited)
    ip_adapter = IPAdapterRequest.from_args(args, args.checkpoint)
    if out.exists() and images_path.is_dir() and out.resolve() == images_path.resolve():
        raise DiffkitError(f"--out {args.out!r} is the --images folder; give another folder")
    device = resolve_device(args.device)
    autocast(args.mixed_precision, device.type)  # fp16 off CUDA fails here, before any output folder is made
    if is_stable_diffusion_folder(args.checkpoint):
        denoiser = autoencoder = _stable_diffusion(args, device)
        unet = {}
    else:
        denoiser = load_denoiser(args.checkpoint, use_ema=args.ema, device=str(device),
                                 mixed_precision=args.mixed_precision, compile=args.compile, lora=args.lora,
                                 lora_any_base=args.lora_any_base)
        unet, autoencoder = denoiser.meta["unet"], denoiser.decoder
    if args.freeu is not None:  # FreeU in the U-Net's decoder for every network call of this command
        from ..models.freeu import set_freeu
        set_freeu(getattr(denoiser, "unet", denoiser), args.freeu)  # (a StableDiffusion: its diffusers UNet)
    sd_folder = autoencoder is denoiser  # a StableDiffusion: the network and the autoencoder
    text = sd_folder or getattr(denoiser, "prompt_encoder", None) is not None
    latent = autoencoder is not None or text
    if latent and args.interpolate is not None:
        raise DiffkitError("--interpolate works on pixel-space checkpoints; this one is a latent or text-conditional "
                           "model (edit it with img2img or --mask)")
    for flag, value in (("--posterior", args.posterior), ("--paste-known", args.paste_known or None)):
        if value is not None and autoencoder is None:
            raise DiffkitError(f"{flag} needs a latent checkpoint or a Stable Diffusion folder; this one is a "
                               f"pixel-space model")
    if request is not None and not text:
        raise DiffkitError("--prompt needs a text-conditional checkpoint (trained with text_conditioning=true) or a "
                           "Stable Diffusion folder; this one is not")
    if unet and is_series_model(unet):
        raise DiffkitError(f"diffkit edit --images works on image models; this checkpoint is a time-series model "
                           f"({unet['in_channels']} channels x {unet['seq_length']} steps): give --series CSV|NPY")
    if unet:
        check_image_model(unet, "diffkit edit --images")
    channels = unet["in_channels"] if autoencoder is None else autoencoder.image_channels
    images, files, mask = read_edit_inputs(args, "L" if channels == 1 else "RGB")
    if autoencoder is None:
        side = unet["img_size"]
        if images.shape[1] != channels or images.shape[2:] != (side, side):
            raise DiffkitError(f"the images are {images.shape[3]}x{images.shape[2]} with {images.shape[1]} channel(s); "
                               f"the model makes {side}x{side} with {channels}; resize them first")
    else:
        from ..latent_editing import check_pixels
        check_pixels(denoiser, autoencoder, images)
    num_classes = unet.get("num_classes")
    if args.class_id is not None and num_classes is None:
        raise DiffkitError(f"--class needs a class-conditional checkpoint (trained with --conditional); this one is "
                           f"{'text-conditional: use --prompt TEXT' if text else 'unconditional'}")
    if num_classes is not None:
        if args.class_id is None:
            raise DiffkitError(f"this checkpoint is class-conditional: give --class ID (0..{num_classes - 1})")
        if not 0 <= args.class_id < num_classes:
            raise DiffkitError(f"--class {args.class_id} is out of range; allowed: 0..{num_classes - 1}")
    sampler = info.name if args.sampler is None else args.sampler
    if control is not None:  # the SD UNet with ControlNet residuals; the control images take the images' size
        from ..interop.controlnet import editing_grid
        controlnets = control.load(device, denoiser.dtype, args.progress)
        strength = args.strength if args.strength is not None else 0.8 if mask is None else 1.0
        grid = editing_grid(denoiser, sampler, args.steps or 50, strength, options) if controlnets.windowed else None
        crop = mask_crop(args)  # --padding-mask-crop: the control images cropped to the mask's box too
        denoiser = autoencoder = controlnets.controlling(denoiser, images.shape[2], images.shape[3], grid,
                                                         box=None if crop is None else crop.box)
    if ip_adapter is not None:  # the SD UNet with the image prompt (diffusers' load_ip_adapter)
        denoiser = autoencoder = ip_adapter.load(device, denoiser.dtype, args.progress).adapting(denoiser)
    if text:
        perturbed = edit_pag(request, denoiser, controlnets if control is not None else None)  # .interop.sd_pag
        denoiser, cond_for = _prompted(args, denoiser, request, len(files), device, tuple(images.shape[2:]),
                                       **({"micro_conditioning": micro} if micro else {}))
        denoiser = denoiser if perturbed is None else perturbed(denoiser)  # over the classifier-free guidance
        if instruct:  # eq. 3 of Brooks et al. 2023 over the prompts' guidance (.interop.sd_instruct_pix2pix)
            from ..interop.sd_instruct_pix2pix import instruct_pix2pix_guidance
            denoiser = instruct_pix2pix_guidance(denoiser, args.image_guidance_scale)
    else:
        def cond_for(start: int, n: int):
            return None if num_classes is None else {"y": torch.full((n,), args.class_id, dtype=torch.long)}
    if control is not None and controlnets.per_prompt > 1:  # image i's control image: cond["control_rows"]
        cond_for = _with_control_rows(cond_for, controlnets.rows(len(files)).to(device))
    if depth is not None:  # SD 2 depth-to-image: image i's depth at the latent size, cond["depth_map"]
        cond_for = depth.with_depth(cond_for, autoencoder, args.checkpoint, files, tuple(images.shape[2:]),
                                    args.progress, args.batch_size)
    refined = None if refiner is None else refiner.load(device, args.progress)
    if refiner is not None:  # both halves get a step of the grid: one line before any output
        refiner.check_steps(autoencoder, refined, sampler, args.steps or 50, options)
    new_dirs = missing_dirs(out)
    if args.interpolate is not None:
        return _interpolate(args, denoiser, images, files, num_classes, out, new_dirs, device)
    check_writable_dir(out)
    check_image_folder(out, len(files), prefix="edit")
    posterior = args.posterior or ("sample" if sd_folder else "mean")  # as diffusers; what it was trained on
    handover = {} if refiner is None else {"denoising_end": refiner.handover, "return_latents": True}
    from ..interop.lcm_edit import edit_hooks  # an LCM / TCD folder or --scheduler: the pipelines' strength, blend
    cut, blend = edit_hooks(autoencoder if sd_folder else None, spacing or info.default_spacing)
    def edit(start: int, n: int):
        from ..latent_editing import latent_img2img, latent_inpaint
        batch = images[start:start + n].to(device)
        common = dict(sampler=sampler, steps=args.steps or 50,
                      seed=args.seed + start, cond=cond_for(start, n), progress=args.progress, **options, **begin)
        latent = {} if autoencoder is None else dict(posterior=posterior, **handover)
        if instruct:  # from pure noise, the images' latents in every UNet call (.interop.sd_instruct_pix2pix)
            from ..interop.sd_instruct_pix2pix import instruct_pix2pix
            edited = instruct_pix2pix(denoiser, autoencoder, batch, **common)
        elif mask is None:
            edited_by, strength = cut(denoiser, 0.8 if args.strength is None else args.strength, common["steps"])
            edited = (img2img(edited_by, batch, strength, **common) if autoencoder is None else
                      latent_img2img(edited_by, autoencoder, batch, strength, **latent, **common))
        else:
            masked = dict(strength=1.0 if args.strength is None else args.strength, jump_length=args.jump_length,
                          jump_n_sample=args.jump_n_sample, reconstruction_weight=args.reconstruction_weight or 0.0,
                          **blend, **common)
            edited = (inpaint(denoiser, batch, mask.to(device), **masked) if autoencoder is None else
                      latent_inpaint(denoiser, autoencoder, batch, mask.to(device), paste=args.paste_known, **latent,
                                     **masked))
        if refiner is not None:  # the refiner's half from the base's latents, its VAE decodes (._refiner)
            edited = refiner.edited(refined, request, len(files), start, edited, sampler, common["steps"],
                                    dict(seed=common["seed"], **options, **({} if mask is None else {"mask": mask})))
        return (edited.clamp(-1, 1).cpu(),)

    with removed_if_empty_on_failure(new_dirs):  # a batch out of memory is halved and redrawn (seed + i)
        results = [edited for _, edited in batches_with_oom_retry(edit, len(files), args.batch_size)]
        save_images(overlaid_edits(args, files, torch.cat(results)), out, prefix="edit")  # --padding-mask-crop
    what = "inpainted" if mask is not None else "edited"
    how = "" if autoencoder is None else f", in latent space (posterior {posterior})"
    how = ", InstructPix2Pix (image latents: the posterior mode)" if instruct else how
    if request is not None:
        how += f", prompts {request.prompts}" + request.pag_label()
    how += "" if refiner is None else f", refiner {refiner.folder} from denoising_end {refiner.handover:g}"
    print(f"wrote {len(files)} {what} images to {out} (edit_00000.png ...; {info.name}, {args.steps or 50} steps{how})")
    return 0


def _with_control_rows(cond_for, rows):
    """``cond_for`` with ``cond["control_rows"]``: images start..start + n - 1 take control images ``rows`` there
    (:meth:`~diffkit.interop.controlnet.ControlNets.rows`; classifier-free guidance repeats them)."""
    return lambda start, n: {**cond_for(start, n), "control_rows": rows[start:start + n]}


def _prompt_request(args, sampler: str):
    """``--prompt`` and the classifier-free guidance flags as ``diffkit sample``'s
    :class:`~diffkit.commands.sample.GuidanceRequest` (checked before loading), or None without ``--prompt``."""
    from ..errors import DiffkitError
    from .sample import GuidanceRequest
    from ._sd_prompts import check_prompt_encoding, given_flags
    if args.prompts is None:
        if args.negative_prompt is not None:
            raise DiffkitError(f"--negative-prompt {args.negative_prompt!r} goes with --prompt (a Stable Diffusion "
                               f"folder's classifier-free guidance)")
        if given_flags(args):
            raise DiffkitError(f"{given_flags(args)[0][0]} goes with --prompt (a Stable Diffusion / SD-XL folder's "
                               f"prompt encoding)")
        return None
    if args.class_id is not None:
        raise DiffkitError("--prompt and --class exclude each other: a checkpoint is text- or class-conditional")
    if args.interpolate is not None:
        raise DiffkitError("--prompt does not go with --interpolate (which works on pixel-space checkpoints)")
    request = GuidanceRequest(guidance_scale=args.guidance_scale, convention=args.guidance_convention,
                              rescale=args.guidance_rescale, prompts=list(args.prompts),
                              negative_prompt=args.negative_prompt,
                              interval=tuple(args.guidance_interval) if args.guidance_interval else None,
                              apg_eta=args.apg_eta, apg_norm_threshold=args.apg_norm_threshold,
                              apg_momentum=args.apg_momentum, clip_skip=args.clip_skip, prompts_2=args.prompts_2,
                               negative_prompt_2=args.negative_prompt_2, prompts_3=args.prompts_3,
                               negative_prompt_3=args.negative_prompt_3,
                               max_sequence_length=args.max_sequence_length, true_cfg_scale=args.true_cfg_scale,
                               image_guidance_scale=args.image_guidance_scale,
                               pag_scale=args.pag_scale,
                               pag_layers=None if args.pag_layers is None else args.pag_layers.split(","),
                               pag_adaptive_scale=args.pag_adaptive_scale, pag_diffusers=True,
                               pag_interval=tuple(args.pag_interval) if args.pag_interval else None,
                               cfg_trunc_ratio=args.cfg_trunc_ratio, cfg_norm_cap=args.cfg_norm_cap)
    request.check(sampler)
    check_prompt_encoding(request, args.checkpoint)
    return request


def _stable_diffusion(args, device):
    """The :class:`~diffkit.interop.stable_diffusion.StableDiffusion` of ``--checkpoint SD_FOLDER`` (it is
    both the network and the autoencoder), after the flags that do not apply to it are refused."""
    from ..errors import DiffkitError
    from ..interop.sd_inpaint import check_inpainting_flags, is_inpainting_folder
    from ..interop.stable_diffusion import load_stable_diffusion
    from .sample import not_for_stable_diffusion
    for flag, value in (("--class", args.class_id), ("--no-ema", None if args.ema else True),
                        ("--guidance-interval", args.guidance_interval),  # as diffkit sample refuses them
                        ("--mixed-precision", None if args.mixed_precision == "no" else args.mixed_precision),
                        ("--compile", None if args.compile == "no" else args.compile),
                        ("--lora-any-base", args.lora_any_base or None)):  # its --lora: diffusers / kohya files
        if value is not None:
            raise not_for_stable_diffusion(flag)
    if args.prompts is None:
        raise DiffkitError(f"{args.checkpoint} is a Stable Diffusion folder: give --prompt TEXT (once for every "
                           f"image, or once per image)")
    from ..interop.lcm import is_lcm_folder
    from .sample import GuidanceRequest, refuse_for_guidance_input
    refuse_for_guidance_input(args.checkpoint, is_lcm_folder(args.checkpoint) or args.scheduler == "lcm", [  # APG
        flag for flag, value in zip(GuidanceRequest.APG_FLAGS, (args.apg_eta, args.apg_norm_threshold,
                                                                args.apg_momentum)) if value is not None])
    from ..interop.kolors import is_kolors_folder
    if is_kolors_folder(args.checkpoint):  # KolorsImg2ImgPipeline: img2img and PAG, no mask or add-ons (._kolors)
        from ._kolors import refuse_kolors_flags
        refuse_kolors_flags(args.checkpoint, {"--mask": args.mask,
                                              "--textual-inversion": args.textual_inversion,
                                              "--controlnet": args.controlnets, "--ip-adapter": args.ip_adapter,
                                              "--scheduler": args.scheduler,
                                              "--pag-scale": args.pag_scale})  # (no Kolors PAG img2img pipeline)
    inpainting = is_inpainting_folder(args.checkpoint)  # a 9-channel UNet: --mask only (.interop.sd_inpaint)
    if inpainting:
        check_inpainting_flags(args)
    from ..interop.sd_depth import is_depth_folder
    from ..interop.sd_instruct_pix2pix import is_instruct_pix2pix_folder  # 8 channels: ._instruct_pix2pix
    return load_stable_diffusion(args.checkpoint, device, progress=args.progress, lora=args.lora,
                                 textual_inversion=args.textual_inversion, inpainting=inpainting,
                                 scheduler=args.scheduler, depth=is_depth_folder(args.checkpoint),
                                 instruct_pix2pix=is_instruct_pix2pix_folder(args.checkpoint))


def _prompted(args, denoiser, request, count: int, device, size=None, **micro):
    """(denoiser with classifier-free guidance if asked, ``cond_for(start, n)``: the prompts' contexts
    of images start..start + n - 1) for a text-conditional checkpoint or a Stable Diffusion folder
    (``denoiser`` is then its :class:`~diffkit.interop.stable_diffusion.StableDiffusion`; guidance
    default diffusers' s = 7.5, as ``diffkit sample``; SD-XL: its prompt_guidance, time ids of the images'
    ``size``, s = 5); ``request.negative_prompt``: the null half's prompt (folders only). One prompt: every
    image; else one per image."""
    import torch

    from ..errors import DiffkitError
    from ..guidance import apg_options
    from ..interop.stable_diffusion import StableDiffusion
    from ._sd_prompts import prompt_options
    if request is None:
        raise DiffkitError("this checkpoint is text-conditional: give --prompt TEXT (once for every image, or once "
                           "per image)")
    prompts = request.prompts
    if len(prompts) not in (1, count):
        raise DiffkitError(f"--prompt is given {len(prompts)} times for {count} images; give it once (every image) "
                           f"or once per image ({count}, in the files' order)")
    if isinstance(denoiser, StableDiffusion):
        sd = denoiser
        apg = apg_options(**{name[len("apg_"):]: value for name, value in request.apg_options().items()},
                          names=request.APG_FLAGS)  # {} when off: the plain guidance, bit for bit
        index = torch.zeros(count, dtype=torch.long) if len(prompts) == 1 else torch.arange(count)
        scale, convention = ((sd.default_guidance_scale, "diffusers") if request.guidance_scale is None
                             else (request.guidance_scale, request.convention))
        if hasattr(sd, "encode_prompts_xl"):  # SD-XL (StableDiffusionXLImg2ImgPipeline): pooled text, time ids
            guided, cond = sd.prompt_guidance(prompts, request.negative_prompt, scale, convention, request.rescale,
                                              image_size=size, **micro, **prompt_options(request), apg=apg,
                                              img2img=True)  # the img2img / inpainting pipelines' null time ids
            return guided, lambda start, n: {key: value[index[start:start + n].to(value.device)]
                                             for key, value in cond.items()}
        context = sd.encode_prompts(prompts, request.clip_skip)  # the null half is not skipped, as the pipelines'
        weighted = sd.weight_input_guidance(scale, convention, request.negative_prompt, request.rescale, apg=apg)
        if weighted is not None:  # an LCM UNet's guidance input w (LatentConsistencyModelImg2ImgPipeline)
            return weighted, lambda start, n: {"context": context[index[start:start + n].to(context.device)]}
        guided = sd.guided(scale, sd.encode_prompts([request.negative_prompt or ""]), convention,
                           rescale=request.rescale, **apg)  # apg: adaptive projected guidance, as text_to_image
        return guided, lambda start, n: sd.cond(context[index[start:start + n].to(context.device)])
    if request.negative_prompt is not None:
        raise DiffkitError(f"--negative-prompt applies to a Stable Diffusion folder (diffusers format); "
                           f"{args.checkpoint} is not one")
    from .sample import prompt_conditioning
    guided, context, _, index, _, _ = prompt_conditioning(denoiser, request, count, 1, device)
    return guided, lambda start, n: {"context": context[index[start:start + n].to(context.device)]}


def _series(args) -> int:
    """``--series``: forecast or impute with a time-series checkpoint (:mod:`diffkit.commands.edit_series`)."""
    from ..config import resolve_device
    from ..denoiser import autocast
    from ..errors import DiffkitError
    from ..loading import load_denoiser
    from ..models.network import is_series_model
    from ..sampling import check_eta, resolve_sampler
    from .edit_series import check_series_flags, run_series
    check_series_flags(args)
    info, spacing, final = resolve_sampler(args.sampler or "ddpm", args.spacing, args.final)  # fails before loading
    info.check_not_adaptive("diffkit edit")
    check_eta(info.name, args.eta)
    options = grid_options(args, info, spacing, final)
    device = resolve_device(args.device)
    autocast(args.mixed_precision, device.type)  # fp16 off CUDA fails here, before any output folder is made
    denoiser = load_denoiser(args.checkpoint, use_ema=args.ema, device=str(device),
                             mixed_precision=args.mixed_precision, compile=args.compile, lora=args.lora,
                             lora_any_base=args.lora_any_base)
    if not is_series_model(denoiser.meta["unet"]):
        raise DiffkitError("--series needs a time-series checkpoint (dataset sines or series); this one is an image "
                           "model: use --images")
    args.num = args.num or 1
    return run_series(args, denoiser, info, options, device)


def _interpolate(args, denoiser, images, files, num_classes, out, new_dirs, device) -> int:
    """``--interpolate K``: consecutive files as pairs, one grid row of K images per pair."""
    import torch

    from ..editing import interpolate
    from ..errors import DiffkitError
    from ..images import save_grid
    from ..memory import batches_with_oom_retry
    from ._common import check_output_file
    if len(files) % 2:
        raise DiffkitError(f"--interpolate takes the images in pairs; --images holds {len(files)} (an odd number)")
    method = args.method or "ddpm"
    weights = [k / (args.interpolate - 1) for k in range(args.interpolate)]
    check_writable_dir(out)
    grid_file = check_output_file(out / "interpolation.png", "interpolation grid", ".png")
    pairs = images.shape[0] // 2
    def between(start: int, n: int):
        a, b = images[2 * start:2 * (start + n):2].to(device), images[2 * start + 1:2 * (start + n):2].to(device)
        cond = None if num_classes is None else {"y": torch.full((n,), args.class_id, dtype=torch.long)}
        seed = args.seed + start if method == "ddpm" else None  # ddim's inversion and decoding draw no noise
        return (interpolate(denoiser, a, b, weights, method, t=args.t, steps=args.steps, seed=seed, cond=cond,
                            progress=args.progress).clamp(-1, 1).cpu(),)

    with removed_if_empty_on_failure(new_dirs):  # a batch out of memory is halved and redrawn (seed + p)
        results = [grid for _, grid in batches_with_oom_retry(between, pairs, args.batch_size)]
        save_grid(torch.cat(results), grid_file, nrow=args.interpolate)
    print(f"wrote {grid_file}: {pairs} pair(s) x {args.interpolate} weights ({method})")
    return 0
