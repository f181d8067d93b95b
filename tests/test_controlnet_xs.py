"""ControlNet-XS (diffkit.interop.controlnet_xs) on tiny random SD and SD-XL folders against diffusers' own
StableDiffusionControlNetXSPipeline / StableDiffusionXLControlNetXSPipeline: the tiny pipelines of
test_interop_diffusers / test_interop_sd_xl with layers_per_block=2 (diffusers' fused UNetControlNetXSModel needs
it), a ``ControlNetXSAdapter.from_unet`` of each UNet (a quarter of its channels) with its zero convolutions
randomised (a fresh adapter would change nothing) and saved with save_pretrained; the same prompts, z_T and
DDIM scheduler on both sides, compared on the final latents."""
import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.controlnet import ControlNets  # noqa: E402
from diffkit.interop.controlnet_xs import ControlNetXS, check_xs_adapter  # noqa: E402
from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image  # noqa: E402

from test_controlnet import _individual_pngs, control_png  # noqa: E402
from test_interop_diffusers import relative_error, sd_ddim_scheduler, tiny_sd_components  # noqa: E402
from test_interop_sd_xl import tiny_sd_xl_pipeline, tiny_sd_xl_unet  # noqa: E402

PROMPTS = ["a photo of a cat", "hot"]
STEPS, SCALE = 4, 5.0


def tiny_adapter(unet, seed: int):
    """ControlNetXSAdapter.from_unet (channels x 0.25, control images down 2x: the tiny VAE's factor) with its
    zero convolutions drawn at random."""
    torch.manual_seed(seed)
    adapter = diffusers.ControlNetXSAdapter.from_unet(unet, size_ratio=0.25, conditioning_embedding_out_channels=(16,
                                                                                                                 32))
    with torch.no_grad():
        for parameter in adapter.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.2)
    return adapter.eval()


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_xs(tmp_path_factory):
    """{"sd": (XS pipeline, adapter, loaded SD, folder), "xl": the same for SD-XL, "root", "pngs"}; the folders
    sd/, xl/, xs_sd/, xs_xl/ and two control PNGs (16x16, 12x20) under root."""
    root = tmp_path_factory.mktemp("tiny_controlnet_xs")
    unet, vae, text_encoder, tokenizer = tiny_sd_components(root, layers_per_block=2)
    plain = _quiet(diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                                     unet=unet, scheduler=sd_ddim_scheduler(), safety_checker=None,
                                                     feature_extractor=None, requires_safety_checker=False))
    plain.save_pretrained(root / "sd")
    adapter = tiny_adapter(unet, 1)
    adapter.save_pretrained(root / "xs_sd")
    sd_pipe = _quiet(diffusers.StableDiffusionControlNetXSPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=adapter,
        scheduler=sd_ddim_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False))
    xl = tiny_sd_xl_pipeline(root)
    torch.manual_seed(3)
    xl.unet = tiny_sd_xl_unet(56, 68, layers_per_block=2)
    parts = {k: v for k, v in xl.components.items() if k not in ("image_encoder", "feature_extractor")}
    _quiet(diffusers.StableDiffusionXLPipeline(**parts, add_watermarker=False)).save_pretrained(root / "xl")
    xl_adapter = tiny_adapter(parts["unet"], 4)
    xl_adapter.save_pretrained(root / "xs_xl")
    xl_pipe = _quiet(diffusers.StableDiffusionXLControlNetXSPipeline(**parts, controlnet=xl_adapter,
                                                                    add_watermarker=False))
    pngs = [control_png(root / "control0.png", 16, 16, seed=0), control_png(root / "control1.png", 12, 20, seed=1)]
    return {"sd": (sd_pipe, adapter, load_stable_diffusion(root / "sd", progress=False), root / "sd"),
            "xl": (xl_pipe, xl_adapter, load_stable_diffusion(root / "xl", progress=False), root / "xl"),
            "root": root, "pngs": pngs}


def _theirs(pipe, images, latents, **options):
    from PIL import Image
    pictures = [Image.open(p).convert("RGB") for p in images]
    with torch.no_grad():
        return pipe(PROMPTS, image=pictures if len(pictures) > 1 else pictures[0], num_inference_steps=STEPS,
                    guidance_scale=SCALE, latents=latents.clone(), eta=0.0, output_type="latent", **options).images


def _ours(sd, adapter, images, latents, **control):
    return text_to_image(sd, PROMPTS, sampler="ddim", steps=STEPS, grid="scheduler", guidance_scale=SCALE,
                         latents=latents, eta=0.0, return_latents=True,
                         controlnet=None if adapter is None else ControlNetXS([adapter], [images], **control))


@pytest.mark.parametrize("family, png, control, pipe_options", [
    ("sd", 0, {}, {}),
    ("sd", 0, {"scales": 0.5}, {"controlnet_conditioning_scale": 0.5}),
    ("sd", 0, {"start": 0.25, "end": 0.75}, {"control_guidance_start": 0.25, "control_guidance_end": 0.75}),
    ("xl", 1, {}, {}),
    ("xl", 1, {"scales": 0.5, "start": 0.25}, {"controlnet_conditioning_scale": 0.5, "control_guidance_start": 0.25}),
])
def test_controlnet_xs_matches_the_pipeline(tiny_xs, family, png, control, pipe_options):
    """StableDiffusion(XL)ControlNetXSPipeline (CFG s = 5, DDIM, 4 steps): scale 1 and 0.5, windows (apply_control
    off outside); SD-XL with a 12x20 control image (the output's size and time ids follow it)."""
    pipe, adapter, sd, _ = tiny_xs[family]
    image = tiny_xs["pngs"][png]
    h, w = (16, 16) if png == 0 else (12, 20)
    latents = torch.randn((2, 4, h // 2, w // 2), generator=torch.Generator().manual_seed(7))
    theirs = _theirs(pipe, [image], latents, **pipe_options)
    ours = _ours(sd, adapter, image, latents, **control)
    assert ours.shape == theirs.shape == (2, 4, h // 2, w // 2)
    assert relative_error(ours, theirs) < 1e-5
    if not control:  # the adapter changes the result
        assert relative_error(_ours(sd, None, None, latents), theirs) > 1e-3


def test_controlnet_xs_one_image_per_prompt_and_scale_zero(tiny_xs):
    """One control image per prompt (the pipeline's ``image=[...]``, prompt i its image i); rows of one call on both
    sides of a window each take their own ``apply_control``; scale 0 is the pipeline's
    and close to the plain folder's: the fused model adds nothing to the UNet's features but computes them in
    another float order (3.5e-5 relative on one call of this UNet, apply_control on or off)."""
    pipe, adapter, sd, _ = tiny_xs["sd"]
    pngs = [tiny_xs["pngs"][0], control_png(tiny_xs["root"] / "other.png", 16, 16, seed=5)]
    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    theirs = _theirs(pipe, pngs, latents)
    assert relative_error(_ours(sd, adapter, pngs, latents), theirs) < 1e-5
    # a batch whose rows lie on both sides of a window: each row as its own call would give it
    xs = ControlNetXS([adapter], [pngs[0]], start=0.5)
    grid = sd.scheduler_grid(STEPS)
    net = xs.controlling(sd, 16, 16, grid).network_denoiser.net
    x, context = torch.randn(2, 4, 8, 8), torch.randn(2, 16, 32)
    t = torch.stack([grid[0], grid[-2]]).float()  # step 0 (off) and step 3 (on)
    image = net.image.expand(2, -1, -1, -1)
    with torch.no_grad():
        both = net(x, t, context=context)
        alone = torch.cat([net(x[i:i + 1], t[i:i + 1], context=context[i:i + 1]) for i in range(2)])
        off = net.net(x, t, context=context, controlnet_cond=image, apply_control=False)
    assert (both - alone).abs().max() < 1e-5
    assert (both[0] - off[0]).abs().max() == 0 and (both[1] - off[1]).abs().max() > 1e-3
    zero = _ours(sd, adapter, pngs[0], latents, scales=0.0)
    assert relative_error(zero, _theirs(pipe, pngs[:1], latents, controlnet_conditioning_scale=0.0)) < 1e-5
    assert relative_error(zero, _ours(sd, None, None, latents)) < 1e-4


def test_sample_command_with_a_controlnet_xs_adapter_is_the_pipeline(tiny_xs, tmp_path, capsys):
    """``diffkit sample --controlnet XS-DIR --control-image PNG --controlnet-scale --control-guidance-end``: the
    PNGs equal StableDiffusionControlNetXSPipeline's within half an 8-bit level (PNG rounding), diffkit's default
    ddim grid being diffusers' DDIM with steps_offset=0, set_alpha_to_one."""
    from PIL import Image

    from diffkit.noise import generators_from_seed, randn
    pipe, adapter, sd, folder = tiny_xs["sd"]
    png = tiny_xs["pngs"][0]
    assert main([str(a) for a in (
        "sample", "--checkpoint", folder, "--prompt", "hot", "--num", "2", "--steps", "3", "--guidance-scale", "4",
        "--seed", "5", "--controlnet", tiny_xs["root"] / "xs_sd", "--control-image", png, "--controlnet-scale", "0.8",
        "--control-guidance-end", "0.7", "--out", tmp_path / "grid.png", "--individual", tmp_path / "each",
        "--no-progress")]) == 0
    ours = _individual_pngs(tmp_path / "each")
    saved = pipe.scheduler
    try:
        pipe.scheduler = diffusers.DDIMScheduler.from_config(saved.config, steps_offset=0, set_alpha_to_one=True)
        with torch.no_grad():
            theirs = pipe(["hot", "hot"], image=Image.open(png).convert("RGB"), num_inference_steps=3,
                          guidance_scale=5.0, latents=randn((2, 4, 8, 8), generators_from_seed(5, 2)), eta=0.0,
                          output_type="pt", controlnet_conditioning_scale=0.8, control_guidance_end=0.7).images
    finally:
        pipe.scheduler = saved
    assert ours.shape == (2, 3, 16, 16)
    assert (ours - theirs).abs().max() <= 0.5 / 255 + 1e-4
    capsys.readouterr()


def test_controlnet_xs_refusals_are_one_line(tiny_xs, tmp_path, capsys):
    """What diffusers 0.42.1 has no ControlNet-XS pipeline for, and adapters of another UNet, in one line before
    any output."""
    from test_cli_errors import one_line_error
    root, png = tiny_xs["root"], tiny_xs["pngs"][0]
    out = tmp_path / "new" / "grid.png"
    xs = ["--controlnet", root / "xs_sd", "--control-image", png]
    sample = ["sample", "--checkpoint", root / "sd", "--prompt", "hot", "--num", "1", "--steps", "2", "--out", out]
    edit = ["edit", "--checkpoint", root / "sd", "--images", png, "--prompt", "hot", "--steps", "2", "--out", out]
    for args, match in (
            ([*sample, *xs, *xs], "2 --controlnet with a ControlNet-XS"),
            ([*sample, *xs, "--guess-mode"], "--guess-mode with a ControlNet-XS"),
            ([*edit, *xs], "diffkit edit (img2img / inpainting) with a ControlNet-XS"),
            ([*sample, *xs, "--pag-scale", "2"], "--pag-scale with a ControlNet-XS adapter"),
            ([*sample, *xs, "--freeu", "1.1,1.2,0.9,0.2"], "--freeu with a ControlNet-XS"),
            (["sample", "--checkpoint", root / "xl", "--prompt", "hot", "--num", "1", "--steps", "2", "--out", out,
              *xs, "--no-progress"], "the ControlNet-XS adapter has down_block_types")):
        line = one_line_error(capsys, *args)
        assert match in line, (args, line)
        assert not out.parent.exists()
    pipe, adapter, sd, _ = tiny_xs["sd"]
    with pytest.raises(DiffkitError, match="fused with the UNet, not added"):
        ControlNets([adapter], [png])
    with pytest.raises(DiffkitError, match="2 ControlNet-XS adapters"):
        ControlNetXS([adapter, adapter], [png, png])
    for options, match in (({"guidance_rescale": 0.5}, "guidance rescale with"),
                           ({"sag_scale": 0.5}, r"SAG \(sag_scale\) with")):
        with pytest.raises(DiffkitError, match=match):
            text_to_image(sd, "hot", steps=2, controlnet=ControlNetXS([adapter], [png]), **options)
    lcm = load_stable_diffusion(root / "sd", progress=False, scheduler="lcm")
    with pytest.raises(DiffkitError, match="LCM / TCD sampling with a ControlNet-XS"):
        text_to_image(lcm, "hot", steps=2, controlnet=ControlNetXS([adapter], [png]))
    config = json.loads((root / "sd" / "unet" / "config.json").read_text())
    one_layer = diffusers.UNet2DConditionModel.from_config({**config, "layers_per_block": 1})
    with pytest.raises(DiffkitError, match="layers_per_block=2"):
        check_xs_adapter(adapter, one_layer, 2)
