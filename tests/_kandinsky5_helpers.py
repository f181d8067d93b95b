"""A tiny random Kandinsky 5 text-to-image folder (tests/test_kandinsky5.py): the tiny Qwen2.5-VL with its
``Qwen2VLProcessor`` of :mod:`_qwen_image_helpers` (width 32), a CLIP text encoder (hidden 32, 77 positions: the
pipeline pads CLIP to 77) with the byte-level CLIP tokenizer, a ``Kandinsky5Transformer3DModel`` of one text and one
visual block (model 32, head 16), a 4-level ``AutoencoderKL`` (f = 8, the pipeline's fixed factor) of 4 channels and
the scheduler's fixed-shift FlowMatchEuler config; written by save_pretrained (nothing downloaded)."""
import torch

import diffusers
import transformers

from _qwen_image_helpers import save_qwen_image_edit, tiny_qwen_vl
from test_interop_diffusers import tiny_clip_tokenizer


def randomised(module, seed: int = 3):
    """``module`` with every zero-initialised weight (the output layer, the modulations) drawn N(0, 0.05^2)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))
    return module


def tiny_kandinsky5_pipeline(root, shift: float = 3.0, edit: bool = False, video: bool = False):
    """A Kandinsky5T2IPipeline of random weights (module docstring); its CLIP tokenizer's files under ``root``.
    ``edit``: a Kandinsky5I2IPipeline (the transformer with ``visual_cond``: 2 C + 1 input channels). ``video``: a
    Kandinsky5T2VPipeline (tests/test_kandinsky5_video.py) on a 4-level ``AutoencoderKLHunyuanVideo`` of width 8
    (8 x spatial, 4 x temporal), its transformer with ``visual_cond`` as Kandinsky 5's video checkpoints'."""
    torch.manual_seed(0)
    parts = tiny_qwen_vl(32, vision=True)
    tokenizer = parts.pop("processor")
    clip = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    transformer = randomised(diffusers.Kandinsky5Transformer3DModel(
        in_visual_dim=4, in_text_dim=32, in_text_dim2=32, time_dim=16, out_visual_dim=4, patch_size=(1, 2, 2),
        model_dim=32, ff_dim=48, num_text_blocks=1, num_visual_blocks=1, axes_dims=(4, 6, 6),
        visual_cond=edit or video))
    vae = diffusers.AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4,
        mid_block_add_attention=True) if video else diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[4, 4, 4, 4], layers_per_block=1,
        latent_channels=4, norm_num_groups=2, scaling_factor=0.3611, shift_factor=0.1159)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift, use_dynamic_shifting=False)
    kind = diffusers.Kandinsky5I2IPipeline if edit else \
        diffusers.Kandinsky5T2VPipeline if video else diffusers.Kandinsky5T2IPipeline
    pipe = kind(transformer=transformer, vae=vae, text_encoder=parts["text_encoder"],
                tokenizer=tokenizer, text_encoder_2=clip, tokenizer_2=tiny_clip_tokenizer(root), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_kandinsky5(pipe, path) -> None:
    """save_pretrained of a tiny Kandinsky 5 pipeline (its Qwen2VLProcessor as :func:`save_qwen_image_edit`)."""
    save_qwen_image_edit(pipe, path)
