"""SD3 folders in img2img and with LoRA files (diffkit.interop.sd3, .sd_lora): against diffusers'
StableDiffusion3Img2ImgPipeline and SD3LoraLoaderMixin.load_lora_weights + fuse_lora on the tiny folder of
test_interop_sd3 (its fixture, imported)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.interop.sd3 import image_to_image  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
import test_interop_sd3  # noqa: E402

PROMPTS = test_interop_sd3.PROMPTS
tiny_sd3 = test_interop_sd3.tiny_sd3  # the folder fixture, shared (pytest finds it in this module's namespace)


def _images(seed=3):
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))  # [0, 1]


def _img2img(pipe):
    out = diffusers.StableDiffusion3Img2ImgPipeline(**pipe.components)
    out.set_progress_bar_config(disable=True)
    return out


@pytest.mark.parametrize("steps, strength", [(4, 0.6), (5, 0.5), (3, 1.0)])
def test_sd3_img2img_matches_the_pipeline(tiny_sd3, steps, strength):
    """Same z_0 and images as StableDiffusion3Img2ImgPipeline: the posterior sample and the noise from image i's
    generator seed + i, scale_noise at the first sigma of get_timesteps' cut (steps - int(steps - steps * strength)
    steps: 3 of 4 at 0.6, 3 of 5 at 0.5), FlowMatchEuler from there, guidance s = 4 against a negative prompt."""
    pipe, _, sd3 = tiny_sd3[True]
    images = _images()
    kw = {"negative_prompt": "ugly", "max_sequence_length": 12}
    with torch.no_grad():
        theirs = _img2img(pipe)(PROMPTS, image=images, strength=strength, num_inference_steps=steps,
                                guidance_scale=4.0, output_type="latent",
                                generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], **kw).images
    ours = image_to_image(sd3, images * 2 - 1, PROMPTS, strength, steps=steps, guidance_scale=4.0, seed=5,
                          return_latents=True, **kw)
    error = relative_error(ours, theirs)
    print("img2img", steps, strength, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)


SD3_LORA = dict(r=4, lora_alpha=8.0, target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "to_add_out",
                                                      "ff.net.2", "proj_out"], rank_pattern={"to_k": 2},
                alpha_pattern={"to_v": 3.0})


@pytest.fixture(scope="module")
def sd3_lora(tiny_sd3, tmp_path_factory):
    """(a diffusers-format SD3 LoRA file: transformer and text_encoder_2 adapters with rank / alpha patterns, written
    by StableDiffusion3Pipeline.save_lora_weights; the folder's pipeline after load_lora_weights + fuse_lora(0.7))."""
    pytest.importorskip("peft")
    from test_sd_lora import fused_transformer_lora
    _, folder, _ = tiny_sd3[True]
    return fused_transformer_lora(diffusers.StableDiffusion3Pipeline, folder, tmp_path_factory.mktemp("sd3_lora"),
                                  SD3_LORA, "text_encoder_2")


def test_sd3_lora_matches_load_lora_weights_and_fuse_lora(tiny_sd3, sd3_lora):
    """load_sd3(lora=[(file, 0.7)]): the transformer's and text_encoder_2's weights are the pipeline's after
    load_lora_weights + fuse_lora(lora_scale=0.7) (rank and alpha patterns from the file's metadata), and so are
    the sampled latents; scale 0 changes nothing, bit for bit."""
    from diffkit.interop.sd3 import load_sd3, text_to_image
    _, folder, sd3 = tiny_sd3[True]
    lora, pipe = sd3_lora
    merged = load_sd3(folder, progress=False, lora=[(lora, 0.7)])
    worst = 0.0
    for name in ("transformer", "text_encoder_2"):
        theirs = dict(getattr(pipe, name).state_dict())
        for key, value in getattr(merged, name).state_dict().items():
            worst = max(worst, float((value - theirs[key]).abs().max()))
    q = next(k for k in sd3.text_encoder_2.state_dict() if k.endswith("layers.0.self_attn.q_proj.weight"))
    changed = min(float((merged.text_encoder_2.state_dict()[q] - sd3.text_encoder_2.state_dict()[q]).abs().max()),
                  float((merged.transformer.transformer_blocks[0].attn.to_v.weight
                         - sd3.transformer.transformer_blocks[0].attn.to_v.weight).abs().max()))
    print("lora weights", worst, float(changed))
    assert worst < 1e-6 and changed > 1e-3
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        theirs = pipe(PROMPTS, num_inference_steps=3, guidance_scale=4.0, latents=latents.clone(), output_type="latent",
                      max_sequence_length=12).images
    ours = text_to_image(merged, PROMPTS, steps=3, guidance_scale=4.0, latents=latents, max_sequence_length=12,
                         return_latents=True)
    print("lora latents", float((ours - theirs).abs().max()), relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5
    assert relative_error(text_to_image(sd3, PROMPTS, steps=3, guidance_scale=4.0, latents=latents,
                                        max_sequence_length=12, return_latents=True), theirs) > 1e-3
    off = load_sd3(folder, progress=False, lora=[(lora, 0.0)])
    assert all(torch.equal(a, b) for a, b in zip(off.transformer.state_dict().values(),
                                                 sd3.transformer.state_dict().values()))


def test_edit_and_sample_commands_on_an_sd3_folder(tiny_sd3, sd3_lora, tmp_path, capsys):
    """`diffkit edit` on an SD3 folder writes image_to_image's images (byte for byte), which are the img2img
    pipeline's on the same PNGs and generators (within one PNG level), with --prompt-3, --negative-prompt and a LoRA,
    and with --mask (one prompt for both images);
    `diffkit sample` takes --prompt-2 (once per --prompt), --prompt-3, --clip-skip and --max-sequence-length as
    text_to_image."""
    import numpy as np
    from PIL import Image
    from diffkit.cli import main
    from diffkit.commands.edit import read_pngs
    from diffkit.images import save_grid, save_images
    from diffkit.interop.sd3 import load_sd3, text_to_image
    _, folder, _ = tiny_sd3[True]
    lora, pipe = sd3_lora
    (tmp_path / "in").mkdir()
    for i, image in enumerate(_images()):
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "in" / f"{i}.png")
    common = ["--guidance-convention", "diffusers", "--guidance-scale", "4", "--seed", "5", "--no-progress",
              "--max-sequence-length", "12", "--prompt-3", "a blurry photo", "--negative-prompt", "ugly"]
    assert main(["edit", "--checkpoint", str(folder), "--images", str(tmp_path / "in"), "--prompt", PROMPTS[0],
                 "--prompt", PROMPTS[1], "--steps", "4", "--lora", f"{lora}:0.7", "--out", str(tmp_path / "out")]
                + common) == 0
    images, _ = read_pngs(tmp_path / "in", "RGB")
    merged = load_sd3(folder, progress=False, lora=[(lora, 0.7)])
    ours = image_to_image(merged, images, PROMPTS, steps=4, guidance_scale=4.0, negative_prompt="ugly", seed=5,
                          max_sequence_length=12, prompt_3="a blurry photo", output_range="-1,1")
    save_images(ours, tmp_path / "expected", prefix="edit")
    for i in range(2):
        assert (tmp_path / "out" / f"edit_0000{i}.png").read_bytes() == \
            (tmp_path / "expected" / f"edit_0000{i}.png").read_bytes()
    with torch.no_grad():
        theirs = _img2img(pipe)(PROMPTS, prompt_3=["a blurry photo"] * 2, image=(images + 1) / 2, strength=0.6,
                                num_inference_steps=4, guidance_scale=4.0, negative_prompt="ugly",
                                max_sequence_length=12, output_type="np",
                                generator=[torch.Generator().manual_seed(5 + i) for i in range(2)]).images
    written = np.stack([np.asarray(Image.open(tmp_path / "out" / f"edit_0000{i}.png"), np.float64) for i in range(2)])
    assert np.abs(written - (theirs * 255).round()).max() <= 1
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 2:10] = 1
    Image.fromarray(np.uint8(mask[0, 0].numpy() * 255)).save(tmp_path / "mask.png")
    assert main(["edit", "--checkpoint", str(folder), "--images", str(tmp_path / "in"), "--prompt", PROMPTS[0],
                 "--mask", str(tmp_path / "mask.png"), "--steps", "3", "--strength", "0.9", "--out",
                 str(tmp_path / "masked")] + common) == 0
    _, _, sd3 = tiny_sd3[True]
    ours = image_to_image(sd3, images, PROMPTS[0], 0.9, mask=mask, steps=3, guidance_scale=4.0, negative_prompt="ugly",
                          seed=5, max_sequence_length=12, prompt_3="a blurry photo", output_range="-1,1")
    save_images(ours, tmp_path / "expected_masked", prefix="edit")
    for i in range(2):
        assert (tmp_path / "masked" / f"edit_0000{i}.png").read_bytes() == \
            (tmp_path / "expected_masked" / f"edit_0000{i}.png").read_bytes()
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--prompt-2",
                 "hot dog", "--prompt-2", "the cat", "--clip-skip", "1", "--num", "2", "--nrow", "1", "--steps", "3",
                 "--batch-size", "2", "--out", str(out)] + common) == 0
    expected = text_to_image(sd3, PROMPTS, steps=3, seed=5, guidance_scale=4.0, negative_prompt="ugly",
                             prompt_2=["hot dog", "the cat"], prompt_3="a blurry photo", clip_skip=1,
                             max_sequence_length=12, output_range="-1,1")
    save_grid(expected, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    capsys.readouterr()


def test_what_sd3_editing_does_not_take_is_refused_in_one_line(tiny_sd3, tmp_path, capsys):
    from diffkit.cli import main
    _, folder, _ = tiny_sd3[True]
    from safetensors.torch import save_file
    (tmp_path / "in").mkdir()
    save_file({"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": torch.zeros(2, 32),
               "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": torch.zeros(96, 2)}, tmp_path / "kohya.st")
    base = ["--checkpoint", str(folder), "--prompt", "a cat", "--no-progress"]
    for argv, match in (
            (["sample", "--lora", str(tmp_path / "kohya.st")],
             r"key 'lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight' is not supported on an SD3 folder"),
            (["edit", "--images", str(tmp_path / "in"), "--mask", str(tmp_path / "m.png"), "--paste-known"],
             "--paste-known does not apply to an SD3 folder"),
            (["edit", "--images", str(tmp_path / "in"), "--freeu", "1.1,1.2,0.9,0.2"],
             "--freeu does not apply to an SD3 folder"),
            (["edit", "--images", str(tmp_path / "in"), "--class", "3"], "--class does not apply to an SD3 folder"),
            (["sample", "--prompt-3", "a", "--prompt-3", "b"], "--prompt-3 is given 2 times for 1 --prompt")):
        assert main(argv + base + ["--out", str(tmp_path / "out" / "o.png")]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and __import__("re").search(match, err[0]), (argv, err)
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("steps, strength", [(4, 0.6), (3, 1.0)])
def test_sd3_inpainting_matches_the_pipeline(tiny_sd3, steps, strength):
    """image_to_image(mask=...) = StableDiffusion3InpaintPipeline with the 16-channel (here 4) transformer: the mask
    binarised and nearest-resized, the kept latents blended in at scale_noise(z, next sigma) after every step
    (replacement of x_0 puts them there), from pure noise at strength 1."""
    import dataclasses
    pipe, _, sd3 = tiny_sd3[True]
    torch.manual_seed(3)  # the pipeline takes 16 latent channels only: a 16-channel VAE and transformer
    vae = diffusers.AutoencoderKL(**{**pipe.vae.config, "latent_channels": 16}).eval()
    transformer = diffusers.SD3Transformer2DModel(**{**pipe.transformer.config, "in_channels": 16,
                                                     "out_channels": 16}).eval()
    sd3 = dataclasses.replace(sd3, transformer=transformer, vae=vae, _denoiser=None)
    inpaint = diffusers.StableDiffusion3InpaintPipeline(**{**pipe.components, "vae": vae, "transformer": transformer})
    ours, theirs = inpainting_pair(inpaint, sd3, steps, strength, "inpaint")
    assert ours.shape == theirs.shape


def inpainting_pair(inpaint, sd3, steps: int, strength: float, what: str) -> tuple:
    """(image_to_image's, StableDiffusion3InpaintPipeline ``inpaint``'s latents) of two random 16 x 16 images with a
    random mask, s = 4 against "ugly", image i from the generator 5 + i; asserted within 1e-5 relative."""
    inpaint.set_progress_bar_config(disable=True)
    images = _images()
    mask = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(4)) > 0.5).float()
    kw = {"negative_prompt": "ugly", "max_sequence_length": 12}
    with torch.no_grad():
        theirs = inpaint(PROMPTS, image=images, mask_image=mask, strength=strength, num_inference_steps=steps,
                         guidance_scale=4.0, output_type="latent", height=16, width=16,
                         generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], **kw).images
    ours = image_to_image(sd3, images * 2 - 1, PROMPTS, strength, mask=mask, steps=steps, guidance_scale=4.0, seed=5,
                          return_latents=True, **kw)
    error = relative_error(ours, theirs)
    print(what, steps, strength, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)
    return ours, theirs
