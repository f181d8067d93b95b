"""Perturbed-attention guidance in img2img and inpainting of Stable Diffusion / SD-XL folders (``pag_request``'s
wrapper over the folder's guided denoiser, ``diffkit edit --pag-scale``) against diffusers'
StableDiffusionPAGImg2ImgPipeline, StableDiffusionPAGInpaintPipeline, StableDiffusionXLPAGImg2ImgPipeline and
StableDiffusionXLPAGInpaintPipeline on the tiny random folders of test_latent_editing, test_sd_inpaint,
test_interop_sd_xl and test_sd_xl_inpaint (4- and 9-channel UNets), CFG on and off."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.interop.sd_pag import pag_request  # noqa: E402
from diffkit.latent_editing import latent_img2img, latent_inpaint  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
from test_latent_editing import DDIM_GRID, PROMPTS, _generators, cli  # noqa: E402
from test_sd_pag_adapters import _pag  # noqa: E402
import test_sd_pag_adapters  # noqa: E402
import test_interop_sd_xl  # noqa: E402
import test_latent_editing  # noqa: E402
import test_sd_inpaint  # noqa: E402
import test_sd_xl_inpaint  # noqa: E402

tiny_sd = test_latent_editing.tiny_sd  # the fixtures, shared
inpaint_sd = test_sd_inpaint.inpaint_sd
tiny_xl = test_interop_sd_xl.tiny_xl
xl_inpaint = test_sd_xl_inpaint.xl_inpaint
tiny_controlnet_sd = test_sd_pag_adapters.tiny_controlnet_sd
tiny_xl_controlnet = test_sd_pag_adapters.tiny_xl_controlnet
tiny_ip = test_sd_pag_adapters.tiny_ip

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


@pytest.mark.parametrize("xl, mask, scale", [(False, False, 5.0), (False, True, 1.0), (True, False, 1.0),
                                             (True, True, 5.0)])
def test_edit_command_with_pag_is_the_library_byte_for_byte(tiny_sd, tiny_xl, tmp_path, capsys, xl, mask, scale):
    """``diffkit edit --pag-scale --pag-layers --pag-adaptive-scale`` (img2img, --mask): each PNG is the library's
    (pag_request's wrapper over the folder's guided denoiser, image i from seed + i alone in its batch, as the
    command's --batch-size 1), written by the same writer."""
    from diffkit.images import save_images
    from test_sd_inpaint import _pngs
    from test_sd_xl_inpaint import _png_tensor
    folder, sd = (tiny_xl[1] / "xl", tiny_xl[2]) if xl else (tiny_sd[3], tiny_sd[2])
    pngs, mask_png, pixel_mask = _pngs(tmp_path)
    code, out, err = cli(capsys, "--checkpoint", folder, "--images", pngs, "--prompt", "a cat", "--steps", 3,
                         "--seed", 4, "--batch-size", 1, "--guidance-scale", scale,
                         "--guidance-convention", "diffusers",
                         "--pag-scale", 2.5, "--pag-layers", "mid", "--pag-adaptive-scale", 0.001,
                         *(["--mask", mask_png] if mask else []), "--out", tmp_path / "out")
    assert code == 0, err
    assert "perturbed-attention guidance s=2.5 at mid, adaptive a=0.001" in out
    if xl:
        guided, cond = sd.prompt_guidance(["a cat"], None, scale, "diffusers", 0.0, image_size=(16, 16))
    else:
        guided, cond = sd.guided(scale, sd.encode_prompts([""]), "diffusers"), sd.cond(sd.encode_prompts(["a cat"]))
    perturbed = pag_request(sd, 2.5, ["mid"], 0.001)(guided)
    edit, args = (latent_inpaint, (pixel_mask,)) if mask else (latent_img2img, (0.8,))
    images = [edit(perturbed, sd, _png_tensor(pngs / f"in_{i}.png"), *args, "ddim", 3, posterior="sample",
                   seed=4 + i, cond=cond, progress=False).clamp(-1, 1) for i in range(2)]
    save_images(torch.cat(images), tmp_path / "library", prefix="edit")
    for i in range(2):
        name = f"edit_{i:05d}.png"
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "library" / name).read_bytes(), name


