"""Mochi 1 folders (diffkit.interop.mochi, diffkit video): text_to_video against diffusers' own MochiPipeline on a tiny
random folder (a 1-layer T5 of width 32 on a few-word unigram tokenizer, a 2-layer MochiTransformer3DModel with its
zero-initialised RoPE frequencies randomised, an AutoencoderKLMochi of width 32 with non-trivial latents mean / std,
FlowMatchEuler with invert_sigmas as the released folder's; nothing downloaded): 7 frames (2 latent frames) of
16 x 16, 2-3 steps."""
import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.images import to_uint8  # noqa: E402
from diffkit.interop.mochi import load_mochi, text_to_video  # noqa: E402
from diffkit.video import read_video  # noqa: E402

from _video_helpers import refused_in_one_line  # noqa: E402
from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd3 import T5_WORDS, tiny_t5_tokenizer  # noqa: E402

SIZE, FRAMES = 16, 7  # latents 2 x 2 (one 2 x 2 patch), 2 latent frames
PROMPTS, NEGATIVE = ["a photo of a cat", "hot dog"], "blurry dog"


@pytest.fixture(scope="session")
def tiny_mochi(tmp_path_factory):
    """(MochiPipeline.from_pretrained of the saved folder, the folder, load_mochi of it)."""
    root = tmp_path_factory.mktemp("mochi")
    torch.manual_seed(0)
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=4 + len(T5_WORDS), d_model=32, d_kv=8, d_ff=40, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, dropout_rate=0.0)).eval()
    transformer = diffusers.MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=16,
        in_channels=12, text_embed_dim=32, time_embed_dim=4)
    with torch.no_grad():
        transformer.pos_frequencies.normal_(0, 0.5)  # zero-initialised: RoPE would be the identity
    vae = diffusers.AutoencoderKLMochi(
        latent_channels=12, out_channels=3, encoder_block_out_channels=(32,) * 4,
        decoder_block_out_channels=(32,) * 4, layers_per_block=(1,) * 5,
        latents_mean=[0.05 * i - 0.2 for i in range(12)], latents_std=[0.8 + 0.05 * i for i in range(12)])
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(invert_sigmas=True)
    pipe = diffusers.MochiPipeline(scheduler=scheduler, vae=vae, text_encoder=t5, tokenizer=tiny_t5_tokenizer(),
                                   transformer=transformer)
    pipe.save_pretrained(root / "mochi")
    return reloaded(root / "mochi", diffusers.MochiPipeline, load_mochi)


def _latents(batch=2, seed=5):
    return torch.randn(batch, 12, 2, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(seed))


def test_mochi_matches_the_pipeline(tiny_mochi):
    """Two prompts with CFG s = 4 against a negative prompt, 3 steps of the linear-quadratic schedule on the inverted
    scheduler: the same final latents (read by a step callback) and decoded frames (B, T, C, H, W) in [0, 1] as
    MochiPipeline from the same noise."""
    pipe, _, model = tiny_mochi
    latents, final = _latents(), {}

    def keep(pipeline, i, t, tensors):
        final["latents"] = tensors["latents"]
        return {}
    kw = {"negative_prompt": NEGATIVE, "guidance_scale": 4.0}
    with torch.no_grad():
        frames = pipe(PROMPTS, height=SIZE, width=SIZE, num_frames=FRAMES, num_inference_steps=3, latents=latents,
                      output_type="pt", callback_on_step_end=keep, **kw).frames
    ours = text_to_video(model, PROMPTS, steps=3, num_frames=FRAMES, height=SIZE, width=SIZE, latents=latents,
                         return_latents=True, **kw)
    error = relative_error(ours, final["latents"])
    print(f"latents: {error:.2e}")  # (measured 1.2e-6)
    assert error < 1e-5
    videos = (model.decode_video(ours) / 2 + 0.5).clamp(0, 1)
    assert videos.shape == frames.shape == (2, FRAMES, 3, SIZE, SIZE)
    error = relative_error(videos, frames)
    print(f"frames: {error:.2e}")  # (measured 8e-7)
    assert error < 1e-5


def test_mochi_plain_scheduler_zeroed_empty_prompt_and_seeds(tiny_mochi, tmp_path):
    """A folder without invert_sigmas (diffusers' test folders: no time flip) and with force_zeros_for_empty_prompt
    (the default negative prompt "": ids and mask zeros), the default guidance 4.5, 3 steps: the pipeline's latents
    from generators seed + i are text_to_video's from seed; also with Karras et al.'s euler, which cannot start at s =
    1 (the first interval is the folder's own step) and is flow Euler on the rest (DDIM is Euler in sigma / alpha)."""
    _, folder, _ = tiny_mochi
    plain = changed_folder(folder, tmp_path, "scheduler/scheduler_config.json", {"invert_sigmas": False})
    both = changed_folder(plain, tmp_path, "model_index.json", {"force_zeros_for_empty_prompt": True})
    pipe, _, model = reloaded(both, diffusers.MochiPipeline, load_mochi)
    assert model.force_zeros_for_empty_prompt and not model.invert
    with torch.no_grad():
        theirs = pipe(PROMPTS[:1], height=SIZE, width=SIZE, num_frames=FRAMES, num_inference_steps=3,
                      generator=[torch.Generator().manual_seed(3)], output_type="latent").frames
    for sampler in (None, "euler"):
        ours = text_to_video(model, PROMPTS[:1], steps=3, num_frames=FRAMES, height=SIZE, width=SIZE, seed=3,
                             sampler=sampler, return_latents=True)
        error = relative_error(ours, theirs)
        print(f"{sampler or 'ddim'} latents: {error:.2e}")  # (measured 4.7e-7, euler 1.8e-6)
        assert error < 1e-5


