"""Time series: the Sines generator, TS2Vec (loss, encoder), Context-FID, and sampling (B, C, L) data.

References: Diffusion-TS's ``sine_data_generation`` transcribed as loops; TS2Vec eqs. (1)-(3) and
Alg. 1 written out term by term in numpy; FID by the usual scipy ``sqrtm`` formula (pytorch-fid);
exact Gaussian denoisers and the closed-form probability-flow ODE (diffkit.analytic)."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch

import diffkit
from diffkit import Denoiser, DiffkitError, NoiseSchedule
from diffkit.analytic import GaussianMixture, gaussian_ode_solution
from diffkit.losses import training_losses
from diffkit.metrics.context_fid import context_fid, context_fid_statistics, train_context_fid_encoder
from diffkit.metrics.ts2vec import (TS2VecConfig, TS2VecEncoder, authors_iterations, hierarchical_contrastive_loss,
                                    random_crops,
                                    ts2vec_embeddings)
from diffkit.models.temporal import TemporalUNet, TemporalUNetConfig
from diffkit.samplers.registry import REGISTRY
from diffkit.sampling import plan
from diffkit.timeseries import sines, to_unit_range


# --------------------------------------------------------------------------- Sines
def _diffusion_ts_sines(no, seq_len, dim, seed):
    """Diffusion-TS's generator as loops (one scalar draw at a time), then its [-1, 1] map."""
    state = np.random.RandomState(seed)
    data = []
    for _ in range(no):
        temp = []
        for _ in range(dim):
            freq = state.uniform(0, 0.1)
            phase = state.uniform(0, 0.1)
            temp.append([math.sin(freq * j + phase) for j in range(seq_len)])
        data.append((np.transpose(np.asarray(temp)) + 1) * 0.5)    # (seq_len, dim) in [0, 1]
    return np.array(data) * 2 - 1


def test_sines_match_the_diffusion_ts_generator_and_their_ranges():
    x = sines(7, length=24, channels=5, seed=123)
    assert x.shape == (7, 5, 24) and x.dtype == torch.float32
    ref = _diffusion_ts_sines(7, 24, 5, 123)                         # (N, L, C)
    np.testing.assert_allclose(x.numpy(), ref.transpose(0, 2, 1), atol=1e-7)
    big = sines(500, seed=0).double()
    phase = torch.asin(big[:, :, 0])                                  # x(0) = sin(phi)
    freq = torch.asin(big[:, :, 1]) - phase                           # f + phi < pi / 2
    for v in (phase, freq):
        assert v.min() >= -1e-6 and v.max() <= 0.1 + 1e-6 and v.max() > 0.09 and v.min() < 0.01
    assert big.min() >= 0 and big.max() <= 1                          # f t + phi in [0, 2.4]
    assert torch.equal(sines(3, seed=5), sines(3, seed=5)) and not torch.equal(sines(3, seed=5), sines(3, seed=6))
    assert torch.allclose(to_unit_range(x), (x + 1) / 2)
    with pytest.raises(DiffkitError, match="num"):
        sines(0)


# --------------------------------------------------------------------------- TS2Vec loss
def _info_nce(anchor, positive, negatives):
    """-log e^{a.p} / (e^{a.p} + sum_n e^{a.n})."""
    pos = math.exp(anchor @ positive)
    return -math.log(pos / (pos + sum(math.exp(anchor @ n) for n in negatives)))


def _dual_loss(r1, r2, alpha):
    """alpha L_inst + (1 - alpha) L_temp at one level, TS2Vec eqs. (1)-(2) term by term, each
    averaged over series, timestamps and both views as anchors; a term with no negatives (one series,
    one timestamp) is 0, as in the authors' code. r1, r2: (N, T, C) float64."""
    n, t_len, _ = r1.shape
    temp, inst = [], []
    for a, b in ((r1, r2), (r2, r1)):
        for i in range(n):
            for t in range(t_len):
                if t_len > 1:   # eq. (1): other timestamps of series i, both views
                    temp.append(_info_nce(a[i, t], b[i, t], [b[i, s] for s in range(t_len) if s != t]
                                          + [a[i, s] for s in range(t_len) if s != t]))
                if n > 1:       # eq. (2): other series at timestamp t, both views
                    inst.append(_info_nce(a[i, t], b[i, t], [b[j, t] for j in range(n) if j != i]
                                          + [a[j, t] for j in range(n) if j != i]))
    return alpha * (np.mean(inst) if inst else 0.0) + (1 - alpha) * (np.mean(temp) if temp else 0.0)


def _hierarchical_by_hand(r1, r2, alpha=0.5):
    """TS2Vec Alg. 1: dual loss per level, max-pool by 2 along time (odd tail dropped), mean over levels."""
    losses = []
    while True:
        losses.append(_dual_loss(r1, r2, alpha))
        if r1.shape[1] == 1:
            return np.mean(losses)
        half = r1.shape[1] // 2
        r1 = np.maximum(r1[:, 0:2 * half:2], r1[:, 1:2 * half:2])
        r2 = np.maximum(r2[:, 0:2 * half:2], r2[:, 1:2 * half:2])


@pytest.mark.parametrize("shape", [(3, 4, 2), (2, 5, 3), (1, 3, 2), (4, 1, 2)])
@pytest.mark.parametrize("alpha", [0.5, 0.2])
def test_hierarchical_contrastive_loss_is_the_papers_sum(shape, alpha):
    g = torch.Generator().manual_seed(sum(shape))
    z1, z2 = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    got = hierarchical_contrastive_loss(z1, z2, alpha=alpha).item()
    assert got == pytest.approx(_hierarchical_by_hand(z1.numpy(), z2.numpy(), alpha), rel=1e-10, abs=1e-12)


def test_hierarchical_loss_refuses_mismatched_views():
    with pytest.raises(DiffkitError, match="views of shapes"):
        hierarchical_contrastive_loss(torch.zeros(2, 3, 4), torch.zeros(2, 4, 4))


def test_random_crops_overlap_as_in_the_paper():
    rng = np.random.default_rng(0)
    for _ in range(200):
        start1, len1, start2, len2, overlap = random_crops(24, 5, rng)
        assert 2 <= overlap <= min(len1, len2)
        assert (start1 >= 0).all() and (start2 + len2 <= 24).all()
        # view 1 ends where the overlap ends; view 2 starts where it starts
        assert np.array_equal(start1 + len1 - overlap, start2)


# --------------------------------------------------------------------------- encoder
def test_encoder_shape_and_receptive_field():
    config = TS2VecConfig(input_dims=3, hidden_dims=8, output_dims=6, depth=2)
    torch.manual_seed(0)
    enc = TS2VecEncoder(config).eval()
    assert enc.receptive_field == 1 + 2 * 2 * (1 + 2 + 4) == 29
    assert TS2VecEncoder(TS2VecConfig(input_dims=1)).receptive_field == 1 + 4 * (2 ** 11 - 1)
    x = torch.randn(2, 3, 64, requires_grad=True)
    out = enc(x)
    assert out.shape == (2, 64, 6)
    out[0, 32].sum().backward()
    touched = (x.grad[0].abs().sum(0) > 0).nonzero().flatten()
    assert touched.min() == 32 - 14 and touched.max() == 32 + 14        # half the receptive field each side
    assert x.grad[1].abs().sum() == 0
    emb = ts2vec_embeddings(enc, x.detach())
    np.testing.assert_allclose(emb, out.detach().amax(dim=1).double().numpy(), rtol=1e-6)


def test_timestamp_masking_zeroes_the_masked_inputs():
    enc = TS2VecEncoder(TS2VecConfig(input_dims=2, hidden_dims=4, output_dims=4, depth=1, dropout=0.0)).train()
    x, y = torch.randn(3, 2, 10), torch.randn(3, 2, 10)
    none = torch.zeros(3, 10, dtype=torch.bool)
    assert torch.equal(enc(x, mask=none), enc(y, mask=none))            # nothing of the input is left
    some = torch.ones(3, 10, dtype=torch.bool)
    some[:, 4] = False
    y[:, :, 4] = 100.0
    x[:, :, 4] = -100.0
    y[:, :, :4], y[:, :, 5:] = x[:, :, :4], x[:, :, 5:]
    assert torch.allclose(enc(x, mask=some), enc(y, mask=some))
    with pytest.raises(DiffkitError, match="expected \\(batch, 2, length\\)"):
        enc(torch.randn(3, 10, 2))


# --------------------------------------------------------------------------- Context-FID
SMALL = TS2VecConfig(input_dims=5, hidden_dims=16, output_dims=16, depth=3)


@pytest.fixture(scope="module")
def encoder():
    return train_context_fid_encoder(sines(300, seed=1), iterations=30, seed=0, config=SMALL)


def _fid_by_hand(a, b):
    """pytorch-fid's formula: |mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_context_fid_is_the_frechet_distance_of_max_pooled_embeddings(encoder):
    real, fake = sines(300, seed=2), sines(300, seed=3) * 0.9
    with torch.no_grad():
        emb_real = encoder(real).amax(dim=1).double().numpy()
        emb_fake = encoder(fake).amax(dim=1).double().numpy()
    assert context_fid(encoder, real, fake) == pytest.approx(_fid_by_hand(emb_real, emb_fake), rel=1e-6)
    stats = context_fid_statistics(encoder, real)
    np.testing.assert_allclose(stats.mu, emb_real.mean(0), rtol=1e-10)


def test_context_fid_is_zero_on_itself_symmetric_and_grows_with_a_shift(encoder):
    real, other = sines(300, seed=2), sines(300, seed=4)
    assert context_fid(encoder, real, real) == pytest.approx(0.0, abs=1e-8)
    same = context_fid(encoder, real, other)
    assert same == pytest.approx(context_fid(encoder, other, real), rel=1e-6)
    assert context_fid(encoder, real, other * 0.7 + 0.1) > 5 * same
    assert context_fid(encoder, real, other + 0.2) > 5 * same


def test_encoder_training_is_seeded():
    data = sines(40, seed=1)
    a = train_context_fid_encoder(data, iterations=3, seed=5, config=SMALL)
    b = train_context_fid_encoder(data, iterations=3, seed=5, config=SMALL)
    c = train_context_fid_encoder(data, iterations=3, seed=6, config=SMALL)
    assert np.array_equal(ts2vec_embeddings(a, data), ts2vec_embeddings(b, data))
    assert not np.array_equal(ts2vec_embeddings(a, data), ts2vec_embeddings(c, data))
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    with pytest.raises(DiffkitError, match="series of shape"):
        train_context_fid_encoder(torch.zeros(5, 24), iterations=1)


def test_the_encoder_kept_is_the_mean_of_the_initial_weights_and_every_iterate(monkeypatch):
    """The authors' TS2Vec.fit averages (AveragedModel) the initial weights and each iterate."""
    snapshots, step = [], torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        snapshots.append([p.detach().clone() for p in self.param_groups[0]["params"]])
        return out
    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    encoder = train_context_fid_encoder(sines(40, seed=1), iterations=4, seed=5, config=SMALL)
    with torch.random.fork_rng():
        torch.manual_seed(5)  # the documented seeding of the initial weights
        initial = [p.detach().clone() for p in TS2VecEncoder(SMALL).parameters()]
    assert len(snapshots) == 4
    for i, p in enumerate(encoder.parameters()):
        torch.testing.assert_close(p, (initial[i] + sum(s[i] for s in snapshots)) / 5, rtol=1e-5, atol=1e-6)


def test_iterations_follow_the_authors_rule_and_embeddings_use_eval_mode(monkeypatch, encoder):
    assert (authors_iterations(100_000), authors_iterations(100_001)) == (200, 600)
    assert authors_iterations(2000 * 5 * 24) == 600  # the Sines benchmark's real set
    steps, step = [], torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: (steps.append(1), step(self, *a, **k))[1])
    tiny = TS2VecConfig(input_dims=5, hidden_dims=4, output_dims=4, depth=1)
    train_context_fid_encoder(sines(20, length=8, seed=1), seed=0, config=tiny)  # 800 values
    assert len(steps) == 200
    data = sines(30, seed=7)
    want = ts2vec_embeddings(encoder, data)
    encoder.train()  # masks and dropout must be off for the embeddings, and the mode restored
    try:
        np.testing.assert_array_equal(ts2vec_embeddings(encoder, data), want)
        assert encoder.training
    finally:
        encoder.eval()


def test_context_fid_refuses_non_finite_series_and_training_drops_all_nan_series(encoder):
    real, fake = sines(50, seed=2), sines(50, seed=3)
    fake[3, 1, 4] = float("nan")
    with pytest.raises(DiffkitError, match="1 of 50 series hold NaN or infinite values"):
        context_fid(encoder, real, fake)
    with pytest.raises(DiffkitError, match="series of shape"):
        context_fid(encoder, real, fake[:0])
    data = sines(40, seed=1)
    padded = torch.cat([data, torch.full((3, 5, 24), float("nan"))])
    a = train_context_fid_encoder(padded, iterations=3, seed=5, config=SMALL)
    b = train_context_fid_encoder(data, iterations=3, seed=5, config=SMALL)
    np.testing.assert_array_equal(ts2vec_embeddings(a, data), ts2vec_embeddings(b, data))


