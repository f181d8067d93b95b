"""Stable Video Diffusion folders (diffkit.interop.svd, ``diffkit video``): image_to_video against diffusers' own
StableVideoDiffusionPipeline on a tiny random folder (a 2-level UNetSpatioTemporalConditionModel of width 32 for 3
frames, a 2-level AutoencoderKLTemporalDecoder (factor 2), a 1-layer CLIPVisionModelWithProjection of width 16, SVD's
own EulerDiscreteScheduler config: v-prediction, continuous timesteps, Karras sigmas 700 .. 0.002; every
zero-initialised weight randomised; nothing downloaded)."""
import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.svd import check_guidance, check_svd_folder, image_to_video, load_svd  # noqa: E402

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

H = W = 16  # latents 8 x 8
FRAMES, STEPS = 3, 5
SVD_PARTS = ("model_index.json", "scheduler", "unet", "vae", "image_encoder", "feature_extractor")


@pytest.fixture(scope="session")
def tiny_svd(tmp_path_factory):
    """(StableVideoDiffusionPipeline.from_pretrained of the saved folder, the folder, load_svd of it)."""
    root = tmp_path_factory.mktemp("svd")
    torch.manual_seed(0)
    unet = diffusers.UNetSpatioTemporalConditionModel(
        sample_size=8, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), block_out_channels=(32, 64),
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=24, layers_per_block=1,
        cross_attention_dim=12, num_attention_heads=(2, 2), num_frames=FRAMES)
    vae = diffusers.AutoencoderKLTemporalDecoder(block_out_channels=(32, 32), layers_per_block=1,
                                                 down_block_types=("DownEncoderBlock2D",) * 2)
    clip = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=24, num_attention_heads=2, num_hidden_layers=1, image_size=224,
        patch_size=32, projection_dim=12))
    with torch.no_grad():  # norm biases, the decoder's time_mixer factors: random, so that they count
        for module in (unet, vae, clip):
            for param in module.parameters():
                if param.abs().max() == 0:
                    param.normal_(0.0, 0.3)
    scheduler = diffusers.EulerDiscreteScheduler(  # stabilityai/stable-video-diffusion-img2vid's config
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
        sigma_max=700.0, sigma_min=0.002, steps_offset=1, timestep_spacing="leading", timestep_type="continuous",
        use_karras_sigmas=True)
    pipe = diffusers.StableVideoDiffusionPipeline(vae=vae, image_encoder=clip.eval(), unet=unet, scheduler=scheduler,
                                                  feature_extractor=transformers.CLIPImageProcessor())
    pipe.save_pretrained(root / "svd")
    return reloaded(root / "svd", diffusers.StableVideoDiffusionPipeline, load_svd)


def _image(seed, size=(24, 20)):
    from PIL import Image
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=torch.Generator().manual_seed(seed))
    return Image.fromarray(pixels.to(torch.uint8).numpy())


def _pipeline(pipe, images, seed, **kw):
    """(final latents, frames (B, F, 3, H, W) in [0, 1]) of one pipeline run, a generator per video (seed + i)."""
    final = {}

    def keep(pipeline, i, t, tensors):
        final["latents"] = tensors["latents"]
        return {}
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(images))]
    with torch.no_grad():
        frames = pipe(images, height=H, width=W, num_frames=FRAMES, num_inference_steps=STEPS, generator=generators,
                      output_type="pt", callback_on_step_end=keep, **kw).frames
    return final["latents"], frames


