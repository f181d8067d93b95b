"""InstructPix2Pix folders (8-channel SD / SD-XL UNets; diffkit.interop.sd_instruct_pix2pix): diffkit against diffusers'
StableDiffusionInstructPix2PixPipeline and StableDiffusionXLInstructPix2PixPipeline on tiny random folders (same DDIM /
Euler, generators and both guidance scales), what reaches the UNet, ``diffkit edit`` on such folders (PNGs against the
pipelines'), and what is refused."""
import dataclasses
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_latent_editing import DDIM_GRID, PROMPTS, _generators, cli, write_pngs

from diffkit.errors import DiffkitError
from diffkit.interop.sd_instruct_pix2pix import instruct_pix2pix, instruct_pix2pix_guidance

diffusers = pytest.importorskip("diffusers")

IMAGE = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
WIDE = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(4))  # H != W reaches SD-XL's time ids


@pytest.fixture(scope="module")
def ip2p_sd(tmp_path_factory):
    """(StableDiffusionInstructPix2PixPipeline, its folder, the folder loaded with instruct_pix2pix=True): the tiny
    SD components with an 8-channel UNet (latents 4 + image latents 4) and SD v1's DDIM."""
    from test_interop_diffusers import sd_ddim_scheduler, tiny_sd_components
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    root = tmp_path_factory.mktemp("tiny_ip2p")
    unet, vae, text_encoder, tokenizer = tiny_sd_components(root, in_channels=8)
    pipe = diffusers.StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=sd_ddim_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(root / "ip2p")
    return pipe, root / "ip2p", load_stable_diffusion(root / "ip2p", progress=False, instruct_pix2pix=True)


@pytest.fixture(scope="module")
def ip2p_xl(tmp_path_factory):
    """(StableDiffusionXLInstructPix2PixPipeline, its folder, the folder loaded): the tiny SD-XL encoders, VAE
    (scaling factor 0.13025, force_upcast) and DDIM with an 8-channel SD-XL UNet."""
    from test_interop_sd_xl import tiny_sd_xl_pipeline, tiny_sd_xl_unet
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    root = tmp_path_factory.mktemp("tiny_xl_ip2p")
    base = tiny_sd_xl_pipeline(root)
    torch.manual_seed(2)
    unet = tiny_sd_xl_unet(cross_attention_dim=56, added_inputs=68, in_channels=8)
    parts = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
    pipe = diffusers.StableDiffusionXLInstructPix2PixPipeline(**{k: base.components[k] for k in parts}, unet=unet,
                                                              add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(root / "xl8")
    return pipe, root / "xl8", load_stable_diffusion(root / "xl8", progress=False, instruct_pix2pix=True)


def _theirs(pipe, image=IMAGE, scheduler=None, **kw):
    original = pipe.scheduler
    pipe.scheduler = scheduler or original
    try:
        with torch.no_grad():
            return pipe(PROMPTS, image=image, num_inference_steps=4, output_type="latent", generator=_generators(),
                        **kw).images
    finally:
        pipe.scheduler = original


def _ours_sd(sd, text, image_scale, negative=None, sampler="ddim", grid=DDIM_GRID):
    guided = instruct_pix2pix_guidance(sd.guided(text, sd.encode_prompts([negative or ""] * 2), "diffusers"),
                                       image_scale)
    return instruct_pix2pix(guided, sd, IMAGE * 2 - 1, sampler, 4, seed=10, cond=sd.cond(sd.encode_prompts(PROMPTS)),
                            progress=False, return_latents=True, **grid)


def _close(ours, theirs):
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5 * theirs.abs().max().item())


@pytest.mark.parametrize("text, image_scale, eta, negative", [(5.0, 1.5, 0.0, None), (3.0, 2.5, 0.7, "ugly")])
def test_sd_instruct_pix2pix_is_the_pipeline(ip2p_sd, text, image_scale, eta, negative):
    """DDIM on the folder's grid from each image's generator (eta > 0: the steps' noise after the start's), eq. 3 with
    both scales, the empty or a negative prompt as the null text, to 1e-5 of the largest latent (measured 1.2e-6)."""
    pipe, _, sd = ip2p_sd
    theirs = _theirs(pipe, guidance_scale=text, image_guidance_scale=image_scale, eta=eta,
                     negative_prompt=None if negative is None else [negative] * 2)
    _close(_ours_sd(sd, text, image_scale, negative, grid={**DDIM_GRID, "eta": eta}), theirs)


def test_sd_instruct_pix2pix_with_euler_is_the_pipeline_with_euler_discrete(ip2p_sd):
    """EulerDiscreteScheduler scales the latents (scale_model_input) and concatenates the image latents unscaled;
    diffkit's euler calls the network with the VP latent and concatenates inside it: the same UNet inputs."""
    pipe, _, sd = ip2p_sd
    euler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="leading")
    theirs = _theirs(pipe, scheduler=euler, guidance_scale=5.0, image_guidance_scale=1.5)
    _close(_ours_sd(sd, 5.0, 1.5, sampler="euler", grid=dict(spacing="leading", final="zero", steps_offset=1)), theirs)


