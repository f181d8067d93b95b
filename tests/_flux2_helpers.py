"""Tiny random FLUX.2 folders (tests/test_flux2.py), nothing downloaded: a Flux2Pipeline with a
Mistral3ForConditionalGeneration (a 30-layer Mistral of width 16, the pipeline stacks its states 10, 20, 30; a
1-layer Pixtral vision tower) whose tokenizer is a byte-level BPE PreTrainedTokenizerFast with a Mistral-style chat
template (the real folder's PixtralProcessor needs torchvision; the pipeline calls only its chat template), and a
Flux2KleinPipeline with a 27-layer Qwen3ForCausalLM (states 9, 18, 27) and a Qwen2Tokenizer with a Qwen3-style
template; both with a 1 + 1-block Flux2Transformer2DModel (2 heads of 16, RoPE axes 4 x 4), an AutoencoderKLFlux2
of 2 levels (f = 2, 4 latent channels, random batch-norm statistics) and FLUX.2's dynamic-shift scheduler config."""
import torch

import diffusers
import transformers

from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE

WORDS = sorted(set("a photo of cat hot dog ugly blurry the user".split() + SYSTEM_MESSAGE.replace(",", " ").replace(
    ".", " ").split()))  # the system message in few tokens, so that the prompt fits max_sequence_length
SPECIAL = ["[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]", "<|im_start|>", "<|im_end|>",
           "<think>", "</think>"]
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}[SYSTEM_PROMPT]{{ m['content'][0]['text'] }}"
    "[/SYSTEM_PROMPT]{% else %}[INST]{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
    "{% else %}[IMG]{% endif %}{% endfor %}[/INST]{% endif %}{% endfor %}")
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and not enable_thinking %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}")


def bpe(special):
    """(vocab, merges) of a byte-level BPE: ``special`` first, single characters, merges spelling WORDS."""
    vocab, merges = {s: i for i, s in enumerate(special)}, []
    for piece in sorted({c for w in WORDS for c in w} | set("\u0120\u010a<>|_/[].,")):
        vocab.setdefault(piece, len(vocab))
    for word in WORDS:
        for spelled in (word, "\u0120" + word):
            for i in range(2, len(spelled) + 1):
                if spelled[:i] not in vocab:
                    merges.append((spelled[:i - 1], spelled[i - 1]))
                    vocab[spelled[:i]] = len(vocab)
    return vocab, merges


def tiny_transformer(joint, guidance_embeds):
    torch.manual_seed(0)
    return diffusers.Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=joint, timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds)


def tiny_vae():
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLFlux2(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                                       up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                                       sample_size=16)
    with torch.no_grad():
        vae.bn.running_mean.normal_()
        vae.bn.running_var.uniform_(0.5, 2.0)
    return vae


def scheduler():
    """FLUX.2-dev's scheduler config (dynamic shifting; the pipelines pass compute_empirical_mu as mu)."""
    return diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                     max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
                                                     time_shift_type="exponential")


def mistral_tokenizer():
    """A byte-level BPE PreTrainedTokenizerFast (BOS "<s>") with the Mistral-style chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    vocab, merges = bpe(["<unk>", "<s>", "</s>", "<pad>"] + SPECIAL[:5])
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                                     unk_token="<unk>", pad_token="<pad>",
                                                     additional_special_tokens=SPECIAL[:5])
    tokenizer.chat_template = MISTRAL_TEMPLATE
    return tokenizer, vocab


def mistral3_config(vocab, layers=30):
    """A Mistral3Config of a ``layers``-layer Mistral of width 16 and a 1-layer Pixtral vision tower."""
    return transformers.Mistral3Config(
        vision_config=transformers.PixtralVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                       num_attention_heads=2, head_dim=8, patch_size=4, image_size=16),
        text_config=transformers.MistralConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                               num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                                               head_dim=8, max_position_embeddings=1024),
        image_token_index=vocab["[IMG]"], spatial_merge_size=2)


def tiny_flux2_pipeline():
    tokenizer, vocab = mistral_tokenizer()
    torch.manual_seed(0)
    mistral = transformers.Mistral3ForConditionalGeneration(mistral3_config(vocab)).eval()
    pipe = diffusers.Flux2Pipeline(scheduler=scheduler(), vae=tiny_vae(), text_encoder=mistral, tokenizer=tokenizer,
                                   transformer=tiny_transformer(48, True))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_klein_pipeline(layers=27):
    vocab, merges = bpe(["<|endoftext|>"] + SPECIAL[5:])
    tokenizer = transformers.Qwen2Tokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL[5:]})
    tokenizer.chat_template = QWEN_TEMPLATE
    torch.manual_seed(0)
    qwen = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024)).eval()
    pipe = diffusers.Flux2KleinPipeline(scheduler=scheduler(), vae=tiny_vae(), text_encoder=qwen, tokenizer=tokenizer,
                                        transformer=tiny_transformer(48, False))
    pipe.set_progress_bar_config(disable=True)
    return pipe
