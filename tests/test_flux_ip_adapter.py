"""IP-Adapter on FLUX.1 folders (diffkit.interop.flux_ip_adapter) against diffusers' own FluxPipeline with
``load_ip_adapter`` (a local XLabs-format file) + ``set_ip_adapter_scale`` + ``ip_adapter_image`` (and
``negative_ip_adapter_image`` with true CFG) on the tiny random FLUX folder of test_interop_flux.py, the image
encoder the tiny random CLIPVisionModelWithProjection of test_ip_adapter.py; several adapters at once
(FluxIPAdapters, ``--ip-adapter`` repeated) against the pipelines with ``load_ip_adapter([...])``, a second random
file beside the first."""
import contextlib

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.flux import image_to_image, load_flux, text_to_image  # noqa: E402
from diffkit.interop.flux_ip_adapter import FluxIPAdapter, FluxIPAdapters, load_flux_ip_adapter  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_flux import PROMPTS, SIZE, _latents, _theirs, tiny_flux_pipeline  # noqa: E402
from test_ip_adapter import image_png, tiny_image_encoder  # noqa: E402


def xlabs_state(transformer, encoder, seed=0) -> dict:
    """Random XLabs flux-ip-adapter tensors (file names) fitting ``transformer`` and the image ``encoder``."""
    g = torch.Generator().manual_seed(seed)
    dim, e, inner = transformer.config.joint_attention_dim, encoder.config.projection_dim, transformer.inner_dim
    state = {"ip_adapter_proj_model.proj.weight": torch.randn(4 * dim, e, generator=g) / e ** 0.5,
             "ip_adapter_proj_model.proj.bias": 0.1 * torch.randn(4 * dim, generator=g),
             "ip_adapter_proj_model.norm.weight": 1 + 0.1 * torch.randn(dim, generator=g),
             "ip_adapter_proj_model.norm.bias": 0.1 * torch.randn(dim, generator=g)}
    for i in range(transformer.config.num_layers):
        for name in ("k", "v"):
            key = f"double_blocks.{i}.processor.ip_adapter_double_stream_{name}_proj"
            state[f"{key}.weight"] = torch.randn(inner, dim, generator=g) / dim ** 0.5
            state[f"{key}.bias"] = 0.1 * torch.randn(inner, generator=g)
    return state


@pytest.fixture(scope="module")
def flux_ip(tmp_path_factory):
    """(pipeline, our Flux, root with image_encoder/ and xlabs.safetensors, image.png, negative.png)."""
    from safetensors.torch import save_file
    root = tmp_path_factory.mktemp("flux_ip")
    tiny_flux_pipeline(root).save_pretrained(root / "flux")
    pipe = diffusers.FluxPipeline.from_pretrained(root / "flux", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    encoder = tiny_image_encoder(root / "image_encoder")
    save_file(xlabs_state(pipe.transformer, encoder), root / "xlabs.safetensors")
    return (pipe, load_flux(root / "flux", progress=False), root, image_png(root / "image.png"),
            image_png(root / "negative.png", seed=3))


def _with_adapter(pipe, root, scale, latents, **kw):
    """The pipeline's z_0 with the XLabs file loaded (image encoder in float32), then unloaded again."""
    from PIL import Image
    pipe.load_ip_adapter(str(root), weight_name="xlabs.safetensors", local_files_only=True,
                         image_encoder_pretrained_model_name_or_path=str(root / "image_encoder"),
                         image_encoder_dtype=torch.float32)
    try:
        pipe.set_ip_adapter_scale(scale)
        if "negative_ip_adapter_image" in kw:
            kw["negative_ip_adapter_image"] = Image.open(root / kw["negative_ip_adapter_image"]).convert("RGB")
        return _theirs(pipe, latents, ip_adapter_image=Image.open(root / "image.png").convert("RGB"), **kw)
    finally:
        pipe.unload_ip_adapter()


@pytest.mark.parametrize("scale, kw", [
    (0.8, {}), (1.3, {"true_cfg_scale": 3.0, "negative_prompt": "ugly"}),
    (0.6, {"true_cfg_scale": 2.0, "negative_prompt": "ugly", "negative_ip_adapter_image": "negative.png"})])
def test_flux_ip_adapter_matches_the_pipeline(flux_ip, scale, kw):
    """Same z_0 as FluxPipeline with the adapter from the same latents: the embedded guidance 3.5; true CFG with the
    pipeline's black negative image, or a given one."""
    pipe, flux, root, png, _ = flux_ip
    latents = _latents()
    theirs = _with_adapter(pipe, root, scale, latents, **dict(kw))
    negative = kw.pop("negative_ip_adapter_image", None)
    adapter = load_flux_ip_adapter(root / "xlabs.safetensors", png, scale, progress=False,
                                   negative_image=None if negative is None else root / negative)
    ours = text_to_image(flux, PROMPTS, steps=4, latents=latents, max_sequence_length=12, height=SIZE, width=SIZE,
                         return_latents=True, ip_adapter=adapter, **kw)
    plain = text_to_image(flux, PROMPTS, steps=4, latents=latents, max_sequence_length=12, return_latents=True, **kw)
    error = relative_error(ours, theirs)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)
    assert relative_error(plain, theirs) > 1e-3  # the adapter changes the output
    assert not hasattr(flux.transformer, "encoder_hid_proj")  # the folder's transformer is left plain
    again = text_to_image(flux, PROMPTS, steps=4, latents=latents, max_sequence_length=12, return_latents=True, **kw)
    assert torch.equal(again, plain)


