"""VisualCloze folders (diffusers 0.42.1 ``VisualClozeGenerationPipeline``): in-context image generation on a
FLUX.1 Fill transformer, sampled with any diffkit sampler.

VisualCloze (Li et al. 2025, "VisualCloze: A Universal Image Generation Framework via Visual In-Context
Learning", Sec. 3) lays a task out as a grid: each row one example of the task (its images in the task's order),
the last row the query, whose images to generate (the targets) are blank; the grid is "infilled" by FLUX.1 Fill
(:mod:`.flux_channels`: the latents' tokens, then the known image's latents and the mask's f^2 channels per latent
cell). diffkit reuses :mod:`.flux` throughout (the folder's loading, CLIP + T5 prompt encoding, 2 x 2 packing, the
resolution-dependent flow shift, the flow-prediction Denoiser, the VAE) and :func:`.flux_channels.fill_mask`;
every step of the pipeline's ``__call__`` is reproduced:

* the grid (the pipeline's ``VisualClozeProcessor.preprocess``, called as it is: its size rules are its own):
  each row resized so that its first image has about ``resolution``^2 pixels at its aspect ratio (each side floored
  to a multiple of 2 f, ``_resize_and_crop``), the row's other images to that size; targets black images of it
  (-1 after normalising, not 0 as Fill's masked image) with mask 1, everything else mask 0. The row's images side by
  side are one VAE input.
* the state: the packed tokens (B, L, 4 C) of all rows one after the other (rows may differ in size, so there is
  no one latent image): L = sum over rows of (h_r / 2)(w_r / 2). The image ids of row r (from 1) are (r, row,
  column) of its own patch grid (``_prepare_latent_image_ids``: the RoPE of FLUX.1 Kontext's reference offset,
  one offset per row).
* the condition tokens, concatenated after the state's 4 C channels in every call (:class:`VisualClozeNet`): per
  row the packed latents (E(x_r) - shift) scale of a posterior draw (not the mean), then the packed f^2 mask
  channels (:func:`.flux_channels.fill_mask`: the pipeline's ``view`` / ``permute``); the whole grid, context
  examples included, is denoised from noise (their latents are given only as condition).
* draws (sample i from the generator ``seed + i``, the pipeline's ``generator[i]``): the rows' posteriors in order,
  then the noise in the packed shape (1, L, 4 C) (the pipeline's ``randn_tensor(image_latents.shape)``), which is
  the start: ``scale_noise`` at sigma 1 is the noise itself.
* text (:func:`visualcloze_prompt`): one prompt for CLIP (pooled) and T5 (``max_sequence_length``, default 512):
  "{layout} {task} The last image of the last row depicts: {content}" (the content part only with a content
  prompt), stripped; the layout part is ``get_layout_prompt``'s "A grid layout with R rows and C columns,
  displaying R C images arranged side by side." as diffusers 0.42.1 formats it: a one-element tuple (a stray comma
  there), so the text holds "('A grid layout ... side by side.',)".
* time: FLUX's flow Euler on the scheduler's ``set_timesteps(sigmas=linspace(1, 1/N, N), mu)``, mu of the grid's
  token count L (``calculate_shift``: :meth:`.flux.Flux.mu` of a 2 x 2 L latent, whose packed length is L); the
  embedded guidance (``guidance_scale``, default 30; 50 steps) in every call, no classifier-free guidance.
* output: the last row's tokens unpacked, decoded, (x + 1)/2 clamped, each target's columns cut out.

``VisualClozePipeline`` (the combined folder, the same components): its generation stage is this; its upsampling
stage (``VisualClozeUpsamplingPipeline`` = ``FluxFillPipeline``: SDEdit of each target at ``upsampling_height`` x
``upsampling_width`` under an all-white mask) is :func:`upsample` (``generate(upsampling_strength=)``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from .flux import FluxNet, MAX_SEQUENCE_LENGTH, latent_image_ids, pack_latents, unpack_latents

VISUALCLOZE_GENERATION = "VisualClozeGenerationPipeline"
VISUALCLOZE_COMBINED = "VisualClozePipeline"  # generation, then upsampling (:func:`upsample`)
VISUALCLOZE_PIPELINES = (VISUALCLOZE_GENERATION, VISUALCLOZE_COMBINED)
VISUALCLOZE_GUIDANCE = 30.0  # the pipeline's default guidance_scale (the embedded value)
VISUALCLOZE_STEPS = 50  # its default num_inference_steps
VISUALCLOZE_RESOLUTION = 384  # its default resolution (each grid image about resolution^2 pixels)
CONTENT_PREFIX = "The last image of the last row depicts: "  # encode_prompt's prefix of the content prompt


def is_visualcloze_folder(path) -> bool:
    """True for a diffusers folder whose ``model_index.json`` names a VisualCloze pipeline."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) in VISUALCLOZE_PIPELINES


def not_visualcloze(directory, kind: str) -> DiffkitError:
    """The one line for a VisualCloze folder given where a FLUX.1 folder is driven (``diffkit sample``, the FLUX
    functions)."""
    return DiffkitError(f"{directory} is a VisualCloze folder ({kind}): it generates from in-context examples; use "
                        f"diffkit edit --example PNG,PNG --query PNG,target --task-prompt TEXT (library: "
                        f"diffkit.interop.visualcloze.generate)")


class VisualClozeNet(FluxNet):
    """``net(x, t, context, pooled, guidance, condition, img_ids)`` over a FLUX.1 Fill transformer on the packed
    tokens x (B, L, 4 C) of a whole grid: ``condition`` (B, L, 4 C + 4 f^2), the rows' latents and mask channels,
    concatenated after x's channels; ``img_ids`` (L, 3) the rows' ids; the velocity of every token, in x's dtype."""

    def packed_inputs(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> dict:
        """FluxNet's inputs of the tokens x as they are (no packing; ``img_ids``: :meth:`forward`'s)."""
        return self.token_inputs(x, None, t, context)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, pooled: torch.Tensor = None,
                guidance: Optional[float] = None, condition: torch.Tensor = None,
                img_ids: torch.Tensor = None) -> torch.Tensor:
        if condition is None or img_ids is None:
            raise DiffkitError("a VisualCloze transformer needs cond {'condition', 'img_ids'} (visualcloze.generate)")
        inputs = self.inputs(x, t, context, pooled, guidance)
        inputs["img_ids"] = img_ids.to(device=x.device, dtype=context.dtype)
        inputs["hidden_states"] = torch.cat([inputs["hidden_states"], condition.to(inputs["hidden_states"])], dim=2)
        return self.model(**inputs, return_dict=False)[0].to(x.dtype)


@dataclass
class VisualCloze:
    """A loaded VisualCloze folder (:func:`load_visualcloze`): its FLUX components (``flux``, a
    :class:`~.flux.Flux`) and the grid's ``resolution``."""

    flux: object
    resolution: int = VISUALCLOZE_RESOLUTION
    kind: str = VISUALCLOZE_GENERATION
    _denoisers: dict = field(default_factory=dict, repr=False)

    def denoiser_for(self, tokens: int):
        """The flow-prediction Denoiser over :class:`VisualClozeNet` on the flow schedule of a grid of ``tokens``
        packed tokens (the shift :meth:`.flux.Flux.shift` gives a 2 x 2 L latent: mu of the sequence length L)."""
        from ..denoiser import Denoiser
        from ..schedule import NoiseSchedule
        shift = self.flux.shift(2, 2 * tokens)
        if shift not in self._denoisers:
            schedule = NoiseSchedule.flow(int(self.flux.scheduler_config.get("num_train_timesteps", 1000)), shift)
            self._denoisers[shift] = Denoiser(VisualClozeNet(self.flux.transformer), schedule, "flow_prediction")
            self._denoisers[shift].model = self.flux.transformer
        return self._denoisers[shift]

    def scheduler_grid(self, steps: int, tokens: int) -> torch.Tensor:
        """diffkit's grid of the scheduler's sigmas after the pipeline's ``set_timesteps(sigmas=linspace(1, 1/N, N),
        mu)`` for a grid of ``tokens`` tokens (:meth:`.flux.Flux.scheduler_sigmas` of the 2 x 2 L latent)."""
        from .flow_latents import flow_sigmas_grid
        self.flux.check_scheduler_steps(steps)
        schedule = self.denoiser_for(tokens).schedule
        return flow_sigmas_grid(schedule, self.flux.scheduler_sigmas(steps, 2, 2 * tokens), steps)


