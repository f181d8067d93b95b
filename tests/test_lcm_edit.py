"""``diffkit edit`` on latent / trajectory consistency folders (diffkit.interop.lcm_edit): img2img of an LCM folder
against LatentConsistencyModelImg2ImgPipeline, ``--scheduler lcm|tcd`` against StableDiffusionImg2ImgPipeline /
StableDiffusionXLImg2ImgPipeline with LCMScheduler / TCDScheduler.from_config, 4-channel inpainting against
StableDiffusionInpaintPipeline with the LCMScheduler, on the tiny random folders of the LCM / scheduler tests;
strengths 0.5 and 1, the same per-image generators (posterior sample, noise, then the steps' noise)."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.lcm_edit import source_times_strength  # noqa: E402
from diffkit.interop.stable_diffusion import load_stable_diffusion  # noqa: E402
from diffkit.latent_editing import latent_img2img, latent_inpaint  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
import test_interop_lcm  # noqa: E402
import test_sd_scheduler  # noqa: E402
from test_interop_lcm import PROMPTS, SMALL_SCALING, _variant  # noqa: E402
from test_latent_editing import cli, write_pngs  # noqa: E402

lcm = test_interop_lcm.lcm  # the fixtures: an LCM folder (w input); the DDIM folder + LoRA and its scheduler copies
plain, small_scaling, small_tcd = test_sd_scheduler.plain, test_sd_scheduler.small_scaling, test_sd_scheduler.small_tcd

IMAGE = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))  # [0, 1], the pipelines' range


def _generators(seed=10):
    return [torch.Generator().manual_seed(seed + i) for i in range(2)]


def _edit(pipe, strength, steps, scale, output_type="latent", **kw):
    with torch.no_grad():
        return pipe(PROMPTS, image=IMAGE, strength=strength, num_inference_steps=steps, guidance_scale=scale,
                    output_type=output_type, generator=_generators(), **kw).images


def _ours(edit, denoiser, sd, cond, *args, **kw):
    return edit(denoiser, sd, IMAGE * 2 - 1, *args, posterior="sample", seed=10, cond=cond, progress=False,
                return_latents=True, **kw)


@pytest.mark.parametrize("strength", [0.5, 1.0])
@pytest.mark.parametrize("steps,options", [(4, {}), (3, SMALL_SCALING)])
def test_lcm_folder_img2img_is_latent_consistency_model_img2img_pipeline(lcm, tmp_path, strength, steps, options):
    """An LCM folder (UNet with w input): all ``steps`` run on the lcm spacing of the first int(N s) source times
    (LCMScheduler.set_timesteps(strength=s)), w = s - 1 embedded, the last step's x0 returned. Measured max
    relative difference 3e-7 (z_0); SDEdit's cut of the full grid instead differs at strength 0.5."""
    pipe, folder = _variant(*lcm, tmp_path, options)
    ours_pipe = diffusers.LatentConsistencyModelImg2ImgPipeline(**pipe.components)
    ours_pipe.set_progress_bar_config(disable=True)
    sd = load_stable_diffusion(folder, progress=False)
    theirs = _edit(ours_pipe, strength, steps, 8.5)
    weighted = sd.with_weight(8.5)
    denoiser, cut = source_times_strength(weighted, strength, steps, "lcm")
    assert cut == 1.0 and len(denoiser.consistency_times) == int(len(weighted.consistency_times) * strength)
    cond = {"context": sd.encode_prompts(PROMPTS)}
    ours = _ours(latent_img2img, denoiser, sd, cond, 1.0, "consistency", steps)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    if strength < 1:  # SDEdit's cut (StableDiffusionImg2ImgPipeline's get_timesteps) is another chain
        assert relative_error(_ours(latent_img2img, weighted, sd, cond, strength, "consistency", steps), theirs) > 1e-3


@pytest.mark.parametrize("strength", [0.5, 1.0])
@pytest.mark.parametrize("name", ["lcm", "tcd"])
def test_scheduler_override_img2img_is_img2img_pipeline_with_that_scheduler(plain, small_scaling, small_tcd, name,
                                                                             strength):
    """``scheduler="lcm"|"tcd"`` + the LoRA = StableDiffusionImg2ImgPipeline + {LCM,TCD}Scheduler.from_config + the
    fused LoRA: the last int(S s) of the S steps (get_timesteps), s = 1.5 (classifier-free guidance), TCD's eta =
    gamma 0.3 on ``tcd:sigma_min``. Measured max relative difference 4e-7."""
    fused, _, lora = plain
    folder = small_scaling if name == "lcm" else small_tcd
    cls = diffusers.LCMScheduler if name == "lcm" else diffusers.TCDScheduler
    base = diffusers.DDIMScheduler.from_pretrained(folder / "scheduler")
    pipe = diffusers.StableDiffusionImg2ImgPipeline(**{**fused.components, "scheduler": cls.from_config(base.config)})
    pipe.set_progress_bar_config(disable=True)
    sd = load_stable_diffusion(folder, lora=[lora], scheduler=name, progress=False)
    theirs = _edit(pipe, strength, 4, 1.5, **({"eta": 0.3} if name == "tcd" else {}))
    guided = sd.guided(1.5, sd.encode_prompts([""]))
    sampler = "consistency" if name == "lcm" else "tcd:sigma_min"
    ours = _ours(latent_img2img, guided, sd, sd.cond(sd.encode_prompts(PROMPTS)), strength, sampler, 4)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)


@pytest.fixture(scope="module")
def tiny_xl(tmp_path_factory):
    """(the tiny SD-XL pipeline, its folder)."""
    from test_interop_sd_xl import tiny_sd_xl_pipeline
    root = tmp_path_factory.mktemp("lcm_edit_xl")
    pipe = tiny_sd_xl_pipeline(root)
    pipe.save_pretrained(root / "xl")
    return pipe, root / "xl"


@pytest.mark.parametrize("name", ["lcm", "tcd"])
def test_sd_xl_lcm_and_tcd_img2img_are_the_xl_img2img_pipeline(tiny_xl, name):
    """SD-XL with ``scheduler="lcm"|"tcd"``: StableDiffusionXLImg2ImgPipeline with that scheduler (time ids of the
    images' size, requires_aesthetics_score False), strength 0.5, s = 1, eta 0.3. Measured 6.6e-7 relative."""
    pipe, folder = tiny_xl
    cls = diffusers.LCMScheduler if name == "lcm" else diffusers.TCDScheduler
    img2img = diffusers.StableDiffusionXLImg2ImgPipeline(
        **{**pipe.components, "scheduler": cls.from_config(pipe.scheduler.config)}, requires_aesthetics_score=False,
        add_watermarker=False)
    img2img.set_progress_bar_config(disable=True)
    theirs = _edit(img2img, 0.5, 4, 1.0, **({"eta": 0.3} if name == "tcd" else {}))
    xl = load_stable_diffusion(folder, scheduler=name, progress=False)
    guided, cond = xl.prompt_guidance(PROMPTS, None, 1.0, "diffusers", 0.0, image_size=(16, 16))
    ours = _ours(latent_img2img, guided, xl, cond, 0.5, "consistency" if name == "lcm" else "tcd:sigma_min", 4)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)


@pytest.mark.parametrize("strength", [0.5, 1.0])
@pytest.mark.parametrize("name", ["lcm", "tcd", "lcm_w"])
def test_inpainting_is_the_inpaint_pipeline_with_lcm_or_tcd_scheduler(lcm, plain, small_scaling, small_tcd, name,
                                                                      strength):
    """4-channel inpainting with ``scheduler="lcm"`` / ``"tcd"`` (s = 1.5, eta 0.3) and on an LCM folder with a w
    input (s = 8.5): StableDiffusionInpaintPipeline with that scheduler, whose kept region is add_noise(z, n, t)
    after each step (``blend_noise``; without it the step's fresh noise stays there, and the generators are not
    advanced past the masked image's posterior draw: another chain). Measured max relative difference 2.5e-6."""
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 3:9] = 1
    if name == "lcm_w":
        pipe, folder = lcm
        sd = load_stable_diffusion(folder, progress=False)
        parts, scale, guided, cond = pipe.components, 8.5, sd.with_weight(8.5), {"context": sd.encode_prompts(PROMPTS)}
    else:
        fused, _, lora = plain
        folder = small_scaling if name == "lcm" else small_tcd
        cls = diffusers.LCMScheduler if name == "lcm" else diffusers.TCDScheduler
        base = diffusers.DDIMScheduler.from_pretrained(folder / "scheduler")
        parts, scale = {**fused.components, "scheduler": cls.from_config(base.config)}, 1.5
        sd = load_stable_diffusion(folder, lora=[lora], scheduler=name, progress=False)
        guided, cond = sd.guided(1.5, sd.encode_prompts([""])), sd.cond(sd.encode_prompts(PROMPTS))
    pipe = diffusers.StableDiffusionInpaintPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    theirs = _edit(pipe, strength, 4, scale, mask_image=mask, **({"eta": 0.3} if name == "tcd" else {}))
    sampler = "tcd:sigma_min" if name == "tcd" else "consistency"
    ours = _ours(latent_inpaint, guided, sd, cond, mask, sampler, 4, strength=strength, blend_noise=True)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    fresh = _ours(latent_inpaint, guided, sd, cond, mask, sampler, 4, strength=strength)
    assert relative_error(fresh, theirs) > 1e-3


