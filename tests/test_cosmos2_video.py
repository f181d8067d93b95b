"""Cosmos Predict2 Video2World folders (diffkit.interop.cosmos2_video): image_to_video against diffusers' own
Cosmos2VideoToWorldPipeline on a tiny random folder (test_cosmos2's T5 and tokenizer, a 1-layer
CosmosTransformer3DModel taking the condition-mask channel, with its padding-mask channel and learnable positions
(randomised: they start at zero), a Wan 2.1 AutoencoderKLWan of z_dim 8 with non-trivial latents mean / std, the
Karras scheduler; 5 frames -> 2 latent frames of 32 x 32; nothing downloaded). The pipeline runs with test_cosmos2's
pass-through safety checker and, without torchvision, its nearest-neighbour padding-mask resize."""
import re

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.cosmos2_video import image_to_video, is_cosmos2_video_folder, load_cosmos2_video  # noqa: E402

from _video_helpers import refused_in_one_line  # noqa: E402
from _pipeline_folders import changed_folder  # noqa: E402
from test_cosmos2 import LENGTH, cosmos2_folder  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]
H = W = 32  # latents 4 x 4: 2 x 2 patches
FRAMES = 5  # 2 latent frames: the image's, and one generated


@pytest.fixture(scope="module")
def tiny_cosmos2_video(tmp_path_factory):
    """(Cosmos2VideoToWorldPipeline.from_pretrained of the saved folder, the folder, load_cosmos2_video of it)."""
    yield from cosmos2_folder(tmp_path_factory.mktemp("cosmos2_video") / "cosmos2_video",
                              diffusers.Cosmos2VideoToWorldPipeline, load_cosmos2_video, in_channels=9, num_layers=1,
                              max_size=(4, 8, 8))


