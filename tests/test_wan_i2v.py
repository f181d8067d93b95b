"""Wan image-to-video folders (diffkit.interop.wan_i2v, ``diffkit video``) against diffusers' own
WanImageToVideoPipeline on a tiny random folder (Wan text-to-video's tiny UMT5, Wan 2.1 VAE and flow UniPC of
tests/test_wan.py, a 1-layer WanTransformer3DModel with CLIP image conditioning and randomised zero-initialised
parameters, a 1-layer CLIPVisionModel of width 16 on 32 px; nothing downloaded). ftfy is not installed: the
pipeline's prompt_clean gets it as the identity, as diffkit does."""
import dataclasses
import re
import types

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import to_uint8  # noqa: E402
from diffkit.interop.wan_i2v import check_wan_i2v_folder, image_to_video, load_wan_i2v  # noqa: E402
from diffkit.video import read_video  # noqa: E402

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_wan import Z, randomised, tiny_wan22_vae, tiny_wan_parts  # noqa: E402

H, W, FRAMES = 32, 32, 5  # latents 2 frames of 4 x 4: 2 x 2 patches
PROMPTS, NEGATIVE = ["a photo of a Cat", "a dog"], "blurry dog"
PARTS = ("model_index.json", "scheduler", "transformer", "text_encoder", "tokenizer", "vae", "image_encoder",
         "image_processor")
I2V = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=2 * Z + 4, out_channels=Z,
           text_dim=32, freq_dim=32, ffn_dim=32, num_layers=1, image_dim=16, added_kv_proj_dim=24, rope_max_seq_len=32)


def i2v_transformer(seed: int, **changes):
    """A tiny image-to-video WanTransformer3DModel (2 C + 4 channels in), its zero parameters and norms randomised."""
    torch.manual_seed(seed)
    model = randomised(diffusers.WanTransformer3DModel(**{**I2V, **changes}), seed=seed)
    with torch.no_grad():  # the norms' unit weights too: each one can make a test fail
        for name, value in model.named_parameters():
            if "norm" in name:
                value.add_(0.2 * torch.randn_like(value))
    return model


@pytest.fixture(scope="session")
def tiny_wan_i2v(tmp_path_factory):
    """(WanImageToVideoPipeline.from_pretrained of the saved folder, the folder, load_wan_i2v of it), with ftfy's
    fix_text as the identity in the pipeline's module while the tests run."""
    from diffusers.pipelines.wan import pipeline_wan_i2v
    root = tmp_path_factory.mktemp("wan_i2v")
    parts = tiny_wan_parts()
    torch.manual_seed(3)
    clip = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=24, num_attention_heads=2, num_hidden_layers=1, image_size=32,
        patch_size=8)).eval()
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    diffusers.WanImageToVideoPipeline(**{**parts, "transformer": i2v_transformer(4)}, image_encoder=clip,
                                      image_processor=processor).save_pretrained(root / "wan_i2v")
    with pytest.MonkeyPatch.context() as patch:
        if not hasattr(pipeline_wan_i2v, "ftfy"):
            patch.setattr(pipeline_wan_i2v, "ftfy", types.SimpleNamespace(fix_text=lambda text: text), raising=False)
        yield reloaded(root / "wan_i2v", diffusers.WanImageToVideoPipeline, load_wan_i2v)


def _image(seed=3, size=(W + 8, H + 16)):
    from PIL import Image
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=torch.Generator().manual_seed(seed))
    return Image.fromarray(pixels.to(torch.uint8).numpy())


