"""Adaptive projected guidance (APG; Sadat, Hilliges & Weber 2025, Sec. 4, Alg. 1) as an option of
:class:`~diffkit.guidance.ClassifierFreeGuidance`, checked against the paper's update written out by hand
on fixed numbers (projection onto D_c, norm rescaling, reverse momentum over three calls), its reduction
to plain classifier-free guidance, per-sample independence, its composition with the guidance interval
and rescale, and a sampler run on the exact Gaussian-mixture model (eta = 0: every guided update is
orthogonal to the conditional x_0)."""
import math

import pytest
import torch

import diffkit
from diffkit import Denoiser, NoiseSchedule
from diffkit.analytic import GaussianMixture
from diffkit.errors import DiffkitError
from diffkit.guidance import ClassifierFreeGuidance, adaptive_projected_update

from test_guidance import run_cli, write_model_checkpoint
import test_series_conditioning as conditioning
from test_series_conditioning import write_csv

labelled_run = conditioning.labelled_run  # the fixture: a 3-class series checkpoint (columns a, b; label "state")

SCHEDULE = NoiseSchedule.linear(1000)
NULL = 2


class ScriptedNet:
    """An x_0-predicting 'network' whose k-th call returns the k-th given (x0_cond, x0_uncond) pair, each
    (B, 2): rows with a real label get x0_cond, rows with the null label x0_uncond. ``config.num_classes`` = 2."""

    class config:
        num_classes = NULL

    def __init__(self, pairs):
        self.pairs, self.calls = [(torch.tensor(c, dtype=torch.float64), torch.tensor(u, dtype=torch.float64))
                                  for c, u in pairs], 0

    def __call__(self, x, t, y):
        cond, uncond = self.pairs[self.calls]
        self.calls += 1
        repeats = x.shape[0] // cond.shape[0]  # the batch [x, x] of a guided call: rows i and B + i are sample i
        return torch.where((y == NULL)[:, None], uncond.repeat(repeats, 1), cond.repeat(repeats, 1))


def scripted(pairs, **apg):
    """ClassifierFreeGuidance(w = 3) over a ScriptedNet, and the (batch, 2) input and labels."""
    den = Denoiser(ScriptedNet(pairs), SCHEDULE, prediction_type="sample")
    x = torch.zeros(len(pairs[0][0]), 2, dtype=torch.float64)
    return ClassifierFreeGuidance(den, 3.0, **apg), x, torch.zeros(x.shape[0], dtype=torch.long)


# ------------------------------------------------------------------ the update, by hand
def test_projection_keeps_eta_times_the_parallel_part():
    """Sample 0: D_c = (1, 0, 0), diff = (2, 3, 0): parallel (2, 0, 0), orthogonal (0, 3, 0).
    Sample 1: D_c = (0, 2, 0), diff = (1, 1, 1): <diff, D_c>/<D_c, D_c> = 2/4, parallel (0, 1, 0)."""
    diff = torch.tensor([[2.0, 3.0, 0.0], [1.0, 1.0, 1.0]])
    x0_c = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert torch.equal(adaptive_projected_update(diff, x0_c, eta=0.5),
                       torch.tensor([[1.0, 3.0, 0.0], [1.0, 0.5, 1.0]]))  # orth + 0.5 par
    assert torch.equal(adaptive_projected_update(diff, x0_c, eta=0.0), torch.tensor([[0.0, 3.0, 0.0], [1.0, 0.0, 1.0]]))
    assert torch.equal(adaptive_projected_update(diff, x0_c, eta=1.0), diff)
    assert torch.equal(adaptive_projected_update(diff, torch.zeros_like(x0_c), eta=0.0), diff)  # no direction: no par


def test_rescaling_caps_each_samples_norm_at_r():
    """Sample 0: ||(3, 4, 0)|| = 5 > r = 2.5: halved. Sample 1: ||(0, 1, 0)|| = 1 <= r: kept. Then the
    projection onto D_c = (1, 0, 0) of the rescaled difference (eta = 0)."""
    diff = torch.tensor([[3.0, 4.0, 0.0], [0.0, 1.0, 0.0]])
    x0_c = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert torch.equal(adaptive_projected_update(diff, x0_c, 1.0, 2.5),
                       torch.tensor([[1.5, 2.0, 0.0], [0.0, 1.0, 0.0]]))
    assert torch.equal(adaptive_projected_update(diff, x0_c, 0.0, 2.5),
                       torch.tensor([[0.0, 2.0, 0.0], [0.0, 1.0, 0.0]]))
    assert torch.equal(adaptive_projected_update(torch.zeros_like(diff), x0_c, 1.0, 2.5), torch.zeros_like(diff))


def test_momentum_over_three_calls_is_the_papers_running_average():
    """D-bar_1 = d1, D-bar_2 = d2 + beta D-bar_1, D-bar_3 = d3 + beta D-bar_2 (beta = -0.5), and the
    guided x_0 is D_c + w D-bar (eta = 1, r = inf), w = 3: d = (1, 2), (4, 0), (2, 2) give the running
    averages (1, 2), (3.5, -1), (0.25, 2.5)."""
    c = [0.5, -0.5]
    pairs = [([c], [[c[0] - 1, c[1] - 2]]), ([c], [[c[0] - 4, c[1]]]), ([c], [[c[0] - 2, c[1] - 2]])]
    guided, x, y = scripted(pairs, apg_momentum=-0.5)
    expected = [[1.0, 2.0], [3.5, -1.0], [0.25, 2.5]]
    for t, running in zip((900, 600, 300), expected):
        out = guided(x, t, y=y)
        assert torch.allclose(out.x0, torch.tensor([c]) + 3 * torch.tensor([running], dtype=torch.float64),
                              atol=1e-12), (t, out.x0)
        alpha, sigma = SCHEDULE.alpha(torch.tensor([float(t)])), SCHEDULE.sigma(torch.tensor([float(t)]))
        assert torch.allclose(alpha * out.x0 + sigma * out.eps, x, atol=1e-12)  # a consistent pair


def test_a_second_call_at_the_same_time_replaces_that_times_entry():
    """Times 900, 600, 600, 300 (Heun's corrector at 600, then the next step's predictor there): the
    second call at 600 starts again from D-bar_900, so the average has one entry per distinct time."""
    c = [0.0, 0.0]
    d = [[1.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 1.0]]
    guided, x, y = scripted([([c], [[-a, -b]]) for a, b in d], apg_momentum=-0.5)
    outs = [guided(x, t, y=y).x0 / 3 for t in (900, 600, 600, 300)]
    expected = [[1.0, 0.0], [-0.5, 1.0], [-0.5, 3.0], [1.25, -0.5]]  # d4 + beta (d3 + beta d1)
    assert torch.allclose(torch.cat(outs), torch.tensor(expected, dtype=torch.float64), atol=1e-12)


def test_momentum_counts_only_the_steps_inside_the_guidance_interval():
    """Interval [0, 500]: the call at t = 900 is the conditional model (one pass of batch B) and leaves
    the average alone, so at t = 300 D-bar = d_300 + beta d_400 = (0, 1) - 0.5 (1, 0)."""
    c = [1.0, 1.0]
    d = [[5.0, 5.0], [1.0, 0.0], [0.0, 1.0]]  # the first is never used as a difference (outside)
    guided, x, y = scripted([([c], [[c[0] - a, c[1] - b]]) for a, b in d], apg_momentum=-0.5, interval=(0, 500))
    assert torch.equal(guided(x, 900, y=y).x0, torch.tensor([c], dtype=torch.float64))
    assert torch.allclose(guided(x, 400, y=y).x0, torch.tensor([[1.0 + 3 * 1, 1.0]], dtype=torch.float64))
    assert torch.allclose(guided(x, 300, y=y).x0, torch.tensor([[1.0 - 3 * 0.5, 1.0 + 3 * 1]], dtype=torch.float64))
    # per-sample times (t = 900 and 400, then 400 and 300): sample 0's first guided call starts its average
    c2 = [c, c]
    guided, x, y = scripted([(c2, [[-4.0, -4.0], [0.0, 1.0]]), (c2, [[0.0, 1.0], [1.0, 0.0]])], apg_momentum=-0.5,
                            interval=(0, 500))
    assert torch.allclose(guided(x, torch.tensor([900.0, 400.0]), y=y).x0,
                          torch.tensor([c, [1.0 + 3 * 1, 1.0]], dtype=torch.float64))
    assert torch.allclose(guided(x, torch.tensor([400.0, 300.0]), y=y).x0,
                          torch.tensor([[1.0 + 3 * 1, 1.0], [1.0 - 3 * 0.5, 1.0 + 3 * 1]], dtype=torch.float64))


def test_rescale_applies_to_the_apg_prediction():
    """--guidance-rescale with APG: Lin et al.'s x0 rescale of the APG prediction,
    phi x_apg std(x_c) / std(x_apg) + (1 - phi) x_apg."""
    c, u = [[1.0, 0.0, 2.0, 1.0]], [[0.0, 0.0, 1.0, 3.0]]
    den = Denoiser(ScriptedNet([(c, u)] * 2), SCHEDULE, prediction_type="sample")
    x, y = torch.zeros(1, 4, dtype=torch.float64), torch.zeros(1, dtype=torch.long)
    x_c, diff = torch.tensor(c, dtype=torch.float64), torch.tensor(c, dtype=torch.float64) - torch.tensor(u)
    par = (diff * x_c).sum() / (x_c * x_c).sum() * x_c
    x_apg = x_c + 3 * ((diff - par) + 0.25 * par)
    assert torch.allclose(ClassifierFreeGuidance(den, 3.0, apg_eta=0.25)(x, 500, y=y).x0, x_apg, atol=1e-12)
    rescaled = ClassifierFreeGuidance(den, 3.0, rescale=0.7, apg_eta=0.25)(x, 500, y=y).x0
    assert torch.allclose(rescaled, 0.7 * x_apg * x_c.std() / x_apg.std() + 0.3 * x_apg, atol=1e-12)


# ------------------------------------------------------------------ plain CFG, batches, runs
def tiny_unet(attn=()):
    """A random conditional U-Net in float64 (3 classes, null class 3): batch-size round-off far below the
    tolerances."""
    from diffkit.models.unet import UNet, UNetConfig
    torch.manual_seed(0)
    net = UNet(UNetConfig(channel=8, channel_mult=[1, 2], attn=list(attn), num_res_blocks=1, dropout=0.0, img_size=8,
                          in_channels=1, num_classes=3, scale_shift_norm=True))
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(std=0.2)
    return net.double().eval()


def test_default_apg_is_plain_cfg_and_a_never_binding_apg_equals_it():
    den = Denoiser(tiny_unet(), SCHEDULE)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        plain = ClassifierFreeGuidance(den, 4.0)(x, 600, y=y)
        explicit = ClassifierFreeGuidance(den, 4.0, apg_eta=1.0, apg_norm_threshold=math.inf, apg_momentum=0.0)
        assert not explicit.apg
        same = explicit(x, 600, y=y)
        assert torch.equal(same.eps, plain.eps) and torch.equal(same.x0, plain.x0)
        # through the APG code: r above every norm, eta = 1, and the momentum's first call (D-bar = diff)
        forced = ClassifierFreeGuidance(den, 4.0, apg_norm_threshold=1e30, apg_momentum=-0.5)(x, 600, y=y)
    assert torch.allclose(forced.x0, plain.x0, atol=0, rtol=1e-12)
    assert torch.allclose(forced.eps, plain.eps, atol=0, rtol=1e-12)


def test_each_samples_guidance_is_independent_of_the_batch():
    """Norms, projections and the momentum are per sample: sample i's three guided calls in a batch of 4
    equal those of a batch of 1."""
    den = Denoiser(tiny_unet(), SCHEDULE)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    options = {"apg_eta": 0.0, "apg_norm_threshold": 2.0, "apg_momentum": -0.5}
    times = (800, 500, 200)
    with torch.no_grad():
        whole = ClassifierFreeGuidance(den, 6.0, **options)
        batched = torch.stack([whole(x, t, y=y).x0 for t in times])  # (calls, batch, ...)
        for i in range(4):
            alone = ClassifierFreeGuidance(den, 6.0, **options)
            single = torch.stack([alone(x[i:i + 1], t, y=y[i:i + 1]).x0[0] for t in times])
            assert torch.allclose(batched[:, i], single, atol=0, rtol=1e-12), i


def test_diffkit_sample_restarts_the_momentum_and_a_batch_of_another_shape_is_refused():
    den = Denoiser(tiny_unet(), SCHEDULE)
    guided = ClassifierFreeGuidance(den, 3.0, apg_momentum=-0.5, apg_eta=0.0)
    run = lambda n: diffkit.sample(guided, (n, 1, 8, 8), "ddim", steps=3, seed=0,  # noqa: E731
                                   cond={"y": torch.arange(n) % 3}, progress=False, dtype=torch.float64)
    first = run(3)
    assert torch.equal(run(3), first)  # the second run starts from zero again
    assert torch.allclose(run(1), first[:1], atol=0, rtol=1e-12)  # and a batch of another size is a new run
    guided.reset_state()
    with torch.no_grad():
        guided(torch.zeros(2, 1, 8, 8, dtype=torch.float64), 500, y=torch.tensor([0, 1]))
        with pytest.raises(DiffkitError, match=r"reset_state\(\)") as err:
            guided(torch.zeros(3, 1, 8, 8, dtype=torch.float64), 400, y=torch.tensor([0, 1, 2]))
    assert "\n" not in str(err.value)


