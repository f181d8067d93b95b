"""Krea 2 folders (diffkit.interop.krea2): text_to_image against diffusers' own Krea2Pipeline on a tiny random folder
(tests/_krea2_helpers.py; nothing downloaded), ``diffkit sample`` on it (the library's PNG byte for byte) and the
one-line refusals; LoRA files (diffkit.interop.krea2_lora) against its ``load_lora_weights`` + ``fuse_lora``."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.flux import pack_latents, unpack_latents  # noqa: E402
from diffkit.interop.krea2 import check_krea2_folder, is_krea2_folder, load_krea2, text_to_image  # noqa: E402
from diffkit.interop.qwen_image import is_qwen_image_folder  # noqa: E402

from _krea2_helpers import tiny_krea2_pipeline  # noqa: E402
from _pixart_helpers import assert_sample_refusals  # noqa: E402
from _sana_helpers import changed_copy  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402

PROMPTS = ["a photo of cat", "hot dog the"]  # rows of two lengths, padded in the middle of the template
SIZE, LENGTH = 32, 16  # pixels (latents 4 x 8 x 8: VAE factor 4, 2 x 2 patches); max_sequence_length


@pytest.fixture(scope="session")
def tiny_krea2(tmp_path_factory):
    """(Krea2Pipeline.from_pretrained of the saved folder, the folder, load_krea2 of it)."""
    path = tmp_path_factory.mktemp("krea2") / "krea2"
    tiny_krea2_pipeline().save_pretrained(path)
    return reloaded(path, diffusers.Krea2Pipeline, load_krea2)


def _noise():
    return torch.randn(2, 4, SIZE // 4, SIZE // 4, generator=torch.Generator().manual_seed(1))


def _theirs(pipe, noise, steps=3, **call):
    with torch.no_grad():
        out = pipe(prompt=PROMPTS, num_inference_steps=steps, latents=pack_latents(noise), height=SIZE, width=SIZE,
                   max_sequence_length=LENGTH, **{"output_type": "latent", **call}).images
    return unpack_latents(out, SIZE // 4, SIZE // 4) if call.get("output_type", "latent") == "latent" else out


def test_krea2_samples_as_the_pipeline(tiny_krea2, tmp_path):
    """The stacked Qwen3-VL states of the template padded in the middle (real-token positions) and their mask; CFG
    u_c + g (u_c - u_neg) against "" (default g = 4.5), against a negative prompt, unguided at g = 0 (diffkit's seed
    convention W = g); the resolution's mu, and a distilled folder's fixed 1.15; the final latents and the decoded
    images, per-sample seeds."""
    pipe, path, model = tiny_krea2
    assert is_krea2_folder(path) and not is_qwen_image_folder(path) and model.latent_shape(1) == (1, 4, 256, 256)
    (ours, mask), (theirs, their_mask) = model.encode_prompts(PROMPTS, LENGTH), pipe.encode_prompt(
        PROMPTS, "cpu", max_sequence_length=LENGTH)
    assert ours.shape == (2, LENGTH, 3, 32) and torch.equal(ours, theirs) and torch.equal(mask, their_mask)
    assert mask.sum(1).tolist() == [7 + 5, 3 + 5] and bool(mask[:, -5:].all())  # prompt, padding, the suffix
    noise, results = _noise(), []
    for call in ({}, {"negative_prompt": "ugly", "guidance_scale": 2.0}, {"guidance_scale": 0.0}):
        seed = {"convention": "seed"} if call else {}  # (a scale left out: diffusers' 5.5, the pipeline's 4.5)
        results.append(text_to_image(model, PROMPTS, steps=3, latents=noise, return_latents=True,
                                     max_sequence_length=LENGTH, **seed, **call))
        error = relative_error(results[-1], _theirs(pipe, noise, **call))
        print("Krea2Pipeline latents", call, error)
        assert error < 1e-5  # measured: see docs/interop.md
    assert relative_error(results[0], results[2]) > 1e-3 and relative_error(results[0], results[1]) > 1e-3
    assert relative_error(results[0], text_to_image(model, PROMPTS, steps=3, latents=noise, return_latents=True,
                                                    guidance_scale=5.5, max_sequence_length=LENGTH)) < 1e-6
    ours = text_to_image(model, PROMPTS, steps=2, latents=noise, max_sequence_length=LENGTH)
    theirs = _theirs(pipe, noise, steps=2, output_type="pt")
    print("Krea2Pipeline images", relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5
    seeded = text_to_image(model, PROMPTS, steps=2, seed=5, height=SIZE, width=SIZE, return_latents=True,
                           max_sequence_length=LENGTH)
    with torch.no_grad():
        theirs = pipe(prompt=PROMPTS, num_inference_steps=2, height=SIZE, width=SIZE, max_sequence_length=LENGTH,
                      generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], output_type="latent").images
    error = relative_error(seeded, unpack_latents(theirs, SIZE // 4, SIZE // 4))
    print("Krea2Pipeline seeded latents", error)
    assert error < 1e-5
    distilled = changed_copy(path, tmp_path, "model_index.json", {"is_distilled": True})
    fast = diffusers.Krea2Pipeline.from_pretrained(distilled, local_files_only=True)
    fast.set_progress_bar_config(disable=True)
    ours = text_to_image(load_krea2(distilled, progress=False), PROMPTS, steps=2, latents=noise, guidance_scale=0.0,
                         return_latents=True, max_sequence_length=LENGTH)
    error = relative_error(ours, _theirs(fast, noise, steps=2, guidance_scale=0.0))
    print("Krea2Pipeline distilled latents", error)
    assert error < 1e-5
    assert relative_error(ours, text_to_image(model, PROMPTS, steps=2, latents=noise, guidance_scale=0.0,
                                              return_latents=True, max_sequence_length=LENGTH)) > 1e-3  # mu shows
    out = text_to_image(model, PROMPTS, steps=3, latents=noise, sampler="unipc", return_latents=True,
                        max_sequence_length=LENGTH)
    assert out.shape == noise.shape and bool(torch.isfinite(out).all())


def test_krea2_sample_command_is_the_library(tiny_krea2, tmp_path, capsys):
    """``diffkit sample`` on a Krea 2 folder writes the library's PNG byte for byte (CFG against --negative-prompt
    in the seed convention, the pipeline's sigmas)."""
    from diffkit.images import save_grid
    _, path, model = tiny_krea2
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--steps", "2", "--seed", "5", "--batch-size", "2", "--height", str(SIZE), "--width",
                 str(SIZE), "--negative-prompt", "ugly", "--guidance-scale", "3", "--guidance-convention", "seed",
                 "--max-sequence-length", str(LENGTH), "--out", str(out), "--no-progress"]) == 0
    images = text_to_image(model, PROMPTS, steps=2, seed=5, height=SIZE, width=SIZE, negative_prompt="ugly",
                           guidance_scale=3.0, convention="seed", max_sequence_length=LENGTH, output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert "Krea 2 folder" in capsys.readouterr().out


def test_what_krea2_does_not_take_is_refused_in_one_line(tiny_krea2, tmp_path, capsys):
    """Folders diffkit does not drive (from the JSON alone), bad library arguments and what the command does not
    take for Krea 2 (img2img, textual inversion, IP-Adapter, sizes): one line each, no file written."""
    _, path, model = tiny_krea2
    for i, (file, change, expected) in enumerate([
            ("model_index.json", {"_class_name": "QwenImagePipeline"}, "is not a Krea 2 folder"),
            ("model_index.json", {"text_encoder": ["transformers", "Qwen3Model"]}, "allowed: Qwen3VLModel"),
            ("model_index.json", {"patch_size": 1}, "patch_size=1; allowed: 2"),
            ("model_index.json", {"text_encoder_select_layers": [0, 1]}, "give 3 (the transformer's num_text_layers)"),
            ("model_index.json", {"text_encoder_select_layers": [0, 1, 3]}, "indices in 0..2"),
            ("transformer/config.json", {"in_channels": 64}, "allowed: 16 (4 x the VAE's z_dim)"),
            ("transformer/config.json", {"text_hidden_dim": 64}, "text_hidden_dim=64 does not fit"),
            ("scheduler/scheduler_config.json", {"invert_sigmas": True}, "allowed: invert_sigmas=false")]):
        with pytest.raises(DiffkitError) as caught:
            check_krea2_folder(changed_copy(path, tmp_path / str(i), file, change))
        assert expected in str(caught.value) and "\n" not in str(caught.value)
    for call, expected in [({"max_sequence_length": 0}, "max_sequence_length=0 is not allowed; give a positive"),
                           ({"guidance_scale": 1.0, "negative_prompt": "x"}, "a negative prompt with guidance_scale=1"),
                           ({"height": 30}, "multiples of 8"), ({"ip_adapter": object()}, "IP-Adapter is not allowed"),
                           ({"guidance_scale": float("nan")}, "give a finite number")]:
        with pytest.raises(DiffkitError, match=expected):
            text_to_image(model, "hot", steps=1, **{"height": SIZE, "width": SIZE, **call})
    assert_sample_refusals(main, path, tmp_path, capsys, [
        (["--textual-inversion", str(tmp_path / "x.pt")], "--textual-inversion"),
        (["--prompt-2", "x"], "--prompt-2 does not apply to a Krea 2 folder"),
        (["--height", "30"], "--height 30 is not allowed; give a positive multiple of 8")], label="a Krea 2")


KREA2_LORA = dict(r=4, lora_alpha=8.0, target_modules=[
    "to_q", "to_k", "to_v", "to_out.0", "to_gate", "gate", "up", "down", "img_in", "projector", "time_mod_proj",
    "linear_1", "linear_2", "linear"],
                  rank_pattern={"to_k": 2}, alpha_pattern={"to_v": 3.0})
ORIGINAL = ["first", "last.linear", "tmlp.0", "tmlp.2", "tproj.1", "txtmlp.1", "txtmlp.3", "txtfusion.projector"] + [
    f"{block}.0.{kind}.{sub}" for block in ("blocks", "txtfusion.layerwise_blocks", "txtfusion.refiner_blocks")
    for kind, subs in (("attn", ("wq", "wk", "wv", "wo", "gate")), ("mlp", ("gate", "up", "down"))) for sub in subs]


def test_krea2_lora_is_load_lora_weights_and_fuse_lora(tiny_krea2, tmp_path, capsys):
    """A diffusers-format file (Krea2Pipeline.save_lora_weights, rank / alpha patterns, every Linear) at 0.6:
    load_lora_weights + fuse_lora's weights and z_0; ``diffkit sample --lora`` is the library; a kohya key: one line.
    The same tensors under the original krea-2 module names (diffusers' own converter names them), under
    ``diffusion_model.`` and (half of them) ai-toolkit's ``base_model.model.``: Krea2Pipeline.lora_state_dict's keys
    and tensors, merged as its load_lora_weights + fuse_lora."""
    import copy
    import types
    from safetensors.torch import load_file, save_file
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_krea2_lora_to_diffusers as convert
    from test_sd_lora import check_transformer_lora, fused_transformer_lora
    from diffkit.interop.krea2_lora import krea2_tensors, read_krea2_loras
    from diffkit.interop.sd_lora import merge_sd_loras
    pipe, path, model = tiny_krea2
    lora, fused = fused_transformer_lora(diffusers.Krea2Pipeline, path, tmp_path, KREA2_LORA, scale=0.6)
    ours = load_krea2(path, progress=False, lora=[(lora, 0.6)])
    noise, call = _noise(), dict(steps=3, return_latents=True, negative_prompt="ugly", max_sequence_length=LENGTH)
    z0 = text_to_image(ours, PROMPTS, latents=noise, **call)
    error = relative_error(z0, _theirs(fused, noise, negative_prompt="ugly"))
    assert error < 1e-5 and relative_error(z0, text_to_image(model, PROMPTS, latents=noise, **call)) > 1e-3
    worst = check_transformer_lora(path, lora, 0.6, ours, model, fused, text_to_image, tmp_path, capsys,
                                   "lora_unet_blocks_0_attn_wq.lora_down.weight", "a Krea 2 folder (")
    print("Krea2Pipeline LoRA latents", error, "weights", worst)  # (after capsys' reads)
    assert worst < 1e-6
    original = {next(iter(convert({f"{o}.lora_A.weight": None}))).removesuffix(".lora_A.weight"): o for o in ORIGINAL}
    tensors, file = load_file(lora), tmp_path / "original.safetensors"
    assert {k.rsplit(".lora_", 1)[0] for k in tensors} == set(original)  # every module, every original name
    renamed = {("base_model.model." if j % 2 else "diffusion_model.") + original[k.rsplit(".lora_", 1)[0]] + ".lora_"
               + k.rsplit(".lora_", 1)[1]: v for j, (k, v) in enumerate(sorted(tensors.items()))}
    save_file(renamed, file)  # no lora_adapter_metadata: alpha = r on both sides
    theirs, mine = diffusers.Krea2Pipeline.lora_state_dict(str(file)), krea2_tensors(file, renamed)
    assert sorted(mine) == sorted(theirs) == sorted(tensors) and all(torch.equal(mine[k], theirs[k]) for k in mine)
    theirs = diffusers.Krea2Pipeline(**{**pipe.components, "transformer": copy.deepcopy(pipe.transformer)})
    theirs.load_lora_weights(str(file))
    theirs.fuse_lora(lora_scale=0.4)
    theirs.unload_lora_weights()
    mine = types.SimpleNamespace(transformer=copy.deepcopy(model.transformer))
    merge_sd_loras(mine, read_krea2_loras([(file, 0.4)]))
    theirs, base = theirs.transformer.state_dict(), model.transformer.state_dict()
    worst = max(float((v - theirs[k]).abs().max()) for k, v in mine.transformer.state_dict().items())
    print("original-name file", worst)
    assert worst < 1e-6 and max(float((v - base[k]).abs().max()) for k, v in theirs.items()) > 1e-2


def test_krea2_lora_files_the_loader_would_not_load_are_refused(tmp_path):
    """What Krea2LoraLoaderMixin does not load as the file says (drops silently, or fails on): one line naming the
    file's key."""
    from test_sd_lora import assert_files_refused
    from diffkit.interop.krea2_lora import read_krea2_loras
    a, b = "transformer_blocks.0.attn.to_q.lora_A.weight", "transformer_blocks.0.attn.to_q.lora_B.weight"
    good = {"transformer." + a: torch.ones(2, 32), "transformer." + b: torch.ones(32, 2)}
    original = {"diffusion_model.blocks.0.attn.wq.lora_A.weight": torch.ones(2, 32),
                "diffusion_model.blocks.0.attn.wq.lora_B.weight": torch.ones(32, 2)}
    assert_files_refused(read_krea2_loras, tmp_path, [({**base, **change}, expected) for base, change, expected in [
            (good, {"transformer.transformer_blocks.0.attn.to_q.alpha": torch.tensor(1.0)}, "to_q.alpha' is not"),
            (good, {"text_encoder.q_proj.lora_A.weight": torch.ones(2, 4)}, "adapts the transformer only"),
            (good, {"transformer.transformer_blocks.0.attn.dora_scale": torch.ones(1, 32)}, "drops dora_scale"),
            (original, {"diffusion_model.blocks.0.attn.dora_scale": torch.ones(1, 32)}, "drops dora_scale"),
            (original, {"diffusion_model.blocks.0.attn.qkv.lora_A.weight": torch.ones(2, 32)}, "attn.qkv.lora_A"),
            (original, {"diffusion_model.blocks.0.norm.lora_A.weight": torch.ones(2, 32)}, "original krea-2 modules"),
            (original, {"diffusion_model.blocks.0.attn.wq.alpha": torch.tensor(1.0)}, "wq.alpha' is not supported"),
            (original, good, "'transformer.transformer_blocks.0.attn.to_q.lora_A.weight' is not supported"),
            (original, {"base_model.model.blocks.0.attn.wq.lora_A.weight": torch.ones(2, 32)}, "are one key once"),
            (good, {"transformer.transformer_blocks.0.ff.up.lokr_w1": torch.ones(2, 2)}, "is a LyCORIS LoKr tensor")]])
