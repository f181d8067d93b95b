"""DDPM and DDIM against the seed formulas and against the exact Gaussian-mixture model."""
import functools
import math

import pytest
import torch

import diffkit
from diffkit import Denoiser, DiffkitError, NoiseSchedule
from diffkit.analytic import GaussianMixture
from diffkit.noise import generators_from_seed
from diffkit.samplers import ddim, ddim_invert, ddpm
from diffkit.timesteps import make_grid

S = NoiseSchedule.linear()
ABAR = S.alphas_cumprod


class LinearNet:
    """A fixed random linear 'network' eps(x, t) = tanh(t/T) W x: cheap, deterministic."""

    def __init__(self, dim, seed=0):
        self.W = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) / dim

    def __call__(self, x, t):
        return torch.tanh(t.to(x.dtype) / 1000)[:, None] * (x @ self.W.T)


def test_ddim_step_is_the_seed_003_formula():
    """x_{tau_{i-1}} = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma z (seed 000/003)."""
    net = LinearNet(4)
    d = Denoiser(net, S)
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grid = torch.tensor([600.0, 400.0], dtype=torch.float64)
    for eta in [0.0, 0.5, 1.0]:
        out = ddim(d, x, grid, eta=eta, generator=torch.Generator().manual_seed(7))
        a, a_prev = ABAR[600], ABAR[400]
        eps = net(x, torch.full((3,), 600.0))
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(1 - a / a_prev)
        z = torch.randn(3, 4, generator=torch.Generator().manual_seed(7)).double()
        x0_hat = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        expected = math.sqrt(a_prev) * x0_hat + math.sqrt(1 - a_prev - sigma ** 2) * eps + (sigma * z if eta else 0)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_ddpm_step_is_algorithm_2():
    """x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t/sqrt(1-abar_t) eps) + sigma_t z, sigma^2 = beta (seed 001)."""
    net = LinearNet(4)
    d = Denoiser(net, S)
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    t = 300
    out = ddpm(d, x, torch.tensor([300.0, 299.0], dtype=torch.float64), variance_type="fixed_large",
               generator=torch.Generator().manual_seed(3))
    beta, alpha = S.betas[t], 1 - S.betas[t]
    eps = net(x, torch.full((3,), float(t)))
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(3)).double()
    expected = (x - beta / (1 - ABAR[t]).sqrt() * eps) / alpha.sqrt() + beta.sqrt() * z
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_ddim_eta1_on_full_schedule_equals_ddpm_with_beta_tilde():
    net = LinearNet(5, seed=3)
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    grid = make_grid(S, 1000, "linear")
    a = ddim(Denoiser(net, S), x, grid, eta=1.0, generator=torch.Generator().manual_seed(9))
    b = ddpm(Denoiser(net, S), x, grid, variance_type="fixed_small", generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_ddim_eta0_is_deterministic():
    net = LinearNet(3)
    x = torch.randn(2, 3, dtype=torch.float64)
    grid = make_grid(S, 20, "quadratic")
    a = ddim(Denoiser(net, S), x, grid, generator=torch.Generator().manual_seed(0))
    b = ddim(Denoiser(net, S), x, grid, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_ddim_subsequences_are_the_seed_definitions():
    lin = make_grid(S, 10, "linear")
    assert lin.tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0, -1]
    quad = make_grid(S, 10, "quadratic")
    c = 0.8 * 1000 / 81
    assert quad[:-1].flip(0).tolist() == [math.floor(c * i * i) for i in range(10)]
    trailing = make_grid(S, 4, "trailing")
    assert trailing.tolist() == [999, 749, 499, 249, -1]
    # DDIM's CIFAR-10 table uses quadratic at S = 50 and 100, where floor(c i^2) repeats 0 and 1 at
    # the small end: those move up by one, every other time is the formula's
    for steps in (50, 100):
        c = 0.8 * 1000 / (steps - 1) ** 2
        taus = make_grid(S, steps, "quadratic")[:-1].flip(0).tolist()
        assert len(taus) == steps and all(b > a for a, b in zip(taus, taus[1:]))
        formula = [math.floor(c * i ** 2) for i in range(steps)]
        moved = [i for i in range(steps) if taus[i] != formula[i]]
        assert moved and all(taus[i] == taus[i - 1] + 1 and formula[i] <= taus[i - 1] for i in moved)
        assert taus[-1] == formula[-1] == 800


def improved_diffusion_ddim_respacing(num_timesteps, desired_count):
    """improved-diffusion's ``space_timesteps(T, "ddimN")`` (respace.py), transcribed: the first
    stride whose range has exactly N times, or None where it raises."""
    for i in range(1, num_timesteps):
        if len(range(0, num_timesteps, i)) == desired_count:
            return sorted(range(0, num_timesteps, i))
    return list(range(num_timesteps)) if desired_count == num_timesteps else None


@pytest.mark.parametrize("T", [1000, 100, 37])
def test_strided_spacing_is_improved_diffusions_ddim_respacing(T):
    sched = NoiseSchedule.linear(T)
    for steps in range(1, T + 1):
        expected = improved_diffusion_ddim_respacing(T, steps)
        if expected is None:
            with pytest.raises(DiffkitError, match=f"steps={steps}: no integer stride"):
                make_grid(sched, steps, "strided")
            continue
        grid = make_grid(sched, steps, "strided")
        assert grid[:-1].flip(0).tolist() == expected and grid[-1] == -1
        if T % steps == 0:  # then it is diffusers' leading
            assert torch.equal(grid, make_grid(sched, steps, "leading"))
    assert make_grid(NoiseSchedule.linear(1000), 30, "strided")[:2].tolist() == [986, 952]  # stride 34


def _mixture():
    return GaussianMixture.random(dim=2, num_components=3, seed=5, spread=0.8, scale=0.4)


@functools.lru_cache(maxsize=None)
def _mixture_tolerances(n, seed):
    """4.5 standard errors of the sample mean and covariance of ``n`` samples of ``_mixture()``, from
    a large true sample (drawn once for the ddpm and ddim cases)."""
    gm, gen = _mixture(), torch.Generator().manual_seed(seed)
    ref, _ = gm.sample(200_000, gen)
    mu = ref.mean(0)
    centred = ref - mu
    se_mean = ref.std(0) / math.sqrt(n)
    prods = centred[:, :, None] * centred[:, None, :]
    se_cov = prods.std(0) / math.sqrt(n)
    return 4.5 * se_mean, 4.5 * se_cov


@pytest.mark.parametrize("sampler,kwargs", [("ddpm", {}), ("ddim", {"eta": 0.0})])
def test_1000_step_samplers_reproduce_the_mixture(sampler, kwargs):
    """With the exact eps*, DDPM ancestral and DDIM on 1000 steps sample the data distribution:
    mean and covariance within 4.5 standard errors for n = 3000 samples (plus 0.01 for the
    discretisation bias of 1000 steps)."""
    gm = _mixture()
    n = 3000
    tol_mean, tol_cov = _mixture_tolerances(n, 11)
    d = Denoiser(gm.network(S), S)
    x = diffkit.sample(d, (n, 2), sampler, 1000, generator=torch.Generator().manual_seed(123),
                       dtype=torch.float64, progress=False, **kwargs)
    assert d.nfe == 1000
    assert ((x.mean(0) - gm.mean()).abs() <= tol_mean + 0.01).all(), (x.mean(0), gm.mean(), tol_mean)
    assert ((torch.cov(x.T) - gm.cov()).abs() <= tol_cov + 0.01).all(), (torch.cov(x.T), gm.cov(), tol_cov)


def test_ddim_inversion_round_trip():
    """DDIM inverted to noise and sampled back on the same grid of 250 steps: RMS 1.2e-4 (1000
    steps: 7.7e-6, at 2.5 times the cost), a tenth of the bound."""
    gm = GaussianMixture.random(dim=3, num_components=2, seed=1, scale=0.5)
    x0, _ = gm.sample(256, torch.Generator().manual_seed(0))
    d = Denoiser(gm.network(S), S)
    grid = make_grid(S, 250, "linear")
    x_T = ddim_invert(d, x0, grid)
    back = ddim(d, x_T, grid)
    rms = (back - x0).pow(2).mean().sqrt().item()
    assert rms < 1e-3, rms
    assert x_T.std().item() > 0.8  # it really reached noise


def test_samples_do_not_depend_on_batch_size():
    gm = GaussianMixture.random(dim=2, num_components=2, seed=2)
    d = Denoiser(gm.network(S), S)
    for sampler in ["ddpm", "ddim"]:
        kw = {"eta": 0.7} if sampler == "ddim" else {}
        big = diffkit.sample(d, (16, 2), sampler, 20, seed=40, dtype=torch.float64, progress=False, **kw)
        one = diffkit.sample(d, (1, 2), sampler, 20, generator=generators_from_seed(45, 1),
                             dtype=torch.float64, progress=False, **kw)
        torch.testing.assert_close(one[0], big[5])


def test_respaced_ddpm_learned_variance_runs_and_is_finite():
    gm = GaussianMixture(torch.ones(1), torch.zeros(1, 2), (0.25 * torch.eye(2))[None])
    d = Denoiser(gm.network(S, learned_variance=True), S, learned_variance=True)
    x = diffkit.sample(d, (64, 2), "ddpm", 50, seed=0, dtype=torch.float64, progress=False)
    assert torch.isfinite(x).all() and abs(x.std().item() - 0.5) < 0.15


@pytest.mark.parametrize("call", [
    lambda d: diffkit.sample(d, (2, 2), "no-such-sampler", 10),
    lambda d: diffkit.sample(d, (2, 2), "ddim", 0),
    lambda d: diffkit.sample(d, (2, 2), "ddim", 1001),
    lambda d: diffkit.sample(d, (2, 2), "ddim", 10, eta=-0.1),
    lambda d: diffkit.sample(d, (2, 2), "ddim", 10, spacing="cubic"),
    lambda d: diffkit.sample(d, (2, 2), "ddim", 10, generator=[torch.Generator()]),
    lambda d: diffkit.sample(d, (2, 3), "ddim", 10),  # network gives (2, 2)
    lambda d: diffkit.sample(d, (2,), "ddim", 10),
])
def test_bad_sampling_input_is_one_line_value_error(call):
    gm = GaussianMixture.random(dim=2, num_components=1)
    d = Denoiser(lambda x, t: gm.network(S)(x[:, :2], t), S)
    with pytest.raises(ValueError) as err:
        call(d)
    assert "\n" not in str(err.value)


def test_mixed_precision_runs_the_network_under_autocast_and_returns_the_input_dtype():
    # a linear "network" whose matmul autocast runs in bf16: the prediction comes back fp32 and
    # within bf16 rounding of the fp32 answer; the sampler's own arithmetic is not touched.
    torch.manual_seed(0)
    w = torch.randn(4, 4) / 2
    seen = []

    def net(x, t):
        y = x @ w
        seen.append(y.dtype)
        return y

    S = NoiseSchedule.linear()
    x = torch.randn(8, 4)
    ref = Denoiser(net, S)(x, 500.0).eps
    pred = Denoiser(net, S, mixed_precision="bf16")(x, 500.0)
    assert seen == [torch.float32, torch.bfloat16]
    assert pred.eps.dtype == torch.float32 and pred.x0.dtype == torch.float32
    assert torch.allclose(pred.eps, ref, rtol=2e-2, atol=2e-2)


def test_mixed_precision_bad_values_are_one_line_errors():
    S = NoiseSchedule.linear()
    with pytest.raises(DiffkitError, match="mixed_precision"):
        Denoiser(lambda x, t: x, S, mixed_precision="fp8")
    with pytest.raises(DiffkitError, match="needs a CUDA device"):
        Denoiser(lambda x, t: x, S, mixed_precision="fp16")(torch.randn(2, 3), 10.0)


def test_bf16_on_a_cuda_device_without_bfloat16_is_a_one_line_error(monkeypatch):
    """torch.autocast raises a plain RuntimeError there (a traceback from the CLI); diffkit says why in one
    line. No GPU here: torch.cuda.is_bf16_supported is patched."""
    from diffkit.denoiser import autocast
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(DiffkitError, match=r"^mixed_precision='bf16' needs a CUDA device with bfloat16 support; "
                                           r"this one has none .*: use 'fp16' or 'no'$"):
        autocast("bf16", "cuda")
    autocast("bf16", "cpu")  # the CPU's bfloat16 autocast does not ask the GPU


def test_sample_holds_one_autocast_context_for_a_mixed_precision_denoiser():
    # diffkit.sample keeps autocast open around the loop (weights cast once, not per step); the
    # state the sampler carries stays fp32 and the bf16 result is close to the fp32 one.
    S = NoiseSchedule.linear()
    gm = GaussianMixture.random(4, 3, seed=0)
    enabled = []

    def net(x, t):
        enabled.append(torch.is_autocast_enabled("cpu"))
        return gm.network(S)(x, t)

    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    ref = diffkit.sample(Denoiser(net, S), x.clone(), sampler="dpm-solver++-2m", steps=10, progress=False)
    states = []
    out = diffkit.sample(Denoiser(net, S, mixed_precision="bf16"), x.clone(), sampler="dpm-solver++-2m", steps=10,
                         progress=False, callback=lambda d: states.append(d["x"].dtype))
    assert enabled == [False] * 10 + [True] * 10
    assert out.dtype == torch.float32 and set(states) == {torch.float32}
    assert (out - ref).abs().max() < 0.1


def test_compile_runs_the_network_through_torch_compile_and_keeps_the_samples():
    # dynamo traces the network; the counting backend runs the traced graph eagerly (no C++ code
    # generation, which takes minutes on this CPU). The compiled network gives the eager samples,
    # and it is traced once for the whole loop: new times are inputs, not recompiles.
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    S = NoiseSchedule.linear()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.SiLU(), torch.nn.Linear(16, 4))

    def network(x, t):
        return net(x) * (t[:, None] / 1000.0)

    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    ref = diffkit.sample(Denoiser(network, S), x.clone(), sampler="dpm-solver++-2m", steps=8, progress=False)
    torch._dynamo.reset()
    counter = CompileCounter()
    den = Denoiser(network, S).compile("default", backend=counter)
    assert den.compiled == "default" and den.net is not network
    assert den.compile("max-autotune").compiled == "default"  # compiled once
    out = diffkit.sample(den, x.clone(), sampler="dpm-solver++-2m", steps=8, progress=False)
    assert torch.allclose(out, ref, atol=1e-6, rtol=1e-6)
    assert den.nfe == 8 and counter.frame_count == 1
    assert Denoiser(network, S).compile("no").net is network


