"""PRXPixel folders (diffkit.interop.prx_pixel): diffkit's text_to_image against diffusers' own PRXPixelPipeline on a
tiny random folder (a 1-layer Qwen3VLTextModel with the word-level Gemma tokenizer of tests/_sana_helpers.py, a
1-block PRXTransformer2DModel on RGB with the bottleneck img_in and the resolution embedder, its zero-initialised
block modulation filled at random; nothing downloaded), and ``diffkit sample`` on it (the library's grid byte for
byte; flags that do not apply: one line). ftfy is not installed here: the pipeline's module gets the identity
``fix_text`` diffkit uses then (:func:`diffkit.interop.prx._text_cleaning`)."""
import types

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.prx import is_prx_folder, load_prx, text_to_image  # noqa: E402
from diffkit.interop.prx_pixel import PRXPixel, is_prx_pixel_folder, load_prx_pixel  # noqa: E402

from _pipeline_folders import reloaded  # noqa: E402
from _pixart_helpers import assert_sample_refusals, edited_copy  # noqa: E402
from _sana_helpers import check_sample_command, tiny_gemma_tokenizer  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

PROMPTS = ["&amp;amp; hot dog ", "a photo of a cat"]  # cleaned: "& hot dog" (entities unescaped twice, stripped)


def tiny_prx_pixel_pipeline():
    """A PRXPixelPipeline of random weights: Qwen3-VL text tower of 1 layer (hidden 32, 64 positions), transformer of
    1 block (2 heads of 16, patch 2, bottleneck 8, resolution embedder), FlowMatchEuler shift 3, 10 tokens, default
    size 16."""
    tokenizer = tiny_gemma_tokenizer()
    config = transformers.Qwen3VLTextConfig(
        vocab_size=len(tokenizer.get_vocab()), hidden_size=32, intermediate_size=48, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
        rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3]})
    torch.manual_seed(0)
    encoder = transformers.Qwen3VLTextModel(config).eval()
    transformer = diffusers.PRXTransformer2DModel(in_channels=3, patch_size=2, context_in_dim=32, hidden_size=32,
                                                  mlp_ratio=2.0, num_heads=2, depth=1, axes_dim=[8, 8],
                                                  bottleneck_size=8, resolution_embeds=True)
    with torch.no_grad():  # diffusers zero-initialises the blocks' modulation (gates 0: the text would not count)
        for block in transformer.blocks:
            block.modulation.lin.weight.normal_(0, 0.3)
            block.modulation.lin.bias.normal_(0, 0.3)
    assert all(p.abs().max() > 0 for p in transformer.parameters())
    return diffusers.PRXPixelPipeline(transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(
        shift=3.0), text_encoder=encoder, tokenizer=tokenizer, default_sample_size=16, prompt_max_tokens=10)


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    """(pipeline read back from disk, folder, PRXPixel): the tiny PRXPixelPipeline saved with save_pretrained."""
    from diffusers.pipelines.prx import pipeline_prx_pixel
    patch = pytest.MonkeyPatch()
    if not hasattr(pipeline_prx_pixel, "ftfy"):  # the pipeline needs ftfy.fix_text: the identity diffkit uses then
        patch.setattr(pipeline_prx_pixel, "ftfy", types.SimpleNamespace(fix_text=lambda text: text), raising=False)
    path = tmp_path_factory.mktemp("prx_pixel") / "folder"
    tiny_prx_pixel_pipeline().save_pretrained(path)
    yield reloaded(path, diffusers.PRXPixelPipeline, load_prx_pixel)
    patch.undo()


@pytest.mark.parametrize("scale,negative,prompts", [(4.0, "ugly, blurry", PROMPTS[:1]), (1.0, None, PROMPTS)])
def test_prx_pixel_matches_the_pipeline(folder, scale, negative, prompts):
    """From the same start (the pipeline's latents 2 eps, diffkit's eps): the final pixels before the clamp
    (``output_type="latent"``: x_0, against diffkit's decoded z_0) and after it (``output_type="np"``: (x / 2 +
    0.5).clamp(0, 1), against diffkit's images) equal PRXPixelPipeline's (CFG with a negative prompt, one prompt: its
    CFG timesteps have 2 rows; s = 1, its unguided loop, two prompts)."""
    pipe, path, prx = folder
    assert is_prx_folder(path) and is_prx_pixel_folder(path) and isinstance(load_prx(path, progress=False), PRXPixel)
    noise = torch.randn(len(prompts), 3, 16, 24, generator=torch.Generator().manual_seed(1))
    call = dict(num_inference_steps=3, guidance_scale=scale, height=16, width=24, use_resolution_binning=False,
                negative_prompt=negative or "")
    with torch.no_grad():
        theirs = pipe(prompts, latents=noise * 2, output_type="latent", **call).images
        clamped = torch.from_numpy(pipe(prompts, latents=noise * 2, output_type="np", **call).images)
    ours = dict(steps=3, latents=noise, guidance_scale=scale, height=16, width=24, negative_prompt=negative)
    pixels = prx.decode(text_to_image(prx, prompts, return_latents=True, **ours))
    assert theirs.abs().max() > 1.2 and 0 < (clamped == 1).float().mean() < 0.5  # the clamp cuts some pixels
    assert relative_error(pixels, theirs) < 1e-5  # measured 1.2e-6 (CFG), 3.4e-7 (s = 1)
    assert relative_error(text_to_image(prx, prompts, **ours), clamped.permute(0, 3, 1, 2)) < 1e-5  # 8.9e-7, 2.4e-7


