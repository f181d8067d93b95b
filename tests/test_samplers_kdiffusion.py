"""k-diffusion's DPM++ SDE (``dpm-solver++-sde``) and ComfyUI's k-diffusion iPNDM (``ipndm``) against
references that are not diffkit's own code: k-diffusion's steps written out here in its variables (x~ = x/alpha,
sigma~ = sqrt((1 - abar)/abar), t_fn = -log sigma~, ``get_ancestral_step`` transcribed), the Adams-Bashforth
weights, the closed-form law of the chain on Gaussian data, the Brownian covariance of the two noises
of a step, and DPM-Solver++(2S) (``dpm_solver_singlestep``, Lu et al. 2022b Alg. 1) at eta = 0.

Noise: ``dpm-solver++-sde`` draws, per step and per generator, two float32 standard normals g_1, g_2
(``randn_like``, in that order) and uses z_1 = g_1, z_2 = (sqrt(sigma - sigma_mid) g_1 +
sqrt(sigma_mid - sigma_next) g_2)/sqrt(sigma - sigma_next) (weights from
``diffkit.noise.brownian_path_weights``): W(sigma_mid) - W(sigma) and W(sigma_next) - W(sigma), the
increments of one Brownian path, normalised as k-diffusion's BrownianTreeNoiseSampler does.
"""
from __future__ import annotations

import math

import pytest
import torch

import diffkit
from diffkit import Denoiser, DiffkitError, NoiseSchedule
from diffkit.analytic import GaussianMixture
from diffkit.noise import brownian_path_weights
from diffkit.samplers import REGISTRY
from diffkit.samplers.dpm_solver import dpm_solver_singlestep
from diffkit.samplers.karras import dpmpp_sde, ipndm
from diffkit.timesteps import make_grid

F64 = torch.float64
S = NoiseSchedule.linear()
ABAR = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, 1000, dtype=F64), 0)  # DDPM's schedule, by hand


def karras_sigma(t: int) -> float:
    return math.sqrt((1 - ABAR[t].item()) / ABAR[t].item())


def get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    """k-diffusion's ``get_ancestral_step`` (sampling.py), transcribed."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    return (sigma_to ** 2 - sigma_up ** 2) ** 0.5, sigma_up


def t_fn(sigma):
    return -math.log(sigma)


def sigma_fn(t):
    return math.exp(-t)


class StaticLinear:
    """eps(x) = W x, the same at every t (so d at a non-grid sigma~ needs no time lookup)."""

    def __init__(self, dim: int, seed: int):
        self.W = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=F64) / dim

    def eps(self, x):
        return x @ self.W.T

    def __call__(self, x, t):
        return self.eps(x.to(F64))


def _denoised(net, x_tilde, sigma):
    """D(x~; sigma~) = x~ - sigma~ eps(x~/sqrt(1 + sigma~^2)) of a time-independent eps network
    (k-diffusion's denoiser from the eps its to_d inverts)."""
    return x_tilde - sigma * net.eps(x_tilde / math.sqrt(1 + sigma ** 2))


# ------------------------------------------------------------------ DPM++ SDE: one step by hand
@pytest.mark.parametrize("t, s, eta, s_noise, r", [(600, 350, 1.0, 1.0, 0.5), (300, 200, 0.6, 1.0, 0.5),
                                                    (500, 100, 1.0, 0.9, 0.5), (700, 300, 1.0, 1.0, 0.3)])
def test_dpmpp_sde_step_is_k_diffusion(t, s, eta, s_noise, r):
    """One step of k-diffusion's sample_dpmpp_sde written out in its variables: h = t_fn(sigma_s) -
    t_fn(sigma_t), s_mid = t + h r, fac = 1/(2r); (sd, su) = get_ancestral_step(sigma, sigma_fn(s_mid));
    x~_2 = (sd/sigma) x~ - expm1(t - t_fn(sd)) D0 + s_noise su z_1; then with the step to sigma_s,
    x~' = (sd'/sigma) x~ - expm1(t - t_fn(sd')) ((1 - fac) D0 + fac D(x~_2; sigma_mid)) + s_noise su' z_2,
    z_1, z_2 the normalised increments of one Brownian path (module docstring). The callback gets
    the new state and the step's data prediction D0 (k-diffusion's ``denoised``)."""
    net = StaticLinear(4, seed=3)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(8), dtype=F64)
    seen = []
    out = dpmpp_sde(Denoiser(net, S), x, torch.tensor([float(t), float(s)], dtype=F64), eta=eta, s_noise=s_noise,
                    r=r, generator=torch.Generator().manual_seed(12), callback=seen.append)
    sig, sig_next = karras_sigma(t), karras_sigma(s)
    lam, lam_next = t_fn(sig), t_fn(sig_next)
    h = lam_next - lam
    sig_mid = sigma_fn(lam + h * r)
    g = torch.Generator().manual_seed(12)
    g1, g2 = (torch.randn(3, 4, generator=g, dtype=torch.float32).to(F64) for _ in range(2))
    z1 = g1
    z2 = (math.sqrt(sig - sig_mid) * g1 + math.sqrt(sig_mid - sig_next) * g2) / math.sqrt(sig - sig_next)
    x_tilde = x / ABAR[t].sqrt()
    D0 = x_tilde - sig * net.eps(x)
    sd, su = get_ancestral_step(sig, sig_mid, eta)
    x_2 = (sd / sig) * x_tilde - math.expm1(lam - t_fn(sd)) * D0 + s_noise * su * z1
    fac = 1 / (2 * r)
    D_d = (1 - fac) * D0 + fac * _denoised(net, x_2, sig_mid)
    sd, su = get_ancestral_step(sig, sig_next, eta)
    expected = (sd / sig) * x_tilde - math.expm1(lam - t_fn(sd)) * D_d + s_noise * su * z2
    torch.testing.assert_close(out, ABAR[s].sqrt() * expected, rtol=1e-10, atol=1e-12)
    assert [(c["step"], c["t"], c["s"]) for c in seen] == [(0, float(t), float(s))]
    torch.testing.assert_close(seen[0]["x"], out, rtol=0, atol=0)
    torch.testing.assert_close(seen[0]["x0"], D0, rtol=1e-10, atol=1e-12)


