"""diffkit eval / train-evaluator / experiment on a tiny checkpoint trained here (seconds on a CPU)."""
import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffkit import cli
from diffkit.config import TrainConfig
from diffkit.errors import DiffkitError
from diffkit.evaluation import (evaluate, reference_images, strided_timesteps, nll_bits_per_dim)
from diffkit.loading import load_denoiser
from diffkit.metrics import classifier_frechet_distance, load_evaluator
from diffkit.training import Trainer

TINY = {"dataset": "digits", "img_size": 8, "channel": 16, "channel_mult": [1, 2], "attn": [1],
        "num_res_blocks": 1, "dropout": 0.0, "batch_size": 8, "max_steps": 2, "device": "cpu",
        "T": 100, "log_every": 1, "num_heads": 1, "ema_decay": 0.9}
COMMANDS = ["train_evaluator", "eval", "experiment"]


def main(args):
    saved = list(cli.COMMANDS)
    cli.COMMANDS[:] = saved + [c for c in COMMANDS if c not in saved]
    try:
        return cli.main([str(a) for a in args])
    finally:
        cli.COMMANDS[:] = saved


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 2-step tiny checkpoint on 8x8 digits and an evaluator for 8x8 digits."""
    root = tmp_path_factory.mktemp("tiny")
    cfg = TrainConfig.from_dict({**TINY, "save_weight_dir": str(root / "ckpt"), "sampled_dir": str(root / "s")})
    Trainer(cfg, progress=False, log=lambda *_: None).run()
    assert main(["train-evaluator", "--dataset", "digits", "--img-size", 8, "--epochs", 1,
                 "--out", root / "ev.safetensors", "--device", "cpu"]) == 0
    return root


def one_line_error(capsys, args, *needles):
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_train_evaluator_learns_the_digits(run_dir, capsys):
    net = load_evaluator(run_dir / "ev.safetensors")
    assert (net.config.image_size, net.config.in_channels) == (8, 1)
    images, labels = reference_images("digits", train=False, img_size=8)
    accuracy = float((net(images).argmax(1) == labels).float().mean())
    assert accuracy > 0.5  # 10 classes: chance is 0.1


def test_eval_fd_classifier_matches_the_metric_on_the_saved_samples(run_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["eval", "--checkpoint", run_dir / "ckpt" / "latest.safetensors", "--metrics",
                 "fd-classifier,confidence,classifier-score", "--num", 24, "--steps", 4,
                 "--evaluator", run_dir / "ev.safetensors", "--out", out, "--save-samples", tmp_path / "png",
                 "--device", "cpu", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "rank-deficient" in captured.err and "fd-classifier" in captured.out
    result = json.loads(out.read_text())
    fd = result["metrics"]["fd-classifier"]
    assert fd["num_samples"] == 24 and fd["num_reference"] == 597 and fd["rank_deficient"] is True
    # independent recomputation from the PNGs written (uint8 rounding changes the value slightly)
    net = load_evaluator(run_dir / "ev.safetensors")
    reference, _ = reference_images("digits", train=False, img_size=8)
    from diffkit.evaluation import load_image_folder
    expected = classifier_frechet_distance(net, load_image_folder(tmp_path / "png"), reference)
    assert fd["value"] == pytest.approx(expected, rel=0.02)
    # confidence = mean max softmax; classifier score = exp E KL(p(y|x) || p(y)) over 10 splits of
    # the original code (improved-gan), recomputed here from the evaluator's logits of the PNGs
    pngs = load_image_folder(tmp_path / "png")
    probs = torch.softmax(net(pngs).double(), dim=1)
    assert result["metrics"]["confidence"]["value"] == pytest.approx(float(probs.max(1).values.mean()), abs=0.02)
    n, splits = probs.shape[0], result["metrics"]["classifier-score"]["splits"]
    scores = []
    for i in range(splits):
        part = probs[i * n // splits:(i + 1) * n // splits]
        kl = (part * (part.log() - part.mean(0, keepdim=True).log())).sum(1).mean()
        scores.append(float(kl.exp()))
    assert result["metrics"]["classifier-score"]["mean"] == pytest.approx(float(np.mean(scores)), rel=0.02)
    # the settings name the evaluator file by its digest (another evaluator gives other numbers)
    assert result["settings"]["evaluator"]["file"] == str(run_dir / "ev.safetensors")
    assert len(result["settings"]["evaluator"]["sha256"]) == 64
    assert result["settings"]["evaluator"]["trained_on"]["dataset"] == "digits"  # what train-evaluator recorded


def test_an_evaluator_trained_on_other_data_is_warned_about(run_dir, tmp_path):
    from diffkit.metrics import load_evaluator as load, save_evaluator
    other = tmp_path / "fashion.safetensors"
    save_evaluator(load(run_dir / "ev.safetensors"), other, provenance={"dataset": "fashion-mnist", "img_size": 8})
    with pytest.warns(UserWarning, match="trained on fashion-mnist and the reference images are digits"):
        result = evaluate("fd-classifier", checkpoint=run_dir / "ckpt" / "latest.safetensors", num=16, steps=2,
                          evaluator=other, batch_size=16, device="cpu")
    assert result["settings"]["evaluator"]["trained_on"]["dataset"] == "fashion-mnist"


def test_eval_of_the_reference_images_themselves_is_zero_distance(run_dir, tmp_path, capsys):
    images, _ = reference_images("digits", train=False, img_size=8)
    folder = tmp_path / "real"
    folder.mkdir()
    for i, image in enumerate(((images[:, 0] + 1) * 127.5).round().to(torch.uint8).numpy()):
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    result = evaluate("fd-classifier", samples=folder, ref="digits", evaluator=run_dir / "ev.safetensors")
    assert result["metrics"]["fd-classifier"]["value"] == pytest.approx(0.0, abs=1e-6)


def test_nll_is_finite_and_the_strided_estimate_is_close(run_dir):
    denoiser = load_denoiser(run_dir / "ckpt" / "latest.safetensors")
    images, _ = reference_images("digits", train=False, img_size=8, limit=16)
    full = nll_bits_per_dim(denoiser, images, seed=0)
    ts = strided_timesteps(100, dense_below=20, stride=10)
    assert ts == [*range(20), 29, 39, 49, 59, 69, 79, 89, 99]
    strided = nll_bits_per_dim(denoiser, images, timesteps=ts, seed=0)
    assert math.isfinite(full["bpd"]) and full["bpd"] > 0
    assert full["timesteps_evaluated"] == 100 and strided["timesteps_evaluated"] == len(ts)
    assert abs(strided["bpd"] - full["bpd"]) < 0.02 * full["bpd"]
    # each image's noise is its own (seed + i): the batch size does not change the estimate
    by_five = nll_bits_per_dim(denoiser, images, timesteps=ts, seed=0, batch_size=5)
    assert by_five["bpd"] == pytest.approx(strided["bpd"], rel=1e-6)


def test_eval_nll_through_the_cli(run_dir, tmp_path, capsys):
    out = tmp_path / "nll.json"
    assert main(["eval", "--checkpoint", run_dir / "ckpt" / "latest.safetensors", "--metrics", "nll,nll-strided",
                 "--nll-num", 4, "--out", out, "--device", "cpu", "--no-progress"]) == 0
    result = json.loads(out.read_text())
    metrics = result["metrics"]
    assert metrics["nll"]["num_images"] == 4
    assert result["settings"]["ema"] is True and result["settings"]["batch_size"] > 0
    assert metrics["nll-strided"]["minus_full"] == pytest.approx(metrics["nll-strided"]["bpd"] - metrics["nll"]["bpd"])
    assert "nll-strided" in capsys.readouterr().out


def test_eval_nll_on_the_train_split(run_dir, tmp_path, capsys):
    """DDPM Table 1/2 report NLL "Test (Train)": --nll-split train bounds the first --nll-num images of
    the training split (digits: its first DIGITS_TRAIN_SIZE images), recorded in the JSON."""
    ckpt = run_dir / "ckpt" / "latest.safetensors"
    results = {}
    for split in ("train", "test"):
        out = tmp_path / f"{split}.json"
        assert main(["eval", "--checkpoint", ckpt, "--metrics", "nll", "--nll-num", 4, "--nll-split", split,
                     "--out", out, "--device", "cpu", "--no-progress"]) == 0
        results[split] = json.loads(out.read_text())
        header = capsys.readouterr().out.splitlines()[0]
        assert header == f"{ckpt}: no samples; nll on 4 {'digits ' if split == 'test' else ''}{split} images", header
        assert ("reference" in results[split]["settings"]) == (split == "test")  # train NLL loads no test set
        assert results[split]["settings"]["nll_split"] == split
        assert results[split]["settings"]["nll_num_images"] == 4
    denoiser = load_denoiser(ckpt)
    for split, train in (("train", True), ("test", False)):
        images, _ = reference_images("digits", train=train, img_size=8, limit=4)
        expected = nll_bits_per_dim(denoiser, images, seed=0)["bpd"]
        assert results[split]["metrics"]["nll"]["bpd"] == pytest.approx(expected, rel=1e-6)
    assert results["train"]["metrics"]["nll"]["bpd"] != results["test"]["metrics"]["nll"]["bpd"]
    with pytest.raises(DiffkitError, match="nll_split='val' is not allowed"):
        evaluate("nll", checkpoint=ckpt, nll_num=4, nll_split="val")
    with pytest.raises(DiffkitError, match="sampler 'ode' picks its own steps: give a fixed-step sampler"):
        evaluate("confidence", checkpoint=ckpt, sampler="ode", evaluator=run_dir / "ev.safetensors", num=4)


@pytest.mark.real_plots  # checks the tables' PNGs
def test_experiment_tables_are_written_with_their_shape(run_dir, tmp_path, capsys):
    ckpt = run_dir / "ckpt" / "latest.safetensors"
    common = ["--checkpoint", ckpt, "--num", 6, "--evaluator", run_dir / "ev.safetensors", "--metric", "confidence",
              "--out", tmp_path, "--device", "cpu", "--no-progress"]
    assert main(["experiment", "ddim-table", "--etas", "0,1,sigma_hat", "--steps", "2,5", *common]) == 0
    rows = list(csv.DictReader(open(tmp_path / "ddim_table.csv")))
    assert [(r["eta"], r["steps"]) for r in rows] == [(e, s) for e in ("0", "1", "sigma_hat") for s in ("2", "5")]
    assert all(r["num_samples"] == "6" and 0.1 <= float(r["confidence"]) <= 1 for r in rows)
    assert [r["nfe"] for r in rows[:2]] == ["2", "5"]
    markdown = (tmp_path / "ddim_table.md").read_text()
    table_lines = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table_lines) == 2 + 3 and all(line.count("|") == 4 for line in table_lines)
    assert "6 samples per cell" in markdown
    assert Image.open(tmp_path / "ddim_table.png").size[0] > 100

    assert main(["experiment", "sampler-table", "--samplers",
                 "ddim,ddpm,dpm-solver++-2m,dpm-solver++-2m@karras:sigma_min", "--steps", "3",
                 "--mixed-precision", "bf16", *common]) == 0
    table = json.loads((tmp_path / "sampler_table.json").read_text())
    assert table["rows"] == ["ddim", "ddpm", "dpm-solver++-2m", "dpm-solver++-2m@karras:sigma_min"]
    assert len(table["values"]) == 4 and len(table["values"][0]) == 1
    assert table["values"][2][0] != table["values"][3][0]  # NAME@SPACING:FINAL really runs on that grid
    assert any("bf16 autocast" in note for note in table["notes"])
    assert (tmp_path / "sampler_table.png").is_file()
    # a misspelt sampler fails before any sampling (it used to become a note of the finished table)
    assert main(["experiment", "sampler-table", "--samplers", "ddim,no-such-sampler", "--steps", "3", *common]) == 2
    assert "sampler='no-such-sampler'" in capsys.readouterr().err


def _network_times(denoiser):
    """Record the time every network call of ``denoiser`` gets (one value per call)."""
    times = []
    denoiser.net.register_forward_pre_hook(lambda _, args: times.append(float(args[1][0])))
    return times


def test_ddim_table_quadratic_spacing_runs_every_row_on_the_quadratic_tau(run_dir, tmp_path, capsys):
    """DDIM Sec. 5 / App. D.2 (seed 000): tau_i = floor(c i^2) with c = 0.8 T / (S - 1)^2, as the
    reference code (ermongroup/ddim runners/diffusion.py) writes it: int(linspace(0, sqrt(0.8 T), S)^2)."""
    from diffkit.experiments import ddim_table, experiment_scorer
    denoiser = load_denoiser(run_dir / "ckpt" / "latest.safetensors")
    scorer = experiment_scorer("confidence", denoiser, evaluator=run_dir / "ev.safetensors")
    T, S = denoiser.schedule.num_timesteps, 5
    reference = sorted((int(v) for v in np.linspace(0, np.sqrt(0.8 * T), S) ** 2), reverse=True)
    assert reference == sorted((math.floor(0.8 * T / (S - 1) ** 2 * i * i) for i in range(S)), reverse=True)
    assert reference == [80, 45, 20, 5, 0]  # T = 100
    times = _network_times(denoiser)
    table = ddim_table(denoiser, scorer, etas=[0.0, 1.0, "sigma_hat"], steps_list=[S], num=4, batch_size=4,
                       spacing="quadratic")
    assert times == reference * 3  # one batch per row, every row on the quadratic grid
    assert table.spacing == "quadratic" and table.as_dict()["spacing"] == "quadratic"
    assert any("quadratic" in note for note in table.notes)
    times.clear()
    linear = ddim_table(denoiser, scorer, etas=[0.0], steps_list=[S], num=4, batch_size=4)
    assert times == [80, 60, 40, 20, 0] and linear.spacing == "linear"  # floor(c i), c = T / S: the default
    # the CLI flag, recorded in the JSON; an unknown spacing is refused by the parser
    assert main(["experiment", "ddim-table", "--checkpoint", run_dir / "ckpt" / "latest.safetensors", "--etas", "0",
                 "--steps", S, "--num", 4, "--evaluator", run_dir / "ev.safetensors", "--metric", "confidence",
                 "--spacing", "quadratic", "--out", tmp_path, "--device", "cpu", "--no-progress"]) == 0
    assert json.loads((tmp_path / "ddim_table.json").read_text())["spacing"] == "quadratic"
    with pytest.raises(SystemExit):
        main(["experiment", "ddim-table", "--checkpoint", "x", "--spacing", "trailing"])
    assert "invalid choice: 'trailing'" in capsys.readouterr().err


def test_experiment_cache_message_counts_the_batches_an_out_of_memory_halving_made(run_dir, tmp_path, capsys):
    """4 samples at --batch-size 4 on a device that holds 2: two batches of 2 per cell, drawn and
    stored, then both read back (the message used to count ceil(4 / 4) = 1 batch)."""
    from diffkit.experiments import ddim_table, experiment_scorer
    denoiser = load_denoiser(run_dir / "ckpt" / "latest.safetensors")
    scorer = experiment_scorer("confidence", denoiser, evaluator=run_dir / "ev.safetensors")
    net = denoiser.net

    def holds_two(x, *args, **kwargs):
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return net(x, *args, **kwargs)
    denoiser.net = holds_two
    for loaded in (0, 2):
        ddim_table(denoiser, scorer, etas=[0.0], steps_list=[2], num=4, batch_size=4, progress=True,
                   cache_dir=tmp_path / "cache")
        out = capsys.readouterr().out
        assert f"({loaded} of 2 batches from the cache)" in out, out
    assert len(list((tmp_path / "cache").glob("*/samples-*-00002-*"))) == 2


def test_experiment_cells_after_an_out_of_memory_halving_start_at_the_size_that_fit(run_dir, capsys):
    """On a device that holds 2 samples, --batch-size 4: the first cell runs out of memory once and
    halves to 2; the later cells start at 2 (they used to try 4 again, each running out of memory).
    Sample i comes from seed + i whatever the batch, so the table is exactly that of batch 2
    throughout, and that of an unlimited device at batch 4 to float32 rounding."""
    from diffkit.experiments import ddim_table, experiment_scorer
    denoiser = load_denoiser(run_dir / "ckpt" / "latest.safetensors")
    scorer = experiment_scorer("confidence", denoiser, evaluator=run_dir / "ev.safetensors")
    net = denoiser.net
    sizes = []

    def holds_two(x, *args, **kwargs):
        sizes.append(x.shape[0])
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return net(x, *args, **kwargs)
    grid = dict(etas=[0.0, 1.0], steps_list=[2, 3], num=4, seed=5)
    free = ddim_table(denoiser, scorer, batch_size=4, **grid)
    halves = ddim_table(denoiser, scorer, batch_size=2, **grid)
    denoiser.net = holds_two
    table = ddim_table(denoiser, scorer, batch_size=4, **grid)
    assert capsys.readouterr().err.count("out of memory with a batch of 4; retrying with 2") == 1
    assert sizes.count(4) == 1 and set(sizes) == {2, 4}  # 4 samples in 2 + 2, every cell after the first at 2
    assert len(sizes) == 1 + 2 * (2 + 3 + 2 + 3)  # the failed call, then 2 batches of each cell's steps
    assert table.values == halves.values and table.nfe == free.nfe == [[2, 3], [2, 3]]
    # batch 4 against 2 + 2: the same samples, to float32 rounding (the network's kernels round per batch shape)
    torch.testing.assert_close(torch.tensor(table.values), torch.tensor(free.values), rtol=1e-6, atol=1e-9)
    assert [n for n in table.notes if "out of memory" in n] == [
        "out of memory with a batch of 4 at 0, 2 steps: batches of 2 from there on"]
    assert not any("out of memory" in n for n in free.notes + halves.notes)


def test_ddim_table_clips_the_sigma_hat_row_as_the_reference_code_unless_told(run_dir, tmp_path, monkeypatch):
    """ermongroup/ddim clamps x0 in ddpm_steps (its sigma-hat process) and not in generalized_steps
    (the eta rows); that sampler itself is checked against the reference code in
    test_sampler_references.py. Here: which rows the table runs with which thresholding."""
    import diffkit.experiments as experiments
    seen = []
    real = experiments.generate_samples

    def recording(denoiser, num, **kwargs):
        seen.append((kwargs.get("eta"), kwargs.get("thresholding")))
        return real(denoiser, num, **kwargs)

    monkeypatch.setattr(experiments, "generate_samples", recording)
    common = ["experiment", "ddim-table", "--checkpoint", run_dir / "ckpt" / "latest.safetensors", "--etas",
              "0,1,sigma_hat", "--steps", 2, "--num", 4, "--evaluator", run_dir / "ev.safetensors", "--metric",
              "confidence", "--out", tmp_path, "--device", "cpu", "--no-progress"]
    assert main(common) == 0
    assert seen == [(0.0, None), (1.0, None), ("sigma_hat", "clip")]
    notes = json.loads((tmp_path / "ddim_table.json").read_text())["notes"]
    assert any("sigma_hat row: predicted x0 clipped to [-1, 1]" in n and "ddpm_steps" in n for n in notes)
    for flag, expected in (("none", None), ("dynamic", "dynamic"), ("clip", "clip")):
        seen.clear()
        assert main([*common, "--thresholding", flag]) == 0
        assert seen == [(0.0, expected), (1.0, expected), ("sigma_hat", expected)], flag
        notes = json.loads((tmp_path / "ddim_table.json").read_text())["notes"]
        assert not any("sigma_hat row:" in n for n in notes)
    seen.clear()
    assert main(["experiment", "sampler-table", *common[2:4], "--samplers", "ddim", *common[6:]]) == 0
    assert seen == [(None, None)]  # the sampler table thresholds nothing unless told


def test_sampler_table_passes_eta_to_its_ddim_rows(run_dir, tmp_path, monkeypatch, capsys):
    import diffkit.experiments as experiments
    seen = []
    real = experiments.generate_samples

    def recording(denoiser, num, **kwargs):
        seen.append((kwargs["sampler"], kwargs.get("spacing"), kwargs.get("eta")))
        return real(denoiser, num, **kwargs)

    monkeypatch.setattr(experiments, "generate_samples", recording)
    common = ["experiment", "sampler-table", "--checkpoint", run_dir / "ckpt" / "latest.safetensors", "--steps", 3,
              "--num", 4, "--evaluator", run_dir / "ev.safetensors", "--metric", "confidence", "--out", tmp_path,
              "--device", "cpu", "--no-progress"]
    assert main([*common, "--samplers", "ddim,ddim@quadratic,s-pndm", "--eta", "1"]) == 0
    assert seen == [("ddim", None, 1.0), ("ddim", "quadratic", 1.0), ("s-pndm", None, None)]
    assert "ddim rows: eta = 1" in json.loads((tmp_path / "sampler_table.json").read_text())["notes"]
    one_line_error(capsys, [*common, "--samplers", "s-pndm", "--eta", "1"], "eta=1.0 applies to ddim rows")
    one_line_error(capsys, [*common, "--samplers", "ddim,ode"], "sampler 'ode' picks its own steps, so a samplers x "
                   "steps table has no row for it")


def test_sampler_table_nfe_columns_spend_exactly_that_many(run_dir, tmp_path, monkeypatch, capsys):
    """--nfe: each cell runs the step count whose network calls, counted while sampling, equal the column
    (heun 2 s - 1, restart 2 s - 1 + 2 n K, ddim s); --restarts reaches the restart rows."""
    import diffkit.experiments as experiments
    seen = []
    real = experiments.generate_samples

    def recording(denoiser, num, **kwargs):
        seen.append((kwargs["sampler"], kwargs["steps"], kwargs.get("restarts")))
        return real(denoiser, num, **kwargs)

    monkeypatch.setattr(experiments, "generate_samples", recording)
    common = ["experiment", "sampler-table", "--checkpoint", run_dir / "ckpt" / "latest.safetensors", "--num", 4,
              "--evaluator", run_dir / "ev.safetensors", "--metric", "confidence", "--out", tmp_path,
              "--device", "cpu", "--no-progress"]
    assert main([*common, "--samplers", "ddim,heun,restart", "--nfe", "9,8", "--restarts", "0.3:1.2:2:1"]) == 0
    assert seen == [("ddim", 9, None), ("ddim", 8, None), ("heun", 5, None), ("restart", 3, [[0.3, 1.2, 2, 1]])]
    table = json.loads((tmp_path / "sampler_table.json").read_text())
    assert (table["columns"], table["steps"]) == ("nfe", [9, 8])
    assert table["nfe"] == [[9, 8], [9, None], [9, None]]  # counted calls per sample, not the rule
    assert table["cell_steps"] == [[9, 8], [5, None], [3, None]]
    assert "restart rows: restarts (t_min, t_max, K, n) = [[0.3, 1.2, 2, 1]]" in table["notes"]
    assert any("heun at NFE 8 not run" in note and "7, 9" in note for note in table["notes"])
    rows = list(csv.DictReader(open(tmp_path / "sampler_table.csv")))
    assert [(r["sampler"], r["steps"], r["nfe"]) for r in rows] == [
        ("ddim", "9", "9"), ("ddim", "8", "8"), ("heun", "5", "9"), ("heun", "", "8"), ("restart", "3", "9"),
        ("restart", "", "8")]
    assert "| sampler \\ nfe | 9 | 8 |" in (tmp_path / "sampler_table.md").read_text()
    # an NFE cell is the step-count cell it runs: heun at NFE 9 equals heun at 5 steps, and restart with no
    # interval ('none') is heun (bit-identical samples)
    assert main([*common, "--samplers", "heun,restart", "--steps", "5", "--restarts", "none", "--name", "s"]) == 0
    by_steps = json.loads((tmp_path / "s.json").read_text())["values"]
    assert by_steps[0][0] == by_steps[1][0] == table["values"][1][0]
    capsys.readouterr()
    one_line_error(capsys, [*common, "--samplers", "heun", "--nfe", "9", "--restarts", "0.3:1.2:2:1"],
                   "applies to restart rows")
    for flags, needles in ((["--restarts", "0.5:1.5:2"], ["'0.5:1.5:2' is not an interval T_MIN:T_MAX:K:N"]),
                           (["--restarts", "1.5:0.5:1:1"], ["t_min=1.5 >= t_max=0.5"]),
                           (["--restarts", "0.1:2:0:5"], ["'0.1:2:0:5': K=0", "K must be >= 1", "'none'"]),
                           (["--steps", "5"], ["--nfe", "--steps"])):  # argparse's one line, status 2
        with pytest.raises(SystemExit) as exit_:
            main([*common, "--samplers", "restart", "--nfe", "9", *flags])
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and len(err.splitlines()) == 1 and all(n in err for n in needles), err
    one_line_error(capsys, [*common, "--samplers", "heun", "--nfe", "0"], "nfe=0")
    one_line_error(capsys, [*common, "--samplers", "heun,ode", "--nfe", "9"], "sampler 'ode' picks its own steps, "
                   "so a samplers x NFE table has no row for it")
    assert len((tmp_path / "sampler_table.csv").read_text().splitlines()) == 7  # the refused runs wrote nothing


def test_sampler_table_nfe_refuses_a_cell_whose_counted_calls_miss_the_column(run_dir, tmp_path, monkeypatch,
                                                                               capsys):
    """The NFE a cell spends is counted while it samples; a step count that spends another NFE than its
    column (here: steps_for_nfe broken to give heun 4 steps, 2 * 4 - 1 = 7 calls, for NFE 9) is a
    one-line error, not a cell filed under the wrong column."""
    import diffkit.sampling as sampling
    monkeypatch.setattr(sampling, "steps_for_nfe", lambda denoiser, sampler, nfe, **options: 4)
    one_line_error(capsys, ["experiment", "sampler-table", "--checkpoint", run_dir / "ckpt" / "latest.safetensors",
                            "--num", 2, "--evaluator", run_dir / "ev.safetensors", "--metric", "confidence",
                            "--out", tmp_path, "--device", "cpu", "--no-progress", "--samplers", "heun",
                            "--nfe", "9"],
                   "heun with 4 steps spent 7 network evaluations per sample, not the column's 9")
    assert not (tmp_path / "sampler_table.json").exists()


def test_sampler_table_ledger_keys_restart_cells_by_their_intervals(run_dir, tmp_path, capsys):
    """A restart row's --restarts is part of its ledger key: the same row with other intervals is a new
    cell, not the default's cell reused."""
    common = ["experiment", "sampler-table", "--checkpoint", run_dir / "ckpt" / "latest.safetensors", "--num", 2,
              "--evaluator", run_dir / "ev.safetensors", "--metric", "confidence", "--out", tmp_path,
              "--device", "cpu", "--no-progress", "--samplers", "restart", "--steps", "2",
              "--ledger", tmp_path / "ledger.json"]

    def ledger_note(name):
        notes = json.loads((tmp_path / f"{name}.json").read_text())["notes"]
        return [note.split(": ", 1)[1] for note in notes if note.startswith("score ledger")]
    assert main([*common, "--name", "a"]) == 0
    assert ledger_note("a") == ["0 cells taken from it, 1 added"]
    assert main([*common, "--restarts", "0.3:1.2:2:1", "--name", "b"]) == 0
    assert ledger_note("b") == ["0 cells taken from it, 1 added"]