@pytest.mark.parametrize("xl, mask", [(False, False), (True, True)])
def test_edit_command_pag_interval_is_the_librarys(tiny_sd, tiny_xl, tmp_path, capsys, xl, mask):
    """``diffkit edit --pag-scale 2.5 --pag-interval 200 999`` (as diffkit sample's): each PNG is the library's
    pag_request(..., interval=(200, 999)) wrapper byte for byte; the interval holds some of the edit's steps, not all
    (the PNGs differ from PAG at every step and from no PAG)."""
    from diffkit.images import save_images
    from test_sd_inpaint import _pngs
    from test_sd_xl_inpaint import _png_tensor
    folder, sd = (tiny_xl[1] / "xl", tiny_xl[2]) if xl else (tiny_sd[3], tiny_sd[2])
    pngs, mask_png, pixel_mask = _pngs(tmp_path)
    code, out, err = cli(capsys, "--checkpoint", folder, "--images", pngs, "--prompt", "a cat", "--steps", 3,
                         "--seed", 4, "--batch-size", 1, "--guidance-scale", 5, "--guidance-convention", "diffusers",
                         "--pag-scale", 2.5, "--pag-interval", 200, 999, *(["--mask", mask_png] if mask else []),
                         "--out", tmp_path / "out")
    assert code == 0, err
    assert "perturbed-attention guidance s=2.5 at mid for 200 <= t <= 999" in out
    if xl:
        guided, cond = sd.prompt_guidance(["a cat"], None, 5.0, "diffusers", 0.0, image_size=(16, 16))
    else:
        guided, cond = sd.guided(5.0, sd.encode_prompts([""]), "diffusers"), sd.cond(sd.encode_prompts(["a cat"]))
    edit, args = (latent_inpaint, (pixel_mask,)) if mask else (latent_img2img, (0.8,))
    for name, denoiser, count in (("library", pag_request(sd, 2.5, None, None, (200, 999))(guided), 2),
                                  ("every_step", pag_request(sd, 2.5)(guided), 1), ("plain", guided, 1)):
        images = [edit(denoiser, sd, _png_tensor(pngs / f"in_{i}.png"), *args, "ddim", 3, posterior="sample",
                       seed=4 + i, cond=cond, progress=False).clamp(-1, 1) for i in range(count)]
        save_images(torch.cat(images), tmp_path / name, prefix="edit")
    for i in range(2):
        assert (tmp_path / "out" / f"edit_{i:05d}.png").read_bytes() == \
            (tmp_path / "library" / f"edit_{i:05d}.png").read_bytes()
    ours = (tmp_path / "out" / "edit_00000.png").read_bytes()
    assert ours != (tmp_path / "every_step" / "edit_00000.png").read_bytes()
    assert ours != (tmp_path / "plain" / "edit_00000.png").read_bytes()


