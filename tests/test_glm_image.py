"""GLM-Image folders (diffkit.interop.glm_image): the diffusion stage against diffusers' own GlmImagePipeline on a
tiny random folder (a 1-layer GlmImageForConditionalGeneration with a word-level processor built here, ByT5's byte
tokenizer with a 1-layer T5 encoder, a 1-layer GlmImageTransformer2DModel, a 4-level VAE with per-channel latent
statistics, a dynamic "linear" shift scheduler; nothing downloaded), the AR stage through diffusers' own
generate_prior_tokens, and ``diffkit sample`` on it (the library's PNG byte for byte)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "GlmImageForConditionalGeneration"):
    pytest.skip("transformers without GLM-Image", allow_module_level=True)

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.glm_image import (check_glm_image_folder, glyph_texts, image_to_image,  # noqa: E402
                                       is_glm_image_folder, load_glm_image, text_to_image)
from diffkit.interop.glm_image_edit import condition_prior_tokens  # noqa: E402

from _pipeline_folders import reloaded  # noqa: E402
from _pixart_helpers import assert_sample_refusals  # noqa: E402
from _sana_helpers import changed_copy  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

PROMPTS = ["a photo of 'cat'", "hot \"dog\" on a \u201cbun\u201d"]  # one glyph text, two (a pad put in front)
HEIGHT, WIDTH = 64, 32  # latents 8 x 4 (f = 8): 4 x 2 DiT patches, one prior token each
WORDS = ["<pad>", "<unk>", "<|image|>", "<sop>", "<eop>", "<|user|>", *map(str, range(40)),
         *"a photo of cat hot dog".split(), *(f"<unused{i}>" for i in range(12)), "<|dit_token_16384|>",
         "<|dit_token_16385|>"]  # the image start / end tokens (64, 65) outside the 64 vision ids generate draws


def tiny_processor():
    """A GlmImageProcessor over a word-level tokenizer with the special tokens its chat template and target grids
    use (the bos token starts the image) and a one-message chat template."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Split(pattern=Regex(r"<[^>]*>|\d+|\w+|\S"), behavior="isolated")
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=words, pad_token="<pad>", unk_token="<unk>", bos_token="<|dit_token_16384|>",
        extra_special_tokens={"image_token": "<|image|>", "grid_bos_token": "<sop>", "grid_eos_token": "<eop>"})
    template = ("{% for m in messages %}<|user|>{% for c in m['content'] %}{% if c['type'] == 'text' %}"
                "{{ c['text'] }}{% else %}<|dit_token_16384|><|image|><|dit_token_16385|>{% endif %}{% endfor %}"
                "{% endfor %}")
    images = transformers.GlmImageImageProcessorPil(patch_size=16, merge_size=1, temporal_patch_size=1,
                                                    min_pixels=16 * 16, max_pixels=512 * 512)
    return transformers.GlmImageProcessor(image_processor=images, tokenizer=tokenizer, chat_template=template)


@pytest.fixture(scope="session")
def tiny_glm_image(tmp_path_factory):
    """(GlmImagePipeline.from_pretrained of the saved folder, the folder, load_glm_image of it); built on first
    use. The transformer has no zero-initialised layers; the VAE's latent statistics are not 0 / 1."""
    path = tmp_path_factory.mktemp("glm_image") / "glm_image"
    torch.manual_seed(0)
    config = transformers.GlmImageConfig(
        text_config={"vocab_size": 66, "hidden_size": 32, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 512,
                     "vision_vocab_size": 64, "pad_token_id": 0, "eos_token_id": None,
                     "rope_parameters": {"mrope_section": (4, 2, 2)}},
        vision_config={"depth": 1, "hidden_size": 32, "num_heads": 2, "image_size": 32, "patch_size": 16,
                       "intermediate_size": 32},
        vq_config={"embed_dim": 32, "num_embeddings": 64, "latent_channels": 32},
        image_token_id=2, image_start_token_id=64, image_end_token_id=65)
    vlm = transformers.GlmImageForConditionalGeneration(config).eval()
    for name, weight in vlm.named_parameters():  # weights of some size: the tokens depend on the inputs
        if name.startswith(("model.language_model", "lm_head")) and weight.ndim == 2:
            torch.nn.init.normal_(weight, std=0.5)
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=384, d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8)).eval()
    transformer = diffusers.GlmImageTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        text_embed_dim=32, time_embed_dim=16, condition_dim=8, prior_vq_quantizer_codebook_size=64)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(4, 8, 8, 8), down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, norm_num_groups=4, sample_size=32,
        latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 1.0, 2.0])
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, time_shift_type="linear",
                                                          base_shift=0.25, max_shift=0.75)
    diffusers.GlmImagePipeline(tokenizer=transformers.ByT5Tokenizer(), processor=tiny_processor(), text_encoder=t5,
                               vision_language_encoder=vlm, vae=vae, transformer=transformer,
                               scheduler=scheduler).save_pretrained(path)
    return reloaded(path, diffusers.GlmImagePipeline, load_glm_image)