def test_flux_ip_adapter_refusals_are_one_line(flux_ip):
    pipe, flux, root, png, negative = flux_ip
    adapter = load_flux_ip_adapter(root / "xlabs.safetensors", png, progress=False, negative_image=negative)
    with pytest.raises(DiffkitError, match="negative IP-Adapter image feeds only true CFG"):
        text_to_image(flux, PROMPTS, steps=1, latents=_latents(), max_sequence_length=12, ip_adapter=adapter)
    state = {part: dict(tensors) for part, tensors in adapter.state.items()}
    state["ip_adapter"].update({k.replace("0.", "1.", 1): v for k, v in state["ip_adapter"].items()})
    wrong = FluxIPAdapter(state, adapter.image_encoder, png)
    with pytest.raises(DiffkitError, match="2 blocks, this FLUX transformer has 1 double"):
        text_to_image(flux, PROMPTS, steps=1, latents=_latents(), max_sequence_length=12, ip_adapter=wrong)
    plus = {"image_proj": {"latents": torch.zeros(1), "proj_in.weight": torch.zeros(1),
                           "proj_out.weight": torch.zeros(1)}, "ip_adapter": {"0.to_k_ip.weight": torch.zeros(1)}}
    with pytest.raises(DiffkitError, match="takes an ip-adapter file .* this one is ip-adapter-plus"):
        FluxIPAdapter(plus, adapter.image_encoder, png)


def test_sample_command_with_an_ip_adapter_writes_the_library_images(flux_ip, tmp_path, capsys, monkeypatch):
    """``diffkit sample --checkpoint FLUX --ip-adapter FILE:S --ip-adapter-image PNG --image-encoder DIR
    [--negative-ip-adapter-image PNG with --true-cfg-scale]``: the grid of text_to_image with the same adapter, byte
    for byte; the combinations it does not take are one-line errors before any file."""
    from diffkit.cli import main
    from diffkit.images import save_grid
    from diffkit.interop import flux as flux_module
    monkeypatch.setattr(flux_module, "DEFAULT_SAMPLE_SIZE", 8)
    pipe, flux, root, png, negative = flux_ip
    common = ["--checkpoint", str(root / "flux"), "--prompt", PROMPTS[0], "--num", "1", "--steps", "2", "--seed", "5",
              "--no-progress", "--ip-adapter", f"{root / 'xlabs.safetensors'}:0.7", "--ip-adapter-image", str(png),
              "--image-encoder", str(root / "image_encoder")]
    cfg = ["--true-cfg-scale", "2", "--negative-prompt", "ugly", "--negative-ip-adapter-image", str(negative)]
    out = tmp_path / "g.png"
    assert main(["sample", "--out", str(out)] + common + cfg) == 0
    adapter = load_flux_ip_adapter(root / "xlabs.safetensors", png, 0.7, progress=False, negative_image=negative)
    images = text_to_image(flux, [PROMPTS[0]], steps=2, seed=5, output_range="-1,1", ip_adapter=adapter,
                           true_cfg_scale=2.0, negative_prompt="ugly")
    save_grid(images, tmp_path / "expected.png", 8)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    capsys.readouterr()
    bad = tmp_path / "bad.png"
    assert main(["sample", "--out", str(bad)] + common + cfg[4:]) == 2
    err = capsys.readouterr().err.strip()
    assert "--negative-ip-adapter-image feeds only true CFG's negative pass" in err and len(err.splitlines()) == 1
    assert not bad.exists()
    assert main(["sample", "--checkpoint", str(root / "flux"), "--prompt", "x", "--negative-ip-adapter-image",
                 str(png), "--out", str(tmp_path / "n.png")]) == 2
    assert "--negative-ip-adapter-image needs --ip-adapter" in capsys.readouterr().err


