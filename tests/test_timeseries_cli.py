"""Time series end to end: ``dataset = "sines"`` through the Trainer (exact resume), load_denoiser,
``diffkit sample`` (.npy + line plot) and ``diffkit eval --metrics context-fid``; one-line refusals."""
import json

import numpy as np
import pytest
import torch

import diffkit
from diffkit import checkpoint as ckpt
from diffkit.cli import main
from diffkit.config import TrainConfig
from diffkit.errors import DiffkitError
from diffkit.models.temporal import TemporalUNet, TemporalUNetConfig
from diffkit.timeseries import sines, to_unit_range
from diffkit.training import Trainer

SERIES = {"dataset": "sines", "num_series": 48, "seq_length": 8, "in_channels": 3, "channel": 8,
          "channel_mult": [1, 2], "num_res_blocks": 1, "dropout": 0.1, "batch_size": 8, "T": 50, "sample_steps": 4,
          "ema_decay": 0.9, "device": "cpu"}
SET = [f"--set={k}={v if not isinstance(v, list) else ','.join(map(str, v))}" for k, v in SERIES.items()
       if k not in ("dataset", "device")]


def series_cfg(folder, **extra):
    return TrainConfig.from_dict({**SERIES, "save_weight_dir": str(folder / "ckpt"),
                                  "sampled_dir": str(folder / "s"), **extra})


def run_cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def series_run(tmp_path_factory):
    """``diffkit train --dataset sines`` (6 steps, one epoch, of a tiny 1-D U-Net; no test needs a trained model):
    the run folder. The end-of-run plot is recorded, not drawn (16 matplotlib panels, ~2 s): the series and path
    it is given are checked in test_sample_cli_writes_npy_and_a_line_plot, which draws a series plot of its own."""
    import diffkit.timeseries
    root = tmp_path_factory.mktemp("sines")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(diffkit.timeseries, "plot_series", lambda series, path, **kw: PLOTTED.append((series, path)))
        code = main(["train", "--dataset", "sines", "--out", str(root / "run"), "--steps", "6", "--no-progress",
                     "--device", "cpu", *SET])
    assert code == 0
    return root / "run"


PLOTTED = []  # (series, path) of the plots series_run's training asked for


def test_series_training_resumes_bitwise(tmp_path, assert_same_training_state):
    """Stop at step 3 of 8 (mid-epoch: 48 series / batch 8 = 6 steps per epoch), resume: weights, EMA and
    optimiser state equal an uninterrupted run's (dropout on, so the RNG state must come back too)."""
    full = Trainer(series_cfg(tmp_path / "a", max_steps=8), progress=False)
    assert isinstance(full.model, TemporalUNet)
    assert torch.equal(full.dataset.series, sines(48, length=8, channels=3, seed=123))  # Diffusion-TS's seed
    full.run()
    Trainer(series_cfg(tmp_path / "b", max_steps=8), progress=False).run(stop_at=3)
    resumed = Trainer(series_cfg(tmp_path / "b", max_steps=8,
                                 training_load_weight=str(tmp_path / "b" / "ckpt" / "latest.safetensors")),
                      progress=False)
    resumed.run()
    assert_same_training_state(tmp_path / "a" / "ckpt" / "latest.safetensors",
                               tmp_path / "b" / "ckpt" / "latest.safetensors", 8)
    _, meta = ckpt.load_checkpoint(tmp_path / "a" / "ckpt" / "latest.safetensors")
    assert meta["unet"] == {"network": "temporal-unet", "in_channels": 3, "model_channels": 8,
                            "channel_mult": [1, 2], "num_res_blocks": 1, "dropout": 0.1, "seq_length": 8}
    # a resume with another length would change what the weights mean: refused in one line
    other = Trainer(series_cfg(tmp_path / "c", max_steps=8, seq_length=16,
                               training_load_weight=str(tmp_path / "b" / "ckpt" / "ckpt_00000003.safetensors")),
                    progress=False)
    with pytest.raises(DiffkitError, match="seq_length=8"):
        other.run()


