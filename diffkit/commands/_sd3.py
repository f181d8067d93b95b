"""``diffkit sample --checkpoint SD3_FOLDER --prompt TEXT``: a Stable Diffusion 3 diffusers folder
(:mod:`diffkit.interop.sd3`) sampled with a diffkit sampler, dispatched from
:func:`diffkit.commands.sample.sample_to_files`."""
from __future__ import annotations

from typing import Optional

from ..errors import DiffkitError


def pipeline_loop(sampler: str, spacing, final, nfe) -> bool:
    """True where ``--sampler ddim`` is given (or defaulted) without a grid (``--spacing``, ``@SPACING``,
    ``--final``, ``--nfe``): the folder's own FlowMatchEulerDiscreteScheduler sigmas, the pipeline's loop."""
    return sampler == "ddim" and spacing is None and final is None and nfe is None


_TAKES = {"SD3": "--prompt (-2, -3), --negative-prompt (-2, -3), --clip-skip, --max-sequence-length, "
                  "--guidance-scale, --apg-*, --slg-layers (sample), --controlnet (edit: with --mask), "
                  "--mask (edit; --padding-mask-crop with it), --lora, --ip-adapter (not with --slg-layers), "
                  "--pag-scale / --pag-layers / "
                  "--pag-adaptive-scale (not with --slg-layers, --controlnet, --ip-adapter, --mask), "
                  "--steps / --nfe, --sampler and its grid options",
          "FLUX": "--prompt (-2), --negative-prompt (-2) with --true-cfg-scale, --max-sequence-length, "
                  "--guidance-scale (the embedded guidance), --lora, --textual-inversion, --controlnet "
                  "(--control-mode: a union), --control-image (a Depth / Canny folder), --ip-adapter, --redux, "
                  "--mask (--padding-mask-crop with it), --strength, --steps, --sampler and its grid options",
          # (FLUX: diffkit edit's)
          "VisualCloze": "--example, --query, --task-prompt, --prompt (the content prompt), --resolution, "
                         "--max-sequence-length, --guidance-scale (the embedded guidance), --steps, --sampler and its "
                         "grid options, the upsampling stage's --strength, --height, --width (--generation-only), "
                         "--lora",
          "FLUX Kontext": "--images, --prompt (-2), --negative-prompt (-2) with --true-cfg-scale, "
                          "--max-sequence-length, --guidance-scale (the embedded guidance), --lora, "
                          "--textual-inversion, --height / --width / --max-area (the edit's size), --no-auto-resize, "
                          "--mask with --strength, --ip-adapter, --redux, --steps, --sampler and its grid "
                          "options"}  # (edit's, ._flux_kontext)


def prompted_rows(model, guidance, control, ip_adapter, num, nrow, seed: int, device, progress: bool,
                  prompts=None) -> tuple:
    """(controlnet, adapter, prompts, index, num, nrow, per_sample) of an SD3 / FLUX folder's ``diffkit sample``:
    the ControlNets and IP-Adapter loaded in the model's dtype, the grid's rows (:func:`~.sample.condition_rows`),
    each sample's prompt and, with a ControlNet, its control latents' seed (``seed + i``) and control image row.
    ``prompts``: the rows' instead of ``guidance``'s (FLUX.1 Redux: ``[None]``, one conditioning)."""
    from .sample import condition_rows
    controlnet = None if control is None else control.load(device, model.dtype, progress)
    adapter = None if ip_adapter is None else ip_adapter.load(device, model.dtype, progress)
    prompts = list(guidance.prompts) if prompts is None else prompts
    index, num, nrow = condition_rows(len(prompts), num, nrow or 8, "prompts of --prompt")
    per_sample = {"prompts": [prompts[i] for i in index.tolist()]}
    if controlnet is not None:  # sample i's control latents from seed + i; its prompt's control image
        per_sample["control_seeds"] = [seed + i for i in range(num)]
        if controlnet.per_prompt > 1:
            per_sample["control_rows"] = index.tolist()
    return controlnet, adapter, prompts, index, num, nrow, per_sample


