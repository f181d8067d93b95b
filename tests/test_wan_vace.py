"""Wan VACE folders (diffkit.interop.wan_vace, ``diffkit video``) against diffusers' own WanVACEPipeline on a tiny
random folder (Wan text-to-video's tiny UMT5, Wan 2.1 VAE of z_dim 4 and flow UniPC of tests/test_wan.py, a 2-layer
WanVACETransformer3DModel with VACE blocks after both layers, its zero parameters and norms randomised; 5 frames -> 2
latent frames of 16 x 32; nothing downloaded). ftfy is not installed: the pipeline's prompt_clean gets it as the
identity, as diffkit does."""
import re
import types

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import to_uint8  # noqa: E402
from diffkit.interop.wan_vace import check_wan_vace_folder, load_wan_vace, vace_to_video  # noqa: E402
from diffkit.video import animation_bytes, read_video  # noqa: E402

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from _video_helpers import refused_in_one_line  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_wan import Z, randomised, tiny_wan_parts  # noqa: E402

H, W, FRAMES = 16, 32, 5  # latents 2 frames of 2 x 4: 1 x 2 patches
PROMPT, NEGATIVE = "a photo of a Cat", "blurry dog"
VACE = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=Z, out_channels=Z,
            text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32, vace_layers=[0, 1],
            vace_in_channels=2 * Z + 64)


def vace_transformer(seed: int):
    """A tiny WanVACETransformer3DModel, its zero parameters and its norms randomised, its hints (the VACE blocks'
    proj_out) scaled up so that the context moves the output."""
    torch.manual_seed(seed)
    model = randomised(diffusers.WanVACETransformer3DModel(**VACE), seed=seed)
    with torch.no_grad():
        for name, value in model.named_parameters():
            if "norm" in name:
                value.add_(0.2 * torch.randn_like(value))
            if name.startswith("vace_blocks") and "proj_out" in name:
                value.mul_(4.0)
    return model


@pytest.fixture(scope="module")
def tiny_vace(tmp_path_factory):
    """(WanVACEPipeline.from_pretrained of the saved folder, the folder, load_wan_vace of it), with ftfy's fix_text
    as the identity in the pipeline's module while the tests run."""
    from diffusers.pipelines.wan import pipeline_wan_vace
    root = tmp_path_factory.mktemp("wan_vace")
    diffusers.WanVACEPipeline(**{**tiny_wan_parts(), "transformer": vace_transformer(4)}).save_pretrained(root / "vace")
    with pytest.MonkeyPatch.context() as patch:
        if not hasattr(pipeline_wan_vace, "ftfy"):
            patch.setattr(pipeline_wan_vace, "ftfy", types.SimpleNamespace(fix_text=lambda text: text), raising=False)
        yield reloaded(root / "vace", diffusers.WanVACEPipeline, load_wan_vace)


