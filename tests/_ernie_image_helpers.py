"""A tiny random ErnieImagePipeline folder (tests/test_ernie_image.py), nothing downloaded: FLUX.2's tiny Mistral
tokenizer and AutoencoderKLFlux2 (tests/_flux2_helpers.py), a 3-layer Mistral3Model of width 16 (the pipeline reads
its hidden_states[-2]), a 2-layer ErnieImageTransformer2DModel (2 heads of 16, RoPE axes 4 + 6 + 6; its zero-initialised
adaLN and final projections drawn at random, so that
the velocity is not 0) and a fixed-shift scheduler (3.0)."""
import torch

import diffusers
import transformers

from _flux2_helpers import mistral3_config, mistral_tokenizer, tiny_vae


def tiny_transformer():
    torch.manual_seed(0)
    model = diffusers.ErnieImageTransformer2DModel(
        hidden_size=32, num_attention_heads=2, num_layers=2, ffn_hidden_size=64, in_channels=16, out_channels=16,
        patch_size=1, text_in_dim=16, rope_theta=256, rope_axes_dim=(4, 6, 6))
    with torch.no_grad():
        for module in (model.adaLN_modulation[-1], model.final_linear):
            module.weight.normal_(std=0.2)
            module.bias.normal_(std=0.2)
    return model


def tiny_ernie_image_pipeline():
    """The pipeline (its VAE's batch-norm variances small, 1e-4..1e-3, so that the pipeline's eps 1e-5 against the
    config's 1e-4 shows in the decoded images)."""
    tokenizer, vocab = mistral_tokenizer()
    vae = tiny_vae()
    with torch.no_grad():
        vae.bn.running_var.uniform_(1e-4, 1e-3)
    torch.manual_seed(0)
    mistral = transformers.Mistral3Model(mistral3_config(vocab, layers=3)).eval()
    pipe = diffusers.ErnieImagePipeline(
        transformer=tiny_transformer(), vae=vae, text_encoder=mistral, tokenizer=tokenizer,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe
