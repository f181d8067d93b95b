"""ControlNet (Zhang et al. 2023) on a tiny random Stable Diffusion folder against diffusers' own
StableDiffusionControlNetPipeline: same prompts, z_T (``latents=``), DDIM scheduler and control image on
both sides, compared on the final latents (``output_type="latent"``) and, through the CLI, on the PNG.
The ControlNet is ``ControlNetModel.from_unet`` of the tiny UNet with its zero convolutions and
conditioning embedding randomised (a fresh ControlNet adds exact zeros and would test nothing)."""
import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.controlnet import ControlNets, step_windows, steps_of  # noqa: E402
from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image  # noqa: E402
from test_interop_diffusers import relative_error, sd_ddim_scheduler, tiny_sd_components  # noqa: E402

PROMPTS = ["a photo of a cat", "hot"]
STEPS, SCALE = 4, 5.0


def tiny_controlnet(unet, seed: int):
    """ControlNetModel.from_unet with random zero convolutions and conditioning embedding (down 2x: the
    tiny VAE's factor)."""
    torch.manual_seed(seed)
    controlnet = diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    with torch.no_grad():
        for module in (controlnet.controlnet_cond_embedding.conv_out, *controlnet.controlnet_down_blocks,
                       controlnet.controlnet_mid_block):
            module.weight.normal_(0, 0.2)
            module.bias.normal_(0, 0.2)
    return controlnet.eval()


def control_png(path, height=16, width=16, seed=0):
    from PIL import Image
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def tiny_controlnet_sd(tmp_path_factory):
    """(StableDiffusionControlNetPipeline with two ControlNets' worth of models, our SD, folders, PNG)."""
    root = tmp_path_factory.mktemp("tiny_controlnet")
    unet, vae, text_encoder, tokenizer = tiny_sd_components(root)
    scheduler = sd_ddim_scheduler()
    nets = [tiny_controlnet(unet, seed) for seed in (1, 2)]
    for index, net in enumerate(nets):
        net.save_pretrained(root / f"cn{index}")
    pipe = diffusers.StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=nets[0], scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(root / "sd")
    (root / "sd" / "controlnet").rename(root / "sd_controlnet")  # a plain SD folder + a ControlNet folder
    index = json.loads((root / "sd" / "model_index.json").read_text())
    index.pop("controlnet")
    (root / "sd" / "model_index.json").write_text(json.dumps(index))
    sd = load_stable_diffusion(root / "sd", progress=False)
    png = control_png(root / "control.png")
    return pipe, nets, sd, root, png


def _theirs(pipe, controlnet, image, latents, **options):
    from PIL import Image
    saved = pipe.controlnet
    try:
        pipe.controlnet = controlnet if not isinstance(controlnet, list) else diffusers.MultiControlNetModel(controlnet)
        with torch.no_grad():
            return pipe(PROMPTS, image=image if not isinstance(image, list) else image, num_inference_steps=STEPS,
                        guidance_scale=SCALE, latents=latents.clone(), eta=0.0, output_type="latent",
                        **options).images
    finally:
        pipe.controlnet = saved
    del Image


def _ours(sd, models, images, latents, **control):
    return text_to_image(sd, PROMPTS, sampler="ddim", steps=STEPS, grid="scheduler", guidance_scale=SCALE,
                         latents=latents, eta=0.0, return_latents=True,
                         controlnet=ControlNets(models, images, **control))


