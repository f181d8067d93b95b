"""A tiny random HiDreamImagePipeline folder (tests/test_hidream.py): two CLIPTextModelWithProjection on the CLIP
tokenizer of tests/test_interop_diffusers.py, a T5EncoderModel with the unigram tokenizer of
tests/test_interop_sd3.py, a LlamaForCausalLM with the BPE tokenizer of tests/_sana_helpers.py, a
HiDreamImageTransformer2DModel of one double-stream and one single-stream MoE block (patch 8: the pipeline's
fixed 128 x 128 latents are 16 x 16 tokens), a one-level AutoencoderKL (f = 1) with FLUX.1's scaling and shift
factors and no mid-block attention (the 128 x 128 latents: 16384 pixels), and the scheduler given; written by
save_pretrained (nothing downloaded)."""
import diffusers
import torch
import transformers

from _sana_helpers import tiny_gemma_tokenizer
from test_interop_diffusers import tiny_clip_tokenizer
from test_interop_sd3 import T5_WORDS, tiny_t5_tokenizer


def tiny_hidream_pipeline(root, scheduler=None):
    """A HiDreamImagePipeline of random weights (module docstring), CLIP tokenizer files written into ``root``;
    ``scheduler`` default FlowMatchEulerDiscreteScheduler(shift=3.0) (HiDream-I1-Fast's)."""
    tokenizer = tiny_clip_tokenizer(root)
    llama_tokenizer = tiny_gemma_tokenizer()
    torch.manual_seed(0)
    clips = [transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden, intermediate_size=24,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=tokenizer.vocab_size, max_position_embeddings=16,
        projection_dim=proj)).eval() for hidden, proj in ((16, 8), (12, 6))]
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=4 + len(T5_WORDS), d_model=32, d_kv=8, d_ff=40, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, dropout_rate=0.0)).eval()
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(llama_tokenizer.get_vocab()), hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, bos_token_id=2,
        eos_token_id=1, pad_token_id=0)).eval()
    transformer = diffusers.HiDreamImageTransformer2DModel(
        patch_size=8, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, caption_channels=[32, 16], text_emb_dim=14, num_routed_experts=4,
        num_activated_experts=2, axes_dims_rope=(4, 2, 2), max_resolution=(128, 128), llama_layers=[0, 1])
    vae = diffusers.AutoencoderKL(block_out_channels=[8], in_channels=3, out_channels=3, latent_channels=4,
                                  down_block_types=["DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D"],
                                  norm_num_groups=8, layers_per_block=1, sample_size=16, scaling_factor=0.3611,
                                  shift_factor=0.1159, mid_block_add_attention=False)
    pipe = diffusers.HiDreamImagePipeline(
        scheduler=scheduler or diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae, text_encoder=clips[0],
        tokenizer=tokenizer, text_encoder_2=clips[1], tokenizer_2=tokenizer, text_encoder_3=t5,
        tokenizer_3=tiny_t5_tokenizer(), text_encoder_4=llama, tokenizer_4=llama_tokenizer, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe
