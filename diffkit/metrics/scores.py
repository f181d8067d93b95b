"""Inception Score, Kernel Inception Distance and improved precision/recall.

* IS (Salimans et al. 2016, Sec. 4): exp E_x KL(p(y|x) || p(y)), averaged over ``splits``
  disjoint parts; reported as mean and standard deviation over the parts.
* KID (Binkowski et al. 2018, "Demystifying MMD GANs", Sec. 4): the unbiased estimate of
  MMD^2 (their eq. 2) with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged
  over random subsets.
* Precision / recall (Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric ...",
  eq. 1-2): the manifold of a set is the union of balls around its points whose radius is the
  distance to the k-th nearest neighbour; precision is the fraction of generated samples inside
  the real manifold, recall the fraction of real samples inside the generated manifold.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.special import logsumexp
import torch

from ..errors import DiffkitError, check_range
from .frechet import as_feature_array


class MeanStd(NamedTuple):
    """A score estimated over several parts: its ``mean`` and standard deviation ``std``."""

    mean: float
    std: float


class PrecisionRecall(NamedTuple):
    precision: float
    recall: float


def inception_score(logits, splits: int = 10) -> MeanStd:
    """Inception Score from classifier logits (n, num_classes): mean and std over ``splits``.

    p(y|x) = softmax(logits); in each part, p(y) is the part's mean of p(y|x) and the score is
    exp(mean_x KL(p(y|x) || p(y))). It lies in [1, num_classes]: 1 when every image gets the
    same prediction, num_classes for confident predictions spread evenly over the classes.
    Part i is samples [i N // splits, (i + 1) N // splits), as in the original code
    (openai/improved-gan); log p(y) is a log-sum-exp, so classes whose probability underflows
    to 0 add 0 instead of NaN.
    """
    logits = as_feature_array(logits, "logits")
    check_range("splits", splits, 1, None, integer=True)
    n = logits.shape[0]
    if n < splits:
        raise DiffkitError(f"splits={splits} is more than the {n} samples; "
                           "use at most one split per sample")
    log_p = logits - logsumexp(logits, axis=1, keepdims=True)               # log p(y|x)
    scores = []
    for i in range(splits):
        part = log_p[i * n // splits:(i + 1) * n // splits]
        log_py = logsumexp(part, axis=0) - np.log(part.shape[0])            # log p(y)
        kl = (np.exp(part) * (part - log_py)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return MeanStd(float(np.mean(scores)), float(np.std(scores)))


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 (Binkowski et al. 2018, eq. 2): off-diagonal means of k_xx, k_yy, mean of k_xy."""
    m = x.shape[0]
    k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    off_diagonal = m * (m - 1)
    return float((k_xx.sum() - np.trace(k_xx)) / off_diagonal
                 + (k_yy.sum() - np.trace(k_yy)) / off_diagonal
                 - 2.0 * k_xy.mean())


def kernel_inception_distance(features1, features2, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> MeanStd:
    """KID: mean and std of the unbiased polynomial-kernel MMD^2 over random subsets.

    Each subset draws ``subset_size`` samples (clipped to the smaller set's size) without
    replacement from each set; the generator is seeded so the value is reproducible.
    """
    x = as_feature_array(features1, "first features")
    y = as_feature_array(features2, "second features")
    if x.shape[1] != y.shape[1]:
        raise DiffkitError(f"feature dimensions {x.shape[1]} and {y.shape[1]} differ; "
                           "both sets must come from the same extractor")
    check_range("num_subsets", num_subsets, 1, None, integer=True)
    check_range("subset_size", subset_size, 2, None, integer=True)
    size = min(subset_size, x.shape[0], y.shape[0])
    if size < 2:
        raise DiffkitError(f"KID needs at least 2 samples in each set; got {x.shape[0]} and {y.shape[0]}")
    rng = np.random.default_rng(seed)
    values = [_unbiased_mmd2(x[rng.choice(x.shape[0], size, replace=False)],
                             y[rng.choice(y.shape[0], size, replace=False)])
              for _ in range(num_subsets)]
    return MeanStd(float(np.mean(values)), float(np.std(values)))


def _pairwise_distances(a: torch.Tensor, b: torch.Tensor, batch_size: int):
    """Yield (start, distances of a[start:start+batch] to all of b), batch by batch."""
    for start in range(0, a.shape[0], batch_size):
        yield start, torch.cdist(a[start:start + batch_size], b)


def nearest_neighbour_radii(features: torch.Tensor, k: int = 3, batch_size: int = 1000) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    if features.shape[0] <= k:
        raise DiffkitError(f"k={k} nearest neighbours need more than {k} samples; "
                           f"got {features.shape[0]}")
    radii = torch.empty(features.shape[0], dtype=features.dtype)
    for start, dist in _pairwise_distances(features, features, batch_size):
        # the (k+1)-th smallest distance, since each point is its own nearest neighbour (0)
        radii[start:start + dist.shape[0]] = dist.kthvalue(k + 1, dim=1).values
    return radii


def _coverage(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor,
              batch_size: int) -> float:
    """Fraction of ``queries`` inside at least one ball (manifold point, its radius)."""
    inside = 0
    for _, dist in _pairwise_distances(queries, manifold, batch_size):
        inside += int((dist <= radii[None, :]).any(dim=1).sum())
    return inside / queries.shape[0]


def precision_recall(real_features, fake_features, k: int = 3, batch_size: int = 1000) -> PrecisionRecall:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN radii (default k=3).

    Distances are computed in float64 blocks of ``batch_size`` rows, so memory stays
    O(batch_size * n) rather than O(n^2).
    """
    check_range("k", k, 1, None, integer=True)
    check_range("batch_size", batch_size, 1, None, integer=True)
    real = torch.from_numpy(as_feature_array(real_features, "real features"))
    fake = torch.from_numpy(as_feature_array(fake_features, "fake features"))
    if real.shape[1] != fake.shape[1]:
        raise DiffkitError(f"feature dimensions {real.shape[1]} and {fake.shape[1]} differ; "
                           "both sets must come from the same extractor")
    real_radii = nearest_neighbour_radii(real, k, batch_size)
    fake_radii = nearest_neighbour_radii(fake, k, batch_size)
    precision = _coverage(real, real_radii, fake, batch_size)
    recall = _coverage(fake, fake_radii, real, batch_size)
    return PrecisionRecall(precision, recall)
