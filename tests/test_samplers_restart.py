"""Restart sampling (``restart``; Xu et al. 2023, Alg. 1) against Heun step for step (no intervals), the
closed form of its forward jump x~ + sqrt(t_max^2 - t_min^2) eps (a model with eps = 0, the noise drawn
again from the same per-sample generators), the data law on Gaussian data with the exact eps*
(exact ODE and exact forward noise keep the marginals), its exact NFE, batch invariance and one-line
errors for bad intervals."""
from __future__ import annotations

import math

import pytest
import torch

import diffkit
from diffkit import Denoiser, DiffkitError, NoiseSchedule
from diffkit.analytic import GaussianMixture
from diffkit.samplers import REGISTRY
from diffkit.timesteps import make_grid

F64 = torch.float64
S = NoiseSchedule.linear()


class ZeroEps:
    """eps = 0 everywhere: every ODE step keeps x~ = x/alpha, so only restart noise moves it."""

    def __call__(self, x, t):
        return torch.zeros_like(x)


def _states(name, den, x, grid, **options):
    seen = []
    out = diffkit.sample(den, x.clone(), name, grid=grid, progress=False, dtype=F64,
                         callback=lambda d: seen.append(d["x"].clone()), **options)
    return seen, out


@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_without_restart_intervals_it_is_heun_step_for_step(final):
    mix = GaussianMixture.random(3, 3, seed=5)
    den = Denoiser(mix.network(S), S)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    grid = make_grid(S, 9, "karras", final)
    heun_states, heun_out = _states("heun", den, x, grid)
    ours, out = _states("restart", den, x, grid, restarts=())
    assert len(ours) == len(heun_states) == 9
    assert all(torch.equal(a, b) for a, b in zip(ours, heun_states)) and torch.equal(out, heun_out)


def test_the_restart_jump_is_forward_noise_from_the_grid_t_min_to_t_max():
    """eps = 0: x~ stays put along every ODE step, so the output is x~_T + sqrt(t_max^2 - t_min^2) (z_1 + ... + z_K)
    with t_min the grid's sigma~ nearest 0.1 (by hand) and z_k sample i's k-th float32 draw from its own generator;
    and over 20000 samples the added variance is K (t_max^2 - t_min^2) (z-score < 4.5)."""
    grid = make_grid(S, 12, "karras")
    sig = S.karras_sigma(grid[:-1]).tolist()
    t_min = min(sig, key=lambda s: abs(s - 0.1))
    assert 0.05 < t_min < 0.2 and t_min != 0.1
    jump = math.sqrt(2.0 ** 2 - t_min ** 2)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    gens = [torch.Generator().manual_seed(70 + i) for i in range(4)]
    out = diffkit.sample(Denoiser(ZeroEps(), S), x.clone(), "restart", grid=grid, generator=gens, dtype=F64,
                         restarts=((0.1, 2.0, 3, 2),), progress=False)
    again = [torch.Generator().manual_seed(70 + i) for i in range(4)]
    z = torch.stack([sum(torch.randn(3, generator=g).to(F64) for _ in range(3)) for g in again])
    alpha_T = S.alpha(grid[:1]).item()
    torch.testing.assert_close(out, x / alpha_T + jump * z, rtol=1e-12, atol=1e-12)
    n = 20000
    x = torch.zeros(n, 1, dtype=F64)
    out = diffkit.sample(Denoiser(ZeroEps(), S), x, "restart", grid=grid, generator=torch.Generator().manual_seed(3),
                         dtype=F64, restarts=((0.1, 2.0, 3, 2),), progress=False)
    var = 3 * jump ** 2
    z_var = (out.var() - var) / (var * math.sqrt(2 / (n - 1)))
    assert abs(z_var) < 4.5 and abs(out.mean()) / math.sqrt(var / n) < 4.5


def test_restart_samples_have_the_data_mean_and_covariance():
    """Gaussian data N(m, C), exact eps*, 30 main Heun steps and restarts solved accurately (0.1 -> 2, K = 3,
    20 Heun steps each; two intervals): 8000 samples' mean within 4.5 standard errors sqrt(C_ii/n) of m and
    covariance within 4.5 sqrt((C_ii C_jj + C_ij^2)/n) of C. Without the restart noise (x~ at t_min taken as
    if at t_max) the variance would shrink by (c + t_min^2)/(c + 4) per restart. (With 3 Heun steps per restart
    the ODE back from 2 is not accurate: the variance is 14% too large here.)"""
    gm = GaussianMixture.random(dim=2, num_components=1, seed=4, spread=0.8, scale=0.6)
    mean, cov = gm.mean(), gm.cov()
    n = 8000
    for restarts in (((0.1, 2.0, 3, 20),), ((0.05, 0.5, 2, 10), (1.0, 10.0, 2, 20))):
        den = Denoiser(gm.network(S), S)
        x = diffkit.sample(den, (n, 2), "restart", steps=30, generator=torch.Generator().manual_seed(5), dtype=F64,
                           restarts=restarts, progress=False)
        diag = torch.diagonal(cov)
        assert ((x.mean(0) - mean).abs() <= 4.5 * (diag / n).sqrt()).all(), (x.mean(0), mean)
        se_cov = ((diag[:, None] * diag[None, :] + cov ** 2) / n).sqrt()
        assert ((torch.cov(x.T) - cov).abs() <= 4.5 * se_cov).all(), (torch.cov(x.T), cov)


@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_nfe_is_heun_plus_two_calls_per_restart_step(final):
    mix = GaussianMixture.random(2, 2, seed=1)
    for steps, restarts, extra in ((6, None, 2 * 5 * 1), (10, ((0.05, 1.0, 1, 2), (0.5, 5.0, 3, 1)), 4 + 6),
                                   (10, ((0.05, 1.0, 0, 2),), 0)):
        den = Denoiser(mix.network(S), S)
        options = {} if restarts is None else {"restarts": restarts}
        diffkit.sample(den, (3, 2), "restart", steps=steps, final=final, progress=False, **options)
        heun = 2 * steps - (final == "zero")
        assert den.nfe == heun + extra == REGISTRY["restart"].with_options(options).nfe(steps, final)
        den = Denoiser(mix.network(S), S)
        diffkit.sample(den, (3, 2), "restart", nfe=heun + extra, final=final, progress=False, **options)
        assert den.nfe == heun + extra
    assert REGISTRY["restart"].steps_for_nfe(21) == 6
    with pytest.raises(DiffkitError) as caught:
        REGISTRY["restart"].steps_for_nfe(20)
    assert "\n" not in str(caught.value) and "nfe=20" in str(caught.value) and "19, 21" in str(caught.value)


def test_nfe_on_the_command_line(tiny_checkpoint, tmp_path, capsys):
    from diffkit.cli import main
    code = main(["sample", "--checkpoint", str(tiny_checkpoint), "--sampler", "restart", "--nfe", "15", "--num", "2",
                 "--out", str(tmp_path / "g.png"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "restart, 15 network evaluations" in out and (tmp_path / "g.png").exists()
    code = main(["sample", "--checkpoint", str(tiny_checkpoint), "--sampler", "restart", "--nfe", "16", "--num", "2",
                 "--out", str(tmp_path / "b.png"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 2 and "nfe=16" in err and "15, 17" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b.png").exists()
    code = main(["sample", "--checkpoint", str(tiny_checkpoint), "--sampler", "restart", "--nfe", "11", "--num", "2",
                 "--out", str(tmp_path / "c.png"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 2 and "nfe=11" in err and "the smallest NFE it can spend is 13" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "c.png").exists()


def test_the_smallest_nfe_is_that_of_two_steps():
    """A restart interval needs 2 steps (the one-step Karras grid to clean data, [t = 0, clean], has one positive
    sigma~), so NFE 11 = 2*1 - 1 + 10 is not offered: 13 = 2*2 - 1 + 10 is the smallest; plain Heun
    (restarts=()) keeps 1 step."""
    info = REGISTRY["restart"]
    assert info.min_steps == 2 and info.steps_for_nfe(13) == 2
    with pytest.raises(DiffkitError, match=r"cannot spend exactly nfe=11; it can spend 13, 15, 17 \(calls per "
                                           r"step: 2\); the smallest NFE it can spend is 13 \(2 steps\)$"):
        info.steps_for_nfe(11)
    for nfe in (1, 5, 12):
        with pytest.raises(DiffkitError) as caught:
            info.steps_for_nfe(nfe)
        msg = str(caught.value)
        assert "\n" not in msg and f"nfe={nfe}" in msg and "11" not in msg.replace(f"nfe={nfe}", "")
        assert nfe != 12 or "it can spend 13, 15, 17 (" in msg
    assert info.steps_for_nfe(14, "sigma_min") == 2
    heun = info.with_options({"restarts": ()})
    assert heun.min_steps == 1 and heun.steps_for_nfe(1) == 1 and heun.steps_for_nfe(3) == 2
    den = Denoiser(ZeroEps(), S)
    with pytest.raises(DiffkitError, match="the smallest NFE it can spend is 13"):
        diffkit.sample(den, (2, 2), "restart", nfe=11, progress=False)
    diffkit.sample(den, (2, 2), "restart", nfe=13, progress=False)
    assert den.nfe == 13


def test_sample_i_does_not_depend_on_the_batch():
    mix = GaussianMixture.random(3, 3, seed=2)
    den = Denoiser(mix.network(S), S)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(8))
    gens = lambda lo, hi: [torch.Generator().manual_seed(40 + i) for i in range(lo, hi)]  # noqa: E731
    whole = diffkit.sample(den, x.clone(), "restart", steps=6, generator=gens(0, 5), progress=False)
    parts = torch.cat([diffkit.sample(den, x[lo:hi].clone(), "restart", steps=6, generator=gens(lo, hi),
                                      progress=False) for lo, hi in ((0, 1), (1, 3), (3, 5))])
    assert torch.equal(whole, parts)
    other = diffkit.sample(den, x.clone(), "restart", steps=6, generator=gens(5, 10), progress=False)
    assert not torch.equal(whole, other)  # the restart noise comes from the generators


@pytest.mark.parametrize("restarts, steps, match", [
    (((2.0, 2.0, 2, 3),), 10, r"t_min=2.0 >= t_max=2.0"),
    (((3.0, 2.0, 2, 3),), 10, r"t_min=3.0 >= t_max=2.0"),
    (((0.1, 2.0, -1, 3),), 10, r"restarts\[0\] K=-1 is out of range"),
    (((0.1, 2.0, 1.5, 3),), 10, r"restarts\[0\] K=1.5 must be an integer"),
    (((0.1, 2.0, 2, 0),), 10, r"restarts\[0\] n=0 is out of range"),
    (((0.0, 2.0, 2, 3),), 10, r"restarts\[0\] t_min=0.0 is out of range"),
    (((0.1, 2.0, 2),), 10, r"restarts\[0\]=\(0.1, 2.0, 2\) is not allowed"),
    ("0.1,2", 10, r"restarts='0.1,2' is not allowed"),
    (((0.1, 2.0, 2, 3), (0.1, 500.0, 1, 1)), 10, r"restarts\[1\]: the interval \[0.1, 500\] is outside"),
    (((0.001, 2.0, 2, 3),), 10, r"restarts\[0\]: the interval \[0.001, 2\] is outside"),
    (((0.1, 2.0, 2, 3),), 1, r"outside this grid"),
    (None, 1, r"the default restart interval \[0.1, 2\] has no room on this grid's sigma~ range \[0.01, 0.01\] "
              r"\(1 steps\): it has one positive sigma~; give restarts=\(\) \(plain Heun\) or at least 2 steps$"),
    (((100.0, 120.0, 2, 3),), 2, r"nearest t_min=100 is 157.* not below t_max=120"),
])
def test_bad_restart_settings_are_one_line_errors(restarts, steps, match):
    den = Denoiser(ZeroEps(), S)
    with pytest.raises(DiffkitError, match=match) as caught:
        diffkit.sample(den, (2, 2), "restart", steps=steps, restarts=restarts, progress=False)
    assert "\n" not in str(caught.value)


def test_the_default_interval_is_cut_to_a_grid_that_starts_below_it():
    """restarts=None is (0.1, 2, K=1, n=5), with t_max cut to the grid's first sigma~ where the grid starts
    below sigma~ = 2 (here t = 300, sigma~ ~ 1.0): the same samples as that interval given, 2*steps - 1 + 10 calls."""
    mix = GaussianMixture.random(2, 2, seed=3)
    grid = torch.tensor([300.0, 200.0, 120.0, 60.0, 20.0, 0.0, -1.0], dtype=F64)
    top = S.karras_sigma(grid[:1]).item()
    assert 0.5 < top < 2.0
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(6), dtype=F64)
    den = Denoiser(mix.network(S), S)
    ours = diffkit.sample(den, x.clone(), "restart", grid=grid, generator=torch.Generator().manual_seed(1),
                          progress=False, dtype=F64)
    assert den.nfe == 2 * 6 - 1 + 10
    given = diffkit.sample(den, x.clone(), "restart", grid=grid, generator=torch.Generator().manual_seed(1),
                           progress=False, dtype=F64, restarts=((0.1, top, 1, 5),))
    assert torch.equal(ours, given)
    with pytest.raises(DiffkitError, match="outside this grid"):
        diffkit.sample(den, x.clone(), "restart", grid=grid, progress=False, restarts=((0.1, 2.0, 2, 3),))


@pytest.mark.parametrize("grid, match", [
    ([20.0, 10.0, 0.0, -1.0], r"range \[0.01, 0.0794\] \(3 steps\): it starts below t_min=0.1; "
                              r"give restarts=\(\) \(plain Heun\) or an interval"),
    ([30.0, 20.0, 10.0, 0.0, -1.0], r"range \[0.01, 0.1115\] \(4 steps\): cut to \[0.1, 0.1115\], t_min snaps to "
                                    r"the grid's sigma~ 0.1115, not below t_max; give restarts=\(\) \(plain Heun\) or"),
    ([999.0, -1.0], r"range \[157.4, 157.4\] \(1 steps\): it has one positive sigma~; give restarts=\(\) \(plain "
                    r"Heun\) or at least 2 steps$"),
])
def test_a_default_interval_that_has_no_room_says_so(grid, match):
    """An edit from below sigma~ 0.1 (more steps cannot help) and one whose cut interval snaps t_min onto t_max: one
    message about the default interval, suggesting restarts=() or an interval inside the range; no restarts[0],
    "nearest t_min=" of an interval the user never gave; and a one-step grid from above sigma~ 2 to clean data."""
    den = Denoiser(ZeroEps(), S)
    head = r"^the default restart interval \[0.1, 2\] has no room on this grid's sigma~ "
    with pytest.raises(DiffkitError, match=head + match) as caught:
        diffkit.sample(den, (2, 2), "restart", grid=torch.tensor(grid, dtype=F64), progress=False)
    msg = str(caught.value)
    assert "\n" not in msg and "restarts[" not in msg and "more steps" not in msg and "nearest t_min" not in msg
    diffkit.sample(den, (2, 2), "restart", grid=torch.tensor(grid, dtype=F64), progress=False, restarts=())


class LogTimes(Denoiser):
    """A denoiser recording the (float64) time of each call the sampler makes (the network gets them in float32)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.times = []

    def __call__(self, x, t, **cond):
        self.times.append(float(t))
        return super().__call__(x, t, **cond)


def test_restart_steps_are_karras_rho_7_from_t_max_to_the_grid_t_min():
    """The network's times: Heun over the grid (t_i, then t_{i+1} unless clean data), and after the step onto the
    grid sigma~ s nearest t_min, n = 3 Heun steps on EDM eq. 5's sigma_k = (t_max^(1/7) + k/n (s^(1/7) -
    t_max^(1/7)))^7 (each at sigma_k and sigma_{k+1}), through the schedule's sigma~ -> t map, to 1e-12."""
    grid = make_grid(S, 8, "karras")
    t = grid.tolist()
    sig = S.karras_sigma(grid[:-1]).tolist() + [0.0]
    j = min(range(1, len(sig) - 1), key=lambda i: abs(sig[i] - 0.1))
    n, t_max = 3, 2.0
    rho = 7.0
    path = [(t_max ** (1 / rho) + k / n * (sig[j] ** (1 / rho) - t_max ** (1 / rho))) ** rho for k in range(n + 1)]
    path_t = S.t_from_karras_sigma(torch.tensor(path[:-1], dtype=F64)).tolist() + [t[j]]
    expected = []
    for i in range(len(t) - 1):
        expected += [t[i]] + ([t[i + 1]] if sig[i + 1] > 0 else [])
        if i + 1 == j:
            for k in range(n):
                expected += [path_t[k], path_t[k + 1]]
    net = LogTimes(ZeroEps(), S)
    diffkit.sample(net, (2, 2), "restart", grid=grid, restarts=((0.1, t_max, 1, n),), progress=False,
                   dtype=F64)
    assert 0 < path_t[1] < 1000 and len(net.times) == len(expected) == 2 * 8 - 1 + 2 * n
    torch.testing.assert_close(torch.tensor(net.times, dtype=F64), torch.tensor(expected, dtype=F64),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("flag, options", [("0.1:1:1:2", {"sampler": "restart", "restarts": [(0.1, 1.0, 1, 2)]}),
                                           ("0.02:0.3:1:2+0.3:1.2:2:1", {"sampler": "restart",
                                                                        "restarts": [(0.02, 0.3, 1, 2),
                                                                                     (0.3, 1.2, 2, 1)]}),
                                           ("none", {"sampler": "heun"})])
def test_restarts_on_the_command_line_are_the_library_s(tiny_checkpoint, tmp_path, capsys, flag, options):
    """``diffkit sample --sampler restart --restarts FLAG`` writes the images of ``diffkit.sample`` with those
    intervals from the same noise (sample i: x_T from seed i, its step noise from seed 10000019 + i); ``none``:
    plain Heun's."""
    import numpy as np
    from PIL import Image

    from diffkit.cli import main
    from diffkit.images import to_uint8
    from diffkit.loading import load_denoiser
    from diffkit.models.network import sample_shape
    from diffkit.noise import randn, sample_generators
    code = main(["sample", "--checkpoint", str(tiny_checkpoint), "--sampler", "restart", "--restarts", flag,
                 "--steps", "6", "--num", "2", "--batch-size", "2", "--device", "cpu", "--out",
                 str(tmp_path / "g.png"), "--individual", str(tmp_path / "each"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    den = load_denoiser(tiny_checkpoint)
    noise_gens, gens = sample_generators(0, 0, 2)
    noise = randn((2, *sample_shape(den.meta["unet"])), noise_gens)
    expected = to_uint8(diffkit.sample(den, noise, steps=6, generator=gens, progress=False, **options))
    written = np.stack([np.asarray(Image.open(tmp_path / "each" / f"sample_{i:05d}.png")).reshape(expected[i].shape)
                        for i in range(2)])
    assert np.array_equal(written, expected)


def test_restarts_need_the_restart_sampler_and_set_its_nfe(tiny_checkpoint, tmp_path, capsys):
    from diffkit.cli import main
    code = main(["sample", "--checkpoint", str(tiny_checkpoint), "--sampler", "heun", "--restarts", "0.1:1:1:2",
                 "--out", str(tmp_path / "h.png"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 2 and "--restarts" in err and "'heun'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "h.png").exists()
    with pytest.raises(SystemExit):  # argparse's error: one line, exit status 2
        main(["sample", "--checkpoint", str(tiny_checkpoint), "--sampler", "restart", "--restarts", "0.1:2:0:2"])
    out, err = capsys.readouterr()
    assert "K=0" in err and "'none'" in err and len(err.strip().splitlines()) == 1
    # NFE = 2 steps - 1 + 2 n K: none is heun's 2 steps - 1 (3), one interval of n = 2, K = 1 adds 4 (7)
    for flag, nfe in (("none", 3), ("0.1:1:1:2", 7)):
        code = main(["sample", "--checkpoint", str(tiny_checkpoint), "--sampler", "restart", "--restarts", flag,
                     "--nfe", str(nfe), "--num", "2", "--out", str(tmp_path / f"{nfe}.png"), "--no-progress"])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert f"restart, {nfe} network evaluations" in out
