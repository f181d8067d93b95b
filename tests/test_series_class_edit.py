"""Class labels and classifier-free guidance in forecasting and imputation of a class-conditional series model:
``diffkit.forecast`` / ``diffkit.impute`` with ``cond={"y": ...}`` (and a :class:`ClassifierFreeGuidance`
denoiser), and ``diffkit edit --series FILE --class K [--guidance-scale W]``, whose file may hold the
checkpoint's ``label_column`` (dropped from the values; without ``--class`` its label is the class)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import diffkit
from diffkit.cli import main
from diffkit.denoiser import Denoiser, Wrapper
from diffkit.guidance import ClassifierFreeGuidance
from diffkit.models.temporal import TemporalUNet, TemporalUNetConfig
from diffkit.schedule import NoiseSchedule
import test_series_conditioning as conditioning
from test_series_conditioning import TINY, randomised, write_csv

labelled_run = conditioning.labelled_run  # the fixture: a 3-class series checkpoint (columns a, b; label "state")


def conditional_denoiser(classes: int = 3) -> Denoiser:
    """A 3-channel, ``classes``-class 1-D U-Net with every weight random, so its output depends on y."""
    return Denoiser(randomised(TemporalUNet(TemporalUNetConfig(**TINY, num_classes=classes))),
                    NoiseSchedule.from_name("linear", 20))


HISTORY = torch.linspace(-0.8, 0.8, 2 * 3 * 5).reshape(2, 3, 5)


def run_forecast(den, y=None, **kw):
    cond = {} if y is None else {"cond": {"y": torch.tensor(y)}}
    return diffkit.forecast(den, HISTORY[:len(y) if y is not None else 2], 3, steps=3, length=8, progress=False,
                            **{"seed": 4, **kw}, **cond)


def test_the_class_reaches_the_network_and_the_null_class_is_the_unconditional_forecast():
    den = conditional_denoiser()
    zero, one, null, plain = (run_forecast(den, y) for y in ([0, 0], [1, 1], [3, 3], None))
    assert not torch.allclose(zero, one, atol=1e-4)
    # y = num_classes is the network's null label, the one it takes without y: the same draws, so the class
    # changes nothing of the randomness
    torch.testing.assert_close(null, plain, rtol=0, atol=0)
    series = torch.cat([HISTORY, torch.full((2, 3, 3), float("nan"))], dim=-1)
    a, b = (diffkit.impute(den, series, steps=3, length=8, seed=4, progress=False, cond={"y": torch.tensor(y)})
            for y in ([0, 0], [1, 1]))
    assert not torch.allclose(a[..., 5:], b[..., 5:], atol=1e-4)


def test_sample_i_depends_on_its_seed_and_class_only():
    """Per-sample seeds (seed + i) and per-sample classes: sample 1 of a batch is sample 0 of a batch of one
    with seed + 1 and its own class, for a forecast and an imputation (whose windows take their sample's class)."""
    den = conditional_denoiser()
    both = run_forecast(den, [0, 2])
    torch.testing.assert_close(both[1:], diffkit.forecast(den, HISTORY[1:], 3, steps=3, length=8, seed=5,
                                                          progress=False, cond={"y": torch.tensor([2])}),
                               rtol=1e-5, atol=1e-6)
    series = torch.cat([HISTORY, HISTORY], dim=-1).clone()  # 10 steps: two windows of 8
    series[:, :, 3] = series[:, :, 8] = float("nan")
    both = diffkit.impute(den, series, steps=3, length=8, chunk=2, seed=4, progress=False,
                          cond={"y": torch.tensor([0, 2])})
    alone = diffkit.impute(den, series[1:], steps=3, length=8, chunk=2, seed=5, progress=False,
                           cond={"y": torch.tensor([2])})
    torch.testing.assert_close(both[1:], alone, rtol=1e-5, atol=1e-6)


class Recorder(Wrapper):
    """Records the input and the output of the first call of the denoiser it wraps."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, x, t, **cond):
        pred = self.inner(x, t, **cond)
        self.calls.append((x.detach().clone(), torch.as_tensor(t).detach().clone(), cond["y"].clone(),
                           pred.eps.detach().clone()))
        return pred


@pytest.mark.parametrize("reconstruction_weight", [0.0, 1.0])
def test_a_guided_forecast_steps_with_1_plus_w_eps_c_minus_w_eps_null(reconstruction_weight):
    """Ho & Salimans 2022 eq. 6 at the forecast's steps, against two plain calls of the model."""
    den, w = conditional_denoiser(), 2.5
    recorder = Recorder(ClassifierFreeGuidance(den, w))
    run_forecast(recorder, [1, 2], reconstruction_weight=reconstruction_weight)
    assert len(recorder.calls) == 3
    for x, t, y, eps in recorder.calls:
        assert y.tolist() == [1, 2]
        with torch.no_grad():
            eps_c, eps_u = den(x, t, y=y).eps, den(x, t).eps
        torch.testing.assert_close(eps, (1 + w) * eps_c - w * eps_u, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ diffkit edit --series
def edit(ckpt, path, out, *flags):
    return main(["edit", "--checkpoint", str(ckpt), "--series", str(path), "--steps", "2", "--out", str(out),
                 "--no-progress", *flags])


def test_the_cli_forecasts_a_class_with_guidance_seeded_per_sample(labelled_run, tmp_path, capsys):
    path = write_csv(tmp_path / "h.csv", [1] * 6)
    runs = {}
    for name, flags in (("c0", ["--class", "0"]), ("c1", ["--class", "1"]), ("g", ["--class", "1", "--guidance-scale",
                                                                                   "3"])):
        assert edit(labelled_run, path, tmp_path / f"{name}.npy", "--horizon", "2", "--num", "2", *flags) == 0
        runs[name] = np.load(tmp_path / f"{name}.npy")
    out = capsys.readouterr().out
    assert "class 1 (--class, guidance scale 3)" in out
    assert runs["c0"].shape == (2, 2, 2) and not np.allclose(runs["c0"], runs["c1"], atol=1e-6)
    assert not np.allclose(runs["g"], runs["c1"], atol=1e-6)
    # sample 1 of --seed 0 is sample 0 of --seed 1, with the class and guidance
    assert edit(labelled_run, path, tmp_path / "one.npy", "--horizon", "2", "--seed", "1", "--class", "1",
                "--guidance-scale", "3") == 0
    np.testing.assert_allclose(np.load(tmp_path / "one.npy")[0], runs["g"][1], rtol=1e-5, atol=1e-6)


def test_the_label_column_is_dropped_and_its_label_is_the_class(labelled_run, tmp_path, capsys):
    labelled = write_csv(tmp_path / "l.csv", [2] * 6)  # date, a, b, state
    text = labelled.read_text().splitlines()
    plain = tmp_path / "p.csv"
    plain.write_text("\n".join(",".join(line.split(",")[:3]) for line in text) + "\n")  # date, a, b
    assert edit(labelled_run, plain, tmp_path / "k.csv", "--horizon", "2", "--class", "2") == 0
    assert edit(labelled_run, labelled, tmp_path / "f.csv", "--horizon", "2") == 0
    assert edit(labelled_run, labelled, tmp_path / "o.csv", "--horizon", "2", "--class", "0") == 0
    assert edit(labelled_run, plain, tmp_path / "n.csv", "--horizon", "2") == 0
    out = capsys.readouterr().out
    assert "class 2 (label column 'state')" in out and "the null class" in out
    k, f, o, n = ((tmp_path / f"{name}.csv").read_text() for name in "kfon")
    assert k.splitlines()[0] == "sample,a,b" and f == k  # the file's label 2 is --class 2
    assert o != k and n != k  # --class overrides the file's label; no label: the null class
    # a forecast reads only the last rows (those of its first window's history); an imputation's windows
    # each take their own rows' label (test_each_window_of_a_long_imputation_takes_its_own_rows_class)
    mixed = write_csv(tmp_path / "m.csv", [0, 0, 0, 1, 1, 1])
    assert edit(labelled_run, mixed, tmp_path / "mf.csv", "--horizon", "1") == 0  # the last 3 rows: label 1
    assert "class 1 (label column 'state')" in capsys.readouterr().out
    assert edit(labelled_run, mixed, tmp_path / "mi.csv") == 0  # nothing missing: written back
    # a row of empty cells is a row to impute, but it has no label
    assert edit(labelled_run, write_csv(tmp_path / "e.csv", [1] * 6, ",,,\n"), tmp_path / "e_out.csv") == 2
    assert "has 7 rows but 6 labels in column 'state'; every row needs its label" in capsys.readouterr().err
    assert edit(labelled_run, tmp_path / "e.csv", tmp_path / "e_out.csv", "--class", "1") == 0


@pytest.mark.parametrize("labels,flags,message", [
    ([1] * 6, ["--class", "3"], r"--class 3 is out of range; allowed: 0\.\.2"),
    ([1] * 6, ["--class", "-1", "--guidance-scale", "1"], r"--class -1 is out of range; allowed: 0\.\.2"),
    ([5] * 6, [], r"label column 'state' holds 5; the model's classes are 0\.\.2"),
    (None, ["--guidance-scale", "2"], r"--guidance-scale needs a class to guide towards: give --class K \(0\.\.2\)"),
    ([1] * 6, ["--class", "1", "--guidance-scale", "-2"], r"guidance scale=-2\.0 is out of range; allowed: >= -1"),
])
def test_class_mistakes_are_one_line_errors(labelled_run, tmp_path, capsys, labels, flags, message):
    import re
    path = write_csv(tmp_path / "h.csv", labels or [0] * 6)
    if labels is None:  # no label column
        path.write_text("\n".join(",".join(line.split(",")[:3]) for line in path.read_text().splitlines()) + "\n")
    assert edit(labelled_run, path, tmp_path / "o.csv", "--horizon", "2", *flags) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o.csv").exists()


def _file_units(den, rows):
    """(series (1, F, rows) in the model's units, scaling, values (rows, F)) of :func:`write_csv`'s first
    ``rows`` rows (sin i, cos i to 4 places), scaled by the checkpoint's ``series_scaling`` (the training
    file's min-max scaling, diffkit.series_files), not through the CLI."""
    from diffkit.series_files import SeriesScaling
    values = np.array([[round(math.sin(i), 4), round(math.cos(i), 4)] for i in range(rows)])
    scaling = SeriesScaling.from_meta(den.meta["series_scaling"])
    return torch.from_numpy(scaling.normalise(values).T.astype(np.float32))[None], scaling, values


RESCALED = ["--guidance-rescale", "0.7", "--guidance-interval", "3", "12"]


@pytest.mark.parametrize("flags,scale", [(["--class", "1"], None), (["--class", "1", "--guidance-scale", "3"], 3.0),
                                         (["--class", "1", "--guidance-scale", "3", *RESCALED], 3.0),
                                         (["--class", "1", "--guidance-scale", "4", "--guidance-convention",
                                           "diffusers"], 3.0)])
def test_the_cli_forecast_is_the_api_forecast_with_that_class_and_guidance(labelled_run, tmp_path, flags, scale):
    """``--class 1 [--guidance-scale 3 [--guidance-rescale 0.7 --guidance-interval 3 12]]`` is diffkit.forecast
    of ClassifierFreeGuidance(den, 3[, rescale=0.7, interval=(3, 12)]) (the null class K = 3) with cond y = 1,
    in the file's units: a halved W, another class, another null class, or no rescale / interval differ.
    ``--guidance-scale 4 --guidance-convention diffusers`` (as diffkit sample reads it) is diffusers' s = 1 + W:
    W = 3."""
    from diffkit.loading import load_denoiser
    path = write_csv(tmp_path / "h.csv", [0] * 6)  # the file's label 0 is overridden by --class 1
    assert edit(labelled_run, path, tmp_path / "o.npy", "--horizon", "2", "--num", "2", *flags) == 0
    den = load_denoiser(labelled_run)
    history, scaling, _ = _file_units(den, 6)
    rescaled = dict(rescale=0.7, interval=(3, 12)) if "--guidance-rescale" in flags else {}
    model = den if scale is None else ClassifierFreeGuidance(den, scale, null_class=3, **rescaled)
    api = diffkit.forecast(model, history.expand(2, -1, -1), 2, steps=2, seed=0, progress=False,
                           cond={"y": torch.tensor([1, 1])})
    expected = scaling.unnormalise(api.double().numpy(), axis=1).transpose(0, 2, 1)  # (num, H, F)
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), expected, rtol=0, atol=1e-6)


