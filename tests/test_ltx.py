"""LTX-Video folders (diffkit.interop.ltx, diffkit video's LTX-Video kind): text_to_video against diffusers' own
LTXPipeline on a tiny random folder (a 1-layer T5 of width 32 on a few-word unigram tokenizer, a 1-layer
LTXVideoTransformer3DModel on 8 latent channels, a timestep-conditioned AutoencoderKLLTXVideo of spatial / temporal
compression 16 / 4 with random latents mean / std and scaling factor 1.3, LTX-Video 0.9.1's dynamic-shift
FlowMatchEuler scheduler with shift_terminal 0.1; nothing downloaded)."""
import re

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import to_uint8  # noqa: E402
from diffkit.interop.ltx import check_ltx_folder, image_to_video, load_ltx, text_to_video  # noqa: E402
from diffkit.video import read_video  # noqa: E402

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd3 import T5_WORDS, tiny_t5_tokenizer  # noqa: E402

C, FRAMES, H, W = 8, 9, 32, 64  # latents (8, 3, 2, 4): 24 tokens
PROMPTS, NEGATIVE = ["a photo of a Cat", "a dog"], "blurry dog"
SIZE = {"num_frames": FRAMES, "height": H, "width": W}


@pytest.fixture(scope="module")
def tiny_ltx(tmp_path_factory):
    """(LTXPipeline.from_pretrained of the saved folder, the folder, load_ltx of it)."""
    root = tmp_path_factory.mktemp("ltx")
    torch.manual_seed(0)
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=4 + len(T5_WORDS), d_model=32, d_kv=8, d_ff=40, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, dropout_rate=0.0)).eval()
    transformer = diffusers.LTXVideoTransformer3DModel(
        in_channels=C, out_channels=C, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, num_layers=1, caption_channels=32)
    vae = diffusers.AutoencoderKLLTXVideo(
        latent_channels=C, block_out_channels=(8, 8, 8), down_block_types=("LTXVideoDownBlock3D",) * 3,
        decoder_block_out_channels=(8, 8, 8), layers_per_block=(1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False), decoder_spatio_temporal_scaling=(True, True, False),
        decoder_inject_noise=(False,) * 4, upsample_residual=(False,) * 3, upsample_factor=(1,) * 3,
        timestep_conditioning=True, patch_size=4, scaling_factor=1.3)
    with torch.no_grad():  # (the buffers default to 0 / 1; every weight of these modules is random already)
        vae.latents_mean.copy_(torch.randn(C) * 0.3)
        vae.latents_std.copy_(torch.rand(C) + 0.5)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                                                          base_image_seq_len=1024, max_image_seq_len=4096,
                                                          shift_terminal=0.1)
    pipe = diffusers.LTXPipeline(scheduler=scheduler, vae=vae, text_encoder=t5, tokenizer=tiny_t5_tokenizer(),
                                 transformer=transformer)
    pipe.save_pretrained(root / "ltx")
    return reloaded(root / "ltx", diffusers.LTXPipeline, load_ltx)


@pytest.fixture(scope="module")
def tiny_ltx_i2v(tiny_ltx, tmp_path_factory):
    """(LTXImageToVideoPipeline of the same components, the folder relabelled LTXImageToVideoPipeline (its weights
    linked), load_ltx of it)."""
    pipe, path, _ = tiny_ltx
    folder = changed_folder(path, tmp_path_factory.mktemp("ltx_i2v"), "model_index.json",
                            {"_class_name": "LTXImageToVideoPipeline"})
    i2v = diffusers.LTXImageToVideoPipeline(**pipe.components)
    i2v.set_progress_bar_config(disable=True)
    return i2v, folder, load_ltx(folder, progress=False)


def _images(n=2, size=(72, 40)):
    """Random RGB images of another size than the videos' (the pipelines resize them, Lanczos)."""
    from PIL import Image
    g = torch.Generator().manual_seed(3)
    return [Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), generator=g).to(torch.uint8).numpy())
            for _ in range(n)]


def _generators(seed, n=2):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


@pytest.mark.parametrize("guidance", [
    {"guidance_scale": 3.0, "negative_prompt": NEGATIVE, "guidance_rescale": 0.7},
    {"guidance_scale": 1.0}])
