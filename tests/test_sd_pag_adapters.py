"""Perturbed-attention guidance with ControlNet and with an IP-Adapter on Stable Diffusion / SD-XL folders against
diffusers' StableDiffusionControlNetPAGPipeline / StableDiffusionXLControlNetPAGPipeline and StableDiffusionPAGPipeline
/ StableDiffusionXLPAGPipeline with ``load_ip_adapter``, on the tiny random fixtures of test_controlnet*,
test_ip_adapter* (nothing downloaded), CFG on and off."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.controlnet import ControlNets  # noqa: E402
from diffkit.interop.ip_adapter import load_ip_adapter  # noqa: E402
from diffkit.interop.stable_diffusion import text_to_image  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
import test_controlnet  # noqa: E402
import test_controlnet_sd_xl  # noqa: E402
import test_ip_adapter  # noqa: E402
import test_ip_adapter_sd_xl  # noqa: E402

tiny_controlnet_sd = test_controlnet.tiny_controlnet_sd  # the fixtures, shared
tiny_xl_controlnet = test_controlnet_sd_xl.tiny_xl_controlnet
tiny_ip = test_ip_adapter.tiny_ip
tiny_xl_ip = test_ip_adapter_sd_xl.tiny_xl_ip

STEPS = 3


def _pag(cls, components, layers, xl):
    pipe = cls(**components, pag_applied_layers=layers,
               **({"add_watermarker": False} if xl else {"requires_safety_checker": False}))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run_both(pipe, sd, prompts, latents, scale, pag_scale, layers, adaptive, ours_kw, theirs_kw):
    """(ours, theirs, plain: ours without PAG) z_0, DDIM eta 0 on the scheduler's timesteps."""
    with torch.no_grad():
        theirs = pipe(prompts, num_inference_steps=STEPS, guidance_scale=scale, latents=latents.clone(), eta=0.0,
                      pag_scale=pag_scale, pag_adaptive_scale=adaptive, output_type="latent", **theirs_kw).images
    run = dict(sampler="ddim", steps=STEPS, grid="scheduler", guidance_scale=scale, latents=latents, eta=0.0,
               return_latents=True, **ours_kw)
    ours = text_to_image(sd, prompts, pag_scale=pag_scale, pag_layers=layers, pag_adaptive_scale=adaptive, **run)
    return ours, theirs, text_to_image(sd, prompts, **run)


@pytest.mark.parametrize("xl, scale, layers, adaptive, control", [
    (False, 5.0, "mid", 0.0, {}),
    (False, 1.0, "up_blocks.1", 0.002, {}),  # PAG alone: 2 halves
    (False, 5.0, "mid", 0.0, {"scales": 0.5, "start": 0.25, "end": 0.75}),
    (True, 5.0, "mid", 0.002, {}),
    (True, 1.0, "mid", 0.0, {}),
])
def test_pag_with_controlnet_matches_the_controlnet_pag_pipeline(tiny_controlnet_sd, tiny_xl_controlnet, xl, scale,
                                                                 layers, adaptive, control):
    """The ControlNet runs on all 3 (2) halves, the perturbed one with the conditional prompt and control image, and
    is not perturbed itself (the pipelines' _prepare_perturbed_attention_guidance of the image; PAG processors in the
    UNet only)."""
    from PIL import Image
    if xl:
        base, nets, sd, _, pngs = tiny_xl_controlnet
        png, latents = pngs[0], test_controlnet_sd_xl._latents()
        cls = diffusers.StableDiffusionXLControlNetPAGPipeline
    else:
        base, nets, sd, _, png = tiny_controlnet_sd
        latents = test_controlnet._latents(sd)
        cls = diffusers.StableDiffusionControlNetPAGPipeline
    components = dict(base.components, controlnet=nets[0])
    pipe = _pag(cls, components, layers, xl)
    window = {"controlnet_conditioning_scale": control["scales"], "control_guidance_start": control["start"],
              "control_guidance_end": control["end"]} if control else {}
    ours, theirs, plain = _run_both(pipe, sd, test_controlnet.PROMPTS if not xl else test_controlnet_sd_xl.PROMPTS,
                                    latents, scale, 3.0, layers, adaptive,
                                    {"controlnet": ControlNets(nets[:1], [png], **control)},
                                    {"image": Image.open(png).convert("RGB"), **window})
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    assert relative_error(plain, theirs) > 1e-3  # PAG mattered


