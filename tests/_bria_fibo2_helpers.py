"""A tiny random Bria FIBO 2 folder (tests/test_bria_fibo2.py), nothing downloaded: Qwen-Image's byte-level BPE
tokenizer with the vision tokens (tests/_qwen_image_helpers.py) in a ``Qwen3VLProcessor`` of the PIL image processor
(4 x 4 patches, no merge, at most 32 x 32 pixels; transformers' class check walks its video processor, which imports
torchvision: patched, as Qwen-Image 2.1's), Krea 2's tiny Qwen3-VL (tests/_krea2_helpers.py) as a
``Qwen3VLForConditionalGeneration`` of 35 text layers of width 16 (the pipeline reads hidden states 5 .. 35) with a
one-block vision tower of 4 x 4 patches on the tokenizer's vision tokens, a ``BriaFibo2Transformer2DModel`` of one
refiner and five main blocks (each an injection block), 4 to 8 gist tokens by text length, its zero-initialised
layers randomised, FLUX.2's tiny ``AutoencoderKLFlux2`` (tests/_flux2_helpers.py: f = 2, 4 latent channels, random
batch-norm statistics) and a dynamic-shift scheduler, written by save_pretrained."""
from unittest import mock

import torch

import diffusers
import transformers

from _flux2_helpers import tiny_vae
from _krea2_helpers import tiny_qwen3_vl
from _qwen_image_helpers import tiny_qwen_tokenizer

WIDTH = 16  # the Qwen3-VL's width: cap_feat_dim 3 x 16


def tiny_bria_fibo2_pipeline():
    """A BriaFibo2Pipeline of random weights (module docstring)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    torch.manual_seed(0)
    tokenizer = tiny_qwen_tokenizer(vision=True)
    config = tiny_qwen3_vl(tokenizer, WIDTH, layers=35, patch=4, own_ids=True).config
    encoder = transformers.Qwen3VLForConditionalGeneration(config).eval()
    images = Qwen2VLImageProcessorPil(patch_size=4, merge_size=1, temporal_patch_size=1,
                                      size={"shortest_edge": 16, "longest_edge": 32 * 32})
    with mock.patch.object(transformers.ProcessorMixin, "check_argument_for_proper_class", lambda *_: None):
        processor = transformers.Qwen3VLProcessor(image_processor=images, tokenizer=tokenizer)
    transformer = diffusers.BriaFibo2Transformer2DModel(
        in_channels=4, patch_size=2, dim=32, n_layers=5, n_refiner_layers=1, n_heads=2, cap_feat_dim=3 * WIDTH,
        injection_layer_ids=(0, 1, 2, 3, 4), perceiver_num_layers=1, min_num_gist_tokens=4, max_num_gist_tokens=8,
        gist_step=2, gist_min_text_len=40, gist_max_text_len=400, axes_dims=(4, 6, 6), axes_lens=(16, 64, 64))
    with torch.no_grad():  # the zero-initialised layers (adaLN modulations, gates, output projections)
        for p in transformer.parameters():
            if not p.any():
                p.normal_(0.0, 0.3)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=4, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, use_dynamic_shifting=True,
        time_shift_type="exponential")
    pipe = diffusers.BriaFibo2Pipeline(transformer=transformer, scheduler=scheduler, vae=tiny_vae(),
                                       text_encoder=encoder, processor=processor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_bria_fibo2(pipe, path) -> None:
    """save_pretrained of a tiny BriaFibo2Pipeline (its processor/ as the image processor's and tokenizer's files)."""
    from _qwen_image_helpers import save_qwen_image_edit
    save_qwen_image_edit(pipe, path, transformers.Qwen3VLProcessor)
