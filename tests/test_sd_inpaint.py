"""Dedicated Stable Diffusion inpainting UNets (9 input channels; diffkit.interop.sd_inpaint): diffkit against
diffusers' StableDiffusionInpaintPipeline on the same tiny random folder (same DDIM / Euler, generators, strength
and guidance), what reaches the UNet, ``diffkit edit`` on such a folder, and what is refused."""
import re

import numpy as np
import pytest
import torch
from PIL import Image
from test_latent_editing import DDIM_GRID, PROMPTS, _generators, cli, write_pngs

from diffkit.errors import DiffkitError
from diffkit.latent_editing import latent_img2img, latent_inpaint, latent_mask

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def inpaint_sd(tmp_path_factory):
    """A tiny random Stable Diffusion folder with a 9-channel UNet (in_channels 4 + 1 + 4), its inpainting
    pipeline and the folder loaded by diffkit (inpainting=True)."""
    from test_interop_diffusers import sd_ddim_scheduler, tiny_sd_components
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    root = tmp_path_factory.mktemp("tiny_sd_inpaint")
    unet, vae, text_encoder, tokenizer = tiny_sd_components(root, in_channels=9)
    pipe = diffusers.StableDiffusionInpaintPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                                    unet=unet, scheduler=sd_ddim_scheduler(), safety_checker=None,
                                                    feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(root / "sd")
    return pipe, load_stable_diffusion(root / "sd", progress=False, inpainting=True), root / "sd"


IMAGE = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
MASK = torch.zeros(2, 1, 16, 16)
MASK[:, :, 4:12, 3:9] = 1
MASK[1, :, :3] = 0.7  # binarised to 1 by both
MASK[0, :, 12:, :] = 0.3  # and to 0
MASK[0, :, 14:, :4] = 0.5  # and to 1 (repainted: the masked image is image * (mask < 0.5))


def _ours(sd, sampler="ddim", scale=5.0, grid=DDIM_GRID, steps=4, **kw):
    guided = sd.guided(scale, sd.encode_prompts([""]), "diffusers")
    return latent_inpaint(guided, sd, IMAGE * 2 - 1, MASK, sampler, steps, posterior="sample", seed=10,
                          cond=sd.cond(sd.encode_prompts(PROMPTS)), progress=False, return_latents=True, **grid, **kw)


def _theirs(pipe, strength, scheduler=None, eta=0.0, steps=4, **kw):
    original = pipe.scheduler
    pipe.scheduler = scheduler or original
    try:
        with torch.no_grad():
            return pipe(PROMPTS, image=IMAGE, mask_image=MASK, strength=strength, num_inference_steps=steps,
                        guidance_scale=5.0, eta=eta, output_type="latent", generator=_generators(), **kw).images
    finally:
        pipe.scheduler = original


@pytest.mark.parametrize("strength, eta", [(1.0, 0.0), (0.6, 0.0), (1.0, 0.7)])
def test_9_channel_inpainting_is_the_inpaint_pipeline(inpaint_sd, strength, eta):
    """DDIM with classifier-free guidance: at strength 1 from pure noise (is_strength_max), at 0.6 from the image's
    posterior sample noised to the strength's time; the masked image's latents drawn after the noise, and (eta > 0)
    the steps' noise after them, from each image's generator."""
    pipe, sd, _ = inpaint_sd
    theirs = _theirs(pipe, strength, eta=eta)
    ours = _ours(sd, strength=strength, grid={**DDIM_GRID, "eta": eta})
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5 * theirs.abs().max().item())


def test_9_channel_inpainting_with_euler_is_the_pipeline_with_euler_discrete(inpaint_sd):
    """EulerDiscreteScheduler scales the latents (scale_model_input: / sqrt(sigma^2 + 1)) and then concatenates
    the mask and masked latents unscaled; diffkit's euler calls the network with the VP latent and concatenates
    inside it: the same UNet inputs, the same result."""
    pipe, sd, _ = inpaint_sd
    euler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="leading")
    for strength in (1.0, 0.6):
        theirs = _theirs(pipe, strength, euler)
        ours = _ours(sd, "euler", grid=dict(spacing="leading", final="zero", steps_offset=1), strength=strength)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5 * theirs.abs().max().item())


