"""IP-Adapter on FLUX.1 folders (diffkit.interop.flux_ip_adapter) against diffusers' own FluxPipeline with
``load_ip_adapter`` (a local XLabs-format file) + ``set_ip_adapter_scale`` + ``ip_adapter_image`` (and
``negative_ip_adapter_image`` with true CFG) on the tiny random FLUX folder of test_interop_flux.py, the image
encoder the tiny random CLIPVisionModelWithProjection of test_ip_adapter.py."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.flux import load_flux, text_to_image  # noqa: E402
from diffkit.interop.flux_ip_adapter import FluxIPAdapter, load_flux_ip_adapter  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_flux import PROMPTS, SIZE, _latents, _theirs, tiny_flux_pipeline  # noqa: E402
from test_ip_adapter import image_png, tiny_image_encoder  # noqa: E402


def xlabs_state(transformer, encoder, seed=0) -> dict:
    """Random XLabs flux-ip-adapter tensors (file names) fitting ``transformer`` and the image ``encoder``."""
    g = torch.Generator().manual_seed(seed)
    dim, e, inner = transformer.config.joint_attention_dim, encoder.config.projection_dim, transformer.inner_dim
    state = {"ip_adapter_proj_model.proj.weight": torch.randn(4 * dim, e, generator=g) / e ** 0.5,
             "ip_adapter_proj_model.proj.bias": 0.1 * torch.randn(4 * dim, generator=g),
             "ip_adapter_proj_model.norm.weight": 1 + 0.1 * torch.randn(dim, generator=g),
             "ip_adapter_proj_model.norm.bias": 0.1 * torch.randn(dim, generator=g)}
    for i in range(transformer.config.num_layers):
        for name in ("k", "v"):
            key = f"double_blocks.{i}.processor.ip_adapter_double_stream_{name}_proj"
            state[f"{key}.weight"] = torch.randn(inner, dim, generator=g) / dim ** 0.5
            state[f"{key}.bias"] = 0.1 * torch.randn(inner, generator=g)
    return state


@pytest.fixture(scope="module")
def flux_ip(tmp_path_factory):
    """(pipeline, our Flux, root with image_encoder/ and xlabs.safetensors, image.png, negative.png)."""
    from safetensors.torch import save_file
    root = tmp_path_factory.mktemp("flux_ip")
    tiny_flux_pipeline(root).save_pretrained(root / "flux")
    pipe = diffusers.FluxPipeline.from_pretrained(root / "flux", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    encoder = tiny_image_encoder(root / "image_encoder")
    save_file(xlabs_state(pipe.transformer, encoder), root / "xlabs.safetensors")
    return (pipe, load_flux(root / "flux", progress=False), root, image_png(root / "image.png"),
            image_png(root / "negative.png", seed=3))


def _with_adapter(pipe, root, scale, latents, **kw):
    """The pipeline's z_0 with the XLabs file loaded (image encoder in float32), then unloaded again."""
    from PIL import Image
    pipe.load_ip_adapter(str(root), weight_name="xlabs.safetensors", local_files_only=True,
                         image_encoder_pretrained_model_name_or_path=str(root / "image_encoder"),
                         image_encoder_dtype=torch.float32)
    try:
        pipe.set_ip_adapter_scale(scale)
        if "negative_ip_adapter_image" in kw:
            kw["negative_ip_adapter_image"] = Image.open(root / kw["negative_ip_adapter_image"]).convert("RGB")
        return _theirs(pipe, latents, ip_adapter_image=Image.open(root / "image.png").convert("RGB"), **kw)
    finally:
        pipe.unload_ip_adapter()


@pytest.mark.parametrize("scale, kw", [
    (0.8, {}), (1.3, {"true_cfg_scale": 3.0, "negative_prompt": "ugly"}),
    (0.6, {"true_cfg_scale": 2.0, "negative_prompt": "ugly", "negative_ip_adapter_image": "negative.png"})])
