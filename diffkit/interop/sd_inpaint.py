"""Dedicated Stable Diffusion inpainting UNets (``runwayml/stable-diffusion-inpainting`` style): 9 input channels.

Such a UNet was fine-tuned (LDM, Rombach et al. 2022, Sec. 4.3.2 / App. "Image inpainting"; the SD inpainting
model card) to take, besides the noisy latent z_t (4 channels), the mask at the latent size (1 channel, 1 =
repaint) and the latents of the masked image (4 channels): its input is ``cat([z_t, m, s E(x (1 - m))])``, in
that order, and it predicts the noise of z_t alone (``out_channels = 4``). This module does what diffusers'
``StableDiffusionInpaintPipeline`` does with such a UNet (``num_channels_unet == 9``):

* the pixel mask is binarised at 0.5 (its ``mask_processor``), the masked image is ``image * (mask < 0.5)``
  (the repainted pixels set to 0, mid-grey in [-1, 1]), its latents ``s E(.)`` (a posterior sample, drawn from
  each image's generator after the starting noise, as ``prepare_mask_latents`` draws it; or the mean), and the
  mask goes to the latent size by ``F.interpolate`` (nearest; :func:`~diffkit.latent_editing.latent_mask`);
* the start: at strength 1 (``is_strength_max``) pure noise z_T = n, the image not encoded; below it SDEdit's
  z_t0 = alpha_t0 s E(x) + sigma_t0 n (the image's posterior sample drawn before n), on the strength's part of
  the grid (:func:`~diffkit.editing.strength_grid`, diffusers' ``get_timesteps``);
* every network call (both halves of classifier-free guidance) gets the same mask and masked-image latents,
  concatenated after the latents: diffusers scales only the latents (``scheduler.scale_model_input``) before
  the concatenation. A diffkit sampler calls its :class:`~diffkit.denoiser.Denoiser` with the VP state z_t
  (what ``scale_model_input`` gives for Euler-type schedulers), and :class:`InpaintingUNetNet` concatenates
  inside the network, so the extra channels are never scaled, with any sampler;
* unlike the 4-channel pipeline, nothing is blended back at each step: the UNet alone keeps the known region,
  and the output is the decoded final latent (``paste=True``: the kept pixels pasted back, not diffusers'
  default). ``padding_mask_crop`` (crop around the mask, then overlay): :mod:`.mask_crop`, around this.

With a ControlNet (:meth:`~diffkit.interop.controlnet.ControlNets.controlling`) the ControlNet reads the latents
(4 channels) and its residuals go to this UNet, as ``StableDiffusionControlNetInpaintPipeline`` with a 9-channel
UNet. An SD-XL inpainting UNet (:mod:`.sd_xl`, ``StableDiffusionXLInpaintPipeline`` and its ControlNet pipeline with
``num_channels_unet == 9``) takes this same path: its cond adds ``text_embeds`` and ``time_ids``, which
:class:`InpaintingUNetNet` passes on with the context. An SD3 folder's 33-channel inpainting transformer (:mod:`.sd3`,
``StableDiffusion3InpaintPipeline`` with ``num_channels_transformer == 33``: latents 16 + mask 1 + masked-image latents
16, the same order) takes this path too, :class:`InpaintingUNetNet` around its ``SD3Net``, with SD3's latents
((E(x) - shift) * scale). RePaint and reconstruction guidance act on replacement, which this model does not use:
refused.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from ..denoiser import Denoiser
from ..errors import DiffkitError

MASK_KEY, MASKED_KEY = "inpaint_mask", "masked_image_latents"  # the cond entries InpaintingUNetNet reads
# RePaint's resampling and reconstruction guidance act on replacement, which these UNets do not use: (option, default)
REPLACEMENT_OPTIONS = (("jump_n_sample", 1), ("jump_length", 10), ("reconstruction_weight", 0.0))


def is_inpainting_config(config: dict) -> bool:
    """A UNet config of an inpainting model: in_channels = 2 * out_channels + 1 (9 for SD: latents 4, mask 1,
    masked-image latents 4)."""
    in_channels, out_channels = config.get("in_channels", 4), config.get("out_channels", 4)
    return isinstance(out_channels, int) and in_channels == 2 * out_channels + 1


def is_inpainting_folder(path, component: str = "unet") -> bool:
    """True for a Stable Diffusion folder whose ``unet/config.json`` is an inpainting UNet's (read, not loaded);
    ``component="transformer"``: an SD3 folder's 33-channel inpainting transformer (:mod:`.sd3`)."""
    config_file = Path(path) / component / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and is_inpainting_config(config)


