"""Tiny random Kandinsky 2.1 folders (tests/test_kandinsky21.py): a KandinskyPriorPipeline (Kandinsky 2.2's tiny
prior of tests/_kandinsky_helpers.py, embeddings of width 16) and a KandinskyPipeline: a MultilingualCLIP
(XLM-RoBERTa of width 12, 1 layer, its LinearTransformation to 16) built from its config with an XLMRobertaTokenizer
of a few words (nothing downloaded), a UNet2DConditionModel with addition_embed_type "text_image",
encoder_hid_dim_type "text_image_proj" (cross_attention_dim 16: the image embeddings' width) and a learned variance,
Kandinsky 2.2's tiny MoVQ, kandinsky-2-1's DDIMScheduler (the inpainting folder: a DDPMScheduler with variance_type
"learned_range")."""
import torch

import diffusers
import transformers

from _kandinsky_helpers import WIDTH, tiny_movq

WORDS = "a photo of cat hot dog ugly blurry the dark red fox".split()
TEXT_WIDTH = 12  # the XLM-RoBERTa's hidden size: the UNet's encoder_hid_dim


def tiny_xlm_tokenizer():
    """An XLMRobertaTokenizer (unigram: <s> 0, <pad> 1, </s> 2, <unk> 3) over :data:`WORDS`."""
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + \
        [("\u2581" + w, -1.0) for w in WORDS] + [("<mask>", 0.0)]
    return transformers.XLMRobertaTokenizer(vocab=vocab)


def tiny_decoder21_pipeline(inpaint=False):
    """A KandinskyPipeline with kandinsky-2-1's DDIMScheduler (linear betas, ``steps_offset=1``, no clip) of random
    weights; ``inpaint``: a KandinskyInpaintPipeline, its UNet taking 9 channels, with a DDPMScheduler
    ``learned_range`` (the UNet's variance used, the last step's noise: Kandinsky 2.2's loop)."""
    from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig, MultilingualCLIP
    tokenizer = tiny_xlm_tokenizer()
    torch.manual_seed(2)
    clip = MultilingualCLIP(MCLIPConfig(
        transformerDimSize=TEXT_WIDTH, imageDimSize=WIDTH, vocab_size=len(tokenizer.get_vocab()),
        hidden_size=TEXT_WIDTH, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=80, pad_token_id=1, bos_token_id=0, eos_token_id=2)).eval()
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=9 if inpaint else 4, out_channels=8, layers_per_block=1,
        block_out_channels=[16, 32], down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"], addition_embed_type="text_image",
        encoder_hid_dim=TEXT_WIDTH, encoder_hid_dim_type="text_image_proj", cross_attention_dim=WIDTH,
        attention_head_dim=8, resnet_time_scale_shift="scale_shift", norm_num_groups=8)
    movq = tiny_movq()
    common = {"beta_schedule": "linear", "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False,
              "steps_offset": 1}
    scheduler = diffusers.DDPMScheduler(**common, variance_type="learned_range") if inpaint else \
        diffusers.DDIMScheduler(**common, set_alpha_to_one=False)
    pipeline = diffusers.KandinskyInpaintPipeline if inpaint else diffusers.KandinskyPipeline
    return pipeline(text_encoder=clip, tokenizer=tokenizer, unet=unet, scheduler=scheduler, movq=movq)
