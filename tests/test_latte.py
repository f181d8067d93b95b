"""Latte folders (diffkit.interop.latte, diffkit video): text_to_video against diffusers' own LattePipeline on a tiny
random folder (a 1-layer T5 of width 32 on a few-word unigram tokenizer, a 1-layer LatteTransformer3DModel with a
learned variance (8 output channels) and its adaLN tables randomised, an AutoencoderKL of factor 2, DDIM as Latte-1's;
nothing downloaded): 3 frames of 8 x 8, 2-3 steps."""
import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.images import to_uint8  # noqa: E402
from diffkit.interop.latte import is_latte_folder, load_latte, text_to_video  # noqa: E402
from diffkit.video import read_video  # noqa: E402

from _video_helpers import refused_in_one_line  # noqa: E402
from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd3 import T5_WORDS, tiny_t5_tokenizer  # noqa: E402

SIZE, FRAMES = 8, 3  # latents 4 x 4 (2 x 2 patches of 2), 3 frames (the transformer's video_length)
PROMPTS, NEGATIVE = ["a photo of a cat", "hot dog"], "blurry dog"


@pytest.fixture(scope="session")
def tiny_latte(tmp_path_factory):
    """(LattePipeline.from_pretrained of the saved folder, the folder, load_latte of it)."""
    root = tmp_path_factory.mktemp("latte")
    torch.manual_seed(0)
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=4 + len(T5_WORDS), d_model=32, d_kv=8, d_ff=40, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, dropout_rate=0.0)).eval()
    transformer = diffusers.LatteTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1, sample_size=4,
        patch_size=2, cross_attention_dim=16, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        caption_channels=32, video_length=FRAMES)
    with torch.no_grad():  # the adaLN tables: a modulation of exactly 0 would hide a wrong timestep or shift
        for name, p in transformer.named_parameters():
            if "scale_shift_table" in name:
                p.normal_(0, 0.5)
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                                  layers_per_block=1)
    scheduler = diffusers.DDIMScheduler(beta_schedule="linear", clip_sample=False)
    pipe = diffusers.LattePipeline(tokenizer=tiny_t5_tokenizer(), text_encoder=t5, vae=vae, transformer=transformer,
                                   scheduler=scheduler)
    pipe.save_pretrained(root / "latte")
    return reloaded(root / "latte", diffusers.LattePipeline, load_latte)


def _latents(batch=2, seed=5):
    return torch.randn(batch, 4, FRAMES, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(seed))


def test_latte_matches_the_pipeline(tiny_latte):
    """Two prompts (the states masked) with CFG s = 4 against a negative prompt, 3 DDIM steps: the same final latents
    (read by a step callback) and decoded frames (B, T, C, H, W) in [0, 1] as LattePipeline from the same noise; one
    prompt (both sides cut to its tokens) at the default s = 7.5 from generator seed 3, and without the temporal
    blocks (enable_temporal_attentions=False)."""
    pipe, folder, model = tiny_latte
    assert is_latte_folder(folder) and model.learned_variance
    latents, final = _latents(), {}

    def keep(pipeline, i, t, tensors):
        final["latents"] = tensors["latents"]
        return {}
    kw = {"negative_prompt": NEGATIVE, "guidance_scale": 4.0}
    with torch.no_grad():
        frames = pipe(PROMPTS, height=SIZE, width=SIZE, video_length=FRAMES, num_inference_steps=3, latents=latents,
                      output_type="pt", callback_on_step_end=keep, clean_caption=False, decode_chunk_size=4,
                      **kw).frames
    ours = text_to_video(model, PROMPTS, steps=3, num_frames=FRAMES, height=SIZE, width=SIZE, latents=latents,
                         return_latents=True, **kw)
    error = relative_error(ours, final["latents"])
    print(f"latents: {error:.2e}")  # (measured 5.5e-7)
    assert error < 1e-5
    videos = text_to_video(model, PROMPTS, steps=3, num_frames=FRAMES, height=SIZE, width=SIZE, latents=latents,
                           output_range="0,1", decode_chunk_size=4, **kw)
    assert videos.shape == frames.shape == (2, FRAMES, 3, SIZE, SIZE)
    error = relative_error(videos, frames)
    print(f"frames: {error:.2e}")  # (measured 5.4e-7)
    assert error < 1e-5
    for temporal in (True, False):
        with torch.no_grad():
            theirs = pipe(PROMPTS[:1], height=SIZE, width=SIZE, video_length=FRAMES, num_inference_steps=2,
                          generator=[torch.Generator().manual_seed(3)], output_type="latent", clean_caption=False,
                          enable_temporal_attentions=temporal).frames
        ours = text_to_video(model, PROMPTS[:1], steps=2, num_frames=FRAMES, height=SIZE, width=SIZE, seed=3,
                             return_latents=True, enable_temporal_attentions=temporal)
        error = relative_error(ours, theirs)
        print(f"one prompt, temporal={temporal}: {error:.2e}")  # (measured 6.5e-7, without 8.0e-7)
        assert error < 1e-5


def test_latte_video_command_writes_the_library_videos(tiny_latte, tmp_path, capsys):
    """diffkit video on the folder: each lossless animation (APNG) is the library's video of its prompt alone from
    seed + i (the default --batch-size 1), rounded as to_uint8 does; 8 fps; also without the temporal blocks
    (--no-temporal-attention)."""
    from PIL import Image
    _, folder, model = tiny_latte
    argv = ["video", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--seed", "4",
            "--frames", str(FRAMES), "--height", str(SIZE), "--width", str(SIZE), "--steps", "2",
            "--guidance-scale", "3", "--guidance-convention", "diffusers", "--out", str(tmp_path / "grid.png")]
    for temporal in (True, False):
        each = tmp_path / f"each{temporal}"
        code = main(argv + ["--individual", str(each)] + ([] if temporal else ["--no-temporal-attention"]))
        out = capsys.readouterr()
        assert code == 0, out.err
        assert "wrote 2 videos of 3 frames (8x8, 8 fps)" in out.out
        for i, prompt in enumerate(PROMPTS):  # --batch-size 1: each video alone (its prompt cut to its tokens)
            video = text_to_video(model, prompt, steps=2, num_frames=FRAMES, height=SIZE, width=SIZE, seed=4 + i,
                                  guidance_scale=3.0, enable_temporal_attentions=temporal)[0]
            written = read_video(each / f"video_{i:05d}.png")
            assert torch.equal(((written + 1) * 127.5).round().to(torch.uint8),
                               torch.from_numpy(to_uint8(video)).permute(0, 3, 1, 2))
    with Image.open(tmp_path / "grid.png") as image:
        assert image.info["duration"] == pytest.approx(1000 / 8, abs=1)


@pytest.mark.parametrize("command, args, message", [
    ("video", ["--frames", "2"], "num_frames=2 is not allowed; give 3 (the transformer's video_length"),
    ("video", ["--height", "12"], "--height 12 is not allowed"),
    ("video", ["--guidance-scale", "0", "--negative-prompt", "x"], "a negative prompt with guidance_scale=0"),
    ("video", ["--image", "x.png"], "--image does not apply to a Latte folder"),
    ("video", ["--lora", "x.safetensors"], "--lora does not apply to a Latte folder"),
    ("sample", [], "is a LattePipeline folder, which diffkit sample does not take (it makes videos); generate "
                   "videos with diffkit video"),
    ("edit", ["--images", "x.png"], "which diffkit edit does not take"),
])
def test_latte_refusals_are_one_line_and_write_nothing(tiny_latte, tmp_path, monkeypatch, capsys, command, args,
                                                       message):
    _, folder, _ = tiny_latte
    monkeypatch.chdir(tmp_path)
    refused_in_one_line(capsys, tmp_path, command, folder, args, message)


@pytest.mark.parametrize("part, change, message", [
    ("scheduler/scheduler_config.json", {"variance_type": "learned_range"}, "variance_type='learned_range'"),
    ("scheduler/scheduler_config.json", {"clip_sample": True}, "clip_sample=True"),
    ("transformer/config.json", {"out_channels": 6}, "out_channels=6"),
    ("model_index.json", {"vae": ["diffusers", "AutoencoderKLTemporalDecoder"]}, "AutoencoderKLTemporalDecoder"),
])
def test_latte_folder_refusals_before_any_weight(tiny_latte, tmp_path, capsys, part, change, message):
    _, folder, _ = tiny_latte
    bad = changed_folder(folder, tmp_path, part, change)
    code = main(["video", "--checkpoint", str(bad), "--prompt", "a", "--frames", str(FRAMES), "--out",
                 str(tmp_path / "v.png")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "v.png").exists()
    assert json.loads((bad / "model_index.json").read_text())["_class_name"] == "LattePipeline"


def test_latte_euler_trailing_folder(tiny_latte, tmp_path):
    """The folder with an EulerDiscreteScheduler on trailing timesteps (diffusers starts at sigma_max n, not
    sqrt(1 + sigma_max^2) n): one prompt, CFG 7.5, 2 steps, the same final latents from the same noise (diffkit's
    euler on its timesteps)."""
    _, folder, _ = tiny_latte
    bad = changed_folder(folder, tmp_path, "model_index.json", {"scheduler": ["diffusers", "EulerDiscreteScheduler"]})
    (bad / "scheduler").unlink()
    diffusers.EulerDiscreteScheduler(beta_schedule="linear", timestep_spacing="trailing").save_pretrained(
        bad / "scheduler")
    pipe, _, model = reloaded(bad, diffusers.LattePipeline, load_latte)
    latents = _latents(1)
    with torch.no_grad():
        theirs = pipe(PROMPTS[:1], height=SIZE, width=SIZE, video_length=FRAMES, num_inference_steps=2,
                      latents=latents, output_type="latent", clean_caption=False).frames
    ours = text_to_video(model, PROMPTS[:1], steps=2, num_frames=FRAMES, height=SIZE, width=SIZE, latents=latents,
                         return_latents=True)
    error = relative_error(ours, theirs)
    print(f"euler trailing: {error:.2e}")  # (measured 1.3e-6)
    assert error < 1e-5
