"""Qwen-Image 2.1 folders (diffkit.interop.qwen_image21): text_to_image against diffusers' own QwenImage21Pipeline on
a tiny random folder (tests/_qwen_image21_helpers.py; nothing downloaded), ``diffkit sample`` on it (the library's PNG
byte for byte) and the one-line refusals; LoRA files (the pipeline's QwenImageLoraLoaderMixin) against its
``load_lora_weights`` + ``fuse_lora``."""
import dataclasses
import re

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.nucleusmoe import is_nucleusmoe_folder  # noqa: E402
from diffkit.interop.qwen_image import is_qwen_image_folder  # noqa: E402
from diffkit.interop.qwen_image21 import (check_qwen_image21_folder, edit_image, flatten_latents,  # noqa: E402
                                          is_qwen_image21_folder, load_qwen_image21, on_white, text_to_image)

from _pixart_helpers import assert_sample_refusals  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402
from _qwen_image21_helpers import save_qwen_image21, tiny_qwen_image21_pipeline  # noqa: E402
from _sana_helpers import changed_copy  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]  # of unequal lengths: a padded batch, the mask passed
H, W = 32, 64  # pixels: latents 4 x 2 x 4 (f = 16), two image slots of 2 x 2 tokens


@pytest.fixture(scope="session")
def tiny_qwen21(tmp_path_factory):
    """(QwenImage21Pipeline.from_pretrained of the saved folder (its processor the built one's: transformers reads
    a Qwen3VLProcessor back only with torchvision), the folder, load_qwen_image21 of it)."""
    path = tmp_path_factory.mktemp("qwen_image21") / "qwen21"
    built = tiny_qwen_image21_pipeline()
    save_qwen_image21(built, path)
    return reloaded(path, diffusers.QwenImage21Pipeline, load_qwen_image21, processor=built.processor)


def _theirs(pipe, noise, steps=3, **call):
    b, c, h, w = noise.shape
    with torch.no_grad():
        out = pipe(PROMPTS, num_inference_steps=steps, latents=flatten_latents(noise), height=H, width=W,
                   **{"output_type": "latent", **call}).images
    return out.transpose(1, 2).reshape(b, c, h, w) if call.get("output_type", "latent") == "latent" else out


