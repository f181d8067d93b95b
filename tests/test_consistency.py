"""Consistency models (diffkit.consistency, the ``consistency`` sampler) against closed forms
and diffusers' LCMScheduler."""
import math

import numpy as np
import pytest
import torch

import diffkit
from diffkit import Denoiser, DiffkitError, NoiseSchedule
from diffkit.analytic import GaussianConsistencyFunction, GaussianMixture
from diffkit.consistency import (ConsistencyDenoiser, boundary_scalings, consistency_loss, ddim_teacher_step,
                                 distillation_grid, pseudo_huber_c)
from diffkit.noise import generators_from_seed
from diffkit.samplers import consistency, ddim
from diffkit.timesteps import make_grid

F64 = torch.float64
S = NoiseSchedule.linear()


class LinearNet:
    """eps(x, t) = tanh(t/T) W x + 0.1: cheap, deterministic, time-dependent."""

    def __init__(self, dim, seed=0):
        self.W = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=F64) / dim

    def __call__(self, x, t):
        return torch.tanh(t.to(x.dtype) / 1000)[:, None] * (x @ self.W.to(x.dtype).T) + 0.1


def _gaussian(mu=(0.7, -0.4), s=0.3):
    mu = torch.tensor(mu, dtype=F64)
    return mu, s, GaussianMixture([1.0], mu[None], (s ** 2 * torch.eye(len(mu), dtype=F64))[None])


# ---------------------------------------------------------------- the parameterisation
def test_boundary_scalings_are_diffusers_lcm_ones_and_f_at_zero_is_x_exactly():
    from diffusers import LCMScheduler
    ref = LCMScheduler()
    for t in (0, 1, 19, 259, 499, 999):
        c_skip, c_out = boundary_scalings(float(t))
        want = ref.get_scalings_for_boundary_condition_discrete(t)
        assert float(c_skip) == pytest.approx(want[0], rel=1e-12, abs=1e-15)
        assert float(c_out) == pytest.approx(want[1], rel=1e-12, abs=1e-15)
    den = ConsistencyDenoiser(Denoiser(LinearNet(3), S))
    x = torch.randn(4, 3, dtype=F64)
    assert torch.equal(den(x, 0).x0, x)
    assert torch.equal(den(x, torch.zeros(4)).x0, x)  # per-sample times too


def test_consistency_denoiser_is_c_skip_x_plus_c_out_x0_with_consistent_eps():
    net = LinearNet(3)
    inner = Denoiser(net, S)
    den = ConsistencyDenoiser(inner)
    x = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([5.0, 40.0, 300.0, 999.0])
    pred = den(x, t)
    a, s = S.alpha(t.double())[:, None], S.sigma(t.double())[:, None]
    x0_hat = (x - s * net(x, t)) / a
    st = 10 * t.double()[:, None]
    f = 0.25 / (st ** 2 + 0.25) * x + st / torch.sqrt(st ** 2 + 0.25) * x0_hat
    torch.testing.assert_close(pred.x0, f, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pred.eps, (x - a * f) / s, rtol=1e-12, atol=1e-12)
    assert den.nfe == 1 and den.schedule is S  # NFE counting goes through
    # one DDIM step to clean data returns f
    torch.testing.assert_close(ddim(den, x, torch.tensor([300.0, -1.0], dtype=F64)), den(x, 300.0).x0)


# ---------------------------------------------------------------- the sampler
def test_lcm_spacing_is_diffusers_lcm_scheduler_timesteps():
    from diffusers import LCMScheduler
    for T, steps in ((1000, 1), (1000, 2), (1000, 4), (1000, 7), (1000, 50), (100, 3), (30, 4), (120, 4), (75, 4),
                     (999, 4), (1500, 4)):
        ref = LCMScheduler(num_train_timesteps=T, original_inference_steps=min(50, T))
        ref.set_timesteps(steps)
        grid = make_grid(NoiseSchedule.linear(T), steps, "lcm")
        assert grid[:-1].tolist() == ref.timesteps.tolist() and grid[-1] == -1
    with pytest.raises(DiffkitError, match="at most 50 steps") as err:
        make_grid(S, 51, "lcm")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_consistency_sampler_equals_diffusers_lcm_scheduler_loop(steps):
    from diffusers import LCMScheduler
    net = LinearNet(6, seed=2)
    ref = LCMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    ref.set_timesteps(steps)
    x_T = torch.randn(3, 6, generator=torch.Generator().manual_seed(5))
    x = x_T.clone()
    gens = generators_from_seed(11, 3)
    for t in ref.timesteps:
        x = ref.step(net(x, torch.full((3,), float(t))), t, x, generator=gens, return_dict=False)[0]
    den = ConsistencyDenoiser(Denoiser(net, S))
    ours = consistency(den, x_T.clone(), make_grid(S, steps, "lcm"), generator=generators_from_seed(11, 3))
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-6)
    assert den.nfe == steps
    # the front door: the sampler's default grid is the lcm one, per-sample step seeds as other samplers
    den.reset_nfe()
    out = diffkit.sample(den, x_T.clone(), sampler="consistency", steps=steps, seed=3, progress=False)
    assert out.shape == x_T.shape and den.nfe == steps


