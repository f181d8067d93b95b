"""``diffkit edit --mask M --padding-mask-crop N`` (:mod:`diffkit.interop.mask_crop`): the crop box equals
``VaeImageProcessor.get_crop_region``'s, and the written PNG equals the output_type="pil" image of diffusers'
StableDiffusionInpaintPipeline (4- and 9-channel UNets), StableDiffusionXLInpaintPipeline (4 and 9),
StableDiffusion3InpaintPipeline and FluxInpaintPipeline called with padding_mask_crop=N (within one 8-bit level);
the refusals, one line before any output. The tiny folders are the other inpainting tests' fixtures."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
import test_interop_flux
import test_interop_sd3
import test_interop_sd_xl
import test_latent_editing
import test_sd3_inpainting_transformer
import test_sd_inpaint
import test_sd_xl_inpaint
from test_cli_errors import one_line_error
from diffkit.cli import main
from test_latent_editing import PROMPTS, cli

diffusers = pytest.importorskip("diffusers")
tiny_sd = test_latent_editing.tiny_sd  # the fixtures, shared
inpaint_sd = test_sd_inpaint.inpaint_sd
inpaint_ip = test_sd_inpaint.inpaint_ip
tiny_xl = test_interop_sd_xl.tiny_xl
xl_inpaint = test_sd_xl_inpaint.xl_inpaint
tiny_sd3 = test_interop_sd3.tiny_sd3
tiny_flux = test_interop_flux.tiny_flux
inpainting_sd3 = test_sd3_inpainting_transformer.inpainting_sd3  # 33 input channels

H, W, PAD = 16, 24, 2  # the edit's size (its aspect ratio 1.5 grows the box's height) and the margin


def _inputs(tmp_path):
    """A 30 x 20 RGB PNG (not the edit's size) and its grey mask: a 6 x 5 white block with a soft (140) column on
    its left."""
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(tmp_path / "image.png")
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[6:11, 12:18] = 255
    mask[6:11, 11] = 140
    Image.fromarray(mask, "L").save(tmp_path / "mask.png")
    return tmp_path / "image.png", tmp_path / "mask.png"


def test_crop_region_is_get_crop_region():
    """Random masks (blocks, scattered pixels; at the borders too), margins and processing sizes: the same box."""
    from diffkit.interop.mask_crop import crop_region
    rng = np.random.default_rng(1)
    for case in range(400):
        h, w = rng.integers(4, 40, 2)
        mask = np.zeros((h, w), dtype=np.uint8)
        if case % 2:
            y, x = rng.integers(0, h), rng.integers(0, w)
            mask[y:y + rng.integers(1, h + 1), x:x + rng.integers(1, w + 1)] = rng.integers(1, 256)
        else:
            mask[rng.random((h, w)) < rng.choice([0.01, 0.05, 0.3])] = 255
            mask[rng.integers(0, h), rng.integers(0, w)] = 1
        width, height, pad = int(rng.integers(1, 9)) * 8, int(rng.integers(1, 9)) * 8, int(rng.integers(0, 12))
        theirs = diffusers.image_processor.VaeImageProcessor.get_crop_region(Image.fromarray(mask, "L"), width,
                                                                              height, pad=pad)
        assert crop_region(mask, width, height, pad) == tuple(int(v) for v in theirs), (case, width, height, pad)


@pytest.fixture(scope="module")
def sd3_16(tiny_sd3, tmp_path_factory):
    """(StableDiffusion3InpaintPipeline, folder, None) of the tiny SD3 folder with a 16-channel VAE and transformer
    (the pipeline takes 16 latent channels only)."""
    import shutil
    from diffkit.interop.sd3 import load_sd3
    pipe, folder, _ = tiny_sd3[True]
    root = tmp_path_factory.mktemp("sd3_16") / "sd3"
    shutil.copytree(folder, root)
    torch.manual_seed(3)
    for name, module in (("vae", diffusers.AutoencoderKL(**{**pipe.vae.config, "latent_channels": 16})),
                         ("transformer", diffusers.SD3Transformer2DModel(**{**pipe.transformer.config,
                                                                            "in_channels": 16, "out_channels": 16}))):
        shutil.rmtree(root / name)
        module.save_pretrained(root / name)
    sd3 = load_sd3(root, progress=False)
    return (diffusers.StableDiffusion3InpaintPipeline(**{**pipe.components, "vae": sd3.vae,
                                                         "transformer": sd3.transformer}), root, None)


def _sd_family(pipe, image, mask, scheduler=True, **kw):
    """``pipe`` (DDIM as the command's --spacing leading --final zero) on one PIL image, output_type "pil"."""
    original = pipe.scheduler
    if scheduler:
        pipe.scheduler = diffusers.DDIMScheduler.from_config(original.config, steps_offset=0, set_alpha_to_one=True)
    try:
        with torch.no_grad():
            return pipe(PROMPTS[0], image=image, mask_image=mask, height=H, width=W, padding_mask_crop=PAD,
                        num_inference_steps=4, output_type="pil", generator=torch.Generator().manual_seed(10),
                        **kw).images[0]
    finally:
        pipe.scheduler = original


def _folder(kind, fixture):
    """(folder, pipeline, the command's extra flags, the pipeline call's extra keywords, swap in DDIM); ``fixture``:
    pytest's getfixturevalue (only the folder of ``kind`` is built)."""
    sd_flags = ["--spacing", "leading", "--final", "zero", "--guidance-scale", 5, "--guidance-convention",
                "diffusers", "--strength", 0.6]
    sd_kw = dict(guidance_scale=5.0, eta=0.0, strength=0.6)
    if kind == "sd":
        return fixture("tiny_sd")[3], fixture("tiny_sd")[1], sd_flags, sd_kw, True
    if kind == "sd9":
        return fixture("inpaint_sd")[2], fixture("inpaint_sd")[0], sd_flags, sd_kw, True
    if kind == "xl":
        pipe, root, _ = fixture("tiny_xl")
        return root / "xl", test_interop_sd_xl._xl_inpaint_pipeline(pipe), sd_flags, sd_kw, True
    if kind == "xl9":
        return fixture("xl_inpaint")[1], fixture("xl_inpaint")[0], sd_flags, sd_kw, True
    if kind == "flux":
        pipe, folder, _ = fixture("tiny_flux")[True]
        pipe = diffusers.FluxInpaintPipeline(**pipe.components)
    else:
        pipe, folder, _ = fixture("inpainting_sd3" if kind == "sd3_33" else "sd3_16")
    pipe.set_progress_bar_config(disable=True)
    flags = ["--guidance-scale", 4, "--max-sequence-length", 12, "--strength", 0.6]
    return (folder, pipe, flags + ([] if kind == "flux" else ["--guidance-convention", "diffusers"]),
            dict(guidance_scale=4.0, max_sequence_length=12, strength=0.6), False)


@pytest.mark.parametrize("kind", ["sd", "sd9", "xl9", "sd3_33", "flux", *(  # -m slow: two more, about 4 s
    pytest.param(kind, marks=pytest.mark.slow) for kind in ("xl", "sd3_16"))])
def test_edit_with_padding_mask_crop_is_the_pipelines(kind, request, tmp_path, capsys, monkeypatch):
    """The written PNG (30 x 20, the original's size) is the pipeline's padding_mask_crop=2 image at height 16,
    width 24, within one 8-bit level; outside the crop box it is the original, bit for bit. (diffusers 0.42.1's
    StableDiffusion3InpaintPipeline decodes D(z / scaling_factor) without the VAE's shift_factor, unlike its other
    SD3 pipelines and diffkit: its VAE is given the shift here, so that only the crop and overlay are compared.)"""
    from diffkit.interop.mask_crop import crop_region
    folder, pipe, flags, kw, ddim = _folder(kind, request.getfixturevalue)
    if kind.startswith("sd3"):
        decode, shift = pipe.vae.decode, pipe.vae.config.shift_factor
        monkeypatch.setattr(pipe.vae, "decode", lambda z, **options: decode(z + shift, **options))
    image_png, mask_png = _inputs(tmp_path)
    code, out, err = cli(capsys, "--checkpoint", folder, "--images", image_png, "--mask", mask_png, "--prompt",
                         PROMPTS[0], "--steps", 4, "--seed", 10, "--height", H, "--width", W, "--padding-mask-crop",
                         PAD, *flags, "--out", tmp_path / "out")
    assert code == 0, err
    ours = np.asarray(Image.open(tmp_path / "out" / "edit_00000.png")).astype(int)
    theirs = np.asarray(_sd_family(pipe, Image.open(image_png), Image.open(mask_png), ddim, **kw)).astype(int)
    assert ours.shape == theirs.shape == (20, 30, 3)
    print(kind, "largest 8-bit difference", np.abs(ours - theirs).max(), "pixels differing", (ours != theirs).sum())
    assert np.abs(ours - theirs).max() <= 1, np.abs(ours - theirs).max()  # the 8-bit rounding (0 or 1)
    x1, y1, x2, y2 = crop_region(np.asarray(Image.open(mask_png)), W, H, PAD)
    assert (x1, y1, x2, y2) == (8, 4, 21, 13)  # the 7 x 5 block and margin 2: 11 x 9, its width grown by
    # int(9 * 24 / 16 - 11) = 2 pixels, one on each side
    outside = np.ones((20, 30), dtype=bool)
    outside[y1:y2, x1:x2] = False
    original = np.asarray(Image.open(image_png)).astype(int)
    assert (ours[outside] == original[outside]).all()
    assert (ours[~outside] != original[~outside]).any()


@pytest.mark.slow  # about 4 s
@pytest.mark.parametrize("combo", ["pag_xl", "ip_adapter"])
def test_padding_mask_crop_with_pag_or_an_ip_adapter_is_the_pipelines(combo, request, tmp_path, capsys):
    """--pag-scale 3 (layer mid) on the 9-channel SD-XL folder = StableDiffusionXLPAGInpaintPipeline, and an
    IP-Adapter (scale 0.7) on the 9-channel SD folder = StableDiffusionInpaintPipeline + load_ip_adapter, both with
    padding_mask_crop=2: the PNG within one level (measured 0); without PAG / the adapter it differs."""
    from test_sd_pag_adapters import _pag
    image_png, mask_png = _inputs(tmp_path)
    kw = dict(guidance_scale=5.0, eta=0.0, strength=0.6)
    pipe, folder = request.getfixturevalue("xl_inpaint")[:2] if combo == "pag_xl" else \
        request.getfixturevalue("inpaint_sd")[::2]
    plain = np.asarray(_sd_family(pipe, Image.open(image_png), Image.open(mask_png), **kw)).astype(int)
    if combo == "pag_xl":
        extra, theirs_kw = ["--pag-scale", 3, "--pag-layers", "mid"], {"pag_scale": 3.0}
        other = _pag(diffusers.StableDiffusionXLPAGInpaintPipeline, pipe.components, "mid", True)
        other.register_to_config(requires_aesthetics_score=False)
    else:  # (the adapter is loaded into the fixture's UNet: unloaded at the end)
        root, weights, image_prompt = request.getfixturevalue("inpaint_ip")
        extra = ["--ip-adapter", f"{weights}:0.7", "--ip-adapter-image", image_prompt]
        theirs_kw = {"ip_adapter_image": Image.open(image_prompt).convert("RGB")}
        other = diffusers.StableDiffusionInpaintPipeline(**pipe.components)
        other.set_progress_bar_config(disable=True)
        other.load_ip_adapter(str(root), subfolder="", weight_name=weights.name, local_files_only=True)
        other.set_ip_adapter_scale(0.7)
    code, out, err = cli(capsys, "--checkpoint", folder, "--images", image_png, "--mask", mask_png, "--prompt",
                         PROMPTS[0], "--steps", 4, "--seed", 10, "--height", H, "--width", W, "--padding-mask-crop",
                         PAD, "--spacing", "leading", "--final", "zero", "--guidance-scale", 5,
                         "--guidance-convention", "diffusers", "--strength", 0.6, *extra, "--out", tmp_path / "out")
    assert code == 0, err
    ours = np.asarray(Image.open(tmp_path / "out" / "edit_00000.png")).astype(int)
    try:
        theirs = np.asarray(_sd_family(other, Image.open(image_png), Image.open(mask_png), **theirs_kw,
                                       **kw)).astype(int)
    finally:
        if combo == "ip_adapter":
            other.unload_ip_adapter()
    print(combo, "largest 8-bit difference", np.abs(ours - theirs).max(), "without it", np.abs(ours - plain).max())
    assert np.abs(ours - theirs).max() <= 1 and np.abs(ours - plain).max() > 8


def test_padding_mask_crop_refusals_are_one_line_before_any_output(tiny_sd, tiny_checkpoint, tmp_path, capsys):
    folder = tiny_sd[3]
    image_png, mask_png = _inputs(tmp_path)
    Image.fromarray(np.zeros((20, 30), dtype=np.uint8), "L").save(tmp_path / "black.png")
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8), "L").save(tmp_path / "small.png")
    for name in ("FluxKontextInpaintPipeline", "FluxFillPipeline"):  # their model_index.json suffices: refused first
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_index.json").write_text(json.dumps({"_class_name": name,
                                                                      "transformer": ["diffusers", "x"]}))
    base = ["edit", "--no-progress", "--images", image_png, "--prompt", "a", "--height", H, "--width", W,
            "--out", tmp_path / "never"]
    for extra, expected in [
        (["--checkpoint", folder, "--padding-mask-crop", 2],
         "--padding-mask-crop 2 (crop around the mask, inpaint, paste back) goes with --images and --mask"),
        (["--checkpoint", folder, "--mask", tmp_path / "black.png", "--padding-mask-crop", 0],
         f"--mask '{tmp_path / 'black.png'}' has no non-zero pixel: padding_mask_crop crops around the white"),
        (["--checkpoint", folder, "--mask", tmp_path / "small.png", "--padding-mask-crop", 0],
         "--mask is 16x16 but the images are 30x20"),
        (["--checkpoint", tiny_checkpoint, "--mask", mask_png, "--padding-mask-crop", 1],
         "--padding-mask-crop 1 applies to diffusers folders (Stable Diffusion, SD-XL, SD3, FLUX.1;"),
        (["--checkpoint", folder, "--mask", mask_png, "--padding-mask-crop", 1, "--pag-scale", 3],
         "--padding-mask-crop 1 does not go with --pag-scale on an SD 1.x / 2.x folder"),
        (["--checkpoint", folder, "--mask", mask_png, "--padding-mask-crop", 1, "--refiner", folder],
         "--padding-mask-crop 1 does not go with --refiner"),
        (["--checkpoint", tmp_path / "FluxKontextInpaintPipeline", "--mask", mask_png, "--padding-mask-crop", 1],
         "FluxKontextInpaintPipeline crops but pastes nothing back"),
        (["--checkpoint", tmp_path / "FluxFillPipeline", "--mask", mask_png, "--padding-mask-crop", 1],
         "(FluxFillPipeline: FluxFillPipeline / FluxControlInpaintPipeline have no padding_mask_crop)"),
    ]:
        line = one_line_error(capsys, *map(str, base + extra))
        assert expected in line, line
    with pytest.raises(SystemExit) as stop:  # argparse's own one line
        main([*map(str, base), "--checkpoint", str(folder), "--mask", str(mask_png), "--padding-mask-crop", "-1"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.endswith("argument --padding-mask-crop: -1 is out of range; allowed: "
                                                 "0..1000000000\n"), err
    assert not (tmp_path / "never").exists()
