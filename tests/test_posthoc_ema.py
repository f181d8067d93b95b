"""Post-hoc EMA (Karras et al. 2024, EDM2, Sec. 3 and App. C) against closed forms: the width
sigma_rel <-> gamma (eq. 3, Alg. 2, the paper's numbers), the power-function EMA (eq. 2) against its
weighted average, the least-squares synthesis (App. C.3), exact resume and the command."""
import math

import numpy as np
import pytest
import torch

from diffkit import DiffkitError
from diffkit import checkpoint as ckpt
from diffkit.cli import main
from diffkit.loading import load_denoiser
from diffkit.posthoc_ema import (SIGMA_REL_MAX, PowerEMA, gamma_from_sigma_rel, sigma_rel_from_gamma,
                                 solve_coefficients, synthesize)
from diffkit.training import Trainer

from test_training import TINY, make_cfg, tiny_dataset


def eq3(gamma):
    """EDM2 eq. 3, written out here: sigma_rel = (gamma+1)^1/2 (gamma+2)^-1 (gamma+3)^-1/2."""
    return (gamma + 1) ** 0.5 / (gamma + 2) / (gamma + 3) ** 0.5


# ---------------------------------------------------------------- (a) sigma_rel <-> gamma
def test_gamma_of_the_papers_widths():
    """EDM2 Sec. 3.1: sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94."""
    assert gamma_from_sigma_rel(0.05) == pytest.approx(16.97, abs=0.005)
    assert gamma_from_sigma_rel(0.10) == pytest.approx(6.94, abs=0.005)


@pytest.mark.parametrize("sigma_rel", [0.001, 0.01, 0.05, 0.0833, 0.15, 0.25, 0.2886])
def test_gamma_from_sigma_rel_inverts_eq3(sigma_rel):
    gamma = gamma_from_sigma_rel(sigma_rel)
    assert gamma > 0 and eq3(gamma) == pytest.approx(sigma_rel, rel=1e-10)
    assert sigma_rel_from_gamma(gamma) == pytest.approx(sigma_rel, rel=1e-10)


def test_the_widest_profile_is_gamma_zero_and_wider_widths_are_refused():
    assert SIGMA_REL_MAX == pytest.approx(eq3(0.0)) == pytest.approx(1 / math.sqrt(12))
    for bad in (0.0, -0.1, SIGMA_REL_MAX, 0.3, float("nan")):
        with pytest.raises(DiffkitError, match="out of range; allowed: 0 < sigma_rel < 0.2887"):
            gamma_from_sigma_rel(bad)


# ---------------------------------------------------------------- (b) the power EMA's closed form
class Scalar(torch.nn.Module):
    def __init__(self, n=1):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))


def track(trajectory, sigma_rels, snapshot_every=None):
    """Run PowerEMA over ``trajectory`` (T, n): theta_t = trajectory[t-1]; the EMAs (k, n) at the end and
    the snapshots [(t, ema (k, n))] every ``snapshot_every`` updates and at the last."""
    model = Scalar(trajectory.shape[1])
    ema = PowerEMA(model, sigma_rels)
    snaps = []
    for t, theta in enumerate(trajectory, start=1):
        with torch.no_grad():
            model.w.copy_(theta)
        ema.update(model)
        if snapshot_every and (t % snapshot_every == 0 or t == len(trajectory)):
            snaps.append((t, torch.stack([p[0].clone() for p in ema.profiles])))
    return torch.stack([p[0] for p in ema.profiles]), snaps