def test_qwen_image21_samples_as_the_pipeline(tiny_qwen21):
    """The templated prompts' states before the last norm, left-padded, system tokens dropped; unguided (default)
    and plain CFG against negative prompts; the unpacked length's mu; the folder's sample_sigmas; final latents and
    decoded (RGBA) images, per-sample seeds; another diffkit sampler on its own grid."""
    pipe, path, model = tiny_qwen21
    assert is_qwen_image21_folder(path) and not is_qwen_image_folder(path) and not is_nucleusmoe_folder(path)
    (ours, mask), (theirs, their_mask, slots) = model.encode_prompts(PROMPTS), pipe.encode_prompt(PROMPTS)
    assert model.system_tokens() == pipe._drop_idx and not bool(slots.any()) and not bool(mask.all())
    assert torch.equal(ours, theirs) and torch.equal(mask, their_mask)
    noise = torch.randn(2, 4, H // 16, W // 16, generator=torch.Generator().manual_seed(1))
    results = []
    for call in ({}, {"negative_prompt": ["ugly", " "], "true_cfg_scale": 2.5}):
        results.append(text_to_image(model, PROMPTS, steps=3, latents=noise, return_latents=True,
                                     guidance_scale=call.get("true_cfg_scale"),
                                     negative_prompt=call.get("negative_prompt")))
        error = relative_error(results[-1], _theirs(pipe, noise, **call))
        print("QwenImage21Pipeline latents", call, error)
        assert error < 1e-5  # measured: see docs/interop/qwen_image21.md
    assert relative_error(results[0], results[1]) > 1e-3 and relative_error(results[0], noise) > 0.1
    images = text_to_image(model, PROMPTS, steps=2, latents=noise, output_range="0,1")
    error = relative_error(images, _theirs(pipe, noise, steps=2, output_type="pt"))
    print("QwenImage21Pipeline images", error)
    assert images.shape == (2, 4, H, W) and error < 1e-5
    sigmas = (1.0, 0.7, 0.2)  # the folder's sample_sigmas (QwenImage21Pipeline then ignores num_inference_steps)
    pipe.register_to_config(sample_sigmas=list(sigmas))
    try:
        configured = text_to_image(dataclasses.replace(model, sample_sigmas=sigmas), PROMPTS, seed=5, height=H,
                                   width=W, return_latents=True)
        with torch.no_grad():
            theirs = pipe(PROMPTS, num_inference_steps=40, height=H, width=W, output_type="latent",
                          generator=[torch.Generator().manual_seed(5 + i) for i in range(2)]).images
    finally:
        pipe.register_to_config(sample_sigmas=None)
    error = relative_error(configured, theirs.transpose(1, 2).reshape(configured.shape))
    print("QwenImage21Pipeline sample_sigmas, seeded latents", error)
    assert error < 1e-5
    other = text_to_image(model, PROMPTS, sampler="dpm-solver++-2m", steps=3, height=H, width=W, seed=0,
                          negative_prompt="ugly", guidance_scale=3.0, return_latents=True)
    assert other.shape == (2, 4, 2, 4) and bool(other.isfinite().all())


def test_qwen_image21_sample_command_is_the_library_and_refusals(tiny_qwen21, tmp_path, capsys):
    """``diffkit sample`` writes the library's (RGBA) PNG byte for byte; folders diffkit does not drive (from the JSON
    alone), bad library arguments and flags the folder does not take: one line each, no file written."""
    from diffkit.images import save_grid
    _, path, model = tiny_qwen21
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--steps", "2", "--seed", "5", "--batch-size", "2", "--height", str(H), "--width",
                 str(W), "--negative-prompt", "ugly", "--guidance-scale", "3", "--guidance-convention", "diffusers",
                 "--out", str(out), "--no-progress"]) == 0
    images = text_to_image(model, PROMPTS, steps=2, seed=5, height=H, width=W, negative_prompt="ugly",
                           guidance_scale=3.0, output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert "Qwen-Image 2.1 folder" in capsys.readouterr().out
    for i, (file, change, expected) in enumerate([
            ("model_index.json", {"_class_name": "QwenImagePipeline"}, "is not a Qwen-Image 2.1 folder"),
            ("model_index.json", {"vae": ["diffusers", "AutoencoderKLQwenImage"]}, "AutoencoderKLQwenImage21"),
            ("model_index.json", {"sample_sigmas": [1.0, 0.0]}, "sample_sigmas=[1.0, 0.0]; allowed: null or"),
            ("transformer/config.json", {"patch_size": 2}, "patch_size=2; allowed: 1"),
            ("transformer/config.json", {"in_channels": 16}, "allowed: 4, 4 (the VAE's z_dim)"),
            ("transformer/config.json", {"context_in_dim": 64}, "context_in_dim=64 does not fit"),
            ("vae/config.json", {"scale_factor_spatial": 8}, "scale_factor_spatial=8; allowed: 16"),
            ("scheduler/scheduler_config.json", {"stochastic_sampling": True}, "allowed: stochastic_sampling=false")]):
        with pytest.raises(DiffkitError) as caught:
            check_qwen_image21_folder(changed_copy(path, tmp_path / str(i), file, change))
        assert expected in str(caught.value) and "\n" not in str(caught.value)
    (changed_copy(path, tmp_path / "chat", "model_index.json", {}) / "processor" / "chat_template.jinja").unlink()
    with pytest.raises(DiffkitError, match="processor has no chat template"):
        load_qwen_image21(tmp_path / "chat" / "odd", progress=False)
    for call, expected in [({"max_sequence_length": 64}, "max_sequence_length=64 is not allowed for a Qwen-Image 2.1"),
                           ({"negative_prompt": "x"}, "a negative prompt with guidance_scale=1"),
                           ({"guidance_scale": 3.0}, "without a negative prompt is not allowed: QwenImage21Pipeline"),
                           ({"height": 48}, "multiples of 32"), ({"ip_adapter": object()}, "IP-Adapter is not allowed"),
                           ({"controlnet": object()}, "a ControlNet is not allowed")]:
        with pytest.raises(DiffkitError, match=expected):
            text_to_image(model, "hot", steps=1, **{"height": H, "width": W, **call})
    assert_sample_refusals(main, path, tmp_path, capsys, [
        (["--max-sequence-length", "64"], "--max-sequence-length does not apply to a Qwen-Image 2.1 folder"),
        (["--clip-skip", "1"], "its prompt flags are --prompt and --negative-prompt (one text encoder)"),
        (["--prompt-2", "x"], "--prompt-2 does not apply to a Qwen-Image 2.1 folder"),
        (["--height", "48"], "--height 48 is not allowed; give a positive multiple of 32")])


def _conditions():
    """Two condition images: a 70 x 40 RGBA one with holes in its alpha (the text encoder sees it over white, the VAE
    all four channels) and a 50 x 50 RGB one; at area 64^2 they become 96 x 64 and 64 x 64 (6 and 4 image slots)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (40, 70, 4), dtype=np.uint8)
    rgba[..., 3] = rng.integers(0, 2, (40, 70)) * 255
    return [Image.fromarray(rgba, "RGBA"), Image.fromarray(rng.integers(0, 256, (50, 50, 3), dtype=np.uint8), "RGB")]


def test_qwen_image21_condition_images_as_the_pipeline(tiny_qwen21):
    """QwenImage21Pipeline(image=[RGBA, RGB]): the prompts' states seeing the images (vision slots, left padding)
    and the slots' positions; final latents unguided and with CFG, decoded images; the images change the result."""
    pipe, _, model = tiny_qwen21
    images = _conditions()
    resized = [images[0].resize((96, 64), resample=3), images[1].convert("RGBA").resize((64, 64), resample=3)]
    (ours, mask), (theirs, their_mask, slots) = (model.encode_prompts(PROMPTS, images=[on_white(i) for i in resized]),
                                                 pipe.encode_prompt(PROMPTS, image=resized))
    assert torch.equal(ours, theirs) and torch.equal(mask, their_mask)
    ours_slots = model.image_slots([on_white(i) for i in resized])
    assert int(ours_slots.sum()) == 10 and torch.equal(slots[0, :ours_slots.shape[0]], ours_slots)
    assert not bool(slots[:, ours_slots.shape[0]:].any())
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))  # the last image's 64 x 64
    results = []
    for call in ({}, {"negative_prompt": ["ugly", " "], "true_cfg_scale": 2.5}):
        with torch.no_grad():
            reference = pipe(PROMPTS, image=images, output_resolution=64, num_inference_steps=3, output_type="latent",
                             latents=flatten_latents(noise), **call).images.transpose(1, 2).reshape(noise.shape)
        results.append(edit_image(model, images, PROMPTS, area=64 * 64, steps=3, latents=noise, return_latents=True,
                                  guidance_scale=call.get("true_cfg_scale"),
                                  negative_prompt=call.get("negative_prompt")))
        error = relative_error(results[-1], reference)
        print("QwenImage21Pipeline(image=) latents", call, error)
        assert error < 1e-5  # measured: see docs/interop/qwen_image21.md
    plain = text_to_image(model, PROMPTS, steps=3, latents=noise, return_latents=True, height=64, width=64)
    assert relative_error(results[0], plain) > 1e-3 and relative_error(results[0], results[1]) > 1e-3
    with torch.no_grad():
        reference = pipe(PROMPTS, image=images, output_resolution=64, num_inference_steps=2, output_type="pt",
                         latents=flatten_latents(noise)).images
    decoded = edit_image(model, images, PROMPTS, area=64 * 64, steps=2, latents=noise, output_range="0,1")
    error = relative_error(decoded, reference)
    print("QwenImage21Pipeline(image=) images", error)
    assert decoded.shape == (2, 4, 64, 64) and error < 1e-5


