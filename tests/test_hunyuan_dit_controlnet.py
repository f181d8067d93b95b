"""HunyuanDiT ControlNets (diffkit.interop.hunyuan_dit_controlnet) against diffusers' HunyuanDiTControlNetPipeline on
the tiny random HunyuanDiT folder of tests/test_hunyuan_dit.py with 4 transformer blocks (one long skip) and a 1-block
HunyuanDiT2DControlNetModel whose zero-initialised layers are made random (else its residuals would be 0), the
DDPM step noise from the same per-sample generators; ``diffkit sample --controlnet`` on them."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.controlnet import ControlNets  # noqa: E402
from diffkit.interop.hunyuan_dit import load_hunyuan_dit, text_to_image  # noqa: E402
from diffkit.noise import generators_from_seed  # noqa: E402

from test_hunyuan_dit import PROMPTS, SIZE, tiny_hunyuan_dit_pipeline  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_sana_controlnet import assert_control_refusals, controlled_pipeline, randomized  # noqa: E402


@pytest.fixture(scope="module")
def controlled(tmp_path_factory):
    """(HunyuanDiTControlNetPipeline, folder, ControlNet folder, HunyuanDiT, ControlNet, control PNG)."""
    root = tmp_path_factory.mktemp("hunyuan_controlnet")
    pipe = tiny_hunyuan_dit_pipeline(root, layers=4)
    pipe.save_pretrained(root / "hunyuan")
    torch.manual_seed(3)
    controlnet = diffusers.HunyuanDiT2DControlNetModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, patch_size=2, sample_size=8, hidden_size=16,
        transformer_num_layers=4, cross_attention_dim=16, cross_attention_dim_t5=32, pooled_projection_dim=16)
    theirs = controlled_pipeline(diffusers.HunyuanDiTControlNetPipeline, pipe, controlnet, root, 64, 96)
    return theirs, root / "hunyuan", root / "controlnet", load_hunyuan_dit(root / "hunyuan", progress=False), \
        controlnet, root / "control.png"


def run_both(pipe, hunyuan, prompts, control_image, nets, monkeypatch, call, **ours_only):
    """(diffkit's z_0 with ControlNets ``nets``, the pipeline's with its ``control_image``, ``draw(**options)``:
    text_to_image with the same options) of ``prompts``, 2 DDPM steps from the same latents and generators
    (seed 7 + i); the posteriors' means for several prompts (the pipeline's sample() made its mode), for one prompt
    the pipeline's draws after torch.manual_seed(11), diffkit's from control_seed 11. ``call``: both's options
    (``controlnet_conditioning_scale`` the pipeline's), ``ours_only``: diffkit's."""
    posterior = "sample" if len(prompts) == 1 else "mean"
    if posterior == "mean":
        monkeypatch.setattr(diffusers.models.autoencoders.vae.DiagonalGaussianDistribution, "sample",
                            lambda self, generator=None: self.mode())
    noise = torch.randn(len(prompts), 4, 8, 12, generator=torch.Generator().manual_seed(1))
    negative = call.pop("negative_prompt", None)
    torch.manual_seed(11)
    with torch.no_grad():
        theirs = pipe(prompts, control_image=control_image, num_inference_steps=2, latents=noise.clone(),
                      output_type="latent", use_resolution_binning=False,
                      generator=generators_from_seed(7, len(prompts)), **SIZE,
                      negative_prompt=None if negative is None else [negative] * len(prompts), **call).images
    call.pop("controlnet_conditioning_scale", None)
    options = dict(steps=2, seed=7, return_latents=True, negative_prompt=negative, control_seed=11,
                   control_posterior=posterior, **SIZE, **call)

    def draw(**more):
        return text_to_image(hunyuan, prompts, latents=noise.clone(), **options, **more)
    return draw(controlnets=nets, **ours_only), theirs, draw


@pytest.mark.parametrize("call", [
    dict(guidance_scale=4.0, negative_prompt="ugly", guidance_rescale=0.7, controlnet_conditioning_scale=0.6),
    dict(guidance_scale=1.0), dict(guidance_scale=3.0, prompts=1)])
def test_hunyuan_dit_controlnet_matches_the_pipeline(controlled, monkeypatch, call):
    """HunyuanDiTControlNetPipeline (2 DDPM steps): the control PNG encoded by the VAE, the ControlNet's residual on
    the long skip, CFG with a negative prompt, rescale and conditioning scale 0.6 / unguided (s = 1) with one control
    image per prompt (the second 32 x 48, resized by both) — the posterior's mean (the pipeline's sample() made its
    mode); one prompt: the pipeline's posterior draws after torch.manual_seed(11), diffkit's from control_seed 11."""
    from PIL import Image
    pipe, _, _, hunyuan, controlnet, png = controlled
    prompts = PROMPTS[:call.pop("prompts", 2)]
    images = [png, png.parent / "small.png"] if call["guidance_scale"] == 1.0 else [png]
    nets = ControlNets([controlnet], [[str(p) for p in images] if len(images) > 1 else str(png)],
                       call.get("controlnet_conditioning_scale", 1.0))
    ours, theirs, draw = run_both(pipe, hunyuan, prompts, [Image.open(p) for p in images], nets, monkeypatch, call,
                                  control_rows=[0, 1] if len(images) > 1 else None)
    assert relative_error(ours, theirs) < 1e-5  # measured 1.2e-6 (CFG), 1.1e-6 (s = 1), 1.0e-6 (drawn posterior)
    assert relative_error(ours, draw()) > 1e-3  # the ControlNet acts


def test_sample_command_with_a_hunyuan_dit_controlnet_is_the_library_and_refuses_what_does_not_apply(
        controlled, tmp_path, capsys):
    """`diffkit sample --controlnet DIR --control-image PNG --controlnet-scale` on a HunyuanDiT folder writes
    text_to_image(controlnets=, control_seed=seed)'s grid byte for byte; two ControlNets, a window, PAG with it,
    guess mode, a ControlNet of another class or one that does not fit: one line, exit 2, no file."""
    from diffkit.images import save_grid
    _, folder, net_folder, hunyuan, controlnet, png = controlled
    out = tmp_path / "grid.png"
    flags = ["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--num", "2", "--nrow", "1", "--steps",
             "2", "--seed", "5", "--height", "64", "--width", "96", "--guidance-scale", "3", "--guidance-convention",
             "diffusers", "--no-progress", "--controlnet", str(net_folder), "--control-image", str(png)]
    assert main(flags + ["--controlnet-scale", "0.7", "--guidance-rescale", "0.5", "--out", str(out)]) == 0
    images = text_to_image(hunyuan, [PROMPTS[0]] * 2, steps=2, seed=5, height=64, width=96, guidance_scale=3.0,
                           guidance_rescale=0.5, output_range="-1,1", control_seed=5,
                           controlnets=ControlNets([controlnet], [str(png)], 0.7))
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert_control_refusals(flags, net_folder, folder / "transformer", png, tmp_path, capsys, "HunyuanDiT",
                            "HunyuanDiTControlNetPipeline", "HunyuanDiT2DControlNetModel", "HunyuanDiT2DModel",
                            several=True)


def test_controlnets_that_do_not_fit_are_refused(controlled):
    """A ControlNet whose blocks are not the transformer's long skips, or of another text width: one line."""
    _, _, _, hunyuan, controlnet, png = controlled
    torch.manual_seed(0)
    for change, expected in (({"transformer_num_layers": 6}, "2 blocks but this HunyuanDiT folder's transformer a "
                                                              "width of 16 and 1 long skips"),
                             ({"pooled_projection_dim": 8}, "pooled_projection_dim=8 but this HunyuanDiT")):
        other = diffusers.HunyuanDiT2DControlNetModel.from_config({**controlnet.config, **change})
        with pytest.raises(DiffkitError, match=expected):
            text_to_image(hunyuan, "hot", steps=1, controlnets=ControlNets([other], [str(png)]), **SIZE)
    with pytest.raises(DiffkitError, match="control_posterior='x' is not allowed"):
        text_to_image(hunyuan, "hot", steps=1, controlnets=ControlNets([controlnet], [str(png)]),
                      control_posterior="x")


