"""Kolors folders (diffkit.interop.kolors): diffkit's text_to_image, img2img and PAG against diffusers' own
KolorsPipeline, KolorsImg2ImgPipeline and KolorsPAGPipeline on a tiny random folder written by save_pretrained
(nothing downloaded; the tokenizer: a real tiny sentencepiece model where the package is installed, else a stand-in,
tests/_kolors_helpers.py)."""
import dataclasses
import json
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image  # noqa: E402

from _kolors_helpers import SENTENCEPIECE, stub_sentencepiece, tiny_kolors_pipeline  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

PROMPTS = ["a photo of a cat", "hot"]
STEPS = 4


@pytest.fixture(scope="session")
def tiny_kolors(tmp_path_factory):
    """(KolorsPipeline, its folder, the loaded diffkit Kolors), built once a session when first asked for."""
    root = tmp_path_factory.mktemp("tiny_kolors")
    pipe = tiny_kolors_pipeline(root)
    with stub_sentencepiece():
        pipe.save_pretrained(root / "kolors")
        kolors = load_stable_diffusion(root / "kolors", progress=False)
    return pipe, root / "kolors", kolors


def _latents(seed=7):
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_kolors_folder_loads_and_encodes_as_the_pipeline(tiny_kolors):
    """ChatGLM's penultimate states (B, 256, d) and the last token of its last layer, bit for bit the pipeline's
    encode_prompt; the SD-XL defaults (s = 5, time ids of the image size) and an encoded empty null half."""
    pipe, _, kolors = tiny_kolors
    assert type(kolors).__name__ == "Kolors" and kolors.default_guidance_scale == 5.0 and not kolors.is_refiner
    assert kolors.latent_shape(2) == (2, 4, 8, 8) and not kolors.force_zeros_for_empty_prompt
    context, pooled = kolors.encode_prompts_xl(PROMPTS)
    theirs, null, theirs_pooled, null_pooled = pipe.encode_prompt(PROMPTS, device="cpu")
    assert context.shape == (2, 256, 32) and pooled.shape == (2, 32)
    torch.testing.assert_close(context, theirs, rtol=1e-5, atol=1e-6)  # (SDPA's float rounding: 2.4e-7)
    torch.testing.assert_close(pooled, theirs_pooled, rtol=1e-5, atol=1e-6)
    guided, cond = kolors.prompt_guidance(PROMPTS, None, 5.0, "diffusers", 0.0, image_size=(16, 8))
    assert cond["time_ids"].tolist() == [[16, 8, 0, 0, 16, 8]] * 2
    torch.testing.assert_close(guided.null_context.expand_as(null), null, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(guided.null_cond["text_embeds"].expand_as(null_pooled), null_pooled, rtol=1e-5,
                               atol=1e-6)


def test_kolors_tokenizer_splits_as_the_pipeline(tiny_kolors):
    """Words the tokenizer's model never saw whole (sub-word pieces with the real sentencepiece model, <unk> with the
    stand-in) give the pipeline's states; with the package installed the folder's tokenizer/tokenizer.model is a
    real sentencepiece model of about 50 pieces."""
    pipe, folder, kolors = tiny_kolors
    prompts = ["snowy rivers of zebras", "a foxy photo"]
    if SENTENCEPIECE:
        import sentencepiece
        model = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer" / "tokenizer.model"))
        assert 40 <= model.vocab_size() <= 100 and len(model.encode("snowy rivers", out_type=str)) > 2
    context, pooled = kolors.encode_prompts_xl(prompts)
    theirs, _, theirs_pooled, _ = pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
    torch.testing.assert_close(context, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pooled, theirs_pooled, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw, theirs_kw", [
    ({}, {}),
    ({"negative_prompt": "ugly", "guidance_scale": 3.0}, {"negative_prompt": ["ugly"] * 2, "guidance_scale": 3.0}),
])
def test_kolors_matches_the_pipeline(tiny_kolors, kw, theirs_kw):
    """Same z_0 as KolorsPipeline (its EulerDiscreteScheduler: diffkit's euler on the scheduler's timesteps, CFG,
    the same latents), the empty or a negative prompt."""
    pipe, _, kolors = tiny_kolors
    latents = _latents()
    with torch.no_grad():
        theirs = pipe(PROMPTS, num_inference_steps=STEPS, latents=latents.clone(), output_type="latent",
                      **theirs_kw).images
    sampler, options = kolors.folder_sampler()
    assert (sampler, options) == ("euler", {})
    ours = text_to_image(kolors, PROMPTS, sampler=sampler, steps=STEPS, grid="scheduler", latents=latents,
                         return_latents=True, **kw)
    assert relative_error(ours, theirs) < 1e-5


