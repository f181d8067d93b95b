"""``diffkit upscale --checkpoint IF_STAGE_II_FOLDER --images LOW_RES --prompt TEXT``: a DeepFloyd IF stage-II folder
(``IFSuperResolutionPipeline``, :func:`diffkit.interop.deepfloyd_if.super_resolve`), dispatched from
:func:`diffkit.commands.upscale.run` as :mod:`._sd_upscale` for the SD x4 upscaler. ``--prompt`` once for every image
or once per image (in the files' order); ``--negative-prompt``, ``--guidance-scale`` (diffusers' s, default 4),
``--noise-level`` (default 250), ``--steps`` (default 50) as the pipeline's. Without ``--sampler`` (or with the
folder's ``ddpm`` and no grid option) the pipeline's loop: ``ddpm`` with the learned variance and the scheduler's
dynamic thresholding on its timesteps; another sampler runs on its own grid (no thresholding). The output size is
the UNet's ``sample_size`` (the pipeline's default height / width). The safety checker and the watermarker are not
run.

``diffkit edit --checkpoint IF_FOLDER --images PNG|DIR --prompt TEXT [--mask M] [--strength S]`` (:func:`edit_if`,
dispatched from :func:`diffkit.commands.edit.run`): a stage-I folder edits as ``IFImg2ImgPipeline`` /
``IFInpaintingPipeline``, a stage-II one, given the stage-I images as ``--control-image`` (its UNet's concatenated
condition, as a depth-to-image folder's depth map), as ``IFImg2ImgSuperResolutionPipeline`` /
``IFInpaintingSuperResolutionPipeline`` (:mod:`diffkit.interop.deepfloyd_if_edit`)."""
from __future__ import annotations

from pathlib import Path

from ..errors import DiffkitError, read_json_object
from ._sd_upscale import REFUSED, checked_folder_flags, read_low_res, write_upscales


def upscale_if(args) -> int:
    """The command on an IF folder: every check before any weight is read or any output made."""
    from ..config import resolve_device
    from ..interop.deepfloyd_if import (IF_DEFAULTS, IF_NOISE_LEVEL, IF_SR_PIPELINE, NOT_RUN,
                                        check_deepfloyd_if_folder, load_deepfloyd_if, super_resolve)
    from ..interop.sd_upscale import check_guidance, check_noise_level
    from ..sampling import check_eta, resolve_sampler

    folder = args.checkpoint
    check_deepfloyd_if_folder(folder, IF_SR_PIPELINE)
    checked_folder_flags(args, f"does not apply to a DeepFloyd IF folder ({folder}); it takes --images, --prompt, "
                               f"--negative-prompt, --guidance-scale, --noise-level, the sampler flags, --seed, "
                               f"--batch-size, --nrow, --device",
                         f"{folder} is a DeepFloyd IF stage-II folder: give --prompt TEXT (once for every image, or "
                         f"once per image)", REFUSED + (("lora", "--lora", None),))
    own_loop = args.sampler in (None, "ddpm") and args.spacing is None and args.final is None and args.nfe is None
    info, spacing, final = resolve_sampler(args.sampler or "ddpm", args.spacing, args.final)
    check_eta(info.name, args.eta)
    options = {} if args.eta is None else {"eta": args.eta}
    if args.rtol is not None or args.atol is not None or getattr(args, "restarts", None) is not None:
        raise DiffkitError("--rtol / --atol / --restarts are not taken on a DeepFloyd IF folder; give a fixed-step "
                           "sampler")
    guidance = check_guidance(IF_DEFAULTS[IF_SR_PIPELINE][0] if args.guidance_scale is None else args.guidance_scale,
                              args.negative_prompt, ("--guidance-scale", "--negative-prompt"))
    images, files, prompts = read_low_res(args)
    steps = args.steps if args.steps is not None or args.nfe is not None else IF_DEFAULTS[IF_SR_PIPELINE][1]
    noising = read_json_object(Path(folder) / "image_noising_scheduler" / "scheduler_config.json",
                               "image_noising_scheduler config")
    level = check_noise_level(IF_NOISE_LEVEL if args.noise_level is None else args.noise_level,
                              int(noising.get("num_train_timesteps", 1000)) - 1, "--noise-level")
    model = load_deepfloyd_if(folder, resolve_device(args.device), progress=args.progress, kind=IF_SR_PIPELINE)
    how = {} if own_loop else {"sampler": info.name, "spacing": spacing, "final": final, "nfe": args.nfe, **options}

    def draw(start: int, n: int):
        return (super_resolve(model, images[start:start + n], prompts[start:start + n], guidance_scale=guidance,
                              negative_prompt=args.negative_prompt, noise_level=level, steps=steps,
                              seed=args.seed + start, progress=args.progress, output_range="-1,1", **how).cpu(),)

    loop = "ddpm on the scheduler's timesteps (IFSuperResolutionPipeline's loop)" if own_loop else info.name
    return write_upscales(args, draw, images, [loop, f"{args.nfe} NFE" if args.nfe else f"{steps} steps",
                                               f"guidance {guidance:g}", f"noise level {level}", NOT_RUN])


