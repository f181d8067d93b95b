"""SkyReels-V2 diffusion forcing from clean first frames (diffkit.interop.skyreels_v2_forcing_prefix, ``diffkit
video``) against diffusers' own SkyReelsV2DiffusionForcingImageToVideoPipeline and
SkyReelsV2DiffusionForcingVideoToVideoPipeline on tiny random folders: the diffusion-forcing folder of
tests/test_skyreels_v2.py (its parts) saved under the two pipelines' names; the pipelines' UniPC copies
given a copy of their sample (:func:`test_skyreels_v2.copying_step`, diffusers' aliasing of the latents undone)."""
import re
import types

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.video import read_video  # noqa: E402

from _video_helpers import refused_in_one_line  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_skyreels_v2 import (DF_FRAMES, DF_SIZE, NEGATIVE, PROMPTS, Z, _as_written, _compare,  # noqa: E402
                              _image, _run, copying_step, saved, skyreels_transformer)
from test_wan import tiny_wan_parts  # noqa: E402

VIDEO_FRAMES, OVERLAP = 9, 5  # the input video; its last 5 frames: 2 latent frames of the 4-frame window


@pytest.fixture(scope="module")
def tiny_prefix(tmp_path_factory):
    """{"i2v": (SkyReelsV2DiffusionForcingImageToVideoPipeline, its folder, load_skyreels_v2 of it), "v2v": (...
    VideoToVideo ...)} of the diffusion-forcing folder's components (tests/test_skyreels_v2.py's tiny_forcing)."""
    from diffusers.pipelines.skyreels_v2 import (pipeline_skyreels_v2_diffusion_forcing as t2v,
                                                 pipeline_skyreels_v2_diffusion_forcing_i2v as i2v,
                                                 pipeline_skyreels_v2_diffusion_forcing_v2v as v2v)
    root = tmp_path_factory.mktemp("skyreels_v2_prefix")
    components = {**tiny_wan_parts(), "transformer": skyreels_transformer(7, inject_sample_info=True)}
    with pytest.MonkeyPatch.context() as patch:
        for module in (t2v, i2v, v2v):
            if not hasattr(module, "ftfy"):
                patch.setattr(module, "ftfy", types.SimpleNamespace(fix_text=lambda text: text), raising=False)
        yield {"i2v": saved(diffusers.SkyReelsV2DiffusionForcingImageToVideoPipeline(**components), root / "i2v"),
               "v2v": saved(diffusers.SkyReelsV2DiffusionForcingVideoToVideoPipeline(**components), root / "v2v")}


def _video(seed=4):
    return [_image(seed + i, (DF_SIZE + 8, DF_SIZE)) for i in range(VIDEO_FRAMES)]


def _save(frames, path):
    """PIL ``frames`` written as an animated PNG."""
    import numpy as np
    from diffkit.video import animation_bytes
    path.write_bytes(animation_bytes([np.asarray(frame) for frame in frames], 24, "PNG"))


@pytest.mark.parametrize("kind, ar_step, block", [("i2v", 0, 1), ("i2v", 1, 2), ("v2v", 1, 1)])
def test_skyreels_v2_forcing_prefix_matches_the_pipeline(tiny_prefix, monkeypatch, kind, ar_step, block):
    """One prompt, CFG s = 4 against a negative prompt, 3 UniPC steps, 4 latent frames of 2 x 2, noise from seed 3,
    fps 16: the same final latents and decoded frames as the pipelines (with :func:`copying_step`). Image to video:
    synchronously on blocks of one frame (the image's block clean in every row: the rows' run at ar_step 0), and
    asynchronously on blocks of 2 (the image's frame the start of block 0, stepped); video to video: the input's last
    5 of 9 frames (2 latent frames, 2 clean blocks), ar_step 1, the output the input then the window."""
    from diffkit.interop.skyreels_v2_forcing_prefix import image_to_video, video_to_video
    pipe, _, model = tiny_prefix[kind]
    kw = {"negative_prompt": NEGATIVE, "guidance_scale": 4.0, "height": DF_SIZE, "width": DF_SIZE,
          "num_frames": DF_FRAMES, "ar_step": ar_step, "causal_block_size": block, "fps": 16}
    if kind == "i2v":
        given, extra = _image(), {}
        ours = image_to_video(model, given, PROMPTS[0], steps=3, seed=3, return_latents=True, **kw)
    else:
        given, extra = _video(), {"overlap_history": OVERLAP}
        ours = video_to_video(model, [given], PROMPTS[0], steps=3, seed=3, return_latents=True, **kw, **extra)
    assert ours.shape == (1, Z, 4, 2, 2)
    copying_step(monkeypatch)
    theirs = _run(pipe, given, PROMPTS[0], num_inference_steps=3, generator=torch.Generator().manual_seed(3),
                  **kw, **extra)
    if kind == "i2v":
        _compare(f"{kind} ar_step={ar_step} block={block}", ours, theirs, model)
        return
    _compare(f"{kind} latents", ours, (theirs[0], None), model)
    videos = video_to_video(model, [given], PROMPTS[0], steps=3, seed=3, output_range="0,1", **kw, **extra)
    assert videos.shape == theirs[1].shape == (1, VIDEO_FRAMES + DF_FRAMES, 3, DF_SIZE, DF_SIZE)
    error = relative_error(videos, theirs[1])
    print(f"v2v frames: {error:.2e}")
    assert error < 1e-5


