"""SD-XL folders (diffkit.interop.sd_xl): diffkit's text_to_image against diffusers' own
StableDiffusionXLPipeline on a tiny random pipeline written by save_pretrained (nothing downloaded)."""
import json
import re
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image  # noqa: E402

from test_interop_diffusers import relative_error, sd_ddim_scheduler, tiny_sd_components  # noqa: E402

PROMPTS = ["a photo of a cat", "hot"]


def tiny_sd_xl_unet(cross_attention_dim: int, added_inputs: int, in_channels: int = 4, layers_per_block: int = 1):
    """A tiny random SD-XL UNet (addition_embed_type="text_time", addition_time_embed_dim 8) of that context
    width and added-embedding input width (time ids x 8 + the pooled projection's width); ``in_channels=9``: an
    inpainting UNet (latents, mask, masked-image latents); ``layers_per_block=2``: ControlNet-XS's fused UNet."""
    return diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=layers_per_block, sample_size=8, in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8, norm_num_groups=8, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=added_inputs, cross_attention_dim=cross_attention_dim)


def tiny_sd_xl_pipeline(root, force_zeros_for_empty_prompt=True):
    """A tiny random StableDiffusionXLPipeline: the VAE, tokenizer and first text encoder (hidden 32) of
    :func:`tiny_sd_components`; a second CLIPTextModelWithProjection of other sizes (hidden 24,
    projection 20) with a tokenizer padding with "!" (as SD-XL's tokenizer_2); a UNet with
    addition_embed_type="text_time", cross_attention_dim 32 + 24 and an added embedding of
    6 * 8 + 20 inputs; SD-XL's VAE scaling factor 0.13025."""
    _, vae, text_encoder, tokenizer = tiny_sd_components(root)
    vae.register_to_config(scaling_factor=0.13025, force_upcast=True)
    tokenizer_2 = transformers.CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=16,
                                             pad_token="!")
    torch.manual_seed(1)
    text_encoder_2 = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=24, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=3, vocab_size=text_encoder.config.vocab_size, max_position_embeddings=16, projection_dim=20))
    unet = tiny_sd_xl_unet(cross_attention_dim=56, added_inputs=68)
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=sd_ddim_scheduler(),
        force_zeros_for_empty_prompt=force_zeros_for_empty_prompt, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_xl(tmp_path_factory):
    """(pipeline, folder, loaded StableDiffusionXL) with force_zeros_for_empty_prompt=True, and the
    folder of the same pipeline with it False."""
    root = tmp_path_factory.mktemp("tiny_xl")
    pipe = tiny_sd_xl_pipeline(root)
    pipe.save_pretrained(root / "xl")
    pipe.register_to_config(force_zeros_for_empty_prompt=False)
    pipe.save_pretrained(root / "xl_no_zeros")
    pipe.register_to_config(force_zeros_for_empty_prompt=True)
    return pipe, root, load_stable_diffusion(root / "xl", progress=False)


def _latents(sd, batch=2, seed=7):
    return torch.randn(sd.latent_shape(batch), generator=torch.Generator().manual_seed(seed))


def _theirs(pipe, scheduler, latents, steps=4, scale=5.0, force_zeros=True, output_type="latent", prompts=PROMPTS,
            **kw):
    pipe.scheduler = scheduler
    pipe.register_to_config(force_zeros_for_empty_prompt=force_zeros)
    try:
        with torch.no_grad():
            return pipe(prompts, num_inference_steps=steps, guidance_scale=scale, latents=latents.clone(),
                        output_type=output_type, **kw).images
    finally:
        pipe.register_to_config(force_zeros_for_empty_prompt=True)


def test_sd_xl_folder_loads_and_encodes_as_the_pipeline(tiny_xl):
    pipe, _, xl = tiny_xl
    assert type(xl).__name__ == "StableDiffusionXL" and xl.force_zeros_for_empty_prompt
    assert xl.scaling_factor == 0.13025 and xl.latent_shape(2) == (2, 4, 8, 8) and xl.default_guidance_scale == 5.0
    context, pooled = xl.encode_prompts_xl(PROMPTS)
    theirs, _, theirs_pooled, _ = pipe.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=False)
    assert context.shape == (2, 16, 56) and pooled.shape == (2, 20)
    torch.testing.assert_close(context, theirs, rtol=0, atol=0)
    torch.testing.assert_close(pooled, theirs_pooled, rtol=0, atol=0)
    assert xl.time_ids((16, 16), (0, 0), (16, 16)).tolist() == [16, 16, 0, 0, 16, 16]
    none = dict.fromkeys(("original_size", "crops_coords_top_left", "target_size", "negative_original_size"))
    _, cond = xl.prompt_guidance(PROMPTS, None, 5.0, "diffusers", 0.0, image_size=(16, 8), micro_conditioning=none)
    assert cond["time_ids"].tolist() == [[16, 8, 0, 0, 16, 8]] * 2  # None is the default, as the pipeline's
    # the null half: zeros for no negative prompt (force_zeros_for_empty_prompt), an explicit "" is encoded
    for negative in (None, ""):
        _, theirs_null, _, theirs_null_pooled = pipe.encode_prompt(PROMPTS, device="cpu", negative_prompt=negative)
        guided, _ = xl.prompt_guidance(PROMPTS, negative, 5.0, "diffusers", 0.0, image_size=(16, 16))
        torch.testing.assert_close(guided.null_context.expand_as(theirs_null), theirs_null, rtol=0, atol=1e-6)
        torch.testing.assert_close(guided.null_cond["text_embeds"].expand_as(theirs_null_pooled), theirs_null_pooled,
                                   rtol=0, atol=1e-6)
        assert (theirs_null.abs().max() == 0) == (negative is None)


