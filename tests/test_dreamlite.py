"""DreamLite folders (diffkit.interop.dreamlite): text_to_image and edit_image against diffusers' own DreamLitePipeline
and DreamLiteMobilePipeline on tiny random folders (tests/_dreamlite_helpers.py; nothing downloaded), ``diffkit sample``
and ``diffkit edit`` on them (the library's PNGs byte for byte) and the one-line refusals."""
import re

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.chroma import is_chroma_folder  # noqa: E402
from diffkit.interop.dreamlite import (EDIT_PREFIX, GENERATE_PREFIX, check_dreamlite_folder,  # noqa: E402
                                       edit_image, is_dreamlite_folder, load_dreamlite, text_to_image)

from _dreamlite_helpers import save_dreamlite, tiny_dreamlite_pipeline  # noqa: E402
from _pixart_helpers import assert_sample_refusals  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402
from _sana_helpers import changed_copy  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]  # of unequal lengths: a padded batch, the mask passed
H, W = 32, 48  # pixels: latents 4 x 8 x 12 (f = 4)


@pytest.fixture(scope="session")
def tiny_dreamlite(tmp_path_factory):
    """{False: (DreamLitePipeline.from_pretrained of the saved folder, the folder, load_dreamlite of it), True: the
    same of a DreamLiteMobilePipeline folder of the same parts}; the processor the built one's (transformers reads a
    Qwen3VLProcessor back only with torchvision)."""
    root = tmp_path_factory.mktemp("dreamlite")
    built = tiny_dreamlite_pipeline()
    save_dreamlite(built, root / "base")
    save_dreamlite(diffusers.DreamLiteMobilePipeline(**built.components), root / "mobile")
    return {mobile: reloaded(root / name, kind, load_dreamlite, processor=built.processor)
            for mobile, name, kind in ((False, "base", diffusers.DreamLitePipeline),
                                       (True, "mobile", diffusers.DreamLiteMobilePipeline))}


def _image(height: int = 26, width: int = 43, seed: int = 0):
    """A random RGB PIL image (its size not a multiple of f: the pipeline floors it to 24 x 40)."""
    from PIL import Image
    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype(np.uint8))


def _theirs(pipe, prompt, seed, **call):
    with torch.no_grad():
        return pipe(prompt=prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(seed),
                    **{"output_type": "latent", **call}).images


def test_dreamlite_samples_and_edits_as_the_pipelines(tiny_dreamlite):
    """The templated prompts' last Qwen3-VL states less the template (generate: the tokenizer, cut at the length;
    edit: the processor with the 512 x 512 image), CFG against the negative prompt, the edit's three-way guidance on
    [z_t, z_ref] along the width, the size's mu, time ids, AutoencoderTiny's unscaled reference and shifted decoding;
    per-sample seeds; the Mobile pipeline's single branch; another diffkit sampler on its own grid."""
    pipe, path, model = tiny_dreamlite[False]
    assert is_dreamlite_folder(path) and not is_chroma_folder(path) and model.vae_scale_factor == 4
    texts = [GENERATE_PREFIX.format(p) for p in PROMPTS]
    ours, theirs = model.encode_prompts(texts, 5), pipe.encode_prompt("generate", texts, "cpu", torch.float32,
                                                                        max_sequence_length=5)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1]) and ours[0].shape[1] == 5
    image, texts = _image(), [EDIT_PREFIX.format(p) for p in PROMPTS]
    ours = model.encode_prompts(texts, images=[image] * 2)
    theirs = pipe.encode_prompt("edit", texts, "cpu", torch.float32, image=image)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1]) and not bool(ours[1].all())
    errors = {}
    for name, call in (("t2i", {}), ("t2i CFG 5, negative", {"guidance_scale": 5.0, "negative_prompt": "ugly"})):
        mine = text_to_image(model, PROMPTS, height=H, width=W, steps=2, seed=3, return_latents=True, **call)
        theirs = torch.cat([_theirs(pipe, p, 3 + i, height=H, width=W, **call) for i, p in enumerate(PROMPTS)])
        errors[name] = relative_error(mine, theirs)
    mine = text_to_image(model, PROMPTS[:1], height=H, width=W, steps=2, seed=3, output_range="0,1")
    errors["t2i images"] = relative_error(mine, _theirs(pipe, PROMPTS[0], 3, height=H, width=W, output_type="pt"))
    for name, call in (("edit", {}), ("edit s 4, s_I 2, negative", {"guidance_scale": 4.0, "image_guidance_scale": 2.0,
                                                                     "negative_prompt": "ugly"})):
        mine = edit_image(model, [image, _image(seed=1)], PROMPTS, steps=2, seed=1, return_latents=True, **call)
        theirs = torch.cat([_theirs(pipe, p, 1 + i, image=im, **call)
                            for i, (p, im) in enumerate(zip(PROMPTS, (image, _image(seed=1))))])
        assert mine.shape == (2, 4, 6, 10)  # 26 x 43 floored to 24 x 40 (f = 4): latents 6 x 10
        errors[name] = relative_error(mine, theirs)
    mine = edit_image(model, image, PROMPTS[0], height=H, width=W, steps=2, seed=1, output_range="0,1")
    errors["edit images, 32 x 48"] = relative_error(
        mine, _theirs(pipe, PROMPTS[0], 1, image=image, height=H, width=W, output_type="pt"))
    pipe, _, mobile = tiny_dreamlite[True]
    mine = text_to_image(mobile, PROMPTS, height=H, width=W, steps=2, seed=3, return_latents=True)
    errors["Mobile t2i"] = relative_error(mine, torch.cat([_theirs(pipe, p, 3 + i, height=H, width=W)
                                                           for i, p in enumerate(PROMPTS)]))
    mine = edit_image(mobile, image, PROMPTS[0], steps=2, seed=1, return_latents=True)
    errors["Mobile edit"] = relative_error(mine, _theirs(pipe, PROMPTS[0], 1, image=image))
    print("DreamLite latents / images", errors)
    assert max(errors.values()) < 1e-5  # measured: see docs/interop/dreamlite.md
    other = text_to_image(model, PROMPTS[0], sampler="dpm-solver++-2m", steps=3, height=H, width=W,
                          return_latents=True)
    assert other.shape == (1, 4, 8, 12) and bool(other.isfinite().all())