def test_edit_command_pag_refusals_are_one_line_before_any_output(tiny_sd, tmp_path, capsys):
    from test_sd_inpaint import _pngs
    folder = tiny_sd[3]
    pngs, _, _ = _pngs(tmp_path)
    base = ["--images", pngs, "--steps", 2]
    for checkpoint, extra, pattern in [
        (pngs / "in_0.png", ["--pag-scale", 2], "--pag-scale in diffkit edit applies to a Stable Diffusion / SD-XL "
                                                "base folder"),
        (folder, ["--prompt", "a", "--pag-layers", "mid"], "--pag-layers needs --pag-scale S"),
        (folder, ["--prompt", "a", "--pag-interval", 0, 500], "--pag-interval needs --pag-scale S"),
        (folder, ["--prompt", "a", "--pag-scale", 2, "--pag-interval", 500, 0],
         "--pag-interval=(500.0, 0.0) must be (t_lo, t_hi) with t_lo <= t_hi"),
        (folder, ["--prompt", "a", "--pag-scale", 2, "--pag-interval", "nan", 500],
         "--pag-interval=(nan, 500.0) must be (t_lo, t_hi) with t_lo <= t_hi, both finite numbers"),
        (tiny_sd[3], ["--prompt", "a", "--pag-scale", 2, "--pag-interval", 0, 5000], "perturbed-attention guidance "
                                                                                      "interval"),
        (folder, ["--prompt", "a", "--pag-scale", -1], "--pag-scale"),
        (folder, ["--prompt", "a", "--pag-scale", 2, "--pag-layers", "down.0"], "is a diffkit U-Net layer name"),
        (folder, ["--prompt", "a", "--pag-scale", 2, "--pag-layers", "down_blocks.9"],
         "pag layer 'down_blocks.9' matches no self-attention layer"),
        (folder, ["--prompt", "a", "--pag-scale", 2, "--scheduler", "tcd"], "LCMScheduler / TCD"),
        (folder, ["--prompt", "a", "--pag-scale", 2, "--controlnet", folder, "--control-image", pngs / "in_0.png"],
         "--pag-scale with --controlnet is offered for inpainting (--mask) on this Stable Diffusion folder"),
    ]:
        target = tmp_path / "never"
        code, out, err = cli(capsys, "--checkpoint", checkpoint, *base, *extra, "--out", target)
        assert code != 0 and pattern in err and len(err.strip().splitlines()) == 1 and not target.exists(), err


def test_edit_command_pag_scale_zero_is_bit_identical(tiny_sd, tmp_path, capsys):
    from test_sd_inpaint import _pngs
    pngs, _, _ = _pngs(tmp_path)
    for name, extra in (("plain", []), ("zero", ["--pag-scale", 0])):
        code, out, err = cli(capsys, "--checkpoint", tiny_sd[3], "--images", pngs, "--prompt", "a cat", "--steps", 2,
                             *extra, "--out", tmp_path / name)
        assert code == 0, err
    for i in range(2):
        name = f"edit_{i:05d}.png"
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "zero" / name).read_bytes()


@pytest.mark.parametrize("xl, scale", [(False, 5.0), (False, 1.0), (True, 5.0), (True, 1.0)])
def test_pag_controlnet_inpainting_and_sd_xl_img2img_match_the_pag_pipelines(tiny_controlnet_sd, tiny_xl_controlnet,
                                                                             xl, scale):
    """The two ControlNet edits diffusers has a PAG pipeline for: StableDiffusionControlNetPAGInpaintPipeline (SD,
    4-channel UNet) and StableDiffusionXLControlNetPAGImg2ImgPipeline; a window over the strength's steps."""
    from PIL import Image
    from diffkit.interop.controlnet import ControlNets, editing_grid
    if xl:
        base, nets, sd, _, pngs = tiny_xl_controlnet
        png, image, strength = pngs[0], torch.rand(2, 3, 12, 20, generator=torch.Generator().manual_seed(3)), 0.5
        cls, args = diffusers.StableDiffusionXLControlNetPAGImg2ImgPipeline, (strength,)
    else:
        base, nets, sd, _, png = tiny_controlnet_sd
        image, strength = IMAGE[..., :16], 0.75
        cls, args = diffusers.StableDiffusionControlNetPAGInpaintPipeline, (MASK[..., :16],)
    pipe = _pag(cls, dict(base.components, controlnet=nets[0]), "mid", xl)
    with torch.no_grad():
        theirs = pipe(PROMPTS, image=image, control_image=Image.open(png).convert("RGB"), strength=strength,
                      num_inference_steps=STEPS, guidance_scale=scale, eta=0.0, output_type="latent",
                      controlnet_conditioning_scale=0.7, control_guidance_start=0.25, pag_scale=3.0,
                      pag_adaptive_scale=0.002, generator=_generators(),
                      **({} if xl else {"mask_image": MASK[..., :16]})).images
    grid = editing_grid(sd, "ddim", STEPS, strength, dict(DDIM_GRID))
    control = ControlNets(nets[:1], [png], 0.7, 0.25)
    controlled = control.controlling(sd, *image.shape[2:], grid)
    if xl:
        guided, cond = controlled.prompt_guidance(PROMPTS, None, scale, "diffusers", 0.0,
                                                  image_size=tuple(image.shape[2:]))
    else:
        guided = controlled.guided(scale, sd.encode_prompts([""]), "diffusers")
        cond = sd.cond(sd.encode_prompts(PROMPTS))
    edit = latent_img2img if xl else latent_inpaint
    ours = edit(pag_request(controlled, 3.0, "mid", 0.002, None, control)(guided), controlled, image * 2 - 1, *args,
                "ddim", STEPS, posterior="sample", seed=10, cond=cond, progress=False, return_latents=True,
                **DDIM_GRID, **({} if xl else {"strength": strength}))
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)