def load_visualcloze(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                     progress: bool = True, resolution: Optional[int] = None, lora=None) -> VisualCloze:
    """Load a VisualCloze folder (``VisualClozeGenerationPipeline`` or ``VisualClozePipeline``; never downloads):
    its FLUX components by :func:`.flux.load_flux` (a FLUX.1 Fill transformer, 4 (2 C + f^2) input channels; the
    JSON files checked first), ``resolution`` default the folder's (``model_index.json``, 384), as
    ``from_pretrained(resolution=...)``. ``lora``: FLUX LoRA files (paths or (path, scale) pairs) fused as the
    pipelines' ``load_lora_weights`` + ``fuse_lora`` (``FluxLoraLoaderMixin``; :func:`.flux.load_flux`'s)."""
    from .flux import load_flux
    from .sd_xl import _index, pipeline_class
    kind = pipeline_class(directory)
    if kind not in VISUALCLOZE_PIPELINES:
        raise DiffkitError(f"{directory} is not a VisualCloze folder (model_index.json naming "
                           f"{' or '.join(VISUALCLOZE_PIPELINES)})")
    if resolution is None:
        resolution = _index(Path(directory)).get("resolution", VISUALCLOZE_RESOLUTION)
    check_resolution(resolution)
    flux = load_flux(directory, device, dtype, progress, lora=lora, visualcloze=True)
    return VisualCloze(flux, resolution, kind)


def check_resolution(resolution) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution <= 0:
        raise DiffkitError(f"resolution={resolution!r} is not allowed; give a positive integer (pixels: each grid "
                           f"image about resolution^2 pixels, the pipeline's default {VISUALCLOZE_RESOLUTION})")


def visualcloze_prompt(rows: int, columns: int, task_prompt: str, content_prompt: Optional[str] = None) -> str:
    """The text CLIP and T5 read (the pipeline's ``encode_prompt`` of ``get_layout_prompt``'s layout, module
    docstring): layout, task and (given) the content prompt after :data:`CONTENT_PREFIX`, joined by spaces."""
    layout = (f"A grid layout with {rows} rows and {columns} columns, displaying {rows * columns} images arranged "
              f"side by side.",)  # a tuple, as diffusers 0.42.1's get_layout_prompt returns it
    content = "" if content_prompt is None else CONTENT_PREFIX + content_prompt
    return f"{layout} {task_prompt} {content}".strip()


def _open(image, where: str):
    """A grid cell: None (a target), or an RGB PIL image of a PIL image or path (one line otherwise)."""
    from PIL import Image
    if image is None:
        return None
    if isinstance(image, (str, Path)):
        from .controlnet import open_control_image
        image = open_control_image(image, where)
    if not isinstance(image, Image.Image):
        raise DiffkitError(f"{where}: a {type(image).__name__} is not allowed; give a PIL image or a path (None: a "
                           f"target)")
    return image.convert("RGB")


