"""Stable Diffusion x4 upscaler folders (diffkit.interop.sd_upscale, ``diffkit upscale --checkpoint UPSCALER_FOLDER
--images LOW/ --prompt TEXT``) against diffusers' own StableDiffusionUpscalePipeline on a tiny random folder of the real
one's structure: a UNet with in_channels 7 and ``num_class_embeds`` (the noise level as class label), a 3-level VAE
(f = 4, scaling_factor 0.08333), a CLIP text encoder, a DDPM low_res_scheduler and a v-prediction DDIM scheduler
(stabilityai/stable-diffusion-x4-upscaler's): the latents, the command's PNGs, and the refusals."""
import numpy as np
import pytest
import torch
from PIL import Image

from diffkit.cli import main
from diffkit.errors import DiffkitError

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
from test_cli_errors import one_line_error  # noqa: E402
from test_interop_diffusers import relative_error, tiny_sd_components  # noqa: E402
from test_latent_editing import DDIM_GRID, PROMPTS, _generators, write_pngs  # noqa: E402

STEPS, GUIDANCE, LEVEL = 3, 6.0, 60


def _schedulers():
    """The real folder's schedulers: low_res_scheduler DDPM (scaled-linear 1e-4..0.02), scheduler DDIM (same betas,
    v-prediction, steps_offset 1, set_alpha_to_one False)."""
    betas = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear")
    return (diffusers.DDPMScheduler(clip_sample=False, **betas),
            diffusers.DDIMScheduler(prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False,
                                    steps_offset=1, **betas))


