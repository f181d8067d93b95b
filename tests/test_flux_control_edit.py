"""FLUX.1 Depth / Canny folders in edits (diffkit.interop.flux_channels): image_to_image(control_image=) and
`diffkit edit --control-image` against diffusers' FluxControlImg2ImgPipeline / FluxControlInpaintPipeline on
test_flux_control's tiny random folder (a 128-channel transformer)."""
import re

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.interop.flux import image_to_image, unpack_latents  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
from test_flux_control import _control_images  # noqa: E402
import test_flux_fill  # noqa: E402

PROMPTS, KW = test_flux_fill.PROMPTS, test_flux_fill.KW


@pytest.fixture(scope="module")
def tiny_control(tmp_path_factory):
    """(FluxControlPipeline.from_pretrained, folder, load_flux of it): test_flux_control's folder."""
    return test_flux_fill.tiny_variant_folder(tmp_path_factory.mktemp("flux_control_edit"),
                                              diffusers.FluxControlPipeline, 128)


def _pipe(tiny_control, mask):
    pipe = (diffusers.FluxControlInpaintPipeline if mask else diffusers.FluxControlImg2ImgPipeline)(
        **tiny_control[0].components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("mask, per_image", [(False, False), (True, True)])
def test_flux_control_edits_match_the_pipelines(tiny_control, mask, per_image):
    """Same z_0 as FluxControlImg2ImgPipeline / FluxControlInpaintPipeline (strength 0.6, the embedded guidance 7.0,
    their sigmas cut by get_timesteps): image i's generator seed + i draws (inpainting: the masked image's unused
    posterior first) the control image's posterior, the image's posterior, the noise; the control latents concatenated
    after the packed latents at every step; one control image for both images, or one per image."""
    _, _, flux = tiny_control
    images = test_flux_fill._images()
    controls = _control_images() if per_image else _control_images(1)[0]
    how = {"mask_image": test_flux_fill._mask()} if mask else {}
    with torch.no_grad():
        theirs = _pipe(tiny_control, mask)(
            PROMPTS, image=images, control_image=controls, num_inference_steps=4, height=16, width=16,
            output_type="latent", generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], **how,
            **KW).images
    theirs = unpack_latents(theirs, 8, 8)
    ours = image_to_image(flux, images * 2 - 1, PROMPTS, control_image=controls, mask=how.get("mask_image"), steps=4,
                          seed=5, return_latents=True, **KW)
    error = relative_error(ours, theirs)
    print("flux control edit", mask, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)


def test_edit_command_controls_and_refuses_in_one_line(tiny_control, tmp_path, capsys):
    """`diffkit edit --control-image` on a Depth / Canny folder writes image_to_image(control_image=)'s images byte for
    byte (a folder of one control PNG per --images file: image i's), with --mask within one PNG level of
    FluxControlInpaintPipeline's; no --control-image, two, a folder of another count, a plain FLUX folder's
    control image: one line each, before any output."""
    from PIL import Image
    from diffkit.cli import main
    from diffkit.commands.edit import read_pngs
    from diffkit.errors import DiffkitError
    from diffkit.images import save_images
    _, folder, flux = tiny_control
    test_flux_fill._write_inputs(tmp_path)
    (tmp_path / "controls").mkdir()
    (tmp_path / "three").mkdir()
    for i, image in enumerate(_control_images(3)):
        for sub in ("controls", "three")[i // 2:]:
            image.save(tmp_path / sub / f"{i}.png")
    images, _ = read_pngs(tmp_path / "in", "RGB")
    mask = str(tmp_path / "mask.png")
    common = ["edit", "--checkpoint", str(folder), "--images", str(tmp_path / "in"), "--prompt", PROMPTS[0],
              "--prompt", PROMPTS[1], "--no-progress", "--seed", "5", "--steps", "3", "--max-sequence-length", "12"]
    controls = sorted(str(p) for p in (tmp_path / "controls").iterdir())
    for name, extra, lib in (("img2img", [], {}), ("inpaint", ["--mask", mask], {"mask": test_flux_fill._mask()})):
        out = tmp_path / name
        assert main(common + ["--control-image", str(tmp_path / "controls"), "--out", str(out)] + extra) == 0
        assert "strength 0.6" in capsys.readouterr().out
        ours = image_to_image(flux, images, PROMPTS, control_image=controls, control_rows=[0, 1], steps=3, seed=5,
                              output_range="-1,1", **lib, **KW)
        save_images(ours, tmp_path / f"expected_{name}", prefix="edit")
        for i in range(2):
            file = f"edit_0000{i}.png"
            assert (out / file).read_bytes() == (tmp_path / f"expected_{name}" / file).read_bytes(), (name, i)
    written = np.stack([np.asarray(Image.open(tmp_path / "inpaint" / f"edit_0000{i}.png"), np.float64)
                        for i in range(2)])
    with torch.no_grad():
        theirs = _pipe(tiny_control, True)(
            PROMPTS, image=(images + 1) / 2, control_image=[Image.open(c) for c in controls],
            mask_image=test_flux_fill._mask(), num_inference_steps=3, height=16, width=16, output_type="np",
            generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], **KW).images
    with capsys.disabled():
        print("flux control inpaint PNG levels", np.abs(written - (theirs * 255).round()).max())
    assert np.abs(written - (theirs * 255).round()).max() <= 1
    bad = tmp_path / "bad"
    one = controls[0]
    for extra, match in (
            ([], "FluxControlPipeline: .* \\(or edits with one: diffkit edit --images PNG --control-image PNG"),
            (["--control-image", one, "--control-image", one], "2 --control-image for a FLUX.1 Depth / Canny folder"),
            (["--control-image", str(tmp_path / "three")], "holds 3 PNG\\(s\\) for 2 --images file\\(s\\)"),
            (["--control-image", one, "--true-cfg-scale", "2", "--negative-prompt", "u"],
             "--negative-prompt \\(true CFG\\) does not apply to a FLUX.1 Depth / Canny folder")):
        assert main(common + extra + ["--out", str(bad)]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), (extra, err)
        assert not bad.exists()
    with pytest.raises(DiffkitError, match="it samples from text with a control image"):
        image_to_image(flux, images, PROMPTS, steps=2)
