"""The bad-input audit of train, distill, eval, experiment, convert and the train-* commands (session 31):
each refusal is one line, exit status 2, and leaves nothing behind."""
import pytest
import torch

from diffkit import checkpoint as ckpt
from diffkit.cli import main
from diffkit.commands import train as train_command
from test_cli_errors import one_line_error


def test_nproc_far_beyond_the_cpu_cores_is_refused_before_any_process_starts(tmp_path, capsys, monkeypatch):
    """--nproc 100000 --device cpu started 100000 ranks (the machine ran out of memory); up to 4 ranks a
    core (gloo oversubscribed, as --nproc 4 on 2 cores ran) are started."""
    monkeypatch.setattr(train_command, "usable_cores", lambda: 1)
    monkeypatch.setattr(train_command, "relaunch_with_torchrun", lambda n: pytest.fail(f"{n} ranks started"))
    line = one_line_error(capsys, "train", "--nproc", "5", "--device", "cpu", "--out", str(tmp_path / "r"))
    assert ("--nproc 5 starts 5 processes on the CPU; this process may run on 1 core, and at most 4 processes a core "
            "are allowed: use --nproc 4 or fewer") in line, line
    assert not (tmp_path / "r").exists()
    started = []
    monkeypatch.setattr(train_command, "relaunch_with_torchrun", lambda n: started.append(n) or 0)
    assert main(["train", "--nproc", "4", "--device", "cpu", "--out", str(tmp_path / "r")]) == 0
    assert started == [4]


def test_usable_cores_counts_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(train_command.os, "sched_getaffinity", lambda pid: {0, 3}, raising=False)
    monkeypatch.setattr(train_command.os, "cpu_count", lambda: 64)
    assert train_command.usable_cores() == 2


