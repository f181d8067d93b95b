"""FLUX.1 Redux as the prompt of every FLUX pipeline: redux_embeds (diffkit.interop.flux_redux) given as
prompt_embeds / pooled_prompt_embeds to diffkit's text_to_image / image_to_image / kontext_edit against diffusers'
pipelines given FluxPriorReduxPipeline's output (true CFG, img2img, inpainting, Fill, ControlNet, Depth / Canny,
Kontext), on test_flux_redux's tiny random folders (test_flux_fill's / test_flux_control's / test_flux_kontext's
variants, test_flux_controlnet's tiny ControlNet); each compared by the relative max difference of z_0 (< 1e-5)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.flux import image_to_image, pack_latents, text_to_image, unpack_latents  # noqa: E402
from diffkit.interop.flux_redux import redux_embeds  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
import test_flux_control  # noqa: E402
import test_flux_fill  # noqa: E402
import test_flux_ip_adapter  # noqa: E402
import test_flux_kontext  # noqa: E402
import test_flux_redux  # noqa: E402

_images, _control_images = test_flux_redux._images, test_flux_control._control_images
_edit_images, _mask = test_flux_fill._images, test_flux_fill._mask  # (2, 3, 16, 16) in [0, 1]; (1, 1, 16, 16)
# the other modules' module-scoped fixtures, reused under their names
tiny_redux, tiny_fill = test_flux_redux.tiny_redux, test_flux_fill.tiny_fill
tiny_control, kontext = test_flux_control.tiny_control, test_flux_kontext.kontext
flux_ip = test_flux_ip_adapter.flux_ip

PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def embeds(tiny_redux):
    """(FluxPriorReduxPipeline's (prompt_embeds, pooled_prompt_embeds) of one image and PROMPT, redux_embeds')."""
    _, _, flux, prior, _, redux = tiny_redux
    image = _images(1)
    with torch.no_grad():
        theirs = prior(image, prompt=PROMPT, return_dict=False)
    return theirs, redux_embeds(flux, redux, image, PROMPT)


def _check(ours, theirs, what):
    error = relative_error(ours, theirs)
    print("redux", what, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (what, float((ours - theirs).abs().max()), error)


def _pipe(cls, source, **parts):
    import inspect
    taken = inspect.signature(cls.__init__).parameters
    pipe = cls(**{key: value for key, value in {**source.components, **parts}.items() if key in taken})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _given(embeds, ours=True):
    context, pooled = embeds[1] if ours else embeds[0]
    return {"prompt_embeds": context, "pooled_prompt_embeds": pooled}


def test_redux_with_true_cfg_matches_the_flux_pipeline(tiny_redux, embeds):
    """FluxPipeline(prompt_embeds=, pooled_prompt_embeds=, negative_prompt=, true_cfg_scale=3): the negative prompt
    at the default 512 T5 tokens against the Redux prompt's 512 + N (two network calls per step here)."""
    pipe = tiny_redux[0]
    flux = tiny_redux[2]
    latents = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(7))
    kw = {"negative_prompt": "ugly", "true_cfg_scale": 3.0}
    with torch.no_grad():
        theirs = pipe(**_given(embeds, False), num_images_per_prompt=2, height=16, width=16, num_inference_steps=2,
                      latents=pack_latents(latents), output_type="latent", **kw).images
    ours = text_to_image(flux, None, **_given(embeds), latents=latents, steps=2, return_latents=True, **kw)
    _check(ours, unpack_latents(theirs, 8, 8), "true cfg")


@pytest.mark.parametrize("mask", [False, True])
def test_redux_edits_match_img2img_and_inpaint_pipelines(tiny_redux, embeds, mask):
    """FluxImg2ImgPipeline / FluxInpaintPipeline given the prior's output: image i's generator seed 5 + i, strength
    0.6 of 3 steps, their embedded guidance 7.0."""
    pipe, _, flux = tiny_redux[:3]
    cls = diffusers.FluxInpaintPipeline if mask else diffusers.FluxImg2ImgPipeline
    images, extra = _edit_images(), ({"mask_image": _mask()} if mask else {})
    with torch.no_grad():
        theirs = _pipe(cls, pipe)(**_given(embeds, False), image=images, num_images_per_prompt=2, height=16,
                                  width=16, strength=0.6, num_inference_steps=3, output_type="latent",
                                  generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], **extra).images
    ours = image_to_image(flux, images * 2 - 1, None, 0.6, mask=_mask() if mask else None, steps=3, seed=5,
                          return_latents=True, **_given(embeds))
    _check(ours, unpack_latents(theirs, 8, 8), cls.__name__)