def _latents(sd):
    return torch.randn(sd.latent_shape(2), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("control, pipe_options", [
    ({}, {}),
    ({"scales": 0.5}, {"controlnet_conditioning_scale": 0.5}),
    ({"start": 0.25, "end": 0.75}, {"control_guidance_start": 0.25, "control_guidance_end": 0.75}),
    ({"guess_mode": True}, {"guess_mode": True}),
])
def test_controlnet_matches_the_pipeline(tiny_controlnet_sd, control, pipe_options):
    from PIL import Image
    pipe, nets, sd, root, png = tiny_controlnet_sd
    image = Image.open(png).convert("RGB")
    latents = _latents(sd)
    theirs = _theirs(pipe, nets[0], image, latents, **pipe_options)
    ours = _ours(sd, nets[:1], [png], latents, **control)
    plain = text_to_image(sd, PROMPTS, sampler="ddim", steps=STEPS, grid="scheduler", guidance_scale=SCALE,
                          latents=latents, eta=0.0, return_latents=True)
    assert relative_error(ours, theirs) < 1e-5
    assert relative_error(plain, theirs) > 1e-3  # the ControlNet changes the result


def test_multi_controlnet_with_scales_and_windows_matches_the_pipeline(tiny_controlnet_sd, tmp_path):
    """Two ControlNets (diffusers' MultiControlNetModel: residuals summed in order), a scale and a
    window each."""
    from PIL import Image
    pipe, nets, sd, root, png = tiny_controlnet_sd
    second = control_png(tmp_path / "second.png", seed=1)
    latents = _latents(sd)
    images = [Image.open(p).convert("RGB") for p in (png, second)]
    theirs = _theirs(pipe, nets, images, latents, controlnet_conditioning_scale=[1.0, 0.5],
                     control_guidance_start=[0.0, 0.5], control_guidance_end=[0.75, 1.0])
    ours = _ours(sd, nets, [png, second], latents, scales=[1.0, 0.5], start=[0.0, 0.5], end=[0.75, 1.0])
    assert relative_error(ours, theirs) < 1e-5
    first_only = _ours(sd, nets[:1], [png], latents, end=0.75)
    assert relative_error(first_only, theirs) > 1e-3


def test_scale_zero_is_plain_stable_diffusion_bit_for_bit(tiny_controlnet_sd):
    """Scale 0 adds nothing: the ControlNet is not called (diffusers calls it and adds residuals times
    0, which is the same sum: x + 0 = x exactly), so the latents are plain SD's, bit for bit; so are the
    steps outside a window (checked by the window test against the pipeline)."""
    pipe, nets, sd, root, png = tiny_controlnet_sd
    latents = _latents(sd)
    plain = text_to_image(sd, PROMPTS, sampler="dpm-solver++-2m", steps=3, guidance_scale=SCALE, latents=latents,
                          return_latents=True)
    zero = text_to_image(sd, PROMPTS, sampler="dpm-solver++-2m", steps=3, guidance_scale=SCALE, latents=latents,
                         return_latents=True, controlnet=ControlNets(nets, [png, png], scales=0.0))
    assert torch.equal(plain, zero)


def test_global_pool_controlnet_forces_guess_mode_as_the_pipeline(tiny_controlnet_sd):
    """A ControlNet whose config has ``global_pool_conditions`` (shuffle) gets guess mode without
    --guess-mode, as the pipeline forces it: residuals mean-pooled, on the conditional half only."""
    from PIL import Image
    pipe, nets, sd, root, png = tiny_controlnet_sd
    config = {k: v for k, v in nets[0].config.items() if not k.startswith("_")}  # _use_default_values too
    pooled = diffusers.ControlNetModel.from_config({**config, "global_pool_conditions": True})
    pooled.load_state_dict(nets[0].state_dict())
    assert pooled.config.global_pool_conditions
    latents = _latents(sd)
    theirs = _theirs(pipe, pooled.eval(), Image.open(png).convert("RGB"), latents)
    assert relative_error(_ours(sd, [pooled], [png], latents), theirs) < 1e-5
    null_half_too = _theirs(pipe, pooled, Image.open(png).convert("RGB"), latents, guess_mode=False)
    assert relative_error(null_half_too, theirs) == 0  # the pipeline's own forcing, not an option of ours
    assert relative_error(_ours(sd, nets[:1], [png], latents, guess_mode=True), theirs) > 1e-3  # pooling matters


def test_window_with_a_multistep_solver_matches_the_pipeline(tiny_controlnet_sd):
    """dpm-solver++-2m on the grid of diffusers' DPMSolverMultistepScheduler (grid_from_diffusers): the
    window's steps by time are the pipeline's step indices (its call at t_i is step i's)."""
    from PIL import Image
    from diffkit.interop.schedulers import grid_from_diffusers
    pipe, nets, sd, root, png = tiny_controlnet_sd
    scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(STEPS)
    saved, pipe.scheduler = pipe.scheduler, scheduler
    latents = _latents(sd)
    try:
        theirs = _theirs(pipe, nets[0], Image.open(png).convert("RGB"), latents, control_guidance_start=0.25,
                         control_guidance_end=0.75)
    finally:
        pipe.scheduler = saved
    ours = text_to_image(sd, PROMPTS, sampler="dpm-solver++-2m", grid=grid_from_diffusers(scheduler),
                         guidance_scale=SCALE, latents=latents, return_latents=True,
                         controlnet=ControlNets(nets[:1], [png], start=0.25, end=0.75))
    assert relative_error(ours, theirs) < 1e-5


def test_steps_of_a_grid_and_the_windows_of_diffusers():
    grid = torch.tensor([751.0, 501.0, 251.0, 1.0, 0.0], dtype=torch.float64)
    assert steps_of(grid, torch.tensor([751.0, 600.0, 501.0, 251.0, 1.0, 0.0, 999.0])).tolist() == [0, 0, 1, 2, 3, 3, 0]
    assert step_windows(grid, 0.25, 0.75).tolist() == [False, True, True, False]
    assert step_windows(grid, 0.0, 0.3).tolist() == [True, False, False, False]  # step 1 ends past 0.3


def _individual_pngs(folder):
    from PIL import Image
    return torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)
                        for f in sorted(folder.glob("*.png"))]).float() / 255


