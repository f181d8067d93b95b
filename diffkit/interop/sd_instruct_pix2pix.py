"""InstructPix2Pix folders: Stable Diffusion / SD-XL UNets with 8 input channels that edit an image by an instruction.

InstructPix2Pix (Brooks, Holynski & Efros 2023, "InstructPix2Pix: Learning to Follow Image Editing Instructions",
Sec. 3.2) fine-tunes a Stable Diffusion UNet to take, besides the noisy latent z_t (4 channels), the latents of the
image to edit c_I (4 channels more: ``in_channels = 2 * out_channels``), and the instruction c_T as its text
condition; it predicts the noise of z_t alone. Sampling starts from pure noise (no strength) and uses classifier-free
guidance over both conditions (Sec. 3.2.1, eq. 3)::

    eps~(z_t, c_I, c_T) = eps(z_t, 0, 0) + s_I (eps(z_t, c_I, 0) - eps(z_t, 0, 0))
                                         + s_T (eps(z_t, c_I, c_T) - eps(z_t, c_I, 0)),

the "0" text condition being the empty (or negative) prompt and the "0" image condition zero latents. This module
does what diffusers' ``StableDiffusionInstructPix2PixPipeline`` and ``StableDiffusionXLInstructPix2PixPipeline`` do
with such a UNet (``num_channels_latents + num_channels_image == in_channels``):

* the image latents are the VAE posterior's mode (``retrieve_latents(vae.encode(image), sample_mode="argmax")``, the
  mean) *unscaled*: no ``scaling_factor`` for SD 1.x nor for SD-XL (a float16 SD-XL VAE with ``force_upcast`` encodes
  in float32); only an SD-XL folder whose ``model_index.json`` says ``is_cosxl_edit: true`` scales them;
* one batched UNet call of 3B per step in the pipelines' order [text + image, null text + image, null text + zero
  image] (:class:`InstructPix2PixGuidance`); SD-XL's pooled text ``text_embeds`` follows the text condition (zeros or
  the negative prompt's in the two null-text thirds, as ``force_zeros_for_empty_prompt`` says) and the same
  ``time_ids`` (original_size + (0, 0) + target_size, the image's size) go to all three; its ``guidance_rescale``
  (Lin et al. 2024) rescales eq. 3's output towards the first third's standard deviation;
* the noise n ~ N(0, I) of the latents' shape from each image's generator (no other draw before it), the
  folder's scheduler's grid (DDIM, Euler, ... as any diffkit sampler), and the image latents concatenated after the
  latents inside the network (:class:`ImageConditionedNet`), so they are never scaled (diffusers concatenates them
  after ``scheduler.scale_model_input``).

Guidance scales: ``s_T`` is the text scale in diffusers' convention (``guidance_scale``, default 7.5 for SD, 5 for
SD-XL) and ``s_I`` ``image_guidance_scale`` (default 1.5). The formula is applied as written for every s; the
pipelines instead skip guidance (one pass with both conditions) unless s_T > 1 and s_I >= 1. Entry point
:func:`instruct_pix2pix`; ``diffkit edit --images IN --prompt TEXT --image-guidance-scale S``.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Optional

import torch

from ..denoiser import Denoiser, Prediction, Wrapper
from ..errors import DiffkitError, check_choice, check_float32, check_range
from .sd_inpaint import ChannelConcatNet, check_editing_unet, concat_denoiser
from ..guidance import RESCALE_SPACES, ClassifierFreeGuidance, _repeated, _times64, guidance_weight

IMAGE_KEY = "image_latents"  # the cond entry ImageConditionedNet reads
PIPELINE_IMAGE_GUIDANCE = 1.5  # the pipelines' default image_guidance_scale s_I


def is_instruct_pix2pix_config(config: dict) -> bool:
    """A UNet config of an InstructPix2Pix model: in_channels = 2 * out_channels (8 for SD: latents 4, image
    latents 4)."""
    in_channels, out_channels = config.get("in_channels", 4), config.get("out_channels", 4)
    return isinstance(out_channels, int) and in_channels == 2 * out_channels


def is_instruct_pix2pix_folder(path) -> bool:
    """True for a diffusers folder whose ``unet/config.json`` is an InstructPix2Pix UNet's (read, not loaded); not for a
    Marigold folder (the same 8 channels: image latents + prediction latents, :mod:`.marigold`)."""
    from .marigold import is_marigold_folder
    if is_marigold_folder(path):
        return False
    try:
        config = json.loads((Path(path) / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and is_instruct_pix2pix_config(config)


def check_instruct_pix2pix_unet(config: dict, directory, allowed: bool, lcm: bool = False) -> bool:
    """True for an InstructPix2Pix UNet config that may be loaded (``allowed``, not an LCMScheduler folder), False
    for any other UNet; a one-line error for one where it is not allowed."""
    if not is_instruct_pix2pix_config(config):
        return False
    what = (f"{directory} has an InstructPix2Pix UNet (in_channels={config.get('in_channels')}: latents + image "
            f"latents)")
    return check_editing_unet(what, "an InstructPix2Pix UNet", allowed, lcm,
                              "it only edits images; use diffkit edit --images PNG --prompt TEXT (library: "
                              "load_stable_diffusion(..., instruct_pix2pix=True) and instruct_pix2pix)")


class ImageConditionedNet(ChannelConcatNet):
    """``net(x, t, image_latents=c, **cond)`` = ``inner(cat([x, c], 1), t, **cond)``: the UNet input of diffusers'
    InstructPix2Pix pipelines (``torch.cat([scaled_latent_model_input, image_latents], dim=1)``;
    :class:`~.sd_inpaint.ChannelConcatNet`)."""
    KEYS = ("image_latents",)
    WHAT = "an InstructPix2Pix UNet (latents + image latents in)"
    USE = "it only edits images; use instruct_pix2pix (diffkit edit --images PNG --prompt TEXT)"


def instruct_pix2pix_denoiser(unet, schedule, prediction_type: str) -> Denoiser:
    """The :class:`~diffkit.denoiser.Denoiser` of an InstructPix2Pix UNet (cond: ``context``, ``image_latents``;
    SD-XL's too; :func:`~.sd_inpaint.concat_denoiser`)."""
    return concat_denoiser(ImageConditionedNet, unet, schedule, prediction_type)


def dual_guidance(text: torch.Tensor, image_only: torch.Tensor, uncond: torch.Tensor, s_text: float,
                  s_image: float) -> torch.Tensor:
    """Brooks et al. 2023, eq. 3: uncond + s_I (image_only - uncond) + s_T (text - image_only), of predictions with
    both conditions (``text``), the image alone (``image_only``) and neither (``uncond``); OmniGen's three-way
    guidance too (:class:`.omnigen.OmniGenGuidance`)."""
    return uncond + s_image * (image_only - uncond) + s_text * (text - image_only)


class InstructPix2PixGuidance(Wrapper):
    """Classifier-free guidance over the image and the text condition (Brooks et al. 2023, eq. 3; module doc):
    eps~ = eps_u + s_I (eps_i - eps_u) + s_T (eps_t - eps_i), x_0 with the same weights (they sum to 1, so the pair
    stays consistent for every sampler). One network call on 3B samples, [cond, null text, null text and zero image
    latents], as the pipelines' ``noise_pred.chunk(3)``; with s_T = s_I = 1 one call on B (the conditional model).

    ``null_context``: the null text's context (1 or B rows); ``null_cond``: other keys whose null-text thirds take
    another value (SD-XL's ``text_embeds``; ``time_ids`` there are the conditional ones, as the pipeline's).
    ``rescale``: phi of guidance rescale (Lin et al. 2024, Sec. 3.4) towards the first third's standard deviation, in
    ``rescale_space`` (``eps``, or ``v`` for a v-prediction UNet), as the SD-XL pipeline's ``guidance_rescale``
    (``rescale_noise_cfg(noise_pred, noise_pred_text)``); the same code as
    :class:`~diffkit.guidance.ClassifierFreeGuidance`'s."""

    def __init__(self, denoiser, text_scale: float, image_scale: float = PIPELINE_IMAGE_GUIDANCE, *,
                 null_context: torch.Tensor, null_cond: Optional[dict] = None, rescale: float = 0.0,
                 rescale_space: str = "eps"):
        check_range("guidance rescale", rescale, 0.0, 1.0)
        self.rescale, self.rescale_space = float(rescale), check_choice("rescale_space", rescale_space, RESCALE_SPACES)
        self.inner = denoiser
        self.text_scale = 1 + guidance_weight(text_scale, "diffusers")  # s_T >= 0, finite
        self.image_scale = float(check_float32("image_guidance_scale",
                                               check_range("image_guidance_scale", image_scale, 0, None)))
        self.null_context, self.null_cond = null_context, dict(null_cond or {})

    def __call__(self, x: torch.Tensor, t, y=None, **cond) -> Prediction:  # y: the CFG halves' marks, unused
        if "context" not in cond or IMAGE_KEY not in cond:
            raise DiffkitError("InstructPix2Pix guidance needs cond={'context': ..., 'image_latents': ...} "
                               "(instruct_pix2pix gives both)")
        if self.text_scale == 1 and self.image_scale == 1:
            return self.inner(x, t, **cond)
        batch = x.shape[0]
        three = _repeated(cond, batch, 3)
        for key, null in (("context", self.null_context), *self.null_cond.items()):
            if key in cond:
                null = null.to(device=x.device, dtype=cond[key].dtype).expand_as(cond[key])
                three[key] = torch.cat([cond[key], null, null])
        image = cond[IMAGE_KEY]
        three[IMAGE_KEY] = torch.cat([image, image, torch.zeros_like(image)])
        t3 = torch.cat([_times64(t, batch)] * 3) if torch.as_tensor(t).ndim else t
        pred = self.inner(torch.cat([x] * 3), t3, **three)
        s_text, s_image = self.text_scale, self.image_scale

        def mixed(out: torch.Tensor) -> torch.Tensor:  # eq. 3 (the pipelines' text, image, uncond thirds)
            text, image_only, uncond = out.chunk(3)
            return dual_guidance(text, image_only, uncond, s_text, s_image)
        eps, x0 = mixed(pred.eps), mixed(pred.x0)
        if self.rescale > 0:  # towards the text + image third (diffusers' noise_pred_text)
            eps, x0 = self._rescaled(x, _times64(t, batch), eps, x0, pred.eps.chunk(3)[0], pred.x0.chunk(3)[0])
        return Prediction(eps=eps, x0=x0)

    _rescaled = ClassifierFreeGuidance._rescaled  # Lin et al. 2024, eq. 15-16: reads schedule, rescale, rescale_space


def instruct_pix2pix_guidance(guided, image_guidance_scale: Optional[float] = None) -> InstructPix2PixGuidance:
    """eq. 3's guidance from the prompts' classifier-free guidance ``guided`` (a
    :class:`~diffkit.guidance.ClassifierFreeGuidance` of :meth:`~.stable_diffusion.StableDiffusion.guided` or SD-XL's
    ``prompt_guidance``: s_T = 1 + w, its null context, null cond and rescale) and s_I = ``image_guidance_scale``
    (default the pipelines' 1.5); its guidance interval and APG are refused."""
    if not isinstance(guided, ClassifierFreeGuidance) or guided.null_context is None or guided.weight_input:
        raise DiffkitError("InstructPix2Pix guidance takes a prompt's classifier-free guidance (StableDiffusion."
                           "guided or prompt_guidance of an InstructPix2Pix folder)")
    for name, value in (("guidance interval", guided.interval),
                        ("adaptive projected guidance", True if guided.apg else None)):
        if value is not None:
            raise DiffkitError(f"{name} is not offered with InstructPix2Pix guidance (eq. 3 of Brooks et al. "
                               f"2023, as diffusers' pipelines); drop it")
    null_cond = {key: value for key, value in guided.null_cond.items() if key != "time_ids"}
    image_scale = PIPELINE_IMAGE_GUIDANCE if image_guidance_scale is None else image_guidance_scale
    return InstructPix2PixGuidance(guided.inner, 1 + guided.w, image_scale,
                                   null_context=guided.null_context, null_cond=null_cond, rescale=guided.rescale,
                                   rescale_space=guided.rescale_space)


def image_latents(sd, images: torch.Tensor) -> torch.Tensor:
    """The image condition c_I: E(x)'s posterior mode, unscaled (both pipelines' ``prepare_image_latents``), times
    ``scaling_factor`` for an ``is_cosxl_edit`` folder; an SD-XL float16 VAE with ``force_upcast`` in float32."""
    from .stable_diffusion import vae_latents
    upcast = getattr(sd, "_upcast_vae", contextlib.nullcontext)
    with upcast():
        z = vae_latents(sd.vae, images, sd.device)
    z = z.to(sd.vae.dtype)
    return (z * sd.scaling_factor if getattr(sd, "is_cosxl_edit", False) else z).float()


def instruct_pix2pix(denoiser, sd, images: torch.Tensor, sampler: str = "ddim", steps: int = 50, *,
                     seed: Optional[int] = None, generator=None, cond: Optional[dict] = None,
                     return_latents: bool = False, spacing=None, final=None, thresholding=None, progress: bool = True,
                     callback=None, **options) -> torch.Tensor:
    """Images ``images`` (B, C, H, W) in [-1, 1] edited by an InstructPix2Pix folder ``sd`` (loaded with
    ``instruct_pix2pix=True``): ``denoiser`` is :class:`InstructPix2PixGuidance` (or the plain network) on its
    latents, ``cond`` the prompts' (``context``; SD-XL's ``text_embeds``, ``time_ids``). From pure noise (each image's
    generator ``seed + i``, or ``generator``) over the sampler's grid, the image latents in every call; decoded
    (unclamped) or, with ``return_latents``, the final latents. With DDIM on the scheduler's grid this is diffusers'
    InstructPix2Pix pipelines step for step (module doc)."""
    from ..editing import DATA_RANGE, _generators, _planned, check_images
    from ..latent_editing import check_pixels
    from ..noise import randn
    from ..sampling import sample
    if not getattr(sd, "instruct_pix2pix_unet", False):
        raise DiffkitError("instruct_pix2pix needs an InstructPix2Pix folder (a UNet with in_channels = 2 * "
                           "out_channels, loaded with instruct_pix2pix=True)")
    images = check_images(images, "images", DATA_RANGE, skippable=False)
    check_pixels(denoiser, sd, images)
    generator = _generators(seed, generator, images.shape[0])
    name, grid, denoiser = _planned(denoiser, sampler, steps, spacing, final, thresholding, options, 1.0)
    latents = image_latents(sd, images)
    noise = randn(latents.shape, generator, device=sd.device, dtype=torch.float32)
    z = sample(denoiser, noise, name, grid=grid, generator=generator, cond={**(cond or {}), IMAGE_KEY: latents},
               progress=progress, callback=callback, **options)
    return z if return_latents else sd.decode(z)


__all__ = ["ImageConditionedNet", "InstructPix2PixGuidance", "instruct_pix2pix", "instruct_pix2pix_denoiser",
           "instruct_pix2pix_guidance", "image_latents", "is_instruct_pix2pix_config", "is_instruct_pix2pix_folder",
           "check_instruct_pix2pix_unet", "IMAGE_KEY", "PIPELINE_IMAGE_GUIDANCE"]
