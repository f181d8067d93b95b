"""A tiny random JoyImage Edit folder (tests/test_joyimage.py): Qwen-Image's byte-level BPE tokenizer with the vision
tokens (tests/_qwen_image_helpers.py) in a ``Qwen3VLProcessor`` of the PIL Qwen2-VL image processor (transformers'
class check and save walk its video processor, which imports torchvision: patched, as Qwen-Image 2.1's), a
``Qwen3VLForConditionalGeneration`` of two text layers whose vision tower (one block, 2 x 2 patches, no merge) sees
the images, a ``JoyImageEditTransformer3DModel`` (or ``...EditPlus...``) of one block (its zero-initialised
modulation tables randomised), a Wan ``AutoencoderKLWan`` of two levels (f = 2, z_dim 4) and a fixed-shift flow
scheduler, written by save_pretrained (nothing downloaded)."""
from unittest import mock

import torch

import diffusers
import transformers

from _krea2_helpers import tiny_qwen3_vl
from _qwen_image_helpers import save_qwen_image_edit, tiny_qwen_tokenizer


def tiny_qwen3_vl_with_vision(tokenizer, width: int = 32):
    """Krea 2's tiny Qwen3-VL (two text layers, one vision block: 2 x 2 patches, no merge, one frame) as a
    Qwen3VLForConditionalGeneration whose image token ids are the tokenizer's."""
    config = tiny_qwen3_vl(tokenizer, width).config
    for key, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                       ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")):
        setattr(config, key, tokenizer.convert_tokens_to_ids(token))
    return transformers.Qwen3VLForConditionalGeneration(config).eval()


def tiny_joyimage_pipeline(plus: bool = False, width: int = 32):
    """A JoyImageEditPipeline (``plus``: JoyImageEditPlusPipeline) of random weights (module docstring)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    torch.manual_seed(0)
    tokenizer = tiny_qwen_tokenizer(vision=True)
    images = Qwen2VLImageProcessorPil(patch_size=2, merge_size=1, temporal_patch_size=1,
                                      size={"shortest_edge": 16, "longest_edge": 8 * 8 * 4})
    with mock.patch.object(transformers.ProcessorMixin, "check_argument_for_proper_class", lambda *_: None):
        processor = transformers.Qwen3VLProcessor(image_processor=images, tokenizer=tokenizer)
    encoder = tiny_qwen3_vl_with_vision(tokenizer, width)
    kind = diffusers.JoyImageEditPlusTransformer3DModel if plus else diffusers.JoyImageEditTransformer3DModel
    transformer = kind(patch_size=[1, 2, 2], in_channels=4, hidden_size=32, num_attention_heads=2, text_dim=width,
                       num_layers=1, rope_dim_list=[4, 6, 6])
    with torch.no_grad():  # the zero-initialised modulation tables
        for p in transformer.parameters():
            if not p.any():
                p.normal_(0.0, 0.3)
    vae = diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 1], num_res_blocks=1, temperal_downsample=[False],
        latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 2.0, 1.2], scale_factor_spatial=2)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipeline = diffusers.JoyImageEditPlusPipeline if plus else diffusers.JoyImageEditPipeline
    pipe = pipeline(scheduler=scheduler, vae=vae, text_encoder=encoder, tokenizer=tokenizer, transformer=transformer,
                    processor=processor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_joyimage(pipe, path) -> None:
    """save_pretrained of a tiny JoyImage Edit pipeline (its processor/ as the image processor's and tokenizer's
    files)."""
    save_qwen_image_edit(pipe, path, transformers.Qwen3VLProcessor)