@pytest.mark.parametrize("scheduler, sampler, kw", [
    ("ddim", "ddim", {}),
    ("ddim", "ddim", {"negative_prompt": "ugly"}),
    ("ddim", "ddim", {"guidance_rescale": 0.7}),
    ("euler", "euler", {}),
])
def test_sd_xl_matches_the_pipeline(tiny_xl, scheduler, sampler, kw):
    """Same z_0 as StableDiffusionXLPipeline (DDIM eta 0 / Euler on the scheduler's timesteps, CFG
    s = 5, the same latents): empty negative zeroed (force_zeros_for_empty_prompt), a negative prompt,
    guidance rescale."""
    pipe, _, xl = tiny_xl
    latents = _latents(xl)
    if scheduler == "ddim":
        sched = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
        grid = "scheduler"
    else:
        sched = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="leading")
        sched.set_timesteps(4)  # SD-XL's: z_T = latents * init_noise_sigma / sqrt(sigma_max^2 + 1) = latents
        from diffkit.interop.schedulers import grid_from_diffusers
        grid = grid_from_diffusers(sched)
    theirs = _theirs(pipe, sched, latents, **kw)
    ours = text_to_image(xl, PROMPTS, sampler=sampler, steps=4, grid=grid, guidance_scale=5.0, latents=latents,
                         return_latents=True, **kw)
    assert relative_error(ours, theirs) < 1e-5


def test_sd_xl_freeu_matches_the_pipelines_enable_freeu(tiny_xl):
    """``text_to_image(xl, freeu=...)`` is StableDiffusionXLPipeline with ``enable_freeu(s1, s2, b1, b2)`` (its
    UNet's first two up blocks), and FreeU is off again after the call."""
    pipe, _, xl = tiny_xl
    latents, sched = _latents(xl), diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.enable_freeu(s1=0.9, s2=0.2, b1=1.5, b2=1.6)
    try:
        theirs = _theirs(pipe, sched, latents)
    finally:
        pipe.disable_freeu()
    run = dict(sampler="ddim", steps=4, grid="scheduler", guidance_scale=5.0, latents=latents, return_latents=True)
    ours = text_to_image(xl, PROMPTS, freeu="1.5,1.6,0.9,0.2", **run)
    assert relative_error(ours, theirs) < 1e-5
    assert relative_error(text_to_image(xl, PROMPTS, **run), theirs) > 1e-3  # FreeU mattered, and is off again


def test_sd_xl_empty_negative_without_force_zeros_and_images(tiny_xl):
    """force_zeros_for_empty_prompt=False (model_index.json): the empty prompt's embeddings are the
    null half's; and the decoded images equal the pipeline's (output_type="pt")."""
    pipe, root, _ = tiny_xl
    xl = load_stable_diffusion(root / "xl_no_zeros", progress=False)
    assert not xl.force_zeros_for_empty_prompt
    latents = _latents(xl)
    sched = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    theirs = _theirs(pipe, sched, latents, force_zeros=False)
    ours = text_to_image(xl, PROMPTS, steps=4, grid="scheduler", guidance_scale=5.0, latents=latents,
                         return_latents=True)
    assert relative_error(ours, theirs) < 1e-5
    zeroed = _theirs(pipe, sched, latents)
    assert relative_error(zeroed, theirs) > 1e-3  # the two null conditions differ
    images = _theirs(pipe, sched, latents, force_zeros=False, output_type="pt")
    ours = text_to_image(xl, PROMPTS, steps=4, grid="scheduler", guidance_scale=5.0, latents=latents)
    torch.testing.assert_close(ours, images, rtol=0, atol=1e-5)


def test_sd_xl_micro_conditioning_matches_the_pipeline(tiny_xl):
    """original_size, crops_coords_top_left, target_size as the pipeline's; the negative ones with one
    prompt (for B > 1 the pipeline's ``add_time_ids.repeat(B, 1)`` interleaves [negative, positive] rows
    against its [negatives..., positives...] embeddings; diffkit gives each half its own ids)."""
    pipe, _, xl = tiny_xl
    sched = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    micro = dict(original_size=(64, 48), crops_coords_top_left=(3, 5), target_size=(16, 12))
    negative = dict(negative_original_size=(8, 8), negative_target_size=(32, 16),
                    negative_crops_coords_top_left=(1, 2))
    for batch, conditions in ((2, micro), (1, {**micro, **negative})):
        latents = _latents(xl, batch)
        theirs = _theirs(pipe, sched, latents, prompts=PROMPTS[:batch], **conditions)
        ours = text_to_image(xl, PROMPTS[:batch], steps=4, grid="scheduler", guidance_scale=5.0, latents=latents,
                             return_latents=True, micro_conditioning=conditions)
        assert relative_error(ours, theirs) < 1e-5
        plain = text_to_image(xl, PROMPTS[:batch], steps=4, grid="scheduler", guidance_scale=5.0, latents=latents,
                              return_latents=True, micro_conditioning=micro if batch == 1 else None)
        assert relative_error(plain, theirs) > 1e-3
    with pytest.raises(DiffkitError, match=r"negative_original_size=\(8, 8\) is not allowed alone: .*target_size"):
        text_to_image(xl, PROMPTS, steps=2, micro_conditioning={"negative_original_size": (8, 8)})
    with pytest.raises(DiffkitError, match=r"original_size=\(8,\) is not allowed"):
        text_to_image(xl, PROMPTS, steps=2, micro_conditioning={"original_size": (8,)})
    with pytest.raises(DiffkitError, match="keys \\['aesthetic'\\] are not allowed"):
        text_to_image(xl, PROMPTS, steps=2, micro_conditioning={"aesthetic": 6.0})
    with pytest.raises(DiffkitError, match="aesthetic_score=6.0 is not allowed: aesthetic scores condition a refiner"):
        text_to_image(xl, PROMPTS, steps=2, micro_conditioning={"aesthetic_score": 6.0})  # a base's UNet