def test_sample_command_with_controlnet_matches_the_pipeline_png(tiny_controlnet_sd, tmp_path, capsys):
    """``diffkit sample --controlnet DIR --control-image PNG``: a 17x21 control image gives 16x20 images
    (rounded down to the VAE factor, as the pipeline's default size), which equal the pipeline's within
    half an 8-bit level (PNG rounding); the default ddim grid is diffusers' DDIM with steps_offset=0,
    set_alpha_to_one."""
    from PIL import Image
    from diffkit.noise import generators_from_seed, randn
    pipe, nets, sd, root, png = tiny_controlnet_sd
    control = control_png(tmp_path / "odd.png", 17, 21, seed=3)
    out, individual = tmp_path / "grid.png", tmp_path / "each"
    assert main([str(a) for a in (
        "sample", "--checkpoint", root / "sd", "--prompt", "hot", "--num", "2", "--steps", "3", "--guidance-scale", "4",
        "--seed", "5", "--controlnet", root / "cn0", "--control-image", control, "--controlnet-scale", "0.8",
        "--control-guidance-end", "0.7", "--out", out, "--individual", individual, "--no-progress")]) == 0
    ours = _individual_pngs(individual)
    assert ours.shape == (2, 3, 16, 20)
    latents = randn((2, 4, 8, 10), generators_from_seed(5, 2))
    saved = pipe.scheduler, pipe.controlnet
    try:
        pipe.scheduler = diffusers.DDIMScheduler.from_config(saved[0].config, steps_offset=0, set_alpha_to_one=True)
        pipe.controlnet = nets[0]
        with torch.no_grad():
            theirs = pipe(["hot", "hot"], image=Image.open(control).convert("RGB"), num_inference_steps=3,
                          guidance_scale=5.0, latents=latents, eta=0.0, output_type="pt",
                          controlnet_conditioning_scale=0.8, control_guidance_end=0.7).images
    finally:
        pipe.scheduler, pipe.controlnet = saved
    assert (ours - theirs).abs().max() <= 0.5 / 255 + 1e-4  # the PNG rounds to the nearest level
    capsys.readouterr()


def test_bad_controlnet_input_is_one_line_before_any_output(tiny_controlnet_sd, tmp_path, capsys):
    from test_cli_errors import one_line_error
    pipe, nets, sd, root, png = tiny_controlnet_sd
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a png")
    out = tmp_path / "new" / "grid.png"
    base = ["sample", "--checkpoint", root / "sd", "--prompt", "hot", "--num", "1", "--steps", "2", "--out", out]
    cn, image = ["--controlnet", root / "cn0"], ["--control-image", png]
    for extra, match in (
            (["--controlnet", tmp_path / "missing", *image], "no config.json there"),
            ([*cn, "--control-image", garbage], "cannot be read as an image"),
            ([*cn, "--control-image", tmp_path / "missing.png"], "cannot be read as an image"),
            ([*cn, *image, "--control-guidance-start", "0.6", "--control-guidance-end", "0.4"],
             "start 0.6 >= end 0.4"),
            ([*cn, *image, "--control-guidance-end", "1.5"], "control guidance end"),
            ([*cn], "0 --control-image for 1 --controlnet"),
            ([*image], "--control-image needs --controlnet"),
            (["--guess-mode"], "--guess-mode needs --controlnet"),
            ([*cn, *image, "--controlnet-scale", "1", "--controlnet-scale", "2", "--controlnet-scale", "3"],
             "--controlnet-scale was given 3 times for 1 --controlnet"),
            (["--controlnet", root / "sd" / "unet", *image], "holds a 'UNet2DConditionModel'")):
        line = one_line_error(capsys, *base, *extra)
        assert match in line, (extra, line)
        assert not out.parent.exists()
    non_sd = ["sample", "--checkpoint", root / "cn0", "--num", "1", "--out", out, *cn, *image]
    assert "applies to a Stable Diffusion folder" in one_line_error(capsys, *non_sd)
    assert not out.parent.exists()
    # the library: a ControlNet of another UNet, latents that do not fit the control image, a bad tensor
    other = diffusers.ControlNetModel(block_out_channels=(32, 32), down_block_types=("CrossAttnDownBlock2D",
                                      "DownBlock2D"), cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
                                      layers_per_block=1, conditioning_embedding_out_channels=(16, 32))
    with pytest.raises(DiffkitError, match=r"block_out_channels=\(32, 32\) but the Stable Diffusion UNet has"):
        _ours(sd, [other], [png], _latents(sd))
    with pytest.raises(DiffkitError, match="do not fit the 16x16 control image"):
        _ours(sd, nets[:1], [png], torch.randn(2, 4, 8, 6))
    with pytest.raises(DiffkitError, match="a control image tensor of shape"):
        ControlNets(nets[:1], [torch.rand(2, 3, 16, 16)])
    with pytest.raises(DiffkitError, match="a control image tensor of shape"):
        ControlNets(nets[:1], [torch.rand(1, 1, 16, 16)])
    with pytest.raises(DiffkitError, match="must lie in"):
        ControlNets(nets[:1], [torch.rand(1, 3, 16, 16) * 2 - 1])
    with pytest.raises(DiffkitError, match="controlnet scale"):
        ControlNets(nets[:1], [png], scales=-1.0)


# --------------------------------------------------------------------------- img2img / inpainting
DDIM_GRID = dict(spacing="leading", final="sigma_min", steps_offset=1, eta=0.0)  # the folder's DDIMScheduler


def _edited(sd, nets, png, edit, *args, start=0.0, end=1.0, strength, **kw):
    from diffkit.interop.controlnet import editing_grid
    control = ControlNets(nets[:1], [png], 0.7, start, end)
    grid = editing_grid(sd, "ddim", 4, strength, dict(DDIM_GRID))
    controlled = control.controlling(sd, 16, 16, grid)
    guided = controlled.guided(SCALE, sd.encode_prompts([""]), "diffusers")
    return edit(guided, controlled, *args, posterior="sample", seed=10, cond=sd.cond(sd.encode_prompts(PROMPTS)),
                progress=False, return_latents=True, strength=strength, sampler="ddim", steps=4, **DDIM_GRID, **kw)


@pytest.mark.parametrize("strength, start, end", [(0.5, 0.0, 0.5), (1.0, 0.25, 1.0)])
def test_controlnet_img2img_and_inpainting_match_the_pipelines(tiny_controlnet_sd, strength, start, end):
    """latent_img2img / latent_inpaint (4-channel UNet) with the controlled SD = diffusers'
    StableDiffusionControlNetImg2ImgPipeline / ControlNetInpaintPipeline: the window counts the strength's steps."""
    from PIL import Image
    from diffkit.latent_editing import latent_img2img, latent_inpaint
    pipe, nets, sd, root, png = tiny_controlnet_sd
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 3:9] = 1
    parts = {**pipe.components, "controlnet": nets[0]}
    common = dict(control_image=Image.open(png).convert("RGB"), strength=strength, num_inference_steps=4,
                  guidance_scale=SCALE, eta=0.0, output_type="latent", controlnet_conditioning_scale=0.7,
                  control_guidance_start=start, control_guidance_end=end)
    generators = lambda: [torch.Generator().manual_seed(10), torch.Generator().manual_seed(11)]  # noqa: E731
    for cls, edit, extra in ((diffusers.StableDiffusionControlNetImg2ImgPipeline, latent_img2img, {}),
                             (diffusers.StableDiffusionControlNetInpaintPipeline, latent_inpaint, {"mask": mask})):
        other = cls(**parts)
        other.set_progress_bar_config(disable=True)
        with torch.no_grad():
            theirs = other(PROMPTS, image=image, generator=generators(), **common,
                           **({"mask_image": mask} if extra else {})).images
        ours = _edited(sd, nets, png, edit, image * 2 - 1, *extra.values(), start=start, end=end, strength=strength)
        assert relative_error(ours, theirs) < 1e-5, cls.__name__


