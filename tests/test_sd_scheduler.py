"""``load_stable_diffusion(..., scheduler="lcm" / "tcd")`` and ``diffkit sample --scheduler``: a plain Stable
Diffusion folder (DDIM scheduler, tests/test_interop_diffusers.py's tiny one) with an LCM-LoRA-like LoRA file
(tests/test_sd_lora.py's) merged, against diffusers' StableDiffusionPipeline with ``pipe.scheduler =
LCMScheduler.from_config(pipe.scheduler.config)`` (TCDScheduler) + ``load_lora_weights`` + ``fuse_lora``; same
prompts, z_T and per-sample step noise on both sides. Tiny random models, nothing downloaded."""
import json
import re
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image  # noqa: E402
from diffkit.noise import generators_from_seed, randn  # noqa: E402
from test_interop_diffusers import relative_error, tiny_sd_components, tiny_sd_pipeline  # noqa: E402
from test_interop_lcm import PROMPTS, SMALL_SCALING  # noqa: E402
from test_sd_lora import UNET_LORA, _add_lora  # noqa: E402


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """(the diffusers pipeline of the plain DDIM folder with the LoRA fused, folder, LoRA file)."""
    root = tmp_path_factory.mktemp("sd_scheduler")
    pipe = tiny_sd_pipeline(root)
    pipe.save_pretrained(root / "sd")
    state, config = _add_lora(tiny_sd_components(root)[0], 5, **UNET_LORA)
    diffusers.StableDiffusionPipeline.save_lora_weights(root / "lora", weight_name="lcm_lora.safetensors",
                                                        unet_lora_layers=state, unet_lora_adapter_metadata=config)
    lora = root / "lora" / "lcm_lora.safetensors"
    fused = pipe  # (saved above without the LoRA)
    fused.load_lora_weights(str(lora))
    fused.fuse_lora(lora_scale=1.0)
    return fused, root / "sd", lora


def _copy(folder, root, change):
    """A copy of ``folder`` whose scheduler JSON is changed by ``change``."""
    shutil.copytree(folder, root / "sd")
    config_file = root / "sd" / "scheduler" / "scheduler_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **change}))
    return root / "sd"


@pytest.fixture(scope="module")
def small_scaling(plain, tmp_path_factory):
    """A copy of the folder whose DDIM JSON also sets LCMScheduler's original_inference_steps 20 and
    timestep_scaling 0.0005 (from_config carries them over; c_skip(999) = 0.5: the boundary condition matters)."""
    return _copy(plain[1], tmp_path_factory.mktemp("sd_scheduler_small"), SMALL_SCALING)


@pytest.fixture(scope="module")
def small_tcd(plain, tmp_path_factory):
    """The copy with timestep_scaling 0.0005 alone (TCDScheduler's default 50 original steps)."""
    return _copy(plain[1], tmp_path_factory.mktemp("sd_scheduler_tcd"), {"timestep_scaling": 0.0005})


def _pipe(fused, cls, folder=None):
    """The fused pipeline with ``pipe.scheduler = cls.from_config(pipe.scheduler.config)`` (its folder's
    scheduler: ``folder``'s when given)."""
    base = fused.scheduler if folder is None else diffusers.DDIMScheduler.from_pretrained(folder / "scheduler")
    pipe = type(fused)(**{**fused.components, "scheduler": cls.from_config(base.config)})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _theirs(pipe, steps, scale, latents, seed, **options):
    with torch.no_grad():
        return pipe(PROMPTS, num_inference_steps=steps, guidance_scale=scale, latents=latents.clone(),
                    generator=generators_from_seed(seed, latents.shape[0]), output_type="latent", **options).images


