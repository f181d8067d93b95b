"""SD-XL inpainting UNets (9 input channels, diffusers/stable-diffusion-xl-1.0-inpainting-0.1 layout): diffkit's one
9-channel path (diffkit.interop.sd_inpaint) with SD-XL's pooled text and time-id conditioning, against diffusers'
StableDiffusionXLInpaintPipeline on the same tiny random folder; ``diffkit edit --mask`` on it; what is refused."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_interop_diffusers import relative_error
from test_latent_editing import _generators
from test_sd_inpaint import inpainted_by_the_cli

from diffkit.errors import DiffkitError
from diffkit.latent_editing import latent_inpaint

diffusers = pytest.importorskip("diffusers")

PROMPTS = ["a photo of a cat", "hot"]
DDIM_GRID = dict(spacing="leading", final="sigma_min", steps_offset=1, eta=0.0)  # the folder's DDIMScheduler
IMAGE = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(3))  # H != W reaches the time ids
MASK = torch.zeros(2, 1, 16, 24)
MASK[:, :, 4:12, 3:17] = 1
MASK[1, :, :3] = 0.7  # binarised to 1 by both
MASK[0, :, 12:, :] = 0.3  # and to 0
MASK[0, :, 14:, :4] = 0.5  # and to 1 (repainted: the masked image is image * (mask < 0.5))


@pytest.fixture(scope="module")
def xl_inpaint(tmp_path_factory):
    """(StableDiffusionXLInpaintPipeline, folder, the folder loaded with inpainting=True): the tiny SD-XL pipeline's
    encoders, VAE and DDIM with a 9-channel SD-XL UNet (requires_aesthetics_score False, as the
    stable-diffusion-xl-1.0-inpainting-0.1 folder)."""
    from test_interop_sd_xl import tiny_sd_xl_pipeline, tiny_sd_xl_unet
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    root = tmp_path_factory.mktemp("tiny_xl_inpaint")
    base = tiny_sd_xl_pipeline(root)
    torch.manual_seed(2)
    unet = tiny_sd_xl_unet(cross_attention_dim=56, added_inputs=68, in_channels=9)
    pipe = diffusers.StableDiffusionXLInpaintPipeline(**{**base.components, "unet": unet},
                                                      requires_aesthetics_score=False, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(root / "xl9")
    return pipe, root / "xl9", load_stable_diffusion(root / "xl9", progress=False, inpainting=True)


def _theirs(pipe, strength, scheduler=None, steps=4, output_type="latent", **kw):
    original = pipe.scheduler
    pipe.scheduler = scheduler or original
    try:
        with torch.no_grad():
            return pipe(PROMPTS, image=IMAGE, mask_image=MASK, strength=strength, num_inference_steps=steps,
                        guidance_scale=5.0, height=16, width=24, output_type=output_type, generator=_generators(),
                        **kw).images
    finally:
        pipe.scheduler = original


def _png_tensor(path):
    return torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)[None].float() / 127.5 - 1


def _are_the_librarys(tmp_path, model, pngs, mask):
    """tmp_path/out's PNGs (:func:`inpainted_by_the_cli`) byte for byte: latent_inpaint of the SD-XL ``model`` with
    prompt_guidance's denoiser and cond ("a cat", s = 5, time ids (16, 16, 0, 0, 16, 16)), image i from seed 4 + i,
    written by the command's writer."""
    from diffkit.images import save_images
    guided, cond = model.prompt_guidance(["a cat"], None, 5.0, "diffusers", 0.0, image_size=(16, 16))
    images = [latent_inpaint(guided, model, _png_tensor(pngs / f"in_{i}.png"), mask, "ddim", 3, posterior="sample",
                             seed=4 + i, cond=cond, progress=False).clamp(-1, 1) for i in range(2)]
    save_images(torch.cat(images), tmp_path / "library", prefix="edit")
    for i in range(2):
        name = f"edit_{i:05d}.png"
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "library" / name).read_bytes(), name


def _ours(xl, strength, sampler="ddim", steps=4, grid=DDIM_GRID, **kw):
    guided, cond = xl.prompt_guidance(PROMPTS, None, 5.0, "diffusers", 0.0, image_size=(16, 24))
    return latent_inpaint(guided, xl, IMAGE * 2 - 1, MASK, sampler, steps, strength=strength, posterior="sample",
                          seed=10, cond=cond, progress=False, **grid, **kw)


