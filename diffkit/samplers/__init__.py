"""Samplers: plain functions over a Denoiser and a time grid, one family per module."""
from .ddim import ddim, ddim_invert
from .ddpm import ddpm
from .registry import REGISTRY, SamplerInfo, get_sampler, register

__all__ = ["ddim", "ddim_invert", "ddpm", "REGISTRY", "SamplerInfo", "get_sampler", "register"]
