"""``dataset = "series"``: a user's CSV / .npy file as Diffusion-TS prepares it (min-max per column on the
training rows, stride-1 windows, 2 y - 1), the checkpoint's scaling, samples in the file's units,
Context-FID against the held-out windows, and a one-line refusal of each bad file."""
import hashlib
import json

import numpy as np
import pytest
import torch

from diffkit import checkpoint as ckpt
from diffkit.cli import main
from diffkit.data import load_dataset
from diffkit.errors import DiffkitError
from diffkit.series_files import SeriesScaling

# 9 rows: 6 training rows, 3 held out (test_fraction 1/3); "b" is constant on the training rows
ROWS = [("2020-01-01", 1, 10), ("2020-01-02", 3, 10), ("2020-01-03", 5, 10), ("2020-01-04", 2, 10),
        ("2020-01-05", 4, 10), ("2020-01-06", 9, 10), ("2020-01-07", 7, 10), ("2020-01-08", 11, 12),
        ("2020-01-09", 0, 8)]


def write_csv(path, header="date,a,b", rows=ROWS):
    path.write_text(header + "\n" + "".join(",".join(str(v) for v in row) + "\n" for row in rows))
    return path


def test_windows_and_scaling_match_a_hand_computation(tmp_path):
    csv = write_csv(tmp_path / "d.csv")
    train = load_dataset("series", str(csv), seq_length=3, test_fraction=1 / 3, drop_columns="date")
    # a: training min 1, max 9 -> 2 (x - 1) / 8 - 1 = (x - 5) / 4; b: constant 10 -> scaled by 1: 2 (x - 10) - 1
    a = [-1.0, -0.5, 0.0, -0.75, -0.25, 1.0]
    expected = torch.tensor([[a[i:i + 3], [-1.0] * 3] for i in range(4)])  # windows i = rows i..i+2, (N, C, L)
    assert torch.equal(train.series, expected) and train.series.dtype == torch.float32
    assert train.scaling == SeriesScaling(("a", "b"), (1.0, 10.0), (9.0, 10.0))
    assert train.source == {"file": str(csv), "resolved_file": str(csv.resolve()),
                            "sha256": hashlib.sha256(csv.read_bytes()).hexdigest(), "rows": 9, "train_rows": 6}
    test = load_dataset("series", str(csv), seq_length=3, test_fraction=1 / 3, drop_columns="date", train=False)
    # the held-out rows 7, 11, 0 / 10, 12, 8 with the training rows' min and max (outside [-1, 1] is kept)
    assert torch.equal(test.series, torch.tensor([[[0.5, 1.5, -1.25], [-1.0, 3.0, -5.0]]]))
    # unnormalise: (x + 1) / 2 (max - min) + min gives the rows back; the constant column its constant
    back = train.scaling.unnormalise(train.series.double())
    torch.testing.assert_close(back[:, 0], torch.tensor([[1, 3, 5], [3, 5, 2], [5, 2, 4], [2, 4, 9]]).double())
    assert torch.equal(train.scaling.unnormalise(torch.full((1, 2, 3), 0.3).double())[0, 1],
                       torch.full((3,), 10.0).double())
    # the same values as a .npy (T, F) give the same windows; no split: every row is a training row
    np.save(tmp_path / "d.npy", np.array([row[1:] for row in ROWS], dtype=np.float32))
    npy = load_dataset("series", str(tmp_path / "d.npy"), seq_length=3, test_fraction=1 / 3)
    assert torch.equal(npy.series, train.series) and npy.scaling.columns == ("0", "1")
    whole = load_dataset("series", str(tmp_path / "d.npy"), seq_length=4)
    assert len(whole) == 9 - 4 + 1 and whole.scaling.maximum == (11.0, 12.0)


SMALL = ["--set=seq_length=8", "--set=channel=8", "--set=channel_mult=1,2", "--set=num_res_blocks=1",
         "--set=batch_size=8", "--set=T=50", "--set=sample_steps=3", "--set=ema_decay=0.9", "--set=dropout=0"]


@pytest.fixture(scope="module")
def file_run(tmp_path_factory):
    """``diffkit train --dataset series`` on a 3-column CSV of 80 rows (a date column dropped, the last
    quarter held out), 10 steps of a tiny 1-D U-Net: (run folder, the CSV, its values)."""
    root = tmp_path_factory.mktemp("series")
    rng = np.random.default_rng(0)
    t = np.arange(80)
    values = np.stack([50 + 10 * np.sin(t / 4), 0.5 * t - 3, rng.normal(0, 2, 80)], axis=1)
    csv = root / "data.csv"
    csv.write_text("date,price,volume,noise\n" + "".join(f"d{i},{float(v[0])!r},{float(v[1])!r},{float(v[2])!r}\n"
                                                          for i, v in enumerate(values)))
    code = main(["train", "--dataset", "series", "--data-dir", str(csv), "--out", str(root / "run"), "--steps", "10",
                 "--no-progress", "--device", "cpu", "--set=drop_columns=date", "--set=test_fraction=0.25", *SMALL])
    assert code == 0
    return root / "run", csv, values


def test_checkpoint_keeps_the_scaling_of_the_training_rows(file_run):
    run, csv, values = file_run
    _, meta = ckpt.load_checkpoint(run / "checkpoints" / "latest.safetensors")
    assert meta["series_scaling"] == {"columns": ["price", "volume", "noise"],
                                      "minimum": values[:60].min(axis=0).tolist(),
                                      "maximum": values[:60].max(axis=0).tolist(), "file": str(csv),
                                      "resolved_file": str(csv.resolve()),
                                      "sha256": hashlib.sha256(csv.read_bytes()).hexdigest(), "rows": 80,
                                      "train_rows": 60}
    assert meta["unet"]["in_channels"] == 3 and meta["unet"]["seq_length"] == 8
    assert meta["dataset_size"] == 60 - 8 + 1
    cfg = meta["config"]
    assert (cfg["dataset"], cfg["data_dir"], cfg["test_fraction"], cfg["drop_columns"]) == (
        "series", str(csv), 0.25, "date")


