"""A tiny random NucleusMoE-Image folder (tests/test_nucleusmoe.py): Krea 2's tiny Qwen3-VL language model
(tests/_krea2_helpers.py) as a ``Qwen3VLForConditionalGeneration`` of eight text layers (the pipeline reads hidden
state -8), Qwen-Image's test tokenizer with a Qwen-style chat template standing in for the ``Qwen3VLProcessor``
(transformers' needs torchvision's video processor; the pipeline only calls ``apply_chat_template`` and the
text tokenisation), a ``NucleusMoEImageTransformer2DModel`` of two blocks (a dense one, then a 4-expert MoE with
expert-choice capacity 8 of 16 tokens; its zero-initialised layers and uninitialised expert tables randomised),
Qwen-Image's ``AutoencoderKLQwenImage`` (f = 4) and a dynamic-shift scheduler, written by save_pretrained
(nothing downloaded)."""
import torch

import diffusers
import transformers
from transformers import AddedToken

from _krea2_helpers import WORDS
from _qwen_image_helpers import tiny_qwen_tokenizer

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}"
                 "{{ m['content'] }}{% else %}{% for c in m['content'] %}{{ c['text'] }}{% endfor %}{% endif %}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_nucleusmoe_pipeline(width: int = 32):
    """A NucleusMoEImagePipeline of random weights (module docstring); z_dim 4, transformer in_channels 16."""
    from _krea2_helpers import tiny_qwen3_vl, tiny_vae_and_scheduler
    torch.manual_seed(0)
    tokenizer = tiny_qwen_tokenizer()
    tokenizer.add_tokens([AddedToken(w, normalized=False) for w in WORDS + ["You", " are", " an"]])
    tokenizer.chat_template = CHAT_TEMPLATE
    base = tiny_qwen3_vl(tokenizer, width)
    config = base.config
    config.text_config.num_hidden_layers = 8
    encoder = transformers.Qwen3VLForConditionalGeneration(config).eval()
    transformer = diffusers.NucleusMoEImageTransformer2DModel(
        in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        num_key_value_heads=1, joint_attention_dim=width, axes_dims_rope=(4, 6, 6), mlp_ratio=6.0,
        num_experts=4, moe_intermediate_dim=16,
        dense_moe_strategy="leave_first_block_dense", capacity_factors=2.0)
    with torch.no_grad():  # the zero-initialised layers and the experts' uninitialised (torch.empty) tables
        for name, p in transformer.named_parameters():
            if not p.any() or ".experts." in name:
                p.normal_(0.0, 0.3)
    vae, scheduler = tiny_vae_and_scheduler()
    pipe = diffusers.NucleusMoEImagePipeline(transformer=transformer, scheduler=scheduler, vae=vae,
                                             text_encoder=encoder, processor=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe
