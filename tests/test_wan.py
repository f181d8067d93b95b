"""Wan text-to-video folders (diffkit.interop.wan, ``diffkit video``): text_to_video against diffusers' own WanPipeline
on a tiny random folder (a 1-layer UMT5 of width 32 on a few-word unigram tokenizer, a 1-layer WanTransformer3DModel,
a Wan 2.1 AutoencoderKLWan of z_dim 4 with non-trivial latents mean / std, Wan's flow UniPC scheduler; 5 frames -> 2
latent frames of 16 x 32; nothing downloaded). ftfy is not installed: the pipeline's prompt_clean gets it as the
identity, as diffkit does."""
import types

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.wan import check_frames, check_wan_folder, load_wan, text_to_video  # noqa: E402

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd3 import T5_WORDS, tiny_t5_tokenizer  # noqa: E402

H, W, FRAMES = 16, 32, 5  # latents 2 x 2 x 4: 2 x 1 x 2 patches
Z = 4  # the VAE's z_dim
PROMPT, NEGATIVE = "a photo of a Cat", "blurry dog"


def randomised(module, seed=0):
    """``module`` with every all-zero parameter (norm biases, ...) drawn at random, so that no layer is a no-op."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return module


def tiny_wan_parts():
    """The tiny components of a Wan 2.1 text-to-video folder (the tokenizer, UMT5, transformer, VAE, scheduler)."""
    torch.manual_seed(0)
    umt5 = transformers.UMT5EncoderModel(transformers.UMT5Config(
        vocab_size=4 + len(T5_WORDS), d_model=32, d_kv=8, d_ff=40, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, dropout_rate=0.0)).eval()
    transformer = randomised(diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=Z, out_channels=Z,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=1, rope_max_seq_len=32))
    vae = randomised(diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=Z, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.1 * i - 0.2 for i in range(Z)], latents_std=[1 + 0.2 * i for i in range(Z)]), seed=1)
    scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                  flow_shift=3.0)
    return {"tokenizer": tiny_t5_tokenizer(), "text_encoder": umt5, "transformer": transformer, "vae": vae,
            "scheduler": scheduler}


@pytest.fixture(scope="session")
def tiny_wan(tmp_path_factory):
    """(WanPipeline.from_pretrained of the saved folder, the folder, load_wan of it), with ftfy's fix_text as the
    identity in the pipeline's module while the tests run."""
    from diffusers.pipelines.wan import pipeline_wan
    root = tmp_path_factory.mktemp("wan")
    diffusers.WanPipeline(**tiny_wan_parts()).save_pretrained(root / "wan")
    with pytest.MonkeyPatch.context() as patch:
        if not hasattr(pipeline_wan, "ftfy"):
            patch.setattr(pipeline_wan, "ftfy", types.SimpleNamespace(fix_text=lambda text: text), raising=False)
        yield reloaded(root / "wan", diffusers.WanPipeline, load_wan)


@pytest.fixture(scope="session")
def tiny_wan22(tiny_wan, tmp_path_factory):
    """The Wan 2.2 A14B layout of the tiny folder: a second random transformer as ``transformer_2``, boundary_ratio
    0.8 (of 3 UniPC steps at timesteps 999, 857, 600 the first two are the high-noise expert's; of 2, at 999,
    750, the first)."""
    pipe, _, _ = tiny_wan
    torch.manual_seed(1)
    second = randomised(diffusers.WanTransformer3DModel(**pipe.transformer.config), seed=2)
    root = tmp_path_factory.mktemp("wan22")
    components = {**pipe.components, "transformer_2": second}
    diffusers.WanPipeline(**components, boundary_ratio=0.8).save_pretrained(root / "wan22")
    return reloaded(root / "wan22", diffusers.WanPipeline, load_wan)


@pytest.fixture(scope="session")
def tiny_ti2v(tiny_wan, tmp_path_factory):
    """The Wan 2.2 TI2V-5B layout of the tiny folder: expand_timesteps and a Wan 2.2 VAE (2 x 2 pixel patches,
    factor 16, residual blocks) of z_dim 4."""
    pipe, _, _ = tiny_wan
    root = tmp_path_factory.mktemp("ti2v")
    diffusers.WanPipeline(**{**pipe.components, "vae": tiny_wan22_vae()}, expand_timesteps=True).save_pretrained(
        root / "ti2v")
    return reloaded(root / "ti2v", diffusers.WanPipeline, load_wan)


def tiny_wan22_vae():
    """A tiny Wan 2.2 VAE (2 x 2 pixel patches, factor 16, residual blocks) of z_dim 4, randomised."""
    torch.manual_seed(2)
    return randomised(diffusers.AutoencoderKLWan(
        base_dim=8, decoder_base_dim=8, z_dim=Z, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12, patch_size=2,
        scale_factor_spatial=16, latents_mean=[0.2 - 0.1 * i for i in range(Z)],
        latents_std=[1.5 - 0.2 * i for i in range(Z)]), seed=3)


def _latents(batch=1, seed=7):
    return torch.randn(batch, Z, 2, H // 8, W // 8, generator=torch.Generator().manual_seed(seed))


def test_wan_matches_the_pipeline(tiny_wan):
    """Two prompts, CFG s = 4 against a negative prompt, 3 UniPC steps: the same final latents and decoded frames
    (B, T, C, H, W) in [0, 1] as WanPipeline from the same noise (its final latents read by a step callback)."""
    pipe, _, model = tiny_wan
    latents, final = _latents(2), {}

    def keep(pipeline, i, t, tensors):
        final["latents"] = tensors["latents"]
        return {}
    kw = {"negative_prompt": [NEGATIVE, "ugly"], "guidance_scale": 4.0, "height": H, "width": W,
          "num_frames": FRAMES}
    prompts = [PROMPT, "a hot dog"]
    with torch.no_grad():
        frames = pipe(prompts, num_inference_steps=3, latents=latents, output_type="pt", callback_on_step_end=keep,
                      **kw).frames
    ours = text_to_video(model, prompts, steps=3, latents=latents, return_latents=True, **kw)
    error = relative_error(ours, final["latents"])
    print(f"latents: {error:.2e}")  # (measured 5.1e-7)
    assert error < 1e-5
    videos = (model.decode_video(ours) / 2 + 0.5).clamp(0, 1)
    assert videos.shape == frames.shape == (2, FRAMES, 3, H, W)
    error = relative_error(videos, frames)
    print(f"frames: {error:.2e}")  # (measured 8.6e-7)
    assert error < 1e-5


def test_wan22_two_experts_match_the_pipeline(tiny_wan22, tmp_path):
    """Wan 2.2 A14B: transformer for the pipeline's timesteps >= 0.8 T (two of 3 UniPC steps) with CFG 4,
    transformer_2 below with guidance_scale_2 = 2.5; ``diffkit video --guidance-scale-2`` is the library's; another
    diffkit sampler (heun) runs the two experts on the grid."""
    from diffkit.images import to_uint8
    from diffkit.video import read_video
    pipe, path, model = tiny_wan22
    latents = _latents()
    kw = {"negative_prompt": NEGATIVE, "guidance_scale": 4.0, "guidance_scale_2": 2.5, "height": H, "width": W,
          "num_frames": FRAMES}
    with torch.no_grad():
        theirs = pipe(PROMPT, num_inference_steps=3, latents=latents, output_type="latent", **kw).frames
    ours = text_to_video(model, PROMPT, steps=3, latents=latents, return_latents=True, **kw)
    error = relative_error(ours, theirs)
    print(f"latents: {error:.2e}")  # (measured 4.6e-7)
    assert error < 1e-5
    assert main(["video", "--checkpoint", str(path), "--prompt", PROMPT, "--steps", "2", "--frames", str(FRAMES),
                 "--height", str(H), "--width", str(W), "--guidance-scale-2", "1.5", "--guidance-convention",
                 "diffusers", "--out", str(tmp_path / "v.png"), "--no-progress"]) == 0
    video = text_to_video(model, PROMPT, steps=2, num_frames=FRAMES, height=H, width=W, guidance_scale_2=1.5)
    assert (to_uint8(read_video(tmp_path / "v.png")[:, :, 2:2 + H, 2:2 + W]) == to_uint8(video[0])).all()
    z = text_to_video(model, PROMPT, steps=2, num_frames=FRAMES, height=H, width=W, sampler="heun",
                      guidance_scale=1.0, return_latents=True)  # another sampler: its stages by their own times
    assert z.shape == (1, Z, 2, H // 8, W // 8) and bool(z.isfinite().all())


# A diffusers-format text-to-video LoRA: attention, FFN, the time embedder and proj_out, ranks / alphas differ
WAN_LORA = dict(r=4, lora_alpha=8.0, target_modules=["to_q", "to_k", "to_v", "to_out.0", "net.0.proj", "net.2",
                                                     "proj_out", "time_proj", "linear_1"],
                rank_pattern={"to_q": 2}, alpha_pattern={"to_v": 3.0})


def fused_lora_matches(pipeline_class, pipe, path, tmp_path, load, config=None, scale: float = 0.6):
    """(a diffusers-format LoRA file, ``config`` (default :data:`WAN_LORA`) on the transformer of ``pipe``'s saved
    folder ``path``, written by ``pipeline_class.save_lora_weights``; ``load(path, lora=[(file, scale)])``; ``pipe``'s
    copy after its ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)``), checking that diffkit's merged
    transformer is the fused one's (every weight within 1e-6 relative) and that the LoRA moves it (> 1e-2)."""
    from test_sd_lora import fused_transformer_lora
    lora, fused = fused_transformer_lora(pipeline_class, path, tmp_path, config or WAN_LORA, scale=scale, loaded=pipe)
    ours = load(path, progress=False, lora=[(lora, scale)])
    theirs, base = fused.transformer.state_dict(), pipe.transformer.state_dict()
    mine = ours.transformer.state_dict()
    assert mine.keys() == theirs.keys()
    error = max(float((mine[k] - v).abs().max()) for k, v in theirs.items()) / max(
        float(v.abs().max()) for v in theirs.values())
    print(f"{pipeline_class.__name__} fused weights: {error:.2e}")
    assert error < 1e-6
    assert max(float((theirs[k] - v).abs().max()) for k, v in base.items()) > 1e-2
    return lora, ours, fused


def test_wan_lora_is_load_lora_weights_and_fuse_lora(tiny_wan, tmp_path):
    """A diffusers-format file (WanPipeline.save_lora_weights) at 0.6 through ChronoEdit's Wan LoRA reader: the final
    latents of load_lora_weights + fuse_lora(lora_scale=0.6)'s pipeline (2 UniPC steps, unguided), and ``diffkit video
    --lora FILE:0.6`` writes the library's frames."""
    from safetensors.torch import save_file
    from test_sd_lora import fused_transformer_lora
    from diffkit.images import to_uint8
    from diffkit.video import read_video
    pipe, path, model = tiny_wan
    lora, fused = fused_transformer_lora(diffusers.WanPipeline, path, tmp_path, WAN_LORA, scale=0.6, loaded=pipe)
    ours = load_wan(path, progress=False, lora=[(lora, 0.6)])
    latents, kw = _latents(), {"height": H, "width": W, "num_frames": FRAMES}
    with torch.no_grad():
        theirs = fused(PROMPT, num_inference_steps=2, latents=latents, output_type="latent", guidance_scale=1.0,
                       **kw).frames
    error = relative_error(text_to_video(ours, PROMPT, steps=2, latents=latents, guidance_scale=1.0,
                                         return_latents=True, **kw), theirs)
    print(f"latents: {error:.2e}")  # (measured 2.5e-7)
    assert error < 1e-5
    start = model.transformer.state_dict()
    assert max(float((v - start[k]).abs().max()) for k, v in ours.transformer.state_dict().items()) > 1e-2
    assert main(["video", "--checkpoint", str(path), "--prompt", PROMPT, "--steps", "1", "--frames", str(FRAMES),
                 "--height", str(H), "--width", str(W), "--lora", f"{lora}:0.6", "--out", str(tmp_path / "v.png"),
                 "--no-progress"]) == 0
    video = text_to_video(ours, PROMPT, steps=1, **kw)
    assert (to_uint8(read_video(tmp_path / "v.png")[:, :, 2:2 + H, 2:2 + W]) == to_uint8(video[0])).all()
    save_file({"transformer.blocks.0.attn1.to_q.lora_down.weight": torch.zeros(2, 24)}, tmp_path / "bad.safetensors")
    with pytest.raises(DiffkitError, match="on a Wan folder"):
        load_wan(path, progress=False, lora=[tmp_path / "bad.safetensors"])


def test_wan22_ti2v_text_to_video_matches_the_pipeline(tiny_ti2v):
    """Wan 2.2 TI2V-5B's text-to-video (expand_timesteps: the timestep per patch token; the Wan 2.2 VAE of factor
    16), CFG 3, 2 UniPC steps, 32 x 64: the pipeline's final latents and frames; sizes not of 32 refused."""
    pipe, _, model = tiny_ti2v
    latents, final = torch.randn(1, Z, 2, 2, 4, generator=torch.Generator().manual_seed(7)), {}
    kw = {"guidance_scale": 3.0, "height": 32, "width": 64, "num_frames": FRAMES}
    with torch.no_grad():
        frames = pipe(PROMPT, num_inference_steps=2, latents=latents, output_type="pt",
                      callback_on_step_end=lambda p, i, t, tensors: final.update(tensors) or {}, **kw).frames
    ours = text_to_video(model, PROMPT, steps=2, latents=latents, return_latents=True, **kw)
    error = relative_error(ours, final["latents"])
    print(f"latents: {error:.2e}")  # (measured 4.6e-7)
    assert error < 1e-5
    error = relative_error((model.decode_video(ours) / 2 + 0.5).clamp(0, 1), frames)
    print(f"frames: {error:.2e}")  # (measured 4.0e-7)
    assert error < 1e-5
    with pytest.raises(DiffkitError, match="height x width 48x64 is not allowed; give positive multiples of 32"):
        text_to_video(model, PROMPT, height=48, width=64)


def test_wan22_ti2v_folder_image_to_video(tiny_ti2v, tmp_path, monkeypatch):
    """The WanPipeline TI2V-5B folder (Wan2.2-TI2V-5B-Diffusers' layout) as WanImageToVideoPipeline loads it (diffusers'
    documented image-to-video of that folder; expand_timesteps: the image's latents the kept first latent frame):
    load_wan_i2v's image_to_video has its final latents (a 72 x 40 image resized to 64 x 32, CFG 3, 2 UniPC steps);
    ``diffkit video --image`` on the folder writes the library's video."""
    from PIL import Image
    from diffusers.pipelines.wan import pipeline_wan_i2v

    from diffkit.images import to_uint8
    from diffkit.interop.wan_i2v import image_to_video, load_wan_i2v
    from diffkit.video import read_video
    if not hasattr(pipeline_wan_i2v, "ftfy"):
        monkeypatch.setattr(pipeline_wan_i2v, "ftfy", types.SimpleNamespace(fix_text=lambda text: text), raising=False)
    pipe, path, _ = tiny_ti2v
    i2v = diffusers.WanImageToVideoPipeline(**pipe.components, expand_timesteps=True)
    i2v.set_progress_bar_config(disable=True)
    model = load_wan_i2v(path, progress=False)
    pixels = torch.randint(0, 256, (40, 72, 3), generator=torch.Generator().manual_seed(3)).to(torch.uint8)
    image, kw = Image.fromarray(pixels.numpy()), {"guidance_scale": 3.0, "height": 32, "width": 64,
                                                  "num_frames": FRAMES}
    with torch.no_grad():
        theirs = i2v(image, PROMPT, num_inference_steps=2, output_type="latent",
                     generator=[torch.Generator().manual_seed(4)], **kw).frames
    error = relative_error(image_to_video(model, image, PROMPT, steps=2, seed=4, return_latents=True, **kw), theirs)
    print(f"latents: {error:.2e}")  # (measured 3.9e-7)
    assert error < 1e-5
    image.save(tmp_path / "a.png")
    assert main(["video", "--checkpoint", str(path), "--image", str(tmp_path / "a.png"), "--prompt", PROMPT, "--steps",
                 "1", "--frames", str(FRAMES), "--height", "32", "--width", "64", "--out", str(tmp_path / "v.png"),
                 "--no-progress"]) == 0
    video = image_to_video(model, image, PROMPT, steps=1, num_frames=FRAMES, height=32, width=64)
    assert (to_uint8(read_video(tmp_path / "v.png")[:, :, 2:34, 2:66]) == to_uint8(video[0])).all()


def _video_argv(path, out, *extra):
    return ["video", "--checkpoint", str(path), "--prompt", PROMPT, "--prompt", "a dog", "--steps", "1", "--seed", "3",
            "--frames", str(FRAMES), "--height", str(H), "--width", str(W), "--out", str(out), "--no-progress",
            *extra]


def test_wan_command_is_the_library(tiny_wan, tmp_path):
    """``diffkit video`` writes the library's videos (CFG 5 against "", noise from seed + i) byte for byte as an
    animated PNG grid, at the kind's 16 fps."""
    from PIL import Image

    from diffkit.images import to_uint8
    from diffkit.video import read_video
    _, path, model = tiny_wan
    assert main(_video_argv(path, tmp_path / "v.png", "--nrow", "1")) == 0
    videos = text_to_video(model, [PROMPT, "a dog"], steps=1, seed=3, num_frames=FRAMES, height=H, width=W)
    written = read_video(tmp_path / "v.png")
    for i in range(2):
        frames = written[:, :, 2 + i * (H + 2):2 + i * (H + 2) + H, 2:2 + W]
        assert (to_uint8(frames) == to_uint8(videos[i])).all()
    with Image.open(tmp_path / "v.png") as image:
        assert image.info["duration"] == 62.5  # 16 fps


@pytest.mark.parametrize("change, message", [
    ({"transformer": ["diffusers", "FluxTransformer2DModel"]}, "transformer is a 'FluxTransformer2DModel'"),
    ({"expand_timesteps": "yes"}, "expand_timesteps='yes'; allowed: true"),
    ({"boundary_ratio": 0.9}, "boundary_ratio=0.9 with transformer_2=None; allowed: a number in"),
])
def test_wan_folder_refusals(tiny_wan, tmp_path, change, message):
    _, path, _ = tiny_wan
    with pytest.raises(DiffkitError, match=message):
        check_wan_folder(changed_folder(path, tmp_path, "model_index.json", change))


@pytest.mark.parametrize("call, message", [
    (lambda m: check_frames(6), "num_frames=6 is not allowed; give 4 k"),
    (lambda m: text_to_video(m, PROMPT, height=24, width=W, num_frames=FRAMES), "height x width 24x32"),
    (lambda m: text_to_video(m, PROMPT, guidance_scale=1.0, negative_prompt="x"), "negative prompt with"),
    (lambda m: text_to_video(m, PROMPT, latents=torch.zeros(1, Z, 1, 2, 4), height=H, width=W, num_frames=FRAMES),
     "latents of shape"),
    (lambda m: text_to_video(m, PROMPT, guidance_scale_2=3.0), "guidance_scale_2=3.0 is not allowed"),
])
def test_wan_library_refusals(tiny_wan, call, message):
    with pytest.raises(DiffkitError, match=message):
        call(tiny_wan[2])


@pytest.mark.parametrize("argv, message", [
    (["video", "--frames", "6"], "num_frames=6 is not allowed"),
    (["video", "--height", "24"], "--height 24 is not allowed for a Wan folder"),
    (["video", "--image", "x.png"], "--image does not apply to a Wan folder"),
    (["video", "--guidance-scale-2", "2"], "--guidance-scale-2 applies to a Wan 2.2 A14B folder"),
    (["sample"], "WanPipeline folder, which diffkit sample does not take (it makes videos); generate videos with "
                 "diffkit video"),
    (["edit", "--images", "x.png"], "which diffkit edit does not take"),
])
def test_wan_command_refusals_are_one_line(tiny_wan, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    _, path, _ = tiny_wan
    prompt = ["--prompt", PROMPT] if argv[0] != "edit" else []
    assert main([argv[0], "--checkpoint", str(path), *prompt, *argv[1:], "--out", "new/v.png"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "new").exists()