def test_missing_inception_weights_say_where_and_how(run_dir, tmp_path, capsys, monkeypatch):
    ckpt = run_dir / "ckpt" / "latest.safetensors"
    missing = tmp_path / "nope.pth"
    one_line_error(capsys, ["eval", "--checkpoint", ckpt, "--metrics", "fid", "--inception-weights", missing,
                            "--out", tmp_path / "r.json"], str(missing), "download")
    monkeypatch.delenv("DIFFKIT_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    one_line_error(capsys, ["eval", "--checkpoint", ckpt, "--metrics", "is", "--out", tmp_path / "r.json"],
                   "DIFFKIT_INCEPTION_WEIGHTS", str(tmp_path / "cache"), "--inception-weights")


def test_inception_weights_without_an_inception_metric_are_a_one_line_error(run_dir, tmp_path, capsys):
    """--inception-weights with metrics none of which uses Inception (fid, is, kid, pr) is refused, naming
    those metrics, before anything is written (not silently ignored)."""
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    for metrics in ("fd-classifier", "nll,classifier-score"):
        one_line_error(capsys, ["eval", "--checkpoint", run_dir / "ckpt" / "latest.safetensors", "--metrics", metrics,
                                "--inception-weights", weights, "--evaluator", run_dir / "ev.safetensors",
                                "--save-samples", tmp_path / "s" / "imgs", "--out", tmp_path / "o" / "r.json"],
                       "--inception-weights", "fid, is, kid, pr", f"--metrics {metrics}")
    assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists()


