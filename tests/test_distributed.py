"""Data-parallel training (gloo, CPU) equals one process with the same global batch. The 2 x 4 runs compared
with 1 x 8 start their ranks with torchrun's environment and no launcher process (tests/_gloo_ranks.py);
diffkit's own torchrun launch (train / distill --nproc) is what the other tests start."""
import subprocess
import sys

import pytest
import torch

from diffkit import checkpoint as ckpt
from _gloo_ranks import run_ranks

TINY = ["--set", "img_size=8", "--set", "channel=16", "--set", "channel_mult=[1,2]", "--set", "attn=[1]",
        "--set", "num_res_blocks=1", "--set", "dropout=0.0", "--set", "num_heads=1", "--set", "device=cpu",
        "--steps", "3", "--no-sample", "--no-progress"]
# The runs train on a folder of 40 random 8x8 PNGs (5 steps of 8 per epoch: steps 1-3 are mid-epoch, as on
# digits), filled in by the module's _image_folder fixture: each rank of a torchrun launch is a fresh
# interpreter, and the digits set's sklearn import cost each of them about 2.5 s of CPU (a launch's 17.8 s
# -> 12.8 s); the data-parallel code (the sharded sampler of an in-memory data set) is the same for both.
DATA = []


@pytest.fixture(scope="module", autouse=True)
def _image_folder(tmp_path_factory):
    import numpy as np
    from PIL import Image
    folder = tmp_path_factory.mktemp("distributed_data")
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    DATA[:] = ["--dataset", "folder", "--data-dir", str(folder)]
    yield
    DATA.clear()


def _in_process(argv):
    """A one-process run in this process (as test_cli does): the reference the torchrun runs are compared
    with needs no interpreter and torch import of its own. Returns what _ok reads of a finished process."""
    from types import SimpleNamespace

    from diffkit.cli import main
    return SimpleNamespace(returncode=main(argv), stdout="", stderr="(in-process run: see the captured output)")


def _train(out, nproc, batch, *extra):
    cmd = [sys.executable, "-m", "diffkit", "train", "--out", str(out), "--batch-size", str(batch), *TINY, *DATA,
           *extra]
    if nproc == 1:
        return _in_process(cmd[3:])
    # the ranks with torchrun's environment, without its launcher process (one interpreter and torch import
    # fewer: tests/_gloo_ranks.py); diffkit's own torchrun launch (--nproc) is tested below
    return run_ranks(cmd[3:], nproc)


def _ok(res):
    assert res.returncode == 0, res.stderr[-2000:]
    return res


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    """The plain 1 x 8, 3-step run (in this process), trained once for the module: the reference of the
    2 x 4 runs and the teacher of the distillations. Read only. It draws its loss curve, as the torchrun
    runs it is compared with do."""
    from conftest import real_plots
    out = tmp_path_factory.mktemp("one_process") / "one"
    with real_plots():
        _ok(_train(out, 1, 8))
    return out


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path, one_process_run):
    res = _ok(_train(tmp_path / "two", 2, 4))
    a, _ = ckpt.load_checkpoint(one_process_run / "checkpoints" / "latest.safetensors")
    b, meta = ckpt.load_checkpoint(tmp_path / "two" / "checkpoints" / "latest.safetensors")
    assert meta["step"] == 3
    for key in a:
        if key.startswith(("model.", "ema.")):
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    # only rank 0 wrote files: one log, one set of checkpoints, and it printed once
    files = sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir())
    assert files == sorted(p.name for p in (one_process_run / "checkpoints").iterdir())
    assert res.stdout.count("trained 3 steps") == 1
    # the logged loss is the global batch's (the mean over the ranks), not rank 0's half of it
    logged = [[float(r.split(",")[2]) for r in (run / "checkpoints" / "train_log.csv").read_text()
               .splitlines()[1:]] for run in (one_process_run, tmp_path / "two")]
    assert len(logged[0]) >= 1 and len(logged[1]) == len(logged[0])
    torch.testing.assert_close(torch.tensor(logged[1]), torch.tensor(logged[0]), rtol=1e-4, atol=1e-6)