def test_redux_fill_matches_the_fill_pipeline(tiny_fill, embeds):
    """Redux + Fill (FluxFillPipeline(prompt_embeds=, pooled_prompt_embeds=, image=, mask_image=)): its defaults,
    strength 1 and the embedded guidance 30, image i's generator seed 5 + i."""
    pipe, _, flux = tiny_fill
    images = _edit_images()
    with torch.no_grad():
        theirs = pipe(**_given(embeds, False), image=images, mask_image=_mask(), num_images_per_prompt=2, height=16,
                      width=16, num_inference_steps=3, output_type="latent",
                      generator=[torch.Generator().manual_seed(5 + i) for i in range(2)]).images
    ours = image_to_image(flux, images * 2 - 1, None, mask=_mask(), steps=3, seed=5, return_latents=True,
                          **_given(embeds))
    _check(ours, unpack_latents(theirs, 8, 8), "fill")


def test_redux_controlnet_matches_the_controlnet_pipeline(tiny_redux, embeds, tmp_path):
    """Redux + FluxControlNetPipeline (a tiny random ControlNet, scale 0.7; the control posterior of sample i from
    generator 11 + i; the embedded guidance 7.0)."""
    from diffkit.interop.controlnet import ControlNets
    from test_flux_controlnet import tiny_flux_controlnet
    from test_sd3_controlnet import control_image_files
    pipe, _, flux = tiny_redux[:3]
    model, image = tiny_flux_controlnet(3), control_image_files(tmp_path)[1]
    latents = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(7))
    from PIL import Image
    with torch.no_grad():
        theirs = _pipe(diffusers.FluxControlNetPipeline, pipe, controlnet=model)(
            **_given(embeds, False), control_image=Image.open(image), controlnet_conditioning_scale=0.7,
            num_images_per_prompt=2, height=16, width=16, num_inference_steps=2, latents=pack_latents(latents),
            output_type="latent", generator=[torch.Generator().manual_seed(11 + i) for i in range(2)]).images
    ours = text_to_image(flux, None, controlnet=ControlNets([model], [image], 0.7), control_seed=11, steps=2,
                         latents=latents, return_latents=True, **_given(embeds))
    _check(ours, unpack_latents(theirs, 8, 8), "controlnet")


@pytest.mark.parametrize("kind", ["depth img2img", "controlnet inpaint", "union img2img"])
def test_redux_control_edits_match_the_pipelines(tiny_redux, tiny_control, embeds, kind, tmp_path):
    """Redux + FluxControlImg2ImgPipeline (a Depth / Canny folder), FluxControlNetInpaintPipeline (scale 0.7) and
    FluxControlNetImg2ImgPipeline with a ControlNet-Union (mode 2), each given the prior's output: image i's
    generator seed 5 + i, strength 0.6 of 3 steps."""
    from diffkit.interop.controlnet import ControlNets
    from test_flux_controlnet import tiny_flux_controlnet
    images, control = _edit_images(), _control_images(1)[0]
    generators = [torch.Generator().manual_seed(5 + i) for i in range(2)]
    common = {"num_images_per_prompt": 2, "height": 16, "width": 16, "strength": 0.6, "num_inference_steps": 3,
              "output_type": "latent", "generator": generators}
    if kind.startswith("depth"):
        pipe, _, flux = tiny_control
        with torch.no_grad():
            theirs = _pipe(diffusers.FluxControlImg2ImgPipeline, pipe)(
                **_given(embeds, False), image=images, control_image=control, **common).images
        ours = image_to_image(flux, images * 2 - 1, None, 0.6, control_image=control, steps=3, seed=5,
                              return_latents=True, **_given(embeds))
    else:
        union = kind.startswith("union")
        pipe, flux = tiny_redux[0], tiny_redux[2]
        model = tiny_flux_controlnet(4, **({"num_mode": 4} if union else {}))
        cls = diffusers.FluxControlNetImg2ImgPipeline if union else diffusers.FluxControlNetInpaintPipeline
        extra = {"control_mode": 2} if union else {"mask_image": _mask()}
        with torch.no_grad():
            theirs = _pipe(cls, pipe, controlnet=model)(
                **_given(embeds, False), image=images, control_image=control, controlnet_conditioning_scale=0.7,
                **common, **extra).images
        nets = ControlNets([model], [control], 0.7, modes=[2] if union else None)
        ours = image_to_image(flux, images * 2 - 1, None, 0.6, mask=None if union else _mask(), controlnet=nets,
                              steps=3, seed=5, return_latents=True, **_given(embeds))
    _check(ours, unpack_latents(theirs, 8, 8), kind)


