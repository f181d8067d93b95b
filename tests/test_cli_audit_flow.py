"""The bad-input audit of the SD3 / FLUX features (session 37: skip-layer guidance, APG, SD3 / FLUX ControlNets,
FLUX / SD3 IP-Adapters, FLUX LoRA formats, LyCORIS files, T2I-Adapters, dynamic shifting, 33-channel inpainting,
edit --height / --width): the cases that printed a traceback (an image encoder of the other kind, CLIP for SigLIP
or back, or with a truncated file; an SD3 size past the transformer's pos_embed_max_size), a misleading line
(--flow-shift with the folder's own scheduler loop named the library's 'grid=' and 'flow_shift'; an SD3 ControlNet
given to a FLUX folder asked for a --control-image first; sigmas a huge image's shift pushed to 1 said 'use fewer
steps') or an image drawn from a damaged file (a ControlNet of NaN weights: a warning and black pixels). Each is
one line naming the bad value, exit status 2, nothing written."""
import json
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from test_cli_errors import one_line_error  # noqa: E402
import test_interop_sd3  # noqa: E402
from test_ip_adapter import tiny_image_encoder  # noqa: E402
from test_sd3_controlnet import tiny_sd3_controlnet  # noqa: E402
from test_sd3_ip_adapter import tiny_siglip  # noqa: E402

from diffkit.errors import DiffkitError  # noqa: E402

tiny_sd3 = test_interop_sd3.tiny_sd3  # the fixture, shared


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """(a tiny CLIPVisionModelWithProjection folder, a tiny SiglipVisionModel folder)."""
    root = tmp_path_factory.mktemp("encoders")
    tiny_image_encoder(root / "clip")
    tiny_siglip(root / "siglip")
    return root / "clip", root / "siglip"


def test_image_encoder_of_the_other_kind_or_damaged_is_one_line(encoders, tmp_path):
    """CLIP where SigLIP is needed (SD3) and back (SD / FLUX), a truncated model.safetensors and weights of other
    shapes than config.json gives: one line each (they were transformers' size-mismatch RuntimeError and
    safetensors' SafetensorError tracebacks); a full CLIPModel / SiglipModel folder's model_type passes."""
    from diffkit.interop.ip_adapter import image_encoder_folder, load_image_encoder
    from diffkit.interop.sd3_ip_adapter import load_siglip_encoder
    clip, siglip = encoders
    truncated = tmp_path / "truncated"
    shutil.copytree(clip, truncated)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    reshaped = tmp_path / "reshaped"
    shutil.copytree(clip, reshaped)
    config = json.loads((reshaped / "config.json").read_text())
    (reshaped / "config.json").write_text(json.dumps({**config, "intermediate_size": 40}))
    for call, needle in (
            (lambda: load_image_encoder(siglip), "holds 'siglip_vision_model'; allowed: a "
                                                 "CLIPVisionModelWithProjection folder"),
            (lambda: load_siglip_encoder(clip), "holds 'clip_vision_model'; allowed: a SiglipVisionModel folder"),
            (lambda: load_image_encoder(truncated), "from '" + str(truncated) + "': not a whole safetensors file"),
            (lambda: load_image_encoder(reshaped), "its weights have other shapes than its config.json gives")):
        with pytest.raises(DiffkitError) as err:
            call()
        assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "config.json").write_text('{"model_type": "clip"}')
    assert image_encoder_folder(None, tmp_path / "full") == tmp_path / "full"


