"""Latent consistency (LCM) and TCD sampling of SD-XL folders: an SD-XL folder whose scheduler is an
LCMScheduler (a UNet with ``time_cond_proj_dim``, latent-consistency/lcm-sdxl's layout, or without: an LCM-LoRA
fused in) and ``scheduler="lcm"`` / ``"tcd"`` on a plain SD-XL folder (Euler scheduler, as SD-XL base's) with a
LoRA merged (LCM-LoRA-SDXL's and TCD-SDXL-LoRA's recipe), against diffusers' StableDiffusionXLPipeline with the same
scheduler; tiny random models of tests/test_interop_sd_xl.py, same z_T and per-sample step noise on both sides."""
import copy
import json
import re
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("peft")

import diffkit  # noqa: E402
from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.guidance import GuidanceScaleInput  # noqa: E402
from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image  # noqa: E402
from diffkit.noise import generators_from_seed, randn  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_lcm import COND_DIM, SMALL_SCALING  # noqa: E402
from test_interop_sd_xl import PROMPTS, tiny_sd_xl_pipeline  # noqa: E402
from test_sd_lora import UNET_LORA, _add_lora  # noqa: E402


def _with_scheduler(folder, out, config, unet=None):
    """A copy of ``folder`` whose scheduler JSON is ``config`` (and whose UNet is ``unet``, saved, if given)."""
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns(*(["unet"] if unet is not None else [])))
    config = {k: v for k, v in config.items() if k != "_use_default_values"}  # as save_pretrained writes it
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    if unet is not None:
        unet.save_pretrained(out / "unet")
    return out


@pytest.fixture(scope="module")
def xl(tmp_path_factory):
    """{"pipe": the tiny SD-XL pipeline (EulerDiscreteScheduler of SD-XL base's config), "fused": a copy with the
    UNet LoRA fused, "folder": the plain folder, "lora": the LoRA file, "lcm_w": (pipeline, folder) of an
    LCMScheduler folder (SMALL_SCALING) whose UNet has time_cond_proj_dim 256, "lcm": (pipeline, folder) of the
    plain UNet with an LCMScheduler (SMALL_SCALING), "tcd": the same with a TCDScheduler (timestep scaling
    0.0005), "small": the plain folder with timestep_scaling 0.0005}."""
    root = tmp_path_factory.mktemp("lcm_sd_xl")
    pipe = tiny_sd_xl_pipeline(root)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="leading")
    pipe.save_pretrained(root / "xl")
    state, config = _add_lora(copy.deepcopy(pipe.unet), 5, **UNET_LORA)
    diffusers.StableDiffusionXLPipeline.save_lora_weights(root / "lora", weight_name="lcm_lora.safetensors",
                                                          unet_lora_layers=state, unet_lora_adapter_metadata=config)
    fused = copy.deepcopy(pipe)
    fused.load_lora_weights(str(root / "lora" / "lcm_lora.safetensors"))
    fused.fuse_lora(lora_scale=1.0)
    torch.manual_seed(3)
    unet_w = diffusers.UNet2DConditionModel.from_config(pipe.unet.config, time_cond_proj_dim=COND_DIM)
    lcm_config = diffusers.LCMScheduler.from_config(pipe.scheduler.config, **SMALL_SCALING).config
    out = {"pipe": pipe, "fused": fused, "folder": root / "xl", "lora": root / "lora" / "lcm_lora.safetensors"}
    tcd_config = diffusers.TCDScheduler.from_config(pipe.scheduler.config, timestep_scaling=5e-4).config
    for name, unet, config in (("lcm_w", unet_w, lcm_config), ("lcm", None, lcm_config), ("tcd", None, tcd_config)):
        cls = getattr(diffusers, config["_class_name"])
        components = {**pipe.components, "scheduler": cls.from_config(config)}
        lcm_pipe = type(pipe)(**{**components, **({} if unet is None else {"unet": unet})})
        lcm_pipe.set_progress_bar_config(disable=True)
        out[name] = (lcm_pipe, _with_scheduler(root / "xl", root / name, config, unet))
    small = {**json.loads((root / "xl" / "scheduler" / "scheduler_config.json").read_text()), "timestep_scaling": 5e-4}
    out["small"] = _with_scheduler(root / "xl", root / "small", small)
    return out


def _latents(seed=7):
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def _theirs(pipe, steps, scale, latents, seed, output_type="latent", **options):
    with torch.no_grad():
        return pipe(PROMPTS, num_inference_steps=steps, guidance_scale=scale, latents=latents.clone(),
                    generator=generators_from_seed(seed, latents.shape[0]), output_type=output_type, **options).images


def _from_config(pipe, cls, folder):
    """``pipe`` with ``pipe.scheduler = cls.from_config(pipe.scheduler.config)`` of ``folder``'s scheduler."""
    base = diffusers.EulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    new = type(pipe)(**{**pipe.components, "scheduler": cls.from_config(base.config)})
    new.set_progress_bar_config(disable=True)
    return new


@pytest.fixture
def unet_calls(monkeypatch):
    """Every UNet2DConditionModel call: (batch, timestep, timestep_cond, added_cond_kwargs keys)."""
    calls, forward = [], diffusers.UNet2DConditionModel.forward

    def recording(self, sample, timestep, *args, **kwargs):
        calls.append((sample.shape[0], torch.as_tensor(timestep).reshape(-1)[0].item(), kwargs.get("timestep_cond"),
                      sorted(kwargs.get("added_cond_kwargs") or {})))
        return forward(self, sample, timestep, *args, **kwargs)

    monkeypatch.setattr(diffusers.UNet2DConditionModel, "forward", recording)
    return calls


@pytest.mark.parametrize("steps,scale", [(3, 6.0), (4, 5.0)])
def test_lcm_sd_xl_with_a_guidance_input_equals_the_pipeline(xl, unet_calls, steps, scale):
    """An SD-XL LCMScheduler folder whose UNet has time_cond_proj_dim (lcm-sdxl): StableDiffusionXLPipeline embeds
    s - 1 as timestep_cond and runs no classifier-free pass: one call of batch B per step, with text_embeds and
    time_ids; at timestep scaling 0.0005 (c_skip(999) = 0.5: the boundary condition shows). Default: the
    consistency sampler, 4 steps, the pipeline's s = 5."""
    pipe, folder = xl["lcm_w"]
    sd = load_stable_diffusion(folder, progress=False)
    assert sd.guidance_embedding_dim == COND_DIM and sd.default_guidance_scale == 5.0
    latents = _latents()
    theirs = _theirs(pipe, steps, scale, latents, 3)
    unet_calls.clear()
    ours = text_to_image(sd, PROMPTS, steps=steps, guidance_scale=scale, latents=latents, seed=3, return_latents=True)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    assert [c[:2] for c in unet_calls] == [(2, t) for t in pipe.scheduler.timesteps.tolist()]
    w_embedding = pipe.get_guidance_scale_embedding(torch.tensor(scale - 1).repeat(2), COND_DIM)
    for _, _, cond, added in unet_calls:
        torch.testing.assert_close(cond, w_embedding, rtol=0, atol=0)
        assert added == ["text_embeds", "time_ids"]
    if steps == 4:  # the defaults; without the boundary condition z_0 differs
        torch.testing.assert_close(text_to_image(sd, PROMPTS, latents=latents, seed=3, return_latents=True), ours,
                                   rtol=0, atol=0)
        _, cond = sd.prompt_guidance(PROMPTS, None, scale, "diffusers", 0.0, image_size=(16, 16))
        no_bc = diffkit.sample(GuidanceScaleInput(sd.network_denoiser, scale, "diffusers"), latents.clone(),
                               "consistency", grid=sd.scheduler_grid(steps), seed=3, progress=False, cond=cond)
        assert relative_error(no_bc, theirs) > 1e-2, relative_error(no_bc, theirs)


