"""``diffkit sample --checkpoint FLUX_FOLDER --prompt TEXT``: a FLUX.1 diffusers folder (:mod:`diffkit.interop.flux`)
sampled with a diffkit sampler, dispatched from :func:`diffkit.commands.sample.sample_to_files`."""
from __future__ import annotations

from typing import Optional

from ..errors import DiffkitError

# GuidanceRequest fields a FLUX folder does not take on the command line, and their flags
_REFUSED_GUIDANCE = {"classes": "--class", "classifier": "--classifier", "rescale": "--guidance-rescale",
                     "interval": "--guidance-interval", "clip_prompt": "--clip-guidance", "pag_scale": "--pag-scale",
                     "apg_eta": "--apg-eta", "apg_norm_threshold": "--apg-norm-threshold",
                     "apg_momentum": "--apg-momentum", "clip_skip": "--clip-skip"}


def sample_flux(directory, *, sampler="ddim", steps=None, nfe=None, num=None, nrow=None, out=None, individual=None,
                seed=0, device="cpu", batch_size="auto", spacing=None, final=None, scale=1, progress=True,
                guidance=None, refused: Optional[dict] = None, lora=None, height=None, width=None, control=None,
                ip_adapter=None, textual_inversion=None, **options):
    """Sample a FLUX.1 folder to a grid (and single PNGs) at ``height`` x ``width`` (default the pipeline's 128 f,
    multiples of 2 f; its shift follows the size): rows as
    :func:`~.sample.condition_rows`, sample i from ``seed + i`` (z at s = 1, drawn unpacked as the pipeline), 28
    steps; ``--guidance-scale G``: the embedded guidance value as given (FLUX.1-dev, default 3.5; it is no
    classifier-free guidance, so ``--guidance-convention`` does not change it; refused for FLUX.1-schnell).
    ``ddim`` without a grid option (:func:`._sd3.pipeline_loop`) steps on the pipeline's sigmas (FluxPipeline's
    loop); any other sampler on its diffkit grid of the size's flow schedule. ``refused``: {flag: value} of
    ``diffkit sample`` flags a FLUX folder does not take (a one-line error for any given). ``--true-cfg-scale``
    with ``--negative-prompt``, ``--prompt-2`` (once, or once per ``--prompt``), ``--negative-prompt-2``,
    ``--max-sequence-length``: :mod:`._sd_prompts`; ``lora``: diffusers / PEFT
    or kohya / BFL LoRA files, fused as the pipeline's ``load_lora_weights`` + ``fuse_lora``; ``textual_inversion``:
    embedding files, (path, token or None) pairs, as its ``load_textual_inversion`` (CLIP). ``control``: FLUX
    ControlNets (a :class:`~._controlnet.ControlRequest`), as FluxControlNetPipeline
    (:mod:`diffkit.interop.flux_controlnet`: its embedded guidance 7.0 by default, sample i's control latents drawn
    from ``seed + i``). ``ip_adapter``: an XLabs-format IP-Adapter (a
    :class:`~._ip_adapter.IPAdapterRequest`), as the pipeline's ``load_ip_adapter`` + ``ip_adapter_image``
    (:mod:`diffkit.interop.flux_ip_adapter`); with ``control`` as FluxControlNetPipeline's. A FLUX.1 Depth / Canny
    folder (FluxControlPipeline): ``control`` holds its ``--control-image`` alone (no ControlNet folders), the
    transformer's control latents drawn as the ControlNets' (:mod:`diffkit.interop.flux_channels`); a FLUX.1 Fill
    folder only inpaints (``diffkit edit --mask``): one line. ``redux`` (in ``options``): FLUX.1 Redux's image
    prompt (a :class:`~._flux_redux.ReduxRequest`), FluxPriorReduxPipeline's embeddings of ``--redux-image`` (and
    ``--prompt``, optional) for every sample (:mod:`diffkit.interop.flux_redux`), also with true CFG, ControlNets and
    a Depth / Canny folder's ``--control-image`` (not true CFG with a ControlNet: diffusers 0.42.1 fails there)."""
    from ..interop.flux import FLUX_PIPELINE_STEPS, load_flux, text_to_image
    from ._sd3 import pipeline_loop, prompted_rows
    from ._flux_redux import redux_text
    from ._sd_prompts import check_prompt_encoding, flux_prompt_options
    from .sample import GuidanceRequest, draw_prompted_grid

    from ..interop.flux_kontext import is_kontext_folder
    if is_kontext_folder(directory):
        raise DiffkitError(f"{directory} is a FLUX.1 Kontext folder (FluxKontextPipeline), which edits an image: use "
                           f"diffkit edit --checkpoint {directory} --images PNG --prompt TEXT")
    guidance = guidance or GuidanceRequest()
    redux = options.pop("redux", None)
    flags = dict(refused or {})
    flags["--refiner"] = options.pop("refiner", None)
    flags["--thresholding"] = options.get("thresholding")
    flags.update({flag: getattr(guidance, name) for name, flag in _REFUSED_GUIDANCE.items()})
    given = [flag for flag, value in flags.items() if value is not None and value is not False
             and (value != 0.0 or flag.startswith("--apg-"))]  # --apg-eta 0 is APG's (0: --guidance-rescale off)
    if given:
        raise DiffkitError(f"{given[0]} does not apply to a FLUX folder ({directory}); it takes --prompt (-2), "
                           f"--negative-prompt (-2) with --true-cfg-scale, --max-sequence-length, --lora, "
                           f"--textual-inversion, "
                           f"--controlnet (--control-mode: a union), --control-image (a Depth / Canny folder), "
                           f"--ip-adapter, --redux, --height / --width, --guidance-scale (the embedded guidance), "
                           f"--steps / --nfe, --sampler and its grid options")
    if getattr(ip_adapter, "negative_image", None) is not None and not (guidance.true_cfg_scale or 0) > 1:
        raise DiffkitError("--negative-ip-adapter-image feeds only true CFG's negative pass; give --true-cfg-scale "
                           "> 1 with --negative-prompt, or drop it")
    if not guidance.prompts and redux is None:
        raise DiffkitError(f"{directory} is a FLUX folder: give --prompt TEXT (repeat for one row per prompt)")
    check_prompt_encoding(guidance, directory)  # --true-cfg-scale, --prompt-2: as from_args did (library callers)
    image = None  # FLUX.1 Depth / Canny: --control-image without --controlnet (diffkit.interop.flux_channels)
    if control is not None and not control.folders:
        image, control = control.images[0], None
    from ..interop.flux_channels import check_variant_options, folder_variant
    check_variant_options(folder_variant(directory), None, image, control, ip_adapter, guidance.negative_prompt)
    flux = load_flux(directory, device, progress=progress, lora=lora, textual_inversion=textual_inversion)
    embeds = None if redux is None else redux.embeds(flux, guidance, device, progress)  # FLUX.1 Redux's
    controlnet, adapter, prompts, index, num, nrow, per_sample = prompted_rows(
        flux, guidance, control, ip_adapter, num, nrow, seed, device, progress, None if redux is None else [None])
    if redux is not None:  # one conditioning for every sample
        prompts = f"Redux images {redux.images}, prompts {list(guidance.prompts or [])}"
    if image is not None:  # sample i's control latents from seed + i; its prompt's control image
        per_sample["control_seeds"] = [seed + i for i in range(num)]
        if isinstance(image, list) and len(image) > 1:
            per_sample["control_rows"] = index.tolist()
    if guidance.prompts_2 is not None and len(guidance.prompts_2) > 1 and redux is None:  # once per --prompt
        per_sample["prompts_2"] = [guidance.prompts_2[i] for i in index.tolist()]
    own = pipeline_loop(sampler, spacing, final, nfe)
    steps = FLUX_PIPELINE_STEPS if steps is None and nfe is None else steps
    flux.check_guidance_scale(guidance.guidance_scale)  # before any sampling

    def prompted(_, noise, sampler, steps, *, cond, spacing=None, final=None, nfe=None, **how):
        grid = {"grid": "scheduler"} if own and pipeline_loop(sampler, spacing, final, nfe) else \
            {"spacing": spacing, "final": final, "nfe": nfe}
        control = {} if controlnet is None and image is None else {
            "control_seed": cond["control_seeds"][0], "control_rows": cond.get("control_rows"),
            **({"controlnet": controlnet} if image is None else {"control_image": image})}
        text = flux_prompt_options(guidance, cond.get("prompts_2"))
        text = text if embeds is None else redux_text(embeds, text)  # FLUX.1 Redux's
        return text_to_image(flux, cond["prompts"] if embeds is None else None, sampler=sampler, steps=steps,
                             guidance_scale=guidance.guidance_scale, seed=None, latents=noise, return_latents=True,
                             ip_adapter=adapter, **grid, **how, **control, **text)

    images, out = draw_prompted_grid(
        flux.denoiser, num, flux.latent_shape(1, height, width)[1:], prompted,
        per_sample, flux.decode, out,
        individual, nrow, scale,
        seed=seed, sampler=sampler, steps=steps, nfe=nfe, spacing=spacing, final=final, batch_size=batch_size,
        device=device, dtype=flux.dtype, progress=progress, **options)
    grid = "the pipeline's sigmas" if own else "its diffkit grid"
    print(f"wrote {out} ({num} samples, {sampler} on {grid}, FLUX folder {directory}, prompts {prompts})")
    return images
