"""CogVideoX folders (diffkit.interop.cogvideox, ``diffkit video``): text_to_video against diffusers' own
CogVideoXPipeline on a tiny random folder (T5 with the unigram tokenizer of tests/test_interop_sd3.py, a 1-layer
CogVideoXTransformer3DModel with 3D RoPE, a 3-level AutoencoderKLCogVideoX (spatial factor 4, temporal 4),
CogVideoX-5b's CogVideoXDDIMScheduler config; zero-initialised parameters randomised; nothing downloaded)."""
import re

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.cogvideox import (control_to_video, dynamic_scale, image_to_video,  # noqa: E402
                                       is_cogvideox_folder, load_cogvideox, text_to_video, video_to_video)

from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd3 import T5_WORDS, tiny_t5_tokenizer  # noqa: E402
from _pipeline_folders import changed_folder, reloaded  # noqa: E402

PROMPTS = ["a photo of a Cat", "hot dog"]
# CogVideoX-5b's scheduler/scheduler_config.json (v-prediction, no SNR shift, zero terminal SNR, trailing)
SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                 prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
                 snr_shift_scale=1.0, timestep_spacing="trailing")
SIZE = dict(num_frames=5, height=16, width=16)  # 2 latent frames of 4 x 4


def randomised(module):
    """``module`` with its all-zero parameters (the VAE's norm biases, ...) drawn N(0, 0.2^2)."""
    with torch.no_grad():
        for p in module.parameters():
            if p.abs().max() == 0:
                p.normal_(0, 0.2)
    return module


@pytest.fixture(scope="session")
def cogvideox_folder(tmp_path_factory):
    """(CogVideoXPipeline.from_pretrained of the saved folder, the folder, load_cogvideox of it)."""
    torch.manual_seed(0)
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=4 + len(T5_WORDS), d_model=32, d_kv=8, d_ff=40, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, dropout_rate=0.0)).eval()
    vae = diffusers.AutoencoderKLCogVideoX(
        down_block_types=("CogVideoXDownBlock3D",) * 3, up_block_types=("CogVideoXUpBlock3D",) * 3,
        block_out_channels=(8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=4,
        temporal_compression_ratio=4, sample_height=16, sample_width=16, scaling_factor=0.7)
    transformer = diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
        text_embed_dim=32, num_layers=1, sample_width=4, sample_height=4, sample_frames=5, patch_size=2,
        use_rotary_positional_embeddings=True)
    pipe = diffusers.CogVideoXPipeline(tokenizer=tiny_t5_tokenizer(), text_encoder=t5, vae=randomised(vae),
                                       transformer=randomised(transformer),
                                       scheduler=diffusers.CogVideoXDDIMScheduler(**SCHEDULER))
    path = tmp_path_factory.mktemp("cogvideox") / "cogvideox"
    pipe.save_pretrained(path)
    return reloaded(path, diffusers.CogVideoXPipeline, load_cogvideox)


def _theirs(pipe, steps, seed=3, output_type="latent", **call):
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(PROMPTS))]
    with torch.no_grad():
        return pipe(PROMPTS, num_inference_steps=steps, generator=generators, output_type=output_type, **SIZE,
                    **call).frames


@pytest.mark.parametrize("call", [
    dict(steps=4),  # s = 6 against the empty prompt
    dict(steps=2, guidance_scale=4.0, negative_prompt="ugly blurry", use_dynamic_cfg=True),
    dict(steps=2, guidance_scale=1.0)])  # unguided
