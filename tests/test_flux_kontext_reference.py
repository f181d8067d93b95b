"""``diffkit edit --checkpoint KONTEXT --mask ... --image-reference PNG|DIR`` (FluxKontextInpaintPipeline's
``image_reference`` on the command line): the PNGs the library writes, byte for byte, and diffusers' own pipeline's
within one PNG level, on test_flux_kontext's tiny random Kontext folder; the flag's one-line refusals."""
import json
import re

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.interop.flux_kontext import kontext_image_size, kontext_inpaint  # noqa: E402

from test_flux_kontext import PROMPTS, _png  # noqa: E402
from test_flux_kontext import kontext as kontext_folder  # noqa: E402  (the module-scoped fixture, reused)

kontext = kontext_folder  # the fixture's name in this module


@pytest.fixture
def inputs(tmp_path):
    """Two 14 x 22 images (12 x 20 after --no-auto-resize), a mask, and a folder of two references of other sizes
    (16 x 16 and 10 x 29: 8 x 28 floored); ``common``: the command's arguments without --image-reference."""
    from PIL import Image
    for name, (h, w, seed) in {"images/a.png": (14, 22, 1), "images/b.png": (14, 22, 2),
                               "refs/a.png": (16, 16, 3), "refs/b.png": (10, 29, 4)}.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        _png(tmp_path / name, h, w, seed)
    mask = (torch.rand(14, 22, generator=torch.Generator().manual_seed(2)) > 0.5).numpy().astype(np.uint8) * 255
    Image.fromarray(mask, "L").save(tmp_path / "mask.png")
    common = ["--images", str(tmp_path / "images"), "--prompt", PROMPTS[0], "--mask", str(tmp_path / "mask.png"),
              "--strength", "0.8", "--no-auto-resize", "--steps", "2", "--max-sequence-length", "12", "--seed", "7",
              "--no-progress"]
    return tmp_path, common


def test_image_reference_folder_writes_the_library_and_the_pipelines_pngs(kontext, inputs):
    """A folder of one reference per image: the written PNGs are kontext_inpaint's (image_reference = the reference
    Lanczos-resized to its own floored size) byte for byte, and FluxKontextInpaintPipeline's (PIL image, mask and
    image_reference; generator seed + i) within one PNG level."""
    from PIL import Image
    from diffkit.cli import main
    from diffkit.commands._image_size import resized_pngs
    from diffkit.images import png_bytes, to_uint8
    pipe, folder, flux = kontext
    tmp_path, common = inputs
    out = tmp_path / "out"
    assert main(["edit", "--checkpoint", str(folder), *common, "--image-reference", str(tmp_path / "refs"),
                 "--out", str(out)]) == 0
    inpaint = diffusers.FluxKontextInpaintPipeline(**pipe.components)
    inpaint.set_progress_bar_config(disable=True)
    mask = resized_pngs([tmp_path / "mask.png"], 12, 20, mask=True)
    levels = []
    for i, name in enumerate(["a.png", "b.png"]):
        written = (out / f"edit_{i:05d}.png").read_bytes()
        reference = tmp_path / "refs" / name
        with Image.open(reference) as opened:
            size = kontext_image_size(opened.height, opened.width, 4, False)
        ours = kontext_inpaint(flux, resized_pngs([tmp_path / "images" / name], 12, 20), mask, PROMPTS[0], 0.8,
                               image_reference=resized_pngs([reference], *size), auto_resize=False, steps=2,
                               max_sequence_length=12, seed=7 + i, output_range="-1,1")
        assert written == png_bytes(to_uint8(ours)[0]), name
        with torch.no_grad():
            theirs = inpaint(image=Image.open(tmp_path / "images" / name), mask_image=Image.open(tmp_path / "mask.png"),
                             image_reference=Image.open(reference), prompt=PROMPTS[0], strength=0.8,
                             _auto_resize=False, num_inference_steps=2, max_sequence_length=12, output_type="np",
                             generator=torch.Generator().manual_seed(7 + i)).images
        pixels = np.asarray(Image.open(out / f"edit_{i:05d}.png"), np.float64)
        levels.append(np.abs(pixels - (theirs[0] * 255).round()).max())
        assert pixels.shape == (12, 20, 3)
    print("kontext --image-reference PNG levels", levels)
    assert max(levels) <= 1


