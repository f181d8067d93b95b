"""A tiny random Krea 2 folder (tests/test_krea2.py): Qwen-Image's byte-level BPE tokenizer
(tests/_qwen_image_helpers.py) with the template's words added (its system prefix 34 tokens, its assistant suffix
5, as with Qwen's own tokenizer: the pipeline's fixed counts), a ``Qwen3VLModel`` of two text layers (width 32,
interleaved mRoPE) with a tiny vision tower (the class builds one), a ``Krea2Transformer2DModel`` of one block (its
zero-initialised final layer and modulation tables randomised), Qwen-Image's ``AutoencoderKLQwenImage`` of two
levels (f = 4) and the pipeline's dynamic-shift scheduler config, written by save_pretrained (nothing downloaded)."""
import torch

import diffusers
import transformers
from transformers import AddedToken

from _qwen_image_helpers import tiny_qwen_tokenizer

WORDS = ["system", "user", "assistant", "Describe"] + [" " + w for w in (
    "the image by detailing color shape size texture quantity text spatial relationships of objects and background"
).split()]
LAYERS = (0, 2, 1)  # text_encoder_select_layers: the embeddings, the last and the first layer's states


def tiny_qwen3_vl(tokenizer, width: int = 32, layers: int = 2, patch: int = 2, own_ids: bool = False):
    """A Qwen3VLModel of random weights: ``layers`` text layers (Ideogram 4's: 36), one vision block of ``patch`` x
    ``patch`` patches (never run on text); its vision token ids past the tokenizer's vocabulary, or (``own_ids``) the
    tokenizer's (Bria FIBO 2's, which shows images)."""
    n = len(tokenizer)
    names = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    ids = [tokenizer.convert_tokens_to_ids(t) for t in names] if own_ids else [n + i for i in (1, 2, 3, 4)]
    config = transformers.Qwen3VLConfig(
        text_config=dict(vocab_size=n, hidden_size=width, intermediate_size=48, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                         rope_parameters={"rope_theta": 10000.0, "rope_type": "default", "mrope_section": [2, 3, 3],
                                          "mrope_interleaved": True}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=width,
                           patch_size=patch, spatial_merge_size=1, temporal_patch_size=1, num_position_embeddings=16,
                           deepstack_visual_indexes=[]),
        image_token_id=ids[0], video_token_id=ids[1], vision_start_token_id=ids[2], vision_end_token_id=ids[3])
    return transformers.Qwen3VLModel(config).eval()


def tiny_vae_and_scheduler():
    """Qwen-Image's AutoencoderKLQwenImage of two levels (f = 4, z_dim 4) and a dynamic-shift flow scheduler."""
    vae = diffusers.AutoencoderKLQwenImage(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 2.0, 1.2])
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=4, base_shift=0.5, max_image_seq_len=6400, max_shift=1.15, use_dynamic_shifting=True,
        time_shift_type="exponential")
    return vae, scheduler


def tiny_krea2_pipeline(width: int = 32, distilled: bool = False):
    """A Krea2Pipeline of random weights (module docstring); z_dim 4, transformer in_channels 16."""
    torch.manual_seed(0)
    tokenizer = tiny_qwen_tokenizer()
    tokenizer.add_tokens([AddedToken(w, normalized=False) for w in WORDS])
    transformer = diffusers.Krea2Transformer2DModel(
        in_channels=16, num_layers=1, attention_head_dim=16, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=48, timestep_embed_dim=32, text_hidden_dim=width, num_text_layers=len(LAYERS),
        text_num_attention_heads=2, text_num_key_value_heads=2, text_intermediate_size=48,
        num_layerwise_text_blocks=1, num_refiner_text_blocks=1, axes_dims_rope=(4, 6, 6))
    with torch.no_grad():  # the zero-initialised layers (final projection, modulation tables): random
        for name, p in transformer.named_parameters():
            if not p.any():
                p.normal_(0.0, 0.3)
    vae, scheduler = tiny_vae_and_scheduler()
    pipe = diffusers.Krea2Pipeline(scheduler=scheduler, vae=vae, text_encoder=tiny_qwen3_vl(tokenizer, width),
                                   tokenizer=tokenizer, transformer=transformer, text_encoder_select_layers=LAYERS,
                                   is_distilled=distilled)
    pipe.set_progress_bar_config(disable=True)
    return pipe
