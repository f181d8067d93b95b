"""The correlational, discriminative and predictive scores of time series (Diffusion-TS / TimeGAN).

References: the correlational score written straight from Diffusion-TS's formula (``cacf_torch`` with
max_lag 1, ``CrossCorrelLoss``) as numpy loops; the post-hoc GRU scores checked on cases whose answer
is known (identical sets: 0; sets told apart at a glance: 1/2; a target that is a copy of another
channel one step back: far below the MAE of an unpredictable one)."""
import numpy as np
import pytest
import torch

from diffkit import DiffkitError
from diffkit.metrics.correlational import correlational_score, cross_correlations
from diffkit.metrics import posthoc_rnn
from diffkit.metrics.posthoc_rnn import PosthocGRU, authors_hidden_dim, discriminative_score, predictive_score
from diffkit.timeseries import sines, to_unit_range


def _correlations_by_hand(x):
    """x (N, L, C): standardise each channel over (n, t) with the unbiased std, then
    rho[c, c'] = mean_{n,t} z[n,t,c] z[n,t,c'] for c >= c' in row-major order."""
    n, length, channels = x.shape
    out = []
    for c in range(channels):
        for d in range(c + 1):
            zc = (x[:, :, c] - x[:, :, c].mean()) / x[:, :, c].std(ddof=1)
            zd = (x[:, :, d] - x[:, :, d].mean()) / x[:, :, d].std(ddof=1)
            out.append(sum(zc[i, t] * zd[i, t] for i in range(n) for t in range(length)) / (n * length))
    return np.array(out)


def test_correlational_score_is_the_authors_formula_on_a_tiny_example():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(3, 4, 3)), rng.normal(size=(2, 4, 3)) ** 2     # (N, L, C), unequal N
    to_diffkit = lambda a: torch.from_numpy(a.transpose(0, 2, 1).copy())      # noqa: E731  (N, C, L)
    np.testing.assert_allclose(cross_correlations(to_diffkit(real)).numpy(), _correlations_by_hand(real), rtol=1e-12)
    expected = np.abs(_correlations_by_hand(fake) - _correlations_by_hand(real)).sum() / 10
    assert correlational_score(to_diffkit(real), to_diffkit(fake)) == pytest.approx(expected, rel=1e-6)
    assert correlational_score(to_diffkit(real), to_diffkit(real)) == 0.0
    # float64 input is scored in float64: an offset of 1e4 leaves float32 only ~1e-3 of resolution for the noise
    offset_real, offset_fake = 1e4 + 1e-3 * real, 1e4 + 1e-3 * fake
    expected = np.abs(_correlations_by_hand(offset_fake) - _correlations_by_hand(offset_real)).sum() / 10
    assert correlational_score(to_diffkit(offset_real), to_diffkit(offset_fake)) == pytest.approx(expected, rel=1e-6)
    # channels 0 and 1 equal, 2 their negative: correlations 1, 1, -1 (times 1 - 1 / (N L)) off the diagonal
    wave = rng.normal(size=(5, 1, 6))
    rho = cross_correlations(torch.from_numpy(np.concatenate([wave, wave, -wave], axis=1)))
    np.testing.assert_allclose(rho.numpy(), np.array([1, 1, 1, -1, -1, 1]) * (1 - 1 / 30), rtol=1e-12)


def _sines(seed):
    return to_unit_range(sines(160, length=12, channels=2, seed=seed))


def _discriminative(generated, seed):
    """One recipe (150 steps, lr 1e-2) that does tell uniform noise from sines."""
    return discriminative_score(_sines(1), generated, iterations=150, lr=1e-2, seed=seed)


def test_discriminative_score_is_near_zero_for_one_distribution():
    """A test set of 32 + 32 series gives |accuracy - 1/2| about 0.05 by chance alone: the mean of 2
    seeds is checked against 0.12, for the very same series and for another draw of the data. Margin
    (measured over the draws sines seed 1..11, seeds 0, 1): the mean at most 0.086 (3 seeds: 0.083), a
    single seed's score at most 0.109."""
    assert np.mean([_discriminative(_sines(1), s) for s in range(2)]) < 0.12
    assert np.mean([_discriminative(_sines(2), s) for s in range(2)]) < 0.12


def test_discriminative_score_is_near_half_for_two_distributions_and_deterministic():
    noise = torch.rand(160, 2, 12, generator=torch.Generator().manual_seed(0))
    assert min(_discriminative(noise, s) for s in range(2)) > 0.4
    once, again = (discriminative_score(_sines(1), noise, iterations=20, seed=7) for _ in range(2))
    assert once == again


def test_discriminative_score_is_scored_on_the_held_out_series():
    """Two draws of one distribution and a classifier wide enough to learn its 32 + 32 training series by heart
    (on them it is right about always, score about 1/2): on the 8 + 8 held-out series it is at chance."""
    gen = torch.Generator().manual_seed(0)
    real, fake = torch.rand(40, 4, 16, generator=gen), torch.rand(40, 4, 16, generator=gen)
    assert discriminative_score(real, fake, hidden_dim=16, iterations=400, lr=1e-2, seed=0) < 0.2


def test_discriminative_accuracy_is_balanced_over_the_two_test_parts():
    """1000 real against 50 generated series of one distribution (test parts 200 and 10): a classifier that
    calls nearly every series real is right on 95% of the pooled test series (score about 0.45) but on half
    of each part (balanced accuracy 1/2, score 0), as with 50 against 50."""
    gen = torch.Generator().manual_seed(0)
    real, fake = torch.rand(1000, 2, 12, generator=gen), torch.rand(50, 2, 12, generator=gen)
    recipe = dict(hidden_dim=8, iterations=300, lr=1e-2)
    imbalanced = np.mean([discriminative_score(real, fake, seed=s, **recipe) for s in range(2)])
    balanced = np.mean([discriminative_score(real[:50], fake, seed=s, **recipe) for s in range(2)])
    assert imbalanced < 0.15 and abs(imbalanced - balanced) < 0.1


