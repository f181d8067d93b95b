"""diffkit.video (animations in and out) and the ``diffkit video`` command's own plumbing (flags, counts, seeds,
outputs), the latter on a test kind whose video i is a pure function of its seed (the folder kinds' own tests compare
against diffusers' pipelines)."""
import json
import sys
import types
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from diffkit.cli import main
from diffkit.commands import video as video_command
from diffkit.errors import DiffkitError
from diffkit.video import (animation_bytes, check_videos, grid_frames, read_video, save_video_grid, save_videos,
                           video_format)


def random_videos(b=2, t=3, c=3, h=6, w=10, seed=0):
    """uint8-exact videos in [-1, 1] (k / 127.5 - 1), so lossless formats read back exactly."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, c, h, w), generator=g).float() / 127.5 - 1


@pytest.mark.parametrize("suffix", [".png", ".webp"])
def test_lossless_formats_read_back_exactly(tmp_path, suffix):
    videos = random_videos()
    for i, path in enumerate(save_videos(videos, tmp_path, suffix=suffix, fps=5)):
        assert path.name == f"video_{i:05d}{suffix}"
        assert torch.equal(read_video(path), videos[i])
    with Image.open(tmp_path / f"video_00000{suffix}") as image:  # an animation, 200 ms a frame, looping
        image.load()
        assert image.n_frames == 3 and image.info["duration"] == 200 and image.info.get("loop", 0) == 0


def test_gif_is_an_animation_of_quantised_frames(tmp_path):
    videos = random_videos(b=1, c=1)  # grey: 256 levels fit a GIF palette exactly
    path = save_video_grid(videos, tmp_path / "v.gif", fps=10)
    with Image.open(path) as image:
        assert image.format == "GIF" and image.n_frames == 3 and image.info["duration"] == 100
    back = read_video(path, mode="L")
    assert back.shape == (3, 1, 10, 14)  # the grid's padding of 2
    assert torch.equal(back[:, :, 2:8, 2:12], videos[0])


def test_grid_frame_t_tiles_frame_t_of_every_video():
    from diffkit.images import make_grid
    videos = random_videos(b=3, t=2)
    frames = grid_frames(videos, nrow=2)
    assert len(frames) == 2
    for t in range(2):
        assert np.array_equal(frames[t], make_grid(videos[:, t], nrow=2))
    assert check_videos(videos[0]).shape == (1, 2, 3, 6, 10)  # one video: a batch of one


def test_read_video_of_a_frame_folder_and_a_still_image(tmp_path):
    videos = random_videos(b=1, t=2)
    from diffkit.images import save_images
    save_images(videos[0], tmp_path / "frames")
    assert torch.equal(read_video(tmp_path / "frames"), videos[0])
    assert read_video(tmp_path / "frames" / "sample_00001.png").shape == (1, 3, 6, 10)


@pytest.mark.parametrize("call, message", [
    (lambda tmp: video_format(tmp / "v.avi"), "must end in one of .png, .webp, .gif, .mp4, .mkv"),
    (lambda tmp: check_videos(torch.zeros(3, 8, 8)), "frames >= 1"),
    (lambda tmp: check_videos(torch.zeros(1, 2, 2, 8, 8)), "1 or 3 channels"),
    (lambda tmp: animation_bytes([], 8), "at least one frame"),
    (lambda tmp: animation_bytes([np.zeros((4, 4, 3), np.uint8)], 0), "fps"),
    (lambda tmp: read_video(tmp / "missing.gif"), "does not exist"),
    (lambda tmp: read_video(tmp), "holds no .png frames"),
    (lambda tmp: read_video(tmp / "x.png", mode="CMYK"), "choose RGB or L"),
])
def test_bad_input_is_one_line(tmp_path, call, message):
    with pytest.raises(DiffkitError, match=message.replace(".", r"\.")):
        call(tmp_path)


def test_stale_videos_are_refused_before_writing(tmp_path):
    save_videos(random_videos(b=3), tmp_path, suffix=".webp")
    with pytest.raises(DiffkitError, match="3 new videos|2 new videos"):
        save_videos(random_videos(b=2), tmp_path, suffix=".webp")
    assert len(list(tmp_path.glob("*.webp"))) == 3


# ---- diffkit video on a test kind -------------------------------------------------------------------------------

class SeededKind(video_command.VideoKind):
    """Video i = a pure function of seed + i and its prompt's length (and the first image's mean, where given)."""

    label, pipelines, fps = "test", ("TestVideoPipeline",), 4.0
    takes = frozenset({"negative_prompt", "images", "num_frames", "steps", "guidance_scale"})

    def load(self, directory, device, progress, lora=None):
        return {"calls": []}

    def generate(self, model, prompts, images, *, seed, progress, **options):
        model["calls"].append((len(prompts), options))
        frames = options.get("num_frames", 2)
        out = []
        for i, prompt in enumerate(prompts):
            g = torch.Generator().manual_seed(seed + i)
            shift = len(prompt) / 100 + (0 if images is None else float(np.asarray(images[i]).mean()) / 1000)
            out.append((torch.rand(frames, 3, 4, 6, generator=g) * 2 - 1 + shift).clamp(-1, 1))
        return torch.stack(out)


def registered(kind, folder, monkeypatch):
    """``folder`` (made) naming ``kind``'s pipeline class, which VIDEO_KINDS maps to a module holding ``kind``."""
    module = types.ModuleType(f"_diffkit_test_kind_{kind.pipelines[0]}")
    module.KIND = kind
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(video_command.VIDEO_KINDS, kind.pipelines[0], module.__name__)
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": kind.pipelines[0]}))
    return folder, kind


