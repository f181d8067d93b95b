"""Data-parallel training under torchrun (gloo, CPU) equals one process with the same global batch."""
import subprocess
import sys

import torch

from diffkit import checkpoint as ckpt

TINY = ["--set", "img_size=8", "--set", "channel=16", "--set", "channel_mult=[1,2]", "--set", "attn=[1]",
        "--set", "num_res_blocks=1", "--set", "dropout=0.0", "--set", "num_heads=1", "--set", "device=cpu",
        "--steps", "3", "--no-sample", "--no-progress"]


def _train(out, nproc, batch):
    cmd = [sys.executable, "-m", "diffkit", "train", "--out", str(out), "--batch-size", str(batch), *TINY]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "diffkit", *cmd[3:]]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    return res


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    _train(tmp_path / "one", 1, 8)
    res = _train(tmp_path / "two", 2, 4)
    a, _ = ckpt.load_checkpoint(tmp_path / "one" / "checkpoints" / "latest.safetensors")
    b, meta = ckpt.load_checkpoint(tmp_path / "two" / "checkpoints" / "latest.safetensors")
    assert meta["step"] == 3
    for key in a:
        if key.startswith(("model.", "ema.")):
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    # only rank 0 wrote files: one log, one set of checkpoints, and it printed once
    files = sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "one" / "checkpoints").iterdir())
    assert res.stdout.count("trained 3 steps") == 1