def check_pag_flags(request, controlnet=None, ip_adapter=None, slg=None, mask=None) -> None:
    """``--pag-scale`` / ``--pag-layers`` / ``--pag-adaptive-scale`` of ``request`` (a
    :class:`~.sample.GuidanceRequest`) on an SD3 folder, before any weight is read: the options diffusers' SD3 PAG
    pipelines lack refused in one line (:func:`diffkit.interop.sd3_pag.check_sd3_pag`)."""
    from ..interop.sd3_pag import check_sd3_pag
    check_sd3_pag(request.pag_scale, request.pag_layers, request.pag_adaptive_scale, skip_layers=slg,
                  controlnet=controlnet, ip_adapter=ip_adapter, mask=mask)


def pag_options(request) -> dict:
    """``text_to_image`` / ``image_to_image``'s PAG keyword arguments of ``request`` ({} without --pag-scale)."""
    if not request.pag_scale:
        return {}
    return {"pag_scale": request.pag_scale, "pag_layers": request.pag_layers,
            "pag_adaptive_scale": request.pag_adaptive_scale}


def refused_flags(flags: dict, directory, kind: str = "SD3") -> None:
    """A one-line error for the first flag of ``flags`` ({flag: value}) that was given (not None / False);
    ``kind``: the folder's (``"SD3"``, or ``"FLUX"`` in ``diffkit edit``)."""
    given = [flag for flag, value in flags.items() if value is not None and value is not False]
    if given:
        raise DiffkitError(f"{given[0]} does not apply to {'an' if kind == 'SD3' else 'a'} {kind} folder "
                           f"({directory}); it takes {_TAKES[kind]}")


def refuse_other_edit_flags(args, allowed, directory, kind: str) -> None:
    """:func:`refused_flags` of every ``diffkit edit`` flag whose dest is not in ``allowed`` and differs from its
    default (a ``kind`` folder's edit: SD3, FLUX, FLUX Kontext, VisualCloze)."""
    from ..cli import build_parser
    defaults = vars(build_parser().parse_args(["edit", "--checkpoint", "x", "--out", "x"]))
    refused_flags({_FLAG_NAMES.get(dest, "--" + dest.replace("_", "-")): value != defaults[dest] or None
                   for dest, value in vars(args).items() if dest not in allowed and dest in defaults},
                  directory, kind)


