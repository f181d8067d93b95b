"""Allegro folders (diffkit.interop.allegro, diffkit video): text_to_video against diffusers' own AllegroPipeline on a
tiny random folder (a 1-layer T5 of width 32 on a few-word unigram tokenizer, a 1-layer AllegroTransformer3DModel with
its zero-initialised layers randomised, an AutoencoderKLAllegro of factors 4 x 4 whose decoding tiles are shrunk to
8 frames x 16 x 16 pixels every 4 x 8 x 8, the EulerAncestralDiscreteScheduler Allegro ships; nothing downloaded):
9 frames (3 latent frames, decoded in two overlapping tiles of frames) of 16 x 24 (two tiles across), 2-4 steps."""
import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.images import to_uint8  # noqa: E402
from diffkit.interop import allegro  # noqa: E402
from diffkit.interop.allegro import is_allegro_folder, load_allegro, text_to_video  # noqa: E402
from diffkit.video import read_video  # noqa: E402

from _video_helpers import refused_in_one_line  # noqa: E402
from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd3 import T5_WORDS, tiny_t5_tokenizer  # noqa: E402

FRAMES, HEIGHT, WIDTH = 9, 16, 24  # latents 3 x 4 x 6 (2 x 3 patches of 2)
TILE_FRAMES, TILE_OVERLAP = 8, (4, 8, 8)  # tiles of 8 x 16 x 16 pixels (2 x 4 x 4 latents) every 4 x 8 x 8
PROMPTS, NEGATIVE = ["a photo of a cat", "hot dog"], "blurry dog"
SIZE = {"num_frames": FRAMES, "height": HEIGHT, "width": WIDTH}


@pytest.fixture(scope="module")
def tiny_allegro(tmp_path_factory):
    """(AllegroPipeline.from_pretrained of the saved folder with the shrunk tiles, the folder, load_allegro of it);
    diffkit's tile constants shrunk the same for the module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(allegro, "TILE_FRAMES", TILE_FRAMES)
        patch.setattr(allegro, "TILE_OVERLAP", TILE_OVERLAP)
        root = tmp_path_factory.mktemp("allegro")
        torch.manual_seed(0)
        t5 = transformers.T5EncoderModel(transformers.T5Config(
            vocab_size=4 + len(T5_WORDS), d_model=32, d_kv=8, d_ff=40, num_layers=1, num_heads=4,
            relative_attention_num_buckets=8, decoder_start_token_id=0, dropout_rate=0.0)).eval()
        transformer = diffusers.AllegroTransformer3DModel(
            num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, num_layers=1,
            cross_attention_dim=24, caption_channels=32, sample_height=4, sample_width=6, sample_frames=3)
        with torch.no_grad():  # zero-initialised layers (none today) would hide a wrong input
            for p in transformer.parameters():
                if not p.any():
                    p.normal_(0, 0.3)
        vae = diffusers.AutoencoderKLAllegro(
            block_out_channels=(8, 8, 8), down_block_types=("AllegroDownBlock3D",) * 3,
            up_block_types=("AllegroUpBlock3D",) * 3, temporal_downsample_blocks=(True, True, False),
            temporal_upsample_blocks=(False, True, True), latent_channels=4, layers_per_block=1, norm_num_groups=4,
            sample_size=16)
        pipe = diffusers.AllegroPipeline(tokenizer=tiny_t5_tokenizer(), text_encoder=t5, vae=vae,
                                         transformer=transformer, scheduler=diffusers.EulerAncestralDiscreteScheduler())
        pipe.save_pretrained(root / "allegro")
        pipe, folder, model = reloaded(root / "allegro", diffusers.AllegroPipeline, load_allegro)
        pipe.vae.enable_tiling()
        pipe.vae.enable_slicing()  # its tiled_decode takes one video at a time
        pipe.vae.kernel, pipe.vae.stride = (TILE_FRAMES, 16, 16), (4, 8, 8)
        assert (model.vae.kernel, model.vae.stride) == (pipe.vae.kernel, pipe.vae.stride)
        yield pipe, folder, model


def _generators(seed, n):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_allegro_matches_the_pipeline(tiny_allegro):
    """Two prompts with CFG s = 4 against a negative prompt, 4 steps of the folder's Euler-ancestral scheduler from
    per-video generators seed + i (its z_T and step noise): the same final latents (read by a step callback) and
    decoded frames (B, T, C, H, W) in [0, 1] as AllegroPipeline; one prompt at the default s = 7.5 with the folder's
    scheduler swapped for EulerDiscreteScheduler (deterministic) against diffkit's euler on the folder's grid."""
    pipe, folder, model = tiny_allegro
    assert is_allegro_folder(folder) and model.folder_sampler() == ("euler-ancestral", {})
    final = {}

    def keep(pipeline, i, t, tensors):
        final["latents"] = tensors["latents"]
        return {}
    kw = {"negative_prompt": NEGATIVE, "guidance_scale": 4.0}
    with torch.no_grad():
        frames = pipe(PROMPTS, num_inference_steps=4, generator=_generators(5, 2), output_type="pt",
                      callback_on_step_end=keep, clean_caption=False, **SIZE, **kw).frames
    ours = text_to_video(model, PROMPTS, steps=4, seed=5, return_latents=True, **SIZE, **kw)
    error = relative_error(ours, final["latents"])
    print(f"euler-ancestral latents: {error:.2e}")
    assert error < 1e-5
    videos = text_to_video(model, PROMPTS, steps=4, seed=5, output_range="0,1", **SIZE, **kw)
    assert videos.shape == frames.shape == (2, FRAMES, 3, HEIGHT, WIDTH)
    error = relative_error(videos, frames)
    print(f"frames: {error:.2e}")
    assert error < 1e-5
    euler = diffusers.AllegroPipeline(**{**pipe.components, "scheduler": diffusers.EulerDiscreteScheduler.from_config(
        pipe.scheduler.config)})
    euler.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = euler(PROMPTS[:1], num_inference_steps=4, generator=_generators(3, 1), output_type="latent",
                       clean_caption=False, **SIZE).frames
    ours = text_to_video(model, PROMPTS[:1], steps=4, seed=3, sampler="euler", return_latents=True, **SIZE)
    error = relative_error(ours, theirs)
    print(f"euler latents: {error:.2e}")
    assert error < 1e-5


def test_allegro_video_command_writes_the_library_videos(tiny_allegro, tmp_path, capsys):
    """diffkit video on the folder: each lossless animation (APNG) is the library's video of its prompt alone from
    seed + i (the default --batch-size 1), rounded as to_uint8 does; 15 fps."""
    from PIL import Image
    _, folder, model = tiny_allegro
    each = tmp_path / "each"
    code = main(["video", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--seed", "4",
                 "--frames", str(FRAMES), "--height", str(HEIGHT), "--width", str(WIDTH), "--steps", "2",
                 "--guidance-scale", "3", "--guidance-convention", "diffusers", "--negative-prompt", NEGATIVE,
                 "--out", str(tmp_path / "grid.png"),
                 "--individual", str(each)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert f"wrote 2 videos of {FRAMES} frames ({WIDTH}x{HEIGHT}, 15 fps)" in out.out
    for i, prompt in enumerate(PROMPTS):
        video = text_to_video(model, prompt, steps=2, seed=4 + i, guidance_scale=3.0, negative_prompt=NEGATIVE,
                              **SIZE)[0]
        written = read_video(each / f"video_{i:05d}.png")
        assert torch.equal(((written + 1) * 127.5).round().to(torch.uint8),
                           torch.from_numpy(to_uint8(video)).permute(0, 3, 1, 2))
    with Image.open(tmp_path / "grid.png") as image:
        assert image.info["duration"] == pytest.approx(1000 / 15, abs=1)


@pytest.mark.parametrize("command, args, message", [
    ("video", ["--frames", "1"], "num_frames=1 is not allowed for this VAE: its 1 latent frames are not covered by "
                                 "its decoding tiles of 2 every 1"),
    ("video", ["--height", "8"], "height=8 is not allowed for this VAE"),
    ("video", ["--width", "12"], "width=12 is not allowed; give a positive multiple of 8"),
    ("video", ["--guidance-scale", "0", "--negative-prompt", "x"], "a negative prompt with guidance_scale=0"),
    ("video", ["--image", "x.png"], "--image does not apply to an Allegro folder"),
    ("video", ["--lora", "x.safetensors"], "--lora does not apply to an Allegro folder"),
    ("sample", [], "is an AllegroPipeline folder, which diffkit sample does not take (it makes videos)"),
])
def test_allegro_refusals_are_one_line_and_write_nothing(tiny_allegro, tmp_path, monkeypatch, capsys, command, args,
                                                         message):
    _, folder, _ = tiny_allegro
    monkeypatch.chdir(tmp_path)
    refused_in_one_line(capsys, tmp_path, command, folder, args, message)


@pytest.mark.parametrize("part, change, message", [
    ("scheduler/scheduler_config.json", {"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr=True"),
    ("scheduler/scheduler_config.json", {"_class_name": "LMSDiscreteScheduler"}, "no diffkit sampler equivalent"),
    ("transformer/config.json", {"patch_size_t": 2}, "patch_size_t=2"),
    ("transformer/config.json", {"out_channels": 8}, "out_channels=8"),
    ("model_index.json", {"vae": ["diffusers", "AutoencoderKL"]}, "AutoencoderKL"),
])
def test_allegro_folder_refusals_before_any_weight(tiny_allegro, tmp_path, capsys, part, change, message):
    _, folder, _ = tiny_allegro
    bad = changed_folder(folder, tmp_path, part, change)
    code = main(["video", "--checkpoint", str(bad), "--prompt", "a", "--frames", str(FRAMES), "--out",
                 str(tmp_path / "v.png")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "v.png").exists()
    assert json.loads((bad / "model_index.json").read_text())["_class_name"] == "AllegroPipeline"
