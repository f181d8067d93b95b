"""Flow matching / rectified flow (docs/flow_matching.md) against closed forms: the velocity of
Gaussian data, the flow Euler step, diffusers' FlowMatchEulerDiscreteScheduler, SD3's logit-normal
density and shift, and the training loss's target."""
import json
import math

import pytest
import torch

import diffkit
from diffkit import DiffkitError
from diffkit.analytic import FlowVelocity, GaussianMixture
from diffkit.cli import main
from diffkit.config import TrainConfig
from diffkit.denoiser import Denoiser
from diffkit.loading import load_denoiser
from diffkit.losses import flow_matching_losses, training_losses
from diffkit.schedule import NoiseSchedule
from diffkit.timestep_sampling import FlowTimes

F64 = torch.float64
T = 1000


def gaussian(dim=3, seed=0):
    """N(mu, diag(var)) as a one-component mixture, with mu and var for the closed forms."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(dim, generator=g, dtype=F64)
    var = 0.1 + torch.rand(dim, generator=g, dtype=F64)
    return GaussianMixture([1.0], mu[None], torch.diag(var)[None]), mu, var


def closed_form_velocity(x, s, mu, var):
    """u*(x_s) = E[eps | x_s] - E[x_0 | x_s] for x_0 ~ N(mu, diag var), x_s = (1-s) x_0 + s eps:
    jointly Gaussian, with Var x_s = (1-s)^2 var + s^2 per dimension."""
    v = (1 - s) ** 2 * var + s ** 2
    r = x - (1 - s) * mu
    return s / v * r - (mu + (1 - s) * var / v * r)


def test_flow_schedule_is_the_flow_paths_snr_at_diffusers_sigmas():
    for shift in (1.0, 3.0):
        sch = NoiseSchedule.flow(T, shift=shift)
        u = torch.arange(1, T + 1, dtype=F64) / T
        s = shift * u / (1 + (shift - 1) * u)  # SD3 eq. 23 / diffusers' shift
        abar = (1 - s) ** 2 / ((1 - s) ** 2 + s ** 2)
        assert torch.allclose(sch.alphas_cumprod, abar, rtol=1e-12, atol=1e-15)
        assert sch.alphas_cumprod[-1] == 0  # s = 1: zero terminal SNR
    with pytest.raises(DiffkitError, match="flow_shift=0"):
        NoiseSchedule.flow(T, shift=0)


def test_analytic_flow_velocity_is_the_closed_form():
    mix, mu, var = gaussian()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    for s in (0.0, 0.01, 0.37, 0.999, 1.0):
        got = FlowVelocity(mix, T)(x, torch.full((5,), s * T, dtype=F64))
        assert torch.allclose(got, closed_form_velocity(x, s, mu, var), atol=1e-12), s


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_denoiser_equals_the_exact_vp_model_at_equal_snr(shift):
    """(a) x_0 and eps of the flow network at VP time t are the exact eps network's at t."""
    mix = GaussianMixture.random(3, 2, seed=0)
    sch = NoiseSchedule.flow(T, shift=shift)
    flow = Denoiser(FlowVelocity(mix, T), sch, "flow_prediction")
    exact = Denoiser(mix.network(sch), sch, "epsilon")
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    for t in (0.0, 10.5, 250.0, 500.0, 998.3):
        for tt in (t, torch.full((6,), t, dtype=F64)):  # one time for the batch, and per sample
            a, b = flow(x, tt), exact(x, tt)
            # the network's time is float32(s T): s is rounded to about 6e-8 of itself
            assert torch.allclose(a.x0, b.x0, rtol=1e-6, atol=1e-6), t
            assert torch.allclose(a.eps, b.eps, rtol=1e-6, atol=1e-6), t
    at_top = flow(x, float(T - 1))  # s = 1: x_s = eps, E[x_0 | x_s] = E[x_0]
    assert torch.allclose(at_top.x0, mix.mean().expand(6, 3), atol=1e-12)
    assert torch.allclose(at_top.eps, x, atol=1e-12)


