"""Two combinations against diffusers 0.42.1: several IP-Adapters in ``diffkit edit`` on an SD-XL folder
(StableDiffusionXLImg2ImgPipeline with ``load_ip_adapter`` lists + ``set_ip_adapter_scale([...])``, compared on the
PNGs), and an SD-XL ControlNet-Union with an IP-Adapter (StableDiffusionXLControlNetUnionPipeline with
``load_ip_adapter`` + ``ip_adapter_image``, compared on the final latents). The tiny folders, adapters and helpers
are those of test_ip_adapter_sd_xl, test_ip_adapter_multi and test_controlnet_union."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.interop.controlnet import ControlNets  # noqa: E402
from diffkit.interop.ip_adapter import load_ip_adapter  # noqa: E402
from diffkit.interop.stable_diffusion import text_to_image  # noqa: E402

import test_controlnet_union  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_ip_adapter import image_png, ip_adapter_state, save_ip_adapter, tiny_image_encoder  # noqa: E402
from test_interop_sd_xl import PROMPTS  # noqa: E402

tiny_union = test_controlnet_union.tiny_union  # the fixture (a tiny SD-XL folder and union ControlNets), shared


@pytest.fixture(scope="module")
def union_ip(tiny_union):
    """(tiny_union, an image prompt): its root gets an image encoder, a basic (ip.safetensors) and a Plus (plus.bin)
    adapter for its UNet."""
    pipe, nets, xl, root, pngs = tiny_union
    encoder = tiny_image_encoder(root / "image_encoder")
    save_ip_adapter(ip_adapter_state(pipe.unet, encoder), root / "ip.safetensors")
    save_ip_adapter(ip_adapter_state(pipe.unet, encoder, "ip-adapter-plus", seed=1), root / "plus.bin")
    return tiny_union, image_png(root / "image.png", width=26)


def test_edit_command_with_two_ip_adapters_on_sd_xl_is_the_img2img_pipeline(union_ip, tmp_path, capsys):
    """``diffkit edit --checkpoint SDXL --ip-adapter PLUS:0.7 --ip-adapter-image A --ip-adapter BASIC:0.5
    --ip-adapter-image B``: StableDiffusionXLImg2ImgPipeline (requires_aesthetics_score False) with both adapters
    loaded (lists), to one 8-bit level; the second adapter changes the edit."""
    from PIL import Image
    (pipe, nets, xl, root, _), png = union_ip
    other = image_png(tmp_path / "other.png", seed=9)
    (tmp_path / "in").mkdir()
    pngs = image_png(tmp_path / "in" / "in_0.png", 16, seed=5).parent
    flags = ["edit", "--no-progress", "--checkpoint", root / "xl", "--images", pngs, "--prompt", "hot", "--strength",
             "0.5", "--steps", "4", "--spacing", "leading", "--final", "zero", "--seed", "10",
             "--ip-adapter", f"{root / 'plus.bin'}:0.7", "--ip-adapter-image", png]
    assert main([str(a) for a in flags + ["--ip-adapter", f"{root / 'ip.safetensors'}:0.5", "--ip-adapter-image",
                                          other, "--out", tmp_path / "two"]]) == 0
    assert main([str(a) for a in flags + ["--out", tmp_path / "one"]]) == 0
    capsys.readouterr()
    scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, steps_offset=0, set_alpha_to_one=True)
    parts = {k: v for k, v in pipe.components.items() if k != "controlnet"}
    img2img = diffusers.StableDiffusionXLImg2ImgPipeline(**{**parts, "scheduler": scheduler},
                                                         requires_aesthetics_score=False, add_watermarker=False)
    img2img.set_progress_bar_config(disable=True)
    image = torch.from_numpy(np.array(Image.open(pngs / "in_0.png"))).permute(2, 0, 1)[None].float() / 255
    img2img.load_ip_adapter([str(root)] * 2, subfolder=["", ""], weight_name=["plus.bin", "ip.safetensors"],
                            local_files_only=True)
    try:
        img2img.set_ip_adapter_scale([0.7, 0.5])
        with torch.no_grad():
            theirs = img2img(["hot"], image=image, strength=0.5, num_inference_steps=4, guidance_scale=5.0,
                             ip_adapter_image=[Image.open(p).convert("RGB") for p in (png, other)], output_type="np",
                             generator=[torch.Generator().manual_seed(10)]).images
    finally:
        img2img.unload_ip_adapter()
    theirs = np.round(theirs * 255).astype(int)

    def ours(folder):
        return np.asarray(Image.open(tmp_path / folder / "edit_00000.png"))[None].astype(int)
    assert np.abs(ours("two") - theirs).max() <= 1, np.abs(ours("two") - theirs).max()
    assert np.abs(ours("one") - theirs).max() > 8  # the second adapter acts


@pytest.mark.parametrize("weight, scale, modes, union_scale", [
    ("ip.safetensors", 0.8, ["depth"], 0.7), ("plus.bin", 0.6, ["canny", "openpose"], [1.0, 0.5])])
def test_controlnet_union_with_an_ip_adapter_matches_the_pipeline(union_ip, weight, scale, modes, union_scale):
    """A ControlNet-Union (one or two control images, a mode each) and an IP-Adapter (basic / Plus): the ControlNet
    sees text_embeds and time_ids, the UNet those and the image embeds; StableDiffusionXLControlNetUnionPipeline with
    the adapter loaded (CFG s = 5, DDIM), final latents."""
    from diffkit.interop.controlnet_union import control_mode_index
    (pipe, nets, xl, root, pngs), png = union_ip
    latents = test_controlnet_union._latents()
    pngs = pngs[:len(modes)]
    pipe.load_ip_adapter(str(root), subfolder="", weight_name=weight, local_files_only=True)
    try:
        pipe.set_ip_adapter_scale(scale)
        from PIL import Image
        theirs = test_controlnet_union._theirs(pipe, nets[:1], pngs, [control_mode_index(m) for m in modes], latents,
                                               ip_adapter_image=Image.open(png).convert("RGB"),
                                               controlnet_conditioning_scale=union_scale)
    finally:
        pipe.unload_ip_adapter()
    adapter = load_ip_adapter(root / weight, png, scale, progress=False)

    def ours(ip_adapter):
        return text_to_image(xl, PROMPTS, sampler="ddim", steps=test_controlnet_union.STEPS, grid="scheduler",
                             guidance_scale=test_controlnet_union.SCALE, latents=latents, eta=0.0,
                             return_latents=True, ip_adapter=ip_adapter,
                             controlnet=ControlNets(nets[:1], pngs, union_scale, modes=modes))
    assert relative_error(ours(adapter), theirs) < 1e-5, relative_error(ours(adapter), theirs)
    assert relative_error(ours(None), theirs) > 1e-3  # the image prompt acts


def test_sample_command_with_a_controlnet_union_and_an_ip_adapter_is_text_to_image(union_ip, tmp_path, capsys):
    """``diffkit sample --controlnet UNION --control-image A --control-mode depth --ip-adapter FILE:0.8
    --ip-adapter-image PNG``: the PNGs of text_to_image with the same union ControlNet and adapter, byte for byte
    (the library side is the pipeline's, above)."""
    from diffkit.images import save_images
    (pipe, nets, xl, root, pngs), png = union_ip
    assert main([str(a) for a in (
        "sample", "--checkpoint", root / "xl", "--prompt", "hot", "--num", "2", "--steps", "2", "--seed", "5",
        "--controlnet", root / "un0", "--control-image", pngs[0], "--control-mode", "depth", "--controlnet-scale",
        "0.8", "--ip-adapter", f"{root / 'ip.safetensors'}:0.8", "--ip-adapter-image", png,
        "--out", tmp_path / "grid.png", "--individual", tmp_path / "each", "--no-progress")]) == 0
    capsys.readouterr()
    images = text_to_image(xl, ["hot", "hot"], steps=2, seed=5, output_range="-1,1",
                           controlnet=ControlNets(nets[:1], pngs[:1], scales=0.8, modes=["depth"]),
                           ip_adapter=load_ip_adapter(root / "ip.safetensors", png, 0.8, progress=False))
    save_images(images, tmp_path / "lib")
    files = sorted(p.name for p in (tmp_path / "each").glob("*.png"))
    assert len(files) == 2 and files == sorted(p.name for p in (tmp_path / "lib").glob("*.png"))
    assert all((tmp_path / "each" / f).read_bytes() == (tmp_path / "lib" / f).read_bytes() for f in files)


def _union_edit_pipeline(pipe, net, inpaint: bool, scheduler=None):
    """StableDiffusionXLControlNetUnion(Img2Img|Inpaint)Pipeline on ``pipe``'s components with ``net``
    (requires_aesthetics_score False), ``scheduler`` (default: the folder's) in place."""
    cls = (diffusers.StableDiffusionXLControlNetUnionInpaintPipeline if inpaint else
           diffusers.StableDiffusionXLControlNetUnionImg2ImgPipeline)
    parts = {**pipe.components, "controlnet": net, **({} if scheduler is None else {"scheduler": scheduler})}
    other = cls(**parts, requires_aesthetics_score=False, add_watermarker=False)
    other.set_progress_bar_config(disable=True)
    return other


def _union_edit(xl, nets, pngs, modes, image, mask, strength, sampler, steps, scale, adapter=None, **grid_options):
    """latent_img2img / latent_inpaint (``mask``) of ``image`` (B, 3, H, W) in [0, 1] with the union-controlled
    ``xl`` (adapted by ``adapter`` if given), as diffkit edit runs them (seed 10, posterior "sample")."""
    from diffkit.interop.lcm_edit import edit_hooks
    from diffkit.latent_editing import latent_img2img, latent_inpaint
    height, width = image.shape[2:]
    controlled = ControlNets(nets, pngs, modes=modes).controlling(xl, height, width)
    controlled = controlled if adapter is None else adapter.adapting(controlled)
    guided, cond = controlled.prompt_guidance(PROMPTS, None, scale, "diffusers", 0.0, image_size=(height, width))
    _, blend = edit_hooks(controlled, "leading")
    run = dict(posterior="sample", seed=10, cond=cond, progress=False, return_latents=True, **grid_options)
    if mask is None:
        return latent_img2img(guided, controlled, image * 2 - 1, strength, sampler, steps, **run)
    return latent_inpaint(guided, controlled, image * 2 - 1, mask, sampler, steps, strength=strength, **blend, **run)


def _edit_inputs():
    """(two 12x20 images in [0, 1], a 12x20 mask, 1 = repaint)."""
    image = torch.rand(2, 3, test_controlnet_union.HEIGHT, test_controlnet_union.WIDTH,
                       generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(2, 1, *image.shape[2:])
    mask[:, :, 2:10, 3:15] = 1
    return image, mask


@pytest.mark.parametrize("inpaint, weight, modes", [(False, "ip.safetensors", ["depth"]),
                                                    (True, "plus.bin", ["canny", "openpose"])])
def test_controlnet_union_edits_with_an_ip_adapter_match_the_pipelines(union_ip, inpaint, weight, modes):
    """An SD-XL ControlNet-Union edit (img2img; inpainting with ``--mask``, 4-channel UNet) with an IP-Adapter
    (basic / Plus, scale 0.7): StableDiffusionXLControlNetUnionImg2ImgPipeline / ...InpaintPipeline with
    ``load_ip_adapter`` + ``ip_adapter_image`` (DDIM on the folder's leading grid, CFG s = 5, strength 0.6), final
    latents; the adapter acts."""
    from PIL import Image

    from diffkit.interop.controlnet_union import control_mode_index
    (pipe, nets, xl, root, pngs), png = union_ip
    image, mask = _edit_inputs()
    other = _union_edit_pipeline(pipe, nets[0], inpaint)
    other.load_ip_adapter(str(root), subfolder="", weight_name=weight, local_files_only=True)
    other.set_ip_adapter_scale(0.7)
    with torch.no_grad():
        theirs = other(PROMPTS, image=image, control_image=[Image.open(p).convert("RGB") for p in pngs[:len(modes)]],
                       control_mode=[control_mode_index(m) for m in modes], controlnet_conditioning_scale=1.0,
                       strength=0.6, num_inference_steps=4,
                       guidance_scale=5.0, output_type="latent", ip_adapter_image=Image.open(png).convert("RGB"),
                       generator=[torch.Generator().manual_seed(s) for s in (10, 11)],
                       **({"mask_image": mask} if inpaint else {})).images
    other.unload_ip_adapter()
    adapter = load_ip_adapter(root / weight, png, 0.7, progress=False)
    grid = dict(spacing="leading", final="sigma_min", steps_offset=1, eta=0.0)

    def ours(ip_adapter):
        return _union_edit(xl, nets[:1], pngs[:len(modes)], modes, image, mask if inpaint else None, 0.6, "ddim", 4,
                           5.0, ip_adapter, **grid)
    assert relative_error(ours(adapter), theirs) < 1e-5, relative_error(ours(adapter), theirs)
    assert relative_error(ours(None), theirs) > 1e-3  # the image prompt acts


@pytest.mark.parametrize("edit, scale", [(None, 1.0), ("img2img", 1.5), ("inpaint", 1.0)])
def test_controlnet_union_with_lcm_matches_the_pipelines(union_ip, edit, scale):
    """``scheduler="lcm"`` (``--scheduler lcm``: the folder's scheduler as LCMScheduler.from_config) with an SD-XL
    ControlNet-Union: StableDiffusionXLControlNetUnionPipeline / ...Img2ImgPipeline / ...InpaintPipeline with that
    LCMScheduler (3 steps; edits: 3 of 4 at strength 0.75, the kept region renoised after each step; CFG s = 1.5 or
    none), the controlled UNet's output fed to the consistency function, the same per-sample step noise; final
    latents."""
    from PIL import Image

    from diffkit.interop.stable_diffusion import load_stable_diffusion
    from diffkit.noise import generators_from_seed
    (pipe, nets, _, root, pngs), _ = union_ip
    lcm = diffusers.LCMScheduler.from_config(pipe.scheduler.config)
    xl = load_stable_diffusion(root / "xl", scheduler="lcm", progress=False)
    control = dict(control_image=[Image.open(pngs[0]).convert("RGB")], control_mode=[1],
                   controlnet_conditioning_scale=1.0)  # the img2img pipeline's default is 0.8
    image, mask = _edit_inputs()
    if edit is None:
        other = type(pipe)(**{**pipe.components, "scheduler": lcm})
        other.set_progress_bar_config(disable=True)
        latents = test_controlnet_union._latents()
        with torch.no_grad():
            theirs = other(PROMPTS, guidance_scale=scale, num_inference_steps=3, latents=latents.clone(),
                           generator=generators_from_seed(4, 2), output_type="latent", **control).images
        ours = text_to_image(xl, PROMPTS, steps=3, guidance_scale=scale, latents=latents, seed=4, return_latents=True,
                             controlnet=ControlNets(nets[:1], pngs[:1], modes=["depth"]))
    else:
        other = _union_edit_pipeline(pipe, nets[0], edit == "inpaint", lcm)
        with torch.no_grad():
            theirs = other(PROMPTS, image=image, strength=0.75, num_inference_steps=4, guidance_scale=scale,
                           output_type="latent", generator=[torch.Generator().manual_seed(s) for s in (10, 11)],
                           **({"mask_image": mask} if edit == "inpaint" else {}), **control).images
        ours = _union_edit(xl, nets[:1], pngs[:1], ["depth"], image, mask if edit == "inpaint" else None, 0.75,
                           "consistency", 4, scale)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)


def test_edit_command_with_a_controlnet_union_and_an_ip_adapter_is_the_img2img_pipeline(union_ip, tmp_path, capsys):
    """``diffkit edit --controlnet UNION --control-image A --control-mode depth --ip-adapter FILE:0.7
    --ip-adapter-image PNG``: StableDiffusionXLControlNetUnionImg2ImgPipeline with the adapter loaded (DDIM on the
    grid of ``--spacing leading --final zero``, ``controlnet_conditioning_scale=1.0``), to one 8-bit level."""
    from PIL import Image
    (pipe, nets, xl, root, pngs), png = union_ip
    (tmp_path / "in").mkdir()
    inputs = image_png(tmp_path / "in" / "in_0.png", 12, seed=5, width=20).parent  # the control images' size
    assert main([str(a) for a in (
        "edit", "--no-progress", "--checkpoint", root / "xl", "--images", inputs, "--prompt", "hot", "--strength",
        "0.5", "--steps", "4", "--spacing", "leading", "--final", "zero", "--seed", "10", "--controlnet", root / "un0",
        "--control-image", pngs[0], "--control-mode", "depth", "--ip-adapter", f"{root / 'ip.safetensors'}:0.7",
        "--ip-adapter-image", png, "--out", tmp_path / "out")]) == 0
    capsys.readouterr()
    scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, steps_offset=0, set_alpha_to_one=True)
    other = _union_edit_pipeline(pipe, nets[0], False, scheduler)
    other.load_ip_adapter(str(root), subfolder="", weight_name="ip.safetensors", local_files_only=True)
    other.set_ip_adapter_scale(0.7)
    image = torch.from_numpy(np.array(Image.open(inputs / "in_0.png"))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        theirs = other(["hot"], image=image, control_image=[Image.open(pngs[0]).convert("RGB")], control_mode=[1],
                       controlnet_conditioning_scale=1.0, strength=0.5, num_inference_steps=4, guidance_scale=5.0,
                       ip_adapter_image=Image.open(png).convert("RGB"), output_type="np",
                       generator=[torch.Generator().manual_seed(10)]).images
    other.unload_ip_adapter()
    ours = np.asarray(Image.open(tmp_path / "out" / "edit_00000.png"))[None].astype(int)
    assert np.abs(ours - np.round(theirs * 255).astype(int)).max() <= 1, np.abs(ours - np.round(theirs * 255)).max()
