"""IP-Adapter (Ye et al. 2023) on a tiny random Stable Diffusion folder against diffusers' own
StableDiffusionPipeline with ``load_ip_adapter`` (local files) + ``set_ip_adapter_scale`` + ``ip_adapter_image``:
same prompts, z_T, DDIM scheduler and image prompt on both sides, compared on the final latents. The adapter
files are random weights of the right structure in the original IP-Adapter key layout (``image_proj.*``,
``ip_adapter.<2i+1>.to_k_ip.weight``), the image encoder a tiny random CLIPVisionModelWithProjection."""
import dataclasses

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.ip_adapter import IPAdapter, load_ip_adapter, read_ip_adapter  # noqa: E402
from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image  # noqa: E402
from test_interop_diffusers import relative_error, tiny_sd_pipeline  # noqa: E402

PROMPTS = ["a photo of a cat"]
STEPS, SCALE = 3, 5.0


def _cross_attention_widths(unet) -> list:
    """The output width of each cross-attention (attn2), in diffusers' processor order."""
    return [m.to_k.weight.shape[0] for n, m in unet.named_modules() if n.endswith("attn2")]


def _plus_state(seed: int, embed_dims: int, output_dims: int) -> dict:
    """IP-Adapter Plus resampler weights, original names (the inverse of diffusers' conversion)."""
    torch.manual_seed(seed)
    proj = diffusers.models.embeddings.IPAdapterPlusImageProjection(
        embed_dims=embed_dims, output_dims=output_dims, hidden_dims=64, heads=1, num_queries=4)
    state = {}
    for key, value in proj.state_dict().items():
        value = value + 0.1 * torch.randn_like(value) if key.endswith("bias") or "norm" in key or "ln" in key else value
        parts = key.split(".")
        if parts[0] != "layers":
            state[key] = value
            continue
        i, rest = parts[1], ".".join(parts[2:])
        if rest.startswith("ln"):
            state[f"layers.{i}.0.norm{int(rest[2]) + 1}.{parts[-1]}"] = value
        elif rest == "attn.to_q.weight":
            state[f"layers.{i}.0.to_q.weight"] = value
        elif rest == "attn.to_out.0.weight":
            state[f"layers.{i}.0.to_out.weight"] = value
        elif rest == "attn.to_k.weight":
            state[f"layers.{i}.0.to_kv.weight"] = torch.cat([value, proj.state_dict()[key.replace("to_k", "to_v")]])
        elif rest.startswith("ff."):
            state[f"layers.{i}.1." + {"ff.0.weight": "0.weight", "ff.0.bias": "0.bias", "ff.1.net.0.proj.weight":
                                      "1.weight", "ff.1.net.2.weight": "3.weight"}[rest]] = value
    return state


def ip_adapter_state(unet, encoder, kind="ip-adapter", seed=0) -> dict:
    """{"image_proj": ..., "ip_adapter": ...} of random weights fitting ``unet`` and the image ``encoder``."""
    generator = torch.Generator().manual_seed(seed)
    dim = unet.config.cross_attention_dim
    if kind == "ip-adapter":
        e = encoder.config.projection_dim
        proj = {"proj.weight": torch.randn(4 * dim, e, generator=generator) / e ** 0.5,
                "proj.bias": 0.1 * torch.randn(4 * dim, generator=generator),
                "norm.weight": 1 + 0.1 * torch.randn(dim, generator=generator),
                "norm.bias": 0.1 * torch.randn(dim, generator=generator)}
    else:
        proj = _plus_state(seed, encoder.config.hidden_size, dim)
    attn = {}
    for i, width in enumerate(_cross_attention_widths(unet)):
        for name in ("to_k_ip", "to_v_ip"):
            attn[f"{2 * i + 1}.{name}.weight"] = torch.randn(width, dim, generator=generator) / dim ** 0.5
    return {"image_proj": proj, "ip_adapter": attn}


def save_ip_adapter(state: dict, path):
    from safetensors.torch import save_file
    if str(path).endswith(".safetensors"):
        save_file({f"{part}.{k}": v.contiguous() for part in state for k, v in state[part].items()}, path)
    else:
        torch.save(state, path)
    return path