def test_wan_i2v_matches_the_pipeline(tiny_wan_i2v):
    """Two prompts on one image (resized to 32 x 32, Lanczos, for the VAE; CLIP sees the original), CFG s = 4 against
    a negative prompt, 3 UniPC steps, 5 frames (2 latent frames), video i's noise from seed 3 + i (the pipeline's
    per-video generators): the same final latents (read by a step callback) and decoded frames (B, T, C, H, W)."""
    pipe, _, model = tiny_wan_i2v
    image, final = _image(), {}

    def keep(pipeline, i, t, tensors):
        final["latents"] = tensors["latents"]
        return {}
    kw = {"negative_prompt": NEGATIVE, "guidance_scale": 4.0, "height": H, "width": W, "num_frames": FRAMES}
    with torch.no_grad():
        frames = pipe(image, PROMPTS, num_inference_steps=3, output_type="pt", callback_on_step_end=keep,
                      generator=[torch.Generator().manual_seed(3 + i) for i in range(2)], **kw).frames
    ours = image_to_video(model, image, PROMPTS, steps=3, seed=3, return_latents=True, **kw)
    assert ours.shape == (2, Z, 2, H // 8, W // 8)
    error = relative_error(ours, final["latents"])
    print(f"latents: {error:.2e}")
    assert error < 1e-5
    videos = model.output_videos(ours, "0,1", False)  # image_to_video's decoding of those latents
    assert videos.shape == frames.shape == (2, FRAMES, 3, H, W)
    error = relative_error(videos, frames)
    print(f"frames: {error:.2e}")
    assert error < 1e-5


def _as_written(video):
    """A video (T, 3, H, W) in [-1, 1] as diffkit writes and reads it back: rounded as diffkit.images.to_uint8."""
    return torch.from_numpy(to_uint8(video)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _written_video(path, tmp_path, model, latents, *extra) -> bool:
    """``diffkit video`` of the folder with ``extra`` flags wrote (v.png) the library's video of ``latents``
    (image_to_video's decoding)."""
    assert main(_video_argv(path, tmp_path, *extra, "--out", str(tmp_path / "v.png"))) == 0
    video = model.output_videos(latents, "-1,1", False)[0]
    return torch.equal(read_video(tmp_path / "v.png")[:, :, 2:2 + H, 2:2 + W], _as_written(video))


def _same_latents(pipe, model, steps: int, seed: int, label: str, **kw):
    """diffkit's final latents of PROMPTS[0] on _image(), within 1e-5 relative of ``pipe``'s (output_type="latent",
    the generator of ``seed``); ``kw``: both calls' options."""
    with torch.no_grad():
        theirs = pipe(_image(), PROMPTS[0], num_inference_steps=steps, output_type="latent",
                      generator=[torch.Generator().manual_seed(seed)], **kw).frames
    ours = image_to_video(model, _image(), PROMPTS[0], steps=steps, seed=seed, return_latents=True, **kw)
    error = relative_error(ours, theirs)
    print(f"{label}: {error:.2e}")
    assert error < 1e-5
    return ours, theirs


def _video_argv(path, tmp_path, *extra):
    return ["video", "--checkpoint", str(path), "--image", str(tmp_path / "a.png"), "--steps", "2", "--frames",
            str(FRAMES), "--height", str(H), "--width", str(W), "--seed", "5", "--no-progress", *extra]


def test_wan_i2v_command_is_the_library(tiny_wan_i2v, tmp_path, capsys):
    """``diffkit video`` writes the library's videos byte for byte (CFG 5 against "", video i's noise from seed + i,
    both in one batch as the library's call: a batch of one differs by ~1e-6, which can flip an 8-bit value): the
    grid (an APNG, 16 fps) and each video."""
    from PIL import Image
    _, path, model = tiny_wan_i2v
    image = _image()
    image.save(tmp_path / "a.png")
    argv = _video_argv(path, tmp_path, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--out",
                       str(tmp_path / "grid.png"), "--individual", str(tmp_path / "each"), "--batch-size", "2")
    assert main(argv) == 0
    assert "wrote 2 videos of 5 frames (32x32, 16 fps)" in capsys.readouterr().out
    videos = image_to_video(model, image, PROMPTS, steps=2, seed=5, num_frames=FRAMES, height=H, width=W)
    for i in range(2):
        expected = _as_written(videos[i])
        assert torch.equal(read_video(tmp_path / "each" / f"video_{i:05d}.png"), expected)
        assert torch.equal(read_video(tmp_path / "grid.png")[:, :, 2:2 + H, 2 + i * (W + 2):2 + i * (W + 2) + W],
                           expected)
    with Image.open(tmp_path / "grid.png") as animation:
        animation.load()
        assert animation.info["duration"] == 1000 / 16


def test_wan_i2v_refusals_are_one_line(tiny_wan_i2v, tmp_path, capsys):
    """Before any weight is read, nothing written: a frame count not 4 k + 1, a size not of 16, a negative prompt
    without CFG, --lora, no --image; diffkit sample / edit on the folder; folders diffkit does not drive."""
    _, path, model = tiny_wan_i2v
    _image().save(tmp_path / "a.png")
    never = ["--out", str(tmp_path / "never" / "v.png")]
    for argv, expected in [
            (_video_argv(path, tmp_path, "--prompt", "x", "--frames", "8", *never), "num_frames=8 is not allowed"),
            (_video_argv(path, tmp_path, "--prompt", "x", "--height", "40", *never),
             "--height 40 is not allowed for a Wan image-to-video folder; give a multiple of 16 "
             "(WanImageToVideoPipeline's"),
            (_video_argv(path, tmp_path, "--prompt", "x", "--guidance-scale", "0", "--negative-prompt", "y", *never),
             "a negative prompt with guidance_scale=0 (seed convention)"),
            (_video_argv(path, tmp_path, "--prompt", "x", "--lora", str(tmp_path / "a.png"), *never),
             "is not a safetensors LoRA file"),
            (_video_argv(path, tmp_path, "--prompt", "x", "--lora", str(tmp_path / "a.png"), "--lora-any-base",
                         *never), "--lora-any-base does not apply to a Wan image-to-video folder"),
            (_video_argv(path, tmp_path, "--prompt", "x", "--guidance-scale", "3", "--guidance-scale-2", "2", *never),
             "--guidance-scale-2 applies to a Wan 2.2 A14B folder"),
            (_video_argv(path, tmp_path, "--prompt", "x", "--last-image", str(tmp_path / "a.png"), *never),
             "--last-image does not apply to"),
            (["video", "--checkpoint", str(path), "--prompt", "x", *never], "(image-to-video): give --image PNG"),
            (["sample", "--checkpoint", str(path), "--prompt", "x", "--out", str(tmp_path / "never" / "x.png")],
             "WanImageToVideoPipeline folder, which diffkit sample does not take (it makes videos); generate videos "
             "with diffkit video"),
            (["edit", "--checkpoint", str(path), "--images", str(tmp_path / "a.png"), "--prompt", "x", "--out",
              str(tmp_path / "never")], "which diffkit edit does not take")]:
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "never").exists()
    for part, change, expected in [
            ("model_index.json", {"transformer": ["diffusers", "ChronoEditTransformer3DModel"]},
             "transformer is a 'ChronoEditTransformer3DModel'; allowed: WanTransformer3DModel"),
            ("model_index.json", {"expand_timesteps": True}, "transformer has in_channels=12; allowed: 4 (the VAE's"),
            ("model_index.json", {"image_encoder": [None, None]}, "image_encoder"),
            ("transformer/config.json", {"image_dim": None}, "image_dim=None; allowed: a positive"),
            ("transformer/config.json", {"in_channels": 2 * Z}, "in_channels=8; allowed: 12"),
            ("vae/config.json", {"patch_size": 2}, "patch_size=2; allowed: None (a Wan 2.1 VAE")]:
        bad = changed_folder(path, tmp_path, part, change, parts=PARTS)
        with pytest.raises(DiffkitError, match=re.escape(expected)):
            check_wan_i2v_folder(bad)
    with pytest.raises(DiffkitError, match=re.escape("2 images for 3 videos")):
        image_to_video(model, [_image(), _image()], ["a", "b", "c"], num_frames=FRAMES, height=H, width=W)


@pytest.fixture(scope="session")
def tiny_wan22_i2v(tiny_wan_i2v, tmp_path_factory):
    """A Wan 2.2 A14B-shaped folder of the same UMT5, VAE and scheduler: two experts without image states
    (``transformer`` at timesteps >= 0.875 T, ``transformer_2`` below), no image encoder."""
    pipe, _, _ = tiny_wan_i2v
    experts = [i2v_transformer(5 + i, image_dim=None, added_kv_proj_dim=None) for i in range(2)]
    path = tmp_path_factory.mktemp("wan22_i2v") / "wan22"
    pipe = diffusers.WanImageToVideoPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                                             scheduler=pipe.scheduler, transformer=experts[0],
                                             transformer_2=experts[1], boundary_ratio=0.875)
    pipe.save_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe, path, load_wan_i2v(path, progress=False)  # (the reference in memory: the parts are Wan 2.1's)


