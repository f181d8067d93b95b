"""DDPM Sec. 4.3: progressive generation (Fig. 6) and rate-distortion (Fig. 5) against closed forms
of Gaussian data with the exact model (diffkit.analytic)."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import diffkit
from diffkit import Denoiser, DiffkitError, NoiseSchedule
from diffkit.analytic import GaussianMixture
from diffkit.evaluation import nll_bits_per_dim, strided_timesteps
from diffkit.likelihood import _sum_weights, tail_sums
from diffkit.progressive import FrameRecorder, frame_positions, progressive_x0, rate_distortion

F64 = torch.float64
SHAPE = (3, 1, 2, 2)


def test_frame_positions_spread_evenly_from_the_first_step_to_the_sample():
    assert frame_positions(50, 8) == [0, 7, 14, 21, 29, 36, 43, 50]
    assert frame_positions(10, 11) == list(range(11))
    assert frame_positions(1, 2) == [0, 1]
    for bad in (1, 12):
        with pytest.raises(DiffkitError, match="frames"):
            frame_positions(10, bad)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "heun", "dpm-solver++-2s"])
def test_progressive_frames_are_the_callbacks_x0_and_the_last_is_the_sample(sampler):
    """Frame k is the x_0 prediction the callback reports at grid index frame_positions[k] (a
    singlestep solver reports once per chunk: the last report before it), the last frame is
    diffkit.sample's output with the same seed (ddpm: the step noise from the same seed too)."""
    gm = GaussianMixture.random(4, 2, seed=1)
    S = NoiseSchedule.linear()
    d = Denoiser(gm.network(S), S)
    seen = {}
    out = diffkit.sample(d, SHAPE, sampler, 10, seed=3, progress=False,
                         callback=lambda info: seen.setdefault(info["step"], info["x0"].clone()))
    frames = progressive_x0(d, SHAPE, sampler, 10, frames=4, seed=3, progress=False)
    assert frames.shape == (3, 4, *SHAPE[1:])
    assert torch.equal(frames[:, -1], out)
    for k, p in enumerate(frame_positions(10, 4)[:-1]):
        reported = max(step for step in seen if step <= p)
        assert torch.equal(frames[:, k], seen[reported]), (k, p, reported)
    if sampler == "dpm-solver++-2s":
        assert sorted(seen) == [0, 2, 4, 6, 8, 9]  # so positions 3 and 7 take steps 2 and 6


def test_progressive_first_frame_is_the_posterior_mean_of_the_noise():
    """At t = T the exact model's x_0 prediction is E[x_0 | x_T] (DDPM eq. 15 with eps*), which for
    Gaussian data N(m, C) is m + sqrt(abar) C (abar C + (1 - abar) I)^-1 (x_T - sqrt(abar) m)."""
    S = NoiseSchedule.linear()
    gm = GaussianMixture.random(4, 1, seed=2)
    d = Denoiser(gm.network(S), S)
    noise = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(0), dtype=F64)
    first = []
    frames = progressive_x0(d, noise, "ddim", 20, frames=3, progress=False,
                            callback=lambda info: first.append(info["t"]) if info["step"] == 0 else None)
    abar = float(S.alpha_bar(torch.tensor(first, dtype=F64))[0])  # the grid's first time
    m, C = gm.means[0], gm.covs[0]
    x = noise.reshape(3, -1)
    gain = math.sqrt(abar) * C @ torch.linalg.inv(abar * C + (1 - abar) * torch.eye(4, dtype=F64))
    expected = m + (x - math.sqrt(abar) * m) @ gain.T
    torch.testing.assert_close(frames[:, 0].reshape(3, -1), expected, rtol=1e-9, atol=1e-9)


def test_a_sampling_call_stopped_part_way_is_dropped():
    grid = torch.tensor([9.0, 6.0, 3.0, -1.0], dtype=F64)
    rec = FrameRecorder(grid, 2)
    x = torch.zeros(2, 1)
    rec({"step": 0, "t": 9.0, "s": 6.0, "x": x, "x0": x + 1})  # out of memory after this step
    for i, (t, s) in enumerate(zip(grid[:-1].tolist(), grid[1:].tolist())):
        rec({"step": i, "t": t, "s": s, "x": x + 10 * i, "x0": x + 2})
    rec.commit()
    assert len(rec.rows) == 1 and torch.equal(rec.frames()[:, 0], x + 2) and torch.equal(rec.frames()[:, 1], x + 20)
    assert rec.times == [9.0, -1.0]


def test_a_finished_call_counts_only_once_its_batch_is_committed():
    """diffkit sample decodes a latent batch after sampling: a decoder out of memory redraws the
    batch, so the frames of the call before it are dropped; commit keeps a finished batch's."""
    grid = torch.tensor([9.0, 6.0, 3.0, -1.0], dtype=F64)
    rec = FrameRecorder(grid, 2)

    def sampling_call(x):
        for i, (t, s) in enumerate(zip(grid[:-1].tolist(), grid[1:].tolist())):
            rec({"step": i, "t": t, "s": s, "x": x + 10 * i, "x0": x + 1})
    sampling_call(torch.zeros(4, 1))  # finished, then the decoder ran out of memory: not committed
    assert rec.rows == []
    for n in (2, 2):  # the batch drawn again at half the size
        sampling_call(torch.zeros(n, 1))
        rec.commit()
        rec.commit()  # nothing more: the call's frames are added once
    assert [r.shape[0] for r in rec.rows] == [2, 2] and rec.frames().shape == (4, 2, 1)


def _posterior_mse(cov: torch.Tensor, abar: float):
    """For x_0 ~ N(m, Sigma) and x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps, x_0 | x_t is Gaussian
    with Cov = (Sigma^-1 + abar/(1 - abar) I)^-1 (product of the prior and the likelihood
    N(x_t / sqrt(abar); x_0, (1 - abar)/abar I)), whatever x_t is. The error e = x_0 - E[x_0|x_t]
    ~ N(0, Cov): E||e||^2/D = tr Cov / D, Var ||e||^2 = 2 tr Cov^2."""
    D = cov.shape[0]
    post = torch.linalg.inv(torch.linalg.inv(cov) + abar / (1 - abar) * torch.eye(D, dtype=F64))
    return float(torch.trace(post)) / D, math.sqrt(2 * float(torch.trace(post @ post))) / D


def test_distortion_is_the_closed_form_posterior_rmse_and_falls_with_t():
    """Anisotropic Gaussian data with a non-zero mean; the exact eps* makes eq. 15's x-hat_0 the
    posterior mean, so the distortion at t is 127.5 sqrt(tr Cov[x_0|x_t] / D): each t within 5
    standard errors of the Monte Carlo mean over the images."""
    S = NoiseSchedule.linear()
    D, n = 6, 2000
    gm = GaussianMixture.random(D, 1, seed=4, spread=0.3)
    x, _ = gm.sample(n, torch.Generator().manual_seed(1))
    d = Denoiser(gm.network(S), S)
    ts = [0, 10, 50, 150, 300, 600, 999]
    rd = rate_distortion(d, x.reshape(n, 1, 2, 3), timesteps=ts, seed=5, batch_size=700)
    assert rd.timesteps.tolist() == ts and rd.num_images == n
    for j, t in enumerate(ts):
        abar = float(S.alpha_bar(torch.tensor([float(t)], dtype=F64))[0])
        mse, sd = _posterior_mse(gm.covs[0], abar)
        observed = (rd.distortion[j].item() / 127.5) ** 2
        assert abs(observed - mse) < 5 * sd / math.sqrt(n), (t, observed, mse, sd / math.sqrt(n))
    assert (rd.distortion[1:] > rd.distortion[:-1]).all()  # lower t: less distortion


def test_rate_is_the_mutual_information_and_reaches_the_full_bound():
    """With the exact reverse kernels (eps* and the exact variance: isotropic Gaussian data) the
    expected bits sent by the time the receiver holds x_t are, by the chain rule, E[L_T] +
    sum_{s > t} E KL(q(x_{s-1}|x_s,x_0) || q(x_{s-1}|x_s)) = I(x_0; x_t) + KL(q(x_{T-1}) || N(0, I)),
    with I = D/2 ln(1 + abar s^2/(1 - abar)) for N(m, s^2 I): each t within 5 standard errors.
    The rate only grows as t falls (KL terms >= 0), and once the decoder term sends x_0 it is the
    whole bound, which is eval's nll-strided on the same noise. (T = 125 with DDPM's betas x 8 keeps
    it fast: the identity holds for any schedule. Measured over every t, data seeds 2-4: at most
    1.25 standard errors from the mutual information; T = 250 with betas x 4, at twice the cost:
    0.91.)"""
    S = NoiseSchedule.linear(125, 8e-4, 0.16)
    T = S.num_timesteps
    D, n, s2 = 8, 300, 0.09
    m = torch.linspace(-0.3, 0.3, D, dtype=F64)
    gm = GaussianMixture(torch.ones(1), m[None], (s2 * torch.eye(D, dtype=F64))[None])
    x, _ = gm.sample(n, torch.Generator().manual_seed(2))
    d = Denoiser(gm.network(S, learned_variance=True), S, learned_variance=True)
    rd = rate_distortion(d, x, seed=7, batch_size=n)
    assert rd.timesteps.tolist() == list(range(T))
    assert (rd.rate[:-1] >= rd.rate[1:]).all()
    abar = S.alpha_bar(torch.arange(T, dtype=F64))
    a_T = float(abar[-1])
    v_T = a_T * s2 + 1 - a_T
    kl_marginal = 0.5 * (D * (v_T - 1 - math.log(v_T)) + a_T * float(m.square().sum()))
    expected = (0.5 * D * torch.log1p(abar * s2 / (1 - abar)) + kl_marginal) / (D * math.log(2))
    for t in (0, 1, 5, 20, 50, 100, T - 1):
        assert abs(rd.rate[t].item() - expected[t].item()) < 5 * rd.rate_sem[t].item() + 1e-6, (
            t, rd.rate[t].item(), expected[t].item(), rd.rate_sem[t].item())
    # eval's strided grid (every t < 20, then every 10th): the rate reads the terms between evaluated
    # t as the strided bound does; like that bound it errs upwards (the terms are convex in t):
    # measured 0 .. +0.044 bits/dim over the evaluated t (data seeds 2-4: at most +0.044; T = 250:
    # +0.060)
    ts = strided_timesteps(T, 20, 10)
    strided = rate_distortion(d, x, timesteps=ts, seed=7, batch_size=100)
    gap = strided.rate - expected[ts]
    assert (gap > -3 * strided.rate_sem).all() and (gap < 0.07).all(), gap
    assert strided.nll == pytest.approx(nll_bits_per_dim(d, x, timesteps=ts, seed=7)["bpd"], abs=1e-12)
    assert strided.nll > strided.rate[0].item()


def test_tail_sums_are_the_strided_bounds_partial_sums():
    """The rate's partial sums of strided terms: exact for terms linear in t between evaluated t
    (and constant outside them); over every t >= 1 they are the bound's own trapezoid sum
    (weights of variational_bound) for any terms; with every t, plain sums."""
    T, ts = 100, torch.tensor([0, 1, 2, 3, 10, 30, 60, 90])
    lin = 2.0 + 0.5 * torch.arange(T, dtype=F64)
    f = torch.where(torch.arange(T) < 90, lin, lin[90])  # constant above the last evaluated t
    tails = tail_sums(f[ts][None], ts, T)[0]
    exact = torch.stack([f[t + 1:].sum() if t > 0 else f[1:].sum() for t in ts.tolist()])
    torch.testing.assert_close(tails, exact, rtol=1e-12, atol=1e-12)
    terms = torch.rand(3, len(ts), generator=torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(tail_sums(terms, ts, T)[:, 0], (terms * _sum_weights(ts, T))[:, 1:].sum(1))
    every = torch.arange(T)
    terms = torch.rand(2, T, generator=torch.Generator().manual_seed(1), dtype=F64)
    torch.testing.assert_close(tail_sums(terms, every, T)[:, 5], terms[:, 6:].sum(1))


def test_rate_distortion_refuses_bad_input():
    S = NoiseSchedule.linear()
    d = Denoiser(GaussianMixture.random(4, 1).network(S), S)
    with pytest.raises(DiffkitError, match="images"):
        rate_distortion(d, torch.zeros(4, dtype=torch.long))
    with pytest.raises(DiffkitError, match="timesteps"):
        rate_distortion(d, torch.zeros(2, 4), timesteps=[5, 10])


def test_sample_progressive_writes_the_grid(tiny_checkpoint, tmp_path, capsys):
    from diffkit.cli import main
    out = tmp_path / "s.png"
    assert main(["sample", "--checkpoint", str(tiny_checkpoint), "--num", "3", "--steps", "6", "--progressive", "4",
                 "--out", str(out), "--device", "cpu", "--no-progress", "--batch-size", "2"]) == 0
    grid = Image.open(tmp_path / "s_progressive.png")
    assert grid.size == (4 * 10 + 2, 3 * 10 + 2)  # 8x8 images, padding 2: 4 columns (times), 3 rows
    printed = capsys.readouterr().out
    assert "s_progressive.png" in printed and "t = 83, 50, 16, -1" in printed  # the 6-step grid 83, 66, ..., 0, -1
    samples = Image.open(out)  # the last column is the sample grid's images
    assert np.array_equal(np.asarray(grid)[2:10, 32:40], np.asarray(samples)[2:10, 2:10])
    assert main(["sample", "--checkpoint", str(tiny_checkpoint), "--steps", "6", "--progressive", "8", "--out",
                 str(tmp_path / "t.png"), "--device", "cpu", "--no-progress"]) == 2
    assert "--progressive=8" in capsys.readouterr().err and not (tmp_path / "t.png").exists()
    assert main(["sample", "--checkpoint", str(tiny_checkpoint), "--steps", "6", "--progressive", "2", "--out",
                 str(tmp_path / "u.png"), "--noise-out", str(tmp_path / "u_progressive.png"), "--device", "cpu",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "would both be" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "u.png").exists()


def test_eval_rate_distortion_writes_table_and_plot(tiny_checkpoint, tmp_path, capsys):
    from test_evaluation import main
    out = tmp_path / "rd.json"
    assert main(["eval", "--checkpoint", tiny_checkpoint, "--metrics", "rate-distortion,nll-strided", "--nll-num", 4,
                 "--out", out, "--device", "cpu", "--no-progress"]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    rd = metrics["rate-distortion"]
    assert rd["timesteps"][0] == 0 and rd["timesteps"][-1] == 99 and len(rd["rate_bpd"]) == len(rd["timesteps"])
    assert rd["bpd"] == pytest.approx(metrics["nll-strided"]["bpd"], abs=1e-9)  # same images, t and noise
    assert rd["plot"] == str(tmp_path / "rd_rate_distortion.png")
    assert Image.open(rd["plot"]).size[0] > 0
    out = capsys.readouterr().out
    assert "[" in out  # what was evaluated: the bound on 4 test images; no samples, so nothing against the 597
    assert out.splitlines()[0] == f"{tiny_checkpoint}: no samples; rate-distortion, nll-strided on 4 digits test images"


def test_eval_computes_the_strided_bound_once_for_rate_distortion_and_nll_strided(tiny_checkpoint, monkeypatch):
    """Asked together, the two metrics share one pass of the strided bound: the network evaluations
    of one metric alone (one per evaluated t and batch), and each figure as when asked alone."""
    import diffkit.loading
    from diffkit.evaluation import evaluate
    loaded = []
    load = diffkit.loading.load_denoiser
    monkeypatch.setattr(diffkit.loading, "load_denoiser", lambda *a, **k: loaded.append(load(*a, **k)) or loaded[-1])

    def run(metrics):
        result = evaluate(metrics, checkpoint=tiny_checkpoint, nll_num=5, batch_size=3, device="cpu")["metrics"]
        for figures in result.values():
            figures.pop("seconds")
        return result, loaded[-1].nfe
    both, nfe = run("rate-distortion,nll-strided")
    calls = len(strided_timesteps(loaded[-1].schedule.num_timesteps, 20, 10)) * 2  # two batches (3 + 2 images)
    rd, rd_nfe = run("rate-distortion")
    nll, nll_nfe = run("nll-strided")
    assert nfe == rd_nfe == nll_nfe == calls  # it was 2 * calls with both
    assert both == {**rd, **nll} and list(both) == ["rate-distortion", "nll-strided"]
    assert both["rate-distortion"]["bpd"] == both["nll-strided"]["bpd"]
