"""Latent-diffusion folders (diffkit.interop.ldm): diffkit's text_to_image / unconditional / super_resolve against
diffusers' own LDMTextToImagePipeline, LDMPipeline and LDMSuperResolutionPipeline on tiny random folders saved with
save_pretrained (an LDMBertModel of one layer with a word-level BertTokenizer, UNets of two levels, VQModels of f = 8
and f = 4; nothing downloaded), the same z_T (or per-sample generators) on both sides; and ``diffkit sample`` /
``diffkit upscale`` on them (the library's images byte for byte; flags that do not apply: one line)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import save_grid, save_images  # noqa: E402
from diffkit.interop import ldm  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]
WORDS = ["a", "photo", "of", "cat", "hot", "dog", "red"]


def tiny_vq(levels: int, latents: int = 3):
    """A VQModel of ``levels`` levels (f = 2^(levels - 1)), 16 codes."""
    return diffusers.VQModel(block_out_channels=(8,) * levels, in_channels=3, out_channels=3, latent_channels=latents,
                             down_block_types=["DownEncoderBlock2D"] * levels, num_vq_embeddings=16,
                             up_block_types=["UpDecoderBlock2D"] * levels, norm_num_groups=4, layers_per_block=1)


def tiny_unet2d(in_channels: int, out_channels: int = 3):
    return diffusers.UNet2DModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, norm_num_groups=4,
                                 in_channels=in_channels, out_channels=out_channels, attention_head_dim=4,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def saved(pipe, path):
    """(the pipeline reloaded from ``path`` after save_pretrained, its quiet progress bar; ours loaded)."""
    pipe.save_pretrained(path)
    pipe = type(pipe).from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe, path, ldm.load_ldm(path, progress=False)


@pytest.fixture(scope="session")
def text_folder(tmp_path_factory):
    """A tiny LDMTextToImagePipeline: LDMBert d 16, a cross-attention UNet on 4 x 8 x 8 latents, a VQModel of f = 8,
    DDIMScheduler as ldm-text2im-large-256's (scaled-linear, no clipping, set_alpha_to_one False)."""
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel
    root = tmp_path_factory.mktemp("ldm_text")
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    torch.manual_seed(0)
    bert = LDMBertModel(LDMBertConfig(d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=16,
                                      vocab_size=5 + len(WORDS), max_position_embeddings=77, head_dim=8))
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=2)
    scheduler = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        clip_sample=False, set_alpha_to_one=False)
    pipe = diffusers.LDMTextToImagePipeline(vqvae=tiny_vq(4, 4), bert=bert, unet=unet, scheduler=scheduler,
                                            tokenizer=transformers.BertTokenizer(str(root / "vocab.txt")))
    return saved(pipe, root / "text")


@pytest.fixture(scope="session")
def uncond_folder(tmp_path_factory):
    """A tiny LDMPipeline: a UNet2DModel on 3 x 8 x 8 latents, a VQModel of f = 4, DDIM as ldm-celebahq-256's."""
    torch.manual_seed(1)
    pipe = diffusers.LDMPipeline(vqvae=tiny_vq(3), unet=tiny_unet2d(3), scheduler=diffusers.DDIMScheduler(
        beta_start=0.0015, beta_end=0.0195, clip_sample=False))
    return saved(pipe, tmp_path_factory.mktemp("ldm_uncond") / "uncond")


@pytest.fixture(scope="session")
def sr_folder(tmp_path_factory):
    """A tiny LDMSuperResolutionPipeline: a UNet2DModel taking 3 latent + 3 image channels, a VQModel of f = 4, DDIM
    (trailing spacing, its last step to clean data)."""
    torch.manual_seed(2)
    scheduler = diffusers.DDIMScheduler(beta_start=0.0015, beta_end=0.0155, clip_sample=False,
                                        timestep_spacing="trailing")
    vq = tiny_vq(3)
    with torch.no_grad():  # images past [-1, 1], so that the pipeline's clamp shows
        vq.decoder.conv_out.weight.mul_(2)
    pipe = diffusers.LDMSuperResolutionPipeline(vqvae=vq, unet=tiny_unet2d(6), scheduler=scheduler)
    return saved(pipe, tmp_path_factory.mktemp("ldm_sr") / "sr")


def decoded_latents(pipe, run):
    """(the pipeline's output of ``run()``, the latents its vqvae decoded), caught at ``vqvae.decode``."""
    caught, decode = [], pipe.vqvae.decode
    pipe.vqvae.decode = lambda z, *a, **k: caught.append(z.clone()) or decode(z, *a, **k)
    try:
        return run(), caught[0]
    finally:
        pipe.vqvae.decode = decode


