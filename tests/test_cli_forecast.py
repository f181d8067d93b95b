"""``diffkit edit --series``: forecasting and imputation with a checkpoint trained on a CSV read and
write the file's own units (equal to diffkit.forecast / diffkit.impute on the min-max scaled rows,
done by hand), keep the given values exactly, and refuse bad input in one line without an output."""
import csv
import re

import numpy as np
import pytest
import torch

import diffkit
from diffkit.cli import main
from diffkit.loading import load_denoiser

SMALL = ["--set=seq_length=8", "--set=channel=8", "--set=channel_mult=1,2", "--set=num_res_blocks=1",
         "--set=batch_size=8", "--set=T=50", "--set=sample_steps=3", "--set=ema_decay=0.9", "--set=dropout=0"]
COLUMNS = ["price", "volume", "noise"]


def write_rows(path, rows, header="date,price,volume,noise"):
    path.write_text(header + "\n" + "".join(f"d{i}," + ",".join(cell if isinstance(cell, str) else repr(float(cell))
                                                                  for cell in row) + "\n"
                                            for i, row in enumerate(rows)))
    return path


@pytest.fixture(scope="module")
def file_run(tmp_path_factory):
    """``diffkit train --dataset series`` on a 3-column CSV of 80 rows (a date column dropped), 10 steps of
    a tiny 1-D U-Net (seq_length 8): (checkpoint, values, training min, max)."""
    root = tmp_path_factory.mktemp("forecast")
    t = np.arange(80)
    values = np.stack([50 + 10 * np.sin(t / 4), 0.5 * t - 3, np.random.default_rng(0).normal(0, 2, 80)], axis=1)
    data = write_rows(root / "data.csv", values)
    code = main(["train", "--dataset", "series", "--data-dir", str(data), "--out", str(root / "run"), "--steps", "10",
                 "--no-progress", "--no-sample", "--device", "cpu", "--set=drop_columns=date",
                 "--set=test_fraction=0.25", *SMALL])
    assert code == 0
    return root / "run" / "checkpoints" / "latest.safetensors", values, values[:60].min(0), values[:60].max(0)


def read_out(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], np.array([[float(v) for v in row] for row in rows[1:]])