def _sampler_moments(steps, x_T, grid_times, mu, s):
    """Mean and variance (per dimension) of the consistency sampler's output driven by the exact f*
    of N(mu, s^2 I) from x_T ~ N(m_T, v_T): f*(x, t) = a_0 mu + r_0/r_t (x - a_t mu),
    r_t^2 = a_t^2 s^2 + sigma_t^2, is affine, and renoising x = a_t y + sigma_t z is too."""
    a = lambda t: S.alpha(torch.tensor(float(t), dtype=F64)).item()  # noqa: E731
    sg = lambda t: S.sigma(torch.tensor(float(t), dtype=F64)).item()  # noqa: E731
    r = lambda t: math.sqrt(a(t) ** 2 * s ** 2 + sg(t) ** 2)  # noqa: E731
    m, v = (torch.as_tensor(value, dtype=F64) for value in x_T)
    for i, t in enumerate(grid_times):
        if i > 0:
            m, v = a(t) * m, a(t) ** 2 * v + sg(t) ** 2
        m, v = a(0) * mu + r(0) / r(t) * (m - a(t) * mu), (r(0) / r(t)) ** 2 * v
    return m, v


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_consistency_sampler_with_the_exact_consistency_function_has_the_exact_moments(steps):
    mu, s, _ = _gaussian()
    f_star = Denoiser(GaussianConsistencyFunction(mu, s ** 2 * torch.eye(2, dtype=F64), S), S, prediction_type="sample")
    n = 200_000
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    grid = make_grid(S, steps, "lcm")
    out = consistency(f_star, x_T, grid, generator=torch.Generator().manual_seed(1))
    m, v = _sampler_moments(steps, (0.0, 1.0), grid[:-1].tolist(), mu, s)
    se = torch.sqrt(v / n)
    assert ((out.mean(0) - m).abs() < 5 * se).all(), (out.mean(0), m)
    assert ((out.var(0) - v).abs() < 5 * v * math.sqrt(2 / n)).all(), (out.var(0), v)
    # the target of all of this: x_T drawn from the exact marginal gives the marginal at t = 0 in one step
    if steps == 1:
        a_T, s_T, a_0, s_0 = (S.alpha(999.0).item(), S.sigma(999.0).item(), S.alpha(0.0).item(), S.sigma(0.0).item())
        x_T = a_T * mu + math.sqrt(a_T ** 2 * s ** 2 + s_T ** 2) * x_T
        one = consistency(f_star, x_T, grid)
        assert ((one.mean(0) - a_0 * mu).abs() < 5 * math.sqrt(a_0 ** 2 * s ** 2 + s_0 ** 2) / math.sqrt(n)).all()
        assert ((one.var(0) / (a_0 ** 2 * s ** 2 + s_0 ** 2) - 1).abs() < 5 * math.sqrt(2 / n)).all()


