"""Latent consistency model (LCM) Stable Diffusion folders: a folder with an LCMScheduler and a UNet
with ``time_cond_proj_dim`` (LCM_Dreamshaper_v7-style) against diffusers' own
LatentConsistencyModelPipeline, and an LCM-LoRA-style folder (no guidance input) against
StableDiffusionPipeline with the LCMScheduler, on tiny random models saved with save_pretrained
(nothing is downloaded). Same prompts, z_T and per-sample step noise (a list of per-sample
generators in diffusers, diffkit's ``seed`` convention) on both sides."""
import json
import re
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import diffkit  # noqa: E402
from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.guidance import GuidanceScaleInput  # noqa: E402
from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image  # noqa: E402
from diffkit.noise import generators_from_seed, randn  # noqa: E402
from test_interop_diffusers import relative_error, tiny_sd_components  # noqa: E402

PROMPTS = ["a photo of a cat", "hot"]
COND_DIM = 256  # LCM_Dreamshaper_v7's time_cond_proj_dim (diffusers' train_lcm_distill_sd_wds.py default)


def _save(root, name, *, lora=False, **scheduler_options):
    """(pipeline, folder): a tiny LCM (``lora=False``: UNet with time_cond_proj_dim, a
    LatentConsistencyModelPipeline) or LCM-LoRA-style folder (plain UNet, a StableDiffusionPipeline)
    with an LCMScheduler of ``scheduler_options``."""
    unet, vae, text_encoder, tokenizer = tiny_sd_components(root, **({} if lora else {"time_cond_proj_dim": COND_DIM}))
    cls = diffusers.StableDiffusionPipeline if lora else diffusers.LatentConsistencyModelPipeline
    pipe = cls(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
               scheduler=diffusers.LCMScheduler(**scheduler_options), safety_checker=None, feature_extractor=None,
               requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(root / name)
    return pipe, root / name


@pytest.fixture(scope="module")
def lcm(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("lcm"), "lcm")


@pytest.fixture(scope="module")
def lcm_lora(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("lcm_lora"), "lcm_lora", lora=True)


@pytest.fixture
def unet_calls(monkeypatch):
    """Every UNet2DConditionModel call: (batch, timestep, timestep_cond)."""
    calls, forward = [], diffusers.UNet2DConditionModel.forward

    def recording(self, sample, timestep, *args, **kwargs):
        calls.append((sample.shape[0], torch.as_tensor(timestep).reshape(-1)[0].item(), kwargs.get("timestep_cond")))
        return forward(self, sample, timestep, *args, **kwargs)

    monkeypatch.setattr(diffusers.UNet2DConditionModel, "forward", recording)
    return calls


def _variant(pipe, folder, tmp_path, scheduler_options):
    """(pipeline, folder) with the LCMScheduler config changed by ``scheduler_options`` (a copy)."""
    if not scheduler_options:
        return pipe, folder
    shutil.copytree(folder, tmp_path / folder.name)
    folder = tmp_path / folder.name
    config = {**json.loads((folder / "scheduler" / "scheduler_config.json").read_text()), **scheduler_options}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    pipe = type(pipe)(**{**pipe.components, "scheduler": diffusers.LCMScheduler.from_config(config)})
    pipe.set_progress_bar_config(disable=True)
    return pipe, folder


# timestep_scaling 10 (LCM's) makes c_skip(t) < 1e-7 at every t these tests sample (>= 259), so they also
# take a small one, where the boundary condition f = c_skip x + c_out x0_hat changes the result
SMALL_SCALING = {"original_inference_steps": 20, "timestep_scaling": 0.0005}  # k = 50; c_skip(999) = 0.5


def _theirs(pipe, steps, scale, latents, seed, output_type="latent", **options):
    with torch.no_grad():
        return pipe(PROMPTS, num_inference_steps=steps, guidance_scale=scale, latents=latents.clone(),
                    generator=generators_from_seed(seed, latents.shape[0]), output_type=output_type, **options).images


@pytest.mark.parametrize("steps,scale,scheduler_options", [
    (1, 8.5, {}), (4, 8.5, {}), (4, 3.3, {}),
    (3, 6.0, SMALL_SCALING),  # t = 999, 649, 349
    (2, 8.5, {"prediction_type": "v_prediction"}), (2, 8.5, {"prediction_type": "sample"}),
])
def test_lcm_folder_equals_latent_consistency_model_pipeline(lcm, tmp_path, unet_calls, steps, scale,
                                                             scheduler_options):
    """text_to_image on an LCM folder (default sampler: consistency) = LatentConsistencyModelPipeline:
    same z_0 at 1 and 4 steps, at the pipeline's default and another guidance scale, with a
    non-default original_inference_steps and timestep_scaling; one UNet call of batch B per step,
    at the scheduler's timesteps, with diffusers' embedding of w = s - 1."""
    pipe, folder = _variant(*lcm, tmp_path, scheduler_options)
    sd = load_stable_diffusion(folder)
    latents = torch.randn(sd.latent_shape(2), generator=torch.Generator().manual_seed(7))
    theirs = _theirs(pipe, steps, scale, latents, seed=3)
    their_times = pipe.scheduler.timesteps.tolist()
    unet_calls.clear()
    ours = text_to_image(sd, PROMPTS, steps=steps, guidance_scale=scale, latents=latents, seed=3, return_latents=True)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    assert [(b, t) for b, t, _ in unet_calls] == [(2, t) for t in their_times]
    assert sd.scheduler_grid(steps)[:-1].tolist() == their_times
    w_embedding = pipe.get_guidance_scale_embedding(torch.tensor(scale - 1).repeat(2), COND_DIM)
    for *_, cond in unet_calls:
        torch.testing.assert_close(cond, w_embedding, rtol=0, atol=0)
    if "timestep_scaling" in scheduler_options:  # the same chain without the boundary condition differs
        plain = diffkit.sample(GuidanceScaleInput(sd.network_denoiser, scale, "diffusers"), latents.clone(),
                               "consistency", grid=sd.scheduler_grid(steps), seed=3, progress=False,
                               cond={"context": sd.encode_prompts(PROMPTS)})
        assert relative_error(plain, theirs) > 1e-2
    if steps == 4 and scale == 8.5:  # the images, and the default guidance (the pipeline's 8.5)
        images = text_to_image(sd, PROMPTS, latents=latents, seed=3)  # default: consistency, 4 steps, s = 8.5
        torch.testing.assert_close(images, _theirs(pipe, 4, 8.5, latents, 3, output_type="pt"), rtol=0, atol=1e-5)
        seed_w = text_to_image(sd, PROMPTS, steps=4, guidance_scale=7.5, convention="seed", latents=latents, seed=3,
                               return_latents=True)
        torch.testing.assert_close(seed_w, ours, rtol=0, atol=0)  # seed convention w = s - 1
        other = text_to_image(sd, PROMPTS, steps=4, guidance_scale=3.0, latents=latents, seed=3, return_latents=True)
        assert relative_error(other, ours) > 1e-3  # w reaches the network


@pytest.mark.parametrize("steps,scale,rescale,scheduler_options", [
    (4, 1.0, 0.0, {}), (4, 1.8, 0.0, {}), (2, 1.8, 0.7, {}), (1, 2.5, 0.0, {}), (3, 1.8, 0.7, SMALL_SCALING)])
def test_lcm_lora_folder_equals_stable_diffusion_pipeline_with_lcm_scheduler(lcm_lora, tmp_path, unet_calls, steps,
                                                                            scale, rescale, scheduler_options):
    """An LCMScheduler folder without a guidance input (LCM-LoRA practice): StableDiffusionPipeline
    with the LCMScheduler, where s > 1 is classifier-free guidance of the UNet's output (then the
    boundary condition), s = 1 none (one call of batch B); guidance_rescale as the pipeline's."""
    pipe, folder = _variant(*lcm_lora, tmp_path, scheduler_options)
    sd = load_stable_diffusion(folder)
    latents = torch.randn(sd.latent_shape(2), generator=torch.Generator().manual_seed(11))
    theirs = _theirs(pipe, steps, scale, latents, seed=5, guidance_rescale=rescale)
    their_calls = list(unet_calls)
    unet_calls.clear()
    ours = text_to_image(sd, PROMPTS, sampler="consistency", steps=steps, guidance_scale=scale,
                         guidance_rescale=rescale, latents=latents, seed=5, return_latents=True)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    assert [c[:2] for c in unet_calls] == [c[:2] for c in their_calls]
    assert all(b == (4 if scale > 1 else 2) and cond is None for b, _, cond in unet_calls)
    if scale == 1.0:  # the default for such a folder: no guidance
        torch.testing.assert_close(text_to_image(sd, PROMPTS, latents=latents, seed=5, return_latents=True), ours,
                                   rtol=0, atol=0)
    if steps == 2:  # a negative prompt is the unconditional half, as in the pipeline
        negative = ["cold", "wet"]
        theirs = _theirs(pipe, steps, scale, latents, seed=5, guidance_rescale=rescale, negative_prompt=negative)
        ours = text_to_image(sd, PROMPTS, sampler="consistency", steps=steps, guidance_scale=scale,
                             guidance_rescale=rescale, negative_prompt=negative, latents=latents, seed=5,
                             return_latents=True)
        assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)


