"""The adaptive-step DPM-Solver ``dpm-adaptive`` (Lu et al. 2022, Sec. 3.4 / App. C, Algorithm 4)
against a transcription of the paper's algorithm written here (batch of one: the same evaluation
times, so the same accepted and rejected steps, and the same endpoint), the exact ODE map of
Gaussian data as the tolerance shrinks, per-sample step control (batch invariance, NFE = the
largest per-sample count, every call on the whole batch) and one-line errors."""
from __future__ import annotations

import math
import re

import pytest
import torch

import diffkit
from diffkit import Denoiser, DiffkitError, NoiseSchedule
from diffkit.analytic import GaussianMixture, gaussian_ode_solution
from diffkit.samplers import REGISTRY

F64 = torch.float64
S = NoiseSchedule.linear()
T = S.num_timesteps


def reference_adaptive(den, x, t_start, t_end, order=3, rtol=0.05, atol=0.0078, h_init=0.05, theta=0.9,
                       t_err=1e-5):
    """Algorithm 4 of the DPM-Solver paper for one sample (x: (1, D)), noise prediction, with the
    lower / higher pair DPM-Solver-1 / 2 (r1 = 1/2) or DPM-Solver-2 / 3 (r1, r2 = 1/3, 2/3; Algorithms
    1 and 2, sharing the evaluations at s and s1): returns (x_end, the times the model saw)."""
    seen = []

    def lam(t):
        return S.log_snr(torch.tensor(t, dtype=F64)).item()

    def alpha(t):
        return S.alpha(torch.tensor(t, dtype=F64)).item()

    def sigma(t):
        return S.sigma(torch.tensor(t, dtype=F64)).item()

    def t_of(lam_value):
        return S.t_from_log_snr(torch.tensor(lam_value, dtype=F64)).item()

    def eps(x, t):
        seen.append(t)
        return den(x, t).eps

    s, x_prev, h, dim = t_start, x, h_init, x.shape[1]
    lam_0 = lam(t_end)
    while abs(s - t_end) > t_err:
        t = t_of(lam(s) + h)
        hh = lam(t) - lam(s)
        e_s = eps(x, s)
        r1 = 0.5 if order == 2 else 1 / 3
        s1 = t_of(lam(s) + r1 * hh)
        u1 = alpha(s1) / alpha(s) * x - sigma(s1) * math.expm1(r1 * hh) * e_s
        e_1 = eps(u1, s1)
        first = alpha(t) / alpha(s) * x - sigma(t) * math.expm1(hh) * e_s                    # DPM-Solver-1
        second = first - sigma(t) / (2 * r1) * math.expm1(hh) * (e_1 - e_s)                  # Algorithm 1
        if order == 2:
            x_low, x_high = first, second
        else:
            r2 = 2 / 3
            s2 = t_of(lam(s) + r2 * hh)
            u2 = (alpha(s2) / alpha(s) * x - sigma(s2) * math.expm1(r2 * hh) * e_s
                  - sigma(s2) * r2 / r1 * (math.expm1(r2 * hh) / (r2 * hh) - 1) * (e_1 - e_s))
            e_2 = eps(u2, s2)
            x_low, x_high = second, first - sigma(t) / r2 * (math.expm1(hh) / hh - 1) * (e_2 - e_s)  # Algorithm 2
        delta = torch.maximum(torch.full_like(x, atol), rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = (torch.linalg.norm((x_high - x_low) / delta) / math.sqrt(dim)).item()
        if error <= 1:
            x, s, x_prev = x_high, t, x_low
        h = min(theta * h * error ** (-1 / order), lam_0 - lam(s))
    return x, seen


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture.random(3, 4, seed=2, spread=1.0, scale=0.4)


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("rtol, atol", [(0.05, 0.0078), (1e-3, 1e-4)])
def test_one_sample_follows_algorithm_4(mixture, order, rtol, atol):
    net = mixture.network(S)
    seen = []
    den = Denoiser(lambda x, t: seen.append(float(t[0])) or net(x, t), S)
    x = torch.randn(1, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    ref, ref_times = reference_adaptive(Denoiser(net, S), x, T - 1.0, 0.0, order=order, rtol=rtol, atol=atol)
    out = diffkit.sample(den, x, "dpm-adaptive", final="sigma_min", order=order, rtol=rtol, atol=atol, progress=False)
    assert len(seen) == len(ref_times) and len(seen) % order == 0
    # the same tries in the same order: each try's evaluation times. The network sees float32 times,
    # and Algorithm 4 has no bound on a step's growth: after a try with a tiny E (a difference of
    # nearly equal x_high, x_low) the next h ~ E^(-1/k) magnifies round-off, so at the tight tolerance
    # those (rejected) tries' times agree to ~3e-4 relative (~2e-3 on an AVX-512 machine), the rest to ~1e-6
    close = 1e-5 if rtol == 0.05 else 1e-2
    torch.testing.assert_close(torch.tensor(seen, dtype=F64), torch.tensor(ref_times, dtype=F64), rtol=close, atol=0)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def test_error_against_the_exact_gaussian_ode_map_shrinks_with_the_tolerance():
    gaussian = GaussianMixture.random(4, 1, seed=3)
    den = Denoiser(gaussian.network(S), S)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    exact = gaussian_ode_solution(gaussian.means[0], gaussian.covs[0], x, S.alpha(T - 1.0), S.sigma(T - 1.0),
                                  S.alpha(0.0), S.sigma(0.0))
    errors, nfes = [], []
    for rtol in (0.05, 5e-3, 5e-4, 5e-5):
        den.reset_nfe()
        out = diffkit.sample(den, x, "dpm-adaptive", final="sigma_min", rtol=rtol, atol=rtol * 0.156, progress=False)
        errors.append((out - exact).pow(2).mean().sqrt().item())
        nfes.append(den.nfe)
    assert all(a > 3 * b for a, b in zip(errors, errors[1:])), errors
    assert errors[0] < 0.03 and errors[-1] < 3e-5, errors
    assert nfes == sorted(nfes) and nfes[0] <= 45, nfes


def test_each_sample_is_solved_alone_and_every_call_sees_the_whole_batch(mixture):
    net, rows = mixture.network(S), []
    den = Denoiser(lambda x, t: rows.append(x.shape[0]) or net(x, t), S)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    seen = []
    full = diffkit.sample(den, x, "dpm-adaptive", progress=False, callback=seen.append)
    batch_nfe = den.nfe
    assert seen[-1]["nfe"] == batch_nfe and [(d["t"], d["s"]) for d in seen] == [(T - 1.0, 0.0), (0.0, -1.0)]
    alone = []
    for i in range(6):
        den.reset_nfe()
        one = diffkit.sample(den, x[i:i + 1], "dpm-adaptive", progress=False)
        torch.testing.assert_close(one[0], full[i], rtol=1e-9, atol=1e-9)
        alone.append(den.nfe)
    assert batch_nfe == max(alone) and min(alone) < max(alone), alone
    assert rows[:batch_nfe] == [6] * batch_nfe, rows


def test_data_prediction_and_order_2_reach_the_ode_solution(mixture):
    den = Denoiser(mixture.network(S), S)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    ref = diffkit.sample(den, x, "ode", final="sigma_min", rtol=1e-8, atol=1e-8, progress=False)
    for options in ({"algorithm_type": "dpmsolver++"}, {"order": 2}, {}):
        out = diffkit.sample(den, x, "dpm-adaptive", final="sigma_min", rtol=1e-4, atol=1e-5, progress=False,
                             **options)
        assert (out - ref).abs().max().item() < 2e-3, options


def test_bad_options_are_one_line_errors(mixture):
    den = Denoiser(mixture.network(S), S)
    for kwargs, pattern in (({"steps": 10}, "picks its own steps, so steps=10 does not apply"),
                            ({"order": 1}, "order=1"), ({"order": 4}, "order=4"), ({"rtol": 0.0}, "rtol"),
                            ({"atol": -1.0}, "atol"), ({"h_init": 0.0}, "h_init"), ({"theta": 1.5}, "theta"),
                            ({"t_err": -1.0}, "t_err"), ({"algorithm_type": "sde-dpmsolver++"}, "algorithm_type")):
        with pytest.raises(DiffkitError) as err:
            diffkit.sample(den, (2, 3), "dpm-adaptive", progress=False, **kwargs)
        assert "\n" not in str(err.value) and re.search(pattern, str(err.value)), str(err.value)
    nan_late = lambda x, t: mixture.network(S)(x, t) * (float("nan") if float(t[0]) < 300 else 1.0)  # noqa: E731
    with pytest.raises(DiffkitError, match=r"sample 0 failed \(DPM-Solver-23"):
        diffkit.sample(Denoiser(nan_late, S), (2, 3), "dpm-adaptive", seed=0, progress=False)


def test_samplers_command_prints_it_as_adaptive(capsys):
    from diffkit.cli import main
    assert REGISTRY["dpm-adaptive"].adaptive
    assert main(["samplers"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("dpm-adaptive "))
    assert re.match(r"dpm-adaptive\s+adaptive\s+-\s+no\s+adaptive\s+zero\s+set by rtol/atol", line), line