def test_a_signal_to_one_rank_stops_every_rank_at_one_step_with_a_checkpoint(tmp_path):
    """SIGTERM to rank 1 alone (a node's OOM killer, a scheduler): the ranks agree on the stop in
    the next step, rank 0 checkpoints that step, all exit 143, and the resume command has --nproc."""
    import os
    import re
    import signal
    import time
    import uuid

    import pytest
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs /proc to find rank 1")
    mark = uuid.uuid4().hex
    run = tmp_path / "run"
    args = [a for a in TINY if a not in ("--steps", "3")] + DATA
    proc = subprocess.Popen([sys.executable, "-m", "diffkit", "train", "--nproc", "2", "--out", str(run),
                             "--batch-size", "4", "--steps", "100000", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "DIFFKIT_TEST_MARK": mark})
    log, rank1, deadline = run / "checkpoints" / "train_log.csv", None, time.time() + 240
    try:
        while time.time() < deadline and (rank1 is None or not log.is_file() or len(log.read_text().splitlines()) < 4):
            time.sleep(0.5)
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
                except OSError:
                    continue
                if f"DIFFKIT_TEST_MARK={mark}".encode() in env and b"RANK=1" in env:
                    rank1 = int(pid)
        assert rank1 is not None, "rank 1 was not found"
        os.kill(rank1, signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    message = [line for line in err.splitlines() if line.startswith("diffkit train:")]
    assert len(message) == 1 and "stopped by SIGTERM at step" in message[0] and "--nproc 2" in message[0], err[-2000:]
    step = int(re.search(r"at step (\d+)", message[0]).group(1))
    assert ckpt.load_checkpoint(run / "checkpoints" / "latest.safetensors")[1]["step"] == step
    assert (run / "checkpoints" / f"ckpt_{step:08d}.safetensors").is_file()


def test_a_one_process_checkpoint_resumes_exactly_on_two_processes(tmp_path, capsys, monkeypatch, one_process_run):
    """Stop a 1 x 8 run at step 2 of 3, resume it under torchrun as 2 x 4: the weights and EMA
    equal those of the uninterrupted 1 x 8 run. A different global batch is refused in one line."""
    from diffkit.cli import main
    from diffkit.commands import train as train_command
    from diffkit.commands.train import resumable_config
    from diffkit.config import TrainConfig
    from diffkit.training import Trainer
    reference = one_process_run / "checkpoints" / "latest.safetensors"
    cfg = dict(resumable_config(reference), save_weight_dir=str(tmp_path / "part" / "checkpoints"),
               sampled_dir=str(tmp_path / "part" / "samples"))
    Trainer(TrainConfig.from_dict(cfg), progress=False, log=lambda msg: None).run(stop_at=2)
    part = tmp_path / "part" / "checkpoints" / "latest.safetensors"
    # 2 x 8 = 16 images per step, not 8: refused by the launching process before any rank starts, so it
    # runs in this process (a traceback would raise out of main; the one line is what it wrote on stderr).
    # No rank may start: torchrun's relaunch fails the test (without the pre-launch check it would start
    # ranks from pytest's own sys.argv, which fail only by accident)
    def relaunch(nproc):
        pytest.fail(f"ranks started (--nproc {nproc}) before the refusal")
    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(train_command, "relaunch_with_torchrun", relaunch)
        code = main(["train", "--nproc", "2", "--resume", str(part), "--batch-size", "8", "--no-sample",
                     "--no-progress"])
    refused = capsys.readouterr()
    assert code == 2 and "Traceback" not in refused.err
    assert refused.err.strip().splitlines() == [
        f"diffkit train: error: {part} was trained with a global batch of 8 (8 per process x 1); this run's is "
        f"16 (8 x 2); an exact resume needs the same global batch: use --batch-size 4"]
    _ok(_train(tmp_path / "part", 2, 4, "--resume", str(part)))
    a, _ = ckpt.load_checkpoint(reference)
    b, meta = ckpt.load_checkpoint(part)
    assert meta["step"] == 3 and meta["world_size"] == 2 and meta["global_batch"] == 8
    for key in a:
        if key.startswith(("model.", "ema.")):
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


def test_a_mistake_under_nproc_is_one_line_from_rank_0_and_exit_2(tmp_path, capfd, monkeypatch):
    """The launching `diffkit train --nproc 2` is this process (main, with sys.argv as the diffkit script has it,
    which the ranks' command line is made of): torchrun's agent runs here as it runs in that command, and starts
    the two ranks, whose stderr is this process's (fd 2). One interpreter and torch import fewer than a launching
    subprocess; the signal handlers the agent installs are put back."""
    import signal

    from diffkit.cli import main
    argv = ["train", "--nproc", "2", "--dataset", "mnist", "--data-dir", str(tmp_path / "none"), "--steps", "1",
            "--out", str(tmp_path / "run"), "--no-sample", "--no-progress"]
    monkeypatch.setattr(sys, "argv", ["diffkit", *argv])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)}
    capfd.readouterr()
    try:
        code = main(argv)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    err = capfd.readouterr().err
    assert code == 2, err[-2000:]
    assert err.strip().splitlines() == [f"diffkit train: error: data directory not found: {tmp_path / 'none'}"]
    assert not (tmp_path / "run").exists()  # no empty output folders left behind


def test_the_ranks_command_line_spells_out_abbreviations_for_torchrun():
    from diffkit.cli import build_parser
    from diffkit.commands.train import ranks_argv
    build_parser()  # registers train's options
    assert ranks_argv(["train", "--npro", "2", "--st", "3", "--batch=4", "--out", "r", "--nproc=3", "--set", "lr=1"]) \
        == ["train", "--steps", "3", "--batch-size=4", "--out", "r", "--set", "lr=1"]
    assert ranks_argv(["train", "--no", "x"]) == ["train", "--no", "x"]  # ambiguous: left to argparse


