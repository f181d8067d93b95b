"""MultiDiffusion panoramas on a Stable Diffusion folder, as diffusers 0.42.1's ``StableDiffusionPanoramaPipeline``
(Bar-Tal et al. 2023, eq. 3-5; the windows' average is :class:`diffkit.multidiffusion.MultiDiffusion`).

``text_to_image(panorama=True, height=512, width=2048)`` (the pipeline's default size): the folder's guided denoiser
(classifier-free guidance and guidance rescale per window, as the pipeline applies them to each window's
prediction) under :class:`~diffkit.multidiffusion.MultiDiffusion` over :func:`~diffkit.multidiffusion.panorama_views`
of the latent: windows of ``view_window`` = 64 latent pixels at ``view_stride`` = 8 (``get_views``' defaults, which
the pipeline does not expose), ``view_batch_size`` of them per UNet call, and ``circular_padding``: windows that wrap
around horizontally, and the decoder run on the latent padded by 8 columns of the other side on each side, the
padding's pixels cut off after (``decode_latents_with_padding``).

Where diffkit differs from the pipeline on purpose: ``get_views`` divides the image size by 8 whatever the VAE's
factor (every Stable Diffusion VAE's is 8), diffkit works on the latent itself; the pipeline pairs the latents with
the wrong prompt halves for more than one image per call (its ``repeat_interleave(2)`` against ``cat([negative,
prompt])``), diffkit gives each image its own prompts; with ``circular_padding`` and more than one row of windows the
pipeline's write-back slices the window by the panorama's rows and fails, diffkit writes each window back whole; a
size the windows do not cover (diffusers zeroes those latent pixels at every step) is refused. Stochastic samplers
(eta > 0, ddpm, SDE samplers: the pipeline averages one noise draw per window) and LCM / TCD sampling are refused in
one line, as are the combinations no panorama pipeline offers (ControlNet, T2I-Adapter, PAG, SAG, APG).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import DiffkitError

PANORAMA_SIZE = (512, 2048)  # StableDiffusionPanoramaPipeline's default height, width
CIRCULAR_DECODE_PADDING = 8  # decode_latents_with_padding's padding (latent columns)


def panorama_request(sd, panorama: bool, view_batch_size: Optional[int] = None, circular_padding: bool = False,
                     view_window: Optional[int] = None, view_stride: Optional[int] = None, *, sampler=None,
                     options: Optional[dict] = None, refused: Optional[dict] = None):
    """None without ``panorama`` (the options without it refused), else a function of (guided denoiser, latent
    height, latent width) giving the MultiDiffusion denoiser; checked before any work. ``refused``: name -> value of
    the options that do not combine with it (the first given one is named)."""
    given = [(n, v) for n, v in (("view_batch_size", view_batch_size), ("circular_padding", circular_padding or None),
                                 ("view_window", view_window), ("view_stride", view_stride)) if v is not None]
    if not panorama:
        if given:
            raise DiffkitError(f"{given[0][0]}={given[0][1]!r} needs panorama (MultiDiffusion)")
        return None
    from ..multidiffusion import DEFAULT_STRIDE, DEFAULT_WINDOW, panorama_views
    window = DEFAULT_WINDOW if view_window is None else view_window
    stride = DEFAULT_STRIDE if view_stride is None else view_stride
    panorama_views(window, window, window, stride)  # the window and stride's form
    batch = 1 if view_batch_size is None else view_batch_size
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise DiffkitError(f"view_batch_size={batch!r} is not allowed; give a positive integer")
    if sd.consistency is not None or sd.scheduler_override or sd.guidance_embedding_dim:
        raise DiffkitError("MultiDiffusion panoramas are not supported with LCMScheduler / TCD sampling or an LCM "
                           "UNet with a guidance input; allowed: the folder's own scheduler and classifier-free "
                           "guidance")
    from .sd_xl import StableDiffusionXL
    if isinstance(sd, StableDiffusionXL):
        raise DiffkitError("MultiDiffusion panoramas are offered for Stable Diffusion 1.x / 2.x folders (diffusers' "
                           "StableDiffusionPanoramaPipeline); this is an SD-XL folder")
    for name, value in (refused or {}).items():
        if value is not None and value is not False and value != 0:
            raise DiffkitError(f"{name} does not go with panorama (diffusers' StableDiffusionPanoramaPipeline has "
                               f"none); drop one of them")
    if sampler is not None:
        from ..samplers.registry import get_sampler
        from ..sampling import split_sampler_spec
        info = get_sampler(split_sampler_spec(sampler)[0])
        eta = (options or {}).get("eta") or 0
        if info.stochastic or eta:
            raise DiffkitError(f"panorama averages the windows' predictions, which is the pipeline's average of its "
                               f"windows' steps for deterministic samplers only; sampler {info.name!r}"
                               f"{f' with eta={eta}' if eta else ''} draws noise: allowed: a deterministic sampler "
                               f"(ddim with eta 0, dpm-solver++-2m, unipc, pndm, ...)")

    def multidiffusion(denoiser, height: int, width: int):
        from ..multidiffusion import MultiDiffusion
        return MultiDiffusion(denoiser, panorama_views(height, width, window, stride, circular_padding), batch,
                              circular_padding)
    multidiffusion.circular = bool(circular_padding)
    return multidiffusion


def decode_circular(sd, latents: torch.Tensor, padding: int = CIRCULAR_DECODE_PADDING) -> torch.Tensor:
    """The decoder on the latent padded on each side by ``padding`` columns of the other side, the padding's
    pixels cut off after (``decode_latents_with_padding``): the seam decoded as the inside."""
    padded = torch.cat([latents[..., -padding:], latents, latents[..., :padding]], dim=-1)
    cut = sd.vae_scale_factor * padding
    return sd.decode(padded)[..., cut:-cut]


__all__ = ["panorama_request", "decode_circular", "PANORAMA_SIZE"]
