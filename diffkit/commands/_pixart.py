"""``diffkit sample --checkpoint PIXART_FOLDER --prompt TEXT``: a PixArt-α / PixArt-Σ diffusers folder
(:mod:`diffkit.interop.pixart`), or a Sana one (:mod:`diffkit.interop.sana`, the same path), sampled with a diffkit
sampler, dispatched from :func:`diffkit.commands.sample.sample_to_files`."""
from __future__ import annotations

from typing import Optional

from ..errors import DiffkitError

TAKES = ("--prompt, --negative-prompt, --guidance-scale (--guidance-convention), --max-sequence-length, --height / "
         "--width, --steps / --nfe, --sampler and its grid options")

LORA_KINDS = ("Sana", "Lumina2", "AuraFlow", "CogView4")  # folders whose diffusers pipeline has a LoRA loader
FLOW_KINDS = ("Sana", "Lumina2", "AuraFlow", "CogView4")  # flow-matching folders (their schedulers' flow steps)


def articled(message: str) -> str:
    """``message`` with "a AuraFlow" made "an AuraFlow" (the folder kinds' messages read "a {kind} folder")."""
    return message.replace(" a AuraFlow ", " an AuraFlow ")


def folder_default_sampler(checkpoint) -> str:
    """The sampler ``diffkit sample`` defaults to on a PixArt folder: the one computing its scheduler's step
    (:func:`~diffkit.interop.pixart.folder_sampler`, from the JSON; one line where there is none)."""
    from ..errors import read_json_object
    from ..interop.pixart import folder_sampler
    from pathlib import Path
    from ..interop.pixart import masked_text_folder
    from ..interop.sana import SANA_SPRINT_PIPELINE, sana_kind
    if sana_kind(checkpoint) == SANA_SPRINT_PIPELINE:
        return "consistency"  # SCMScheduler's step (diffkit.interop.sana_sprint)
    if masked_text_folder(checkpoint) == "CogView3Plus":
        return "ddim"  # CogVideoXDDIMScheduler's step (diffkit.interop.cogview3plus)
    config = read_json_object(Path(checkpoint) / "scheduler" / "scheduler_config.json", "scheduler config")
    return folder_sampler(config, flow=masked_text_folder(checkpoint) in FLOW_KINDS)[0]


def control_image_of(directory, label: str, refused: Optional[dict]):
    """A CogView4 Control folder's ``--control-image`` (the transformer's, from ``refused``' ``--controlnet``
    request without folders, :meth:`._controlnet.ControlRequest.transformer_image`); None for other folders. Such a
    folder without one: one line, before any weight is read."""
    control = (refused or {}).get("--controlnet")
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
                keys=("refiner", "t2i_adapter", "redux", "thresholding", "flow_shift")) -> list:
    """The ``diffkit sample`` flags given that a one-T5-encoder CFG folder (PixArt, Chroma: ``--prompt``,
    ``--negative-prompt``, ``--guidance-scale``) does not take: those of ``refused`` ({flag: value}), of
    ``options`` under ``keys`` (popped), and the guidance flags of another kind (``--class``, ``--pag-scale``, ...)."""
    from .sample import GuidanceRequest
    flags = dict(refused or {})
    for key in keys:
        flags["--" + key.replace("_", "-")] = options.pop(key, None)
    flags.update({"--class": guidance.classes, "--classifier": guidance.classifier,
                  "--guidance-rescale": guidance.rescale or None, "--guidance-interval": guidance.interval,
                  "--clip-guidance": guidance.clip_prompt, "--pag-scale": guidance.pag_scale,
                  "--slg-layers": guidance.slg, **{flag: value for flag, value in zip(GuidanceRequest.APG_FLAGS, (
                      guidance.apg_eta, guidance.apg_norm_threshold, guidance.apg_momentum))}})
    return [flag for flag, value in flags.items() if value is not None and value is not False]


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


