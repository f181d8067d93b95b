"""LEDITS++ (diffkit.interop.ledits_pp, diffkit edit --ledits) against diffusers 0.42.1's
LEditsPPPipelineStableDiffusion on a tiny random Stable Diffusion folder (nothing downloaded): its UNet has
cross-attention at 1/4 of the latent's size (where the pipeline takes its attention masks), a PNDMScheduler (SD 1.5's,
which the pipeline turns into SDE-DPM-Solver++(2M)) and the output layer scaled by 0.1 (module fixture's note); and
against LEditsPPPipelineStableDiffusionXL on a tiny random SD-XL folder of the same UNet layout (EulerDiscreteScheduler,
SD-XL's, which that pipeline turns into SDE-DPM-Solver++(2M) too)."""
import dataclasses

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop import ledits_pp as lp  # noqa: E402
from diffkit.interop.stable_diffusion import load_stable_diffusion  # noqa: E402

from _pipeline_folders import reloaded  # noqa: E402
from test_interop_diffusers import relative_error, tiny_sd_components  # noqa: E402

STEPS, SKIP = 4, 0.1  # int(4 * 1.1) = 4 timesteps, all run: 801 (> 800: the attention mask alone), 601, 401, 201
CONCEPTS = dict(editing_prompt=["a hat", "photo"], edit_guidance_scale=[5.0, 4.0], edit_threshold=[0.8, 0.7],
                reverse_editing_direction=[False, True], edit_warmup_steps=[0, 1], edit_cooldown_steps=[3, 4])
USER_MASK = torch.zeros(1, 1, 16, 16)  # the pipeline's user_mask at the 32 px images' latent size
USER_MASK[..., 2:12, 3:14] = 1
MASK_FLAGS = {"intersect": dict(user_mask=USER_MASK),
              "noise": dict(use_intersect_mask=False, use_cross_attn_mask=False)}


def _unet(**options):
    """Three levels, cross-attention on the two lower ones (16, 8 and 4 latent pixels at a 32 px image), the output
    layer scaled by 0.1: a random UNet's eps is far from the noise a trained one predicts, the solved noise maps
    then hold |z| ~ 10 and mu + c z cancels, so float32 round-off (diffusers' float32 sigmas, diffkit's float64
    step coefficients) grows ~5x per step at full size (measured 7e-6 .. 1.1e-5 there; 1.5e-6 .. 2.6e-6 scaled)."""
    torch.manual_seed(1)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(16, 16, 32), sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        **{"cross_attention_dim": 32, "attention_head_dim": 4, "norm_num_groups": 8, **options})
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.1)
        unet.conv_out.bias.mul_(0.1)
    return unet


@pytest.fixture(scope="module")
def tiny_ledits(tmp_path_factory):
    """(LEditsPPPipelineStableDiffusion read back from the saved SD folder, the folder, diffkit's StableDiffusion)."""
    root = tmp_path_factory.mktemp("tiny_ledits")
    _, vae, text_encoder, tokenizer = tiny_sd_components(root)
    scheduler = diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=_unet(),
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.save_pretrained(root / "sd")
    return reloaded(root / "sd", diffusers.LEditsPPPipelineStableDiffusion, load_stable_diffusion)


