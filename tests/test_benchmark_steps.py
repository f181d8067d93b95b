"""The speed benchmarks' step functions still run against the current library (issue 8).

The benchmarks are not run in CI (they take minutes to hours), so a change of the library's
interface could break them unnoticed, as the trainer's data-scale measurement did for
``train_throughput.py``'s synthetic data set. One step of each side on a tiny network."""
import math
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import train_throughput  # noqa: E402

TINY = {"channel": 8, "channel_mult": [1, 2], "attn": [1], "num_res_blocks": 1, "dropout": 0.1,
        "img_size": 8, "in_channels": 1}


@pytest.mark.parametrize("options", [{}, {"bf16": True}, {"bf16": True, "memory_format": "channels_last"}])
def test_diffkit_training_step_runs(tmp_path, options):
    step, model = train_throughput._diffkit_step_fn(TINY, options, 2, "cpu", str(tmp_path))
    losses = [step() for _ in range(2)]
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(p.numel() for p in model.parameters()) > 0
    from diffkit.models.layers import resolve_memory_format
    want = resolve_memory_format(options.get("memory_format", "auto"), "cpu", "bf16" if options.get("bf16") else "no")
    assert model.memory_format is want


def test_layout_variants_force_the_other_layout_and_compare_with_the_same_diffusers():
    cpu = train_throughput.with_other_layouts({**train_throughput.CPU_VARIANTS, **train_throughput.CPU_BF16_VARIANTS},
                                              "cpu")
    from diffkit.models.layers import preferred_memory_format
    assert cpu["diffkit-contiguous"] == ("diffkit", {"memory_format": "contiguous"})
    # bf16 on the CPU: channels_last where the kernels are built, so the forced variant is contiguous
    other = "contiguous" if preferred_memory_format("cpu", "bf16") is torch.channels_last else "channels_last"
    assert cpu[f"diffkit-bf16-{other}"] == ("diffkit", {"bf16": True, "memory_format": other})
    assert train_throughput.reference_candidates(f"diffkit-bf16-{other}", cpu) == [
        "diffusers-cl-bf16", "diffusers-bf16"]
    cuda = train_throughput.with_other_layouts(train_throughput.CUDA_VARIANTS, "cuda")
    assert cuda["diffkit-bf16-compile-channels_last"][1] == {"bf16": True, "compile": True,
                                                            "memory_format": "channels_last"}
    assert train_throughput.reference_candidates("diffkit-bf16-compile-channels_last", cuda) == [
        "diffusers-cl-bf16-compile", "diffusers-tuned-bf16-compile"]  # diffusers tuned, both layouts


def test_diffusers_training_step_has_the_same_shape():
    pytest.importorskip("diffusers")
    from speed_configs import diffkit_unet
    step, model = train_throughput._diffusers_step_fn(TINY, {"channels_last": True, "tuned": True}, 2, "cpu")
    assert math.isfinite(step())
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in diffkit_unet(TINY).parameters())


def test_synthetic_items_are_images_in_range():
    data = train_throughput._Synthetic(4, 3, 8)
    image, label = data[2]
    assert image.shape == (3, 8, 8) and label == 0
    assert float(image.abs().max()) <= 1.0
    assert torch.equal(image, data[2][0])


