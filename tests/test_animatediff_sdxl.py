"""AnimateDiff SD-XL folders (diffkit.interop.animatediff_sdxl): text_to_video against diffusers' own
AnimateDiffSDXLPipeline on a tiny random folder (the tiny SD-XL of test_interop_sd_xl with a randomised 1-layer
MotionAdapter of 8 frame positions, saved by save_pretrained: unet/ a UNetMotionModel; nothing downloaded), and
``diffkit video`` on it."""
import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import to_uint8  # noqa: E402
from diffkit.interop.animatediff_sdxl import load_animatediff_sdxl, text_to_video  # noqa: E402
from diffkit.video import read_video  # noqa: E402

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from test_animatediff import (  # noqa: E402
    COMMAND_REFUSALS, FRAMES, PROMPTS, SIZE, _generators, _one_line, _video_argv, matches_the_pipeline,
    sample_and_edit_refused)
from test_interop_diffusers import randomize, relative_error  # noqa: E402
from test_interop_sd_xl import tiny_sd_xl_pipeline  # noqa: E402
from test_sd_lora import TEXT_LORA, UNET_LORA, _add_lora  # noqa: E402

PARTS = ("model_index.json", "scheduler", "unet", "motion_adapter", "text_encoder", "tokenizer", "text_encoder_2",
         "tokenizer_2", "vae")


@pytest.fixture(scope="session")
def tiny_animatediff_sdxl(tmp_path_factory):
    """(AnimateDiffSDXLPipeline.from_pretrained of the saved folder, the folder, load_animatediff_sdxl of it, the folder
    with the UNet2DConditionModel and motion_adapter/ instead)."""
    root = tmp_path_factory.mktemp("animatediff_sdxl")
    xl = tiny_sd_xl_pipeline(root)
    adapter = randomize(diffusers.MotionAdapter(  # its zero-initialised proj_out too
        block_out_channels=(32, 64), motion_layers_per_block=1, motion_transformer_layers_per_block=1,
        motion_num_attention_heads=2, motion_norm_num_groups=8, motion_max_seq_length=8, use_motion_mid_block=False),
        1)
    pipe = diffusers.AnimateDiffSDXLPipeline(motion_adapter=adapter, **{k: v for k, v in xl.components.items()
                                                                       if k in PARTS})
    pipe.save_pretrained(root / "ad")
    joined = root / "joined"  # a UNet2DConditionModel beside motion_adapter/ (the pipeline's __init__ joins them)
    for part in PARTS[1:]:
        if part != "unet":
            (joined / part).parent.mkdir(parents=True, exist_ok=True)
            (joined / part).symlink_to(root / "ad" / part)
    xl.unet.save_pretrained(joined / "unet")
    index = json.loads((root / "ad" / "model_index.json").read_text())
    (joined / "model_index.json").write_text(json.dumps({**index, "unet": ["diffusers", "UNet2DConditionModel"]}))
    return (*reloaded(root / "ad", diffusers.AnimateDiffSDXLPipeline, load_animatediff_sdxl), joined)


def test_animatediff_sdxl_matches_the_pipeline(tiny_animatediff_sdxl):
    """CFG s = 5 against negative prompts, clip_skip 1, 3 DDIM steps, 5 frames: the same final latents (read by a step
    callback) and frames (output_type="pt", (B, T, C, H, W) in [0, 1]) as AnimateDiffSDXLPipeline from the same noise
    (video i from seed 3 + i); unguided (s = 1) and by default (s = 5, no negative prompt: zeros), one prompt, 16 x 32
    frames (time ids (16, 32, 0, 0, 16, 32)): its latents; the folder with a UNet2DConditionModel + motion_adapter/
    loads the same UNetMotionModel but for the SD-XL UNet's add_embedding, which diffkit copies (diffusers'
    from_unet2d leaves it at its fresh init)."""
    pipe, _, model, joined = tiny_animatediff_sdxl
    matches_the_pipeline(pipe, model, text_to_video)  # (measured latents 7.7e-7, frames 7.2e-7)
    for scale in (1.0, None):  # unguided; the default s = 5 with the force-zeros null half
        kw = {"num_frames": FRAMES, "height": SIZE, "width": 2 * SIZE, **({} if scale is None else
                                                                          {"guidance_scale": scale})}
        with torch.no_grad():
            theirs = pipe(PROMPTS[1:], num_inference_steps=2, generator=_generators(5, 1), output_type="latent",
                          **kw).frames
        error = relative_error(text_to_video(model, PROMPTS[1:], steps=2, seed=5, return_latents=True, **kw), theirs)
        print(f"s = {scale or 5}, 16 x 32 latents: {error:.2e}")
        assert error < 1e-5
    other = load_animatediff_sdxl(joined, progress=False).unet.state_dict()  # from_unet2d(unet, motion_adapter)
    mine = model.unet.state_dict()
    added = diffusers.UNet2DConditionModel.from_pretrained(joined / "unet").add_embedding.state_dict()
    assert other.keys() == mine.keys()
    for key, value in other.items():
        prefix, _, rest = key.partition(".")
        assert torch.equal(value, added[rest] if prefix == "add_embedding" else mine[key]), key