@pytest.mark.real_plots  # checks the series PNG
def test_samples_are_written_in_the_files_units(file_run, tmp_path, capsys):
    from diffkit.evaluation import generate_samples
    from diffkit.loading import load_denoiser
    run, csv, values = file_run
    ck = run / "checkpoints" / "latest.safetensors"
    code = main(["sample", "--checkpoint", str(ck), "--num", "6", "--steps", "3", "--seed", "4", "--out",
                 str(tmp_path / "s.png"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "columns price, volume, noise" in captured.out and (tmp_path / "s.png").is_file()
    samples = np.load(tmp_path / "s.npy")
    low, high = values[:60].min(axis=0)[None, :, None], values[:60].max(axis=0)[None, :, None]
    assert samples.shape == (6, 3, 8) and samples.dtype == np.float32
    assert (samples >= low - 1e-4).all() and (samples <= high + 1e-4).all()
    # by hand: the model's samples for the same seeds, clamped, through (x + 1) / 2 (max - min) + min
    model = generate_samples(load_denoiser(ck), 6, sampler="ddim", steps=3, seed=4).double().numpy()
    np.testing.assert_allclose(samples, (model + 1) / 2 * (high - low) + low, rtol=1e-6, atol=1e-5)
    assert np.ptp(samples[:, 0]) > 1  # price: original units (about 40..60), not [-1, 1]
    # the end-of-run sample of training is in the same units
    trained = np.load(run / "samples" / "SampledNoGuidanceImgs.npy")
    assert (trained >= low - 1e-4).all() and (trained <= high + 1e-4).all()


@pytest.mark.filterwarnings("ignore:TS2Vec embeddings")
def test_context_fid_scores_against_the_held_out_windows(file_run, tmp_path, capsys):
    from diffkit.metrics.context_fid import context_fid, train_context_fid_encoder
    from diffkit.evaluation import generate_samples
    from diffkit.loading import load_denoiser
    from diffkit.timeseries import to_unit_range
    run, csv, values = file_run
    ck = run / "checkpoints" / "latest.safetensors"
    code = main(["eval", "--checkpoint", str(ck), "--metrics", "context-fid", "--num", "12", "--steps", "3",
                 "--seed", "2", "--context-fid-iterations", "3", "--no-progress", "--out", str(tmp_path / "e.json")])
    err = capsys.readouterr().err
    assert code == 0, err
    # volume rises past its training maximum: the held-out windows leave [-1, 1], said once in one line
    assert err.count("warning: the held-out windows of") == 1 and "shift between the training and held-out" in err
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["settings"]["reference_split"] == "test" and result["settings"]["num_reference"] == 12
    # by hand: the held-out rows 60..79 scaled with the training rows' min and max; of their 13 windows the
    # 12 evenly spaced over all of them: round(k * 12 / 11) = 0..5 and 7..12
    low, high = values[:60].min(axis=0), values[:60].max(axis=0)
    held = (values[60:] - low) / (high - low) * 2 - 1
    real = torch.tensor(np.stack([held[i:i + 8].T for i in (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12)]),
                        dtype=torch.float32)
    encoder = train_context_fid_encoder(to_unit_range(real), 3, seed=2)
    samples = generate_samples(load_denoiser(ck), 12, sampler="ddim", steps=3, seed=2)
    expected = context_fid(encoder, to_unit_range(real), to_unit_range(samples))
    assert result["metrics"]["context-fid"]["value"] == pytest.approx(expected, rel=1e-5, abs=1e-8)
    # 20 held-out rows give 13 windows of 8
    code = main(["eval", "--checkpoint", str(ck), "--metrics", "context-fid", "--num", "14", "--no-progress",
                 "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert code == 2 and "the run's 13 held-out windows of" in err and len(err.strip().splitlines()) == 1


def test_a_resume_needs_the_same_file(tmp_path):
    from diffkit.config import TrainConfig
    from diffkit.training import Trainer
    csv = write_csv(tmp_path / "d.csv", "a,b", [(i % 7, i * i % 5) for i in range(40)])
    fields = {"dataset": "series", "data_dir": str(csv), "seq_length": 8, "channel": 8, "channel_mult": [1, 2],
              "num_res_blocks": 1, "batch_size": 8, "T": 20, "sample_steps": 4, "max_steps": 4, "device": "cpu",
              "save_weight_dir": str(tmp_path / "ckpt")}
    Trainer(TrainConfig.from_dict(fields), progress=False).run(stop_at=2)
    write_csv(csv, "a,b", [(i % 7, i * i % 5 + (i == 3)) for i in range(40)])  # one value changed, same size
    resumed = Trainer(TrainConfig.from_dict({**fields, "training_load_weight": str(tmp_path / "ckpt")}),
                      progress=False)
    with pytest.raises(DiffkitError, match="was trained on another version of .*d.csv"):
        resumed.run()


def _npy(path, array):
    np.save(path, array)
    return path


def _npz_as_npy(directory):
    np.savez(directory / "z.npz", a=np.zeros((40, 2)))
    return (directory / "z.npz").rename(directory / "z.npy")


def _bytes(path, data):
    path.write_bytes(data)
    return path


def _folder(path):
    path.mkdir()
    return path


LONG = [(i % 7, i * i % 5) for i in range(40)]  # 40 rows of two columns ("a", "b")


@pytest.mark.parametrize("make,extra,message", [
    (lambda d: d / "none.csv", [], "does not exist"),
    (lambda d: write_csv(d / "x.txt"), [], "has the suffix '.txt'; allowed: .csv, .npy"),
    (lambda d: (d / "e.csv").write_text("") and None or d / "e.csv", [], "is empty"),
    (lambda d: write_csv(d / "h.csv", rows=[]), [], "has a header row but no data rows"),
    (lambda d: write_csv(d / "n.csv", "a,b", [(1, 2), (3, "nan"), (5, 6)]), [],
     "line 3: column 'b' has a missing value ('nan'); a training file needs every value"),
    (lambda d: write_csv(d / "i.csv", "a,b", [(1, 2), ("-inf", 4)]), [], "line 3: column 'a' holds '-inf'"),
    (lambda d: write_csv(d / "m.csv", "a,b", [(1, 2), (3, "")]), [],
     "line 3: column 'b' has a missing value; a training file needs every value (fill or remove such rows first)"),
    (lambda d: write_csv(d / "t.csv"), [], "column 'date' holds '2020-01-01', not a number"),
    (lambda d: write_csv(d / "u.csv"), ["--set=drop_columns=time"], "drop_columns names 'time'"),
    (lambda d: write_csv(d / "s.csv"), ["--set=drop_columns=date", "--set=seq_length=16"],
     "has 9 rows: 9 training rows, fewer than seq_length=16"),
    (lambda d: write_csv(d / "f.csv"), ["--set=drop_columns=date", "--set=seq_length=4", "--set=test_fraction=0.3"],
     "holds out the last 2): 2 held-out rows, fewer than seq_length=4"),
    (lambda d: _npy(d / "3d.npy", np.zeros((4, 5, 2))), [], "has shape (4, 5, 2); a series array must be (T, F)"),
    (lambda d: _npy(d / "nan.npy", np.array([[1.0, 2.0], [3.0, np.inf]])), [], "row 1, column 1 holds inf"),
    (lambda d: _npy(d / "nn.npy", np.array([[1.0, 2.0], [3.0, np.nan]])), [],
     "row 1, column 1 has a missing value (nan; indices from 0); a training file needs every value"),
    (lambda d: _npy(d / "str.npy", np.array([["a", "b"]])), [], "a series file needs numbers"),
    (lambda d: _npy(d / "c.npy", np.zeros((40, 2))), ["--set=drop_columns=a"], "drop_columns applies to CSV files"),
    (_npz_as_npy, [], "z.npy is a NpzFile (an .npz archive?), not one numpy array"),
    (lambda d: _bytes(d / "l.csv", "a,b\n1,2\n3,\xe9\n".encode("latin-1")), [], "line 3: byte 0xe9 is not UTF-8"),
    (lambda d: _bytes(d / "bom.csv", b"\xef\xbb\xbf" + "a,b\n1,2\n3,\xe9\n".encode("latin-1")), [],
     "line 3: byte 0xe9 is not UTF-8"),  # the byte and line counted after the BOM
    (lambda d: _bytes(d / "g.csv", b"a,b\n1,2\n3," + b"4" * 200_000 + b"\n"), [], "not a readable CSV line (field"),
    (lambda d: _folder(d / "data"), [], "is a folder, not a file"),
    (lambda d: write_csv(d / "sc.csv", "a;b", [("1;2",)] * 40), [], "save the file with commas"),
    (lambda d: write_csv(d / "o.csv", "a,b", [(1e308 * (-1) ** i, i) for i in range(40)]), [],
     "column 'a' spans -1e+308 to 1e+308 on the training rows, a range beyond float64"),
    (lambda d: write_csv(d / "c.csv", "a,b", LONG), ["--set=in_channels=5"], "in_channels=5 but"),
    (lambda d: write_csv(d / "dup.csv", "a,b,a", [r + (0,) for r in LONG]), [], "column 'a' is named twice"),
    (lambda d: write_csv(d / "r.csv", "a,b", [(1, 2), (3, 4, 5)] + LONG), [], "line 3: 3 values for the 2 columns"),
])
def test_bad_files_are_one_line_errors_and_leave_nothing(tmp_path, capsys, make, extra, message):
    path = make(tmp_path)
    code = main(["train", "--dataset", "series", "--data-dir", str(path), "--out", str(tmp_path / "run"),
                 "--steps", "1", "--no-progress", "--device", "cpu", *SMALL, *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("fields,message", [
    ({}, "dataset='series' needs its file: --data-dir"),
    ({"data_dir": "d.csv", "num_series": 50}, "num_series=50 applies to dataset='sines'"),
    ({"dataset": "sines", "test_fraction": 0.2}, "test_fraction=0.2 applies to dataset='series'"),
    ({"dataset": "digits", "drop_columns": "date"}, "drop_columns='date' applies to dataset='series'"),
    ({"data_dir": "d.csv", "test_fraction": 1.0}, "test_fraction"),
])
def test_config_rules_of_a_series_file(fields, message):
    from diffkit.config import TrainConfig
    with pytest.raises(DiffkitError, match=message):
        TrainConfig.from_dict({"dataset": "series", **fields})


@pytest.mark.parametrize("name,text", [
    ("blank.csv", "a,b\n\n" + "".join(f"{a},{b}\n" + ("\n" if i == 20 else "") for i, (a, b) in enumerate(LONG))
     + " , \n\n"),  # blank lines (one of spaces) at the start, in the middle and at the end
    ("upper.CSV", None),
    ("upper.NPY", None),
])
def test_files_that_mean_the_same_series_give_the_same_windows(tmp_path, name, text):
    plain = load_dataset("series", str(write_csv(tmp_path / "plain.csv", "a,b", LONG)), seq_length=8)
    path = tmp_path / name
    if name.endswith(".NPY"):
        with open(path, "wb") as handle:  # np.save would add ".npy"
            np.save(handle, np.array(LONG, dtype=np.float64))
    elif text is None:
        write_csv(path, "a,b", LONG)
    else:
        path.write_text(text)
    same = load_dataset("series", str(path), seq_length=8)
    assert torch.equal(same.series, plain.series) and len(same) == 40 - 8 + 1


@pytest.mark.parametrize("options,message", [
    ({"img_size": 8}, "img_size=8 does not apply to dataset='series'"),
    ({"hflip": True}, "hflip=True does not apply to dataset='series'"),
    ({"resize": "pad"}, "resize='pad' does not apply to dataset='series'"),
    ({"num_series": 5}, "num_series=5 does not apply to dataset='series'"),
    ({"data_dir": None}, "dataset='series' needs data_dir"),
    ({"train": False}, "test_fraction=0 holds out no rows; there is no test split"),
])
def test_load_dataset_refuses_what_a_series_file_cannot_use(tmp_path, options, message):
    csv = write_csv(tmp_path / "d.csv", "a,b", LONG)
    with pytest.raises(DiffkitError, match=message.replace("(", r"\(")):
        load_dataset("series", **{"data_dir": str(csv), "seq_length": 8, **options})


def test_eval_refuses_a_changed_file(file_run, tmp_path, capsys):
    run, csv, _ = file_run
    original = csv.read_bytes()
    try:
        csv.write_bytes(original.replace(b"d3,", b"d3x,"))  # the dropped date column only: same windows, other file
        code = main(["eval", "--checkpoint", str(run / "checkpoints" / "latest.safetensors"), "--metrics",
                     "correlational", "--num", "4", "--no-progress", "--out", str(tmp_path / "e.json")])
    finally:
        csv.write_bytes(original)
    err = capsys.readouterr().err
    assert code == 2 and "is not the file this run was trained on (its SHA-256 differs)" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "e.json").exists()


def test_eval_finds_a_relative_data_dir_from_another_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    write_csv(tmp_path / "a" / "d.csv", "a,b", LONG)
    assert main(["train", "--dataset", "series", "--data-dir", "d.csv", "--out", "run", "--steps", "2",
                 "--no-progress", "--device", "cpu", *SMALL]) == 0
    monkeypatch.chdir(tmp_path / "b")
    args = ["eval", "--checkpoint", str(tmp_path / "a" / "run" / "checkpoints" / "latest.safetensors"), "--metrics",
            "correlational", "--num", "10", "--steps", "2", "--no-progress"]
    capsys.readouterr()
    assert main([*args, "--out", "e.json"]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "b" / "e.json").read_text())["settings"]["num_reference"] == 10
    # another d.csv in b/ (not even a series): the one whose SHA-256 matches, a/d.csv, is used
    (tmp_path / "b" / "d.csv").write_text("x\nnot a number\n")
    assert main([*args, "--out", "g.json"]) == 0, capsys.readouterr().err
    value = [json.loads((tmp_path / "b" / f"{n}.json").read_text())["metrics"]["correlational"]["value"] for n in "eg"]
    assert value[0] == value[1]
    # neither matches: the SHA-256 refusal naming both, not b/d.csv's parse error
    write_csv(tmp_path / "a" / "d.csv", "a,b", LONG[::-1])
    capsys.readouterr()
    assert main([*args, "--out", "h.json"]) == 2
    err = capsys.readouterr().err
    assert f"d.csv (nor {tmp_path / 'a' / 'd.csv'}) is not the file this run was trained on (its SHA-256 differs)" \
        in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "b" / "d.csv").unlink()
    (tmp_path / "a" / "d.csv").unlink()
    capsys.readouterr()
    assert main([*args, "--out", "f.json"]) == 2
    err = capsys.readouterr().err
    assert f"series file 'd.csv' is not there (relative to the folder training ran in: {tmp_path / 'a' / 'd.csv'})" \
        in err and len(err.strip().splitlines()) == 1


def test_eval_without_a_split_scores_against_evenly_spaced_training_windows(tmp_path, capsys):
    """test_fraction = 0: the reference is --num of the W training windows at round-half-up(k (W - 1) / (N - 1))."""
    from diffkit.evaluation import generate_samples
    from diffkit.loading import load_denoiser
    from diffkit.metrics import correlational_score
    from diffkit.series_evaluation import spread_indices
    from diffkit.timeseries import to_unit_range
    assert spread_indices(6, 3).tolist() == [0, 3, 5]  # 2.5 -> 3 (half up; half to even would give 2)
    rows = LONG + [LONG[0]]  # 41 rows: W = 34 windows of 8
    csv = write_csv(tmp_path / "d.csv", "a,b", rows)
    assert main(["train", "--dataset", "series", "--data-dir", str(csv), "--out", str(tmp_path / "run"), "--steps",
                 "2", "--no-progress", "--device", "cpu", *SMALL]) == 0
    ck = tmp_path / "run" / "checkpoints" / "latest.safetensors"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(ck), "--metrics", "correlational", "--num", "7", "--steps", "2",
                 "--seed", "3", "--no-progress", "--out", str(tmp_path / "e.json")]) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["settings"]["reference_split"] == "train" and result["settings"]["num_reference"] == 7
    # by hand: k * 33 / 6 = 0, 5.5, 11, 16.5, 22, 27.5, 33 -> windows 0, 6, 11, 17, 22, 28, 33 (16.5 -> 17: half up)
    values = np.array(rows, dtype=np.float64)
    low, high = values.min(axis=0), values.max(axis=0)
    scaled = (values - low) / (high - low) * 2 - 1
    real = torch.tensor(np.stack([scaled[i:i + 8].T for i in (0, 6, 11, 17, 22, 28, 33)]), dtype=torch.float32)
    samples = generate_samples(load_denoiser(ck), 7, sampler="ddim", steps=2, seed=3)
    expected = correlational_score(to_unit_range(real), to_unit_range(samples))
    assert result["metrics"]["correlational"]["value"] == pytest.approx(expected, rel=1e-6, abs=1e-12)


@pytest.mark.filterwarnings("ignore:TS2Vec embeddings")
def test_context_fid_encoder_cached_without_the_reference_rule_is_not_reused(file_run, tmp_path, monkeypatch,
                                                                              capsys):
    """The cache key holds reference_windows: an encoder cached under a key without it (before the windows were
    spread over the file) is trained again, not reused; the next run reuses the new one."""
    from diffkit import series_evaluation
    run, _, _ = file_run
    args = ["eval", "--checkpoint", str(run / "checkpoints" / "latest.safetensors"), "--metrics", "context-fid",
            "--num", "12", "--steps", "2", "--context-fid-iterations", "2", "--cache-dir", str(tmp_path / "cache"),
            "--no-progress"]
    real_reference = series_evaluation.file_reference

    def old_reference(*a):
        data, *rest = real_reference(*a)
        data.pop("reference_windows", None)
        return (data, *rest)

    monkeypatch.setattr(series_evaluation, "file_reference", old_reference)
    assert main([*args, "--out", str(tmp_path / "old.json")]) == 0, capsys.readouterr().err
    monkeypatch.setattr(series_evaluation, "file_reference", real_reference)
    cached = []
    for name in ("new", "again"):
        assert main([*args, "--out", str(tmp_path / f"{name}.json")]) == 0, capsys.readouterr().err
        cached.append(json.loads((tmp_path / f"{name}.json").read_text())["metrics"]["context-fid"]["encoder_cached"])
    assert cached == [False, True] and len(list((tmp_path / "cache").glob("context_fid_encoder_*"))) == 2


@pytest.mark.filterwarnings("ignore:TS2Vec embeddings", "ignore:the held-out windows")
def test_eval_reads_a_moved_file_given_with_data_dir(file_run, tmp_path, capsys):
    """--data-dir replaces the stored paths (gone here): the same file gives the same values; another file is
    refused in one line naming it, through the command and through evaluate()."""
    from diffkit.evaluation import evaluate
    run, csv, _ = file_run
    ck = str(run / "checkpoints" / "latest.safetensors")
    args = ["eval", "--checkpoint", ck, "--metrics", "context-fid,correlational", "--num", "12", "--steps", "2",
            "--context-fid-iterations", "2", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "here.json")]) == 0, capsys.readouterr().err
    (tmp_path / "moved").mkdir()
    moved = tmp_path / "moved" / "other name.csv"
    away = csv.with_name("away.csv")
    csv.rename(away)
    try:
        moved.write_bytes(away.read_bytes())
        assert main([*args, "--data-dir", str(moved), "--out", str(tmp_path / "moved.json")]) == 0, \
            capsys.readouterr().err
        capsys.readouterr()
        moved.write_bytes(away.read_bytes().replace(b"d3,", b"d3x,"))  # same windows, another file
        code = main([*args, "--data-dir", str(moved), "--out", str(tmp_path / "other.json")])
        with pytest.raises(DiffkitError, match="is not the file this run was trained on"):
            evaluate("correlational", checkpoint=ck, data_dir=moved, num=4, steps=2)
    finally:
        away.rename(csv)
    err = capsys.readouterr().err
    assert code == 2 and f"--data-dir {str(moved)!r} is not the file this run was trained on (its SHA-256" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "other.json").exists()
    here, there = (json.loads((tmp_path / f"{n}.json").read_text())["metrics"] for n in ("here", "moved"))
    assert [there[m]["value"] for m in ("context-fid", "correlational")] == \
        [here[m]["value"] for m in ("context-fid", "correlational")]