def test_dpmpp_sde_step_into_clean_data_is_the_denoised_sample():
    """sigma_s = 0: k-diffusion's Euler branch, x~ + (0 - sigma) d = D(x~; sigma): one call, no noise."""
    net = StaticLinear(4, seed=5)
    d = Denoiser(net, S)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(9), dtype=F64)
    out = diffkit.sample(d, x, "dpm-solver++-sde", grid=[250.0, -1.0], generator=torch.Generator().manual_seed(1),
                         progress=False)
    assert d.nfe == 1
    torch.testing.assert_close(out, (x - (1 - ABAR[250]).sqrt() * net.eps(x)) / ABAR[250].sqrt(),
                               rtol=1e-10, atol=1e-12)


class ZeroDenoised:
    """eps(x, t) = x / sigma_t, so D = x0 = 0 at every call; records the states it is called at."""

    def __init__(self):
        self.inputs = []

    def __call__(self, x, t):
        self.inputs.append(x.clone())
        return x / S.sigma(t.to(F64)).reshape(-1, *([1] * (x.dim() - 1)))


def test_dpmpp_sde_two_noises_of_a_step_have_the_brownian_covariance():
    """With D = 0 and x~ = 0 at sigma, the second call sees alpha_mid su_1 z_1 and the step returns
    alpha_next su_2 z_2: over 20000 draws both are standard normal and corr(z_1, z_2) =
    sqrt((sigma - sigma_mid)/(sigma - sigma_next)) (0.83 here), within 4.5 standard errors
    ((1 - rho^2)/sqrt(n) for the correlation). Independent draws (rho = 0) or one draw used twice
    (rho = 1) fail."""
    t, s = 600, 300
    sig, sig_next = karras_sigma(t), karras_sigma(s)
    sig_mid = math.sqrt(sig * sig_next)
    rho = math.sqrt((sig - sig_mid) / (sig - sig_next))
    net = ZeroDenoised()
    n = 20000
    out = dpmpp_sde(Denoiser(net, S), torch.zeros(n, 1, dtype=F64), torch.tensor([float(t), float(s)], dtype=F64),
                    generator=torch.Generator().manual_seed(0))
    assert len(net.inputs) == 2
    _, su_1 = get_ancestral_step(sig, sig_mid)
    _, su_2 = get_ancestral_step(sig, sig_next)
    z1 = (net.inputs[1] * math.sqrt(1 + sig_mid ** 2) / su_1).flatten()
    z2 = (out / ABAR[s].sqrt() / su_2).flatten()
    k = 4.5
    for z in (z1, z2):
        assert abs(z.mean().item()) < k / math.sqrt(n) and abs(z.var().item() - 1) < k * math.sqrt(2 / n)
    corr = torch.corrcoef(torch.stack([z1, z2]))[0, 1].item()
    assert abs(corr - rho) < k * (1 - rho ** 2) / math.sqrt(n), (corr, rho)


