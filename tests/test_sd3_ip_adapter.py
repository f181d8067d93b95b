"""IP-Adapter on SD3 folders (diffkit.interop.sd3_ip_adapter) against diffusers' own StableDiffusion3Pipeline with
``load_ip_adapter`` (a local file) + ``set_ip_adapter_scale`` + ``ip_adapter_image`` on the tiny random SD3 folder of
test_interop_sd3.py, the image encoder a tiny random SiglipVisionModel with its SiglipImageProcessor."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.sd3 import load_sd3, text_to_image  # noqa: E402
from diffkit.interop.sd3_ip_adapter import SD3IPAdapter, load_sd3_ip_adapter  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd3 import PROMPTS, _latents, _theirs, tiny_sd3_pipeline  # noqa: E402
from test_ip_adapter import image_png  # noqa: E402


def tiny_siglip(folder):
    torch.manual_seed(0)
    encoder = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=28,
        patch_size=7)).eval()
    encoder.save_pretrained(folder)
    transformers.SiglipImageProcessor(size={"height": 28, "width": 28}).save_pretrained(folder)
    return encoder


def sd3_ip_state(transformer, encoder, seed=0) -> dict:
    """Random SD3 IP-Adapter tensors (diffusers' names) fitting ``transformer`` and ``encoder``."""
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0
    from diffusers.models.embeddings import IPAdapterTimeImageProjection
    torch.manual_seed(seed)
    width = transformer.config.attention_head_dim * transformer.config.num_attention_heads
    proj = IPAdapterTimeImageProjection(embed_dim=encoder.config.hidden_size, output_dim=width, hidden_dim=64,
                                        heads=1, num_queries=4, timestep_in_dim=16)
    state = {f"image_proj.{k}": v + 0.1 * torch.randn_like(v) for k, v in proj.state_dict().items()}
    for i in range(len(transformer.attn_processors)):
        processor = SD3IPAdapterJointAttnProcessor2_0(width, width, transformer.config.attention_head_dim, 64)
        state.update({f"ip_adapter.{i}.{k}": v + 0.1 * torch.randn_like(v) for k, v in processor.state_dict().items()})
    return state


@pytest.fixture(scope="module")
def sd3_ip(tmp_path_factory):
    """(pipeline, our SD3, root with image_encoder/ and ip.safetensors, image.png)."""
    from safetensors.torch import save_file
    root = tmp_path_factory.mktemp("sd3_ip")
    tiny_sd3_pipeline(root).save_pretrained(root / "sd3")
    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(root / "sd3", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    encoder = tiny_siglip(root / "image_encoder")
    save_file(sd3_ip_state(pipe.transformer, encoder), root / "ip.safetensors")
    return pipe, load_sd3(root / "sd3", progress=False), root, image_png(root / "image.png")


def _with_adapter(pipe, root, ip_scale, latents, **kw):
    from PIL import Image
    pipe.load_ip_adapter(str(root), subfolder="", weight_name="ip.safetensors", local_files_only=True,
                         image_encoder_folder=str(root / "image_encoder"))  # a path: diffusers reads it as given
    try:
        pipe.set_ip_adapter_scale(ip_scale)
        return _theirs(pipe, latents, ip_adapter_image=Image.open(root / "image.png").convert("RGB"), **kw)
    finally:
        pipe.unload_ip_adapter()


@pytest.mark.parametrize("scale, guidance", [(0.8, 4.0), (1.2, 1.0), (0.0, 4.0)])
def test_sd3_ip_adapter_matches_the_pipeline(sd3_ip, scale, guidance):
    """Same z_0 as StableDiffusion3Pipeline with the adapter from the same latents: guided (zero embeds in the null
    half), unguided, and scale 0 (the pipeline's adapter inactive: plain SD3)."""
    pipe, sd3, root, png = sd3_ip
    latents = _latents()
    theirs = _with_adapter(pipe, root, scale, latents, scale=guidance)
    adapter = load_sd3_ip_adapter(root / "ip.safetensors", png, scale, progress=False)
    ours = text_to_image(sd3, PROMPTS, steps=4, guidance_scale=guidance, latents=latents, max_sequence_length=12,
                         return_latents=True, ip_adapter=adapter)
    plain = text_to_image(sd3, PROMPTS, steps=4, guidance_scale=guidance, latents=latents, max_sequence_length=12,
                          return_latents=True)
    error = relative_error(ours, theirs)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)
    assert (relative_error(plain, theirs) > 1e-3) == (scale > 0)
    assert not hasattr(sd3.transformer, "image_proj")


def test_sd3_ip_adapter_refusals_are_one_line(sd3_ip):
    pipe, sd3, root, png = sd3_ip
    adapter = load_sd3_ip_adapter(root / "ip.safetensors", png, progress=False)
    with pytest.raises(DiffkitError, match="an IP-Adapter with skip-layer guidance is not supported: .* no sound "
                                           "reference"):
        text_to_image(sd3, PROMPTS, steps=1, ip_adapter=adapter, skip_guidance_layers=[0])
    state = {part: dict(tensors) for part, tensors in adapter.state.items()}
    state["ip_adapter"].update({k.replace("0.", "2.", 1): v for k, v in state["ip_adapter"].items()
                                if k.startswith("0.")})
    wrong = SD3IPAdapter(state, adapter.image_encoder, png, feature_extractor=adapter.feature_extractor)
    with pytest.raises(DiffkitError, match="3 blocks, this SD3 transformer has 2"):
        text_to_image(sd3, PROMPTS, steps=1, ip_adapter=wrong, max_sequence_length=12)
    sd15 = {"image_proj": {"proj.weight": torch.zeros(8, 4)}, "ip_adapter": {"1.to_k_ip.weight": torch.zeros(1)}}
    with pytest.raises(DiffkitError, match="an SD3 folder takes an SD3 IP-Adapter"):
        SD3IPAdapter(sd15, adapter.image_encoder, png)


def test_sample_command_with_an_sd3_ip_adapter_writes_the_library_images(sd3_ip, tmp_path, capsys):
    """``diffkit sample --checkpoint SD3 --ip-adapter FILE:S --ip-adapter-image PNG``: the grid of text_to_image with
    the same adapter byte for byte; with --slg-layers, or --negative-ip-adapter-image (FLUX's), a one-line error."""
    from diffkit.cli import main
    from diffkit.images import save_grid
    pipe, sd3, root, png = sd3_ip
    common = ["--checkpoint", str(root / "sd3"), "--prompt", PROMPTS[0], "--num", "1", "--steps", "2", "--seed", "5",
              "--no-progress", "--ip-adapter", f"{root / 'ip.safetensors'}:0.7", "--ip-adapter-image", str(png)]
    out = tmp_path / "g.png"
    assert main(["sample", "--out", str(out)] + common) == 0
    adapter = load_sd3_ip_adapter(root / "ip.safetensors", png, 0.7, progress=False)
    images = text_to_image(sd3, [PROMPTS[0]], steps=2, seed=5, output_range="-1,1", ip_adapter=adapter)
    save_grid(images, tmp_path / "expected.png", 8)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    capsys.readouterr()
    for extra, message in ((["--slg-layers", "1"], "--ip-adapter with --slg-layers is not supported on an SD3 "
                                                   "folder: diffusers 0.42.1's StableDiffusion3Pipeline has no sound"),
                           (["--negative-ip-adapter-image", str(png)], "--negative-ip-adapter-image applies to a "
                                                                       "FLUX.1 folder")):
        bad = tmp_path / "bad.png"
        assert main(["sample", "--out", str(bad)] + common + extra) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and not bad.exists(), err