def test_qwen_image21_edit_command_is_the_library_and_refusals(tiny_qwen21, tmp_path, capsys):
    """``diffkit edit --images RGBA.png --image-reference RGB.png`` writes the library's PNG byte for byte; what the
    folder's edits do not take (flags, library arguments, a folder without an image processor): one line each."""
    from diffkit.images import save_images
    from diffkit.interop.qwen_image21 import QwenImage21Net
    _, path, model = tiny_qwen21
    images = _conditions()
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i}.png")
    flags = ["edit", "--checkpoint", str(path), "--images", str(tmp_path / "0.png"), "--prompt", "hot dog",
             "--no-progress"]
    assert main(flags + ["--image-reference", str(tmp_path / "1.png"), "--max-area", "4096", "--steps", "2",
                         "--seed", "3", "--negative-prompt", "ugly", "--guidance-scale", "2",
                         "--guidance-convention", "diffusers", "--out", str(tmp_path / "out")]) == 0
    expected = edit_image(model, images, "hot dog", area=4096, steps=2, seed=3, negative_prompt="ugly",
                          guidance_scale=2.0, output_range="-1,1")
    save_images(expected, tmp_path / "expected", prefix="edit")
    assert (tmp_path / "out" / "edit_00000.png").read_bytes() == \
        (tmp_path / "expected" / "edit_00000.png").read_bytes()
    for extra, message in [(["--mask", str(tmp_path / "1.png")], "--mask does not apply to a Qwen-Image 2.1 folder"),
                           (["--strength", "0.5"], "--strength does not apply to a Qwen-Image 2.1 folder"),
                           (["--height", "64"], "--height does not apply to a Qwen-Image 2.1 folder"),
                           (["--max-sequence-length", "9"], "--max-sequence-length does not apply to a Qwen-Image"),
                           (["--image-reference", str(tmp_path)], "is a folder; a Qwen-Image 2.1 folder takes one")]:
        capsys.readouterr()
        assert main(flags + extra + ["--out", str(tmp_path / "never")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (extra, err)
    assert not (tmp_path / "never").exists()
    for call, message in [({"area": 100}, "area=100 is not allowed; give an integer of at least 1024"),
                          ({"images": []}, "needs at least one condition image"),
                          ({"images": torch.zeros(1, 2, 8, 8)}, r"give \(B, 3 or 4, H, W\)"),
                          ({"ip_adapter": object()}, "an IP-Adapter is not allowed"),
                          ({"images": [images[0].resize((200, 10))]}, "200x10 condition image at area=4096 gives")]:
        with pytest.raises(DiffkitError, match=message):
            edit_image(model, call.pop("images", images), "hot", steps=1, **{"area": 4096, **call})
    with pytest.raises(DiffkitError, match=r"needs both cond\['reference'\] and cond\['slots'\]"):
        QwenImage21Net(model.transformer)(torch.zeros(1, 4, 2, 2), 500.0, torch.zeros(1, 3, 32),
                                          reference=[torch.zeros(1, 4, 2, 2)])
    with pytest.raises(DiffkitError, match="processor/ has no preprocessor_config.json"):
        edit_image(dataclasses.replace(model, image_processor=None), images, "hot", area=4096, steps=1)
    import numpy as np
    from PIL import Image

    from diffkit.images import image_pixels
    wide = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))  # a 16-bit grey PNG read as RGBA: opaque
    assert image_pixels(wide, "RGBA").tolist() == [[[0.0, 0.0, 0.0, 255.0], [255.0, 255.0, 255.0, 255.0]]]