def test_the_discriminator_reads_the_last_state_and_the_predictor_every_step():
    """TimeGAN: the logit is a linear map of the GRU's last state (not pooled over time); the prediction at each
    step a linear map of that step's output."""
    x = torch.randn(3, 7, 4, generator=torch.Generator().manual_seed(0))
    for per_step in (False, True):
        torch.manual_seed(0)
        net = PosthocGRU(4, 5, per_step)
        outputs = net.gru(x)[0]                                            # (B, L, hidden)
        expected = net.head(outputs if per_step else outputs[:, -1]).squeeze(-1)
        torch.testing.assert_close(net(x), expected, rtol=0, atol=0)
        assert net(x).shape == ((3, 7) if per_step else (3,))


def test_the_seed_decides_the_split_and_batches_and_the_callers_random_state_is_kept(monkeypatch):
    """With the initial weights held fixed (every seed's net built as seed 0's), a value still changes with the
    seed (through the 80 / 20 split and the batches) and is the same for the same seed. The caller's random
    state is kept: on the CPU, and no GPU generator is seeded at all (torch.manual_seed would seed all)."""
    gen = torch.Generator().manual_seed(0)
    real, fake = torch.rand(40, 4, 16, generator=gen), torch.rand(40, 4, 16, generator=gen)
    built = posthoc_rnn._seeded_net
    monkeypatch.setattr(posthoc_rnn, "_seeded_net", lambda *args: built(*args[:4], 0, *args[5:]))
    recipe = dict(hidden_dim=16, iterations=60, lr=1e-2)
    values = [discriminative_score(real, fake, seed=s, **recipe) for s in range(4)]
    assert len(set(values)) > 1 and values[2] == discriminative_score(real, fake, seed=2, **recipe)
    predictable = torch.rand(40, 3, 9, generator=gen)
    values = [predictive_score(predictable, predictable, batch_size=8, iterations=10, lr=1e-2, seed=s)
              for s in range(3)]
    assert len(set(values)) == 3
    monkeypatch.undo()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    seeded = []
    for device_module in (torch.cuda, getattr(torch, "mps", None), getattr(torch, "xpu", None)):
        for name in ("manual_seed", "manual_seed_all"):
            if device_module is not None and hasattr(device_module, name):
                monkeypatch.setattr(device_module, name, lambda seed, name=name: seeded.append(name))
    discriminative_score(real, fake, iterations=2, seed=5)
    predictive_score(real, fake, iterations=2, seed=5)
    assert torch.equal(torch.get_rng_state(), state) and seeded == []


def test_predictive_score_is_small_for_a_predictable_series_and_deterministic():
    gen = torch.Generator().manual_seed(0)
    driver = 0.2 + 0.6 * torch.rand(256, 1, 13, generator=gen)
    predictable = torch.cat([driver[:, :, 1:], driver[:, :, :-1]], dim=1)   # channel 1 at t + 1 = channel 0 at t
    unpredictable = torch.cat([driver[:, :, 1:], 0.2 + 0.6 * torch.rand(256, 1, 12, generator=gen)], dim=1)
    good = predictive_score(predictable[:128], predictable[128:], iterations=100, lr=1e-2, seed=0)
    bad = predictive_score(unpredictable[:128], unpredictable[128:], iterations=100, lr=1e-2, seed=0)
    assert good < 0.4 * bad and bad > 0.1
    assert good == predictive_score(predictable[:128], predictable[128:], iterations=100, lr=1e-2, seed=0)
    # trained on the generated series, not the real ones: an unpredictable generator is scored worse
    assert predictive_score(predictable[:128], unpredictable[128:], iterations=100, lr=1e-2, seed=0) > 1.5 * good
    assert authors_hidden_dim(1) == 1 and authors_hidden_dim(5) == 2


@pytest.mark.parametrize("call, message", [
    (lambda r, g: correlational_score(r, g[:, :2]), "real series of 3 channels x length 8 and generated series of 2"),
    (lambda r, g: discriminative_score(r, g[:, :, :5]), "do not match"),
    (lambda r, g: discriminative_score(r[:1], g), "1 real series are too few; at least 2"),
    (lambda r, g: discriminative_score(r[:3], g, train_fraction=0.2), "leaves 0 to train on"),
    (lambda r, g: predictive_score(r[:, :1], g[:, :1]), r"with 1 channel\(s\) are not allowed; it needs at least 2"),
    (lambda r, g: predictive_score(r, g[0]), r"generated series of shape \(3, 8\) are not allowed"),
    (lambda r, g: predictive_score(r, g, iterations=0), "iterations"),
    (lambda r, g: correlational_score(r, torch.full_like(g, float("nan"))), "4 of 4 generated series hold NaN"),
    (lambda r, g: discriminative_score(r, g, seed=-1), r"seed=-1 is out of range; allowed: an integer in \[0, inf\)"),
    (lambda r, g: predictive_score(r, g, seed=1.5), "seed=1.5 must be an integer"),
    (lambda r, g: correlational_score([[[0.0, 1.0], [2.0]]], g), "real series given as list .* are not allowed; give a "
     "tensor or array of real numbers"),
    (lambda r, g: discriminative_score(r, "sines"), "generated series given as str 'sines' are not allowed"),
])
def test_bad_input_is_refused_in_one_line(call, message):
    real, generated = torch.rand(6, 3, 8), torch.rand(4, 3, 8)
    with pytest.raises(DiffkitError, match=message) as err:
        call(real, generated)
    assert "\n" not in str(err.value)
