"""Wan video-to-video folders (diffkit.interop.wan_v2v, ``diffkit video --video``) against diffusers' own
WanVideoToVideoPipeline on a tiny random folder (Wan text-to-video's tiny parts of tests/test_wan.py: a 1-layer UMT5,
a 1-layer WanTransformer3DModel, a Wan 2.1 VAE of z_dim 4 with non-trivial latents mean / std, Wan's flow UniPC;
input videos of 5 frames of 20 x 36 resized to 16 x 32, 2 latent frames; nothing downloaded). ftfy is not installed:
the pipeline's prompt_clean gets it as the identity, as diffkit does."""
import re
import types

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import to_uint8  # noqa: E402
from diffkit.interop.wan_v2v import check_wan_v2v_folder, load_wan_v2v, video_to_video  # noqa: E402
from diffkit.video import read_video  # noqa: E402

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from _video_helpers import refused_in_one_line  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_wan import WAN_LORA, tiny_wan_parts  # noqa: E402

H, W, FRAMES = 16, 32, 5  # latents 2 frames of 2 x 4: 1 x 2 patches
PROMPTS, NEGATIVE = ["a photo of a Cat", "a dog"], "blurry dog"


@pytest.fixture(scope="module")
def tiny_wan_v2v(tmp_path_factory):
    """(WanVideoToVideoPipeline.from_pretrained of the saved folder, the folder, load_wan_v2v of it), with ftfy's
    fix_text as the identity in the pipeline's module while the tests run."""
    from diffusers.pipelines.wan import pipeline_wan_video2video
    root = tmp_path_factory.mktemp("wan_v2v")
    diffusers.WanVideoToVideoPipeline(**tiny_wan_parts()).save_pretrained(root / "wan_v2v")
    with pytest.MonkeyPatch.context() as patch:
        if not hasattr(pipeline_wan_video2video, "ftfy"):
            patch.setattr(pipeline_wan_video2video, "ftfy", types.SimpleNamespace(fix_text=lambda text: text),
                          raising=False)
        yield reloaded(root / "wan_v2v", diffusers.WanVideoToVideoPipeline, load_wan_v2v)


def _video(seed, frames=FRAMES, size=(W + 4, H + 4)):
    """A random video as a list of PIL frames (smooth enough for the tiny VAE to see its content)."""
    from PIL import Image
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(frames, 3, 3, 5, generator=g)
    pixels = torch.nn.functional.interpolate(coarse, size=(size[1], size[0]), mode="bilinear") * 255
    pixels = pixels + 20 * torch.rand(pixels.shape, generator=g)
    return [Image.fromarray(f.clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()) for f in pixels]


def _frames_folder(path, video):
    path.mkdir()
    for i, frame in enumerate(video):
        frame.save(path / f"{i:03d}.png")
    return path


def test_wan_v2v_matches_the_pipeline(tiny_wan_v2v):
    """Two prompts on two input videos, CFG s = 4 against negative prompts, 4 UniPC steps at the default strength
    0.8 (the last 3 run), video i's noise from seed 3 + i (the pipeline's per-video generators): the same final
    latents (read by a step callback) and decoded frames (B, T, C, H, W) in [0, 1]."""
    pipe, _, model = tiny_wan_v2v
    videos, final = [_video(1), _video(2)], {}
    kw = {"negative_prompt": [NEGATIVE, "ugly"], "guidance_scale": 4.0, "height": H, "width": W}
    with torch.no_grad():
        frames = pipe(video=videos, prompt=PROMPTS, num_inference_steps=4, output_type="pt",
                      generator=[torch.Generator().manual_seed(3 + i) for i in range(2)],
                      callback_on_step_end=lambda p, i, t, tensors: final.update(tensors) or {}, **kw).frames
    ours = video_to_video(model, videos, PROMPTS, steps=4, seed=3, return_latents=True, **kw)
    error = relative_error(ours, final["latents"])
    print(f"latents: {error:.2e}")  # (measured 7.3e-7)
    assert error < 1e-5
    videos = (model.decode_video(ours) / 2 + 0.5).clamp(0, 1)
    assert videos.shape == frames.shape == (2, FRAMES, 3, H, W)
    error = relative_error(videos, frames)
    print(f"frames: {error:.2e}")  # (measured 7.0e-7)
    assert error < 1e-5


def test_wan_v2v_sampler_matches_flow_match_euler(tiny_wan_v2v, tmp_path):
    """The folder with a FlowMatchEulerDiscreteScheduler (shift 3; the pipeline's ``scale_noise`` start), strength 0.5
    of 4 steps (the last 2 run), unguided: diffkit's ``euler`` sampler on the cut grid is the pipeline's loop."""
    pipe, path, _ = tiny_wan_v2v
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    euler = diffusers.WanVideoToVideoPipeline(**{**pipe.components, "scheduler": scheduler})
    euler.set_progress_bar_config(disable=True)
    folder = changed_folder(path, tmp_path, "model_index.json", {"scheduler": [
        "diffusers", "FlowMatchEulerDiscreteScheduler"]}, parts=("transformer", "text_encoder", "tokenizer", "vae"))
    scheduler.save_pretrained(folder / "scheduler")
    model = load_wan_v2v(folder, progress=False)
    video, kw = _video(4), {"guidance_scale": 1.0, "height": H, "width": W, "strength": 0.5}
    with torch.no_grad():
        theirs = euler(video=video, prompt=PROMPTS[0], num_inference_steps=4, output_type="latent",
                       generator=[torch.Generator().manual_seed(5)], **kw).frames
    ours = video_to_video(model, [video], PROMPTS[0], steps=4, seed=5, sampler="euler", return_latents=True, **kw)
    error = relative_error(ours, theirs)
    print(f"latents: {error:.2e}")  # (measured 3.3e-7)
    assert error < 1e-5