def sample_sd3(directory, *, sampler="ddim", steps=None, nfe=None, num=None, nrow=None, out=None, individual=None,
               seed=0, device="cpu", batch_size="auto", spacing=None, final=None, scale=1, progress=True,
               guidance=None, refused: Optional[dict] = None, lora=None, height=None, width=None, control=None,
               ip_adapter=None, **options):
    """Sample an SD3 folder to a grid (and single PNGs): rows as :func:`~.sample.condition_rows`, sample i from
    ``seed + i`` (z at s = 1), classifier-free guidance against ``--negative-prompt`` (default "") with the
    pipeline's s = 7.0 by default (``--guidance-scale``), 28 steps. ``ddim`` without a grid option
    (:func:`pipeline_loop`) steps on the scheduler's own sigmas, which is StableDiffusion3Pipeline's
    FlowMatchEuler loop; any other sampler (or ddim with ``--spacing``) on its diffkit grid of the flow schedule.
    ``refused``: {flag: value} of ``diffkit sample`` flags an SD3 folder does not take (a one-line error for
    any given). Prompt encoding: ``--clip-skip``, ``--prompt-2`` / ``--prompt-3`` (once, or once per ``--prompt``),
    ``--negative-prompt-2`` / ``-3``, ``--max-sequence-length`` (:mod:`._sd_prompts`); ``lora``: diffusers / PEFT
    LoRA files, fused as the pipeline's ``load_lora_weights`` + ``fuse_lora``. ``height`` / ``width``: the images'
    size (default the folder's), the pipeline's. ``guidance.slg``: skip-layer guidance (``--slg-layers``,
    :mod:`._sd3_slg`), its window on the pipeline's ``steps``. ``control``: SD3 ControlNets (a
    :class:`~._controlnet.ControlRequest`), as StableDiffusion3ControlNetPipeline
    (:mod:`diffkit.interop.sd3_controlnet`; the control image resized to the images' size, sample i's control latents
    drawn from ``seed + i``). ``ip_adapter``: an SD3 IP-Adapter (a :class:`~._ip_adapter.IPAdapterRequest`), with
    ``control`` too (StableDiffusion3ControlNetPipeline's ``ip_adapter_image``); not with ``--slg-layers``.
    ``guidance.pag_scale`` / ``pag_layers`` / ``pag_adaptive_scale``: perturbed-attention guidance as
    StableDiffusion3PAGPipeline (:mod:`diffkit.interop.sd3_pag`; not with ``--slg-layers``, ``control`` or
    ``ip_adapter``: :func:`check_pag_flags`; with APG: its update, then PAG's term)."""
    from ..interop.sd3 import SD3_PIPELINE_GUIDANCE, SD3_PIPELINE_STEPS, load_sd3, text_to_image
    from .sample import GuidanceRequest, draw_prompted_grid
    from ._sd3_slg import check_slg_steps
    from ._sd_prompts import check_prompt_encoding, sd3_prompt_options

    guidance = guidance or GuidanceRequest()
    if options.get("refiner") is not None:
        raise DiffkitError(f"--refiner applies to SD-XL folders; {directory} is an SD3 folder")
    options.pop("refiner", None)
    flags = dict(refused or {})
    flags.update({"--class": guidance.classes, "--classifier": guidance.classifier,
                  "--guidance-rescale": guidance.rescale or None, "--guidance-interval": guidance.interval,
                  "--clip-guidance": guidance.clip_prompt, "--pag-interval": guidance.pag_interval,
                  "--thresholding": options.get("thresholding")})
    refused_flags(flags, directory)
    if ip_adapter is not None and guidance.slg:
        from ..interop.sd3 import NO_SLG_IP
        raise DiffkitError("--ip-adapter with --slg-layers is not supported on an SD3 folder: "
                           + NO_SLG_IP.split(": ", 1)[1])
    if not guidance.prompts:
        raise DiffkitError(f"{directory} is an SD3 folder: give --prompt TEXT (repeat for one row per prompt)")
    check_pag_flags(guidance, controlnet=control, ip_adapter=ip_adapter, slg=guidance.slg)
    check_prompt_encoding(guidance, directory)  # --clip-skip, --prompt-2 / -3: counts and layers, from the JSON
    check_inpainting_transformer(directory)  # a 33-channel transformer only inpaints
    check_slg_steps(guidance.slg, steps, SD3_PIPELINE_GUIDANCE if guidance.guidance_scale is None else
                    guidance.guidance_scale, "diffusers" if guidance.guidance_scale is None else guidance.convention)
    sd3 = load_sd3(directory, device, progress=progress, lora=lora)
    controlnet, adapter, prompts, index, num, nrow, per_sample = prompted_rows(
        sd3, guidance, control, ip_adapter, num, nrow, seed, device, progress)
    for key in ("prompts_2", "prompts_3"):  # given once per --prompt: each sample's own
        rows = getattr(guidance, key)
        if rows is not None and len(rows) > 1:
            per_sample[key] = [rows[i] for i in index.tolist()]
    scale_w, convention = (sd3.default_guidance_scale, "diffusers") if guidance.guidance_scale is None else \
        (guidance.guidance_scale, guidance.convention)
    own = pipeline_loop(sampler, spacing, final, nfe)
    steps = SD3_PIPELINE_STEPS if steps is None and nfe is None else steps

    def prompted(_, noise, sampler, steps, *, cond, spacing=None, final=None, nfe=None, **how):
        grid = {"grid": "scheduler"} if own and pipeline_loop(sampler, spacing, final, nfe) else \
            {"spacing": spacing, "final": final, "nfe": nfe}
        control = {} if controlnet is None else {"controlnet": controlnet, "control_seed": cond["control_seeds"][0],
                                                 "control_rows": cond.get("control_rows")}
        return text_to_image(sd3, cond["prompts"], sampler=sampler, steps=steps, guidance_scale=scale_w,
                             convention=convention, negative_prompt=guidance.negative_prompt, seed=None,
                             latents=noise, return_latents=True, ip_adapter=adapter, **grid, **how,
                             **(guidance.slg or {}), **control, **guidance.apg_options(), **pag_options(guidance),
                             **sd3_prompt_options(guidance, cond.get("prompts_2"), cond.get("prompts_3")))

    images, out = draw_prompted_grid(
        sd3.denoiser, num, sd3.latent_shape(1, height, width)[1:], prompted,
        per_sample,
        sd3.decode, out, individual, nrow, scale, seed=seed, sampler=sampler, steps=steps, nfe=nfe, spacing=spacing,
        final=final, batch_size=batch_size, device=device, dtype=sd3.dtype, progress=progress, **options)
    grid = "the scheduler's sigmas" if own else "its diffkit grid"
    print(f"wrote {out} ({num} samples, {sampler} on {grid}, SD3 folder {directory}, prompts {prompts})")
    return images


