"""``diffkit sample --height H --width W`` on diffusers folders (diffkit.commands._image_size): per family (SD, SD-XL,
SD3, FLUX.1) the CLI's grid is the library's at that size byte for byte, and the library is the pipeline with the
same height / width, also with a ControlNet; sizes a pipeline cannot draw, diffkit checkpoints and T2I-Adapters are
one-line refusals."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.cli import main  # noqa: E402
from diffkit.commands._image_size import check_image_size  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import save_grid  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
import test_interop_diffusers  # noqa: E402
import test_interop_flux  # noqa: E402
import test_interop_sd3  # noqa: E402
import test_interop_sd_xl  # noqa: E402
import test_controlnet  # noqa: E402

tiny_sd = test_interop_diffusers.tiny_sd  # the fixtures, shared
tiny_xl = test_interop_sd_xl.tiny_xl
tiny_sd3 = test_interop_sd3.tiny_sd3
tiny_flux = test_interop_flux.tiny_flux
tiny_controlnet_sd = test_controlnet.tiny_controlnet_sd

PROMPTS = ["a photo of a cat", "hot"]
HEIGHT, WIDTH = 24, 16  # not the tiny folders' default 16 x 16 (FLUX: 256 x 256)


def _cli_is_the_library(folder, tmp_path, library, *extra):
    """``diffkit sample --height 24 --width 16`` on ``folder``: its grid is ``library(seed=5)``'s images, byte for
    byte (one row per prompt, sample i from seed + i)."""
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--steps", "3", "--seed", "5", "--batch-size", "2", "--height", str(HEIGHT), "--width",
                 str(WIDTH), "--out", str(out), "--no-progress", *extra]) == 0
    images = library(PROMPTS, steps=3, seed=5, height=HEIGHT, width=WIDTH, output_range="-1,1")
    assert images.shape == (2, 3, HEIGHT, WIDTH)
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()


def _latents(channels):
    return torch.randn(2, channels, HEIGHT // 2, WIDTH // 2, generator=torch.Generator().manual_seed(7))  # f = 2


def _unet_library_is_the_pipeline(pipe, sd):
    """SD / SD-XL: text_to_image at 24 x 16 is the pipeline with height=24, width=16 (DDIM on its timesteps)."""
    from diffkit.interop.stable_diffusion import text_to_image
    latents, saved = _latents(4), pipe.scheduler
    try:
        pipe.scheduler = diffusers.DDIMScheduler.from_config(saved.config)
        with torch.no_grad():
            theirs = pipe(PROMPTS, height=HEIGHT, width=WIDTH, num_inference_steps=3, guidance_scale=5.0,
                          latents=latents.clone(), output_type="latent").images
    finally:
        pipe.scheduler = saved
    ours = text_to_image(sd, PROMPTS, steps=3, grid="scheduler", guidance_scale=5.0, latents=latents, height=HEIGHT,
                         width=WIDTH, return_latents=True)
    assert relative_error(ours, theirs) < 1e-5


def test_sd_at_another_size_is_the_pipeline_and_the_cli_the_library(tiny_sd, tmp_path):
    from diffkit.interop.stable_diffusion import text_to_image
    pipe, sd = tiny_sd
    pipe.save_pretrained(tmp_path / "sd")
    _cli_is_the_library(tmp_path / "sd", tmp_path, lambda p, **kw: text_to_image(sd, p, **kw))
    _unet_library_is_the_pipeline(pipe, sd)


def test_sd_xl_size_conditions_follow_the_drawn_size(tiny_xl, tmp_path):
    """The time ids are (24, 16, 0, 0, 24, 16): the pipeline with height=24, width=16 (z_0 within 1e-5)."""
    from diffkit.interop.stable_diffusion import text_to_image
    pipe, root, xl = tiny_xl
    seen = []
    hook = xl.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["added_cond_kwargs"]["time_ids"]),
                                             with_kwargs=True)
    try:
        _cli_is_the_library(root / "xl", tmp_path, lambda p, **kw: text_to_image(xl, p, **kw))
    finally:
        hook.remove()
    assert seen and seen[0].tolist() == [[HEIGHT, WIDTH, 0, 0, HEIGHT, WIDTH]] * 4
    _unet_library_is_the_pipeline(pipe, xl)


def test_sd3_at_another_size_is_the_pipeline_and_the_cli_the_library(tiny_sd3, tmp_path):
    from diffkit.interop.sd3 import text_to_image
    pipe, folder, sd3 = tiny_sd3[False]
    _cli_is_the_library(folder, tmp_path, lambda p, **kw: text_to_image(sd3, p, **kw))
    latents = _latents(4)
    with torch.no_grad():
        theirs = pipe(PROMPTS, height=HEIGHT, width=WIDTH, num_inference_steps=3, guidance_scale=4.0,
                      latents=latents.clone(), output_type="latent", max_sequence_length=12).images
    ours = text_to_image(sd3, PROMPTS, steps=3, guidance_scale=4.0, convention="diffusers", latents=latents,
                         height=HEIGHT, width=WIDTH, return_latents=True, max_sequence_length=12)
    assert relative_error(ours, theirs) < 1e-5


def test_flux_at_another_size_is_the_pipeline_and_the_cli_the_library(tiny_flux, tmp_path):
    """FLUX.1-dev: the dynamic shift's mu follows the size (24 tokens, not the default's 4096)."""
    from diffkit.interop.flux import pack_latents, text_to_image, unpack_latents
    pipe, folder, flux = tiny_flux[True]
    _cli_is_the_library(folder, tmp_path, lambda p, **kw: text_to_image(flux, p, **kw))
    latents = _latents(16)
    with torch.no_grad():
        theirs = pipe(PROMPTS, height=HEIGHT, width=WIDTH, num_inference_steps=3, latents=pack_latents(latents),
                      output_type="latent", max_sequence_length=12).images
    ours = text_to_image(flux, PROMPTS, steps=3, latents=latents, height=HEIGHT, width=WIDTH, return_latents=True,
                         max_sequence_length=12)
    assert relative_error(ours, unpack_latents(theirs, HEIGHT // 2, WIDTH // 2)) < 1e-5


def _refused(capsys, *argv):
    capsys.readouterr()
    assert main(["sample", *map(str, argv), "--prompt", "hot", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_sizes_a_folder_cannot_draw_and_other_checkpoints_are_refused_in_one_line(tiny_sd, tiny_sd3, tiny_flux,
                                                                                  tiny_checkpoint, tmp_path, capsys):
    pipe, _ = tiny_sd
    pipe.save_pretrained(tmp_path / "sd")
    out = tmp_path / "x.png"
    assert "--height 20 is not allowed; give a positive multiple of 8" in _refused(
        capsys, "--checkpoint", tmp_path / "sd", "--height", 20, "--out", out)
    assert "--width 6 is not allowed; give a positive multiple of 4 (the VAE factor 2 x the transformer's patch" in \
        _refused(capsys, "--checkpoint", tiny_sd3[False][1], "--width", 6, "--out", out)
    assert "--width 18 is not allowed; give a positive multiple of 4 (the VAE factor 2 x the 2 x 2 packing" in \
        _refused(capsys, "--checkpoint", tiny_flux[True][1], "--height", 16, "--width", 18, "--out", out)
    assert "--height applies to diffusers folders" in _refused(capsys, "--checkpoint", tiny_checkpoint, "--height",
                                                               32, "--out", out)
    with pytest.raises(SystemExit):  # argparse: "argument --height: 0 is out of range; allowed: 1..1000000000"
        main(["sample", "--checkpoint", str(tmp_path / "sd"), "--height", "0", "--prompt", "hot", "--out", str(out)])
    assert "--height: 0 is out of range" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(DiffkitError, match="--width with --t2i-adapter: the control image sets the size"):
        check_image_size(tmp_path / "sd", None, 32, t2i_adapter=True)
    check_image_size(tmp_path / "sd", None, None, t2i_adapter=True)  # off: nothing to check


def test_controlnet_images_are_resized_to_the_size_as_the_pipeline_does(tiny_controlnet_sd, tmp_path):
    """--controlnet with --height 24 --width 16: the 16 x 16 control image resized to 24 x 16 (the pipeline's
    control_image_processor); the command's PNGs are text_to_image's byte for byte, which is
    StableDiffusionControlNetPipeline with height=24, width=16 (z_0 within 1e-5)."""
    from PIL import Image
    from diffkit.images import save_images
    from diffkit.interop.controlnet import ControlNets
    from diffkit.interop.stable_diffusion import text_to_image
    from diffkit.noise import generators_from_seed, randn
    pipe, nets, sd, root, png = tiny_controlnet_sd
    assert main([str(a) for a in (
        "sample", "--checkpoint", root / "sd", "--prompt", "hot", "--num", "2", "--steps", "3", "--seed", "2",
        "--controlnet", root / "cn0", "--control-image", png, "--height", HEIGHT, "--width", WIDTH,
        "--out", tmp_path / "g.png", "--individual", tmp_path / "cli", "--no-progress")]) == 0
    images = text_to_image(sd, ["hot", "hot"], steps=3, latents=randn((2, 4, 12, 8), generators_from_seed(2, 2)),
                           seed=2, output_range="-1,1", controlnet=ControlNets(nets[:1], [png]), height=HEIGHT,
                           width=WIDTH)
    assert images.shape == (2, 3, HEIGHT, WIDTH)
    save_images(images, tmp_path / "lib")
    for name in ("sample_00000.png", "sample_00001.png"):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "lib" / name).read_bytes()
    latents = _latents(4)
    saved = pipe.controlnet
    try:
        pipe.controlnet = nets[0]
        with torch.no_grad():
            theirs = pipe(PROMPTS, image=Image.open(png).convert("RGB"), height=HEIGHT, width=WIDTH,
                          num_inference_steps=3, guidance_scale=5.0, latents=latents.clone(), eta=0.0,
                          output_type="latent").images
    finally:
        pipe.controlnet = saved
    ours = text_to_image(sd, PROMPTS, steps=3, grid="scheduler", guidance_scale=5.0, latents=latents, eta=0.0,
                         return_latents=True, controlnet=ControlNets(nets[:1], [png]), height=HEIGHT, width=WIDTH)
    assert relative_error(ours, theirs) < 1e-5
