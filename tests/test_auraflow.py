"""AuraFlow folders (diffkit.interop.auraflow): diffkit's text_to_image against diffusers' own AuraFlowPipeline on a
tiny random folder (a UMT5 encoder with the unigram tokenizer of tests/test_interop_sd3.py, an
AuraFlowTransformer2DModel of one MMDiT and one single block, the tiny VAE of tests/_pixart_helpers.py; nothing
downloaded), and ``diffkit sample`` on it (the library's grid byte for byte; flags that do not apply: one line)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import save_grid  # noqa: E402
from diffkit.interop.auraflow import is_auraflow_folder, load_auraflow, text_to_image  # noqa: E402

from _pixart_helpers import assert_sample_refusals, cfg_sample_argv, edited_copy, tiny_pixart_pipeline  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd3 import T5_WORDS, tiny_t5_tokenizer  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402

PROMPTS = ["a photo of a Cat", "hot dog"]  # mixed case: AuraFlow does not lower-case


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """(pipeline loaded from the folder, folder, AuraFlow) of a tiny random AuraFlowPipeline."""
    torch.manual_seed(0)
    umt5 = transformers.UMT5EncoderModel(transformers.UMT5Config(
        vocab_size=4 + len(T5_WORDS), d_model=32, d_kv=8, d_ff=40, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, dropout_rate=0.0)).eval()
    transformer = diffusers.AuraFlowTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=1,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
        out_channels=4, pos_embed_max_size=64)
    with torch.no_grad():  # diffusers zero-initialises no AuraFlow layer; keep the outputs of order 1
        transformer.proj_out.weight.mul_(4)
    vae = tiny_pixart_pipeline().vae  # 2 levels: f = 2
    pipe = diffusers.AuraFlowPipeline(tokenizer=tiny_t5_tokenizer(), text_encoder=umt5, vae=vae,
                                      transformer=transformer,
                                      scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=1.73))
    path = tmp_path_factory.mktemp("auraflow") / "aura"
    pipe.save_pretrained(path)
    return reloaded(path, diffusers.AuraFlowPipeline, load_auraflow)


@pytest.mark.parametrize("scale,negative,length", [(4.0, "ugly blurry", 12), (1.0, None, None)])
def test_auraflow_matches_the_pipeline(folder, scale, negative, length):
    """z_0 from the same z equals AuraFlowPipeline's (CFG with a negative prompt; s = 1: its unguided loop)."""
    pipe, _, aura = folder
    assert is_auraflow_folder(folder[1]) and aura.vae_scale_factor == 2
    noise = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = pipe(PROMPTS, negative_prompt=negative, num_inference_steps=3, latents=noise.clone(),
                      guidance_scale=scale, height=16, width=24, output_type="latent",
                      **({} if length is None else {"max_sequence_length": length})).images
    ours = text_to_image(aura, PROMPTS, steps=3, latents=noise.clone(), guidance_scale=scale, height=16, width=24,
                         negative_prompt=negative, max_sequence_length=length, return_latents=True)
    assert theirs.abs().max() > 0.5
    assert relative_error(ours, theirs) < 1e-5  # measured 4.1e-7 (CFG), 1.5e-7 (s = 1)
    images = text_to_image(aura, PROMPTS, steps=3, latents=noise.clone(), guidance_scale=scale, height=16, width=24,
                           negative_prompt=negative, max_sequence_length=length)
    with torch.no_grad():
        decoded = pipe.vae.decode(theirs / pipe.vae.config.scaling_factor, return_dict=False)[0]
    assert relative_error(images, (decoded / 2 + 0.5).clamp(0, 1)) < 1e-5


def test_prompt_states_are_masked_and_bad_input_refused(folder):
    """The padding states are zeroed (the pipeline's embeds x mask); bad values: one line."""
    _, _, aura = folder
    context, mask = aura.encode_prompts(["hot dog"], 6)
    assert mask.tolist() == [[1, 1, 1, 0, 0, 0]] and context[0, 3:].abs().max() == 0 and context[0, :3].abs().min() > 0
    for call, expected in [
        (dict(negative_prompt="ugly", guidance_scale=1.0), "a negative prompt with guidance_scale=1"),
        (dict(max_sequence_length=0), "max_sequence_length=0 is not allowed; allowed: 1..512"),
        (dict(height=18), "height x width 18x16 is not allowed; give positive multiples of 4"),
        (dict(height=40), "height x width 40x16 is not allowed; give sides of at most 32"),
        (dict(resolution_binning=True), "resolution_binning is not allowed")]:
        with pytest.raises(DiffkitError, match=expected):
            text_to_image(aura, "hot", steps=1, **{"height": 16, "width": 16, **call})


def test_sample_command_is_the_library_and_refuses_what_does_not_apply(folder, tmp_path, capsys):
    _, path, aura = folder
    out = tmp_path / "grid.png"
    assert main(cfg_sample_argv(path, PROMPTS, out, "--height", "16", "--width", "32", "--max-sequence-length",
                                "10")) == 0
    images = text_to_image(aura, PROMPTS, steps=2, seed=5, height=16, width=32, negative_prompt="ugly",
                           guidance_scale=3.0, max_sequence_length=10, output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert_sample_refusals(main, path, tmp_path, capsys, [
        (["--guidance-rescale", "0.5", "--guidance-scale", "2"], "--guidance-rescale does not apply to an AuraFlow"),
        (["--flow-shift", "2"], "--flow-shift does not apply to an AuraFlow folder"),
        (["--clip-skip", "1"], "--clip-skip does not apply to an AuraFlow folder"),
        (["--height", "18"], "--height 18 is not allowed; give a positive multiple of 4")], "an AuraFlow")


@pytest.mark.parametrize("file,change,expected", [
    ("model_index.json", {"text_encoder": ["transformers", "T5EncoderModel"]}, "text_encoder is a 'T5EncoderModel'"),
    ("transformer/config.json", {"in_channels": 16}, "in_channels, out_channels = 16, 4; allowed"),
    ("scheduler/scheduler_config.json", {"use_dynamic_shifting": True}, "use_dynamic_shifting=True, for which"),
])
def test_folders_diffkit_does_not_drive_are_refused(folder, tmp_path, file, change, expected):
    with pytest.raises(DiffkitError, match=expected):
        load_auraflow(edited_copy(folder[1], tmp_path / "copy", file, change), progress=False)


AURAFLOW_LORA = dict(r=4, lora_alpha=8.0, target_modules=["to_q", "to_k", "to_v", "add_q_proj", "to_out.0", "linear_1",
                                                          "proj_out"], rank_pattern={"to_k": 2},
                     alpha_pattern={"to_v": 3.0})


def test_auraflow_lora_is_load_lora_weights_and_fuse_lora(folder, tmp_path, capsys):
    """A diffusers-format file (AuraFlowPipeline.save_lora_weights) at 0.3: load_lora_weights + fuse_lora's weights
    and z_0; ``diffkit sample --lora`` is the library; a key the loader does not load (kohya): one line."""
    from test_sd_lora import check_transformer_lora, fused_transformer_lora
    _, path, aura = folder
    lora, pipe = fused_transformer_lora(diffusers.AuraFlowPipeline, path, tmp_path, AURAFLOW_LORA, scale=0.3)
    ours = load_auraflow(path, progress=False, lora=[(lora, 0.3)])
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = pipe(PROMPTS, negative_prompt="ugly", num_inference_steps=3, latents=noise.clone(), height=16,
                        width=16, output_type="latent").images
    z0 = text_to_image(ours, PROMPTS, steps=3, latents=noise, negative_prompt="ugly", return_latents=True)
    assert relative_error(z0, expected) < 1e-5  # 4.2e-7 measured
    assert check_transformer_lora(path, lora, 0.3, ours, aura, pipe, text_to_image, tmp_path, capsys,
                                  "lora_unet_joint_transformer_blocks_0_attn_to_q.lora_down.weight",
                                  "an AuraFlow folder") < 1e-6  # 1.2e-7 measured