def _latents(seed=11):
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("steps,scale,small", [(4, 1.0, False), (4, 1.5, False), (3, 1.5, True), (2, 1.0, True)])
def test_lcm_override_equals_pipeline_with_lcm_scheduler_from_config(plain, small_scaling, steps, scale, small):
    """scheduler="lcm" + the LoRA = StableDiffusionPipeline + LCMScheduler.from_config + the fused LoRA: same
    z_0 with and without classifier-free guidance, on LCM's timesteps; the config is diffusers' (betas and
    steps_offset of the DDIM JSON, LCM's defaults for the rest). Default: consistency, 4 steps, s = 1."""
    fused, folder, lora = plain
    folder = small_scaling if small else folder
    pipe = _pipe(fused, diffusers.LCMScheduler, small_scaling if small else None)
    sd = load_stable_diffusion(folder, lora=[lora], scheduler="lcm", progress=False)
    assert sd.scheduler_config == {k: v for k, v in pipe.scheduler.config.items() if k != "_use_default_values"}
    assert sd.consistency["timestep_scaling"] == (0.0005 if small else 10.0) and not sd.scheduler_config["clip_sample"]
    latents = _latents()
    theirs = _theirs(pipe, steps, scale, latents, 5)
    ours = text_to_image(sd, PROMPTS, steps=steps, guidance_scale=scale, latents=latents, seed=5, return_latents=True)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    assert sd.scheduler_grid(steps)[:-1].tolist() == pipe.scheduler.timesteps.tolist()
    if steps == 4 and scale == 1.0:
        torch.testing.assert_close(text_to_image(sd, PROMPTS, latents=latents, seed=5, return_latents=True), ours,
                                   rtol=0, atol=0)
    if small:  # the same chain without the boundary condition (the plain folder's denoiser) differs
        no_bc = text_to_image(load_stable_diffusion(folder, lora=[lora], progress=False), PROMPTS,
                              sampler="consistency", steps=steps, guidance_scale=scale, latents=latents, seed=5,
                              return_latents=True)
        assert relative_error(no_bc, theirs) > 1e-2, relative_error(no_bc, theirs)


@pytest.mark.parametrize("gamma,scale", [(0.3, 1.0), (0.5, 1.5)])
def test_tcd_override_equals_pipeline_with_tcd_scheduler_from_config(plain, small_tcd, gamma, scale):
    """scheduler="tcd": ``tcd:sigma_min`` = StableDiffusionPipeline + TCDScheduler.from_config (eta = gamma),
    whose step takes the UNet's output as it is (no boundary condition: checked on a copy of timestep_scaling
    0.0005, where one would change z_0). Default: the tcd sampler in 4 steps, s = 1."""
    fused, _, lora = plain
    pipe = _pipe(fused, diffusers.TCDScheduler, small_tcd)
    sd = load_stable_diffusion(small_tcd, lora=[lora], scheduler="tcd", progress=False)
    assert sd.consistency is None and sd.scheduler_config["_class_name"] == "TCDScheduler"
    latents = _latents(3)
    theirs = _theirs(pipe, 4, scale, latents, 7, eta=gamma)
    ours = text_to_image(sd, PROMPTS, sampler="tcd:sigma_min", steps=4, guidance_scale=scale, gamma=gamma,
                         latents=latents, seed=7, return_latents=True)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    assert sd.scheduler_grid(4)[:-1].tolist() == pipe.scheduler.timesteps.tolist()  # TCDScheduler's, then -1
    if scale == 1.0:  # the defaults: tcd (final zero: clean data), 4 steps, s = 1
        default = text_to_image(sd, PROMPTS, latents=latents, seed=7, return_latents=True)
        explicit = text_to_image(sd, PROMPTS, sampler="tcd", steps=4, guidance_scale=1.0, latents=latents, seed=7,
                                 return_latents=True)
        torch.testing.assert_close(default, explicit, rtol=0, atol=0)


def test_without_scheduler_the_folder_is_sampled_as_before(plain):
    """No override: the folder's own DDIM config, no consistency function, ddim in 50 steps at s = 7.5 by default
    (bit for bit), = StableDiffusionPipeline with its DDIMScheduler and the fused LoRA."""
    fused, folder, lora = plain
    sd = load_stable_diffusion(folder, lora=[lora], progress=False)
    assert sd.scheduler_override is None and sd.consistency is None
    assert sd.scheduler_config == json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    latents = _latents()
    ours = text_to_image(sd, PROMPTS, latents=latents, seed=5, steps=4, grid="scheduler", return_latents=True)
    explicit = text_to_image(sd, PROMPTS, sampler="ddim", guidance_scale=7.5, latents=latents, seed=5, steps=4,
                             grid="scheduler", return_latents=True)
    torch.testing.assert_close(ours, explicit, rtol=0, atol=0)
    assert relative_error(ours, _theirs(fused, 4, 7.5, latents, 5)) < 2e-5  # measured 7.8e-6 (s = 7.5 amplifies)


