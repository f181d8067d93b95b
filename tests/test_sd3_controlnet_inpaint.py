"""SD3 inpainting ControlNets (extra_conditioning_channels=1; diffkit.interop.sd3_controlnet.inpainting_control,
text_to_image(control_mask=), `diffkit edit --mask --controlnet` on an SD3 folder) against diffusers'
StableDiffusion3ControlNetInpaintingPipeline on the tiny random SD3 folder of test_sd3_controlnet (its fixture,
imported) and a tiny random inpainting SD3ControlNetModel; nothing downloaded."""
import re

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.controlnet import ControlNets  # noqa: E402
from diffkit.interop.sd3 import text_to_image  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
import test_sd3_controlnet  # noqa: E402

tiny = test_sd3_controlnet.tiny  # the folders fixture, shared
_controlnet = test_sd3_controlnet._controlnet
PROMPT = test_sd3_controlnet.PROMPT
KW = {"max_sequence_length": 12, "height": 16, "width": 16}


@pytest.fixture(scope="module")
def inpainting(tiny, tmp_path_factory):
    """(an inpainting ControlNet folder, a 16 x 16 mask PNG, its (1, 1, 16, 16) tensor)."""
    from PIL import Image
    root = tmp_path_factory.mktemp("sd3inpaintcn")
    net = test_sd3_controlnet.tiny_sd3_controlnet(9, extra_conditioning_channels=1,
                                                  force_zeros_for_pooled_projection=False)  # zero pooled regardless
    net.save_pretrained(root / "inpaint")
    mask = np.zeros((16, 16), np.uint8)
    mask[3:11, 5:14] = 255
    Image.fromarray(mask).save(root / "mask.png")
    return root / "inpaint", root / "mask.png", torch.from_numpy(mask / 255.0).float()[None, None]