def test_brownian_path_weights_give_the_brownian_covariance():
    """diffkit.noise.brownian_path_weights at times 3, 2, 1.5, 0: the z_k = sum_j L_kj g_j have
    Cov = L L^T = sqrt(|t_j - t_0| / |t_k - t_0|), j <= k (Brownian motion's min(s, t) normalised), and
    L is lower triangular with the increments sqrt(|t_{j+1} - t_j|) / sqrt(|t_k - t_0|)."""
    times = [3.0, 2.0, 1.5, 0.0]
    rows = brownian_path_weights(times)
    L = torch.zeros(3, 3, dtype=F64)
    for k, row in enumerate(rows):
        L[k, :len(row)] = torch.tensor(row, dtype=F64)
    span = [times[0] - u for u in times[1:]]
    expected = torch.tensor([[math.sqrt(min(a, b) / max(a, b)) for b in span] for a in span], dtype=F64)
    torch.testing.assert_close(L @ L.T, expected, rtol=1e-14, atol=1e-14)
    assert rows[2] == pytest.approx([1 / math.sqrt(3), math.sqrt(0.5 / 3), math.sqrt(1.5 / 3)], rel=1e-14)


@pytest.mark.parametrize("times", [[3.0, 1.0, 2.0], [1.0, 2.0, 0.5], [3.0, 3.0, 1.0], [2.0, 1.0, float("nan")]])
def test_brownian_path_times_that_turn_back_are_one_line_errors(times):
    """Times that are not monotone (3, 1, 2 would silently give Cov(z_1, z_2) = sqrt(2/1), not a
    correlation) or repeat the first (a division by zero) are refused, naming the times."""
    with pytest.raises(DiffkitError, match=r"times \[.*\] must be monotone") as err:
        brownian_path_weights(times)
    assert "\n" not in str(err.value)
    assert brownian_path_weights([3.0, 1.0, 1.0]) == [[1.0], [1.0, 0.0]]  # a repeated later time: no increment


# ------------------------------------------------------------------ DPM++ SDE: the law on Gaussian data
def _dpmpp_sde_chain_law(gm, sig, rho_of=lambda s, m, n: math.sqrt((s - m) / (s - n))):
    """Mean and covariance of the dpm-solver++-sde chain (eta = 1, r = 1/2) on Gaussian data N(m, C)
    with the exact denoiser, in closed form: in C's eigenbasis (eigenvalue c), D(x~; sigma) = m +
    k(sigma) y with y = x~ - m and k = c/(c + sigma^2), so a step is
        y_mid = a_1 y + (1 - a_1) k(sigma) y + su_1 z_1,   y' = a_2 y + (1 - a_2) k(sigma_mid) y_mid + su_2 z_2
    (a_j = sd_j/sigma), i.e. y' = G y + (1 - a_2) k(sigma_mid) su_1 z_1 + su_2 z_2 with Cov(z_1, z_2) = rho;
    the step to sigma = 0 is y' = k(sigma) y. From y ~ N(-m, 1 + sigma_0^2)."""
    c, U = torch.linalg.eigh(gm.cov())
    k = lambda s: c / (c + s ** 2)  # noqa: E731
    v = torch.full_like(c, 1 + sig[0] ** 2)
    shrink = torch.ones_like(c)
    for sigma, sigma_next in zip(sig[:-1], sig[1:]):
        if sigma_next == 0:
            gain, noise = k(sigma), 0.0
        else:
            sigma_mid = math.sqrt(sigma * sigma_next)
            (sd_1, su_1), (sd_2, su_2) = get_ancestral_step(sigma, sigma_mid), get_ancestral_step(sigma, sigma_next)
            a_1, a_2 = sd_1 / sigma, sd_2 / sigma
            carry = (1 - a_2) * k(sigma_mid)
            gain = a_2 + carry * (a_1 + (1 - a_1) * k(sigma))
            b1 = carry * su_1
            noise = b1 ** 2 + su_2 ** 2 + 2 * b1 * su_2 * rho_of(sigma, sigma_mid, sigma_next)
        v, shrink = gain ** 2 * v + noise, gain * shrink
    return gm.mean() - U @ (shrink * (U.T @ gm.mean())), U @ torch.diag(v) @ U.T


