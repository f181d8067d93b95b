"""Which timesteps a training batch uses: uniform (DDPM Alg. 1) or loss-aware importance sampling
(Improved DDPM Sec. 3.3, eq. 18: p_t proportional to sqrt(E[L_t^2]), from the last 10 losses); for
flow matching, continuous flow times s in [0, 1), uniform or logit-normal (SD3, Esser et al. 2024,
eq. 19), then shifted (SD3 eq. 23): :class:`FlowTimes`; for EDM, noise levels sigma with
ln sigma ~ N(P_mean, P_std^2) (Karras et al. 2022, Table 1): :class:`EDMSigmas`."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .errors import check_choice, check_range
from .schedule import flow_shift

TIMESTEP_SAMPLERS = ("uniform", "loss-aware")


class UniformTimesteps:
    """t ~ Uniform{0..T-1}, weight 1."""

    def __init__(self, num_timesteps: int):
        self.num_timesteps = num_timesteps

    def probabilities(self) -> np.ndarray:
        return np.full(self.num_timesteps, 1.0 / self.num_timesteps)

    def sample(self, batch_size: int, generator: Optional[torch.Generator] = None):
        """(t LongTensor (B,), importance weights (B,)) with E[w L_t] = the uniform average."""
        p = torch.as_tensor(self.probabilities(), dtype=torch.float64)
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (self.num_timesteps * p[t])
        return t, weights.float()

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Uniform sampling ignores losses."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LossAwareTimesteps(UniformTimesteps):
    """Importance sampling by sqrt(E[L_t^2]) over a history of ``history`` losses per t, mixed
    with ``uniform_prob`` of the uniform distribution; uniform until every t has a full history."""

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        check_range("history", history, 1, None, integer=True)
        check_range("uniform_prob", uniform_prob, 0.0, 1.0)
        self.history, self.uniform_prob = history, uniform_prob
        self.loss_history = np.zeros((num_timesteps, history), dtype=np.float64)
        self.loss_counts = np.zeros(num_timesteps, dtype=np.int64)

    def warmed_up(self) -> bool:
        return bool((self.loss_counts == self.history).all())

    def probabilities(self) -> np.ndarray:
        if not self.warmed_up():
            return np.full(self.num_timesteps, 1.0 / self.num_timesteps)
        weights = np.sqrt(np.mean(self.loss_history ** 2, axis=-1))
        weights = weights / weights.sum()
        return weights * (1 - self.uniform_prob) + self.uniform_prob / self.num_timesteps

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        for ti, loss in zip(t.tolist(), losses.detach().float().cpu().tolist()):
            if self.loss_counts[ti] == self.history:
                self.loss_history[ti, :-1] = self.loss_history[ti, 1:]
                self.loss_history[ti, -1] = loss
            else:
                self.loss_history[ti, self.loss_counts[ti]] = loss
                self.loss_counts[ti] += 1

    def state_dict(self) -> dict:
        return {"loss_history": torch.from_numpy(self.loss_history.copy()),
                "loss_counts": torch.from_numpy(self.loss_counts.copy())}

    def load_state_dict(self, state: dict) -> None:
        self.loss_history = state["loss_history"].numpy().astype(np.float64).copy()
        self.loss_counts = state["loss_counts"].numpy().astype(np.int64).copy()


class FlowTimes:
    """Flow times s (float64, (B,)) for flow matching, weight 1: u ~ Uniform[0, 1) (``uniform``) or
    u = sigmoid(m + s_ln z), z ~ N(0, 1) (``logit-normal``, SD3 eq. 19:
    pi_ln(u; m, s_ln) = 1/(s_ln sqrt(2 pi)) 1/(u (1 - u)) exp(-(logit(u) - m)^2 / (2 s_ln^2))),
    then s = shift(u) (SD3 eq. 23, :func:`diffkit.schedule.flow_shift`)."""

    def __init__(self, density: str = "uniform", shift: float = 1.0, logit_mean: float = 0.0, logit_std: float = 1.0):
        check_choice("flow time density", density, ("uniform", "logit-normal"))
        check_range("flow_shift", shift, 0.0, None, low_inclusive=False)
        check_range("logit_std", logit_std, 0.0, None, low_inclusive=False)
        self.density, self.shift, self.logit_mean, self.logit_std = density, shift, logit_mean, logit_std

    def sample(self, batch_size: int, generator: Optional[torch.Generator] = None):
        """(s float64 tensor (B,) in [0, 1], weights (B,) of ones)."""
        if self.density == "uniform":
            u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        else:
            z = torch.randn(batch_size, generator=generator, dtype=torch.float64)
            u = torch.sigmoid(self.logit_mean + self.logit_std * z)
        return flow_shift(u, self.shift), torch.ones(batch_size)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Fixed densities ignore losses."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class EDMSigmas(FlowTimes):
    """EDM's training noise levels (Karras et al. 2022, Table 1, "Noise distribution"; Sec. 5):
    ln sigma ~ N(P_mean, P_std^2), float64 (B,), weight 1 (the loss weight lambda(sigma) is in
    :func:`diffkit.losses.edm_losses`)."""

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2):
        check_range("edm_p_mean", p_mean)
        check_range("edm_p_std", p_std, 0.0, None, low_inclusive=False)
        self.p_mean, self.p_std = p_mean, p_std

    def sample(self, batch_size: int, generator: Optional[torch.Generator] = None):
        """(sigma float64 tensor (B,) > 0, weights (B,) of ones)."""
        z = torch.randn(batch_size, generator=generator, dtype=torch.float64)
        return torch.exp(self.p_mean + self.p_std * z), torch.ones(batch_size)


def make_timestep_sampler(name: str, num_timesteps: int):
    check_choice("timestep_sampler", name, TIMESTEP_SAMPLERS)
    return UniformTimesteps(num_timesteps) if name == "uniform" else LossAwareTimesteps(num_timesteps)