def test_ltx_matches_the_pipeline(tiny_ltx, guidance):
    """Two videos of 9 frames (3 latent frames), 3 steps on the scheduler's resolution-shifted sigmas, CFG s = 3
    against a negative prompt with guidance rescale 0.7 (and unguided); decoded at timestep 0.05 with noise 0.025
    drawn from each video's generator after its latents: the same final latents (read by a step callback, packed) and
    frames as LTXPipeline with per-video generators seed + i."""
    pipe, _, model = tiny_ltx
    final = {}

    def keep(pipeline, i, t, tensors):
        final["latents"] = tensors["latents"]
        return {}
    decode = {"decode_timestep": 0.05, "decode_noise_scale": 0.025}
    with torch.no_grad():
        frames = pipe(PROMPTS, num_inference_steps=3, generator=_generators(5), output_type="pt",
                      callback_on_step_end=keep, **SIZE, **decode, **guidance).frames
    ours = text_to_video(model, PROMPTS, steps=3, seed=5, return_latents=True, **SIZE, **guidance)
    error = relative_error(ours.flatten(2).transpose(1, 2), final["latents"])
    print(f"latents: {error:.2e}")  # (measured 2.7e-7 guided, 2.0e-7 unguided)
    assert error < 1e-5
    videos = text_to_video(model, PROMPTS, steps=3, seed=5, output_range="0,1", **SIZE, **decode, **guidance)
    error = relative_error(videos, frames)
    print(f"frames: {error:.2e}")  # (measured 8.9e-7, 1.0e-6)
    assert frames.shape == videos.shape == (2, FRAMES, 3, H, W) and error < 1e-5


def test_ltx_command_writes_the_library_videos(tiny_ltx, tmp_path):
    """diffkit video on the folder (2 videos in one batch, a stochastic diffkit sampler): each video of --individual
    is the library's video with seed + i, rounded as to_uint8; the grid animation is written."""
    _, path, model = tiny_ltx
    expected = text_to_video(model, PROMPTS, steps=2, seed=3, sampler="ddpm", guidance_scale=2.0,
                             negative_prompt=NEGATIVE, **SIZE)
    argv = ["video", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--steps", "2",
            "--seed", "3", "--batch-size", "2", "--sampler", "ddpm", "--guidance-scale", "1", "--negative-prompt",
            NEGATIVE, "--frames", str(FRAMES), "--height", str(H), "--width", str(W), "--out",
            str(tmp_path / "grid.png"), "--individual", str(tmp_path / "each"), "--no-progress"]
    assert main(argv) == 0
    for i in range(2):
        back = read_video(tmp_path / "each" / f"video_{i:05d}.png")
        assert np.array_equal(to_uint8(back), to_uint8(expected[i]))
    assert read_video(tmp_path / "grid.png").shape[0] == FRAMES


def test_ltx_refusals_are_one_line(tiny_ltx, tmp_path, capsys):
    """Before any weight is read: diffkit sample / edit on the folder, frames not 4 k + 1, sizes not of 32, an
    image, guidance rescale without CFG, the decode flags on a VAE without timestep conditioning; the folder checks
    (patch sizes, channels, a stochastic scheduler); the library's own."""
    _, path, model = tiny_ltx
    video = ["video", "--checkpoint", str(path), "--prompt", "hot", "--no-progress"]
    plain = changed_folder(path, tmp_path, "vae/config.json", {"timestep_conditioning": False})
    (tmp_path / "a.png").write_bytes(b"")
    for argv, expected in [
            (["sample", "--checkpoint", str(path), "--prompt", "hot", "--no-progress", "--out",
              str(tmp_path / "never" / "x.png")], "LTXPipeline folder, which diffkit sample does not take (it makes "
                                                  "videos); generate videos with diffkit video"),
            (["edit", "--checkpoint", str(path), "--images", str(tmp_path / "a.png"), "--prompt", "x", "--out",
              str(tmp_path / "never")], "LTXPipeline folder, which diffkit edit does not take"),
            (video + ["--frames", "8", "--height", "32", "--width", "32"], "num_frames=8 is not allowed; give 4 k + 1"),
            (video + ["--height", "48", "--width", "32"],
             "height x width 48x32 is not allowed; give positive multiples of 32"),
            (video + ["--image", str(tmp_path / "a.png")], "--image does not apply to an LTX-Video folder"),
            (video + ["--guidance-scale", "0", "--guidance-rescale", "0.5"], "--guidance-rescale 0.5 does not apply "
                                                                             "without CFG"),
            (["video", "--checkpoint", str(plain), "--prompt", "x", "--decode-timestep", "0.05"],
             "--decode-timestep / --decode-noise-scale do not apply")]:
        capsys.readouterr()
        assert main(argv + ([] if "--out" in argv else ["--out", str(tmp_path / "never" / "v.png")])) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "never").exists()
    for part, change, expected in [
            ("model_index.json", {"transformer": ["diffusers", "WanTransformer3DModel"]},
             "transformer is a 'WanTransformer3DModel'; allowed: LTXVideoTransformer3DModel"),
            ("transformer/config.json", {"patch_size": 2}, "patch_size=2; allowed: 1"),
            ("transformer/config.json", {"in_channels": 16}, "in_channels=16; allowed: 8"),
            ("scheduler/scheduler_config.json", {"stochastic_sampling": True}, "stochastic_sampling=True")]:
        with pytest.raises(DiffkitError, match=re.escape(expected)):
            check_ltx_folder(changed_folder(path, tmp_path, part, change))
    for options, expected in [({"guidance_scale": 1.0, "guidance_rescale": 0.5}, "guidance_rescale=0.5 is not "
                                                                                 "allowed without CFG"),
                              ({"guidance_rescale": 1.5}, "guidance_rescale"),
                              ({"num_frames": 7}, "num_frames=7 is not allowed"),
                              ({"frame_rate": 0}, "frame_rate")]:
        with pytest.raises(DiffkitError, match=re.escape(expected)):
            text_to_video(model, "x", **{**SIZE, **options})


def test_ltx_image_to_video_matches_the_pipeline(tiny_ltx_i2v):
    """LTXImageToVideoPipeline: each image (72 x 40, resized to 64 x 32) encoded with a posterior draw from its
    video's generator, normalised without the scaling factor, the first latent frame (kept; its tokens at timestep
    0). Two videos with CFG s = 3, a negative prompt and guidance rescale 0.7 against per-video generators (final
    latents: the pipeline's decoding draws torch.randn with a generator list, which fails), one unguided video decoded
    at timestep 0.05 with noise 0.025 from one generator (frames)."""
    pipe, _, model = tiny_ltx_i2v
    images, guided = _images(), {"guidance_scale": 3.0, "negative_prompt": NEGATIVE, "guidance_rescale": 0.7}
    with torch.no_grad():
        theirs = pipe(images, PROMPTS, num_inference_steps=3, generator=_generators(5), output_type="latent", **SIZE,
                      **guided).frames
    ours = image_to_video(model, images, PROMPTS, steps=3, seed=5, return_latents=True, **SIZE, **guided)
    error = relative_error(ours.flatten(2).transpose(1, 2), theirs)
    print(f"latents: {error:.2e}")  # (measured 4.2e-7)
    assert error < 1e-5
    decode = {"decode_timestep": 0.05, "decode_noise_scale": 0.025, "guidance_scale": 1.0}
    with torch.no_grad():
        frames = pipe(images[1], PROMPTS[1], num_inference_steps=3, generator=torch.Generator().manual_seed(6),
                      output_type="pt", **SIZE, **decode).frames
    videos = image_to_video(model, images[1:], PROMPTS[1], steps=3, seed=6, output_range="0,1", **SIZE, **decode)
    error = relative_error(videos, frames)
    print(f"frames: {error:.2e}")  # (measured 6.3e-7)
    assert videos.shape == frames.shape == (1, FRAMES, 3, H, W) and error < 1e-5