def test_cogvideox_matches_the_pipeline(cogvideox_folder, call):
    """z_0 from the same seeds equals CogVideoXPipeline's (DDIM on the trailing grid at zero terminal SNR,
    v-prediction, 3D RoPE, the pipeline's (B, F, C, h, w) noise); with use_dynamic_cfg too."""
    pipe, path, model = cogvideox_folder
    steps, dynamic = call.pop("steps"), call.pop("use_dynamic_cfg", False)
    theirs = _theirs(pipe, steps, use_dynamic_cfg=dynamic, **call).permute(0, 2, 1, 3, 4)
    ours = text_to_video(model, PROMPTS, steps=steps, seed=3, dynamic_cfg=dynamic, return_latents=True, **SIZE,
                         **call)
    assert ours.shape == (2, 4, 2, 4, 4)
    assert relative_error(ours, theirs) < 1e-5  # measured: docs/interop/cogvideox.md
    if dynamic:  # the cosine schedule changed the result (closed form of one scale)
        plain = text_to_video(model, PROMPTS, steps=steps, seed=3, return_latents=True, **SIZE, **call)
        assert relative_error(plain, theirs) > 1e-3
        assert dynamic_scale(4.0, 2, 499) == pytest.approx(1 + 4.0 * (1 - __import__("math").cos(
            __import__("math").pi * (-248.5) ** 5)) / 2)


def test_cogvideox_frames_and_command(cogvideox_folder, tmp_path):
    """Decoded frames (output_type="pt", (B, T, C, H, W) in [0, 1]) equal the pipeline's; ``diffkit video`` writes
    the library's videos (rounded as to_uint8) byte for byte."""
    from diffkit.images import to_uint8
    pipe, path, model = cogvideox_folder
    assert is_cogvideox_folder(path)
    theirs = _theirs(pipe, 2, seed=5, output_type="pt", negative_prompt="ugly")
    ours = text_to_video(model, PROMPTS, steps=2, seed=5, negative_prompt="ugly", **SIZE)  # in [-1, 1]
    assert ours.shape == theirs.shape == (2, 8, 3, 16, 16)
    assert relative_error((ours / 2 + 0.5).clamp(0, 1), theirs) < 1e-5  # output_range="0,1"
    argv = ["video", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--steps", "2",
            "--seed", "5", "--frames", "5", "--height", "16", "--width", "16", "--negative-prompt", "ugly",
            "--batch-size", "2", "--out", str(tmp_path / "grid.png"), "--individual", str(tmp_path / "each"),
            "--no-progress"]
    assert main(argv) == 0
    for i in range(2):
        written = _frames_at_fps(tmp_path / "each" / f"video_{i:05d}.png", fps=8)
        assert torch.equal(written, torch.from_numpy(to_uint8(ours[i])))


def _frames_at_fps(path, fps):
    """The (T, H, W, 3) uint8 frames of an animation, each repeated for its duration in frames at ``fps``: Pillow's
    APNG writer merges identical consecutive frames into one of a longer duration (which read_video reads as one)."""
    import numpy as np
    from PIL import Image, ImageSequence
    frames = []
    with Image.open(path) as image:
        for frame in ImageSequence.Iterator(image):
            frames += [np.asarray(frame.convert("RGB"))] * round(frame.info["duration"] * fps / 1000)
    return torch.from_numpy(np.stack(frames))


