"""``diffkit sample --checkpoint PIXART_FOLDER --prompt TEXT``: a PixArt-α / PixArt-Σ diffusers folder
(:mod:`diffkit.interop.pixart`), or a Sana one (:mod:`diffkit.interop.sana`, the same path), sampled with a diffkit
sampler, dispatched from :func:`diffkit.commands.sample.sample_to_files`."""
from __future__ import annotations

from typing import Optional

from ..errors import DiffkitError

TAKES = ("--prompt, --negative-prompt, --guidance-scale (--guidance-convention), --max-sequence-length, --height / "
         "--width, --steps / --nfe, --sampler and its grid options")

LORA_KINDS = ("Sana", "Lumina2", "AuraFlow")  # folders whose diffusers pipeline has a LoRA loader (--lora)
HUNYUAN_TAKES = TAKES.replace("--max-sequence-length", "--guidance-rescale, --pag-scale (--pag-layers, "
                              "--pag-adaptive-scale)")


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
    config = read_json_object(Path(checkpoint) / "scheduler" / "scheduler_config.json", "scheduler config")
    if masked_text_folder(checkpoint) == "HunyuanDiT":  # its DDPMScheduler: ddpm (diffkit.interop.hunyuan_dit)
        from ..interop.hunyuan_dit import folder_sampler as hunyuan_folder_sampler
        return hunyuan_folder_sampler(config)[0]
    if masked_text_folder(checkpoint) == "HiDream":  # FlowMatchEuler: ddim; flow UniPC: unipc (.interop.hidream)
        from ..interop.hidream import folder_sampler as hidream_folder_sampler
        return hidream_folder_sampler(config)[0]
    return folder_sampler(config, flow=masked_text_folder(checkpoint) in ("Sana", "Lumina2", "AuraFlow"))[0]


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
    folder does not take (a one-line error for the first given). ``lora``: LoRA files of a Sana, Lumina2 or
    AuraFlow folder (:mod:`diffkit.interop.sana_lora`; PixArt: refused). A HunyuanDiT folder
    (:mod:`diffkit.interop.hunyuan_dit`) also takes ``--guidance-rescale`` and ``--pag-scale`` (``--pag-layers``,
    ``--pag-adaptive-scale``; HunyuanDiTPAGPipeline), its default sampler ``ddpm`` (DDPMScheduler). A HiDream-I1
    folder (:mod:`diffkit.interop.hidream`): its four text encoders, s = 5, 50 steps, ``ddim`` (FlowMatchEuler) or
    ``unipc`` (flow UniPC) on its scheduler's sigmas, sizes at its one area. A Sana Sprint
    folder: ``--guidance-scale`` is its guidance embedding, 2 steps of ``consistency`` on its SCMScheduler's thetas
    (:mod:`diffkit.interop.sana_sprint`)."""
    from ..interop.pixart import masked_text_folder
    from ..samplers.registry import split_sampler_spec
    from ._sd3 import prompted_rows
    from .sample import draw_prompted_grid

    label = masked_text_folder(directory) or "PixArt"
    from ..interop.sana import SANA_SPRINT_PIPELINE, sana_kind
    sprint = sana_kind(directory) == SANA_SPRINT_PIPELINE  # guidance-distilled: no negative prompt
    hunyuan = label == "HunyuanDiT"  # HunyuanDiTPipeline: fixed prompt lengths, guidance rescale, PAG
    takes = (TAKES.replace("--negative-prompt, ", "") if sprint else HUNYUAN_TAKES if hunyuan else TAKES) + \
        (", --lora" if label in LORA_KINDS else "")
    more = {"--negative-prompt": getattr(guidance, "negative_prompt", None)} if sprint else \
        {} if label in LORA_KINDS else {"--lora": lora}
    if hunyuan:
        more.update({"--max-sequence-length": getattr(guidance, "max_sequence_length", None),
                     "--pag-interval": getattr(guidance, "pag_interval", None)})
    guidance = checked_request(directory, "Sana Sprint" if sprint else label, takes, guidance, options,
                               {**(refused or {}), **more},
                               allowed=("--guidance-rescale", "--pag-scale") if hunyuan else ())
    lumina = {}  # Lumina2Pipeline's guidance options (--cfg-trunc-ratio, --no-cfg-normalization); HunyuanDiT's
    if label == "Sana":
        from ..interop.sana import load_sana, text_to_image
        pixart = load_sana(directory, device, progress=progress, lora=lora)
    elif label == "Lumina2":
        from ..interop.lumina2 import load_lumina2, text_to_image
        pixart = load_lumina2(directory, device, progress=progress, lora=lora)
        lumina = {key: getattr(guidance, key) for key in ("cfg_trunc_ratio", "cfg_normalization")
                  if getattr(guidance, key, None) is not None}
    elif label == "AuraFlow":
        from ..interop.auraflow import load_auraflow, text_to_image
        pixart = load_auraflow(directory, device, progress=progress, lora=lora)
    elif label == "HiDream":
        from ..interop.hidream import load_hidream, text_to_image
        pixart = load_hidream(directory, device, progress=progress)
    elif hunyuan:
        from ..interop.hunyuan_dit import load_hunyuan_dit, text_to_image
        from ._sd3 import pag_options
        pixart = load_hunyuan_dit(directory, device, progress=progress)
        lumina = {"guidance_rescale": guidance.rescale, **pag_options(guidance)}
    else:
        from ..interop.pixart import load_pixart, text_to_image
        pixart = load_pixart(directory, device, progress=progress)
    _, _, prompts, index, num, nrow, per_sample = prompted_rows(pixart, guidance, None, None, num, nrow, seed, device,
                                                                progress)
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
        return text_to_image(pixart, cond["prompts"], sampler=sampler, steps=steps, guidance_scale=scale_s,
                             convention=convention, negative_prompt=guidance.negative_prompt, seed=None,
                             latents=noise, return_latents=True, max_sequence_length=guidance.max_sequence_length,
                             **grid, **lumina, **how)

    images, out = draw_prompted_grid(
        pixart.denoiser, num, pixart.latent_shape(1, height, width)[1:], prompted,
        lambda start, n: {key: rows[start:start + n] for key, rows in per_sample.items()},
        pixart.decode, out, individual, nrow, scale, seed=seed, sampler=sampler, steps=steps, nfe=nfe,
        spacing=spacing, final=final, batch_size=batch_size, device=device, dtype=pixart.dtype, progress=progress,
        **options)
    grid = "the scheduler's timesteps" if own_grid else "its diffkit grid"
    print(f"wrote {out} ({num} samples, {sampler} on {grid}, {pixart.pipeline} folder {directory}, prompts {prompts})")
    return images