def test_the_unet_sees_latents_then_mask_then_masked_image_latents_in_both_halves(inpaint_sd):
    """Every UNet call: channels 4 (the guided halves' equal latents), the nearest-downsampled binarised mask,
    then s E(image * (mask < 0.5)) (posterior mean here), the same in the conditional and the null half."""
    _, sd, _ = inpaint_sd
    seen = []
    hook = sd.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        guided = sd.guided(5.0, sd.encode_prompts([""]), "diffusers")
        latent_inpaint(guided, sd, IMAGE * 2 - 1, MASK, "heun", 3, posterior="mean", seed=1,
                       cond=sd.cond(sd.encode_prompts(PROMPTS)), progress=False, return_latents=True)
    finally:
        hook.remove()
    mask = latent_mask(MASK, (8, 8))
    masked = sd.encode((IMAGE * 2 - 1) * (MASK < 0.5))
    assert len(seen) == 5 and all(x.shape == (4, 9, 8, 8) for x in seen)
    for x in seen:
        cond_half, null_half = x.chunk(2)
        assert torch.equal(cond_half, null_half)
        assert torch.equal(cond_half[:, 4:5], mask)
        torch.testing.assert_close(cond_half[:, 5:], masked, rtol=0, atol=1e-6)
    assert mask[0, 0, 6].sum() == 0 and mask[1, 0, :1].all()  # 0.3 -> keep, 0.7 -> repaint
    assert mask[0, 0, 7].tolist() == [1, 1] + [0] * 6  # 0.5 -> repaint


@pytest.mark.parametrize("strength, start, guess", [(1.0, 0.25, False), (0.6, 0.0, False), (0.6, 0.0, True)])
def test_9_channel_inpainting_with_a_controlnet_is_the_controlnet_inpaint_pipeline(inpaint_sd, tmp_path, strength,
                                                                                   start, guess):
    """StableDiffusionControlNetInpaintPipeline with the 9-channel UNet: the ControlNet (in_channels 4) reads the
    latents, the UNet the latents, mask and masked-image latents plus the residuals; the window counts the
    strength's steps; guess mode (the ControlNet on the conditional half's latents alone)."""
    from PIL import Image
    from test_controlnet import control_png, tiny_controlnet
    from diffkit.interop.controlnet import ControlNets, editing_grid
    pipe, sd, _ = inpaint_sd
    latent_unet = diffusers.UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 4})
    net = tiny_controlnet(latent_unet, 1)
    png = control_png(tmp_path / "control.png")
    other = diffusers.StableDiffusionControlNetInpaintPipeline(**{**pipe.components, "controlnet": net})
    other.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = other(PROMPTS, image=IMAGE, mask_image=MASK, control_image=Image.open(png).convert("RGB"),
                       strength=strength, num_inference_steps=4, guidance_scale=5.0, eta=0.0, output_type="latent",
                       controlnet_conditioning_scale=0.7, control_guidance_start=start, guess_mode=guess,
                       generator=_generators()).images
    grid = editing_grid(sd, "ddim", 4, strength, dict(DDIM_GRID))
    controlled = ControlNets([net], [png], 0.7, start, guess_mode=guess).controlling(sd, 16, 16, grid)
    ours = _ours(controlled, strength=strength)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5 * theirs.abs().max().item())
    if start > 0:  # the ControlNet acts (its zero convolutions are random: tiny_controlnet)
        assert (ours - _ours(sd, strength=strength)).abs().max() > 1e-3


def test_a_9_channel_unet_without_a_mask_is_refused(inpaint_sd):
    from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image
    _, sd, folder = inpaint_sd
    with pytest.raises(DiffkitError, match=r"has an inpainting UNet \(in_channels=9.*it only inpaints"):
        load_stable_diffusion(folder, progress=False)
    with pytest.raises(DiffkitError, match="it only inpaints; use latent_inpaint"):
        text_to_image(sd, "a", steps=2)
    with pytest.raises(DiffkitError, match="it only inpaints; use latent_inpaint"):
        latent_img2img(sd.denoiser, sd, IMAGE * 2 - 1, 0.5, "ddim", 2, progress=False)
    for option, value in (("jump_n_sample", 2), ("jump_length", 0), ("reconstruction_weight", 1.0)):
        with pytest.raises(DiffkitError, match=f"{option}=.* is not allowed with an inpainting UNet"):
            latent_inpaint(sd.denoiser, sd, IMAGE * 2 - 1, MASK, "ddpm", 2, progress=False, **{option: value})


