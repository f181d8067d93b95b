"""Stable Diffusion 2 depth-to-image folders (diffkit.interop.sd_depth, ``diffkit edit --checkpoint DEPTH_FOLDER
--images PNG --prompt TEXT [--control-image DEPTH.png]``) against diffusers' own StableDiffusionDepth2ImgPipeline on a
tiny random folder (a 5-channel UNet, a tiny random DPTForDepthEstimation and its DPTImageProcessor): the edited
latents with a given depth map and with the folder's estimator, the command's PNGs, and the refusals."""
import numpy as np
import pytest
import torch
from PIL import Image

from diffkit.cli import main
from diffkit.errors import DiffkitError

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from test_cli_errors import one_line_error  # noqa: E402
from test_interop_diffusers import relative_error, sd_ddim_scheduler, tiny_sd_components  # noqa: E402
from test_latent_editing import DDIM_GRID, PROMPTS, _generators, write_pngs  # noqa: E402

STEPS, GUIDANCE, STRENGTH = 4, 5.0, 0.75


def tiny_dpt():
    """A tiny random DPTForDepthEstimation (ViT 16 wide, 4 layers, 32 x 32 input) with an initialisation wide enough
    that its depth varies (the default 0.02 gives ~1e-9 everywhere) and its DPTImageProcessor (32 x 32)."""
    torch.manual_seed(2)
    config = transformers.DPTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=4,
                                    num_attention_heads=2, intermediate_size=24, backbone_out_indices=[0, 1, 2, 3],
                                    neck_hidden_sizes=[8, 8, 8, 8], fusion_hidden_size=8,
                                    reassemble_factors=[4, 2, 1, 0.5], initializer_range=0.2)
    return (transformers.DPTForDepthEstimation(config).eval(),
            transformers.DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False))


@pytest.fixture(scope="module")
def depth_folder(tmp_path_factory):
    """(the folder's StableDiffusionDepth2ImgPipeline.from_pretrained, folder, two 16 x 16 PNGs, their two 12 x 20
    depth PNGs (8-bit grey))."""
    root = tmp_path_factory.mktemp("sd_depth")
    unet, vae, text_encoder, tokenizer = tiny_sd_components(root, in_channels=5)
    estimator, processor = tiny_dpt()
    diffusers.StableDiffusionDepth2ImgPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=sd_ddim_scheduler(),
        depth_estimator=estimator, feature_extractor=processor).save_pretrained(root / "depth")
    pipe = diffusers.StableDiffusionDepth2ImgPipeline.from_pretrained(root / "depth", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pngs = write_pngs(root / "in", 2, 16, "RGB")
    (root / "maps").mkdir()
    rng = np.random.RandomState(4)
    for i in range(2):
        Image.fromarray(rng.randint(0, 256, (12, 20)).astype(np.uint8), "L").save(root / "maps" / f"d_{i}.png")
    return pipe, root / "depth", pngs, root / "maps"


def _images(pngs):
    return [Image.open(pngs / f"in_{i}.png").convert("RGB") for i in range(2)]


def _maps(maps):
    return torch.stack([torch.from_numpy(np.array(Image.open(maps / f"d_{i}.png"))).float() for i in range(2)])


def _theirs(pipe, pngs, depth_map=None, output_type="latent"):
    with torch.no_grad():
        return pipe(PROMPTS, image=_images(pngs), depth_map=depth_map, strength=STRENGTH, num_inference_steps=STEPS,
                    guidance_scale=GUIDANCE, negative_prompt=["ph"] * 2, eta=0.0, output_type=output_type,
                    generator=_generators()).images


def _ours(sd, pngs, depth, sampler="ddim", grid=DDIM_GRID):
    from diffkit.latent_editing import latent_img2img
    from diffkit.commands.edit import read_pngs
    images, _ = read_pngs(pngs, "RGB")
    guided = sd.guided(GUIDANCE, sd.encode_prompts(["ph"]), "diffusers")
    return latent_img2img(guided, sd, images, STRENGTH, sampler, STEPS, posterior="sample", seed=10,
                          cond={**sd.cond(sd.encode_prompts(PROMPTS)), "depth_map": depth}, progress=False,
                          return_latents=True, **grid)


def test_given_and_estimated_depth_match_the_pipeline(depth_folder):
    """z_0 of latent_img2img with cond['depth_map'] = depth_condition(given maps) / of the folder's DPT on the images:
    StableDiffusionDepth2ImgPipeline(depth_map=...) / (depth_map=None) (strength 0.75, DDIM, a negative prompt)."""
    from diffkit.interop.sd_depth import depth_condition, estimate_depth, load_depth_estimator
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    pipe, folder, pngs, maps = depth_folder
    sd = load_stable_diffusion(folder, progress=False, depth=True)
    given = depth_condition(_maps(maps), 16, 16, sd.vae_scale_factor)
    assert given.shape == (2, 1, 8, 8) and float(given.amin()) == -1 and float(given.amax()) == 1
    theirs = _theirs(pipe, pngs, _maps(maps))
    assert relative_error(_ours(sd, pngs, given), theirs) < 1e-5
    estimated = estimate_depth(load_depth_estimator(folder, "cpu", progress=False), _images(pngs), "cpu")
    with torch.no_grad():
        assert torch.equal(estimated, pipe.depth_estimator(pipe.feature_extractor(
            images=_images(pngs), return_tensors="pt").pixel_values).predicted_depth)
    ours = _ours(sd, pngs, depth_condition(estimated, 16, 16, sd.vae_scale_factor))
    theirs_estimated = _theirs(pipe, pngs)
    assert relative_error(ours, theirs_estimated) < 1e-5
    assert relative_error(theirs, theirs_estimated) > 1e-3  # the depth matters


def test_euler_scales_the_latents_not_the_depth_as_the_pipeline(depth_folder):
    """EulerDiscreteScheduler scales the latents (scale_model_input) and concatenates the depth unscaled; diffkit's
    euler calls the network with the VP latent and concatenates inside it: the same result."""
    from diffkit.interop.sd_depth import depth_condition
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    pipe, folder, pngs, maps = depth_folder
    euler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="leading")
    pipe = diffusers.StableDiffusionDepth2ImgPipeline(**{**pipe.components, "scheduler": euler})
    pipe.set_progress_bar_config(disable=True)
    sd = load_stable_diffusion(folder, progress=False, depth=True)
    ours = _ours(sd, pngs, depth_condition(_maps(maps), 16, 16, 2), "euler",
                 dict(spacing="leading", final="zero", steps_offset=1))
    assert relative_error(ours, _theirs(pipe, pngs, _maps(maps))) < 1e-5


def test_edit_command_writes_the_pipelines_pngs(depth_folder, tmp_path, capsys):
    """`diffkit edit --checkpoint DEPTH --images DIR --prompt ... [--control-image DIR]`: the pipeline's PNGs (to the
    8-bit level), with the depth maps given (one per image) and estimated by the folder's DPT, one image per batch (the
    pipeline's DDIM with
    steps_offset 0 and alpha 1 at the end: --spacing leading --final zero, as tests/test_sd_textual_inversion.py)."""
    pipe, folder, pngs, maps = depth_folder
    scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, steps_offset=0, set_alpha_to_one=True)
    pipe = diffusers.StableDiffusionDepth2ImgPipeline(**{**pipe.components, "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    common = ["edit", "--no-progress", "--device", "cpu", "--checkpoint", str(folder), "--images", str(pngs),
              "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--negative-prompt", "ph", "--strength", str(STRENGTH),
              "--steps", str(STEPS), "--spacing", "leading", "--final", "zero", "--guidance-scale",
              str(GUIDANCE), "--guidance-convention", "diffusers", "--seed", "10"]
    for name, extra, depth_map in (("given", ["--control-image", str(maps)], _maps(maps)),
                                   ("estimated", ["--batch-size", "1"], None)):  # image i's depth in batch i
        assert main(common + extra + ["--out", str(tmp_path / name)]) == 0
        capsys.readouterr()
        ours = np.stack([np.asarray(Image.open(tmp_path / name / f"edit_{i:05d}.png")) for i in range(2)])
        theirs = _theirs(pipe, pngs, depth_map, output_type="np")
        diff = np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max()
        assert diff <= 1, (name, diff)


def test_refusals_are_one_line_before_any_output(depth_folder, tmp_path, capsys):
    """Sampling from text, --mask, a ControlNet, --height, two --control-image, a colour depth map: one line each."""
    _, folder, pngs, maps = depth_folder
    out = tmp_path / "never"
    line = one_line_error(capsys, "sample", "--checkpoint", folder, "--prompt", "a", "--num", "1", "--out",
                          out / "s.png")
    assert "has a depth-to-image UNet (in_channels=5: latents + depth)" in line and "use diffkit edit" in line, line
    Image.fromarray(np.zeros((16, 16), np.uint8), "L").save(tmp_path / "mask.png")
    Image.fromarray(np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3), "RGB").save(tmp_path / "colour.png")
    base = ["edit", "--checkpoint", folder, "--images", pngs, "--prompt", "a", "--out", out, "--no-progress"]
    for extra, expected in [
        (["--mask", tmp_path / "mask.png"], "--mask does not apply to a depth-to-image folder"),
        (["--height", "16"], "--height does not apply to a depth-to-image folder"),
        (["--control-image", maps / "d_0.png", "--control-image", maps / "d_1.png"],
         "2 --control-image for a depth-to-image folder; give one"),
        (["--control-image", tmp_path / "colour.png"], "is a colour image; a depth map is grey"),
    ]:
        line = one_line_error(capsys, *map(str, base + extra))
        assert expected in line, line
    assert not out.exists()
    from diffkit.interop.sd_depth import depth_condition
    with pytest.raises(DiffkitError, match="a depth map is constant"):
        depth_condition(torch.ones(1, 8, 8), 16, 16, 2)
