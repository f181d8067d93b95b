"""Which timesteps a training batch uses: uniform (DDPM Alg. 1) or loss-aware importance sampling
(Improved DDPM Sec. 3.3, eq. 18: p_t proportional to sqrt(E[L_t^2]), from the last 10 losses)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .errors import check_choice, check_range

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


def make_timestep_sampler(name: str, num_timesteps: int):
    check_choice("timestep_sampler", name, TIMESTEP_SAMPLERS)
    return UniformTimesteps(num_timesteps) if name == "uniform" else LossAwareTimesteps(num_timesteps)
