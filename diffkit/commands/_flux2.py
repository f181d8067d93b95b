"""``diffkit sample --checkpoint FLUX2_FOLDER --prompt TEXT``: a FLUX.2 diffusers folder (``Flux2Pipeline`` or
``Flux2KleinPipeline``, :mod:`diffkit.interop.flux2`) with any diffkit sampler, dispatched from
:func:`diffkit.commands.sample.sample_to_files`."""
from __future__ import annotations

from typing import Optional

from ..errors import DiffkitError

TAKES = ("--prompt, --negative-prompt (a Flux2KleinPipeline folder's CFG), --reference-image, --guidance-scale "
         "(Flux2Pipeline: the embedded guidance; Klein: CFG, --guidance-convention), --max-sequence-length, --height / "
         "--width, --lora, --steps / --nfe, --sampler and its grid options (--flow-shift with another sampler than the "
         "pipeline's loop)")


def add_reference_flags(parser) -> None:
    """``diffkit sample --reference-image PNG`` (repeatable): a FLUX.2 folder's reference images."""
    from ._common import path_arg
    parser.add_argument("--reference-image", action="append", dest="reference_images", type=path_arg, metavar="PNG",
                        help="FLUX.2 folders (Flux2Pipeline, Flux2KleinPipeline): an image in context for every sample "
                             "(the pipelines' image=; repeat for several, in order); the size defaults to the first "
                             "one's (docs/interop.md)")


def reference_request(args, checkpoint) -> Optional[list]:
    """``--reference-image``'s files (None without it), before any weight is read: one line on a checkpoint that is
    no FLUX.2 folder, or for a file that is no image."""
    from ..interop.flux2 import is_flux2_folder
    from ..interop.ip_adapter import open_image
    files = getattr(args, "reference_images", None)
    if not files:
        return None
    if checkpoint is None or not is_flux2_folder(checkpoint):
        raise DiffkitError(f"--reference-image applies to a FLUX.2 folder (Flux2Pipeline, Flux2KleinPipeline); "
                           f"{checkpoint} is not one")
    for file in files:
        try:
            open_image(file)
        except DiffkitError:
            raise DiffkitError(f"--reference-image {file}: cannot be read as an image; give a PNG or JPEG") from None
    return list(files)


def sample_flux2(directory, *, sampler="ddim", steps=None, nfe=None, num=None, nrow=None, out=None, individual=None,
                 seed=0, device="cpu", batch_size="auto", spacing=None, final=None, scale=1, progress=True,
                 guidance=None, refused: Optional[dict] = None, height=None, width=None, lora=None, **options):
    """Sample a FLUX.2 folder to a grid (and single PNGs) at ``height`` x ``width`` (default 128 f; multiples of
    2 f; the shift follows the size and the step count): rows as :func:`~.sample.condition_rows`, sample i from
    ``seed + i`` (z at s = 1 in the pipelines' patchified layout), 50 steps; ``--guidance-scale``: Flux2Pipeline's
    embedded guidance as given (default 4.0), Flux2KleinPipeline's CFG (default s = 4.0 in diffusers' convention,
    against ``--negative-prompt``, default "", the pipeline's); ``ddim`` without a grid option steps on the
    pipeline's sigmas (its loop), any other sampler on its diffkit grid of the size's flow schedule. ``refused``:
    {flag: value} of flags a FLUX.2 folder does not take (one line for the first given). ``reference_images`` (in
    ``options``): ``--reference-image`` files, in context for every sample as the pipelines' ``image=`` list
    (:mod:`diffkit.interop.flux2_reference`; the size defaults to the first one's processed size). ``lora``: LoRA
    files ((path, scale) pairs) fused into the transformer as the pipelines' ``load_lora_weights`` + ``fuse_lora``
    (:func:`diffkit.interop.flux2.load_flux2`)."""
    from ..interop.flux2 import FLUX2_STEPS, load_flux2, text_to_image
    from ._chroma import _guidance
    from ._pixart import checked_request
    from ._sd3 import pipeline_loop, prompted_rows
    from .sample import draw_prompted_grid

    references = options.pop("reference_images", None)
    guidance = checked_request(directory, "FLUX.2", TAKES, guidance, options, refused,
                               keys=("refiner", "t2i_adapter", "redux", "thresholding"))
    flux2 = load_flux2(directory, device, progress=progress, lora=lora)
    if references is not None:  # processed (and refused) before sampling; their size is the default
        from ..interop.flux2_reference import reference_images
        size = reference_images(flux2, references)[1]
        height, width = size[0] if height is None else height, size[1] if width is None else width
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
                             max_sequence_length=guidance.max_sequence_length or 512, references=references,
                             **how_guided, **grid, **how)

    images, out = draw_prompted_grid(
        denoiser, num, flux2.latent_shape(1, height, width)[1:], prompted,
        per_sample, flux2.decode, out,
        individual, nrow, scale, seed=seed, sampler=sampler, steps=steps, nfe=nfe, spacing=spacing, final=final,
        batch_size=batch_size, device=device, dtype=flux2.dtype, progress=progress, **options)
    grid = "the pipeline's sigmas" if own else "its diffkit grid"
    print(f"wrote {out} ({num} samples, {sampler} on {grid}, {flux2.pipeline} folder {directory}, prompts {prompts})")
    return images
