"""img2img and inpainting in latent space (diffkit.latent_editing, ``diffkit edit`` on latent and
text-conditional checkpoints and Stable Diffusion folders): closed forms with the real small
autoencoder (random weights), and diffusers' StableDiffusionImg2ImgPipeline /
StableDiffusionInpaintPipeline on the same tiny random folder, same DDIM, noise, strength and guidance."""
import re

import numpy as np
import pytest
import torch
from PIL import Image
from test_editing import Recorder  # records every (x, t) a denoiser is evaluated at

import diffkit
from diffkit.cli import main
from diffkit.errors import DiffkitError
from diffkit.latent import FrozenAutoencoder
from diffkit.latent_editing import latent_img2img, latent_inpaint, latent_mask
from diffkit.models.autoencoder import Autoencoder, AutoencoderConfig
from diffkit.schedule import NoiseSchedule


def small_autoencoder(seed=0, channels=1):
    torch.manual_seed(seed)
    model = Autoencoder(AutoencoderConfig(in_channels=channels, channel=8, channel_mult=[1, 2], num_res_blocks=1,
                                          latent_channels=2, attn_middle=False))
    with torch.no_grad():  # the zero-initialised convs random too, so E and D are not near-trivial
        for p in model.parameters():
            if p.abs().max() == 0:
                p.normal_(0, 0.1)
    return FrozenAutoencoder(model, 0.7)


def images(n=2, side=8, channels=1, seed=1):
    return torch.rand(n, channels, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def seeded_draws(seed, n, shape, draws):
    """The first ``draws`` standard normal tensors of ``shape`` of generators seed, seed + 1, ... (per image)."""
    out = [[] for _ in range(draws)]
    for i in range(n):
        g = torch.Generator().manual_seed(seed + i)
        for k in range(draws):
            out[k].append(torch.randn(shape, generator=g))
    return [torch.stack(parts) for parts in out]


SCHEDULE = NoiseSchedule.linear(1000)


@pytest.mark.parametrize("posterior", ["mean", "sample"])
def test_an_exact_x0_denoiser_returns_the_decoded_encoded_input(posterior):
    """A network whose x_0 is the encoded latent z = s E(x): DDIM (eta 0) from any strength ends at z,
    so the edit is D(z / s) = D(mean), or D(mean + std eps) with eps the image seed's first draw."""
    ae, x = small_autoencoder(), images()
    moments = ae.model.quant_conv(ae.model.encoder(x))
    mean, logvar = moments.chunk(2, dim=1)
    eps = seeded_draws(5, 2, mean.shape[1:], 1)[0]
    e = mean if posterior == "mean" else mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * eps
    z = 0.7 * e
    oracle = diffkit.Denoiser(lambda x_t, t: z.to(x_t.dtype).expand_as(x_t), SCHEDULE, prediction_type="sample")
    for strength in (0.3, 1.0):
        out = latent_img2img(oracle, ae, x, strength, "ddim", 10, posterior=posterior, seed=5, progress=False)
        torch.testing.assert_close(out, ae.model.decoder(ae.model.post_quant_conv(e)), rtol=0, atol=1e-5)


def test_the_first_input_is_the_latent_noised_to_the_strengths_time():
    """z_t0 = alpha_t0 s E(x) + sigma_t0 n: n the image seed's draw after the posterior sample's."""
    ae, x = small_autoencoder(), images()
    rec = Recorder(diffkit.Denoiser(lambda x_t, t: 0.1 * x_t, SCHEDULE))
    latent_img2img(rec, ae, x, 0.6, "ddim", 10, posterior="sample", seed=3, progress=False)
    moments = ae.model.quant_conv(ae.model.encoder(x))
    mean, logvar = moments.chunk(2, dim=1)
    post, noise = seeded_draws(3, 2, mean.shape[1:], 2)
    z = 0.7 * (mean + torch.exp(0.5 * logvar) * post)
    x_t, t = rec.calls[0]
    assert len(rec.calls) == 6  # int(10 * 0.6) of the 10 ddim steps (their times: tests/test_editing.py)
    abar = SCHEDULE.alphas_cumprod[int(t)].double()
    torch.testing.assert_close(x_t, (abar.sqrt() * z + (1 - abar).sqrt() * noise).float(), rtol=0, atol=1e-5)


def test_the_latent_mask_is_binarised_then_nearest():
    mask = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    small = latent_mask(mask, (4, 4))
    torch.testing.assert_close(small, (mask[:, :, ::2, ::2] >= 0.5).float())  # cell (i, j) <- pixel (2i, 2j)


def test_the_kept_latents_are_the_known_ones_at_every_step_and_at_the_end():
    """Replacement in latent space, DDIM eta 0: every state's kept region is alpha_t z + sigma_t n (z the
    known latent, n the first noise), the output's is z exactly; the pasted pixels are the input's."""
    ae, x = small_autoencoder(), images()
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 4:] = 1
    rec = Recorder(diffkit.Denoiser(lambda x_t, t: torch.tanh(x_t).flip(-1), SCHEDULE))
    common = dict(strength=0.7, seed=9, progress=False)
    out = latent_inpaint(rec, ae, x, mask, "ddim", 10, return_latents=True, **common)
    z = ae.encode(x)
    noise = seeded_draws(9, 2, z.shape[1:], 1)[0]
    keep = latent_mask(mask, (4, 4)).expand_as(z) == 0
    assert keep.any() and (~keep).any()
    for x_t, t in rec.calls:
        abar = SCHEDULE.alphas_cumprod[int(t)].double()
        expected = (abar.sqrt() * z + (1 - abar).sqrt() * noise).float()
        torch.testing.assert_close(x_t[keep], expected[keep], rtol=0, atol=1e-5)
    assert torch.equal(out[keep], z[keep])
    assert not torch.allclose(out[~keep], z[~keep])
    pasted = latent_inpaint(rec, ae, x, mask, "ddim", 10, paste=True, **common)
    decoded = latent_inpaint(rec, ae, x, mask, "ddim", 10, **common)
    kept_pixels = (mask == 0).expand_as(x)
    assert torch.equal(pasted[kept_pixels], x[kept_pixels])
    assert torch.equal(pasted[~kept_pixels], decoded[~kept_pixels])
    assert not torch.allclose(decoded[kept_pixels], x[kept_pixels], atol=1e-3)  # decoding changes them


