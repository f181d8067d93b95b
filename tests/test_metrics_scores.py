"""IS, KID and precision/recall against closed forms and hand-computed cases."""

import numpy as np
import pytest

from diffkit.errors import DiffkitError
from diffkit.metrics import inception_score, kernel_inception_distance, precision_recall


def test_inception_score_of_one_class_is_one():
    logits = np.zeros((500, 1008))
    logits[:, 7] = 50.0
    score = inception_score(logits)
    assert score.mean == pytest.approx(1.0, abs=1e-9) and score.std == pytest.approx(0, abs=1e-9)


def test_inception_score_of_confident_uniform_classes_is_num_classes():
    labels = np.arange(1000) % 10
    logits = np.full((1000, 10), -30.0)
    logits[np.arange(1000), labels] = 30.0
    score = inception_score(logits, splits=10)
    assert score.mean == pytest.approx(10.0, rel=1e-6)


def test_inception_score_two_class_closed_form():
    # Half the samples predict (q, 1-q), half (1-q, q): p(y) = (1/2, 1/2) and
    # KL = log 2 - H(q) for every sample, so IS = 2 exp(-H(q)).
    q = 0.8
    row = np.log([q, 1 - q])
    logits = np.array([row, row[::-1]] * 50)
    entropy = -(q * np.log(q) + (1 - q) * np.log(1 - q))
    assert inception_score(logits, splits=2).mean == pytest.approx(2 * np.exp(-entropy), rel=1e-12)


def _confident(classes, num_classes, other=-30.0):
    logits = np.full((len(classes), num_classes), other)
    logits[np.arange(len(classes)), classes] = 30.0
    return logits


def test_inception_score_splits_as_the_original_code():
    # parts [i N // splits, (i + 1) N // splits) (openai/improved-gan): N = 5, 2 splits ->
    # samples {0, 1} (classes A, B: IS 2) and {2, 3, 4} (A, C, D: IS 3); confident predictions
    # give IS = exp(H(p(y))). np.array_split's {0, 1, 2} / {3, 4} would give 1.89 and 2.
    score = inception_score(_confident([0, 1, 0, 2, 3], 5), splits=2)
    assert score.mean == pytest.approx(2.5, rel=1e-9) and score.std == pytest.approx(0.5, rel=1e-9)


def test_inception_score_with_underflowing_classes_is_finite():
    # 1008 classes, 10 used, the rest at logit -1000: their p(y) underflows to 0 in float64
    score = inception_score(_confident(np.arange(1000) % 10, 1008, other=-1000.0))
    assert score.mean == pytest.approx(10.0, rel=1e-9)


def test_inception_score_rejects_more_splits_than_samples():
    with pytest.raises(DiffkitError, match="splits=10"):
        inception_score(np.zeros((5, 3)), splits=10)


def _kid_by_definition(x, y):
    """Unbiased MMD^2 (Binkowski et al. 2018, eq. 2) by explicit double sums."""
    d, m = x.shape[1], x.shape[0]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_equals_the_unbiased_estimator_on_one_subset():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 3)) + 0.5
    kid = kernel_inception_distance(x, y, num_subsets=3, subset_size=1000)  # clipped to 7
    assert kid.mean == pytest.approx(_kid_by_definition(x, y), rel=1e-10)
    assert kid.std == pytest.approx(0.0, abs=1e-12)  # every subset is the whole set


def test_kid_is_unbiased_for_two_draws_of_one_distribution():
    rng = np.random.default_rng(1)
    estimates = [kernel_inception_distance(rng.normal(size=(200, 16)), rng.normal(size=(200, 16)),
                                           num_subsets=1).mean for _ in range(40)]
    standard_error = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates)) < 3 * standard_error
    shifted = kernel_inception_distance(rng.normal(size=(200, 16)), rng.normal(size=(200, 16)) + 1.0,
                                        num_subsets=5, subset_size=100)
    assert shifted.mean > 20 * np.std(estimates)


def test_precision_recall_of_a_set_with_itself_is_one():
    feats = np.random.default_rng(2).normal(size=(300, 8))
    assert precision_recall(feats, feats, batch_size=64) == (1.0, 1.0)


def test_precision_recall_of_far_apart_sets_is_zero():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(200, 8)), rng.normal(size=(150, 8)) + 100.0
    assert precision_recall(real, fake, batch_size=50) == (0.0, 0.0)


def test_precision_recall_hand_computed_case():
    # 1-D, k=1. Real {0,1,2,3,4}: every radius is 1. Fake {0.5, 10}: radius 9.5 each.
    # Precision: 0.5 lies within 1 of a real point, 10 does not -> 1/2.
    # Recall: every real point is within 9.5 of 0.5 -> 1.
    real = np.arange(5.0)[:, None]
    fake = np.array([[0.5], [10.0]])
    assert precision_recall(real, fake, k=1, batch_size=2) == (0.5, 1.0)


def test_precision_recall_needs_more_samples_than_k():
    with pytest.raises(DiffkitError, match="k=3"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))
