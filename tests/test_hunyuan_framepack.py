"""HunyuanVideo FramePack folders (diffkit.interop.hunyuan_framepack, diffkit video): image_to_video against diffusers'
own HunyuanVideoFramepackPipeline on a tiny random folder (the 2-layer LlamaModel, 2-layer CLIPTextModel and 4-level
AutoencoderKLHunyuanVideo of tests/test_hunyuan_video.py, a HunyuanVideoFramepackTransformer3DModel of one dual- and
one single-stream block with the history embedder and image projection, a one-layer SiglipVisionModel of width 8 on
16 x 16 images, every zero-initialised weight randomised; nothing downloaded): 16 x 16 frames, latent windows of 2
frames, 9 frames asked (2 sections), 2 steps."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.hunyuan_framepack import (check_framepack_folder, image_to_video,  # noqa: E402
                                               load_hunyuan_framepack)

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from _hunyuan_video_helpers import tiny_hunyuan_text_encoders  # noqa: E402
from _video_helpers import refused_in_one_line  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

H = W = 16  # latents 2 x 2: one 2 x 2 patch per frame
FRAMES, STEPS, Z, WINDOW = 9, 2, 4, 2  # 9 frames of windows of 5: 2 sections of 2 latent frames
PROMPT, NEGATIVE = "a photo of a cat", "blurry dog"
SIZE = dict(num_frames=FRAMES, height=H, width=W, num_inference_steps=STEPS, latent_window_size=WINDOW)
OURS = dict(num_frames=FRAMES, height=H, width=W, steps=STEPS, latent_window_size=WINDOW)


def _randomise_zeros(module):
    with torch.no_grad():  # zero-initialised layers (modulations, gates, ...) randomised: a test must be able to fail
        for p in module.parameters():
            if not bool(p.any()):
                p.normal_(0, 0.2)
    return module


@pytest.fixture(scope="module")
def tiny_framepack(tmp_path_factory):
    """(HunyuanVideoFramepackPipeline.from_pretrained of the saved folder, the folder, load_hunyuan_framepack)."""
    root = tmp_path_factory.mktemp("framepack")
    llama_tokenizer, llama, clip_tokenizer, clip = tiny_hunyuan_text_encoders(root)
    transformer = _randomise_zeros(diffusers.HunyuanVideoFramepackTransformer3DModel(
        in_channels=Z, out_channels=Z, num_attention_heads=2, attention_head_dim=8, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True, text_embed_dim=16,
        pooled_projection_dim=8, rope_axes_dim=(2, 2, 4), has_image_proj=True, image_proj_dim=8,
        has_clean_x_embedder=True))
    siglip = _randomise_zeros(transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=16,
        patch_size=8)).eval())
    vae = diffusers.AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=Z, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4,
        mid_block_add_attention=True)
    pipe = diffusers.HunyuanVideoFramepackPipeline(
        text_encoder=llama, tokenizer=llama_tokenizer, transformer=transformer, vae=vae,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=clip,
        tokenizer_2=clip_tokenizer, image_encoder=siglip,
        feature_extractor=transformers.SiglipImageProcessor(size={"height": 16, "width": 16}))
    pipe.save_pretrained(root / "framepack")
    return reloaded(root / "framepack", diffusers.HunyuanVideoFramepackPipeline, load_hunyuan_framepack)


def _image(seed=0, size=(20, 24)):
    from PIL import Image
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _generators(seed, n=1):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_framepack_matches_the_pipeline(tiny_framepack):
    """inverted_anti_drifting (the default), 2 sections, embedded guidance 4.5, 2 flow Euler steps each: the generated
    latents (the last output_type="latent" entry) and the soft-appended decoded frames (output_type="pt")."""
    pipe, _, model = tiny_framepack
    image = _image()
    ref = pipe(image, prompt=PROMPT, guidance_scale=4.5, generator=_generators(3), output_type="latent",
               **SIZE).frames
    ours = image_to_video(model, image, PROMPT, guidance_scale=4.5, seed=3, return_latents=True, **OURS)
    assert ours.shape == ref[-1].shape == (1, Z, 2 * WINDOW + 1, H // 8, W // 8)
    assert relative_error(ours, ref[-1]) < 1e-5
    frames = pipe(image, prompt=PROMPT, guidance_scale=4.5, generator=_generators(3), output_type="pt", **SIZE).frames
    videos = image_to_video(model, image, PROMPT, guidance_scale=4.5, seed=3, output_range="0,1", **OURS)
    assert videos.shape == frames.shape
    assert relative_error(videos, frames) < 1e-5


@pytest.mark.parametrize("case", ["vanilla", "last_image_cfg"])
def test_framepack_vanilla_and_last_image(tiny_framepack, case):
    """vanilla sampling (history read from its end, 2 sections): the pipeline's latents of two videos (two images,
    two prompts, generators seed 5 and 6) and one video's frames; inverted anti-drifting with a last image and true CFG
    3 against a negative prompt: its latents, and another diffkit sampler (UniPC on its own grid) runs every section."""
    pipe, _, model = tiny_framepack
    if case == "vanilla":
        images, prompts = [_image(), _image(2)], [PROMPT, "a dog"]
        ref = pipe(images, prompt=prompts, generator=_generators(5, 2), output_type="latent", sampling_type="vanilla",
                   **SIZE).frames[-1]
        ours = image_to_video(model, images, prompts, seed=5, return_latents=True, sampling_type="vanilla", **OURS)
        assert ours.shape == ref.shape == (2, Z, 2 * WINDOW + 1, H // 8, W // 8)
        assert relative_error(ours, ref) < 1e-5
    image = _image()
    extra = dict(sampling_type="vanilla") if case == "vanilla" else \
        dict(last_image=_image(1), negative_prompt=NEGATIVE, true_cfg_scale=3.0)
    output = "pt" if case == "vanilla" else "latent"
    ref = pipe(image, prompt=PROMPT, generator=_generators(5), output_type=output, **SIZE, **extra).frames
    ref = ref[-1] if output == "latent" else ref
    ours = image_to_video(model, image, PROMPT, seed=5, return_latents=output == "latent", output_range="0,1",
                          **OURS, **extra)
    assert ours.shape == ref.shape
    assert relative_error(ours, ref) < 1e-5
    if case != "vanilla":
        other = image_to_video(model, image, PROMPT, sampler="unipc", return_latents=True, **OURS, **extra)
        assert other.shape == ours.shape and bool(other.isfinite().all())


def test_framepack_command_writes_the_library_videos(tiny_framepack, tmp_path, capsys):
    """``diffkit video`` with --latent-window-size and --last-image writes the library's videos: the --individual
    file read back equals the library's frames rounded to uint8, at the pipeline's 30 fps."""
    from diffkit.images import to_uint8
    from diffkit.video import read_video
    _, path, model = tiny_framepack
    _image().save(tmp_path / "first.png")
    _image(1).save(tmp_path / "last.png")
    argv = ["video", "--checkpoint", str(path), "--prompt", PROMPT, "--image", str(tmp_path / "first.png"),
            "--last-image", str(tmp_path / "last.png"), "--frames", str(FRAMES), "--height", str(H), "--width",
            str(W), "--steps", str(STEPS), "--latent-window-size", str(WINDOW), "--seed", "3", "--no-progress",
            "--out", str(tmp_path / "x.png"), "--individual", str(tmp_path / "each")]
    assert main(argv) == 0
    assert "30 fps" in capsys.readouterr().out
    videos = image_to_video(model, _image(), PROMPT, last_image=_image(1), seed=3, **OURS)
    each = read_video(tmp_path / "each" / "video_00000.png")
    assert (to_uint8(each) == to_uint8(videos[0])).all()


@pytest.mark.parametrize("args, message", [
    (["--sampling-type", "vanilla", "--last-image", "IMAGE"], "a last image is not allowed with sampling_type="
                                                              "'vanilla'"),
    (["--height", "40"], "height x width 40x1280 is not allowed"),
    (["--negative-prompt", NEGATIVE], "true CFG takes both"),
    (["--lora", "x.safetensors"], "--lora does not apply to a HunyuanVideo FramePack folder")])
def test_framepack_refusals_are_one_line(tiny_framepack, tmp_path, capsys, args, message):
    """Before any weight is read, nothing written: a last image with vanilla, a size not of 16, a lone negative
    prompt, --lora."""
    _, path, _ = tiny_framepack
    _image().save(tmp_path / "first.png")
    args = [str(tmp_path / "first.png") if a == "IMAGE" else a for a in args]
    refused_in_one_line(capsys, tmp_path, "video", path, ["--image", str(tmp_path / "first.png"), *args], message)


@pytest.mark.parametrize("part, change, message", [
    ("model_index.json", {"transformer": ["diffusers", "HunyuanVideoTransformer3DModel"]},
     "transformer is a 'HunyuanVideoTransformer3DModel'; allowed: HunyuanVideoFramepackTransformer3DModel"),
    ("transformer/config.json", {"has_clean_x_embedder": False}, "has_clean_x_embedder=False; allowed: true"),
    ("transformer/config.json", {"image_condition_type": "token_replace"}, "image_condition_type='token_replace'"),
    ("scheduler/scheduler_config.json", {"use_dynamic_shifting": True}, "use_dynamic_shifting")])
def test_framepack_folder_refusals(tiny_framepack, tmp_path, part, change, message):
    """Folders diffkit does not drive, from their JSON alone: another transformer class, no history embedder, an
    image-conditioned transformer, a dynamic-shifting scheduler; the library's unknown sampling type, window and frames
    no positive int."""
    _, path, model = tiny_framepack
    for options, expected in [({"sampling_type": "forward"}, "sampling_type='forward' is not allowed; choose one of"),
                              ({"latent_window_size": 0}, "latent_window_size=0 is not allowed"),
                              ({"num_frames": 2.5}, "num_frames=2.5 is not allowed")]:
        with pytest.raises(DiffkitError, match=expected):
            image_to_video(model, _image(), PROMPT, **{**OURS, **options})
    parts = ("model_index.json", "scheduler", "transformer", "text_encoder", "tokenizer", "text_encoder_2",
             "tokenizer_2", "vae", "image_encoder", "feature_extractor")
    with pytest.raises(DiffkitError, match=message) as err:
        check_framepack_folder(changed_folder(path, tmp_path, part, change, parts=parts))
    assert "\n" not in str(err.value)