# diffkit edit's dests a DeepFloyd IF folder takes (the rest must stay at their defaults); stage II: + --control-image
EDIT_FLAGS = {"command", "func", "checkpoint", "images", "out", "prompts", "negative_prompt", "strength", "steps",
              "guidance_scale", "guidance_convention", "mask", "seed", "batch_size", "device", "progress"}
EDIT_TAKES = ("--images, --prompt, --negative-prompt, --strength, --mask, --guidance-scale (--guidance-convention), "
              "--steps, --seed, --batch-size, --device")


def pipeline_inputs(files, mask_path, sample_size: int) -> tuple:
    """(images (B, 3, H, W) in [-1, 1], mask (1, 1, H, W) of 0 / 1 or None) of the PNGs as the IF editing pipelines
    take PIL images: their own ``preprocess_image`` / ``preprocess_mask_image`` (resized to the UNet's
    ``sample_size``, diffusers' ``pipeline_if_img2img.resize``; the mask grey and binarised at 0.5)."""
    from types import SimpleNamespace

    from ..interop import require
    from ._image_size import pil_image
    pipelines = require("diffusers").pipelines.deepfloyd_if
    owner = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(sample_size=sample_size)))
    images = pipelines.IFImg2ImgPipeline.preprocess_image(owner, [pil_image(f, "RGB") for f in files])
    if mask_path is None:
        return images.float(), None
    mask = pipelines.IFInpaintingPipeline.preprocess_mask_image(owner, [pil_image(mask_path, "L")])
    return images.float(), mask.float()


