"""Frechet distance between Gaussians and the feature statistics it is computed from.

Frechet (2-Wasserstein) distance between N(mu1, S1) and N(mu2, S2) (Dowson & Landau 1982;
used as FID by Heusel et al. 2017, eq. 6):

    d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})

All arithmetic is float64 numpy on the CPU. The trace of the matrix square root is taken in
its symmetric form, tr (S1 S2)^{1/2} = tr (S1^{1/2} S2 S1^{1/2})^{1/2}: the inner matrix is
symmetric positive semi-definite, so its square root comes from ``eigh`` with tiny negative
round-off eigenvalues clipped to zero. This needs no eps offset for singular covariances (fewer
samples than dimensions), where the general ``scipy.linalg.sqrtm(S1 @ S2)`` may go complex.

When both feature arrays are at hand and few (``min(n1, n2) < d``), :func:`frechet_distance_of_features`
takes an exact low-rank path that never forms a d x d matrix (:func:`low_rank_frechet_distance`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DiffkitError, DiffkitRuntimeWarning

MIN_SAMPLES = 2  # the documented floor: a covariance needs at least two samples


@dataclass(frozen=True)
class GaussianStats:
    """Mean ``mu`` (d,) and covariance ``sigma`` (d, d) of a feature set, with its sample count."""

    mu: np.ndarray
    sigma: np.ndarray
    num_samples: int

    def save(self, path) -> None:
        """Write ``mu``, ``sigma`` and ``num_samples`` to an .npz file (pytorch-fid's keys)."""
        np.savez(path, mu=self.mu, sigma=self.sigma, num_samples=self.num_samples)

    @classmethod
    def load(cls, path) -> "GaussianStats":
        """Read an .npz with ``mu`` and ``sigma`` (pytorch-fid / diffkit statistics files)."""
        if not Path(path).is_file():
            raise DiffkitError(f"statistics file {str(path)!r} does not exist; expected an .npz "
                               "with arrays 'mu' and 'sigma'")
        with np.load(path, allow_pickle=False) as data:
            if "mu" not in data or "sigma" not in data:
                raise DiffkitError(f"statistics file {str(path)!r} has keys {sorted(data.keys())}; "
                                   "expected 'mu' and 'sigma'")
            count = int(data["num_samples"]) if "num_samples" in data else -1
            return cls(np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64),
                       count)


def check_sample_count(num_samples: int, dim: int, what: str = "features") -> None:
    """Refuse fewer than 2 samples; warn when there are fewer samples than dimensions.

    With n <= d the sample covariance has rank at most n - 1 < d, so the Frechet distance is
    still defined but is a biased, high-variance estimate (FID is usually reported with
    n >= 10,000 for d = 2048).
    """
    if num_samples < MIN_SAMPLES:
        raise DiffkitError(f"{what}: {num_samples} sample(s) is too few; at least {MIN_SAMPLES} "
                           "are needed for a covariance")
    if num_samples <= dim:
        warnings.warn(f"{what}: {num_samples} samples for {dim}-d features gives a rank-deficient "
                      "covariance; the Frechet distance will be biased (use more samples than "
                      "feature dimensions)", DiffkitRuntimeWarning, stacklevel=3)


def as_feature_array(array, what: str = "features") -> np.ndarray:
    """An (n, d) float64 array of real, finite values with d >= 1 from a numpy array or a tensor
    (detached); a one-line DiffkitError otherwise. Every metric's input goes through it."""
    if hasattr(array, "detach"):  # a torch tensor, possibly requiring grad
        array = array.detach().cpu()
        if array.is_complex():
            raise DiffkitError(f"{what} are complex; expected real values")
        array = array.double().numpy()
    if np.iscomplexobj(array):
        raise DiffkitError(f"{what} are complex; expected real values")
    try:
        out = np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError):
        raise DiffkitError(f"{what} of type {type(array).__name__} are not allowed; give an (num_samples, dim) "
                           f"array of numbers") from None
    if out.ndim != 2 or out.shape[1] < 1:
        raise DiffkitError(f"{what} shape {out.shape} is not allowed; expected (num_samples, dim) with dim >= 1")
    if not np.all(np.isfinite(out)):
        raise DiffkitError(f"{what} contain NaN or infinite values; check the images and the extractor")
    return out


def checked_features(features, what: str = "features") -> np.ndarray:
    """:func:`as_feature_array` plus :func:`check_sample_count` (refuses n < 2, warns for n <= d)."""
    feats = as_feature_array(features, what)
    check_sample_count(feats.shape[0], feats.shape[1], what)
    return feats


def feature_statistics(features, what: str = "features") -> GaussianStats:
    """Mean and unbiased covariance (divide by n - 1, as ``np.cov``) of an (n, d) feature array."""
    feats = as_feature_array(features, what)
    check_sample_count(feats.shape[0], feats.shape[1], what)  # warns at the caller's line (stacklevel)
    return fit_gaussian(feats)


def fit_gaussian(feats: np.ndarray) -> GaussianStats:
    """:func:`feature_statistics` of an already validated (n, d) float64 array (no checks)."""
    mu = feats.mean(axis=0)
    centred = feats - mu
    sigma = centred.T @ centred / (feats.shape[0] - 1)
    return GaussianStats(mu, sigma, feats.shape[0])