def test_sd_xl_folder_through_diffkit_edit_with_freeu(tiny_xl, tmp_path, capsys):
    """``diffkit edit --checkpoint SDXL --freeu B1,B2,S1,S2``: StableDiffusionXLImg2ImgPipeline's image with its
    UNet's ``enable_freeu`` (to the PNG's 1/255); the same edit without --freeu is another image."""
    import numpy as np
    from PIL import Image
    from test_latent_editing import cli, write_pngs
    pipe, root, _ = tiny_xl
    pngs = write_pngs(tmp_path / "in", 1, 16, "RGB")
    args = ("--checkpoint", root / "xl", "--images", pngs, "--prompt", PROMPTS[0], "--strength", 0.5, "--steps", 4,
            "--spacing", "leading", "--final", "zero", "--seed", 10)
    code, _, err = cli(capsys, *args, "--freeu", "1.5,1.6,0.9,0.2", "--out", tmp_path / "out")
    assert code == 0, err
    image = torch.from_numpy(np.array(Image.open(pngs / "in_0.png"))).permute(2, 0, 1)[None].float() / 255
    scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, steps_offset=0, set_alpha_to_one=True)
    img2img = diffusers.StableDiffusionXLImg2ImgPipeline(**{**pipe.components, "scheduler": scheduler},
                                                         requires_aesthetics_score=False, add_watermarker=False)
    img2img.set_progress_bar_config(disable=True)
    img2img.enable_freeu(s1=0.9, s2=0.2, b1=1.5, b2=1.6)
    try:
        with torch.no_grad():
            theirs = img2img(PROMPTS[:1], image=image, strength=0.5, num_inference_steps=4, guidance_scale=5.0,
                             output_type="np", generator=[torch.Generator().manual_seed(10)]).images
    finally:
        img2img.disable_freeu()  # the module's pipeline (its UNet) as it was
    ours = np.asarray(Image.open(tmp_path / "out" / "edit_00000.png")).astype(int)
    assert np.abs(ours - np.round(theirs[0] * 255).astype(int)).max() <= 1
    code, _, err = cli(capsys, *args, "--out", tmp_path / "plain")
    assert code == 0, err
    assert np.abs(ours - np.asarray(Image.open(tmp_path / "plain" / "edit_00000.png")).astype(int)).max() > 8


def test_sd_xl_every_sampler_runs(tiny_xl):
    _, _, xl = tiny_xl
    for name in ("dpm-solver++-2m", "euler-ancestral", "unipc", "heun", "pndm-skip-prk"):
        images = text_to_image(xl, ["a photo"], sampler=name, steps=3, seed=1, output_range="-1,1")
        assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all(), name


def test_sample_command_runs_an_sd_xl_folder(tiny_xl, tmp_path, capsys):
    """`diffkit sample --checkpoint SDXL_FOLDER --prompt ... --negative-prompt ...`: the grid of
    text_to_image's images (byte for byte), which are the pipeline's on the same z_T and timesteps
    (PNG levels within half a level); default guidance s = 5."""
    from diffkit.cli import main
    from diffkit.images import save_grid
    from diffkit.noise import generators_from_seed, randn
    from diffkit.sampling import sampler_grid
    from diffkit.samplers.registry import get_sampler
    from PIL import Image
    import numpy as np
    pipe, root, xl = tiny_xl
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(root / "xl"), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1],
                 "--negative-prompt", "ugly", "--num", "2", "--nrow", "1", "--steps", "4", "--seed", "5",
                 "--batch-size", "2", "--out", str(out), "--no-progress"]) == 0
    prompts = PROMPTS  # one row per prompt, sample i from seed + i
    latents = randn(xl.latent_shape(2), generators_from_seed(5, 2))
    images = text_to_image(xl, prompts, steps=4, seed=5, negative_prompt="ugly", output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    grid = sampler_grid(xl.denoiser, get_sampler("ddim"), 4)  # DDIM = Euler on x / alpha: the pipeline's Euler
    assert grid[-1] == -1 and (grid[:-1] == grid[:-1].round()).all()
    sched = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="leading")
    theirs = _theirs(pipe, sched, latents, output_type="np", prompts=prompts, negative_prompt="ugly",
                     timesteps=grid[:-1].long().tolist())
    save_grid(torch.from_numpy(theirs).permute(0, 3, 1, 2) * 2 - 1, tmp_path / "theirs.png", 1)
    ours, ref = (np.asarray(Image.open(p), dtype=np.float64) for p in (out, tmp_path / "theirs.png"))
    assert np.abs(ours - ref).max() <= 1  # round(255 x) of values 1e-5 apart: at most one level where one rounds up
    assert np.abs((images.permute(0, 2, 3, 1).numpy() + 1) / 2 - theirs).max() < 0.5 / 255  # within half a level
    capsys.readouterr()


