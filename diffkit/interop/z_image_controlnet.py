"""Z-Image ControlNets (``ZImageControlNetModel``) on a Z-Image folder (:mod:`.z_image`), as diffusers 0.42.1's
``ZImageControlNetPipeline`` and ``ZImageControlNetInpaintPipeline``, sampled with any diffkit sampler.

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
* inpainting (``ZImageControlNetInpaintPipeline``, :func:`controlnet_inpaint`; a Union 2.0 / 2.1 ControlNet of
  ``control_in_dim`` 2 C + 1): text-to-image from pure noise at the images' size, the control latents followed by
  the kept-region mask 1 - m (m binarised at 0.5, nearest-resized to the latents) and the latents of the masked
  image x (m < 0.5) at the posterior's mode; no strength, no blending of the kept region (the pipeline has
  neither).

Refused in one line (:func:`check_z_image_controlnets`): more than one ControlNet (the pipeline takes one
``ZImageControlNetModel``), a control guidance window and guess mode (it has neither), a ControlNet that does not
fit the transformer (width, heads, patch sizes, fewer control channels than latent channels; inpainting: other
than 2 C + 1), a ControlNet with img2img (no mask) or a strength (no diffusers pipeline has them).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import DiffkitError
from .controlnet import ControlNets, model_folder_config
from .z_image import ZImageNet

Z_IMAGE_CONTROLNET = "ZImageControlNetModel"
CONTROLNET_PIPELINE = "ZImageControlNetPipeline"
INPAINT_PIPELINE = "ZImageControlNetInpaintPipeline"
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


def check_z_image_controlnets(controlnets: ControlNets, transformer, inpaint: bool = False) -> None:
    """One ``ZImageControlNetModel`` without a window or guess mode, fitting ``transformer`` (module docstring;
    ``inpaint``: ``ZImageControlNetInpaintPipeline``'s, of 2 C + 1 control channels); a one-line DiffkitError naming
    what does not."""
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
    if inpaint and int(theirs.control_in_dim) != 2 * channels + 1:
        raise DiffkitError(f"--controlnet has control_in_dim={theirs.control_in_dim!r}; allowed for inpainting "
                           f"({INPAINT_PIPELINE}): {2 * channels + 1} (control, mask and masked-image latents, as "
                           f"the Union 2.0 / 2.1 ControlNets)")
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


def control_cond(zimage, controlnets: ControlNets, h: int, w: int, batch: int, control_rows=None,
                 inpaint: Optional[tuple] = None) -> torch.Tensor:
    """(batch, control_in_dim, h, w): each row's control latents at latents h x w (module docstring); ``inpaint``:
    (images (B, 3, H, W) in [-1, 1], mask (B or 1, 1, H, W), 1 = repaint), the latents followed by
    ``ZImageControlNetInpaintPipeline``'s kept-region mask 1 - m (m binarised at 0.5 and nearest-resized,
    :func:`diffkit.latent_editing.latent_mask`) and the masked image's latents, E(x (m < 0.5)) at the mode."""
    from ..latent_editing import latent_mask
    from .flow_controlnet import control_latents
    f = zimage.vae_scale_factor
    latents = control_latents(zimage, controlnets, h * f, w * f, batch, 1, posterior="mean",
                              control_rows=control_rows)[0, :, 0]
    if inpaint is not None:
        images, mask = (v.to(zimage.device, torch.float32) for v in inpaint)
        mask = mask.expand(batch, *mask.shape[1:])
        masked = control_latents(zimage, controlnets, h * f, w * f, batch, 1, posterior="mean",
                                 pixels=[images * (mask < 0.5)])[0, :, 0]
        return torch.cat([latents, 1 - latent_mask(mask, (h, w)), masked], 1)
    pad = int(controlnets.models[0].config.control_in_dim) - latents.shape[1]
    return torch.cat([latents, latents.new_zeros(batch, pad, h, w)], 1) if pad else latents


def controlled(zimage, denoiser, cond: dict, controlnets: ControlNets, h: int, w: int, control_rows=None,
               inpaint: Optional[tuple] = None) -> tuple:
    """(denoiser, cond) of the guided ``denoiser`` (:meth:`.z_image.ZImage.prompt_guidance`'s) on the transformer
    with ``controlnets`` (checked: :func:`check_z_image_controlnets`; attached as ``from_transformer``) and
    ``cond["control"]`` the control latents of each row (:func:`control_cond`; ``inpaint``: (images, mask))."""
    from ..denoiser import Denoiser
    diffusers = __import__("diffusers")
    check_z_image_controlnets(controlnets, zimage.transformer, inpaint is not None)
    model, net = controlnets.models[0], denoiser.net
    if getattr(model, "t_embedder", None) is not zimage.transformer.t_embedder:
        diffusers.ZImageControlNetModel.from_transformer(model, zimage.transformer)
    out = Denoiser(ZImageControlledNet(zimage.transformer, net.T, net.scale, net.normalize, net.trunc_sigma, model,
                                       controlnets.scales[0]), denoiser.schedule, "flow_prediction")
    out.model = zimage.transformer
    return out, {**cond, "control": control_cond(zimage, controlnets, h, w, cond["context"].shape[0], control_rows,
                                                 inpaint)}


def check_inpaint_options(masked: bool, strength=None, mask: str = "a mask", flag: Optional[str] = None) -> None:
    """One line for a ControlNet edit without a mask (``masked`` False; no img2img pipeline takes a Z-Image ControlNet)
    or with a ``strength`` (``ZImageControlNetInpaintPipeline`` has none); ``mask`` / ``flag``: the command's names
    of the mask and the strength."""
    if not masked:
        raise DiffkitError(f"a ControlNet with Z-Image img2img is not supported (diffusers 0.42.1 has no such "
                           f"pipeline); give {mask} ({INPAINT_PIPELINE}) or sample with the ControlNet")
    if strength is not None:
        raise DiffkitError(f"{flag or f'strength={strength!r}'} does not apply to Z-Image ControlNet inpainting "
                           f"({INPAINT_PIPELINE} draws from pure noise); drop it")


def controlnet_inpaint(zimage, images: torch.Tensor, prompts, mask: Optional[torch.Tensor], controlnets: ControlNets,
                       strength: Optional[float] = None, control_rows=None, posterior: str = "mean", **options):
    """Inpainting of ``images`` (B, 3, H, W) in [-1, 1] under ``mask`` (B or 1, 1, H, W), 1 = repaint, with a Union
    2.0 / 2.1 ControlNet as ``ZImageControlNetInpaintPipeline``: text-to-image from noise at the images' size
    (:func:`.z_image.text_to_image`'s options, 50 steps, W = 5) whose ControlNet reads the control image's latents,
    the kept-region mask and the masked image's latents (:func:`control_cond`); the result is not blended with the
    images (the pipeline's is not). ``prompts``: one, or one per image. No ``strength`` (the pipeline has none) and
    no img2img (``mask`` None): one line each; ``posterior``: ignored (the pipeline encodes at the mode)."""
    from .flow_latents import edit_prompts
    from .z_image import text_to_image
    check_inpaint_options(mask is not None, strength)
    prompts = edit_prompts(images, prompts)
    return text_to_image(zimage, prompts, height=images.shape[2], width=images.shape[3], controlnets=controlnets,
                         control_rows=control_rows, control_inpaint=(images, mask), **options)


__all__ = ["Z_IMAGE_CONTROLNET", "CONTROLNET_PIPELINE", "INPAINT_PIPELINE", "Z_IMAGE_CONTROL_SCALE",
           "ZImageControlledNet", "check_z_image_controlnet_folder", "check_z_image_control_options",
           "check_z_image_controlnets", "check_inpaint_options", "control_cond", "controlled", "controlnet_inpaint"]