def _pngs(tmp_path, count=2):
    pngs = write_pngs(tmp_path / "in", count, 16, "RGB")
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[3:11, 6:] = 255
    Image.fromarray(mask, "L").save(tmp_path / "mask.png")
    return pngs, tmp_path / "mask.png", torch.from_numpy(mask)[None, None].float() / 255


def inpainted_by_the_cli(capsys, folder, tmp_path, *flags):
    """``diffkit edit --checkpoint FOLDER --mask ... FLAGS`` on two PNGs ("a cat", 3 steps, seed 4, batch 1, out/):
    (the input PNGs' folder, the mask in [0, 1])."""
    pngs, mask_png, mask = _pngs(tmp_path)
    code, out, err = cli(capsys, "--checkpoint", folder, "--images", pngs, "--mask", mask_png, "--prompt", "a cat",
                         "--steps", 3, "--seed", 4, "--batch-size", 1, *flags, "--out", tmp_path / "out")
    assert code == 0, err
    assert "2 inpainted images" in out and "posterior sample" in out
    return pngs, mask


def test_the_cli_on_a_9_channel_folder_is_the_library(inpaint_sd, tmp_path, capsys):
    """``diffkit edit --checkpoint INPAINT_SD --mask``: each PNG within half a level of latent_inpaint's image
    (image i from seed + i, alone in its batch), default strength 1 and guidance 7.5, posterior sample."""
    _, sd, folder = inpaint_sd
    pngs, mask = inpainted_by_the_cli(capsys, folder, tmp_path)
    guided = sd.guided(7.5, sd.encode_prompts([""]), "diffusers")
    context = sd.encode_prompts(["a cat"])
    for i in range(2):
        x = torch.from_numpy(np.array(Image.open(pngs / f"in_{i}.png"))).permute(2, 0, 1)[None].float() / 127.5 - 1
        edited = latent_inpaint(guided, sd, x, mask, "ddim", 3, posterior="sample", seed=4 + i, cond=sd.cond(context),
                                progress=False)
        expected = (edited.clamp(-1, 1)[0].permute(1, 2, 0).numpy() + 1) * 127.5
        png = np.asarray(Image.open(tmp_path / "out" / f"edit_{i:05d}.png")).astype(float)
        assert np.abs(png - expected).max() <= 0.5 + 1e-3


def refused_by_the_cli(capsys, folder, tmp_path, more=()):
    """What ``diffkit edit`` / ``diffkit sample`` on a folder with a 9-channel UNet refuse (and the ``more`` pairs of
    extra flags after ``--mask M`` and the error's pattern): one line, exit 2, no output."""
    pngs, mask_png, _ = _pngs(tmp_path)
    base = ["--checkpoint", folder, "--images", pngs, "--prompt", "a", "--steps", 2]
    for extra, pattern in [
        ([], "has an inpainting UNet .* it only inpaints; give --mask PNG"),
        (["--mask", mask_png, "--jump-n-sample", 2, "--sampler", "ddpm"],
         "--jump-n-sample does not apply to an inpainting UNet"),
        (["--mask", mask_png, "--jump-length", 5], "--jump-length does not apply to an inpainting UNet"),
        (["--mask", mask_png, "--reconstruction-weight", 1],
         "--reconstruction-weight does not apply to an inpainting"),
        *[(["--mask", mask_png, *extra], pattern) for extra, pattern in more],
    ]:
        target = tmp_path / "never"
        code, out, err = cli(capsys, *base, *extra, "--out", target)
        assert code == 2 and len(err.strip().splitlines()) == 1 and not target.exists(), err
        assert re.search(pattern, err), err
    sample_is_refused(capsys, folder, tmp_path, "it only inpaints")


def sample_is_refused(capsys, folder, tmp_path, text):
    """``diffkit sample --checkpoint FOLDER``: one line holding ``text``, exit 2, no output."""
    from diffkit.cli import main
    code = main(["sample", "--checkpoint", str(folder), "--prompt", "a", "--num", "1", "--steps", "2", "--no-progress",
                 "--device", "cpu", "--out", str(tmp_path / "never.png")])
    err = capsys.readouterr().err
    assert code == 2 and text in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "never.png").exists()


