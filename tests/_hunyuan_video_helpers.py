"""HunyuanVideo's tiny text encoders, shared by the HunyuanVideo test files (text-to-video, SkyReels, FramePack): a
2-layer LlamaModel of width 16 on the BPE tokenizer of tests/_sana_helpers.py and a 2-layer CLIPTextModel of width 8
on the byte CLIP tokenizer of tests/test_interop_diffusers.py, built in that order after torch.manual_seed(0)."""
import torch
import transformers

from _sana_helpers import tiny_gemma_tokenizer
from test_interop_diffusers import tiny_clip_tokenizer


def tiny_hunyuan_text_encoders(root) -> tuple:
    """(llama tokenizer, LlamaModel, CLIP tokenizer (saved under ``root``), CLIPTextModel), seeded 0 first."""
    llama_tokenizer, clip_tokenizer = tiny_gemma_tokenizer(), tiny_clip_tokenizer(root)
    torch.manual_seed(0)
    llama = transformers.LlamaModel(transformers.LlamaConfig(
        vocab_size=len(llama_tokenizer.get_vocab()), hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, bos_token_id=2, eos_token_id=1,
        pad_token_id=0)).eval()
    clip = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=8, intermediate_size=16, num_attention_heads=2,
        num_hidden_layers=2, vocab_size=clip_tokenizer.vocab_size, max_position_embeddings=77)).eval()
    return llama_tokenizer, llama, clip_tokenizer, clip