def _image(seed=3):
    return torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_inversion_and_every_mask_match_the_pipeline(tiny_ledits):
    """invert's x_T and noise maps, then the edit with two concepts (one removed from step 1, one until step 3) under
    the intersect mask (M1 at t = 801, M1 M2 below; with a user_mask) and the noise mask: z_0 within 1e-5 relative
    of the pipeline's
    (measured 1.6e-6, 1.5e-6), and the reconstruction without concepts (1e-6)."""
    pipe, _, sd = tiny_ledits
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    image = _image()
    with torch.no_grad():
        pipe.invert(image, num_inversion_steps=STEPS, skip=SKIP, generator=torch.Generator().manual_seed(0))
        theirs = {mask: pipe(output_type="latent", **CONCEPTS, **flags).images for mask, flags in MASK_FLAGS.items()}
        rebuilt = pipe(output_type="latent").images
    inversion = lp.invert(sd, image * 2 - 1, STEPS, SKIP, generator=torch.Generator().manual_seed(0))
    assert inversion.sampler == "sde-dpm-solver++-2m" and inversion.grid.tolist() == [801, 601, 401, 201, -1]
    assert relative_error(inversion.latents, pipe.init_latents) < 1e-6
    assert relative_error(inversion.noises, pipe.zs) < 1e-5
    concepts = lp.concepts_from(CONCEPTS["editing_prompt"], CONCEPTS["edit_guidance_scale"],
                                CONCEPTS["edit_threshold"], CONCEPTS["reverse_editing_direction"],
                                CONCEPTS["edit_warmup_steps"], CONCEPTS["edit_cooldown_steps"])
    for mask, reference in theirs.items():
        ours = lp.edit(sd, inversion, concepts, mask=mask, user_mask=MASK_FLAGS[mask].get("user_mask"),
                       return_latents=True)
        assert relative_error(ours, reference) < 1e-5, mask
        assert relative_error(rebuilt, reference) > 1e-2  # the edit mattered
    assert relative_error(lp.edit(sd, inversion, return_latents=True), rebuilt) < 1e-5


def test_ddim_folder_and_source_prompt_match_the_pipeline(tiny_ledits):
    """A DDIMScheduler folder inverts with DDIM at eta 1 (edit-friendly DDPM), the source prompt guiding it as the
    pipeline does (eps_src + s (eps_null - eps_src)); the pipeline's add_noise(x0, noise, torch.Tensor([t])) is a
    float index DDIMScheduler refuses in 0.42.1, shimmed to a long one. The attention mask alone. z_0 within 3e-5
    relative (measured 1.5e-5): the step 251 -> 1 has c = 0.04 and |z| up to 56, so x = mu + c z cancels more
    than the DPM grid's steps (docs/interop/ledits_pp.md)."""
    pipe, _, sd = tiny_ledits
    scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    ddim = diffusers.LEditsPPPipelineStableDiffusion(**{**pipe.components, "scheduler": scheduler},
                                                     requires_safety_checker=False)
    ddim.set_progress_bar_config(disable=True)
    add_noise = ddim.scheduler.add_noise
    ddim.scheduler.add_noise = lambda x, noise, t: add_noise(x, noise, t.long())
    ours_sd = dataclasses.replace(sd, scheduler_config=dict(scheduler.config))
    image = _image(4)
    source = dict(source_prompt="a photo", source_guidance_scale=2.5)
    with torch.no_grad():
        ddim.invert(image, num_inversion_steps=STEPS, skip=SKIP, generator=torch.Generator().manual_seed(1), **source)
        theirs = ddim(output_type="latent", editing_prompt="a hat", edit_guidance_scale=3.0, use_intersect_mask=False,
                      use_cross_attn_mask=True).images
    inversion = lp.invert(ours_sd, image * 2 - 1, STEPS, SKIP, generator=torch.Generator().manual_seed(1), **source)
    assert inversion.sampler == "ddim" and inversion.grid.tolist() == [751, 501, 251, 1, 0]
    assert relative_error(inversion.noises, ddim.zs) < 1e-5
    ours = lp.edit(ours_sd, inversion, lp.concepts_from("a hat", 3.0), mask="attention", return_latents=True)
    assert relative_error(ours, theirs) < 3e-5


def test_command_line_is_the_library_and_refuses_in_one_line(tiny_ledits, tmp_path, capsys):
    """diffkit edit --ledits / --ledits-remove (--ledits-warmup / --ledits-cooldown per concept) writes what invert +
    edit give (image i from --seed + i); flags that do not apply, and bad values, are refused in one line before any
    file is written."""
    from diffkit.cli import main
    from diffkit.images import png_bytes, to_uint8
    _, folder, sd = tiny_ledits
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(png_bytes(to_uint8(_image(5) * 2 - 1)[0]))
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 4:24, 6:29] = 1
    (tmp_path / "mask.png").write_bytes(png_bytes(to_uint8(mask.expand(1, 3, 32, 32) * 2 - 1)[0]))
    (tmp_path / "small.png").write_bytes(png_bytes(to_uint8(mask[..., ::2, ::2].expand(1, 3, 16, 16) * 2 - 1)[0]))
    common = ["edit", "--checkpoint", str(folder), "--images", str(tmp_path / "in"), "--no-progress", "--steps", "3",
              "--ledits-skip", "0.2", "--seed", "7"]
    out = tmp_path / "out"
    assert main([*common, "--ledits", "a hat", "--ledits-remove", "photo", "--ledits-scale", "6,3",
                 "--ledits-threshold", "0.75", "--ledits-warmup", "0,1", "--ledits-cooldown", "2", "--mask",
                 str(tmp_path / "mask.png"), "--out", str(out)]) == 0
    from diffkit.metrics.features import load_image_batch
    image = load_image_batch([tmp_path / "in" / "a.png"], "RGB")
    inversion = lp.invert(sd, image, 3, 0.2, seed=7)
    concepts = [lp.Concept("a hat", 6.0, 0.75, cooldown=2), lp.Concept("photo", 3.0, 0.75, True, 1, 2)]
    from diffkit.latent_editing import latent_mask
    ours = to_uint8(lp.edit(sd, inversion, concepts, user_mask=latent_mask(mask, (16, 16))).clamp(-1, 1))
    written = to_uint8(load_image_batch([out / "edit_00000.png"], "RGB"))
    assert (ours == written).all()  # byte for byte
    never = tmp_path / "never"
    for extra, expected in ((["--ledits", "x", "--prompt", "y"], "--prompt does not apply to a Stable Diffusion"),
                            (["--ledits-scale", "2"], "--ledits-scale goes with --ledits TEXT"),
                            (["--ledits", "x", "--ledits-scale", "1,2"], "--ledits-scale has 2 values for 1 concepts"),
                            (["--ledits", "x", "--ledits-threshold", "1.5"], "--ledits-threshold"),
                            (["--ledits", "x", "--ledits-skip", "2"], "--ledits-skip"),
                            (["--ledits", "x", "--ledits-cooldown", "-1"], "--ledits-cooldown=-1 is out of range"),
                            (["--ledits", "x", "--ledits-warmup", "1,2"], "--ledits-warmup has 2 values for 1"),
                            (["--ledits", "x", "--mask", str(tmp_path / "small.png")],
                             "--mask is 16x16 but the images are 32x32")):
        capsys.readouterr()
        assert main([*common, *extra, "--out", str(never)]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (extra, err)
    capsys.readouterr()
    assert main([*common[:8], "--ledits-cooldown", "2", "--out", str(never)]) == 2
    assert "--ledits-cooldown goes with --ledits TEXT" in capsys.readouterr().err
    assert main([*common[:2], str(tmp_path / "in"), *common[3:], "--ledits", "x", "--out", str(never)]) == 2
    assert "--ledits applies to a Stable Diffusion 1.x / 2.x or SD-XL folder" in capsys.readouterr().err
    assert not never.exists()


def test_bad_library_input_is_refused_in_one_line(tiny_ledits):
    _, _, sd = tiny_ledits
    image = _image() * 2 - 1
    with pytest.raises(DiffkitError, match=r"H and W multiples of 32"):
        lp.invert(sd, image[..., :24, :24], STEPS, SKIP)
    dpm = dict(diffusers.DPMSolverMultistepScheduler.from_config(sd.scheduler_config).config)
    dpm.pop("_use_default_values")  # as a folder's JSON
    with pytest.raises(DiffkitError, match=r"'dpmsolver\+\+' of order 2; LEDITS\+\+ inverts with 'sde-dpmsolver\+\+'"):
        lp.invert(dataclasses.replace(sd, scheduler_config=dpm), image, STEPS, SKIP)
    with pytest.raises(DiffkitError, match=r"use_karras_sigmas=True"):
        lp.ledits_scheduler(dataclasses.replace(sd, scheduler_config={**dpm, "algorithm_type": "sde-dpmsolver++",
                                                                      "use_karras_sigmas": True}))
    from diffkit.interop.sd_xl import StableDiffusionXL
    xl = StableDiffusionXL.__new__(StableDiffusionXL)
    xl.__dict__.update(vars(sd))  # only its class and requires_aesthetics_score matter here
    xl.requires_aesthetics_score = True
    with pytest.raises(DiffkitError, match=r"LEDITS\+\+ on SD-XL needs a base folder"):
        lp.invert(xl, image, STEPS, SKIP)
    with pytest.raises(DiffkitError, match=r"edit threshold"):
        lp.Concept("a hat", threshold=1.5)
    with pytest.raises(DiffkitError, match=r"edit scale has 3 entries for 2 editing prompts"):
        lp.concepts_from(["a", "b"], scale=[1.0, 2.0, 3.0])
    inversion = lp.invert(sd, image, 2, 0.0, seed=0)
    with pytest.raises(DiffkitError, match=r"user_mask of \(1, 1, 5, 5\) is not allowed; give a finite float tensor"):
        lp.edit(sd, inversion, user_mask=torch.ones(1, 1, 5, 5))
    with pytest.raises(DiffkitError, match=r"mask='box' is not allowed"):
        lp.edit(sd, inversion, lp.concepts_from("a hat"), mask="box")


def test_a_batch_edits_each_image_as_alone(tiny_ledits):
    """Image i's forward noises from seed + i and its own attention rows (the pipeline's store mixes images and heads
    for B > 1): a batch of two gives each image's result alone."""
    _, _, sd = tiny_ledits
    images = torch.cat([_image(6), _image(7)]) * 2 - 1
    concepts = lp.concepts_from(["a hat", "photo"], [5.0, 3.0], 0.8, [False, True])
    both = lp.edit(sd, lp.invert(sd, images, 2, 0.5, seed=3), concepts, return_latents=True)
    for i in range(2):
        alone = lp.edit(sd, lp.invert(sd, images[i:i + 1], 2, 0.5, seed=3 + i), concepts, return_latents=True)
        assert relative_error(both[i:i + 1], alone) < 1e-5


# ---------------------------------------------------------------- SD-XL (LEditsPPPipelineStableDiffusionXL)
XL_SOURCE = dict(source_prompt="a cat", source_guidance_scale=3.0)


@pytest.fixture(scope="module")
def tiny_ledits_xl(tmp_path_factory):
    """(LEditsPPPipelineStableDiffusionXL read back from the saved SD-XL folder, the folder, diffkit's
    StableDiffusionXL): test_interop_sd_xl's two text encoders and VAE, :func:`_unet`'s layout with SD-XL's added
    embedding (6 time ids x 8 + the pooled 20; its weights random, so the time ids matter), SD-XL's
    EulerDiscreteScheduler."""
    from test_interop_sd_xl import tiny_sd_xl_pipeline

    from diffkit.interop.sd_xl import load_sd_xl
    root = tmp_path_factory.mktemp("tiny_ledits_xl")
    base = tiny_sd_xl_pipeline(root)
    unet = _unet(cross_attention_dim=56, use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=8, projection_class_embeddings_input_dim=68)
    scheduler = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                 steps_offset=1)
    diffusers.StableDiffusionXLPipeline(**{**base.components, "unet": unet, "scheduler": scheduler},
                                        add_watermarker=False).save_pretrained(root / "xl")
    return reloaded(root / "xl", diffusers.LEditsPPPipelineStableDiffusionXL, load_sd_xl, add_watermarker=False)