@pytest.mark.parametrize("xl, scale, weight, adaptive", [
    (False, 5.0, "ip.safetensors", 0.0),
    (False, 1.0, "plus.bin", 0.002),  # PAG alone: every row the positive image embedding
    (True, 5.0, "ip.safetensors", 0.002),
    (True, 1.0, "ip.safetensors", 0.0),
])
def test_pag_with_ip_adapter_matches_the_pag_pipeline(tiny_ip, tiny_xl_ip, xl, scale, weight, adaptive):
    """Image embeddings [negative, positive, positive] for 3 halves (here positive, negative, positive: by label),
    [positive, positive] for 2; the adapter's cross-attention processors and PAG's self-attention ones side by
    side."""
    from PIL import Image
    base, sd, root, png = tiny_xl_ip if xl else tiny_ip
    prompts = test_ip_adapter_sd_xl.PROMPTS if xl else test_ip_adapter.PROMPTS
    cls = diffusers.StableDiffusionXLPAGPipeline if xl else diffusers.StableDiffusionPAGPipeline
    pipe = _pag(cls, base.components, "mid", xl)
    latents = torch.randn(sd.latent_shape(len(prompts)), generator=torch.Generator().manual_seed(7))
    adapter = load_ip_adapter(root / weight, png, 0.7, progress=False)
    pipe.load_ip_adapter(str(root), subfolder="", weight_name=weight, local_files_only=True)
    try:
        pipe.set_ip_adapter_scale(0.7)
        ours, theirs, plain = _run_both(pipe, sd, prompts, latents, scale, 3.0, "mid", adaptive,
                                        {"ip_adapter": adapter},
                                        {"ip_adapter_image": Image.open(png).convert("RGB")})
    finally:
        pipe.unload_ip_adapter()
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    assert relative_error(plain, theirs) > 1e-3


def test_pag_with_controlnet_guess_mode_is_refused(tiny_controlnet_sd):
    _, nets, sd, _, png = tiny_controlnet_sd
    with pytest.raises(DiffkitError, match="not supported with ControlNet guess mode"):
        text_to_image(sd, ["x"], steps=2, pag_scale=2.0, controlnet=ControlNets(nets[:1], [png], guess_mode=True))


@pytest.mark.parametrize("with_ip", [False, True])
def test_sample_command_with_pag_and_controlnet_or_ip_adapter_is_text_to_image(tiny_controlnet_sd, tiny_ip, tmp_path,
                                                                                capsys, with_ip):
    """``diffkit sample --pag-scale`` with ``--controlnet`` / ``--ip-adapter``: text_to_image's PNGs byte for byte;
    with ``--guess-mode``: one line, no file."""
    from diffkit.cli import main
    from diffkit.images import save_images
    from diffkit.noise import generators_from_seed, randn
    if with_ip:
        _, sd, root, png = tiny_ip
        folder, extra = root / "sd", ["--ip-adapter", f"{root / 'ip.safetensors'}:0.6", "--ip-adapter-image", png]
        kw = {"ip_adapter": load_ip_adapter(root / "ip.safetensors", png, 0.6, progress=False)}
    else:
        _, nets, sd, root, png = tiny_controlnet_sd
        folder, extra = root / "sd", ["--controlnet", root / "cn0", "--control-image", png]
        kw = {"controlnet": ControlNets(nets[:1], [png])}
    flags = ["sample", "--checkpoint", folder, "--prompt", "hot", "--num", 2, "--steps", 2, "--seed", 3,
             "--pag-scale", 2.5, "--pag-layers", "mid,up_blocks.1", *extra, "--no-progress"]
    assert main([str(a) for a in (*flags, "--out", tmp_path / "g.png", "--individual", tmp_path / "cli")]) == 0
    images = text_to_image(sd, ["hot", "hot"], steps=2, latents=randn((2, 4, 8, 8), generators_from_seed(3, 2)),
                           seed=3, output_range="-1,1", pag_scale=2.5, pag_layers=["mid", "up_blocks.1"], **kw)
    save_images(images, tmp_path / "lib")
    for name in ("sample_00000.png", "sample_00001.png"):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "lib" / name).read_bytes()
    if not with_ip:
        capsys.readouterr()
        assert main([str(a) for a in (*flags, "--guess-mode", "--out", tmp_path / "new" / "g.png")]) != 0
        err = capsys.readouterr().err
        assert "not supported with ControlNet guess mode" in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "new").exists()
