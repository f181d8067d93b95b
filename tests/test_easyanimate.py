"""EasyAnimate folders (diffkit.interop.easyanimate, diffkit video): text_to_video against diffusers' own
EasyAnimatePipeline on a tiny random folder (a 2-layer Qwen2VLForConditionalGeneration of width 16 on the byte-level
BPE tokenizer of tests/_qwen_image_helpers.py with a Qwen-style chat template, an EasyAnimateTransformer3DModel of one
MMDiT and one plain block with every zero-initialised weight randomised, a 3-level AutoencoderKLMagvit of width 8 (4 x
spatial, 2 x temporal), FlowMatchEuler with use_dynamic_shifting (the pipeline's mu = 1); nothing downloaded): 5
frames (3 latent frames) of 16 x 16, 2 steps. EasyAnimateInpaintPipeline: the same parts with an inpainting
transformer (2 C + 1 input channels) and cache_mag_vae in the VAE config, driven as its documented image-to-video use
(get_image_to_video_latent of a 20 x 24 random image)."""
import json
import shutil

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.easyanimate import check_easyanimate_folder, load_easyanimate, text_to_video  # noqa: E402
from diffkit.interop.easyanimate_inpaint import image_to_video, load_easyanimate_inpaint  # noqa: E402

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from _qwen_image_helpers import tiny_qwen_tokenizer  # noqa: E402
from _video_helpers import refused_in_one_line  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

H = W = 16  # latents 4 x 4: 2 x 2 patches per frame
FRAMES, STEPS, Z = 5, 2, 4  # 3 latent frames; the VAE's latent channels
PROMPT, NEGATIVE = "a hot cat", "a dog"
SIZE = dict(num_frames=FRAMES, height=H, width=W, num_inference_steps=STEPS)
OURS = dict(num_frames=FRAMES, height=H, width=W, steps=STEPS)
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for part in message['content'] %}"
                 "{{ part['text'] }}{% endfor %}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tiny_easyanimate(tmp_path_factory):
    """(EasyAnimatePipeline.from_pretrained of the saved folder, the folder, load_easyanimate of it)."""
    root = tmp_path_factory.mktemp("easyanimate")
    tokenizer = tiny_qwen_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    n = len(tokenizer)
    torch.manual_seed(0)
    encoder = transformers.Qwen2VLForConditionalGeneration(transformers.Qwen2VLConfig(
        text_config=dict(vocab_size=n, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=n - 2, eos_token_id=n - 1,
                         rope_parameters={"rope_theta": 10000.0, "rope_type": "default", "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, embed_dim=8, hidden_size=16, mlp_ratio=2, num_heads=2, patch_size=2,
                           spatial_merge_size=1, temporal_patch_size=1),
        image_token_id=n + 1, video_token_id=n + 2, vision_start_token_id=n + 3, vision_end_token_id=n + 4)).eval()
    transformer = diffusers.EasyAnimateTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=Z, out_channels=Z, patch_size=2, num_layers=2,
        mmdit_layers=1, time_embed_dim=16, text_embed_dim=16)
    with torch.no_grad():  # zero-initialised layers (modulations, gates, ...) randomised: a test must be able to fail
        for p in transformer.parameters():
            if not bool(p.any()):
                p.normal_(0, 0.2)
    vae = diffusers.AutoencoderKLMagvit(
        latent_channels=Z, block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=4,
        down_block_types=("SpatialDownBlock3D",) + ("SpatialTemporalDownBlock3D",) * 2,
        up_block_types=("SpatialUpBlock3D",) + ("SpatialTemporalUpBlock3D",) * 2)
    pipe = diffusers.EasyAnimatePipeline(vae=vae, text_encoder=encoder, tokenizer=tokenizer, transformer=transformer,
                                         scheduler=diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True))
    pipe.save_pretrained(root / "easyanimate")
    return reloaded(root / "easyanimate", diffusers.EasyAnimatePipeline, load_easyanimate)