def test_power_ema_is_its_weighted_average():
    """Eq. 2 telescopes to ema_t = sum_i w_i theta_i with w_i = (i^(g+1) - (i-1)^(g+1)) / t^(g+1), the
    integral of the profile (g+1) tau^g / t^(g+1) over [i-1, i]: p(tau) ∝ tau^gamma."""
    trajectory = torch.randn(300, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ema, _ = track(trajectory, [0.05, 0.10])
    i = torch.arange(1, 301, dtype=torch.float64)
    for k, sigma_rel in enumerate([0.05, 0.10]):
        g = gamma_from_sigma_rel(sigma_rel)
        w = (i ** (g + 1) - (i - 1) ** (g + 1)) / 300 ** (g + 1)
        assert torch.allclose(ema[k], w @ trajectory, rtol=0, atol=1e-12)


def test_the_first_update_copies_the_weights_and_the_profiles_width_is_sigma_rel():
    first, _ = track(torch.tensor([[2.5]], dtype=torch.float64), [0.05, 0.10])
    assert torch.equal(first, torch.full((2, 1), 2.5, dtype=torch.float64))  # beta_1 = 0: theta_0 forgotten
    t = 4000  # the weights' standard deviation in time, over t: eq. 3's sigma_rel (up to the steps' O(1/t))
    ema, _ = track(torch.arange(1, t + 1, dtype=torch.float64)[:, None] - 0.5, [0.05, 0.10])
    square, _ = track((torch.arange(1, t + 1, dtype=torch.float64)[:, None] - 0.5) ** 2, [0.05, 0.10])
    for k, sigma_rel in enumerate([0.05, 0.10]):
        mean = float(ema[k, 0])
        g = gamma_from_sigma_rel(sigma_rel)
        assert mean / t == pytest.approx((g + 1) / (g + 2), abs=1e-4)  # the mean of tau^g on [0, t]
        assert math.sqrt(float(square[k, 0]) - mean ** 2) / t == pytest.approx(sigma_rel, abs=1e-4)


# ---------------------------------------------------------------- (c) synthesis
def smooth_trajectory(t=2000, n=4):
    """theta(t) of a slow polynomial drift plus a fast oscillation: what an EMA's width changes."""
    s = torch.arange(1, t + 1, dtype=torch.float64)[:, None] / t
    c = torch.arange(1, n + 1, dtype=torch.float64)
    return 1 - 2 * s * c + 3 * (s * c) ** 2 + 0.3 * torch.sin(40 * s * c)


def synthesized(snaps, sigma_rels, sigma_rel):
    ts = [t for t, _ in snaps for _ in sigma_rels]
    gammas = [gamma_from_sigma_rel(s) for _ in snaps for s in sigma_rels]
    x, error = solve_coefficients(ts, gammas, snaps[-1][0], gamma_from_sigma_rel(sigma_rel))
    stacked = torch.cat([e for _, e in snaps])  # (snapshots x k, n), in the order of ts
    return torch.as_tensor(x) @ stacked, error


def test_a_tracked_width_synthesises_to_itself():
    trajectory = smooth_trajectory()
    ema, snaps = track(trajectory, [0.05, 0.10], snapshot_every=100)
    for k, sigma_rel in enumerate([0.05, 0.10]):
        out, error = synthesized(snaps, [0.05, 0.10], sigma_rel)
        assert error < 1e-6
        assert torch.allclose(out, ema[k], rtol=0, atol=1e-6)


def test_a_width_in_between_is_close_to_its_directly_tracked_ema():
    """sigma_rel 0.075 from snapshots of 0.05 and 0.10 every T/20: the synthesised profile differs from the
    true one by ``error`` in L2 (closed form), so by Cauchy-Schwarz (the discrete EMA is exactly <p, theta~>
    for theta~ piecewise constant) |synthesised - tracked| <= error ||p|| ||theta~ - c|| for any c (the
    coefficients sum to 1). Measured: profile error 0.23%, and 0.022% of the gap between the two tracked
    EMAs; asserted: 0.1%."""
    trajectory, sigma_rels = smooth_trajectory(), [0.05, 0.10]
    direct, _ = track(trajectory, [0.075])
    tracked, snaps = track(trajectory, sigma_rels, snapshot_every=100)
    out, error = synthesized(snaps, sigma_rels, 0.075)
    g, t = gamma_from_sigma_rel(0.075), len(trajectory)
    norm_p = (g + 1) / math.sqrt((2 * g + 1) * t)  # ||(g+1) tau^g / t^(g+1)|| on [0, t]
    centred = trajectory - trajectory.mean(0)
    bound = error * norm_p * centred.norm(dim=0)
    gap = (tracked[0] - tracked[1]).abs()
    assert 0 < error < 0.01
    assert ((out - direct[0]).abs() <= bound + 1e-12).all()
    assert ((out - direct[0]).abs() <= 0.001 * gap).all()


# ---------------------------------------------------------------- (d) training: off, resume
def posthoc_cfg(root, **over):
    return make_cfg(root, posthoc_ema=[0.05, 0.10], posthoc_ema_every=2, **over)


def test_off_by_default_and_it_does_not_change_training(tmp_path):
    plain = Trainer(make_cfg(tmp_path / "a", max_steps=3), tiny_dataset(), progress=False)
    plain.run()
    on = Trainer(posthoc_cfg(tmp_path / "b", max_steps=3), tiny_dataset(), progress=False)
    on.run()
    a, meta_a = ckpt.load_checkpoint(tmp_path / "a" / "ckpt" / "latest.safetensors")
    b, meta_b = ckpt.load_checkpoint(tmp_path / "b" / "ckpt" / "latest.safetensors")
    assert "posthoc_ema" not in meta_a and not any(k.startswith("posthoc.") for k in a)
    assert not (tmp_path / "a" / "ckpt" / "posthoc").exists()
    assert sorted(set(b) - set(a)) == sorted(k for k in b if k.startswith("posthoc."))
    for key in a:  # the same training: weights, EMA, optimiser, RNG
        assert torch.equal(a[key], b[key]), key
    assert meta_b["posthoc_ema"]["updates"] == 3


def test_resume_continues_the_power_emas_bitwise(tmp_path, assert_same_training_state):
    full = Trainer(posthoc_cfg(tmp_path / "a", max_steps=5), tiny_dataset(), progress=False)
    full.run()
    part = Trainer(posthoc_cfg(tmp_path / "b", max_steps=5), tiny_dataset(), progress=False)
    part.run(stop_at=3)
    latest = tmp_path / "b" / "ckpt" / "latest.safetensors"
    Trainer(posthoc_cfg(tmp_path / "b", max_steps=5, training_load_weight=str(latest)), tiny_dataset(),
            progress=False).run()
    assert_same_training_state(tmp_path / "a" / "ckpt" / "latest.safetensors", latest, 5)
    a, meta_a = ckpt.load_checkpoint(tmp_path / "a" / "ckpt" / "latest.safetensors")
    b, meta_b = ckpt.load_checkpoint(latest)
    assert meta_a["posthoc_ema"]["updates"] == meta_b["posthoc_ema"]["updates"] == 5
    assert meta_a["posthoc_ema"]["run_id"] != meta_b["posthoc_ema"]["run_id"]  # two runs
    for key in (k for k in a if k.startswith("posthoc.")):
        assert torch.equal(a[key], b[key]), key
    names = [p.name for p in sorted((tmp_path / "a" / "ckpt" / "posthoc").iterdir())]
    assert names == [f"snapshot_{s:08d}.safetensors" for s in (2, 4, 5)]
    for name in names:  # the snapshots too (the resumed run's one run_id throughout)
        sa, _ = ckpt.load_checkpoint(tmp_path / "a" / "ckpt" / "posthoc" / name)
        sb, mb = ckpt.load_checkpoint(tmp_path / "b" / "ckpt" / "posthoc" / name)
        assert sorted(sa) == sorted(sb) and all(torch.equal(sa[k], sb[k]) for k in sa), name
        assert mb["posthoc_ema"]["run_id"] == meta_b["posthoc_ema"]["run_id"]


def test_resume_refuses_other_widths_and_may_change_the_interval(tmp_path):
    Trainer(posthoc_cfg(tmp_path, max_steps=7), tiny_dataset(), progress=False).run(stop_at=2)
    latest = str(tmp_path / "ckpt" / "latest.safetensors")
    for over in ({"posthoc_ema": [0.05, 0.2]}, {"posthoc_ema": None, "posthoc_ema_every": 1000}):
        cfg = make_cfg(tmp_path, **{"posthoc_ema": [0.05, 0.10], "posthoc_ema_every": 2, "max_steps": 7,
                                    "training_load_weight": latest, **over})
        with pytest.raises(DiffkitError, match="exact resume"):
            Trainer(cfg, tiny_dataset(), progress=False).run()
    lines = []  # the snapshot interval may change (it only picks which t the snapshots have)
    Trainer(make_cfg(tmp_path, posthoc_ema=[0.05, 0.10], posthoc_ema_every=3, max_steps=4,
                     training_load_weight=latest), tiny_dataset(), progress=False, log=lines.append).run()
    assert any(line.endswith("changed: posthoc_ema_every 2 -> 3") for line in lines), lines
    assert sorted(p.name for p in (tmp_path / "ckpt" / "posthoc").iterdir()) == [
        "snapshot_00000002.safetensors", "snapshot_00000003.safetensors", "snapshot_00000004.safetensors"]
    plain = Trainer(make_cfg(tmp_path / "p", max_steps=7), tiny_dataset(), progress=False)
    plain.run(stop_at=2)
    with pytest.raises(DiffkitError, match="post-hoc EMA off, this run has posthoc_ema"):
        Trainer(posthoc_cfg(tmp_path / "p", max_steps=7, training_load_weight=str(
            tmp_path / "p" / "ckpt" / "latest.safetensors")), tiny_dataset(), progress=False).run()


# ---------------------------------------------------------------- (e) the command
@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("posthoc_run")
    cfg = make_cfg(root, posthoc_ema=[0.05, 0.10], posthoc_ema_every=2, max_steps=7)
    Trainer(cfg, tiny_dataset(), progress=False).run()
    return root / "ckpt"  # the checkpoint folder (a run folder's checkpoints/ for diffkit train --out)


def test_command_writes_a_checkpoint_that_samples(run_folder, tmp_path, capsys):
    out = tmp_path / "e" / "ema.safetensors"
    assert main(["posthoc-ema", "--run", str(run_folder), "--sigma-rel", "0.05", "--out", str(out)]) == 0
    assert "sigma_rel=0.05" in capsys.readouterr().out
    tensors, meta = ckpt.load_checkpoint(out)
    snap, _ = ckpt.load_checkpoint(run_folder / "posthoc" / "snapshot_00000007.safetensors")
    for name, value in ckpt.split_prefix(snap, "posthoc.0").items():  # a tracked width: that EMA itself
        assert torch.allclose(tensors[f"model.{name}"], value, rtol=0, atol=1e-5), name
    info = meta["synthesised_ema"]
    assert info["sigma_rel"] == 0.05 and info["step"] == 7 and [s["step"] for s in info["snapshots"]] == [2, 4, 6, 7]
    assert ckpt.file_kind(out) == "diffusion weights"
    from diffkit import sample
    images = sample(load_denoiser(out), (2, 1, 8, 8), sampler="ddim", steps=2, seed=0)
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()
    tensors, meta = synthesize(run_folder, 0.075, step=4)  # an earlier step: its snapshots only
    assert [s["step"] for s in meta["synthesised_ema"]["snapshots"]] == [2, 4]


# ---------------------------------------------------------------- (f) bad input
def test_command_refuses_bad_input_in_one_line(run_folder, tmp_path, capsys):
    out = tmp_path / "new" / "e.safetensors"

    def refused(*argv):
        """The one-line error of ``diffkit posthoc-ema ARGV --out OUT`` (DiffkitError: status 2, or argparse's
        SystemExit 2), with no output folder made."""
        try:
            code = main(["posthoc-ema", *argv, "--out", str(out)])
        except SystemExit as exc:
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and not out.parent.exists(), err
        return err

    assert "holds no post-hoc EMA snapshots" in refused("--run", str(tmp_path), "--sigma-rel", "0.1")
    assert "out of range; allowed: 0 < sigma_rel < 0.2887" in refused("--run", str(run_folder), "--sigma-rel", "0.3")
    err = refused("--run", str(run_folder), "--sigma-rel", "0.01")
    assert "out of the range these 4 snapshots reconstruct" in err and "within 10%: sigma_rel 0.0" in err
    assert "--step 3 has no snapshot" in refused("--run", str(run_folder), "--sigma-rel", "0.08", "--step", "3")
    other = tmp_path / "other"  # another run's snapshot among this one's
    Trainer(make_cfg(other, posthoc_ema=[0.05, 0.10], posthoc_ema_every=2, max_steps=2), tiny_dataset(),
            progress=False).run()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in (run_folder / "posthoc").iterdir():
        (mixed / p.name).write_bytes(p.read_bytes())
    (mixed / "snapshot_00000002.safetensors").write_bytes(
        (other / "ckpt" / "posthoc" / "snapshot_00000002.safetensors").read_bytes())
    assert "is a snapshot of another run" in refused("--run", str(mixed), "--sigma-rel", "0.08")
    with pytest.raises(DiffkitError, match="is a diffkit posthoc-ema snapshot file, not a diffusion model"):
        load_denoiser(run_folder / "posthoc" / "snapshot_00000007.safetensors")


def test_a_distillation_does_not_inherit_the_teachers_post_hoc_ema():
    """diffkit distill starts from the teacher's config; its snapshots are asked for with --set posthoc_ema."""
    from diffkit.commands.distill import DISTILL_DEFAULTS
    from diffkit.config import TrainConfig
    teacher = TrainConfig.from_dict({"posthoc_ema": [0.05, 0.10], "posthoc_ema_every": 50})
    cfg = TrainConfig.from_dict({**teacher.to_dict(), **DISTILL_DEFAULTS, "teacher": "teacher.safetensors"})
    assert (cfg.posthoc_ema, cfg.posthoc_ema_every) == (None, 1000)


def test_config_refuses_bad_widths(tmp_path):
    for over, match in (({"posthoc_ema": [0.3]}, "out of range"), ({"posthoc_ema": [0.1, 0.1]}, "twice"),
                        ({"posthoc_ema": []}, "tracks nothing"), ({"posthoc_ema_every": 5}, "needs posthoc_ema"),
                        ({"posthoc_ema": [0.1], "posthoc_ema_every": 0}, "posthoc_ema_every")):
        with pytest.raises(DiffkitError, match=match):
            make_cfg(tmp_path, **over)


def test_profile_inner_products_match_quadrature():
    """App. C.3's closed form <p_a, p_b> against the integral of (g_a+1) tau^g_a / t_a^(g_a+1) times the same
    of b, by the trapezoid rule on a fine grid."""
    from diffkit.posthoc_ema import profile_inner_product
    for t_a, s_a, t_b, s_b in ((100, 0.05, 300, 0.10), (300, 0.05, 100, 0.10), (200, 0.15, 200, 0.03)):
        g_a, g_b = gamma_from_sigma_rel(s_a), gamma_from_sigma_rel(s_b)
        tau = np.linspace(0, min(t_a, t_b), 200_001)
        product = (g_a + 1) * tau ** g_a / t_a ** (g_a + 1) * (g_b + 1) * tau ** g_b / t_b ** (g_b + 1)
        assert profile_inner_product(t_a, g_a, t_b, g_b) == pytest.approx(np.trapezoid(product, tau), rel=1e-6)


def test_coefficients_sum_to_one():
    """Alg. 3 normalised (as the reference code): a weight that never changes keeps its value exactly,
    also where the least-squares fit is poor (a width far below the tracked ones)."""
    ts = [t for t in (5, 10) for _ in range(2)]
    gammas = [gamma_from_sigma_rel(s) for _ in range(2) for s in (0.05, 0.10)]
    x, error = solve_coefficients(ts, gammas, 10, gamma_from_sigma_rel(0.01))
    assert error > 0.3 and abs(x.sum() - 1) < 1e-12


# ---------------------------------------------------------------- (g) the trainer's averages, end to end
class Recording(Trainer):
    """A Trainer that records the tracked weights theta_t after each optimiser step (None: a skipped step)."""

    def __init__(self, *args, nan_steps=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.thetas, self.nan_steps, self.calls = [], set(nan_steps), 0

    def _micro_batch_loss(self, images, labels):
        self.calls += 1
        loss = super()._micro_batch_loss(images, labels)
        return loss * float("nan") if self.calls in self.nan_steps else loss

    def train_step(self, group):
        loss = super().train_step(group)
        if loss is not None:
            self.thetas.append({n: p.detach().double().clone() for n, p in self.model.named_parameters()})
        return loss


def closed_form_ema(thetas, gamma):
    """EDM2 eq. 2 telescoped: sum_i w_i theta_i, w_i = (i^(g+1) - (i-1)^(g+1)) / t^(g+1), t = len(thetas)."""
    t = len(thetas)
    return {n: sum(((i ** (gamma + 1) - (i - 1) ** (gamma + 1)) / t ** (gamma + 1)) * th[n]
                   for i, th in enumerate(thetas, start=1)) for n in thetas[0]}


def test_the_trainers_snapshots_hold_each_widths_average_of_the_optimised_weights(tmp_path):
    """Snapshot k of step s is eq. 2's average, over the weights after each optimiser step 1..t (t = s here),
    of the width posthoc_ema[k]: the right profile under the right key, updated after the step, t from 1."""
    sigma_rels = [0.10, 0.05]  # not sorted: key k is the k-th width given
    tr = Recording(make_cfg(tmp_path, posthoc_ema=sigma_rels, posthoc_ema_every=1, max_steps=4), tiny_dataset(),
                   progress=False)
    tr.run()
    for step in range(1, 5):
        tensors, meta = ckpt.load_checkpoint(tmp_path / "ckpt" / "posthoc" / f"snapshot_{step:08d}.safetensors")
        assert meta["step"] == meta["posthoc_ema"]["updates"] == step
        for k, sigma_rel in enumerate(sigma_rels):
            expected = closed_form_ema(tr.thetas[:step], gamma_from_sigma_rel(sigma_rel))
            for name, value in expected.items():
                assert torch.allclose(tensors[f"posthoc.{k}.{name}"].double(), value, rtol=0, atol=1e-6), (step, k)


def test_synthesis_uses_each_snapshots_update_count_and_drops_one_before_any_update(tmp_path):
    """A non-finite first step makes no update: the step-1 snapshot holds no average (t = 0; EDM2's
    reconstruction drops such inputs), the later ones have t = step - 1, and the synthesis combines them with
    App. C.3's coefficients for those t (the inner products are over the profiles on [0, t])."""
    sigma_rels = [0.05, 0.10]
    tr = Recording(make_cfg(tmp_path, posthoc_ema=sigma_rels, posthoc_ema_every=1, max_steps=5), tiny_dataset(),
                   progress=False, nan_steps={1})
    tr.run()
    assert len(tr.thetas) == 4
    tensors, meta = synthesize(tmp_path / "ckpt", 0.075)
    info = meta["synthesised_ema"]
    assert [s["step"] for s in info["snapshots"]] == [2, 3, 4, 5] and info["t"] == 4
    ts = [t for t in (1, 2, 3, 4) for _ in sigma_rels]
    gammas = [gamma_from_sigma_rel(s) for _ in range(4) for s in sigma_rels]
    x, error = solve_coefficients(ts, gammas, 4, gamma_from_sigma_rel(0.075))
    assert info["coefficients"] == pytest.approx(list(x), abs=1e-12) and info["profile_error"] == pytest.approx(error)
    emas = [closed_form_ema(tr.thetas[:t], gamma_from_sigma_rel(s)) for t in (1, 2, 3, 4) for s in sigma_rels]
    for name in tr.thetas[0]:
        expected = sum(float(c) * e[name] for c, e in zip(x, emas))
        assert torch.allclose(tensors[f"model.{name}"].double(), expected, rtol=0, atol=1e-6), name
    with pytest.raises(DiffkitError, match="--step 1's snapshot was written before the first update"):
        synthesize(tmp_path / "ckpt", 0.075, step=1)


def test_a_lora_run_tracks_its_adapters_and_the_synthesised_checkpoint_merges_them(tmp_path):
    """With LoRA only the adapters train: the power EMAs average them alone (the frozen base is stored once in
    each snapshot), and the synthesised checkpoint loads as W0 + (alpha/r) B A of the averaged adapters."""
    from diffkit.commands.train import fine_tune_fields
    from diffkit.config import TrainConfig
    from diffkit.loading import load_model
    source = Trainer(make_cfg(tmp_path / "src", max_steps=1), tiny_dataset(), progress=False).run().checkpoint
    given = {**TINY, "save_weight_dir": str(tmp_path / "lora" / "ckpt"), "lora_rank": 2, "max_steps": 3,
             "posthoc_ema": [0.05, 0.10], "posthoc_ema_every": 1}
    tr = Trainer(TrainConfig.from_dict(fine_tune_fields(source, given)), tiny_dataset(), progress=False)
    tr.run()
    snap, _ = ckpt.load_checkpoint(tmp_path / "lora" / "ckpt" / "posthoc" / "snapshot_00000003.safetensors")
    averaged = ckpt.split_prefix(snap, "posthoc.1")
    assert averaged and all(".lora_" in n for n in averaged)
    assert not any(f"model.{n}" in snap for n in averaged)  # the averages replace the raw adapters
    out = tmp_path / "e.safetensors"
    assert main(["posthoc-ema", "--run", str(tmp_path / "lora" / "ckpt"), "--sigma-rel", "0.1", "--out", str(out)]) == 0
    with torch.no_grad():
        for n, p in tr.model.named_parameters():
            if n in averaged:
                p.copy_(averaged[n])
        x, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([3, 7])
        expected = tr.model.eval()(x, t)
        torch.testing.assert_close(load_model(out)[0](x, t), expected, rtol=1e-5, atol=1e-5)


def test_the_benchmark_trains_its_missing_evaluator_once(tmp_path, monkeypatch):
    """BENCHMARKS.md's one command reproduces the table from a fresh clone: benchmarks/posthoc_ema_digits.py
    trains the digit evaluator (diffkit train-evaluator, seed 0) where --evaluator names no file, else reuses it."""
    import importlib.util
    from pathlib import Path
    import diffkit.cli
    spec = importlib.util.spec_from_file_location(
        "posthoc_ema_digits", Path(__file__).resolve().parent.parent / "benchmarks" / "posthoc_ema_digits.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    calls = []

    def fake_main(argv):
        calls.append(argv)
        Path(argv[argv.index("--out") + 1]).write_bytes(b"ev")
        return 0
    monkeypatch.setattr(diffkit.cli, "main", fake_main)
    path = tmp_path / "ev.safetensors"
    assert bench.evaluator(path) == path and bench.evaluator(path) == path
    assert calls == [["train-evaluator", "--dataset", "digits", "--epochs", "10", "--device", "cpu",
                      "--out", str(path)]]


def test_every_rank_refuses_a_resume_that_changes_the_widths(tmp_path, monkeypatch):
    """Rank 0 alone tracks the power EMAs, but a resume that starts, stops or changes them is refused on every
    rank (else the others would train on, waiting for rank 0 in the first collective)."""
    from diffkit import distributed
    Trainer(posthoc_cfg(tmp_path / "p", max_steps=4), tiny_dataset(), progress=False).run(stop_at=2)
    Trainer(make_cfg(tmp_path / "o", max_steps=4), tiny_dataset(), progress=False).run(stop_at=2)
    setup = distributed.setup
    monkeypatch.setattr(distributed, "setup", lambda device: (distributed.DistInfo(rank=1), setup(device)[1]))
    for run, over, match in (("p", {"posthoc_ema": [0.05, 0.2]}, "needs the same posthoc_ema"),
                             ("p", {"posthoc_ema": None, "posthoc_ema_every": 1000}, "this run has it off"),
                             ("o", {}, "post-hoc EMA off, this run has posthoc_ema")):
        latest = str(tmp_path / run / "ckpt" / "latest.safetensors")
        cfg = make_cfg(tmp_path / run, **{"posthoc_ema": [0.05, 0.10], "posthoc_ema_every": 2, "max_steps": 4,
                                          "training_load_weight": latest, **over})
        tr = Trainer(cfg, tiny_dataset(), progress=False)
        assert tr.posthoc is None
        with pytest.raises(DiffkitError, match=match):
            tr.run()


def test_a_snapshot_with_malformed_metadata_is_a_one_line_error(run_folder, tmp_path):
    folder = tmp_path / "posthoc"
    folder.mkdir()
    tensors, meta = ckpt.load_checkpoint(run_folder / "posthoc" / "snapshot_00000002.safetensors")
    for broken in ({"updates": None}, {"gammas": [1.0]}, {"sigma_rels": "0.05"}):
        ckpt.save_checkpoint(folder / "snapshot_00000002.safetensors", tensors,
                             {**meta, "posthoc_ema": {**meta["posthoc_ema"], **broken}})
        with pytest.raises(DiffkitError, match="has malformed post-hoc EMA metadata") as err:
            synthesize(folder, 0.05)
        assert "\n" not in str(err.value)


def test_a_resume_from_an_earlier_checkpoint_names_the_later_snapshots(tmp_path):
    """Snapshots past the resumed step come from the abandoned continuation; the log names them (a resume that
    changes dropout, say, would otherwise have diffkit posthoc-ema combine two trajectories unnoticed)."""
    Trainer(posthoc_cfg(tmp_path, max_steps=6), tiny_dataset(), progress=False).run(stop_at=2)
    Trainer(posthoc_cfg(tmp_path, max_steps=6, training_load_weight=str(tmp_path / "ckpt" / "latest.safetensors")),
            tiny_dataset(), progress=False).run(stop_at=5)
    lines = []
    second = str(tmp_path / "ckpt" / "ckpt_00000002.safetensors")
    Trainer(posthoc_cfg(tmp_path, max_steps=6, training_load_weight=second),
            tiny_dataset(), progress=False, log=lines.append).run(stop_at=3)
    assert any("post-hoc EMA snapshots past step 2 from before this resume (steps 4)" in line for line in lines), lines