@pytest.mark.parametrize("scale", [5.0, 1.0])
def test_pag_img2img_with_ip_adapter_matches_the_pag_img2img_pipeline(tiny_ip, scale):
    from PIL import Image
    from diffkit.interop.ip_adapter import load_ip_adapter
    base, sd, root, png = tiny_ip
    pipe = _pag(diffusers.StableDiffusionPAGImg2ImgPipeline, base.components, "mid", False)
    image = IMAGE[:1, :, :, :16]
    pipe.load_ip_adapter(str(root), subfolder="", weight_name="ip.safetensors", local_files_only=True)
    try:
        pipe.set_ip_adapter_scale(0.7)
        with torch.no_grad():
            theirs = pipe(PROMPTS[:1], image=image, strength=0.75, num_inference_steps=STEPS, guidance_scale=scale,
                          eta=0.0, pag_scale=3.0, output_type="latent", generator=_generators()[:1],
                          ip_adapter_image=Image.open(png).convert("RGB")).images
    finally:
        pipe.unload_ip_adapter()
    adapted = load_ip_adapter(root / "ip.safetensors", png, 0.7, progress=False).adapting(sd)
    guided = adapted.guided(scale, sd.encode_prompts([""]), "diffusers")
    ours = latent_img2img(pag_request(adapted, 3.0)(guided), adapted, image * 2 - 1, 0.75, "ddim", STEPS,
                          posterior="sample", seed=10, cond=sd.cond(sd.encode_prompts(PROMPTS[:1])), progress=False,
                          return_latents=True, **DDIM_GRID)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)


def test_edit_command_with_pag_and_a_controlnet_is_the_library_byte_for_byte(tiny_controlnet_sd, tmp_path, capsys):
    """``diffkit edit --mask --controlnet --pag-scale`` (StableDiffusionControlNetPAGInpaintPipeline's case, above):
    each PNG is the library's, image i from seed + i alone in its batch."""
    from diffkit.images import save_images
    from diffkit.interop.controlnet import ControlNets
    from test_sd_inpaint import _pngs
    from test_sd_xl_inpaint import _png_tensor
    _, nets, sd, root, png = tiny_controlnet_sd
    pngs, mask_png, pixel_mask = _pngs(tmp_path)
    code, out, err = cli(capsys, "--checkpoint", root / "sd", "--images", pngs, "--prompt", "a cat", "--steps", 3,
                         "--seed", 4, "--batch-size", 1, "--guidance-scale", 5, "--guidance-convention", "diffusers",
                         "--mask", mask_png, "--controlnet", root / "cn0", "--control-image", png,
                         "--pag-scale", 2.5, "--out", tmp_path / "out")
    assert code == 0, err
    control = ControlNets(nets[:1], [png])
    controlled = control.controlling(sd, 16, 16)
    guided = controlled.guided(5.0, sd.encode_prompts([""]), "diffusers")
    perturbed = pag_request(controlled, 2.5, None, None, None, control)(guided)
    images = [latent_inpaint(perturbed, controlled, _png_tensor(pngs / f"in_{i}.png"), pixel_mask, "ddim", 3,
                             posterior="sample", seed=4 + i, cond=sd.cond(sd.encode_prompts(["a cat"])),
                             progress=False).clamp(-1, 1) for i in range(2)]
    save_images(torch.cat(images), tmp_path / "library", prefix="edit")
    for i in range(2):
        name = f"edit_{i:05d}.png"
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "library" / name).read_bytes(), name
