"""HunyuanImage 2.1 folders (diffkit.interop.hunyuan_image): text_to_image against diffusers' own
HunyuanImagePipeline on two tiny random folders (tests/_hunyuan_image_helpers.py: one with CFG-then-APG guiders, one
guidance-distilled MeanFlow one; nothing downloaded), ``diffkit sample`` on it (the library's PNG byte for byte) and
the one-line refusals."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.hunyuan_dit import is_hunyuan_dit_folder  # noqa: E402
from diffkit.interop.hunyuan_image import check_hunyuan_image_folder, glyph_text, is_hunyuan_image_folder  # noqa
from diffkit.interop.hunyuan_image import load_hunyuan_image, text_to_image  # noqa: E402

from _hunyuan_image_helpers import tiny_hunyuan_image_pipeline, tiny_hunyuan_image_refiner_pipeline  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402
from _pixart_helpers import assert_sample_refusals  # noqa: E402
from _sana_helpers import changed_copy  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

PROMPTS = ["a photo of cat", 'hot dog "the" ‘dog’']  # the second with glyphs: the OCR guider runs
SIZE = 8  # pixels (latents 8 x 4 x 4: VAE factor 2)


def _folder(tmp_path_factory, name, **kind):
    path = tmp_path_factory.mktemp(name) / name
    tiny_hunyuan_image_pipeline(**kind).save_pretrained(path)
    return reloaded(path, diffusers.HunyuanImagePipeline, load_hunyuan_image)


@pytest.fixture(scope="session")
def tiny_hunyuan_image_refiner(tmp_path_factory):
    """The same of a tiny HunyuanImageRefinerPipeline folder."""
    from diffkit.interop.hunyuan_image_refiner import load_hunyuan_image_refiner
    path = tmp_path_factory.mktemp("hunyuan_image_refiner") / "refiner"
    tiny_hunyuan_image_refiner_pipeline().save_pretrained(path)
    return reloaded(path, diffusers.HunyuanImageRefinerPipeline, load_hunyuan_image_refiner)


@pytest.fixture(scope="session")
def tiny_hunyuan_image(tmp_path_factory):
    """(HunyuanImagePipeline.from_pretrained of the saved guided folder, the folder, load_hunyuan_image of it)."""
    return _folder(tmp_path_factory, "hunyuan_image")


@pytest.fixture(scope="session")
def tiny_hunyuan_image_distilled(tmp_path_factory):
    """The same of the guidance-distilled MeanFlow folder (no guiders)."""
    return _folder(tmp_path_factory, "hunyuan_image_distilled", distilled=True)


def _noise():
    return torch.randn(2, 8, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(1))


def _theirs(pipe, noise, steps=2, **call):
    with torch.no_grad():
        return pipe(prompt=PROMPTS, num_inference_steps=steps, latents=noise, height=SIZE, width=SIZE,
                    output_type="latent", **call).images


def test_hunyuan_image_samples_as_the_pipeline(tiny_hunyuan_image):
    """The Qwen state -3 and mask, the ByT5 glyph states (zeros for a prompt without quotes); the OCR guider (some
    prompt has glyphs): CFG at call 0, APG with momentum, norm cap and eta at call 1; final latents, decoded images."""
    from diffusers.pipelines.hunyuan_image.pipeline_hunyuanimage import extract_glyph_text
    pipe, path, model = tiny_hunyuan_image
    assert is_hunyuan_image_folder(path) and not is_hunyuan_dit_folder(path)
    for text in PROMPTS + ["“a” and 'b' \"c\"", "none"]:
        assert glyph_text(text) == extract_glyph_text(text)
    ours = model.encode_prompts(PROMPTS)  # (the latents below compare them with the pipeline's)
    assert ours[0].shape[1] == ours[1].shape[1] == 1000 and not bool(ours[1].all())
    assert not ours[3][0].any() and ours[3][1].any()
    assert model.guidance_of(ours[2][:1]).scale == 3.5 and model.guidance_of(ours[2]).scale == 2.5
    noise = _noise()
    z0 = text_to_image(model, PROMPTS, steps=2, latents=noise, return_latents=True)
    error = relative_error(z0, _theirs(pipe, noise))
    print("HunyuanImagePipeline latents (CFG, then APG)", error)
    assert error < 1e-5  # measured: see docs/interop/hunyuan_image.md
    with torch.no_grad():
        theirs = pipe.image_processor.postprocess(pipe.vae.decode(z0 / pipe.vae.config.scaling_factor)[0], "pt")
    error = relative_error((model.decode(z0) / 2 + 0.5).clamp(0, 1), theirs)
    print("HunyuanImagePipeline images", error)
    assert error < 1e-5


def test_distilled_meanflow_folder_samples_as_the_pipeline(tiny_hunyuan_image_distilled):
    """A guidance-distilled MeanFlow transformer without guiders: the embedded 1000 x distilled_guidance_scale, the
    next step's timestep_r, one call per step; its loop alone (another sampler: one line)."""
    pipe, _, model = tiny_hunyuan_image_distilled
    noise = _noise()
    ours = text_to_image(model, PROMPTS, steps=2, latents=noise, return_latents=True, distilled_guidance_scale=2.0)
    error = relative_error(ours, _theirs(pipe, noise, distilled_guidance_scale=2.0))
    print("HunyuanImagePipeline distilled MeanFlow latents", error)
    assert error < 1e-5
    with pytest.raises(DiffkitError, match="runs on the pipeline's loop alone"):
        text_to_image(model, PROMPTS, sampler="unipc", steps=2, latents=noise)


