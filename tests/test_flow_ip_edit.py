"""IP-Adapters on SD3 and FLUX.1 folders in img2img / inpainting (``sd3.image_to_image(ip_adapter=)``,
``flux.image_to_image(ip_adapter=)``, ``diffkit edit --ip-adapter``) and with ControlNets (``text_to_image(controlnet=,
ip_adapter=)``, ``diffkit sample --controlnet --ip-adapter``) against diffusers' StableDiffusion3Img2ImgPipeline /
StableDiffusion3InpaintPipeline / FluxImg2ImgPipeline / FluxInpaintPipeline / StableDiffusion3ControlNetPipeline /
FluxControlNetPipeline with ``load_ip_adapter`` + ``set_ip_adapter_scale`` + ``ip_adapter_image``, on the tiny random
folders and adapters of test_sd3_ip_adapter.py / test_flux_ip_adapter.py (their fixtures, imported)."""
import dataclasses

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop import flux as flux_module, sd3 as sd3_module  # noqa: E402
from diffkit.interop.flux_ip_adapter import load_flux_ip_adapter  # noqa: E402
from diffkit.interop.sd3_ip_adapter import load_sd3_ip_adapter  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_flux import unpack_latents  # noqa: E402
import test_flux_ip_adapter  # noqa: E402
import test_sd3_ip_adapter  # noqa: E402

PROMPTS = test_sd3_ip_adapter.PROMPTS
sd3_ip = test_sd3_ip_adapter.sd3_ip  # the module fixtures, shared
flux_ip = test_flux_ip_adapter.flux_ip


def _images():
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))  # [0, 1]


def _mask():
    return (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(4)) > 0.5).float()


def _theirs(pipe, cls, root, weight, scale, encoder_kw, strength, steps, mask=None, negative=None, **kw):
    """``cls`` on ``pipe``'s components with the adapter ``weight`` loaded at ``scale``: z_0 of the two images."""
    from PIL import Image
    edit = cls(**{**pipe.components, **kw.pop("components", {})})
    edit.set_progress_bar_config(disable=True)
    edit.load_ip_adapter(str(root), subfolder="", weight_name=weight, local_files_only=True, **encoder_kw)
    edit.set_ip_adapter_scale(scale)
    if negative is not None:
        kw["negative_ip_adapter_image"] = Image.open(negative).convert("RGB")
    extra = {**({} if mask is None else {"mask_image": mask, "height": 16, "width": 16}), **kw}
    try:
        with torch.no_grad():
            return edit(PROMPTS, image=_images(), strength=strength, num_inference_steps=steps, output_type="latent",
                        ip_adapter_image=Image.open(root / "image.png").convert("RGB"), max_sequence_length=12,
                        generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], **extra).images
    finally:
        edit.unload_ip_adapter()  # the transformer is the fixture's


@pytest.mark.parametrize("inpaint, scale, guidance", [(False, 0.8, 4.0), (True, 1.2, 4.0), (False, 0.0, 4.0)])
def test_sd3_edit_with_an_ip_adapter_matches_the_pipelines(sd3_ip, inpaint, scale, guidance):
    """Same z_0 as StableDiffusion3Img2ImgPipeline (4 steps at 0.6) / StableDiffusion3InpaintPipeline (a 16-channel
    transformer, 3 steps at 0.9) with the adapter: zero embeds in the null half; scale 0 = no adapter."""
    pipe, sd3, root, png = sd3_ip
    mask, components, cls = None, {}, diffusers.StableDiffusion3Img2ImgPipeline
    if inpaint:
        torch.manual_seed(3)  # the inpainting pipeline takes 16 latent channels only
        components = {"vae": diffusers.AutoencoderKL(**{**pipe.vae.config, "latent_channels": 16}).eval(),
                      "transformer": diffusers.SD3Transformer2DModel(**{**pipe.transformer.config, "in_channels": 16,
                                                                        "out_channels": 16}).eval()}
        sd3 = dataclasses.replace(sd3, _denoiser=None, **components)
        mask, cls = _mask(), diffusers.StableDiffusion3InpaintPipeline
    steps, strength = (3, 0.9) if inpaint else (4, 0.6)
    theirs = _theirs(pipe, cls, root, "ip.safetensors", scale, {"image_encoder_folder": str(root / "image_encoder")},
                     strength, steps, mask, guidance_scale=guidance, negative_prompt="ugly", components=components)
    adapter = load_sd3_ip_adapter(root / "ip.safetensors", png, scale, progress=False)
    kw = dict(mask=mask, steps=steps, guidance_scale=guidance, seed=5, return_latents=True, negative_prompt="ugly",
              max_sequence_length=12)
    ours = sd3_module.image_to_image(sd3, _images() * 2 - 1, PROMPTS, strength, ip_adapter=adapter, **kw)
    plain = sd3_module.image_to_image(sd3, _images() * 2 - 1, PROMPTS, strength, **kw)
    error = relative_error(ours, theirs)
    print("sd3 ip edit", inpaint, scale, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)
    assert (relative_error(plain, theirs) > 1e-3) == (scale > 0)
    assert scale > 0 or torch.equal(ours, plain)
    assert not hasattr(sd3.transformer, "image_proj")


