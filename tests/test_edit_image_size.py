"""``diffkit edit --height H --width W`` on diffusers folders: the images (and ``--mask``) resized first as diffusers'
edit pipelines prepare them given height and width (``image_processor`` / ``mask_processor.preprocess(image,
height=H, width=W)``: Lanczos, the mask binarised), checked against StableDiffusionInpaintPipeline,
StableDiffusionXLInpaintPipeline, StableDiffusion3Img2ImgPipeline and FluxImg2ImgPipeline called with height / width,
and against the SD / SD-XL img2img pipelines (which take no height / width) given the image their own processor
resized; the refusals, one line before anything loads."""
import numpy as np
import pytest
import torch
from PIL import Image
import test_interop_flux
import test_interop_sd3
import test_interop_sd_xl
import test_latent_editing
import test_sd_xl_inpaint
from test_cli_errors import one_line_error
from diffkit.commands._image_size import EDIT_SIZED
from test_latent_editing import PROMPTS, _generators, cli, write_pngs

diffusers = pytest.importorskip("diffusers")
tiny_sd = test_latent_editing.tiny_sd  # the fixtures, shared
tiny_xl = test_interop_sd_xl.tiny_xl
xl_inpaint = test_sd_xl_inpaint.xl_inpaint
tiny_sd3 = test_interop_sd3.tiny_sd3
tiny_flux = test_interop_flux.tiny_flux

H, W = 24, 16  # the 16 x 16 PNGs stretched, H != W (SD-XL's time ids take it)


def _inputs(tmp_path):
    """Two 16 x 16 RGB PNGs and a 16 x 16 grey mask (soft edge: binarised after the resize)."""
    pngs = write_pngs(tmp_path / "in", 2, 16, "RGB")
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[3:13, 5:] = 255
    mask[3:13, 4] = 140
    Image.fromarray(mask, "L").save(tmp_path / "mask.png")
    return pngs, tmp_path / "mask.png"


def _edited(capsys, tmp_path, folder, pngs, *flags):
    """The command's PNGs (--spacing leading --final zero: the pipelines' DDIM with steps_offset 0 and
    set_alpha_to_one), image i from seed 10 + i alone in its batch, as uint8 (2, H, W, 3)."""
    code, out, err = cli(capsys, "--checkpoint", folder, "--images", pngs, "--prompt", PROMPTS[0], "--prompt",
                         PROMPTS[1], "--steps", 4, "--spacing", "leading", "--final", "zero", "--guidance-scale", 5,
                         "--guidance-convention", "diffusers", "--seed", 10, "--batch-size", 1, "--height", H,
                         "--width", W, *flags, "--out", tmp_path / "out")
    assert code == 0, err
    return np.stack([np.asarray(Image.open(tmp_path / "out" / f"edit_{i:05d}.png")) for i in range(2)])


def _pipeline(pipe, **kw):
    """``pipe`` on the same settings (its DDIM as the command's grid), output_type "np"."""
    scheduler = pipe.scheduler
    pipe.scheduler = diffusers.DDIMScheduler.from_config(scheduler.config, steps_offset=0, set_alpha_to_one=True)
    try:
        with torch.no_grad():
            return pipe(PROMPTS, num_inference_steps=4, guidance_scale=5.0, eta=0.0, output_type="np",
                        generator=_generators(), **kw).images
    finally:
        pipe.scheduler = scheduler


def _resized(pipe, pngs):
    """The PNGs as the img2img pipelines' own processor resizes them to H x W, in [0, 1]."""
    return torch.cat([(pipe.image_processor.preprocess(Image.open(pngs / f"in_{i}.png"), height=H, width=W) + 1) / 2
                      for i in range(2)])


def _check(ours, theirs):
    assert ours.shape == (2, H, W, 3)
    assert np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1  # the PNGs' rounding (0 or 1)


@pytest.mark.parametrize("mask", [False, True])
def test_sd_edit_at_another_size_is_the_pipelines(tiny_sd, tmp_path, capsys, mask):
    """Stable Diffusion img2img (strength 0.5) and 4-channel inpainting (strength 0.6, the mask 16 x 16: resized too,
    as diffusers resizes mask_image to height x width) at 24 x 16 from 16 x 16 PNGs."""
    img2img, inpaint, _, folder = tiny_sd
    pngs, mask_png = _inputs(tmp_path)
    if mask:
        ours = _edited(capsys, tmp_path, folder, pngs, "--mask", mask_png, "--strength", 0.6)
        images = [Image.open(pngs / f"in_{i}.png") for i in range(2)]
        theirs = _pipeline(inpaint, image=images, mask_image=[Image.open(mask_png)] * 2, strength=0.6, height=H,
                           width=W)
    else:
        ours = _edited(capsys, tmp_path, folder, pngs, "--strength", 0.5)
        theirs = _pipeline(img2img, image=_resized(img2img, pngs), strength=0.5)
    _check(ours, theirs)


