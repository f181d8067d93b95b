"""Sana folders (diffkit.interop.sana): diffkit's text_to_image against diffusers' own SanaPipeline on a tiny random
folder (tests/_sana_helpers.py; nothing downloaded), and ``diffkit sample`` on it (the library's grid byte for
byte; what does not apply refused in one line)."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.pixart import binned_size  # noqa: E402
from diffkit.interop.sana import COMPLEX_HUMAN_INSTRUCTION, is_sana_folder, load_sana, text_to_image  # noqa: E402

from _sana_helpers import changed_copy, check_sample_command, tiny_sana_pipeline  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402

PROMPTS = ["a photo of a Cat ", "hot dog"]  # upper case and spaces: the pipeline's lower().strip()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """(pipeline, folder, Sana) of one tiny folder, the pipeline loaded back from the folder."""
    path = tmp_path_factory.mktemp("sana") / "sana"
    tiny_sana_pipeline().save_pretrained(path)
    return reloaded(path, diffusers.SanaPipeline, load_sana)


def _both(pipe, sana, steps=3, **call):
    """(diffkit's z_0, the pipeline's) from the same latents: the pipeline without binning, 32 x 32 px."""
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = pipe(PROMPTS, num_inference_steps=steps, latents=noise.clone(), output_type="latent", height=32,
                      width=32, use_resolution_binning=False, **call).images
    ours = text_to_image(sana, PROMPTS, steps=steps, latents=noise, return_latents=True, **call)
    return ours, theirs


def test_sana_matches_the_pipeline(folder):
    """The prompt encoding (states and masks, the selected tokens) and the folder's flow DPMSolverMultistepScheduler
    (dpm-solver++-2m on its sigmas, the transformer at its int64 timesteps): guided (s = 4.5, the default) against a
    negative prompt, and unguided (s = 1)."""
    pipe, path, sana = folder
    assert is_sana_folder(path) and sana.vae_scale_factor == 2 and sana.latent_shape(1) == (1, 4, 16, 16)
    context, mask = sana.encode_prompts(PROMPTS)
    theirs = pipe.encode_prompt(PROMPTS, negative_prompt="ugly", complex_human_instruction=COMPLEX_HUMAN_INSTRUCTION)
    assert context.shape[:2] == mask.shape == (2, 300) and torch.equal(mask, theirs[1])
    assert torch.equal(context, theirs[0]) and torch.equal(sana.encode_negative_prompts(["ugly"] * 2, 300)[1],
                                                           theirs[3])
    ours, theirs = _both(pipe, sana, negative_prompt="ugly blurry")
    assert relative_error(ours, theirs) < 1e-5  # 3.8e-7 measured
    ours, theirs = _both(pipe, sana, guidance_scale=1.0)
    assert relative_error(ours, theirs) < 1e-5  # 2.0e-7 measured


def test_sana_without_the_instruction_and_with_flow_euler(folder):
    """complex_human_instruction=None (the prompts at 300 tokens); the scheduler as a FlowMatchEulerDiscreteScheduler
    (flow Euler, diffkit's ddim on its sigmas, from sigma 1), also with a timestep_scale of 3 (Sana Sprint's kind)."""
    pipe, _, sana = folder
    ours, theirs = _both(pipe, sana, complex_human_instruction=None, negative_prompt="ugly", guidance_scale=3.0)
    assert relative_error(ours, theirs) < 1e-5  # 5.0e-7 measured
    saved, own = pipe.scheduler, (sana.scheduler_config, sana._denoiser, sana.schedule)
    try:
        pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
        sana.scheduler_config = dict(pipe.scheduler.config, _class_name="FlowMatchEulerDiscreteScheduler")
        assert sana.folder_sampler() == ("ddim", {})
        ours, theirs = _both(pipe, sana, steps=4, negative_prompt="ugly")
        assert relative_error(ours, theirs) < 1e-5  # 5.9e-7 measured
        for model in (pipe.transformer, sana.transformer):  # SanaSprint's kind of timestep_scale, on both sides
            model.register_to_config(timestep_scale=3.0)
        ours, theirs = _both(pipe, sana, steps=2, guidance_scale=1.0)
        assert relative_error(ours, theirs) < 1e-5  # 1.4e-7 measured
    finally:
        for model in (pipe.transformer, sana.transformer):
            model.register_to_config(timestep_scale=1.0)
        pipe.scheduler = saved
        sana.scheduler_config, sana._denoiser, sana.schedule = own


def test_resolution_binning_uses_sanas_tables(folder):
    """use_resolution_binning's bins: SanaPipeline's table of the transformer's sample_size (16: the 512 one)."""
    pipe, _, sana = folder
    from diffusers.pipelines.sana.pipeline_sana import ASPECT_RATIO_512_BIN
    assert binned_size(sana, 300, 500) == pipe.image_processor.classify_height_width_bin(300, 500,
                                                                                        ASPECT_RATIO_512_BIN)


