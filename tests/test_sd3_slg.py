"""Skip-layer guidance on SD3 folders (diffkit.interop.sd3_slg): against diffusers' StableDiffusion3Pipeline with
skip_guidance_layers on the tiny folder of test_interop_sd3 (its fixture, imported)."""
import re

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.sd3 import text_to_image  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
import test_interop_sd3  # noqa: E402

PROMPTS = test_interop_sd3.PROMPTS
tiny_sd3 = test_interop_sd3.tiny_sd3  # the folder fixture, shared (pytest finds it in this module's namespace)


def _rows_per_step(transformer, run, monkeypatch):
    """(run(), {round(timestep, 3): [[rows, skip_layers given]]} of the transformer's calls, [(blocks, rows)] that
    diffkit's SkippedBlocks skipped per call)."""
    import diffkit.interop.sd3_slg as slg
    calls, skipped = {}, []

    def pre(module, args, kwargs):
        t = round(float(kwargs["timestep"].reshape(-1)[0]), 3)
        calls.setdefault(t, []).append([kwargs["hidden_states"].shape[0], kwargs.get("skip_layers") is not None])

    perturbed = slg.SkippedBlocks.perturbed_self_attention

    def recording(self, layers, identity):
        skipped.append((list(layers), int(identity.sum())))
        return perturbed(self, layers, identity)

    handle = transformer.register_forward_pre_hook(pre, with_kwargs=True)
    monkeypatch.setattr(slg.SkippedBlocks, "perturbed_self_attention", recording)
    try:
        out = run()
    finally:
        handle.remove()
        monkeypatch.undo()
    return out, calls, skipped


@pytest.mark.parametrize("steps, layers, kw", [
    (10, [0], {"skip_layer_guidance_scale": 2.0, "skip_layer_guidance_start": 0.1, "skip_layer_guidance_stop": 0.5}),
    (28, [0, 1], {})])
def test_sd3_skip_layer_guidance_matches_the_pipeline(tiny_sd3, steps, layers, kw, monkeypatch):
    """Same z_0 as StableDiffusion3Pipeline(skip_guidance_layers=...): u_u + s (u_c - u_u) + S (u_c - u-hat_c) at
    the steps N start < i < N stop (10 steps, 0.1..0.5: i = 2, 3, 4; the defaults 0.01..0.2 of 28: i = 1..5), the
    same transformer rows at every step (the pipeline's 2B + B with skip_layers as one call of 3B)."""
    pipe, _, sd3 = tiny_sd3[True]
    latents = test_interop_sd3._latents()
    options = {"negative_prompt": "ugly", "max_sequence_length": 12, "guidance_scale": 4.0}
    with torch.no_grad():
        theirs, their_calls, _ = _rows_per_step(pipe.transformer, lambda: pipe(
            PROMPTS, num_inference_steps=steps, latents=latents.clone(), output_type="latent",
            skip_guidance_layers=layers, **kw, **options).images, monkeypatch)
    ours, our_calls, skipped = _rows_per_step(sd3.transformer, lambda: text_to_image(
        sd3, PROMPTS, steps=steps, latents=latents, return_latents=True, skip_guidance_layers=layers, **kw,
        **options), monkeypatch)
    error = relative_error(ours, theirs)
    print("slg", steps, layers, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)
    assert len(our_calls) == len(their_calls) == steps
    theirs_rows = [sum(rows for rows, _ in calls) for calls in their_calls.values()]
    assert [sum(rows for rows, _ in calls) for calls in our_calls.values()] == theirs_rows
    slg_steps = [i for i, calls in enumerate(their_calls.values()) if any(skip for _, skip in calls)]
    assert [i for i, rows in enumerate(theirs_rows) if rows == 6] == slg_steps and slg_steps == (
        [2, 3, 4] if steps == 10 else [1, 2, 3, 4, 5])
    assert skipped == [(layers, 2)] * len(slg_steps)  # B = 2 rows skip the chosen blocks at each such step
    plain = text_to_image(sd3, PROMPTS, steps=steps, latents=latents, return_latents=True, **options)
    assert relative_error(plain, theirs) > 1e-3  # it does guide


def test_skip_layer_guidance_scale_zero_and_bad_values(tiny_sd3):
    """Scale 0 is plain classifier-free guidance bit for bit; out-of-range layers, start >= stop, a window with no
    step, guidance off: one line each."""
    _, _, sd3 = tiny_sd3[True]
    latents = test_interop_sd3._latents()
    options = {"max_sequence_length": 12, "guidance_scale": 4.0, "steps": 4, "latents": latents,
               "return_latents": True}
    plain = text_to_image(sd3, PROMPTS, **options)
    assert torch.equal(text_to_image(sd3, PROMPTS, skip_guidance_layers=[1], skip_layer_guidance_scale=0.0,
                                     skip_layer_guidance_stop=0.5, **options), plain)
    for kw, match in (({"skip_guidance_layers": [2]}, "layer 2 is out of range; this SD3 transformer has 2 blocks"),
                      ({"skip_guidance_layers": [1], "skip_layer_guidance_start": 0.3,
                        "skip_layer_guidance_stop": 0.3}, "start 0.3 >= stop 0.3 is not allowed"),
                      ({"skip_guidance_layers": [1]}, "from 0.01 to 0.2 of 4 steps takes no step"),
                      ({"skip_guidance_layers": [1], "skip_layer_guidance_stop": 0.6, "guidance_scale": 1.0},
                       "needs classifier-free guidance on .* s = 1"),
                      ({"skip_guidance_layers": [True]}, "layers \\[True\\] are not allowed")):
        with pytest.raises(DiffkitError) as err:
            text_to_image(sd3, PROMPTS, **{**options, **kw})
        assert re.search(match, str(err.value)) and "\n" not in str(err.value), (kw, str(err.value))


