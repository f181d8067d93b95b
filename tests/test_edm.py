"""EDM preconditioning (docs/edm.md; Karras et al. 2022, Table 1, eq. 8) against closed forms and
diffusers' EDMEulerScheduler: the schedule's Karras sigmas, c_skip / c_out / c_in / c_noise, the exact F
of Gaussian data as the exact VP model, the weighted loss, DDIM as EDM's Euler step, training end to end."""
import pytest
import torch

import diffkit
from diffkit import DiffkitError
from diffkit.analytic import GaussianMixture
from diffkit.cli import main
from diffkit.config import TrainConfig
from diffkit.denoiser import Denoiser
from diffkit.diffusion import target_for
from diffkit.loading import load_denoiser
from diffkit.losses import edm_losses, training_losses
from diffkit.schedule import NoiseSchedule
from diffkit.timestep_sampling import EDMSigmas

F64 = torch.float64
T = 1000


def karras(n, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """EDM eq. 5: n sigmas from sigma_max down to sigma_min."""
    i = torch.arange(n, dtype=F64)
    return (sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def table1(sigma, sd):
    """EDM Table 1: c_skip, c_out, c_in, c_noise (written out here, not imported)."""
    return (sd ** 2 / (sigma ** 2 + sd ** 2), sigma * sd / (sigma ** 2 + sd ** 2) ** 0.5,
            1 / (sigma ** 2 + sd ** 2) ** 0.5, torch.log(torch.as_tensor(sigma, dtype=F64)) / 4)


class GaussianF:
    """The exact F of data N(mu, diag var) as a network F(c_in x, c_noise): D*(x; sigma) = E[x_0 | x] =
    mu + var / (var + sigma^2) (x - mu) of x = x_0 + sigma eps, and F* = (D* - c_skip x) / c_out."""

    def __init__(self, mu, var, sd=0.5):
        self.mu, self.var, self.sd = mu, var, sd

    def __call__(self, x_in, c_noise, **_):
        sigma = torch.exp(4 * c_noise.to(F64)).reshape(-1, *([1] * (x_in.ndim - 1)))
        c_skip, c_out, c_in, _ = table1(sigma, self.sd)
        x = x_in.to(F64) / c_in
        d = self.mu + self.var / (self.var + sigma ** 2) * (x - self.mu)
        return ((d - c_skip * x) / c_out).to(x_in.dtype)


def gaussian(dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(dim, generator=g, dtype=F64)
    var = 0.1 + torch.rand(dim, generator=g, dtype=F64)
    return GaussianMixture([1.0], mu[None], torch.diag(var)[None]), mu, var


def test_edm_schedule_has_the_karras_sigmas_of_diffusers_edm_euler():
    sch = NoiseSchedule.edm(T)
    sigmas = sch.karras_sigma(torch.arange(T, dtype=F64))
    assert torch.allclose(sigmas, karras(T).flip(0), rtol=1e-10)
    assert sigmas[0].item() == pytest.approx(0.002, rel=1e-10) and sigmas[-1].item() == pytest.approx(80.0, rel=1e-10)
    assert torch.allclose(sch.alphas_cumprod, 1 / (1 + karras(T).flip(0) ** 2), rtol=1e-12)
    small = NoiseSchedule.edm(50, sigma_min=0.01, sigma_max=20.0)
    assert torch.allclose(small.karras_sigma(torch.arange(50, dtype=F64)), karras(50, 0.01, 20.0).flip(0), rtol=1e-10)
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.EDMEulerScheduler()
    scheduler.set_timesteps(T)
    assert torch.allclose(sigmas, scheduler.sigmas[:-1].flip(0).to(F64), rtol=1e-6)


def test_preconditioning_matches_diffusers_edm_euler():
    """c_in x, c_noise and D = c_skip x + c_out F through the Denoiser at VP time t equal diffusers'
    precondition_inputs / precondition_noise / precondition_outputs of the VE state x_t / alpha_t."""
    diffusers = pytest.importorskip("diffusers")
    for sd in (0.5, 1.3):
        scheduler = diffusers.EDMEulerScheduler(sigma_data=sd)
        sch = NoiseSchedule.edm(T)
        seen = {}

        def net(x, t):
            seen["x"], seen["t"] = x, t
            return torch.sin(3 * x) + t.to(x.dtype)[:, None]  # any F
        d = Denoiser(net, sch, "edm", sigma_data=sd)
        x_t = torch.randn(4, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
        for t in (0.0, 137.0, 500.5, 998.0):
            for tt in (t, torch.full((4,), t, dtype=F64)):
                pred = d(x_t, tt)
                t32 = torch.tensor(t, dtype=torch.float32).to(F64)
                alpha, sigma_vp = sch.alpha(t32).item(), sch.sigma(t32).item()
                sigma = torch.tensor(sigma_vp / alpha, dtype=F64)
                x_ve = x_t / alpha
                assert torch.allclose(seen["x"], scheduler.precondition_inputs(x_ve, sigma), rtol=1e-12)
                assert torch.allclose(seen["t"].to(F64), scheduler.precondition_noise(sigma).expand(4), rtol=1e-6)
                want = scheduler.precondition_outputs(x_ve, net(seen["x"], seen["t"]), sigma)
                assert torch.allclose(pred.x0, want, rtol=1e-12, atol=1e-12)
                assert torch.allclose(pred.eps, (x_ve - want) / sigma, rtol=1e-10, atol=1e-10)


def test_exact_f_of_gaussian_data_gives_the_exact_vp_model():
    """For N(mu, diag var), the exact F through the edm Denoiser answers the x_0 and eps of the exact
    eps model (GaussianMixture.network) at the same VP time, one time for the batch and per sample."""
    mix, mu, var = gaussian()
    sch = NoiseSchedule.edm(T)
    for sd in (0.5, 1.0):
        edm = Denoiser(GaussianF(mu, var, sd), sch, "edm", sigma_data=sd)
        exact = Denoiser(mix.network(sch), sch, "epsilon")
        x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
        for t in (0.0, 3.5, 250.0, 700.0, 999.0):
            for tt in (t, torch.full((6,), t, dtype=F64)):
                a, b = edm(x, tt), exact(x, tt)
                # the network's time is float32(ln(sigma)/4): sigma recovered to ~1e-6 of itself
                assert torch.allclose(a.x0, b.x0, rtol=1e-5, atol=1e-5), (sd, t)
                assert torch.allclose(a.eps, b.eps, rtol=1e-5, atol=1e-5), (sd, t)


def test_the_loss_is_edms_weighted_denoiser_loss():
    """edm_losses = lambda(sigma) ||D - x_0||^2 (mean over elements), lambda = (sigma^2 + sd^2)/(sigma sd)^2,
    with the network given c_in (x_0 + sigma eps) and ln(sigma)/4."""
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(4, 1, 3, 3, generator=g, dtype=F64), torch.randn(4, 1, 3, 3, generator=g, dtype=F64)
    sigma = torch.tensor([0.01, 0.3, 1.7, 60.0], dtype=F64)
    seen = {}

    def net(x, t):
        seen["x"], seen["t"] = x, t
        return 0.3 * x - 0.2 + t.to(x.dtype)[:, None, None, None]
    for sd in (0.5, 0.8):
        out = edm_losses(net, x0, sigma, noise, sd)
        c_skip, c_out, c_in, c_noise = (c.reshape(4, 1, 1, 1) if c.ndim else c for c in map(torch.as_tensor,
                                                                                               table1(sigma, sd)))
        x = x0 + sigma.reshape(4, 1, 1, 1) * noise
        assert torch.allclose(seen["x"], c_in * x, rtol=1e-14)
        assert torch.equal(seen["t"], (torch.log(sigma) / 4).float())
        d = c_skip * x + c_out * net(c_in * x, seen["t"])
        lam = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
        assert torch.allclose(out.loss, lam * ((d - x0) ** 2).mean(dim=(1, 2, 3)), rtol=1e-9)
        assert torch.equal(out.loss, out.mse)


def test_the_loss_is_zero_at_the_exact_f_only_in_expectation_and_bounded_at_extremes():
    """The unit-weight target (x_0 - c_skip x)/c_out has unit variance for sd = the data's std at every
    sigma (EDM Sec. 5, the point of c_out): E||target||^2 / D = 1 for x_0 ~ N(0, sd^2 I)."""
    sd = 0.5
    g = torch.Generator().manual_seed(3)
    for s in (0.002, 0.1, 1.0, 80.0):
        x0 = sd * torch.randn(20000, 1, 1, 4, generator=g, dtype=F64)
        noise = torch.randn(20000, 1, 1, 4, generator=g, dtype=F64)
        loss = edm_losses(lambda x, t: torch.zeros_like(x), x0, torch.full((20000,), s, dtype=F64), noise, sd).loss
        assert abs(loss.mean().item() - 1.0) < 0.03, s


def edm_euler(net, x, sigmas, sd):
    """EDM's Euler step in sigma (Karras et al. 2022, Alg. 1 without the 2nd-order correction):
    x_{i+1} = x_i + (sigma_{i+1} - sigma_i)(x_i - D(x_i; sigma_i))/sigma_i."""
    states = [x]
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        c_skip, c_out, c_in, c_noise = table1(torch.tensor(s, dtype=F64), sd)
        d = c_skip * x + c_out * net(c_in * x, c_noise.float().expand(x.shape[0]))
        x = x + (s_next - s) * (x - d) / s
        states.append(x)
    return states


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_ddim_and_euler_on_the_edm_model_are_edms_euler_step(sampler):
    """DDIM (eta = 0) and diffkit's Euler on the converted model take EDM's Euler step in sigma, step for step
    (VP states x_t mapped to the VE state x_t / alpha_t), on a hand grid ending at sigma = 0."""
    _, mu, var = gaussian(seed=4)
    net, sd = GaussianF(mu, var), 0.5
    sch = NoiseSchedule.edm(T)
    sigmas = [80.0, 20.0, 3.0, 0.7, 0.05, 0.0]
    grid = torch.cat([sch.t_from_karras_sigma(torch.tensor(sigmas[:-1], dtype=F64)), torch.tensor([-1.0], dtype=F64)])
    x_ve = 80.0 * torch.randn(5, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    states = [x_ve]

    def record(info):
        t = float(info["s"])
        states.append(info["x"] / float(sch.alpha(t)) if t >= 0 else info["x"])
    options = {"eta": 0.0} if sampler == "ddim" else {}
    diffkit.sample(Denoiser(net, sch, "edm"), x_ve * float(sch.alpha(grid[0])), sampler=sampler, grid=grid,
                   dtype=F64, progress=False, callback=record, **options)
    want = edm_euler(net, x_ve, sigmas, sd)
    assert len(states) == len(want)
    for a, b in zip(states, want):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_heun_on_the_edm_model_is_edms_algorithm_1():
    """diffkit's heun on the converted model is EDM's deterministic sampler (Algorithm 1): Euler, then the
    trapezoidal correction with D at (x_{i+1}, sigma_{i+1}) unless sigma_{i+1} = 0, in sigma on a hand grid."""
    _, mu, var = gaussian(seed=11)
    net, sd = GaussianF(mu, var), 0.5
    sch = NoiseSchedule.edm(T)
    sigmas = [80.0, 10.0, 1.5, 0.2, 0.0]

    def denoise(x, s):
        c_skip, c_out, c_in, c_noise = table1(torch.tensor(s, dtype=F64), sd)
        return c_skip * x + c_out * net(c_in * x, c_noise.float().expand(x.shape[0]))
    x = 80.0 * torch.randn(5, 3, generator=torch.Generator().manual_seed(12), dtype=F64)
    start = x.clone()
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        d = (x - denoise(x, s)) / s
        x_next = x + (s_next - s) * d
        if s_next != 0:
            x_next = x + (s_next - s) * (d + (x_next - denoise(x_next, s_next)) / s_next) / 2
        x = x_next
    grid = torch.cat([sch.t_from_karras_sigma(torch.tensor(sigmas[:-1], dtype=F64)), torch.tensor([-1.0], dtype=F64)])
    ours = diffkit.sample(Denoiser(net, sch, "edm"), start * float(sch.alpha(grid[0])), sampler="heun", grid=grid,
                          dtype=F64, progress=False)
    assert torch.allclose(ours, x, rtol=1e-5, atol=1e-5)


def test_ddim_on_the_edm_model_equals_diffusers_edm_euler():
    """DDIM on the VP times of EDMEulerScheduler's sigmas equals its step loop (the network given
    scale_model_input's c_in x and the scheduler's timesteps c_noise)."""
    diffusers = pytest.importorskip("diffusers")
    _, mu, var = gaussian(seed=6)
    net = GaussianF(mu, var)
    scheduler = diffusers.EDMEulerScheduler()
    scheduler.set_timesteps(8)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(7), dtype=F64) * scheduler.init_noise_sigma
    start = x.clone()
    for t in scheduler.timesteps:
        f = net(scheduler.scale_model_input(x, t), t.expand(4))
        x = scheduler.step(f, t, x, return_dict=False)[0].to(F64)
    sch = NoiseSchedule.edm(T)
    sigmas = scheduler.sigmas.to(F64)
    grid = torch.cat([sch.t_from_karras_sigma(sigmas[:-1]), torch.tensor([-1.0], dtype=F64)])
    ours = diffkit.sample(Denoiser(net, sch, "edm"), start * float(sch.alpha(grid[0])), sampler="ddim", grid=grid,
                          eta=0.0, dtype=F64, progress=False)
    assert torch.allclose(ours, x, rtol=1e-4, atol=1e-4)


def test_edm_sigmas_are_log_normal():
    sigma, w = EDMSigmas(-1.2, 1.2).sample(200_000, torch.Generator().manual_seed(8))
    assert sigma.dtype == F64 and torch.equal(w, torch.ones(200_000))
    ln = torch.log(sigma)
    assert abs(ln.mean().item() + 1.2) < 0.01 and abs(ln.std().item() - 1.2) < 0.01
    other, _ = EDMSigmas(0.4, 0.5).sample(100_000, torch.Generator().manual_seed(9))
    assert abs(torch.log(other).mean().item() - 0.4) < 0.01 and abs(torch.log(other).std().item() - 0.5) < 0.01


def test_the_trainer_draws_edm_sigmas_and_calls_edm_losses(tmp_path, monkeypatch):
    import diffkit.training as training
    from test_training import make_cfg, tiny_dataset
    seen = []

    def recording(net, x0, sigma, noise, sigma_data, cond=None):
        seen.append((sigma.clone(), sigma_data))
        return edm_losses(net, x0, sigma, noise, sigma_data, cond)
    monkeypatch.setattr(training, "edm_losses", recording)
    cfg = make_cfg(tmp_path, prediction_type="edm", schedule="edm", edm_p_mean=-0.5, edm_p_std=0.7,
                   edm_sigma_data=0.6, T=100, max_steps=1)
    trainer = training.Trainer(cfg, tiny_dataset(), progress=False, log=lambda *_: None)
    trainer.train_step([(torch.stack([trainer.dataset[i][0] for i in range(cfg.batch_size)]),
                         torch.zeros(cfg.batch_size, dtype=torch.long))])
    want, _ = EDMSigmas(-0.5, 0.7).sample(cfg.batch_size, torch.Generator().manual_seed(cfg.seed + 1))
    assert len(seen) == 1 and seen[0][1] == 0.6 and torch.equal(seen[0][0], want)


def test_load_denoiser_gives_an_edm_checkpoint_its_sigma_data(tmp_path):
    """A saved EDM run (no training step) loads as the EDM Denoiser of its edm_sigma_data and schedule."""
    import diffkit.training as training
    from test_training import make_cfg, tiny_dataset
    cfg = make_cfg(tmp_path, prediction_type="edm", schedule="edm", edm_sigma_data=0.7, edm_sigma_max=40.0, T=100)
    path = training.Trainer(cfg, tiny_dataset(), progress=False, log=lambda *_: None).save()
    loaded = load_denoiser(path)
    assert loaded.prediction_type == "edm" and loaded.sigma_data == 0.7
    assert torch.allclose(loaded.schedule.karras_sigma(torch.arange(100, dtype=F64)), karras(100, 0.002, 40.0).flip(0),
                          rtol=1e-10)


def test_a_config_builds_its_edm_schedule_and_a_checkpoint_gives_its_sigma_data():
    from diffkit.loading import edm_sigma_data_of
    from diffkit.training import build_schedule
    cfg = TrainConfig.from_dict({"prediction_type": "edm", "schedule": "edm", "T": 100, "edm_sigma_min": 0.01,
                                 "edm_sigma_max": 40.0, "edm_sigma_data": 0.7})
    sigmas = build_schedule(cfg).karras_sigma(torch.arange(100, dtype=F64))
    assert torch.allclose(sigmas, karras(100, 0.01, 40.0).flip(0), rtol=1e-10)
    assert edm_sigma_data_of({"config": cfg.to_dict()}) == 0.7 and edm_sigma_data_of({}) == 0.5


EDM = ["--set", "prediction_type=edm", "--set", "schedule=edm"]
TINY = ["--set", "img_size=8", "--set", "channel=16", "--set", "channel_mult=[1,2]", "--set", "attn=[1]",
        "--set", "num_res_blocks=1", "--set", "batch_size=8", "--set", "sample_steps=3", "--set", "num_heads=1",
        "--set", "T=100"]


@pytest.fixture(scope="module")
def edm_checkpoint(tmp_path_factory):
    """A class-conditional EDM checkpoint written by diffkit train (2 steps, sigma_data 0.6, sigma_max 40)."""
    run = tmp_path_factory.mktemp("edm") / "run"
    assert main(["train", "--out", str(run), "--steps", "2", "--no-progress", "--no-sample", "--device", "cpu",
                 *TINY, *EDM, "--set", "edm_sigma_data=0.6", "--set", "edm_sigma_max=40", "--conditional"]) == 0
    return run / "checkpoints" / "latest.safetensors"


@pytest.mark.slow  # a diffkit train run: about 5-8 s on a 2-core CPU
def test_an_edm_run_trains_and_every_kind_of_sampler_samples_its_checkpoint(edm_checkpoint, tmp_path, capsys):
    loaded = load_denoiser(edm_checkpoint)
    assert loaded.prediction_type == "edm" and loaded.sigma_data == 0.6
    assert torch.allclose(loaded.schedule.alphas_cumprod, NoiseSchedule.edm(100, sigma_max=40.0).alphas_cumprod)
    for sampler in ("ddim", "euler", "heun", "dpm-solver++-2m", "ddpm"):
        out = tmp_path / f"{sampler}.png"
        code = main(["sample", "--checkpoint", str(edm_checkpoint), "--sampler", sampler, "--steps", "3", "--num",
                     "2", "--out", str(out), "--no-progress", "--device", "cpu"])
        assert code == 0 and out.is_file(), capsys.readouterr().err
    code = main(["sample", "--checkpoint", str(edm_checkpoint), "--sampler", "euler", "--steps", "3", "--num", "2",
                 "--class", "3", "--guidance-scale", "2", "--out", str(tmp_path / "cfg.png"), "--no-progress",
                 "--device", "cpu"])
    assert code == 0 and (tmp_path / "cfg.png").is_file(), capsys.readouterr().err


@pytest.mark.slow  # a diffkit train run: about 5-8 s on a 2-core CPU
def test_an_edm_run_resumes_bitwise(tmp_path, assert_same_training_state):
    """Stop at step 2 of 4, resume: the same weights, EMA and optimiser state as an uninterrupted run."""
    from test_training import make_cfg, tiny_dataset

    from diffkit.training import Trainer
    edm = {"prediction_type": "edm", "schedule": "edm", "edm_p_mean": -0.8, "max_steps": 4, "T": 100,
           "sample_steps": 2}
    Trainer(make_cfg(tmp_path / "a", **edm), tiny_dataset(), progress=False, log=lambda *_: None).run()
    Trainer(make_cfg(tmp_path / "b", **edm), tiny_dataset(), progress=False, log=lambda *_: None).run(stop_at=2)
    resume = str(tmp_path / "b" / "ckpt" / "latest.safetensors")
    Trainer(make_cfg(tmp_path / "b", training_load_weight=resume, **edm), tiny_dataset(), progress=False,
            log=lambda *_: None).run()
    assert_same_training_state(tmp_path / "a" / "ckpt" / "latest.safetensors", resume, 4)


@pytest.mark.slow  # a diffkit train run: about 5-8 s on a 2-core CPU
def test_distilling_or_exporting_an_edm_model_is_a_one_line_refusal(edm_checkpoint, tmp_path, capsys):
    code = main(["distill", "--teacher", str(edm_checkpoint), "--out", str(tmp_path / "cd"), "--steps", "1",
                 "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "is an EDM model" in err, err
    assert not (tmp_path / "cd").exists()
    pytest.importorskip("diffusers")
    code = main(["convert", "--checkpoint", str(edm_checkpoint), "--to-diffusers", str(tmp_path / "hf")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "EDMEulerScheduler" in err, err
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("over, needle", [
    ({"prediction_type": "edm"}, "EDM is prediction_type='edm' with schedule='edm'"),
    ({"schedule": "edm"}, "EDM is prediction_type='edm' with schedule='edm'"),
    ({"edm_sigma_data": 1.0}, "edm_sigma_data=1.0 belongs to prediction_type='edm'"),
    ({"edm_p_mean": 0.0}, "edm_p_mean=0.0 belongs to prediction_type='edm'"),
    ({"edm_sigma_max": 10.0, "schedule": "flow", "prediction_type": "flow_prediction"}, "edm_sigma_max=10.0 belongs"),
    ({"loss": "hybrid", "learned_variance": True, "edm": True}, "does not apply to EDM"),
    ({"loss": "vlb", "edm": True}, "loss='vlb' does not apply to EDM"),
    ({"min_snr_gamma": 5.0, "edm": True}, "min_snr_gamma=5.0 does not apply to EDM"),
    ({"p2_gamma": 1.0, "edm": True}, "p2_gamma=1.0 does not apply to EDM"),
    ({"zero_terminal_snr": True, "edm": True}, "zero_terminal_snr=True does not apply to EDM"),
    ({"input_perturbation": 0.1, "edm": True}, "input_perturbation=0.1 does not apply to EDM"),
    ({"timestep_sampler": "loss-aware", "edm": True}, "timestep_sampler='loss-aware' does not apply to EDM"),
    ({"timestep_sampler": "logit-normal", "edm": True}, "timestep_sampler='logit-normal' does not apply to EDM"),
    ({"edm_sigma_max": 0.001, "edm": True}, "edm_sigma_max=0.001 must exceed edm_sigma_min=0.002"),
    ({"edm_sigma_data": 0.0, "edm": True}, "edm_sigma_data"),
    ({"edm_p_std": -1.0, "edm": True}, "edm_p_std"),
])
def test_meaningless_combinations_are_one_line_errors(over, needle):
    over = dict(over)
    if over.pop("edm", False):
        over.update(prediction_type="edm", schedule="edm")
    with pytest.raises(DiffkitError) as info:
        TrainConfig.from_dict(over)
    assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_bad_cli_values_fail_before_any_file(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress", "--device", "cpu",
                 *EDM, "--set", "edm_sigma_data=-1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "edm_sigma_data" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_the_vp_loss_and_target_refuse_an_edm_network():
    with pytest.raises(DiffkitError, match="edm_losses"):
        training_losses(lambda x, t: x, NoiseSchedule.edm(10), torch.zeros(1, 2), torch.zeros(1), torch.zeros(1, 2),
                        prediction_type="edm")
    with pytest.raises(DiffkitError, match="edm_target"):
        target_for("edm", torch.zeros(1, 2), torch.zeros(1, 2), 1.0, 0.0)
    with pytest.raises(DiffkitError, match="sigma_data"):
        Denoiser(lambda x, t: x, NoiseSchedule.edm(10), "edm", sigma_data=0.0)


@pytest.mark.parametrize("w", [0.0, 2.5])
def test_classifier_free_guidance_of_an_edm_model_is_guidance_of_f(w):
    """x_0 and eps are affine in F with the same coefficients for both passes (eps_x0_from_edm), so CFG of
    the converted model is the EDM model with the guided F_u + (1 + w)(F_c - F_u)."""
    from diffkit.guidance import ClassifierFreeGuidance
    sch, null = NoiseSchedule.edm(T), 3

    def net(x, t, y):
        return torch.cos(x) * (1 + y.to(x.dtype)[:, None]) + t.to(x.dtype)[:, None]

    def guided(x, t, y):
        f_c, f_u = net(x, t, y), net(x, t, torch.full_like(y, null))
        return f_u + (1 + w) * (f_c - f_u)
    cfg = ClassifierFreeGuidance(Denoiser(net, sch, "edm"), w, null_class=null)
    ref = Denoiser(guided, sch, "edm")
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(10), dtype=F64)
    y = torch.tensor([1, 2, 0])
    for t in (0.0, 400.0, 999.0):
        a, b = cfg(x, t, y=y), ref(x, t, y=y)
        assert torch.allclose(a.x0, b.x0, rtol=1e-12, atol=1e-12) and torch.allclose(a.eps, b.eps, rtol=1e-12,
                                                                                       atol=1e-12), t


@pytest.mark.slow  # two diffkit train runs
def test_init_from_an_edm_checkpoint_keeps_its_edm_fields(edm_checkpoint, tmp_path, capsys):
    """A fine-tuned run is the source's EDM model (prediction_type, schedule, sigma range, sigma_data) though none
    is given; another edm_sigma_data is refused in one line, writing nothing."""
    out = tmp_path / "ft"
    assert main(["train", "--init-from", str(edm_checkpoint), "--out", str(out), "--steps", "1", "--no-progress",
                 "--no-sample", "--device", "cpu", "--set", "batch_size=8"]) == 0
    tuned = load_denoiser(out / "checkpoints" / "latest.safetensors")
    assert tuned.prediction_type == "edm" and tuned.sigma_data == 0.6
    assert torch.allclose(tuned.schedule.alphas_cumprod, NoiseSchedule.edm(100, sigma_max=40.0).alphas_cumprod)
    capsys.readouterr()
    code = main(["train", "--init-from", str(edm_checkpoint), "--out", str(tmp_path / "no"), "--steps", "1",
                 "--no-progress", "--device", "cpu", "--set", "edm_sigma_data=0.5"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "edm_sigma_data=0.5" in err, err
    assert not (tmp_path / "no").exists()


def test_a_sigma_range_the_vp_schedule_cannot_hold_is_a_one_line_error(tmp_path, capsys):
    """alpha_bar = 1/(1 + sigma^2) in float64 loses sigma_min below about 1e-5 (1 - alpha_bar ~ sigma^2 next to
    1) and rounds it away below about 1e-8: refused in one line naming the range, before any file."""
    assert torch.allclose(NoiseSchedule.edm(T, sigma_min=1e-5).karras_sigma(torch.arange(T, dtype=F64)),
                          karras(T, 1e-5).flip(0), rtol=1e-6)
    for low in (1e-6, 1e-7, 1e-9):
        with pytest.raises(DiffkitError, match=f"sigma_min={low} .. sigma_max=80.0") as info:
            NoiseSchedule.edm(T, sigma_min=low)
        assert "\n" not in str(info.value)
    with pytest.raises(DiffkitError, match="sigma_max=1e\\+30"):
        NoiseSchedule.edm(T, sigma_max=1e30)
    code = main(["train", "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress", "--device", "cpu",
                 *EDM, "--set", "edm_sigma_min=1e-7"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "edm_sigma_min" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def _samplers_with_steps():
    from diffkit.samplers.registry import REGISTRY
    return sorted(name for name in REGISTRY if name not in ("ode", "dpm-adaptive"))


@pytest.mark.parametrize("sampler", _samplers_with_steps())
def test_every_sampler_draws_from_the_exact_f_what_it_draws_from_the_exact_eps_model(sampler):
    """The exact F of Gaussian data through the edm Denoiser is the exact eps model (GaussianMixture.network)
    for every sampler: same noise, same samples (none calls the network at sigma = 0, where c_noise = -inf)."""
    mix, mu, var = gaussian(seed=13)
    sch = NoiseSchedule.edm(T)
    edm = Denoiser(GaussianF(mu, var), sch, "edm")
    a = diffkit.sample(edm, (16, 3), sampler=sampler, steps=8, seed=0, dtype=F64, progress=False)
    b = diffkit.sample(Denoiser(mix.network(sch), sch, "epsilon"), (16, 3), sampler=sampler, steps=8, seed=0,
                       dtype=F64, progress=False)
    assert torch.isfinite(a).all() and torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_the_variational_bound_of_the_exact_f_is_that_of_the_exact_eps_model():
    """diffkit eval --metrics nll on an EDM model: the bound (DDPM eq. 5, every term and the prior) through the edm
    Denoiser equals the exact eps model's on the same schedule and noise."""
    from diffkit.likelihood import variational_bound
    mix, mu, var = gaussian(seed=14)
    sch = NoiseSchedule.edm(T)
    x0 = torch.round((torch.rand(4, 3, generator=torch.Generator().manual_seed(15), dtype=F64) * 2 - 1) * 127.5) / 127.5
    ts = list(range(10)) + list(range(10, T, 50))
    a = variational_bound(Denoiser(GaussianF(mu, var), sch, "edm"), x0, timesteps=ts,
                          generator=torch.Generator().manual_seed(16))
    b = variational_bound(Denoiser(mix.network(sch), sch, "epsilon"), x0, timesteps=ts,
                          generator=torch.Generator().manual_seed(16))
    assert torch.allclose(a.terms, b.terms, rtol=1e-5, atol=1e-7) and torch.allclose(a.total, b.total, rtol=1e-6)
    assert torch.equal(a.prior, b.prior)


def test_the_sample_cache_key_holds_sigma_data():
    """Two EDM denoisers of the same weights and schedule with other sigma_data draw other samples: other keys."""
    from diffkit.sample_cache import denoiser_identity
    net = torch.nn.Linear(3, 3)
    sch = NoiseSchedule.edm(10)
    keys = [denoiser_identity(Denoiser(net, sch, "edm", sigma_data=sd)) for sd in (0.5, 0.6)]
    assert keys[0] != keys[1] and keys[0]["sigma_data"] == 0.5


@pytest.mark.slow  # three diffkit train runs of tiny nets
def test_time_series_latent_and_mixed_precision_edm_models_train_sample_and_bound(tmp_path, capsys):
    """docs/edm.md's other kinds of model: a time-series EDM model (sample, eval --metrics nll-strided), a latent
    text-conditional one (sample with prompts and guidance), and bf16 training and sampling (CPU autocast)."""
    import json

    import numpy as np
    from test_flow_model_kinds import RUN, SERIES, TEXT

    from diffkit.autoencoder_training import save_autoencoder
    from diffkit.data import load_dataset
    from diffkit.models.autoencoder import Autoencoder, AutoencoderConfig, estimate_scale_factor
    edm = ["--set=prediction_type=edm", "--set=schedule=edm"]
    out = ["--no-progress", "--device", "cpu"]
    for name, extra in (("series", []), ("bf16", ["--set=mixed_precision=bf16"])):
        assert main(["train", "--dataset", "sines", "--out", str(tmp_path / name), "--steps", "2", *RUN, *SERIES,
                     *edm, *extra]) == 0
        checkpoint = str(tmp_path / name / "checkpoints" / "latest.safetensors")
        assert load_denoiser(checkpoint).prediction_type == "edm"
        code = main(["sample", "--checkpoint", checkpoint, "--sampler", "heun", "--steps", "3", "--num", "2",
                     "--out", str(tmp_path / f"{name}.png"), *out,
                     *(["--mixed-precision", "bf16"] if extra else [])])
        assert code == 0, capsys.readouterr().err
        series = np.load(tmp_path / f"{name}.npy")
        assert series.shape == (2, 3, 8) and np.isfinite(series).all()
    code = main(["eval", "--checkpoint", str(tmp_path / "series" / "checkpoints" / "latest.safetensors"), "--metrics",
                 "nll-strided", "--nll-num", "16", "--out", str(tmp_path / "nll.json"), *out])
    assert code == 0, capsys.readouterr().err
    bpd = json.loads((tmp_path / "nll.json").read_text())["metrics"]["nll-strided"]["bpd"]
    assert np.isfinite(bpd) and bpd > 0
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(in_channels=1, channel=8, channel_mult=[1, 2], num_res_blocks=1,
                                       latent_channels=2, attn_middle=False))
    save_autoencoder(tmp_path / "ae.safetensors", ae,
                     estimate_scale_factor(ae, load_dataset("digits").images[:64].float() / 127.5 - 1))
    assert main(["train", "--dataset", "digits", "--out", str(tmp_path / "latent"), "--steps", "2", *RUN, *TEXT, *edm,
                 f"--set=autoencoder={tmp_path / 'ae.safetensors'}", "--set=edm_sigma_data=1.0"]) == 0
    code = main(["sample", "--checkpoint", str(tmp_path / "latent" / "checkpoints" / "latest.safetensors"),
                 "--prompt", "a 7", "--guidance-scale", "3", "--sampler", "dpm-solver++-2m", "--steps", "2", "--num",
                 "2", "--out", str(tmp_path / "latent.png"), *out])
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize("thresholding", ["clip", "dynamic"])
def test_thresholding_an_edm_model_is_thresholding_the_exact_eps_model(thresholding):
    """Thresholding acts on x_0 (Imagen Sec. 2.3), so on the exact F it is the exact eps model's, sample for sample
    (data far outside [-1, 1], so it bites)."""
    mix, mu, var = gaussian(seed=17)
    mu, sch = 3 * mu, NoiseSchedule.edm(T)
    mix = GaussianMixture([1.0], mu[None], torch.diag(var)[None])
    kw = dict(sampler="ddim", steps=8, seed=0, dtype=F64, progress=False, thresholding=thresholding)
    a = diffkit.sample(Denoiser(GaussianF(mu, var), sch, "edm"), (16, 3), **kw)
    b = diffkit.sample(Denoiser(mix.network(sch), sch, "epsilon"), (16, 3), **kw)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5) and a.abs().max() <= 1 + 1e-9


@pytest.mark.parametrize("prediction_type, kind", [("edm", "an EDM"), ("flow_prediction", "a flow-matching")])
def test_noise_scales_of_an_edm_or_flow_checkpoint_are_a_one_line_refusal(prediction_type, kind):
    """diffkit experiment noise-scale measures L_simple / L_vlb at integer t: refused by name, not by the library's
    'use diffkit.losses.edm_losses' from inside training_losses."""
    from types import SimpleNamespace

    from diffkit.gradient_noise import check_diffusion_model
    needle = f"this checkpoint is {kind} model \\(prediction_type='{prediction_type}'\\)"
    with pytest.raises(DiffkitError, match=needle):
        check_diffusion_model(SimpleNamespace(meta={"prediction_type": prediction_type}, decoder=None))
    check_diffusion_model(SimpleNamespace(meta={"prediction_type": "v_prediction"}, decoder=None))


@pytest.mark.parametrize("steps", [8, 20])
def test_dpm_solver_pp_2m_on_the_edm_model_equals_diffusers_edm_dpm_solver(steps):
    """dpm-solver++-2m on the VP times of EDMDPMSolverMultistepScheduler's sigmas equals its step loop (DPM-Solver++
    in lambda = -ln sigma: its alpha_t = 1 of the pre-scaled VE state); sigma_min clamped to t = 0 (the scheduler's
    float32 0.002 lies a hair below the schedule's)."""
    diffusers = pytest.importorskip("diffusers")
    _, mu, var = gaussian(seed=18)
    net = GaussianF(mu, var)
    scheduler = diffusers.EDMDPMSolverMultistepScheduler()
    scheduler.set_timesteps(steps)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(19), dtype=F64) * scheduler.init_noise_sigma
    start = x.clone()
    for t in scheduler.timesteps:
        f = net(scheduler.scale_model_input(x, t), t.expand(4).to(F64))
        x = scheduler.step(f, t, x, return_dict=False)[0].to(F64)
    sch = NoiseSchedule.edm(T)
    sigmas = scheduler.sigmas.to(F64)
    grid = torch.cat([sch.t_from_karras_sigma(sigmas[:-1]).clamp(min=0), torch.tensor([-1.0], dtype=F64)])
    ours = diffkit.sample(Denoiser(net, sch, "edm"), start * float(sch.alpha(grid[0])), sampler="dpm-solver++-2m",
                          grid=grid, dtype=F64, progress=False)
    assert torch.allclose(ours, x, rtol=1e-5, atol=1e-5)
