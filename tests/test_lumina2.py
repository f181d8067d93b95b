"""Lumina-Image 2.0 folders (diffkit.interop.lumina2): diffkit's text_to_image against diffusers' own Lumina2Pipeline on
a tiny random folder (the tiny Gemma-2 and tokenizer of tests/_sana_helpers.py, the FLUX test VAE; nothing
downloaded), and ``diffkit sample`` on it (the library's grid byte for byte; what does not apply refused in one
line)."""
import json
import re
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.lumina2 import SYSTEM_PROMPT, is_lumina2_folder, load_lumina2, text_to_image  # noqa: E402

from _sana_helpers import check_sample_command, tiny_gemma, tiny_gemma_tokenizer  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_flux import tiny_flux_vae  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]


def tiny_lumina2_pipeline(scheduler):
    """A Lumina2Pipeline of random weights: Gemma-2 of 2 layers (hidden 32; the pipeline reads the second-to-last
    states), a next-DiT of 1 layer and 1 refiner layer (2 heads of 16, patch 2, sample_size 8), the FLUX test VAE."""
    tokenizer = tiny_gemma_tokenizer()
    torch.manual_seed(0)
    gemma = tiny_gemma(tokenizer, layers=2, positions=512)
    transformer = diffusers.Lumina2Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, hidden_size=32, num_layers=1, num_refiner_layers=1,
        num_attention_heads=2, num_kv_heads=1, multiple_of=16, axes_dim_rope=(4, 6, 6), axes_lens=(300, 32, 32),
        cap_feat_dim=32)
    pipe = diffusers.Lumina2Pipeline(transformer=transformer, scheduler=scheduler, vae=tiny_flux_vae(),
                                     text_encoder=gemma, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """(pipeline, folder, Lumina2) of one tiny folder with the released fixed shift 6, the pipeline loaded back."""
    path = tmp_path_factory.mktemp("lumina2") / "lumina2"
    tiny_lumina2_pipeline(diffusers.FlowMatchEulerDiscreteScheduler(shift=6.0)).save_pretrained(path)
    return reloaded(path, diffusers.Lumina2Pipeline, load_lumina2)


def _both(pipe, lumina, steps=3, size=16, **call):
    """(diffkit's z_0, the pipeline's) from the same latents (2, 16, size / 8, size / 8)."""
    from _pixart_helpers import pipeline_and_library
    return pipeline_and_library(pipe, lumina, text_to_image, PROMPTS, 16, steps, size, **call)


def test_lumina2_encodes_and_samples_as_the_pipeline(folder):
    """The system prompt and Gemma-2's second-to-last states (the negative prompt without it); guided sampling with
    cfg_normalization (the default) against a negative prompt, with cfg_trunc_ratio 0.5, without normalisation,
    and unguided (s = 1)."""
    pipe, path, lumina = folder
    assert is_lumina2_folder(path) and lumina.latent_shape(1) == (1, 16, 8, 8)
    theirs = pipe.encode_prompt(PROMPTS, negative_prompt="ugly")
    context, mask = lumina.encode_prompts(PROMPTS)
    assert context.shape[:2] == mask.shape == (2, 256) and torch.equal(mask, theirs[1])
    assert torch.equal(context, theirs[0])
    null, null_mask = lumina.encode_prompts(["ugly"] * 2, 256, None)
    assert torch.equal(null, theirs[2]) and torch.equal(null_mask, theirs[3])
    ours, theirs = _both(pipe, lumina, negative_prompt="ugly blurry")
    assert relative_error(ours, theirs) < 1e-5  # measured: see docs/interop.md
    ours, theirs = _both(pipe, lumina, steps=4, size=32, negative_prompt="ugly", cfg_trunc_ratio=0.5,
                         guidance_scale=5.0)
    assert relative_error(ours, theirs) < 1e-5
    ours, theirs = _both(pipe, lumina, cfg_normalization=False, system_prompt="be good")
    assert relative_error(ours, theirs) < 1e-5
    ours, theirs = _both(pipe, lumina, steps=2, guidance_scale=1.0)
    assert relative_error(ours, theirs) < 1e-5


def test_lumina2_dynamic_shifting_uses_the_pipelines_mu(folder):
    """A use_dynamic_shifting scheduler: mu from latents.shape[1] (the 16 channels), as the pipeline."""
    pipe, _, lumina = folder
    saved, own = pipe.scheduler, (lumina.scheduler_config, lumina.schedule)
    try:
        pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5,
                                                                   max_shift=1.15)
        lumina.scheduler_config = dict(pipe.scheduler.config, _class_name="FlowMatchEulerDiscreteScheduler")
        ours, theirs = _both(pipe, lumina, negative_prompt="ugly", cfg_trunc_ratio=0.7)
        assert relative_error(ours, theirs) < 1e-5
    finally:
        pipe.scheduler = saved
        lumina.scheduler_config, lumina.schedule = own


