"""``diffkit edit --tau`` and ``diffkit eval --tau``: the sa-solver sampler's stochasticity (Xue et al. 2023, eq. 6;
``diffkit sample --tau``'s flag) reaches the edited images and the scored samples, is recorded in eval's settings
and in the sample cache's key, and is a one-line error with another sampler, as ``--gamma`` is for tcd."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffkit.cli import main
from diffkit.errors import DiffkitError

TINY = ["--set", "img_size=8", "--set", "channel=16", "--set", "channel_mult=[1]", "--set", "attn=[]",
        "--set", "num_res_blocks=1", "--set", "batch_size=4", "--set", "num_heads=1", "--set", "T=100"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 1-step tiny 8x8 digits checkpoint, two input PNGs and a random 8x8 evaluator."""
    from diffkit.metrics.evaluator import EvaluatorConfig, EvaluatorNet, save_evaluator
    root = tmp_path_factory.mktemp("tau_run")
    assert main(["train", "--out", str(root / "run"), "--steps", "1", "--no-progress", "--no-sample",
                 "--device", "cpu", *TINY]) == 0
    pngs = root / "pngs"
    pngs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(pngs / f"in_{i}.png")
    torch.manual_seed(0)
    save_evaluator(EvaluatorNet(EvaluatorConfig(image_size=8, channels=(4,), feature_dim=8)), root / "ev.safetensors")
    return root


