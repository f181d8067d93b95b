"""Qwen-Image ControlNets (diffkit.interop.qwen_image_controlnet) against diffusers' QwenImageControlNetPipeline on
the tiny random Qwen-Image folder (tests/_qwen_image_helpers.py) with a one-block
``QwenImageControlNetModel.from_transformer`` whose zero-initialised layers (``controlnet_blocks``,
``controlnet_x_embedder``) are made random (else its residuals would be 0), alone and as
``QwenImageMultiControlNetModel([controlnet])`` on two control images, and ``diffkit sample --controlnet`` on
them; an inpainting ControlNet (``extra_condition_channels=4``) against QwenImageControlNetInpaintPipeline and
``diffkit edit --controlnet --mask``."""
import json
import shutil

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import save_grid  # noqa: E402
from diffkit.interop.controlnet import ControlNets  # noqa: E402
from diffkit.interop.flux import pack_latents, unpack_latents  # noqa: E402
from diffkit.interop.qwen_image import load_qwen_image, text_to_image  # noqa: E402

from _pixart_helpers import assert_sample_refusals  # noqa: E402
from _qwen_image_helpers import tiny_qwen_image_pipeline  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]


def random_controlnet(pipe, extra: int = 0):
    """A one-block ``QwenImageControlNetModel.from_transformer`` (``extra``: its extra_condition_channels) whose
    zero-initialised layers are made random."""
    controlnet = diffusers.QwenImageControlNetModel.from_transformer(
        pipe.transformer, num_layers=1, attention_head_dim=16, num_attention_heads=2, extra_condition_channels=extra)
    with torch.no_grad():
        for weight in [*controlnet.controlnet_blocks.parameters(), *controlnet.controlnet_x_embedder.parameters()]:
            weight.normal_(0, 0.3)
    return controlnet


@pytest.fixture(scope="module")
def qwen_controlnet(tmp_path_factory):
    """(QwenImagePipeline, Qwen-Image folder, ControlNet folder, QwenImage, ControlNet, [two control PNGs]); an
    inpainting ControlNet in ``root / "inpainting"`` (``.inpainting``) and a 16 x 24 mask ``root / "mask.png"``."""
    from PIL import Image
    root = tmp_path_factory.mktemp("qwen_controlnet")
    pipe = tiny_qwen_image_pipeline()
    pipe.save_pretrained(root / "qwen")
    torch.manual_seed(3)
    controlnet = random_controlnet(pipe)
    controlnet.save_pretrained(root / "controlnet")
    controlnet.inpainting = random_controlnet(pipe, 4)
    controlnet.inpainting.save_pretrained(root / "inpainting")
    mask = np.zeros((16, 24), np.uint8)
    mask[3:11, 5:17] = 255
    Image.fromarray(mask).save(root / "mask.png")
    files = []
    for i, (h, w) in enumerate([(20, 28), (16, 16)]):  # resized to the output's 16 x 24 (Lanczos)
        pixels = torch.rand(h, w, 3, generator=torch.Generator().manual_seed(4 + i)).numpy()
        Image.fromarray((pixels * 255).round().astype(np.uint8)).save(root / f"control{i}.png")
        files.append(root / f"control{i}.png")
    return pipe, root / "qwen", root / "controlnet", load_qwen_image(root / "qwen", progress=False), controlnet, files


def their_pipeline(pipe, controlnet):
    theirs = diffusers.QwenImageControlNetPipeline(controlnet=controlnet, **pipe.components)
    theirs.set_progress_bar_config(disable=True)
    return theirs


@pytest.mark.parametrize("images,scale,start,end,negative", [
    ([0], 0.8, 0.0, 1.0, None),  # one control image, unguided
    ([0], 1.0, 0.25, 0.75, "ugly"),  # a window, true CFG (the negative pass takes the prompt's residuals)
    ([[0, 1]], 1.3, 0.0, 1.0, None),  # one control image per prompt
    ([0, 1], [0.7, 1.2], [0.0, 0.5], [0.5, 1.0], None),  # QwenImageMultiControlNetModel: two images, own windows
    ([0, 1], [0.7, 1.2], 0.0, 1.0, "ugly")])