def test_edit_command_with_controlnet_is_the_controlnet_img2img_pipeline(tiny_controlnet_sd, tmp_path, capsys):
    """``diffkit edit --controlnet DIR --control-image PNG``: the control image is resized to the images' size
    (here it has it already); the PNGs are the pipeline's to one 8-bit level (image i from seed + i)."""
    from PIL import Image
    from test_latent_editing import cli, write_pngs
    pipe, nets, sd, root, png = tiny_controlnet_sd
    pngs = write_pngs(tmp_path / "in", 2, 16, "RGB")
    code, out, err = cli(capsys, "--checkpoint", root / "sd", "--images", pngs, "--prompt", PROMPTS[0], "--prompt",
                         PROMPTS[1], "--strength", 0.75, "--steps", 4, "--spacing", "leading", "--final", "zero",
                         "--guidance-scale", 5, "--guidance-convention", "diffusers", "--seed", 10, "--controlnet",
                         root / "cn0", "--control-image", png, "--control-guidance-start", 0.3, "--out",
                         tmp_path / "out")
    assert code == 0, err
    image = torch.stack([torch.from_numpy(np.array(Image.open(pngs / f"in_{i}.png"))).permute(2, 0, 1)
                         for i in range(2)]).float() / 255
    parts = {**pipe.components, "controlnet": nets[0]}
    parts["scheduler"] = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, steps_offset=0,
                                                             set_alpha_to_one=True)
    other = diffusers.StableDiffusionControlNetImg2ImgPipeline(**parts)
    other.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = other(PROMPTS, image=image, control_image=Image.open(png).convert("RGB"), strength=0.75,
                       num_inference_steps=4, guidance_scale=5.0, eta=0.0, output_type="np",
                       controlnet_conditioning_scale=1.0, control_guidance_start=0.3,
                       generator=[torch.Generator().manual_seed(10), torch.Generator().manual_seed(11)]).images
    ours = np.stack([np.asarray(Image.open(tmp_path / "out" / f"edit_{i:05d}.png")) for i in range(2)])
    assert np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1
    code, _, err = cli(capsys, "--checkpoint", root / "sd", "--images", pngs, "--prompt", "hot", "--controlnet",
                       root / "cn0", "--out", tmp_path / "out2")
    assert code == 2 and "0 --control-image for 1 --controlnet" in err and not (tmp_path / "out2").exists()


def test_windows_with_multi_call_samplers_and_refusals(tiny_controlnet_sd):
    """A window with Heun (two calls a step, each by its time) runs and changes the result; adaptive
    samplers (no steps to count) are refused in one line (LCM folders run: tests/test_controlnet_lcm.py)."""
    pipe, nets, sd, root, png = tiny_controlnet_sd
    latents = _latents(sd)

    def run(sampler, steps=3, options=None, **control):
        return text_to_image(sd, PROMPTS, sampler=sampler, steps=steps, guidance_scale=SCALE, latents=latents,
                             return_latents=True, controlnet=ControlNets(nets[:1], [png], **control), **(options or {}))
    windowed, whole = run("heun", start=0.4), run("heun")
    assert torch.isfinite(windowed).all() and relative_error(windowed, whole) > 1e-3
    with pytest.raises(DiffkitError, match="a control guidance window .* has no steps to count"):
        run("ode", steps=None, end=0.5)
    for sampler in ("euler", "heun", "dpm2"):  # churn's raised times fall in the previous step's interval
        with pytest.raises(DiffkitError, match="s_churn=1 raises each step's time above the grid's"):
            run(sampler, end=0.5, options={"s_churn": 1.0})


def test_sample_command_with_two_controlnets_is_text_to_image(tiny_controlnet_sd, tmp_path):
    """Repeated --controlnet / --control-image / --controlnet-scale / --control-guidance-end pair up in
    order (Multi-ControlNet): the PNGs are text_to_image's with the same ControlNets, byte for byte."""
    from diffkit.images import save_images
    from diffkit.noise import generators_from_seed, randn
    pipe, nets, sd, root, png = tiny_controlnet_sd
    second = control_png(tmp_path / "second.png", seed=4)
    assert main([str(a) for a in (
        "sample", "--checkpoint", root / "sd", "--prompt", "hot", "--num", "2", "--steps", "3", "--seed", "2",
        "--controlnet", root / "cn0", "--control-image", png, "--controlnet", root / "cn1", "--control-image", second,
        "--controlnet-scale", "1", "--controlnet-scale", "0.5", "--control-guidance-end", "1",
        "--control-guidance-end", "0.6", "--out", tmp_path / "g.png", "--individual", tmp_path / "cli",
        "--no-progress")]) == 0
    images = text_to_image(sd, ["hot", "hot"], steps=3, latents=randn((2, 4, 8, 8), generators_from_seed(2, 2)),
                           seed=2, output_range="-1,1",
                           controlnet=ControlNets(nets, [png, second], scales=[1, 0.5], end=[1, 0.6]))
    save_images(images, tmp_path / "lib")
    for name in ("sample_00000.png", "sample_00001.png"):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "lib" / name).read_bytes()


