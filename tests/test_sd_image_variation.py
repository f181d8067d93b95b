"""Stable Diffusion image variation folders (diffkit.interop.sd_image_variation) against diffusers' own
StableDiffusionImageVariationPipeline on one tiny random folder saved with save_pretrained (the tiny SD UNet and VAE
of test_interop_diffusers, a CLIPVisionModelWithProjection of two layers whose projection is the UNet's
cross-attention width, a CLIPImageProcessor at 28 px, PNDMScheduler(skip_prk_steps) as lambdalabs'): the same
pictures and per-sample generators on both sides, the final latents compared for the folder's loop under four
scheduler classes; ``diffkit sample --image`` against the pipeline's 8-bit images; the refusals."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop import sd_image_variation as variation  # noqa: E402

from _pipeline_folders import reloaded  # noqa: E402
from test_interop_diffusers import relative_error, tiny_sd_components  # noqa: E402

STEPS = 3


def _png(path, seed, size=(20, 26)):
    from PIL import Image
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    """(pipeline, path, our ImageVariation, two PNG paths): not square pictures, so the processor resizes and
    crops them."""
    root = tmp_path_factory.mktemp("sd_image_variation")
    unet, vae, _, _ = tiny_sd_components(root)
    torch.manual_seed(1)
    encoder = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=28,
        patch_size=7, projection_dim=32)).eval()
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    scheduler = diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    diffusers.StableDiffusionImageVariationPipeline(
        vae=vae, image_encoder=encoder, unet=unet, scheduler=scheduler, safety_checker=None,
        feature_extractor=processor, requires_safety_checker=False).save_pretrained(root / "iv")
    pipe, path, model = reloaded(root / "iv", diffusers.StableDiffusionImageVariationPipeline,
                                 variation.load_image_variation)
    return pipe, path, model, [_png(root / "a.png", 0), _png(root / "b.png", 1, (30, 22))]


def _pipeline(pipe, scheduler, images, scale, seed=5, output_type="latent", **options):
    """The pipeline on the PIL ``images`` with ``scheduler`` (then its own again), image i from seed + i."""
    from PIL import Image
    own, pipe.scheduler = pipe.scheduler, scheduler
    try:
        with torch.no_grad():
            return pipe([Image.open(p).convert("RGB") for p in images], num_inference_steps=STEPS,
                        guidance_scale=scale, output_type=output_type,
                        generator=[torch.Generator().manual_seed(seed + i) for i in range(len(images))],
                        **options).images
    finally:
        pipe.scheduler = own


def test_the_folders_loop_matches_the_pipeline(folder):
    """The folder's loop (sampler None) for PNDM (the folder's own), DDIM (with eta: the steps' noise from the same
    generators), Euler and DPM-Solver++ (2M); s = 1 is one unguided pass as there, compared on the images too."""
    pipe, _, model, images = folder
    config = dict(pipe.scheduler.config)
    cases = [(diffusers.PNDMScheduler, {}, 5.0, {}), (diffusers.DDIMScheduler, {"clip_sample": False}, 3.0,
                                                      {"eta": 0.7}),
             (diffusers.EulerDiscreteScheduler, {}, 5.0, {}), (diffusers.DPMSolverMultistepScheduler, {}, 5.0, {})]
    samplers = []
    for cls, changes, scale, extra in cases:
        scheduler = cls.from_config(config, **changes)
        ours_model = dataclasses.replace(model, scheduler_config={**scheduler.config, "_class_name": cls.__name__})
        samplers.append(ours_model.folder_sampler()[0])
        theirs = _pipeline(pipe, scheduler, images, scale, **extra)
        ours = variation.image_variation(ours_model, images, steps=STEPS, guidance_scale=scale, seed=5,
                                         return_latents=True, **extra)
        assert relative_error(ours, theirs) < 1e-5, cls.__name__
    assert samplers == ["pndm-skip-prk", "ddim", "euler", "dpm-solver++-2m"]
    theirs = _pipeline(pipe, pipe.scheduler, images, 1.0, output_type="pt")
    embeds = model.encode_images(images)
    ours = variation.image_variation(model, None, image_embeds=embeds, steps=STEPS, guidance_scale=1.0, seed=5)
    assert ours.shape == theirs.shape == (2, 3, 16, 16)
    assert 0.9 < ((theirs > 0) & (theirs < 1)).float().mean()  # the clamp hides little
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    from PIL import Image
    reference = pipe._encode_image([Image.open(p).convert("RGB") for p in images], "cpu", 1, True)
    torch.testing.assert_close(torch.cat([torch.zeros_like(embeds), embeds]), reference)


def test_diffkit_sample_writes_the_pipelines_images(folder, tmp_path, capsys):
    """Two --image rows of one sample each at --guidance-scale 4 (diffusers), the folder's PNDM loop by default:
    the pipeline's images (output_type np) to within one 8-bit level."""
    from PIL import Image
    pipe, path, _, images = folder
    assert main(["sample", "--checkpoint", str(path), "--image", str(images[0]), "--image", str(images[1]), "--num",
                 "2", "--steps", str(STEPS), "--guidance-scale", "4", "--guidance-convention", "diffusers", "--seed",
                 "3", "--out", str(tmp_path / "grid.png"), "--individual", str(tmp_path / "one"),
                 "--no-progress"]) == 0
    assert "pndm-skip-prk on the scheduler's timesteps" in capsys.readouterr().out
    theirs = _pipeline(pipe, pipe.scheduler, images, 4.0, seed=3, output_type="np")
    ours = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "one").glob("*.png"))])
    assert np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1


