"""Several IP-Adapters at once (diffkit.interop.ip_adapter_multi) against diffusers' own pipelines with
``load_ip_adapter([...], weight_name=[...])`` + ``set_ip_adapter_scale([...])`` + ``ip_adapter_image=[...]``: the
tiny random SD 1.x folder and adapter files of test_ip_adapter (a basic and a Plus adapter, one tiny CLIP image
encoder), the tiny SD-XL folder of test_ip_adapter_sd_xl, the same z_T and DDIM scheduler, compared on the final
latents; ``diffkit sample`` with repeated ``--ip-adapter`` against the library."""
import json
from argparse import Namespace

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.ip_adapter import IPAdapter, load_image_encoder, read_ip_adapter  # noqa: E402
from diffkit.interop.ip_adapter_multi import IPAdapters  # noqa: E402
from diffkit.interop.stable_diffusion import text_to_image  # noqa: E402

import test_ip_adapter  # noqa: E402
import test_ip_adapter_sd_xl  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_ip_adapter import image_png  # noqa: E402

tiny_ip, tiny_xl_ip = test_ip_adapter.tiny_ip, test_ip_adapter_sd_xl.tiny_xl_ip  # the fixtures (tiny folders), shared

STEPS, SCALE = 3, 5.0


def _theirs(pipe, root, weights, images, scales, latents, prompts):
    from PIL import Image

    def opened(image):
        return [opened(i) for i in image] if isinstance(image, list) else Image.open(image).convert("RGB")

    pipe.load_ip_adapter([str(root)] * len(weights), subfolder=[""] * len(weights), weight_name=weights,
                         local_files_only=True)
    try:
        pipe.set_ip_adapter_scale(scales)
        with torch.no_grad():
            return pipe(prompts, ip_adapter_image=[opened(i) for i in images], num_inference_steps=STEPS,
                        guidance_scale=SCALE, latents=latents.clone(), eta=0.0, output_type="latent").images
    finally:
        pipe.unload_ip_adapter()


def _adapters(root, weights, images, scales):
    encoder = load_image_encoder(root / "image_encoder", progress=False)
    return IPAdapters([IPAdapter(read_ip_adapter(root / w), encoder, i, s) for w, i, s in zip(weights, images, scales)])


def _ours(sd, adapter, latents, prompts):
    return text_to_image(sd, prompts, sampler="ddim", steps=STEPS, grid="scheduler", guidance_scale=SCALE,
                         latents=latents, eta=0.0, return_latents=True, ip_adapter=adapter)


@pytest.fixture(scope="module")
def more_images(tiny_ip):
    root = tiny_ip[2]
    return image_png(root / "image2.png", seed=5), image_png(root / "image3.png", seed=6, width=30)


@pytest.mark.parametrize("weights, images, scales", [
    (["ip.safetensors", "plus.bin"], [0, 1], [0.6, 0.8]),
    (["ip.safetensors", "plus.bin"], [[0, 2], 1], [1.0, 0.5]),  # two image prompts for the first adapter
    (["ip.safetensors", "ip.safetensors"], [0, 1], [0.0, 0.7]),  # lambda_1 = 0: that adapter skipped
])
def test_two_ip_adapters_match_the_pipeline(tiny_ip, more_images, weights, images, scales):
    """A basic and a Plus adapter (or the same file twice), each with its image prompt(s) and scale:
    StableDiffusionPipeline.load_ip_adapter with lists (CFG s = 5, DDIM)."""
    pipe, sd, root, png = tiny_ip
    pngs = [png, *more_images]
    images = [[pngs[j] for j in i] if isinstance(i, list) else pngs[i] for i in images]
    latents = torch.randn(sd.latent_shape(1), generator=torch.Generator().manual_seed(7))
    theirs = _theirs(pipe, root, weights, images, scales, latents, ["a photo of a cat"])
    ours = _ours(sd, _adapters(root, weights, images, scales), latents, ["a photo of a cat"])
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    first = IPAdapter(read_ip_adapter(root / weights[0]), load_image_encoder(root / "image_encoder", progress=False),
                      images[0], scales[0])
    assert relative_error(_ours(sd, first, latents, ["a photo of a cat"]), theirs) > 1e-2  # the second one acts


def test_two_ip_adapters_on_sd_xl_match_the_pipeline(tiny_xl_ip, tmp_path):
    """StableDiffusionXLPipeline with a Plus and a basic adapter (their image embeds beside the pooled text
    embedding and the time ids), two prompts."""
    pipe, xl, root, png = tiny_xl_ip
    other = image_png(tmp_path / "other.png", seed=9)
    weights, images, scales = ["plus.bin", "ip.safetensors"], [png, other], [0.7, 0.5]
    latents = torch.randn(xl.latent_shape(2), generator=torch.Generator().manual_seed(7))
    prompts = ["a photo of a cat", "a dog"]
    theirs = _theirs(pipe, root, weights, images, scales, latents, prompts)
    ours = _ours(xl, _adapters(root, weights, images, scales), latents, prompts)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)


def _pngs_of(folder):
    from PIL import Image
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in sorted(folder.glob("*.png"))])