def test_eval_restarts_reach_the_samples_and_their_nfe(run_dir, tmp_path, capsys):
    """eval --sampler restart --restarts 0.1:1:1:2 (sample's flag) scores the images of diffkit.sample(...,
    sampler="restart", restarts=[...]) from the same noise (sample i: x_T from seed i, its step noise from
    seed 10000019 + i), records the intervals, and its NFE is Heun's 2 steps - 1 plus 2 n K = 4; with
    another sampler it is a one-line error that writes nothing."""
    import diffkit
    from diffkit.images import to_uint8
    from diffkit.loading import load_denoiser
    from diffkit.models.network import sample_shape
    from diffkit.noise import randn, sample_generators
    ckpt = run_dir / "ckpt" / "latest.safetensors"
    common = ["eval", "--checkpoint", ckpt, "--metrics", "fd-classifier", "--evaluator", run_dir / "ev.safetensors",
              "--num", "4", "--steps", "3", "--device", "cpu", "--no-progress"]
    assert main([*common, "--sampler", "restart", "--restarts", "0.1:1:1:2", "--save-samples", tmp_path / "s",
                 "--out", tmp_path / "r.json"]) == 0
    settings = json.loads((tmp_path / "r.json").read_text())["settings"]
    assert settings["sampler"] == "restart" and settings["restarts"] == [[0.1, 1.0, 1, 2]]
    assert settings["nfe"] == 2 * 3 - 1 + 2 * 2 * 1
    den = load_denoiser(ckpt)
    noise_gens, gens = sample_generators(0, 0, 4)
    noise = randn((4, *sample_shape(den.meta["unet"])), noise_gens)
    want = to_uint8(diffkit.sample(den, noise, sampler="restart", steps=3, generator=gens, progress=False,
                                   restarts=[(0.1, 1.0, 1, 2)]))
    written = np.stack([np.asarray(Image.open(p)).reshape(want[0].shape)
                        for p in sorted((tmp_path / "s").glob("*.png"))])
    assert np.array_equal(written, want)
    capsys.readouterr()
    one_line_error(capsys, [*common, "--sampler", "heun", "--restarts", "0.1:1:1:2", "--out",
                            tmp_path / "o" / "x.json"],
                   "--restarts sets the intervals of the restart sampler, not of 'heun'; give --sampler restart")
    assert not (tmp_path / "o").exists()


