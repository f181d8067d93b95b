"""FLUX.1 folders (diffkit.interop.flux): diffkit's text_to_image against diffusers' own FluxPipeline on tiny random
pipelines written by save_pretrained (nothing downloaded), with (FLUX.1-dev: dynamic shifting) and without
(FLUX.1-schnell: fixed shift 1) guidance embeds."""
import json
import re

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.flux import (is_flux_folder, load_flux, pack_latents, text_to_image,  # noqa: E402
                                  unpack_latents)

from test_interop_diffusers import relative_error, tiny_sd_components  # noqa: E402
from test_interop_sd3 import T5_WORDS, tiny_t5_tokenizer  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]
SIZE = 16  # images 16 x 16: latents 16 x 8 x 8, 16 packed tokens


def tiny_flux_vae():
    """FLUX.1's kind of AutoencoderKL, tiny: 16 latent channels, its scaling and shift factors, f = 2."""
    return diffusers.AutoencoderKL(block_out_channels=[16, 32], in_channels=3, out_channels=3, latent_channels=16,
                                   down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                                   norm_num_groups=8, sample_size=16, scaling_factor=0.3611, shift_factor=0.1159,
                                   use_quant_conv=False, use_post_quant_conv=False)


def tiny_t5_encoder():
    """A random T5EncoderModel (d_model 32, two layers) on :func:`test_interop_sd3.tiny_t5_tokenizer`'s words."""
    return transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=4 + len(T5_WORDS), d_model=32, d_kv=8, d_ff=40, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, dropout_rate=0.0)).eval()