def test_the_unet_sees_three_thirds_with_the_unscaled_image_mode(ip2p_sd):
    """Every UNet call: 3B samples of equal latents, then the image latents E(x).mode() *unscaled* (no 0.18215) in
    the first two thirds and zeros in the last; the contexts prompt, empty, empty (the pipelines' order)."""
    _, _, sd = ip2p_sd
    seen = []
    hook = sd.unet.register_forward_pre_hook(lambda module, args, kwargs: seen.append(
        (args[0].clone(), kwargs["encoder_hidden_states"].clone())), with_kwargs=True)
    try:
        _ours_sd(sd, 5.0, 1.5)
    finally:
        hook.remove()
    with torch.no_grad():
        mode = sd.vae.encode(IMAGE * 2 - 1).latent_dist.mode()
    prompt, empty = sd.encode_prompts(PROMPTS), sd.encode_prompts([""] * 2)
    assert len(seen) == 4
    for x, context in seen:
        assert x.shape == (6, 8, 8, 8)
        thirds, contexts = x.chunk(3), context.chunk(3)
        assert torch.equal(thirds[0][:, :4], thirds[1][:, :4]) and torch.equal(thirds[0][:, :4], thirds[2][:, :4])
        torch.testing.assert_close(thirds[0][:, 4:], mode, rtol=0, atol=1e-6)
        assert torch.equal(thirds[1][:, 4:], thirds[0][:, 4:]) and not thirds[2][:, 4:].any()
        assert torch.equal(contexts[0], prompt) and torch.equal(contexts[1], empty)
        assert torch.equal(contexts[2], empty)


def _ours_xl(xl, negative=None, image=WIDE, rescale=0.0):
    guided, cond = xl.prompt_guidance(PROMPTS, negative, 5.0, "diffusers", rescale, image_size=tuple(image.shape[2:]))
    return instruct_pix2pix(instruct_pix2pix_guidance(guided, 1.5), xl, image * 2 - 1, "ddim", 4, seed=10, cond=cond,
                            progress=False, return_latents=True, **DDIM_GRID)


@pytest.mark.parametrize("negative, rescale", [(None, 0.0), ("ugly", 0.7)])
def test_sd_xl_instruct_pix2pix_is_the_pipeline(ip2p_xl, negative, rescale):
    """SD-XL: the pooled text in the null-text thirds zeros (force_zeros_for_empty_prompt) or the negative prompt's,
    time ids (16, 24, 0, 0, 16, 24) in all three, the image latents unscaled (0.13025 not applied), guidance_rescale
    towards the first third; to 1e-5 of the largest latent (measured 1.4e-6)."""
    pipe, _, xl = ip2p_xl
    theirs = _theirs(pipe, WIDE, guidance_scale=5.0, image_guidance_scale=1.5, height=16, width=24,
                     negative_prompt=None if negative is None else [negative] * 2, guidance_rescale=rescale)
    _close(_ours_xl(xl, negative, rescale=rescale), theirs)
    if rescale:
        assert (_ours_xl(xl, negative) - theirs).abs().max() > 1e-2 * theirs.abs().max()


def test_a_cosxl_edit_folder_scales_the_image_latents(ip2p_xl, tmp_path):
    """``is_cosxl_edit: true`` in model_index.json (the pipeline's argument; from_pretrained passes it): the image
    latents times scaling_factor, as the pipeline; read by the loader."""
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    pipe, folder, xl = ip2p_xl
    pipe.is_cosxl_edit = True
    try:
        theirs = _theirs(pipe, WIDE, guidance_scale=5.0, image_guidance_scale=1.5, height=16, width=24)
    finally:
        pipe.is_cosxl_edit = False
    _close(_ours_xl(dataclasses.replace(xl, is_cosxl_edit=True)), theirs)
    assert (_ours_xl(xl) - theirs).abs().max() > 1e-3 * theirs.abs().max()
    shutil.copytree(folder, tmp_path / "cosxl")
    index = json.loads((tmp_path / "cosxl" / "model_index.json").read_text())
    (tmp_path / "cosxl" / "model_index.json").write_text(json.dumps({**index, "is_cosxl_edit": True}))
    assert load_stable_diffusion(tmp_path / "cosxl", progress=False, instruct_pix2pix=True).is_cosxl_edit


