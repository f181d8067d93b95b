"""A tiny random Qwen-Image folder (tests/test_qwen_image.py): a byte-level BPE ``Qwen2Tokenizer`` of the 256 byte
characters and a few merges, a ``Qwen2_5_VLForConditionalGeneration`` of one text layer (width 32) with a tiny
vision tower (the class builds one), a ``QwenImageTransformer2DModel`` of one block, an ``AutoencoderKLQwenImage``
of two levels (f = 4) and Qwen-Image's ``FlowMatchEulerDiscreteScheduler`` config (dynamic exponential shift,
terminal 0.02), written by save_pretrained (nothing downloaded)."""
import torch

import diffusers
import transformers

MERGES = [("h", "o"), ("ho", "t"), ("Ġ", "d"), ("Ġd", "o"), ("Ġdo", "g"), ("Ġ", "c"), ("Ġc", "a"), ("Ġca", "t")]


def byte_characters() -> list:
    """GPT-2's byte -> unicode map (the byte-level pre-tokenizer's alphabet), in byte order."""
    kept = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in kept]
    return [chr(c) for c in kept + [256 + i for i in range(len(extra))]]


def tiny_qwen_tokenizer():
    """A Qwen2Tokenizer (byte-level BPE) with the chat template's two special tokens; pads on the right."""
    vocab = {c: i for i, c in enumerate(byte_characters())}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    tokenizer = transformers.Qwen2Tokenizer(vocab=vocab, merges=MERGES)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tokenizer


def tiny_qwen_image_pipeline(width: int = 32):
    """A QwenImagePipeline of random weights (module docstring); z_dim 4, transformer in_channels 16."""
    torch.manual_seed(0)
    tokenizer = tiny_qwen_tokenizer()
    config = transformers.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1,
                         rope_parameters={"rope_theta": 10000.0, "rope_type": "default",
                                          "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=width,
                           patch_size=2, spatial_merge_size=1, temporal_patch_size=1, window_size=4,
                           fullatt_block_indexes=[0]),
        image_token_id=len(tokenizer) + 1, video_token_id=len(tokenizer) + 2,
        vision_start_token_id=len(tokenizer) + 3, vision_end_token_id=len(tokenizer) + 4)
    text_encoder = transformers.Qwen2_5_VLForConditionalGeneration(config).eval()
    transformer = diffusers.QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=width, axes_dims_rope=(4, 6, 6))
    vae = diffusers.AutoencoderKLQwenImage(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 2.0, 1.2])
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, shift_terminal=0.02,
        use_dynamic_shifting=True, time_shift_type="exponential")
    pipe = diffusers.QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                       transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe
