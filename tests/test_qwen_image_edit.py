"""Qwen-Image-Edit folders (diffkit.interop.qwen_image_edit): diffkit's edit_image against diffusers' own
QwenImageEditPipeline on a tiny random folder (tests/_qwen_image_helpers.py with edit=True: a Qwen2.5-VL whose vision
tower sees the image, the PIL Qwen2-VL image processor; nothing downloaded), and ``diffkit edit`` on it. The
pipeline's target area (1024^2, far too large for a test) is 2048 pixels in both: its ``calculate_dimensions`` is
patched, diffkit's ``area`` / ``--max-area`` given."""
import json
import shutil

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
from diffkit.interop.qwen_image import image_to_image, load_qwen_image, text_to_image  # noqa: E402
from diffkit.interop.qwen_image_edit import calculated_size, edit_image  # noqa: E402

from _qwen_image_helpers import save_qwen_image_edit, tiny_qwen_image_pipeline  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

AREA = 2048  # 40 x 24 inputs -> 64 x 32 (ratio 5 / 3), latents 8 x 16 (f = 4), 32 packed tokens
PROMPTS = ["make it a cat", "hot dog"]  # of unequal lengths: a padded batch, the mask passed
edit_module = pytest.importorskip("diffusers.pipelines.qwenimage.pipeline_qwenimage_edit")
plus_module = pytest.importorskip("diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus")
PLUS_AREAS = {1024 * 1024: AREA, 384 * 384: 1024}  # the Plus pipeline's VAE / condition areas in the tests


@pytest.fixture(scope="session")
def edit_folder(tmp_path_factory):
    """(in-memory QwenImageEditPipeline, its saved folder, diffkit's QwenImageEdit, two 40 x 24 PIL images)."""
    path = tmp_path_factory.mktemp("qwen_image_edit") / "edit"
    pipe = tiny_qwen_image_pipeline(edit=True)
    save_qwen_image_edit(pipe, path)  # (the pipeline is not reloaded: Qwen2VLProcessor's loader needs torchvision)
    images = [Image.fromarray((np.random.RandomState(i).rand(24, 40, 3) * 255).astype("uint8")) for i in range(2)]
    return pipe, path, load_qwen_image(path, progress=False), images


@pytest.fixture
def small_area(monkeypatch):
    """The pipeline's calculate_dimensions at AREA pixels instead of 1024^2."""
    original = edit_module.calculate_dimensions
    monkeypatch.setattr(edit_module, "calculate_dimensions", lambda area, ratio: original(AREA, ratio))


@pytest.fixture(scope="session")
def plus_folder(tmp_path_factory):
    """(in-memory QwenImageEditPlusPipeline, diffkit's QwenImageEdit of its saved folder, the folder): the edit
    folder's parts."""
    path = tmp_path_factory.mktemp("qwen_image_edit_plus") / "plus"
    pipe = tiny_qwen_image_pipeline(edit=True, plus=True)
    save_qwen_image_edit(pipe, path)
    return pipe, load_qwen_image(path, progress=False), path


