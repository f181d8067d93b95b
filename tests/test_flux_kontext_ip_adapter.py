"""FLUX IP-Adapters with FLUX.1 Kontext (:mod:`diffkit.interop.flux_kontext`'s ``ip_adapter=``, ``diffkit edit
--ip-adapter`` on a Kontext folder) against FluxKontextPipeline / FluxKontextInpaintPipeline after
``load_ip_adapter`` (one or two XLabs-format files, lists) + ``set_ip_adapter_scale`` + ``ip_adapter_image`` (and
``negative_ip_adapter_image`` with true CFG), on the tiny Kontext folder of test_flux_kontext.py, random XLabs
files of test_flux_ip_adapter.py's kind and the tiny image encoder of test_ip_adapter.py."""
import contextlib

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.interop.flux import pack_latents, unpack_latents  # noqa: E402
from diffkit.interop.flux_ip_adapter import FluxIPAdapters, load_flux_ip_adapter  # noqa: E402
from diffkit.interop.flux_kontext import kontext_edit, kontext_inpaint  # noqa: E402

import test_flux_kontext  # noqa: E402
from test_flux_ip_adapter import xlabs_state  # noqa: E402
from test_flux_kontext import PROMPTS, _image  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_ip_adapter import image_png, tiny_image_encoder  # noqa: E402

kontext = test_flux_kontext.kontext  # the folder fixture, shared
WEIGHTS = ["xlabs.safetensors", "xlabs2.safetensors"]


@pytest.fixture(scope="module")
def kontext_ip(kontext, tmp_path_factory):
    """(FluxKontextPipeline, our Flux, root with image_encoder/ and two XLabs files, two image prompts, a negative)."""
    from safetensors.torch import save_file
    pipe, _, flux = kontext
    root = tmp_path_factory.mktemp("kontext_ip")
    encoder = tiny_image_encoder(root / "image_encoder")
    for seed, name in enumerate(WEIGHTS):
        save_file(xlabs_state(pipe.transformer, encoder, seed=seed), root / name)
    images = [image_png(root / "image.png"), image_png(root / "image2.png", seed=5)]
    return pipe, flux, root, images, image_png(root / "negative.png", seed=3)


@contextlib.contextmanager
def loaded(pipe, root, scales):
    """``pipe`` with the first len(scales) files loaded (lists; the image encoder in float32), unloaded after."""
    pipe.load_ip_adapter(str(root), weight_name=WEIGHTS[:len(scales)], local_files_only=True,
                         image_encoder_dtype=torch.float32,
                         image_encoder_pretrained_model_name_or_path=str(root / "image_encoder"))
    try:
        pipe.set_ip_adapter_scale(list(scales))
        yield pipe
    finally:
        pipe.unload_ip_adapter()


def _prompts(images, negatives):
    from PIL import Image
    kw = {"ip_adapter_image": [Image.open(p).convert("RGB") for p in images]}
    if any(n is not None for n in negatives):  # the pipelines' black image for the others (width, height, 3)
        kw["negative_ip_adapter_image"] = [np.zeros((28, 20, 3), np.uint8) if n is None else
                                           Image.open(n).convert("RGB") for n in negatives]
    return kw


def _ours(root, images, scales, negatives):
    adapters = [load_flux_ip_adapter(root / w, i, s, progress=False, negative_image=n)
                for w, i, s, n in zip(WEIGHTS, images, scales, negatives)]
    return adapters[0] if len(adapters) == 1 else FluxIPAdapters(adapters)


@pytest.mark.parametrize("scales, kw, negative", [
    ([0.8], {}, False),
    ([1.2, 0.6], {"true_cfg_scale": 2.0, "negative_prompt": "ugly"}, True)])  # a negative for the first, black 2nd
def test_kontext_with_ip_adapters_matches_the_pipeline(kontext_ip, scales, kw, negative):
    """Same z_0 as FluxKontextPipeline (the 13 x 22 image in context, the 20 x 28 edit, 3 steps, the embedded
    guidance 3.5) with one adapter, or two with true CFG; without the adapters it differs."""
    pipe, flux, root, images, negative_png = kontext_ip
    images, negatives = images[:len(scales)], [negative_png if negative else None, None][:len(scales)]
    latents = torch.randn(2, 16, 10, 14, generator=torch.Generator().manual_seed(5))
    common = dict(height=16, width=24, max_area=600, max_sequence_length=12, **kw)
    with loaded(pipe, root, scales), torch.no_grad():
        theirs = pipe(image=_image(), prompt=PROMPTS, _auto_resize=False, num_inference_steps=3,
                      latents=pack_latents(latents), output_type="latent", **_prompts(images, negatives),
                      **common).images
    theirs = unpack_latents(theirs, 10, 14)
    how = dict(auto_resize=False, steps=3, latents=latents, return_latents=True, **common)
    ours = kontext_edit(flux, _image() * 2 - 1, PROMPTS, ip_adapter=_ours(root, images, scales, negatives), **how)
    error = relative_error(ours, theirs)
    print("kontext ip", scales, kw, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)
    assert relative_error(kontext_edit(flux, _image() * 2 - 1, PROMPTS, **how), theirs) > 1e-3