@pytest.mark.parametrize("steps,scale,rescale", [(3, 1.0, 0.0), (2, 1.8, 0.7)])
def test_lcm_sd_xl_without_a_guidance_input_equals_the_pipeline(xl, unet_calls, steps, scale, rescale):
    """An SD-XL LCMScheduler folder with a plain UNet (an LCM-LoRA fused in): StableDiffusionXLPipeline with the
    LCMScheduler, classifier-free guidance for s > 1 (zeroed null half, guidance_rescale) before the boundary
    condition; s = 1, the default, one call of batch B."""
    pipe, folder = xl["lcm"]
    sd = load_stable_diffusion(folder, progress=False)
    assert sd.default_guidance_scale == 1.0 and sd.consistency["timestep_scaling"] == 5e-4
    latents = _latents(11)
    theirs = _theirs(pipe, steps, scale, latents, 5, guidance_rescale=rescale)
    unet_calls.clear()
    ours = text_to_image(sd, PROMPTS, steps=steps, guidance_scale=scale, guidance_rescale=rescale, latents=latents,
                         seed=5, return_latents=True)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    assert [c[:2] for c in unet_calls] == [(4 if scale > 1 else 2, t) for t in pipe.scheduler.timesteps.tolist()]
    if scale == 1.0:
        torch.testing.assert_close(text_to_image(sd, PROMPTS, steps=steps, latents=latents, seed=5,
                                                 return_latents=True), ours, rtol=0, atol=0)


# the LoRA merge rounds differently from diffusers' fuse_lora (weights within 1e-7 relative), which the tiny
# random SD-XL UNet amplifies to a few 1e-5 of z_0 in 3-4 steps (tests/test_sd_xl_lora.py's 3e-5 for DDIM), and to
# 1.8e-4 with guidance on an AVX-512 machine (its float32 sums round differently); the merge itself: test_sd_xl_lora
LORA_TOLERANCE = 5e-4


@pytest.mark.parametrize("steps,scale,small,lora", [(4, 1.0, False, False), (3, 1.5, True, False),
                                                    (4, 1.0, False, True), (3, 1.5, True, True)])
def test_lcm_override_on_sd_xl_equals_lcm_scheduler_from_config(xl, steps, scale, small, lora):
    """scheduler="lcm" on a plain SD-XL folder (Euler JSON) = StableDiffusionXLPipeline + LCMScheduler.from_config
    (with the LoRA: + the fused LoRA, LCM-LoRA-SDXL's recipe); the config is diffusers' own."""
    folder = xl["small"] if small else xl["folder"]
    pipe = _from_config(xl["fused" if lora else "pipe"], diffusers.LCMScheduler, folder)
    sd = load_stable_diffusion(folder, lora=[xl["lora"]] if lora else None, scheduler="lcm", progress=False)
    assert sd.scheduler_config == {k: v for k, v in pipe.scheduler.config.items() if k != "_use_default_values"}
    assert sd.default_guidance_scale == 1.0 and sd.consistency["timestep_scaling"] == (5e-4 if small else 10.0)
    latents = _latents(2)
    theirs = _theirs(pipe, steps, scale, latents, 4)
    ours = text_to_image(sd, PROMPTS, steps=steps, guidance_scale=scale, latents=latents, seed=4, return_latents=True)
    assert relative_error(ours, theirs) < (LORA_TOLERANCE if lora else 1e-5), relative_error(ours, theirs)
    assert sd.scheduler_grid(steps)[:-1].tolist() == pipe.scheduler.timesteps.tolist()


@pytest.mark.parametrize("gamma,scale,lora", [(0.3, 1.0, False), (0.5, 1.5, False), (0.3, 1.0, True)])
def test_tcd_override_on_sd_xl_equals_tcd_scheduler_from_config(xl, gamma, scale, lora):
    """scheduler="tcd": ``tcd:sigma_min`` = StableDiffusionXLPipeline + TCDScheduler.from_config (eta = gamma; with
    the LoRA: + the fused LoRA, TCD-SDXL-LoRA's recipe), no boundary condition (timestep scaling 0.0005 would show
    one). Default: the tcd sampler, 4 steps, s = 1."""
    pipe = _from_config(xl["fused" if lora else "pipe"], diffusers.TCDScheduler, xl["small"])
    sd = load_stable_diffusion(xl["small"], lora=[xl["lora"]] if lora else None, scheduler="tcd", progress=False)
    assert sd.consistency is None and sd.default_guidance_scale == 1.0
    latents = _latents(3)
    theirs = _theirs(pipe, 4, scale, latents, 7, eta=gamma)
    ours = text_to_image(sd, PROMPTS, sampler="tcd:sigma_min", steps=4, guidance_scale=scale, gamma=gamma,
                         latents=latents, seed=7, return_latents=True)
    assert relative_error(ours, theirs) < (LORA_TOLERANCE if lora else 1e-5), relative_error(ours, theirs)
    if scale == 1.0 and not lora:
        default = text_to_image(sd, PROMPTS, latents=latents, seed=7, return_latents=True)
        explicit = text_to_image(sd, PROMPTS, sampler="tcd", steps=4, guidance_scale=1.0, latents=latents, seed=7,
                                 return_latents=True)
        torch.testing.assert_close(default, explicit, rtol=0, atol=0)


