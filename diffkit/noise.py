"""Gaussian noise with per-sample generators, so that sample i never depends on batch size.

``generator`` may be ``None`` (global RNG), one ``torch.Generator`` for the whole batch, or a
list of generators, one per sample. Noise is drawn in float32 on each generator's own device and
moved to the target device and dtype, except with ``None`` or one non-CPU generator for the whole
batch, which draw directly in the target dtype (so their float16 or float64 noise is not their
float32 noise rounded). CPU generators (diffkit's own, :func:`generators_from_seed`) give the
same samples on cpu, cuda and mps; CUDA generators (diffusers' habit) draw on the GPU, and
``None`` draws from the target device's global RNG (neither matches across devices).
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch

from .errors import DiffkitError

GeneratorArg = Union[None, torch.Generator, Sequence[torch.Generator]]
STEP_SEED_OFFSET = 10_000_019  # sample i's stochastic steps draw from seed + STEP_SEED_OFFSET + i
WINDOW_SEED_OFFSET = 20_000_003  # sample i's windows >= 1 of a long impute: seeds from seed + this + i


def generators_from_seed(seed: int, n: int) -> list[torch.Generator]:
    """One CPU generator per sample: sample i uses seed ``seed + i``."""
    return [torch.Generator().manual_seed(int(seed) + i) for i in range(n)]


def sample_generators(seed: int, start: int, n: int) -> tuple[list[torch.Generator], list[torch.Generator]]:
    """(x_T generators, step-noise generators) of samples ``start``..``start + n - 1`` of a run
    seeded ``seed``: sample i's x_T from seed + i, its stochastic steps from seed + 10000019 + i
    (docs/reliability.md, "Determinism"), so sample i never depends on the batch it is in."""
    return generators_from_seed(seed + start, n), generators_from_seed(seed + STEP_SEED_OFFSET + start, n)


def randn(shape, generator: GeneratorArg = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise of ``shape`` (batch first) from ``generator`` (see module doc)."""
    shape = tuple(shape)
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    if isinstance(generator, torch.Generator):
        if generator.device.type != "cpu":
            return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)
    generator = list(generator)
    if len(generator) != shape[0]:
        raise DiffkitError(f"got {len(generator)} generators for a batch of {shape[0]}; pass one per sample")
    if all(g.device.type == "cpu" for g in generator):  # drawn on the CPU, moved in one copy
        noise = torch.stack([torch.randn(shape[1:], generator=g, dtype=torch.float32) for g in generator])
    else:  # a generator draws on its own device (diffusers' convention)
        noise = torch.stack([torch.randn(shape[1:], generator=g, device=g.device, dtype=torch.float32).to(device=device)
                             for g in generator])
    return noise.to(device=device, dtype=dtype)


def randn_like(x: torch.Tensor, generator: GeneratorArg = None) -> torch.Tensor:
    """Noise shaped like ``x`` on its device and dtype."""
    return randn(x.shape, generator, device=x.device, dtype=x.dtype)


def brownian_path_weights(times: Sequence[float]) -> list[list[float]]:
    """Weights L with z_k = sum_j L[k-1][j] g_j, k = 1 .. K, for independent standard normals g_j
    (one per interval of ``times``): z_k = (W(times[k]) - W(times[0])) / sqrt(|times[k] - times[0]|)
    is the normalised increment of one Brownian path W read at those times, since
    W(times[j+1]) - W(times[j]) = sqrt(|times[j+1] - times[j]|) g_j are its independent increments.
    So each z_k is standard normal and Cov(z_j, z_k) = sqrt(|t_j - t_0| / |t_k - t_0|) for j <= k: the
    joint law of what a Brownian tree (torchsde's, k-diffusion's ``BrownianTreeNoiseSampler``)
    returns for these queries, without the tree. That holds only on monotone ``times`` (on times
    that turn back, 3, 1, 2, the increments overlap and these weights give a wrong law), so ``times``
    must be monotone (a repeated time, as dpm-solver++-sde's sigma_mid = sigma_next at r = 1, is a
    zero increment) with every time after the first different from it; a DiffkitError otherwise."""
    steps = [b - a for a, b in zip(times[:-1], times[1:])]
    monotone = all(h <= 0 for h in steps) or all(h >= 0 for h in steps)
    if not monotone or any(not abs(t - times[0]) > 0 for t in times[1:]):
        raise DiffkitError(f"Brownian path times {[float(t) for t in times]} must be monotone (decreasing or "
                           "increasing), each after the first different from it")
    root = [math.sqrt(abs(h)) for h in steps]
    return [[root[j] / math.sqrt(abs(times[k] - times[0])) for j in range(k)] for k in range(1, len(times))]


def fork_device_rng(device):
    """``torch.random.fork_rng`` of the CPU and of ``device`` (a GPU's own index, else the current
    one): the global random state of both is restored on exit. Works on torch >= 2.1, whose
    ``fork_rng`` needs a ``device_type`` string (``"cuda"`` with no devices touches no GPU)."""
    device = torch.device(device)
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[], device_type="cuda")
    index = device.index
    if index is None:
        module = getattr(torch, device.type, None)
        index = module.current_device() if hasattr(module, "current_device") else 0
    return torch.random.fork_rng(devices=[index], device_type=device.type)
