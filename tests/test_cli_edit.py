"""``diffkit edit`` through the CLI on a tiny randomly initialised run: img2img and inpainting
write one PNG per input, kept pixels of an inpainting stay the input's, and mistakes are one line."""
import numpy as np
import pytest
from PIL import Image

from diffkit.cli import main

TINY = ["--set", "img_size=8", "--set", "channel=16", "--set", "channel_mult=[1,2]", "--set", "attn=[1]",
        "--set", "num_res_blocks=1", "--set", "batch_size=8", "--set", "num_heads=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit_run")
    assert main(["train", "--out", str(root / "run"), "--steps", "1", "--no-progress", "--no-sample",
                 "--device", "cpu", *TINY]) == 0
    pngs = root / "pngs"
    pngs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(pngs / f"in_{i}.png")
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, 4:] = 255  # repaint the right half
    Image.fromarray(mask, "L").save(root / "mask.png")
    return root


def cli(capsys, *args):
    try:
        code = main(list(args))
    except SystemExit as exit_:  # argparse's own flag errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read(path):
    return np.asarray(Image.open(path).convert("L"))


def test_img2img_writes_one_png_per_input_and_is_seeded(run, tmp_path, capsys):
    ck = run / "run" / "checkpoints"
    args = ["edit", "--checkpoint", str(ck), "--images", str(run / "pngs"), "--strength", "0.5", "--steps", "10",
            "--sampler", "dpm-solver++-2m", "--no-progress", "--device", "cpu"]
    code, out, err = cli(capsys, *args, "--out", str(tmp_path / "a"))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["edit_00000.png", "edit_00001.png",
                                                                  "edit_00002.png"]
    assert "wrote 3 edited images" in out
    code, _, err = cli(capsys, *args, "--out", str(tmp_path / "b"), "--batch-size", "2")
    assert code == 0, err
    for i in range(3):  # image i depends on seed + i only, not on the batch size
        assert np.array_equal(read(tmp_path / "a" / f"edit_0000{i}.png"), read(tmp_path / "b" / f"edit_0000{i}.png"))
    code, _, err = cli(capsys, "edit", "--checkpoint", str(ck), "--images", str(run / "pngs" / "in_1.png"),
                       "--strength", "0.5", "--steps", "10", "--sampler", "dpm-solver++-2m", "--seed", "1",
                       "--no-progress", "--device", "cpu", "--out", str(tmp_path / "c"))
    assert code == 0, err
    assert np.array_equal(read(tmp_path / "c" / "edit_00000.png"), read(tmp_path / "a" / "edit_00001.png"))


def test_inpainting_keeps_the_black_region_of_the_mask(run, tmp_path, capsys):
    code, out, err = cli(capsys, "edit", "--checkpoint", str(run / "run" / "checkpoints"), "--images",
                         str(run / "pngs"), "--mask", str(run / "mask.png"), "--sampler", "ddpm", "--steps", "5",
                         "--no-progress", "--device", "cpu", "--out", str(tmp_path / "o"))
    assert code == 0, err
    assert "wrote 3 inpainted images" in out
    for i in range(3):
        before, after = read(run / "pngs" / f"in_{i}.png"), read(tmp_path / "o" / f"edit_0000{i}.png")
        assert np.array_equal(after[:, :4], before[:, :4])
        assert not np.array_equal(after[:, 4:], before[:, 4:])


@pytest.mark.parametrize("extra,pattern", [
    (["--strength", "0"], r"argument --strength: 0.0 is out of range; allowed: a number in \(0, 1\]"),
    (["--strength", "0.01"], r"strength=0.01 keeps int\(50 \* 0.01\) = 0 of 50 steps"),
    (["--sampler", "nope"], r"nope"),
    (["--eta", "0.5", "--sampler", "unipc"], r"eta=0.5 applies to the ddim sampler"),
    (["--sampler", "ode"], r"sampler 'ode' picks its own steps: give a fixed-step sampler"),
    (["--mask", "missing.png"], r"--mask 'missing.png' does not exist"),
    (["--class", "3"], r"--class needs a class-conditional checkpoint \(trained with --conditional\); this one is "
                       r"unconditional"),
    (["--jump-n-sample", "3"], r"--jump-n-sample / --jump-length \(RePaint's resampling\) go with --mask"),
    (["--reconstruction-weight", "2"],
     r"--reconstruction-weight \(reconstruction guidance\) goes with --mask or --series"),
    (["--horizon", "2"], r"--horizon goes with --series \(a time-series checkpoint\)"),
    (["--guidance-scale", "2"], r"--guidance-scale is not available for --images \(image edits take --class without "
                                r"guidance\); it goes with --series"),
    (["--guidance-rescale", "0.7"], r"--guidance-rescale is not available for --images \(image edits take --class "
                                    r"without guidance\); it goes with --series"),
    (["--guidance-interval", "1", "5"], r"--guidance-interval is not available for --images"),
    (["--guidance-convention", "diffusers"], r"--guidance-convention is not available for --images"),
    (["--series", "h.csv"], r"--images applies to image edits; --series forecasts"),
])
def test_mistakes_are_one_line(run, tmp_path, capsys, extra, pattern):
    import re
    code, _, err = cli(capsys, "edit", "--checkpoint", str(run / "run" / "checkpoints"), "--images",
                       str(run / "pngs"), "--no-progress", "--device", "cpu", "--out", str(tmp_path / "x"), *extra)
    assert code == 2
    assert re.search(pattern, err), err
    assert err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_repaint_resampling_through_the_cli(run, tmp_path, capsys):
    args = ["edit", "--checkpoint", str(run / "run" / "checkpoints"), "--images", str(run / "pngs"), "--mask",
            str(run / "mask.png"), "--steps", "6", "--jump-length", "2", "--jump-n-sample", "2", "--no-progress",
            "--device", "cpu", "--out", str(tmp_path / "r")]
    code, _, err = cli(capsys, *args)
    assert code == 2 and "jump_n_sample=2 (RePaint's resampling) needs sampler='ddpm'" in err
    code, out, err = cli(capsys, *args, "--sampler", "ddpm")
    assert code == 0, err
    after, before = read(tmp_path / "r" / "edit_00000.png"), read(run / "pngs" / "in_0.png")
    assert np.array_equal(after[:, :4], before[:, :4])


def test_reconstruction_guidance_through_the_cli_keeps_the_known_pixels(run, tmp_path, capsys, monkeypatch):
    """--reconstruction-weight reaches diffkit.inpaint, whose guidance wrapper takes a gradient each step (the
    1-step model's repainted pixels saturate, so the PNGs alone cannot tell the weight)."""
    from diffkit.guidance import ReconstructionGuidance
    calls = []
    original = ReconstructionGuidance.__call__
    monkeypatch.setattr(ReconstructionGuidance, "__call__",
                        lambda self, x, t, **cond: calls.append(self.weight) or original(self, x, t, **cond))
    code, out, err = cli(capsys, "edit", "--checkpoint", str(run / "run" / "checkpoints"), "--images",
                         str(run / "pngs"), "--mask", str(run / "mask.png"), "--steps", "4", "--no-progress",
                         "--device", "cpu", "--reconstruction-weight", "2", "--out", str(tmp_path / "g"))
    assert code == 0, err
    assert calls == [2.0] * 4  # one batch of 3 images, 4 steps
    guided, before = read(tmp_path / "g" / "edit_00000.png"), read(run / "pngs" / "in_0.png")
    assert np.array_equal(guided[:, :4], before[:, :4])


def test_series_needs_a_series_checkpoint(run, tmp_path, capsys):
    (tmp_path / "h.csv").write_text("a\n1\n")
    code, _, err = cli(capsys, "edit", "--checkpoint", str(run / "run" / "checkpoints"), "--series",
                       str(tmp_path / "h.csv"), "--horizon", "1", "--no-progress", "--device", "cpu", "--out",
                       str(tmp_path / "o.csv"))
    assert code == 2 and err.count("\n") == 1
    assert "--series needs a time-series checkpoint (dataset sines or series); this one is an image model" in err


def test_images_of_another_size_are_refused(run, tmp_path, capsys):
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8), "L").save(tmp_path / "big.png")
    code, _, err = cli(capsys, "edit", "--checkpoint", str(run / "run" / "checkpoints"), "--images",
                       str(tmp_path / "big.png"), "--no-progress", "--device", "cpu", "--out", str(tmp_path / "x"))
    assert code == 2 and "the images are 16x16 with 1 channel(s); the model makes 8x8 with 1" in err


