"""benchmarks/dit_demo.py: --dit-lr reaches the DiT's config alone, --networks trains the networks named."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


@pytest.mark.slow  # about 4 s: one step of the demo-sized DiT
def test_dit_lr_sets_the_dits_lr_and_networks_picks_the_networks(tmp_path):
    import dit_demo
    out = tmp_path / "r.json"
    assert dit_demo.main(["--steps", "1", "--rounds", "1", "--networks", "dit", "--dit-lr", "2.5e-4",
                          "--out-dir", str(tmp_path / "o"), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [row["variant"] for row in rows] == ["dit"] and rows[0]["options"]["lr"] == 2.5e-4
    from diffkit.checkpoint import peek_metadata
    assert peek_metadata(tmp_path / "o" / "dit-0" / "checkpoints" / "latest.safetensors")["config"]["lr"] == 2.5e-4
