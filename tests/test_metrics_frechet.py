"""Frechet distance against closed forms; feature statistics; the sample-count floor."""
import gzip
import os
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from diffkit.errors import DiffkitError
from diffkit.metrics import (GaussianStats, extract_features, feature_statistics, frechet_distance,
                             frechet_distance_of_features)

DATA = Path(os.environ.get("DIFFKIT_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def test_one_dimensional_closed_form():
    # W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0, rel=1e-12)
    assert frechet_distance(1.0, 4.0, -2.0, 9.0) == pytest.approx(10.0, rel=1e-12)


def test_diagonal_covariances_closed_form_and_symmetry():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=50), rng.normal(size=50)
    var1, var2 = rng.uniform(0.1, 3, 50), rng.uniform(0.1, 3, 50)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    d12 = frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    d21 = frechet_distance(mu2, np.diag(var2), mu1, np.diag(var1))
    assert d12 == pytest.approx(expected, rel=1e-10)
    assert d21 == pytest.approx(expected, rel=1e-10)


def test_full_covariances_match_scipy_sqrtm_and_are_symmetric():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(20, 20)), rng.normal(size=(20, 20))
    s1, s2 = a @ a.T + 0.1 * np.eye(20), b @ b.T + 0.1 * np.eye(20)
    mu1, mu2 = rng.normal(size=20), rng.normal(size=20)
    reference = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-9)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(reference, rel=1e-9)


def test_singular_rank_one_covariances_closed_form():
    # S1 = a a^T, S2 = b b^T: S1 S2 = (a.b) a b^T has one nonzero eigenvalue (a.b)^2,
    # so tr (S1 S2)^{1/2} = |a.b| and d^2 = |a|^2 + |b|^2 - 2 |a.b|.
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=8), rng.normal(size=8)
    zero = np.zeros(8)
    expected = a @ a + b @ b - 2 * abs(a @ b)
    assert frechet_distance(zero, np.outer(a, a), zero, np.outer(b, b)) == pytest.approx(expected, rel=1e-8)


def test_identical_statistics_give_zero():
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(300, 64))
    stats = feature_statistics(feats)
    assert frechet_distance(stats.mu, stats.sigma, stats.mu, stats.sigma) == pytest.approx(0, abs=1e-8)
    # rank-deficient (n < d) covariance: still zero, no complex parts
    with pytest.warns(RuntimeWarning, match="rank-deficient"):
        small = feature_statistics(feats[:10])
    assert frechet_distance(small.mu, small.sigma, small.mu, small.sigma) == pytest.approx(0, abs=1e-8)


def test_feature_statistics_are_mean_and_unbiased_covariance():
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(100, 5)) @ rng.normal(size=(5, 5))
    stats = feature_statistics(feats)
    np.testing.assert_allclose(stats.mu, feats.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(feats, rowvar=False), rtol=1e-10)
    assert stats.num_samples == 100