def check_inpainting_unet(config: dict, directory, inpainting: bool, lcm: bool = False) -> bool:
    """True for an inpainting UNet config that may be loaded (``inpainting``, not an LCMScheduler folder), False
    for any other UNet; a one-line error for an inpainting UNet where it is not allowed."""
    if not is_inpainting_config(config):
        return False
    what = (f"{directory} has an inpainting UNet (in_channels={config.get('in_channels')}: latents + mask + "
            f"masked-image latents)")
    return check_editing_unet(what, "an inpainting UNet", inpainting, lcm,
                              "it only inpaints; use diffkit edit --images ... --mask PNG (library: "
                              "load_stable_diffusion(..., inpainting=True) and latent_inpaint)")


def check_editing_unet(what: str, kind: str, allowed: bool, lcm: bool, use: str) -> bool:
    """True where a UNet with extra input channels (``what``: the folder and its channels) may be loaded: ``allowed``
    and with a diffusion scheduler (not ``lcm``); else a one-line error (``use``: what it is for instead). The
    inpainting, InstructPix2Pix and depth-to-image UNets' check (:mod:`.sd_instruct_pix2pix`, :mod:`.sd_depth`)."""
    if lcm:
        raise DiffkitError(f"{what} with an LCMScheduler; allowed: {kind} with a diffusion scheduler (DDIM, PNDM, ...)")
    if not allowed:
        raise DiffkitError(f"{what}: {use}")
    return True


class ChannelConcatNet(torch.nn.Module):
    """``net(x, t, **cond)`` = ``inner(cat([x, cond[k] for k in KEYS], 1), t, **rest of cond)``: a network with extra
    input channels after the latents, as diffusers' editing pipelines concatenate them after the scheduler scaled the
    latents (``torch.cat([latent_model_input, ...], dim=1)``). ``x`` is the network input the Denoiser gives; the
    extra tensors are passed as they are (per-sample tensors in ``cond``, so classifier-free guidance repeats them
    for its null half, as the pipelines' ``torch.cat([mask] * 2)``). Subclasses name ``KEYS``, ``WHAT`` (the model)
    and ``USE`` (what to call instead when a key is missing): :class:`InpaintingUNetNet`,
    :class:`~.sd_instruct_pix2pix.ImageConditionedNet`, :class:`~.sd_depth.DepthUNetNet`. ``EXTRA_FIRST``: the
    extra tensors before the latents instead (Marigold's ``cat([image_latent, pred_latent])``,
    :class:`~.marigold.MarigoldNet`)."""
    KEYS: tuple = ()
    WHAT = USE = ""
    EXTRA_FIRST = False

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, t, **cond) -> torch.Tensor:
        extra = [cond.pop(key, None) for key in self.KEYS]
        if any(e is None for e in extra):
            raise DiffkitError(f"this is {self.WHAT}: {self.USE}")
        extra = [e.to(x) for e in extra]
        if any(e.shape[0] != x.shape[0] or e.shape[2:] != x.shape[2:] for e in extra):
            shapes = " / ".join(f"{key} {tuple(e.shape)}" for key, e in zip(self.KEYS, extra))
            raise DiffkitError(f"{shapes} do not fit the latents {tuple(x.shape)}; allowed: "
                               f"({x.shape[0]}, C, {x.shape[2]}, {x.shape[3]})")
        return self.inner(torch.cat([*extra, x] if self.EXTRA_FIRST else [x, *extra], dim=1), t, **cond)


class InpaintingUNetNet(ChannelConcatNet):
    """``net(x, t, inpaint_mask=m, masked_image_latents=c, **cond)`` = ``inner(cat([x, m, c], 1), t, **cond)``:
    the UNet input of diffusers' 9-channel inpainting (``torch.cat([latent_model_input, mask,
    masked_image_latents], dim=1)``; :class:`ChannelConcatNet`)."""
    KEYS = ("inpaint_mask", "masked_image_latents")
    WHAT = "an inpainting UNet (latents + mask + masked-image latents in)"
    USE = "it only inpaints; use latent_inpaint with a mask (diffkit edit --mask)"


def inpainting_denoiser(unet, schedule, prediction_type: str) -> Denoiser:
    """The :class:`~diffkit.denoiser.Denoiser` of an inpainting UNet (cond: ``context``, ``inpaint_mask``,
    ``masked_image_latents``; :func:`concat_denoiser`)."""
    return concat_denoiser(InpaintingUNetNet, unet, schedule, prediction_type)


def concat_denoiser(net_class, unet, schedule, prediction_type: str, learned_variance: bool = False) -> Denoiser:
    """The :class:`~diffkit.denoiser.Denoiser` of a diffusers UNet with extra input channels: ``net_class`` (a
    :class:`ChannelConcatNet`) around :class:`~diffkit.interop.denoiser.DiffusersNet`; ``learned_variance``: its
    output is [prediction, v] (DeepFloyd IF's stage II, :mod:`.deepfloyd_if`)."""
    from .denoiser import DiffusersNet
    denoiser = Denoiser(net_class(DiffusersNet(unet, uses_labels=False)), schedule, prediction_type,
                        learned_variance=learned_variance)
    denoiser.model = unet
    return denoiser