def test_the_cli_imputation_is_the_api_imputation_with_that_class_and_guidance(labelled_run, tmp_path):
    from diffkit.loading import load_denoiser
    path = write_csv(tmp_path / "h.csv", [1] * 6)
    lines = path.read_text().splitlines()
    lines[3] = "2,,-0.4161,1"  # row 2: a missing
    lines[5] = "4,-0.7568,,1"  # row 4: b missing
    path.write_text("\n".join(lines) + "\n")
    assert edit(labelled_run, path, tmp_path / "o.npy", "--class", "1", "--guidance-scale", "3") == 0
    den = load_denoiser(labelled_run)
    series, scaling, values = _file_units(den, 6)
    series[0, 0, 2] = series[0, 1, 4] = float("nan")
    api = diffkit.impute(ClassifierFreeGuidance(den, 3.0, null_class=3), series, steps=2, seed=0, progress=False,
                         cond={"y": torch.tensor([1])})
    expected = scaling.unnormalise(api.double().numpy(), axis=1)[0].T
    got = np.load(tmp_path / "o.npy")[0]
    np.testing.assert_allclose(got[[2, 4], [0, 1]], expected[[2, 4], [0, 1]], rtol=0, atol=1e-6)
    values[2, 0] = values[4, 1] = np.nan
    known = ~np.isnan(values)
    np.testing.assert_array_equal(got[known], values[known])  # the given values as read


