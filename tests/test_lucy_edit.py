"""Lucy-Edit folders (diffkit.interop.lucy_edit, ``diffkit video --video``) against diffusers' own LucyEditPipeline on
a tiny random folder of Lucy-Edit-Dev's structure (Wan text-to-video's tiny parts of tests/test_wan.py with a
1-layer WanTransformer3DModel of 2 z_dim input channels, the tiny Wan 2.2 VAE of z_dim 4 (2 x 2 pixel patches,
factor 16), ``expand_timesteps``, Wan's flow UniPC; input videos of 5 frames of 36 x 40 resized to 32 x 32: 2 latent
frames of 2 x 2, one patch each; nothing downloaded). ftfy is not installed: the pipeline's prompt_clean gets it as
the identity, as diffkit does."""
import re
import types

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import to_uint8  # noqa: E402
from diffkit.interop.lucy_edit import check_lucy_edit_folder, edit_video, load_lucy_edit  # noqa: E402
from diffkit.video import read_video  # noqa: E402

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from _video_helpers import refused_in_one_line  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_wan import Z, randomised, tiny_wan22_vae, tiny_wan_parts  # noqa: E402
from test_wan_v2v import _frames_folder, _video  # noqa: E402

H, W, FRAMES = 32, 32, 5
PROMPTS, NEGATIVE = ["make the Cat a tiger", "turn it to winter"], "blurry dog"


@pytest.fixture(scope="module")
def tiny_lucy(tmp_path_factory):
    """(LucyEditPipeline.from_pretrained of the saved folder, the folder, load_lucy_edit of it), with ftfy's fix_text
    as the identity in the pipeline's module while the tests run."""
    from diffusers.pipelines.lucy import pipeline_lucy_edit
    parts = tiny_wan_parts()
    torch.manual_seed(3)
    transformer = randomised(diffusers.WanTransformer3DModel(**{**parts["transformer"].config, "in_channels": 2 * Z}),
                             seed=4)
    root = tmp_path_factory.mktemp("lucy")
    diffusers.LucyEditPipeline(**{**parts, "transformer": transformer, "vae": tiny_wan22_vae()},
                               expand_timesteps=True).save_pretrained(root / "lucy")
    with pytest.MonkeyPatch.context() as patch:
        if not hasattr(pipeline_lucy_edit, "ftfy"):
            patch.setattr(pipeline_lucy_edit, "ftfy", types.SimpleNamespace(fix_text=lambda text: text),
                          raising=False)
        yield reloaded(root / "lucy", diffusers.LucyEditPipeline, load_lucy_edit)


def test_lucy_edit_matches_the_pipeline(tiny_lucy):
    """Two instructions on two input videos, CFG s = 4 against negative prompts, 3 UniPC steps, video i's noise from
    seed 3 + i (the pipeline's per-video generators): the same final latents (read by a step callback) and decoded
    frames (B, T, C, H, W) in [0, 1] (``output_type="pt"``)."""
    pipe, _, model = tiny_lucy
    videos, final = [_video(1, size=(W + 4, H + 8)), _video(2, size=(W + 4, H + 8))], {}
    kw = {"negative_prompt": [NEGATIVE, "ugly"], "guidance_scale": 4.0, "height": H, "width": W}
    with torch.no_grad():
        frames = pipe(video=videos, prompt=PROMPTS, num_inference_steps=3, num_frames=FRAMES, output_type="pt",
                      generator=[torch.Generator().manual_seed(3 + i) for i in range(2)],
                      callback_on_step_end=lambda p, i, t, tensors: final.update(tensors) or {}, **kw).frames
    ours = edit_video(model, videos, PROMPTS, steps=3, seed=3, return_latents=True, **kw)
    error = relative_error(ours, final["latents"])
    print(f"latents: {error:.2e}")  # (measured 7.9e-7)
    assert error < 1e-5
    videos = (model.decode_video(ours) / 2 + 0.5).clamp(0, 1)
    assert videos.shape == frames.shape == (2, FRAMES, 3, H, W)
    error = relative_error(videos, frames)
    print(f"frames: {error:.2e}")  # (measured 4.8e-7)
    assert error < 1e-5