def test_redux_depth_canny_matches_the_control_pipeline(tiny_control, embeds):
    """Redux + a FLUX.1 Depth / Canny folder (FluxControlPipeline(prompt_embeds=, control_image=)): sample i's
    control posterior from generator 5 + i."""
    pipe, _, flux = tiny_control
    image = _control_images(1)[0]
    latents = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        theirs = pipe(**_given(embeds, False), control_image=image, num_images_per_prompt=2, height=16, width=16,
                      num_inference_steps=2, latents=pack_latents(latents), output_type="latent",
                      generator=[torch.Generator().manual_seed(5 + i) for i in range(2)]).images
    ours = text_to_image(flux, None, control_image=image, control_seed=5, latents=latents, steps=2,
                         return_latents=True, **_given(embeds))
    _check(ours, unpack_latents(theirs, 8, 8), "depth / canny")


@pytest.mark.parametrize("mask", [False, True])
def test_redux_kontext_matches_the_kontext_pipelines(kontext, embeds, mask):
    """Redux + FluxKontextPipeline (the image in context, true CFG against "ugly") / FluxKontextInpaintPipeline
    (strength 0.6), given the prior's output."""
    from diffkit.interop.flux_kontext import kontext_edit, kontext_inpaint
    pipe, _, flux = kontext
    image = torch.rand(1, 3, 12, 20, generator=torch.Generator().manual_seed(3))
    kw = {"negative_prompt": "ugly", "true_cfg_scale": 2.0}
    if mask:
        inpaint = _pipe(diffusers.FluxKontextInpaintPipeline, pipe)
        mask = (torch.rand(1, 1, 12, 20, generator=torch.Generator().manual_seed(5)) > 0.5).float()
        with torch.no_grad():
            theirs = inpaint(**_given(embeds, False), image=image, mask_image=mask, strength=0.6, _auto_resize=False,
                             num_inference_steps=3, output_type="latent", generator=torch.Generator().manual_seed(5),
                             **kw).images
        ours = kontext_inpaint(flux, image * 2 - 1, mask, None, 0.6, auto_resize=False, steps=3, seed=5,
                               return_latents=True, **_given(embeds), **kw)
        _check(ours, unpack_latents(theirs, 6, 10), "kontext inpaint")
        return
    latents = torch.randn(1, 16, 6, 10, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        theirs = pipe(**_given(embeds, False), image=image, height=12, width=20, max_area=240, _auto_resize=False,
                      num_inference_steps=2, latents=pack_latents(latents), output_type="latent", **kw).images
    ours = kontext_edit(flux, image * 2 - 1, None, height=12, width=20, max_area=240, auto_resize=False, steps=2,
                        latents=latents, return_latents=True, **_given(embeds), **kw)
    _check(ours, unpack_latents(theirs, 6, 10), "kontext")


@pytest.mark.parametrize("kw", [{}, {"true_cfg_scale": 2.0, "negative_prompt": "ugly",
                                     "negative_ip_adapter_image": "negative.png"}])
def test_redux_with_an_ip_adapter_matches_the_flux_pipeline(flux_ip, embeds, kw):
    """Redux + an XLabs IP-Adapter (scale 0.8): FluxPipeline.load_ip_adapter + ip_adapter_image given the prior's
    output, plain and with true CFG and a negative IP-Adapter image."""
    from PIL import Image
    from diffkit.interop.flux_ip_adapter import load_flux_ip_adapter
    pipe, flux, root, png, _ = flux_ip
    latents = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(7))
    theirs_kw, negative = dict(kw), kw.get("negative_ip_adapter_image")
    if negative:
        theirs_kw["negative_ip_adapter_image"] = Image.open(root / negative).convert("RGB")
    pipe.load_ip_adapter(str(root), weight_name="xlabs.safetensors", local_files_only=True,
                         image_encoder_pretrained_model_name_or_path=str(root / "image_encoder"),
                         image_encoder_dtype=torch.float32)
    try:
        pipe.set_ip_adapter_scale(0.8)
        with torch.no_grad():
            theirs = pipe(**_given(embeds, False), ip_adapter_image=Image.open(png).convert("RGB"),
                          num_images_per_prompt=2, height=16, width=16, num_inference_steps=2,
                          latents=pack_latents(latents), output_type="latent", **theirs_kw).images
    finally:
        pipe.unload_ip_adapter()
    adapter = load_flux_ip_adapter(root / "xlabs.safetensors", png, 0.8, progress=False,
                                   negative_image=None if negative is None else root / negative)
    ours = text_to_image(flux, None, ip_adapter=adapter, latents=latents, steps=2, return_latents=True,
                         **_given(embeds), **{k: v for k, v in kw.items() if k != "negative_ip_adapter_image"})
    _check(ours, unpack_latents(theirs, 8, 8), f"ip-adapter {sorted(kw)}")