def test_the_cli_refuses_what_a_9_channel_folder_does_not_take(inpaint_sd, tmp_path, capsys):
    refused_by_the_cli(capsys, inpaint_sd[2], tmp_path)


def test_karras_dpm_solver_below_strength_1_is_the_pipeline_with_dpm_solver_karras(inpaint_sd):
    """DPMSolverMultistepScheduler(use_karras_sigmas=True) at strength 0.6 of 10 steps: diffusers runs the last 6
    of its Karras grid (get_timesteps, set_begin_index) from add_noise at the first one's Karras sigma; diffkit's
    dpm-solver++-2m on spacing="karras" truncated by strength_grid, from q_sample at that sigma's continuous time.
    diffusers gives the UNet the rounded timestep (its sigmas stay the Karras ones), diffkit the continuous time:
    with the UNet's time rounded here the two agree to 1e-5 (measured 4e-6); unrounded they differ by ~3e-3 of
    the largest latent on this random UNet, the time embedding's difference alone."""
    pipe, sd, _ = inpaint_sd
    dpm = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)
    theirs = _theirs(pipe, 0.6, dpm, steps=10)
    hook = sd.unet.register_forward_pre_hook(lambda module, args: (args[0], torch.as_tensor(args[1]).round(),
                                                                   *args[2:]))
    try:
        ours = _ours(sd, "dpm-solver++-2m", grid=dict(spacing="karras", final="zero"), strength=0.6, steps=10)
    finally:
        hook.remove()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5 * theirs.abs().max().item())


@pytest.fixture(scope="module")
def inpaint_ip(inpaint_sd):
    """An IP-Adapter file for the 9-channel UNet beside its folder, its tiny image encoder and an image prompt."""
    pipe, _, folder = inpaint_sd
    return (folder.parent, *ip_adapter_files(pipe, folder.parent))


def ip_adapter_files(pipe, root):
    """(an IP-Adapter file for the pipeline's UNet, an image prompt PNG); the tiny image encoder in
    root/image_encoder."""
    from test_ip_adapter import image_png, ip_adapter_state, save_ip_adapter, tiny_image_encoder
    encoder = tiny_image_encoder(root / "image_encoder")
    return save_ip_adapter(ip_adapter_state(pipe.unet, encoder), root / "ip.safetensors"), image_png(root / "image.png")


def with_the_ip_adapter(pipe, root, weights, png, theirs):
    """``theirs(pipe, 0.6, ip_adapter_image=...)`` with the adapter file loaded into the pipeline (scale 0.7), then
    unloaded."""
    pipe.load_ip_adapter(str(root), subfolder="", weight_name=weights.name, local_files_only=True)
    try:
        pipe.set_ip_adapter_scale(0.7)
        return theirs(pipe, 0.6, ip_adapter_image=Image.open(png).convert("RGB"))
    finally:
        pipe.unload_ip_adapter()


def test_ip_adapter_with_a_9_channel_unet_is_the_inpaint_pipeline_with_the_adapter(inpaint_sd, inpaint_ip):
    """IPAdapter.adapting wraps the inpainting net (IPAdaptedNet around InpaintingUNetNet): the UNet gets the 9
    channels and the image embeddings, as StableDiffusionInpaintPipeline with load_ip_adapter (scale 0.7,
    strength 0.6) to 1e-5 (measured 1.6e-6); the adapter acts."""
    from diffkit.interop.ip_adapter import load_ip_adapter
    pipe, sd, _ = inpaint_sd
    root, weights, png = inpaint_ip
    theirs = with_the_ip_adapter(pipe, root, weights, png, _theirs)
    ours = _ours(load_ip_adapter(weights, png, 0.7, progress=False).adapting(sd), strength=0.6)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5 * theirs.abs().max().item())
    assert (ours - _ours(sd, strength=0.6)).abs().max() > 1e-2 * theirs.abs().max()