WEIGHTS = ["xlabs.safetensors", "xlabs2.safetensors"]


@pytest.fixture(scope="module")
def two(flux_ip):
    """(pipeline, our Flux, root, [image.png, image2.png], negative.png) with a second random XLabs file."""
    from safetensors.torch import save_file

    from diffkit.interop.ip_adapter import load_image_encoder
    pipe, flux, root, png, negative = flux_ip
    encoder = load_image_encoder(root / "image_encoder", progress=False)
    save_file(xlabs_state(pipe.transformer, encoder, seed=1), root / WEIGHTS[1])
    return pipe, flux, root, [png, image_png(root / "image2.png", seed=5)], negative


@contextlib.contextmanager
def loaded(pipe, root, scales):
    """``pipe`` with both files loaded (lists; the image encoder in float32) at ``scales``, unloaded after."""
    pipe.load_ip_adapter(str(root), weight_name=WEIGHTS, local_files_only=True, image_encoder_dtype=torch.float32,
                         image_encoder_pretrained_model_name_or_path=str(root / "image_encoder"))
    try:
        pipe.set_ip_adapter_scale(scales)
        yield pipe
    finally:
        pipe.unload_ip_adapter()


def _prompts(images, negatives, size=SIZE, black=False):
    """The pipelines' ``ip_adapter_image`` / ``negative_ip_adapter_image`` lists (None: the black image; ``black``:
    the list even when all are black: FluxImg2ImgPipeline / FluxInpaintPipeline default to one black image, not one
    per adapter, and fail on several adapters without it)."""
    from PIL import Image
    kw = {"ip_adapter_image": [Image.open(p).convert("RGB") for p in images]}
    if black or any(n is not None for n in negatives):
        kw["negative_ip_adapter_image"] = [np.zeros((size, size, 3), np.uint8) if n is None else
                                           Image.open(n).convert("RGB") for n in negatives]
    return kw


def _ours(root, images, scales, negatives):
    return FluxIPAdapters([load_flux_ip_adapter(root / w, i, s, progress=False, negative_image=n)
                           for w, i, s, n in zip(WEIGHTS, images, scales, negatives)])


CASES = [([0.8, 0.5], {}, [None, None]),
         ([1.2, 0.6], {"true_cfg_scale": 2.5, "negative_prompt": "ugly"}, [None, None]),  # both black
         ([0.7, 1.1], {"true_cfg_scale": 2.0, "negative_prompt": "ugly"}, ["negative", None])]  # one given, one black