@pytest.mark.parametrize("strength, eta", [(1.0, 0.0), (0.6, 0.0), (1.0, 0.7)])
def test_9_channel_sd_xl_inpainting_is_the_sd_xl_inpaint_pipeline(xl_inpaint, strength, eta):
    """DDIM, s = 5, two prompts, per-image generators: strength 1 from pure noise (is_strength_max), 0.6 from the
    image's posterior sample noised to the strength's first time; the masked image's latents drawn after the noise;
    every UNet call gets cat([z_t, mask, s E(image * (mask < 0.5))]) and the pooled embeddings and time ids
    (16, 24, 0, 0, 16, 24) of both halves. Latents to 1e-5 relative."""
    pipe, _, xl = xl_inpaint
    theirs = _theirs(pipe, strength, eta=eta)
    ours = _ours(xl, strength, grid={**DDIM_GRID, "eta": eta}, return_latents=True)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)


def test_9_channel_sd_xl_inpainting_decodes_as_the_pipeline(xl_inpaint):
    """The decoded images (output_type="pt", the VAE with force_upcast in float32) to 1e-5 at strength 0.6."""
    pipe, _, xl = xl_inpaint
    theirs = _theirs(pipe, 0.6, output_type="pt")
    ours = ((_ours(xl, 0.6) + 1) / 2).clamp(0, 1)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)


def test_9_channel_sd_xl_inpainting_with_karras_dpm_solver_is_the_pipeline(xl_inpaint):
    """DPMSolverMultistepScheduler(use_karras_sigmas=True), 10 steps, strengths 1 and 0.6: diffkit's
    dpm-solver++-2m on spacing="karras" (truncated by strength_grid below 1), the UNet's time rounded as diffusers
    rounds it (tests/test_sd_inpaint.py: diffkit gives the continuous time otherwise). Latents to 1e-5 relative."""
    pipe, _, xl = xl_inpaint
    dpm = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)
    hook = xl.unet.register_forward_pre_hook(lambda module, args: (args[0], torch.as_tensor(args[1]).round(),
                                                                   *args[2:]))
    try:
        for strength in (1.0, 0.6):
            theirs = _theirs(pipe, strength, dpm, steps=10)
            ours = _ours(xl, strength, "dpm-solver++-2m", 10, dict(spacing="karras", final="zero"),
                         return_latents=True)
            assert relative_error(ours, theirs) < 1e-5, (strength, relative_error(ours, theirs))
    finally:
        hook.remove()


def test_the_cli_on_a_9_channel_sd_xl_folder_is_the_library_byte_for_byte(xl_inpaint, tmp_path, capsys):
    """``diffkit edit --checkpoint XL_INPAINT --mask``: each PNG byte-identical to latent_inpaint's image written
    by the same writer (image i from seed + i alone in its batch, default strength 1, s = 5, posterior sample, time
    ids of the images' size)."""
    _, folder, xl = xl_inpaint
    pngs, mask = inpainted_by_the_cli(capsys, folder, tmp_path)
    _are_the_librarys(tmp_path, xl, pngs, mask)


def test_what_a_9_channel_sd_xl_folder_does_not_take_is_refused_in_one_line(xl_inpaint, tmp_path, capsys):
    """Without --mask (img2img), RePaint / reconstruction guidance, the aesthetic scores (a refiner's; this folder's
    time ids hold the target size), diffkit sample (text to image): one line, exit 2, no output; in the library
    loading without inpainting=True, text_to_image, aesthetic_score, and a 9-channel UNet in a refiner-style
    folder."""
    from test_sd_inpaint import refused_by_the_cli
    from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image
    _, folder, xl = xl_inpaint
    refused_by_the_cli(capsys, folder, tmp_path, [(["--aesthetic-score", 6],
                                                   "--aesthetic-score applies to an SD-XL refiner folder")])
    with pytest.raises(DiffkitError, match=r"has an inpainting UNet \(in_channels=9.*it only inpaints"):
        load_stable_diffusion(folder, progress=False)
    with pytest.raises(DiffkitError, match="it only inpaints; use latent_inpaint"):
        text_to_image(xl, "a", steps=2, height=16, width=16)
    with pytest.raises(DiffkitError, match="aesthetic_score=6 is not allowed: aesthetic scores condition a refiner"):
        xl.prompt_guidance(PROMPTS, None, 5.0, "diffusers", 0.0, image_size=(16, 24),
                           micro_conditioning={"aesthetic_score": 6})
    refiner = tmp_path / "refiner9"
    shutil.copytree(folder, refiner)
    index = json.loads((refiner / "model_index.json").read_text())
    (refiner / "model_index.json").write_text(json.dumps({**index, "requires_aesthetics_score": True}))
    with pytest.raises(DiffkitError, match=r"refiner-style folder .* with an inpainting UNet; allowed: a 9-channel") \
            as error:
        load_stable_diffusion(refiner, progress=False, inpainting=True)
    assert "\n" not in str(error.value)


