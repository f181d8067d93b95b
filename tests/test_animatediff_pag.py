"""Perturbed-attention guidance on AnimateDiff (diffkit.interop.animatediff.pag_guidance) against diffusers' own
AnimateDiffPAGPipeline on the tiny AnimateDiff folder of tests/test_animatediff.py (shared fixture), and
``diffkit video --pag-scale``."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.images import to_uint8  # noqa: E402
from diffkit.interop.animatediff import text_to_video  # noqa: E402
from diffkit.video import read_video  # noqa: E402

from _video_helpers import refused_in_one_line  # noqa: E402
from test_animatediff import FRAMES, SIZE, tiny_animatediff  # noqa: E402,F401
from test_interop_diffusers import relative_error  # noqa: E402


@pytest.mark.parametrize("case", [
    dict(guidance_scale=5.0, negative_prompt="ot", pag_scale=2.0),  # 3 thirds, the pipeline's mid_block.*attn1
    dict(guidance_scale=1.0, pag_scale=3.0, pag_adaptive_scale=0.002, layers=["down_blocks.1", "up_blocks.1"]),
])
def test_animatediff_pag_matches_the_pipeline(tiny_animatediff, case):
    pipe, _, model, _ = tiny_animatediff
    case = dict(case)
    layers = case.pop("layers", None)
    pag = diffusers.AnimateDiffPAGPipeline(**{k: v for k, v in pipe.components.items()},
                                           **({} if layers is None else {"pag_applied_layers": layers}))
    pag.set_progress_bar_config(disable=True)
    final = {}

    def keep(pipeline, i, t, tensors):
        final["latents"] = tensors["latents"]
        return {}
    kw = {"num_frames": FRAMES, "height": SIZE, "width": SIZE, **case}
    with torch.no_grad():
        frames = pag("a photo", num_inference_steps=3, generator=[torch.Generator().manual_seed(3)],
                     output_type="pt", callback_on_step_end=keep, **kw).frames
    ours = text_to_video(model, "a photo", steps=3, seed=3, return_latents=True, pag_layers=layers, **kw)
    error = relative_error(ours, final["latents"])
    print(f"latents: {error:.2e}")
    assert error < 1e-5
    plain = text_to_video(model, "a photo", steps=3, seed=3, return_latents=True,
                          **{k: v for k, v in kw.items() if not k.startswith("pag")})
    assert relative_error(plain, final["latents"]) > 1e-3  # the perturbation matters
    error = relative_error((model.decode_video(ours) / 2 + 0.5).clamp(0, 1), frames)
    print(f"frames: {error:.2e}")
    assert error < 1e-5


def test_animatediff_pag_command_is_the_library(tiny_animatediff, tmp_path):
    _, path, model, _ = tiny_animatediff
    assert main(["video", "--checkpoint", str(path), "--prompt", "a photo", "--frames", "3", "--height", str(SIZE),
                 "--width", str(SIZE), "--steps", "1", "--seed", "4", "--pag-scale", "1.5", "--out",
                 str(tmp_path / "v.png"), "--individual", str(tmp_path / "each"), "--no-progress"]) == 0
    ours = text_to_video(model, "a photo", num_frames=3, height=SIZE, width=SIZE, steps=1, seed=4, pag_scale=1.5)
    written = ((read_video(tmp_path / "each" / "video_00000.png") + 1) * 127.5).round().to(torch.uint8)
    assert np.array_equal(written.permute(0, 2, 3, 1).numpy(), to_uint8(ours[0]))


@pytest.mark.parametrize("flags, message", [
    (["--pag-layers", "mid"], "--pag-layers needs --pag-scale"),
    (["--pag-scale", "-1"], "pag_scale=-1"),
    (["--pag-scale", "2", "--pag-layers", "("], "pag layer '(' is not a regular expression"),
])
def test_animatediff_pag_refusals(tiny_animatediff, tmp_path, capsys, flags, message):
    """One line before any weight is read, nothing written."""
    _, path, _, _ = tiny_animatediff
    refused_in_one_line(capsys, tmp_path, "video", path, ["--frames", "3", *flags], message)