def test_qwen_controlnet_matches_the_pipeline(qwen_controlnet, images, scale, start, end, negative):
    """z_0 from the same z equals QwenImageControlNetPipeline's (4 steps; generator seed 5 + i per prompt for the
    control posterior's draw on both sides)."""
    from PIL import Image
    pipe, _, _, qwen, controlnet, files = qwen_controlnet
    pil = [[Image.open(files[j]) for j in entry] if isinstance(entry, list) else Image.open(files[entry])
           for entry in images]
    multi = len(images) > 1
    model = diffusers.QwenImageMultiControlNetModel([controlnet]) if multi else controlnet
    noise = torch.randn(2, 4, 4, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = their_pipeline(pipe, model)(
            PROMPTS, negative_prompt=negative, true_cfg_scale=4.0 if negative else 1.0, num_inference_steps=4,
            latents=pack_latents(noise), height=16, width=24, output_type="latent",
            control_image=pil if multi else pil[0], controlnet_conditioning_scale=scale,
            control_guidance_start=start, control_guidance_end=end,
            generator=[torch.Generator().manual_seed(5 + i) for i in range(2)]).images
    theirs = unpack_latents(theirs, 4, 6)
    controlnets = ControlNets([controlnet] * len(images), pil, scale, start, end)
    ours = text_to_image(qwen, PROMPTS, steps=4, latents=noise.clone(), height=16, width=24, return_latents=True,
                         guidance_scale=4.0 if negative else None, negative_prompt=negative, controlnet=controlnets,
                         control_seed=5)
    plain = text_to_image(qwen, PROMPTS, steps=4, latents=noise.clone(), height=16, width=24, return_latents=True,
                          guidance_scale=4.0 if negative else None, negative_prompt=negative)
    assert relative_error(plain, theirs) > 0.05  # the ControlNet matters
    assert relative_error(ours, theirs) < 1e-5


def test_qwen_controlnet_refusals(qwen_controlnet):
    """Two different ControlNets (QwenImageMultiControlNetModel takes one), guess mode, a ControlNet of another width:
    one line."""
    _, _, _, qwen, controlnet, files = qwen_controlnet
    other = diffusers.QwenImageControlNetModel(patch_size=2, in_channels=16, out_channels=4, num_layers=1,
                                               attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                               axes_dims_rope=(2, 2, 4))
    for controlnets, expected in [
            (ControlNets([controlnet, other], files), "2 different Qwen-Image ControlNets"),
            (ControlNets([controlnet], files[:1], guess_mode=True), "guess mode does not apply to a Qwen-Image"),
            (ControlNets([other], files[:1]), "--controlnet has num_attention_heads * attention_head_dim=16 but")]:
        with pytest.raises(DiffkitError, match=expected.replace("*", r"\*")):
            text_to_image(qwen, "hot", steps=2, height=16, width=16, controlnet=controlnets)


def test_sample_command_with_a_qwen_controlnet_is_the_library_and_refuses_what_does_not_apply(qwen_controlnet,
                                                                                              tmp_path, capsys):
    """``diffkit sample --controlnet DIR --control-image A --control-image B`` (one ControlNet on two images, own
    scales, a window) writes text_to_image's grid byte for byte (sample i's control posterior from seed + i); what
    diffusers has no pipeline for, or that does not fit: one line, no file."""
    _, path, folder, qwen, controlnet, files = qwen_controlnet
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--num", "2", "--nrow", "1",
                 "--steps", "2", "--seed", "5", "--batch-size", "2", "--height", "16", "--width", "24",
                 "--controlnet", str(folder), "--control-image", str(files[0]), "--control-image", str(files[1]),
                 "--controlnet-scale", "0.5", "--controlnet-scale", "1.2", "--control-guidance-end", "0.5",
                 "--out", str(out), "--no-progress"]) == 0
    controlnets = ControlNets([controlnet] * 2, files, [0.5, 1.2], 0.0, 0.5)
    images = text_to_image(qwen, [PROMPTS[0]] * 2, steps=2, seed=5, height=16, width=24, output_range="-1,1",
                           controlnet=controlnets, control_seed=5)
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    inpainting = folder.parent / "inpainting"
    edit_folder = tmp_path / "edit"
    shutil.copytree(path, edit_folder, ignore=shutil.ignore_patterns("*.safetensors"))
    index = json.loads((edit_folder / "model_index.json").read_text())
    (edit_folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "QwenImageEditPipeline"}))
    control = ["--control-image", str(files[0])]
    assert_sample_refusals(main, path, tmp_path, capsys, [
        (["--controlnet", str(folder), "--controlnet", str(inpainting)] + control * 2,
         "2 different --controlnet folders on a Qwen-Image folder; QwenImageMultiControlNetModel takes one"),
        (["--controlnet", str(inpainting)] + control, "has extra_condition_channels=4; allowed: 0 without a mask"),
        (["--controlnet", str(path / "transformer")] + control,
         "(a Qwen-Image folder takes Qwen-Image ControlNets)"),
        (["--controlnet", str(folder), "--control-mode", "canny"] + control,
         "diffkit does not take control modes for Qwen-Image ControlNets"),
        (["--controlnet", str(folder), "--guess-mode"] + control, "the Qwen-Image ControlNet pipeline has no guess"),
        (["--controlnet", str(folder)] + control * 2 + ["--controlnet-scale", "1", "--controlnet-scale", "1",
                                                        "--controlnet-scale", "1"],
         "--controlnet-scale was given 3 times for 2 --controlnet")])
    assert_sample_refusals(main, edit_folder, tmp_path, capsys, [
        (["--controlnet", str(folder)] + control, "a ControlNet in a Qwen-Image-Edit folder is not supported")])