def test_exact_consistency_function_is_the_ode_solution_and_identity_at_zero():
    mu, s, g = _gaussian()
    f = GaussianConsistencyFunction(mu, s ** 2 * torch.eye(2, dtype=F64), S)
    x = torch.randn(5, 2, dtype=F64)
    assert torch.allclose(f(x, torch.zeros(5)), x, atol=1e-14)
    # following the exact PF-ODE from t to s < t does not change f* (self-consistency, CM eq. 3)
    t, u = torch.tensor(700.0, dtype=F64), torch.tensor(120.0, dtype=F64)
    from diffkit.analytic import gaussian_ode_solution
    x_u = gaussian_ode_solution(mu, s ** 2 * torch.eye(2, dtype=F64), x, S.alpha(t), S.sigma(t), S.alpha(u), S.sigma(u))
    torch.testing.assert_close(f(x_u, u.expand(5)), f(x, t.expand(5)), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- the losses
def test_distillation_grid_is_lcm_and_checks_the_skip():
    grid = distillation_grid(1000)
    assert grid[:3].tolist() == [0, 19, 39] and grid[-1] == 999 and len(grid) == 51
    assert distillation_grid(1000, 1).tolist() == list(range(1000))
    assert distillation_grid(100, 30).tolist() == [0, 29, 59, 89]
    for bad in (0, 1000, -3, 2.5):
        with pytest.raises(DiffkitError, match="consistency_skip") as err:
            distillation_grid(1000, bad)
        assert "\n" not in str(err.value)


class AffineNet:
    def __call__(self, x, t):
        return 0.3 * x + 0.1


def test_losses_on_a_hand_computed_example():
    x0 = torch.tensor([[0.5, -1.0]], dtype=F64)
    z = torch.tensor([[0.2, 0.4]], dtype=F64)
    teacher = Denoiser(lambda x, t: 0.5 * x, S)  # eps = x / 2
    student = ConsistencyDenoiser(Denoiser(AffineNet(), S, prediction_type="sample"))
    a39, s39 = math.sqrt(S.alphas_cumprod[39].item()), math.sqrt(1 - S.alphas_cumprod[39].item())
    a19, s19 = math.sqrt(S.alphas_cumprod[19].item()), math.sqrt(1 - S.alphas_cumprod[19].item())

    def f(x, t):
        c_skip, c_out = 0.25 / ((10 * t) ** 2 + 0.25), 10 * t / math.sqrt((10 * t) ** 2 + 0.25)
        return c_skip * x + c_out * (0.3 * x + 0.1)

    x39 = a39 * x0 + s39 * z
    eps = 0.5 * x39
    x_hat = a19 * (x39 - s39 * eps) / a39 + s19 * eps
    d2 = (f(x39, 39) - f(x_hat, 19)).pow(2).sum().item()
    c = 0.00054 * math.sqrt(2)
    t_next, t_now = torch.tensor([39.0]), torch.tensor([19.0])
    cd = consistency_loss(student, x0, z, t_next, t_now, teacher=teacher, distance_kind="l2")
    assert cd.item() == pytest.approx(d2 / 2, rel=1e-6)
    cd = consistency_loss(student, x0, z, t_next, t_now, teacher=teacher)
    assert cd.item() == pytest.approx(math.sqrt(d2 + c * c) - c, rel=1e-6)
    ct = consistency_loss(student, x0, z, t_next, t_now, distance_kind="l2")  # CM Alg. 3: same z, no teacher
    assert ct.item() == pytest.approx((f(x39, 39) - f(a19 * x0 + s19 * z, 19)).pow(2).mean().item(), rel=1e-6)
    assert pseudo_huber_c((3, 32, 32)) == pytest.approx(0.03, rel=0.01)  # iCT: c = 0.03 on CIFAR-10


def test_teacher_step_is_ddim_eta_0():
    net = LinearNet(3)
    den = Denoiser(net, S)
    x = torch.randn(4, 3, dtype=F64)
    torch.testing.assert_close(ddim_teacher_step(den, x, torch.full((4,), 600.0), torch.full((4,), 580.0)),
                               ddim(den, x, torch.tensor([600.0, 580.0], dtype=F64)), rtol=1e-12, atol=1e-12)


def test_distillation_loss_with_the_exact_teacher_and_student_falls_as_the_ddim_local_error():
    """Teacher eps*, student f*: the only mismatch is the first-order DDIM step's local error,
    O(h^2) in the step h, so sqrt of the l2 loss falls 4x per halving of the skip."""
    mu, s, g = _gaussian()
    teacher = Denoiser(g.network(S), S)
    student = Denoiser(GaussianConsistencyFunction(mu, s ** 2 * torch.eye(2, dtype=F64), S), S,
                       prediction_type="sample")
    x0 = g.sample(4096, torch.Generator().manual_seed(0))[0]
    z = torch.randn(4096, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    t_next = torch.full((4096,), 500.0)
    skips = [80, 40, 20, 10]
    rms = [consistency_loss(student, x0, z, t_next, t_next - k, teacher=teacher,
                            distance_kind="l2").mean().sqrt().item()
           for k in skips]
    slope = np.polyfit(np.log(skips), np.log(rms), 1)[0]
    assert 1.8 < slope < 2.2, (slope, rms)
    assert rms[-1] < 1e-4


class PerTimeAffine(torch.nn.Module):
    """x0_hat(x, t_n) = a_n * x + b_n per grid time: with the consistency parameterisation this
    family contains the exact (and the DDIM-discretised) consistency function of Gaussian data."""

    def __init__(self, grid, dim):
        super().__init__()
        self.grid = grid.float()
        self.a = torch.nn.Parameter(torch.zeros(len(grid), dim, dtype=F64))
        self.b = torch.nn.Parameter(torch.zeros(len(grid), dim, dtype=F64))

    def forward(self, x, t):
        i = torch.searchsorted(self.grid, t.float().cpu())
        return self.a[i] * x + self.b[i]


def test_distillation_from_the_exact_teacher_converges_to_its_ddim_consistency_function():
    """With theta- = theta (iCT) and a first-order teacher the fixed point of CD is the teacher's DDIM
    map from t_n down the grid to t = 0 (f(x, t_n) = f(DDIM(x), t_{n-1}), f(x, 0) = x); training a
    family that contains it reaches it (per sample), so one-step samples have its moments. (That
    map is not f*: on this narrow Gaussian, s = 0.3, 10 DDIM steps give std 0.19, 50 steps 0.24, the
    exact f* 0.30; the CD loss test above measures the step's local error.)"""
    torch.manual_seed(0)
    mu, s, g = _gaussian()
    teacher = Denoiser(g.network(S), S)
    grid = distillation_grid(1000, 100)  # 0, 99, ..., 999: N = 10
    net = PerTimeAffine(grid, 2)
    student = ConsistencyDenoiser(Denoiser(net, S, prediction_type="sample"))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    for step in range(400):  # rel reaches 5e-4 (600 steps: 1e-5; 300: 0.04, above the bound)
        x0 = g.sample(256, gen)[0]
        z = torch.randn(256, 2, generator=gen, dtype=F64)
        n = torch.randint(len(grid) - 1, (256,), generator=gen)
        loss = consistency_loss(student, x0, z, grid[n + 1], grid[n], teacher=teacher, distance_kind="l2").mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x_T = torch.randn(20000, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    with torch.no_grad():
        one = consistency(student, x_T, make_grid(S, 1, "lcm"))
    fixed_point = ddim(teacher, x_T, grid.flip(0))  # 999, 899, ..., 99 -> 0
    rel = ((one - fixed_point).pow(2).mean() / fixed_point.var(0).mean()).sqrt().item()
    assert rel < 0.02, rel
    torch.testing.assert_close(one.mean(0), fixed_point.mean(0), atol=0.01, rtol=0)
    torch.testing.assert_close(one.std(0), fixed_point.std(0), atol=0.01, rtol=0)
    exact = GaussianConsistencyFunction(mu, s ** 2 * torch.eye(2, dtype=F64), S)(x_T, torch.full((20000,), 999.0))
    torch.testing.assert_close(one.mean(0), exact.mean(0), atol=0.01, rtol=0)  # the mean is right


def test_training_loss_with_the_exact_consistency_function_has_its_closed_form_expectation():
    """CT (no teacher, the same z at both times) with f* of N(mu, s^2 I): f*(x_t, t) = a_0 mu +
    r_0 (a_t (x0 - mu) + sigma_t z) / r_t, so the l2 loss (mean over dimensions) has the expectation
    r_0^2 [(a'/r' - a/r)^2 s^2 + (sigma'/r' - sigma/r)^2] (primes: t_next), O(k^2) in the skip k:
    an unbiased but noisy estimate of the CD loss's zero (CM Thm. 2)."""
    mu, s, g = _gaussian()
    f_star = Denoiser(GaussianConsistencyFunction(mu, s ** 2 * torch.eye(2, dtype=F64), S), S, prediction_type="sample")
    n = 100_000
    x0 = g.sample(n, torch.Generator().manual_seed(0))[0]
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=F64)

    def coefficients(t):
        a, sg = S.alpha(float(t)).item(), S.sigma(float(t)).item()
        return a, sg, math.sqrt(a * a * s * s + sg * sg)

    a0, s0, r0 = coefficients(0)
    means = []
    for k in (40, 20):
        t_next = 500.0
        loss = consistency_loss(f_star, x0, z, torch.full((n,), t_next), torch.full((n,), t_next - k),
                                distance_kind="l2")
        (a1, s1, r1), (a, sg, r) = coefficients(t_next), coefficients(t_next - k)
        expected = r0 ** 2 * ((a1 / r1 - a / r) ** 2 * s * s + (s1 / r1 - sg / r) ** 2)
        # per sample the loss is (D_1^2 + D_2^2)/2 with D_i ~ N(0, expected): relative standard deviation 1
        assert loss.mean().item() == pytest.approx(expected, rel=5 / math.sqrt(n)), (k, loss.mean(), expected)
        means.append(expected)
    assert 3.5 < means[0] / means[1] < 4.5  # O(k^2): about 4x per halving of k (4.36 here, higher orders)


def test_the_target_and_the_student_draw_the_same_dropout_masks():
    """With theta- = stopgrad(theta) and equal inputs (t_next = t_now, consistency training) the
    loss is exactly 0 in training mode, dropout on: the target call's random state is forked so the
    student's call draws the same masks (the authors' consistency_losses restores the RNG state).
    Without that the loss has a floor of its own (the two calls below differ)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.Dropout(0.5), torch.nn.Linear(64, 4)).double().train()
    student = ConsistencyDenoiser(Denoiser(lambda x, t: net(x), NoiseSchedule.linear()))
    x0 = torch.randn(16, 4, dtype=torch.float64)
    noise = torch.randn(16, 4, dtype=torch.float64)
    t = torch.full((16,), 499.0, dtype=torch.float64)
    assert not torch.equal(student(x0, t).x0, student(x0, t).x0)  # dropout is on
    for kind in ("l2", "pseudo-huber"):
        loss = consistency_loss(student, x0, noise, t, t, distance_kind=kind)
        assert loss.abs().max().item() < 1e-15, (kind, loss)


@pytest.mark.parametrize("grid,times", [
    ([0, 19, 39, 59], [19, 39, 59]), ([0, 1, 2, 3], [0, 1, 2, 3]), ([0, 599], [599]), ([0, 2, 5, 8], [2, 5, 8])])
def test_source_times_of_a_distillation_grid(grid, times):
    """The lcm spacing's source times of a stored grid: the grid without its boundary t_0 = 0, but
    with it for a skip of 1 (t_1 = 0 is a source time); k > T/2 ([0, 599]) and diffusers' N = 300
    (T // N = 3: 2, 5, 8, ...) included."""
    from diffkit.consistency import source_times
    assert source_times(grid).tolist() == [float(t) for t in times]


@pytest.mark.parametrize("curriculum", ["cm", "ict"])
def test_a_curriculums_grid_never_has_its_boundary_as_a_source_time(curriculum):
    """A curriculum's EDM-spaced grid starts 0, 1, 2, ... once it is fine, like a skip-1 grid, but its
    boundary t = 0 is only a target (CM Alg. 3: n ~ U[1, N - 1], source time t_{n+1}): the source
    times are the rest; a fixed grid with those first gaps keeps 0, as the skip-1 grid does."""
    from diffkit.consistency import source_times
    assert source_times([0, 1, 2, 5], curriculum).tolist() == [1.0, 2.0, 5.0]
    assert source_times([0, 1, 2, 5]).tolist() == source_times([0, 1, 2, 5], "fixed").tolist() == [0.0, 1.0, 2.0, 5.0]


def test_a_wrapped_consistency_model_still_samples_on_its_own_times():
    """Guidance or thresholding around a consistency model keeps its source times (the lcm grid)."""
    from diffkit.consistency import distillation_grid
    from diffkit.guidance import ClassifierFreeGuidance
    from diffkit.sampling import sampler_grid, thresholded
    from diffkit.samplers import get_sampler
    inner = Denoiser(lambda x, t, y=None: 0 * x, S)
    cm = ConsistencyDenoiser(inner, grid=distillation_grid(1000, 100))
    for den in (cm, ClassifierFreeGuidance(cm, 1.5, null_class=10), thresholded(cm, "clip", {})):
        assert sampler_grid(den, get_sampler("consistency"), steps=4)[:-1].tolist() == [999, 799, 499, 299]