def sample_pixart(directory, *, sampler=None, steps=None, nfe=None, num=None, nrow=None, out=None, individual=None,
                  seed=0, device="cpu", batch_size="auto", spacing=None, final=None, scale=1, progress=True,
                  guidance=None, refused: Optional[dict] = None, height=None, width=None, lora=None, **options):
    """Sample a PixArt folder to a grid (and single PNGs): rows as :func:`~.sample.condition_rows`, sample i from
    ``seed + i`` (z_T), classifier-free guidance against ``--negative-prompt`` (default "") with the pipelines' s =
    4.5 by default, 20 steps. Without a grid option (``--spacing``, ``@SPACING``, ``--final``, ``--nfe``) every
    sampler runs on the folder's scheduler's timesteps, and the default sampler
    (:func:`folder_default_sampler`: ``dpm-solver++-2m`` for PixArt's DPMSolverMultistepScheduler) with that
    scheduler's options is the pipeline's loop. ``refused``: {flag: value} of ``diffkit sample`` flags a PixArt
    folder does not take (a one-line error for the first given). ``lora``: LoRA files of a Sana, Lumina2,
    AuraFlow or CogView4 folder (:mod:`diffkit.interop.sana_lora`; PixArt: refused). A Sana Sprint folder:
    ``--guidance-scale`` is its guidance embedding, 2 steps of ``consistency`` on its SCMScheduler's thetas
    (:mod:`diffkit.interop.sana_sprint`)."""
    from ..interop.pixart import masked_text_folder
    from ..samplers.registry import split_sampler_spec
    from ._sd3 import prompted_rows
    from .sample import draw_prompted_grid

    label = masked_text_folder(directory) or "PixArt"
    image = control_image_of(directory, label, refused)  # a CogView4 Control folder's --control-image
    if image is not None:
        refused = {**refused, "--controlnet": None}
    from ..interop.sana import SANA_SPRINT_PIPELINE, sana_kind
    sprint = sana_kind(directory) == SANA_SPRINT_PIPELINE  # guidance-distilled: no negative prompt
    takes = (TAKES.replace("--negative-prompt, ", "") if sprint else TAKES) + \
        (", --lora" if label in LORA_KINDS else "") + (", --control-image" if image is not None else "")
    more = {"--negative-prompt": getattr(guidance, "negative_prompt", None)} if sprint else \
        {} if label in LORA_KINDS else {"--lora": lora}
    guidance = checked_request(directory, "Sana Sprint" if sprint else label, takes, guidance, options,
                               {**(refused or {}), **more})
    extra = {}  # the kind's own options: Lumina2's CFG (--cfg-trunc-ratio, ...), CogView4 Control's --control-image
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
    _, _, prompts, index, num, nrow, per_sample = prompted_rows(pixart, guidance, None, None, num, nrow, seed, device,
                                                                progress)
    if image is not None:
        per_sample["control_seeds"] = [seed + i for i in range(num)]
        if isinstance(image, list) and len(image) > 1:
            per_sample["control_rows"] = index.tolist()
    scale_s, convention = (pixart.default_guidance_scale, "diffusers") if guidance.guidance_scale is None else \
        (guidance.guidance_scale, guidance.convention)
    name, spec_spacing, _ = split_sampler_spec(sampler)
    own_grid = spacing is None and spec_spacing is None and final is None and nfe is None
    own_sampler, own_options = pixart.folder_sampler() if own_grid else (None, {})
    if name == own_sampler:  # the pipeline's loop: its scheduler's options too (solver_type, lower_order_final)
        options = {**own_options, **options}
    steps = pixart.default_steps if steps is None and nfe is None else steps

    def prompted(_, noise, sampler, steps, *, cond, spacing=None, final=None, nfe=None, **how):
        grid = {"grid": "scheduler"} if own_grid else {"spacing": spacing, "final": final, "nfe": nfe}
        if image is not None:
            how.update(control_seed=cond["control_seeds"][0], control_rows=cond.get("control_rows"))
        return text_to_image(pixart, cond["prompts"], sampler=sampler, steps=steps, guidance_scale=scale_s,
                             convention=convention, negative_prompt=guidance.negative_prompt, seed=None,
                             latents=noise, return_latents=True, max_sequence_length=guidance.max_sequence_length,
                             **grid, **extra, **how)

    images, out = draw_prompted_grid(
        pixart.denoiser, num, pixart.latent_shape(1, height, width)[1:], prompted,
        lambda start, n: {key: rows[start:start + n] for key, rows in per_sample.items()},
        pixart.decode, out, individual, nrow, scale, seed=seed, sampler=sampler, steps=steps, nfe=nfe,
        spacing=spacing, final=final, batch_size=batch_size, device=device, dtype=pixart.dtype, progress=progress,
        **options)
    grid = "the scheduler's timesteps" if own_grid else "its diffkit grid"
    print(f"wrote {out} ({num} samples, {sampler} on {grid}, {pixart.pipeline} folder {directory}, prompts {prompts})")
    return images
