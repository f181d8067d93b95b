"""Ovis-Image folders (diffkit.interop.ovis_image): text_to_image against diffusers' own OvisImagePipeline on a tiny
random folder (Z-Image's byte-level BPE Qwen2Tokenizer with the system prompt's words merged, a 2-layer Qwen3Model,
a 1 + 1 block OvisImageTransformer2DModel, the FLUX test VAE; nothing downloaded), and ``diffkit sample`` on it (the
library's PNG byte for byte; what the pipeline lacks refused in one line)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.ovis_image import (SYSTEM_PROMPT, check_ovis_image_folder, image_to_image,  # noqa: E402
                                        is_ovis_image_folder, load_ovis_image, text_to_image)

from _pixart_helpers import assert_sample_refusals  # noqa: E402
from _sana_helpers import changed_copy  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_flux import tiny_flux_vae  # noqa: E402
from test_z_image import tiny_qwen_tokenizer  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]
NEGATIVES = ["ugly", "blurry dog"]
LENGTH = 48  # Qwen tokens after the 28 dropped (the pipeline's 256 by default): the prompts' 36-43, then padding
SIZE = 16  # images 16 x 16: latents 16 x 8 x 8 (VAE factor 2), 16 packed patches


@pytest.fixture(scope="session")
def tiny_ovis_image(tmp_path_factory):
    """(OvisImagePipeline.from_pretrained of the saved folder, the folder, load_ovis_image of it): Qwen3 of 2 layers
    (hidden 32), a transformer of 1 double and 1 single block (2 heads of 16, rope axes 4 / 6 / 6), FLUX.1-dev's
    dynamic-shifting scheduler; built on first use."""
    path = tmp_path_factory.mktemp("ovis_image") / "ovis_image"
    tokenizer = tiny_qwen_tokenizer(SYSTEM_PROMPT.replace(",", "").replace(":", ""))
    torch.manual_seed(0)
    qwen = transformers.Qwen3Model(transformers.Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=512)).eval()
    transformer = diffusers.OvisImageTransformer2DModel(
        in_channels=64, out_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6))
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    diffusers.OvisImagePipeline(scheduler=scheduler, vae=tiny_flux_vae(), text_encoder=qwen, tokenizer=tokenizer,
                                transformer=transformer).save_pretrained(path)
    return reloaded(path, diffusers.OvisImagePipeline, load_ovis_image)


@pytest.mark.parametrize("call", [
    {"negative_prompt": NEGATIVES},  # CFG at the default s = 5
    {"guidance_scale": 3.0},  # against the default negative prompt ""
    {"guidance_scale": 1.0}])  # no CFG: the conditional call alone
def test_ovis_image_samples_as_the_pipeline(tiny_ovis_image, call):
    """Same z_0 as OvisImagePipeline from the same latents: flow Euler on its mu-shifted sigmas, the transformer at
    t / 1000 with the chat-templated Qwen3 states (28 tokens dropped) and text ids (0, i, i), its CFG."""
    pipe, _, model = tiny_ovis_image
    noise = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    from diffkit.interop.flux import pack_latents
    with torch.no_grad():
        theirs = pipe(list(PROMPTS), output_type="latent", num_inference_steps=3, latents=pack_latents(noise),
                      height=SIZE, width=SIZE, max_sequence_length=LENGTH, **call).images
    theirs = pipe._unpack_latents(theirs, SIZE, SIZE, pipe.vae_scale_factor)
    ours = text_to_image(model, PROMPTS, steps=3, latents=noise, return_latents=True, height=SIZE, width=SIZE,
                         max_sequence_length=LENGTH, **call)
    print("ovis-image", call, float((ours - theirs).abs().max()), relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)  # measured: see docs/interop.md


def test_ovis_image_encodes_prompts_as_the_pipeline(tiny_ovis_image):
    """The prompt states (chat template with the system prompt, last states times the mask, 28 tokens dropped) are
    the pipeline's encode_prompt, and the text ids are its (0, i, i); the folder is an Ovis-Image one."""
    pipe, path, model = tiny_ovis_image
    assert is_ovis_image_folder(path) and model.latent_shape(1, SIZE, SIZE) == (1, 16, 8, 8)
    assert model.latent_shape(1) == (1, 16, 128, 128)  # the pipeline's 128 f
    theirs, negative, ids, _ = pipe.encode_prompt(list(PROMPTS), list(NEGATIVES), max_sequence_length=LENGTH)
    context, mask = model.encode_prompts(PROMPTS, LENGTH)
    assert context.shape == (2, LENGTH, 32) and 0 < int(mask.sum()) < mask.numel()  # some padding, some prompt
    assert torch.equal(context, theirs) and torch.equal(model.encode_prompts(NEGATIVES, LENGTH)[0], negative)
    from diffkit.interop.ovis_image import ovis_text_ids
    assert torch.equal(ovis_text_ids(LENGTH), ids)