def test_sample_command_is_the_library_and_refuses_what_does_not_apply(folder, tmp_path, capsys):
    _, path, sana = folder
    check_sample_command(path, sana, text_to_image, tmp_path, capsys, PROMPTS, (32, 64), [
        (["--guidance-rescale", "0.5", "--guidance-scale", "2"], "--guidance-rescale does not apply to a Sana"),
        (["--flow-shift", "2"], "--flow-shift does not apply to a Sana folder"),
        (["--clip-skip", "1"], "--clip-skip does not apply to a Sana folder"),
        (["--height", "48"], "--height 48 is not allowed; give a positive multiple of 32")])
    capsys.readouterr()
    assert main(["edit", "--checkpoint", str(path), "--images", str(tmp_path), "--prompt", "hot",
                 "--out", str(tmp_path / "never")]) == 2
    assert "is a Sana folder, which diffkit edit does not take" in capsys.readouterr().err


@pytest.mark.parametrize("file,change,expected", [
    ("model_index.json", {"_class_name": "SanaPAGPipeline"}, "'SanaPAGPipeline' folder, which diffkit does not"),
    ("transformer/config.json", {"guidance_embeds": True}, "guidance_embeds=True for in_channels=4; allowed"),
    ("scheduler/scheduler_config.json", {"use_flow_sigmas": False}, "use_flow_sigmas=False; allowed"),
    ("scheduler/scheduler_config.json", {"_class_name": "FlowMatchEulerDiscreteScheduler",
                                         "use_dynamic_shifting": True}, "for which SanaPipeline passes no mu"),
    ("scheduler/scheduler_config.json", {"use_karras_sigmas": True}, "use_karras_sigmas=True, which diffkit's"),
    ("model_index.json", {"vae": ["diffusers", "AutoencoderKL"]}, "vae is a 'AutoencoderKL'; allowed: AutoencoderDC")])
def test_what_sana_does_not_drive_is_refused_in_one_line(folder, tmp_path, file, change, expected):
    with pytest.raises(DiffkitError, match=expected):
        text_to_image(load_sana(changed_copy(folder[1], tmp_path, file, change), progress=False), "hot", steps=2)


@pytest.mark.parametrize("call", [{"pag_scale": 3.0}, {"pag_scale": 2.0, "guidance_scale": 1.0},
                                  {"pag_scale": 2.5, "pag_adaptive_scale": 0.004, "negative_prompt": "ugly"}])
def test_sana_pag_matches_the_pipeline(folder, call):
    """SanaPAGPipeline (layer transformer_blocks.0, its default): CFG s = 4.5 with PAG S = 3 (3 halves), S = 2 alone
    (s = 1: 2 halves), an adaptive scale read at the scheduler's int64 timesteps; diffkit's PAG over its CFG with
    diffusers' linear-attention PAG processors on the perturbed third."""
    pipe, _, sana = folder
    pag = diffusers.SanaPAGPipeline(**pipe.components, pag_applied_layers="transformer_blocks.0")
    pag.set_progress_bar_config(disable=True)
    ours, theirs = _both(pag, sana, **call)
    assert relative_error(ours, theirs) < 1e-5  # 7.4e-7, 5.8e-7, 6.6e-7 measured
    if call == {"pag_scale": 3.0}:
        plain = text_to_image(sana, PROMPTS, steps=3, latents=torch.randn(2, 4, 16, 16, generator=torch.Generator(
            ).manual_seed(1)), return_latents=True)
        assert relative_error(ours, plain) > 1e-3  # PAG changes the sample


def test_sana_pag_refusals(folder):
    _, _, sana = folder
    for options, expected in (({"pag_scale": 2.0, "pag_layers": "blocks.7"}, "pag layer 'blocks.7' matches no "
                               "self-attention layer of this transformer"),
                              ({"pag_layers": "blocks.0"}, "pag_layers='blocks.0' needs pag_scale"),
                              ({"pag_scale": -1.0}, "pag_scale=-1.0 is out of range")):
        with pytest.raises(DiffkitError, match=expected):
            text_to_image(sana, PROMPTS, steps=1, **options)


def test_sample_command_pag_on_a_sana_folder_is_the_library(folder, tmp_path, capsys):
    """`diffkit sample --pag-scale --pag-layers --pag-adaptive-scale` on a Sana folder writes text_to_image's grid
    (pag_scale, ...) byte for byte; --pag-interval: one line (SanaPAGPipeline has none)."""
    from diffkit.images import save_grid
    _, path, sana = folder
    out = tmp_path / "grid.png"
    flags = ["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--num", "2", "--nrow", "1", "--steps",
             "2", "--seed", "5", "--height", "32", "--width", "32", "--pag-scale", "2", "--pag-layers",
             "transformer_blocks.0", "--no-progress"]
    assert main(flags + ["--pag-adaptive-scale", "0.004", "--out", str(out)]) == 0
    images = text_to_image(sana, [PROMPTS[0]] * 2, steps=2, seed=5, height=32, width=32, pag_scale=2.0,
                           pag_layers=["transformer_blocks.0"], pag_adaptive_scale=0.004, output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    capsys.readouterr()
    assert main(flags + ["--pag-interval", "0", "500", "--out", str(tmp_path / "no.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--pag-interval does not apply to a SanaPipeline folder" in err[0]
    assert not (tmp_path / "no.png").exists()
