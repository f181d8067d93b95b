"""Z-Image ControlNets (diffkit.interop.z_image_controlnet) against diffusers' own ZImageControlNetPipeline on the
tiny Z-Image folder of tests/test_z_image.py with tiny ZImageControlNetModel folders (one control layer, their
zero-initialised before_proj / after_proj layers randomised so that the hints change the output), and
``diffkit sample --controlnet`` on it (the library's PNG byte for byte; what does not apply refused in one line)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.controlnet import ControlNets, load_model_folder  # noqa: E402
from diffkit.interop.z_image import text_to_image  # noqa: E402

from _pixart_helpers import assert_sample_refusals  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
import test_z_image  # noqa: E402
from test_z_image import LENGTH, NEGATIVES, PROMPTS, SIZE  # noqa: E402

tiny_z_image = test_z_image.tiny_z_image  # the folder fixture, shared

VARIANTS = {  # ZImageControlNetModel configs: Union 1.0 (16 channels), 2.1 (33, control_noise_refiner blocks)
    "union": dict(control_in_dim=16),
    "union-2.1": dict(control_in_dim=33, add_control_noise_refiner="control_noise_refiner",
                      control_refiner_layers_places=[0])}


def _control_images(n=2):
    from PIL import Image
    gen = torch.Generator().manual_seed(9)
    return [Image.fromarray((torch.rand(SIZE, SIZE, 3, generator=gen) * 255).to(torch.uint8).numpy())
            for _ in range(n)]


@pytest.fixture(scope="module")
def controlnet_folders(tmp_path_factory):
    """{variant: a saved ZImageControlNetModel folder} fitting the tiny transformer (dim 32, 2 heads)."""
    root, out = tmp_path_factory.mktemp("z_image_controlnets"), {}
    for i, (name, config) in enumerate(VARIANTS.items()):
        torch.manual_seed(10 + i)
        model = diffusers.ZImageControlNetModel(control_layers_places=[0], dim=32, n_refiner_layers=1, n_heads=2,
                                                n_kv_heads=2, **config)
        with torch.no_grad():
            for key, param in model.named_parameters():
                if "before_proj" in key or "after_proj" in key:  # zero-initialised: randomised to mean something
                    param.normal_(0, 0.2)
        model.save_pretrained(root / name)
        out[name] = root / name
    return out


def _pipeline(tiny, folder):
    pipe = diffusers.ZImageControlNetPipeline(**tiny[0].components,
                                              controlnet=load_model_folder("ZImageControlNetModel", folder,
                                                                           progress=False))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("variant,call", [
    ("union", {"negative_prompt": NEGATIVES, "cfg_truncation": 0.3}),  # the pipeline's default scale 0.75, W = 5
    ("union-2.1", {"guidance_scale": 0.0, "controlnet_conditioning_scale": 1.3}),  # zero-padded to 33 channels
    ("union", {"guidance_scale": 2.0, "cfg_normalization": True, "controlnet_conditioning_scale": 0.0})])
def test_z_image_controlnet_samples_as_the_pipeline(tiny_z_image, controlnet_folders, variant, call):
    """Same z_0 as ZImageControlNetPipeline from the same latents: the control image's VAE mode latents (zero-padded
    to control_in_dim), the ControlNet's scaled hints added to the transformer layers, in both guidance halves; one
    control image per prompt for the first case."""
    _, _, model = tiny_z_image
    folder = controlnet_folders[variant]
    pipe = _pipeline(tiny_z_image, folder)
    images = _control_images(2 if "cfg_truncation" in call else 1)
    call = dict(call)
    scale = call.pop("controlnet_conditioning_scale", 0.75)
    noise = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = pipe(list(PROMPTS), control_image=images if len(images) > 1 else images[0], num_inference_steps=3,
                      latents=noise.clone(), height=SIZE, width=SIZE, output_type="latent",
                      max_sequence_length=LENGTH, controlnet_conditioning_scale=scale,
                      **{k: list(v) if isinstance(v, list) else v for k, v in call.items()}).images
    nets = ControlNets([load_model_folder("ZImageControlNetModel", folder, progress=False)], [images], scale)
    ours = text_to_image(model, PROMPTS, steps=3, latents=noise, return_latents=True, height=SIZE, width=SIZE,
                         max_sequence_length=LENGTH, controlnets=nets, **call)
    plain = text_to_image(model, PROMPTS, steps=3, latents=noise, return_latents=True, height=SIZE, width=SIZE,
                          max_sequence_length=LENGTH, **call)
    print("z-image controlnet", variant, scale, float((ours - theirs).abs().max()), relative_error(ours, theirs),
          "vs without", relative_error(plain, theirs))
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)  # measured: see docs/interop.md
    assert (relative_error(plain, theirs) > 1e-2) == (scale != 0)  # the hints matter (and 0 adds nothing)


def test_sample_command_with_a_z_image_controlnet_is_the_library(tiny_z_image, controlnet_folders, tmp_path,
                                                                  capsys):
    """``diffkit sample --controlnet DIR --control-image PNG`` on a Z-Image folder writes the library's grid (the
    pipeline's scale 0.75 by default), ``diffkit edit --mask --controlnet`` the library's inpainting
    (ZImageControlNetInpaintPipeline); what the pipelines do not take: one line, no file."""
    from diffkit.images import save_grid
    _, path, model = tiny_z_image
    image = _control_images(1)[0]
    image.save(tmp_path / "control.png")
    out, folder = tmp_path / "grid.png", controlnet_folders["union-2.1"]
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--num", "1", "--steps", "2",
                 "--seed", "5", "--height", str(SIZE), "--width", str(SIZE), "--guidance-scale", "2",
                 "--max-sequence-length", str(LENGTH), "--controlnet", str(folder), "--control-image",
                 str(tmp_path / "control.png"), "--out", str(out), "--no-progress"]) == 0
    nets = ControlNets([load_model_folder("ZImageControlNetModel", folder, progress=False)],
                       [tmp_path / "control.png"], 0.75)
    images = text_to_image(model, PROMPTS[:1], steps=2, seed=5, height=SIZE, width=SIZE, guidance_scale=2.0,
                           max_sequence_length=LENGTH, controlnets=nets, output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 8)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    control = ["--controlnet", str(folder), "--control-image", str(tmp_path / "control.png")]
    assert_sample_refusals(main, path, tmp_path, capsys, [
        (control * 2, "2 --controlnet on a Z-Image folder; ZImageControlNetPipeline takes one ZImageControlNetModel"),
        ([*control, "--control-guidance-end", "0.5"], "does not apply to a Z-Image ControlNet"),
        (["--controlnet", str(path / "transformer"), "--control-image", str(tmp_path / "control.png")],
         "allowed: a diffusers ZImageControlNetModel folder (a Z-Image folder takes Z-Image ControlNets)")])
    from diffkit.commands.edit import read_mask, read_pngs
    from diffkit.images import save_images
    from diffkit.interop.z_image import image_to_image
    save_images(torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1, tmp_path / "in",
                prefix="in")
    save_images((torch.rand(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) > 0.5).float().expand(
        1, 3, SIZE, SIZE) * 2 - 1, tmp_path / "mask", prefix="mask")
    mask_png = tmp_path / "mask" / "mask_00000.png"
    edit = ["edit", "--checkpoint", str(path), "--images", str(tmp_path / "in"), "--prompt", "hot", "--steps", "2",
            "--max-sequence-length", str(LENGTH), "--controlnet", str(folder), "--control-image",
            str(tmp_path / "control.png"), "--controlnet-scale", "0.9"]
    assert main([*edit, "--mask", str(mask_png), "--out", str(tmp_path / "edited"), "--no-progress"]) == 0
    pixels, _ = read_pngs(tmp_path / "in", "RGB")
    nets = ControlNets([load_model_folder("ZImageControlNetModel", folder, progress=False)],
                       [tmp_path / "control.png"], 0.9)
    save_images(image_to_image(model, pixels, "hot", steps=2, seed=0, mask=read_mask(mask_png, pixels),
                               controlnets=nets, max_sequence_length=LENGTH, output_range="-1,1"),
                tmp_path / "expected", prefix="edit")
    for name in ("edit_00000.png", "edit_00001.png"):
        assert (tmp_path / "edited" / name).read_bytes() == (tmp_path / "expected" / name).read_bytes()
    for extra, expected in [([], "a ControlNet with Z-Image img2img is not supported (diffusers 0.42.1 has no such "
                                 "pipeline); give --mask"),
                            (["--mask", str(mask_png), "--strength", "0.5"], "--strength does not apply to Z-Image "
                                                                             "ControlNet inpainting")]:
        capsys.readouterr()
        assert main([*edit, *extra, "--out", str(tmp_path / "never")]) == 2
        assert expected in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_z_image_controlnets_that_do_not_fit_are_refused(tiny_z_image, controlnet_folders):
    """A ControlNet of another width or with fewer control channels than latents, a ControlNet with img2img: one
    line each, before any sampling."""
    _, _, model = tiny_z_image
    image = _control_images(1)[0]
    for config, expected in [(dict(dim=64, n_heads=4, n_kv_heads=4, control_in_dim=16), "dim=64 but this Z-Image"),
                             (dict(dim=32, n_heads=2, n_kv_heads=2, control_in_dim=8), "control_in_dim=8; allowed: at "
                                                                                       "least 16")]:
        other = diffusers.ZImageControlNetModel(control_layers_places=[0], n_refiner_layers=1, **config)
        with pytest.raises(DiffkitError) as caught:
            text_to_image(model, "hot", steps=1, height=SIZE, width=SIZE, controlnets=ControlNets([other], [image]))
        assert expected in str(caught.value) and "\n" not in str(caught.value), str(caught.value)
    from diffkit.interop.z_image import image_to_image
    nets = ControlNets([load_model_folder("ZImageControlNetModel", controlnet_folders["union"], progress=False)],
                       [image])
    with pytest.raises(DiffkitError, match="a ControlNet with Z-Image img2img is not supported"):
        image_to_image(model, torch.zeros(1, 3, SIZE, SIZE), "hot", steps=1, controlnets=nets)
    mask = torch.ones(1, 1, SIZE, SIZE)
    for strength, expected in [(None, "control_in_dim=16; allowed for inpainting (ZImageControlNetInpaintPipeline): "
                                      "33"), (0.5, "strength=0.5 does not apply to Z-Image ControlNet inpainting")]:
        with pytest.raises(DiffkitError) as caught:
            image_to_image(model, torch.zeros(1, 3, SIZE, SIZE), "hot", strength, steps=1, mask=mask,
                           controlnets=nets)
        assert expected in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


@pytest.mark.parametrize("call", [{"negative_prompt": NEGATIVES}, {"guidance_scale": 0.0, "scale": 1.2}])
def test_z_image_controlnet_inpaints_as_the_pipeline(tiny_z_image, controlnet_folders, call):
    """Same z_0 as ZImageControlNetInpaintPipeline from the same latents: a Union 2.1 ControlNet reading the control
    latents, the kept-region mask and the masked image's latents (mode), one mask per image."""
    from diffkit.interop.z_image import image_to_image
    tiny, folder = tiny_z_image, controlnet_folders["union-2.1"]
    pipe = diffusers.ZImageControlNetInpaintPipeline(
        **tiny[0].components, controlnet=load_model_folder("ZImageControlNetModel", folder, progress=False))
    pipe.set_progress_bar_config(disable=True)
    call = dict(call)
    scale = call.pop("scale", 0.75)
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) * 2 - 1
    mask = (torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(4)) > 0.5).float()
    control = _control_images(1)[0]
    noise = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = pipe(list(PROMPTS), image=images, mask_image=mask, control_image=control, num_inference_steps=3,
                      latents=noise.clone(), height=SIZE, width=SIZE, output_type="latent",
                      max_sequence_length=LENGTH, controlnet_conditioning_scale=scale,
                      **{k: list(v) if isinstance(v, list) else v for k, v in call.items()}).images
    nets = ControlNets([load_model_folder("ZImageControlNetModel", folder, progress=False)], [control], scale)
    ours = image_to_image(tiny[2], images, PROMPTS, steps=3, mask=mask, controlnets=nets, latents=noise,
                          return_latents=True, max_sequence_length=LENGTH, **call)
    unmasked = image_to_image(tiny[2], images, PROMPTS, steps=3, mask=1 - mask, controlnets=nets, latents=noise,
                              return_latents=True, max_sequence_length=LENGTH, **call)
    print("z-image controlnet inpaint", call, float((ours - theirs).abs().max()), relative_error(ours, theirs),
          "other mask", relative_error(unmasked, theirs))
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)  # measured: see docs/interop.md
    assert relative_error(unmasked, theirs) > 1e-3  # the mask and masked image matter
