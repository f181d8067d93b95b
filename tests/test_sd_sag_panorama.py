"""Self-attention guidance (diffkit.interop.sd_sag) and MultiDiffusion panoramas (diffkit.interop.sd_panorama,
diffkit.multidiffusion) on a Stable Diffusion folder against diffusers' StableDiffusionSAGPipeline /
StableDiffusionPanoramaPipeline on test_sd_prompts' tiny random folder (nothing downloaded)."""
import dataclasses
import warnings

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.stable_diffusion import text_to_image  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd_xl import PROMPTS  # noqa: E402
import test_sd_prompts  # noqa: E402

tiny_sd = test_sd_prompts.tiny_sd  # (pipeline, its saved folder, the loaded folder): the fixtures, shared
tiny_xl = test_sd_prompts.tiny_xl
STEPS = 3
RUN = dict(sampler="ddim", steps=STEPS, grid="scheduler", return_latents=True)


def _deprecated(cls, pipe, scheduler=None):
    """``cls`` (a deprecated pipeline: its warning silenced) of ``pipe``'s components, no bar."""
    components = {k: v for k, v in pipe.components.items() if k != "image_encoder"}
    if scheduler is not None:
        components["scheduler"] = scheduler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = cls(**components, requires_safety_checker=False)
    theirs.set_progress_bar_config(disable=True)
    return theirs