@pytest.mark.parametrize("inpaint, scale, kw", [
    (False, 0.8, {}), (True, 1.3, {"true_cfg_scale": 3.0, "negative_prompt": "ugly"}),
    (False, 0.6, {"true_cfg_scale": 2.0, "negative_prompt": "ugly", "negative": "negative.png"})])
def test_flux_edit_with_an_ip_adapter_matches_the_pipelines(flux_ip, inpaint, scale, kw):
    """Same z_0 as FluxImg2ImgPipeline / FluxInpaintPipeline with the adapter (4 steps at 0.6 / 3 at 0.9, the
    embedded guidance 7.0): true CFG with the pipeline's black negative image of the images' size, or a given one."""
    pipe, flux, root, png, _ = flux_ip
    mask = _mask() if inpaint else None
    cls = diffusers.FluxInpaintPipeline if inpaint else diffusers.FluxImg2ImgPipeline
    steps, strength = (3, 0.9) if inpaint else (4, 0.6)
    kw = dict(kw)
    negative = kw.pop("negative", None)
    negative = None if negative is None else root / negative
    encoder = {"image_encoder_pretrained_model_name_or_path": str(root / "image_encoder"),
               "image_encoder_dtype": torch.float32}
    theirs = _theirs(pipe, cls, root, "xlabs.safetensors", scale, encoder, strength, steps, mask, negative,
                     height=16, width=16, **kw)
    theirs = unpack_latents(theirs, 8, 8)
    adapter = load_flux_ip_adapter(root / "xlabs.safetensors", png, scale, progress=False, negative_image=negative)
    common = dict(mask=mask, steps=steps, seed=5, return_latents=True, max_sequence_length=12, **kw)
    ours = flux_module.image_to_image(flux, _images() * 2 - 1, PROMPTS, strength, ip_adapter=adapter, **common)
    plain = flux_module.image_to_image(flux, _images() * 2 - 1, PROMPTS, strength, **common)
    error = relative_error(ours, theirs)
    print("flux ip edit", inpaint, scale, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)
    assert relative_error(plain, theirs) > 1e-3
    assert not hasattr(flux.transformer, "encoder_hid_proj") or flux.transformer.encoder_hid_proj is None