def test_sample_command_with_two_ip_adapters_is_text_to_image(tiny_ip, more_images, tmp_path, capsys):
    """``--ip-adapter A:0.6 --ip-adapter-image PNG --ip-adapter B:0.8 --ip-adapter-image DIR`` (a folder: that
    adapter's two image prompts): text_to_image's PNGs byte for byte; a count mismatch, a second adapter on an
    SD3 folder and a folder of image prompts on an SD3 / FLUX.1 folder are one line (several FLUX.1 adapters:
    test_flux_ip_adapter.py)."""
    from diffkit.commands._ip_adapter import IPAdapterRequest
    from diffkit.images import save_images
    pipe, sd, root, png = tiny_ip
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for index, image in enumerate(more_images):
        (prompts / f"p{index}.png").write_bytes(image.read_bytes())
    flags = ["sample", "--checkpoint", root / "sd", "--prompt", "a cat", "--num", "2", "--steps", "2", "--seed", "3",
             "--ip-adapter", f"{root / 'ip.safetensors'}:0.6", "--ip-adapter-image", png,
             "--ip-adapter", f"{root / 'plus.bin'}:0.8", "--no-progress"]
    assert main([str(a) for a in flags + ["--out", tmp_path / "bad" / "g.png"]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 --ip-adapter-image for 2 --ip-adapter" in err[0] and not (tmp_path / "bad").exists()
    assert main([str(a) for a in flags + ["--ip-adapter-image", prompts, "--out", tmp_path / "g.png",
                                          "--individual", tmp_path / "each"]]) == 0
    adapters = _adapters(root, ["ip.safetensors", "plus.bin"], [png, [str(p) for p in more_images]], [0.6, 0.8])
    save_images(text_to_image(sd, ["a cat", "a cat"], steps=2, seed=3, output_range="-1,1", ip_adapter=adapters),
                tmp_path / "lib")
    assert np.array_equal(_pngs_of(tmp_path / "each"), _pngs_of(tmp_path / "lib"))
    for kind, name in (("sd3", "StableDiffusion3Pipeline"), ("flux", "FluxPipeline")):
        folder = tmp_path / kind
        folder.mkdir()
        (folder / "model_index.json").write_text(json.dumps({"_class_name": name}))
        two = Namespace(ip_adapter=[(str(root / "ip.safetensors"), 1.0)] * 2, ip_adapter_image=[str(png)] * 2,
                        image_encoder=None, negative_ip_adapter_image=None)
        if kind == "sd3":
            with pytest.raises(DiffkitError, match="several --ip-adapter apply to Stable Diffusion 1.x / 2.x, SD-XL "
                                                   "and FLUX.1 folders .* diffusers' SD3 pipeline takes one"):
                IPAdapterRequest.from_args(two, folder)
        with pytest.raises(DiffkitError, match="is a folder; the .* IP-Adapter takes one image prompt file"):
            IPAdapterRequest.from_args(Namespace(**{**vars(two), "ip_adapter": two.ip_adapter[:1],
                                                    "ip_adapter_image": [str(prompts)]}), folder)
    from diffkit.interop.flux_ip_adapter import FluxIPAdapter
    from diffkit.interop.sd3_ip_adapter import SD3IPAdapter
    for cls, where in ((SD3IPAdapter, "diffusers' SD3 pipeline takes one"), (FluxIPAdapter, "FluxIPAdapters of")):
        with pytest.raises(DiffkitError, match=f"IPAdapters takes Stable Diffusion .* {cls.__name__} is not allowed "
                                               f"\\(.*{where}"):
            IPAdapters([cls.__new__(cls)])
    capsys.readouterr()


def test_edit_command_with_two_ip_adapters_is_the_img2img_pipeline(tiny_ip, more_images, tmp_path, capsys):
    """``diffkit edit`` with two ``--ip-adapter``: StableDiffusionImg2ImgPipeline with both loaded (lists), to
    one 8-bit level."""
    from PIL import Image

    from test_ip_adapter import edit_with_adapters
    pipe, sd, root, png = tiny_ip
    ours, image, img2img = edit_with_adapters(
        tiny_ip, tmp_path, capsys, "--ip-adapter", f"{root / 'ip.safetensors'}:0.7", "--ip-adapter-image", png,
        "--ip-adapter", f"{root / 'plus.bin'}:0.9", "--ip-adapter-image", more_images[0])
    img2img.load_ip_adapter([str(root)] * 2, subfolder=["", ""], weight_name=["ip.safetensors", "plus.bin"],
                            local_files_only=True)
    try:
        img2img.set_ip_adapter_scale([0.7, 0.9])
        with torch.no_grad():
            theirs = img2img(["hot"], image=image, strength=0.5, num_inference_steps=4, guidance_scale=5.0, eta=0.0,
                             ip_adapter_image=[Image.open(p).convert("RGB") for p in (png, more_images[0])],
                             output_type="np", generator=[torch.Generator().manual_seed(10)]).images
    finally:
        img2img.unload_ip_adapter()
    assert np.abs(ours - np.round(theirs * 255).astype(int)).max() <= 1
