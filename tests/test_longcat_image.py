"""LongCat-Image folders (diffkit.interop.longcat_image): diffkit's text_to_image / edit_image against diffusers' own
LongCatImagePipeline / LongCatImageEditPipeline (``enable_prompt_rewrite=False``) on tiny random folders (the
Qwen2.5-VL, tokenizer and processor of tests/_qwen_image_helpers.py, a one-double-one-single-block transformer,
FLUX.1's tiny 16-channel VAE of tests/test_interop_flux.py (f = 2); nothing downloaded), and ``diffkit sample`` /
``diffkit edit`` on them. The edit pipeline's target area (1024^2, far too large for a test) is 1024 pixels in both:
its ``calculate_dimensions`` patched, diffkit's ``area`` / ``--max-area`` given."""
import json
import shutil

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
edit_module = pytest.importorskip("diffusers.pipelines.longcat_image.pipeline_longcat_image_edit")

from PIL import Image  # noqa: E402

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import save_grid, save_images  # noqa: E402
from diffkit.interop.flux import pack_latents, unpack_latents  # noqa: E402
from diffkit.interop.longcat_image import (calculated_size, edit_image, is_longcat_folder,  # noqa: E402
                                           load_longcat_image, position_ids, text_to_image)

from _pixart_helpers import assert_sample_refusals  # noqa: E402
from _qwen_image_helpers import save_qwen_image_edit, tiny_qwen_vl  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_flux import tiny_flux_vae  # noqa: E402

PROMPTS = ["a photo of a 'hot' cat", "hot dog"]  # a quoted part: tokenised character by character
AREA = 1024  # 24 x 16 inputs -> 48 x 32 (16-multiples rounded up), latents 24 x 16, 96 packed tokens