def test_sample_command_takes_skip_layer_guidance(tiny_sd3, tmp_path, capsys):
    """`diffkit sample --slg-layers 1 --slg-scale 2 --slg-stop 0.5` on an SD3 folder writes text_to_image's grid byte
    for byte (the pipeline's loop, and unipc with the window at the same noise levels), within one PNG level of the
    pipeline's; bad values and other checkpoints: one line each, before any output."""
    import numpy as np
    from PIL import Image
    from diffkit.cli import main
    from diffkit.images import save_grid
    from diffkit.noise import generators_from_seed, randn
    pipe, folder, sd3 = tiny_sd3[True]
    common = ["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
              "--nrow", "1", "--steps", "5", "--seed", "5", "--batch-size", "2", "--guidance-convention", "diffusers",
              "--guidance-scale", "4", "--max-sequence-length", "12", "--no-progress"]
    slg = ["--slg-layers", "1", "--slg-scale", "2", "--slg-stop", "0.5"]
    kw = {"skip_guidance_layers": [1], "skip_layer_guidance_scale": 2.0, "skip_layer_guidance_stop": 0.5}
    for sampler in ("ddim", "unipc"):
        out = tmp_path / f"{sampler}.png"
        assert main(common + slg + ["--sampler", sampler, "--out", str(out)]) == 0
        images = text_to_image(sd3, PROMPTS, sampler=None if sampler == "ddim" else sampler, steps=5, seed=5,
                               guidance_scale=4.0, max_sequence_length=12, output_range="-1,1", **kw)
        save_grid(images, tmp_path / "expected.png", 1)
        assert out.read_bytes() == (tmp_path / "expected.png").read_bytes(), sampler
    with torch.no_grad():
        theirs = pipe(PROMPTS, num_inference_steps=5, guidance_scale=4.0, max_sequence_length=12, output_type="np",
                      latents=randn(sd3.latent_shape(2), generators_from_seed(5, 2)), **kw).images
    save_grid(torch.from_numpy(theirs).permute(0, 3, 1, 2) * 2 - 1, tmp_path / "theirs.png", 1)
    ours, ref = (np.asarray(Image.open(p), dtype=np.float64) for p in (tmp_path / "ddim.png", tmp_path / "theirs.png"))
    assert np.abs(ours - ref).max() <= 1
    capsys.readouterr()
    bad = str(tmp_path / "bad" / "o.png")
    (tmp_path / "flux").mkdir()  # a FLUX folder's index (nothing is loaded: refused first)
    (tmp_path / "flux" / "model_index.json").write_text('{"_class_name": "FluxPipeline", "transformer": '
                                                       '["diffusers", "FluxTransformer2DModel"]}')
    for argv, match in (
            (common + ["--slg-layers", "2", "--out", bad], "layer 2 is out of range; this SD3 "
                                                            "transformer has 2 blocks: allowed 0..1"),
            (common + ["--slg-layers", "1,a", "--out", bad], "--slg-layers '1,a' is not allowed; give comma-sep"),
            (common + slg[:2] + ["--slg-start", "0.5", "--slg-stop", "0.4", "--out", bad],
             "start 0.5 >= stop 0.4 is not allowed"),
            (common + ["--slg-scale", "3", "--out", bad], "--slg-scale goes with --slg-layers"),
            (common + ["--slg-layers", "1", "--out", bad], "from 0.01 to 0.2 of 5 steps takes no step"),
            (common[:-5] + ["--guidance-scale", "1"] + slg + ["--out", bad], "--slg-layers needs classifier-free "
                                                                              "guidance on"),
            (["sample", "--checkpoint", str(tmp_path / "flux"), "--prompt", "a"] + slg + ["--out", bad],
             "--slg-layers applies to an SD3 folder .*flux is not one")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), (argv, err)
        assert not (tmp_path / "bad").exists()


def test_skip_layer_guidance_on_an_sd3_5_transformer(tiny_sd3):
    """SD3.5 Medium's MMDiT-X blocks (dual attention on block 0, qk_norm): skipping block 0 matches the pipeline."""
    import dataclasses
    pipe, _, sd3 = tiny_sd3[False]
    transformer = test_interop_sd3.sd3_5_transformer()
    sd3_5 = dataclasses.replace(sd3, transformer=transformer, _denoiser=None)
    latents = test_interop_sd3._latents()
    kw = {"skip_guidance_layers": [0], "skip_layer_guidance_stop": 0.5, "guidance_scale": 4.0,
          "max_sequence_length": 12}
    original, pipe.transformer = pipe.transformer, transformer
    try:
        with torch.no_grad():
            theirs = pipe(PROMPTS, num_inference_steps=6, latents=latents.clone(), output_type="latent", **kw).images
    finally:
        pipe.transformer = original
    ours = text_to_image(sd3_5, PROMPTS, steps=6, latents=latents, return_latents=True, **kw)
    print("slg sd3.5", float((ours - theirs).abs().max()), relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5
    assert relative_error(text_to_image(sd3_5, PROMPTS, steps=6, latents=latents, return_latents=True,
                                        **{**kw, "skip_guidance_layers": [1]}), theirs) > 1e-3