def edit_if(args) -> int:
    """``diffkit edit --checkpoint IF_FOLDER --images PNG|DIR --prompt TEXT [--mask M]``: each image edited as
    ``IFImg2ImgPipeline`` / (with ``--mask``, white = repaint) ``IFInpaintingPipeline`` on a stage-I folder, or
    with ``--control-image STAGE_I_PNG|DIR`` (the stage-I images: one for every image, or a folder of one per
    ``--images`` file) as ``IFImg2ImgSuperResolutionPipeline`` / ``IFInpaintingSuperResolutionPipeline`` on a
    stage-II folder (:func:`diffkit.interop.deepfloyd_if_edit.edit_images`): the pipeline's defaults (strength,
    steps, guidance, the stage-II noise level), its loop, and its preprocessing of PNGs (:func:`pipeline_inputs`);
    image i from ``--seed`` + i. Every other edit flag: one line, before any weight is read or any folder made."""
    import torch

    from ..config import resolve_device
    from ..images import check_image_folder, save_images
    from ..interop.deepfloyd_if import IF_SR_PIPELINE, NOT_RUN, check_deepfloyd_if_folder, load_deepfloyd_if
    from ..interop.deepfloyd_if_edit import EDIT_DEFAULTS, edit_images, edit_pipeline
    from ..editing import strength_grid
    from ..interop.sd_upscale import check_guidance
    from ..memory import batches_with_oom_retry
    from ._common import check_writable_dir, missing_dirs, removed_if_empty_on_failure
    from ._controlnet import ControlRequest
    from ._pixart import prompted_edit_inputs
    from .edit import image_files, read_pngs

    directory = args.checkpoint
    index, unet, _ = check_deepfloyd_if_folder(directory)
    stage_two = index["_class_name"] == IF_SR_PIPELINE
    pipeline = edit_pipeline(index["_class_name"], args.mask is not None)
    flags, takes = (EDIT_FLAGS | {"control_images"}, EDIT_TAKES + ", --control-image (the stage-I images)") \
        if stage_two else (EDIT_FLAGS, EDIT_TAKES)

    def stage_one_images():  # stage II's --control-image: one file, or a folder of one per --images file
        if stage_two and len(args.control_images or []) != 1:
            raise DiffkitError(f"{directory} is a DeepFloyd IF stage-II folder: give --control-image PNG|DIR once "
                               f"(the stage-I images: one for every image, or a folder of one per --images file)")
    _, count, _ = prompted_edit_inputs(args, flags, "DeepFloyd IF", pipeline, takes, check=stage_one_images,
                                       with_mask=True)
    images, mask = pipeline_inputs(image_files(args.images), args.mask, int(unet["sample_size"]))
    low_res = None
    if stage_two:  # a folder of another count: one line
        ControlRequest.per_row(args.control_images[0], count, "--images file(s)", "image")
        low_res = read_pngs(args.control_images[0], "RGB")[0]
        low_res = low_res.expand(count, -1, -1, -1) if low_res.shape[0] == 1 else low_res
    scale, _, strength, level = EDIT_DEFAULTS[pipeline]
    if args.guidance_scale is not None:  # diffkit's w (--guidance-convention seed, the default) or diffusers' s
        scale = args.guidance_scale + (1 if args.guidance_convention == "seed" else 0)
    scale = check_guidance(scale, args.negative_prompt, ("--guidance-scale", "--negative-prompt"))  # s >= 1
    strength = strength if args.strength is None else args.strength
    steps = EDIT_DEFAULTS[pipeline][1] if args.steps is None else args.steps
    strength_grid(torch.arange(steps + 1.0), strength)  # one line for a strength that keeps no step, before loading
    out, device = args.out, resolve_device(args.device)
    new_dirs = missing_dirs(out)
    model = load_deepfloyd_if(directory, device, progress=args.progress)
    model.latent_shape(1, images.shape[2], images.shape[3])  # the UNet's multiple, after the pipeline's resizing
    check_writable_dir(out)
    check_image_folder(out, count, prefix="edit")

    def edit(start: int, n: int):
        prompts = args.prompts * n if len(args.prompts) == 1 else args.prompts[start:start + n]
        return (edit_images(model, images[start:start + n], prompts, mask=mask, strength=strength,
                            low_res=None if low_res is None else low_res[start:start + n], guidance_scale=scale,
                            negative_prompt=args.negative_prompt, steps=steps, seed=args.seed + start,
                            output_range="-1,1", progress=args.progress).cpu(),)

    with removed_if_empty_on_failure(new_dirs):  # a batch out of memory is halved and redrawn (seed + i)
        results = [edited for _, edited in batches_with_oom_retry(edit, count, args.batch_size or 16)]
        save_images(torch.cat(results), out, prefix="edit")
    more = f", noise level {level}" if stage_two else ""
    print(f"wrote {count} edited images to {out} (edit_00000.png ...; DeepFloyd IF folder {directory} as {pipeline}, "
          f"strength {strength}, guidance {scale:g}{more}, ddpm on the scheduler's timesteps, {NOT_RUN}, prompts "
          f"{list(args.prompts)})")
    return 0
