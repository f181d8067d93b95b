"""Bria FIBO 2 folders (diffkit.interop.bria_fibo2): text_to_image and edit_image against diffusers' own
BriaFibo2Pipeline on a tiny random folder (tests/_bria_fibo2_helpers.py; nothing downloaded): cleaned JSON captions,
the images of their text and the first steps' captions without them, CFG against the null caption or a negative
prompt, padded prompt batches, edits with and without a mask; ``diffkit sample`` / ``diffkit edit`` on it (the
library's PNGs byte for byte) and the one-line refusals; LoRA files against its ``load_lora_weights`` +
``fuse_lora``."""
import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop import bria_fibo2  # noqa: E402
from diffkit.interop.bria_fibo import is_bria_fibo_folder  # noqa: E402
from diffkit.interop.bria_fibo2 import (check_bria_fibo2_folder, edit_image, is_bria_fibo2_folder,  # noqa: E402
                                        load_bria_fibo2, text_to_image)

from _bria_fibo2_helpers import save_bria_fibo2, tiny_bria_fibo2_pipeline  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402
from _sana_helpers import changed_copy  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

CAPTION = {"short_description": "a cat", "objects": [], "aesthetic_score": 7,  # cleaned away: [] and the score
           "text_render": [{"text": "Hi", "location": "top"}, {"text": ""}]}  # one text image (the empty: none)
PROMPTS = [json.dumps(CAPTION), "hot dog"]  # a JSON caption and a short description: a padded batch
H, W = 16, 32  # pixels: latents 8 x 16 (f = 2), 4 x 8 tokens of 2 x 2


@pytest.fixture(scope="session")
def tiny_fibo2(tmp_path_factory):
    """(BriaFibo2Pipeline.from_pretrained of the saved folder (its processor the built one's: transformers reads a
    Qwen3VLProcessor back only with torchvision), the folder, load_bria_fibo2 of it)."""
    path = tmp_path_factory.mktemp("fibo2") / "fibo2"
    built = tiny_bria_fibo2_pipeline()
    save_bria_fibo2(built, path)
    return reloaded(path, diffusers.BriaFibo2Pipeline, load_bria_fibo2, processor=built.processor)


def _picture(seed=0, size=(28, 20)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def test_bria_fibo2_samples_as_the_pipeline(tiny_fibo2):
    """The prompts' bundles and mask; final latents with CFG against the null caption (the caption's text image,
    its first steps without it) and against a negative prompt without text images; unguided decoded images."""
    pipe, path, model = tiny_fibo2
    assert is_bria_fibo2_folder(path) and not is_bria_fibo_folder(path)
    (ours, mask), (theirs, their_mask) = model.encode_prompts(PROMPTS), pipe.encode_prompt(PROMPTS)
    assert mask is not None and torch.equal(ours, theirs) and torch.equal(mask, their_mask)
    noise = torch.randn(2, 4, H // 2, W // 2, generator=torch.Generator().manual_seed(1))
    results = []
    for call in ({}, {"negative_prompt": "ugly", "guidance_scale": 3.0, "render_text_images": False},
                 {"guidance_scale": 1.0, "output_type": "pt"}):
        steps, output = (2, "pt") if call.pop("output_type", None) else (3, "latent")
        results.append(text_to_image(model, PROMPTS, steps=steps, latents=noise, return_latents=output == "latent",
                                     **call))
        with torch.no_grad():
            reference = pipe(PROMPTS, num_inference_steps=steps, latents=noise, height=H, width=W,
                             output_type=output, **call).images
        error = relative_error(results[-1], reference)
        print("BriaFibo2Pipeline", output, call, error)
        assert error < 1e-5  # measured: see docs/interop/bria_fibo2.md
    assert relative_error(results[0], results[1]) > 1e-3 and results[2].shape == (2, 3, H, W)
    unipc = text_to_image(model, PROMPTS[1:], sampler="unipc", steps=3, latents=noise[1:], guidance_scale=1.0,
                          return_latents=True)  # another diffkit sampler, on its own grid
    assert bool(torch.isfinite(unipc).all()) and relative_error(unipc, noise[1:]) > 0.1


def _small_default_area(monkeypatch, pipe, side=10):
    """The default edit area (side x 2 f)^2 in diffkit and the pipeline (default_sample_size), instead of 128's."""
    monkeypatch.setattr(bria_fibo2, "DEFAULT_SAMPLE_SIZE", side)
    monkeypatch.setattr(pipe, "default_sample_size", side)


def test_bria_fibo2_edits_as_the_pipeline(tiny_fibo2, monkeypatch):
    """An instruction, and a JSON caption with an instruction and a text to render, edit one picture as the
    pipeline's image=; a mask greys a region out first; two pictures edited together (each cropped to the trained
    size for its aspect ratio, of a default area made small)."""
    pipe, _, model = tiny_fibo2
    _small_default_area(monkeypatch, pipe)
    picture, noise = _picture(), torch.randn(1, 4, H // 2, W // 2, generator=torch.Generator().manual_seed(2))
    caption = json.dumps({"edit_instruction": "make it red", "short_description": "red",
                          "text_render": [{"text": "A"}]})
    mask = Image.fromarray(((np.arange(20 * 28).reshape(20, 28) % 7 > 3) * 255).astype(np.uint8))
    for prompt, extra in (("make it blue", {}), (caption, {}), ("x", {"mask": mask, "guidance_scale": 1.0}),
                          ("swap <image_1> and <image_2>", {"images": [picture, _picture(1, (20, 28))],
                                                            "guidance_scale": 1.0})):
        images = extra.pop("images", picture)
        ours = edit_image(model, images, [prompt], height=H, width=W, steps=2, latents=noise, return_latents=True,
                          **extra)
        with torch.no_grad():
            theirs = pipe(prompt, image=images, num_inference_steps=2, latents=noise, height=H, width=W,
                          output_type="latent", **extra).images
        error = relative_error(ours, theirs)
        print("BriaFibo2Pipeline edit", prompt[:20], sorted(extra), error)
        assert error < 1e-5 and relative_error(ours, noise) > 0.1


def test_diffkit_sample_and_edit_run_a_bria_fibo2_folder(tiny_fibo2, tmp_path, monkeypatch):
    """diffkit sample writes text_to_image's images byte for byte (CFG against the null caption); diffkit edit
    (unguided) writes edit_image's, each image at the trained size for its aspect ratio (the default area made small
    here, in diffkit and the pipeline), the mask greyed out, as the pipeline's images."""
    from diffkit.images import save_grid, save_images
    pipe, folder, model = tiny_fibo2
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[1], "--num", "1", "--height", str(H),
                 "--width", str(W), "--out", str(out), "--steps", "2", "--seed", "5", "--no-progress"]) == 0
    save_grid(text_to_image(model, PROMPTS[1:], steps=2, seed=5, height=H, width=W, output_range="-1,1"),
              tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    _small_default_area(monkeypatch, pipe)
    _picture(3).save(tmp_path / "image.png")
    Image.fromarray(((np.arange(20 * 28).reshape(20, 28) % 5 > 2) * 255).astype(np.uint8)).save(tmp_path / "m.png")
    assert main(["edit", "--checkpoint", str(folder), "--images", str(tmp_path / "image.png"), "--prompt", "red",
                 "--mask", str(tmp_path / "m.png"), "--steps", "2", "--seed", "3", "--out", str(tmp_path / "out"),
                 "--guidance-scale", "1", "--guidance-convention", "diffusers", "--no-progress"]) == 0
    mask = Image.open(tmp_path / "m.png")
    ours = edit_image(model, Image.open(tmp_path / "image.png"), ["red"], mask=mask, steps=2, seed=3,
                      guidance_scale=1.0, output_range="-1,1")
    save_images(ours, tmp_path / "expected", prefix="edit")
    assert (tmp_path / "out" / "edit_00000.png").read_bytes() == (tmp_path / "expected" / "edit_00000.png").read_bytes()
    size = pipe.image_processor.get_image_size(28 / 20, area=(10 * 2) ** 2)  # 24 x 16
    with torch.no_grad():
        theirs = pipe("red", image=Image.open(tmp_path / "image.png"), mask=mask, num_inference_steps=2,
                      guidance_scale=1.0, output_type="pt", generator=torch.Generator().manual_seed(3)).images
    error = float((ours / 2 + 0.5 - theirs).abs().max())
    print("BriaFibo2Pipeline edit images from a seed, max abs", error)
    assert ours.shape[2:] == theirs.shape[2:] == (size[1], size[0]) and error < 1e-5


def test_what_bria_fibo2_does_not_take_is_refused_in_one_line(tiny_fibo2, tmp_path, capsys):
    """--max-sequence-length, --prompt-2, sizes off 2 f, --strength and a JSON edit prompt without an
    instruction (before any weight is read), another pipeline class or transformer channels, too few text layers, an
    IP-Adapter, more than five pictures, a mask with two: one line each."""
    _, folder, model = tiny_fibo2
    base = ["--checkpoint", str(folder), "--prompt", "cat", "--out", str(tmp_path / "x.png"), "--no-progress"]
    edit = ["edit", "--images", str(tmp_path / "x.png"), *base[:-3], "--out", str(tmp_path / "e"), "--no-progress"]
    _picture().save(tmp_path / "x.png")
    for argv, message in (
            (["sample", *base, "--max-sequence-length", "5"], "--max-sequence-length does not apply to a Bria FIBO 2"),
            (["sample", *base, "--prompt-2", "dog"], "--prompt-2 does not apply to a Bria FIBO 2 folder"),
            (["sample", *base, "--height", "18"], "multiple of 4"),
            ([*edit, "--strength", "0.5"], "--strength does not apply to a Bria FIBO 2 folder"),
            ([*edit[:-5], "--prompt", '{"a": 1}', *edit[-3:]], "give the instruction, or a JSON caption")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "e").exists()
    for part, change, message in (
            ("model_index.json", {"_class_name": "BriaFiboPipeline"}, "is not a Bria FIBO 2 folder"),
            ("transformer/config.json", {"in_channels": 8}, "in_channels, patch_size = 8, 2; allowed: 4"),
            ("text_encoder/config.json", {"text_config": {"hidden_size": 16, "num_hidden_layers": 30}}, "30 layers")):
        with pytest.raises(DiffkitError, match=message):
            check_bria_fibo2_folder(changed_copy(folder, tmp_path / part.split("/")[0], part, change))
    for call, message in ((lambda: text_to_image(model, "cat", ip_adapter=object()), "IP-Adapter"),
                          (lambda: edit_image(model, [_picture()] * 6, "x"), "a list of 1 to 5"),
                          (lambda: edit_image(model, [_picture()] * 2, "x", mask=_picture()), "one mask")):
        with pytest.raises(DiffkitError, match=message):
            call()


FIBO2_LORA = dict(r=4, lora_alpha=8.0, target_modules=r".*(to_[qkv]|to_out\.0|w[123]|\d\.adaLN_modulation\.0|"
                                                      r"x_embedder|final_layer\.(linear|adaLN_modulation\.1)|"
                                                      r"mlp\.[02])",
                  rank_pattern={"to_k": 2}, alpha_pattern={"to_v": 3.0})


def test_bria_fibo2_lora_is_load_lora_weights_and_fuse_lora(tiny_fibo2, tmp_path, capsys, monkeypatch):
    """A diffusers-format file (BriaFibo2Pipeline.save_lora_weights, rank / alpha patterns, every Linear: the
    refiner, the perceiver, the blocks' cross-attention) at 0.15: load_lora_weights + fuse_lora's weights and z_0
    with CFG against the null caption (at 0.6 the tiny network's output changes 4x and its sensitivity makes the
    merges' 2e-7 rounding 3e-5 of z_0: docs/interop/bria_fibo2.md); ``diffkit sample --lora`` and ``diffkit edit
    --lora`` hand the file to load_bria_fibo2 (stopped there, for time); a kohya key, a text-encoder key, .alpha,
    dora_scale and LyCORIS: one line naming the key (the loader converts nothing)."""
    import functools
    import re
    from test_sd_lora import assert_files_refused, fused_transformer_lora
    from diffkit.interop.sana_lora import read_transformer_loras
    pipe, path, model = tiny_fibo2
    lora, fused = fused_transformer_lora(diffusers.BriaFibo2Pipeline, path, tmp_path, FIBO2_LORA, scale=0.15,
                                         loaded=pipe)
    ours = load_bria_fibo2(path, progress=False, lora=[(lora, 0.15)])
    theirs, base = fused.transformer.state_dict(), model.transformer.state_dict()
    worst = max(float((v - theirs[k]).abs().max()) for k, v in ours.transformer.state_dict().items())
    assert max(float((v - base[k]).abs().max()) for k, v in theirs.items()) > 1e-2
    noise = torch.randn(2, 4, H // 2, W // 2, generator=torch.Generator().manual_seed(1))
    z0 = text_to_image(ours, PROMPTS, steps=2, latents=noise, return_latents=True)
    with torch.no_grad():
        theirs = fused(PROMPTS, num_inference_steps=2, latents=noise, height=H, width=W, output_type="latent").images
    error = relative_error(z0, theirs)
    assert error < 1e-5 and worst < 1e-6
    given = []

    def stop(directory, device, progress=True, lora=None):
        given.append(lora)
        raise DiffkitError("stopped")
    monkeypatch.setattr(bria_fibo2, "load_bria_fibo2", stop)
    _picture(3).save(tmp_path / "image.png")
    for argv in (["sample", "--prompt", "red", "--out", str(tmp_path / "x.png")],
                 ["edit", "--images", str(tmp_path / "image.png"), "--prompt", "red", "--out", str(tmp_path / "out")]):
        assert main([*argv, "--checkpoint", str(path), "--lora", f"{lora}:0.15", "--no-progress"]) == 2
    assert given == [[(str(lora), 0.15)]] * 2 and capsys.readouterr().err.count("stopped") == 2
    print("BriaFibo2Pipeline LoRA latents", error, "weights", worst)  # (after capsys' read)
    a = "transformer.layers.0.attention.to_q.lora_A.weight"
    read = functools.partial(read_transformer_loras, kind="Bria FIBO 2", folder="a Bria FIBO 2 folder",
                             pipeline="BriaFibo2Pipeline", flux_check=False)
    assert_files_refused(read, tmp_path, [({a: torch.ones(2, 32), key: torch.ones(2, 2)},
                                           f"{re.escape(repr(key))}.* {expected}") for key, expected in [
        ("lora_unet_layers_0_attention_to_q.lora_down.weight", "converts no kohya"),
        ("text_encoder.q_proj.lora_A.weight", "converts no kohya"),
        ("transformer.layers.0.attention.dora_scale", "converts no kohya"),
        ("transformer.layers.0.attention.to_q.alpha", "converts no kohya"),
        ("transformer.layers.0.feed_forward.w1.lokr_w1", "LyCORIS LoKr")]])