EDIT_FLAGS = {  # diffkit edit's dests an SD3 folder takes (the rest must stay at their defaults)
    "command", "func", "checkpoint", "images", "out", "prompts", "negative_prompt", "prompts_2", "negative_prompt_2",
    "prompts_3", "negative_prompt_3", "clip_skip", "max_sequence_length", "strength", "sampler", "steps", "spacing",
    "final", "eta", "guidance_scale", "guidance_convention", "posterior", "seed", "batch_size", "device", "lora",
    "progress", "mask", "controlnets", "control_images", "controlnet_scales", "control_starts", "control_ends",
    "guess_mode", "height", "width", "ip_adapter", "ip_adapter_image", "image_encoder",
    "negative_ip_adapter_image",  # (the ControlNet / IP-Adapter flags: their requests' and edit_sd3's checks)
    "apg_eta", "apg_norm_threshold", "apg_momentum",  # adaptive projected guidance, as diffkit sample's
    "pag_scale", "pag_layers", "pag_adaptive_scale",  # perturbed-attention guidance (img2img), as diffkit sample's
    "padding_mask_crop"}  # (.interop.mask_crop: checked by diffkit edit first)
FLUX_EDIT_FLAGS = EDIT_FLAGS - {"prompts_3", "negative_prompt_3", "clip_skip", "guidance_convention", "apg_eta",
                                "apg_norm_threshold", "apg_momentum", "pag_scale", "pag_layers",
                                "pag_adaptive_scale"} | {
    "true_cfg_scale", "control_modes", "textual_inversion",  # and a FLUX folder's (a Union's --control-mode,
    "redux", "redux_images", "redux_prompt_scales", "redux_pooled_scales"}  # FLUX.1 Redux's)
_FLAG_NAMES = {"class_id": "--class", "prompts": "--prompt", "prompts_2": "--prompt-2", "prompts_3": "--prompt-3",
               "controlnets": "--controlnet", "ema": "--no-ema",
               "control_images": "--control-image", "controlnet_scales": "--controlnet-scale",
               "control_starts": "--control-guidance-start", "control_ends": "--control-guidance-end",
               "control_modes": "--control-mode"}


