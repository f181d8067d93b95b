"""``diffkit sample --checkpoint PRIOR_FOLDER --decoder DECODER_FOLDER --prompt TEXT``: Stable Cascade
(:mod:`diffkit.interop.stable_cascade`), a ``StableCascadePriorPipeline`` folder chained into a
``StableCascadeDecoderPipeline`` folder as diffusers' two pipelines (the Hub's ``stable-cascade-prior`` and
``stable-cascade``), or ``--checkpoint COMBINED_FOLDER`` alone (a ``StableCascadeCombinedPipeline`` folder holding
both); ``--prior-image PNG`` (repeatable) adds image prompts to the prior (:mod:`diffkit.interop.stable_cascade_image`).
Dispatched from :func:`diffkit.commands.sample.sample_to_files`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from ..errors import DiffkitError
from ._common import path_arg

AUTO_BATCH = 4  # --batch-size auto: samples per pass through both stages (the results do not depend on it)
TAKES = ("--decoder, --prior-image, --prompt, --negative-prompt, --guidance-scale (--guidance-convention), --steps, "
         "--decoder-steps, --decoder-guidance-scale, --height / --width, --sampler ddpm")


def add_stable_cascade_flags(parser) -> None:
    g = parser.add_argument_group("Stable Cascade (docs/interop.md)")
    g.add_argument("--decoder", type=path_arg, metavar="FOLDER",
                   help="a Stable Cascade prior --checkpoint (StableCascadePriorPipeline folder): the "
                        "StableCascadeDecoderPipeline folder (stage B + the Paella VQGAN) its image embeddings go to")
    g.add_argument("--decoder-steps", type=int, metavar="N",
                   help="with --decoder: the decoder's steps (default 10, its pipeline's); --steps are the prior's "
                        "(default 20)")
    g.add_argument("--decoder-guidance-scale", type=float, metavar="S",
                   help="with --decoder: the decoder's CFG scale s in diffusers' convention (default 0: unguided; "
                        "> 1: CFG); --guidance-scale is the prior's (default 4)")


@dataclass
class CascadeRequest:
    """A prior folder's ``--decoder`` (None: a combined folder), the decoder's steps and guidance scale and the
    prior's image prompts (``--prior-image``), checked from the JSON alone (and the images opened)."""

    decoder: Optional[str]
    steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    images: Tuple[str, ...] = ()

    @classmethod
    def from_args(cls, args, checkpoint) -> Optional["CascadeRequest"]:
        """None for a checkpoint that is not Stable Cascade's (one line if a flag of this group was given); else the
        request, one line for a decoder folder as --checkpoint, a prior without --decoder or a combined folder with
        one, ``--prior-image`` on a prior without an image encoder, or a folder diffkit does not drive
        (:func:`~diffkit.interop.stable_cascade.check_prior_folder`, ``check_combined_folder``)."""
        from ..interop.controlnet import open_control_image
        from ..interop.stable_cascade import (COMBINED_PIPELINE, DECODER_PIPELINE, PRIOR_PIPELINE,
                                              check_combined_folder, check_decoder_folder, check_prior_folder,
                                              stable_cascade_kind)
        decoder = getattr(args, "decoder", None)
        given = {"--decoder": decoder, "--decoder-steps": getattr(args, "decoder_steps", None),
                 "--decoder-guidance-scale": getattr(args, "decoder_guidance_scale", None)}
        kind = None if checkpoint is None else stable_cascade_kind(checkpoint)
        if kind is None:
            flags = [flag for flag, value in given.items() if value is not None]
            if flags:
                raise DiffkitError(f"{flags[0]} applies to a Stable Cascade prior folder ({PRIOR_PIPELINE}) as "
                                   f"--checkpoint; {checkpoint} is not one")
            return None
        if kind == DECODER_PIPELINE:
            raise DiffkitError(f"{checkpoint} is a {DECODER_PIPELINE} folder: give the {PRIOR_PIPELINE} folder as "
                               f"--checkpoint and this one as --decoder")
        images = tuple(str(image) for image in getattr(args, "prior_image", None) or ())
        if kind == COMBINED_PIPELINE:
            if decoder is not None:
                raise DiffkitError(f"--decoder does not apply to a {COMBINED_PIPELINE} folder ({checkpoint}): it "
                                   f"holds its decoder; drop --decoder")
            check_combined_folder(checkpoint, bool(images))
        else:
            _, prior, _ = check_prior_folder(checkpoint, bool(images))
            if decoder is None:
                raise DiffkitError(f"{checkpoint} is a Stable Cascade prior folder: give --decoder FOLDER (its "
                                   f"{DECODER_PIPELINE} folder, stage B and the VQGAN)")
            check_decoder_folder(decoder, prior.get("out_channels", 16))
        steps = given["--decoder-steps"]
        if steps is not None and steps < 1:
            raise DiffkitError(f"--decoder-steps {steps} is not allowed; give a positive integer")
        for image in images:
            open_control_image(image, "--prior-image")  # one line for a file that is not an image
        return cls(None if decoder is None else str(decoder), steps, given["--decoder-guidance-scale"], images)


