"""A tiny random Ideogram4Pipeline folder (tests/test_ideogram4.py), nothing downloaded: Qwen-Image's byte-level BPE
tokenizer (tests/_qwen_image_helpers.py) with a chat template that reads the pipeline's [{"type": "text"}] content,
a ``Qwen3VLModel`` of 36 text layers of width 8 (the pipeline stacks the outputs of layers 0, 3, ..., 33, 35) with a
tiny vision tower (the class builds one), two different 1-layer ``Ideogram4Transformer2DModel`` s (2 heads of 16,
llm_features_dim 13 x 8; every weight drawn at random, biases and norms included, so that no branch is an identity
or zero), FLUX.2's test ``AutoencoderKLFlux2`` (f = 2, 4 latent channels, random batch-norm statistics) and a
fixed-shift scheduler (2.0, so that the scheduler's own shift shows)."""
import torch

import diffusers
import transformers

from _flux2_helpers import tiny_vae
from _qwen_image_helpers import tiny_qwen_tokenizer

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{{ c['text'] }}"
            "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WIDTH = 8


def tiny_text_encoder(tokenizer, layers: int = 36):
    n = len(tokenizer)
    config = transformers.Qwen3VLConfig(
        text_config=dict(vocab_size=n, hidden_size=WIDTH, intermediate_size=16, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=4, max_position_embeddings=512,
                         rope_parameters={"rope_theta": 10000.0, "rope_type": "default", "mrope_section": [1, 1, 0],
                                          "mrope_interleaved": True}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=WIDTH,
                           patch_size=2, spatial_merge_size=1, temporal_patch_size=1, num_position_embeddings=16,
                           deepstack_visual_indexes=[]),
        image_token_id=n + 1, video_token_id=n + 2, vision_start_token_id=n + 3, vision_end_token_id=n + 4)
    return transformers.Qwen3VLModel(config).eval()


def tiny_transformer(seed: int):
    torch.manual_seed(seed)
    model = diffusers.Ideogram4Transformer2DModel(
        in_channels=16, num_layers=1, attention_head_dim=16, num_attention_heads=2, intermediate_size=48,
        adaln_dim=16, llm_features_dim=13 * WIDTH, rope_theta=10000, mrope_section=(4, 2, 2))
    with torch.no_grad():  # every weight random: the adaLN modulations, norms and embeddings too
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def tiny_ideogram4_pipeline():
    tokenizer = tiny_qwen_tokenizer()
    tokenizer.chat_template = TEMPLATE
    torch.manual_seed(0)
    text_encoder = tiny_text_encoder(tokenizer)
    pipe = diffusers.Ideogram4Pipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=2.0), vae=tiny_vae(), text_encoder=text_encoder,
        tokenizer=tokenizer, transformer=tiny_transformer(1), unconditional_transformer=tiny_transformer(2))
    pipe.set_progress_bar_config(disable=True)
    return pipe
