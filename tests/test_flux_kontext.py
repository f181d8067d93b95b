"""FLUX.1 Kontext folders (diffkit.interop.flux_kontext, ``diffkit edit``): against diffusers' own
FluxKontextPipeline on a tiny random folder (test_interop_flux's FLUX.1-dev components saved as a
FluxKontextPipeline; nothing downloaded): the reference image's tokens, the max_area and auto-resize sizes, the
embedded guidance and true CFG; the command line and its one-line refusals."""
import re

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.flux import load_flux, pack_latents, unpack_latents  # noqa: E402
from diffkit.interop.flux_kontext import (PREFERRED_KONTEXT_RESOLUTIONS, is_kontext_folder,  # noqa: E402
                                          kontext_edit, kontext_image_size, kontext_inpaint, kontext_output_size)

from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_flux import tiny_flux_pipeline  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]


_BUILT = {}  # the folder built once per session, also for the modules that import this fixture


@pytest.fixture(scope="module")
def kontext(tmp_path_factory):
    """(FluxKontextPipeline.from_pretrained of the folder, the folder, load_flux of it)."""
    if "kontext" not in _BUILT:
        root = tmp_path_factory.mktemp("kontext")
        diffusers.FluxKontextPipeline(**tiny_flux_pipeline(root, True).components).save_pretrained(root / "kontext")
        pipe = diffusers.FluxKontextPipeline.from_pretrained(root / "kontext", local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        _BUILT["kontext"] = pipe, root / "kontext", load_flux(root / "kontext", progress=False)
    return _BUILT["kontext"]


def _image(h=13, w=22, seed=3):
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kw", [{}, {"guidance_scale": 5.0},
                                {"true_cfg_scale": 3.0, "negative_prompt": "ugly", "negative_prompt_2": "blurry"}])
def test_kontext_matches_the_pipeline(kontext, kw):
    """Same z_0 as FluxKontextPipeline from the same latents: the image (13 x 22, floored to 12 x 20 by nearest
    resizing, as the pipeline resizes a tensor) in context, the edit 20 x 28 (16 x 24's aspect at max_area 600),
    its mu from the 35 noisy tokens only, the embedded guidance (3.5 or 5) and true CFG."""
    pipe, _, flux = kontext
    latents = torch.randn(2, 16, 10, 14, generator=torch.Generator().manual_seed(5))
    image = _image()
    with torch.no_grad():
        theirs = pipe(image=image, prompt=PROMPTS, height=16, width=24, max_area=600, _auto_resize=False,
                      num_inference_steps=3, latents=pack_latents(latents), output_type="latent",
                      max_sequence_length=12, **kw).images
    theirs = unpack_latents(theirs, 10, 14)
    ours = kontext_edit(flux, image * 2 - 1, PROMPTS, height=16, width=24, max_area=600, auto_resize=False, steps=3,
                        latents=latents, max_sequence_length=12, return_latents=True, **kw)
    error = relative_error(ours, theirs)
    print("kontext", kw, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)


def test_kontext_seed_and_images_match_the_pipeline(kontext):
    """From a seed (the pipeline's generator draws the noise after encoding the image to its mode) to decoded
    images; one prompt per image."""
    pipe, _, flux = kontext
    image = _image(12, 16, seed=4)
    with torch.no_grad():
        theirs = pipe(image=image, prompt=PROMPTS[1], height=12, width=16, max_area=192, _auto_resize=False,
                      num_inference_steps=2, output_type="pt", max_sequence_length=12,
                      generator=torch.Generator().manual_seed(9)).images
    ours = kontext_edit(flux, image * 2 - 1, PROMPTS[1], height=12, width=16, max_area=192, auto_resize=False,
                        steps=2, seed=9, max_sequence_length=12)
    print("kontext images", float((ours - theirs).abs().max()))
    assert ours.shape == theirs.shape == (1, 3, 12, 16)
    assert float((ours - theirs).abs().max()) < 1e-5


@pytest.mark.parametrize("strength, steps, kw", [
    (0.6, 4, {"guidance_scale": 5.0, "true_cfg_scale": 2.0, "negative_prompt": "ugly"}),
    (1.0, 3, {"image_reference": True})])
def test_kontext_inpainting_matches_the_pipeline(kontext, strength, steps, kw):
    """kontext_inpaint against FluxKontextInpaintPipeline (one generator per image, a random mask per image): the
    image's posterior mode in context (or a separate 16 x 16 reference's), FLUX's replacement inpainting from
    strength 0.6 of 4 steps (the embedded guidance 5, true CFG) or from noise; the default guidance 3.5."""
    pipe, _, flux = kontext
    inpaint = diffusers.FluxKontextInpaintPipeline(**pipe.components)
    inpaint.set_progress_bar_config(disable=True)
    images = torch.rand(2, 3, 12, 20, generator=torch.Generator().manual_seed(3))
    mask = (torch.rand(2, 1, 12, 20, generator=torch.Generator().manual_seed(5)) > 0.5).float()
    reference = _image(16, 16, seed=4) if kw.pop("image_reference", None) else None
    with torch.no_grad():
        theirs = inpaint(image=images, mask_image=mask, image_reference=reference, prompt=PROMPTS, strength=strength,
                         _auto_resize=False, num_inference_steps=steps, output_type="latent", max_sequence_length=12,
                         generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], **kw).images
    theirs = unpack_latents(theirs, 6, 10)
    ours = kontext_inpaint(flux, images * 2 - 1, mask, PROMPTS, strength, auto_resize=False, steps=steps, seed=5,
                           max_sequence_length=12, return_latents=True,
                           image_reference=None if reference is None else reference * 2 - 1, **kw)
    error = relative_error(ours, theirs)
    print("kontext inpaint", strength, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)


