"""T2I-Adapter (Mou et al. 2023; diffkit.interop.t2i_adapter) on tiny random Stable Diffusion and SD-XL folders
against diffusers' own StableDiffusionAdapterPipeline / StableDiffusionXLAdapterPipeline: same prompts, z_T
(``latents=``), DDIM scheduler and control image on both sides, compared on the final latents
(``output_type="latent"``). The adapters are random ``T2IAdapter`` s whose features fit the tiny UNets: SD's
(blocks 32, 64; VAE factor 2) takes a ``full_adapter`` / ``light_adapter`` of channels (32, 64) with
downscale_factor 2, SD-XL's a ``full_adapter_xl`` with downscale_factor 4 (its first feature meets the UNet after
the first downsampler)."""
import re

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image  # noqa: E402
from diffkit.interop.t2i_adapter import T2IAdapters, adapter_steps  # noqa: E402

from test_controlnet import control_png  # noqa: E402
from test_interop_diffusers import relative_error, tiny_sd_pipeline  # noqa: E402
from test_interop_sd_xl import PROMPTS, tiny_sd_xl_pipeline  # noqa: E402

STEPS, SCALE = 4, 5.0
HEIGHT, WIDTH = 16, 24  # the control image's size: the output's, and SD-XL's time ids (the SD pipeline wants 8 | size)


def tiny_adapter(seed: int, adapter_type: str = "full_adapter", downscale_factor: int = 2, in_channels: int = 3):
    """A random T2IAdapter of channels (32, 64), one res block per level."""
    torch.manual_seed(seed)
    return diffusers.T2IAdapter(in_channels=in_channels, channels=[32, 64], num_res_blocks=1,
                                downscale_factor=downscale_factor, adapter_type=adapter_type).eval()


@pytest.fixture(scope="module")
def tiny_t2i(tmp_path_factory):
    """(SD adapter pipeline, SD-XL adapter pipeline, adapters by name, our SD, our SD-XL, root, PNGs)."""
    root = tmp_path_factory.mktemp("tiny_t2i")
    sd_pipe = tiny_sd_pipeline(root)
    sd_pipe.save_pretrained(root / "sd")
    xl_pipe = tiny_sd_xl_pipeline(root)
    xl_pipe.save_pretrained(root / "xl")
    adapters = {"full": tiny_adapter(1), "full2": tiny_adapter(2), "light": tiny_adapter(3, "light_adapter"),
                "grey": tiny_adapter(4, in_channels=1), "xl": tiny_adapter(5, "full_adapter_xl", 4)}
    for name, adapter in adapters.items():
        adapter.save_pretrained(root / name)
    pipe = diffusers.StableDiffusionAdapterPipeline(**{k: v for k, v in sd_pipe.components.items()
                                                       if k not in ("image_encoder",)}, adapter=adapters["full"])
    pipe.set_progress_bar_config(disable=True)
    xl = diffusers.StableDiffusionXLAdapterPipeline(**{k: v for k, v in xl_pipe.components.items()},
                                                    adapter=adapters["xl"])
    xl.set_progress_bar_config(disable=True)
    pngs = [control_png(root / f"control{i}.png", HEIGHT, WIDTH, seed=i) for i in range(2)]
    return (pipe, xl, adapters, load_stable_diffusion(root / "sd", progress=False),
            load_stable_diffusion(root / "xl", progress=False), root, pngs)


def _latents(batch=2):
    return torch.randn((batch, 4, HEIGHT // 2, WIDTH // 2), generator=torch.Generator().manual_seed(7))


def _theirs(pipe, adapters, pngs, latents, mode="RGB", **options):
    """The pipeline's latents; ``pngs``: per adapter a file (repeated for each prompt) or a list (one per prompt)."""
    from PIL import Image
    saved = pipe.adapter
    images = [[Image.open(q).convert(mode) for q in p] if isinstance(p, list) else  # one per prompt (its batch)
              [Image.open(p).convert(mode)] * len(PROMPTS) for p in pngs]
    try:
        pipe.adapter = adapters[0] if len(adapters) == 1 else diffusers.MultiAdapter(adapters)
        with torch.no_grad():
            return pipe(PROMPTS, image=images[0] if len(adapters) == 1 else images, guidance_scale=SCALE,
                        num_inference_steps=STEPS, latents=latents.clone(), eta=0.0, output_type="latent",
                        **options).images
    finally:
        pipe.adapter = saved


def _ours(sd, adapters, pngs, latents, sampler="ddim", **options):
    return text_to_image(sd, PROMPTS, sampler=sampler, steps=STEPS, grid="scheduler", guidance_scale=SCALE,
                         latents=latents, return_latents=True, **({"eta": 0.0} if sampler == "ddim" else {}),
                         t2i_adapter=None if adapters is None else T2IAdapters(adapters, pngs, **options))


@pytest.mark.parametrize("name, scale", [("full", 1.0), ("full", 0.5), ("light", 1.0), ("grey", 1.0)])
def test_t2i_adapter_matches_the_sd_pipeline(tiny_t2i, name, scale):
    """StableDiffusionAdapterPipeline (CFG s = 5, DDIM): full and light adapters, a 1-channel adapter (grey
    image), adapter_conditioning_scale 1 and 0.5."""
    pipe, xl, adapters, sd, sd_xl, root, pngs = tiny_t2i
    latents = _latents()
    mode = "L" if name == "grey" else "RGB"
    theirs = _theirs(pipe, [adapters[name]], pngs[:1], latents, mode, adapter_conditioning_scale=scale)
    ours = _ours(sd, [adapters[name]], pngs[:1], latents, scales=scale)
    assert ours.shape == (2, 4, HEIGHT // 2, WIDTH // 2)
    assert relative_error(ours, theirs) < 1e-5
    assert relative_error(_ours(sd, None, None, latents), theirs) > 1e-3  # the adapter changes the result


def test_multi_adapter_matches_the_sd_pipeline(tiny_t2i):
    """Two adapters (MultiAdapter: sum_k s_k F_k, in order) with scales 1 and 0.5."""
    pipe, xl, adapters, sd, sd_xl, root, pngs = tiny_t2i
    latents = _latents()
    nets = [adapters["full"], adapters["full2"]]
    theirs = _theirs(pipe, nets, pngs, latents, adapter_conditioning_scale=[1.0, 0.5])
    assert relative_error(_ours(sd, nets, pngs, latents, scales=[1.0, 0.5]), theirs) < 1e-5
    assert relative_error(_ours(sd, nets[:1], pngs[:1], latents), theirs) > 1e-3


@pytest.mark.parametrize("scale, factor", [(1.0, 1.0), (0.5, 1.0), (1.0, 0.5), (0.5, 0.3)])
def test_t2i_adapter_matches_the_sd_xl_pipeline(tiny_t2i, scale, factor):
    """StableDiffusionXLAdapterPipeline with full_adapter_xl: scale 1 / 0.5, adapter_conditioning_factor 1, 0.5
    and 0.3 (steps i < int(4 f): 2 and 1 of 4); time ids (16, 24, 0, 0, 16, 24) from the control image."""
    pipe, xl, adapters, sd, sd_xl, root, pngs = tiny_t2i
    latents = _latents()
    theirs = _theirs(xl, [adapters["xl"]], pngs[:1], latents, adapter_conditioning_scale=scale,
                     adapter_conditioning_factor=factor)
    ours = _ours(sd_xl, [adapters["xl"]], pngs[:1], latents, scales=scale, factor=factor)
    assert relative_error(ours, theirs) < 1e-5
    if factor < 1:  # the factor matters
        full = _theirs(xl, [adapters["xl"]], pngs[:1], latents, adapter_conditioning_scale=scale)
        assert relative_error(ours, full) > 1e-4


def test_adapter_steps_are_the_pipelines_int_rule():
    """i < int(N f), not (i + 1) / N <= f: they differ where N f rounds below an integer (100 * 0.29)."""
    assert adapter_steps(4, 0.5).tolist() == [True, True, False, False]
    assert adapter_steps(100, 0.29).sum() == int(100 * 0.29) == 28
    assert not adapter_steps(5, 0.0).any() and adapter_steps(5, 1.0).all()


def test_scale_zero_and_factor_zero_are_plain_sampling_bit_for_bit(tiny_t2i):
    """Scale 0 adds exact zeros, factor 0 passes no features: both the plain folder's latents bit for bit,
    also with a multi-call sampler (heun: its calls at a step's end belong to that step)."""
    pipe, xl, adapters, sd, sd_xl, root, pngs = tiny_t2i
    latents = _latents()
    plain = _ours(sd, None, None, latents, sampler="heun")
    assert torch.equal(plain, _ours(sd, [adapters["full"]], pngs[:1], latents, sampler="heun", factor=0.0))
    assert torch.equal(plain, _ours(sd, [adapters["full"]], pngs[:1], latents, sampler="heun", scales=0.0))
    half = _ours(sd, [adapters["full"]], pngs[:1], latents, sampler="heun", factor=0.5)
    assert not torch.equal(plain, half)


def _pngs_of(folder):
    from PIL import Image
    return torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)
                        for f in sorted(folder.glob("*.png"))]).float() / 255