def test_what_sd_xl_does_not_support_is_refused_in_one_line(tiny_xl, tmp_path, capsys):
    """A base UNet in a refiner-style folder (refiners: tests/test_sd_xl_refiner.py), a VAE with latents_mean, a
    missing text_encoder_2, a 9-channel SD-XL inpainting UNet without --mask (it only inpaints:
    tests/test_sd_xl_inpaint.py): one line each, before any weight or output (LoRA files and textual
    inversion: tests/test_sd_xl_lora.py; ControlNet: tests/test_controlnet_sd_xl.py; IP-Adapter:
    tests/test_ip_adapter_sd_xl.py; LCMScheduler folders and --scheduler lcm|tcd: tests/test_lcm_sd_xl.py)."""
    from diffkit.cli import main
    from diffkit.commands.sample import GuidanceRequest, sample_to_files
    from diffkit.interop.sd_xl import load_sd_xl
    _, root, xl = tiny_xl
    (tmp_path / "x.safetensors").write_bytes(b"")
    (tmp_path / "images").mkdir()
    shutil.copytree(root / "xl", tmp_path / "xl9")
    unet_config = json.loads((tmp_path / "xl9" / "unet" / "config.json").read_text())
    (tmp_path / "xl9" / "unet" / "config.json").write_text(json.dumps({**unet_config, "in_channels": 9}))
    for argv, match in (
            (["edit", "--checkpoint", str(tmp_path / "xl9"), "--images", str(tmp_path / "images"), "--prompt", "hot",
              "--steps", "2"], "has an inpainting UNet .* it only inpaints; give --mask PNG"),):
        assert main(argv + ["--out", str(tmp_path / "out" / "o.png"), "--no-progress"]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), err
        assert not (tmp_path / "out").exists()
    with pytest.raises(DiffkitError, match="--negative-prompt applies to a Stable Diffusion folder"):
        sample_to_files(tmp_path / "none.safetensors", guidance=GuidanceRequest(negative_prompt="x"))
    index = json.loads((root / "xl" / "model_index.json").read_text())
    for name, change, match in (
            ("refiner", {"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None],
                         "tokenizer": [None, None], "requires_aesthetics_score": True},
             r"cross_attention_dim=56 is not the text encoders' hidden sizes 24 \(text_encoder_2 alone\)"),
            ("no_te2", {"text_encoder_2": [None, None]}, "lacks the SD-XL component"),
            ("vae", {}, "VAE with latents_mean")):
        shutil.copytree(root / "xl", tmp_path / name)
        (tmp_path / name / "model_index.json").write_text(json.dumps({**index, **change}))
        if name == "vae":
            config = json.loads((tmp_path / name / "vae" / "config.json").read_text())
            (tmp_path / name / "vae" / "config.json").write_text(json.dumps(
                {**config, "latents_mean": [0.0] * 4, "latents_std": [1.0] * 4}))
        with pytest.raises(DiffkitError, match=match):
            load_sd_xl(tmp_path / name, progress=False)
    with pytest.raises(DiffkitError, match="needs the null half's context, text_embeds and time_ids"):
        xl.guided(5.0, torch.zeros(1, 16, 56))
    from diffkit.interop.stable_diffusion import StableDiffusion
    with pytest.raises(DiffkitError, match="micro_conditioning=.* is not allowed: it is SD-XL's"):
        StableDiffusion.prompt_guidance(None, ["hot"], None, 5.0, "diffusers", 0.0,
                                        micro_conditioning={"original_size": (8, 8)})  # refused before any use


def test_a_unet_that_does_not_fit_the_encoders_is_refused(tiny_xl):
    """cross_attention_dim = d_1 + d_2 and the added embedding's 6 * addition_time_embed_dim + projection_dim
    inputs (the pipeline's _get_add_time_ids check): one line naming the values."""
    import dataclasses
    from types import SimpleNamespace
    from diffkit.interop.sd_xl import _check_dimensions
    xl = tiny_xl[2]
    _check_dimensions(xl, "xl")  # 56 = 32 + 24, 68 = 6 * 8 + 20
    for config, match in (({"cross_attention_dim": 64, "addition_time_embed_dim": 8},
                           r"cross_attention_dim=64 is not the text encoders' hidden sizes 32 \+ 24"),
                          ({"cross_attention_dim": 56, "addition_time_embed_dim": 7},
                           r"added embedding takes 68 inputs, not .* = 62")):
        unet = SimpleNamespace(config=SimpleNamespace(**config), add_embedding=xl.unet.add_embedding)
        with pytest.raises(DiffkitError, match=match):
            _check_dimensions(dataclasses.replace(xl, unet=unet), "xl")