def sample_stable_cascade(directory, request: CascadeRequest, *, sampler=None, steps=None, nfe=None, num=None,
                          nrow=None, out=None, individual=None, seed=0, device="cpu", batch_size="auto",
                          spacing=None, final=None, scale=1, progress=True, guidance=None,
                          refused: Optional[dict] = None, height=None, width=None, **options):
    """Sample a Stable Cascade prior + decoder pair to a grid (and single PNGs): rows as
    :func:`~.sample.condition_rows`; sample i draws every noise (prior z_T and steps, decoder z_T and steps) from
    the generator seeded ``seed + i``, as the two pipelines called with one ``generator`` in turn. The only sampler
    is ``ddpm``, DDPMWuerstchenScheduler's step on its own grid; a grid option, another sampler or a flag of
    another folder kind is refused in one line. ``batch_size``: samples per pass (``"auto"``: up to
    :data:`AUTO_BATCH`)."""
    import torch

    from ..images import save_grid, save_images
    from ..interop.stable_cascade import (DECODER_GUIDANCE, DECODER_STEPS, PRIOR_GUIDANCE, PRIOR_STEPS, SAMPLER,
                                          check_combined_scales, load_stable_cascade, text_to_image)
    from ..noise import generators_from_seed
    from ._pixart import checked_request
    from .sample import GRID_LIMIT, condition_rows

    more = {"--nfe": nfe, "--spacing": spacing, "--final": final,
            "--max-sequence-length": getattr(guidance, "max_sequence_length", None)}
    more.update({"--" + key.replace("_", "-"): value for key, value in options.items() if value is not None})
    guidance = checked_request(directory, "Stable Cascade prior", TAKES, guidance, {}, {**(refused or {}), **more})
    if sampler not in (None, SAMPLER):
        raise DiffkitError(f"--sampler {sampler} does not apply to a Stable Cascade folder ({directory}); allowed: "
                           f"{SAMPLER} (DDPMWuerstchenScheduler's step, on its own continuous grid)")
    if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise DiffkitError(f"--batch-size {batch_size!r} is not allowed; give a positive integer or auto")
    prior_scale = PRIOR_GUIDANCE if guidance.guidance_scale is None else \
        float(guidance.guidance_scale) if guidance.convention == "diffusers" else 1 + float(guidance.guidance_scale)
    decoder_scale = DECODER_GUIDANCE if request.guidance_scale is None else request.guidance_scale
    check_combined_scales(request.decoder is None, prior_scale, decoder_scale)  # before any weight is read
    model = load_stable_cascade(directory, request.decoder, device, progress=progress, images=bool(request.images))
    prompts = list(guidance.prompts)
    index, num, nrow = condition_rows(len(prompts), num, nrow or 8, "prompts of --prompt")
    rows = [prompts[i] for i in index.tolist()]
    chunk = min(num, AUTO_BATCH) if batch_size == "auto" else batch_size  # sample i's draws: its own generator
    images = []
    for start in range(0, num, chunk):
        batch = rows[start:start + chunk]
        images.append(text_to_image(
            model, batch, negative_prompt=guidance.negative_prompt, guidance_scale=prior_scale,
            steps=PRIOR_STEPS if steps is None else steps, height=height, width=width,
            decoder_guidance_scale=decoder_scale,
            decoder_steps=DECODER_STEPS if request.steps is None else request.steps,
            generator=generators_from_seed(seed + start, len(batch)), progress=progress,
            images=list(request.images) or None).cpu())
    images = torch.cat(images)
    from pathlib import Path
    out = Path(out) if out else Path("samples.png")
    save_grid(images[:GRID_LIMIT], out, nrow, scale)
    if individual:
        save_images(images, individual)
    pair = f"combined folder {directory}" if request.decoder is None else \
        f"prior {directory} + decoder {request.decoder}"
    shown = f", image prompts {list(request.images)}" if request.images else ""
    print(f"wrote {out} ({num} samples, Stable Cascade {pair}, {SAMPLER} (DDPMWuerstchenScheduler), prompts "
          f"{prompts}{shown})")
    return images
