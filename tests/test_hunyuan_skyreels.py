"""SkyReels-V1 HunyuanVideo image-to-video folders (diffkit.interop.hunyuan_skyreels, diffkit video): image_to_video
against diffusers' own HunyuanSkyreelsImageToVideoPipeline on a tiny random folder of text-to-video's components (the
recipe of tests/test_hunyuan_video.py: a 2-layer LlamaModel of width 16, a 2-layer CLIPTextModel of width 8, the
4-level AutoencoderKLHunyuanVideo of width 8) with a HunyuanVideoTransformer3DModel of 2 C input channels, guidance
embeds and every zero-initialised weight randomised; nothing downloaded: 9 frames (3 latent frames) of 32 x 32, 2
steps."""
import re

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.hunyuan_skyreels import (check_hunyuan_skyreels_folder, image_to_video,  # noqa: E402
                                              load_hunyuan_skyreels)

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from _hunyuan_video_helpers import tiny_hunyuan_text_encoders  # noqa: E402
from _video_helpers import refused_in_one_line  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

H = W = 32
FRAMES, STEPS, Z = 9, 2, 4
PROMPT, NEGATIVE = "a photo of a cat", "blurry dog"
SIZE = dict(num_frames=FRAMES, height=H, width=W, num_inference_steps=STEPS)
OURS = dict(num_frames=FRAMES, height=H, width=W, steps=STEPS)


@pytest.fixture(scope="module")
def tiny_skyreels(tmp_path_factory):
    """(HunyuanSkyreelsImageToVideoPipeline.from_pretrained of the saved folder, the folder, diffkit's load)."""
    root = tmp_path_factory.mktemp("skyreels")
    llama_tokenizer, llama, clip_tokenizer, clip = tiny_hunyuan_text_encoders(root)
    transformer = diffusers.HunyuanVideoTransformer3DModel(
        in_channels=2 * Z, out_channels=Z, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 2, 4))
    with torch.no_grad():  # zero-initialised layers (modulations, gates, ...) randomised: a test must be able to fail
        for p in transformer.parameters():
            if not bool(p.any()):
                p.normal_(0, 0.2)
    vae = diffusers.AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=Z, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4,
        mid_block_add_attention=True)
    pipe = diffusers.HunyuanSkyreelsImageToVideoPipeline(
        text_encoder=llama, tokenizer=llama_tokenizer, transformer=transformer, vae=vae,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=clip,
        tokenizer_2=clip_tokenizer)
    pipe.save_pretrained(root / "skyreels")
    return reloaded(root / "skyreels", diffusers.HunyuanSkyreelsImageToVideoPipeline, load_hunyuan_skyreels)


def _image(seed=0, size=(40, 36)):
    from PIL import Image
    return Image.fromarray((np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype(np.uint8))


def test_skyreels_matches_the_pipeline(tiny_skyreels):
    """Embedded guidance 3, a negative prompt alone (true CFG at the pipeline's default 6), generator seed 5 (the
    image's posterior drawn before the noise): the final latents (output_type="latent") and decoded frames
    (output_type="pt", in [0, 1]) as the pipeline's; another diffkit sampler (unipc) on its own grid runs."""
    pipe, _, model = tiny_skyreels
    image = _image()
    for output in ("latent", "pt"):
        ref = pipe(image, PROMPT, negative_prompt=NEGATIVE, guidance_scale=3.0, output_type=output,
                   generator=torch.Generator().manual_seed(5), **SIZE).frames
        ours = image_to_video(model, image, PROMPT, negative_prompt=NEGATIVE, guidance_scale=3.0, seed=5,
                              return_latents=output == "latent", output_range="0,1", **OURS)
        assert ours.shape == ref.shape
        assert relative_error(ours, ref) < 1e-5
    other = image_to_video(model, image, PROMPT, sampler="unipc", return_latents=True, **OURS)
    assert other.shape == (1, Z, 3, H // 8, W // 8) and bool(other.isfinite().all())


def test_skyreels_command_writes_the_library_videos(tiny_skyreels, tmp_path, capsys):
    """``diffkit video --image`` writes the library's videos (the --individual APNG read back, uint8)."""
    from diffkit.images import to_uint8
    from diffkit.video import read_video
    _, path, model = tiny_skyreels
    _image(2).save(tmp_path / "in.png")
    assert main(["video", "--checkpoint", str(path), "--image", str(tmp_path / "in.png"), "--prompt", PROMPT,
                 "--frames", "5", "--height", str(H), "--width", str(W), "--steps", str(STEPS), "--seed", "3",
                 "--no-progress", "--out", str(tmp_path / "x.png"), "--individual", str(tmp_path / "each")]) == 0
    assert "15 fps" in capsys.readouterr().out
    videos = image_to_video(model, _image(2), PROMPT, seed=3, **{**OURS, "num_frames": 5})
    assert (to_uint8(read_video(tmp_path / "each" / "video_00000.png")) == to_uint8(videos[0])).all()


@pytest.mark.parametrize("args, message", [
    ([], "SkyReels image-to-video folder (image-to-video): give --image PNG"),
    (["--frames", "6"], "num_frames=6 is not allowed; give 4 k + 1"),
    (["--height", "40"], "height x width 40x960 is not allowed"),
    (["--negative-prompt", NEGATIVE, "--true-cfg-scale", "1"], "true CFG takes both"),
    (["--lora", "x.safetensors"], "--lora does not apply to a SkyReels image-to-video folder"),
])
def test_skyreels_command_refusals_are_one_line(tiny_skyreels, tmp_path, capsys, monkeypatch, args, message):
    """Before any weight is read, nothing written."""
    monkeypatch.chdir(tmp_path)
    _image().save(tmp_path / "in.png")
    image = [] if "give --image" in message else ["--image", "in.png"]
    refused_in_one_line(capsys, tmp_path, "video", tiny_skyreels[1], image + args, message)


def test_skyreels_folder_refusals_are_one_line(tiny_skyreels, tmp_path):
    """From the folder's JSON alone: an image_condition_type, C input channels, another text encoder class."""
    path = tiny_skyreels[1]
    parts = ("model_index.json", "scheduler", "transformer", "text_encoder", "tokenizer", "text_encoder_2",
             "tokenizer_2", "vae")
    for part, change, expected in [
            ("transformer/config.json", {"image_condition_type": "latent_concat"},
             "image_condition_type='latent_concat'; allowed: None"),
            ("transformer/config.json", {"in_channels": Z}, "in_channels, out_channels = 4, 4"),
            ("model_index.json", {"text_encoder": ["transformers", "LlavaForConditionalGeneration"]},
             "allowed: LlamaModel")]:
        bad = changed_folder(path, tmp_path, part, change, parts=parts)
        with pytest.raises(DiffkitError, match=re.escape(expected)) as err:
            check_hunyuan_skyreels_folder(bad)
        assert "\n" not in str(err.value)