def test_what_diffusers_cannot_do_with_redux_is_one_line(tiny_redux, embeds, tmp_path):
    """FluxImg2ImgPipeline / FluxInpaintPipeline / FluxControlNetPipeline crash on true CFG with Redux's longer
    embeddings (their negative pass takes the positive text ids): refused in one line; prompts with embeddings too."""
    from diffkit.interop.controlnet import ControlNets
    from test_flux_controlnet import tiny_flux_controlnet
    from test_sd3_controlnet import control_image_files
    flux = tiny_redux[2]
    true_cfg = {"negative_prompt": "ugly", "true_cfg_scale": 2.0}
    with pytest.raises(DiffkitError, match="not supported in a FLUX img2img / inpainting edit"):
        image_to_image(flux, _edit_images() * 2 - 1, None, 0.6, **_given(embeds), **true_cfg)
    control = ControlNets([tiny_flux_controlnet(3)], control_image_files(tmp_path)[1:], 0.7)
    with pytest.raises(DiffkitError, match="true CFG \\(a negative prompt\\) with a FLUX ControlNet and given"):
        text_to_image(flux, None, controlnet=control, steps=1, **_given(embeds), **true_cfg)
    for call in (lambda: image_to_image(flux, _edit_images(), "a", **_given(embeds)),
                 lambda: text_to_image(flux, None, prompt_2="b", steps=1, **_given(embeds))):
        with pytest.raises(DiffkitError, match="prompt_embeds with prompt(s|_2) is not supported"):
            call()


def _redux_png(tmp_path):
    path = tmp_path / "redux.png"
    _images(1)[0].save(path)
    return str(path)


def _one_line(capsys, match):
    import re
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(match, err[0]), err


def test_sample_command_takes_redux_with_true_cfg_controlnet_and_control_image(tiny_redux, tiny_control, tmp_path,
                                                                              capsys, monkeypatch):
    """`diffkit sample --redux DIR --redux-image PNG --prompt TEXT` with true CFG, a ControlNet (--controlnet-scale
    0.7) or a Depth / Canny folder's --control-image writes text_to_image(prompt_embeds=redux_embeds(...))'s grid
    byte for byte (sample i's noise and control posterior from seed + i); true CFG with the ControlNet: one line."""
    from diffkit.cli import main
    from diffkit.images import save_grid
    from diffkit.interop import flux as flux_module
    from diffkit.interop.controlnet import ControlNets, load_model_folder
    from test_flux_controlnet import tiny_flux_controlnet
    from test_sd3_controlnet import control_image_files
    monkeypatch.setattr(flux_module, "DEFAULT_SAMPLE_SIZE", 8)
    folder, flux, redux_folder, redux = tiny_redux[1], tiny_redux[2], tiny_redux[4], tiny_redux[5]
    tiny_flux_controlnet(3).save_pretrained(tmp_path / "cn")
    image, png = str(control_image_files(tmp_path)[1]), _redux_png(tmp_path)
    common = ["sample", "--num", "2", "--nrow", "2", "--steps", "2", "--seed", "5", "--batch-size", "2",
              "--no-progress", "--redux", str(redux_folder), "--redux-image", png, "--prompt", PROMPT]
    true_cfg = {"negative_prompt": "ugly", "true_cfg_scale": 2.0}
    cases = (("true cfg", folder, flux, ["--true-cfg-scale", "2", "--negative-prompt", "ugly"], true_cfg),
             ("controlnet", folder, flux, ["--controlnet", str(tmp_path / "cn"), "--control-image", image,
                                           "--controlnet-scale", "0.7"],
              {"controlnet": ControlNets([load_model_folder("FluxControlNetModel", tmp_path / "cn", progress=False)],
                                         [image], 0.7), "control_seed": 5}),
             ("depth / canny", tiny_control[1], tiny_control[2], ["--control-image", image],
              {"control_image": image, "control_seed": 5}))
    for name, checkpoint, model, extra, kw in cases:
        out = tmp_path / f"{len(extra)}.png"
        assert main(common + ["--checkpoint", str(checkpoint), "--out", str(out)] + extra) == 0, name
        context, pooled = redux_embeds(model, redux, png, PROMPT)
        latents = torch.cat([torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(5 + i))
                             for i in range(2)])
        images = text_to_image(model, None, prompt_embeds=context, pooled_prompt_embeds=pooled, steps=2,
                               latents=latents, output_range="-1,1", **kw)
        save_grid(images, tmp_path / "expected.png", 2)
        assert out.read_bytes() == (tmp_path / "expected.png").read_bytes(), name
    capsys.readouterr()
    assert main(common + ["--checkpoint", str(folder), "--out", str(tmp_path / "bad" / "o.png")] + cases[1][3]
                + cases[0][3]) == 2
    _one_line(capsys, "--redux with --negative-prompt and --controlnet: true CFG .* not supported")
    assert not (tmp_path / "bad").exists()


