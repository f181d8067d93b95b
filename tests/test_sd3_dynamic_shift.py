"""SD3 folders whose FlowMatchEulerDiscreteScheduler has use_dynamic_shifting=true (diffkit.interop.sd3): the
pipelines' resolution-dependent mu (calculate_shift of the sequence length) against diffusers'
StableDiffusion3Pipeline / StableDiffusion3Img2ImgPipeline at two image sizes, on the tiny folder of test_interop_sd3
with its scheduler config rewritten."""
import json
import math
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.sd3 import image_to_image, load_sd3, text_to_image  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
import test_interop_sd3  # noqa: E402

PROMPTS = test_interop_sd3.PROMPTS
tiny_sd3 = test_interop_sd3.tiny_sd3  # the folder fixture, shared
# sequence lengths 16 (16 x 16 images: latents 8 x 8, patch 2) and 24 (24 x 16) on a line through (4, 0.5), (64, 1.6)
DYNAMIC = {"use_dynamic_shifting": True, "base_image_seq_len": 4, "max_image_seq_len": 64, "base_shift": 0.5,
           "max_shift": 1.6}


def _folder(folder, root, **config):
    shutil.copytree(folder, root)
    path = root / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return root


@pytest.fixture(scope="module")
def dynamic_sd3(tiny_sd3, tmp_path_factory):
    """{time_shift_type: (the pipeline with the folder's scheduler, load_sd3 of the folder, the folder)}."""
    pipe, folder, _ = tiny_sd3[True]
    out = {}
    for kind in ("exponential", "linear"):
        root = _folder(folder, tmp_path_factory.mktemp("sd3_dynamic") / "sd3", time_shift_type=kind, **DYNAMIC)
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(root / "scheduler")
        ours = diffusers.StableDiffusion3Pipeline(**{**pipe.components, "scheduler": scheduler})
        ours.set_progress_bar_config(disable=True)
        out[kind] = (ours, load_sd3(root, progress=False), root)
    return out