@pytest.fixture(scope="module")
def upscaler(tmp_path_factory):
    """(the folder's StableDiffusionUpscalePipeline.from_pretrained, folder, two 8 x 8 RGB PNGs)."""
    root = tmp_path_factory.mktemp("sd_upscale")
    unet, _, text_encoder, tokenizer = tiny_sd_components(root, in_channels=7, num_class_embeds=1000)
    torch.manual_seed(1)  # the real VAE's structure (3 levels of 2 ResNets, f = 4), narrower
    vae = diffusers.AutoencoderKL(block_out_channels=[8, 16, 16], in_channels=3, out_channels=3, latent_channels=4,
                                  down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                                  layers_per_block=2, norm_num_groups=8, sample_size=32, scaling_factor=0.08333)
    low_res_scheduler, scheduler = _schedulers()
    diffusers.StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, low_res_scheduler=low_res_scheduler,
        scheduler=scheduler, max_noise_level=350).save_pretrained(root / "up")
    pipe = diffusers.StableDiffusionUpscalePipeline.from_pretrained(root / "up", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe, root / "up", write_pngs(root / "in", 2, 8, "RGB")


def _low_res(pngs):
    return [Image.open(pngs / f"in_{i}.png").convert("RGB") for i in range(2)]


def _theirs(pipe, pngs, output_type="latent", **kw):
    with torch.no_grad():
        return pipe(PROMPTS, image=_low_res(pngs), num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                    noise_level=LEVEL, negative_prompt=["ph"] * 2, output_type=output_type,
                    generator=_generators(), **{"eta": 0.0, **kw}).images


def test_upscaler_latents_and_images_match_the_pipeline(upscaler):
    """z_0 of upscale_sd (DDIM on the folder's grid, guidance 6, a negative prompt, noise level 60, per-image
    generators 10 / 11) is StableDiffusionUpscalePipeline's; so are the decoded 32 x 32 images; another noise level
    changes them (the level reaches the UNet's class embedding and the low-res noise)."""
    from diffkit.commands.edit import read_pngs
    from diffkit.interop.sd_upscale import is_upscale_folder, upscale_sd, upscale_settings
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    pipe, folder, pngs = upscaler
    assert is_upscale_folder(folder)
    sd = load_stable_diffusion(folder, progress=False, upscale=True)
    schedule, top = upscale_settings(folder)
    assert top == 350 and sd.vae_scale_factor == 4 and sd.prediction_type == "v_prediction"
    images, _ = read_pngs(pngs, "RGB")
    common = dict(low_res_schedule=schedule, negative_prompt="ph", guidance_scale=GUIDANCE, steps=STEPS, seed=10,
                  **DDIM_GRID)
    ours = upscale_sd(sd, images, PROMPTS, noise_level=LEVEL, return_latents=True, **common)
    theirs = _theirs(pipe, pngs)
    assert ours.shape == theirs.shape == (2, 4, 8, 8)
    assert relative_error(ours, theirs) < 1e-5
    decoded = sd.decode(ours).clamp(-1, 1)  # what upscale_sd returns without return_latents (the command's PNGs: TX2)
    pixels = torch.from_numpy(_theirs(pipe, pngs, output_type="np")).permute(0, 3, 1, 2) * 2 - 1
    assert decoded.shape == (2, 3, 32, 32) and (decoded - pixels).abs().max() < 1e-5
    other = upscale_sd(sd, images, PROMPTS, noise_level=0, return_latents=True, **common)
    assert relative_error(other, theirs) > 1e-3


def test_euler_scales_the_latents_not_the_low_res_image_and_guidance_1_is_unguided(upscaler):
    """EulerDiscreteScheduler scales the latents (scale_model_input) and concatenates the noised image unscaled;
    diffkit's euler calls the network with the VP latent and concatenates inside it: the same z_0. guidance_scale 1:
    the pipeline's unguided run (one call per step, no negative prompt). DDIM with eta 0.7: the steps' noise from the
    same per-image generators, after e and z_T, as the pipeline's scheduler.step draws it."""
    from diffkit.commands.edit import read_pngs
    from diffkit.interop.sd_upscale import upscale_sd, upscale_settings
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    pipe, folder, pngs = upscaler
    sd = load_stable_diffusion(folder, progress=False, upscale=True)
    schedule, _ = upscale_settings(folder)
    images, _ = read_pngs(pngs, "RGB")
    euler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="leading")
    with_euler = diffusers.StableDiffusionUpscalePipeline(**{**pipe.components, "scheduler": euler})
    with_euler.set_progress_bar_config(disable=True)
    ours = upscale_sd(sd, images, PROMPTS, low_res_schedule=schedule, negative_prompt="ph", guidance_scale=GUIDANCE,
                      noise_level=LEVEL, sampler="euler", steps=STEPS, seed=10, spacing="leading", final="zero",
                      steps_offset=1, return_latents=True)
    assert relative_error(ours, _theirs(with_euler, pngs)) < 1e-5
    ours = upscale_sd(sd, images, PROMPTS, low_res_schedule=schedule, guidance_scale=1, noise_level=LEVEL, steps=STEPS,
                      seed=10, return_latents=True, **DDIM_GRID)
    with torch.no_grad():
        theirs = pipe(PROMPTS, image=_low_res(pngs), num_inference_steps=STEPS, guidance_scale=1.0, noise_level=LEVEL,
                      eta=0.0, output_type="latent", generator=_generators()).images
    assert relative_error(ours, theirs) < 1e-5
    ours = upscale_sd(sd, images, PROMPTS, low_res_schedule=schedule, negative_prompt="ph", guidance_scale=GUIDANCE,
                      noise_level=LEVEL, steps=STEPS, seed=10, return_latents=True, **{**DDIM_GRID, "eta": 0.7})
    assert relative_error(ours, _theirs(pipe, pngs, eta=0.7)) < 1e-5