@pytest.mark.parametrize("kind", ["t2v", "i2v", "v2v"])
def test_skyreels_v2_forcing_long_video_matches_the_pipeline(tiny_prefix, monkeypatch, kind):
    """The long-video mode: 21 frames (6 latent) in windows of 13 (4) overlapping by 5 frames (2 latent): 2 windows,
    the second's clean first blocks the first's last 2 latent frames, its noise the next draw of seed 3's generator;
    one prompt, CFG s = 4 against a negative prompt, 3 UniPC steps, ar_step 1 on one-frame blocks, fps 16, with
    :func:`copying_step`: the same final latents and decoded frames as the three diffusion-forcing pipelines (text:
    the image-to-video folder run as SkyReelsV2DiffusionForcingPipeline, on blocks of 2 with an overlap of 9 frames:
    3 windows, each starting from the 3 latent frames so far cut to 2; video: the input's 9 frames then 21)."""
    from diffkit.interop.skyreels_v2_forcing import text_to_video
    from diffkit.interop.skyreels_v2_forcing_prefix import image_to_video, video_to_video
    pipe, _, model = tiny_prefix["v2v" if kind == "v2v" else "i2v"]
    kw = {"negative_prompt": NEGATIVE, "guidance_scale": 4.0, "height": DF_SIZE, "width": DF_SIZE, "ar_step": 1,
          "causal_block_size": 1, "fps": 16, "num_frames": 21, "base_num_frames": 13, "overlap_history": 5}
    if kind == "t2v":  # 3 windows overlapping by 9 frames (3 latent), each starting from 2 (blocks of 2)
        kw.update(causal_block_size=2, overlap_history=9)
        pipe = diffusers.SkyReelsV2DiffusionForcingPipeline(**pipe.components)
        pipe.set_progress_bar_config(disable=True)
    given = {"t2v": (), "i2v": (_image(),), "v2v": (_video(),)}[kind]
    ours = {"t2v": lambda **o: text_to_video(model, PROMPTS[0], **o),
            "i2v": lambda **o: image_to_video(model, given[0], PROMPTS[0], **o),
            "v2v": lambda **o: video_to_video(model, [given[0]], PROMPTS[0], **o)}[kind]
    copying_step(monkeypatch)
    with torch.no_grad():
        latents = pipe(*given, PROMPTS[0], num_inference_steps=3, generator=[torch.Generator().manual_seed(3)],
                       output_type="latent", **kw).frames
        frames = pipe(*given, PROMPTS[0], num_inference_steps=3, generator=[torch.Generator().manual_seed(3)],
                      output_type="pt", **kw).frames
    z = ours(steps=3, seed=3, return_latents=True, **kw)
    assert z.shape == latents.shape == (1, Z, 6, 2, 2)
    videos = ours(steps=3, seed=3, output_range="0,1", **kw)
    assert videos.shape == frames.shape == (1, 21 + (VIDEO_FRAMES if kind == "v2v" else 0), 3, DF_SIZE, DF_SIZE)
    errors = relative_error(z, latents), relative_error(videos, frames)
    print(f"long {kind}: latents {errors[0]:.2e}, frames {errors[1]:.2e}")
    assert max(errors) < 1e-5


@pytest.mark.parametrize("kind", ["i2v", "v2v", "v2v-long"])
def test_skyreels_v2_forcing_prefix_command_is_the_library(tiny_prefix, tmp_path, capsys, kind):
    """``diffkit video`` writes the library's videos (one prompt, 2 steps, --ar-step 1, the folder's CFG default
    against "", seed 5) as an APNG at 24 fps: ``--image`` / ``--video`` with ``--overlap-history 5`` (long: 21 frames
    in windows of ``--base-num-frames 13``)."""
    from diffkit.interop.skyreels_v2_forcing_prefix import image_to_video, video_to_video
    long = {"base_num_frames": 13} if kind == "v2v-long" else {}
    kind, frames = kind[:3], 21 if long else DF_FRAMES
    _, path, model = tiny_prefix[kind]
    image = _image()
    image.save(tmp_path / "a.png")
    _save(_video(), tmp_path / "in.png")
    extra = ["--image", str(tmp_path / "a.png")] if kind == "i2v" else \
        ["--video", str(tmp_path / "in.png"), "--overlap-history", str(OVERLAP)] + \
        (["--base-num-frames", "13"] if long else [])
    argv = ["video", "--checkpoint", str(path), "--prompt", PROMPTS[0], *extra, "--ar-step", "1", "--steps", "2",
            "--seed", "5", "--frames", str(frames), "--height", str(DF_SIZE), "--width", str(DF_SIZE),
            "--out", str(tmp_path / "v.png"), "--no-progress"]
    assert main(argv) == 0
    total = frames + (VIDEO_FRAMES if kind == "v2v" else 0)
    assert f"wrote 1 videos of {total} frames ({DF_SIZE}x{DF_SIZE}, 24 fps)" in capsys.readouterr().out
    size = {"num_frames": frames, "height": DF_SIZE, "width": DF_SIZE, "steps": 2, "ar_step": 1, "seed": 5, **long}
    ours = image_to_video(model, image, PROMPTS[0], **size) if kind == "i2v" else \
        video_to_video(model, [read_video(tmp_path / "in.png")], PROMPTS[0], overlap_history=OVERLAP, **size)
    written = read_video(tmp_path / "v.png")[:, :, 2:2 + DF_SIZE, 2:2 + DF_SIZE]  # inside the grid's padding
    assert written.shape == ours[0].shape
    assert torch.equal(written, _as_written(ours[0]))


def test_skyreels_v2_forcing_prefix_refusals(tiny_prefix, tmp_path, capsys):
    """One line, nothing written, before any weight is read: an image-to-video folder without --image, a
    video-to-video one without --video, an overlap longer than the input video or holding no whole block, the
    pipeline's last_image, a two-call sampler with the image's block clean; long videos: --base-num-frames without
    --overlap-history or the reverse, a block size not dividing a window, an overlap as long as the window; the
    library's model checks."""
    from diffkit.interop.skyreels_v2_forcing_prefix import check_overlap, image_to_video
    i2v, v2v = tiny_prefix["i2v"][1], tiny_prefix["v2v"][1]
    _image().save(tmp_path / "a.png")
    _save(_video(), tmp_path / "in.png")
    common = ["--frames", str(DF_FRAMES), "--height", str(DF_SIZE), "--width", str(DF_SIZE)]
    for folder, args, message in [
            (i2v, common, "--image"),
            (v2v, common, "--video"),
            (i2v, [*common, "--image", str(tmp_path / "a.png"), "--last-image", str(tmp_path / "a.png")],
             "--last-image"),
            (i2v, [*common, "--image", str(tmp_path / "a.png"), "--overlap-history", "5"],
             "--base-num-frames and --overlap-history go together"),
            (i2v, [*common, "--image", str(tmp_path / "a.png"), "--sampler", "heun"],
             "sampler 'heun' is not allowed with ar_step=0 and 1 clean first latent frames"),
            (i2v, [*common, "--image", str(tmp_path / "a.png"), "--base-num-frames", "9"],
             "--base-num-frames and --overlap-history go together"),
            (i2v, ["--frames", "21", "--height", "16", "--width", "16", "--image", str(tmp_path / "a.png"),
                   "--base-num-frames", "9", "--overlap-history", "5", "--causal-block-size", "2"],
             "causal_block_size=2 is not allowed for 3 latent frames"),
            (v2v, ["--frames", "21", "--height", "16", "--width", "16", "--video", str(tmp_path / "in.png"),
                   "--base-num-frames", "5", "--overlap-history", "5"],
             "an overlap of 2 latent frames is not allowed with windows of 2"),
            (v2v, [*common, "--video", str(tmp_path / "in.png"), "--overlap-history", "10"],
             "overlap_history=10 is not allowed; give a whole number of the input videos' last frames, 1 to 9"),
            (v2v, [*common, "--video", str(tmp_path / "in.png"), "--overlap-history", "1", "--causal-block-size",
                   "2"], "overlap_history=1 is not allowed with causal_block_size=2 and 4 latent frames")]:
        refused_in_one_line(capsys, tmp_path, "video", folder, args, message)
    with pytest.raises(DiffkitError, match=re.escape("overlap_history=13 is not allowed with causal_block_size=1 "
                                                     "and 4 latent frames")):
        check_overlap(13, 13, 4, 1, 4)
    with pytest.raises(DiffkitError, match="takes a SkyReelsV2DiffusionForcingImageToVideoPipeline folder"):
        image_to_video(tiny_prefix["v2v"][2], _image(), "a cat")