def tiny_longcat_pipeline(edit: bool = False):
    """A LongCatImagePipeline (``edit``: LongCatImageEditPipeline) of random weights (module docstring)."""
    torch.manual_seed(0)
    parts = tiny_qwen_vl(32, vision=True)
    transformer = diffusers.LongCatImageTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 6, 6])
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=16, base_shift=0.5, max_image_seq_len=256, max_shift=1.15, use_dynamic_shifting=True)
    kind = diffusers.LongCatImageEditPipeline if edit else diffusers.LongCatImagePipeline
    pipe = kind(scheduler=scheduler, vae=tiny_flux_vae(), text_encoder=parts["text_encoder"],
                tokenizer=parts["tokenizer"], text_processor=parts["processor"], transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def longcat_folder(tmp_path_factory):
    """(in-memory LongCatImagePipeline, its saved folder, diffkit's LongCatImage)."""
    path = tmp_path_factory.mktemp("longcat_image") / "longcat"
    pipe = tiny_longcat_pipeline()
    save_qwen_image_edit(pipe, path)  # (not reloaded: Qwen2VLProcessor's loader needs torchvision)
    return pipe, path, load_longcat_image(path, progress=False)


@pytest.fixture(scope="session")
def edit_folder(tmp_path_factory):
    """(in-memory LongCatImageEditPipeline, its saved folder, diffkit's LongCatImage, a 24 x 16 PIL image)."""
    path = tmp_path_factory.mktemp("longcat_image_edit") / "edit"
    pipe = tiny_longcat_pipeline(edit=True)
    save_qwen_image_edit(pipe, path)
    image = Image.fromarray((np.random.RandomState(0).rand(16, 24, 3) * 255).astype("uint8"))
    return pipe, path, load_longcat_image(path, progress=False), image


@pytest.fixture
def small_area(monkeypatch):
    """The edit pipeline's calculate_dimensions at AREA pixels instead of 1024^2."""
    original = edit_module.calculate_dimensions
    monkeypatch.setattr(edit_module, "calculate_dimensions", lambda area, ratio: original(AREA, ratio))


@pytest.mark.parametrize("scale,negative,renorm", [(4.5, None, 0.0), (3.0, "ugly blurry", 0.5), (2.0, "bad", None),
                                                   (1.0, None, 0.0)])
def test_longcat_matches_the_pipeline(longcat_folder, scale, negative, renorm):
    """z_0 from the same z equals LongCatImagePipeline's (CFG against "" or a negative prompt, renormalised per token
    to [cfg_renorm_min, 1] of the conditional norm, or not; s = 1: its unguided loop), and so do the images."""
    pipe, path, model = longcat_folder
    assert is_longcat_folder(path) and model.vae_scale_factor == 2
    noise = torch.randn(2, 16, 8, 12, generator=torch.Generator().manual_seed(1))
    theirs_kw = dict(negative_prompt=negative, guidance_scale=scale, num_inference_steps=3, height=16, width=24,
                     enable_prompt_rewrite=False, enable_cfg_renorm=renorm is not None, cfg_renorm_min=renorm or 0.0)
    ours_kw = dict(steps=3, height=16, width=24, guidance_scale=scale, negative_prompt=negative,
                   cfg_renorm_min=renorm)
    with torch.no_grad():
        theirs = pipe(PROMPTS, latents=pack_latents(noise), output_type="latent", **theirs_kw).images
    theirs = unpack_latents(theirs, 8, 12)
    ours = text_to_image(model, PROMPTS, latents=noise.clone(), return_latents=True, **ours_kw)
    assert theirs.abs().max() > 0.5
    assert relative_error(ours, theirs) < 1e-5
    if renorm != 0.5:
        return
    with torch.no_grad():
        images = pipe(PROMPTS, latents=pack_latents(noise), output_type="pt", **theirs_kw).images
    mine = text_to_image(model, PROMPTS, latents=noise.clone(), **ours_kw)
    assert relative_error(mine, images) < 1e-5


def test_prompt_states_ids_and_refusals(longcat_folder):
    """The 512 states past the template's prefix (quoted parts tokenised per character), the RoPE ids of
    prepare_pos_ids; bad values: one line."""
    pipe, _, model = longcat_folder
    theirs, text_ids = pipe.encode_prompt(PROMPTS)
    ours = model.encode_prompts(PROMPTS)
    assert ours.shape == (2, 512, 32) and relative_error(ours, theirs) < 1e-6
    from diffusers.pipelines.longcat_image.pipeline_longcat_image import prepare_pos_ids
    assert torch.equal(position_ids(0, 0, 512), text_ids)
    assert torch.equal(position_ids(1, 512, h=8, w=12), prepare_pos_ids(1, "image", (512, 512), height=4, width=6))
    other = text_to_image(model, PROMPTS, sampler="dpm-solver++-2m", steps=3, height=16, width=16, seed=0,
                          return_latents=True)  # any diffkit sampler, on its own grid
    assert other.shape == (2, 16, 8, 8) and bool(other.isfinite().all())
    for call, expected in [
        (dict(negative_prompt="ugly", guidance_scale=1.0), "a negative prompt with guidance_scale=1"),
        (dict(guidance_scale=float("nan")), "guidance_scale=nan is not allowed"),
        (dict(max_sequence_length=100), "max_sequence_length=100 is not allowed; LongCat-Image pads every prompt"),
        (dict(cfg_renorm_min=2.0), "cfg_renorm_min=2.0 is not allowed; give a number in [0, 1]"),
        (dict(height=10), "height x width 10x16 is not allowed; give positive multiples of 4"),
        (dict(negative_prompt=["a", "b"]), "negative_prompt has 2 entries for 1 prompts")]:
        with pytest.raises(DiffkitError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            text_to_image(model, "hot", **{"steps": 2, "height": 16, "width": 16, **call})
    with pytest.raises(DiffkitError, match="edit_image needs a LongCat-Image-Edit folder"):
        edit_image(model, Image.new("RGB", (8, 8)), "x")


def test_sample_command_is_the_library_and_refuses_what_does_not_apply(longcat_folder, tmp_path, capsys):
    _, path, model = longcat_folder
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--steps", "2", "--seed", "5", "--batch-size", "2", "--height", "16", "--width", "24",
                 "--negative-prompt", "ugly", "--guidance-scale", "30", "--guidance-convention", "diffusers",
                 "--cfg-renorm-min", "0.9", "--out", str(out), "--no-progress"]) == 0
    images = text_to_image(model, PROMPTS, steps=2, seed=5, height=16, width=24, negative_prompt="ugly",
                           guidance_scale=30.0, cfg_renorm_min=0.9, output_range="-1,1")
    # (s = 30 and M = 0.9: the tiny model's guided norm exceeds ||u_c|| / 0.9, so M matters, 0.05 from M = 0)
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert_sample_refusals(main, path, tmp_path, capsys, [
        (["--lora", str(tmp_path / "x.safetensors")], "--lora does not apply to a LongCat-Image folder"),
        (["--textual-inversion", str(tmp_path / "x.pt")], "--textual-inversion does not apply to a LongCat-Image"),
        (["--max-sequence-length", "100"], "--max-sequence-length does not apply to a LongCat-Image folder"),
        (["--flow-shift", "2"], "--flow-shift 2 moves a sampler's own grid"),
        (["--cfg-renorm-min", "2"], "--cfg-renorm-min=2.0 is out of range; allowed: a finite number in [0.0, 1.0]"),
        (["--cfg-renorm-min", "0.5", "--no-cfg-renorm"], "--cfg-renorm-min with --no-cfg-renorm is not allowed"),
        (["--bria-clip-value", "1"], "--bria-clip-value applies to a Bria 3.2 folder (BriaPipeline's clip_value); "),
        (["--guidance-schedule", "7,3"], "--guidance-schedule applies to an Ideogram 4 folder")])
    from diffkit.cli import build_parser
    from diffkit.commands._family_options import family_options
    args = build_parser().parse_args(["sample", "--checkpoint", str(path), "--no-cfg-renorm"])
    assert family_options(args, path) == {"cfg_renorm_min": None}  # (text_to_image's: enable_cfg_renorm=False)


