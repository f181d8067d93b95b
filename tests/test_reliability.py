"""Reliability and security (issue 7): faults are injected and no data may be lost.

Kill -9 at random moments, SIGINT/SIGTERM, NaN losses and gradients, a full disk, an
unwritable folder, malicious pickles, fuzzed configs and command lines. Tiny models, one torch
thread (a tiny conv on 2 threads of a loaded machine is ~100x slower than on one).
RELIABILITY.md at the repository root tabulates these tests.
"""
from __future__ import annotations

import argparse
import ast
import errno
import json
import os
import pickle
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from diffkit import DiffkitError
from diffkit import checkpoint as ckpt
from diffkit.cli import build_parser, main
from diffkit.config import TrainConfig
from diffkit.data import InMemoryImageDataset
from diffkit.models.unet import UNet, UNetConfig
from diffkit.training import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = {"dataset": "digits", "img_size": 8, "channel": 16, "channel_mult": [1, 2], "attn": [1],
        "num_res_blocks": 1, "dropout": 0.0, "batch_size": 8, "lr": 1e-3, "max_steps": 6,
        "ema_decay": 0.9, "log_every": 1, "device": "cpu", "num_heads": 1, "T": 100, "sample_steps": 5}
TINY_SET = ["--set", "img_size=8", "--set", "in_channels=1", "--set", "channel=16", "--set", "channel_mult=[1,2]",
            "--set", "attn=[1]", "--set", "num_res_blocks=1", "--set", "batch_size=8", "--set", "num_heads=1",
            "--set", "save_every_epochs=1", "--set", "keep_last=2", "--set", "T=100", "--set", "sample_steps=3"]


def tiny_dataset(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return InMemoryImageDataset((torch.rand(n, 1, 8, 8, generator=g) * 255).to(torch.uint8), torch.arange(n) % 2,
                                num_classes=2)


def make_cfg(root: Path, **over) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, "save_weight_dir": str(root / "ckpt"), "sampled_dir": str(root / "samples"),
                                  **over})


def image_folder(root: Path, n=16) -> Path:
    folder = root / "imgs"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def temp_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(".*.tmp"))


def subprocess_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_train(workdir: Path, args: list[str], name: str) -> subprocess.Popen:
    out = open(workdir / f"{name}.out", "w")
    err = open(workdir / f"{name}.err", "w")
    return subprocess.Popen([sys.executable, "-m", "diffkit", "train", *args], cwd=workdir, env=subprocess_env(),
                            stdout=out, stderr=err)


def wait_for(predicate, timeout=90.0, poll=0.01) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(poll)
    return False


def folder_train_args(workdir: Path, steps: int) -> list[str]:
    return ["--out", str(workdir / "run"), "--dataset", "folder", "--data-dir", str(image_folder(workdir)),
            "--steps", str(steps), "--device", "cpu", "--no-sample", "--no-progress", *TINY_SET]


# ------------------------------------------------------------------ 1. checkpoints
def test_checkpoint_metadata_is_complete_and_keep_last_k(tmp_path):
    cfg = make_cfg(tmp_path, max_steps=8, save_every_epochs=1, keep_last=2, timestep_sampler="loss-aware")
    Trainer(cfg, tiny_dataset(), progress=False).run()  # 16 images / batch 8 = 2 steps per epoch
    folder = tmp_path / "ckpt"
    kept = sorted(p.name for p in folder.glob("ckpt_*.safetensors"))
    assert kept == ["ckpt_00000006.safetensors", "ckpt_00000008.safetensors"]
    tensors, meta = ckpt.load_checkpoint(folder / "latest.safetensors")
    for key in ["config", "step", "epoch", "batch_in_epoch", "total_steps", "dataset_size", "lr", "diffkit_version",
                "torch_version", "ema_updates", "optimizer", "skipped_steps", "unet"]:
        assert key in meta, key
    assert meta["step"] == 8 and meta["epoch"] * 2 + meta["batch_in_epoch"] == 8 and meta["dataset_size"] == 16
    assert meta["config"] == cfg.to_dict()
    assert meta["lr"] == pytest.approx(cfg.lr * cfg.multiplier * 0.5 * (1 + np.cos(np.pi * (7 - 0) / 8)), rel=1e-6)
    assert meta["optimizer"]["param_groups"][0]["lr"] == pytest.approx(meta["lr"])
    assert {"rng.torch", "rng.generator", "schedule.betas"} <= set(tensors)
    assert any(k.startswith("ema.") for k in tensors) and any(k.startswith("optim.") for k in tensors)
    assert any(k.startswith("timesteps.") for k in tensors)  # loss-aware sampler history
    for p in folder.glob("ckpt_*.safetensors"):
        ckpt.load_checkpoint(p)


class _DieMidWrite(BaseException):
    """Stands for the process being killed inside a write."""


def _failing_fdopen(real_fdopen, exc):
    """os.fdopen whose file writes the first half of the data, then raises ``exc``."""
    class HalfFile:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            self.f.flush()
            raise exc

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    return lambda fd, *a, **k: HalfFile(real_fdopen(fd, *a, **k))


@pytest.mark.parametrize("exc", [_DieMidWrite(), OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))])
def test_write_dying_half_way_leaves_previous_file_intact(tmp_path, monkeypatch, exc):
    path = ckpt.save_checkpoint(tmp_path / "latest.safetensors", {"w": torch.arange(1000.0)}, {"step": 1})
    before = path.read_bytes()
    monkeypatch.setattr(os, "fdopen", _failing_fdopen(os.fdopen, exc))
    with pytest.raises(DiffkitError if isinstance(exc, OSError) else _DieMidWrite) as info:
        ckpt.save_checkpoint(path, {"w": torch.zeros(1000)}, {"step": 2})
    if isinstance(exc, OSError):
        assert "No space left on device" in str(info.value) and "\n" not in str(info.value)
    monkeypatch.undo()
    assert path.read_bytes() == before and ckpt.load_checkpoint(path)[1] == {"step": 1}
    assert temp_files(tmp_path) == []


def test_stale_temp_file_of_a_killed_write_is_never_read_and_removed_on_next_save(tmp_path):
    tr = Trainer(make_cfg(tmp_path, max_steps=2), tiny_dataset(), progress=False)
    tr.run()
    folder = tmp_path / "ckpt"
    good = (folder / "latest.safetensors").read_bytes()
    stale = folder / ".latest.safetensors.k1ll3d.tmp"  # what kill -9 between mkstemp and rename leaves
    stale.write_bytes(good[: len(good) // 3])
    assert ckpt.latest_checkpoint(folder) == folder / "latest.safetensors"
    assert ckpt.load_checkpoint(folder)[1]["step"] == 2
    assert all(".tmp" not in p.name for p in folder.glob("ckpt_*.safetensors"))
    tr.save()
    assert temp_files(folder) == []


def _temp_name_of(target: str, pid: int) -> str:
    """The temp file name atomic_write_bytes gives ``target`` in process ``pid`` on this host."""
    return f".{target}.{pid}-{ckpt._host_tag()}.k1ll3d_x.tmp"


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_temp_files_of_killed_writers_are_swept_by_the_next_writer_live_ones_stay(workspace, tmp_path, command):
    """kill -9 of `diffkit sample`/`eval` mid-write leaves hidden temp files; the next run writing
    into that folder removes those whose writer's process id is dead, never a live writer's."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        out = tmp_path / "out"
        if command == "sample":
            argv = ["sample", "--checkpoint", str(workspace / "ckpt" / "latest.safetensors"), "--sampler", "ddim",
                    "--steps", "2", "--num", "2", "--out", str(out / "grid.png"), "--individual", str(out),
                    "--no-progress", "--device", "cpu"]
        else:
            argv = ["eval", "--checkpoint", str(workspace / "ckpt" / "latest.safetensors"), "--metrics", "nll",
                    "--nll-num", "2", "--out", str(out / "eval.json"), "--no-progress", "--device", "cpu"]
        out.mkdir()
        stale = [out / _temp_name_of(name, dead.pid) for name in ("grid.png", "sample_00000.png", "eval.json")]
        kept = [out / _temp_name_of("grid.png", live.pid),  # a live writer's
                out / f".grid.png.{dead.pid}-0123abcd.k1ll3d_x.tmp",  # another host's: its pid means nothing here
                out / ".grid.png.k1ll3dxx.tmp"]  # an old-style name without a writer: not ours to judge
        for p in stale + kept:
            p.write_bytes(b"partial")
        assert main(argv) == 0  # in this process: the sweep judges the pids in the names, not its own
        assert [p.name for p in stale if p.exists()] == []
        assert all(p.exists() for p in kept)
    finally:
        live.kill()
        live.wait()


# ------------------------------------------------------------------ 2. kill -9
@pytest.mark.parametrize("trials", [4, pytest.param(6, marks=pytest.mark.slow)])
def test_kill_9_at_random_moments_never_loses_a_checkpoint(tmp_path, trials):
    """SIGKILL `diffkit train` (4 trials in the default suite, 6 in `pytest -m slow`; each resuming from
    the last, each a fresh interpreter and torch import): at a random moment after
    its first checkpoint, or (odd trials) the moment a checkpoint temp file appears, i.e. mid-write.
    latest.safetensors always loads, its step never goes back, temp files are never mistaken
    for checkpoints and a later save removes them. 16 images / batch 8 with a checkpoint every
    epoch = a checkpoint every 2 steps. A kill counts as mid-write when the killed process's own
    temp file (its pid is in the name) is left behind; at least one must, or the test has not
    tested a kill mid-write at all: on a loaded machine the poll can miss a short write, so up to 6
    more mid-write trials run until one lands."""
    rng = random.Random(7)
    folder = tmp_path / "run" / "checkpoints"
    latest = folder / "latest.safetensors"
    base = folder_train_args(tmp_path, steps=400)
    last_step, hits, stale_before = 0, 0, []
    trial = -1
    while (trial := trial + 1) < trials or (hits == 0 and trial < trials + 6):
        args = ["--resume", str(latest), "--no-sample", "--no-progress"] if latest.exists() else base
        inode = latest.stat().st_ino if latest.exists() else None
        proc = start_train(tmp_path, args, f"kill{trial}")
        try:
            # wait until this process has replaced latest (a new inode), then a random moment more
            assert wait_for(lambda: proc.poll() is not None or (
                latest.exists() and latest.stat().st_ino != inode)), "no checkpoint within the time limit"
            assert proc.poll() is None, (tmp_path / f"kill{trial}.err").read_text()
            if trial % 2 or trial >= trials:  # mid-write: kill as soon as a fresh temp file shows up
                wait_for(lambda: set(temp_files(folder)) - set(stale_before), timeout=20, poll=0.0005)
            else:
                time.sleep(rng.uniform(0.0, 0.6))
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        left = [p for p in temp_files(folder) if f".{proc.pid}-" in p.name]  # this process's half-written files
        hits += bool(left)
        tensors, meta = ckpt.load_checkpoint(latest)  # always loads (checksum verified)
        assert meta["step"] > last_step  # progress is never lost beyond the last checkpoint
        last_step = meta["step"]
        for p in folder.glob("ckpt_*.safetensors"):  # every kept checkpoint is whole as well
            ckpt.load_checkpoint(p)
            assert not p.name.startswith(".")
        assert not any(p in temp_files(folder) for p in stale_before), "stale temp files survived a save"
        stale_before = temp_files(folder)
    assert hits >= 1, "no kill landed while a checkpoint was being written"
    # a last short resume to completion cleans up everything a kill left behind
    assert main(["train", "--resume", str(latest), "--no-sample", "--no-progress", "--set",
                 f"max_steps={last_step + 2}"]) == 0  # in this process: nothing here is killed
    assert temp_files(folder) == [] and ckpt.load_checkpoint(latest)[1]["step"] == last_step + 2
    print(f"kill -9: {trial} trials, {hits} killed mid-write (temp file left), last step {last_step}, "
          f"0 checkpoints lost")


# ------------------------------------------------------------------ 3. signals
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130)], ids=["SIGINT"])
def test_signal_writes_checkpoint_and_prints_the_resume_command(tmp_path, sig, code):
    """SIGINT to `diffkit train` alone. SIGTERM, and the printed resume command run to the end, are checked by
    test_sigterm_to_the_process_group_with_workers_checkpoints, in the same launch as its process group."""
    folder = tmp_path / "run" / "checkpoints"
    latest = folder / "latest.safetensors"
    proc = start_train(tmp_path, folder_train_args(tmp_path, steps=400), "sig")
    try:
        assert wait_for(lambda: latest.exists() or proc.poll() is not None)
        assert proc.poll() is None, (tmp_path / "sig.err").read_text()
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    _assert_stopped_with_the_resume_command((tmp_path / "sig.err").read_text(), proc.returncode, sig, code, latest)


def _assert_stopped_with_the_resume_command(err, returncode, sig, code, latest):
    """The exit status, one `resume with:` line naming the signal and the step, whose checkpoint `latest` holds;
    the command resumes from `latest`. Returns the command."""
    assert returncode == code, err
    line = [x for x in err.splitlines() if "resume with:" in x]
    assert len(line) == 1 and f"stopped by {sig.name} at step" in line[0], err
    step = int(re.search(r"at step (\d+)", line[0]).group(1))
    assert ckpt.load_checkpoint(latest)[1]["step"] == step  # the checkpoint holds the step it stopped at
    command = line[0].split("resume with: ", 1)[1]
    assert f"train --resume {shlex.quote(str(latest))}" in command
    assert "Traceback" not in err
    return command


@pytest.mark.parametrize("relative", [True, False], ids=["relative", "absolute"])
def test_resume_command_is_one_bash_command_with_cwd_and_quoting(tmp_path, monkeypatch, relative):
    """The printed resume command, run by bash itself from another folder, starts the interpreter
    with exactly the intended argv in the intended folder: relative out/sample folders get a
    `cd DIR && ` prefix (DIR being the training's cwd), and a space, `$` and `'` in the folders survive
    bash's word splitting. The interpreter is replaced by a bash function that prints $PWD and its
    argv NUL-separated (no Python is started)."""
    from diffkit.commands.train import resume_command
    odd = "run dir $HOME 'q'"
    cwd = tmp_path / f"cwd {odd}"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["pytest"])  # not the `diffkit` script: `<interpreter> -m diffkit`
    base = "" if relative else f"{cwd}/"
    cfg = TrainConfig.from_dict({**TrainConfig().to_dict(), "save_weight_dir": f"{base}{odd}/checkpoints",
                                 "sampled_dir": f"{base}{odd}/samples", "dataset": "folder",
                                 "data_dir": str(tmp_path / "data")})
    command = resume_command(cfg, ["--no-sample"])
    assert command.count(shlex.quote(sys.executable)) == 1, command
    script = 'a(){ printf "%s\\0" "$PWD" "$@"; }; ' + command.replace(shlex.quote(sys.executable), "a", 1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run(["bash", "-c", script], cwd=elsewhere, capture_output=True, check=True).stdout
    pwd, *argv = out.decode().split("\0")[:-1]
    assert Path(pwd).resolve() == (cwd if relative else elsewhere).resolve(), (command, pwd)
    assert argv == ["-m", "diffkit", "train", "--resume", f"{base}{odd}/checkpoints/latest.safetensors",
                    "--no-sample"], command


def _torch_is_loading(pid: int) -> bool:
    """True once process ``pid`` has mapped libtorch (its import then runs for about a second more)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="times the signal by /proc/<pid>/maps")
@pytest.mark.parametrize("moment", ["importing torch", "loading data", "training"])
def test_sigint_to_train_classifier_exits_130_at_any_moment(tmp_path, moment):
    """Ctrl-C gives `diffkit: interrupted` and status 130 wherever it lands: it used to give a
    traceback and -2 (killed by the signal) while `import diffkit` imported torch, before the
    command line's handler was in place."""
    # a labelled folder of two classes, not the digits default: the sklearn import of digits cost each of the
    # two runs that get past the imports ~2.5 s of CPU; "loading data" is still the moment after the load
    rng = np.random.default_rng(0)
    for i in range(16):
        cls = tmp_path / "labelled" / "ab"[i % 2]
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(cls / f"{i}.png")
    out = open(tmp_path / "c.out", "w")
    # a terminal's Ctrl-C: the child starts with SIGINT's default disposition even when this test runs
    # as a shell's background job (which starts with SIGINT ignored, and Python then installs no handler)
    proc = subprocess.Popen([sys.executable, "-m", "diffkit", "train-classifier", "--steps", "100000", "--channel",
                             "8", "--channel-mult", "1", "--attn", "", "--batch-size", "8", "--img-size", "8",
                             "--dataset", "folder", "--data-dir", str(tmp_path / "labelled"),
                             "--out", str(tmp_path / "c.safetensors"), "--no-progress", "--device", "cpu"],
                            cwd=tmp_path, env=subprocess_env(), stdout=out, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    text = lambda: (tmp_path / "c.out").read_text()  # noqa: E731
    try:
        when = {"importing torch": lambda: _torch_is_loading(proc.pid),
                "loading data": lambda: "training a noisy classifier" in text(),
                "training": lambda: "step 50/" in text()}[moment]
        assert wait_for(lambda: proc.poll() is not None or when(), poll=0.001)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    assert proc.returncode == 130 and err == "diffkit: interrupted\n", (proc.returncode, err)
    assert not (tmp_path / "c.safetensors").exists() and temp_files(tmp_path) == []


def test_second_signal_exits_at_once_without_corrupting(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    latest = folder / "latest.safetensors"
    proc = start_train(tmp_path, folder_train_args(tmp_path, steps=400), "sig2")
    try:
        assert wait_for(lambda: latest.exists() or proc.poll() is not None)
        assert proc.poll() is None, (tmp_path / "sig2.err").read_text()
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, (tmp_path / "sig2.err").read_text()
    ckpt.load_checkpoint(latest)
    for p in folder.glob("ckpt_*.safetensors"):
        ckpt.load_checkpoint(p)


# ------------------------------------------------------------------ 4. numerical guards
def _nan_forward(trainer, bad_calls):
    calls = {"n": 0}
    real = trainer.forward

    def forward(x, t, **cond):
        calls["n"] += 1
        out = real(x, t, **cond)
        return out * float("nan") if calls["n"] in bad_calls or "all" in bad_calls else out
    return forward


def test_nonfinite_loss_skips_the_step_and_is_counted(tmp_path):
    tr = Trainer(make_cfg(tmp_path, max_steps=5), tiny_dataset(), progress=False)
    tr.forward = _nan_forward(tr, {2, 3})

    def snapshot():
        return ([p.detach().clone() for p in tr.model.parameters()], [e.clone() for e in tr.ema.params],
                tr.ema.updates)
    tr.run(stop_at=1)
    before = snapshot()
    batches = next(tr._epoch_batches(0))
    assert tr.train_step(batches) is None  # call 2: NaN
    after = snapshot()
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0]))  # no parameter update
    assert all(torch.equal(a, b) for a, b in zip(before[1], after[1])) and before[2] == after[2]  # no EMA update
    assert tr.skipped_steps == 1
    tr.run()  # call 3 is NaN too; the run goes on
    _, meta = ckpt.load_checkpoint(tmp_path / "ckpt" / "latest.safetensors")
    assert meta["skipped_steps"] == 2 and meta["step"] == 5
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())


def test_nonfinite_gradient_without_clipping_is_caught(tmp_path):
    tr = Trainer(make_cfg(tmp_path, max_steps=1, grad_clip=None), tiny_dataset(), progress=False)
    weight = next(tr.model.parameters())
    weight.register_hook(lambda g: g * float("nan"))  # finite loss, NaN gradient
    before = weight.detach().clone()
    assert tr.train_step(next(tr._epoch_batches(0))) is None
    assert tr.skipped_steps == 1 and torch.equal(weight.detach(), before)


def test_too_many_nonfinite_steps_stop_with_one_line_error_and_keep_last_good_checkpoint(tmp_path):
    tr = Trainer(make_cfg(tmp_path, max_steps=40, save_every_epochs=1), tiny_dataset(), progress=False)
    tr.run(stop_at=4)
    kept = sorted(p.name for p in (tmp_path / "ckpt").glob("ckpt_*"))
    latest = tmp_path / "ckpt" / "latest.safetensors"
    good, _ = ckpt.load_checkpoint(latest)
    tr.forward = _nan_forward(tr, {"all"})
    with pytest.raises(DiffkitError) as info:
        tr.run()
    message = str(info.value)
    assert "\n" not in message and "non-finite loss or gradient at step 14" in message, message
    assert "10 steps in a row" in message and str(latest) in message
    tensors, meta = ckpt.load_checkpoint(latest)
    assert meta["step"] == 4 and all(torch.equal(tensors[k], good[k]) for k in good if k.startswith(("model.", "ema.")))
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("ckpt_*")) == kept


def test_a_loss_that_turns_non_finite_ends_train_with_exit_2_naming_the_step(tmp_path, capsys, monkeypatch):
    # A diverging run, made deterministic: whether lr=100 overflows within a few steps depends on the CPU's
    # arithmetic (it did not on an AVX-512 machine), so the loss itself turns NaN from the 4th step on.
    import diffkit.training
    real, calls = diffkit.training.training_losses, {"n": 0}

    def diverging(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        if calls["n"] >= 4:
            out.loss = out.loss * float("nan")
        return out
    monkeypatch.setattr(diffkit.training, "training_losses", diverging)
    code = main(["train", *folder_train_args(tmp_path, steps=60), "--set", "warmup_fraction=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "non-finite loss or gradient at step 13: 10 steps in a row" in err and "Traceback" not in err, err
    latest = tmp_path / "run" / "checkpoints" / "latest.safetensors"
    if latest.exists():  # a checkpoint written before the blow-up is whole and finite
        tensors, _ = ckpt.load_checkpoint(latest)
        assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model."))


# ------------------------------------------------------------------ 5. safe loading
UNSAFE_CALLS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "dill.load", "dill.loads",
                "joblib.load", "marshal.load", "marshal.loads", "yaml.unsafe_load", "yaml.full_load",
                "shelve.open", "torch.package.PackageImporter"}


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def test_no_code_path_unpickles_untrusted_data():
    """Audit of the package source: every torch.load has weights_only=True, no np.load with
    allow_pickle=True, yaml.load only with a safe loader, no pickle/marshal/dill/eval/exec.
    (data.py's CIFAR reader subclasses pickle.Unpickler with a find_class allow-list.)"""
    problems = []
    for path in sorted((ROOT / "diffkit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name, kw = _dotted(node.func), {k.arg: k.value for k in node.keywords}
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if name.endswith("torch.load") and not (isinstance(kw.get("weights_only"), ast.Constant)
                                                    and kw["weights_only"].value is True):
                problems.append(f"{where} torch.load without weights_only=True")
            if name in ("np.load", "numpy.load") and not (isinstance(kw.get("allow_pickle"), ast.Constant)
                                                           and kw["allow_pickle"].value is False):
                problems.append(f"{where} np.load without allow_pickle=False")
            if name == "yaml.load" and _dotted(kw.get("Loader", ast.Name("none"))) in (
                    "none", "yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader"):
                problems.append(f"{where} yaml.load without a safe Loader")
            if name in UNSAFE_CALLS or name in ("eval", "exec"):
                problems.append(f"{where} {name}")
    assert problems == []


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _seed_model_config(root: Path, **over) -> Path:
    """The seed's modelConfig keys verbatim (device cuda:0 included), with tiny sizes."""
    seed = {"state": "eval", "epoch": 200, "batch_size": 80, "T": 100, "channel": 16, "channel_mult": [1, 2],
            "attn": [1], "num_res_blocks": 1, "dropout": 0.15, "lr": 1e-4, "multiplier": 2.0, "beta_1": 1e-4,
            "beta_T": 0.02, "img_size": 8, "grad_clip": 1.0, "device": "cuda:0", "training_load_weight": None,
            "save_weight_dir": str(root / "Checkpoints"), "test_load_weight": "ckpt_199.pt",
            "sampled_dir": str(root / "SampledImgs"), "sampledNoisyImgName": "NoisyNoGuidanceImgs.png",
            "sampledImgName": "SampledNoGuidanceImgs.png", "nrow": 8, **over}
    path = root / "modelConfig.json"
    path.write_text(json.dumps(seed))
    return path


def test_legacy_ckpt_199_pt_samples_with_config_and_refuses_without(tmp_path, capsys):
    config = _seed_model_config(tmp_path)
    model = UNet(UNetConfig(channel=16, channel_mult=[1, 2], attn=[1], num_res_blocks=1, img_size=8, in_channels=3))
    legacy = tmp_path / "ckpt_199.pt"
    torch.save(model.state_dict(), legacy)  # the seed's layout: a plain state dict
    from diffkit.loading import load_denoiser
    d = load_denoiser(legacy, config=config)
    assert all(torch.equal(d.model.state_dict()[k], v) for k, v in model.state_dict().items())
    assert d.model.config.in_channels == 3  # read off the first convolution
    out = tmp_path / "legacy.png"
    code = main(["sample", "--checkpoint", str(legacy), "--config", str(config), "--steps", "3", "--num", "4",
                 "--out", str(out), "--no-progress", "--device", "cpu"])
    assert code == 0 and Image.open(out).mode == "RGB"
    capsys.readouterr()
    for extra, pattern in [([], "--config"), (["--config", str(_seed_model_config(tmp_path, channel=32))],
                                               "does not match")]:
        code = main(["sample", "--checkpoint", str(legacy), *extra, "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and pattern in err, err
    code = main(["train", "--resume", str(legacy)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "plain state dict" in err and len(err.splitlines()) == 1


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_legacy_checkpoint_is_refused_by_sample_without_running(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "ckpt_199.pt"
    with open(evil, "wb") as f:
        pickle.dump({"input_conv.weight": _Evil(marker)}, f)
    code = main(["sample", "--checkpoint", str(evil), "--config", str(_seed_model_config(tmp_path)), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "refusing" in err and len(err.splitlines()) == 1
    torch.save({"input_conv.weight": _Evil(marker)}, tmp_path / "zip.pt")  # torch's zip format as well
    with pytest.raises(DiffkitError, match="refusing"):
        ckpt.load_checkpoint(tmp_path / "zip.pt")
    assert not marker.exists()


# ------------------------------------------------------------------ 6. input validation, disk full
@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny trained checkpoint, config files and odd paths for the fuzzers."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fuzz")
    tr = Trainer(make_cfg(root, max_steps=1, channel=8, channel_mult=[1], attn=[], num_res_blocks=1),
                 tiny_dataset(), progress=False)
    tr.run()
    (root / "good.json").write_text(json.dumps({**TINY, "max_steps": 1}))
    (root / "bad.toml").write_text("lr = = 1\n")
    (root / "afile").write_text("not a folder")
    (root / "notckpt.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    torch.save({"w": torch.ones(1)}, root / "legacy.pt")
    return root


class _TrainingPrevented(Exception):
    """The fuzzed command got past validation to the point where training would start."""


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                       max_size=3), max_leaves=6)
FIELDS = [f for f in TrainConfig.__dataclass_fields__]
KEYS = st.sampled_from(FIELDS) | st.text(max_size=10)


def _assert_clean(err_text: str):
    assert "\n" not in err_text and "Traceback" not in err_text and err_text


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(KEYS, JSON_VALUES, max_size=6) | JSON_VALUES)
def test_fuzz_config_from_random_dicts(data):
    try:
        TrainConfig.from_dict(data)
    except DiffkitError as err:
        _assert_clean(str(err))


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(suffix=st.sampled_from([".json", ".toml", ".yaml", ".yml"]),
       content=st.one_of(st.binary(max_size=60), st.text(max_size=60),
                         st.dictionaries(KEYS, JSON_VALUES, max_size=5).map(lambda d: ("dict", d))))
def test_fuzz_config_files_with_random_content(tmp_path_factory, suffix, content):
    import yaml
    path = tmp_path_factory.getbasetemp() / f"fuzz{suffix}"
    if isinstance(content, tuple):
        text = json.dumps(content[1]) if suffix != ".toml" else "\n".join(
            f"{json.dumps(k)} = {json.dumps(v)}" for k, v in content[1].items())
        if suffix in (".yaml", ".yml"):
            text = yaml.safe_dump(json.loads(text))
        path.write_text(text)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, errors="surrogatepass")
    try:
        TrainConfig.from_file(path)
    except DiffkitError as err:
        _assert_clean(str(err))


SMALL = st.integers(-2, 12).map(str) | st.sampled_from(["", "abc", "1e3", "nan", "inf", "-0", "2.5",
                                                        "99999999999999999999999"])
# no absolute paths or '..' (the tests may run as root: never write outside the work folder)
TEXT = st.text(max_size=6).filter(lambda s: not s.startswith("/") and ".." not in s)


def _paths(ws: Path):
    return st.sampled_from([str(ws / "ckpt" / "latest.safetensors"), str(ws / "ckpt"), str(ws / "missing.safetensors"),
                            str(ws / "notckpt.safetensors"), str(ws / "legacy.pt"), str(ws / "good.json"),
                            str(ws / "bad.toml"), str(ws / "afile"), str(ws / "afile" / "x.png"), "out/x.png",
                            ""]) | TEXT


def _argv(ws: Path):
    paths = _paths(ws)
    set_values = st.builds(lambda k, v: f"{k}={v}", KEYS, SMALL | TEXT | st.sampled_from(
        ["[1,2]", "[]", "[0]", "none", "true", "cuda:3", "ddim", "ddpm", "bogus", "1e-3"]))
    train = st.sampled_from(["train"]).flatmap(lambda c: st.lists(st.one_of(
        st.tuples(st.sampled_from(["--config", "--data-dir", "--out", "--resume"]), paths),
        st.tuples(st.sampled_from(["--steps", "--epochs", "--batch-size"]), SMALL),
        st.tuples(st.just("--dataset"), st.sampled_from(["digits", "mnist", "folder", "cifar10", "bogus"]) | TEXT),
        st.tuples(st.just("--device"), st.sampled_from(["cpu", "auto", "cuda", "cuda:1", "mps", "tpu"]) | TEXT),
        st.tuples(st.just("--set"), set_values),
        st.tuples(st.sampled_from(["--conditional", "--no-sample", "--no-progress"])),
        st.tuples(TEXT)), max_size=6).map(lambda parts: [c] + [x for p in parts for x in p]))
    sample = st.lists(st.one_of(
        st.tuples(st.sampled_from(["--checkpoint", "--config", "--out", "--noise-out", "--individual"]), paths),
        st.tuples(st.sampled_from(["--steps", "--nfe", "--num", "--batch-size", "--nrow", "--scale", "--seed",
                                   "--eta"]), SMALL),
        st.tuples(st.just("--sampler"), st.sampled_from(["ddim", "ddpm", "bogus"]) | TEXT),
        st.tuples(st.just("--spacing"), st.sampled_from(["linear", "quadratic", "trailing", "karras", "x"]) | TEXT),
        st.tuples(st.just("--device"), st.sampled_from(["cpu", "cuda", "mps"]) | TEXT),
        st.tuples(st.sampled_from(["--no-ema", "--no-progress"])),
        st.tuples(TEXT)), max_size=7).map(
        lambda parts: ["sample", "--checkpoint", str(ws / "ckpt")] + [x for p in parts for x in p])
    demo = st.lists(st.one_of(st.tuples(st.just("--out"), paths), st.tuples(st.just("--steps"), SMALL),
                              st.tuples(st.just("--device"), TEXT | st.just("cpu")), st.tuples(TEXT)),
                    max_size=4).map(lambda parts: ["demo"] + [x for p in parts for x in p])
    return st.one_of(train, sample, demo)


_PARSER = []


def _built_once():
    """diffkit.cli.build_parser's parser, built on the first call and handed out again after it: parse_args
    keeps no state in the parser (a fresh Namespace per call; no append option has a list default:
    test_one_parser_parses_twice_without_sharing_a_list), so every
    fuzzed command line parses as with a fresh parser, without rebuilding all the sub-commands (~15 ms) 300
    times."""
    if not _PARSER:  # build_parser as imported above, the real one (the fuzz tests put this one in its place)
        _PARSER.append(build_parser())
    return _PARSER[0]


def test_one_parser_parses_twice_without_sharing_a_list():
    """The fuzz tests reuse one parser: a list in one parse's result (an append option's default,
    which argparse hands out as is when the option is absent) must not be the next parse's. No append
    or extend option of any command has a default (None: the command uses ``or []``); and appending
    to a first result's --set list leaves a second parse's alone."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in commands.items():
        for action in sub._actions:
            if isinstance(action, (argparse._AppendAction, argparse._ExtendAction)):
                assert action.default is None, (name, action.option_strings, action.default)
    for argv in (["train"], ["distill"], ["train", "--set", "lr=1e-4"], ["distill", "--set", "lr=1e-4"]):
        first = parser.parse_args(argv)
        if first.overrides is not None:
            first.overrides.append("leaked=1")
        second = parser.parse_args(argv)
        assert second.overrides == (["lr=1e-4"] if "--set" in argv else None), (argv, second.overrides)


def _run_fuzzed(argv, ws, capsys):
    import diffkit.cli
    import diffkit.loading
    import diffkit.training

    class NoTraining:
        def __init__(self, cfg, *a, **k):
            raise _TrainingPrevented(cfg)

    real_load = diffkit.loading.load_denoiser

    def cheap_denoiser(*a, **k):  # the real checkpoint checks, then a free network
        d = real_load(*a, **k)
        d.net = lambda x, t, **cond: torch.zeros_like(x)
        return d

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ws / "cwd")
        mp.setattr(diffkit.training, "Trainer", NoTraining)
        mp.setattr(diffkit.loading, "load_denoiser", cheap_denoiser)
        mp.setattr(diffkit.cli, "build_parser", _built_once)
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        except _TrainingPrevented:
            code = "trained"
        err = capsys.readouterr().err
    return code, err


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_cli_flags_give_clean_errors_only(workspace, capsys, data):
    (workspace / "cwd").mkdir(exist_ok=True)
    argv = data.draw(_argv(workspace))
    code, err = _run_fuzzed(argv, workspace, capsys)
    event(f"{argv[0]} -> {code}")
    assert "Traceback" not in err
    assert code in (0, 2, "trained"), (argv, code, err)
    if code == 2:
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1 and errors[0].startswith("diffkit"), (argv, err)


def test_fuzz_found_cases_stay_fixed(workspace, capsys):
    """Cases the fuzzers found (tracebacks from NUL/surrogate paths and huge seeds; a bad
    sampler name accepted until after training; eta=inf; lr=1e38, which overflowed AdamW),
    kept as plain regression cases."""
    (workspace / "cwd").mkdir(exist_ok=True)
    (workspace / "nul.json").write_text(json.dumps({**TINY, "save_weight_dir": "a\u0000b"}))
    (workspace / "surrogate.json").write_text(json.dumps({**TINY, "sampled_dir": "\ud800"}))
    for argv in (["train", "--config", str(workspace / "nul.json")],
                 ["train", "--config", str(workspace / "surrogate.json")],
                 ["sample", "--checkpoint", "a\x00b"],
                 ["sample", "--checkpoint", str(workspace / "ckpt"), "--seed", str(2**64)],
                 ["sample", "--checkpoint", str(workspace / "ckpt"), "--eta", "inf"],
                 ["train", "--set", "sampler=bogus", "--steps", "1"],
                 ["train", "--set", "lr=1e38"]):
        code, err = _run_fuzzed(argv, workspace, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)


def test_unwritable_or_uncreatable_output_is_refused_before_work(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code = main(["train", "--out", str(blocker / "run"), "--steps", "1", *TINY_SET])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "cannot be created" in err, err
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)  # what a read-only folder answers (root ignores modes)
    code = main(["train", "--out", str(tmp_path / "ro"), "--steps", "1", *TINY_SET])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "not writable" in err and "Permission denied" in err, err
    assert [p for p in (tmp_path / "ro").rglob("*") if p.is_file()] == []


def test_disk_full_during_training_is_one_line_and_leaves_no_partial_files(tmp_path, monkeypatch, capsys):
    real_fdopen, calls = os.fdopen, {"n": 0}

    def fdopen_full_after_5(fd, *a, **k):  # writes 1-5 (the training log's header, two checkpoint pairs) succeed
        calls["n"] += 1
        if calls["n"] <= 5:
            return real_fdopen(fd, *a, **k)
        return _failing_fdopen(real_fdopen, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))(fd, *a, **k)
    monkeypatch.setattr(os, "fdopen", fdopen_full_after_5)
    code = main(["train", *folder_train_args(tmp_path, steps=40)])
    monkeypatch.undo()
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "No space left on device" in err, err
    folder = tmp_path / "run" / "checkpoints"
    assert temp_files(folder) == []
    _, meta = ckpt.load_checkpoint(folder / "latest.safetensors")
    for p in folder.glob("ckpt_*.safetensors"):
        ckpt.load_checkpoint(p)
    assert meta["step"] == 4  # the last save that fit


# ------------------------------------------------------------------ 7. determinism
def test_sampling_is_deterministic_and_independent_of_batch_size(workspace, tmp_path, capsys):
    ck = str(workspace / "ckpt" / "latest.safetensors")
    common = ["sample", "--checkpoint", ck, "--sampler", "ddpm", "--steps", "6", "--num", "5", "--seed", "11",
              "--no-progress", "--device", "cpu"]
    for name, extra in [("a", ["--batch-size", "16"]), ("b", ["--batch-size", "16"]), ("c", ["--batch-size", "1"]),
                        ("d", ["--batch-size", "2"])]:
        assert main([*common, *extra, "--out", str(tmp_path / f"{name}.png"), "--individual",
                     str(tmp_path / name)]) == 0
    capsys.readouterr()
    grid = {n: (tmp_path / f"{n}.png").read_bytes() for n in "abcd"}
    assert grid["a"] == grid["b"]  # run to run: identical PNG bytes
    assert grid["a"] == grid["c"] == grid["d"]  # batch size does not change any sample
    # and sample i does not depend on how many are drawn: --num 2 gives the first two
    assert main(["sample", "--checkpoint", ck, "--sampler", "ddpm", "--steps", "6", "--num", "2", "--seed", "11",
                 "--no-progress", "--out", str(tmp_path / "e.png"), "--individual", str(tmp_path / "e")]) == 0
    for i in range(2):
        name = f"sample_{i:05d}.png"
        assert (tmp_path / "e" / name).read_bytes() == (tmp_path / "a" / name).read_bytes()


# ------------------------------------------------------------------ 8. run folders, resume, workers
def test_data_set_smaller_than_one_step_is_refused_in_one_line(tmp_path, capsys):
    # the loader drops incomplete batches: this run used to loop forever, rewriting step 0
    code = main(["train", *folder_train_args(tmp_path, steps=3), "--set", "batch_size=12", "--set", "grad_accum=2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "16 images, fewer than one optimiser step takes (batch_size 12 x grad_accum 2 = 24)" in err, err


def test_sigterm_to_the_process_group_with_workers_checkpoints(tmp_path):
    """systemd, Slurm and `kill -TERM -PGID` signal every process: the DataLoader workers must leave it to
    the main process, which checkpoints (a killed worker used to abort the run), exits 143 and prints the
    resume command; the printed command itself must finish the run. (One launch checks both: the main
    process's SIGTERM is handled alike with or without workers beside it; a SIGINT to the main process
    alone is test_signal_writes_checkpoint_and_prints_the_resume_command's.)"""
    folder = tmp_path / "run" / "checkpoints"
    latest = folder / "latest.safetensors"
    out, err = open(tmp_path / "pg.out", "w"), open(tmp_path / "pg.err", "w")
    proc = subprocess.Popen([sys.executable, "-m", "diffkit", "train", *folder_train_args(tmp_path, steps=30),
                             "--set", "num_workers=2"], cwd=tmp_path, env=subprocess_env(), stdout=out, stderr=err,
                            start_new_session=True)
    try:
        assert wait_for(lambda: latest.exists() or proc.poll() is not None)
        assert proc.poll() is None, (tmp_path / "pg.err").read_text()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    command = _assert_stopped_with_the_resume_command((tmp_path / "pg.err").read_text(), proc.returncode,
                                                      signal.SIGTERM, 128 + signal.SIGTERM, latest)
    # run the printed command itself: it must finish the run. Split as the shell splits it (shlex is POSIX
    # word splitting, which undoes shlex.quote), its program is this interpreter's `-m diffkit`, and the rest
    # runs in this process (main, as test_cli does): no second interpreter and torch import; nothing here is
    # signalled
    words = shlex.split(command)
    assert words[:3] == [sys.executable, "-m", "diffkit"] and "&&" not in words, command
    assert main(words[3:]) == 0
    assert ckpt.load_checkpoint(latest)[1]["step"] == 30


def test_train_log_keeps_rows_up_to_the_resumed_step_and_disk_full_is_one_line(tmp_path):
    from diffkit.training import _TrainLog
    path = tmp_path / "train_log.csv"
    path.write_text("step,epoch,loss,lr,images_per_second\n1,0,0.5,1e-3,9\n2,0,0.4,1e-3,9\n3,0,0.3,1e-3,9\n")
    log = _TrainLog(path, step=2, enabled=True)  # a run killed after step 3 resumes from step 2's checkpoint
    log.write([3, 0, "0.31", "1e-3", "9"])
    log.close()
    assert [r.split(",")[0] for r in path.read_text().splitlines()] == ["step", "1", "2", "3"]

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            pass

        def close(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    log = _TrainLog(path, step=0, enabled=True)
    log.file.close()
    log.file = FullDisk()
    import csv
    log.writer = csv.writer(log.file)
    with pytest.raises(DiffkitError, match="could not write the training log .*No space left on device") as info:
        log.write([1, 0, "0.5", "1e-3", "9"])
    assert len(str(info.value).splitlines()) == 1
    log.close()  # closing after the error is quiet


def test_rotation_keeps_this_runs_checkpoints_and_leaves_later_ones_of_another_run(tmp_path):
    cfg = make_cfg(tmp_path, max_steps=6, keep_last=2, save_every_epochs=1)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    foreign = folder / "ckpt_00000050.safetensors"  # an earlier, longer run in the same folder
    foreign.write_bytes(b"not ours")
    (folder / "ckpt_best.safetensors").write_bytes(b"a user's own name")
    logs = []
    Trainer(cfg, tiny_dataset(), progress=False, log=logs.append).run()  # 2 steps per epoch: saves 2, 4, 6
    kept = sorted(p.name for p in folder.glob("ckpt_*.safetensors"))
    assert kept == ["ckpt_00000004.safetensors", "ckpt_00000006.safetensors", "ckpt_00000050.safetensors",
                    "ckpt_best.safetensors"]
    assert ckpt.load_checkpoint(folder / "latest.safetensors")[1]["step"] == 6
    assert any("past step 0 from another run (ckpt_00000050.safetensors)" in line for line in logs), logs


def test_rotation_orders_checkpoints_by_step_not_by_name(tmp_path):
    """An unpadded ckpt_3 sorts after ckpt_00000006 by name; by step it is the oldest and goes first."""
    cfg = make_cfg(tmp_path, max_steps=6, keep_last=2, save_every_epochs=1)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "ckpt_3.safetensors").write_bytes(b"an earlier run's step 3")
    Trainer(cfg, tiny_dataset(), progress=False).run()  # saves 2, 4, 6
    assert sorted(p.name for p in folder.glob("ckpt_*.safetensors")) == ["ckpt_00000004.safetensors",
                                                                          "ckpt_00000006.safetensors"]


@pytest.mark.parametrize("change, message", [({"T": 120}, "another noise schedule (T=100"),
                                             ({"beta_T": 0.03}, "another noise schedule"),
                                             ({"img_size": 16}, "img_size=8, this run has img_size=16"),
                                             ({"num_heads": 2}, "num_heads=1, this run has num_heads=2")])
def test_resume_refuses_another_schedule_or_image_size(tmp_path, change, message):
    Trainer(make_cfg(tmp_path, max_steps=2), tiny_dataset(), progress=False).run()
    latest = tmp_path / "ckpt" / "latest.safetensors"
    dataset = tiny_dataset()
    if "img_size" in change:
        dataset = InMemoryImageDataset(torch.zeros(16, 1, 16, 16, dtype=torch.uint8), torch.arange(16) % 2, 2)
    trainer = Trainer(make_cfg(tmp_path / "b", max_steps=4, training_load_weight=str(latest), **change), dataset,
                      progress=False)
    with pytest.raises(DiffkitError, match=re.escape(message)):
        trainer.run()


def test_resume_without_out_continues_in_the_checkpoints_folder(tmp_path, monkeypatch, capsys):
    assert main(["train", *folder_train_args(tmp_path, steps=2)]) == 0
    latest = tmp_path / "run" / "checkpoints" / "latest.safetensors"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the stored folders are absolute here; make them relative, as a user's are
    tensors, meta = ckpt.load_checkpoint(latest)
    meta["config"]["save_weight_dir"], meta["config"]["sampled_dir"] = "run/checkpoints", "run/samples"
    ckpt.save_checkpoint(latest, tensors, meta)
    assert main(["train", "--resume", str(latest), "--steps", "4", "--no-progress"]) == 0, capsys.readouterr().err
    assert ckpt.load_checkpoint(latest)[1]["step"] == 4
    assert (tmp_path / "run" / "samples").is_dir() and list(elsewhere.iterdir()) == []


def test_a_resume_never_writes_over_another_run(tmp_path, monkeypatch, capsys):
    assert main(["train", *folder_train_args(tmp_path, steps=2)]) == 0
    latest = tmp_path / "run" / "checkpoints" / "latest.safetensors"
    other = tmp_path / "other"
    assert main(["train", *folder_train_args(other, steps=2)]) == 0
    victim = other / "run" / "checkpoints" / "latest.safetensors"
    before = victim.read_bytes()
    capsys.readouterr()
    # --out into a folder holding another run: refused, nothing written
    code = main(["train", "--resume", str(latest), "--out", str(other / "run"), "--steps", "4", "--no-sample",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "holds another run" in err and len(err.strip().splitlines()) == 1, err
    assert victim.read_bytes() == before
    # --config without --out: the resume continues in its checkpoint's folder, not the config's
    config = tmp_path / "c.json"
    config.write_text(json.dumps({**TINY, "in_channels": 1, "dataset": "folder",
                                  "data_dir": str(image_folder(tmp_path)),
                                  "save_weight_dir": str(other / "run" / "checkpoints")}))
    assert main(["train", "--resume", str(latest), "--config", str(config), "--steps", "4", "--no-sample",
                 "--no-progress"]) == 0, capsys.readouterr().err
    assert ckpt.load_checkpoint(latest)[1]["step"] == 4 and victim.read_bytes() == before


def test_grad_scaler_state_is_saved_and_resumed(tmp_path):
    # fp16 runs on CUDA keep a GradScaler; its scale and growth tracker are part of an exact resume
    state = {"scale": 512.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 7, "_growth_tracker": 3}
    trainer = Trainer(make_cfg(tmp_path, max_steps=2), tiny_dataset(), progress=False)
    trainer.scaler = torch.amp.GradScaler("cpu")
    trainer.scaler.load_state_dict(state)
    path = trainer.save()
    resumed = Trainer(make_cfg(tmp_path, max_steps=2), tiny_dataset(), progress=False)
    resumed.scaler = torch.amp.GradScaler("cpu")
    resumed.load(path)
    assert resumed.scaler.state_dict() == state


def test_flips_do_not_depend_on_the_number_of_workers():
    from diffkit.data import flip_coin, make_loader
    dataset = InMemoryImageDataset(torch.randint(0, 256, (24, 1, 4, 4), dtype=torch.uint8), torch.zeros(24), 1,
                                   hflip=True)
    batches = {w: [b[0] for b in make_loader(dataset, 8, seed=5, num_workers=w)] for w in (0, 2)}
    for a, b in zip(batches[0], batches[2]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    coins = [flip_coin(123, i) for i in range(20000)]
    assert abs(sum(coins) / len(coins) - 0.5) < 0.015  # fair (4 standard deviations: 0.014)
    assert coins != [flip_coin(124, i) for i in range(20000)]


@pytest.mark.real_plots  # checks loss_curve.png
def test_a_signal_with_the_last_step_says_training_is_complete(tmp_path, monkeypatch, capsys):
    real_step = Trainer.train_step

    def step_then_signal(self, group):
        loss = real_step(self, group)
        if self.step + 1 == self.total_steps:  # SIGTERM arrives during the last step
            os.kill(os.getpid(), signal.SIGTERM)
        return loss
    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    code = main(["train", *folder_train_args(tmp_path, steps=4)])
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGTERM, err
    assert "SIGTERM after the last step: trained all 4 steps" in err and "resume with" not in err, err
    folder = tmp_path / "run" / "checkpoints"
    assert ckpt.load_checkpoint(folder / "latest.safetensors")[1]["step"] == 4
    assert (folder / "loss_curve.png").is_file()


def test_temp_file_host_tag_tells_apart_boots_of_one_host_name(monkeypatch):
    """Two machines named alike (cloned VMs) share a host name and the initial PID namespace, not a
    boot id: their temp files must not look like each other's, or one would sweep the other's."""
    import pathlib

    from diffkit import checkpoint
    monkeypatch.setattr(checkpoint.socket, "gethostname", lambda: "localhost")
    tags = []
    for boot in ("boot-a", "boot-b"):
        real = pathlib.Path.read_text
        monkeypatch.setattr(pathlib.Path, "read_text", lambda self, *a, _b=boot, _r=real, **k:
                            _b if str(self).endswith("boot_id") else _r(self, *a, **k))
        checkpoint._host_tag.cache_clear()
        tags.append(checkpoint._host_tag())
    checkpoint._host_tag.cache_clear()
    assert tags[0] != tags[1]


def test_a_deeply_nested_safetensors_header_peeks_as_no_metadata(tmp_path):
    """A header of 200,000 nested lists overflows json's recursion: read as no metadata, not a traceback."""
    from diffkit.checkpoint import peek_header_metadata
    header = b"[" * 200_000 + b"]" * 200_000
    path = tmp_path / "nested.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    assert peek_header_metadata(path) == {}
