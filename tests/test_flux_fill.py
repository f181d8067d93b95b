"""FLUX.1 Fill folders (diffkit.interop.flux_channels; FluxFillPipeline): image_to_image(mask=) and `diffkit edit
--mask` against diffusers' own pipeline on a tiny random folder (the components of test_interop_flux's, with a
144-channel transformer: 4 x (16 latent + 16 masked-image latent + 2 x 2 mask channels), VAE factor f = 2)."""
import re

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.flux import image_to_image, load_flux, text_to_image, unpack_latents  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
import test_interop_flux  # noqa: E402

PROMPTS = test_interop_flux.PROMPTS
KW = {"max_sequence_length": 12}


def tiny_variant_folder(root, cls, in_channels: int):
    """A FLUX folder of pipeline class ``cls`` (FluxFillPipeline, FluxControlPipeline): test_interop_flux's tiny
    FLUX.1-dev components with a transformer of ``in_channels`` (out_channels 64), written by save_pretrained."""
    components = {key: value for key, value in test_interop_flux.tiny_flux_pipeline(root, True).components.items()
                  if key not in ("image_encoder", "feature_extractor")}
    torch.manual_seed(2)
    components["transformer"] = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=in_channels, out_channels=64, num_layers=1, num_single_layers=1,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(2, 2, 4))
    cls(**components).save_pretrained(root / "folder")
    pipe = cls.from_pretrained(root / "folder", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe, root / "folder", load_flux(root / "folder", progress=False)


@pytest.fixture(scope="module")
def tiny_fill(tmp_path_factory):
    """(FluxFillPipeline.from_pretrained, folder, load_flux of it)."""
    return tiny_variant_folder(tmp_path_factory.mktemp("flux_fill"), diffusers.FluxFillPipeline, 144)


def _images():
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))  # [0, 1]


def _mask():
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 3:10] = 1  # odd columns: cells half repainted
    return mask


@pytest.mark.parametrize("steps, strength, per_image", [(3, 1.0, False), (4, 0.6, True)])
def test_flux_fill_matches_the_pipeline(tiny_fill, steps, strength, per_image):
    """Same z_0 as FluxFillPipeline (its defaults: the embedded guidance 30): image i's generator seed + i draws the
    image's posterior (at strength 1 too), the noise, the masked image's posterior; the masked-image latents and the
    f x f mask channels concatenated after the packed latents at every step; strength 0.6 on get_timesteps' cut."""
    pipe, _, flux = tiny_fill
    images = _images()
    mask = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(4)) > 0.5).float() * 0.9 if per_image \
        else _mask()
    with torch.no_grad():
        theirs = pipe(PROMPTS, image=images, mask_image=mask, strength=strength, num_inference_steps=steps,
                      height=16, width=16, output_type="latent",
                      generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], **KW).images
    theirs = unpack_latents(theirs, 8, 8)
    ours = image_to_image(flux, images * 2 - 1, PROMPTS, None if strength == 1 else strength, mask=mask, steps=steps,
                          seed=5, return_latents=True, **KW)
    error = relative_error(ours, theirs)
    print("flux fill", steps, strength, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)