def test_kolors_img2img_is_the_img2img_pipeline(tiny_kolors):
    """latent_img2img with prompt_guidance's denoiser and cond is KolorsImg2ImgPipeline (Euler on its leading
    timesteps, the same generators; strength 0.5 and 0.4: int(steps * strength) steps)."""
    from diffusers.pipelines.kolors import KolorsImg2ImgPipeline
    from diffkit.latent_editing import latent_img2img
    pipe, _, kolors = tiny_kolors
    img2img = KolorsImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    guided, cond = kolors.prompt_guidance(PROMPTS, None, 5.0, "diffusers", 0.0, image_size=(16, 16))
    for strength in (0.5, 0.4):
        with torch.no_grad():
            theirs = img2img(PROMPTS, image=image, strength=strength, num_inference_steps=STEPS, output_type="latent",
                             generator=[torch.Generator().manual_seed(s) for s in (10, 11)]).images
        ours = latent_img2img(guided, kolors, image * 2 - 1, strength, "euler", STEPS, posterior="sample", seed=10,
                              cond=cond, progress=False, return_latents=True, spacing="leading", final="zero",
                              steps_offset=1)
        assert relative_error(ours, theirs) < 1e-5


def test_kolors_pag_is_the_pag_pipeline(tiny_kolors):
    """``pag_scale`` / ``pag_layers`` as KolorsPAGPipeline (its pag_applied_layers; CFG and PAG in one batch)."""
    pipe, _, kolors = tiny_kolors
    from diffusers.pipelines.pag.pipeline_pag_kolors import KolorsPAGPipeline  # (not a dummy: no sentencepiece)
    pag = KolorsPAGPipeline(**pipe.components, pag_applied_layers=["down_blocks.1", "mid"])
    pag.set_progress_bar_config(disable=True)
    latents = _latents()
    with torch.no_grad():
        theirs = pag(PROMPTS, num_inference_steps=STEPS, latents=latents.clone(), pag_scale=2.0,
                     output_type="latent").images
    ours = text_to_image(kolors, PROMPTS, sampler="euler", steps=STEPS, grid="scheduler", latents=latents,
                         return_latents=True, pag_scale=2.0, pag_layers=["down_blocks.1", "mid"])
    plain = text_to_image(kolors, PROMPTS, sampler="euler", steps=STEPS, grid="scheduler", latents=latents,
                          return_latents=True)
    assert relative_error(plain, theirs) > 1e-3 and relative_error(ours, theirs) < 1e-5


@pytest.mark.parametrize("kw, message", [
    ({"prompt_2": "a dog"}, "prompt_2='a dog' is not allowed on a Kolors folder: it has one text encoder"),
    ({"negative_prompt_2": "ugly"}, "negative_prompt_2='ugly' is not allowed on a Kolors folder"),
    ({"clip_skip": 1}, "clip_skip=1 is not allowed on a Kolors folder: KolorsPipeline takes ChatGLM's penultimate"),
])
def test_kolors_refuses_sd_xl_prompt_options(tiny_kolors, kw, message):
    _, _, kolors = tiny_kolors
    with pytest.raises(DiffkitError, match="^" + message.replace("(", r"\(")):
        text_to_image(kolors, PROMPTS, steps=1, **kw)


@pytest.mark.parametrize("kw, message", [
    ({"textual_inversion": ["t.safetensors"]}, "textual_inversion=['t.safetensors'] is not allowed on a Kolors"),
    ({"scheduler": "lcm"}, "scheduler='lcm' is not allowed on a Kolors folder: LCM / TCD sampling"),
    ({"inpainting": True}, "inpainting=True is not allowed on a Kolors folder: KolorsPipeline and"),
])
def test_kolors_loader_refuses_sd_xl_options(tiny_kolors, kw, message):
    from diffkit.interop.kolors import load_kolors
    _, folder, _ = tiny_kolors
    with pytest.raises(DiffkitError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        load_kolors(folder, progress=False, **kw)


def test_kolors_folder_refusals_from_its_json(tiny_kolors, tmp_path):
    """One line, before weights are read: force_zeros_for_empty_prompt without a negative prompt (the pipeline
    fails there), a UNet without encoder_hid_proj, no sentencepiece package, a scheduler diffkit has no step of."""
    from diffkit.interop.kolors import load_kolors
    _, folder, kolors = tiny_kolors
    zeros = dataclasses.replace(kolors, force_zeros_for_empty_prompt=True)
    with pytest.raises(DiffkitError, match="^negative_prompt=None is not allowed on this Kolors folder"):
        text_to_image(zeros, PROMPTS, steps=1)
    copy = tmp_path / "k"
    shutil.copytree(folder, copy)
    unet = json.loads((copy / "unet" / "config.json").read_text())
    (copy / "unet" / "config.json").write_text(json.dumps({**unet, "encoder_hid_dim_type": None}))
    with stub_sentencepiece(), pytest.raises(DiffkitError, match="encoder_hid_dim_type=None; allowed: 'text_proj'"):
        load_kolors(copy, progress=False)
    from diffusers.pipelines.kolors import tokenizer as glm_tokenizer  # the package missing (installed or not)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(glm_tokenizer, "is_sentencepiece_available", lambda: False)
        with pytest.raises(DiffkitError, match="reads tokenizer/tokenizer.model with the sentencepiece package"):
            load_kolors(folder, progress=False)
    from diffkit.interop.pixart import folder_sampler
    with pytest.raises(DiffkitError, match="EulerDiscreteScheduler has use_karras_sigmas=True, which diffkit's euler"):
        folder_sampler({**kolors.scheduler_config, "use_karras_sigmas": True})


def test_sample_command_is_the_library_and_refuses_what_does_not_apply(tiny_kolors, tmp_path, capsys):
    """``diffkit sample --checkpoint KOLORS``: by default euler on the EulerDiscreteScheduler's timesteps (the
    pipeline's loop, above), the grid byte for byte text_to_image's; SD-XL's CLIP and add-on flags in one line."""
    from diffkit.cli import main
    from diffkit.images import save_grid
    from _pixart_helpers import assert_sample_refusals
    _, folder, kolors = tiny_kolors
    out = tmp_path / "grid.png"
    with stub_sentencepiece():
        assert main(["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num",
                     "2", "--nrow", "1", "--steps", "2", "--seed", "5", "--batch-size", "2", "--negative-prompt",
                     "ugly", "--guidance-scale", "3", "--guidance-convention", "diffusers", "--pag-scale", "1",
                     "--out", str(out), "--no-progress"]) == 0
    assert "euler, Stable Diffusion folder" in capsys.readouterr().out
    images = text_to_image(kolors, PROMPTS, sampler="euler", grid="scheduler", steps=2, seed=5, guidance_scale=3.0,
                           negative_prompt="ugly", pag_scale=1.0, output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    embedding = tmp_path / "embedding.safetensors"
    embedding.write_bytes(b"")
    assert_sample_refusals(main, folder, tmp_path, capsys, [
        (["--prompt-2", "a dog"], "--prompt-2 does not apply to a Kolors folder"),
        (["--clip-skip", "1"], "--clip-skip does not apply to a Kolors folder"),
        (["--textual-inversion", str(embedding)], "--textual-inversion does not apply to a Kolors folder"),
        (["--scheduler", "lcm"], "--scheduler does not apply to a Kolors folder")])


def test_edit_command_is_the_img2img_pipeline(tiny_kolors, tmp_path, capsys):
    """``diffkit edit --checkpoint KOLORS --prompt --negative-prompt`` on PNGs: KolorsImg2ImgPipeline's images (to
    the PNGs' 1/255; euler on leading timesteps, its scheduler with steps_offset 0 as diffkit's grid), image i from
    seed + i; --mask and --pag-scale (no Kolors inpainting or PAG img2img pipeline) refused in one line."""
    import numpy as np
    from PIL import Image
    from diffusers.pipelines.kolors import KolorsImg2ImgPipeline
    from test_latent_editing import cli, write_pngs
    pipe, folder, _ = tiny_kolors
    pngs = write_pngs(tmp_path / "in", 2, 16, "RGB")
    with stub_sentencepiece():
        code, out, err = cli(capsys, "--checkpoint", folder, "--images", pngs, "--prompt", PROMPTS[0], "--prompt",
                             PROMPTS[1], "--negative-prompt", "ugly", "--strength", 0.5, "--steps", 4, "--sampler",
                             "euler", "--spacing", "leading", "--final", "zero", "--seed", 10, "--batch-size", 2,
                             "--out", tmp_path / "out")
    assert code == 0, err
    image = torch.stack([torch.from_numpy(np.array(Image.open(pngs / f"in_{i}.png"))).permute(2, 0, 1)
                         for i in range(2)]).float() / 255
    scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, steps_offset=0)
    img2img = KolorsImg2ImgPipeline(**{**pipe.components, "scheduler": scheduler})
    img2img.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = img2img(PROMPTS, image=image, strength=0.5, num_inference_steps=4, negative_prompt=["ugly"] * 2,
                         output_type="np", generator=[torch.Generator().manual_seed(s) for s in (10, 11)]).images
    ours = np.stack([np.asarray(Image.open(tmp_path / "out" / f"edit_{i:05d}.png")) for i in range(2)])
    assert np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1
    for extra, expected in ((["--mask", pngs / "in_0.png"], "--mask does not apply to a Kolors folder"),
                            (["--pag-scale", 2], "--pag-scale does not apply to a Kolors folder")):
        code, _, err = cli(capsys, "--checkpoint", folder, "--images", pngs, "--prompt", "hot", *extra, "--out",
                           tmp_path / "never")
        assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "never").exists()