def test_bad_time_series_inputs_are_one_line_errors():
    for bad in ({"hidden_dims": 0}, {"output_dims": 0}, {"kernel_size": 0}, {"dropout": 1.5}):
        with pytest.raises(DiffkitError, match=next(iter(bad))):
            TS2VecEncoder(TS2VecConfig(input_dims=5, **bad))
    enc = TS2VecEncoder(SMALL)
    with pytest.raises(DiffkitError, match=r"mask of shape \(2, 5\) is not allowed; expected \(2, 24\)"):
        enc(sines(2, seed=0), mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(DiffkitError, match=r"temporal_unit=4 needs crops of at least 2\^\(temporal_unit \+ 1\) = 32"):
        train_context_fid_encoder(sines(10, seed=0), iterations=1, config=SMALL, temporal_unit=4)
    net = TemporalUNet(TemporalUNetConfig(in_channels=5, model_channels=8, channel_mult=(1, 2)))
    with pytest.raises(DiffkitError, match=r"t has shape \(3,\)"):
        net(torch.zeros(2, 5, 8), torch.zeros(3))
    with pytest.raises(DiffkitError, match="dropout=2"):
        TemporalUNet(TemporalUNetConfig(dropout=2.0))


# --------------------------------------------------------------------------- sampling (B, C, L)
SCHEDULE = NoiseSchedule.linear(100)


@pytest.fixture(scope="module")
def gaussian():
    return GaussianMixture.random(dim=2 * 6, num_components=1, seed=3, spread=0.5)


def test_every_sampler_takes_time_series_shapes(gaussian):
    """(B, C, L) noise gives what the same noise flattened to (B, C L) gives, for every sampler."""
    den = Denoiser(gaussian.network(SCHEDULE), SCHEDULE)
    noise = torch.randn(3, 2, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name, info in REGISTRY.items():
        kwargs = {} if info.adaptive else {"steps": 2 * info.calls_per_step if info.calls_per_step > 1 else 4}
        series = diffkit.sample(den, noise, name, seed=1, progress=False, **kwargs)
        flat = diffkit.sample(den, noise.reshape(3, 12), name, seed=1, progress=False, **kwargs)
        assert series.shape == (3, 2, 6), name
        torch.testing.assert_close(series.reshape(3, 12), flat, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("sampler, steps, tol", [("ddim", 100, 4e-2), ("dpm-solver++-2m", 20, 1e-2),
                                                ("dpm-solver++-2m", 5, 5e-2)])
def test_deterministic_samplers_follow_the_exact_flow_on_series(gaussian, sampler, steps, tol):
    den = Denoiser(gaussian.network(SCHEDULE), SCHEDULE)
    noise = torch.randn(4, 2, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, grid, _, _ = plan(den, sampler, steps)
    out = diffkit.sample(den, noise, sampler, steps=steps, progress=False)
    t, s = grid[:1].double(), grid[-1:].double().clamp(min=0)
    end_alpha, end_sigma = (SCHEDULE.alpha(s), SCHEDULE.sigma(s)) if grid[-1] >= 0 else (1.0, 0.0)
    exact = gaussian_ode_solution(gaussian.mean(), gaussian.cov(), noise.reshape(4, 12), SCHEDULE.alpha(t),
                                  SCHEDULE.sigma(t), end_alpha, end_sigma)
    assert (out.reshape(4, 12) - exact).abs().max() < tol


def test_temporal_unet_trains_with_diffkits_loss_and_samples():
    torch.manual_seed(0)
    net = TemporalUNet(TemporalUNetConfig(in_channels=5, model_channels=8, channel_mult=(1, 2)))
    x0 = sines(4, seed=0)
    out = training_losses(net, SCHEDULE, x0, torch.tensor([0, 10, 50, 99]), torch.randn_like(x0),
                          prediction_type="v_prediction")
    out.loss.mean().backward()
    assert out.loss.shape == (4,) and torch.isfinite(out.loss).all()
    assert all(p.grad is not None for p in net.parameters())
    den = Denoiser(net, SCHEDULE, prediction_type="v_prediction")
    samples = diffkit.sample(den, (2, 5, 24), "dpm-solver++-2m", steps=3, seed=0, progress=False)
    assert samples.shape == (2, 5, 24) and torch.isfinite(samples).all()
    with pytest.raises(DiffkitError, match="multiple of 2"):
        net(torch.zeros(1, 5, 23), torch.zeros(1))
