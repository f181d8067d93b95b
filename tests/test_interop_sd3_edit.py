"""SD3 folders in img2img and with LoRA files (diffkit.interop.sd3, .sd_lora): against diffusers'
StableDiffusion3Img2ImgPipeline and SD3LoraLoaderMixin.load_lora_weights + fuse_lora on the tiny folder of
test_interop_sd3 (its fixture, imported)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.interop.sd3 import image_to_image  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd3 import PROMPTS, tiny_sd3  # noqa: E402,F401 (the fixture)


def _images(seed=3):
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))  # [0, 1]


def _img2img(pipe):
    out = diffusers.StableDiffusion3Img2ImgPipeline(**pipe.components)
    out.set_progress_bar_config(disable=True)
    return out


@pytest.mark.parametrize("steps, strength", [(4, 0.6), (5, 0.5), (3, 1.0)])
def test_sd3_img2img_matches_the_pipeline(tiny_sd3, steps, strength):
    """Same z_0 and images as StableDiffusion3Img2ImgPipeline: the posterior sample and the noise from image i's
    generator seed + i, scale_noise at the first sigma of get_timesteps' cut (steps - int(steps - steps * strength)
    steps: 3 of 4 at 0.6, 3 of 5 at 0.5), FlowMatchEuler from there, guidance s = 4 against a negative prompt."""
    pipe, _, sd3 = tiny_sd3[True]
    images = _images()
    kw = {"negative_prompt": "ugly", "max_sequence_length": 12}
    with torch.no_grad():
        theirs = _img2img(pipe)(PROMPTS, image=images, strength=strength, num_inference_steps=steps,
                                guidance_scale=4.0, output_type="latent",
                                generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], **kw).images
    ours = image_to_image(sd3, images * 2 - 1, PROMPTS, strength, steps=steps, guidance_scale=4.0, seed=5,
                          return_latents=True, **kw)
    error = relative_error(ours, theirs)
    print("img2img", steps, strength, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)
