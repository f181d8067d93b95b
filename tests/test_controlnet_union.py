"""ControlNet-Union on an SD-XL folder (diffkit.interop.controlnet_union through diffkit.interop.controlnet)
against diffusers' StableDiffusionXLControlNetUnionPipeline / ...Img2ImgPipeline: the tiny random SD-XL pipeline
of test_interop_sd_xl, ControlNetUnionModels of its UNet's blocks (transformer width 32 = the first block's,
8 control types, random zero convolutions and spatial projection), 12x20 control images, the same z_T and DDIM
scheduler on both sides, compared on the final latents."""
import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.controlnet import ControlNets  # noqa: E402
from diffkit.interop.stable_diffusion import text_to_image  # noqa: E402

from test_controlnet import control_png  # noqa: E402
from test_controlnet_sd_xl import img2img_pipeline, xl_with_controlnets  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd_xl import PROMPTS  # noqa: E402

STEPS, SCALE = 4, 5.0
HEIGHT, WIDTH = 12, 20


def tiny_union_controlnet(unet, seed: int):
    """A ControlNetUnionModel with ``unet``'s blocks: ``from_unet``'s config with the transformer as wide as the
    first block (the model's sum needs it), 8 control types (ProMax's); the zero modules drawn at random."""
    torch.manual_seed(seed)
    config = {key: value for key, value in diffusers.ControlNetUnionModel.from_unet(
        unet, conditioning_embedding_out_channels=(16, 32), load_weights_from_unet=False).config.items()
        if not key.startswith("_")}
    width = unet.config.block_out_channels[0]
    net = diffusers.ControlNetUnionModel.from_config({**config, "num_trans_channel": width, "num_proj_channel": width,
                                                      "num_trans_head": 4, "num_control_type": 8})
    with torch.no_grad():
        for module in (net.controlnet_cond_embedding.conv_out, *net.controlnet_down_blocks, net.controlnet_mid_block,
                       net.spatial_ch_projs):
            module.weight.normal_(0, 0.2)
            module.bias.normal_(0, 0.2)
    return net.eval()


@pytest.fixture(scope="module")
def tiny_union(tmp_path_factory):
    """(StableDiffusionXLControlNetUnionPipeline, two union ControlNets, loaded SD-XL, root with xl/, un0/, un1/,
    two 12x20 PNGs)."""
    return xl_with_controlnets(tmp_path_factory.mktemp("tiny_union"), tiny_union_controlnet,
                               diffusers.StableDiffusionXLControlNetUnionPipeline, "un")