def test_a_header_of_numbers_is_warned_about_as_a_missing_header(tmp_path, capsys, monkeypatch):
    """A CSV without a header row has its first data row read as column names: a warning (one line
    from the CLI) names the file and the numbers; pandas' 0, 1, ... column names and named columns
    are read silently."""
    import warnings
    from diffkit.errors import DiffkitWarning
    from diffkit.series_files import read_series_file
    headerless = tmp_path / "headerless.csv"
    headerless.write_text("".join(f"{a}.5,{b}\n" for a, b in LONG))
    with pytest.warns(DiffkitWarning, match=r"the header row of .*headerless\.csv is all numbers \(0\.5, 0\): if the "
                                            r"file has no header row, its first row was read as column names"):
        values, columns = read_series_file(headerless)
    assert columns == ["0.5", "0"] and values.shape == (39, 2)  # the first row is lost to the data
    for header in ("0,1", "a,b", "x,1e3"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", DiffkitWarning)
            read_series_file(write_csv(tmp_path / "named.csv", header, LONG))
    monkeypatch.chdir(tmp_path)
    import sys  # printed as the CLI prints it (pytest records warnings instead; as test_cli_errors does)
    monkeypatch.setattr(warnings, "showwarning", lambda message, category, filename, lineno, file=None, line=None:
                        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line)))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["train", "--dataset", "series", "--data-dir", "headerless.csv", "--out", "run", "--steps", "2",
                     "--no-progress", "--no-sample", "--device", "cpu", *SMALL]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "all numbers" in line]
    assert warned == ["diffkit train: warning: the header row of headerless.csv is all numbers (0.5, 0): if the file "
                      "has no header row, its first row was read as column names; add a header line"], warned