def test_eval_gamma_reaches_the_tcd_samples_and_the_settings(run_dir, tmp_path, capsys):
    """eval --sampler tcd --gamma 0.5 (sample's flag) scores the images of diffkit.sample(..., sampler="tcd",
    gamma=0.5) from the same noise and records gamma (it was not settable: eval ran tcd at 0.3 only); with
    another sampler it is a one-line error that writes nothing."""
    import diffkit
    from diffkit.images import to_uint8
    from diffkit.loading import load_denoiser
    from diffkit.models.network import sample_shape
    from diffkit.noise import randn, sample_generators
    ckpt = run_dir / "ckpt" / "latest.safetensors"
    common = ["eval", "--checkpoint", ckpt, "--metrics", "fd-classifier", "--evaluator", run_dir / "ev.safetensors",
              "--num", "4", "--steps", "3", "--device", "cpu", "--no-progress"]
    assert main([*common, "--sampler", "tcd", "--gamma", "0.5", "--save-samples", tmp_path / "s",
                 "--out", tmp_path / "r.json"]) == 0
    settings = json.loads((tmp_path / "r.json").read_text())["settings"]
    assert settings["sampler"] == "tcd" and settings["gamma"] == 0.5 and settings["nfe"] == 3
    den = load_denoiser(ckpt)
    noise_gens, gens = sample_generators(0, 0, 4)
    noise = randn((4, *sample_shape(den.meta["unet"])), noise_gens)
    want = to_uint8(diffkit.sample(den, noise, sampler="tcd", steps=3, generator=gens, progress=False, gamma=0.5))
    written = np.stack([np.asarray(Image.open(p)).reshape(want[0].shape)
                        for p in sorted((tmp_path / "s").glob("*.png"))])
    assert np.array_equal(written, want)
    capsys.readouterr()
    one_line_error(capsys, [*common, "--sampler", "heun", "--gamma", "0.5", "--out", tmp_path / "o" / "x.json"],
                   "--gamma 0.5 sets the stochasticity of the tcd sampler, not of 'heun'; give --sampler tcd")
    assert not (tmp_path / "o").exists()
    with pytest.raises(DiffkitError, match=r"^option 'gamma' is not one sampler 'ddim' takes"):
        evaluate("fd-classifier", checkpoint=ckpt, evaluator=run_dir / "ev.safetensors", num=4, steps=3, sampler="ddim",
                 gamma=0.5)