def test_upscale_command_writes_the_pipelines_pngs(upscaler, tmp_path, capsys):
    """`diffkit upscale --checkpoint UPSCALER --images DIR --prompt A --prompt B --negative-prompt ph`: the pipeline's
    PNGs (to the 8-bit level) in one batch and image by image (--batch-size 1), with the pipeline's DDIM at steps_offset
    0 and alpha 1 at the end (--spacing leading --final zero, as tests/test_sd_depth.py); the default --noise-level is
    the pipeline's 20."""
    pipe, folder, pngs = upscaler
    scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, steps_offset=0, set_alpha_to_one=True)
    pipe = diffusers.StableDiffusionUpscalePipeline(**{**pipe.components, "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    common = ["upscale", "--no-progress", "--device", "cpu", "--checkpoint", str(folder), "--images", str(pngs),
              "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--negative-prompt", "ph", "--steps", str(STEPS),
              "--spacing", "leading", "--final", "zero", "--guidance-scale", str(GUIDANCE), "--seed", "10"]
    for name, extra, level in (("batch", ["--noise-level", str(LEVEL)], LEVEL), ("single", ["--batch-size", "1"], 20)):
        assert main(common + extra + ["--out", str(tmp_path / name)]) == 0
        assert "8x8 -> 32x32" in capsys.readouterr().out
        ours = np.stack([np.asarray(Image.open(tmp_path / name / f"upscaled_{i:05d}.png")) for i in range(2)])
        with torch.no_grad():
            theirs = pipe(PROMPTS, image=_low_res(pngs), num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                          noise_level=level, negative_prompt=["ph"] * 2, eta=0.0, output_type="np",
                          generator=_generators()).images
        diff = np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max()
        assert diff <= 1, (name, diff)
        assert (tmp_path / name / "upscale_grid.png").is_file()


def test_refusals_are_one_line_before_any_output(upscaler, tmp_path, capsys):
    """An upscaler folder in sample / edit; flags that do not apply; a level past max_noise_level; a size that is no
    multiple of 4; --prompt on a diffkit checkpoint; guidance below 1: one line each, no output folder."""
    _, folder, pngs = upscaler
    out = tmp_path / "never"
    line = one_line_error(capsys, "sample", "--checkpoint", str(folder), "--prompt", "a", "--num", "1", "--out",
                          str(out / "s.png"))
    assert "has an x4 upscaler UNet (in_channels=7" in line and "use diffkit upscale" in line, line
    line = one_line_error(capsys, "edit", "--checkpoint", str(folder), "--images", str(pngs), "--prompt", "a",
                          "--out", str(out))
    assert "has an x4 upscaler UNet" in line and "use diffkit upscale" in line, line
    write_pngs(tmp_path / "odd", 1, 6, "RGB")
    base = ["upscale", "--checkpoint", folder, "--images", pngs, "--out", out, "--no-progress"]
    for extra, expected in [
        ([], "give --prompt TEXT"),
        (["--prompt", "a", "--noise-level", "351"], "--noise-level=351 is not allowed; allowed: an integer in 0..350"),
        (["--prompt", "a", "--no-ema"], "--no-ema does not apply to a Stable Diffusion upscaler folder"),
        (["--prompt", "a", "--mixed-precision", "bf16"], "--mixed-precision does not apply"),
        (["--prompt", "a", "--guidance-scale", "0.5"], "--guidance-scale=0.5 is not allowed; allowed: a number >= 1"),
        (["--prompt", "a", "--prompt", "b", "--prompt", "c"], "--prompt is given 3 times for 2 images"),
    ]:
        line = one_line_error(capsys, *map(str, base + extra))
        assert expected in line, (extra, line)
    line = one_line_error(capsys, "upscale", "--checkpoint", str(folder), "--images", str(tmp_path / "odd"), "--out",
                          str(out), "--prompt", "a")
    assert "are 6x6; allowed: sides that are multiples of 4" in line, line
    assert not out.exists()
    from diffkit.interop.sd_upscale import UpscaleUNetNet
    with pytest.raises(DiffkitError, match="give cond\\['low_res_image'\\] and cond\\['noise_level'\\]"):
        UpscaleUNetNet(torch.nn.Identity())(torch.zeros(1, 4, 2, 2), torch.zeros(1), low_res_image=torch.zeros(1))


def test_prompt_flags_on_a_diffkit_upscaler_are_refused(upscaler, tmp_path, capsys):
    """--prompt / --negative-prompt / --guidance-scale on anything but an upscaler folder (here a diffkit checkpoint's
    path): one line, before the checkpoint is read."""
    _, _, pngs = upscaler
    checkpoint = tmp_path / "sr.safetensors"
    for flag, value in (("--prompt", "a"), ("--negative-prompt", "b"), ("--guidance-scale", "3")):
        line = one_line_error(capsys, "upscale", "--checkpoint", str(checkpoint), "--images", str(pngs), "--out",
                              str(tmp_path / "never"), flag, value)
        assert f"{flag} applies to a Stable Diffusion x4 upscaler folder" in line, line
    assert not (tmp_path / "never").exists()


def test_the_decode_scale_is_the_pipelines_0_08333_whatever_the_folder_says(upscaler, tmp_path):
    """StableDiffusionUpscalePipeline sets vae.config.scaling_factor to 0.08333 when the folder has another value;
    load_stable_diffusion(..., upscale=True) does the same (and refuses the folder without upscale=True)."""
    import json
    import shutil
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    _, folder, _ = upscaler
    copy = shutil.copytree(folder, tmp_path / "up")
    config = json.loads((copy / "vae" / "config.json").read_text())
    (copy / "vae" / "config.json").write_text(json.dumps({**config, "scaling_factor": 0.18215}))
    assert load_stable_diffusion(copy, progress=False, upscale=True).scaling_factor == 0.08333
    with pytest.raises(DiffkitError, match="it upscales images; use diffkit upscale"):
        load_stable_diffusion(copy, progress=False)
