"""Qwen-Image-Edit-Plus folders (QwenImageEditPlusPipeline, diffkit.interop.qwen_image_edit) with a Qwen-Image-Edit-2511
transformer (``zero_cond_t``: the reference pictures' tokens modulated at t = 0) against diffusers' own pipeline, and
``diffkit edit --images A --image-reference B --image-reference C`` (the pipeline's ``image=[A, B, C]``). One tiny
random folder (tests/_qwen_image_helpers.py's Plus pipeline with its transformer rebuilt with ``zero_cond_t=True``,
the same weights), built once per session; the pipeline's 1024^2 / 384^2 areas are AREA / 1024 pixels in both."""
import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import save_images  # noqa: E402
from diffkit.interop.flux import pack_latents, unpack_latents  # noqa: E402
from diffkit.interop.qwen_image import load_qwen_image  # noqa: E402
from diffkit.interop.qwen_image_edit import edit_image  # noqa: E402

from _qwen_image_helpers import save_qwen_image_edit, tiny_qwen_image_pipeline  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

plus_module = pytest.importorskip("diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus")
AREA = 2048
PLUS_AREAS = {1024 * 1024: AREA, 384 * 384: 1024}  # the pipeline's VAE / condition areas in the tests


def picture(seed: int, width: int, height: int):
    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8"))


@pytest.fixture(scope="session")
def edit_2511(tmp_path_factory):
    """(in-memory QwenImageEditPlusPipeline with a zero_cond_t transformer, its saved folder, diffkit's model)."""
    pipe = tiny_qwen_image_pipeline(edit=True, plus=True)
    old = pipe.transformer
    transformer = diffusers.QwenImageTransformer2DModel(**{**old.config, "zero_cond_t": True}).eval()
    transformer.load_state_dict(old.state_dict())
    draw = torch.Generator().manual_seed(7)
    with torch.no_grad():  # the time embedding and the modulations made large: t = 0 on the pictures must show
        for name, weight in transformer.named_parameters():
            if name.startswith("time_text_embed.") or ".img_mod." in name:
                weight.copy_(torch.randn(weight.shape, generator=draw) * 0.5)
    pipe = diffusers.QwenImageEditPlusPipeline(**{**pipe.components, "transformer": transformer})
    pipe.set_progress_bar_config(disable=True)
    path = tmp_path_factory.mktemp("qwen_image_edit_2511") / "plus"
    save_qwen_image_edit(pipe, path)
    return pipe, path, load_qwen_image(path, progress=False)


@pytest.fixture
def small_areas(monkeypatch):
    """The pipeline's calculate_dimensions at PLUS_AREAS; diffkit's condition area the same (the CLI's default)."""
    import diffkit.interop.qwen_image_edit as module
    original = plus_module.calculate_dimensions
    monkeypatch.setattr(plus_module, "calculate_dimensions", lambda area, ratio: original(PLUS_AREAS[area], ratio))
    monkeypatch.setitem(module.edit_image.__kwdefaults__, "condition_area", 1024)


