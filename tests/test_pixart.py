"""PixArt-α / PixArt-Σ folders (diffkit.interop.pixart): diffkit's text_to_image against diffusers' own
PixArtAlphaPipeline / PixArtSigmaPipeline on tiny random folders (tests/_pixart_helpers.py; nothing downloaded),
and ``diffkit sample`` on them (the library's grid byte for byte; the flags that do not apply refused in one line)."""
import json
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import save_grid  # noqa: E402
from diffkit.interop.pixart import folder_sampler, is_pixart_folder, load_pixart, text_to_image  # noqa: E402

from _pixart_helpers import assert_sample_refusals, tiny_pixart_pipeline  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

PROMPTS = ["a photo of a Cat ", "hot dog"]  # upper case and spaces: the pipelines' lower().strip()


class _Folders(dict):
    """{(kind, sample_size, vae_levels): (pipeline, folder, PixArt)}, each built on its first use."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, key):
        kind, size, levels = key
        folder = self.root / f"{kind}_{size}_{levels}"
        tiny_pixart_pipeline(kind, size, levels).save_pretrained(folder)
        cls = diffusers.PixArtAlphaPipeline if kind == "alpha" else diffusers.PixArtSigmaPipeline
        pipe = cls.from_pretrained(folder, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        self[key] = pipe, folder, load_pixart(folder, progress=False)
        return self[key]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return _Folders(tmp_path_factory.mktemp("pixart"))


def _noise(h, w, seed=1):
    return torch.randn(2, 4, h, w, generator=torch.Generator().manual_seed(seed))


def _both(pipe, pixart, steps=3, height=None, width=None, **call):
    """(diffkit's z_0, the pipeline's) from the same z_T: the pipeline without caption cleaning or binning."""
    f = pixart.vae_scale_factor
    shape = pixart.latent_shape(2, height, width)
    noise = _noise(*shape[2:])
    negative = call.pop("negative_prompt", None)
    with torch.no_grad():
        theirs = pipe(PROMPTS, negative_prompt=negative or "", num_inference_steps=steps, latents=noise.clone(),
                      output_type="latent", clean_caption=False, use_resolution_binning=False,
                      height=shape[2] * f, width=shape[3] * f, **call).images
    ours = text_to_image(pixart, PROMPTS, steps=steps, latents=noise, return_latents=True, height=height,
                         width=width, negative_prompt=negative, **call)
    return ours, theirs


@pytest.mark.parametrize("kind,length", [("alpha", 120), ("sigma", 300)])
def test_pixart_matches_the_pipeline(folders, kind, length):
    """α and Σ with their DPMSolverMultistepScheduler (dpm-solver++-2m on its timesteps), a learned variance:
    guided (s = 4.5, the default) against a negative prompt, and unguided (s = 1); UniPC on the same timesteps
    runs; the folder's scheduler as a DDIMScheduler (diffkit's ddim on its timesteps)."""
    pipe, folder, pixart = folders[kind, 8, 2]
    assert is_pixart_folder(folder) and pixart.max_sequence_length == length
    context, mask = pixart.encode_prompts(PROMPTS)
    assert context.shape[:2] == mask.shape == (2, length) and mask.sum(1).tolist() == [6, 3]  # "</s>" counted
    ours, theirs = _both(pipe, pixart, negative_prompt="ugly blurry")
    assert relative_error(ours, theirs) < 1e-5  # 7.0e-7 measured
    unipc = text_to_image(pixart, PROMPTS, sampler="unipc", grid="scheduler", steps=3, latents=_noise(8, 8),
                          negative_prompt="ugly blurry", return_latents=True)
    assert 1e-4 < relative_error(unipc, theirs) < 0.1  # another solver: 0.17% measured
    ours, theirs = _both(pipe, pixart, guidance_scale=1.0)
    assert relative_error(ours, theirs) < 1e-5  # 1.9e-7 measured
    saved, own = pipe.scheduler, dict(pixart.scheduler_config)
    try:
        pipe.scheduler = diffusers.DDIMScheduler.from_config(saved.config, clip_sample=False,
                                                            timestep_spacing="leading")
        pixart.scheduler_config = {**pipe.scheduler.config, "_class_name": "DDIMScheduler"}
        assert folder_sampler(pixart.scheduler_config) == ("ddim", {})
        ours, theirs = _both(pipe, pixart, steps=4)
        assert relative_error(ours, theirs) < 1e-5  # 7.1e-7 measured
    finally:
        pipe.scheduler, pixart.scheduler_config = saved, own


def test_micro_conditions_match_the_pipeline(folders):
    """sample_size 128 (use_additional_conditions): resolution and aspect ratio at 16 x 24, as
    PixArtAlphaPipeline's."""
    pipe, _, pixart = folders["alpha", 128, 2]
    assert pixart.transformer.use_additional_conditions
    ours, theirs = _both(pipe, pixart, height=16, width=24, guidance_scale=3.0, negative_prompt="ugly")
    assert relative_error(ours, theirs) < 1e-5  # 4.5e-7 measured


def test_resolution_binning_matches_the_pipeline(folders):
    """use_resolution_binning: 220 x 300 asked (no multiple of 16) of a sample_size-32 α (VAE factor 8) is drawn
    at the 256 table's nearest bin and its images resized and cropped back, as the pipeline's (its default, with
    per-sample generators)."""
    from diffkit.interop.pixart import binned_size
    pipe, _, pixart = folders["alpha", 32, 4]
    height, width = binned_size(pixart, 220, 300)
    assert (height, width) == (208, 288)  # the 256 table's "0.72" (220 / 300 = 0.73)
    with torch.no_grad():
        theirs = pipe(PROMPTS, num_inference_steps=2, height=220, width=300, output_type="pt", clean_caption=False,
                      generator=[torch.Generator().manual_seed(i) for i in range(2)]).images
    latents = torch.cat([torch.randn(1, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(i))
                         for i in range(2)])
    ours = text_to_image(pixart, PROMPTS, steps=2, height=220, width=300, latents=latents, resolution_binning=True)
    assert ours.shape == theirs.shape == (2, 3, 220, 300)
    assert (ours - theirs).abs().max() < 1e-5  # images in [0, 1]: 7.7e-7 measured


@pytest.mark.parametrize("kind", ["alpha", "sigma"])
def test_sample_command_is_the_library_and_refuses_what_does_not_apply(folders, kind, tmp_path, capsys):
    _, folder, pixart = folders[kind, 8, 2]
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--steps", "3", "--seed", "5", "--batch-size", "2", "--height", "16", "--width", "32",
                 "--negative-prompt", "ugly", "--guidance-scale", "3", "--guidance-convention", "diffusers",
                 "--out", str(out), "--no-progress"]) == 0
    images = text_to_image(pixart, PROMPTS, steps=3, seed=5, height=16, width=32, negative_prompt="ugly",
                           guidance_scale=3.0, output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert_sample_refusals(main, folder, tmp_path, capsys, [
        (["--guidance-rescale", "0.5", "--guidance-scale", "2"], "--guidance-rescale does not apply to a PixArt"),
        (["--apg-eta", "0.5", "--guidance-scale", "2"], "--apg-eta does not apply to a PixArt folder"),
        (["--freeu", "1,1,1,1"], "--freeu"),
        (["--scheduler", "lcm"], "--scheduler lcm applies to a Stable Diffusion folder"),
        (["--clip-skip", "1"], "--clip-skip does not apply to a PixArt folder"),
        (["--pag-scale", "2"], "perturbed-attention guidance is not supported on a PixArtAlphaPipeline folder")
        if kind == "alpha" else (["--pag-scale", "2", "--pag-layers", "blocks.5"], "pag layer 'blocks.5' matches no"),
        (["--lora", "x.safetensors"], "--lora does not apply to a PixArt folder"),  # diffusers has no PixArt loader
        (["--height", "12"], "--height 12 is not allowed; give a positive multiple of 8"),
        (["--prompt-2", "dog"], "--prompt-2 does not apply to a PixArt folder")], "a PixArt")
    with pytest.raises(DiffkitError, match="max_sequence_length=600 is not allowed; allowed: 1..512"):
        pixart.encode_prompts(PROMPTS, 600)
    odd = tmp_path / "odd"
    shutil.copytree(folder, odd)
    config = json.loads((odd / "scheduler" / "scheduler_config.json").read_text())
    (odd / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "use_karras_sigmas": True}))
    with pytest.raises(DiffkitError, match="use_karras_sigmas=True"):
        folder_sampler(json.loads((odd / "scheduler" / "scheduler_config.json").read_text()))


