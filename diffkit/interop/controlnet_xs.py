"""ControlNet-XS (Zavadski et al. 2023) for a Stable Diffusion 1.x / 2.x or SD-XL folder, sampled with any diffkit
sampler: diffusers' ``StableDiffusionControlNetXSPipeline`` / ``StableDiffusionXLControlNetXSPipeline``.

A ControlNet-XS adapter (diffusers' ``ControlNetXSAdapter``) is a small encoder (a fraction of the UNet's channels)
that is not run beside the UNet and added to it, as a ControlNet's residuals are (:mod:`.controlnet`), but fused
with it: at every block of the encoder and the middle block the UNet's features are concatenated into the
adapter's ("base to control") and the adapter's, through zero convolutions and times the conditioning scale s,
added back into the UNet's ("control to base"), and the decoder takes both encoders' skips (ControlNet-XS
Sec. 3, Fig. 3: the two-way feature exchange replacing ControlNet's one-way residuals, eq. 1-2 of Zhang et
al.). diffusers fuses a UNet and an adapter into one ``UNetControlNetXSModel`` (``from_unet(unet, adapter)``,
which copies the weights: the fused model holds the UNet's once more); :class:`XSControlledNet` runs it as the
network of diffkit's denoiser, with the control image c_f (RGB in [0, 1]), s (``conditioning_scale``, 0: the
UNet's output) and ``apply_control`` (False: the UNet alone) of the pipelines. SD-XL's ``added_cond_kwargs`` (the
pooled text embedding and time ids) reach the fused model as they reach the UNet.

The window ``start`` / ``end`` is the pipelines' ``control_guidance_start`` / ``_end``: step i of N is controlled
iff start <= i / N and (i + 1) / N <= end (:func:`.controlnet.step_windows`), a call at time t belonging to
step i with t_{i+1} < t <= t_i (:func:`.controlnet.steps_of`). Refused in one line, as diffusers 0.42.1 has no
ControlNet-XS pipeline with them: more than one adapter, guess mode, img2img / inpainting, a 9-channel UNet,
IP-Adapters, PAG, SAG, T2I-Adapters, panoramas, FreeU, a refiner hand-over, guidance rescale / APG and LCM / TCD
sampling; and a UNet the adapter was not made for (diffusers' fused model also needs ``layers_per_block=2``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Union

import torch

from ..denoiser import Denoiser
from ..errors import DiffkitError
from . import model_dtype, require
from .controlnet import ControlNets, prepare_control_image, step_windows, steps_of
from .denoiser import DiffusersNet

XS_ADAPTER = "ControlNetXSAdapter"
XS_PIPELINES = "StableDiffusionControlNetXSPipeline / StableDiffusionXLControlNetXSPipeline"
MATCHING_CONFIG = (("base_block_out_channels", "block_out_channels"), ("down_block_types", "down_block_types"),
                   ("cross_attention_dim", "cross_attention_dim"),
                   ("transformer_layers_per_block", "transformer_layers_per_block"))


def is_xs_adapter(model) -> bool:
    """Whether ``model`` is a diffusers ``ControlNetXSAdapter``."""
    return type(model).__name__ == XS_ADAPTER


def _listed(value, count: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * count


def check_xs_adapter(adapter, unet, factor: int) -> None:
    """One line unless ``adapter`` was made for ``unet`` (``ControlNetXSAdapter.from_unet``: the same blocks,
    channels, context width and transformer depths), ``unet`` is one diffusers' ``UNetControlNetXSModel`` can fuse
    (4 latent channels in and out, 2 ResNets per block), and the adapter brings 3-channel control images down by
    the VAE factor f."""
    config, blocks = unet.config, len(unet.config.block_out_channels)
    for key, value in (("in_channels", 4), ("out_channels", 4)):
        if config.get(key) != value:
            raise DiffkitError(f"ControlNet-XS fuses with a UNet of {value} latent channels ({XS_PIPELINES}); this "
                               f"folder's UNet has {key}={config.get(key)}")
    if _listed(config.get("layers_per_block"), blocks) != [2] * blocks:
        raise DiffkitError(f"ControlNet-XS fuses with a UNet of layers_per_block=2 (diffusers' UNetControlNetXSModel, "
                           f"as SD 1.x / 2.x / SD-XL); this folder's UNet has {config.get('layers_per_block')!r}")
    for ours, theirs in MATCHING_CONFIG:
        mine, its = adapter.config.get(ours), config.get(theirs)
        if ours == "transformer_layers_per_block":
            mine, its = _listed(mine, blocks), _listed(its, blocks)
        elif isinstance(mine, (list, tuple)):
            mine, its = list(mine), list(its)
        if mine != its:
            raise DiffkitError(f"the ControlNet-XS adapter has {ours}={mine!r} but the UNet {theirs}={its!r}; an "
                               f"adapter fits only the UNet it was made from (ControlNetXSAdapter.from_unet)")
    embedding = adapter.config.get("conditioning_embedding_out_channels") or (16, 32, 96, 256)
    if 2 ** (len(embedding) - 1) != factor:
        raise DiffkitError(f"the ControlNet-XS adapter brings control images down {2 ** (len(embedding) - 1)}x but "
                           f"the VAE of this folder by {factor}x; an adapter fits only its own model family")
    if adapter.config.get("conditioning_channels", 3) != 3:
        raise DiffkitError(f"the ControlNet-XS adapter takes {adapter.config.get('conditioning_channels')}-channel "
                           f"control images; allowed: 3 (RGB, as diffusers' pipeline prepares them)")


def fuse(unet, adapter):
    """diffusers' ``UNetControlNetXSModel.from_unet(unet, adapter)`` on the UNet's device, for inference."""
    fused = require("diffusers").UNetControlNetXSModel.from_unet(unet, adapter)
    return fused.to(unet.device).eval().requires_grad_(False)


class XSControlledNet(torch.nn.Module):
    """``net(x, t, y=None, context=None, control_rows=None, **extra)``: a fused ``UNetControlNetXSModel`` (in a
    :class:`DiffusersNet`) given ``image`` ((1, 3, H, W) for every row, or (K, 3, H, W): row i takes image
    ``control_rows[i]``), ``scale`` (``conditioning_scale``) and, per call, ``apply_control``: the steps of ``grid``
    that ``keep`` marks (None: every call). A batch whose rows fall on both sides of the window (times of
    different steps) is run both ways, each row taking its own."""

    def __init__(self, net: DiffusersNet, image: torch.Tensor, scale: float, grid: Optional[torch.Tensor] = None,
                 keep: Optional[torch.Tensor] = None):
        super().__init__()
        self.net, self.image, self.scale, self.grid, self.keep = net, image, float(scale), grid, keep

    def forward(self, x: torch.Tensor, t, y=None, context=None, control_rows=None, **extra) -> torch.Tensor:
        batch = x.shape[0]
        image = self.image.to(x.device, model_dtype(self.net.model, x.dtype))
        if image.shape[0] > 1:
            if control_rows is None:
                raise DiffkitError(f"{image.shape[0]} control images (one per prompt) need cond['control_rows'], "
                                   f"each sample's image")
            image = image[torch.as_tensor(control_rows, device=x.device).reshape(-1).expand(batch)]
        else:
            image = image.expand(batch, -1, -1, -1)
        kept = torch.ones(batch, dtype=torch.bool, device=x.device)
        if self.keep is not None:
            t_rows = torch.as_tensor(t, device=x.device).reshape(-1).expand(batch)
            kept = self.keep.to(x.device)[steps_of(self.grid, t_rows)]

        def run(apply: bool) -> torch.Tensor:
            return self.net(x, t, y=y, context=context, controlnet_cond=image, conditioning_scale=self.scale,
                            apply_control=apply, **extra)

        if bool(kept.all()) or not bool(kept.any()):
            return run(bool(kept.all()))
        return torch.where(kept.reshape(-1, *[1] * (x.ndim - 1)), run(True), run(False))


@dataclass
class ControlNetXS(ControlNets):
    """One loaded ``ControlNetXSAdapter`` (``models``: a list of one) with its control image (or a list, one per
    prompt) and the pipelines' ``controlnet_conditioning_scale`` and ``control_guidance_start`` / ``_end``:
    :meth:`controlling` gives a Stable Diffusion (SD-XL) folder whose network is the UNet fused with the adapter.
    Text to image only (:func:`refuse_with_xs`)."""

    _fused: dict = field(default_factory=dict, init=False, repr=False)  # id(unet) -> its fused model

    def __post_init__(self):
        if len(self.models) != 1:
            raise DiffkitError(f"{len(self.models)} ControlNet-XS adapters; diffusers' {XS_PIPELINES} take one")
        if self.guess_mode or self.modes is not None:
            raise DiffkitError(f"{'guess mode' if self.guess_mode else 'control modes'} with a ControlNet-XS adapter "
                               f"is not supported ({XS_PIPELINES} have none)")
        super().__post_init__()
        if not is_xs_adapter(self.models[0]):
            raise DiffkitError(f"ControlNetXS takes a {XS_ADAPTER}, not a {type(self.models[0]).__name__}")

    def fused(self, unet):
        """The UNet fused with the adapter (built once per UNet)."""
        if id(unet) not in self._fused:
            self._fused = {id(unet): fuse(unet, self.models[0])}
        return self._fused[id(unet)]

    def controlling(self, sd, height: int, width: int, grid: Optional[torch.Tensor] = None,
                    box: Optional[tuple] = None):
        """A copy of the Stable Diffusion (SD-XL) folder ``sd`` whose network denoiser is the UNet fused with the
        adapter (:class:`XSControlledNet`); ``grid``: the sampler's time grid, needed for a window."""
        if box is not None:
            raise DiffkitError("--padding-mask-crop with a ControlNet-XS adapter is not supported (no diffusers "
                               "ControlNet-XS inpainting pipeline)")
        if sd.inpainting_unet:
            raise DiffkitError(f"a ControlNet-XS adapter on a 9-channel inpainting UNet is not supported (diffusers "
                               f"has no ControlNet-XS inpainting pipeline; {XS_PIPELINES} take a base folder)")
        if sd.consistency is not None or sd.scheduler_override:
            raise DiffkitError(f"LCM / TCD sampling with a ControlNet-XS adapter is not supported ({XS_PIPELINES} "
                               f"give the UNet no guidance input); drop the LCM scheduler or the adapter")
        from .ip_adapter import IPAdaptedNet
        inner = sd.network_denoiser
        if isinstance(getattr(inner, "net", None), IPAdaptedNet):
            raise DiffkitError(f"an IP-Adapter with a ControlNet-XS adapter is not supported ({XS_PIPELINES} take "
                               f"none)")
        check_xs_adapter(self.models[0], sd.unet, sd.vae_scale_factor)
        image = torch.cat([prepare_control_image(image, height, width, sd.vae_scale_factor)
                           for image in self.images[0]])
        keep = None
        if self.windowed:
            if grid is None:
                raise DiffkitError("a control guidance window needs the sampler's time grid")
            keep = step_windows(grid, self.start[0], self.end[0])
        net = XSControlledNet(DiffusersNet(self.fused(sd.unet), uses_labels=False), image, self.scales[0], grid,
                              keep)
        denoiser = Denoiser(net, inner.schedule, inner.prediction_type, learned_variance=False)
        denoiser.model = sd.unet
        return replace(sd, _denoiser=denoiser)


def refuse_with_xs(controlnet, options: dict) -> None:
    """One line where ``controlnet`` is a :class:`ControlNetXS` and one of ``options`` (name: value) is set, a
    combination diffusers 0.42.1 has no ControlNet-XS pipeline for."""
    if not isinstance(controlnet, ControlNetXS):
        return
    for name, value in options.items():
        if value is not None and value is not False and value != 0:
            raise DiffkitError(f"{name} with a ControlNet-XS adapter is not supported (diffusers' {XS_PIPELINES} "
                               f"have no such option); drop one of them")


def xs_controlnets(models: list, images: list, scales, starts, ends, guess_mode: bool = False,
                   modes=None) -> Union[ControlNets, ControlNetXS]:
    """:class:`ControlNetXS` where ``models`` holds a ``ControlNetXSAdapter``, else :class:`ControlNets`."""
    kind = ControlNetXS if any(is_xs_adapter(model) for model in models) else ControlNets
    return kind(models, images, scales, starts, ends, guess_mode, modes)


__all__ = ["ControlNetXS", "XSControlledNet", "check_xs_adapter", "fuse", "is_xs_adapter", "refuse_with_xs",
           "xs_controlnets", "XS_ADAPTER"]
