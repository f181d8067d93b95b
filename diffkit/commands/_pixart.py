"""``diffkit sample --checkpoint PIXART_FOLDER --prompt TEXT``: a PixArt-α / PixArt-Σ diffusers folder
(:mod:`diffkit.interop.pixart`), or a Sana one (:mod:`diffkit.interop.sana`, the same path), sampled with a diffkit
sampler, dispatched from :func:`diffkit.commands.sample.sample_to_files`."""
from __future__ import annotations

from typing import Optional

from ..errors import DiffkitError

TAKES = ("--prompt, --negative-prompt, --guidance-scale (--guidance-convention), --max-sequence-length, --height / "
         "--width, --steps / --nfe, --sampler and its grid options")

# folders whose diffusers pipeline has a LoRA loader
LORA_KINDS = ("Sana", "Lumina2", "AuraFlow", "CogView4", "HiDream", "Kandinsky 5")
# flow-matching folders whose scheduler's step is folder_sampler(flow=True)'s
FLOW_KINDS = ("Sana", "Lumina2", "AuraFlow", "CogView4", "Lumina-Next", "PRX", "Kandinsky 5")
HUNYUAN_TAKES = TAKES.replace("--max-sequence-length", "--guidance-rescale, --pag-scale (--pag-layers, "
                              "--pag-adaptive-scale)")


def articled(message: str) -> str:
    """``message`` with "a AuraFlow" / "a Ovis-Image" / "a OmniGen" / "a ERNIE-Image" / "a Ideogram 4" made "an ..."
    (the folder kinds' messages read "a {kind} folder")."""
    for kind in ("AuraFlow", "Ovis-Image", "OmniGen", "ERNIE-Image", "Ideogram 4"):
        message = message.replace(f" a {kind} ", f" an {kind} ")
    return message


# kinds whose scheduler's step is their own module's folder_sampler (DDPMScheduler: ddpm; HiDream's flow UniPC: unipc)
OWN_FOLDER_SAMPLER = {"DeepFloyd IF": "deepfloyd_if", "HunyuanDiT": "hunyuan_dit", "HiDream": "hidream",
                      "Kandinsky 3": "kandinsky3"}


def folder_default_sampler(checkpoint) -> str:
    """The sampler ``diffkit sample`` defaults to on a PixArt-family folder: the one computing its scheduler's step
    (:func:`~diffkit.interop.pixart.folder_sampler`, or the kind's own in :data:`OWN_FOLDER_SAMPLER`, from the JSON;
    one line where there is none)."""
    import importlib
    from pathlib import Path

    from ..errors import read_json_object
    from ..interop.pixart import folder_sampler, masked_text_folder
    from ..interop.sana import SANA_SPRINT_PIPELINE, sana_kind
    if sana_kind(checkpoint) == SANA_SPRINT_PIPELINE:
        return "consistency"  # SCMScheduler's step (diffkit.interop.sana_sprint)
    kind = masked_text_folder(checkpoint)
    if kind == "CogView3Plus":
        return "ddim"  # CogVideoXDDIMScheduler's step (diffkit.interop.cogview3plus)
    config = read_json_object(Path(checkpoint) / "scheduler" / "scheduler_config.json", "scheduler config")
    if kind in OWN_FOLDER_SAMPLER:
        return importlib.import_module(f"diffkit.interop.{OWN_FOLDER_SAMPLER[kind]}").folder_sampler(config)[0]
    return folder_sampler(config, flow=kind in FLOW_KINDS)[0]


def control_image_of(directory, label: str, control):
    """A CogView4 Control folder's ``--control-image`` (the transformer's, from the ``control`` request without
    folders, :meth:`._controlnet.ControlRequest.transformer_image`); None for other folders. Such a
    folder without one: one line, before any weight is read."""
    if label != "CogView4":
        return None
    from ..interop.cogview4 import COGVIEW4_CONTROL_PIPELINE, CONTROL_WHAT
    from ..interop.sd_xl import pipeline_class
    if pipeline_class(directory) != COGVIEW4_CONTROL_PIPELINE:
        return None
    if control is None or control.folders:
        raise DiffkitError(f"{directory} is {CONTROL_WHAT}: give --control-image PNG (no --controlnet)")
    return control.images[0]


