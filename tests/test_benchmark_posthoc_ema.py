"""benchmarks/posthoc_ema_digits.py scores with training_options.py's helpers: every synthesised EMA is paired
against the run's own EMA (the first row) on the same bootstrap indices, and the rows keep their EMA details."""
import json
import sys
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import posthoc_ema_digits  # noqa: E402
import training_options  # noqa: E402
from diffkit.metrics import feature_statistics  # noqa: E402


def test_rows_are_paired_against_the_runs_own_ema(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    reference = rng.standard_normal((30, 3))
    shifts = {"latest": 0.0, "phema_0.050": 1.0, "phema_0.100": 2.0}  # FD = |mean shift|^2 on top of noise
    features = {stem: reference + np.array([shift, 0.0, 0.0]) + 0.1 * rng.standard_normal((30, 3))
                for stem, shift in shifts.items()}
    latest = tmp_path / "run" / "latest.safetensors"
    for path in (latest, tmp_path / "phema_0.050.safetensors", tmp_path / "phema_0.100.safetensors"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()  # the synthesised checkpoints exist: nothing is synthesised or trained
    scorer = type("Scorer", (), {"reference_classifier": feature_statistics(reference)})()
    monkeypatch.setattr(posthoc_ema_digits, "evaluator", lambda path: path)
    monkeypatch.setattr(posthoc_ema_digits, "trained_run", lambda folder, steps, every: latest)
    monkeypatch.setattr(posthoc_ema_digits, "load_checkpoint", lambda path: (None, {"synthesised_ema": {
        "gamma": 1.0, "profile_error": 0.01, "snapshots": [0, 1]}}))
    monkeypatch.setattr(posthoc_ema_digits, "load_denoiser", lambda path, device: path)
    monkeypatch.setattr(posthoc_ema_digits, "experiment_scorer", lambda metric, den, **kw: scorer)
    monkeypatch.setattr(posthoc_ema_digits, "model_features",
                        lambda den, sc, folder, ckpt, sampler, steps, num, batch: (features[folder.name], 1.0, 50))
    out = tmp_path / "rows.json"
    assert posthoc_ema_digits.main(["--out-dir", str(tmp_path), "--evaluator", "ev", "--sigma-rels", "0.05,0.1",
                                    "--num", "30", "--replicates", "7", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    picks = training_options.bootstrap_picks(30, 7)
    point, boot = {}, {}
    for stem, row in zip(shifts, rows):
        point[stem], boot[stem] = training_options.fd_and_bootstrap(features[stem], scorer.reference_classifier,
                                                                    picks)
        assert row["fd"] == point[stem] and row["fd_sd"] == boot[stem].std(ddof=1)
        want = training_options.paired_difference(point, boot, stem, "latest")
        assert {k: row[k] for k in want} == want and ("difference" in row) == (stem != "latest")
    assert rows[2]["difference"] > rows[1]["difference"] > 0.5  # shifts 2 and 1: FD about 4 and 1
    assert (rows[1]["sigma_rel"], rows[1]["snapshots"], rows[1]["measured_nfe"]) == (0.05, 2, 50)
