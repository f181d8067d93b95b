"""AnimateDiff with ControlNets (diffkit.interop.animatediff_controlnet) against diffusers' own
AnimateDiffControlNetPipeline: the tiny AnimateDiff folder of test_animatediff (its UNetMotionModel, DDIM scheduler)
with tiny random ControlNetModels of its UNet's blocks (every weight random: the zero convolutions and the
conditioning embedding too, else the residuals are exact zeros), a 5-frame control video of 20 x 24 frames resized
to 16 x 16; final latents (read by a step callback) and decoded frames (output_type="pt"); ``diffkit video
--controlnet DIR --control-video FILE`` on it; refusals in one line."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import to_uint8  # noqa: E402
from diffkit.interop.animatediff import load_animatediff  # noqa: E402
from diffkit.interop.animatediff import text_to_video as plain_text_to_video  # noqa: E402
from diffkit.interop.animatediff_controlnet import VideoControlNets, text_to_video  # noqa: E402
from diffkit.video import read_video, save_videos  # noqa: E402

from _pipeline_folders import changed_folder  # noqa: E402
from _video_helpers import refused_in_one_line  # noqa: E402
from test_animatediff import FRAMES, NEGATIVE, PARTS, PROMPTS, SIZE, _generators, tiny_animatediff  # noqa: E402,F401
from test_interop_diffusers import randomize, relative_error  # noqa: E402


def tiny_video_controlnet(seed: int):
    """A ControlNetModel of the tiny UNet's blocks (down 2x: the tiny VAE's factor), every weight random."""
    torch.manual_seed(seed)
    net = diffusers.ControlNetModel(
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), layers_per_block=1,
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8, in_channels=4,
        conditioning_embedding_out_channels=(16, 32))
    return randomize(net, seed).eval()


@pytest.fixture(scope="module")
def tiny_controlled(tiny_animatediff, tmp_path_factory):
    """(AnimateDiffControlNetPipeline on the fixture's components with ControlNet 0, the AnimateDiff folder, our
    model, two ControlNets, their folders, two control videos (lists of 5 PIL frames) and their APNG files)."""
    from PIL import Image
    pipe, path, model, _ = tiny_animatediff
    root = tmp_path_factory.mktemp("animatediff_controlnet")
    nets = [tiny_video_controlnet(seed) for seed in (1, 2)]
    for index, net in enumerate(nets):
        net.save_pretrained(root / f"cn{index}")
    controlled = diffusers.AnimateDiffControlNetPipeline(**{k: v for k, v in pipe.components.items()
                                                            if k not in ("feature_extractor", "image_encoder")},
                                                         controlnet=nets[0])
    controlled.set_progress_bar_config(disable=True)
    pixels = torch.randint(0, 256, (2, FRAMES, 3, 20, 24), generator=torch.Generator().manual_seed(9)) / 127.5 - 1
    videos = [[Image.fromarray(frame) for frame in to_uint8(video)] for video in pixels]
    files = save_videos(pixels, root / "control")
    return controlled, path, model, nets, [root / "cn0", root / "cn1"], videos, files


def _theirs(pipe, nets, videos, output_type, scheduler=None, **options):
    """The pipeline's final latents (a step callback) and output on one prompt from video 0's generator (seed 3)."""
    final, saved = {}, (pipe.controlnet, pipe.scheduler)

    def keep(pipeline, i, t, tensors):
        final["latents"] = tensors["latents"]
        return {}
    pipe.controlnet = nets[0] if len(nets) == 1 else diffusers.MultiControlNetModel(nets)
    pipe.scheduler = scheduler or pipe.scheduler
    try:
        with torch.no_grad():
            frames = pipe(PROMPTS[:1], conditioning_frames=videos[0] if len(nets) == 1 else videos,
                          generator=_generators(3, 1), output_type=output_type, callback_on_step_end=keep,
                          height=SIZE, width=SIZE, num_frames=FRAMES, **options).frames
    finally:
        pipe.controlnet, pipe.scheduler = saved
    return final["latents"], frames


def test_animatediff_controlnet_matches_the_pipeline(tiny_controlled):
    """CFG s = 5 against a negative prompt, controlnet_conditioning_scale 0.7, 3 DDIM steps (the folder's step): the
    pipeline's final latents and frames (output_type="pt"); the ControlNet changes them."""
    pipe, _, model, nets, _, videos, _ = tiny_controlled
    call = dict(guidance_scale=5.0, negative_prompt=NEGATIVE[0])
    latents, frames = _theirs(pipe, nets[:1], videos, "pt", num_inference_steps=3, controlnet_conditioning_scale=0.7,
                              **{**call, "negative_prompt": NEGATIVE[:1]})
    control = VideoControlNets(nets[:1], videos[:1], scales=0.7)
    ours = text_to_video(model, PROMPTS[:1], control, steps=3, seed=3, height=SIZE, width=SIZE, return_latents=True,
                         **call)
    error = relative_error(ours, latents)
    print(f"latents: {error:.2e}")
    assert error < 1e-5
    decoded = (model.decode_video(ours) / 2 + 0.5).clamp(0, 1)
    assert decoded.shape == frames.shape == (1, FRAMES, 3, SIZE, SIZE)
    error = relative_error(decoded, frames)
    print(f"frames: {error:.2e}")
    assert error < 1e-5
    plain = plain_text_to_video(model, PROMPTS[:1], steps=3, seed=3, height=SIZE, width=SIZE, num_frames=FRAMES,
                                return_latents=True, **call)
    assert relative_error(plain, latents) > 1e-3


def test_multi_controlnet_window_and_a_diffkit_sampler_match_the_pipeline(tiny_controlled, tmp_path):
    """Two ControlNets (MultiControlNetModel: residuals summed) with a scale and a window each (the first step, the
    second), on the folder written with an Euler scheduler on trailing timesteps, sampled by diffkit's ``euler`` named,
    unguided (s = 1), 2 steps:
    the pipeline's final latents."""
    pipe, path, _, nets, _, videos, _ = tiny_controlled
    options = {"timestep_spacing": "trailing"}
    scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, **options)
    folder = changed_folder(path, tmp_path, "scheduler/scheduler_config.json",
                            {"_class_name": "EulerDiscreteScheduler", **options}, parts=PARTS)
    window = dict(start=[0.0, 0.5], end=[0.5, 1.0])
    latents, _ = _theirs(pipe, nets, videos, "latent", scheduler, num_inference_steps=2, guidance_scale=1.0,
                         controlnet_conditioning_scale=[1.0, 0.5], control_guidance_start=window["start"],
                         control_guidance_end=window["end"])
    ours = text_to_video(load_animatediff(folder, progress=False), PROMPTS[:1],
                         VideoControlNets(nets, videos, scales=[1.0, 0.5], **window), sampler="euler", steps=2,
                         seed=3, guidance_scale=1.0, height=SIZE, width=SIZE, return_latents=True)
    error = relative_error(ours, latents)
    print(f"multi, window, euler: {error:.2e}")
    assert error < 1e-5


def _argv(path, folders, files, tmp_path, *extra):
    control = [item for folder, file in zip(folders, files) for item in ("--controlnet", str(folder),
                                                                          "--control-video", str(file))]
    return ["video", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], *control,
            "--height", str(SIZE), "--width", str(SIZE), "--steps", "1", "--seed", "4", "--out",
            str(tmp_path / "grid.png"), "--individual", str(tmp_path / "each"), "--no-progress", *extra]


def test_animatediff_controlnet_command_is_the_library(tiny_controlled, tmp_path, capsys):
    """``diffkit video --controlnet DIR --control-video FILE --controlnet-scale 0.5`` writes the library's videos (the
    control video read back from its APNG) byte for byte, one video a batch, with the control video's frames."""
    _, path, model, nets, folders, videos, files = tiny_controlled
    assert main(_argv(path, folders[:1], files[:1], tmp_path, "--controlnet-scale", "0.5")) == 0
    assert f"wrote 2 videos of {FRAMES} frames (16x16, 10 fps)" in capsys.readouterr().out
    control = VideoControlNets(nets[:1], videos[:1], scales=0.5)
    ours = text_to_video(model, PROMPTS, control, steps=1, seed=4, height=SIZE, width=SIZE)
    for i in range(2):
        written = ((read_video(tmp_path / "each" / f"video_{i:05d}.png") + 1) * 127.5).round().to(torch.uint8)
        assert np.array_equal(written.permute(0, 2, 3, 1).numpy(), to_uint8(ours[i]))