def test_flow_network_gets_the_flow_state_and_s_times_T():
    sch = NoiseSchedule.flow(T)
    seen = {}

    def net(x, t):
        seen["x"], seen["t"] = x, t
        return torch.zeros_like(x)
    x = torch.randn(2, 3, dtype=F64)
    t = 700.0
    Denoiser(net, sch, "flow_prediction")(x, t)
    alpha, sigma = float(sch.alpha(t)), float(sch.sigma(t))
    s = sigma / (alpha + sigma)
    assert torch.allclose(seen["x"], x * math.sqrt((1 - s) ** 2 + s ** 2), rtol=1e-14)  # x_flow = N x_vp
    assert seen["t"].dtype == torch.float32 and torch.allclose(seen["t"].double(), torch.full((2,), s * T, dtype=F64),
                                                               rtol=1e-7)


def test_a_flow_x_prediction_network_is_the_flow_network_of_its_velocity():
    """``flow_state=True`` with ``sample``: the network gets the flow state at s T and predicts x_0; its (eps, x_0)
    are those of the velocity (x_s - x_0) / s of a flow-prediction network (one time and per-row times); off, the
    network gets the VP state; with v_prediction or edm: one line."""
    sch = NoiseSchedule.flow(T, 3.0)
    x0_of = lambda x, t: 0.5 * x + t[:, None] / T  # noqa: E731 (any function of the flow state and time)
    x = torch.randn(2, 3, dtype=F64)
    for t in (700.0, torch.tensor([300.0, 900.0])):
        ours = Denoiser(x0_of, sch, "sample", flow_state=True)(x, t)
        velocity = Denoiser(lambda x, t: (x - x0_of(x, t)) / (t[:, None].double() / T), sch, "flow_prediction")(x, t)
        assert torch.allclose(ours.x0, velocity.x0, rtol=1e-6) and torch.allclose(ours.eps, velocity.eps, rtol=1e-6)
        assert not torch.allclose(Denoiser(x0_of, sch, "sample")(x, t).x0, ours.x0)
    for kind in ("v_prediction", "edm"):
        with pytest.raises(DiffkitError, match=f"flow_state=True is not allowed with prediction_type='{kind}'"):
            Denoiser(x0_of, sch, kind, flow_state=True)


def flow_euler(net, x, sigmas):
    """x_{s'} = x_s + (s' - s) u(x_s, s T) (rectified flow's Euler step; diffusers' FlowMatchEuler)."""
    states = [x]
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + (s_next - s) * net(x, torch.full((x.shape[0],), s * T, dtype=F64))
        states.append(x)
    return states


def vp_grid(sch, sigmas):
    """The VP times of flow times: equal SNR, lambda = log((1 - s)/s); s = 1 -> T-1, s = 0 -> -1."""
    times = []
    for s in sigmas:
        times.append(T - 1.0 if s == 1 else -1.0 if s == 0 else float(sch.t_from_log_snr(math.log((1 - s) / s))))
    return torch.tensor(times, dtype=F64)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_sigmas_grid_places_each_sigma_at_its_equal_snr_vp_time(shift):
    """Esser et al. 2024, Sec. 2: x_s = (1 - s) x_0 + s eps has lambda = log((1 - s)/s); s = 1 -> T - 1, 0 -> -1."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffkit.interop.flow_latents import flow_sigmas_grid
    sch = NoiseSchedule.flow(T, shift=shift)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=shift)
    scheduler.set_timesteps(50)
    sigmas = scheduler.sigmas.to(F64)
    grid = flow_sigmas_grid(sch, scheduler.sigmas, 50)
    assert grid.dtype == F64 and grid[0] == T - 1 and grid[-1] == -1
    inner = sigmas[1:-1]
    assert torch.allclose(sch.log_snr(grid[1:-1]), torch.log((1 - inner) / inner), rtol=0, atol=1e-9)
    assert torch.allclose(grid, vp_grid(sch, sigmas.tolist()), rtol=0, atol=1e-9)
    with pytest.raises(DiffkitError, match="steps=3 are not strictly decreasing"):
        flow_sigmas_grid(sch, torch.tensor([1.0, 0.5, 0.5, 0.0]), 3)


def ddim_states(sch, net, noise, sigmas):
    """DDIM (eta = 0) on the flow denoiser, its VP states mapped to the flow state x_s = x_t / (alpha + sigma)."""
    grid = vp_grid(sch, sigmas)
    states = [noise]

    def record(info):
        t, x = float(info["s"]), info["x"]
        states.append(x / float(sch.alpha(t) + sch.sigma(t)) if t >= 0 else x)
    diffkit.sample(Denoiser(net, sch, "flow_prediction"), noise.clone(), sampler="ddim", grid=grid, eta=0.0,
                   dtype=F64, progress=False, callback=record)
    return states


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_ddim_on_the_flow_model_is_the_flow_euler_step(shift):
    """(b) DDIM with eta = 0 takes the rectified-flow Euler step, step for step."""
    mix = GaussianMixture.random(3, 2, seed=1)
    net = FlowVelocity(mix, T)
    sch = NoiseSchedule.flow(T, shift=shift)
    sigmas = [1.0, 0.8, 0.55, 0.3, 0.12, 0.02, 0.0]
    noise = torch.randn(8, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    got, want = ddim_states(sch, net, noise, sigmas), flow_euler(net, noise, sigmas)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_ddim_on_the_flow_model_equals_diffusers_flow_match_euler():
    """(b) the same against diffusers' FlowMatchEulerDiscreteScheduler on its own timesteps."""
    diffusers = pytest.importorskip("diffusers")
    mix = GaussianMixture.random(3, 2, seed=2)
    net = FlowVelocity(mix, T)
    for shift in (1.0, 3.0):
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=shift)
        scheduler.set_timesteps(6)
        noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
        x, theirs = noise.clone(), [noise]
        for t in scheduler.timesteps:
            u = net(x, t.to(F64).expand(x.shape[0]))
            x = scheduler.step(u, t, x, return_dict=False)[0]
            theirs.append(x)
        sigmas = [float(s) for s in scheduler.sigmas]  # s_i = timestep_i / T, then 0
        ours = ddim_states(NoiseSchedule.flow(T, shift=shift), net, noise, sigmas)
        for a, b in zip(ours, theirs):
            assert torch.allclose(a, b.to(F64), rtol=1e-5, atol=1e-5)


def test_flow_samples_reach_the_gaussian_data_with_every_kind_of_sampler():
    """Each on its default grid: a flow model's sigma / log-SNR grids and adaptive samplers start at
    the last finite SNR (sampling.flow_top), ddim@trailing at s = 1 (diffusers' FlowMatchEuler)."""
    mix, mu, var = gaussian(dim=2, seed=5)
    d = Denoiser(FlowVelocity(mix, T), NoiseSchedule.flow(T), "flow_prediction")
    for sampler in ("ddim@trailing", "heun", "dpm-solver++-2m", "unipc", "lms", "ode"):
        x = diffkit.sample(d, (4000, 2), sampler=sampler, steps=None if sampler == "ode" else 40, seed=0,
                           progress=False, dtype=F64)
        assert torch.allclose(x.mean(0), mu, atol=0.05), sampler
        assert torch.allclose(x.var(0), var, rtol=0.1), sampler  # (ddim: Euler's deficit at 40 steps is 5 %)


def test_the_loss_regresses_u_eps_minus_x0_at_the_flow_state():
    """(c) the input is x_s = (1 - s) x_0 + s eps at time s T; the target u = eps - x_0."""
    g = torch.Generator().manual_seed(6)
    x0, eps = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 2, 3, 3, generator=g)
    s = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=F64)
    seen = {}

    def net(x, t):
        seen["x"], seen["t"] = x, t
        return torch.full_like(x, 0.5)
    out = flow_matching_losses(net, x0, s, eps, 100)
    c = s.float().reshape(4, 1, 1, 1)
    assert torch.allclose(seen["x"], (1 - c) * x0 + c * eps)
    assert torch.equal(seen["t"], torch.tensor([0.0, 25.0, 50.0, 100.0]))  # s T, T = 100
    assert torch.allclose(out.loss, ((eps - x0 - 0.5) ** 2).mean(dim=(1, 2, 3)))


