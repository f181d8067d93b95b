"""The SD-XL base -> refiner hand-over with a ControlNet, an IP-Adapter or a LoRA on the base (diffkit sample
--refiner with --controlnet / --ip-adapter / --lora) against diffusers' pipelines chained as its docs show: the
base pipeline (StableDiffusionXLControlNetPipeline, or StableDiffusionXLPipeline with load_ip_adapter /
load_lora_weights + fuse_lora) with denoising_end=f and output_type="latent", then the plain refiner
StableDiffusionXLImg2ImgPipeline with denoising_start=f. The tiny random base and refiner of test_sd_xl_refiner,
DDIM on the scheduler's 5 timesteps (801, 601, 401 on the base at f = 0.7; 201, 1 on the refiner)."""
import copy
import re

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from diffkit.cli import main  # noqa: E402
from diffkit.interop.controlnet import ControlNets  # noqa: E402
from diffkit.interop.ip_adapter import load_ip_adapter  # noqa: E402
from diffkit.interop.sd_xl_refiner import refine  # noqa: E402
from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image  # noqa: E402

from test_controlnet import control_png, tiny_controlnet  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd_xl import PROMPTS, tiny_sd_xl_pipeline  # noqa: E402
from test_ip_adapter import image_png, ip_adapter_state, save_ip_adapter, tiny_image_encoder  # noqa: E402
from test_sd_lora import UNET_LORA, _add_lora  # noqa: E402
from test_sd_xl_refiner import _ddim, tiny_refiner  # noqa: E402

STEPS, SCALE, F = 5, 5.0, 0.7
LORA = 0.2  # at 0.8 the fused weights (equal to 1e-6) drift apart in 5 steps of the random nets, the base alone too
GRID = dict(spacing="leading", final="sigma_min", steps_offset=1)  # the pipelines' DDIM grid (steps_offset 1)


@pytest.fixture(scope="module")
def combo(refiner_combo):
    """conftest's session-wide :func:`make_combo` (test_refiner_more uses it too)."""
    return refiner_combo


def make_combo(root):
    """{"base", "refiner": pipelines (DDIM), "root" with base/, refiner/, cn/, image_encoder/, ip.safetensors,
    lora/lora.safetensors (the base UNet's), control.png, image.png; "xl", "rx": the loaded folders, "net"}."""
    base = tiny_sd_xl_pipeline(root)
    refiner = tiny_refiner(base)
    base.save_pretrained(root / "base")
    refiner.save_pretrained(root / "refiner")
    base.scheduler, refiner.scheduler = _ddim(base), _ddim(refiner)
    net = tiny_controlnet(base.unet, 1)
    net.save_pretrained(root / "cn")
    save_ip_adapter(ip_adapter_state(base.unet, tiny_image_encoder(root / "image_encoder")), root / "ip.safetensors")
    state, meta = _add_lora(copy.deepcopy(base.unet), 3, **UNET_LORA)
    diffusers.StableDiffusionXLPipeline.save_lora_weights(root / "lora", weight_name="lora.safetensors",
                                                          unet_lora_layers=state, unet_lora_adapter_metadata=meta)
    return {"base": base, "refiner": refiner, "root": root, "net": net,
            "control": control_png(root / "control.png", 16, 16, seed=4), "image": image_png(root / "image.png"),
            "xl": load_stable_diffusion(root / "base", progress=False),
            "rx": load_stable_diffusion(root / "refiner", progress=False)}


@pytest.fixture(scope="module")
def lora_xl(combo):
    """The base folder loaded with its UNet LoRA at scale LORA."""
    return load_stable_diffusion(combo["root"] / "base", progress=False,
                                 lora=[(combo["root"] / "lora" / "lora.safetensors", LORA)])


def _latents():
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))


def _chained(base, refiner, **base_options):
    """diffusers' documented ensemble: base(denoising_end=F, output_type="latent") -> refiner(denoising_start=F)."""
    with torch.no_grad():
        handed = base(PROMPTS, num_inference_steps=STEPS, guidance_scale=SCALE, latents=_latents(),
                      output_type="latent", denoising_end=F, **base_options).images
        return refiner(PROMPTS, image=handed, num_inference_steps=STEPS, guidance_scale=SCALE, output_type="latent",
                       denoising_start=F).images


def _ours(xl, rx, **base_options):
    z = text_to_image(xl, PROMPTS, sampler="ddim", steps=STEPS, guidance_scale=SCALE, latents=_latents(),
                      return_latents=True, denoising_end=F, **GRID, **base_options)
    return refine(rx, PROMPTS, z, F, sampler="ddim", steps=STEPS, guidance_scale=SCALE, return_latents=True, **GRID)


