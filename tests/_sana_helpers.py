"""A tiny random SanaPipeline folder (tests/test_sana.py): a Gemma2Model with a word-level GemmaTokenizer built
here (BOS added, no download), a 1-layer SanaTransformer2DModel, a 2-level AutoencoderDC (factor 2) and Sana's
flow DPMSolverMultistepScheduler (use_flow_sigmas, flow_shift 3), written by save_pretrained."""
import json
import shutil

import torch

import diffusers
import transformers

SANA_WORDS = "a photo of cat hot dog ugly blurry the user prompt".split()


def tiny_gemma_tokenizer():
    """transformers' GemmaTokenizer (BPE, "▁" for spaces) over single letters and merges spelling SANA_WORDS."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    merges = []
    for piece in ["\u2581"] + sorted({c for w in SANA_WORDS for c in w}):
        vocab.setdefault(piece, len(vocab))
    for word in SANA_WORDS:
        for spelled in (word, "\u2581" + word):
            for i in range(2, len(spelled) + 1):
                if spelled[:i] not in vocab:
                    merges.append((spelled[:i - 1], spelled[i - 1]))
                    vocab[spelled[:i]] = len(vocab)
    return transformers.GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)


def tiny_gemma(tokenizer, layers=1, positions=2048):
    """A Gemma2Model of random weights (hidden 32, 2 heads of 16, ``layers`` layers) over ``tokenizer``'s vocabulary."""
    return transformers.Gemma2Model(transformers.Gemma2Config(
        vocab_size=len(tokenizer.get_vocab()), hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=positions,
        query_pre_attn_scalar=16, sliding_window=64)).eval()


def check_sample_command(path, model, text_to_image, tmp_path, capsys, prompts, size, refusals):
    """``diffkit sample`` on a masked-text folder (PixArt's command path) writes the library's grid byte for byte
    (``size``: (height, width)), and each of ``refusals`` ([extra flags, expected text]) is one line, exit 2,
    no file."""
    from diffkit.cli import main
    from diffkit.images import save_grid
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", prompts[0], "--prompt", prompts[1], "--num", "2",
                 "--nrow", "1", "--steps", "3", "--seed", "5", "--batch-size", "2", "--height", str(size[0]),
                 "--width", str(size[1]), "--negative-prompt", "ugly", "--guidance-scale", "3",
                 "--guidance-convention", "diffusers", "--out", str(out), "--no-progress"]) == 0
    images = text_to_image(model, prompts, steps=3, seed=5, height=size[0], width=size[1], negative_prompt="ugly",
                           guidance_scale=3.0, output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    from _pixart_helpers import assert_sample_refusals
    assert_sample_refusals(main, path, tmp_path, capsys, refusals)


def check_option_flags(path, model, text_to_image, tmp_path, steps, size, flags, options):
    """``diffkit sample`` on ``path`` with one prompt ("hot dog"), ``steps`` steps at ``size`` x ``size`` and the
    folder kind's own ``flags`` writes ``text_to_image(model, ..., **options)``'s image byte for byte (seed 0)."""
    from diffkit.cli import main
    from diffkit.images import save_grid
    out = tmp_path / "options.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", "hot dog", "--num", "1", "--steps", str(steps),
                 "--height", str(size), "--width", str(size), *flags, "--out", str(out), "--no-progress"]) == 0
    images = text_to_image(model, ["hot dog"], steps=steps, seed=0, height=size, width=size, output_range="-1,1",
                           **options)
    save_grid(images, tmp_path / "options_expected.png", 1)
    assert out.read_bytes() == (tmp_path / "options_expected.png").read_bytes()


def tiny_sana_pipeline(scheduler=None, sample_size=16, sprint=False, layers=1):
    """A SanaPipeline of random weights: Gemma-2 of 1 layer (hidden 32), transformer of 1 layer (2 heads of 8,
    cross-attention 16, caption 32), latents 4 x s x s, DC-AE of 2 levels (factor 2). ``sprint``: a
    SanaSprintPipeline instead (the transformer with guidance_embeds and qk_norm, an SCMScheduler); ``layers``: the
    transformer's blocks (2 for a ControlNet's residual to land: block j + 1 takes residual j)."""
    tokenizer = tiny_gemma_tokenizer()
    torch.manual_seed(0)
    gemma = tiny_gemma(tokenizer)
    transformer = diffusers.SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=layers,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=32,
        sample_size=sample_size, patch_size=1,
        **({"guidance_embeds": True, "qk_norm": "rms_norm_across_heads"} if sprint else {}))
    vae = diffusers.AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2, encoder_block_types=["ResBlock", "EfficientViTBlock"],
        decoder_block_types=["ResBlock", "EfficientViTBlock"], encoder_block_out_channels=[8, 8],
        decoder_block_out_channels=[8, 8], encoder_qkv_multiscales=[[], [5]], decoder_qkv_multiscales=[[], [5]],
        encoder_layers_per_block=[1, 1], decoder_layers_per_block=[1, 1], upsample_block_type="interpolate",
        downsample_block_type="Conv", decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407)
    if sprint:
        pipe = diffusers.SanaSprintPipeline(tokenizer=tokenizer, text_encoder=gemma, vae=vae, transformer=transformer,
                                            scheduler=scheduler or diffusers.SCMScheduler())
        pipe.set_progress_bar_config(disable=True)
        return pipe
    scheduler = scheduler or diffusers.DPMSolverMultistepScheduler(flow_shift=3.0, use_flow_sigmas=True,
                                                                   prediction_type="flow_prediction")
    pipe = diffusers.SanaPipeline(tokenizer=tokenizer, text_encoder=gemma, vae=vae, transformer=transformer,
                                  scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def changed_copy(path, tmp_path, file, change):
    """A copy of the folder ``path`` under ``tmp_path`` with the JSON ``file`` updated by ``change`` (a refusal's)."""
    odd = tmp_path / "odd"
    shutil.copytree(path, odd)
    config = json.loads((odd / file).read_text())
    (odd / file).write_text(json.dumps({**config, **change}))
    return odd