def test_bad_images_and_masks_are_one_line_errors():
    ae = small_autoencoder()
    den = diffkit.Denoiser(lambda x_t, t: 0 * x_t, SCHEDULE)
    with pytest.raises(DiffkitError, match=r"do not fit the autoencoder, which takes \(batch, 1, H, W\) images of "
                                           r"H x W multiples of 2"):
        latent_img2img(den, ae, images(side=7), progress=False)
    with pytest.raises(DiffkitError, match="do not fit the autoencoder"):
        latent_img2img(den, ae, images(channels=3), progress=False)
    with pytest.raises(DiffkitError, match="does not broadcast to the images' shape"):
        latent_inpaint(den, ae, images(), torch.ones(1, 1, 6, 6), progress=False)
    with pytest.raises(DiffkitError, match="give one channel"):
        latent_inpaint(den, ae, images(), torch.ones(1, 3, 8, 8), progress=False)
    with pytest.raises(DiffkitError, match="posterior='median' is not allowed"):
        latent_img2img(den, ae, images(), posterior="median", progress=False)
    with pytest.raises(DiffkitError, match=r"hold values in"):
        latent_img2img(den, ae, images() * 3, progress=False)


# ------------------------------------------------------------------ Stable Diffusion against diffusers
@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """A tiny random Stable Diffusion folder (DDIM, as SD's scheduler config) and its img2img and inpainting
    pipelines."""
    diffusers = pytest.importorskip("diffusers")
    from test_interop_diffusers import sd_ddim_scheduler, tiny_sd_components
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    root = tmp_path_factory.mktemp("tiny_sd_edit")
    unet, vae, text_encoder, tokenizer = tiny_sd_components(root)
    parts = dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=sd_ddim_scheduler(),
                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    img2img = diffusers.StableDiffusionImg2ImgPipeline(**parts)
    inpaint = diffusers.StableDiffusionInpaintPipeline(**parts)
    for pipe in (img2img, inpaint):
        pipe.set_progress_bar_config(disable=True)
    img2img.save_pretrained(root / "sd")
    return img2img, inpaint, load_stable_diffusion(root / "sd", progress=False), root / "sd"


