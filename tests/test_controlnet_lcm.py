"""ControlNet on latent consistency model folders against diffusers' StableDiffusionControlNetPipeline:
an LCM-LoRA (a UNet LoRA file merged with ``lora=`` / ``--lora`` into a folder whose scheduler is an
LCMScheduler of a small timestep scaling, where the boundary condition matters; diffusers:
``load_lora_weights`` + ``fuse_lora``) with and without classifier-free guidance, a scale, a window and
guess mode, and an LCM UNet with a guidance input (the pipeline embeds s - 1 as the UNet's
``timestep_cond``, none for the ControlNet), also with the tcd sampler (TCDScheduler). Tiny random models
(tests/test_controlnet.py's ControlNet, tests/test_sd_lora.py's LoRA); same prompts, z_T and per-sample
step noise on both sides."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from diffkit.cli import main  # noqa: E402
from diffkit.interop.controlnet import ControlNets  # noqa: E402
from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image  # noqa: E402
from diffkit.noise import generators_from_seed  # noqa: E402
from test_controlnet import control_png, tiny_controlnet  # noqa: E402
from test_interop_diffusers import relative_error, tiny_sd_components  # noqa: E402
from test_interop_lcm import COND_DIM, PROMPTS, SMALL_SCALING  # noqa: E402
from test_sd_lora import UNET_LORA, _add_lora  # noqa: E402


def _folder(root, name, scheduler_options=None, **unet_options):
    """A tiny SD folder with an LCMScheduler (``unet_options``: e.g. the LCM UNet's time_cond_proj_dim) and
    a ControlNet (saved beside it) of the plain SD UNet of its blocks (as SD 1.5 ControlNets serve
    LCM_Dreamshaper: ``ControlNetModel.from_unet`` cannot copy an LCM UNet's guidance projection)."""
    unet, vae, text_encoder, tokenizer = tiny_sd_components(root, **unet_options)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                             scheduler=diffusers.LCMScheduler(**(scheduler_options or {})),
                                             safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root / name)
    net = tiny_controlnet(tiny_sd_components(root)[0] if unet_options else unet, 3)
    net.save_pretrained(root / f"{name}_cn")
    return root / name, net


def _pipeline(folder, net, lora=None):
    pipe = diffusers.StableDiffusionControlNetPipeline.from_pretrained(
        folder, controlnet=net, local_files_only=True, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, diffusers.LCMScheduler)
    if lora is not None:
        pipe.load_lora_weights(str(lora))
        pipe.fuse_lora(lora_scale=1.0)
    return pipe


@pytest.fixture(scope="module")
def lcm_lora_controlnet(tmp_path_factory):
    """(the diffusers pipeline with the LCM-LoRA fused, our SD with it merged, the ControlNet, folder, LoRA
    file, control PNG)."""
    root = tmp_path_factory.mktemp("controlnet_lcm_lora")
    folder, net = _folder(root, "sd_lcm", SMALL_SCALING)  # c_skip(999) = 0.5: the boundary condition matters
    unet = tiny_sd_components(root)[0]
    state, config = _add_lora(unet, 5, **UNET_LORA)
    diffusers.StableDiffusionPipeline.save_lora_weights(root / "lora", weight_name="lcm_lora.safetensors",
                                                        unet_lora_layers=state, unet_lora_adapter_metadata=config)
    lora = root / "lora" / "lcm_lora.safetensors"
    sd = load_stable_diffusion(folder, progress=False, lora=[lora])
    assert sd.consistency is not None and not sd.guidance_embedding_dim
    return _pipeline(folder, net, lora), sd, net, folder, lora, control_png(root / "control.png")


def _theirs(pipe, png, latents, steps, scale, seed, **options):
    from PIL import Image
    with torch.no_grad():
        return pipe(PROMPTS, image=Image.open(png).convert("RGB"), num_inference_steps=steps, guidance_scale=scale,
                    latents=latents.clone(), generator=generators_from_seed(seed, 2), output_type="latent",
                    **options).images


@pytest.mark.parametrize("steps, scale, control, pipe_options", [
    (4, 1.0, {}, {}),
    (4, 1.8, {"scales": 0.8}, {"controlnet_conditioning_scale": 0.8}),
    (3, 1.8, {"start": 0.3, "end": 1.0}, {"control_guidance_start": 0.3, "control_guidance_end": 1.0}),
    (2, 1.8, {"guess_mode": True}, {"guess_mode": True}),
])
def test_lcm_lora_with_controlnet_matches_the_pipeline(lcm_lora_controlnet, steps, scale, control, pipe_options):
    """The consistency sampler (the folder's default) on the LCM-LoRA-merged UNet with the ControlNet's
    residuals = StableDiffusionControlNetPipeline + LCMScheduler + the fused LCM-LoRA: same z_0."""
    pipe, sd, net, folder, lora, png = lcm_lora_controlnet
    latents = torch.randn(sd.latent_shape(2), generator=torch.Generator().manual_seed(7))
    theirs = _theirs(pipe, png, latents, steps, scale, 3, **pipe_options)
    ours = text_to_image(sd, PROMPTS, steps=steps, guidance_scale=scale, latents=latents, seed=3,
                         return_latents=True, controlnet=ControlNets([net], [png], **control))
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    if not control:  # the ControlNet and the LoRA both reach the result
        plain = text_to_image(sd, PROMPTS, steps=steps, guidance_scale=scale, latents=latents, seed=3,
                              return_latents=True)
        assert relative_error(plain, theirs) > 1e-3
        no_lora = load_stable_diffusion(folder, progress=False)
        other = text_to_image(no_lora, PROMPTS, steps=steps, guidance_scale=scale, latents=latents, seed=3,
                              return_latents=True, controlnet=ControlNets([net], [png]))
        assert relative_error(other, theirs) > 1e-3


def test_lcm_unet_with_guidance_input_and_controlnet_matches_the_pipeline(tmp_path):
    """An LCM UNet (time_cond_proj_dim): StableDiffusionControlNetPipeline embeds s - 1 for the UNet
    (no classifier-free pass; the ControlNet gets no timestep_cond); diffkit's with_weight does the same.
    With the tcd sampler: the pipeline with a TCDScheduler."""
    folder, net = _folder(tmp_path, "lcm", time_cond_proj_dim=COND_DIM)
    pipe = _pipeline(folder, net)
    sd = load_stable_diffusion(folder, progress=False)
    png = control_png(tmp_path / "control.png", seed=2)
    latents = torch.randn(sd.latent_shape(2), generator=torch.Generator().manual_seed(9))
    theirs = _theirs(pipe, png, latents, 4, 6.0, 5)
    ours = text_to_image(sd, PROMPTS, guidance_scale=6.0, latents=latents, seed=5, return_latents=True,
                         controlnet=ControlNets([net], [png]))
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    # the tcd sampler (TCDScheduler reads the UNet's output without the boundary condition, which at LCM's
    # timestep scaling 10 changes nothing above 1e-7)
    tcd_pipe = diffusers.StableDiffusionControlNetPipeline(
        **{**pipe.components, "scheduler": diffusers.TCDScheduler.from_config(pipe.scheduler.config)})
    tcd_pipe.set_progress_bar_config(disable=True)
    theirs = _theirs(tcd_pipe, png, latents, 4, 6.0, 4, eta=0.5)
    ours = text_to_image(sd, PROMPTS, sampler="tcd:sigma_min", gamma=0.5, guidance_scale=6.0, latents=latents,
                         seed=4, return_latents=True, controlnet=ControlNets([net], [png]))
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)


def test_sample_command_with_lora_and_controlnet_on_an_lcm_folder(lcm_lora_controlnet, tmp_path, monkeypatch):
    """``diffkit sample --checkpoint LCM_LORA_FOLDER --lora FILE --controlnet CN --control-image PNG``: the
    library's images (consistency sampler, 4 steps, no guidance: the folder's defaults)."""
    import diffkit.images
    pipe, sd, net, folder, lora, png = lcm_lora_controlnet
    grids, save_grid = [], diffkit.images.save_grid
    monkeypatch.setattr(diffkit.images, "save_grid", lambda images, *a, **k: grids.append(images) or save_grid(
        images, *a, **k))
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(folder), "--lora", str(lora), "--controlnet",
                 str(folder.parent / "sd_lcm_cn"), "--control-image", str(png), "--prompt", PROMPTS[0],
                 "--prompt", PROMPTS[1], "--num", "2", "--nrow", "1", "--seed", "4", "--batch-size", "2",
                 "--out", str(out), "--no-progress"]) == 0
    ours = text_to_image(sd, PROMPTS, seed=4, controlnet=ControlNets([net], [png]))
    torch.testing.assert_close((grids[0] + 1) / 2, ours, rtol=0, atol=1e-5)
