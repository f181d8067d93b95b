"""benchmarks/flow_few_step.py: its options are checked before anything is trained or written, and its
scoring helpers (shared with training_options.py) pair the bootstrap across models."""
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import flow_few_step  # noqa: E402
import training_options  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.metrics import feature_statistics  # noqa: E402


def test_nfe_list_parsed_and_bad_values_named():
    assert flow_few_step.parse_nfes("5,10,20") == [5, 10, 20]
    for bad in ("0", "5,x", "", "-3"):
        with pytest.raises(DiffkitError, match="--nfe") as err:
            flow_few_step.parse_nfes(bad)
        assert repr(bad) in str(err.value) and "\n" not in str(err.value)


def test_sampler_list_checked():
    assert flow_few_step.parse_samplers("unipc, ddim@trailing") == ["unipc", "ddim@trailing"]
    with pytest.raises(DiffkitError, match="no-such-sampler"):
        flow_few_step.parse_samplers("unipc,no-such-sampler")
    with pytest.raises(DiffkitError, match="--samplers"):
        flow_few_step.parse_samplers(" , ")


def test_bad_option_refused_before_any_folder(tmp_path, capsys):
    out = tmp_path / "out"
    for bad in (["--nfe", "0"], ["--samplers", "nope"], ["--variants", "x=nope=1"]):
        with pytest.raises(DiffkitError):
            flow_few_step.main(["--evaluator", "missing.safetensors", "--out-dir", str(out), "--steps", "1", *bad])
        assert not out.exists()


def test_bootstrap_is_paired_and_fd_is_zero_against_own_statistics():
    rng = np.random.default_rng(1)
    features = rng.standard_normal((40, 3))
    picks = training_options.bootstrap_picks(40, 5)
    assert all(np.array_equal(a, b) for a, b in zip(picks, training_options.bootstrap_picks(40, 5)))
    point, boot = training_options.fd_and_bootstrap(features, feature_statistics(features), picks)
    assert point == pytest.approx(0.0, abs=1e-6) and boot.shape == (5,) and (boot > 0).all()
    shifted = features + np.array([2.0, 0.0, 0.0])  # FD of a mean shift of 2: |2|^2 = 4 (same covariance)
    point, _ = training_options.fd_and_bootstrap(shifted, feature_statistics(features), picks)
    assert point == pytest.approx(4.0, abs=1e-6)


def test_paired_difference_is_the_replicates_difference():
    boot = {"base": np.array([1.0, 2.0, 3.0, 4.0]), "b": np.array([2.0, 2.0, 5.0, 4.0])}
    row = training_options.paired_difference({"base": 2.5, "b": 3.5}, boot, "b", "base")
    diff = np.array([1.0, 0.0, 2.0, 0.0])
    assert row["difference"] == 1.0 and row["difference_sd"] == pytest.approx(diff.std(ddof=1))
    assert row["interval_95"] == pytest.approx(list(np.percentile(diff, [2.5, 97.5])))
    assert training_options.paired_difference({"base": 2.5}, boot, "base", "base") == {}
    assert training_options.difference_text(row, "base").startswith("  minus base:   +1.00 +- ")
    assert training_options.difference_text({}, "base") == ""


def test_flow_shift_list_parsed_and_bad_values_named():
    assert flow_few_step.parse_shifts("1,0.5,3") == [1.0, 0.5, 3.0] and flow_few_step.parse_shifts(None) == [None]
    for bad in ("0", "1,x", "", "-2", "inf"):
        with pytest.raises(DiffkitError, match="--flow-shifts") as err:
            flow_few_step.parse_shifts(bad)
        assert repr(bad) in str(err.value) and "\n" not in str(err.value)


def test_shift_columns_only_for_flow_models():
    from types import SimpleNamespace
    from diffkit.schedule import NoiseSchedule
    flow, eps = (SimpleNamespace(schedule=s) for s in (NoiseSchedule.flow(50, 1.0), NoiseSchedule.linear(50)))
    models = {"eps": (None, 0.0, eps, None), "flow": (None, 0.0, flow, None)}
    assert flow_few_step.shift_columns(models, [1.0, 3.0]) == [("eps", "eps", None), ("flow~1", "flow", 1.0),
                                                                ("flow~3", "flow", 3.0)]
    assert flow_few_step.shift_columns(models, [None]) == [("eps", "eps", None), ("flow", "flow", None)]


def test_bad_flow_shifts_refused_before_any_folder(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DiffkitError, match="--flow-shifts"):
        flow_few_step.main(["--evaluator", "missing.safetensors", "--out-dir", str(out), "--steps", "1",
                            "--flow-shifts", "0,1"])
    assert not out.exists()