def test_kolors_lora_is_load_lora_weights_and_fuse_lora(tiny_kolors, tmp_path, capsys):
    """A UNet LoRA file (``KolorsPipeline.save_lora_weights``; attention, conv1, proj_in, rank / alpha patterns)
    merged at s = 0.7 is the pipeline's ``load_lora_weights`` + ``fuse_lora(lora_scale=0.7)`` (same z_0 from the same
    latents), also through ``diffkit sample --lora FILE:0.7``; a file adapting the text encoder in one line."""
    import copy
    from safetensors.torch import save_file
    from diffusers.pipelines.kolors import KolorsPipeline
    from diffkit.cli import main
    from diffkit.interop.kolors import load_kolors
    from test_sd_lora import UNET_LORA, _add_lora, fuse_loras
    pipe, folder, _ = tiny_kolors
    state, meta = _add_lora(copy.deepcopy(pipe.unet), 5, **UNET_LORA)
    KolorsPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=state, unet_lora_adapter_metadata=meta,
                                     weight_name="lora.safetensors")
    lora = tmp_path / "lora" / "lora.safetensors"
    with stub_sentencepiece():
        theirs_pipe = KolorsPipeline.from_pretrained(folder, local_files_only=True)
        ours = load_kolors(folder, progress=False, lora=[(lora, 0.7)])
    theirs_pipe.set_progress_bar_config(disable=True)
    fuse_loras(theirs_pipe, [(lora, 0.7)])
    with torch.no_grad():
        theirs = theirs_pipe(PROMPTS, num_inference_steps=2, latents=_latents(), output_type="latent").images
    z0 = text_to_image(ours, PROMPTS, sampler="euler", grid="scheduler", steps=2, latents=_latents(),
                       return_latents=True)
    plain = text_to_image(tiny_kolors[2], PROMPTS,
                          sampler="euler", grid="scheduler", steps=2, latents=_latents(), return_latents=True)
    assert relative_error(plain, theirs) > 1e-3 and relative_error(z0, theirs) < 1e-5
    with stub_sentencepiece():
        assert main(["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--num", "1", "--steps", "2",
                     "--lora", f"{lora}:0.7", "--out", str(tmp_path / "grid.png"), "--no-progress"]) == 0
    save_file({"text_encoder.encoder.layers.0.mlp.dense_4h_to_h.lora_A.weight": torch.zeros(2, 37),
               "text_encoder.encoder.layers.0.mlp.dense_4h_to_h.lora_B.weight": torch.zeros(32, 2)},
              tmp_path / "te.safetensors")
    with pytest.raises(DiffkitError, match=r"te.safetensors adapts a text encoder \(text_encoder. keys\); allowed"):
        load_kolors(folder, progress=False, lora=[tmp_path / "te.safetensors"])


