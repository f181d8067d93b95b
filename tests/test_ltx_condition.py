"""LTXConditionPipeline folders (diffkit.interop.ltx_condition, diffkit video's LTX-Video condition kind): images and
videos at frame indices with strengths against diffusers' own LTXConditionPipeline on tiny_ltx's random components
(test_ltx: every weight random, random latents mean / std) with a shift-1 FlowMatchEuler scheduler, saved and read
back; nothing downloaded."""
import re

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import to_uint8  # noqa: E402
from diffkit.interop.ltx_condition import (Condition, check_condition_folder, condition_to_video,  # noqa: E402
                                           load_ltx_condition)
from diffkit.video import read_video, save_video_grid  # noqa: E402

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from _video_helpers import refused_in_one_line  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_ltx import NEGATIVE, _images, tiny_ltx  # noqa: E402,F401

H, W = 32, 64
SHORT, LONG = {"num_frames": 9, "height": H, "width": W}, {"num_frames": 17, "height": H, "width": W}
GUIDED = {"guidance_scale": 3.0, "negative_prompt": NEGATIVE, "guidance_rescale": 0.7}


@pytest.fixture(scope="module")
def tiny_condition(tiny_ltx, tmp_path_factory):
    """(LTXConditionPipeline of tiny_ltx's components with a shift-1 scheduler, read back; its folder; load of it)."""
    pipe, _, _ = tiny_ltx
    root = tmp_path_factory.mktemp("ltx_condition")
    components = {**pipe.components, "scheduler": diffusers.FlowMatchEulerDiscreteScheduler()}
    diffusers.LTXConditionPipeline(**components).save_pretrained(root / "cond")
    return reloaded(root / "cond", diffusers.LTXConditionPipeline, load_ltx_condition)


def _pipeline_conditions(conditions):
    from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition
    return [LTXVideoCondition(**{"video" if isinstance(c.frames, list) else "image": c.frames,
                                 "frame_index": c.frame_index, "strength": c.strength}) for c in conditions] or None


IMAGES = _images(3)
CLIP = [IMAGES[1], IMAGES[2]] * 5  # 10 frames: trimmed to 9 (3 latent frames) of a 17-frame video at frame 4
CASES = {  # name: (conditions, size, options); (measured max|diff| / max|ref| of the latents in the docs page)
    "image at 0, CFG": ([Condition(IMAGES[0], 0, 1.0)], SHORT, GUIDED),
    "image at 4, strength 0.7": ([Condition(IMAGES[0], 4, 0.7)], SHORT, {"guidance_scale": 1.0}),
    "image at 0 + video at 4": ([Condition(IMAGES[0]), Condition(CLIP, 4, 0.6)], LONG, {"guidance_scale": 1.0}),
    "denoise 0.6": ([Condition(IMAGES[2], 8, 1.0)], LONG, {"guidance_scale": 1.0, "denoise_strength": 0.6}),
}


@pytest.mark.parametrize("case", CASES)
def test_ltx_condition_matches_the_pipeline(tiny_condition, case):
    """4 steps of LTX-Video's linear-quadratic sigmas, the folder's per-token Euler step, conditioning noise 0.15,
    one video from generator seed 5: the final latents of LTXConditionPipeline(output_type="latent"); with
    denoise_strength 0.6 from the same init latents (the last 2 steps)."""
    pipe, _, model = tiny_condition
    conditions, size, options = CASES[case]
    init = torch.randn(1, 8, (size["num_frames"] - 1) // 4 + 1, 2, 4, generator=torch.Generator().manual_seed(1))
    init = init if "denoise_strength" in options else None
    with torch.no_grad():
        theirs = pipe(conditions=_pipeline_conditions(conditions), prompt="a dog", num_inference_steps=4,
                      generator=torch.Generator().manual_seed(5), output_type="latent", latents=init, **size,
                      **options).frames
    ours = condition_to_video(model, "a dog", conditions, steps=4, seed=5, return_latents=True, init_latents=init,
                              **size, **options)
    error = relative_error(ours, theirs)
    print(f"{case} latents: {error:.2e}")
    assert ours.shape == theirs.shape and error < 1e-5


def test_ltx_condition_frames_match_the_pipeline(tiny_condition):
    """Decoded frames (output_type="pt"): an image at 0 and a video at 4 of strength 0.8, conditioning noise 0.3,
    decoded at timestep 0.05 with noise 0.025."""
    pipe, _, model = tiny_condition
    conditions = [Condition(IMAGES[0]), Condition(CLIP, 4, 0.8)]
    options = {"image_cond_noise_scale": 0.3, "decode_timestep": 0.05, "decode_noise_scale": 0.025,
               "guidance_scale": 1.0}
    with torch.no_grad():
        frames = pipe(conditions=_pipeline_conditions(conditions), prompt="a dog", num_inference_steps=3,
                      generator=torch.Generator().manual_seed(6), output_type="pt", **SHORT, **options).frames
    videos = condition_to_video(model, "a dog", conditions, steps=3, seed=6, output_range="0,1", **SHORT, **options)
    error = relative_error(videos, frames)
    print(f"frames: {error:.2e}")
    assert videos.shape == frames.shape == (1, 9, 3, H, W) and error < 1e-5


def test_ltx_condition_command_writes_the_library_videos(tiny_condition, tmp_path):
    """diffkit video with an image at frame 0 and a video (an APNG) at frame 4, strengths 1 and 0.8, two videos in a
    batch, diffkit's ddpm sampler: each video of --individual is the library's, rounded as to_uint8."""
    _, path, model = tiny_condition
    IMAGES[0].save(tmp_path / "first.png")
    clip = torch.from_numpy(np.stack([np.asarray(f) for f in CLIP])).permute(0, 3, 1, 2).float() / 127.5 - 1
    save_video_grid(clip[:, None], tmp_path / "clip.png", nrow=1, fps=8)
    clip = read_video(tmp_path / "clip.png")
    expected = condition_to_video(model, ["a cat", "a dog"], [(read_video(tmp_path / "first.png"), 0, 1.0),
                                                              (clip, 4, 0.8)],
                                  steps=2, seed=3, sampler="ddpm", **SHORT)
    argv = ["video", "--checkpoint", str(path), "--prompt", "a cat", "--prompt", "a dog", "--steps", "2", "--seed",
            "3", "--batch-size", "2", "--sampler", "ddpm", "--frames", "9", "--height", str(H), "--width", str(W),
            "--condition", str(tmp_path / "first.png"), "--condition", str(tmp_path / "clip.png"),
            "--condition-frame", "0", "--condition-frame", "4", "--condition-strength", "1",
            "--condition-strength", "0.8", "--out", str(tmp_path / "grid.png"), "--individual", str(tmp_path / "each"),
            "--no-progress"]
    assert main(argv) == 0
    for i in range(2):
        back = read_video(tmp_path / "each" / f"video_{i:05d}.png")
        assert np.array_equal(to_uint8(back), to_uint8(expected[i]))


@pytest.mark.parametrize("args, message", [
    (["--condition", "first.png", "--condition", "first.png"], "2 --condition files need --condition-frame N"),
    (["--condition", "first.png", "--condition-frame", "0", "--condition-frame", "4"],
     "--condition-frame is given 2 times for 1 --condition"),
    (["--condition", "first.png", "--condition-frame", "9", "--frames", "9", "--height", "32", "--width", "32"],
     "--condition-frame 9 is not allowed for 9-frame videos; give 0 .. 8"),
    (["--condition", "first.png", "--condition-strength", "1", "--condition-strength", "0.5"],
     "--condition-strength is given 2 times for 1 --condition"),
    (["--image-cond-noise-scale", "0.2"], "--image-cond-noise-scale applies with --condition FILE"),
    (["--condition", "missing.png"], "--condition 'missing.png': video 'missing.png' does not exist"),
    (["--image", "first.png"], "--image does not apply to an LTX-Video condition folder"),
    (["--frames", "8"], "num_frames=8 is not allowed"),
])
def test_ltx_condition_refusals_are_one_line(tiny_condition, tmp_path, monkeypatch, capsys, args, message):
    """Before any weight is read, one line and no file (tests/_video_helpers.refused_in_one_line)."""
    _, path, _ = tiny_condition
    monkeypatch.chdir(tmp_path)
    IMAGES[0].save(tmp_path / "first.png")
    refused_in_one_line(capsys, tmp_path, "video", path, args, message)


def test_ltx_condition_folder_and_library_refusals(tiny_condition, tiny_ltx, tmp_path, capsys, monkeypatch):
    """The folder's scheduler (shifted timesteps), --condition on an LTXPipeline folder, and the library's own."""
    _, path, model = tiny_condition
    for change, expected in [({"shift_terminal": 0.1}, "shift_terminal=0.1 is not allowed"),
                             ({"use_dynamic_shifting": True}, "use_dynamic_shifting=True is not allowed"),
                             ({"shift": 3.0}, "shift=3.0 is not allowed")]:
        with pytest.raises(DiffkitError, match=re.escape(expected)):
            check_condition_folder(changed_folder(path, tmp_path, "scheduler/scheduler_config.json", change))
    monkeypatch.chdir(tmp_path)
    IMAGES[0].save(tmp_path / "first.png")
    refused_in_one_line(capsys, tmp_path, "video", tiny_ltx[1], ["--condition", "first.png"],
                        "--condition does not apply to an LTX-Video folder")
    for options, expected in [({"conditions": [(IMAGES[0], 9, 1.0)]}, "condition 0's frame_index=9 is not allowed"),
                              ({"conditions": [(IMAGES[0], 0, 1.5)]}, "condition 0's strength"),
                              ({"denoise_strength": 0.5}, "denoise_strength=0.5 with init_latents None"),
                              ({"image_cond_noise_scale": -1.0}, "image_cond_noise_scale")]:
        with pytest.raises(DiffkitError, match=re.escape(expected)):
            condition_to_video(model, "x", **{**SHORT, **options})


def test_ltx_latent_upsampler_matches_the_pipeline(tiny_condition, tmp_path):
    """LTXLatentUpsamplePipeline(latents=...) on a tiny random LTXLatentUpsamplerModel (its norms randomised too) saved
    as a pipeline folder: the upsampled normalised latents with AdaIN 0.5 and tone mapping 0.4 (and without), and the
    frames decoded at timestep 0.05 with noise 0.025 from generator seed 7 (:meth:`LTX.decode`)."""
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel
    from diffkit.interop.ltx_upsample import load_latent_upsampler, upsample_latents, upsampler_folder
    pipe, _, model = tiny_condition
    torch.manual_seed(2)
    net = LTXLatentUpsamplerModel(in_channels=8, mid_channels=32, num_blocks_per_stage=1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
    diffusers.LTXLatentUpsamplePipeline(vae=pipe.vae, latent_upsampler=net).save_pretrained(tmp_path / "up")
    theirs_pipe = diffusers.LTXLatentUpsamplePipeline.from_pretrained(tmp_path / "up")
    upsampler = load_latent_upsampler(tmp_path / "up")
    latents = torch.randn(1, 8, 3, 2, 4, generator=torch.Generator().manual_seed(4))
    for options in ({"adain_factor": 0.5, "tone_map_compression_ratio": 0.4}, {}):
        with torch.no_grad():
            theirs = theirs_pipe(latents=latents, height=H, width=W, output_type="latent", **options).frames
        ours = upsample_latents(model, upsampler, latents, **options)
        error = relative_error(ours, theirs)
        print(f"upsampled latents {options}: {error:.2e}")
        assert ours.shape == theirs.shape == (1, 8, 3, 4, 8) and error < 1e-5
    decode = {"decode_timestep": 0.05, "decode_noise_scale": 0.025}
    with torch.no_grad():
        frames = theirs_pipe(latents=latents, height=H, width=W, output_type="pt", adain_factor=0.5,
                             generator=torch.Generator().manual_seed(7), **decode).frames
    ours = model.decode(upsample_latents(model, upsampler, latents, adain_factor=0.5), generators=[
        torch.Generator().manual_seed(7)], **decode)
    error = relative_error((ours / 2 + 0.5).clamp(0, 1), frames)
    print(f"upsampled frames: {error:.2e}")
    assert frames.shape == (1, 9, 3, 2 * H, 2 * W) and error < 1e-5
    assert upsampler_folder(tmp_path / "up") == tmp_path / "up" / "latent_upsampler"
    for bad, expected in [(lambda: upsampler_folder(tmp_path), "is not an LTX-Video latent upsampler"),
                          (lambda: upsample_latents(model, upsampler, latents[:, :4]), "latents of shape (1, 4, 3, "),
                          (lambda: upsample_latents(model, upsampler, latents, tone_map_compression_ratio=2),
                           "tone_map_compression_ratio")]:
        with pytest.raises(DiffkitError, match=re.escape(expected)):
            bad()