def test_sample_command_on_an_lcm_folder_defaults_to_consistency_with_w_as_input(lcm, tmp_path, monkeypatch,
                                                                                 unet_calls):
    """`diffkit sample --checkpoint LCM_FOLDER --prompt ... --guidance-scale W`: the consistency
    sampler in 4 steps by default, one UNet call of the batch per step with diffusers' embedding of
    W (seed convention; the pipeline's s = W + 1), and the pipeline's images for the command's noise
    (x_T and step noise from the per-sample generators seed + i)."""
    import diffkit.images
    pipe, folder = lcm
    grids, save_grid = [], diffkit.images.save_grid
    monkeypatch.setattr(diffkit.images, "save_grid", lambda images, *a, **k: grids.append(images) or save_grid(
        images, *a, **k))
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--guidance-scale", "6", "--seed", "4", "--batch-size", "2", "--out", str(out),
                 "--no-progress"]) == 0
    assert out.is_file() and len(unet_calls) == 4 and all(b == 2 for b, *_ in unet_calls)
    w_embedding = pipe.get_guidance_scale_embedding(torch.tensor([6.0, 6.0]), COND_DIM)
    for *_, cond in unet_calls:
        torch.testing.assert_close(cond, w_embedding, rtol=0, atol=0)
    gens = generators_from_seed(4, 2)
    latents = randn((2, 4, 8, 8), gens)
    with torch.no_grad():
        theirs = pipe(PROMPTS, num_inference_steps=4, guidance_scale=7.0, latents=latents, generator=gens,
                      output_type="pt").images
    torch.testing.assert_close((grids[0] + 1) / 2, theirs, rtol=0, atol=1e-5)
    unet_calls.clear()  # without --guidance-scale: the pipeline's default s = 8.5 (w = 7.5)
    assert main(["sample", "--checkpoint", str(folder), "--prompt", "hot", "--num", "1", "--batch-size", "1",
                 "--out", str(out), "--no-progress"]) == 0
    torch.testing.assert_close(unet_calls[0][2], pipe.get_guidance_scale_embedding(torch.tensor([7.5]), COND_DIM))


