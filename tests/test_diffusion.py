"""Diffusion math against the seed equations (DDPM, Improved DDPM), in float64."""
import math

import pytest
import torch

from diffkit import DiffkitError, NoiseSchedule, diffusion, losses

S = NoiseSchedule.linear()
ABAR = S.alphas_cumprod
BETA = S.betas
G = torch.Generator().manual_seed(0)


def rand(*shape):
    return torch.randn(*shape, generator=G, dtype=torch.float64)


def col(v):
    return v.reshape(-1, 1)


def test_q_sample_is_ddpm_eq4():
    x0, noise = rand(5, 7), rand(5, 7)
    t = torch.tensor([0, 1, 10, 500, 999])
    expected = col(ABAR[t].sqrt()) * x0 + col((1 - ABAR[t]).sqrt()) * noise
    torch.testing.assert_close(diffusion.q_sample(S, x0, t, noise), expected, rtol=1e-12, atol=1e-12)


def test_posterior_mean_two_seed_forms_agree():
    """DDPM eq. 7 (through x0) and eq. 11 (through eps) give the same posterior mean."""
    t = torch.tensor([1, 2, 50, 400, 999])
    x_t, eps = rand(5, 7), rand(5, 7)
    x0 = (x_t - col((1 - ABAR[t]).sqrt()) * eps) / col(ABAR[t].sqrt())
    mean, var, log_var = diffusion.posterior_mean_variance(S, x0, x_t, t)
    abar_prev = ABAR[t - 1]
    eq7 = (col(abar_prev.sqrt() * BETA[t] / (1 - ABAR[t])) * x0
           + col((1 - BETA[t]).sqrt() * (1 - abar_prev) / (1 - ABAR[t])) * x_t)
    eq11 = (x_t - col(BETA[t] / (1 - ABAR[t]).sqrt()) * eps) / col((1 - BETA[t]).sqrt())
    torch.testing.assert_close(mean, eq7, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(mean, eq11, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(var.flatten(), (1 - abar_prev) / (1 - ABAR[t]) * BETA[t], rtol=1e-10, atol=0)
    torch.testing.assert_close(log_var.flatten(), torch.log((1 - abar_prev) / (1 - ABAR[t]) * BETA[t]),
                               rtol=1e-10, atol=0)


def test_posterior_at_t0_is_x0_and_log_variance_is_clipped():
    x0, x_t = rand(2, 3), rand(2, 3)
    mean, var, log_var = diffusion.posterior_mean_variance(S, x0, x_t, torch.tensor([0, 0]))
    torch.testing.assert_close(mean, x0)
    assert (var == 0).all()
    beta_tilde_1 = (1 - ABAR[0]) / (1 - ABAR[1]) * BETA[1]
    torch.testing.assert_close(log_var.flatten(), torch.log(beta_tilde_1).expand(2), rtol=1e-12, atol=0)


def test_parameterisation_conversions_round_trip():
    t = torch.tensor([3.0, 200.0, 900.0])
    alpha, sigma = S.alpha(t), S.sigma(t)
    x0, eps = rand(3, 4), rand(3, 4)
    x_t = col(alpha) * x0 + col(sigma) * eps
    v = col(alpha) * eps - col(sigma) * x0  # Salimans & Ho 2022
    torch.testing.assert_close(diffusion.x0_from_eps(x_t, eps, alpha, sigma), x0)
    torch.testing.assert_close(diffusion.eps_from_x0(x_t, x0, alpha, sigma), eps)
    torch.testing.assert_close(diffusion.v_from_eps_x0(eps, x0, alpha, sigma), v)
    torch.testing.assert_close(diffusion.x0_from_v(x_t, v, alpha, sigma), x0)
    torch.testing.assert_close(diffusion.eps_from_v(x_t, v, alpha, sigma), eps)
    for kind, out in [("epsilon", eps), ("sample", x0), ("v_prediction", v)]:
        e, x = diffusion.eps_x0_from_output(out, x_t, alpha, sigma, kind)
        torch.testing.assert_close(e, eps)
        torch.testing.assert_close(x, x0)
    # score = -eps / sqrt(1 - abar) (seed 002)
    torch.testing.assert_close(diffusion.score_from_eps(eps, sigma), -eps / col((1 - S.alpha_bar(t)).sqrt()))


def test_learned_variance_interpolates_log_beta_and_log_beta_tilde():
    t = torch.tensor([5, 300])
    v_out = rand(2, 6).clamp(-1, 1)
    log_var = diffusion.model_log_variance(S, t, t - 1, "learned_range", v_out)
    frac = (v_out + 1) / 2
    log_beta_tilde = torch.log((1 - ABAR[t - 1]) / (1 - ABAR[t]) * BETA[t])
    expected = frac * col(torch.log(BETA[t])) + (1 - frac) * col(log_beta_tilde)
    torch.testing.assert_close(log_var, expected, rtol=1e-10, atol=1e-12)
    x = rand(2, 6)
    large = diffusion.model_log_variance(S, t, t - 1, "fixed_large", like=x)
    torch.testing.assert_close(large.flatten(), torch.log(BETA[t]))


def test_dynamic_threshold_is_imagen_rule():
    x0 = torch.tensor([[0.2, -3.0, 1.5, 0.1], [0.5, 0.4, -0.3, 0.2]])
    out = diffusion.dynamic_threshold(x0, ratio=1.0, max_value=10.0)
    torch.testing.assert_close(out[0], x0[0] / 3.0)   # s = max |x0| = 3
    torch.testing.assert_close(out[1], x0[1])         # s clamped to 1: unchanged
    assert diffusion.clip_x0(x0).abs().max() <= 1


def test_normal_kl_matches_torch_distributions():
    m1, m2, lv1, lv2 = rand(10), rand(10), rand(10), rand(10)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                            torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(losses.normal_kl(m1, lv1, m2, lv2), ref, rtol=1e-10, atol=1e-12)


def test_discretized_gaussian_likelihood_sums_to_one_over_256_bins():
    bins = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, log_scale in [(0.1, math.log(0.05)), (-0.9, math.log(0.3)), (0.999, math.log(0.01))]:
        logp = losses.discretized_gaussian_log_likelihood(bins, torch.full_like(bins, mean),
                                                          torch.full_like(bins, log_scale))
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-6)


def test_prior_term_of_linear_schedule_is_tiny():
    """L_T < 1e-4 bits/dim for data in [-1, 1] (DDPM Sec. 4: L_T ~ 1e-5)."""
    x0 = torch.rand(64, 3, 8, 8, generator=G, dtype=torch.float64) * 2 - 1
    x0[0] = 1.0  # worst case
    assert losses.prior_bpd(S, x0).max().item() < 1e-4


def test_l_simple_is_zero_for_the_true_target_and_hybrid_adds_lambda_T_vlb():
    x0 = rand(4, 2, 3, 3)
    noise = rand(4, 2, 3, 3)
    t = torch.tensor([0, 10, 500, 999])
    a = ABAR[t].sqrt().reshape(-1, 1, 1, 1)
    sg = (1 - ABAR[t]).sqrt().reshape(-1, 1, 1, 1)

    def oracle(kind):
        def net(x_t, tt):
            eps = (x_t - a * x0) / sg
            return {"epsilon": eps, "sample": x0, "v_prediction": a * eps - sg * x0}[kind]
        return net

    for kind in ["epsilon", "sample", "v_prediction"]:
        out = losses.training_losses(oracle(kind), S, x0, t, noise, prediction_type=kind)
        assert out.loss.abs().max().item() < 1e-18
    lv_net = lambda x_t, tt: torch.cat([oracle("epsilon")(x_t, tt), torch.zeros_like(x_t)], 1)  # noqa: E731
    out = losses.training_losses(lv_net, S, x0, t, noise, loss_type="hybrid", learned_variance=True)
    torch.testing.assert_close(out.loss, out.mse + 0.001 * out.vlb)
    assert (out.vlb[1:] >= 0).all()


def test_the_stop_gradient_on_the_mean_is_hybrids_alone():
    """Improved DDPM Sec. 3.1: in L_hybrid, L_vlb trains only the variance (the mean is detached
    there); L_vlb alone must train the mean too. A linear 'network' out = a * x_t, v = b."""
    x0, noise, t = rand(3, 1, 2, 2), rand(3, 1, 2, 2), torch.tensor([1, 37, 600])
    a = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

    def net(x_t, tt):
        return torch.cat([a * x_t, b * torch.ones_like(x_t)], 1)

    def vlb_sum(a_value):  # L_vlb at a given a, for a finite difference (no autograd)
        with torch.no_grad():
            def fixed(x_t, tt):
                return torch.cat([a_value * x_t, b * torch.ones_like(x_t)], 1)
            return losses.training_losses(fixed, S, x0, t, noise, loss_type="vlb", learned_variance=True).loss.sum()

    losses.training_losses(net, S, x0, t, noise, loss_type="vlb", learned_variance=True).loss.sum().backward()
    h = 1e-6
    expected = (vlb_sum(0.7 + h) - vlb_sum(0.7 - h)) / (2 * h)
    assert expected.abs() > 1e-3 and a.grad.item() == pytest.approx(expected.item(), rel=1e-5)
    a.grad = None
    out = losses.training_losses(net, S, x0, t, noise, loss_type="hybrid", learned_variance=True)
    out.vlb.sum().backward()
    assert a.grad is None or a.grad.item() == 0.0  # the mean gets no gradient from L_vlb in L_hybrid
    assert b.grad.abs().item() > 0


def test_min_snr_weights():
    t = torch.tensor([1.0, 500.0])
    snr = S.alpha_bar(t) / (1 - S.alpha_bar(t))
    w = losses.min_snr_weight(S, t, 5.0, "epsilon")
    torch.testing.assert_close(w, torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / snr)


class _NoVarianceOutput:
    """A denoiser that says it has a learned variance and gives none (the ddpm sampler's error
    from inside its loop)."""

    learned_variance = True

    def __init__(self, inner):
        self.inner, self.schedule = inner, inner.schedule

    def __call__(self, x, t, **cond):
        return self.inner(x, t, **cond)


@pytest.mark.parametrize("variance_type", diffusion.VARIANCE_TYPES)
def test_reverse_steps_of_a_grid_are_p_mean_variance_bit_for_bit(variance_type):
    """ReverseSteps (DDPM's per-grid coefficients, cast once per device and dtype) answers at every step
    what p_mean_variance answers for that step alone, bit for bit, in float32 and then float64 from one
    plan (the cast of one dtype is not served to the other), on a grid that ends at clean data; a plan
    of another schedule gives that schedule's values."""
    grid = torch.tensor([999.0, 700.5, 300.0, 42.0, 1.0, 0.0, -1.0], dtype=torch.float64)
    for schedule in (S, NoiseSchedule.cosine()):
        plan = diffusion.ReverseSteps(schedule, grid, variance_type)
        for dtype in (torch.float32, torch.float64, torch.float32):
            x, x0 = rand(3, 4).to(dtype), rand(3, 4).to(dtype)
            vv = (torch.rand(3, 4, generator=G, dtype=torch.float64) * 2 - 1).to(dtype)
            for i in range(len(grid) - 1):
                mean, log_var = plan.mean_log_variance(i, x, x0, vv)
                ref_mean, ref_log_var = diffusion.p_mean_variance(schedule, x, x0, grid[i], grid[i + 1],
                                                                  variance_type, vv)
                assert mean.dtype == dtype and torch.equal(mean, ref_mean), (schedule, dtype, i)
                assert log_var.dtype == dtype and torch.equal(log_var, ref_log_var), (schedule, dtype, i)
    linear, cosine = (diffusion.ReverseSteps(s, grid, variance_type) for s in (S, NoiseSchedule.cosine()))
    assert linear.to_clean == [False] * (len(grid) - 2) + [True]  # only the last step reaches t = -1
    x = rand(3, 4)
    assert not torch.equal(linear.mean_log_variance(2, x, x, x)[0], cosine.mean_log_variance(2, x, x, x)[0])
    if variance_type == "learned_range":
        from diffkit import Denoiser, sample
        plain = Denoiser(lambda x, t: 0 * x, S)  # no variance output: refused before the first call
        for no_variance in (lambda: linear.mean_log_variance(0, x, x, None),
                            lambda: diffusion.p_mean_variance(S, x, x, 5, 4, variance_type, None),
                            lambda: sample(plain, (2, 3), "ddpm", 2, variance_type=variance_type, progress=False),
                            lambda: sample(_NoVarianceOutput(plain), (2, 3), "ddpm", 2, variance_type=variance_type,
                                           progress=False)):
            with pytest.raises(DiffkitError, match="variance_type='learned_range' needs a network with a "
                                                   "learned variance \\(learned_variance=True\\); use "
                                                   "fixed_small or fixed_large$"):
                no_variance()


def test_an_unknown_variance_type_is_one_line_error_on_each_entry():
    """model_log_variance, p_mean_variance, posterior_and_reverse and ReverseSteps each name the bad
    variance type and the allowed ones (the check runs once per call, in the shared private path)."""
    x = rand(2, 3)
    for call in (lambda: diffusion.model_log_variance(S, 5, 4, "fixed_tiny", like=x),
                 lambda: diffusion.p_mean_variance(S, x, x, 5, 4, "fixed_tiny"),
                 lambda: diffusion.posterior_and_reverse(S, x, x, x, 5, "fixed_tiny"),
                 lambda: diffusion.ReverseSteps(S, [5, 4], "fixed_tiny")):
        with pytest.raises(DiffkitError, match="fixed_tiny.*fixed_small"):
            call()
