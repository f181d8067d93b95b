"""IP-Adapters in img2img / inpainting of SD3 and FLUX.1 folders (``sd3.image_to_image(ip_adapter=)``,
``flux.image_to_image(ip_adapter=)``, ``diffkit edit --ip-adapter``) against diffusers' StableDiffusion3Img2ImgPipeline /
StableDiffusion3InpaintPipeline / FluxImg2ImgPipeline / FluxInpaintPipeline with ``load_ip_adapter`` +
``set_ip_adapter_scale`` + ``ip_adapter_image``, on the tiny random folders and adapters of test_sd3_ip_adapter.py /
test_flux_ip_adapter.py (their fixtures, imported)."""
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