@pytest.mark.parametrize("table", [["ddim-table", "--etas", "0", "--steps", "2"],
                                   ["sampler-table", "--samplers", "ddim", "--steps", "2"]])
def test_experiment_refuses_unused_inception_weights_as_eval_does(run_dir, tmp_path, capsys, table):
    """experiment --metric fd-classifier --inception-weights W ran the table and ignored W; the refusal is
    eval's own check (evaluation.check_scoring_files_used), naming --metric, before any folder is made."""
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    one_line_error(capsys, ["experiment", *table, "--checkpoint", run_dir / "ckpt" / "latest.safetensors",
                            "--metric", "fd-classifier", "--num", "50", "--evaluator", run_dir / "ev.safetensors",
                            "--inception-weights", weights, "--device", "cpu", "--no-progress",
                            "--out", tmp_path / "o" / "t"],
                   "--inception-weights is used by the metrics fid, is, kid, pr; --metric fd-classifier has none")
    assert sorted(tmp_path.iterdir()) == [weights]


def test_an_evaluator_no_metric_uses_is_refused_not_ignored(run_dir, tmp_path, capsys):
    """eval --metrics nll --evaluator EV (and an experiment table of fid) loaded nothing from EV and said nothing;
    like --inception-weights it is a one-line error naming the metrics that use it, before anything is written."""
    ckpt = run_dir / "ckpt" / "latest.safetensors"
    users = "--evaluator is used by the metrics fd-classifier, classifier-score, class-accuracy, confidence"
    one_line_error(capsys, ["eval", "--checkpoint", ckpt, "--metrics", "nll", "--nll-num", "4", "--evaluator",
                            run_dir / "ev.safetensors", "--out", tmp_path / "o" / "r.json", "--no-progress"],
                   f"{users}; --metrics nll has none of them")
    one_line_error(capsys, ["experiment", "ddim-table", "--checkpoint", ckpt, "--etas", "0", "--steps", "2",
                            "--metric", "fid", "--evaluator", run_dir / "ev.safetensors", "--out", tmp_path / "o"],
                   f"{users}; --metric fid has none of them")
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_a_one_line_error_with_status_2(run_dir, tmp_path, capsys):
    ckpt = run_dir / "ckpt" / "latest.safetensors"
    ev = run_dir / "ev.safetensors"
    one_line_error(capsys, ["eval", "--checkpoint", ckpt, "--metrics", "fid,sharpness"], "sharpness", "fd-classifier")
    one_line_error(capsys, ["eval", "--checkpoint", ckpt, "--num", 1, "--evaluator", ev,
                            "--out", tmp_path / "r.json"], "too few", "at least 2")
    one_line_error(capsys, ["eval", "--checkpoint", ckpt, "--out", tmp_path / "r.json"], "train-evaluator")
    one_line_error(capsys, ["eval", "--checkpoint", ckpt, "--metrics", "class-accuracy", "--evaluator", ev,
                            "--out", tmp_path / "r.json"], "class-conditional")
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a.png")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(folder / "b.png")
    one_line_error(capsys, ["eval", "--samples", folder, "--ref", "digits", "--evaluator", ev,
                            "--out", tmp_path / "r.json"], "b.png", "9x9", "same size")
    one_line_error(capsys, ["eval", "--samples", folder, "--metrics", "nll", "--out", tmp_path / "r.json"],
                   "--checkpoint")
    one_line_error(capsys, ["experiment", "ddim-table", "--checkpoint", ckpt, "--etas", "0,fast",
                            "--evaluator", ev], "fast", "sigma_hat")
    one_line_error(capsys, ["experiment", "sampler-table", "--checkpoint", ckpt, "--samplers", "ddim@warp",
                            "--evaluator", ev, "--out", tmp_path], "warp", "logsnr")
    one_line_error(capsys, ["experiment", "sampler-table", "--checkpoint", ckpt, "--metric", "nll",
                            "--evaluator", ev, "--out", tmp_path], "nll")


