"""ControlNet on an SD-XL folder (diffkit.interop.controlnet with diffkit.interop.sd_xl) against diffusers'
own StableDiffusionXLControlNetPipeline / ...Img2ImgPipeline: the tiny random SD-XL pipeline of
test_interop_sd_xl, ControlNets made by test_controlnet's ``tiny_controlnet`` from its UNet (so they take the
pooled text embedding and the time ids as added_cond_kwargs), the same z_T and DDIM scheduler on both sides,
compared on the final latents. The control image is 12x20, not the UNet's default 16x16: the output and the
time ids (h, w, 0, 0, h, w) follow it."""
import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.controlnet import ControlNets  # noqa: E402
from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image  # noqa: E402

from test_controlnet import control_png, tiny_controlnet  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd_xl import PROMPTS, tiny_sd_xl_pipeline  # noqa: E402

STEPS, SCALE = 4, 5.0
HEIGHT, WIDTH = 12, 20


def xl_with_controlnets(root, make_controlnet, pipeline_class, prefix: str):
    """(``pipeline_class`` on a tiny SD-XL with the first of two ControlNets ``make_controlnet(unet, seed)``, the two
    ControlNets, the loaded SD-XL folder, ``root`` with xl/, {prefix}0/, {prefix}1/, two control PNGs)."""
    xl_pipe = tiny_sd_xl_pipeline(root)
    xl_pipe.save_pretrained(root / "xl")
    nets = [make_controlnet(xl_pipe.unet, seed) for seed in (1, 2)]
    for index, net in enumerate(nets):
        net.save_pretrained(root / f"{prefix}{index}")
    pipe = pipeline_class(**xl_pipe.components, controlnet=nets[0], add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    pngs = [control_png(root / f"control{i}.png", HEIGHT, WIDTH, seed=i) for i in range(2)]
    return pipe, nets, load_stable_diffusion(root / "xl", progress=False), root, pngs


def img2img_pipeline(pipe, controlnet, pipeline_class):
    """``pipeline_class`` (an SD-XL ControlNet img2img pipeline) on ``pipe``'s components with ``controlnet``, DDIM on
    the grid diffkit's ``--spacing leading --final zero`` gives."""
    parts = {**pipe.components, "controlnet": controlnet}
    parts["scheduler"] = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, steps_offset=0,
                                                             set_alpha_to_one=True)
    other = pipeline_class(**parts, requires_aesthetics_score=False, add_watermarker=False)
    other.set_progress_bar_config(disable=True)
    return other


@pytest.fixture(scope="module")
def tiny_xl_controlnet(tmp_path_factory):
    """(StableDiffusionXLControlNetPipeline, two ControlNets, loaded SD-XL, root with xl/, cn0/, cn1/, two PNGs)."""
    return xl_with_controlnets(tmp_path_factory.mktemp("tiny_xl_controlnet"), tiny_controlnet,
                               diffusers.StableDiffusionXLControlNetPipeline, "cn")