PROMPTS = ["a photo of a cat", "hot"]
DDIM_GRID = dict(spacing="leading", final="sigma_min", steps_offset=1, eta=0.0)  # the folder's DDIMScheduler


def _ours(sd, edit, *args, scale=5.0, **kw):
    guided = sd.guided(scale, sd.encode_prompts([""]), "diffusers")
    return edit(guided, sd, *args, posterior="sample", seed=10, cond=sd.cond(sd.encode_prompts(PROMPTS)),
                progress=False, return_latents=True, **DDIM_GRID, **kw)


def _generators():
    return [torch.Generator().manual_seed(10), torch.Generator().manual_seed(11)]


def test_sd_img2img_is_stable_diffusion_img2img_pipeline(tiny_sd):
    pipe, _, sd, _ = tiny_sd
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    for strength in (0.5, 1.0):
        with torch.no_grad():
            theirs = pipe(PROMPTS, image=image, strength=strength, num_inference_steps=4, guidance_scale=5.0,
                          eta=0.0, output_type="latent", generator=_generators()).images
        ours = _ours(sd, latent_img2img, image * 2 - 1, strength, "ddim", 4)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5 * theirs.abs().max().item())


def test_sd_inpainting_is_the_4_channel_inpaint_pipeline(tiny_sd):
    """Replacing x_0 in the kept region (DDIM) puts it where diffusers re-noises it, add_noise(z, noise, t);
    at strength 1 both start from pure noise (diffusers' is_strength_max), the noise drawn after the posterior."""
    _, pipe, sd, _ = tiny_sd
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 3:9] = 1
    mask[1, :, :3] = 0.7  # binarised to 1 by both
    for strength in (0.75, 1.0):
        with torch.no_grad():
            theirs = pipe(PROMPTS, image=image, mask_image=mask, strength=strength, num_inference_steps=4,
                          guidance_scale=5.0, eta=0.0, output_type="latent", generator=_generators()).images
        ours = _ours(sd, latent_inpaint, image * 2 - 1, mask, "ddim", 4, strength=strength)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5 * theirs.abs().max().item())


def test_a_4_channel_folder_is_inpainted_by_replacement_as_before(tiny_sd):
    """The 9-channel branch (diffkit.interop.sd_inpaint) leaves a plain UNet alone: latent_inpaint is still
    encode + diffkit.inpaint bit for bit, and the network is the UNet's own."""
    from diffkit.editing import inpaint
    from diffkit.interop.denoiser import DiffusersNet
    from diffkit.latent_editing import encode_images
    from diffkit.noise import generators_from_seed
    _, _, sd, _ = tiny_sd
    assert not sd.inpainting_unet and type(sd.network_denoiser.net) is DiffusersNet
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 3:9] = 1
    for strength in (0.75, 1.0):
        ours = _ours(sd, latent_inpaint, image, mask, "ddim", 3, strength=strength)
        generator = generators_from_seed(10, 2)
        z = encode_images(sd, image, "sample", generator)
        before = inpaint(sd.guided(5.0, sd.encode_prompts([""]), "diffusers"), z,
                         latent_mask(mask, (8, 8)).expand_as(z), "ddim", 3, strength=strength,
                         start="noise" if strength == 1 else "image", generator=generator, value_range=None,
                         cond=sd.cond(sd.encode_prompts(PROMPTS)), progress=False, **DDIM_GRID)
        assert torch.equal(ours, before)