def test_lucy_edit_ddim_matches_flow_match_euler(tiny_lucy, tmp_path):
    """The folder with a FlowMatchEulerDiscreteScheduler (shift 3, its grid from s = 1), 3 steps unguided: diffkit's
    deterministic ``ddim`` sampler on its grid (the one that starts at infinite noise) is the pipeline's Euler loop
    (``output_type="latent"``)."""
    pipe, path, _ = tiny_lucy
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    euler = diffusers.LucyEditPipeline(**{**pipe.components, "scheduler": scheduler}, expand_timesteps=True)
    euler.set_progress_bar_config(disable=True)
    folder = changed_folder(path, tmp_path, "model_index.json", {"scheduler": [
        "diffusers", "FlowMatchEulerDiscreteScheduler"]}, parts=("transformer", "text_encoder", "tokenizer", "vae"))
    scheduler.save_pretrained(folder / "scheduler")
    model = load_lucy_edit(folder, progress=False)
    video, kw = _video(4), {"guidance_scale": 1.0, "height": H, "width": W}
    with torch.no_grad():
        theirs = euler(video=video, prompt=PROMPTS[0], num_inference_steps=3, output_type="latent",
                       generator=[torch.Generator().manual_seed(5)], **kw).frames
    ours = edit_video(model, [video], PROMPTS[0], steps=3, seed=5, sampler="ddim", eta=0.0, return_latents=True, **kw)
    error = relative_error(ours, theirs)
    print(f"latents: {error:.2e}")  # (measured 7.9e-8)
    assert error < 1e-5


def test_lucy_edit_wan21_vae_without_expand_timesteps(tiny_lucy, tmp_path):
    """The same transformer on a Wan 2.1 VAE (factor 8, 16 x 32 frames: 2 x 4 latents) without ``expand_timesteps``
    (one timestep per video), 2 UniPC steps unguided: the pipeline's final latents."""
    pipe, _, _ = tiny_lucy
    lucy = diffusers.LucyEditPipeline(**{**pipe.components, "vae": tiny_wan_parts()["vae"]})
    lucy.save_pretrained(tmp_path / "lucy21")
    theirs_pipe, _, model = reloaded(tmp_path / "lucy21", diffusers.LucyEditPipeline, load_lucy_edit)
    video, kw = _video(7), {"guidance_scale": 1.0, "height": 16, "width": 32}
    with torch.no_grad():
        theirs = theirs_pipe(video=video, prompt=PROMPTS[1], num_inference_steps=2, output_type="latent",
                             generator=[torch.Generator().manual_seed(1)], **kw).frames
    ours = edit_video(model, [video], PROMPTS[1], steps=2, seed=1, return_latents=True, **kw)
    assert not model.expand_timesteps and ours.shape == (1, Z, 2, 2, 4)
    error = relative_error(ours, theirs)
    print(f"latents: {error:.2e}")  # (measured 1.2e-7)
    assert error < 1e-5


def test_lucy_edit_two_experts_match_the_pipeline(tiny_lucy, tmp_path):
    """The pipeline's two-expert path (a second random transformer as ``transformer_2``, boundary_ratio 0.8: of 3
    UniPC steps at timesteps 999, 857, 600 the first two are ``transformer``'s), CFG 4 and guidance_scale_2 2.5
    against a negative prompt: the same final latents (``output_type="latent"``); a ``transformer_2`` of z_dim input
    channels and a boundary_ratio of 1.5 refused from the JSON."""
    pipe, _, _ = tiny_lucy
    torch.manual_seed(5)
    second = randomised(diffusers.WanTransformer3DModel(**pipe.transformer.config), seed=6)
    diffusers.LucyEditPipeline(**{**pipe.components, "transformer_2": second}, boundary_ratio=0.8,
                               expand_timesteps=True).save_pretrained(tmp_path / "lucy22")
    theirs_pipe, path, model = reloaded(tmp_path / "lucy22", diffusers.LucyEditPipeline, load_lucy_edit)
    video = _video(8, size=(W, H))
    kw = {"negative_prompt": NEGATIVE, "guidance_scale": 4.0, "guidance_scale_2": 2.5, "height": H, "width": W}
    with torch.no_grad():
        theirs = theirs_pipe(video=video, prompt=PROMPTS[0], num_inference_steps=3, output_type="latent",
                             generator=[torch.Generator().manual_seed(2)], **kw).frames
    ours = edit_video(model, [video], PROMPTS[0], steps=3, seed=2, return_latents=True, **kw)
    assert model.boundary_ratio == 0.8
    error = relative_error(ours, theirs)
    print(f"latents: {error:.2e}")  # (measured 4.2e-7)
    assert error < 1e-5
    parts = ("model_index.json", "scheduler", "transformer", "transformer_2", "text_encoder", "tokenizer", "vae")
    for part, change, expected in [
            ("model_index.json", {"boundary_ratio": 1.5}, "boundary_ratio=1.5 with transformer_2="),
            ("transformer_2/config.json", {"in_channels": Z}, f"transformer_2 has in_channels={Z}; allowed: {2 * Z}")]:
        with pytest.raises(DiffkitError, match=re.escape(expected)):
            check_lucy_edit_folder(changed_folder(path, tmp_path, part, change, parts=parts))


