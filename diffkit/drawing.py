"""Draw N samples in batches: the one loop behind ``diffkit sample`` (diffkit checkpoints and
Stable Diffusion folders) and :func:`diffkit.evaluation.generate_samples`.

Sample i starts from the noise of seed + i and takes its stochastic steps from seed + 10000019 + i
(:func:`diffkit.noise.sample_generators`; docs/reliability.md, "Determinism"), so it depends
neither on the batch it lands in nor on the batch size: ``"auto"`` picks the largest batch that fits
in free memory (:func:`diffkit.memory.auto_batch_size`), and a batch that runs out of accelerator
memory is drawn again at half the size (:func:`diffkit.memory.batches_with_oom_retry`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Union

import torch

from .memory import PROBE_SAMPLING, auto_batch_size, batches_with_oom_retry
from .noise import generators_from_seed, randn, sample_generators


@dataclass
class Batch:
    """One finished batch: samples ``start``..``start + n - 1``."""

    start: int
    noise: torch.Tensor  # their x_T (a latent model's z_T), on the sampling device
    images: torch.Tensor  # their samples: decoded and clamped to [-1, 1] with ``decode``, else as sampled
    nfe: int  # the batched network calls they cost (each sample's NFE; for ode, the largest of theirs)


@dataclass
class Drawn:
    """What :func:`draw_samples` did: the batch size it ended with (``first_batch_size`` halved
    by each out of memory, :class:`diffkit.memory.RetryingBatches`), the batches it finished, their
    network calls and the network evaluations per sample (:func:`nfe_per_sample`). An attempt that
    ran out of memory and the batch-size probe count in neither."""

    batch_size: int
    batches: int
    calls: int
    nfe: Optional[Union[int, float]]
    first_batch_size: int


def nfe_per_sample(costs) -> Optional[Union[int, float]]:
    """Network evaluations per sample of batches given as ``(samples, batched calls)`` pairs:
    each sample of a batch is evaluated once per call, so the mean over samples of their batch's
    calls (an int when it is one; None without batches). Batches of any size, e.g. after an
    out-of-memory halving, count by their samples."""
    costs = list(costs)
    samples = sum(n for n, _ in costs)
    if not samples:
        return None
    mean = sum(n * calls for n, calls in costs) / samples
    return int(mean) if mean.is_integer() else mean


def draw_samples(denoiser, num: int, shape, *, seed: int = 0, sampler: str = "ddim", steps: Optional[int] = None,
                 nfe: Optional[int] = None, spacing: Optional[str] = None, final: Optional[str] = None,
                 cond: Union[None, Mapping, Callable[[int, int], dict]] = None,
                 batch_size: Union[int, str] = "auto", device="cpu", dtype=torch.float32,
                 decode: Optional[Callable] = None, sample_fn: Optional[Callable] = None,
                 separate_step_seeds: bool = True, skip: Optional[Callable[[int, int], bool]] = None,
                 sink: Optional[Callable[[Batch], None]] = None, progress: bool = False, **options) -> Drawn:
    """Draw samples 0..num-1 of a run seeded ``seed``, batch by batch, handing each :class:`Batch`
    to ``sink`` (write files, collect tensors).

    Args:
        shape: one sample's shape (C, H, W): the image's, or a latent model's latent shape.
        sampler, steps, nfe, spacing, final, progress, options: as for :func:`diffkit.sample`.
        cond: the conditions, one row per sample: ``{"y": labels}`` or ``{"context": contexts}``
            (each batch gets its rows), or a function ``cond(start, n) -> dict`` for conditions made
            per batch (e.g. prompt contexts indexed per sample).
        batch_size: samples per batch, or ``"auto"``: probed with one ddim step of ``sample_fn``
            and ``decode`` (:data:`diffkit.memory.PROBE_SAMPLING`).
        device, dtype: where and in which dtype the noise is drawn (in float32 on the CPU, then moved).
        decode: a latent model's decoder, latents -> images; its output is clamped to [-1, 1].
        sample_fn: replaces :func:`diffkit.sample` (same arguments), e.g. Dhariwal & Nichol's
            Algorithm 1 or a Stable Diffusion folder's per-batch prompt guidance.
        separate_step_seeds: True (diffkit's convention): the steps' noise comes from seed + 10000019 + i;
            False: the x_T generators go on to draw it (``diffkit.sample(seed=...)``'s convention, as
            :func:`diffkit.interop.stable_diffusion.text_to_image` samples).
        skip: ``skip(start, n)`` True: the caller already has these samples (a cache); not drawn.
    """
    from .sampling import sample
    sample_fn = sample_fn or sample
    shape = tuple(shape)

    def network_calls() -> int:
        return getattr(denoiser, "nfe", 0)

    def generate(start: int, n: int, probe: bool = False):
        """(the Batch of samples start..start+n-1, or None when skipped); ``probe``: one ddim step."""
        if not probe and skip is not None and skip(start, n):
            return (None,)
        before = network_calls()
        if separate_step_seeds:
            noise_gens, gens = sample_generators(seed, start, n)
        else:
            noise_gens = gens = generators_from_seed(seed + start, n)
        noise = randn((n, *shape), noise_gens, device=device, dtype=dtype)
        if callable(cond):
            batch_cond = cond(start, n)
        else:
            batch_cond = {k: v[start:start + n].to(device) for k, v in (cond or {}).items()}
        how = PROBE_SAMPLING if probe else dict(sampler=sampler, steps=steps, nfe=nfe, spacing=spacing, final=final,
                                                progress=progress)
        x = sample_fn(denoiser, noise, how["sampler"], how["steps"], nfe=how["nfe"], spacing=how["spacing"],
                      final=how["final"], generator=gens, cond=batch_cond, progress=how["progress"],
                      **({} if probe else options))
        if decode is not None:
            with torch.no_grad():  # latent models: x = D(z / scale_factor)
                x = decode(x).clamp(-1, 1)
        return (Batch(start, noise, x, network_calls() - before),)

    if batch_size == "auto":
        batch_size = auto_batch_size(lambda n: generate(0, n, probe=True), device, limit=num,
                                     sample_numel=math.prod(shape))
    costs = []  # (samples, calls) of each finished batch
    batches = batches_with_oom_retry(generate, num, batch_size)
    for _, batch in batches:
        if batch is not None:
            costs.append((batch.images.shape[0], batch.nfe))
            if sink is not None:
                sink(batch)
    return Drawn(batches.batch_size, len(costs), sum(calls for _, calls in costs), nfe_per_sample(costs), batch_size)


__all__ = ["Batch", "Drawn", "draw_samples", "nfe_per_sample"]