def test_mochi_video_command_writes_the_library_videos(tiny_mochi, tmp_path, capsys):
    """diffkit video on the folder: each lossless animation (APNG) is the library's video of seed + i, rounded as
    to_uint8 does; 30 fps."""
    from PIL import Image
    _, folder, model = tiny_mochi
    code = main(["video", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--seed", "4",
                 "--frames", str(FRAMES), "--height", str(SIZE), "--width", str(SIZE), "--steps", "2",
                 "--guidance-scale", "3", "--guidance-convention", "diffusers", "--out", str(tmp_path / "grid.png"),
                 "--individual", str(tmp_path / "each")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "wrote 2 videos of 7 frames (16x16, 30 fps)" in out.out
    videos = text_to_video(model, PROMPTS, steps=2, num_frames=FRAMES, height=SIZE, width=SIZE, seed=4,
                           guidance_scale=3.0)
    for i, video in enumerate(videos):
        written = read_video(tmp_path / "each" / f"video_{i:05d}.png")
        assert torch.equal(((written + 1) * 127.5).round().to(torch.uint8),
                           torch.from_numpy(to_uint8(video)).permute(0, 3, 1, 2))
    with Image.open(tmp_path / "grid.png") as image:
        assert image.info["duration"] == pytest.approx(1000 / 30, abs=1)


@pytest.mark.parametrize("command, args, message", [
    ("video", ["--frames", "8"], "num_frames=8 is not allowed; give 6 k + 1"),
    ("video", ["--height", "24"], "height x width 24x848 is not allowed"),
    ("video", ["--steps", "1"], "steps=1 is not allowed; give an integer >= 2"),
    ("video", ["--guidance-scale", "0", "--negative-prompt", "x"], "a negative prompt with guidance_scale=0"),
    ("video", ["--image", "x.png"], "--image does not apply to a Mochi folder"),
    ("sample", [], "is a MochiPipeline folder, which diffkit sample does not take (it makes videos); generate "
                   "videos with diffkit video"),
    ("edit", ["--images", "x.png"], "which diffkit edit does not take"),
])
def test_mochi_refusals_are_one_line_and_write_nothing(tiny_mochi, tmp_path, monkeypatch, capsys, command, args,
                                                       message):
    _, folder, _ = tiny_mochi
    monkeypatch.chdir(tmp_path)
    refused_in_one_line(capsys, tmp_path, command, folder, args, message)


@pytest.mark.parametrize("part, change, message", [
    ("scheduler/scheduler_config.json", {"use_dynamic_shifting": True}, "use_dynamic_shifting=True"),
    ("scheduler/scheduler_config.json", {"_class_name": "UniPCMultistepScheduler"}, "scheduler is a"),
    ("vae/config.json", {"temporal_expansions": [1, 2, 2]}, "temporal_expansions=[1, 2, 2]"),
    ("transformer/config.json", {"in_channels": 16}, "in_channels=16"),
])
def test_mochi_folder_refusals_before_any_weight(tiny_mochi, tmp_path, capsys, part, change, message):
    _, folder, _ = tiny_mochi
    if part.startswith("scheduler") and "_class_name" in change:
        bad = changed_folder(folder, tmp_path, "model_index.json",
                             {"scheduler": ["diffusers", change["_class_name"]]})
    else:
        bad = changed_folder(folder, tmp_path, part, change)
    code = main(["video", "--checkpoint", str(bad), "--prompt", "a", "--out", str(tmp_path / "v.png")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "v.png").exists()
    assert json.loads((bad / "model_index.json").read_text())["_class_name"] == "MochiPipeline"


MOCHI_LORA = dict(r=4, lora_alpha=8.0, target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "to_add_out",
                                                       "ff.net.2", "ff_context.net.0.proj", "proj_out", "linear_1"],
                  rank_pattern={"to_q": 2}, alpha_pattern={"to_v": 3.0})


def test_mochi_lora_is_load_lora_weights_and_fuse_lora(tiny_mochi, tmp_path, capsys):
    """A diffusers-format file (MochiPipeline.save_lora_weights, rank / alpha patterns; attention, FFNs of both
    streams, proj_out, the time embedder) at 0.6: the final latents of load_lora_weights + fuse_lora(lora_scale=0.6)'s
    pipeline; ``diffkit video --lora FILE:0.6`` writes the library's video; a LyCORIS-style key is one line."""
    from safetensors.torch import save_file

    from test_sd_lora import fused_transformer_lora
    pipe, path, model = tiny_mochi
    lora, fused = fused_transformer_lora(diffusers.MochiPipeline, path, tmp_path, MOCHI_LORA, scale=0.6, loaded=pipe)
    ours = load_mochi(path, progress=False, lora=[(lora, 0.6)])
    latents = _latents(1)
    with torch.no_grad():
        theirs = fused(PROMPTS[:1], height=SIZE, width=SIZE, num_frames=FRAMES, num_inference_steps=2,
                       latents=latents, output_type="latent").frames
    mine = text_to_video(ours, PROMPTS[:1], steps=2, num_frames=FRAMES, height=SIZE, width=SIZE, latents=latents,
                         return_latents=True)
    error, start, fused = relative_error(mine, theirs), model.transformer.state_dict(), fused.transformer.state_dict()
    worst = max(float((v - fused[k]).abs().max()) for k, v in ours.transformer.state_dict().items())
    with capsys.disabled():
        print(f"LoRA weights {worst:.2e} abs, latents: {error:.2e}")  # (measured 1.2e-7 abs, 4.9e-6)
    assert error < 1e-5 and worst < 1e-6
    assert max(float((v - start[k]).abs().max()) for k, v in ours.transformer.state_dict().items()) > 1e-2
    argv = ["video", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--frames", str(FRAMES), "--height",
            str(SIZE), "--width", str(SIZE), "--steps", "2", "--seed", "2", "--out", str(tmp_path / "v.png")]
    assert main(argv + ["--lora", f"{lora}:0.6", "--individual", str(tmp_path / "each")]) == 0
    video = text_to_video(ours, PROMPTS[0], steps=2, num_frames=FRAMES, height=SIZE, width=SIZE, seed=2)[0]
    written = read_video(tmp_path / "each" / "video_00000.png")
    assert torch.equal(((written + 1) * 127.5).round().to(torch.uint8),
                       torch.from_numpy(to_uint8(video)).permute(0, 3, 1, 2))
    save_file({"transformer.proj_out.lora_down.weight": torch.zeros(4, 64)}, tmp_path / "bad.safetensors")
    capsys.readouterr()
    assert main(argv + ["--lora", str(tmp_path / "bad.safetensors"), "--out", str(tmp_path / "bad.png")]) == 2
    err = capsys.readouterr().err
    assert "is not supported on a Mochi folder" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad.png").exists()
