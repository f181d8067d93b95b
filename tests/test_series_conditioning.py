"""The 1-D U-Net's learned variance (Improved DDPM eq. 15, hybrid loss eq. 16) and class conditioning with
classifier-free guidance (Ho & Salimans 2022), through the image U-Net's route: config -> network description
-> Denoiser -> losses / bound / guidance, and labelled series files (``label_column``)."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import diffkit
import diffkit.diffusion
from diffkit.cli import main
from diffkit.config import TrainConfig
from diffkit.denoiser import Denoiser
from diffkit.errors import DiffkitError
from diffkit.guidance import ClassifierFreeGuidance
from diffkit.likelihood import variational_bound
from diffkit.loading import load_denoiser
from diffkit.losses import training_losses
from diffkit.models.network import build_network
from diffkit.models.temporal import TemporalUNet, TemporalUNetConfig
from diffkit.samplers.registry import REGISTRY
from diffkit.schedule import NoiseSchedule
from diffkit.series_files import load_file_series, read_label_column, window_labels
from diffkit.timeseries import SeriesDataset
from diffkit.training import Trainer

TINY = dict(in_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1)


def constant_output_net(eps: float, v: float, **config) -> TemporalUNet:
    """A learned-variance 1-D U-Net whose output is eps in every eps channel and v in every v channel (the
    zero-initialised output conv, with those biases)."""
    net = TemporalUNet(TemporalUNetConfig(**TINY, learned_variance=True, **config))
    with torch.no_grad():
        conv = net.out[-1]
        conv.bias[:3] = eps
        conv.bias[3:] = v
    return net.eval()


def randomised(net: TemporalUNet, seed: int = 0) -> TemporalUNet:
    """``net`` with every parameter drawn at random (the zero-initialised convs too), so that each input,
    the class label among them, changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net.eval()


# ------------------------------------------------------------------ learned variance
def test_learned_variance_doubles_the_output_channels_and_the_description_builds_it():
    net = TemporalUNet(TemporalUNetConfig(**TINY, learned_variance=True))
    assert net.config.output_channels == 6 and net(torch.randn(2, 3, 8), torch.tensor([1, 7])).shape == (2, 6, 8)
    assert TemporalUNet(TemporalUNetConfig(**TINY))(torch.randn(2, 3, 8), 3).shape == (2, 3, 8)
    cfg = TrainConfig(dataset="sines", in_channels=3, channel=8, channel_mult=[1, 2], num_res_blocks=1,
                      seq_length=8, learned_variance=True, loss="hybrid")
    description = cfg.to_unet_kwargs()
    assert description["learned_variance"] is True and "num_classes" not in description
    assert build_network(description).config.output_channels == 6
    # an unconditional, fixed-variance run's description is what it was before these options existed
    assert "learned_variance" not in TrainConfig(dataset="sines").to_unet_kwargs()


@pytest.mark.parametrize("v", [-1.0, -0.3, 0.4, 1.0])
def test_v_channels_give_the_variance_of_eq_15_between_beta_tilde_and_beta(v):
    """Sigma_theta = exp(f log beta_t + (1 - f) log beta-tilde_t), f = (v + 1) / 2 (Improved DDPM eq. 15),
    from betas written out here: the reverse step's variance of the series model's v output."""
    schedule = NoiseSchedule.from_name("linear", 20)
    denoiser = Denoiser(constant_output_net(0.0, v), schedule, learned_variance=True)
    x, t = torch.randn(2, 3, 8, dtype=torch.float64), 9
    pred = denoiser(x, torch.full((2,), float(t)))
    assert pred.var_values.shape == (2, 3, 8) and torch.allclose(pred.var_values, torch.full_like(x, v))
    _, log_var = diffkit.diffusion.p_mean_variance(schedule, x, pred.x0, torch.full((2,), float(t)),
                                                   variance_type="learned_range", var_values=pred.var_values)
    betas = schedule.betas.double()
    abar = torch.cumprod(1 - betas, 0)
    beta, beta_tilde = betas[t], (1 - abar[t - 1]) / (1 - abar[t]) * betas[t]
    f = (v + 1) / 2
    expected = math.exp(f * math.log(beta) + (1 - f) * math.log(beta_tilde))
    torch.testing.assert_close(log_var.exp(), torch.full_like(x, expected), rtol=1e-6, atol=0)
    assert beta_tilde - 1e-12 <= log_var.exp().min() and log_var.exp().max() <= beta + 1e-12