# every Linear of the transformer: time embedding, text projection, input, modulation, attention, gated MLP, output
Q21_LORA = dict(r=4, lora_alpha=8.0, target_modules=r".*(timestep_embedder\.linear_[12]|txt_in\.(in|out)_layer|img_in|"
                                                   r"modulation\.1|attn\.to_(q|k|v|out\.0)|img_mlp\.(proj|out|"
                                                   r"gate_layer)|norm_out\.linear|proj_out)$",
                rank_pattern={"to_k": 2}, alpha_pattern={"to_v": 3.0})
LORA_SCALE = 0.3  # at 0.5 the file changes z_0 by 1.05x its size: see docs/interop/qwen_image21.md
UNCONVERTED = ("txt_in_in_layer", "txt_in_out_layer", "modulation_1", "gate_layer")  # kohya names diffusers mangles


@pytest.fixture(scope="module")
def qwen21_lora(tiny_qwen21, tmp_path_factory):
    """(file, QwenImage21Pipeline after load_lora_weights + fuse_lora(lora_scale=0.3)) of a diffusers-format LoRA
    (QwenImage21Pipeline.save_lora_weights, rank / alpha patterns) on every Linear of the tiny folder's transformer."""
    from test_sd_lora import fused_transformer_lora
    pipe, path, _ = tiny_qwen21
    return fused_transformer_lora(diffusers.QwenImage21Pipeline, path, tmp_path_factory.mktemp("qwen21_lora"),
                                  Q21_LORA, scale=LORA_SCALE, loaded=pipe)