def image_png(path, size=20, seed=0, width=None):
    from PIL import Image
    shape = (size, width or size, 3)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def tiny_image_encoder(folder):
    """A tiny random CLIPVisionModelWithProjection (seeded), saved into ``folder``."""
    torch.manual_seed(0)
    encoder = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=28,
        patch_size=7, projection_dim=24)).eval()
    encoder.save_pretrained(folder)
    return encoder


@pytest.fixture(scope="module")
def tiny_ip(tmp_path_factory):
    """(pipeline, our SD, root with image_encoder/, ip.safetensors, plus.bin, image.png). The pipeline's UNet
    gets an adapter in a test: each test unloads it again."""
    root = tmp_path_factory.mktemp("tiny_ip")
    pipe = tiny_sd_pipeline(root)
    pipe.save_pretrained(root / "sd")
    encoder = tiny_image_encoder(root / "image_encoder")
    save_ip_adapter(ip_adapter_state(pipe.unet, encoder), root / "ip.safetensors")
    save_ip_adapter(ip_adapter_state(pipe.unet, encoder, "ip-adapter-plus", seed=1), root / "plus.bin")
    sd = load_stable_diffusion(root / "sd", progress=False)
    return pipe, sd, root, image_png(root / "image.png", width=26)  # not square: resized and cropped


def _latents(sd, batch=1):
    return torch.randn(sd.latent_shape(batch), generator=torch.Generator().manual_seed(7))


def _theirs(pipe, root, weight, image, latents, scale=1.0, guidance=SCALE, per_prompt=1):
    from PIL import Image
    pipe.load_ip_adapter(str(root), subfolder="", weight_name=weight, local_files_only=True)
    try:
        pipe.set_ip_adapter_scale(scale)
        with torch.no_grad():
            return pipe(PROMPTS, ip_adapter_image=Image.open(image).convert("RGB"), num_inference_steps=STEPS,
                        guidance_scale=guidance, latents=latents.clone(), eta=0.0, output_type="latent",
                        num_images_per_prompt=per_prompt).images
    finally:
        pipe.unload_ip_adapter()


def _ours(sd, adapter, latents, guidance=SCALE, prompts=PROMPTS):
    return text_to_image(sd, prompts, sampler="ddim", steps=STEPS, grid="scheduler", guidance_scale=guidance,
                         latents=latents, eta=0.0, return_latents=True, ip_adapter=adapter)


@pytest.mark.parametrize("weight, scale, guidance", [
    ("ip.safetensors", 1.0, SCALE), ("ip.safetensors", 0.6, 1.0), ("plus.bin", 0.7, SCALE)])
def test_ip_adapter_matches_the_pipeline(tiny_ip, weight, scale, guidance):
    """Basic (ImageProjection; negative image embeds zeros) and Plus (resampler; negative: an all-zero image
    encoded), with classifier-free guidance (both halves) and without (guidance 1: the positive only)."""
    pipe, sd, root, png = tiny_ip
    latents = _latents(sd)
    theirs = _theirs(pipe, root, weight, png, latents, scale, guidance)
    adapter = load_ip_adapter(root / weight, png, scale, progress=False)
    assert adapter.kind == ("ip-adapter" if weight.endswith("safetensors") else "ip-adapter-plus")
    ours = _ours(sd, adapter, latents, guidance)
    plain = _ours(sd, None, latents, guidance)
    assert relative_error(ours, theirs) < 1e-5
    assert relative_error(plain, theirs) > 1e-3  # the image prompt changes the result


def test_negative_image_embeds_matter_and_batch_rows(tiny_ip):
    """Two samples of one prompt (num_images_per_prompt=2) share the image prompt; a positive-only null half
    (the wrong negative) is far from the pipeline."""
    pipe, sd, root, png = tiny_ip
    latents = _latents(sd, 2)
    theirs = _theirs(pipe, root, "ip.safetensors", png, latents, per_prompt=2)
    adapter = load_ip_adapter(root / "ip.safetensors", png, progress=False)
    assert relative_error(_ours(sd, adapter, latents, prompts=PROMPTS * 2), theirs) < 1e-5
    positive, _ = adapter.embeddings()
    wrong = IPAdapter(adapter.state, adapter.image_encoder, png)
    wrong.embeddings = lambda: (positive, positive)
    assert relative_error(_ours(sd, wrong, latents, prompts=PROMPTS * 2), theirs) > 1e-3


def test_scale_zero_is_plain_sd_and_the_folder_is_left_plain(tiny_ip):
    """lambda = 0: diffusers' processor skips the image attention, so the latents are plain SD's (bit for bit
    here); after an adapted run the folder's UNet is as it was (processors, no encoder_hid_proj)."""
    pipe, sd, root, png = tiny_ip
    latents = _latents(sd)
    before = {k: type(v) for k, v in sd.unet.attn_processors.items()}
    plain = _ours(sd, None, latents)
    zero = _ours(sd, load_ip_adapter(root / "ip.safetensors", png, 0.0, progress=False), latents)
    assert torch.equal(plain, zero)
    assert {k: type(v) for k, v in sd.unet.attn_processors.items()} == before
    assert sd.unet.encoder_hid_proj is None and sd.unet.config.encoder_hid_dim_type is None
    assert torch.equal(_ours(sd, None, latents), plain)


def test_each_call_swaps_the_cross_attention_processors_without_walking_the_unet(tiny_ip, monkeypatch):
    """The processors go into the cross-attentions found once, not by diffusers' attn_processors /
    set_attn_processor walks of every module on every network call (17 ms a call at SD 1.5's size, BENCHMARKS.md);
    the same latents, and afterwards the UNet's own processor objects."""
    pipe, sd, root, png = tiny_ip
    latents = _latents(sd)
    before = dict(sd.unet.attn_processors)
    adapter = load_ip_adapter(root / "ip.safetensors", png, 0.6, progress=False)
    adapted = adapter.adapting(sd)
    expected = _ours(adapted, None, latents)

    def walked(*args, **kwargs):
        raise AssertionError("the UNet was walked during sampling")
    monkeypatch.setattr(type(sd.unet), "attn_processors", property(walked))
    monkeypatch.setattr(type(sd.unet), "set_attn_processor", walked)
    assert torch.equal(_ours(adapted, None, latents), expected)
    monkeypatch.undo()
    after = sd.unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert all("processor" not in m._modules for m in sd.unet.modules())


def test_an_error_inside_the_unet_leaves_it_plain(tiny_ip):
    """An exception in the middle of an adapted call (here the UNet's second call) still takes the adapter's
    processors and projection out: the UNet has its own processor objects and no encoder_hid_proj after it."""
    pipe, sd, root, png = tiny_ip
    before = dict(sd.unet.attn_processors)
    calls = []

    def second_call_fails(module, args, kwargs):
        calls.append(kwargs.get("added_cond_kwargs"))
        if len(calls) == 2:
            raise KeyboardInterrupt
    hook = sd.unet.register_forward_pre_hook(second_call_fails, with_kwargs=True)
    try:
        with pytest.raises(KeyboardInterrupt):
            _ours(sd, load_ip_adapter(root / "ip.safetensors", png, progress=False), _latents(sd))
    finally:
        hook.remove()
    assert len(calls) == 2 and "image_embeds" in calls[1]
    after = sd.unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert sd.unet.encoder_hid_proj is None and sd.unet.config.encoder_hid_dim_type is None


def test_a_scale_or_image_set_after_a_run_is_the_one_used(tiny_ip, tmp_path):
    """The modules and embeddings are built once per UNet, scale and image: ``adapter.scale = 0`` after a run
    gives plain SD, a new image a new result, and a scale that is not a number is refused then too."""
    pipe, sd, root, png = tiny_ip
    latents = _latents(sd)
    adapter = load_ip_adapter(root / "ip.safetensors", png, 0.8, progress=False)
    first = _ours(sd, adapter, latents)
    adapter.scale = 0
    assert torch.equal(_ours(sd, adapter, latents), _ours(sd, None, latents))
    adapter.scale, adapter.image = 0.8, image_png(tmp_path / "other.png", seed=3)
    assert relative_error(_ours(sd, adapter, latents), first) > 1e-3
    adapter.scale = "0.5"
    with pytest.raises(DiffkitError, match="IP-Adapter scale '0.5' is not allowed"):
        _ours(sd, adapter, latents)


def test_refused_files_and_kinds(tiny_ip, tmp_path):
    pipe, sd, root, png = tiny_ip
    state = read_ip_adapter(root / "ip.safetensors")
    with pytest.raises(DiffkitError, match="does not exist"):
        read_ip_adapter(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(DiffkitError, match="not a safetensors file"):
        read_ip_adapter(tmp_path / "bad.safetensors")
    class RunsCode:  # a pickle that would call print(...) when unpickled without weights_only
        def __reduce__(self):
            return print, ("this ran",)
    torch.save({"image_proj": state["image_proj"], "ip_adapter": RunsCode()}, tmp_path / "code.bin")
    refused = r"Unsupported global: GLOBAL print was not an allowed global by default"
    with pytest.raises(DiffkitError, match=rf"--ip-adapter .*code.bin is not a plain tensor file \(torch.load "
                                           rf"weights_only: {refused}\)$"):
        read_ip_adapter(tmp_path / "code.bin")
    faceid = {"image_proj": {"proj.0.weight": torch.zeros(2, 2), "norm.weight": torch.zeros(2)},
              "ip_adapter": state["ip_adapter"]}
    with pytest.raises(DiffkitError, match="IP-Adapter FaceID file"):
        read_ip_adapter(save_ip_adapter(faceid, tmp_path / "faceid.safetensors"))
    full = {"image_proj": {"proj.3.weight": torch.zeros(2)}, "ip_adapter": state["ip_adapter"]}
    with pytest.raises(DiffkitError, match="Full-Face"):
        read_ip_adapter(save_ip_adapter(full, tmp_path / "full.bin"))
    with pytest.raises(DiffkitError, match="lacks image_proj"):
        read_ip_adapter(save_ip_adapter({"image_proj": state["image_proj"], "ip_adapter": {}}, tmp_path / "x.bin"))
    short = {"image_proj": state["image_proj"], "ip_adapter": {k: v for k, v in state["ip_adapter"].items()
                                                               if not k.startswith("1.")}}
    adapter = load_ip_adapter(save_ip_adapter(short, tmp_path / "short.safetensors"), png,
                              image_encoder=root / "image_encoder", progress=False)
    with pytest.raises(DiffkitError, match="fits only its own model family"):
        _ours(sd, adapter, _latents(sd))
    with pytest.raises(DiffkitError, match="no config.json"):
        load_ip_adapter(tmp_path / "short.safetensors", png, progress=False)  # no image_encoder/ beside it
    narrow = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=20, num_attention_heads=2, num_hidden_layers=1, image_size=14,
        patch_size=7, projection_dim=8))
    with pytest.raises(DiffkitError, match="gives 8-wide embeddings but the IP-Adapter takes 24"):
        _ours(sd, IPAdapter(state, narrow, png), _latents(sd))
    lcm = IPAdapter(state, adapter.image_encoder, png).adapting(dataclasses.replace(sd, consistency={}))
    assert lcm.consistency == {}  # a latent consistency model keeps its consistency function (test_ip_adapter_lcm.py)
    with pytest.raises(DiffkitError, match="cannot be read as an image"):
        load_ip_adapter(root / "ip.safetensors", root / "ip.safetensors", progress=False)


def test_sample_command_with_ip_adapter_is_text_to_image(tiny_ip, tmp_path):
    """``diffkit sample --ip-adapter FILE:SCALE --ip-adapter-image PNG`` (the image encoder beside the file):
    the PNGs are text_to_image's with the same IP-Adapter, byte for byte."""
    from diffkit.images import save_images
    from diffkit.noise import generators_from_seed, randn
    pipe, sd, root, png = tiny_ip
    assert main([str(a) for a in (
        "sample", "--checkpoint", root / "sd", "--prompt", "hot", "--num", "2", "--steps", "2", "--seed", "3",
        "--ip-adapter", f"{root / 'plus.bin'}:0.5", "--ip-adapter-image", png, "--batch-size", "2",
        "--out", tmp_path / "g.png", "--individual", tmp_path / "cli", "--no-progress")]) == 0
    latents = randn((2, 4, 8, 8), generators_from_seed(3, 2))
    adapter = load_ip_adapter(root / "plus.bin", png, 0.5, progress=False)
    save_images(text_to_image(sd, ["hot", "hot"], steps=2, latents=latents, output_range="-1,1", ip_adapter=adapter),
                tmp_path / "lib")
    for i in range(2):
        file = f"sample_{i:05d}.png"
        assert (tmp_path / "cli" / file).read_bytes() == (tmp_path / "lib" / file).read_bytes()


