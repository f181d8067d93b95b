"""ModelScope text-to-video folders (diffkit.interop.modelscope, diffkit video): text_to_video / video_to_video against
diffusers' own TextToVideoSDPipeline / VideoToVideoSDPipeline on a tiny random folder (the tiny Stable Diffusion's
text encoder, tokenizer and VAE of test_interop_diffusers with a randomised 1-layer UNet3DConditionModel: its
zero-initialised temporal convolutions and temporal transformers' proj_out too; SD's DDIM scheduler; nothing
downloaded), 3 frames of 16 x 16 (latents 8 x 8), 2-3 steps."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import to_uint8  # noqa: E402
from diffkit.interop.modelscope import load_modelscope, text_to_video, video_to_video  # noqa: E402
from diffkit.video import read_video, save_videos  # noqa: E402

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from _video_helpers import refused_in_one_line  # noqa: E402
from test_interop_diffusers import randomize, relative_error, sd_ddim_scheduler, tiny_sd_components  # noqa: E402
from test_sd_prompts import _with_text_model  # noqa: E402

PROMPTS, NEGATIVE = ["a photo", "hot"], ["ot", "p"]
FRAMES, SIZE = 3, 16  # latents (B, 4, 3, 8, 8): the tiny VAE's factor 2
PARTS = ("model_index.json", "scheduler", "unet", "text_encoder", "tokenizer", "vae")


@pytest.fixture(scope="module")
def tiny_modelscope(tmp_path_factory):
    """(TextToVideoSDPipeline.from_pretrained of the saved folder, the folder, load_modelscope of it)."""
    root = tmp_path_factory.mktemp("modelscope")
    _, vae, text_encoder, tokenizer = tiny_sd_components(root)
    unet = randomize(diffusers.UNet3DConditionModel(  # randomised: the temporal layers' zero-init projections too
        block_out_channels=(32, 64), sample_size=8, layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
        attention_head_dim=4, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D")), 2)
    pipe = diffusers.TextToVideoSDPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                           scheduler=sd_ddim_scheduler())
    pipe.save_pretrained(root / "ms")
    pipe, path, model = reloaded(root / "ms", diffusers.TextToVideoSDPipeline, load_modelscope)
    _with_text_model(pipe.text_encoder)  # the pipeline's clip_skip reads text_model.final_layer_norm (test_sd_prompts)
    return pipe, path, model


def _generators(seed=3, n=2):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_modelscope_matches_the_pipeline(tiny_modelscope):
    """CFG s = 5 against negative prompts, clip_skip 1, 3 DDIM steps, 3 frames: the same final latents
    (read by the step callback) and frames (output_type="pt", (B, T, C, H, W) in [0, 1]) as TextToVideoSDPipeline
    from the same noise (video i from seed 3 + i)."""
    pipe, _, model = tiny_modelscope
    kw = {"negative_prompt": NEGATIVE, "guidance_scale": 5.0, "clip_skip": 1, "num_frames": FRAMES, "height": SIZE,
          "width": SIZE}
    out = {}
    with torch.no_grad():  # the final latents read by the step callback
        out["pt"] = pipe(PROMPTS, num_inference_steps=3, generator=_generators(), output_type="pt",
                         callback=lambda i, t, latents: out.update(latent=latents), **kw).frames
    ours = text_to_video(model, PROMPTS, steps=3, seed=3, return_latents=True, **kw)
    assert ours.shape == (2, 4, FRAMES, 8, 8)
    error = relative_error(ours, out["latent"])
    print(f"latents: {error:.2e}")
    assert error < 1e-5
    videos = (model.decode_video(ours) / 2 + 0.5).clamp(0, 1)
    assert out["pt"].shape == videos.shape == (2, FRAMES, 3, SIZE, SIZE)
    error = relative_error(videos, out["pt"])
    print(f"frames: {error:.2e}")
    assert error < 1e-5


def test_modelscope_dpm_solver_folder_matches_the_pipeline(tiny_modelscope, tmp_path):
    """The folder's scheduler a DPMSolverMultistepScheduler (a folder written with it; diffkit's dpm-solver++-2m on
    its timesteps), the pipeline's default guidance (s = 9 against ""), 3 steps: the pipeline's final latents."""
    pipe, path, _ = tiny_modelscope
    own = pipe.scheduler
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(own.config)
    folder = changed_folder(path, tmp_path, "scheduler/scheduler_config.json",
                            {"_class_name": "DPMSolverMultistepScheduler"}, parts=PARTS)
    try:
        with torch.no_grad():
            theirs = pipe(PROMPTS[:1], num_inference_steps=3, generator=_generators(5, 1), output_type="latent",
                          num_frames=FRAMES, height=SIZE, width=SIZE).frames
    finally:
        pipe.scheduler = own
    ours = text_to_video(load_modelscope(folder, progress=False), PROMPTS[:1], steps=3, seed=5,
                         num_frames=FRAMES, height=SIZE, width=SIZE, return_latents=True)
    error = relative_error(ours, theirs)
    print(f"DPM-Solver: {error:.2e}")
    assert error < 1e-5


def test_modelscope_video_to_video_matches_the_pipeline(tiny_modelscope, tmp_path):
    """VideoToVideoSDPipeline (the folder under that class): a 3-frame 16 x 24 video (not resized) encoded with its
    posteriors sampled from the video's generator, noised to the first of the strength's steps (the pipeline's
    default 0.6 of 5 DDIM steps: 3), CFG s = 5 against a negative prompt: final latents and frames of each video (the
    pipeline's one generator a call); ``diffkit video --video FILE`` writes the library's videos byte for byte."""
    from PIL import Image
    _, path, _ = tiny_modelscope
    folder = changed_folder(path, tmp_path, "model_index.json", {"_class_name": "VideoToVideoSDPipeline"}, parts=PARTS)
    v2v, _, model = reloaded(folder, diffusers.VideoToVideoSDPipeline, load_modelscope)
    inputs = torch.randint(0, 256, (2, FRAMES, 3, 16, 24), generator=torch.Generator().manual_seed(9)) / 127.5 - 1
    clips = [[Image.fromarray(((f + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()) for f in v] for v in inputs]
    call = dict(negative_prompt=NEGATIVE[0], guidance_scale=5.0)
    ours = video_to_video(model, list(inputs), PROMPTS, steps=5, seed=3, return_latents=True, **call)
    videos = model.decode_video(ours).clamp(-1, 1)
    assert ours.shape == (2, 4, FRAMES, 8, 12) and videos.shape == (2, FRAMES, 3, 16, 24)
    for i in range(2):
        out = {}
        with torch.no_grad():  # the final latents read by the step callback
            out["pt"] = v2v(video=clips[i], prompt=PROMPTS[i], num_inference_steps=5, output_type="pt",
                            generator=torch.Generator().manual_seed(3 + i),
                            callback=lambda step, t, latents: out.update(latent=latents), **call).frames
        errors = relative_error(ours[i:i + 1], out["latent"]), relative_error((videos[i:i + 1] + 1) / 2, out["pt"])
        print(f"video {i}: latents {errors[0]:.2e}, frames {errors[1]:.2e}")
        assert max(errors) < 1e-5
    files = save_videos(inputs, tmp_path / "in")
    argv = ["video", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--video",
            str(files[0]), "--video", str(files[1]), "--steps", "5", "--seed", "3", "--negative-prompt", NEGATIVE[0],
            "--guidance-scale", "5", "--guidance-convention", "diffusers", "--batch-size", "2", "--out",
            str(tmp_path / "grid.png"), "--individual", str(tmp_path / "each"), "--no-progress"]
    assert main(argv) == 0
    for i in range(2):
        written = read_video(tmp_path / "each" / f"video_{i:05d}.png")
        assert torch.equal(((written + 1) * 127.5).round().to(torch.uint8),
                           torch.from_numpy(to_uint8(videos[i])).permute(0, 3, 1, 2))
    with pytest.raises(DiffkitError, match="call video_to_video"):
        text_to_video(model, PROMPTS, num_frames=FRAMES, height=SIZE, width=SIZE)


def test_modelscope_defaults_are_the_pipelines():
    """The library's defaults are the pipelines' __call__ defaults (guidance 9 / 15, strength 0.6, 16 frames, 50
    steps; the default guidance itself compared in the DPM-Solver test)."""
    import inspect

    from diffkit.interop.modelscope import (MODELSCOPE_FRAMES, MODELSCOPE_GUIDANCE, MODELSCOPE_STEPS,
                                            MODELSCOPE_STRENGTH)
    for name, guidance in MODELSCOPE_GUIDANCE.items():
        parameters = inspect.signature(getattr(diffusers, name).__call__).parameters
        assert parameters["guidance_scale"].default == guidance
        assert parameters["num_inference_steps"].default == MODELSCOPE_STEPS
        assert parameters["strength" if "Video" in name[:6] else "num_frames"].default == (
            MODELSCOPE_STRENGTH if "Video" in name[:6] else MODELSCOPE_FRAMES)


def test_modelscope_command_is_the_library(tiny_modelscope, tmp_path, capsys):
    """``diffkit video`` writes the library's videos byte for byte (APNG, lossless; a batch of two, video i from seed
    + i), at the kind's 10 fps."""
    _, path, model = tiny_modelscope
    argv = ["video", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--frames", "2",
            "--height", str(SIZE), "--width", str(SIZE), "--steps", "1", "--seed", "4", "--out",
            str(tmp_path / "grid.png"), "--individual", str(tmp_path / "each"), "--batch-size", "2", "--no-progress"]
    assert main(argv) == 0
    assert "wrote 2 videos of 2 frames (16x16, 10 fps)" in capsys.readouterr().out
    videos = text_to_video(model, PROMPTS, num_frames=2, height=SIZE, width=SIZE, steps=1, seed=4)
    for i in range(2):
        written = ((read_video(tmp_path / "each" / f"video_{i:05d}.png") + 1) * 127.5).round().to(torch.uint8)
        assert np.array_equal(written.permute(0, 2, 3, 1).numpy(), to_uint8(videos[i]))


@pytest.fixture(scope="module")
def refusal_folders(tiny_modelscope, tmp_path_factory):
    """{name: folder} of the refusal cases (links to the tiny folder with one JSON changed) and an input video."""
    _, path, _ = tiny_modelscope
    root = tmp_path_factory.mktemp("modelscope_refusals")
    v2v = changed_folder(path, root, "model_index.json", {"_class_name": "VideoToVideoSDPipeline"}, parts=PARTS)
    save_videos(torch.zeros(2, 2, 3, 16, 20), root / "in")
    save_videos(torch.zeros(1, 2, 3, 15, 15), root / "odd")
    return {"t2v": path, "v2v": v2v, "in": root / "in", "odd": root / "odd" / "video_00000.png",
            "ancestral": changed_folder(path, root, "scheduler/scheduler_config.json",
                                        {"_class_name": "EulerAncestralDiscreteScheduler"}, parts=PARTS),
            "guidance": changed_folder(path, root, "unet/config.json", {"time_cond_proj_dim": 32}, parts=PARTS),
            "unet2d": changed_folder(path, root, "model_index.json", {"unet": ["diffusers", "UNet2DConditionModel"]},
                                     parts=PARTS)}


REFUSALS = [
    ("t2v", ["--guidance-scale", "1", "--guidance-convention", "diffusers", "--negative-prompt", "x"],
     "a negative prompt with guidance_scale=1"),
    ("t2v", ["--video", "x.png"], "--video does not apply to a ModelScope folder"),
    ("t2v", ["--clip-skip", "1"], "--clip-skip does not apply to a ModelScope folder"),
    ("ancestral", [], "no diffkit sampler equivalent"),
    ("guidance", [], "time_cond_proj_dim=32"),
    ("unet2d", [], "unet is a 'UNet2DConditionModel'; allowed: UNet3DConditionModel"),
    ("v2v", [], "(video-to-video): give --video FILE"),
    ("v2v", ["--video", "in/video_00000.png", "--frames", "2"], "--frames does not apply to a ModelScope "
                                                               "video-to-video folder"),
    ("v2v", ["--video", "in/video_00000.png", "--height", "16"], "--height does not apply"),
    ("v2v", ["--video", "in/video_00000.png", "--strength", "0.01"], "--strength 0.01 keeps int(50 * 0.01) = 0"),
    ("v2v", ["--video", "in/video_00000.png", "--video", "odd"], "--video frames of the sizes"),
    ("v2v", ["--video", "odd"], "--video frames of 15x15 are not allowed"),
]


@pytest.mark.parametrize("folder, extra, message", REFUSALS)
def test_modelscope_refusals(refusal_folders, tmp_path, capsys, monkeypatch, folder, extra, message):
    """Each refused in one line before any weight is read (loading would fail: no load is reached), nothing
    written."""
    import diffkit.interop.modelscope as modelscope
    monkeypatch.setattr(modelscope, "load_modelscope", None)  # a load would be a TypeError, not a one-line refusal
    extra = [str(refusal_folders[a.split("/")[0]]) + a[len(a.split("/")[0]):] if a.split("/")[0] in refusal_folders
             else a for a in extra]
    refused_in_one_line(capsys, tmp_path, "video", refusal_folders[folder], extra, message)


def test_modelscope_sample_refused(refusal_folders, tmp_path, capsys):
    """diffkit sample on both folders: one line naming diffkit video."""
    for folder in ("t2v", "v2v"):
        refused_in_one_line(capsys, tmp_path, "sample", refusal_folders[folder], [], "generate videos with diffkit "
                                                                                     "video")