@pytest.mark.parametrize("file,change,expected", [
    ("model_index.json", {"text_encoder": ["transformers", "T5EncoderModel"]}, "text_encoder is a 'T5EncoderModel'"),
    ("model_index.json", {"_class_name": "LongCatAudioDiTPipeline"}, "is not a LongCat-Image folder"),
    ("vae/config.json", {"latent_channels": 4}, "in_channels=64 and vae latent_channels=4 are not allowed"),
    ("scheduler/scheduler_config.json", {"stochastic_sampling": True}, "stochastic_sampling=True, which"),
])
def test_folders_diffkit_does_not_drive_are_refused(longcat_folder, tmp_path, file, change, expected):
    copy = tmp_path / "copy"
    shutil.copytree(longcat_folder[1], copy)
    data = json.loads((copy / file).read_text())
    (copy / file).write_text(json.dumps({**data, **change}))
    with pytest.raises(DiffkitError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_longcat_image(copy, progress=False)


def test_edit_matches_the_pipeline(edit_folder, small_area):
    """LongCatImageEditPipeline: the image at its 16-multiple calculated size, the prompt seeing it at half size
    (vision tokens; states from <|vision_start|> on), its latents (the posterior's mode) after z_t's tokens with
    modality-2 ids; CFG without renormalisation against "" and against a negative prompt; and the images."""
    pipe, _, model, image = edit_folder
    assert calculated_size(24, 16, AREA) == edit_module.calculate_dimensions(AREA, 24 / 16) == (48, 32)
    noise = torch.randn(1, 16, 16, 24, generator=torch.Generator().manual_seed(2))
    for negative, scale in ((None, 4.5), ("blurry", 2.0)):
        with torch.no_grad():
            theirs = pipe(image, "make it a 'cat'", negative_prompt=negative, guidance_scale=scale,
                          num_inference_steps=3, latents=pack_latents(noise), output_type="latent").images
        theirs = unpack_latents(theirs, 16, 24)
        ours = edit_image(model, image, "make it a 'cat'", area=AREA, steps=3, latents=noise.clone(),
                          negative_prompt=negative, guidance_scale=scale, return_latents=True)
        assert theirs.abs().max() > 0.5 and relative_error(ours, theirs) < 1e-5
    with torch.no_grad():
        images = pipe(image, "hot dog", num_inference_steps=2, latents=pack_latents(noise), output_type="pt").images
    mine = edit_image(model, image, "hot dog", area=AREA, steps=2, latents=noise.clone())
    assert relative_error(mine, images) < 1e-5
    for call, expected in [(dict(height=16), "height is not allowed for a LongCat-Image-Edit folder"),
                           (dict(area=10), "area=10 is not allowed")]:
        with pytest.raises(DiffkitError, match=expected):
            edit_image(model, image, "x", **call)
    with pytest.raises(DiffkitError, match="a LongCat-Image-Edit folder edits an image"):
        text_to_image(model, "x", steps=2, height=16, width=16)


def test_edit_command_is_the_library_and_refusals(edit_folder, longcat_folder, tmp_path, capsys):
    """``diffkit edit`` on an edit folder: image i edited alone from seed + i (the library's PNGs byte for byte); a
    text-to-image folder or flags an edit folder does not take: one line."""
    _, path, model, image = edit_folder
    inputs = tmp_path / "in"
    inputs.mkdir()
    image.save(inputs / "a.png")
    image.transpose(Image.FLIP_LEFT_RIGHT).save(inputs / "b.png")
    out = tmp_path / "out"
    args = ["edit", "--checkpoint", str(path), "--images", str(inputs), "--prompt", "hot", "--prompt", "dog",
            "--max-area", str(AREA), "--steps", "2", "--seed", "3", "--no-progress"]
    assert main(args + ["--out", str(out)]) == 0
    pixels = torch.from_numpy(np.stack([np.array(Image.open(inputs / n)) for n in ("a.png", "b.png")]))
    pixels = pixels.permute(0, 3, 1, 2).float() / 127.5 - 1
    expected = torch.cat([edit_image(model, pixels[i:i + 1], p, area=AREA, steps=2, seed=3 + i, output_range="-1,1")
                          for i, p in enumerate(("hot", "dog"))])
    save_images(expected, tmp_path / "expected", prefix="edit")
    for name in ("edit_00000.png", "edit_00001.png"):
        assert (out / name).read_bytes() == (tmp_path / "expected" / name).read_bytes()
    for extra, expected in [(["--strength", "0.5"], "--strength does not apply to a LongCat-Image-Edit folder"),
                            (["--height", "32"], "--height does not apply to a LongCat-Image-Edit folder")]:
        assert main(args + extra + ["--out", str(tmp_path / "x")]) == 2
        assert expected in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["sample", "--checkpoint", str(path), "--prompt", "x", "--out", str(tmp_path / "s.png")]) == 2
    assert "is a LongCat-Image-Edit folder, which diffkit sample does not take" in capsys.readouterr().err
    assert main(["edit", "--checkpoint", str(longcat_folder[1]), "--images", str(inputs), "--prompt", "x",
                 "--out", str(tmp_path / "y")]) == 2
    assert "is a LongCat-Image folder, which diffkit edit does not take" in capsys.readouterr().err