def test_cogvideox_refusals_are_one_line(cogvideox_folder, tmp_path, capsys):
    """One line, nothing written: sample / edit on the folder (naming diffkit video), frame counts other than
    4 k + 1, sizes off the patch grid, flags the kind does not take."""
    pipe, path, model = cogvideox_folder
    out = tmp_path / "never.png"
    cases = [
        (["sample", "--checkpoint", str(path), "--prompt", "hot"], "diffkit sample does not take (it makes videos)"),
        (["edit", "--checkpoint", str(path), "--images", str(tmp_path), "--prompt", "hot"], "generate videos with "
                                                                                           "diffkit video"),
        (["video", "--checkpoint", str(path), "--prompt", "hot", "--frames", "6"], "num_frames=6 is not allowed"),
        (["video", "--checkpoint", str(path), "--prompt", "hot", "--height", "20"], "positive multiples of 8"),
        (["video", "--checkpoint", str(path), "--prompt", "hot", "--image", str(out)], "--image does not apply"),
        (["video", "--checkpoint", str(path), "--prompt", "hot", "--guidance-scale", "0", "--negative-prompt", "x"],
         "negative"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        code = main([*argv, "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert not out.exists()


def test_cogvideox15_frame_padding_matches_the_pipeline(cogvideox_folder, tmp_path):
    """CogVideoX 1.5 (a transformer with patch_size_t = 2, RoPE on slice grids): 9 frames are 3 latent frames, padded
    to 4 with a frame drawn first and dropped before decoding, as the pipeline's additional_frames."""
    pipe, path, _ = cogvideox_folder
    folder = tmp_path / "cogvideox15"
    for part in ("model_index.json", "scheduler", "text_encoder", "tokenizer", "vae"):
        (folder / part).parent.mkdir(parents=True, exist_ok=True)
        (folder / part).symlink_to(path / part)
    torch.manual_seed(1)
    randomised(diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
        text_embed_dim=32, num_layers=1, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
        patch_size_t=2, use_rotary_positional_embeddings=True)).save_pretrained(folder / "transformer")
    pipe15, _, model = reloaded(folder, diffusers.CogVideoXPipeline, load_cogvideox)
    call = dict(num_frames=9, height=16, width=16, num_inference_steps=2, guidance_scale=3.0)
    out = {}
    for kind in ("latent", "pt"):
        with torch.no_grad():
            out[kind] = pipe15(PROMPTS, generator=[torch.Generator().manual_seed(4 + i) for i in range(2)],
                               output_type=kind, **call).frames
    ours = text_to_video(model, PROMPTS, num_frames=9, height=16, width=16, steps=2, guidance_scale=3.0, seed=4,
                         return_latents=True)
    assert ours.shape == (2, 4, 4, 4, 4)  # 3 latent frames + 1 drawn first
    assert relative_error(ours, out["latent"].permute(0, 2, 1, 3, 4)) < 1e-5
    frames = text_to_video(model, PROMPTS, num_frames=9, height=16, width=16, steps=2, guidance_scale=3.0, seed=4,
                           output_range="0,1")
    assert frames.shape == out["pt"].shape
    assert relative_error(frames, out["pt"]) < 1e-5


def test_cogvideox_image_to_video_matches_the_pipeline(cogvideox_folder, tmp_path):
    """CogVideoXImageToVideoPipeline (CogVideoX-5b-I2V's learned positions and RoPE): the image's latents sampled
    from video i's generator before its noise, x scaling_factor, then zero frames, beside the noisy latents along the
    channels; final latents and decoded frames."""
    from PIL import Image
    pipe, _, _ = cogvideox_folder
    torch.manual_seed(2)
    transformer = randomised(diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=16,
        text_embed_dim=32, num_layers=1, sample_width=4, sample_height=4, sample_frames=5, patch_size=2,
        use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True))
    i2v = diffusers.CogVideoXImageToVideoPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder,
                                                  vae=pipe.vae, transformer=transformer, scheduler=pipe.scheduler)
    i2v.save_pretrained(tmp_path / "i2v")
    i2v, path, model = reloaded(tmp_path / "i2v", diffusers.CogVideoXImageToVideoPipeline, load_cogvideox)
    g = torch.Generator().manual_seed(0)
    images = [Image.fromarray((torch.rand(20, 24, 3, generator=g) * 255).byte().numpy()) for _ in PROMPTS]
    out = {}
    for kind in ("latent", "pt"):
        with torch.no_grad():
            out[kind] = i2v(images, PROMPTS, generator=[torch.Generator().manual_seed(6 + i) for i in range(2)],
                            num_inference_steps=2, output_type=kind, negative_prompt="ugly", **SIZE).frames
    ours = image_to_video(model, images, PROMPTS, steps=2, seed=6, negative_prompt="ugly", return_latents=True,
                          **SIZE)
    assert relative_error(ours, out["latent"].permute(0, 2, 1, 3, 4)) < 1e-5
    frames = image_to_video(model, images, PROMPTS, steps=2, seed=6, negative_prompt="ugly", **SIZE)  # in [-1, 1]
    assert relative_error((frames / 2 + 0.5).clamp(0, 1), out["pt"]) < 1e-5
    from diffkit.images import to_uint8
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i}.png")
    argv = ["video", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--image",
            str(tmp_path / "0.png"), "--image", str(tmp_path / "1.png"), "--steps", "2", "--seed", "6", "--frames",
            "5", "--height", "16", "--width", "16", "--negative-prompt", "ugly", "--batch-size", "2", "--out",
            str(tmp_path / "grid.png"), "--individual", str(tmp_path / "each"), "--no-progress"]
    assert main(argv) == 0
    for i in range(2):
        written = _frames_at_fps(tmp_path / "each" / f"video_{i:05d}.png", fps=8)
        assert torch.equal(written, torch.from_numpy(to_uint8(frames[i])))
    for extra in ([], ["--image", str(tmp_path / "0.png"), "--height", "32"]):  # no image; learned positions' size
        assert main(["video", "--checkpoint", str(path), "--prompt", "hot", "--out", str(tmp_path / "x.png"),
                     *extra]) == 2
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(DiffkitError, match="for this transformer of learned positions; allowed: its sample size 16x16"):
        image_to_video(model, images, PROMPTS, height=32, **{k: v for k, v in SIZE.items() if k != "height"})