def test_the_trainer_trains_at_its_flow_times(tmp_path, monkeypatch):
    """The training loop draws s from FlowTimes (density, shift, m, s of the config) with its generator."""
    import diffkit.training as training
    from diffkit.data import InMemoryImageDataset
    seen = []

    def recording(net, x0, s, noise, num_timesteps, cond=None):
        seen.append((s.clone(), num_timesteps))
        return flow_matching_losses(net, x0, s, noise, num_timesteps, cond)
    monkeypatch.setattr(training, "flow_matching_losses", recording)
    cfg = TrainConfig.from_dict({"dataset": "digits", "img_size": 8, "channel": 16, "channel_mult": [1, 2],
                                 "attn": [1], "num_res_blocks": 1, "batch_size": 8, "max_steps": 1, "T": 100,
                                 "device": "cpu", "num_heads": 1, "prediction_type": "flow_prediction",
                                 "schedule": "flow", "flow_shift": 3.0, "timestep_sampler": "logit-normal",
                                 "logit_mean": 0.5, "logit_std": 0.8, "save_weight_dir": str(tmp_path / "c"),
                                 "sampled_dir": str(tmp_path / "s")})
    data = InMemoryImageDataset((torch.rand(16, 1, 8, 8) * 255).to(torch.uint8), torch.zeros(16, dtype=torch.long))
    trainer = training.Trainer(cfg, data, progress=False, log=lambda *_: None)
    trainer.train_step([(trainer.dataset[i][0][None].repeat(8, 1, 1, 1), torch.zeros(8, dtype=torch.long))
                        for i in range(1)])
    want, _ = FlowTimes("logit-normal", 3.0, 0.5, 0.8).sample(8, torch.Generator().manual_seed(cfg.seed + 1))
    assert len(seen) == 1 and seen[0][1] == 100 and torch.equal(seen[0][0], want)


def test_a_flow_run_resumes_bitwise(tmp_path, assert_same_training_state):
    """Stop at step 2 of 4, resume: the same weights, EMA and optimiser state as an uninterrupted run
    (the flow times come from the run's saved generator)."""
    from test_training import make_cfg, tiny_dataset

    from diffkit.training import Trainer
    flow = {"prediction_type": "flow_prediction", "schedule": "flow", "timestep_sampler": "logit-normal",
            "flow_shift": 2.0, "max_steps": 4, "T": 100, "sample_steps": 2}
    Trainer(make_cfg(tmp_path / "a", **flow), tiny_dataset(), progress=False, log=lambda *_: None).run()
    Trainer(make_cfg(tmp_path / "b", **flow), tiny_dataset(), progress=False, log=lambda *_: None).run(stop_at=2)
    resume = str(tmp_path / "b" / "ckpt" / "latest.safetensors")
    Trainer(make_cfg(tmp_path / "b", training_load_weight=resume, **flow), tiny_dataset(), progress=False,
            log=lambda *_: None).run()
    assert_same_training_state(tmp_path / "a" / "ckpt" / "latest.safetensors", resume, 4)


@pytest.mark.parametrize("m, std, shift", [(0.0, 1.0, 1.0), (-0.5, 0.7, 1.0), (0.3, 1.2, 3.0)])
def test_logit_normal_times_follow_sd3_eq_19_and_the_shift(m, std, shift):
    """(c) the empirical CDF of the flow times against eq. 19's density integrated numerically,
    pushed through the shift s = shift u / (1 + (shift - 1) u)."""
    s, w = FlowTimes("logit-normal", shift, m, std).sample(200_000, torch.Generator().manual_seed(7))
    assert torch.equal(w, torch.ones(200_000)) and s.dtype == F64
    u = torch.linspace(1e-6, 1 - 1e-6, 200_001, dtype=F64)
    gauss = torch.exp(-(torch.logit(u) - m) ** 2 / (2 * std ** 2))
    density = 1 / (std * math.sqrt(2 * math.pi)) / (u * (1 - u)) * gauss
    cdf = torch.cat([torch.zeros(1, dtype=F64), torch.cumulative_trapezoid(density, u)])
    for q in (0.1, 0.3, 0.5, 0.7, 0.9):
        i = int(torch.searchsorted(cdf, torch.tensor(q, dtype=F64)))
        s_q = shift * u[i] / (1 + (shift - 1) * u[i])
        assert abs(float((s <= s_q).double().mean()) - q) < 0.005, q
    uniform, _ = FlowTimes("uniform", 1.0).sample(100_000, torch.Generator().manual_seed(8))
    assert abs(float(uniform.mean()) - 0.5) < 0.005 and 0 <= float(uniform.min()) and float(uniform.max()) < 1


FLOW = ["--set", "prediction_type=flow_prediction", "--set", "schedule=flow"]
TINY = ["--set", "img_size=8", "--set", "channel=16", "--set", "channel_mult=[1,2]", "--set", "attn=[1]",
        "--set", "num_res_blocks=1", "--set", "batch_size=8", "--set", "sample_steps=3", "--set", "num_heads=1",
        "--set", "T=100"]