def test_a_tcd_scheduler_folder_is_sampled_as_scheduler_tcd(xl, tmp_path, capsys):
    """An SD-XL folder whose own scheduler is a TCDScheduler: as ``scheduler="tcd"`` (its config unchanged), =
    StableDiffusionXLPipeline with that scheduler (tcd:sigma_min, eta 0.3, s = 1); defaults tcd, 4 steps, s = 1,
    also in ``diffkit sample``; original_inference_steps other than 50 refused in one line."""
    pipe, folder = xl["tcd"]
    sd = load_stable_diffusion(folder, progress=False)
    assert sd.scheduler_override == "tcd" and sd.consistency is None and sd.default_guidance_scale == 1.0
    assert sd.scheduler_config == {k: v for k, v in pipe.scheduler.config.items() if k != "_use_default_values"}
    latents = _latents(5)
    theirs = _theirs(pipe, 4, 1.0, latents, 7, eta=0.3)
    ours = text_to_image(sd, PROMPTS, sampler="tcd:sigma_min", latents=latents, seed=7, return_latents=True)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    assert main(["sample", "--checkpoint", str(folder), "--prompt", "hot", "--num", "1", "--batch-size", "1",
                 "--out", str(tmp_path / "x.png"), "--no-progress"]) == 0
    assert "(1 samples, tcd, " in capsys.readouterr().out
    shutil.copytree(folder, tmp_path / "n20", ignore=shutil.ignore_patterns("*.safetensors"))
    config_file = tmp_path / "n20" / "scheduler" / "scheduler_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "original_inference_steps": 20}))
    with pytest.raises(DiffkitError, match=r"^a TCDScheduler folder: .* gives TCDScheduler "
                                           r"original_inference_steps=20; allowed: 50 "):
        load_stable_diffusion(tmp_path / "n20", progress=False)


@pytest.mark.parametrize("name", ["lcm", "tcd"])
def test_sample_command_scheduler_on_sd_xl_png_equals_library(xl, tmp_path, monkeypatch, name):
    """``diffkit sample --checkpoint SDXL --lora FILE --scheduler lcm|tcd``: the library's PNG for the command's
    noise (z_T and step noise from the per-sample generators seed + i)."""
    import diffkit.images
    save_grid, nrows = diffkit.images.save_grid, []
    monkeypatch.setattr(diffkit.images, "save_grid", lambda images, out, nrow, *a: nrows.append(nrow) or save_grid(
        images, out, nrow, *a))
    out = tmp_path / f"{name}.png"
    assert main(["sample", "--checkpoint", str(xl["folder"]), "--lora", str(xl["lora"]), "--scheduler", name,
                 "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2", "--nrow", "2", "--seed", "4",
                 "--batch-size", "2", "--out", str(out), "--no-progress"]) == 0
    sd = load_stable_diffusion(xl["folder"], lora=[xl["lora"]], scheduler=name, progress=False)
    gens = generators_from_seed(4, 2)
    images = text_to_image(sd, PROMPTS, latents=randn((2, 4, 8, 8), gens), seed=None, generator=gens,
                           output_range="-1,1")
    save_grid(images, tmp_path / "library.png", nrows[-1], 1)
    assert out.read_bytes() == (tmp_path / "library.png").read_bytes()


def test_sample_command_on_an_lcm_sd_xl_folder_gives_w_to_the_unet(xl, tmp_path, unet_calls):
    """``diffkit sample`` on the w-input folder: 4 consistency steps of one call of the batch, timestep_cond the
    embedding of --guidance-scale W (seed convention), and by default of the pipeline's s = 5 (w = 4)."""
    pipe, folder = xl["lcm_w"]
    out = tmp_path / "grid.png"
    for extra, w in ((["--guidance-scale", "6"], 6.0), ([], 4.0)):
        unet_calls.clear()
        assert main(["sample", "--checkpoint", str(folder), "--prompt", "hot", "--num", "1", "--batch-size", "1",
                     "--out", str(out), "--no-progress", *extra]) == 0
        assert len(unet_calls) == 4 and all(b == 1 for b, *_ in unet_calls)
        torch.testing.assert_close(unet_calls[0][2], pipe.get_guidance_scale_embedding(torch.tensor([w]), COND_DIM))


