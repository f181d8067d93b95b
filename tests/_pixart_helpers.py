"""Tiny random PixArt-α / PixArt-Σ folders (tests/test_pixart.py): a T5EncoderModel with the unigram tokenizer of
tests/test_interop_sd3.py, a PixArtTransformer2DModel with a learned variance (out_channels 2C), an AutoencoderKL
and PixArt's DPMSolverMultistepScheduler, written by save_pretrained (nothing downloaded)."""
import json
import shutil

import torch

import diffusers
import transformers

from test_interop_sd3 import T5_WORDS, tiny_t5_tokenizer


def tiny_pixart_pipeline(kind="alpha", sample_size=8, vae_levels=2, **transformer_options):
    """A PixArtAlphaPipeline (``kind="alpha"``) or PixArtSigmaPipeline of random weights: T5 d_model 32, transformer
    of 1 layer, 3 heads of 8 (inner 24: the micro-conditions' three thirds), patch 2, latents 4 x s x s (s =
    ``sample_size``; 128 gives use_additional_conditions), VAE of ``vae_levels`` levels (factor 2^(levels - 1))."""
    torch.manual_seed(0)
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=4 + len(T5_WORDS), d_model=32, d_kv=8, d_ff=40, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, dropout_rate=0.0)).eval()
    transformer = diffusers.PixArtTransformer2DModel(**{
        "sample_size": sample_size, "patch_size": 2, "in_channels": 4, "out_channels": 8, "num_layers": 1,
        "attention_head_dim": 8, "num_attention_heads": 3, "cross_attention_dim": 24, "caption_channels": 32,
        "norm_num_groups": 1, **transformer_options})
    vae = diffusers.AutoencoderKL(block_out_channels=[8] * vae_levels, in_channels=3, out_channels=3,
                                  latent_channels=4, down_block_types=["DownEncoderBlock2D"] * vae_levels,
                                  up_block_types=["UpDecoderBlock2D"] * vae_levels, norm_num_groups=8,
                                  layers_per_block=1, sample_size=16, scaling_factor=0.13025)
    scheduler = diffusers.DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    cls = diffusers.PixArtAlphaPipeline if kind == "alpha" else diffusers.PixArtSigmaPipeline
    pipe = cls(tokenizer=tiny_t5_tokenizer(), text_encoder=t5, transformer=transformer, vae=vae, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assert_sample_refusals(main, folder, tmp_path, capsys, cases, label=None):
    """Each ``diffkit sample`` flag list of ``cases`` [(extra flags, expected text)] is refused on ``folder`` in one
    line with no file written, and (given ``label``) ``diffkit edit`` in one line naming the folder kind (``label``,
    with its article: "a PixArt", "an AuraFlow")."""
    for extra, expected in cases:
        capsys.readouterr()
        code = main(["sample", "--checkpoint", str(folder), "--prompt", "hot", "--no-progress",
                     "--out", str(tmp_path / "never.png"), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expected in err[0], (extra, err)
    assert not (tmp_path / "never.png").exists()
    if label is None:
        return
    capsys.readouterr()
    assert main(["edit", "--checkpoint", str(folder), "--images", str(tmp_path), "--prompt", "hot",
                 "--out", str(tmp_path / "never")]) == 2
    assert f"is {label} folder, which diffkit edit does not take" in capsys.readouterr().err


def edited_copy(folder, copy, file, change: dict):
    """``copy``: a copy of ``folder`` whose JSON ``file`` has the keys of ``change`` set (a folder diffkit refuses)."""
    shutil.copytree(folder, copy)
    data = json.loads((copy / file).read_text())
    (copy / file).write_text(json.dumps({**data, **change}))
    return copy


def cfg_sample_argv(path, prompts, out, *extra):
    """``diffkit sample`` on ``path``: two prompts, one row each, 2 steps, seed 5, a batch of 2, the negative prompt
    "ugly" at the diffusers scale 3, no progress bar, to ``out``; ``extra`` flags appended."""
    return ["sample", "--checkpoint", str(path), "--prompt", prompts[0], "--prompt", prompts[1], "--num", "2",
            "--nrow", "1", "--steps", "2", "--seed", "5", "--batch-size", "2", "--negative-prompt", "ugly",
            "--guidance-scale", "3", "--guidance-convention", "diffusers", "--out", str(out), "--no-progress", *extra]


def pipeline_and_library(pipe, model, text_to_image, prompts, channels, steps, size, pipe_only=None, **call):
    """(diffkit's z_0, the pipeline's) of ``prompts`` from the same latents (B, ``channels``, size / 8, size / 8)
    drawn from seed 1, ``steps`` steps at ``size`` px, ``output_type="latent"`` (Lumina-Image 2.0's and Lumina-Next's
    fixed VAE factor 8); ``call``: options of both, ``pipe_only``: the pipeline's alone."""
    noise = torch.randn(len(prompts), channels, size // 8, size // 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = pipe(prompts, num_inference_steps=steps, latents=noise.clone(), output_type="latent", height=size,
                      width=size, **(pipe_only or {}), **call).images
    ours = text_to_image(model, prompts, steps=steps, latents=noise, return_latents=True, height=size, width=size,
                         **call)
    return ours, theirs