def _distill(out, teacher, nproc, batch):
    cmd = [sys.executable, "-m", "diffkit", "distill", "--teacher", str(teacher), "--out", str(out), "--batch-size",
           str(batch), "--steps", "2", "--set", "consistency_skip=100", "--no-sample", "--no-progress"]
    if nproc == 1:
        return _in_process(cmd[3:])
    cmd[4:4] = ["--nproc", str(nproc)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow  # 25 s (two torchrun launches); the core data-parallel equality stays in the default suite
@pytest.mark.real_plots  # the in-process run's files are compared with the torchrun run's
def test_two_process_distillation_matches_one_process_with_the_same_global_batch(tmp_path, one_process_run):
    """diffkit distill --nproc 2 (torchrun, gloo): the consistency loss's grid pairs, noise and the
    stop-gradient target are the global batch's, so 2 x 4 equals 1 x 8; only rank 0 writes."""
    teacher = one_process_run / "checkpoints" / "latest.safetensors"
    _ok(_distill(tmp_path / "one", teacher, 1, 8))
    res = _ok(_distill(tmp_path / "two", teacher, 2, 4))
    assert "running: torchrun" in res.stdout and res.stdout.count("trained 2 steps") == 1
    a, _ = ckpt.load_checkpoint(tmp_path / "one" / "checkpoints" / "latest.safetensors")
    b, meta = ckpt.load_checkpoint(tmp_path / "two" / "checkpoints" / "latest.safetensors")
    assert meta["step"] == 2 and meta["world_size"] == 2
    assert meta["consistency"]["objective"] == "consistency-distillation"
    for key in a:
        if key.startswith(("model.", "ema.")):
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == \
        sorted(p.name for p in (tmp_path / "one" / "checkpoints").iterdir())


def test_distills_command_line_for_the_ranks_spells_out_its_own_abbreviations():
    from diffkit.cli import build_parser
    from diffkit.commands.train import ranks_argv
    build_parser()
    assert ranks_argv(["distill", "--tea", "t.safetensors", "--npro", "2", "--st", "3", "--out", "r"]) \
        == ["distill", "--teacher", "t.safetensors", "--steps", "3", "--out", "r"]


@pytest.mark.slow  # 22 s; as the distillation run above
def test_two_process_consistency_training_with_cms_curriculum_and_ema_target_matches_one_process(tmp_path):
    """CM's curriculum (N(k), mu(k) from the step) and EMA target under torchrun: the target network is
    updated identically on every rank (from the all-reduced weights), so 2 x 4 equals 1 x 8, target too."""
    extra = ("--set", "objective=consistency-training", "--set", "consistency_curriculum=cm", "--set",
             "consistency_s1=20")
    _ok(_train(tmp_path / "one", 1, 8, *extra))
    _ok(_train(tmp_path / "two", 2, 4, *extra))
    a, _ = ckpt.load_checkpoint(tmp_path / "one" / "checkpoints" / "latest.safetensors")
    b, meta = ckpt.load_checkpoint(tmp_path / "two" / "checkpoints" / "latest.safetensors")
    assert meta["world_size"] == 2 and meta["consistency"]["curriculum"] == "cm"
    assert any(k.startswith("target.") for k in a) and sorted(a) == sorted(b)
    for key in a:
        if key.startswith(("model.", "ema.", "target.")):
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_two_gloo_processes_write_the_post_hoc_ema_snapshots_of_one_process(tmp_path):
    """Post-hoc EMA under torchrun: rank 0 alone tracks the power-function EMAs and writes the snapshots
    (diffkit.posthoc_ema); they and the checkpoint's averages are those of one process with the same global
    batch, and diffkit posthoc-ema reads them."""
    phema = ["--set", "posthoc_ema=0.05,0.10", "--set", "posthoc_ema_every=2"]
    _ok(_train(tmp_path / "one", 1, 8, *phema))
    _ok(_train(tmp_path / "two", 2, 4, *phema))
    folders = [tmp_path / run / "checkpoints" / "posthoc" for run in ("one", "two")]
    names = sorted(p.name for p in folders[1].iterdir())
    assert names == sorted(p.name for p in folders[0].iterdir()) == ["snapshot_00000002.safetensors",
                                                                     "snapshot_00000003.safetensors"]
    for name in names:
        a, _ = ckpt.load_checkpoint(folders[0] / name)
        b, _ = ckpt.load_checkpoint(folders[1] / name)
        assert sorted(a) == sorted(b)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    from diffkit.cli import main
    assert main(["posthoc-ema", "--run", str(tmp_path / "two"), "--sigma-rel", "0.07", "--max-profile-error", "0.5",
                 "--out", str(tmp_path / "e.safetensors")]) == 0