def test_sample_command_is_the_library_and_refuses_what_does_not_apply(folder, tmp_path, capsys):
    _, path, lumina = folder
    check_sample_command(path, lumina, text_to_image, tmp_path, capsys, PROMPTS, (16, 32), [
        (["--guidance-rescale", "0.5", "--guidance-scale", "2"], "--guidance-rescale does not apply to a Lumina2"),
        (["--clip-skip", "1"], "--clip-skip does not apply to a Lumina2 folder"),
        (["--height", "24"], "--height 24 is not allowed; give a positive multiple of 16")])
    from _sana_helpers import check_option_flags  # Lumina2Pipeline's cfg_trunc_ratio and cfg_normalization=False
    check_option_flags(path, lumina, text_to_image, tmp_path, 4, 16, ["--cfg-trunc-ratio", "0.5",
                       "--no-cfg-normalization"], {"cfg_trunc_ratio": 0.5, "cfg_normalization": False})
    other = tmp_path / "other"
    shutil.copytree(path, other)
    (other / "model_index.json").write_text(json.dumps({**json.loads((path / "model_index.json").read_text()),
                                                        "_class_name": "SanaPipeline"}))
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(other), "--prompt", "hot", "--no-cfg-normalization",
                 "--out", str(tmp_path / "never.png")]) == 2
    assert "--no-cfg-normalization applies to a Lumina-Image 2.0 folder" in capsys.readouterr().err
    assert not (tmp_path / "never.png").exists()
    assert main(["edit", "--checkpoint", str(path), "--images", str(tmp_path), "--prompt", "hot",
                 "--out", str(tmp_path / "never")]) == 2
    assert "is a Lumina2 folder, which diffkit edit does not take" in capsys.readouterr().err


@pytest.mark.parametrize("file,change,expected", [
    ("model_index.json", {"_class_name": "LuminaPipeline"}, "'LuminaPipeline' folder, which diffkit does not drive"),
    ("model_index.json", {"text_encoder": ["transformers", "T5EncoderModel"]}, "allowed: Gemma2Model"),
    ("scheduler/scheduler_config.json", {"stochastic_sampling": True}, "stochastic_sampling=True")])
def test_what_lumina2_does_not_support_is_refused_in_one_line(folder, tmp_path, file, change, expected):
    _, path, _ = folder
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    data = json.loads((copy / file).read_text())
    (copy / file).write_text(json.dumps({**data, **change}))
    with pytest.raises(DiffkitError, match=expected.replace("(", r"\(").replace(")", r"\)")) as info:
        load_lumina2(copy, progress=False)
    assert "\n" not in str(info.value)


def test_bad_options_are_one_line_errors(folder):
    _, _, lumina = folder
    for kw, expected in [({"cfg_trunc_ratio": float("nan")}, "cfg_trunc_ratio=nan is not allowed"),
                         ({"max_sequence_length": 600}, "max_sequence_length=600 is not allowed"),
                         ({"resolution_binning": True}, "no resolution binning"),
                         ({"height": 24}, "height x width 24x16 is not allowed")]:
        with pytest.raises(DiffkitError, match=expected) as info:
            text_to_image(lumina, "cat", steps=1, width=16, **{"height": 16, **kw})
        assert "\n" not in str(info.value)
    assert SYSTEM_PROMPT.startswith("You are an assistant")


LUMINA2_LORA = dict(r=4, lora_alpha=8.0, target_modules=["to_q", "to_k", "to_v", "to_out.0", "linear_1", "linear_2"],
                    rank_pattern={"to_k": 2}, alpha_pattern={"to_v": 3.0})


