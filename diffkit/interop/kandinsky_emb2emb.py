"""Kandinsky 2.2's prior from an image (``KandinskyV22PriorEmb2EmbPipeline``, diffusers 0.42.1): the prompt's CLIP
image embedding drawn by the prior folder (:mod:`.kandinsky`) starting from an input image's embedding noised to a
strength instead of from pure noise -- SDEdit (Meng et al. 2022) in the prior's embedding space (unCLIP's image
variations, Ramesh et al. 2022, Sec. 3, guided by the prompt).

As the pipeline does (:func:`prior_emb2emb`):

* the images' embeddings e = the prior folder's ``CLIPVisionModelWithProjection`` ``image_embeds`` of ``images``
  (pixel values as its ``CLIPImageProcessor`` makes them, (N, 3, S, S)), or given as ``image_embeds`` (N, d);
  tiled (``cat([e] * k)``, not interleaved) to the batch's rows (the prompts, then the negative prompts' where
  given: k = rows / N, N dividing rows);
* the scheduler's grid after ``set_timesteps(steps)`` keeps its last int(steps strength) timesteps (``get_timesteps``;
  strength default 0.3, steps default 25), and x_t = sqrt(abar_t) e + sqrt(1 - abar_t) eps at the first kept t
  (``add_noise``; eps from row i's generator, which then draws the steps' noise). The pipeline noises the embedding
  *as it is*, not normalised by the prior's ``clip_mean`` / ``clip_std`` as the prior's x_0 is (its output is
  un-normalised by ``post_process_latents``); diffkit does the same;
* then the rest of :func:`~.kandinsky.prior_embeddings`' loop (classifier-free guidance, the UnCLIPScheduler's
  step, the last step's factor, ``post_process_latents``; the negative embedding the zero image's, or the negative
  prompt's rows)."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError

EMB2EMB_PIPELINE = "KandinskyV22PriorEmb2EmbPipeline"
EMB2EMB_STRENGTH = 0.3  # KandinskyV22PriorEmb2EmbPipeline.__call__'s default strength


def image_embeddings(model, images: Optional[torch.Tensor] = None,
                     image_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(N, d): ``image_embeds`` as given, else the prior folder's image encoder's ``image_embeds`` of ``images``
    (N, 3, S, S) pixel values (``_encode_image``); one line for neither / both or another shape."""
    width, size = int(model.prior.config.embedding_dim), int(model.image_encoder.config.image_size)
    if (images is None) == (image_embeds is None):
        raise DiffkitError("give images (CLIP pixel values) or image_embeds, one of the two")
    if image_embeds is not None:
        if image_embeds.ndim != 2 or image_embeds.shape[1] != width:
            raise DiffkitError(f"image_embeds of shape {tuple(image_embeds.shape)} are not allowed; give (N, {width})")
        return image_embeds.to(model.device, torch.float32)
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
        raise DiffkitError(f"images of shape {tuple(images.shape)} are not allowed; give (N, 3, {size}, {size}): the "
                           f"prior folder's CLIPImageProcessor's pixel values")
    with torch.no_grad():
        out = model.image_encoder(images.to(model.device, model.image_encoder.dtype))["image_embeds"]
    return out.float()


def prior_pixels(directory, image, subfolder: str = "image_processor", flag: str = "--prior") -> torch.Tensor:
    """(1, 3, S, S): the CLIP pixel values of ``image`` (a path or PIL image) by the prior folder's own
    ``image_processor`` (``CLIPImageProcessor``), as the pipeline's ``_encode_image`` makes them from a PIL image
    (``subfolder``, ``flag``: another folder's processor, e.g. a Stable Cascade prior's ``feature_extractor``)."""
    from pathlib import Path

    from . import from_pretrained, require
    from .controlnet import open_control_image
    image = open_control_image(image, "--prior-image") if isinstance(image, (str, Path)) else image
    processor = from_pretrained(require("transformers").CLIPImageProcessor, Path(directory) / subfolder,
                                flag, local_files_only=True)
    return processor(image, return_tensors="pt").pixel_values.float()


def prior_emb2emb(model, prompts: Union[str, Sequence[str]], images: Optional[torch.Tensor] = None, *,
                  image_embeds: Optional[torch.Tensor] = None, strength: float = EMB2EMB_STRENGTH,
                  negative_prompt: Union[None, str, Sequence[str]] = None, guidance_scale: Optional[float] = None,
                  steps: Optional[int] = None, seed: Optional[int] = 0, generator=None,
                  progress: bool = False) -> tuple:
    """(image_embeds, negative_image_embeds) as ``KandinskyV22PriorEmb2EmbPipeline(prompts, image, strength,
    negative_prompt, guidance_scale=s, num_inference_steps=steps)`` (module docstring): ``images`` CLIP pixel values
    or ``image_embeds``, N of them dividing the rows; row i from ``generator[i]`` (default seed + i, the negative
    rows again from seed + i): its forward noise, then the steps' noise."""
    from ..diffusion import q_sample
    from ..noise import randn
    from .kandinsky import prior_embeddings
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise DiffkitError(f"strength={strength!r} is not allowed; give a number in (0, 1]")
    embeds = image_embeddings(model, images, image_embeds)

    def start(grid, generators, shape):
        total = len(grid) - 1  # the scheduler's steps (the grid ends at -1: clean data)
        kept = min(int(total * strength), total)
        if kept < 1:
            raise DiffkitError(f"strength={strength!r} with steps={total} keeps no timestep; give a larger strength "
                               f"or more steps")
        if shape[0] % embeds.shape[0]:
            raise DiffkitError(f"{embeds.shape[0]} images for {shape[0]} rows (prompts, and negative prompts where "
                               f"given) are not allowed; give a number that divides {shape[0]}")
        x0 = torch.cat([embeds] * (shape[0] // embeds.shape[0]))
        grid = grid[total - kept:]
        t = torch.full((shape[0],), float(grid[0]), dtype=torch.float64)
        return q_sample(model.schedule, x0, t, randn(shape, generators, device=model.device,
                                                     dtype=torch.float32)), grid

    return prior_embeddings(model, prompts, negative_prompt=negative_prompt, guidance_scale=guidance_scale,
                            steps=steps, seed=seed, generator=generator, progress=progress, start=start)


__all__ = ["EMB2EMB_PIPELINE", "EMB2EMB_STRENGTH", "image_embeddings", "prior_emb2emb", "prior_pixels"]
