"""FLUX.1 ControlNets (diffkit.interop.flux_controlnet) against diffusers' FluxControlNetPipeline on the tiny random
FLUX folders of test_interop_flux (FLUX.1-dev-like with guidance embeds, FLUX.1-schnell-like without) and tiny random
FluxControlNetModels (their zero-initialised layers made random); nothing downloaded."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.controlnet import ControlNets, load_model_folder  # noqa: E402
from diffkit.interop.flux import load_flux, pack_latents, text_to_image, unpack_latents  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_flux import SIZE, tiny_flux_pipeline  # noqa: E402
from test_sd3_controlnet import assert_sample_refusals, control_image_files, randomised_zero_layers  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]
KW = dict(height=SIZE, width=SIZE, max_sequence_length=12)


def tiny_flux_controlnet(seed: int, **options):
    torch.manual_seed(seed)
    model = diffusers.FluxControlNetModel(**{
        "patch_size": 1, "in_channels": 64, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 8,
        "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32, "guidance_embeds": True,
        "axes_dims_rope": (2, 2, 4), **options})
    return randomised_zero_layers(model)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """({dev: (folder, load_flux of it)}, {name: ControlNet folder}, control image paths)."""
    root = tmp_path_factory.mktemp("fluxcn")
    folders = {}
    for dev in (True, False):
        tiny_flux_pipeline(root, dev).save_pretrained(root / f"flux_{dev}")
        folders[dev] = (root / f"flux_{dev}", load_flux(root / f"flux_{dev}", progress=False))
    nets = {}
    for index, (name, options) in enumerate((("guided", {}), ("unguided", {"guidance_embeds": False}),
                                             ("union", {"num_mode": 3}))):
        tiny_flux_controlnet(3 + index, **options).save_pretrained(root / name)
        nets[name] = root / name
    return folders, nets, control_image_files(root)


def _controlnet(folder):
    return load_model_folder("FluxControlNetModel", folder, progress=False)


def _theirs(flux, controlnet, images, latents, parts_of=None, **kw):
    """FluxControlNetPipeline's latents (of ``flux``'s parts, or those of the pipeline ``parts_of``)."""
    from PIL import Image
    parts = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    pipe = diffusers.FluxControlNetPipeline(
        **{name: getattr(parts_of or flux, name) for name in parts}, controlnet=controlnet,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_config(flux.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    opened = [image if isinstance(image, list) else Image.open(image) for image in images]
    with torch.no_grad():
        out = pipe(PROMPTS, control_image=opened if isinstance(controlnet, list) else opened[0],
                   num_inference_steps=4, latents=pack_latents(latents), output_type="latent",
                   generator=[torch.Generator().manual_seed(11 + i) for i in range(len(PROMPTS))], **KW, **kw).images
    return unpack_latents(out, 8, 8)


def _latents():
    return torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("dev, net", [(True, "guided"), (True, "unguided"), (False, "guided")])
def test_flux_controlnet_matches_the_pipeline(tiny, dev, net):
    """The pipeline's latents for two prompts (its default embedded guidance 7.0 for the transformer and / or the
    ControlNet), with its VAE posterior draw of the control image (one generator per prompt, seeds 11, 12 there;
    control_seed=11 here)."""
    folders, nets, images = tiny
    _, flux = folders[dev]
    latents = _latents()
    theirs = _theirs(flux, _controlnet(nets[net]), images[:1], latents, controlnet_conditioning_scale=0.7)
    control = ControlNets([_controlnet(nets[net])], images[:1], 0.7)
    ours = text_to_image(flux, PROMPTS, steps=4, latents=latents, return_latents=True, controlnet=control,
                         control_seed=11, **KW)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    plain = text_to_image(flux, PROMPTS, steps=4, latents=latents, return_latents=True,
                          guidance_scale=7.0 if dev else None, **KW)
    assert relative_error(plain, theirs) > 0.05  # the ControlNet acts
    mean = text_to_image(flux, PROMPTS, steps=4, latents=latents, return_latents=True, controlnet=control,
                         control_posterior="mean", **KW)
    assert relative_error(mean, theirs) > 1e-4  # the posterior's draw is the pipeline's


def test_one_control_image_per_prompt_matches_the_flux_pipeline(tiny):
    """A list of control images, one per prompt (the pipeline's image batch, its posterior draws from one generator
    per prompt): each sample takes its prompt's image."""
    folders, nets, images = tiny
    _, flux = folders[True]
    latents = _latents()
    from PIL import Image
    theirs = _theirs(flux, _controlnet(nets["guided"]), [[Image.open(image) for image in images]], latents)
    ours = text_to_image(flux, PROMPTS, steps=4, latents=latents, return_latents=True, control_seed=11,
                         controlnet=ControlNets([_controlnet(nets["guided"])], [images]), **KW)
    print("flux per prompt", float((ours - theirs).abs().max()), relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)