def test_defaults_and_refusals(folder):
    """No steps, guidance or negative prompt: the pipeline's 28 steps at s = 4 against "" (its default size 16);
    another max_sequence_length, a bad size: one line."""
    pipe, _, prx = folder
    noise = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = pipe("hot dog", latents=noise * 2, use_resolution_binning=False, output_type="latent").images
    ours = prx.decode(text_to_image(prx, "hot dog", latents=noise, return_latents=True))
    assert relative_error(ours, theirs) < 1e-5  # 1.3e-6 measured
    for call, expected in [
        (dict(max_sequence_length=12), "max_sequence_length=12 is not allowed for a PRXPixel folder"),
        (dict(height=17), "height x width 17x16 is not allowed; give positive multiples of 2")]:
        with pytest.raises(DiffkitError, match=expected):
            text_to_image(prx, "hot", steps=1, **{"height": 16, "width": 16, **call})


def test_sample_command_is_the_library_and_refuses_what_does_not_apply(folder, tmp_path, capsys):
    """The grid (two prompts, CFG s = 3 against "ugly", 3 steps, 16 x 24) byte for byte; the refusals in one line
    (``--max-sequence-length``: the folder's fixed prompt_max_tokens), and ``diffkit edit``'s."""
    _, path, prx = folder
    check_sample_command(path, prx, text_to_image, tmp_path, capsys, PROMPTS, (16, 24), [
        (["--max-sequence-length", "10"], "--max-sequence-length does not apply to a PRX folder"),
        (["--lora", str(path / "model_index.json")], "--lora does not apply to a PRX folder"),
        (["--height", "17"], "--height 17 is not allowed; give a positive multiple of 2")])
    assert_sample_refusals(main, path, tmp_path, capsys, [], "a PRX")  # diffkit edit: one line


@pytest.mark.parametrize("file,change,expected", [
    ("model_index.json", {"_class_name": "PRXPipeline"}, "is a 'PRXPipeline' folder, which diffkit does not drive"),
    ("model_index.json", {"text_encoder": ["transformers", "T5GemmaEncoder"]}, "allowed: Qwen3VLTextModel"),
    ("transformer/config.json", {"in_channels": 4}, "in_channels=4; allowed: 3 (PRXPixelPipeline denoises RGB"),
    ("model_index.json", {"noise_scale": 0}, "noise_scale=0; allowed: a positive finite number"),
    ("scheduler/scheduler_config.json", {"use_dynamic_shifting": True}, "use_dynamic_shifting=True, for which"),
])
def test_folders_diffkit_does_not_drive_are_refused(folder, tmp_path, file, change, expected):
    with pytest.raises(DiffkitError, match=expected.replace("(", r"\(")):
        load_prx_pixel(edited_copy(folder[1], tmp_path / "copy", file, change), progress=False)


def test_resolution_binning_is_the_pipelines(folder):
    """``resolution_binning``: the pipeline's one table (default_sample_size 1024: 704 x 1440 for 200 x 400), the
    images resized and cropped back (its default use_resolution_binning=True, ``output_type="np"``); on the folder's
    text tower and a 1-block transformer of 32 x 32 patches (990 tokens), built in memory."""
    from diffkit.interop.prx_pixel import PRX_PIXEL_PIPELINE
    pipe, _, small = folder
    torch.manual_seed(1)
    transformer = diffusers.PRXTransformer2DModel(in_channels=3, patch_size=32, context_in_dim=32, hidden_size=32,
                                                  mlp_ratio=2.0, num_heads=2, depth=1, axes_dim=[8, 8],
                                                  bottleneck_size=8, resolution_embeds=True).eval()
    with torch.no_grad():
        transformer.blocks[0].modulation.lin.weight.normal_(0, 0.3)
    big = diffusers.PRXPixelPipeline(transformer=transformer, scheduler=pipe.scheduler, text_encoder=pipe.text_encoder,
                                     tokenizer=pipe.tokenizer, prompt_max_tokens=10)
    big.set_progress_bar_config(disable=True)
    prx = PRXPixel(pipeline=PRX_PIXEL_PIPELINE, transformer=transformer, vae=None, text_encoder=small.text_encoder,
                   tokenizer=small.tokenizer, schedule=small.schedule, prediction_type="sample",
                   scheduler_config=small.scheduler_config, device=small.device, index=dict(big.config))
    noise = torch.randn(1, 3, 704, 1440, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = big("hot dog", num_inference_steps=2, latents=noise * 2, height=200, width=400, output_type="np")
    ours = text_to_image(prx, "hot dog", steps=2, latents=noise, height=200, width=400, resolution_binning=True)
    assert ours.shape == (1, 3, 200, 400)
    assert relative_error(ours, torch.from_numpy(theirs.images).permute(0, 3, 1, 2)) < 1e-5  # 3.6e-7 measured
