"""SD3 folders (diffkit.interop.sd3): diffkit's text_to_image against diffusers' own StableDiffusion3Pipeline
on tiny random pipelines written by save_pretrained (nothing downloaded), with and without text_encoder_3."""
import json
import re

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.sd3 import is_sd3_folder, load_sd3, text_to_image  # noqa: E402
from diffkit.interop import library_progress_bars  # noqa: E402

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


class _Folders(dict):
    """{with_t5: ...}, each folder built on its first use (a module that needs one builds only that one)."""

    def __init__(self, build):
        super().__init__()
        self.build = build

    def __missing__(self, with_t5):
        self[with_t5] = self.build(with_t5)
        return self[with_t5]


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory):
    """{with_t5: (the folder's StableDiffusion3Pipeline.from_pretrained, folder, load_sd3 of it)} for a folder with and
    without text_encoder_3 (each built when first asked for)."""
    def build(with_t5):  # (inside a test, whose captured stderr must not get the libraries' progress bars)
        root = tmp_path_factory.mktemp(f"sd3_{with_t5}")
        pipe = tiny_sd3_pipeline(root, with_t5)
        with library_progress_bars(False):
            pipe.save_pretrained(root / "sd3")
            pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(
                root / "sd3", local_files_only=True,
                **({} if with_t5 else {"text_encoder_3": None, "tokenizer_3": None}))
        assert (pipe.text_encoder_3 is None) == (not with_t5)
        pipe.set_progress_bar_config(disable=True)
        return pipe, root / "sd3", load_sd3(root / "sd3", progress=False)
    return _Folders(build)


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


def test_other_samplers_and_the_scheduler_grid(tiny_sd3):
    """Any diffkit sampler runs the folder (here UniPC and DPM-Solver++(2M) on their flow grids, ddim@trailing);
    the scheduler grid holds the pipeline's sigmas at equal SNR and its network times are sigma * 1000."""
    pipe, _, sd3 = tiny_sd3[True]
    latents = _latents()
    theirs = _theirs(pipe, latents, steps=28)
    for sampler in ("unipc", "dpm-solver++-2m", "ddim@trailing"):
        ours = text_to_image(sd3, PROMPTS, sampler=sampler, steps=12, guidance_scale=4.0, latents=latents,
                             max_sequence_length=12, return_latents=True)
        error = relative_error(ours, theirs)
        assert torch.isfinite(ours).all() and error < 0.1, (sampler, error)
    grid = sd3.scheduler_grid(5)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(5)
    alpha, sigma = sd3.schedule.alpha(grid[:-1]), sd3.schedule.sigma(grid[:-1])
    torch.testing.assert_close(1000 * sigma / (alpha + sigma), scheduler.timesteps.double(), rtol=1e-6, atol=0)
    assert grid[0] == 999 and grid[-1] == -1


def test_sample_command_runs_an_sd3_folder(tiny_sd3, tmp_path, capsys):
    """`diffkit sample --checkpoint SD3_FOLDER --prompt ... --negative-prompt ...`: the grid of text_to_image's
    images (byte for byte; plain ddim = the scheduler's sigmas, another sampler its own grid), which are the
    pipeline's on the same z (PNG levels within one)."""
    import numpy as np
    from PIL import Image
    from diffkit.cli import main
    from diffkit.images import save_grid
    from diffkit.noise import generators_from_seed, randn
    pipe, folder, sd3 = tiny_sd3[True]
    common = ["--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--negative-prompt", "ugly", "--num", "2", "--nrow",
              "1", "--steps", "4", "--seed", "5", "--batch-size", "2", "--guidance-convention", "diffusers",
              "--guidance-scale", "4", "--no-progress"]
    for sampler in ("ddim", "unipc"):
        out = tmp_path / f"{sampler}.png"
        assert main(["sample", "--checkpoint", str(folder), "--sampler", sampler, "--out", str(out)] + common) == 0
        images = text_to_image(sd3, PROMPTS, sampler=None if sampler == "ddim" else sampler, steps=4, seed=5,
                               guidance_scale=4.0, negative_prompt="ugly", output_range="-1,1")
        save_grid(images, tmp_path / "expected.png", 1)
        assert out.read_bytes() == (tmp_path / "expected.png").read_bytes(), sampler
    theirs = _theirs(pipe, randn(sd3.latent_shape(2), generators_from_seed(5, 2)), scale=4.0, output_type="np",
                     negative_prompt="ugly", max_sequence_length=256)
    save_grid(torch.from_numpy(theirs).permute(0, 3, 1, 2) * 2 - 1, tmp_path / "theirs.png", 1)
    ours, ref = (np.asarray(Image.open(p), dtype=np.float64) for p in (tmp_path / "ddim.png", tmp_path / "theirs.png"))
    assert np.abs(ours - ref).max() <= 1
    capsys.readouterr()