@pytest.mark.parametrize("argv", [
    ["train", "--out", ""], ["train", "--resume", ""], ["train", "--config", ""], ["train", "--data-dir", ""],
    ["train-classifier", "--like", ""], ["distill", "--teacher", ""], ["eval", "--checkpoint", ""],
    ["eval", "--evaluator", ""], ["convert", "--checkpoint", "x", "--to-diffusers", ""],
    ["experiment", "ddim-table", "--checkpoint", "x", "--ledger", ""],
    ["experiment", "noise-scale", "--checkpoint", ""],
    ["demo", "--device", ""], ["experiment", "noise-scale", "--checkpoint", "x", "--dataset", ""],
    ["train-classifier", "--schedule", ""], ["edit", "--checkpoint", "x", "--out", "o", "--images", ""],
    ["upscale", "--checkpoint", "x", "--out", "o", "--images", ""], ["edit", "--checkpoint", "x", "--mask", ""],
    ["sample", "--checkpoint", "x", "--noise-out", ""], ["edit", "--checkpoint", "x", "--series", ""],
    ["sample", "--checkpoint", "x", "--classifier", ""], ["sample", "--checkpoint", "x", "--clip-model", ""],
    ["sample", "--checkpoint", "x", "--individual", ""], ["eval", "--checkpoint", "x", "--ref", ""],
])
def test_an_empty_path_is_refused_not_taken_for_the_default(argv, tmp_path, capsys, monkeypatch):
    """``--out ''`` trained into ./Checkpoints (the config's default), ``--resume ''`` trained afresh,
    ``--config ''`` took the defaults, ``--like ''`` trained without the checkpoint's schedule,
    ``demo --device ''`` ran the demo."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:  # argparse's refusal
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
    allowed = {"--device": "not a device; choose auto", "--schedule": "not a schedule; choose linear, cosine",
               "--dataset": "not a data set; choose digits, mnist, fashion-mnist, cifar10, folder\n",
               "--ref": "not a data set; choose digits, mnist, fashion-mnist, cifar10, folder\n"}.get(
        argv[-2], "an empty path; give a file or folder name")
    assert f"argument {argv[-2]}: '' is {allowed}" in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command, allowed", [
    ("train", "digits, mnist, fashion-mnist, cifar10, folder, sines, series"),
    ("train-classifier", "digits, mnist, fashion-mnist, cifar10, folder"),
    ("train-autoencoder", "digits, mnist, fashion-mnist, cifar10, folder"),
    ("train-evaluator", "digits, mnist, fashion-mnist, cifar10")])
def test_an_empty_dataset_names_the_commands_own_data_sets(command, allowed, capsys):
    with pytest.raises(SystemExit):
        main([command, "--dataset", ""])
    assert capsys.readouterr().err.endswith(f"argument --dataset: '' is not a data set; choose {allowed}\n")


def _string_options():
    """(command, option, action) for every option of every command that takes a string value."""
    import argparse

    from diffkit.cli import build_parser

    def walk(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, prefix + [name])
            elif action.option_strings and action.nargs != 0 and not action.choices:
                yield " ".join(prefix), action.option_strings[-1], action
    return list(walk(build_parser(), []))


# string options where '' is text or a name checked by the command, not a path
NOT_PATHS = {"--device", "--schedule", "--prompt", "--negative-prompt", "--prompt-2", "--negative-prompt-2",
             "--prompt-3", "--negative-prompt-3", "--control-mode", "--gligen-phrases", "--gligen-boxes",
             "--clip-guidance", "--set", "--eta", "--etas",
             "--metric", "--metrics", "--nfe", "--objectives", "--pag-layers", "--slg-layers", "--recon-loss",
             "--regularizer", "--sampler", "--samplers", "--spacing", "--steps", "--ledits", "--ledits-remove",
             "--ledits-source-prompt", "--task-prompt", "--guidance-schedule",
             "--example", "--query", "--query-examples",  # comma-separated PNGs, checked by _visualcloze._row
             "--prompt-references"}  # comma-separated PNGs, each entry checked by _glm_image._prompt_references


def test_every_string_option_is_a_path_a_data_set_or_known_text():
    """A new path-valued option must refuse '' (type=path_arg): an untyped one is listed here or fails."""
    from diffkit.commands import _common
    from diffkit.data import DATASET_NAMES
    from diffkit.timeseries import SERIES_DATASETS
    assert _common.DATASET_NAMES == DATASET_NAMES
    assert _common.IMAGE_DATASETS == tuple(d for d in DATASET_NAMES if d not in SERIES_DATASETS)
    untyped = sorted({(c, o) for c, o, a in _string_options() if a.type is None and o not in NOT_PATHS})
    assert untyped == [], untyped
    paths = {o for c, o, a in _string_options() if a.type is _common.path_arg}
    assert {"--out", "--images", "--mask", "--noise-out", "--series", "--classifier", "--clip-model"} <= paths


@pytest.mark.parametrize("command", [["train"], ["train-classifier"], ["train-autoencoder"], ["train-evaluator"]])
def test_a_data_dir_without_a_dataset_is_not_ignored(command, tmp_path, capsys):
    """--data-dir DIR without --dataset trained on the bundled digits (the folder was never read)."""
    out = tmp_path / ("run" if command == ["train"] else "x.safetensors")
    line = one_line_error(capsys, *command, "--data-dir", str(tmp_path / "mnist"), "--out", str(out),
                          *(["--epochs"] if command == ["train-evaluator"] else ["--steps"]), "1", "--device", "cpu")
    readers = ("mnist, fashion-mnist or cifar10" if command == ["train-evaluator"]
               else "mnist, fashion-mnist, cifar10 or folder")
    assert (f"data_dir={str(tmp_path / 'mnist')!r} does not apply to dataset='digits' (bundled with scikit-learn); to "
            f"read that folder give dataset {readers}") in line, line
    assert list(tmp_path.iterdir()) == []


def test_a_file_where_a_folder_is_wanted_is_called_a_file(tiny_checkpoint, tmp_path, capsys):
    """The message was "cannot be created: File exists" (what mkdir says), which reads as a folder that exists."""
    afile = tmp_path / "notes.txt"
    afile.write_text("keep")
    evaluate = ["eval", "--checkpoint", str(tiny_checkpoint)]
    for argv, what in (([*evaluate, "--cache-dir", str(afile)], "sample cache directory"),
                       ([*evaluate, "--out", str(afile / "e.json")], "output directory")):
        line = one_line_error(capsys, *argv)
        assert f"{what} {str(afile)!r} is a file, not a folder; give a folder (new or existing)" in line, line
    assert afile.read_text() == "keep" and sorted(tmp_path.iterdir()) == [afile]


@pytest.fixture(scope="module")
def other_kinds(tmp_path_factory):
    """Files of an autoencoder and a classifier (their header, as their save functions write it, over one
    tensor) and a real 1-epoch evaluator on 8x8 digits."""
    root = tmp_path_factory.mktemp("kinds")
    for name, kind in (("ae", "autoencoder"), ("clf", "classifier")):
        ckpt.save_checkpoint(root / f"{name}.safetensors", {"model.w": torch.zeros(2)}, {"kind": kind})
    assert main(["train-evaluator", "--img-size", "8", "--epochs", "1", "--num-train", "32", "--device", "cpu",
                 "--out", str(root / "ev.safetensors")]) == 0
    return root


@pytest.mark.parametrize("argv,wanted", [
    (["eval", "--checkpoint", "{}", "--metrics", "nll"],
     "not a diffusion model checkpoint (diffkit train, distill or convert)"),
    (["convert", "--checkpoint", "{}", "--out", "w.safetensors"], "not a diffusion model checkpoint"),
    (["train", "--resume", "{}"], "not a training checkpoint to resume"),
    (["distill", "--teacher", "{}", "--out", "d"], "not a diffusion model checkpoint"),
    (["train-classifier", "--like", "{}", "--out", "c.safetensors"], "not a diffusion training checkpoint"),
])
def test_another_kind_of_diffkit_file_is_named(argv, wanted, other_kinds, tmp_path, capsys, monkeypatch):
    """An autoencoder or classifier given for a diffusion model said "has no model description; is it a diffkit
    training checkpoint?" (or "no config/schedule"), an evaluator "is not a diffkit checkpoint (format=None)"."""
    monkeypatch.chdir(tmp_path)
    for name, kind in (("ae", "autoencoder"), ("clf", "classifier")):
        path = other_kinds / f"{name}.safetensors"
        line = one_line_error(capsys, *[a.format(path) for a in argv])
        assert f"{path} is a diffkit {kind} file, {wanted}" in line, line
    path = other_kinds / "ev.safetensors"
    line = one_line_error(capsys, *[a.format(path) for a in argv])
    assert f"{path} is a diffkit evaluator (diffkit train-evaluator), not a model checkpoint; give it to --evaluator" \
        in line, line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["train", "distill"])