def _pngs(folder):
    from PIL import Image
    folder.mkdir()
    for i, image in enumerate(_images()):
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_edit_command_with_an_ip_adapter_writes_the_library_images(sd3_ip, flux_ip, kind, tmp_path, capsys):
    """``diffkit edit --checkpoint SD3|FLUX --ip-adapter FILE:S --ip-adapter-image PNG`` (SD3: img2img; FLUX:
    inpainting with true CFG and --negative-ip-adapter-image): image_to_image's images with the same adapter, byte for
    byte; FLUX's with --controlnet, or its negative image without true CFG, one line and no folder."""
    from diffkit.cli import main
    from diffkit.commands.edit import read_pngs
    from diffkit.images import save_images
    if kind == "sd3":
        _, model, root, png = sd3_ip
        folder, weight, module = root / "sd3", "ip.safetensors", sd3_module
        adapter = load_sd3_ip_adapter(root / weight, png, 0.7, progress=False)
        extra, how = ["--negative-prompt", "ugly"], {"negative_prompt": "ugly"}
    else:
        _, model, root, png, negative = flux_ip
        folder, weight, module = root / "flux", "xlabs.safetensors", flux_module
        adapter = load_flux_ip_adapter(root / weight, png, 0.7, progress=False, negative_image=negative)
        from PIL import Image
        Image.fromarray((_mask()[0, 0].numpy() * 255).astype(np.uint8)).save(tmp_path / "mask.png")
        extra = ["--mask", str(tmp_path / "mask.png"), "--true-cfg-scale", "2", "--negative-prompt", "ugly",
                 "--negative-ip-adapter-image", str(negative)]
        how = {"true_cfg_scale": 2.0, "negative_prompt": "ugly", "mask": _mask()[:1]}
    images = _pngs(tmp_path / "in")
    common = ["--checkpoint", str(folder), "--images", str(images), "--prompt", PROMPTS[0], "--no-progress", "--seed",
              "5", "--steps", "3", "--max-sequence-length", "12", "--ip-adapter", f"{root / weight}:0.7",
              "--ip-adapter-image", str(png)] + (["--image-encoder", str(root / "image_encoder")] if kind == "flux"
                                                 else [])
    assert main(["edit"] + common + extra + ["--out", str(tmp_path / "out")]) == 0
    pixels, _ = read_pngs(images, "RGB")
    ours = module.image_to_image(model, pixels, [PROMPTS[0]] * 2, steps=3, seed=5, max_sequence_length=12,
                                 output_range="-1,1", ip_adapter=adapter, **how)
    save_images(ours, tmp_path / "expected", prefix="edit")
    for i in range(2):
        assert (tmp_path / "out" / f"edit_0000{i}.png").read_bytes() == \
            (tmp_path / "expected" / f"edit_0000{i}.png").read_bytes()
    capsys.readouterr()
    if kind == "sd3":
        return
    bad = [(["--controlnet", str(root)], "--ip-adapter with --controlnet in diffkit edit: diffusers 0.42.1's "),
           (extra[:2] + extra[-2:], "--negative-ip-adapter-image feeds only true CFG's negative pass")]
    for flags, message in bad:
        assert main(["edit"] + common + flags + ["--out", str(tmp_path / "bad")]) == 2, flags
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and not (tmp_path / "bad").exists(), err
    with pytest.raises(DiffkitError, match="no reference pipeline"):
        flux_module.image_to_image(flux_ip[1], _images(), PROMPTS, controlnet=object(), ip_adapter=adapter)


@pytest.mark.parametrize("inpaint", [False, True])
def test_sd3_controlnet_with_an_ip_adapter_matches_the_pipeline(sd3_ip, tmp_path, inpaint):
    """text_to_image(controlnet=, ip_adapter=) = StableDiffusion3ControlNetPipeline with the adapter loaded (s = 4, 4
    steps, the control image's posterior from torch.manual_seed(11) / control_seed=11); with ``control_mask`` (an
    inpainting ControlNet) = StableDiffusion3ControlNetInpaintingPipeline."""
    from PIL import Image
    from diffkit.interop.controlnet import ControlNets, load_model_folder
    from test_sd3_controlnet import _pipeline, control_image_files, tiny_sd3_controlnet
    pipe, sd3, root, png = sd3_ip
    options = {"extra_conditioning_channels": 1} if inpaint else {}
    tiny_sd3_controlnet(9 if inpaint else 3, force_zeros_for_pooled_projection=False, **options).save_pretrained(
        tmp_path / "cn")
    image = control_image_files(tmp_path)[1]
    latents = test_sd3_ip_adapter._latents(1)  # one prompt: the pipeline's control posterior from manual_seed(11)
    theirs_pipe = _pipeline(sd3, load_model_folder("SD3ControlNetModel", tmp_path / "cn", progress=False), pipe)
    mask, extra = None, {}
    if inpaint:
        mask = torch.zeros(1, 1, 16, 16)
        mask[..., 3:11, 5:14] = 1
        Image.fromarray((mask[0, 0].numpy() * 255).astype(np.uint8)).save(tmp_path / "mask.png")
        theirs_pipe = diffusers.StableDiffusion3ControlNetInpaintingPipeline(**theirs_pipe.components)
        theirs_pipe.set_progress_bar_config(disable=True)
        extra = {"control_mask": Image.open(tmp_path / "mask.png"), "height": 16, "width": 16}
    theirs = _theirs_t2i(theirs_pipe, root, "ip.safetensors", 0.8,
                         {"image_encoder_folder": str(root / "image_encoder")}, latents,
                         control_image=Image.open(image), controlnet_conditioning_scale=0.7, guidance_scale=4.0,
                         **extra)
    control = ControlNets([load_model_folder("SD3ControlNetModel", tmp_path / "cn", progress=False)], [image], 0.7)
    adapter = load_sd3_ip_adapter(root / "ip.safetensors", png, 0.8, progress=False)
    kw = dict(steps=4, guidance_scale=4.0, latents=latents, max_sequence_length=12, return_latents=True,
              controlnet=control, control_seed=11, control_mask=mask, height=16, width=16)
    ours = sd3_module.text_to_image(sd3, PROMPTS[:1], ip_adapter=adapter, **kw)
    plain = sd3_module.text_to_image(sd3, PROMPTS[:1], **kw)
    error = relative_error(ours, theirs)
    print("sd3 controlnet ip", inpaint, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)
    assert relative_error(plain, theirs) > 1e-3