def assert_decodes_as_the_pipeline(pipe, model, ours, theirs):
    """diffkit's decoded images of ``ours`` are the pipeline's of ``theirs``: D(z std + mean), 1e-5 relative."""
    with torch.no_grad():
        image = pipe.vae.decode(theirs * torch.tensor([1.5, 0.5, 1.0, 2.0]).view(1, 4, 1, 1)
                                + torch.tensor([0.1, -0.2, 0.3, 0.0]).view(1, 4, 1, 1), return_dict=False)[0]
    print("glm-image images", relative_error(model.decode(ours), image))
    assert relative_error(model.decode(ours), image) < 1e-5


@pytest.mark.parametrize("call", [{}, {"guidance_scale": 1.0}])  # CFG at the default s = 1.5; the cond call alone
def test_glm_image_samples_as_the_pipeline(tiny_glm_image, call):
    """Same z_0 as GlmImagePipeline from the same latents and prior tokens: flow Euler on its shifted sigmas of
    int(linspace(T, 1, N + 1)[:-1]) / T, the transformer at t_i - 1 with the glyph states, prior ids (dropped in the
    unconditional pass on the empty glyphs) and size conditions; the decoded images too (z std + mean)."""
    pipe, _, model = tiny_glm_image
    noise = torch.randn(2, 4, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(1))
    prior = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = pipe(list(PROMPTS), height=HEIGHT, width=WIDTH, num_inference_steps=3, latents=noise.clone(),
                      prior_token_ids=prior, output_type="latent", **call).images
    ours = text_to_image(model, PROMPTS, prior_token_ids=prior, steps=3, latents=noise, height=HEIGHT, width=WIDTH,
                         return_latents=True, **call)
    print("glm-image", call, float((ours - theirs).abs().max()), relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)  # measured: docs/interop/glm_image.md
    if call:
        return
    assert_decodes_as_the_pipeline(pipe, model, ours, theirs)
    other = text_to_image(model, PROMPTS[0], prior_token_ids=prior[:1], sampler="unipc", steps=3, latents=noise[:1],
                          return_latents=True)  # another sampler: its own grid of the size's shifted schedule
    assert other.shape == (1, 4, 8, 4) and torch.isfinite(other).all()


def test_glm_image_encodes_glyphs_as_the_pipeline(tiny_glm_image):
    """The glyph texts and their left-padded ByT5 states are the pipeline's encode_prompt (with its empty negative);
    the folder is a GLM-Image one; the default size is the pipeline's 128 f."""
    pipe, path, model = tiny_glm_image
    assert is_glm_image_folder(path) and model.latent_shape(1) == (1, 4, 128, 128)
    assert [glyph_texts(p) for p in PROMPTS] == pipe.get_glyph_texts(PROMPTS) and glyph_texts("x") == [""]
    with torch.no_grad():  # (with gradients ByT5 rounds otherwise: 4.8e-7 off)
        theirs, negative = pipe.encode_prompt(list(PROMPTS), True, max_sequence_length=8)
    context = model.encode_prompts(PROMPTS, 8)
    assert context.shape[1] > 8 and torch.equal(context, theirs)  # two texts of at most 8 bytes in one row
    assert torch.equal(model.encode_prompts(["", ""], 8), negative)