def write_pngs(folder, count, side, mode, seed=0):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    shape = (side, side, 3) if mode == "RGB" else (side, side)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"in_{i}.png")
    return folder


def cli(capsys, *args):
    try:
        code = main(["edit", "--no-progress", "--device", "cpu", *map(str, args)])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sd_folder_through_the_cli_is_the_img2img_pipeline(tiny_sd, tmp_path, capsys):
    """``diffkit edit --checkpoint SD --prompt`` on PNGs: the pipeline's images (to the PNGs' 1/255), image i
    from seed + i; DDIM with steps_offset 0 and set_alpha_to_one (--spacing leading --final zero)."""
    import diffusers
    pipe, _, _, folder = tiny_sd
    pngs = write_pngs(tmp_path / "in", 2, 16, "RGB")
    code, out, err = cli(capsys, "--checkpoint", folder, "--images", pngs, "--prompt", PROMPTS[0], "--prompt",
                         PROMPTS[1], "--strength", 0.5, "--steps", 4, "--spacing", "leading", "--final", "zero",
                         "--guidance-scale", 5, "--guidance-convention", "diffusers", "--seed", 10,
                         "--batch-size", 1, "--out", tmp_path / "out")  # image 1 alone, from seed 11
    assert code == 0, err
    assert "2 edited images" in out and "posterior sample" in out
    image = torch.stack([torch.from_numpy(np.array(Image.open(pngs / f"in_{i}.png"))).permute(2, 0, 1)
                         for i in range(2)]).float() / 255
    scheduler = pipe.scheduler
    pipe.scheduler = diffusers.DDIMScheduler.from_config(scheduler.config, steps_offset=0, set_alpha_to_one=True)
    try:
        with torch.no_grad():
            theirs = pipe(PROMPTS, image=image, strength=0.5, num_inference_steps=4, guidance_scale=5.0, eta=0.0,
                          output_type="np", generator=_generators()).images
    finally:
        pipe.scheduler = scheduler
    ours = np.stack([np.asarray(Image.open(tmp_path / "out" / f"edit_{i:05d}.png")) for i in range(2)])
    assert np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1


def test_sd_folder_edit_negative_prompt_is_the_pipelines(tiny_sd, tmp_path, capsys):
    """``diffkit edit --checkpoint SD --prompt P --negative-prompt N``: StableDiffusionImg2ImgPipeline's
    ``negative_prompt`` (to the PNG's 1/255); refused without --prompt and for a diffkit checkpoint (one line)."""
    import diffusers
    pipe, _, _, folder = tiny_sd
    pngs = write_pngs(tmp_path / "in", 1, 16, "RGB")
    code, out, err = cli(capsys, "--checkpoint", folder, "--images", pngs, "--prompt", PROMPTS[0], "--negative-prompt",
                         "ugly", "--strength", 0.5, "--steps", 4, "--spacing", "leading", "--final", "zero",
                         "--guidance-scale", 5, "--guidance-convention", "diffusers", "--seed", 10, "--out",
                         tmp_path / "out")
    assert code == 0, err
    image = torch.from_numpy(np.array(Image.open(pngs / "in_0.png"))).permute(2, 0, 1)[None].float() / 255
    scheduler = pipe.scheduler
    pipe.scheduler = diffusers.DDIMScheduler.from_config(scheduler.config, steps_offset=0, set_alpha_to_one=True)
    try:
        with torch.no_grad():
            theirs = pipe(PROMPTS[:1], image=image, strength=0.5, num_inference_steps=4, guidance_scale=5.0, eta=0.0,
                          negative_prompt=["ugly"], output_type="np", generator=_generators()[:1]).images
    finally:
        pipe.scheduler = scheduler
    ours = np.asarray(Image.open(tmp_path / "out" / "edit_00000.png"))[None]
    assert np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1
    code, _, err = cli(capsys, "--checkpoint", folder, "--negative-prompt", "ugly", "--images", pngs, "--out",
                       tmp_path / "never")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--negative-prompt 'ugly' goes with --prompt" in err
    assert not (tmp_path / "never").exists()


def test_sd_folder_inpainting_and_mistakes_through_the_cli(tiny_sd, tmp_path, capsys):
    _, _, _, folder = tiny_sd
    pngs = write_pngs(tmp_path / "in", 3, 16, "RGB")
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[:, 8:] = 255
    Image.fromarray(mask, "L").save(tmp_path / "mask.png")
    Image.fromarray(mask[:12, :12], "L").save(tmp_path / "small_mask.png")
    base = ["--checkpoint", folder, "--images", pngs, "--steps", 3]
    code, out, err = cli(capsys, *base, "--prompt", "a cat", "--mask", tmp_path / "mask.png", "--paste-known",
                         "--out", tmp_path / "out")
    assert code == 0, err
    for i in range(3):  # the black (kept) half is the input's, pasted back
        edited = np.asarray(Image.open(tmp_path / "out" / f"edit_{i:05d}.png"))
        original = np.asarray(Image.open(pngs / f"in_{i}.png"))
        assert np.array_equal(edited[:, :8], original[:, :8]) and not np.array_equal(edited, original)
    runs = {}
    for name, extra in (("default", []), ("7.5", ["--guidance-scale", 7.5, "--guidance-convention", "diffusers"]),
                        ("7", ["--guidance-scale", 7, "--guidance-convention", "diffusers"]),
                        ("rescaled", ["--guidance-scale", 7.5, "--guidance-convention", "diffusers",
                                      "--guidance-rescale", 0.7])):
        code, out, err = cli(capsys, *base, "--prompt", "a cat", *extra, "--out", tmp_path / name)
        assert code == 0, err
        runs[name] = [np.asarray(Image.open(tmp_path / name / f"edit_{i:05d}.png")) for i in range(3)]
    assert all(np.array_equal(a, b) for a, b in zip(runs["default"], runs["7.5"]))  # diffusers' default s = 7.5
    assert not all(np.array_equal(a, b) for a, b in zip(runs["default"], runs["7"]))
    assert not all(np.array_equal(a, b) for a, b in zip(runs["7.5"], runs["rescaled"]))  # phi reaches it
    for extra, pattern in [
        ([], "is a Stable Diffusion folder: give --prompt TEXT"),
        (["--prompt", "a", "--prompt", "b"], r"--prompt is given 2 times for 3 images; give it once"),
        (["--prompt", "a", "--class", "1"], "--prompt and --class exclude each other"),
        (["--prompt", "a", "--mask", tmp_path / "small_mask.png"], "--mask is 12x12 but the images are 16x16"),
        (["--prompt", "a", "--no-ema"], "--no-ema does not apply to a Stable Diffusion folder"),
        (["--prompt", "a", "--lora", tmp_path / "adapter.safetensors"], "--lora .*adapter.safetensors does not exist"),
        (["--prompt", "a", "--lora", pngs / "in_0.png", "--lora-any-base"],
         "--lora-any-base does not apply to a Stable Diffusion folder"),
        (["--prompt", "a", "--guidance-scale", "2", "--guidance-interval", "1", "500"],
         "--guidance-interval does not apply to a Stable Diffusion folder"),
        (["--prompt", "a", "--paste-known"], "--paste-known .* goes with --mask"),
        (["--prompt", "a", "--posterior", "mode"], "invalid choice: 'mode'"),
    ]:
        target = tmp_path / "never"
        code, out, err = cli(capsys, *base, *extra, "--out", target)
        assert code != 0 and len(err.strip().splitlines()) == 1 and pattern and not target.exists(), err
        assert re.search(pattern, err), err
    small = write_pngs(tmp_path / "small", 1, 15, "RGB")
    code, out, err = cli(capsys, "--checkpoint", folder, "--images", small, "--prompt", "a", "--out", tmp_path / "n2")
    assert code != 0 and "do not fit the autoencoder" in err and "multiples of 2" in err
    assert not (tmp_path / "n2").exists()


# ------------------------------------------------------------------ diffkit latent checkpoints
@pytest.fixture(scope="module")
def latent_text_checkpoint(tmp_path_factory):
    """A 1-step latent text-conditional run (p_uncond > 0) on 16x16 digits with a tiny f=2 autoencoder; its
    zero-initialised (and near-zero) network weights made random, so that the prompt changes the output."""
    from test_latent_text import TINY, small_digits

    from diffkit.autoencoder_training import save_autoencoder
    from diffkit.checkpoint import load_checkpoint, save_checkpoint
    from diffkit.config import TrainConfig
    from diffkit.training import Trainer
    root = tmp_path_factory.mktemp("latent_edit")
    save_autoencoder(root / "ae.safetensors", small_autoencoder().model, 0.7)
    cfg = TrainConfig.from_dict({**TINY, "autoencoder": str(root / "ae.safetensors"), "max_steps": 1,
                                 "save_weight_dir": str(root / "ckpt")})
    checkpoint = Trainer(cfg, small_digits(16), progress=False).run().checkpoint
    tensors, meta = load_checkpoint(checkpoint)
    g = torch.Generator().manual_seed(0)
    for key, value in tensors.items():
        if key.startswith(("model.", "ema.")) and value.is_floating_point() and value.abs().max() < 1e-2:
            tensors[key] = 0.1 * torch.randn(value.shape, generator=g, dtype=value.dtype)
    save_checkpoint(checkpoint, tensors, meta)
    return checkpoint, root


def test_a_latent_text_checkpoint_is_edited_with_prompts_and_guidance(latent_text_checkpoint, tmp_path, capsys):
    ckpt, root = latent_text_checkpoint
    pngs = write_pngs(tmp_path / "in", 2, 16, "L")
    base = ["--checkpoint", ckpt, "--images", pngs, "--steps", 4]
    code, out, err = cli(capsys, *base, "--prompt", "a digit zero", "--guidance-scale", 2, "--out", tmp_path / "a")
    assert code == 0, err
    assert "posterior mean" in out and sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "edit_00000.png", "edit_00001.png"]
    # the same edit from the library: the encoder is the checkpoint's, the guidance the empty prompt's
    from diffkit.guidance import ClassifierFreeGuidance
    from diffkit.loading import load_denoiser
    den = load_denoiser(ckpt)
    x = torch.stack([torch.from_numpy(np.array(Image.open(pngs / f"in_{i}.png"))) for i in range(2)])[:, None]
    guided = ClassifierFreeGuidance(den, 2.0, null_context=den.prompt_encoder([""]))
    context = den.prompt_encoder(["a digit zero"]).expand(2, -1, -1)
    for i in range(2):  # image i from seed 0 + i, alone
        edited = latent_img2img(guided, den.decoder, x[i:i + 1].float() / 127.5 - 1, 0.8, "ddim", 4, seed=i,
                                cond={"context": context[i:i + 1]}, progress=False)
        png = np.asarray(Image.open(tmp_path / "a" / f"edit_{i:05d}.png")).astype(int)
        expected = np.round((edited.clamp(-1, 1)[0, 0].numpy() + 1) * 127.5).astype(int)
        assert np.abs(png - expected).max() <= 1
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12] = 255
    Image.fromarray(mask, "L").save(tmp_path / "mask.png")
    code, out, err = cli(capsys, *base, "--prompt", "a", "--prompt", "b", "--mask", tmp_path / "mask.png",
                         "--posterior", "sample", "--batch-size", 1, "--out", tmp_path / "b")  # image 1 alone
    assert code == 0 and "2 inpainted images" in out and "posterior sample" in out, err
    contexts = den.prompt_encoder(["a", "b"])  # one prompt per image, white = repaint, strength 1, no guidance
    for i in range(2):
        inpainted = latent_inpaint(den, den.decoder, x[i:i + 1].float() / 127.5 - 1,
                                   torch.from_numpy(mask)[None, None].float() / 255, "ddim", 4, posterior="sample",
                                   seed=i, cond={"context": contexts[i:i + 1]}, progress=False)
        png = np.asarray(Image.open(tmp_path / "b" / f"edit_{i:05d}.png")).astype(int)
        expected = np.round((inpainted.clamp(-1, 1)[0, 0].numpy() + 1) * 127.5).astype(int)
        assert np.abs(png - expected).max() <= 1
    for extra, pattern in [
        ([], "this checkpoint is text-conditional: give --prompt TEXT"),
        (["--class", "1"], "--class needs a class-conditional checkpoint .* text-conditional: use --prompt"),
        (["--prompt", "a", "--interpolate", "3"], "--prompt does not go with --interpolate"),
        (["--interpolate", "3"], "--interpolate works on pixel-space checkpoints"),
        (["--guidance-scale", "2"], "--guidance-scale is not available for --images"),
        (["--prompt", "a", "--negative-prompt", "x"], "--negative-prompt applies to a Stable Diffusion folder"),
    ]:
        code, out, err = cli(capsys, *base, *extra, "--out", tmp_path / "never")
        assert code != 0 and len(err.strip().splitlines()) == 1 and not (tmp_path / "never").exists(), err
        assert re.search(pattern, err), err
    big = write_pngs(tmp_path / "big", 1, 32, "L")
    code, out, err = cli(capsys, "--checkpoint", ckpt, "--images", big, "--prompt", "a", "--out", tmp_path / "never")
    assert code != 0 and "images of 16x16" in err and not (tmp_path / "never").exists()