def _pngs_as_pipeline_input(pngs):
    return torch.stack([torch.from_numpy(np.array(Image.open(pngs / f"in_{i}.png"))).permute(2, 0, 1)
                        for i in range(2)]).float() / 255


def test_lcm_folder_through_diffkit_edit_is_the_pipeline(lcm, tmp_path, capsys):
    """``diffkit edit --checkpoint LCM_FOLDER --prompt ...`` (defaults: consistency, 4 steps, s = 8.5, strength
    0.8): LatentConsistencyModelImg2ImgPipeline's images to the PNGs' 1/255, image i from seed + i."""
    pipe, folder = lcm
    img2img = diffusers.LatentConsistencyModelImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    pngs = write_pngs(tmp_path / "in", 2, 16, "RGB")
    code, out, err = cli(capsys, "--checkpoint", folder, "--images", pngs, "--prompt", PROMPTS[0], "--prompt",
                         PROMPTS[1], "--seed", 10, "--batch-size", 1, "--out", tmp_path / "out")
    assert code == 0, err
    assert "consistency, 4 steps" in out
    with torch.no_grad():
        theirs = img2img(PROMPTS, image=_pngs_as_pipeline_input(pngs), output_type="np",
                         generator=_generators()).images  # strength 0.8, 4 steps, s = 8.5: its defaults
    ours = np.stack([np.asarray(Image.open(tmp_path / "out" / f"edit_{i:05d}.png")) for i in range(2)])
    assert np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1


def test_lcm_folder_mask_through_diffkit_edit_is_the_inpaint_pipeline(lcm, tmp_path, capsys):
    """``diffkit edit --checkpoint LCM_FOLDER --mask M.png`` (defaults: strength 1, consistency, 4 steps, s = 8.5 as
    the w input): StableDiffusionInpaintPipeline with the folder's LCMScheduler and UNet, to the PNGs' 1/255."""
    pipe, folder = lcm
    inpaint = diffusers.StableDiffusionInpaintPipeline(**pipe.components)
    inpaint.set_progress_bar_config(disable=True)
    pngs = write_pngs(tmp_path / "in", 2, 16, "RGB")
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 3:9] = 255
    Image.fromarray(mask, "L").save(tmp_path / "mask.png")
    code, out, err = cli(capsys, "--checkpoint", folder, "--images", pngs, "--mask", tmp_path / "mask.png",
                         "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--seed", 10, "--out", tmp_path / "out")
    assert code == 0, err
    assert "2 inpainted images" in out
    with torch.no_grad():
        theirs = inpaint(PROMPTS, image=_pngs_as_pipeline_input(pngs), mask_image=torch.from_numpy(mask / 255.0)[None],
                         num_inference_steps=4, guidance_scale=8.5, output_type="np", generator=_generators()).images
    ours = np.stack([np.asarray(Image.open(tmp_path / "out" / f"edit_{i:05d}.png")) for i in range(2)])
    assert np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1


def test_scheduler_tcd_through_diffkit_edit_is_the_pipeline(plain, tmp_path, capsys):
    """``diffkit edit --checkpoint SD --lora F --scheduler tcd --gamma 0.5 --final sigma_min --strength 0.5``:
    StableDiffusionImg2ImgPipeline + TCDScheduler.from_config (eta 0.5, s = 1) to the PNGs' 1/255."""
    fused, folder, lora = plain
    pipe = diffusers.StableDiffusionImg2ImgPipeline(
        **{**fused.components, "scheduler": diffusers.TCDScheduler.from_config(fused.scheduler.config)})
    pipe.set_progress_bar_config(disable=True)
    pngs = write_pngs(tmp_path / "in", 2, 16, "RGB")
    code, out, err = cli(capsys, "--checkpoint", folder, "--lora", lora, "--scheduler", "tcd", "--gamma", 0.5,
                         "--final", "sigma_min", "--strength", 0.5, "--images", pngs, "--prompt", PROMPTS[0],
                         "--prompt", PROMPTS[1], "--seed", 10, "--out", tmp_path / "out")
    assert code == 0, err
    assert "tcd, 4 steps" in out
    with torch.no_grad():
        theirs = pipe(PROMPTS, image=_pngs_as_pipeline_input(pngs), strength=0.5, num_inference_steps=4,
                      guidance_scale=1.0, eta=0.5, output_type="np", generator=_generators()).images
    ours = np.stack([np.asarray(Image.open(tmp_path / "out" / f"edit_{i:05d}.png")) for i in range(2)])
    assert np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1