def test_out_at_a_runs_checkpoint_folder_is_refused(command, tiny_checkpoint, tmp_path, capsys):
    """--out RUN/checkpoints (the folder --resume names) started a second run in RUN/checkpoints/checkpoints."""
    folder = tiny_checkpoint.parent
    before = sorted(p.name for p in folder.iterdir())
    extra = ["--teacher", str(tiny_checkpoint)] if command == "distill" else []
    line = one_line_error(capsys, command, *extra, "--out", str(folder), "--steps", "1", "--no-sample",
                          "--device", "cpu")
    assert (f"{folder} is a run's checkpoint folder (it holds latest.safetensors); a run goes in a folder of its "
            f"own: give another --out (to continue that run: --resume {tiny_checkpoint})") in line, line
    assert sorted(p.name for p in folder.iterdir()) == before


@pytest.mark.parametrize("argv,message", [
    (["train-autoencoder", "--channel-mult", "1,,2"], "argument --channel-mult: '1,,2' is not a comma-separated list"),
    (["train-classifier", "--attn", "1,"],
     "argument --attn: '1,' is not a comma-separated list of integers (e.g. 1,2,2)"),
    (["experiment", "ddim-table", "--checkpoint", "x", "--etas", "0,,1"], "etas='0,,1' has an empty entry; give a "
                                                                         "comma-separated list such as 10,20,50"),
    (["experiment", "sampler-table", "--checkpoint", "x", "--steps", "10,20,"], "steps='10,20,' has an empty entry"),
])
def test_an_empty_list_entry_is_refused_not_skipped(argv, message, tmp_path, capsys, monkeypatch):
    """"1,,2" was read as [1, 2] (a lost entry went unnoticed); "" stays the empty list (--attn "")."""
    monkeypatch.chdir(tmp_path)
    try:
        train = argv[0].startswith("train")
        line = one_line_error(capsys, *argv, *(["--out", "o.safetensors", "--steps", "1", "--channel", "8", "--device",
                                               "cpu", "--no-progress"] if train else ["--out", "o"]))
    except SystemExit as stop:  # argparse's refusal
        assert stop.code == 2
        line = capsys.readouterr().err.strip()
    assert message in line, line
    assert list(tmp_path.iterdir()) == []
    from diffkit.commands._common import int_list
    assert int_list("") == [] and int_list("[1, 2,2]") == [1, 2, 2]


def test_an_int_list_of_empty_brackets_is_the_empty_list():
    """``--attn '[]'`` meant no attention (as ``--attn ''``) before the empty-entry refusal; "[,]" is still refused."""
    import argparse
    from diffkit.commands._common import int_list
    assert int_list("[]") == int_list(" [ ] ") == []
    with pytest.raises(argparse.ArgumentTypeError, match="not a comma-separated list"):
        int_list("[,]")