def test_edit_plus_matches_the_pipeline(plus_folder, edit_folder, monkeypatch):
    """QwenImageEditPlusPipeline (2509) with two images of other ratios: "Picture i: " and each image's vision tokens
    before the prompt (each at its ratio on the condition area), both images' latents after z_t's (each at its ratio
    on the VAE area, its own img_shapes entry), the last image's size; true CFG against a negative prompt."""
    pipe, model, _ = plus_folder
    original = plus_module.calculate_dimensions
    monkeypatch.setattr(plus_module, "calculate_dimensions", lambda area, ratio: original(PLUS_AREAS[area], ratio))
    images = [edit_folder[3][0], edit_folder[3][1].resize((24, 40))]  # W x H 40 x 24, 24 x 40: output H x W 64 x 32
    noise = torch.randn(1, 4, 16, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = pipe(images, PROMPTS[0], negative_prompt="blurry", true_cfg_scale=3.0, num_inference_steps=3,
                      latents=pack_latents(noise), output_type="latent").images
    theirs = unpack_latents(theirs, 16, 8)
    ours = edit_image(model, images, PROMPTS[0], area=AREA, condition_area=1024, steps=3, latents=noise.clone(),
                      negative_prompt="blurry", guidance_scale=3.0, return_latents=True)
    assert theirs.abs().max() > 0.5 and relative_error(ours, theirs) < 1e-5
    with pytest.raises(DiffkitError, match="one prompt seeing its images .the pipeline's batch 1.: 2 prompts"):
        edit_image(model, images, PROMPTS, area=AREA, condition_area=1024)


def test_edit_command_on_a_plus_folder_edits_each_image_alone(plus_folder, edit_folder, tmp_path, monkeypatch):
    """``diffkit edit`` on a Plus folder: image i alone (the pipeline's batch 1) from seed + i, byte for byte."""
    import diffkit.interop.qwen_image_edit as module
    monkeypatch.setitem(module.edit_image.__kwdefaults__, "condition_area", 1024)  # (384^2: too large here)
    _, model, path = plus_folder
    images = edit_folder[3]
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for i, image in enumerate(images):
        image.save(inputs / f"{i}.png")
    assert main(["edit", "--checkpoint", str(path), "--images", str(inputs), "--prompt", "x", "--steps", "2",
                 "--seed", "4", "--max-area", str(AREA),
                 "--out", str(out), "--no-progress"]) == 0
    expected = torch.cat([edit_image(model, image, "x", area=AREA, steps=2, seed=4 + i, output_range="-1,1")
                          for i, image in enumerate(images)])
    save_images(expected, tmp_path / "expected", prefix="edit")
    assert [p.read_bytes() for p in sorted(out.iterdir())] == \
        [p.read_bytes() for p in sorted((tmp_path / "expected").iterdir())]


def pipeline_edit(pipe, image, prompt, noise, **call):
    with torch.no_grad():
        out = pipe(image, prompt, num_inference_steps=3, latents=pack_latents(noise), **call).images
    return unpack_latents(out, 8, 16) if call.get("output_type") == "latent" else out


@pytest.mark.parametrize("negative,scale", [(["blurry", " "], 3.0), (None, 4.0)])
def test_edits_match_the_pipeline(edit_folder, small_area, negative, scale):
    """z_0 of a batch of two edits equals QwenImageEditPipeline's for each image alone (its call takes one image; a
    list's prompt would see the images unresized, module docstring): the prompt sees the image, its latents beside
    z_t's, true CFG with norm rescaling against a negative prompt that sees it too; the decoded images as well."""
    pipe, _, model, images = edit_folder
    noise = torch.randn(2, 4, 8, 16, generator=torch.Generator().manual_seed(1))
    theirs = torch.cat([pipeline_edit(pipe, images[i], PROMPTS[i], noise[i:i + 1], output_type="latent",
                                      negative_prompt=None if negative is None else negative[i],
                                      true_cfg_scale=scale) for i in range(2)])
    guided = {"negative_prompt": negative, "guidance_scale": None if negative is None else scale}
    ours = edit_image(model, images, PROMPTS, area=AREA, steps=3, latents=noise.clone(), return_latents=True,
                      **guided)
    assert theirs.shape == (2, 4, 8, 16) and theirs.abs().max() > 0.5
    assert relative_error(ours, theirs) < 1e-5
    if negative is None:
        decoded = pipeline_edit(pipe, images[0], PROMPTS[0], noise[:1], output_type="pt")
        mine = edit_image(model, images[0], PROMPTS[0], area=AREA, steps=3, latents=noise[:1].clone())
        assert decoded.shape == mine.shape == (1, 3, 32, 64) and relative_error(mine, decoded) < 1e-5


def test_prompt_states_reference_size_and_refusals(edit_folder):
    """The prompt's states (the image's pad tokens expanded as Qwen2VLProcessor does, 64 template tokens dropped) and
    the reference latents are the pipeline's; the calculated size is calculate_dimensions'; bad input: one line."""
    pipe, _, model, images = edit_folder
    resized = [image.resize((64, 32), Image.LANCZOS) for image in images]
    with torch.no_grad():
        theirs, their_mask = pipe.encode_prompt(PROMPTS, image=resized)
    context, mask = model.encode_prompts(PROMPTS, images=resized)
    assert context.shape[1] > 512 and torch.equal(mask, their_mask) and relative_error(context, theirs) < 1e-6
    pixels = torch.stack([torch.from_numpy(np.array(image)) for image in resized]).permute(0, 3, 1, 2) / 255 * 2 - 1
    with torch.no_grad():
        assert torch.equal(model.encode(pixels), pipe._encode_vae_image(pixels[:, :, None], None)[:, :, 0])
    for width, height in [(40, 24), (1024, 1024), (1920, 1080), (333, 1000)]:
        assert calculated_size(width, height) == edit_module.calculate_dimensions(1024 * 1024, width / height)[:2]
    for call, expected in [
        (lambda: edit_image(model, images, PROMPTS, area=AREA, max_sequence_length=20),
         "max_sequence_length is not allowed for a Qwen-Image-Edit folder"),
        (lambda: edit_image(model, images, PROMPTS, area=100), "area=100 is not allowed"),
        (lambda: edit_image(model, images, PROMPTS * 2, area=AREA), "4 prompts for 2 images"),
        (lambda: text_to_image(model, "a cat", steps=2, height=16, width=16),
         "a Qwen-Image-Edit prompt sees its image: give one image per prompt (1), not 0"),
        (lambda: image_to_image(model, torch.zeros(1, 3, 16, 16), "a cat", steps=2),
         "a Qwen-Image-Edit prompt sees its image")]:
        with pytest.raises(DiffkitError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            call()


def test_edit_command_is_the_library_and_refuses_what_does_not_apply(edit_folder, tmp_path, capsys):
    _, path, model, images = edit_folder
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i, image in enumerate(images):
        image.save(inputs / f"{i}.png")
    out = tmp_path / "out"
    assert main(["edit", "--checkpoint", str(path), "--images", str(inputs), "--prompt", PROMPTS[0], "--steps", "2",
                 "--seed", "3", "--negative-prompt", "ugly", "--max-area", str(AREA), "--out", str(out),
                 "--no-progress"]) == 0
    expected = edit_image(model, images, PROMPTS[0], area=AREA, steps=2, seed=3, negative_prompt="ugly",
                          output_range="-1,1")
    save_images(expected, tmp_path / "expected", prefix="edit")
    assert [p.read_bytes() for p in sorted(out.iterdir())] == \
        [p.read_bytes() for p in sorted((tmp_path / "expected").iterdir())]
    base = ["edit", "--checkpoint", str(path), "--images", str(inputs), "--prompt", "x", "--out", str(tmp_path / "o")]
    for flags, message in [(["--strength", "0.5"], "strength=0.5 is not allowed without a mask"),
                           (["--posterior", "mean"], "--posterior does not apply to a Qwen-Image-Edit folder"),
                           (["--max-sequence-length", "9"], "--max-sequence-length does not apply"),
                           (["--width", "64"], "--width does not apply to a Qwen-Image-Edit folder")]:
        assert main(base + flags) == 2
        assert message in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(path), "--prompt", "x", "--out", str(tmp_path / "s.png")]) == 2
    assert "is a Qwen-Image-Edit folder, which diffkit sample does not take" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("change,expected", [
    ({"processor": None}, "lacks the Qwen-Image component(s) processor"),
    ({"processor": ["transformers", "AutoProcessor"]}, "processor is a 'AutoProcessor'; allowed: Qwen2VLProcessor"),
    ({"_class_name": "QwenImageControlNetInpaintPipeline"}, "is not a Qwen-Image folder")])
