"""OmniGen folders (diffkit.interop.omnigen): text_to_image / edit_image against diffusers' own OmniGenPipeline on a
tiny random folder (tests/_omnigen_helpers.py: a 2-layer transformer, a character-level LlamaTokenizer; diffusers'
processor run with four torchvision transforms given there), and ``diffkit sample`` / ``diffkit edit`` on it (the
library's PNGs byte for byte; what does not apply refused in one line)."""
import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.omnigen import (check_omnigen_folder, crop_images, edit_image, is_omnigen_folder,  # noqa: E402
                                     load_omnigen, text_to_image)

from _omnigen_helpers import tiny_omnigen_pipeline  # noqa: E402
from _pixart_helpers import assert_sample_refusals  # noqa: E402
from _sana_helpers import changed_copy  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

PROMPTS = ["a cat", "a red dog with a hat"]  # of two lengths: left padding
EDIT_PROMPT = "a cat <img><|image_1|></img> red"
STEPS = 3


@pytest.fixture(scope="module")
def omnigen(tmp_path_factory):
    """(pipeline, folder, loaded model, input PNG of 41 x 57 pixels, the PNG as a (1, 3, H, W) tensor in [-1, 1])."""
    from PIL import Image
    pipe = tiny_omnigen_pipeline()
    root = tmp_path_factory.mktemp("omnigen")
    pipe.save_pretrained(root / "folder")
    pixels = (np.random.RandomState(0).rand(41, 57, 3) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(root / "in.png")
    image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1
    return pipe, root / "folder", load_omnigen(root / "folder", progress=False), root / "in.png", image


def posterior_then_noise(seed, shape, noise_shape):
    """The pipeline's draws with ``torch.manual_seed(seed)`` for the two posterior samples and diffkit's image
    generator ``seed``: the same two, then the noise (returned, for the pipeline's ``latents``)."""
    generator = torch.Generator().manual_seed(seed)
    torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    noise = torch.randn(noise_shape, generator=generator)
    torch.manual_seed(seed)
    return noise


def test_text_to_image_matches_pipeline(omnigen):
    """TOG1: two prompts of two lengths, the pipeline's loop (3 steps), s = 2.5 and s = 4 (seed convention W = 3);
    final latents and decoded images within 1e-5 of OmniGenPipeline's."""
    pipe, _, model, _, _ = omnigen
    noise = torch.randn(2, 4, 4, 6, generator=torch.Generator().manual_seed(5))
    ref = pipe(PROMPTS, height=32, width=48, num_inference_steps=STEPS, output_type="latent", latents=noise).images
    ours = text_to_image(model, PROMPTS, steps=STEPS, latents=noise, return_latents=True)
    assert relative_error(ours, ref) < 1e-5
    ref = pipe(PROMPTS[:1], height=32, width=48, num_inference_steps=STEPS, output_type="pt", latents=noise[:1],
               guidance_scale=4.0).images
    ours = text_to_image(model, PROMPTS[:1], steps=STEPS, latents=noise[:1], guidance_scale=3.0, convention="seed")
    assert relative_error(ours, ref) < 1e-5


def test_edit_matches_pipeline(omnigen):
    """TOG2: an input image of 41 x 57 pixels (cropped to 32 x 48 as the processor's crop_image: 4 rows / columns
    off the top / left, 5 off the bottom / right), three-way guidance with img_guidance_scale 1.9; its size as the
    output (use_input_image_size_as_output) and 32 x 32 (height / width); the posterior drawn twice; final latents
    within 1e-5."""
    from PIL import Image
    pipe, _, model, png, image = omnigen
    for size, options in (((4, 6), {"use_input_image_size_as_output": True}), ((4, 4), {"height": 32, "width": 32})):
        noise = posterior_then_noise(7, (1, 4, 4, 6), (1, 4, *size))
        ref = pipe(EDIT_PROMPT, input_images=[Image.open(png)], num_inference_steps=STEPS, output_type="latent",
                   latents=noise, img_guidance_scale=1.9, **options).images
        ours = edit_image(model, image, EDIT_PROMPT, steps=STEPS, seed=7, return_latents=True,
                          image_guidance_scale=1.9, height=options.get("height"), width=options.get("width"))
        assert ours.shape == ref.shape and relative_error(ours, ref) < 1e-5


def test_other_samplers_and_crop(omnigen):
    """Any diffkit sampler runs on the folder (finite, its shape); crop_images keeps the processor's centred rows."""
    _, _, model, _, image = omnigen
    out = text_to_image(model, PROMPTS[:1], sampler="dpm-solver++-2m", steps=2, height=32, width=32,
                        return_latents=True)
    assert out.shape == (1, 4, 4, 4) and torch.isfinite(out).all()
    assert torch.equal(crop_images(image), image[:, :, 4:36, 4:52])


def test_refusals(omnigen, tmp_path):
    """ROG1-ROG4: one-line DiffkitErrors, the folder's before any weight is read."""
    _, path, model, _, image = omnigen
    assert is_omnigen_folder(path) and not is_omnigen_folder(tmp_path)
    for file, change, text in (("model_index.json", {"_class_name": "FluxPipeline"}, "is not an OmniGen folder"),
                               ("transformer/config.json", {"in_channels": 8}, "in_channels=8"),
                               ("vae/config.json", {"block_out_channels": [8, 8]}, "VAE factor x patch size is 4"),
                               ("scheduler/scheduler_config.json", {"use_dynamic_shifting": True},
                                "use_dynamic_shifting")):
        odd = changed_copy(path, tmp_path / file.replace("/", "_"), file, change)
        with pytest.raises(DiffkitError, match=text):
            check_omnigen_folder(odd)
    cases = ((lambda: text_to_image(model, "a cat", negative_prompt="ugly"), "negative_prompt does not apply"),
             (lambda: text_to_image(model, EDIT_PROMPT), "names an input image"),
             (lambda: text_to_image(model, "a cat", guide={"image_guidance_scale": 2.0}), "with an input image"),
             (lambda: text_to_image(model, "a cat", guidance_scale=float("nan")), "give a finite number"),
             (lambda: edit_image(model, image, "a cat"), "is not allowed with one input image"),
             (lambda: edit_image(model, image, "a <img><|image_2|></img>"), "is not allowed with one input image"),
             (lambda: edit_image(model, image, EDIT_PROMPT + EDIT_PROMPT), "more than once"),
             (lambda: edit_image(model, image[:, :, :8], EDIT_PROMPT), "give sides of 16 to 1024"))
    for call, text in cases:
        with pytest.raises(DiffkitError, match=text) as error:
            call()
        assert "\n" not in str(error.value)


def test_commands(omnigen, tmp_path, capsys):
    """``diffkit sample`` and ``diffkit edit`` write the library's images byte for byte; ROG5: the flags an OmniGen
    folder does not take, one line, no file."""
    from diffkit.images import save_grid, save_images
    _, path, model, png, image = omnigen
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--steps", "2", "--seed", "5", "--batch-size", "2", "--height", "32", "--width",
                 "48", "--guidance-scale", "3", "--guidance-convention", "diffusers", "--out", str(out),
                 "--no-progress"]) == 0
    save_grid(text_to_image(model, PROMPTS, steps=2, seed=5, height=32, width=48, guidance_scale=3.0,
                            output_range="-1,1"), tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert main(["edit", "--checkpoint", str(path), "--images", str(png), "--prompt", EDIT_PROMPT, "--steps", "2",
                 "--seed", "3", "--image-guidance-scale", "1.2", "--out", str(tmp_path / "edit"),
                 "--no-progress"]) == 0
    save_images(edit_image(model, image, EDIT_PROMPT, steps=2, seed=3, image_guidance_scale=1.2, output_range="-1,1"),
                tmp_path / "expected", prefix="edit")
    assert (tmp_path / "edit" / "edit_00000.png").read_bytes() == \
        (tmp_path / "expected" / "edit_00000.png").read_bytes()
    assert_sample_refusals(main, path, tmp_path, capsys, [
        (["--negative-prompt", "ugly"], "--negative-prompt does not apply to an OmniGen folder"),
        (["--max-sequence-length", "64"], "--max-sequence-length applies to a Stable Diffusion"),
        (["--lora", str(png)], "--lora does not apply to an OmniGen folder"),
        (["--pag-scale", "2"], "--pag-scale does not apply to an OmniGen folder"),
        (["--prompt", EDIT_PROMPT], "names an input image")])
    for extra, text in ((["--strength", "0.5"], "--strength does not apply to an OmniGen folder"),
                        (["--mask", str(png)], "--mask does not apply to an OmniGen folder"),
                        (["--negative-prompt", "x"], "--negative-prompt does not apply to an OmniGen folder"),
                        (["--prompt", "a cat"], "is not allowed with one input image")):
        capsys.readouterr()
        assert main(["edit", "--checkpoint", str(path), "--images", str(png), "--prompt", EDIT_PROMPT,
                     "--out", str(tmp_path / "never"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and text in err[0], err
    assert not (tmp_path / "never").exists()
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert main(["edit", "--checkpoint", str(tmp_path / "sd"), "--images", str(png), "--prompt", "x",
                 "--image-guidance-scale", "2", "--out", str(tmp_path / "never")]) == 2
    assert "an OmniGen or a DreamLite folder" in capsys.readouterr().err