def test_null_cond_swaps_only_the_null_half():
    """ClassifierFreeGuidance(null_cond={key: value}): the unconditional pass gets ``value`` for ``key``
    (rows broadcast), the conditional pass the cond's own: eps = eps_c + w (eps_c - eps_u) with
    eps_u computed from the null values directly; without null_cond the key is shared."""
    from diffkit.denoiser import Denoiser
    from diffkit.guidance import ClassifierFreeGuidance
    from diffkit.schedule import NoiseSchedule

    class Net(torch.nn.Module):
        def forward(self, x, t, context=None, text_embeds=None, y=None):
            return x * context.mean((1, 2))[:, None, None, None] + text_embeds.sum(1)[:, None, None, None]

    den = Denoiser(Net(), NoiseSchedule.linear(100), "epsilon")
    x, t = torch.randn(2, 1, 2, 2), torch.tensor([50.0, 50.0])
    cond = {"context": torch.randn(2, 3, 4), "text_embeds": torch.randn(2, 5), "y": torch.zeros(2, dtype=torch.long)}
    null = {"context": torch.randn(1, 3, 4), "text_embeds": torch.randn(1, 5)}
    guided = ClassifierFreeGuidance(den, 3.0, "diffusers", null_class=1, null_context=null["context"],
                                    null_cond={"text_embeds": null["text_embeds"]})(x, t, **cond)
    eps_c = den(x, t, context=cond["context"], text_embeds=cond["text_embeds"]).eps
    eps_u = den(x, t, context=null["context"].expand(2, -1, -1), text_embeds=null["text_embeds"].expand(2, -1)).eps
    torch.testing.assert_close(guided.eps, eps_u + 3.0 * (eps_c - eps_u), rtol=1e-6, atol=1e-6)
    shared = ClassifierFreeGuidance(den, 3.0, "diffusers", null_class=1, null_context=null["context"])(x, t, **cond)
    eps_u = den(x, t, context=null["context"].expand(2, -1, -1), text_embeds=cond["text_embeds"]).eps
    torch.testing.assert_close(shared.eps, eps_u + 3.0 * (eps_c - eps_u), rtol=1e-6, atol=1e-6)


def test_a_float16_vae_with_force_upcast_decodes_in_float32(tiny_xl):
    """As the pipeline's upcast: the float16 weights, computed in float32; the VAE stays float16. So
    does encoding (StableDiffusionXLImg2ImgPipeline's prepare_latents: diffkit edit)."""
    import copy
    import dataclasses
    _, _, xl = tiny_xl
    half = copy.deepcopy(xl.vae).half()
    z = _latents(xl, 1)
    ours = dataclasses.replace(xl, vae=half).decode(z)
    assert half.dtype == torch.float16 and ours.dtype == torch.float32
    expected = dataclasses.replace(xl, vae=copy.deepcopy(half).float()).decode(z)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    ours = dataclasses.replace(xl, vae=half).encode(images, torch.Generator().manual_seed(4), sample=True)
    assert half.dtype == torch.float16
    expected = dataclasses.replace(xl, vae=copy.deepcopy(half).float()).encode(images, torch.Generator().manual_seed(4),
                                                                               sample=True)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_sd_xl_null_half_of_one_prompt_fits_any_slice_of_the_batch(tiny_xl):
    """diffkit edit hands the guided denoiser slices of the prompts' cond (--batch-size below the
    image count): with force_zeros_for_empty_prompt False the empty prompt's null half is one row, so
    image 1 alone is image 1 of the whole batch."""
    import dataclasses
    xl = dataclasses.replace(tiny_xl[2], force_zeros_for_empty_prompt=False)
    guided, cond = xl.prompt_guidance(PROMPTS, None, 5.0, "diffusers", 0.0, image_size=(16, 16))
    x, t = _latents(xl), torch.tensor([500.0, 500.0])
    whole = guided(x, t, **cond).eps
    alone = guided(x[1:], t[1:], **{key: value[1:] for key, value in cond.items()}).eps
    torch.testing.assert_close(alone, whole[1:], rtol=1e-5, atol=1e-5)


def test_sd_xl_img2img_is_the_img2img_pipeline(tiny_xl):
    """latent_img2img with prompt_guidance's denoiser and cond (time ids of the images' size) is
    StableDiffusionXLImg2ImgPipeline (requires_aesthetics_score False, DDIM, the same generators)."""
    from diffkit.latent_editing import latent_img2img
    pipe, _, xl = tiny_xl
    parts = {**pipe.components, "scheduler": diffusers.DDIMScheduler.from_config(pipe.scheduler.config)}
    img2img = diffusers.StableDiffusionXLImg2ImgPipeline(**parts, requires_aesthetics_score=False,
                                                         add_watermarker=False)
    img2img.set_progress_bar_config(disable=True)
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    guided, cond = xl.prompt_guidance(PROMPTS, None, 5.0, "diffusers", 0.0, image_size=(16, 16))
    for strength in (0.5, 0.4):  # 0.4: the pipeline's int(steps * strength) = 1 of 4 steps (not round: 2)
        with torch.no_grad():
            theirs = img2img(PROMPTS, image=image, strength=strength, num_inference_steps=4, guidance_scale=5.0,
                             output_type="latent",
                             generator=[torch.Generator().manual_seed(s) for s in (10, 11)]).images
        ours = latent_img2img(guided, xl, image * 2 - 1, strength, "ddim", 4, posterior="sample", seed=10, cond=cond,
                              progress=False, return_latents=True, spacing="leading", final="sigma_min",
                              steps_offset=1, eta=0.0)
        assert relative_error(ours, theirs) < 1e-5


