"""HunyuanVideo 1.5 folders (diffkit.interop.hunyuan_video15, diffkit video): text_to_video and image_to_video
against diffusers' own HunyuanVideo15Pipeline / HunyuanVideo15ImageToVideoPipeline on tiny random folders
(tests/_hunyuan_video15_helpers.py: a 3-layer Qwen2.5-VL text model, a ByT5 T5 encoder, a one-block transformer with
every zero-initialised weight randomised, a 5-level VAE (16 x spatial, 4 x temporal), a CFG guider with rescale; the
image-to-video folder adds a tiny SigLIP; nothing downloaded): 5 frames (2 latent frames) of 32 x 32, 2 steps."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.hunyuan_video15 import (check_hunyuan_video15_folder, image_to_video,  # noqa: E402
                                             load_hunyuan_video15, text_to_video)

from _hunyuan_video15_helpers import (Z, tiny_hunyuan_video15_i2v_pipeline,  # noqa: E402
                                      tiny_hunyuan_video15_pipeline)
from _pipeline_folders import changed_folder  # noqa: E402
from _video_helpers import refused_in_one_line  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

H = W = 32  # latents 2 x 2 (16 x the VAE)
FRAMES, STEPS = 5, 2  # 2 latent frames
PROMPT, NEGATIVE = 'a sign: “bar” then "OPEN", "OPEN"', "blurry dog"
SIZE = dict(num_frames=FRAMES, num_inference_steps=STEPS)
OURS = dict(num_frames=FRAMES, steps=STEPS)
PARTS = ("model_index.json", "scheduler", "transformer", "text_encoder", "tokenizer", "text_encoder_2",
         "tokenizer_2", "vae", "guider")


@pytest.fixture(scope="module")
def tiny_hunyuan_video15(tmp_path_factory):
    """{"t2v": (the HunyuanVideo15Pipeline, its saved folder, load_hunyuan_video15 of it), "i2v": the same of a
    HunyuanVideo15ImageToVideoPipeline of the same parts and a tiny SigLIP}. (The pipelines are the ones saved, not
    read back: safetensors round-trips exactly, and a reload costs a second each.)"""
    root = tmp_path_factory.mktemp("hunyuan_video15")
    pipe = tiny_hunyuan_video15_pipeline()
    pipe.save_pretrained(root / "t2v")
    i2v = tiny_hunyuan_video15_i2v_pipeline(pipe)
    i2v.save_pretrained(root / "i2v")
    return {"t2v": (pipe, root / "t2v", load_hunyuan_video15(root / "t2v", progress=False)),
            "i2v": (i2v, root / "i2v", load_hunyuan_video15(root / "i2v", progress=False))}


def _latents(batch=1, seed=7, size=(H, W)):
    return torch.randn(batch, Z, 2, size[0] // 16, size[1] // 16, generator=torch.Generator().manual_seed(seed))


def _image(height=40, width=36):
    from PIL import Image
    return Image.fromarray(np.random.RandomState(0).randint(0, 256, (height, width, 3), dtype=np.uint8))


def _without_guidance(pipe, model):
    """The pipeline and diffkit's model with their guiders disabled (the conditional call alone), restored after."""
    from contextlib import contextmanager

    @contextmanager
    def unguided():
        guider, config = pipe.guider, model.guider
        pipe.guider, model.guider = guider.new(enabled=False), {**config, "enabled": False}
        try:
            yield
        finally:
            pipe.guider, model.guider = guider, config
    return unguided()


