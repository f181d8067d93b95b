"""Perturbed-attention guidance on Stable Diffusion / SD-XL folders (diffkit.interop.sd_pag) against diffusers'
StableDiffusionPAGPipeline / StableDiffusionXLPAGPipeline on the tiny random pipelines of test_interop_diffusers /
test_interop_sd_xl (nothing downloaded)."""
import dataclasses
import types

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.stable_diffusion import text_to_image  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd_xl import PROMPTS  # noqa: E402
import test_sd_prompts  # noqa: E402

tiny_sd = test_sd_prompts.tiny_sd  # (pipeline, its saved folder, the loaded folder): the fixtures, shared
tiny_xl = test_sd_prompts.tiny_xl

STEPS = 4


def _pag_pipeline(pipe, layers):
    """The PAG pipeline of ``pipe``'s components (a DDIM scheduler of its config) with ``pag_applied_layers``."""
    components = dict(pipe.components, scheduler=diffusers.DDIMScheduler.from_config(pipe.scheduler.config))
    if isinstance(pipe, diffusers.StableDiffusionXLPipeline):
        pag = diffusers.StableDiffusionXLPAGPipeline(**components, pag_applied_layers=layers, add_watermarker=False)
    else:
        pag = diffusers.StableDiffusionPAGPipeline(**components, pag_applied_layers=layers,
                                                   requires_safety_checker=False)
    pag.set_progress_bar_config(disable=True)
    return pag


def _compare(fixture, layers, scale, pag_scale, adaptive=0.0, **kw):
    """(ours, theirs) z_0 of DDIM eta 0 on the scheduler's timesteps, the same z_T."""
    pipe, _, sd = fixture
    latents = torch.randn(sd.latent_shape(2), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        theirs = _pag_pipeline(pipe, layers)(PROMPTS, num_inference_steps=STEPS, guidance_scale=scale,
                                             latents=latents.clone(), pag_scale=pag_scale,
                                             pag_adaptive_scale=adaptive, output_type="latent", **kw).images
    ours = text_to_image(sd, PROMPTS, sampler="ddim", steps=STEPS, grid="scheduler", guidance_scale=scale,
                         latents=latents, return_latents=True, pag_scale=pag_scale, pag_layers=layers,
                         pag_adaptive_scale=adaptive, **kw)
    plain = text_to_image(sd, PROMPTS, sampler="ddim", steps=STEPS, grid="scheduler", guidance_scale=scale,
                          latents=latents, return_latents=True, **kw)
    assert relative_error(plain, theirs) > 1e-3  # PAG mattered
    return ours, theirs


@pytest.mark.parametrize("layers, scale, pag_scale, adaptive, kw", [
    ("mid", 5.0, 3.0, 0.0, {}),  # CFG + PAG: one call of 3 halves
    (["down_blocks.0", "attentions.1"], 5.0, 2.0, 0.002, {"guidance_rescale": 0.7}),
    ("mid", 1.0, 3.0, 0.0, {}),  # PAG alone (no classifier-free guidance): 2 halves
    ("up_blocks.1", 1.0, 2.0, 0.002, {}),
])
def test_sd_pag_matches_the_pipeline(tiny_sd, layers, scale, pag_scale, adaptive, kw):
    ours, theirs = _compare(tiny_sd, layers, scale, pag_scale, adaptive, **kw)
    assert relative_error(ours, theirs) < 1e-5


@pytest.mark.parametrize("layers, scale, adaptive", [
    ("mid", 5.0, 0.0),
    ("attentions.0.transformer_blocks.1", 5.0, 0.002),  # searched: the second of two, in 3 blocks
    ("up_blocks.0", 1.0, 0.002),
])
def test_sd_xl_pag_matches_the_pipeline(tiny_xl, layers, scale, adaptive):
    ours, theirs = _compare(tiny_xl, layers, scale, 3.0, adaptive)
    assert relative_error(ours, theirs) < 1e-5


def test_sd_pag_off_is_bit_identical_and_restores_the_processors(tiny_sd):
    """pag_scale 0 (or None) and an interval the grid never enters: plain CFG bit for bit; after a PAG run every
    attention processor is the UNet's own again."""
    sd = tiny_sd[2]
    run = dict(sampler="ddim", steps=STEPS, grid="scheduler", guidance_scale=5.0, return_latents=True)
    before = {name: type(p) for name, p in sd.unet.attn_processors.items()}
    plain = text_to_image(sd, PROMPTS, **run)
    assert torch.equal(text_to_image(sd, PROMPTS, pag_scale=0.0, **run), plain)
    # the grid is 751 .. 1: an interval it never enters
    assert torch.equal(text_to_image(sd, PROMPTS, pag_scale=3.0, pag_interval=(900, 999), **run), plain)
    everywhere = text_to_image(sd, PROMPTS, pag_scale=3.0, pag_interval=(0, 999), **run)
    assert torch.equal(everywhere, text_to_image(sd, PROMPTS, pag_scale=3.0, **run))
    assert not torch.equal(everywhere, plain)
    assert {name: type(p) for name, p in sd.unet.attn_processors.items()} == before


def test_sd_pag_refusals(tiny_sd, tiny_xl):
    sd = tiny_sd[2]
    run = dict(steps=2, return_latents=True)
    for layers, match in [("down.block_1", "matches no self-attention layer.*down_blocks.0.attentions.0"),
                          ("up.block_0.attentions_0", "matches no self-attention layer"),
                          ("down_blocks.1", "matches no self-attention layer"),  # a DownBlock2D: none
                          ("down.0", "is a diffkit U-Net layer name"), ("mid(", "not a regular expression"),
                          ("", "give one or more names")]:
        with pytest.raises(DiffkitError, match=match):
            text_to_image(sd, PROMPTS, pag_scale=3.0, pag_layers=layers, **run)
    with pytest.raises(DiffkitError, match="matches no self-attention layer"):
        text_to_image(tiny_xl[2], PROMPTS, pag_scale=3.0, pag_layers="down_blocks.0", **run)
    cases = [(dict(pag_layers="mid"), "needs pag_scale"), (dict(pag_scale=-1.0), "pag_scale"),
             (dict(pag_scale=1.0, pag_adaptive_scale=-1.0), "pag_adaptive_scale")]
    for options, match in cases:
        with pytest.raises(DiffkitError, match=match):
            text_to_image(sd, PROMPTS, **options, **run)
    lcm = dataclasses.replace(sd, unet=types.SimpleNamespace(config={"time_cond_proj_dim": 8}))
    with pytest.raises(DiffkitError, match="time_cond_proj_dim=8"):
        text_to_image(lcm, PROMPTS, pag_scale=1.0, **run)
    with pytest.raises(DiffkitError, match="LCMScheduler / TCD"):
        text_to_image(dataclasses.replace(sd, scheduler_override="tcd"), PROMPTS, pag_scale=1.0, **run)


def _cli(capsys, *args):
    from diffkit.cli import main
    try:
        code = main([*map(str, args), "--no-progress"])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr()


@pytest.mark.parametrize("xl", [False, True])
def test_sample_takes_pag_on_a_stable_diffusion_folder(tiny_sd, tiny_xl, tmp_path, capsys, xl):
    """``diffkit sample --pag-scale --pag-layers --pag-adaptive-scale`` on an SD / SD-XL folder: text_to_image's images
    byte for byte (the library is the pipelines', above); an unknown layer: one line, no file."""
    from diffkit.images import save_grid
    _, folder, sd = tiny_xl if xl else tiny_sd
    layers = "up_blocks.0" if xl else "mid,down_blocks.0"
    out = tmp_path / "grid.png"
    flags = ["sample", "--checkpoint", folder, "--prompt", "hot", "--num", 2, "--steps", 2, "--seed", 5,
             "--pag-scale", 2.5]
    code, captured = _cli(capsys, *flags, "--pag-layers", layers, "--pag-adaptive-scale", 0.001, "--out", out)
    assert code == 0, captured.err
    assert f"perturbed-attention guidance s=2.5 at {layers}, adaptive a=0.001" in captured.out
    ours = text_to_image(sd, ["hot", "hot"], steps=2, seed=5, output_range="-1,1", pag_scale=2.5,
                         pag_layers=layers.split(","), pag_adaptive_scale=0.001)
    save_grid(ours, tmp_path / "ours.png", 8)
    assert out.read_bytes() == (tmp_path / "ours.png").read_bytes()
    code, captured = _cli(capsys, *flags, "--pag-layers", "down_blocks.9", "--out", tmp_path / "new" / "g.png")
    assert code != 0 and "pag layer 'down_blocks.9' matches no self-attention layer" in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and not (tmp_path / "new").exists()