def test_what_cannot_be_scored_is_refused_before_any_sampling(run_dir, tmp_path, capsys):
    """A count or metric the scorer cannot take was refused only after sampling (and caching) a cell."""
    ckpt = run_dir / "ckpt" / "latest.safetensors"
    ev = run_dir / "ev.safetensors"
    cache = tmp_path / "cache"
    common = ["experiment", "ddim-table", "--checkpoint", ckpt, "--etas", "0", "--steps", "2", "--evaluator", ev,
              "--cache-dir", cache, "--out", tmp_path / "t", "--device", "cpu"]
    one_line_error(capsys, [*common, "--num", 1], "too few")
    (tmp_path / "t" / "ddim_table.png").mkdir(parents=True)  # an output that is a folder: refused up front
    one_line_error(capsys, [*common, "--num", 4], "ddim_table.png' is a folder")
    (tmp_path / "t" / "ddim_table.png").rmdir()
    one_line_error(capsys, [*common, "--num", 4, "--metric", "class-accuracy"], "class-conditional")
    assert not list(cache.rglob("samples-*"))
    one_line_error(capsys, ["eval", "--checkpoint", ckpt, "--evaluator", ev, "--metrics", "fd-classifier,nll-strided",
                            "--nll-num", 1, "--num", 4, "--save-samples", tmp_path / "saved",
                            "--out", tmp_path / "r.json"], "nll_num=1")
    assert not (tmp_path / "saved").exists()


