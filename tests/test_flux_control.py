"""FLUX.1 Depth / Canny folders (diffkit.interop.flux_channels; FluxControlPipeline): text_to_image(control_image=)
and `diffkit sample --control-image` against diffusers' own pipeline on a tiny random folder (test_flux_fill's
builder, a 128-channel transformer: 4 x (16 latent + 16 control-image latent channels))."""
import re

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.interop.flux import pack_latents, text_to_image, unpack_latents  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
import test_flux_fill  # noqa: E402

PROMPTS = test_flux_fill.PROMPTS
KW = test_flux_fill.KW


@pytest.fixture(scope="module")
def tiny_control(tmp_path_factory):
    """(FluxControlPipeline.from_pretrained, folder, load_flux of it)."""
    return test_flux_fill.tiny_variant_folder(tmp_path_factory.mktemp("flux_control"), diffusers.FluxControlPipeline,
                                              128)


def _control_images(count=2):
    from PIL import Image
    pixels = torch.rand(count, 12, 20, 3, generator=torch.Generator().manual_seed(8))  # resized to 16 x 16 (Lanczos)
    return [Image.fromarray((p.numpy() * 255).round().astype(np.uint8)) for p in pixels]


@pytest.mark.parametrize("per_prompt", [False, True])
def test_flux_control_matches_the_pipeline(tiny_control, per_prompt):
    """Same z_0 as FluxControlPipeline (the embedded guidance 3.5, its sigmas): the control image resized and encoded
    by the VAE, sample i's posterior draw from generator seed + i, its latents concatenated after the packed latents
    at every step; one control image for both prompts, or one per prompt."""
    pipe, _, flux = tiny_control
    images = _control_images() if per_prompt else _control_images(1)[0]
    latents = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        theirs = pipe(PROMPTS, control_image=images, height=16, width=16, num_inference_steps=3,
                      latents=pack_latents(latents), output_type="latent",
                      generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], **KW).images
    theirs = unpack_latents(theirs, 8, 8)
    ours = text_to_image(flux, PROMPTS, control_image=images, control_seed=5, latents=latents, steps=3,
                         return_latents=True, **KW)
    error = relative_error(ours, theirs)
    print("flux control", per_prompt, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)


def test_sample_command_controls_and_refuses_in_one_line(tiny_control, tmp_path, capsys, monkeypatch):
    """`diffkit sample --control-image PNG` on a Depth / Canny folder writes text_to_image(control_image=)'s grid byte
    for byte (sample i's control latents and noise from seed + i); a folder of one PNG per --prompt likewise; no
    --control-image, two of them, true CFG, `diffkit edit`: one line each, before any output."""
    from diffkit.cli import main
    from diffkit.errors import DiffkitError
    from diffkit.images import save_grid
    from diffkit.interop import flux as flux_module
    monkeypatch.setattr(flux_module, "DEFAULT_SAMPLE_SIZE", 8)
    _, folder, flux = tiny_control
    (tmp_path / "rows").mkdir()
    for i, image in enumerate(_control_images()):
        image.save(tmp_path / "rows" / f"{i}.png")
    common = ["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
              "--nrow", "1", "--steps", "2", "--seed", "5", "--batch-size", "2", "--no-progress",
              "--max-sequence-length", "12"]
    for name, image in (("one", tmp_path / "rows" / "0.png"), ("rows", tmp_path / "rows")):
        out = tmp_path / f"{name}.png"
        assert main(common + ["--control-image", str(image), "--out", str(out)]) == 0, name
        given = image if name == "one" else sorted(str(p) for p in image.iterdir())
        images = text_to_image(flux, PROMPTS, control_image=given, control_seed=5, seed=5, steps=2,
                               output_range="-1,1", **KW)
        save_grid(images, tmp_path / "expected.png", 1)
        assert out.read_bytes() == (tmp_path / "expected.png").read_bytes(), name
    capsys.readouterr()
    one, bad = str(tmp_path / "rows" / "0.png"), tmp_path / "bad"
    for extra, match in (
            ([], "FluxControlPipeline: .* use diffkit sample --control-image PNG"),
            (["--control-image", one, "--control-image", one], "2 --control-image for a FLUX.1 Depth / Canny folder"),
            (["--control-image", one, "--true-cfg-scale", "2", "--negative-prompt", "u"],
             "--negative-prompt \\(true CFG\\) does not apply to a FLUX.1 Depth / Canny folder")):
        assert main(common + extra + ["--out", str(bad / "o.png")]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), (extra, err)
        assert not bad.exists()
    assert main(["edit", "--checkpoint", str(folder), "--images", one, "--prompt", "a", "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "it samples from text with a control image" in err[0] and not bad.exists(), err
    with pytest.raises(DiffkitError, match="it samples from text with a control image"):
        text_to_image(flux, PROMPTS, steps=2)
