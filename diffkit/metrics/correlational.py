"""Correlational score: the l1 distance between the lag-0 cross-correlation matrices of real and
generated multivariate series (Diffusion-TS, Yuan & Qiao 2024, Sec. 5.1 "correlational score"; the
cross-correlation loss of Liao et al. 2020, "Conditional Sig-Wasserstein GANs", Appendix).

As the authors compute it (Diffusion-TS ``Utils/cross_correlation.py``: ``cacf_torch`` with
``max_lag = 1`` and ``CrossCorrelLoss.compute``), with series x_{n,t,c} (N series, L steps, C channels):

1. standardise each channel over all series and steps together: z = (x - mean_{n,t}) / std_{n,t}
   (``torch.std``: the unbiased, N L - 1, estimate);
2. for each pair c >= c' (the lower triangle with the diagonal, ``torch.tril_indices``, row-major),
   rho_{c,c'} = mean_n mean_t z_{n,t,c} z_{n,t,c'};
3. score = sum over the pairs of |rho^generated - rho^real| / 10.

The diagonal terms are 1 - 1/(N L) in both sets up to the standardisation and nearly cancel. A
channel constant over a whole set has std 0: there it is taken as 1 (its correlations are 0), where
the authors' code would give NaN. The authors' notebook (``Experiments/metric_pytorch.ipynb``) scores
5 random draws (with replacement) of N_real / 5 series of each set and reports their mean +- the 95%
t-interval half-width (``Utils/metric_utils.py``, ``display_scores``: standard error times t(0.975, 4));
:func:`correlational_score` scores the two sets it is given.
"""
from __future__ import annotations

import torch

from .series_pair import check_series_pair


def cross_correlations(series) -> torch.Tensor:
    """rho_{c,c'} for c >= c' (row-major lower triangle with the diagonal, float64 on the CPU) of series
    (N, C, L): steps 1 and 2 of the module doc."""
    x = torch.as_tensor(series).to("cpu", torch.float64).transpose(1, 2)  # (N, L, C), the authors' layout
    std = x.std(dim=(0, 1), keepdim=True)
    z = (x - x.mean(dim=(0, 1), keepdim=True)) / torch.where(std == 0, torch.ones_like(std), std)
    rows, cols = torch.tril_indices(x.shape[2], x.shape[2])
    return (z[..., rows] * z[..., cols]).mean(dim=(0, 1))


def correlational_score(real, generated) -> float:
    """Diffusion-TS's correlational score of ``generated`` against ``real`` (both (N, C, L), any N
    each, one C and L): sum_{c >= c'} |rho^gen_{c,c'} - rho^real_{c,c'}| / 10 (lower is better)."""
    real, generated = check_series_pair(real, generated, "correlational score", min_series=1, min_length=2)
    return float((cross_correlations(generated) - cross_correlations(real)).abs().sum() / 10)