def test_lumina2_lora_is_load_lora_weights_and_fuse_lora(folder, tmp_path, capsys):
    """A diffusers-format file (Lumina2Pipeline.save_lora_weights) at 0.3: load_lora_weights + fuse_lora's weights
    and z_0; ``diffkit sample --lora`` is the library; a kohya key: one line."""
    from test_sd_lora import check_transformer_lora, fused_transformer_lora
    _, path, lumina = folder
    lora, pipe = fused_transformer_lora(diffusers.Lumina2Pipeline, path, tmp_path, LUMINA2_LORA, scale=0.3)
    ours = load_lumina2(path, progress=False, lora=[(lora, 0.3)])
    z0, expected = _both(pipe, ours, negative_prompt="ugly")
    assert relative_error(z0, expected) < 1e-5  # 1.0e-6 measured
    assert check_transformer_lora(path, lora, 0.3, ours, lumina, pipe, text_to_image, tmp_path, capsys,
                                  "lora_unet_layers_0_attn_to_q.lora_down.weight",
                                  "a Lumina-Image 2.0 folder (diffusers 0.42.1's Lumina2 loader converts no") < 1e-6
    # 6.0e-8 measured


def original_lumina2_lora(rank=2, ff=64):
    """{diffusion_model. key: tensor} of a random LoRA in the Lumina-Image 2.0 code's names, at its attention sizes
    (2304 / 768 / 768: the rows diffusers' converter splits qkv into) for one block of each kind (``ff``: the
    feed-forward width; adaLN's 1024 -> 4 x 2304)."""
    torch.manual_seed(3)
    shapes = {"attention.qkv": (2304, 3840), "attention.out": (2304, 2304), "feed_forward.w1": (2304, ff),
              "feed_forward.w2": (ff, 2304), "feed_forward.w3": (2304, ff), "adaLN_modulation.1": (1024, 9216)}
    tensors = {}
    for block in ("layers.0", "noise_refiner.0", "context_refiner.0"):
        for module, (fan_in, fan_out) in shapes.items():
            if module.startswith("adaLN") and block.startswith("context"):
                continue
            tensors[f"diffusion_model.{block}.{module}.lora_A.weight"] = torch.randn(rank, fan_in)
            tensors[f"diffusion_model.{block}.{module}.lora_B.weight"] = torch.randn(fan_out, rank)
    return tensors


def test_original_format_lumina2_lora_is_mapped_as_diffusers_and_odd_files_are_refused(tmp_path):
    """A diffusion_model. file: diffkit's keys and tensors are Lumina2Pipeline.lora_state_dict's (its converter),
    exactly; what that converter would fail on (or drop) is one line."""
    from safetensors.torch import save_file
    from diffkit.interop.lumina2_lora import convert_lumina2_lora
    tensors = original_lumina2_lora()
    save_file(tensors, tmp_path / "original.safetensors")
    theirs = diffusers.Lumina2Pipeline.lora_state_dict(str(tmp_path / "original.safetensors"))
    ours = convert_lumina2_lora("x", tensors)
    assert sorted(ours) == sorted(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert convert_lumina2_lora("x", {"transformer.a.lora_A.weight": 1}) == {"transformer.a.lora_A.weight": 1}
    qkv = "diffusion_model.layers.0.attention.qkv.lora_B.weight"
    for change, expected in [({"diffusion_model.layers.0.dora_scale": torch.ones(1)}, "drops DoRA scales"),
                             ({"diffusion_model.layers.0.attention.qkv.alpha": torch.ones(())}, "is not one"),
                             ({qkv: torch.zeros(96, 2)}, "has shape (96, 2); allowed: 3840 rows"),
                             ({"transformer.x.lora_A.weight": torch.ones(1)}, "beside 'diffusion_model.' keys"),
                             ({"diffusion_model.layers.1.attention.out.lora_A.weight": torch.ones(1)},
                              "'diffusion_model.layers.1.attention.qkv.lora_A.weight' is missing")]:
        with pytest.raises(DiffkitError, match=re.escape(expected)) as info:
            convert_lumina2_lora("x", {**tensors, **change})
        assert "\n" not in str(info.value)
