"""Qwen-Image-Layered folders (diffkit.interop.qwen_image_layered) against diffusers' own QwenImageLayeredPipeline on
a tiny random folder (tests/_qwen_image_helpers.py's parts with an RGBA VAE and a layer-RoPE transformer; nothing
downloaded), built once per session, and ``diffkit edit --layers N`` on it. The pipeline's resolution^2 area (640^2:
far too large for a test) is AREA pixels in both: its ``calculate_dimensions`` is patched, diffkit's ``area`` given."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.qwen_image import load_qwen_image  # noqa: E402
from diffkit.interop.qwen_image_layered import caption, decompose  # noqa: E402

from _qwen_image_helpers import save_qwen_image_edit, tiny_qwen_image_pipeline  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

layered_module = pytest.importorskip("diffusers.pipelines.qwenimage.pipeline_qwenimage_layered")
AREA = 2048  # a 40 x 24 image -> 64 x 32, latents 8 x 16 (f = 4, C = 8): 32 tokens a frame
PROMPT = "a cat on a sofa"


@pytest.fixture(scope="session")
def layered(tmp_path_factory):
    """(in-memory QwenImageLayeredPipeline, its saved folder, diffkit's model, a 40 x 24 RGBA image)."""
    parts = tiny_qwen_image_pipeline(edit=True).components
    torch.manual_seed(1)
    transformer = diffusers.QwenImageTransformer2DModel(**{**parts["transformer"].config, "use_layer3d_rope": True,
                                                           "use_additional_t_cond": True, "in_channels": 32,
                                                           "out_channels": 8}).eval()
    vae = diffusers.AutoencoderKLQwenImage(**{**parts["vae"].config, "input_channels": 4, "z_dim": 8,
                                              "latents_mean": [0.1, -0.2, 0.3, 0.0, 0.2, -0.1, 0.0, 0.4],
                                              "latents_std": [1.5, 0.8, 2.0, 1.2, 0.9, 1.1, 1.3, 0.7]}).eval()
    # (z_dim 8, not the helpers' 4: the pipeline takes a 4-channel image as latents where z_dim is 4)
    with torch.no_grad():  # the time embeddings large (as the 2511 test's): the t / additional_t terms must show;
        for name, weight in transformer.named_parameters():  # the vision tower's patches and merger too (N(0, 0.02^2)
            if name.startswith("time_text_embed."):          # as built): the caption must see the image
                weight.mul_(5.0)
        for name, weight in parts["text_encoder"].named_parameters():
            if name.startswith(("model.visual.patch_embed.", "model.visual.merger.mlp.")) and weight.ndim > 1:
                weight.normal_(0, 0.5)
    pipe = diffusers.QwenImageLayeredPipeline(**{**parts, "transformer": transformer, "vae": vae})
    pipe.set_progress_bar_config(disable=True)
    path = tmp_path_factory.mktemp("qwen_image_layered") / "layered"
    save_qwen_image_edit(pipe, path)
    rgba = np.random.RandomState(0).rand(24, 40, 4) * 255
    rgba[..., 3] = np.where(rgba[..., 3] > 96, 255, rgba[..., 3])  # partly opaque
    return pipe, path, load_qwen_image(path, progress=False), Image.fromarray(rgba.astype("uint8"), "RGBA")


@pytest.fixture
def small_area(monkeypatch):
    original = layered_module.calculate_dimensions
    monkeypatch.setattr(layered_module, "calculate_dimensions", lambda area, ratio: original(AREA, ratio))


def frames_of(pipe, packed, layers: int) -> torch.Tensor:
    """The pipeline's packed (1, (N + 1) T, 4 C) as diffkit's (1, (N + 1) C, h, w)."""
    z = pipe._unpack_latents(packed, 32, 64, layers, 4)  # (b, c, f, h, w)
    return z.permute(0, 2, 1, 3, 4).reshape(1, -1, 8, 16)


def test_layered_matches_the_pipeline(layered, small_area, monkeypatch):
    """z_0 of 2 layers (3 frames beside the image's latents, layer RoPE, additional_t_cond 0, sigmas to 0, mu of the
    image's tokens) with plain true CFG s = 3 equals QwenImageLayeredPipeline's from the same latents; with
    cfg_normalize from generator 5 and an empty prompt (the image's caption), the decoded RGBA layers equal its too.
    (Captions: 8 new tokens at most in both, not 512: the test's time.)"""
    pipe, _, model, image = layered
    for encoder in (pipe.text_encoder, model.text_encoder):
        monkeypatch.setattr(encoder, "generate", lambda generate=encoder.generate, **kw: generate(
            **{**kw, "max_new_tokens": 8}))
    resized = image.resize((64, 32), Image.LANCZOS)
    for english in (True, False):
        with torch.no_grad():
            theirs = pipe.get_image_caption(resized, use_en_prompt=english, device="cpu")
        assert len(theirs) > 3 and caption(model, resized, english) == theirs
    noise = torch.randn(1, 24, 8, 16, generator=torch.Generator().manual_seed(2))
    packed = pipe._pack_latents(noise.view(1, 3, 8, 8, 16), 1, 8, 8, 16, 3)
    call = dict(negative_prompt="blurry", true_cfg_scale=3.0, layers=2, num_inference_steps=3)
    seen = []  # (its output_type="latent" fails in diffusers 0.42.1: the last step's latents taken by a callback)

    def last(_, step, __, tensors):
        seen.append(tensors["latents"])
        return {}
    with torch.no_grad():
        pipe(image, PROMPT, latents=packed, output_type="pt", callback_on_step_end=last, **call)
    theirs = frames_of(pipe, seen[-1], 2)
    assert len(seen) == 3
    ours = decompose(model, image, PROMPT, layers=2, area=AREA, steps=3, latents=noise.clone(),
                     negative_prompt="blurry", guidance_scale=3.0, return_latents=True)
    assert theirs.abs().max() > 0.5 and relative_error(ours, theirs) < 1e-5
    with torch.no_grad():
        decoded = pipe(image, "", output_type="pt", cfg_normalize=True,
                       generator=torch.Generator().manual_seed(5), **call).images[0]
    mine = decompose(model, image, "", layers=2, area=AREA, steps=3, seed=5, cfg_normalize=True,
                     negative_prompt="blurry", guidance_scale=3.0)
    assert decoded.shape == (2, 4, 32, 64) and mine.shape == (1, 2, 4, 32, 64)
    assert relative_error(mine[0], decoded) < 1e-5 and relative_error(mine[0], decoded) >= 0
    plain = decompose(model, image, None, layers=2, area=AREA, steps=3, seed=5, negative_prompt="blurry",
                      guidance_scale=3.0)
    assert relative_error(plain[0], decoded) > 1e-3  # cfg_normalize matters here
    for call, expected in [(lambda: decompose(model, image, ["x"], area=AREA), "give one string"),
                           (lambda: decompose(model, image, PROMPT, resolution=512), "resolution=512 is not allowed"),
                           (lambda: decompose(model, image, PROMPT, layers=0), "layers=0 is not allowed"),
                           (lambda: decompose(model, image, PROMPT, height=32), "height is not allowed")]:
        with pytest.raises(DiffkitError, match=expected):
            call()


def test_edit_command_writes_each_images_layers(layered, tmp_path, capsys, monkeypatch):
    """``diffkit edit --layers 2 --english-caption`` without --prompt: the image's layers (its prompt the image's
    caption with the English annotator prompt, use_en_prompt, whose caption test_layered_matches_the_pipeline
    compares; 8 new tokens at most, the test's time) as edit_00000_layer_{k}.png (RGBA), byte for byte the
    library's; flags that do not apply, --layers / --english-caption elsewhere, diffkit sample: one line, no folder."""
    import json
    generate = transformers.Qwen2_5_VLForConditionalGeneration.generate
    monkeypatch.setattr(transformers.Qwen2_5_VLForConditionalGeneration, "generate",
                        lambda self, **kw: generate(self, **{**kw, "max_new_tokens": 8}))

    from diffkit.cli import main
    from diffkit.images import save_images
    _, path, model, image = layered
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    image.save(inputs / "0.png")  # (one image: the test's time; image i's seed + i is a loop index)
    assert main(["edit", "--checkpoint", str(path), "--images", str(inputs), "--layers", "2", "--max-area", str(AREA),
                 "--steps", "2", "--seed", "3", "--english-caption", "--out", str(out), "--no-progress"]) == 0
    save_images(decompose(model, image, None, layers=2, area=AREA, steps=2, seed=3, output_range="-1,1",
                          use_en_prompt=True)[0], tmp_path / "expected", prefix="edit_00000_layer")
    written = sorted(p.name for p in out.iterdir())
    assert written == ["edit_00000_layer_00000.png", "edit_00000_layer_00001.png"]
    assert [(out / n).read_bytes() for n in written] == [(tmp_path / "expected" / n).read_bytes() for n in written]
    assert Image.open(out / written[0]).mode == "RGBA"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "model_index.json").write_text(json.dumps({"_class_name": "QwenImagePipeline"}))
    base = ["edit", "--images", str(inputs), "--out", str(tmp_path / "o")]
    for flags, message in [
            (["--checkpoint", str(path), "--prompt", "x", "--mask", str(inputs / "0.png")],
             "--mask does not apply to a Qwen-Image-Layered folder"),
            (["--checkpoint", str(path)] + ["--prompt", "x"] * 3, "--prompt is given 3 times"),
            (["--checkpoint", str(plain), "--prompt", "x", "--layers", "3"], "--layers applies to a Qwen-Image"),
            (["--checkpoint", str(plain), "--prompt", "x", "--english-caption"],
             "--english-caption applies to a Qwen-Image-Layered folder"),
            (["--checkpoint", str(path), "--prompt", "x", "--english-caption"],
             "--english-caption goes with images without a prompt")]:
        assert main(base + flags) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert main(["sample", "--checkpoint", str(path), "--prompt", "x", "--out", str(tmp_path / "s.png")]) == 2
    assert "is a Qwen-Image-Layered folder, which diffkit sample does not take" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "s.png").exists()
