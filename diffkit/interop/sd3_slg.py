"""Skip-layer guidance (SLG) on an SD3 folder's transformer, as diffusers 0.42.1's ``StableDiffusion3Pipeline``
with ``skip_guidance_layers`` (Stability AI's SD3.5 recipe; the idea is Ahn et al. 2024's perturbed guidance,
arXiv:2403.17377, with whole transformer blocks skipped as the perturbation). At the pipeline's step i, inside the
window N start < i < N stop (N steps, strict, by step index) and only with classifier-free guidance on (s > 1):

    u = u_u + s (u_c - u_u) + S (u_c - u-hat_c),

u-hat_c the conditional velocity with the blocks ``transformer_blocks[j]`` of the chosen j skipped (their input
passed on unchanged: the transformer's ``skip_layers``), S = ``skip_layer_guidance_scale`` (default 2.8), the
window default 0.01 .. 0.2 (the pipeline's defaults). That is :class:`~diffkit.guidance.PerturbedAttentionGuidance`
over the folder's :class:`~diffkit.guidance.ClassifierFreeGuidance` (eps and x_0 are affine in u with the same
coefficients for every pass, so its eps / x_0 mix is this step) with :class:`SkippedBlocks` as its network hook:
the three passes run in one transformer call of 3B rows (the pipeline: 2B, then B with ``skip_layers``: the same
rows at the same times), the last B rows skipping the blocks. The window becomes an interval of diffkit times
(:func:`slg_interval`): the pipeline's steps i_first .. i_last of the scheduler's grid of N steps, widened to the
midpoints with the neighbouring grid times, so on that grid the pipeline's steps exactly, and for any other sampler
the same noise levels."""
from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch

from ..errors import DiffkitError, check_float32

SLG_SCALE, SLG_START, SLG_STOP = 2.8, 0.01, 0.2  # StableDiffusion3Pipeline's defaults


def check_slg(layers: Sequence[int], scale: float, start: float, stop: float, num_layers: int) -> list:
    """The checked block indices (sorted, deduplicated): integers 0..num_layers - 1, scale a finite number >= 0,
    0 <= start < stop <= 1; a one-line DiffkitError naming the bad value otherwise."""
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or not layers or not all(
            isinstance(j, int) and not isinstance(j, bool) for j in layers):
        raise DiffkitError(f"skip-layer guidance layers {layers!r} are not allowed; give transformer block indices "
                           f"0..{num_layers - 1} (e.g. 7,8,9 for SD3.5 Medium)")
    bad = [j for j in layers if not 0 <= j < num_layers]
    if bad:
        raise DiffkitError(f"skip-layer guidance layer {bad[0]} is out of range; this SD3 transformer has "
                           f"{num_layers} blocks: allowed 0..{num_layers - 1}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise DiffkitError(f"skip-layer guidance scale {scale!r} is not allowed; give a finite number >= 0 "
                           f"(default {SLG_SCALE})")
    check_float32("skip-layer guidance scale", scale)  # (1e308 was named a perturbed-attention scale, later)
    for name, value in (("start", start), ("stop", stop)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise DiffkitError(f"skip-layer guidance {name} {value!r} is not allowed; give a fraction of the steps "
                               f"in [0, 1]")
    if start >= stop:
        raise DiffkitError(f"skip-layer guidance start {start:g} >= stop {stop:g} is not allowed; give start < stop "
                           f"(the fractions of the steps it runs between; default {SLG_START}..{SLG_STOP})")
    return sorted(set(layers))


def slg_steps(steps: int, start: float, stop: float) -> list:
    """The pipeline's steps i (0-based) of N = ``steps`` with SLG: N start < i < N stop. None: a one-line
    DiffkitError (the pipeline would silently guide nothing)."""
    active = [i for i in range(steps) if steps * start < i < steps * stop]
    if not active:
        raise DiffkitError(f"skip-layer guidance from {start:g} to {stop:g} of {steps} steps takes no step (the "
                           f"pipeline's window {steps} x {start:g} < i < {steps} x {stop:g}); widen it or give more "
                           f"steps")
    return active


def slg_interval(grid: torch.Tensor, steps: int, start: float, stop: float) -> tuple:
    """(t_lo, t_hi) in diffkit times of the pipeline's window (:func:`slg_steps`) on ``grid`` (the scheduler's
    grid of N = ``steps`` steps, N + 1 times, decreasing): its steps i_first..i_last, to the midpoints with the
    neighbouring times."""
    active = slg_steps(steps, start, stop)
    first, last = active[0], active[-1]
    times = grid.to(torch.float64).tolist()
    return (times[last] + times[last + 1]) / 2, (times[first - 1] + times[first]) / 2  # first >= 1: i > N start


class SkippedBlocks:
    """The network hook :class:`~diffkit.guidance.PerturbedAttentionGuidance` calls (``network=``) for an
    ``SD3Transformer2DModel``: its "layers" are block indices, and ``perturbed_self_attention(layers, identity)``
    makes each chosen ``transformer_blocks[j]`` pass its inputs on unchanged for the rows where ``identity`` is
    true (what the transformer's ``skip_layers`` does to a whole batch), by a forward hook removed on exit."""

    def __init__(self, transformer):
        self.transformer = transformer

    def check_self_attention_layers(self, layers) -> list:
        return check_slg(list(layers), 0.0, 0.0, 1.0, len(self.transformer.transformer_blocks))

    @contextlib.contextmanager
    def perturbed_self_attention(self, layers, identity: torch.Tensor):
        def skipped(module, args, kwargs, output):
            context_out, hidden_out = output
            rows = identity.reshape(-1, 1, 1)
            hidden = torch.where(rows, kwargs["hidden_states"], hidden_out)
            if context_out is not None:  # None after the last block (context_pre_only): not used again
                context_out = torch.where(rows, kwargs["encoder_hidden_states"], context_out)
            return context_out, hidden

        blocks = self.transformer.transformer_blocks
        hooks = [blocks[j].register_forward_hook(skipped, with_kwargs=True) for j in layers]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()


def skip_layer_guidance(sd3, guided, layers: Sequence[int], steps: int, scale: float = SLG_SCALE,
                        start: float = SLG_START, stop: float = SLG_STOP, size: tuple = (None, None)):
    """``guided`` (the folder's :class:`~diffkit.guidance.ClassifierFreeGuidance`) with skip-layer guidance over
    it (module docstring), its window placed on :meth:`~.sd3.StableDiffusion3.scheduler_grid` (``steps``; ``size``:
    the latents' (h, w), whose mu a dynamic-shifting scheduler takes).
    Classifier-free guidance off (s <= 1, where the pipeline skips SLG too): a one-line DiffkitError."""
    from ..guidance import PerturbedAttentionGuidance
    layers = check_slg(layers, scale, start, stop, len(sd3.transformer.transformer_blocks))
    if guided.w <= 0:
        raise DiffkitError(f"skip-layer guidance needs classifier-free guidance on (a guidance scale s > 1, "
                           f"diffusers' convention; here s = {guided.w + 1:g}), as StableDiffusion3Pipeline's")
    interval = slg_interval(sd3.scheduler_grid(steps, *size), steps, start, stop)
    return PerturbedAttentionGuidance(guided, scale, layers, interval, network=SkippedBlocks(sd3.transformer))


__all__ = ["SLG_SCALE", "SLG_START", "SLG_STOP", "check_slg", "slg_steps", "slg_interval", "SkippedBlocks",
           "skip_layer_guidance"]