def test_edit_command_takes_redux_in_inpainting_fill_and_kontext(tiny_redux, tiny_fill, kontext, tmp_path, capsys):
    """`diffkit edit --redux DIR --redux-image PNG` inpaints (--mask) on a FLUX.1 folder and a Fill folder as
    image_to_image(prompt_embeds=redux_embeds(...)) byte for byte, and edits on a Kontext folder (true CFG) within
    one PNG level of FluxKontextPipeline given FluxPriorReduxPipeline's output; true CFG in the FLUX.1 folder's edit,
    --redux on an SD3-less non-FLUX checkpoint: one line."""
    import numpy as np
    from PIL import Image
    from diffkit.cli import main
    from diffkit.commands.edit import read_pngs
    from diffkit.images import save_images
    redux_folder, redux = tiny_redux[4], tiny_redux[5]
    test_flux_fill._write_inputs(tmp_path)
    images, _ = read_pngs(tmp_path / "in", "RGB")
    png = _redux_png(tmp_path)
    flags = ["--redux", str(redux_folder), "--redux-image", png, "--prompt", PROMPT, "--no-progress", "--seed", "5",
             "--steps", "3"]
    for name, (folder, flux) in (("flux", tiny_redux[1:3]), ("fill", tiny_fill[1:])):
        out = tmp_path / name
        assert main(["edit", "--checkpoint", str(folder), "--images", str(tmp_path / "in"), "--mask",
                     str(tmp_path / "mask.png"), "--out", str(out)] + flags) == 0, name
        context, pooled = redux_embeds(flux, redux, png, PROMPT)
        ours = image_to_image(flux, images, None, mask=_mask(), steps=3, seed=5, output_range="-1,1",
                              prompt_embeds=context, pooled_prompt_embeds=pooled)
        save_images(ours, tmp_path / f"expected_{name}", prefix="edit")
        for i in range(2):
            file = f"edit_0000{i}.png"
            assert (out / file).read_bytes() == (tmp_path / f"expected_{name}" / file).read_bytes(), name
    pipe, folder, _ = kontext
    true_cfg = ["--true-cfg-scale", "2", "--negative-prompt", "ugly"]
    assert main(["edit", "--checkpoint", str(folder), "--images", str(tmp_path / "in" / "0.png"), "--height", "16",
                 "--width", "16", "--max-area", "256", "--no-auto-resize", "--out", str(tmp_path / "kontext")]
                + flags[:-1] + ["2"] + true_cfg) == 0
    prior = diffusers.FluxPriorReduxPipeline.from_pretrained(
        redux_folder, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, text_encoder_2=pipe.text_encoder_2,
        tokenizer_2=pipe.tokenizer_2, local_files_only=True)
    with torch.no_grad():
        given = prior(Image.open(png), prompt=PROMPT, return_dict=False)
        theirs = pipe(image=Image.open(tmp_path / "in" / "0.png"), prompt_embeds=given[0],
                      pooled_prompt_embeds=given[1], negative_prompt="ugly", true_cfg_scale=2.0, height=16, width=16,
                      max_area=256, _auto_resize=False, num_inference_steps=2, output_type="np",
                      generator=torch.Generator().manual_seed(5)).images
    written = np.asarray(Image.open(tmp_path / "kontext" / "edit_00000.png"), np.float64)
    levels = np.abs(written - (theirs[0] * 255).round()).max()
    with capsys.disabled():
        print("redux kontext PNG levels", levels)
    assert written.shape == (16, 16, 3) and levels <= 1
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert main(["edit", "--checkpoint", str(tiny_redux[1]), "--images", str(tmp_path / "in"), "--out", str(bad)]
                + flags + true_cfg) == 2
    _one_line(capsys, "--redux with --negative-prompt: true CFG .* not supported in a FLUX img2img / inpainting")
    assert main(["edit", "--checkpoint", str(tmp_path / "in"), "--images", str(tmp_path / "in"), "--out", str(bad)]
                + flags) == 2
    _one_line(capsys, "--redux applies to a FLUX.1 folder \\(FluxPipeline\\); .* is not one")
    assert not bad.exists()
