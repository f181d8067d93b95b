"""The leftovers of the bad-input audit of ``diffkit sample`` / ``diffkit edit`` on diffusers folders, and a fresh
audit of the newest flags (session 38): a folder whose UNet / transformer / VAE / text encoder holds NaN or inf
weights (it drew black images silently), an SD3 edit of images past pos_embed_max_size (no --height / --width hint),
an SD3 ControlNet whose own pos_embed_max_size is too small (a ValueError traceback mid-sampling), SD3 ControlNets on
a use_dynamic_shifting folder (refused; now StableDiffusion3ControlNetPipeline given the mu StableDiffusion3Pipeline
computes), APG in SD 1.x edits with a ControlNet, an IP-Adapter or PAG (untested; now diffusers' guider on every
guided call), and the audit's finds: --slg-scale 1e308 named a perturbed-attention scale, a FLUX size whose dynamic
shift overflows the flow schedule said 'beta=nan' after a numpy warning, FLUX's --negative-prompt-2 without true
CFG was ignored, a BFL LoRA file's shape error named a converted key the file does not hold. Bad input: exit 2, one
line on stderr naming the value and what is allowed, nothing written."""
import json
import math
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from test_cli_errors import one_line_error  # noqa: E402
from test_controlnet import control_png, tiny_controlnet  # noqa: E402
from test_interop_apg import (assert_calls_are_apg_guider_plus_pag, assert_calls_are_diffusers_apg_guider,  # noqa: E402
                              recorded_guided_calls)
from test_interop_diffusers import relative_error, tiny_sd_pipeline  # noqa: E402
from test_interop_flux import tiny_flux_pipeline  # noqa: E402
from test_interop_sd3 import tiny_sd3_pipeline  # noqa: E402
from test_ip_adapter import image_png, ip_adapter_state, save_ip_adapter, tiny_image_encoder  # noqa: E402
from test_sd3_controlnet import tiny_sd3_controlnet  # noqa: E402

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402

DYNAMIC = {"use_dynamic_shifting": True, "base_image_seq_len": 4, "max_image_seq_len": 64, "base_shift": 0.5,
           "max_shift": 1.6}  # as tests/test_sd3_dynamic_shift.py: mu 0.72 at 16 x 16, 0.87 at 24 x 16