def test_wan22_two_experts_match_the_pipeline(tiny_wan22_i2v, tmp_path):
    """Wan 2.2 A14B's loop: 3 UniPC steps (timesteps 999, 857, 600 at shift 3: the first on the high-noise expert, the
    others on transformer_2) with guidance_scale 4 and guidance_scale_2 2, no CLIP states: the same final latents;
    ``diffkit video --guidance-scale-2`` writes the library's video."""
    pipe, path, model = tiny_wan22_i2v
    assert model.image_encoder is None and model.boundary_ratio == 0.875
    ours, _ = _same_latents(pipe, model, 3, 3, "two experts", height=H, width=W, num_frames=FRAMES,
                            guidance_scale=4.0, guidance_scale_2=2.0)
    parts = ("model_index.json", "scheduler", "transformer", "transformer_2", "text_encoder", "tokenizer", "vae")
    for part, change, expected in [
            ("model_index.json", {"boundary_ratio": 1.5}, "boundary_ratio=1.5 with transformer_2="),
            ("transformer_2/config.json", {"in_channels": 2 * Z}, "transformer_2 has in_channels=8; allowed: 12"),
            ("transformer/config.json", {"image_dim": 16}, "transformer has image_dim=16; allowed: None")]:
        with pytest.raises(DiffkitError, match=re.escape(expected)):
            check_wan_i2v_folder(changed_folder(path, tmp_path, part, change, parts=parts))
    _image().save(tmp_path / "a.png")
    assert _written_video(path, tmp_path, model, ours, "--prompt", PROMPTS[0], "--guidance-convention", "diffusers",
                          "--steps", "3", "--seed", "3", "--guidance-scale", "4", "--guidance-scale-2", "2")