def _latents(batch=2):
    return torch.randn((batch, 4, HEIGHT // 2, WIDTH // 2), generator=torch.Generator().manual_seed(7))


def _theirs(pipe, controlnet, pngs, latents, **options):
    from PIL import Image
    saved = pipe.controlnet
    images = [Image.open(p).convert("RGB") for p in pngs]
    try:
        pipe.controlnet = controlnet if not isinstance(controlnet, list) else diffusers.MultiControlNetModel(controlnet)
        with torch.no_grad():
            return pipe(PROMPTS, image=images if isinstance(controlnet, list) else images[0], guidance_scale=SCALE,
                        num_inference_steps=STEPS, latents=latents.clone(), eta=0.0, output_type="latent",
                        **options).images
    finally:
        pipe.controlnet = saved


def _ours(xl, models, pngs, latents, **control):
    return text_to_image(xl, PROMPTS, sampler="ddim", steps=STEPS, grid="scheduler", guidance_scale=SCALE,
                         latents=latents, eta=0.0, return_latents=True,
                         controlnet=None if models is None else ControlNets(models, pngs, **control))


@pytest.mark.parametrize("control, pipe_options", [
    ({}, {}),
    ({"scales": 0.5}, {"controlnet_conditioning_scale": 0.5}),
    ({"start": 0.25, "end": 0.75}, {"control_guidance_start": 0.25, "control_guidance_end": 0.75}),
    ({"guess_mode": True}, {"guess_mode": True}),
])
def test_sd_xl_controlnet_matches_the_pipeline(tiny_xl_controlnet, control, pipe_options):
    """StableDiffusionXLControlNetPipeline (CFG s = 5, zeroed null half, DDIM): scale 1 and 0.5, a window,
    guess mode (the ControlNet sees the conditional half's text_embeds and time_ids only)."""
    pipe, nets, xl, root, pngs = tiny_xl_controlnet
    latents = _latents()
    theirs = _theirs(pipe, nets[0], pngs[:1], latents, **pipe_options)
    ours = _ours(xl, nets[:1], pngs[:1], latents, **control)
    assert ours.shape == (2, 4, HEIGHT // 2, WIDTH // 2)
    assert relative_error(ours, theirs) < 1e-5
    assert relative_error(_ours(xl, None, None, latents), theirs) > 1e-3  # the ControlNet changes the result


def test_sd_xl_multi_controlnet_matches_the_pipeline(tiny_xl_controlnet):
    """Two ControlNets (MultiControlNetModel: residuals summed in order), a scale and a window each."""
    pipe, nets, xl, root, pngs = tiny_xl_controlnet
    latents = _latents()
    options = dict(scales=[1.0, 0.5], start=[0.0, 0.5], end=[0.75, 1.0])
    theirs = _theirs(pipe, nets, pngs, latents, controlnet_conditioning_scale=options["scales"],
                     control_guidance_start=options["start"], control_guidance_end=options["end"])
    assert relative_error(_ours(xl, nets, pngs, latents, **options), theirs) < 1e-5
    assert relative_error(_ours(xl, nets[:1], pngs[:1], latents, end=0.75), theirs) > 1e-3


def test_sd_xl_controlnet_scale_zero_is_plain_sd_xl_and_time_ids_follow_the_control_image(tiny_xl_controlnet):
    """Scale 0: plain SD-XL bit for bit (no ControlNet call). The 12x20 control image gives 12x20 outputs
    whose time ids are (12, 20, 0, 0, 12, 20): the plain pipeline with height=12, width=20 and the same latents."""
    pipe, nets, xl, root, pngs = tiny_xl_controlnet
    latents = _latents()
    plain = text_to_image(xl, PROMPTS, sampler="dpm-solver++-2m", steps=3, latents=latents, return_latents=True)
    zero = text_to_image(xl, PROMPTS, sampler="dpm-solver++-2m", steps=3, latents=latents, return_latents=True,
                         controlnet=ControlNets(nets, pngs, scales=0.0))
    assert torch.equal(plain, zero)
    seen = []
    handle = xl.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["added_cond_kwargs"]["time_ids"]),
                                               with_kwargs=True)
    try:
        text_to_image(xl, PROMPTS, steps=1, latents=latents, controlnet=ControlNets(nets[:1], pngs[:1]))
    finally:
        handle.remove()
    assert seen and seen[0].tolist() == [[HEIGHT, WIDTH, 0, 0, HEIGHT, WIDTH]] * 4


def _pngs_of(folder):
    from PIL import Image
    return torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)
                        for f in sorted(folder.glob("*.png"))]).float() / 255