def test_ode_convergence_runs_against_its_reference(tiny_checkpoint, tmp_path, capsys):
    """benchmarks/ode_convergence.py on a tiny trained checkpoint: the reference and its check by
    another method, and each sampler's RMS to the reference, which falls with the step count."""
    import json

    import ode_convergence
    assert ode_convergence.main(["--checkpoint", str(tiny_checkpoint), "--num", "3", "--ref-steps", "60",
                                 "--steps", "3,12", "--samplers", "ddim,unipc@logsnr:zero",
                                 "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "ode_convergence.json").read_text())
    assert report["reference"] == "unipc-3@logsnr:zero, 60 steps"
    assert report["check"] == "dpm-solver++-3m@logsnr:zero, 60 steps"
    assert report["reference_uncertainty"] < 0.05
    assert [row["spacing"] for row in report["rows"]] == ["linear, zero", "logsnr, zero"]
    for row in report["rows"]:
        assert row["rms"][1] < row["rms"][0], row
    with pytest.raises(ode_convergence.DiffkitError, match="stochastic"):
        ode_convergence.main(["--checkpoint", str(tiny_checkpoint), "--ref", "ddpm"])


def test_sampler_error_profile_follows_the_ode_solution():
    """benchmarks/samplers.py --profile: one (sigma~, RMS) per step against the DOP853 solution at
    the grid's times, ending at the endpoint's RMS; the bias FD sees and the worst 1% are printed."""
    import samplers as bench
    lines = []
    prof = bench.error_profile(bench.MIXTURES[0], 200, "ddim", 10, log=lines.append)
    assert len(prof) == 10 and prof[-1][0] == 0.0  # one state per model call, the last one clean data
    assert [s for s, _ in prof] == sorted((s for s, _ in prof), reverse=True)
    assert 0 < prof[-1][1] < 0.5 and f"final RMS {prof[-1][1]:.2e}" in lines[0]
    assert lines[2].startswith("  FD ") and "variance / ODE solution's" in lines[2]
    assert lines[3].startswith("  worst 1%, median error after each step: ")
    finer = bench.error_profile(bench.MIXTURES[0], 200, "ddim", 40, log=lambda _: None)
    assert finer[-1][1] < 0.6 * prof[-1][1]  # 4x the steps: 0.079 against 0.196


def test_sampler_error_profile_walks_the_grid_of_the_benchmark():
    """--profile NAME[@SPACING][:FINAL]:NFE; a graded grid is graded at the mixture's data scale
    (3.15 for the 8-d mixture), as diffkit.sample grades it in the benchmark itself."""
    import samplers as bench
    from diffkit import NoiseSchedule
    from diffkit.timesteps import make_grid
    assert bench.parse_profile("unipc-3@logsnr_skip:zero:15") == ("unipc-3", 15, "logsnr_skip", "zero")
    assert bench.parse_profile("unipc:10") == ("unipc", 10, None, None)
    for bad in ("unipc", "unipc:abc", "unipc:0", "bogus:10", "unipc@nope:10"):
        with pytest.raises(bench.DiffkitError):
            bench.parse_profile(bad)
    prof = bench.error_profile(bench.MIXTURES[1], 50, "unipc-3", 10, log=lambda _: None)
    schedule = NoiseSchedule.linear()
    graded = make_grid(schedule, 10, "logsnr_graded", "sigma_min", grade_sigmas=(3.154, 0.1))
    unit = make_grid(schedule, 10, "logsnr_graded", "sigma_min")
    sigmas = torch.tensor([s for s, _ in prof], dtype=torch.float64)
    torch.testing.assert_close(sigmas, schedule.karras_sigma(graded[1:]), rtol=2e-3, atol=0)
    assert not torch.allclose(sigmas, schedule.karras_sigma(unit[1:]), rtol=2e-2)


def test_fd_anatomy_splits_the_excess_fd_and_measures_gaussian_variance():
    """benchmarks/fd_anatomy.py: per-component spread and shift against the ODE solution (a sampler
    run at high NFE is close to it), and the closed-form variance error on Gaussian data."""
    import fd_anatomy
    rows = fd_anatomy.mixture_anatomy(0, ["unipc", "ddim"], 50, 20, log=lambda *a: None)
    assert [r["sampler"] for r in rows] == ["unipc", "ddim"]
    unipc, ddim = rows
    assert len(unipc["within_variance"]) == 8 and unipc["rms"] < ddim["rms"]
    assert all(abs(v) < 0.05 for v in unipc["within_variance"] if v == v)
    errors = fd_anatomy.gaussian_variance_errors("ddim", 1000, stds=(0.5, 1.0))
    assert all(abs(e) < 0.01 for e in errors)  # 1000 DDIM steps follow the exact ODE map
    with pytest.raises(fd_anatomy.DiffkitError, match="stochastic"):
        fd_anatomy.run_sampler("ddpm", None, None, None, 5)


def test_winograd_layers_runs_its_smallest_table(tmp_path, capsys):
    """winograd_layers.py called a private transform with an old signature and crashed at once."""
    import winograd_layers
    from diffkit.models import winograd
    if not winograd.winograd_available():
        pytest.skip("the Winograd kernels cannot be built here")
    winograd_layers.main(["--repeats", "1", "--batch", "1", "--sizes", "8", "--channels", "32",
                          "--out", str(tmp_path / "w.json")])
    assert "Winograd" in capsys.readouterr().out and (tmp_path / "w.json").is_file()


def test_step_compare_counts_and_profiles_both_steps(tmp_path, monkeypatch, capsys):
    """step_compare.py (thirty-seventh session) on a tiny network: both libraries' ATen calls
    counted, the copy-like bytes summed, and per-operator self times for both."""
    import json
    import step_compare
    monkeypatch.setattr(step_compare, "CONFIGS", {"tiny": TINY})
    out = tmp_path / "s.json"
    step_compare.main(["--config", "tiny", "--batch", "2", "--rounds", "1", "--rows", "3", "--warmup", "0",
                       "--out", str(out)])
    result = json.loads(out.read_text())
    for lib in ("diffkit", "diffusers"):
        assert sum(result["calls"][lib].values()) > 100 and result["calls"][lib].get("convolution", 0) > 0
        assert result["bytes"][lib]["cat"] > 0 and sum(result["self_ms"][lib].values()) > 0
    assert "ATen calls per step" in capsys.readouterr().out


def test_mnist_conv_choices_times_each_layout(tmp_path, monkeypatch, capsys):
    """mnist_conv_choices.py (thirty-seventh session) on one small shape: both layouts timed, and
    Winograd where its kernels are built."""
    import json
    import mnist_conv_choices
    from diffkit.models import winograd
    monkeypatch.setattr(mnist_conv_choices, "SHAPES", [(8, 8, 8, 3)])
    out = tmp_path / "c.json"
    mnist_conv_choices.main(["--repeats", "1", "--out", str(out)])
    row = json.loads(out.read_text())["rows"][0]
    expected = {"channels_last", "contiguous"} | ({"winograd"} if winograd.winograd_available() else set())
    assert set(row["ms"]) == expected
    assert row["ratio"]["contiguous"] > 0 and "8x8" in capsys.readouterr().out


def test_step_compare_extrapolates_the_batch_independent_cost(tmp_path, monkeypatch, capsys):
    """step_compare.py --batches: whole steps timed at each batch size, a fixed cost extrapolated."""
    import json
    import step_compare
    monkeypatch.setattr(step_compare, "CONFIGS", {"tiny": TINY})
    out = tmp_path / "b.json"
    step_compare.main(["--config", "tiny", "--batches", "2,1", "--rounds", "1", "--warmup", "0", "--out", str(out)])
    result = json.loads(out.read_text())
    for lib in ("diffkit", "diffusers"):
        seconds = result["seconds"][lib]
        assert set(seconds) == {"1", "2"} and all(s > 0 for s in seconds.values())
        assert result["fixed_s"][lib] == pytest.approx(2 * seconds["1"] - seconds["2"])
    assert "independent of the batch" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="at least two"):
        step_compare.main(["--config", "tiny", "--batches", "4"])