def check_inpainting_transformer(directory, mask=None, controlnets=None) -> None:
    """An SD3 folder with a 33-channel inpainting transformer (:attr:`~diffkit.interop.sd3.StableDiffusion3.
    inpainting_unet`, read from its config) only inpaints: ``diffkit edit --mask`` without ``--controlnet``; one
    line, before any weight is read, otherwise."""
    from ..interop.sd_inpaint import is_inpainting_folder
    if not is_inpainting_folder(directory, "transformer"):
        return
    what = f"{directory} has an inpainting transformer (33 input channels: latents + mask + masked-image latents)"
    if mask is None:
        raise DiffkitError(f"{what}: it only inpaints; give --mask PNG (white = repaint) to diffkit edit --images")
    if controlnets:
        raise DiffkitError(f"{what}: --controlnet does not apply (StableDiffusion3ControlNetInpaintingPipeline takes a "
                           f"16-channel transformer)")


def check_sd3_inpainting_flags(args) -> None:
    """``diffkit edit --controlnet`` on an SD3 folder: an inpainting ControlNet with ``--mask``, whose control
    images are the ``--images`` (StableDiffusion3ControlNetInpaintingPipeline); one line otherwise."""
    if args.mask is None:
        raise DiffkitError("--controlnet on an SD3 folder in diffkit edit goes with --mask (an inpainting ControlNet, "
                           "StableDiffusion3ControlNetInpaintingPipeline; diffusers has no SD3 ControlNet img2img)")
    if args.control_images:
        raise DiffkitError("--control-image does not apply to an SD3 inpainting ControlNet: its control images are "
                           "the --images")
    if args.strength is not None:
        raise DiffkitError(f"--strength {args.strength} does not apply to an SD3 inpainting ControlNet: "
                           f"StableDiffusion3ControlNetInpaintingPipeline samples from noise")


def check_edit_ip_adapter(ip_adapter, args, flux: bool) -> None:
    """``diffkit edit --ip-adapter`` on an SD3 / FLUX folder: on FLUX not with ``--controlnet`` (diffusers 0.42.1's
    ControlNet img2img / inpainting pipelines take no ``ip_adapter_image``; SD3's inpainting ControlNet pipeline
    does), ``--negative-ip-adapter-image`` only with true CFG; one line, before any weight."""
    if ip_adapter is None:
        return
    if args.controlnets and flux:
        from ..interop.flux import NO_EDIT_CONTROLNET_IP
        raise DiffkitError("--ip-adapter with --controlnet in diffkit edit: " + NO_EDIT_CONTROLNET_IP.split(": ", 1)[1])
    if ip_adapter.negative_image is not None and not (args.true_cfg_scale or 0) > 1:
        raise DiffkitError("--negative-ip-adapter-image feeds only true CFG's negative pass; give --true-cfg-scale "
                           "> 1 with --negative-prompt, or drop it")


def edit_sampling(args, directory, prompts: bool = True) -> tuple:
    """(sampler info, whether it is the pipeline's own loop, its options, the prompt request) of ``diffkit edit``
    on a flow folder (SD3, FLUX.1, FLUX.1 Kontext): ``--sampler`` (not adaptive) with its grid flags and ``--eta``,
    the prompt flags checked against the folder (one line each, before loading); ``prompts=False``: no request
    (a VisualCloze folder's prompts are its own flags)."""
    from ..sampling import check_eta, resolve_sampler
    from ._sd_prompts import check_prompt_encoding
    from .edit import _prompt_request
    info, spacing, final = resolve_sampler(args.sampler or "ddim", args.spacing, args.final)
    info.check_not_adaptive("diffkit edit")
    check_eta(info.name, args.eta)
    own = pipeline_loop(info.name, spacing, final, None)
    options = {key: value for key, value in (("eta", args.eta), ("spacing", spacing), ("final", final))
               if value is not None}
    if not prompts:
        return info, own, options, None
    request = _prompt_request(args, info.name)
    check_prompt_encoding(request, directory)
    return info, own, options, request