def test_wan_i2v_last_image_matches_the_pipeline(tiny_wan_i2v, tiny_wan22_i2v, tmp_path):
    """``last_image`` (first-last-frame to video), 2 UniPC steps, CFG 4, 5 frames: on the Wan 2.2 folder (the condition
    video [image, 3 black frames, last] and its mask alone), and two prompts on a first-last-frame Wan 2.1 transformer
    (``pos_embed_seq_len``, its zero-initialised position embedding randomised) that reads CLIP's states of [image,
    last] a video: the same final latents; ``diffkit video --last-image`` writes the library's video."""
    first, last = _image(), _image(seed=4, size=(W, H))
    kw = {"height": H, "width": W, "num_frames": FRAMES, "guidance_scale": 4.0}
    pipe, path, model = tiny_wan22_i2v
    with torch.no_grad():
        theirs = pipe(first, PROMPTS[0], last_image=last, num_inference_steps=2, output_type="latent",
                      generator=[torch.Generator().manual_seed(2)], **kw).frames
    ours = image_to_video(model, first, PROMPTS[0], last_images=last, steps=2, seed=2, return_latents=True, **kw)
    error = relative_error(ours, theirs)
    print(f"last image, Wan 2.2: {error:.2e}")
    assert error < 1e-5
    first.save(tmp_path / "a.png")
    last.save(tmp_path / "last.png")
    assert _written_video(path, tmp_path, model, ours, "--prompt", PROMPTS[0], "--guidance-convention", "diffusers",
                          "--steps", "2", "--seed", "2", "--guidance-scale", "4", "--last-image",
                          str(tmp_path / "last.png"))
    pipe, _, model = tiny_wan_i2v
    flf = i2v_transformer(7, pos_embed_seq_len=2 * 17)  # 17 CLIP tokens an image
    flf_pipe = diffusers.WanImageToVideoPipeline(**{**pipe.components, "transformer": flf})
    flf_pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = flf_pipe(first, PROMPTS, last_image=last, num_inference_steps=2, output_type="latent",
                          generator=[torch.Generator().manual_seed(2 + i) for i in range(2)], **kw).frames
    ours = image_to_video(dataclasses.replace(model, transformer=flf), first, PROMPTS, last_images=last, steps=2,
                          seed=2, return_latents=True, **kw)
    error = relative_error(ours, theirs)
    print(f"last image, first-last-frame Wan 2.1: {error:.2e}")
    assert error < 1e-5
    for folder, message in [(model, "its transformer takes one image's CLIP states"),
                            (dataclasses.replace(model, transformer=flf), "give last_images")]:
        with pytest.raises(DiffkitError, match=re.escape(message)):
            image_to_video(folder, first, "x", last_images=None if folder is not model else last, **kw)