@pytest.mark.parametrize("scale,start,end,negative", [(0.9, 0.0, 1.0, None), (1.0, 0.25, 0.75, "ugly")])
def test_qwen_inpainting_controlnet_matches_the_pipeline(qwen_controlnet, scale, start, end, negative):
    """QwenImageControlNetInpaintPipeline (4 steps, one prompt): the control image set to -1 under the mask, its
    posterior's draw (the pipeline's global generator after torch.manual_seed(5); here seed 5) normalised, the kept
    region 1 - m appended; from the same z."""
    from PIL import Image
    pipe, _, _, qwen, controlnet, files = qwen_controlnet
    root = files[0].parent
    theirs_pipe = diffusers.QwenImageControlNetInpaintPipeline(controlnet=controlnet.inpainting, **pipe.components)
    theirs_pipe.set_progress_bar_config(disable=True)
    noise = torch.randn(1, 4, 4, 6, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    with torch.no_grad():
        theirs = theirs_pipe(
            PROMPTS[0], negative_prompt=negative, true_cfg_scale=4.0 if negative else 1.0, num_inference_steps=4,
            latents=pack_latents(noise), height=16, width=24, output_type="latent", control_image=Image.open(files[0]),
            control_mask=Image.open(root / "mask.png"), controlnet_conditioning_scale=scale,
            control_guidance_start=start, control_guidance_end=end).images
    theirs = unpack_latents(theirs, 4, 6)
    mask = torch.from_numpy(np.array(Image.open(root / "mask.png"))).float()[None, None] / 255
    ours = text_to_image(qwen, PROMPTS[0], steps=4, latents=noise.clone(), height=16, width=24, return_latents=True,
                         guidance_scale=4.0 if negative else None, negative_prompt=negative, control_seed=5,
                         controlnet=ControlNets([controlnet.inpainting], files[:1], scale, start, end),
                         control_mask=mask)
    assert relative_error(ours, theirs) < 1e-5
    with pytest.raises(DiffkitError, match="2 control images with a mask; QwenImageControlNetInpaintPipeline"):
        text_to_image(qwen, "hot", steps=2, height=16, width=24, control_mask=mask,
                      controlnet=ControlNets([controlnet.inpainting] * 2, files))
    with pytest.raises(DiffkitError, match="has extra_condition_channels=0; allowed: 4 with a mask"):
        text_to_image(qwen, "hot", steps=2, height=16, width=24, control_mask=mask,
                      controlnet=ControlNets([controlnet], files[:1]))


def test_edit_command_with_a_qwen_inpainting_controlnet_is_the_library(qwen_controlnet, tmp_path, capsys):
    """``diffkit edit --controlnet INPAINTING --mask PNG`` on a folder of two images (each its own control image)
    writes text_to_image's PNGs byte for byte (image i's noise and control posterior from seed + i); without a mask,
    with --control-image or --strength: one line, no file."""
    from PIL import Image
    from diffkit.commands.edit import read_mask, read_pngs
    from diffkit.images import save_images
    _, path, folder, qwen, controlnet, files = qwen_controlnet
    root = files[0].parent
    (tmp_path / "in").mkdir()
    for i in range(2):
        Image.open(files[i]).convert("RGB").resize((24, 16)).save(tmp_path / "in" / f"{i}.png")
    base = ["edit", "--checkpoint", str(path), "--images", str(tmp_path / "in"), "--prompt", PROMPTS[0], "--steps",
            "2", "--seed", "5", "--no-progress", "--controlnet", str(root / "inpainting")]
    out = tmp_path / "edited"
    assert main(base + ["--mask", str(root / "mask.png"), "--controlnet-scale", "0.8", "--out", str(out)]) == 0
    images, names = read_pngs(tmp_path / "in", "RGB")
    expected = text_to_image(qwen, [PROMPTS[0]] * 2, steps=2, seed=5, height=16, width=24, output_range="-1,1",
                             controlnet=ControlNets([controlnet.inpainting], [[str(f) for f in names]], 0.8),
                             control_seed=5, control_rows=[0, 1], control_mask=read_mask(root / "mask.png", images))
    save_images(expected, tmp_path / "expected", prefix="edit")
    for i in range(2):
        name = f"edit_0000{i}.png"
        assert (out / name).read_bytes() == (tmp_path / "expected" / name).read_bytes()
    for extra, expected in [([], "--controlnet with no --mask on a Qwen-Image folder in diffkit edit"),
                            (["--mask", str(root / "mask.png"), "--strength", "0.5"],
                             "--controlnet with --strength 0.5"),
                            (["--controlnet", str(folder), "--mask", str(root / "mask.png")],
                             "2 different --controlnet folders on a Qwen-Image folder")]:
        capsys.readouterr()
        assert main(base + extra + ["--out", str(tmp_path / "never")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (extra, err)
    assert not (tmp_path / "never").exists()