def test_the_cli_with_a_controlnet_and_an_ip_adapter_on_a_9_channel_folder_is_the_library(inpaint_sd, inpaint_ip,
                                                                                            tmp_path, capsys):
    """``diffkit edit --checkpoint INPAINT_SD --mask M --controlnet DIR --control-image PNG --ip-adapter FILE``:
    the PNG within half a level of latent_inpaint on ControlNets.controlling + IPAdapter.adapting of the folder
    (window start 0.25 of the strength-1 grid); the ControlNet and the adapter each change it."""
    from test_controlnet import control_png, tiny_controlnet
    from diffkit.interop.controlnet import ControlNets, editing_grid
    from diffkit.interop.ip_adapter import load_ip_adapter
    pipe, sd, folder = inpaint_sd
    _, weights, image_prompt = inpaint_ip
    model = tiny_controlnet(diffusers.UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 4}), 1)
    model.save_pretrained(tmp_path / "cn")
    control = control_png(tmp_path / "control.png")
    pngs, mask_png, mask = _pngs(tmp_path, 1)
    code, out, err = cli(capsys, "--checkpoint", folder, "--images", pngs, "--mask", mask_png, "--prompt", "a cat",
                         "--steps", 3, "--seed", 4, "--controlnet", tmp_path / "cn", "--control-image", control,
                         "--controlnet-scale", 0.7, "--control-guidance-start", 0.25, "--ip-adapter",
                         f"{weights}:0.7", "--ip-adapter-image", image_prompt, "--out", tmp_path / "out")
    assert code == 0, err
    x = torch.from_numpy(np.array(Image.open(pngs / "in_0.png"))).permute(2, 0, 1)[None].float() / 127.5 - 1
    net = ControlNets([model], [control], 0.7, 0.25)
    adapter = load_ip_adapter(weights, image_prompt, 0.7, progress=False)

    def edited(model):
        guided = model.guided(7.5, model.encode_prompts([""]), "diffusers")
        image = latent_inpaint(guided, model, x, mask, "ddim", 3, posterior="sample", seed=4,
                               cond=model.cond(model.encode_prompts(["a cat"])), progress=False)
        return (image.clamp(-1, 1)[0].permute(1, 2, 0).numpy() + 1) * 127.5
    controlled = net.controlling(sd, 16, 16, editing_grid(sd, "ddim", 3, 1.0, {}))
    expected = edited(adapter.adapting(controlled))
    png = np.asarray(Image.open(tmp_path / "out" / "edit_00000.png")).astype(float)
    assert np.abs(png - expected).max() <= 0.5 + 1e-3
    for other in (adapter.adapting(sd), controlled):
        assert np.abs(png - edited(other)).max() > 2


def test_a_controlnet_made_from_the_9_channel_unet_is_refused_in_one_line_naming_both(inpaint_sd):
    """diffusers' ControlNet inpainting pipeline gives the ControlNet the 4 latent channels: a 9-channel ControlNet
    (ControlNetModel.from_unet of the inpainting UNet) is refused, the message naming its in_channels and what it
    gets, not "the UNet has 4"."""
    from diffkit.interop.controlnet import check_controlnet
    pipe, sd, _ = inpaint_sd
    net = diffusers.ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=(16, 32))
    with pytest.raises(DiffkitError) as err:
        check_controlnet(net, sd.unet, sd.vae_scale_factor)
    message = str(err.value)
    assert "\n" not in message and re.match(r"controlnet has in_channels=9 but the inpainting UNet \(in_channels=9\) "
                                            r"gives a ControlNet the latents alone: in_channels=4; give a ControlNet "
                                            r"of the base", message), message


def test_an_inpainting_unet_with_an_lcm_scheduler_is_refused_in_one_line(inpaint_sd):
    """The check before loading: an LCMScheduler folder's 9-channel UNet is refused even with inpainting=True."""
    from diffkit.interop.stable_diffusion import check_stable_diffusion_unet
    pipe, _, _ = inpaint_sd
    config = dict(pipe.unet.config)
    check_stable_diffusion_unet(config, "sd", lcm=False, inpainting=True)
    with pytest.raises(DiffkitError, match=r"^sd has an inpainting UNet \(in_channels=9.* with an LCMScheduler; "
                                           r"allowed: .* diffusion scheduler") as err:
        check_stable_diffusion_unet(config, "sd", lcm=True, inpainting=True)
    assert "\n" not in str(err.value)
