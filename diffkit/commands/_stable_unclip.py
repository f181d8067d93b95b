"""``diffkit sample --checkpoint STABLE_UNCLIP_FOLDER --prompt TEXT [--image PNG] [--noise-level N]``: a
``StableUnCLIPPipeline`` folder (the prior draws each sample's CLIP image embedding: ``--prior-guidance-scale``,
default diffusers' s = 4, ``--prior-steps``, default 25) or a ``StableUnCLIPImg2ImgPipeline`` folder (``--image``:
the picture whose CLIP embedding conditions the samples, one for every row or one per ``--prompt``; ``--prompt``
default ""), :mod:`diffkit.interop.stable_unclip`. ``--noise-level`` (default 0, at most the
``image_noising_scheduler``'s T - 1) noises the embedding. Rows as ``--prompt``'s; sample i draws z_T from seed + i,
then from that generator the prior's noise, the embedding's noise and the steps' noise (the pipeline given that z_T
as ``latents`` and the generator). Without a grid option every sampler runs on the folder's scheduler's timesteps,
and the default sampler (the one computing its scheduler's step) is the pipeline's loop (20 steps, s = 10); ``--nfe``
(a grid option, as for every Stable Diffusion folder) runs the sampler's NFE rule's steps on diffkit's own grid
(``ddim``: the pipeline with a ``steps_offset=0``, ``set_alpha_to_one=True`` DDIM where the grids agree,
docs/interop/stable_unclip.md)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import DiffkitError, read_json_object

TAKES = ("--prompt, --negative-prompt, --guidance-scale (--guidance-convention; default diffusers' s = 10), "
         "--noise-level, {kind}, --height / --width, --steps / --nfe, --eta, --sampler and its grid options, --freeu, "
         "--lora, --textual-inversion")
PRIOR_FLAGS = ("--prior-guidance-scale / --prior-steps (default s = 4, 25 steps)")
REFUSED_OPTIONS = ("refiner", "t2i_adapter", "redux", "thresholding", "flow_shift", "sag_scale", "panorama",
                   "view_batch_size", "circular_padding", "view_window", "view_stride", "latent_upscaler", "gligen")


def add_stable_unclip_flags(parser) -> None:
    parser.add_argument("--noise-level", dest="unclip_noise_level", type=int, metavar="N",
                        help="a Stable unCLIP folder (StableUnCLIPPipeline, StableUnCLIPImg2ImgPipeline): the noise "
                             "level of the CLIP image embedding, 0 .. the image_noising_scheduler's timesteps - 1 "
                             "(default 0; docs/interop/stable_unclip.md)")


def stable_unclip_options(args, checkpoint) -> dict:
    """``{"unclip": {...}}`` for a Stable unCLIP folder ({} for another checkpoint without ``--noise-level``): its
    noise level, images and prior settings, checked (the folder's JSON, the images readable) before any weight is read
    or output made; one line for what the folder kind does not take."""
    from ..guidance import guidance_weight
    from ..interop.controlnet import open_control_image
    from ..interop.sd_upscale import check_noise_level
    from ..interop.stable_unclip import (NOISING_BOUND, UNCLIP_PIPELINE, check_stable_unclip_folder,
                                         stable_unclip_kind)
    kind = None if checkpoint is None else stable_unclip_kind(checkpoint)
    level = getattr(args, "unclip_noise_level", None)
    if kind is None:
        if level is not None:
            raise DiffkitError(f"--noise-level applies to a Stable unCLIP folder (StableUnCLIPPipeline, "
                               f"StableUnCLIPImg2ImgPipeline); {checkpoint} is not one")
        return {}
    check_stable_unclip_folder(checkpoint)
    images = list(getattr(args, "variation_images", None) or [])
    text = kind == UNCLIP_PIPELINE
    flags = {"--image": images or None} if text else {"--prior-guidance-scale": args.prior_guidance_scale,
                                                       "--prior-steps": args.prior_steps}
    flags.update({"--prior-image": args.prior_image, "--prior-strength": args.prior_strength})
    for flag, value in flags.items():
        if value is not None:
            raise DiffkitError(f"{flag} does not apply to a {kind} folder ({checkpoint}); it takes "
                               f"{takes(kind)}")
    noising = read_json_object(Path(checkpoint) / "image_noising_scheduler" / "scheduler_config.json",
                               "image_noising_scheduler config")
    level = check_noise_level(0 if level is None else level, int(noising.get("num_train_timesteps", 1000)) - 1,
                              "--noise-level", NOISING_BOUND)
    if text:
        steps = args.prior_steps
        if steps is not None and steps < 2:
            raise DiffkitError(f"--prior-steps {steps} is not allowed; give at least 2")
        scale = args.prior_guidance_scale
        scale = None if scale is None else 1 + guidance_weight(scale, getattr(args, "guidance_convention",
                                                                                "diffusers"))
        return {"unclip": {"noise_level": level, "prior_guidance_scale": scale, "prior_steps": steps}}
    if not images:
        raise DiffkitError(f"{checkpoint} is a Stable unCLIP img2img folder: give --image PNG (the picture whose CLIP "
                           f"embedding conditions the samples)")
    rows = len(args.prompts or [""])
    if len(images) not in (1, rows):
        raise DiffkitError(f"--image given {len(images)} times for {rows} prompts; give one (every row) or one per "
                           f"--prompt")
    for image in images:
        open_control_image(image, "--image")
    return {"unclip": {"noise_level": level, "images": images}}


def takes(kind: str) -> str:
    from ..interop.stable_unclip import UNCLIP_PIPELINE
    return TAKES.format(kind=PRIOR_FLAGS if kind == UNCLIP_PIPELINE else "--image")


def sample_stable_unclip(directory, *, sampler=None, steps=None, nfe=None, num=None, nrow=None, out=None,
                         individual=None, seed=0, device="cpu", batch_size="auto", spacing=None, final=None, scale=1,
                         progress=True, guidance=None, refused: Optional[dict] = None, height=None, width=None,
                         unclip: Optional[dict] = None, freeu=None, lora=None, textual_inversion=None, **options):
    """Sample a Stable unCLIP folder to a grid (and single PNGs) (module docstring); ``unclip``: the checked settings
    of :func:`stable_unclip_options`; ``refused``: {flag: value} of ``diffkit sample`` flags such a folder does not
    take (one line for the first given, before any weight is read); ``lora`` / ``textual_inversion``: SD files merged
    into the UNet and SD text encoder (:func:`.stable_unclip.load_stable_unclip`)."""
    import torch

    from ..interop.stable_unclip import (DEFAULTS, UNCLIP_IMG2IMG_PIPELINE, load_stable_unclip, stable_unclip,
                                         stable_unclip_kind)
    from ..models.freeu import parse_freeu
    from ._pixart import given_flags, own_loop
    from .sample import GuidanceRequest, condition_rows, draw_prompted_grid
    kind = stable_unclip_kind(directory)
    request = guidance or GuidanceRequest()
    more = {**(refused or {}), "--prompt-2": request.prompts_2, "--negative-prompt-2": request.negative_prompt_2,
            "--max-sequence-length": request.max_sequence_length, "--true-cfg-scale": request.true_cfg_scale,
            "--original-size (size conditions)": request.sizes,
            "--clip-skip": request.clip_skip if kind == UNCLIP_IMG2IMG_PIPELINE else None}
    given = given_flags(request, options, more, keys=REFUSED_OPTIONS)
    if given:
        raise DiffkitError(f"{given[0]} does not apply to a Stable unCLIP folder ({directory}, {kind}); it takes "
                           f"{takes(kind)}")
    settings = dict(unclip or {})
    freeu = None if freeu is None else parse_freeu(freeu)
    model = load_stable_unclip(directory, device, progress=progress, lora=lora, textual_inversion=textual_inversion)
    own_grid, options = own_loop(model, sampler, spacing, final, nfe, options)
    steps = DEFAULTS[1] if steps is None and nfe is None else steps
    grid = model.scheduler_grid(steps) if own_grid else None  # checked now
    prompts = list(request.prompts or [""])
    index, num, nrow = condition_rows(len(prompts), num, nrow or 8, "prompts of --prompt")
    per_sample = {"prompts": [prompts[i] for i in index.tolist()]}
    images = settings.pop("images", None)
    if images is not None:  # each image encoded once; one for every row, or one per prompt
        embeds = model.encode_images(images)[:, 0].float()
        per_sample["embeds"] = embeds[index if len(images) > 1 else torch.zeros_like(index)]
    scale_s, convention = ((DEFAULTS[0], "diffusers") if request.guidance_scale is None else
                           (request.guidance_scale, request.convention))
    extra = {} if request.clip_skip is None else {"clip_skip": request.clip_skip}

    def draw(_, noise, sampler, run_steps, *, cond, spacing=None, final=None, nfe=None, generator=None, **how):
        # the scheduler's grid; a memory probe (1 ddim step, diffkit.memory.PROBE_SAMPLING) on its own grid
        where = {"grid": grid} if grid is not None and run_steps == steps else {
            "steps": run_steps, "spacing": spacing, "final": final, "nfe": nfe}
        return stable_unclip(model, cond["prompts"], image_embeds=cond.get("embeds"), sampler=sampler,
                             guidance_scale=scale_s, convention=convention, negative_prompt=request.negative_prompt,
                             latents=noise, generator=generator, seed=None, return_latents=True, freeu=freeu,
                             **settings, **extra, **where, **how)

    images_out, out = draw_prompted_grid(model.denoiser, num, model.latent_shape(1, height, width)[1:], draw,
                                         per_sample, model.decode, out, individual, nrow, scale, seed=seed,
                                         sampler=sampler, steps=steps, nfe=nfe, spacing=spacing, final=final,
                                         batch_size=batch_size, device=device, dtype=model.dtype, progress=progress,
                                         **options)
    on = "the scheduler's timesteps" if grid is not None else "its diffkit grid"
    source = f"images {[str(image) for image in images]}" if images is not None else "its prior"
    print(f"wrote {out} ({num} samples, {sampler} on {on}, Stable unCLIP folder {directory} ({kind}), embedding from "
          f"{source} at noise level {settings['noise_level']}, prompts {prompts}, guidance {scale_s:g} "
          f"({convention}))")
    return images_out


__all__ = ["add_stable_unclip_flags", "stable_unclip_options", "sample_stable_unclip"]
