"""AnimateDiff folders (diffkit.interop.animatediff): text_to_video against diffusers' own AnimateDiffPipeline on a tiny
random folder (the tiny Stable Diffusion of test_interop_diffusers with a randomised 1-layer MotionAdapter of 8 frame
positions, saved by save_pretrained: unet/ a UNetMotionModel; SD's DDIM scheduler; nothing downloaded), the same
folder as a UNet2DConditionModel beside motion_adapter/, and ``diffkit video`` on it."""
import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import to_uint8  # noqa: E402
from diffkit.interop.animatediff import (load_animatediff, refuse_animatediff_folder, text_to_video,  # noqa: E402
                                        video_to_video)
from diffkit.video import read_video  # noqa: E402

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from test_interop_diffusers import randomize, relative_error, sd_ddim_scheduler, tiny_sd_components  # noqa: E402
from test_sd_lora import TEXT_LORA, UNET_LORA, _add_lora  # noqa: E402
from test_sd_prompts import _with_text_model  # noqa: E402

PROMPTS, NEGATIVE = ["a photo", "hot"], ["ot", "p"]
FRAMES, SIZE = 5, 16  # latents (B, 4, 5, 8, 8): the tiny VAE's factor 2
PARTS = ("model_index.json", "scheduler", "unet", "motion_adapter", "text_encoder", "tokenizer", "vae")


@pytest.fixture(scope="session")
def tiny_animatediff(tmp_path_factory):
    """(AnimateDiffPipeline.from_pretrained of the saved folder, the folder, load_animatediff of it, the folder with
    the UNet2DConditionModel and motion_adapter/ instead)."""
    root = tmp_path_factory.mktemp("animatediff")
    unet, vae, text_encoder, tokenizer = tiny_sd_components(root)
    adapter = randomize(diffusers.MotionAdapter(  # its zero-initialised proj_out too
        block_out_channels=(32, 64), motion_layers_per_block=1, motion_transformer_layers_per_block=1,
        motion_num_attention_heads=2, motion_norm_num_groups=8, motion_max_seq_length=8, use_motion_mid_block=True), 1)
    pipe = diffusers.AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                         motion_adapter=adapter, scheduler=sd_ddim_scheduler())
    pipe.save_pretrained(root / "ad")
    joined = root / "joined"  # a UNet2DConditionModel beside motion_adapter/ (AnimateDiffPipeline.__init__ joins them)
    for part in PARTS[1:]:
        if part != "unet":
            (joined / part).parent.mkdir(parents=True, exist_ok=True)
            (joined / part).symlink_to(root / "ad" / part)
    unet.save_pretrained(joined / "unet")
    index = json.loads((root / "ad" / "model_index.json").read_text())
    (joined / "model_index.json").write_text(json.dumps({**index, "unet": ["diffusers", "UNet2DConditionModel"]}))
    pipe, path, model = reloaded(root / "ad", diffusers.AnimateDiffPipeline, load_animatediff)
    _with_text_model(pipe.text_encoder)  # the pipeline's clip_skip reads text_model.final_layer_norm (test_sd_prompts)
    return pipe, path, model, joined


def _generators(seed=3, n=2):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def matches_the_pipeline(pipe, model, text_to_video):
    """CFG s = 5 against negative prompts, clip_skip 1, 3 steps, 5 frames: the final latents (read by a step callback)
    and frames (output_type="pt") of ``pipe`` and ``text_to_video(model, ...)`` from the same noise, 1e-5 relative
    (also the AnimateDiff SD-XL test's)."""
    final = {}

    def keep(pipeline, i, t, tensors):
        final["latents"] = tensors["latents"]
        return {}
    kw = {"negative_prompt": NEGATIVE, "guidance_scale": 5.0, "clip_skip": 1, "num_frames": FRAMES, "height": SIZE,
          "width": SIZE}
    with torch.no_grad():
        frames = pipe(PROMPTS, num_inference_steps=3, generator=_generators(), output_type="pt",
                      callback_on_step_end=keep, **kw).frames
    ours = text_to_video(model, PROMPTS, steps=3, seed=3, return_latents=True, **kw)
    error = relative_error(ours, final["latents"])
    print(f"latents: {error:.2e}")
    assert error < 1e-5
    videos = (model.decode_video(ours) / 2 + 0.5).clamp(0, 1)
    assert frames.shape == videos.shape == (2, FRAMES, 3, SIZE, SIZE)
    error = relative_error(videos, frames)
    print(f"frames: {error:.2e}")
    assert error < 1e-5


