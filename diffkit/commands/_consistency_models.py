"""``diffkit sample --checkpoint CM_FOLDER [--class N ...] [--steps K | --timesteps 22,0]``: an OpenAI consistency-model
diffusers folder (``ConsistencyModelPipeline``, :mod:`diffkit.interop.consistency_models`), dispatched from
:func:`diffkit.commands.sample.sample_to_files`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import DiffkitError

TAKES = ("--class, --steps or --timesteps, --sampler consistency, --num, --nrow, --seed, --out, --noise-out, "
         "--individual, --scale, --batch-size, --device")


def check_timesteps_flag(checkpoint, timesteps) -> None:
    """``--timesteps`` is a consistency-model folder's only (the pipeline's ``timesteps``): one line elsewhere."""
    from ..interop.consistency_models import is_consistency_models_folder
    if timesteps is not None and not is_consistency_models_folder(checkpoint):
        raise DiffkitError(f"--timesteps applies to a consistency-model folder (ConsistencyModelPipeline); "
                           f"{checkpoint} is not one: give --steps (and --spacing for the grid)")


def sample_consistency_models(directory, *, sampler="consistency", steps=None, nfe=None, num=None, nrow=None,
                              out=None, noise_out=None, individual=None, seed=0, device="cpu", batch_size="auto",
                              spacing=None, final=None, scale=1, progress=True, guidance=None, timesteps=None,
                              refused: Optional[dict] = None, **options):
    """Sample a consistency-model folder to a grid (and the noise grid, single PNGs): the ``consistency`` sampler on
    the folder's grid (:func:`~diffkit.interop.consistency_models.cm_grid`: ``steps``, default the pipeline's 1, or
    the pipeline's explicit ``timesteps``), sample i's z from ``seed + i`` started at the pipeline's x_T = sigma_max
    z; a class-conditional folder: rows of ``--class`` (default every class), as a diffkit conditional model.
    ``refused``: {flag: value} of ``diffkit sample`` flags it does not take (one line for the first given)."""
    import torch

    from ..drawing import draw_samples
    from ..images import save_grid, save_images
    from ..interop.consistency_models import check_consistency_models_folder, load_consistency_models_folder
    from ..interop.consistency_models import cm_grid, start_noise
    from ..sampling import sample
    from ._pixart import given_flags
    from .sample import GuidanceRequest, check_grid_files

    guidance = guidance or GuidanceRequest()
    more = {"--sampler": None if sampler == "consistency" else sampler, "--nfe": nfe, "--spacing": spacing,
            "--final": final, "--prompt": guidance.prompts, "--negative-prompt": guidance.negative_prompt,
            "--guidance-scale": guidance.guidance_scale, "--pag-layers": guidance.pag_layers}
    given = given_flags(guidance, options, {**(refused or {}), **more}, allowed=("--class",))
    given += [f"--{key.replace('_', '-')}" for key, value in options.items() if value is not None]
    if given:
        raise DiffkitError(f"{given[0]} does not apply to a consistency-model folder ({directory}); it takes {TAKES}")
    config = check_consistency_models_folder(directory)  # before any weight is read
    grid = cm_grid(config["num_train_timesteps"], 1 if steps is None and timesteps is None else steps, timesteps)
    denoiser = load_consistency_models_folder(directory, device)
    labels, num, nrow = guidance.labels(denoiser.num_classes, num, nrow or 8)
    out = Path(out) if out else Path("samples.png")
    noise_out = Path(noise_out) if noise_out else out.parent / "noise.png"
    check_grid_files(out, noise_out)

    def sample_fn(denoiser, z, *_, generator, cond, progress, **__):  # the pipeline's x_T = sigma_max z
        return sample(denoiser, start_noise(denoiser, z), sampler="consistency", grid=grid, cond=cond,
                      generator=generator, progress=progress)

    results, noise_parts = [], []

    def keep(batch):
        results.append(batch.images.cpu())
        noise_parts.append(batch.noise.cpu())

    drawn = draw_samples(denoiser, num, denoiser.sample_shape, seed=seed, sampler="consistency",
                         cond=None if labels is None else {"y": labels}, batch_size=batch_size, device=device,
                         sample_fn=sample_fn, sink=keep, progress=progress)
    images = torch.cat(results)
    save_grid(torch.cat(noise_parts).clamp(-1, 1), noise_out, nrow, scale)
    save_grid(images, out, nrow, scale)
    if individual:
        save_images(images, individual)
    what = "" if labels is None else f", classes {sorted(set(labels.tolist()))}"
    times = ", ".join(str(int(config["num_train_timesteps"]) - 1 - int(t)) for t in grid[:-1].flip(0).tolist())
    print(f"wrote {out} ({num} samples, consistency at the folder's timesteps {times}, {drawn.nfe:g} network "
          f"evaluations per sample{what}) and {noise_out}")
    return images