def test_cogvideox_video_to_video_matches_the_pipeline(cogvideox_folder, tmp_path, capsys):
    """CogVideoXVideoToVideoPipeline (the text-to-video folder under that class): two input videos of 5 frames
    (24 x 20, resized to 16 x 16) encoded with their posteriors sampled from video i's generator, noised to the first
    of the strength's steps, then the loop: final latents (strength 0.5 of 4 steps, CFG 4 with use_dynamic_cfg over
    the 2 kept steps) and decoded frames (the default 0.8 of 2 steps: 1 step); ``diffkit video --video FILE
    --strength`` writes the library's videos byte for byte; refusals in one line."""
    from PIL import Image

    from diffkit.images import to_uint8
    from diffkit.video import save_videos
    _, path, _ = cogvideox_folder
    folder = changed_folder(path, tmp_path, "model_index.json", {"_class_name": "CogVideoXVideoToVideoPipeline"})
    v2v, _, model = reloaded(folder, diffusers.CogVideoXVideoToVideoPipeline, load_cogvideox)
    assert is_cogvideox_folder(folder) and model.pipeline == "CogVideoXVideoToVideoPipeline"
    inputs = torch.randint(0, 256, (2, 5, 3, 20, 24), generator=torch.Generator().manual_seed(9)) / 127.5 - 1
    clips = [[Image.fromarray(((f + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()) for f in v] for v in inputs]
    size = {k: v for k, v in SIZE.items() if k != "num_frames"}

    def theirs(seed, **call):
        with torch.no_grad():
            return v2v(video=clips, prompt=PROMPTS, generator=[torch.Generator().manual_seed(seed + i) for i in
                                                               range(2)], **size, **call).frames
    ref = theirs(3, num_inference_steps=4, strength=0.5, guidance_scale=4.0, use_dynamic_cfg=True,
                 output_type="latent").permute(0, 2, 1, 3, 4)
    ours = video_to_video(model, list(inputs), PROMPTS, steps=4, strength=0.5, guidance_scale=4.0, dynamic_cfg=True,
                          seed=3, return_latents=True, **size)
    assert ours.shape == (2, 4, 2, 4, 4) and relative_error(ours, ref) < 1e-5  # measured: docs/interop/cogvideox.md
    ref = theirs(5, num_inference_steps=2, negative_prompt="ugly", output_type="pt")
    videos = video_to_video(model, clips, PROMPTS, steps=2, seed=5, negative_prompt="ugly", **size)
    assert videos.shape == ref.shape == (2, 8, 3, 16, 16)
    assert relative_error((videos / 2 + 0.5).clamp(0, 1), ref) < 1e-5
    files = save_videos(inputs, tmp_path / "in")
    argv = ["video", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--video",
            str(files[0]), "--video", str(files[1]), "--steps", "2", "--seed", "5", "--height", "16", "--width", "16",
            "--negative-prompt", "ugly", "--batch-size", "2", "--out", str(tmp_path / "grid.png"), "--individual",
            str(tmp_path / "each"), "--no-progress"]
    assert main(argv) == 0
    for i in range(2):
        written = _frames_at_fps(tmp_path / "each" / f"video_{i:05d}.png", fps=8)
        assert torch.equal(written, torch.from_numpy(to_uint8(videos[i])))
    save_videos(inputs[:1, :4], tmp_path / "four")  # 4 frames: not 4 k + 1
    out = tmp_path / "never.png"
    for extra, message in ((["--frames", "5"], "--frames does not apply to a CogVideoX video-to-video folder"),
                           ([], "(video-to-video): give --video FILE"),
                           (["--video", str(tmp_path / "four" / "video_00000.png")], "--video of 4 frames: "
                                                                                    "num_frames=4 is not allowed"),
                           (["--video", str(files[0]), "--strength", "0.4"], "--strength 0.4 keeps int(2 * 0.4) = 0")):
        capsys.readouterr()
        code = main(["video", "--checkpoint", str(folder), "--prompt", "hot", "--steps", "2", *extra, "--out",
                     str(out)])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert not out.exists()
    assert main(["video", "--checkpoint", str(path), "--prompt", "hot", "--strength", "0.5", "--out", str(out)]) == 2
    assert "--strength does not apply to a CogVideoX folder" in capsys.readouterr().err
    for call, message in ((lambda: text_to_video(model, PROMPTS, **SIZE), "call video_to_video(model, videos"),
                          (lambda: video_to_video(model, clips[:1], PROMPTS, **size), "1 videos for 2 prompts"),
                          (lambda: video_to_video(model, clips, PROMPTS, num_frames=5, **size), "num_frames=5 is not"),
                          (lambda: text_to_video(cogvideox_folder[2], PROMPTS, strength=0.5, **SIZE),
                           "without input videos")):
        with pytest.raises(DiffkitError, match=re.escape(message)):
            call()


# A diffusers-format LoRA (CogVideoXPipeline.save_lora_weights) with rank / alpha patterns
COGVIDEOX_LORA = dict(r=4, lora_alpha=8.0, target_modules=["to_q", "to_k", "to_v", "to_out.0", "net.0.proj", "net.2",
                                                           "proj_out", "linear_1"],
                      rank_pattern={"to_q": 2}, alpha_pattern={"to_v": 3.0})


def test_cogvideox_lora_is_load_lora_weights_and_fuse_lora(cogvideox_folder, tmp_path):
    """A LoRA file at 0.6: the final latents of load_lora_weights + fuse_lora(lora_scale=0.6)'s pipeline, and
    ``diffkit video --lora FILE:0.6`` writes the library's video; a kohya key is refused in one line."""
    from test_sd_lora import fused_transformer_lora
    from diffkit.images import to_uint8
    pipe, path, model = cogvideox_folder
    lora, fused = fused_transformer_lora(diffusers.CogVideoXPipeline, path, tmp_path, COGVIDEOX_LORA, scale=0.6,
                                         loaded=pipe)
    ours = load_cogvideox(path, progress=False, lora=[(lora, 0.6)])
    theirs = _theirs(fused, 2).permute(0, 2, 1, 3, 4)
    mine = text_to_video(ours, PROMPTS, steps=2, seed=3, return_latents=True, **SIZE)
    assert relative_error(mine, theirs) < 1e-5  # measured: docs/interop/cogvideox.md
    plain = text_to_video(model, PROMPTS, steps=2, seed=3, return_latents=True, **SIZE)
    assert relative_error(plain, theirs) > 1e-2
    video = text_to_video(ours, PROMPTS[:1], steps=2, seed=3, **SIZE)
    argv = ["video", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--steps", "2", "--seed", "3", "--frames",
            "5", "--height", "16", "--width", "16", "--lora", f"{lora}:0.6", "--out", str(tmp_path / "grid.png"),
            "--individual", str(tmp_path / "each"), "--no-progress"]
    assert main(argv) == 0
    written = _frames_at_fps(tmp_path / "each" / "video_00000.png", fps=8)
    assert torch.equal(written, torch.from_numpy(to_uint8(video[0])))
    from safetensors.torch import save_file
    save_file({"lora_unet_proj_out.lora_down.weight": torch.zeros(2, 4)}, tmp_path / "kohya.safetensors")
    with pytest.raises(DiffkitError, match="lora_unet_proj_out.*loader converts no kohya"):
        load_cogvideox(path, progress=False, lora=[tmp_path / "kohya.safetensors"])


def _dpm_folder(path, root, **index):
    """``path`` with a CogVideoXDPMScheduler (its model_index entry and scheduler config; ``index``: more
    model_index changes), its parts linked."""
    import json
    folder = changed_folder(path, root, "scheduler/scheduler_config.json", {"_class_name": "CogVideoXDPMScheduler"})
    index = {**json.loads((folder / "model_index.json").read_text()), **index}
    (folder / "model_index.json").unlink()
    (folder / "model_index.json").write_text(json.dumps({**index, "scheduler": ["diffusers", "CogVideoXDPMScheduler"]}))
    return folder


def test_cogvideox_dpm_scheduler_is_its_own_step(cogvideox_folder, tmp_path):
    """A CogVideoXDPMScheduler folder (CogVideoX-5b's recommended scheduler): its step is SDE-DPM-Solver++(2M) with
    the step's noise drawn from video i's generator in the pipeline's layout (twice at a second-order step): the
    pipeline's final latents (4 steps, s = 6; unguided, 5 steps; video-to-video, strength 0.75 of 4 steps) and
    decoded frames; ``diffkit video`` on it."""
    from PIL import Image

    from diffkit.images import to_uint8
    _, path, _ = cogvideox_folder
    (tmp_path / "v2v").mkdir()
    pipe, folder, model = reloaded(_dpm_folder(path, tmp_path), diffusers.CogVideoXPipeline, load_cogvideox)
    assert type(pipe.scheduler).__name__ == "CogVideoXDPMScheduler"
    for steps, call in ((4, {}), (5, dict(guidance_scale=1.0))):
        theirs = _theirs(pipe, steps, **call).permute(0, 2, 1, 3, 4)
        ours = text_to_video(model, PROMPTS, steps=steps, seed=3, return_latents=True, **SIZE, **call)
        assert relative_error(ours, theirs) < 1e-5  # measured: docs/interop/cogvideox.md
    ddim = text_to_video(cogvideox_folder[2], PROMPTS, steps=4, seed=3, return_latents=True, **SIZE)
    assert relative_error(ddim, _theirs(pipe, 4).permute(0, 2, 1, 3, 4)) > 1e-2  # another step
    theirs = _theirs(pipe, 2, seed=5, output_type="pt", negative_prompt="ugly")
    videos = text_to_video(model, PROMPTS, steps=2, seed=5, negative_prompt="ugly", **SIZE)
    assert relative_error((videos / 2 + 0.5).clamp(0, 1), theirs) < 1e-5
    v2v, _, v2v_model = reloaded(_dpm_folder(path, tmp_path / "v2v", _class_name="CogVideoXVideoToVideoPipeline"),
                                 diffusers.CogVideoXVideoToVideoPipeline, load_cogvideox)
    inputs = torch.randint(0, 256, (2, 5, 3, 16, 16), generator=torch.Generator().manual_seed(9)) / 127.5 - 1
    size = {k: v for k, v in SIZE.items() if k != "num_frames"}
    with torch.no_grad():
        theirs = v2v(video=[[Image.fromarray(((f + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()) for f in v]
                            for v in inputs], prompt=PROMPTS, generator=[torch.Generator().manual_seed(3 + i)
                                                                         for i in range(2)],
                     num_inference_steps=4, strength=0.75, output_type="latent", **size).frames
    ours = video_to_video(v2v_model, list(inputs), PROMPTS, steps=4, strength=0.75, seed=3, return_latents=True,
                          **size)
    assert relative_error(ours, theirs.permute(0, 2, 1, 3, 4)) < 1e-5
    argv = ["video", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--steps", "2",
            "--seed", "5", "--frames", "5", "--height", "16", "--width", "16", "--negative-prompt", "ugly",
            "--batch-size", "2", "--out", str(tmp_path / "grid.png"), "--individual", str(tmp_path / "each"),
            "--no-progress"]
    assert main(argv) == 0
    for i in range(2):
        written = _frames_at_fps(tmp_path / "each" / f"video_{i:05d}.png", fps=8)
        assert torch.equal(written, torch.from_numpy(to_uint8(videos[i])))


def test_cogvideox15_image_to_video_matches_the_pipeline(cogvideox_folder, tmp_path):
    """CogVideoX 1.5 image-to-video (patch_size_t 2, the ofs embedding, a VAE with invert_scale_latents): 9 frames
    are 3 latent frames padded to 4 (the noise and the image latents: the image then 3 zero frames), the padding
    frame dropped before decoding; final latents and decoded frames."""
    from PIL import Image
    pipe, _, _ = cogvideox_folder
    torch.manual_seed(3)
    transformer = randomised(diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=16,
        text_embed_dim=32, num_layers=1, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
        patch_size_t=2, ofs_embed_dim=16, use_rotary_positional_embeddings=True))
    i2v = diffusers.CogVideoXImageToVideoPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder,
                                                  vae=pipe.vae, transformer=transformer, scheduler=pipe.scheduler)
    i2v.save_pretrained(tmp_path / "i2v15")
    folder = changed_folder(tmp_path / "i2v15", tmp_path, "vae/config.json", {"invert_scale_latents": True})
    i2v, path, model = reloaded(folder, diffusers.CogVideoXImageToVideoPipeline, load_cogvideox)
    g = torch.Generator().manual_seed(1)
    images = [Image.fromarray((torch.rand(20, 24, 3, generator=g) * 255).byte().numpy()) for _ in PROMPTS]
    call = dict(num_frames=9, height=16, width=16)
    out = {}
    for kind in ("latent", "pt"):
        with torch.no_grad():
            out[kind] = i2v(images, PROMPTS, generator=[torch.Generator().manual_seed(6 + i) for i in range(2)],
                            num_inference_steps=2, output_type=kind, guidance_scale=3.0, **call).frames
    ours = image_to_video(model, images, PROMPTS, steps=2, seed=6, guidance_scale=3.0, return_latents=True, **call)
    assert ours.shape == (2, 4, 4, 4, 4)  # 3 latent frames + 1
    assert relative_error(ours, out["latent"].permute(0, 2, 1, 3, 4)) < 1e-5  # measured: docs/interop/cogvideox.md
    frames = image_to_video(model, images, PROMPTS, steps=2, seed=6, guidance_scale=3.0, output_range="0,1", **call)
    assert frames.shape == out["pt"].shape == (2, 9, 3, 16, 16)
    assert relative_error(frames, out["pt"]) < 1e-5


@pytest.fixture(scope="module")
def fun_folder(cogvideox_folder, tmp_path_factory):
    """(CogVideoXFunControlPipeline.from_pretrained of a saved folder: the tiny T5 and VAE, a transformer of 2 C
    input channels; the folder; load_cogvideox of it)."""
    pipe, _, _ = cogvideox_folder
    torch.manual_seed(4)
    transformer = randomised(diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=16,
        text_embed_dim=32, num_layers=1, sample_width=4, sample_height=4, sample_frames=5, patch_size=2,
        use_rotary_positional_embeddings=True))
    fun = diffusers.CogVideoXFunControlPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder,
                                                vae=pipe.vae, transformer=transformer, scheduler=pipe.scheduler)
    path = tmp_path_factory.mktemp("cogvideox_fun") / "fun"
    fun.save_pretrained(path)
    return reloaded(path, diffusers.CogVideoXFunControlPipeline, load_cogvideox)


