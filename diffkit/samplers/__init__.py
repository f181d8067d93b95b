"""Samplers: plain functions over a Denoiser and a time grid, one family per module."""
from .consistency import consistency
from .ddim import ddim, ddim_invert
from .ddpm import ddpm
from .deis import deis
from .dpm_adaptive import dpm_adaptive
from .dpm_solver import dpm_solver_multistep, dpm_solver_singlestep
from .karras import dpm2, dpm2_ancestral, dpmpp_2s_ancestral, dpmpp_sde, euler, euler_ancestral, heun, ipndm, lms
from .ode import ode
from .pc import pc
from .pndm import fon, plms, pndm, s_pndm, transfer
from .restart import restart
from .sa_solver import sa_solver
from .tcd import tcd
from .registry import REGISTRY, SamplerInfo, get_sampler, register
from .unipc import unipc

__all__ = ["consistency", "ddim", "ddim_invert", "ddpm", "deis", "dpm_adaptive", "dpm_solver_multistep",
           "dpm_solver_singlestep", "dpm2", "dpm2_ancestral",
           "dpmpp_2s_ancestral", "dpmpp_sde", "euler", "euler_ancestral", "heun", "ipndm", "lms", "ode",
           "fon", "plms", "pndm", "pc", "restart", "sa_solver",
           "s_pndm", "tcd", "transfer", "unipc", "REGISTRY", "SamplerInfo", "get_sampler", "register"]