def test_sample_floor_refuses_one_sample_and_bad_shapes():
    with pytest.raises(DiffkitError, match="at least 2"):
        feature_statistics(np.zeros((1, 4)))
    with pytest.raises(DiffkitError, match="expected \\(num_samples, dim\\)"):
        feature_statistics(np.zeros(4))
    with pytest.raises(DiffkitError, match="NaN"):
        feature_statistics(np.array([[0.0, np.nan], [1.0, 2.0], [3.0, 1.0]]))
    with pytest.raises(DiffkitError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_large_sample_distance_approaches_population_value():
    # Features drawn from two known Gaussians: the plug-in estimate converges to the closed form.
    rng = np.random.default_rng(5)
    x = rng.normal(size=(20000, 3)) * np.array([1.0, 2.0, 0.5])
    y = rng.normal(size=(20000, 3)) * np.array([1.5, 1.0, 0.5]) + np.array([1.0, 0.0, 0.0])
    expected = 1.0 + (1 - 1.5) ** 2 + (2 - 1) ** 2 + 0.0
    assert frechet_distance_of_features(x, y) == pytest.approx(expected, abs=0.05)


def test_stats_file_round_trip(tmp_path):
    stats = feature_statistics(np.random.default_rng(6).normal(size=(30, 4)))
    stats.save(tmp_path / "s.npz")
    loaded = GaussianStats.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert loaded.num_samples == 30
    with pytest.raises(DiffkitError, match="does not exist"):
        GaussianStats.load(tmp_path / "missing.npz")


def _read_idx_images(path: Path, count: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        header = handle.read(16)
        assert int.from_bytes(header[:4], "big") == 2051
        rows, cols = int.from_bytes(header[8:12], "big"), int.from_bytes(header[12:16], "big")
        data = handle.read(count * rows * cols)
    return np.frombuffer(data, np.uint8).reshape(count, 1, rows, cols)


@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason="MNIST test data not available")
def test_distance_grows_monotonically_with_added_noise():
    images = torch.from_numpy(_read_idx_images(DATA / "mnist" / "t10k-images-idx3-ubyte.gz", 2000).copy())
    images = images.float() / 127.5 - 1
    real, other = images[:1000], images[1000:]
    generator = torch.Generator().manual_seed(0)
    projection = torch.randn(784, 32, generator=generator) / 28.0

    def random_features(batch):  # a fixed random-feature extractor
        return torch.tanh(batch.flatten(1) @ projection)

    reference = extract_features(random_features, real, progress=False)
    distances = []
    for strength in (0.0, 0.1, 0.2, 0.4, 0.8):
        noisy = other + strength * torch.randn(other.shape, generator=generator)
        distances.append(frechet_distance_of_features(reference, extract_features(
            random_features, noisy, progress=False)))
    assert all(a < b for a, b in zip(distances, distances[1:])), distances
    assert distances[0] < 0.1 * distances[-1]


def test_malformed_inputs_are_one_line_errors():
    import numpy as np
    import pytest
    import torch

    from diffkit.errors import DiffkitError
    from diffkit.metrics import feature_statistics, frechet_distance, kernel_inception_distance
    with pytest.raises(DiffkitError, match="shapes"):
        frechet_distance(np.zeros((2, 2)), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(DiffkitError, match="sigma1 is not symmetric"):
        frechet_distance(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2))
    # eigenvalues 3 and -1: symmetric but not a covariance (the clipped square root hid it)
    with pytest.raises(DiffkitError, match=r"sigma2 has a negative eigenvalue \(-1\)"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.array([[1.0, 2.0], [2.0, 1.0]]))
    # a rank-deficient sample covariance (3 samples in 5-d) and its round-off are accepted
    few = feature_statistics(np.random.default_rng(0).normal(size=(3, 5)))
    assert frechet_distance(few.mu, few.sigma, few.mu, few.sigma) < 1e-9
    with pytest.raises(DiffkitError, match="dim >= 1"):
        feature_statistics(np.zeros((5, 0)))
    with pytest.raises(DiffkitError, match="complex"):
        feature_statistics(np.zeros((5, 2), dtype=complex))
    stats = feature_statistics(torch.randn(5, 2, requires_grad=True))  # a tensor that requires grad is fine
    assert stats.sigma.shape == (2, 2)
    with pytest.raises(DiffkitError, match="dim >= 1"):
        kernel_inception_distance(np.zeros((5, 0)), np.zeros((5, 0)))


def _covariance_path_of_known_rank(s1, s2, n1: int, n2: int) -> float:
    """The covariance path with the eigenvalues beyond the known ranks (min(n - 1, d)) set to 0
    instead of clipped: the plain path keeps sqrt(round-off) ~ 1e-8 relative when n < d."""
    def top(eigvals, rank):
        return np.sqrt(np.clip(np.where(np.arange(eigvals.size) >= eigvals.size - rank, eigvals, 0.0), 0, None))
    rank1 = min(n1 - 1, s1.mu.size)
    eigvals, eigvecs = np.linalg.eigh(s1.sigma)
    root = (eigvecs * top(eigvals, rank1)) @ eigvecs.T
    inner = root @ s2.sigma @ root
    diff = s1.mu - s2.mu
    return (diff @ diff + np.trace(s1.sigma) + np.trace(s2.sigma)
            - 2 * top(np.linalg.eigvalsh((inner + inner.T) / 2), min(rank1, n2 - 1)).sum())


@pytest.mark.parametrize("n1, n2", [(30, 45), (64, 64), (150, 110), (20, 100)],
                         ids=["n<d", "n=d", "n>d", "n1<d<n2"])
def test_low_rank_path_equals_covariance_path(n1, n2):
    # tr (S1 S2)^{1/2} = nuclear norm of A B^T (A, B: centred features / sqrt(n - 1)), d = 64
    from diffkit.metrics.frechet import low_rank_frechet_distance
    rng = np.random.default_rng(n1 + n2)
    x = rng.normal(size=(n1, 64)) @ rng.normal(size=(64, 64))
    y = rng.normal(size=(n2, 64)) @ rng.normal(size=(64, 64)) * 0.7 + 0.3
    with pytest.warns(RuntimeWarning) if min(n1, n2) <= 64 else nullcontext():
        s1, s2 = feature_statistics(x), feature_statistics(y)
    reference = _covariance_path_of_known_rank(s1, s2, n1, n2)
    assert low_rank_frechet_distance(x, y) == pytest.approx(reference, rel=1e-9)
    assert low_rank_frechet_distance(y, x) == pytest.approx(reference, rel=1e-9)
    assert frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma) == pytest.approx(reference, rel=1e-7)


def test_low_rank_path_closed_forms_and_dispatch(monkeypatch):
    from diffkit.metrics import frechet
    rng = np.random.default_rng(7)
    # n = 2 < d: features {a, -a} and {m + b, m - b} have covariances 2 a a^T and 2 b b^T (divide by
    # n - 1 = 1), so d^2 = |m|^2 + 2|a|^2 + 2|b|^2 - 4 |a.b| (rank-one closed form above).
    a, b, m = rng.normal(size=(3, 16))
    expected = m @ m + 2 * a @ a + 2 * b @ b - 4 * abs(a @ b)
    assert frechet.low_rank_frechet_distance(np.stack([a, -a]), np.stack([m + b, m - b])) == pytest.approx(
        expected, rel=1e-12)
    # a small full-rank case against scipy.linalg.sqrtm
    x, y = rng.normal(size=(9, 6)), rng.normal(size=(12, 6)) * 1.5 + 1
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    reference = (np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)
    assert frechet.low_rank_frechet_distance(x, y) == pytest.approx(reference, rel=1e-9)
    # frechet_distance_of_features takes the low-rank path for n < d: no d x d covariance is checked
    assert frechet.low_rank_is_cheaper(500, 500, 2048) and not frechet.low_rank_is_cheaper(5000, 5000, 2048)
    monkeypatch.setattr(frechet, "check_covariance", lambda *args: pytest.fail("covariance path taken"))
    with pytest.warns(RuntimeWarning, match="rank-deficient"):
        assert frechet_distance_of_features(np.stack([a, -a]), np.stack([m + b, m - b])) == pytest.approx(
            expected, rel=1e-12)
    with pytest.raises(DiffkitError, match="feature dimensions 16 and 6 do not match"), pytest.warns(RuntimeWarning):
        frechet_distance_of_features(np.stack([a, -a, a]) + np.arange(16), np.hstack([x, x]).reshape(-1, 6))
