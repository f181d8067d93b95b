"""Qwen-Image 2.1 folders (diffkit.interop.qwen_image21): text_to_image against diffusers' own QwenImage21Pipeline on
a tiny random folder (tests/_qwen_image21_helpers.py; nothing downloaded), ``diffkit sample`` on it (the library's PNG
byte for byte) and the one-line refusals."""
import dataclasses

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.nucleusmoe import is_nucleusmoe_folder  # noqa: E402
from diffkit.interop.qwen_image import is_qwen_image_folder  # noqa: E402
from diffkit.interop.qwen_image21 import (check_qwen_image21_folder, flatten_latents,  # noqa: E402
                                          is_qwen_image21_folder, load_qwen_image21, text_to_image)

from _pixart_helpers import assert_sample_refusals  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402
from _qwen_image21_helpers import save_qwen_image21, tiny_qwen_image21_pipeline  # noqa: E402
from _sana_helpers import changed_copy  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]  # of unequal lengths: a padded batch, the mask passed
H, W = 32, 64  # pixels: latents 4 x 2 x 4 (f = 16), two image slots of 2 x 2 tokens


@pytest.fixture(scope="session")
def tiny_qwen21(tmp_path_factory):
    """(QwenImage21Pipeline.from_pretrained of the saved folder (its processor the built one's: transformers reads
    a Qwen3VLProcessor back only with torchvision), the folder, load_qwen_image21 of it)."""
    path = tmp_path_factory.mktemp("qwen_image21") / "qwen21"
    built = tiny_qwen_image21_pipeline()
    save_qwen_image21(built, path)
    return reloaded(path, diffusers.QwenImage21Pipeline, load_qwen_image21, processor=built.processor)


def _theirs(pipe, noise, steps=3, **call):
    b, c, h, w = noise.shape
    with torch.no_grad():
        out = pipe(PROMPTS, num_inference_steps=steps, latents=flatten_latents(noise), height=H, width=W,
                   **{"output_type": "latent", **call}).images
    return out.transpose(1, 2).reshape(b, c, h, w) if call.get("output_type", "latent") == "latent" else out