def test_sample_command_with_sd_xl_controlnet_is_text_to_image(tiny_xl_controlnet, tmp_path, capsys):
    """``diffkit sample --checkpoint SDXL --controlnet DIR --control-image PNG``: the PNGs of text_to_image
    with the same ControlNets (byte for byte, sample i from seed + i), the control image's 12x20 size; the
    library side is the pipeline's (test_sd_xl_multi_controlnet_matches_the_pipeline)."""
    from diffkit.cli import main
    from diffkit.images import save_images
    pipe, nets, xl, root, pngs = tiny_xl_controlnet
    individual = tmp_path / "each"
    assert main([str(a) for a in (
        "sample", "--checkpoint", root / "xl", "--prompt", "hot", "--num", "2", "--steps", "2", "--seed", "5",
        "--controlnet", root / "cn0", "--control-image", pngs[0], "--controlnet", root / "cn1", "--control-image",
        pngs[1], "--controlnet-scale", "0.8", "--controlnet-scale", "0.6", "--control-guidance-end", "0.7",
        "--out", tmp_path / "grid.png", "--individual", individual, "--no-progress")]) == 0
    ours = _pngs_of(individual)
    assert ours.shape == (2, 3, HEIGHT, WIDTH)
    images = text_to_image(xl, ["hot", "hot"], steps=2, seed=5, output_range="-1,1",  # the saved nets' weights
                           controlnet=ControlNets(nets, pngs, scales=[0.8, 0.6], end=0.7))
    save_images(images, tmp_path / "lib")
    assert torch.equal(ours, _pngs_of(tmp_path / "lib"))
    capsys.readouterr()


