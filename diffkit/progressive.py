"""Progressive generation and progressive lossy compression (Ho et al. 2020, DDPM Sec. 4.3).

* :func:`progressive_x0` - the reverse process seen through its x_0 predictions
  x-hat_0 = (x_t - sqrt(1 - alpha_bar_t) eps(x_t, t)) / sqrt(alpha_bar_t) (DDPM eq. 15) at a few
  times along the chain (DDPM Fig. 6, 10, 14): large-scale features appear first, details last.
* :func:`rate_distortion` - on data x_0: the *rate* at t, the bits a receiver has been sent once it
  holds x_t (DDPM Algorithm 3: L_T, then L_{T-1} ... down to x_t), against the *distortion*, the
  RMSE of the x_0 prediction from x_t ~ q(x_t | x_0) on the [0, 255] scale (DDPM Fig. 5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from .errors import DiffkitError, check_range

PIXEL_SCALE = 127.5  # data in [-1, 1] -> [0, 255]: DDPM Fig. 5 plots the RMSE on that scale


# ---------------------------------------------------------------------------- progressive generation
def frame_positions(num_steps: int, frames: int, what: str = "frames") -> list[int]:
    """``frames`` grid indices evenly spread over 0..num_steps (rounded half up): the first is the
    sampler's first step (t = T), the last ``num_steps``, the final sample. ``what``: the
    argument's name in the error (at least 2 frames, at most one per grid time)."""
    check_range(what, frames, 2, num_steps + 1, integer=True)
    return [(2 * k * num_steps + frames - 1) // (2 * (frames - 1)) for k in range(frames)]


class FrameRecorder:
    """A :func:`diffkit.sample` callback keeping the x_0 prediction at :func:`frame_positions` of
    ``grid`` and the final sample; a finished sampling call holds its frames (B, K, ...) until
    :meth:`commit` adds them to ``rows`` (when its batch is finished: a latent model's decoder
    runs after sampling). A position no step reports (singlestep DPM-Solver reports once per
    chunk of steps) takes the last reported step before it. A call stopped part-way, or finished
    but not committed (an out-of-memory retry), is dropped when the next starts. ``times``: the
    frames' times; ``max_rows``: keep at most that many samples; ``to_cpu``: move frames to the
    CPU as they are taken."""

    def __init__(self, grid, frames: int, max_rows: Optional[int] = None, to_cpu: bool = False,
                 what: str = "frames"):
        grid = torch.as_tensor(grid, dtype=torch.float64)
        self.positions = frame_positions(len(grid) - 1, frames, what)
        self.end, self.max_rows, self.to_cpu = float(grid[-1]), max_rows, to_cpu
        self.rows: list[torch.Tensor] = []
        self.times: list[float] = []
        self._finished = None  # the frames of the last finished call, not yet committed
        self._reset()

    def _reset(self) -> None:
        self._slots: list = [None] * (len(self.positions) - 1)
        self._slot_times: list = [None] * (len(self.positions) - 1)
        self._last = None  # (step, t, x0) of the latest report

    def _fill_until(self, stop: int) -> None:
        """Give the latest report to the positions from its step up to (not including) ``stop``."""
        step, t, x0 = self._last
        for k, p in enumerate(self.positions[:-1]):
            if step <= p < stop:
                self._slots[k], self._slot_times[k] = x0, t

    def _take(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach().cpu() if self.to_cpu else x.detach().clone()

    def __call__(self, info: dict) -> None:
        if info["step"] == 0:
            self._reset()
            self._finished = None
        if self._last is not None:
            self._fill_until(info["step"])
        self._last = (info["step"], info["t"], self._take(info["x0"]))
        if info["s"] == self.end:
            self._fill_until(self.positions[-1])
            x = self._take(info["x"])
            self._finished = torch.stack([*(f.to(x.dtype) for f in self._slots), x], dim=1)
            self.times = [*self._slot_times, self.end]
            self._reset()

    def commit(self) -> None:
        """Add the last finished call's frames to ``rows`` (once; nothing if none is held)."""
        frames, self._finished = self._finished, None
        kept = sum(r.shape[0] for r in self.rows)
        if frames is not None and (self.max_rows is None or kept < self.max_rows):
            self.rows.append(frames if self.max_rows is None else frames[:self.max_rows - kept])

    def frames(self) -> torch.Tensor:
        """All committed samples' frames, (B, K, ...)."""
        if not self.rows:
            raise DiffkitError("no finished sampling call was committed: the recorder holds no frames")
        return torch.cat(self.rows)


_SAMPLE_ONLY = ("seed", "generator", "cond", "progress", "device", "dtype", "callback")
_GRID_ARGS = ("nfe", "spacing", "final", "grid", "thresholding")


def recorder_for(denoiser, frames: int, sampler: str = "ddim", steps: Optional[int] = None, *,
                 max_rows: Optional[int] = None, to_cpu: bool = False, what: str = "frames",
                 **kwargs) -> FrameRecorder:
    """The :class:`FrameRecorder` of the grid :func:`diffkit.sample` builds from the same arguments
    (``kwargs``: those of ``sample``; the ones that do not shape the grid are ignored here)."""
    from .sampling import plan
    grid_args = {k: kwargs[k] for k in _GRID_ARGS if k in kwargs}
    options = {k: v for k, v in kwargs.items() if k not in _GRID_ARGS and k not in _SAMPLE_ONLY}
    _, grid, _, _ = plan(denoiser, sampler, steps, options=options, **grid_args)  # a copy: sample plans again
    return FrameRecorder(grid, frames, max_rows=max_rows, to_cpu=to_cpu, what=what)


def progressive_x0(denoiser, shape_or_noise, sampler: str = "ddim", steps: Optional[int] = None, *,
                   frames: int = 8, callback: Optional[Callable] = None, **kwargs) -> torch.Tensor:
    """Sample as :func:`diffkit.sample` does (same arguments, same samples) and return (B, K, ...)
    frames: the x_0 prediction (DDPM eq. 15) at K = ``frames`` grid times evenly spread from the
    first step (t = T) on (:func:`frame_positions`), the final sample last (DDPM Fig. 6).
    ``callback`` still sees every step."""
    from .sampling import check_denoiser, sample
    check_denoiser(denoiser)
    recorder = recorder_for(denoiser, frames, sampler, steps, **kwargs)

    def both(info):
        recorder(info)
        if callback is not None:
            callback(info)
    sample(denoiser, shape_or_noise, sampler, steps, callback=both, **kwargs)
    recorder.commit()
    return recorder.frames()


def progressive_grid_path(out) -> Path:
    """``diffkit sample --progressive``'s grid beside the sample grid: ``samples.png`` ->
    ``samples_progressive.png``."""
    out = Path(out)
    return out.with_name(out.stem + "_progressive" + out.suffix)


def save_progressive_grid(frames: torch.Tensor, path, scale: int = 1, decoder=None) -> Path:
    """Write (B, K, C, H, W) frames as a grid PNG: one row per sample, times left to right.
    ``decoder``: a latent model's decoder, applied to the frames first (then clamped to [-1, 1])."""
    from .images import save_grid
    if frames.ndim != 5:
        raise DiffkitError(f"frames of shape {tuple(frames.shape)} are not allowed; give (batch, frames, C, H, W)")
    images = frames.reshape(-1, *frames.shape[2:]).float()
    if decoder is not None:
        with torch.no_grad():
            images = torch.cat([decoder(part).clamp(-1, 1).cpu() for part in images.split(64)])
    return save_grid(images.cpu().clamp(-1, 1), path, nrow=frames.shape[1], scale=scale)


# ---------------------------------------------------------------------------- rate-distortion
@dataclass
class RateDistortion:
    """Per evaluated t (``timesteps``, increasing): ``rate`` (bits/dim) the receiver holding x_t has
    been sent, L_T + L_{T-1} + ... + L_t in DDPM's 1-based time (diffkit's t is DDPM's t + 1,
    so here the prior and the terms at every s > t), and ``distortion`` sqrt(E||x_0 - x-hat_0(x_t)||^2 / D)
    in [0, 255] units. ``nll``: the rate once x_0 itself is sent (after the decoder term L_0):
    the whole bound, where the distortion is 0. Means over ``num_images``; ``rate_sem``: the
    rate's standard error over them."""

    timesteps: torch.Tensor
    rate: torch.Tensor
    rate_sem: torch.Tensor
    distortion: torch.Tensor
    nll: float
    num_images: int

    def as_dict(self) -> dict:
        return {"bpd": self.nll, "num_images": self.num_images, "timesteps": self.timesteps.tolist(),
                "rate_bpd": self.rate.tolist(),
                "rate_sem": self.rate_sem.tolist(), "distortion_rmse": self.distortion.tolist()}


def rate_distortion(denoiser, images: torch.Tensor, *, timesteps: Optional[Sequence[int]] = None, seed: int = 0,
                    batch_size: int = 100, cond: Optional[dict] = None, progress: bool = False) -> RateDistortion:
    """DDPM Sec. 4.3 "Progressive lossy compression" (Fig. 5) on ``images`` (in [-1, 1], 8-bit data).

    One pass of :func:`diffkit.likelihood.variational_bound` (its terms and the x_0 prediction each
    was computed from, as the DDPM code's ``calc_bpd_loop``): rate(t) = prior + sum_{k > t} L_k,
    exact with every t (``timesteps=None``); a strided list (which must start at 0) reads the
    terms between evaluated t as the bound's trapezoid rule does (:func:`diffkit.likelihood.tail_sums`),
    so the rate after L_0 is the strided bound. The distortion pools the squared error over
    images and dimensions before the square root. Image i's noise comes from seed + i."""
    from .likelihood import bound_in_batches
    if not isinstance(images, torch.Tensor) or images.ndim < 2 or images.shape[0] < 1 or not images.is_floating_point():
        raise DiffkitError(f"images of shape {tuple(getattr(images, 'shape', ()))} are not allowed; give float "
                           f"(batch >= 1, ...) images in [-1, 1]")
    check_range("seed", seed, 0, 2**63 - 1, integer=True)
    check_range("batch_size", batch_size, 1, None, integer=True)
    parts = bound_in_batches(denoiser, images, timesteps=timesteps, seed=seed, batch_size=batch_size, cond=cond,
                             progress=progress)
    return rate_distortion_of(parts, denoiser.schedule.num_timesteps)


def rate_distortion_of(parts, num_timesteps: int) -> RateDistortion:
    """The :class:`RateDistortion` of a bound computed in batches (:func:`diffkit.likelihood.bound_in_batches`)."""
    from .likelihood import tail_sums
    ts = parts[0].timesteps
    rates = torch.cat([p.prior for p in parts])[:, None] + tail_sums(torch.cat([p.terms for p in parts]), ts,
                                                                      num_timesteps)
    n = rates.shape[0]
    sem = rates.std(0) / math.sqrt(n) if n > 1 else torch.full_like(rates[0], float("nan"))
    mse = torch.cat([p.x0_mse for p in parts]).mean(0)
    return RateDistortion(timesteps=ts, rate=rates.mean(0), rate_sem=sem,
                          distortion=PIXEL_SCALE * mse.sqrt(),
                          nll=float(torch.cat([p.total for p in parts]).mean()), num_images=n)


def plot_rate_distortion(result: dict, path, num_timesteps: int, title: str = "") -> Path:
    """DDPM Fig. 5's three panels from :meth:`RateDistortion.as_dict`: distortion and rate against
    the reverse-process steps taken (T - 1 - t in diffkit's time: none while the receiver holds
    x_{T-1}, DDPM's x_T), and distortion against rate (ending at the lossless point (nll, 0)).
    Written atomically as a PNG."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .checkpoint import atomic_write_bytes
    steps = [num_timesteps - 1 - t for t in result["timesteps"]]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].plot(steps, result["distortion_rmse"])
    axes[0].set(xlabel="reverse process steps", ylabel="distortion (RMSE, [0, 255])")
    axes[1].plot(steps, result["rate_bpd"])
    axes[1].set(xlabel="reverse process steps", ylabel="rate (bits/dim)")
    axes[2].plot([*result["rate_bpd"][::-1], result["bpd"]], [*result["distortion_rmse"][::-1], 0.0])
    axes[2].set(xlabel="rate (bits/dim)", ylabel="distortion (RMSE, [0, 255])")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
