"""FLUX.1 ControlNets in edits (diffkit.interop.flux.image_to_image(controlnet=), `diffkit edit --controlnet`) against
diffusers' FluxControlNetImg2ImgPipeline and FluxControlNetInpaintPipeline on the tiny random folders and ControlNets
of test_flux_controlnet (its fixture, imported); nothing downloaded."""
import re

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.controlnet import ControlNets  # noqa: E402
from diffkit.interop.flux import image_to_image, unpack_latents  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
import test_flux_controlnet  # noqa: E402
from test_interop_flux_inpaint import _images, _mask  # noqa: E402  (two [0, 1] images, a mask, 16 x 16)

PROMPTS = test_flux_controlnet.PROMPTS
tiny = test_flux_controlnet.tiny  # the folders fixture, shared
_controlnet = test_flux_controlnet._controlnet
KW = {"max_sequence_length": 12}


def _theirs(flux, controlnet, control, images, mask=None, output_type="latent", **kw):
    """FluxControlNetImg2ImgPipeline's (with ``mask``: FluxControlNetInpaintPipeline's) output, latents unpacked;
    image i's generator seeded 5 + i."""
    from PIL import Image
    parts = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    cls = diffusers.FluxControlNetImg2ImgPipeline if mask is None else diffusers.FluxControlNetInpaintPipeline
    pipe = cls(**{name: getattr(flux, name) for name in parts}, controlnet=controlnet,
               scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_config(flux.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    opened = [[Image.open(one) for one in entry] if isinstance(entry, list) else Image.open(entry)
              for entry in control]
    extra = {} if mask is None else {"mask_image": mask}
    with torch.no_grad():
        out = pipe(PROMPTS, image=images, control_image=opened if isinstance(controlnet, list) else opened[0],
                   height=16, width=16, output_type=output_type,
                   generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], **extra, **KW, **kw).images
    return unpack_latents(out, 8, 8) if output_type == "latent" else out


@pytest.mark.parametrize("dev, net, mask, steps, strength", [
    (True, "guided", False, 4, 0.6), (True, "unguided", True, 4, 0.6), (False, "guided", True, 3, 1.0),
    (True, "guided", False, 3, 1.0)])
def test_flux_controlnet_edits_match_the_pipelines(tiny, dev, net, mask, steps, strength):
    """z_0 of FluxControlNetImg2ImgPipeline / FluxControlNetInpaintPipeline (their default embedded guidance 7.0
    for the transformer and / or the ControlNet): image i's generator draws the control posterior, then the image's
    posterior, then the noise; get_timesteps' cut; at strength 1 pure noise."""
    folders, nets, control = tiny
    _, flux = folders[dev]
    images = _images()
    how = {"mask": _mask()} if mask else {}
    theirs = _theirs(flux, _controlnet(nets[net]), control[:1], images, num_inference_steps=steps, strength=strength,
                     controlnet_conditioning_scale=0.7, **how)
    cn = ControlNets([_controlnet(nets[net])], control[:1], 0.7)
    ours = image_to_image(flux, images * 2 - 1, PROMPTS, strength, steps=steps, seed=5, return_latents=True,
                          controlnet=cn, **how, **KW)
    error = relative_error(ours, theirs)
    print("flux controlnet edit", dev, net, mask, steps, strength, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, error
    plain = image_to_image(flux, images * 2 - 1, PROMPTS, strength, steps=steps, seed=5, return_latents=True,
                           guidance_scale=7.0 if dev else None, **how, **KW)
    assert relative_error(plain, theirs) > 1e-3  # the ControlNet acts


def test_multi_controlnet_window_and_per_image_control_match_the_pipeline(tiny):
    """Two ControlNets (scales 0.7, 1.2; windows [0, 0.5] and [0.25, 1] of the steps that run, as the pipelines'
    controlnet_keep over get_timesteps' cut), the second with one control image per image, inpainting at 0.8."""
    folders, nets, control = tiny
    _, flux = folders[True]
    images = _images()
    kw = dict(num_inference_steps=5, strength=0.8, controlnet_conditioning_scale=[0.7, 1.2],
              control_guidance_start=[0.0, 0.25], control_guidance_end=[0.5, 1.0], guidance_scale=3.0,
              control_mode=[None, None])  # diffusers 0.42.1: without it the edit pipelines' Multi-ControlNet fails
    theirs = _theirs(flux, [_controlnet(nets["guided"])] * 2, [control[0], control], images, _mask(), **kw)
    cn = ControlNets([_controlnet(nets["guided"])] * 2, [control[0], control], [0.7, 1.2], [0.0, 0.25], [0.5, 1.0])
    ours = image_to_image(flux, images * 2 - 1, PROMPTS, 0.8, mask=_mask(), steps=5, seed=5, guidance_scale=3.0,
                          return_latents=True, controlnet=cn, **KW)
    error = relative_error(ours, theirs)
    print("flux multi-controlnet inpaint", float((ours - theirs).abs().max()), error)
    assert error < 1e-5, error
    always = ControlNets([_controlnet(nets["guided"])] * 2, [control[0], control], [0.7, 1.2])
    unwindowed = image_to_image(flux, images * 2 - 1, PROMPTS, 0.8, mask=_mask(), steps=5, seed=5,
                                guidance_scale=3.0, return_latents=True, controlnet=always, **KW)
    assert relative_error(unwindowed, theirs) > 1e-3  # the windows act


def test_flux_controlnet_edit_scale_zero_and_refusals(tiny):
    """A ControlNet at scale 0 edits as without it, bit for bit, when the control posterior is its mean (no draw);
    true CFG with a ControlNet is one line."""
    folders, nets, control = tiny
    _, flux = folders[True]
    images = _images() * 2 - 1
    off = ControlNets([_controlnet(nets["guided"])], control[:1], 0.0)
    kw = dict(steps=3, seed=5, return_latents=True, mask=_mask(), **KW)
    assert torch.equal(image_to_image(flux, images, PROMPTS, controlnet=off, control_posterior="mean", **kw),
                       image_to_image(flux, images, PROMPTS, **kw))
    with pytest.raises(DiffkitError, match="negative_prompt='ugly' \\(true CFG\\) with a ControlNet is not allowed"):
        image_to_image(flux, images, PROMPTS, controlnet=off, true_cfg_scale=2.0, negative_prompt="ugly", **kw)


def test_edit_command_runs_a_flux_controlnet(tiny, tmp_path, capsys):
    """`diffkit edit --controlnet DIR --control-image PNG [--mask]` on a FLUX folder writes image_to_image's images
    byte for byte (image i's control posterior from --seed + i), within one PNG level of the pipelines'; a
    --control-image folder gives each image its own; unsupported combinations are one line, no folder made."""
    from PIL import Image
    from diffkit.cli import main
    from diffkit.commands.edit import read_pngs
    from diffkit.images import save_images
    folders, nets, control = tiny
    folder, flux = folders[True]
    (tmp_path / "in").mkdir()
    (tmp_path / "controls").mkdir()
    for i, image in enumerate(_images()):
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            tmp_path / "in" / f"{i}.png")
        Image.open(control[i]).save(tmp_path / "controls" / f"{i}.png")
    Image.fromarray(np.uint8(_mask()[0, 0].numpy() * 255)).save(tmp_path / "mask.png")
    images, _ = read_pngs(tmp_path / "in", "RGB")
    common = ["edit", "--checkpoint", str(folder), "--images", str(tmp_path / "in"), "--prompt", PROMPTS[0],
              "--prompt", PROMPTS[1], "--no-progress", "--seed", "5", "--steps", "3", "--max-sequence-length", "12",
              "--controlnet", str(nets["guided"])]
    controls = sorted(str(p) for p in (tmp_path / "controls").iterdir())
    for name, extra, how in (
            ("masked", ["--mask", str(tmp_path / "mask.png"), "--strength", "0.9", "--control-image",
                        str(tmp_path / "controls"), "--controlnet-scale", "0.6"],
             {"mask": _mask(), "strength": 0.9, "scale": 0.6, "control": [controls]}),
            ("edited", ["--control-image", str(control[0]), "--control-guidance-end", "0.5"],
             {"strength": 0.6, "end": 0.5, "control": control[:1]})):
        assert main(common + extra + ["--out", str(tmp_path / name)]) == 0, name
        cn = ControlNets([_controlnet(nets["guided"])], how["control"], how.get("scale", 1.0), 0.0,
                         how.get("end", 1.0))
        ours = image_to_image(flux, images, PROMPTS, how["strength"], mask=how.get("mask"), steps=3, seed=5,
                              output_range="-1,1", controlnet=cn, **KW)
        save_images(ours, tmp_path / f"expected_{name}", prefix="edit")
        for i in range(2):
            assert (tmp_path / name / f"edit_0000{i}.png").read_bytes() == \
                (tmp_path / f"expected_{name}" / f"edit_0000{i}.png").read_bytes(), name
        extra_kw = {"mask": how["mask"]} if "mask" in how else {}
        theirs = _theirs(flux, _controlnet(nets["guided"]), how["control"], (images + 1) / 2, output_type="np",
                         num_inference_steps=3, strength=how["strength"],
                         controlnet_conditioning_scale=how.get("scale", 1.0),
                         control_guidance_end=how.get("end", 1.0), **extra_kw)
        written = np.stack([np.asarray(Image.open(tmp_path / name / f"edit_0000{i}.png"), np.float64)
                            for i in range(2)])
        assert np.abs(written - (theirs * 255).round()).max() <= 1, name
    capsys.readouterr()
    base = common + ["--out", str(tmp_path / "bad")]
    for extra, match in ((["--control-image", str(control[0]), "--true-cfg-scale", "2", "--negative-prompt", "u"],
                          "negative_prompt='u' \\(true CFG\\) with a ControlNet is not allowed"),
                         (["--control-image", str(control[0]), "--guess-mode"],
                          "--guess-mode applies to Stable Diffusion ControlNets"),
                         ([], "0 --control-image for 1 --controlnet")):
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), (extra, err)
        assert not (tmp_path / "bad").exists()