@pytest.mark.parametrize("name", ["lcm", "tcd"])
def test_sample_command_scheduler_png_equals_library(plain, tmp_path, monkeypatch, name):
    """``diffkit sample --checkpoint SD_FOLDER --lora FILE --scheduler lcm``: the PNG of the library's images
    for the command's noise (z_T and step noise from the per-sample generators seed + i), defaults 4 steps, s = 1."""
    import diffkit.images
    save_grid, nrows = diffkit.images.save_grid, []
    monkeypatch.setattr(diffkit.images, "save_grid", lambda images, out, nrow, *a: nrows.append(nrow) or save_grid(
        images, out, nrow, *a))
    _, folder, lora = plain
    out = tmp_path / f"{name}.png"
    assert main(["sample", "--checkpoint", str(folder), "--lora", str(lora), "--scheduler", name, "--prompt",
                 PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2", "--nrow", "2", "--seed", "4", "--batch-size",
                 "2", "--out", str(out), "--no-progress"]) == 0
    sd = load_stable_diffusion(folder, lora=[lora], scheduler=name, progress=False)
    gens = generators_from_seed(4, 2)  # z_T, then the step noise from the same per-sample generators
    images = text_to_image(sd, PROMPTS, latents=randn((2, 4, 8, 8), gens), seed=None, generator=gens,
                           output_range="-1,1")
    save_grid(images, tmp_path / "library.png", nrows[-1], 1)
    assert out.read_bytes() == (tmp_path / "library.png").read_bytes()


def test_scheduler_override_refusals_are_one_line(plain, tmp_path, capsys):
    _, folder, lora = plain
    lcm_folder, bad_clip, n20 = tmp_path / "lcm", tmp_path / "clip", tmp_path / "n20"
    for copy, change in ((lcm_folder, {"_class_name": "LCMScheduler"}), (bad_clip, {"clip_sample": True}),
                         (n20, {"original_inference_steps": 20})):
        shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("*.safetensors"))
        config_file = copy / "scheduler" / "scheduler_config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **change}))
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"")
    out = tmp_path / "x.png"
    for checkpoint, name, match in (
            (lcm_folder, "lcm", r"--scheduler lcm: .* is already an LCMScheduler folder .*drop --scheduler"),
            (lcm_folder, "tcd", r"--scheduler tcd: .* is already an LCMScheduler folder"),
            (ckpt, "tcd", r"--scheduler tcd applies to a Stable Diffusion folder .* is not one"),
            (bad_clip, "lcm", r"--scheduler lcm: .* gives LCMScheduler clip_sample=True, .*allowed: a config with "
                              r"clip_sample false"),
            (n20, "tcd", r"--scheduler tcd: .* gives TCDScheduler original_inference_steps=20; allowed: 50 "),
            (folder, "ddim", r"argument --scheduler: invalid choice: 'ddim' \(choose from '?lcm'?, '?tcd'?\)")):
        try:
            code = main(["sample", "--checkpoint", str(checkpoint), "--scheduler", name, "--prompt", "hot", "--num",
                         "1", "--batch-size", "1", "--out", str(out), "--no-progress"])
        except SystemExit as exit_:  # argparse's
            code = exit_.code
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and re.search(match, err[0]), err
        assert not out.exists()
    with pytest.raises(DiffkitError, match=r"^scheduler='ddim' is not allowed; allowed: lcm, tcd"):
        load_stable_diffusion(folder, scheduler="ddim")


SD15_PNDM = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
             "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
             "clip_sample": False}  # runwayml/stable-diffusion-v1-5's scheduler/scheduler_config.json


@pytest.mark.parametrize("config", [SD15_PNDM, {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear",
                                                "beta_start": 0.00085, "beta_end": 0.012}])
def test_override_config_is_from_config_of_the_loaded_scheduler(config):
    """SD 1.5's PNDM JSON, and a DDIM JSON without clip_sample (DDIMScheduler defaults it to True): the config
    of LCMScheduler.from_config(pipe.scheduler.config), i.e. LCM's clip_sample False (diffusers drops what the
    folder's class only defaulted), timestep_scaling 10, original_inference_steps 50, the folder's betas."""
    from diffkit.interop.sd_scheduler import override_config
    base = getattr(diffusers, config["_class_name"]).from_config(config)
    for name, cls in (("lcm", diffusers.LCMScheduler), ("tcd", diffusers.TCDScheduler)):
        ours = override_config(config, name)
        assert ours == {k: v for k, v in cls.from_config(base.config).config.items() if k != "_use_default_values"}
        assert ours["clip_sample"] is False and ours["timestep_scaling"] == 10.0
        assert ours["original_inference_steps"] == 50 and ours["beta_schedule"] == "scaled_linear"