def test_sd_xl_inversion_and_masks_match_the_pipeline(tiny_ledits_xl):
    """A 32 x 64 image (the pipeline's time ids (W, H, 0, 0, W, H)), a source prompt at s = 3 (eps_null +
    s (eps_src - eps_null): not swapped there), the zeroed null half, the last 3 noise maps zeroed
    (num_zero_noise_steps); the edit with two concepts under the pipeline's default noise mask and the intersect mask
    (M^1 M^2 at every step, 801 too), and the reconstruction: within 1e-5 relative (measured 7.4e-8 / 2.3e-7 for
    x_T / z, 5.0e-7, 4.4e-7, 5.0e-7 for the latents)."""
    pipe, _, xl = tiny_ledits_xl
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    image = torch.rand(1, 3, 32, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        pipe.invert(image, num_inversion_steps=STEPS, skip=SKIP, generator=torch.Generator().manual_seed(0),
                    **XL_SOURCE)
        theirs = {mask: pipe(output_type="latent", **CONCEPTS, **flags).images
                  for mask, flags in (("noise", {}), ("intersect", dict(use_intersect_mask=True)))}
        rebuilt = pipe(output_type="latent").images
    inversion = lp.invert(xl, image * 2 - 1, STEPS, SKIP, generator=torch.Generator().manual_seed(0), **XL_SOURCE)
    assert inversion.grid.tolist() == [801, 601, 401, 201, -1]
    assert inversion.time_ids.tolist() == [64, 32, 0, 0, 64, 32]
    assert relative_error(inversion.latents, pipe.init_latents) < 1e-6
    assert relative_error(inversion.noises, pipe.zs) < 1e-5 and not inversion.noises[1:].any()
    concepts = lp.concepts_from(CONCEPTS["editing_prompt"], CONCEPTS["edit_guidance_scale"],
                                CONCEPTS["edit_threshold"], CONCEPTS["reverse_editing_direction"],
                                CONCEPTS["edit_warmup_steps"], CONCEPTS["edit_cooldown_steps"])
    for mask, reference in theirs.items():
        ours = lp.edit(xl, inversion, concepts, mask=None if mask == "noise" else mask, return_latents=True)
        assert relative_error(ours, reference) < 1e-5, mask
        assert relative_error(rebuilt, reference) > 1e-2  # the edit mattered
    assert relative_error(lp.edit(xl, inversion, return_latents=True), rebuilt) < 1e-5


def test_sd_xl_command_line_and_refusals(tiny_ledits_xl, tmp_path, capsys):
    """diffkit edit --ledits on the SD-XL folder writes what invert + edit give (the noise mask, 3 zero-noise steps
    by default; --ledits-zero-noise-steps 1 here); a source scale <= 1, a DDIM folder with clip_sample and bad
    values are refused in one line."""
    from diffkit.cli import main
    from diffkit.images import png_bytes, to_uint8
    from diffkit.metrics.features import load_image_batch
    _, folder, xl = tiny_ledits_xl
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(png_bytes(to_uint8(_image(5) * 2 - 1)[0]))
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 4:24, 6:29] = 1
    (tmp_path / "mask.png").write_bytes(png_bytes(to_uint8(mask.expand(1, 3, 32, 32) * 2 - 1)[0]))
    (tmp_path / "small.png").write_bytes(png_bytes(to_uint8(mask[..., ::2, ::2].expand(1, 3, 16, 16) * 2 - 1)[0]))
    common = ["edit", "--checkpoint", str(folder), "--images", str(tmp_path / "in"), "--no-progress", "--steps", "2",
              "--ledits-skip", "0.5", "--seed", "7", "--ledits", "a hat"]
    out = tmp_path / "out"
    assert main([*common, "--ledits-zero-noise-steps", "1", "--out", str(out)]) == 0
    assert "LEditsPPPipelineStableDiffusionXL" in capsys.readouterr().out
    image = load_image_batch([tmp_path / "in" / "a.png"], "RGB")
    ours = to_uint8(lp.edit(xl, lp.invert(xl, image, 2, 0.5, seed=7, zero_noise_steps=1),
                            [lp.Concept("a hat")]).clamp(-1, 1))
    written = to_uint8(load_image_batch([out / "edit_00000.png"], "RGB"))
    assert abs(ours.astype(int) - written.astype(int)).max() <= 1
    never = tmp_path / "never"
    for extra, expected in ((["--ledits-source-prompt", "a", "--ledits-source-scale", "1"], "allowed: > 1"),
                            (["--ledits-zero-noise-steps", "-1"], "--ledits-zero-noise-steps")):
        capsys.readouterr()
        assert main([*common, *extra, "--out", str(never)]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (extra, err)
    assert not never.exists()
    with pytest.raises(DiffkitError, match=r"source_guidance_scale=0.5 is not allowed on an SD-XL folder"):
        lp.invert(xl, image, 2, 0.5, source_prompt="a", source_guidance_scale=0.5)
    ddim = {**diffusers.DDIMScheduler(clip_sample=True).config, "_class_name": "DDIMScheduler"}  # as a folder's
    with pytest.raises(DiffkitError, match=r"clip_sample=True"):
        lp.ledits_scheduler(dataclasses.replace(xl, scheduler_config=ddim))
    with pytest.raises(DiffkitError, match=r"this inversion has no SD-XL time ids"):
        lp.edit(xl, dataclasses.replace(lp.invert(xl, image, 1, 0.0, seed=0), time_ids=None))
