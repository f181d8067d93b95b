"""SD3 folders in img2img and with LoRA files (diffkit.interop.sd3, .sd_lora): against diffusers'
StableDiffusion3Img2ImgPipeline and SD3LoraLoaderMixin.load_lora_weights + fuse_lora on the tiny folder of
test_interop_sd3 (its fixture, imported)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.interop.sd3 import image_to_image  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd3 import PROMPTS, tiny_sd3  # noqa: E402,F401 (the fixture)


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
    from test_sd_lora import TEXT_LORA, _add_lora
    _, folder, _ = tiny_sd3[True]
    root = tmp_path_factory.mktemp("sd3_lora")
    transformer = diffusers.SD3Transformer2DModel.from_pretrained(folder / "transformer", local_files_only=True)
    clip = type(tiny_sd3[True][0].text_encoder_2).from_pretrained(folder / "text_encoder_2", local_files_only=True)
    state, config = _add_lora(transformer, 1, **SD3_LORA)
    text_state, text_config = _add_lora(clip, 11, **TEXT_LORA)
    prefix = "" if hasattr(clip, "text_model") else "text_model."
    diffusers.StableDiffusion3Pipeline.save_lora_weights(
        root, weight_name="lora.safetensors", transformer_lora_layers=state, transformer_lora_adapter_metadata=config,
        text_encoder_2_lora_layers={prefix + k: v for k, v in text_state.items()},
        text_encoder_2_lora_adapter_metadata=text_config)
    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(root / "lora.safetensors"))
    pipe.fuse_lora(lora_scale=0.7, components=["transformer", "text_encoder_2"])
    pipe.unload_lora_weights()  # the fused weights stay, the adapters go
    return root / "lora.safetensors", pipe


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