def test_edit_folders_diffkit_does_not_drive_are_refused(edit_folder, tmp_path, change, expected):
    copy = tmp_path / "copy"
    shutil.copytree(edit_folder[1], copy)
    index = json.loads((copy / "model_index.json").read_text())
    (copy / "model_index.json").write_text(json.dumps({**index, **change}))
    with pytest.raises(DiffkitError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_qwen_image(copy, progress=False)


@pytest.fixture(scope="session")
def edit_inpaint(edit_folder):
    """A QwenImageEditInpaintPipeline of the edit folder's parts and a 24 x 40 mask (1 = repaint)."""
    pipe = diffusers.QwenImageEditInpaintPipeline(**edit_folder[0].components)
    pipe.set_progress_bar_config(disable=True)
    mask = torch.zeros(1, 1, 24, 40)
    mask[..., 6:18, 4:26] = 1
    return pipe, mask


@pytest.fixture
def small_inpaint_area(monkeypatch):
    """QwenImageEditInpaintPipeline's calculate_dimensions at AREA pixels."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_inpaint as inpaint_module
    original = inpaint_module.calculate_dimensions
    monkeypatch.setattr(inpaint_module, "calculate_dimensions", lambda area, ratio: original(AREA, ratio))


def inpaint_call(pipe, image, prompt, mask, seed, **call):
    """z_0 (unpacked) of QwenImageEditInpaintPipeline, 3 steps, from generator ``seed``."""
    with torch.no_grad():
        return unpack_latents(pipe(image, prompt, mask_image=mask, num_inference_steps=3, output_type="latent",
                                   generator=torch.Generator().manual_seed(seed), **call).images, 8, 16)


def test_edit_inpainting_matches_the_pipeline(edit_folder, edit_inpaint, small_inpaint_area):
    """QwenImageEditInpaintPipeline (its latents= path returns early, so each image alone from its generator 5 + i):
    the image's posterior draw, then its noise, at the strength's cut; the prompt sees the image, the same latents
    beside z_t's; true CFG; the kept region put back at the next sigma after every step. Strength 0.6 of 3 steps."""
    pipe, mask = edit_inpaint
    _, _, model, images = edit_folder
    theirs = torch.cat([inpaint_call(pipe, images[i], PROMPTS[i], mask, 5 + i, negative_prompt="blurry",
                                     true_cfg_scale=3.0) for i in range(2)])
    ours = edit_image(model, images, PROMPTS, area=AREA, mask=mask, steps=3, seed=5, negative_prompt="blurry",
                      guidance_scale=3.0, return_latents=True)
    assert theirs.abs().max() > 0.5 and relative_error(ours, theirs) < 1e-5
    plain = edit_image(model, images, PROMPTS, area=AREA, steps=3, seed=5, negative_prompt="blurry",
                       guidance_scale=3.0, return_latents=True)
    assert relative_error(plain, theirs) > 1e-2
    for call, expected in [
        (lambda: edit_image(model, images, PROMPTS, area=AREA, strength=0.5), "strength=0.5 is not allowed without"),
        (lambda: edit_image(model, images, PROMPTS, area=AREA, mask=mask, height=32), "height=32 / width=None are"),
        (lambda: edit_image(model, images, PROMPTS, area=AREA, mask=mask[0]), "mask (1, 24, 40) is not allowed"),
        (lambda: edit_image(model, images, PROMPTS, area=AREA, mask=mask, steps=3, strength=1.5), "strength"),
        (lambda: edit_image(model, images, PROMPTS, area=AREA, mask=mask, posterior="mode"), "posterior")]:
        with pytest.raises(DiffkitError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            call()


def test_edit_inpaint_folder_command_and_lora(edit_folder, edit_inpaint, plus_folder, tmp_path, capsys,
                                             small_inpaint_area):
    """A folder naming QwenImageEditInpaintPipeline loads as an Edit folder; ``diffkit edit --mask --lora`` on it is
    edit_image byte for byte; a LoRA file (QwenImage's QWEN_LORA, s = 0.3) is load_lora_weights + fuse_lora's
    weights; a Plus folder refuses a mask in one line."""
    from diffkit.commands.edit import read_mask
    from test_qwen_image import QWEN_LORA
    from test_sd_lora import fused_transformer_lora
    _, path, _, images = edit_folder
    pipe, mask = edit_inpaint
    lora, fused = fused_transformer_lora(diffusers.QwenImageEditInpaintPipeline, path, tmp_path / "lora", QWEN_LORA,
                                         scale=0.3, loaded=pipe)
    copy = tmp_path / "inpaint"
    shutil.copytree(path, copy)
    index = json.loads((copy / "model_index.json").read_text())
    (copy / "model_index.json").write_text(json.dumps({**index, "_class_name": "QwenImageEditInpaintPipeline"}))
    model = load_qwen_image(copy, progress=False, lora=[(lora, 0.3)])
    theirs = fused.transformer.state_dict()
    worst = max(float((v - theirs[k]).abs().max()) for k, v in model.transformer.state_dict().items())
    changed = max(float((v - pipe.transformer.state_dict()[k]).abs().max())
                  for k, v in model.transformer.state_dict().items())
    assert worst < 1e-6 and changed > 1e-2
    theirs = inpaint_call(fused, images[0], "hot dog", mask, 2, strength=0.9)
    ours = edit_image(model, images[0], "hot dog", area=AREA, mask=mask, strength=0.9, steps=3, seed=2,
                      return_latents=True)
    assert relative_error(ours, theirs) < 1e-5
    (tmp_path / "in").mkdir()
    images[0].save(tmp_path / "in" / "0.png")
    Image.fromarray((mask[0, 0].numpy() * 255).astype("uint8")).save(tmp_path / "mask.png")
    base = ["edit", "--checkpoint", str(copy), "--images", str(tmp_path / "in"), "--prompt", "x", "--steps", "2",
            "--seed", "3", "--max-area", str(AREA), "--mask", str(tmp_path / "mask.png"), "--no-progress"]
    assert main(base + ["--strength", "0.9", "--lora", f"{lora}:0.3", "--out", str(tmp_path / "out")]) == 0
    read = read_mask(tmp_path / "mask.png", torch.zeros(1, 3, 24, 40))
    save_images(edit_image(model, images[0], "x", area=AREA, mask=read, strength=0.9, steps=2, seed=3,
                           output_range="-1,1"), tmp_path / "expected", prefix="edit")
    assert (tmp_path / "out" / "edit_00000.png").read_bytes() == \
        (tmp_path / "expected" / "edit_00000.png").read_bytes()
    capsys.readouterr()
    assert main(base[:2] + [str(plus_folder[2])] + base[3:] + ["--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a mask is not allowed for a Qwen-Image-Edit-Plus folder" in err[0]
    assert not (tmp_path / "never").exists()