def test_interpolate_writes_one_grid_row_per_pair(run, tmp_path, capsys):
    import shutil

    from diffkit.editing import interpolate
    from diffkit.images import save_grid
    from diffkit.loading import load_denoiser
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    for i, name in enumerate(["in_0.png", "in_1.png", "in_2.png", "in_0.png"]):
        shutil.copy(run / "pngs" / name, pairs / f"p_{i}.png")
    ck = run / "run" / "checkpoints"
    base = ["edit", "--checkpoint", str(ck), "--images", str(pairs), "--interpolate", "3", "--no-progress",
            "--device", "cpu"]
    code, out, err = cli(capsys, *base, "--method", "ddpm", "--t", "20", "--out", str(tmp_path / "a"))
    assert code == 0, err
    assert "2 pair(s) x 3 weights (ddpm)" in out
    grid = read(tmp_path / "a" / "interpolation.png")
    assert grid.shape == (2 * 10 + 2, 3 * 10 + 2)  # 8x8 images, padding 2: a row per pair, a column per weight
    code, _, err = cli(capsys, *base, "--method", "ddpm", "--t", "20", "--batch-size", "1",
                       "--out", str(tmp_path / "b"))
    assert code == 0, err  # pair p depends on seed + p only
    assert np.array_equal(grid, read(tmp_path / "b" / "interpolation.png"))
    code, _, err = cli(capsys, *base, "--method", "ddim", "--steps", "8", "--out", str(tmp_path / "c"))
    assert code == 0, err
    den = load_denoiser(ck / "latest.safetensors")
    from diffkit.commands.edit import read_pngs
    images, _ = read_pngs(pairs, "L")
    expected = interpolate(den, images[0::2], images[1::2], [0.0, 0.5, 1.0], "ddim", steps=8, progress=False)
    save_grid(expected.clamp(-1, 1), tmp_path / "expected.png", nrow=3)
    assert np.array_equal(read(tmp_path / "c" / "interpolation.png"), read(tmp_path / "expected.png"))
    for extra, needle in ((["--images", str(run / "pngs")], "an odd number"),
                          (["--mask", str(run / "mask.png")], "--mask does not go with --interpolate"),
                          (["--method", "ddpm", "--steps", "5"], "steps=5 applies to method='ddim'"),
                          (["--sampler", "unipc"], "--sampler does not go with --interpolate")):
        args = [a for a in base if a not in ("--images", str(pairs))] if "--images" in extra else base
        code, _, err = cli(capsys, *args, *extra, "--out", str(tmp_path / "bad"))
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()
    code, _, err = cli(capsys, "edit", "--checkpoint", str(ck), "--images", str(pairs), "--method", "ddim",
                       "--out", str(tmp_path / "bad"))
    assert code == 2 and "--method goes with --interpolate" in err, err


def test_a_batch_out_of_memory_is_halved_and_gives_the_same_images(run, tmp_path, capsys, monkeypatch):
    import torch

    import diffkit.editing
    ck = run / "run" / "checkpoints"
    args = ["edit", "--checkpoint", str(ck), "--images", str(run / "pngs"), "--strength", "0.5", "--steps", "6",
            "--no-progress", "--device", "cpu", "--batch-size", "3"]
    code, _, err = cli(capsys, *args, "--out", str(tmp_path / "a"))
    assert code == 0, err
    real = diffkit.editing.img2img

    def small_memory(denoiser, images, *a, **k):
        if images.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(denoiser, images, *a, **k)

    monkeypatch.setattr(diffkit.editing, "img2img", small_memory)
    code, _, err = cli(capsys, *args, "--out", str(tmp_path / "b"))
    assert code == 0 and "retrying with 1" in err, err
    for i in range(3):
        assert np.array_equal(read(tmp_path / "a" / f"edit_0000{i}.png"), read(tmp_path / "b" / f"edit_0000{i}.png"))