@pytest.mark.parametrize("scales, kw, negatives", CASES)
def test_two_flux_ip_adapters_match_the_pipeline(two, scales, kw, negatives):
    """Same z_0 as FluxPipeline with both adapters loaded (4 steps, the embedded guidance 3.5); true CFG with the
    pipeline's black negative images, or a given one for the first adapter and black for the second."""
    pipe, flux, root, images, negative = two
    negatives = [negative if n else None for n in negatives]
    latents = _latents()
    with loaded(pipe, root, scales):
        theirs = _theirs(pipe, latents, **_prompts(images, negatives), **kw)
    common = dict(steps=4, latents=latents, max_sequence_length=12, height=SIZE, width=SIZE, return_latents=True,
                  **kw)
    ours = text_to_image(flux, PROMPTS, ip_adapter=_ours(root, images, scales, negatives), **common)
    error = relative_error(ours, theirs)
    print("two flux ip", scales, kw, negatives, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)
    first = load_flux_ip_adapter(root / WEIGHTS[0], images[0], scales[0], progress=False, negative_image=negatives[0])
    assert relative_error(text_to_image(flux, PROMPTS, ip_adapter=first, **common), theirs) > 1e-3
    if not kw:  # one adapter in FluxIPAdapters is that adapter, bit for bit
        alone = text_to_image(flux, PROMPTS, ip_adapter=FluxIPAdapters([first]), **common)
        assert torch.equal(alone, text_to_image(flux, PROMPTS, ip_adapter=first, **common))


@pytest.mark.parametrize("inpaint", [False, True])
def test_two_flux_ip_adapters_in_edits_match_the_pipelines(two, inpaint):
    """FluxImg2ImgPipeline (4 steps at 0.6) / FluxInpaintPipeline with true CFG 2 and a negative image per adapter
    (3 steps at 0.9), both adapters loaded, images i's generator seed 5 + i."""
    from test_flow_ip_edit import _images, _mask
    from test_interop_flux import unpack_latents
    pipe, flux, root, images, negative = two
    scales, mask = [0.9, 0.6], _mask() if inpaint else None
    kw = {"true_cfg_scale": 2.0, "negative_prompt": "ugly"} if inpaint else {}
    negatives = [negative, images[0]] if inpaint else [None, None]
    steps, strength = (3, 0.9) if inpaint else (4, 0.6)
    edit = (diffusers.FluxInpaintPipeline if inpaint else diffusers.FluxImg2ImgPipeline)(**pipe.components)
    edit.set_progress_bar_config(disable=True)
    extra = {} if mask is None else {"mask_image": mask}
    with loaded(edit, root, scales), torch.no_grad():
        theirs = edit(PROMPTS, image=_images(), strength=strength, num_inference_steps=steps, output_type="latent",
                      max_sequence_length=12, height=16, width=16, **_prompts(images, negatives, black=True),
                      generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], **extra, **kw).images
    theirs = unpack_latents(theirs, 8, 8)
    common = dict(mask=mask, steps=steps, seed=5, return_latents=True, max_sequence_length=12, **kw)
    ours = image_to_image(flux, _images() * 2 - 1, PROMPTS, strength, ip_adapter=_ours(root, images, scales, negatives),
                          **common)
    error = relative_error(ours, theirs)
    print("two flux ip edit", inpaint, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)
    first = load_flux_ip_adapter(root / WEIGHTS[0], images[0], scales[0], progress=False, negative_image=negatives[0])
    plain = image_to_image(flux, _images() * 2 - 1, PROMPTS, strength, ip_adapter=first, **common)
    assert relative_error(plain, theirs) > 1e-3


def test_two_flux_ip_adapters_with_a_controlnet_match_the_pipeline(two, tmp_path):
    """text_to_image(controlnet=, ip_adapter=FluxIPAdapters) = FluxControlNetPipeline with both adapters loaded
    (lists; true CFG 2.5 with a negative image per adapter; the control posteriors from generators 11 + i)."""
    from PIL import Image

    from diffkit.interop.controlnet import ControlNets, load_model_folder
    from test_flux_controlnet import control_image_files, tiny_flux_controlnet
    pipe, flux, root, images, negative = two
    tiny_flux_controlnet(3).save_pretrained(tmp_path / "cn")
    control = control_image_files(tmp_path)[1]
    net = load_model_folder("FluxControlNetModel", tmp_path / "cn", progress=False)
    theirs_pipe = diffusers.FluxControlNetPipeline(**{k: v for k, v in pipe.components.items()
                                                      if k not in ("image_encoder", "feature_extractor")},
                                                   controlnet=net)
    theirs_pipe.set_progress_bar_config(disable=True)
    latents, scales, negatives = _latents(), [0.8, 0.6], [negative, images[0]]
    kw = {"true_cfg_scale": 2.5, "negative_prompt": "ugly"}
    with loaded(theirs_pipe, root, scales):
        theirs = _theirs(theirs_pipe, latents, control_image=Image.open(control), controlnet_conditioning_scale=0.7,
                         generator=[torch.Generator().manual_seed(11 + i) for i in range(2)],
                         **_prompts(images, negatives), **kw)
    ours = text_to_image(flux, PROMPTS, steps=4, latents=latents, max_sequence_length=12, return_latents=True,
                         controlnet=ControlNets([net], [control], 0.7), control_seed=11, height=SIZE, width=SIZE,
                         ip_adapter=_ours(root, images, scales, negatives), **kw)
    error = relative_error(ours, theirs)
    print("two flux ip controlnet", float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)