def test_sd3_cli_refusals_of_the_audit(tiny_sd3, tmp_path, capsys):
    """On the tiny SD3 folder: --flow-shift with the scheduler's loop, --width past pos_embed_max_size (sample and
    edit; the library's latent_shape too), an SD3 ControlNet of NaN weights, a FLUX ControlNet folder without a
    --control-image: one line, exit 2, nothing written."""
    from PIL import Image
    from safetensors.torch import load_file, save_file
    _, folder, sd3 = tiny_sd3[True]
    good = tmp_path / "controlnet"
    tiny_sd3_controlnet(3, force_zeros_for_pooled_projection=False).save_pretrained(good)
    nan = tmp_path / "nan"
    shutil.copytree(good, nan)
    weights = nan / "diffusion_pytorch_model.safetensors"
    save_file({k: v * float("nan") if "controlnet_blocks" in k else v for k, v in load_file(weights).items()},
              weights)
    flux_net = tmp_path / "flux_net"
    flux_net.mkdir()
    (flux_net / "config.json").write_text('{"_class_name": "FluxControlNetModel"}')
    Image.new("RGB", (16, 16), (90, 30, 200)).save(tmp_path / "in.png")
    out = tmp_path / "out"
    sample = ["sample", "--checkpoint", str(folder), "--prompt", "a cat", "--steps", "2", "--no-progress",
              "--out", str(out / "s.png")]
    edit = ["edit", "--checkpoint", str(folder), "--prompt", "a cat", "--steps", "2", "--no-progress",
            "--images", str(tmp_path / "in.png"), "--out", str(out / "e")]
    for argv, needle in (
            (sample + ["--flow-shift", "3"], "--flow-shift 3 moves a sampler's own grid; with plain --sampler ddim"),
            (sample + ["--width", "128"], "--width 128 is not allowed; give at most 64 (the transformer's "
                                          "pos_embed_max_size 16 patches of 4 pixels)"),
            (edit + ["--width", "128"], "--width 128 is not allowed; give at most 64"),
            (sample + ["--controlnet", str(nan), "--control-image", str(tmp_path / "in.png")],
             f"--controlnet {weights}: tensor 'controlnet_blocks.0.weight' holds NaN or infinite values"),
            (sample + ["--controlnet", str(flux_net)], "holds a 'FluxControlNetModel'; allowed: a diffusers "
                                                       "SD3ControlNetModel folder")):
        assert needle in one_line_error(capsys, *argv), argv
        assert not out.exists(), argv
    with pytest.raises(DiffkitError, match="height x width 16x128 is not allowed; give at most 64 a side"):
        sd3.latent_shape(1, 16, 128)


def test_flow_grid_messages():
    """pipeline_grid refuses flow_shift with the scheduler's grid (not a sampler's); sigmas a huge shift pushed to
    1 name the image size, others still say 'use fewer steps'."""
    from diffkit.interop.flow_latents import flow_sigmas_grid, pipeline_grid
    from diffkit.schedule import NoiseSchedule
    for sampler, grid in ((None, None), ("ddim", "scheduler")):
        with pytest.raises(DiffkitError, match="--flow-shift 2 moves a sampler's own grid"):
            pipeline_grid(sampler, grid, 2, None, 28, lambda n: None, 2.0)
    assert pipeline_grid("unipc", None, 4, None, 28, lambda n: None, 2.0) == ("unipc", None, 4)
    schedule = NoiseSchedule.flow(1000, 3.0)
    with pytest.raises(DiffkitError, match="shift pushes them to 1 .*give a smaller --height / --width"):
        flow_sigmas_grid(schedule, torch.tensor([1.0, 1.0, 0.0]), 2)
    with pytest.raises(DiffkitError, match=r"\(\[0.5, 0.5, 0.0\]...\); use fewer steps$"):
        flow_sigmas_grid(schedule, torch.tensor([0.5, 0.5, 0.0]), 2)


def test_flux_lora_on_other_folders_and_control_flags_without_controlnet(tiny_sd3, tmp_path, capsys):
    """A FLUX.1 LoRA file (kohya, BFL) on an SD3 folder is named a FLUX.1 LoRA (it said 'adapts a UNet' or named an
    unsupported key); --control-image / --controlnet-scale / --guess-mode without --controlnet in an SD3 edit are
    one line (they were ignored), and diffkit edit's line no longer offers --t2i-adapter, which edit lacks."""
    from PIL import Image
    from safetensors.torch import save_file
    from diffkit.interop.sd_lora import read_sd_lora
    _, folder, _ = tiny_sd3[True]
    lora = torch.zeros(2, 16)
    save_file({"lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": lora,
               "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight": lora.T.contiguous()}, tmp_path / "k.st")
    save_file({"diffusion_model.single_blocks.0.linear2.lora_A.weight": lora,
               "diffusion_model.single_blocks.0.linear2.lora_B.weight": lora.T.contiguous()}, tmp_path / "b.st")
    for name in ("k.st", "b.st"):
        with pytest.raises(DiffkitError, match=r"is a FLUX.1 LoRA \(key .*: FLUX's double / single blocks\)"):
            read_sd_lora(tmp_path / name)
    Image.new("RGB", (16, 16), (90, 30, 200)).save(tmp_path / "in.png")
    out = tmp_path / "out"
    edit = ["edit", "--checkpoint", str(folder), "--prompt", "a cat", "--steps", "2", "--no-progress",
            "--images", str(tmp_path / "in.png"), "--out", str(out)]
    for extra, needle in ((["--lora", str(tmp_path / "k.st")], "k.st is a FLUX.1 LoRA"),
                          (["--control-image", str(tmp_path / "in.png")], "--control-image needs --controlnet DIR"),
                          (["--controlnet-scale", "0.5"], "--controlnet-scale needs --controlnet DIR"),
                          (["--guess-mode"], "--guess-mode needs --controlnet DIR")):
        line = one_line_error(capsys, *edit, *extra)
        assert needle in line and "--t2i-adapter" not in line, line
        assert not out.exists(), extra