def test_control_request_reads_every_flag(tiny_controlnet_sd):
    from argparse import Namespace
    from diffkit.commands._controlnet import ControlRequest
    pipe, nets, sd, root, png = tiny_controlnet_sd
    args = Namespace(controlnets=[str(root / "cn0"), str(root / "cn1")], control_images=[str(png)] * 2,
                     controlnet_scales=[0.5], control_starts=[0.1, 0.2], control_ends=None, guess_mode=True)
    control = ControlRequest.from_args(args, root / "sd").load(progress=False)
    assert (control.scales, control.start, control.end, control.guess_mode) == ([0.5, 0.5], [0.1, 0.2], [1.0, 1.0],
                                                                                True)
    assert all(torch.equal(a, b) for a, b in zip(control.models[1].state_dict().values(),
                                                 nets[1].state_dict().values()))


def test_sd_lora_with_controlnet_matches_the_pipeline(tiny_controlnet_sd, tmp_path):
    """``--lora`` and ``--controlnet`` together: the LoRA merged into the UNet and text encoder, the
    ControlNet untouched = StableDiffusionControlNetPipeline with ``load_lora_weights`` + ``fuse_lora``."""
    pytest.importorskip("peft")
    from PIL import Image
    from test_sd_lora import TEXT_LORA, UNET_LORA, _add_lora
    pipe, nets, sd, root, png = tiny_controlnet_sd
    unet, _, text_encoder, _ = tiny_sd_components(tmp_path)
    unet_state, unet_config = _add_lora(unet, 1, **UNET_LORA)
    text_state, text_config = _add_lora(text_encoder, 11, **TEXT_LORA)
    prefix = "" if hasattr(text_encoder, "text_model") else "text_model."
    diffusers.StableDiffusionPipeline.save_lora_weights(
        tmp_path / "lora", weight_name="lora.safetensors", unet_lora_layers=unet_state,
        unet_lora_adapter_metadata=unet_config, text_encoder_lora_layers={prefix + k: v for k, v in text_state.items()},
        text_encoder_lora_adapter_metadata=text_config)
    lora = tmp_path / "lora" / "lora.safetensors"
    theirs_pipe = diffusers.StableDiffusionControlNetPipeline.from_pretrained(
        root / "sd", controlnet=nets[0], local_files_only=True, safety_checker=None, requires_safety_checker=False)
    theirs_pipe.set_progress_bar_config(disable=True)
    theirs_pipe.load_lora_weights(str(lora))
    theirs_pipe.fuse_lora(lora_scale=0.5)
    latents = _latents(sd)
    theirs = _theirs(theirs_pipe, nets[0], Image.open(png).convert("RGB"), latents, controlnet_conditioning_scale=0.8)
    merged = load_stable_diffusion(root / "sd", progress=False, lora=[(lora, 0.5)])
    assert relative_error(_ours(merged, nets[:1], [png], latents, scales=0.8), theirs) < 1e-5
    assert relative_error(_ours(sd, nets[:1], [png], latents, scales=0.8), theirs) > 1e-3  # the LoRA matters


@pytest.mark.parametrize("count, guess_mode", [(1, False), (2, False), (1, True)])
def test_one_control_image_per_prompt_matches_the_pipeline(tiny_controlnet_sd, tmp_path, count, guess_mode):
    """A list of control images per ControlNet, one per prompt (the pipeline's ``image=[a, b]``; with two
    ControlNets, ours a list per ControlNet, the pipeline's nested list a list per prompt,
    ``[[canny_1, pose_1], [canny_2, pose_2]]``): prompt i is controlled by image i; ``control_rows`` picks
    another order."""
    from PIL import Image
    pipe, nets, sd, root, png = tiny_controlnet_sd
    files = [[control_png(tmp_path / f"c{n}_{i}.png", seed=10 * n + i) for i in range(2)] for n in range(count)]
    pil = [[Image.open(f).convert("RGB") for f in row] for row in files]
    latents = _latents(sd)
    models = nets[0] if count == 1 else nets[:2]
    per_prompt = [list(t) for t in zip(*pil)]  # the pipeline's nesting: per prompt, then per ControlNet
    theirs = _theirs(pipe, models, pil[0] if count == 1 else per_prompt, latents, guess_mode=guess_mode)
    ours = _ours(sd, nets[:count], files, latents, guess_mode=guess_mode)
    assert relative_error(ours, theirs) < 1e-5
    swapped = _theirs(pipe, models, pil[0][::-1] if count == 1 else per_prompt[::-1], latents,
                      guess_mode=guess_mode)
    ours_swapped = text_to_image(sd, PROMPTS, sampler="ddim", steps=STEPS, grid="scheduler", guidance_scale=SCALE,
                                 latents=latents, eta=0.0, return_latents=True, control_rows=[1, 0],
                                 controlnet=ControlNets(nets[:count], files, guess_mode=guess_mode))
    assert relative_error(ours_swapped, swapped) < 1e-5
    assert relative_error(ours_swapped, ours) > 1e-3  # each prompt's own image matters


