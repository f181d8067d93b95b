"""The command line: end to end on a tiny model, and one-line errors (exit 2) for bad input."""
import subprocess
import sys

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
])
def test_bad_input_gives_one_line_error_and_exit_2(args, pattern, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if args[1:3] == ["--device", "cuda:0"]:
        import torch
        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit) if args[1] == "--batch-size" or "-3" in args else _nullctx() as exc:
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


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "diffkit", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "train" in out.stdout and "sample" in out.stdout


class _nullctx:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