@pytest.fixture(scope="module")
def flow_checkpoint(tmp_path_factory):
    """A class-conditional flow checkpoint written by diffkit train (2 steps, logit-normal, shift 2)."""
    run = tmp_path_factory.mktemp("flow") / "run"
    assert main(["train", "--out", str(run), "--steps", "2", "--no-progress", "--no-sample", "--device", "cpu",
                 *TINY, *FLOW, "--set", "timestep_sampler=logit-normal", "--set", "flow_shift=2.0",
                 "--conditional"]) == 0
    return run / "checkpoints" / "latest.safetensors"


def test_a_flow_run_trains_and_every_kind_of_sampler_samples_its_checkpoint(flow_checkpoint, tmp_path, capsys):
    """(d) diffkit train writes a (class-conditional) flow checkpoint; diffkit sample runs it with
    several samplers, and with classifier-free guidance."""
    ckpt = flow_checkpoint
    loaded = load_denoiser(ckpt)
    assert loaded.prediction_type == "flow_prediction"
    assert torch.allclose(loaded.schedule.alphas_cumprod, NoiseSchedule.flow(100, shift=2.0).alphas_cumprod)
    for sampler in ("ddim", "dpm-solver++-2m"):  # default grids: timestep, log-SNR spacing (karras: below)
        out = tmp_path / f"{sampler}.png"
        code = main(["sample", "--checkpoint", str(ckpt), "--sampler", sampler, "--steps", "3", "--num", "2",
                     "--out", str(out), "--no-progress", "--device", "cpu"])
        assert code == 0 and out.is_file(), capsys.readouterr().err
    code = main(["sample", "--checkpoint", str(ckpt), "--sampler", "ddim@trailing", "--steps", "3", "--num", "2",
                 "--out", str(tmp_path / "top.png"), "--no-progress", "--device", "cpu"])  # from s = 1
    assert code == 0, capsys.readouterr().err
    code = main(["sample", "--checkpoint", str(ckpt), "--sampler", "euler", "--steps", "3", "--num", "2",
                 "--class", "3", "--guidance-scale", "2", "--out", str(tmp_path / "cfg.png"), "--no-progress",
                 "--device", "cpu"])  # guided, its karras grid from T - 2 through the guidance wrapper
    assert code == 0 and (tmp_path / "cfg.png").is_file(), capsys.readouterr().err


