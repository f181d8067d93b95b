"""FLUX.1 folders with LoRA files and the command line's true CFG / T5 prompts (diffkit.interop.flux, .sd_lora):
against diffusers' FluxPipeline after load_lora_weights + fuse_lora on the tiny folder of test_interop_flux (its
fixture, imported)."""
import re

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.interop.flux import load_flux, text_to_image  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
import test_interop_flux  # noqa: E402

PROMPTS = test_interop_flux.PROMPTS
tiny_flux = test_interop_flux.tiny_flux  # the folder fixture, shared (pytest finds it in this module's namespace)
FLUX_LORA = dict(r=4, lora_alpha=8.0, target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "to_add_out",
                                                       "ff.net.2", "proj_mlp", "proj_out"],
                 rank_pattern={"to_k": 2}, alpha_pattern={"to_v": 3.0})


@pytest.fixture(scope="module")
def flux_lora(tiny_flux, tmp_path_factory):
    """(a diffusers-format FLUX LoRA file: transformer and CLIP text_encoder adapters with rank / alpha patterns,
    written by FluxPipeline.save_lora_weights; the dev folder's pipeline after load_lora_weights + fuse_lora(0.7))."""
    pytest.importorskip("peft")
    from test_sd_lora import fused_transformer_lora
    _, folder, _ = tiny_flux[True]
    return fused_transformer_lora(diffusers.FluxPipeline, folder, tmp_path_factory.mktemp("flux_lora"), FLUX_LORA,
                                  "text_encoder")


def test_flux_lora_matches_load_lora_weights_and_fuse_lora(tiny_flux, flux_lora):
    """load_flux(lora=[(file, 0.7)]): the transformer's and CLIP's weights are the pipeline's after load_lora_weights
    + fuse_lora(lora_scale=0.7) (rank and alpha patterns from the file's metadata), and so are the sampled latents
    (with true CFG); scale 0 changes nothing, bit for bit."""
    _, folder, flux = tiny_flux[True]
    lora, pipe = flux_lora
    merged = load_flux(folder, progress=False, lora=[(lora, 0.7)])
    worst = 0.0
    for name in ("transformer", "text_encoder", "text_encoder_2"):
        theirs = dict(getattr(pipe, name).state_dict())
        for key, value in getattr(merged, name).state_dict().items():
            worst = max(worst, float((value - theirs[key]).abs().max()))
    q = next(k for k in flux.text_encoder.state_dict() if k.endswith("layers.0.self_attn.q_proj.weight"))
    changed = min(float((merged.text_encoder.state_dict()[q] - flux.text_encoder.state_dict()[q]).abs().max()),
                  float((merged.transformer.transformer_blocks[0].attn.to_v.weight
                         - flux.transformer.transformer_blocks[0].attn.to_v.weight).abs().max()),
                  float((merged.transformer.single_transformer_blocks[0].proj_mlp.weight
                         - flux.transformer.single_transformer_blocks[0].proj_mlp.weight).abs().max()))
    print("flux lora weights", worst, changed)
    assert worst < 1e-6 and changed > 1e-3
    latents = test_interop_flux._latents()
    kw = {"true_cfg_scale": 2.0, "negative_prompt": "ugly"}
    theirs = test_interop_flux._theirs(pipe, latents, steps=3, **kw)
    ours = text_to_image(merged, PROMPTS, steps=3, latents=latents, max_sequence_length=12, return_latents=True, **kw)
    print("flux lora latents", float((ours - theirs).abs().max()), relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5
    assert relative_error(text_to_image(flux, PROMPTS, steps=3, latents=latents, max_sequence_length=12,
                                        return_latents=True, **kw), theirs) > 1e-3
    off = load_flux(folder, progress=False, lora=[(lora, 0.0)])
    for name in ("transformer", "text_encoder"):
        assert all(torch.equal(a, b) for a, b in zip(getattr(off, name).state_dict().values(),
                                                     getattr(flux, name).state_dict().values()))


def assert_lora_refused(folder, cases: dict, tmp_path, capsys):
    """``diffkit sample --lora`` of each case's file ({name: (tensors, pattern)}) on ``folder``: exit 2, one line
    matching the pattern, no output."""
    from safetensors.torch import save_file
    from diffkit.cli import main
    for name, (tensors, match) in cases.items():
        save_file(tensors, tmp_path / f"{name}.safetensors")
        argv = ["sample", "--checkpoint", str(folder), "--prompt", "a cat", "--no-progress",
                "--lora", str(tmp_path / f"{name}.safetensors"), "--out", str(tmp_path / "out" / "o.png")]
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), (name, err)
        assert not (tmp_path / "out").exists()


def test_flux_lora_files_flux_does_not_take_are_refused_in_one_line(tiny_flux, tmp_path, capsys):
    """T5 (text_encoder_2) and UNet keys of a diffusers-format file: one line each, before any output (kohya /
    BFL-format files: test_flux_lora_formats)."""
    _, folder, _ = tiny_flux[True]
    assert_lora_refused(folder, {
        "t5": ({"text_encoder_2.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight": torch.zeros(2, 32),
                "text_encoder_2.encoder.block.0.layer.0.SelfAttention.q.lora_B.weight": torch.zeros(32, 2)},
               "adapts the text_encoder_2 .* allowed: transformer. and text_encoder. \\(CLIP\\) keys"),
        "unet": ({"unet.conv_in.lora_A.weight": torch.zeros(2, 4, 3, 3),
                  "unet.conv_in.lora_B.weight": torch.zeros(32, 2, 1, 1)},
                 "adapts the unet \\(unet. keys\\), which a FLUX folder's load_lora_weights")}, tmp_path, capsys)


def test_sample_command_takes_true_cfg_t5_prompts_and_a_lora(tiny_flux, flux_lora, tmp_path, capsys, monkeypatch):
    """`diffkit sample` on a FLUX folder with --true-cfg-scale / --negative-prompt (-2), --prompt-2 once per --prompt,
    --max-sequence-length and --lora FILE:0.7 writes the grid of text_to_image's images byte for byte."""
    from diffkit.cli import main
    from diffkit.images import save_grid
    from diffkit.interop import flux as flux_module
    monkeypatch.setattr(flux_module, "DEFAULT_SAMPLE_SIZE", 8)
    _, folder, _ = tiny_flux[True]
    lora, _ = flux_lora
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--prompt-2",
                 "hot dog", "--prompt-2", "the cat", "--negative-prompt", "ugly", "--negative-prompt-2", "blurry",
                 "--true-cfg-scale", "2.5", "--max-sequence-length", "12", "--lora", f"{lora}:0.7", "--num", "2",
                 "--nrow", "1", "--steps", "3", "--seed", "5", "--batch-size", "2", "--no-progress", "--out",
                 str(out)]) == 0
    merged = load_flux(folder, progress=False, lora=[(lora, 0.7)])
    expected = text_to_image(merged, PROMPTS, steps=3, seed=5, true_cfg_scale=2.5, negative_prompt="ugly",
                             negative_prompt_2="blurry", prompt_2=["hot dog", "the cat"], max_sequence_length=12,
                             output_range="-1,1")
    save_grid(expected, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    capsys.readouterr()
    base = ["sample", "--checkpoint", str(folder), "--prompt", "a cat", "--no-progress", "--out",
            str(tmp_path / "out" / "o.png")]
    for extra, match in (
            (["--true-cfg-scale", "3"], "--true-cfg-scale 3 is not allowed on a FLUX folder: its true CFG takes both"),
            (["--negative-prompt", "u", "--true-cfg-scale", "1"], "--negative-prompt 'u' with --true-cfg-scale 1 is"),
            (["--prompt-3", "a"], "--prompt-3 does not apply to a FLUX folder .* --prompt-2, --negative-prompt-2"),
            (["--clip-skip", "1"], "--clip-skip does not apply to a FLUX folder"),
            (["--prompt-2", "a", "--prompt-2", "b"], "--prompt-2 is given 2 times for 1 --prompt"),
            (["--true-cfg-scale", "0"], "argument --true-cfg-scale: .* must be a finite number > 0")):
        code = main(base + extra) if extra[-1] != "0" else pytest.raises(SystemExit, main, base + extra).value.code
        assert code == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert re.search(match, err[-1]) and (len(err) == 1 or extra[-1] == "0"), (extra, err)
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("steps, strength", [(4, 0.6), (3, 1.0)])
def test_flux_img2img_matches_the_pipeline(tiny_flux, steps, strength):
    """Same z_0 as FluxImg2ImgPipeline: the posterior sample and the noise from image i's generator seed + i,
    scale_noise at the first sigma of get_timesteps' cut (3 of 4 steps at 0.6; all at 1.0: pure noise), flow Euler
    from there with the embedded guidance (its default 7.0) and true CFG."""
    from diffkit.interop.flux import image_to_image
    pipe, _, flux = tiny_flux[True]
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))  # [0, 1]
    kw = {"max_sequence_length": 12, "true_cfg_scale": 2.0, "negative_prompt": "ugly"}
    img2img = diffusers.FluxImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = img2img(PROMPTS, image=images, strength=strength, num_inference_steps=steps, height=16, width=16,
                         output_type="latent", generator=[torch.Generator().manual_seed(5 + i) for i in range(2)],
                         **kw).images
    theirs = test_interop_flux.unpack_latents(theirs, 8, 8)
    ours = image_to_image(flux, images * 2 - 1, PROMPTS, strength, steps=steps, seed=5, return_latents=True, **kw)
    error = relative_error(ours, theirs)
    print("flux img2img", steps, strength, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)


