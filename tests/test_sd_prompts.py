"""clip_skip (Stable Diffusion and SD-XL folders) and SD-XL's prompt_2 / negative_prompt_2
(diffkit.interop.sd_prompts) against diffusers' StableDiffusionPipeline / StableDiffusionXLPipeline on the tiny
random pipelines of test_interop_diffusers / test_interop_sd_xl (nothing downloaded)."""
import dataclasses
import re
import types

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.stable_diffusion import text_to_image  # noqa: E402

from test_interop_diffusers import relative_error, tiny_sd_pipeline  # noqa: E402
from test_interop_sd_xl import PROMPTS, tiny_sd_xl_pipeline  # noqa: E402

LAYERS = 4  # the deeper text encoders' layers: clip_skip 0..3 (the tiny folders' have 2 and 3)


def _deeper(encoder, seed):
    """A random text encoder of ``encoder``'s class and sizes with :data:`LAYERS` layers."""
    config = encoder.config.to_dict()
    config["num_hidden_layers"] = LAYERS
    torch.manual_seed(seed)
    return type(encoder)(type(encoder.config).from_dict(config)).eval()


def _with_text_model(encoder):
    """``encoder`` with the ``text_model.final_layer_norm`` that diffusers 0.42.1's clip_skip reads: transformers 5's
    CLIPTextModel has its final_layer_norm on itself (the pipeline's clip_skip is an AttributeError without this)."""
    if not hasattr(encoder, "text_model"):
        encoder.__dict__["text_model"] = types.SimpleNamespace(final_layer_norm=encoder.final_layer_norm)
    return encoder


def _saved(tmp_path_factory, build, name: str) -> tuple:
    """(pipeline ``build(root)``, the folder it is saved to, that folder loaded by diffkit)."""
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    root = tmp_path_factory.mktemp(f"tiny_{name}_prompts")
    pipe = build(root)
    pipe.save_pretrained(root / name)
    return pipe, root / name, load_stable_diffusion(root / name, progress=False)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """test_interop_diffusers' tiny StableDiffusionPipeline, its folder and the loaded StableDiffusion."""
    return _saved(tmp_path_factory, tiny_sd_pipeline, "sd")


@pytest.fixture(scope="module")
def tiny_xl(tmp_path_factory):
    """test_interop_sd_xl's tiny StableDiffusionXLPipeline, its folder and the loaded StableDiffusionXL."""
    return _saved(tmp_path_factory, tiny_sd_xl_pipeline, "xl")


@pytest.fixture(scope="module")
def deep_sd(tiny_sd):
    """(StableDiffusionPipeline, StableDiffusion) with the same 4-layer text encoder."""
    pipe, _, sd = tiny_sd
    encoder = _deeper(sd.text_encoder, 11)
    theirs = diffusers.StableDiffusionPipeline(**{**pipe.components, "text_encoder": _with_text_model(encoder)},
                                               requires_safety_checker=False)
    theirs.set_progress_bar_config(disable=True)
    return theirs, dataclasses.replace(sd, text_encoder=encoder)


@pytest.fixture(scope="module")
def deep_xl(tiny_xl):
    """(StableDiffusionXLPipeline, StableDiffusionXL) with the same two 4-layer text encoders."""
    pipe, _, xl = tiny_xl
    encoders = {"text_encoder": _deeper(xl.text_encoder, 12), "text_encoder_2": _deeper(xl.text_encoder_2, 13)}
    theirs = diffusers.StableDiffusionXLPipeline(**{**pipe.components, **encoders}, add_watermarker=False)
    theirs.set_progress_bar_config(disable=True)
    return theirs, dataclasses.replace(xl, **encoders)


def test_sd_clip_skip_embeddings_are_the_pipelines(deep_sd):
    """encode_prompts(clip_skip=N) is encode_prompt's prompt_embeds (final norm of hidden_states[-(N + 1)]); the null
    half is not skipped, as the pipeline's negative_prompt_embeds; N = 0 is the default."""
    pipe, sd = deep_sd
    for skip in range(LAYERS):
        theirs, negative = pipe.encode_prompt(PROMPTS, "cpu", 1, True, negative_prompt=["ugly"] * 2, clip_skip=skip)
        torch.testing.assert_close(sd.encode_prompts(PROMPTS, clip_skip=skip), theirs, rtol=0, atol=0)
        guided, cond = sd.prompt_guidance(PROMPTS, "ugly", 5.0, "diffusers", 0.0, clip_skip=skip)
        torch.testing.assert_close(cond["context"], theirs, rtol=0, atol=0)
        torch.testing.assert_close(guided.null_context, negative, rtol=0, atol=0)
    assert torch.equal(sd.encode_prompts(PROMPTS, clip_skip=0), sd.encode_prompts(PROMPTS))
    assert not torch.allclose(sd.encode_prompts(PROMPTS, clip_skip=1), sd.encode_prompts(PROMPTS))


def test_sd_xl_clip_skip_and_prompt_2_embeddings_are_the_pipelines(deep_xl):
    """encode_prompts_xl(prompts_2, clip_skip=N) is encode_prompt's (hidden_states[-(N + 2)] of both encoders, the
    pooled output of encoder 2 from prompt_2); the null half: negative_prompt_2, never skipped."""
    pipe, xl = deep_xl
    for skip, prompt_2, negative_2 in [(1, None, None), (2, "a dog", None), (3, ["red", "blue"], "blurry"),
                                       (None, ["red", "blue"], ["dark", "flat"])]:
        theirs = pipe.encode_prompt(PROMPTS, prompt_2=[prompt_2] * 2 if isinstance(prompt_2, str) else prompt_2,
                                    device="cpu", negative_prompt=["ugly", "bad"],
                                    negative_prompt_2=negative_2, clip_skip=skip)
        guided, cond = xl.prompt_guidance(PROMPTS, ["ugly", "bad"], 5.0, "diffusers", 0.0, image_size=(16, 16),
                                          clip_skip=skip, prompt_2=prompt_2, negative_prompt_2=negative_2)
        ours = (cond["context"], guided.null_context, cond["text_embeds"], guided.null_cond["text_embeds"])
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    context, pooled = xl.encode_prompts_xl(PROMPTS, "a dog", clip_skip=2)
    assert torch.equal(pooled, xl.encode_prompts_xl(["a dog"] * 2)[1])  # pooled: prompt_2's, not skipped
    assert torch.equal(xl.encode_prompts_xl(PROMPTS, "", 0)[0], xl.encode_prompts_xl(PROMPTS)[0])  # "" = prompt


def test_sd_clip_skip_samples_are_the_pipelines(deep_sd):
    """text_to_image(clip_skip=N) with a negative prompt: the pipeline's z_0 and images (DDIM on its timesteps)."""
    pipe, sd = deep_sd
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    latents = torch.randn(sd.latent_shape(2), generator=torch.Generator().manual_seed(7))
    for skip, output_type in ((1, "latent"), (2, "pt")):
        with torch.no_grad():
            theirs = pipe(PROMPTS, num_inference_steps=4, guidance_scale=5.0, latents=latents.clone(), eta=0.0,
                          negative_prompt=["ugly"] * 2, clip_skip=skip, output_type=output_type).images
        ours = text_to_image(sd, PROMPTS, steps=4, grid="scheduler", guidance_scale=5.0, latents=latents,
                             negative_prompt="ugly", clip_skip=skip, return_latents=output_type == "latent")
        assert relative_error(ours, theirs) < 1e-5 and (ours - theirs).abs().max() < (1e-5 if skip == 2 else 1e-4)


@pytest.mark.parametrize("kw", [{"clip_skip": 1}, {"clip_skip": 2, "prompt_2": "a dog"},
                                {"prompt_2": ["red", "blue"], "negative_prompt": "ugly", "negative_prompt_2": "dark"}])
def test_sd_xl_clip_skip_and_prompt_2_samples_are_the_pipelines(deep_xl, kw):
    """text_to_image with clip_skip / prompt_2 / negative_prompt_2: StableDiffusionXLPipeline's z_0 (DDIM)."""
    pipe, xl = deep_xl
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    latents = torch.randn(xl.latent_shape(2), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        theirs = pipe(PROMPTS, num_inference_steps=4, guidance_scale=5.0, latents=latents.clone(),
                      output_type="latent", **{k: [v] * 2 if k == "prompt_2" and isinstance(v, str) else v
                                               for k, v in kw.items()}).images
    ours = text_to_image(xl, PROMPTS, steps=4, grid="scheduler", guidance_scale=5.0, latents=latents,
                         return_latents=True, **kw)
    assert relative_error(ours, theirs) < 1e-5 and (ours - theirs).abs().max() < 1e-4  # |z_0| up to ~10


def test_bad_clip_skip_and_second_prompts_are_refused_in_one_line(tiny_sd, tiny_xl):
    _, _, sd = tiny_sd
    _, _, xl = tiny_xl
    for model, skip, layers in ((sd, 2, 2), (sd, -1, 2), (sd, True, 2), (sd, 1.0, 2), (xl, 2, 2)):
        with pytest.raises(DiffkitError, match=rf"clip_skip={skip!r} is not allowed; .*< {layers}"):
            text_to_image(model, PROMPTS, steps=1, clip_skip=skip)
    for name in ("prompt_2", "negative_prompt_2"):
        with pytest.raises(DiffkitError, match=f"{name}='x' is not allowed: .*one text encoder"):
            text_to_image(sd, PROMPTS, steps=1, **{name: "x"})
    with pytest.raises(DiffkitError, match=r"prompt_2 has 3 entries for 2 prompts"):
        text_to_image(xl, PROMPTS, steps=1, prompt_2=["a", "b", "c"])
    with pytest.raises(DiffkitError, match=r"negative_prompt_2 has 1 entries for 2 prompts"):
        text_to_image(xl, PROMPTS, steps=1, negative_prompt=["a", "b"], negative_prompt_2=["c"])
    with pytest.raises(DiffkitError, match=r"negative_prompt_2='x' is not allowed without negative_prompt"):
        text_to_image(xl, PROMPTS, steps=1, negative_prompt_2="x")  # the pipeline would ignore it (zeros)


def _cli(capsys, *args):
    from diffkit.cli import main
    try:
        code = main([*map(str, args), "--no-progress"])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize("xl", [False, True])
def test_sample_takes_clip_skip_and_prompt_2(tiny_sd, tiny_xl, tmp_path, capsys, xl):
    """``diffkit sample`` with --clip-skip (SD, SD-XL), --prompt-2 once per --prompt and --negative-prompt-2 (SD-XL):
    the library's images byte for byte (the library is the pipelines', above); one row per prompt, sample i from
    seed + i, batches of 3 (so each sample's second prompt follows it across batches)."""
    from diffkit.images import save_grid
    prompts = ["hot", "hot", "a cat", "a cat"]  # the rows of --prompt hot --prompt "a cat", --nrow 2
    if xl:
        _, folder, model = tiny_xl
        flags = ["--clip-skip", 1, "--prompt-2", "a dog", "--prompt-2", "red", "--negative-prompt", "ugly",
                 "--negative-prompt-2", "dark"]
        kw = {"clip_skip": 1, "negative_prompt": "ugly", "negative_prompt_2": "dark"}
        seconds = [{"prompt_2": ["a dog", "a dog", "red"]}, {"prompt_2": ["red"]}]
    else:
        _, folder, model = tiny_sd
        flags, kw, seconds = ["--clip-skip", 1], {"clip_skip": 1}, [{}, {}]
    out = tmp_path / "grid.png"
    code, err = _cli(capsys, "sample", "--checkpoint", folder, "--prompt", "hot", "--prompt", "a cat", "--num", 4,
                     "--steps", 2, "--seed", 5, "--batch-size", 3, "--nrow", 2, *flags, "--out", out)
    assert code == 0, err
    images = [text_to_image(model, prompts[:3], steps=2, seed=5, output_range="-1,1", **kw, **seconds[0]),
              text_to_image(model, prompts[3:], steps=2, seed=8, output_range="-1,1", **kw, **seconds[1])]
    save_grid(torch.cat(images), tmp_path / "ours.png", 2)
    assert out.read_bytes() == (tmp_path / "ours.png").read_bytes()


def test_edit_clip_skip_on_an_sd_folder_is_the_img2img_pipelines(tiny_sd, tmp_path, capsys):
    """``diffkit edit --checkpoint SD --prompt --negative-prompt --clip-skip 1``: StableDiffusionImg2ImgPipeline's
    images with clip_skip=1 (to the PNG's 1/255; DDIM with steps_offset 0 and set_alpha_to_one)."""
    import numpy as np
    from PIL import Image
    from test_latent_editing import write_pngs
    pipe, folder, _ = tiny_sd
    pngs = write_pngs(tmp_path / "in", 1, 16, "RGB")
    code, err = _cli(capsys, "edit", "--checkpoint", folder, "--images", pngs, "--prompt", "hot",
                     "--negative-prompt", "ugly", "--clip-skip", 1, "--strength", 0.5, "--steps", 4, "--spacing",
                     "leading", "--final", "zero", "--seed", 10, "--out", tmp_path / "out")
    assert code == 0, err
    image = torch.from_numpy(np.array(Image.open(pngs / "in_0.png"))).permute(2, 0, 1)[None].float() / 255
    img2img = diffusers.StableDiffusionImg2ImgPipeline(
        **{**pipe.components, "text_encoder": _with_text_model(pipe.text_encoder)}, requires_safety_checker=False)
    img2img.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, steps_offset=0,
                                                            set_alpha_to_one=True)  # (after: __init__ makes it 1)
    img2img.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = img2img("hot", image=image, strength=0.5, num_inference_steps=4, guidance_scale=7.5, eta=0.0,
                         negative_prompt="ugly", clip_skip=1, output_type="np",
                         generator=[torch.Generator().manual_seed(10)]).images
    ours = np.asarray(Image.open(tmp_path / "out" / "edit_00000.png"))[None]
    assert np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1
    with torch.no_grad():  # and not without clip_skip
        plain = img2img("hot", image=image, strength=0.5, num_inference_steps=4, guidance_scale=7.5, eta=0.0,
                        negative_prompt="ugly", output_type="np", generator=[torch.Generator().manual_seed(10)]).images
    assert np.abs(ours.astype(int) - np.round(plain * 255).astype(int)).max() > 1