def test_sd_xl_controlnet_img2img_is_the_pipeline(tiny_xl_controlnet):
    """latent_img2img with the controlled SD-XL (prompt_guidance's cond, time ids of the images' size) is
    StableDiffusionXLControlNetImg2ImgPipeline (requires_aesthetics_score False, DDIM, a window over the
    strength's steps, the same generators)."""
    from diffkit.interop.controlnet import editing_grid
    from diffkit.latent_editing import latent_img2img
    from PIL import Image
    pipe, nets, xl, root, pngs = tiny_xl_controlnet
    grid_options = dict(spacing="leading", final="sigma_min", steps_offset=1, eta=0.0)
    other = diffusers.StableDiffusionXLControlNetImg2ImgPipeline(**{**pipe.components, "controlnet": nets[0]},
                                                                 requires_aesthetics_score=False,
                                                                 add_watermarker=False)
    other.set_progress_bar_config(disable=True)
    image = torch.rand(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = other(PROMPTS, image=image, control_image=Image.open(pngs[0]).convert("RGB"), strength=0.5,
                       num_inference_steps=4, guidance_scale=SCALE, output_type="latent",
                       controlnet_conditioning_scale=0.7, control_guidance_start=0.5,
                       generator=[torch.Generator().manual_seed(s) for s in (10, 11)]).images
    grid = editing_grid(xl, "ddim", 4, 0.5, dict(grid_options))
    controlled = ControlNets(nets[:1], pngs[:1], 0.7, 0.5).controlling(xl, HEIGHT, WIDTH, grid)
    guided, cond = controlled.prompt_guidance(PROMPTS, None, SCALE, "diffusers", 0.0, image_size=(HEIGHT, WIDTH))
    ours = latent_img2img(guided, controlled, image * 2 - 1, 0.5, "ddim", 4, posterior="sample", seed=10, cond=cond,
                          progress=False, return_latents=True, **grid_options)
    assert relative_error(ours, theirs) < 1e-5


def test_an_sd_1_controlnet_on_sd_xl_is_refused_in_one_line(tiny_xl_controlnet, tmp_path, capsys):
    """A ControlNet without SD-XL's added embedding is refused in one line (library and command, no output)."""
    from diffkit.cli import main
    pipe, nets, xl, root, pngs = tiny_xl_controlnet
    config = json.loads((root / "cn0" / "config.json").read_text())
    other = diffusers.ControlNetModel.from_config({**config, "addition_embed_type": None})
    match = "addition_embed_type=None but the Stable Diffusion UNet has 'text_time'"
    with pytest.raises(DiffkitError, match=match):
        ControlNets([other], pngs[:1]).controlling(xl, HEIGHT, WIDTH)
    other.save_pretrained(tmp_path / "sd1_cn")
    assert main([str(a) for a in ("sample", "--checkpoint", root / "xl", "--prompt", "hot", "--controlnet",
                                  tmp_path / "sd1_cn", "--control-image", pngs[0], "--out", tmp_path / "o" / "g.png",
                                  "--no-progress")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0] and not (tmp_path / "o").exists()


def test_edit_command_with_sd_xl_controlnet_is_the_controlnet_img2img_pipeline(tiny_xl_controlnet, tmp_path, capsys):
    """``diffkit edit --checkpoint SDXL --controlnet DIR --control-image PNG``: StableDiffusionXLControlNetImg2Img
    Pipeline's images to one 8-bit level (image i from seed + i; DDIM with steps_offset 0, set_alpha_to_one)."""
    from PIL import Image
    from test_latent_editing import cli
    pipe, nets, xl, root, pngs = tiny_xl_controlnet
    (tmp_path / "in").mkdir()
    image = torch.rand(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4))
    for i in range(2):
        Image.fromarray((image[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            tmp_path / "in" / f"in_{i}.png")
    code, out, err = cli(capsys, "--checkpoint", root / "xl", "--images", tmp_path / "in", "--prompt", PROMPTS[0],
                         "--prompt", PROMPTS[1], "--strength", 0.75, "--steps", 4, "--spacing", "leading", "--final",
                         "zero", "--seed", 10, "--controlnet", root / "cn0", "--control-image", pngs[0],
                         "--controlnet-scale", 0.8, "--control-guidance-start", 0.3, "--out", tmp_path / "out")
    assert code == 0, err
    image = _pngs_of(tmp_path / "in")
    other = img2img_pipeline(pipe, nets[0], diffusers.StableDiffusionXLControlNetImg2ImgPipeline)
    with torch.no_grad():
        theirs = other(PROMPTS, image=image, control_image=Image.open(pngs[0]).convert("RGB"), strength=0.75,
                       num_inference_steps=4, guidance_scale=SCALE, output_type="np",
                       controlnet_conditioning_scale=0.8, control_guidance_start=0.3,
                       generator=[torch.Generator().manual_seed(s) for s in (10, 11)]).images
    ours = np.stack([np.asarray(Image.open(tmp_path / "out" / f"edit_{i:05d}.png")) for i in range(2)])
    assert ours.shape == (2, HEIGHT, WIDTH, 3)
    assert np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1


@pytest.mark.parametrize("name, scale", [("lcm", 1.0), ("lcm", 1.5), ("tcd", 1.5)])
def test_sd_xl_controlnet_with_a_scheduler_override_matches_the_pipeline(tiny_xl_controlnet, name, scale):
    """``scheduler="lcm"`` / ``"tcd"`` with a ControlNet on SD-XL = StableDiffusionXLControlNetPipeline with
    ``LCMScheduler`` / ``TCDScheduler.from_config`` (tcd: ``tcd:sigma_min``, eta 0.3), the same per-sample step
    noise; the controlled UNet's output goes to the consistency function (lcm) or as it is (tcd)."""
    from diffkit.noise import generators_from_seed
    from PIL import Image
    pipe, nets, _, root, pngs = tiny_xl_controlnet
    cls = {"lcm": diffusers.LCMScheduler, "tcd": diffusers.TCDScheduler}[name]
    theirs_pipe = type(pipe)(**{**pipe.components, "scheduler": cls.from_config(pipe.scheduler.config)})
    theirs_pipe.set_progress_bar_config(disable=True)
    xl = load_stable_diffusion(root / "xl", scheduler=name, progress=False)
    latents = _latents()
    with torch.no_grad():
        theirs = theirs_pipe(PROMPTS, image=Image.open(pngs[0]).convert("RGB"), guidance_scale=scale,
                             num_inference_steps=3, latents=latents.clone(), generator=generators_from_seed(4, 2),
                             output_type="latent", **({"eta": 0.3} if name == "tcd" else {})).images
    ours = text_to_image(xl, PROMPTS, sampler="tcd:sigma_min" if name == "tcd" else None, steps=3, guidance_scale=scale,
                         latents=latents, seed=4, return_latents=True, controlnet=ControlNets(nets[:1], pngs[:1]))
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