@pytest.fixture(scope="module")
def tiny_easyanimate_inpaint(tiny_easyanimate, tmp_path_factory):
    """(EasyAnimateInpaintPipeline.from_pretrained, its folder, load_easyanimate_inpaint of it, a PIL image): the
    text-to-video folder's parts with an inpainting transformer, cache_mag_vae true in the VAE config."""
    from PIL import Image
    _, folder, _ = tiny_easyanimate
    root = tmp_path_factory.mktemp("easyanimate_inpaint") / "inpaint"
    root.mkdir()
    torch.manual_seed(1)
    transformer = diffusers.EasyAnimateTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=2 * Z + 1, out_channels=Z, patch_size=2,
        num_layers=2, mmdit_layers=1, time_embed_dim=16, text_embed_dim=16)
    with torch.no_grad():
        for p in transformer.parameters():
            if not bool(p.any()):
                p.normal_(0, 0.2)
    transformer.save_pretrained(root / "transformer")  # the other parts the text-to-video folder's (linked)
    for part in ("text_encoder", "tokenizer", "scheduler"):
        (root / part).symlink_to(folder / part)
    (root / "vae").mkdir()
    (root / "vae" / "diffusion_pytorch_model.safetensors").symlink_to(
        folder / "vae" / "diffusion_pytorch_model.safetensors")
    config = json.loads((folder / "vae" / "config.json").read_text())
    (root / "vae" / "config.json").write_text(json.dumps({**config, "cache_mag_vae": True}))
    index = json.loads((folder / "model_index.json").read_text())
    (root / "model_index.json").write_text(json.dumps({**index, "_class_name": "EasyAnimateInpaintPipeline"}))
    image = Image.fromarray((np.random.RandomState(0).rand(20, 24, 3) * 255).astype(np.uint8))
    return reloaded(root, diffusers.EasyAnimateInpaintPipeline, load_easyanimate_inpaint) + (image,)


def test_easyanimate_inpaint_image_to_video_matches_the_pipeline(tiny_easyanimate_inpaint):
    """The image the first frame (get_image_to_video_latent's video and mask), noise augmentation 0.0563 drawn after
    the latent noise from generator seed, CFG s = 4 against a negative prompt: the final latents; the default
    negative prompt "" (the pipeline given "") and s = 5: the decoded frames; a text-to-video call on the folder is
    one line."""
    from diffusers.pipelines.easyanimate.pipeline_easyanimate_inpaint import get_image_to_video_latent
    pipe, _, model, image = tiny_easyanimate_inpaint
    video, mask = get_image_to_video_latent(image, None, FRAMES, (H, W))
    ref = pipe(PROMPT, video=video, mask_video=mask, negative_prompt=NEGATIVE, guidance_scale=4.0,
               generator=torch.Generator().manual_seed(5), output_type="latent", **SIZE).frames
    ours = image_to_video(model, image, PROMPT, negative_prompt=NEGATIVE, guidance_scale=4.0, seed=5,
                          return_latents=True, **OURS)
    assert ours.shape == ref.shape == (1, Z, 3, H // 4, W // 4)
    assert relative_error(ours, ref) < 1e-5
    frames = pipe(PROMPT, video=video, mask_video=mask, negative_prompt="", generator=torch.Generator().manual_seed(6),
                  output_type="pt", **SIZE).frames
    videos = image_to_video(model, [image], PROMPT, seed=6, output_range="0,1", **OURS)
    assert videos.shape == frames.shape == (1, FRAMES, 3, H, W)
    assert relative_error(videos, frames) < 1e-5
    with pytest.raises(DiffkitError, match="text_to_video needs an EasyAnimatePipeline folder"):
        text_to_video(model, PROMPT, **OURS)


def test_easyanimate_inpaint_command_writes_the_library_videos(tiny_easyanimate_inpaint, tmp_path, capsys):
    """``diffkit video --image`` on the inpainting folder writes the library's image-to-video frames (8-bit); without
    --image it is one line, as diffkit sample on the folder."""
    from diffkit.images import to_uint8
    from diffkit.video import read_video
    _, path, model, image = tiny_easyanimate_inpaint
    image.save(tmp_path / "first.png")
    argv = ["video", "--checkpoint", str(path), "--prompt", PROMPT, "--image", str(tmp_path / "first.png"),
            "--frames", str(FRAMES), "--height", str(H), "--width", str(W), "--steps", str(STEPS), "--seed", "3",
            "--no-progress", "--out", str(tmp_path / "x.png"), "--individual", str(tmp_path / "each")]
    assert main(argv) == 0
    videos = image_to_video(model, image, PROMPT, seed=3, **OURS)
    assert (to_uint8(read_video(tmp_path / "each" / "video_00000.png")) == to_uint8(videos[0])).all()
    refused_in_one_line(capsys, tmp_path, "video", path, [], "--image")
    refused_in_one_line(capsys, tmp_path, "sample", path, [], "EasyAnimateInpaintPipeline folder, which diffkit "
                                                              "sample does not take (it makes videos)")


def _latents(batch=1, seed=7):
    return torch.randn(batch, Z, 3, H // 4, W // 4, generator=torch.Generator().manual_seed(seed))


def test_easyanimate_matches_the_pipeline(tiny_easyanimate):
    """CFG s = 4 against a negative prompt, 2 flow Euler steps on the scheduler's mu = 1 sigmas: two prompts' final
    latents (output_type="latent", video i's noise from generator seed + i; the pipeline's view of one negative
    prompt's states for two prompts fails, so it gets the list) and, with the default negative prompt
    "", the decoded frames (output_type="pt", (B, T, C, H, W) in [0, 1]) as EasyAnimatePipeline's; a diffkit sampler
    (unipc) alone runs on its own grid of the folder's flow schedule."""
    pipe, _, model = tiny_easyanimate
    prompts = [PROMPT, "a dog"]
    generators = [torch.Generator().manual_seed(5 + i) for i in range(2)]
    ref = pipe(prompts, negative_prompt=[NEGATIVE] * 2, guidance_scale=4.0, generator=generators, output_type="latent",
               **SIZE).frames
    ours = text_to_video(model, prompts, negative_prompt=NEGATIVE, guidance_scale=4.0, seed=5, return_latents=True,
                         **OURS)
    assert ours.shape == ref.shape == (2, Z, 3, H // 4, W // 4)
    assert relative_error(ours, ref) < 1e-5
    latents = _latents()
    frames = pipe(PROMPT, negative_prompt="", latents=latents.clone(), output_type="pt", **SIZE).frames
    videos = text_to_video(model, PROMPT, latents=latents.clone(), output_range="0,1", **OURS)
    assert videos.shape == frames.shape == (1, FRAMES, 3, H, W)
    assert relative_error(videos, frames) < 1e-5
    other = text_to_video(model, PROMPT, sampler="unipc", return_latents=True, **OURS)  # its own grid
    assert other.shape == (1, Z, 3, H // 4, W // 4) and bool(other.isfinite().all())


def test_easyanimate_command_writes_the_library_videos(tiny_easyanimate, tmp_path, capsys):
    """``diffkit video`` (8 fps, CFG 3 against --negative-prompt) writes the library's videos: the APNG grid and the
    --individual file read back equal the library's frames rounded to uint8."""
    from diffkit.images import to_uint8
    from diffkit.video import grid_frames, read_video
    _, path, model = tiny_easyanimate
    argv = ["video", "--checkpoint", str(path), "--prompt", PROMPT, "--negative-prompt", NEGATIVE, "--frames",
            str(FRAMES), "--height", str(H), "--width", str(W), "--steps", str(STEPS), "--guidance-scale", "3",
            "--guidance-convention", "diffusers", "--seed", "3", "--no-progress", "--out", str(tmp_path / "x.png"),
            "--individual", str(tmp_path / "each")]
    assert main(argv) == 0
    assert "8 fps" in capsys.readouterr().out
    videos = text_to_video(model, PROMPT, negative_prompt=NEGATIVE, guidance_scale=3.0, seed=3, **OURS)
    each = read_video(tmp_path / "each" / "video_00000.png")
    assert (to_uint8(each) == to_uint8(videos[0])).all()
    grid = read_video(tmp_path / "x.png")
    assert (to_uint8(grid) == np.stack(grid_frames(videos, 4))).all()


@pytest.mark.parametrize("args, expected", [
    (["--frames", "4"], "num_frames=4 is not allowed; give 2 k + 1"),
    (["--height", "40"], "height x width 40x512 is not allowed"),
    (["--negative-prompt", NEGATIVE, "--guidance-scale", "0"], "a negative prompt with guidance_scale=0 (seed"),
    (["--image", "a.png"], "--image does not apply to an EasyAnimate folder"),
    (["--lora", "a.safetensors"], "--lora does not apply to an EasyAnimate folder")])
def test_easyanimate_command_refusals_are_one_line(tiny_easyanimate, tmp_path, capsys, args, expected):
    """Before any weight is read, nothing written: frames not 1 + 2 k (the tiny VAE's temporal ratio 2), a size not
    of 16, a negative prompt with CFG off, flags the kind does not take."""
    _, path, _ = tiny_easyanimate
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "a.safetensors").write_bytes(b"")
    args = [str(tmp_path / a) if a.startswith("a.") else a for a in args]
    refused_in_one_line(capsys, tmp_path, "video", path, args, expected)


def test_easyanimate_folder_refusals_are_one_line(tiny_easyanimate, tiny_easyanimate_inpaint, tmp_path, capsys):
    """From the JSON alone: diffkit sample on the folder (naming diffkit video); another transformer class, an
    inpainting transformer's channels, no text attention mask, a stochastic scheduler, a tokenizer without a chat
    template; an inpainting folder with a plain transformer's channels, a VAE-encoded mask, no cache_mag_vae."""
    _, path, _ = tiny_easyanimate
    refused_in_one_line(capsys, tmp_path, "sample", path, [], "EasyAnimatePipeline folder, which diffkit sample "
                                                              "does not take (it makes videos)")
    for part, change, expected in [
            ("model_index.json", {"transformer": ["diffusers", "WanTransformer3DModel"]},
             "transformer is a 'WanTransformer3DModel'; allowed: EasyAnimateTransformer3DModel"),
            ("transformer/config.json", {"in_channels": 2 * Z + 1}, "in_channels, out_channels = 9, 4"),
            ("transformer/config.json", {"enable_text_attention_mask": False}, "enable_text_attention_mask=false"),
            ("scheduler/scheduler_config.json", {"stochastic_sampling": True}, "stochastic_sampling=True")]:
        with pytest.raises(DiffkitError, match=expected) as err:
            check_easyanimate_folder(changed_folder(path, tmp_path, part, change))
        assert "\n" not in str(err.value)
    _, inpaint, _, _ = tiny_easyanimate_inpaint
    inpainting = "EasyAnimateInpaintPipeline"
    for part, change, expected in [
            ("transformer/config.json", {"in_channels": Z}, "in_channels, out_channels = 4, 4; allowed: 9, 4"),
            ("transformer/config.json", {"resize_inpaint_mask_directly": False}, "resize_inpaint_mask_directly"),
            ("vae/config.json", {"cache_mag_vae": None}, "cache_mag_vae=None")]:
        with pytest.raises(DiffkitError, match=expected) as err:
            check_easyanimate_folder(changed_folder(inpaint, tmp_path, part, change), inpainting)
        assert "\n" not in str(err.value)
    bare = tmp_path / "bare"
    shutil.copytree(path, bare)
    (bare / "tokenizer" / "chat_template.jinja").unlink()
    with pytest.raises(DiffkitError, match="has no chat template") as err:
        check_easyanimate_folder(bare)
    assert "\n" not in str(err.value)
