"""Marigold folders: dense prediction (depth, surface normals, intrinsic images) by a fine-tuned Stable Diffusion UNet.

Marigold (Ke et al. 2024, "Repurposing Diffusion-Based Image Generators for Monocular Depth Estimation", CVPR, Sec.
3; the normals and intrinsics models: Ke et al. 2025, "Marigold: Affordable Adaptation of Diffusion-Based Image
Generators for Image Analysis") fine-tunes SD 2's UNet to denoise the VAE latent d of a prediction (a depth map
repeated to three channels, a normals map, T intrinsic targets side by side: 4 T channels) conditioned on the latent
z of the image, ``unet(cat([z, d_t]), t, empty text)``: ``in_channels = 4 + out_channels``. The text condition is the
CLIP encoder's states of the empty prompt, without padding (two tokens). A folder written by diffusers'
``MarigoldDepthPipeline`` / ``MarigoldNormalsPipeline`` / ``MarigoldIntrinsicsPipeline`` holds a Stable Diffusion
folder's components and, in ``model_index.json``, the model's settings: ``default_denoising_steps``,
``default_processing_resolution``, depth's ``scale_invariant`` / ``shift_invariant``, normals' ``use_full_z_range``,
intrinsics' ``target_properties``.

:func:`predict` runs the pipelines' ``__call__`` (diffusers 0.42.1) step for step:

1. images in [-1, 1] (the pipelines' [0, 1] times 2 minus 1), resized so the longer side is
   ``processing_resolution`` (antialiased; 0: as they are; default the folder's), replicate-padded to multiples of
   the VAE factor;
2. z = scaling_factor * E(x)'s posterior mode, each image's repeated ``ensemble_size`` times (image-major), the
   starting latents d_T ~ N(0, I) drawn in one piece from one generator (``torch.Generator().manual_seed(seed)``, as
   ``pipe(image, generator=...)``) or given;
3. the loop over chunks of ``batch_size`` members, each on the folder's scheduler's timesteps: DDIM (eta 0) as
   diffkit's ``ddim``, an LCMScheduler as diffkit's ``consistency`` sampler (its step noise from the same generator,
   chunk after chunk, as ``scheduler.step(..., generator=generator)``); any other diffkit sampler on the same grid;
4. decoding, unpadding, the test-time ensemble (:mod:`.marigold_outputs`), the resize back to the input size
   (``match_input_resolution``, not antialiased; normals renormalised after it).

:class:`MarigoldNet` puts the image latents *before* the noisy latents (the pipelines' channel order).
``diffkit predict --checkpoint FOLDER --image IN.png --out OUT`` writes the prediction (.npy) and its picture (.png).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch

from ..errors import DiffkitError, check_choice, check_range, read_json_object
from . import library_progress_bars
from .marigold_outputs import REDUCTIONS, RESAMPLE_METHODS
from .sd_inpaint import ChannelConcatNet, concat_denoiser

PIPELINES = {"MarigoldDepthPipeline": "depth", "MarigoldNormalsPipeline": "normals",
             "MarigoldIntrinsicsPipeline": "intrinsics"}
SCHEDULERS = ("DDIMScheduler", "LCMScheduler")  # the pipelines' schedulers (diffkit's ddim and consistency)
IMAGE_KEY = "marigold_image_latents"  # the cond entry MarigoldNet reads
DEPTH_ENSEMBLING = ("reduction", "regularizer_strength", "max_iter", "tol", "max_res")  # ensemble_depth's options


def marigold_task(path) -> Optional[str]:
    """``depth``, ``normals`` or ``intrinsics`` for a folder whose ``model_index.json`` names a Marigold pipeline;
    None for anything else (read, not loaded)."""
    index_file = Path(path) / "model_index.json"
    if not index_file.is_file():
        return None
    try:
        return PIPELINES.get(read_json_object(index_file).get("_class_name"))
    except (DiffkitError, TypeError):
        return None


def is_marigold_folder(path) -> bool:
    """True for a MarigoldDepthPipeline / MarigoldNormalsPipeline / MarigoldIntrinsicsPipeline folder."""
    return marigold_task(path) is not None


def refuse_marigold_folder(path, what: str) -> None:
    """One line for a Marigold folder given where ``what`` (e.g. "sampling") was asked: it only predicts."""
    task = marigold_task(path)
    if task is not None:
        raise DiffkitError(f"{path} is a Marigold {task} folder: it predicts {task} from an image and does no "
                           f"{what}; use diffkit predict --checkpoint {path} --image IN.png --out OUT")


class MarigoldNet(ChannelConcatNet):
    """``net(d, t, marigold_image_latents=z, **cond)`` = ``inner(cat([z, d], 1), t, **cond)``: the pipelines'
    ``torch.cat([batch_image_latent, batch_pred_latent], dim=1)`` (:class:`~.sd_inpaint.ChannelConcatNet`)."""
    KEYS = (IMAGE_KEY,)
    WHAT = "a Marigold UNet (image latents + prediction latents in)"
    USE = "it predicts from an image; use diffkit.interop.marigold.predict (diffkit predict --image PNG)"
    EXTRA_FIRST = True


def check_marigold_unet(task: str):
    """The UNet check of a Marigold folder for :func:`~.stable_diffusion._load_stable_diffusion` (called with its
    config before any weights are read): conditioned on text states alone, no guidance input, ``in_channels = 4 +
    out_channels`` with 4 output channels (depth, normals) or a multiple of 4 (intrinsics)."""
    def check(config: dict, directory, lcm: bool = False, inpainting: bool = False, **_) -> None:
        extra = [f"{key}={config[key]!r}" for key in ("addition_embed_type", "class_embed_type", "encoder_hid_dim_type",
                                                       "time_cond_proj_dim") if config.get(key) is not None]
        if extra:
            raise DiffkitError(f"{directory} has a UNet with {', '.join(extra)}; a Marigold UNet is conditioned on "
                               f"the empty prompt's states alone")
        in_channels, out_channels = config.get("in_channels", 4), config.get("out_channels", 4)
        targets = out_channels == 4 if task != "intrinsics" else (isinstance(out_channels, int) and out_channels > 0
                                                                   and out_channels % 4 == 0)
        if not targets or in_channels != 4 + out_channels:
            allowed = "4 and 8" if task != "intrinsics" else "4 T and 4 + 4 T (T targets)"
            raise DiffkitError(f"{directory} has a UNet with in_channels={in_channels}, out_channels={out_channels}; "
                               f"a Marigold {task} UNet has out_channels, in_channels = {allowed}")
    return check


@dataclass
class Marigold:
    """A loaded Marigold folder (:func:`load_marigold`): its Stable Diffusion components ``sd``, the ``task`` and
    the pipeline settings of its ``model_index.json``."""

    sd: object
    task: str
    settings: dict
    _embedding: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def n_targets(self) -> int:
        """Targets predicted at once: ``out_channels // latent_channels`` (1 but for intrinsics)."""
        return int(self.sd.unet.config.out_channels) // int(self.sd.vae.config.latent_channels)

    @property
    def scale_invariant(self) -> bool:
        return bool(self.settings.get("scale_invariant", True))

    @property
    def shift_invariant(self) -> bool:
        return bool(self.settings.get("shift_invariant", True))

    @property
    def use_full_z_range(self) -> bool:
        return bool(self.settings.get("use_full_z_range", True))

    @property
    def target_properties(self) -> dict:
        return self.settings.get("target_properties") or {}

    @property
    def default_sampler(self) -> str:
        """The folder's scheduler as a diffkit sampler: ``consistency`` for an LCMScheduler, else ``ddim``."""
        return "consistency" if self.sd.consistency is not None else "ddim"

    def empty_text_embedding(self) -> torch.Tensor:
        """(1, 2, dim): the text encoder's last states of the empty prompt, not padded (``padding="do_not_pad"``:
        the start and end tokens), computed once as the pipelines do."""
        if self._embedding is None:
            tokenizer = self.sd.tokenizer
            ids = tokenizer("", padding="do_not_pad", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids.to(self.sd.device)
            with torch.no_grad():
                self._embedding = self.sd.text_encoder(ids)[0].to(self.sd.dtype)
        return self._embedding

    @property
    def denoiser(self):
        """The UNet as a :class:`~diffkit.denoiser.Denoiser` of the prediction latents (cond: ``context``,
        ``marigold_image_latents``), inside LCM's consistency function for an LCMScheduler folder (:mod:`.lcm`)."""
        inner = concat_denoiser(MarigoldNet, self.sd.unet, self.sd.schedule, self.sd.prediction_type)
        return self.sd._model(inner)


def load_marigold(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                  progress: bool = True) -> Marigold:
    """Load a Marigold folder (never downloads): the UNet (checked first, :func:`check_marigold_unet`), VAE, CLIP
    text encoder and tokenizer and the scheduler (DDIM or LCM) through the Stable Diffusion loader, and the pipeline's
    settings from ``model_index.json``."""
    from .stable_diffusion import _load_stable_diffusion
    task = marigold_task(directory)
    if task is None:
        raise DiffkitError(f"{directory} is not a Marigold folder; allowed: a folder whose model_index.json names "
                           f"{', '.join(PIPELINES)}")
    settings = read_json_object(Path(directory) / "model_index.json", "diffusers index")
    scheduler = settings.get("scheduler") if isinstance(settings.get("scheduler"), list) else [None, None]
    if scheduler[-1] not in SCHEDULERS:
        raise DiffkitError(f"{directory}: a Marigold folder with scheduler {scheduler[-1]!r} is not allowed; allowed: "
                           f"{' or '.join(SCHEDULERS)} (the pipelines' own)")
    with library_progress_bars(progress):
        sd = _load_stable_diffusion(Path(directory), device, dtype, check_unet=check_marigold_unet(task))
    if task == "intrinsics" and len((settings.get("target_properties") or {}).get("target_names") or []) != \
            sd.unet.config.out_channels // sd.vae.config.latent_channels:
        raise DiffkitError(f"{directory}: target_properties' target_names do not match the UNet's "
                           f"{sd.unet.config.out_channels // sd.vae.config.latent_channels} targets")
    return Marigold(sd, task, {k: v for k, v in settings.items() if not isinstance(v, list)})


@dataclass
class MarigoldPrediction:
    """What :func:`predict` returns, in the pipelines' ``output_type="pt"`` layout: ``prediction`` (N, 1, H, W)
    depth in [0, 1], (N, 3, H, W) unit normals or (N T, 3, H, W) intrinsic targets in [0, 1]; ``uncertainty`` (with
    ``uncertainty=True`` and ensemble_size > 1) of the same layout with 1 channel for depth and normals; ``latents``
    the final prediction latents (N E, 4 T, h, w)."""

    prediction: torch.Tensor
    uncertainty: Optional[torch.Tensor]
    latents: torch.Tensor

    def numpy(self) -> tuple:
        """(prediction, uncertainty or None) as ``output_type="np"`` gives them: (N, H, W, C) float32 arrays."""
        def to_numpy(x):
            return None if x is None else x.cpu().permute(0, 2, 3, 1).float().numpy()
        return to_numpy(self.prediction), to_numpy(self.uncertainty)


def _check_ensembling(task: str, ensembling: Optional[dict]) -> dict:
    """The pipelines' ``ensembling_kwargs``: depth's reduction (median / mean) and alignment settings, normals'
    reduction (closest / mean), intrinsics' (median / mean); anything else is one line."""
    ensembling = dict(ensembling or {})
    allowed = DEPTH_ENSEMBLING if task == "depth" else ("reduction",)
    unknown = sorted(set(ensembling) - set(allowed))
    if unknown:
        raise DiffkitError(f"ensembling option(s) {', '.join(unknown)} are not allowed for Marigold {task}; allowed: "
                           f"{', '.join(allowed)}")
    if "reduction" in ensembling:
        check_choice("reduction", ensembling["reduction"], REDUCTIONS[task])
    return ensembling


def _ensembled(marigold: Marigold, maps: torch.Tensor, images: int, size: int, uncertainty: bool,
               ensembling: dict) -> tuple:
    """(prediction, uncertainty or None) of every image's ``size`` members (:mod:`.marigold_outputs`)."""
    from .marigold_outputs import ensemble_depth, ensemble_intrinsics, ensemble_normals
    if marigold.task == "intrinsics":
        members = maps.reshape(images, size, marigold.n_targets, *maps.shape[1:])
        out = [ensemble_intrinsics(m, uncertainty, **ensembling) for m in members]
    elif marigold.task == "normals":
        out = [ensemble_normals(m, uncertainty, **ensembling) for m in maps.reshape(images, size, *maps.shape[1:])]
    else:
        out = [ensemble_depth(m, marigold.scale_invariant, marigold.shift_invariant, uncertainty, **ensembling)
               for m in maps.reshape(images, size, *maps.shape[1:])]
    prediction = torch.cat([p for p, _ in out])
    return prediction, (torch.cat([u for _, u in out]) if uncertainty else None)


def _generator_rows(generator, start: int, stop: int):
    """The generator of members ``start:stop``: the one generator, or those of a list of one per member."""
    return generator if generator is None or isinstance(generator, torch.Generator) else list(generator)[start:stop]


def predict(marigold: Marigold, images: torch.Tensor, *, steps: Optional[int] = None, ensemble_size: int = 1,
            processing_resolution: Optional[int] = None, match_input_resolution: bool = True,
            resample_method_input: str = "bilinear", resample_method_output: str = "bilinear", batch_size: int = 1,
            ensembling: Optional[dict] = None, seed: Optional[int] = None, generator=None,
            latents: Optional[torch.Tensor] = None, sampler: Optional[str] = None, uncertainty: bool = False,
            progress: bool = False, **options) -> MarigoldPrediction:
    """The prediction of a Marigold folder for ``images`` (N, 3, H, W) in [-1, 1], as its pipeline's
    ``__call__(image, num_inference_steps=steps, ensemble_size=..., processing_resolution=..., match_input_resolution=
    ..., resample_method_input=..., resample_method_output=..., batch_size=..., ensembling_kwargs=ensembling,
    generator=..., latents=..., output_uncertainty=uncertainty)`` (module doc). ``steps`` / ``processing_resolution``
    default to the folder's ``default_denoising_steps`` / ``default_processing_resolution``; ``seed``: one
    ``torch.Generator().manual_seed(seed)`` (or ``generator``: one, or one per member, N * ensemble_size).
    ``sampler``: default the folder's scheduler (:attr:`Marigold.default_sampler`), any diffkit sampler on its
    timesteps, or on its own grid of ``steps`` where a ``spacing`` / ``final`` is given (in ``options`` or as
    ``NAME@SPACING:FINAL``; e.g. ``dpm-solver++-2m@leading`` on a zero-terminal-SNR folder, whose trailing grid
    starts at infinite noise); ``options`` go to :func:`diffkit.sample` (e.g. ``eta``)."""
    from ..noise import randn
    from ..sampling import sample
    from .marigold_outputs import decoded_maps, padded, resized, resized_to_max_edge, unit_normals, unpadded
    sd = marigold.sd
    steps = marigold.settings.get("default_denoising_steps") if steps is None else steps
    if steps is None:
        raise DiffkitError("steps is not given and the folder's model_index.json has no default_denoising_steps; "
                           "give steps (e.g. 4 for an LCM folder, 10 to 50 for DDIM)")
    check_range("steps", steps, 1, sd.schedule.num_timesteps, integer=True)
    check_range("ensemble_size", ensemble_size, 1, None, integer=True)
    check_range("batch_size", batch_size, 1, None, integer=True)
    resolution = marigold.settings.get("default_processing_resolution") if processing_resolution is None \
        else processing_resolution
    if resolution is None:
        raise DiffkitError("processing_resolution is not given and the folder's model_index.json has no "
                           "default_processing_resolution; give one (0: the images' own size)")
    f = sd.vae_scale_factor
    check_range("processing_resolution", resolution, 0, None, integer=True)
    if resolution % f:
        raise DiffkitError(f"processing_resolution={resolution} is not allowed; give a multiple of the VAE factor {f} "
                           f"(0: the images' own size)")
    for name, value in (("resample_method_input", resample_method_input),
                        ("resample_method_output", resample_method_output)):
        check_choice(name, value, RESAMPLE_METHODS)
    if uncertainty and ensemble_size == 1:
        raise DiffkitError("uncertainty needs ensemble_size > 1 (the spread of the ensemble's members)")
    ensembling = _check_ensembling(marigold.task, ensembling)
    if seed is not None and generator is not None:
        raise DiffkitError("give seed or generator, not both")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3 or images.shape[0] < 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DiffkitError(f"images must be (N >= 1, 3, H, W) in [-1, 1]; got {shape}")
    if not images.is_floating_point() or not torch.isfinite(images).all() or images.min() < -1 or images.max() > 1:
        raise DiffkitError("images must be float images in [-1, 1] (the pipelines' [0, 1] range times 2 minus 1)")
    generator = torch.Generator().manual_seed(int(seed)) if seed is not None else generator
    count, original = images.shape[0], tuple(images.shape[2:])
    x = images.to(device=sd.device, dtype=sd.dtype)
    if resolution > 0:
        x = resized_to_max_edge(x, resolution, resample_method_input)
    x, padding = padded(x, f)
    image_latents = torch.cat([sd.encode(x[i:i + batch_size]) for i in range(0, count, batch_size)])
    image_latents = image_latents.to(sd.dtype).repeat_interleave(ensemble_size, dim=0)
    members, (c, h, w) = image_latents.shape[0], image_latents.shape[1:]
    shape = (members, marigold.n_targets * c, h, w)
    if latents is not None and (not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape):
        got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise DiffkitError(f"latents of shape {got} are not allowed; expected {shape}")
    noise = randn(shape, generator, device=sd.device, dtype=sd.dtype) if latents is None \
        else latents.to(device=sd.device, dtype=sd.dtype)
    name = sampler or marigold.default_sampler
    from ..samplers.registry import split_sampler_spec
    _, spec_spacing, spec_final = split_sampler_spec(name)
    own_grid = not (spec_spacing or spec_final or options.get("spacing") or options.get("final"))
    grid = sd.scheduler_grid(steps) if own_grid else None  # else the sampler's grid of `steps` on that spacing
    denoiser, context = marigold.denoiser, marigold.empty_text_embedding()
    chunks = []
    for start in range(0, members, batch_size):
        stop = min(start + batch_size, members)
        cond = {"context": context.expand(stop - start, -1, -1), IMAGE_KEY: image_latents[start:stop]}
        chunks.append(sample(denoiser, noise[start:stop], name, None if own_grid else steps, grid=grid,
                             generator=_generator_rows(generator, start, stop), cond=cond, progress=progress,
                             **options))
    final = torch.cat(chunks)
    flat = final.reshape(members * marigold.n_targets, c, h, w)
    maps = torch.cat([decoded_maps(marigold.task, sd.decode(flat[i:i + batch_size]), marigold.use_full_z_range)
                      for i in range(0, flat.shape[0], batch_size)])
    maps = unpadded(maps, padding)
    spread = None
    if ensemble_size > 1:
        maps, spread = _ensembled(marigold, maps, count, ensemble_size, uncertainty, ensembling)
    if match_input_resolution:
        maps = resized(maps, original, resample_method_output)
        if marigold.task == "normals":
            maps = unit_normals(maps)
        if spread is not None:
            spread = resized(spread, original, resample_method_output)
    return MarigoldPrediction(maps, spread, final)


__all__ = ["Marigold", "MarigoldNet", "MarigoldPrediction", "load_marigold", "predict", "is_marigold_folder",
           "marigold_task", "refuse_marigold_folder", "check_marigold_unet", "PIPELINES"]