def test_animatediff_matches_the_pipeline(tiny_animatediff):
    """CFG s = 5 against negative prompts, clip_skip 1, 3 DDIM steps, 5 frames: the same final latents (read by a step
    callback) and frames (output_type="pt", (B, T, C, H, W) in [0, 1]) as AnimateDiffPipeline from the same noise
    (video i from seed 3 + i); the folder with a UNet2DConditionModel + motion_adapter/ loads the same
    UNetMotionModel."""
    pipe, _, model, joined = tiny_animatediff
    matches_the_pipeline(pipe, model, text_to_video)  # (measured latents 1.0e-6, frames 7.2e-7)
    other = load_animatediff(joined, progress=False).unet.state_dict()  # from_unet2d(unet, motion_adapter)
    assert other.keys() == model.unet.state_dict().keys()
    assert all(torch.equal(value, other[key]) for key, value in model.unet.state_dict().items())


@pytest.mark.parametrize("scheduler, options", [("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
                                                ("LCMScheduler", {})])
def test_animatediff_other_schedulers_match_the_pipeline(tiny_animatediff, tmp_path, scheduler, options):
    """The folder's scheduler swapped (a folder written with it): Euler on trailing timesteps unguided (s = 1, as
    AnimateDiff-Lightning's folders) and an LCMScheduler folder (AnimateLCM: the consistency function around the
    guided UNet, s = 1.5), 2 steps: the pipeline's final latents."""
    pipe, path, _, _ = tiny_animatediff
    own = pipe.scheduler
    pipe.scheduler = getattr(diffusers, scheduler).from_config(own.config, **options)
    folder = changed_folder(path, tmp_path, "scheduler/scheduler_config.json",
                            {"_class_name": scheduler, **options}, parts=PARTS)
    scale = 1.0 if scheduler.startswith("Euler") else 1.5
    try:
        with torch.no_grad():
            theirs = pipe(PROMPTS[:1], num_inference_steps=2, generator=_generators(5, 1), output_type="latent",
                          guidance_scale=scale, num_frames=FRAMES, height=SIZE, width=SIZE).frames
    finally:
        pipe.scheduler = own
    ours = text_to_video(load_animatediff(folder, progress=False), PROMPTS[:1], steps=2, seed=5, guidance_scale=scale,
                         num_frames=FRAMES, height=SIZE, width=SIZE, return_latents=True)
    error = relative_error(ours, theirs)
    print(f"{scheduler}: {error:.2e}")  # (measured 5.2e-7 Euler, 5.8e-7 LCM)
    assert error < 1e-5


def _video_argv(path, out, *extra):
    return ["video", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--frames", "3",
            "--height", str(SIZE), "--width", str(SIZE), "--steps", "1", "--seed", "4", "--out", str(out), *extra]


def test_animatediff_command_is_the_library(tiny_animatediff, tmp_path, capsys):
    """``diffkit video`` writes the library's videos byte for byte (APNG, lossless; one video a batch, video i from
    seed + i; the batch of two the library's), at the kind's 10 fps."""
    _, path, model, _ = tiny_animatediff
    assert main(_video_argv(path, tmp_path / "grid.png", "--individual", str(tmp_path / "each"), "--batch-size", "2",
                            "--no-progress")) == 0
    assert "wrote 2 videos of 3 frames (16x16, 10 fps)" in capsys.readouterr().out
    videos = text_to_video(model, PROMPTS, num_frames=3, height=SIZE, width=SIZE, steps=1, seed=4)
    for i in range(2):
        written = ((read_video(tmp_path / "each" / f"video_{i:05d}.png") + 1) * 127.5).round().to(torch.uint8)
        assert np.array_equal(written.permute(0, 2, 3, 1).numpy(), to_uint8(videos[i]))


def _one_line(capsys, argv, message, tmp_path):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not any(tmp_path.glob("out*"))


COMMAND_REFUSALS = [  # (also the AnimateDiff SD-XL test's)
    (["--frames", "9"], "--frames 9 is not allowed"),
    (["--guidance-scale", "1", "--guidance-convention", "diffusers", "--negative-prompt", "x"],
     "a negative prompt with guidance_scale=1"),
    (["--image", "x.png"], "--image does not apply to an AnimateDiff folder"),
]


@pytest.mark.parametrize("extra, message", COMMAND_REFUSALS)
def test_animatediff_command_refusals(tiny_animatediff, tmp_path, capsys, extra, message):
    _, path, _, _ = tiny_animatediff
    _one_line(capsys, _video_argv(path, tmp_path / "out.png", *extra), message, tmp_path)


def sample_and_edit_refused(capsys, tmp_path, path, joined):
    """diffkit sample on both layouts and diffkit edit on ``path``: one line naming diffkit video, nothing written (also
    the AnimateDiff SD-XL test's)."""
    for folder in (path, joined):
        _one_line(capsys, ["sample", "--checkpoint", str(folder), "--prompt", "a", "--out", str(tmp_path / "out.png")],
                  "generate videos with diffkit video", tmp_path)
    (tmp_path / "in").mkdir()
    _one_line(capsys, ["edit", "--checkpoint", str(path), "--images", str(tmp_path / "in"), "--prompt", "a",
                       "--out", str(tmp_path / "out")], "which diffkit edit does not take", tmp_path)


def test_animatediff_folder_refusals(tiny_animatediff, tmp_path, capsys):
    """diffkit sample / edit on the folder (both layouts) name diffkit video; a scheduler no sampler computes without
    --sampler, and a UNet with a guidance input, are one line before any weight is read."""
    _, path, _, joined = tiny_animatediff
    sample_and_edit_refused(capsys, tmp_path, path, joined)
    ancestral = changed_folder(path, tmp_path, "scheduler/scheduler_config.json",
                               {"_class_name": "EulerAncestralDiscreteScheduler"}, parts=PARTS)
    _one_line(capsys, _video_argv(ancestral, tmp_path / "out.png"), "no diffkit sampler equivalent", tmp_path)
    guidance = changed_folder(path, tmp_path, "unet/config.json", {"time_cond_proj_dim": 32}, parts=PARTS)
    with pytest.raises(DiffkitError, match="time_cond_proj_dim=32"):
        load_animatediff(guidance)


def test_animatediff_lora_is_load_lora_weights_and_fuse_lora(tiny_animatediff, tmp_path):
    """A LoRA file on the UNetMotionModel (its spatial and its motion modules' attention: an SD LoRA and a motion LoRA
    in one) and the text encoder, saved by AnimateDiffPipeline.save_lora_weights: load_animatediff(lora=[(file,
    0.6)]) holds the weights of the pipeline's load_lora_weights + fuse_lora(lora_scale=0.6)."""
    import copy
    fixture_pipe, path, model, _ = tiny_animatediff
    unet, text_encoder = copy.deepcopy(model.unet), copy.deepcopy(model.text_encoder)
    unet_state, unet_config = _add_lora(unet, 1, **UNET_LORA)
    text_state, text_config = _add_lora(text_encoder, 11, **TEXT_LORA)
    assert any("motion_modules" in key for key in unet_state) and any("attentions" in key for key in unet_state)
    prefix = "" if hasattr(text_encoder, "text_model") else "text_model."
    diffusers.AnimateDiffPipeline.save_lora_weights(
        tmp_path, weight_name="lora.safetensors", unet_lora_layers=unet_state, unet_lora_adapter_metadata=unet_config,
        text_encoder_lora_layers={prefix + k: v for k, v in text_state.items()},
        text_encoder_lora_adapter_metadata=text_config)
    pipe = diffusers.AnimateDiffPipeline(**{**fixture_pipe.components, "unet": copy.deepcopy(fixture_pipe.unet),
                                            "text_encoder": copy.deepcopy(fixture_pipe.text_encoder)})
    pipe.load_lora_weights(str(tmp_path / "lora.safetensors"))
    pipe.fuse_lora(lora_scale=0.6)
    pipe.unload_lora_weights()
    ours = load_animatediff(path, progress=False, lora=[(tmp_path / "lora.safetensors", 0.6)])
    for theirs, merged, base in ((pipe.unet, ours.unet, model.unet),
                                 (pipe.text_encoder, ours.text_encoder, model.text_encoder)):
        theirs, merged, base = theirs.state_dict(), merged.state_dict(), base.state_dict()
        assert theirs.keys() == merged.keys()
        error = max((theirs[key] - value).abs().max().item() for key, value in merged.items())
        print(f"weights: {error:.1e}")  # (measured 1.2e-7 UNet, 3.0e-8 text encoder)
        assert error < 1e-6 and max((base[key] - value).abs().max().item() for key, value in merged.items()) > 0.1


def test_animatediff_video_to_video_matches_the_pipeline(tiny_animatediff, tmp_path, capsys):
    """AnimateDiffVideoToVideoPipeline (the folder under that class): two 5-frame 20 x 24 videos resized to 16 x 16,
    encoded with their posteriors sampled from video i's generator, noised to the first of the strength's steps
    (0.5 of 4 DDIM steps), CFG s = 5 against a negative prompt: final latents and decoded frames; ``diffkit video
    --video FILE --strength 0.5`` writes the library's videos byte for byte; refusals in one line."""
    from PIL import Image

    from diffkit.video import save_videos
    _, path, _, _ = tiny_animatediff
    folder = changed_folder(path, tmp_path, "model_index.json", {"_class_name": "AnimateDiffVideoToVideoPipeline"},
                            parts=PARTS)
    v2v, _, model = reloaded(folder, diffusers.AnimateDiffVideoToVideoPipeline, load_animatediff)
    inputs = torch.randint(0, 256, (2, FRAMES, 3, 20, 24), generator=torch.Generator().manual_seed(9)) / 127.5 - 1
    clips = [[Image.fromarray(((f + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()) for f in v] for v in inputs]
    call = dict(guidance_scale=5.0, negative_prompt=NEGATIVE[0], height=SIZE, width=SIZE, strength=0.5)
    out = {}
    for kind in ("latent", "pt"):
        with torch.no_grad():
            out[kind] = v2v(video=clips, prompt=PROMPTS, num_inference_steps=4, generator=_generators(3),
                            output_type=kind, **{**call, "negative_prompt": [NEGATIVE[0]] * 2}).frames
    ours = video_to_video(model, list(inputs), PROMPTS, steps=4, seed=3, return_latents=True, convention="diffusers",
                          **call)
    assert ours.shape == (2, 4, FRAMES, 8, 8) and relative_error(ours, out["latent"]) < 1e-5
    videos = video_to_video(model, clips, PROMPTS, steps=4, seed=3, convention="diffusers", **call)
    assert relative_error((videos / 2 + 0.5).clamp(0, 1), out["pt"]) < 1e-5
    files = save_videos(inputs, tmp_path / "in")
    argv = ["video", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--video",
            str(files[0]), "--video", str(files[1]), "--steps", "4", "--seed", "3", "--height", str(SIZE), "--width",
            str(SIZE), "--strength", "0.5", "--guidance-scale", "5", "--guidance-convention", "diffusers",
            "--negative-prompt", NEGATIVE[0], "--out", str(tmp_path / "grid.png"), "--individual",
            str(tmp_path / "each"), "--no-progress"]
    assert main(argv) == 0
    for i in range(2):
        written = read_video(tmp_path / "each" / f"video_{i:05d}.png")
        assert torch.equal(((written + 1) * 127.5).round().to(torch.uint8),
                           torch.from_numpy(to_uint8(videos[i])).permute(0, 3, 1, 2))
    save_videos(torch.zeros(1, 9, 3, 8, 8), tmp_path / "nine")  # past the 8 frame positions
    never = tmp_path / "never.png"
    for extra, message in ((["--frames", "5"], "--frames does not apply to an AnimateDiff video-to-video folder"),
                           ([], "(video-to-video): give --video FILE"),
                           (["--video", str(tmp_path / "nine" / "video_00000.png")], "--video of 9 frames: --frames 9"),
                           (["--video", str(files[0]), "--strength", "0.2"], "--strength 0.2 keeps int(4 * 0.2) = 0")):
        capsys.readouterr()
        code = main(["video", "--checkpoint", str(folder), "--prompt", "hot", "--steps", "4", *extra, "--out",
                     str(never)])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert not never.exists()
    assert main(["sample", "--checkpoint", str(folder), "--prompt", "hot", "--out", str(never)]) == 2
    err = capsys.readouterr().err
    assert "which diffkit sample does not take (it makes videos)" in err and "--video FILE --prompt TEXT" in err
    with pytest.raises(DiffkitError, match="call video_to_video"):
        text_to_video(model, PROMPTS, num_frames=FRAMES, height=SIZE, width=SIZE)
    with pytest.raises(DiffkitError, match=r"AnimateDiffVideoToVideoPipeline folder \(video-to-video\), which x does"):
        refuse_animatediff_folder(folder, "x")  # the image loaders' check (MOTION_PIPELINES)