def test_released_alpha_layout_and_other_classes(folders, tmp_path):
    """PixArt-α's released folders name the transformer ``Transformer2DModel``: loaded as PixArtTransformer2DModel
    (as diffusers does), the same weights; a transformer of another class is refused in one line."""
    _, folder, pixart = folders["alpha", 8, 2]
    legacy = tmp_path / "legacy"
    shutil.copytree(folder, legacy)
    for path, key in ((legacy / "model_index.json", "transformer"), (legacy / "transformer" / "config.json", None)):
        config = json.loads(path.read_text())
        if key:
            config[key] = ["diffusers", "Transformer2DModel"]
        else:
            config["_class_name"] = "Transformer2DModel"
        path.write_text(json.dumps(config))
    loaded = load_pixart(legacy, progress=False)
    assert type(loaded.transformer) is type(pixart.transformer)
    assert all(torch.equal(a, b) for a, b in zip(loaded.transformer.state_dict().values(),
                                                 pixart.transformer.state_dict().values()))
    index = json.loads((legacy / "model_index.json").read_text())
    index["transformer"] = ["diffusers", "DiTTransformer2DModel"]
    (legacy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(DiffkitError, match="transformer is a 'DiTTransformer2DModel'; allowed: PixArtTransformer2D"):
        load_pixart(legacy, progress=False)


@pytest.mark.parametrize("call", [{"pag_scale": 3.0}, {"pag_scale": 2.0, "guidance_scale": 1.0}])
def test_pixart_sigma_pag_matches_the_pipeline(folders, call):
    """PixArtSigmaPAGPipeline (layer blocks.0: the tiny transformer has one block): CFG s = 4.5 with PAG S = 3,
    S = 2 alone (s = 1); the learned variance dropped after the combination, as there. Refused: an adaptive scale
    (the pipeline fails on it), PixArt-α (diffusers has no PAG pipeline for it)."""
    pipe, _, pixart = folders["sigma", 8, 2]
    pag = diffusers.PixArtSigmaPAGPipeline(**pipe.components, pag_applied_layers="blocks.0")
    pag.set_progress_bar_config(disable=True)
    noise = _noise(8, 8)
    with torch.no_grad():
        theirs = pag(PROMPTS, negative_prompt="", num_inference_steps=3, latents=noise.clone(), output_type="latent",
                     clean_caption=False, use_resolution_binning=False, height=16, width=16, **call).images
    ours = text_to_image(pixart, PROMPTS, steps=3, latents=noise, return_latents=True, pag_layers="blocks.0", **call)
    assert relative_error(ours, theirs) < 1e-5  # 1.8e-6, 7.5e-7 measured
    with pytest.raises(DiffkitError, match="perturbed-attention guidance is not supported on a PixArtAlphaPipeline"):
        text_to_image(folders["alpha", 8, 2][2], PROMPTS, steps=1, pag_scale=2.0)
    with pytest.raises(DiffkitError, match="pag_adaptive_scale=0.01 is not supported on a PixArtSigmaPipeline"):
        text_to_image(pixart, PROMPTS, steps=1, pag_scale=2.0, pag_adaptive_scale=0.01)
