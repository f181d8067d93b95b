"""SkyReels-V2 folders (diffkit.interop.skyreels_v2, ``diffkit video``) against diffusers' own SkyReelsV2Pipeline and
SkyReelsV2ImageToVideoPipeline on tiny random folders (Wan text-to-video's tiny UMT5, Wan 2.1 VAE and flow UniPC of
tests/test_wan.py, 1-layer SkyReelsV2Transformer3DModels with their zero parameters and norms randomised, a 1-layer
CLIPVisionModelWithProjection of width 16 on 32 px with its CLIPProcessor; nothing downloaded). ftfy is not installed:
the pipelines' prompt_clean get it as the identity, as diffkit does."""
import dataclasses
import re
import types

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import to_uint8  # noqa: E402
from diffkit.interop.skyreels_v2 import (check_skyreels_v2_folder, image_to_video, load_skyreels_v2,  # noqa: E402
                                         text_to_video)
from diffkit.video import read_video  # noqa: E402

from _pipeline_folders import changed_folder  # noqa: E402
from _video_helpers import refused_in_one_line  # noqa: E402
from test_interop_diffusers import relative_error, tiny_clip_tokenizer  # noqa: E402
from test_wan import Z, randomised, tiny_wan_parts  # noqa: E402

H, W, FRAMES = 32, 32, 5  # latents 2 frames of 4 x 4: 2 x 2 patches
DF_FRAMES, DF_SIZE = 13, 16  # diffusion forcing: 4 latent frames of 2 x 2 (one patch each)
PROMPTS, NEGATIVE = ["a photo of a Cat", "a dog"], "blurry dog"
TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=Z, out_channels=Z,
                   text_dim=32, freq_dim=32, ffn_dim=32, num_layers=1, rope_max_seq_len=32)
I2V_PARTS = ("model_index.json", "scheduler", "transformer", "text_encoder", "tokenizer", "vae", "image_encoder",
             "image_processor")


def skyreels_transformer(seed: int, **changes):
    """A tiny SkyReelsV2Transformer3DModel, its zero parameters and its norms' unit weights randomised."""
    torch.manual_seed(seed)
    model = randomised(diffusers.SkyReelsV2Transformer3DModel(**{**TRANSFORMER, **changes}), seed=seed)
    with torch.no_grad():
        for name, value in model.named_parameters():
            if "norm" in name:
                value.add_(0.2 * torch.randn_like(value))
    return model


@pytest.fixture(scope="module")
def tiny_skyreels(tmp_path_factory):
    """{"t2v": (SkyReelsV2Pipeline, its saved folder, load_skyreels_v2 of it), "i2v":
    (SkyReelsV2ImageToVideoPipeline, ...)}, with ftfy's fix_text as the identity in the pipelines' modules while the
    tests run."""
    from diffusers.pipelines.skyreels_v2 import pipeline_skyreels_v2, pipeline_skyreels_v2_i2v
    root = tmp_path_factory.mktemp("skyreels_v2")
    parts = tiny_wan_parts()
    pipes = {"t2v": diffusers.SkyReelsV2Pipeline(**{**parts, "transformer": skyreels_transformer(5)})}
    torch.manual_seed(3)
    clip = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=24, num_attention_heads=2, num_hidden_layers=1, image_size=32,
        patch_size=8, projection_dim=8)).eval()
    (root / "clip").mkdir()
    images = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = transformers.CLIPProcessor(image_processor=images, tokenizer=tiny_clip_tokenizer(root / "clip"))
    i2v = skyreels_transformer(6, in_channels=2 * Z + 4, image_dim=16, added_kv_proj_dim=24)
    pipes["i2v"] = diffusers.SkyReelsV2ImageToVideoPipeline(**{**parts, "transformer": i2v}, image_encoder=clip,
                                                            image_processor=processor)
    with pytest.MonkeyPatch.context() as patch:
        for module in (pipeline_skyreels_v2, pipeline_skyreels_v2_i2v):
            if not hasattr(module, "ftfy"):
                patch.setattr(module, "ftfy", types.SimpleNamespace(fix_text=lambda text: text), raising=False)
        yield {kind: saved(pipe, root / kind) for kind, pipe in pipes.items()}