def check_grid(grid, where: str = "the grid") -> list:
    """``grid`` (rows of images, the last the query with None at its targets) as rows of RGB PIL images / None;
    one line for what the pipeline's ``check_inputs`` refuses (rows of different lengths, no target, a missing
    example image) or what it cannot read."""
    if not isinstance(grid, (list, tuple)) or not grid or not all(isinstance(r, (list, tuple)) and r for r in grid):
        raise DiffkitError(f"{where} is not a list of rows of images (in-context examples, then the query)")
    rows = [[_open(image, f"{where}, row {r + 1}") for image in row] for r, row in enumerate(grid)]
    if len({len(row) for row in rows}) != 1:
        raise DiffkitError(f"{where} has rows of {sorted({len(row) for row in rows})} images; every in-context "
                           f"example and the query take the task's same number of images")
    if not any(image is None for image in rows[-1]):
        raise DiffkitError(f"{where}: the query (last row) has no target; mark the images to generate with None "
                           f"(on the command line: target)")
    if all(image is None for image in rows[-1]):
        raise DiffkitError(f"{where}: the query (last row) has only targets; give at least one of its images")
    for r, row in enumerate(rows[:-1]):
        if any(image is None for image in row):
            raise DiffkitError(f"{where}: in-context example {r + 1} misses an image (None); examples are complete")
    return rows


def grid_condition(vc: VisualCloze, rows: list, generator: torch.Generator) -> tuple:
    """(condition (1, L, 4 C + 4 f^2), img_ids (L, 3), the last row's latent (h, w), its images' pixel sizes, the
    targets' flags) of one grid (:func:`check_grid`'s rows), as the pipeline's ``preprocess`` and
    ``_prepare_latents``: each row's posterior drawn from ``generator`` in order (module docstring)."""
    from .flux_channels import fill_mask
    from . import require
    require("diffusers")
    from diffusers.pipelines.visualcloze.visualcloze_utils import VisualClozeProcessor
    flux, f = vc.flux, vc.flux.vae_scale_factor
    processor = VisualClozeProcessor(vae_scale_factor=2 * f, vae_latent_channels=flux.latent_channels(),
                                               resolution=vc.resolution)
    try:
        images, sizes, targets = processor.preprocess_image([list(row) for row in rows], vae_scale_factor=f)
    except ZeroDivisionError:  # its branch for several targets floors sides to multiples of 16, maybe to 0
        raise DiffkitError(f"resolution={vc.resolution} is too small for this grid: with several targets the "
                           f"pipeline resizes every image to the query's width and floors the sides to multiples of "
                           f"16, and a side falls to 0 here; give a larger resolution (--resolution)") from None
    masks = processor.preprocess_mask(images, targets)
    tokens, ids = [], []
    for r, (row, mask) in enumerate(zip(images, masks), start=1):
        pixels = torch.cat(row, dim=3)  # the row's images side by side, [-1, 1]
        latents = flux.encode(pixels, generator, sample=True)  # (E(x) - shift) scale, a posterior draw
        h, w = latents.shape[2:]
        channels = fill_mask(torch.cat(mask, dim=3).to(latents), f)  # (1, f^2, h, w)
        tokens.append(torch.cat([pack_latents(latents), pack_latents(channels)], dim=2))
        row_ids = latent_image_ids(h, w, flux.device)
        row_ids[:, 0] = r
        ids.append(row_ids)
    return torch.cat(tokens, dim=1), torch.cat(ids), (h, w), sizes[-1], targets


def _per_grid(value, count: int, name: str) -> list:
    values = [value] if value is None or isinstance(value, str) else list(value)
    if len(values) not in (1, count) or not all(v is None or isinstance(v, str) for v in values):
        raise DiffkitError(f"{name} is given {len(values)} times for {count} grids; give one string (every grid) or "
                           f"one per grid")
    return values * count if len(values) == 1 else values