def test_load_denoiser_rebuilds_the_temporal_unet_and_every_sampler_runs(series_run):
    from diffkit.loading import load_denoiser
    path = series_run / "checkpoints" / "latest.safetensors"
    d = load_denoiser(path)
    tensors, meta = ckpt.load_checkpoint(path)
    # the reference: the network built by hand from TemporalUNetConfig with the checkpoint's EMA weights
    ref = TemporalUNet(TemporalUNetConfig(in_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                          dropout=0.1))
    ref.load_state_dict(ckpt.split_prefix(tensors, "ema"), strict=False)
    ref.eval()
    x, t = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([3, 40])
    with torch.no_grad():
        torch.testing.assert_close(d.model(x, t), ref(x, t), rtol=0, atol=0)
    assert d.prediction_type == "epsilon" and d.schedule.num_timesteps == 50
    for name, steps in (("ddim", 4), ("ddpm", 4), ("dpm-solver++-2m", 4), ("unipc", 4), ("heun", 2), ("pndm", 5),
                        ("deis", 4), ("ode", None)):
        out = diffkit.sample(d, (3, 3, 8), sampler=name, steps=steps, seed=0, progress=False)
        assert out.shape == (3, 3, 8) and torch.isfinite(out).all(), name


def test_sample_cli_writes_npy_and_a_line_plot(series_run, tmp_path, capsys):
    from conftest import real_plots
    from PIL import Image
    ck = series_run / "checkpoints" / "latest.safetensors"
    # the end-of-run sample of training: the seed's image name, as .npy beside its plot (the same series), no
    # noise grid
    trained = np.load(series_run / "samples" / "SampledNoGuidanceImgs.npy")
    assert trained.shape == (64, 3, 8) and len(PLOTTED) == 1
    assert PLOTTED[0][1] == series_run / "samples" / "SampledNoGuidanceImgs.png"
    np.testing.assert_array_equal(np.asarray(PLOTTED[0][0]), trained)
    assert not (series_run / "samples" / "NoisyNoGuidanceImgs.png").exists()
    with real_plots():  # this run's series PNG is read (the later runs' are not drawn)
        code, out, err = run_cli(capsys, "sample", "--checkpoint", str(ck), "--sampler", "dpm-solver++-2m", "--steps",
                                 "3", "--num", "5", "--out", str(tmp_path / "s.png"), "--no-progress")
    assert code == 0, err
    series = np.load(tmp_path / "s.npy")
    assert series.shape == (5, 3, 8) and series.dtype == np.float32 and np.isfinite(series).all()
    with Image.open(tmp_path / "s.png") as image:
        assert image.format == "PNG" and image.size[0] > 100
    # sample i depends on seed + i only: the first 2 of 5 are the 2 of a --num 2 run
    code, out, err = run_cli(capsys, "sample", "--checkpoint", str(ck), "--sampler", "dpm-solver++-2m", "--steps", "3",
                             "--num", "2", "--batch-size", "1", "--out", str(tmp_path / "t.png"), "--no-progress")
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "t.npy"), series[:2])
    for flags in (["--individual", str(tmp_path / "each")], ["--noise-out", str(tmp_path / "n.png")],
                  ["--progressive", "3"], ["--scale", "2"]):
        code, out, err = run_cli(capsys, "sample", "--checkpoint", str(ck), "--num", "2", "--out",
                                 str(tmp_path / "u.png"), "--no-progress", *flags)
        assert code == 2 and f"{flags[0]} applies to image models" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "each").exists() and not (tmp_path / "u.npy").exists()


