"""IP-Adapter (Ye et al. 2023) on a tiny random SD-XL folder against diffusers' own StableDiffusionXLPipeline
(and StableDiffusionXLControlNetPipeline) with ``load_ip_adapter`` (local files) + ``set_ip_adapter_scale`` +
``ip_adapter_image``: the SD-XL pipeline of test_interop_sd_xl, adapter files of random weights in the original
key layout from test_ip_adapter (the projection's width the SD-XL UNet's cross_attention_dim 56), the same z_T,
DDIM scheduler and image prompt on both sides, compared on the final latents."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.ip_adapter import load_ip_adapter  # noqa: E402
from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd_xl import PROMPTS, tiny_sd_xl_pipeline  # noqa: E402
from test_ip_adapter import image_png, ip_adapter_state, save_ip_adapter, tiny_image_encoder  # noqa: E402

STEPS, SCALE = 3, 5.0


@pytest.fixture(scope="module")
def tiny_xl_ip(tmp_path_factory):
    """(pipeline, loaded SD-XL, root with xl/, image_encoder/, ip.safetensors, plus.bin, image.png). The pipeline's
    UNet gets an adapter in a test: each test unloads it again."""
    root = tmp_path_factory.mktemp("tiny_xl_ip")
    pipe = tiny_sd_xl_pipeline(root)
    pipe.save_pretrained(root / "xl")
    encoder = tiny_image_encoder(root / "image_encoder")
    save_ip_adapter(ip_adapter_state(pipe.unet, encoder), root / "ip.safetensors")
    save_ip_adapter(ip_adapter_state(pipe.unet, encoder, "ip-adapter-plus", seed=1), root / "plus.bin")
    xl = load_stable_diffusion(root / "xl", progress=False)
    return pipe, xl, root, image_png(root / "image.png", width=26)


def _latents(xl, batch=2):
    return torch.randn(xl.latent_shape(batch), generator=torch.Generator().manual_seed(7))


def _theirs(pipe, root, weight, prompt_image, latents, scale=1.0, guidance=SCALE, **options):
    from PIL import Image
    pipe.load_ip_adapter(str(root), subfolder="", weight_name=weight, local_files_only=True)
    try:
        pipe.set_ip_adapter_scale(scale)
        with torch.no_grad():
            return pipe(PROMPTS, ip_adapter_image=Image.open(prompt_image).convert("RGB"), num_inference_steps=STEPS,
                        guidance_scale=guidance, latents=latents.clone(), eta=0.0, output_type="latent",
                        **options).images
    finally:
        pipe.unload_ip_adapter()


def _ours(xl, adapter, latents, guidance=SCALE, **options):
    return text_to_image(xl, PROMPTS, sampler="ddim", steps=STEPS, grid="scheduler", guidance_scale=guidance,
                         latents=latents, eta=0.0, return_latents=True, ip_adapter=adapter, **options)


@pytest.mark.parametrize("weight, scale, guidance", [
    ("ip.safetensors", 1.0, SCALE), ("plus.bin", 0.7, SCALE), ("ip.safetensors", 0.6, 1.0)])
def test_sd_xl_ip_adapter_matches_the_pipeline(tiny_xl_ip, weight, scale, guidance):
    """Basic (ImageProjection; negative image embeds zeros) and Plus (resampler; negative: an all-zero image
    encoded), CFG s = 5 with the zeroed null half (force_zeros_for_empty_prompt) and without guidance (s = 1):
    the image embeds beside the pooled text embedding and the time ids."""
    pipe, xl, root, png = tiny_xl_ip
    latents = _latents(xl)
    theirs = _theirs(pipe, root, weight, png, latents, scale, guidance)
    adapter = load_ip_adapter(root / weight, png, scale, progress=False)
    assert adapter.kind == ("ip-adapter" if weight.endswith("safetensors") else "ip-adapter-plus")
    assert relative_error(_ours(xl, adapter, latents, guidance), theirs) < 1e-5
    assert relative_error(_ours(xl, None, latents, guidance), theirs) > 1e-3  # the image prompt changes the result


def test_sd_xl_ip_adapter_scale_zero_is_plain_sd_xl_and_the_unet_gets_all_added_conditions(tiny_xl_ip):
    """lambda = 0: plain SD-XL bit for bit, the folder's UNet left plain; at lambda != 0 the UNet's one
    added_cond_kwargs holds text_embeds, time_ids and image_embeds (none dropped)."""
    pipe, xl, root, png = tiny_xl_ip
    latents = _latents(xl)
    plain = _ours(xl, None, latents)
    assert torch.equal(_ours(xl, load_ip_adapter(root / "ip.safetensors", png, 0.0, progress=False), latents), plain)
    assert xl.unet.encoder_hid_proj is None and xl.unet.config.encoder_hid_dim_type is None
    seen = []
    handle = xl.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(sorted(kw["added_cond_kwargs"])),
                                               with_kwargs=True)
    try:
        _ours(xl, load_ip_adapter(root / "ip.safetensors", png, progress=False), latents)
    finally:
        handle.remove()
    assert seen and all(keys == ["image_embeds", "text_embeds", "time_ids"] for keys in seen)
    assert torch.equal(_ours(xl, None, latents), plain)


def test_sd_xl_ip_adapter_with_a_controlnet_matches_the_controlnet_pipeline(tiny_xl_ip):
    """IP-Adapter and ControlNet on SD-XL (the ControlNet sees text_embeds and time_ids, the UNet those and the
    image embeds): StableDiffusionXLControlNetPipeline with the same adapter loaded."""
    from PIL import Image

    from diffkit.interop.controlnet import ControlNets
    from test_controlnet import control_png, tiny_controlnet
    pipe, xl, root, png = tiny_xl_ip
    net = tiny_controlnet(pipe.unet, 1)
    control = control_png(root / "control.png")
    both = diffusers.StableDiffusionXLControlNetPipeline(**pipe.components, controlnet=net, add_watermarker=False)
    both.set_progress_bar_config(disable=True)
    latents = _latents(xl)
    theirs = _theirs(both, root, "ip.safetensors", png, latents, 0.8, image=Image.open(control).convert("RGB"))
    adapter = load_ip_adapter(root / "ip.safetensors", png, 0.8, progress=False)
    assert relative_error(_ours(xl, adapter, latents, controlnet=ControlNets([net], [control])), theirs) < 1e-5
    assert relative_error(_ours(xl, adapter, latents), theirs) > 1e-3  # the ControlNet acts too


def test_sample_command_with_ip_adapter_on_an_sd_xl_folder_is_text_to_image(tiny_xl_ip, tmp_path):
    """``diffkit sample --checkpoint SDXL --ip-adapter FILE:SCALE --ip-adapter-image PNG`` (the image encoder
    beside the file): the PNGs are text_to_image's with the same IP-Adapter, byte for byte."""
    from diffkit.images import save_images
    from diffkit.noise import generators_from_seed, randn
    pipe, xl, root, png = tiny_xl_ip
    assert main([str(a) for a in (
        "sample", "--checkpoint", root / "xl", "--prompt", "hot", "--num", "2", "--steps", "2", "--seed", "3",
        "--ip-adapter", f"{root / 'plus.bin'}:0.5", "--ip-adapter-image", png, "--batch-size", "2",
        "--out", tmp_path / "g.png", "--individual", tmp_path / "cli", "--no-progress")]) == 0
    latents = randn(xl.latent_shape(2), generators_from_seed(3, 2))
    adapter = load_ip_adapter(root / "plus.bin", png, 0.5, progress=False)
    save_images(text_to_image(xl, ["hot", "hot"], steps=2, latents=latents, output_range="-1,1", ip_adapter=adapter),
                tmp_path / "lib")
    for i in range(2):
        file = f"sample_{i:05d}.png"
        assert (tmp_path / "cli" / file).read_bytes() == (tmp_path / "lib" / file).read_bytes()


def test_an_adapter_of_another_model_family_is_refused_in_one_line(tiny_xl_ip, tmp_path):
    """An SD 1.x-width adapter (cross_attention_dim 32, not SD-XL's 56) on the SD-XL folder, and an adapter with
    another count of cross-attentions: one line each, naming the model family."""
    pipe, xl, root, png = tiny_xl_ip
    adapter = load_ip_adapter(root / "ip.safetensors", png, progress=False)
    state = {"image_proj": {k: v[: 4 * 32] if k.startswith("proj") else v[:32]
                            for k, v in adapter.state["image_proj"].items()},
             "ip_adapter": {k: v[:, :32] for k, v in adapter.state["ip_adapter"].items()}}
    narrow = load_ip_adapter(save_ip_adapter(state, tmp_path / "sd15.safetensors"), png, image_encoder=root /
                             "image_encoder", progress=False)
    with pytest.raises(DiffkitError, match="does not fit this UNet .*SD 1.x, 2.x or SD-XL"):
        _ours(xl, narrow, _latents(xl))
    fewer = {"image_proj": adapter.state["image_proj"],
             "ip_adapter": {k: v for k, v in adapter.state["ip_adapter"].items() if not k.startswith("1.")}}
    with pytest.raises(DiffkitError, match="for 7 cross-attention layers, this UNet has 8"):
        _ours(xl, load_ip_adapter(save_ip_adapter(fewer, tmp_path / "f.safetensors"), png,
                                  image_encoder=root / "image_encoder", progress=False), _latents(xl))