def saved(pipe, path):
    """(``pipe``, the folder it is saved to, load_skyreels_v2 of the folder)."""
    pipe.save_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe, path, load_skyreels_v2(path, progress=False)


def _image(seed=3, size=(W + 8, H + 16)):
    from PIL import Image
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=torch.Generator().manual_seed(seed))
    return Image.fromarray(pixels.to(torch.uint8).numpy())


def _compare(label: str, ours, theirs, model) -> None:
    """diffkit's final latents ``ours`` and their frames within 1e-5 relative of the pipeline's (``theirs``: its
    final latents, its ``output_type="pt"`` frames or None)."""
    latents, frames = theirs
    error = relative_error(ours, latents)
    print(f"{label} latents: {error:.2e}")
    assert error < 1e-5
    if frames is not None:
        videos = model.output_videos(ours, "0,1", False)
        assert videos.shape == frames.shape
        error = relative_error(videos, frames)
        print(f"{label} frames: {error:.2e}")
        assert error < 1e-5


def _run(pipe, *args, **kw):
    """(the pipeline's final latents, read by a step callback; its output_type="pt" frames)."""
    final = {}

    def keep(pipeline, i, t, tensors):
        final["latents"] = tensors["latents"]
        return {}
    with torch.no_grad():
        frames = pipe(*args, output_type="pt", callback_on_step_end=keep, **kw).frames
    return final["latents"], frames