def test_animatediff_controlnet_refusals(tiny_controlled, tmp_path, capsys):
    """Before any weight is read, in one line, nothing written: control flags without --controlnet, counts that do
    not fit, a ControlNet of another class, of guess mode or of other blocks, control videos of other frame counts
    than each other, --frames or the motion modules' positions, --controlnet on another kind; and the library's."""
    import json
    _, path, model, nets, folders, videos, files = tiny_controlled
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((folders[0] / "config.json").read_text())
    for name, change in (("union", {"_class_name": "ControlNetUnionModel"}), ("pool", {"global_pool_conditions": True}),
                         ("blocks", {"block_out_channels": [32, 32]})):
        (other / name).mkdir()
        (other / name / "config.json").write_text(json.dumps({**config, **change}))
    nine = save_videos(torch.zeros(1, 9, 3, 8, 8), other / "nine")[0]
    three = save_videos(torch.zeros(1, 3, 3, 8, 8), other / "three")[0]
    cn, video = ["--controlnet", str(folders[0])], ["--control-video", str(files[0])]
    sdxl = changed_folder(path, tmp_path, "model_index.json", {"_class_name": "AnimateDiffSDXLPipeline"}, parts=PARTS)
    for folder, extra, message in (
            (path, video, "--control-video needs --controlnet DIR"),
            (path, ["--controlnet-scale", "0.5"], "--controlnet-scale needs --controlnet DIR"),
            (path, cn, "0 --control-video for 1 --controlnet"),
            (path, [*cn, *video, "--controlnet-scale", "1", "--controlnet-scale", "2"],
             "--controlnet-scale is given 2 times for 1 --controlnet"),
            (path, [*cn, *video, "--control-guidance-start", "0.5", "--control-guidance-end", "0.5"],
             "control guidance start 0.5 >= end 0.5"),
            (path, ["--controlnet", str(other / "union"), *video], "holds a 'ControlNetUnionModel'; allowed"),
            (path, ["--controlnet", str(other / "pool"), *video], "has global_pool_conditions (guess mode)"),
            (path, ["--controlnet", str(other / "blocks"), *video], "block_out_channels=[32, 32] but the Stable"),
            (path, [*cn, *video, "--controlnet", str(folders[1]), "--control-video", str(three)],
             "--control-video files of 3 and 5 frames"),
            (path, [*cn, *video, "--frames", "3"], "--frames 3 is not allowed with a --control-video of 5 frames"),
            (path, [*cn, "--control-video", str(nine)], "a --control-video of 9 frames is not allowed for"),
            (path, [*cn, "--control-video", str(other / "missing.png")], "--control-video"),
            (sdxl, [*cn, *video], "--controlnet does not apply to an AnimateDiff SD-XL folder")):
        refused_in_one_line(capsys, tmp_path, "video", folder, extra, message)
    with pytest.raises(DiffkitError, match="num_frames=3 is not allowed with control videos of 5 frames"):
        text_to_video(model, PROMPTS, VideoControlNets(nets[:1], videos[:1]), num_frames=3)
    with pytest.raises(DiffkitError, match="guess mode"):
        VideoControlNets(nets[:1], videos[:1], guess_mode=True)
    with pytest.raises(DiffkitError, match="control videos of 5 and 3 frames|control videos of 3 and 5 frames"):
        VideoControlNets(nets, [videos[0], videos[1][:3]])
