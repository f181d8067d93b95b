"""OpenAI consistency-model folders (diffkit.interop.consistency_models): diffkit's ``consistency`` sampler on the
folder's network with CM's boundary-condition parameterisation against diffusers' own ConsistencyModelPipeline on
tiny random folders (a class-conditional UNet2DModel with clip_denoised, an unconditional one without; nothing
downloaded), the grid against CMStochasticIterativeScheduler.set_timesteps, and ``diffkit sample`` on it."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.consistency_models import (cm_grid, generate, is_consistency_models_folder,  # noqa: E402
                                                load_consistency_models_folder)

from _pixart_helpers import edited_copy  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402


def tiny_cm_pipeline(num_class_embeds, clip_denoised):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                                 attention_head_dim=8, num_class_embeds=num_class_embeds)
    with torch.no_grad():  # outputs of order 1 (the random network's are about 0.1): clipping matters
        unet.conv_out.weight.mul_(8)
    scheduler = diffusers.CMStochasticIterativeScheduler(clip_denoised=clip_denoised)
    return diffusers.ConsistencyModelPipeline(unet=unet, scheduler=scheduler)


@pytest.fixture(scope="session")
def cm_folders(tmp_path_factory):
    """{kind: (pipeline loaded from its folder, folder, diffkit denoiser)} for a class-conditional folder (3 classes,
    clip_denoised) and an unconditional one (no clipping)."""
    out = {}
    for kind, classes, clip in (("cond", 3, True), ("uncond", None, False)):
        path = tmp_path_factory.mktemp("cm") / kind
        tiny_cm_pipeline(classes, clip).save_pretrained(path)
        pipe = diffusers.ConsistencyModelPipeline.from_pretrained(path, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        out[kind] = (pipe, path, load_consistency_models_folder(path))
    return out


def pipeline_samples(pipe, z, generator, labels, **call):
    """The pipeline's final samples (before its image conversion: the last callback's) and its images."""
    kept = []
    with torch.no_grad():
        images = pipe(batch_size=z.shape[0], class_labels=labels, latents=z.clone(), generator=generator,
                      output_type="pt", callback=lambda i, t, x: kept.append(x), **call).images
    return kept[-1], images


@pytest.mark.parametrize("kind", ["cond", "uncond"])
@pytest.mark.parametrize("call", [{"num_inference_steps": 1}, {"timesteps": [22, 0]}, {"num_inference_steps": 3},
                                  {"timesteps": [38, 30, 0]}])
def test_cm_folder_matches_the_pipeline(cm_folders, kind, call):
    """The samples from the same z and step noise equal ConsistencyModelPipeline's (1 and 2-3 steps, explicit
    timesteps; [38, 30, 0] renoises to sigma = 0.0037, where the sqrt(s^2 - eps^2) of CM Alg. 1 matters)."""
    pipe, path, denoiser = cm_folders[kind]
    assert is_consistency_models_folder(path) and not is_consistency_models_folder(path / "unet")
    labels = [0, 2] if kind == "cond" else None
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    theirs, images = pipeline_samples(pipe, z, torch.Generator().manual_seed(7), labels, **call)
    ours = generate(denoiser, z, steps=call.get("num_inference_steps"), timesteps=call.get("timesteps"),
                    class_labels=labels, generator=torch.Generator().manual_seed(7))
    assert theirs.abs().max() > 0.5 and theirs.std() > 0.1
    assert relative_error(ours, theirs) < 1e-5  # measured 1.4e-7 .. 1.5e-6
    assert relative_error((ours / 2 + 0.5).clamp(0, 1), images) < 1e-5
    from diffkit.denoiser import ThresholdedDenoiser
    assert ThresholdedDenoiser(denoiser, "clip").consistency_boundary_sigma == 0.002  # wrappers pass it on


def test_cm_grid_is_set_timesteps():
    """diffkit's grid on NoiseSchedule.edm(N) has the scheduler's sigmas and network times after set_timesteps
    (num_inference_steps 1..N, explicit timesteps), in its order; bad grids are one line."""
    from diffkit.schedule import NoiseSchedule
    for N in (40, 18):
        scheduler = diffusers.CMStochasticIterativeScheduler(num_train_timesteps=N)
        schedule = NoiseSchedule.edm(N)
        calls = [{"num_inference_steps": s} for s in range(1, N + 1)] + [{"timesteps": [N - 2, 5, 0]},
                                                                         {"timesteps": [N - 1]}]
        for call in calls:
            scheduler.set_timesteps(**call)
            grid = cm_grid(N, call.get("num_inference_steps"), call.get("timesteps"))
            assert grid[-1] == -1
            sigmas = schedule.karras_sigma(grid[:-1])
            assert torch.allclose(sigmas, scheduler.sigmas[:-1].double(), rtol=1e-6, atol=0), (N, call)
            assert np.allclose(250 * np.log(sigmas.numpy()), scheduler.timesteps.numpy(), rtol=1e-6, atol=1e-4)
    for steps, timesteps, text in ((None, [0, 22], "strictly decreasing"), (None, [40, 0], "0..39"),
                                   (41, None, "give 1..40"), (2, [22, 0], "not both")):
        with pytest.raises(DiffkitError, match=text):
            cm_grid(40, steps, timesteps)


def test_diffkit_sample_on_a_cm_folder(cm_folders, tmp_path, capsys):
    """``diffkit sample --checkpoint FOLDER --class 2 1`` (1 step, the pipeline's default) writes the pipeline's
    images of per-sample generators seed + i (8-bit PNGs, within one level); ``--timesteps 22,0`` takes 2 calls."""
    from PIL import Image
    pipe, path, _ = cm_folders["cond"]
    assert main(["sample", "--checkpoint", str(path), "--class", "2", "1", "--num", "2", "--nrow", "1", "--seed",
                 "5", "--batch-size", "2", "--out", str(tmp_path / "g.png"), "--individual", str(tmp_path / "one"),
                 "--no-progress"]) == 0
    gens = [torch.Generator().manual_seed(5 + i) for i in range(2)]
    with torch.no_grad():
        ref = pipe(batch_size=2, class_labels=[2, 1], generator=gens, output_type="np").images
    ours = np.stack([np.asarray(Image.open(p), dtype=np.float64) / 255
                     for p in sorted((tmp_path / "one").glob("*.png"))])
    assert ours.shape == ref.shape and np.abs(ours - ref).max() <= 1 / 255 + 1e-6
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(cm_folders["uncond"][1]), "--timesteps", "22,0", "--num", "2",
                 "--out", str(tmp_path / "u.png"), "--no-progress"]) == 0
    assert "timesteps 22, 0, 2 network evaluations per sample" in capsys.readouterr().out


def test_cm_folder_refusals(cm_folders, tmp_path, capsys):
    """What the folder does not take is one line, with no file written: options of other kinds, --class on the
    unconditional folder, bad --timesteps, --timesteps on another kind, a scheduler with s_noise != 1, an import
    into a diffkit checkpoint (diffkit convert --from-diffusers)."""
    cond, uncond = cm_folders["cond"][1], cm_folders["uncond"][1]
    noisy = edited_copy(cond, tmp_path / "noisy", "scheduler/scheduler_config.json", {"s_noise": 1.007})
    cases = [(cond, ["--guidance-scale", "2"], "--guidance-scale does not apply to a consistency-model folder"),
             (cond, ["--sampler", "ddim"], "--sampler does not apply to a consistency-model folder"),
             (cond, ["--prompt", "a cat"], "--prompt does not apply"),
             (cond, ["--class", "3"], "--class 3 is out of range; allowed: 0..2"),
             (uncond, ["--class", "1"], "--class needs a class-conditional checkpoint"),
             (cond, ["--timesteps", "0,22"], "strictly decreasing integers in 0..39"),
             (cond / "unet", ["--timesteps", "1,0"], "--timesteps applies to a consistency-model folder"),
             (noisy, [], "s_noise=1.007; allowed: 1.0")]
    for folder, extra, expected in cases:
        capsys.readouterr()
        code = main(["sample", "--checkpoint", str(folder), "--no-progress", "--out", str(tmp_path / "never.png"),
                     *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expected in err[0], (extra, err)
    assert not (tmp_path / "never.png").exists()
    capsys.readouterr()
    assert main(["convert", "--from-diffusers", str(cond), "--out", str(tmp_path / "never.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "which diffkit does not import into a checkpoint" in err[0]
    assert not (tmp_path / "never.safetensors").exists()
    denoiser = cm_folders["uncond"][2]
    with pytest.raises(DiffkitError, match="unconditional"):
        generate(denoiser, torch.zeros(1, 3, 8, 8), class_labels=[0])