def cli(capsys, *args):
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse's own flag errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(capsys, needle, *args):
    code, _, err = cli(capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


def pngs(folder):
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def test_edit_tau_reaches_img2img_and_needs_sa_solver(run, tmp_path, capsys):
    """edit --sampler sa-solver --tau 0 writes diffkit.img2img(..., sampler="sa-solver", tau=0.0) (the ODE), which
    the default tau = 1 (the reverse SDE) is not; --tau 1 is the default bit for bit; --tau with another sampler,
    or with --interpolate, is a one-line error that writes nothing."""
    import diffkit
    from diffkit.commands.edit import read_pngs
    from diffkit.loading import load_denoiser
    ck = run / "run" / "checkpoints"
    common = ["edit", "--checkpoint", ck, "--images", run / "pngs", "--strength", "0.9", "--steps", "3",
              "--sampler", "sa-solver", "--no-progress", "--device", "cpu"]
    for name, extra in (("ode", ["--tau", "0"]), ("default", []), ("one", ["--tau", "1"])):
        code, _, err = cli(capsys, *common, *extra, "--out", tmp_path / name)
        assert code == 0, err
    images, _ = read_pngs(run / "pngs", "L")
    out = diffkit.img2img(load_denoiser(ck), images, 0.9, "sa-solver", 3, seed=0, progress=False, tau=0.0)
    want = ((out.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()
    assert np.array_equal(pngs(tmp_path / "ode"), want)
    assert not np.array_equal(pngs(tmp_path / "ode"), pngs(tmp_path / "default"))
    assert np.array_equal(pngs(tmp_path / "one"), pngs(tmp_path / "default"))
    one_line(capsys, "--tau 0.5 sets the stochasticity of the sa-solver sampler, not of 'ddim'; give --sampler "
             "sa-solver", *common[:-5], "--sampler", "ddim", "--tau", "0.5", "--device", "cpu",
             "--out", tmp_path / "no")
    one_line(capsys, "--tau does not go with --interpolate", "edit", "--checkpoint", ck, "--images", run / "pngs",
             "--interpolate", "2", "--tau", "0", "--out", tmp_path / "no")
    one_line(capsys, "--tau: -1.0 must be a finite number >= 0", *common, "--tau", "-1", "--out", tmp_path / "no")
    assert not (tmp_path / "no").exists()


def test_edit_tau_is_refused_by_a_flow_folder_as_gamma_is(tmp_path, capsys):
    """An SD3 folder's edits take no diffkit-only sampler option: --tau, like --gamma, is one line naming it."""
    folder = tmp_path / "sd3"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    for flag in ("--gamma", "--tau"):
        one_line(capsys, f"{flag} does not apply to an SD3 folder", "edit", "--checkpoint", folder, "--images",
                 tmp_path, "--prompt", "x", "--sampler", "sa-solver", flag, "0.5", "--out", tmp_path / "no")


def test_eval_tau_is_in_the_settings_and_the_cache_key(run, tmp_path, capsys):
    """eval --sampler sa-solver --tau T records tau and files its samples under a key holding it: a cached run at
    another tau is not reused (its scores differ), one at the same tau is; --tau 1 shares the default's key
    (canonical_settings drops a default). --tau with --samples or another sampler is a one-line error."""
    from diffkit.evaluation import evaluate
    ckpt = run / "run" / "checkpoints" / "latest.safetensors"
    common = ["eval", "--checkpoint", ckpt, "--metrics", "fd-classifier", "--evaluator", run / "ev.safetensors",
              "--ref-num", "8", "--num", "4", "--batch-size", "2", "--steps", "3", "--sampler", "sa-solver",
              "--cache-dir", tmp_path / "cache", "--device", "cpu", "--no-progress"]

    def result(name, *extra):
        code, _, err = cli(capsys, *common, *extra, "--out", tmp_path / f"{name}.json")
        assert code == 0, err
        return json.loads((tmp_path / f"{name}.json").read_text())

    first, other, again = result("a", "--tau", "0"), result("b", "--tau", "0.5"), result("c", "--tau", "0")
    assert (first["settings"]["tau"], other["settings"]["tau"]) == (0.0, 0.5)
    assert (first["settings"]["cached_batches"], other["settings"]["cached_batches"]) == (0, 0)
    assert first["metrics"] != other["metrics"]
    assert again["settings"]["cached_batches"] == 2 and again["metrics"] == first["metrics"]
    default, one = result("d"), result("e", "--tau", "1")
    assert "tau" not in default["settings"] and one["settings"]["tau"] == 1.0
    assert (default["settings"]["cached_batches"], one["settings"]["cached_batches"]) == (0, 2)
    assert one["metrics"] == default["metrics"]
    one_line(capsys, "--tau 0.5 sets the stochasticity of the sa-solver sampler, not of 'heun'",
             *common[:11], "--sampler", "heun", "--tau", "0.5", "--out", tmp_path / "no" / "x.json")
    one_line(capsys, "--tau applies to sampling a --checkpoint", "eval", "--samples", run / "pngs", "--ref", "digits",
             "--tau", "0", "--out", tmp_path / "no" / "x.json")
    assert not (tmp_path / "no").exists()
    with pytest.raises(DiffkitError, match=r"^option 'tau' is not one sampler 'ddim' takes"):
        evaluate("fd-classifier", checkpoint=ckpt, evaluator=run / "ev.safetensors", num=4, steps=3, tau=0.5)
    with pytest.raises(DiffkitError, match=r"^tau="):
        evaluate("fd-classifier", checkpoint=ckpt, evaluator=run / "ev.safetensors", num=4, steps=3,
                 sampler="sa-solver", tau=-1.0)


def test_edit_tau_reaches_a_stable_diffusion_folder(tmp_path, capsys):
    """On an SD 1.x folder (tiny, random, written by diffusers' save_pretrained) edit --sampler sa-solver --tau 0
    gives other images than the default tau = 1, which --tau 1 gives bit for bit: the flag reaches the sampler."""
    pytest.importorskip("diffusers")
    from test_interop_diffusers import tiny_sd_pipeline
    tiny_sd_pipeline(tmp_path).save_pretrained(tmp_path / "sd")
    (tmp_path / "in").mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB").save(tmp_path / "in" / "a.png")
    common = ["edit", "--checkpoint", tmp_path / "sd", "--images", tmp_path / "in", "--prompt", "a photo",
              "--strength", "0.9", "--steps", "3", "--sampler", "sa-solver", "--no-progress", "--device", "cpu"]
    for name, extra in (("ode", ["--tau", "0"]), ("default", []), ("one", ["--tau", "1"])):
        code, _, err = cli(capsys, *common, *extra, "--out", tmp_path / name)
        assert code == 0, err
    assert not np.array_equal(pngs(tmp_path / "ode"), pngs(tmp_path / "default"))
    assert np.array_equal(pngs(tmp_path / "one"), pngs(tmp_path / "default"))


def test_eval_tau_reaches_a_time_series_model(tmp_path, capsys):
    """eval --tau on a time-series checkpoint (evaluation.evaluate_series): recorded in the settings, and the
    score at tau = 0 is not the default's (the samples differ); --tau with another sampler is one line there too."""
    from test_timeseries_cli import SET
    assert main(["train", "--dataset", "sines", "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress",
                 "--no-sample", "--device", "cpu", *SET]) == 0
    common = ["eval", "--checkpoint", tmp_path / "run" / "checkpoints" / "latest.safetensors", "--metrics",
              "correlational", "--num", "8", "--steps", "3", "--no-progress"]
    scores = {}
    for name, extra in (("ode", ["--tau", "0"]), ("default", [])):
        code, _, err = cli(capsys, *common, "--sampler", "sa-solver", *extra, "--out", tmp_path / f"{name}.json")
        assert code == 0, err
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert result["settings"].get("tau") == (0.0 if extra else None)
        scores[name] = result["metrics"]["correlational"]["value"]
    assert scores["ode"] != scores["default"]
    one_line(capsys, "--tau 0 sets the stochasticity of the sa-solver sampler, not of 'ddpm'", *common, "--sampler",
             "ddpm", "--tau", "0", "--out", tmp_path / "no.json")
