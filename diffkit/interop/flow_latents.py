"""What the rectified-flow transformer folders (SD3 :mod:`.sd3`, FLUX.1 :mod:`.flux`) share: the 16-channel
``AutoencoderKL`` with ``scaling_factor`` and ``shift_factor``, and the placing of a
``FlowMatchEulerDiscreteScheduler``'s sigmas on diffkit's VP time grid (Esser et al. 2024, Sec. 2:
x_s = (1 - s) x_0 + s eps has log-SNR 2 log((1 - s)/s)); the JSON checks and loading of such a folder."""
from __future__ import annotations

import torch

from ..errors import DiffkitError, check_choice


class FlowLatentVAE:
    """Mixin of a folder dataclass with ``vae`` and ``device``: its VAE's shapes and the pipelines' decoding."""

    @property
    def vae_scale_factor(self) -> int:
        """The VAE's spatial factor f = 2^(levels - 1) (8 for SD3 and FLUX.1)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        return float(self.vae.config.shift_factor)

    @property
    def image_channels(self) -> int:
        """The channels of the images the VAE encodes (``vae.config.in_channels``)."""
        return int(self.vae.config.in_channels)

    @property
    def downsampling_factor(self) -> int:  # the name diffkit's FrozenAutoencoder gives f
        return self.vae_scale_factor

    def pipeline_strength(self, steps: int, strength: float) -> float:
        """The strength that makes diffkit's cut of the pipeline's grid of ``steps`` (the last int(steps * s)
        intervals, :func:`diffkit.editing.strength_grid`) the one of ``StableDiffusion3Img2ImgPipeline`` /
        ``InpaintPipeline`` and ``FluxImg2ImgPipeline`` at ``strength`` (their ``get_timesteps``): from index
        int(steps - min(steps * strength, steps)) on, so k = steps - that intervals (at least 1 for strength > 0;
        e.g. 3 of 4 at 0.6, where int(4 * 0.6) = 2): (k + 1/2) / steps, or 1 where all run (the first sigma is 1
        there: pure noise, as the pipelines' ``scale_noise`` at sigma 1)."""
        from ..errors import check_range
        check_range("strength", strength, 0.0, 1.0, low_inclusive=False)
        kept = steps - int(max(steps - min(steps * strength, steps), 0))
        return 1.0 if kept >= steps else (kept + 0.5) / steps

    def _stats(self, like: torch.Tensor) -> tuple:
        """The VAE config's per-channel latents mean and std, (1, C, 1, 1) in ``like``'s device and dtype (the VAEs
        that have them: :class:`FrameVAE`'s, GLM-Image's)."""
        config = self.vae.config
        return tuple(torch.tensor(getattr(config, key), device=like.device, dtype=like.dtype).view(1, -1, 1, 1)
                     for key in ("latents_mean", "latents_std"))

    def encode(self, images: torch.Tensor, generator=None, sample: bool = False) -> torch.Tensor:
        """z = (E(x) - shift_factor) * scaling_factor for images in [-1, 1], the inverse of :meth:`decode`, as
        ``StableDiffusion3Img2ImgPipeline.prepare_latents``: the posterior mean, or with ``sample`` a draw from
        ``generator`` (:func:`.stable_diffusion.vae_latents`)."""
        from .stable_diffusion import vae_latents
        z = vae_latents(self.vae, images, self.device, generator, sample)
        return ((z - self.shift_factor) * self.scaling_factor).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """x = D(z / scaling_factor + shift_factor), in [-1, 1] (not clamped), as the pipelines decode."""
        with torch.no_grad():
            z = latents.to(device=self.device, dtype=self.vae.dtype) / self.scaling_factor + self.shift_factor
            return self.vae.decode(z, return_dict=False)[0].float()


class FrameVAE(FlowLatentVAE):
    """Mixin of a folder dataclass whose VAE is a diffusers video VAE with per-channel ``latents_mean`` /
    ``latents_std`` (``AutoencoderKLQwenImage``: Qwen-Image, :mod:`.qwen_image`; ``AutoencoderKLWan``: Bria FIBO,
    :mod:`.bria_fibo`), run on one-frame videos (B, C, 1, H, W) as those pipelines do: z = (E(x) - mean) / std,
    x = D(z std + mean)."""

    def encode(self, images: torch.Tensor, generator=None, sample: bool = False) -> torch.Tensor:
        """z = (E(x) - mean) / std of images (B, 3, H, W) in [-1, 1] encoded as one frame, as
        ``QwenImageImg2ImgPipeline._encode_vae_image``: the posterior's mean, or with ``sample`` its draw from
        ``generator`` (:func:`.stable_diffusion.vae_latents`)."""
        from .stable_diffusion import vae_latents
        z = vae_latents(self.vae, images[:, :, None], self.device, generator, sample)[:, :, 0]
        mean, std = self._stats(z)
        return ((z - mean) / std).float()

    def posterior(self, images: torch.Tensor) -> tuple:
        """(mean, std) of the VAE's posterior of images (B, 3, H, W) in [-1, 1] encoded as one frame, each (B, C,
        h, w), unnormalised (a ControlNet's control image: :func:`.flow_controlnet.control_latents`)."""
        with torch.no_grad():
            dist = self.vae.encode(images[:, :, None].to(self.device, self.vae.dtype), return_dict=False)[0]
        return dist.mean[:, :, 0], dist.std[:, :, 0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """x = D(z std + mean) in [-1, 1] (not clamped) of the one-frame video, as the pipelines decode
        (BriaFiboPipeline's z / (1 / std) + mean is the same)."""
        with torch.no_grad():
            z = latents.to(device=self.device, dtype=self.vae.dtype)
            mean, std = self._stats(z)
            return self.vae.decode((z * std + mean)[:, :, None], return_dict=False)[0][:, :, 0].float()


def start_latents(model, latents, batch: int, height, width, hint: str = "") -> tuple:
    """(z at s = 1 or the shape to draw it in, the latent shape (B, C, h, w)) of a flow folder's ``text_to_image``:
    ``latents`` checked against ``model.latent_shape(batch, height, width)`` (its size given by the latents where
    height and width are not), a one-line DiffkitError otherwise."""
    expected = model.latent_shape(batch, height, width)
    if latents is None:
        return expected, expected
    if latents.ndim != 4 or latents.shape[:2] != expected[:2] or (
            (height is not None or width is not None) and tuple(latents.shape[2:]) != expected[2:]):
        raise DiffkitError(f"latents of shape {tuple(latents.shape)} are not allowed; expected {expected} for "
                           f"{batch} prompts{hint}")
    f = getattr(model, "latent_scale_factor", model.vae_scale_factor)  # pixels per latent (FLUX.2's: 2 f)
    expected = model.latent_shape(batch, latents.shape[2] * f, latents.shape[3] * f)
    return latents.to(device=model.device, dtype=model.dtype), expected


def pipeline_grid(sampler, grid, steps, nfe, default_steps: int, scheduler_grid, flow_shift=None) -> tuple:
    """(sampler, grid, steps) of a flow folder's ``text_to_image``: no sampler and no grid is the pipeline's loop,
    flow Euler (``ddim``) on ``scheduler_grid(steps)`` (``grid="scheduler"``, which takes steps, not nfe);
    ``default_steps`` where neither steps nor nfe is given. ``flow_shift`` (``--flow-shift``) with the pipeline's
    loop: one line (the scheduler's own shift, fixed or per image size, places that grid)."""
    if flow_shift is not None and (grid == "scheduler" or sampler is None and grid is None):
        raise DiffkitError(f"--flow-shift {flow_shift:g} moves a sampler's own grid; with plain --sampler ddim (the "
                           f"default) this folder runs its scheduler's loop, whose shift is its scheduler config's: "
                           f"give another sampler or grid (e.g. --sampler unipc, ddim@trailing) or drop --flow-shift")
    if sampler is None and grid is None:
        sampler, grid = "ddim", "scheduler"
    if isinstance(grid, str):
        check_choice("grid", grid, ["scheduler"])
        if nfe is not None:
            raise DiffkitError("grid='scheduler' takes steps (the pipeline's step count), not nfe")
        grid = scheduler_grid(steps or default_steps)
    if grid is not None:
        steps = None
    elif steps is None and nfe is None:
        steps = default_steps
    return sampler or "ddim", grid, steps


def finish_images(model, z0: torch.Tensor, return_latents: bool, output_range: str) -> torch.Tensor:
    """z_0 itself (``return_latents``), or its decoded images in ``output_range`` ("0,1" or "-1,1")."""
    if return_latents:
        return z0
    images = model.decode(z0)
    return (images / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else images.clamp(-1, 1)


def flow_sigmas_grid(schedule, sigmas: torch.Tensor, steps: int) -> torch.Tensor:
    """diffkit's grid of a FlowMatchEuler scheduler's ``sigmas`` (after ``set_timesteps``, the final 0
    included): each sigma s at the VP time of ``schedule`` with equal SNR, log-SNR 2 log((1 - s)/s) (s = 1:
    T - 1, s = 0: -1, clean data); a flow-prediction Denoiser then calls its network at s * T, the
    pipeline's timestep, all inverted in one call. Sigmas that do not fall strictly: a one-line DiffkitError."""
    sigmas = sigmas.detach().to("cpu", torch.float64)
    ends = torch.tensor([schedule.num_timesteps - 1.0, -1.0], dtype=torch.float64)
    grid = torch.where(sigmas >= 1, ends[0], ends[1])
    inner = (sigmas > 0) & (sigmas < 1)
    if bool(inner.any()):
        s = sigmas[inner]
        grid[inner] = schedule.t_from_log_snr(torch.log((1 - s) / s))
    if not bool((grid[1:] < grid[:-1]).all()):
        why = "use fewer steps"
        if len(sigmas) > 2 and bool(sigmas[1] >= 1):  # a huge shift: a use_dynamic_shifting mu of a huge image
            why = "the scheduler's shift pushes them to 1 (with use_dynamic_shifting: the image size's); give a " \
                  "smaller --height / --width (or images) or fewer steps"
        raise DiffkitError(f"the scheduler's sigmas for steps={steps} are not strictly decreasing on this "
                           f"schedule ({[round(s, 4) for s in sigmas[:6].tolist()]}...); {why}")
    return grid


def check_flow_folder(directory, index: dict, required, kind: str, transformer: str) -> None:
    """The JSON checks a flow transformer folder's loader makes before any weight is read, each a one-line
    DiffkitError naming ``kind`` (SD3, FLUX): the ``required`` components are named and present; the transformer,
    VAE and scheduler are ``transformer``, ``AutoencoderKL`` and ``FlowMatchEulerDiscreteScheduler``; no
    ``image_encoder`` (IP-Adapter) or ``controlnet``."""
    from .schedulers import FLOW_SCHEDULER
    from .sd3 import _entry
    from .stable_diffusion import check_components
    check_components(directory, index, required, kind)
    for name, allowed in (("transformer", transformer), ("vae", "AutoencoderKL"), ("scheduler", FLOW_SCHEDULER)):
        if _entry(index, name) != allowed:
            raise DiffkitError(f"{directory}'s {name} is a {_entry(index, name)!r}; allowed: {allowed}")
    for name, what in (("image_encoder", "an IP-Adapter's image encoder"), ("controlnet", "a ControlNet")):
        if _entry(index, name) is not None:
            raise DiffkitError(f"{directory} has {name}={_entry(index, name)!r} ({what}), which diffkit does not "
                               f"drive for {kind}; allowed: a text-to-image folder ({name} null)")


def check_flow_vae(directory, kind: str, null_shift: bool = False) -> dict:
    """The folder's VAE config, whose ``scaling_factor`` and ``shift_factor`` are numbers (a one-line DiffkitError
    naming ``kind`` otherwise; ``null_shift``: a null ``shift_factor`` too, which BriaPipeline reads as 0)."""
    from ..errors import read_json_object
    vae = read_json_object(directory / "vae" / "config.json", "vae config")
    for key in ("scaling_factor", "shift_factor"):
        if key == "shift_factor" and null_shift and vae.get(key) is None:
            continue
        if isinstance(vae.get(key), bool) or not isinstance(vae.get(key), (int, float)):
            raise DiffkitError(f"{directory}'s vae has {key}={vae.get(key)!r}; allowed: a number ({kind} decodes "
                               f"z / scaling_factor + shift_factor)")
    return vae


def check_flow_configs(directory, index: dict, required, kind: str, transformer: str,
                       null_shift: bool = False) -> tuple:
    """(VAE config, transformer config) of a flow transformer folder after :func:`check_flow_folder` and
    :func:`check_flow_vae` (FLUX.1, Chroma, Z-Image, Bria: each then checks its transformer's channels)."""
    from ..errors import read_json_object
    check_flow_folder(directory, index, required, kind, transformer)
    vae = check_flow_vae(directory, kind, null_shift)
    return vae, read_json_object(directory / "transformer" / "config.json", "transformer config")


def check_part_configs(directory, configs: dict, checks) -> None:
    """One line for the first of ``checks`` ((part, key, default, allowed, why)) where ``configs[part]``'s ``key``
    (``default`` where absent; a list or tuple compared as a list) is not ``allowed`` (Bria FIBO's and Cosmos
    Predict2's JSON checks of their transformer and VAE configs)."""
    for part, key, default, allowed, why in checks:
        value = configs[part].get(key, default)
        if (list(value) if isinstance(value, (list, tuple)) else value) != allowed:
            raise DiffkitError(f"{directory}'s {part} has {key}={value!r}; allowed: {allowed} ({why})")


def frozen_on(parts: dict, device) -> "torch.device":
    """``parts``' transformer, VAE and text encoder (of :func:`load_flow_parts`) moved to ``device``, in eval mode
    and without gradients; returns the ``torch.device``."""
    device = torch.device(device)
    for name in ("transformer", "vae", "text_encoder"):
        if parts[name] is not None:  # (a pixel-space folder has no VAE)
            parts[name].to(device).eval().requires_grad_(False)
    return device


def load_flow_parts(directory, index: dict, transformer_cls, text_defaults: dict, dtype, progress: bool,
                    vae_cls=None) -> dict:
    """{name: module} of a checked folder, never downloading nor unpickling: ``transformer`` (``transformer_cls``),
    ``vae`` (``vae_cls``, default ``AutoencoderKL``) and, for each ``text_encoder{suffix}`` of ``text_defaults``
    ({suffix: default class}), the class model_index.json names (else the default) and its tokenizer; both None
    where the entry is null. ``vae_cls=False``: no VAE (None; a pixel-space folder's, :mod:`.prx_pixel`)."""
    from . import from_pretrained, library_progress_bars, require
    from .sd3 import _entry
    diffusers, transformers = require("diffusers"), require("transformers")
    common = {"local_files_only": True, "torch_dtype": dtype, "use_safetensors": True}  # never a pickle
    parts = {}
    with library_progress_bars(progress):
        fp32 = bool(getattr(transformer_cls, "_keep_in_fp32_modules", None))  # (Krea 2's norms, Kandinsky 5's:
        parts["transformer"] = from_pretrained(transformer_cls, directory / "transformer",  # diffusers then refuses
                                               low_cpu_mem_usage=fp32, **common)  # low_cpu_mem_usage=False)
        parts["vae"] = None if vae_cls is False else from_pretrained(
            vae_cls or diffusers.AutoencoderKL, directory / "vae", low_cpu_mem_usage=False, **common)
        for suffix, default in text_defaults.items():
            if _entry(index, "text_encoder" + suffix) is None:
                parts["text_encoder" + suffix] = parts["tokenizer" + suffix] = None
                continue
            text_cls = getattr(transformers, _entry(index, "text_encoder" + suffix), None) or \
                getattr(transformers, default)
            parts["text_encoder" + suffix] = from_pretrained(text_cls, directory / ("text_encoder" + suffix), **common)
            tok_cls = getattr(transformers, _entry(index, "tokenizer" + suffix), None) or transformers.AutoTokenizer
            parts["tokenizer" + suffix] = from_pretrained(tok_cls, directory / ("tokenizer" + suffix),
                                                          local_files_only=True)
    return parts


def load_one_text_folder(cls, directory, index: dict, sched: dict, transformer_cls, text_class: str, device, dtype,
                         progress: bool, width: str, states: str = "hidden_size",
                         encoder: str = "the text encoder's hidden size", vae_cls=None):
    """``cls`` (a :class:`.chroma.Chroma`-like dataclass: one text encoder) of a checked folder's parts
    (:func:`load_flow_parts` with ``text_class`` as the default encoder class, :func:`frozen_on` ``device``); a
    one-line DiffkitError where the transformer's config ``width`` is not the encoder config's ``states``;
    ``vae_cls``: :func:`load_flow_parts`'."""
    parts = load_flow_parts(directory, index, transformer_cls, {"": text_class}, dtype, progress, vae_cls)
    device = frozen_on(parts, device)
    model = cls(**parts, text_encoder_2=None, tokenizer_2=None, scheduler_config=sched, device=device, dtype=dtype)
    have, need = getattr(model.transformer.config, width), getattr(model.text_encoder.config, states)
    if have != need:
        raise DiffkitError(f"{directory}: the transformer's {width}={have} does not fit {encoder} {need}")
    return model


def names_pipeline(path, prefix: str, transformer: str) -> bool:
    """True for a diffusers folder whose ``model_index.json`` names a ``prefix...`` pipeline class or a
    ``transformer`` transformer (so that ``diffkit sample --checkpoint`` dispatches on it)."""
    from .sd3 import _entry
    from .sd_xl import _index
    try:
        index = _index(path)
    except (TypeError, OSError):
        return False
    return index is not None and (str(index.get("_class_name", "")).startswith(prefix)
                                  or _entry(index, "transformer") == transformer)


def edit_latents(model, denoiser, images: torch.Tensor, strength: float, sampler: str, steps: int, mask=None,
                 **common) -> torch.Tensor:
    """z_0 of a flow folder's ``image_to_image`` (SD3 :mod:`.sd3`, FLUX.1 :mod:`.flux`): without ``mask``
    :func:`diffkit.latent_editing.latent_img2img` (SDEdit, Meng et al. 2022, Alg. 1, on the latents), with it
    :func:`~diffkit.latent_editing.latent_inpaint` (replacement inpainting: the kept region's x_0 is the image's
    latents at every step, which puts it at the pipelines' ``scale_noise(z, next sigma, noise)`` blend); ``common``:
    their keyword arguments (posterior, seed, generator, cond, ...)."""
    from ..latent_editing import latent_img2img, latent_inpaint
    images = images.to(model.device, model.dtype)
    if mask is None:
        return latent_img2img(denoiser, model, images, strength, sampler, steps, return_latents=True, **common)
    return latent_inpaint(denoiser, model, images, mask.to(model.device, model.dtype), sampler, steps,
                          strength=strength, return_latents=True, **common)


def edit_prompts(images: torch.Tensor, prompts) -> list:
    """The prompts of an img2img batch (one, or one per image of ``images`` (B, 3, H, W)), one per image."""
    from .stable_diffusion import prompt_list
    prompts = prompt_list(prompts)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise DiffkitError("images must be a (batch, 3, H, W) tensor in [-1, 1]")
    if len(prompts) not in (1, images.shape[0]):
        raise DiffkitError(f"{len(prompts)} prompts for {images.shape[0]} images; give one, or one per image")
    return prompts * images.shape[0] if len(prompts) == 1 else prompts
