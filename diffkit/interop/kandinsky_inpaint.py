"""Kandinsky 2.2 inpainting (``KandinskyV22InpaintPipeline``, diffusers 0.42.1): a decoder folder whose UNet takes
9 input channels, ``cat([z_t, masked-image latents, keep mask])`` (4 + 4 + 1, in that order; Razzhigaev et al.
2023, Sec. 4, the inpainting decoder), sampled with diffkit's samplers (:mod:`.kandinsky` for the rest).

As the pipeline does (:func:`inpaint`):

* the pixel mask (1 / white = repaint) is binarised at 0.5 and *inverted*: m_keep = 1 - m (1 keeps), brought to the
  latent size by ``F.interpolate`` (nearest) and eroded by ``prepare_mask`` (:func:`erode_keep`: a latent cell is
  kept only where it and its neighbours at (+-1, 0), (0, +-1) and +-(1, 1) are kept);
* the image's MoVQ latents z = ``movq.encode(x).latents`` (not quantised, not scaled; no draw), the masked-image
  latents z m_keep (masked after encoding, unlike SD's E(x (1 - m)));
* z_T ~ N(0, I) (no strength: the whole grid); each network call (both guidance halves) gets the same extra
  channels (:class:`KandinskyInpaintNet`, a :class:`~.sd_inpaint.ChannelConcatNet`);
* after every step to t_{i+1} the kept region is blended back, z <- m_keep q(z, t_{i+1}, z_T) + (1 - m_keep) z
  (``add_noise`` with the *first* noise z_T), which :class:`~diffkit.editing.InpaintingDenoiser` (``blend``) does
  before the next call; the output m_keep z + (1 - m_keep) z_0.

diffusers blends the *first* image's latents and mask (``image[:1]``, ``mask_image[:1]``) into every row of a batch;
diffkit blends each row's own (the same for one image, which is what the tests compare). Refused in one line: a
``KandinskyV22InpaintPipeline`` folder whose UNet does not take 2C + 1 channels, a 9-channel UNet in a
``KandinskyV22Pipeline`` folder (:func:`check_inpaint_channels`), inpainting with a 4-channel decoder."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import DiffkitError
from .sd_inpaint import MASK_KEY, MASKED_KEY, ChannelConcatNet


def check_inpaint_channels(directory, pipeline: str, unet: dict, inpaint_pipeline: Optional[str] = None) -> None:
    """One line unless the UNet takes 2C + 1 channels (C latent channels; out_channels C, or 2C with a learned
    variance) exactly where the folder is a ``KandinskyV22InpaintPipeline`` (or ``inpaint_pipeline``: Kandinsky
    2.1's ``KandinskyInpaintPipeline``)."""
    from .kandinsky import INPAINT_PIPELINE
    inpaint_pipeline = inpaint_pipeline or INPAINT_PIPELINE
    latent, out = unet.get("in_channels", 4), unet.get("out_channels", 4)
    inpaint = latent % 2 == 1 and out in ((latent - 1) // 2, latent - 1)  # C + C + 1 in, C or 2C (variance) out
    if inpaint != (pipeline == inpaint_pipeline):
        allowed = "2C + 1 (latents, masked-image latents, mask)" if pipeline == inpaint_pipeline else "C"
        raise DiffkitError(f"{directory} is a {pipeline} folder whose UNet has in_channels={latent} "
                           f"(out_channels={out}); allowed: {allowed} for C latent channels")


class KandinskyInpaintNet(ChannelConcatNet):
    """``net(x, t, masked_image_latents=c, inpaint_mask=m, **cond)`` = ``inner(cat([x, c, m], 1), t, **cond)``:
    ``KandinskyV22InpaintPipeline``'s ``torch.cat([latent_model_input, masked_image, mask_image], dim=1)``."""
    KEYS = (MASKED_KEY, MASK_KEY)
    WHAT = "a Kandinsky 2.2 inpainting decoder (latents + masked-image latents + mask in)"
    USE = "it only inpaints; use kandinsky_inpaint.inpaint (diffkit edit --mask)"


def inpaint_denoiser(model):
    """The unguided Denoiser of an inpainting decoder's UNet (learned variance where out_channels = 2C)."""
    from .sd_inpaint import concat_denoiser
    config = model.unet.config
    learned = config.out_channels == config.in_channels - 1  # [eps, v]: 2C of 2C + 1
    return concat_denoiser(KandinskyInpaintNet, model.unet, model.schedule, model.prediction_type,
                           learned_variance=learned)


def erode_keep(keep: torch.Tensor) -> torch.Tensor:
    """``prepare_mask``: a cell of the (B, 1, h, w) 0/1 keep mask stays 1 only where the cells at offsets (0, 0),
    (+-1, 0), (0, +-1), +-(1, 1) are 1 (outside the image counts as kept)."""
    h, w = keep.shape[-2:]
    padded = F.pad(keep, (1, 1, 1, 1), value=1.0)
    out = keep
    for di, dj in ((1, 0), (0, 1), (1, 1), (-1, 0), (0, -1), (-1, -1)):
        out = torch.minimum(out, padded[..., 1 + di:1 + di + h, 1 + dj:1 + dj + w])
    return out


def inpaint(model, images: torch.Tensor, mask: torch.Tensor, image_embeds: torch.Tensor,
            negative_image_embeds: torch.Tensor, *, guidance_scale: Optional[float] = None,
            steps: Optional[int] = None, seed: Optional[int] = 0, generator=None, output_range: str = "0,1",
            return_latents: bool = False, progress: bool = False, prompts=None, negative_prompt=None) -> torch.Tensor:
    """``KandinskyV22InpaintPipeline(image_embeds, image, mask_image, negative_image_embeds, ...)`` (module
    docstring): ``images`` (B, 3, H, W) in [-1, 1] at the output size, ``mask`` (B or 1, 1, H, W), 1 = repaint;
    s diffusers' (default 4), ``steps`` the scheduler's (default 100); row i draws z_T and the steps' noise from
    ``generator[i]`` (default seed + i). ``return_latents``: the final latents; else the MoVQ's images in
    ``output_range``. A Kandinsky 2.1 decoder (a ``KandinskyInpaintPipeline`` folder, :mod:`.kandinsky21`): with
    ``prompts`` / ``negative_prompt`` as its pipeline takes them, and no blend (its loop keeps no region: the UNet's
    mask channels alone keep it)."""
    from ..editing import InpaintingDenoiser
    from ..errors import check_choice
    from ..noise import randn
    from .kandinsky import _generators, _own_grid, check_images, decoder_guidance, folder_loop
    from .stable_diffusion import OUTPUT_RANGES
    check_choice("output_range", output_range, OUTPUT_RANGES)
    if model.pipeline != model.inpaint_pipeline:
        raise DiffkitError(f"a {model.pipeline} decoder does not inpaint (its UNet takes the latents alone); "
                           f"allowed: a {model.inpaint_pipeline} folder (9 input channels)")
    shape = check_images(model, images)
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, shape[0]) \
            or mask.shape[2:] != images.shape[2:]:
        raise DiffkitError(f"mask of shape {tuple(mask.shape)} is not allowed; give (1 or {shape[0]}, 1, "
                           f"{images.shape[2]}, {images.shape[3]})")
    with torch.no_grad():
        z = model.movq.encode(images.to(model.device, model.dtype)).latents.float()
    keep = 1 - (mask.to(model.device, torch.float32) >= 0.5).float()
    keep = erode_keep(F.interpolate(keep, z.shape[-2:], mode="nearest")).expand(shape[0], -1, -1, -1)
    grid = _own_grid(model.scheduler_config, model.default_steps if steps is None else steps)
    text = model.decoder_text(prompts, negative_prompt, shape[0])
    generators = _generators(generator, seed, shape[0])
    z_t = randn(shape, generators, device=model.device, dtype=torch.float32)
    denoiser, cond = decoder_guidance(model, image_embeds, negative_image_embeds, guidance_scale, text=text)
    cond = {**cond, MASKED_KEY: z * keep, MASK_KEY: keep}
    if model.blends_inpaint:
        denoiser = InpaintingDenoiser(denoiser, z, 1 - keep, first_input=z_t, blend=z_t)
    out = folder_loop(model, denoiser, z_t, grid, generators, cond, progress)
    if model.blends_inpaint:
        out = keep * z + (1 - keep) * out
    if return_latents:
        return out
    decoded = model.decode(out)
    return (decoded / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else decoded.clamp(-1, 1)


__all__ = ["KandinskyInpaintNet", "inpaint", "inpaint_denoiser", "erode_keep", "check_inpaint_channels"]
