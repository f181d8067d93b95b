"""What the rectified-flow transformer folders (SD3 :mod:`.sd3`, FLUX.1 :mod:`.flux`) share: the 16-channel
``AutoencoderKL`` with ``scaling_factor`` and ``shift_factor``, and the placing of a
``FlowMatchEulerDiscreteScheduler``'s sigmas on diffkit's VP time grid (Esser et al. 2024, Sec. 2: x_s = (1 - s) x_0 + s eps has log-SNR 2 log((1 - s)/s))."""
from __future__ import annotations

import math

import torch

from ..errors import DiffkitError


class FlowLatentVAE:
    """Mixin of a folder dataclass with ``vae`` and ``device``: its VAE's shapes and the pipelines' decoding."""

    @property
    def vae_scale_factor(self) -> int:
        """The VAE's spatial factor f = 2^(levels - 1) (8 for SD3 and FLUX.1)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        return float(self.vae.config.shift_factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """x = D(z / scaling_factor + shift_factor), in [-1, 1] (not clamped), as the pipelines decode."""
        with torch.no_grad():
            z = latents.to(device=self.device, dtype=self.vae.dtype) / self.scaling_factor + self.shift_factor
            return self.vae.decode(z, return_dict=False)[0].float()


def flow_sigmas_grid(schedule, sigmas: torch.Tensor, steps: int) -> torch.Tensor:
    """diffkit's grid of a FlowMatchEuler scheduler's ``sigmas`` (after ``set_timesteps``, the final 0
    included): each sigma s at the VP time of ``schedule`` with equal SNR, log-SNR 2 log((1 - s)/s) (s = 1:
    T - 1, s = 0: -1, clean data); a flow-prediction Denoiser then calls its network at s * T, the
    pipeline's timestep. Sigmas that do not fall strictly: a one-line DiffkitError."""
    sigmas = sigmas.to(torch.float64).tolist()
    T = schedule.num_timesteps
    times = [T - 1.0 if s >= 1 else -1.0 if s <= 0 else float(schedule.t_from_log_snr(
        torch.tensor(math.log((1 - s) / s), dtype=torch.float64))) for s in sigmas]
    grid = torch.tensor(times, dtype=torch.float64)
    if not bool((grid[1:] < grid[:-1]).all()):
        raise DiffkitError(f"the scheduler's sigmas for steps={steps} are not strictly decreasing on this "
                           f"schedule ({[round(s, 4) for s in sigmas[:6]]}...); use fewer steps")
    return grid
