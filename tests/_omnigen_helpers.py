"""A tiny random OmniGenPipeline folder for tests/test_omnigen.py (nothing downloaded): a LlamaTokenizer over single
characters (bos <s> = 1, pad </s> = 2 as OmniGen's collator pads), a 2-layer OmniGenTransformer2DModel (hidden 16, 2
heads of 8), a 4-channel VAE of 4 levels (f = 8: the processor counts a token per 16 x 16 pixels), and diffusers'
own OmniGenPipeline run without torchvision: its processor's four torchvision transforms are given here (crop_image,
then x / 255 normalised to [-1, 1]), the only stand-in; everything else is diffusers' code."""
import numpy as np
import torch

import diffusers
import transformers

CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789<>|_.,'\n\u2581"


def tiny_tokenizer():
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
    return transformers.LlamaTokenizer(vocab=vocab, merges=[], add_bos_token=True)


class _Transforms:
    """torchvision.transforms' Compose / Lambda / ToTensor / Normalize as OmniGenMultiModalProcessor uses them."""

    @staticmethod
    def Compose(steps):
        def run(x):
            for step in steps:
                x = step(x)
            return x
        return run

    @staticmethod
    def Lambda(fn):
        return fn

    @staticmethod
    def ToTensor():
        return lambda image: torch.from_numpy(np.array(image, dtype=np.float32) / 255.0).permute(2, 0, 1)

    @staticmethod
    def Normalize(mean, std, inplace=False):
        return lambda x: (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def install_processor():
    """diffusers' OmniGenPipeline importable without torchvision (module docstring)."""
    from diffusers.pipelines.omnigen import pipeline_omnigen, processor_omnigen
    processor_omnigen.transforms = _Transforms
    pipeline_omnigen.OmniGenMultiModalProcessor = processor_omnigen.OmniGenMultiModalProcessor


def tiny_omnigen_pipeline():
    install_processor()
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    transformer = diffusers.OmniGenTransformer2DModel(
        in_channels=4, patch_size=2, hidden_size=16, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=32, num_layers=2, pad_token_id=2, vocab_size=len(tokenizer), max_position_embeddings=4096,
        original_max_position_embeddings=2048, rope_scaling={"short_factor": [1.0] * 4, "long_factor": [1.0] * 4},
        pos_embed_max_size=16, time_step_dim=8)
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 8, 8, 8), in_channels=3, out_channels=3, latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",) * 4, norm_num_groups=8,
                                  up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, sample_size=16)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    pipe = diffusers.OmniGenPipeline(transformer=transformer, scheduler=scheduler, vae=vae, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe
