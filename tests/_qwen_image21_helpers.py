"""A tiny random Qwen-Image 2.1 folder (tests/test_qwen_image21.py): Qwen-Image's byte-level BPE tokenizer with the
vision tokens (tests/_qwen_image_helpers.py) and NucleusMoE-Image's Qwen-style chat template in a
``Qwen3VLProcessor`` of the PIL image processor (transformers' class check and save walk its video processor, which
imports torchvision: patched, as Qwen-Image-Edit's), Krea 2's tiny Qwen3-VL as a ``Qwen3VLForConditionalGeneration``
of two text layers and a vision block of 32 x 32 patches (one image slot per 2 x 2 group of 16x latents, as
the real folder's patch 16 x merge 2; the tokenizer's vision ids, so condition images reach it), a
``QwenImage21Transformer2DModel`` of two blocks (its zero-centred text-norm weight
randomised), an ``AutoencoderKLQwenImage21`` of five levels (f = 16, z_dim 4, RGBA) and a dynamic-shift scheduler,
written by save_pretrained (nothing downloaded)."""
from unittest import mock

import torch

import diffusers
import transformers

from _krea2_helpers import tiny_qwen3_vl
from _nucleusmoe_helpers import CHAT_TEMPLATE
from _qwen_image_helpers import save_qwen_image_edit, tiny_qwen_tokenizer


def tiny_qwen_image21_pipeline(width: int = 32, sample_sigmas=None):
    """A QwenImage21Pipeline of random weights (module docstring); ``sample_sigmas``: the pipeline's config."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    torch.manual_seed(0)
    tokenizer = tiny_qwen_tokenizer(vision=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    images = Qwen2VLImageProcessorPil(patch_size=32, merge_size=1, temporal_patch_size=1,
                                      size={"shortest_edge": 32 * 32, "longest_edge": 128 * 128})
    with mock.patch.object(transformers.ProcessorMixin, "check_argument_for_proper_class", lambda *_: None):
        processor = transformers.Qwen3VLProcessor(image_processor=images, tokenizer=tokenizer,
                                                  chat_template=CHAT_TEMPLATE)
    vl = tiny_qwen3_vl(tokenizer, width, patch=32, own_ids=True)  # one <|image_pad|> per 32 x 32 pixels
    encoder = transformers.Qwen3VLForConditionalGeneration(vl.config).eval()
    transformer = diffusers.QwenImage21Transformer2DModel(
        in_channels=4, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        context_in_dim=width, mlp_ratio=2, axes_dims_rope=(4, 6, 6))
    with torch.no_grad():  # the zero-centred RMSNorm weight (scale 1 + w) of the text projection
        for p in transformer.parameters():
            if not p.any():
                p.normal_(0.0, 0.3)
    vae = diffusers.AutoencoderKLQwenImage21(
        base_dim=8, decoder_base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True, True], latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[1.5, 0.8, 2.0, 1.2])
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=4, base_shift=0.5, max_image_seq_len=6400, max_shift=1.15, use_dynamic_shifting=True,
        time_shift_type="exponential")
    pipe = diffusers.QwenImage21Pipeline(scheduler=scheduler, vae=vae, text_encoder=encoder, processor=processor,
                                         transformer=transformer, sample_sigmas=sample_sigmas)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_qwen_image21(pipe, path) -> None:
    """save_pretrained of a tiny QwenImage21Pipeline (its processor/ as the image processor's and tokenizer's files)."""
    save_qwen_image_edit(pipe, path, transformers.Qwen3VLProcessor)