def _assert_gaussian_moments(x, mean, cov, k: float = 4.5):
    """Sample mean and covariance within k standard errors (mean: sqrt(C_ii/n); covariance:
    sqrt((C_ii C_jj + C_ij^2)/n))."""
    n, diag = x.shape[0], torch.diagonal(cov)
    assert ((x.mean(0) - mean).abs() <= k * (diag / n).sqrt()).all(), (x.mean(0), mean)
    se_cov = ((diag[:, None] * diag[None, :] + cov ** 2) / n).sqrt()
    assert ((torch.cov(x.T) - cov).abs() <= k * se_cov).all(), (torch.cov(x.T), cov, se_cov)


def test_dpmpp_sde_samples_gaussian_data():
    """Gaussian data, exact eps*, 50 Karras steps (NFE 99), 8000 samples: their mean and covariance
    are the chain's closed-form law's (:func:`_dpmpp_sde_chain_law`) within 4.5 standard errors, and
    that law is the data's within 1.5% of the largest variance (too narrow by 6.2 / 2.8 / 0.9 / 0.2 /
    0.05% at 20 / 30 / 50 / 100 / 200 steps: second order; DPM++ 2S a is 2.1% off at 50). Were the two
    noises of a step independent (rho = 0), the law would be 15% off at 50 steps (28% / 8.5% at 20 / 100)."""
    gm = GaussianMixture.random(dim=2, num_components=1, seed=4, spread=0.8, scale=0.6)
    n = 8000
    grid = make_grid(S, 50, "karras")
    sig = S.karras_sigma(grid).tolist()
    mean_N, cov_N = _dpmpp_sde_chain_law(gm, sig)
    c_max = torch.linalg.eigvalsh(gm.cov()).max()
    assert ((cov_N - gm.cov()).abs() <= 0.015 * c_max).all() and ((mean_N - gm.mean()).abs() < 1e-3).all()
    _, cov_indep = _dpmpp_sde_chain_law(gm, sig, rho_of=lambda *_: 0.0)
    assert (cov_indep - gm.cov()).abs().max() > 0.1 * c_max
    d = Denoiser(gm.network(S), S)
    x = diffkit.sample(d, (n, 2), "dpm-solver++-sde", grid=grid, generator=torch.Generator().manual_seed(3),
                       dtype=F64, progress=False)
    assert d.nfe == 99 == REGISTRY["dpm-solver++-sde"].nfe(50)
    _assert_gaussian_moments(x, mean_N, cov_N)


def test_dpmpp_sde_without_noise_is_dpm_solver_pp_2s():
    """eta = 0: no noise, sd = target, and each step is DPM-Solver++(2S) with r = 1/2 (Lu et al. 2022b,
    Alg. 1): the singlestep solver of dpm_solver.py with orders 2, ..., 2, 1 on the grid with each
    step's log-midpoint time t(sqrt(sigma sigma_next)) inserted."""
    mix = GaussianMixture.random(3, 3, seed=5)
    den = Denoiser(mix.network(S), S)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    grid = make_grid(S, 6, "karras")
    sig = S.karras_sigma(grid)
    mids = S.t_from_karras_sigma((sig[:-2] * sig[1:-1]).sqrt())
    fine = torch.stack([grid[:-2], mids], 1).flatten().tolist() + grid[-2:].tolist()
    ours = dpmpp_sde(den, x.clone(), grid, eta=0.0)
    ref = dpm_solver_singlestep(den, x.clone(), torch.tensor(fine, dtype=F64), algorithm_type="dpmsolver++",
                                orders=[2] * 5 + [1])
    torch.testing.assert_close(ours, ref, rtol=1e-7, atol=1e-8)


# ------------------------------------------------------------------ iPNDM
class Scripted:
    """Returns scripted eps values in call order (ignores x and t)."""

    def __init__(self, values):
        self.values, self.calls = list(values), 0

    def __call__(self, x, t):
        self.calls += 1
        return self.values[self.calls - 1].expand_as(x).clone()


AB = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_ipndm_steps_are_adams_bashforth_1_to_4_in_sigma(order):
    """ComfyUI's k-diffusion sample_ipndm (max_order = ``order``) on 6 Karras steps to sigma = 0 with
    scripted eps e_0 .. e_5: x~_{i+1} = x~_i + (sigma_{i+1} - sigma_i) sum_j w_j e_{i-j}, w the fixed-step
    Adams-Bashforth weights of order min(i + 1, order) (1; 3/2, -1/2; 23/12, -16/12, 5/12; 55/24,
    -59/24, 37/24, -9/24), and the step to sigma = 0 is x~ -> D = x~ - sigma e. One call per step."""
    values = [torch.full((1, 2), v, dtype=F64) for v in (0.3, -0.7, 1.1, 0.2, -0.4, 0.9)]
    net = Scripted(values)
    grid = make_grid(S, 6, "karras")
    sig = S.karras_sigma(grid).tolist()
    alpha = S.alpha(grid).tolist()
    seen = []
    x = torch.ones(1, 2, dtype=F64)
    ipndm(Denoiser(net, S), x, grid, order=order, callback=lambda d: seen.append(d["x"].clone()))
    assert net.calls == 6 and REGISTRY["ipndm"].nfe(6) == 6
    x_tilde = x / alpha[0]
    for i in range(6):
        if sig[i + 1] == 0:
            x_tilde = x_tilde - sig[i] * values[i]
        else:
            w = AB[min(i + 1, order)]
            x_tilde = x_tilde + (sig[i + 1] - sig[i]) * sum(w_j * values[i - j] for j, w_j in enumerate(w))
        torch.testing.assert_close(seen[i], alpha[i + 1] * x_tilde, rtol=1e-12, atol=1e-12)


def test_ipndm_second_step_on_the_exact_mixture():
    """The first two steps of iPNDM with the mixture's exact eps*, by hand: Euler, then AB2 in sigma~."""
    mix = GaussianMixture.random(3, 3, seed=5)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    times = [900.0, 500.0, 150.0]
    out = ipndm(Denoiser(mix.network(S), S), x.clone(), torch.tensor(times, dtype=F64))
    ts = torch.tensor(times, dtype=torch.float32).to(F64)  # the exact model lives at the float32 times
    a, s = S.alpha(ts).tolist(), S.sigma(ts).tolist()
    k = [sg / al for al, sg in zip(a, s)]
    eps = lambda xt, i: mix.eps(a[i] * xt, torch.tensor(a[i], dtype=F64), torch.tensor(s[i], dtype=F64))  # noqa: E731
    x0 = x / a[0]
    e0 = eps(x0, 0)
    x1 = x0 + (k[1] - k[0]) * e0
    x2 = x1 + (k[2] - k[1]) * (3 * eps(x1, 1) - e0) / 2
    torch.testing.assert_close(out, a[2] * x2, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ NFE and the command line
@pytest.mark.parametrize("name, good, bad, near", [("dpm-solver++-sde", 5, 4, "3, 5"), ("ipndm", 4, None, None)])
def test_nfe_and_command_line(tiny_checkpoint, tmp_path, capsys, name, good, bad, near):
    from diffkit.cli import main
    code = main(["sample", "--checkpoint", str(tiny_checkpoint), "--sampler", name, "--nfe", str(good), "--num", "2",
                 "--out", str(tmp_path / "g.png"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"{name}, {good} network evaluations" in out and (tmp_path / "g.png").exists()
    if bad is not None:
        with pytest.raises(DiffkitError) as caught:
            REGISTRY[name].steps_for_nfe(bad)
        assert "\n" not in str(caught.value) and f"nfe={bad}" in str(caught.value) and near in str(caught.value)
        code = main(["sample", "--checkpoint", str(tiny_checkpoint), "--sampler", name, "--nfe", str(bad),
                     "--num", "2", "--out", str(tmp_path / "b.png"), "--no-progress"])
        out, err = capsys.readouterr()
        assert code == 2 and f"nfe={bad}" in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "b.png").exists()


def test_bad_options_are_one_line_errors():
    d = Denoiser(StaticLinear(2, seed=1), S)
    for kwargs, word in (({"r": 0.0}, "r=0.0"), ({"r": 1.5}, r"r=1.5 .* in \(0, 1\].* between sigma and sigma_next"),
                         ({"r": float("nan")}, "r=nan"), ({"eta": -1.0}, "eta=-1.0"),
                         ({"s_noise": -0.5}, "s_noise=-0.5")):
        with pytest.raises(DiffkitError, match=word):
            diffkit.sample(d, (2, 2), "dpm-solver++-sde", steps=3, progress=False, **kwargs)
    with pytest.raises(DiffkitError, match="order=5"):
        diffkit.sample(d, (2, 2), "ipndm", steps=3, order=5, progress=False)