def test_kontext_inpainting_with_ip_adapters_matches_the_pipeline(kontext_ip):
    """FluxKontextInpaintPipeline with both adapters (0.9, 0.6), true CFG 2 with a negative image per adapter,
    strength 0.6 of 3 steps, image i's generator seed 5 + i."""
    pipe, flux, root, images, negative_png = kontext_ip
    inpaint = diffusers.FluxKontextInpaintPipeline(**pipe.components)
    inpaint.set_progress_bar_config(disable=True)
    pixels = torch.rand(2, 3, 12, 20, generator=torch.Generator().manual_seed(3))
    mask = (torch.rand(2, 1, 12, 20, generator=torch.Generator().manual_seed(5)) > 0.5).float()
    scales, negatives = [0.9, 0.6], [negative_png, images[0]]
    kw = dict(true_cfg_scale=2.0, negative_prompt="ugly", max_sequence_length=12)
    with loaded(inpaint, root, scales), torch.no_grad():
        theirs = inpaint(image=pixels, mask_image=mask, prompt=PROMPTS, strength=0.6, _auto_resize=False,
                         num_inference_steps=3, output_type="latent", **_prompts(images, negatives),
                         generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], **kw).images
    theirs = unpack_latents(theirs, 6, 10)
    ours = kontext_inpaint(flux, pixels * 2 - 1, mask, PROMPTS, 0.6, auto_resize=False, steps=3, seed=5,
                           return_latents=True, ip_adapter=_ours(root, images, scales, negatives), **kw)
    error = relative_error(ours, theirs)
    print("kontext inpaint ip", float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)


def test_edit_command_takes_ip_adapters_on_a_kontext_folder(kontext_ip, kontext, tmp_path, capsys, monkeypatch):
    """`diffkit edit --ip-adapter A:0.8 --ip-adapter B:0.5` on a Kontext folder hands kontext_edit the two adapters
    at their scales and writes its images, byte for byte the library's;
    --negative-ip-adapter-image without true CFG: one line, no output."""
    from PIL import Image
    from diffkit.cli import main
    from diffkit.commands._image_size import resized_pngs
    from diffkit.images import to_uint8
    from diffkit.interop import flux_kontext
    from diffkit.interop.flux_kontext import kontext_image_size
    from test_flux_kontext import _png
    _, flux, root, images, negative_png = kontext_ip
    folder = kontext[1]
    _png(tmp_path / "in.png", 14, 22, 1)
    base = ["edit", "--checkpoint", str(folder), "--images", str(tmp_path / "in.png"), "--prompt", PROMPTS[0],
            "--height", "16", "--width", "24", "--max-area", "384", "--no-auto-resize", "--steps", "2",
            "--max-sequence-length", "12", "--seed", "7", "--no-progress", "--ip-adapter",
            f"{root / WEIGHTS[0]}:0.8", "--ip-adapter-image", str(images[0]), "--ip-adapter",
            f"{root / WEIGHTS[1]}:0.5", "--ip-adapter-image", str(images[1])]
    seen, original = {}, flux_kontext.kontext_edit

    def capture(flux_, image, prompts, **kw):
        seen["adapter"] = kw["ip_adapter"]
        return original(flux_, image, prompts, **kw)
    monkeypatch.setattr(flux_kontext, "kontext_edit", capture)
    assert main(base + ["--out", str(tmp_path / "out")]) == 0
    adapters = seen["adapter"].adapters
    assert [a.scale for a in adapters] == [0.8, 0.5]
    image = resized_pngs([tmp_path / "in.png"], *kontext_image_size(14, 22, 4, False))
    library = kontext_edit(flux, image, PROMPTS[0], height=16, width=24, max_area=384, auto_resize=False, steps=2,
                           max_sequence_length=12, seed=7, output_range="-1,1",
                           ip_adapter=_ours(root, images, [0.8, 0.5], [None, None]))
    written = np.asarray(Image.open(tmp_path / "out" / "edit_00000.png"))
    assert np.array_equal(written, to_uint8(library)[0])
    capsys.readouterr()
    assert main(base + ["--negative-ip-adapter-image", str(negative_png), "--negative-ip-adapter-image",
                        str(negative_png), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--negative-ip-adapter-image feeds only true CFG's negative pass" in err[0], err
    assert not (tmp_path / "bad").exists()