def _compare(what, ours, theirs, plain):
    print(what, relative_error(ours, theirs), (ours - theirs).abs().max().item())
    assert relative_error(ours, theirs) < 1e-5 and relative_error(plain, theirs) > 1e-4  # and the option matters


@pytest.mark.parametrize("window", [{}, {"end": 0.5}])
def test_a_controlnet_on_the_base_is_the_controlnet_pipeline_then_the_refiner(combo, window):
    """StableDiffusionXLControlNetPipeline(denoising_end=0.7) -> refiner img2img pipeline(denoising_start=0.7);
    control_guidance_end 0.5 counts the whole grid's 5 steps (the ControlNet on 801 and 601 only), as there."""
    from PIL import Image
    pipe = diffusers.StableDiffusionXLControlNetPipeline(**combo["base"].components, controlnet=combo["net"],
                                                         add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    extra = {} if not window else {"control_guidance_end": window["end"]}
    theirs = _chained(pipe, combo["refiner"], image=Image.open(combo["control"]).convert("RGB"), **extra)
    ours = _ours(combo["xl"], combo["rx"], controlnet=ControlNets([combo["net"]], [combo["control"]], **window))
    _compare(f"controlnet {window}", ours, theirs, _ours(combo["xl"], combo["rx"]))


def test_an_ip_adapter_on_the_base_is_the_ip_adapter_pipeline_then_the_refiner(combo):
    """StableDiffusionXLPipeline + load_ip_adapter, scale 0.7, (denoising_end=0.7) -> the refiner without it."""
    from PIL import Image
    base, root = combo["base"], combo["root"]
    base.load_ip_adapter(str(root), subfolder="", weight_name="ip.safetensors", local_files_only=True)
    try:
        base.set_ip_adapter_scale(0.7)
        theirs = _chained(base, combo["refiner"], ip_adapter_image=Image.open(combo["image"]).convert("RGB"))
    finally:
        base.unload_ip_adapter()
    adapter = load_ip_adapter(root / "ip.safetensors", combo["image"], 0.7, progress=False)
    ours = _ours(combo["xl"], combo["rx"], ip_adapter=adapter)
    _compare("ip-adapter", ours, theirs, _ours(combo["xl"], combo["rx"]))


def test_a_lora_on_the_base_is_the_fused_base_pipeline_then_the_refiner(combo, lora_xl):
    """StableDiffusionXLPipeline + load_lora_weights + fuse_lora(0.2) (denoising_end=0.7) -> the plain refiner
    (the LoRA fused into a copy of the base pipeline's UNet; the file has UNet keys only)."""
    base = diffusers.StableDiffusionXLPipeline(**{**combo["base"].components, "unet": copy.deepcopy(
        combo["base"].unet)}, add_watermarker=False)
    base.set_progress_bar_config(disable=True)
    base.load_lora_weights(str(combo["root"] / "lora"), weight_name="lora.safetensors")
    base.fuse_lora(lora_scale=LORA)
    theirs = _chained(base, combo["refiner"])
    _compare("lora", _ours(lora_xl, combo["rx"]), theirs, _ours(combo["xl"], combo["rx"]))


def _edit_pipelines(combo, kind):
    """The base and refiner ``kind`` pipelines (StableDiffusionXLInpaintPipeline / ...Img2ImgPipeline) of the
    fixture's components, DDIM, as diffusers' docs load them for the hand-over."""
    pipes = []
    for name, aesthetics in (("base", False), ("refiner", True)):
        pipe = kind(**combo[name].components, requires_aesthetics_score=aesthetics, add_watermarker=False,
                    force_zeros_for_empty_prompt=combo[name].config.force_zeros_for_empty_prompt)
        pipe.set_progress_bar_config(disable=True)
        pipes.append(pipe)
    return pipes


def _gens(first):
    return [torch.Generator().manual_seed(first + i) for i in range(2)]


@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_inpainting_hand_over_is_the_two_inpaint_pipelines(combo, strength):
    """StableDiffusionXLInpaintPipeline of the base (strength, denoising_end=0.7, output_type="latent") ->
    StableDiffusionXLInpaintPipeline of the refiner (image=those latents, the same mask, denoising_start=0.7), as
    diffusers' "inpainting with the refiner": latent_inpaint(denoising_end) then refine(mask=), both 4-channel
    UNets; the hand-over's kept region is the clean image latents (the base's last blend), the refiner re-noises
    it with its own fresh noise from the second call on."""
    from diffkit.latent_editing import latent_inpaint
    base, refiner = _edit_pipelines(combo, diffusers.StableDiffusionXLInpaintPipeline)
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 2:11] = 1
    with torch.no_grad():
        handed = base(PROMPTS, image=image, mask_image=mask, strength=strength, num_inference_steps=STEPS,
                      guidance_scale=SCALE, denoising_end=F, output_type="latent", generator=_gens(10)).images
        theirs = refiner(PROMPTS, image=handed, mask_image=mask, num_inference_steps=STEPS, guidance_scale=SCALE,
                         denoising_start=F, output_type="latent", generator=_gens(20)).images
    xl, rx = combo["xl"], combo["rx"]
    guided, cond = xl.prompt_guidance(PROMPTS, None, SCALE, "diffusers", 0.0, image_size=(16, 16))
    z = latent_inpaint(guided, xl, image * 2 - 1, mask, "ddim", STEPS, strength=strength, posterior="sample",
                       seed=10, cond=cond, progress=False, return_latents=True, denoising_end=F, eta=0.0, **GRID)
    print("inpainting hand-over", strength, relative_error(z, handed), (z - handed).abs().max().item())
    assert relative_error(z, handed) < 1e-5
    ours = refine(rx, PROMPTS, z, F, sampler="ddim", steps=STEPS, guidance_scale=SCALE, mask=mask, seed=20,
                  return_latents=True, **GRID)
    plain = refine(rx, PROMPTS, z, F, sampler="ddim", steps=STEPS, guidance_scale=SCALE, return_latents=True, **GRID)
    _compare(f"inpainting refiner {strength}", ours, theirs, plain)