@pytest.mark.parametrize("scale", [1.0, 3.0, 0.5])
def test_text_to_image_matches_the_pipeline(text_folder, scale):
    """z_0 and the images from the same z_T equal LDMTextToImagePipeline's: s = 1 its unguided branch, s = 3 CFG
    against "", s = 0.5 CFG too (the pipeline guides for any s != 1)."""
    pipe, _, model = text_folder
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    theirs, z_theirs = decoded_latents(pipe, lambda: pipe(PROMPTS, num_inference_steps=4, guidance_scale=scale,
                                                          latents=noise.clone(), output_type="pt").images)
    z0 = ldm.text_to_image(model, PROMPTS, steps=4, guidance_scale=scale, latents=noise.clone(), return_latents=True)
    ours = ldm.text_to_image(model, PROMPTS, steps=4, guidance_scale=scale, latents=noise.clone())
    assert theirs.shape == ours.shape == (2, 3, 64, 64) and z_theirs.abs().max() > 1
    assert relative_error(z0 / model.vqvae.config.scaling_factor, z_theirs) < 1e-5  # measured 4.8e-7 .. 1.1e-6
    assert relative_error(ours, theirs) < 1e-5  # measured 1.4e-6 .. 2.1e-6


def test_an_autoencoder_kl_vqvae_matches_the_pipeline(text_folder, tmp_path):
    """The pipeline's other ``vqvae`` class (``VQModel | AutoencoderKL``; its decode takes z / scaling_factor as it
    is, no codebook): the images from the same z_T."""
    pipe = text_folder[0]
    kl = diffusers.AutoencoderKL(block_out_channels=[8] * 4, in_channels=3, out_channels=3, latent_channels=4,
                                 down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                                 norm_num_groups=4, layers_per_block=1)
    pipe, _, model = saved(diffusers.LDMTextToImagePipeline(vqvae=kl, bert=pipe.bert, tokenizer=pipe.tokenizer,
                                                            unet=pipe.unet, scheduler=pipe.scheduler), tmp_path / "kl")
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    theirs = pipe(PROMPTS, num_inference_steps=4, guidance_scale=2.0, latents=noise.clone(), output_type="pt").images
    ours = ldm.text_to_image(model, PROMPTS, steps=4, guidance_scale=2.0, latents=noise.clone())
    assert type(model.vqvae).__name__ == "AutoencoderKL"
    assert relative_error(ours, theirs) < 1e-5  # measured 7.2e-7


@pytest.mark.parametrize("skip_prk", [True, False])
def test_pndm_folders_match_the_pipeline(text_folder, skip_prk):
    """A PNDMScheduler folder's loop: pndm-skip-prk (skip_prk_steps) or pndm (its Runge-Kutta warm-up)."""
    pipe, _, model = text_folder
    ddim, config = pipe.scheduler, model.scheduler_config
    pipe.scheduler = diffusers.PNDMScheduler.from_config(ddim.config, skip_prk_steps=skip_prk)
    model.scheduler_config = {**dict(pipe.scheduler.config), "_class_name": "PNDMScheduler"}
    try:
        assert ldm.folder_sampler(model.scheduler_config) == ("pndm-skip-prk" if skip_prk else "pndm")
        noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
        theirs = pipe(PROMPTS, num_inference_steps=6, guidance_scale=2.0, latents=noise.clone(),
                      output_type="pt").images
        ours = ldm.text_to_image(model, PROMPTS, steps=6, guidance_scale=2.0, latents=noise.clone())
    finally:
        pipe.scheduler, model.scheduler_config = ddim, config
    assert relative_error(ours, theirs) < 1e-5  # measured 2.0e-6 (skip_prk), 1.6e-6 (PRK)


def test_unconditional_matches_the_pipeline(uncond_folder):
    """LDMPipeline with one generator per sample (seed + i) = unconditional(seed=...): z_0 and the images."""
    pipe, _, model = uncond_folder
    generators = [torch.Generator().manual_seed(5 + i) for i in range(2)]
    theirs, z_theirs = decoded_latents(pipe, lambda: pipe(batch_size=2, generator=generators, num_inference_steps=4,
                                                          output_type="np").images)
    z0 = ldm.unconditional(model, 2, steps=4, seed=5, return_latents=True)
    ours = ldm.unconditional(model, 2, steps=4, seed=5)
    assert relative_error(z0 / model.vqvae.config.scaling_factor, z_theirs) < 1e-5  # measured 2.5e-7
    assert relative_error(ours.permute(0, 2, 3, 1), torch.from_numpy(theirs)) < 1e-5  # measured 1.5e-6
    noisy = ldm.unconditional(model, 2, steps=4, seed=5, eta=1.0, return_latents=True)  # eta: sample i's own draws
    assert torch.equal(noisy, ldm.unconditional(model, 2, steps=4, seed=5, eta=1.0, return_latents=True))
    alone = ldm.unconditional(model, 1, steps=4, seed=6, eta=1.0, return_latents=True)  # sample 1 without sample 0
    assert relative_error(noisy[1:], alone) < 1e-5
    assert not torch.allclose(noisy, z0)