def given_flags(guidance, options: dict, refused: Optional[dict] = None,
                keys=("refiner", "t2i_adapter", "redux", "thresholding", "flow_shift"), allowed=()) -> list:
    """The ``diffkit sample`` flags given that a one-T5-encoder CFG folder (PixArt, Chroma: ``--prompt``,
    ``--negative-prompt``, ``--guidance-scale``) does not take: those of ``refused`` ({flag: value}), of
    ``options`` under ``keys`` (popped), and the guidance flags of another kind (``--class``, ``--pag-scale``, ...)
    but those ``allowed`` (a HunyuanDiT folder's ``--guidance-rescale``, ``--pag-scale``)."""
    from .sample import GuidanceRequest
    flags = dict(refused or {})
    for key in keys:
        flags["--" + key.replace("_", "-")] = options.pop(key, None)
    flags.update({"--class": guidance.classes, "--classifier": guidance.classifier,
                  "--guidance-rescale": guidance.rescale or None, "--guidance-interval": guidance.interval,
                  "--clip-guidance": guidance.clip_prompt, "--pag-scale": guidance.pag_scale,
                  "--slg-layers": guidance.slg, **{flag: value for flag, value in zip(GuidanceRequest.APG_FLAGS, (
                      guidance.apg_eta, guidance.apg_norm_threshold, guidance.apg_momentum))}})
    return [flag for flag, value in flags.items() if value is not None and value is not False and flag not in allowed]


def pag_options(directory, guidance) -> tuple:
    """(``guidance`` without its PAG flags, ``text_to_image``'s PAG options) of ``--pag-scale`` (``--pag-layers``,
    ``--pag-adaptive-scale``) on a PixArt-Σ or Sana folder (:mod:`diffkit.interop.pixart_pag`, checked here before
    any weight is read); (``guidance``, {}) without ``--pag-scale``. One line for ``--pag-scale`` on a folder
    diffusers has no PAG pipeline for, and for ``--pag-interval`` (the PAG pipelines have none)."""
    import dataclasses
    if guidance is None or not guidance.pag_scale:
        return guidance, {}
    from ..interop.pixart_pag import check_pixart_pag, pag_pipeline
    from ..interop.sd_xl import pipeline_class
    pipeline = pipeline_class(directory)
    pag_pipeline(pipeline)
    if guidance.pag_interval is not None:
        raise DiffkitError(f"--pag-interval does not apply to a {pipeline} folder ({directory}): "
                           f"{pag_pipeline(pipeline)[0]} has none; give --pag-scale, --pag-layers, "
                           f"--pag-adaptive-scale")
    pag = {"pag_scale": guidance.pag_scale, "pag_layers": guidance.pag_layers,
           "pag_adaptive_scale": guidance.pag_adaptive_scale}
    check_pixart_pag(pipeline, *pag.values())
    return dataclasses.replace(guidance, pag_scale=None, pag_layers=None, pag_adaptive_scale=None), pag


def checked_request(directory, kind: str, takes: str, guidance, options: dict, refused: Optional[dict] = None,
                    **keys):
    """``guidance`` (default an empty request) of a one-T5-encoder CFG folder (``kind``: PixArt, Chroma) that takes
    ``takes``: one line for the first flag :func:`given_flags` finds (``keys``: its), or for no ``--prompt``."""
    from .sample import GuidanceRequest
    guidance = guidance or GuidanceRequest()
    given = given_flags(guidance, options, refused, **keys)
    if given:
        raise DiffkitError(articled(f"{given[0]} does not apply to a {kind} folder ({directory}); it takes {takes}"))
    if not guidance.prompts:
        raise DiffkitError(articled(f"{directory} is a {kind} folder: give --prompt TEXT (repeat for one row per "
                                    f"prompt)"))
    return guidance


def own_loop(folder, sampler: str, spacing, final, nfe, options: dict) -> tuple:
    """(own grid, options): without a grid option (``--spacing``, ``@SPACING``, ``--final``, ``--nfe``) every sampler
    runs on the folder's scheduler's timesteps, and where ``sampler`` is ``folder.folder_sampler()``'s the pipeline's
    loop takes that scheduler's options too (solver_type, lower_order_final)."""
    from ..samplers.registry import split_sampler_spec
    own_grid = uses_own_grid(sampler, spacing, final, nfe)
    own_sampler, own_options = folder.folder_sampler() if own_grid else (None, {})
    return own_grid, ({**own_options, **options} if split_sampler_spec(sampler)[0] == own_sampler else options)


