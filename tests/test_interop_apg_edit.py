"""Adaptive projected guidance (Sadat et al. 2025, arXiv:2410.02416, Alg. 1) in img2img and inpainting of diffusers
folders (SD 1.x, SD-XL, SD3; ``diffkit edit --apg-*``): every guided call of an edit against diffusers 0.42.1's
``AdaptiveProjectedGuidance`` guider on the same x_0 predictions (tests/test_interop_apg.py's helpers), options off
bit for bit the plain edit, the command's PNGs the library's byte for byte, bad values one line."""
import math

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.guidance import apg_options  # noqa: E402
from diffkit.interop.sd3 import image_to_image  # noqa: E402
from diffkit.latent_editing import latent_img2img, latent_inpaint  # noqa: E402

from test_interop_apg import (APG, PROMPTS, assert_calls_are_diffusers_apg_guider, lcm_json_folder,  # noqa: E402
                              recorded_guided_calls)
import test_interop_apg  # noqa: E402

import test_sd_inpaint  # noqa: E402

folders, _built = test_interop_apg.folders, test_interop_apg._built  # the fixtures (tiny folders), shared
inpaint_sd = test_sd_inpaint.inpaint_sd  # a 9-channel inpainting UNet's folder

SIZE = (16, 16)  # the tiny folders' 8 x 8 latents
STEPS, STRENGTH = 4, 0.75  # int(4 * 0.75) = 3 guided calls (SD3's own loop: its cut grid)


def _images(n=2, seed=3):
    return torch.rand(n, 3, *SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _mask():
    mask = torch.zeros(1, 1, *SIZE)
    mask[..., 4:12, 2:10] = 1
    return mask


def _guided(model, kind, scale, convention, prompts, apg):
    """(guided denoiser, cond) as diffkit edit builds them for an SD 1.x / SD-XL folder (one null row for SD 1.x;
    SD-XL's prompt_guidance), with ``apg`` from :func:`diffkit.guidance.apg_options`."""
    if kind == "xl":
        return model.prompt_guidance(prompts, None, scale, convention, 0.0, image_size=SIZE, apg=apg)
    return model.guided(scale, model.encode_prompts([""]), convention, **apg), model.cond(model.encode_prompts(prompts))


def _edit(kind, folders, mask, seed=3, **apg):
    """A library edit of the two images towards PROMPTS (s = 6, diffusers' convention: w = 5), as latents."""
    _, model, _ = folders[kind]
    images = _images()
    with torch.no_grad():
        if kind == "sd3":
            return image_to_image(model, images, PROMPTS, STRENGTH, mask=_mask() if mask else None, steps=STEPS,
                                  guidance_scale=6.0, seed=seed, return_latents=True, **apg)
        guided, cond = _guided(model, kind, 6.0, "diffusers", PROMPTS, apg_options(
            **{key[len("apg_"):]: value for key, value in apg.items()}))
        run = dict(posterior="sample", seed=seed, cond=cond, progress=False, return_latents=True)
        if mask:
            return latent_inpaint(guided, model, images, _mask(), "ddim", STEPS, strength=STRENGTH, **run)
        return latent_img2img(guided, model, images, STRENGTH, "ddim", STEPS, **run)


@pytest.mark.parametrize("kind", ["sd", "xl", "sd3"])
@pytest.mark.parametrize("mask", [False, True])
def test_each_guided_call_of_an_edit_is_diffusers_apg_guider(kind, mask, folders, monkeypatch):
    """img2img and inpainting (strength 0.75 of 4 steps): each guided x_0 is diffusers' AdaptiveProjectedGuidance
    (use_original_formulation=True, s = w = 5, eta 0.25, r 0.5 reached, momentum -0.5 carried over the calls) on
    the same (x0_c, x0_u), the eps that x_0's."""
    calls = recorded_guided_calls(monkeypatch, lambda: _edit(kind, folders, mask, **APG))
    assert len(calls) >= 2, len(calls)
    assert assert_calls_are_diffusers_apg_guider(calls, 5.0, 0.25, 0.5, -0.5, (kind, mask)) > 0


def test_a_9_channel_inpainting_unet_is_diffusers_apg_guider(inpaint_sd, monkeypatch):
    """The same with an SD inpainting UNet (mask and masked-image latents in every call's cond)."""
    _, sd, _ = inpaint_sd
    guided, cond = _guided(sd, "sd", 6.0, "diffusers", PROMPTS, apg_options(0.25, 0.5, -0.5))
    with torch.no_grad():
        calls = recorded_guided_calls(monkeypatch, lambda: latent_inpaint(
            guided, sd, _images(), _mask(), "ddim", STEPS, strength=STRENGTH, posterior="sample", seed=3, cond=cond,
            progress=False, return_latents=True))
    assert len(calls) == 3 and all(call[4]["context"].shape[0] == 2 and len(call[4]) > 1 for call in calls)
    assert assert_calls_are_diffusers_apg_guider(calls, 5.0, 0.25, 0.5, -0.5, "sd9") > 0


@pytest.mark.parametrize("kind", ["sd", "xl", "sd3"])
@pytest.mark.parametrize("mask", [False, True])
def test_apg_off_in_an_edit_is_bit_identical_and_on_changes_it(kind, mask, folders):
    plain = _edit(kind, folders, mask)
    assert torch.equal(_edit(kind, folders, mask, apg_eta=1.0, apg_norm_threshold=math.inf, apg_momentum=0.0), plain)
    assert (_edit(kind, folders, mask, apg_eta=0.0) - plain).abs().max() > 1e-3


def _write_inputs(tmp_path):
    """(the images' folder, the mask's PNG) of :func:`_images` and :func:`_mask`, as 8-bit PNGs."""
    from PIL import Image
    (tmp_path / "in").mkdir()
    for i, image in enumerate(_images()):
        pixels = ((image + 1) / 2 * 255).round().permute(1, 2, 0).numpy().astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "in" / f"{i}.png")
    Image.fromarray(np.uint8(_mask()[0, 0].numpy() * 255)).save(tmp_path / "mask.png")
    return tmp_path / "in", tmp_path / "mask.png"


