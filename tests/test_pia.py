"""PIA folders (diffkit.interop.pia): image_to_video against diffusers' own PIAPipeline on a tiny random folder (the
tiny Stable Diffusion of test_interop_diffusers with a 9-channel UNet and a randomised 1-layer MotionAdapter, joined
and saved by save_pretrained; SD's DDIM scheduler; nothing downloaded), and ``diffkit video --image`` on it."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
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


def test_video_command_writes_the_library_frames(tiny_pia, tmp_path):
    _, path, model, image = tiny_pia
    out = tmp_path / "v.png"
    main(["video", "--checkpoint", str(path), "--image", str(tmp_path.parent / "image.png") if False else
          str(path.parent / "image.png"), "--prompt", "a photo", "--frames", str(FRAMES), "--height", str(SIZE),
          "--width", str(SIZE), "--steps", "2", "--motion-scale", "1", "--seed", "4", "--out", str(out)])
    ours = image_to_video(model, image, "a photo", steps=2, seed=4, num_frames=FRAMES, height=SIZE, width=SIZE,
                          motion_scale=1)
    written = read_video(out)
    assert np.array_equal(to_uint8(written[0]) if False else written, to_uint8(ours[0]))


@pytest.mark.parametrize("change, flags, words", [
    (None, ["--motion-scale", "9"], "--motion-scale 9"),
    (("unet", {"in_channels": 4}), [], "in_channels=4"),
    (("model_index.json", {"_class_name": "AnimateDiffPipeline"}), [], "AnimateDiffPipeline"),
])
def test_refusals_in_one_line(tiny_pia, tmp_path, change, flags, words):
    _, path, _, _ = tiny_pia
    folder = path if change is None else changed_folder(path, tmp_path, *change, parts=PARTS)
    with pytest.raises((DiffkitError, SystemExit)) as err:
        refused_in_one_line(["video", "--checkpoint", str(folder), "--image", str(path.parent / "image.png"),
                             "--prompt", "p", "--out", str(tmp_path / "v.png"), *flags])
    assert words in str(err.value)
