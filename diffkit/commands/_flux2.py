"""``diffkit sample --checkpoint FLUX2_FOLDER --prompt TEXT``: a FLUX.2 diffusers folder (``Flux2Pipeline`` or
``Flux2KleinPipeline``, :mod:`diffkit.interop.flux2`) with any diffkit sampler, dispatched from
:func:`diffkit.commands.sample.sample_to_files`."""
from __future__ import annotations

from typing import Optional

TAKES = ("--prompt, --negative-prompt (a Flux2KleinPipeline folder's CFG), --guidance-scale (Flux2Pipeline: the "
         "embedded guidance; Klein: CFG, --guidance-convention), --max-sequence-length, --height / --width, --steps / "
         "--nfe, --sampler and its grid options (--flow-shift with another sampler than the pipeline's loop)")


def sample_flux2(directory, *, sampler="ddim", steps=None, nfe=None, num=None, nrow=None, out=None, individual=None,
                 seed=0, device="cpu", batch_size="auto", spacing=None, final=None, scale=1, progress=True,
                 guidance=None, refused: Optional[dict] = None, height=None, width=None, **options):
    """Sample a FLUX.2 folder to a grid (and single PNGs) at ``height`` x ``width`` (default 128 f; multiples of
    2 f; the shift follows the size and the step count): rows as :func:`~.sample.condition_rows`, sample i from
    ``seed + i`` (z at s = 1 in the pipelines' patchified layout), 50 steps; ``--guidance-scale``: Flux2Pipeline's
    embedded guidance as given (default 4.0), Flux2KleinPipeline's CFG (default s = 4.0 in diffusers' convention,
    against ``--negative-prompt``, default "", the pipeline's); ``ddim`` without a grid option steps on the
    pipeline's sigmas (its loop), any other sampler on its diffkit grid of the size's flow schedule. ``refused``:
    {flag: value} of flags a FLUX.2 folder does not take (one line for the first given)."""
    from ..interop.flux2 import FLUX2_STEPS, load_flux2, text_to_image
    from ._chroma import _guidance
    from ._pixart import checked_request
    from ._sd3 import pipeline_loop, prompted_rows
    from .sample import draw_prompted_grid

    guidance = checked_request(directory, "FLUX.2", TAKES, guidance, options, refused,
                               keys=("refiner", "t2i_adapter", "redux", "thresholding"))
    flux2 = load_flux2(directory, device, progress=progress)
    _, _, prompts, _, num, nrow, per_sample = prompted_rows(flux2, guidance, None, None, num, nrow, seed, device,
                                                            progress)
    own = pipeline_loop(sampler, spacing, final, nfe)
    steps = FLUX2_STEPS if steps is None and nfe is None else steps
    how_guided = _guidance(guidance)  # Flux2Pipeline's embedded value is a value, not a convention's scale
    if not flux2.klein:
        how_guided["convention"] = "diffusers"
    flux2.check_guidance_scale(how_guided["guidance_scale"])  # before any sampling
    h, w = flux2.latent_shape(1, height, width)[2:]
    denoiser = flux2.denoiser_for(h, w, steps if isinstance(steps, int) else FLUX2_STEPS)

    def prompted(_, noise, sampler, steps, *, cond, spacing=None, final=None, nfe=None, **how):
        grid = {"grid": "scheduler"} if own and pipeline_loop(sampler, spacing, final, nfe) else \
            {"spacing": spacing, "final": final, "nfe": nfe}
        return text_to_image(flux2, cond["prompts"], sampler=sampler, steps=steps, seed=None, latents=noise,
                             negative_prompt=guidance.negative_prompt, return_latents=True,
                             max_sequence_length=guidance.max_sequence_length or 512, **how_guided, **grid, **how)

    images, out = draw_prompted_grid(
        denoiser, num, flux2.latent_shape(1, height, width)[1:], prompted,
        lambda start, n: {key: rows[start:start + n] for key, rows in per_sample.items()}, flux2.decode, out,
        individual, nrow, scale, seed=seed, sampler=sampler, steps=steps, nfe=nfe, spacing=spacing, final=final,
        batch_size=batch_size, device=device, dtype=flux2.dtype, progress=progress, **options)
    grid = "the pipeline's sigmas" if own else "its diffkit grid"
    print(f"wrote {out} ({num} samples, {sampler} on {grid}, {flux2.pipeline} folder {directory}, prompts {prompts})")
    return images