@pytest.mark.parametrize("kind, mask", [("sd", False), ("xl", True), ("sd3", False), ("sd3", True)])
def test_edit_command_with_apg_is_the_library_byte_for_byte(kind, mask, folders, tmp_path, capsys):
    """``diffkit edit --guidance-scale 5 --apg-eta 0.5 --apg-norm-threshold 2 --apg-momentum -0.5`` (the seed
    convention: w = 5): each PNG is the library's (the folder's guided denoiser with apg_options' settings, SD3's
    image_to_image with apg_*), written by the same writer."""
    from diffkit.cli import main
    from diffkit.commands.edit import read_mask, read_pngs
    from diffkit.images import save_images
    folder, model, _ = folders[kind]
    pngs, mask_png = _write_inputs(tmp_path)
    flags = ["--guidance-scale", "5", "--apg-eta", "0.5", "--apg-norm-threshold", "2", "--apg-momentum", "-0.5"]
    assert main(["edit", "--checkpoint", str(folder), "--images", str(pngs), "--prompt", "a cat", "--steps", "3",
                 "--seed", "4", *flags, *(["--mask", str(mask_png)] if mask else []), "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 0, capsys.readouterr().err
    images, _ = read_pngs(pngs, "RGB")
    pixel_mask = read_mask(mask_png, images) if mask else None
    apg = {"apg_eta": 0.5, "apg_norm_threshold": 2.0, "apg_momentum": -0.5}
    with torch.no_grad():
        if kind == "sd3":
            ours = image_to_image(model, images, ["a cat"] * 2, 0.6, mask=pixel_mask, steps=3, guidance_scale=5.0,
                                  convention="seed", seed=4, output_range="-1,1", **apg)
        else:
            guided, cond = _guided(model, kind, 5.0, "seed", ["a cat"], apg_options(0.5, 2.0, -0.5))
            cond = {key: value[[0, 0]] for key, value in cond.items()}  # the command's one prompt, indexed per image
            run = dict(posterior="sample", seed=4, cond=cond, progress=False)
            ours = (latent_inpaint(guided, model, images, pixel_mask, "ddim", 3, **run) if mask else
                    latent_img2img(guided, model, images, 0.8, "ddim", 3, **run)).clamp(-1, 1)
    save_images(ours, tmp_path / "library", prefix="edit")
    for i in range(2):
        assert (tmp_path / "out" / f"edit_0000{i}.png").read_bytes() == \
            (tmp_path / "library" / f"edit_0000{i}.png").read_bytes(), (kind, mask, i)
    capsys.readouterr()


@pytest.mark.parametrize("kind", ["sd", "sd3"])
def test_apg_mistakes_in_diffkit_edit_are_one_line_errors_before_any_output(kind, folders, tmp_path, capsys):
    from diffkit.cli import main
    pngs, mask_png = _write_inputs(tmp_path)
    out = tmp_path / "new" / "out"
    for extra, message in (
            (["--guidance-scale", "5", "--apg-eta", "2"], "--apg-eta"),
            (["--guidance-scale", "5", "--apg-norm-threshold", "0"], "--apg-norm-threshold"),
            (["--apg-momentum", "-0.5"], "--apg-momentum needs --guidance-scale"),
            *([(["--guidance-scale", "5", "--apg-momentum", "-0.5", "--mask", str(mask_png), "--sampler", "ddpm",
                 "--jump-n-sample", "2"], "--apg-momentum -0.5 does not go with --jump-n-sample 2")]
              if kind == "sd" else [])):
        code = main(["edit", "--checkpoint", str(folders[kind][0]), "--images", str(pngs), "--prompt", "a cat",
                     "--steps", "2", *extra, "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], (extra, err)
        assert not out.parent.exists()
    if kind == "sd":  # an LCM UNet that takes w as its input: from the folder's JSON, before any weight is read
        code = main(["edit", "--checkpoint", str(lcm_json_folder(folders[kind][0], tmp_path / "lcm")), "--images",
                     str(pngs), "--prompt", "a cat", "--guidance-scale", "3", "--apg-eta", "0", "--out", str(out),
                     "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "--apg-eta is an option of classifier-free guidance; this LCM" in err[0]
        assert not out.parent.exists()


@pytest.mark.parametrize("kind", ["sd3"])
@pytest.mark.parametrize("kwargs, pattern", [
    ({"apg_eta": 1.5}, r"apg_eta=1\.5"), ({"apg_norm_threshold": 0.0}, "apg_norm_threshold=0"),
    ({"apg_momentum": 1.0}, "apg_momentum=1")])
def test_bad_apg_values_of_image_to_image_are_one_line_errors(kind, kwargs, pattern, folders):
    with pytest.raises(DiffkitError, match=pattern) as err:
        image_to_image(folders[kind][1], _images(), PROMPTS, steps=1, **kwargs)
    assert "\n" not in str(err.value)
