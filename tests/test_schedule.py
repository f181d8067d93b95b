"""NoiseSchedule against the closed forms of DDPM, Improved DDPM and Lin et al. 2024."""
import math

import pytest
import torch

from diffkit import DiffkitError, NoiseSchedule


def test_linear_betas_are_ddpm_defaults():
    s = NoiseSchedule.linear()
    assert s.num_timesteps == 1000
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    expected = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    torch.testing.assert_close(s.alphas_cumprod, expected, rtol=0, atol=1e-15)


def test_cosine_matches_improved_ddpm_formula():
    T, s_off = 1000, 0.008
    s = NoiseSchedule.cosine(T)
    f = lambda t: math.cos((t / T + s_off) / (1 + s_off) * math.pi / 2) ** 2  # noqa: E731
    for t in [0, 1, 10, 500, 900, 990]:
        assert s.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-10)
    assert s.betas.max().item() == pytest.approx(0.999)  # clipped near t = T


def test_scaled_linear_and_sigmoid_endpoints():
    s = NoiseSchedule.scaled_linear()
    assert s.betas[0].item() == pytest.approx(0.00085) and s.betas[-1].item() == pytest.approx(0.012)
    g = NoiseSchedule.sigmoid(100, 1e-4, 0.02)
    assert (g.betas[1:] > g.betas[:-1]).all() and 1e-4 < g.betas[0] < g.betas[-1] < 0.02


def test_zero_terminal_snr_gives_exact_zero():
    base = NoiseSchedule.scaled_linear()
    z = base.rescale_zero_terminal_snr()
    assert z.alphas_cumprod[-1].item() == 0.0
    assert z.alphas_cumprod[0].item() == pytest.approx(base.alphas_cumprod[0].item(), rel=1e-12)
    assert z.log_snr(999.0).item() == -math.inf
    assert NoiseSchedule.from_name("linear", zero_terminal_snr=True).alphas_cumprod[-1].item() == 0.0


def test_continuous_time_interpolates_log_alpha():
    s = NoiseSchedule.linear()
    abar = s.alphas_cumprod
    t = torch.tensor([0.0, 17.0, 998.0, 999.0], dtype=torch.float64)
    torch.testing.assert_close(s.alpha_bar(t), abar[t.long()], rtol=1e-12, atol=0)
    mid = s.log_alpha(torch.tensor(17.5))
    assert mid.item() == pytest.approx(0.25 * (math.log(abar[17]) + math.log(abar[18])), rel=1e-12)
    assert s.alpha(-1.0).item() == 1.0 and s.sigma(-1.0).item() == 0.0 and s.log_snr(-1.0).item() == math.inf
    # Karras sigma = sqrt((1 - abar)/abar); log-SNR = log(alpha/sigma)
    assert s.karras_sigma(250.0).item() == pytest.approx(math.sqrt((1 - abar[250]) / abar[250]), rel=1e-10)
    assert s.log_snr(250.0).item() == pytest.approx(0.5 * math.log(abar[250] / (1 - abar[250])), rel=1e-10)


@pytest.mark.parametrize("name", ["linear", "cosine", "scaled_linear"])
def test_inverse_maps_round_trip(name):
    s = NoiseSchedule.from_name(name)
    t = torch.tensor([-1.0, 0.0, 0.37, 12.5, 500.0, 998.25, 999.0], dtype=torch.float64)
    torch.testing.assert_close(s.t_from_log_snr(s.log_snr(t)), t, atol=1e-7, rtol=0)
    torch.testing.assert_close(s.t_from_karras_sigma(s.karras_sigma(t)), t, atol=1e-7, rtol=0)


@pytest.mark.parametrize("name", ["linear", "cosine", "scaled_linear", "sigmoid"])
@pytest.mark.parametrize("T", [10, 20, 50, 500, 2000])
def test_round_trip_at_the_top_stays_in_range_and_every_continuous_grid_builds(name, T):
    """t -> log-SNR -> t at t = T - 1 may land a few ulps past the range (linear T = 10 with
    betas to 0.5 did, and then no continuous grid could be made): it is clamped, not refused."""
    from diffkit.timesteps import make_grid
    schedules = [NoiseSchedule.from_name(name, T)]
    if name == "linear":
        schedules.append(NoiseSchedule.linear(T, 0.01, 0.5))
    for s in schedules:
        top = torch.tensor([T - 1.0], dtype=torch.float64)
        assert s.t_from_log_snr(s.log_snr(top)).item() == pytest.approx(T - 1.0, abs=1e-6)
        assert s.t_from_karras_sigma(s.karras_sigma(top)).item() == pytest.approx(T - 1.0, abs=1e-6)
        for spacing in ("karras", "logsnr", "logsnr_graded", "logsnr_skip"):
            for steps in {1, 2, 5, min(T, 20)}:
                assert make_grid(s, steps, spacing).numel() == steps + 1
    with pytest.raises(DiffkitError, match="outside the schedule's range"):
        schedules[0].t_from_log_alpha(torch.tensor([0.1], dtype=torch.float64))


def test_respace_keeps_alpha_bar_on_the_subsequence():
    s = NoiseSchedule.linear()
    ts = [0, 99, 199, 599, 999]
    r = s.respace(ts)
    torch.testing.assert_close(r.alphas_cumprod, s.alphas_cumprod[ts], rtol=1e-12, atol=0)
    assert r.betas[1].item() == pytest.approx(1 - s.alphas_cumprod[99].item() / s.alphas_cumprod[0].item())


@pytest.mark.parametrize("call", [
    lambda: NoiseSchedule.from_name("quadratic-ish"),
    lambda: NoiseSchedule.linear(0),
    lambda: NoiseSchedule.linear(10, 0.5, -0.1),
    lambda: NoiseSchedule.from_betas([0.1, -0.2]),
    lambda: NoiseSchedule.linear().alpha(1000.0),
    lambda: NoiseSchedule.linear().respace([5, 3]),
])
def test_bad_input_is_one_line_error(call):
    with pytest.raises(DiffkitError) as err:
        call()
    assert "\n" not in str(err.value) and len(str(err.value)) > 10


def test_unknown_schedule_message_names_value_and_choices():
    with pytest.raises(ValueError, match=r"schedule='foo'.*linear, cosine"):
        NoiseSchedule.from_name("foo")


def test_the_last_interval_of_a_zero_terminal_snr_schedule_keeps_alpha_positive():
    """log alpha_{T-1} = -inf: interpolating log alpha made alpha = 0 on all of (T-2, T-1] (and a
    DDPM step into that interval 0/0 = NaN). alpha is linear there: alpha_{T-2} (T - 1 - t)."""
    sch = NoiseSchedule.from_name("linear", 1000, zero_terminal_snr=True)
    a998 = float(sch.alpha(torch.tensor(998.0)))
    t = torch.tensor([998.001, 998.5, 998.999], dtype=torch.float64)
    torch.testing.assert_close(sch.alpha(t), a998 * (999.0 - t), rtol=1e-12, atol=0)
    assert float(sch.alpha(torch.tensor(999.0))) == 0.0
    for forward, inverse in ((sch.log_alpha, sch.t_from_log_alpha), (sch.log_snr, sch.t_from_log_snr),
                             (sch.karras_sigma, sch.t_from_karras_sigma)):
        torch.testing.assert_close(inverse(forward(t)), t, rtol=0, atol=1e-6)
    import diffkit
    den = diffkit.Denoiser(lambda x, t: torch.zeros_like(x), sch, prediction_type="v_prediction")
    out = diffkit.sample(den, (2, 2), sampler="ddpm", grid=[999, 998.5, 500, -1], seed=0, progress=False)
    assert torch.isfinite(out).all()