def test_sd_xl_img2img_at_another_size_is_the_pipelines(tiny_xl, tmp_path, capsys):
    """SD-XL img2img: the time ids (original and target size) are the resized images' 24 x 16, as
    StableDiffusionXLImg2ImgPipeline takes them from the resized image's latents."""
    pipe, root, _ = tiny_xl
    img2img = diffusers.StableDiffusionXLImg2ImgPipeline(**pipe.components, requires_aesthetics_score=False)
    img2img.set_progress_bar_config(disable=True)
    pngs, _ = _inputs(tmp_path)
    _check(_edited(capsys, tmp_path, root / "xl", pngs, "--strength", 0.6),
           _pipeline(img2img, image=_resized(img2img, pngs), strength=0.6))


def test_sd_xl_inpainting_at_another_size_is_the_pipelines(xl_inpaint, tmp_path, capsys):
    """A 9-channel SD-XL inpainting folder: StableDiffusionXLInpaintPipeline(height=24, width=16) on the PIL
    images and mask (strength 0.6)."""
    pipe, folder, _ = xl_inpaint
    pngs, mask_png = _inputs(tmp_path)
    images = [Image.open(pngs / f"in_{i}.png") for i in range(2)]
    _check(_edited(capsys, tmp_path, folder, pngs, "--mask", mask_png, "--strength", 0.6),
           _pipeline(pipe, image=images, mask_image=[Image.open(mask_png)] * 2, strength=0.6, height=H, width=W))


@pytest.mark.parametrize("flux", [False, True])
def test_sd3_and_flux_img2img_at_another_size_are_the_pipelines(tiny_sd3, tiny_flux, tmp_path, capsys, flux):
    """StableDiffusion3Img2ImgPipeline / FluxImg2ImgPipeline(height=24, width=16) on the PIL images (strength 0.6,
    their own sigmas; FLUX's shift mu from the 24 x 16 images' tokens): the command's PNGs within one level."""
    pipe, folder, _ = tiny_flux[True] if flux else tiny_sd3[True]
    pngs, _ = _inputs(tmp_path)
    code, out, err = cli(capsys, "--checkpoint", folder, "--images", pngs, "--prompt", PROMPTS[0], "--prompt",
                         PROMPTS[1], "--steps", 4, "--guidance-scale", 4, "--seed", 5, "--max-sequence-length", 12,
                         "--height", H, "--width", W, *([] if flux else ["--guidance-convention", "diffusers"]),
                         "--out", tmp_path / "out")
    assert code == 0, err
    ours = np.stack([np.asarray(Image.open(tmp_path / "out" / f"edit_{i:05d}.png")) for i in range(2)])
    img2img = (diffusers.FluxImg2ImgPipeline if flux else diffusers.StableDiffusion3Img2ImgPipeline)(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = img2img(PROMPTS, image=[Image.open(pngs / f"in_{i}.png") for i in range(2)], strength=0.6, height=H,
                         width=W, num_inference_steps=4, guidance_scale=4.0, max_sequence_length=12,
                         output_type="np", generator=[torch.Generator().manual_seed(5 + i) for i in range(2)]).images
    _check(ours, theirs)


def test_edit_size_refusals_are_one_line_before_any_output(tiny_sd, tiny_checkpoint, tmp_path, capsys):
    _, _, _, folder = tiny_sd
    pngs = write_pngs(tmp_path / "in", 1, 16, "RGB")
    odd = write_pngs(tmp_path / "odd", 1, 12, "RGB")
    base = ["edit", "--no-progress", "--prompt", "a", "--out", tmp_path / "never"]
    for extra, expected in [
        (["--checkpoint", tiny_checkpoint, "--images", pngs, "--height", 16],
         f"--height applies to diffusers folders ({EDIT_SIZED});"),
        (["--checkpoint", folder, "--images", pngs, "--width", 20],
         "--width 20 is not allowed; give a positive multiple of 8 (the pipeline's 8 and the VAE factor 2)"),
        (["--checkpoint", folder, "--images", odd, "--height", 16],
         "the images are 12x12: their width 12 is no multiple of 8 (the pipeline's 8 and the VAE factor 2); give "
         "--width too"),
        (["--checkpoint", folder, "--images", pngs, "--height", 16, "--mask", tmp_path / "no.png"],
         f"--mask '{tmp_path / 'no.png'}' does not exist"),
    ]:
        line = one_line_error(capsys, *map(str, base + extra))
        assert expected in line, line
        assert not (tmp_path / "never").exists()