def test_glm_image_sample_command_draws_the_pipelines_prior_tokens(tiny_glm_image, tmp_path, capsys):
    """``diffkit sample`` on a GLM-Image folder: the prior tokens from the folder's AR model as the pipeline's
    generate_prior_tokens with generator seed 0 (transformers' generate), then the library's PNG byte for byte."""
    from diffkit.images import save_grid
    pipe, path, model = tiny_glm_image
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--num", "1", "--steps", "2",
                 "--seed", "3", "--height", "32", "--width", "32", "--guidance-scale", "2", "--guidance-convention",
                 "diffusers", "--out", str(out), "--no-progress"]) == 0
    assert "GLM-Image folder" in capsys.readouterr().out
    with torch.no_grad():
        prior = pipe.generate_prior_tokens(PROMPTS[0], 32, 32, generator=torch.Generator().manual_seed(0))[0]
    assert prior.shape == (1, 4)
    save_grid(text_to_image(model, PROMPTS[0], prior_token_ids=prior, steps=2, seed=3, height=32, width=32,
                            guidance_scale=2.0, output_range="-1,1"), tmp_path / "expected.png", 8)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()


def test_what_glm_image_does_not_take_is_refused_in_one_line(tiny_glm_image, tmp_path, capsys):
    """The pipeline's image-to-image mode, a negative prompt, IP-Adapters, LoRA; folders diffkit does not drive
    (from the JSON alone); bad prior tokens and sizes: one line each, no file written."""
    _, path, model = tiny_glm_image
    for i, (file, change, expected) in enumerate([
            ("model_index.json", {"_class_name": "CogView4Pipeline"}, "allowed: GlmImagePipeline"),
            ("vae/config.json", {"latents_mean": None}, "latents_mean=None; allowed: 4 numbers"),
            ("transformer/config.json", {"out_channels": 8}, "out_channels = 4, 8; allowed: 4, 4"),
            ("scheduler/scheduler_config.json", {"use_karras_sigmas": True}, "use_karras_sigmas=True, whose")]):
        with pytest.raises(DiffkitError) as caught:
            check_glm_image_folder(changed_copy(path, tmp_path / str(i), file, change))
        assert expected in str(caught.value) and "\n" not in str(caught.value)
    prior = torch.zeros(1, 4, dtype=torch.long)
    for call, expected in [({"negative_prompt": "x"}, "GlmImagePipeline has no negative prompt"),
                           ({"ip_adapter": object()}, "GlmImagePipeline takes no IP-Adapter"),
                           ({"prior_token_ids": torch.zeros(1, 5, dtype=torch.long)}, r"shape \(1, 5\)"),
                           ({"prior_token_ids": prior + 64}, r"ids in \[0, 63\]"),
                           ({"prior_token_ids": prior.float()}, "give integer ids"),
                           ({"prior_token_ids": prior, "height": 48}, "multiples of 32")]:
        with pytest.raises(DiffkitError, match=expected):
            text_to_image(model, "hot", steps=1, **{"height": 32, "width": 32, **call})
    for images, call, expected in [
            ([[picture(0)]], {}, "a list of condition-image lists is not taken"),
            ([picture(0, 48, 32)], {}, "a condition image of 32x48 is not allowed; give sides multiples of 32"),
            ([picture(0)], {"prior_token_ids": prior}, "prior_token_ids and condition_token_ids go together"),
            ([picture(0)], {"prior_token_ids": prior, "condition_token_ids": prior[0, :3]}, r"shape \(3,\)"),
            ([picture(0)], {"prior_token_ids": prior, "condition_token_ids": prior[0] - 1}, r"ids in \[0, 63\]")]:
        with pytest.raises(DiffkitError, match=expected) as caught:
            image_to_image(model, images, "hot", steps=1, **call)
        assert "\n" not in str(caught.value)
    bare = load_glm_image(changed_copy(path, tmp_path / "bare", "model_index.json", {"processor": [None, None]}),
                          progress=False)
    with pytest.raises(DiffkitError, match="has no processor"):
        text_to_image(bare, "hot", steps=1, height=32, width=32)
    assert_sample_refusals(main, path, tmp_path, capsys, [
        (["--negative-prompt", "x", "--height", "32", "--width", "32"], "GlmImagePipeline has no negative prompt"),
        (["--lora", str(tmp_path / "x.safetensors")], "--lora"),
        (["--height", "48"], "--height 48 is not allowed; give a positive multiple of 32")])
    picture(0, 48, 32).save(tmp_path / "odd.png")
    for extra, expected in [(["--strength", "0.5"], "--strength does not apply to a GLM-Image folder"),
                            (["--mask", str(tmp_path / "odd.png")], "--mask does not apply"),
                            (["--negative-prompt", "x"], "GlmImagePipeline has no negative prompt"),
                            ([], "a condition image of 32x48 is not allowed")]:
        capsys.readouterr()
        assert main(["edit", "--checkpoint", str(path), "--images", str(tmp_path / "odd.png"), "--prompt", "hot",
                     "--steps", "1", "--out", str(tmp_path / "never"), "--no-progress", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (extra, err)
    assert not (tmp_path / "never").exists()


def picture(seed: int, height: int = 32, width: int = 32):
    """A random RGB PIL image."""
    import numpy as np
    from PIL import Image
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("prompts, call", [(PROMPTS, {}), ("hot dog", {}), (PROMPTS[0], {"guidance_scale": 1.0})])
def test_glm_image_edits_as_the_pipeline(tiny_glm_image, prompts, call):
    """Same z_0 as GlmImagePipeline(image=...) from the same latents and prior tokens (the target's and the two
    condition images', of two sizes): each image's z = (E(x) - mean) / std through the transformer once, writing the
    KV cache its conditional passes read and its unconditional passes skip; two prompts seeing the images (the
    pipeline: a list per prompt), an unquoted prompt (its CFG pair in one network call: the rows split) and s = 1;
    the decoded images too. The cache matters: text-to-image from the same tokens differs."""
    pipe, _, model = tiny_glm_image
    batch = 1 if isinstance(prompts, str) else len(prompts)
    images = [picture(0, 64, 32), picture(1)]
    noise = torch.randn(batch, 4, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(1))
    prior = torch.randint(0, 64, (batch, 8), generator=torch.Generator().manual_seed(2))
    ids = torch.randint(0, 64, (8 + 4,), generator=torch.Generator().manual_seed(3))
    grids = torch.tensor([[1, 4, 2], [1, 2, 2]])
    with torch.no_grad():
        theirs = pipe(prompts, image=[images] * batch if batch > 1 else images, height=HEIGHT, width=WIDTH,
                      num_inference_steps=3, latents=noise.clone(), prior_token_ids=prior,
                      prior_token_image_ids=[ids] * batch, source_image_grid_thw=[grids] * batch,
                      output_type="latent", **call).images
    ours = image_to_image(model, images, prompts, prior_token_ids=prior, condition_token_ids=ids, steps=3,
                          latents=noise, height=HEIGHT, width=WIDTH, return_latents=True, **call)
    print("glm-image edit", prompts, call, float((ours - theirs).abs().max()), relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)  # measured: docs/interop/glm_image.md
    plain = text_to_image(model, prompts, prior_token_ids=prior, steps=3, latents=noise, height=HEIGHT, width=WIDTH,
                          return_latents=True, **call)
    assert relative_error(plain, theirs) > 1e-3
    if batch == 1:
        return
    assert_decodes_as_the_pipeline(pipe, model, ours, theirs)


def test_glm_image_edit_command_draws_the_pipelines_condition_tokens(tiny_glm_image, tmp_path, capsys, monkeypatch):
    """The AR stage with condition images: the target's and the images' prior tokens are GlmImagePipeline's
    generate_prior_tokens' (seed 0; its features concatenated along the channels put back per image, as the
    installed transformers' get_image_tokens takes them); ``diffkit edit`` with ``--image-reference`` then writes
    the library's PNGs byte for byte (image i from --seed + i, at its size)."""
    from diffkit.images import save_images
    pipe, path, model = tiny_glm_image
    ar = pipe.vision_language_encoder
    tokens = ar.get_image_tokens
    monkeypatch.setattr(ar, "get_image_tokens", lambda features, grids: tokens(
        list(features.view(len(grids), -1, *features.shape[1:])), grids))
    images = [picture(9), picture(10)]  # whose target tokens depend on both and their order
    with torch.no_grad():
        theirs = pipe.generate_prior_tokens(PROMPTS[0], 32, 32, image=[images],
                                            generator=torch.Generator().manual_seed(0))
    ours = condition_prior_tokens(model, PROMPTS[0], images, 32, 32, 0)
    assert theirs[0].shape == (1, 4) and torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1][0])
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i}.png")
    out = tmp_path / "out"
    assert main(["edit", "--checkpoint", str(path), "--images", str(tmp_path / "0.png"), "--image-reference",
                 str(tmp_path / "1.png"), "--prompt", PROMPTS[0], "--steps", "2", "--seed", "3", "--guidance-scale",
                 "2", "--guidance-convention", "diffusers", "--out", str(out), "--no-progress"]) == 0
    assert "GLM-Image folder" in capsys.readouterr().out
    save_images(image_to_image(model, images, PROMPTS[0], steps=2, seed=3, guidance_scale=2.0, output_range="-1,1"),
                tmp_path / "expected", prefix="edit")
    assert [p.read_bytes() for p in sorted(out.iterdir())] == \
        [p.read_bytes() for p in sorted((tmp_path / "expected").iterdir())]


