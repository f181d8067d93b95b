"""DeepFloyd IF folders (diffkit.interop.deepfloyd_if): stage I (``pixart.text_to_image`` on an IFPipeline folder) and
stage II (``super_resolve`` on an IFSuperResolutionPipeline folder) against diffusers' own pipelines on tiny random
folders (the T5 encoder and unigram tokenizer of tests/test_interop_sd3.py, UNet2DConditionModels of 2 levels with
the IF blocks, encoder_hid_proj, addition_embed_type "text" and a learned variance, IF's DDPMScheduler with dynamic
thresholding; nothing downloaded), the DDPM step noise drawn from the same per-sample generators; ``diffkit sample``
and ``diffkit upscale`` on them (the library's output byte for byte; flags that do not apply: one line)."""
import json
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.deepfloyd_if import (folder_sampler, is_deepfloyd_if_folder, load_deepfloyd_if,  # noqa: E402
                                          super_resolve)
from diffkit.interop.deepfloyd_if_edit import edit_images  # noqa: E402
from diffkit.interop.pixart import text_to_image  # noqa: E402
from diffkit.noise import generators_from_seed  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd3 import T5_WORDS, tiny_t5_tokenizer  # noqa: E402

PROMPTS = ["A photo of a Cat ", "hot dog"]  # upper case and a trailing space: lowered and stripped


def tiny_if_unet(stage_two: bool):
    """A UNet2DConditionModel with IF's blocks (ResnetDownsampleBlock2D, SimpleCrossAttn*), widths 16 / 32,
    ``encoder_hid_dim`` 32 (T5's d_model), ``addition_embed_type="text"``, 6 output channels (eps, v); stage II:
    6 input channels and the noise level as a timestep-embedded class label, 16 x 16 (stage I 8 x 8)."""
    more = dict(class_embed_type="timestep", mid_block_scale_factor=1.414, time_embedding_act_fn="gelu",
                time_embedding_dim=32) if stage_two else {}
    return diffusers.UNet2DConditionModel(
        sample_size=16 if stage_two else 8, layers_per_block=1, block_out_channels=[16, 32],
        down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"], in_channels=6 if stage_two else 3,
        out_channels=6, cross_attention_dim=32, encoder_hid_dim=32, attention_head_dim=8, addition_embed_type="text",
        addition_embed_type_num_heads=2, cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift",
        act_fn="gelu", norm_num_groups=8, **more)


def if_scheduler(**change):
    """IF's DDPMScheduler: cosine betas, learned-range variance, dynamic thresholding (ratio 0.95, cap 1.5)."""
    return diffusers.DDPMScheduler(**{"beta_schedule": "squaredcos_cap_v2", "thresholding": True,
                                      "dynamic_thresholding_ratio": 0.95, "sample_max_value": 1.5,
                                      "variance_type": "learned_range", **change})


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    """{1: (IFPipeline, folder, DeepFloydIF), 2: (IFSuperResolutionPipeline, folder, DeepFloydIF)}, each pipeline
    loaded from its folder (no safety checker, feature extractor or watermarker)."""
    root = tmp_path_factory.mktemp("deepfloyd_if")
    torch.manual_seed(0)
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=4 + len(T5_WORDS), d_model=32, d_kv=8, d_ff=40, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, dropout_rate=0.0)).eval()
    common = dict(tokenizer=tiny_t5_tokenizer(), text_encoder=t5, safety_checker=None, feature_extractor=None,
                  watermarker=None, requires_safety_checker=False)
    out = {}
    for stage, cls, extra in ((1, diffusers.IFPipeline, {}), (2, diffusers.IFSuperResolutionPipeline, {
            "image_noising_scheduler": diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2")})):
        path = root / f"if{stage}"
        cls(unet=tiny_if_unet(stage == 2), scheduler=if_scheduler(), **extra, **common).save_pretrained(path)
        pipe = cls.from_pretrained(path, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        out[stage] = (pipe, path, load_deepfloyd_if(path, progress=False))
    return out


def stage_one(folders, steps=3, **call):
    """(diffkit's x_0, IFPipeline's output_type="pt") with generators seed 7 + i, clean_caption=False."""
    pipe, _, model = folders[1]
    negative = call.pop("negative_prompt", None)
    with torch.no_grad():
        theirs = pipe(PROMPTS, num_inference_steps=steps, output_type="pt", clean_caption=False,
                      generator=generators_from_seed(7, 2), **call,
                      negative_prompt=None if negative is None else [negative] * 2).images
    ours = text_to_image(model, PROMPTS, steps=steps, seed=7, return_latents=True, negative_prompt=negative, **call)
    return ours, theirs


@pytest.mark.parametrize("call", [dict(guidance_scale=4.0, negative_prompt="ugly blurry"), dict(guidance_scale=1.0)])
def test_stage_one_matches_ifpipeline(folders, call):
    """x_0 equals IFPipeline's (3 DDPM steps with learned variance, dynamic thresholding and their noise; CFG with
    a negative prompt; s = 1: its unguided loop)."""
    _, path, model = folders[1]
    assert is_deepfloyd_if_folder(path) and model.folder_sampler() == ("ddpm", {
        "variance_type": "learned_range", "thresholding": True, "sample_max_value": 1.5,
        "dynamic_thresholding_ratio": 0.95})
    ours, theirs = stage_one(folders, **call)
    assert theirs.abs().max() > 0.5
    assert relative_error(ours, theirs) < 1e-5  # measured 3.1e-6 (CFG), 5.1e-7 (s = 1)


def test_stage_two_matches_ifsuperresolutionpipeline(folders):
    """``super_resolve`` equals IFSuperResolutionPipeline (the low-res images resized bilinearly to 16 x 16, noised
    to level 100 by the image_noising_scheduler after x_T's draw, concatenated, the level as class label; CFG)."""
    pipe, _, model = folders[2]
    low = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        theirs = pipe(PROMPTS, image=low, num_inference_steps=3, guidance_scale=3.0, noise_level=100,
                      negative_prompt=["ugly"] * 2, output_type="pt", clean_caption=False,
                      generator=generators_from_seed(3, 2)).images
    ours = super_resolve(model, low, PROMPTS, guidance_scale=3.0, noise_level=100, negative_prompt="ugly", steps=3,
                         seed=3, return_latents=True)
    assert theirs.shape == (2, 3, 16, 16) and theirs.abs().max() > 0.5
    assert relative_error(ours, theirs) < 1e-5  # measured 5.5e-6 (2.8e-5 with the float64 cosine schedule)
    other = super_resolve(model, low, PROMPTS, guidance_scale=3.0, noise_level=300, negative_prompt="ugly", steps=3,
                          seed=3, return_latents=True)
    assert relative_error(other, theirs) > 1e-3  # the level reaches the UNet and the noising


def test_float64_cosine_schedule_is_further_from_the_pipeline(folders):
    """Why the folder's float32 alphas_cumprod (``pipeline_schedule``): with diffkit's float64 cosine the last noisy
    step's learned-range variance (log of 1 - abar_0, about 4e-5) moves the images by about 4e-5 relative."""
    import dataclasses
    from diffkit.interop.schedulers import schedule_from_diffusers
    _, _, model = folders[1]
    f64 = dataclasses.replace(model, schedule=schedule_from_diffusers(model.scheduler_config)[0], _denoiser=None)
    ours, theirs = stage_one(folders, guidance_scale=4.0)
    with torch.no_grad():
        far = text_to_image(f64, PROMPTS, steps=3, seed=7, return_latents=True, guidance_scale=4.0)
    assert relative_error(far, theirs) > 3 * relative_error(ours, theirs)  # measured 3.4e-5 against 2.1e-6


def test_folder_refusals(folders, tmp_path):
    """One line each: another scheduler variance, a UNet without the learned variance, max_sequence_length, a
    negative prompt without guidance, the other stage's function."""
    _, path, model = folders[1]
    with pytest.raises(DiffkitError, match="allowed: a DDPMScheduler with variance_type 'learned_range'"):
        folder_sampler({"_class_name": "DDPMScheduler", "variance_type": "fixed_small"})
    copy = tmp_path / "bad"
    shutil.copytree(path, copy)
    config = json.loads((copy / "unet" / "config.json").read_text())
    (copy / "unet" / "config.json").write_text(json.dumps({**config, "out_channels": 3}))
    with pytest.raises(DiffkitError, match=r"in_channels, out_channels = 3, 3; allowed: 3, 6"):
        load_deepfloyd_if(copy, progress=False)
    with pytest.raises(DiffkitError, match="max_sequence_length=120 is not allowed on a DeepFloyd IF folder"):
        model.encode_prompts(PROMPTS, 120)
    with pytest.raises(DiffkitError, match="negative_prompt needs guidance above diffusers' s = 1"):
        model.prompt_guidance(PROMPTS, "ugly", 1.0)
    with pytest.raises(DiffkitError, match="super_resolve needs an IFSuperResolutionPipeline folder"):
        super_resolve(model, torch.zeros(1, 3, 8, 8), "hot")
    with pytest.raises(DiffkitError, match="is an IFSuperResolutionPipeline folder .DeepFloyd IF stage II.; use "
                                           "diffkit upscale"):
        load_deepfloyd_if(folders[2][1], progress=False, kind="IFPipeline")


def test_cli_sample_and_upscale(folders, tmp_path, capsys):
    """``diffkit sample`` on the stage-I folder writes the library's images (the pipeline's loop by default), and
    ``diffkit upscale`` on the stage-II folder writes super_resolve's; flags that do not apply: one line."""
    from diffkit.images import save_images
    from diffkit.commands.edit import read_pngs
    _, path1, model1 = folders[1]
    _, path2, model2 = folders[2]
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path1), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "2", "--steps", "2", "--seed", "5", "--negative-prompt", "ugly", "--guidance-scale", "3",
                 "--guidance-convention", "diffusers", "--out", str(out), "--individual", str(tmp_path / "one"),
                 "--no-progress"]) == 0
    assert "ddpm on the scheduler's timesteps, IFPipeline folder" in capsys.readouterr().out
    expected = text_to_image(model1, PROMPTS, steps=2, seed=5, guidance_scale=3.0, negative_prompt="ugly",
                             output_range="-1,1")
    save_images(expected, tmp_path / "lib")
    for i in range(2):
        name = f"sample_{i:05d}.png"
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "lib" / name).read_bytes(), name
    low = tmp_path / "low"
    save_images(expected, low)
    assert main(["upscale", "--checkpoint", str(path2), "--images", str(low), "--prompt", "hot dog", "--steps", "2",
                 "--noise-level", "50", "--seed", "1", "--out", str(tmp_path / "up"), "--no-progress"]) == 0
    assert "noise level 50, the safety checker and the watermarker are not run" in capsys.readouterr().out
    images, _ = read_pngs(low, "RGB")
    mine = super_resolve(model2, images, "hot dog", noise_level=50, steps=2, seed=1, output_range="-1,1")
    save_images(mine, tmp_path / "up_lib", prefix="upscaled")
    for i in range(2):
        name = f"upscaled_{i:05d}.png"
        assert (tmp_path / "up" / name).read_bytes() == (tmp_path / "up_lib" / name).read_bytes(), name
    for argv, expected in (
            (["sample", "--checkpoint", str(path1), "--prompt", "hot", "--lora", str(low)], "--lora does not apply "
             "to a DeepFloyd IF folder"),
            (["sample", "--checkpoint", str(path2), "--prompt", "hot"], "use diffkit upscale"),
            (["sample", "--checkpoint", str(path1), "--prompt", "hot", "--max-sequence-length", "100",
              "--no-progress"], "max_sequence_length=100 is not allowed on a DeepFloyd IF folder"),
            (["sample", "--checkpoint", str(path1), "--prompt", "hot", "--thresholding", "dynamic"],
             "--thresholding does not apply to a DeepFloyd IF folder"),
            (["upscale", "--checkpoint", str(path1), "--images", str(low), "--prompt", "hot"], "is an IFPipeline "
             "folder (DeepFloyd IF stage I); use diffkit sample"),
            (["upscale", "--checkpoint", str(path2), "--images", str(low)], "give --prompt TEXT"),
            (["upscale", "--checkpoint", str(path2), "--images", str(low), "--prompt", "hot", "--noise-level",
              "1000"], "--noise-level=1000 is not allowed; allowed: an integer in 0..999"),
            (["upscale", "--checkpoint", str(path2), "--images", str(low), "--prompt", "hot", "--lora",
              str(low / "sample_00000.png")], "--lora does not apply to a DeepFloyd IF folder"),
            (["edit", "--checkpoint", str(path1), "--images", str(low), "--prompt", "hot", "--sampler", "ddim",
              "--out", str(tmp_path / "never")], "--sampler does not apply to a DeepFloyd IF folder")):
        capsys.readouterr()
        code = main([*argv, "--out", str(tmp_path / "never.png")] if argv[0] == "sample" else
                    [*argv, "--out", str(tmp_path / "never")] if "--out" not in argv else argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expected in err[0], (argv, err)
    assert not (tmp_path / "never.png").exists() and not (tmp_path / "never").exists()


def edit_pipeline(folders, stage: int, cls):
    """diffusers' editing pipeline ``cls`` on the stage's folder components."""
    pipe = cls(**folders[stage][0].components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def edit_inputs(size: int, seed: int) -> tuple:
    """(two images in [-1, 1], one mask of 0 / 1 with a left half kept) of side ``size``."""
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    mask = torch.zeros(1, 1, size, size)
    mask[..., size // 2:] = 1.0
    return images, mask


@pytest.mark.parametrize("inpaint", [False, True])
def test_stage_one_edits_match_if_img2img_and_inpainting(folders, inpaint):
    """``edit_images`` on the stage-I folder equals IFImg2ImgPipeline / IFInpaintingPipeline (3 of 4 DDPM steps
    with learned variance and dynamic thresholding, CFG with a negative prompt; inpainting: the kept half stays the
    clean image, the output's kept half is it)."""
    _, _, model = folders[1]
    images, mask = edit_inputs(8, 11)
    cls = diffusers.IFInpaintingPipeline if inpaint else diffusers.IFImg2ImgPipeline
    extra = {"mask_image": mask.clone()} if inpaint else {}
    with torch.no_grad():
        theirs = edit_pipeline(folders, 1, cls)(PROMPTS, image=images, strength=0.75, num_inference_steps=4,
                                                guidance_scale=3.0, negative_prompt=["ugly"] * 2, output_type="pt",
                                                clean_caption=False, generator=generators_from_seed(5, 2),
                                                **extra).images
    ours = edit_images(model, images, PROMPTS, mask=mask if inpaint else None, strength=0.75, steps=4,
                       guidance_scale=3.0, negative_prompt="ugly", seed=5, return_latents=True)
    assert theirs.abs().max() > 0.5
    assert relative_error(ours, theirs) < 1e-5  # measured 1.2e-6 (img2img), 1.7e-6 (inpainting)
    if inpaint:
        assert torch.equal(ours[..., :4], images[..., :4])


@pytest.mark.parametrize("inpaint", [False, True])
def test_stage_two_edits_match_if_superresolution_edits(folders, inpaint):
    """``edit_images`` on the stage-II folder equals IFImg2ImgSuperResolutionPipeline /
    IFInpaintingSuperResolutionPipeline: the 16 x 16 originals noised to the strength's timestep, the 8 x 8 stage-I
    images resized, noised to level 100 (drawn after) and concatenated; 3 of 4 steps, CFG."""
    _, _, model = folders[2]
    images, mask = edit_inputs(16, 12)
    low = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(13)) * 2 - 1
    cls = diffusers.IFInpaintingSuperResolutionPipeline if inpaint else diffusers.IFImg2ImgSuperResolutionPipeline
    extra = {"mask_image": mask.clone()} if inpaint else {}
    with torch.no_grad():
        theirs = edit_pipeline(folders, 2, cls)(image=low, original_image=images, prompt=PROMPTS, strength=0.75,
                                                num_inference_steps=4, guidance_scale=3.0, noise_level=100,
                                                negative_prompt=["ugly"] * 2, output_type="pt", clean_caption=False,
                                                generator=generators_from_seed(6, 2), **extra).images
    ours = edit_images(model, images, PROMPTS, low_res=low, mask=mask if inpaint else None, strength=0.75, steps=4,
                       guidance_scale=3.0, noise_level=100, negative_prompt="ugly", seed=6, return_latents=True)
    assert theirs.shape == (2, 3, 16, 16) and theirs.abs().max() > 0.5
    assert relative_error(ours, theirs) < 1e-5  # measured 3.8e-6 (img2img), 3.8e-6 (inpainting)


def test_cli_edit(folders, tmp_path, capsys):
    """``diffkit edit`` on the stage-I folder with ``--mask`` writes ``edit_images``' inpainting of the pipeline's
    preprocessed PNGs (12 x 8 resized to 16 x 8, as IFInpaintingPipeline given the PIL images, which it matches),
    on the stage-II folder with ``--control-image`` (the stage-I edits) its img2img; refusals in one line."""
    from PIL import Image
    from diffkit.commands._deepfloyd_if import pipeline_inputs
    from diffkit.commands._image_size import pil_image
    from diffkit.commands.edit import image_files, read_pngs
    from diffkit.images import save_images
    _, path1, model1 = folders[1]
    _, path2, model2 = folders[2]
    src, mask_png = tmp_path / "src", tmp_path / "mask.png"
    save_images(torch.rand(2, 3, 8, 12, generator=torch.Generator().manual_seed(4)) * 2 - 1, src)
    Image.fromarray((torch.arange(12) >= 5).to(torch.uint8).mul(255).expand(8, 12).numpy(), "L").save(mask_png)
    one = ["--prompt", "hot dog", "--strength", "0.75", "--steps", "4", "--guidance-scale", "3", "--seed", "2",
           "--guidance-convention", "diffusers", "--no-progress"]
    assert main(["edit", "--checkpoint", str(path1), "--images", str(src), "--mask", str(mask_png), *one,
                 "--out", str(tmp_path / "e1")]) == 0
    assert "as IFInpaintingPipeline, strength 0.75, guidance 3" in capsys.readouterr().out
    files = image_files(src)
    images, mask = pipeline_inputs(files, mask_png, 8)
    assert images.shape == (2, 3, 8, 16) and mask.shape == (1, 1, 8, 16) and set(mask.unique().tolist()) == {0, 1}
    mine = edit_images(model1, images, "hot dog", mask=mask, strength=0.75, steps=4, guidance_scale=3.0, seed=2,
                       return_latents=True)
    with torch.no_grad():
        theirs = edit_pipeline(folders, 1, diffusers.IFInpaintingPipeline)(
            ["hot dog"] * 2, image=[pil_image(f, "RGB") for f in files], mask_image=pil_image(mask_png, "L"),
            strength=0.75, num_inference_steps=4, guidance_scale=3.0, output_type="pt", clean_caption=False,
            generator=generators_from_seed(2, 2)).images
    assert relative_error(mine, theirs) < 1e-5  # measured 4.4e-6
    save_images(mine.clamp(-1, 1), tmp_path / "lib1", prefix="edit")
    for i in range(2):
        name = f"edit_{i:05d}.png"
        assert (tmp_path / "e1" / name).read_bytes() == (tmp_path / "lib1" / name).read_bytes(), name
    two = ["--images", str(src), "--control-image", str(tmp_path / "e1"), *one[:-3], "--no-progress"]
    assert main(["edit", "--checkpoint", str(path2), *two, "--out", str(tmp_path / "e2")]) == 0
    assert "as IFImg2ImgSuperResolutionPipeline, strength 0.75, guidance 4, noise level 250" in \
        capsys.readouterr().out  # --guidance-scale 3 read as the seed convention's w
    images2, _ = pipeline_inputs(files, None, 16)
    low, _ = read_pngs(tmp_path / "e1", "RGB")
    mine = edit_images(model2, images2, "hot dog", low_res=low, strength=0.75, steps=4, guidance_scale=4.0, seed=2,
                       output_range="-1,1")
    assert mine.shape == (2, 3, 16, 24)
    save_images(mine, tmp_path / "lib2", prefix="edit")
    for i in range(2):
        name = f"edit_{i:05d}.png"
        assert (tmp_path / "e2" / name).read_bytes() == (tmp_path / "lib2" / name).read_bytes(), name
    for argv, expected in (
            (["--checkpoint", str(path1), "--images", str(src), "--control-image", str(src), "--prompt", "hot"],
             "--control-image does not apply to a DeepFloyd IF folder"),
            (["--checkpoint", str(path2), "--images", str(src), "--prompt", "hot"], "give --control-image PNG|DIR"),
            (["--checkpoint", str(path2), "--images", str(src), "--prompt", "hot", "--control-image",
              str(tmp_path / "lib1" / "edit_00000.png"), "--control-image", str(src)], "give --control-image"),
            (["--checkpoint", str(path1), "--images", str(src), "--prompt", "hot", "--height", "16"],
             "--height does not apply to a DeepFloyd IF folder"),
            (["--checkpoint", str(path1), "--images", str(src), "--prompt", "hot", "--strength", "0.1", "--steps",
              "4"], "strength=0.1 keeps int(4 * 0.1) = 0 of 4 steps"),
            (["--checkpoint", str(path1), "--images", str(src), "--prompt", "a", "--prompt", "b", "--prompt", "c"],
             "--prompt is given 3 times for 2 images"),
            (["--checkpoint", str(path1), "--images", str(src), "--prompt", "a", "--negative-prompt", "b",
              "--guidance-scale", "0"], "--negative-prompt needs --guidance-scale above 1")):
        capsys.readouterr()
        code = main(["edit", *argv, "--out", str(tmp_path / "never")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expected in err[0], (argv, err)
    assert not (tmp_path / "never").exists()


def test_edit_images_refusals(folders):
    """One line each: low_res on a stage-I folder, none on a stage-II one, noise_level on stage I, a mask of another
    size, a strength that keeps no step."""
    _, _, model1 = folders[1]
    _, _, model2 = folders[2]
    images, mask = edit_inputs(8, 1)
    for model, call, expected in (
            (model1, dict(low_res=images), "low_res goes with a stage-II folder"),
            (model2, {}, "an IFSuperResolutionPipeline folder edits with low_res"),
            (model1, dict(noise_level=10), "noise_level goes with a stage-II folder"),
            (model1, dict(mask=mask[..., :4]), r"mask of shape \(1, 1, 8, 4\) is not allowed"),
            (model1, dict(strength=0.1, steps=4), r"strength=0.1 keeps int\(4 \* 0.1\) = 0 of 4 steps")):
        with pytest.raises(DiffkitError, match=expected):
            edit_images(model, images, "hot", **call)
