"""A tiny random HunyuanVideo 1.5 folder (tests/test_hunyuan_video15.py): Qwen-Image's byte-level BPE tokenizer
(tests/_qwen_image_helpers.py) with the pipeline's system message as one token and a Qwen-style chat template that
puts 99 padding tokens before it, so that the template's first 108 tokens (the pipeline's crop) end just after the
user turn's header as the real Qwen2.5-VL tokenizer's do, and a ``Qwen2_5_VLTextModel`` of three layers (width 16;
the pipeline reads hidden state -3), a ByT5 tokenizer (no files) with a one-layer ``T5EncoderModel``
(width 16), a ``HunyuanVideo15Transformer3DModel`` of one block (1 x 1 x 1 patches, 2 x 4 + 1 input channels, an
8-wide image projection; every zero-initialised weight randomised), a five-level ``AutoencoderKLHunyuanVideo15`` of
width 8 (16 x spatial, 4 x temporal, 4 latent channels), FlowMatchEuler with shift 5 and a ``ClassifierFreeGuidance``
guider (s = 4.5, rescale 0.3); :func:`tiny_hunyuan_video15_i2v_pipeline`: the image-to-video pipeline of the same parts
and a tiny SigLIP. Nothing downloaded."""
import inspect

import torch

import diffusers
import transformers

from _qwen_image_helpers import tiny_qwen_tokenizer

Z = 4  # the VAE's latent channels
CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ '<|im_start|>' * 99 }}{{ m['content'] }}"
                 "<|im_end|>\n{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer():
    """The byte-level Qwen2Tokenizer with the system message as one token and :data:`CHAT_TEMPLATE`."""
    system = inspect.signature(diffusers.HunyuanVideo15Pipeline._get_mllm_prompt_embeds).parameters[
        "system_message"].default
    tokenizer = tiny_qwen_tokenizer()
    tokenizer.add_tokens([transformers.AddedToken(system, normalized=False, special=True)])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_hunyuan_video15_pipeline():
    """A HunyuanVideo15Pipeline of random weights (module docstring)."""
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    qwen = transformers.Qwen2_5_VLTextModel(transformers.Qwen2_5_VLTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=24, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=2048, bos_token_id=len(tokenizer) - 2,
        eos_token_id=len(tokenizer) - 1,
        rope_parameters={"rope_theta": 10000.0, "rope_type": "default", "mrope_section": [1, 1, 2]})).eval()
    t5 = transformers.T5EncoderModel(transformers.T5Config(vocab_size=384, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                                           num_heads=2)).eval()
    transformer = diffusers.HunyuanVideo15Transformer3DModel(
        in_channels=2 * Z + 1, out_channels=Z, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_refiner_layers=1, patch_size=1, patch_size_t=1, text_embed_dim=16, text_embed_2_dim=16,
        image_embed_dim=8, rope_axes_dim=(2, 2, 4), target_size=32)
    with torch.no_grad():  # zero-initialised layers (modulations, gates, ...) randomised: a test must be able to fail
        for p in transformer.parameters():
            if not bool(p.any()):
                p.normal_(0, 0.2)
    vae = diffusers.AutoencoderKLHunyuanVideo15(
        in_channels=3, out_channels=3, latent_channels=Z, block_out_channels=(8, 8, 8, 8, 8), layers_per_block=1,
        spatial_compression_ratio=16, temporal_compression_ratio=4, scaling_factor=0.9)
    guider = diffusers.ClassifierFreeGuidance(guidance_scale=4.5, guidance_rescale=0.3)
    pipe = diffusers.HunyuanVideo15Pipeline(
        text_encoder=qwen, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0), text_encoder_2=t5,
        tokenizer_2=transformers.ByT5Tokenizer(), guider=guider)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_hunyuan_video15_i2v_pipeline(t2v):
    """A HunyuanVideo15ImageToVideoPipeline of ``t2v``'s parts and a one-layer ``SiglipVisionModel`` of width 8 on
    16 x 16 images in 8 x 8 patches (4 image tokens; its zero-initialised biases randomised) with its
    ``SiglipImageProcessor``."""
    torch.manual_seed(1)
    siglip = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=16,
        patch_size=8)).eval()
    with torch.no_grad():
        for p in siglip.parameters():
            if not bool(p.any()):
                p.normal_(0, 0.2)
    pipe = diffusers.HunyuanVideo15ImageToVideoPipeline(
        **t2v.components, image_encoder=siglip,
        feature_extractor=transformers.SiglipImageProcessor(size={"height": 16, "width": 16}))
    pipe.set_progress_bar_config(disable=True)
    return pipe
