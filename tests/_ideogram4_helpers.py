"""A tiny random Ideogram4Pipeline folder (tests/test_ideogram4.py), nothing downloaded: Qwen-Image's byte-level BPE
tokenizer (tests/_qwen_image_helpers.py) with a chat template that reads the pipeline's [{"type": "text"}] content,
Krea 2's test ``Qwen3VLModel`` (tests/_krea2_helpers.py) with 36 text layers of width 8 (the pipeline stacks the
outputs of layers 0, 3, ..., 33, 35), two different 1-layer ``Ideogram4Transformer2DModel`` s (2 heads of 16,
llm_features_dim 13 x 8; every weight drawn at random, biases and norms included, so that no branch is an identity
or zero), FLUX.2's test ``AutoencoderKLFlux2`` (f = 2, 4 latent channels, random batch-norm statistics) and a
fixed-shift scheduler (2.0, so that the scheduler's own shift shows)."""
import torch

import diffusers

from _flux2_helpers import tiny_vae
from _krea2_helpers import tiny_qwen3_vl
from _qwen_image_helpers import tiny_qwen_tokenizer

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{{ c['text'] }}"
            "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WIDTH = 8


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
    text_encoder = tiny_qwen3_vl(tokenizer, WIDTH, layers=36)
    pipe = diffusers.Ideogram4Pipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=2.0), vae=tiny_vae(), text_encoder=text_encoder,
        tokenizer=tokenizer, transformer=tiny_transformer(1), unconditional_transformer=tiny_transformer(2))
    pipe.set_progress_bar_config(disable=True)
    return pipe