def test_edit_prompt_2_and_clip_skip_on_an_sd_xl_folder_are_the_librarys(tiny_xl, tmp_path, capsys):
    """``diffkit edit --checkpoint SDXL --prompt-2 --clip-skip``: latent_img2img with prompt_guidance(prompt_2=,
    clip_skip=) (the pipeline's, above), byte for byte."""
    from diffkit.commands.edit import read_pngs
    from diffkit.images import save_images
    from diffkit.latent_editing import latent_img2img
    from test_latent_editing import write_pngs
    _, folder, xl = tiny_xl
    pngs = write_pngs(tmp_path / "in", 1, 16, "RGB")
    code, err = _cli(capsys, "edit", "--checkpoint", folder, "--images", pngs, "--prompt", "hot", "--prompt-2",
                     "a dog", "--clip-skip", 1, "--steps", 2, "--seed", 3, "--out", tmp_path / "edited")
    assert code == 0, err
    images, _ = read_pngs(pngs, "RGB")
    guided, cond = xl.prompt_guidance(["hot"], None, 5.0, "diffusers", 0.0, image_size=(16, 16), clip_skip=1,
                                      prompt_2="a dog")
    expected = latent_img2img(guided, xl, images, 0.8, "ddim", 2, posterior="sample", seed=3, cond=cond,
                              progress=False).clamp(-1, 1)
    save_images(expected, tmp_path / "expected", prefix="edit")
    edited, expected = (tmp_path / name / "edit_00000.png" for name in ("edited", "expected"))
    assert edited.read_bytes() == expected.read_bytes()


def test_prompt_encoding_flags_are_refused_where_they_cannot_apply(tiny_sd, tiny_xl, tiny_checkpoint, tmp_path,
                                                                    capsys):
    sd = tiny_sd[1]
    xl = tiny_xl[1]
    out = tmp_path / "never" / "x.png"
    for checkpoint, flags, pattern in [
            (tiny_checkpoint, ["--clip-skip", 1], r"--clip-skip applies to a Stable Diffusion / SD-XL / SD3 / FLUX"),
            (sd, ["--prompt-3", "x"], r"--prompt-3 applies to an SD3 folder"),
            (sd, ["--max-sequence-length", "77"], r"--max-sequence-length applies to an SD3 folder"),
            (sd, ["--prompt-2", "x"], r"--prompt-2 applies to an SD-XL folder"),
            (sd, ["--negative-prompt-2", "x"], r"--negative-prompt-2 applies to an SD-XL folder"),
            (xl, ["--prompt-2", "a", "--prompt-2", "b", "--prompt-2", "c"], r"--prompt-2 is given 3 times"),
            (sd, ["--clip-skip", 2], r"clip_skip=2 is not allowed; give an integer 0 <= clip_skip < 2"),
            (sd, ["--clip-skip", -1], r"--clip-skip: -1 is out of range")]:
        code, err = _cli(capsys, "sample", "--checkpoint", checkpoint, "--prompt", "a", "--prompt", "b", *flags,
                         "--steps", 1, "--num", 2, "--out", out)
        assert code == 2 and len(err.strip().splitlines()) == 1 and re.search(pattern, err), err
        assert not out.parent.exists()
    code, err = _cli(capsys, "edit", "--checkpoint", sd, "--images", tmp_path, "--clip-skip", 1, "--out",
                     tmp_path / "never")
    assert code == 2 and "--clip-skip goes with --prompt" in err and not (tmp_path / "never").exists(), err
    (tmp_path / "s.csv").write_text("a\n1\n")
    code, err = _cli(capsys, "edit", "--checkpoint", sd, "--series", tmp_path / "s.csv", "--prompt-2", "x", "--out",
                     tmp_path / "never.csv")
    assert code == 2 and "--prompt-2 applies to image edits" in err, err


