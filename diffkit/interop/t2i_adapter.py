"""T2I-Adapter (Mou et al. 2023) for a Stable Diffusion or SD-XL folder, sampled with any diffkit sampler.

A T2I-Adapter is a small network F_AD (T2I-Adapter Sec. 3.2: a pixel unshuffle, then blocks of residual
convolutions, each a scale) that maps a condition image C (sketch, depth, pose...) to features F_c = F_AD(C),
one per scale of the UNet's encoder. They are computed once, from the condition alone (they do not depend on
the time or the prompt), and added to the encoder's intermediate features at every step (eq. 3:
F_enc^i <- F_enc^i + F_c^i); with several adapters their weighted sum (eq. 4: F_c = sum_k w_k F_AD^k(C_k)).
diffusers' ``T2IAdapter`` (``full_adapter``, ``full_adapter_xl``, ``light_adapter``) computes F_c; the UNet adds
it through ``down_intrablock_additional_residuals`` (inside each down block; SD-XL's last feature after the middle
block, where its shape fits): :class:`AdaptedNet` passes them, times ``adapter_conditioning_scale``, to every row
of the batch (the conditional and the null half of classifier-free guidance alike), as diffusers'
``StableDiffusionAdapterPipeline`` / ``StableDiffusionXLAdapterPipeline``. Several adapters are diffusers'
``MultiAdapter``: F_c = sum_k s_k F_AD^k(C_k), s_k each adapter's scale (the pipeline's list
``adapter_conditioning_scale``), summed in order.

The control image is prepared as the pipelines' ``_preprocess_adapter_image``: resized (Lanczos) to the output
size, scaled to [0, 1] (no normalisation), with the adapter's channels (RGB for ``in_channels=3``, grey for 1;
:func:`.controlnet.prepare_control_image`). The output size defaults to the control image's, rounded down to
multiples of the adapter's ``downscale_factor`` (the pipelines' ``_default_height_width``).

``factor`` is ``adapter_conditioning_factor`` of StableDiffusionXLAdapterPipeline: step i of N (0 = noisiest) gets
the features iff i < int(N * factor); 0 = never, 1 = always (the SD pipeline has no such argument: it is always
1 there, and diffkit applies the same rule on SD folders). As for a ControlNet window (:mod:`.controlnet`), a call
at time t belongs to the grid step i with t_{i+1} < t <= t_i.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..denoiser import Denoiser
from ..errors import DiffkitError, check_range, read_json_object
from .controlnet import (PerPromptImages, control_size, load_model_folder, model_folder_config, open_control_image,
                         prepare_control_image, steps_of)

ADAPTER_TYPES = ("full_adapter", "full_adapter_xl", "light_adapter")


def check_t2i_adapter_folder(directory: Union[str, Path], model: Union[None, str, Path] = None) -> dict:
    """The ``config.json`` of a diffusers ``T2IAdapter`` folder (one line otherwise); with ``model``, a Stable
    Diffusion folder, also checked to fit its UNet (:func:`check_t2i_adapter`, before any weights load)."""
    config = model_folder_config(directory, "--t2i-adapter", "T2IAdapter", " (for a MultiAdapter give each "
                                 "adapter's folder with its own flag)")
    if config.get("adapter_type", "full_adapter") not in ADAPTER_TYPES:
        raise DiffkitError(f"--t2i-adapter {directory} has adapter_type={config.get('adapter_type')!r}; allowed: "
                           f"{', '.join(ADAPTER_TYPES)}")
    if model is not None:
        unet = read_json_object(Path(model) / "unet" / "config.json", "UNet config")
        vae = read_json_object(Path(model) / "vae" / "config.json", "VAE config")
        factor = 2 ** (len(vae.get("block_out_channels", [0])) - 1)
        check_t2i_adapter(config, unet, factor, f"--t2i-adapter {directory}")
    return config


def load_t2i_adapter(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                     progress: bool = True):
    """A diffusers ``T2IAdapter`` folder (``config.json`` + ``.safetensors``; never a pickle or a download)."""
    check_t2i_adapter_folder(directory)
    return load_model_folder("T2IAdapter", directory, device, dtype, progress)


def check_t2i_adapter(config, unet_config, vae_factor: int, name: str = "T2I-Adapter") -> None:
    """The features must fit the UNet's down blocks: the adapter's channels are the UNet's
    ``block_out_channels`` (as far as both go), and its pixel unshuffle brings the image to the size where the
    UNet adds the first feature: the latents' (VAE factor f), or half of it (2 f) where the first down block is a
    ``DownBlock2D`` (SD-XL's: the UNet adds the feature after that block's downsampler; ``full_adapter_xl``)."""
    ours, theirs = list(config.get("channels", [])), list(unet_config.get("block_out_channels", []))
    n = min(len(ours), len(theirs))
    if ours[:n] != theirs[:n]:
        raise DiffkitError(f"{name} has channels={ours} but the UNet block_out_channels={theirs}; a T2I-Adapter fits "
                           f"only the model family it was trained for")
    first = (unet_config.get("down_block_types") or ["CrossAttnDownBlock2D"])[0]
    wanted = vae_factor * (2 if first == "DownBlock2D" else 1)  # without attention: added after its downsampler
    if config.get("downscale_factor") != wanted:
        raise DiffkitError(f"{name} ({config.get('adapter_type')}) has downscale_factor="
                           f"{config.get('downscale_factor')} but this folder's latents need {wanted}; a T2I-Adapter "
                           f"fits only the model family it was trained for")
    if config.get("in_channels") not in (1, 3):
        raise DiffkitError(f"{name} takes {config.get('in_channels')}-channel images; allowed: 1 (grey) or 3 (RGB)")


def adapter_steps(steps: int, factor: float) -> torch.Tensor:
    """Per step i of ``steps``: True iff i < int(steps * factor) (StableDiffusionXLAdapterPipeline's test)."""
    return torch.arange(steps) < int(steps * factor)


class AdaptedNet(torch.nn.Module):
    """``net(x, t, **cond)``: the wrapped network (a :class:`~.denoiser.DiffusersNet`) given ``features`` (F_c,
    each (1, C, h, w), already scaled) as ``down_intrablock_additional_residuals`` for every row, or, each
    (K, C, h, w) (one control image per prompt), row i the features of image ``control_rows[i]`` (a per-sample
    ``cond`` tensor that classifier-free guidance repeats for its null half, as the pipelines'
    ``torch.cat([v] * 2)``); with ``keep`` (per step of ``grid``) only at the calls of kept steps (rows of other
    steps get zeros, a call with none of them no features: the UNet's own output)."""

    def __init__(self, net, features: Sequence[torch.Tensor], grid: Optional[torch.Tensor] = None,
                 keep: Optional[torch.Tensor] = None):
        super().__init__()
        self.net, self.features, self.grid, self.keep = net, list(features), grid, keep

    def forward(self, x: torch.Tensor, t, y=None, context=None, control_rows=None, **extra) -> torch.Tensor:
        batch = x.shape[0]
        if self.features[0].shape[0] == 1:
            features = [f.to(x.device).expand(batch, *f.shape[1:]) for f in self.features]
        elif control_rows is None:
            raise DiffkitError(f"{self.features[0].shape[0]} control images (one per prompt) need "
                               f"cond['control_rows'], each sample's image")
        else:  # each row's own image's features
            rows = torch.as_tensor(control_rows, device=x.device).reshape(-1).expand(batch)
            features = [f.to(x.device)[rows] for f in self.features]
        if self.keep is not None:
            kept = self.keep.to(x.device)[steps_of(self.grid, torch.as_tensor(t, device=x.device).reshape(-1)
                                                   .expand(batch))]
            if not kept.any():
                return self.net(x, t, y=y, context=context, **extra)
            if not kept.all():
                features = [f * kept.to(f.dtype).view(-1, 1, 1, 1) for f in features]
        return self.net(x, t, y=y, context=context, down_intrablock_additional_residuals=features, **extra)


def _scales(value, count: int) -> list:
    values = [value] * count if isinstance(value, (int, float)) and not isinstance(value, bool) else list(value)
    if len(values) != count or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise DiffkitError(f"adapter conditioning scale={value!r} is not allowed; give one number, or one per "
                           f"T2I-Adapter ({count})")
    return [float(check_range("adapter conditioning scale", v, 0.0, None)) for v in values]


@dataclass
class T2IAdapters(PerPromptImages):
    """One or more loaded T2I-Adapters (several: diffusers' ``MultiAdapter``) with one control image each (a path,
    PIL image or (1, 3, H, W) tensor in [0, 1]) for every prompt, or a list of K, one per prompt (the pipelines'
    ``image=[...]``: sample i takes image ``control_rows[i]``, :meth:`rows`; an adapter with one image and one with
    K add up as MultiAdapter broadcasts them), ``scales`` (``adapter_conditioning_scale``: one, or one per adapter)
    and ``factor`` (``adapter_conditioning_factor``, in [0, 1])."""

    _kind = "T2I-Adapter"
    models: list
    images: list
    scales: Union[float, Sequence[float]] = 1.0
    factor: float = 1.0

    def __post_init__(self):
        count = len(self.models)
        if count == 0:
            raise DiffkitError("give at least one T2I-Adapter")
        if len(self.images) != count:
            raise DiffkitError(f"{len(self.images)} control images for {count} T2I-Adapters; give one image per "
                               f"--t2i-adapter")
        self.scales = _scales(self.scales, count)
        self.factor = float(check_range("adapter conditioning factor", self.factor, 0.0, 1.0))
        self.images = [[open_control_image(image) for image in (entry if isinstance(entry, (list, tuple)) else
                                                                [entry])] for entry in self.images]
        if any(len(entry) == 0 for entry in self.images):
            raise DiffkitError("an empty list of control images; give one image, or one per prompt")
        self.rows(self.per_prompt)  # one line for lists of different lengths
        factors = {m.config.get("downscale_factor") for m in self.models}
        if len(factors) > 1:  # MultiAdapter's rule
            raise DiffkitError(f"the T2I-Adapters have downscale factors {sorted(factors)}; a MultiAdapter needs "
                               f"adapters of one family (the same downscale_factor)")

    def size(self, vae_factor: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """The output (height, width): given, or the first control image's, rounded down to multiples of the
        adapter's downscale factor (and of the VAE factor)."""
        factor = math.lcm(vae_factor, int(self.models[0].config.get("downscale_factor", vae_factor)))
        return control_size(self.images[0][0], factor, height, width)

    def features(self, height: int, width: int, vae_factor: int) -> list:
        """F_c = sum_k s_k F_AD^k(C_k), each (1, C, h, w), or (K, C, h, w) for K images per prompt (an adapter's
        images in one batch, as the pipelines' ``_preprocess_adapter_image``), in the adapters' dtype
        (MultiAdapter's order of sums)."""
        total = None
        for model, images, scale in zip(self.models, self.images, self.scales):
            channels = int(model.config.get("in_channels", 3))
            prepared = [prepare_control_image(image, height, width, vae_factor, channels) for image in images]
            prepared = prepared[0] if len(prepared) == 1 else torch.cat(prepared)
            with torch.no_grad():
                out = model(prepared.to(model.device, model.dtype))
            if len(self.models) == 1:
                return [f * scale for f in out]
            scaled = [torch.tensor(scale) * f for f in out]  # MultiAdapter: w * features, w a float32 tensor
            total = scaled if total is None else [a + b for a, b in zip(total, scaled)]
        return total

    def adapting(self, sd, height: int, width: int, grid: Optional[torch.Tensor] = None):
        """A copy of ``sd`` whose network denoiser passes the features to its UNet (:class:`AdaptedNet`);
        ``grid``: the sampler's time grid, needed where ``factor`` < 1."""
        for index, model in enumerate(self.models):
            check_t2i_adapter(model.config, sd.unet.config, sd.vae_scale_factor, f"--t2i-adapter number {index + 1}")
        keep = None
        if self.factor < 1:
            if grid is None:
                raise DiffkitError("an adapter conditioning factor below 1 needs the sampler's time grid")
            keep = adapter_steps(len(grid) - 1, self.factor)
        features = [f.to(sd.unet.device, sd.unet.dtype) for f in self.features(height, width, sd.vae_scale_factor)]
        inner = sd.network_denoiser
        denoiser = Denoiser(AdaptedNet(inner.net, features, grid, keep), inner.schedule, inner.prediction_type,
                            learned_variance=False)
        denoiser.model = sd.unet
        return replace(sd, _denoiser=denoiser)


def check_t2i_combination(sd, adapters, controlnet=None, ip_adapter=None, pag_scale=None) -> None:
    """One line for what text_to_image does not combine with T2I-Adapters (untested against diffusers)."""
    if adapters is None:
        return
    for given, what in ((controlnet is not None, "a ControlNet"), (ip_adapter is not None, "an IP-Adapter"),
                        (bool(pag_scale), "perturbed-attention guidance (pag_scale)"),
                        (sd.consistency is not None or bool(sd.scheduler_override), "an LCM / TCD folder or scheduler"),
                        (sd.inpainting_unet, "an inpainting UNet"),
                        (getattr(sd, "requires_aesthetics_score", False), "an SD-XL refiner folder")):
        if given:
            raise DiffkitError(f"a T2I-Adapter with {what} is not supported; drop one of them")


__all__ = ["T2IAdapters", "AdaptedNet", "load_t2i_adapter", "check_t2i_adapter_folder", "check_t2i_adapter",
           "adapter_steps", "check_t2i_combination", "ADAPTER_TYPES"]