@pytest.mark.parametrize("folder", ["sd", "xl"])
def test_sample_command_with_t2i_adapter_is_text_to_image(tiny_t2i, tmp_path, folder):
    """``diffkit sample --t2i-adapter DIR:S --control-image PNG --adapter-conditioning-factor F``: the PNGs of
    text_to_image with the same adapters, byte for byte (sample i from seed + i), the control image's size."""
    from diffkit.images import save_images
    pipe, xl, adapters, sd, sd_xl, root, pngs = tiny_t2i
    model, names = (sd, ["full", "full2"]) if folder == "sd" else (sd_xl, ["xl"])
    individual = tmp_path / "each"
    flags = [a for i, name in enumerate(names) for a in ("--t2i-adapter", f"{root / name}:0.7",
                                                         "--control-image", pngs[i])]
    assert main([str(a) for a in (
        "sample", "--checkpoint", root / folder, "--prompt", "hot", "--num", "2", "--steps", "2", "--seed", "5",
        *flags, "--adapter-conditioning-factor", "0.5", "--out", tmp_path / "grid.png", "--individual", individual,
        "--no-progress")]) == 0
    ours = _pngs_of(individual)
    assert ours.shape == (2, 3, HEIGHT, WIDTH)
    images = text_to_image(model, ["hot", "hot"], steps=2, seed=5, output_range="-1,1",
                           t2i_adapter=T2IAdapters([adapters[n] for n in names], pngs[:len(names)], scales=0.7,
                                                   factor=0.5))
    save_images(images, tmp_path / "lib")
    assert torch.equal(ours, _pngs_of(tmp_path / "lib"))


def test_bad_t2i_adapter_input_is_one_line_before_any_output(tiny_t2i, tmp_path, capsys):
    from test_cli_errors import one_line_error
    pipe, xl, adapters, sd, sd_xl, root, pngs = tiny_t2i
    out = tmp_path / "new" / "grid.png"
    base = ["sample", "--checkpoint", root / "sd", "--prompt", "hot", "--num", "1", "--steps", "2", "--out", out]
    ad, image = ["--t2i-adapter", root / "full"], ["--control-image", pngs[0]]
    for extra, match in (
            (["--t2i-adapter", tmp_path / "missing", *image], "no config.json there"),
            (["--t2i-adapter", root / "sd" / "unet", *image], "holds a 'UNet2DConditionModel'"),
            (["--t2i-adapter", f"{root / 'full'}:-1", *image], "--t2i-adapter scale -1"),
            ([*ad], "0 --control-image for 1 --t2i-adapter"),
            ([*ad, *image, "--adapter-conditioning-factor", "1.5"], "--adapter-conditioning-factor"),
            (["--adapter-conditioning-factor", "0.5"], "--adapter-conditioning-factor needs --t2i-adapter"),
            ([*ad, *image, "--controlnet", root / "full"], "--t2i-adapter with --controlnet"),
            ([*ad, *image, "--pag-scale", "2"], "--t2i-adapter with --pag-scale"),
            (["--t2i-adapter", root / "xl", *image], "downscale_factor=4 but this folder's latents need 2"),
            ([*ad, "--control-image", root], "holds 2 PNG(s) for 1 --prompt")):
        line = one_line_error(capsys, *base, *extra)
        assert match in line, (extra, line)
        assert not out.parent.exists()
    lcm = load_stable_diffusion(root / "sd", progress=False, scheduler="lcm")
    with pytest.raises(DiffkitError, match="with an LCM / TCD folder"):
        text_to_image(lcm, PROMPTS, steps=2, t2i_adapter=T2IAdapters([adapters["full"]], pngs[:1]))
    other = diffusers.T2IAdapter(channels=[16, 64], num_res_blocks=1, downscale_factor=2)
    with pytest.raises(DiffkitError, match=r"channels=\[16, 64\] but the UNet"):
        text_to_image(sd, PROMPTS, steps=2, t2i_adapter=T2IAdapters([other], pngs[:1]))
    for images, options, match in (([pngs[0], pngs[1]], {}, "2 control images for 1 T2I-Adapters"),
                                   ([[]], {}, "an empty list of control images"),
                                   ([pngs[0]], {"factor": 1.5}, "adapter conditioning factor"),
                                   ([pngs[0]], {"scales": [1.0, 2.0]}, "one per T2I-Adapter (1)")):
        with pytest.raises(DiffkitError, match=re.escape(match)):
            T2IAdapters([adapters["full"]], images, **options)


@pytest.mark.parametrize("folder, names, scale", [("sd", ["full"], 1.0), ("sd", ["full", "full2"], 0.5),
                                                   ("xl", ["xl"], 0.7)])
