"""SD3 folders with a 33-channel inpainting transformer (diffkit.interop.sd3 through .sd_inpaint): against diffusers'
StableDiffusion3InpaintPipeline's ``num_channels_transformer == 33`` path on a tiny random folder (the folder of
test_interop_sd3 with a 16-channel VAE and a 33-in / 16-out transformer)."""
import re
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.sd3 import image_to_image, load_sd3, text_to_image  # noqa: E402

import test_interop_sd3  # noqa: E402
from test_interop_sd3_edit import inpainting_pair  # noqa: E402

PROMPTS = test_interop_sd3.PROMPTS
tiny_sd3 = test_interop_sd3.tiny_sd3  # the folder fixture, shared


@pytest.fixture(scope="module")
def inpainting_sd3(tiny_sd3, tmp_path_factory):
    """(StableDiffusion3InpaintPipeline of the 33-channel folder's components, folder, load_sd3 of it)."""
    pipe, folder, _ = tiny_sd3[True]
    root = tmp_path_factory.mktemp("sd3_inpainting") / "sd3"
    shutil.copytree(folder, root)
    torch.manual_seed(3)
    vae = diffusers.AutoencoderKL(**{**pipe.vae.config, "latent_channels": 16})
    transformer = diffusers.SD3Transformer2DModel(**{**pipe.transformer.config, "in_channels": 33, "out_channels": 16})
    for name, module in (("vae", vae), ("transformer", transformer)):
        shutil.rmtree(root / name)
        module.save_pretrained(root / name)
    sd3 = load_sd3(root, progress=False)
    inpaint = diffusers.StableDiffusion3InpaintPipeline(**{**pipe.components, "vae": sd3.vae,
                                                           "transformer": sd3.transformer})
    return inpaint, root, sd3


def _inputs():  # those of inpainting_pair
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))  # [0, 1]
    mask = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(4)) > 0.5).float()
    return images, mask


@pytest.mark.parametrize("steps, strength", [(4, 0.6), (3, 1.0)])
def test_sd3_inpainting_transformer_matches_the_pipeline(inpainting_sd3, steps, strength):
    """image_to_image(mask=) on a 33-channel transformer = StableDiffusion3InpaintPipeline: the mask (nearest-resized)
    and the masked image's latents concatenated after the latents at every call (both guidance halves), nothing
    blended; per image the posterior sample (strength < 1), the noise, then the masked image's sample."""
    inpaint, _, sd3 = inpainting_sd3
    assert sd3.inpainting_unet
    ours, _ = inpainting_pair(inpaint, sd3, steps, strength, "33-channel inpaint")
    assert ours.shape == (2, 16, 8, 8)
    images, mask = _inputs()
    kw = {"negative_prompt": "ugly", "max_sequence_length": 12}
    for sampler in ("unipc", "dpm-solver++-2m"):  # other samplers run on their own grid
        other = image_to_image(sd3, images * 2 - 1, PROMPTS, strength, mask=mask, sampler=sampler, steps=steps,
                               guidance_scale=4.0, seed=5, return_latents=True, **kw)
        assert other.shape == ours.shape and bool(torch.isfinite(other).all())


def test_sd3_inpainting_transformer_edit_command(inpainting_sd3, tmp_path, capsys):
    """`diffkit edit --mask` on the folder writes image_to_image's images byte for byte."""
    import numpy as np
    from PIL import Image
    from diffkit.cli import main
    from diffkit.commands.edit import read_pngs
    from diffkit.images import save_images
    _, folder, sd3 = inpainting_sd3
    images, mask = _inputs()
    (tmp_path / "in").mkdir()
    for i, image in enumerate(images):
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "in" / f"{i}.png")
    Image.fromarray(np.uint8(mask[0, 0].numpy() * 255)).save(tmp_path / "mask.png")
    common = ["--checkpoint", str(folder), "--prompt", PROMPTS[0], "--guidance-convention", "diffusers",
              "--guidance-scale", "4", "--seed", "5", "--no-progress", "--max-sequence-length", "12", "--steps", "2"]
    assert main(["edit", "--images", str(tmp_path / "in"), "--mask", str(tmp_path / "mask.png"), "--strength", "0.9",
                 "--out", str(tmp_path / "out")] + common) == 0
    pixels, _ = read_pngs(tmp_path / "in", "RGB")
    ours = image_to_image(sd3, pixels, PROMPTS[0], 0.9, mask=mask[:1], steps=2, guidance_scale=4.0, seed=5,
                          max_sequence_length=12, output_range="-1,1")
    save_images(ours, tmp_path / "expected", prefix="edit")
    for i in range(2):
        assert (tmp_path / "out" / f"edit_0000{i}.png").read_bytes() == \
            (tmp_path / "expected" / f"edit_0000{i}.png").read_bytes()
    capsys.readouterr()


def test_sd3_inpainting_transformer_refusals(inpainting_sd3, tmp_path, capsys):
    """Without --mask (edit), in `sample`, with --controlnet, and text_to_image / image_to_image without a mask: one
    line, nothing written; a transformer whose channels fit nothing is refused at load."""
    import json
    from diffkit.cli import main
    _, folder, sd3 = inpainting_sd3
    images, _ = _inputs()
    (tmp_path / "in").mkdir()
    common = ["--checkpoint", str(folder), "--prompt", PROMPTS[0], "--no-progress"]
    for argv, match in ((["edit", "--images", str(tmp_path / "in")], "it only inpaints; give --mask"),
                        (["sample"], "it only inpaints; give --mask"),
                        (["edit", "--images", str(tmp_path / "in"), "--mask", str(tmp_path / "in"), "--controlnet",
                          str(tmp_path)], "--controlnet does not apply")):
        assert main(argv + common + ["--out", str(tmp_path / "none" / "o.png")]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), (argv, err)
        assert not (tmp_path / "none").exists()
    for call in (lambda: text_to_image(sd3, PROMPTS, steps=2), lambda: image_to_image(sd3, images, PROMPTS, steps=2)):
        with pytest.raises(DiffkitError, match="it only inpaints"):
            call()
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    config = json.loads((bad / "transformer" / "config.json").read_text())
    (bad / "transformer" / "config.json").write_text(json.dumps({**config, "in_channels": 20}))
    with pytest.raises(DiffkitError, match=r"in_channels=20, out_channels=16; allowed .* 16 in \(and out\), or 33 in"):
        load_sd3(bad, progress=False)
