"""SD-XL refiner folders and the base -> refiner hand-over (diffkit.interop.sd_xl_refiner, diffkit.handover)
against diffusers' StableDiffusionXLImg2ImgPipeline (requires_aesthetics_score) and StableDiffusionXLPipeline
(denoising_end) on tiny random pipelines written by save_pretrained (nothing downloaded)."""
import json
import re
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd_xl import PROMPTS, tiny_sd_xl_pipeline, tiny_sd_xl_unet  # noqa: E402


def tiny_refiner(base):
    """A tiny random refiner (StableDiffusionXLImg2ImgPipeline, requires_aesthetics_score): the base's VAE,
    text_encoder_2, tokenizer_2 and scheduler, no text_encoder / tokenizer, a UNet of cross_attention_dim 24
    (encoder 2 alone) and an added embedding of 5 * 8 + 20 inputs (time ids with the aesthetic score)."""
    torch.manual_seed(2)
    unet = tiny_sd_xl_unet(cross_attention_dim=24, added_inputs=60)
    pipe = diffusers.StableDiffusionXLImg2ImgPipeline(
        vae=base.vae, text_encoder=None, text_encoder_2=base.text_encoder_2, tokenizer=None,
        tokenizer_2=base.tokenizer_2, unet=unet, scheduler=base.scheduler, requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """(base pipeline, refiner pipeline, root, loaded base, loaded refiner)."""
    root = tmp_path_factory.mktemp("tiny_refiner")
    base = tiny_sd_xl_pipeline(root)
    refiner = tiny_refiner(base)
    base.save_pretrained(root / "base")
    refiner.save_pretrained(root / "refiner")
    return (base, refiner, root, load_stable_diffusion(root / "base", progress=False),
            load_stable_diffusion(root / "refiner", progress=False))


def _ddim(pipe, **kw):
    return diffusers.DDIMScheduler.from_config(pipe.scheduler.config, **kw)


def _gens(seeds=(10, 11)):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_refiner_folder_loads_and_encodes_as_the_pipeline(tiny_pair):
    """text_encoder_2 alone: its penultimate states and pooled output, bit-identical to the pipeline's
    encode_prompt; time ids original_size + crops + (aesthetic score,), 6 and 2.5 by default."""
    _, refiner, _, _, xl = tiny_pair
    assert xl.is_refiner and xl.requires_aesthetics_score and xl.text_encoder is None and xl.tokenizer is None
    assert not xl.force_zeros_for_empty_prompt
    context, pooled = xl.encode_prompts_xl(PROMPTS)
    theirs, theirs_null, theirs_pooled, theirs_null_pooled = refiner.encode_prompt(PROMPTS, device="cpu")
    assert context.shape == (2, 16, 24) and pooled.shape == (2, 20)
    torch.testing.assert_close(context, theirs, rtol=0, atol=0)
    torch.testing.assert_close(pooled, theirs_pooled, rtol=0, atol=0)
    guided, cond = xl.prompt_guidance(PROMPTS, None, 5.0, "diffusers", 0.0, image_size=(16, 24))
    torch.testing.assert_close(guided.null_context.expand_as(theirs_null), theirs_null, rtol=0, atol=1e-6)  # 1 row vs 2
    assert cond["time_ids"].tolist() == [[16, 24, 0, 0, 6.0]] * 2
    assert guided.null_cond["time_ids"].tolist() == [[16, 24, 0, 0, 2.5]]
    ids, null_ids = refiner._get_add_time_ids((16, 24), (0, 0), (16, 24), 6.0, 2.5, (16, 24), (0, 0), (16, 24),
                                              torch.float32, 20)
    assert ids.tolist() == cond["time_ids"][:1].tolist() and null_ids.tolist() == guided.null_cond["time_ids"].tolist()
    micro = dict(aesthetic_score=7.5, negative_aesthetic_score=1.0, original_size=(32, 32),
                 crops_coords_top_left=(2, 3), negative_original_size=(8, 8))
    guided, cond = xl.prompt_guidance(PROMPTS, None, 5.0, "diffusers", 0.0, image_size=(16, 24),
                                      micro_conditioning=micro)
    assert cond["time_ids"][0].tolist() == [32, 32, 2, 3, 7.5]
    assert guided.null_cond["time_ids"][0].tolist() == [8, 8, 0, 0, 1.0]  # the negative crop's default (0, 0)


def test_refiner_img2img_is_the_img2img_pipeline(tiny_pair):
    """latent_img2img with the refiner's prompt_guidance is StableDiffusionXLImg2ImgPipeline of the refiner
    (aesthetic scores, DDIM, the same generators; strength 0.5 of 4 steps), also with other aesthetic scores."""
    from diffkit.latent_editing import latent_img2img
    _, refiner, _, _, xl = tiny_pair
    refiner.scheduler = _ddim(refiner)
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    for scores in ({}, {"aesthetic_score": 8.0, "negative_aesthetic_score": 1.0}):
        with torch.no_grad():
            theirs = refiner(PROMPTS, image=image, strength=0.5, num_inference_steps=4, guidance_scale=5.0,
                             output_type="latent", generator=_gens(), **scores).images
        guided, cond = xl.prompt_guidance(PROMPTS, None, 5.0, "diffusers", 0.0, image_size=(16, 16),
                                          micro_conditioning=scores)
        ours = latent_img2img(guided, xl, image * 2 - 1, 0.5, "ddim", 4, posterior="sample", seed=10, cond=cond,
                              progress=False, return_latents=True, spacing="leading", final="sigma_min",
                              steps_offset=1, eta=0.0)
        print("refiner img2img", scores, relative_error(ours, theirs), (ours - theirs).abs().max().item())
        assert relative_error(ours, theirs) < 1e-5


def _base_latents(xl, batch=2, seed=7):
    return torch.randn(xl.latent_shape(batch), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("end", [0.6, 0.8])
def test_denoising_end_is_the_base_pipelines(tiny_pair, end):
    """text_to_image(denoising_end=f, return_latents=True) is StableDiffusionXLPipeline(denoising_end=f,
    output_type="latent") on DDIM's 5 timesteps (801, 601, 401, 201, 1): the steps t >= int(round(1000 - 1000 f)),
    then the state at the next timestep."""
    base, _, _, xl, _ = tiny_pair
    base.scheduler = _ddim(base)
    latents = _base_latents(xl)
    with torch.no_grad():
        theirs = base(PROMPTS, num_inference_steps=5, guidance_scale=5.0, latents=latents.clone(),
                      output_type="latent", denoising_end=end).images
    ours = text_to_image(xl, PROMPTS, steps=5, grid="scheduler", guidance_scale=5.0, latents=latents,
                         return_latents=True, denoising_end=end)
    full = text_to_image(xl, PROMPTS, steps=5, grid="scheduler", guidance_scale=5.0, latents=latents,
                         return_latents=True)
    print("denoising_end", end, relative_error(ours, theirs), (ours - theirs).abs().max().item())
    assert relative_error(ours, theirs) < 1e-5 and relative_error(full, theirs) > 1e-4


def test_the_hand_over_is_the_pipelines(tiny_pair):
    """base(denoising_end=0.7, output_type="latent") -> refiner(image=latents, denoising_start=0.7): diffkit's
    refine() of the pipeline's own base latents equals the refiner pipeline's output, and ensemble() equals the
    two pipelines in a row (DDIM, 5 steps: 801, 601, 401 on the base, 201, 1 on the refiner)."""
    from diffkit.interop.sd_xl_refiner import ensemble, refine
    base, refiner, _, xl, rx = tiny_pair
    base.scheduler, refiner.scheduler = _ddim(base), _ddim(refiner)
    latents = _base_latents(xl)
    with torch.no_grad():
        handed = base(PROMPTS, num_inference_steps=5, guidance_scale=5.0, latents=latents.clone(),
                      output_type="latent", denoising_end=0.7).images
        theirs = refiner(PROMPTS, image=handed, num_inference_steps=5, guidance_scale=5.0, output_type="latent",
                         denoising_start=0.7, strength=0.3).images
    grid = dict(spacing="leading", final="sigma_min", steps_offset=1)
    ours = refine(rx, PROMPTS, handed, 0.7, sampler="ddim", steps=5, guidance_scale=5.0, return_latents=True,
                  **grid)
    print("refine", relative_error(ours, theirs), (ours - theirs).abs().max().item())
    assert relative_error(ours, theirs) < 1e-5
    both = ensemble(xl, rx, PROMPTS, handover=0.7, sampler="ddim", steps=5, guidance_scale=5.0, latents=latents,
                    return_latents=True, **grid)
    print("ensemble", relative_error(both, theirs), (both - theirs).abs().max().item())
    assert relative_error(both, theirs) < 1e-5
    with torch.no_grad():
        images = refiner(PROMPTS, image=handed, num_inference_steps=5, guidance_scale=5.0, output_type="pt",
                         denoising_start=0.7).images
    ours = ensemble(xl, rx, PROMPTS, handover=0.7, sampler="ddim", steps=5, guidance_scale=5.0, latents=latents,
                    **grid)
    print("ensemble images", (ours - images).abs().max().item())
    torch.testing.assert_close(ours, images, rtol=0, atol=1e-5)


def test_the_hand_over_with_euler_is_the_pipelines(tiny_pair):
    """EulerDiscreteScheduler (leading, steps_offset 1) in both pipelines, 5 steps, f = 0.7: diffusers' Euler
    holds z_t / alpha_t = z_t sqrt(1 + sigma_t^2), diffkit's state z_t, so the base's hand-over latents agree
    after that factor, and the refiner's final latents (sigma = 0) directly."""
    from diffkit.interop.sd_xl_refiner import ensemble
    base, refiner, _, xl, rx = tiny_pair
    base.scheduler = diffusers.EulerDiscreteScheduler.from_config(base.scheduler.config, timestep_spacing="leading")
    refiner.scheduler = diffusers.EulerDiscreteScheduler.from_config(refiner.scheduler.config,
                                                                     timestep_spacing="leading")
    latents = _base_latents(xl)
    with torch.no_grad():
        handed = base(PROMPTS, num_inference_steps=5, guidance_scale=5.0, latents=latents.clone(),
                      output_type="latent", denoising_end=0.7).images
        theirs = refiner(PROMPTS, image=handed, num_inference_steps=5, guidance_scale=5.0, output_type="latent",
                         denoising_start=0.7).images
    grid = dict(spacing="leading", final="zero", steps_offset=1)
    ours = text_to_image(xl, PROMPTS, sampler="euler", steps=5, guidance_scale=5.0, latents=latents,
                         return_latents=True, denoising_end=0.7, **grid)
    sigma = base.scheduler.sigmas[3].item()  # the state after 3 of the 5 steps (801, 601, 401 >= 300)
    print("euler hand-over", relative_error(ours * (1 + sigma ** 2) ** 0.5, handed))
    assert relative_error(ours * (1 + sigma ** 2) ** 0.5, handed) < 1e-5
    both = ensemble(xl, rx, PROMPTS, handover=0.7, sampler="euler", steps=5, guidance_scale=5.0, latents=latents,
                    return_latents=True, **grid)
    print("euler ensemble", relative_error(both, theirs), (both - theirs).abs().max().item())
    assert relative_error(both, theirs) < 1e-5


def test_sample_command_with_refiner_is_the_ensemble(tiny_pair, tmp_path, capsys):
    """``diffkit sample --checkpoint BASE --refiner REFINER --denoising-end 0.6 --aesthetic-score 7``: the grid
    of ensemble()'s images byte for byte (z_T from seed + i, default s = 5, the refiner's VAE decodes); the
    default batch size (auto: a one-step probe) works too."""
    from diffkit.cli import main
    from diffkit.images import save_grid
    from diffkit.interop.sd_xl_refiner import ensemble
    from diffkit.noise import generators_from_seed, randn
    _, _, root, xl, rx = tiny_pair
    base = ["sample", "--checkpoint", str(root / "base"), "--refiner", str(root / "refiner"), "--prompt", PROMPTS[0],
            "--prompt", PROMPTS[1], "--negative-prompt", "ugly", "--num", "2", "--nrow", "1", "--steps", "5",
            "--seed", "5", "--denoising-end", "0.6", "--aesthetic-score", "7", "--no-progress"]
    assert main(base + ["--batch-size", "2", "--out", str(tmp_path / "grid.png")]) == 0
    assert "refiner" in capsys.readouterr().out
    latents = randn(xl.latent_shape(2), generators_from_seed(5, 2))
    images = ensemble(xl, rx, PROMPTS, handover=0.6, steps=5, negative_prompt="ugly", latents=latents,
                      refiner_conditioning={"aesthetic_score": 7.0}, output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 1)
    assert (tmp_path / "grid.png").read_bytes() == (tmp_path / "expected.png").read_bytes()
    # --height / --width: both halves at that size (the base's size conditions, the refiner given its latents)
    assert main(base + ["--batch-size", "2", "--height", "24", "--width", "16", "--out", str(tmp_path / "s.png")]) == 0
    latents = randn(xl.latent_shape(2, 24, 16), generators_from_seed(5, 2))
    images = ensemble(xl, rx, PROMPTS, handover=0.6, steps=5, negative_prompt="ugly", latents=latents,
                      refiner_conditioning={"aesthetic_score": 7.0}, output_range="-1,1")
    assert images.shape[2:] == (24, 16)
    save_grid(images, tmp_path / "expected_s.png", 1)
    assert (tmp_path / "s.png").read_bytes() == (tmp_path / "expected_s.png").read_bytes()


def test_sample_command_with_refiner_and_auto_batch_size(tiny_pair, tmp_path):
    """--batch-size auto (the default) probes one ddim step, which --refiner alone would refuse (no step for one
    half): the probe runs the base's step alone."""
    from diffkit.cli import main
    root = tiny_pair[2]
    auto = ["sample", "--checkpoint", str(root / "base"), "--refiner", str(root / "refiner"), "--prompt", "hot",
            "--num", "1", "--steps", "2", "--denoising-end", "0.6", "--no-progress"]
    assert main(auto + ["--out", str(tmp_path / "auto.png")]) == 0


def test_edit_command_with_a_refiner_is_the_img2img_pipeline(tiny_pair, tmp_path, capsys):
    """``diffkit edit --checkpoint REFINER --images --prompt --denoising-start 0.5 --aesthetic-score 8``: the
    refiner pipeline's images with image=PNGs, denoising_start=0.5 (the posterior sample from the image's
    generator, not noised; DDIM with steps_offset 0 and set_alpha_to_one), to the PNGs' 1/255."""
    import numpy as np
    from PIL import Image
    from test_latent_editing import cli, write_pngs
    _, refiner, root, _, _ = tiny_pair
    pngs = write_pngs(tmp_path / "in", 2, 16, "RGB")
    code, out, err = cli(capsys, "--checkpoint", root / "refiner", "--images", pngs, "--prompt", PROMPTS[0],
                         "--prompt", PROMPTS[1], "--denoising-start", 0.5, "--aesthetic-score", 8,
                         "--negative-aesthetic-score", 1, "--steps", 4, "--spacing", "leading", "--final", "zero",
                         "--seed", 10, "--batch-size", 2, "--out", tmp_path / "out")
    assert code == 0, err
    image = torch.stack([torch.from_numpy(np.array(Image.open(pngs / f"in_{i}.png"))).permute(2, 0, 1)
                         for i in range(2)]).float() / 255
    refiner.scheduler = _ddim(refiner, steps_offset=0, set_alpha_to_one=True)
    with torch.no_grad():
        theirs = refiner(PROMPTS, image=image, denoising_start=0.5, num_inference_steps=4, guidance_scale=5.0,
                         aesthetic_score=8.0, negative_aesthetic_score=1.0, output_type="np",
                         generator=_gens()).images
    ours = np.stack([np.asarray(Image.open(tmp_path / "out" / f"edit_{i:05d}.png")) for i in range(2)])
    assert np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1


def test_what_the_hand_over_refuses_in_one_line(tiny_pair, tmp_path, capsys):
    """Fractions outside (0, 1) or of no step, a refiner from noise, noisy latents as images, aesthetic scores on
    a base, a target size on a refiner, LoRA on a refiner, start >= end, an adaptive sampler; the commands' flags
    without --refiner / on the wrong folders: one line each, before any output."""
    from diffkit.editing import img2img
    from diffkit.interop.sd_xl import load_sd_xl
    from diffkit.interop.sd_xl_refiner import refine
    _, _, root, xl, rx = tiny_pair
    run = dict(steps=5, grid="scheduler", latents=_base_latents(xl), return_latents=True)
    for bad in (0, 1, 1.5, -0.2, float("nan"), True, "0.8"):
        with pytest.raises(DiffkitError, match=r"denoising_end=.* is not allowed; give a fraction .* strictly between"):
            text_to_image(xl, PROMPTS, denoising_end=bad, **run)
    with pytest.raises(DiffkitError, match=r"denoising_end=0.1 runs no step: its cut .* = 900 is above"):
        text_to_image(xl, PROMPTS, denoising_end=0.1, **run)
    with pytest.raises(DiffkitError, match="stops at noisy latents, which are not images: pass return_latents"):
        text_to_image(xl, PROMPTS, denoising_end=0.8, steps=5)
    with pytest.raises(DiffkitError, match="picks its own steps"):
        text_to_image(xl, PROMPTS, sampler="ode", denoising_end=0.8, return_latents=True)
    with pytest.raises(DiffkitError, match="refiner folder .* edits latents or images"):
        text_to_image(rx, PROMPTS, steps=2)
    latents = _base_latents(xl)
    with pytest.raises(DiffkitError, match=r"denoising_start=0.9999 runs no step: no grid time is below its cut"):
        refine(rx, PROMPTS, latents, 0.9999, steps=5)
    with pytest.raises(DiffkitError, match=r"denoising_start=1.2 is not allowed"):
        refine(rx, PROMPTS, latents, 1.2, steps=5)
    with pytest.raises(DiffkitError, match=r"latents of shape \(1, 4, 8, 8\) are not allowed; expected \(2, 4"):
        refine(rx, PROMPTS, latents[:1], 0.8, steps=5)
    with pytest.raises(DiffkitError, match="denoising_start=0.8 is not allowed with denoising_end=0.5"):
        img2img(xl.denoiser, latents, steps=5, denoising_start=0.8, denoising_end=0.5, value_range=None,
                cond={"context": None})
    with pytest.raises(DiffkitError, match="aesthetic_score=7 is not allowed: aesthetic scores condition a refiner"):
        xl.prompt_guidance(PROMPTS, None, 5.0, "diffusers", 0.0, (16, 16), {"aesthetic_score": 7})
    with pytest.raises(DiffkitError, match=r"target_size=\(8, 8\) is not allowed: this refiner's UNet"):
        rx.prompt_guidance(PROMPTS, None, 5.0, "diffusers", 0.0, (16, 16), {"target_size": (8, 8)})
    with pytest.raises(DiffkitError, match="aesthetic score inf is not allowed; give a finite number"):
        rx.prompt_guidance(PROMPTS, None, 5.0, "diffusers", 0.0, (16, 16), {"aesthetic_score": float("inf")})
    with pytest.raises(DiffkitError, match="refiner-style folder .* --lora / --textual-inversion are offered for"):
        load_sd_xl(root / "refiner", progress=False, lora=[str(tmp_path / "x.safetensors")])


def test_what_the_refiner_flags_refuse_in_one_line(tiny_pair, tmp_path, capsys):
    """diffkit sample's --refiner / --denoising-end / --aesthetic-score and diffkit edit's --denoising-start /
    --aesthetic-score where they do not apply: one line each (exit 2), before any output."""
    from diffkit.cli import main
    from test_latent_editing import write_pngs
    root = tiny_pair[2]
    if not (root / "nobase").exists():  # a folder without text_encoder whose index does not ask for aesthetic scores
        shutil.copytree(root / "refiner", root / "nobase")
        index = json.loads((root / "nobase" / "model_index.json").read_text())
        (root / "nobase" / "model_index.json").write_text(json.dumps({**index, "requires_aesthetics_score": False}))
    sample = ["sample", "--prompt", "hot", "--steps", "5", "--no-progress"]
    edit = ["edit", "--images", str(write_pngs(tmp_path / "pngs", 1, 16, "RGB")), "--prompt", "hot", "--no-progress"]
    for argv, match in (
            (sample + ["--checkpoint", str(root / "base"), "--denoising-end", "0.8"], "--denoising-end needs --ref"),
            (sample + ["--checkpoint", str(root / "base"), "--aesthetic-score", "5"], "--aesthetic-score needs --"),
            (sample + ["--checkpoint", str(root / "refiner"), "--refiner", str(root / "refiner")],
             "is an SD-XL refiner folder .* edits latents or images: use diffkit edit, or give it as --refiner"),
            (sample + ["--checkpoint", str(root / "base"), "--refiner", str(tmp_path)], "applies to SD-XL folders"),
            (sample + ["--checkpoint", str(root / "base"), "--refiner", str(root / "refiner"), "--denoising-end",
                       "1"], "--denoising-end=1.0 is not allowed"),
            (sample + ["--checkpoint", str(root / "base"), "--refiner", str(root / "base"), "--aesthetic-score",
                       "5"], "--aesthetic-score applies to a refiner whose model_index.json"),
            (sample + ["--checkpoint", str(root / "base"), "--refiner", str(root / "refiner"), "--denoising-end",
                       "0.9999"], "leaves the refiner no step of the 5-step grid"),
            (sample[:3] + ["--checkpoint", str(root / "base"), "--refiner", str(root / "refiner"), "--nfe", "5"],
             "--nfe is not offered with --refiner"),
            (sample + ["--checkpoint", str(root / "refiner")], "refiner folder .* edits latents or images"),
            (sample + ["--checkpoint", str(root / "nobase"), "--refiner", str(root / "refiner")],
             "nobase is an SD-XL refiner-style folder; give the base folder"),
            (edit + ["--checkpoint", str(root / "base"), "--aesthetic-score", "5"],
             "--aesthetic-score applies to an SD-XL refiner folder"),
            (edit + ["--checkpoint", str(root / "refiner"), "--denoising-start", "0.5", "--strength", "0.3"],
             "--denoising-start does not go with --strength"),
            (edit + ["--checkpoint", str(root / "refiner"), "--denoising-start", "0"],
             "--denoising-start=0.0 is not allowed"),
            (edit + ["--checkpoint", str(root / "refiner"), "--controlnet", str(root / "base")],
             "--controlnet is not offered with an SD-XL refiner folder")):
        assert main(argv + ["--out", str(tmp_path / "out" / "o.png")]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), (argv, err)
        assert not (tmp_path / "out").exists()


def test_refiner_clip_skip_is_the_pipelines_and_prompt_2_is_refused(tiny_pair):
    """clip_skip on a refiner counts text_encoder_2's layers (the pipeline's hidden_states[-(N + 2)]); prompt_2 /
    negative_prompt_2 are refused in one line (the pipeline gives its one encoder the prompts and drops them)."""
    _, refiner, _, _, xl = tiny_pair
    context, pooled = xl.encode_prompts_xl(PROMPTS, clip_skip=1)
    theirs, _, theirs_pooled, _ = refiner.encode_prompt(PROMPTS, device="cpu", clip_skip=1)
    torch.testing.assert_close(context, theirs, rtol=0, atol=0)
    torch.testing.assert_close(pooled, theirs_pooled, rtol=0, atol=0)
    assert not torch.equal(context, xl.encode_prompts_xl(PROMPTS)[0])
    for keyword in ("prompt_2", "negative_prompt_2"):
        with pytest.raises(DiffkitError, match=f"{keyword}='x' is not allowed: .* has one text encoder"):
            xl.prompt_guidance(PROMPTS, "neg", 5.0, "diffusers", 0.0, image_size=(16, 24), **{keyword: "x"})


def test_size_flags_with_a_refiner_are_the_pipelines(tiny_pair, tmp_path, capsys):
    """``diffkit sample --refiner --original-size --crops-coords-top-left --target-size``: the base takes all three,
    the refiner (requires_aesthetics_score: no target size) the first two, as one passes them to both pipelines of
    the hand-over; ensemble() with them is StableDiffusionXLPipeline(denoising_end) then the refiner's
    StableDiffusionXLImg2ImgPipeline(denoising_start) (1e-5 relative), the command's grid byte for byte
    ensemble()'s."""
    from diffkit.cli import main
    from diffkit.images import save_grid
    from diffkit.interop.sd_xl_refiner import ensemble
    from diffkit.noise import generators_from_seed, randn
    base, refiner, root, xl, rx = tiny_pair
    base.scheduler, refiner.scheduler = (diffusers.DDIMScheduler.from_pretrained(root / name / "scheduler")
                                         for name in ("base", "refiner"))  # the folders' (not an earlier test's)
    sizes = dict(original_size=(32, 24), crops_coords_top_left=(2, 3))
    latents = _base_latents(xl)
    with torch.no_grad():
        handed = base(PROMPTS, num_inference_steps=5, guidance_scale=5.0, latents=latents.clone(),
                      output_type="latent", denoising_end=0.7, target_size=(8, 12), **sizes).images
        theirs = refiner(PROMPTS, image=handed, num_inference_steps=5, guidance_scale=5.0, output_type="latent",
                         denoising_start=0.7, **sizes).images
    grid = dict(spacing="leading", final="sigma_min", steps_offset=1)
    both = ensemble(xl, rx, PROMPTS, handover=0.7, sampler="ddim", steps=5, guidance_scale=5.0, latents=latents,
                    return_latents=True, micro_conditioning={**sizes, "target_size": (8, 12)},
                    refiner_conditioning=sizes, **grid)
    plain = ensemble(xl, rx, PROMPTS, handover=0.7, sampler="ddim", steps=5, guidance_scale=5.0, latents=latents,
                     return_latents=True, micro_conditioning={**sizes, "target_size": (8, 12)}, **grid)
    print("hand-over sizes", relative_error(both, theirs), relative_error(plain, theirs))
    assert relative_error(both, theirs) < 1e-5 and relative_error(plain, theirs) > 1e-3
    argv = ["sample", "--checkpoint", str(root / "base"), "--refiner", str(root / "refiner"), "--prompt", PROMPTS[0],
            "--prompt", PROMPTS[1], "--num", "2", "--nrow", "1", "--steps", "5", "--seed", "5", "--denoising-end",
            "0.6", "--original-size", "32,24", "--crops-coords-top-left", "2,3", "--target-size", "8,12",
            "--batch-size", "2", "--no-progress", "--out", str(tmp_path / "grid.png")]
    assert main(argv) == 0
    z = randn(xl.latent_shape(2), generators_from_seed(5, 2))
    images = ensemble(xl, rx, PROMPTS, handover=0.6, steps=5, latents=z, output_range="-1,1",
                      micro_conditioning={**sizes, "target_size": (8, 12)}, refiner_conditioning=sizes)
    save_grid(images, tmp_path / "expected.png", 1)
    assert (tmp_path / "grid.png").read_bytes() == (tmp_path / "expected.png").read_bytes()


def test_size_flags_on_a_refiner_folder_are_its_pipelines(tiny_pair, tmp_path, capsys):
    """``diffkit edit`` on a refiner (requires_aesthetics_score): --target-size refused in one line (its UNet takes
    aesthetic scores instead), --original-size with --negative-original-size and --negative-crops-coords-top-left
    (the null half's crop, which this pipeline takes) its StableDiffusionXLImg2ImgPipeline's image (to 1/255)."""
    import numpy as np
    from PIL import Image
    from test_latent_editing import cli, write_pngs
    _, refiner, root, _, _ = tiny_pair
    pngs = write_pngs(tmp_path / "in", 1, 16, "RGB")
    edit = ("--checkpoint", root / "refiner", "--images", pngs, "--prompt", "hot", "--denoising-start", 0.5,
            "--steps", 4, "--spacing", "leading", "--final", "zero", "--seed", 10)
    code, _, err = cli(capsys, *edit, "--target-size", "8,8", "--out", tmp_path / "never")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--target-size does not apply to an SD-XL refiner folder" in err and "--aesthetic-score" in err
    assert not (tmp_path / "never").exists()
    run = dict(original_size=(32, 24), negative_original_size=(8, 8), negative_crops_coords_top_left=(1, 2))
    code, _, err = cli(capsys, *edit, "--original-size", "32,24", "--negative-original-size", "8,8",
                       "--negative-crops-coords-top-left", "1,2", "--out", tmp_path / "out")
    assert code == 0, err
    image = torch.from_numpy(np.array(Image.open(pngs / "in_0.png"))).permute(2, 0, 1)[None].float() / 255
    refiner.scheduler = _ddim(refiner, steps_offset=0, set_alpha_to_one=True)
    with torch.no_grad():
        theirs = refiner(["hot"], image=image, denoising_start=0.5, num_inference_steps=4, guidance_scale=5.0,
                         output_type="np", generator=_gens((10,)), **run).images
    ours = np.asarray(Image.open(tmp_path / "out" / "edit_00000.png")).astype(int)
    assert np.abs(ours - np.round(theirs[0] * 255).astype(int)).max() <= 1