def test_cogvideox_fun_control_matches_the_pipeline(fun_folder, tmp_path):
    """CogVideoXFunControlPipeline: two 5-frame 20 x 24 control videos resized to 16 x 16, encoded (posterior
    modes) x scaling_factor, beside the noisy latents along the channels: final latents (4 steps, s = 4 with
    use_dynamic_cfg) and decoded frames (2 steps, a negative prompt); ``diffkit video --video FILE`` writes the
    library's videos byte for byte."""
    from PIL import Image

    from diffkit.images import to_uint8
    from diffkit.video import save_videos
    fun, path, model = fun_folder
    assert is_cogvideox_folder(path)
    inputs = torch.randint(0, 256, (2, 5, 3, 20, 24), generator=torch.Generator().manual_seed(8)) / 127.5 - 1
    clips = [[Image.fromarray(((f + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()) for f in v] for v in inputs]
    size = {k: v for k, v in SIZE.items() if k != "num_frames"}

    def theirs(seed, **call):
        with torch.no_grad():
            return fun(PROMPTS, control_video=clips, generator=[torch.Generator().manual_seed(seed + i)
                                                                 for i in range(2)], **size, **call).frames
    ref = theirs(3, num_inference_steps=4, guidance_scale=4.0, use_dynamic_cfg=True, output_type="latent")
    ours = control_to_video(model, clips, PROMPTS, steps=4, guidance_scale=4.0, dynamic_cfg=True, seed=3,
                            return_latents=True, **size)
    assert relative_error(ours, ref.permute(0, 2, 1, 3, 4)) < 1e-5  # measured: docs/interop/cogvideox.md
    ref = theirs(5, num_inference_steps=2, negative_prompt="ugly", output_type="pt")
    videos = control_to_video(model, list(inputs), PROMPTS, steps=2, seed=5, negative_prompt="ugly", **size)
    assert videos.shape == ref.shape == (2, 8, 3, 16, 16)
    assert relative_error((videos / 2 + 0.5).clamp(0, 1), ref) < 1e-5
    files = save_videos(inputs, tmp_path / "in")
    argv = ["video", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--video",
            str(files[0]), "--video", str(files[1]), "--steps", "2", "--seed", "5", "--height", "16", "--width", "16",
            "--negative-prompt", "ugly", "--batch-size", "2", "--out", str(tmp_path / "grid.png"), "--individual",
            str(tmp_path / "each"), "--no-progress"]
    assert main(argv) == 0
    for i in range(2):
        written = _frames_at_fps(tmp_path / "each" / f"video_{i:05d}.png", fps=8)
        assert torch.equal(written, torch.from_numpy(to_uint8(videos[i])))


def test_cogvideox_fun_control_refusals_are_one_line(fun_folder, tmp_path, capsys):
    """One line before any weight is read: no --video, a 4-frame control video, --strength, --frames, --image, a
    CogVideoXDPMScheduler (the pipeline's loop calls the DDIM step's signature); a strength to control_to_video."""
    from diffkit.video import save_videos
    from _video_helpers import refused_in_one_line
    _, path, model = fun_folder
    five, four = (save_videos(torch.zeros(1, n, 3, 16, 16), tmp_path / f"v{n}")[0] for n in (5, 4))
    dpm = _dpm_folder(path, tmp_path)
    for folder, args, message in (
            (path, [], "CogVideoX-Fun control folder (video-to-video): give --video FILE"),
            (path, ["--video", str(four)], "--video of 4 frames: num_frames=4 is not allowed"),
            (path, ["--video", str(five), "--strength", "0.5"], "--strength does not apply to a CogVideoX-Fun"),
            (path, ["--video", str(five), "--frames", "5"], "--frames does not apply to a CogVideoX-Fun"),
            (path, ["--video", str(five), "--image", str(five)], "--image does not apply to a CogVideoX-Fun"),
            (dpm, ["--video", str(five)], "CogVideoXDPMScheduler, which CogVideoXFunControlPipeline cannot step")):
        refused_in_one_line(capsys, tmp_path, "video", folder, args, message)
    with pytest.raises(DiffkitError, match="strength=0.5 is not allowed for CogVideoXFunControlPipeline"):
        control_to_video(model, [torch.zeros(5, 3, 16, 16)], ["hot"], strength=0.5)
    with pytest.raises(DiffkitError, match=re.escape("call control_to_video(model, control_videos, prompts)")):
        text_to_video(model, ["hot"])