def test_a_class_with_a_batch_smaller_than_num_is_the_batch_auto_forecast(labelled_run, tmp_path):
    path = write_csv(tmp_path / "h.csv", [2] * 6)
    for name, batch in (("one", "1"), ("auto", "auto")):
        assert edit(labelled_run, path, tmp_path / f"{name}.npy", "--horizon", "2", "--num", "3", "--class", "1",
                    "--guidance-scale", "2", "--batch-size", batch) == 0
    np.testing.assert_allclose(np.load(tmp_path / "one.npy"), np.load(tmp_path / "auto.npy"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("labels,message", [
    # seq_length 4, --horizon 1: the history is rows 3..5 (the last L - 1)
    ([0, 0, 0, 1, 0, 0], "label column 'state' holds 0, 1 in the rows 3..5 (from 0) that the forecast reads"),
    ([0, 0, 0, 0, 0, 1], "label column 'state' holds 0, 1 in the rows 3..5 (from 0) that the forecast reads"),
    ([0, 0, 1, 0, 0, 0], "class 0 (label column 'state')"),  # row 2 is not read
    (["", "x", 7, 2, 2, 2], "class 2 (label column 'state')"),  # nor are rows 0..2: any text, or none
    ([2, 2, 2, "", 2, 2], "line 5: label column 'state' holds ''; a class label must be an integer 0, 1, ..., K-1 "
                          "(as 3, 3.0 or 3e0) on every row that the forecast reads (or give --class K)"),
])
def test_a_forecast_reads_the_labels_of_its_history_rows_only(labelled_run, tmp_path, capsys, labels, message):
    path = write_csv(tmp_path / "h.csv", labels)
    code = edit(labelled_run, path, tmp_path / "o.csv", "--horizon", "1")
    out, err = capsys.readouterr()
    assert message in (out if message.startswith("class") else err), (out, err)
    assert code == (0 if message.startswith("class") else 2)
    if code:
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o.csv").exists()


def test_without_class_or_labels_a_model_trained_without_a_null_class_is_refused(labelled_run, tmp_path, capsys):
    """p_uncond = 0: the null label's embedding was never trained, so the silent null class is refused; with
    p_uncond > 0 it is used and the output note says so."""
    from diffkit.checkpoint import load_checkpoint, save_checkpoint
    tensors, meta = load_checkpoint(labelled_run)
    assert meta["config"]["p_uncond"] == 0.1
    meta["config"]["p_uncond"] = 0.0
    never = save_checkpoint(tmp_path / "never.safetensors", tensors, meta)
    path = write_csv(tmp_path / "h.csv", [1] * 6)
    plain = tmp_path / "p.csv"
    plain.write_text("\n".join(",".join(line.split(",")[:3]) for line in path.read_text().splitlines()) + "\n")
    assert edit(never, plain, tmp_path / "o.csv", "--horizon", "2") == 2
    err = capsys.readouterr().err
    assert ("this class-conditional checkpoint was trained with p_uncond=0, so it has no null class: give --class K "
            "(0..2) or a label column 'state' in the file") in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.csv").exists()
    assert edit(never, plain, tmp_path / "o.csv", "--horizon", "2", "--class", "1") == 0
    assert edit(never, path, tmp_path / "o.csv", "--horizon", "2") == 0  # the file's label
    assert edit(labelled_run, plain, tmp_path / "o.csv", "--horizon", "2") == 0
    assert "the null class (unconditional; give --class K)" in capsys.readouterr().out


# ------------------------------------------------------------------ a file whose label changes: each window its own
def _segments(tmp_path, labels, missing):
    """write_csv of ``labels`` with the cells ``missing`` ((row, column) pairs, column 0 = a) emptied."""
    path = write_csv(tmp_path / "s.csv", labels)
    lines = path.read_text().splitlines()
    for row, column in missing:
        cells = lines[row + 1].split(",")
        cells[column + 1] = ""
        lines[row + 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    return path


SEGMENTS = [0] * 6 + [2] * 6  # L = 4, chunk 2: windows at rows 0, 2, 4, 6, 8 (4..7 across the change)
HOLES = [(1, 0), (3, 1), (5, 0), (6, 1), (8, 0), (10, 1), (11, 0)]


@pytest.mark.parametrize("flags", [[], ["--guidance-scale", "3", *RESCALED]])
def test_each_window_of_a_long_imputation_takes_its_own_rows_class(labelled_run, tmp_path, capsys, flags):
    """A file of 6 rows of label 0 then 6 of label 2 (no --class): the CLI's imputation (2 samples) is
    diffkit.impute with labels= the file's labels (each window the class its rows share, window 4..7 the null
    class) of the checkpoint [wrapped in ClassifierFreeGuidance(den, 3, rescale=0.7, interval=(3, 12))], to
    1e-6, and differs from --class 0 (one class for every window) where label 2's rows are imputed."""
    from diffkit.loading import load_denoiser
    path = _segments(tmp_path, SEGMENTS, HOLES)
    assert edit(labelled_run, path, tmp_path / "o.npy", "--num", "2", *flags) == 0
    out = capsys.readouterr().out
    guidance = ", guidance scale 3, rescale 0.7, interval 3..12" if flags else ""
    assert (f"each window the class of its rows (label column 'state'{guidance}); windows: class 0 x 2, class 2 x 2, "
            f"the null class x 1 (across a change of label)") in out, out
    den = load_denoiser(labelled_run)
    series, scaling, values = _file_units(den, 12)
    for row, column in HOLES:
        series[0, column, row] = values[row, column] = float("nan")
    model = ClassifierFreeGuidance(den, 3.0, null_class=3, rescale=0.7, interval=(3, 12)) if flags else den
    api = diffkit.impute(model, series.expand(2, -1, -1), steps=2, seed=0, progress=False,
                         labels=torch.tensor(SEGMENTS))
    expected = scaling.unnormalise(api.double().numpy(), axis=1).transpose(0, 2, 1)
    got = np.load(tmp_path / "o.npy")
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    known = ~np.isnan(values)
    np.testing.assert_array_equal(got[:, known], np.broadcast_to(values[known], (2, known.sum())))
    assert edit(labelled_run, path, tmp_path / "k.npy", "--num", "2", "--class", "0", *flags) == 0
    late = [(row, column) for row, column in HOLES if row >= 8]  # kept by the windows of label 2's rows
    rows, columns = zip(*late)
    assert not np.allclose(np.load(tmp_path / "k.npy")[:, rows, columns], got[:, rows, columns], atol=1e-5)


def test_a_window_across_a_change_of_label_needs_a_trained_null_class(labelled_run, tmp_path, capsys):
    """p_uncond = 0: a window to draw across a change of label is refused, naming its rows; one that draws
    nothing (its rows complete) is not drawn, so not refused; --class K gives every window K."""
    from diffkit.checkpoint import load_checkpoint, save_checkpoint
    tensors, meta = load_checkpoint(labelled_run)
    meta["config"]["p_uncond"] = 0.0
    never = save_checkpoint(tmp_path / "never.safetensors", tensors, meta)
    path = _segments(tmp_path, SEGMENTS, HOLES)
    assert edit(never, path, tmp_path / "o.csv") == 2
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [
        "diffkit edit: error: the window of rows 4..7 (from 0) holds the labels 0, 2: a window across a change of "
        "label takes the null class, which this checkpoint never trained (p_uncond=0); give --class K (one class "
        "for every window)"] and out == ""  # refused before the plan line "imputing 12 rows: ..."
    assert not (tmp_path / "o.csv").exists()
    from diffkit.errors import DiffkitError
    from diffkit.loading import load_denoiser
    series, _, _ = _file_units(load_denoiser(labelled_run), 12)
    for row, column in HOLES:
        series[0, column, row] = float("nan")
    with pytest.raises(DiffkitError, match=r"^the window of steps 4\.\.7 \(from 0\) holds the labels 0, 2: .* never "
                                           r"trained \(p_uncond=0\); give one class for every window \(cond=\{'y': "
                                           r"\.\.\.\}\)$"):  # the API's own words
        diffkit.impute(load_denoiser(never), series, steps=2, progress=False, labels=torch.tensor(SEGMENTS))
    assert edit(never, path, tmp_path / "o.csv", "--class", "2") == 0
    # rows 4..7 complete and kept by windows before: the window at row 4 keeps rows 4..6, which hold nothing
    # missing, and the next keeps 7.. (rows 1 and 10 missing)
    complete = _segments(tmp_path, SEGMENTS, [(1, 0), (10, 1)])
    assert edit(never, complete, tmp_path / "c.csv") == 0


def test_the_windows_note_counts_only_the_windows_drawn(labelled_run, tmp_path, capsys):
    """40 rows, label 0 then 2 from row 20 (L = 4, chunk 2: windows at rows 0, 2, ..., 36; the one at 18
    across the change), holes only at rows 2 and 35: only the windows at 0 (class 0) and 34 (class 2) are
    drawn, so the note counts those two and no null class, also for a p_uncond = 0 checkpoint."""
    from diffkit.checkpoint import load_checkpoint, save_checkpoint
    tensors, meta = load_checkpoint(labelled_run)
    meta["config"]["p_uncond"] = 0.0
    never = save_checkpoint(tmp_path / "never.safetensors", tensors, meta)
    path = _segments(tmp_path, [0] * 20 + [2] * 20, [(2, 0), (35, 1)])
    for ckpt in (labelled_run, never):
        assert edit(ckpt, path, tmp_path / "o.csv") == 0
        out = capsys.readouterr().out
        assert "(label column 'state'); windows: class 0 x 1, class 2 x 1)" in out and "null" not in out, out


def test_a_labelled_file_shorter_than_the_window(labelled_run, tmp_path, capsys):
    """3 rows (L = 4) labelled 0, 1, 1: one window, across the change: the null class (the API's labels= of the
    file's labels); with --guidance-scale both passes take it, so a note says the scale has no effect (the output
    is the unguided one up to round-off); a p_uncond = 0 checkpoint refuses it, naming rows 0..2."""
    from diffkit.checkpoint import load_checkpoint, save_checkpoint
    path = _segments(tmp_path, [0, 1, 1], [(1, 0)])
    assert edit(labelled_run, path, tmp_path / "o.npy", "--num", "2") == 0
    out = capsys.readouterr().out
    assert "windows: the null class x 1 (across a change of label)" in out and "note:" not in out, out
    assert edit(labelled_run, path, tmp_path / "g.npy", "--num", "2", "--guidance-scale", "3") == 0
    out = capsys.readouterr().out
    assert ("note: every window spans a change of label, so all take the null class and --guidance-scale has no "
            "effect\n") in out, out
    np.testing.assert_allclose(np.load(tmp_path / "g.npy"), np.load(tmp_path / "o.npy"), rtol=0, atol=1e-5)
    tensors, meta = load_checkpoint(labelled_run)
    meta["config"]["p_uncond"] = 0.0
    never = save_checkpoint(tmp_path / "never.safetensors", tensors, meta)
    assert edit(never, path, tmp_path / "n.npy") == 2
    assert "the window of rows 0..2 (from 0) holds the labels 0, 1" in capsys.readouterr().err


def test_edit_help_says_the_rescale_and_interval_need_series_or_a_prompt_and_a_guidance_scale(capsys):
    with pytest.raises(SystemExit):
        main(["edit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--guidance-rescale PHI with --series or --prompt, and --guidance-scale: guidance rescale phi" in text
    assert "--guidance-interval T_LO T_HI with --series or --prompt, and --guidance-scale: guide only for" in text
    assert "--guidance-convention {seed,diffusers} with --series or --prompt, and --guidance-scale: read" in text


@pytest.mark.parametrize("command", ["edit", "sample"])
def test_guidance_of_a_model_trained_without_label_dropout_is_refused(labelled_run, tmp_path, capsys, command):
    """p_uncond = 0: --guidance-scale extrapolates from an untrained null class, refused in one line (edit
    --series and sample, the same check) before any output; the key missing (older checkpoints) is accepted."""
    from diffkit.checkpoint import load_checkpoint, save_checkpoint
    tensors, meta = load_checkpoint(labelled_run)
    meta["config"]["p_uncond"] = 0.0
    never = save_checkpoint(tmp_path / "never.safetensors", tensors, meta)
    del meta["config"]["p_uncond"]
    old = save_checkpoint(tmp_path / "old.safetensors", tensors, meta)
    path = write_csv(tmp_path / "h.csv", [1] * 6)

    def run(ckpt, out):
        if command == "edit":
            return edit(ckpt, path, out / "o.csv", "--horizon", "2", "--class", "1", "--guidance-scale", "3")
        return main(["sample", "--checkpoint", str(ckpt), "--class", "1", "--guidance-scale", "3", "--num", "2",
                     "--sampler", "ddpm", "--steps", "1", "--out", str(out / "s.png"), "--no-progress"])
    assert run(never, tmp_path / "new") == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"diffkit {command}: error: this checkpoint was trained with p_uncond=0, so "
                                        f"its null class is untrained; classifier-free guidance needs a model trained "
                                        f"with label dropout (p_uncond > 0)"], err
    assert not (tmp_path / "new").exists()
    assert run(old, tmp_path) == 0


@pytest.mark.parametrize("flags", [
    ["--guidance-rescale", "0.5"],
    ["--guidance-convention", "diffusers"],
    ["--class", "1", "--guidance-scale", "-0.5", "--guidance-convention", "diffusers"],
    ["--guidance-interval", "2", "9"],
    ["--class", "1", "--guidance-scale", "2", "--guidance-rescale", "1.5"],
    ["--class", "1", "--guidance-scale", "2", "--guidance-interval", "9", "2"],
    ["--class", "1", "--guidance-scale", "2", "--guidance-interval", "0", "99"],
])
def test_rescale_and_interval_mistakes_are_sample_s_one_line_errors(labelled_run, tmp_path, capsys, flags):
    """The same one-line error as diffkit sample gives for the same flags, and no output."""
    path = write_csv(tmp_path / "h.csv", [1] * 6)
    assert edit(labelled_run, path, tmp_path / "o.csv", "--horizon", "2", *flags) == 2
    err = capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(labelled_run), "--num", "1", "--steps", "1", "--no-progress",
                 "--out", str(tmp_path / "s.png"), *flags]) == 2
    sample_err = capsys.readouterr().err
    assert err.replace("diffkit edit:", "") == sample_err.replace("diffkit sample:", "") and err.count("\n") == 1, err
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "s.png").exists()
