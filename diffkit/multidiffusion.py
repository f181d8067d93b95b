"""MultiDiffusion (Bar-Tal et al. 2023, "MultiDiffusion: Fusing Diffusion Paths for Controlled Image Generation",
arXiv:2302.08113): a denoiser of images wider (or taller) than its network was trained on, as a wrapper.

The panorama J is covered by windows F_i(J) (eq. 7 in the paper's numbering of the mappings; here fixed crops of
``window`` x ``window`` latent pixels at ``stride``, as diffusers' ``StableDiffusionPanoramaPipeline.get_views``).
Each step of the paper's eq. 3 asks for the J_{t-1} closest, in the least-squares sense of eq. 4, to every window's
own step Phi(F_i(J_t)); with equal weights its solution, eq. 5, is the per-pixel average of the windows' steps over
the windows that cover the pixel.

For a sampler whose step is one linear combination of x_t and the network's outputs (of this and earlier steps),
with coefficients that depend on the time only (DDIM with eta = 0, PNDM, DPM-Solver(++), UniPC, DEIS, ...), the
average of the windows' steps is that step applied to the per-pixel average of the windows' predictions, since every
window shares the pixel's x_t (and its averaged history). So MultiDiffusion is a denoiser here: :class:`MultiDiffusion`
answers (x_t, t) with the per-pixel mean of eps and x0 over the windows, and every deterministic diffkit sampler runs
it unchanged. (A stochastic step adds noise; the pipeline averages one draw per window, which shrinks the noise where
windows overlap, and that is no model output: those samplers are refused where this wrapper is built for a pipeline,
:mod:`diffkit.interop.sd_panorama`.)
"""
from __future__ import annotations

from typing import Sequence

import torch

from .denoiser import Prediction, Wrapper
from .errors import DiffkitError

DEFAULT_WINDOW, DEFAULT_STRIDE = 64, 8  # get_views' window_size and stride (latent pixels)


def panorama_views(height: int, width: int, window: int = DEFAULT_WINDOW, stride: int = DEFAULT_STRIDE,
                   circular: bool = False) -> list:
    """The windows (h_start, h_end, w_start, w_end) of a ``height`` x ``width`` latent, as diffusers'
    ``get_views`` lists them (row by row): (size - window) // stride + 1 per axis where the size exceeds the window,
    else one; with ``circular`` (horizontal wrap-around) width // stride windows across, the last ones running past
    the right edge (their columns taken modulo the width). A window may reach past a size smaller than itself (it is
    cropped there, or wraps with ``circular``). A latent the windows leave partly uncovered (diffusers sets those
    pixels to 0 at every step) is refused in one line."""
    for name, value in (("window", window), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DiffkitError(f"view {name}={value!r} is not allowed; give a positive number of latent pixels")
    rows = (height - window) // stride + 1 if height > window else 1
    if circular:
        cols = width // stride if width > window else 1
    else:
        cols = (width - window) // stride + 1 if width > window else 1
    views = [(i * stride, i * stride + window, j * stride, j * stride + window) for i in range(rows)
             for j in range(cols)]
    for axis, size, last in (("height", height, views[-1][1]), ("width", width, views[-1][3])):
        if last < size and not (axis == "width" and circular):
            raise DiffkitError(f"a latent {axis} of {size} is not covered by windows of {window} at stride {stride} "
                               f"(they end at {last}); allowed: {window} + a multiple of {stride}, or at most "
                               f"{window}")
    return views


def _view_indices(view: tuple, height: int, width: int, circular: bool, device) -> tuple:
    """(flat pixel indices (h * w,), h, w) of a window in a ``height`` x ``width`` latent."""
    h0, h1, w0, w1 = view
    rows = torch.arange(h0, min(h1, height), device=device)
    cols = torch.arange(w0, w1, device=device) % width if circular else torch.arange(w0, min(w1, width), device=device)
    return (rows[:, None] * width + cols[None, :]).reshape(-1), rows.numel(), cols.numel()


class MultiDiffusion(Wrapper):
    """The per-pixel average of ``denoiser``'s predictions over the windows ``views`` (MultiDiffusion, eq. 5):

        eps(J_t)[p] = (1 / |{i : p in F_i}|) sum_{i : p in F_i} eps(F_i(J_t))[p],   x0 likewise,

    the pair consistent (x_t = alpha x0 + sigma eps holds in every window, so in the mean). ``view_batch_size``
    windows share one call of the wrapped denoiser (diffusers' ``view_batch_size``: the same numbers), each with the
    samples' conditions. ``circular``: windows past the right edge wrap around (diffusers' ``circular_padding``)."""

    def __init__(self, denoiser, views: Sequence[tuple], view_batch_size: int = 1, circular: bool = False):
        if isinstance(view_batch_size, bool) or not isinstance(view_batch_size, int) or view_batch_size < 1:
            raise DiffkitError(f"view_batch_size={view_batch_size!r} is not allowed; give a positive integer")
        self.inner, self.views = denoiser, list(views)
        self.view_batch_size, self.circular = view_batch_size, bool(circular)

    def __call__(self, x: torch.Tensor, t, **cond) -> Prediction:
        from .guidance import _repeated
        batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
        flat = x.flatten(2)
        eps, x0 = torch.zeros_like(flat), torch.zeros_like(flat)
        count = torch.zeros(height * width, device=x.device, dtype=x.dtype)
        t_batched = torch.as_tensor(t).ndim > 0
        for start in range(0, len(self.views), self.view_batch_size):
            chunk = [_view_indices(v, height, width, self.circular, x.device)
                     for v in self.views[start:start + self.view_batch_size]]
            crops = torch.cat([flat[..., idx].reshape(batch, x.shape[1], h, w) for idx, h, w in chunk])
            n = len(chunk)
            pred = self.inner(crops, torch.cat([torch.as_tensor(t)] * n) if t_batched else t,
                              **_repeated(cond, batch, n))
            for k, (idx, _, _) in enumerate(chunk):
                eps.index_add_(2, idx, pred.eps[k * batch:(k + 1) * batch].flatten(2))
                x0.index_add_(2, idx, pred.x0[k * batch:(k + 1) * batch].flatten(2))
                count.index_add_(0, idx, torch.ones_like(idx, dtype=x.dtype))
        if not bool((count > 0).all()):
            raise DiffkitError("the windows leave latent pixels uncovered; build them with panorama_views")
        return Prediction(eps=(eps / count).reshape(x.shape), x0=(x0 / count).reshape(x.shape))


__all__ = ["MultiDiffusion", "panorama_views", "DEFAULT_WINDOW", "DEFAULT_STRIDE"]