def _damaged(folder, root, part: str, value: float = math.nan):
    """A copy of the diffusers ``folder`` at ``root`` whose ``part``'s weights file has one value of its first
    tensor set to ``value``; (copy, that tensor's key, the file)."""
    from safetensors.torch import load_file, save_file
    shutil.copytree(folder, root)
    weights = next((root / part).glob("*.safetensors"))
    tensors = load_file(weights)
    key = sorted(tensors)[0]
    tensors[key].view(-1)[0] = value
    save_file(tensors, weights, metadata={"format": "pt"})
    return root, key, weights


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny random folders: SD3 (no T5), the same with a use_dynamic_shifting scheduler, SD3 ControlNets (plain;
    pos_embed_max_size 4), an SD 1.x folder with a ControlNet, an IP-Adapter and its image encoder, a FLUX.1-dev
    folder, and images (16 x 16, 128 x 128)."""
    from PIL import Image
    root = tmp_path_factory.mktemp("audit_more")
    tiny_sd3_pipeline(root, with_t5=False).save_pretrained(root / "sd3")
    shutil.copytree(root / "sd3", root / "dynamic")
    config = root / "dynamic" / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **DYNAMIC}))
    tiny_sd3_controlnet(3, force_zeros_for_pooled_projection=False).save_pretrained(root / "cn")
    tiny_sd3_controlnet(4, force_zeros_for_pooled_projection=False, pos_embed_max_size=4).save_pretrained(root / "cn4")
    (root / "sd").mkdir()
    pipe = tiny_sd_pipeline(root / "sd")
    pipe.save_pretrained(root / "sd" / "folder")
    tiny_controlnet(pipe.unet, 3).save_pretrained(root / "sd" / "cn")
    save_ip_adapter(ip_adapter_state(pipe.unet, tiny_image_encoder(root / "sd" / "image_encoder")),
                    root / "sd" / "ip.safetensors")
    (root / "flux").mkdir()
    tiny_flux_pipeline(root / "flux").save_pretrained(root / "flux" / "folder")
    (root / "in").mkdir()
    control_png(root / "in" / "a.png")
    control_png(root / "in" / "b.png", seed=1)
    control_png(root / "control.png", seed=2)
    image_png(root / "image.png")
    Image.new("RGB", (128, 128), (90, 30, 200)).save(root / "big.png")
    return root


# ------------------------------------------------------------------ 1. non-finite weights of a folder's models
@pytest.mark.parametrize("part", ["transformer", "vae", "text_encoder_2"])
def test_a_folder_model_of_nan_or_inf_weights_is_refused_naming_the_file_and_tensor(tiny, tmp_path, part):
    """load_sd3 of a folder with NaN in one model's file: one line naming that file and the tensor (it loaded, and
    every image was black)."""
    from diffkit.interop.sd3 import load_sd3
    folder, key, weights = _damaged(tiny / "sd3", tmp_path / "sd3", part)
    with pytest.raises(DiffkitError) as err:
        load_sd3(folder, progress=False)
    assert str(err.value) == (f"--checkpoint {weights}: tensor {key!r} holds NaN or infinite values; the file is "
                              f"damaged (give a file of finite weights)"), str(err.value)


def test_the_cli_refuses_an_sd_unet_with_an_infinity_before_writing(tiny, tmp_path, capsys):
    folder, key, weights = _damaged(tiny / "sd" / "folder", tmp_path / "sd", "unet", math.inf)
    out = tmp_path / "new" / "s.png"
    line = one_line_error(capsys, "sample", "--checkpoint", folder, "--prompt", "a cat", "--steps", "2", "--out", out,
                          "--no-progress")
    assert f"--checkpoint {weights}: tensor {key!r} holds NaN or infinite values" in line, line
    assert not out.parent.exists()


def test_first_non_finite_reads_each_tensor_once_and_weights_file_finds_the_shard(tmp_path):
    """One aminmax pass per tensor: NaN or +-inf found, integer / empty / meta tensors skipped, a tensor shared by
    two names read once; weights_file: the shard a *.safetensors.index.json names, the single file, else the
    folder."""
    from diffkit.interop import weights_file
    from diffkit.lora_files import first_non_finite
    shared = torch.ones(3)
    base = {"ids": torch.arange(3), "empty": torch.zeros(0), "meta": torch.empty(2, device="meta"), "a": shared,
            "b": shared, "half": torch.ones(2, dtype=torch.float16)}
    assert first_non_finite(base) is None
    for value in (math.nan, math.inf, -math.inf):
        assert first_non_finite({**base, "bad": torch.tensor([1.0, value], dtype=torch.bfloat16)}) == "bad"
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "m-2.safetensors"}}))
    for name in ("m-1.safetensors", "m-2.safetensors"):
        (tmp_path / name).write_bytes(b"")
    assert weights_file(tmp_path, "x") == tmp_path / "m-2.safetensors"
    assert weights_file(tmp_path, "y") == tmp_path
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "model.safetensors").write_bytes(b"")
    assert weights_file(tmp_path / "one", "y") == tmp_path / "one" / "model.safetensors"


# ------------------------------------------------------------------ 2., 3. SD3 sizes
def test_sd3_sizes_past_pos_embed_max_size_name_the_flags(tiny, tmp_path, capsys):
    """An SD3 edit of 128 x 128 images (past the transformer's 64) names --height / --width (it said only 'height x
    width 128x128 is not allowed'); a ControlNet whose pos_embed_max_size (4: 16 pixels) is smaller than the size
    asked for is one line in sample and in an inpainting edit (a ValueError traceback of cropped_pos_embed)."""
    out = tmp_path / "new" / "o"
    edit = ["edit", "--checkpoint", tiny / "sd3", "--prompt", "a cat", "--steps", "2", "--no-progress", "--out", out]
    line = one_line_error(capsys, *edit, "--images", tiny / "big.png")
    assert line.endswith("the images are 128x128: their height 128 is past 64 (the transformer's pos_embed_max_size "
                         "16 patches of 4 pixels); give --height / --width (at most 64) to resize them"), line
    needle = ("height x width 16x32 is not allowed with --controlnet number 1: give --height / --width at most 16 "
              "(its pos_embed_max_size 4 patches of 4 pixels)")
    line = one_line_error(capsys, "sample", "--checkpoint", tiny / "sd3", "--prompt", "a cat", "--steps", "2",
                          "--controlnet", tiny / "cn4", "--control-image", tiny / "control.png", "--width", "32",
                          "--out", out / "s.png", "--no-progress")
    assert needle in line, line
    assert not out.parent.exists()


def test_check_controlnet_size_skips_a_controlnet_on_the_transformers_position_embedding():
    from diffkit.interop.sd3_controlnet import check_controlnet_size
    config = {"pos_embed_max_size": 4, "patch_size": 2}
    model = type("M", (), {"config": config})
    check_controlnet_size([model], 8, 8, 2)  # 16 x 16: at the limit
    with pytest.raises(DiffkitError, match="height x width 18x16 is not allowed with --controlnet number 1"):
        check_controlnet_size([model], 9, 8, 2)
    config["use_pos_embed"] = False
    check_controlnet_size([model], 64, 64, 2)


# ------------------------------------------------------------------ 4. SD3 ControlNets with a dynamic shift
@pytest.mark.parametrize("height, width", [(24, 16)])
def test_sd3_controlnet_on_a_dynamic_shifting_folder_matches_the_pipeline(tiny, height, width):
    """text_to_image with an SD3 ControlNet on a use_dynamic_shifting folder = StableDiffusion3ControlNetPipeline whose
    scheduler gets set_timesteps(mu=...) as StableDiffusion3Pipeline computes it (calculate_shift of the latents'
    (h / p)(w / p), the scheduler's base / max; the ControlNet pipeline passes no mu and raises). At 24 x 16 mu is
    0.87, the folder's default size's 0.72: the controlled denoiser must be the size's."""
    import functools

    from PIL import Image
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

    from diffkit.interop.controlnet import ControlNets, load_model_folder
    from diffkit.interop.sd3 import load_sd3, text_to_image
    sd3 = load_sd3(tiny / "dynamic", progress=False)
    controlnet = load_model_folder("SD3ControlNetModel", tiny / "cn", progress=False)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(sd3.scheduler_config)
    pipe = diffusers.StableDiffusion3ControlNetPipeline(
        **{name: getattr(sd3, name) for name in ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2",
                                                  "tokenizer_2", "text_encoder_3", "tokenizer_3")},
        controlnet=controlnet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    c = scheduler.config
    mu = calculate_shift((height // 4) * (width // 4), c.get("base_image_seq_len", 256),
                         c.get("max_image_seq_len", 4096), c.get("base_shift", 0.5), c.get("max_shift", 1.16))
    assert mu == pytest.approx(sd3.mu(height // 2, width // 2))
    scheduler.set_timesteps = functools.partial(scheduler.set_timesteps, mu=mu)
    latents = torch.randn(1, 4, height // 2, width // 2, generator=torch.Generator().manual_seed(7))
    run = dict(num_inference_steps=4, guidance_scale=4.0, height=height, width=width, max_sequence_length=12)
    torch.manual_seed(11)
    with torch.no_grad():
        theirs = pipe(["a photo of a cat"], control_image=Image.open(tiny / "control.png"), latents=latents.clone(),
                      output_type="latent", controlnet_conditioning_scale=0.7, **run).images
    run["steps"] = run.pop("num_inference_steps")
    ours = text_to_image(sd3, ["a photo of a cat"], latents=latents, return_latents=True, control_seed=11,
                         controlnet=ControlNets([controlnet], [tiny / "control.png"], 0.7), **run)
    error = relative_error(ours, theirs)
    print("dynamic controlnet", height, width, mu, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, error


# ------------------------------------------------------------------ 5. APG in SD 1.x edits with adapters
@pytest.mark.parametrize("extra, net", [
    (["--controlnet", "{sd}/cn", "--control-image", "{root}/control.png"], "ControlledNet"),
    (["--controlnet", "{sd}/cn", "--control-image", "{root}/control.png", "--mask", "{root}/control.png"],
     "ControlledNet"),
    (["--ip-adapter", "{sd}/ip.safetensors", "--ip-adapter-image", "{root}/image.png"], "IPAdaptedNet"),
    (["--pag-scale", "2"], None)])
def test_apg_in_an_sd_edit_with_a_controlnet_ip_adapter_or_pag_is_diffusers_guider(tiny, tmp_path, monkeypatch,
                                                                                   extra, net):
    """``diffkit edit --apg-*`` on an SD 1.x folder with --controlnet (img2img and inpainting), --ip-adapter or
    --pag-scale: each guided call's x_0 is diffusers' AdaptiveProjectedGuidance (use_original_formulation, s = w = 5,
    eta 0.25, r 0.5 reached, momentum -0.5 over the calls) on the same (x0_c, x0_u) of the adapted UNet; with PAG
    plus its term s (x0_c - x0_perturbed), added after the APG one (the formula of diffusers' PAG pipelines)."""
    flags = [a.format(sd=tiny / "sd", root=tiny) for a in extra]
    argv = ["edit", "--checkpoint", tiny / "sd" / "folder", "--images", tiny / "in", "--prompt", "a cat", "--steps",
            "4", "--strength", "0.75", "--guidance-scale", "5", "--apg-eta", "0.25", "--apg-norm-threshold", "0.5",
            "--apg-momentum", "-0.5", "--no-progress", "--out", tmp_path / "out", *flags]
    calls = recorded_guided_calls(monkeypatch, lambda: main([str(a) for a in argv]), with_perturbed=True)
    assert len(calls) == 3 and (tmp_path / "out" / "edit_00001.png").is_file()
    if net is not None:
        assert all(type(call[0].inner.net).__name__ == net for call in calls)  # the adapter acts in both passes
        assert assert_calls_are_diffusers_apg_guider([call[:6] for call in calls], 5.0, 0.25, 0.5, -0.5, net) > 0
        return
    worst, largest, _ = assert_calls_are_apg_guider_plus_pag(calls, 5.0, 0.25, 0.5, -0.5, 2.0, "pag")
    print("apg + pag", worst, largest)


# ------------------------------------------------------------------ the fresh audit
SLG = ["--guidance-scale", "4", "--guidance-convention", "diffusers", "--slg-layers", "0"]
AUDIT = [  # (folder, command, extra flags, the line's text); {r}: the fixture's root
    ("sd3", "sample", ["--slg-layers", "2"], "skip-layer guidance layer 2 is out of range; this SD3 transformer has 2 "
                                             "blocks: allowed 0..1"),
    ("sd3", "sample", ["--slg-layers", "-1"], "skip-layer guidance layer -1 is out of range"),
    ("sd3", "sample", ["--slg-layers", "a,b"], "--slg-layers 'a,b' is not allowed; give comma-separated"),
    ("sd3", "sample", ["--slg-layers", ""], "--slg-layers '' is not allowed"),
    ("sd3", "sample", SLG + ["--slg-scale", "nan"], "skip-layer guidance scale nan is not allowed"),
    ("sd3", "sample", SLG + ["--slg-scale", "inf"], "skip-layer guidance scale inf is not allowed"),
    ("sd3", "sample", SLG + ["--slg-scale", "-1"], "skip-layer guidance scale -1.0 is not allowed"),
    ("sd3", "sample", SLG + ["--slg-scale", "1e308"], "skip-layer guidance scale=1e+308 is out of range; allowed: at "
                                                      "most 3.403e+38"),
    ("sd3", "sample", SLG + ["--slg-start", "0.5", "--slg-stop", "0.2"], "skip-layer guidance start 0.5 >= stop 0.2"),
    ("sd3", "sample", SLG + ["--slg-start", "-0.1"], "skip-layer guidance start -0.1 is not allowed"),
    ("sd3", "sample", SLG + ["--slg-stop", "1.5"], "skip-layer guidance stop 1.5 is not allowed"),
    ("sd3", "sample", SLG + ["--slg-start", "nan"], "skip-layer guidance start nan is not allowed"),
    ("sd3", "sample", SLG + ["--steps", "2"], "skip-layer guidance from 0.01 to 0.2 of 2 steps takes no step"),
    ("sd3", "sample", ["--slg-scale", "2"], "--slg-scale goes with --slg-layers"),
    ("sd3", "sample", ["--slg-stop", "0.5"], "--slg-stop goes with --slg-layers"),
    ("sd3", "sample", ["--slg-layers", "0", "--guidance-scale", "1", "--guidance-convention", "diffusers"],
     "--slg-layers needs classifier-free guidance on"),
    ("sd3", "sample", SLG + ["--controlnet", "{r}/cn", "--control-image", "{r}/control.png"],
     "skip-layer guidance with a ControlNet is not supported"),
    ("sd3", "sample", SLG + ["--guidance-interval", "0.1", "0.5"], "--guidance-interval does not apply to an SD3"),
    ("flux", "sample", ["--slg-layers", "0"], "--slg-layers applies to an SD3 folder"),
    ("sd", "sample", ["--slg-layers", "0"], "--slg-layers applies to an SD3 folder"),
    ("sd3", "sample", ["--controlnet", "{r}/cn"], "0 --control-image for 1 --controlnet"),
    ("sd3", "sample", ["--controlnet", "{r}/cn", "--control-image", "{r}/nope.png"],
     "--control-image {r}/nope.png: cannot be read as an image"),
    ("sd3", "sample", ["--controlnet", "{r}/sd/cn", "--control-image", "{r}/control.png"],
     "holds a 'ControlNetModel'; allowed: a diffusers SD3ControlNetModel folder"),
    ("sd3", "sample", ["--controlnet", "{r}/nope", "--control-image", "{r}/control.png"],
     "--controlnet {r}/nope: no config.json there"),
    ("sd3", "sample", ["--controlnet", "{r}/cn", "--control-image", "{r}/control.png", "--controlnet-scale", "nan"],
     "argument --controlnet-scale: nan must be a finite number >= 0"),
    ("sd3", "sample", ["--controlnet", "{r}/cn", "--control-image", "{r}/control.png", "--controlnet-scale", "1e308"],
     "at most 3.403e+38"),
    ("sd3", "sample", ["--controlnet", "{r}/cn", "--control-image", "{r}/control.png", "--control-guidance-start",
                       "0.8", "--control-guidance-end", "0.2"], "control guidance start 0.8 >= end 0.2"),
    ("sd3", "sample", ["--controlnet", "{r}/cn", "--control-image", "{r}/control.png", "--guess-mode"],
     "the SD3 ControlNet pipeline has no guess mode"),
    ("sd3", "sample", ["--controlnet", "{r}/cn", "--control-image", "{r}/control.png", "--controlnet-scale", "1",
                       "--controlnet-scale", "1"], "--controlnet-scale was given 2 times for 1 --controlnet"),
    ("sd3", "edit", ["--controlnet", "{r}/cn"], "--controlnet on an SD3 folder in diffkit edit goes with --mask"),
    ("flux", "sample", ["--controlnet", "{r}/cn", "--control-image", "{r}/control.png"],
     "holds a 'SD3ControlNetModel'; allowed: a diffusers FluxControlNetModel folder"),
    ("flux", "edit", ["--controlnet", "{r}/cn", "--control-image", "{r}/control.png"],
     "holds a 'SD3ControlNetModel'; allowed: a diffusers FluxControlNetModel folder"),
    ("sd3", "sample", ["--ip-adapter", "{r}/sd/ip.safetensors"], "--ip-adapter needs --ip-adapter-image PNG"),
    ("sd3", "sample", ["--ip-adapter", "{r}/sd/ip.safetensors:nan", "--ip-adapter-image", "{r}/image.png"],
     "scale 'nan' is not allowed"),
    ("sd3", "sample", ["--ip-adapter", "{r}/sd/ip.safetensors", "--ip-adapter-image", "{r}/image.png",
                       "--image-encoder", "{r}/sd/image_encoder"], "holds 'clip_vision_model'; allowed: a "
                                                                   "SiglipVisionModel folder"),
    ("sd3", "sample", ["--ip-adapter", "{r}/in/a.png", "--ip-adapter-image", "{r}/image.png", "--image-encoder",
                       "{r}/sd/image_encoder"], "is not a plain tensor file (torch.load weights_only: "),
    ("sd3", "sample", ["--ip-adapter", "{r}/sd/ip.safetensors", "--ip-adapter-image", "{r}/image.png",
                       "--negative-ip-adapter-image", "{r}/image.png"], "--negative-ip-adapter-image applies to a "
                                                                        "FLUX.1 folder"),
    ("sd3", "sample", ["--image-encoder", "{r}/sd/image_encoder"], "--image-encoder needs --ip-adapter FILE[:SCALE]"),
    ("flux", "sample", ["--ip-adapter", "{r}/sd/ip.safetensors", "--ip-adapter-image", "{r}/image.png",
                        "--image-encoder", "{r}/sd/image_encoder", "--negative-ip-adapter-image", "{r}/image.png"],
     "--negative-ip-adapter-image feeds only true CFG's negative pass"),
    ("flux", "sample", ["--true-cfg-scale", "2"], "--true-cfg-scale 2 is not allowed on a FLUX folder: its true CFG "
                                                  "takes both"),
    ("flux", "sample", ["--true-cfg-scale", "1", "--negative-prompt", "ugly"],
     "--negative-prompt 'ugly' with --true-cfg-scale 1 is not allowed"),
    ("flux", "sample", ["--true-cfg-scale", "nan", "--negative-prompt", "ugly"], "argument --true-cfg-scale: nan"),
    ("flux", "sample", ["--true-cfg-scale", "1e308", "--negative-prompt", "ugly"], "at most 3.403e+38"),
    ("flux", "sample", ["--true-cfg-scale", "-2", "--negative-prompt", "ugly"], "argument --true-cfg-scale: -2.0"),
    ("flux", "sample", ["--negative-prompt-2", "ugly"], "--negative-prompt-2 'ugly' feeds only true CFG's negative "
                                                        "pass on a FLUX folder; give --true-cfg-scale S > 1 with "
                                                        "--negative-prompt, or drop it"),
    ("flux", "edit", ["--negative-prompt-2", "ugly"], "--negative-prompt-2 'ugly' feeds only true CFG's negative"),
    ("sd3", "sample", ["--true-cfg-scale", "2", "--negative-prompt", "ugly"], "--true-cfg-scale applies to a FLUX"),
    ("sd3", "edit", ["--true-cfg-scale", "2", "--negative-prompt", "ugly"], "--true-cfg-scale does not apply to an "
                                                                            "SD3 folder"),
    ("flux", "sample", ["--lora", "{r}/k.safetensors:nan"], "scale 'nan' is not allowed"),
    ("flux", "sample", ["--lora", "{r}/nope.safetensors"], "--lora {r}/nope.safetensors does not exist"),
    ("flux", "sample", ["--lora", "{r}/empty.safetensors"], "--lora {r}/empty.safetensors holds no tensors"),
    ("flux", "sample", ["--lora", "{r}/mixed.safetensors"], "key 'transformer.single_transformer_blocks.0.proj_out."
                                                            "lora_A.weight' is not supported in a FLUX LoRA file"),
    ("flux", "sample", ["--lora", "{r}/nan.safetensors"], "tensor 'lora_unet_double_blocks_0_img_attn_proj.alpha' "
                                                          "holds NaN or infinite values"),
    ("sd3", "sample", ["--lora", "{r}/k.safetensors"], "is a FLUX.1 LoRA"),
    ("sd3", "edit", ["--lora", "{r}/k.safetensors"], "is a FLUX.1 LoRA"),
]


@pytest.fixture(scope="module")
def kohya_files(tiny):
    """kohya FLUX LoRA files: a plain one, one mixing diffusers keys in, one with an infinite alpha, an empty one."""
    from safetensors.torch import save_file
    key = "lora_unet_double_blocks_0_img_attn_proj"
    plain = {f"{key}.lora_down.weight": torch.randn(2, 16), f"{key}.lora_up.weight": torch.randn(16, 2)}
    save_file(plain, tiny / "k.safetensors")
    save_file({**plain, "transformer.single_transformer_blocks.0.proj_out.lora_A.weight": torch.randn(2, 48)},
              tiny / "mixed.safetensors")
    save_file({**plain, f"{key}.alpha": torch.tensor(math.inf)}, tiny / "nan.safetensors")
    save_file({}, tiny / "empty.safetensors")
    return tiny


def test_the_audit_of_the_newest_flags(kohya_files, tmp_path, capsys):
    """Each case: exit 2, one stderr line holding its text, no output left (sample's --out folder, edit's)."""
    root = kohya_files
    folders = {"sd3": root / "sd3", "flux": root / "flux" / "folder", "sd": root / "sd" / "folder"}
    out = tmp_path / "new" / "out"
    for folder, command, extra, needle in AUDIT:
        argv = [command, "--checkpoint", folders[folder], "--prompt", "a cat", "--steps", "10", "--no-progress",
                *(["--images", root / "in" / "a.png", "--out", out] if command == "edit" else
                  ["--num", "1", "--out", out / "s.png"]), *[a.format(r=root) for a in extra]]
        try:  # argparse's own errors exit through SystemExit (status 2, one line too)
            code = main([str(a) for a in argv])
        except SystemExit as stop:
            code = stop.code
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle.format(r=root) in err[0], (extra, err)
        assert not out.parent.exists(), extra


def test_library_refusals_of_the_audit(tiny):
    """FLUX's dynamic shift of a huge image (mu 178: e^mu past the flow schedule; math.exp past 709 too) and a BFL /
    PEFT-named LoRA whose up matrix does not fit: one line, naming the size / the file's own key."""
    from safetensors.torch import save_file

    from diffkit.interop.flux import scheduler_shift
    from diffkit.interop.flux_lora import kohya_keys, transformer_adapters
    from diffkit.interop.sd_lora import parse_sd_lora
    config = {"use_dynamic_shifting": True}
    for mu in (177.9, 800.0):
        with pytest.raises(DiffkitError, match=r"resolution-dependent shift at latents 2048x2048 \(mu=.*pushes every "
                                               r"sigma to 1; give a smaller --height / --width"):
            scheduler_shift(config, lambda: mu, 2048, 2048)
    assert scheduler_shift(config, lambda: 1.0, 64, 64) == pytest.approx(math.e)
    key = "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight"
    tensors = {key.replace("lora_B", "lora_A"): torch.randn(2, 16), key: torch.randn(47, 2)}
    save_file(tensors, root := tiny / "bfl.safetensors")
    origin = {}
    read = parse_sd_lora(root, kohya_keys(root, tensors, origin), {})
    read["origin"] = origin
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(2, 2, 4))
    with pytest.raises(DiffkitError, match=f"--lora {root}: {key} is \\(47, 2\\); allowed: \\(48, r\\)"):
        transformer_adapters(root, read, transformer)