def test_glm_image_edit_command_takes_each_images_own_condition_images(tiny_glm_image, tmp_path, capsys):
    """Condition images per prompt. The pipeline's list per prompt (two prompts of equal glyph lengths, other images
    of two sizes each, the per-sample KV cache) is the library's call per prompt; ``diffkit edit
    --prompt-references`` (the k-th use after the k-th --images file; one reference and two; --batch-size 1) writes
    those calls' PNGs byte for byte; counts that do not fit, both reference flags, a missing file, another folder:
    one line before any output."""
    from diffkit.images import save_images
    pipe, path, model = tiny_glm_image
    prompts = ["a photo of 'cat'", "a photo of 'dog'"]  # glyph rows of one length: a batch pads neither
    images = [[picture(0, 64, 32), picture(1)], [picture(4), picture(5, 64, 32)]]
    noise = torch.randn(2, 4, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(1))
    prior = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(2))
    ids = [torch.randint(0, 64, (12,), generator=torch.Generator().manual_seed(3 + i)) for i in range(2)]
    grids = [torch.tensor([[1, 4, 2], [1, 2, 2]]), torch.tensor([[1, 2, 2], [1, 4, 2]])]
    with torch.no_grad():
        theirs = pipe(prompts, image=images, height=HEIGHT, width=WIDTH, num_inference_steps=3,
                      latents=noise.clone(), prior_token_ids=prior, prior_token_image_ids=ids,
                      source_image_grid_thw=grids, output_type="latent").images

    def ours(order):
        return torch.cat([image_to_image(model, images[j], prompts[i], prior_token_ids=prior[i:i + 1],
                                         condition_token_ids=ids[j], steps=3, latents=noise[i:i + 1], height=HEIGHT,
                                         width=WIDTH, return_latents=True) for i, j in enumerate(order)])
    print("glm-image own condition images", float((ours([0, 1]) - theirs).abs().max()),
          relative_error(ours([0, 1]), theirs))
    assert relative_error(ours([0, 1]), theirs) < 1e-5  # measured: docs/interop/glm_image.md
    assert relative_error(ours([1, 0]), theirs) > 1e-3  # each prompt's own images matter
    folder = tmp_path / "in"
    folder.mkdir()
    pictures = [picture(20 + k) for k in range(5)]
    for k, one in enumerate(pictures):
        one.save(folder / f"{k}.png" if k < 2 else tmp_path / f"r{k}.png")
    refs = [str(tmp_path / "r2.png"), f"{tmp_path / 'r3.png'},{tmp_path / 'r4.png'}"]
    base = ["edit", "--checkpoint", str(path), "--images", str(folder), "--prompt", PROMPTS[0], "--prompt",
            PROMPTS[1], "--steps", "2", "--seed", "3", "--no-progress"]
    out = tmp_path / "out"
    assert main(base + ["--prompt-references", refs[0], "--prompt-references", refs[1], "--batch-size", "1",
                        "--out", str(out)]) == 0
    assert "GLM-Image folder" in capsys.readouterr().out
    for i, own in enumerate([pictures[2:3], pictures[3:]]):
        save_images(image_to_image(model, [pictures[i], *own], PROMPTS[i], steps=2, seed=3 + i, output_range="-1,1"),
                    tmp_path / f"expected{i}", prefix="edit")
        assert (out / f"edit_0000{i}.png").read_bytes() == (tmp_path / f"expected{i}" / "edit_00000.png").read_bytes()
    other = tmp_path / "flux"
    other.mkdir()
    (other / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    bad = tmp_path / "bad"
    for extra, expected in [
            (["--prompt-references", refs[0]] * 3, "--prompt-references is given 3 times for 2 images; give it once"),
            (["--prompt-references", refs[0], "--image-reference", refs[0]],
             "--image-reference and --prompt-references are given together"),
            (["--prompt-references", refs[0] + ",", "--prompt-references", refs[1]], "'' is not a file"),
            (["--prompt-references", refs[0], "--checkpoint", str(other)],
             "--prompt-references applies to a GLM-Image folder (GlmImagePipeline)")]:
        assert main(base + extra + ["--out", str(bad)]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (extra, err)
    assert not bad.exists()
