"""Kandinsky 5 text-to-video folders (diffkit.interop.kandinsky5_video, diffkit video): text_to_video against
diffusers' own Kandinsky5T2VPipeline on a tiny random folder (tests/_kandinsky5_helpers.py with ``video``: the
image folders' Qwen2.5-VL, CLIP and one-block Kandinsky5Transformer3DModel, with ``visual_cond`` and every
zero-initialised weight randomised, on a 4-level AutoencoderKLHunyuanVideo of width 8; nothing downloaded): 5 frames
(2 latent frames) of 32 x 32, 2 steps."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.kandinsky5_video import check_kandinsky5_video_folder, is_kandinsky5_video_folder, \
    load_kandinsky5_video, rope_scale, text_to_video  # noqa: E402

from _kandinsky5_helpers import save_kandinsky5, tiny_kandinsky5_pipeline  # noqa: E402
from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

H = W = 32  # latents 4 x 4: 2 x 2 patches per frame
FRAMES, STEPS, Z = 5, 2, 4  # 2 latent frames; the VAE's latent channels
PROMPTS = ["a photo of a cat", "hot  dog &amp; more"]
SIZE = dict(num_frames=FRAMES, height=H, width=W)


@pytest.fixture(scope="session")
def kandinsky5_video(tmp_path_factory):
    """(Kandinsky5T2VPipeline.from_pretrained of the saved folder, the folder, load_kandinsky5_video of it): both
    read the weights back from disk (the in-memory pipeline's transformer rounds differently, 1.7e-5 on a 512-token
    prompt); the processor given, as transformers cannot read it back without torchvision."""
    root = tmp_path_factory.mktemp("kandinsky5_video")
    pipe = tiny_kandinsky5_pipeline(root, shift=5.0, video=True)
    save_kandinsky5(pipe, root / "k5v")
    return reloaded(root / "k5v", diffusers.Kandinsky5T2VPipeline, load_kandinsky5_video, tokenizer=pipe.tokenizer)


def _noise(batch=1, seed=7):
    """The pipeline's channel-last latents (B, F, h, w, 2 C + 1: with the zero image latents and mask its
    prepare_latents appends for a visual_cond transformer, but not to given latents) and diffkit's (B, C, F, h, w)."""
    z = torch.randn(batch, 2, H // 8, W // 8, Z, generator=torch.Generator().manual_seed(seed))
    return torch.cat([z, torch.zeros_like(z), torch.zeros_like(z[..., :1])], -1), z.permute(0, 4, 1, 2, 3).clone()


def test_kandinsky5_video_matches_the_pipeline(kandinsky5_video):
    """Prompts as its encode_prompt (the video template, 128 tokens dropped); CFG s = 4 against the pipeline's
    default negative prompt, 2 flow Euler steps: the final latents (output_type="latent") and the decoded frames
    (output_type="pt", (B, T, C, H, W) in [0, 1]) from the same noise; s = 1 (one call a step) on two prompts."""
    pipe, path, model = kandinsky5_video
    assert is_kandinsky5_video_folder(path) and pipe.prompt_template == model.prompt_template
    assert pipe.prompt_template_encode_start_idx == model.template_drop
    for size in [(32, 32), (512, 768), (480, 854), (480, 856), (720, 1280)]:
        assert list(pipe._get_scale_factor(*size)) == rope_scale(*size)
    with torch.no_grad():
        qwen, clip, cu = pipe.encode_prompt(PROMPTS, device="cpu", dtype=torch.float32, max_sequence_length=20)
    context, pooled = model.encode_prompts(PROMPTS, 20)
    assert torch.equal(qwen, context) and torch.equal(clip, pooled) and int(cu.diff().max()) == context.shape[1]
    theirs_z, ours_z = _noise()
    with torch.no_grad():
        ref = pipe(PROMPTS[0], guidance_scale=4.0, latents=theirs_z.clone(), num_inference_steps=STEPS,
                   output_type="latent", **SIZE).frames.permute(0, 4, 1, 2, 3)
        frames = pipe(PROMPTS[0], guidance_scale=4.0, latents=theirs_z.clone(), num_inference_steps=STEPS,
                      output_type="pt", **SIZE).frames
    ours = text_to_video(model, PROMPTS[0], guidance_scale=4.0, latents=ours_z, steps=STEPS, return_latents=True,
                         **SIZE)
    assert ours.shape == ref.shape == (1, Z, 2, H // 8, W // 8) and ref.abs().max() > 0.5
    assert relative_error(ours, ref) < 1e-5
    videos = text_to_video(model, PROMPTS[0], guidance_scale=4.0, latents=ours_z, steps=STEPS, output_range="0,1",
                           **SIZE)
    assert videos.shape == frames.shape == (1, FRAMES, 3, H, W)
    assert relative_error(videos, frames) < 1e-5
    theirs_z, ours_z = _noise(2, seed=3)
    with torch.no_grad():
        ref = pipe(PROMPTS, guidance_scale=1.0, latents=theirs_z, num_inference_steps=STEPS, output_type="latent",
                   **SIZE).frames.permute(0, 4, 1, 2, 3)
    ours = text_to_video(model, PROMPTS, guidance_scale=1.0, latents=ours_z, steps=STEPS, return_latents=True, **SIZE)
    assert relative_error(ours, ref) < 1e-5
    for options, expected in [({"num_frames": 6}, "num_frames=6 is not allowed; give 4 k "),
                              ({"height": 40}, r"height x width 40x32 is not allowed.*Kandinsky5T2VPipeline"),
                              ({"negative_prompt": "ugly", "guidance_scale": 1.0}, "a negative prompt with"),
                              ({"latents": ours_z}, r"latents of shape \(2, 4, 2, 4, 4\) are not allowed")]:
        with pytest.raises(DiffkitError, match=expected):
            text_to_video(model, PROMPTS[0], **{**dict(steps=STEPS, **SIZE), **options})


def test_kandinsky5_video_command_writes_the_library_videos(kandinsky5_video, tmp_path, capsys):
    """``diffkit video`` writes the library's videos (video i from --seed + i, CFG against --negative-prompt): the
    APNG grid and the --individual files read back equal the library's frames rounded to uint8, at 24 fps."""
    from diffkit.images import to_uint8
    from diffkit.video import grid_frames, read_video
    _, path, model = kandinsky5_video
    argv = ["video", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--frames",
            str(FRAMES), "--height", str(H), "--width", str(W), "--steps", "1", "--guidance-scale", "3",
            "--guidance-convention", "diffusers", "--negative-prompt", "ugly", "--seed", "3", "--batch-size", "2",
            "--no-progress", "--out", str(tmp_path / "x.png"), "--individual", str(tmp_path / "each")]
    assert main(argv) == 0
    assert "24 fps" in capsys.readouterr().out
    videos = text_to_video(model, PROMPTS, guidance_scale=3.0, negative_prompt="ugly", seed=3, steps=1, **SIZE)
    for i in range(2):
        each = read_video(tmp_path / "each" / f"video_{i:05d}.png")
        assert (to_uint8(each) == to_uint8(videos[i])).all()
    grid = read_video(tmp_path / "x.png")
    assert (to_uint8(grid) == np.stack(grid_frames(videos, 4))).all()


def test_kandinsky5_video_refusals_are_one_line(kandinsky5_video, tmp_path, capsys):
    """Before any weight is read, nothing written: diffkit sample / edit on the folder (naming diffkit video), frames
    not 4 k + 1, a size not of 16, a negative prompt without guidance, --image; folders with sparse attention,
    patches other than 1 x 2 x 2, channels not the VAE's, a dynamic-shifting scheduler."""
    from diffkit.interop.kandinsky5 import text_to_image
    _, path, model = kandinsky5_video
    with pytest.raises(DiffkitError, match="folder: make videos with diffkit.interop.kandinsky5_video.text_to_video"):
        text_to_image(model, "cat")
    video = ["video", "--checkpoint", str(path), "--prompt", "cat", "--no-progress"]
    (tmp_path / "a.png").write_bytes(b"")
    for argv, expected in [
            (["sample", "--checkpoint", str(path), "--prompt", "cat", "--no-progress"],
             "Kandinsky5T2VPipeline folder, which diffkit sample does not take (it makes videos); generate videos "
             "with diffkit video"),
            (["edit", "--checkpoint", str(path), "--images", str(tmp_path / "a.png"), "--prompt", "cat"],
             "Kandinsky5T2VPipeline folder, which diffkit edit does not take"),
            (video + ["--frames", "6"], "num_frames=6 is not allowed; give 4 k + 1"),
            (video + ["--height", "40"], "height x width 40x768 is not allowed"),
            (video + ["--negative-prompt", "ugly", "--guidance-scale", "0"], "negative prompt with guidance_scale=0"),
            (video + ["--image", str(tmp_path / "a.png")], "--image does not apply to a Kandinsky 5 video folder")]:
        capsys.readouterr()
        assert main(argv + ["--out", str(tmp_path / "never" / "x.png")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "never").exists()
    parts = ("model_index.json", "scheduler", "transformer", "text_encoder", "tokenizer", "text_encoder_2",
             "tokenizer_2", "vae")
    for part, change, expected in [
            ("model_index.json", {"vae": ["diffusers", "AutoencoderKL"]}, "vae is a 'AutoencoderKL'"),
            ("transformer/config.json", {"attention_type": "nabla"}, "attention_type='nabla' .sparse attention"),
            ("transformer/config.json", {"patch_size": [1, 1, 1]}, r"patch_size=\[1, 1, 1\]; allowed: \[1, 2, 2\]"),
            ("transformer/config.json", {"in_visual_dim": 8}, "in_visual_dim, out_visual_dim, visual_cond = 8, 4"),
            ("scheduler/scheduler_config.json", {"use_dynamic_shifting": True}, "use_dynamic_shifting")]:
        bad = changed_folder(path, tmp_path, part, change, parts=parts)
        with pytest.raises(DiffkitError, match=expected) as err:
            check_kandinsky5_video_folder(bad)
        assert "\n" not in str(err.value)


def test_kandinsky5_video_lora_is_load_lora_weights_and_fuse_lora(kandinsky5_video, tmp_path, capsys):
    """A diffusers-format file (Kandinsky5T2VPipeline.save_lora_weights, the image folders' modules and rank / alpha
    patterns) at 0.3: load_lora_weights + fuse_lora's weights and final latents (s = 1); ``diffkit video --lora``
    hands the file to the loader (a kohya key: one line, nothing written)."""
    from safetensors.torch import save_file
    from test_kandinsky5_edit import K5_LORA
    from test_sd_lora import fused_transformer_lora
    base, path, model = kandinsky5_video
    lora, fused = fused_transformer_lora(diffusers.Kandinsky5T2VPipeline, path, tmp_path, K5_LORA, scale=0.3,
                                         loaded=base)
    ours = load_kandinsky5_video(path, progress=False, lora=[(lora, 0.3)])
    theirs, before = fused.transformer.state_dict(), model.transformer.state_dict()
    assert max(float((v - before[k]).abs().max()) for k, v in theirs.items()) > 1e-2
    assert max(float((v - theirs[k]).abs().max()) for k, v in ours.transformer.state_dict().items()) < 1e-6
    theirs_z, ours_z = _noise()
    with torch.no_grad():
        ref = fused(PROMPTS[0], guidance_scale=1.0, latents=theirs_z, num_inference_steps=STEPS, output_type="latent",
                    **SIZE).frames.permute(0, 4, 1, 2, 3)
    z = text_to_video(ours, PROMPTS[0], guidance_scale=1.0, latents=ours_z, steps=STEPS, return_latents=True, **SIZE)
    assert relative_error(z, ref) < 1e-5
    bad = "lora_unet_visual_transformer_blocks_0_feed_forward_in_layer.lora_down.weight"
    save_file({bad: torch.zeros(2, 16)}, tmp_path / "bad.safetensors")
    capsys.readouterr()
    assert main(["video", "--checkpoint", str(path), "--prompt", "cat", "--no-progress", "--lora",
                 str(tmp_path / "bad.safetensors"), "--out", str(tmp_path / "never" / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"key {bad!r} is not supported on a Kandinsky 5 folder (" in err[0], err
    assert not (tmp_path / "never").exists()