@pytest.mark.parametrize("scale, prediction_type", [(5.0, "epsilon"), (1.0, "epsilon"), (5.0, "v_prediction")])
def test_sag_matches_the_pipeline(tiny_sd, scale, prediction_type):
    """CFG + SAG (the null half's map and prediction, eq. 25) and SAG alone (s = 1, eq. 20), an epsilon and a v UNet:
    z_0 of DDIM on the scheduler's timesteps within 1e-5 relative of the pipeline's (measured 5e-7)."""
    pipe, _, sd = tiny_sd
    scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, prediction_type=prediction_type)
    sd = dataclasses.replace(sd, prediction_type=prediction_type, _denoiser=None)
    latents = torch.randn(sd.latent_shape(2), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        theirs = _deprecated(diffusers.StableDiffusionSAGPipeline, pipe, scheduler)(
            PROMPTS, num_inference_steps=STEPS, guidance_scale=scale, sag_scale=0.75, latents=latents.clone(),
            output_type="latent").images
    ours = text_to_image(sd, PROMPTS, guidance_scale=scale, latents=latents, sag_scale=0.75, **RUN)
    plain = text_to_image(sd, PROMPTS, guidance_scale=scale, latents=latents, **RUN)
    assert relative_error(plain, theirs) > 1e-2  # SAG mattered
    assert relative_error(ours, theirs) < 1e-5


def _shimmed_views(pano, factor, window, stride):
    """The pipeline's get_views on the latent: it divides the image size by 8, the tiny VAE's factor is 2."""
    views = type(pano).get_views
    return lambda h, w, circular_padding=False: views(pano, h * 8 // factor, w * 8 // factor, window, stride,
                                                      circular_padding)


@pytest.mark.parametrize("height, width, window, stride, circular, view_batch_size", [
    (16, 40, 8, 4, False, 1),  # one row of 6 windows
    (16, 40, 8, 4, True, 2),  # wrapping around: 5 windows, the last across the seam
    (24, 32, 8, 4, False, 3),  # 2 rows x 5
])
def test_panorama_matches_the_pipeline(tiny_sd, height, width, window, stride, circular, view_batch_size):
    """z_0 of DDIM on the scheduler's timesteps within 1e-5 relative of the pipeline's (measured < 1e-6)."""
    pipe, _, sd = tiny_sd
    pano = _deprecated(diffusers.StableDiffusionPanoramaPipeline, pipe)
    pano.get_views = _shimmed_views(pano, sd.vae_scale_factor, window, stride)
    latents = torch.randn(sd.latent_shape(1, height, width), generator=torch.Generator().manual_seed(7))
    options = dict(circular_padding=circular, view_batch_size=view_batch_size)
    with torch.no_grad():
        theirs = pano("a photo", height=height, width=width, num_inference_steps=STEPS, guidance_scale=5.0,
                      latents=latents.clone(), output_type="latent", **options).images
    ours = text_to_image(sd, ["a photo"], guidance_scale=5.0, latents=latents, panorama=True, height=height,
                         width=width, view_window=window, view_stride=stride, **options, **RUN)
    plain = text_to_image(sd, ["a photo"], guidance_scale=5.0, latents=latents, **RUN)
    assert relative_error(plain, theirs) > 1e-2  # the windows mattered
    assert relative_error(ours, theirs) < 1e-5


def test_panorama_with_a_multistep_scheduler_matches_the_pipeline(tiny_sd):
    """PNDMScheduler(skip_prk_steps=True) (PLMS: a history of eps per window batch, kept apart by the pipeline): its
    windows' steps averaged = the step of the averaged predictions and history ('pndm-skip-prk' on its grid)."""
    from diffkit.interop.schedulers import grid_from_diffusers
    pipe, _, sd = tiny_sd
    scheduler = diffusers.PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)
    pano = _deprecated(diffusers.StableDiffusionPanoramaPipeline, pipe, scheduler)
    pano.get_views = _shimmed_views(pano, sd.vae_scale_factor, 8, 4)
    latents = torch.randn(sd.latent_shape(1, 16, 32), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        theirs = pano("a photo", height=16, width=32, num_inference_steps=4, guidance_scale=5.0,
                      latents=latents.clone(), output_type="latent", view_batch_size=2).images
    scheduler.set_timesteps(4)
    ours = text_to_image(sd, ["a photo"], sampler="pndm-skip-prk", grid=grid_from_diffusers(scheduler),
                         guidance_scale=5.0, latents=latents, panorama=True, height=16, width=32, view_window=8,
                         view_stride=4, return_latents=True)
    assert relative_error(ours, theirs) < 1e-5


@pytest.mark.parametrize("height, width, circular", [(64, 72, False), (64, 256, False), (64, 256, True),
                                                     (80, 96, False), (64, 48, True), (32, 48, False)])
def test_views_are_the_pipelines_at_its_window_and_stride(tiny_sd, height, width, circular):
    """get_views' defaults (window 64, stride 8) on the image size 8 times the latent's (an SD VAE's factor)."""
    from diffkit.multidiffusion import panorama_views
    pano = _deprecated(diffusers.StableDiffusionPanoramaPipeline, tiny_sd[0])
    assert panorama_views(height, width, circular=circular) == pano.get_views(8 * height, 8 * width,
                                                                              circular_padding=circular)


def test_circular_panorama_images_match_the_pipeline(tiny_sd):
    """Images in [0, 1], the circular decode (the latent padded by 8 columns of the other side) included."""
    pipe, _, sd = tiny_sd
    pano = _deprecated(diffusers.StableDiffusionPanoramaPipeline, pipe)
    pano.get_views = _shimmed_views(pano, sd.vae_scale_factor, 8, 4)
    latents = torch.randn(sd.latent_shape(1, 16, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = pano("hot", height=16, width=40, num_inference_steps=2, guidance_scale=5.0, latents=latents.clone(),
                      output_type="pt", circular_padding=True).images
    ours = text_to_image(sd, ["hot"], sampler="ddim", steps=2, grid="scheduler", guidance_scale=5.0, latents=latents,
                         panorama=True, height=16, width=40, view_window=8, view_stride=4, circular_padding=True)
    assert ours.shape == theirs.shape == (1, 3, 16, 40)
    assert (ours - theirs).abs().max() < 1e-5


def test_off_is_bit_identical_and_processors_are_restored(tiny_sd):
    sd = tiny_sd[2]
    plain = text_to_image(sd, PROMPTS, guidance_scale=5.0, **RUN)
    processors = dict(sd.unet.attn_processors)
    for off in ({"sag_scale": 0.0}, {"sag_scale": None}, {"panorama": False}):
        assert torch.equal(text_to_image(sd, PROMPTS, guidance_scale=5.0, **off, **RUN), plain)
    text_to_image(sd, PROMPTS, guidance_scale=5.0, sag_scale=0.5, **RUN)
    assert dict(sd.unet.attn_processors) == processors
    # one window the size of the latent: the plain denoiser's numbers
    one = text_to_image(sd, PROMPTS, guidance_scale=5.0, panorama=True, height=16, width=16, view_window=8, **RUN)
    assert relative_error(one, plain) < 1e-6


@pytest.mark.parametrize("kw, match", [
    ({"sag_scale": -1.0}, r"sag_scale=-1.0 is out of range"),
    ({"sag_scale": 0.5, "guidance_rescale": 0.7}, r"guidance_rescale does not go with sag_scale"),
    ({"sag_scale": 0.5, "pag_scale": 2.0}, r"pag_scale does not go with sag_scale"),
    ({"sag_scale": 0.5, "sampler": "euler", "grid": None}, r"sampler 'euler' on the karras grid runs between"),
    ({"sag_scale": 0.5, "sampler": "euler", "grid": None, "steps": 3, "spacing": "time_uniform"},
     r"integer timesteps .* t=\d+\.\d"),
    ({"view_stride": 4}, r"view_stride=4 needs panorama"),
    ({"panorama": True, "height": 16, "width": 42, "view_window": 8, "view_stride": 4},
     r"latent width of 21 is not covered by windows of 8 at stride 4"),
    ({"panorama": True, "view_window": 0}, r"view window=0 is not allowed"),
    ({"panorama": True, "view_batch_size": 0}, r"view_batch_size=0 is not allowed"),
    ({"panorama": True, "sag_scale": 0.5}, r"sag_scale does not go with sag_scale|sag_scale does not go with pan"),
    ({"panorama": True, "eta": 1.0}, r"sampler 'ddim' with eta=1.0 draws noise"),
    ({"panorama": True, "sampler": "ddpm", "grid": None}, r"sampler 'ddpm' draws noise"),
])
def test_bad_options_are_refused_in_one_line(tiny_sd, kw, match):
    with pytest.raises(DiffkitError, match=match) as err:
        text_to_image(tiny_sd[2], PROMPTS, guidance_scale=5.0, **{**RUN, **kw})
    assert "\n" not in str(err.value)


def test_sd_xl_is_refused(tiny_xl):
    for kw, what in (({"sag_scale": 0.5}, "StableDiffusionSAGPipeline"),
                     ({"panorama": True}, "StableDiffusionPanoramaPipeline")):
        with pytest.raises(DiffkitError, match=f"{what}\\); this is an SD-XL folder"):
            text_to_image(tiny_xl[2], PROMPTS, **{**RUN, **kw})


@pytest.mark.parametrize("flags, kw", [
    (["--sag-scale", 0.75], {"sag_scale": 0.75}),
    (["--panorama", "--height", 16, "--width", 40, "--view-window", 8, "--view-stride", 4, "--circular-padding",
      "--view-batch-size", 2], {"panorama": True, "height": 16, "width": 40, "view_window": 8, "view_stride": 4,
                                "circular_padding": True, "view_batch_size": 2}),
])
def test_sample_flags(tiny_sd, tmp_path, capsys, flags, kw):
    """``diffkit sample --sag-scale`` / ``--panorama ...``: the library's images byte for byte (the library is the
    pipelines', above; with --circular-padding the padded decode)."""
    from diffkit.images import save_grid
    _, folder, sd = tiny_sd
    out = tmp_path / "grid.png"
    code, err = test_sd_prompts._cli(capsys, "sample", "--checkpoint", folder, "--prompt", "hot", "--num", 1,
                                     "--steps", 2, "--guidance-scale", 4, "--guidance-convention", "diffusers",
                                     "--out", out, *flags)
    assert code == 0, err
    images = text_to_image(sd, ["hot"], sampler="ddim", steps=2, guidance_scale=4.0, seed=0, output_range="-1,1",
                           **kw)
    save_grid(images, tmp_path / "ours.png", 8)
    assert out.read_bytes() == (tmp_path / "ours.png").read_bytes()


def test_sample_flags_are_refused_in_one_line(tiny_sd, tiny_xl, tmp_path, capsys):
    """One line, before anything loads, for a flag without its folder, without --panorama or of a bad value; no
    file written."""
    folder = tiny_sd[1]
    for checkpoint, flags, match in ((tiny_xl[1], ["--sag-scale", 1], "--sag-scale applies to a Stable Diffusion "
                                      "1.x / 2.x folder"),
                                     (tiny_xl[1], ["--panorama"], "--panorama applies to a Stable Diffusion 1.x"),
                                     (folder, ["--view-stride", 4], "--view-stride needs --panorama"),
                                     (folder, ["--panorama", "--view-batch-size", 0], "--view-batch-size 0 is not"),
                                     (folder, ["--sag-scale", -1], "--sag-scale=-1.0 is out of range")):
        code, err = test_sd_prompts._cli(capsys, "sample", "--checkpoint", checkpoint, "--prompt", "hot", "--out",
                                         tmp_path / "no.png", *flags)
        assert code != 0 and err.count("\n") == 1 and match in err, err
        assert not (tmp_path / "no.png").exists()