def test_multi_controlnet_and_window_match_the_pipeline(tiny):
    """Two ControlNets (scales 0.7 and 1.2, windows [0, 0.5] and [0.25, 1], embedded guidance 3): the pipeline's
    FluxMultiControlNetModel."""
    folders, nets, images = tiny
    _, flux = folders[True]
    latents = _latents()
    theirs = _theirs(flux, [_controlnet(nets["guided"]), _controlnet(nets["guided"])], images, latents,
                     controlnet_conditioning_scale=[0.7, 1.2], control_guidance_start=[0.0, 0.25],
                     control_guidance_end=[0.5, 1.0], guidance_scale=3.0)
    control = ControlNets([_controlnet(nets["guided"])] * 2, images, [0.7, 1.2], [0.0, 0.25], [0.5, 1.0])
    ours = text_to_image(flux, PROMPTS, steps=4, latents=latents, return_latents=True, controlnet=control,
                         control_seed=11, guidance_scale=3.0, **KW)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    always = ControlNets([_controlnet(nets["guided"])] * 2, images, [0.7, 1.2])
    unwindowed = text_to_image(flux, PROMPTS, steps=4, latents=latents, return_latents=True, controlnet=always,
                               control_seed=11, guidance_scale=3.0, **KW)
    assert relative_error(unwindowed, theirs) > 1e-3  # the windows act


def test_true_cfg_with_a_controlnet_matches_the_pipeline(tiny):
    """true_cfg_scale 2.5 with a negative prompt and a ControlNet window: the pipeline runs the ControlNet on the
    conditional pass only and gives its negative pass the same residuals; diffkit in one batched call."""
    folders, nets, images = tiny
    _, flux = folders[True]
    latents = _latents()
    theirs = _theirs(flux, _controlnet(nets["guided"]), images[:1], latents, true_cfg_scale=2.5,
                     negative_prompt="ugly", control_guidance_end=0.75)
    control = ControlNets([_controlnet(nets["guided"])], images[:1], 1.0, 0.0, 0.75)
    ours = text_to_image(flux, PROMPTS, steps=4, latents=latents, return_latents=True, controlnet=control,
                         control_seed=11, true_cfg_scale=2.5, negative_prompt="ugly", **KW)
    print("flux controlnet true cfg", float((ours - theirs).abs().max()), relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)