def generate(vc: VisualCloze, images, task_prompt: Union[str, Sequence[str]],
             content_prompt: Union[None, str, Sequence[Optional[str]]] = None, *, sampler: Optional[str] = None,
             steps: Optional[int] = None, nfe: Optional[int] = None, grid=None,
             guidance_scale: Optional[float] = None, seed: int = 0, generator=None,
             max_sequence_length: int = MAX_SEQUENCE_LENGTH, return_latents: bool = False,
             progress: bool = False, upsampling_strength: float = 0.0, upsampling_height: Optional[int] = None,
             upsampling_width: Optional[int] = None, **options) -> list:
    """The targets of VisualCloze grids, as ``VisualClozeGenerationPipeline`` (module docstring), with any diffkit
    sampler.

    images: one grid (rows of PIL images or paths: the in-context examples, then the query with None at each
        target), or a list of grids, each sampled alone (grid i from the generator ``seed + i``, or
        ``generator[i]``: the pipeline's ``generator`` list; grids may differ in layout and size, which one
        pipeline call refuses).
    task_prompt / content_prompt: one string for every grid or one per grid; the content prompt may be None.
    sampler / grid: both None: the pipeline's loop (flow Euler on its sigmas, ``steps`` default 50); a sampler:
        its own grid of the flow schedule at the grid's shift. guidance_scale: the embedded guidance (default 30;
        refused for a transformer without guidance embeds). options: :func:`diffkit.sample`'s (``eta``, ...).
    upsampling_strength > 0 (with upsampling_height / upsampling_width): ``VisualClozePipeline``'s upsampling stage
        (:func:`upsample`; that pipeline's default strength is 1.0, this function's 0: none, as
        ``VisualClozeGenerationPipeline``), with the same steps, guidance, sampler and generators.
    Returns per grid the list of its targets' images (3, h, w) in [0, 1] in the query's order, or with
    ``return_latents`` its packed z_0 (1, L, 4 C) (the pipeline's ``output_type="latent"``)."""
    from ..errors import check_range
    check_range("upsampling_strength", upsampling_strength, 0.0, 1.0)
    if return_latents and upsampling_strength:
        raise DiffkitError("return_latents returns the generation's latents; give upsampling_strength=0")
    from ..noise import randn
    from ..sampling import sample
    from .flow_latents import pipeline_grid
    flux = vc.flux
    grids = [images] if isinstance(images, (list, tuple)) and images and isinstance(images[0], (list, tuple)) \
        and images[0] and not isinstance(images[0][0], (list, tuple)) else images
    if not isinstance(grids, (list, tuple)) or not grids:
        raise DiffkitError("images is not a grid (rows of images) or a list of grids")
    grids = [check_grid(g, f"grid {i + 1}" if len(grids) > 1 else "the grid") for i, g in enumerate(grids)]
    tasks = _per_grid(task_prompt, len(grids), "task_prompt")
    if any(task is None for task in tasks):
        raise DiffkitError("task_prompt is missing; give the task's description (the pipeline's task_prompt)")
    contents = _per_grid(content_prompt, len(grids), "content_prompt")
    flux.check_guidance_scale(guidance_scale)
    guidance = (VISUALCLOZE_GUIDANCE if guidance_scale is None else float(guidance_scale)) \
        if flux.guidance_embeds else None
    if generator is None:
        generator = [torch.Generator().manual_seed(seed + i) for i in range(len(grids))]
    elif isinstance(generator, torch.Generator) or len(generator) != len(grids):
        raise DiffkitError(f"generator: give one torch.Generator per grid ({len(grids)})")
    outputs = []
    for i, (rows, task, content) in enumerate(zip(grids, tasks, contents)):
        prompt = visualcloze_prompt(len(rows), len(rows[0]), task, content)
        context, pooled = flux.encode_prompts([prompt], max_sequence_length)
        condition, img_ids, (h, w), sizes, targets = grid_condition(vc, rows, generator[i])
        tokens = condition.shape[1]
        noise = randn((1, tokens, 4 * flux.latent_channels()), generator[i], device=flux.device)
        kind, times, n = pipeline_grid(sampler, grid, steps, nfe, VISUALCLOZE_STEPS,
                                       lambda k: vc.scheduler_grid(k, tokens), options.get("flow_shift"))
        cond = {"context": context, "pooled": pooled, "condition": condition, "img_ids": img_ids}
        if guidance is not None:
            cond["guidance"] = guidance
        z0 = sample(vc.denoiser_for(tokens), noise, kind, n, nfe=nfe, grid=times, seed=seed + i, cond=cond,
                    progress=progress, device=flux.device, dtype=flux.dtype, **options)
        if return_latents:
            outputs.append(z0)
            continue
        query = unpack_latents(z0[:, tokens - (h // 2) * (w // 2):], h, w)
        pixels = (flux.decode(query)[0] / 2 + 0.5).clamp(0, 1)
        starts = [sum(size[1] for size in sizes[:k]) for k in range(len(sizes))]
        outputs.append([pixels[:, :size[0], start:start + size[1]]
                        for size, start, target in zip(sizes, starts, targets) if target])
        if upsampling_strength:  # VisualClozePipeline's second stage, on grid i's generator
            outputs[-1] = upsample(vc, outputs[-1], content, generator[i], upsampling_strength, upsampling_height,
                                   upsampling_width, steps=steps, guidance_scale=guidance_scale, sampler=sampler,
                                   max_sequence_length=max_sequence_length, progress=progress, **options)
    return outputs


def upsample(vc: VisualCloze, targets: list, content_prompt: Optional[str], generator: torch.Generator,
             strength: float, height: Optional[int] = None, width: Optional[int] = None, *,
             steps: Optional[int] = None, guidance_scale: Optional[float] = None, sampler: Optional[str] = None,
             max_sequence_length: int = MAX_SEQUENCE_LENGTH, progress: bool = False, **options) -> list:
    """``VisualClozePipeline``'s upsampling stage for one grid's ``targets`` ((3, h, w) in [0, 1], the generation's),
    ``VisualClozeUpsamplingPipeline`` = FluxFillPipeline with an all-white mask: each target rounded to 8 bits (the
    generation's PIL output), resized to ``height`` x ``width`` (default 128 f each, the Fill pipeline's default,
    whatever the aspect ratio; Lanczos, its ``image_processor.preprocess``), SDEdit at ``strength`` with the Fill
    transformer (:func:`.flux.image_to_image` with ``mask`` ones: the masked image is all zeros, so the image enters
    only as the start of strength < 1), prompt the content prompt ("" without one), ``generator`` the grid's, drawing
    on after the generation (every target of the grid from it, as the pipeline's ``generator[i]`` list)."""
    from . import require
    from .flux import DEFAULT_SAMPLE_SIZE, image_to_image
    require("diffusers")
    from diffusers.image_processor import VaeImageProcessor
    from PIL import Image
    flux, f = vc.flux, vc.flux.vae_scale_factor
    height, width = height or DEFAULT_SAMPLE_SIZE * f, width or DEFAULT_SAMPLE_SIZE * f
    flux.latent_shape(1, height, width)  # multiples of 2 f: one line otherwise
    processor = VaeImageProcessor(vae_scale_factor=2 * f)
    pils = [Image.fromarray((t.permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")) for t in targets]
    images = torch.cat([processor.preprocess(pil, height=height, width=width) for pil in pils])
    out = image_to_image(flux, images, [content_prompt or ""] * len(pils), strength,
                         mask=torch.ones(1, 1, height, width), steps=VISUALCLOZE_STEPS if steps is None else steps,
                         guidance_scale=VISUALCLOZE_GUIDANCE if guidance_scale is None else guidance_scale,
                         seed=None, generator=[generator] * len(pils), sampler=sampler,
                         max_sequence_length=max_sequence_length, progress=progress, **options)
    return list(out)


__all__ = ["VisualCloze", "VisualClozeNet", "load_visualcloze", "is_visualcloze_folder", "generate", "upsample",
           "visualcloze_prompt", "grid_condition", "check_grid", "VISUALCLOZE_PIPELINES", "VISUALCLOZE_GUIDANCE",
           "VISUALCLOZE_STEPS", "VISUALCLOZE_RESOLUTION"]