def test_one_image_reference_serves_every_image(kontext, inputs, monkeypatch):
    """One file: every image's image_reference is that PNG, Lanczos-resized (the pipeline's processor) to its own
    size, floored to 4 here (--no-auto-resize) or its preferred Kontext resolution; without the flag: None."""
    from diffkit.cli import main
    from diffkit.commands._image_size import resized_pngs
    from diffkit.interop import flux_kontext
    pipe, folder, _ = kontext
    tmp_path, common = inputs
    seen = []

    def capture(flux, images, mask, prompts, strength, image_reference=None, **kw):
        seen.append(image_reference)
        return torch.zeros(1, 3, 4, 4)
    monkeypatch.setattr(flux_kontext, "kontext_inpaint", capture)
    reference = tmp_path / "refs" / "b.png"
    for i, extra in enumerate([["--image-reference", str(reference)], []]):
        assert main(["edit", "--checkpoint", str(folder), *common, *extra, "--out", str(tmp_path / f"o{i}")]) == 0
    expected = resized_pngs([reference], 8, 28)
    assert len(seen) == 4 and all(torch.equal(r, expected) for r in seen[:2]) and seen[2:] == [None, None]
    common.remove("--no-auto-resize")
    seen.clear()
    assert main(["edit", "--checkpoint", str(folder), *common, "--image-reference", str(reference),
                 "--out", str(tmp_path / "auto")]) == 0
    size = kontext_image_size(10, 29, 4)  # 29 / 10 is nearest 1568 / 672
    processor = pipe.image_processor
    from PIL import Image
    pil = Image.open(reference)
    assert size == (672, 1568) and torch.equal(seen[0], processor.preprocess(processor.resize(pil, *size), *size))


def test_image_reference_refusals_are_one_line(kontext, inputs, capsys):
    """Without --mask (FluxKontextPipeline has no image_reference), on a FLUX.1 folder that is no Kontext one and on
    a checkpoint that is no diffusers folder, a folder of the wrong count, a missing path, a file that is no image:
    one line each, exit 2, no output folder."""
    from diffkit.cli import main
    _, folder, _ = kontext
    tmp_path, common = inputs
    (tmp_path / "flux").mkdir()
    (tmp_path / "flux" / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    (tmp_path / "not.png").write_text("text")
    bad = ["--out", str(tmp_path / "bad")]
    plain = common[:4] + ["--no-progress"]
    no_mask = plain + ["--steps", "1", "--max-area", "64", "--no-auto-resize"]  # cheap if it were run
    reference = ["--image-reference", str(tmp_path / "refs" / "a.png")]
    cases = [
        ([str(folder), *no_mask, *reference], r"--image-reference \S+a.png without --mask does not apply to a FLUX.1 "
         r"Kontext folder .*FluxKontextPipeline has no image_reference"),
        ([str(tmp_path / "flux"), *plain, *reference], r"--image-reference does not apply to a FLUX folder"),
        ([str(tmp_path), *plain, *reference], r"--image-reference applies to a FLUX.1 Kontext folder"),
        ([str(folder), *common, "--image-reference", str(tmp_path / "none")],
         r"--image-reference '\S+none' does not exist; give a PNG"),
        ([str(folder), *common, "--image-reference", str(tmp_path / "not.png")],
         r"--image-reference \S+not.png: cannot be read as an image")]
    (tmp_path / "three").mkdir()
    for n in range(3):
        _png(tmp_path / "three" / f"{n}.png", 8, 8, n)
    cases.append(([str(folder), *common, "--image-reference", str(tmp_path / "three")],
                  r"--image-reference \S+three holds 3 PNG\(s\) for 2 --images file\(s\); give one image reference "
                  r"per image"))
    capsys.readouterr()
    for argv, match in cases:
        assert main(["edit", "--checkpoint", *argv, *bad]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), (argv, err)
        assert not (tmp_path / "bad").exists()