def test_super_resolution_matches_the_pipeline(sr_folder):
    """LDMSuperResolutionPipeline on a (2, 3, 32, 32) tensor with one generator per image = super_resolve(seed=...):
    the 4x images and z_0 (decoded unscaled)."""
    pipe, _, model = sr_folder
    low = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6)) * 2 - 1
    generators = [torch.Generator().manual_seed(7 + i) for i in range(2)]
    theirs, z_theirs = decoded_latents(pipe, lambda: pipe(image=low, generator=generators, num_inference_steps=5,
                                                          output_type="pt").images)
    z0 = ldm.super_resolve(model, low, steps=5, seed=7, return_latents=True)
    ours = ldm.super_resolve(model, low, steps=5, seed=7, output_range="0,1")
    assert ours.shape == theirs.shape == (2, 3, 128, 128) and (theirs == 1).any()
    assert relative_error(z0, z_theirs) < 1e-5  # measured 2.3e-7
    assert relative_error(ours, theirs) < 1e-5  # measured 5.0e-6 (the decoder's 2x output layer)


def test_commands_draw_the_library_images(text_folder, uncond_folder, sr_folder, tmp_path):
    """``diffkit sample`` (rows of --prompt, sample i from seed + i; an LDMPipeline folder unconditional) and ``diffkit
    upscale`` write the library's images."""
    _, text, model = text_folder
    out = tmp_path / "t.png"
    assert main(["sample", "--checkpoint", str(text), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--steps", "3", "--guidance-scale", "2", "--guidance-convention", "diffusers",
                 "--seed", "4", "--out", str(out), "--no-progress", "--batch-size", "2"]) == 0
    images = ldm.text_to_image(model, PROMPTS, steps=3, guidance_scale=2.0, seed=4, output_range="-1,1")
    save_grid(images, tmp_path / "t_expected.png", 1)
    assert out.read_bytes() == (tmp_path / "t_expected.png").read_bytes()
    _, uncond, model = uncond_folder
    assert main(["sample", "--checkpoint", str(uncond), "--num", "2", "--steps", "3", "--seed", "1", "--out",
                 str(tmp_path / "u.png"), "--no-progress", "--batch-size", "1"]) == 0
    save_grid(ldm.unconditional(model, 2, steps=3, seed=1, output_range="-1,1"), tmp_path / "u_expected.png", 8)
    assert (tmp_path / "u.png").read_bytes() == (tmp_path / "u_expected.png").read_bytes()
    _, sr, model = sr_folder
    low = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(8)) * 2 - 1
    save_images(low, tmp_path / "low")
    from diffkit.commands.edit import read_pngs
    low = read_pngs(tmp_path / "low", "RGB")[0]
    assert main(["upscale", "--checkpoint", str(sr), "--images", str(tmp_path / "low"), "--out", str(tmp_path / "up"),
                 "--steps", "4", "--seed", "2", "--no-progress"]) == 0
    save_images(ldm.super_resolve(model, low, steps=4, seed=2), tmp_path / "up_expected", prefix="upscaled")
    for i in range(2):
        name = f"upscaled_0000{i}.png"
        assert (tmp_path / "up" / name).read_bytes() == (tmp_path / "up_expected" / name).read_bytes()


def test_refusals_are_one_line(text_folder, uncond_folder, sr_folder, tmp_path, capsys):
    """What the pipelines do not take: one line each, before anything is written."""
    text, uncond, sr = text_folder[1], uncond_folder[1], sr_folder[1]
    out = ["--out", str(tmp_path / "x.png")]
    cases = [(["sample", "--checkpoint", str(text), "--prompt", "a", "--negative-prompt", "b"] + out,
              "--negative-prompt does not apply to a latent-diffusion"),
             (["sample", "--checkpoint", str(text)] + out, "give --prompt"),
             (["sample", "--checkpoint", str(text), "--prompt", "a", "--sag-scale", "0.5"] + out,
              "applies to a Stable Diffusion 1.x / 2.x folder"),  # LDMBert's folder is not taken for SD's
             (["sample", "--checkpoint", str(text), "--prompt", "a", "--height", "60"] + out, "multiple of 8"),
             (["sample", "--checkpoint", str(uncond), "--prompt", "a"] + out,
              "--prompt does not apply to an unconditional latent-diffusion folder"),
             (["sample", "--checkpoint", str(sr)] + out, "which diffkit sample does not take"),
             (["upscale", "--checkpoint", str(sr), "--images", str(tmp_path), "--out", str(tmp_path / "o"), "--prompt",
               "a"], "--prompt does not apply to a latent-diffusion super-resolution folder"),
             (["upscale", "--checkpoint", str(text), "--images", str(tmp_path), "--out", str(tmp_path / "o")],
              "is not an LDMSuperResolutionPipeline folder")]
    capsys.readouterr()
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "o").exists()
    model = text_folder[2]
    with pytest.raises(DiffkitError, match="LMSDiscreteScheduler is not run as its pipeline runs it"):
        ldm.folder_sampler({"_class_name": "LMSDiscreteScheduler"})
    with pytest.raises(DiffkitError, match="multiples of 32"):
        ldm.super_resolve(sr_folder[2], torch.zeros(1, 3, 40, 32))
    with pytest.raises(DiffkitError, match="its one step is the identity"):
        model.scheduler_grid(1)
