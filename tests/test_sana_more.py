"""Sana Sprint folders (diffkit.interop.sana_sprint: SCMScheduler's sCM steps as diffkit's consistency sampler, the
guidance embedding) against diffusers' SanaSprintPipeline, and Sana LoRA files (diffkit.interop.sana_lora) against
SanaPipeline.load_lora_weights + fuse_lora, and SanaSprintImg2ImgPipeline (diffkit.interop.sana_sprint.image_to_image,
``diffkit edit`` on a Sprint folder), on the tiny random folders of tests/_sana_helpers.py."""
import copy

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import save_grid  # noqa: E402
from diffkit.interop.sana import load_sana, text_to_image  # noqa: E402
from diffkit.interop.sana_sprint import image_to_image as sprint_image_to_image  # noqa: E402

from _sana_helpers import changed_copy, tiny_sana_pipeline  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_sd_lora import _add_lora  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402

PROMPTS = ["a photo of a Cat ", "hot dog"]
SANA_LORA = dict(r=4, lora_alpha=8.0, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv_inverted",
                                                      "conv_point", "linear_1", "proj_out"],
                 rank_pattern={"to_k": 2}, alpha_pattern={"to_v": 3.0})


@pytest.fixture(scope="module")
def sprint(tmp_path_factory):
    """(pipeline, folder, SanaSprint) of a tiny SanaSprintPipeline folder."""
    path = tmp_path_factory.mktemp("sprint") / "sprint"
    tiny_sana_pipeline(sprint=True).save_pretrained(path)
    return reloaded(path, diffusers.SanaSprintPipeline, load_sana)


def _sprint_both(pipe, sprint, steps, seed=7, **call):
    """(diffkit's z_0, the pipeline's) from the same latents and per-sample step-noise generators seed + i."""
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = pipe(PROMPTS, num_inference_steps=steps, latents=noise.clone(), output_type="latent", height=32,
                      width=32, use_resolution_binning=False,
                      generator=[torch.Generator().manual_seed(seed + i) for i in range(2)], **call).images
    saved = sprint.intermediate_timesteps
    sprint.intermediate_timesteps = call.pop("intermediate_timesteps", saved)
    try:
        call.pop("max_timesteps", None)  # the caller sets sprint.max_timesteps
        ours = text_to_image(sprint, PROMPTS, steps=steps, latents=noise, seed=seed, return_latents=True, **call)
    finally:
        sprint.intermediate_timesteps = saved
    return ours, theirs


def test_sana_sprint_is_the_consistency_sampler_on_scm_thetas(sprint):
    """SanaSprintPipeline's defaults (2 steps, thetas 1.5708 / 1.3, guidance embedding 4.5), 1 and 3 steps on
    linspace(1.5708, 0), and guidance 3: diffkit's consistency sampler on the flow denoiser (sigma_data cancels),
    the first call at theta 1.5708 > pi/2 as the pipeline's."""
    pipe, _, sana = sprint
    assert type(sana).__name__ == "SanaSprint" and sana.folder_sampler() == ("consistency", {})
    ours, theirs = _sprint_both(pipe, sana, 2)
    assert relative_error(ours, theirs) < 1e-6  # 2.1e-7 measured; 1.6e-6 with the first call at pi/2
    for steps in (1, 3):
        ours, theirs = _sprint_both(pipe, sana, steps, intermediate_timesteps=None)
        assert relative_error(ours, theirs) < 1e-5  # 2.2e-7, 2.0e-7 measured
    saved = sana.max_timesteps
    try:  # a first theta below pi/2: the latents are the TrigFlow (VP) state there, not a flow state
        sana.max_timesteps = 1.4
        ours, theirs = _sprint_both(pipe, sana, 3, intermediate_timesteps=None, max_timesteps=1.4)
        assert relative_error(ours, theirs) < 1e-5  # 3.0e-7 measured
    finally:
        sana.max_timesteps = saved
    ours, theirs = _sprint_both(pipe, sana, 2, guidance_scale=3.0)
    assert relative_error(ours, theirs) < 1e-5  # 2.1e-7 measured
    with pytest.raises(DiffkitError, match="negative_prompt='ugly' is not allowed on a SanaSprintPipeline"):
        text_to_image(sana, PROMPTS, negative_prompt="ugly", steps=1)


def test_sample_command_on_a_sprint_folder_is_the_library(sprint, tmp_path, capsys):
    _, path, sana = sprint
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--seed", "5", "--height", "32", "--width", "32", "--guidance-scale", "3",
                 "--guidance-convention", "diffusers", "--out", str(out), "--no-progress"]) == 0
    images = text_to_image(sana, PROMPTS, seed=5, height=32, width=32, guidance_scale=3.0, output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(path), "--prompt", "hot", "--negative-prompt", "ugly",
                 "--out", str(tmp_path / "never.png"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--negative-prompt does not apply to a Sana Sprint folder" in err[0], err
    assert "--lora" in err[0] and "--negative-prompt," not in err[0] and not (tmp_path / "never.png").exists()


@pytest.fixture(scope="module")
def sana_lora(tmp_path_factory):
    """(folder, file, the pipeline after load_lora_weights + fuse_lora(lora_scale=0.7)) of a LoRA file written by
    SanaPipeline.save_lora_weights (rank / alpha patterns, Linear and 1x1 Conv2d layers)."""
    root = tmp_path_factory.mktemp("sana_lora")
    tiny_sana_pipeline().save_pretrained(root / "sana")
    pipe = diffusers.SanaPipeline.from_pretrained(root / "sana", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    state, meta = _add_lora(copy.deepcopy(pipe.transformer), 3, **SANA_LORA)
    diffusers.SanaPipeline.save_lora_weights(root, weight_name="lora.safetensors", transformer_lora_layers=state,
                                             transformer_lora_adapter_metadata=meta)
    pipe.load_lora_weights(str(root / "lora.safetensors"))
    pipe.fuse_lora(lora_scale=0.7)
    pipe.unload_lora_weights()
    return root / "sana", root / "lora.safetensors", pipe


def test_sana_lora_is_load_lora_weights_and_fuse_lora(sana_lora, tmp_path, capsys):
    folder, lora, pipe = sana_lora
    ours = load_sana(folder, progress=False, lora=[(lora, 0.7)])
    theirs = pipe.transformer.state_dict()
    base = load_sana(folder, progress=False).transformer.state_dict()
    worst = max(float((v - theirs[k]).abs().max()) for k, v in ours.transformer.state_dict().items())
    changed = max(float((v - base[k]).abs().max()) for k, v in ours.transformer.state_dict().items())
    assert worst < 1e-6 and changed > 1e-2  # 1.2e-7 measured
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = pipe(PROMPTS, num_inference_steps=3, latents=noise.clone(), output_type="latent", height=32,
                        width=32, use_resolution_binning=False, negative_prompt="ugly").images
    z0 = text_to_image(ours, PROMPTS, steps=3, latents=noise, return_latents=True, negative_prompt="ugly")
    assert relative_error(z0, expected) < 1e-5  # 8.8e-7 measured
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(folder), "--prompt", "hot", "--num", "1", "--steps", "2", "--seed", "3",
                 "--lora", f"{lora}:0.7", "--out", str(out), "--no-progress"]) == 0
    save_grid(text_to_image(ours, ["hot"], steps=2, seed=3, output_range="-1,1"), tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()


def test_two_sana_lora_files_one_dora_are_set_adapters_and_fuse_lora(sana_lora, tmp_path):
    """File A at 0.7 and a DoRA + rsLoRA file at -0.4: SanaPipeline.set_adapters + fuse_lora's weights."""
    folder, lora, _ = sana_lora
    pipe = diffusers.SanaPipeline.from_pretrained(folder, local_files_only=True)
    state, meta = _add_lora(copy.deepcopy(pipe.transformer), 5, r=2, lora_alpha=3.0, use_dora=True, use_rslora=True,
                            target_modules=["to_q", "to_v", "proj_out"])
    state = {k.replace("lora_magnitude_vector.weight", "lora_magnitude_vector"): v for k, v in state.items()}
    diffusers.SanaPipeline.save_lora_weights(tmp_path, weight_name="dora.safetensors", transformer_lora_layers=state,
                                             transformer_lora_adapter_metadata=meta)
    for i, path in enumerate((lora, tmp_path / "dora.safetensors")):
        pipe.load_lora_weights(str(path), adapter_name=f"a{i}")
    pipe.set_adapters(["a0", "a1"], [0.7, -0.4])
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    ours = load_sana(folder, progress=False, lora=[(lora, 0.7), (tmp_path / "dora.safetensors", -0.4)])
    theirs = pipe.transformer.state_dict()
    worst = max(float((v - theirs[k]).abs().max()) for k, v in ours.transformer.state_dict().items())
    assert worst < 1e-6  # 1.2e-7 measured


def test_sana_lora_keys_the_loader_does_not_load_are_refused(sana_lora, tmp_path, capsys):
    from safetensors.torch import save_file
    folder, _, _ = sana_lora
    bad = tmp_path / "te.safetensors"
    save_file({"text_encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 32)}, bad)
    with pytest.raises(DiffkitError, match="key 'text_encoder.layers.0.self_attn.q_proj.lora_A.weight' is not "
                                           "supported on a Sana folder"):
        load_sana(folder, progress=False, lora=[bad])
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(folder), "--prompt", "hot", "--lora", str(bad),
                 "--out", str(tmp_path / "never.png"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not supported on a Sana folder" in err[0]
    assert not (tmp_path / "never.png").exists()


@pytest.mark.parametrize("file,change,expected", [
    ("transformer/config.json", {"guidance_embeds": False}, "guidance_embeds=False for in_channels=4; allowed"),
    ("model_index.json", {"scheduler": ["diffusers", "DPMSolverMultistepScheduler"]},
     "scheduler is a 'DPMSolverMultistepScheduler'; allowed: SCMScheduler"),
    ("scheduler/scheduler_config.json", {"prediction_type": "epsilon"}, "prediction_type='epsilon'; allowed: 'trig"),
    ("model_index.json", {"_class_name": "SanaSprintImg2ImgPipeline"}, "'SanaSprintImg2ImgPipeline' folder, which")])
def test_what_sprint_does_not_drive_is_refused_in_one_line(sprint, tmp_path, file, change, expected):
    with pytest.raises(DiffkitError, match=expected):
        load_sana(changed_copy(sprint[1], tmp_path, file, change), progress=False)


@pytest.fixture(scope="module")
def sprint_img2img(sprint):
    """SanaSprintImg2ImgPipeline on the Sprint folder's components."""
    pipe = diffusers.SanaSprintImg2ImgPipeline(**sprint[0].components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("steps, strength", [(2, None), (2, 0.5), (3, 0.7)])
def test_sana_sprint_img2img_matches_the_pipeline(sprint, sprint_img2img, steps, strength):
    """SanaSprintImg2ImgPipeline: the default strength 0.6 (both of the 2 thetas run, from 1.5708), 0.5 (from
    theta 1.3), 3 steps at 0.7 (2 of linspace(1.5708, 0)): the image's DC-AE latents noised as q_sample at the
    first theta, then the consistency sampler, per-sample generators seed + i."""
    pipe, sana = sprint_img2img, sprint[2]
    images = _images()
    call = {} if strength is None else {"strength": strength}
    with torch.no_grad():
        theirs = pipe(PROMPTS, image=images, num_inference_steps=steps, output_type="latent", height=32, width=32,
                      use_resolution_binning=False, generator=[torch.Generator().manual_seed(7 + i) for i in range(2)],
                      intermediate_timesteps=1.3 if steps == 2 else None, **call).images
    ours = sprint_image_to_image(sana, images * 2 - 1, PROMPTS, strength, steps=steps, seed=7, return_latents=True)
    assert relative_error(ours, theirs) < 1e-5  # 1.2e-6 (from 1.5708), 1.5e-7 (from 1.3), 2.0e-6 measured


def test_edit_command_on_a_sprint_folder_is_the_library_and_refuses_what_does_not_apply(sprint, tmp_path, capsys):
    """`diffkit edit` on a Sana Sprint folder writes image_to_image's PNGs byte for byte (--strength,
    --guidance-scale, --steps); --mask, --negative-prompt, --sampler: one line, exit 2, no folder."""
    import numpy as np
    from PIL import Image
    from diffkit.commands.edit import read_pngs
    from diffkit.images import save_images
    _, path, sana = sprint
    (tmp_path / "in").mkdir()
    for i in range(2):
        Image.fromarray((_images()[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            tmp_path / "in" / f"{i}.png")
    common = ["edit", "--checkpoint", str(path), "--images", str(tmp_path / "in"), "--prompt", PROMPTS[0],
              "--seed", "5", "--no-progress"]
    assert main(common + ["--strength", "0.5", "--guidance-scale", "3", "--guidance-convention", "diffusers",
                          "--steps", "2", "--out", str(tmp_path / "edited")]) == 0
    images, _ = read_pngs(tmp_path / "in", "RGB")
    save_images(sprint_image_to_image(sana, images, PROMPTS[0], 0.5, steps=2, guidance_scale=3.0, seed=5,
                               output_range="-1,1"), tmp_path / "expected", prefix="edit")
    for i in range(2):
        name = f"edit_{i:05d}.png"
        assert (tmp_path / "edited" / name).read_bytes() == (tmp_path / "expected" / name).read_bytes()
    capsys.readouterr()
    for extra, expected in ((["--mask", str(tmp_path / "in" / "0.png")], "--mask does not apply to a Sana Sprint"),
                            (["--negative-prompt", "ugly"], "--negative-prompt does not apply to a Sana Sprint"),
                            (["--sampler", "ddim"], "--sampler does not apply to a Sana Sprint")):
        assert main(common + extra + ["--out", str(tmp_path / "no")]) == 2
        err = capsys.readouterr().err
        assert expected in err and "it takes --images, --prompt, --strength" in err and len(err.splitlines()) == 1
        assert not (tmp_path / "no").exists()
    with pytest.raises(DiffkitError, match=r"strength=1.5 is out of range; allowed: a finite number in \(0.0, 1.0\]"):
        sprint_image_to_image(sana, images, PROMPTS[0], 1.5)