def test_per_prompt_control_images_refused_in_one_line(tiny_controlnet_sd, tmp_path):
    pipe, nets, sd, root, png = tiny_controlnet_sd
    three = [control_png(tmp_path / f"c{i}.png", seed=i) for i in range(3)]
    latents = _latents(sd)
    for images, models, rows, match in (([three], nets[:1], None, "3 control images for 2 prompts"),
                                        ([three, three[:2]], nets[:2], None, "have 2 and 3 control images"),
                                        ([three], nets[:1], [0, 3], r"control_rows \[0, 3\] is not allowed"),
                                        ([png], nets[:1], [0, 0], "each ControlNet has one")):
        with pytest.raises(DiffkitError, match=match):
            text_to_image(sd, PROMPTS, steps=2, latents=latents, control_rows=rows,
                          controlnet=ControlNets(models, images))
    with pytest.raises(DiffkitError, match="give controlnet= too"):
        text_to_image(sd, PROMPTS, steps=2, latents=latents, control_rows=[0, 1])


def test_sample_command_with_a_control_image_folder_gives_each_prompt_its_image(tiny_controlnet_sd, tmp_path,
                                                                                 capsys):
    """``--control-image DIR`` with two --prompt: the folder's PNGs in name order, one per prompt's row; the
    PNGs are text_to_image's with control_rows = each sample's prompt, byte for byte."""
    from diffkit.images import save_images
    from diffkit.noise import generators_from_seed, randn
    pipe, nets, sd, root, png = tiny_controlnet_sd
    (tmp_path / "ctl").mkdir()
    files = [control_png(tmp_path / "ctl" / f"{name}.png", seed=seed) for name, seed in (("a", 5), ("b", 6))]
    argv = ["sample", "--checkpoint", root / "sd", "--prompt", "hot", "--prompt", "ph", "--num", "4", "--steps", "2",
            "--controlnet", root / "cn0", "--control-image", tmp_path / "ctl", "--no-progress"]
    assert main([str(a) for a in (*argv, "--batch-size", "3", "--out", tmp_path / "g.png", "--individual",
                                  tmp_path / "cli")]) == 0  # batches of 3 and 1: the rows follow the batches
    latents = randn((4, 4, 8, 8), generators_from_seed(0, 4))
    images = text_to_image(sd, ["hot", "hot", "ph", "ph"], steps=2, latents=latents, output_range="-1,1",
                           control_rows=[0, 0, 1, 1], controlnet=ControlNets(nets[:1], [files]))
    save_images(images, tmp_path / "lib")
    for i in range(4):
        name = f"sample_{i:05d}.png"
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "lib" / name).read_bytes(), name
    capsys.readouterr()
    control_png(tmp_path / "ctl" / "c.png", seed=7)
    out = tmp_path / "new" / "g.png"
    assert main([str(a) for a in (*argv, "--out", out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds 3 PNG(s) for 2 --prompt" in err and len(err.splitlines()) == 1, err
    assert not out.parent.exists()
    assert main([str(a) for a in ("edit", "--checkpoint", root / "sd", "--images", png, "--prompt", "hot",
                                  "--controlnet", root / "cn0", "--control-image", tmp_path / "ctl",
                                  "--out", tmp_path / "new" / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds 3 PNG(s) for 1 --images file(s)" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "new").exists()


def _controlled_edit(sd, nets, files, rows, images, strength, seed=10, context=None, mask=None, **grid):
    """latent_img2img's (latent_inpaint's with a ``mask``) z_0 with one control image per edited image:
    ``files`` (one ControlNet), image i controlled by ``files[rows[i]]`` through cond["control_rows"]."""
    from diffkit.interop.controlnet import editing_grid
    from diffkit.latent_editing import latent_img2img, latent_inpaint
    grid = grid or dict(DDIM_GRID)
    controlled = ControlNets(nets[:1], [files], 0.7).controlling(sd, 16, 16, editing_grid(sd, "ddim", 4, strength,
                                                                                           dict(grid)))
    guided = controlled.guided(SCALE, sd.encode_prompts([""]), "diffusers")
    context = sd.encode_prompts(PROMPTS) if context is None else context
    cond = {**sd.cond(context), "control_rows": torch.as_tensor(rows)}
    how = dict(posterior="sample", seed=seed, cond=cond, progress=False, return_latents=True, **grid)
    if mask is not None:
        return latent_inpaint(guided, controlled, images, mask, "ddim", 4, strength=strength, **how)
    return latent_img2img(guided, controlled, images, strength, "ddim", 4, **how)


@pytest.mark.parametrize("inpainting", [False, True])
def test_one_control_image_per_edited_image_is_the_controlnet_img2img_pipeline(tiny_controlnet_sd, tmp_path,
                                                                               inpainting):
    """A list of control images, one per edited image (cond["control_rows"], as text_to_image's per prompt):
    latent_img2img's z_0 = StableDiffusionControlNetImg2ImgPipeline(image=[img0, img1], control_image=[c0, c1])
    (latent_inpaint's = the ControlNet inpainting pipeline's, 4-channel UNet); rows [1, 0] = the pipeline's
    reversed control list."""
    from PIL import Image
    pipe, nets, sd, root, png = tiny_controlnet_sd
    files = [control_png(tmp_path / f"c{i}.png", seed=20 + i) for i in range(2)]
    pixels = [np.random.default_rng(30 + i).integers(0, 256, (16, 16, 3), dtype=np.uint8) for i in range(2)]
    images = torch.stack([torch.from_numpy(p).permute(2, 0, 1) for p in pixels]).float() / 255 * 2 - 1
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 3:9] = 1
    cls = (diffusers.StableDiffusionControlNetInpaintPipeline if inpainting else
           diffusers.StableDiffusionControlNetImg2ImgPipeline)
    other = cls(**{**pipe.components, "controlnet": nets[0]})
    other.set_progress_bar_config(disable=True)

    def theirs(controls):
        with torch.no_grad():
            return other(PROMPTS, image=[Image.fromarray(p) for p in pixels], strength=0.75,
                         control_image=[Image.open(f).convert("RGB") for f in controls], num_inference_steps=4,
                         guidance_scale=SCALE, eta=0.0, output_type="latent", controlnet_conditioning_scale=0.7,
                         generator=[torch.Generator().manual_seed(10), torch.Generator().manual_seed(11)],
                         **({"mask_image": mask} if inpainting else {})).images

    edit = dict(mask=mask if inpainting else None)
    ours = _controlled_edit(sd, nets, files, [0, 1], images, 0.75, **edit)
    assert relative_error(ours, theirs(files)) < 1e-5
    swapped = _controlled_edit(sd, nets, files, [1, 0], images, 0.75, **edit)
    assert relative_error(swapped, theirs(files[::-1])) < 1e-5
    assert relative_error(swapped, ours) > 1e-3  # each image's own control image matters


def test_edit_command_with_a_control_image_folder_gives_each_image_its_own(tiny_controlnet_sd, tmp_path, capsys):
    """``diffkit edit --control-image DIR``: the folder's PNGs in name order, one per --images file; with
    batches of 2 and 1 the PNGs are latent_img2img's with control_rows [0, 1, 2], byte for byte; a count
    that does not fit is one line before any output."""
    from diffkit.commands.edit import read_pngs
    from diffkit.images import save_images
    from test_latent_editing import cli, write_pngs
    pipe, nets, sd, root, png = tiny_controlnet_sd
    pngs = write_pngs(tmp_path / "in", 3, 16, "RGB", seed=4)
    (tmp_path / "ctl").mkdir()
    files = [control_png(tmp_path / "ctl" / f"{name}.png", seed=seed) for name, seed in (("a", 5), ("b", 6), ("c", 7))]
    argv = ["--checkpoint", root / "sd", "--images", pngs, "--prompt", "hot", "--strength", 0.75, "--steps", 4,
            "--spacing", "leading", "--final", "zero", "--guidance-scale", SCALE, "--guidance-convention", "diffusers",
            "--seed", 10, "--controlnet", root / "cn0", "--control-image", tmp_path / "ctl", "--controlnet-scale", 0.7]
    code, _, err = cli(capsys, *argv, "--batch-size", 2, "--out", tmp_path / "cli")
    assert code == 0, err
    images = read_pngs(pngs, "RGB")[0]
    context = sd.encode_prompts(["hot"])[[0, 0, 0]]  # one --prompt: every image's context
    z = _controlled_edit(sd, nets, files, [0, 1, 2], images, 0.75, context=context, spacing="leading", final="zero")
    save_images(sd.decode(z).clamp(-1, 1), tmp_path / "lib", prefix="edit")
    for i in range(3):
        name = f"edit_{i:05d}.png"
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "lib" / name).read_bytes(), name
    control_png(tmp_path / "ctl" / "d.png", seed=8)
    code, _, err = cli(capsys, *argv, "--out", tmp_path / "new" / "e")
    assert code == 2 and "holds 4 PNG(s) for 3 --images file(s)" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "new").exists()
    missing = [tmp_path / "none" if a == pngs else a for a in argv]  # the missing --images named first
    code, _, err = cli(capsys, *missing, "--out", tmp_path / "new" / "e")
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "new").exists()
