"""Tiny random HunyuanImage 2.1 folders (tests/test_hunyuan_image.py): Qwen-Image's tiny Qwen2.5-VL
(tests/_qwen_image_helpers.py) with three text layers (the pipeline reads hidden state -3), a ByT5 tokenizer (no
files) with a one-layer ``T5EncoderModel`` (width 16), a ``HunyuanImageTransformer2DModel`` of one double-stream
block (no single-stream one: the time goes to the 1000-token text; its zero-initialised biases randomised), an
``AutoencoderKLHunyuanImage`` of two levels (f = 2, 8 latent channels), a fixed-shift flow scheduler and two
``AdaptiveProjectedMixGuidance`` guiders (the main one: APG from call 2 on; the OCR one: APG from call 1 on, with a
smaller momentum, a norm cap 0.05 that bites on one sample of the tests, eta 0.5), written by save_pretrained
(nothing downloaded). ``distilled``: the transformer with ``guidance_embeds`` and ``use_meanflow`` and no guiders
(the distilled release's layout). :func:`tiny_hunyuan_image_refiner_pipeline`: the refiner's folder."""
import torch

import diffusers
import transformers

from _qwen_image_helpers import tiny_qwen_vl


def tiny_hunyuan_image_pipeline(width: int = 32, distilled: bool = False):
    """A HunyuanImagePipeline of random weights (module docstring)."""
    torch.manual_seed(0)
    parts = tiny_qwen_vl(width, layers=3)
    t5 = transformers.T5EncoderModel(transformers.T5Config(vocab_size=384, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                                           num_heads=2)).eval()
    transformer = diffusers.HunyuanImageTransformer2DModel(
        in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=16, num_layers=1,
        num_single_layers=0, num_refiner_layers=1, patch_size=(1, 1), text_embed_dim=width, text_embed_2_dim=16,
        rope_axes_dim=(8, 8), guidance_embeds=distilled, use_meanflow=distilled)
    with torch.no_grad():  # the zero-initialised norm biases
        for p in transformer.parameters():
            if not p.any():
                p.normal_(0.0, 0.3)
    vae = diffusers.AutoencoderKLHunyuanImage(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(32, 64), layers_per_block=1,
        spatial_compression_ratio=2, sample_size=16, scaling_factor=0.75)
    guiders = {} if distilled else dict(
        guider=diffusers.AdaptiveProjectedMixGuidance(adaptive_projected_guidance_start_step=1),
        ocr_guider=diffusers.AdaptiveProjectedMixGuidance(
            guidance_scale=2.5, adaptive_projected_guidance_scale=6.0, adaptive_projected_guidance_momentum=-0.3,
            adaptive_projected_guidance_rescale=0.05, eta=0.5, adaptive_projected_guidance_start_step=0))
    pipe = diffusers.HunyuanImagePipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=4.0), vae=vae, transformer=transformer,
        text_encoder_2=t5, tokenizer_2=transformers.ByT5Tokenizer(), **parts, **guiders)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_hunyuan_image_refiner_pipeline(width: int = 32):
    """A HunyuanImageRefinerPipeline of random weights: the same tiny Qwen2.5-VL, a one-block transformer on one
    frame (3-D patches 1 x 1 x 1, input 4 x and output 2 x the VAE's 4 latent channels, a guidance embedding), an
    ``AutoencoderKLHunyuanImageRefiner`` of two levels (f = 2) and the fixed-shift scheduler; no guider (the released
    refiner's layout)."""
    torch.manual_seed(0)
    parts = tiny_qwen_vl(width, layers=3)
    transformer = diffusers.HunyuanImageTransformer2DModel(
        in_channels=16, out_channels=8, num_attention_heads=2, attention_head_dim=16, num_layers=1,
        num_single_layers=0, num_refiner_layers=1, patch_size=(1, 1, 1), text_embed_dim=width,
        rope_axes_dim=(4, 6, 6), guidance_embeds=True)
    with torch.no_grad():  # the zero-initialised norm biases
        for p in transformer.parameters():
            if not p.any():
                p.normal_(0.0, 0.3)
    vae = diffusers.AutoencoderKLHunyuanImageRefiner(
        latent_channels=4, block_out_channels=(32, 64), layers_per_block=1, spatial_compression_ratio=2,
        temporal_compression_ratio=2, scaling_factor=0.75)
    pipe = diffusers.HunyuanImageRefinerPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=4.0), vae=vae, transformer=transformer, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe
