"""``diffkit edit --mask M --padding-mask-crop N --controlnet DIR --control-image PNG`` on SD / SD-XL folders
(:mod:`diffkit.interop.mask_crop`, :func:`diffkit.interop.controlnet.prepare_control_image`): the control image is
cropped to the mask's box and resized with ``resize_mode="fill"`` as the image, and the written PNG equals the
output_type="pil" image of StableDiffusionControlNetInpaintPipeline / StableDiffusionXLControlNetInpaintPipeline called
with padding_mask_crop=N (within one 8-bit level). The tiny folders are the ControlNet tests' fixtures."""
import numpy as np
import pytest
from PIL import Image
import test_controlnet
import test_controlnet_sd_xl
from test_cli_errors import one_line_error
from test_controlnet import control_png
from test_latent_editing import PROMPTS, cli
from test_padding_mask_crop import H, PAD, W, _inputs, _sd_family

diffusers = pytest.importorskip("diffusers")
tiny_controlnet_sd = test_controlnet.tiny_controlnet_sd  # the fixtures, shared
tiny_xl_controlnet = test_controlnet_sd_xl.tiny_xl_controlnet


def _pipeline(kind, request):
    """(folder, ControlNet folder, the ControlNet inpainting pipeline on the fixture's components)."""
    if kind == "sd":
        pipe, nets, _, root, _ = request.getfixturevalue("tiny_controlnet_sd")
        cls, extra, folder = diffusers.StableDiffusionControlNetInpaintPipeline, {}, root / "sd"
    else:
        pipe, nets, _, root, _ = request.getfixturevalue("tiny_xl_controlnet")
        cls, folder = diffusers.StableDiffusionXLControlNetInpaintPipeline, root / "xl"
        extra = {"requires_aesthetics_score": False, "add_watermarker": False}
    other = cls(**{**pipe.components, "controlnet": nets[0]}, **extra)
    other.set_progress_bar_config(disable=True)
    return folder, root / "cn0", other


@pytest.mark.parametrize("kind", ["sd", pytest.param("xl", marks=pytest.mark.slow)])  # -m slow: SD-XL, about 2 s
def test_padding_mask_crop_with_a_controlnet_is_the_pipelines(kind, request, tmp_path, capsys):
    """A 30 x 20 image, mask and control image (a random one of the image's size, so that the crop matters):
    the PNG is the pipeline's padding_mask_crop=2 image at 16 x 24 within one level (measured 0), and outside the box
    the original; the control image uncropped (resized whole) gives another image."""
    folder, controlnet, pipe = _pipeline(kind, request)
    image_png, mask_png = _inputs(tmp_path)
    control = control_png(tmp_path / "control.png", 20, 30, seed=7)
    flags = ["--spacing", "leading", "--final", "zero", "--guidance-scale", 5, "--guidance-convention", "diffusers",
             "--strength", 0.6, "--controlnet", controlnet, "--control-image", control, "--controlnet-scale", 0.8]
    code, out, err = cli(capsys, "--checkpoint", folder, "--images", image_png, "--mask", mask_png, "--prompt",
                         PROMPTS[0], "--steps", 4, "--seed", 10, "--height", H, "--width", W, "--padding-mask-crop",
                         PAD, *flags, "--out", tmp_path / "out")
    assert code == 0, err
    ours = np.asarray(Image.open(tmp_path / "out" / "edit_00000.png")).astype(int)
    kw = dict(guidance_scale=5.0, eta=0.0, strength=0.6, controlnet_conditioning_scale=0.8)
    theirs = np.asarray(_sd_family(pipe, Image.open(image_png), Image.open(mask_png),
                                   control_image=Image.open(control), **kw)).astype(int)
    # the control image resized whole (not cropped): what a crop of the image alone would give
    whole = Image.open(control).resize((W, H), Image.LANCZOS)
    uncropped = np.asarray(_sd_family(pipe, Image.open(image_png), Image.open(mask_png), control_image=whole,
                                      **kw)).astype(int)
    print(kind, "largest 8-bit difference", np.abs(ours - theirs).max(), "control uncropped",
          np.abs(ours - uncropped).max())
    assert ours.shape == theirs.shape == (20, 30, 3)
    assert np.abs(ours - theirs).max() <= 1 and np.abs(ours - uncropped).max() > 4
    outside = np.ones((20, 30), dtype=bool)
    outside[4:13, 8:21] = False  # the box (test_padding_mask_crop)
    assert (ours[outside] == np.asarray(Image.open(image_png)).astype(int)[outside]).all()


def test_padding_mask_crop_with_an_sd3_or_flux_controlnet_is_refused(tmp_path, capsys):
    """SD3 / FLUX.1 ControlNet inpainting (no padding_mask_crop / an uncropped control image in diffusers 0.42.1):
    one line before anything loads (a model_index.json suffices)."""
    import json
    image_png, mask_png = _inputs(tmp_path)
    for name in ("StableDiffusion3Pipeline", "FluxPipeline"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_index.json").write_text(json.dumps({"_class_name": name,
                                                                      "transformer": ["diffusers", "x"]}))
        line = one_line_error(capsys, "edit", "--no-progress", "--checkpoint", str(tmp_path / name), "--images",
                              str(image_png), "--mask", str(mask_png), "--prompt", "a", "--padding-mask-crop", "1",
                              "--controlnet", str(tmp_path), "--control-image", str(image_png), "--out",
                              str(tmp_path / "never"))
        assert "--padding-mask-crop 1 does not go with --controlnet on an SD3 / FLUX.1 folder" in line, line
    assert not (tmp_path / "never").exists()
