"""More SD-XL base -> refiner hand-overs against diffusers' pipelines chained as its docs show (the base with
denoising_end=f and output_type="latent", then the plain refiner pipeline with denoising_start=f), on the tiny base,
refiner, ControlNet and IP-Adapter of test_refiner_combos (DDIM on the scheduler's 5 timesteps, f = 0.7):
a ControlNet or ControlNet-Union on the base's inpainting (StableDiffusionXLControlNet(Union)InpaintPipeline), a
ControlNet-Union on the base's text-to-image (StableDiffusionXLControlNetUnionPipeline), an IP-Adapter on the
base's img2img / inpainting (StableDiffusionXLImg2ImgPipeline / ...InpaintPipeline with load_ip_adapter), and
``diffkit edit --refiner --mask --controlnet --ip-adapter``. StableDiffusionXLControlNetImg2ImgPipeline takes no
denoising_end in diffusers 0.42.1, so ``edit --refiner --controlnet`` without --mask stays refused."""
import re

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from diffkit.interop.controlnet import ControlNets, editing_grid  # noqa: E402
from diffkit.interop.ip_adapter import load_ip_adapter  # noqa: E402
from diffkit.interop.sd_xl_refiner import refine  # noqa: E402

from test_controlnet_union import tiny_union_controlnet  # noqa: E402
from test_interop_sd_xl import PROMPTS  # noqa: E402
from test_refiner_combos import F, GRID, SCALE, STEPS, _chained, _compare, _edit_pipelines, _gens, _ours  # noqa: E402

DEPTH = 1  # ControlNet-Union's control type "depth"


@pytest.fixture(scope="module")
def combo(refiner_combo):
    """test_refiner_combos' folders and pipelines (conftest's session-wide ``refiner_combo``)."""
    return refiner_combo


@pytest.fixture(scope="module")
def union(combo):
    """A ControlNet-Union of the combo base's UNet, saved as root/un/."""
    net = tiny_union_controlnet(combo["base"].unet, 1)
    net.save_pretrained(combo["root"] / "un")
    return net


def _image_and_mask():
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 2:11] = 1
    return image, mask


def _edited(sd, rx, image, strength, mask=None):
    """Our hand-over of an edit: latent_inpaint / latent_img2img of ``sd`` (controlled / adapted) with
    denoising_end=F from generators 10, 11, then refine() (mask=, generators 20, 21 from seed 20)."""
    from diffkit.latent_editing import latent_img2img, latent_inpaint
    guided, cond = sd.prompt_guidance(PROMPTS, None, SCALE, "diffusers", 0.0, image_size=(16, 16))
    run = dict(posterior="sample", seed=10, cond=cond, progress=False, return_latents=True, denoising_end=F, eta=0.0,
               **GRID)
    if mask is None:
        z = latent_img2img(guided, sd, image * 2 - 1, strength, "ddim", STEPS, **run)
    else:
        z = latent_inpaint(guided, sd, image * 2 - 1, mask, "ddim", STEPS, strength=strength, **run)
    return refine(rx, PROMPTS, z, F, sampler="ddim", steps=STEPS, guidance_scale=SCALE, return_latents=True,
                  **({} if mask is None else {"mask": mask, "seed": 20}), **GRID)


@pytest.fixture(scope="module")
def plain(combo):
    """{masked: our edit hand-over without a ControlNet or IP-Adapter} (strength 1 with the mask, 0.8 without)."""
    image, mask = _image_and_mask()
    return {True: _edited(combo["xl"], combo["rx"], image, 1.0, mask), False: _edited(combo["xl"], combo["rx"], image,
                                                                                      0.8)}


def _refined_by_pipelines(base, refiner, image, strength, mask=None, **base_options):
    """base(strength, denoising_end=F, output_type="latent") -> refiner(image=latents, denoising_start=F)."""
    masks = {} if mask is None else {"mask_image": mask}
    with torch.no_grad():
        handed = base(PROMPTS, image=image, strength=strength, num_inference_steps=STEPS, guidance_scale=SCALE,
                      denoising_end=F, output_type="latent", generator=_gens(10), **masks, **base_options).images
        return refiner(PROMPTS, image=handed, num_inference_steps=STEPS, guidance_scale=SCALE, denoising_start=F,
                       output_type="latent", **masks, **({} if mask is None else {"generator": _gens(20)})).images


@pytest.mark.parametrize("kind", ["controlnet", "union"])
def test_a_controlnet_on_the_base_inpainting_is_the_controlnet_inpaint_pipeline_then_the_refiner(combo, union, plain,
                                                                                                 kind):
    """StableDiffusionXLControlNetInpaintPipeline (control_guidance_end 0.5: the strength's 5 steps counted before
    the cut) / ...ControlNetUnionInpaintPipeline (mode depth) at strength 1 with denoising_end=0.7 ->
    the refiner's StableDiffusionXLInpaintPipeline(denoising_start=0.7): latent_inpaint on the controlled base
    (ControlNets.controlling over editing_grid) with denoising_end, then refine(mask=)."""
    from PIL import Image
    base, refiner = _edit_pipelines(combo, diffusers.StableDiffusionXLInpaintPipeline)
    image, mask = _image_and_mask()
    control = Image.open(combo["control"]).convert("RGB")
    same = dict(add_watermarker=False, force_zeros_for_empty_prompt=base.config.force_zeros_for_empty_prompt)
    if kind == "controlnet":
        pipe = diffusers.StableDiffusionXLControlNetInpaintPipeline(**base.components, controlnet=combo["net"], **same)
        options, ours = {"control_image": control, "control_guidance_end": 0.5}, ControlNets(
            [combo["net"]], [combo["control"]], end=0.5)
    else:
        pipe = diffusers.StableDiffusionXLControlNetUnionInpaintPipeline(**base.components, controlnet=union, **same)
        options, ours = {"control_image": [control], "control_mode": [DEPTH]}, ControlNets(
            [union], [combo["control"]], modes=["depth"])
    pipe.set_progress_bar_config(disable=True)
    theirs = _refined_by_pipelines(pipe, refiner, image, 1.0, mask, **options)
    xl = combo["xl"]
    controlled = ours.controlling(xl, 16, 16, editing_grid(xl, "ddim", STEPS, 1.0, dict(GRID)))
    _compare(f"{kind} inpainting", _edited(controlled, combo["rx"], image, 1.0, mask), theirs, plain[True])


def test_a_controlnet_union_on_the_base_is_the_union_pipeline_then_the_refiner(combo, union):
    """StableDiffusionXLControlNetUnionPipeline (mode depth, scale 0.8, denoising_end=0.7) -> the refiner's
    img2img pipeline(denoising_start=0.7): text_to_image(denoising_end) with the union ControlNet, then refine()."""
    from PIL import Image
    pipe = diffusers.StableDiffusionXLControlNetUnionPipeline(**combo["base"].components, controlnet=union,
                                                              add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = _chained(pipe, combo["refiner"], control_image=[Image.open(combo["control"]).convert("RGB")],
                      control_mode=[DEPTH], controlnet_conditioning_scale=0.8)
    ours = _ours(combo["xl"], combo["rx"], controlnet=ControlNets([union], [combo["control"]], 0.8, modes=["depth"]))
    _compare("union", ours, theirs, _ours(combo["xl"], combo["rx"]))


@pytest.mark.parametrize("masked", [False, True])
def test_an_ip_adapter_on_the_base_edit_is_the_ip_adapter_pipeline_then_the_refiner(combo, plain, masked):
    """StableDiffusionXLImg2ImgPipeline (strength 0.8) / ...InpaintPipeline (strength 1) + load_ip_adapter, scale
    0.7, denoising_end=0.7 -> the refiner's pipeline without it (denoising_start=0.7): latent_img2img /
    latent_inpaint on IPAdapter.adapting(base) with denoising_end, then refine()."""
    from PIL import Image
    kind = diffusers.StableDiffusionXLInpaintPipeline if masked else diffusers.StableDiffusionXLImg2ImgPipeline
    base, refiner = _edit_pipelines(combo, kind)
    image, mask = _image_and_mask()
    strength, mask = (1.0, mask) if masked else (0.8, None)
    base.load_ip_adapter(str(combo["root"]), subfolder="", weight_name="ip.safetensors", local_files_only=True)
    try:
        base.set_ip_adapter_scale(0.7)
        theirs = _refined_by_pipelines(base, refiner, image, strength, mask,
                                       ip_adapter_image=Image.open(combo["image"]).convert("RGB"))
    finally:
        base.unload_ip_adapter()
    adapted = load_ip_adapter(combo["root"] / "ip.safetensors", combo["image"], 0.7, progress=False).adapting(
        combo["xl"])
    _compare(f"ip-adapter edit masked={masked}", _edited(adapted, combo["rx"], image, strength, mask), theirs,
             plain[masked])


def test_edit_command_with_a_refiner_a_mask_a_controlnet_and_an_ip_adapter_is_the_library(combo, union, tmp_path,
                                                                                         capsys):
    """``diffkit edit --checkpoint BASE --refiner REFINER --denoising-end 0.7 --mask M --controlnet UNION
    --control-image PNG --control-mode depth --control-guidance-end 0.5 --ip-adapter F:0.6 --ip-adapter-image PNG``:
    the PNG within half a level of latent_inpaint(denoising_end) on IPAdapter.adapting(ControlNets.controlling(base))
    then refine(mask=) decoded by the refiner's VAE; --controlnet without --mask and --pag-scale stay one line."""
    import numpy as np
    from PIL import Image
    from diffkit.latent_editing import latent_inpaint
    from test_latent_editing import cli
    from test_sd_inpaint import _pngs
    root, xl, rx = combo["root"], combo["xl"], combo["rx"]
    pngs, mask_png, mask = _pngs(tmp_path, count=1)
    flags = ["--checkpoint", root / "base", "--refiner", root / "refiner", "--denoising-end", F, "--images", pngs,
             "--prompt", "a cat", "--steps", STEPS, "--seed", 4, "--controlnet", root / "un", "--control-image",
             combo["control"], "--control-mode", "depth", "--control-guidance-end", 0.5, "--ip-adapter",
             f"{root / 'ip.safetensors'}:0.6", "--ip-adapter-image", combo["image"]]
    code, out, err = cli(capsys, *flags, "--mask", mask_png, "--out", tmp_path / "out")
    assert code == 0, err
    controlled = ControlNets([union], [combo["control"]], end=0.5, modes=["depth"]).controlling(
        xl, 16, 16, editing_grid(xl, "ddim", STEPS, 1.0, {}))
    adapted = load_ip_adapter(root / "ip.safetensors", combo["image"], 0.6, progress=False).adapting(controlled)
    guided, cond = adapted.prompt_guidance(["a cat"], None, SCALE, "diffusers", 0.0, image_size=(16, 16))
    x = torch.from_numpy(np.array(Image.open(pngs / "in_0.png"))).permute(2, 0, 1)[None].float() / 127.5 - 1
    z = latent_inpaint(guided, adapted, x, mask, "ddim", STEPS, posterior="sample", seed=4, cond=cond,
                       progress=False, return_latents=True, denoising_end=F)
    edited = refine(rx, ["a cat"], z, F, steps=STEPS, seed=4, output_range="-1,1", mask=mask)
    expected = (edited[0].permute(1, 2, 0).numpy() + 1) * 127.5
    png = np.asarray(Image.open(tmp_path / "out" / "edit_00000.png")).astype(float)
    levels = np.abs(png - expected).max()
    assert levels <= 0.5 + 1e-3
    for extra, match in (([], "--controlnet does not go with --refiner in diffkit edit without --mask .*"
                              "ControlNetImg2ImgPipeline has no denoising_end"),
                         (["--mask", mask_png, "--paste-known"], "--paste-known does not go with --refiner")):
        code, out, err = cli(capsys, *flags, *extra, "--out", tmp_path / "bad")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and re.search(match, lines[0]), (extra, err)
        assert not (tmp_path / "bad").exists()
    print("edit --refiner --mask --controlnet --ip-adapter: PNG levels", levels)  # (after the captured commands)