def test_ltx_image_to_video_command_writes_the_library_videos(tiny_ltx_i2v, tmp_path, capsys):
    """diffkit video --image on the LTXImageToVideoPipeline folder: the library's video byte for byte (as to_uint8);
    without --image: one line."""
    _, path, model = tiny_ltx_i2v
    image = _images(1)[0]
    image.save(tmp_path / "a.png")
    expected = image_to_video(model, [image], PROMPTS[0], steps=2, seed=4, **SIZE)
    argv = ["video", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--steps", "2", "--seed", "4", "--frames",
            str(FRAMES), "--height", str(H), "--width", str(W), "--no-progress"]
    assert main(argv + ["--image", str(tmp_path / "a.png"), "--out", str(tmp_path / "v.png"), "--individual",
                        str(tmp_path / "each")]) == 0
    assert np.array_equal(to_uint8(read_video(tmp_path / "each" / "video_00000.png")), to_uint8(expected[0]))
    capsys.readouterr()
    assert main(argv + ["--out", str(tmp_path / "never.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "(image-to-video): give --image PNG" in err[0], err
    assert not (tmp_path / "never.png").exists()


LTX_LORA = dict(r=4, lora_alpha=8.0, target_modules=["to_q", "to_k", "to_v", "to_out.0", "net.0.proj", "net.2",
                                                     "proj_in", "proj_out"],
                rank_pattern={"to_q": 2}, alpha_pattern={"to_v": 3.0})


def test_ltx_lora_is_load_lora_weights_and_fuse_lora(tiny_ltx, tmp_path, capsys):
    """A diffusers-format file (LTXPipeline.save_lora_weights: attention, FFN, proj_in / proj_out, rank / alpha
    patterns) at 0.6: the final latents of load_lora_weights + fuse_lora(lora_scale=0.6)'s pipeline, and ``diffkit
    video --lora FILE:0.6`` writes the library's video; its tensors under LTX-Video's diffusion_model. names (no
    metadata: alpha = r; diffusers' converter): load_lora_weights + fuse_lora's weights; dora_scale, mixed prefixes
    and kohya keys: one line."""
    import copy

    from safetensors.torch import load_file, save_file
    from test_sd_lora import fused_transformer_lora
    from diffkit.interop.ltx_lora import read_ltx_loras
    from diffkit.interop.sd_lora import merge_sd_loras
    pipe, path, model = tiny_ltx
    lora, fused = fused_transformer_lora(diffusers.LTXPipeline, path, tmp_path, LTX_LORA, scale=0.6, loaded=pipe)
    ours = load_ltx(path, progress=False, lora=[(lora, 0.6)])
    with torch.no_grad():
        theirs = fused(PROMPTS[:1], num_inference_steps=2, generator=_generators(5, 1), output_type="latent",
                       **SIZE).frames
    mine = text_to_video(ours, PROMPTS[:1], steps=2, seed=5, return_latents=True, **SIZE)
    error, start = relative_error(mine.flatten(2).transpose(1, 2), theirs), model.transformer.state_dict()
    print(f"latents: {error:.2e}")  # (measured 5.7e-7)
    assert error < 1e-5
    assert max(float((v - start[k]).abs().max()) for k, v in ours.transformer.state_dict().items()) > 1e-2
    expected = text_to_video(ours, PROMPTS[:1], steps=2, seed=2, **SIZE)
    argv = ["video", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--steps", "2", "--seed", "2", "--frames",
            str(FRAMES), "--height", str(H), "--width", str(W), "--no-progress", "--lora", f"{lora}:0.6"]
    assert main(argv + ["--out", str(tmp_path / "v.png"), "--individual", str(tmp_path / "each")]) == 0
    assert np.array_equal(to_uint8(read_video(tmp_path / "each" / "video_00000.png")), to_uint8(expected[0]))
    tensors = load_file(lora)
    original = {"diffusion_model." + k[len("transformer."):]: v for k, v in tensors.items()}
    save_file(original, tmp_path / "original.safetensors")
    merged = copy.copy(model)
    merged.transformer = copy.deepcopy(model.transformer)
    merge_sd_loras(merged, read_ltx_loras([(tmp_path / "original.safetensors", 0.6)]))
    converted = diffusers.LTXPipeline(**{**pipe.components, "transformer": copy.deepcopy(pipe.transformer)})
    converted.load_lora_weights(str(tmp_path / "original.safetensors"))  # no metadata: alpha = r
    converted.fuse_lora(lora_scale=0.6)
    converted.unload_lora_weights()
    weights = converted.transformer.state_dict()
    error = max(float((v - weights[k]).abs().max()) for k, v in merged.transformer.state_dict().items())
    print(f"diffusion_model. file weights: {error:.1e} abs")  # (measured 6.0e-8)
    assert error < 1e-6
    key = next(iter(original))
    for name, bad, expected in [
            ("dora", {**tensors, "transformer.x.dora_scale": torch.ones(1)}, "key 'transformer.x.dora_scale' is not "
                                                                            "allowed (LTXPipeline drops dora_scale"),
            ("mixed", {**original, "transformer.x.lora_A.weight": torch.ones(1, 1)},
             "key 'transformer.x.lora_A.weight' is not allowed beside 'diffusion_model.' keys"),
            ("kohya", {key.replace("lora_A", "lora_down"): original[key]}, "lora_down")]:
        save_file(bad, tmp_path / f"{name}.safetensors")
        with pytest.raises(DiffkitError, match=re.escape(expected)):
            read_ltx_loras([tmp_path / f"{name}.safetensors"])
        capsys.readouterr()
        assert main(argv[:-2] + ["--lora", str(tmp_path / f"{name}.safetensors"), "--out",
                                 str(tmp_path / "never.png")]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "never.png").exists()