def test_hybrid_loss_of_the_series_model_is_l_simple_plus_lambda_t_times_the_kl_written_out():
    """Eq. 16 at t = 6 for a net answering eps = 0.2 and v = 0.5: L_simple = |noise - 0.2|^2 and L_vlb = T x
    the KL (in bits per value) of q(x_{t-1} | x_t, x_0) to N(mu(x0_pred), Sigma of eq. 15), all written out."""
    T, t, lam = 10, 6, 0.001
    schedule = NoiseSchedule.from_name("linear", T)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.rand(2, 3, 8, generator=g) * 2 - 1, torch.randn(2, 3, 8, generator=g)
    out = training_losses(constant_output_net(0.2, 0.5), schedule, x0, torch.full((2,), t), noise,
                          loss_type="hybrid", learned_variance=True, hybrid_lambda=lam)
    betas = schedule.betas.double()
    abar = torch.cumprod(1 - betas, 0)
    x0d, noised = x0.double(), noise.double()
    x_t = abar[t].sqrt() * x0d + (1 - abar[t]).sqrt() * noised
    x0_pred = (x_t - (1 - abar[t]).sqrt() * 0.2) / abar[t].sqrt()

    def posterior_mean(x_start):  # DDPM eq. 7
        return (abar[t - 1].sqrt() * betas[t] / (1 - abar[t]) * x_start
                + (1 - betas[t]).sqrt() * (1 - abar[t - 1]) / (1 - abar[t]) * x_t)
    log_tilde = torch.log((1 - abar[t - 1]) / (1 - abar[t]) * betas[t])
    log_model = 0.75 * torch.log(betas[t]) + 0.25 * log_tilde  # f = (0.5 + 1) / 2
    kl = 0.5 * (-1 + log_model - log_tilde + torch.exp(log_tilde - log_model)
                + (posterior_mean(x0d) - posterior_mean(x0_pred)) ** 2 * torch.exp(-log_model))
    vlb = T * kl.flatten(1).mean(1) / math.log(2)
    mse = ((noised - 0.2) ** 2).flatten(1).mean(1)
    # each term on its own (lambda = 0.001 would hide a wrong L_vlb inside the sum's tolerance)
    torch.testing.assert_close(out.vlb.double(), vlb, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(out.mse.double(), mse, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.loss.double(), mse + lam * vlb, rtol=1e-4, atol=1e-7)
    assert (out.vlb > 0).all()
    # loss = "vlb" is L_vlb alone: no L_simple term
    alone = training_losses(constant_output_net(0.2, 0.5), schedule, x0, torch.full((2,), t), noise,
                            loss_type="vlb", learned_variance=True)
    torch.testing.assert_close(alone.loss.double(), vlb, rtol=1e-4, atol=1e-7)
    assert ((alone.loss.double() - vlb).abs() < 0.1 * mse).all()  # the L_simple term would show


def series_cfg(folder, **extra) -> TrainConfig:
    return TrainConfig.from_dict({"dataset": "sines", "num_series": 16, "seq_length": 8, "in_channels": 3,
                                  "channel": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "batch_size": 8,
                                  "T": 20, "sample_steps": 2, "device": "cpu", "save_weight_dir": str(folder / "c"),
                                  "sampled_dir": str(folder / "s"), **extra})


def test_a_hybrid_training_step_of_the_series_model_is_finite_and_trains_the_v_channels(tmp_path):
    trainer = Trainer(series_cfg(tmp_path, learned_variance=True, loss="hybrid"), progress=False)
    assert trainer.model.config.learned_variance
    batch = next(iter(trainer._epoch_batches(0)))
    loss = trainer.train_step(batch)
    assert loss is not None and math.isfinite(loss)
    conv = trainer.model.out[-1]  # its v rows (3:) moved off their zero start: the hybrid term reached them
    assert conv.weight[3:].abs().sum() > 0 and conv.bias[3:].abs().sum() > 0


def test_the_bound_of_a_series_model_reads_its_v_output_eq_15():
    """v = -1 is beta-tilde (eq. 15 at f = 0): the bound with the learned variance equals the fixed_small one
    of the same eps; v = 1 (beta) gives another bound."""
    schedule = NoiseSchedule.from_name("linear", 12)
    x0 = torch.rand(3, 3, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def bound(v, **kw):
        d = Denoiser(constant_output_net(0.1, v), schedule, learned_variance=True)
        return variational_bound(d, x0, generator=torch.Generator().manual_seed(5), **kw).total
    small = bound(-1.0, variance_type="fixed_small")
    assert torch.isfinite(small).all()
    torch.testing.assert_close(bound(-1.0), small, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(bound(1.0), small, rtol=1e-3)


def guided_series_model(v: float) -> ClassifierFreeGuidance:
    """Classifier-free guidance (w = 2) of a learned-variance, 2-class series model answering eps = 0.1, v."""
    return ClassifierFreeGuidance(Denoiser(constant_output_net(0.1, v, num_classes=2),
                                           NoiseSchedule.from_name("linear", 20), learned_variance=True), 2.0)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_sampler_samples_a_guided_learned_variance_series_model(name):
    info = REGISTRY[name]
    steps = {} if info.adaptive else {"steps": max(2, info.calls_per_step)}
    out = diffkit.sample(guided_series_model(0.3), (2, 3, 8), name, seed=0, cond={"y": torch.tensor([1, 0])},
                         progress=False, **steps)
    assert out.shape == (2, 3, 8) and torch.isfinite(out).all()


def test_ddpm_draws_a_series_model_with_the_variance_of_its_v_output():
    """Ancestral DDPM steps draw from N(mu, Sigma of eq. 15): beta (v = 1) and beta-tilde (v = -1) differ."""
    small, large = (diffkit.sample(guided_series_model(v), (2, 3, 8), "ddpm", steps=4, seed=0,
                                   cond={"y": torch.tensor([1, 0])}, progress=False) for v in (-1.0, 1.0))
    assert not torch.allclose(small, large, atol=1e-3)


# ------------------------------------------------------------------ classes and guidance
def test_the_null_class_is_index_num_classes_and_y_none_means_it():
    net = randomised(TemporalUNet(TemporalUNetConfig(**TINY, num_classes=4)))
    assert net.class_embed.num_embeddings == 5
    x, t = torch.randn(2, 3, 8), torch.tensor([2.0, 9.0])
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), net(x, t, y=torch.tensor([4, 4])), rtol=0, atol=0)
        assert not torch.allclose(net(x, t, y=torch.tensor([0, 0])), net(x, t), atol=1e-4)
        assert not torch.allclose(net(x, t, y=torch.tensor([0, 0])), net(x, t, y=torch.tensor([1, 1])), atol=1e-4)


@pytest.mark.parametrize("w", [0.0, 1.5, 4.0])
def test_classifier_free_guidance_of_the_series_model_is_1_plus_w_eps_c_minus_w_eps_null(w):
    """Ho & Salimans 2022 eq. 6 (diffkit's seed convention), against two plain calls of the network."""
    net = randomised(TemporalUNet(TemporalUNetConfig(**TINY, num_classes=3, learned_variance=True)))
    schedule = NoiseSchedule.from_name("linear", 30)
    guided = ClassifierFreeGuidance(Denoiser(net, schedule, learned_variance=True), w)
    assert guided.null_class == 3
    x, t, y = torch.randn(2, 3, 8), torch.tensor([5.0, 21.0]), torch.tensor([2, 0])
    with torch.no_grad():
        pred = guided(x, t, y=y)
        eps_c, v_c = net(x, t, y=y).chunk(2, dim=1)
        eps_u = net(x, t).chunk(2, dim=1)[0]
    torch.testing.assert_close(pred.eps, (1 + w) * eps_c - w * eps_u, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pred.var_values, v_c, rtol=1e-6, atol=1e-6)  # the conditional pass's variance


def labelled_trainer(tmp_path, p_uncond, n=512):
    labels = torch.arange(n) % 3
    dataset = SeriesDataset(torch.randn(n, 3, 8) * 0.3, labels=labels)
    cfg = series_cfg(tmp_path, conditional=True, label_column="state", p_uncond=p_uncond, batch_size=n,
                     dataset="series", data_dir="unused.csv", num_series=10000)
    trainer = Trainer(cfg, dataset=dataset, progress=False)
    seen = []
    model = trainer.forward

    def recording(x, t, **cond):
        seen.append(cond["y"].clone())
        return model(x, t, **cond)
    trainer.forward = recording
    trainer.train_step(next(iter(trainer._epoch_batches(0))))
    return trainer, torch.cat(seen)


@pytest.mark.parametrize("p_uncond", [0.0, 0.25, 1.0])
def test_label_dropout_replaces_a_p_uncond_fraction_of_the_labels_by_the_null_class(tmp_path, p_uncond):
    trainer, y = labelled_trainer(tmp_path, p_uncond)
    assert trainer.model.config.num_classes == 3 and y.shape == (512,)
    null = (y == 3).float().mean().item()
    sd = math.sqrt(max(p_uncond * (1 - p_uncond), 1e-12) / 512)
    assert abs(null - p_uncond) <= 4 * sd + 1e-9, null
    assert set(y[y != 3].tolist()) <= {0, 1, 2}


# ------------------------------------------------------------------ labelled series files
def write_csv(path, labels, extra=""):
    rows = [f"{i},{math.sin(i):.4f},{math.cos(i):.4f},{label}" for i, label in enumerate(labels)]
    path.write_text("date,a,b,state\n" + "\n".join(rows) + "\n" + extra)
    return path


def test_a_window_takes_the_label_its_rows_share_and_windows_across_a_change_are_left_out(tmp_path):
    path = write_csv(tmp_path / "s.csv", [0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    data = load_file_series(path, seq_length=3, drop_columns="date", label_column="state")
    # windows 0..7 cover rows i..i+2: [0,0,0] [0,0,1] [0,1,1] [1,1,1] [1,1,1] [1,1,2] [1,2,2] [2,2,2]
    assert data.labels.tolist() == [0, 1, 1, 2] and data.num_classes == 3 and data.channels == 2
    rows = np.array([[round(math.sin(i), 4), round(math.cos(i), 4)] for i in range(10)])
    scaled = data.scaling.normalise(rows)
    for series, start in zip(data.series, [0, 3, 4, 7]):
        np.testing.assert_allclose(series.numpy(), scaled[start:start + 3].T, rtol=0, atol=1e-6)
    assert data[1][1] == 1
    # held out: the classes are the file's (K = 3 in both splits); here the last 4 rows [1, 1, 1, 1] give two
    # windows of class 1, and the training rows have a window of each class (a label only the held-out rows
    # have is an error: test_every_class_0_to_k_minus_1_needs_a_training_window)
    path = write_csv(tmp_path / "t.csv", [0, 0, 0, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1])
    test = load_file_series(path, seq_length=3, drop_columns="date", label_column="state", test_fraction=0.31,
                            train=False)
    assert test.labels.tolist() == [1, 1] and test.num_classes == 3


def test_blank_lines_keep_each_label_on_its_own_row(tmp_path):
    """Blank lines (in the middle, at the end) are skipped by both the values and the labels: row i keeps its
    label, so the windows are [0,0,0] of rows 0..2 and [1,1,1] of rows 3..5 with their own values."""
    path = tmp_path / "s.csv"
    path.write_text("a,state\n1,0\n\n2,0\n3,0\n,\n4,1\n5,1\n\n6,1\n\n")
    data = load_file_series(path, seq_length=3, label_column="state")
    assert data.labels.tolist() == [0, 1]
    np.testing.assert_allclose(data.series[:, 0].numpy(), [[-1, -0.6, -0.2], [0.2, 0.6, 1.0]], atol=1e-6)


@pytest.mark.parametrize("labels,extra,message", [
    ([0, 1.5, 1, 1], "", "line 3: label column 'state' holds '1.5'; a class label must be an integer"),
    ([0, "x", 1, 1], "", "holds 'x'; a class label must be an integer 0, 1, ..., K-1"),
    ([0, -1, 1, 1], "", "holds '-1'"),
    ([0, "", 1, 1], "", "line 3: label column 'state' holds ''"),
    ([0, 1, 0, 1], "", "no window of seq_length=3 training rows has one label"),
    ([0, "1_0", 1, 1], "", "holds '1_0'; a class label must be an integer"),  # float() would read 10
    ([0, "+1", 1, 1], "", "holds '+1'"),
    ([0, "1.5e0", 1, 1], "", "holds '1.5e0'"),  # an exponent form that is not an integer
    ([0, "15e-1", 1, 1], "", "holds '15e-1'"),
    ([0, "inf", 1, 1], "", "holds 'inf'"),  # float() reads these
    ([0, "nan", 1, 1], "", "holds 'nan'"),
    ([0, "1e", 1, 1], "", "holds '1e'"),
    ([0, ".5", 1, 1], "", "holds '.5'"),
    ([0, "\uff11", 1, 1], "", "holds '\uff11'"),  # a full-width digit one, which int() reads
    ([0, "9" * 30, 1, 1], "", "holds '" + "9" * 30 + "'"),  # beyond int64
    ([0, "1e19", 1, 1], "", "holds '1e19'"),  # beyond MAX_LABEL = 2 ** 62, as an exponent
    ([0, str(2 ** 62), 1, 1], "", f"holds '{2 ** 62}'"),  # MAX_LABEL itself (2 ** 62 - 1 is a label: below)
    ([0, "1" * 4301, 1, 1], "", "holds '" + "1" * 4301 + "'"),  # beyond int()'s 4300-digit limit: no ValueError
    ([0, "1e99999999999999999999", 1, 1], "", "holds '1e99999999999999999999'"),  # beyond Decimal's exponents
    # the column count before the label
    ([0, 0, 0, 1], "\n0,0.5,0.5\n", "line 7: 3 values for the 4 columns of the header row"),
])
def test_bad_labels_are_one_line_errors(tmp_path, labels, extra, message):
    path = write_csv(tmp_path / "s.csv", labels, extra)
    with pytest.raises(DiffkitError, match=re.escape(message)) as err:
        load_file_series(path, seq_length=3, drop_columns="date", label_column="state")
    assert "\n" not in str(err.value)


def test_labels_written_as_3_0_are_class_3(tmp_path):
    path = write_csv(tmp_path / "s.csv", ["0.0", "0", "0.00", "1", "1.0", "1"])
    assert load_file_series(path, seq_length=3, drop_columns="date", label_column="state").labels.tolist() == [0, 1]
    # any decimal or exponent form whose value is exactly the integer: "3.", "3e0", "30e-1", "0.3E1", leading zeros
    path = write_csv(tmp_path / "e.csv", ["0.", "0e0", "0E-5", "3.", "3e0", "30e-1", "0.3E1", "03", "3.000e+00"])
    assert read_label_column(path, "state").tolist() == [0, 0, 0, 3, 3, 3, 3, 3, 3]


def test_labels_written_by_np_savetxt_with_its_default_fmt_are_read(tmp_path):
    """np.savetxt(..., delimiter=",") writes every value as %.18e: label 2 is 2.000000000000000000e+00."""
    labels = np.array([0, 0, 0, 2, 2, 2, 1, 1, 1, 1])
    values = np.column_stack([np.sin(np.arange(10.0)), labels])
    path = tmp_path / "s.csv"
    np.savetxt(path, values, delimiter=",", header="a,state", comments="")
    assert "2.000000000000000000e+00" in path.read_text()
    assert read_label_column(path, "state").tolist() == labels.tolist()
    data = load_file_series(path, seq_length=3, label_column="state")
    assert data.labels.tolist() == [0, 2, 1, 1] and data.num_classes == 3


def test_window_labels_keeps_exactly_the_windows_whose_rows_share_one_label():
    """Against the definition written out: window i (rows i..i+L-1) is kept iff all its labels equal row i's."""
    def by_definition(labels, L):
        starts = range(len(labels) - L + 1)
        kept = [all(labels[j] == labels[i] for j in range(i, i + L)) for i in starts]
        return kept, [labels[i] for i in starts if kept[i]]
    rng = np.random.default_rng(0)
    cases = [([0, 0], 2), ([0, 1], 2), ([5, 5, 5], 3), ([1, 1, 2, 2, 2], 3), ([0, 1, 0, 1, 0, 1], 2),
             ([7] * 9, 4), ([0, 0, 0, 1, 1, 1, 0, 0, 0], 3), ([0, 0, 1, 1, 1, 1, 2, 2, 2], 4)]
    for _ in range(200):  # runs of random lengths 1..6 of a few labels (a repeated label joins runs too)
        lengths = rng.integers(1, 7, size=rng.integers(1, 8))
        labels = np.repeat(rng.integers(0, 3, size=len(lengths)), lengths)
        if len(labels) >= 2:
            cases.append((labels.tolist(), int(rng.integers(2, len(labels) + 1))))
    for labels, L in cases:
        kept, classes = window_labels(np.asarray(labels, dtype=np.int64), L)
        want_kept, want_classes = by_definition(labels, L)
        assert kept.tolist() == want_kept and classes.tolist() == want_classes, (labels, L)
        assert classes.dtype == np.int64


def test_the_classes_without_a_window_are_the_first_five_over_every_reason(tmp_path):
    """Classes 1, 3, ..., 11 never in the file, 2, 4, ..., 12 in runs of one row, 13 only held out: the first
    five of all are 1..5, and each reason lists its own first five."""
    path = write_csv(tmp_path / "s.csv", [0, 0, 0, 2, 4, 6, 8, 10, 12, 13, 13, 13])
    message = ("classes 1, 2, 3, 4, 5, ... (13 in all) have no training window (1, 3, 5, 7, 9, ... (6 in all): "
               "never in the file; 13: only in the held-out rows; 2, 4, 6, 8, 10, ... (6 in all): its runs in the "
               "training rows are shorter than seq_length=3)")
    with pytest.raises(DiffkitError, match=re.escape(message)):
        load_file_series(path, seq_length=3, drop_columns="date", label_column="state", test_fraction=0.25)


@pytest.mark.parametrize("labels,fraction,message", [
    ([0] * 4 + [5] * 4, 0, "classes 1, 2, 3, 4 have no training window (never in the file); labels must be "
     "0..K-1, each with at least one window of seq_length=3 rows in the training split"),
    ([1] * 4 + [2] * 4, 0, "class 0 has no training window (never in the file)"),
    ([0] * 6 + [1] * 6 + [2] * 4, 0.25, "class 2 has no training window (only in the held-out rows)"),
    ([0, 0, 0, 1, 1, 2, 2, 2], 0, "class 1 has no training window (its runs in the training rows are shorter "
     "than seq_length=3)"),
    ([0] * 3 + [1, 1] + [4] * 3 + [3] * 4, 0.34, "classes 1, 2, 3 have no training window (2: never in the file; "
     "3: only in the held-out rows; 1: its runs in the training rows are shorter than seq_length=3)"),
    ([0] * 4 + [20240101] * 4, 0, "classes 1, 2, 3, 4, 5, ... (20240100 in all) have no training window "
     "(never in the file)"),
])
def test_every_class_0_to_k_minus_1_needs_a_training_window(tmp_path, labels, fraction, message):
    """K = the largest label + 1; a class of 0..K-1 without a training window would be an untrained embedding
    (and a date-like label a 20-million-row one): one error names the classes and why, for both splits."""
    path = write_csv(tmp_path / "s.csv", labels)
    for train in (True, False) if fraction else (True,):
        with pytest.raises(DiffkitError, match=re.escape(message)) as err:
            load_file_series(path, seq_length=3, drop_columns="date", label_column="state", test_fraction=fraction,
                             train=train)
        assert "\n" not in str(err.value) and str(err.value).startswith("label_column 'state': class")


def test_label_column_errors_name_the_value_and_what_is_allowed(tmp_path):
    path = write_csv(tmp_path / "s.csv", [0, 0, 0, 1, 1, 1])
    with pytest.raises(DiffkitError, match="label_column='class' is not a column of .*; its columns: date, a, b"):
        load_file_series(path, seq_length=3, drop_columns="date", label_column="class")
    np.save(tmp_path / "s.npy", np.zeros((6, 2)))
    with pytest.raises(DiffkitError, match="label_column='state' names a CSV column"):
        load_file_series(tmp_path / "s.npy", seq_length=3, label_column="state")
    # the message names what the user listed, and the label column apart
    with pytest.raises(DiffkitError, match="^drop_columns='date,a,b' with label_column='state' \\(labels, not "
                                           "values\\) leaves no value column of .*s.csv; keep at least one$"):
        load_file_series(path, seq_length=3, drop_columns="date,a,b", label_column="state")
    # spaces around the name are ignored, as drop_columns' are
    assert load_file_series(path, seq_length=3, drop_columns="date", label_column=" state ").labels.tolist() == [0, 1]
    assert TrainConfig.from_dict({"dataset": "series", "data_dir": str(path), "seq_length": 4, "channel_mult": [1, 2],
                                  "conditional": True, "label_column": " state"}).label_column == "state"
    base = {"dataset": "series", "data_dir": str(path), "seq_length": 4, "channel_mult": [1, 2]}
    for extra, message in (
            ({"label_column": "state"}, "label_column='state' gives the class labels of conditional=True"),
            ({"conditional": True}, "conditional=True needs class labels: name the file's column"),
            ({"conditional": True, "label_column": "state", "drop_columns": "date,state"}, "is also in drop_columns"),
            ({"dataset": "sines", "data_dir": None, "label_column": "state"},
             "label_column='state' applies to dataset='series'")):
        with pytest.raises(DiffkitError, match=message):
            TrainConfig.from_dict({**base, **extra})
    with pytest.raises(DiffkitError, match="class label 5 is out of range; allowed: 0..2 \\(3: unconditional\\)"):
        TemporalUNet(TemporalUNetConfig(**TINY, num_classes=3))(torch.zeros(1, 3, 8), 1, y=torch.tensor([5]))
    with pytest.raises(DiffkitError, match="y was given but the 1-D U-Net is unconditional"):
        TemporalUNet(TemporalUNetConfig(**TINY))(torch.zeros(1, 3, 8), 1, y=torch.tensor([0]))
    with pytest.raises(DiffkitError, match="num_classes=2 is fewer than the 3 classes"):
        Trainer(series_cfg(tmp_path, dataset="series", data_dir=str(path), num_series=10000, seq_length=2,
                           channel_mult=[1], conditional=True, num_classes=2, label_column="state", batch_size=2),
                dataset=SeriesDataset(torch.zeros(4, 2, 2), labels=torch.tensor([0, 1, 2, 0])), progress=False)


_LABELLED_RUN = []  # the checkpoint, once trained: test_series_class_edit takes this fixture too


@pytest.fixture(scope="session")
def labelled_run(tmp_path_factory):
    """``diffkit train --dataset series --conditional --set label_column=state`` with a learned variance;
    trained once per process (pytest sets this fixture up for each module that holds it; no test changes it)."""
    if _LABELLED_RUN:
        return _LABELLED_RUN[0]
    root = tmp_path_factory.mktemp("labelled")
    write_csv(root / "s.csv", [k for k in (0, 1, 2) for _ in range(20)] * 2)
    code = main(["train", "--dataset", "series", "--data-dir", str(root / "s.csv"), "--out", str(root / "run"),
                 "--steps", "4", "--no-progress", "--device", "cpu", "--conditional", "--set", "label_column=state",
                 "--set", "drop_columns=date", "--set", "learned_variance=true", "--set", "loss=hybrid",
                 "--set", "seq_length=4", "--set", "channel=8", "--set", "channel_mult=1,2", "--set", "T=20",
                 "--set", "batch_size=8", "--set", "sample_steps=2", "--set", "test_fraction=0.25",
                 "--set", "ema_decay=0", "--set", "lr=1e-3",
                 "--no-sample"])
    assert code == 0
    _LABELLED_RUN.append(root / "run" / "checkpoints" / "latest.safetensors")
    return _LABELLED_RUN[0]


def test_sample_cli_takes_a_class_and_a_guidance_scale_for_a_labelled_series_model(labelled_run, tmp_path, capsys):
    d = load_denoiser(labelled_run)
    assert d.learned_variance and d.model.config.num_classes == 3
    code = main(["sample", "--checkpoint", str(labelled_run), "--class", "2", "--guidance-scale", "2", "--num", "2",
                 "--sampler", "ddpm", "--steps", "1", "--out", str(tmp_path / "g.png"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert np.load(tmp_path / "g_labels.npy").tolist() == [2, 2] and np.load(tmp_path / "g.npy").shape == (2, 2, 4)
    code = main(["sample", "--checkpoint", str(labelled_run), "--class", "3", "--num", "2",
                 "--out", str(tmp_path / "h.png"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--class 3 is out of range; allowed: 0..2" in err and len(err.strip().splitlines()) == 1


def test_sample_cli_series_of_another_class_or_guidance_scale_differ_from_the_same_noise(labelled_run, tmp_path):
    runs = {}
    for name, flags in (("g", ["--class", "2", "--guidance-scale", "2"]), ("c0", ["--class", "0", "--guidance-scale",
                                                                                  "2"]), ("w0", ["--class", "2"])):
        assert main(["sample", "--checkpoint", str(labelled_run), *flags, "--num", "2", "--sampler", "ddim",
                     "--steps", "1", "--out", str(tmp_path / f"{name}.png"), "--no-progress"]) == 0
        runs[name] = np.load(tmp_path / f"{name}.npy")
    assert not np.array_equal(runs["c0"], runs["g"]) and not np.array_equal(runs["w0"], runs["g"])


def test_eval_nll_gives_the_bound_of_a_series_model_on_its_held_out_windows(labelled_run, tmp_path, capsys):
    import json
    code = main(["eval", "--checkpoint", str(labelled_run), "--metrics", "nll,nll-strided", "--nll-num", "4",
                 "--nll-stride", "5", "--nll-dense-below", "3", "--out", str(tmp_path / "e.json"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0 and "nll, nll-strided on 4 test series" in out, err
    result = json.loads((tmp_path / "e.json").read_text())
    # the same bound by hand: the held-out windows (the last 30 rows: 3 runs of labels), evenly spaced
    data = load_file_series(labelled_run.parents[2] / "s.csv", seq_length=4, drop_columns="date",
                            label_column="state", test_fraction=0.25, train=False)
    from diffkit.likelihood import bound_in_batches
    from diffkit.series_evaluation import spread_indices
    # each window's bound given its own label (windows 0, 8, 15, 23 of 7 of class 1 then 17 of class 2)
    index = spread_indices(len(data), 4)
    assert data.labels[index].tolist() == [1, 2, 2, 2]
    denoiser = load_denoiser(labelled_run)
    parts = bound_in_batches(denoiser, data.series[index], seed=0, cond={"y": torch.tensor([1, 2, 2, 2])})
    assert result["metrics"]["nll"]["bpd"] == pytest.approx(float(parts[0].total.mean()), rel=1e-9)
    assert result["settings"]["nll_condition"] == "each window's own label"
    null = bound_in_batches(denoiser, data.series[index], seed=0)  # the null class (p_uncond 0.1 trained it a little)
    assert abs(float(null[0].total.mean()) - result["metrics"]["nll"]["bpd"]) > 1e-6
    assert result["metrics"]["nll"]["timesteps_evaluated"] == 20
    assert result["metrics"]["nll-strided"]["timesteps_evaluated"] < 20
    code = main(["eval", "--checkpoint", str(labelled_run), "--metrics", "nll", "--repeats", "2", "--nll-num", "4",
                 "--out", str(tmp_path / "r.json"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "repeats 2 applies to context-fid" in err and len(err.strip().splitlines()) == 1


def test_eval_samples_a_labelled_series_model_with_the_reference_windows_labels(labelled_run, tmp_path, monkeypatch):
    """The held-out windows (7 of class 1, then 17 of class 2; no class 0) are the reference: 6 samples take the
    labels of the 6 evenly spaced reference windows 0, 5, 9, 14, 18, 23 -> 1, 1, 2, 2, 2, 2 (not 0, 1, 2, 0, 1, 2
    in turn), so the classes have the reference's proportions."""
    import json

    import diffkit.evaluation
    drawn = []
    real = diffkit.evaluation.generate_samples

    def recording(*args, labels=None, **kwargs):
        drawn.append(labels)
        return real(*args, labels=labels, **kwargs)
    monkeypatch.setattr(diffkit.evaluation, "generate_samples", recording)
    assert main(["eval", "--checkpoint", str(labelled_run), "--metrics", "correlational", "--num", "6",
                 "--steps", "1", "--out", str(tmp_path / "e.json"), "--no-progress"]) == 0
    assert len(drawn) == 1 and drawn[0].tolist() == [1, 1, 2, 2, 2, 2]
    settings = json.loads((tmp_path / "e.json").read_text())["settings"]
    assert settings["sample_labels"] == "the reference split's windows (evenly spaced)"


def test_sample_labels_of_keeps_the_windows_proportions_for_any_number_of_samples():
    from types import SimpleNamespace

    from diffkit.series_evaluation import sample_labels_of
    conditional, plain = SimpleNamespace(meta={"unet": {"num_classes": 2}}), SimpleNamespace(meta={"unet": {}})
    windows = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    # windows floor(k * 9 / 4 + 1/2) = 0, 2, 5, 7, 9
    assert sample_labels_of(conditional, 5, windows).tolist() == [0, 0, 1, 1, 1]
    assert sample_labels_of(conditional, 10, windows).tolist() == windows.tolist()
    assert sample_labels_of(conditional, 5).tolist() == [0, 1, 0, 1, 0]  # no labels known: in turn
    assert sample_labels_of(plain, 5, windows) is None


@pytest.mark.parametrize("series", [True, False])
def test_class_and_guidance_errors_of_an_unconditional_model_suggest_what_its_kind_takes(series):
    """A time-series model takes no --classifier: its errors say to train with label_column, an image model's
    still point to --classifier."""
    from types import SimpleNamespace

    from diffkit.commands.sample import GuidanceRequest, guided_denoiser
    from diffkit.models.network import TEMPORAL_UNET
    denoiser = SimpleNamespace(meta={"unet": {"network": TEMPORAL_UNET} if series else {"img_size": 8}})
    with pytest.raises(DiffkitError, match="^--guidance-scale needs a class-conditional checkpoint") as err:
        guided_denoiser(denoiser, GuidanceRequest(guidance_scale=2.0))
    with pytest.raises(DiffkitError, match="^--class needs a class-conditional checkpoint") as class_err:
        GuidanceRequest(classes=[1]).labels(None, 4, 2, series=series)
    for message in (str(err.value), str(class_err.value)):
        assert ("--classifier" in message) is not series and ("label_column=NAME" in message) is series


def test_the_largest_label_below_max_label_is_read_exactly():
    from diffkit.series_files import MAX_LABEL, label_value
    assert label_value(str(MAX_LABEL - 1)) == 2 ** 62 - 1
    assert label_value(str(MAX_LABEL)) == -1
    assert label_value("0e-999999999999999999") == 0  # a zero mantissa within Decimal's exponents