def test_edit_2511_matches_the_pipeline(edit_2511, small_areas):
    """Two pictures of other ratios: z_0 of true CFG s = 3 equals QwenImageEditPlusPipeline's with the 2511
    transformer (the pictures' tokens at t = 0 through ``img_shapes``); the same weights without zero_cond_t differ."""
    pipe, _, model = edit_2511
    images = [picture(0, 40, 24), picture(1, 24, 40)]  # the last one's ratio: output H x W 64 x 32, latents 16 x 8
    noise = torch.randn(1, 4, 16, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = pipe(images, "make it a cat", negative_prompt="blurry", true_cfg_scale=3.0, num_inference_steps=3,
                      latents=pack_latents(noise), output_type="latent").images
    theirs = unpack_latents(theirs, 16, 8)
    call = dict(area=AREA, steps=3, negative_prompt="blurry", guidance_scale=3.0, return_latents=True)
    ours = edit_image(model, images, "make it a cat", latents=noise.clone(), **call)
    assert theirs.abs().max() > 0.5 and relative_error(ours, theirs) < 1e-5
    blocks = [model.transformer] + list(model.transformer.transformer_blocks)
    try:
        for block in blocks:
            block.zero_cond_t = False  # (2509's transformer on the same weights)
        assert relative_error(edit_image(model, images, "make it a cat", latents=noise.clone(), **call), theirs) > 1e-3
    finally:
        for block in blocks:
            block.zero_cond_t = True


def test_edit_command_image_reference_is_the_pipelines_image_list(edit_2511, small_areas, tmp_path, capsys):
    """``diffkit edit --images DIR --image-reference B --image-reference C``: each image edited seeing [image, B, C]
    (Picture 1, 2, 3; image i from seed + i as before), byte for byte the library's; refusals in one line, no folder
    made."""
    _, path, model = edit_2511
    images, references = [picture(3, 40, 24)], [picture(5, 24, 40), picture(6, 32, 32)]  # (one image: the time)
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for i, image in enumerate(images):
        image.save(inputs / f"{i}.png")
    for i, image in enumerate(references):
        image.save(tmp_path / f"r{i}.png")
    refs = ["--image-reference", str(tmp_path / "r0.png"), "--image-reference", str(tmp_path / "r1.png")]
    assert main(["edit", "--checkpoint", str(path), "--images", str(inputs), "--prompt", "x", "--steps", "2",
                 "--seed", "4", "--max-area", str(AREA), "--out", str(out), "--no-progress"] + refs) == 0
    expected = torch.cat([edit_image(model, [image] + references, "x", area=AREA, steps=2, seed=4 + i,
                                     output_range="-1,1") for i, image in enumerate(images)])
    assert expected.shape == (1, 3, 32, 32)  # the last picture's (square) ratio, as the pipeline's
    save_images(expected, tmp_path / "expected", prefix="edit")
    assert [p.read_bytes() for p in sorted(out.iterdir())] == \
        [p.read_bytes() for p in sorted((tmp_path / "expected").iterdir())]
    (tmp_path / "bad.png").write_text("no image")
    edit_folder, kontext = tmp_path / "edit", tmp_path / "kontext"
    for folder, name in ((edit_folder, "QwenImageEditPipeline"), (kontext, "FluxKontextPipeline")):
        folder.mkdir()
        (folder / "model_index.json").write_text(json.dumps({"_class_name": name}))
    base = ["edit", "--images", str(inputs), "--prompt", "x", "--out", str(tmp_path / "o")]
    for flags, message in [
            (["--checkpoint", str(edit_folder)] + refs[:2], "--image-reference does not apply to a "
                                                            "QwenImageEditPipeline folder"),
            (["--checkpoint", str(path), "--image-reference", str(inputs)], "is a folder; a Qwen-Image-Edit-Plus "
                                                                            "folder takes one PNG"),
            (["--checkpoint", str(path), "--image-reference", str(tmp_path / "bad.png")], "bad.png: cannot be read"),
            (["--checkpoint", str(kontext), "--mask", str(tmp_path / "r0.png")] + refs,
             "--image-reference is given 2 times; a FLUX.1 Kontext folder takes it once")]:
        assert main(base + flags) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("pipeline,config,expected", [
    ("QwenImageEditPipeline", {}, "zero_cond_t=True, which QwenImagePipeline does not drive"),
    ("QwenImageEditPlusPipeline", {"use_layer3d_rope": True},
     "use_layer3d_rope=True, which QwenImagePipeline does not drive (a Qwen-Image-Edit-2511 / Layered model); "
     "allowed: use_layer3d_rope=false, or a QwenImageLayeredPipeline folder")])
def test_2511_and_layered_transformers_are_refused_elsewhere(edit_2511, tmp_path, pipeline, config, expected):
    """zero_cond_t is driven on a QwenImageEditPlusPipeline folder alone, the layer RoPE and extra time embedding on
    a QwenImageLayeredPipeline folder alone (edited JSON files of the 2511 folder; a Layered folder without them:
    tests/test_qwen_image.py's TQI6)."""
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(edit_2511[1], copy)
    for name, change in (("model_index.json", {"_class_name": pipeline}), ("transformer/config.json", config)):
        (copy / name).write_text(json.dumps({**json.loads((copy / name).read_text()), **change}))
    with pytest.raises(DiffkitError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_qwen_image(copy, progress=False)
