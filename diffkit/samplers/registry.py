"""The sampler registry: names -> functions with their metadata (order, model calls per step,
stochastic or not, default time grid). One table serves the CLI, the benchmarks and the tests."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from ..errors import DiffkitError, check_choice, check_range
from .ddim import ddim
from .ddpm import ddpm


@dataclass(frozen=True)
class SamplerInfo:
    """A sampler and what it costs. ``fn(denoiser, x, grid, *, cond, generator, callback,
    progress, **options)`` maps noise at grid[0] to data at grid[-1]."""

    name: str
    fn: Callable
    order: int
    calls_per_step: int
    stochastic: bool
    description: str
    default_spacing: str = "linear"
    default_final: str = "zero"
    options: dict = field(default_factory=dict)
    # For samplers whose NFE is not calls_per_step * steps: nfe(steps) and its inverse.
    nfe_of_steps: Optional[Callable[[int], int]] = None

    def nfe(self, steps: int) -> int:
        """Network evaluations spent by ``steps`` steps."""
        return self.nfe_of_steps(steps) if self.nfe_of_steps else self.calls_per_step * steps

    def steps_for_nfe(self, nfe: int) -> int:
        """The step count that spends exactly ``nfe`` evaluations, or a one-line error."""
        check_range("nfe", nfe, 1, None, integer=True)
        for s in range(1, nfe + 1):
            if self.nfe(s) == nfe:
                return s
        possible = sorted({self.nfe(s) for s in range(1, nfe + 2)})
        near = [n for n in possible if abs(n - nfe) <= 3 * self.calls_per_step] or possible[:5]
        raise DiffkitError(f"sampler {self.name!r} cannot spend exactly nfe={nfe}; it can spend "
                           f"{', '.join(map(str, near))} (calls per step: {self.calls_per_step})")


REGISTRY: dict[str, SamplerInfo] = {}


def register(info: SamplerInfo) -> SamplerInfo:
    REGISTRY[info.name] = info
    return info


def get_sampler(name: str) -> SamplerInfo:
    check_choice("sampler", name, REGISTRY)
    return REGISTRY[name]


register(SamplerInfo("ddpm", ddpm, order=1, calls_per_step=1, stochastic=True,
                     description="DDPM ancestral sampling (Ho et al. 2020, Alg. 2); respaced on S < T steps"))
register(SamplerInfo("ddim", ddim, order=1, calls_per_step=1, stochastic=False,
                     description="DDIM (Song et al. 2021, eq. 12); eta=0 deterministic, eta>0 stochastic"))