def test_qwen_image21_samples_as_the_pipeline(tiny_qwen21):
    """The templated prompts' states before the last norm, left-padded, system tokens dropped; unguided (default)
    and plain CFG against negative prompts; the unpacked length's mu; the folder's sample_sigmas; final latents and
    decoded (RGBA) images, per-sample seeds; another diffkit sampler on its own grid."""
    pipe, path, model = tiny_qwen21
    assert is_qwen_image21_folder(path) and not is_qwen_image_folder(path) and not is_nucleusmoe_folder(path)
    (ours, mask), (theirs, their_mask, slots) = model.encode_prompts(PROMPTS), pipe.encode_prompt(PROMPTS)
    assert model.system_tokens() == pipe._drop_idx and not bool(slots.any()) and not bool(mask.all())
    assert torch.equal(ours, theirs) and torch.equal(mask, their_mask)
    noise = torch.randn(2, 4, H // 16, W // 16, generator=torch.Generator().manual_seed(1))
    results = []
    for call in ({}, {"negative_prompt": ["ugly", " "], "true_cfg_scale": 2.5}):
        results.append(text_to_image(model, PROMPTS, steps=3, latents=noise, return_latents=True,
                                     guidance_scale=call.get("true_cfg_scale"),
                                     negative_prompt=call.get("negative_prompt")))
        error = relative_error(results[-1], _theirs(pipe, noise, **call))
        print("QwenImage21Pipeline latents", call, error)
        assert error < 1e-5  # measured: see docs/interop/qwen_image21.md
    assert relative_error(results[0], results[1]) > 1e-3 and relative_error(results[0], noise) > 0.1
    images = text_to_image(model, PROMPTS, steps=2, latents=noise, output_range="0,1")
    error = relative_error(images, _theirs(pipe, noise, steps=2, output_type="pt"))
    print("QwenImage21Pipeline images", error)
    assert images.shape == (2, 4, H, W) and error < 1e-5
    sigmas = (1.0, 0.7, 0.2)  # the folder's sample_sigmas (QwenImage21Pipeline then ignores num_inference_steps)
    pipe.register_to_config(sample_sigmas=list(sigmas))
    try:
        configured = text_to_image(dataclasses.replace(model, sample_sigmas=sigmas), PROMPTS, seed=5, height=H,
                                   width=W, return_latents=True)
        with torch.no_grad():
            theirs = pipe(PROMPTS, num_inference_steps=40, height=H, width=W, output_type="latent",
                          generator=[torch.Generator().manual_seed(5 + i) for i in range(2)]).images
    finally:
        pipe.register_to_config(sample_sigmas=None)
    error = relative_error(configured, theirs.transpose(1, 2).reshape(configured.shape))
    print("QwenImage21Pipeline sample_sigmas, seeded latents", error)
    assert error < 1e-5
    other = text_to_image(model, PROMPTS, sampler="dpm-solver++-2m", steps=3, height=H, width=W, seed=0,
                          negative_prompt="ugly", guidance_scale=3.0, return_latents=True)
    assert other.shape == (2, 4, 2, 4) and bool(other.isfinite().all())


def test_qwen_image21_sample_command_is_the_library_and_refusals(tiny_qwen21, tmp_path, capsys):
    """``diffkit sample`` writes the library's (RGBA) PNG byte for byte; folders diffkit does not drive (from the JSON
    alone), bad library arguments and flags the folder does not take: one line each, no file written."""
    from diffkit.images import save_grid
    _, path, model = tiny_qwen21
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--steps", "2", "--seed", "5", "--batch-size", "2", "--height", str(H), "--width",
                 str(W), "--negative-prompt", "ugly", "--guidance-scale", "3", "--guidance-convention", "diffusers",
                 "--out", str(out), "--no-progress"]) == 0
    images = text_to_image(model, PROMPTS, steps=2, seed=5, height=H, width=W, negative_prompt="ugly",
                           guidance_scale=3.0, output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert "Qwen-Image 2.1 folder" in capsys.readouterr().out
    for i, (file, change, expected) in enumerate([
            ("model_index.json", {"_class_name": "QwenImagePipeline"}, "is not a Qwen-Image 2.1 folder"),
            ("model_index.json", {"vae": ["diffusers", "AutoencoderKLQwenImage"]}, "AutoencoderKLQwenImage21"),
            ("model_index.json", {"sample_sigmas": [1.0, 0.0]}, "sample_sigmas=[1.0, 0.0]; allowed: null or"),
            ("transformer/config.json", {"patch_size": 2}, "patch_size=2; allowed: 1"),
            ("transformer/config.json", {"in_channels": 16}, "allowed: 4, 4 (the VAE's z_dim)"),
            ("transformer/config.json", {"context_in_dim": 64}, "context_in_dim=64 does not fit"),
            ("vae/config.json", {"scale_factor_spatial": 8}, "scale_factor_spatial=8; allowed: 16"),
            ("scheduler/scheduler_config.json", {"stochastic_sampling": True}, "allowed: stochastic_sampling=false")]):
        with pytest.raises(DiffkitError) as caught:
            check_qwen_image21_folder(changed_copy(path, tmp_path / str(i), file, change))
        assert expected in str(caught.value) and "\n" not in str(caught.value)
    (changed_copy(path, tmp_path / "chat", "model_index.json", {}) / "processor" / "chat_template.jinja").unlink()
    with pytest.raises(DiffkitError, match="processor has no chat template"):
        load_qwen_image21(tmp_path / "chat" / "odd", progress=False)
    for call, expected in [({"max_sequence_length": 64}, "max_sequence_length=64 is not allowed for a Qwen-Image 2.1"),
                           ({"negative_prompt": "x"}, "a negative prompt with guidance_scale=1"),
                           ({"guidance_scale": 3.0}, "without a negative prompt is not allowed: QwenImage21Pipeline"),
                           ({"height": 48}, "multiples of 32"), ({"ip_adapter": object()}, "IP-Adapter is not allowed"),
                           ({"controlnet": object()}, "a ControlNet is not allowed")]:
        with pytest.raises(DiffkitError, match=expected):
            text_to_image(model, "hot", steps=1, **{"height": H, "width": W, **call})
    assert_sample_refusals(main, path, tmp_path, capsys, [
        (["--lora", str(tmp_path / "x.safetensors")], "--lora does not apply to a Qwen-Image 2.1 folder"),
        (["--max-sequence-length", "64"], "--max-sequence-length does not apply to a Qwen-Image 2.1 folder"),
        (["--clip-skip", "1"], "its prompt flags are --prompt and --negative-prompt (one text encoder)"),
        (["--prompt-2", "x"], "--prompt-2 does not apply to a Qwen-Image 2.1 folder"),
        (["--height", "48"], "--height 48 is not allowed; give a positive multiple of 32")], label="a Qwen-Image 2.1")