def test_sd_xl_folder_through_diffkit_edit_is_the_img2img_pipeline(tiny_xl, tmp_path, capsys):
    """``diffkit edit --checkpoint SDXL --prompt --negative-prompt`` on PNGs: StableDiffusionXLImg2ImgPipeline's
    images with its negative_prompt (to the PNGs' 1/255), image i from seed + i, default s = 5; DDIM with
    steps_offset 0 and set_alpha_to_one (the zeroed null half: test_sd_xl_img2img_is_the_img2img_pipeline)."""
    import numpy as np
    from PIL import Image
    from test_latent_editing import cli, write_pngs
    pipe, root, _ = tiny_xl
    pngs = write_pngs(tmp_path / "in", 2, 16, "RGB")
    code, out, err = cli(capsys, "--checkpoint", root / "xl", "--images", pngs, "--prompt", PROMPTS[0], "--prompt",
                         PROMPTS[1], "--negative-prompt", "ugly", "--strength", 0.5, "--steps", 4, "--spacing",
                         "leading", "--final", "zero", "--seed", 10, "--batch-size", 2, "--out", tmp_path / "out")
    assert code == 0, err
    image = torch.stack([torch.from_numpy(np.array(Image.open(pngs / f"in_{i}.png"))).permute(2, 0, 1)
                         for i in range(2)]).float() / 255
    scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, steps_offset=0, set_alpha_to_one=True)
    img2img = diffusers.StableDiffusionXLImg2ImgPipeline(**{**pipe.components, "scheduler": scheduler},
                                                         requires_aesthetics_score=False, add_watermarker=False)
    img2img.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = img2img(PROMPTS, image=image, strength=0.5, num_inference_steps=4, guidance_scale=5.0,
                         negative_prompt="ugly", output_type="np",
                         generator=[torch.Generator().manual_seed(s) for s in (10, 11)]).images
    ours = np.stack([np.asarray(Image.open(tmp_path / "out" / f"edit_{i:05d}.png")) for i in range(2)])
    assert np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1


def _xl_inpaint_pipeline(pipe):
    """StableDiffusionXLInpaintPipeline of the tiny SD-XL pipeline's components (4-channel base UNet, its DDIM)."""
    parts = {**pipe.components, "scheduler": diffusers.DDIMScheduler.from_config(pipe.scheduler.config)}
    inpaint = diffusers.StableDiffusionXLInpaintPipeline(**parts, add_watermarker=False)
    inpaint.set_progress_bar_config(disable=True)
    return inpaint


def test_sd_xl_inpainting_is_the_inpaint_pipeline(tiny_xl):
    """latent_inpaint with prompt_guidance's denoiser and cond (time ids of the images' size, H != W) is
    StableDiffusionXLInpaintPipeline with the 4-channel base UNet (DDIM, s = 5, the same generators: the
    image's posterior sample, then the noise): the mask binarised (0.7 -> 1) and nearest to the latent size,
    the kept region re-noised to the next timestep after each step; strength 1 from pure noise, 0.6 from the
    noised latents on int(4 * 0.6) = 2 steps. Latents to 1e-5 (relative), decoded images to 1e-5."""
    from diffkit.latent_editing import latent_inpaint
    pipe, _, xl = tiny_xl
    inpaint = _xl_inpaint_pipeline(pipe)
    image = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(2, 1, 16, 24)
    mask[:, :, 4:12, 3:17] = 1
    mask[1, :, :3] = 0.7  # binarised to 1 by both
    guided, cond = xl.prompt_guidance(PROMPTS, None, 5.0, "diffusers", 0.0, image_size=(16, 24))
    for strength, output in ((1.0, "latent"), (0.6, "latent"), (0.6, "pt")):
        with torch.no_grad():
            theirs = inpaint(PROMPTS, image=image, mask_image=mask, strength=strength, num_inference_steps=4,
                             guidance_scale=5.0, height=16, width=24, output_type=output,
                             generator=[torch.Generator().manual_seed(s) for s in (10, 11)]).images
        ours = latent_inpaint(guided, xl, image * 2 - 1, mask, "ddim", 4, strength=strength, posterior="sample",
                              seed=10, cond=cond, progress=False, return_latents=output == "latent",
                              spacing="leading", final="sigma_min", steps_offset=1, eta=0.0)
        if output == "pt":
            ours = ((ours + 1) / 2).clamp(0, 1)
        assert relative_error(ours, theirs) < 1e-5, (strength, output)


def test_sd_xl_folder_through_diffkit_edit_mask_is_the_library(tiny_xl, tmp_path, capsys):
    """``diffkit edit --checkpoint SDXL --images --mask --prompt``: each PNG within half a level of
    latent_inpaint's image (image i from seed + i, default strength 1, s = 5, posterior sample, time ids of the
    images' size); ``--paste-known`` keeps the black pixels of the input."""
    import numpy as np
    from PIL import Image
    from test_latent_editing import cli
    from test_sd_inpaint import _pngs
    from diffkit.latent_editing import latent_inpaint
    _, root, xl = tiny_xl
    pngs, mask_png, mask = _pngs(tmp_path)
    base = ["--checkpoint", root / "xl", "--images", pngs, "--mask", mask_png, "--prompt", "a cat", "--steps", 3,
            "--seed", 4]
    code, out, err = cli(capsys, *base, "--batch-size", 1, "--out", tmp_path / "out")
    assert code == 0, err
    assert "2 inpainted images" in out and "posterior sample" in out
    guided, cond = xl.prompt_guidance(["a cat"], None, 5.0, "diffusers", 0.0, image_size=(16, 16))
    for i in range(2):
        x = torch.from_numpy(np.array(Image.open(pngs / f"in_{i}.png"))).permute(2, 0, 1)[None].float() / 127.5 - 1
        edited = latent_inpaint(guided, xl, x, mask, "ddim", 3, posterior="sample", seed=4 + i, cond=cond,
                                progress=False)
        expected = (edited.clamp(-1, 1)[0].permute(1, 2, 0).numpy() + 1) * 127.5
        png = np.asarray(Image.open(tmp_path / "out" / f"edit_{i:05d}.png")).astype(float)
        assert np.abs(png - expected).max() <= 0.5 + 1e-3
    code, out, err = cli(capsys, *base, "--paste-known", "--out", tmp_path / "pasted")
    assert code == 0, err
    keep = mask[0, 0].numpy() < 0.5
    for i in range(2):
        pasted = np.asarray(Image.open(tmp_path / "pasted" / f"edit_{i:05d}.png"))
        original = np.asarray(Image.open(pngs / f"in_{i}.png"))
        assert np.array_equal(pasted[keep], original[keep]) and not np.array_equal(pasted, original)


SIZES = ("--original-size", "64,48", "--crops-coords-top-left", "3,5", "--target-size", "16,12")
MICRO = dict(original_size=(64, 48), crops_coords_top_left=(3, 5), target_size=(16, 12))


def test_sample_size_flags_are_the_library_and_the_pipeline(tiny_xl, tmp_path, capsys):
    """``diffkit sample --original-size --crops-coords-top-left --target-size --negative-original-size
    --negative-target-size --negative-crops-coords-top-left`` on an SD-XL folder: the grid byte for byte
    text_to_image's with that micro_conditioning (one prompt: the pipeline's negative time ids pair with its rows
    only for B = 1), whose latents are StableDiffusionXLPipeline's with those arguments (1e-5 relative); one
    negative alone, and the flags on a Stable Diffusion 1.x-style folder (sample and edit), in one line."""
    from diffkit.cli import main
    from diffkit.images import save_grid
    from diffkit.noise import generators_from_seed, randn
    from _pixart_helpers import assert_sample_refusals
    pipe, root, xl = tiny_xl
    negative = dict(negative_original_size=(8, 8), negative_target_size=(32, 16), negative_crops_coords_top_left=(1, 2))
    argv = ["sample", "--checkpoint", str(root / "xl"), "--prompt", PROMPTS[0], "--num", "1", "--steps", "4", "--seed",
            "5", "--batch-size", "1", "--no-progress", *SIZES, "--negative-original-size", "8,8",
            "--negative-target-size", "32,16", "--negative-crops-coords-top-left", "1,2"]
    assert main(argv + ["--out", str(tmp_path / "grid.png")]) == 0
    micro = {**MICRO, **negative}
    images = text_to_image(xl, PROMPTS[:1], steps=4, seed=5, micro_conditioning=micro, output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 8)
    assert (tmp_path / "grid.png").read_bytes() == (tmp_path / "expected.png").read_bytes()
    latents = randn(xl.latent_shape(1), generators_from_seed(5, 1))
    sched = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    theirs = _theirs(pipe, sched, latents, prompts=PROMPTS[:1], **micro)
    ours = text_to_image(xl, PROMPTS[:1], steps=4, grid="scheduler", latents=latents, return_latents=True,
                         micro_conditioning=micro)
    plain = text_to_image(xl, PROMPTS[:1], steps=4, grid="scheduler", latents=latents, return_latents=True,
                          micro_conditioning=MICRO)
    print("sample sizes", relative_error(ours, theirs), relative_error(plain, theirs))
    assert relative_error(ours, theirs) < 1e-5 and relative_error(plain, theirs) > 1e-3
    capsys.readouterr()
    assert_sample_refusals(main, root / "xl", tmp_path, capsys, [
        (["--negative-original-size", "8,8"], "--negative-original-size needs --negative-original-size and "
                                              "--negative-target-size together in diffkit sample")])
    sd = tmp_path / "sd"  # a Stable Diffusion 1.x-style index (no text_encoder_2): refused from its JSON
    shutil.copytree(root / "xl", sd, ignore=shutil.ignore_patterns("*.safetensors"))
    index = json.loads((sd / "model_index.json").read_text())
    index = {key: value for key, value in index.items() if not key.endswith("_2")}
    (sd / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionPipeline"}))
    refused = "--original-size applies to a HunyuanDiT, CogView4, CogView3-Plus, SD-XL or Kolors folder"
    assert_sample_refusals(main, sd, tmp_path, capsys, [(["--original-size", "8,8"], refused)])
    from test_latent_editing import cli
    code, _, err = cli(capsys, "--checkpoint", sd, "--images", tmp_path, "--prompt", "hot", "--target-size", "8,8",
                       "--out", tmp_path / "never")
    assert code == 2 and "--target-size in diffkit edit applies to an SD-XL or Kolors folder" in err, err


def _img2img(pipe):
    scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, steps_offset=0, set_alpha_to_one=True)
    img2img = diffusers.StableDiffusionXLImg2ImgPipeline(**{**pipe.components, "scheduler": scheduler},
                                                         requires_aesthetics_score=False, add_watermarker=False)
    img2img.set_progress_bar_config(disable=True)
    return img2img