def test_lcm_edit_refusals_are_one_line(lcm, plain, tmp_path, capsys):
    """--scheduler on an LCM folder or a diffkit checkpoint, --gamma off tcd, a strength leaving fewer source
    times than steps, --negative-prompt with a w-input UNet: one line each, no output folder."""
    _, lcm_folder = lcm
    _, folder, _ = plain
    pngs = write_pngs(tmp_path / "in", 1, 16, "RGB")
    out = tmp_path / "out"
    cases = [
        ((lcm_folder, "--scheduler", "tcd"), "already an LCMScheduler folder"),
        ((folder, "--scheduler", "lcm", "--gamma", 0.3), "--gamma 0.3 sets the stochasticity of the tcd sampler"),
        ((lcm_folder, "--strength", 0.05), "strength=0.05 keeps int(50 * 0.05) = 2 of the LCMScheduler's 50 source "
                                           "times, fewer than steps=4"),
        ((lcm_folder, "--negative-prompt", "x"), "negative_prompt='x' is not allowed"),
        ((tmp_path / "nope.safetensors", "--scheduler", "lcm"), "applies to a Stable Diffusion folder"),
    ]
    for (checkpoint, *flags), message in cases:
        code, _, err = cli(capsys, "--checkpoint", checkpoint, "--images", pngs, "--prompt", "p", "--out", out,
                           *flags)
        assert code != 0 and message in err, err
        assert len(err.strip().splitlines()) == 1 and not out.exists(), err
    code, _, err = cli(capsys, "--checkpoint", tmp_path / "nope.safetensors", "--series", tmp_path / "x.csv",
                       "--scheduler", "tcd", "--out", tmp_path / "f.csv")  # not dropped silently with --series
    assert code != 0 and "--scheduler tcd applies to a Stable Diffusion folder" in err, err
    from diffkit.editing import inpaint
    from test_editing import DEN, FREE, X0
    with pytest.raises(DiffkitError, match=re.escape("allowed: jump_n_sample=1")):
        inpaint(DEN, X0, torch.ones_like(X0), "ddpm", 20, jump_n_sample=2, blend_noise=True, **FREE)


def test_lcm_lora_folder_with_a_controlnet_through_diffkit_edit_is_the_controlnet_img2img_pipeline(tmp_path, capsys):
    """``diffkit edit`` of an LCMScheduler folder with a plain UNet and ``--controlnet``:
    StableDiffusionControlNetImg2ImgPipeline with the folder's LCMScheduler (strength 0.5: the last 2 of 4 steps,
    s = 1.5 classifier-free guidance) to the PNGs' 1/255. A UNet with the w input is refused with --controlnet
    (those pipelines give it no w)."""
    from test_controlnet import control_png
    from test_controlnet_lcm import COND_DIM, _folder
    folder, net = _folder(tmp_path, "lcm", SMALL_SCALING)
    png = control_png(tmp_path / "control.png", seed=2)
    pngs = write_pngs(tmp_path / "in", 2, 16, "RGB")
    flags = ["--images", pngs, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--strength", 0.5, "--seed", 10,
             "--controlnet", tmp_path / "lcm_cn", "--control-image", png]
    code, out, err = cli(capsys, "--checkpoint", folder, *flags, "--guidance-scale", 1.5, "--guidance-convention",
                         "diffusers", "--out", tmp_path / "out")
    assert code == 0, err
    pipe = diffusers.StableDiffusionControlNetImg2ImgPipeline.from_pretrained(
        folder, controlnet=net, local_files_only=True, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = pipe(PROMPTS, image=_pngs_as_pipeline_input(pngs), control_image=Image.open(png).convert("RGB"),
                      strength=0.5, num_inference_steps=4, guidance_scale=1.5, controlnet_conditioning_scale=1.0,
                      output_type="np",
                      generator=_generators()).images
    ours = np.stack([np.asarray(Image.open(tmp_path / "out" / f"edit_{i:05d}.png")) for i in range(2)])
    assert np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1
    (tmp_path / "w").mkdir()
    w_folder, _ = _folder(tmp_path / "w", "lcm", time_cond_proj_dim=COND_DIM)
    capsys.readouterr()  # the pipeline's loading bars
    code, _, err = cli(capsys, "--checkpoint", w_folder, *flags, "--out", tmp_path / "out_w")
    assert code != 0 and "time_cond_proj_dim=256), which diffusers' ControlNet img2img" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out_w").exists()
