"""Z-Image ControlNets (``ZImageControlNetModel``) on a Z-Image folder (:mod:`.z_image`), as diffusers 0.42.1's
``ZImageControlNetPipeline``, sampled with any diffkit sampler.

A Z-Image ControlNet (VACE-style control blocks, Jiang et al. 2025, "VACE: All-in-One Video Creation and Editing",
Sec. 3.2, on ControlNet's zero-initialised residuals, Zhang et al. 2023, eq. 1-2) shares the transformer's time,
patch, caption and rotary embedders and its noise / context refiners (``ZImageControlNetModel.from_transformer``):
the control latents, patch-embedded by its own ``control_all_x_embedder`` and refined (``control_noise_refiner``),
run beside the unified image + text tokens through its control blocks; block k (``before_proj`` zero-initialised
on the first, ``after_proj`` on each) gives a hint for the transformer layer ``control_layers_places[k]``, times
``controlnet_conditioning_scale``, added to the unified stream after that layer (``controlnet_block_samples``).
:class:`ZImageControlledNet` makes both calls at every network call, so every diffkit sampler, the pipeline's own
loop and both halves of classifier-free guidance see it:

* the control image (RGB; a path, PIL image or (1, 3, H, W) tensor in [0, 1]) is resized to the output size
  (Lanczos) and mapped to [-1, 1] (the pipeline's ``VaeImageProcessor.preprocess``,
  :func:`.flow_controlnet.control_pixels`), encoded by the folder's VAE at the posterior's mode, c = (E(x) -
  shift_factor) x scaling_factor (:func:`.flow_controlnet.control_latents` with ``posterior="mean"``), zero-padded
  to the ControlNet's ``control_in_dim`` channels (the Union 2.0 ControlNets' 33); the same latents for both
  guidance halves; one image for every prompt, or one per prompt (``control_rows``). The output size is the one
  asked for (default 1024, the pipeline's ``height or 1024``), not the control image's.
* the ControlNet gets the transformer's time (1000 - t) / 1000 and the prompt's variable-length states.
* the conditioning scale (default 0.75, the pipeline's); 0 adds nothing (the pipeline adds 0 x the hints).

Refused in one line (:func:`check_z_image_controlnets`): more than one ControlNet (the pipeline takes one
``ZImageControlNetModel``), a control guidance window and guess mode (it has neither), a ControlNet that does not
fit the transformer (width, heads, patch sizes, fewer control channels than latent channels), a ControlNet with
img2img / inpainting of the folder's own pipelines (no diffusers pipeline has both).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import DiffkitError
from .controlnet import ControlNets, model_folder_config
from .z_image import ZImageNet

Z_IMAGE_CONTROLNET = "ZImageControlNetModel"
CONTROLNET_PIPELINE = "ZImageControlNetPipeline"
Z_IMAGE_CONTROL_SCALE = 0.75  # the pipeline's default controlnet_conditioning_scale
FIT = ("dim", "n_heads", "n_kv_heads", "all_patch_size", "all_f_patch_size")  # what must be the transformer's


def check_z_image_controlnet_folder(directory) -> dict:
    """The ``config.json`` of a diffusers ``ZImageControlNetModel`` folder (one line otherwise)."""
    return model_folder_config(directory, "--controlnet", Z_IMAGE_CONTROLNET,
                               " (a Z-Image folder takes Z-Image ControlNets)")


def check_z_image_control_options(count: int, starts, ends, guess_mode: bool) -> None:
    """One ControlNet, no window, no guess mode (:func:`.sana_controlnet.check_sana_control_options` with
    Z-Image's names), from the flags before any weight is read and again on the loaded ControlNets."""
    from .sana_controlnet import check_sana_control_options
    check_sana_control_options(count, starts, ends, guess_mode, "Z-Image", CONTROLNET_PIPELINE, Z_IMAGE_CONTROLNET)


def check_z_image_controlnets(controlnets: ControlNets, transformer) -> None:
    """One ``ZImageControlNetModel`` without a window or guess mode, fitting ``transformer`` (module docstring); a
    one-line DiffkitError naming what does not."""
    check_z_image_control_options(len(controlnets.models), controlnets.start, controlnets.end,
                                  controlnets.guess_mode)
    model = controlnets.models[0]
    if type(model).__name__ != Z_IMAGE_CONTROLNET:
        raise DiffkitError(f"--controlnet is a {type(model).__name__}; allowed: a {Z_IMAGE_CONTROLNET} for a "
                           f"Z-Image folder")
    theirs, ours = model.config, transformer.config
    for key in FIT:
        mine, wanted = theirs.get(key), ours.get(key)
        if (list(mine) if isinstance(mine, (list, tuple)) else mine) != \
                (list(wanted) if isinstance(wanted, (list, tuple)) else wanted):
            raise DiffkitError(f"--controlnet has {key}={mine!r} but this Z-Image folder's transformer {wanted!r}; "
                               f"a ControlNet fits only the transformer it was made for")
    channels = int(ours.in_channels)
    if int(theirs.control_in_dim) < channels:
        raise DiffkitError(f"--controlnet has control_in_dim={theirs.control_in_dim!r}; allowed: at least {channels} "
                           f"(the latent channels; {CONTROLNET_PIPELINE} zero-pads the control latents to it)")


class ZImageControlledNet(ZImageNet):
    """:class:`.z_image.ZImageNet` with a ``ZImageControlNetModel``'s scaled hints in every transformer call
    (module docstring); ``net(..., control=c)``, c: (B, control_in_dim, h, w) control latents of each row."""

    def __init__(self, transformer, T: int, scale: float = 1.0, normalize: float = 0.0,
                 trunc_sigma: Optional[float] = None, controlnet=None, control_scale: float = Z_IMAGE_CONTROL_SCALE):
        super().__init__(transformer, T, scale, normalize, trunc_sigma)
        self.controlnet, self.control_scale, self._control = controlnet, float(control_scale), None

    def forward(self, x, t, context=None, mask=None, null_context=None, null_mask=None, control=None):
        if control is None:
            raise DiffkitError("a Z-Image ControlNet needs cond['control'] (z_image_controlnet.controlled)")
        self._control = control
        try:
            return super().forward(x, t, context, mask, null_context, null_mask)
        finally:
            self._control = None

    def hints(self, latents: list, time, states: list) -> Optional[dict]:
        """The ControlNet's ``controlnet_block_samples`` for this call (None at scale 0: nothing added)."""
        if self.control_scale == 0:
            return None
        from . import model_dtype
        control = self._control.to(model_dtype(self.controlnet)).unsqueeze(2)
        return self.controlnet(latents, time, states, list(control.expand(len(latents), *control.shape[1:])),
                               conditioning_scale=self.control_scale)


def control_cond(zimage, controlnets: ControlNets, h: int, w: int, batch: int, control_rows=None) -> torch.Tensor:
    """(batch, control_in_dim, h, w): each row's control latents at latents h x w (module docstring)."""
    from .flow_controlnet import control_latents
    f = zimage.vae_scale_factor
    latents = control_latents(zimage, controlnets, h * f, w * f, batch, 1, posterior="mean",
                              control_rows=control_rows)[0, :, 0]
    pad = int(controlnets.models[0].config.control_in_dim) - latents.shape[1]
    return torch.cat([latents, latents.new_zeros(batch, pad, h, w)], 1) if pad else latents


def controlled(zimage, denoiser, cond: dict, controlnets: ControlNets, h: int, w: int, control_rows=None) -> tuple:
    """(denoiser, cond) of the guided ``denoiser`` (:meth:`.z_image.ZImage.prompt_guidance`'s) on the transformer
    with ``controlnets`` (checked: :func:`check_z_image_controlnets`; attached as ``from_transformer``) and
    ``cond["control"]`` the control latents of each row."""
    from ..denoiser import Denoiser
    diffusers = __import__("diffusers")
    check_z_image_controlnets(controlnets, zimage.transformer)
    model, net = controlnets.models[0], denoiser.net
    if getattr(model, "t_embedder", None) is not zimage.transformer.t_embedder:
        diffusers.ZImageControlNetModel.from_transformer(model, zimage.transformer)
    out = Denoiser(ZImageControlledNet(zimage.transformer, net.T, net.scale, net.normalize, net.trunc_sigma, model,
                                       controlnets.scales[0]), denoiser.schedule, "flow_prediction")
    out.model = zimage.transformer
    return out, {**cond, "control": control_cond(zimage, controlnets, h, w, cond["context"].shape[0], control_rows)}


__all__ = ["Z_IMAGE_CONTROLNET", "CONTROLNET_PIPELINE", "Z_IMAGE_CONTROL_SCALE", "ZImageControlledNet",
           "check_z_image_controlnet_folder", "check_z_image_control_options", "check_z_image_controlnets",
           "control_cond", "controlled"]