def uses_own_grid(sampler: str, spacing, final, nfe) -> bool:
    """True where no grid option is given (``--spacing``, ``@SPACING`` in ``sampler``, ``--final``, ``--nfe``): a
    diffusers folder's sampler then runs on its scheduler's timesteps."""
    from ..samplers.registry import split_sampler_spec
    return spacing is None and split_sampler_spec(sampler)[1] is None and final is None and nfe is None


def sample_pixart(directory, *, sampler=None, steps=None, nfe=None, num=None, nrow=None, out=None, individual=None,
                  seed=0, device="cpu", batch_size="auto", spacing=None, final=None, scale=1, progress=True,
                  guidance=None, refused: Optional[dict] = None, height=None, width=None, lora=None, control=None,
                  **options):
    """Sample a PixArt folder to a grid (and single PNGs): rows as :func:`~.sample.condition_rows`, sample i from
    ``seed + i`` (z_T), classifier-free guidance against ``--negative-prompt`` (default "") with the pipelines' s =
    4.5 by default, 20 steps. Without a grid option (``--spacing``, ``@SPACING``, ``--final``, ``--nfe``) every
    sampler runs on the folder's scheduler's timesteps, and the default sampler
    (:func:`folder_default_sampler`: ``dpm-solver++-2m`` for PixArt's DPMSolverMultistepScheduler) with that
    scheduler's options is the pipeline's loop. ``refused``: {flag: value} of ``diffkit sample`` flags a PixArt
    folder does not take (a one-line error for the first given). ``lora``: LoRA files of a Sana, Lumina2,
    AuraFlow, CogView4, Kandinsky 5 (:mod:`diffkit.interop.sana_lora`) or HiDream (:mod:`diffkit.interop.hidream_lora`)
    folder (PixArt: refused). A HunyuanDiT folder
    (:mod:`diffkit.interop.hunyuan_dit`) also takes ``--guidance-rescale`` and ``--pag-scale`` (``--pag-layers``,
    ``--pag-adaptive-scale``; HunyuanDiTPAGPipeline), its default sampler ``ddpm`` (DDPMScheduler). A HiDream-I1
    folder (:mod:`diffkit.interop.hidream`): its four text encoders, s = 5, 50 steps, ``ddim`` (FlowMatchEuler) or
    ``unipc`` (flow UniPC) on its scheduler's sigmas, sizes at its one area. A Sana Sprint
    folder: ``--guidance-scale`` is its guidance embedding, 2 steps of ``consistency`` on its SCMScheduler's thetas
    (:mod:`diffkit.interop.sana_sprint`). ``control``: a Sana folder's ControlNet (a
    :class:`~._controlnet.ControlRequest` of one ``SanaControlNetModel``), as SanaControlNetPipeline
    (:mod:`diffkit.interop.sana_controlnet`; a --control-image folder: one per --prompt), a HunyuanDiT folder's
    (one or more ``HunyuanDiT2DControlNetModel``, :mod:`diffkit.interop.hunyuan_dit_controlnet`: sample i's control
    posterior from ``seed + i``); a CogView4 Control
    folder's --control-image (no ControlNet folder: the transformer's own channels). HunyuanDiT and CogView4 /
    CogView3-Plus folders: their pipelines' size conditions (``guidance.sizes``, :mod:`._size_conditions`)."""
    from ..interop.pixart import masked_text_folder
    from ._sd3 import prompted_rows
    from .sample import draw_prompted_grid

    label = masked_text_folder(directory) or "PixArt"
    if label == "Kandinsky 5":  # a Kandinsky5I2IPipeline folder edits (diffkit edit, ._kandinsky5): one line
        from ._kandinsky5 import refuse_sample
        refuse_sample(directory)
    image = control_image_of(directory, label, control)  # a CogView4 Control folder's --control-image
    if image is not None:
        control = None  # the transformer's own channels, no ControlNet
    from ..interop.sana import SANA_SPRINT_PIPELINE, sana_kind
    sprint = sana_kind(directory) == SANA_SPRINT_PIPELINE  # guidance-distilled: no negative prompt
    hunyuan = label == "HunyuanDiT"  # HunyuanDiTPipeline: fixed prompt lengths, guidance rescale, PAG
    from ._size_conditions import FLAGS as SIZE_FLAGS, KINDS as SIZE_KINDS, check_size_conditions
    sizes = getattr(guidance, "sizes", None) or {}  # HunyuanDiT / CogView: --original-size, ... (their pipelines')
    check_size_conditions(sizes, directory, label)
    lumina_next = label == "Lumina-Next"  # LuminaPipeline: no --max-sequence-length (its batch's longest prompt)
    from ..interop.prx_pixel import is_prx_pixel_folder
    pixel = label == "PRX" and is_prx_pixel_folder(directory)  # PRXPixelPipeline: its fixed prompt_max_tokens
    takes = (TAKES.replace("--negative-prompt, ", "") if sprint else HUNYUAN_TAKES if hunyuan else
             TAKES.replace(", --max-sequence-length", "") if lumina_next or pixel else TAKES) + \
        (", --lora" if label in LORA_KINDS else "") + \
        (", --controlnet (--control-image, --controlnet-scale)" if (label == "Sana" and not sprint) or hunyuan
         else "") + \
        (", --control-image" if image is not None else "") + \
        "".join(f", {SIZE_FLAGS[name]}" for name in SIZE_KINDS.get(label, ()))
    more = {"--negative-prompt": getattr(guidance, "negative_prompt", None)} if sprint else \
        {} if label in LORA_KINDS else {"--lora": lora}
    if hunyuan or lumina_next or pixel:
        more["--max-sequence-length"] = getattr(guidance, "max_sequence_length", None)
    if hunyuan:
        more["--pag-interval"] = getattr(guidance, "pag_interval", None)
    # --pag-scale: PixArt-Σ / Sana (diffkit.interop.pixart_pag); HunyuanDiT's below (._sd3.pag_options)
    guidance, pag = (guidance, {}) if hunyuan else pag_options(directory, guidance)
    if pag:
        takes += ", --pag-scale (--pag-layers, --pag-adaptive-scale)"
    if control is not None and hunyuan:  # HunyuanDiTControlNetPipeline's ControlNet(s), no window, no PAG
        from ..interop.hunyuan_dit_controlnet import check_hunyuan_control_options
        from ..interop.sana_controlnet import check_no_pag
        check_hunyuan_control_options(len(control.folders), control.starts, control.ends, control.guess_mode)
        check_no_pag(control, getattr(guidance, "pag_scale", None), "HunyuanDiT")
    elif control is not None:  # SanaControlNetPipeline's one ControlNet, no window (before any weight is read)
        from ..interop.sana_controlnet import check_no_pag, check_sana_control_options
        check_sana_control_options(len(control.folders), control.starts, control.ends, control.guess_mode)
        check_no_pag(control, (pag or {}).get("pag_scale"))
    guidance = checked_request(directory, "Sana Sprint" if sprint else label, takes, guidance, options,
                               {**(refused or {}), **more},
                               allowed=("--guidance-rescale", "--pag-scale") if hunyuan else ())
    extra = {}  # the kind's own options: Lumina2's CFG (--cfg-trunc-ratio, ...), HunyuanDiT's rescale and PAG,
    # CogView4 Control's --control-image
    if label == "Sana":
        from ..interop.sana import load_sana, text_to_image
        pixart = load_sana(directory, device, progress=progress, lora=lora)
    elif label == "Lumina2":
        from ..interop.lumina2 import load_lumina2, text_to_image
        pixart = load_lumina2(directory, device, progress=progress, lora=lora)
        extra = {key: getattr(guidance, key) for key in ("cfg_trunc_ratio", "cfg_normalization")
                  if getattr(guidance, key, None) is not None}
    elif label == "AuraFlow":
        from ..interop.auraflow import load_auraflow, text_to_image
        pixart = load_auraflow(directory, device, progress=progress, lora=lora)
    elif label == "Kandinsky 5":  # Kandinsky5T2IPipeline (diffkit.interop.kandinsky5; I2I: refused above)
        from ..interop.kandinsky5 import load_kandinsky5, text_to_image
        pixart = load_kandinsky5(directory, device, progress=progress, lora=lora)
    elif label == "PRX":  # PRXPipeline (diffkit.interop.prx), PRXPixelPipeline (diffkit.interop.prx_pixel)
        from ..interop.prx import load_prx, text_to_image
        pixart = load_prx(directory, device, progress=progress)
    elif label == "DeepFloyd IF":  # stage I (IFPipeline); stage II: diffkit upscale (._deepfloyd_if)
        from ..interop.deepfloyd_if import IF_PIPELINE, load_deepfloyd_if
        from ..interop.pixart import text_to_image
        pixart = load_deepfloyd_if(directory, device, progress=progress, kind=IF_PIPELINE)
    elif label == "Kandinsky 3":  # Kandinsky3Pipeline (diffkit edit: Kandinsky3Img2ImgPipeline, ._kandinsky3)
        from ..interop.kandinsky3 import guidance_w, load_kandinsky3, text_to_image
        if guidance.guidance_scale is not None:  # before any weight is read
            guidance_w(guidance.guidance_scale, guidance.convention, guidance.negative_prompt)
        pixart = load_kandinsky3(directory, device, progress=progress)
    elif label == "HiDream":
        from ..interop.hidream import load_hidream, text_to_image
        pixart = load_hidream(directory, device, progress=progress, lora=lora)
    elif lumina_next:  # LuminaPipeline's RoPE / attention options (--scaling-watershed, --no-proportional-attn)
        from ..interop.lumina_next import load_lumina_next, text_to_image
        pixart = load_lumina_next(directory, device, progress=progress)
        extra = {key: getattr(guidance, key) for key in ("scaling_watershed", "proportional_attn")
                  if getattr(guidance, key, None) is not None}
    elif hunyuan:
        from ..interop.hunyuan_dit import load_hunyuan_dit, text_to_image
        from ._sd3 import pag_options as hunyuan_pag_options
        pixart = load_hunyuan_dit(directory, device, progress=progress)
        extra = {"guidance_rescale": guidance.rescale, **hunyuan_pag_options(guidance)}
    elif label == "CogView4":
        from ..interop.cogview4 import load_cogview4, text_to_image
        pixart = load_cogview4(directory, device, progress=progress, lora=lora)
        if image is not None:  # sample i's control latents from seed + i; its prompt's control image
            extra = {"control_image": image}
    elif label == "CogView3Plus":
        from ..interop.cogview3plus import load_cogview3plus, text_to_image
        pixart = load_cogview3plus(directory, device, progress=progress)
    else:
        from ..interop.pixart import load_pixart, text_to_image
        pixart = load_pixart(directory, device, progress=progress)
    controlnet, _, prompts, index, num, nrow, per_sample = prompted_rows(pixart, guidance, control, None, num, nrow,
                                                                         seed, device, progress)
    if image is not None:
        per_sample["control_seeds"] = [seed + i for i in range(num)]
        if isinstance(image, list) and len(image) > 1:
            per_sample["control_rows"] = index.tolist()
    scale_s, convention = (pixart.default_guidance_scale, "diffusers") if guidance.guidance_scale is None else \
        (guidance.guidance_scale, guidance.convention)
    own_grid, options = own_loop(pixart, sampler, spacing, final, nfe, options)
    steps = pixart.default_steps if steps is None and nfe is None else steps

    def prompted(_, noise, sampler, steps, *, cond, spacing=None, final=None, nfe=None, **how):
        grid = {"grid": "scheduler"} if own_grid else {"spacing": spacing, "final": final, "nfe": nfe}
        if image is not None:
            how.update(control_seed=cond["control_seeds"][0], control_rows=cond.get("control_rows"))
        return text_to_image(pixart, cond["prompts"], sampler=sampler, steps=steps, guidance_scale=scale_s,
                             convention=convention, negative_prompt=guidance.negative_prompt, seed=None,
                             latents=noise, return_latents=True, max_sequence_length=guidance.max_sequence_length,
                             **grid, **extra, **pag, **sizes, **how,
                             **({} if controlnet is None else {"controlnets": controlnet,
                                                               "control_rows": cond.get("control_rows")}),
                             **({"control_seed": cond["control_seeds"][0]} if hunyuan and controlnet else {}))

    images, out = draw_prompted_grid(
        pixart.denoiser, num, pixart.latent_shape(1, height, width)[1:], prompted,
        per_sample,
        pixart.decode, out, individual, nrow, scale, seed=seed, sampler=sampler, steps=steps, nfe=nfe,
        spacing=spacing, final=final, batch_size=batch_size, device=device, dtype=pixart.dtype, progress=progress,
        **options)
    grid = "the scheduler's timesteps" if own_grid else "its diffkit grid"
    print(f"wrote {out} ({num} samples, {sampler} on {grid}, {pixart.pipeline} folder {directory}, prompts {prompts})")
    return images