def test_sample_command_on_an_lcm_lora_folder_guides_as_classifier_free_guidance(lcm_lora, tmp_path, unet_calls):
    out = tmp_path / "grid.png"
    for extra, batch in (([], 1), (["--guidance-scale", "0.5", "--guidance-rescale", "0.5"], 2)):
        unet_calls.clear()
        assert main(["sample", "--checkpoint", str(lcm_lora[1]), "--prompt", "hot", "--num", "1", "--batch-size", "1",
                     "--steps", "2", "--out", str(out), "--no-progress", *extra]) == 0
        assert [b for b, *_ in unet_calls] == [batch, batch]  # no guidance by default: one call of B
        assert [t for _, t, _ in unet_calls] == [999, 499]  # the consistency sampler's lcm times (ddim: 500, 0)


def test_lcm_folders_refuse_bad_input_in_one_line(lcm, tmp_path, capsys):
    pipe, folder = lcm
    sd = load_stable_diffusion(folder, progress=False)
    for argv, match in ((["--guidance-scale", "2", "--guidance-rescale", "0.5"],
                         r"--guidance-rescale is an option of classifier-free guidance; this LCM folder's UNet takes "
                         r"--guidance-scale as its input w \(time_cond_proj_dim=256"),
                        (["--negative-prompt", "ugly"], r"--negative-prompt is an option of classifier-free guidance"),
                        (["--steps", "60"], "the 'lcm' spacing takes at most 50 steps"),
                        (["--guidance-scale", "-2"], r"guidance scale=-2\.0 is out of range; allowed: >= -1")):
        code = main(["sample", "--checkpoint", str(folder), "--prompt", "hot", "--num", "1", "--batch-size", "1",
                     "--out", str(tmp_path / "x.png"), "--no-progress", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert re.search(match, err[0]), err[0]
    with pytest.raises(DiffkitError, match="negative_prompt='ugly' is not allowed: this LCM UNet takes the guidance"):
        text_to_image(sd, "hot", negative_prompt="ugly")
    with pytest.raises(DiffkitError, match="use with_weight"):
        sd.guided(2.0, sd.encode_prompts([""]))
    with pytest.raises(DiffkitError, match=r"takes the guidance weight w as input \(time_cond_proj_dim=256\); pass w"):
        sd.denoiser(torch.zeros(1, 4, 8, 8), 999.0, context=sd.encode_prompts(["hot"]))
    shutil.copytree(folder, tmp_path / "f")
    sched_file = tmp_path / "f" / "scheduler" / "scheduler_config.json"
    original = json.loads(sched_file.read_text())
    for change, match in (({"clip_sample": True}, "LCMScheduler clip_sample=True clamps x0_hat"),
                          ({"thresholding": True}, "LCMScheduler thresholding=True"),
                          ({"timestep_scaling": 0}, "LCMScheduler timestep_scaling=0 is not allowed"),
                          ({"original_inference_steps": 0}, "original_inference_steps=0 is not allowed"),
                          ({"_class_name": "DDIMScheduler"},
                           "time_cond_proj_dim=256 .* but its scheduler is not an LCMScheduler")):
        sched_file.write_text(json.dumps({**original, **change}))
        with pytest.raises(DiffkitError, match=match):
            load_stable_diffusion(tmp_path / "f")
    sched_file.write_text(json.dumps(original))
    unet_file = tmp_path / "f" / "unet" / "config.json"
    unet_file.write_text(json.dumps({**json.loads(unet_file.read_text()), "time_cond_proj_dim": 3}))
    with pytest.raises(DiffkitError, match=r"time_cond_proj_dim=3; allowed: an integer >= 4"):
        load_stable_diffusion(tmp_path / "f")