def test_edit_size_flags_are_the_img2img_pipeline(tiny_xl, tmp_path, capsys):
    """``diffkit edit --original-size --crops-coords-top-left --target-size --negative-original-size`` on an SD-XL
    folder: StableDiffusionXLImg2ImgPipeline's image with those arguments (its null half: negative_original_size,
    the prompt's crop, negative_target_size defaulting to target_size; to the PNG's 1/255), and the library's
    prompt_guidance(img2img=True) its latents (1e-5 relative; with both negatives too, where the text-to-image rule
    would take negative_crops_coords_top_left (0, 0)); --negative-crops-coords-top-left (ignored by that pipeline),
    and negative sizes with --controlnet --mask or an InstructPix2Pix folder (pipelines without them), in one line."""
    import numpy as np
    from PIL import Image
    from diffkit.latent_editing import latent_img2img
    from test_latent_editing import cli, write_pngs
    pipe, root, xl = tiny_xl
    pngs = write_pngs(tmp_path / "in", 1, 16, "RGB")
    args = ("--checkpoint", root / "xl", "--images", pngs, "--prompt", PROMPTS[0], "--strength", 0.5, "--steps", 4,
            "--spacing", "leading", "--final", "zero", "--seed", 10)
    code, _, err = cli(capsys, *args, *SIZES, "--negative-original-size", "8,8", "--out", tmp_path / "out")
    assert code == 0, err
    image = torch.from_numpy(np.array(Image.open(pngs / "in_0.png"))).permute(2, 0, 1)[None].float() / 255
    img2img = _img2img(pipe)
    run = dict(image=image, strength=0.5, num_inference_steps=4, guidance_scale=5.0)
    with torch.no_grad():
        theirs = img2img(PROMPTS[:1], **run, output_type="np", generator=[torch.Generator().manual_seed(10)],
                         negative_original_size=(8, 8), **MICRO).images
    ours = np.asarray(Image.open(tmp_path / "out" / "edit_00000.png")).astype(int)
    assert np.abs(ours - np.round(theirs[0] * 255).astype(int)).max() <= 1
    grid = dict(posterior="sample", seed=10, progress=False, return_latents=True, spacing="leading", final="zero",
                steps_offset=0, eta=0.0)
    for negative in ({"negative_original_size": (8, 8)},
                     {"negative_original_size": (8, 8), "negative_target_size": (32, 16)}):
        with torch.no_grad():
            theirs = img2img(PROMPTS[:1], **run, output_type="latent", generator=[torch.Generator().manual_seed(10)],
                             **negative, **MICRO).images
        guided, cond = xl.prompt_guidance(PROMPTS[:1], None, 5.0, "diffusers", 0.0, image_size=(16, 16),
                                          micro_conditioning={**MICRO, **negative}, img2img=True)
        latents = latent_img2img(guided, xl, image * 2 - 1, 0.5, "ddim", 4, cond=cond, **grid)
        print("edit sizes", negative, relative_error(latents, theirs))
        assert relative_error(latents, theirs) < 1e-5
    pix2pix = tmp_path / "pix2pix"  # an 8-channel (InstructPix2Pix) UNet config: refused from the JSON alone
    shutil.copytree(root / "xl", pix2pix, ignore=shutil.ignore_patterns("*.safetensors"))
    unet = json.loads((pix2pix / "unet" / "config.json").read_text())
    (pix2pix / "unet" / "config.json").write_text(json.dumps({**unet, "in_channels": 8}))
    for extra, expected in (
            (["--negative-crops-coords-top-left", "1,2"], "--negative-crops-coords-top-left does not apply to "
                                                          + str(root / "xl")),
            (["--controlnet", root / "xl", "--mask", pngs / "in_0.png", "--negative-target-size", "8,8"],
             "--negative-target-size does not apply to --controlnet with --mask"),
            (["--checkpoint", pix2pix, "--negative-original-size", "8,8"],
             "--negative-original-size does not apply to an InstructPix2Pix folder")):
        code, _, err = cli(capsys, *(a for a in args if a not in ("--strength", 0.5)), *extra, "--out",
                           tmp_path / "never")
        assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err
    with pytest.raises(DiffkitError, match="negative_crops_coords_top_left=\\(1, 2\\) is not allowed in img2img"):
        xl.prompt_guidance(PROMPTS, None, 5.0, "diffusers", 0.0, (16, 16), {"negative_crops_coords_top_left": (1, 2)},
                           img2img=True)
    assert not (tmp_path / "never").exists()
