"""Perturbed-attention guidance in img2img and inpainting of Stable Diffusion / SD-XL folders (``pag_request``'s
wrapper over the folder's guided denoiser, ``diffkit edit --pag-scale``) against diffusers'
StableDiffusionPAGImg2ImgPipeline, StableDiffusionPAGInpaintPipeline, StableDiffusionXLPAGImg2ImgPipeline and
StableDiffusionXLPAGInpaintPipeline on the tiny random folders of test_latent_editing, test_sd_inpaint,
test_interop_sd_xl and test_sd_xl_inpaint (4- and 9-channel UNets), CFG on and off."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.sd_pag import pag_request  # noqa: E402
from diffkit.latent_editing import latent_img2img, latent_inpaint  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
from test_latent_editing import DDIM_GRID, PROMPTS, _generators, cli, write_pngs  # noqa: E402
from test_sd_pag_adapters import _pag  # noqa: E402
import test_interop_sd_xl  # noqa: E402
import test_latent_editing  # noqa: E402
import test_sd_inpaint  # noqa: E402
import test_sd_xl_inpaint  # noqa: E402

tiny_sd = test_latent_editing.tiny_sd  # the fixtures, shared
inpaint_sd = test_sd_inpaint.inpaint_sd
tiny_xl = test_interop_sd_xl.tiny_xl
xl_inpaint = test_sd_xl_inpaint.xl_inpaint

IMAGE, MASK = test_sd_xl_inpaint.IMAGE, test_sd_xl_inpaint.MASK  # 16 x 24, soft edges binarised by both
STEPS = 4


def _folder(kind, tiny_sd, inpaint_sd, tiny_xl, xl_inpaint):
    """(components, loaded folder, xl) of the fixture ``kind``: sd, sd9 (9-channel UNet), xl, xl9."""
    if kind == "sd":
        return tiny_sd[0].components, tiny_sd[2], False
    if kind == "sd9":
        return inpaint_sd[0].components, inpaint_sd[1], False
    if kind == "xl":
        pipe, _, xl = tiny_xl
        return dict(pipe.components, scheduler=diffusers.DDIMScheduler.from_config(pipe.scheduler.config)), xl, True
    return xl_inpaint[0].components, xl_inpaint[2], True


def _guided(sd, xl, scale):
    """(the folder's guided denoiser, cond) for PROMPTS, as diffkit edit builds them."""
    if xl:
        return sd.prompt_guidance(PROMPTS, None, scale, "diffusers", 0.0, image_size=tuple(IMAGE.shape[2:]))
    return sd.guided(scale, sd.encode_prompts([""]), "diffusers"), sd.cond(sd.encode_prompts(PROMPTS))


@pytest.mark.parametrize("kind, mask, scale, strength, layers, adaptive", [
    ("sd", False, 5.0, 0.5, "mid", 0.0),  # img2img, CFG + PAG: 3 halves
    ("sd", False, 1.0, 0.75, "up_blocks.1", 0.002),  # PAG alone: 2 halves
    ("sd", True, 5.0, 0.75, "mid", 0.002),  # 4-channel inpainting: the kept latents re-noised (replacement)
    ("sd", True, 1.0, 1.0, "mid", 0.0),
    ("sd9", True, 5.0, 1.0, "down_blocks.0", 0.0),  # 9-channel: mask and masked-image latents on 3 halves
    ("sd9", True, 1.0, 0.6, "mid", 0.002),
    ("xl", False, 5.0, 0.5, "mid", 0.002),
    ("xl", False, 1.0, 0.75, "up_blocks.0", 0.0),
    ("xl", True, 5.0, 0.75, "mid", 0.0),
    ("xl9", True, 5.0, 1.0, "mid", 0.002),
    ("xl9", True, 1.0, 0.6, "mid", 0.0),
])
def test_pag_img2img_and_inpainting_match_the_pag_pipelines(tiny_sd, inpaint_sd, tiny_xl, xl_inpaint, kind, mask,
                                                            scale, strength, layers, adaptive):
    components, sd, xl = _folder(kind, tiny_sd, inpaint_sd, tiny_xl, xl_inpaint)
    cls = {(False, False): diffusers.StableDiffusionPAGImg2ImgPipeline,
           (False, True): diffusers.StableDiffusionPAGInpaintPipeline,
           (True, False): diffusers.StableDiffusionXLPAGImg2ImgPipeline,
           (True, True): diffusers.StableDiffusionXLPAGInpaintPipeline}[xl, mask]
    pipe = _pag(cls, components, layers, xl)
    masked = {"mask_image": MASK} if mask else {}
    size = {"height": IMAGE.shape[2], "width": IMAGE.shape[3]} if mask else {}
    with torch.no_grad():
        theirs = pipe(PROMPTS, image=IMAGE, strength=strength, num_inference_steps=STEPS, guidance_scale=scale,
                      eta=0.0, pag_scale=3.0, pag_adaptive_scale=adaptive, output_type="latent",
                      generator=_generators(), **masked, **size).images
    guided, cond = _guided(sd, xl, scale)
    perturbed = pag_request(sd, 3.0, layers, adaptive)(guided)
    edit, args = (latent_inpaint, (MASK,)) if mask else (latent_img2img, (strength,))
    run = dict(posterior="sample", seed=10, cond=cond, progress=False, return_latents=True, **DDIM_GRID,
               **({"strength": strength} if mask else {}))
    ours = edit(perturbed, sd, IMAGE * 2 - 1, *args, "ddim", STEPS, **run)
    plain = edit(guided, sd, IMAGE * 2 - 1, *args, "ddim", STEPS, **run)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    assert relative_error(plain, theirs) > 1e-3  # PAG mattered
