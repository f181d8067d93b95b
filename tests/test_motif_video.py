"""Motif-Video folders (diffkit.interop.motif_video, ``diffkit video``): text_to_video and image_to_video against
diffusers' own MotifVideoPipeline / MotifVideoImage2VideoPipeline on a tiny random folder (a 1-layer T5Gemma 2 encoder
of width 32 with a 1-layer vision tower of width 8 on 16 x 16 images, built from a config on the word-level Gemma
tokenizer; a 1 + 1-layer MotifVideoTransformer3DModel; Test-Wan's AutoencoderKLWan of z_dim 4 with non-trivial latents
mean / std; FlowMatchEuler with use_dynamic_shifting; a ClassifierFreeGuidance guider with guidance_rescale; 5 frames
-> 2 latent frames of 4 x 4; zero-initialised layers randomised; nothing downloaded)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.motif_video import (check_motif_video_folder, image_to_video, load_motif_video,  # noqa: E402
                                         text_to_video)

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from _sana_helpers import tiny_gemma_tokenizer  # noqa: E402
from _video_helpers import refused_in_one_line  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_wan import Z, randomised, tiny_wan_parts  # noqa: E402

H, W, FRAMES = 32, 32, 5  # latents 2 x 4 x 4: 2 x 2 x 2 patches
PROMPT, NEGATIVE = "a photo of a Cat", "blurry dog"
TOKENS = 12  # max_sequence_length (the pipeline's 512 costs time, not coverage)


def tiny_t5gemma2(tokenizer):
    """A T5Gemma2Encoder of random weights (text: width 32, 1 layer; vision: width 8, 1 layer, 16 x 16 images in
    8 x 8 patches), its zero-initialised parameters randomised."""
    vocab = len(tokenizer.get_vocab())
    config = transformers.T5Gemma2Config(
        encoder={"text_config": {"vocab_size": vocab + 8, "hidden_size": 32, "intermediate_size": 48,
                                 "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                                 "head_dim": 16, "max_position_embeddings": 64, "sliding_window": 64},
                 "vision_config": {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
                                   "num_attention_heads": 2, "image_size": 16, "patch_size": 8},
                 "mm_tokens_per_image": 4},
        decoder={"vocab_size": vocab + 8, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
                 "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16})
    return randomised(transformers.T5Gemma2Encoder(config.encoder, eoi_token_index=vocab + 1), seed=3).eval()


@pytest.fixture(scope="module")
def tiny_motif(tmp_path_factory):
    """(T2V pipeline, its folder, load_motif_video of it, I2V pipeline, its folder, load_motif_video of it): one
    set of parts saved as a MotifVideoPipeline and as a MotifVideoImage2VideoPipeline folder."""
    tokenizer = tiny_gemma_tokenizer()
    torch.manual_seed(0)
    encoder = tiny_t5gemma2(tokenizer)
    transformer = randomised(diffusers.MotifVideoTransformer3DModel(
        in_channels=2 * Z + 1, out_channels=Z, num_attention_heads=2, attention_head_dim=16, num_layers=1,
        num_single_layers=1, text_embed_dim=32, image_embed_dim=8, rope_axes_dim=(4, 6, 6)), seed=2)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=4,
                                                          max_image_seq_len=64, base_shift=0.3, max_shift=1.5)
    guider = diffusers.ClassifierFreeGuidance(guidance_scale=4.0, guidance_rescale=0.3)
    parts = {"scheduler": scheduler, "vae": tiny_wan_parts()["vae"], "text_encoder": encoder, "tokenizer": tokenizer,
             "transformer": transformer, "guider": guider}
    root = tmp_path_factory.mktemp("motif")
    diffusers.MotifVideoPipeline(**parts).save_pretrained(root / "t2v")
    diffusers.MotifVideoImage2VideoPipeline(
        **parts, feature_extractor=transformers.SiglipImageProcessor(size={"height": 16, "width": 16})
    ).save_pretrained(root / "i2v")
    return (*reloaded(root / "t2v", diffusers.MotifVideoPipeline, load_motif_video),
            *reloaded(root / "i2v", diffusers.MotifVideoImage2VideoPipeline, load_motif_video))


def _latents(batch=1, seed=7):
    return torch.randn(batch, Z, 2, H // 8, W // 8, generator=torch.Generator().manual_seed(seed))


def test_motif_video_matches_the_pipeline(tiny_motif):
    """Two prompts, the guider's CFG s = 4 with rescale 0.3 against two negative prompts, 2 flow Euler steps on the
    dynamically shifted grid: the same final latents (output_type="latent", read by a step callback) and decoded
    frames (output_type="pt") as MotifVideoPipeline from the same noise."""
    pipe, _, model = tiny_motif[:3]
    latents, final = _latents(2), {}
    prompts, negatives = [PROMPT, "a hot dog"], [NEGATIVE, "ugly"]
    with torch.no_grad():
        frames = pipe(prompts, negative_prompt=negatives, height=H, width=W, num_frames=FRAMES, num_inference_steps=2,
                      latents=latents, output_type="pt", max_sequence_length=TOKENS,
                      callback_on_step_end=lambda p, i, t, tensors: final.update(tensors) or {}).frames
    ours = text_to_video(model, prompts, negative_prompt=negatives, steps=2, latents=latents, num_frames=FRAMES,
                         height=H, width=W, max_sequence_length=TOKENS, return_latents=True)
    error = relative_error(ours, final["latents"])
    print(f"latents: {error:.2e}")
    assert error < 1e-5
    videos = (model.decode_video(ours) / 2 + 0.5).clamp(0, 1)
    assert videos.shape == frames.shape == (2, FRAMES, 3, H, W)
    error = relative_error(videos, frames)
    print(f"frames: {error:.2e}")
    assert error < 1e-5


def test_motif_image_to_video_matches_the_pipeline(tiny_motif):
    """One image and prompt, CFG against the default "" negative prompt, 2 steps, seed 5: the image's posterior
    draw after the noise from one generator, its SigLIP-tower states; the pipeline's final latents (read by a step
    callback) and frames."""
    pipe, _, model = tiny_motif[3:]
    image = (torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(3)) * 2 - 1)
    from diffkit.interop.qwen_image_edit import _pil_images
    pil, final = _pil_images(image)[0], {}
    with torch.no_grad():
        theirs = pipe(pil, PROMPT, height=H, width=W, num_frames=FRAMES, num_inference_steps=2, output_type="pt",
                      max_sequence_length=TOKENS, generator=torch.Generator().manual_seed(5),
                      callback_on_step_end=lambda p, i, t, tensors: final.update(tensors) or {}).frames
    ours = image_to_video(model, [pil], PROMPT, steps=2, num_frames=FRAMES, height=H, width=W,
                          max_sequence_length=TOKENS, seed=5, return_latents=True)
    error = relative_error(ours, final["latents"])
    print(f"i2v latents: {error:.2e}")
    assert error < 1e-5
    videos = (model.decode_video(ours) / 2 + 0.5).clamp(0, 1)
    assert videos.shape == theirs.shape == (1, FRAMES, 3, H, W)
    error = relative_error(videos, theirs)
    print(f"i2v frames: {error:.2e}")
    assert error < 1e-5


def test_motif_video_other_sampler_and_command(tiny_motif, tmp_path):
    """ddpm (ancestral) on the scheduler's grid runs (finite latents of the shape); ``diffkit video`` writes the
    library's frames (the guider's CFG against "", seed 3) as an APNG at 24 fps."""
    from diffkit.images import to_uint8
    from diffkit.video import read_video
    _, path, model = tiny_motif[:3]
    z = text_to_video(model, PROMPT, steps=2, num_frames=FRAMES, height=H, width=W, sampler="ddpm",
                      max_sequence_length=TOKENS, return_latents=True)
    assert z.shape == _latents().shape and bool(z.isfinite().all())
    out = tmp_path / "v.png"
    assert main(["video", "--checkpoint", str(path), "--prompt", PROMPT, "--steps", "1", "--seed", "3", "--frames",
                 str(FRAMES), "--height", str(H), "--width", str(W), "--out", str(out), "--no-progress"]) == 0
    video = text_to_video(model, PROMPT, steps=1, seed=3, num_frames=FRAMES, height=H, width=W)
    assert (to_uint8(read_video(out)[:, :, 2:2 + H, 2:2 + W]) == to_uint8(video[0])).all()


@pytest.mark.parametrize("part, change, message", [
    ("model_index.json", {"scheduler": ["diffusers", "UniPCMultistepScheduler"]},
     "scheduler is a 'UniPCMultistepScheduler'; allowed: FlowMatchEulerDiscreteScheduler"),
    ("transformer/config.json", {"in_channels": 8}, "in_channels=8; allowed: 9"),
    ("transformer/config.json", {"patch_size_t": 2}, "patch_size_t=2; allowed: 1"),
    ("scheduler/scheduler_config.json", {"stochastic_sampling": True}, "stochastic_sampling=True"),
    ("guider/guider_config.json", {"stop": 0.5}, "guider has stop=0.5"),
])
def test_motif_video_folder_refusals(tiny_motif, tmp_path, capsys, part, change, message):
    """A transformer, scheduler or guider diffkit does not drive: one line before any weight is read (the library's
    check and ``diffkit video``)."""
    _, path, _ = tiny_motif[:3]
    bad = changed_folder(path, tmp_path / "bad", part, change,
                         parts=("model_index.json", "scheduler", "transformer", "text_encoder", "tokenizer", "vae",
                                "guider"))
    with pytest.raises(DiffkitError, match=message.replace("(", r"\(")):
        check_motif_video_folder(bad)
    refused_in_one_line(capsys, tmp_path, "video", bad, [], message)


@pytest.mark.parametrize("args, message", [
    (["--frames", "6"], "num_frames=6 is not allowed; give 4 k + 1"),
    (["--height", "40"], "--height 40 is not allowed for a Motif-Video folder; give a multiple of 16"),
    (["--lora", "x.safetensors"], "--lora"),
    (["--guidance-scale", "1", "--guidance-convention", "diffusers", "--negative-prompt", "ugly"],
     "a negative prompt is not allowed here"),
])
def test_motif_video_request_refusals(tiny_motif, tmp_path, capsys, args, message):
    """Flags the kind refuses: one line, nothing written."""
    _, path, _ = tiny_motif[:3]
    refused_in_one_line(capsys, tmp_path, "video", path, args, message)


def test_motif_video_refused_elsewhere(tiny_motif, tmp_path, capsys):
    """``diffkit sample`` / ``diffkit edit`` on a MotifVideoPipeline folder: one line naming ``diffkit video``; the
    image-to-video folder without ``--image``, ``--guidance-scale`` on a folder whose guider is disabled: one line
    each; nothing written."""
    path, i2v = tiny_motif[1], tiny_motif[4]
    for command in ("sample", "edit"):
        refused_in_one_line(capsys, tmp_path, command, path, [],
                            f"which diffkit {command} does not take (it makes videos)")
    refused_in_one_line(capsys, tmp_path, "video", i2v, [], "folder (image-to-video): give --image PNG")
    off = changed_folder(path, tmp_path / "off", "guider/guider_config.json", {"enabled": False},
                         parts=("model_index.json", "scheduler", "transformer", "text_encoder", "tokenizer", "vae",
                                "guider"))
    refused_in_one_line(capsys, tmp_path, "video", off, ["--guidance-scale", "3"],
                        "guidance_scale=3.0 is not allowed: this Motif-Video folder's guider is disabled")