@pytest.mark.parametrize("extra, message", [
    (["--ip-adapter-image", "{png}"], "--ip-adapter-image needs --ip-adapter FILE"),
    (["--image-encoder", "{root}"], "--image-encoder needs --ip-adapter FILE"),
    (["--ip-adapter", "{root}/ip.safetensors"], "needs --ip-adapter-image PNG"),
    (["--ip-adapter", "{root}/none.bin", "--ip-adapter-image", "{png}"], "none.bin does not exist"),
    (["--ip-adapter", "{root}/ip.safetensors", "--ip-adapter-image", "{root}/ip.safetensors"],
     "cannot be read as an image"),
    (["--ip-adapter", "{root}/ip.safetensors", "--ip-adapter-image", "{png}", "--image-encoder", "{root}/sd"],
     "no config.json there"),
])
def test_sample_command_refuses_in_one_line(tiny_ip, tmp_path, capsys, extra, message):
    pipe, sd, root, png = tiny_ip
    out = tmp_path / "new" / "g.png"
    argv = ["sample", "--checkpoint", str(root / "sd"), "--prompt", "hot", "--steps", "1", "--out", str(out),
            *[a.format(root=root, png=png) for a in extra]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.parent.exists()
    with pytest.raises(SystemExit):  # argparse: the scale must be a number
        main([*argv[:-len(extra) or None], "--ip-adapter", f"{root}/ip.safetensors:x"])
    assert "scale 'x' is not a number" in capsys.readouterr().err


def test_the_command_flags_read_the_adapter_file_once(tiny_ip, monkeypatch):
    """IPAdapterRequest keeps the state dict it checked, so loading does not read the file again (h94's
    ip-adapter-plus_sd15.bin: 98 MB)."""
    from argparse import Namespace

    import diffkit.interop.ip_adapter as module
    from diffkit.commands._ip_adapter import IPAdapterRequest
    pipe, sd, root, png = tiny_ip
    reads, real = [], module._load
    monkeypatch.setattr(module, "_load", lambda path: reads.append(path) or real(path))
    args = Namespace(ip_adapter=(str(root / "plus.bin"), 0.5), ip_adapter_image=str(png), image_encoder=None)
    adapter = IPAdapterRequest.from_args(args, root / "sd").load(progress=False)
    assert len(reads) == 1 and adapter.kind == "ip-adapter-plus" and adapter.scale == 0.5


def test_sample_command_refuses_ip_adapter_on_other_checkpoints(tiny_ip, tmp_path, capsys):
    pipe, sd, root, png = tiny_ip
    assert main(["sample", "--checkpoint", str(root / "ip.safetensors"), "--ip-adapter", str(root / "ip.safetensors"),
                 "--ip-adapter-image", str(png), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--ip-adapter applies to a Stable Diffusion folder" in err and len(err.splitlines()) == 1, err


def test_ip_adapter_with_a_controlnet_matches_the_controlnet_pipeline(tiny_ip):
    """IP-Adapter and ControlNet together (the ControlNet sees the text only, the UNet both): diffusers'
    StableDiffusionControlNetPipeline with the same adapter loaded."""
    from PIL import Image

    from diffkit.interop.controlnet import ControlNets
    from test_controlnet import tiny_controlnet
    pipe, sd, root, png = tiny_ip
    net = tiny_controlnet(sd.unet, 1)
    control = Image.open(png).convert("RGB").resize((16, 16))
    both = diffusers.StableDiffusionControlNetPipeline(**pipe.components, controlnet=net,
                                                       requires_safety_checker=False)
    both.set_progress_bar_config(disable=True)
    latents = _latents(sd)
    both.load_ip_adapter(str(root), subfolder="", weight_name="ip.safetensors", local_files_only=True)
    try:
        both.set_ip_adapter_scale(0.8)
        with torch.no_grad():
            theirs = both(PROMPTS, image=control, ip_adapter_image=Image.open(png).convert("RGB"),
                          num_inference_steps=STEPS, guidance_scale=SCALE, latents=latents.clone(), eta=0.0,
                          output_type="latent").images
    finally:
        both.unload_ip_adapter()
    adapter = load_ip_adapter(root / "ip.safetensors", png, 0.8, progress=False)
    ours = text_to_image(sd, PROMPTS, sampler="ddim", steps=STEPS, grid="scheduler", guidance_scale=SCALE,
                         latents=latents, eta=0.0, return_latents=True, ip_adapter=adapter,
                         controlnet=ControlNets([net], [control]))
    assert relative_error(ours, theirs) < 1e-5
    assert relative_error(_ours(sd, adapter, latents), theirs) > 1e-3  # the ControlNet acts too
    with pytest.raises(DiffkitError, match="already carries an IP-Adapter; add the ControlNets first"):
        ControlNets([net], [control]).controlling(adapter.adapting(sd), 16, 16)  # would drop the adapter silently


def edit_with_adapters(tiny_ip, tmp_path, capsys, *adapter_flags):
    """(our edit (1, 16, 16, 3) as int, the input image (1, 3, 16, 16) in [0, 1], StableDiffusionImg2ImgPipeline of
    the tiny pipeline's components with the DDIM schedule of the command): ``diffkit edit`` of one PNG with
    ``adapter_flags`` (strength 0.5, 4 steps, leading spacing, final zero, s = 5, seed 10)."""
    from PIL import Image
    pipe, sd, root, png = tiny_ip
    (tmp_path / "in").mkdir()
    pngs = image_png(tmp_path / "in" / "in_0.png", 16, seed=5).parent
    assert main([str(a) for a in (
        "edit", "--no-progress", "--checkpoint", root / "sd", "--images", pngs, "--prompt", "hot", "--strength",
        "0.5", "--steps", "4", "--spacing", "leading", "--final", "zero", "--guidance-scale", "5",
        "--guidance-convention", "diffusers", "--seed", "10", *adapter_flags, "--out", tmp_path / "out")]) == 0
    capsys.readouterr()
    img2img = diffusers.StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
    img2img.set_progress_bar_config(disable=True)
    img2img.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, steps_offset=0,
                                                            set_alpha_to_one=True)
    image = torch.from_numpy(np.array(Image.open(pngs / "in_0.png"))).permute(2, 0, 1)[None].float() / 255
    ours = np.asarray(Image.open(tmp_path / "out" / "edit_00000.png"))[None].astype(int)
    return ours, image, img2img


def test_edit_command_as_the_img2img_pipeline_with_the_ip_adapter(tiny_ip, tmp_path, capsys):
    """``diffkit edit --checkpoint SD --ip-adapter FILE:SCALE --ip-adapter-image PNG``: diffusers'
    StableDiffusionImg2ImgPipeline with the adapter loaded (to the PNG's 1/255), as the textual-inversion test."""
    from PIL import Image
    pipe, sd, root, png = tiny_ip
    ours, image, img2img = edit_with_adapters(tiny_ip, tmp_path, capsys, "--ip-adapter",
                                              f"{root / 'ip.safetensors'}:0.7", "--ip-adapter-image", png)
    img2img.load_ip_adapter(str(root), subfolder="", weight_name="ip.safetensors", local_files_only=True)
    try:
        img2img.set_ip_adapter_scale(0.7)
        with torch.no_grad():
            theirs = img2img(["hot"], image=image, strength=0.5, num_inference_steps=4, guidance_scale=5.0, eta=0.0,
                             ip_adapter_image=Image.open(png).convert("RGB"), output_type="np",
                             generator=[torch.Generator().manual_seed(10)]).images
    finally:
        img2img.unload_ip_adapter()
    with torch.no_grad():
        plain = img2img(["hot"], image=image, strength=0.5, num_inference_steps=4, guidance_scale=5.0, eta=0.0,
                        output_type="np", generator=[torch.Generator().manual_seed(10)]).images
    assert np.abs(ours - np.round(theirs * 255).astype(int)).max() <= 1
    assert np.abs(ours - np.round(plain * 255).astype(int)).max() > 8  # the image prompt changes the edit


def test_inpainting_two_prompts_with_one_image_prompt_as_the_inpaint_pipeline(tiny_ip):
    """``latent_inpaint`` with the adapted folder: diffusers' StableDiffusionInpaintPipeline (4-channel UNet) with
    the adapter loaded, two different prompts sharing the one image prompt (the pipeline spreads it over the
    prompts), both classifier-free halves."""
    from PIL import Image

    from diffkit.latent_editing import latent_inpaint
    pipe, sd, root, png = tiny_ip
    prompts = ["a photo of a cat", "hot"]
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 3:9] = 1
    inpaint = diffusers.StableDiffusionInpaintPipeline(**pipe.components, requires_safety_checker=False)
    inpaint.set_progress_bar_config(disable=True)
    inpaint.load_ip_adapter(str(root), subfolder="", weight_name="ip.safetensors", local_files_only=True)
    try:
        inpaint.set_ip_adapter_scale(0.8)
        with torch.no_grad():
            theirs = inpaint(prompts, image=image, mask_image=mask, strength=0.75, num_inference_steps=STEPS,
                             guidance_scale=SCALE, eta=0.0, output_type="latent",
                             ip_adapter_image=Image.open(png).convert("RGB"),
                             generator=[torch.Generator().manual_seed(10), torch.Generator().manual_seed(11)]).images
    finally:
        inpaint.unload_ip_adapter()
    adapted = load_ip_adapter(root / "ip.safetensors", png, 0.8, progress=False).adapting(sd)

    def ours(sd):
        return latent_inpaint(sd.guided(SCALE, sd.encode_prompts([""])), sd, image * 2 - 1, mask, "ddim", STEPS,
                              strength=0.75, posterior="sample", seed=10, cond=sd.cond(sd.encode_prompts(prompts)),
                              progress=False, return_latents=True, spacing="leading", final="sigma_min",
                              steps_offset=1, eta=0.0)
    assert relative_error(ours(adapted), theirs) < 1e-5
    assert relative_error(ours(sd), theirs) > 1e-3  # the image prompt changes the inpainting


def test_ip_adapter_with_the_tcd_scheduler_override_matches_the_pipeline(tiny_ip):
    """``load_stable_diffusion(..., scheduler="tcd")`` with an IP-Adapter = StableDiffusionPipeline with
    ``TCDScheduler.from_config`` + ``load_ip_adapter`` (eta 0.3, per-sample step noise), with and without
    classifier-free guidance (``scheduler="lcm"``: tests/test_ip_adapter_lcm.py)."""
    from PIL import Image

    from diffkit.noise import generators_from_seed
    pipe, _, root, png = tiny_ip
    tcd = diffusers.TCDScheduler.from_config(pipe.scheduler.config)
    tcd_pipe = type(pipe)(**{**pipe.components, "scheduler": tcd})
    tcd_pipe.set_progress_bar_config(disable=True)
    sd = load_stable_diffusion(root / "sd", scheduler="tcd", progress=False)
    adapter = load_ip_adapter(root / "ip.safetensors", png, 0.8, progress=False)
    latents = _latents(sd, 2)
    tcd_pipe.load_ip_adapter(str(root), subfolder="", weight_name="ip.safetensors", local_files_only=True)
    try:
        tcd_pipe.set_ip_adapter_scale(0.8)
        for guidance in (1.0, SCALE):
            with torch.no_grad():
                theirs = tcd_pipe(PROMPTS * 2, ip_adapter_image=Image.open(png).convert("RGB"), num_inference_steps=2,
                                  guidance_scale=guidance, eta=0.3, latents=latents.clone(),
                                  generator=generators_from_seed(5, 2), output_type="latent").images
            ours = text_to_image(sd, PROMPTS * 2, sampler="tcd:sigma_min", steps=2, guidance_scale=guidance, gamma=0.3,
                                 latents=latents, seed=5, return_latents=True, ip_adapter=adapter)
            assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)  # measured 3.8e-7, 9.3e-7
    finally:
        tcd_pipe.unload_ip_adapter()