def test_sample_and_edit_commands_take_several_flux_ip_adapters(two, tmp_path, capsys, monkeypatch):
    """``diffkit sample`` / ``diffkit edit`` with ``--ip-adapter A:0.7 --ip-adapter-image PNG --ip-adapter B:0.5
    --ip-adapter-image PNG`` (+ one ``--negative-ip-adapter-image`` each with true CFG): the library's PNGs byte for
    byte; a count of negative images other than of adapters is one line before any file."""
    from diffkit.cli import main
    from diffkit.commands.edit import read_pngs
    from diffkit.images import save_grid, save_images
    from diffkit.interop import flux as flux_module
    from test_flow_ip_edit import _pngs
    monkeypatch.setattr(flux_module, "DEFAULT_SAMPLE_SIZE", 8)
    pipe, flux, root, images, negative = two
    adapters = ["--ip-adapter", f"{root / WEIGHTS[0]}:0.7", "--ip-adapter-image", str(images[0]),
                "--ip-adapter", f"{root / WEIGHTS[1]}:0.5", "--ip-adapter-image", str(images[1]),
                "--image-encoder", str(root / "image_encoder"), "--checkpoint", str(root / "flux"), "--no-progress",
                "--prompt", PROMPTS[0], "--seed", "5", "--steps", "2", "--max-sequence-length", "12"]
    cfg = ["--true-cfg-scale", "2", "--negative-prompt", "ugly"]
    negatives = ["--negative-ip-adapter-image", str(negative), "--negative-ip-adapter-image", str(images[0])]
    assert main(["sample", "--num", "1", "--out", str(tmp_path / "g.png")] + adapters + cfg + negatives) == 0
    ours = _ours(root, images, [0.7, 0.5], [negative, images[0]])
    lib = text_to_image(flux, [PROMPTS[0]], steps=2, seed=5, output_range="-1,1", ip_adapter=ours,
                        max_sequence_length=12, true_cfg_scale=2.0, negative_prompt="ugly")
    save_grid(lib, tmp_path / "expected.png", 8)
    assert (tmp_path / "g.png").read_bytes() == (tmp_path / "expected.png").read_bytes()
    pngs = _pngs(tmp_path / "in")
    assert main(["edit", "--images", str(pngs), "--out", str(tmp_path / "out")] + adapters) == 0
    pixels, _ = read_pngs(pngs, "RGB")
    lib = image_to_image(flux, pixels, [PROMPTS[0]] * 2, steps=2, seed=5, max_sequence_length=12,
                         output_range="-1,1", ip_adapter=_ours(root, images, [0.7, 0.5], [None, None]))
    save_images(lib, tmp_path / "expected", prefix="edit")
    for i in range(2):
        assert (tmp_path / "out" / f"edit_0000{i}.png").read_bytes() == \
            (tmp_path / "expected" / f"edit_0000{i}.png").read_bytes()
    capsys.readouterr()
    assert main(["sample", "--out", str(tmp_path / "bad" / "g.png")] + adapters + cfg + negatives[:2]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 --negative-ip-adapter-image for 2 --ip-adapter" in err[0], err
    assert not (tmp_path / "bad").exists()
    with pytest.raises(DiffkitError, match="FluxIPAdapters takes FLUX IP-Adapters"):
        FluxIPAdapters([ours, ours])