def check_folder_edit_args(args, flags, kind: str, takes: str, runs: str = "", check=None,
                           prompted: bool = True) -> None:
    """One line, before any weight is read or any folder made, for the first ``diffkit edit`` flag ``args`` sets away
    from its default that is not in ``flags`` (the dests a folder kind takes; ``runs``: what the command runs there;
    ``check``: called next, e.g. a second folder's), for no ``--images`` / ``--prompt`` (``prompted=False``: no
    ``--images``; LEDITS++'s concepts are its own flags), and for ``--batch-size auto`` (:func:`prompted_edit_inputs`'s,
    :mod:`._chroma`'s kinds, :mod:`._ledits_pp`)."""
    from ..cli import build_parser
    from ._sd3 import _FLAG_NAMES
    directory = args.checkpoint
    defaults = vars(build_parser().parse_args(["edit", "--checkpoint", "x", "--out", "x"]))
    given = [_FLAG_NAMES.get(dest, "--" + dest.replace("_", "-")) for dest, value in vars(args).items()
             if dest not in flags and dest in defaults and value != defaults[dest]]
    if given:
        raise DiffkitError(articled(f"{given[0]} does not apply to a {kind} folder ({directory}){runs}; it takes "
                                    f"{takes}"))
    if check is not None:
        check()
    if prompted and (args.images is None or not args.prompts):
        raise DiffkitError(articled(f"{directory} is a {kind} folder: give --images PNG|DIR and --prompt TEXT (once "
                                    f"for every image, or once per image)"))
    if args.images is None:
        raise DiffkitError(articled(f"{directory} is a {kind} folder{runs}: give --images PNG|DIR"))
    if args.batch_size == "auto":
        raise DiffkitError("--batch-size auto goes with --series; give the images per batch (default 16)")


