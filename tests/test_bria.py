"""Bria 3.2 folders (diffkit.interop.bria): text_to_image against diffusers' own BriaPipeline on a tiny random folder
(a tiny T5 encoder of test_interop_sd3's tokenizer, FLUX.1's tiny 16-channel VAE, a tiny BriaTransformer2DModel,
a dynamic-shift or a fixed-shift FlowMatchEuler scheduler; nothing downloaded), with negative prompts and CFG."""
import json
import re

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.bria import is_bria_folder, load_bria, original_sigmas, text_to_image  # noqa: E402
from diffkit.interop.chroma import is_chroma_folder  # noqa: E402
from diffkit.interop.flux import is_flux_folder, pack_latents, unpack_latents  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_flux import tiny_flux_vae  # noqa: E402
from test_interop_sd3 import T5_WORDS, tiny_t5_tokenizer  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]
SIZE = 16  # images 16 x 16: latents 16 x 8 x 8, 16 packed tokens (the pipeline's vae_scale_factor 4 = 2 f)
LENGTH = 12  # T5 tokens


@pytest.fixture(scope="module")
def tiny_bria(tmp_path_factory):
    """{dynamic: (BriaPipeline.from_pretrained of the saved folder, the folder, load_bria of it)}: one folder with
    FLUX.1-dev's dynamic-shift scheduler, one with a fixed shift 3 (get_original_sigmas' branch)."""
    root = tmp_path_factory.mktemp("bria")
    torch.manual_seed(1)
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=4 + len(T5_WORDS), d_model=32, d_kv=8, d_ff=40, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, dropout_rate=0.0)).eval()
    transformer = diffusers.BriaTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, axes_dims_rope=[2, 2, 4])
    out = {}
    for dynamic in (True, False):
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=dynamic, base_shift=0.5, max_shift=1.15)
        pipe = diffusers.BriaPipeline(transformer=transformer, scheduler=scheduler, vae=tiny_flux_vae(),
                                      text_encoder=t5, tokenizer=tiny_t5_tokenizer())
        pipe.save_pretrained(root / f"bria_{dynamic}")
        pipe = diffusers.BriaPipeline.from_pretrained(root / f"bria_{dynamic}", local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        out[dynamic] = (pipe, root / f"bria_{dynamic}", load_bria(root / f"bria_{dynamic}", progress=False))
    return out


def _latents(batch=2, seed=7):
    return torch.randn(batch, 16, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_bria_encodes_prompts_as_the_pipeline(tiny_bria):
    """Each prompt's T5 states (no padding, no mask) then zeros up to max_sequence_length; the folder is Bria's."""
    pipe, folder, bria = tiny_bria[True]
    assert is_bria_folder(folder) and not is_flux_folder(folder) and not is_chroma_folder(folder)
    assert bria.latent_shape(2, SIZE, SIZE) == (2, 16, 8, 8)
    context, mask = bria.encode_prompts(PROMPTS, LENGTH)
    theirs, negative, _ = pipe.encode_prompt(PROMPTS, device="cpu", max_sequence_length=LENGTH)
    assert mask is None and context.shape == (2, LENGTH, 32)
    assert torch.equal(context[1, 3:], torch.zeros(LENGTH - 3, 32))  # "hot dog </s>", then zeros
    torch.testing.assert_close(context, theirs, rtol=0, atol=1e-6)
    assert torch.equal(negative, torch.zeros_like(theirs))  # no negative prompt: zeros
    from diffusers.pipelines.bria.pipeline_bria import get_original_sigmas
    for steps in (1, 3, 30):
        assert original_sigmas(1000, steps).tolist() == get_original_sigmas(1000, steps).tolist()
    assert original_sigmas(1000, 3).tolist() == pytest.approx([1.0, 0.501, 0.001])  # i / T at int(499.5) = 499


@pytest.mark.parametrize("dynamic, kw", [
    (True, {"negative_prompt": "ugly blurry", "guidance_scale": 4.0}),
    (True, {}),  # the default 5.0 against zeros (no negative prompt)
    (False, {"negative_prompt": ["ugly", "blurry the"]}),
    (False, {"guidance_scale": 1.0})])  # no CFG
def test_bria_matches_the_pipeline(tiny_bria, dynamic, kw):
    """Same z_0 as BriaPipeline from the same latents: flow Euler on its sigmas (linspace shifted with mu of 16
    tokens, or get_original_sigmas shifted by 3), the flow time s T as the timestep, CFG."""
    pipe, _, bria = tiny_bria[dynamic]
    latents = _latents()
    with torch.no_grad():
        theirs = pipe(PROMPTS, height=SIZE, width=SIZE, num_inference_steps=3, latents=pack_latents(latents),
                      output_type="latent", max_sequence_length=LENGTH, **kw).images
    theirs = unpack_latents(theirs, 8, 8)
    ours = text_to_image(bria, PROMPTS, steps=3, latents=latents, max_sequence_length=LENGTH, return_latents=True,
                         **kw)
    error = relative_error(ours, theirs)
    print("bria", dynamic, kw, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)
