"""FLUX.1 ControlNet-Union (a FluxControlNetModel with num_mode, diffkit.interop.flux_controlnet with the modes of
diffkit.interop.controlnet_union) against diffusers' FluxControlNetPipeline (FluxMultiControlNetModel with one union
ControlNet and two images, with two union ControlNets, with a union and a plain one) and
FluxControlNetInpaintPipeline, on the tiny random FLUX.1-dev-like folder of test_interop_flux and tiny random
FluxControlNetModels with num_mode=4 (their zero-initialised layers made random); `diffkit sample --control-mode`
on such a folder; nothing downloaded."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.controlnet import ControlNets, load_model_folder  # noqa: E402
from diffkit.interop.flux import image_to_image, load_flux, text_to_image  # noqa: E402

from test_flux_controlnet import KW, PROMPTS, _latents, _theirs, tiny_flux_controlnet  # noqa: E402
from test_flux_controlnet_edit import _theirs as _theirs_edit  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_flux import tiny_flux_pipeline  # noqa: E402
from test_interop_flux_inpaint import _images, _mask  # noqa: E402
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


@pytest.mark.parametrize("names, images, modes, options", [
    (["union0"], 1, ["depth"], {"scales": 0.7}),
    (["union0"], 2, [3, "canny"], {"scales": [0.7, 1.2], "start": [0.0, 0.25], "end": [0.5, 1.0]}),
    (["union0", "union1"], 2, ["tile", 1], {"scales": [1.0, 0.6]}),
    (["plain", "union1"], 2, [None, "blur"], {"scales": [0.8, 1.1]}),
])
def test_flux_controlnet_union_matches_the_pipeline(tiny_union, names, images, modes, options):
    """One union ControlNet with one control image (FluxControlNetModel, control_mode an int); with two images,
    a mode, scale and window each (FluxMultiControlNetModel([union]): one call per image); two union ControlNets;
    a plain ControlNet beside a union one (its mode None): FluxControlNetPipeline's latents (embedded guidance 3),
    and another mode gives other latents."""
    from diffkit.interop.controlnet_union import FLUX_UNION, mode_or_none
    folder, flux, nets, pngs = tiny_union
    indices = [mode_or_none(m, FLUX_UNION) for m in modes]
    scales = options["scales"]
    single = len(names) == 1 and images == 1
    pipe = {"controlnet_conditioning_scale": scales, "control_mode": indices[0] if single else indices}
    if not single:  # the pipeline's windows: one per control image (scalars give FluxMultiControlNetModel([union])
        # one window, and its zip would drop the second image)
        pipe.update(control_guidance_start=options.get("start", [0.0] * images),
                    control_guidance_end=options.get("end", [1.0] * images))
    model = _net(nets[names[0]]) if single else [_net(nets[n]) for n in names]  # a list: FluxMultiControlNetModel
    theirs = _theirs(flux, model, pngs[:images], _latents(), guidance_scale=3.0, **pipe)
    ours = _ours(flux, [nets[n] for n in names], pngs[:images], modes, **options)
    error = relative_error(ours, theirs)
    print("flux union", names, modes, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, error
    other = [None if m is None else (m + 1) % NUM_MODE for m in indices]
    assert relative_error(_ours(flux, [nets[n] for n in names], pngs[:images], other, **options), theirs) > 1e-3
