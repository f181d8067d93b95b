"""The command line: end to end on a tiny model, and one-line errors (exit 2) for bad input."""

import pytest

from diffkit.cli import main

TINY = ["--set", "img_size=8", "--set", "channel=16", "--set", "channel_mult=[1,2]", "--set", "attn=[1]",
        "--set", "num_res_blocks=1", "--set", "batch_size=8", "--set", "sample_steps=3",
        "--set", "num_heads=1"]


def run_cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_then_sample_end_to_end(tmp_path, capsys, monkeypatch):
    code, out, err = run_cli(capsys, "train", "--out", str(tmp_path / "run"), "--steps", "2", "--no-progress",
                             "--device", "cpu", *TINY)
    assert code == 0, err
    assert (tmp_path / "run" / "samples" / "SampledNoGuidanceImgs.png").exists()  # the seed's file names
    assert (tmp_path / "run" / "samples" / "NoisyNoGuidanceImgs.png").exists()
    ck = tmp_path / "run" / "checkpoints" / "latest.safetensors"
    code, out, err = run_cli(capsys, "sample", "--checkpoint", str(ck), "--sampler", "ddpm", "--steps", "4",
                             "--num", "5", "--nrow", "5", "--out", str(tmp_path / "g.png"),
                             "--individual", str(tmp_path / "each"), "--no-progress")
    assert code == 0, err
    assert (tmp_path / "g.png").exists() and len(list((tmp_path / "each").glob("*.png"))) == 5
    for grid in (["--sampler", "heun", "--final", "sigma_min"], ["--sampler", "heun@karras:sigma_min"]):
        code, out, err = run_cli(capsys, "sample", "--checkpoint", str(ck), *grid, "--nfe", "4", "--num", "2",
                                 "--out", str(tmp_path / "h.png"), "--no-progress")
        assert code == 0, err
        assert "heun, 4 network evaluations" in out  # 2 calls a step: only with final=sigma_min
    code, out, err = run_cli(capsys, "sample", "--checkpoint", str(ck), "--steps", "3", "--num", "2",
                             "--mixed-precision", "bf16", "--out", str(tmp_path / "bf16.png"), "--no-progress")
    assert code == 0, err
    assert (tmp_path / "bf16.png").exists()
    # --compile reaches Denoiser.compile (recorded here; compiling with inductor takes minutes on a CPU)
    from diffkit.denoiser import Denoiser
    modes = []
    monkeypatch.setattr(Denoiser, "compile", lambda self, mode="default", backend="inductor": modes.append(mode))
    code, out, err = run_cli(capsys, "sample", "--checkpoint", str(ck), "--steps", "2", "--num", "2",
                             "--compile", "reduce-overhead", "--out", str(tmp_path / "c.png"), "--no-progress")
    assert code == 0, err
    assert modes == ["reduce-overhead"]


