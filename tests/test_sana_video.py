"""SANA-Video folders (diffkit.interop.sana_video, ``diffkit video``): text_to_video and image_to_video against
diffusers' own SanaVideoPipeline / SanaImageToVideoPipeline on a tiny random folder (a 2-layer Gemma-2 of width 32 on
a word-level tokenizer: its second layer attends globally, so the whole instruction counts, not only the first's
64-token window; a 1-layer SanaVideoTransformer3DModel, a Wan 2.1 AutoencoderKLWan of z_dim 4 with non-trivial
latents mean / std, the flow DPM-Solver, or FlowMatchEuler for image-to-video; 5 frames -> 2 latent frames of 4 x 4;
zero-initialised layers randomised; nothing downloaded)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.sana_video import check_sana_video_folder, load_sana_video, text_to_video  # noqa: E402

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from _sana_helpers import tiny_gemma, tiny_gemma_tokenizer  # noqa: E402
from _video_helpers import refused_in_one_line  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_wan import Z, randomised, tiny_wan_parts  # noqa: E402

H, W, FRAMES = 32, 32, 5  # latents 2 x 4 x 4: 2 x 2 x 2 patches
PROMPT, NEGATIVE = "a photo of a Cat", "blurry dog"
TOKENS = 24  # max_sequence_length (the pipeline's 300 costs time, not coverage)


@pytest.fixture(scope="module")
def tiny_sana_video(tmp_path_factory):
    """(SanaVideoPipeline.from_pretrained of the saved folder, the folder, load_sana_video of it)."""
    tokenizer = tiny_gemma_tokenizer()
    torch.manual_seed(0)
    gemma = randomised(tiny_gemma(tokenizer, layers=2))
    transformer = randomised(diffusers.SanaVideoTransformer3DModel(
        in_channels=Z, out_channels=Z, num_attention_heads=2, attention_head_dim=12, num_layers=1,
        num_cross_attention_heads=2, cross_attention_head_dim=12, cross_attention_dim=24, caption_channels=32,
        mlp_ratio=2.0, sample_size=4, patch_size=(1, 2, 2), rope_max_seq_len=32), seed=2)
    scheduler = diffusers.DPMSolverMultistepScheduler(flow_shift=8.0, use_flow_sigmas=True,
                                                      prediction_type="flow_prediction")
    parts = tiny_wan_parts()
    root = tmp_path_factory.mktemp("sana_video")
    diffusers.SanaVideoPipeline(tokenizer=tokenizer, text_encoder=gemma, vae=parts["vae"], transformer=transformer,
                                scheduler=scheduler).save_pretrained(root / "sv")
    return reloaded(root / "sv", diffusers.SanaVideoPipeline, load_sana_video)


def _latents(batch=1, seed=7):
    return torch.randn(batch, Z, 2, H // 8, W // 8, generator=torch.Generator().manual_seed(seed))


def test_sana_video_matches_the_pipeline(tiny_sana_video):
    """Two prompts, CFG s = 4 against two negative prompts, 3 flow DPM-Solver++(2M) steps, the video instruction:
    the same final latents and decoded frames (B, T, C, H, W) in [0, 1] as SanaVideoPipeline from the same noise
    (its final latents read by a step callback)."""
    pipe, _, model = tiny_sana_video
    latents, final = _latents(2), {}
    kw = {"negative_prompt": [NEGATIVE, "ugly"], "guidance_scale": 4.0, "height": H, "width": W,
          "max_sequence_length": TOKENS}
    prompts = [PROMPT, "a hot dog"]
    with torch.no_grad():
        frames = pipe(prompts, num_inference_steps=3, latents=latents, output_type="pt", frames=FRAMES,
                      use_resolution_binning=False,
                      callback_on_step_end=lambda p, i, t, tensors: final.update(tensors) or {}, **kw).frames
    ours = text_to_video(model, prompts, steps=3, latents=latents, num_frames=FRAMES, return_latents=True, **kw)
    error = relative_error(ours, final["latents"])
    print(f"latents: {error:.2e}")
    assert error < 1e-5
    videos = (model.decode_video(ours) / 2 + 0.5).clamp(0, 1)
    assert videos.shape == frames.shape == (2, FRAMES, 3, H, W)
    error = relative_error(videos, frames)
    print(f"frames: {error:.2e}")
    assert error < 1e-5


def test_sana_video_unguided_other_sampler_and_command(tiny_sana_video, tmp_path):
    """s = 1 (one unguided call), no instruction, 2 steps: the pipeline's latents (output_type="latent"); heun on the
    scheduler's grid runs; ``diffkit video`` writes the library's frames (CFG 6 against "", seed 3) at 16 fps."""
    from diffkit.images import to_uint8
    from diffkit.video import read_video
    pipe, path, model = tiny_sana_video
    latents = _latents()
    kw = {"guidance_scale": 1.0, "height": H, "width": W, "max_sequence_length": TOKENS,
          "complex_human_instruction": None}
    with torch.no_grad():
        theirs = pipe(PROMPT, num_inference_steps=2, latents=latents, output_type="latent", frames=FRAMES,
                      use_resolution_binning=False, **kw).frames
    error = relative_error(text_to_video(model, PROMPT, steps=2, latents=latents, num_frames=FRAMES,
                                         return_latents=True, **kw), theirs)
    print(f"unguided latents: {error:.2e}")
    assert error < 1e-5
    z = text_to_video(model, PROMPT, steps=2, num_frames=FRAMES, sampler="heun", return_latents=True, **kw)
    assert z.shape == latents.shape and bool(z.isfinite().all())
    out = tmp_path / "v.png"
    assert main(["video", "--checkpoint", str(path), "--prompt", PROMPT, "--steps", "1", "--seed", "3", "--frames",
                 str(FRAMES), "--height", str(H), "--width", str(W), "--out", str(out), "--no-progress"]) == 0
    video = text_to_video(model, PROMPT, steps=1, seed=3, num_frames=FRAMES, height=H, width=W)
    assert (to_uint8(read_video(out)[:, :, 2:2 + H, 2:2 + W]) == to_uint8(video[0])).all()


@pytest.mark.parametrize("part, change, message", [
    ("model_index.json", {"vae": ["diffusers", "AutoencoderDC"]},
     "vae is a 'AutoencoderDC'; allowed: AutoencoderKLWan"),
    ("transformer/config.json", {"guidance_embeds": True}, "guidance_embeds=True; allowed: false"),
    ("transformer/config.json", {"in_channels": 8}, "in_channels=8; allowed: 4"),
    ("scheduler/scheduler_config.json", {"prediction_type": "epsilon"}, "prediction_type='epsilon'"),
])
def test_sana_video_folder_refusals(tiny_sana_video, tmp_path, capsys, part, change, message):
    """A VAE, transformer or scheduler diffkit does not drive: one line before any weight is read (the library's
    check and ``diffkit video``)."""
    _, path, _ = tiny_sana_video
    bad = changed_folder(path, tmp_path / "bad", part, change)
    with pytest.raises(DiffkitError, match=message.replace("(", r"\(")):
        check_sana_video_folder(bad)
    refused_in_one_line(capsys, tmp_path, "video", bad, [], message)


@pytest.mark.parametrize("args, message", [
    (["--frames", "6"], "num_frames=6 is not allowed; give 4 k + 1"),
    (["--height", "48"], "--height 48 is not allowed for a SANA-Video folder; give a multiple of 32"),
    (["--lora", "x.safetensors"], "--lora"),
    (["--guidance-scale", "1", "--guidance-convention", "diffusers", "--negative-prompt", "ugly"],
     "a negative prompt with guidance_scale=1"),
])
def test_sana_video_request_refusals(tiny_sana_video, tmp_path, capsys, args, message):
    """Flags the kind refuses: one line, nothing written."""
    _, path, _ = tiny_sana_video
    refused_in_one_line(capsys, tmp_path, "video", path, args, message)


def test_sana_video_sample_and_edit_refused(tiny_sana_video, tmp_path, capsys):
    """``diffkit sample`` / ``diffkit edit`` on a SanaVideoPipeline folder (a ``Sana...Pipeline`` name): one line
    naming ``diffkit video``, nothing written."""
    _, path, _ = tiny_sana_video
    for command in ("sample", "edit"):
        refused_in_one_line(capsys, tmp_path, command, path, [],
                            f"which diffkit {command} does not take (it makes videos)")


@pytest.fixture(scope="module")
def tiny_sana_i2v(tiny_sana_video, tmp_path_factory):
    """(SanaImageToVideoPipeline.from_pretrained, the folder, load_sana_video) of the tiny folder named
    SanaImageToVideoPipeline with a FlowMatchEuler scheduler (shift 3; the network called at s T, not floored)."""
    _, path, _ = tiny_sana_video
    root = tmp_path_factory.mktemp("sana_i2v")
    folder = changed_folder(path, root, "model_index.json", {
        "_class_name": "SanaImageToVideoPipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]})
    (folder / "scheduler").unlink()
    diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(folder / "scheduler")
    return reloaded(folder, diffusers.SanaImageToVideoPipeline, load_sana_video)


def _image(seed=3):
    from PIL import Image
    pixels = torch.randint(0, 256, (24, 40, 3), generator=torch.Generator().manual_seed(seed)).to(torch.uint8)
    return Image.fromarray(pixels.numpy())


def test_sana_image_to_video_matches_the_pipeline(tiny_sana_i2v):
    """SanaImageToVideoPipeline: a 40 x 24 image resized to 32 x 32 the kept first latent frame (timestep 0 on its
    tokens), two prompts, CFG 3 against a negative prompt, 2 FlowMatchEuler steps: its final latents and frames."""
    from diffkit.interop.sana_video import image_to_video
    pipe, _, model = tiny_sana_i2v
    latents, final = _latents(2), {}
    kw = {"negative_prompt": NEGATIVE, "guidance_scale": 3.0, "height": H, "width": W,
          "max_sequence_length": TOKENS}
    prompts = [PROMPT, "a hot dog"]
    with torch.no_grad():
        frames = pipe(_image(), prompts, num_inference_steps=2, latents=latents.clone(), output_type="pt",
                      frames=FRAMES, use_resolution_binning=False,
                      callback_on_step_end=lambda p, i, t, tensors: final.update(tensors) or {}, **kw).frames
    ours = image_to_video(model, _image(), prompts, steps=2, latents=latents, num_frames=FRAMES, return_latents=True,
                          **kw)
    error = relative_error(ours, final["latents"])
    print(f"i2v latents: {error:.2e}")
    assert error < 1e-5
    error = relative_error((model.decode_video(ours) / 2 + 0.5).clamp(0, 1), frames)
    print(f"i2v frames: {error:.2e}")
    assert error < 1e-5


def test_sana_video_image_command(tiny_sana_video, tiny_sana_i2v, tmp_path, capsys):
    """``diffkit video --image`` on the SanaVideoPipeline folder (SanaImageToVideoPipeline.from_pretrained of it, as
    diffusers' example) writes the library's image-to-video frames; a SanaImageToVideoPipeline folder without
    --image: one line."""
    from diffkit.images import to_uint8
    from diffkit.interop.sana_video import image_to_video
    from diffkit.video import read_video
    _, path, model = tiny_sana_video
    _image().save(tmp_path / "a.png")
    out = tmp_path / "v.png"
    assert main(["video", "--checkpoint", str(path), "--image", str(tmp_path / "a.png"), "--prompt", PROMPT,
                 "--steps", "1", "--frames", str(FRAMES), "--height", str(H), "--width", str(W), "--out", str(out),
                 "--no-progress"]) == 0
    video = image_to_video(model, _image(), PROMPT, steps=1, num_frames=FRAMES, height=H, width=W)
    assert (to_uint8(read_video(out)[:, :, 2:2 + H, 2:2 + W]) == to_uint8(video[0])).all()
    refused_in_one_line(capsys, tmp_path, "video", tiny_sana_i2v[1], [], "--image")


def test_sana_video_unipc_folder(tiny_sana_video, tmp_path):
    """The folder's scheduler a flow UniPC (shift 5; diffkit's ``unipc``, the network at floor(s T)), 3 steps,
    unguided: SanaVideoPipeline's final latents."""
    _, path, _ = tiny_sana_video
    folder = changed_folder(path, tmp_path, "model_index.json",
                            {"scheduler": ["diffusers", "UniPCMultistepScheduler"]})
    (folder / "scheduler").unlink()
    diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                      flow_shift=5.0).save_pretrained(folder / "scheduler")
    pipe, _, model = reloaded(folder, diffusers.SanaVideoPipeline, load_sana_video)
    latents, kw = _latents(), {"guidance_scale": 1.0, "height": H, "width": W, "max_sequence_length": TOKENS}
    with torch.no_grad():
        theirs = pipe(PROMPT, num_inference_steps=3, latents=latents, output_type="latent", frames=FRAMES,
                      use_resolution_binning=False, **kw).frames
    error = relative_error(text_to_video(model, PROMPT, steps=3, latents=latents, num_frames=FRAMES,
                                         return_latents=True, **kw), theirs)
    print(f"unipc latents: {error:.2e}")
    assert error < 1e-5
