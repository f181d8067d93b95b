"""Tiny random Kandinsky 2.2 folders (tests/test_kandinsky.py): a KandinskyV22PriorPipeline (CLIP text and vision
encoders with projections of width 16, the CLIP tokenizer of tests/test_interop_diffusers.py, a PriorTransformer of
1 layer with random clip_mean / clip_std, Kandinsky's UnCLIPScheduler) and a KandinskyV22Pipeline (a
UNet2DConditionModel with addition_embed_type "image", encoder_hid_dim_type "image_proj" and a learned variance, a
VQModel of 2 levels (width 32: its SpatialNorm's 32 groups), a DDPMScheduler with variance_type "learned_range"),
written by save_pretrained (nothing downloaded)."""
import torch

import diffusers
import transformers

from test_interop_diffusers import tiny_clip_tokenizer

WIDTH = 16  # the CLIP projection: the image embeddings' width


def tiny_prior_pipeline(root, pipeline=None):
    """A KandinskyV22PriorPipeline of random weights (its tokenizer's files written into ``root``); ``pipeline``:
    another class of the same components (Kandinsky 2.1's KandinskyPriorPipeline)."""
    tokenizer = tiny_clip_tokenizer(root)
    torch.manual_seed(0)
    text = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        hidden_size=16, intermediate_size=24, num_attention_heads=2, num_hidden_layers=1, projection_dim=WIDTH,
        vocab_size=tokenizer.vocab_size + 8, max_position_embeddings=tokenizer.model_max_length, bos_token_id=0,
        eos_token_id=1, pad_token_id=1)).eval()
    vision = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=24, num_attention_heads=2, num_hidden_layers=1, projection_dim=WIDTH,
        image_size=8, patch_size=4)).eval()
    prior = diffusers.PriorTransformer(num_attention_heads=2, attention_head_dim=8, num_layers=1,
                                       embedding_dim=WIDTH, num_embeddings=tokenizer.model_max_length)
    with torch.no_grad():
        prior.clip_mean.copy_(torch.randn(1, WIDTH) * 0.5)
        prior.clip_std.copy_(torch.rand(1, WIDTH) + 0.5)
    # Kandinsky's clip_sample_range is 10; 1 here, so that the tiny prior's x_0 is clipped (the clip tested)
    scheduler = diffusers.UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                          clip_sample=True, clip_sample_range=1.0)
    processor = transformers.CLIPImageProcessor(crop_size=8, size=8)
    return (pipeline or diffusers.KandinskyV22PriorPipeline)(prior=prior, image_encoder=vision, text_encoder=text,
                                               tokenizer=tokenizer, scheduler=scheduler, image_processor=processor)


def tiny_movq():
    """A VQModel (MoVQ) of 2 levels, width 32 (its SpatialNorm's 32 groups), 4 latent channels."""
    return diffusers.VQModel(block_out_channels=[32, 32], down_block_types=["DownEncoderBlock2D",
                                                                           "AttnDownEncoderBlock2D"],
                             up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"], in_channels=3,
                             out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                             norm_type="spatial", num_vq_embeddings=12, vq_embed_dim=4)


def tiny_decoder_pipeline(inpaint=False, hint=False, **scheduler_options):
    """A KandinskyV22Pipeline of random weights: UNet widths 16 / 32 on 4 x 8 x 8 latents (images 16 x 16: the
    pipelines' latent side is height / 2 for a 2-level MoVQ), learned variance. ``inpaint``: a
    KandinskyV22InpaintPipeline, its UNet taking 9 channels (latents, masked-image latents, mask). ``hint``: a
    KandinskyV22ControlnetPipeline, its UNet with addition_embed_type "image_hint" (4 + 4 channels in: the latents and
    the hint block's output; the hint 8x the latent side, 64 x 64)."""
    torch.manual_seed(1)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=9 if inpaint else 8 if hint else 4, out_channels=8, layers_per_block=1,
        block_out_channels=[16, 32], down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
        addition_embed_type="image_hint" if hint else "image",
        encoder_hid_dim=WIDTH, encoder_hid_dim_type="image_proj", cross_attention_dim=32, attention_head_dim=8,
        resnet_time_scale_shift="scale_shift", norm_num_groups=8)
    movq = tiny_movq()
    scheduler = diffusers.DDPMScheduler(**{"beta_schedule": "linear", "beta_start": 0.00085, "beta_end": 0.012,
                                           "clip_sample": False, "steps_offset": 1, "variance_type": "learned_range",
                                           **scheduler_options})
    pipeline = diffusers.KandinskyV22InpaintPipeline if inpaint else diffusers.KandinskyV22ControlnetPipeline if hint \
        else diffusers.KandinskyV22Pipeline
    return pipeline(unet=unet, scheduler=scheduler, movq=movq)


def random_pngs(folder, count=2, size=16, seed=4):
    """``count`` random RGB PNGs written into the new ``folder`` (0.png ...), returned as they read back, (count, 3,
    size, size) in [-1, 1]."""
    import numpy as np
    from PIL import Image
    folder.mkdir()
    pixels = (torch.rand(count, size, size, 3, generator=torch.Generator().manual_seed(seed)) * 255).round()
    for i in range(count):
        Image.fromarray(pixels[i].numpy().astype(np.uint8)).save(folder / f"{i}.png")
    return pixels.permute(0, 3, 1, 2) / 127.5 - 1