@pytest.mark.parametrize("args,pattern", [
    (["train", "--dataset", "mnist", "--data-dir", "/nonexistent/mnist", "--steps", "1", *TINY], "/nonexistent/mnist"),
    (["train", "--set", "img_size=30"], "img_size"),
    (["train", "--set", "attn=[7]"], "attn"),
    (["train", "--set", "bogus_key=1"], "bogus_key"),
    (["train", "--set", "batch_size=0"], "batch_size"),
    (["train", "--batch-size", "0"], "0"),
    (["train", "--device", "cuda:0", "--steps", "1", *TINY], "cuda"),
    (["sample", "--checkpoint", "/nonexistent.safetensors"], "/nonexistent.safetensors"),
    (["sample", "--checkpoint", "x", "--sampler", "bogus"], "bogus"),
    (["sample", "--checkpoint", "x", "--sampler", "unipc@bogus"], "bogus"),
    (["sample", "--checkpoint", "x", "--spacing", "bogus"], "bogus"),
    (["sample", "--checkpoint", "x", "--sampler", "ddim:zero", "--final", "sigma_min"], "contradicts"),
    (["sample", "--checkpoint", "x", "--sampler", "heun", "--nfe", "8"], "nfe=8"),
    (["eval", "--checkpoint", "x", "--metrics", "nll", "--sampler", "ddim@bogus"], "bogus"),
    (["sample", "--checkpoint", "x", "--steps", "-3"], "-3"),
    (["sample", "--checkpoint", "x", "--sampler", "ddim@"], "spacing=''"),
    (["sample", "--checkpoint", "x", "--sampler", "ddim:"], "final=''"),
    (["experiment", "sampler-table", "--checkpoint", "x", "--name", "../escape"], "'../escape' is not allowed"),
    (["experiment", "ddim-table", "--checkpoint", "x", "--name", ""], "'' is not allowed"),
    (["eval", "--checkpoint", "x", "--metrics", "nll", "--out", "results.txt"], "must end in .json"),
    (["sample", "--checkpoint", "x", "--out", "grid.jpg"], "--out 'grid.jpg' must end in .png"),
    (["sample", "--checkpoint", "x", "--sampler", "heun", "--eta", "0.5"], "eta=0.5 applies to the ddim sampler"),
    (["eval", "--checkpoint", "x", "--metrics", "nll", "--sampler", "heun", "--eta", "1"],
     "eta=1 applies to the ddim sampler, not 'heun'"),
    (["train-evaluator", "--seed", "99999999999999999999999"], "out of range"),
    (["train-classifier", "--seed", "-5"], "out of range"),
])
def test_bad_input_gives_one_line_error_and_exit_2(args, pattern, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if args[1:3] == ["--device", "cuda:0"]:
        import torch
        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    argparse_error = args[1] == "--batch-size" or "-3" in args or "--name" in args or "--seed" in args
    with pytest.raises(SystemExit) if argparse_error else _nullctx() as exc:
        code = main(args)
    err = capsys.readouterr().err.strip()
    if exc is not None and hasattr(exc, "value"):
        code = exc.value.code
    assert code == 2
    assert len(err.splitlines()) == 1 and pattern in err, err
    assert "Traceback" not in err


def test_a_bad_sampler_in_the_training_config_fails_before_any_directory_is_made(tmp_path, capsys):
    for sampler, pattern in (("bogus", "sampler='bogus'"), ("unipc@bogus", "spacing='bogus'")):
        code, out, err = run_cli(capsys, "train", "--out", str(tmp_path / "run"), "--steps", "1", *TINY,
                                 "--set", f"sampler={sampler}")
        assert code == 2 and len(err.strip().splitlines()) == 1 and pattern in err, err
        assert not (tmp_path / "run").exists()


def test_wrong_file_format_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "mnist"
    bad.mkdir()
    for name in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]:
        (bad / name).write_bytes(b"not an idx file at all")
    code, out, err = run_cli(capsys, "train", "--dataset", "mnist", "--data-dir", str(bad), "--steps", "1", *TINY,
                             "--out", str(tmp_path / "r"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "train-images" in err, err


# ``python -m diffkit --help`` (the entry point): test_cli_errors.py::
# test_a_warning_while_the_commands_are_imported_is_one_line (one interpreter for both).


class _nullctx:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_run")
    assert main(["train", "--out", str(root / "run"), "--steps", "2", "--no-progress", "--no-sample",
                 "--device", "cpu", *TINY]) == 0
    return root / "run" / "checkpoints" / "latest.safetensors"


def test_outputs_never_overwrite_a_training_checkpoint(trained_run, tmp_path, capsys):
    before = trained_run.read_bytes()
    for args in (["train-classifier", "--steps", "1", "--out", str(trained_run)],
                 ["train-evaluator", "--epochs", "1", "--out", str(trained_run)],
                 ["train-autoencoder", "--steps", "1", "--out", str(trained_run)],
                 ["convert", "--checkpoint", str(trained_run), "--out",
                  str(trained_run.parent / f"ckpt_{2:08d}.safetensors")]):
        code, out, err = run_cli(capsys, *args)
        assert code == 2 and "is a diffusion training checkpoint" in err and len(err.strip().splitlines()) == 1, err
    assert trained_run.read_bytes() == before
    (tmp_path / "d.safetensors").mkdir()
    code, out, err = run_cli(capsys, "train-evaluator", "--epochs", "1", "--out", str(tmp_path / "d.safetensors"))
    assert code == 2 and "is a folder" in err, err


def test_a_new_run_does_not_write_over_a_folder_holding_a_run(trained_run, capsys):
    run = trained_run.parent.parent
    code, out, err = run_cli(capsys, "train", "--out", str(run), "--steps", "2", "--no-progress", *TINY)
    assert code == 2 and "already holds a run" in err and f"--resume {trained_run}" in err, err


def test_resume_to_a_step_already_reached_is_refused(trained_run, capsys):
    code, out, err = run_cli(capsys, "train", "--resume", str(trained_run), "--steps", "1", "--no-progress")
    assert code == 2 and "is at step 2, and this run ends at step 1: nothing to train" in err, err


def test_sample_checks_its_two_grid_files_before_sampling(trained_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    same = str(tmp_path / "x.png")
    code, out, err = run_cli(capsys, "sample", "--checkpoint", str(trained_run), "--steps", "2", "--num", "2",
                             "--out", same, "--noise-out", same, "--no-progress")
    assert code == 2 and "would both be" in err, err
    (tmp_path / "d.png").mkdir()
    code, out, err = run_cli(capsys, "sample", "--checkpoint", str(trained_run), "--steps", "2", "--num", "2",
                             "--out", str(tmp_path / "d.png"), "--no-progress")
    assert code == 2 and "is a folder" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.png"]  # no noise grid was written first
    code, out, err = run_cli(capsys, "sample", "--checkpoint", str(trained_run), "--steps", "2", "--num", "2",
                             "--out", "X.PNG", "--noise-out", "N.PNG", "--no-progress")  # any case of .png
    assert code == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["N.PNG", "X.PNG", "d.png"], err


def test_an_nfe_beyond_the_schedule_names_the_largest_allowed(trained_run, capsys):
    code, out, err = run_cli(capsys, "sample", "--checkpoint", str(trained_run), "--nfe", "5000", "--num", "1",
                             "--no-progress")
    assert code == 2 and "nfe=5000 takes 5000 steps of 'ddim'" in err and "nfe up to 1000" in err, err


def test_unreadable_inputs_are_one_line_errors(trained_run, tmp_path, capsys):
    from diffkit.errors import DiffkitError, read_json_object
    from diffkit.metrics.features import iterate_image_folder
    bad_evaluator = tmp_path / "ev.safetensors"
    bad_evaluator.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    code, out, err = run_cli(capsys, "eval", "--checkpoint", str(trained_run), "--metrics", "fd-classifier",
                             "--num", "2", "--steps", "2", "--evaluator", str(bad_evaluator),
                             "--out", str(tmp_path / "e.json"))
    assert code == 2 and "is corrupt or not an evaluator" in err and len(err.strip().splitlines()) == 1, err
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_text("not a png")
    with pytest.raises(DiffkitError, match="a.png' cannot be read"):
        next(iterate_image_folder(folder, 4))
    for text, pattern in (("[1, 2]", "holds a JSON list"), ("{bad", "cannot be read as JSON")):
        (tmp_path / "c.json").write_text(text)
        with pytest.raises(DiffkitError, match=pattern):
            read_json_object(tmp_path / "c.json", "config")


def test_running_out_of_memory_is_one_line(monkeypatch, capsys):
    import diffkit.commands.samplers as samplers_command

    def too_big(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:116] . DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1099511627776 bytes.\nmore")
    monkeypatch.setattr(samplers_command, "run", too_big)
    code, out, err = run_cli(capsys, "samplers")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "out of memory" in err, err


def test_more_mistakes_are_one_line_errors(trained_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ck = str(trained_run)
    cases = [
        (["train", "--out", "r", "--steps", "1", *TINY, "--set", "sampledImgName=x.jpg"], "plain .png file name"),
        (["convert", "--checkpoint", ck, "--out", "w.safetensors", "--clip-sample"], "goes with --to-diffusers"),
        (["experiment", "sampler-table", "--checkpoint", ck, "--samplers", "ddim,dddim", "--steps", "2"],
         "sampler='dddim'"),
        (["experiment", "ddim-table", "--checkpoint", ck, "--steps", "2,abc"],
         "'abc' is not allowed; expected an integer"),
        (["train-classifier", "--steps", "1", "--lr", "1e10", "--out", "c.safetensors"], "lr="),
        (["train-autoencoder", "--steps", "1", "--lr", "inf", "--out", "a.safetensors"], "lr="),
        (["train", "--out", "r", "--steps", "1", *TINY, "--set", "state=eval"], "state='eval'"),
        (["train", "--out", "r", "--steps", "1", *TINY, "--conditional", "--set", "num_classes=2"],
         "num_classes=2 is fewer than the 10 classes of dataset='digits'"),
        # architecture flags are checked before the data is read (the folder does not exist)
        (["train-classifier", "--dataset", "mnist", "--data-dir", "missing", "--attn", "7",
          "--out", "c.safetensors"], "attn level 7"),
    ]
    for args, pattern in cases:
        code, out, err = run_cli(capsys, *args)
        assert code == 2 and pattern in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "r").exists() and not (tmp_path / "w.safetensors").exists()
    # a weights-only export holds the EMA weights alone: --no-ema asks for what it does not have
    assert main(["convert", "--checkpoint", ck, "--out", "w.safetensors"]) == 0
    code, out, err = run_cli(capsys, "sample", "--checkpoint", "w.safetensors", "--no-ema", "--steps", "2",
                             "--num", "1", "--out", "s.png", "--no-progress")
    assert code == 2 and "holds only the EMA weights" in err, err
    # an export of the raw weights, exported again, still says raw and keeps the step
    from diffkit import checkpoint as ckpt
    assert main(["convert", "--checkpoint", ck, "--no-ema", "--out", "raw.safetensors"]) == 0
    assert main(["convert", "--checkpoint", "raw.safetensors", "--no-ema", "--out", "raw2.safetensors"]) == 0
    first, second = (ckpt.load_checkpoint(f)[1]["exported_from"] for f in ("raw.safetensors", "raw2.safetensors"))
    assert first == second and first["weights"] == "raw" and first["step"] is not None


def test_sample_takes_the_sigma_hat_eta(trained_run, tmp_path, capsys):
    code, out, err = run_cli(capsys, "sample", "--checkpoint", str(trained_run), "--steps", "3", "--eta", "sigma_hat",
                             "--num", "2", "--out", str(tmp_path / "s.png"), "--no-progress")
    assert code == 0 and (tmp_path / "s.png").exists(), err
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", str(trained_run), "--eta", "nan"])
    assert "eta='nan' is not allowed" in capsys.readouterr().err


def test_sample_with_the_adaptive_ode_sampler(trained_run, tmp_path, capsys):
    code, out, err = run_cli(capsys, "sample", "--checkpoint", str(trained_run), "--sampler", "ode", "--num", "2",
                             "--out", str(tmp_path / "s.png"), "--no-progress")
    assert code == 0 and (tmp_path / "s.png").exists() and "network evaluations per sample" in out, err
    code, out, err = run_cli(capsys, "sample", "--checkpoint", str(trained_run), "--sampler", "ode:sigma_min",
                             "--rtol", "1e-3", "--atol", "1e-3", "--num", "2", "--out", str(tmp_path / "s.png"),
                             "--no-progress")
    assert code == 0, err
    code, out, err = run_cli(capsys, "sample", "--checkpoint", str(trained_run), "--sampler", "ode", "--steps", "5")
    assert code == 2 and "picks its own steps, so --steps 5 does not apply" in err, err
    code, out, err = run_cli(capsys, "sample", "--checkpoint", str(trained_run), "--rtol", "1e-3")
    assert code == 2, err
    assert "--rtol sets the tolerance of an adaptive sampler (ode, dpm-adaptive), not of 'ddim'" in err, err
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", str(trained_run), "--sampler", "ode", "--rtol", "0"])
    assert "must be a finite number > 0" in capsys.readouterr().err


def test_a_decoder_out_of_memory_redraws_the_batch_once_in_the_grids_and_the_nfe(trained_run, tmp_path, capsys,
                                                                               monkeypatch):
    """A latent model's decoder runs after sampling; when it runs out of memory the batch is drawn
    again at half the size: the same grids (the progressive one with each sample's row once) and
    the NFE per sample of the sampler, not counting the abandoned attempt's calls."""
    import torch

    import diffkit.loading
    load = diffkit.loading.load_denoiser
    failures = []

    def with_decoder(fail_once):
        def decoder(z):  # an identity "autoencoder"
            if fail_once and not failures:
                failures.append(z.shape[0])
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return z

        def load_latent(*args, **kwargs):
            d = load(*args, **kwargs)
            d.decoder = decoder
            return d
        monkeypatch.setattr(diffkit.loading, "load_denoiser", load_latent)

    grids = {}
    for fail_once in (False, True):
        with_decoder(fail_once)
        out = tmp_path / f"{fail_once}" / "s.png"
        out.parent.mkdir()
        code, stdout, err = run_cli(capsys, "sample", "--checkpoint", str(trained_run), "--steps", "3", "--num", "4",
                                    "--batch-size", "4", "--progressive", "3", "--out", str(out), "--no-progress")
        assert code == 0, err
        grids[fail_once] = out.read_bytes(), (out.parent / "s_progressive.png").read_bytes()
    assert failures == [4] and "retrying with 2" in err
    assert grids[True] == grids[False]
    assert "3 network evaluations per sample (6 calls in 2 batches)" in stdout, stdout


def test_checkpoint_file_mistakes_say_what_the_file_is(trained_run, tmp_path, capsys):
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(trained_run.read_bytes())  # a safetensors file under a pickle suffix
    (tmp_path / "c.json").write_text("{}")
    code, out, err = run_cli(capsys, "sample", "--checkpoint", str(renamed), "--config", str(tmp_path / "c.json"),
                             "--num", "1")
    assert code == 2 and "is a safetensors file, not a PyTorch pickle" in err, err
    code, out, err = run_cli(capsys, "sample", "--checkpoint", "/dev/null", "--num", "1")
    assert code == 2 and "is not a regular file" in err, err


def test_sample_with_only_a_config_loads_its_test_load_weight(trained_run, tmp_path, capsys, monkeypatch):
    """Seed 000's modelConfig: save_weight_dir "./Checkpoints/" and test_load_weight "ckpt_199.pt", the
    file its state "eval" samples. ``sample --config`` without --checkpoint samples that file."""
    import json

    import torch

    from diffkit.models import UNet, UNetConfig
    monkeypatch.chdir(tmp_path)
    seed = {"state": "eval", "T": 100, "channel": 16, "channel_mult": [1, 2], "attn": [1], "num_res_blocks": 1,
            "img_size": 8, "device": "cuda:0", "save_weight_dir": "./Checkpoints/", "test_load_weight": "ckpt_199.pt",
            "nrow": 2}
    (tmp_path / "Checkpoints").mkdir()
    torch.save(UNet(UNetConfig(channel=16, channel_mult=[1, 2], attn=[1], num_res_blocks=1, img_size=8,
                               in_channels=1)).state_dict(), tmp_path / "Checkpoints" / "ckpt_199.pt")
    (tmp_path / "seed.json").write_text(json.dumps(seed))
    args = ["--steps", "2", "--num", "2", "--no-progress", "--device", "cpu"]
    code, out, err = run_cli(capsys, "sample", "--config", "seed.json", "--out", "a.png", *args)
    assert code == 0, err
    code, out, err = run_cli(capsys, "sample", "--config", "seed.json", "--checkpoint", "Checkpoints/ckpt_199.pt",
                             "--out", "b.png", *args)
    assert code == 0, err
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    # a diffkit checkpoint named by test_load_weight: loaded with its own config
    (tmp_path / "run.json").write_text(json.dumps({"save_weight_dir": str(trained_run.parent),
                                                   "test_load_weight": trained_run.name}))
    code, out, err = run_cli(capsys, "sample", "--config", "run.json", "--out", "c.png", *args)
    assert code == 0, err
    code, out, err = run_cli(capsys, "sample", "--checkpoint", str(trained_run), "--out", "d.png", *args)
    assert code == 0, err
    assert (tmp_path / "c.png").read_bytes() == (tmp_path / "d.png").read_bytes()
    # ... whose grids go where that config says (its sampled_dir, image names), not the run's folder
    (tmp_path / "named.json").write_text(json.dumps({"save_weight_dir": str(trained_run.parent),
                                                     "test_load_weight": trained_run.name, "sampled_dir": "MySamples",
                                                     "sampledImgName": "mine.png", "sampledNoisyImgName": "noisy.png"}))
    code, out, err = run_cli(capsys, "sample", "--config", "named.json", *args)
    assert code == 0, err
    assert (tmp_path / "MySamples" / "mine.png").read_bytes() == (tmp_path / "c.png").read_bytes()
    assert (tmp_path / "MySamples" / "noisy.png").exists()
    # a missing file, an unset test_load_weight, neither flag: one line each
    (tmp_path / "missing.json").write_text(json.dumps({**seed, "test_load_weight": "ckpt_42.pt"}))
    (tmp_path / "unset.json").write_text(json.dumps({**seed, "test_load_weight": None}))
    for extra, needle in ((["--config", "missing.json"], "Checkpoints/ckpt_42.pt' does not exist"),
                          (["--config", "unset.json"], "test_load_weight is not set"),
                          ([], "give --checkpoint CKPT, or --config CFG")):
        code, out, err = run_cli(capsys, "sample", *extra, "--out", "e.png", *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "e.png").exists()


def test_a_failed_train_leaves_no_empty_run_folder(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "--dataset", "mnist", "--data-dir", str(tmp_path / "nothing"),
                             "--out", str(tmp_path / "run" / "a"), "--steps", "1", *TINY)
    assert code == 2 and "nothing" in err, err
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_sample_leaves_no_empty_folder(trained_run, tmp_path, capsys, monkeypatch):
    import diffkit.commands.sample as sample_command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(sample_command, "sample_to_files", interrupted)
    code, out, err = run_cli(capsys, "sample", "--checkpoint", str(trained_run), "--individual",
                             str(tmp_path / "each" / "png"), "--out", str(tmp_path / "g.png"))
    assert code == 130 and not (tmp_path / "each").exists()


def test_first_line_of_an_error_is_plain_and_short():
    from diffkit.errors import first_line
    assert first_line(ValueError("\x1b[1mbold\x1b[0m text\nsecond line")) == "bold text"
    assert first_line(OSError()) == "OSError"
    cut = first_line(RuntimeError("word " * 60), limit=30)
    assert cut.endswith(" ...") and len(cut) <= 34 and "wor ..." not in cut


def test_a_demo_rerun_replaces_the_earlier_demo_run_and_nothing_else(tmp_path):
    """Running the Quick start twice: the second run starts fresh (the first one's checkpoints of
    later steps used to stay beside it); a folder holding any other run is refused."""
    import torch

    from diffkit import checkpoint as ckpt
    from diffkit.commands.demo import DEMO_CONFIG, replace_earlier_demo_run
    from diffkit.errors import DiffkitError
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    assert not replace_earlier_demo_run(folder)
    for name in ("latest.safetensors", "ckpt_00001500.safetensors"):
        ckpt.save_checkpoint(folder / name, {"w": torch.zeros(1)}, {"config": dict(DEMO_CONFIG), "step": 1500})
    (folder / "train_log.csv").write_text("step\n")
    (folder / "notes.txt").write_text("mine")
    assert replace_earlier_demo_run(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    ckpt.save_checkpoint(folder / "latest.safetensors", {"w": torch.zeros(1)},
                         {"config": {**DEMO_CONFIG, "channel": 128}, "step": 3})
    with pytest.raises(DiffkitError, match="already holds a run"):
        replace_earlier_demo_run(folder)
    assert (folder / "latest.safetensors").is_file()


def test_a_failed_sample_leaves_no_empty_output_folder(trained_run, tmp_path, capsys):
    """--out's folder is made before sampling; a mistake found later (guidance on an unconditional
    checkpoint) must not leave it behind."""
    code, out, err = run_cli(capsys, "sample", "--checkpoint", str(trained_run), "--guidance-scale", "2",
                             "--out", str(tmp_path / "new" / "deeper" / "a.png"), "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "new").exists()


def test_outputs_never_overwrite_another_kind_of_diffkit_file(trained_run, tmp_path, capsys):
    """An evaluator written over the autoencoder a latent run depends on (or any kind over another)
    is refused; the same kind may be written again. The evaluator records what it was trained on."""
    from diffkit.metrics import evaluator_provenance
    evaluator = tmp_path / "e.safetensors"
    evaluator_args = ["train-evaluator", "--dataset", "digits", "--img-size", "8", "--epochs", "1", "--num-train",
                      "64", "--device", "cpu", "--out", str(evaluator)]
    assert run_cli(capsys, *evaluator_args)[0] == 0
    before = evaluator.read_bytes()
    for args in (["train-classifier", "--steps", "1", "--out", str(evaluator)],
                 ["train-autoencoder", "--steps", "1", "--out", str(evaluator)],
                 ["convert", "--checkpoint", str(trained_run), "--out", str(evaluator)]):
        code, out, err = run_cli(capsys, *args)
        assert code == 2 and "holds a diffkit evaluator" in err and len(err.strip().splitlines()) == 1, err
    assert evaluator.read_bytes() == before
    assert run_cli(capsys, *evaluator_args)[0] == 0  # the same kind again
    trained_on = evaluator_provenance(evaluator)
    assert trained_on["dataset"] == "digits" and trained_on["img_size"] == 8 and 0 <= trained_on["test_accuracy"] <= 1


@pytest.mark.parametrize("args, pattern", [
    (["train-classifier", "--lr", "nan"], "lr="),
    (["train-evaluator", "--img-size", "3"], "image_size=3"),
    (["train-autoencoder", "--channel", "1", "--disc-start", "0"],
     "channel=1 is too small for the patch discriminator"),
    (["train-autoencoder", "--steps", "5", "--disc-start", "5"], "disc_start=5 is not below steps=5"),
])
def test_a_failed_auxiliary_training_leaves_no_folder(args, pattern, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "file.safetensors"
    code, _, err = run_cli(capsys, *args, "--out", str(out), "--device", "cpu")
    assert code == 2 and pattern in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "new").exists()


def test_classifier_and_autoencoder_take_the_models_channels(tmp_path, capsys):
    """--like copies the diffusion model's in_channels (an RGB model of grey digits); the
    autoencoder takes --in-channels."""
    from diffkit.autoencoder_training import load_autoencoder
    from diffkit.classifier_training import load_classifier
    run = tmp_path / "rgb"
    assert main(["train", "--out", str(run), "--steps", "1", "--no-progress", "--no-sample", "--device", "cpu",
                 *TINY, "--set", "in_channels=3"]) == 0
    clf = tmp_path / "clf.safetensors"
    code, _, err = run_cli(capsys, "train-classifier", "--like", str(run / "checkpoints" / "latest.safetensors"),
                           "--steps", "1", "--channel", "8", "--channel-mult", "1,2", "--attn", "", "--batch-size", "4",
                           "--no-progress", "--device", "cpu", "--out", str(clf))
    assert code == 0, err
    assert load_classifier(clf)[0].config.in_channels == 3
    ae = tmp_path / "ae.safetensors"
    code, _, err = run_cli(capsys, "train-autoencoder", "--in-channels", "3", "--steps", "1", "--channel", "8",
                           "--batch-size", "4", "--eval-images", "4", "--no-progress", "--device", "cpu",
                           "--out", str(ae))
    assert code == 0, err
    assert load_autoencoder(ae)[0].config.in_channels == 3


def test_a_second_run_into_a_folder_being_trained_is_refused(tmp_path, capsys):
    """Two runs started into one fresh --out at the same moment both passed the "folder holds a
    run" check (no latest yet) and wrote over each other; the folder is locked for the run now.
    The lock is held here as a running `diffkit train` holds it. The demo is refused the same
    way, and a refused demo keeps the earlier demo run (it removed it before its checks)."""
    import torch

    from diffkit import checkpoint as ckpt
    from diffkit.commands._common import run_folder_lock
    from diffkit.commands.demo import DEMO_CONFIG
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    with run_folder_lock(folder):
        import os
        os.environ.pop("DIFFKIT_RUN_FOLDER_LOCKED")  # as another process sees it
        code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress",
                               "--device", "cpu", *TINY)
        assert code == 2 and "another diffkit run is writing into" in err and len(err.strip().splitlines()) == 1, err
        code, _, err = run_cli(capsys, "demo", "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress",
                               "--device", "cpu")
        assert code == 2 and "another diffkit run is writing into" in err, err
    assert list(folder.iterdir()) == []
    ckpt.save_checkpoint(folder / "latest.safetensors", {"w": torch.zeros(1)}, {"config": dict(DEMO_CONFIG), "step": 9})
    code, _, err = run_cli(capsys, "demo", "--out", str(tmp_path / "run"), "--steps", "1", "--device", "cuda:7")
    assert code == 2 and "cuda:7" in err and (folder / "latest.safetensors").is_file(), err


def test_an_image_folder_of_an_earlier_run_is_not_mixed_into(trained_run, tmp_path, capsys):
    """--individual into a folder with more images of an earlier run: the folder held images of
    two runs (and `eval --samples` scored them as one). Refused before sampling; the same count
    again replaces them."""
    folder = tmp_path / "each"
    args = ["sample", "--checkpoint", str(trained_run), "--individual", str(folder), "--out", str(tmp_path / "g.png"),
            "--steps", "2", "--no-progress", "--device", "cpu"]
    assert run_cli(capsys, *args, "--num", "4")[0] == 0
    code, _, err = run_cli(capsys, *args, "--num", "2", "--seed", "5")
    assert code == 2 and "holds 2 images of an earlier run" in err and "sample_00002.png" in err, err
    assert run_cli(capsys, *args, "--num", "4", "--seed", "5")[0] == 0
    assert sorted(p.name for p in folder.iterdir()) == [f"sample_{i:05d}.png" for i in range(4)]


def test_sample_without_out_writes_beside_the_run_wherever_it_is_started(tmp_path, capsys, monkeypatch):
    """A run trained with a relative --out keeps its samples relative to its checkpoints: sampling it
    from another directory wrote (and could overwrite) a grid under that directory instead."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--out", "run", "--steps", "1", "--no-progress", "--no-sample", "--device", "cpu",
                 *TINY]) == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, _, err = run_cli(capsys, "sample", "--checkpoint", "../run/checkpoints/latest.safetensors", "--num", "2",
                           "--steps", "2", "--no-progress", "--device", "cpu")
    assert code == 0, err
    assert (tmp_path / "run" / "samples" / "SampledNoGuidanceImgs.png").is_file()
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_file_system_without_locks_trains_with_a_warning(tmp_path, capsys, monkeypatch):
    """NFS without lockd answers flock with ENOLCK: the run goes on (it gave a traceback)."""
    import errno
    import fcntl

    def no_locks(*a, **k):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="cannot lock the run folder"):
        code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "nfs"), "--steps", "1", "--no-progress",
                               "--no-sample", "--device", "cpu", *TINY)
    assert code == 0, err


def test_a_seed_config_resumes_from_its_training_load_weight_in_save_weight_dir(tmp_path, capsys, monkeypatch):
    """Seed 000's code loads ``training_load_weight`` from ``save_weight_dir`` (a bare file name
    there); a path that is not in that folder is taken as given."""
    import json
    monkeypatch.chdir(tmp_path)
    base = {"dataset": "digits", "save_weight_dir": "./Checkpoints/", "sampled_dir": "./SampledImgs/",
            "device": "cpu", "img_size": 8, "channel": 16, "channel_mult": [1, 2], "attn": [1],
            "num_res_blocks": 1, "batch_size": 8, "num_heads": 1, "sample_steps": 3}
    (tmp_path / "first.json").write_text(json.dumps(base))
    code, out, err = run_cli(capsys, "train", "--config", "first.json", "--steps", "2", "--no-progress")
    assert code == 0, err
    (tmp_path / "again.json").write_text(json.dumps({**base, "training_load_weight": "latest.safetensors"}))
    code, out, err = run_cli(capsys, "train", "--config", "again.json", "--steps", "3", "--no-progress")
    assert code == 0, err
    assert "resumed from Checkpoints/latest.safetensors at step 2" in out + err
    (tmp_path / "elsewhere.json").write_text(json.dumps({**base, "training_load_weight": "nothing.safetensors"}))
    code, out, err = run_cli(capsys, "train", "--config", "elsewhere.json", "--steps", "4", "--no-progress")
    assert code == 2 and "nothing.safetensors" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("mode", ["clip", "dynamic"])
def test_sample_thresholding_writes_the_images_of_diffkit_sample_with_it(tiny_checkpoint, tmp_path, capsys, mode):
    """sample --thresholding (eval's and experiment's flag, one registration: add_thresholding_flag) had no
    equivalent in sample: the PNGs are diffkit.sample(..., thresholding=MODE) from the same noise (sample i:
    x_T from seed i), which differ from the unthresholded ones for this 2-step model; with classifier
    algorithm 1, whose ddpm loop takes no sampler options, a one-line error before anything is written."""
    import numpy as np
    from PIL import Image

    import diffkit
    from diffkit.images import to_uint8
    from diffkit.loading import load_denoiser
    from diffkit.models.network import sample_shape
    from diffkit.noise import randn, sample_generators
    code, _, err = run_cli(capsys, "sample", "--checkpoint", str(tiny_checkpoint), "--thresholding", mode, "--steps",
                           "3", "--num", "2", "--device", "cpu", "--out", str(tmp_path / "g.png"), "--individual",
                           str(tmp_path / "each"), "--no-progress")
    assert code == 0, err
    den = load_denoiser(tiny_checkpoint)
    noise_gens, gens = sample_generators(0, 0, 2)
    noise = randn((2, *sample_shape(den.meta["unet"])), noise_gens)

    def drawn(**options):
        return to_uint8(diffkit.sample(den, noise, steps=3, generator=gens, progress=False, **options))

    written = np.stack([np.asarray(Image.open(tmp_path / "each" / f"sample_{i:05d}.png")) for i in range(2)])
    want = drawn(thresholding=mode)
    assert np.array_equal(written.reshape(want.shape), want)
    assert not np.array_equal(want, drawn())
    code, _, err = run_cli(capsys, "sample", "--checkpoint", str(tiny_checkpoint), "--thresholding", mode,
                           "--classifier", str(tmp_path / "c.safetensors"), "--classifier-algorithm", "1", "--sampler",
                           "ddpm", "--out", str(tmp_path / "no" / "g.png"), "--no-progress")
    assert code == 2 and err.strip().splitlines() == [
        f"diffkit sample: error: --thresholding {mode} needs --classifier-algorithm 2: algorithm 1's ddpm loop takes "
        f"no sampler options"], err
    assert not (tmp_path / "no").exists()


def test_a_demo_stopped_by_a_signal_does_not_say_done(tmp_path, capsys, monkeypatch):
    """SIGTERM during the demo's training: the exit status 143 and the resume command (train_and_sample's), not
    'demo done: look at ...' for a grid that was never drawn."""
    from diffkit.commands import train
    monkeypatch.setattr(train, "train_and_sample", lambda cfg, **kw: 128 + 15)
    code, out, _ = run_cli(capsys, "demo", "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress",
                           "--device", "cpu")
    assert code == 143 and "demo done" not in out, out
    monkeypatch.setattr(train, "train_and_sample", lambda cfg, **kw: 0)
    code, out, _ = run_cli(capsys, "demo", "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress",
                           "--device", "cpu")
    assert code == 0 and "demo done: look at" in out, out