def test_prompts_and_latent_flags_on_a_pixel_checkpoint_are_refused(tmp_path, capsys):
    TINY = ["--set", "img_size=8", "--set", "channel=16", "--set", "channel_mult=[1,2]", "--set", "attn=[1]",
            "--set", "num_res_blocks=1", "--set", "batch_size=8", "--set", "num_heads=1"]
    assert main(["train", "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress", "--no-sample",
                 "--device", "cpu", *TINY]) == 0
    capsys.readouterr()
    pngs = write_pngs(tmp_path / "in", 1, 8, "L")
    Image.fromarray(np.full((8, 8), 255, dtype=np.uint8), "L").save(tmp_path / "mask.png")
    base = ["--checkpoint", tmp_path / "run" / "checkpoints", "--images", pngs]
    for extra, pattern in [(["--prompt", "a"], "--prompt needs a text-conditional checkpoint"),
                           (["--posterior", "mean"], "--posterior needs a latent checkpoint"),
                           (["--paste-known", "--mask", tmp_path / "mask.png"], "--paste-known needs a latent "
                                                                               "checkpoint"),
                           (["--prompt", "a", "--guidance-scale", "nan"], "guidance")]:
        code, out, err = cli(capsys, *base, *extra, "--out", tmp_path / "never")
        assert code != 0 and len(err.strip().splitlines()) == 1 and not (tmp_path / "never").exists(), err
        assert re.search(pattern, err), err


def test_a_pixel_space_text_checkpoint_takes_prompts_but_not_latent_flags(tmp_path, capsys):
    from test_latent_text import TINY, small_digits

    from diffkit.config import TrainConfig
    from diffkit.training import Trainer
    cfg = TrainConfig.from_dict({**TINY, "max_steps": 1, "save_weight_dir": str(tmp_path / "ckpt")})
    ckpt = Trainer(cfg, small_digits(16), progress=False).run().checkpoint
    pngs = write_pngs(tmp_path / "in", 1, 16, "L")
    base = ["--checkpoint", ckpt, "--images", pngs, "--steps", 3]
    code, out, err = cli(capsys, *base, "--prompt", "a digit one", "--guidance-scale", 2, "--out", tmp_path / "a")
    assert code == 0 and "prompts ['a digit one']" in out and "latent space" not in out, err
    assert (tmp_path / "a" / "edit_00000.png").is_file()
    code, out, err = cli(capsys, *base, "--prompt", "a", "--posterior", "sample", "--out", tmp_path / "never")
    assert code != 0 and "--posterior needs a latent checkpoint" in err and not (tmp_path / "never").exists()
