"""The bad-input audit of sample / edit / eval / convert on diffusers folders (session 37): the cases that printed
the wrong line (an eval of a missing --samples folder blamed the Inception weights; a diffusers folder's message said
eval reads Stable Diffusion folders), a doubled line (an unreadable PNG read by load_image_batch) or an opaque one
(a text file as --textual-inversion: "weights_only: 101"). Each is one line naming the bad value, exit status 2, and
leaves nothing behind."""
import json

import pytest
import test_sd_lora
from test_cli_errors import one_line_error

from diffkit.cli import main
from diffkit.errors import DiffkitError

sd_lora = test_sd_lora.sd_lora  # the fixture, shared


@pytest.fixture
def files(tmp_path):
    """A text file named .png, a folder holding only it, and a diffusers folder's model_index.json."""
    text = tmp_path / "text.png"
    text.write_text("hello")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_text("hello")
    folder = tmp_path / "sd"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return text, bad, folder


@pytest.mark.parametrize("samples, expected", [
    ("missing", "image folder '{}' does not exist or is not a directory"),
    ("text", "image folder '{}' does not exist or is not a directory"),
    ("bad", "image '{}/a.png' cannot be read: cannot identify image file"),
    ("empty", "image folder '{}' has no .png files"),
])
def test_eval_names_the_bad_samples_folder_before_the_inception_weights(files, tmp_path, capsys, monkeypatch,
                                                                         samples, expected):
    """``eval --samples X --metrics fid`` said "Inception weights not found" (no weights here) for a missing,
    unreadable or empty folder: the folder is checked first."""
    monkeypatch.delenv("DIFFKIT_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no cached weights either
    path = {"missing": tmp_path / "nope", "text": files[0], "bad": files[1], "empty": tmp_path / "empty"}[samples]
    (tmp_path / "empty").mkdir()
    line = one_line_error(capsys, "eval", "--samples", str(path), "--metrics", "fid", "--ref", "digits", "--out",
                          str(tmp_path / "out" / "r.json"))
    assert expected.format(path) in line and "Inception" not in line, line
    assert not (tmp_path / "out").exists()


def test_an_unreadable_png_is_named_once(files):
    from diffkit.metrics.features import load_image_batch
    with pytest.raises(DiffkitError) as caught:
        load_image_batch([files[0]], "RGB")
    assert str(caught.value).count("cannot be read") == 1, caught.value


@pytest.mark.parametrize("command", [["eval", "--metrics", "nll"], ["convert", "--to-diffusers", "{out}"],
                                     ["train", "--init-from"]])
def test_a_diffusers_folder_given_as_a_checkpoint_says_which_commands_read_it(files, tmp_path, capsys, command):
    """The line said "diffkit sample and eval read Stable Diffusion folders"; eval reads none (only DiTPipeline)."""
    folder = str(files[2])
    out = str(tmp_path / "out")
    argv = [a.format(out=out) for a in command] + ([folder, "--out", out] if command[0] == "train" else
                                                    ["--checkpoint", folder])
    line = one_line_error(capsys, *argv)
    assert "it is a diffusers folder, not a diffkit checkpoint (diffkit sample reads Stable Diffusion / SD-XL, SD3, " \
           "FLUX.1 and DiTPipeline folders, diffkit edit the first three, diffkit eval DiTPipeline ones" in line, line
    assert "eval read Stable Diffusion" not in line
    assert not (tmp_path / "out").exists()


def test_a_text_file_as_a_pickled_adapter_is_called_no_torch_file(files):
    """``--textual-inversion notes.bin`` said "(torch.load weights_only: 101)"."""
    from diffkit.interop import load_weights_pickle
    with pytest.raises(DiffkitError, match=r"--textual-inversion .*text.png is not a plain tensor file \(torch.load "
                                           r"weights_only: no torch zip or pickle file \(KeyError 101\)\)"):
        load_weights_pickle(files[0], "--textual-inversion")


@pytest.mark.parametrize("flags, name", [(["--guidance-scale", "1e308", "--class", "1"], "guidance scale"),
                                         (["--guidance-scale", "-3.5e38", "--class", "1"], "guidance scale"),
                                         (["--pag-scale", "1e308"], "--pag-scale")])
def test_a_scale_beyond_float32_is_one_line_not_an_overflow_traceback(tiny_checkpoint, tmp_path, capsys, flags, name):
    """``--guidance-scale 1e308`` (finite in Python) raised torch's "value cannot be converted to type float
    without overflow" mid-sampling (SD, SD-XL, SD3, FLUX folders, diffkit checkpoints; --pag-scale and
    --true-cfg-scale alike); now refused before anything runs."""
    line = one_line_error(capsys, "sample", "--checkpoint", str(tiny_checkpoint), *flags, "--steps", "2",
                          "--out", str(tmp_path / "out" / "s.png"))
    assert f"{name}={float(flags[1])!r} is out of range; allowed: at most 3.403e+38 in size (the sampling runs in " \
           f"float32)" in line, line
    assert not (tmp_path / "out").exists()


def test_the_scales_library_checks_refuse_float32_overflow():
    from diffkit.guidance import guidance_weight
    from diffkit.interop.flux import Flux
    assert guidance_weight(3.4e38) == 3.4e38
    for call in (lambda: guidance_weight(1e39), lambda: guidance_weight(1e39, "diffusers"),
                 lambda: Flux.check_guidance_scale(type("F", (), {"guidance_embeds": True})(), 1e39)):
        with pytest.raises(DiffkitError, match="at most 3.403e"):
            call()


def test_a_bad_individual_folder_leaves_no_out_folder(tiny_checkpoint, tmp_path, capsys):
    """``sample --out NEW/s.png --individual FILE``: NEW/ was made by the --out check and stayed behind."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    line = one_line_error(capsys, "sample", "--checkpoint", str(tiny_checkpoint), "--steps", "2", "--out",
                          str(tmp_path / "new" / "deeper" / "s.png"), "--individual", str(afile))
    assert "is a file, not a folder" in line, line
    assert not (tmp_path / "new").exists()


def test_a_negative_number_in_exponent_notation_is_a_value(tiny_checkpoint, tmp_path, capsys):
    """``--guidance-scale -1e3`` said "expected one argument" (argparse took -1e3 for a flag; -1000 was a value)."""
    line = one_line_error(capsys, "sample", "--checkpoint", str(tiny_checkpoint), "--guidance-scale", "-1e3",
                          "--class", "1", "--steps", "2", "--out", str(tmp_path / "out" / "s.png"))
    assert "guidance scale=-1000.0 is out of range; allowed: >= -1 (seed convention)" in line, line


def test_a_lora_file_with_nan_weights_is_refused_before_it_is_merged(sd_lora, tmp_path):
    """A damaged LoRA file (NaN in one tensor) was merged: every image black, after a warning."""
    from safetensors.torch import load_file, save_file

    from diffkit.interop.sd_lora import read_sd_lora
    tensors = load_file(sd_lora["diffusers"])
    key = sorted(tensors)[0]
    tensors[key] = tensors[key] * float("nan")
    save_file(tensors, tmp_path / "nan.safetensors")
    with pytest.raises(DiffkitError, match=f"tensor '{key}' holds NaN or infinite values; the file is damaged"):
        read_sd_lora(tmp_path / "nan.safetensors")


def test_a_lora_scale_beyond_float32_is_one_line(sd_lora, tmp_path, capsys):
    """``--lora FILE:1e308`` (the parser refuses it now, and the library's check_scale) or a scale whose product with
    alpha / r leaves float32 (-3e38 x 2) raised torch's overflow in the merge's ``add_(delta, alpha=...)``; nothing
    is written."""
    from diffkit.lora_files import check_scale
    with pytest.raises(DiffkitError, match="LoRA scale=1e[+]308 is out of range; allowed: at most 3.403e[+]38"):
        check_scale(1e308)
    line = one_line_error(capsys, "sample", "--checkpoint", str(sd_lora["folder"]), "--prompt", "a", "--steps", "2",
                          "--lora", f"{sd_lora['diffusers']}:-3e38", "--no-progress", "--out",
                          str(tmp_path / "out" / "s.png"))
    assert f"--lora {sd_lora['diffusers']} (unet): scale x alpha / r=-6e+38 is out of range; allowed: at most " \
           f"3.403e+38 in size" in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, expected", [
    (["sample", "--controlnet-scale", "1e308"], "argument --controlnet-scale: 1e+308 must be a finite number >= 0 "
                                                "and at most 3.403e+38 (the sampling runs in float32)"),
    (["edit", "--reconstruction-weight", "1e308"], "argument --reconstruction-weight: 1e+308 must be a finite"),
    (["sample", "--t2i-adapter", "a:1e308"], "argument --t2i-adapter: 'a:1e308': scale '1e308' is not allowed; give "
                                             "a finite number (at most 3.403e+38 in size: float32)"),
    (["sample", "--ip-adapter", "a:-1e308"], "argument --ip-adapter: 'a:-1e308': scale '-1e308' is not allowed"),
    (["edit", "--lora", "a:1e39"], "argument --lora: 'a:1e39': scale '1e39' is not allowed"),
])
def test_scales_beyond_float32_are_refused_by_the_parser(tmp_path, capsys, argv, expected):
    """``--controlnet-scale 1e308`` / ``--t2i-adapter DIR:1e308`` ran and drew garbage (residuals of inf); the
    parser refuses them, before anything is read."""
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_an_ip_adapter_file_with_nan_weights_is_refused_when_read(tmp_path, suffix):
    import torch
    from test_ip_adapter import save_ip_adapter

    from diffkit.interop.ip_adapter import read_ip_adapter
    state = {"image_proj": {"proj.weight": torch.ones(8, 4), "proj.bias": torch.zeros(8)},
             "ip_adapter": {"1.to_k_ip.weight": torch.ones(4, 2), "1.to_v_ip.weight": torch.ones(4, 2)}}
    assert read_ip_adapter(save_ip_adapter(state, tmp_path / f"ok{suffix}"))["ip_adapter"]
    state["ip_adapter"]["1.to_v_ip.weight"][0, 1] = float("inf")
    path = save_ip_adapter(state, tmp_path / f"bad{suffix}")
    with pytest.raises(DiffkitError, match=r"--ip-adapter .*bad.* tensor 'ip_adapter.1.to_v_ip.weight' holds NaN or "
                                           r"infinite values; the file is damaged"):
        read_ip_adapter(path)
