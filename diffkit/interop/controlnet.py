"""ControlNet (Zhang et al. 2023) for a Stable Diffusion folder, sampled with any diffkit sampler.

A ControlNet is a trainable copy of the UNet's encoder and middle block that reads the noisy latents,
the time, the prompt embedding and a control image c_f (edges, depth, pose...; RGB in [0, 1]) through
zero convolutions (ControlNet eq. 1-2: y_c = F(x) + Z(F(x + Z(c)))). Its outputs are added, times the
conditioning scale, to the UNet's skip connections (the down blocks' residuals) and to its middle
block's output at every network call (ControlNet Sec. 3.2, Fig. 3). diffusers' ``ControlNetModel``
computes those residuals; :class:`ControlledNet` adds them to the UNet through diffusers'
``down_block_additional_residuals`` / ``mid_block_additional_residual``, so the same batch reaches both
networks: with classifier-free guidance the conditional and the null halves (diffusers'
``StableDiffusionControlNetPipeline``), or, in guess mode (ControlNet Sec. 4, "classifier-free guidance
resolution weighting"), only the conditional half, the null half getting no residuals.
On an SD-XL folder (:mod:`.sd_xl`) the ControlNet (``addition_embed_type="text_time"``) also takes the
UNet's ``added_cond_kwargs``, the pooled text embedding and the size conditions (time ids) of the same
rows, as diffusers' ``StableDiffusionXLControlNetPipeline``; the output size, and so the default time ids
(h, w, 0, 0, h, w), follow the control image.

``start`` / ``end`` are diffusers' ``control_guidance_start`` / ``_end``: step i of N (0 = noisiest) is
controlled when start <= i / N and (i + 1) / N <= end (the pipeline's ``controlnet_keep``). A diffkit
denoiser sees times, not step indices: :func:`step_windows` turns the window into the steps of the
sampler's time grid, and a call at time t belongs to the step i with t_{i+1} < t <= t_i (a call at the
grid's last time to the last step).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..denoiser import Denoiser
from ..errors import DiffkitError, check_range, read_json_object
from . import from_pretrained, library_progress_bars, model_dtype, require
from .denoiser import ADDED_COND_KEYS, DiffusersNet
from .stable_diffusion import NULL_LABEL

MATCHING_CONFIG = ("in_channels", "block_out_channels", "layers_per_block", "down_block_types", "cross_attention_dim",
                   "addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim")


def model_folder_config(directory: Union[str, Path], flag: str, class_name: Union[str, tuple],
                        advice: str = "") -> dict:
    """The ``config.json`` of a diffusers ``class_name`` folder (or of one of several names) given to ``flag``
    (one line otherwise)."""
    config_file = Path(directory) / "config.json"
    if not config_file.is_file():
        raise DiffkitError(f"{flag} {directory}: no config.json there; give a diffusers {class_name} folder "
                           f"(config.json and diffusion_pytorch_model.safetensors)")
    config = read_json_object(config_file, f"{flag} config")
    names = (class_name,) if isinstance(class_name, str) else tuple(class_name)
    if config.get("_class_name") not in names:
        raise DiffkitError(f"{flag} {directory} holds a {config.get('_class_name')!r}; allowed: a diffusers "
                           f"{' or '.join(names)} folder{advice}")
    return config


def load_model_folder(class_name: str, directory: Union[str, Path], device="cpu",
                      dtype: torch.dtype = torch.float32, progress: bool = True):
    """A diffusers ``class_name`` folder (``config.json`` + ``.safetensors``; never a pickle or a download), for
    inference; weights holding NaN or infinities are one line (a damaged file drew black images after a warning)."""
    diffusers = require("diffusers")
    flag = "--t2i-adapter" if class_name == "T2IAdapter" else "--controlnet"
    with library_progress_bars(progress):
        model = from_pretrained(getattr(diffusers, class_name), directory, flag, local_files_only=True,
                                torch_dtype=dtype, use_safetensors=True, low_cpu_mem_usage=False)
    return model.to(device).eval().requires_grad_(False)


def check_controlnet_folder(directory: Union[str, Path]) -> dict:
    """The ``config.json`` of a diffusers ``ControlNetModel`` folder, or ``ControlNetUnionModel``
    (:mod:`.controlnet_union`) or ``ControlNetXSAdapter`` (:mod:`.controlnet_xs`; one line otherwise)."""
    return model_folder_config(directory, "--controlnet", ("ControlNetModel", "ControlNetUnionModel",
                                                           "ControlNetXSAdapter"))


def load_controlnet(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                    progress: bool = True):
    """A diffusers ``ControlNetModel`` (or ``ControlNetUnionModel``) folder (``config.json`` + ``.safetensors``;
    never a pickle or a download)."""
    config = check_controlnet_folder(directory)
    return load_model_folder(config["_class_name"], directory, device, dtype, progress)


def check_controlnet(controlnet, unet, factor: int, name: str = "controlnet") -> None:
    """A ControlNet copies its UNet's encoder: its residuals fit only a UNet of the same blocks, and its
    conditioning embedding must bring the control image down by the VAE factor f to the latents' size. With a
    9-channel inpainting UNet (:mod:`.sd_inpaint`) the ControlNet reads the latents alone (its in_channels: the
    UNet's out_channels), as diffusers' ``StableDiffusionControlNetInpaintPipeline``."""
    from .sd_inpaint import is_inpainting_config
    for key in MATCHING_CONFIG:
        ours, theirs = controlnet.config.get(key), unet.config.get(key)
        what, advice = "the Stable Diffusion UNet has ", "a ControlNet fits only the UNet it was made from"
        if key == "in_channels" and is_inpainting_config(unet.config):  # it reads the latents alone (.sd_inpaint)
            theirs = unet.config.get("out_channels")
            what = (f"the inpainting UNet (in_channels={unet.config.get('in_channels')}) gives a ControlNet the "
                    f"latents alone: in_channels=")
            advice = "give a ControlNet of the base (4-channel) model, as StableDiffusionControlNetInpaintPipeline"
        if (list(ours) if isinstance(ours, (list, tuple)) else ours) != (
                list(theirs) if isinstance(theirs, (list, tuple)) else theirs):
            raise DiffkitError(f"{name} has {key}={ours!r} but {what}{theirs!r}; {advice}")
    embedding = controlnet.config.get("conditioning_embedding_out_channels") or (16, 32, 96, 256)
    if 2 ** (len(embedding) - 1) != factor:
        raise DiffkitError(f"{name} brings control images down {2 ** (len(embedding) - 1)}x but the VAE of this "
                           f"Stable Diffusion folder by {factor}x; a ControlNet fits only its own model family")
    channels = controlnet.config.get("conditioning_channels", 3)
    if channels != 3:
        raise DiffkitError(f"{name} takes {channels}-channel control images; allowed: 3 (RGB, as diffusers' pipeline "
                           f"prepares them)")


def control_size(image, factor: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
    """(height, width) of the output: given, or the control image's rounded down to multiples of the VAE
    factor f (diffusers' ``VaeImageProcessor.get_default_height_width``)."""
    image = open_control_image(image)
    height = (image.height if hasattr(image, "height") else image.shape[-2]) if height is None else height
    width = (image.width if hasattr(image, "width") else image.shape[-1]) if width is None else width
    height, width = height - height % factor, width - width % factor
    if height <= 0 or width <= 0:
        raise DiffkitError(f"the control image gives an output of {height}x{width}; it must be at least {factor}x"
                           f"{factor} (the VAE factor)")
    return height, width


def open_control_image(image, flag: str = "--control-image"):
    """A path is opened with PIL (one line, naming ``flag``, for a file that is not an image); a PIL image or tensor
    as it is."""
    if isinstance(image, (str, Path)):
        from PIL import Image, UnidentifiedImageError
        try:
            with Image.open(image) as opened:
                opened.load()
                return opened.copy()
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise DiffkitError(f"{flag} {image}: cannot be read as an image ({type(err).__name__}); give a "
                               f"PNG or JPEG") from None
    if isinstance(image, torch.Tensor):
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3 or not image.is_floating_point():
            raise DiffkitError(f"a control image tensor of shape {tuple(image.shape)} is not allowed; give (1, 3, H, "
                               f"W) or (3, H, W) floats in [0, 1]")
        if image.min() < 0 or image.max() > 1:
            raise DiffkitError("a control image tensor must lie in [0, 1] (diffusers' ControlNet input)")
    return image


def prepare_control_image(image, height: int, width: int, factor: int, channels: int = 3,
                          box: Optional[tuple] = None) -> torch.Tensor:
    """(1, 3, height, width) in [0, 1], float32: RGB, resized as diffusers' ControlNet pipeline prepares it
    (its ``control_image_processor``: ``VaeImageProcessor(do_convert_rgb=True, do_normalize=False)``,
    Lanczos for a PIL image). ``channels=1``: grey, (1, 1, height, width) (a T2I-Adapter's, :mod:`.t2i_adapter`).
    ``box`` (x1, y1, x2, y2): cropped to it first and resized with ``resize_mode="fill"``, as the ControlNet
    inpainting pipelines' ``prepare_control_image(..., crops_coords, resize_mode)`` with ``padding_mask_crop``
    (:mod:`.mask_crop`)."""
    diffusers = require("diffusers")
    processor = diffusers.image_processor.VaeImageProcessor(vae_scale_factor=factor, do_convert_rgb=channels == 3,
                                                            do_convert_grayscale=channels == 1, do_normalize=False)
    crop = {} if box is None else {"crops_coords": box, "resize_mode": "fill"}
    return processor.preprocess(open_control_image(image), height=height, width=width, **crop).to(torch.float32)


def sampler_grid(denoiser, sampler: str, steps: Optional[int], nfe: Optional[int], grid, options: dict):
    """The time grid :func:`diffkit.sample` will use with these arguments (``grid`` itself where given)."""
    from ..sampling import check_grid, planned_grid
    churn = options.get("s_churn", 0)
    if isinstance(churn, (int, float)) and churn > 0:
        raise DiffkitError(f"s_churn={churn:g} raises each step's time above the grid's (EDM Algorithm 2), so a "
                           f"network call no longer tells its step; drop s_churn or the control guidance window")
    if grid is not None:
        return check_grid(grid, denoiser.schedule.num_timesteps)
    info, grid = planned_grid(denoiser, sampler, steps, nfe, None, options)
    if info.adaptive:
        raise DiffkitError(f"sampler {info.name!r} picks its own steps, so a control guidance window (fractions of "
                           f"the steps) has no steps to count; use a fixed-step sampler or the whole range 0-1")
    return grid


def editing_grid(sd, sampler: str, steps: int, strength: float, options: dict) -> torch.Tensor:
    """The grid :func:`diffkit.img2img` / :func:`diffkit.inpaint` run for ``strength`` (the strength's part
    of the sampler's grid, :func:`~diffkit.editing.strength_grid`): diffusers' ControlNet img2img and
    inpainting pipelines count the window's fractions over these steps."""
    from ..editing import strength_grid
    return strength_grid(sampler_grid(sd.denoiser, sampler, steps, None, None, options), strength)


def step_windows(grid: torch.Tensor, start: float, end: float) -> torch.Tensor:
    """Per step i of the grid's N steps: controlled (True) iff start <= i / N and (i + 1) / N <= end,
    diffusers' ``controlnet_keep`` (the same float comparisons)."""
    n = len(grid) - 1
    return torch.tensor([not (i / n < start or (i + 1) / n > end) for i in range(n)])


def steps_of(grid: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The step each time t belongs to: i with t_{i+1} < t <= t_i (compared in float32, the network's
    time dtype); the grid's last time to the last step, times above t_0 to step 0."""
    later = grid[1:].to(torch.float32).to(t.device)
    return (later[None, :] >= t.to(torch.float32)[:, None]).sum(1).clamp(max=len(later) - 1)


def _spread(values: torch.Tensor, batch: int, rows: torch.Tensor) -> torch.Tensor:
    """(batch, ...) zeros with ``values`` at ``rows``."""
    return torch.zeros((batch, *values.shape[1:]), dtype=values.dtype, device=values.device).index_copy(0, rows, values)


class ControlledNet(torch.nn.Module):
    """``net(x, t, y=None, context=None, control_rows=None, **extra)``: the SD UNet (a :class:`DiffusersNet`)
    with the residuals of one or more ControlNets added (Multi-ControlNet: their sum, in order, as diffusers'
    ``MultiControlNetModel``). ``images``: per ControlNet, (1, 3, H, W) (one control image, expanded to the
    batch) or (K, 3, H, W) (one per prompt: row i of the batch takes image ``control_rows[i]``, a per-sample
    tensor that classifier-free guidance repeats for its null half); ``scales``: their conditioning scales;
    ``keeps``: per ControlNet, the controlled steps of ``grid`` (None: every call). ``guess_mode``: only rows
    whose label ``y`` is not :data:`NULL_LABEL` get residuals (all rows without labels). The ``extra`` keys
    ``text_embeds`` / ``time_ids`` (SD-XL's ``added_cond_kwargs``) reach the ControlNets as well as the UNet.
    ``modes``: ControlNet-Unions (:mod:`.controlnet_union`), one entry per control image: ``controlnets`` holds
    each image's union ControlNet and ``modes`` its control type; ``joint``: they are one ControlNet, called with
    all its images at once (:func:`.controlnet_union.joint_residuals`)."""

    def __init__(self, net: DiffusersNet, controlnets: Sequence, images: Sequence[torch.Tensor],
                 scales: Sequence[float], guess_mode: bool = False, grid: Optional[torch.Tensor] = None,
                 keeps: Optional[Sequence[torch.Tensor]] = None, modes: Optional[Sequence[int]] = None,
                 joint: bool = False):
        super().__init__()
        self.net, self.controlnets = net, torch.nn.ModuleList(controlnets)
        self.images, self.scales, self.guess_mode = list(images), [float(s) for s in scales], bool(guess_mode)
        self.grid, self.keeps, self.modes, self.joint = grid, keeps, modes, bool(joint)

    def control_image(self, index: int, x: torch.Tensor, dtype, control_rows, pick) -> torch.Tensor:
        """Control image ``index`` for the rows ``pick`` keeps: the one image expanded, or each row's own."""
        image = self.images[index]
        if image.shape[0] == 1:  # one image for every row
            return image.to(x.device, dtype).expand(len(pick(x)), -1, -1, -1)
        if control_rows is None:
            raise DiffkitError(f"{image.shape[0]} control images (one per prompt) need cond['control_rows'], "
                               f"each sample's image")
        return pick(image.to(x.device, dtype)[control_rows])  # each row's own

    def _kept(self, index: int, t: torch.Tensor) -> torch.Tensor:
        """(B,) 1.0 where ControlNet ``index`` acts at time t (its window), else 0.0."""
        if self.keeps is None:
            return torch.ones(t.shape[0], device=t.device)
        return self.keeps[index].to(t.device)[steps_of(self.grid, t)].to(torch.float32)

    def residuals(self, x: torch.Tensor, t: torch.Tensor, y, context, control_rows=None, added=None):
        """(down-block residuals, mid-block residual) for the batch, or None where no ControlNet acts.
        ``added``: the UNet's ``added_cond_kwargs`` (SD-XL's ``text_embeds`` and ``time_ids``, 1 or B rows),
        which the ControlNet takes too, for the same rows (StableDiffusionXLControlNetPipeline)."""
        batch = x.shape[0]
        added = {key: value.expand(batch, *value.shape[1:]) if value.shape[0] == 1 else value
                 for key, value in (added or {}).items()}
        if control_rows is not None:
            control_rows = torch.as_tensor(control_rows, device=x.device).reshape(-1).expand(batch)
        rows = torch.ones(batch, dtype=torch.bool, device=x.device)
        if self.guess_mode and y is not None:
            rows = torch.as_tensor(y, device=x.device).reshape(-1).expand(batch) != NULL_LABEL
        if self.joint:  # one ControlNet-Union with all its control images (.controlnet_union)
            from .controlnet_union import joint_residuals
            return joint_residuals(self, x, t, context, control_rows, added, rows)
        total = None
        for index, (controlnet, scale) in enumerate(zip(self.controlnets, self.scales)):
            kept = self._kept(index, t) * rows
            if scale == 0 or not kept.any():
                continue  # adds zero: the UNet's own output, without this ControlNet's call
            chosen = kept.nonzero().squeeze(1) if not bool(kept.all()) else None
            pick = (lambda v: v) if chosen is None else (lambda v: v[chosen])
            dtype = model_dtype(controlnet)
            prompt = None if context is None else pick(context).to(dtype)
            image = self.control_image(index, x, dtype, control_rows, pick)
            more = {"added_cond_kwargs": {key: pick(value) for key, value in added.items()}} if added else {}
            if self.modes is not None:  # a ControlNet-Union with one image: scaled as a plain one
                from .controlnet_union import union_inputs
                more = {**more, **union_inputs(controlnet, [self.modes[index]], image.shape[0], dtype)}
                image = [image]
            down, mid = controlnet(pick(x).to(dtype), pick(t), encoder_hidden_states=prompt, controlnet_cond=image,
                                   conditioning_scale=scale, guess_mode=self.guess_mode, return_dict=False, **more)
            if chosen is not None:  # rows outside the window (or the null half in guess mode) get zeros
                down, mid = ([_spread(d, batch, chosen) for d in down], _spread(mid, batch, chosen))
            if total is None:
                total = (list(down), mid)
            else:  # MultiControlNetModel's sum, in order
                total = ([a + b for a, b in zip(total[0], down)], total[1] + mid)
        return total

    def forward(self, x: torch.Tensor, t, y=None, context=None, control_rows=None, **extra) -> torch.Tensor:
        t_rows = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        added = {key: extra[key] for key in ADDED_COND_KEYS if key in extra}  # SD-XL: to the UNet too
        total = self.residuals(x, t_rows, y, context, control_rows, added)
        if total is not None:
            extra = {**extra, "down_block_additional_residuals": total[0], "mid_block_additional_residual": total[1]}
        return self.net(x, t, y=y, context=context, **extra)


def _each(name: str, value, count: int) -> list:
    values = [value] * count if isinstance(value, (int, float)) else list(value)
    if len(values) != count or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise DiffkitError(f"{name}={value!r} is not allowed; give one number, or one per ControlNet ({count})")
    return [float(v) for v in values]


def check_control_options(scales, starts, ends, count: int) -> tuple:
    """(scales, starts, ends), one per ControlNet: scales >= 0, 0 <= start < end <= 1 (diffusers' checks)."""
    scales, starts, ends = (_each(name, value, count) for name, value in (
        ("controlnet scale", scales), ("control guidance start", starts), ("control guidance end", ends)))
    for scale in scales:
        check_range("controlnet scale", scale, 0.0, None)
    for start, end in zip(starts, ends):
        check_range("control guidance start", start, 0.0, 1.0)
        check_range("control guidance end", end, 0.0, 1.0)
        if start >= end:
            raise DiffkitError(f"control guidance start {start:g} >= end {end:g}; allowed: 0 <= start < end <= 1")
    return scales, starts, ends


class PerPromptImages:
    """:attr:`per_prompt` and :meth:`rows` of a list ``images`` holding, per model (a ControlNet, a T2I-Adapter:
    ``_kind``), a list of one control image (every prompt) or of K (one per prompt, as diffusers' ``image=[...]``)."""

    _kind = "ControlNet"

    @property
    def per_prompt(self) -> int:
        """K where some model has one control image per prompt (K > 1), else 1."""
        return max(len(entry) for entry in self.images)

    def rows(self, batch: int, control_rows=None) -> Optional[torch.Tensor]:
        """The ``cond["control_rows"]`` of a batch of ``batch`` prompts: None with one image per model;
        with K per prompt, ``control_rows`` (each sample's image, in 0..K-1) or, by default, 0..batch-1, which
        needs K = batch (diffusers' rule: as many images as prompts). Every list must have K images."""
        count = self.per_prompt
        sizes = sorted({len(entry) for entry in self.images} - {1})
        if len(sizes) > 1:
            raise DiffkitError(f"the {self._kind}s have {' and '.join(map(str, sizes))} control images; give each one "
                               f"image, or the same number (one per prompt)")
        if count == 1:
            if control_rows is not None:
                raise DiffkitError(f"control_rows picks among one control image per prompt; each {self._kind} has "
                                   f"one")
            return None
        if control_rows is None:
            if batch != count:
                raise DiffkitError(f"{count} control images for {batch} prompts; give one per prompt (or one for all)")
            return torch.arange(batch)
        rows = torch.as_tensor(control_rows, dtype=torch.long).reshape(-1)
        if rows.shape[0] != batch or rows.min() < 0 or rows.max() >= count:
            raise DiffkitError(f"control_rows {rows.tolist()} is not allowed; give {batch} indices in 0..{count - 1}")
        return rows


@dataclass
class ControlNets(PerPromptImages):
    """One or more loaded ControlNets with their control images and diffusers' options: the
    ``controlnet_conditioning_scale`` (one per ControlNet, or one for all), ``control_guidance_start``
    / ``_end`` (fractions of the steps) and ``guess_mode`` (forced by a ControlNet whose config has
    ``global_pool_conditions``, as diffusers does). ``modes``: ControlNet-Unions' control types
    (:mod:`.controlnet_union`; names or indices; SD-XL ``ControlNetUnionModel`` or FLUX ``FluxControlNetModel`` with
    ``num_mode``, beside which a plain FLUX ControlNet takes None), one per control image: one union ControlNet with
    N images (scales and windows one per image, the union pipeline's lists), or several with one image each; after
    construction :attr:`models` holds each image's ControlNet and :attr:`modes` the indices."""

    models: list
    images: list  # per ControlNet: a PIL image, path or (1, 3, H, W) tensor in [0, 1], or a list of them (one per
    # prompt, as diffusers' image=[...]); prepared by prepare_control_image
    scales: Union[float, Sequence[float]] = 1.0
    start: Union[float, Sequence[float]] = 0.0
    end: Union[float, Sequence[float]] = 1.0
    guess_mode: bool = False
    modes: Optional[Sequence] = None
    joint: bool = field(default=False, init=False)  # one ControlNet-Union, several images (.controlnet_union)

    def __post_init__(self):
        if len(self.models) == 0:
            raise DiffkitError("give at least one ControlNet")
        if type(self) is ControlNets and any(type(m).__name__ == "ControlNetXSAdapter" for m in self.models):
            raise DiffkitError("a ControlNetXSAdapter is fused with the UNet, not added to it: give it to "
                               "diffkit.interop.controlnet_xs.ControlNetXS")
        from .controlnet_union import is_union, union_entries
        if self.modes is not None or any(is_union(m) for m in self.models):
            self.models, self.modes, self.joint = union_entries(self.models, self.images, self.modes)
        count = len(self.models)
        if len(self.images) != count:
            raise DiffkitError(f"{len(self.images)} control images for {count} ControlNets; give one image per "
                               f"--controlnet")
        self.scales, self.start, self.end = check_control_options(self.scales, self.start, self.end, count)
        self.images = [[open_control_image(image) for image in (entry if isinstance(entry, (list, tuple)) else
                                                                [entry])] for entry in self.images]
        if any(len(entry) == 0 for entry in self.images):
            raise DiffkitError("an empty list of control images; give one image, or one per prompt")
        self.guess_mode = bool(self.guess_mode) or any(
            bool(m.config.get("global_pool_conditions", False)) for m in self.models)
        if self.modes is not None and self.guess_mode:
            from .controlnet_union import NO_GUESS_MODE
            raise DiffkitError(NO_GUESS_MODE)

    @property
    def windowed(self) -> bool:
        """Whether some ControlNet acts on part of the steps only."""
        return any(s > 0 or e < 1 for s, e in zip(self.start, self.end))

    def size(self, factor: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """The output (height, width): given, or the first control image's (diffusers' default)."""
        return control_size(self.images[0][0], factor, height, width)

    def controlling(self, sd, height: int, width: int, grid: Optional[torch.Tensor] = None,
                    box: Optional[tuple] = None):
        """A copy of the :class:`~diffkit.interop.stable_diffusion.StableDiffusion` ``sd`` whose network
        denoiser is the UNet with these ControlNets' residuals (so ``sd.guided`` and every sampler see
        it); ``grid``: the sampler's time grid (needed where a window is set). On a latent consistency model (an
        LCMScheduler folder, :mod:`.lcm`) the consistency function wraps this denoiser (or its classifier-free
        guidance, an LCM-LoRA), as StableDiffusionControlNetPipeline feeds the controlled UNet's output to
        LCMScheduler; a guidance input w reaches the UNet only (the pipeline gives the ControlNet no
        ``timestep_cond``). On an SD-XL folder (:mod:`.sd_xl`) the ControlNets take the UNet's pooled text
        embedding and time ids too (StableDiffusionXLControlNetPipeline; :meth:`ControlledNet.residuals`). ``box``:
        each control image cropped to it first (``padding_mask_crop``, :func:`prepare_control_image`)."""
        if self.modes is not None:
            from .sd_xl import StableDiffusionXL
            if not isinstance(sd, StableDiffusionXL):
                raise DiffkitError("a ControlNet-Union (ControlNetUnionModel) applies to SD-XL folders only "
                                   "(StableDiffusionXLControlNetUnionPipeline); this is a Stable Diffusion 1.x / 2.x "
                                   "folder")
            if sd.inpainting_unet:
                raise DiffkitError("a ControlNet-Union on a 9-channel inpainting UNet is not supported (diffusers' "
                                   "union inpainting pipeline takes the base UNet); give the base SD-XL folder")
        for index, model in enumerate(self.models[:1] if self.joint else self.models):
            check_controlnet(model, sd.unet, sd.vae_scale_factor, f"--controlnet number {index + 1}")
        f = sd.vae_scale_factor
        images = [torch.cat([prepare_control_image(image, height, width, f, box=box) for image in entry])
                  for entry in self.images]
        keeps = None
        if self.windowed:
            if grid is None:
                raise DiffkitError("a control guidance window needs the sampler's time grid")
            keeps = [step_windows(grid, s, e) for s, e in zip(self.start, self.end)]
        inner = sd.network_denoiser
        from .ip_adapter import IPAdaptedNet
        if isinstance(getattr(inner, "net", None), IPAdaptedNet):  # rebuilt below from the UNet: it would be lost
            raise DiffkitError("this Stable Diffusion folder already carries an IP-Adapter; add the ControlNets first "
                               "(ControlNets.controlling, then IPAdapter.adapting), as text_to_image does")
        unet_net = DiffusersNet(sd.unet, uses_labels=False)
        if sd.inpainting_unet:  # the ControlNet reads the latents, the UNet also the mask and masked image
            from .sd_inpaint import InpaintingUNetNet
            unet_net = InpaintingUNetNet(unet_net)
        net = ControlledNet(unet_net, self.models, images, self.scales, self.guess_mode, grid, keeps, self.modes,
                            self.joint)
        denoiser = Denoiser(net, inner.schedule, inner.prediction_type, learned_variance=False)
        denoiser.model = sd.unet
        return replace(sd, _denoiser=denoiser)


__all__ = ["ControlNets", "ControlledNet", "load_controlnet", "prepare_control_image", "control_size",
           "sampler_grid", "editing_grid", "step_windows", "steps_of",
           "check_control_options", "check_controlnet_folder", "open_control_image"]
