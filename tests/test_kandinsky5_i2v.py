"""Kandinsky 5 image-to-video folders (diffkit.interop.kandinsky5_video.image_to_video, diffkit video): against
diffusers' own Kandinsky5I2VPipeline on a tiny random folder (the text-to-video tests' components,
tests/_kandinsky5_helpers.py with ``video``, saved as a Kandinsky5I2VPipeline; nothing downloaded): 17 frames (5
latent frames: normalize_first_frame takes its statistics from the frames after the first four) of 32 x 32, 2 steps,
condition images of 40 x 48 (resized by both)."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.kandinsky5_video import check_kandinsky5_i2v_folder, image_to_video, \
    is_kandinsky5_i2v_folder, is_kandinsky5_video_folder, load_kandinsky5_video, normalize_first_frame, \
    text_to_video  # noqa: E402

from _kandinsky5_helpers import save_kandinsky5, tiny_kandinsky5_pipeline  # noqa: E402
from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_kandinsky5_video import H, PROMPTS, STEPS, W, Z  # noqa: E402  (32 x 32, 2 steps, 4 latent channels)

FRAMES = 17  # 5 latent frames
SIZE = dict(num_frames=FRAMES, height=H, width=W)


@pytest.fixture(scope="session")
def kandinsky5_i2v(tmp_path_factory):
    """(Kandinsky5I2VPipeline.from_pretrained of the saved folder, the folder, load_kandinsky5_video of it, two RGB
    condition images of 40 x 48): both sides read the weights back from disk (tests/_pipeline_folders.reloaded)."""
    from PIL import Image
    root = tmp_path_factory.mktemp("kandinsky5_i2v")
    pipe = diffusers.Kandinsky5I2VPipeline(**tiny_kandinsky5_pipeline(root, shift=5.0, video=True).components)
    save_kandinsky5(pipe, root / "k5i")
    pixels = torch.randint(0, 256, (2, 40, 48, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    images = [Image.fromarray(p.numpy()) for p in pixels]
    return (*reloaded(root / "k5i", diffusers.Kandinsky5I2VPipeline, load_kandinsky5_video,
                      tokenizer=pipe.tokenizer), images)


def _noise(seeds):
    """The pipeline's channel-last noise (B, F, h, w, C) from one generator per seed (its randn_tensor), as diffkit's
    (B, C, F, h, w) latents, and those generators freshly seeded for the pipeline."""
    z = torch.cat([torch.randn(1, 5, H // 8, W // 8, Z, generator=torch.Generator().manual_seed(s)) for s in seeds])
    return z.permute(0, 4, 1, 2, 3).clone(), [torch.Generator().manual_seed(s) for s in seeds]


def test_kandinsky5_i2v_matches_the_pipeline(kandinsky5_i2v):
    """The pipeline's own draws (noise, then the image's posterior, from one generator per video), CFG s = 4 against
    its default negative prompt, 2 flow Euler steps on frames 1.. (frame 0 kept), normalize_first_frame: the final
    latents (output_type="latent") and frames (output_type="pt", (B, T, C, H, W) in [0, 1]); s = 1 on two images and
    prompts (per-video generators); normalize_first_frame (its batch-wide reference) against the pipeline's method on
    latents whose statistics lie inside its clamps."""
    pipe, path, model, images = kandinsky5_i2v
    assert is_kandinsky5_i2v_folder(path) and not is_kandinsky5_video_folder(path)
    assert pipe.prompt_template == model.prompt_template and pipe.prompt_template_encode_start_idx == 128
    ours_z, generators = _noise([7])
    with torch.no_grad():
        ref = pipe(images[0], PROMPTS[0], guidance_scale=4.0, generator=generators[0], num_inference_steps=STEPS,
                   output_type="latent", **SIZE).frames.permute(0, 4, 1, 2, 3)
        frames = pipe(images[0], PROMPTS[0], guidance_scale=4.0, generator=torch.Generator().manual_seed(7),
                      num_inference_steps=STEPS, output_type="pt", **SIZE).frames
    ours = image_to_video(model, images[0], PROMPTS[0], guidance_scale=4.0, latents=ours_z, seed=7, steps=STEPS,
                          return_latents=True, **SIZE)
    assert ours.shape == ref.shape == (1, Z, 5, H // 8, W // 8) and ref.abs().max() > 0.5
    assert relative_error(ours, ref) < 1e-5
    videos = image_to_video(model, images[:1], PROMPTS[0], guidance_scale=4.0, latents=ours_z, seed=7, steps=STEPS,
                            output_range="0,1", **SIZE)
    assert videos.shape == frames.shape == (1, FRAMES, 3, H, W)
    assert relative_error(videos, frames) < 1e-5
    ours_z, generators = _noise([3, 4])
    with torch.no_grad():
        ref = pipe(images, PROMPTS, guidance_scale=1.0, generator=generators, num_inference_steps=STEPS,
                   output_type="latent", **SIZE).frames.permute(0, 4, 1, 2, 3)
    ours = image_to_video(model, images, PROMPTS, guidance_scale=1.0, seed=3, steps=STEPS, return_latents=True,
                          **SIZE)  # the noise drawn by diffkit: (B, C, F, h, w) from seed + i
    theirs = image_to_video(model, images, PROMPTS, guidance_scale=1.0, latents=ours_z, seed=3, steps=STEPS,
                            return_latents=True, **SIZE)
    assert relative_error(theirs, ref) < 1e-5 and relative_error(ours, theirs) > 1e-2
    x = torch.randn(2, 6, 2, 2, Z, generator=torch.Generator().manual_seed(5))  # channel-last, 6 latent frames
    x = x + torch.tensor([0.0, 0.04]).view(2, 1, 1, 1, 1)  # video means apart, inside the clamps
    theirs = pipe.normalize_first_frame(x.clone()).permute(0, 4, 1, 2, 3)
    assert relative_error(normalize_first_frame(x.permute(0, 4, 1, 2, 3)), theirs) < 1e-6
    assert not torch.allclose(theirs[:, :, :4], x.permute(0, 4, 1, 2, 3)[:, :, :4], atol=1e-3)
    for options, expected in [({"num_frames": 13}, "num_frames=13 is not allowed for Kandinsky5I2VPipeline; give 4 k"),
                              ({"num_frames": 18}, "num_frames=18 is not allowed; give 4 k "),
                              ({"height": 40}, r"height x width 40x32 is not allowed.*Kandinsky5I2VPipeline")]:
        with pytest.raises(DiffkitError, match=expected):
            image_to_video(model, images[0], PROMPTS[0], **{**dict(steps=STEPS, **SIZE), **options})
    with pytest.raises(DiffkitError, match="3 prompts for 2 images"):
        image_to_video(model, images, PROMPTS + ["x"], steps=STEPS, **SIZE)
    with pytest.raises(DiffkitError, match="text_to_video needs a Kandinsky5T2VPipeline folder .* Kandinsky5I2V"):
        text_to_video(model, "cat", steps=STEPS, **SIZE)


def test_kandinsky5_i2v_command_writes_the_library_videos(kandinsky5_i2v, tmp_path, capsys):
    """``diffkit video --image`` writes the library's videos (one image for both prompts, video i from --seed + i,
    CFG against --negative-prompt): the APNG grid read back equals the library's frames rounded to uint8, 24 fps."""
    from PIL import Image

    from diffkit.images import to_uint8
    from diffkit.video import grid_frames, read_video
    _, path, model, images = kandinsky5_i2v
    images[1].save(tmp_path / "a.png")
    argv = ["video", "--checkpoint", str(path), "--image", str(tmp_path / "a.png"), "--prompt", PROMPTS[0],
            "--prompt", PROMPTS[1], "--frames", str(FRAMES), "--height", str(H), "--width", str(W), "--steps", "1",
            "--guidance-scale", "3", "--guidance-convention", "diffusers", "--negative-prompt", "ugly", "--seed", "3",
            "--batch-size", "2", "--no-progress", "--out", str(tmp_path / "x.png")]
    assert main(argv) == 0
    assert "24 fps" in capsys.readouterr().out
    image = Image.open(tmp_path / "a.png").convert("RGB")
    videos = image_to_video(model, [image, image], PROMPTS, guidance_scale=3.0, negative_prompt="ugly", seed=3,
                            steps=1, **SIZE)
    grid = read_video(tmp_path / "x.png")
    assert (to_uint8(grid) == np.stack(grid_frames(videos, 4))).all()


