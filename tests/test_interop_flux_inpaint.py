"""FLUX.1 folders in inpainting and with true CFG in `diffkit edit` (diffkit.interop.flux.image_to_image(mask=)):
against diffusers' FluxInpaintPipeline / FluxImg2ImgPipeline on the tiny folder of test_interop_flux (its fixture,
imported)."""
import re

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.interop.flux import image_to_image  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
import test_interop_flux  # noqa: E402

PROMPTS = test_interop_flux.PROMPTS
tiny_flux = test_interop_flux.tiny_flux  # the folder fixture, shared (pytest finds it in this module's namespace)


def _images():
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))  # [0, 1]


def _mask():
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 2:10] = 1
    return mask


def write_edit_inputs(tmp_path):
    """:func:`_images` as PNGs in tmp_path/in and :func:`_mask` as tmp_path/mask.png; the images as ``diffkit edit``
    reads them back (read_pngs, [-1, 1])."""
    from PIL import Image
    from diffkit.commands.edit import read_pngs
    (tmp_path / "in").mkdir()
    for i, image in enumerate(_images()):
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            tmp_path / "in" / f"{i}.png")
    Image.fromarray(np.uint8(_mask()[0, 0].numpy() * 255)).save(tmp_path / "mask.png")
    return read_pngs(tmp_path / "in", "RGB")[0]


def _pipeline(pipe, cls):
    out = cls(**pipe.components)
    out.set_progress_bar_config(disable=True)
    return out


@pytest.mark.parametrize("steps, strength, per_image", [(4, 0.6, True), (3, 1.0, False)])
def test_flux_inpainting_matches_the_pipeline(tiny_flux, steps, strength, per_image):
    """Same z_0 as FluxInpaintPipeline (its 64-channel text-to-image transformer): the posterior sample and the noise
    from image i's generator seed + i, scale_noise at the first sigma of get_timesteps' cut, flow Euler with the
    embedded guidance (default 7.0) and true CFG, the kept latents blended in at scale_noise(z, next sigma) after
    every step (z after the last); one mask per image, or one for both."""
    pipe, _, flux = tiny_flux[True]
    images = _images()
    mask = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(4)) > 0.5).float() if per_image \
        else _mask()
    kw = {"max_sequence_length": 12, "true_cfg_scale": 2.0, "negative_prompt": "ugly"}
    with torch.no_grad():
        theirs = _pipeline(pipe, diffusers.FluxInpaintPipeline)(
            PROMPTS, image=images, mask_image=mask, strength=strength, num_inference_steps=steps, height=16,
            width=16, output_type="latent", generator=[torch.Generator().manual_seed(5 + i) for i in range(2)],
            **kw).images
    theirs = test_interop_flux.unpack_latents(theirs, 8, 8)
    ours = image_to_image(flux, images * 2 - 1, PROMPTS, strength, mask=mask, steps=steps, seed=5,
                          return_latents=True, **kw)
    error = relative_error(ours, theirs)
    print("flux inpaint", steps, strength, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)


def test_edit_command_inpaints_a_flux_folder_with_true_cfg(tiny_flux, tmp_path, capsys):
    """`diffkit edit --mask` on a FLUX folder writes image_to_image(mask=)'s images byte for byte, within one PNG level
    of FluxInpaintPipeline's, with --true-cfg-scale / --negative-prompt (-2); img2img with true CFG likewise against
    FluxImg2ImgPipeline; true CFG's flags without each other (or on an SD3 folder) are one line."""
    from PIL import Image
    from diffkit.cli import main
    from diffkit.images import save_images
    pipe, folder, flux = tiny_flux[True]
    images = write_edit_inputs(tmp_path)
    common = ["edit", "--checkpoint", str(folder), "--images", str(tmp_path / "in"), "--prompt", PROMPTS[0],
              "--prompt", PROMPTS[1], "--no-progress", "--seed", "5", "--steps", "3", "--max-sequence-length", "12",
              "--true-cfg-scale", "2", "--negative-prompt", "ugly"]
    kw = {"max_sequence_length": 12, "true_cfg_scale": 2.0, "negative_prompt": "ugly"}
    gens = [torch.Generator().manual_seed(5 + i) for i in range(2)]
    for name, extra, how, cls in (
            ("masked", ["--mask", str(tmp_path / "mask.png"), "--strength", "0.9", "--negative-prompt-2", "blurry"],
             {"mask": _mask(), "strength": 0.9, "negative_prompt_2": "blurry"}, diffusers.FluxInpaintPipeline),
            ("edited", [], {"strength": 0.6}, diffusers.FluxImg2ImgPipeline)):
        assert main(common + extra + ["--out", str(tmp_path / name)]) == 0, name
        ours = image_to_image(flux, images, PROMPTS, steps=3, seed=5, output_range="-1,1", **kw, **how)
        save_images(ours, tmp_path / f"expected_{name}", prefix="edit")
        for i in range(2):
            assert (tmp_path / name / f"edit_0000{i}.png").read_bytes() == \
                (tmp_path / f"expected_{name}" / f"edit_0000{i}.png").read_bytes()
        theirs_kw = {**kw, **how}
        if "mask" in theirs_kw:
            theirs_kw["mask_image"] = theirs_kw.pop("mask")
        with torch.no_grad():
            theirs = _pipeline(pipe, cls)(PROMPTS, image=(images + 1) / 2, num_inference_steps=3, height=16, width=16,
                                          output_type="np", generator=[g.manual_seed(5 + i) for i, g in
                                                                       enumerate(gens)], **theirs_kw).images
        written = np.stack([np.asarray(Image.open(tmp_path / name / f"edit_0000{i}.png"), np.float64)
                            for i in range(2)])
        assert np.abs(written - (theirs * 255).round()).max() <= 1, name
    capsys.readouterr()
    base = common[:-4] + ["--out", str(tmp_path / "bad")]
    for extra, match in ((["--true-cfg-scale", "3"], "--true-cfg-scale 3 is not allowed on a FLUX folder"),
                         (["--negative-prompt", "u"], "--negative-prompt 'u' is not allowed on a FLUX folder"),
                         (["--prompt-3", "a"], "--prompt-3 does not apply to a FLUX folder")):
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), (extra, err)
        assert not (tmp_path / "bad").exists()