def check_covariance(name: str, sigma: np.ndarray) -> None:
    """Refuse a matrix that is not a covariance: not symmetric, or with an eigenvalue below
    -1e-6 of its largest diagonal entry (round-off of a sample covariance is ~1e-12 of it).
    Positive semi-definiteness is tested by a Cholesky factorisation of ``sigma + tol I``,
    which succeeds exactly when no eigenvalue is below ``-tol`` (a third of an ``eigh``'s cost)."""
    scale = max(float(np.abs(np.diag(sigma)).max()), float(np.abs(sigma).max()), 1e-300)
    if not np.allclose(sigma, sigma.T, rtol=1e-6, atol=1e-9 * max(1.0, scale)):
        raise DiffkitError(f"{name} is not symmetric; expected a covariance matrix")
    tol = 1e-6 * scale
    try:
        np.linalg.cholesky((sigma + sigma.T) / 2 + tol * np.eye(sigma.shape[0]))
    except np.linalg.LinAlgError:
        low = float(np.linalg.eigvalsh((sigma + sigma.T) / 2)[0])
        raise DiffkitError(f"{name} has a negative eigenvalue ({low:.3g}); expected a positive "
                           "semi-definite covariance matrix") from None


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix via eigh; round-off negatives clipped to 0."""
    eigvals, eigvecs = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (S1 S2)^{1/2} = tr (S1^{1/2} S2 S1^{1/2})^{1/2} for PSD S1, S2."""
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    eigvals = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(eigvals, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al., eq. 6)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    dim = mu1.shape[0]
    if mu1.ndim != 1 or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise DiffkitError(f"statistics shapes mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 "
                           f"{mu2.shape}, sigma2 {sigma2.shape} do not match; expected (d,), (d, d)")
    for name, arr in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.all(np.isfinite(arr)):
            raise DiffkitError(f"{name} contains NaN or infinite values")
    for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
        check_covariance(name, sigma)
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(value, 0.0))


def frechet_distance_of_stats(stats1: GaussianStats, stats2: GaussianStats) -> float:
    """:func:`frechet_distance` of two :class:`GaussianStats`."""
    return frechet_distance(stats1.mu, stats1.sigma, stats2.mu, stats2.sigma)


def low_rank_is_cheaper(n1: int, n2: int, dim: int) -> bool:
    """Whether :func:`low_rank_frechet_distance` beats the covariance path for n1, n2 samples of
    d-dim features: always when ``min(n1, n2) < d``, else when ``n1 n2 d + min^2 max < d^3``
    (the product A B^T and its SVD against the d x d eigen-decompositions)."""
    small, large = min(n1, n2), max(n1, n2)
    return small < dim or n1 * n2 * dim + small * small * large < dim ** 3


def low_rank_frechet_distance(features1: np.ndarray, features2: np.ndarray) -> float:
    """Squared Frechet distance (Heusel et al. 2017, eq. 6) between Gaussians fitted to two
    (n, d) float64 feature arrays, without forming the d x d covariances.

    With centred, scaled features A = (F1 - mu1) / sqrt(n1 - 1) (n1 x d) and B likewise, the
    unbiased covariances are S1 = A^T A and S2 = B^T B. The nonzero eigenvalues of
    S1 S2 = A^T (A B^T) B equal those of (A B^T) B A^T = (A B^T)(A B^T)^T, the squared singular
    values of the n1 x n2 matrix A B^T, so tr (S1 S2)^{1/2} = sum of the singular values of
    A B^T (its nuclear norm), and tr S1 = ||A||_F^2, tr S2 = ||B||_F^2. Exact (no eps, no
    clipping) and PSD by construction, so no covariance check is needed. Cost
    O(n1 n2 d + min(n1, n2)^2 max(n1, n2)) instead of O(d^3). The arrays must already be
    validated (:func:`checked_features`) with equal d.
    """
    mu1, mu2 = features1.mean(axis=0), features2.mean(axis=0)
    a = (features1 - mu1) / np.sqrt(features1.shape[0] - 1)
    b = (features2 - mu2) / np.sqrt(features2.shape[0] - 1)
    diff = mu1 - mu2
    nuclear = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    value = diff @ diff + np.sum(a * a) + np.sum(b * b) - 2.0 * nuclear
    return float(max(value, 0.0))


def frechet_distance_of_checked_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """Frechet distance of two validated (n, d) feature arrays (see :func:`checked_features`): the
    exact low-rank path when :func:`low_rank_is_cheaper`, the covariance path otherwise."""
    if features1.shape[1] != features2.shape[1]:
        raise DiffkitError(f"feature dimensions {features1.shape[1]} and {features2.shape[1]} do not match; "
                           "expected two (num_samples, dim) arrays with the same dim")
    if low_rank_is_cheaper(features1.shape[0], features2.shape[0], features1.shape[1]):
        return low_rank_frechet_distance(features1, features2)
    return frechet_distance_of_stats(fit_gaussian(features1), fit_gaussian(features2))


def frechet_distance_of_features(features1, features2) -> float:
    """Frechet distance between Gaussians fitted to two (n, d) feature arrays (FID for pool3);
    exact low-rank algebra when ``min(n1, n2) < d`` (:func:`low_rank_frechet_distance`)."""
    return frechet_distance_of_checked_features(checked_features(features1, "first features"),
                                                checked_features(features2, "second features"))