def test_restarts_reach_img2img_and_need_the_restart_sampler(run, tmp_path, capsys):
    """edit --sampler restart --restarts T_MIN:T_MAX:K:N (sample's flag, registered by add_restarts_flag) writes
    diffkit.img2img(..., sampler="restart", restarts=[...]) from the same seed; another sampler or --interpolate
    with --restarts is a one-line error that writes nothing."""
    import torch

    import diffkit
    from diffkit.commands.edit import read_pngs
    from diffkit.loading import load_denoiser
    ck = run / "run" / "checkpoints"
    code, _, err = cli(capsys, "edit", "--checkpoint", str(ck), "--images", str(run / "pngs"), "--strength", "0.9",
                       "--steps", "6", "--sampler", "restart", "--restarts", "0.1:1:1:2", "--no-progress",
                       "--device", "cpu", "--out", str(tmp_path / "r"))
    assert code == 0, err
    images, _ = read_pngs(run / "pngs", "L")

    def as_png(**options):
        out = diffkit.img2img(load_denoiser(ck), images, 0.9, "restart", 6, seed=0, progress=False, **options)
        return ((out.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()

    want = as_png(restarts=[(0.1, 1.0, 1, 2)])
    assert not np.array_equal(want, as_png())  # the default intervals (0.1:2:1:5) give other images
    for i in range(3):
        assert np.array_equal(read(tmp_path / "r" / f"edit_0000{i}.png"), want[i])
    for extra, needle in ((["--sampler", "ddim"], "--restarts sets the intervals of the restart sampler, not of "
                                                  "'ddim'; give --sampler restart"),
                          (["--interpolate", "2"], "--restarts does not go with --interpolate")):
        code, _, err = cli(capsys, "edit", "--checkpoint", str(ck), "--images", str(run / "pngs"), "--restarts",
                           "0.1:1:1:2", *extra, "--device", "cpu", "--out", str(tmp_path / "no"))
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "no").exists()


def test_spacing_and_final_flags_reach_img2img(run, tmp_path, capsys):
    """edit --spacing / --final (add_solver_flags, as sample and upscale take them; before: only inside --sampler
    NAME@SPACING:FINAL) write diffkit.img2img(..., spacing=, final=); a grid given both ways differently and
    --spacing with --interpolate are one-line errors."""
    import torch

    import diffkit
    from diffkit.commands.edit import read_pngs
    from diffkit.loading import load_denoiser
    ck = run / "run" / "checkpoints"
    code, _, err = cli(capsys, "edit", "--checkpoint", str(ck), "--images", str(run / "pngs"), "--strength", "0.7",
                       "--steps", "5", "--sampler", "dpm-solver++-2m", "--spacing", "trailing", "--final", "zero",
                       "--no-progress", "--device", "cpu", "--out", str(tmp_path / "t"))
    assert code == 0, err
    images, _ = read_pngs(run / "pngs", "L")

    def as_png(**grid):
        out = diffkit.img2img(load_denoiser(ck), images, 0.7, "dpm-solver++-2m", 5, seed=0, progress=False, **grid)
        return ((out.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()

    want = as_png(spacing="trailing", final="zero")
    assert not np.array_equal(want, as_png())
    for i in range(3):
        assert np.array_equal(read(tmp_path / "t" / f"edit_0000{i}.png"), want[i])
    spacing = "--spacing does not go with --interpolate"
    for extra, needle in ((["--sampler", "ddim@leading", "--spacing", "trailing"], "spacing"),
                          (["--interpolate", "2", "--spacing", "trailing"], spacing)):
        code, _, err = cli(capsys, "edit", "--checkpoint", str(ck), "--images", str(run / "pngs"), *extra,
                           "--device", "cpu", "--out", str(tmp_path / "no"))
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "no").exists()


def test_compile_reaches_the_denoiser(run, tmp_path, capsys, monkeypatch):
    """edit takes --compile as sample and eval do (recorded here: compiling with inductor takes minutes on a CPU;
    upscale: test_super_res.py)."""
    from diffkit.denoiser import Denoiser
    modes = []
    monkeypatch.setattr(Denoiser, "compile", lambda self, mode="default", backend="inductor": modes.append(mode))
    code, _, err = cli(capsys, "edit", "--checkpoint", str(run / "run" / "checkpoints"), "--images",
                       str(run / "pngs"), "--steps", "2", "--compile", "reduce-overhead", "--no-progress",
                       "--device", "cpu", "--out", str(tmp_path / "e"))
    assert code == 0, err
    assert modes == ["reduce-overhead"]