def test_an_old_digits_checkpoint_with_a_stored_data_dir_still_resumes_and_evaluates(tiny_checkpoint, tmp_path):
    """Before the refusal above, ``train --data-dir DIR`` without ``--dataset`` trained on digits and
    stored data_dir=DIR; resume, eval nll and noise-scale must take such a checkpoint (DIR was never read)."""
    tensors, meta = ckpt.load_checkpoint(tiny_checkpoint)
    old = tmp_path / "run" / "checkpoints" / "latest.safetensors"
    old.parent.mkdir(parents=True)
    ckpt.save_checkpoint(old, tensors, {**meta, "config": {**meta["config"], "data_dir": "mydata"}})
    assert ckpt.load_checkpoint(old)[1]["config"]["data_dir"] is None
    assert ckpt.peek_metadata(old)["config"]["data_dir"] is None
    assert main(["eval", "--checkpoint", str(old), "--metrics", "nll", "--nll-num", "2",
                 "--out", str(tmp_path / "e.json")]) == 0
    assert main(["experiment", "noise-scale", "--checkpoint", str(old), "--batches", "2", "--small-batch", "1",
                 "--big-batch", "2", "--history", "1", "--device", "cpu", "--out", str(tmp_path / "n.json")]) == 0
    assert main(["train", "--resume", str(old), "--steps", str(meta["step"] + 1)]) == 0
    assert ckpt.load_checkpoint(old)[1]["step"] == meta["step"] + 1


def test_train_classifier_t_is_bounded_before_anything_is_written(tmp_path, capsys):
    """--T 10^9 passed the flag (1..10^9), and its schedule's tables need about 80 GB; the flag takes
    1..MAX_TIMESTEPS (100000), named in the one-line refusal."""
    from diffkit.config import MAX_TIMESTEPS
    assert MAX_TIMESTEPS == 100_000
    for value in ("100001", "1000000000", "0"):
        with pytest.raises(SystemExit) as stop:
            main(["train-classifier", "--T", value, "--steps", "1", "--device", "cpu", "--out",
                  str(tmp_path / "c" / "c.safetensors")])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.endswith(f"argument --T: {value} is out of range; allowed: 1..100000\n"), err
    assert list(tmp_path.iterdir()) == []


def test_train_evaluator_num_train_beyond_the_split_is_refused(tmp_path, capsys):
    """--num-train 5000 on digits (1200 training images) trained on 1200 and said nothing."""
    line = one_line_error(capsys, "train-evaluator", "--num-train", "1201", "--img-size", "8", "--epochs", "1",
                          "--device", "cpu", "--out", str(tmp_path / "e" / "ev.safetensors"))
    assert "--num-train 1201 is more than the 1200 training images of digits; allowed: 1..1200" in line, line
    assert list(tmp_path.iterdir()) == []


def test_train_evaluator_num_train_reads_n_plus_one_training_images_not_the_split(tmp_path, capsys, monkeypatch):
    """The bound on --num-train read the whole train split as float32 to count it (CIFAR-10 at 64x64: 2.4 GB)
    where the first N sufficed before; it reads N + 1 (N + 1 found: N is within the split) and trains on N."""
    from diffkit import evaluation
    rows = []

    def recorded(*args, **kwargs):
        images, labels = real(*args, **kwargs)
        rows.append((kwargs.get("train"), len(images)))
        return images, labels

    real = evaluation.reference_images
    monkeypatch.setattr(evaluation, "reference_images", recorded)
    assert main(["train-evaluator", "--num-train", "40", "--img-size", "8", "--epochs", "1", "--device", "cpu",
                 "--out", str(tmp_path / "ev.safetensors")]) == 0
    assert "trained on 40 digits images" in capsys.readouterr().out
    assert rows == [(True, 41), (False, 597)]


@pytest.mark.parametrize("source,wanted", [(["--checkpoint", "{d}/junk.safetensors"], "is corrupt or truncated"),
                                           (["--checkpoint", "{d}/none.safetensors"], "does not exist"),
                                           (["--from-diffusers", "{d}"], "is not a diffusers folder")])
def test_convert_that_fails_leaves_no_output_folder(source, wanted, tmp_path, capsys):
    """convert --out NEW/DIR/F.safetensors made NEW/DIR before reading the source, and left it when that failed."""
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    out = tmp_path / "new" / "dir" / "w.safetensors"
    line = one_line_error(capsys, "convert", *[a.format(d=tmp_path) for a in source], "--out", str(out))
    assert wanted in line, line
    assert not (tmp_path / "new").exists(), line