def test_qwen_image21_lora_is_load_lora_weights_and_fuse_lora(tiny_qwen21, qwen21_lora, tmp_path, capsys):
    """A diffusers-format file at 0.3: load_lora_weights + fuse_lora's weights and z_0 with CFG; ``diffkit sample
    --lora`` and ``diffkit edit --lora`` are the library byte for byte; a text-encoder key: one line."""
    from diffkit.images import save_images
    from test_sd_lora import check_transformer_lora
    _, path, model = tiny_qwen21
    lora, fused = qwen21_lora
    ours = load_qwen_image21(path, progress=False, lora=[(lora, LORA_SCALE)])
    worst = check_transformer_lora(path, lora, LORA_SCALE, ours, model, fused, text_to_image, tmp_path, capsys,
                                   "text_encoder.model.language_model.layers.0.self_attn.q_proj.lora_A.weight",
                                   "a Qwen-Image 2.1 folder (QwenImageLoraLoaderMixin adapts the transformer only",
                                   size=32)
    noise = torch.randn(2, 4, H // 16, W // 16, generator=torch.Generator().manual_seed(1))
    call = {"negative_prompt": ["ugly", " "], "true_cfg_scale": 2.5}
    z0 = text_to_image(ours, PROMPTS, steps=3, latents=noise, return_latents=True, guidance_scale=2.5,
                       negative_prompt=call["negative_prompt"])
    error = relative_error(z0, _theirs(fused, noise, **call))
    print("QwenImage21Pipeline LoRA weights", worst, "latents", error)
    assert worst < 1e-6 and error < 1e-5  # measured: see docs/interop/qwen_image21.md
    assert relative_error(z0, text_to_image(model, PROMPTS, steps=3, latents=noise, return_latents=True,
                                            guidance_scale=2.5, negative_prompt=call["negative_prompt"])) > 1e-3
    image = _conditions()[0]
    image.save(tmp_path / "0.png")
    assert main(["edit", "--checkpoint", str(path), "--images", str(tmp_path / "0.png"), "--prompt", "hot dog",
                 "--max-area", "4096", "--steps", "1", "--lora", f"{lora}:{LORA_SCALE}", "--out",
                 str(tmp_path / "out"), "--no-progress"]) == 0
    save_images(edit_image(ours, [image], "hot dog", area=4096, steps=1, seed=0, output_range="-1,1"),
                tmp_path / "expected", prefix="edit")
    assert (tmp_path / "out" / "edit_00000.png").read_bytes() == \
        (tmp_path / "expected" / "edit_00000.png").read_bytes()


@pytest.mark.filterwarnings("ignore:While injecting the PEFT adapters")  # the kohya file's metadata: its fewer modules
def test_qwen_image21_converted_lora_files_and_refusals(tiny_qwen21, qwen21_lora, tmp_path):
    """ComfyUI / musubi ``diffusion_model.`` (lora_down / lora_up, some .alpha) on every module and kohya ``lora_unet_``
    (with the diffusers file's metadata) on the modules diffusers' conversion re-dots right: the weights of
    load_lora_weights + fuse_lora; a kohya key it re-dots as no module or another one (it raises or drops it): one
    line naming the key."""
    import functools

    from safetensors import safe_open
    from safetensors.torch import save_file
    from diffkit.interop.qwen_image21 import PIPELINE
    from diffkit.interop.qwen_image_lora import read_qwen_image_loras, transformer_loras
    from test_qwen_image import _converted
    from test_sd_lora import converted_lora_difference
    pipe, _, model = tiny_qwen21
    read = functools.partial(read_qwen_image_loras, kind="Qwen-Image 2.1", pipeline=PIPELINE)
    with safe_open(qwen21_lora[0], "pt") as f:
        meta = f.metadata()
    kohya = _converted(qwen21_lora[0], "kohya")
    for kind, tensors, metadata in [("comfy", _converted(qwen21_lora[0], "comfy"), None),
                                    ("kohya", {k: v for k, v in kohya.items() if not any(n in k for n in UNCONVERTED)},
                                     meta)]:
        save_file(tensors, tmp_path / f"{kind}.safetensors", metadata=metadata)
        worst, changes = converted_lora_difference(pipe, model, tmp_path / f"{kind}.safetensors", read,
                                                   "Qwen-Image 2.1", scale=LORA_SCALE)
        print("QwenImage21Pipeline LoRA", kind, worst)
        assert worst < 1e-6 and sum(v > 1e-3 for v in changes.values()) == (22 if kind == "comfy" else 17)
    for name, dotted in [("txt_in_in_layer", "no module name, not txt_in.in_layer"),
                         ("modulation_1", "no module name, not modulation.1"),
                         ("transformer_blocks_1_img_mlp_gate_layer", "transformer_blocks.1.img_mlp.gate.layer, not "
                                                                     "transformer_blocks.1.img_mlp.gate_layer")]:
        key = f"lora_unet_{name}.lora_down.weight"
        save_file({k: v for k, v in kohya.items() if "to_q" in k or k.startswith(f"lora_unet_{name}.")},
                  tmp_path / "bad.safetensors")
        with pytest.raises(DiffkitError, match=re.escape(f"key {key!r} is not supported on a Qwen-Image 2.1 folder "
                                                         f"(diffusers 0.42.1's kohya conversion re-dots it as "
                                                         f"{dotted}")) as caught:
            transformer_loras(read([tmp_path / "bad.safetensors"]), model.transformer, "Qwen-Image 2.1")
        assert "\n" not in str(caught.value)
    save_file({"diffusion_model.img_in.lora_down.weight": torch.ones(2, 4),
               "diffusion_model.img_in.dora_scale": torch.ones(1, 32)}, tmp_path / "dora.safetensors")
    with pytest.raises(DiffkitError, match="key 'diffusion_model.img_in.dora_scale' is not supported on a Qwen-Image "
                                           "2.1 folder .*as QwenImage21Pipeline converts them"):
        read([tmp_path / "dora.safetensors"])
