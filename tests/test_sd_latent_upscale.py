"""Stable Diffusion x2 latent upscaler folders (diffkit.interop.sd_latent_upscale, ``diffkit upscale --checkpoint
LATENT_UPSCALER --images LOW/ --prompt TEXT``) against diffusers' own StableDiffusionLatentUpscalePipeline on a tiny
random folder of the real one's structure (built once, lazily): a K-block UNet with in_channels 8, out_channels 5,
Fourier time embedding and ``time_cond_proj_dim`` 128 + the text width, a CLIP text encoder, SD's VAE and an
EulerDiscreteScheduler with ``prediction_type="sample"``: the latents, the command's PNGs, and the refusals."""
import json
import shutil

import pytest
import torch

from diffkit.cli import main
from diffkit.errors import DiffkitError

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
from test_cli_errors import one_line_error  # noqa: E402
from test_interop_diffusers import relative_error, tiny_sd_components  # noqa: E402
from test_latent_editing import PROMPTS, _generators, write_pngs  # noqa: E402

STEPS, GUIDANCE = 3, 6.0
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="sample")


def _unet(text_width: int):
    """The released UNet's structure (4 levels of K-blocks: fewer do not fit together; 1x1 conv in/out, Fourier
    times, scale-shift ResNets), narrower, one layer a block."""
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        act_fn="gelu", attention_head_dim=8, norm_num_groups=None, block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        time_cond_proj_dim=128 + text_width, conv_in_kernel=1, conv_out_kernel=1, cross_attention_dim=text_width,
        down_block_types=("KDownBlock2D",) + ("KCrossAttnDownBlock2D",) * 3,
        up_block_types=("KCrossAttnUpBlock2D",) * 3 + ("KUpBlock2D",),
        in_channels=8, out_channels=5, mid_block_type=None, resnet_time_scale_shift="scale_shift",
        time_embedding_type="fourier", timestep_post_act="gelu", sample_size=8)