def test_kontext_sizes_are_the_pipelines(kontext):
    """The edit's size (max_area rule) and the image's (auto-resize to the preferred resolution of the nearest
    aspect ratio; off: floored) are what FluxKontextPipeline hands to prepare_latents."""
    from diffusers.pipelines.flux import pipeline_flux_kontext
    pipe, _, _ = kontext
    assert list(PREFERRED_KONTEXT_RESOLUTIONS) == pipeline_flux_kontext.PREFERRED_KONTEXT_RESOLUTIONS

    class Seen(Exception):
        pass

    def capture(image, batch, channels, height, width, *args, **kwargs):
        raise Seen(tuple(image.shape[2:]), (height, width))

    original, pipe.prepare_latents = pipe.prepare_latents, capture
    try:
        for (h, w), height, width, area, auto in (((13, 22), 16, 24, 600, False), ((30, 17), None, None, 1024 ** 2,
                                                  True), ((64, 64), 40, 24, 5000, True), ((5, 9), 8, 8, 64, True)):
            with pytest.raises(Seen) as seen:
                pipe(image=_image(h, w), prompt="a", height=height, width=width, max_area=area, _auto_resize=auto,
                     max_sequence_length=4)
            f2 = 2 * pipe.vae_scale_factor
            assert seen.value.args[0] == kontext_image_size(h, w, f2, auto), (h, w, auto)
            assert seen.value.args[1] == kontext_output_size(height or 256, width or 256, f2, area), (height, width)
    finally:
        pipe.prepare_latents = original
    with pytest.raises(DiffkitError, match="max_area=10 at the aspect ratio of 16x16 gives 0x0"):
        kontext_output_size(16, 16, 4, 10)
    with pytest.raises(DiffkitError, match="an image of 3x9 pixels is not allowed"):
        kontext_image_size(9, 3, 4)


def _png(path, h, w, seed):
    from PIL import Image
    pixels = torch.rand(h, w, 3, generator=torch.Generator().manual_seed(seed)).numpy()
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(path)
    return Image.open(path)


def test_edit_command_on_a_kontext_folder(kontext, tmp_path, capsys, monkeypatch):
    """`diffkit edit` on a Kontext folder writes FluxKontextPipeline's images (PIL input, Lanczos-resized by its
    processor; generator seed + i) within one PNG level, with true CFG and --prompt-2; by default the image it
    hands to kontext_edit is the pipeline's preprocessed image at the preferred resolution, bit for bit."""
    from PIL import Image
    from diffkit.cli import main
    from diffkit.interop import flux_kontext
    pipe, folder, _ = kontext
    assert is_kontext_folder(folder) and not is_kontext_folder(tmp_path)
    pil = _png(tmp_path / "in.png", 14, 22, 1)
    assert main(["edit", "--checkpoint", str(folder), "--images", str(tmp_path / "in.png"), "--prompt", PROMPTS[0],
                 "--prompt-2", "a blurry photo", "--true-cfg-scale", "2", "--negative-prompt", "ugly",
                 "--height", "16", "--width", "24", "--max-area", "384", "--no-auto-resize", "--steps", "2",
                 "--max-sequence-length", "12", "--seed", "7", "--no-progress", "--out", str(tmp_path / "out")]) == 0
    with torch.no_grad():
        theirs = pipe(image=pil, prompt=PROMPTS[0], prompt_2="a blurry photo", true_cfg_scale=2.0,
                      negative_prompt="ugly", height=16, width=24, max_area=384, _auto_resize=False,
                      num_inference_steps=2, max_sequence_length=12, output_type="np",
                      generator=torch.Generator().manual_seed(7)).images
    written = np.asarray(Image.open(tmp_path / "out" / "edit_00000.png"), np.float64)
    print("kontext PNG levels", np.abs(written - (theirs[0] * 255).round()).max())
    assert written.shape == (16, 24, 3) and np.abs(written - (theirs[0] * 255).round()).max() <= 1
    seen = {}

    def capture(flux, images, prompts, **kw):
        seen.update(images=images, prompts=prompts, **kw)
        return torch.zeros(1, 3, 4, 4)
    monkeypatch.setattr(flux_kontext, "kontext_edit", capture)
    assert main(["edit", "--checkpoint", str(folder), "--images", str(tmp_path / "in.png"), "--prompt", "a",
                 "--no-progress", "--out", str(tmp_path / "auto")]) == 0
    size = kontext_image_size(14, 22, 4)  # (800, 1328): 20 / 12 is nearest 1328 / 800
    processor = pipe.image_processor
    expected = processor.preprocess(processor.resize(pil, *size), *size)
    assert tuple(seen["images"].shape[2:]) == size and torch.equal(seen["images"], expected)
    assert seen["auto_resize"] and seen["max_area"] == 1024 ** 2 and seen["height"] == seen["width"] == 256