def test_kandinsky5_i2v_refusals_are_one_line(kandinsky5_i2v, tmp_path, capsys):
    """Before any weight is read, nothing written: diffkit sample / edit on the folder (naming diffkit video --image),
    no --image, frames not 4 k + 1 >= 17; folders with sparse attention, a dynamic-shifting scheduler."""
    from diffkit.interop.kandinsky5 import text_to_image
    _, path, model, images = kandinsky5_i2v
    with pytest.raises(DiffkitError, match="make videos with diffkit.interop.kandinsky5_video.image_to_video"):
        text_to_image(model, "cat")
    (tmp_path / "a.png").write_bytes(b"")
    images[0].save(tmp_path / "b.png")
    video = ["video", "--checkpoint", str(path), "--prompt", "cat", "--no-progress"]
    for argv, expected in [
            (["sample", "--checkpoint", str(path), "--prompt", "cat", "--no-progress"],
             "Kandinsky5I2VPipeline folder, which diffkit sample does not take (it makes videos); generate videos "
             f"with diffkit video --checkpoint {path} --image PNG --prompt TEXT"),
            (["edit", "--checkpoint", str(path), "--images", str(tmp_path / "a.png"), "--prompt", "cat"],
             "Kandinsky5I2VPipeline folder, which diffkit edit does not take"),
            (video, "--image"),
            (video + ["--image", str(tmp_path / "b.png"), "--frames", "13"],
             "num_frames=13 is not allowed for Kandinsky5I2VPipeline; give 4 k + 1 >= 17 frames")]:
        capsys.readouterr()
        assert main(argv + ["--out", str(tmp_path / "never" / "x.png")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "never").exists()
    parts = ("model_index.json", "scheduler", "transformer", "text_encoder", "tokenizer", "text_encoder_2",
             "tokenizer_2", "vae")
    for part, change, expected in [
            ("transformer/config.json", {"attention_type": "nabla"}, "attention_type='nabla' .sparse attention"),
            ("scheduler/scheduler_config.json", {"use_dynamic_shifting": True}, "use_dynamic_shifting"),
            ("model_index.json", {"vae": ["diffusers", "AutoencoderKL"]},
             "vae is a 'AutoencoderKL'; allowed: AutoencoderKLHunyuanVideo")]:
        bad = changed_folder(path, tmp_path, part, change, parts=parts)
        with pytest.raises(DiffkitError, match=expected) as err:
            check_kandinsky5_i2v_folder(bad)
        assert "\n" not in str(err.value)