def unet_inpaint(denoiser, sd, images: torch.Tensor, pixel_mask: torch.Tensor, sampler: str = "ddim",
                 steps: int = 50, *, strength: float = 1.0, posterior: str = "mean", generator=None,
                 cond: Optional[dict] = None, spacing=None, final=None, thresholding=None, progress: bool = True,
                 callback=None, jump_length: int = 10, jump_n_sample: int = 1, reconstruction_weight: float = 0.0,
                 **options) -> torch.Tensor:
    """The edited latents z_0 of a 9-channel inpainting UNet (module doc; called by
    :func:`~diffkit.latent_editing.latent_inpaint`, which checks the images and mask, makes the per-image
    ``generator`` and decodes). ``images`` in [-1, 1]; ``pixel_mask`` (B, 1, H, W), 1 = repaint.
    ``denoiser``: the (guided) network of ``sd`` on latents; ``cond`` its prompts' contexts. With
    ``posterior="sample"``, per-image generators and DDIM on the scheduler's grid this is diffusers'
    ``StableDiffusionInpaintPipeline`` step for step (draws per image: [the image's posterior sample if strength
    < 1], the noise, the masked image's posterior sample, then the sampler's). A FLUX.1 Fill folder
    (:mod:`.flux_channels`) sets ``sd.inpaint_encodes_image`` (FluxFillPipeline draws the image's posterior at
    strength 1 too) and ``sd.fill_mask`` (its mask channels instead of :func:`~diffkit.latent_editing.latent_mask`)."""
    from ..editing import _planned
    from ..latent_editing import encode_images, latent_mask
    from ..noise import randn
    from ..sampling import sample
    from .. import diffusion
    given = {"jump_n_sample": jump_n_sample, "jump_length": jump_length, "reconstruction_weight": reconstruction_weight}
    for name, default in REPLACEMENT_OPTIONS:
        value = given[name]
        if value != default:
            raise DiffkitError(f"{name}={value!r} is not allowed with an inpainting UNet (9 input channels), which "
                               f"keeps the known region itself (no replacement to resample or guide); allowed: "
                               f"{default}")
    name, grid, denoiser = _planned(denoiser, sampler, steps, spacing, final, thresholding, options, strength)
    keep = (pixel_mask < 0.5).to(images.dtype)
    draw = strength != 1 or getattr(sd, "inpaint_encodes_image", False)
    z = encode_images(sd, images, posterior, generator) if draw else None
    shape = (images.shape[0], sd.vae.config.latent_channels, images.shape[2] // sd.vae_scale_factor,
             images.shape[3] // sd.vae_scale_factor)
    noise = randn(shape, generator, device=sd.device, dtype=torch.float32)
    x = noise if strength == 1 else diffusion.q_sample(denoiser.schedule, z, grid[0], noise)
    masked = encode_images(sd, images * keep, posterior, generator)
    to_latents = getattr(sd, "fill_mask", latent_mask)  # FLUX.1 Fill: f x f pixels per latent cell as channels
    extra = {MASK_KEY: to_latents(pixel_mask, shape[2:]).to(device=sd.device, dtype=torch.float32),
             MASKED_KEY: masked}
    return sample(denoiser, x, name, grid=grid, generator=generator, cond={**(cond or {}), **extra},
                  progress=progress, callback=callback, **options)


def check_inpainting_flags(args) -> None:
    """``diffkit edit --checkpoint INPAINTING_SD_FOLDER``: the flags that do not apply, refused before loading."""
    if args.mask is None:
        raise DiffkitError(f"{args.checkpoint} has an inpainting UNet (latents + mask + masked-image latents in): it "
                           f"only inpaints; give --mask PNG (white = repaint)")
    for name, default in REPLACEMENT_OPTIONS:
        flag, value = "--" + name.replace("_", "-"), getattr(args, name)
        if value is not None and value != default:
            raise DiffkitError(f"{flag} does not apply to an inpainting UNet ({args.checkpoint}: 9 input channels); "
                               f"it goes with an ordinary 4-channel Stable Diffusion folder")


__all__ = ["ChannelConcatNet", "concat_denoiser", "InpaintingUNetNet", "inpainting_denoiser", "is_inpainting_config",
           "is_inpainting_folder",
           "check_inpainting_unet", "check_editing_unet",
           "unet_inpaint", "check_inpainting_flags", "MASK_KEY", "MASKED_KEY"]