def test_distilling_a_flow_teacher_is_a_one_line_refusal(flow_checkpoint, tmp_path, capsys):
    """diffkit distill names flow matching (not the student's objective) and writes nothing."""
    code = main(["distill", "--teacher", str(flow_checkpoint), "--out", str(tmp_path / "cd"), "--steps", "1",
                 "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "is a flow-matching model (prediction_type='flow_prediction')" in err and "objective" not in err, err
    assert not (tmp_path / "cd").exists()


@pytest.mark.parametrize("over, needle", [
    ({"prediction_type": "flow_prediction"}, "flow matching is prediction_type='flow_prediction' with schedule="),
    ({"schedule": "flow"}, "flow matching is prediction_type='flow_prediction' with schedule="),
    ({"flow_shift": 3.0}, "flow_shift=3.0 shifts schedule='flow'"),
    ({"timestep_sampler": "logit-normal"}, "needs prediction_type='flow_prediction'"),
    ({"logit_std": 2.0}, "logit_std=2.0 belongs to timestep_sampler='logit-normal'"),
    ({"loss": "hybrid", "learned_variance": True, "flow": True}, "does not apply to flow matching"),
    ({"loss": "vlb", "flow": True}, "loss='vlb' does not apply to flow matching"),
    ({"min_snr_gamma": 5.0, "flow": True}, "min_snr_gamma=5.0 does not apply to flow matching"),
    ({"p2_gamma": 1.0, "flow": True}, "p2_gamma"),
    ({"zero_terminal_snr": True, "flow": True}, "zero_terminal_snr=True does not apply"),
    ({"input_perturbation": 0.1, "flow": True}, "input_perturbation=0.1 does not apply"),
    ({"timestep_sampler": "loss-aware", "flow": True}, "use 'uniform' or 'logit-normal'"),
    ({"flow_shift": 0.0, "flow": True}, "flow_shift"),
    ({"logit_std": 0.0, "timestep_sampler": "logit-normal", "flow": True}, "logit_std"),
])
def test_meaningless_combinations_are_one_line_errors(over, needle):
    """(e)"""
    over = dict(over)
    if over.pop("flow", False):
        over.update(prediction_type="flow_prediction", schedule="flow")
    with pytest.raises(DiffkitError) as info:
        TrainConfig.from_dict(over)
    assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_bad_cli_values_fail_before_any_file(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress", "--device", "cpu",
                 *FLOW, "--set", "timestep_sampler=logit-normal", "--set", "logit_std=-1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "logit_std" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_the_vp_loss_refuses_a_flow_network():
    with pytest.raises(DiffkitError, match="flow_matching_losses"):
        training_losses(lambda x, t: x, NoiseSchedule.flow(10), torch.zeros(1, 2), torch.zeros(1),
                                       torch.zeros(1, 2), prediction_type="flow_prediction")


def random_conditional_velocity(dim=3, classes=3, seed=9):
    """A random nonlinear class-conditional velocity net(x_s, s T, y) (class ``classes`` = null)."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(classes + 1, dim, dim, generator=g, dtype=F64)
    biases = torch.randn(classes + 1, dim, generator=g, dtype=F64)

    def net(x, t, y):
        s = torch.as_tensor(t, dtype=F64).reshape(-1, 1) / T
        return torch.tanh(torch.einsum("bij,bj->bi", weights[y], x) + biases[y] * s) + x * s
    return net


@pytest.mark.parametrize("w", [0.0, 1.5, 4.0])
def test_classifier_free_guidance_of_a_flow_model_is_velocity_space_guidance(w):
    """eps and x_0 are affine in u with the same coefficients for both passes (eps_x0_from_flow), so
    guidance of eps / x_0, (1 + w) eps_c - w eps_u, is the flow model with the guided velocity
    u_u + s (u_c - u_u), s = 1 + w (diffusers' SD3 pipeline): per call, and along a whole run."""
    from diffkit.guidance import ClassifierFreeGuidance
    net, null = random_conditional_velocity(), 3
    sch = NoiseSchedule.flow(T, shift=3.0)

    def guided_velocity(x, t, y):
        u_c, u_u = net(x, t, y), net(x, t, torch.full_like(y, null))
        return u_u + (1 + w) * (u_c - u_u)
    cfg = ClassifierFreeGuidance(Denoiser(net, sch, "flow_prediction"), w, null_class=null)
    ref = Denoiser(guided_velocity, sch, "flow_prediction")
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(10), dtype=F64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    for t in (0.0, 37.5, 500.0, 998.0, float(T - 1)):  # T - 1: s = 1
        for tt in (t, torch.full((6,), t, dtype=F64)):
            a, b = cfg(x, tt, y=y), ref(x, tt, y=y)
            assert torch.allclose(a.eps, b.eps, rtol=1e-12, atol=1e-12), t
            assert torch.allclose(a.x0, b.x0, rtol=1e-12, atol=1e-12), t
    for sampler in ("ddim@trailing", "dpm-solver++-2m"):  # from s = 1; from T - 2 through the wrapper
        runs = [diffkit.sample(d, x.clone(), sampler=sampler, steps=8, cond={"y": y}, progress=False, dtype=F64)
                for d in (cfg, ref)]
        assert torch.allclose(*runs, rtol=1e-10, atol=1e-10), sampler


# ------------------------------------------------------------------ sampling-time shift (flow_shift=S)
@pytest.mark.parametrize("trained, shift", [(1.0, 3.0), (2.0, 3.0), (0.5, 1.0)])
def test_sampling_shift_gives_diffusers_flow_match_euler_sigmas(trained, shift):
    """A grid whose flow times are shift_trained(u), u = linspace(1, u_min, n), moved to ``shift`` has the flow
    times diffusers' FlowMatchEulerDiscreteScheduler(shift=S) makes from the same u: set_timesteps(sigmas=u)
    (u_min = 1/T), and set_timesteps(n), whose u_min is its already shifted sigma_min (it shifts its last
    sigma twice)."""
    diffusers = pytest.importorskip("diffusers")
    from diffkit.timesteps import reshift_flow_grid
    sch, n = NoiseSchedule.flow(T, shift=trained), 7
    for sigmas, u_min in (("given", 1.0 / T), ("n", None)):
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=shift)
        if sigmas == "given":
            scheduler.set_timesteps(sigmas=torch.linspace(1, u_min, n, dtype=F64).numpy())
        else:
            scheduler.set_timesteps(n)
            u_min = scheduler.sigma_min
        u = torch.linspace(1, u_min, n, dtype=F64)
        s = trained * u / (1 + (trained - 1) * u)  # the training schedule's flow times of those u
        alpha_bar = (1 - s) ** 2 / ((1 - s) ** 2 + s ** 2)
        grid = torch.cat([sch.t_from_log_alpha(0.5 * alpha_bar.log()), torch.tensor([-1.0], dtype=F64)])
        moved = reshift_flow_grid(sch, grid, shift)
        alpha, sigma = sch.alpha(moved), sch.sigma(moved)
        assert torch.allclose(sigma / (alpha + sigma), scheduler.sigmas.to(F64), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sampler", ["ddim@trailing", "dpm-solver++-2m", "heun"])
def test_sampling_shift_equal_to_the_training_shift_changes_nothing(sampler):
    d = Denoiser(FlowVelocity(GaussianMixture.random(3, 2, seed=1), T), NoiseSchedule.flow(T, shift=3.0),
                 "flow_prediction")
    noise = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    plain = diffkit.sample(d, noise, sampler, steps=6, progress=False)
    assert torch.equal(diffkit.sample(d, noise, sampler, steps=6, flow_shift=3.0, progress=False), plain)
    assert not torch.allclose(diffkit.sample(d, noise, sampler, steps=6, flow_shift=1.0, progress=False), plain)


def test_a_sampling_shift_below_the_training_shift_holds_the_last_time_at_zero():
    from diffkit.sampling import plan
    d = Denoiser(FlowVelocity(GaussianMixture.random(3, 2, seed=1), T), NoiseSchedule.flow(T, shift=3.0),
                 "flow_prediction")
    grid = plan(d, "dpm-solver++-2m", steps=5)[1]
    moved = plan(d, "dpm-solver++-2m", steps=5, options={"flow_shift": 1.0})[1]
    assert grid[-2] == 0.0 and moved[-2] == 0.0 and moved[-1] == -1.0  # t = 0 would move below 0: held there
    lam, lam_moved = d.schedule.log_snr(grid[:-2]), d.schedule.log_snr(moved[:-2])
    assert torch.allclose(lam_moved, lam + math.log(3.0), rtol=0, atol=1e-9)  # the others: log-SNR + log 3
    with pytest.raises(DiffkitError, match="grid times below t = 0"):
        plan(d, "ddim@trailing", steps=500, options={"flow_shift": 0.2})


def test_sampling_shift_refused_in_one_line_where_it_does_not_apply(tmp_path, capsys, tiny_checkpoint):
    flow = Denoiser(FlowVelocity(GaussianMixture.random(3, 2, seed=1), T), NoiseSchedule.flow(T), "flow_prediction")
    eps = Denoiser(GaussianMixture.random(3, 2, seed=1).network(NoiseSchedule.linear()), NoiseSchedule.linear())
    for den, kwargs, match in ((eps, {"steps": 4}, "flow-matching model"), (flow, {"sampler": "ode"}, "own steps"),
                               (flow, {"grid": [900.0, 400.0, -1.0]}, "drop flow_shift"),
                               (flow, {"steps": 4, "flow_shift": 0.0}, "flow shift")):
        with pytest.raises(DiffkitError, match=match) as err:
            diffkit.sample(den, (2, 3), **{"flow_shift": 2.0, **kwargs}, progress=False)
        assert "\n" not in str(err.value)
    out = tmp_path / "new" / "a.png"
    assert main(["sample", "--checkpoint", str(tiny_checkpoint), "--flow-shift", "3", "--steps", "2", "--num", "1",
                 "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--flow-shift 3" in err and "'epsilon'" in err and len(err.splitlines()) == 1
    assert not out.parent.exists()


def _read(folder):
    from diffkit.evaluation import load_image_folder
    return load_image_folder(folder)


def test_eval_flow_shift_samples_what_the_library_draws_with_it(flow_checkpoint, tmp_path, capsys):
    """``diffkit eval --flow-shift 3``: the samples it scores (--save-samples) are generate_samples(...,
    flow_shift=3)'s, and the JSON records the shift; without the flag they differ (and the --cache-dir batches
    drawn at shift 3 are not reused)."""
    from diffkit.evaluation import generate_samples, sample_labels
    from diffkit.images import save_images
    from diffkit.metrics import EvaluatorConfig, EvaluatorNet, save_evaluator
    torch.manual_seed(0)
    save_evaluator(EvaluatorNet(EvaluatorConfig(in_channels=1, image_size=8, channels=(4,), feature_dim=8)),
                   tmp_path / "ev.safetensors")
    num, shift = 4, 3.0
    for folder, flags in (("ours", ["--flow-shift", str(shift)]), ("ours_plain", [])):
        assert main(["eval", "--checkpoint", str(flow_checkpoint), "--metrics", "fd-classifier", "--num", str(num),
                     "--steps", "3", *flags, "--evaluator", str(tmp_path / "ev.safetensors"), "--cache-dir",
                     str(tmp_path / "cache"), "--save-samples", str(tmp_path / folder), "--out",
                     str(tmp_path / f"{folder}.json"), "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "ours.json").read_text())["settings"]["flow_shift"] == shift
    den = load_denoiser(flow_checkpoint)
    for name, options in (("shifted", {"flow_shift": shift}), ("plain", {})):
        images = generate_samples(den, num, sampler="ddim", steps=3, seed=0, labels=sample_labels(den, num),
                                  **options)
        save_images(images, tmp_path / name)
    assert torch.equal(_read(tmp_path / "ours"), _read(tmp_path / "shifted"))
    assert not torch.equal(_read(tmp_path / "ours"), _read(tmp_path / "plain"))
    assert torch.equal(_read(tmp_path / "ours_plain"), _read(tmp_path / "plain"))


def test_edit_flow_shift_is_img2img_with_it(flow_checkpoint, tmp_path, capsys):
    """``diffkit edit --flow-shift 3``: the images of diffkit.img2img(..., flow_shift=3) (the strength's part
    of the moved grid); without the flag they differ."""
    from test_latent_editing import write_pngs
    from diffkit.commands.edit import read_pngs
    from diffkit.editing import img2img
    from diffkit.images import save_images
    pngs = write_pngs(tmp_path / "in", 2, 8, "L")
    assert main(["edit", "--checkpoint", str(flow_checkpoint), "--images", str(pngs), "--class", "3", "--strength",
                 "0.6", "--steps", "5", "--flow-shift", "3", "--out", str(tmp_path / "ours"), "--device", "cpu",
                 "--no-progress"]) == 0, capsys.readouterr().err
    den, images = load_denoiser(flow_checkpoint), read_pngs(pngs, "L")[0]
    y = {"y": torch.full((2,), 3, dtype=torch.long)}
    for name, options in (("shifted", {"flow_shift": 3.0}), ("plain", {})):
        save_images(img2img(den, images, 0.6, "ddim", 5, seed=0, cond=y, progress=False, **options).clamp(-1, 1),
                    tmp_path / name, prefix="edit")
    assert torch.equal(_read(tmp_path / "ours"), _read(tmp_path / "shifted"))
    assert not torch.equal(_read(tmp_path / "ours"), _read(tmp_path / "plain"))


def test_eval_and_edit_refuse_flow_shift_on_a_non_flow_checkpoint_before_any_output(tiny_checkpoint, tmp_path,
                                                                                     capsys):
    from test_latent_editing import write_pngs
    pngs = write_pngs(tmp_path / "in", 1, 8, "L")
    for argv in (["eval", "--checkpoint", str(tiny_checkpoint), "--metrics", "fd-classifier", "--num", "2",
                  "--out", str(tmp_path / "new" / "r.json"), "--save-samples", str(tmp_path / "new" / "png")],
                 ["edit", "--checkpoint", str(tiny_checkpoint), "--images", str(pngs), "--out",
                  str(tmp_path / "new" / "out")]):
        assert main([*argv, "--flow-shift", "3", "--steps", "2", "--device", "cpu", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert "--flow-shift 3" in err and "'epsilon'" in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "new").exists()
    assert main(["eval", "--samples", str(pngs), "--ref", "digits", "--flow-shift", "3",
                 "--out", str(tmp_path / "new" / "r.json")]) == 2
    assert "--flow-shift applies to sampling a --checkpoint" in capsys.readouterr().err
    assert main(["edit", "--checkpoint", str(tiny_checkpoint), "--images", str(pngs), "--interpolate", "2",
                 "--flow-shift", "3", "--out", str(tmp_path / "new" / "out")]) == 2
    assert "--flow-shift does not go with --interpolate" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