@pytest.mark.parametrize("kind", ["exponential", "linear"])
@pytest.mark.parametrize("height, width", [(16, 16), (24, 16)])
def test_sd3_dynamic_shifting_matches_the_pipeline(dynamic_sd3, kind, height, width):
    """text_to_image on the scheduler's sigmas after set_timesteps(steps, mu=calculate_shift(L)), L = (h/2)(w/2)
    latent patches, = StableDiffusion3Pipeline at two sizes; the other samplers' schedule is the flow schedule with
    shift e^mu ("exponential") or mu ("linear")."""
    pipe, sd3, _ = dynamic_sd3[kind]
    h, w = height // 2, width // 2
    mu = 0.5 + (1.6 - 0.5) / 60 * ((h // 2) * (w // 2) - 4)
    assert sd3.mu(h, w) == pytest.approx(mu)
    shift = math.exp(mu) if kind == "exponential" else mu
    assert sd3.denoiser_for(h, w).schedule.alphas_cumprod.allclose(
        __import__("diffkit.schedule", fromlist=["x"]).NoiseSchedule.flow(1000, shift).alphas_cumprod)
    latents = torch.randn(2, 4, h, w, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        theirs = pipe(PROMPTS, num_inference_steps=4, guidance_scale=4.0, latents=latents.clone(), height=height,
                      width=width, output_type="latent", max_sequence_length=12, negative_prompt="ugly").images
    ours = text_to_image(sd3, PROMPTS, steps=4, guidance_scale=4.0, latents=latents, height=height, width=width,
                         max_sequence_length=12, negative_prompt="ugly", return_latents=True)
    error = relative_error(ours, theirs)
    print("dynamic", kind, height, width, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)
    unipc = text_to_image(sd3, PROMPTS, sampler="unipc", steps=4, guidance_scale=4.0, latents=latents,
                          height=height, width=width, max_sequence_length=12, return_latents=True)
    assert unipc.shape == ours.shape and bool(torch.isfinite(unipc).all())


@pytest.mark.parametrize("height, width", [(16, 16), (24, 16)])
def test_sd3_dynamic_shifting_img2img_matches_the_pipeline(dynamic_sd3, height, width):
    """image_to_image = StableDiffusion3Img2ImgPipeline with mu of the images' size (int(H) // f // p ...)."""
    pipe, sd3, _ = dynamic_sd3["exponential"]
    images = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(3))
    img2img = diffusers.StableDiffusion3Img2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = img2img(PROMPTS, image=images, strength=0.6, num_inference_steps=4, guidance_scale=4.0,
                         height=height, width=width, output_type="latent", max_sequence_length=12,
                         generator=[torch.Generator().manual_seed(5 + i) for i in range(2)]).images
    ours = image_to_image(sd3, images * 2 - 1, PROMPTS, 0.6, steps=4, guidance_scale=4.0, seed=5,
                          max_sequence_length=12, return_latents=True)
    error = relative_error(ours, theirs)
    print("dynamic img2img", height, width, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)


def test_sd3_dynamic_shifting_with_skip_layer_guidance_matches_the_pipeline(dynamic_sd3):
    """Skip-layer guidance's window on the scheduler's sigmas of the size's mu: StableDiffusion3Pipeline(
    skip_guidance_layers=[0]) at 48 x 32 (mu 2.2, the default size's 0.65), steps 1 and 2 of 6 guided."""
    pipe, sd3, _ = dynamic_sd3["exponential"]
    latents = torch.randn(2, 4, 24, 16, generator=torch.Generator().manual_seed(7))
    slg = {"skip_guidance_layers": [0], "skip_layer_guidance_scale": 2.0, "skip_layer_guidance_start": 0.01,
           "skip_layer_guidance_stop": 0.5}
    with torch.no_grad():
        theirs = pipe(PROMPTS, num_inference_steps=6, guidance_scale=4.0, latents=latents.clone(), height=48,
                      width=32, output_type="latent", max_sequence_length=12, **slg).images
    ours = text_to_image(sd3, PROMPTS, steps=6, guidance_scale=4.0, latents=latents, height=48, width=32,
                         max_sequence_length=12, return_latents=True, **slg)
    error = relative_error(ours, theirs)
    print("dynamic slg", float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)


def test_sd3_dynamic_shifting_refusals(tiny_sd3, tmp_path):
    """A use_dynamic_shifting / time_shift_type / invert_sigmas the pipelines do not take: one line. (An SD3 ControlNet
    with a dynamic shift, refused before, is compared with the ControlNet pipeline in tests/test_cli_audit_more.py.)"""
    _, folder, _ = tiny_sd3[True]
    for name, config, match in (("a", {"use_dynamic_shifting": "yes"}, "use_dynamic_shifting='yes' is not allowed"),
                                ("b", {**DYNAMIC, "time_shift_type": "cubic"}, "time_shift_type"),
                                ("c", {**DYNAMIC, "invert_sigmas": True}, "invert_sigmas=True")):
        with pytest.raises(DiffkitError, match=match):
            load_sd3(_folder(folder, tmp_path / name, **config), progress=False)


def test_sample_command_on_a_dynamic_shifting_folder(dynamic_sd3, tmp_path, capsys):
    """`diffkit sample --height 24 --width 16` on the folder writes text_to_image's grid byte for byte (mu of that
    size)."""
    from diffkit.cli import main
    from diffkit.images import save_grid
    _, sd3, folder = dynamic_sd3["exponential"]
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--num", "2", "--steps", "3",
                 "--height", "24", "--width", "16", "--guidance-convention", "diffusers", "--guidance-scale", "4",
                 "--max-sequence-length", "12", "--no-progress", "--seed", "5", "--out", str(out)]) == 0
    expected = text_to_image(sd3, [PROMPTS[0]] * 2, steps=3, seed=5, guidance_scale=4.0, height=24, width=16,
                             max_sequence_length=12, output_range="-1,1")
    save_grid(expected, tmp_path / "expected.png", 8)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    capsys.readouterr()