def test_compile_bad_mode_is_a_one_line_error():
    with pytest.raises(DiffkitError, match="compile") as err:
        Denoiser(lambda x, t: x, NoiseSchedule.linear()).compile("fast")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_karras_samplers_vp_scale_multiplies_bitwise_as_the_python_float(dtype):
    """The Karras samplers map x~ to the VP state with 0-dim tensors made once per run for the
    sigma~ they will meet (it skips wrapping a Python float per call); PyTorch casts a Python scalar
    to the tensor's dtype in the kernel, so the products are the same bits (what keeps those
    samplers' results unchanged). They are CPU tensors whatever the default device."""
    from diffkit.samplers.karras import _KarrasGrid
    x = 10 * torch.randn(4096, generator=torch.Generator().manual_seed(0), dtype=dtype)
    kg = _KarrasGrid(NoiseSchedule.linear(), torch.tensor([999.0, 500.0, 0.0]), x)
    with torch.device("meta"):  # a default device elsewhere must not move the scales
        kg._know_scales([0.123456789012345, 157.0])
    for sigma in (*kg.sigma, 0.123456789012345, 157.0):
        scale = kg.vp_scale(sigma)
        assert isinstance(scale, torch.Tensor) and scale.dtype == dtype and scale.device.type == "cpu"
        assert kg.vp_scale(sigma) is scale
        assert torch.equal(x * scale, (1.0 / math.sqrt(1.0 + sigma * sigma)) * x), sigma
    assert isinstance(kg.vp_scale(0.5), float)  # not known ahead (churn): the float, the same bits
    bf16_grid = _KarrasGrid(NoiseSchedule.linear(), torch.tensor([999.0, 0.0]), x.bfloat16())
    assert isinstance(bf16_grid.vp_scale(1.0), float)


def test_karras_scales_made_in_inference_mode_serve_a_run_with_autograd():
    """Scale tensors are made outside inference mode: a run with autograd after one under
    torch.inference_mode gives the same result and a gradient."""
    from diffkit.samplers.karras import heun
    den = Denoiser(lambda x, t: 0.1 * x, NoiseSchedule.linear())
    grid = torch.tensor([987.25, 432.125, 0.0])
    with torch.inference_mode():
        first = heun(den, torch.ones(2, 3), grid)
    x = torch.ones(2, 3, requires_grad=True)
    again = heun(den, x, grid)
    again.sum().backward()
    assert torch.equal(first, again.detach()) and x.grad is not None