def test_what_sd3_does_not_support_is_refused_in_one_line(tiny_sd3, tmp_path, capsys):
    """Flags an SD3 folder does not take, and folders it does not drive (an IP-Adapter image encoder, a VAE
    without shift_factor, inverted sigmas, another transformer class): one line each, before any output (dynamic
    shifting is driven: test_sd3_dynamic_shift)."""
    from diffkit.cli import main
    _, folder, _ = tiny_sd3[False]
    bad = {}
    for name, part, change in (("ip", "model_index.json", {"image_encoder": ["transformers", "SiglipVisionModel"]}),
                               ("shift", "vae/config.json", {"shift_factor": None}),
                               ("inverted", "scheduler/scheduler_config.json", {"invert_sigmas": True}),
                               ("class", "model_index.json", {"transformer": ["diffusers", "FluxTransformer2DModel"]})):
        bad[name] = tmp_path / name
        for sub in ("model_index.json", "vae/config.json", "scheduler/scheduler_config.json"):
            (bad[name] / sub).parent.mkdir(parents=True, exist_ok=True)
            config = json.loads((folder / sub).read_text())
            (bad[name] / sub).write_text(json.dumps({**config, **(change if sub == part else {})}))
        for sub in ("transformer", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"):
            (bad[name] / sub).symlink_to(folder / sub)
    base = ["sample", "--prompt", "a cat", "--steps", "2", "--out", str(tmp_path / "out" / "o.png"), "--no-progress"]
    for extra, match in (
            (["--checkpoint", str(folder), "--freeu", "1.1,1.2,0.9,0.2"], "--freeu does not apply to an SD3 folder"),
            (["--checkpoint", str(folder), "--guidance-scale", "3", "--guidance-rescale", "0.5"],
             "--guidance-rescale does not apply to an SD3 folder"),
            (["--checkpoint", str(folder), "--clip-skip", "3"], "clip_skip=3 is not allowed; give an integer"),
            (["--checkpoint", str(bad["ip"])], "image_encoder='SiglipVisionModel' \\(an IP-Adapter"),
            (["--checkpoint", str(bad["shift"])], "vae has shift_factor=None; allowed: a number"),
            (["--checkpoint", str(bad["inverted"])], "invert_sigmas=True cannot be expressed"),
            (["--checkpoint", str(bad["class"])], "transformer is a 'FluxTransformer2DModel'; allowed: SD3")):
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), err
        assert not (tmp_path / "out").exists()
    from diffkit.errors import DiffkitError
    from diffkit.interop.sd_xl import is_sd_xl_folder
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    assert not is_sd_xl_folder(folder)  # it has a text_encoder_2, but a transformer
    with pytest.raises(DiffkitError, match="is a Stable Diffusion 3 folder .* load it with diffkit.interop.load_sd3"):
        load_stable_diffusion(folder, progress=False)
    (tmp_path / "images").mkdir()
    assert main(["edit", "--checkpoint", str(folder), "--images", str(tmp_path / "images"), "--prompt", "a cat",
                 "--out", str(tmp_path / "out" / "e.png"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no .png files" in err[0], err  # edit takes SD3 folders (test_interop_sd3_edit)
    assert not (tmp_path / "out").exists()


def test_bad_arguments_are_one_line_errors(tiny_sd3):
    _, _, sd3 = tiny_sd3[False]
    for kw, match in (({"height": 18}, "height x width 18x16 is not allowed; give positive multiples of 4"),
                      ({"max_sequence_length": 600}, "max_sequence_length=600 is not allowed; allowed: 1..512"),
                      ({"clip_skip": 3}, "clip_skip=3 is not allowed; allowed: 0..2"),
                      ({"negative_prompt": ["a", "b", "c"]}, "negative_prompt has 3 entries for 2 prompts"),
                      ({"latents": torch.zeros(2, 3, 8, 8)}, "latents of shape \\(2, 3, 8, 8\\) are not allowed"),
                      ({"grid": "scheduler", "nfe": 4}, "grid='scheduler' takes steps")):
        with pytest.raises(DiffkitError, match=match):
            text_to_image(sd3, PROMPTS, steps=2, **kw)


def sd3_5_transformer(seed: int = 2):
    """A tiny SD3.5 Medium-style transformer (MMDiT-X: dual attention on block 0, qk_norm) of the tiny folder's
    sizes, drawn after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=14,
        pos_embed_max_size=16, qk_norm="rms_norm", dual_attention_layers=(0,)).eval()


def test_sd3_5_transformer_options_match_the_pipeline(tiny_sd3):
    """SD3.5's transformer options (qk_norm="rms_norm", dual_attention_layers: SD3.5 Medium's MMDiT-X) run as
    diffusers' own module: the same z_0 as the pipeline with that transformer."""
    import dataclasses
    pipe, _, sd3 = tiny_sd3[False]
    transformer = sd3_5_transformer()
    sd3_5 = dataclasses.replace(sd3, transformer=transformer, _denoiser=None)
    original, pipe.transformer = pipe.transformer, transformer
    try:
        latents = _latents()
        theirs = _theirs(pipe, latents, steps=3)
    finally:
        pipe.transformer = original
    ours = text_to_image(sd3_5, PROMPTS, steps=3, guidance_scale=4.0, latents=latents, max_sequence_length=12,
                         return_latents=True)
    assert relative_error(ours, theirs) < 1e-5


def test_second_and_third_prompts_match_the_pipeline(tiny_sd3):
    """prompt_2 / prompt_3 and negative_prompt_2 / _3 (default the first): the pipeline's prompt and null-half
    embeddings, and its latents (the pipeline takes one prompt_2 / _3 per prompt; diffkit also one for all)."""
    pipe, _, sd3 = tiny_sd3[True]
    kw = {"prompt_2": ["hot dog", "the cat"], "prompt_3": ["a blurry photo"] * 2, "negative_prompt": "ugly",
          "negative_prompt_3": "blurry"}
    theirs = pipe.encode_prompt(PROMPTS, kw["prompt_2"], kw["prompt_3"], device="cpu", max_sequence_length=12,
                                negative_prompt=kw["negative_prompt"], negative_prompt_3=kw["negative_prompt_3"])
    guided, cond = sd3.prompt_guidance(PROMPTS, "ugly", 4.0, "diffusers", 12, None, kw["prompt_2"], kw["prompt_3"],
                                       None, "blurry")
    ours = (cond["context"], guided.null_context.expand(2, -1, -1), cond["pooled"],
            guided.null_cond["pooled"].expand(2, -1))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    latents = _latents()
    z = text_to_image(sd3, PROMPTS, steps=3, guidance_scale=4.0, latents=latents, max_sequence_length=12,
                      return_latents=True, **kw)
    assert relative_error(z, _theirs(pipe, latents, steps=3, **kw)) < 1e-5
    one = sd3.encode_prompts(PROMPTS, 12, None, None, "a blurry photo")[0]
    assert torch.equal(one, sd3.encode_prompts(PROMPTS, 12, None, None, kw["prompt_3"])[0])
    with pytest.raises(DiffkitError, match="prompt_2 has 3 entries for 2 prompts"):
        sd3.encode_prompts(PROMPTS, 12, None, ["a", "b", "c"])