@pytest.mark.parametrize("count, options", [
    (2, {}),  # per-frame guidance 1 .. 3, fps 7, motion 127, augmentation 0.02
    (1, {"max_guidance_scale": 1.0, "fps": 9, "motion_bucket_id": 30, "noise_aug_strength": 0.3,
         "decode_chunk_size": 2}),
])
def test_svd_matches_the_pipeline(tiny_svd, count, options):
    """One or two videos (their own images and generators): the final latents and the decoded frames of
    StableVideoDiffusionPipeline, 5 steps of its Euler scheduler, guided per frame or not, the image resized (Lanczos)
    for the VAE, CLIP on the original."""
    pipe, _, model = tiny_svd
    images = [_image(1), _image(2)][:count]
    latents, frames = _pipeline(pipe, images, 5, **options)
    ours = image_to_video(model, images, steps=STEPS, num_frames=FRAMES, height=H, width=W, seed=5,
                          return_latents=True, **options)
    assert ours.shape == latents.shape == (count, FRAMES, 4, H // 2, W // 2)
    error = relative_error(ours, latents)
    print(f"latents: {error:.2e}")  # (measured 3.7e-6 guided, 1.9e-6 unguided)
    assert error < 1e-5
    videos = model.decode(ours, options.get("decode_chunk_size"))
    error = relative_error((videos / 2 + 0.5).clamp(0, 1), frames)
    print(f"frames: {error:.2e}")  # (measured 2.0e-6, 7.9e-7)
    assert error < 1e-5


def cli(capsys, *args):
    code = main(["video", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_svd_video_command_writes_the_library_videos(tiny_svd, tmp_path, capsys):
    """diffkit video --image A --image B (one batch): each video's animated PNG holds image_to_video's frames (8-bit,
    as to_uint8 rounds), at --fps 9, which also conditions the UNet (fps - 1)."""
    from PIL import Image

    from diffkit.images import to_uint8
    from diffkit.video import read_video
    _, folder, model = tiny_svd
    for i in (1, 2):
        _image(i).save(tmp_path / f"{i}.png")
    flags = ["--frames", str(FRAMES), "--height", str(H), "--width", str(W), "--steps", "1", "--seed", "3"]
    code, out, err = cli(capsys, "--checkpoint", str(folder), "--image", str(tmp_path / "1.png"), "--image",
                         str(tmp_path / "2.png"), "--fps", "9", "--motion-bucket-id", "30", "--min-guidance-scale",
                         "2", "--out", str(tmp_path / "grid.png"), "--individual", str(tmp_path / "each"),
                         "--batch-size", "2", "--no-progress", *flags)
    assert code == 0, err
    assert "wrote 2 videos of 3 frames (16x16, 9 fps)" in out
    images = [Image.open(tmp_path / f"{i}.png").convert("RGB") for i in (1, 2)]
    videos = image_to_video(model, images, steps=1, num_frames=FRAMES, height=H, width=W, seed=3, fps=9,
                            motion_bucket_id=30, min_guidance_scale=2.0)
    for i in range(2):
        written = read_video(tmp_path / "each" / f"video_{i:05d}.png")
        assert torch.equal(((written + 1) * 127.5).round().to(torch.uint8), torch.from_numpy(
            to_uint8(videos[i])).permute(0, 3, 1, 2))
    with Image.open(tmp_path / "grid.png") as image:
        image.load()
        assert image.n_frames == FRAMES and round(image.info["duration"]) == 111  # 1000 / 9 ms


@pytest.mark.parametrize("args, message", [
    (["--guidance-scale", "3"], "--guidance-scale does not apply to a Stable Video Diffusion folder"),
    (["--prompt", "a cat"], "--prompt does not apply to a Stable Video Diffusion folder"),
    (["--lora", "x.safetensors"], "--lora does not apply"),
    (["--min-guidance-scale", "2", "--max-guidance-scale", "1"], "--min-guidance-scale=2.0 > 1 with"),
    (["--height", "12"], "--height 12 is not allowed for a Stable Video Diffusion folder; give a multiple of 8"),
    (["--noise-aug-strength", "-1"], "noise-aug-strength"),
])
def test_svd_video_command_refusals_are_one_line(tiny_svd, tmp_path, capsys, monkeypatch, args, message):
    _, folder, _ = tiny_svd
    _image(1).save(tmp_path / "1.png")
    monkeypatch.chdir(tmp_path)
    try:
        code, out, err = cli(capsys, "--checkpoint", str(folder), "--image", "1.png", "--individual", "new/each",
                             *args)
    except SystemExit as exit_:  # argparse's own refusal of a value
        code, err = exit_.code, capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) <= 2, err
    assert not (tmp_path / "new").exists() and not (tmp_path / "videos.png").exists()


@pytest.mark.parametrize("part, change, message", [
    ("scheduler/scheduler_config.json", {"prediction_type": "epsilon"}, "prediction_type='epsilon'"),
    ("scheduler/scheduler_config.json", {"use_karras_sigmas": False}, "use_karras_sigmas=False"),
    ("scheduler/scheduler_config.json", {"sigma_max": None}, "sigma_max=None"),
    ("unet/config.json", {"in_channels": 4}, "in_channels, out_channels = 4, 4"),
    ("model_index.json", {"unet": ["diffusers", "UNet2DConditionModel"]}, "unet is a 'UNet2DConditionModel'"),
])
def test_svd_folder_refusals(tiny_svd, tmp_path, part, change, message):
    _, folder, _ = tiny_svd
    with pytest.raises(DiffkitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_svd_folder(changed_folder(folder, tmp_path, part, change, SVD_PARTS))


@pytest.mark.parametrize("command", [["sample", "--out", "x.png"], ["edit", "--images", "1.png", "--out", "e"]])
def test_sample_and_edit_refuse_an_svd_folder(tiny_svd, tmp_path, capsys, monkeypatch, command):
    _, folder, _ = tiny_svd
    monkeypatch.chdir(tmp_path)
    _image(1).save(tmp_path / "1.png")
    code = main([command[0], "--checkpoint", str(folder), *command[1:]])
    err = capsys.readouterr().err
    assert code == 2 and "StableVideoDiffusionPipeline folder, which diffkit" in err and "diffkit video" in err, err
    assert len(err.strip().splitlines()) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["1.png"]


def test_svd_library_refusals(tiny_svd):
    _, _, model = tiny_svd
    image = _image(1)
    for call, message in [
        (lambda: check_guidance(3.0, 0.5), "min_guidance_scale=3.0 > 1 with max_guidance_scale=0.5"),
        (lambda: image_to_video(model, image, height=12), "height x width 12x1024"),
        (lambda: image_to_video(model, image, height=H, width=W, latents=torch.zeros(1, 2, 4, 8, 8)),
         r"latents of shape \(1, 2, 4, 8, 8\)"),
        (lambda: image_to_video(model, image, height=H, width=W, fps=0), "fps"),
        (lambda: load_svd(json.__file__, lora=["x.safetensors"]), "lora is not allowed"),
    ]:
        with pytest.raises(DiffkitError, match=message):
            call()


def test_svd_float16_vae_encodes_in_float32(tiny_svd):
    """A float16 VAE with force_upcast (SVD's) encodes the image in float32 and is float16 again after, as the
    pipeline's needs_upcasting: the same latents as its _encode_vae_image on the float32 VAE."""
    import copy
    import dataclasses
    pipe, _, model = tiny_svd
    half = dataclasses.replace(model, vae=copy.deepcopy(model.vae).half(), dtype=torch.float16)
    pixels = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(4)) * 2 - 1
    ours = half.image_latents(pixels)
    vae = pipe.vae
    try:
        pipe.vae = copy.deepcopy(half.vae).float()  # the pipeline's vae.to(float32) of the float16 weights
        with torch.no_grad():
            theirs = pipe._encode_vae_image(pixels, "cpu", 1, False).to(torch.float16)
    finally:
        pipe.vae = vae
    assert half.vae.dtype == torch.float16 and ours.dtype == torch.float16
    assert torch.equal(ours, theirs)