def test_ip_adapter_on_a_9_channel_sd_xl_unet_is_the_sd_xl_inpaint_pipeline_with_the_adapter(xl_inpaint):
    """IPAdapter.adapting wraps the inpainting net: the UNet gets the 9 channels and image_embeds beside text_embeds
    and time_ids, as StableDiffusionXLInpaintPipeline with load_ip_adapter (scale 0.7, strength 0.6); the adapter
    acts."""
    from test_sd_inpaint import ip_adapter_files, with_the_ip_adapter
    from diffkit.interop.ip_adapter import load_ip_adapter
    pipe, folder, xl = xl_inpaint
    weights, png = ip_adapter_files(pipe, folder.parent)
    theirs = with_the_ip_adapter(pipe, folder.parent, weights, png, _theirs)
    ours = _ours(load_ip_adapter(weights, png, 0.7, progress=False).adapting(xl), 0.6, return_latents=True)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    assert relative_error(ours, _ours(xl, 0.6, return_latents=True)) > 1e-2


@pytest.mark.parametrize("strength, start, guess", [(1.0, 0.25, False), (0.6, 0.0, True)])
def test_a_controlnet_on_a_9_channel_sd_xl_unet_is_the_sd_xl_controlnet_inpaint_pipeline(xl_inpaint, tmp_path,
                                                                                          strength, start, guess):
    """StableDiffusionXLControlNetInpaintPipeline with the 9-channel UNet: the SD-XL ControlNet (in_channels 4)
    reads the latents with text_embeds and time_ids, the UNet the 9 channels plus its residuals; a window over the
    strength's steps, and guess mode."""
    from test_controlnet import control_png, tiny_controlnet
    from diffkit.interop.controlnet import ControlNets, editing_grid
    pipe, _, xl = xl_inpaint
    net = tiny_controlnet(diffusers.UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 4}), 1)
    png = control_png(tmp_path / "control.png", 16, 24)
    other = diffusers.StableDiffusionXLControlNetInpaintPipeline(**{**pipe.components, "controlnet": net},
                                                                 add_watermarker=False)
    other.set_progress_bar_config(disable=True)
    theirs = _theirs(other, strength, control_image=Image.open(png).convert("RGB"), controlnet_conditioning_scale=0.7,
                     control_guidance_start=start, guess_mode=guess)
    grid = editing_grid(xl, "ddim", 4, strength, dict(DDIM_GRID))
    controlled = ControlNets([net], [png], 0.7, start, guess_mode=guess).controlling(xl, 16, 24, grid)
    ours = _ours(controlled, strength, return_latents=True)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    assert relative_error(ours, _ours(xl, strength, return_latents=True)) > 1e-3


def test_the_cli_with_a_controlnet_and_an_ip_adapter_on_a_9_channel_sd_xl_folder_is_the_library(xl_inpaint, tmp_path,
                                                                                                 capsys):
    """``diffkit edit --checkpoint XL_INPAINT --mask M --controlnet DIR --control-image PNG --ip-adapter FILE``: the
    PNG byte-identical to latent_inpaint on IPAdapter.adapting(ControlNets.controlling(xl)) with prompt_guidance's
    denoiser and cond (window start 0.25 of the strength-1 grid)."""
    from test_controlnet import control_png, tiny_controlnet
    from test_sd_inpaint import ip_adapter_files
    from diffkit.interop.controlnet import ControlNets, editing_grid
    from diffkit.interop.ip_adapter import load_ip_adapter
    pipe, folder, xl = xl_inpaint
    model = tiny_controlnet(diffusers.UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 4}), 1)
    model.save_pretrained(tmp_path / "cn")
    control = control_png(tmp_path / "control.png")
    weights, image_prompt = ip_adapter_files(pipe, tmp_path)
    pngs, mask = inpainted_by_the_cli(capsys, folder, tmp_path, "--controlnet", tmp_path / "cn", "--control-image",
                                      control, "--control-guidance-start", 0.25, "--ip-adapter", f"{weights}:0.7",
                                      "--ip-adapter-image", image_prompt)
    grid = editing_grid(xl, "ddim", 3, 1.0, {})
    controlled = ControlNets([model], [control], 1.0, 0.25).controlling(xl, 16, 16, grid)
    adapted = load_ip_adapter(weights, image_prompt, 0.7, progress=False).adapting(controlled)
    _are_the_librarys(tmp_path, adapted, pngs, mask)