def edit_sd3(args, flux: bool = False) -> int:
    """``diffkit edit --checkpoint SD3_FOLDER --images ... --prompt ...``: img2img as StableDiffusion3Img2ImgPipeline,
    with ``--mask`` inpainting as StableDiffusion3InpaintPipeline (:func:`diffkit.interop.sd3.image_to_image`: their
    0.6 strength, 50 steps and s = 7.0 by default; ``ddim`` without a grid option on the scheduler's sigmas cut by
    get_timesteps, another sampler on its own grid), image i from ``--seed`` + i (the posterior sample, then the
    noise); the prompt flags, ``--apg-*`` (adaptive projected
    guidance) and ``--lora`` as :func:`sample_sd3`. Every other edit flag: one line, before any
    weight is read or any folder is made. ``flux``: a FLUX.1 folder, img2img as FluxImg2ImgPipeline and with
    ``--mask`` inpainting as FluxInpaintPipeline (:func:`diffkit.interop.flux.image_to_image`: strength 0.6, 28 steps,
    the embedded guidance 7.0 by default; true CFG with ``--true-cfg-scale`` and ``--negative-prompt``;
    :data:`FLUX_EDIT_FLAGS`); a FLUX.1 Fill folder takes ``--mask`` only, as FluxFillPipeline (strength 1, 50 steps,
    the embedded guidance 30 by default; :mod:`diffkit.interop.flux_channels`); a FLUX.1 Depth / Canny folder takes
    ``--control-image PNG|DIR`` (a folder: one per --images file) without ``--controlnet``, as
    FluxControlImg2ImgPipeline / with ``--mask`` FluxControlInpaintPipeline (FluxImg2ImgPipeline's defaults);
    ``--controlnet DIR --control-image PNG|DIR`` (and its flags, :mod:`._controlnet`) as
    FluxControlNetImg2ImgPipeline / FluxControlNetInpaintPipeline
    (:func:`diffkit.interop.flux_controlnet.edit_guidance`: image i's control posterior drawn first from its seed; a
    --control-image folder: one per --images file). An SD3 folder with ``--mask --controlnet`` (an inpainting
    ControlNet, :func:`check_sd3_inpainting_flags`): StableDiffusion3ControlNetInpaintingPipeline, which samples from
    noise with the ``--images`` as control images (:func:`diffkit.interop.sd3.text_to_image`'s ``control_mask``).
    ``--ip-adapter FILE[:SCALE] --ip-adapter-image PNG`` (:class:`._ip_adapter.IPAdapterRequest`; FLUX: and
    ``--negative-ip-adapter-image`` with true CFG): the image prompt of the pipelines' ``ip_adapter_image`` (SD3's
    inpainting ControlNet pipeline's too; not with a FLUX ``--controlnet``). ``--pag-scale`` (``--pag-layers``,
    ``--pag-adaptive-scale``) on an SD3 folder: img2img as StableDiffusion3PAGImg2ImgPipeline
    (:mod:`diffkit.interop.sd3_pag`; not with ``--mask``, ``--controlnet``, ``--ip-adapter``; ``--apg-*`` goes with
    it). ``--redux DIR --redux-image PNG`` on a FLUX.1 folder (:class:`._flux_redux.ReduxRequest`): FLUX.1 Redux's
    embeddings as every image's prompt (``image_to_image(prompt_embeds=)``; not with true CFG there)."""
    import torch

    from ..config import resolve_device
    from ..images import check_image_folder, save_images
    from ..interop import flux as flux_module, sd3 as sd3_module
    from ..memory import batches_with_oom_retry
    from ._common import check_writable_dir, missing_dirs, removed_if_empty_on_failure
    from ._flux_redux import ReduxRequest, redux_text
    from ._ip_adapter import IPAdapterRequest
    from ._sd_prompts import flux_prompt_options, sd3_prompt_options
    from .edit import read_edit_inputs
    from ..interop.mask_crop import overlaid_edits

    directory, kind, module = args.checkpoint, "FLUX" if flux else "SD3", flux_module if flux else sd3_module
    refuse_other_edit_flags(args, FLUX_EDIT_FLAGS if flux else EDIT_FLAGS, directory, kind)
    redux = ReduxRequest.from_args(args, directory, edit=True) if flux else None  # FLUX.1 Redux (._flux_redux)
    if args.images is None or not (args.prompts or redux):
        raise DiffkitError(f"{directory} is a{'n' * (not flux)} {kind} folder: give --images PNG|DIR and --prompt "
                           f"TEXT (once for every image, or once per image)")
    if args.batch_size == "auto":
        raise DiffkitError("--batch-size auto goes with --series; give the images per batch (default 16)")
    info, own, options, request = edit_sampling(args, directory)
    variant = None
    if not flux:
        check_inpainting_transformer(directory, args.mask, args.controlnets)
    else:  # FLUX.1 Fill: --mask only, as FluxFillPipeline; Depth / Canny: --control-image (interop.flux_channels)
        from ..interop.flux_channels import FLUX_CONTROL, check_variant_options, folder_variant
        variant = folder_variant(directory)
        check_variant_options(variant, args.mask, args.control_images if variant == FLUX_CONTROL else None,
                              args.controlnets, args.ip_adapter, args.negative_prompt, edit=True)
    images, files, mask = read_edit_inputs(args)  # --height / --width: resized as the pipelines' processors do
    if args.height is None and args.width is None:  # the images' own size: its multiple and limit hint the flags
        from ._image_size import edit_size
        edit_size(directory, None, None, files[0])
    count = len(files)
    ip_adapter = IPAdapterRequest.from_args(args, directory)
    check_edit_ip_adapter(ip_adapter, args, flux)
    if not flux:  # --pag-scale: img2img only, as StableDiffusion3PAGImg2ImgPipeline
        check_pag_flags(request, controlnet=args.controlnets or None, ip_adapter=ip_adapter, mask=args.mask)
    control = inpainting_controlnet = control_image = None
    if args.controlnets:  # FLUX: img2img / inpainting ControlNets; SD3: inpainting ControlNets, the images theirs
        from ._controlnet import ControlRequest
        if not flux:
            check_sd3_inpainting_flags(args)
            args.control_images, inpainting_controlnet = [args.images] * len(args.controlnets), True
        control = ControlRequest.from_args(args, directory, edited=count)
        if flux:
            from ..interop.flux_controlnet import check_edit_controlnet
            check_edit_controlnet(args.negative_prompt)
    else:  # --control-image / --controlnet-scale / ... without --controlnet: one line (they were ignored), but
        from ._controlnet import ControlRequest  # a FLUX.1 Depth / Canny folder's own --control-image
        own_image = ControlRequest.from_args(args, directory, edited=count)
        control_image = None if own_image is None else own_image.images[0]
    for flag, rows in (("--prompt", args.prompts), ("--prompt-2", args.prompts_2), ("--prompt-3", args.prompts_3)):
        if rows is not None and len(rows) not in (1, count) and redux is None:  # Redux: --redux-image's (checked)
            raise DiffkitError(f"{flag} is given {len(rows)} times for {count} images; give it once (every image) "
                               f"or once per image ({count}, in the files' order)")
    out = args.out
    new_dirs = missing_dirs(out)
    device = resolve_device(args.device)
    sd3 = module.load_flux(directory, device, progress=args.progress, lora=args.lora,
                           textual_inversion=args.textual_inversion) if flux else \
        module.load_sd3(directory, device, progress=args.progress, lora=args.lora)
    sd3.latent_shape(1, images.shape[2], images.shape[3])  # the images' size fits the VAE and patches
    if flux:
        sd3.check_guidance_scale(args.guidance_scale)
    embeds = None if redux is None else redux.embeds(sd3, request, device, args.progress)  # every image's prompt
    controlnet = None if control is None else control.load(device, sd3.dtype, args.progress)
    adapter = None if ip_adapter is None else ip_adapter.load(device, sd3.dtype, args.progress)
    check_writable_dir(out)
    check_image_folder(out, count, prefix="edit")
    scale, convention = (None, "diffusers") if args.guidance_scale is None else \
        (args.guidance_scale, args.guidance_convention)
    strength = (module.FLUX_IMG2IMG_STRENGTH if flux else module.SD3_IMG2IMG_STRENGTH) if args.strength is None \
        else args.strength
    if variant is not None and args.strength is None:  # FLUX.1 Fill: FluxFillPipeline's strength 1
        from ..interop.flux_channels import FLUX_FILL, FLUX_FILL_STRENGTH
        strength = FLUX_FILL_STRENGTH if variant == FLUX_FILL else strength

    def rows(values, start, n):  # one for every image, or image start..start + n - 1's own
        return None if values is None else values[:1] if len(values) == 1 else values[start:start + n]

    def edit(start: int, n: int):
        prompts = None if embeds is not None else rows(args.prompts, start, n) * (n if len(args.prompts) == 1 else 1)
        own_rows = [None if r is None or len(r) == 1 else r for r in (
            rows(args.prompts_2, start, n), rows(args.prompts_3, start, n))]
        control_rows = list(range(start, start + n)) if controlnet is not None and controlnet.per_prompt > 1 else None
        if inpainting_controlnet:  # StableDiffusion3ControlNetInpaintingPipeline: from noise, the images controlling
            return (sd3_module.text_to_image(
                sd3, prompts, sampler=None if own else info.name, steps=args.steps, guidance_scale=scale,
                convention=convention, negative_prompt=args.negative_prompt, seed=args.seed + start,
                height=images.shape[2], width=images.shape[3], output_range="-1,1", progress=args.progress,
                controlnet=controlnet, control_seed=args.seed + start, control_rows=control_rows,
                control_posterior=args.posterior or "sample", control_mask=mask, ip_adapter=adapter,
                **sd3_prompt_options(request, *own_rows), **request.apg_options(), **({} if own else options)).cpu(),)
        how_control = {"controlnet": controlnet, "control_rows": control_rows}  # a --control-image folder: image i's
        if control_image is not None:  # FLUX.1 Depth / Canny (interop.flux_channels): image i's control image
            per_image = isinstance(control_image, list)
            how_control = {"control_image": control_image, "control_rows": list(range(start, start + n)) if per_image
                           else None}
        text = flux_prompt_options(request, own_rows[0]) if flux else None
        text = text if embeds is None else redux_text(embeds, text)  # FLUX.1 Redux's prompt
        how = {"mask": mask, "guidance_scale": scale, **text} if flux else {
            "mask": mask, "guidance_scale": scale, "convention": convention, "negative_prompt": args.negative_prompt,
            **sd3_prompt_options(request, *own_rows), **request.apg_options(), **pag_options(request)}
        edited = module.image_to_image(sd3, images[start:start + n], prompts, strength,
                                       sampler=None if own else info.name, steps=args.steps,
                                       posterior=args.posterior or "sample", seed=args.seed + start,
                                       output_range="-1,1", progress=args.progress, ip_adapter=adapter, **how,
                                       **({} if own else options),
                                       **(how_control if controlnet or control_image else {}))
        return (edited.cpu(),)

    with removed_if_empty_on_failure(new_dirs):  # a batch out of memory is halved and redrawn (seed + i)
        results = [edited for _, edited in batches_with_oom_retry(edit, count, args.batch_size or 16)]
        save_images(overlaid_edits(args, files, torch.cat(results)), out, prefix="edit")  # --padding-mask-crop
    how = "the scheduler's sigmas" if own else f"{info.name} on its diffkit grid"
    print(f"wrote {count} {'inpainted' if mask is not None else 'edited'} images to {out} (edit_00000.png ...; "
          f"{kind} folder {directory}, "
          f"{'an inpainting ControlNet, from noise' if inpainting_controlnet else f'strength {strength}'}, "
          f"{how}, prompts {list(args.prompts or [])})")
    return 0
