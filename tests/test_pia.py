"""PIA folders (diffkit.interop.pia): image_to_video against diffusers' own PIAPipeline on a tiny random folder (the
tiny Stable Diffusion of test_interop_diffusers with a 9-channel UNet and a randomised 1-layer MotionAdapter, joined
and saved by save_pretrained; SD's DDIM scheduler; nothing downloaded), and ``diffkit video --image`` on it."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.images import to_uint8  # noqa: E402
from diffkit.interop.pia import affinity, image_to_video, load_pia  # noqa: E402
from diffkit.video import read_video  # noqa: E402

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from _video_helpers import refused_in_one_line  # noqa: E402
from test_interop_diffusers import randomize, relative_error, sd_ddim_scheduler, tiny_sd_components  # noqa: E402

FRAMES, SIZE = 3, 16  # latents (1, 4, 3, 8, 8): the tiny VAE's factor 2
PARTS = ("model_index.json", "scheduler", "unet", "motion_adapter", "text_encoder", "tokenizer", "vae")


@pytest.fixture(scope="module")
def tiny_pia(tmp_path_factory):
    """(PIAPipeline.from_pretrained of the saved folder, the folder, load_pia of it, a 20 x 12 RGB image)."""
    from PIL import Image
    root = tmp_path_factory.mktemp("pia")
    unet, vae, text_encoder, tokenizer = tiny_sd_components(root, in_channels=9)
    randomize(unet, 2)  # conv_in's extra channels and the zero-initialised layers
    adapter = randomize(diffusers.MotionAdapter(
        block_out_channels=(32, 64), motion_layers_per_block=1, motion_transformer_layers_per_block=1,
        motion_num_attention_heads=2, motion_norm_num_groups=8, motion_max_seq_length=8), 1)
    pipe = diffusers.PIAPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                 motion_adapter=adapter, scheduler=sd_ddim_scheduler())
    pipe.save_pretrained(root / "pia")
    pixels = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    image.save(root / "image.png")
    return (*reloaded(root / "pia", diffusers.PIAPipeline, load_pia), image)


def _run_pipeline(pipe, image, **kw):
    final = {}

    def keep(pipeline, i, t, tensors):
        final["latents"] = tensors["latents"]
        return {}
    with torch.no_grad():
        frames = pipe(image, "a photo", num_inference_steps=3, generator=[torch.Generator().manual_seed(3)],
                      output_type="pt", callback_on_step_end=keep, num_frames=FRAMES, height=SIZE, width=SIZE,
                      **kw).frames
    return final["latents"], frames


@pytest.mark.parametrize("case", [
    dict(motion_scale=2, guidance_scale=5.0, negative_prompt="ot"),  # CFG, the folder's DDIM
    dict(motion_scale=7, guidance_scale=1.0, strength=0.7),  # unguided, image noised to the strength
])
def test_image_to_video_matches_the_pipeline(tiny_pia, case):
    pipe, _, model, image = tiny_pia
    latents, frames = _run_pipeline(pipe, image, **case)
    ours = image_to_video(model, image, "a photo", steps=3, seed=3, num_frames=FRAMES, height=SIZE, width=SIZE,
                          return_latents=True, **case)
    error = relative_error(ours, latents)
    print(f"latents: {error:.2e}")
    assert error < 1e-5
    videos = (model.decode_video(ours) / 2 + 0.5).clamp(0, 1)
    assert videos.shape == frames.shape == (1, FRAMES, 3, SIZE, SIZE)
    error = relative_error(videos, frames)
    print(f"frames: {error:.2e}")
    assert error < 1e-5


def test_another_sampler_runs_on_the_grid(tiny_pia):
    _, _, model, image = tiny_pia
    videos = image_to_video(model, image, "a photo", steps=2, seed=0, num_frames=FRAMES, height=SIZE, width=SIZE,
                            sampler="dpm-solver++-2m", output_range="0,1")
    assert videos.shape == (1, FRAMES, 3, SIZE, SIZE) and torch.isfinite(videos).all()


def test_affinity_rows():
    assert affinity(4, 8).tolist() == [0.5, 0.2, 0.2, 0.2]
    assert affinity(2, 0).tolist() == [1.0, 0.9]


def test_pia_command_is_the_library(tiny_pia, tmp_path, capsys):
    """``diffkit video --image`` writes the library's video byte for byte (APNG, lossless) at 10 fps."""
    _, path, model, image = tiny_pia
    assert main(["video", "--checkpoint", str(path), "--image", str(path.parent / "image.png"), "--prompt", "a photo",
                 "--frames", str(FRAMES), "--height", str(SIZE), "--width", str(SIZE), "--steps", "2",
                 "--motion-scale", "1", "--strength", "0.5", "--seed", "4", "--out", str(tmp_path / "v.png"),
                 "--individual", str(tmp_path / "each"), "--no-progress"]) == 0
    assert f"wrote 1 videos of {FRAMES} frames (16x16, 10 fps)" in capsys.readouterr().out
    ours = image_to_video(model, image, "a photo", steps=2, seed=4, num_frames=FRAMES, height=SIZE, width=SIZE,
                          motion_scale=1, strength=0.5)
    written = ((read_video(tmp_path / "each" / "video_00000.png") + 1) * 127.5).round().to(torch.uint8)
    assert np.array_equal(written.permute(0, 2, 3, 1).numpy(), to_uint8(ours[0]))


@pytest.mark.parametrize("change, flags, message", [
    (None, ["--motion-scale", "9"], "--motion-scale 9: motion_scale=9 is not allowed; give an integer 0 to 8"),
    (None, ["--strength", "0.2", "--steps", "3", "--frames", "3"], "--strength 0.2 keeps int(3 * 0.2) = 0 of 3 steps"),
    (None, ["--frames", "9"], "--frames 9 is not allowed"),
    (None, [], "give --image PNG"),
    (("unet/config.json", {"in_channels": 4}), ["--image", "IMAGE"], "in_channels=4, out_channels=4"),
])
def test_pia_refusals(tiny_pia, tmp_path, capsys, change, flags, message):
    """One line before any weight is read, nothing written."""
    _, path, _, _ = tiny_pia
    folder = path if change is None else changed_folder(path, tmp_path.parent, change[0], change[1],
                                                        PARTS)
    if flags == [] or "--image" in flags:
        flags = [f.replace("IMAGE", str(path.parent / "image.png")) for f in flags]
    else:
        flags = ["--image", str(path.parent / "image.png"), *flags]
    refused_in_one_line(capsys, tmp_path, "video", folder, flags, message)


def test_sample_names_diffkit_video(tiny_pia, tmp_path, capsys):
    """``diffkit sample`` on a PIA folder: one line naming ``diffkit video ... --image PNG``, nothing written."""
    _, path, _, _ = tiny_pia
    code = main(["sample", "--checkpoint", str(path), "--prompt", "a", "--out", str(tmp_path / "out.png")])
    err = capsys.readouterr().err
    assert code == 2 and "diffkit video --checkpoint" in err and "--image PNG" in err, err
    assert len(err.strip().splitlines()) == 1 and not any(tmp_path.iterdir())


def test_euler_folder_and_the_euler_sampler_match_the_pipeline(tiny_pia, tmp_path):
    """The folder written with Euler on trailing timesteps (its start sigma_max n) and diffkit's ``euler`` sampler
    named, unguided, 2 steps: the final latents."""
    pipe, path, _, image = tiny_pia
    folder = changed_folder(path, tmp_path, "scheduler/scheduler_config.json",
                            {"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "trailing"}, PARTS)
    euler = diffusers.PIAPipeline(**{**pipe.components, "scheduler": diffusers.EulerDiscreteScheduler.from_pretrained(
        folder / "scheduler")})
    euler.set_progress_bar_config(disable=True)
    final = {}

    def keep(pipeline, i, t, tensors):
        final["latents"] = tensors["latents"]
        return {}
    with torch.no_grad():
        euler(image, "a photo", num_inference_steps=2, generator=[torch.Generator().manual_seed(5)],
              output_type="latent", callback_on_step_end=keep, num_frames=FRAMES, height=SIZE, width=SIZE,
              guidance_scale=1.0, motion_scale=4)
    model = load_pia(folder, progress=False)
    ours = image_to_video(model, image, "a photo", steps=2, seed=5, num_frames=FRAMES, height=SIZE, width=SIZE,
                          guidance_scale=1.0, motion_scale=4, sampler="euler", return_latents=True)
    error = relative_error(ours, final["latents"])
    print(f"latents: {error:.2e}")
    assert error < 1e-5