def test_one_time_has_the_bits_of_the_tensor_path_on_each_schedule():
    """log_alpha at a single time (a number, a 0-dim or one-element tensor, or a (B,) tensor of one time)
    takes a Python-float path: the same bits as the tensor path over many different times (the
    element-wise interpolation), the input's shape, and the values of *its* schedule (two schedules
    asked in turn). Integer times are the grid, 0.5 log alpha_bar, exactly."""
    g = torch.Generator().manual_seed(0)
    schedules = [NoiseSchedule.linear(), NoiseSchedule.cosine(), NoiseSchedule.linear().respace(range(0, 1000, 37)),
                 NoiseSchedule.from_betas(torch.rand(50, generator=g, dtype=torch.float64) * 0.05 + 1e-4)]
    for s in schedules:
        T = s.num_timesteps
        times = torch.cat([torch.tensor([-1.0, 0.0, T - 1.0, T - 1.5]),
                           torch.rand(200, generator=g, dtype=torch.float64) * T - 1,
                           torch.arange(-1, T, dtype=torch.float64)])
        many = s.log_alpha(times)  # the tensor path (different times)
        for other in schedules:  # the scalar path answers with its own schedule's grid
            if other is not s:
                other.log_alpha(min(times[5].item(), other.num_timesteps - 1.0))
        for k in range(len(times)):
            t = times[k].item()
            one = s.log_alpha(t)
            assert one.shape == () and one.dtype == torch.float64 and torch.equal(one, many[k]), (s, t)
            assert torch.equal(s.log_alpha(times[k]), many[k])
            batch = s.log_alpha(torch.full((3,), t, dtype=torch.float64))
            assert batch.shape == (3,) and torch.equal(batch, many[k].expand(3))
        assert s.log_alpha(torch.tensor([[2.5]])).shape == (1, 1)
        for dtype in (torch.float32, torch.int64, torch.bool):  # other time dtypes: the float64 values' bits
            typed = times.to(dtype) if dtype is not torch.bool else torch.tensor([False, True, True, False])
            ref = s.log_alpha(typed.double())  # different times: the tensor path
            assert torch.equal(s.log_alpha(typed), ref), (s, dtype)
            for k in range(0, len(typed), 7):
                assert torch.equal(s.log_alpha(typed[k]), ref[k])
                assert torch.equal(s.log_alpha(typed[k:k + 1]), ref[k:k + 1])
                assert torch.equal(s.log_alpha(typed[k].expand(3)), ref[k].expand(3)), (s, dtype, typed[k])
        # first and last entries equal, the middle not: still the tensor path, entry by entry
        ends = torch.tensor([2.0, 3.5, 2.0, -1.0, 2.0], dtype=torch.float64)
        assert torch.equal(s.log_alpha(ends), torch.stack([s.log_alpha(v.item()) for v in ends]))
        ints = torch.arange(T)
        assert torch.equal(torch.stack([s.log_alpha(int(k)) for k in ints]), 0.5 * torch.log(s.alphas_cumprod))
        for bad in (-1.5, T * 1.0, float("nan")):
            for given in (bad, torch.tensor(bad), torch.full((2,), bad), torch.tensor([2.0, bad, 2.0])):
                with pytest.raises(DiffkitError, match=f"time t={bad!r} is out of range; allowed: \\[-1, {T - 1}\\]"):
                    s.log_alpha(given)


def test_zero_terminal_schedule_keeps_alpha_linear_on_its_last_interval_at_one_time():
    """The scalar path is not taken where alpha_bar reaches 0: at one time on the last interval alpha
    is still alpha_{T-2} (T - 1 - t) (Lin et al. 2024 schedule; see log_alpha)."""
    s = NoiseSchedule.linear().rescale_zero_terminal_snr()
    T = s.num_timesteps
    a = 0.5 * math.log(s.alphas_cumprod[T - 2].item())
    for t in (T - 1.75, T - 1.5, T - 1.25):
        for given in (t, torch.tensor(t), torch.full((2,), t)):
            assert s.alpha(given).flatten()[0].item() == pytest.approx(math.exp(a) * (T - 1 - t), rel=1e-12)
    assert s.alpha(T - 1.0).item() == 0.0