def test_hunyuan_image_sample_command_is_the_library(tiny_hunyuan_image, tmp_path, capsys):
    """``diffkit sample`` with one of diffkit's samplers (UniPC on the flow schedule's grid) and --guidance-scale 1
    (the guider off: one call per step) writes the library's PNG byte for byte."""
    from diffkit.images import save_grid
    _, path, model = tiny_hunyuan_image
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--steps", "1", "--seed", "5", "--batch-size", "2", "--height", str(SIZE), "--width",
                 str(SIZE), "--sampler", "unipc", "--guidance-scale", "1", "--guidance-convention", "diffusers",
                 "--out", str(out), "--no-progress"]) == 0
    images = text_to_image(model, PROMPTS, sampler="unipc", steps=1, seed=5, height=SIZE, width=SIZE,
                           guidance_scale=1.0, output_range="-1,1")
    assert bool(images.isfinite().all())
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert "HunyuanImage folder" in capsys.readouterr().out


def test_what_hunyuan_image_does_not_take_is_refused_in_one_line(tiny_hunyuan_image, tiny_hunyuan_image_refiner,
                                                                  tmp_path, capsys):
    """Folders diffkit does not drive (from the JSON alone; a refiner folder as a base one), bad library arguments
    and what the command does not take: one line each, no file written."""
    from diffkit.interop.hunyuan_image_refiner import check_hunyuan_image_refiner_folder
    _, path, model = tiny_hunyuan_image
    for i, (file, change, expected) in enumerate([
            ("transformer/config.json", {"in_channels": 8}, "allowed: 16, 8 (4 x and 2 x the VAE's latent"),
            ("transformer/config.json", {"patch_size": [1, 1]}, "allowed: [1, p, p] (one frame)")]):
        with pytest.raises(DiffkitError, match=r"^[^\n]*$") as caught:
            check_hunyuan_image_refiner_folder(changed_copy(tiny_hunyuan_image_refiner[1], tmp_path / f"r{i}", file,
                                                            change))
        assert expected in str(caught.value)
    for i, (file, change, expected) in enumerate([
            ("model_index.json", {"_class_name": "HunyuanImageRefinerPipeline"}, "which diffkit drives as an edit"),
            ("model_index.json", {"guider": ["diffusers", "ClassifierFreeGuidance"]},
             "allowed: AdaptiveProjectedMixGuidance or null"),
            ("guider/guider_config.json", {"guidance_rescale": 0.7}, "guidance_rescale=0.7"),
            ("ocr_guider/guider_config.json", {"stop": 0.5}, "allowed: stop=1.0"),
            ("transformer/config.json", {"in_channels": 16}, "allowed: the VAE's latent channels 8"),
            ("scheduler/scheduler_config.json", {"use_dynamic_shifting": True}, "use_dynamic_shifting=True")]):
        with pytest.raises(DiffkitError) as caught:
            check_hunyuan_image_folder(changed_copy(path, tmp_path / str(i), file, change))
        assert expected in str(caught.value) and "\n" not in str(caught.value)
    for call, expected in [({"max_sequence_length": 300}, "fixed at 1000"), ({"height": 6}, "multiples of 4"),
                           ({"ip_adapter": object()}, "IP-Adapter is not allowed"),
                           ({"guidance_scale": 1.0, "negative_prompt": "x"}, "a negative prompt is not allowed"),
                           ({"distilled_guidance_scale": 2.0}, "has no guidance embedding"),
                           ({"guidance_scale": float("nan")}, "give a finite number")]:
        with pytest.raises(DiffkitError, match=expected):
            text_to_image(model, "hot", steps=1, **{"height": SIZE, "width": SIZE, **call})
    assert_sample_refusals(main, path, tmp_path, capsys, [
        (["--lora", str(tmp_path / "x.safetensors")], "--lora"),
        (["--prompt-2", "x"], "--prompt-2 does not apply to a HunyuanImage folder"),
        (["--max-sequence-length", "300"], "--max-sequence-length does not apply to a HunyuanImage folder"),
        (["--height", "6"], "--height 6 is not allowed; give a positive multiple of 4")], label="a HunyuanImage")