def test_a_row_of_empty_cells_is_a_missing_row_when_imputing(tmp_path):
    """To impute, ",," (every cell of the row empty) is a row of missing values, not a blank line: skipping it
    would shift every later imputed row against the file's. Blank lines are still skipped; a training read
    (no missing values allowed) skips the row as before."""
    from diffkit.series_files import read_series_file
    path = tmp_path / "gaps.csv"
    path.write_text("a,b,c\n1,2,3\n,,\n\n4,,6\n")
    values, columns = read_series_file(path, [], allow_missing=True)
    assert columns == ["a", "b", "c"] and values.shape == (3, 3)
    assert np.isnan(values[1]).all() and values[2, 0] == 4 and np.isnan(values[2, 1])
    path.write_text("a,b,c\n1,2,3\n,,\n7,8,9\n")
    assert read_series_file(path, [])[0].shape == (2, 3)


def test_a_one_column_files_empty_lines_are_blank_and_warned_about_when_imputing(tmp_path):
    """A one-column file cannot tell an empty line (a missing value?) from a blank one: to impute, its empty
    and whitespace-only lines are skipped as blank (not rows of missing values, as ",," is in a file of several
    columns), and when data rows follow them one DiffkitWarning names the first and says to write nan (the
    rows after them move up); trailing blank lines and a training read warn about nothing. A trailing row of
    empty cells of a file of several columns is a row, imputed."""
    import warnings
    from diffkit.errors import DiffkitWarning
    from diffkit.series_files import read_series_file
    path = tmp_path / "one.csv"
    path.write_text("a\n1\n\n  \n4\nnan\n\n")
    with pytest.warns(DiffkitWarning) as caught:
        values, columns = read_series_file(path, [], allow_missing=True)
    assert columns == ["a"] and values.shape == (3, 1) and values[1, 0] == 4 and np.isnan(values[2, 0])
    assert [str(w.message) for w in caught] == [
        f"{path}, line 3: an empty line in a one-column file is read as a blank line and skipped (2 between data "
        f"rows), so the rows after it move up; to impute a missing value there, write nan"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DiffkitWarning)
        path.write_text("a\n1\nnan\n4\n\n\n")
        assert read_series_file(path, [], allow_missing=True)[0].shape == (3, 1)
        path.write_text("a\n1\n\n4\n")
        assert read_series_file(path, [])[0].shape == (2, 1)
        path.write_text("a,b\n1,2\n,\n\n")
        values = read_series_file(path, [], allow_missing=True)[0]
    assert values.shape == (2, 2) and np.isnan(values[1]).all()
