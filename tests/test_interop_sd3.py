"""SD3 folders (diffkit.interop.sd3): diffkit's text_to_image against diffusers' own StableDiffusion3Pipeline
on tiny random pipelines written by save_pretrained (nothing downloaded), with and without text_encoder_3."""
import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.sd3 import is_sd3_folder, load_sd3, text_to_image  # noqa: E402

from test_interop_diffusers import relative_error, tiny_sd_components  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]
T5_WORDS = "a photo of cat hot dog ugly blurry the".split()


def tiny_t5_tokenizer():
    """A unigram T5Tokenizer (transformers' own class, pad 0, </s> 1 appended, unk 2) of a few words, built without
    any download."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + [("\u2581" + w, -1.0) for w in T5_WORDS]
    return transformers.T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_sd3_pipeline(root, with_t5=True, shift=3.0, **transformer_options):
    """A tiny random StableDiffusion3Pipeline: two CLIPTextModelWithProjection (hidden 16 / 12, projection 8 / 6)
    on the CLIP tokenizer of :func:`tiny_sd_components` (the second padding with "!"), a T5EncoderModel (d_model 32)
    or none, an SD3Transformer2DModel (joint_attention_dim 32, pooled 14, patch 2, latents 4 x 8 x 8), an
    AutoencoderKL with SD3's scaling and shift factors and no quant convs, FlowMatchEuler with ``shift``."""
    _, _, _, tokenizer = tiny_sd_components(root)
    tokenizer_2 = transformers.CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=16,
                                             pad_token="!")
    torch.manual_seed(0)
    clips = [transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden, intermediate_size=24,
        num_attention_heads=4, num_hidden_layers=3, vocab_size=tokenizer.vocab_size, max_position_embeddings=16,
        projection_dim=proj)) for hidden, proj in ((16, 8), (12, 6))]
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=4 + len(T5_WORDS), d_model=32, d_kv=8, d_ff=40, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, dropout_rate=0.0)).eval() if with_t5 else None
    transformer = diffusers.SD3Transformer2DModel(**{
        "sample_size": 8, "patch_size": 2, "in_channels": 4, "out_channels": 4, "num_layers": 2,
        "attention_head_dim": 8, "num_attention_heads": 4, "joint_attention_dim": 32, "caption_projection_dim": 32,
        "pooled_projection_dim": 14, "pos_embed_max_size": 16, **transformer_options})
    vae = diffusers.AutoencoderKL(block_out_channels=[16, 32], in_channels=3, out_channels=3, latent_channels=4,
                                  down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                                  norm_num_groups=8, sample_size=16, scaling_factor=1.5305, shift_factor=0.0609,
                                  use_quant_conv=False, use_post_quant_conv=False)
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=shift), vae=vae,
        text_encoder=clips[0], tokenizer=tokenizer, text_encoder_2=clips[1], tokenizer_2=tokenizer_2,
        text_encoder_3=t5, tokenizer_3=tiny_t5_tokenizer() if with_t5 else None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory):
    """{with_t5: (the folder's StableDiffusion3Pipeline.from_pretrained, folder, load_sd3 of it)} for a folder with and
    without text_encoder_3."""
    out = {}
    for with_t5 in (True, False):
        root = tmp_path_factory.mktemp(f"sd3_{with_t5}")
        pipe = tiny_sd3_pipeline(root, with_t5)
        pipe.save_pretrained(root / "sd3")
        pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(
            root / "sd3", local_files_only=True, **({} if with_t5 else {"text_encoder_3": None, "tokenizer_3": None}))
        assert (pipe.text_encoder_3 is None) == (not with_t5)
        pipe.set_progress_bar_config(disable=True)
        out[with_t5] = (pipe, root / "sd3", load_sd3(root / "sd3", progress=False))
    return out


def _latents(batch=2, seed=7):
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def _theirs(pipe, latents, steps=4, scale=4.0, output_type="latent", **kw):
    with torch.no_grad():
        return pipe(PROMPTS, num_inference_steps=steps, guidance_scale=scale, latents=latents.clone(),
                    output_type=output_type, max_sequence_length=kw.pop("max_sequence_length", 12), **kw).images


@pytest.mark.parametrize("with_t5", [True, False])
def test_sd3_encodes_prompts_as_the_pipeline(tiny_sd3, with_t5):
    pipe, folder, sd3 = tiny_sd3[with_t5]
    assert is_sd3_folder(folder) and sd3.latent_shape(2) == (2, 4, 8, 8) and sd3.shift_factor == pytest.approx(0.0609)
    for clip_skip in (None, 1):
        context, pooled = sd3.encode_prompts(PROMPTS, 12, clip_skip)
        theirs, _, theirs_pooled, _ = pipe.encode_prompt(PROMPTS, None, None, device="cpu", clip_skip=clip_skip,
                                                         do_classifier_free_guidance=False, max_sequence_length=12)
        assert context.shape == (2, 16 + 12, 32) and pooled.shape == (2, 14)
        torch.testing.assert_close(context[:, :16], theirs[:, :16], rtol=0, atol=0)  # the CLIP part: bit for bit
        # T5: 7e-7 measured (the same weights and ids; two loads of the folder round differently)
        torch.testing.assert_close(context, theirs, rtol=0, atol=1e-5)
        torch.testing.assert_close(pooled, theirs_pooled, rtol=0, atol=0)
    assert (context[:, 16:].abs().max() == 0) == (not with_t5)


@pytest.mark.parametrize("with_t5", [True, False])
@pytest.mark.parametrize("scale, negative", [(1.0, None), (4.0, None), (4.0, "ugly blurry")])
def test_sd3_matches_the_pipeline(tiny_sd3, with_t5, scale, negative):
    """Same z_0 and images as StableDiffusion3Pipeline: flow Euler on the scheduler's sigmas (shift 3), the same
    latents, guidance s = 1 (off) and 4, the empty or a negative prompt."""
    pipe, _, sd3 = tiny_sd3[with_t5]
    latents = _latents()
    kw = {} if negative is None else {"negative_prompt": negative}
    theirs = _theirs(pipe, latents, scale=scale, **kw)
    ours = text_to_image(sd3, PROMPTS, steps=4, guidance_scale=scale, latents=latents, max_sequence_length=12,
                         return_latents=True, **kw)
    assert relative_error(ours, theirs) < 1e-5, (float((ours - theirs).abs().max()), relative_error(ours, theirs))
    images = _theirs(pipe, latents, scale=scale, output_type="pt", **kw)
    ours_images = text_to_image(sd3, PROMPTS, steps=4, guidance_scale=scale, latents=latents, max_sequence_length=12,
                                **kw)
    assert ours_images.shape == images.shape == (2, 3, 16, 16)
    assert float((ours_images - images).abs().max()) < 1e-5
