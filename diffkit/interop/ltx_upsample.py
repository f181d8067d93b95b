"""LTX-Video's latent spatial upsampler (``LTXLatentUpsamplerModel`` of an ``LTXLatentUpsamplePipeline`` folder,
LTX-Video 0.9.7 on, diffusers 0.42.1) on the latents of :mod:`.ltx` / :mod:`.ltx_condition`: as
``LTXLatentUpsamplePipeline.__call__(latents=...)``, the latents (normalised, as the pipelines return them with
``output_type="latent"``) are denormalised z std / scaling_factor + mean, upsampled by the model (2x in height and
width), optionally matched per video and channel to the input's mean and standard deviation (AdaIN, Huang & Belongie
2017, eq. 8, blended lerp(u, AdaIN(u), factor): ``adain_factor``) and tone-mapped u (1 - 0.8 c' sigmoid(4 c' (|u| -
1))), c' = 0.75 ``tone_map_compression_ratio``, then normalised back; :meth:`.ltx.LTX.decode` decodes them."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DiffkitError, check_range

UPSAMPLER_CLASS = "LTXLatentUpsamplerModel"


def upsampler_folder(directory) -> Path:
    """The model folder of ``directory``: itself where its ``config.json`` names ``LTXLatentUpsamplerModel``, else its
    ``latent_upsampler/`` (an ``LTXLatentUpsamplePipeline`` folder); one line otherwise (nothing else is read)."""
    from ..errors import read_json_object
    directory = Path(directory)
    for folder in (directory, directory / "latent_upsampler"):
        if (folder / "config.json").is_file():
            config = read_json_object(folder / "config.json", "latent upsampler config")
            if config.get("_class_name") == UPSAMPLER_CLASS:
                return folder
    raise DiffkitError(f"{directory} is not an LTX-Video latent upsampler (a config.json naming {UPSAMPLER_CLASS}, "
                       f"there or in latent_upsampler/)")


def load_latent_upsampler(directory, device="cpu", dtype: torch.dtype = torch.float32):
    """The ``LTXLatentUpsamplerModel`` of :func:`upsampler_folder` (safetensors only, never downloads), frozen."""
    from . import require
    require("diffusers")
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel
    folder = upsampler_folder(directory)
    model = LTXLatentUpsamplerModel.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                                    torch_dtype=dtype)
    return model.to(device).eval().requires_grad_(False)


def adain(latents: torch.Tensor, reference: torch.Tensor, factor: float) -> torch.Tensor:
    """lerp(u, AdaIN(u), factor): each video's channel of ``latents`` moved to ``reference``'s mean and (unbiased)
    standard deviation (``adain_filter_latent``)."""
    dims = tuple(range(2, latents.ndim))
    std, mean = torch.std_mean(latents, dim=dims, keepdim=True)
    ref_std, ref_mean = torch.std_mean(reference, dim=dims, keepdim=True)
    return torch.lerp(latents, (latents - mean) / std * ref_std + ref_mean, factor)


def tone_map(latents: torch.Tensor, compression: float) -> torch.Tensor:
    """u (1 - 0.8 c' sigmoid(4 c' (|u| - 1))), c' = 0.75 ``compression`` (``tone_map_latents``)."""
    c = compression * 0.75
    return latents * (1.0 - 0.8 * c * torch.sigmoid(4.0 * c * (latents.abs() - 1.0)))


def upsample_latents(model, upsampler, latents: torch.Tensor, adain_factor: float = 0.0,
                     tone_map_compression_ratio: float = 0.0) -> torch.Tensor:
    """``LTXLatentUpsamplePipeline(latents=..., output_type="latent")`` of normalised latents (B, C, F, h, w) with
    ``model``'s VAE (an :class:`.ltx.LTX`) and ``upsampler`` (:func:`load_latent_upsampler`): (B, C, F, 2h, 2w)
    normalised (module docstring)."""
    check_range("adain_factor", adain_factor, 0.0, None)
    check_range("tone_map_compression_ratio", tone_map_compression_ratio, 0.0, 1.0)
    if latents.ndim != 5 or latents.shape[1] != upsampler.config.in_channels:
        raise DiffkitError(f"latents of shape {tuple(latents.shape)} are not allowed; give (B, "
                           f"{upsampler.config.in_channels}, F, h, w) (the upsampler's in_channels)")
    z = latents.to(model.device, torch.float32)
    mean, std = (model.vae.get_buffer(k).view(1, -1, 1, 1, 1).to(z) for k in ("latents_mean", "latents_std"))
    scale = float(model.vae.config.scaling_factor)
    z = z * std / scale + mean
    with torch.no_grad():
        up = upsampler(z.to(upsampler.dtype)).float()
    if adain_factor > 0:
        up = adain(up, z, adain_factor)
    if tone_map_compression_ratio > 0:
        up = tone_map(up, tone_map_compression_ratio)
    return (up - mean) * scale / std


__all__ = ["load_latent_upsampler", "upsampler_folder", "upsample_latents", "adain", "tone_map"]
