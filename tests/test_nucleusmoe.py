"""NucleusMoE-Image folders (diffkit.interop.nucleusmoe): text_to_image against diffusers' own
NucleusMoEImagePipeline on a tiny random folder (tests/_nucleusmoe_helpers.py; nothing downloaded), ``diffkit
sample`` on it (the library's PNG byte for byte) and the one-line refusals."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.flux import pack_latents, unpack_latents  # noqa: E402
from diffkit.interop.nucleusmoe import check_nucleusmoe_folder, is_nucleusmoe_folder, load_nucleusmoe  # noqa: E402
from diffkit.interop.nucleusmoe import text_to_image  # noqa: E402
from diffkit.interop.qwen_image import is_qwen_image_folder  # noqa: E402

from _nucleusmoe_helpers import tiny_nucleusmoe_pipeline  # noqa: E402
from _pixart_helpers import assert_sample_refusals  # noqa: E402
from _sana_helpers import changed_copy  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402

PROMPTS = ["a photo of cat", "hot dog the"]
SIZE, LENGTH = 32, 1024  # pixels (latents 4 x 8 x 8: VAE factor 4, 2 x 2 patches); max_sequence_length


@pytest.fixture(scope="session")
def tiny_nucleusmoe(tmp_path_factory):
    """(NucleusMoEImagePipeline.from_pretrained of the saved folder, the folder, load_nucleusmoe of it)."""
    path = tmp_path_factory.mktemp("nucleusmoe") / "nucleusmoe"
    tiny_nucleusmoe_pipeline().save_pretrained(path)
    return reloaded(path, diffusers.NucleusMoEImagePipeline, load_nucleusmoe)


def _noise():
    return torch.randn(2, 4, SIZE // 4, SIZE // 4, generator=torch.Generator().manual_seed(1))


def _theirs(pipe, noise, steps=3, **call):
    with torch.no_grad():
        out = pipe(prompt=PROMPTS, num_inference_steps=steps, latents=pack_latents(noise), height=SIZE, width=SIZE,
                   **{"output_type": "latent", **call}).images
    return unpack_latents(out, SIZE // 4, SIZE // 4) if call.get("output_type", "latent") == "latent" else out


def test_nucleusmoe_samples_as_the_pipeline(tiny_nucleusmoe):
    """The chat-templated prompts' hidden state -8 and padding mask; CFG s = 4.0 (default) against "", against a
    negative prompt, unguided at s = 1; the negated velocity, the resolution's mu; final latents and decoded images,
    per-sample seeds."""
    pipe, path, model = tiny_nucleusmoe
    assert is_nucleusmoe_folder(path) and not is_qwen_image_folder(path)
    (ours, mask), (theirs, their_mask) = model.encode_prompts(PROMPTS), pipe.encode_prompt(PROMPTS, "cpu")
    assert torch.equal(ours, theirs) and torch.equal(mask, their_mask) and mask.shape[1] % 8 == 0
    assert not bool(mask.all())
    noise, results = _noise(), []
    for call in ({}, {"negative_prompt": ["ugly", "bad"], "guidance_scale": 2.5}, {"guidance_scale": 1.0}):
        results.append(text_to_image(model, PROMPTS, steps=3, latents=noise, return_latents=True, **call))
        error = relative_error(results[-1], _theirs(pipe, noise, **call))
        print("NucleusMoEImagePipeline latents", call, error)
        assert error < 1e-5  # measured: see docs/interop.md
    assert relative_error(results[0], results[2]) > 1e-3 and relative_error(results[0], results[1]) > 1e-3
    ours = text_to_image(model, PROMPTS, steps=2, latents=noise)
    theirs = _theirs(pipe, noise, steps=2, output_type="pt")
    print("NucleusMoEImagePipeline images", relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5
    seeded = text_to_image(model, PROMPTS, steps=2, seed=5, height=SIZE, width=SIZE, return_latents=True,
                           guidance_scale=1.0)
    with torch.no_grad():
        theirs = pipe(prompt=PROMPTS, num_inference_steps=2, height=SIZE, width=SIZE, guidance_scale=1.0,
                      generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], output_type="latent").images
    error = relative_error(seeded, unpack_latents(theirs, SIZE // 4, SIZE // 4))
    print("NucleusMoEImagePipeline seeded latents", error)
    assert error < 1e-5


def test_nucleusmoe_sample_command_is_the_library(tiny_nucleusmoe, tmp_path, capsys):
    """``diffkit sample`` on a NucleusMoE-Image folder writes the library's PNG byte for byte."""
    from diffkit.images import save_grid
    _, path, model = tiny_nucleusmoe
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--steps", "2", "--seed", "5", "--batch-size", "2", "--height", str(SIZE), "--width",
                 str(SIZE), "--negative-prompt", "ugly", "--guidance-scale", "3", "--guidance-convention", "diffusers",
                 "--out", str(out), "--no-progress"]) == 0
    images = text_to_image(model, PROMPTS, steps=2, seed=5, height=SIZE, width=SIZE, negative_prompt="ugly",
                           guidance_scale=3.0, output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert "NucleusMoE-Image folder" in capsys.readouterr().out


def test_what_nucleusmoe_does_not_take_is_refused_in_one_line(tiny_nucleusmoe, tmp_path, capsys):
    """Folders diffkit does not drive (from the JSON alone), bad library arguments and what the command does not
    take (LoRA, textual inversion, second prompts, sizes): one line each, no file written."""
    _, path, model = tiny_nucleusmoe
    for i, (file, change, expected) in enumerate([
            ("model_index.json", {"_class_name": "QwenImagePipeline"}, "is not a NucleusMoE-Image folder"),
            ("model_index.json", {"text_encoder": ["transformers", "Qwen3VLModel"]},
             "Qwen3VLForConditionalGeneration"),
            ("transformer/config.json", {"patch_size": 1}, "patch_size=1; allowed: 2"),
            ("transformer/config.json", {"in_channels": 64}, "allowed: 16, 4 (4 x and 1 x the VAE's z_dim)"),
            ("transformer/config.json", {"out_channels": None}, "allowed: 16, 4"),
            ("transformer/config.json", {"joint_attention_dim": 64}, "joint_attention_dim=64 does not fit"),
            ("scheduler/scheduler_config.json", {"invert_sigmas": True}, "allowed: invert_sigmas=false")]):
        with pytest.raises(DiffkitError) as caught:
            check_nucleusmoe_folder(changed_copy(path, tmp_path / str(i), file, change))
        assert expected in str(caught.value) and "\n" not in str(caught.value)
    for call, expected in [({"max_sequence_length": 0}, "max_sequence_length=0 is not allowed; give a positive"),
                           ({"guidance_scale": 1.0, "negative_prompt": "x"}, "a negative prompt with guidance_scale=1"),
                           ({"height": 30}, "multiples of 8"), ({"ip_adapter": object()}, "IP-Adapter is not allowed"),
                           ({"guidance_scale": float("nan")}, "give a finite number")]:
        with pytest.raises(DiffkitError, match=expected):
            text_to_image(model, "hot", steps=1, **{"height": SIZE, "width": SIZE, **call})
    assert_sample_refusals(main, path, tmp_path, capsys, [
        (["--lora", str(tmp_path / "x.safetensors")], "--lora"),
        (["--textual-inversion", str(tmp_path / "x.pt")], "--textual-inversion"),
        (["--prompt-2", "x"], "--prompt-2 does not apply to a NucleusMoE-Image folder"),
        (["--height", "30"], "--height 30 is not allowed; give a positive multiple of 8")], label="a NucleusMoE-Image")