def _latents():
    return torch.randn((2, 4, HEIGHT // 2, WIDTH // 2), generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def plain_latents(tiny_union):
    """The z_0 of the SD-XL folder without a ControlNet, from :func:`_latents`."""
    return _ours(tiny_union[2], None, None, None, _latents())


def _multi(nets):
    from diffusers.models.controlnets.multicontrolnet_union import MultiControlNetUnionModel
    return MultiControlNetUnionModel(nets)


def _theirs(pipe, nets, pngs, modes, latents, **options):
    from PIL import Image
    saved = pipe.controlnet
    try:
        pipe.controlnet = nets[0] if len(nets) == 1 else _multi(nets)
        with torch.no_grad():
            return pipe(PROMPTS, control_image=[Image.open(p).convert("RGB") for p in pngs], control_mode=modes,
                        guidance_scale=SCALE, num_inference_steps=STEPS, latents=latents.clone(), eta=0.0,
                        output_type="latent", **options).images
    finally:
        pipe.controlnet = saved


def _ours(xl, nets, pngs, modes, latents, **control):
    return text_to_image(xl, PROMPTS, sampler="ddim", steps=STEPS, grid="scheduler", guidance_scale=SCALE,
                         latents=latents, eta=0.0, return_latents=True,
                         controlnet=None if nets is None else ControlNets(nets, pngs, modes=modes, **control))


@pytest.mark.parametrize("count, images, modes, control, pipe_options", [
    (1, 1, ["canny"], {"scales": 0.5, "end": 0.5}, {"controlnet_conditioning_scale": 0.5, "control_guidance_end": 0.5}),
    (1, 2, ["depth", 7], {"scales": [1.0, 0.5], "start": [0.0, 0.5], "end": [0.75, 1.0]},
     {"controlnet_conditioning_scale": [1.0, 0.5], "control_guidance_start": [0.0, 0.5],
      "control_guidance_end": [0.75, 1.0]}),
    (2, 2, ["openpose", "segment"], {"scales": [1.0, 0.5], "end": [1.0, 0.5]},
     {"controlnet_conditioning_scale": [1.0, 0.5], "control_guidance_end": [1.0, 0.5]}),
])
def test_controlnet_union_matches_the_pipeline(tiny_union, plain_latents, count, images, modes, control, pipe_options):
    """One union ControlNet with one control image (residuals scaled, a window), with two (a mode, scale and window
    each, weighing the images inside the network), and two union ControlNets with one each
    (MultiControlNetUnionModel): StableDiffusionXLControlNetUnionPipeline's latents (CFG s = 5, DDIM)."""
    from diffkit.interop.controlnet_union import control_mode_index
    pipe, nets, xl, root, pngs = tiny_union
    latents = _latents()
    theirs = _theirs(pipe, nets[:count], pngs[:images], [control_mode_index(m) for m in modes], latents,
                     **pipe_options)
    ours = _ours(xl, nets[:count], pngs[:images], modes, latents, **control)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    assert relative_error(plain_latents, theirs) > 1e-2  # the ControlNet acts


def test_controlnet_union_with_one_control_image_per_prompt_matches_the_pipeline(tiny_union, tmp_path):
    """A union ControlNet whose first control image is one per prompt (the pipeline's ``control_image=[[a, b],
    c]``) and whose second is shared, the second with a window: each sample's image (``control_rows``)."""
    from PIL import Image
    pipe, nets, xl, root, pngs = tiny_union
    third = control_png(tmp_path / "third.png", HEIGHT, WIDTH, seed=9)
    latents, saved = _latents(), pipe.controlnet
    try:
        pipe.controlnet = nets[0]
        with torch.no_grad():
            theirs = pipe(PROMPTS, control_image=[[Image.open(p).convert("RGB") for p in pngs],
                                                  Image.open(third).convert("RGB")], control_mode=[1, 3],
                          guidance_scale=SCALE, num_inference_steps=STEPS, latents=latents.clone(), eta=0.0,
                          output_type="latent", control_guidance_end=[1.0, 0.5]).images
    finally:
        pipe.controlnet = saved
    ours = _ours(xl, nets[:1], [list(pngs), third], ["depth", "canny"], latents, end=[1.0, 0.5])
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)


def test_controlnet_union_img2img_is_the_pipeline(tiny_union):
    """latent_img2img with the controlled SD-XL, two control images and modes, a window over the strength's
    steps: StableDiffusionXLControlNetUnionImg2ImgPipeline (requires_aesthetics_score False, DDIM, the same
    generators)."""
    from PIL import Image

    from diffkit.interop.controlnet import editing_grid
    from diffkit.latent_editing import latent_img2img
    pipe, nets, xl, root, pngs = tiny_union
    grid_options = dict(spacing="leading", final="sigma_min", steps_offset=1, eta=0.0)
    other = diffusers.StableDiffusionXLControlNetUnionImg2ImgPipeline(
        **{**pipe.components, "controlnet": nets[0]}, requires_aesthetics_score=False, add_watermarker=False)
    other.set_progress_bar_config(disable=True)
    image = torch.rand(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = other(PROMPTS, image=image, control_image=[Image.open(p).convert("RGB") for p in pngs],
                       control_mode=[4, 2], strength=0.5, num_inference_steps=4, guidance_scale=SCALE,
                       output_type="latent", controlnet_conditioning_scale=[0.7, 1.0], control_guidance_start=0.5,
                       generator=[torch.Generator().manual_seed(s) for s in (10, 11)]).images
    grid = editing_grid(xl, "ddim", 4, 0.5, dict(grid_options))
    controlled = ControlNets(nets[:1], pngs, [0.7, 1.0], 0.5, modes=["normal", "scribble"]).controlling(
        xl, HEIGHT, WIDTH, grid)
    guided, cond = controlled.prompt_guidance(PROMPTS, None, SCALE, "diffusers", 0.0, image_size=(HEIGHT, WIDTH))
    ours = latent_img2img(guided, controlled, image * 2 - 1, 0.5, "ddim", 4, posterior="sample", seed=10, cond=cond,
                          progress=False, return_latents=True, **grid_options)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)


def test_controlnet_union_inpainting_is_the_pipeline(tiny_union):
    """latent_inpaint (4-channel SD-XL UNet) with the controlled folder: StableDiffusionXLControlNetUnionInpaint
    Pipeline at strength 1 with one image (``repaint``) and at 0.6 with two (scales 0.7 / 1, start 0.25)."""
    from PIL import Image

    from diffkit.interop.controlnet import editing_grid
    from diffkit.latent_editing import latent_inpaint
    pipe, nets, xl, root, pngs = tiny_union
    inpaint = diffusers.StableDiffusionXLControlNetUnionInpaintPipeline(
        **{**pipe.components, "controlnet": nets[0]}, requires_aesthetics_score=False, add_watermarker=False)
    inpaint.set_progress_bar_config(disable=True)
    image = torch.rand(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(2, 1, HEIGHT, WIDTH)
    mask[:, :, 2:10, 3:15] = 1
    grid_options = dict(spacing="leading", final="sigma_min", steps_offset=1, eta=0.0)
    for strength, modes, control in ((1.0, ["repaint"], {}), (0.6, ["depth", "canny"], {"scales": [0.7, 1.0],
                                                                                        "start": 0.25})):
        with torch.no_grad():
            theirs = inpaint(PROMPTS, image=image, mask_image=mask, strength=strength, num_inference_steps=4,
                             control_image=[Image.open(p).convert("RGB") for p in pngs[:len(modes)]],
                             control_mode=[7] if len(modes) == 1 else [1, 3], guidance_scale=SCALE,
                             output_type="latent", generator=[torch.Generator().manual_seed(s) for s in (10, 11)],
                             **({} if not control else {"controlnet_conditioning_scale": control["scales"],
                                                        "control_guidance_start": control["start"]})).images
        grid = editing_grid(xl, "ddim", 4, strength, dict(grid_options)) if control else None
        controlled = ControlNets(nets[:1], pngs[:len(modes)], modes=modes, **control).controlling(
            xl, HEIGHT, WIDTH, grid)
        guided, cond = controlled.prompt_guidance(PROMPTS, None, SCALE, "diffusers", 0.0, image_size=(HEIGHT, WIDTH))
        ours = latent_inpaint(guided, controlled, image * 2 - 1, mask, "ddim", 4, strength=strength,
                              posterior="sample", seed=10, cond=cond, progress=False, return_latents=True,
                              **grid_options)
        assert relative_error(ours, theirs) < 1e-5, (strength, relative_error(ours, theirs))


def _pngs_of(folder):
    from PIL import Image
    return torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)
                        for f in sorted(folder.glob("*.png"))])