def test_ovis_image_sample_command_is_the_library(tiny_ovis_image, tmp_path, capsys):
    """``diffkit sample`` on an Ovis-Image folder writes the library's PNG byte for byte (--guidance-scale in the
    diffusers convention, the pipeline's sigmas; without --max-sequence-length: the pipeline's 256 tokens)."""
    from diffkit.images import save_grid
    _, path, model = tiny_ovis_image
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--steps", "2", "--seed", "5", "--batch-size", "2", "--height", str(SIZE), "--width",
                 str(SIZE), "--negative-prompt", "ugly", "--guidance-scale", "3", "--guidance-convention", "diffusers",
                 "--max-sequence-length",
                 str(LENGTH), "--out", str(out), "--no-progress"]) == 0
    images = text_to_image(model, PROMPTS, steps=2, seed=5, height=SIZE, width=SIZE, negative_prompt="ugly",
                           guidance_scale=3.0, max_sequence_length=LENGTH, output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert "Ovis-Image folder" in capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[1], "--num", "1", "--steps", "1",
                 "--height", str(SIZE), "--width", str(SIZE), "--out", str(out), "--no-progress"]) == 0
    save_grid(text_to_image(model, PROMPTS[1], steps=1, seed=0, height=SIZE, width=SIZE, output_range="-1,1"),
              tmp_path / "expected.png", 8)  # the defaults: 256 tokens, CFG s = 5 against ""
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()


def test_what_ovis_image_does_not_take_is_refused_in_one_line(tiny_ovis_image, tmp_path, capsys):
    """What diffusers 0.42.1 lacks for Ovis-Image (img2img / inpainting, LoRA, textual inversion, IP-Adapter),
    folders it does not drive (from the JSON alone) and bad arguments: one line each, no file written."""
    _, path, model = tiny_ovis_image
    for i, (file, change, expected) in enumerate([
            ("model_index.json", {"_class_name": "FluxPipeline"}, "allowed: OvisImagePipeline"),
            ("transformer/config.json", {"in_channels": 16}, "in_channels=16; allowed: 64 (4 x the VAE's"),
            ("transformer/config.json", {"patch_size": 2}, "patch_size=2; allowed: 1"),
            ("scheduler/scheduler_config.json", {"use_flow_sigmas": True}, "use_flow_sigmas=True, which Ovis")]):
        with pytest.raises(DiffkitError) as caught:
            check_ovis_image_folder(changed_copy(path, tmp_path / str(i), file, change))
        assert expected in str(caught.value) and "\n" not in str(caught.value)
    for call, expected in [({"max_sequence_length": 257}, "max_sequence_length=257 is not allowed; allowed: 1..256"),
                           ({"guidance_scale": 1.0, "negative_prompt": "x"}, "a negative prompt with guidance_scale=1"),
                           ({"ip_adapter": object()}, "OvisImagePipeline takes no IP-Adapter")]:
        with pytest.raises(DiffkitError, match=expected.replace("(", r"\(")):
            text_to_image(model, "hot", steps=1, height=SIZE, width=SIZE, **call)
    with pytest.raises(DiffkitError, match="no img2img or inpainting pipeline for Ovis-Image"):
        image_to_image(model, torch.zeros(1, 3, SIZE, SIZE), "hot")
    assert_sample_refusals(main, path, tmp_path, capsys, [
        (["--lora", str(tmp_path / "x.safetensors")], "--lora"),
        (["--textual-inversion", str(tmp_path / "x.pt")], "--textual-inversion"),
        (["--prompt-2", "x"], "--prompt-2 does not apply to an Ovis-Image folder")], label="an Ovis-Image")
