"""benchmarks/sd_pipeline_overhead.py: its smallest setting runs end to end (diffkit and diffusers on the same
latents, the same z_0), and bad options are refused before any model is built or file written."""
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import sd_pipeline_overhead as bench  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402


def test_smallest_setting_runs_and_both_sides_agree(tmp_path, capsys):
    out = tmp_path / "r.json"
    result = bench.main(["--models", "sd15", "--samplers", "ddim", "--steps", "2", "--scales", "5",
                         "--decode-steps", "", "--repeats", "1", "--bootstrap", "10", "--json", str(out)])
    [row] = result["rows"]
    assert row["network_calls"] == {"diffkit": 2, "diffusers": 2}  # one batched CFG call per step each
    assert row["max_relative_difference"] < 1e-5  # the same computation (1.2e-6 measured at 4 steps)
    for side in ("diffkit", "diffusers"):
        assert 0 < row[side]["network_median_ms"] < row[side]["wall_median_ms"]
    assert json.loads(out.read_text())["rows"][0]["steps"] == 2
    assert "sd15" in capsys.readouterr().out


def test_settings_cut_the_mid_model_unless_asked():
    rows = bench.settings(["sd15", "sd15-mid"], [4, 20], [5.0, 1.0], [4])
    assert ("sd15", "euler", 20, 1.0, False) in rows and ("sd15", "ddim", 4, 5.0, True) in rows
    assert ("sd15", "ddim", 4, 1.0, True) not in rows  # decode rows with guidance on only
    assert [r for r in rows if r[0] == "sd15-mid"] == [("sd15-mid", "ddim", 4, 5.0, False),
                                                        ("sd15-mid", "ddim", 4, 1.0, False)]
    assert len([r for r in bench.settings(["sd15-mid"], [4, 20], [5.0], [4], mid_all=True)]) == 6


@pytest.mark.parametrize("bad, name", [(["--models", "sd2"], "--models"), (["--steps", "0"], "--steps"),
                                       (["--steps", "x"], "--steps"), (["--scales", "0.5"], "--scales"),
                                       (["--samplers", "heun"], "--samplers"), (["--repeats", "0"], "--repeats")])
def test_bad_options_are_one_line_before_any_work(tmp_path, bad, name):
    out = tmp_path / "r.json"
    with pytest.raises(DiffkitError, match=name) as err:
        bench.main([*bad, "--json", str(out)])
    assert "\n" not in str(err.value) and not out.exists()