@pytest.fixture(scope="module")
def second(controlled, tmp_path_factory):
    """(a second random HunyuanDiT ControlNet, its folder, HunyuanDiTControlNetPipeline with both: a
    HunyuanDiT2DMultiControlNetModel)."""
    pipe, _, _, _, first, _ = controlled
    torch.manual_seed(5)
    net = randomized(diffusers.HunyuanDiT2DControlNetModel.from_config(first.config))
    folder = tmp_path_factory.mktemp("hunyuan_second") / "controlnet"
    net.save_pretrained(folder)
    multi = diffusers.HunyuanDiTControlNetPipeline(**{**pipe.components, "controlnet": [first, net]})
    multi.set_progress_bar_config(disable=True)
    return net, folder, multi


@pytest.mark.parametrize("call", [
    dict(guidance_scale=4.0, negative_prompt="ugly", guidance_rescale=0.5, controlnet_conditioning_scale=[0.6, 1.2]),
    dict(guidance_scale=3.0, prompts=1, controlnet_conditioning_scale=[0.8, 0.5]),
    dict(guidance_scale=1.0, controlnet_conditioning_scale=[0.0, 0.9])])
def test_several_hunyuan_dit_controlnets_match_the_multi_controlnet_pipeline(controlled, second, monkeypatch, call):
    """Two ControlNets (HunyuanDiTControlNetPipeline(controlnet=[a, b]), 2 DDPM steps), each with its control image
    (the second 32 x 48, resized) and scale: CFG with a negative prompt and rescale (the posteriors' means); one
    prompt, the posterior draws after torch.manual_seed(11), diffkit's from control_seed 11 (net a's rows, then net
    b's); a scale 0 (net a adds nothing) unguided."""
    from PIL import Image
    _, _, _, hunyuan, first, png = controlled
    net, _, pipe = second
    images = [png, png.parent / "small.png"]
    scales = call["controlnet_conditioning_scale"]
    ours, theirs, draw = run_both(pipe, hunyuan, PROMPTS[:call.pop("prompts", 2)], [Image.open(p) for p in images],
                                  ControlNets([first, net], [str(p) for p in images], scales), monkeypatch, call)
    assert relative_error(ours, theirs) < 1e-5  # measured 1.8e-6 (CFG + rescale), 1.3e-6 (drawn), 1.2e-6 (scale 0)
    one = draw(controlnets=ControlNets([net], [str(images[1])], scales[1]))
    assert (relative_error(ours, one) > 1e-3) == (scales[0] > 0)  # net a acts where its scale is not 0


def test_sample_command_with_two_hunyuan_dit_controlnets_is_the_library(controlled, second, tmp_path):
    """``--controlnet A --control-image a --controlnet B --control-image b`` with a scale each writes
    text_to_image(controlnets=[A, B])'s grid byte for byte."""
    from diffkit.images import save_grid
    _, folder, net_folder, hunyuan, first, png = controlled
    net, second_folder, _ = second
    out = tmp_path / "grid.png"
    small = png.parent / "small.png"
    assert main(["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--num", "1", "--steps", "2",
                 "--seed", "5", "--height", "64", "--width", "96", "--guidance-scale", "3", "--guidance-convention",
                 "diffusers", "--no-progress", "--controlnet", str(net_folder), "--control-image", str(png),
                 "--controlnet", str(second_folder), "--control-image", str(small), "--controlnet-scale", "0.7",
                 "--controlnet-scale", "0.4", "--out", str(out)]) == 0
    images = text_to_image(hunyuan, [PROMPTS[0]], steps=2, seed=5, height=64, width=96, guidance_scale=3.0,
                           output_range="-1,1", control_seed=5,
                           controlnets=ControlNets([first, net], [str(png), str(small)], [0.7, 0.4]))
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
