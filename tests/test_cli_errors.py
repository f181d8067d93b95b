"""Mistakes a new user makes on the command line (the input audit of 6 December 2026): each is one
line that names the bad value and what is allowed, exit status 2, nothing written."""
import json
import shutil
import sys
import warnings

import pytest

from diffkit import checkpoint as ckpt
from diffkit.cli import main
from diffkit.config import TrainConfig, apply_overrides
from diffkit.errors import DiffkitError, DiffkitWarning


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(capsys, *args):
    code, out, err = run_cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (args, err)
    return lines[0]


def test_a_folder_without_latest_says_what_it_is(tiny_checkpoint, tmp_path, capsys):
    """A run folder (not its checkpoints/), a folder of ckpt_* only, an empty folder, diffusers folders:
    each message says what the folder is and what to give instead (it used to say only that
    FOLDER/latest.safetensors does not exist)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, run / "checkpoints" / "latest.safetensors")
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(tiny_checkpoint, only / "ckpt_00000002.safetensors")
    (tmp_path / "empty").mkdir()
    (tmp_path / "parts" / "unet").mkdir(parents=True)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "model_index.json").write_text("{}")
    for folder, message in ((run, f"it is a run folder: give its checkpoint folder {run / 'checkpoints'}"),
                            (only, f"its newest checkpoint is {only / 'ckpt_00000002.safetensors'}: give that file"),
                            (tmp_path / "empty", "has no latest.safetensors or ckpt_*.safetensors; give a "
                                                 ".safetensors checkpoint or a run's checkpoint folder"),
                            (tmp_path / "parts", "has diffusers components but no model_index.json"),
                            (tmp_path / "hf", "it is a diffusers folder, not a diffkit checkpoint")):
        with pytest.raises(DiffkitError, match="has no latest.safetensors") as err:
            ckpt.load_checkpoint(folder)
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    out = tmp_path / "x.png"
    for argv in (["sample", "--checkpoint", str(run), "--out", str(out), "--num", "1"],
                 ["edit", "--checkpoint", str(tmp_path / "hf"), "--images", str(tmp_path),
                  "--out", str(tmp_path / "e")],
                 ["distill", "--teacher", str(run), "--out", str(tmp_path / "d")]):
        assert "has no latest.safetensors; it is a" in one_line_error(capsys, *argv)
    assert not out.exists() and not (tmp_path / "e").exists() and not (tmp_path / "d").exists()


def test_the_newest_checkpoint_of_a_folder_is_the_highest_step(tiny_checkpoint, tmp_path):
    """ckpt_best.safetensors sorts after ckpt_00000009 and 100_000_000 steps after 99_999_999 by
    name: the message named ckpt_best as the newest; now the highest step (ckpt_best only when alone)."""
    for name in ("ckpt_00000009.safetensors", "ckpt_100000000.safetensors", "ckpt_99999999.safetensors",
                 "ckpt_best.safetensors"):
        shutil.copy(tiny_checkpoint, tmp_path / name)
    with pytest.raises(DiffkitError, match="has no latest.safetensors") as err:
        ckpt.load_checkpoint(tmp_path)
    assert f"its newest checkpoint is {tmp_path / 'ckpt_100000000.safetensors'}: give that file" in str(err.value)
    best = tmp_path / "best"
    best.mkdir()
    shutil.copy(tiny_checkpoint, best / "ckpt_best.safetensors")
    with pytest.raises(DiffkitError, match=f"has no latest.safetensors; it holds {best / 'ckpt_best.safetensors'}"):
        ckpt.load_checkpoint(best)


def test_a_file_that_is_no_safetensors_is_not_called_a_truncated_checkpoint(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"T": 100}))
    (tmp_path / "grid.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    for name in ("config.json", "grid.png"):
        line = one_line_error(capsys, "sample", "--checkpoint", str(tmp_path / name), "--num", "1",
                              "--out", str(tmp_path / "x.png"))
        assert f"{tmp_path / name} is not a safetensors file" in line and "give a diffkit checkpoint" in line, line
        assert "truncated" not in line
    cut = tmp_path / "cut.safetensors"  # a truncated checkpoint still says so
    cut.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    with pytest.raises(DiffkitError, match="is corrupt or truncated"):
        ckpt.load_checkpoint(cut)


@pytest.fixture(scope="module")
def curriculum_checkpoint(tmp_path_factory):
    """A consistency-training checkpoint of CM's curriculum after 1 of 1 steps: its grid is [0, T - 1],
    one source time, and its config has sampler ddim and sample_steps 50 (the defaults of a consistency
    run's config before the consistency objectives took sampler consistency and 4 steps)."""
    from diffkit.training import Trainer
    from test_evaluation import TINY
    root = tmp_path_factory.mktemp("cmct")
    cfg = TrainConfig.from_dict({**TINY, "max_steps": 1, "objective": "consistency-training",
                                 "consistency_curriculum": "cm", "sampler": "ddim", "sample_steps": 50,
                                 "save_weight_dir": str(root / "ckpt"),
                                 "sampled_dir": str(root / "s")})
    Trainer(cfg, progress=False, log=lambda *_: None).run()
    return root / "ckpt" / "latest.safetensors"


def test_a_curriculum_model_samples_by_default_within_its_grid(curriculum_checkpoint, tmp_path, capsys):
    """``diffkit sample`` of a consistency model defaults to its run's sample_steps, here 50, which
    the 1-time grid cannot give: the default is now capped at the grid's source times (it failed
    with a message about diffusers' LCMScheduler); too many --steps name the model's grid."""
    from diffkit.commands._common import default_sampling
    assert ckpt.peek_metadata(curriculum_checkpoint)["consistency"]["grid"] == [0, 99]
    assert default_sampling(curriculum_checkpoint, None, None) == ("consistency", 1)
    assert default_sampling(curriculum_checkpoint, None, 3) == ("consistency", 3)  # what the user gave is kept
    code, out, err = run_cli(capsys, "sample", "--checkpoint", str(curriculum_checkpoint), "--num", "2",
                             "--out", str(tmp_path / "a.png"), "--no-progress")
    assert code == 0 and "consistency, 1 network evaluations per sample" in out, err
    line = one_line_error(capsys, "sample", "--checkpoint", str(curriculum_checkpoint), "--num", "2", "--steps", "2",
                          "--out", str(tmp_path / "b.png"), "--no-progress")
    assert ("steps=2: the 'lcm' spacing takes at most 1 steps (one per source time of the grid the model was "
            "trained on)") in line and "LCMScheduler" not in line, line
    assert not (tmp_path / "b.png").exists()


def test_the_default_steps_cap_applies_only_on_the_models_own_grid(curriculum_checkpoint, tmp_path, capsys):
    """The cap at the grid's source times is the 'lcm' spacing's (the consistency sampler's
    default): another --spacing (or consistency@SPACING) keeps the run's sample_steps, 50, as it
    did before the cap; an explicit consistency@lcm is capped like the default."""
    from diffkit.commands._common import default_sampling
    assert default_sampling(curriculum_checkpoint, None, None, spacing="trailing") == ("consistency", 50)
    assert default_sampling(curriculum_checkpoint, "consistency@trailing", None) == ("consistency@trailing", 50)
    assert default_sampling(curriculum_checkpoint, "consistency@lcm", None) == ("consistency@lcm", 1)
    assert default_sampling(curriculum_checkpoint, None, None, spacing="lcm") == ("consistency", 1)
    code, out, err = run_cli(capsys, "sample", "--checkpoint", str(curriculum_checkpoint), "--num", "1",
                             "--spacing", "trailing", "--out", str(tmp_path / "a.png"), "--no-progress")
    assert code == 0 and "consistency, 50 network evaluations per sample" in out, (out, err)


@pytest.mark.real_plots  # draws a loss curve
def test_a_loss_curve_of_zero_losses_draws_without_a_warning(tmp_path):
    """A distillation's first loss is exactly 0 (student = target): a one-step run's loss curve gave
    matplotlib's 'Data has no positive values' warning, with a source line, on the terminal."""
    from diffkit.training import plot_loss_curve
    (tmp_path / "log.csv").write_text("step,loss\n1,0.0\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plot_loss_curve(tmp_path / "log.csv", tmp_path / "curve.png").is_file()


def test_diffkits_own_warnings_print_as_one_line(monkeypatch, capsys):
    """A warning of diffkit's (:class:`DiffkitWarning`, e.g. a guidance weight outside an LCM model's
    range) printed Python's two lines, the second a line of diffkit's source; now one line naming the
    command. Any other warning keeps its category, file and line, also one raised in diffkit's code
    (numpy's divide by zero was printed as 'diffkit CMD: warning: divide by zero', its category lost)."""
    import warnings as w

    import diffkit.commands.samplers as samplers_command
    import diffkit.guidance
    monkeypatch.setattr(w, "showwarning", lambda message, category, filename, lineno, file=None, line=None:
                        sys.stderr.write(w.formatwarning(message, category, filename, lineno, line)))

    def warn_thrice(args):
        w.warn_explicit("guidance weight w=100 lies\noutside the range", DiffkitWarning, diffkit.guidance.__file__, 7)
        w.warn_explicit("divide by zero encountered in log", RuntimeWarning, diffkit.guidance.__file__, 8)
        w.warn_explicit("an old option", FutureWarning, "/some/library/module.py", 3)
        return 0
    parser_register = samplers_command.register

    def register(sub):
        parser_register(sub)
        sub.choices["samplers"].set_defaults(func=warn_thrice)
    monkeypatch.setattr(samplers_command, "register", register)
    with w.catch_warnings():
        w.simplefilter("always")
        code, out, err = run_cli(capsys, "samplers")
    lines = err.strip().splitlines()
    assert code == 0 and lines[0] == "diffkit samplers: warning: guidance weight w=100 lies outside the range", err
    assert lines[1] == f"{diffkit.guidance.__file__}:8: RuntimeWarning: divide by zero encountered in log", err
    assert any(line.startswith("/some/library/module.py:3: FutureWarning: an old option") for line in lines), err
    assert w.formatwarning("x", DiffkitWarning, diffkit.guidance.__file__, 7).startswith(diffkit.guidance.__file__)


def test_diffkits_messages_to_users_warn_as_diffkit_warnings(monkeypatch):
    """The category the CLI prints as one line; still a UserWarning (a RuntimeWarning where it was)."""
    from diffkit.errors import DiffkitRuntimeWarning
    from diffkit.images import to_uint8
    from diffkit.models.cpu_kernels import environment_switch
    import torch
    monkeypatch.setenv("DIFFKIT_TEST_SWITCH", "perhaps")
    with pytest.warns(DiffkitWarning, match="'perhaps' is not one of"):
        environment_switch("DIFFKIT_TEST_SWITCH")
    with pytest.warns(DiffkitRuntimeWarning, match="hold NaN or infinite values"):
        to_uint8(torch.full((1, 1, 2, 2), float("nan")))
    assert issubclass(DiffkitWarning, UserWarning) and issubclass(DiffkitRuntimeWarning, RuntimeWarning)


def test_a_warning_while_the_commands_are_imported_is_one_line():
    """DIFFKIT_CPU_KERNELS=perhaps warns when the models are imported, which building the parser
    does: that warning printed Python's two lines (the formatter came after the parser). The same
    interpreter checks the ``python -m diffkit`` entry point (its --help names the commands)."""
    import os
    import subprocess
    env = {**os.environ, "DIFFKIT_CPU_KERNELS": "perhaps", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "diffkit", "--help"], capture_output=True, text=True, timeout=120,
                         env=env)
    assert "train" in res.stdout and "sample" in res.stdout and "samplers" in res.stdout, res.stdout
    assert res.returncode == 0 and res.stderr.splitlines() == [
        "diffkit: warning: DIFFKIT_CPU_KERNELS='perhaps' is not one of 0/1/false/true/off/on/no/yes; it stays on"], \
        res.stderr


@pytest.mark.parametrize("key,suggestion", [("learning_rate", "'lr'"), ("num_epochs", "'epoch'"),
                                            ("num_timesteps", "'T'"), ("timesteps", "'T'"),
                                            ("steps", "'max_steps' or 'sample_steps'")])
def test_another_librarys_name_of_a_key_suggests_diffkits(key, suggestion, capsys, tmp_path):
    """Keys where the spelling distance suggests none (learning_rate) or a wrong one: num_epochs ->
    num_res_blocks, num_timesteps -> max_steps, timesteps -> timestep_sampler; steps is either."""
    with pytest.raises(DiffkitError) as err:
        apply_overrides(TrainConfig(), [f"{key}=2"])
    assert f"unknown config key '{key}' (did you mean {suggestion}?)" in str(err.value), str(err.value)
    if key == "learning_rate":
        line = one_line_error(capsys, "train", "--set", "learning_rate=1e-3", "--out", str(tmp_path / "run"))
        assert "did you mean 'lr'?" in line and not (tmp_path / "run").exists()


def test_a_sample_to_an_npy_names_the_png_to_give(tiny_checkpoint, tmp_path, capsys):
    """``--out x.npy`` (the series' own format) said only that --out must end in .png; then, also for
    an image model, that a time-series model writes its line plot there."""
    for checkpoint in (tmp_path / "none", tiny_checkpoint):  # checked before the checkpoint is read
        line = one_line_error(capsys, "sample", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "x.npy"))
        assert "must end in .png: an image model writes its grid there, a time-series model its line plot and the " \
               f"series beside it as .npy (give --out '{tmp_path / 'x.png'}')" in line, line


def test_too_few_series_are_not_called_images():
    """``eval --metrics context-fid --num 1`` on series said '1 image(s) is too few'."""
    from diffkit.series_evaluation import evaluate_series
    with pytest.raises(DiffkitError, match=r"samples: 1 series is too few; at least 2"):
        evaluate_series(["context-fid"], checkpoint="unused.safetensors", num=1, sampler="ddim", steps=2)