@pytest.mark.parametrize("kind", ["sd", "xl"])
def test_the_cli_writes_the_pipelines_pngs(ip2p_sd, ip2p_xl, tmp_path, capsys, kind):
    """``diffkit edit --checkpoint IP2P --images DIR --prompt ... --image-guidance-scale 2`` (s_T 6, DDIM with
    --spacing leading --final zero; SD-XL: --guidance-rescale 0.7) writes the pipeline's images (DDIM steps_offset
    0, set_alpha_to_one; each image from its seed) within one 8-bit level (measured: 0 for SD, 1 for SD-XL)."""
    pipe, folder, _ = ip2p_sd if kind == "sd" else ip2p_xl
    side = 16 if kind == "sd" else 24
    pngs = write_pngs(tmp_path / "in", 2, 16, "RGB")
    if side != 16:
        for i in range(2):
            Image.open(pngs / f"in_{i}.png").resize((side, 16)).save(pngs / f"in_{i}.png")
    code, out, err = cli(capsys, "--checkpoint", folder, "--images", pngs, "--prompt", PROMPTS[0], "--prompt",
                         PROMPTS[1], "--steps", 3, "--spacing", "leading", "--final", "zero", "--guidance-scale", 6,
                         "--guidance-convention", "diffusers", "--image-guidance-scale", 2, "--seed", 10,
                         *([] if kind == "sd" else ["--guidance-rescale", 0.7]), "--out", tmp_path / "out")
    assert code == 0 and "2 edited images" in out and "InstructPix2Pix" in out, err
    ours = np.stack([np.asarray(Image.open(tmp_path / "out" / f"edit_{i:05d}.png")) for i in range(2)])
    images = [Image.open(pngs / f"in_{i}.png").convert("RGB") for i in range(2)]
    scheduler = pipe.scheduler
    pipe.scheduler = diffusers.DDIMScheduler.from_config(scheduler.config, steps_offset=0, set_alpha_to_one=True)
    try:
        with torch.no_grad():
            theirs = pipe(PROMPTS, image=images, num_inference_steps=3, guidance_scale=6.0, image_guidance_scale=2.0,
                          output_type="np", generator=_generators(),
                          **({} if kind == "sd" else {"height": 16, "width": side, "guidance_rescale": 0.7})).images
    finally:
        pipe.scheduler = scheduler
    assert ours.shape == (2, 16, side, 3)
    assert np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1


def test_what_an_instruct_pix2pix_folder_does_not_take_is_refused_in_one_line(ip2p_sd, tmp_path, capsys):
    """``diffkit edit`` refuses the flags that do not apply (one line, exit 2, no output), ``--image-guidance-scale``
    on another folder, ``diffkit sample`` on the folder; the library the text-to-image and img2img paths."""
    from test_sd_inpaint import sample_is_refused
    from diffkit.interop.stable_diffusion import check_stable_diffusion_unet, load_stable_diffusion, text_to_image
    from diffkit.latent_editing import latent_img2img
    _, folder, sd = ip2p_sd
    plain = tmp_path / "plain"  # a 4-channel SD folder as far as the checks before loading read it
    shutil.copytree(folder, plain, ignore=shutil.ignore_patterns("*.safetensors"))
    config = json.loads((plain / "unet" / "config.json").read_text())
    (plain / "unet" / "config.json").write_text(json.dumps({**config, "in_channels": 4}))
    pngs = write_pngs(tmp_path / "in", 1, 16, "RGB")
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8), "L").save(tmp_path / "mask.png")
    base = ["--checkpoint", folder, "--images", pngs, "--prompt", "a", "--steps", 2]
    for extra, pattern in [(["--mask", tmp_path / "mask.png"], "--mask does not apply to an InstructPix2Pix folder"),
                           (["--strength", 0.5], "--strength does not apply to an InstructPix2Pix"),
                           (["--posterior", "mean"], "--posterior does not apply"),
                           (["--scheduler", "lcm"], "--scheduler does not apply"),
                           (["--pag-scale", 2], "--pag-scale does not apply"),
                           (["--guidance-rescale", 0.5], "--guidance-rescale does not apply"),
                           (["--apg-eta", 0.5], "--apg-eta does not apply"),
                           (["--image-guidance-scale", -1], "image-guidance-scale"),
                           (["--checkpoint", plain, "--image-guidance-scale", 2],
                            "--image-guidance-scale applies to an InstructPix2Pix folder")]:
        target = tmp_path / "never"
        code, out, err = cli(capsys, *base, *extra, "--out", target)
        assert code == 2 and len(err.strip().splitlines()) == 1 and not target.exists(), err
        assert re.search(pattern, err), err
    sample_is_refused(capsys, folder, tmp_path, "InstructPix2Pix UNet (in_channels=8: latents + image latents): it "
                      "only edits images")
    with pytest.raises(DiffkitError, match=r"^sd has an InstructPix2Pix UNet .* with an LCMScheduler; allowed: an "
                                           r"InstructPix2Pix UNet with a diffusion scheduler"):
        check_stable_diffusion_unet(dict(sd.unet.config), "sd", lcm=True, instruct_pix2pix=True)
    with pytest.raises(DiffkitError, match="it only edits images"):
        load_stable_diffusion(folder, progress=False)
    for run in (lambda: text_to_image(sd, "a", steps=2), lambda: latent_img2img(sd.denoiser, sd, IMAGE, 0.5, "ddim", 2,
                                                                                progress=False)):
        with pytest.raises(DiffkitError, match="InstructPix2Pix UNet .* it only edits images"):
            run()
    four = dataclasses.replace(sd, unet=type("UNet", (), {"config": {"in_channels": 4, "out_channels": 4}})())
    with pytest.raises(DiffkitError, match="needs an InstructPix2Pix folder"):
        instruct_pix2pix(sd.denoiser, four, IMAGE, "ddim", 2, progress=False)
