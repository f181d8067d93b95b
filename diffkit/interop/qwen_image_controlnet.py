"""Qwen-Image ControlNets (``QwenImageControlNetModel``, e.g. InstantX's Qwen-Image ControlNet-Union) on a Qwen-Image
folder (:mod:`.qwen_image`), as diffusers 0.42.1's ``QwenImageControlNetPipeline``, sampled with any diffkit sampler.

A Qwen-Image ControlNet (ControlNet, Zhang et al. 2023, eq. 1-2, on the MMDiT) copies the first N blocks of the
transformer; it reads the packed noisy latents, plus, through a zero-initialised linear layer
(``controlnet_x_embedder``), the control image's packed VAE latents, the prompt's states and mask, the time t / 1000
and ``img_shapes``; each block's image stream gives, through a zero-initialised linear layer, a residual (times
``controlnet_conditioning_scale``) that ``QwenImageTransformer2DModel`` adds after its block i as residual
i // (blocks / N) (``controlnet_block_samples``). :class:`QwenImageControlledNet` does this at every network call:

* the control image is resized to the output size (Lanczos) and mapped to [-1, 1] (the pipeline's
  ``prepare_image``, :func:`.flow_controlnet.control_pixels`), encoded as one frame by the folder's VAE and
  normalised as the latents, c = (E(x) - mean) / std (:meth:`.qwen_image.QwenImage.posterior`), E(x) a draw of the
  posterior (``retrieve_latents(vae.encode(x), generator)``): sample i's from ``torch.Generator().manual_seed(seed +
  i)``, control image after control image (the pipeline's draw with ``generator=[one per prompt]``; its noise
  comes from that generator after the draw, so give ``latents=`` to match it), or its mean (``posterior="mean"``);
  then packed into 2 x 2 patches.
* true CFG (a negative prompt): the ControlNet runs once per call, on the prompt's states, and the negative pass
  takes the same residuals (the pipeline's).
* several control images: ``QwenImageMultiControlNetModel`` takes **one** ControlNet (a union: the InstantX model
  has no control-mode input, the image tells the kind) and runs it on each image with its own scale and window,
  summing the residuals in order; here ``ControlNets([cn] * K, [image_1, ..., image_K], scales, start, end)``.
* ``control_guidance_start`` / ``_end`` (:func:`.controlnet.step_windows`, the pipeline's ``controlnet_keep``); a
  ControlNet off at a step (or of scale 0) adds nothing (the pipeline adds 0 times its residuals).

An inpainting ControlNet (``extra_condition_channels`` = p^2 = 4: one more latent channel, packed; e.g. InstantX's
Qwen-Image-ControlNet-Inpainting) takes a mask with its one control image (``control_mask``, 1 = repaint), as
``QwenImageControlNetInpaintPipeline`` (``prepare_image_with_mask``, SD3's: :func:`.sd3_controlnet.inpainting_control`):
the control image's pixels where the binarised mask is 1 set to -1, encoded and normalised as above, the kept region
1 - m nearest-resized to the latents appended as a channel, packed; the image is sampled from noise (no strength, no
replacement: the ControlNet does the inpainting). That pipeline draws the masked image's posterior from the global
generator (``latent_dist.sample()``, no generator): sample i's here from ``seed + i``, which is its draw after
``torch.manual_seed(seed)`` for one prompt.

Refused in one line (:func:`check_qwen_controlnets`): another class, an inpainting ControlNet without a mask or a
plain one with a mask, an inpainting ControlNet on several images (its pipeline takes one), several distinct
ControlNets (the multi model raises), a ControlNet that does not fit the transformer, control modes and guess mode
(the pipeline has neither), and (:func:`check_qwen_control_use`) Qwen-Image-Edit folders (no diffusers pipeline
has them with a ControlNet).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import DiffkitError
from .controlnet import ControlNets, model_folder_config
from .flow_controlnet import acting, added, control_latents, control_windows, kept_rows
from .qwen_image import QwenImageNet

QWEN_CONTROLNET = "QwenImageControlNetModel"
PIPELINE = "QwenImageControlNetPipeline"


def check_qwen_controlnet_folder(directory, mask: bool = False) -> dict:
    """The ``config.json`` of a diffusers ``QwenImageControlNetModel`` folder, an inpainting one where ``mask`` (one
    line otherwise, from the JSON alone)."""
    config = model_folder_config(directory, "--controlnet", QWEN_CONTROLNET,
                                 " (a Qwen-Image folder takes Qwen-Image ControlNets)")
    _check_inpainting(config, f"--controlnet {directory}", mask)
    return config


def _check_inpainting(config, name: str, mask: bool) -> None:
    extra, wanted = config.get("extra_condition_channels") or 0, int(config.get("patch_size", 2)) ** 2 if mask else 0
    if extra != wanted:
        raise DiffkitError(
            f"{name} has extra_condition_channels={extra}; allowed: {wanted} "
            + ("with a mask (an inpainting ControlNet, QwenImageControlNetInpaintPipeline's)" if mask else
               "without a mask (an inpainting ControlNet goes with diffkit edit --mask, control_mask=)"))


def check_qwen_control_use(kind: Optional[str] = None) -> None:
    """One line for a ControlNet on a folder ``kind`` other than Qwen-Image's (e.g. ``"Qwen-Image-Edit"``): diffusers
    0.42.1 has only QwenImageControlNetPipeline and QwenImageControlNetInpaintPipeline (no img2img either: an
    inpainting ControlNet samples from noise)."""
    if kind not in (None, "Qwen-Image"):
        raise DiffkitError(f"a ControlNet in a {kind} folder is not supported: diffkit drives Qwen-Image ControlNets "
                           f"as {PIPELINE} / QwenImageControlNetInpaintPipeline (on a QwenImagePipeline folder)")


def check_qwen_controlnets(controlnets: ControlNets, transformer, mask: bool = False) -> None:
    """One ``QwenImageControlNetModel`` (given once per control image; with a ``mask`` an inpainting one on one
    image), no control modes or guess mode, fitting ``transformer`` (its packed channels, patch size, width, text
    width, RoPE axes); one line naming what does not."""
    if controlnets.guess_mode or controlnets.modes is not None:
        raise DiffkitError(f"{'guess mode' if controlnets.guess_mode else 'a control mode'} does not apply to a "
                           f"Qwen-Image ControlNet ({PIPELINE} has none; a union ControlNet reads the image's kind)")
    models = controlnets.models
    if any(model is not models[0] for model in models):
        raise DiffkitError(f"{len({id(m) for m in models})} different Qwen-Image ControlNets; "
                           f"QwenImageMultiControlNetModel takes one (a union) with several control images: give "
                           f"one --controlnet and a --control-image each")
    model, config = models[0], transformer.config
    if type(model).__name__ != QWEN_CONTROLNET:
        raise DiffkitError(f"--controlnet is a {type(model).__name__}; allowed: a {QWEN_CONTROLNET} for a Qwen-Image "
                           f"folder")
    _check_inpainting(model.config, "--controlnet", mask)
    if mask and len(models) > 1:
        raise DiffkitError(f"{len(models)} control images with a mask; QwenImageControlNetInpaintPipeline takes one "
                           f"control image (the image to inpaint)")
    theirs = model.config
    width, wanted = (int(c.num_attention_heads) * int(c.attention_head_dim) for c in (theirs, config))
    for key, ours, value in [(key, theirs.get(key), config.get(key)) for key in (
            "in_channels", "patch_size", "joint_attention_dim")] + [
            ("num_attention_heads * attention_head_dim", width, wanted),
            ("axes_dims_rope", list(theirs.axes_dims_rope), list(config.axes_dims_rope))]:
        if ours != value:
            raise DiffkitError(f"--controlnet has {key}={ours!r} but this Qwen-Image folder's transformer {value!r}; "
                               f"a ControlNet fits only the transformer it was made for")


class QwenImageControlledNet(QwenImageNet):
    """A :class:`.qwen_image.QwenImageNet` (its true CFG ``scale``) with the summed, scaled block residuals of a
    ControlNet on each control image (module docstring); ``control``: (B, K, C, h, w) unpacked control latents per
    row; ``net_grid`` / ``keeps``: the windows (:func:`.flow_controlnet.control_windows`; None: every step)."""

    def __init__(self, transformer, scale: float, controlnets, scales, net_grid=None, keeps=None):
        super().__init__(transformer, scale)
        self.controlnets = torch.nn.ModuleList(controlnets)
        self.scales, self.net_grid, self.keeps = [float(s) for s in scales], net_grid, keeps

    def residuals(self, packed, timestep, context, mask, shapes, t, control) -> Optional[list]:
        from .flux import pack_latents
        context, mask = self.text(packed, context, mask)
        blocks = None
        for index, scale, kept in acting(self.scales, self.keeps, self.net_grid, t):
            out = self.controlnets[index](
                hidden_states=packed, controlnet_cond=pack_latents(control[:, index].to(packed)),
                conditioning_scale=scale, timestep=timestep, encoder_hidden_states=context,
                encoder_hidden_states_mask=mask, img_shapes=shapes, return_dict=False)
            blocks = added(blocks, kept_rows(out, kept))
        return blocks


def controlled(qwen, controlnets: ControlNets, denoiser, cond: dict, sampler: str, steps, nfe, grid, options: dict,
               shape: tuple, seed: int = 0, posterior: str = "sample", control_rows=None, mask=None) -> tuple:
    """(denoiser, cond) of a Qwen-Image folder's prompt guidance (``denoiser``, ``cond``: its
    :meth:`.qwen_image.QwenImage.prompt_guidance`) with ``controlnets`` (checked), ``cond["control"]`` each row's
    control latents at latents ``shape`` (B, C, h, w) (module docstring); ``sampler`` / ``steps`` / ``nfe`` / ``grid``
    / ``options``: the loop's, for the windows; ``seed``: sample i's control posterior from ``seed + i``;
    ``control_rows``: with one control image per prompt, each sample's (default sample i, image i); ``mask`` (1 or B,
    1, H, W) at the output size, 1 = repaint: an inpainting ControlNet's (module docstring)."""
    from ..denoiser import Denoiser
    check_qwen_controlnets(controlnets, qwen.transformer, mask is not None)
    h, w = shape[2:]
    net_grid, keeps = control_windows(controlnets, qwen.denoiser_for(h, w), sampler, steps, nfe, grid, options)
    net = QwenImageControlledNet(qwen.transformer, getattr(denoiser.net, "scale", 1.0), controlnets.models,
                                 controlnets.scales, net_grid, keeps)
    wrapped = Denoiser(net, denoiser.schedule, "flow_prediction")
    wrapped.model = qwen.transformer
    f = qwen.vae_scale_factor
    mean, std = qwen._stats(torch.zeros((), device=qwen.device))
    normalised = {"shift": mean, "scale": 1 / std, "moments": qwen.posterior}
    if mask is not None:  # QwenImageControlNetInpaintPipeline's prepare_image_with_mask (SD3's)
        from .sd3_controlnet import inpainting_control
        return wrapped, dict(cond, control=inpainting_control(qwen, controlnets, mask, shape, seed, posterior,
                                                              control_rows, **normalised))
    return wrapped, dict(cond, control=control_latents(qwen, controlnets, h * f, w * f, shape[0], 1, seed, posterior,
                                                       control_rows=control_rows, **normalised)[0])


__all__ = ["QWEN_CONTROLNET", "QwenImageControlledNet", "check_qwen_controlnet_folder", "check_qwen_controlnets",
           "check_qwen_control_use", "controlled"]