def _frames(seed: int, values=None, size=(H, W)) -> torch.Tensor:
    """FRAMES random 8-bit frames (T, H, W, 3) (``values``: drawn from those only, per 4 x 4 block and channel)."""
    g = torch.Generator().manual_seed(seed)
    if values is None:
        return torch.randint(0, 256, (FRAMES, *size, 3), generator=g, dtype=torch.uint8)
    pick = torch.randint(0, len(values), (FRAMES, size[0] // 4, size[1] // 4, 3), generator=g)
    return torch.tensor(values, dtype=torch.uint8)[pick].repeat_interleave(4, 1).repeat_interleave(4, 2)


def _pil(frames):
    from PIL import Image
    return [Image.fromarray(f.numpy()) for f in frames]


def _tensor(frames):
    """diffkit's video (T, 3, H, W) in [-1, 1] of 8-bit frames, as read_video reads them."""
    return frames.permute(0, 3, 1, 2).float() / 127.5 - 1


def _image(seed: int, size):
    from PIL import Image
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy())


VIDEO, MASK = _frames(1), _frames(2, values=[0, 100, 160, 255])  # a mask of grey levels, channels apart
REFERENCES = [_image(5, (21, 13)), _image(6, (12, 40))]  # (rounded to 16 x 8 and 8 x 40, then fit and centred)


def _compare(pipe, model, label: str, ours_kw: dict, **kw):
    """One pipeline call (seed 3, 2 UniPC steps, CFG 4 against NEGATIVE, 5 frames of 16 x 32) against diffkit's: the
    final latents (read by a step callback) and the ``output_type="pt"`` frames, each within 1e-5 relative."""
    final = {}

    def keep(pipeline, i, t, tensors):
        final["latents"] = tensors["latents"]
        return {}
    common = {"negative_prompt": NEGATIVE, "guidance_scale": 4.0, "height": H, "width": W, "num_frames": FRAMES}
    with torch.no_grad():
        frames = pipe(PROMPT, num_inference_steps=2, output_type="pt", callback_on_step_end=keep,
                      generator=torch.Generator().manual_seed(3), **common, **kw).frames
    ours = vace_to_video(model, PROMPT, steps=2, seed=3, return_latents=True, **common, **ours_kw)
    error = relative_error(ours, final["latents"])
    print(f"{label} latents: {error:.2e}")
    assert error < 1e-5
    refs = len(ours_kw.get("reference_images") or [])
    videos = model.output_videos(ours[:, :, refs:], "0,1", False)  # vace_to_video's decoding of those latents
    assert videos.shape == frames.shape == (1, FRAMES, 3, H, W)
    error = relative_error(videos, frames)
    print(f"{label} frames: {error:.2e}")
    assert error < 1e-5
    return ours


def test_wan_vace_video_and_mask_match_the_pipeline(tiny_vace):
    """A control video with a mask video of grey levels (its channels apart: the VAE split per channel at 0.5, the
    first channel's values folded 8 x 8 into the context), conditioning_scale per layer (0.7, 1.3): the same latents
    and frames; the context moves them (the same run with conditioning_scale 0 differs)."""
    pipe, _, model = tiny_vace
    ours = _compare(pipe, model, "video + mask", {"videos": _tensor(VIDEO), "mask": _tensor(MASK),
                                                  "conditioning_scale": [0.7, 1.3]},
                    video=_pil(VIDEO), mask=_pil(MASK), conditioning_scale=[0.7, 1.3])
    off = vace_to_video(model, PROMPT, videos=_tensor(VIDEO), mask=_tensor(MASK), conditioning_scale=0.0, steps=2,
                        seed=3, negative_prompt=NEGATIVE, guidance_scale=4.0, return_latents=True)
    assert relative_error(off, ours) > 1e-2


def test_wan_vace_reference_images_match_the_pipeline(tiny_vace):
    """Text-to-video with two reference images (21 x 13 and 12 x 40: rounded to multiples of 8, fit bilinearly and
    centred on white; the latents 2 frames longer, the last reference first): the same latents and frames."""
    pipe, _, model = tiny_vace
    ours = _compare(pipe, model, "references", {"reference_images": REFERENCES}, reference_images=REFERENCES)
    assert ours.shape == (1, Z, 4, H // 8, W // 8)


def _written(tmp_path, name, frames):
    (tmp_path / name).write_bytes(animation_bytes(list(frames.numpy()), fps=16))
    return str(tmp_path / name)


def test_wan_vace_command_is_the_library(tiny_vace, tmp_path, capsys):
    """``diffkit video --video --mask --reference-image --conditioning-scale`` writes the library's video (8-bit
    frames, 16 fps, the control video's 5 frames of 32 x 16)."""
    _, path, model = tiny_vace
    video, mask = _written(tmp_path, "v.png", VIDEO), _written(tmp_path, "m.png", MASK)
    REFERENCES[0].save(tmp_path / "r.png")
    assert main(["video", "--checkpoint", str(path), "--prompt", PROMPT, "--video", video, "--mask", mask,
                 "--reference-image", str(tmp_path / "r.png"), "--conditioning-scale", "0.8", "--steps", "2",
                 "--seed", "5", "--no-progress", "--out", str(tmp_path / "out.png")]) == 0
    assert "wrote 1 videos of 5 frames (32x16, 16 fps)" in capsys.readouterr().out
    expected = vace_to_video(model, PROMPT, videos=read_video(video), mask=read_video(mask),
                             reference_images=REFERENCES[:1], conditioning_scale=0.8, steps=2, seed=5)[0]
    expected = torch.from_numpy(to_uint8(expected)).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(read_video(tmp_path / "out.png")[:, :, 2:2 + H, 2:2 + W], expected)


def test_wan_vace_lora_is_load_lora_weights_and_fuse_lora(tiny_vace, tmp_path):
    """A diffusers-format LoRA (Wan text-to-video's test's modules, the VACE blocks' proj_in / proj_out and attention
    too) at 0.6 through the shared Wan reader: the transformer of WanVACEPipeline's load_lora_weights +
    fuse_lora(lora_scale=0.6); ``diffkit video --video --lora FILE:0.6`` writes the library's video (1 step); a file
    of another layout refused in one line naming the kind."""
    from safetensors.torch import save_file
    from test_wan import WAN_LORA, fused_lora_matches
    pipe, path, _ = tiny_vace
    config = {**WAN_LORA, "target_modules": WAN_LORA["target_modules"] + ["proj_in"]}
    lora, ours, _ = fused_lora_matches(diffusers.WanVACEPipeline, pipe, path, tmp_path, load_wan_vace, config)
    video = _written(tmp_path, "v.png", VIDEO)
    assert main(["video", "--checkpoint", str(path), "--prompt", PROMPT, "--video", video, "--steps", "1", "--seed",
                 "5", "--lora", f"{lora}:0.6", "--no-progress", "--out", str(tmp_path / "out.png")]) == 0
    expected = vace_to_video(ours, PROMPT, videos=read_video(video), steps=1, seed=5)[0]
    assert (to_uint8(read_video(tmp_path / "out.png")[:, :, 2:2 + H, 2:2 + W]) == to_uint8(expected)).all()
    save_file({"transformer.vace_blocks.0.proj_out.lora_down.weight": torch.zeros(2, 24)}, tmp_path / "bad.safetensors")
    with pytest.raises(DiffkitError, match="on a Wan VACE folder"):
        load_wan_vace(path, progress=False, lora=[tmp_path / "bad.safetensors"])


@pytest.fixture(scope="module")
def written_inputs(tmp_path_factory):
    """Inputs for the refusals: v.png (the 5-frame control video), v3.png (3 frames), big.png (5 frames of 32 x
    32), r.png (a reference image)."""
    root = tmp_path_factory.mktemp("vace_inputs")
    _written(root, "v.png", VIDEO)
    _written(root, "v3.png", VIDEO[:3])
    _written(root, "big.png", _frames(7, size=(32, 32)))
    REFERENCES[0].save(root / "r.png")
    (root / "not.png").write_text("no image")
    return root


@pytest.mark.parametrize("args,message", [
    (["--mask", "{v}"], "--mask needs --video"),
    (["--video", "{v3}"], "--video files of 3 frames are not allowed; give 4 k + 1"),
    (["--video", "{v}", "--mask", "{big}"], "--mask of 5 frames of 32x32 does not fit"),
    (["--video", "{v}", "--video", "{big}", "--num", "2"], "--video files of sizes"),
    (["--video", "{v}", "--frames", "9"], "--frames 9 is not allowed with --video"),
    (["--video", "{v}", "--height", "32"], "--height 32 is not allowed with --video"),
    (["--reference-image", "{not}"], "cannot be read as an image"),
    (["--frames", "4"], "num_frames=4 is not allowed"),
    (["--lora", "{r}", "--lora-any-base"], "--lora-any-base does not apply to a Wan VACE folder"),
    (["--image", "{r}"], "--image does not apply to a Wan VACE folder")])
def test_wan_vace_command_refusals_are_one_line(tiny_vace, written_inputs, tmp_path, capsys, monkeypatch, args,
                                                message):
    """Before any weight is read (the loader patched to fail), nothing written: a mask without a video, a video of
    frames not 4 k + 1, a mask of another size, videos of several sizes, --frames / --height other than the video's,
    an unreadable reference image, --lora-any-base (``diffkit sample`` / ``edit`` on the folder: the shared refusal
    of every VIDEO_KINDS folder, tests/test_wan.py's)."""
    import diffkit.interop.wan_vace as wan_vace
    monkeypatch.setattr(wan_vace, "load_wan_vace", lambda *a, **k: pytest.fail("weights read"))
    monkeypatch.chdir(tmp_path)
    names = {k: str(written_inputs / f"{k}.png") for k in ("v", "v3", "big", "r", "not")}
    refused_in_one_line(capsys, tmp_path, "video", tiny_vace[1], [a.format(**names) for a in args], message)


def test_wan_vace_folder_and_library_refusals(tiny_vace, tmp_path):
    """The folder's JSON checks (another transformer class, vace_in_channels not 2 C + 64, a Wan 2.2 VAE, no
    transformer) and the library's (a mask without videos, a conditioning_scale of another length)."""
    _, path, model = tiny_vace
    for part, change, expected in [
            ("model_index.json", {"transformer": ["diffusers", "WanTransformer3DModel"]},
             "transformer is a 'WanTransformer3DModel'; allowed: WanVACETransformer3DModel"),
            ("model_index.json", {"transformer": [None, None]}, "transformer"),
            ("transformer/config.json", {"vace_in_channels": 96}, "vace_in_channels=96; allowed: 72"),
            ("vae/config.json", {"patch_size": 2}, "patch_size=2; allowed: None (a Wan 2.1 VAE")]:
        with pytest.raises(DiffkitError, match=re.escape(expected)):
            check_wan_vace_folder(changed_folder(path, tmp_path, part, change))
    for kw, expected in [({"mask": _tensor(MASK)}, "a mask without a control video is not allowed"),
                         ({"conditioning_scale": [1.0, 1.0, 1.0]}, "conditioning_scale=[1.0, 1.0, 1.0] is not "
                                                                   "allowed; give one finite number or 2")]:
        with pytest.raises(DiffkitError, match=re.escape(expected)):
            vace_to_video(model, PROMPT, num_frames=FRAMES, height=H, width=W, steps=1, **kw)


def test_wan22_vace_two_experts_match_the_pipeline(tiny_vace, tmp_path_factory):
    """Wan 2.2's VACE form: a second VACE transformer as transformer_2, boundary_ratio 0.8 (of 2 UniPC steps at
    timesteps 999 and 750 the first high-noise), guidance_scale 4 / guidance_scale_2 2.5, a control video: the same
    final latents (output_type="latent")."""
    pipe, _, _ = tiny_vace
    path = tmp_path_factory.mktemp("wan22_vace") / "vace22"
    diffusers.WanVACEPipeline(**{**pipe.components, "transformer_2": vace_transformer(5)},
                              boundary_ratio=0.8).save_pretrained(path)
    pipe, _, model = reloaded(path, diffusers.WanVACEPipeline, load_wan_vace)
    kw = {"negative_prompt": NEGATIVE, "guidance_scale": 4.0, "guidance_scale_2": 2.5, "height": H, "width": W,
          "num_frames": FRAMES}
    with torch.no_grad():
        theirs = pipe(PROMPT, video=_pil(VIDEO), num_inference_steps=2, output_type="latent",
                      generator=torch.Generator().manual_seed(2), **kw).frames
    ours = vace_to_video(model, PROMPT, videos=_tensor(VIDEO), steps=2, seed=2, return_latents=True, **kw)
    error = relative_error(ours, theirs)
    print(f"two experts latents: {error:.2e}")
    assert error < 1e-5