def test_lcm_sd_xl_refusals_are_one_line(xl, tmp_path, capsys):
    """A w-input UNet with --negative-prompt / --guidance-rescale (or the library's), with a scheduler other than an
    LCMScheduler; --scheduler on an SD-XL LCMScheduler folder (diffkit sample and edit)."""
    _, folder = xl["lcm_w"]
    (tmp_path / "images").mkdir()
    for argv, match in (
            (["sample", "--checkpoint", str(folder), "--prompt", "hot", "--negative-prompt", "ugly"],
             r"--negative-prompt is an option of classifier-free guidance; this LCM folder's UNet takes"),
            (["sample", "--checkpoint", str(folder), "--prompt", "hot", "--scheduler", "tcd"],
             r"--scheduler tcd: .* is already an LCMScheduler folder"),
            (["edit", "--checkpoint", str(xl["lcm"][1]), "--images", str(tmp_path / "images"), "--prompt", "hot",
              "--scheduler", "lcm"], r"--scheduler lcm: .* is already an LCMScheduler folder")):
        code = main(argv + ["--out", str(tmp_path / "out" / "x.png"), "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and re.search(match, err[0]), err
        assert not (tmp_path / "out").exists()
    sd = load_stable_diffusion(folder, progress=False)
    for kw, match in (({"negative_prompt": "ugly"}, "negative_prompt='ugly' is not allowed: this LCM UNet takes"),
                      ({"guidance_rescale": 0.5}, "guidance_rescale=0.5 is not allowed: this LCM UNet takes")):
        with pytest.raises(DiffkitError, match=match):
            text_to_image(sd, "hot", **kw)
    euler = json.loads((xl["folder"] / "scheduler" / "scheduler_config.json").read_text())
    shutil.copytree(folder, tmp_path / "euler", ignore=shutil.ignore_patterns("*.safetensors"))
    (tmp_path / "euler" / "scheduler" / "scheduler_config.json").write_text(json.dumps(euler))
    with pytest.raises(DiffkitError, match="time_cond_proj_dim=256 .* but its scheduler is not an LCMScheduler"):
        load_stable_diffusion(tmp_path / "euler", progress=False)


@pytest.mark.parametrize("name", ["lcm", "tcd"])
def test_diffkit_edit_of_sd_xl_lcm_and_tcd_folders_is_the_xl_img2img_pipeline(xl, tmp_path, capsys, name):
    """``diffkit edit`` of an SD-XL LCMScheduler / TCDScheduler folder (defaults: consistency / tcd, 4 steps, s = 1;
    ``--final sigma_min`` for TCDScheduler's last step): StableDiffusionXLImg2ImgPipeline with that scheduler
    (strength 0.5: the last 2 of its 4 timesteps; eta 0.3) to the PNGs' 1/255, image i from seed + i."""
    import numpy as np
    from PIL import Image
    from test_latent_editing import cli, write_pngs
    pipe, folder = xl[name]
    img2img = diffusers.StableDiffusionXLImg2ImgPipeline(**pipe.components, requires_aesthetics_score=False,
                                                         add_watermarker=False)
    img2img.set_progress_bar_config(disable=True)
    pngs = write_pngs(tmp_path / "in", 2, 16, "RGB")
    extra = ["--final", "sigma_min"] if name == "tcd" else []
    code, out, err = cli(capsys, "--checkpoint", folder, "--images", pngs, "--prompt", PROMPTS[0], "--prompt",
                         PROMPTS[1], "--strength", 0.5, "--seed", 10, "--out", tmp_path / "out", *extra)
    assert code == 0, err
    image = torch.stack([torch.from_numpy(np.array(Image.open(pngs / f"in_{i}.png"))).permute(2, 0, 1)
                         for i in range(2)]).float() / 255
    with torch.no_grad():
        theirs = img2img(PROMPTS, image=image, strength=0.5, num_inference_steps=4, guidance_scale=1.0, eta=0.3,
                         output_type="np", generator=generators_from_seed(10, 2)).images
    ours = np.stack([np.asarray(Image.open(tmp_path / "out" / f"edit_{i:05d}.png")) for i in range(2)])
    assert np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1