def test_apg_with_momentum_runs_with_every_registered_sampler():
    """Multistep, two-calls-per-step and stochastic samplers alike, one wrapper for all (the momentum restarts
    with each run; a leftover state of another run would be refused or change the result: see
    test_diffkit_sample_restarts_the_momentum_and_a_batch_of_another_shape_is_refused)."""
    guided = ClassifierFreeGuidance(Denoiser(tiny_unet(), SCHEDULE), 3.0, apg_eta=0.0, apg_norm_threshold=2.0,
                                    apg_momentum=-0.5)
    for name, info in diffkit.samplers.REGISTRY.items():
        if info.adaptive:  # ode / dpm-adaptive take no steps
            continue
        out = diffkit.sample(guided, (2, 1, 8, 8), name, steps=2, seed=0, cond={"y": torch.tensor([0, 2])},
                             progress=False)
        assert torch.isfinite(out).all(), name


@pytest.mark.parametrize("kwargs,pattern", [
    ({"apg_eta": 1.5}, r"APG eta=1.5 is out of range; allowed: a finite number in \[0.0, 1.0\]"),
    ({"apg_eta": -0.1}, "APG eta"),
    ({"apg_norm_threshold": 0.0}, r"APG norm threshold=0.0 is out of range; allowed: a number in \(0.0, inf\)"),
    ({"apg_norm_threshold": float("nan")}, "APG norm threshold"),
    ({"apg_momentum": -1.0}, r"APG momentum=-1.0 is out of range; allowed: a finite number in \(-1.0, 1.0\)"),
    ({"apg_momentum": 1.0}, "APG momentum"),
])
def test_bad_apg_settings_are_one_line_errors(kwargs, pattern):
    with pytest.raises(DiffkitError, match=pattern) as err:
        ClassifierFreeGuidance(Denoiser(tiny_unet(), SCHEDULE), 2.0, **kwargs)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ a sampler run on the exact model
class MixtureWithNullClass:
    """The exact eps* of a two-component mixture with labels; label 2 is the null class (unconditional)."""

    class config:
        num_classes = NULL

    def __init__(self, gm):
        self.gm, self.net = gm, gm.network(SCHEDULE)

    def __call__(self, x, t, y):
        null = y == NULL
        return torch.where(null[:, None], self.net(x, t), self.net(x, t, torch.where(null, 0, y)))


class Recorder:
    """Records (x_t, t, prediction) of every call of the denoiser it wraps."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.schedule = inner.schedule

    def __call__(self, x, t, **cond):
        pred = self.inner(x, t, **cond)
        self.calls.append((x, t, pred))
        return pred


def test_eta_0_removes_the_parallel_part_in_a_sampler_run_on_the_exact_model():
    """DDIM, w = 8, on the exact two-component mixture: with eta = 0 each guided x_0 minus the conditional
    x_0 is orthogonal to the conditional x_0, per sample and step; with plain CFG it is not. Removing the
    parallel part leaves the samples nearer the component (CFG pushes them outwards, the oversaturation
    of Sadat et al.)."""
    gm = GaussianMixture([0.5, 0.5], [[-1.0, 0.5], [1.0, -0.5]], [[[0.09, 0.03], [0.03, 0.06]],
                                                                    [[0.05, -0.02], [-0.02, 0.1]]])
    cond = Denoiser(MixtureWithNullClass(gm), SCHEDULE)
    noise = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.arange(64) % 2
    out = {}
    for name, options in (("cfg", {}), ("apg", {"apg_eta": 0.0})):
        inner = Recorder(cond)
        guided = Recorder(ClassifierFreeGuidance(inner, 8.0, **options))
        out[name] = diffkit.sample(guided, noise, "ddim", steps=20, cond={"y": y}, progress=False)
        inner_products, cosines = [], []
        for (_, _, both), (_, _, pred) in zip(inner.calls, guided.calls):
            x0_c = both.x0.chunk(2)[0]
            update = pred.x0 - x0_c
            inner_products.append(((update * x0_c).sum(1) / (x0_c * x0_c).sum(1)).abs().max())
            acting = update.norm(dim=1) > 1e-3  # (late steps: p(y | x_t) ~ 1, so x0_c ~ x0_u)
            cosines.append(((update * x0_c).sum(1) / (update.norm(dim=1) * x0_c.norm(dim=1)))[acting].abs())
        cosines = torch.cat(cosines)
        assert len(cosines) > 64 * 5  # guidance acts
        if name == "apg":
            assert max(inner_products) < 1e-12 and cosines.max() < 1e-9
        else:
            assert cosines.mean() > 0.3
    distance = {k: (v - gm.means[y]).norm(dim=1).mean() for k, v in out.items()}
    assert distance["apg"] < 0.7 * distance["cfg"], distance


# ------------------------------------------------------------------ the command line
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from diffkit.checkpoint import save_checkpoint
    from diffkit.models.unet import UNet, UNetConfig
    d = tmp_path_factory.mktemp("apg")
    unet = {"channel": 8, "channel_mult": [1, 2], "attn": [], "num_res_blocks": 1, "dropout": 0.0, "img_size": 8,
            "in_channels": 1, "num_classes": 3, "scale_shift_norm": True, "guidance_embedding_dim": 8}
    torch.manual_seed(0)
    tensors = {f"model.{k}": v for k, v in UNet(UNetConfig(**unet)).state_dict().items()}
    tensors["schedule.betas"] = SCHEDULE.betas
    w_input = save_checkpoint(d / "w.safetensors", tensors, {"unet": unet, "config": {"nrow": 4},
                                                             "class_names": ["0", "1", "2"]})
    return {"cond": write_model_checkpoint(d / "cond.safetensors", 3),
            "never": write_model_checkpoint(d / "never.safetensors", 3, p_uncond=0.0), "w": w_input, "dir": d}


def test_cli_apg_flags_take_effect_and_eta_1_is_plain_guidance(checkpoints, capsys):
    d = checkpoints["dir"]

    def grid(name, *flags):
        code, out = run_cli(capsys, "sample", "--checkpoint", checkpoints["cond"], "--steps", 2, "--num", 3,
                            "--guidance-scale", 6, "--out", d / f"{name}.png", "--no-progress", "--device", "cpu",
                            *flags)
        assert code == 0, out.err
        return (d / f"{name}.png").read_bytes()
    plain = grid("plain")
    assert grid("eta1", "--apg-eta", 1, "--apg-momentum", 0, "--apg-norm-threshold", "inf") == plain
    assert grid("apg", "--apg-eta", 0, "--apg-norm-threshold", 1, "--apg-momentum", -0.5) != plain


@pytest.mark.parametrize("extra,message", [
    (["--apg-eta", "0"], "--apg-eta needs --guidance-scale"),
    (["--apg-momentum", "-0.5"], "--apg-momentum needs --guidance-scale"),
    (["--guidance-scale", "3", "--apg-eta", "1.5"], "--apg-eta=1.5 is out of range; allowed: a finite number in "
                                                   "[0.0, 1.0]"),
    (["--guidance-scale", "3", "--apg-norm-threshold", "0"], "--apg-norm-threshold=0.0 is out of range; allowed: "
                                                             "a number in (0.0, inf)"),
    (["--guidance-scale", "3", "--apg-norm-threshold", "nan"],
     "--apg-norm-threshold=nan is not allowed; give a number"),
    (["--guidance-scale", "3", "--apg-momentum", "1"], "--apg-momentum=1.0 is out of range; allowed: a finite "
                                                       "number in (-1.0, 1.0)"),
    (["--checkpoint", "never", "--guidance-scale", "3", "--apg-eta", "0"],
     "this checkpoint was trained with p_uncond=0, so its null class is untrained; classifier-free guidance needs a "
     "model trained with label dropout (p_uncond > 0)"),
    (["--checkpoint", "w", "--guidance-scale", "3", "--apg-eta", "0"],
     "--apg-eta is an option of classifier-free guidance; this w-conditioned model takes --guidance-scale as its "
     "input w (one call per step)"),
])
def test_cli_apg_mistakes_are_one_line_errors_before_any_output(extra, message, checkpoints, capsys):
    d = checkpoints["dir"]
    checkpoint = [] if "--checkpoint" in extra else ["--checkpoint", checkpoints["cond"]]
    extra = [str(checkpoints.get(a, a)) for a in extra]
    code, out = run_cli(capsys, "sample", *checkpoint, *extra, "--steps", 1, "--num", 2, "--out",
                        d / "new" / "bad.png", "--no-progress", "--device", "cpu")
    assert code == 2 and out.err.strip().splitlines() == [f"diffkit sample: error: {message}"], out.err
    assert not (d / "new").exists()


def test_edit_refuses_apg_for_image_edits(checkpoints, capsys, tmp_path):
    code, out = run_cli(capsys, "edit", "--checkpoint", checkpoints["cond"], "--images", tmp_path, "--apg-eta", 0,
                        "--out", tmp_path / "o", "--no-progress")
    assert code == 2 and out.err.strip().splitlines() == [
        "diffkit edit: error: --apg-eta is not available for --images (image edits take --class without guidance); "
        "it goes with --series, or with --prompt (a text-conditional checkpoint or a Stable Diffusion folder)"], out.err


def test_edit_series_forecast_with_apg_is_the_api_forecast(labelled_run, tmp_path, capsys):
    """``diffkit edit --series --class 1 --guidance-scale 3 --apg-eta 0 --apg-momentum -0.5`` is diffkit.forecast of
    ClassifierFreeGuidance(den, 3, apg_eta=0, apg_momentum=-0.5) (null class 3); plain guidance differs."""
    import numpy as np

    from diffkit.loading import load_denoiser
    from diffkit.series_files import SeriesScaling
    path = write_csv(tmp_path / "h.csv", [1] * 6)
    flags = ["--horizon", "2", "--num", "2", "--class", "1", "--guidance-scale", "3"]
    runs = {}
    for name, apg in (("plain", []), ("apg", ["--apg-eta", "0", "--apg-momentum", "-0.5"])):
        assert main_edit(labelled_run, path, tmp_path / f"{name}.npy", *flags, *apg) == 0
        runs[name] = np.load(tmp_path / f"{name}.npy")
    assert "apg-eta 0, apg-momentum -0.5" in capsys.readouterr().out
    assert not np.allclose(runs["plain"], runs["apg"], atol=1e-4)
    den = load_denoiser(labelled_run)
    scaling = SeriesScaling.from_meta(den.meta["series_scaling"])
    rows = np.loadtxt(path, delimiter=",", skiprows=1)[:, 1:3]  # columns a, b (date and state dropped)
    history = torch.from_numpy(scaling.normalise(rows).T.astype(np.float32))[None]
    model = ClassifierFreeGuidance(den, 3.0, null_class=3, apg_eta=0.0, apg_momentum=-0.5)
    api = diffkit.forecast(model, history.expand(2, -1, -1), 2, steps=2, seed=0, progress=False,
                           cond={"y": torch.tensor([1, 1])})
    expected = scaling.unnormalise(api.double().numpy(), axis=1).transpose(0, 2, 1)
    np.testing.assert_allclose(runs["apg"], expected, rtol=0, atol=1e-6)


def main_edit(ckpt, path, out, *flags):
    from diffkit.cli import main
    return main(["edit", "--checkpoint", str(ckpt), "--series", str(path), "--steps", "2", "--out", str(out),
                 "--no-progress", *flags])


# ------------------------------------------------------------------ with perturbed-attention guidance
def attention_unet():
    """A random conditional U-Net with self-attention at level 1 and in the middle, in float64 (3 classes, null 3)."""
    return tiny_unet(attn=[1])


def test_apg_with_pag_is_the_hand_formula_over_separate_passes_with_momentum_and_interval():
    """PerturbedAttentionGuidance(ClassifierFreeGuidance(..., apg_*), s), one batched call of 3B per step, against
    the passes run one by one: x0 = D_c + w u + s (D_c - D-hat_c), eps = eps_c - w (alpha / sigma) u
    + s (eps_c - eps-hat_c), u the paper's update (Alg. 1: momentum, then the norm cap, then the projection onto
    D_c) written out here. Times 800 (outside the CFG interval [0, 600]: PAG alone, the momentum untouched),
    500, 500 again (replaces that time's entry) and 200."""
    from diffkit.guidance import PerturbedAttentionGuidance
    net = attention_unet()
    calls = []
    den = Denoiser(lambda x, t, **c: calls.append(x.shape[0]) or net(x, t, **c), SCHEDULE)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y, w, s, eta, r, beta = torch.tensor([0, 2, 1]), 4.0, 2.0, 0.25, 3.0, -0.5
    guided = PerturbedAttentionGuidance(ClassifierFreeGuidance(den, w, interval=(0, 600), null_class=3, apg_eta=eta,
                                                               apg_norm_threshold=r, apg_momentum=beta), s,
                                        network=net)
    average = {800.0: None, 500.0: 0.0}  # D-bar before each guided time: 0 at the first, then 500's at 200
    for t in (800.0, 500.0, 500.0, 200.0):
        with torch.no_grad():
            cond, null = den(x, t, y=y), den(x, t, y=torch.full_like(y, 3))
            with net.perturbed_self_attention(("mid",)):
                hat = den(x, t, y=y)
            calls.clear()
            pred = guided(x, t, y=y)
        pag_x0, pag_eps = s * (cond.x0 - hat.x0), s * (cond.eps - hat.eps)
        if t > 600:  # outside the CFG interval: PAG on the conditional model, a batch of 2B
            assert calls == [6]
            assert torch.allclose(pred.x0, cond.x0 + pag_x0, atol=1e-10, rtol=0)
            continue
        assert calls == [9]
        diff = (cond.x0 - null.x0) + beta * average[t]  # the running average D-bar_t
        average[200.0] = diff
        d, c = diff.flatten(1), cond.x0.flatten(1)
        d = d * torch.clamp(r / d.norm(dim=1, keepdim=True), max=1.0)
        parallel = (d * c).sum(1, keepdim=True) / (c * c).sum(1, keepdim=True) * c
        u = ((d - parallel) + eta * parallel).reshape(diff.shape)
        alpha, sigma = SCHEDULE.alpha(torch.tensor(t)), SCHEDULE.sigma(torch.tensor(t))
        assert torch.allclose(pred.x0, cond.x0 + w * u + pag_x0, atol=1e-10, rtol=0), t
        assert torch.allclose(pred.eps, cond.eps - w * (alpha / sigma) * u + pag_eps, atol=1e-9, rtol=0), t
        assert torch.allclose(alpha * pred.x0 + sigma * pred.eps, x, atol=1e-10, rtol=0)  # a consistent pair


def test_cli_with_pag_and_apg_builds_pag_over_apg_cfg(checkpoints, capsys):
    """``--pag-scale`` with the ``--apg-*`` flags runs and builds PerturbedAttentionGuidance directly over the APG
    ClassifierFreeGuidance (the three passes in one call; its formula: test_apg_with_pag_is_the_hand_formula_...)."""
    from diffkit.commands.sample import GuidanceRequest, guided_denoiser
    from diffkit.guidance import PerturbedAttentionGuidance
    from diffkit.loading import load_denoiser
    d = checkpoints["dir"]
    code, out = run_cli(capsys, "sample", "--checkpoint", checkpoints["cond"], "--steps", 2, "--num", 3,
                        "--guidance-scale", 4, "--out", d / "pag_apg.png", "--no-progress", "--device", "cpu",
                        "--pag-scale", 2, "--apg-eta", 0, "--apg-norm-threshold", 2, "--apg-momentum", -0.5)
    assert code == 0 and "perturbed-attention guidance s=2" in out.out, out.err
    request = GuidanceRequest(guidance_scale=4.0, pag_scale=2.0, apg_eta=0.0, apg_norm_threshold=2.0,
                              apg_momentum=-0.5)
    guided = guided_denoiser(load_denoiser(checkpoints["cond"]), request)[0]
    assert isinstance(guided, PerturbedAttentionGuidance) and isinstance(guided.inner, ClassifierFreeGuidance)
    assert (guided.inner.w, guided.inner.apg_eta, guided.inner.apg_norm_threshold, guided.inner.apg_momentum) == (
        4.0, 0.0, 2.0, -0.5)


def test_ddim_inversion_restarts_the_momentum():
    """diffkit.interpolate's DDIM inversion calls the denoiser itself (not through diffkit.sample): each inversion
    starts its own running average, so inverting the same images twice gives the same latents."""
    from diffkit.samplers.ddim import ddim_invert
    guided = ClassifierFreeGuidance(Denoiser(tiny_unet(), SCHEDULE), 3.0, apg_eta=0.0, apg_momentum=-0.5)
    x0 = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    grid = torch.tensor([800.0, 400.0, 0.0, -1.0], dtype=torch.float64)
    with torch.no_grad():
        first = ddim_invert(guided, x0, grid, cond={"y": torch.tensor([0, 2])})
        assert torch.equal(ddim_invert(guided, x0, grid, cond={"y": torch.tensor([0, 2])}), first)


def test_bad_apg_values_for_a_stable_diffusion_folder_are_refused_before_any_weight_is_read(tmp_path, capsys):
    """Stable Diffusion folders take the APG flags (tests/test_interop_apg.py); a bad value is one line before the
    folder is even opened (here a folder with no weights)."""
    import json
    sd = tmp_path / "sd"
    sd.mkdir()
    (sd / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DConditionModel"]}))
    for flag, value in (("--apg-eta", 2), ("--apg-momentum", 1)):
        code, out = run_cli(capsys, "sample", "--checkpoint", sd, "--guidance-scale", 5, flag, value, "--prompt", "a",
                            "--out", tmp_path / "new" / "s.png")
        err = out.err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith(f"diffkit sample: error: {flag}="), out.err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_the_apg_pair_is_the_guided_x0_and_its_eps_for_every_prediction_type_and_at_the_schedules_ends(
        prediction_type):
    """x0 = D_c + w u (u: the eta = 0 update, written out here) and eps = (x_t - alpha x0) / sigma, at t = 0
    (alpha / sigma = 100) and mid-schedule; on a zero-terminal-SNR schedule at t = T - 1 (alpha = 0, x_t = eps:
    the guidance acts on x0 alone) for the x0 and v networks (an eps network cannot predict x0 there)."""
    ends = [(SCHEDULE, 0.0), (SCHEDULE, 500.0)]
    if prediction_type != "epsilon":
        ends.append((NoiseSchedule.linear(1000).rescale_zero_terminal_snr(), 999.0))
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y, w = torch.tensor([0, 2]), 3.0
    for schedule, t in ends:
        den = Denoiser(tiny_unet(), schedule, prediction_type=prediction_type)
        with torch.no_grad():
            cond, null = den(x, t, y=y), den(x, t, y=torch.full_like(y, 3))
            pred = ClassifierFreeGuidance(den, w, apg_eta=0.0)(x, t, y=y)
        d, c = (cond.x0 - null.x0).flatten(1), cond.x0.flatten(1)
        u = (d - (d * c).sum(1, keepdim=True) / (c * c).sum(1, keepdim=True) * c).reshape(x.shape)
        alpha, sigma = schedule.alpha(torch.tensor(t)), schedule.sigma(torch.tensor(t))
        assert torch.allclose(pred.x0, cond.x0 + w * u, atol=1e-10, rtol=0), (schedule, t)
        assert torch.allclose(pred.eps, (x - alpha * pred.x0) / sigma, atol=1e-8, rtol=0), (schedule, t)
        assert torch.isfinite(pred.eps).all() and torch.isfinite(pred.x0).all()


def test_classifier_guided_ddpm_restarts_the_momentum():
    """Algorithm 1's own ddpm loop (not diffkit.sample) starts each run's average afresh: two runs agree."""
    from diffkit.guidance import classifier_guided_ddpm
    guided = ClassifierFreeGuidance(Denoiser(tiny_unet(), SCHEDULE), 3.0, apg_eta=0.0, apg_momentum=-0.5)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    grid = torch.tensor([900.0, 500.0, 100.0, -1.0], dtype=torch.float64)
    runs = [classifier_guided_ddpm(guided, None, noise, grid, scale=0.0, y=None, cond={"y": torch.tensor([1, 2])},
                                   generator=torch.Generator().manual_seed(0)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


def test_diffkit_sample_restarts_the_momentum_under_pag():
    """reset_states walks the chain: PerturbedAttentionGuidance over the APG guidance restarts its average each
    run (two runs agree; a batch of another size is a new run, not refused)."""
    from diffkit.guidance import PerturbedAttentionGuidance
    guided = PerturbedAttentionGuidance(ClassifierFreeGuidance(Denoiser(attention_unet(), SCHEDULE), 3.0,
                                                               apg_eta=0.0, apg_momentum=-0.5), 2.0)
    run = lambda n: diffkit.sample(guided, (n, 1, 8, 8), "heun", steps=2, seed=0,  # noqa: E731
                                   cond={"y": torch.arange(n) % 3}, progress=False, dtype=torch.float64)
    first = run(2)
    assert torch.equal(run(2), first)
    assert torch.allclose(run(1), first[:1], atol=0, rtol=1e-12)