@pytest.mark.filterwarnings("ignore:TS2Vec embeddings")
def test_eval_context_fid_is_the_metric_of_the_sampled_series(series_run, tmp_path, capsys):
    """The CLI's value equals Context-FID computed by hand: a TS2Vec encoder trained (same seed and
    iterations) on the first --num training series, scoring the series 'diffkit sample' draws."""
    from diffkit.metrics.context_fid import context_fid, train_context_fid_encoder
    ck = series_run / "checkpoints" / "latest.safetensors"
    args = ["eval", "--checkpoint", str(ck), "--metrics", "context-fid", "--num", "24", "--steps", "3", "--seed", "5",
            "--context-fid-iterations", "5", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    code, out, err = run_cli(capsys, *args, "--out", str(tmp_path / "e.json"))
    assert code == 0, err
    result = json.loads((tmp_path / "e.json").read_text())["metrics"]["context-fid"]
    assert np.isfinite(result["value"]) and result["num_samples"] == result["num_reference"] == 24
    assert not result["encoder_cached"] and "rank-deficient" in err
    assert "24 reference series for 320-d features" in err and "images" not in err, err  # series, not images
    code, out, err = run_cli(capsys, "sample", "--checkpoint", str(ck), "--num", "24", "--steps", "3", "--seed", "5",
                             "--out", str(tmp_path / "s.png"), "--no-progress")
    assert code == 0, err
    samples = torch.from_numpy(np.load(tmp_path / "s.npy")).clamp(-1, 1)  # eval scores clamped samples
    real = sines(48, length=8, channels=3, seed=123)[:24]
    encoder = train_context_fid_encoder(to_unit_range(real), 5, seed=5)
    expected = context_fid(encoder, to_unit_range(real), to_unit_range(samples))
    assert result["value"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
    code, out, err = run_cli(capsys, *args, "--out", str(tmp_path / "again.json"))  # the cached encoder and samples
    again = json.loads((tmp_path / "again.json").read_text())["metrics"]["context-fid"]
    assert code == 0 and again["encoder_cached"] and again["value"] == result["value"]


def test_eval_correlational_discriminative_predictive_are_the_metrics_of_the_sampled_series(series_run, tmp_path,
                                                                                              capsys):
    """The CLI's values equal the three scores computed by hand on the first --num training series and
    the series 'diffkit sample' draws, both in [0, 1], the GRUs seeded by --seed; no encoder is trained."""
    from diffkit.metrics import correlational_score, discriminative_score, predictive_score
    ck = series_run / "checkpoints" / "latest.safetensors"
    code, out, err = run_cli(capsys, "eval", "--checkpoint", str(ck), "--metrics",
                             "correlational,discriminative,predictive", "--num", "24", "--steps", "3", "--seed", "5",
                             "--discriminative-iterations", "4", "--predictive-iterations", "3", "--no-progress",
                             "--out", str(tmp_path / "e.json"))
    assert code == 0, err
    assert "24 samples (ddim, 3 steps) vs 24 sines train series" in out
    result = json.loads((tmp_path / "e.json").read_text())["metrics"]
    assert list(result) == ["correlational", "discriminative", "predictive"]
    code, out, err = run_cli(capsys, "sample", "--checkpoint", str(ck), "--num", "24", "--steps", "3", "--seed", "5",
                             "--out", str(tmp_path / "s.png"), "--no-progress")
    assert code == 0, err
    samples = to_unit_range(torch.from_numpy(np.load(tmp_path / "s.npy")).clamp(-1, 1))
    real = to_unit_range(sines(48, length=8, channels=3, seed=123)[:24])
    assert result["correlational"]["value"] == pytest.approx(correlational_score(real, samples), rel=1e-6, abs=1e-12)
    assert result["discriminative"]["value"] == discriminative_score(real, samples, iterations=4, seed=5)
    assert result["discriminative"]["iterations"] == 4 and result["predictive"]["iterations"] == 3
    assert result["predictive"]["value"] == pytest.approx(predictive_score(real, samples, iterations=3, seed=5),
                                                          rel=1e-6)


def test_eval_repeats_are_runs_seeded_seed_plus_i_with_the_t_interval_of_their_mean(series_run, tmp_path, capsys):
    """--repeats 3: each metric's runs equal the scores computed by hand on the same samples (drawn once, seed 5)
    with seeds 5, 6, 7; mean and interval equal scipy's sem x t(0.975, 2); the table prints mean +- interval.
    --repeats 1 writes what no flag writes (no runs, mean or interval)."""
    from scipy import stats
    from diffkit.metrics import correlational_score, discriminative_score, predictive_score
    from diffkit.metrics.context_fid import context_fid, train_context_fid_encoder
    ck = series_run / "checkpoints" / "latest.safetensors"
    args = ["eval", "--checkpoint", str(ck), "--metrics", "context-fid,correlational,discriminative,predictive",
            "--num", "24", "--steps", "3", "--seed", "5", "--context-fid-iterations", "3",
            "--discriminative-iterations", "4", "--predictive-iterations", "3", "--no-progress",
            "--cache-dir", str(tmp_path / "cache")]  # the runs after the first reuse its seed-5 encoder and samples
    code, out, err = run_cli(capsys, *args, "--repeats", "3", "--out", str(tmp_path / "r.json"))
    assert code == 0, err
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["settings"]["repeats"] == 3
    code, _, err = run_cli(capsys, "sample", "--checkpoint", str(ck), "--num", "24", "--steps", "3", "--seed", "5",
                           "--out", str(tmp_path / "s.png"), "--no-progress")
    assert code == 0, err
    samples = to_unit_range(torch.from_numpy(np.load(tmp_path / "s.npy")).clamp(-1, 1))
    real = to_unit_range(sines(48, length=8, channels=3, seed=123)[:24])
    by_hand = {"context-fid": [context_fid(train_context_fid_encoder(real, 3, seed=s), real, samples)
                               for s in (5, 6, 7)],
               "correlational": [correlational_score(real, samples)] * 3,
               "discriminative": [discriminative_score(real, samples, iterations=4, seed=s) for s in (5, 6, 7)],
               "predictive": [predictive_score(real, samples, iterations=3, seed=s) for s in (5, 6, 7)]}
    for name, expected in by_hand.items():
        metric = result["metrics"][name]
        assert [run["value"] for run in metric["runs"]] == pytest.approx(expected, rel=1e-6, abs=1e-12), name
        mean, half = np.mean(expected), stats.sem(expected) * stats.t.ppf(0.975, 2)
        assert metric["mean"] == metric["value"] == pytest.approx(mean, rel=1e-6, abs=1e-12), name
        assert metric["interval"] == pytest.approx(half, rel=1e-5, abs=1e-12), name
        row = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert f"{metric['mean']:.4g} +- {metric['interval']:.4g}" in row, row
    assert [run["seed"] for run in result["metrics"]["discriminative"]["runs"]] == [5, 6, 7]
    assert [run["encoder_seed"] for run in result["metrics"]["context-fid"]["runs"]] == [5, 6, 7]
    assert result["metrics"]["predictive"]["interval"] > 0 and result["metrics"]["context-fid"]["interval"] > 0
    one = {}
    for extra in ([], ["--repeats", "1"]):
        code, out, err = run_cli(capsys, *args, *extra, "--out", str(tmp_path / "one.json"))
        assert code == 0, err
        data = json.loads((tmp_path / "one.json").read_text())
        one[len(extra)] = ({k: {f: v for f, v in m.items() if "seconds" not in f} for k, m in data["metrics"].items()},
                           {k: v for k, v in data["settings"].items() if "seconds" not in k},
                           # the rule under the header is as wide as the widest row, whose notes hold timings
                           [line.split()[:2] for line in out.splitlines() if set(line.strip()) != {"-"}])
    assert one[0] == one[2] and "repeats" not in one[0][1] and "runs" not in one[0][0]["predictive"]
    assert one[0][0]["context-fid"]["encoder_cached"]  # repeats cache each seed's encoder as one run does
    assert one[0][0]["discriminative"]["value"] == result["metrics"]["discriminative"]["runs"][0]["value"]


def test_eval_refuses_bad_repeats(series_run, tiny_checkpoint, tmp_path, capsys):
    from diffkit.evaluation import evaluate
    ck = series_run / "checkpoints" / "latest.safetensors"
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(DiffkitError, match=r"^repeats=.* must be an integer|^repeats=.*out of range"):
            evaluate("correlational", checkpoint=ck, num=8, steps=2, repeats=bad)
    with pytest.raises(DiffkitError, match=r"^repeats=0 is out of range"):  # an image model: the range first
        evaluate("fd-classifier", checkpoint=tiny_checkpoint, num=8, steps=2, repeats=0)
    with pytest.raises(DiffkitError, match="repeats 2 applies to the time-series metrics"):
        evaluate("fd-classifier", checkpoint=tiny_checkpoint, num=8, steps=2, repeats=2)
    for bad in ("0", "1.5", "x"):
        with pytest.raises(SystemExit):
            main(["eval", "--checkpoint", str(ck), "--metrics", "correlational", "--repeats", bad,
                  "--out", str(tmp_path / "x.json")])
        err = capsys.readouterr().err
        assert "--repeats" in err and not (tmp_path / "x.json").exists()


def test_eval_refuses_metrics_that_do_not_fit_the_model(series_run, tiny_checkpoint, tmp_path, capsys):
    ck = str(series_run / "checkpoints" / "latest.safetensors")
    for args, message in (
            (["--checkpoint", ck, "--metrics", "fid"], "metric 'fid' is for images"),
            (["--checkpoint", ck, "--metrics", "context-fid,rate-distortion"],
             "metric 'rate-distortion' is for images"),
            (["--checkpoint", ck, "--metrics", "context-fid", "--ref", "digits"], "--ref applies to image models"),
            (["--checkpoint", ck, "--metrics", "context-fid", "--data-dir", str(tmp_path)],
             "--data-dir applies to image models and runs on a series file; "),
            (["--checkpoint", str(tiny_checkpoint), "--metrics", "context-fid"], "is for time series"),
            (["--checkpoint", str(tmp_path / "missing"), "--metrics", "context-fid"],
             f"checkpoint {tmp_path / 'missing'} does not exist"),
            (["--samples", str(tmp_path), "--metrics", "context-fid"], "use --checkpoint"),
            (["--checkpoint", ck, "--metrics", "context-fid", "--num", "49"],  # the run has 48 training series
             "--num 49 asks for more reference series than the run's 48 training series"),
            (["--checkpoint", ck, "--metrics", "context-fid", "--num", "8", "--ref-num", "60"],
             "--ref-num 60 asks for more reference series"),
            (["--checkpoint", ck, "--metrics", "predictive,fid"], "metric 'fid' is for images"),
            (["--checkpoint", str(tiny_checkpoint), "--metrics", "correlational"],
             "'correlational' is for time series"),
            (["--checkpoint", str(tiny_checkpoint), "--metrics", "fid,discriminative"],
             "'discriminative' is for time series"),
            (["--samples", str(tmp_path), "--metrics", "predictive"],
             "predictive scores the samples of a time-series")):
        code, out, err = run_cli(capsys, "eval", *args, "--out", str(tmp_path / "x.json"), "--no-progress")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)


@pytest.mark.parametrize("overrides,message", [
    ({"attn": [1]}, "attn=[1] applies to images"),
    ({"img_size": 16}, "img_size=16 applies to images"),
    ({"num_heads": 2}, "num_heads=2 applies to images"),
    ({"hflip": True}, "hflip=True applies to images"),
    ({"memory_format": "channels_last"}, "memory_format='channels_last' applies to images"),
    ({"conditional": True}, "conditional=True needs class labels: dataset='sines' has no classes"),
    ({"text_conditioning": True}, "text_conditioning=True is not available for time series"),
    ({"seq_length": 9}, "seq_length=9 must be divisible by 2"),
    ({"dataset": "digits"}, "seq_length=8 applies to time series"),
])
def test_config_refuses_what_series_cannot_use(overrides, message):
    with pytest.raises(DiffkitError, match=message.replace("[", r"\[").replace("]", r"\]")):
        TrainConfig.from_dict({**SERIES, **overrides})
    # the defaults of the image fields (attn [2], img_size 32) are fine, and attn=[] too
    assert TrainConfig(dataset="sines", attn=[]).to_unet_kwargs()["network"] == "temporal-unet"
    assert TrainConfig(dataset="sines", in_channels=7).to_unet_kwargs()["in_channels"] == 7


def test_load_dataset_keeps_image_and_series_options_apart():
    from diffkit.data import load_dataset
    with pytest.raises(DiffkitError, match="img_size=8 does not apply to dataset=.sines."):
        load_dataset("sines", img_size=8)
    with pytest.raises(DiffkitError, match="num_series / seq_length apply to time-series"):
        load_dataset("digits", seq_length=8)
    test = load_dataset("sines", train=False, num_series=4, seq_length=6, channels=2)
    assert torch.equal(test.series, sines(4, 6, 2, seed=2024)) and test[1][1] == 0


def test_two_gloo_processes_train_series_as_one_process(tmp_path):
    """DDP (gloo) on series: 2 processes x 4 reach one process x 8's weights (no dropout). The ranks are forked
    from this process with torchrun's environment (tests/_gloo_ranks.py fork_ranks: two processes and gloo
    ranks, without two interpreter starts and torch imports); ``python -m diffkit`` ranks: test_distributed."""
    from _gloo_ranks import fork_ranks

    def train(out, nproc, batch):
        args = ["train", "--dataset", "sines", "--out", str(out), "--batch-size", str(batch), "--steps", "3",
                "--device", "cpu", "--no-sample", "--no-progress", *[s for s in SET if "batch_size" not in s],
                "--set=dropout=0.0"]
        if nproc == 1:  # the one-process reference runs in this process (no interpreter and torch import of its own)
            assert main(args) == 0
        else:
            res = fork_ranks(args, nproc)
            assert res.returncode == 0, res.stderr[-2000:]
        return ckpt.load_checkpoint(out / "checkpoints" / "latest.safetensors")

    a, _ = train(tmp_path / "one", 1, 8)
    b, meta = train(tmp_path / "two", 2, 4)
    assert meta["step"] == 3 and meta["world_size"] == 2
    for key in a:
        if key.startswith(("model.", "ema.")):
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


def test_image_only_commands_refuse_a_series_checkpoint(series_run, tmp_path, capsys):
    ck = str(series_run / "checkpoints" / "latest.safetensors")
    (tmp_path / "imgs").mkdir()
    for args, what in ((["convert", "--checkpoint", ck, "--to-diffusers", str(tmp_path / "dd")], "--to-diffusers"),
                       (["train-classifier", "--like", ck, "--out", str(tmp_path / "c.safetensors")],
                        "classifier guidance"),
                       (["edit", "--checkpoint", ck, "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "e")],
                        "diffkit edit"),
                       (["experiment", "noise-scale", "--checkpoint", ck, "--out", str(tmp_path / "n.json")],
                        "noise-scale"),
                       (["experiment", "ddim-table", "--checkpoint", ck, "--out", str(tmp_path / "t.json")],
                        "a sample-metric table")):
        code, out, err = run_cli(capsys, *args)
        assert code == 2 and what in err and "is a time-series model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "dd").exists()
    for command, what in (("train-classifier", "the noisy classifier"), ("train-autoencoder", "the autoencoder")):
        code, out, err = run_cli(capsys, command, "--dataset", "sines", "--out", str(tmp_path / "m.safetensors"))
        assert code == 2 and f"dataset='sines' holds time series; {what} trains on images" in err, err
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("flags", [["--sampler", "restart", "--restarts", "0.1:0.5:1:2", "--nfe", "9"],
                                   ["--sampler", "dpm-solver++-2m", "--spacing", "trailing", "--final", "zero",
                                    "--steps", "3"]])
def test_eval_of_a_series_model_takes_the_grid_flags_restarts_and_nfe(series_run, tmp_path, capsys, flags):
    """eval --restarts, --spacing / --final and --nfe on a time-series checkpoint (evaluation.evaluate_series):
    the score is that of the series 'diffkit sample' draws with the same flags, and the settings record them
    (restart, n = 2, K = 1: NFE 2 steps - 1 + 2 n K = 9 is 3 steps)."""
    from diffkit.metrics import correlational_score
    ck = series_run / "checkpoints" / "latest.safetensors"
    code, out, err = run_cli(capsys, "eval", "--checkpoint", str(ck), "--metrics", "correlational", "--num", "24",
                             "--seed", "5", *flags, "--no-progress", "--out", str(tmp_path / "e.json"))
    assert code == 0, err
    result = json.loads((tmp_path / "e.json").read_text())
    settings = result["settings"]
    assert settings["steps"] == 3 and settings["nfe"] == (9 if "--nfe" in flags else 3)
    assert (settings.get("restarts"), settings.get("spacing"), settings.get("final")) == (
        ([[0.1, 0.5, 1, 2]], None, None) if "--restarts" in flags else (None, "trailing", "zero"))
    code, out, err = run_cli(capsys, "sample", "--checkpoint", str(ck), "--num", "24", "--seed", "5", *flags,
                             "--out", str(tmp_path / "s.png"), "--no-progress")
    assert code == 0, err
    samples = to_unit_range(torch.from_numpy(np.load(tmp_path / "s.npy")).clamp(-1, 1))
    real = to_unit_range(sines(48, length=8, channels=3, seed=123)[:24])
    assert result["metrics"]["correlational"]["value"] == pytest.approx(correlational_score(real, samples),
                                                                         rel=1e-6, abs=1e-12)
