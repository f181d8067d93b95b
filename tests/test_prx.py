"""PRX folders (diffkit.interop.prx): diffkit's text_to_image against diffusers' own PRXPipeline on tiny random
folders (a 1-layer T5GemmaEncoder with the word-level Gemma tokenizer of tests/_sana_helpers.py, a 1-block
PRXTransformer2DModel, the tiny DC-AE of tests/_sana_helpers.py or the tiny AutoencoderKL of tests/_pixart_helpers.py
with a shift_factor; nothing downloaded), and ``diffkit sample`` on one (the library's grid byte for byte; flags
that do not apply: one line). ftfy is not installed here: the pipeline's module gets the identity ``fix_text``
diffkit uses then (:func:`diffkit.interop.prx._text_cleaning`)."""
import types

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.prx import is_prx_folder, load_prx, text_to_image  # noqa: E402

from _pixart_helpers import assert_sample_refusals, edited_copy, tiny_pixart_pipeline  # noqa: E402
from _sana_helpers import check_sample_command, tiny_gemma_tokenizer, tiny_sana_pipeline  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

PROMPTS = ["A Photo of a cat, www.hot.com", "hot dog"]  # cleaned: lower-cased, the URL dropped


def tiny_prx_pipeline(vae):
    """A PRXPipeline of random weights on ``vae`` (4 latent channels, f = 2): T5Gemma of 1 layer (hidden 32, 64
    positions), transformer of 1 block (2 heads of 16, patch 2), FlowMatchEuler shift 3, 12 tokens, default size
    256 (its binning table's smallest)."""
    from transformers.models.t5gemma.configuration_t5gemma import T5GemmaConfig
    from transformers.models.t5gemma.modeling_t5gemma import T5GemmaEncoder
    tokenizer = tiny_gemma_tokenizer()
    tokenizer.model_max_length = 12
    module = dict(vocab_size=len(tokenizer.get_vocab()), hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
                  query_pre_attn_scalar=16, sliding_window=64)
    torch.manual_seed(0)
    encoder = T5GemmaEncoder(T5GemmaConfig(encoder=module, decoder=module, vocab_size=module["vocab_size"]).encoder)
    transformer = diffusers.PRXTransformer2DModel(in_channels=4, patch_size=2, context_in_dim=32, hidden_size=32,
                                                  mlp_ratio=2.0, num_heads=2, depth=1, axes_dim=[8, 8])
    with torch.no_grad():  # diffusers zero-initialises the blocks' modulation (gates 0: the text would not count)
        for block in transformer.blocks:
            block.modulation.lin.weight.normal_(0, 0.3)
            block.modulation.lin.bias.normal_(0, 0.3)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = diffusers.PRXPipeline(transformer=transformer, scheduler=scheduler, text_encoder=encoder.eval(),
                                 tokenizer=tokenizer, vae=vae, default_sample_size=256)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{"dc" | "kl": (pipeline, folder, PRX)}: tiny PRXPipelines on a DC-AE and on an AutoencoderKL (shift 0.1),
    saved with save_pretrained; the pipelines are the in-memory ones (transformers 5 reads the saved T5Gemma
    module config back as a default-sized T5GemmaConfig; diffkit's loader reads it as written)."""
    from diffusers.pipelines.prx import pipeline_prx
    patch = pytest.MonkeyPatch()
    if not hasattr(pipeline_prx, "ftfy"):  # the pipeline needs ftfy.fix_text: the identity diffkit uses then
        patch.setattr(pipeline_prx, "ftfy", types.SimpleNamespace(fix_text=lambda text: text), raising=False)
    kl = tiny_pixart_pipeline().vae
    kl.register_to_config(shift_factor=0.1)
    out = {}
    for name, vae in (("dc", tiny_sana_pipeline().vae), ("kl", kl)):
        pipe = tiny_prx_pipeline(vae)
        path = tmp_path_factory.mktemp("prx") / name
        pipe.save_pretrained(path)
        out[name] = pipe, path, load_prx(path, progress=False)
    yield out
    patch.undo()


@pytest.mark.parametrize("vae,scale,negative,length,prompts", [("dc", 4.0, "ugly, blurry", 10, PROMPTS[:1]),
                                                                 ("kl", 1.0, None, None, PROMPTS)])
def test_prx_matches_the_pipeline(folders, vae, scale, negative, length, prompts):
    """z_0 and the images from the same z equal PRXPipeline's (CFG with a negative prompt and a shorter token
    length on the DC-AE, one prompt: the pipeline's CFG timesteps have 2 rows, so it fails for more; s = 1, its
    unguided loop, on the AutoencoderKL with its shift_factor)."""
    pipe, path, prx = folders[vae]
    assert is_prx_folder(path) and prx.vae_scale_factor == 2
    noise = torch.randn(len(prompts), 4, 8, 12, generator=torch.Generator().manual_seed(1))
    call = dict(num_inference_steps=3, latents=noise.clone(), guidance_scale=scale, height=16, width=24,
                use_resolution_binning=False, negative_prompt=negative or "", tokenizer_max_length=length)
    with torch.no_grad():
        theirs = pipe(prompts, output_type="latent", **call).images
        images = pipe(prompts, output_type="pt", **call).images
    ours = dict(steps=3, latents=noise.clone(), guidance_scale=scale, height=16, width=24, negative_prompt=negative,
                max_sequence_length=length)
    z0 = text_to_image(prx, prompts, return_latents=True, **ours)
    assert theirs.abs().max() > 0.5
    assert relative_error(z0, theirs) < 1e-5  # measured 4.5e-7 (dc, CFG), 1.3e-7 (kl, s = 1)
    assert relative_error(text_to_image(prx, prompts, **ours), images) < 1e-5  # 3.6e-7, 3.0e-7


def test_defaults_are_the_pipelines(folders):
    """No steps, guidance or negative prompt: PRXPipeline's 28 steps at s = 4 against "" (one prompt, the latents'
    size)."""
    pipe, _, prx = folders["dc"]
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = pipe("hot dog", latents=noise.clone(), use_resolution_binning=False, output_type="latent").images
    assert relative_error(text_to_image(prx, "hot dog", latents=noise, return_latents=True), theirs) < 1e-5


def test_resolution_binning_is_the_pipelines(folders):
    """``resolution_binning``: the pipeline's table of default_sample_size 256 (160 x 352 for 200 x 400), then the
    images resized and cropped back (its default use_resolution_binning=True)."""
    pipe, _, prx = folders["dc"]
    noise = torch.randn(1, 4, 80, 176, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = pipe("hot dog", num_inference_steps=2, latents=noise.clone(), height=200, width=400,
                      output_type="pt").images
    ours = text_to_image(prx, "hot dog", steps=2, latents=noise, height=200, width=400, resolution_binning=True)
    assert ours.shape == theirs.shape == (1, 3, 200, 400)
    assert relative_error(ours, theirs) < 1e-5  # 2.2e-6 measured (after the resize)


def test_bad_input_is_refused(folders):
    _, _, prx = folders["dc"]
    for call, expected in [
        (dict(negative_prompt="ugly", guidance_scale=1.0), "a negative prompt with guidance_scale=1"),
        (dict(max_sequence_length=65), "max_sequence_length=65 is not allowed; allowed: 1..64"),
        (dict(height=18), "height x width 18x16 is not allowed; give positive multiples of 4 .the pipeline.s 4,")]:
        with pytest.raises(DiffkitError, match=expected):
            text_to_image(prx, "hot", steps=1, **{"height": 16, "width": 16, **call})


def test_sample_command_is_the_library_and_refuses_what_does_not_apply(folders, tmp_path, capsys):
    """The grid (two prompts, CFG s = 3 against "ugly", 3 steps, 16 x 32) byte for byte; the refusals in one line
    (tests/_sana_helpers.py), and ``diffkit edit``'s."""
    _, path, prx = folders["dc"]
    check_sample_command(path, prx, text_to_image, tmp_path, capsys, PROMPTS, (16, 32), [
        (["--guidance-rescale", "0.5", "--guidance-scale", "2"], "--guidance-rescale does not apply to a PRX folder"),
        (["--lora", str(path / "model_index.json")], "--lora does not apply to a PRX folder"),
        (["--height", "18"], "--height 18 is not allowed; give a positive multiple of 4")])
    assert_sample_refusals(main, path, tmp_path, capsys, [], "a PRX")


@pytest.mark.parametrize("file,change,expected", [
    ("model_index.json", {"_class_name": "PRXPixelPipeline"}, "text_encoder is a 'T5GemmaEncoder'; allowed: Qwen3VL"),
    ("model_index.json", {"vae": [None, None]}, "vae"),
    ("transformer/config.json", {"in_channels": 16}, "in_channels=16; allowed: the VAE's latent channels 4"),
    ("scheduler/scheduler_config.json", {"use_dynamic_shifting": True}, "use_dynamic_shifting=True, for which"),
])
def test_folders_diffkit_does_not_drive_are_refused(folders, tmp_path, file, change, expected):
    with pytest.raises(DiffkitError, match=expected.replace("(", r"\(")):
        load_prx(edited_copy(folders["dc"][1], tmp_path / "copy", file, change), progress=False)