def _images():
    """Two random RGB images of 40 x 24 (both sides resized to 32 x 32, Lanczos)."""
    from PIL import Image
    pixels = torch.randint(0, 256, (2, 24, 40, 3), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    return [Image.fromarray(p.numpy()) for p in pixels]


def _generators(seed):
    return [torch.Generator().manual_seed(seed + i) for i in range(2)]


def test_cosmos2_video_matches_the_pipeline(tiny_cosmos2_video):
    """Same final latents as Cosmos2VideoToWorldPipeline from the same generators (the condition's posterior sample,
    then eps): the conditioning frame held at sigma_conditioning, CFG g = 3 against one negative prompt per prompt,
    fps 10 to the transformer (3 steps), and the default g = 7 against the pipeline's negative prompt (4 steps); the
    videos decoded by the Wan VAE as the pipeline decodes its latents."""
    pipe, folder, model = tiny_cosmos2_video
    assert is_cosmos2_video_folder(folder) and model.padding
    images = _images()
    for steps, seed, kw in ((3, 5, {"guidance_scale": 3.0, "negative_prompt": ["ugly", "blurry dog"], "fps": 10}),
                            (4, 0, {})):
        with torch.no_grad():
            theirs = pipe(image=images, prompt=PROMPTS, height=H, width=W, num_frames=FRAMES,
                          num_inference_steps=steps, generator=_generators(seed), max_sequence_length=LENGTH,
                          output_type="latent", **kw).frames
        guidance = {"guidance_scale": kw["guidance_scale"], "convention": "seed"} if "guidance_scale" in kw else {}
        model.denoiser.reset_nfe()
        ours = image_to_video(model, images, PROMPTS, steps=steps, seed=seed, num_frames=FRAMES, height=H, width=W,
                              max_sequence_length=LENGTH, return_latents=True, fps=kw.get("fps"),
                              negative_prompt=kw.get("negative_prompt"), **guidance)
        error = relative_error(ours, theirs)
        print("cosmos2 video", steps, kw, float((ours - theirs).abs().max()), error)
        assert ours.shape == theirs.shape == (2, 8, 2, 4, 4) and error < 1e-5, error
    with torch.no_grad():  # the pipeline's decoding (its output_type="pt" path before the safety checker)
        vae = pipe.vae
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
        decoded = vae.decode(theirs * std / pipe.scheduler.config.sigma_data + mean, return_dict=False)[0]
        decoded = pipe.video_processor.postprocess_video(decoded, output_type="pt")
    videos = model.decode_video(ours)
    frames_error = relative_error((videos / 2 + 0.5).clamp(0, 1), decoded)
    print("cosmos2 video frames", frames_error)
    assert videos.shape == decoded.shape == (2, FRAMES, 3, H, W) and frames_error < 1e-5


def test_cosmos2_video_continues_an_input_video(tiny_cosmos2_video):
    """An input video (the pipeline's ``video``) of 5 frames for 9: its first 2 latent frames condition, the third is
    generated; as a list of PIL frames and as read_video's (T, 3, H, W) tensor, unguided, 3 steps."""
    import numpy as np
    pipe, _, model = tiny_cosmos2_video
    clip = (_images() * 3)[:5]
    with torch.no_grad():
        theirs = pipe(video=[clip], prompt=PROMPTS[:1], height=H, width=W, num_frames=9, num_inference_steps=3,
                      generator=_generators(1)[:1], max_sequence_length=LENGTH, guidance_scale=1.0,
                      output_type="latent").frames
    tensor = torch.stack([torch.from_numpy(np.array(frame)).permute(2, 0, 1) for frame in clip]) / 127.5 - 1
    for given in ([clip], [tensor]):
        ours = image_to_video(model, given, PROMPTS[0], steps=3, seed=1, num_frames=9, height=H, width=W,
                              max_sequence_length=LENGTH, guidance_scale=0.0, convention="seed", return_latents=True)
        error = relative_error(ours, theirs)
        print("cosmos2 video input video", error)
        assert ours.shape == theirs.shape == (1, 8, 3, 4, 4) and error < 1e-5, error


def test_cosmos2_video_command_writes_the_library_videos(tiny_cosmos2_video, tmp_path, capsys):
    """diffkit video on the folder (--image PNG per video): each lossless animation (APNG) is the library's video of
    seed + i, rounded as to_uint8 does; 16 fps."""
    from PIL import Image

    from diffkit.cli import main
    from diffkit.images import to_uint8
    from diffkit.video import read_video
    _, folder, model = tiny_cosmos2_video
    images = _images()
    files = []
    for i, image in enumerate(images):
        image.save(tmp_path / f"in{i}.png")
        files += ["--image", str(tmp_path / f"in{i}.png")]
    code = main(["video", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], *files,
                 "--seed", "4", "--frames", str(FRAMES), "--height", str(H), "--width", str(W), "--steps", "2",
                 "--guidance-scale", "3", "--guidance-convention", "seed", "--negative-prompt", "ugly",
                 "--out", str(tmp_path / "grid.png"), "--individual", str(tmp_path / "each"), "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "wrote 2 videos of 5 frames (32x32, 16 fps)" in out.out
    videos = image_to_video(model, images, PROMPTS, steps=2, num_frames=FRAMES, height=H, width=W, seed=4,
                            guidance_scale=3.0, convention="seed", negative_prompt="ugly")
    for i, video in enumerate(videos):
        written = read_video(tmp_path / "each" / f"video_{i:05d}.png")
        assert torch.equal(((written + 1) * 127.5).round().to(torch.uint8),
                           torch.from_numpy(to_uint8(video)).permute(0, 3, 1, 2))
    with Image.open(tmp_path / "grid.png") as image:
        assert image.info["duration"] == pytest.approx(1000 / 16, abs=1)


def test_cosmos2_video_command_takes_input_videos(tiny_cosmos2_video, tmp_path, capsys):
    """diffkit video --video FILE (APNGs of 3 frames, one per video, a batch of 2): each written animation is the
    library's image_to_video of those read_video videos (the pipeline's ``video``), seed + i, rounded as to_uint8."""
    from diffkit.cli import main
    from diffkit.images import to_uint8
    from diffkit.video import read_video, save_videos
    _, folder, model = tiny_cosmos2_video
    inputs = torch.randint(0, 256, (2, 3, 3, 24, 40), generator=torch.Generator().manual_seed(8)) / 127.5 - 1
    files = save_videos(inputs, tmp_path / "in")
    code = main(["video", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1],
                 *[a for f in files for a in ("--video", str(f))], "--seed", "2", "--batch-size", "2",
                 "--frames", str(FRAMES), "--height", str(H), "--width", str(W), "--steps", "2",
                 "--guidance-scale", "0", "--guidance-convention", "seed", "--out", str(tmp_path / "grid.png"),
                 "--individual", str(tmp_path / "each"), "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    clips = [read_video(f) for f in files]
    assert all(torch.equal(c, v) for c, v in zip(clips, inputs))
    videos = image_to_video(model, clips, PROMPTS, steps=2, num_frames=FRAMES, height=H, width=W, seed=2,
                            guidance_scale=0.0, convention="seed")
    for i, video in enumerate(videos):
        written = read_video(tmp_path / "each" / f"video_{i:05d}.png")
        assert torch.equal(((written + 1) * 127.5).round().to(torch.uint8),
                           torch.from_numpy(to_uint8(video)).permute(0, 3, 1, 2))


@pytest.mark.parametrize("command, args, message", [
    ("video", ["--video", "clip.png"], "--image and --video are both given"),
    ("video", ["--no-image", "--video", "clip.png", "--frames", "5"],
     "--video of 5 frames is not allowed for --frames 5"),
    ("video", ["--no-image", "--video", "clip.png", "--video", "two.png", "--frames", "9", "--batch-size", "2"],
     "--video files of [2, 5] frames are not allowed with --batch-size 2"),
    ("video", ["--frames", "8"], "num_frames=8 is not allowed; give 4 k + 1"),
    ("video", ["--frames", "1"], "num_frames=1 is not allowed; give 4 k + 1 frames, at least 5"),
    ("video", ["--height", "24"], "height x width 24x1280 is not allowed"),
    ("video", ["--steps", "1"], "--steps 1 is not allowed for Cosmos2VideoToWorldPipeline's loop"),
    ("video", ["--guidance-scale", "1.5", "--guidance-convention", "diffusers"],
     "w = 0.5) is not allowed on a Cosmos Predict2 folder"),
    ("video", ["--lora", "x.safetensors"], "--lora does not apply to a Cosmos Predict2 Video2World folder"),
    ("video", ["--no-image"], "(image-to-video): give --image PNG"),
    ("sample", [], "is a Cosmos2VideoToWorldPipeline folder, which diffkit sample does not take (it makes "
                   "videos); generate videos with diffkit video"),
    ("edit", ["--images", "x.png"], "which diffkit edit does not take"),
])
def test_cosmos2_video_refusals_are_one_line_and_write_nothing(tiny_cosmos2_video, tmp_path, monkeypatch, capsys,
                                                               command, args, message):
    _, folder, _ = tiny_cosmos2_video
    monkeypatch.chdir(tmp_path)
    image = [] if command != "video" or "--no-image" in args else ["--image", "in.png"]
    args = [a for a in args if a != "--no-image"]
    from diffkit.video import save_video_grid
    save_video_grid(torch.zeros(5, 3, 8, 8), tmp_path / "clip.png")  # input videos of 5 and 2 frames
    save_video_grid(torch.zeros(2, 3, 8, 8), tmp_path / "two.png")
    refused_in_one_line(capsys, tmp_path, command, folder, image + args, message)


def test_cosmos2_video_folder_and_library_refusals(tiny_cosmos2_video, tmp_path, capsys):
    """Folders diffkit does not drive (before any weight), and the library's own refusals: one line each."""
    from diffkit.cli import main
    _, folder, model = tiny_cosmos2_video
    for part, change, message in (
            ("transformer/config.json", {"in_channels": 8}, "in_channels=8; allowed: 9"),
            ("vae/config.json", {"temperal_downsample": [False, True, False]}, "temperal_downsample=[False, True, "
                                                                               "False]; allowed: two temporal"),
            ("vae/config.json", {"patch_size": 2, "scale_factor_spatial": 16}, "patch_size=2; allowed: None")):
        bad = changed_folder(folder, tmp_path, part, change)
        code = main(["video", "--checkpoint", str(bad), "--prompt", "a", "--image", "x.png",
                     "--out", str(tmp_path / "v.png")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "v.png").exists()
    t2i = changed_folder(folder, tmp_path, "model_index.json", {"_class_name": "Cosmos2TextToImagePipeline"})
    image = _images()[:1]
    for call, message in (
            (lambda: load_cosmos2_video(t2i, progress=False), "allowed: Cosmos2VideoToWorldPipeline (Cosmos "
                                                              "Predict2 video-to-world)"),
            (lambda: load_cosmos2_video(folder, progress=False, lora=["x.safetensors"]), "has no load_lora_weights"),
            (lambda: image_to_video(model, image, "a", num_frames=FRAMES, height=H, width=W,
                                    latents=torch.zeros(1, 8, 1, 4, 4)), "latents of shape (1, 8, 1, 4, 4)"),
            (lambda: image_to_video(model, image, "a", num_frames=17, height=H, width=W), "give at most 13"),
            (lambda: image_to_video(model, image, "a", num_frames=FRAMES, height=H, width=W, fps=0), "fps"),
            (lambda: image_to_video(model, image, "a", num_frames=FRAMES, height=H, width=W, flow_shift=3.0),
             "folder samples on EDM's Karras sigmas"),
            (lambda: image_to_video(model, image + image + image, ["a", "b"], num_frames=FRAMES, height=H, width=W),
             "2 prompts for 3 images; give one, or one per image"),
            (lambda: image_to_video(model, [image * 2, image], "a", num_frames=FRAMES, height=H, width=W),
             "input videos of [1, 2] frames are not allowed"),
            (lambda: image_to_video(model, [image * 5], "a", num_frames=FRAMES, height=H, width=W),
             "input videos of 5 frames are not allowed for num_frames=5")):
        with pytest.raises(DiffkitError, match=re.escape(message)) as info:
            call()
        assert "\n" not in str(info.value)