def test_refiner_refines_as_the_pipeline(tiny_hunyuan_image_refiner, tmp_path, capsys):
    """HunyuanImageRefinerPipeline with one generator per image (the posterior sample, z, then the condition's
    noise), its template, the embedded guidance, one-frame 3-D patches: final latents and decoded images; ``diffkit
    edit`` on the folder writes the library's PNGs byte for byte; ``diffkit sample`` and a mask are refused."""
    from diffkit.commands.edit import read_pngs
    from diffkit.images import save_images
    from diffkit.interop.hunyuan_image_refiner import refine
    pipe, path, model = tiny_hunyuan_image_refiner
    save_images(torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) * 2 - 1, tmp_path / "in",
                prefix="in")
    pixels, _ = read_pngs(tmp_path / "in", "RGB")
    ours = refine(model, pixels, PROMPTS, steps=2, seed=5, distilled_guidance_scale=2.0, return_latents=True)
    with torch.no_grad():
        theirs = pipe(prompt=PROMPTS, image=pixels / 2 + 0.5, height=SIZE, width=SIZE, num_inference_steps=2,
                      distilled_guidance_scale=2.0, output_type="latent",
                      generator=[torch.Generator().manual_seed(5 + i) for i in range(2)]).images
        restored = pipe._restore_image_tokens_order(theirs / pipe.vae.config.scaling_factor)
        images = pipe.image_processor.postprocess(pipe.vae.decode(restored)[0].squeeze(2), "pt")
    error = relative_error(ours, theirs[:, :, 0])
    print("HunyuanImageRefinerPipeline latents", error)
    assert error < 1e-5
    error = relative_error((model.decode(ours) / 2 + 0.5).clamp(0, 1), images)
    print("HunyuanImageRefinerPipeline images", error)
    assert error < 1e-5
    assert main(["edit", "--checkpoint", str(path), "--images", str(tmp_path / "in"), "--prompt", PROMPTS[1],
                 "--steps", "1", "--seed", "2", "--out", str(tmp_path / "edited"), "--no-progress"]) == 0
    save_images(refine(model, pixels, PROMPTS[1], steps=1, seed=2, output_range="-1,1"), tmp_path / "expected",
                prefix="edit")
    for name in ("edit_00000.png", "edit_00001.png"):
        assert (tmp_path / "edited" / name).read_bytes() == (tmp_path / "expected" / name).read_bytes()
    with pytest.raises(DiffkitError, match="the refiner does not inpaint"):
        refine(model, pixels, "x", mask=torch.ones(1, 1, SIZE, SIZE))
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(path), "--prompt", "x", "--out", str(tmp_path / "never.png")]) == 2
    assert "which diffkit sample does not take" in capsys.readouterr().err
    for flag in (["--mask", str(tmp_path / "in" / "in_00000.png")], ["--strength", "0.5"]):
        assert main(["edit", "--checkpoint", str(path), "--images", str(tmp_path / "in"), "--prompt", "x", *flag,
                     "--out", str(tmp_path / "never")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{flag[0]} does not apply to a HunyuanImage refiner folder" in err[0]
    assert not (tmp_path / "never").exists() and not (tmp_path / "never.png").exists()
