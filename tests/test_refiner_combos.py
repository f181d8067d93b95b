"""The SD-XL base -> refiner hand-over with a ControlNet, an IP-Adapter or a LoRA on the base (diffkit sample
--refiner with --controlnet / --ip-adapter / --lora) against diffusers' pipelines chained as its docs show: the
base pipeline (StableDiffusionXLControlNetPipeline, or StableDiffusionXLPipeline with load_ip_adapter /
load_lora_weights + fuse_lora) with denoising_end=f and output_type="latent", then the plain refiner
StableDiffusionXLImg2ImgPipeline with denoising_start=f. The tiny random base and refiner of test_sd_xl_refiner,
DDIM on the scheduler's 5 timesteps (801, 601, 401 on the base at f = 0.7; 201, 1 on the refiner)."""
import copy

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
def combo(tmp_path_factory):
    """{"base", "refiner": pipelines (DDIM), "root" with base/, refiner/, cn/, image_encoder/, ip.safetensors,
    lora/lora.safetensors (the base UNet's), control.png, image.png; "xl", "rx": the loaded folders, "net"}."""
    root = tmp_path_factory.mktemp("refiner_combos")
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


def test_a_lora_on_the_base_is_the_fused_base_pipeline_then_the_refiner(combo):
    """StableDiffusionXLPipeline + load_lora_weights + fuse_lora(0.2) (denoising_end=0.7) -> the plain refiner."""
    root = combo["root"]
    base = diffusers.StableDiffusionXLPipeline.from_pretrained(root / "base", local_files_only=True)
    base.set_progress_bar_config(disable=True)
    base.scheduler = _ddim(base)
    base.load_lora_weights(str(root / "lora"), weight_name="lora.safetensors")
    base.fuse_lora(lora_scale=LORA)
    theirs = _chained(base, combo["refiner"])
    xl = load_stable_diffusion(root / "base", progress=False, lora=[(root / "lora" / "lora.safetensors", LORA)])
    _compare("lora", _ours(xl, combo["rx"]), theirs, _ours(combo["xl"], combo["rx"]))


def test_sample_command_with_a_refiner_and_a_controlnet_ip_adapter_and_lora_is_the_library(combo, tmp_path, capsys):
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
    xl = load_stable_diffusion(root / "base", progress=False, lora=[(lora, LORA)])
    z = text_to_image(xl, PROMPTS, steps=STEPS, latents=randn(xl.latent_shape(2), generators_from_seed(5, 2)),
                      return_latents=True, denoising_end=F, controlnet=ControlNets([combo["net"]], [combo["control"]]),
                      ip_adapter=load_ip_adapter(root / "ip.safetensors", combo["image"], 0.6, progress=False))
    save_grid(refine(combo["rx"], PROMPTS, z, F, steps=STEPS, output_range="-1,1"), tmp_path / "expected.png", 1)
    assert (tmp_path / "grid.png").read_bytes() == (tmp_path / "expected.png").read_bytes()
    for extra, match in ((["--scheduler", "lcm"], "--scheduler is not offered with --refiner"),):
        assert main(argv + extra + ["--out", str(tmp_path / "out" / "o.png")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0] and not (tmp_path / "out").exists()