def test_lcm_folder_clip_skip_is_the_latent_consistency_pipelines(tmp_path):
    """An LCM folder (its UNet takes w): text_to_image(clip_skip=1) is LatentConsistencyModelPipeline(clip_skip=1),
    whose encode_prompt is StableDiffusionPipeline's (the same encoder path as ControlNet, IP-Adapter, img2img)."""
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    from diffkit.noise import generators_from_seed
    from test_interop_lcm import _save
    pipe, folder = _save(tmp_path, "lcm")
    _with_text_model(pipe.text_encoder)
    sd = load_stable_diffusion(folder, progress=False)
    latents = torch.randn(sd.latent_shape(2), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        theirs = pipe(PROMPTS, num_inference_steps=2, guidance_scale=8.5, latents=latents.clone(), clip_skip=1,
                      generator=generators_from_seed(3, 2), output_type="latent").images
    ours = text_to_image(sd, PROMPTS, steps=2, latents=latents, seed=3, clip_skip=1, return_latents=True)
    assert relative_error(ours, theirs) < 1e-5
    plain = text_to_image(sd, PROMPTS, steps=2, latents=latents, seed=3, return_latents=True)
    assert relative_error(plain, theirs) > 1e-3


def test_lcm_sd_xl_folder_clip_skip_and_prompt_2_are_the_pipelines(tiny_xl, tmp_path):
    """An SD-XL LCMScheduler folder whose UNet takes w (lcm-sdxl): text_to_image(clip_skip=1, prompt_2=[...]) is
    StableDiffusionXLPipeline's with them (no classifier-free pass); negative_prompt_2 is refused there, as
    negative_prompt (no null half to give it to)."""
    import shutil
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    from diffkit.noise import generators_from_seed
    from test_interop_lcm import COND_DIM, SMALL_SCALING
    pipe, folder, _ = tiny_xl
    torch.manual_seed(3)
    unet = diffusers.UNet2DConditionModel.from_config(pipe.unet.config, time_cond_proj_dim=COND_DIM)
    scheduler = diffusers.LCMScheduler.from_config(pipe.scheduler.config, **SMALL_SCALING)
    lcm = diffusers.StableDiffusionXLPipeline(**{**pipe.components, "unet": unet, "scheduler": scheduler},
                                              add_watermarker=False)
    lcm.set_progress_bar_config(disable=True)
    shutil.copytree(folder, tmp_path / "lcm", ignore=shutil.ignore_patterns("unet", "scheduler"))
    unet.save_pretrained(tmp_path / "lcm" / "unet")
    scheduler.save_pretrained(tmp_path / "lcm" / "scheduler")
    sd = load_stable_diffusion(tmp_path / "lcm", progress=False)
    latents = torch.randn(sd.latent_shape(2), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        theirs = lcm(PROMPTS, prompt_2=["a dog", "red"], clip_skip=1, num_inference_steps=2, guidance_scale=5.0,
                     latents=latents.clone(), generator=generators_from_seed(3, 2), output_type="latent").images
    ours = text_to_image(sd, PROMPTS, prompt_2=["a dog", "red"], clip_skip=1, steps=2, guidance_scale=5.0,
                         latents=latents, seed=3, return_latents=True)
    assert relative_error(ours, theirs) < 1e-5
    with pytest.raises(DiffkitError, match="negative_prompt_2='dark' is not allowed: this LCM UNet takes"):
        text_to_image(sd, PROMPTS, steps=1, negative_prompt_2="dark")