def _theirs_t2i(edit, root, weight, scale, encoder_kw, latents, prompts=PROMPTS[:1], **kw):
    """The text-to-image pipeline ``edit`` with the adapter loaded (then unloaded): z_0 of ``prompts``."""
    from PIL import Image
    edit.load_ip_adapter(str(root), subfolder="", weight_name=weight, local_files_only=True, **encoder_kw)
    edit.set_ip_adapter_scale(scale)
    try:
        torch.manual_seed(11)
        with torch.no_grad():
            return edit(prompts, num_inference_steps=4, latents=latents.clone(), output_type="latent",
                        ip_adapter_image=Image.open(root / "image.png").convert("RGB"), max_sequence_length=12,
                        **kw).images
    finally:
        edit.unload_ip_adapter()


@pytest.mark.parametrize("kw", [{}, {"true_cfg_scale": 2.5, "negative_prompt": "ugly", "negative": "negative.png"}])
def test_flux_controlnet_with_an_ip_adapter_matches_the_pipeline(flux_ip, tmp_path, kw):
    """text_to_image(controlnet=, ip_adapter=) = FluxControlNetPipeline with the adapter loaded (the embedded
    guidance 7.0; true CFG with a negative image: the negative pass takes its embeds and the conditional pass's
    residuals), the control posteriors from generators 11 + i / control_seed=11."""
    from PIL import Image
    from diffkit.interop.controlnet import ControlNets, load_model_folder
    from diffkit.interop.flux import pack_latents
    from test_flux_controlnet import control_image_files, tiny_flux_controlnet
    pipe, flux, root, png, _ = flux_ip
    tiny_flux_controlnet(3).save_pretrained(tmp_path / "cn")
    image = control_image_files(tmp_path)[1]
    latents, kw = test_flux_ip_adapter._latents(), dict(kw)
    negative = kw.pop("negative", None)
    negative = None if negative is None else root / negative
    net = load_model_folder("FluxControlNetModel", tmp_path / "cn", progress=False)
    theirs_pipe = diffusers.FluxControlNetPipeline(**{k: v for k, v in pipe.components.items()
                                                      if k not in ("image_encoder", "feature_extractor")},
                                                   controlnet=net)
    theirs_pipe.set_progress_bar_config(disable=True)
    extra = {} if negative is None else {"negative_ip_adapter_image": Image.open(negative).convert("RGB")}
    theirs = _theirs_t2i(theirs_pipe, root, "xlabs.safetensors", 0.8,
                         {"image_encoder_pretrained_model_name_or_path": str(root / "image_encoder"),
                          "image_encoder_dtype": torch.float32}, pack_latents(latents), PROMPTS,
                         control_image=Image.open(image), controlnet_conditioning_scale=0.7, height=16, width=16,
                         generator=[torch.Generator().manual_seed(11 + i) for i in range(2)], **extra, **kw)
    theirs = unpack_latents(theirs, 8, 8)
    control = ControlNets([load_model_folder("FluxControlNetModel", tmp_path / "cn", progress=False)], [image], 0.7)
    adapter = load_flux_ip_adapter(root / "xlabs.safetensors", png, 0.8, progress=False, negative_image=negative)
    common = dict(steps=4, latents=latents, max_sequence_length=12, return_latents=True, controlnet=control,
                  control_seed=11, height=16, width=16, **kw)
    ours = flux_module.text_to_image(flux, PROMPTS, ip_adapter=adapter, **common)
    plain = flux_module.text_to_image(flux, PROMPTS, **common)
    error = relative_error(ours, theirs)
    print("flux controlnet ip", kw, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)
    assert relative_error(plain, theirs) > 1e-3


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_sample_command_with_a_controlnet_and_an_ip_adapter(sd3_ip, flux_ip, kind, tmp_path, monkeypatch):
    """``diffkit sample --controlnet DIR --control-image PNG --ip-adapter FILE:S --ip-adapter-image PNG``: the grid
    of text_to_image with both, byte for byte."""
    from diffkit.cli import main
    from diffkit.images import save_grid
    from diffkit.interop.controlnet import ControlNets, load_model_folder
    from test_flux_controlnet import tiny_flux_controlnet
    from test_sd3_controlnet import control_image_files, tiny_sd3_controlnet
    monkeypatch.setattr(flux_module, "DEFAULT_SAMPLE_SIZE", 8)
    if kind == "sd3":
        _, model, root, png = sd3_ip
        folder, weight, module, net_class = root / "sd3", "ip.safetensors", sd3_module, "SD3ControlNetModel"
        tiny_sd3_controlnet(3, force_zeros_for_pooled_projection=False).save_pretrained(tmp_path / "cn")
        adapter = load_sd3_ip_adapter(root / weight, png, 0.7, progress=False)
    else:
        _, model, root, png, _ = flux_ip
        folder, weight, module, net_class = root / "flux", "xlabs.safetensors", flux_module, "FluxControlNetModel"
        tiny_flux_controlnet(3).save_pretrained(tmp_path / "cn")
        adapter = load_flux_ip_adapter(root / weight, png, 0.7, progress=False)
    image = control_image_files(tmp_path)[1]
    out = tmp_path / "g.png"
    assert main(["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--num", "1", "--steps", "2",
                 "--seed", "5", "--no-progress", "--ip-adapter", f"{root / weight}:0.7", "--ip-adapter-image",
                 str(png), "--image-encoder", str(root / "image_encoder"), "--controlnet", str(tmp_path / "cn"),
                 "--control-image", str(image), "--out", str(out)]) == 0
    control = ControlNets([load_model_folder(net_class, tmp_path / "cn", progress=False)], [image])
    images = module.text_to_image(model, [PROMPTS[0]], steps=2, seed=5, output_range="-1,1", ip_adapter=adapter,
                                  controlnet=control, control_seed=5)
    save_grid(images, tmp_path / "expected.png", 8)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()