def test_one_control_image_per_prompt_matches_the_pipelines(tiny_t2i, folder, names, scale):
    """StableDiffusion(XL)AdapterPipeline given a list of images, one per prompt (MultiAdapter: a list per
    adapter): prompt i's features are image i's (control_rows 0, 1 by default); with the list reversed through
    ``control_rows`` the same latents as the reversed list, and not the per-prompt run with the rows swapped."""
    pipe, xl, adapters, sd, sd_xl, root, pngs = tiny_t2i
    pipeline, model = (pipe, sd) if folder == "sd" else (xl, sd_xl)
    nets = [adapters[name] for name in names]
    per_prompt = [list(pngs), list(pngs[::-1])][:len(nets)]
    latents = _latents()
    theirs = _theirs(pipeline, nets, per_prompt, latents,
                     adapter_conditioning_scale=scale if len(nets) == 1 else [scale] * len(nets))
    ours = _ours(model, nets, per_prompt, latents, scales=scale)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    swapped = text_to_image(model, PROMPTS, steps=STEPS, grid="scheduler", guidance_scale=SCALE, latents=latents,
                            return_latents=True, eta=0.0, control_rows=[1, 0],
                            t2i_adapter=T2IAdapters(nets, [p[::-1] for p in per_prompt], scales=scale))
    assert relative_error(swapped, theirs) < 1e-5  # image control_rows[i] of the list
    assert relative_error(_ours(model, nets, [p[::-1] for p in per_prompt], latents, scales=scale), theirs) > 1e-4


def test_sample_command_with_a_control_image_folder_per_prompt(tiny_t2i, tmp_path):
    """``diffkit sample --t2i-adapter DIR --control-image FOLDER --prompt hot --prompt cold --num 4``: each
    prompt's row takes its own image (the folder's PNGs in name order), the PNGs of text_to_image with the list and
    control_rows [0, 0, 1, 1], byte for byte."""
    import shutil
    from diffkit.images import save_images
    pipe, xl, adapters, sd, sd_xl, root, pngs = tiny_t2i
    (tmp_path / "controls").mkdir()
    for name, png in (("a.png", pngs[1]), ("b.png", pngs[0])):
        shutil.copy(png, tmp_path / "controls" / name)
    individual = tmp_path / "each"
    assert main([str(a) for a in (
        "sample", "--checkpoint", root / "sd", "--prompt", "hot", "--prompt", "cold", "--num", "4", "--steps", "2",
        "--seed", "5", "--t2i-adapter", f"{root / 'full'}:0.8", "--control-image", tmp_path / "controls",
        "--out", tmp_path / "grid.png", "--individual", individual, "--no-progress")]) == 0
    images = text_to_image(sd, ["hot", "hot", "cold", "cold"], steps=2, seed=5, output_range="-1,1",
                           control_rows=[0, 0, 1, 1],
                           t2i_adapter=T2IAdapters([adapters["full"]], [[pngs[1], pngs[0]]], scales=0.8))
    save_images(images, tmp_path / "lib")
    ours = _pngs_of(individual)
    assert torch.equal(ours, _pngs_of(tmp_path / "lib"))
    assert not torch.equal(ours[1], ours[2])  # (the prompts differ too; the images' effect: the library test)


def test_per_prompt_control_image_mistakes_are_one_line(tiny_t2i, tmp_path, capsys):
    from test_cli_errors import one_line_error
    pipe, xl, adapters, sd, sd_xl, root, pngs = tiny_t2i
    out = tmp_path / "new" / "grid.png"
    (tmp_path / "three").mkdir()
    for i in range(3):
        control_png(tmp_path / "three" / f"{i}.png", HEIGHT, WIDTH, seed=i)
    line = one_line_error(capsys, *["sample", "--checkpoint", root / "sd", "--prompt", "hot", "--prompt", "cold",
                                    "--steps", "2", "--t2i-adapter", root / "full", "--control-image",
                                    tmp_path / "three", "--out", out])
    assert "--control-image " in line and "holds 3 PNG(s) for 2 --prompt" in line, line
    assert not out.parent.exists()
    for kwargs, match in (({}, "3 control images for 2 prompts"),
                          ({"control_rows": [0, 3]}, "control_rows [0, 3] is not allowed")):
        with pytest.raises(DiffkitError, match=re.escape(match)) as err:
            text_to_image(sd, PROMPTS, steps=2, t2i_adapter=T2IAdapters([adapters["full"]], [pngs + pngs[:1]]),
                          **kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(DiffkitError, match="the T2I-Adapters have 2 and 3 control images"):
        T2IAdapters([adapters["full"], adapters["full2"]], [pngs, [pngs[0]] * 3])
    with pytest.raises(DiffkitError, match="control_rows picks among one control image per prompt; each T2I-Adapter"):
        text_to_image(sd, PROMPTS, steps=2, t2i_adapter=T2IAdapters([adapters["full"]], pngs[:1]), control_rows=[0, 0])