def test_hunyuan_video15_matches_the_pipeline(tiny_hunyuan_video15):
    """The folder's guider (s = 4.5, rescale 0.3) against "", a prompt with repeated glyph quotes, 2 flow Euler
    steps: the final latents (output_type="latent") as HunyuanVideo15Pipeline's from the same noise (its decoded
    frames: test_hunyuan_video15_command_writes_the_library_videos)."""
    pipe, _, model = tiny_hunyuan_video15["t2v"]
    latents = _latents()
    ref = pipe(PROMPT, latents=latents.clone(), height=H, width=W, output_type="latent", **SIZE).frames
    ours = text_to_video(model, PROMPT, latents=latents.clone(), height=H, width=W, return_latents=True, **OURS)
    assert ours.shape == ref.shape == (1, Z, 2, H // 16, W // 16)
    assert relative_error(ours, ref) < 1e-5


def test_hunyuan_video15_guidance_and_seeds(tiny_hunyuan_video15):
    """Two prompts (one without glyphs) against a negative prompt, video i's noise from generator seed + i, a guider
    in the original formulation (u_c + s (u_c - u_u), s = 3) and diffkit's guidance_scale 4 (diffusers'
    convention: the same guidance), one step: the pipeline's final latents; a sampler alone runs on its own grid;
    bad values are one line."""
    pipe, _, model = tiny_hunyuan_video15["t2v"]
    prompts, base, config = [PROMPT, "a dog"], pipe.guider, model.guider
    pipe.guider = base.new(guidance_scale=3.0, use_original_formulation=True, guidance_rescale=0.0)
    model.guider = dict(pipe.guider.config)
    try:
        generators = [torch.Generator().manual_seed(5 + i) for i in range(2)]
        ref = pipe(prompts, negative_prompt=[NEGATIVE] * 2, height=H, width=W, generator=generators,
                   output_type="latent", num_frames=FRAMES, num_inference_steps=1).frames
        ours = text_to_video(model, prompts, negative_prompt=NEGATIVE, guidance_scale=4.0, seed=5, height=H,
                             width=W, return_latents=True, num_frames=FRAMES, steps=1)
    finally:
        pipe.guider, model.guider = base, config
    assert relative_error(ours, ref) < 1e-5
    other = text_to_video(model, PROMPT, sampler="unipc", guidance_scale=1.0, return_latents=True, **OURS)
    assert other.shape == (1, Z, 2, H // 16, W // 16) and bool(other.isfinite().all())
    for options, expected in [({"guidance_scale": 1.0, "negative_prompt": NEGATIVE}, "a negative prompt is not"),
                              ({"num_frames": 6}, "num_frames=6 is not allowed; give 4 k "),
                              ({"height": 48}, "give both or neither"),
                              ({"height": 40, "width": 32}, "height x width 40x32 is not allowed"),
                              ({"guidance_scale": float("nan")}, "give a finite number")]:
        with pytest.raises(DiffkitError, match=expected):
            text_to_video(model, PROMPT, **{**OURS, **options})
    with pytest.raises(DiffkitError, match="image_to_video needs a HunyuanVideo15ImageToVideoPipeline folder"):
        image_to_video(model, _image(), PROMPT, **OURS)


def test_hunyuan_video15_image_to_video_matches_the_pipeline(tiny_hunyuan_video15):
    """A 40 x 36 image (its 32 x 32 bucket, centre-cropped; SigLIP states, first-frame posterior mode), the guider
    against "", 2 steps: HunyuanVideo15ImageToVideoPipeline's final latents from the same noise; its decoded frames
    of one unguided step; images of two buckets in one batch, or prompts not one per image: one line."""
    pipe, _, model = tiny_hunyuan_video15["i2v"]
    latents, image = _latents(), _image()
    ref = pipe(image, PROMPT, latents=latents.clone(), output_type="latent", **SIZE).frames
    ours = image_to_video(model, image, PROMPT, latents=latents.clone(), return_latents=True, **OURS)
    assert relative_error(ours, ref) < 1e-5
    with _without_guidance(pipe, model):
        frames = pipe(image, PROMPT, latents=latents.clone(), output_type="pt", num_frames=FRAMES,
                      num_inference_steps=1).frames
        videos = image_to_video(model, image, PROMPT, latents=latents.clone(), output_range="0,1",
                                num_frames=FRAMES, steps=1)
    assert videos.shape == frames.shape == (1, FRAMES, 3, H, W)
    assert relative_error(videos, frames) < 1e-5
    for images, expected in [([image, _image(20, 60)], r"images of buckets \[\(16, 32\), \(32, 32\)\]"),
                             ([image] * 3, "2 prompts for 3 images")]:
        with pytest.raises(DiffkitError, match=expected):
            image_to_video(model, images, [PROMPT] * 2, **OURS)


def test_hunyuan_video15_command_writes_the_library_videos(tiny_hunyuan_video15, tmp_path, capsys):
    """One unguided step (--guidance-scale 0 in the seed convention, the default) at the default size (the
    target_size bucket): the pipeline's decoded frames (output_type="pt", (B, T, C, H, W) in [0, 1], noise from
    generator 3) equal the library's (seed 3), and ``diffkit video`` writes them: the --individual file read back
    equals them rounded to uint8."""
    from diffkit.images import to_uint8
    from diffkit.video import read_video
    pipe, path, model = tiny_hunyuan_video15["t2v"]
    argv = ["video", "--checkpoint", str(path), "--prompt", PROMPT, "--frames", str(FRAMES), "--steps", "1",
            "--guidance-scale", "0", "--seed", "3", "--no-progress", "--out", str(tmp_path / "x.png"),
            "--individual", str(tmp_path / "each")]
    assert main(argv) == 0
    assert "15 fps" in capsys.readouterr().out
    videos = text_to_video(model, PROMPT, guidance_scale=0.0, convention="seed", seed=3, num_frames=FRAMES, steps=1)
    with _without_guidance(pipe, model):
        frames = pipe(PROMPT, generator=torch.Generator().manual_seed(3), output_type="pt", num_frames=FRAMES,
                      num_inference_steps=1).frames
    assert videos.shape == frames.shape == (1, FRAMES, 3, H, W)
    assert relative_error((videos / 2 + 0.5).clamp(0, 1), frames) < 1e-5  # output_range="0,1"
    assert (to_uint8(read_video(tmp_path / "each" / "video_00000.png")) == to_uint8(videos[0])).all()


@pytest.mark.parametrize("args, message", [
    (["--frames", "6"], "num_frames=6 is not allowed; give 4 k + 1"),
    (["--height", "32"], "give both or neither"),
    (["--height", "40", "--width", "32"], "height x width 40x32 is not allowed"),
    (["--guidance-scale", "0", "--negative-prompt", NEGATIVE], "a negative prompt is not allowed"),
    (["--lora", "x.safetensors"], "--lora does not apply to a HunyuanVideo 1.5 folder"),
    (["--image", "a.png"], "--image does not apply to a HunyuanVideo 1.5 folder")])
def test_hunyuan_video15_refusals_are_one_line(tiny_hunyuan_video15, tmp_path, capsys, args, message):
    """Before any weight is read, nothing written: frames not 4 k + 1, one of --height / --width, a size not of 16,
    a negative prompt where nothing guides (seed w = 0), flags the kind does not take."""
    refused_in_one_line(capsys, tmp_path, "video", tiny_hunyuan_video15["t2v"][1], args, message)


def test_hunyuan_video15_folder_refusals(tiny_hunyuan_video15, tmp_path, capsys):
    """diffkit sample on the folder names diffkit video; --height on the image-to-video folder; folders of another
    transformer class, of channels that are not 2 C + 1 / C, a dynamic-shifting scheduler, a guider window, an
    image-to-video MeanFlow transformer: one line from the JSON alone."""
    t2v, i2v = tiny_hunyuan_video15["t2v"][1], tiny_hunyuan_video15["i2v"][1]
    refused_in_one_line(capsys, tmp_path, "sample", t2v, [], "HunyuanVideo15Pipeline folder, which diffkit sample "
                        "does not take (it makes videos); generate videos with diffkit video")
    (tmp_path / "a.png").write_bytes(b"")
    refused_in_one_line(capsys, tmp_path, "video", i2v, ["--image", str(tmp_path / "a.png"), "--height", "32"],
                        "--height does not apply to a HunyuanVideo 1.5 image-to-video folder")
    for folder, part, change, expected in [
            (t2v, "model_index.json", {"transformer": ["diffusers", "HunyuanVideoTransformer3DModel"]},
             "transformer is a 'HunyuanVideoTransformer3DModel'; allowed: HunyuanVideo15Transformer3DModel"),
            (t2v, "transformer/config.json", {"in_channels": Z}, "in_channels, out_channels = 4, 4; allowed: 9, 4"),
            (t2v, "scheduler/scheduler_config.json", {"use_dynamic_shifting": True}, "use_dynamic_shifting"),
            (t2v, "guider/guider_config.json", {"stop": 0.5}, "guider has stop=0.5"),
            (i2v, "transformer/config.json", {"use_meanflow": True}, "use_meanflow=True")]:
        pipeline = "HunyuanVideo15Pipeline" if folder == t2v else "HunyuanVideo15ImageToVideoPipeline"
        parts = PARTS + (() if folder == t2v else ("image_encoder", "feature_extractor"))
        bad = changed_folder(folder, tmp_path, part, change, parts=parts)
        with pytest.raises(DiffkitError, match=expected) as err:
            check_hunyuan_video15_folder(bad, pipeline)
        assert "\n" not in str(err.value)