def test_edit_command_on_an_sd_xl_folder_with_the_ip_adapter_is_the_img2img_pipeline(tiny_xl_ip, tmp_path, capsys):
    """``diffkit edit --checkpoint SDXL --ip-adapter FILE:SCALE --ip-adapter-image PNG``: diffusers'
    StableDiffusionXLImg2ImgPipeline (requires_aesthetics_score False) with the adapter loaded, to the PNG's 1/255."""
    import numpy as np
    from PIL import Image
    pipe, xl, root, png = tiny_xl_ip
    (tmp_path / "in").mkdir()
    pngs = image_png(tmp_path / "in" / "in_0.png", 16, seed=5).parent
    assert main([str(a) for a in (
        "edit", "--no-progress", "--checkpoint", root / "xl", "--images", pngs, "--prompt", "hot", "--strength",
        "0.5", "--steps", "4", "--spacing", "leading", "--final", "zero", "--seed", "10",
        "--ip-adapter", f"{root / 'ip.safetensors'}:0.7", "--ip-adapter-image", png, "--out", tmp_path / "out")]) == 0
    capsys.readouterr()
    scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, steps_offset=0, set_alpha_to_one=True)
    img2img = diffusers.StableDiffusionXLImg2ImgPipeline(**{**pipe.components, "scheduler": scheduler},
                                                         requires_aesthetics_score=False, add_watermarker=False)
    img2img.set_progress_bar_config(disable=True)
    image = torch.from_numpy(np.array(Image.open(pngs / "in_0.png"))).permute(2, 0, 1)[None].float() / 255
    options = dict(image=image, strength=0.5, num_inference_steps=4, guidance_scale=5.0, output_type="np")
    img2img.load_ip_adapter(str(root), subfolder="", weight_name="ip.safetensors", local_files_only=True)
    try:
        img2img.set_ip_adapter_scale(0.7)
        with torch.no_grad():
            theirs = img2img(["hot"], ip_adapter_image=Image.open(png).convert("RGB"),
                             generator=[torch.Generator().manual_seed(10)], **options).images
    finally:
        img2img.unload_ip_adapter()
    with torch.no_grad():
        plain = img2img(["hot"], generator=[torch.Generator().manual_seed(10)], **options).images
    ours = np.asarray(Image.open(tmp_path / "out" / "edit_00000.png"))[None].astype(int)
    assert np.abs(ours - np.round(theirs * 255).astype(int)).max() <= 1
    assert np.abs(ours - np.round(plain * 255).astype(int)).max() > 8  # the image prompt changes the edit


@pytest.mark.parametrize("guidance", [1.0, 1.5])
def test_sd_xl_ip_adapter_with_the_lcm_override_matches_the_pipeline(tiny_xl_ip, guidance):
    """``scheduler="lcm"`` with the basic adapter = StableDiffusionXLPipeline with ``LCMScheduler.from_config`` +
    ``load_ip_adapter`` (3 steps, per-sample step noise): the adapted UNet's output under the consistency function."""
    from diffkit.noise import generators_from_seed
    pipe, _, root, png = tiny_xl_ip
    xl = load_stable_diffusion(root / "xl", scheduler="lcm", progress=False)
    latents = _latents(xl)
    saved, pipe.scheduler = pipe.scheduler, diffusers.LCMScheduler.from_config(pipe.scheduler.config)
    try:
        theirs = _theirs(pipe, root, "ip.safetensors", png, latents, 0.8, guidance,
                         generator=generators_from_seed(4, 2))
    finally:
        pipe.scheduler = saved
    adapter = load_ip_adapter(root / "ip.safetensors", png, 0.8, progress=False)
    ours = text_to_image(xl, PROMPTS, steps=STEPS, guidance_scale=guidance, latents=latents, seed=4,
                         return_latents=True, ip_adapter=adapter)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