def test_ip_adapter_with_the_lcm_override_png_equals_library(plain, tmp_path, monkeypatch):
    """``diffkit sample --scheduler lcm --lora FILE --ip-adapter FILE:SCALE --ip-adapter-image PNG`` (it was
    refused): the PNG of the library's images with the same IP-Adapter (defaults: consistency, 4 steps, s = 1; the
    library against diffusers' pipeline: tests/test_ip_adapter_lcm.py)."""
    import diffkit.images
    from diffkit.interop.ip_adapter import load_ip_adapter
    from test_ip_adapter import image_png, ip_adapter_state, save_ip_adapter, tiny_image_encoder
    save_grid, nrows = diffkit.images.save_grid, []
    monkeypatch.setattr(diffkit.images, "save_grid", lambda images, out, nrow, *a: nrows.append(nrow) or save_grid(
        images, out, nrow, *a))
    _, folder, lora = plain
    encoder = tiny_image_encoder(tmp_path / "image_encoder")
    adapter_file = save_ip_adapter(ip_adapter_state(tiny_sd_components(tmp_path)[0], encoder),
                                   tmp_path / "ip.safetensors")
    png = image_png(tmp_path / "image.png")
    out = tmp_path / "lcm.png"
    assert main(["sample", "--checkpoint", str(folder), "--lora", str(lora), "--scheduler", "lcm", "--prompt",
                 PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2", "--nrow", "2", "--seed", "4", "--batch-size",
                 "2", "--ip-adapter", f"{adapter_file}:0.7", "--ip-adapter-image", str(png), "--out", str(out),
                 "--no-progress"]) == 0
    sd = load_stable_diffusion(folder, lora=[lora], scheduler="lcm", progress=False)
    adapter = load_ip_adapter(adapter_file, png, 0.7, progress=False)
    for ip_adapter, name in ((adapter, "library.png"), (None, "plain.png")):
        gens = generators_from_seed(4, 2)
        images = text_to_image(sd, PROMPTS, latents=randn((2, 4, 8, 8), gens), seed=None, generator=gens,
                               output_range="-1,1", ip_adapter=ip_adapter)
        save_grid(images, tmp_path / name, nrows[-1], 1)
    assert out.read_bytes() == (tmp_path / "library.png").read_bytes()
    assert out.read_bytes() != (tmp_path / "plain.png").read_bytes()


@pytest.mark.parametrize("name", ["lcm", "tcd"])
def test_scheduler_override_with_a_controlnet_matches_the_controlnet_pipeline(plain, tmp_path, name):
    """scheduler="lcm" / "tcd" + the LoRA + a ControlNet = StableDiffusionControlNetPipeline with
    ``LCMScheduler`` / ``TCDScheduler.from_config`` and the fused LoRA (s = 1.5; tcd: eta 0.3, ``tcd:sigma_min``)."""
    from PIL import Image

    from diffkit.interop.controlnet import ControlNets
    from test_controlnet import control_png, tiny_controlnet
    fused, folder, lora = plain
    net = tiny_controlnet(tiny_sd_components(tmp_path)[0], 3)  # a plain UNet's (the fused one carries peft layers)
    png = control_png(tmp_path / "control.png")
    cls = {"lcm": diffusers.LCMScheduler, "tcd": diffusers.TCDScheduler}[name]
    pipe = diffusers.StableDiffusionControlNetPipeline(**{**fused.components, "controlnet": net,
                                                          "scheduler": cls.from_config(fused.scheduler.config)})
    pipe.set_progress_bar_config(disable=True)
    sd = load_stable_diffusion(folder, lora=[lora], scheduler=name, progress=False)
    latents = _latents(3)
    extra = {"eta": 0.3} if name == "tcd" else {}
    theirs = _theirs(pipe, 3, 1.5, latents, 5, image=Image.open(png).convert("RGB"), **extra)
    ours = text_to_image(sd, PROMPTS, sampler="tcd:sigma_min" if name == "tcd" else None, steps=3,
                         guidance_scale=1.5, latents=latents, seed=5, return_latents=True,
                         controlnet=ControlNets([net], [png]))
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)


def test_a_tcd_scheduler_folder_is_the_tcd_override(plain, tmp_path):
    """An SD 1.x folder whose own scheduler JSON is ``TCDScheduler.from_config`` of the DDIM one samples as the DDIM
    folder with ``scheduler="tcd"``, bit for bit (same config, defaults tcd, 4 steps, s = 1)."""
    _, folder, lora = plain
    tcd = diffusers.TCDScheduler.from_config(diffusers.DDIMScheduler.from_pretrained(folder / "scheduler").config)
    own = _copy(folder, tmp_path, {k: v for k, v in tcd.config.items() if k != "_use_default_values"})
    ours, override = (load_stable_diffusion(f, lora=[lora], scheduler=s, progress=False)
                      for f, s in ((own, None), (folder, "tcd")))
    assert ours.scheduler_override == "tcd" and ours.scheduler_config == override.scheduler_config
    latents = _latents(3)
    torch.testing.assert_close(text_to_image(ours, PROMPTS, latents=latents, seed=7, return_latents=True),
                               text_to_image(override, PROMPTS, latents=latents, seed=7, return_latents=True),
                               rtol=0, atol=0)
