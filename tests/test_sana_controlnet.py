"""Sana ControlNets (diffkit.interop.sana_controlnet) against diffusers' SanaControlNetPipeline on a tiny random
Sana folder of 2 transformer blocks (tests/_sana_helpers.py) and a 1-block SanaControlNetModel whose zero-initialised
layers are made random (else its residuals would be 0), and ``diffkit sample --controlnet`` on them."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.controlnet import ControlNets  # noqa: E402
from diffkit.interop.sana import load_sana, text_to_image  # noqa: E402

from _sana_helpers import tiny_sana_pipeline  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

PROMPTS = ["a photo of a Cat ", "hot dog"]


@pytest.fixture(scope="module")
def controlled(tmp_path_factory):
    """(SanaControlNetPipeline, Sana folder, ControlNet folder, Sana, ControlNet, control PNG)."""
    root = tmp_path_factory.mktemp("sana_controlnet")
    pipe = tiny_sana_pipeline(layers=2)
    pipe.save_pretrained(root / "sana")
    torch.manual_seed(3)
    controlnet = diffusers.SanaControlNetModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=32,
        sample_size=16, patch_size=1)
    theirs = controlled_pipeline(diffusers.SanaControlNetPipeline, pipe, controlnet, root, 32, 32)
    return theirs, root / "sana", root / "controlnet", load_sana(root / "sana", progress=False), controlnet, \
        root / "control.png"


def randomized(controlnet):
    """``controlnet`` with its zero-initialised ``input_block`` and ``controlnet_blocks`` made random (else its
    residuals would be 0)."""
    with torch.no_grad():
        for module in [controlnet.input_block, *controlnet.controlnet_blocks]:
            for weight in module.parameters():
                weight.normal_(0, 0.3)
    return controlnet


def controlled_pipeline(pipeline_class, pipe, controlnet, root, height: int, width: int):
    """``pipeline_class`` (SanaControlNetPipeline, HunyuanDiTControlNetPipeline) of ``pipe``'s components and
    ``controlnet``, whose zero-initialised ``input_block`` and ``controlnet_blocks`` are made random (else its
    residuals would be 0) and which is saved to ``root / "controlnet"``; random control images ``root /
    "control.png"`` (height x width) and ``"small.png"`` (half of each side) written."""
    from PIL import Image
    randomized(controlnet).save_pretrained(root / "controlnet")
    pixels = torch.rand(height, width, 3, generator=torch.Generator().manual_seed(4)).numpy()
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(root / "control.png")
    Image.fromarray((pixels[::2, 1::2] * 255).round().astype(np.uint8)).save(root / "small.png")
    theirs = pipeline_class(controlnet=controlnet, **pipe.components)
    theirs.set_progress_bar_config(disable=True)
    return theirs


@pytest.mark.parametrize("call", [{}, {"controlnet_conditioning_scale": 0.6, "negative_prompt": "ugly"},
                                  {"guidance_scale": 1.0}])
def test_sana_controlnet_matches_the_pipeline(controlled, call):
    """SanaControlNetPipeline (2 steps): the control PNG encoded by the DC-AE, the ControlNet's residual added after
    block 1, guided (s = 4.5; conditioning scale 0.6 against a negative prompt) and unguided (s = 1) with one control
    image per prompt (the second 16 x 16, resized to 32 x 32 by both)."""
    from PIL import Image
    pipe, _, _, sana, controlnet, png = controlled
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    images = [png, png.parent / "small.png"] if call.get("guidance_scale") == 1.0 else [png]
    with torch.no_grad():
        theirs = pipe(PROMPTS, control_image=[Image.open(p) for p in images], num_inference_steps=2,
                      latents=noise.clone(), output_type="latent", height=32, width=32,
                      use_resolution_binning=False, **call).images
    scale = call.pop("controlnet_conditioning_scale", 1.0)
    nets = ControlNets([controlnet], [[str(p) for p in images] if len(images) > 1 else str(png)], scale)
    ours = text_to_image(sana, PROMPTS, steps=2, latents=noise, return_latents=True, controlnets=nets, **call)
    assert relative_error(ours, theirs) < 1e-5  # 5.0e-7, 4.8e-7, 1.2e-7 measured
    if not call:
        plain = text_to_image(sana, PROMPTS, steps=2, latents=noise, return_latents=True)
        assert relative_error(ours, plain) > 1e-3  # the ControlNet acts


def test_sample_command_with_a_sana_controlnet_is_the_library_and_refuses_what_does_not_apply(controlled, tmp_path,
                                                                                              capsys):
    """`diffkit sample --controlnet DIR --control-image PNG --controlnet-scale` on a Sana folder writes
    text_to_image(controlnets=)'s grid byte for byte; two ControlNets, a window, PAG with it, guess mode, a ControlNet
    of another class: one line, exit 2, no file."""
    from diffkit.images import save_grid
    _, folder, net_folder, sana, controlnet, png = controlled
    out = tmp_path / "grid.png"
    flags = ["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--num", "2", "--nrow", "1", "--steps",
             "2", "--seed", "5", "--height", "32", "--width", "32", "--no-progress", "--controlnet", str(net_folder),
             "--control-image", str(png)]
    assert main(flags + ["--controlnet-scale", "0.7", "--out", str(out)]) == 0
    images = text_to_image(sana, [PROMPTS[0]] * 2, steps=2, seed=5, height=32, width=32, output_range="-1,1",
                           controlnets=ControlNets([controlnet], [str(png)], 0.7))
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert_control_refusals(flags, net_folder, folder / "transformer", png, tmp_path, capsys, "Sana",
                            "SanaControlNetPipeline", "SanaControlNetModel", "SanaTransformer2DModel")
    with pytest.raises(DiffkitError, match="2 --controlnet on a Sana folder"):
        text_to_image(sana, PROMPTS, steps=1, controlnets=ControlNets([controlnet] * 2, [str(png)] * 2))


def assert_control_refusals(flags, net_folder, transformer, png, tmp_path, capsys, kind, pipeline, model, other,
                            several=False):
    """``diffkit sample`` ``flags`` (ending --controlnet DIR --control-image PNG) on a ``kind`` folder (Sana,
    HunyuanDiT) with two ControlNets (but where the pipeline takes ``several``), a window, PAG, guess mode, and its
    ``transformer`` folder (class ``other``) as the ControlNet: one line each, exit 2, no file."""
    for extra, expected in (
            *(() if several else ((["--controlnet", str(net_folder), "--control-image", str(png)],
                                   f"2 --controlnet on a {kind} folder; {pipeline} takes one {model}"),)),
            (["--control-guidance-end", "0.5"], "a control guidance window (--control-guidance-start / --control-"
             f"guidance-end) or guess mode does not apply to a {kind} ControlNet"),
            (["--pag-scale", "2"], f"perturbed-attention guidance with a ControlNet is not supported on a {kind}"),
            (["--guess-mode"], f"--guess-mode applies to Stable Diffusion ControlNets; the {kind} ControlNet "
             "pipeline")):
        capsys.readouterr()
        assert main(flags + extra + ["--out", str(tmp_path / "no.png")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (extra, err)
    assert not (tmp_path / "no.png").exists()
    capsys.readouterr()
    assert main(flags[:-4] + ["--controlnet", str(transformer), "--control-image", str(png), "--out",
                              str(tmp_path / "no.png")]) == 2
    assert f"holds a '{other}'; allowed: a diffusers {model} folder" in capsys.readouterr().err