@pytest.mark.parametrize("flags, match", [
    ([], "give --image PNG"),
    (["--image", "A", "--prompt", "a cat"], "--prompt does not apply"),
    (["--image", "A", "--negative-prompt", "x"], "--negative-prompt does not apply"),
    (["--image", "A", "--pag-scale", "1"], "--pag-scale does not apply"),
    (["--image", "A", "--sag-scale", "1"], "--sag-scale does not apply"),
    (["--image", "A", "--scheduler", "lcm"], "--scheduler does not apply"),
    (["--image", "NOT_AN_IMAGE"], "cannot be read as an image"),
])
def test_sample_refusals(folder, tmp_path, capsys, flags, match):
    _, path, _, images = folder
    flags = [str(images[0]) if f == "A" else str(tmp_path / "nothing.png") if f == "NOT_AN_IMAGE" else f
             for f in flags]
    assert main(["sample", "--checkpoint", str(path), "--out", str(tmp_path / "out" / "g.png"), *flags]) != 0
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_other_refusals(folder, tmp_path, capsys):
    """--image elsewhere, diffkit edit and load_stable_diffusion on the folder, the pipeline's missing options, an
    LCM scheduler and a too narrow image encoder (JSON only)."""
    from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image
    pipe, path, model, images = folder
    assert main(["sample", "--checkpoint", str(tmp_path), "--image", str(images[0])]) != 0
    assert "--image applies to a Stable Diffusion image variation folder" in capsys.readouterr().err
    assert main(["edit", "--checkpoint", str(path), "--images", str(images[0]), "--prompt", "x", "--out",
                 str(tmp_path / "edited")]) != 0
    assert "use diffkit sample --checkpoint" in capsys.readouterr().err and not (tmp_path / "edited").exists()
    with pytest.raises(DiffkitError, match="image variation folder"):
        load_stable_diffusion(path)
    for bad in ({"negative_prompt": "x"}, {"controlnet": object()}, {"pag_scale": 1.0}):
        with pytest.raises(DiffkitError, match=f"{next(iter(bad))}= is not allowed with an image variation folder"):
            variation.image_variation(model, images, steps=1, **bad)
    with pytest.raises(DiffkitError, match="guidance_rescale=0.5 is not allowed"):  # text_to_image itself
        text_to_image(model, images, steps=1, guidance_rescale=0.5)
    with pytest.raises(DiffkitError, match="no text encoder"):
        model.encode_prompts(["a cat"])
    for part, change, match in (("scheduler/scheduler_config.json", {"_class_name": "LCMScheduler"},
                                 "scheduler is a LCMScheduler"),
                                ("image_encoder/config.json", {"projection_dim": 16}, "projection_dim=16")):
        shutil.rmtree(tmp_path / "copy", ignore_errors=True)
        shutil.copytree(path, tmp_path / "copy")
        copy = tmp_path / "copy" / part
        copy.write_text(json.dumps({**json.loads(copy.read_text()), **change}))
        with pytest.raises(DiffkitError, match=match):
            variation.check_image_variation_folder(tmp_path / "copy")