def test_dreamlite_commands_are_the_library_and_refusals(tiny_dreamlite, tmp_path, capsys):
    """``diffkit sample`` and ``diffkit edit`` (``--height`` / ``--width`` the output's, the images resized by the
    library) write the library's PNGs byte for byte; folders diffkit does not drive (from the JSON alone), bad
    library arguments and flags the folder does not take (a Mobile folder's guidance): one line each, no file."""
    from diffkit.images import save_grid, save_images
    _, path, model = tiny_dreamlite[False]
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--steps", "2", "--seed", "5", "--batch-size", "2", "--height", str(H), "--width",
                 str(W), "--negative-prompt", "ugly", "--guidance-scale", "3", "--guidance-convention", "diffusers",
                 "--max-sequence-length", "6", "--out", str(out), "--no-progress"]) == 0
    images = text_to_image(model, PROMPTS, steps=2, seed=5, height=H, width=W, negative_prompt="ugly",
                           guidance_scale=3.0, max_sequence_length=6, output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert "DreamLite folder" in capsys.readouterr().out
    png = tmp_path / "in.png"
    _image().save(png)
    assert main(["edit", "--checkpoint", str(path), "--images", str(png), "--prompt", "hot", "--steps", "2",
                 "--seed", "3", "--image-guidance-scale", "1.2", "--height", "16", "--width", str(W),
                 "--out", str(tmp_path / "edit"), "--no-progress"]) == 0
    save_images(edit_image(model, _image(), "hot", height=16, width=W, steps=2, seed=3, image_guidance_scale=1.2,
                           output_range="-1,1"), tmp_path / "expected", prefix="edit")
    assert (tmp_path / "edit" / "edit_00000.png").read_bytes() == \
        (tmp_path / "expected" / "edit_00000.png").read_bytes()
    for i, (file, change, expected) in enumerate([
            ("model_index.json", {"_class_name": "DreamLiteXLPipeline"}, "is not a DreamLite folder"),
            ("model_index.json", {"vae": ["diffusers", "AutoencoderKL"]}, "allowed: AutoencoderTiny"),
            ("unet/config.json", {"in_channels": 8}, "allowed: 4, 4 (the autoencoder's latent channels"),
            ("unet/config.json", {"encoder_hid_dim": 64}, "encoder_hid_dim=64 does not fit the text encoder's"),
            ("scheduler/scheduler_config.json", {"stochastic_sampling": True}, "allowed: stochastic_sampling=false")]):
        with pytest.raises(DiffkitError) as caught:
            check_dreamlite_folder(changed_copy(path, tmp_path / str(i), file, change))
        assert expected in str(caught.value) and "\n" not in str(caught.value)
    for call, expected in [({"height": 20}, "multiples of 8 (2 x the VAE factor 4"),
                           ({"guidance_scale": float("nan")}, "DreamLitePipeline's default 3.5"),
                           ({"image_guidance_scale": 2.0}, "image_guidance_scale applies to an edit"),
                           ({"ip_adapter": object()}, "IP-Adapter is not allowed"),
                           ({"max_sequence_length": 0}, "max_sequence_length=0 is not allowed")]:
        with pytest.raises(DiffkitError, match=re.escape(expected)):
            text_to_image(model, "hot", steps=1, **{"height": H, "width": W, **call})
    for call, expected in [({}, "size 46x29 floored to multiples of 4 is 44x28, not multiples of 8"),
                           ({"max_sequence_length": 9, "height": H}, "max_sequence_length is not allowed in a")]:
        with pytest.raises(DiffkitError, match=re.escape(expected)):
            edit_image(model, _image(29, 46), "hot", steps=1, **call)
    mobile = tiny_dreamlite[True][2]
    for call, expected in [({"guidance_scale": 2.0}, "guidance_scale=2.0 is not allowed for a DreamLiteMobile"),
                           ({"negative_prompt": "x"}, "negative_prompt='x' is not allowed for a DreamLiteMobile")]:
        with pytest.raises(DiffkitError, match=re.escape(expected)):
            text_to_image(mobile, "hot", steps=1, height=H, width=W, **call)
    assert_sample_refusals(main, path, tmp_path, capsys, [
        (["--lora", str(png)], "--lora does not apply to a DreamLite folder"),
        (["--prompt-2", "x"], "--prompt-2 does not apply to a DreamLite folder"),
        (["--height", "20"], "--height 20 is not allowed; give a positive multiple of 8")])
    assert_sample_refusals(main, tiny_dreamlite[True][1], tmp_path, capsys, [
        (["--negative-prompt", "x"], "--negative-prompt does not apply to a DreamLite Mobile folder"),
        (["--guidance-scale", "2"], "--guidance-scale does not apply to a DreamLite Mobile folder")])
    for folder, extra, text in ((path, ["--strength", "0.5"], "--strength does not apply to a DreamLite folder"),
                                (path, ["--mask", str(png)], "--mask does not apply to a DreamLite folder"),
                                (path, ["--max-sequence-length", "5"], "--max-sequence-length does not apply to a"),
                                (tiny_dreamlite[True][1], ["--image-guidance-scale", "2"],
                                 "--image-guidance-scale does not apply to a DreamLite Mobile folder")):
        capsys.readouterr()
        assert main(["edit", "--checkpoint", str(folder), "--images", str(png), "--prompt", "hot",
                     "--out", str(tmp_path / "never"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and text in err[0], err
    assert not (tmp_path / "never").exists()