def test_edit_command_inpaints_with_a_mask(kontext, tmp_path):
    """`diffkit edit --mask --strength 0.7` on a Kontext folder writes FluxKontextInpaintPipeline's image (PIL image
    and mask, resized by its processors to 12 x 20) within one PNG level."""
    from PIL import Image
    from diffkit.cli import main
    pipe, folder, _ = kontext
    pil = _png(tmp_path / "in.png", 14, 22, 1)
    mask = (torch.rand(14, 22, generator=torch.Generator().manual_seed(2)) > 0.5).numpy().astype(np.uint8) * 255
    Image.fromarray(mask, "L").save(tmp_path / "mask.png")
    assert main(["edit", "--checkpoint", str(folder), "--images", str(tmp_path / "in.png"), "--prompt", PROMPTS[0],
                 "--mask", str(tmp_path / "mask.png"), "--strength", "0.7", "--no-auto-resize", "--steps", "3",
                 "--max-sequence-length", "12", "--seed", "7", "--no-progress", "--out", str(tmp_path / "inp")]) == 0
    inpaint = diffusers.FluxKontextInpaintPipeline(**pipe.components)
    inpaint.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = inpaint(image=pil, mask_image=Image.open(tmp_path / "mask.png"), prompt=PROMPTS[0], strength=0.7,
                         _auto_resize=False, num_inference_steps=3, max_sequence_length=12, output_type="np",
                         generator=torch.Generator().manual_seed(7)).images
    written = np.asarray(Image.open(tmp_path / "inp" / "edit_00000.png"), np.float64)
    print("kontext inpaint PNG levels", np.abs(written - (theirs[0] * 255).round()).max())
    assert written.shape == (12, 20, 3) and np.abs(written - (theirs[0] * 255).round()).max() <= 1


def test_kontext_bad_input_is_one_line(kontext, tmp_path, capsys):
    """--strength without --mask, --max-area with it, a missing mask, --posterior on a Kontext folder, diffkit
    sample on one, --no-auto-resize on another checkpoint, no --images: one line each, no output folder; the
    library's bad arguments: one-line DiffkitErrors before any network call."""
    from diffkit.cli import main
    _, folder, _ = kontext
    _png(tmp_path / "in.png", 8, 8, 2)
    common = ["--checkpoint", str(folder), "--prompt", "a", "--no-progress", "--out", str(tmp_path / "bad")]
    image = ["--images", str(tmp_path / "in.png")]
    cases = [(["edit"] + common + image + ["--mask", str(tmp_path / "in.png"), "--max-area", "64"], "--max-area does "
              "not apply with --mask on a FLUX.1 Kontext folder"),
             (["edit"] + common + image + ["--strength", "0.5"], "--strength 0.5 without --mask does not apply to a "
              "FLUX.1 Kontext folder .* FluxKontextInpaintPipeline, which takes --strength"),
             (["edit"] + common + image + ["--mask", str(tmp_path / "none.png")], "--mask .*none.png' does not exist"),
             (["edit"] + common + image + ["--posterior", "sample"], "--posterior does not apply to a FLUX Kontext "
              "folder .*it takes --images"),
             (["edit"] + common, "is a FLUX.1 Kontext folder: give --images PNG"),
             (["edit"] + common + image + ["--max-area", "8"], "max_area=8 at the aspect ratio of 256x256 gives "
              "0x0"),
             (["sample", "--checkpoint", str(folder), "--prompt", "a", "--out", str(tmp_path / "bad" / "g.png")],
              "is a FLUX.1 Kontext folder .*use diffkit edit --checkpoint"),
             (["edit", "--checkpoint", str(tmp_path), "--no-auto-resize"] + image + ["--out", str(tmp_path / "bad")],
              "--no-auto-resize applies to a FLUX.1 Kontext folder")]
    flux, images = kontext[2], torch.zeros(2, 3, 8, 8)
    for call, match in ((lambda: kontext_edit(flux, images, ["a"] * 3), "3 prompts for 2 images"),
                        (lambda: kontext_edit(flux, images[:, :1], "a"), "images must be a \\(batch, 3, H, W\\)"),
                        (lambda: kontext_edit(flux, images, "a", auto_resize="no"), "auto_resize='no' is not allowed"),
                        (lambda: kontext_inpaint(flux, images, images[:, :1], "a", controlnet=object()),
                         "controlnet is not allowed in FLUX.1 Kontext inpainting"),
                        (lambda: kontext_inpaint(flux, images, images, "a"),
                         "mask must be a \\(1 or batch, 1, H, W\\)")):
        with pytest.raises(DiffkitError, match=match):
            call()
    capsys.readouterr()
    for argv, match in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), (argv, err)
        assert not (tmp_path / "bad").exists()