def test_img2img_hand_over_is_the_two_img2img_pipelines(combo):
    """StableDiffusionXLImg2ImgPipeline of the base (strength 0.8, denoising_end=0.7, output_type="latent") -> of
    the refiner (denoising_start=0.7): latent_img2img(denoising_end) then refine()."""
    from diffkit.latent_editing import latent_img2img
    base, refiner = _edit_pipelines(combo, diffusers.StableDiffusionXLImg2ImgPipeline)
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        handed = base(PROMPTS, image=image, strength=0.8, num_inference_steps=STEPS, guidance_scale=SCALE,
                      denoising_end=F, output_type="latent", generator=_gens(10)).images
        theirs = refiner(PROMPTS, image=handed, num_inference_steps=STEPS, guidance_scale=SCALE, denoising_start=F,
                         output_type="latent").images
    xl = combo["xl"]
    guided, cond = xl.prompt_guidance(PROMPTS, None, SCALE, "diffusers", 0.0, image_size=(16, 16))
    z = latent_img2img(guided, xl, image * 2 - 1, 0.8, "ddim", STEPS, posterior="sample", seed=10, cond=cond,
                       progress=False, return_latents=True, denoising_end=F, eta=0.0, **GRID)
    ours = refine(combo["rx"], PROMPTS, z, F, sampler="ddim", steps=STEPS, guidance_scale=SCALE, return_latents=True,
                  **GRID)
    print("img2img hand-over", relative_error(z, handed))
    _compare("img2img refiner", ours, theirs, z)


def test_sample_command_with_a_refiner_and_a_controlnet_ip_adapter_and_lora_is_the_library(combo, lora_xl, tmp_path,
                                                                                            capsys):
    """``diffkit sample --checkpoint BASE --refiner REFINER --controlnet CN --control-image PNG --ip-adapter F:S
    --ip-adapter-image PNG --lora F:S``: text_to_image(denoising_end) of the base with all three, then refine(), byte
    for byte; --nfe / --scheduler with --refiner stay one-line errors before any output."""
    from diffkit.images import save_grid
    from diffkit.noise import generators_from_seed, randn
    root = combo["root"]
    lora = root / "lora" / "lora.safetensors"
    argv = [str(a) for a in (
        "sample", "--checkpoint", root / "base", "--refiner", root / "refiner", "--prompt", PROMPTS[0], "--prompt",
        PROMPTS[1], "--num", "2", "--nrow", "1", "--steps", STEPS, "--seed", "5", "--denoising-end", F,
        "--controlnet", root / "cn", "--control-image", combo["control"], "--ip-adapter",
        f"{root / 'ip.safetensors'}:0.6", "--ip-adapter-image", combo["image"], "--lora", f"{lora}:{LORA}",
        "--batch-size", "2", "--no-progress")]
    assert main(argv + ["--out", str(tmp_path / "grid.png")]) == 0
    xl = lora_xl
    z = text_to_image(xl, PROMPTS, steps=STEPS, latents=randn(xl.latent_shape(2), generators_from_seed(5, 2)),
                      return_latents=True, denoising_end=F, controlnet=ControlNets([combo["net"]], [combo["control"]]),
                      ip_adapter=load_ip_adapter(root / "ip.safetensors", combo["image"], 0.6, progress=False))
    save_grid(refine(combo["rx"], PROMPTS, z, F, steps=STEPS, output_range="-1,1"), tmp_path / "expected.png", 1)
    assert (tmp_path / "grid.png").read_bytes() == (tmp_path / "expected.png").read_bytes()
    for extra, match in ((["--scheduler", "tcd"], "--scheduler tcd is not offered with --refiner"),):
        assert main(argv + extra + ["--out", str(tmp_path / "out" / "o.png")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0] and not (tmp_path / "out").exists()


def test_edit_command_with_a_refiner_is_the_library_and_refuses_in_one_line(combo, tmp_path, capsys):
    """``diffkit edit --checkpoint BASE --refiner REFINER --denoising-end 0.7 [--mask M] --aesthetic-score 7``:
    the PNG within half a level of latent_inpaint / latent_img2img(denoising_end) then refine() (mask=, the
    refiner's aesthetic score) decoded by the refiner's VAE, from the seed in both halves; flags the
    hand-over is not compared for, a refiner-style --checkpoint, --denoising-end alone: one line, no output."""
    import numpy as np
    from PIL import Image
    from diffkit.latent_editing import latent_img2img, latent_inpaint
    from test_latent_editing import cli
    from test_sd_inpaint import _pngs
    root, xl, rx = combo["root"], combo["xl"], combo["rx"]
    pngs, mask_png, mask = _pngs(tmp_path, count=1)
    base = ["--checkpoint", root / "base", "--refiner", root / "refiner", "--denoising-end", F, "--images", pngs,
            "--prompt", "a cat", "--steps", STEPS, "--seed", 4, "--aesthetic-score", 7]
    guided, cond = xl.prompt_guidance(["a cat"], None, SCALE, "diffusers", 0.0, image_size=(16, 16))
    for extra in (["--mask", mask_png], ["--strength", 0.8]):
        code, out, err = cli(capsys, *base, *extra, "--out", tmp_path / extra[0][2:])
        assert code == 0, err
        for i in range(1):
            x = torch.from_numpy(np.array(Image.open(pngs / f"in_{i}.png"))).permute(2, 0, 1)[None].float() / 127.5 - 1
            if extra[0] == "--mask":
                z = latent_inpaint(guided, xl, x, mask, "ddim", STEPS, posterior="sample", seed=4 + i, cond=cond,
                                   progress=False, return_latents=True, denoising_end=F)
            else:
                z = latent_img2img(guided, xl, x, 0.8, "ddim", STEPS, posterior="sample", seed=4 + i, cond=cond,
                                   progress=False, return_latents=True, denoising_end=F)
            edited = refine(rx, ["a cat"], z, F, steps=STEPS, seed=4 + i, output_range="-1,1",
                            micro_conditioning={"aesthetic_score": 7.0}, **({"mask": mask} if extra[0] == "--mask"
                                                                             else {}))
            expected = (edited[0].permute(1, 2, 0).numpy() + 1) * 127.5
            png = np.asarray(Image.open(tmp_path / extra[0][2:] / f"edit_{i:05d}.png")).astype(float)
            assert np.abs(png - expected).max() <= 0.5 + 1e-3, (extra, i)
    for extra, match in ((["--jump-n-sample", 2, "--sampler", "ddpm", "--mask", mask_png],
                          "--jump-n-sample does not go with --refiner in diffkit edit"),
                         (["--controlnet", root / "cn", "--control-image", combo["control"]],
                          "--controlnet does not go with --refiner"),
                         (["--checkpoint", root / "refiner"], "applies to an SD-XL base folder .*/refiner is not one")):
        argv = [*base, *extra] if extra[0] != "--checkpoint" else [*extra, *base[2:]]
        code, out, err = cli(capsys, *argv, "--out", tmp_path / "bad")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and re.search(match, lines[0]), (extra, err)
        assert not (tmp_path / "bad").exists()
    code, _, err = cli(capsys, "--checkpoint", root / "base", "--images", pngs, "--prompt", "a", "--denoising-end",
                       0.5, "--out", tmp_path / "bad")
    assert code == 2 and "--denoising-end needs --refiner" in err and not (tmp_path / "bad").exists()