def test_an_inception_score_of_few_samples_keeps_two_per_split(run_dir):
    """With splits = min(10, n), n <= 10 gave splits of one sample, whose score is exactly 1."""
    from diffkit.evaluation import SampleScorer
    from diffkit.metrics import load_evaluator
    scorer = SampleScorer(["classifier-score"], evaluator=load_evaluator(run_dir / "ev.safetensors"))
    images, _ = reference_images("digits", train=False, img_size=8)
    with pytest.warns(RuntimeWarning, match="7 samples give 3 split"):
        score = scorer.score(images[:7])["classifier-score"]
    assert score["splits"] == 3 and score["mean"] > 1.0 + 1e-4  # splits of one sample gave exactly 1
    assert scorer.score(images[:40])["classifier-score"]["splits"] == 10


@pytest.mark.real_plots  # draws tables
def test_table_plots_use_a_log_scale_when_one_cell_diverged(tmp_path, monkeypatch):
    import matplotlib.axes
    from diffkit.experiments import ExperimentTable, plot_table
    scales = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_yscale", lambda self, value, **kw: scales.append(value))
    diverged = ExperimentTable("t", "fd-classifier", "sampler", ["dpm-solver", "s-pndm"], [10, 20],
                               [[1198.0, 144.7], [91.1, None]], [[10, 20], [11, None]], 2000, [], 0.0)
    for kind in ("heatmap", "lines"):
        assert Image.open(plot_table(diverged, tmp_path / f"{kind}.png", kind)).size[0] > 100
    assert scales == ["log"]  # the lines plot; the heat-map takes a LogNorm colour scale
    close = ExperimentTable("t", "fd-classifier", "sampler", ["a", "b"], [10, 20],
                            [[135.5, 111.9], [0.0, 92.6]], [[10, 20], [10, 20]], 2000, [], 0.0)
    plot_table(close, tmp_path / "close.png", "lines")
    assert scales == ["log"]  # within 10x (and a zero): linear


@pytest.mark.parametrize("metrics", ["nll-strided", "rate-distortion", "nll-strided,rate-distortion", "nll"])
def test_one_nll_image_is_refused_for_every_bound_metric(run_dir, tmp_path, metrics):
    """A bound's standard error needs 2 images: one is a one-line error before any network call
    (the shared strided pass of nll-strided and rate-distortion skipped the check once)."""
    folder = tmp_path / "one"
    folder.mkdir()
    Image.new("L", (8, 8), 128).save(folder / "a.png")
    with pytest.raises(DiffkitError, match="NLL images: 1 image"):
        evaluate(metrics, checkpoint=run_dir / "ckpt" / "latest.safetensors", ref="folder", data_dir=str(folder),
                 nll_split="train", nll_num=5, device="cpu")


def test_generate_samples_takes_a_wrapped_loaded_denoiser(run_dir):
    """A wrapper (here x0 clipped to [-0.05, 0.05]) has no meta of its own: the loaded model's is
    used, and the wrapper is what samples (DDIM's last step returns the clipped x0)."""
    from diffkit.denoiser import ThresholdedDenoiser
    from diffkit.evaluation import generate_samples
    den = load_denoiser(run_dir / "ckpt" / "latest.safetensors")
    plain = generate_samples(den, 6, steps=3, seed=0)
    clipped = generate_samples(ThresholdedDenoiser(den, "clip", max_value=0.05), 6, steps=3, seed=0)
    assert clipped.shape == plain.shape == (6, 1, 8, 8)
    assert plain.abs().max() > 0.5 and clipped.abs().max() <= 0.05 + 1e-6


def test_a_sample_cache_refuses_a_wrapped_denoiser(run_dir, tmp_path):
    """The cache key holds the loaded model, not a wrapper's settings: two clip levels would share
    one cache entry, so a wrapped denoiser is refused in one line."""
    from diffkit.denoiser import ThresholdedDenoiser
    from diffkit.sample_cache import open_cache
    den = load_denoiser(run_dir / "ckpt" / "latest.safetensors")
    assert open_cache(tmp_path, den) is not None
    with pytest.raises(DiffkitError, match="a ThresholdedDenoiser around it has settings the key does not hold"):
        open_cache(tmp_path, ThresholdedDenoiser(den, "clip", max_value=0.05))
    from diffkit.evaluation import generate_samples  # nor may a wrapper be drawn into the loaded model's cache
    with pytest.raises(DiffkitError, match="a ThresholdedDenoiser around it"):
        generate_samples(ThresholdedDenoiser(den, "clip", max_value=0.05), 2, steps=2, cache=open_cache(tmp_path, den))


def test_eval_prints_its_warnings_also_when_it_fails(capsys):
    """A warning raised before a command's error is printed (with the error), numpy's with its category."""
    import warnings

    from diffkit.commands.eval import printed_warnings
    from diffkit.errors import DiffkitWarning
    with pytest.raises(DiffkitError):
        with printed_warnings():
            warnings.warn("first diffkit note", DiffkitWarning)
            warnings.warn("first diffkit note", DiffkitWarning)  # a repeat: printed once
            np.log(np.zeros(1))  # numpy's RuntimeWarning: divide by zero
            raise DiffkitError("then an error")
    err = capsys.readouterr().err
    assert err.count("DiffkitWarning: first diffkit note") == 1 and "RuntimeWarning: divide by zero" in err, err


def test_eval_header_names_the_samples_and_the_images_the_bound_is_on():
    """The line above eval's table: samples against the reference; the NLL metrics' images, not the
    reference set they were taken from (which nothing was compared with when no samples were drawn)."""
    from diffkit.commands.eval import header_line
    nll = {"nll_split": "test", "nll_num_images": 8, "reference": "digits", "num_reference": 597}
    assert header_line({"settings": {"checkpoint": "c", **nll}, "metrics": {"rate-distortion": {}}}) \
        == "c: no samples; rate-distortion on 8 digits test images"
    both = {"checkpoint": "c", **nll, "num_samples": 24, "sampler": "ddim", "steps": 50}
    assert header_line({"settings": both, "metrics": {"fid": {}, "nll": {}}}) \
        == "c: 24 samples (ddim, 50 steps) vs 597 digits test images; nll on 8 digits test images"
    assert header_line({"settings": {"samples": "s", "num_samples": 9, "reference": "digits", "num_reference": 597},
                        "metrics": {"fid": {}}}) == "s: 9 samples vs 597 digits test images"