@pytest.mark.filterwarnings("ignore:While injecting the PEFT adapters")  # the loader's zero I2V expansion
def test_wan_i2v_lora_is_load_lora_weights_and_fuse_lora(tiny_wan_i2v, tmp_path):
    """A diffusers-format LoRA file (save_lora_weights; ChronoEdit's test's modules, rank / alpha patterns) at 0.6,
    read by the shared Wan reader: the final latents of the pipeline after load_lora_weights +
    fuse_lora(lora_scale=0.6), 2 UniPC steps, CFG 5; ``diffkit video --lora FILE:0.6`` writes the library's video."""
    from test_chronoedit import CHRONOEDIT_LORA
    from test_sd_lora import fused_transformer_lora
    pipe, path, model = tiny_wan_i2v
    lora, fused = fused_transformer_lora(diffusers.WanImageToVideoPipeline, path, tmp_path, CHRONOEDIT_LORA,
                                         scale=0.6, loaded=pipe)
    ours = load_wan_i2v(path, progress=False, lora=[(lora, 0.6)])
    kw = {"height": H, "width": W, "num_frames": FRAMES}
    mine, theirs = _same_latents(fused, ours, 2, 5, "LoRA latents", **kw)
    assert relative_error(image_to_video(model, _image(), PROMPTS[0], steps=2, seed=5, return_latents=True, **kw),
                          theirs) > 1e-3  # the LoRA matters
    _image().save(tmp_path / "a.png")
    assert _written_video(path, tmp_path, ours, mine, "--prompt", PROMPTS[0], "--lora", f"{lora}:0.6")


@pytest.fixture(scope="session")
def tiny_ti2v_i2v(tiny_wan_i2v, tmp_path_factory):
    """A Wan 2.2 TI2V-5B-shaped WanImageToVideoPipeline folder of the same UMT5 and scheduler: expand_timesteps, a
    text-to-video transformer (z_dim channels in, no CLIP image states, its norms randomised), the Wan 2.2 VAE of
    tests/test_wan.py (factor 16), no image encoder; the pipeline in memory (the folder's parts)."""
    pipe, _, _ = tiny_wan_i2v
    transformer = i2v_transformer(7, in_channels=Z, image_dim=None, added_kv_proj_dim=None)
    path = tmp_path_factory.mktemp("ti2v_i2v") / "ti2v"
    pipe = diffusers.WanImageToVideoPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder,
                                             vae=tiny_wan22_vae(), scheduler=pipe.scheduler, transformer=transformer,
                                             expand_timesteps=True)
    pipe.save_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe, path, load_wan_i2v(path, progress=False)