def test_lucy_edit_lora_is_load_lora_weights_and_fuse_lora(tiny_lucy, tmp_path):
    """A diffusers-format LoRA (Wan text-to-video's test's) at 0.6 through the shared Wan reader: the transformer of
    LucyEditPipeline's load_lora_weights + fuse_lora(lora_scale=0.6)."""
    from test_wan import fused_lora_matches
    pipe, path, _ = tiny_lucy
    fused_lora_matches(diffusers.LucyEditPipeline, pipe, path, tmp_path, load_lucy_edit)


def test_lucy_edit_command(tiny_lucy, tmp_path):
    """``diffkit video --video DIR`` (two instructions on one input video in one batch, 2 steps, CFG 5 against "")
    writes the library's frames at 24 fps."""
    from PIL import Image
    _, path, model = tiny_lucy
    folder = _frames_folder(tmp_path / "in", _video(6))
    assert main(["video", "--checkpoint", str(path), "--video", str(folder), "--prompt", PROMPTS[0], "--prompt",
                 PROMPTS[1], "--steps", "2", "--height", str(H), "--width", str(W), "--seed", "2", "--batch-size",
                 "2", "--nrow", "1", "--out", str(tmp_path / "v.png"), "--no-progress"]) == 0
    expected = edit_video(model, [read_video(folder)] * 2, PROMPTS, steps=2, height=H, width=W, seed=2)
    written = read_video(tmp_path / "v.png")
    for i in range(2):
        assert (to_uint8(written[:, :, 2 + i * (H + 2):2 + i * (H + 2) + H, 2:2 + W]) == to_uint8(expected[i])).all()
    with Image.open(tmp_path / "v.png") as image:
        assert abs(image.info["duration"] - 1000 / 24) < 0.5  # 24 fps


@pytest.mark.parametrize("command, args, message", [
    ("video", ["--video", "six"], "input videos of 6 frames are not allowed; give 4 k + 1 frames"),
    ("video", ["--video", "in", "--height", "48"], "--height 48 is not allowed for a Lucy-Edit folder"),
    ("video", ["--video", "in", "--frames", "5"], "--frames does not apply to a Lucy-Edit folder"),
    ("video", ["--video", "in", "--strength", "0.5"], "--strength does not apply to a Lucy-Edit folder"),
    ("video", ["--video", "in", "--guidance-scale-2", "2"], "--guidance-scale-2 applies to a Wan 2.2 A14B folder"),
    ("video", [], "folder (video-to-video): give --video FILE"),
    ("video", ["--video", "in", "--negative-prompt", "x", "--guidance-scale", "0"], "a negative prompt with guidance"),
    ("sample", [], "LucyEditPipeline folder, which diffkit sample does not take (it makes videos)"),
])
def test_lucy_edit_command_refusals_are_one_line(tiny_lucy, tmp_path, capsys, monkeypatch, command, args, message):
    monkeypatch.chdir(tmp_path)
    _frames_folder(tmp_path / "in", _video(1))
    _frames_folder(tmp_path / "six", _video(1, frames=6))
    refused_in_one_line(capsys, tmp_path, command, tiny_lucy[1], args, message)


@pytest.mark.parametrize("part, change, message", [
    ("model_index.json", {"boundary_ratio": 0.9}, "boundary_ratio=0.9 with transformer_2=None; allowed: a number"),
    ("model_index.json", {"_class_name": "WanPipeline"}, "is not a Lucy-Edit folder"),
    ("transformer/config.json", {"in_channels": Z}, f"transformer has in_channels={Z}; allowed: {2 * Z}"),
    ("transformer/config.json", {"image_dim": 16}, "transformer has image_dim=16; allowed: None"),
    ("vae/config.json", {"patch_size": 4}, "vae has patch_size=4; allowed: null (Wan 2.1's VAE) or 2"),
])
def test_lucy_edit_folder_refusals(tiny_lucy, tmp_path, part, change, message):
    with pytest.raises(DiffkitError, match=re.escape(message)):
        check_lucy_edit_folder(changed_folder(tiny_lucy[1], tmp_path, part, change))


@pytest.mark.parametrize("call, message", [
    (lambda m: edit_video(m, [_video(1, frames=6)], "x", height=H, width=W), "input videos of 6 frames"),
    (lambda m: edit_video(m, [_video(1)] * 2, "x", height=H, width=W), "2 videos for 1 prompts"),
    (lambda m: edit_video(m, [_video(1)], "x", height=48, width=W), "height x width 48x32 is not allowed"),
    (lambda m: edit_video(m, None, "x", height=H, width=W), "videos=None is not allowed"),
    (lambda m: edit_video(m, [_video(1)], "x", height=H, width=W, guidance_scale_2=2.0), "guidance_scale_2=2.0 is not"),
])
def test_lucy_edit_library_refusals(tiny_lucy, call, message):
    with pytest.raises(DiffkitError, match=re.escape(message)):
        call(tiny_lucy[2])