@pytest.mark.parametrize("flag", [["--sampler", "heun"], ["--steps", "7"], ["--nfe", "5"], ["--eta", "1"],
                                  ["--restarts", "none"], ["--gamma", "0.5"],
                                  ["--spacing", "trailing"], ["--final", "zero"], ["--thresholding", "clip"],
                                  ["--save-samples", "SAVED"], ["--cache-dir", "CACHE"]])
def test_sampling_flags_with_samples_are_refused_not_ignored(run_dir, tmp_path, capsys, flag):
    """eval --samples DIR scores the PNGs as they are; a flag that sets how a checkpoint is sampled (or where its
    samples go) was silently ignored."""
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f"{i}.png")
    value = {"SAVED": tmp_path / "saved", "CACHE": tmp_path / "cache"}.get(flag[1], flag[1])
    one_line_error(capsys, ["eval", "--samples", folder, "--ref", "digits", "--evaluator", run_dir / "ev.safetensors",
                            flag[0], value, "--out", tmp_path / "o" / "r.json"],
                   f"{flag[0]} applies to sampling a --checkpoint; --samples {str(folder)!r} are scored as they are")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pngs"]


def test_eval_spacing_and_final_flags_reach_the_samples(run_dir, tmp_path, capsys):
    """eval --spacing / --final (add_solver_flags, as sample takes them) score the images of diffkit.sample(...,
    spacing=, final=) from the same noise and are recorded; before, the grid was only --sampler NAME@SPACING:FINAL."""
    import diffkit
    from diffkit.images import to_uint8
    from diffkit.loading import load_denoiser
    from diffkit.models.network import sample_shape
    from diffkit.noise import randn, sample_generators
    ckpt = run_dir / "ckpt" / "latest.safetensors"
    assert main(["eval", "--checkpoint", ckpt, "--metrics", "fd-classifier", "--evaluator", run_dir / "ev.safetensors",
                 "--num", "4", "--steps", "3", "--sampler", "dpm-solver++-2m", "--spacing", "trailing", "--final",
                 "zero", "--device", "cpu", "--no-progress", "--save-samples", tmp_path / "s",
                 "--out", tmp_path / "r.json"]) == 0
    settings = json.loads((tmp_path / "r.json").read_text())["settings"]
    assert (settings["sampler"], settings["spacing"], settings["final"]) == ("dpm-solver++-2m", "trailing", "zero")
    den = load_denoiser(ckpt)
    noise_gens, gens = sample_generators(0, 0, 4)
    noise = randn((4, *sample_shape(den.meta["unet"])), noise_gens)
    want = to_uint8(diffkit.sample(den, noise, sampler="dpm-solver++-2m", steps=3, generator=gens, progress=False,
                                   spacing="trailing", final="zero"))
    written = np.stack([np.asarray(Image.open(p)).reshape(want[0].shape)
                        for p in sorted((tmp_path / "s").glob("*.png"))])
    assert np.array_equal(written, want)
    assert not np.array_equal(written, to_uint8(diffkit.sample(den, noise, sampler="dpm-solver++-2m", steps=3,
                                                               generator=gens, progress=False)))


def test_eval_nfe_picks_the_steps_that_spend_it(run_dir, tmp_path, capsys):
    """eval --nfe N (as sample and sampler-table take it): heun spends 2 steps - 1 calls, so --nfe 5 runs 3 steps;
    restart with one interval of n = 2, K = 1 adds 2 n K = 4, so --nfe 9 runs 3 steps too. The settings record
    steps and NFE; an NFE the sampler cannot spend (heun: odd only) is a one-line error before anything is written."""
    ckpt = run_dir / "ckpt" / "latest.safetensors"
    common = ["eval", "--checkpoint", ckpt, "--metrics", "fd-classifier", "--evaluator", run_dir / "ev.safetensors",
              "--num", "4", "--device", "cpu", "--no-progress"]
    for extra, nfe in ((["--sampler", "heun"], 5), (["--sampler", "restart", "--restarts", "0.1:1:1:2"], 9)):
        assert main([*common, *extra, "--nfe", str(nfe), "--out", tmp_path / f"{nfe}.json"]) == 0
        settings = json.loads((tmp_path / f"{nfe}.json").read_text())["settings"]
        assert (settings["steps"], settings["nfe"]) == (3, nfe), settings
    capsys.readouterr()
    one_line_error(capsys, [*common, "--sampler", "heun", "--nfe", "4", "--out", tmp_path / "o" / "x.json"],
                   "sampler 'heun' cannot spend exactly nfe=4")
    assert not (tmp_path / "o").exists()


def test_a_failed_eval_leaves_no_empty_out_folder(run_dir, tmp_path, capsys):
    """--out's folder was made by its check and kept when a later check (a --save-samples folder of an earlier
    run) or the sampling (--restarts outside the grid's sigma~ range, known once the schedule is loaded) failed;
    like --save-samples' and --cache-dir's own folders it is removed again while empty."""
    stale = tmp_path / "stale"
    stale.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(stale / "sample_00009.png")
    common = ["eval", "--checkpoint", run_dir / "ckpt" / "latest.safetensors", "--metrics", "fd-classifier",
              "--evaluator", run_dir / "ev.safetensors", "--num", "4", "--steps", "3", "--device", "cpu",
              "--no-progress", "--out", tmp_path / "o" / "a" / "r.json"]
    one_line_error(capsys, [*common, "--save-samples", stale], "holds 1 images of an earlier run")
    one_line_error(capsys, [*common, "--sampler", "restart", "--restarts", "0.5:500:1:2", "--save-samples",
                            tmp_path / "s"],
                   "restarts[0]: the interval [0.5, 500] is outside this grid's sigma~ range")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stale"]


def test_evaluate_takes_nfe_without_steps_none(run_dir):
    """diffkit.evaluate(..., nfe=5) failed with 'give steps or nfe, not both' because steps defaulted to 50
    (diffkit.sample's steps default to None); steps is 50 unless nfe is given (heun: NFE 2 steps - 1, so 3 steps),
    and both together are a one-line error."""
    common = dict(checkpoint=run_dir / "ckpt" / "latest.safetensors", evaluator=run_dir / "ev.safetensors", num=4,
                  batch_size=4)
    settings = evaluate("fd-classifier", sampler="heun", nfe=5, **common)["settings"]
    assert (settings["steps"], settings["nfe"]) == (3, 5)
    assert evaluate("fd-classifier", **common)["settings"]["steps"] == 50
    with pytest.raises(DiffkitError, match=r"^give steps or nfe, not both$"):
        evaluate("fd-classifier", sampler="heun", steps=3, nfe=5, **common)
