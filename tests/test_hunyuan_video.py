"""HunyuanVideo folders (diffkit.interop.hunyuan_video, diffkit video): text_to_video against diffusers' own
HunyuanVideoPipeline on a tiny random folder (a 2-layer LlamaModel of width 16 on the BPE tokenizer of
tests/_sana_helpers.py, a 2-layer CLIPTextModel of width 8 on the byte CLIP tokenizer of
tests/test_interop_diffusers.py, a HunyuanVideoTransformer3DModel of one dual- and one single-stream block with guidance
embeds and every zero-initialised weight randomised, a 4-level AutoencoderKLHunyuanVideo of width 8 (8 x spatial,
4 x temporal), FlowMatchEuler with shift 7; nothing downloaded): 5 frames (2 latent frames) of 32 x 32, 2 steps."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.hunyuan_video import check_hunyuan_video_folder, load_hunyuan_video, text_to_video  # noqa: E402

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from _hunyuan_video_helpers import tiny_hunyuan_text_encoders  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

H = W = 32  # latents 4 x 4: 2 x 2 patches per frame
FRAMES, STEPS, Z = 5, 2, 4  # 2 latent frames; the VAE's latent channels
PROMPT, NEGATIVE = "a photo of a cat", "blurry dog"
SIZE = dict(num_frames=FRAMES, height=H, width=W, num_inference_steps=STEPS)


@pytest.fixture(scope="module")
def tiny_hunyuan_video(tmp_path_factory):
    """(HunyuanVideoPipeline.from_pretrained of the saved folder, the folder, load_hunyuan_video of it)."""
    root = tmp_path_factory.mktemp("hunyuan_video")
    llama_tokenizer, llama, clip_tokenizer, clip = tiny_hunyuan_text_encoders(root)
    transformer = diffusers.HunyuanVideoTransformer3DModel(
        in_channels=Z, out_channels=Z, num_attention_heads=2, attention_head_dim=8, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True, text_embed_dim=16,
        pooled_projection_dim=8, rope_axes_dim=(2, 2, 4))
    with torch.no_grad():  # zero-initialised layers (modulations, gates, ...) randomised: a test must be able to fail
        for p in transformer.parameters():
            if not bool(p.any()):
                p.normal_(0, 0.2)
    vae = diffusers.AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=Z, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4,
        mid_block_add_attention=True)
    pipe = diffusers.HunyuanVideoPipeline(
        text_encoder=llama, tokenizer=llama_tokenizer, transformer=transformer, vae=vae,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=clip,
        tokenizer_2=clip_tokenizer)
    pipe.save_pretrained(root / "hunyuan_video")
    return reloaded(root / "hunyuan_video", diffusers.HunyuanVideoPipeline, load_hunyuan_video)


def _latents(batch=1, seed=7):
    return torch.randn(batch, Z, 2, H // 8, W // 8, generator=torch.Generator().manual_seed(seed))


def test_hunyuan_video_matches_the_pipeline(tiny_hunyuan_video):
    """Embedded guidance 4.5, 2 flow Euler steps: the final latents (output_type="latent") and the decoded frames
    (output_type="pt", (B, T, C, H, W) in [0, 1]) as HunyuanVideoPipeline's from the same noise."""
    pipe, _, model = tiny_hunyuan_video
    latents = _latents()
    ref = pipe(PROMPT, latents=latents.clone(), guidance_scale=4.5, output_type="latent", **SIZE).frames
    ours = text_to_video(model, PROMPT, guidance_scale=4.5, latents=latents.clone(), steps=STEPS, num_frames=FRAMES,
                         height=H, width=W, return_latents=True)
    assert ours.shape == ref.shape == (1, Z, 2, H // 8, W // 8)
    assert relative_error(ours, ref) < 1e-5
    frames = pipe(PROMPT, latents=latents.clone(), guidance_scale=4.5, output_type="pt", **SIZE).frames
    videos = text_to_video(model, PROMPT, guidance_scale=4.5, latents=latents.clone(), steps=STEPS,
                           num_frames=FRAMES, height=H, width=W, output_range="0,1")
    assert videos.shape == frames.shape == (1, FRAMES, 3, H, W)
    assert relative_error(videos, frames) < 1e-5


def test_hunyuan_video_true_cfg_and_seeds(tiny_hunyuan_video):
    """Two prompts, true CFG s = 3 against a negative prompt (its own Llama and CLIP encodings), embedded guidance 5,
    the noise of video i from generator seed + i: the pipeline's final latents; a lone negative prompt or true CFG
    scale is one line (the pipeline would drop it)."""
    pipe, _, model = tiny_hunyuan_video
    prompts = [PROMPT, "a dog"]
    generators = [torch.Generator().manual_seed(5 + i) for i in range(2)]
    ref = pipe(prompts, negative_prompt=NEGATIVE, true_cfg_scale=3.0, guidance_scale=5.0, generator=generators,
               output_type="latent", **SIZE).frames
    ours = text_to_video(model, prompts, negative_prompt=NEGATIVE, true_cfg_scale=3.0, guidance_scale=5.0, seed=5,
                         steps=STEPS, num_frames=FRAMES, height=H, width=W, return_latents=True)
    assert relative_error(ours, ref) < 1e-5
    other = text_to_video(model, PROMPT, sampler="unipc", steps=STEPS, num_frames=FRAMES, height=H, width=W,
                          return_latents=True)  # a sampler alone: its own grid (it cannot start at sigma 1)
    assert other.shape == (1, Z, 2, H // 8, W // 8) and bool(other.isfinite().all())
    for options, expected in [({"negative_prompt": NEGATIVE}, "true CFG takes both"),
                              ({"true_cfg_scale": 2.0}, "true CFG takes both"),
                              ({"num_frames": 6}, "num_frames=6 is not allowed; give 4 k "),
                              ({"height": 40}, "height x width 40x32 is not allowed"),
                              ({"guidance_scale": float("nan")}, "give a finite number")]:
        with pytest.raises(DiffkitError, match=expected):
            text_to_video(model, PROMPT, **{**dict(steps=STEPS, num_frames=FRAMES, height=H, width=W), **options})


def test_hunyuan_video_command_writes_the_library_videos(tiny_hunyuan_video, tmp_path, capsys):
    """``diffkit video`` (--guidance-scale: the embedded scale, whatever --guidance-convention) writes the library's
    videos: the APNG grid and the --individual file read back equal the library's frames rounded to uint8."""
    from diffkit.images import to_uint8
    from diffkit.video import grid_frames, read_video
    _, path, model = tiny_hunyuan_video
    argv = ["video", "--checkpoint", str(path), "--prompt", PROMPT, "--frames", str(FRAMES), "--height", str(H),
            "--width", str(W), "--steps", str(STEPS), "--guidance-scale", "4.5", "--seed", "3", "--no-progress",
            "--out", str(tmp_path / "x.png"), "--individual", str(tmp_path / "each")]
    assert main(argv) == 0
    assert "15 fps" in capsys.readouterr().out
    videos = text_to_video(model, PROMPT, guidance_scale=4.5, seed=3, steps=STEPS, num_frames=FRAMES, height=H,
                           width=W)
    each = read_video(tmp_path / "each" / "video_00000.png")
    assert (to_uint8(each) == to_uint8(videos[0])).all()
    grid = read_video(tmp_path / "x.png")
    assert (to_uint8(grid) == np.stack(grid_frames(videos, 4))).all()


def test_hunyuan_video_refusals_are_one_line(tiny_hunyuan_video, tmp_path, capsys):
    """Before any weight is read, nothing written: diffkit sample / edit on the folder (naming diffkit video), frames
    not 4 k + 1, a size not of 16, a negative prompt without --true-cfg-scale, --image; folders of another
    transformer class, an image-conditioned transformer, a dynamic-shifting scheduler."""
    _, path, _ = tiny_hunyuan_video
    video = ["video", "--checkpoint", str(path), "--prompt", PROMPT, "--no-progress"]
    (tmp_path / "a.png").write_bytes(b"")
    for argv, expected in [
            (["sample", "--checkpoint", str(path), "--prompt", PROMPT, "--no-progress"],
             "HunyuanVideoPipeline folder, which diffkit sample does not take (it makes videos); generate videos with "
             "diffkit video"),
            (["edit", "--checkpoint", str(path), "--images", str(tmp_path / "a.png"), "--prompt", PROMPT],
             "HunyuanVideoPipeline folder, which diffkit edit does not take"),
            (video + ["--frames", "6"], "num_frames=6 is not allowed; give 4 k + 1"),
            (video + ["--height", "40"], "height x width 40x1280 is not allowed"),
            (video + ["--negative-prompt", NEGATIVE], "true CFG takes both"),
            (video + ["--true-cfg-scale", "2"], "true CFG takes both"),
            (video + ["--image", str(tmp_path / "a.png")], "--image does not apply to a HunyuanVideo folder")]:
        capsys.readouterr()
        assert main(argv + ["--out", str(tmp_path / "never" / "x.png")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "never").exists()
    parts = ("model_index.json", "scheduler", "transformer", "text_encoder", "tokenizer", "text_encoder_2",
             "tokenizer_2", "vae")
    for part, change, expected in [
            ("model_index.json", {"transformer": ["diffusers", "WanTransformer3DModel"]},
             "transformer is a 'WanTransformer3DModel'; allowed: HunyuanVideoTransformer3DModel"),
            ("transformer/config.json", {"image_condition_type": "latent_concat"}, "image_condition_type='latent_"),
            ("transformer/config.json", {"in_channels": 2 * Z}, "in_channels, out_channels = 8, 4"),
            ("scheduler/scheduler_config.json", {"use_dynamic_shifting": True}, "use_dynamic_shifting")]:
        bad = changed_folder(path, tmp_path, part, change, parts=parts)
        with pytest.raises(DiffkitError, match=expected) as err:
            check_hunyuan_video_folder(bad)
        assert "\n" not in str(err.value)


HUNYUAN_VIDEO_LORA = dict(r=4, lora_alpha=8.0, target_modules=["to_q", "to_k", "to_v", "add_q_proj", "to_out.0",
                                                                "to_add_out", "proj_mlp", "proj_out", "linear_1"],
                          rank_pattern={"to_k": 2}, alpha_pattern={"to_v": 3.0})


def test_hunyuan_video_lora_is_load_lora_weights_and_fuse_lora(tiny_hunyuan_video, tmp_path, capsys):
    """A diffusers-format file (HunyuanVideoPipeline.save_lora_weights: attention, refiner, single-block and time
    embedder modules, rank / alpha patterns) at 0.6: load_lora_weights + fuse_lora's weights and final latents;
    ``diffkit video --lora`` hands the file to the loader (a key it does not load: one line, nothing written)."""
    from safetensors.torch import save_file
    from test_sd_lora import fused_transformer_lora
    base, path, _ = tiny_hunyuan_video
    lora, pipe = fused_transformer_lora(diffusers.HunyuanVideoPipeline, path, tmp_path, HUNYUAN_VIDEO_LORA, scale=0.6,
                                        loaded=base)
    ours = load_hunyuan_video(path, progress=False, lora=[(lora, 0.6)])
    theirs, before = pipe.transformer.state_dict(), base.transformer.state_dict()
    mine = ours.transformer.state_dict()
    assert max(float((v - before[k]).abs().max()) for k, v in mine.items()) > 1e-2
    assert max(float((v - theirs[k]).abs().max()) for k, v in mine.items()) < 1e-6
    latents = _latents()
    ref = pipe(PROMPT, latents=latents.clone(), output_type="latent", **SIZE).frames
    z = text_to_video(ours, PROMPT, latents=latents, steps=STEPS, num_frames=FRAMES, height=H, width=W,
                      return_latents=True)
    assert relative_error(z, ref) < 1e-5
    bad = "diffusion_model.double_blocks.0.img_attn_qkv.lora_A.weight"
    save_file({bad: torch.zeros(2, 16)}, tmp_path / "bad.safetensors")
    capsys.readouterr()
    assert main(["video", "--checkpoint", str(path), "--prompt", PROMPT, "--lora", str(tmp_path / "bad.safetensors"),
                 "--out", str(tmp_path / "never" / "x.png"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"key {bad!r} is not supported on a HunyuanVideo folder" in err[0], err
    assert not (tmp_path / "never").exists()