def test_animatediff_sdxl_command_is_the_library(tiny_animatediff_sdxl, tmp_path, capsys):
    """``diffkit video`` writes the library's videos byte for byte (APNG, lossless; default CFG s = 5 with the
    force-zeros null half; video i from seed + i), at the kind's 10 fps."""
    _, path, model, _ = tiny_animatediff_sdxl
    assert main(_video_argv(path, tmp_path / "grid.png", "--individual", str(tmp_path / "each"), "--no-progress")) == 0
    assert "wrote 2 videos of 3 frames (16x16, 10 fps)" in capsys.readouterr().out
    videos = text_to_video(model, PROMPTS, num_frames=3, height=SIZE, width=SIZE, steps=1, seed=4)
    for i in range(2):
        written = ((read_video(tmp_path / "each" / f"video_{i:05d}.png") + 1) * 127.5).round().to(torch.uint8)
        assert np.array_equal(written.permute(0, 2, 3, 1).numpy(), to_uint8(videos[i]))


@pytest.mark.parametrize("extra, message", COMMAND_REFUSALS[:2] + [
    (["--image", "x.png"], "--image does not apply to an AnimateDiff SD-XL folder")])
def test_animatediff_sdxl_command_refusals(tiny_animatediff_sdxl, tmp_path, capsys, extra, message):
    _, path, _, _ = tiny_animatediff_sdxl
    _one_line(capsys, _video_argv(path, tmp_path / "out.png", *extra), message, tmp_path)


def test_animatediff_sdxl_folder_refusals(tiny_animatediff_sdxl, tmp_path, capsys):
    """diffkit sample / edit on the folder (sample: both layouts) name diffkit video; an SD 1.x UNet (no added
    conditions) and a UNet with a guidance input are one line before any weight is read."""
    _, path, _, joined = tiny_animatediff_sdxl
    sample_and_edit_refused(capsys, tmp_path, path, joined)
    plain = changed_folder(path, tmp_path, "unet/config.json", {"addition_embed_type": None}, parts=PARTS)
    _one_line(capsys, _video_argv(plain, tmp_path / "out.png"), "addition_embed_type=None; allowed: 'text_time'",
              tmp_path)
    guidance = changed_folder(path, tmp_path, "unet/config.json", {"time_cond_proj_dim": 32}, parts=PARTS)
    with pytest.raises(DiffkitError, match="time_cond_proj_dim=32"):
        load_animatediff_sdxl(guidance)


def test_animatediff_sdxl_lora_is_load_lora_weights_and_fuse_lora(tiny_animatediff_sdxl, tmp_path):
    """A LoRA file on the UNetMotionModel (its spatial and its motion modules' attention) and both text encoders, saved
    by AnimateDiffSDXLPipeline.save_lora_weights: load_animatediff_sdxl(lora=[(file, 0.6)]) holds the weights of the
    pipeline's load_lora_weights + fuse_lora(lora_scale=0.6)."""
    import copy
    fixture_pipe, path, model, _ = tiny_animatediff_sdxl
    parts = {"unet": UNET_LORA, "text_encoder": TEXT_LORA, "text_encoder_2": TEXT_LORA}
    layers = {}
    for seed, (name, config) in enumerate(parts.items()):
        state, metadata = _add_lora(copy.deepcopy(getattr(model, name)), seed + 1, **config)
        prefix = "text_model." if name != "unet" and not any(k.startswith("text_model.") for k in state) else ""
        layers[f"{name}_lora_layers"] = {prefix + key: value for key, value in state.items()}
        layers[f"{name}_lora_adapter_metadata"] = metadata
    assert any("motion_modules" in key for key in layers["unet_lora_layers"])
    diffusers.AnimateDiffSDXLPipeline.save_lora_weights(tmp_path, weight_name="lora.safetensors", **layers)
    pipe = diffusers.AnimateDiffSDXLPipeline(**{**fixture_pipe.components,
                                                **{name: copy.deepcopy(getattr(fixture_pipe, name)) for name in parts}})
    pipe.load_lora_weights(str(tmp_path / "lora.safetensors"))
    pipe.fuse_lora(lora_scale=0.6)
    pipe.unload_lora_weights()
    ours = load_animatediff_sdxl(path, progress=False, lora=[(tmp_path / "lora.safetensors", 0.6)])
    for name in parts:
        theirs, merged, base = (getattr(m, name).state_dict() for m in (pipe, ours, model))
        assert theirs.keys() == merged.keys()
        error = max((theirs[key] - value).abs().max().item() for key, value in merged.items())
        print(f"{name} weights: {error:.1e}")
        assert error < 1e-6 and max((base[key] - value).abs().max().item() for key, value in merged.items()) > 0.1