def test_wan22_ti2v_image_to_video_matches_the_pipeline(tiny_ti2v_i2v, tmp_path, capsys):
    """Wan 2.2 TI2V-5B's image-to-video (expand_timesteps: the image's latents the kept first latent frame, its tokens
    at timestep 0; the Wan 2.2 VAE of factor 16; no CLIP): two prompts on one 72 x 40 image resized to 64 x 32, CFG 3
    against a negative prompt, 2 UniPC steps, noise from seed 3 + i: the pipeline's final latents (output_type=
    "latent", frame 0 the image's) and frames; ``diffkit video --image`` writes the library's video; a last image, a
    TI2V folder with two experts and a WanPipeline folder without expand_timesteps refused."""
    pipe, path, model = tiny_ti2v_i2v
    assert model.image_encoder is None and model.expand_timesteps
    image, kw = _image(size=(72, 40)), {"negative_prompt": NEGATIVE, "guidance_scale": 3.0, "height": 32, "width": 64,
                                        "num_frames": FRAMES}

    def theirs(output_type):
        with torch.no_grad():
            return pipe(image, PROMPTS, num_inference_steps=2, output_type=output_type,
                        generator=[torch.Generator().manual_seed(3 + i) for i in range(2)], **kw).frames
    ours = image_to_video(model, image, PROMPTS, steps=2, seed=3, return_latents=True, **kw)
    errors = relative_error(ours, theirs("latent")), relative_error(model.output_videos(ours, "0,1", False),
                                                                    theirs("pt"))
    with capsys.disabled():
        print("latents: %.2e, frames: %.2e" % errors)  # (measured 4.4e-7, 5.1e-7)
    assert max(errors) < 1e-5
    image.save(tmp_path / "a.png")
    argv = ["video", "--checkpoint", str(path), "--image", str(tmp_path / "a.png"), "--prompt", PROMPTS[0], "--steps",
            "1", "--frames", str(FRAMES), "--height", "32", "--width", "64", "--seed", "5", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "v.png")]) == 0
    video = image_to_video(model, image, PROMPTS[0], steps=1, seed=5, num_frames=FRAMES, height=32, width=64)[0]
    assert torch.equal(read_video(tmp_path / "v.png")[:, :, 2:34, 2:66], _as_written(video))
    capsys.readouterr()
    assert main([*argv, "--last-image", str(tmp_path / "a.png"), "--out", str(tmp_path / "never" / "v.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a Wan 2.2 TI2V-5B folder (expand_timesteps) keeps the first frame alone" in err[0], err
    with pytest.raises(DiffkitError, match="last_images is not allowed for a Wan 2.2 TI2V-5B folder"):
        image_to_video(model, image, PROMPTS[0], last_images=image, num_frames=FRAMES, height=32, width=64)
    parts = ("model_index.json", "scheduler", "transformer", "text_encoder", "tokenizer", "vae")
    bad = changed_folder(path, tmp_path, "model_index.json", {"boundary_ratio": 0.5, "transformer_2": [
        "diffusers", "WanTransformer3DModel"]}, parts=parts)
    (bad / "transformer_2").symlink_to(path / "transformer")
    with pytest.raises(DiffkitError, match=re.escape("expand_timesteps=True with boundary_ratio=0.5; allowed: true")):
        check_wan_i2v_folder(bad)
    with pytest.raises(DiffkitError, match="is a WanPipeline folder other than Wan 2.2 TI2V-5B's"):  # Wan 2.1's
        check_wan_i2v_folder(changed_folder(path, tmp_path, "model_index.json", {"_class_name": "WanPipeline",
                                                                                 "expand_timesteps": False}, parts))
