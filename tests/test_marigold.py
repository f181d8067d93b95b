"""Marigold folders (diffkit.interop.marigold, .marigold_outputs; ``diffkit predict``): diffkit against diffusers'
MarigoldDepthPipeline (DDIM, trailing, zero terminal SNR, v-prediction), MarigoldNormalsPipeline (LCMScheduler) and
MarigoldIntrinsicsPipeline (two targets, one stacked) on tiny random folders written by save_pretrained: the
predictions, latents and uncertainties of ensembles of 1 and 2, the ensembling itself on equal members, the
pictures, the command and what is refused."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffkit.errors import DiffkitError

diffusers = pytest.importorskip("diffusers")

IMAGE = torch.rand(1, 3, 14, 20, generator=torch.Generator().manual_seed(5))  # [0, 1]: resized to 11x16, padded
TARGETS = {"target_names": ["albedo", "material"], "albedo": {"prediction_space": "srgb"},
           "material": {"prediction_space": "stack", "sub_target_names": ["roughness", "metallicity", None]},
           "roughness": {"prediction_space": "linear"},
           "metallicity": {"prediction_space": "linear", "up_to_scale": True}}


def _scheduler(kind):
    if kind == "lcm":
        return diffusers.LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                      clip_sample=False, set_alpha_to_one=True, steps_offset=1,
                                      prediction_type="v_prediction", timestep_spacing="leading")
    return diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                                   set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
                                   timestep_spacing="trailing", rescale_betas_zero_snr=True)


FOLDERS = {  # task: (pipeline, scheduler, target channels, settings)
    "depth": ("MarigoldDepthPipeline", "ddim", 4, dict(prediction_type="depth", scale_invariant=True,
                                                        shift_invariant=True)),
    "normals": ("MarigoldNormalsPipeline", "lcm", 4, dict(prediction_type="normals", use_full_z_range=False)),
    "intrinsics": ("MarigoldIntrinsicsPipeline", "ddim", 8, dict(prediction_type="intrinsics",
                                                                  target_properties=TARGETS)),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """``folder(task)``: (the pipeline read back from its saved folder, the folder, diffkit's load of it), built on
    first use: tiny SD components with in_channels = 4 + out_channels, 2 steps at processing resolution 16."""
    from _pipeline_folders import reloaded
    from test_interop_diffusers import tiny_sd_components

    from diffkit.interop.marigold import load_marigold
    root, built = tmp_path_factory.mktemp("tiny_marigold"), {}

    def get(task):
        if task not in built:
            name, kind, out, settings = FOLDERS[task]
            unet, vae, text_encoder, tokenizer = tiny_sd_components(root, in_channels=4 + out, out_channels=out)
            pipe = getattr(diffusers, name)(unet=unet, vae=vae, scheduler=_scheduler(kind), text_encoder=text_encoder,
                                            tokenizer=tokenizer, default_denoising_steps=2,
                                            default_processing_resolution=16, **settings)
            pipe.save_pretrained(root / task)
            built[task] = reloaded(root / task, getattr(diffusers, name), load_marigold)
        return built[task]
    return get


def _theirs(pipe, ensemble_size=1, **kw):
    return pipe(IMAGE, ensemble_size=ensemble_size, generator=torch.Generator().manual_seed(0), output_type="np",
                output_uncertainty=ensemble_size > 1, output_latent=True, **kw)


def _ours(marigold, ensemble_size=1, **kw):
    from diffkit.interop.marigold import predict
    return predict(marigold, IMAGE * 2 - 1, ensemble_size=ensemble_size, seed=0, uncertainty=ensemble_size > 1, **kw)


def _relative(ours, theirs):
    ours, theirs = torch.as_tensor(np.asarray(ours)), torch.as_tensor(np.asarray(theirs))
    assert ours.shape == theirs.shape and theirs.abs().max() > 0
    return float((ours - theirs).abs().max() / theirs.abs().max())


def _same(ours, theirs, ensemble_size):
    """Prediction (np layout), latents and uncertainty within 1e-5 of the largest reference value."""
    prediction, spread = ours.numpy()
    assert _relative(prediction, theirs.prediction) <= 1e-5
    assert _relative(ours.latents, theirs.latent) <= 1e-5
    if ensemble_size > 1:
        assert _relative(spread, theirs.uncertainty) <= 1e-5
    else:
        assert spread is None and theirs.uncertainty is None


@pytest.mark.parametrize("ensemble_size", [1, 2])
def test_depth_is_the_pipeline(folder, ensemble_size):
    """DDIM on the trailing zero-SNR grid from one generator, the 8-channel input [image latents, noisy latents], the
    resize to 16 and back; 2 members aligned and mean-reduced with their standard deviation as uncertainty (the
    median of two is the lower one, its deviation 0). The alignment from its start (max_iter 0): BFGS itself is
    compared on equal members below, since diffusers' own result moves by up to 5% when its members move by 1e-7."""
    pipe, _, marigold = folder("depth")
    ensembling = {"max_iter": 0, "reduction": "mean"} if ensemble_size > 1 else None
    _same(_ours(marigold, ensemble_size, ensembling=ensembling),
          _theirs(pipe, ensemble_size, ensembling_kwargs=ensembling), ensemble_size)


@pytest.mark.parametrize("ensemble_size", [1, 2])
def test_normals_is_the_pipeline_on_its_lcm_scheduler(folder, ensemble_size):
    """LCMScheduler as the consistency sampler, its step noise from the same generator chunk after chunk (batch_size
    1: member after member), z mapped to [0, 1] (use_full_z_range false) and renormalised after the resize; 2
    members: their normalised mean (closest is a tie for two members) and the mean angle as uncertainty."""
    pipe, _, marigold = folder("normals")
    ensembling = {"reduction": "mean"} if ensemble_size > 1 else None
    _same(_ours(marigold, ensemble_size, ensembling=ensembling),
          _theirs(pipe, ensemble_size, ensembling_kwargs=ensembling), ensemble_size)


def test_intrinsics_is_the_pipeline(folder):
    """Two targets in 8 latent channels decoded one by one, 3 members median-reduced with their median absolute
    deviation, batch_size 3 (the members together), not resized back (match_input_resolution false)."""
    pipe, _, marigold = folder("intrinsics")
    kw = dict(batch_size=3, match_input_resolution=False)
    ours, theirs = _ours(marigold, 3, **kw), _theirs(pipe, 3, **kw)
    _same(ours, theirs, 3)
    assert ours.prediction.shape == (2, 3, 11, 16)


@pytest.mark.parametrize("size, reduction, shift", [(2, "median", True), (3, "median", True), (3, "mean", True),
                                                    (3, "median", False)])
def test_depth_ensembling_is_the_pipelines_on_equal_members(size, reduction, shift):
    """Sec. 3.3's alignment (scipy BFGS on the pairwise RMS + range regulariser), reduction, uncertainty and
    renormalisation: equal to MarigoldDepthPipeline.ensemble_depth on the same members (measured 0.0)."""
    from diffkit.interop.marigold_outputs import ensemble_depth
    members = torch.rand(size, 1, 9, 13, generator=torch.Generator().manual_seed(size)) * 0.7 + 0.1
    theirs = diffusers.MarigoldDepthPipeline.ensemble_depth(members, True, shift, True, reduction=reduction)
    ours = ensemble_depth(members, True, shift, True, reduction=reduction)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_pictures_are_diffusers_visualisations(folder):
    """visualize_depth (Spectral by the processor's own interpolation, and a matplotlib map), visualize_normals,
    visualize_intrinsics (linear targets, up_to_scale, the stacked sub-targets) and visualize_uncertainty, byte for
    byte on the same maps."""
    from diffkit.interop.marigold_outputs import (depth_picture, intrinsics_pictures, normals_picture,
                                                  uncertainty_picture)
    processor = diffusers.pipelines.marigold.MarigoldImageProcessor
    depth = torch.rand(1, 1, 7, 9, generator=torch.Generator().manual_seed(1))
    for cmap in ("Spectral", "magma"):
        assert np.array_equal(depth_picture(depth[0, 0], cmap), np.asarray(processor.visualize_depth(depth,
                                                                                                 color_map=cmap)[0]))
    normals = torch.nn.functional.normalize(torch.randn(1, 3, 7, 9, generator=torch.Generator().manual_seed(2)), dim=1)
    assert np.array_equal(normals_picture(normals[0]), np.asarray(processor.visualize_normals(normals)[0]))
    targets = torch.rand(2, 3, 7, 9, generator=torch.Generator().manual_seed(3))
    theirs = processor.visualize_intrinsics(targets, TARGETS)[0]
    ours = intrinsics_pictures(targets, TARGETS)
    assert sorted(ours) == sorted(theirs) == ["albedo", "material", "metallicity", "roughness"]
    assert all(np.array_equal(ours[k], np.asarray(theirs[k])) for k in ours)
    spread = torch.rand(1, 1, 7, 9, generator=torch.Generator().manual_seed(4))
    assert np.array_equal(uncertainty_picture(spread[0]), np.asarray(processor.visualize_uncertainty(spread)[0]))


def test_predict_command_writes_the_pipelines_prediction_and_picture(folder, tmp_path, capsys):
    """diffkit predict on a PNG: NAME_depth.npy is the pipeline's np output for the PIL image (seed 0) within 1e-5,
    NAME_depth.png its visualize_depth (at most one level apart where the map sits on a byte boundary)."""
    from diffkit.cli import main
    pipe, path, _ = folder("depth")
    pixels = (IMAGE[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    assert main(["predict", "--checkpoint", str(path), "--image", str(tmp_path / "photo.png"), "--out",
                 str(tmp_path / "out"), "--device", "cpu", "--no-progress"]) == 0
    assert "Marigold depth, ddim, 2 steps" in capsys.readouterr().out
    theirs = pipe(Image.fromarray(pixels), generator=torch.Generator().manual_seed(0)).prediction
    ours = np.load(tmp_path / "out" / "photo_depth.npy")
    assert ours.shape == (14, 20, 1) and _relative(ours, theirs[0]) <= 1e-5
    picture = np.asarray(Image.open(tmp_path / "out" / "photo_depth.png"))
    reference = np.asarray(pipe.image_processor.visualize_depth(theirs)[0])
    assert np.abs(picture.astype(int) - reference.astype(int)).max() <= 1


def test_other_samplers_run_on_its_own_grid(folder):
    """A diffkit sampler on its own grid (NAME@SPACING) runs on the depth folder; on the folder's trailing grid, which
    starts where this zero-terminal-SNR schedule has infinite noise, a multistep solver is refused in one line."""
    _, _, marigold = folder("depth")
    other = _ours(marigold, sampler="dpm-solver++-2m@leading").prediction
    assert torch.isfinite(other).all() and 0 <= other.min() and other.max() <= 1
    assert not torch.allclose(other, _ours(marigold).prediction)
    with pytest.raises(DiffkitError, match="cannot start at t=999"):
        _ours(marigold, sampler="unipc")


def test_bad_requests_are_one_line(folder, tmp_path, capsys):
    """Options the folder or the pipeline does not take, in the library and on the command line (no files
    written); sample / edit / upscale on a Marigold folder point to diffkit predict."""
    from diffkit.cli import main
    from diffkit.interop.marigold import load_marigold
    _, path, marigold = folder("depth")
    for kw, message in ((dict(processing_resolution=15), "multiple of the VAE factor 2"),
                        (dict(ensemble_size=2, ensembling={"reduction": "closest"}),
                         "reduction='closest' is not allowed"),
                        (dict(ensembling={"iterations": 3}), "iterations are not allowed for Marigold depth"),
                        (dict(ensemble_size=0), "ensemble_size"),
                        (dict(latents=torch.zeros(1, 4, 3, 3)), "expected (1, 4, 6, 8)")):
        with pytest.raises(DiffkitError, match=message.replace("(", r"\(").replace(")", r"\)")):
            _ours(marigold, **kw)
    from diffkit.interop.marigold import predict
    with pytest.raises(DiffkitError, match="uncertainty needs ensemble_size > 1"):
        predict(marigold, IMAGE * 2 - 1, uncertainty=True)
    with pytest.raises(DiffkitError, match=r"in \[-1, 1\]"):
        predict(marigold, IMAGE * 4 - 1)
    with pytest.raises(DiffkitError, match="is not a Marigold folder"):
        load_marigold(tmp_path)
    index = json.loads((path / "model_index.json").read_text())
    (tmp_path / "model_index.json").write_text(json.dumps({**index, "scheduler": ["diffusers",
                                                                                  "EulerDiscreteScheduler"]}))
    with pytest.raises(DiffkitError, match="scheduler 'EulerDiscreteScheduler' is not allowed"):
        load_marigold(tmp_path)
    (tmp_path / "model_index.json").unlink()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    out = tmp_path / "never"
    capsys.readouterr()  # the folder's saving bars, where this test built it
    for argv, message in ((["predict", "--checkpoint", str(path), "--reduction", "closest"], "median, mean"),
                          (["predict", "--checkpoint", str(path), "--uncertainty"], "--ensemble-size > 1"),
                          (["predict", "--checkpoint", str(path), "--color-map", "nope"], "'nope' is not allowed"),
                          (["predict", "--checkpoint", str(tmp_path)], "is not a Marigold folder"),
                          (["sample", "--checkpoint", str(path), "--prompt", "a", "--out", str(out / "s.png")],
                           "use diffkit predict"),
                          (["edit", "--checkpoint", str(path), "--prompt", "a", "--images", str(tmp_path / "x.png"),
                            "--out", str(out)], "use diffkit predict"),
                          (["upscale", "--checkpoint", str(path), "--images", str(tmp_path / "x.png"), "--out",
                            str(out)], "does no upscaling")):
        extra = [] if argv[0] != "predict" else ["--image", str(tmp_path / "x.png"), "--out", str(out)]
        assert main([*argv, *extra, "--device", "cpu", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not out.exists()
