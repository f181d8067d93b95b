"""Lumina-Next folders (diffkit.interop.lumina_next): diffkit's text_to_image against diffusers' own LuminaPipeline on a
tiny random folder (a GemmaModel over the word-level tokenizer of tests/_sana_helpers.py, PixArt's test VAE; nothing
downloaded), and ``diffkit sample`` on it (the library's grid byte for byte; what does not apply refused in one
line)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.lumina_next import is_lumina_next_folder, load_lumina_next, text_to_image  # noqa: E402

from _sana_helpers import check_sample_command, tiny_gemma_tokenizer  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402

PROMPTS = ["a photo of a Cat ", "hot dog"]


def tiny_lumina_next_pipeline():
    """A LuminaPipeline of random weights: Gemma of 2 layers (hidden 32; the pipeline reads the second-to-last
    states), a Next-DiT of 1 layer (2 heads of 16, 1 KV head, patch 2, sample_size 8: default 64 px, learned
    variance), PixArt's 2-level test VAE, FlowMatchEulerDiscreteScheduler(shift=3)."""
    from _pixart_helpers import tiny_pixart_pipeline
    tokenizer = tiny_gemma_tokenizer()
    torch.manual_seed(0)
    gemma = transformers.GemmaModel(transformers.GemmaConfig(
        vocab_size=len(tokenizer.get_vocab()), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512)).eval()
    transformer = diffusers.LuminaNextDiT2DModel(
        sample_size=8, patch_size=2, in_channels=4, hidden_size=32, num_layers=1, num_attention_heads=2,
        num_kv_heads=1, multiple_of=16, cross_attention_dim=32)
    with torch.no_grad():  # its gates start at zero (no cross-attention): give them weights; its pad_token is
        transformer.pad_token.normal_(0, 0.5)  # torch.empty (whatever the memory held, NaN at times): drawn too
        for p in transformer.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.5)
    pipe = diffusers.LuminaPipeline(transformer=transformer, vae=tiny_pixart_pipeline().vae, text_encoder=gemma,
                                    tokenizer=tokenizer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def lumina_next_folder(tmp_path_factory):
    """(pipeline, folder, LuminaNext) of one tiny folder, the pipeline loaded back."""
    path = tmp_path_factory.mktemp("lumina_next") / "lumina_next"
    tiny_lumina_next_pipeline().save_pretrained(path)
    return reloaded(path, diffusers.LuminaPipeline, load_lumina_next)


def _both(pipe, lumina, steps=3, size=32, **call):
    """(diffkit's z_0, the pipeline's (``clean_caption=False``)) from the same latents (2, 4, size / 8, size / 8)."""
    from _pixart_helpers import pipeline_and_library
    return pipeline_and_library(pipe, lumina, text_to_image, PROMPTS, 4, steps, size, {"clean_caption": False}, **call)


def test_lumina_next_encodes_and_samples_as_the_pipeline(lumina_next_folder):
    """Prompts lower-cased, padded to the longest (a multiple of 8), Gemma's second-to-last states, the negative
    prompt as given at that length; guided sampling (3 channels) at 32 px (RoPE interpolated, proportional
    attention), at 64 px with a watershed (NTK-scaled from time 0.5 on) and no proportional attention, and
    unguided."""
    pipe, path, lumina = lumina_next_folder
    assert is_lumina_next_folder(path) and lumina.latent_shape(1) == (1, 4, 8, 8)
    theirs = pipe.encode_prompt(PROMPTS, negative_prompt="Ugly")
    context, mask = lumina.encode_prompts(PROMPTS)
    assert context.shape[1] % 8 == 0 and torch.equal(mask, theirs[1]) and torch.equal(context, theirs[0])
    null, null_mask = lumina.encode_negative_prompts(["Ugly"] * 2, context.shape[1])
    assert torch.equal(null, theirs[2]) and torch.equal(null_mask, theirs[3])
    ours, theirs = _both(pipe, lumina, negative_prompt="ugly blurry")
    assert relative_error(ours, theirs) < 1e-5  # measured: see docs/interop.md
    ours, theirs = _both(pipe, lumina, steps=4, size=48, guidance_scale=5.0, scaling_watershed=0.5,
                         proportional_attn=False)
    assert relative_error(ours, theirs) < 1e-5
    ours, theirs = _both(pipe, lumina, steps=2, guidance_scale=1.0)
    assert relative_error(ours, theirs) < 1e-5


def test_sample_command_is_the_library_and_refuses_what_does_not_apply(lumina_next_folder, tmp_path, capsys):
    _, path, lumina = lumina_next_folder
    check_sample_command(path, lumina, text_to_image, tmp_path, capsys, PROMPTS, (32, 48), [
        (["--max-sequence-length", "64"], "--max-sequence-length does not apply to a Lumina-Next folder"),
        (["--lora", str(tmp_path / "x.safetensors")], "--lora does not apply to a Lumina-Next folder"),
        (["--cfg-trunc-ratio", "0.5"], "--cfg-trunc-ratio applies to a Lumina-Image 2.0 folder"),
        (["--height", "24"], "--height 24 is not allowed; give a positive multiple of 16")])
    from _pixart_helpers import assert_sample_refusals, edited_copy
    from diffkit.cli import main
    assert_sample_refusals(main, path, tmp_path, capsys, [], "a Lumina-Next")
    from _sana_helpers import check_option_flags  # LuminaPipeline's scaling_watershed and proportional_attn=False
    check_option_flags(path, lumina, text_to_image, tmp_path, 3, 48, ["--scaling-watershed", "0.5",
                       "--no-proportional-attn"], {"scaling_watershed": 0.5, "proportional_attn": False})
    other = edited_copy(path, tmp_path / "other", "model_index.json", {"_class_name": "Lumina2Pipeline"})
    assert_sample_refusals(main, other, tmp_path, capsys, [
        (["--no-proportional-attn"], "--no-proportional-attn applies to a Lumina-Next folder (LuminaPipeline's RoPE"),
        (["--scaling-watershed", "0.5"], "--scaling-watershed applies to a Lumina-Next folder")])


@pytest.mark.parametrize("file,change,expected", [
    ("model_index.json", {"_class_name": "Lumina2Pipeline"}, "is not a Lumina-Next folder"),
    ("model_index.json", {"text_encoder": ["transformers", "Gemma2Model"]}, "allowed: GemmaModel"),
    ("transformer/config.json", {"learn_sigma": False}, "learn_sigma=False; allowed: True"),
    ("scheduler/scheduler_config.json", {"use_dynamic_shifting": True}, "use_dynamic_shifting=True, for which"),
    ("scheduler/scheduler_config.json", {"stochastic_sampling": True}, "stochastic_sampling=True")])
def test_what_lumina_next_does_not_support_is_refused_in_one_line(lumina_next_folder, tmp_path, file, change,
                                                                   expected):
    from _pixart_helpers import edited_copy
    copy = edited_copy(lumina_next_folder[1], tmp_path / "copy", file, change)
    with pytest.raises(DiffkitError, match=expected) as info:
        load_lumina_next(copy, progress=False)
    assert "\n" not in str(info.value)


def test_a_folder_of_the_pipelines_old_name_loads(lumina_next_folder, tmp_path):
    """model_index.json naming LuminaText2ImgPipeline (diffusers' name before LuminaPipeline): the same folder."""
    from _pixart_helpers import edited_copy
    from diffkit.interop.pixart import masked_text_folder
    copy = edited_copy(lumina_next_folder[1], tmp_path / "old", "model_index.json",
                       {"_class_name": "LuminaText2ImgPipeline"})
    assert masked_text_folder(copy) == "Lumina-Next" and load_lumina_next(copy, progress=False).latent_shape(1)


def test_bad_lumina_next_options_are_one_line_errors(lumina_next_folder):
    lumina = lumina_next_folder[2]
    for kw, expected in [({"scaling_watershed": float("nan")}, "scaling_watershed=nan is not allowed"),
                         ({"proportional_attn": "yes"}, "proportional_attn='yes' is not allowed"),
                         ({"max_sequence_length": 64}, "max_sequence_length=64 does not apply"),
                         ({"resolution_binning": True}, "no resolution binning"),
                         ({"height": 24}, "height x width 24x16 is not allowed")]:
        with pytest.raises(DiffkitError, match=expected) as info:
            text_to_image(lumina, "cat", steps=1, width=16, **{"height": 16, **kw})
        assert "\n" not in str(info.value)
