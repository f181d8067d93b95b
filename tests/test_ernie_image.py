"""ERNIE-Image folders (diffkit.interop.ernie_image): text_to_image against diffusers' own ErnieImagePipeline
(use_pe=False) on a tiny random folder (tests/_ernie_image_helpers.py; nothing downloaded), ``diffkit sample`` on it
(the library's PNG byte for byte), LoRA files (diffkit.interop.ernie_image_lora) against its ``load_lora_weights`` +
``fuse_lora`` and the one-line refusals."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.ernie_image import (check_ernie_image_folder, is_ernie_image_folder,  # noqa: E402
                                         load_ernie_image, text_to_image)
from diffkit.interop.flux2 import is_flux2_folder  # noqa: E402

from _ernie_image_helpers import tiny_ernie_image_pipeline  # noqa: E402
from _pixart_helpers import assert_sample_refusals  # noqa: E402
from _sana_helpers import changed_copy  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402

PROMPTS = ["a photo of cat", "hot dog the"]  # 7 and 4 tokens: rows of two lengths, zero-padded
SIZE = 32  # pixels: latents 16 x 8 x 8 (VAE factor 2, 2 x 2 patches)


@pytest.fixture(scope="session")
def tiny_ernie_image(tmp_path_factory):
    """(ErnieImagePipeline.from_pretrained of the saved folder, the folder, load_ernie_image of it)."""
    path = tmp_path_factory.mktemp("ernie_image") / "ernie_image"
    tiny_ernie_image_pipeline().save_pretrained(path)
    return reloaded(path, diffusers.ErnieImagePipeline, load_ernie_image)


def _noise():
    return torch.randn(2, 16, SIZE // 4, SIZE // 4, generator=torch.Generator().manual_seed(1))


def _theirs(pipe, noise, steps=3, **call):
    with torch.no_grad():
        return pipe(prompt=PROMPTS, num_inference_steps=steps, latents=noise.clone(), height=SIZE, width=SIZE,
                    use_pe=False, **{"output_type": "latent", **call}).images


def test_ernie_image_samples_as_the_pipeline(tiny_ernie_image):
    """Mistral-3's hidden_states[-2] per prompt (no padding), zero-padded with their lengths; CFG against "" (default
    4.0), against a negative prompt, unguided at s = 1; the scheduler's fixed shift on linspace(1, 0, N + 1)[:-1];
    the final latents (output_type="latent") and the decoded images (batch-norm eps 1e-5), per-sample seeds."""
    pipe, path, model = tiny_ernie_image
    assert is_ernie_image_folder(path) and not is_flux2_folder(path) and model.latent_shape(1) == (1, 16, 256, 256)
    theirs, ours = pipe.encode_prompt(PROMPTS, "cpu"), model.encode_prompts(PROMPTS)
    assert [t.shape[0] for t in ours] == [7, 4] and all(torch.equal(a, b) for a, b in zip(ours, theirs))
    noise, results = _noise(), []
    for call in ({}, {"negative_prompt": "ugly", "guidance_scale": 3.0}, {"guidance_scale": 1.0}):
        results.append(text_to_image(model, PROMPTS, steps=3, latents=noise, return_latents=True, **call))
        error = relative_error(results[-1], _theirs(pipe, noise, **call))
        print("ErnieImagePipeline latents", call, error)
        assert error < 1e-5  # measured: see docs/interop.md
    assert relative_error(results[0], results[2]) > 1e-3  # CFG shows
    ours, theirs = text_to_image(model, PROMPTS, steps=3, latents=noise), _theirs(pipe, noise, output_type="pt")
    print("ErnieImagePipeline images", relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5
    seeded = text_to_image(model, PROMPTS, steps=2, seed=5, height=SIZE, width=SIZE, return_latents=True)
    with torch.no_grad():
        theirs = pipe(prompt=PROMPTS, num_inference_steps=2, height=SIZE, width=SIZE, use_pe=False,
                      generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], output_type="latent").images
    assert relative_error(seeded, theirs) < 1e-5
    out = text_to_image(model, PROMPTS, steps=3, latents=noise, sampler="unipc", return_latents=True)
    assert out.shape == noise.shape and bool(torch.isfinite(out).all())


def test_ernie_image_sample_command_is_the_library(tiny_ernie_image, tmp_path, capsys):
    """``diffkit sample`` on an ERNIE-Image folder writes the library's PNG byte for byte (CFG against
    --negative-prompt in the diffusers convention, the pipeline's sigmas)."""
    from diffkit.images import save_grid
    _, path, model = tiny_ernie_image
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--steps", "2", "--seed", "5", "--batch-size", "2", "--height", str(SIZE), "--width",
                 str(SIZE), "--negative-prompt", "ugly", "--guidance-scale", "3", "--guidance-convention", "diffusers",
                 "--out", str(out), "--no-progress"]) == 0
    images = text_to_image(model, PROMPTS, steps=2, seed=5, height=SIZE, width=SIZE, negative_prompt="ugly",
                           guidance_scale=3.0, output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert "ERNIE-Image folder" in capsys.readouterr().out


def test_what_ernie_image_does_not_take_is_refused_in_one_line(tiny_ernie_image, tmp_path, capsys):
    """Folders diffkit does not drive (from the JSON alone), bad library arguments and what the command does not
    take for ERNIE-Image (img2img, textual inversion, --max-sequence-length): one line each, no file written."""
    _, path, model = tiny_ernie_image
    for i, (file, change, expected) in enumerate([
            ("model_index.json", {"_class_name": "Flux2Pipeline"}, "is not an ERNIE-Image folder"),
            ("model_index.json", {"text_encoder": ["transformers", "Qwen3Model"]}, "allowed: Mistral3Model"),
            ("transformer/config.json", {"in_channels": 64}, "4 x the VAE's latent channels"),
            ("scheduler/scheduler_config.json", {"use_dynamic_shifting": True}, "allowed: use_dynamic_shifting=false"),
            ("scheduler/scheduler_config.json", {"invert_sigmas": True}, "allowed: invert_sigmas=false")]):
        with pytest.raises(DiffkitError) as caught:
            check_ernie_image_folder(changed_copy(path, tmp_path / str(i), file, change))
        assert expected in str(caught.value) and "\n" not in str(caught.value)
    for call, expected in [({"max_sequence_length": 64}, "max_sequence_length=64 is not allowed for an ERNIE-Image"),
                           ({"guidance_scale": 1.0, "negative_prompt": "x"}, "a negative prompt with guidance_scale=1"),
                           ({"height": 30}, "multiples of 4"), ({"ip_adapter": object()}, "ip_adapter is not allowed"),
                           ({"guidance_scale": float("nan")}, "give a finite number")]:
        with pytest.raises(DiffkitError, match=expected):
            text_to_image(model, "hot", steps=1, **{"height": SIZE, "width": SIZE, **call})
    assert_sample_refusals(main, path, tmp_path, capsys, [
        (["--textual-inversion", str(tmp_path / "x.pt")], "--textual-inversion"),
        (["--max-sequence-length", "64"], "--max-sequence-length does not apply to an ERNIE-Image folder"),
        (["--height", "30"], "--height 30 is not allowed; give a positive multiple of 4")], label="an ERNIE-Image")


ERNIE_LORA = dict(r=4, lora_alpha=8.0, target_modules=["to_q", "to_k", "to_v", "to_out.0", "gate_proj", "linear_fc2"],
                  rank_pattern={"to_k": 2}, alpha_pattern={"to_v": 3.0})


def test_ernie_image_lora_is_load_lora_weights_and_fuse_lora(tiny_ernie_image, tmp_path, capsys):
    """A diffusers-format file (ErnieImagePipeline.save_lora_weights, rank / alpha patterns) at 0.6:
    load_lora_weights + fuse_lora's weights and z_0; ``diffkit sample --lora`` is the library; a kohya key: one
    line. The same tensors under peft's ``base_model.model.`` and (half of them) ai-toolkit's ``diffusion_model.``:
    the keys and tensors of ErnieImagePipeline.lora_state_dict, merged as its load_lora_weights + fuse_lora."""
    import copy
    import types
    from safetensors.torch import load_file, save_file
    from test_sd_lora import check_transformer_lora, fused_transformer_lora
    from diffkit.interop.ernie_image_lora import ernie_image_tensors, read_ernie_image_loras
    from diffkit.interop.sd_lora import merge_sd_loras
    pipe, path, model = tiny_ernie_image
    lora, fused = fused_transformer_lora(diffusers.ErnieImagePipeline, path, tmp_path, ERNIE_LORA, scale=0.6,
                                         loaded=pipe)
    ours = load_ernie_image(path, progress=False, lora=[(lora, 0.6)])
    noise = _noise()
    z0 = text_to_image(ours, PROMPTS, steps=3, latents=noise, return_latents=True, negative_prompt="ugly")
    error = relative_error(z0, _theirs(fused, noise, negative_prompt="ugly"))
    assert error < 1e-5 and relative_error(z0, text_to_image(model, PROMPTS, steps=3, latents=noise,
                                                              return_latents=True, negative_prompt="ugly")) > 1e-3
    worst = check_transformer_lora(path, lora, 0.6, ours, model, fused, text_to_image, tmp_path, capsys,
                                   "lora_unet_layers_0_self_attention_to_q.lora_down.weight", "an ERNIE-Image folder (")
    print("ErnieImagePipeline LoRA latents", error, "weights", worst)  # (after capsys' reads)
    assert worst < 1e-6
    tensors, files = load_file(lora), []
    for i, prefix in enumerate(("base_model.model.", "diffusion_model.")):
        renamed = {(prefix if i == 0 or j % 2 else "transformer.") + k.removeprefix("transformer."): v
                   for j, (k, v) in enumerate(sorted(tensors.items()))}
        files.append(tmp_path / f"{i}.safetensors")
        save_file(renamed, files[-1])  # no lora_adapter_metadata: alpha = r on both sides
        theirs = diffusers.ErnieImagePipeline.lora_state_dict(str(files[-1]))
        mine = ernie_image_tensors(files[-1], renamed)
        assert sorted(mine) == sorted(theirs) == sorted(tensors) and all(torch.equal(mine[k], theirs[k]) for k in mine)
    theirs = diffusers.ErnieImagePipeline(**{**pipe.components, "transformer": copy.deepcopy(pipe.transformer)})
    theirs.load_lora_weights(str(files[1]))
    theirs.fuse_lora(lora_scale=0.4)
    theirs.unload_lora_weights()
    mine = types.SimpleNamespace(transformer=copy.deepcopy(model.transformer))
    merge_sd_loras(mine, read_ernie_image_loras([(files[1], 0.4)]))
    theirs = theirs.transformer.state_dict()
    worst = max(float((v - theirs[k]).abs().max()) for k, v in mine.transformer.state_dict().items())
    print("renamed files", worst)
    assert worst < 1e-6


def test_ernie_image_lora_files_the_loader_would_not_load_are_refused(tmp_path):
    """What ErnieImageLoraLoaderMixin does not load as the file says: one line naming the file's key."""
    from safetensors.torch import save_file
    from diffkit.interop.ernie_image_lora import read_ernie_image_loras
    a, b = "layers.0.self_attention.to_q.lora_A.weight", "layers.0.self_attention.to_q.lora_B.weight"
    good = {"transformer." + a: torch.ones(2, 32), "transformer." + b: torch.ones(32, 2)}
    for i, (change, expected) in enumerate([
            ({"transformer.layers.0.self_attention.to_q.alpha": torch.tensor(1.0)}, "to_q.alpha' is not supported"),
            ({"text_encoder.q_proj.lora_A.weight": torch.ones(2, 4)}, "adapts the transformer only"),
            ({"transformer.layers.0.self_attention.dora_scale": torch.ones(1, 32)}, "drops dora_scale"),
            ({"diffusion_model." + a: torch.ones(2, 32)}, "are one key once ErnieImagePipeline renames"),
            ({"transformer.layers.0.mlp.up_proj.lokr_w1": torch.ones(2, 2)}, "is a LyCORIS LoKr tensor")]):
        save_file({**good, **change}, tmp_path / f"{i}.safetensors")
        with pytest.raises(DiffkitError, match=expected) as caught:
            read_ernie_image_loras([tmp_path / f"{i}.safetensors"])
        assert "\n" not in str(caught.value)
