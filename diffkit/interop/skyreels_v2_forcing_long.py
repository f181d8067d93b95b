"""SkyReels-V2 diffusion forcing's long-video mode (diffusers 0.42.1's ``SkyReelsV2DiffusionForcing*Pipeline`` with
``overlap_history``, ``num_frames`` > ``base_num_frames`` and ``addnoise_condition`` 0): sliding windows of W =
``base_num_frames`` latent frames, each one run of :func:`.skyreels_v2_forcing.text_to_video` whose clean first
latent frames are the last o = 1 + (overlap_history - 1) // 4 latent frames of the video so far (cut to a multiple of
the block size), its noise drawn after the previous window's from video i's generator (seed + i). Window k > 0 has
min(F - k (W - o), W) latent frames (F the video's) and adds its frames past the first o; the first window starts
from the pipeline's own prefix (none, the image, or the input video's overlap). ``addnoise_condition`` (the prefix's
model input noised from torch's global generator each row) is not driven."""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import DiffkitError


def windows(frames: int, base: int, overlap: int) -> list:
    """The latent frames of each window (the pipeline's n_iter = 1 + (F - W - 1) // (W - o) + 1 of them); one line
    unless 0 < o < W."""
    if not 0 < overlap < base:
        raise DiffkitError(f"an overlap of {overlap} latent frames is not allowed with windows of {base}; give "
                           f"overlap_history of fewer frames than base_num_frames")
    count = 1 + (frames - base - 1) // (base - overlap) + 1
    return [base] + [min(frames - k * (base - overlap), base) for k in range(1, count)]


def long_video_latents(model, prompts: list, first_prefix: Optional[torch.Tensor], *, num_frames: int,
                       base_num_frames: int, overlap_history: int, height: int, width: int,
                       causal_block_size: Optional[int] = None, seed: int = 0, **options) -> torch.Tensor:
    """The final latents (B, C, F, h, w) of the long-video loop (module docstring); ``options``: the rest of
    text_to_video's keywords."""
    from ..noise import generators_from_seed, randn
    from .skyreels_v2_forcing import text_to_video
    temporal = model.temporal_factor
    overlap = (overlap_history - 1) // temporal + 1
    block = int(model.transformer.config.num_frame_per_block) if causal_block_size is None else causal_block_size
    sizes = windows((num_frames - 1) // temporal + 1, (base_num_frames - 1) // temporal + 1, overlap)
    generators, so_far = generators_from_seed(seed, len(prompts)), None
    for size in sizes:
        prefix = first_prefix if so_far is None else so_far[:, :, -overlap:]
        if so_far is not None:
            prefix = prefix[:, :, :prefix.shape[2] - prefix.shape[2] % block]
        frames = (size - 1) * temporal + 1
        latents = randn(model.latent_video_shape(len(prompts), frames, height, width), generators, device=model.device)
        z = text_to_video(model, prompts, latents=latents, prefix_latents=prefix, seed=seed, num_frames=frames,
                          height=height, width=width, causal_block_size=causal_block_size, return_latents=True,
                          **options)
        so_far = z if so_far is None else torch.cat([so_far, z[:, :, overlap:]], dim=2)
    return so_far


__all__ = ["long_video_latents", "windows"]