@pytest.fixture(scope="session")
def latent_upscaler(tmp_path_factory):
    """(the folder's StableDiffusionLatentUpscalePipeline.from_pretrained, folder, two 16 x 16 RGB PNGs)."""
    root = tmp_path_factory.mktemp("sd_latent_upscale")
    _, vae, text_encoder, tokenizer = tiny_sd_components(root)
    norm = getattr(getattr(text_encoder, "text_model", text_encoder), "final_layer_norm")
    with torch.no_grad():  # a trained final norm: the UNet's own norm of the context (norm_cross) does not undo it
        norm.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(2))
        norm.bias.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(3))
    scheduler = diffusers.EulerDiscreteScheduler(**SCHEDULER)
    diffusers.StableDiffusionLatentUpscalePipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=_unet(text_encoder.config.hidden_size),
        scheduler=scheduler).save_pretrained(root / "up")
    pipe = diffusers.StableDiffusionLatentUpscalePipeline.from_pretrained(root / "up", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe, root / "up", write_pngs(root / "in", 2, 16, "RGB")


@pytest.fixture(scope="session")
def loaded(latent_upscaler):
    from diffkit.interop.sd_latent_upscale import load_latent_upscaler
    return load_latent_upscaler(latent_upscaler[1], progress=False)


def _low_res(pngs):
    from diffkit.commands.edit import read_pngs
    return read_pngs(pngs, "RGB")[0]


def _theirs(pipe, image, prompts=PROMPTS, guidance=GUIDANCE, **kw):
    with torch.no_grad():
        return pipe(prompts, image=image, num_inference_steps=STEPS, guidance_scale=guidance, output_type="latent",
                    generator=_generators(), **kw).images


def _ours(up, image, prompts=PROMPTS, guidance=GUIDANCE, **kw):
    from diffkit.interop.sd_latent_upscale import latent_upscale
    return latent_upscale(up, image, prompts, guidance_scale=guidance, steps=STEPS, generator=_generators(),
                          return_latents=True, **kw)


def test_latent_upscale_is_the_pipeline_on_images(latent_upscaler, loaded):
    """Images encoded by the folder's VAE (a posterior draw), CFG against a negative prompt, the folder's Euler loop."""
    pipe, _, pngs = latent_upscaler
    image = _low_res(pngs)
    theirs = _theirs(pipe, image, negative_prompt=["ph", "ot"])
    ours = _ours(loaded, image, negative_prompt=["ph", "ot"])
    assert ours.shape == theirs.shape == (2, 4, 16, 16)
    assert relative_error(ours, theirs) < 1e-5
    print(f"images, CFG: max|diff|/max|ref| = {relative_error(ours, theirs):.2e}")


def test_latent_upscale_is_the_pipeline_on_latents_and_unguided(latent_upscaler, loaded):
    """SD's latents handed over as such (no VAE draw): guidance_scale 0 (the empty prompt; diffusers' example) and 1."""
    pipe = latent_upscaler[0]
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    for guidance, prompts in ((0.0, None), (1.0, PROMPTS)):
        theirs = _theirs(pipe, latents, prompts=PROMPTS, guidance=guidance)
        ours = _ours(loaded, latents, prompts=prompts, guidance=guidance)
        assert relative_error(ours, theirs) < 1e-5, guidance
        print(f"latents, s = {guidance:g}: {relative_error(ours, theirs):.2e}")


def test_karras_sigmas_and_leading_spacing_are_the_schedulers(latent_upscaler, loaded):
    """The folder's grid follows its scheduler config: Karras sigmas (EDM eq. 5) with linspace spacing, and leading
    spacing (init_noise_sigma sqrt(sigma_max^2 + 1))."""
    from dataclasses import replace
    pipe, _, pngs = latent_upscaler
    image = _low_res(pngs)
    base = dict(pipe.scheduler.config)
    try:
        for extra in ({"use_karras_sigmas": True}, {"timestep_spacing": "leading", "steps_offset": 1}):
            pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config({**base, **extra})
            up = replace(loaded, scheduler_config={**base, **extra})
            theirs, ours = _theirs(pipe, image), _ours(up, image)
            assert relative_error(ours, theirs) < 1e-5, extra
            print(f"{extra}: {relative_error(ours, theirs):.2e}")
    finally:
        pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(base)


def test_the_command_writes_the_pipelines_images(latent_upscaler, tmp_path, capsys):
    pipe, folder, pngs = latent_upscaler
    import numpy as np
    from PIL import Image
    code = main(["upscale", "--checkpoint", str(folder), "--images", str(pngs), "--out", str(tmp_path / "o"),
                 "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--guidance-scale", str(GUIDANCE), "--steps",
                 str(STEPS), "--seed", "10", "--no-progress"])
    assert code == 0 and "16x16 -> 32x32" in capsys.readouterr().out
    with torch.no_grad():
        theirs = pipe(PROMPTS, image=_low_res(pngs), num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                      output_type="np", generator=_generators()).images
    ours = np.stack([np.asarray(Image.open(tmp_path / "o" / f"upscaled_{i:05d}.png")) for i in range(2)])
    assert ours.shape == (2, 32, 32, 3) and (tmp_path / "o" / "upscale_grid.png").is_file()
    assert np.abs(ours / 255.0 - theirs).max() < 1.5 / 255
    print(f"command PNGs: {np.abs(ours - np.round(theirs * 255)).max():g} levels from the pipeline's rounded images")


@pytest.mark.parametrize("flags, says", [
    (["--noise-level", "3"], "--noise-level does not apply to a Stable Diffusion x2 latent upscaler"),
    (["--guidance-scale", "0.5"], "--guidance-scale=0.5 is not allowed; allowed: 0"),
    (["--guidance-scale", "0"], "--guidance-scale=0 upscales with the empty prompt"),
    (["--guidance-scale", "1", "--negative-prompt", "x"], "--negative-prompt needs --guidance-scale above 1"),
    (["--sampler", "nope"], "nope"),
])
def test_command_refusals(latent_upscaler, tmp_path, capsys, flags, says):
    _, folder, pngs = latent_upscaler
    line = one_line_error(capsys, "upscale", "--checkpoint", str(folder), "--images", str(pngs), "--out",
                          str(tmp_path / "o"), "--prompt", "a", *flags)
    assert says in line and not (tmp_path / "o").exists()


def test_other_refusals(latent_upscaler, loaded, tmp_path, capsys):
    """No prompt (s != 0), odd image sides, the folder in diffkit sample, a scheduler that is not the pipeline's."""
    from diffkit.interop.sd_latent_upscale import latent_upscale, load_latent_upscaler
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    _, folder, pngs = latent_upscaler
    line = one_line_error(capsys, "upscale", "--checkpoint", str(folder), "--images", str(pngs), "--out",
                          str(tmp_path / "o"))
    assert "give --prompt (or --guidance-scale=0" in line
    with pytest.raises(DiffkitError, match="multiples of 2"):
        latent_upscale(loaded, torch.zeros(1, 3, 9, 8), "a")
    with pytest.raises(DiffkitError, match="x2 latent upscaler"):
        load_stable_diffusion(folder)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "scheduler" / "scheduler_config.json").read_text())
    (copy / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "prediction_type": "epsilon"}))
    with pytest.raises(DiffkitError, match="prediction_type='epsilon'; allowed: 'sample'"):
        load_latent_upscaler(copy)


def test_sample_hands_sd_latents_to_the_upscaler(latent_upscaler, tmp_path, capsys):
    """``diffkit sample --latent-upscaler``: SD's pipeline with ``output_type="latent"``, then the upscaler's on those
    latents with the same per-sample generators (diffusers' example), decoded by the upscaler's VAE."""
    import numpy as np
    from PIL import Image
    from test_interop_diffusers import tiny_sd_pipeline
    pipe, folder, _ = latent_upscaler
    base = tiny_sd_pipeline(tmp_path)  # trailing DDIM, whose 4 steps are `ddim@trailing:sigma_min` (no offset flag)
    base.scheduler = diffusers.DDIMScheduler.from_config(base.scheduler.config, timestep_spacing="trailing")
    base.save_pretrained(tmp_path / "sd")
    sd_pipe = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path / "sd", local_files_only=True)
    sd_pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    with torch.no_grad():
        low = sd_pipe(["hot"] * 2, num_inference_steps=4, guidance_scale=5.0, output_type="latent",
                      generator=generators).images
        theirs = pipe(["hot"] * 2, image=low, num_inference_steps=STEPS, guidance_scale=GUIDANCE, output_type="np",
                      generator=generators).images
    assert main(["sample", "--checkpoint", str(tmp_path / "sd"), "--prompt", "hot", "--num", "2", "--steps", "4",
                 "--sampler", "ddim@trailing:sigma_min", "--guidance-convention", "diffusers", "--guidance-scale", "5",
                 "--latent-upscaler", str(folder),
                 "--upscaler-steps", str(STEPS), "--upscaler-guidance-scale", str(GUIDANCE), "--batch-size", "2",
                 "--individual", str(tmp_path / "ind"), "--out", str(tmp_path / "grid.png"), "--no-progress"]) == 0
    ours = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "ind").glob("*.png"))])
    assert ours.shape == (2, 32, 32, 3)
    assert np.abs(ours.astype(float) - np.round(theirs * 255)).max() <= 1
    with capsys.disabled():
        print(f"sample --latent-upscaler: {np.abs(ours.astype(float) - np.round(theirs * 255)).max():g} levels")
    capsys.readouterr()
    for flags, says in ((["--latent-upscaler", str(tmp_path / "sd")], "is not a Stable Diffusion x2 latent upscaler"),
                        (["--upscaler-steps", "3"], "--upscaler-steps needs --latent-upscaler FOLDER"),
                        (["--latent-upscaler", str(folder), "--steps", "1"], "--steps 1 does not go with")):
        line = one_line_error(capsys, "sample", "--checkpoint", str(tmp_path / "sd"), "--prompt", "hot", "--out",
                              str(tmp_path / "x.png"), *flags)
        assert says in line and not (tmp_path / "x.png").exists()
