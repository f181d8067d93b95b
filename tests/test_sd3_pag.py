"""Perturbed-attention guidance on SD3 folders (diffkit.interop.sd3_pag): against diffusers'
StableDiffusion3PAGPipeline and StableDiffusion3PAGImg2ImgPipeline built from the components of the tiny folder of
test_interop_sd3 (its fixture, imported), and the commands' --pag-scale on it."""
import re

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.sd3 import image_to_image, text_to_image  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
import test_interop_sd3  # noqa: E402

PROMPTS = test_interop_sd3.PROMPTS
tiny_sd3 = test_interop_sd3.tiny_sd3  # the folder fixture, shared (pytest finds it in this module's namespace)
COMMON = {"negative_prompt": "ugly", "max_sequence_length": 12}


def _pag_pipeline(pipe, cls, layers="blocks.1"):
    """``cls`` (a PAG pipeline) of ``pipe``'s components (those it takes), PAG at ``layers``."""
    parts = {k: v for k, v in pipe.components.items() if k not in ("image_encoder", "feature_extractor")}
    out = cls(**parts, pag_applied_layers=layers)
    out.set_progress_bar_config(disable=True)
    return out


def _images(seed=3):
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))  # [0, 1]


@pytest.mark.parametrize("layers, scale, adaptive", [
    (None, 4.0, 0.0),  # the pipelines' default blocks.1: the last block (context_pre_only), CFG + PAG, 3 halves
    (["blocks.0"], 1.0, 0.0),  # guidance off (s = 1): PAG alone, 2 halves
    ([r"blocks\.(0|1)"], 4.0, 0.002)])  # both blocks, the adaptive scale at the pipeline's timestep sigma * 1000
def test_sd3_pag_matches_the_pipeline(tiny_sd3, layers, scale, adaptive):
    """Same z_0 as StableDiffusion3PAGPipeline (pag_scale 3, FlowMatchEuler on the scheduler's 4 sigmas): the
    perturbed third / half through diffusers' PAG joint processors, u_u + s (u_c - u_u) + S_t (u_c - u-hat_c)."""
    pipe, _, sd3 = tiny_sd3[True]
    latents = test_interop_sd3._latents()
    pag = _pag_pipeline(pipe, diffusers.StableDiffusion3PAGPipeline, "blocks.1" if layers is None else layers)
    with torch.no_grad():
        theirs = pag(PROMPTS, num_inference_steps=4, guidance_scale=scale, latents=latents.clone(),
                     output_type="latent", pag_scale=3.0, pag_adaptive_scale=adaptive, **COMMON).images
    options = {"steps": 4, "guidance_scale": scale, "latents": latents, "return_latents": True, **COMMON}
    ours = text_to_image(sd3, PROMPTS, pag_scale=3.0, pag_layers=layers, pag_adaptive_scale=adaptive, **options)
    error = relative_error(ours, theirs)
    print("sd3 pag", layers, scale, adaptive, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)
    assert relative_error(text_to_image(sd3, PROMPTS, **options), theirs) > 1e-3  # it does guide


@pytest.mark.parametrize("scale, adaptive", [(4.0, 0.0), (1.0, 0.001)])
def test_sd3_pag_img2img_matches_the_pipeline(tiny_sd3, scale, adaptive):
    """Same z_0 as StableDiffusion3PAGImg2ImgPipeline (strength 0.6 of 5 steps: 3, image i's generator seed + i)."""
    pipe, _, sd3 = tiny_sd3[True]
    images = _images()
    pag = _pag_pipeline(pipe, diffusers.StableDiffusion3PAGImg2ImgPipeline)
    with torch.no_grad():
        theirs = pag(PROMPTS, image=images, strength=0.6, num_inference_steps=5, guidance_scale=scale,
                     output_type="latent", generator=[torch.Generator().manual_seed(5 + i) for i in range(2)],
                     pag_scale=3.0, pag_adaptive_scale=adaptive, **COMMON).images
    options = {"steps": 5, "guidance_scale": scale, "seed": 5, "return_latents": True, **COMMON}
    ours = image_to_image(sd3, images * 2 - 1, PROMPTS, 0.6, pag_scale=3.0, pag_adaptive_scale=adaptive, **options)
    error = relative_error(ours, theirs)
    print("sd3 pag img2img", scale, adaptive, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)
    assert relative_error(image_to_image(sd3, images * 2 - 1, PROMPTS, 0.6, **options), theirs) > 1e-3


def test_sd3_pag_on_an_sd3_5_transformer(tiny_sd3):
    """SD3.5 Medium's MMDiT-X blocks (dual attention on block 0, qk_norm): PAG on block 0's joint attention matches
    the pipeline with that transformer (whose PAG joint processors skip the qk RMS norms, in every pass of the chosen
    layers: matched, as the pipeline's own processors run); block 0's attn2 is refused (the pipeline fails on it)."""
    import dataclasses
    pipe, _, sd3 = tiny_sd3[True]
    transformer = test_interop_sd3.sd3_5_transformer()
    sd3_5 = dataclasses.replace(sd3, transformer=transformer, _denoiser=None)
    latents = test_interop_sd3._latents()
    layers = r"blocks\.0\.attn$"
    pag = _pag_pipeline(pipe, diffusers.StableDiffusion3PAGPipeline, layers)
    pag.transformer = transformer
    with torch.no_grad():
        theirs = pag(PROMPTS, num_inference_steps=4, guidance_scale=4.0, latents=latents.clone(), output_type="latent",
                     pag_scale=3.0, **COMMON).images
    ours = text_to_image(sd3_5, PROMPTS, steps=4, guidance_scale=4.0, latents=latents, return_latents=True,
                         pag_scale=3.0, pag_layers=[layers], **COMMON)
    error = relative_error(ours, theirs)
    print("sd3.5 pag", float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)
    with pytest.raises(DiffkitError, match="select a dual-attention block's attn2"):
        text_to_image(sd3_5, PROMPTS, steps=1, guidance_scale=4.0, latents=latents, pag_scale=3.0,
                      pag_layers=["blocks.0"], **COMMON)


def test_sd3_pag_scale_zero_and_what_it_does_not_take(tiny_sd3):
    """pag_scale 0 is the plain sampling bit for bit; a layer selecting nothing, an SD3.5 dual-attention block's
    attn2, the options diffusers' SD3 PAG pipelines lack, the options without a scale: one line each."""
    from diffkit.interop.sd3_pag import JointAttention
    _, _, sd3 = tiny_sd3[True]
    options = {"steps": 2, "guidance_scale": 4.0, "latents": test_interop_sd3._latents(), "return_latents": True,
               "max_sequence_length": 12}
    assert torch.equal(text_to_image(sd3, PROMPTS, pag_scale=0.0, pag_layers=["blocks.0"], **options),
                       text_to_image(sd3, PROMPTS, **options))
    images = _images() * 2 - 1
    for call, match in (
            (lambda: text_to_image(sd3, PROMPTS, pag_scale=3.0, pag_layers=["blocks.7"], **options),
             r"pag layer 'blocks.7' matches no self-attention layer of this SD3 transformer; it has "
             r"transformer_blocks.0.attn, transformer_blocks.1.attn"),
            (lambda: text_to_image(sd3, PROMPTS, pag_scale=3.0, skip_guidance_layers=[0], **options),
             "with skip-layer guidance is not supported on an SD3 folder"),
            (lambda: text_to_image(sd3, PROMPTS, pag_scale=3.0, ip_adapter=object(), **options),
             "with an IP-Adapter is not supported"),
            (lambda: image_to_image(sd3, images, PROMPTS, mask=torch.ones(1, 1, 16, 16), pag_scale=3.0, steps=2),
             r"with inpainting \(a mask\) is not supported"),
            (lambda: text_to_image(sd3, PROMPTS, pag_layers=["blocks.0"], **options), "pag_layers=.* needs pag_scale"),
            (lambda: text_to_image(sd3, PROMPTS, pag_scale=-1.0, **options), "pag_scale"),
            (lambda: text_to_image(sd3, PROMPTS, pag_scale=3.0, pag_layers=["blocks.(0"], **options),
             r"pag layer 'blocks.\(0' is not a regular expression .*; give diffusers' pag_applied_layers of an SD3")):
        with pytest.raises(DiffkitError) as err:
            call()
        assert re.search(match, str(err.value)) and "\n" not in str(err.value), (match, str(err.value))
    assert JointAttention(sd3.transformer).check_self_attention_layers(None) == ["blocks.1"]  # the pipelines' default


CLI = ["--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--seed", "5", "--guidance-convention", "diffusers",
       "--guidance-scale", "4", "--max-sequence-length", "12", "--no-progress", "--steps", "3"]
KW = {"pag_scale": 3.0, "guidance_scale": 4.0, "max_sequence_length": 12, "steps": 3, "seed": 5,
      "output_range": "-1,1"}


def _refused(main, capsys, tmp_path, cases) -> None:
    """Each argv of ``cases`` ((argv, regex)): exit 2, one stderr line matching, no output made."""
    capsys.readouterr()
    for argv, match in cases:
        out = str(tmp_path / "bad" / ("o.png" if argv[0] == "sample" else "o"))
        assert main(argv + ["--out", out]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), (argv, err)
        assert not (tmp_path / "bad").exists()


def test_sample_command_takes_pag_on_an_sd3_folder(tiny_sd3, tmp_path, capsys):
    """`diffkit sample --pag-scale 3 --pag-layers blocks.0 --pag-adaptive-scale 0.001` on an SD3 folder writes
    text_to_image's grid byte for byte; --pag-interval, a layer that selects nothing and --slg-layers with PAG: one
    line each, before any output."""
    from diffkit.cli import main
    from diffkit.images import save_grid
    _, folder, sd3 = tiny_sd3[True]
    common = ["sample", "--checkpoint", str(folder)] + CLI
    pag = ["--pag-scale", "3", "--pag-layers", "blocks.0", "--pag-adaptive-scale", "0.001"]
    out = tmp_path / "grid.png"
    assert main(common + pag + ["--num", "2", "--nrow", "1", "--batch-size", "2", "--out", str(out)]) == 0
    save_grid(text_to_image(sd3, PROMPTS, pag_layers=["blocks.0"], pag_adaptive_scale=0.001, **KW),
              tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    _refused(main, capsys, tmp_path, (
        (common + pag[:2] + ["--pag-interval", "100", "900"],
         "--pag-interval does not apply to an SD3 folder .* it takes .*--pag-scale / --pag-layers"),
        (common + pag[:2] + ["--slg-layers", "1", "--slg-stop", "0.9"],
         "perturbed-attention guidance with skip-layer guidance is not supported on an SD3 folder"),
        (common + ["--pag-scale", "3", "--pag-layers", "blocks.7"],
         "pag layer 'blocks.7' matches no self-attention layer of this SD3 transformer")))


def test_edit_command_takes_pag_on_an_sd3_folder(tiny_sd3, tmp_path, capsys):
    """`diffkit edit --pag-scale 3` (img2img) on an SD3 folder writes image_to_image's PNGs byte for byte;
    --pag-interval and --mask with PAG: one line each, before any output."""
    import numpy as np
    from PIL import Image
    from diffkit.cli import main
    from diffkit.commands.edit import read_pngs
    from diffkit.images import save_images
    _, folder, sd3 = tiny_sd3[True]
    (tmp_path / "in").mkdir()
    for i, image in enumerate(_images()):
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "in" / f"{i}.png")
    common = ["edit", "--checkpoint", str(folder), "--images", str(tmp_path / "in")] + CLI + ["--pag-scale", "3"]
    assert main(common + ["--out", str(tmp_path / "out")]) == 0
    images, _ = read_pngs(tmp_path / "in", "RGB")
    save_images(image_to_image(sd3, images, PROMPTS, **KW), tmp_path / "expected", prefix="edit")
    for i in range(2):
        assert (tmp_path / "out" / f"edit_0000{i}.png").read_bytes() == \
            (tmp_path / "expected" / f"edit_0000{i}.png").read_bytes()
    _refused(main, capsys, tmp_path, (
        (common + ["--pag-interval", "100", "900"], "--pag-interval does not apply to an SD3 folder"),
        (common + ["--mask", str(tmp_path / "in" / "0.png")], r"with inpainting \(a mask\) is not supported")))


APG = ["--apg-eta", "0.25", "--apg-norm-threshold", "0.5", "--apg-momentum", "-0.5"]


@pytest.mark.parametrize("how", ["sample", "edit"])
def test_sd3_apg_with_pag_is_diffusers_guider_plus_the_pag_term(tiny_sd3, tmp_path, monkeypatch, how):
    """APG with PAG on an SD3 folder (``text_to_image(apg_*=, pag_scale=3, pag_layers=blocks.(0|1))``, 3 steps, s = 6
    in diffusers' convention; ``diffkit edit --pag-scale 3 --apg-*``, img2img 0.75 of 4 steps, s = 4): each guided
    call's x_0 is diffusers' AdaptiveProjectedGuidance (use_original_formulation, eta 0.25, r 0.5 reached, momentum
    -0.5 over the calls) on the same (x0_c, x0_u), plus S (x0_c - x0-hat_c) with x0-hat_c through diffusers'
    PAGJointAttnProcessor2_0 (as TD2 on SD 1.x); the APG flags change the PAG run."""
    from test_interop_apg import assert_calls_are_apg_guider_plus_pag, recorded_guided_calls
    _, folder, sd3 = tiny_sd3[True]
    if how == "sample":
        options = {"steps": 3, "guidance_scale": 6.0, "latents": test_interop_sd3._latents(), "return_latents": True,
                   "pag_scale": 3.0, "pag_layers": [r"blocks\.(0|1)"], **COMMON}
        apg = {"apg_eta": 0.25, "apg_norm_threshold": 0.5, "apg_momentum": -0.5}
        out = {}
        calls = recorded_guided_calls(monkeypatch, lambda: out.setdefault("z", text_to_image(
            sd3, PROMPTS, **apg, **options)), with_perturbed=True)
        w = 5.0  # s - 1: diffkit's w of the diffusers convention
        assert relative_error(out["z"], text_to_image(sd3, PROMPTS, **options)) > 1e-3
    else:
        from PIL import Image

        from diffkit.cli import main
        (tmp_path / "in").mkdir()
        for i, image in enumerate(_images()):
            Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(
                tmp_path / "in" / f"{i}.png")
        argv = ["edit", "--checkpoint", str(folder), "--images", str(tmp_path / "in"), "--strength", "0.75"] + \
            CLI[:-1] + ["4", "--pag-scale", "3", "--out", str(tmp_path / "out")] + APG
        calls = recorded_guided_calls(monkeypatch, lambda: main(argv), with_perturbed=True)
        w = 3.0
        assert (tmp_path / "out" / "edit_00001.png").is_file()
    assert len(calls) == 3 and all(call[0].w == w for call in calls)
    worst, largest, capped = assert_calls_are_apg_guider_plus_pag(calls, w, 0.25, 0.5, -0.5, 3.0, how)
    print("sd3 apg + pag", how, worst, largest, capped)
    assert capped > 0  # the threshold took effect