def tiny_flux_pipeline(root, dev=True):
    """A tiny random FluxPipeline: the CLIPTextModel and CLIP tokenizer of :func:`tiny_sd_components` (hidden 32), a
    T5EncoderModel (d_model 32), a FluxTransformer2DModel (in_channels 64, one double and one single block, guidance
    embeds for ``dev``), a 16-channel AutoencoderKL with FLUX's scaling and shift factors (f = 2), FLUX.1-dev's
    scheduler config (dynamic shifting) or FLUX.1-schnell's (fixed shift 1)."""
    _, _, clip, tokenizer = tiny_sd_components(root)
    torch.manual_seed(1)
    t5 = tiny_t5_encoder()
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=dev, axes_dims_rope=(2, 2, 4))
    vae = tiny_flux_vae()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15) if dev else \
        diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = diffusers.FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=tokenizer,
                                  text_encoder_2=t5, tokenizer_2=tiny_t5_tokenizer(), transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory):
    """{dev: (the folder's FluxPipeline.from_pretrained, folder, load_flux of it)}."""
    out = {}
    for dev in (True, False):
        root = tmp_path_factory.mktemp(f"flux_{dev}")
        tiny_flux_pipeline(root, dev).save_pretrained(root / "flux")
        pipe = diffusers.FluxPipeline.from_pretrained(root / "flux", local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        out[dev] = (pipe, root / "flux", load_flux(root / "flux", progress=False))
    return out


def _latents(batch=2, seed=7):
    return torch.randn(batch, 16, 8, 8, generator=torch.Generator().manual_seed(seed))


def _theirs(pipe, latents, steps=4, output_type="latent", **kw):
    """The pipeline's output from unpacked ``latents`` (its latents unpacked again)."""
    with torch.no_grad():
        out = pipe(PROMPTS, height=SIZE, width=SIZE, num_inference_steps=steps, latents=pack_latents(latents),
                   output_type=output_type, max_sequence_length=kw.pop("max_sequence_length", 12), **kw).images
    return unpack_latents(out, 8, 8) if output_type == "latent" else out


def test_flux_encodes_prompts_and_packs_as_the_pipeline(tiny_flux):
    pipe, folder, flux = tiny_flux[True]
    assert is_flux_folder(folder) and flux.latent_shape(2, SIZE, SIZE) == (2, 16, 8, 8)
    assert flux.latent_shape(1) == (1, 16, 128, 128)  # the pipeline's default 128 f
    context, pooled = flux.encode_prompts(PROMPTS, 12, prompts_2=["hot dog", "the cat"])
    theirs, theirs_pooled, text_ids = pipe.encode_prompt(PROMPTS, ["hot dog", "the cat"], device="cpu",
                                                         max_sequence_length=12)
    assert context.shape == (2, 12, 32) and pooled.shape == (2, 32) and not text_ids.any()
    torch.testing.assert_close(pooled, theirs_pooled, rtol=0, atol=0)
    torch.testing.assert_close(context, theirs, rtol=0, atol=1e-5)  # T5: two loads of the folder may round apart
    z = _latents()
    packed = pipe._pack_latents(z, 2, 16, 8, 8)
    assert torch.equal(pack_latents(z), packed) and torch.equal(unpack_latents(packed, 8, 8), z)
    assert torch.equal(pipe._unpack_latents(packed, SIZE, SIZE, pipe.vae_scale_factor), z)


@pytest.mark.parametrize("dev, kw", [
    (True, {}), (True, {"guidance_scale": 5.0}),
    (True, {"true_cfg_scale": 3.0, "negative_prompt": "ugly blurry"}),
    (True, {"true_cfg_scale": 3.0, "negative_prompt": ["ugly", "blurry"], "negative_prompt_2": ["blurry", "the"],
            "prompt_2": ["hot dog", "the cat"]}),
    (False, {}), (False, {"true_cfg_scale": 2.0, "negative_prompt": ""})])
def test_flux_matches_the_pipeline(tiny_flux, dev, kw):
    """Same z_0 and images as FluxPipeline from the same latents: flow Euler on its sigmas (dev: dynamic shifting,
    mu of 16 tokens; schnell: shift 1), the embedded guidance (default 3.5, or 5) and true CFG (with T5's own
    prompt_2 / negative_prompt_2, one per prompt as the pipeline takes them)."""
    pipe, _, flux = tiny_flux[dev]
    latents = _latents()
    theirs = _theirs(pipe, latents, **kw)
    ours = text_to_image(flux, PROMPTS, steps=4, latents=latents, max_sequence_length=12, height=SIZE, width=SIZE,
                         return_latents=True, **kw)
    assert relative_error(ours, theirs) < 1e-5, (float((ours - theirs).abs().max()), relative_error(ours, theirs))
    images = _theirs(pipe, latents, output_type="pt", **kw)
    ours_images = text_to_image(flux, PROMPTS, steps=4, latents=latents, max_sequence_length=12, **kw)
    assert ours_images.shape == images.shape == (2, 3, SIZE, SIZE)
    assert float((ours_images - images).abs().max()) < 1e-5


def test_the_scheduler_grid_and_other_samplers(tiny_flux):
    """The grid holds the pipeline's shifted sigmas (network times sigma * 1000) at equal SNR; the size's diffkit
    schedule has shift e^mu, so other samplers' grids are shifted as the pipeline's; they run the folder."""
    import numpy as np
    pipe, _, flux = tiny_flux[True]
    for h, w in ((8, 8), (64, 32)):
        grid = flux.scheduler_grid(5, h, w)
        schedule = flux.denoiser_for(h, w).schedule
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        mu = diffusers.pipelines.flux.pipeline_flux.calculate_shift(h * w // 4)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.2, 5), mu=mu)
        alpha, sigma = schedule.alpha(grid[:-1]), schedule.sigma(grid[:-1])
        torch.testing.assert_close(1000 * sigma / (alpha + sigma), scheduler.timesteps.double(), rtol=1e-6, atol=0)
        assert grid[0] == 999 and grid[-1] == -1 and flux.shift(h, w) == pytest.approx(np.exp(mu))
    latents = _latents()
    theirs = _theirs(pipe, latents, steps=28)
    for sampler in ("unipc", "dpm-solver++-2m", "ddim@trailing"):
        ours = text_to_image(flux, PROMPTS, sampler=sampler, steps=12, latents=latents, max_sequence_length=12,
                             return_latents=True)
        error = relative_error(ours, theirs)
        assert torch.isfinite(ours).all() and error < 0.1, (sampler, error)


def test_sample_command_runs_a_flux_folder(tiny_flux, tmp_path, capsys, monkeypatch):
    """`diffkit sample --checkpoint FLUX_FOLDER --prompt ... --guidance-scale G`: the grid of text_to_image's images
    byte for byte (plain ddim = the pipeline's sigmas; unipc its own grid), within one PNG level of the pipeline's
    (the default size made 16 x 16 here: 128 f would be 4096 tokens)."""
    import numpy as np
    from PIL import Image
    from diffkit.cli import main
    from diffkit.images import save_grid
    from diffkit.interop import flux as flux_module
    from diffkit.noise import generators_from_seed, randn
    monkeypatch.setattr(flux_module, "DEFAULT_SAMPLE_SIZE", 8)
    pipe, folder, flux = tiny_flux[True]
    common = ["--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2", "--nrow", "1", "--steps", "3", "--seed",
              "5", "--batch-size", "2", "--guidance-scale", "5", "--no-progress"]
    for sampler in ("ddim", "unipc"):
        out = tmp_path / f"{sampler}.png"
        assert main(["sample", "--checkpoint", str(folder), "--sampler", sampler, "--out", str(out)] + common) == 0
        images = text_to_image(flux, PROMPTS, sampler=None if sampler == "ddim" else sampler, steps=3, seed=5,
                               guidance_scale=5.0, output_range="-1,1")
        save_grid(images, tmp_path / "expected.png", 1)
        assert out.read_bytes() == (tmp_path / "expected.png").read_bytes(), sampler
    theirs = _theirs(pipe, randn(flux.latent_shape(2), generators_from_seed(5, 2)), steps=3, output_type="np",
                     guidance_scale=5.0, max_sequence_length=512)
    save_grid(torch.from_numpy(theirs).permute(0, 3, 1, 2) * 2 - 1, tmp_path / "theirs.png", 1)
    ours, ref = (np.asarray(Image.open(p), dtype=np.float64) for p in (tmp_path / "ddim.png", tmp_path / "theirs.png"))
    assert np.abs(ours - ref).max() <= 1
    capsys.readouterr()


def test_what_flux_does_not_support_is_refused_in_one_line(tiny_flux, tmp_path, capsys):
    """Variants (Fill, Kontext, extra input channels), IP-Adapter, ControlNet, a VAE without shift_factor, inverted
    sigmas, and flags a FLUX folder does not take: one line each, before any output."""
    from diffkit.cli import main
    _, folder, _ = tiny_flux[False]
    bad = {}
    for name, part, change in (("fill", "model_index.json", {"_class_name": "FluxFillPipeline"}),
                               ("kontext", "model_index.json", {"_class_name": "FluxKontextPipeline"}),
                               ("ip", "model_index.json", {"image_encoder": ["transformers", "CLIPVisionModel"]}),
                               ("cn", "model_index.json", {"controlnet": ["diffusers", "FluxControlNetModel"]}),
                               ("channels", "transformer/config.json", {"in_channels": 384}),
                               ("shift", "vae/config.json", {"shift_factor": None}),
                               ("invert", "scheduler/scheduler_config.json", {"invert_sigmas": True})):
        bad[name] = tmp_path / name
        for sub in ("model_index.json", "vae/config.json", "scheduler/scheduler_config.json",
                    "transformer/config.json"):
            (bad[name] / sub).parent.mkdir(parents=True, exist_ok=True)
            config = json.loads((folder / sub).read_text())
            (bad[name] / sub).write_text(json.dumps({**config, **(change if sub == part else {})}))
        for sub in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"):
            (bad[name] / sub).symlink_to(folder / sub)
    base = ["sample", "--prompt", "a cat", "--steps", "2", "--out", str(tmp_path / "out" / "o.png"), "--no-progress"]
    for extra, match in (
            (["--checkpoint", str(folder), "--freeu", "1.1,1.2,0.9,0.2"], "--freeu does not apply to a FLUX folder"),
            (["--checkpoint", str(folder), "--negative-prompt", "ugly"], "--negative-prompt .ugly. is not allowed on"),
            (["--checkpoint", str(folder), "--guidance-scale", "3"], "guidance_scale=3.0 is not allowed: this FLUX"),
            (["--checkpoint", str(bad["fill"])], "FLUX.1 Fill folder .* it only inpaints"),  # test_flux_fill
            (["--checkpoint", str(bad["kontext"])], "is a FLUX.1 Kontext folder .* use diffkit edit"),  # (it edits)
            (["--checkpoint", str(bad["ip"])], "image_encoder='CLIPVisionModel' \\(an IP-Adapter"),
            (["--checkpoint", str(bad["cn"])], "controlnet='FluxControlNetModel' \\(a ControlNet"),
            (["--checkpoint", str(bad["channels"])], "in_channels=384 .* allowed: 64"),
            (["--checkpoint", str(bad["shift"])], "vae has shift_factor=None; allowed: a number"),
            (["--checkpoint", str(bad["invert"])], "invert_sigmas=True, .* allowed: invert_sigmas=false")):
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), err
        assert not (tmp_path / "out").exists()
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    with pytest.raises(DiffkitError, match="is a FLUX.1 folder .* load it with diffkit.interop.load_flux"):
        load_stable_diffusion(folder, progress=False)


def test_bad_arguments_are_one_line_errors(tiny_flux):
    _, _, dev = tiny_flux[True]
    _, _, schnell = tiny_flux[False]
    for flux, kw, match in (
            (dev, {"height": 18}, "height x width 18x16 is not allowed; give positive multiples of 4"),
            (dev, {"max_sequence_length": 600}, "max_sequence_length=600 is not allowed; allowed: 1..512"),
            (dev, {"true_cfg_scale": 3.0}, "true_cfg_scale=3.0 with negative_prompt=None is not allowed"),
            (dev, {"negative_prompt": "ugly"}, "true_cfg_scale=1.0 with negative_prompt='ugly' is not allowed"),
            (schnell, {"guidance_scale": 3.5}, "guidance_scale=3.5 is not allowed: this FLUX transformer has no"),
            (dev, {"latents": torch.zeros(2, 4, 8, 8)}, "latents of shape \\(2, 4, 8, 8\\) are not allowed"),
            (dev, {"grid": "scheduler", "nfe": 4}, "grid='scheduler' takes steps")):
        with pytest.raises(DiffkitError, match=match):
            text_to_image(flux, PROMPTS, steps=2, **{"height": SIZE, "width": SIZE, **kw})