def test_sample_command_with_a_controlnet_union_is_text_to_image(tiny_union, tmp_path, capsys):
    """``diffkit sample --controlnet UNION --control-image A --control-mode depth --control-image B --control-mode
    3``: the PNGs of text_to_image with the same union ControlNet and modes, byte for byte (the library side is the
    pipeline's, above)."""
    from diffkit.cli import main
    from diffkit.images import save_images
    pipe, nets, xl, root, pngs = tiny_union
    assert main([str(a) for a in (
        "sample", "--checkpoint", root / "xl", "--prompt", "hot", "--num", "2", "--steps", "2", "--seed", "5",
        "--controlnet", root / "un0", "--control-image", pngs[0], "--control-mode", "depth", "--control-image",
        pngs[1], "--control-mode", "3", "--controlnet-scale", "0.8", "--controlnet-scale", "0.6",
        "--control-guidance-end", "0.7", "--out", tmp_path / "grid.png", "--individual", tmp_path / "each",
        "--no-progress")]) == 0
    images = text_to_image(xl, ["hot", "hot"], steps=2, seed=5, output_range="-1,1",
                           controlnet=ControlNets(nets[:1], pngs, scales=[0.8, 0.6], end=0.7, modes=[1, 3]))
    save_images(images, tmp_path / "lib")
    ours = _pngs_of(tmp_path / "each")
    assert ours.shape == (2, 3, HEIGHT, WIDTH) and torch.equal(ours, _pngs_of(tmp_path / "lib"))
    capsys.readouterr()


def test_controlnet_union_bad_input_is_one_line(tiny_union, tmp_path, capsys):
    """One line (exit 2, no output) for an unknown mode, a mode per image missing, --control-mode with a plain
    ControlNet, a mode past num_control_type, union and plain ControlNets mixed, two union ControlNets with three
    images, guess mode, a union ControlNet on an SD 1.x folder, PAG; the library refuses the same."""
    from diffkit.cli import main
    from test_controlnet import tiny_controlnet
    pipe, nets, xl, root, pngs = tiny_union
    plain = tiny_controlnet(pipe.unet, 3)
    plain.save_pretrained(tmp_path / "plain")
    sd1 = tmp_path / "sd1"
    sd1.mkdir()
    (sd1 / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                      "unet": ["diffusers", "UNet2DConditionModel"]}))
    few = json.loads((root / "un0" / "config.json").read_text())
    (tmp_path / "six").mkdir()
    (tmp_path / "six" / "config.json").write_text(json.dumps({**few, "num_control_type": 6}))
    un0, un1, png0, png1 = root / "un0", root / "un1", pngs[0], pngs[1]

    def control(folder, png, mode=None):
        return (["--controlnet", folder] if folder else []) + ["--control-image", png] + (
            ["--control-mode", mode] if mode else [])

    cases = [
        (control(un0, png0, "sketch"), "--control-mode 'sketch' is not a control type; allowed: openpose (0)"),
        (control(un0, png0, "depth") + control(None, png1), "1 --control-mode for 2 --control-image"),
        (control(un0, png0), "is a ControlNet-Union: give --control-mode NAME|INDEX for each --control-image"),
        (control(tmp_path / "plain", png0, "depth"), "--control-mode applies to a ControlNet-Union folder"),
        (control(tmp_path / "six", png0, "tile"), "--control-mode 6 (tile) is not allowed for --controlnet"),
        (control(un0, png0, "depth") + control(tmp_path / "plain", png1), "they do not mix"),
        (control(un0, png0, "depth") + control(un1, png1, "canny") + control(None, png0, "hed"),
         "3 --control-image for 2 ControlNet-Union --controlnet"),
        (control(un0, png0, "depth") + ["--guess-mode"], "guess mode (or global_pool_conditions) is not supported"),
        (control(un0, png0, "depth") + ["--checkpoint", sd1], "which applies to SD-XL folders"),
        (control(un0, png0, "depth") + ["--pag-scale", "2"], "--pag-scale with a ControlNet-Union is not supported"),
    ]
    for index, (flags, message) in enumerate(cases):
        args = ["sample", "--checkpoint", root / "xl", "--prompt", "hot", "--no-progress", "--out",
                tmp_path / f"o{index}" / "g.png", *flags]
        assert main([str(a) for a in args]) == 2, message
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (message, err)
        assert not (tmp_path / f"o{index}").exists()
    for models, images, modes, message in [
        (nets[:1], pngs, [1], "1 --control-mode for 2 --control-image"),
        (nets[:1] + [plain], pngs, [1, 2], "do not mix"),
        ([plain], pngs[:1], [1], "control modes apply to a ControlNet-Union"),
        (nets[:1], pngs[:1], None, "a ControlNet-Union needs a control mode"),
        (nets[:1], pngs[:1], [8], "--control-mode 8 is not allowed for --controlnet number 1"),
    ]:
        with pytest.raises(DiffkitError, match=message):
            ControlNets(models, images, modes=modes)
    from diffkit.interop.sd_pag import pag_request
    with pytest.raises(DiffkitError, match="perturbed-attention guidance is not supported with a ControlNet-Union"):
        pag_request(xl, 2.0, controlnet=ControlNets(nets[:1], pngs[:1], modes=[1]))


def test_edit_command_with_a_controlnet_union_is_the_img2img_pipeline(tiny_union, tmp_path, capsys):
    """``diffkit edit --controlnet UNION --control-image A --control-mode canny --control-image B --control-mode
    depth``: StableDiffusionXLControlNetUnionImg2ImgPipeline's images to one 8-bit level (image i from seed + i;
    DDIM with steps_offset 0, set_alpha_to_one); with --mask it runs (the library's inpainting is the union
    inpainting pipeline's, above)."""
    from PIL import Image
    from test_latent_editing import cli
    pipe, nets, xl, root, pngs = tiny_union
    (tmp_path / "in").mkdir()
    image = torch.rand(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4))
    for i in range(2):
        Image.fromarray((image[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            tmp_path / "in" / f"in_{i}.png")
    flags = ["--checkpoint", root / "xl", "--images", tmp_path / "in", "--prompt", PROMPTS[0], "--prompt", PROMPTS[1],
             "--strength", 0.75, "--steps", 4, "--spacing", "leading", "--final", "zero", "--seed", 10,
             "--controlnet", root / "un0", "--control-image", pngs[0], "--control-mode", "canny", "--control-image",
             pngs[1], "--control-mode", "depth", "--controlnet-scale", 0.8, "--control-guidance-start", 0.3]
    code, out, err = cli(capsys, *flags, "--mask", pngs[0], "--out", tmp_path / "masked")  # the inpainting pipeline
    assert code == 0 and len(list((tmp_path / "masked").glob("*.png"))) == 2, err
    code, out, err = cli(capsys, *flags, "--out", tmp_path / "out")
    assert code == 0, err
    other = img2img_pipeline(pipe, nets[0], diffusers.StableDiffusionXLControlNetUnionImg2ImgPipeline)
    with torch.no_grad():
        theirs = other(PROMPTS, image=_pngs_of(tmp_path / "in").float() / 255,
                       control_image=[Image.open(p).convert("RGB") for p in pngs], control_mode=[3, 1],
                       strength=0.75, num_inference_steps=4, guidance_scale=SCALE, output_type="np",
                       controlnet_conditioning_scale=0.8, control_guidance_start=0.3,
                       generator=[torch.Generator().manual_seed(s) for s in (10, 11)]).images
    ours = np.stack([np.asarray(Image.open(tmp_path / "out" / f"edit_{i:05d}.png")) for i in range(2)])
    assert ours.shape == (2, HEIGHT, WIDTH, 3)
    assert np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1