def test_wan_v2v_lora_and_command(tiny_wan_v2v, tmp_path):
    """A diffusers-format LoRA (Wan text-to-video's test's) at 0.6: load_lora_weights + fuse_lora(lora_scale=0.6)'s
    latents (2 UniPC steps at strength 1, unguided); ``diffkit video --video DIR --lora FILE:0.6`` (two prompts on one
    input video in one batch, 2 steps at strength 0.6, CFG 5 against "") writes the library's frames at 16 fps."""
    from PIL import Image

    from test_sd_lora import fused_transformer_lora
    pipe, path, _ = tiny_wan_v2v
    lora, fused = fused_transformer_lora(diffusers.WanVideoToVideoPipeline, path, tmp_path, WAN_LORA, scale=0.6,
                                         loaded=pipe)
    ours = load_wan_v2v(path, progress=False, lora=[(lora, 0.6)])
    video, kw = _video(6), {"guidance_scale": 1.0, "height": H, "width": W, "strength": 1.0}
    with torch.no_grad():
        theirs = fused(video=video, prompt=PROMPTS[0], num_inference_steps=2, output_type="latent",
                       generator=[torch.Generator().manual_seed(0)], **kw).frames
    error = relative_error(video_to_video(ours, [video], PROMPTS[0], steps=2, return_latents=True, **kw), theirs)
    print(f"latents: {error:.2e}")  # (measured 2.7e-7)
    assert error < 1e-5
    folder = _frames_folder(tmp_path / "in", video)
    assert main(["video", "--checkpoint", str(path), "--video", str(folder), "--prompt", PROMPTS[0], "--prompt",
                 PROMPTS[1], "--steps", "2", "--strength", "0.6", "--height", str(H), "--width", str(W), "--lora",
                 f"{lora}:0.6", "--seed", "2", "--batch-size", "2", "--nrow", "1", "--out", str(tmp_path / "v.png"),
                 "--no-progress"]) == 0
    expected = video_to_video(ours, [read_video(folder)] * 2, PROMPTS, steps=2, strength=0.6, height=H, width=W,
                              seed=2)
    written = read_video(tmp_path / "v.png")
    for i in range(2):
        assert (to_uint8(written[:, :, 2 + i * (H + 2):2 + i * (H + 2) + H, 2:2 + W]) == to_uint8(expected[i])).all()
    with Image.open(tmp_path / "v.png") as image:
        assert image.info["duration"] == 62.5  # 16 fps


@pytest.mark.parametrize("command, args, message", [
    ("video", ["--video", "six"], "input videos of 6 frames are not allowed; give 4 k + 1 frames"),
    ("video", ["--video", "in", "--height", "24"], "--height 24 is not allowed for a Wan video-to-video folder"),
    ("video", ["--video", "in", "--steps", "4", "--strength", "0.2"], "--strength 0.2 keeps int(4 * 0.2) = 0 of 4"),
    ("video", ["--video", "in", "--frames", "5"], "--frames does not apply to a Wan video-to-video folder"),
    ("video", ["--video", "in", "--guidance-scale-2", "2"], "--guidance-scale-2 does not apply to a Wan"),
    ("video", [], "folder (video-to-video): give --video FILE"),
    ("sample", [], "WanVideoToVideoPipeline folder, which diffkit sample does not take (it makes videos)"),
])
def test_wan_v2v_command_refusals_are_one_line(tiny_wan_v2v, tmp_path, capsys, monkeypatch, command, args, message):
    monkeypatch.chdir(tmp_path)
    _frames_folder(tmp_path / "in", _video(1))
    _frames_folder(tmp_path / "six", _video(1, frames=6))
    refused_in_one_line(capsys, tmp_path, command, tiny_wan_v2v[1], args, message)


@pytest.mark.parametrize("part, change, message", [
    ("model_index.json", {"boundary_ratio": 0.9}, "boundary_ratio=0.9, which WanVideoToVideoPipeline does not take"),
    ("model_index.json", {"expand_timesteps": True}, "expand_timesteps=True, which WanVideoToVideoPipeline"),
    ("model_index.json", {"_class_name": "WanPipeline"}, "is not a Wan video-to-video folder"),
    ("vae/config.json", {"patch_size": 2}, "vae has patch_size=2; allowed: None (Wan 2.1's VAE"),
    ("transformer/config.json", {"image_dim": 16}, "transformer has image_dim=16; allowed: None"),
])
def test_wan_v2v_folder_refusals(tiny_wan_v2v, tmp_path, part, change, message):
    with pytest.raises(DiffkitError, match=re.escape(message)):
        check_wan_v2v_folder(changed_folder(tiny_wan_v2v[1], tmp_path, part, change))


@pytest.mark.parametrize("call, message", [
    (lambda m: video_to_video(m, [_video(1, frames=6)], "x", height=H, width=W), "input videos of 6 frames"),
    (lambda m: video_to_video(m, [_video(1)] * 2, "x", height=H, width=W), "2 videos for 1 prompts"),
    (lambda m: video_to_video(m, [_video(1)], "x", height=H, width=W, steps=2, strength=0.4), "keeps int(2 * 0.4)"),
    (lambda m: video_to_video(m, [_video(1)], "x", height=24, width=W), "height x width 24x32 is not allowed"),
])
def test_wan_v2v_library_refusals(tiny_wan_v2v, call, message):
    with pytest.raises(DiffkitError, match=re.escape(message)):
        call(tiny_wan_v2v[2])