def test_edit_command_with_an_sd3_inpainting_controlnet_and_an_ip_adapter(sd3_ip, tmp_path):
    """``diffkit edit --mask M --controlnet DIR --ip-adapter FILE:S --ip-adapter-image PNG`` on an SD3 folder:
    text_to_image(control_mask=, ip_adapter=)'s PNGs byte for byte."""
    from PIL import Image
    from diffkit.cli import main
    from diffkit.images import save_images
    from diffkit.interop.controlnet import ControlNets, load_model_folder
    from test_sd3_controlnet import tiny_sd3_controlnet
    _, sd3, root, png = sd3_ip
    tiny_sd3_controlnet(9, extra_conditioning_channels=1, force_zeros_for_pooled_projection=False).save_pretrained(
        tmp_path / "cn")
    images = _pngs(tmp_path / "in")
    Image.fromarray((_mask()[0, 0].numpy() * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    assert main(["edit", "--checkpoint", str(root / "sd3"), "--images", str(images), "--prompt", PROMPTS[0],
                 "--no-progress", "--seed", "5", "--steps", "3", "--max-sequence-length", "12", "--controlnet",
                 str(tmp_path / "cn"), "--mask", str(tmp_path / "mask.png"), "--ip-adapter",
                 f"{root / 'ip.safetensors'}:0.7", "--ip-adapter-image", str(png), "--out", str(tmp_path / "out")]) == 0
    files = [str(images / f"{i}.png") for i in range(2)]
    ours = sd3_module.text_to_image(
        sd3, [PROMPTS[0]] * 2, steps=3, seed=5, output_range="-1,1", max_sequence_length=12, height=16, width=16,
        controlnet=ControlNets([load_model_folder("SD3ControlNetModel", tmp_path / "cn", progress=False)], [files]),
        control_seed=5, control_mask=_mask()[:1], ip_adapter=load_sd3_ip_adapter(root / "ip.safetensors", png, 0.7,
                                                                                  progress=False))
    save_images(ours, tmp_path / "expected", prefix="edit")
    for i in range(2):
        assert (tmp_path / "out" / f"edit_0000{i}.png").read_bytes() == \
            (tmp_path / "expected" / f"edit_0000{i}.png").read_bytes()