@pytest.fixture
def test_kind(tmp_path, monkeypatch):
    return registered(SeededKind(), tmp_path / "folder", monkeypatch)


def cli(capsys, *args):
    code = main(["video", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_video_command_writes_the_grid_and_each_video_independent_of_batch_size(tmp_path, capsys, test_kind):
    folder, kind = test_kind
    code, out, err = cli(capsys, "--checkpoint", str(folder), "--prompt", "a", "--prompt", "bb", "--prompt", "c",
                         "--out", str(tmp_path / "g.webp"), "--individual", str(tmp_path / "each"), "--seed", "5",
                         "--batch-size", "2", "--frames", "3")
    assert code == 0, err
    assert "wrote 3 videos of 3 frames (6x4, 4 fps)" in out
    each = [read_video(tmp_path / "each" / f"video_{i:05d}.webp") for i in range(3)]
    code, _, err = cli(capsys, "--checkpoint", str(folder), "--prompt", "c", "--out", str(tmp_path / "one.png"),
                       "--seed", "7", "--frames", "3", "--individual", str(tmp_path / "one"))
    assert code == 0, err
    assert torch.equal(read_video(tmp_path / "one" / "video_00000.png"), each[2])  # video i: seed + i, prompt i
    grid = read_video(tmp_path / "g.webp")
    assert torch.equal(grid[:, :, 2:6, 10:16], each[1])
    with Image.open(tmp_path / "g.webp") as image:
        image.load()
        assert image.info["duration"] == 250  # the kind's 4 fps


def test_video_command_passes_only_given_options(tmp_path, capsys, test_kind, monkeypatch):
    folder, kind = test_kind
    seen = []
    monkeypatch.setattr(SeededKind, "load", lambda self, *a, **k: {"calls": seen})
    Image.new("RGB", (4, 6), (200, 10, 10)).save(tmp_path / "x.png")
    code, _, err = cli(capsys, "--checkpoint", str(folder), "--prompt", "a", "--num", "2", "--image",
                       str(tmp_path / "x.png"), "--guidance-scale", "3", "--out", str(tmp_path / "g.gif"),
                       "--fps", "20")
    assert code == 0, err
    assert seen == [(1, {"guidance_scale": 3.0, "convention": "seed"})] * 2


@pytest.mark.parametrize("args, message", [
    (["--prompt", "a", "--height", "64"], "--height does not apply to a test folder"),
    (["--prompt", "a", "--lora", "x.safetensors"], "--lora does not apply to a test folder"),
    ([], "give --prompt TEXT"),
    (["--prompt", "a", "--prompt", "b", "--num", "3"], "--prompt is given 2 times for 3 videos"),
    (["--prompt", "a", "--out", "v.avi"], "must end in one of .png, .webp, .gif, .mp4, .mkv"),
    (["--prompt", "a", "--out", "v.webp", "--crf", "20"], "--crf applies to an --out ending in .mp4 or .mkv"),
    (["--prompt", "a", "--image", "missing.png"], "--image 'missing.png' does not exist"),
])
def test_video_command_refusals_are_one_line_and_write_nothing(tmp_path, capsys, test_kind, monkeypatch, args,
                                                               message):
    folder, _ = test_kind
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "--checkpoint", str(folder), "--individual", "new/each", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "new").exists() and not (tmp_path / "videos.png").exists()


def test_video_command_refuses_folders_it_does_not_drive(tmp_path, capsys):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    code, _, err = cli(capsys, "--checkpoint", str(tmp_path), "--prompt", "a")
    assert code == 2 and "a StableDiffusionPipeline folder, which diffkit video does not drive" in err


@pytest.mark.parametrize("suffix", [".png", ".webp", ".gif"])
def test_equal_consecutive_frames_are_kept(tmp_path, suffix):
    """Pillow's writers merge a frame equal to the one before into a longer frame: an APNG keeps every frame, a
    WebP / GIF is expanded again by the frames' durations on reading (by the given fps or the shortest frame)."""
    levels = torch.tensor([-1.0, -1.0, -1.0, 1.0, -1.0])  # one frame unmerged: its duration is the unit
    video = levels[None, :, None, None, None].expand(1, 5, 3, 4, 4)
    path = save_videos(video, tmp_path, suffix=suffix, fps=10)[0]
    if suffix == ".png":
        with Image.open(path) as image:
            assert image.n_frames == 5
    for fps in (None, 10):
        assert torch.equal(read_video(path, fps=fps), video[0])


# ---- --video: input videos, on a test video-to-video kind ---------------------------------------------------------

class SeededVideoKind(SeededKind):
    """Video i = the seeded video of :class:`SeededKind` shifted by its input video's mean; input frames 4 x 6."""

    label, pipelines = "test video-to-video", ("TestVideoToVideoPipeline",)
    takes = SeededKind.takes | {"videos"}
    needs_video = True

    def check_videos(self, args, videos):
        sizes = sorted({tuple(v.shape[-2:]) for v in videos} - {(4, 6)})
        if sizes:
            raise DiffkitError(f"--video frames of {sizes[0][1]}x{sizes[0][0]} are not allowed; give 6x4 frames")

    def generate(self, model, prompts, images, *, seed, progress, videos=None, **options):
        out = super().generate(model, prompts, images, seed=seed, progress=progress, **options)
        shifts = torch.tensor([float(v.mean()) / 10 for v in videos])
        return (out + shifts[:, None, None, None, None]).clamp(-1, 1)


@pytest.fixture
def video_kind(tmp_path, monkeypatch):
    folder, kind = registered(SeededVideoKind(), tmp_path / "v2v", monkeypatch)
    inputs = random_videos(b=3, t=2, h=4, w=6, seed=3)
    save_videos(inputs[:2], tmp_path / "in", fps=5)  # in/video_00000.png, in/video_00001.png
    from diffkit.images import save_images
    save_images(inputs[2], tmp_path / "frames")  # a folder of frame PNGs
    return folder, kind, inputs


def test_video_command_slices_input_videos_per_batch(tmp_path, capsys, video_kind):
    folder, kind, inputs = video_kind
    given = [str(tmp_path / "in" / f"video_0000{i}.png") for i in range(2)] + [str(tmp_path / "frames")]
    code, _, err = cli(capsys, "--checkpoint", str(folder), "--prompt", "ab", "--seed", "4", "--batch-size", "2",
                       *[a for v in given for a in ("--video", v)], "--individual", str(tmp_path / "each"),
                       "--out", str(tmp_path / "g.png"))
    assert code == 0, err
    model = {"calls": []}
    expected = kind.generate(model, ["ab"] * 3, None, seed=4, progress=False, videos=list(inputs))
    from diffkit.images import to_uint8
    for i in range(3):
        got = read_video(tmp_path / "each" / f"video_{i:05d}.png")
        assert torch.equal(got, torch.from_numpy(to_uint8(expected[i])).permute(0, 3, 1, 2).float() / 127.5 - 1)
    code, _, err = cli(capsys, "--checkpoint", str(folder), "--prompt", "ab", "--seed", "5", "--num", "2",
                       "--video", given[2], "--individual", str(tmp_path / "same"), "--out", str(tmp_path / "s.png"))
    assert code == 0, err  # one --video: every video's input; video 1 (seed 6) = the first run's video 2 (seed 4 + 2)
    assert torch.equal(read_video(tmp_path / "same" / "video_00001.png"),
                       read_video(tmp_path / "each" / "video_00002.png"))


def test_video_command_without_video_passes_no_videos(tmp_path, capsys, test_kind, monkeypatch):
    folder, _ = test_kind
    seen = []
    monkeypatch.setattr(SeededKind, "generate", lambda self, model, prompts, images, **kw: seen.append(kw) or
                        torch.zeros(len(prompts), 1, 3, 2, 2))
    assert cli(capsys, "--checkpoint", str(folder), "--prompt", "a", "--out", str(tmp_path / "g.png"))[0] == 0
    assert [sorted(kw) for kw in seen] == [["progress", "seed"]]  # no videos keyword


@pytest.mark.parametrize("args, message", [
    (["--prompt", "a"], "(video-to-video): give --video FILE"),
    (["--prompt", "a", "--video", "in/video_00000.png", "--video", "frames", "--num", "3"],
     "--video is given 2 times for 3 videos"),
    (["--prompt", "a", "--video", "missing.webp"], "--video 'missing.webp' does not exist"),
    (["--prompt", "a", "--video", "bad.gif"], "--video 'bad.gif': 'bad.gif' is not a readable image"),
    (["--prompt", "a", "--video", "big.png"], "--video frames of 8x8 are not allowed; give 6x4 frames"),
])
def test_video_flag_refusals_are_one_line_and_write_nothing(tmp_path, capsys, video_kind, monkeypatch, args, message):
    folder, _, _ = video_kind
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.gif").write_bytes(b"not a gif")
    Image.new("RGB", (8, 8)).save(tmp_path / "big.png")
    code, out, err = cli(capsys, "--checkpoint", str(folder), "--individual", "new/each", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "new").exists() and not (tmp_path / "videos.png").exists()


def test_video_flag_is_refused_by_a_kind_that_does_not_take_it(tmp_path, capsys, test_kind):
    folder, _ = test_kind
    code, _, err = cli(capsys, "--checkpoint", str(folder), "--prompt", "a", "--video", str(tmp_path),
                       "--out", str(tmp_path / "g.png"))
    assert code == 2 and "--video does not apply to a test folder" in err and not (tmp_path / "g.png").exists()


# ---- H.264 movies (.mp4, .mkv) through PyAV ------------------------------------------------------------------------

def movie_stream(path):
    """(codec, pixel format, average frame rate, frames decoded) of a movie's video stream, read with PyAV."""
    av = pytest.importorskip("av", minversion="17")
    with av.open(str(path)) as source:
        stream = source.streams.video[0]
        frames, rate = sum(1 for _ in source.decode(stream)), stream.average_rate
        return stream.codec_context.name, stream.codec_context.pix_fmt, Fraction(rate.numerator, rate.denominator), \
            frames


def moving_gradient(t=4, h=16, w=24):
    """A smooth video in [-1, 1] (a colour ramp moving one pixel a frame): what lossy coding keeps well."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    frames = [torch.stack([(x + i) * 8, y * 12 + 30, (x + y) * 4 + 40]) for i in range(t)]
    return (torch.stack(frames).float() / 127.5 - 1)[None]


@pytest.mark.parametrize("suffix, fps, pixel_format, crf, odd", [
    (".mp4", 8, "yuv444p", 0, False),  # lossless H.264: only the RGB <-> YUV (BT.709, limited range) rounding left
    (".mkv", 30000 / 1001, "yuv444p", 0, False),
    (".mp4", 5, "yuv420p", 18, False),  # the defaults: 4:2:0, rate factor 18
    (".mp4", 5, "yuv420p", 18, True),  # odd sizes: one more row / column, a copy of the last
])
def test_movies_read_back_with_their_frames_and_rate(tmp_path, suffix, fps, pixel_format, crf, odd):
    pytest.importorskip("av", minversion="17")
    videos = random_videos(b=2, t=3, h=6, w=10) if crf == 0 else moving_gradient()
    videos = videos[..., :-1, :-1] if odd else videos
    paths = save_videos(videos, tmp_path, suffix=suffix, fps=fps, crf=crf, pixel_format=pixel_format)
    for path, video in zip(paths, videos):
        assert movie_stream(path) == ("h264", pixel_format, Fraction(fps).limit_denominator(1001), video.shape[0])
        back = read_video(path)
        if odd:
            assert back.shape == (4, 3, 16, 24)
            assert (back[..., -1, :] - back[..., -2, :]).abs().mean() < 0.05  # the copied row
            back = back[..., :-1, :-1]
        error = (back - video).abs() * 127.5  # on the 8-bit scale
        if crf == 0:
            assert back.shape == video.shape and error.max() <= 2  # measured: max 1, mean 0.39 levels
        else:
            assert error.mean() < 4.5  # measured: mean 3.5 levels, max 13 (mostly 4:2:0's halved colour planes)


def test_command_writes_mp4_grid_and_videos(tmp_path, capsys, test_kind, monkeypatch):
    """--out g.mp4: the grid and --individual videos as H.264 MP4s; grey videos (no chroma to subsample) at --crf 0
    come back within the limited-range rounding (measured: max 1 level)."""
    folder, kind = test_kind
    pytest.importorskip("av", minversion="17")
    grey = SeededKind.generate
    monkeypatch.setattr(SeededKind, "generate", lambda self, *a, **k: grey(self, *a, **k)[:, :, :1].expand(
        -1, -1, 3, -1, -1))
    code, out, err = cli(capsys, "--checkpoint", str(folder), "--prompt", "a", "--num", "2", "--seed", "3",
                         "--frames", "3", "--crf", "0", "--out", str(tmp_path / "g.mp4"), "--individual",
                         str(tmp_path / "each"))
    assert code == 0, err
    assert "wrote 2 videos of 3 frames (6x4, 4 fps)" in out
    expected = kind.generate({"calls": []}, ["a", "a"], None, seed=3, progress=False, num_frames=3)
    from diffkit.images import to_uint8
    exact = torch.from_numpy(to_uint8(expected.flatten(0, 1))).permute(0, 3, 1, 2).float().unflatten(0, (2, 3))
    grid = read_video(tmp_path / "g.mp4")
    assert movie_stream(tmp_path / "g.mp4")[1:] == ("yuv420p", 4, 3) and grid.shape == (3, 3, 8, 18)
    for i in range(2):
        each = read_video(tmp_path / "each" / f"video_{i:05d}.mp4")
        assert (((each + 1) * 127.5).round() - exact[i]).abs().max() <= 1
        assert (((grid[:, :, 2:6, 2 + 8 * i:8 + 8 * i] + 1) * 127.5).round() - exact[i]).abs().max() <= 1


@pytest.mark.parametrize("call, message", [
    (lambda tmp: save_video_grid(random_videos(), tmp / "v.mp4", crf=52), "crf=52 is out of range"),
    (lambda tmp: save_video_grid(random_videos(), tmp / "v.mp4", fps=1e-4), "fps=0.0001 is too low for a movie"),
    (lambda tmp: save_videos(random_videos(), tmp, suffix=".mkv", pixel_format="rgb24"),
     "pixel format 'rgb24' is not allowed; choose yuv420p or yuv444p"),
    (lambda tmp: read_video((tmp / "bad.mp4").write_bytes(b"not a movie") and tmp / "bad.mp4"),
     "bad.mp4' is not a readable video: Invalid data found"),
])
def test_movie_refusals_are_one_line_and_write_nothing(tmp_path, call, message):
    pytest.importorskip("av", minversion="17")
    with pytest.raises(DiffkitError, match=message.replace(".", r"\.").replace("(", r"\(")) as caught:
        call(tmp_path)
    assert len(str(caught.value).splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] in ([], ["bad.mp4"])


def test_movies_without_pyav_are_refused_in_one_line(tmp_path, capsys, test_kind, monkeypatch):
    folder, _ = test_kind
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    needs = "pip install 'diffkit[video]'"
    (tmp_path / "in.mp4").write_bytes(b"")
    for call in (lambda: video_format("v.mkv"), lambda: read_video(tmp_path / "in.mp4")):
        with pytest.raises(DiffkitError, match=needs.replace("[", r"\[").replace("]", r"\]")):
            call()
    code, _, err = cli(capsys, "--checkpoint", str(folder), "--prompt", "a", "--out", str(tmp_path / "v.mp4"))
    assert code == 2 and needs in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "v.mp4").exists()
    monkeypatch.setitem(sys.modules, "av", types.SimpleNamespace(__version__="14.2.0"))  # decodes BT.709 as BT.601
    with pytest.raises(DiffkitError, match=r"need PyAV >= 17 .* PyAV 14\.2\.0 is installed: pip install"):
        video_format("v.mp4")
