"""The SD-XL base -> refiner hand-over with LCM sampling (``diffkit sample --refiner R --scheduler lcm``) against
diffusers' pipelines chained as its docs chain them, each with ``LCMScheduler.from_config`` of its folder's config:
``StableDiffusionXLPipeline(denoising_end=f, output_type="latent")`` (its last step renoises to the next time of the
full grid, as every LCMScheduler step but the grid's last), then the refiner's
``StableDiffusionXLImg2ImgPipeline(image=latents, denoising_start=f)``, the same per-sample generators continued. The
tiny random base and refiner of test_refiner_combos (conftest's session-wide ``refiner_combo``)."""
import re

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.interop.sd_xl_refiner import ensemble, refine  # noqa: E402
from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image  # noqa: E402
from diffkit.noise import generators_from_seed, randn  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd_xl import PROMPTS  # noqa: E402


@pytest.fixture(scope="module")
def lcm_pair(refiner_combo):
    """(base, refiner pipelines with LCMScheduler.from_config of their folders' configs, the folders loaded with
    scheduler="lcm", root)."""
    root = refiner_combo["root"]
    pipes = []
    for name in ("base", "refiner"):
        pipe = refiner_combo[name]
        config = diffusers.DDIMScheduler.from_pretrained(root / name / "scheduler").config
        pipes.append(type(pipe)(**{**pipe.components, "scheduler": diffusers.LCMScheduler.from_config(config)},
                                **({"requires_aesthetics_score": True, "force_zeros_for_empty_prompt": False}
                                   if name == "refiner" else {})))  # tiny_refiner's
        pipes[-1].set_progress_bar_config(disable=True)
    loaded = [load_stable_diffusion(root / name, scheduler="lcm", progress=False) for name in ("base", "refiner")]
    return (*pipes, *loaded, root)


@pytest.mark.parametrize("steps, end, scale", [(4, 0.7, 1.0), (5, 0.5, 1.5)])
def test_lcm_hand_over_is_the_two_pipelines_with_the_lcm_scheduler(lcm_pair, steps, end, scale):
    """text_to_image(denoising_end=f) with the consistency sampler = the base pipeline's noisy latents at the cut;
    ensemble() = the base then the refiner pipeline (4 steps at f = 0.7: 999, 759, 499 on the base, 259 on the
    refiner; 5 at 0.5 with CFG s = 1.5), final latents."""
    base, refiner, xl, rx, _ = lcm_pair
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    generators = generators_from_seed(4, 2)
    with torch.no_grad():
        handed = base(PROMPTS, num_inference_steps=steps, guidance_scale=scale, latents=latents.clone(),
                      output_type="latent", denoising_end=end, generator=generators).images
        theirs = refiner(PROMPTS, image=handed, num_inference_steps=steps, guidance_scale=scale, output_type="latent",
                         denoising_start=end, generator=generators).images
    ours = text_to_image(xl, PROMPTS, sampler="consistency", steps=steps, guidance_scale=scale, latents=latents,
                         seed=4, return_latents=True, denoising_end=end)
    assert relative_error(ours, handed) < 1e-5, relative_error(ours, handed)
    both = ensemble(xl, rx, PROMPTS, handover=end, sampler="consistency", steps=steps, guidance_scale=scale,
                    latents=latents, seed=4, return_latents=True)
    assert relative_error(both, theirs) < 1e-5, relative_error(both, theirs)


def test_sample_command_with_a_refiner_and_lcm_is_the_ensemble(lcm_pair, tmp_path, capsys):
    """``diffkit sample --checkpoint BASE --refiner REFINER --scheduler lcm --steps 4 --denoising-end 0.7``: the
    grid of text_to_image(denoising_end) then refine() with both folders on the LCMScheduler (the consistency
    sampler, s = 1 by default, the generators of z_T continued through both halves), byte for byte."""
    from diffkit.images import save_grid
    _, _, xl, rx, root = lcm_pair
    argv = [str(a) for a in ("sample", "--checkpoint", root / "base", "--refiner", root / "refiner", "--prompt",
                             PROMPTS[0], "--num", "1", "--seed", "5",
                             "--denoising-end", "0.7", "--no-progress")]
    assert main(argv + ["--steps", "4", "--scheduler", "lcm", "--out", str(tmp_path / "grid.png")]) == 0
    generators = generators_from_seed(5, 1)  # z_T, then the step noise of both halves
    z = text_to_image(xl, PROMPTS[:1], sampler="consistency", steps=4, latents=randn(xl.latent_shape(1), generators),
                      seed=None, generator=generators, return_latents=True, denoising_end=0.7)
    save_grid(refine(rx, PROMPTS[:1], z, 0.7, sampler="consistency", steps=4, guidance_scale=1.0, generator=generators,
                     output_range="-1,1"), tmp_path / "expected.png", 1)
    capsys.readouterr()
    assert (tmp_path / "grid.png").read_bytes() == (tmp_path / "expected.png").read_bytes()


def test_what_the_lcm_hand_over_refuses_in_one_line(lcm_pair, tmp_path, capsys):
    """--nfe (no NFE budget in diffusers' hand-over), --scheduler tcd (its intermediate times count from the full
    grid's end) and an LCMScheduler base folder: one line each with --refiner, before any output; the library:
    denoising_end with the tcd sampler, and in an edit with a consistency sampler (not compared)."""
    import shutil

    from diffkit.editing import img2img
    from diffkit.errors import DiffkitError
    xl, root = lcm_pair[2], lcm_pair[-1]
    with pytest.raises(DiffkitError, match="is not offered with sampler 'tcd'"):
        text_to_image(xl, PROMPTS, sampler="tcd", steps=4, return_latents=True, denoising_end=0.7)
    for sampler in ("consistency", "tcd"):
        with pytest.raises(DiffkitError, match=f"is not offered in an edit with sampler '{sampler}'"):
            img2img(xl.denoiser, torch.zeros(1, 4, 8, 8), 0.8, sampler, 4, denoising_end=0.5, value_range=None)
    lcm_folder = tmp_path / "lcm_base"  # the base's JSON files only: the check reads no weights
    shutil.copytree(root / "base", lcm_folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    (lcm_folder / "scheduler" / "scheduler_config.json").write_text('{"_class_name": "LCMScheduler"}')
    argv = [str(a) for a in ("sample", "--checkpoint", root / "base", "--refiner", root / "refiner", "--prompt",
                             "a cat", "--no-progress")]
    for extra, match in ((["--steps", "4", "--scheduler", "tcd"], "--scheduler tcd is not offered with --refiner"),
                         (["--nfe", "4", "--scheduler", "lcm"], "--nfe is not offered with --refiner"),
                         (["--checkpoint", str(lcm_folder)], "--refiner is not offered with an LCMScheduler folder")):
        assert main(argv + extra + ["--out", str(tmp_path / "out" / "o.png")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(re.escape(match), err[0]), err
        assert not (tmp_path / "out").exists()