def test_edit_command_on_a_flux_folder(tiny_flux, flux_lora, tmp_path, capsys):
    """`diffkit edit` on a FLUX folder writes image_to_image's images byte for byte (--prompt-2, --lora, the
    embedded --guidance-scale, the pipeline's sigmas), within one PNG level of FluxImg2ImgPipeline's; flags it does
    not take (SD3's --prompt-3, --clip-skip) are one line (true CFG and --mask: test_interop_flux_inpaint)."""
    import numpy as np
    from PIL import Image
    from diffkit.cli import main
    from diffkit.commands.edit import read_pngs
    from diffkit.images import save_images
    from diffkit.interop.flux import image_to_image
    _, folder, _ = tiny_flux[True]
    lora, pipe = flux_lora
    (tmp_path / "in").mkdir()
    for i in range(2):
        pixels = torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(i)).numpy()
        Image.fromarray((pixels * 255).round().astype(np.uint8)).save(tmp_path / "in" / f"{i}.png")
    common = ["--checkpoint", str(folder), "--images", str(tmp_path / "in"), "--prompt", PROMPTS[0], "--prompt",
              PROMPTS[1], "--no-progress", "--seed", "5"]
    assert main(["edit"] + common + ["--steps", "4", "--prompt-2", "a blurry photo", "--max-sequence-length", "12",
                                     "--guidance-scale", "4", "--lora", f"{lora}:0.7", "--out",
                                     str(tmp_path / "out")]) == 0
    images, _ = read_pngs(tmp_path / "in", "RGB")
    merged = load_flux(folder, progress=False, lora=[(lora, 0.7)])
    ours = image_to_image(merged, images, PROMPTS, steps=4, guidance_scale=4.0, seed=5, max_sequence_length=12,
                          prompt_2="a blurry photo", output_range="-1,1")
    save_images(ours, tmp_path / "expected", prefix="edit")
    for i in range(2):
        assert (tmp_path / "out" / f"edit_0000{i}.png").read_bytes() == \
            (tmp_path / "expected" / f"edit_0000{i}.png").read_bytes()
    img2img = diffusers.FluxImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = img2img(PROMPTS, prompt_2=["a blurry photo"] * 2, image=(images + 1) / 2, strength=0.6, height=16,
                         width=16, num_inference_steps=4, guidance_scale=4.0, max_sequence_length=12,
                         output_type="np", generator=[torch.Generator().manual_seed(5 + i) for i in range(2)]).images
    written = np.stack([np.asarray(Image.open(tmp_path / "out" / f"edit_0000{i}.png"), np.float64) for i in range(2)])
    assert np.abs(written - (theirs * 255).round()).max() <= 1
    capsys.readouterr()
    for extra, match in ((["--clip-skip", "1"], "--clip-skip does not apply to a FLUX folder"),
                         (["--prompt-3", "a"], "--prompt-3 does not apply to a FLUX folder")):
        assert main(["edit"] + common + extra + ["--out", str(tmp_path / "bad")]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), (extra, err)
        assert not (tmp_path / "bad").exists()
