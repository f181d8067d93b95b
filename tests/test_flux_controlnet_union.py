"""FLUX.1 ControlNet-Union (a FluxControlNetModel with num_mode, diffkit.interop.flux_controlnet with the modes of
diffkit.interop.controlnet_union) against diffusers' FluxControlNetPipeline (FluxMultiControlNetModel with one union
ControlNet and two images, with two union ControlNets, with a union and a plain one) and
FluxControlNetInpaintPipeline, on the tiny random FLUX.1-dev-like folder of test_interop_flux and tiny random
FluxControlNetModels with num_mode=4 (their zero-initialised layers made random); `diffkit sample --control-mode`
on such a folder; nothing downloaded."""
import pytest

diffusers = pytest.importorskip("diffusers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.controlnet import ControlNets, load_model_folder  # noqa: E402
from diffkit.interop.flux import image_to_image, load_flux, text_to_image  # noqa: E402

from test_flux_controlnet import KW, PROMPTS, _latents, _theirs, tiny_flux_controlnet  # noqa: E402
from test_flux_controlnet_edit import _theirs as _theirs_edit  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_flux import tiny_flux_pipeline  # noqa: E402
from test_interop_flux_inpaint import _images, _mask, write_edit_inputs  # noqa: E402
from test_sd3_controlnet import assert_sample_refusals, control_image_files  # noqa: E402

NUM_MODE = 4


@pytest.fixture(scope="module")
def tiny_union(tmp_path_factory):
    """(FLUX.1-dev-like folder, load_flux of it, {name: ControlNet folder}, two control image paths): union0 and
    union1 with num_mode=4, plain without."""
    root = tmp_path_factory.mktemp("fluxunion")
    tiny_flux_pipeline(root, True).save_pretrained(root / "flux")
    nets = {}
    for seed, name, options in ((21, "union0", {"num_mode": NUM_MODE}), (22, "union1", {"num_mode": NUM_MODE}),
                                (23, "plain", {})):
        tiny_flux_controlnet(seed, **options).save_pretrained(root / name)
        nets[name] = root / name
    return root / "flux", load_flux(root / "flux", progress=False), nets, control_image_files(root)


def _net(folder):
    return load_model_folder("FluxControlNetModel", folder, progress=False)


def _ours(flux, nets, images, modes, scales=1.0, start=0.0, end=1.0, **kw):
    control = ControlNets([_net(n) for n in nets], images, scales, start, end, modes=modes)
    return text_to_image(flux, PROMPTS, steps=4, latents=_latents(), return_latents=True, controlnet=control,
                         control_seed=11, guidance_scale=3.0, **KW, **kw)


@pytest.mark.parametrize("names, images, modes, indices, options", [
    (["union0"], 1, ["depth"], [2], {"scales": 0.7}),
    (["union0"], 2, [3, "canny"], [3, 0], {"scales": [0.7, 1.2], "start": [0.0, 0.25], "end": [0.5, 1.0]}),
    (["union0", "union1"], 2, ["tile", 1], [1, 1],
     {"scales": [1.0, 0.6], "both": {"true_cfg_scale": 2.5, "negative_prompt": "ugly"}}),
    (["plain", "union1"], 2, [None, "Blur"], [None, 3], {"scales": [0.8, 1.1]}),
])
def test_flux_controlnet_union_matches_the_pipeline(tiny_union, names, images, modes, indices, options):
    """One union ControlNet with one control image (FluxControlNetModel, control_mode an int); with two images,
    a mode, scale and window each (FluxMultiControlNetModel([union]): one call per image); two union ControlNets;
    a plain ControlNet beside a union one (its mode None): FluxControlNetPipeline's latents (embedded guidance 3;
    the two union ControlNets with true CFG 2.5, the negative pass given the conditional pass's residuals), and
    another mode gives other latents."""
    folder, flux, nets, pngs = tiny_union
    options = dict(options)
    both = options.pop("both", {})
    scales = options["scales"]
    single = len(names) == 1 and images == 1
    pipe = {"controlnet_conditioning_scale": scales, "control_mode": indices[0] if single else indices}
    if not single:  # the pipeline's windows: one per control image (scalars give FluxMultiControlNetModel([union])
        # one window, and its zip would drop the second image)
        pipe.update(control_guidance_start=options.get("start", [0.0] * images),
                    control_guidance_end=options.get("end", [1.0] * images))
    model = _net(nets[names[0]]) if single else [_net(nets[n]) for n in names]  # a list: FluxMultiControlNetModel
    theirs = _theirs(flux, model, pngs[:images], _latents(), guidance_scale=3.0, **pipe, **both)
    ours = _ours(flux, [nets[n] for n in names], pngs[:images], modes, **options, **both)
    error = relative_error(ours, theirs)
    print("flux union", names, modes, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, error
    other = [None if m is None else (m + 1) % NUM_MODE for m in indices]
    assert relative_error(_ours(flux, [nets[n] for n in names], pngs[:images], other, **options, **both),
                          theirs) > 1e-3


@pytest.mark.parametrize("mask, strength", [(True, 0.8), (False, 0.6)])
def test_flux_controlnet_union_edits_match_the_pipelines(tiny_union, mask, strength):
    """Inpainting / img2img with a union ControlNet (mode 'blur', index 3 of 4, scale 0.7):
    FluxControlNetInpaintPipeline / FluxControlNetImg2ImgPipeline given control_mode=[3, 3] (diffusers 0.42.1's edit
    pipelines take control_mode's rows as they are: an int is one row, which fails for two prompts); diffkit gives
    every row the mode."""
    folder, flux, nets, pngs = tiny_union
    images, how = _images(), {"mask": _mask()} if mask else {}
    theirs = _theirs_edit(flux, _net(nets["union0"]), pngs[:1], images, how.get("mask"), num_inference_steps=3,
                          strength=strength, controlnet_conditioning_scale=0.7, control_mode=[3, 3])
    cn = ControlNets([_net(nets["union0"])], pngs[:1], 0.7, modes=["blur"])
    ours = image_to_image(flux, images * 2 - 1, PROMPTS, strength, steps=3, seed=5, return_latents=True,
                          controlnet=cn, max_sequence_length=12, **how)
    error = relative_error(ours, theirs)
    print("flux union edit", mask, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, error


def test_flux_controlnet_union_refusals(tiny_union):
    """A union ControlNet without a mode, a mode for a plain ControlNet (alone or beside a union one), an index >=
    num_mode, an unknown name (an SD-XL one): one line each, before any sampling."""
    folder, flux, nets, pngs = tiny_union
    for names, modes, match in (
            (["union0"], None, "a ControlNet-Union needs a control mode per control image.*canny \\(0\\)"),
            (["plain"], [0], "control modes apply to a ControlNet-Union \\(a FluxControlNetModel with num_mode\\)"),
            (["union0", "plain"], [0, 1], "--control-mode 1 is given for --controlnet number 2, which has no control "
                                          "modes"),
            (["union0", "plain"], [None, None], "--controlnet number 1 is a ControlNet-Union: give it a control mode"),
            (["union0"], [4], "--control-mode 4 \\(pose\\) is not allowed for --controlnet number 1: its num_mode is "
                              "4; allowed: 0-3"),
            (["union0"], ["Low quality"], "--control-mode 6 \\(lq\\) is not allowed .* num_mode is 4"),
            (["union0"], ["openpose"], "--control-mode 'openpose' is not a control type; allowed: canny \\(0\\)")):
        with pytest.raises(DiffkitError, match=match):
            ControlNets([_net(nets[n]) for n in names], pngs[:len(names)], modes=modes)


def test_sample_command_takes_flux_control_modes(tiny_union, tmp_path, capsys):
    """`diffkit sample --controlnet UNION --control-image A --control-image B --control-mode depth --control-mode 1`
    on a FLUX folder writes text_to_image's images byte for byte; the refusals are one line, no output."""
    from diffkit.cli import main
    from diffkit.images import save_grid
    folder, flux, nets, pngs = tiny_union
    out = tmp_path / "grid.png"
    common = ["--checkpoint", str(folder), "--prompt", PROMPTS[0], "--num", "2", "--nrow", "1", "--steps", "3",
              "--seed", "5", "--batch-size", "2", "--no-progress", "--height", "16", "--width", "16",
              "--max-sequence-length", "12", "--controlnet", str(nets["union0"]), "--control-image", str(pngs[0])]
    assert main(["sample", "--out", str(out)] + common + ["--control-image", str(pngs[1]), "--control-mode", "depth",
                                                          "--control-mode", "1", "--controlnet-scale", "0.6",
                                                          "--controlnet-scale", "0.9"]) == 0
    control = ControlNets([_net(nets["union0"])], pngs, [0.6, 0.9], modes=[2, 1])
    expected = text_to_image(flux, PROMPTS[:1] * 2, steps=3, seed=5, controlnet=control, control_seed=5,
                             output_range="-1,1", **KW)
    save_grid(expected, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    plain = ["--controlnet", str(nets["plain"]), "--control-image", str(pngs[1])]
    assert_sample_refusals(main, common, tmp_path, capsys, (
        ([], "--controlnet .*union0 is a ControlNet-Union: give --control-mode NAME\\|INDEX for each --control-image; "
             "allowed: canny \\(0\\)"),
        (["--control-mode", "4"], "--control-mode 4 \\(pose\\) is not allowed for --controlnet .*union0: its "
                                  "num_mode is 4"),
        (["--control-mode", "segment"], "--control-mode 'segment' is not a control type; allowed: canny"),
        (["--control-mode", "canny", "--control-mode", "tile"], "2 --control-mode for 1 --control-image"),
        (plain + ["--control-mode", "canny", "--control-mode", "tile"],
         "--control-mode 1 is given for --controlnet .*plain, which has no control modes")))
    plain_only = [a if a != str(nets["union0"]) else str(nets["plain"]) for a in common]
    assert_sample_refusals(main, plain_only, tmp_path, capsys, (
        (["--control-mode", "canny"], "--control-mode applies to a ControlNet-Union folder \\(a FluxControlNetModel "
                                      "with num_mode\\); --controlnet .*plain holds a FluxControlNetModel without"),))


def test_edit_command_takes_flux_control_modes(tiny_union, tmp_path):
    """`diffkit edit --controlnet UNION --control-image PNG --control-mode tile --mask` on a FLUX folder writes
    image_to_image's images byte for byte."""
    from diffkit.cli import main
    from diffkit.images import save_images
    folder, flux, nets, pngs = tiny_union
    images = write_edit_inputs(tmp_path)
    assert main(["edit", "--checkpoint", str(folder), "--images", str(tmp_path / "in"), "--prompt", PROMPTS[0],
                 "--prompt", PROMPTS[1], "--no-progress", "--seed", "5", "--steps", "3", "--max-sequence-length", "12",
                 "--controlnet", str(nets["union1"]), "--control-image", str(pngs[0]), "--control-mode", "tile",
                 "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "out")]) == 0
    cn = ControlNets([_net(nets["union1"])], pngs[:1], modes=[1])
    ours = image_to_image(flux, images, PROMPTS, 0.6, mask=_mask(), steps=3, seed=5, output_range="-1,1",
                          controlnet=cn, max_sequence_length=12)
    save_images(ours, tmp_path / "expected", prefix="edit")
    for i in range(2):
        assert (tmp_path / "out" / f"edit_0000{i}.png").read_bytes() == \
            (tmp_path / "expected" / f"edit_0000{i}.png").read_bytes()