SPRINT_EDIT_TAKES = ("--images, --prompt, --strength, --guidance-scale (--guidance-convention), --max-sequence-length, "
                     "--height / --width, --steps, --lora")
SPRINT_EDIT_FLAGS = {  # diffkit edit's dests a Sana Sprint folder takes (the rest must stay at their defaults)
    "command", "func", "checkpoint", "images", "out", "prompts", "max_sequence_length", "strength", "steps",
    "guidance_scale", "guidance_convention", "seed", "batch_size", "device", "progress", "height", "width", "lora"}


def prompted_edit_inputs(args, flags, kind: str, pipeline: str, takes: str, check=None, with_mask=False) -> tuple:
    """(images, count) of ``diffkit edit`` on a ``kind`` folder edited as ``pipeline`` that takes only the dests
    ``flags`` (``takes``: their names; ``check``: called after the flags' check, e.g. a second folder's): one line
    for another flag given, no ``--images`` / ``--prompt``, ``--batch-size auto``, or a ``--prompt`` count other
    than 1 or the images' (Sana Sprint, Kandinsky 2.2). ``with_mask``: (images, count, ``--mask`` or None)."""
    from .edit import read_edit_inputs
    check_folder_edit_args(args, flags, kind, takes, f" in diffkit edit, which runs {pipeline}", check)
    images, files, mask = read_edit_inputs(args)  # --height / --width: resized as the pipeline's processor does
    count = len(files)
    if len(args.prompts) not in (1, count):
        raise DiffkitError(f"--prompt is given {len(args.prompts)} times for {count} images; give it once (every "
                           f"image) or once per image ({count}, in the files' order)")
    return (images, count, mask) if with_mask else (images, count)