def test_flux_controlnet_with_a_lora_matches_the_pipeline(tiny, tmp_path):
    """load_flux(lora=[(file, 0.7)]) with a ControlNet: the pipeline after load_lora_weights + fuse_lora(0.7) (the
    transformer and CLIP adapted, never the ControlNet)."""
    pytest.importorskip("peft")
    from test_interop_flux_more import FLUX_LORA
    from test_sd_lora import fused_transformer_lora
    folders, nets, images = tiny
    folder, flux = folders[True]
    lora, fused = fused_transformer_lora(diffusers.FluxPipeline, folder, tmp_path, FLUX_LORA, "text_encoder")
    latents = _latents()
    theirs = _theirs(flux, _controlnet(nets["guided"]), images[:1], latents, parts_of=fused)
    merged = load_flux(folder, progress=False, lora=[(lora, 0.7)])
    control = ControlNets([_controlnet(nets["guided"])], images[:1])
    ours = text_to_image(merged, PROMPTS, steps=4, latents=latents, return_latents=True, controlnet=control,
                         control_seed=11, **KW)
    print("flux controlnet lora", float((ours - theirs).abs().max()), relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    unmerged = text_to_image(flux, PROMPTS, steps=4, latents=latents, return_latents=True, controlnet=control,
                             control_seed=11, **KW)
    assert relative_error(unmerged, theirs) > 1e-3  # the LoRA acts


def test_other_samplers_run_with_a_flux_controlnet(tiny):
    """Any diffkit sampler runs the controlled transformer on its own grid of the size's flow schedule: 8 steps of
    UniPC and DPM-Solver++(2M) land near the pipeline loop's 16 steps (relative differences quoted in
    docs/interop.md)."""
    folders, nets, images = tiny
    _, flux = folders[True]
    control = ControlNets([_controlnet(nets["guided"])], images[:1], 0.7)
    kw = dict(latents=_latents(), return_latents=True, control_posterior="mean", **KW)
    reference = text_to_image(flux, PROMPTS, steps=16, controlnet=control, **kw)
    plain = relative_error(text_to_image(flux, PROMPTS, steps=16, guidance_scale=7.0, **kw), reference)
    for sampler in ("unipc", "dpm-solver++-2m"):
        ours = text_to_image(flux, PROMPTS, sampler=sampler, steps=8, controlnet=control, **kw)
        assert relative_error(ours, reference) < plain / 3, (sampler, relative_error(ours, reference), plain)


def test_sample_command_runs_flux_controlnet(tiny, tmp_path, capsys):
    """`diffkit sample --controlnet DIR --control-image PNG` on a FLUX folder writes text_to_image's images byte for
    byte (sample i's control latents from --seed + i), and refuses what it does not support in one line."""
    from diffkit.cli import main
    from diffkit.images import save_grid
    folders, nets, images = tiny
    folder, flux = folders[True]
    out = tmp_path / "grid.png"
    common = ["--checkpoint", str(folder), "--prompt", PROMPTS[0], "--num", "2", "--nrow", "1", "--steps", "3",
              "--seed", "5", "--batch-size", "2", "--no-progress", "--height", "16", "--width", "16",
              "--max-sequence-length", "12", "--controlnet", str(nets["guided"]), "--control-image", str(images[0])]
    assert main(["sample", "--out", str(out), "--controlnet-scale", "0.6", "--control-guidance-start", "0.3"]
                + common) == 0
    control = ControlNets([_controlnet(nets["guided"])], images[:1], 0.6, 0.3)
    expected = text_to_image(flux, PROMPTS[:1] * 2, steps=3, seed=5, controlnet=control, control_seed=5,
                             output_range="-1,1", **KW)
    save_grid(expected, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert_sample_refusals(main, common, tmp_path, capsys, (
        (["--guess-mode"], "--guess-mode applies to Stable Diffusion ControlNets; the FLUX"),
        (["--controlnet", str(folder / "transformer"), "--control-image", str(images[0])],
         "holds a 'FluxTransformer2DModel'; allowed: a diffusers FluxControlNetModel folder"),
        (["--controlnet", str(nets["union"]), "--control-image", str(images[0])],
         "--controlnet .*union is a ControlNet-Union: give --control-mode NAME\\|INDEX")))


def test_scale_zero_is_the_folder_alone_bit_for_bit(tiny):
    """A ControlNet at scale 0 is never called: the run (true CFG here) is the one without it at the same embedded
    guidance, bit for bit (FluxNet's refactored call, ``controls`` None, changes nothing)."""
    folders, nets, images = tiny
    _, flux = folders[True]
    kw = dict(steps=3, latents=_latents(), return_latents=True, guidance_scale=4.0, true_cfg_scale=2.0,
              negative_prompt="ugly", **KW)
    off = ControlNets([_controlnet(nets["guided"])], images[:1], 0.0)
    assert torch.equal(text_to_image(flux, PROMPTS, controlnet=off, **kw), text_to_image(flux, PROMPTS, **kw))


def test_flux_controlnet_refusals(tiny):
    """A ControlNet-Union without a control mode (test_flux_controlnet_union), ControlNets that disagree on
    guidance_embeds, one of another width: one line."""
    folders, nets, images = tiny
    _, flux = folders[True]
    wide = tiny_flux_controlnet(0, num_attention_heads=4)
    for models, match in (([_controlnet(nets["union"])], "a ControlNet-Union needs a control mode per control image"),
                          ([_controlnet(nets["guided"]), _controlnet(nets["unguided"])],
                           "number 2 has guidance_embeds: False but --controlnet number 1 True"),
                          ([wide], "number 1 has num_attention_heads \\* attention_head_dim=32 but this FLUX folder "
                                   "needs 16")):
        with pytest.raises(DiffkitError, match=match):
            text_to_image(flux, PROMPTS, steps=2, latents=_latents(), controlnet=ControlNets(models, images[:1] *
                                                                                              len(models)), **KW)