def _theirs(sd3, controlnet, control_image, mask_png, latents, prompts=PROMPT, **kw):
    from PIL import Image
    parts = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3",
             "tokenizer_3")
    pipe = diffusers.StableDiffusion3ControlNetInpaintingPipeline(
        **{name: getattr(sd3, name) for name in parts}, controlnet=controlnet,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_config(sd3.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    images = [Image.open(one) for one in control_image] if isinstance(control_image, list) else \
        Image.open(control_image)
    torch.manual_seed(11)  # the pipeline draws the masked image's posterior from the global generator
    with torch.no_grad():
        masks = [Image.open(mask_png)] * len(images) if isinstance(images, list) else Image.open(mask_png)
        return pipe(prompts, control_image=images, control_mask=masks, num_inference_steps=4,
                    latents=latents.clone(), output_type=kw.pop("output_type", "latent"), **KW, **kw).images


@pytest.mark.parametrize("scale", [4.0, 1.0])
def test_sd3_inpainting_controlnet_matches_the_pipeline(tiny, inpainting, scale):
    """One prompt, guided (s = 4: both halves the same control) and not, the masked control image's posterior draw
    (torch.manual_seed(11) before the pipeline, control_seed=11 here), the control image resized (24 x 20 -> 16)."""
    _, sd3, _, images = tiny
    folder, mask_png, mask = inpainting
    latents = test_sd3_controlnet._latents()
    theirs = _theirs(sd3, _controlnet(folder), images[0], mask_png, latents, guidance_scale=scale,
                     controlnet_conditioning_scale=0.7)
    control = ControlNets([_controlnet(folder)], [images[0]], 0.7)
    ours = text_to_image(sd3, PROMPT, steps=4, guidance_scale=scale, latents=latents, return_latents=True,
                         controlnet=control, control_seed=11, control_mask=mask, **KW)
    error = relative_error(ours, theirs)
    print("sd3 inpainting controlnet", scale, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, error
    unmasked = text_to_image(sd3, PROMPT, steps=4, guidance_scale=scale, latents=latents, return_latents=True,
                             controlnet=control, control_seed=11, control_mask=mask * 0, **KW)
    assert relative_error(unmasked, theirs) > 1e-3  # the mask acts


def test_sd3_inpainting_controlnet_batch_window_matches_the_pipeline(tiny, inpainting, monkeypatch):
    """Two prompts with a negative prompt, one control image per prompt (the pipeline needs the mask twice then), a
    window [0.25, 1]: the pipeline with its posterior draws replaced by the mean (it draws the batch from one
    generator, diffkit per sample)."""
    _, sd3, _, images = tiny
    folder, mask_png, mask = inpainting
    monkeypatch.setattr(diffusers.models.autoencoders.vae.DiagonalGaussianDistribution, "sample",
                        lambda self, generator=None: self.mean)
    prompts, latents = ["a photo of a cat", "hot dog"], test_sd3_controlnet._latents(2)
    theirs = _theirs(sd3, _controlnet(folder), list(images), mask_png, latents, prompts, guidance_scale=3.0,
                     negative_prompt="ugly", control_guidance_start=0.25)
    control = ControlNets([_controlnet(folder)], [list(images)], 1.0, 0.25)
    ours = text_to_image(sd3, prompts, steps=4, guidance_scale=3.0, latents=latents, return_latents=True,
                         negative_prompt="ugly", controlnet=control, control_posterior="mean", control_mask=mask,
                         **KW)
    error = relative_error(ours, theirs)
    print("sd3 inpainting controlnet batch", float((ours - theirs).abs().max()), error)
    assert error < 1e-5, error


def test_sd3_inpainting_controlnet_refusals(tiny, inpainting):
    """An inpainting ControlNet without a mask, a plain one with a mask, a mask of another size: one line."""
    _, sd3, folders, images = tiny
    folder, _, mask = inpainting
    kw = dict(steps=2, latents=test_sd3_controlnet._latents(), **KW)
    for net, given, match in ((folder, None, "extra_conditioning_channels=1; allowed: 0 without a mask"),
                              (folders["plain"], mask, "extra_conditioning_channels=0; allowed: 1 with a mask"),
                              (folder, mask[..., :8], "a control mask of shape \\(1, 1, 16, 8\\) is not allowed")):
        with pytest.raises(DiffkitError, match=match):
            text_to_image(sd3, PROMPT, controlnet=ControlNets([_controlnet(net)], images[:1]), control_mask=given,
                          **kw)
    with pytest.raises(DiffkitError, match="control_mask goes with an inpainting ControlNet"):
        text_to_image(sd3, PROMPT, control_mask=mask, **kw)


def test_edit_command_inpaints_with_an_sd3_controlnet(tiny, inpainting, tmp_path, capsys):
    """`diffkit edit --mask M --controlnet DIR` on an SD3 folder writes text_to_image(control_mask=)'s PNGs byte for
    byte (the --images files as the control images, one per image; image i's noise and posterior from --seed + i);
    the pipeline's unsupported flags are one line, no folder made."""
    from PIL import Image
    from diffkit.cli import main
    from diffkit.images import save_images
    folder_sd3, sd3, folders, _ = tiny
    folder, mask_png, mask = inpainting
    (tmp_path / "in").mkdir()
    for i in range(2):
        rgb = (np.random.default_rng(20 + i).random((16, 16, 3)) * 255).astype(np.uint8)
        Image.fromarray(rgb).save(tmp_path / "in" / f"{i}.png")
    common = ["edit", "--checkpoint", str(folder_sd3), "--images", str(tmp_path / "in"), "--prompt", PROMPT[0],
              "--no-progress", "--seed", "5", "--steps", "3", "--max-sequence-length", "12", "--controlnet",
              str(folder)]
    assert main(common + ["--mask", str(mask_png), "--controlnet-scale", "0.8", "--guidance-scale", "3",
                          "--guidance-convention", "diffusers",
                          "--out", str(tmp_path / "out")]) == 0
    files = [str(tmp_path / "in" / f"{i}.png") for i in range(2)]
    ours = text_to_image(sd3, PROMPT * 2, steps=3, seed=5, guidance_scale=3.0, output_range="-1,1",
                         controlnet=ControlNets([_controlnet(folder)], [files], 0.8), control_seed=5,
                         control_mask=mask, **KW)
    save_images(ours, tmp_path / "expected", prefix="edit")
    for i in range(2):
        assert (tmp_path / "out" / f"edit_0000{i}.png").read_bytes() == \
            (tmp_path / "expected" / f"edit_0000{i}.png").read_bytes()
    capsys.readouterr()
    for extra, match in (([], "--controlnet on an SD3 folder in diffkit edit goes with --mask"),
                         (["--mask", str(mask_png), "--control-image", files[0]],
                          "--control-image does not apply to an SD3 inpainting ControlNet"),
                         (["--mask", str(mask_png), "--strength", "0.5"],
                          "--strength 0.5 does not apply to an SD3 inpainting ControlNet"),
                         (["--mask", str(mask_png), "--controlnet", str(folders["plain"])],
                          "--controlnet number 2 has extra_conditioning_channels=0; allowed: 1 with a mask")):
        assert main(common + extra + ["--out", str(tmp_path / "bad")]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), (extra, err)
        assert not (tmp_path / "bad").exists()