def save_prompted_edits(args, model, edit_image, images, count: int, new_dirs, what: str, **options) -> int:
    """The rest of ``diffkit edit`` on a prompted instruction-edit folder kind once ``model`` is loaded (Kandinsky 5
    image-to-image, ChronoEdit): ``--out`` checked, ``edit_image(model, images, prompts, negative_prompt=, steps=,
    seed=, ...)`` with ``--guidance-scale`` / ``--guidance-convention`` where given and ``options``, in batches (one
    out of memory is halved and redrawn: image i from ``--seed`` + i), written as edit_00000.png ...; the summary line
    names ``what``. ``new_dirs``: the folders made for ``--out``, removed again on a failure that leaves them empty."""
    import torch

    from ..images import check_image_folder, save_images
    from ..memory import batches_with_oom_retry
    from ._common import check_writable_dir, removed_if_empty_on_failure
    out = args.out
    check_writable_dir(out)
    check_image_folder(out, count, prefix="edit")
    scale = {} if args.guidance_scale is None else {"guidance_scale": args.guidance_scale,
                                                     "convention": args.guidance_convention}

    def edit(start: int, n: int):
        prompts = args.prompts * n if len(args.prompts) == 1 else args.prompts[start:start + n]
        return (edit_image(model, images[start:start + n], prompts, negative_prompt=args.negative_prompt,
                           steps=args.steps, seed=args.seed + start, output_range="-1,1", progress=args.progress,
                           **scale, **options).cpu(),)

    with removed_if_empty_on_failure(new_dirs):
        results = [edited for _, edited in batches_with_oom_retry(edit, count, args.batch_size or 16)]
        save_images(torch.cat(results), out, prefix="edit")
    print(f"wrote {count} edited images to {out} (edit_00000.png ...; {what}, prompts {list(args.prompts)})")
    return 0


