"""A tiny random DreamLite folder (tests/test_dreamlite.py): Qwen-Image's byte-level BPE tokenizer with the vision
tokens (tests/_qwen_image_helpers.py) and the two templates' words added (Krea 2's and the edit system message's:
prefixes of 31 and 56 tokens here, where Qwen's own tokenizer makes the 34 and 64 the pipeline drops; it drops those
fixed counts whatever the tokenizer, diffkit too), a ``Qwen3VLProcessor`` of the PIL image processor (4 x 4 patches,
no merge, at most 16 x 16 pixels: 16 image tokens; its video processor patched out, as Qwen-Image 2.1's), Krea 2's
tiny Qwen3-VL as a ``Qwen3VLForConditionalGeneration`` (two text layers, a vision tower of 4 x 4 patches), a
``DreamLiteUNetModel`` of two levels (depthwise-separable resnets, GQA cross- and self-attention with RMS qk-norm, the
``text_proj_rms`` text projection, the ``time`` size embedding; its zero-initialised layers randomised), an
``AutoencoderTiny`` of three levels (f = 4) and a dynamic-shift scheduler, written by save_pretrained (nothing
downloaded)."""
from unittest import mock

import torch

import diffusers
import transformers
from transformers import AddedToken

from _krea2_helpers import WORDS
from _qwen_image_helpers import save_qwen_image_edit, tiny_qwen_tokenizer

EDIT_WORDS = [" " + w for w in (
    "key features input image (color, shape, size, texture, objects, background), then explain how user's "
    "instruction should alter or modify image. Generate a new that meets requirements while maintaining "
    "consistency with original where appropriate.").split()]


def tiny_dreamlite_pipeline(width: int = 32, mobile: bool = False):
    """A DreamLitePipeline (``mobile``: DreamLiteMobilePipeline) of random weights (module docstring); latent
    channels 4, f = 4."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from _krea2_helpers import tiny_qwen3_vl
    torch.manual_seed(0)
    tokenizer = tiny_qwen_tokenizer(vision=True)
    tokenizer.add_tokens([AddedToken(w, normalized=False) for w in WORDS + EDIT_WORDS])
    images = Qwen2VLImageProcessorPil(patch_size=4, merge_size=1, temporal_patch_size=1,
                                      size={"shortest_edge": 16, "longest_edge": 16 * 16})
    with mock.patch.object(transformers.ProcessorMixin, "check_argument_for_proper_class", lambda *_: None):
        processor = transformers.Qwen3VLProcessor(image_processor=images, tokenizer=tokenizer)
    config = tiny_qwen3_vl(tokenizer, width).config
    config.vision_config.patch_size = 4
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                          "<|vision_end|>")]
    config.image_token_id, config.video_token_id, config.vision_start_token_id, config.vision_end_token_id = ids
    encoder = transformers.Qwen3VLForConditionalGeneration(config).eval()
    unet = diffusers.DreamLiteUNetModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DreamLiteCrossAttnNoSelfAttnDownBlock2D", "DreamLiteCrossAttnDownBlock2D"),
        up_block_types=("DreamLiteCrossAttnUpBlock2D", "DreamLiteCrossAttnNoSelfAttnUpBlock2D"),
        norm_num_groups=8, attention_head_dim=2, num_kv_heads=1, cross_attention_dim=16, ff_mult=2,
        encoder_hid_dim_type="text_proj_rms", encoder_hid_dim=width, addition_embed_type="time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=16)
    with torch.no_grad():  # the zero-initialised layers (e.g. the attention blocks' output projections): random
        for p in unet.parameters():
            if not p.any():
                p.normal_(0.0, 0.3)
    vae = diffusers.AutoencoderTiny(encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
                                    num_encoder_blocks=(1, 1, 1), num_decoder_blocks=(1, 1, 1), latent_channels=4,
                                    scaling_factor=1.5, shift_factor=0.1)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=4, base_shift=0.5, max_image_seq_len=6400, max_shift=1.15, use_dynamic_shifting=True,
        time_shift_type="exponential")
    kind = diffusers.DreamLiteMobilePipeline if mobile else diffusers.DreamLitePipeline
    pipe = kind(text_encoder=encoder, tokenizer=tokenizer, processor=processor, vae=vae, unet=unet,
                scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_dreamlite(pipe, path) -> None:
    """save_pretrained of a tiny DreamLite pipeline (its processor/ as the image processor's and tokenizer's
    files)."""
    save_qwen_image_edit(pipe, path, transformers.Qwen3VLProcessor)