def test_skyreels_v2_text_to_video_matches_the_pipeline(tiny_skyreels):
    """Two prompts, CFG s = 4 against a negative prompt each, 3 steps, video i's noise from seed 3 + i: the same
    final latents and decoded frames (B, T, C, H, W) in [0, 1] as SkyReelsV2Pipeline, on the folder's flow UniPC
    (diffkit's unipc); on a FlowMatchEulerDiscreteScheduler (diffkit's ddim) 2 steps of one prompt at the default CFG
    s = 6 against ""."""
    pipe, _, model = tiny_skyreels["t2v"]
    kw = {"negative_prompt": [NEGATIVE, "ugly"], "guidance_scale": 4.0, "height": H, "width": W,
          "num_frames": FRAMES}
    generators = [torch.Generator().manual_seed(3 + i) for i in range(2)]
    theirs = _run(pipe, PROMPTS, num_inference_steps=3, generator=generators, **kw)
    ours = text_to_video(model, PROMPTS, steps=3, seed=3, return_latents=True, **kw)
    assert ours.shape == (2, Z, 2, H // 8, W // 8)
    _compare("unipc", ours, theirs, model)
    euler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe_euler = diffusers.SkyReelsV2Pipeline(**{**pipe.components, "scheduler": euler})
    pipe_euler.set_progress_bar_config(disable=True)
    model = dataclasses.replace(model, scheduler_config={**euler.config, "_class_name": type(euler).__name__},
                                _sigmas={})  # the folder with its scheduler swapped, as the pipeline's
    kw = {"height": H, "width": W, "num_frames": FRAMES}  # the default CFG s = 6 against ""
    with torch.no_grad():
        latents = pipe_euler(PROMPTS[0], num_inference_steps=2, output_type="latent",
                             generator=[torch.Generator().manual_seed(4)], **kw).frames
    _compare("euler", text_to_video(model, PROMPTS[0], steps=2, seed=4, return_latents=True, **kw), (latents, None),
             model)


def test_skyreels_v2_image_to_video_matches_the_pipeline(tiny_skyreels):
    """Two prompts on one image (resized to 32 x 32, Lanczos, for the VAE; CLIP sees the original), CFG s = 4
    against a negative prompt, 3 UniPC steps, video i's noise from seed 3 + i: the same final latents and decoded
    frames as SkyReelsV2ImageToVideoPipeline."""
    pipe, _, model = tiny_skyreels["i2v"]
    image = _image()
    kw = {"negative_prompt": NEGATIVE, "guidance_scale": 4.0, "height": H, "width": W, "num_frames": FRAMES}
    generators = [torch.Generator().manual_seed(3 + i) for i in range(2)]
    theirs = _run(pipe, image, PROMPTS, num_inference_steps=3, generator=generators, **kw)
    ours = image_to_video(model, image, PROMPTS, steps=3, seed=3, return_latents=True, **kw)
    _compare("i2v", ours, theirs, model)


@pytest.mark.parametrize("kind", ["t2v", "i2v", "df"])
def test_skyreels_v2_lora_is_load_lora_weights_and_fuse_lora(request, tmp_path, kind):
    """A diffusers-format LoRA (Wan text-to-video's test's; on the image-to-video transformer diffusers' loader adds
    zero add_k_proj / add_v_proj matrices) at 0.6 through the shared Wan reader: the transformer of the pipeline's
    load_lora_weights + fuse_lora(lora_scale=0.6) (SkyReelsV2LoraLoaderMixin)."""
    from test_wan import fused_lora_matches
    pipe, path, _ = request.getfixturevalue("tiny_forcing") if kind == "df" else \
        request.getfixturevalue("tiny_skyreels")[kind]
    fused_lora_matches(type(pipe), pipe, path, tmp_path, load_skyreels_v2)


def _as_written(video):
    """A video (T, 3, H, W) in [-1, 1] as diffkit writes and reads it back: rounded as diffkit.images.to_uint8."""
    return torch.from_numpy(to_uint8(video)).permute(0, 3, 1, 2).float() / 127.5 - 1


@pytest.mark.parametrize("kind", ["t2v", "i2v", "df"])
def test_skyreels_v2_command_is_the_library(request, tmp_path, capsys, kind):
    """``diffkit video`` writes the library's videos byte for byte (two prompts in one batch, CFG at the kind's
    default against "", noise from seed + i, 1 step; diffusion forcing: 2 steps, ``--ar-step 1 --causal-block-size
    2 --fps 16``, the fps its conditioning too) as an APNG grid at 24 fps (16)."""
    from PIL import Image
    from diffkit.interop.skyreels_v2_forcing import text_to_video as forcing_text_to_video
    _, path, model = request.getfixturevalue("tiny_forcing") if kind == "df" else \
        request.getfixturevalue("tiny_skyreels")[kind]
    image = _image()
    image.save(tmp_path / "a.png")
    size = {"num_frames": FRAMES, "height": H, "width": W, "steps": 1} if kind != "df" else \
        {"num_frames": DF_FRAMES, "height": DF_SIZE, "width": DF_SIZE, "steps": 2}
    extra = {"i2v": ["--image", str(tmp_path / "a.png")], "t2v": [],
             "df": ["--ar-step", "1", "--causal-block-size", "2", "--fps", "16"]}[kind]
    argv = ["video", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], *extra, "--steps",
            str(size["steps"]), "--seed", "5", "--frames", str(size["num_frames"]), "--height", str(size["height"]),
            "--width", str(size["width"]), "--batch-size", "2", "--nrow", "2", "--out", str(tmp_path / "v.png"),
            "--no-progress"]
    assert main(argv) == 0
    fps = 16 if kind == "df" else 24
    assert f"wrote 2 videos of {size['num_frames']} frames ({size['width']}x{size['height']}, {fps} fps)" in \
        capsys.readouterr().out
    videos = {"i2v": lambda: image_to_video(model, image, PROMPTS, seed=5, **size),
              "t2v": lambda: text_to_video(model, PROMPTS, seed=5, **size),
              "df": lambda: forcing_text_to_video(model, PROMPTS, seed=5, ar_step=1, causal_block_size=2, fps=16.0,
                                                  **size)}[kind]()
    written, h, w = read_video(tmp_path / "v.png"), size["height"], size["width"]
    for i in range(2):
        assert torch.equal(written[:, :, 2:2 + h, 2 + i * (w + 2):2 + i * (w + 2) + w], _as_written(videos[i]))
    with Image.open(tmp_path / "v.png") as animation:
        assert animation.info["duration"] == pytest.approx(1000 / fps)


@pytest.mark.parametrize("kind, args, message", [
    ("t2v", ["--frames", "8"], "num_frames=8 is not allowed"),
    ("t2v", ["--height", "40"], "--height 40 is not allowed for a SkyReels-V2 folder; give a multiple of 16 "
                                "(SkyReelsV2Pipeline's"),
    ("t2v", ["--guidance-scale-2", "2"], "--guidance-scale-2 does not apply to a SkyReels-V2 folder"),
    ("t2v", ["--image", "a.png"], "--image does not apply to a SkyReels-V2 folder"),
    ("i2v", ["--lora", "a.png", "--lora-any-base"], "--lora-any-base does not apply to a SkyReels-V2 image-to-video"),
    ("i2v", [], "(image-to-video): give --image PNG"),
    ("i2v", ["--image", "a.png", "--last-image", "a.png"], "--last-image does not apply to"),
    ("t2v", ["--ar-step", "1"], "--ar-step does not apply to a SkyReels-V2 folder"),
    ("df", ["--frames", str(DF_FRAMES), "--causal-block-size", "3"],
     "causal_block_size=3 is not allowed for 4 latent frames; give a divisor"),
    ("df", ["--ar-step", "1", "--sampler", "heun"], "sampler 'heun' is not allowed with ar_step=1"),
    ("df", ["--frames", "9", "--ar-step", "1", "--causal-block-size", "2"],
     "causal_block_size=2 is not allowed for 3 latent frames"),
])
def test_skyreels_v2_command_refusals_are_one_line(request, tmp_path, capsys, monkeypatch, kind, args, message):
    monkeypatch.chdir(tmp_path)
    _image().save(tmp_path / "a.png")
    folder = request.getfixturevalue("tiny_forcing")[1] if kind == "df" else \
        request.getfixturevalue("tiny_skyreels")[kind][1]
    refused_in_one_line(capsys, tmp_path, "video", folder, args, message)


def test_skyreels_v2_folder_refusals(tiny_skyreels, tiny_forcing, tmp_path, capsys):
    """From the folder's JSON, before any weight is read; ``diffkit sample`` on a folder in one line; the library
    functions on another kind's folder, a negative ar_step."""
    from diffkit.interop.skyreels_v2_forcing import text_to_video as forcing_text_to_video
    t2v, i2v, forcing = tiny_skyreels["t2v"][1], tiny_skyreels["i2v"][1], tiny_forcing[1]
    for folder, parts, part, change, expected in [
            (t2v, None, "model_index.json", {"transformer": ["diffusers", "WanTransformer3DModel"]},
             "transformer is a 'WanTransformer3DModel'; allowed: SkyReelsV2Transformer3DModel"),
            (t2v, None, "transformer/config.json", {"inject_sample_info": True},
             "inject_sample_info=True; allowed: False (SkyReels-V2 pipelines pass the transformer no fps"),
            (t2v, None, "transformer/config.json", {"num_frame_per_block": 2}, "num_frame_per_block=2; allowed: 1"),
            (t2v, None, "transformer/config.json", {"image_dim": 16}, "image_dim=16; allowed: None"),
            (t2v, None, "vae/config.json", {"temperal_downsample": [True, True, True]},
             "scale_factor_temporal=4; allowed: 8"),
            (i2v, I2V_PARTS, "model_index.json", {"image_encoder": ["transformers", "SiglipVisionModel"]},
             "image_encoder is a 'SiglipVisionModel'"),
            (i2v, I2V_PARTS, "transformer/config.json", {"in_channels": Z}, "in_channels=4; allowed: 12"),
            (forcing, None, "scheduler/scheduler_config.json", {"_class_name": "FlowMatchEulerDiscreteScheduler"},
             "scheduler is a 'FlowMatchEulerDiscreteScheduler'; allowed: UniPCMultistepScheduler")]:
        bad = changed_folder(folder, tmp_path, part, change, **({"parts": parts} if parts else {}))
        with pytest.raises(DiffkitError, match=re.escape(expected)):
            check_skyreels_v2_folder(bad)
    refused_in_one_line(capsys, tmp_path, "sample", t2v, [], "SkyReelsV2Pipeline folder, which diffkit sample does "
                                                            "not take (it makes videos)")
    with pytest.raises(DiffkitError, match="takes a SkyReelsV2Pipeline folder"):
        text_to_video(tiny_skyreels["i2v"][2], "a cat")
    with pytest.raises(DiffkitError, match="takes a SkyReelsV2DiffusionForcingPipeline folder"):
        forcing_text_to_video(tiny_skyreels["t2v"][2], "a cat")
    with pytest.raises(DiffkitError, match=re.escape("ar_step=-1 is not allowed; give a whole number >= 0")):
        forcing_text_to_video(tiny_forcing[2], "a cat", ar_step=-1, num_frames=DF_FRAMES, height=16, width=16)


# ------------------------------------------------------------------ SkyReelsV2DiffusionForcingPipeline
@pytest.fixture(scope="module")
def tiny_forcing(tiny_skyreels, tmp_path_factory):
    """(SkyReelsV2DiffusionForcingPipeline, its saved folder, load_skyreels_v2 of it) of the text-to-video folder's
    parts with a diffusion-forcing transformer (inject_sample_info: its fps embedding and projection drawn)."""
    from diffusers.pipelines.skyreels_v2 import pipeline_skyreels_v2_diffusion_forcing as module
    pipe = tiny_skyreels["t2v"][0]
    root = tmp_path_factory.mktemp("skyreels_v2_df")
    components = {**pipe.components, "transformer": skyreels_transformer(7, inject_sample_info=True)}
    with pytest.MonkeyPatch.context() as patch:
        if not hasattr(module, "ftfy"):
            patch.setattr(module, "ftfy", types.SimpleNamespace(fix_text=lambda text: text), raising=False)
        yield saved(diffusers.SkyReelsV2DiffusionForcingPipeline(**components), root / "df")


def copying_step(monkeypatch):
    """UniPCMultistepScheduler.step given a copy of its sample while the test runs: the diffusion-forcing pipeline
    hands its per-frame scheduler copies a view of its latents (``latents[:, :, idx]``), which its next line
    overwrites with the step's result, so the scheduler's ``last_sample`` kept from a step without corrector (the
    first) is the new sample when the next step's corrector reads it; with a copy the pipeline's loop computes
    UniPC as its scheduler defines it (and as its text-to-video pipeline does)."""
    step = diffusers.UniPCMultistepScheduler.step
    monkeypatch.setattr(diffusers.UniPCMultistepScheduler, "step",
                        lambda self, output, t, sample, **kw: step(self, output, t, sample.clone(), **kw))


@pytest.mark.parametrize("ar_step, block, fps", [(0, 2, 24), (2, 1, 16)])
def test_skyreels_v2_diffusion_forcing_matches_the_pipeline(tiny_forcing, monkeypatch, ar_step, block, fps):
    """One prompt (the pipeline's transformer with inject_sample_info takes one row a call), CFG s = 4 against a
    negative prompt, 3 UniPC steps, 4 latent frames, noise from seed 3: the same final latents as
    SkyReelsV2DiffusionForcingPipeline, its schedulers' aliasing of the latents undone (:func:`copying_step`; the
    pipeline as it is differs by more than 1e-3), synchronously (ar_step 0 on two causal blocks of 2 frames; decoded
    frames too; diffkit's video 0 of two prompts) and asynchronously (ar_step 2 on 4 blocks of one frame, attending
    to each other, at fps 16: 9 rows, every block seeing the others not started or clean in some)."""
    from diffkit.interop.skyreels_v2_forcing import text_to_video as forcing_text_to_video
    pipe, _, model = tiny_forcing
    kw = {"negative_prompt": NEGATIVE, "guidance_scale": 4.0, "height": DF_SIZE, "width": DF_SIZE,
          "num_frames": DF_FRAMES, "ar_step": ar_step, "causal_block_size": block, "fps": fps}
    prompts = PROMPTS if ar_step == 0 else PROMPTS[:1]
    ours = forcing_text_to_video(model, prompts, steps=3, seed=3, return_latents=True, **kw)
    assert ours.shape == (len(prompts), Z, 4, 2, 2)
    assert model.transformer.config.num_frame_per_block == 1  # restored
    if ar_step == 0:
        with torch.no_grad():
            aliased = pipe(PROMPTS[0], num_inference_steps=3, generator=torch.Generator().manual_seed(3),
                           output_type="latent", **kw).frames
        print(f"the pipeline as it is: {relative_error(ours[:1], aliased):.2e}")
        assert relative_error(ours[:1], aliased) > 1e-3
    copying_step(monkeypatch)
    theirs = _run(pipe, PROMPTS[0], num_inference_steps=3, generator=torch.Generator().manual_seed(3), **kw)
    _compare(f"forcing ar_step={ar_step}", ours[:1], theirs if ar_step == 0 else (theirs[0], None), model)


def test_skyreels_v2_forcing_rows_at_ar_step_0_are_one_sampler_run(tiny_forcing):
    """The threaded rows (each block's own sampler, their calls gathered a row) at ar_step 0 are one run of the same
    sampler on the whole video, for a sampler other than the folder's (dpm-solver++-2m, 3 steps, unguided, two causal
    blocks): the rows machinery adds nothing to the samplers' arithmetic."""
    from diffkit.denoiser import Denoiser
    from diffkit.interop.skyreels_v2_forcing import ForcingNet, ForcingRows, forcing_schedule
    from diffkit.interop.skyreels_v2_forcing import text_to_video as forcing_text_to_video
    _, _, model = tiny_forcing
    kw = {"height": DF_SIZE, "width": DF_SIZE, "num_frames": DF_FRAMES, "causal_block_size": 2, "guidance_scale": 1.0,
          "sampler": "dpm-solver++-2m", "steps": 3}
    whole = forcing_text_to_video(model, PROMPTS[0], seed=3, return_latents=True, **kw)
    latents = torch.randn(1, Z, 4, 2, 2, generator=torch.Generator().manual_seed(3))
    cond = {"context": model.encode_prompts(PROMPTS[:1]), "fps": torch.ones(1)}
    grid, net = model.scheduler_grid(3), ForcingNet(model.transformer, model.whole_timesteps)

    def run_block(b, block_net):
        denoiser = Denoiser(block_net, model.schedule, "flow_prediction")
        denoiser.model = model.transformer
        return model.sample_latents(denoiser, cond, grid, "dpm-solver++-2m", rows.states[b], None, False, {})
    model.transformer._set_ar_attention(2)
    try:
        rows = ForcingRows(net, latents, 2, forcing_schedule(2, 3, 0), 3)
        blocks = rows.run(run_block)
    finally:
        model.transformer._set_ar_attention(1)
    error = relative_error(blocks, whole)
    print(f"rows at ar_step 0: {error:.2e}")
    assert error < 1e-5