def test_size_flags_are_the_pipelines(tiny_kolors, tmp_path, capsys):
    """``--original-size`` / ``--crops-coords-top-left`` / ``--target-size`` and the ``--negative-`` pair on a Kolors
    folder: text_to_image with that micro_conditioning is KolorsPipeline with those arguments, and latent_img2img
    with prompt_guidance's KolorsImg2ImgPipeline (its null time ids: KolorsPipeline's rule; one prompt, the
    pipelines' negative time ids pair with their rows only for B = 1), 1e-5 relative."""
    from diffkit.latent_editing import latent_img2img
    from diffusers.pipelines.kolors import KolorsImg2ImgPipeline
    pipe, folder, kolors = tiny_kolors
    micro = dict(original_size=(64, 48), crops_coords_top_left=(3, 5), target_size=(16, 12),
                 negative_original_size=(8, 8), negative_target_size=(32, 16), negative_crops_coords_top_left=(1, 2))
    latents = _latents()[:1]
    with torch.no_grad():
        theirs = pipe(PROMPTS[:1], num_inference_steps=STEPS, latents=latents.clone(), output_type="latent",
                      **micro).images
    run = dict(sampler="euler", steps=STEPS, grid="scheduler", return_latents=True)
    ours = text_to_image(kolors, PROMPTS[:1], latents=latents, micro_conditioning=micro, **run)
    plain = text_to_image(kolors, PROMPTS[:1], latents=latents, **run)
    print("kolors sizes", relative_error(ours, theirs), relative_error(plain, theirs))
    assert relative_error(ours, theirs) < 1e-5 and relative_error(plain, theirs) > 1e-3
    img2img = KolorsImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = img2img(PROMPTS[:1], image=image, strength=0.5, num_inference_steps=STEPS, output_type="latent",
                         generator=[torch.Generator().manual_seed(10)], **micro).images
    guided, cond = kolors.prompt_guidance(PROMPTS[:1], None, 5.0, "diffusers", 0.0, image_size=(16, 16),
                                          micro_conditioning=micro, img2img=True)
    ours = latent_img2img(guided, kolors, image * 2 - 1, 0.5, "euler", STEPS, posterior="sample", seed=10, cond=cond,
                          progress=False, return_latents=True, spacing="leading", final="zero", steps_offset=1)
    print("kolors img2img sizes", relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5


def test_size_flags_on_the_commands(tiny_kolors, tmp_path, capsys):
    """The flags of :func:`test_size_flags_are_the_pipelines`: ``diffkit sample``'s grid byte for byte the library's;
    ``diffkit edit``'s PNG KolorsImg2ImgPipeline's with them (to 1/255)."""
    import numpy as np
    from PIL import Image
    from diffkit.cli import main
    from diffkit.images import save_grid
    from diffusers.pipelines.kolors import KolorsImg2ImgPipeline
    from test_latent_editing import cli, write_pngs
    pipe, folder, kolors = tiny_kolors
    micro = dict(original_size=(64, 48), crops_coords_top_left=(3, 5), target_size=(16, 12),
                 negative_original_size=(8, 8), negative_target_size=(32, 16), negative_crops_coords_top_left=(1, 2))
    flags = ["--original-size", "64,48", "--crops-coords-top-left", "3,5", "--target-size", "16,12",
             "--negative-original-size", "8,8", "--negative-target-size", "32,16", "--negative-crops-coords-top-left",
             "1,2"]
    with stub_sentencepiece():
        assert main(["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--num", "1", "--steps", "2",
                     "--seed", "5", "--batch-size", "1", "--no-progress", "--out", str(tmp_path / "grid.png"),
                     *flags]) == 0
    images = text_to_image(kolors, PROMPTS[:1], sampler="euler", grid="scheduler", steps=2, seed=5,
                           micro_conditioning=micro, output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 8)
    assert (tmp_path / "grid.png").read_bytes() == (tmp_path / "expected.png").read_bytes()
    pngs = write_pngs(tmp_path / "in", 1, 16, "RGB")
    with stub_sentencepiece():
        code, _, err = cli(capsys, "--checkpoint", folder, "--images", pngs, "--prompt", PROMPTS[0], "--strength",
                           0.5, "--steps", 4, "--sampler", "euler", "--spacing", "leading", "--final", "zero",
                           "--seed", 10, "--out", tmp_path / "out", *flags)
    assert code == 0, err
    image = torch.from_numpy(np.array(Image.open(pngs / "in_0.png"))).permute(2, 0, 1)[None].float() / 255
    scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, steps_offset=0)
    img2img = KolorsImg2ImgPipeline(**{**pipe.components, "scheduler": scheduler})
    img2img.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = img2img(PROMPTS[:1], image=image, strength=0.5, num_inference_steps=4, output_type="np",
                         generator=[torch.Generator().manual_seed(10)], **micro).images
    ours = np.asarray(Image.open(tmp_path / "out" / "edit_00000.png")).astype(int)
    assert np.abs(ours - np.round(theirs[0] * 255).astype(int)).max() <= 1