def edit_sana_sprint(args) -> int:
    """``diffkit edit --checkpoint SPRINT_FOLDER --images PNG|DIR --prompt TEXT``: each image edited as
    ``SanaSprintImg2ImgPipeline`` (:func:`diffkit.interop.sana_sprint.image_to_image`: strength 0.6, 2 steps of
    ``consistency`` on the SCM thetas cut by the strength, the guidance embedding s = 4.5 by default; image i from
    ``--seed`` + i, its forward noise then its step noise), at the images' size (or ``--height`` / ``--width``; the
    pipeline's ``use_resolution_binning=False``). Every other edit flag (``--mask``: the pipeline has no
    inpainting; ``--negative-prompt``: it is guidance-distilled; ``--sampler``): one line, before any weight is read
    or any folder is made."""
    import torch

    from ..config import resolve_device
    from ..images import check_image_folder, save_images
    from ..interop.sana import load_sana
    from ..interop.sana_sprint import SPRINT_IMG2IMG_STRENGTH, image_to_image
    from ..memory import batches_with_oom_retry
    from ._common import check_writable_dir, missing_dirs, removed_if_empty_on_failure

    directory = args.checkpoint
    images, count = prompted_edit_inputs(args, SPRINT_EDIT_FLAGS, "Sana Sprint", "SanaSprintImg2ImgPipeline",
                                         SPRINT_EDIT_TAKES)
    out, device = args.out, resolve_device(args.device)
    new_dirs = missing_dirs(out)
    sprint = load_sana(directory, device, progress=args.progress, lora=args.lora)
    sprint.latent_shape(1, images.shape[2], images.shape[3])  # the images' size fits the VAE and patches
    check_writable_dir(out)
    check_image_folder(out, count, prefix="edit")
    scale, convention = (None, "diffusers") if args.guidance_scale is None else \
        (args.guidance_scale, args.guidance_convention)

    def edit(start: int, n: int):
        prompts = args.prompts * n if len(args.prompts) == 1 else args.prompts[start:start + n]
        return (image_to_image(sprint, images[start:start + n], prompts, args.strength, steps=args.steps,
                               guidance_scale=scale, convention=convention, seed=args.seed + start,
                               max_sequence_length=args.max_sequence_length, output_range="-1,1",
                               progress=args.progress).cpu(),)

    with removed_if_empty_on_failure(new_dirs):  # a batch out of memory is halved and redrawn (seed + i)
        results = [edited for _, edited in batches_with_oom_retry(edit, count, args.batch_size or 16)]
        save_images(torch.cat(results), out, prefix="edit")
    strength = SPRINT_IMG2IMG_STRENGTH if args.strength is None else args.strength
    print(f"wrote {count} edited images to {out} (edit_00000.png ...; Sana Sprint folder {directory} as "
          f"SanaSprintImg2ImgPipeline, strength {strength}, consistency on the SCM thetas, prompts "
          f"{list(args.prompts)})")
    return 0