def test_flux_ip_adapter_matches_the_pipeline(flux_ip, scale, kw):
    """Same z_0 as FluxPipeline with the adapter from the same latents: the embedded guidance 3.5; true CFG with the
    pipeline's black negative image, or a given one."""
    pipe, flux, root, png, _ = flux_ip
    latents = _latents()
    theirs = _with_adapter(pipe, root, scale, latents, **dict(kw))
    negative = kw.pop("negative_ip_adapter_image", None)
    adapter = load_flux_ip_adapter(root / "xlabs.safetensors", png, scale, progress=False,
                                   negative_image=None if negative is None else root / negative)
    ours = text_to_image(flux, PROMPTS, steps=4, latents=latents, max_sequence_length=12, height=SIZE, width=SIZE,
                         return_latents=True, ip_adapter=adapter, **kw)
    plain = text_to_image(flux, PROMPTS, steps=4, latents=latents, max_sequence_length=12, return_latents=True, **kw)
    error = relative_error(ours, theirs)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)
    assert relative_error(plain, theirs) > 1e-3  # the adapter changes the output
    assert not hasattr(flux.transformer, "encoder_hid_proj")  # the folder's transformer is left plain
    again = text_to_image(flux, PROMPTS, steps=4, latents=latents, max_sequence_length=12, return_latents=True, **kw)
    assert torch.equal(again, plain)


def test_flux_ip_adapter_refusals_are_one_line(flux_ip):
    pipe, flux, root, png, negative = flux_ip
    adapter = load_flux_ip_adapter(root / "xlabs.safetensors", png, progress=False, negative_image=negative)
    with pytest.raises(DiffkitError, match="negative IP-Adapter image feeds only true CFG"):
        text_to_image(flux, PROMPTS, steps=1, latents=_latents(), max_sequence_length=12, ip_adapter=adapter)
    state = {part: dict(tensors) for part, tensors in adapter.state.items()}
    state["ip_adapter"].update({k.replace("0.", "1.", 1): v for k, v in state["ip_adapter"].items()})
    wrong = FluxIPAdapter(state, adapter.image_encoder, png)
    with pytest.raises(DiffkitError, match="2 blocks, this FLUX transformer has 1 double"):
        text_to_image(flux, PROMPTS, steps=1, latents=_latents(), max_sequence_length=12, ip_adapter=wrong)
    plus = {"image_proj": {"latents": torch.zeros(1), "proj_in.weight": torch.zeros(1),
                           "proj_out.weight": torch.zeros(1)}, "ip_adapter": {"0.to_k_ip.weight": torch.zeros(1)}}
    with pytest.raises(DiffkitError, match="takes an ip-adapter file .* this one is ip-adapter-plus"):
        FluxIPAdapter(plus, adapter.image_encoder, png)


def test_sample_command_with_an_ip_adapter_writes_the_library_images(flux_ip, tmp_path, capsys, monkeypatch):
    """``diffkit sample --checkpoint FLUX --ip-adapter FILE:S --ip-adapter-image PNG --image-encoder DIR
    [--negative-ip-adapter-image PNG with --true-cfg-scale]``: the grid of text_to_image with the same adapter, byte
    for byte; the combinations it does not take are one-line errors before any file."""
    from diffkit.cli import main
    from diffkit.images import save_grid
    from diffkit.interop import flux as flux_module
    monkeypatch.setattr(flux_module, "DEFAULT_SAMPLE_SIZE", 8)
    pipe, flux, root, png, negative = flux_ip
    common = ["--checkpoint", str(root / "flux"), "--prompt", PROMPTS[0], "--num", "1", "--steps", "2", "--seed", "5",
              "--no-progress", "--ip-adapter", f"{root / 'xlabs.safetensors'}:0.7", "--ip-adapter-image", str(png),
              "--image-encoder", str(root / "image_encoder")]
    cfg = ["--true-cfg-scale", "2", "--negative-prompt", "ugly", "--negative-ip-adapter-image", str(negative)]
    out = tmp_path / "g.png"
    assert main(["sample", "--out", str(out)] + common + cfg) == 0
    adapter = load_flux_ip_adapter(root / "xlabs.safetensors", png, 0.7, progress=False, negative_image=negative)
    images = text_to_image(flux, [PROMPTS[0]], steps=2, seed=5, output_range="-1,1", ip_adapter=adapter,
                           true_cfg_scale=2.0, negative_prompt="ugly")
    save_grid(images, tmp_path / "expected.png", 8)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    capsys.readouterr()
    bad = tmp_path / "bad.png"
    assert main(["sample", "--out", str(bad)] + common + cfg[4:]) == 2
    err = capsys.readouterr().err.strip()
    assert "--negative-ip-adapter-image feeds only true CFG's negative pass" in err and len(err.splitlines()) == 1
    assert not bad.exists()
    assert main(["sample", "--checkpoint", str(root / "flux"), "--prompt", "x", "--negative-ip-adapter-image",
                 str(png), "--out", str(tmp_path / "n.png")]) == 2
    assert "--negative-ip-adapter-image needs --ip-adapter" in capsys.readouterr().err