def test_forecast_round_trip_in_the_files_units(file_run, tmp_path, capsys):
    ck, values, low, high = file_run
    history = values[62:68]  # 6 held-out rows, beyond the training range (volume rises)
    path = write_rows(tmp_path / "history.csv", history)
    code = main(["edit", "--checkpoint", str(ck), "--series", str(path), "--horizon", "2", "--num", "3", "--seed",
                 "7", "--steps", "4", "--out", str(tmp_path / "f.csv"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "forecast 2 rows after 6" in captured.out and "the file's units" in captured.out
    header, table = read_out(tmp_path / "f.csv")
    assert header == ["sample", *COLUMNS] and table.shape == (3 * 2, 4)
    assert table[:, 0].tolist() == [0, 0, 1, 1, 2, 2]
    # by hand: min-max scale the history with the checkpoint's training min / max, forecast with the API's
    # defaults (ddpm, reconstruction guidance w = 1: the CLI's for --series), unscale; not clamped
    scaled = torch.from_numpy(2 * (history - low) / (high - low) - 1).float().T[None].expand(3, -1, -1)
    model = diffkit.forecast(load_denoiser(ck), scaled, 2, steps=4, seed=7, progress=False)
    expected = (model.double().permute(0, 2, 1).numpy() + 1) / 2 * (high - low) + low
    np.testing.assert_allclose(table[:, 1:], expected.reshape(6, 3), rtol=1e-6, atol=1e-6)
    assert ((table[:, 1:] < low) | (table[:, 1:] > high)).any()  # beyond the training range: written as generated
    assert np.ptp(table[:, 1]) > 1 or abs(table[:, 1].mean()) > 10  # price in its units (about 40..60)
    # .npy: the same numbers as an array (num, rows, columns)
    code = main(["edit", "--checkpoint", str(ck), "--series", str(path), "--horizon", "2", "--num", "3", "--seed",
                 "7", "--steps", "4", "--out", str(tmp_path / "f.npy"), "--no-progress"])
    assert code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy").reshape(6, 3), table[:, 1:])


def test_impute_keeps_the_given_cells_and_fills_the_empty_ones(file_run, tmp_path, capsys):
    ck, values, low, high = file_run
    window = values[10:18]
    cells = [[repr(float(v)) for v in row] for row in window]
    cells[1][0], cells[4][2], cells[6][1] = "", "nan", "NaN"
    path = tmp_path / "gaps.csv"
    body = "".join(f"d{i}," + ",".join(row) + "\n" for i, row in enumerate(cells))
    path.write_text("date,price,volume,noise\n" + body)
    code = main(["edit", "--checkpoint", str(ck), "--series", str(path), "--num", "2", "--steps", "4",
                 "--reconstruction-weight", "1", "--out", str(tmp_path / "i.csv"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "imputed 3 missing values of 8 rows" in captured.out
    header, table = read_out(tmp_path / "i.csv")
    assert header == ["sample", *COLUMNS] and table.shape == (16, 4)
    filled = table[:, 1:].reshape(2, 8, 3)
    missing = np.zeros((8, 3), dtype=bool)
    missing[1, 0] = missing[4, 2] = missing[6, 1] = True
    assert (filled[:, ~missing] == window[~missing]).all()  # the given values exactly as read
    scaled = torch.from_numpy(2 * (np.where(missing, np.nan, window) - low) / (high - low) - 1).float().T[None]
    model = diffkit.impute(load_denoiser(ck), scaled.expand(2, -1, -1), None, "ddpm", 4, seed=0,
                           reconstruction_weight=1.0, progress=False)
    expected = (model.double().permute(0, 2, 1).numpy() + 1) / 2 * (high - low) + low
    np.testing.assert_allclose(filled[:, missing], expected[:, missing], rtol=1e-6, atol=1e-6)


BAD = [  # (rows of the file or None for the default 6, flags, message)
    (None, ["--horizon", "20", "--chunk", "8"], r"--chunk 8 is out of range; allowed: 1..7 \(the new rows of each of "
                                                r"the model's windows of 8 rows\)"),
    ("nan", ["--horizon", "2"], r"line 3: column 'price' has a missing value \('nan'\); forecasting needs every "
                                r"history value \(leave out --horizon to impute the missing cells\)"),
    ("empty", ["--horizon", "2"], r"line 4: column 'volume' has a missing value; forecasting needs every history value "
                                  r"\(leave out --horizon to impute the missing cells\)"),
    ("columns", ["--horizon", "2"], r"has the columns price, volume, other; the model was trained on price, volume, "
                                    r"noise"),
    (20, ["--chunk", "9"], r"--chunk 9 is out of range; allowed: 1..7"),
    (None, ["--horizon", "2", "--mask", "m.png"], r"--mask applies to image edits"),
    (None, ["--horizon", "2", "--prompt", "a"], r"--prompt applies to image edits"),  # not silently ignored
    (None, ["--horizon", "2", "--posterior", "sample"], r"--posterior applies to image edits"),
    (None, ["--horizon", "2", "--paste-known"], r"--paste-known applies to image edits"),
    ("out", ["--horizon", "2"], r"--out .* must end in .csv or .npy"),
    ("missing", ["--horizon", "2"], r"--series .* does not exist"),
    (None, ["--horizon", "2", "--class", "1"], r"--class needs a class-conditional checkpoint; this time-series "
                                                r"model is unconditional \(train one on a series file with "
                                                r"--conditional --set label_column=NAME\)"),
    (None, ["--guidance-scale", "2"], r"--guidance-scale needs a class-conditional checkpoint; this "
                                      r"time-series model is unconditional"),
    (None, ["--guidance-rescale", "0.5"], r"--guidance-rescale needs --guidance-scale"),  # not silently ignored
    (None, ["--guidance-interval", "1", "5"], r"--guidance-interval needs --guidance-scale"),
    (None, ["--guidance-scale", "2", "--guidance-rescale", "0.5"], r"--guidance-scale needs a class-conditional "
                                                                   r"checkpoint"),
]


@pytest.mark.parametrize("rows,flags,message", BAD)
def test_bad_input_is_one_line_and_writes_nothing(file_run, tmp_path, capsys, rows, flags, message):
    ck, values, _, _ = file_run
    history = values[62:68] if not isinstance(rows, int) else values[:rows]
    header = "date,price,volume,other" if rows == "columns" else "date,price,volume,noise"
    cells = [[float(v) for v in row] for row in history]
    if rows == "nan":
        cells[1][0] = float("nan")
    if rows == "empty":
        cells[2][1] = ""
    path = write_rows(tmp_path / "h.csv", cells, header)
    if rows == "missing":
        path = tmp_path / "absent.csv"
    out = tmp_path / ("o.txt" if rows == "out" else "o.csv")
    code = main(["edit", "--checkpoint", str(ck), "--series", str(path), *flags, "--steps", "2", "--out", str(out),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert not out.exists()


def test_reconstruction_guidance_runs_under_inference_mode(file_run):
    """torch.inference_mode() records no graph even under enable_grad: the guidance step leaves it (on
    copies), so a forecast inside it equals one outside; weights made inside it are a one-line error."""
    ck = file_run[0]
    den = load_denoiser(ck)
    history = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(0))
    options = dict(sampler="ddpm", steps=3, reconstruction_weight=1.0, seed=0, progress=False)
    expected = diffkit.forecast(den, history, 2, **options)
    with torch.inference_mode():
        torch.testing.assert_close(diffkit.forecast(den, history, 2, **options), expected, rtol=0, atol=0)
        made_inside = load_denoiser(ck)
        with pytest.raises(diffkit.DiffkitError, match=r"weights were made under torch.inference_mode\(\)") as err:
            diffkit.forecast(made_inside, history, 2, **options)
    assert "\n" not in str(err.value)


def run_edit(ck, series, out, *flags):
    code = main(["edit", "--checkpoint", str(ck), "--series", str(series), "--steps", "3", "--out", str(out),
                 "--no-progress", *flags])
    assert code == 0
    return np.load(out) if str(out).endswith(".npy") else read_out(out)[1]


def test_samples_do_not_depend_on_the_batch_size(file_run, tmp_path):
    """Sample i uses --seed + i: 3 samples in batches of 2 (the second batch starts at sample 2) are the
    3 of one batch."""
    ck, values, _, _ = file_run
    path = write_rows(tmp_path / "h.csv", values[62:68])
    flags = ["--horizon", "2", "--num", "3", "--seed", "5"]
    one = run_edit(ck, path, tmp_path / "a.npy", *flags, "--batch-size", "16")
    # equal up to float32 round-off of the batched network
    np.testing.assert_allclose(run_edit(ck, path, tmp_path / "b.npy", *flags, "--batch-size", "2"), one, rtol=1e-6)


def test_an_npy_history_takes_the_models_columns_in_order(file_run, tmp_path, capsys):
    """An .npy has no column names: a CSV model takes its columns in the training order (only the count is
    checked), so the array of a CSV's rows forecasts as the CSV does; another count is a one-line error."""
    ck, values, _, _ = file_run
    history = values[62:68]
    flags = ["--horizon", "2", "--num", "2", "--seed", "3"]
    from_csv = run_edit(ck, write_rows(tmp_path / "h.csv", history), tmp_path / "a.npy", *flags)
    np.save(tmp_path / "h.npy", history)
    np.testing.assert_array_equal(run_edit(ck, tmp_path / "h.npy", tmp_path / "b.csv", *flags)[:, 1:],
                                  from_csv.reshape(-1, 3))
    assert "price, volume, noise" in capsys.readouterr().out
    np.save(tmp_path / "two.npy", history[:, :2])
    code = main(["edit", "--checkpoint", str(ck), "--series", str(tmp_path / "two.npy"), *flags, "--out",
                 str(tmp_path / "c.csv"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "has 2 columns; the model was trained on 3 (price, volume, noise, in this order)" in err
    assert not (tmp_path / "c.csv").exists()


def test_a_file_with_nothing_missing_is_written_back_unchanged(file_run, tmp_path, capsys):
    ck, values, _, _ = file_run
    window = values[10:18]
    out = run_edit(ck, write_rows(tmp_path / "full.csv", window), tmp_path / "o.npy", "--num", "2")
    assert "has no missing value, so nothing was sampled" in capsys.readouterr().out
    np.testing.assert_array_equal(out, np.stack([window, window]))


def test_series_defaults_are_ddpm_with_reconstruction_guidance_1(file_run, tmp_path):
    """--series without --sampler / --reconstruction-weight is --sampler ddpm --reconstruction-weight 1."""
    ck, values, _, _ = file_run
    path = write_rows(tmp_path / "h.csv", values[62:68])
    default = run_edit(ck, path, tmp_path / "a.npy", "--horizon", "2", "--num", "2")
    explicit = run_edit(ck, path, tmp_path / "b.npy", "--horizon", "2", "--num", "2", "--sampler", "ddpm",
                        "--reconstruction-weight", "1")
    np.testing.assert_array_equal(default, explicit)
    replacement = run_edit(ck, path, tmp_path / "c.npy", "--horizon", "2", "--num", "2", "--sampler", "ddpm",
                           "--reconstruction-weight", "0")
    assert not np.array_equal(default, replacement)


def test_a_batch_out_of_memory_is_halved_and_redrawn(file_run, tmp_path, monkeypatch, capsys):
    """--series reuses memory.batches_with_oom_retry: a batch of more than one sample that runs out of
    accelerator memory is redrawn in halves, with the same samples (sample i uses --seed + i)."""
    ck, values, _, _ = file_run
    path = write_rows(tmp_path / "h.csv", values[62:68])
    flags = ["--horizon", "2", "--num", "3", "--seed", "5", "--batch-size", "4"]
    expected = run_edit(ck, path, tmp_path / "a.npy", *flags)
    real = diffkit.forecasting.forecast

    def tight(denoiser, history, *args, **kwargs):
        if history.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(denoiser, history, *args, **kwargs)

    monkeypatch.setattr(diffkit.forecasting, "forecast", tight)
    np.testing.assert_allclose(run_edit(ck, path, tmp_path / "b.npy", *flags), expected, rtol=1e-6)
    assert "out of memory with a batch of 3; retrying with 1" in capsys.readouterr().err


def scaled_rows(rows, low, high):
    """The rows (T, F) min-max scaled as the checkpoint's training rows, as the API's (1, F, T) float32."""
    return torch.from_numpy(2 * (rows - low) / (high - low) - 1).float().T[None]


def test_a_long_file_forecasts_from_its_last_rows_and_rolls_past_one_window(file_run, tmp_path, capsys):
    """20 rows (seq_length 8): --horizon 2 forecasts from the last 6 (as a file of those 6 rows does, bit for
    bit); --horizon 12 rolls in 6 windows of 2 new rows (the default chunk 8 // 4, told before sampling), equal to
    diffkit.forecast of the scaled rows by hand; --chunk 3 makes it 4 windows."""
    ck, values, low, high = file_run
    rows = values[40:60]
    path = write_rows(tmp_path / "long.csv", rows)
    flags = ["--num", "2", "--seed", "7"]
    tail = run_edit(ck, path, tmp_path / "a.npy", "--horizon", "2", *flags)
    assert "forecast 2 rows after 20 (from the last 6 as history)" in capsys.readouterr().out
    np.testing.assert_array_equal(tail, run_edit(ck, write_rows(tmp_path / "six.csv", rows[-6:]), tmp_path / "b.npy",
                                                 "--horizon", "2", *flags))
    capsys.readouterr()
    rolled = run_edit(ck, path, tmp_path / "c.npy", "--horizon", "12", *flags)
    assert ("forecast 12 rows after 20 (from the last 6 as history), rolled in 6 windows of up to 2 new rows, each "
            "conditioned on up to 6 rows before it") in capsys.readouterr().out
    assert rolled.shape == (2, 12, 3)
    model = diffkit.forecast(load_denoiser(ck), scaled_rows(rows, low, high).expand(2, -1, -1), 12, steps=3, seed=7,
                             progress=False)
    np.testing.assert_allclose(rolled, (model.double().permute(0, 2, 1).numpy() + 1) / 2 * (high - low) + low,
                               rtol=1e-6, atol=1e-6)
    assert np.isfinite(rolled).all()
    run_edit(ck, path, tmp_path / "d.npy", "--horizon", "12", "--chunk", "3", *flags)
    printed = capsys.readouterr().out
    assert "rolled in 4 windows of up to 3 new rows, each conditioned on up to 5 rows" in printed
    assert printed.startswith("forecasting 12 rows: 4 window(s) of 8 rows per sample\n")  # told before sampling


def test_the_window_count_is_printed_before_sampling_and_an_unused_chunk_is_said(file_run, tmp_path, capsys):
    """The plan line comes first (before any sample is drawn); --chunk with a horizon of at most --chunk, or
    with a file of at most seq_length rows to impute, is one window and the note says --chunk is unused."""
    ck, values, _, _ = file_run
    path = write_rows(tmp_path / "h.csv", values[62:68])
    run_edit(ck, path, tmp_path / "a.npy", "--horizon", "2", "--chunk", "3")
    assert capsys.readouterr().out.startswith("forecasting 2 rows: 1 window(s) of 8 rows per sample (--chunk 3 is "
                                              "unused: the horizon 2 is at most --chunk 3: one window)\n")
    cells = values[62:68].tolist()
    cells[1][0] = ""  # one empty cell
    gaps = write_rows(tmp_path / "gaps.csv", cells)
    run_edit(ck, gaps, tmp_path / "b.npy", "--chunk", "5")
    assert capsys.readouterr().out.startswith("imputing 6 rows: at most 1 window(s) of 8 rows per sample (--chunk 5 "
                                              "is unused: the file's 6 rows fit one window of 8)\n")


def test_a_long_file_is_imputed_window_by_window(file_run, tmp_path, capsys):
    """30 rows with 4 empty / NaN cells: every row is written back, the given cells exactly as read, the missing
    ones filled as diffkit.impute (windows of 8 starting at rows 0, 4, ..., 20, 22) fills them by hand."""
    ck, values, low, high = file_run
    rows = values[5:35]
    cells = [[repr(float(v)) for v in row] for row in rows]
    missing = np.zeros(rows.shape, dtype=bool)
    for r, c, text in ((1, 0, ""), (9, 2, "nan"), (17, 1, ""), (28, 0, "NaN")):
        cells[r][c] = text
        missing[r, c] = True
    path = tmp_path / "gaps.csv"
    body = "".join(f"d{i}," + ",".join(row) + "\n" for i, row in enumerate(cells))
    path.write_text("date,price,volume,noise\n" + body)
    filled = run_edit(ck, path, tmp_path / "i.npy", "--num", "2")
    printed = capsys.readouterr().out
    assert printed.startswith("imputing 30 rows: at most 7 window(s) of 8 rows per sample\n")
    assert ("imputed 4 missing values of 30 rows in 7 windows of 8 rows starting at rows 0, 4, 8, ..., 22, "
            "each keeping its rows before start + 6 (the last: all)") in printed
    assert filled.shape == (2, 30, 3) and np.isfinite(filled).all()
    assert (filled[:, ~missing] == rows[~missing]).all()  # the given values exactly as read
    model = diffkit.impute(load_denoiser(ck), scaled_rows(np.where(missing, np.nan, rows), low, high).expand(2, -1, -1),
                           None, "ddpm", 3, seed=0, progress=False)
    expected = (model.double().permute(0, 2, 1).numpy() + 1) / 2 * (high - low) + low
    np.testing.assert_allclose(filled[:, missing], expected[:, missing], rtol=1e-6, atol=1e-6)


def gappy_file(tmp_path, values):
    """24 rows (5 windows of seq_length 8) with cells missing at random (30%) and a block of 3 empty rows."""
    rows = values[0:24]
    missing = np.random.default_rng(3).random(rows.shape) < 0.3
    missing[12:15] = True
    cells = [["" if m else repr(float(v)) for v, m in zip(row, row_missing)] for row, row_missing in zip(rows, missing)]
    return write_rows(tmp_path / "gappy.csv", cells), missing


def test_a_long_imputation_does_not_depend_on_batch_size_or_num(file_run, tmp_path):
    """Sample i of a long file (its windows drawn in batches of windows, level by level) is the same at
    --batch-size 1 (one window per call) and auto (the default), and with --num 1 --seed 5 + i: equal up to the
    float32 round-off of the batched network (rtol 1e-5; the file's values are 1-60)."""
    ck, values, _, _ = file_run
    path, missing = gappy_file(tmp_path, values)
    flags = ["--num", "3", "--seed", "5", "--reconstruction-weight", "0"]
    auto = run_edit(ck, path, tmp_path / "a.npy", *flags)
    np.testing.assert_allclose(run_edit(ck, path, tmp_path / "1.npy", *flags, "--batch-size", "1"), auto, rtol=1e-5,
                               atol=1e-5)
    alone = run_edit(ck, path, tmp_path / "alone.npy", "--num", "1", "--seed", "6", "--reconstruction-weight", "0")
    np.testing.assert_allclose(alone[0], auto[1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(auto[0][missing], auto[1][missing])  # the samples differ where drawn


def test_the_csv_is_written_sample_by_sample_and_nothing_is_left_on_an_error(file_run, tmp_path, monkeypatch):
    """The CSV output of a long imputation holds the .npy's values (each as repr(float)); an error while
    the second sample is written leaves neither --out nor a temp file in its folder."""
    ck, values, _, _ = file_run
    path, _ = gappy_file(tmp_path, values)
    flags = ["--num", "2", "--seed", "1", "--reconstruction-weight", "0"]
    array = run_edit(ck, path, tmp_path / "o.npy", *flags)
    run_edit(ck, path, tmp_path / "o.csv", *flags)
    header, table = read_out(tmp_path / "o.csv")
    assert header == ["sample", *COLUMNS] and table[:, 0].tolist() == [0] * 24 + [1] * 24
    np.testing.assert_array_equal(table[:, 1:].reshape(2, 24, 3), array)
    from diffkit.series_files import SeriesScaling
    real, calls = SeriesScaling.unnormalise, []

    def fails_on_the_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated failure mid-write")
        return real(self, *args, **kwargs)
    monkeypatch.setattr(SeriesScaling, "unnormalise", fails_on_the_second)
    (tmp_path / "out").mkdir()
    with pytest.raises(RuntimeError, match="mid-write"):
        main(["edit", "--checkpoint", str(ck), "--series", str(path), "--steps", "3", "--out",
              str(tmp_path / "out" / "p.csv"), "--no-progress", *flags])
    assert list((tmp_path / "out").iterdir()) == []


def test_batch_size_auto_is_for_series(tmp_path, capsys):
    code = main(["edit", "--checkpoint", str(tmp_path / "none.safetensors"), "--images", str(tmp_path),
                 "--batch-size", "auto", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--batch-size auto goes with --series" in err and len(err.strip().splitlines()) == 1


def test_the_grid_flags_and_restarts_reach_the_forecast(file_run, tmp_path, capsys):
    """edit --series takes --spacing / --final and --restarts as edit --images does (add_solver_flags): the file is
    diffkit.forecast(..., spacing=, final=) / (..., "restart", restarts=[...]) of the scaled history, by hand; each
    differs from the default grid's / intervals' forecast, so the flags are not ignored."""
    ck, values, low, high = file_run
    history = values[62:68]
    path = write_rows(tmp_path / "history.csv", history)
    scaled = torch.from_numpy(2 * (history - low) / (high - low) - 1).float().T[None].expand(2, -1, -1)
    for i, (flags, sampler, options) in enumerate((
            (["--sampler", "dpm-solver++-2m", "--spacing", "trailing", "--final", "zero"], "dpm-solver++-2m",
             {"spacing": "trailing", "final": "zero"}),
            (["--sampler", "restart", "--restarts", "0.1:0.5:1:2"], "restart", {"restarts": [(0.1, 0.5, 1, 2)]}))):
        code = main(["edit", "--checkpoint", str(ck), "--series", str(path), "--horizon", "2", "--num", "2",
                     "--steps", "4", *flags, "--out", str(tmp_path / f"f{i}.npy"), "--no-progress"])
        assert code == 0, capsys.readouterr().err

        def by_hand(**extra):
            model = diffkit.forecast(load_denoiser(ck), scaled, 2, sampler, steps=4, seed=0, progress=False, **extra)
            return ((model.double().permute(0, 2, 1).numpy() + 1) / 2 * (high - low) + low).astype(np.float32)

        written = np.load(tmp_path / f"f{i}.npy")
        np.testing.assert_allclose(written, by_hand(**options), rtol=1e-6, atol=1e-6)
        assert not np.allclose(written, by_hand(), rtol=1e-6, atol=1e-6)
