"""Z-Image folders (diffkit.interop.z_image): text_to_image / image_to_image against diffusers' own ZImagePipeline /
ZImageImg2ImgPipeline / ZImageInpaintPipeline on a tiny random folder (a byte-level BPE Qwen2Tokenizer with a Qwen3
chat template and a 2-layer Qwen3Model built here, a 1-layer ZImageTransformer2DModel, the FLUX test VAE; nothing
downloaded), and ``diffkit sample`` / ``diffkit edit`` on it (the library's PNGs byte for byte; what does not apply
refused in one line)."""
import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.z_image import (check_z_image_folder, image_to_image, is_z_image_folder, load_z_image,  # noqa
                                     text_to_image)

from _pixart_helpers import assert_sample_refusals  # noqa: E402
from _sana_helpers import changed_copy  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_flux import tiny_flux_vae  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]
NEGATIVES = ["ugly", "blurry dog"]
LENGTH = 48  # Qwen tokens (the pipelines' 512 by default)
SIZE = 16  # images 16 x 16: latents 16 x 8 x 8 (VAE factor 2), 16 patches of 2 x 2
# Qwen3's template of one user message with the generation prompt (enable_thinking=True: no empty <think> block)
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and not "
                 "enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


def tiny_qwen_tokenizer(words: str = ""):
    """transformers' Qwen2Tokenizer (byte-level BPE: the 256 byte symbols, merges spelling a few words and ``words``)
    with Qwen's <|endoftext|> / <|im_start|> / <|im_end|> and :data:`CHAT_TEMPLATE`."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    merges = []
    for word in ("a photo of cat hot dog ugly blurry user assistant " + words).split():
        for spelled in (word, "\u0120" + word):
            for i in range(2, len(spelled) + 1):
                if spelled[:i] not in vocab:
                    merges.append((spelled[:i - 1], spelled[i - 1]))
                    vocab[spelled[:i]] = len(vocab)
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        vocab[special] = len(vocab)
    tokenizer = transformers.Qwen2Tokenizer(vocab=vocab, merges=merges,
                                            additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_z_image_pipeline(scheduler):
    """A ZImagePipeline of random weights: Qwen3 of 2 layers (hidden 32; the pipeline reads the second-to-last
    states), a transformer of 1 layer and 1 refiner layer each (2 heads of 16, patch 2), the FLUX test VAE (f = 2)."""
    tokenizer = tiny_qwen_tokenizer()
    torch.manual_seed(0)
    qwen = transformers.Qwen3Model(transformers.Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=512)).eval()
    transformer = diffusers.ZImageTransformer2DModel(
        in_channels=16, dim=32, n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=32,
        axes_dims=[4, 6, 6], axes_lens=[1024, 32, 32])
    return diffusers.ZImagePipeline(scheduler=scheduler, vae=tiny_flux_vae(), text_encoder=qwen, tokenizer=tokenizer,
                                    transformer=transformer)


@pytest.fixture(scope="session")
def tiny_z_image(tmp_path_factory):
    """(ZImagePipeline.from_pretrained of the saved folder, the folder, load_z_image of it): Z-Image-Turbo's
    fixed-shift scheduler (shift 3), built on first use."""
    path = tmp_path_factory.mktemp("z_image") / "z_image"
    tiny_z_image_pipeline(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)).save_pretrained(path)
    return reloaded(path, diffusers.ZImagePipeline, load_z_image)


def _call(pipe, **call):
    """The pipeline's latents; fresh prompt lists (its _encode_prompt writes the chat template into the list)."""
    call = {key: list(value) if isinstance(value, list) else value for key, value in call.items()}
    with torch.no_grad():
        return pipe(list(PROMPTS), output_type="latent", max_sequence_length=LENGTH, **call).images


def _both(pipe, model, steps=4, **call):
    """(diffkit's z_0, the pipeline's) from the same latents (2, 16, 8, 8)."""
    noise = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    theirs = _call(pipe, num_inference_steps=steps, latents=noise.clone(), height=SIZE, width=SIZE, **call)
    ours = text_to_image(model, PROMPTS, steps=steps, latents=noise, return_latents=True, height=SIZE, width=SIZE,
                         max_sequence_length=LENGTH, **call)
    return ours, theirs


@pytest.mark.parametrize("call", [
    {"negative_prompt": NEGATIVES},  # the default W = 5
    {"guidance_scale": 3.0, "cfg_normalization": True, "cfg_truncation": 0.2},  # steps 0, 1 guided (t/1000 0, 0.1)
    {"guidance_scale": 2.0, "cfg_normalization": 1.05, "cfg_truncation": 0.8},
    {"guidance_scale": 0.0}])  # no CFG: the conditional call alone
def test_z_image_samples_as_the_pipeline(tiny_z_image, call):
    """Same z_0 as ZImagePipeline from the same latents: flow Euler on its shifted sigmas, the transformer at
    (1000 - t) / 1000 with the prompts' variable-length Qwen3 states, its CFG v_c + W (v_c - v_u), the norm cap and
    the truncation."""
    pipe, _, model = tiny_z_image
    ours, theirs = _both(pipe, model, **call)
    print("z-image", call, float((ours - theirs).abs().max()), relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)  # measured: see docs/interop.md


def test_z_image_encodes_prompts_and_shifts_as_the_pipeline(tiny_z_image):
    """The chat template and Qwen3's second-to-last states at the real tokens are the pipeline's list; a
    use_dynamic_shifting scheduler's mu is FLUX.1's of the (h / 2)(w / 2) patches; the folder is a Z-Image one."""
    pipe, path, model = tiny_z_image
    assert is_z_image_folder(path) and model.latent_shape(1, SIZE, SIZE) == (1, 16, 8, 8)
    assert model.latent_shape(1) == (1, 16, 512, 512)  # the pipelines' 1024 x 1024
    theirs, negative = pipe.encode_prompt(list(PROMPTS), max_sequence_length=LENGTH, negative_prompt=list(NEGATIVES))
    context, mask = model.encode_prompts(PROMPTS, LENGTH)
    assert context.shape == (2, LENGTH, 32) and mask.sum(1).tolist() == [len(row) for row in theirs]
    assert all(torch.equal(context[i][mask[i]], theirs[i]) for i in range(2))
    context, mask = model.encode_prompts(NEGATIVES, LENGTH)
    assert all(torch.equal(context[i][mask[i]], negative[i]) for i in range(2))
    saved, own = pipe.scheduler, model.scheduler_config
    try:
        pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=4,
                                                                   max_image_seq_len=64, max_shift=2.0)
        model.scheduler_config = dict(pipe.scheduler.config, _class_name="FlowMatchEulerDiscreteScheduler")
        ours, theirs = _both(pipe, model, steps=2, negative_prompt=NEGATIVES, cfg_truncation=0.2)
        print("z-image dynamic shift", float((ours - theirs).abs().max()), relative_error(ours, theirs))
        assert relative_error(ours, theirs) < 1e-5
    finally:
        pipe.scheduler, model.scheduler_config = saved, own


@pytest.mark.parametrize("inpaint,call", [
    (False, {"strength": 0.6, "negative_prompt": NEGATIVES, "cfg_truncation": 0.3}),  # ZImageImg2ImgPipeline
    (True, {}),  # ZImageInpaintPipeline's defaults: strength 1 (from pure noise), W = 5
    (True, {"strength": 0.7, "guidance_scale": 0.0, "cfg_normalization": True})])
def test_z_image_edits_as_the_pipelines(tiny_z_image, inpaint, call):
    """Same z_0 as ZImageImg2ImgPipeline / ZImageInpaintPipeline with one generator per image (the posterior draw,
    then the noise): FLUX.1's img2img cut and replacement inpainting with Z-Image's prompts and guidance."""
    pipe, _, model = tiny_z_image
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    mask = (torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(4)) > 0.5).float()
    cls = diffusers.ZImageInpaintPipeline if inpaint else diffusers.ZImageImg2ImgPipeline
    editor = cls.from_pipe(pipe)
    editor.set_progress_bar_config(disable=True)
    theirs = _call(editor, image=images, num_inference_steps=4, **({"mask_image": mask} if inpaint else {}),
                   generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], **call)
    call = dict(call)
    ours = image_to_image(model, images * 2 - 1, PROMPTS, call.pop("strength", None), steps=4, seed=5,
                          mask=mask if inpaint else None, max_sequence_length=LENGTH, return_latents=True, **call)
    print("z-image edit", inpaint, call, float((ours - theirs).abs().max()), relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)


def test_sample_and_edit_commands_are_the_library(tiny_z_image, tmp_path, capsys):
    """``diffkit sample`` / ``diffkit edit`` on a Z-Image folder write the library's PNGs byte for byte, with
    --cfg-trunc-ratio and --cfg-normalization (the pipelines' cfg_truncation / cfg_normalization)."""
    from diffkit.commands.edit import read_pngs
    from diffkit.images import save_grid, save_images
    _, path, model = tiny_z_image
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--steps", "3", "--seed", "5", "--batch-size", "2", "--height", str(SIZE), "--width",
                 str(SIZE), "--negative-prompt", "ugly", "--guidance-scale", "3", "--cfg-trunc-ratio", "0.5",
                 "--cfg-normalization", "--max-sequence-length", str(LENGTH), "--out", str(out), "--no-progress"]) == 0
    images = text_to_image(model, PROMPTS, steps=3, seed=5, height=SIZE, width=SIZE, negative_prompt="ugly",
                           guidance_scale=3.0, cfg_truncation=0.5, cfg_normalization=1.0, max_sequence_length=LENGTH,
                           output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    save_images(torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1, tmp_path / "in",
                prefix="in")
    assert main(["edit", "--checkpoint", str(path), "--images", str(tmp_path / "in"), "--prompt", PROMPTS[1],
                 "--steps", "3", "--seed", "2", "--guidance-scale", "2", "--cfg-normalization", "1.1",
                 "--max-sequence-length", str(LENGTH), "--out", str(tmp_path / "edited"), "--no-progress"]) == 0
    pixels, _ = read_pngs(tmp_path / "in", "RGB")
    ours = image_to_image(model, pixels, PROMPTS[1], steps=3, seed=2, guidance_scale=2.0, cfg_normalization=1.1,
                          max_sequence_length=LENGTH, output_range="-1,1")
    save_images(ours, tmp_path / "expected", prefix="edit")
    for name in ("edit_00000.png", "edit_00001.png"):
        assert (tmp_path / "edited" / name).read_bytes() == (tmp_path / "expected" / name).read_bytes()
    assert "Z-Image folder" in capsys.readouterr().out


def test_what_z_image_does_not_take_is_refused_in_one_line(tiny_z_image, tmp_path, capsys):
    """Folders diffkit does not drive (Omni, other classes, num_train_timesteps) from the JSON alone; bad library
    arguments; command flags that do not apply: one line each, no file written."""
    _, path, model = tiny_z_image
    for i, (file, change, expected) in enumerate([
            ("model_index.json", {"_class_name": "ZImageOmniPipeline"}, "allowed: ZImagePipeline, ZImageImg2Img"),
            ("transformer/config.json", {"siglip_feat_dim": 32}, "siglip_feat_dim=32 (Z-Image Omni's image inputs, "
                                                                 "which diffkit drives in ZImageOmniPipeline"),
            ("transformer/config.json", {"in_channels": 4}, "in_channels=4; allowed: 16 (the VAE's latent channels)"),
            ("scheduler/scheduler_config.json", {"num_train_timesteps": 500},
             "num_train_timesteps=500; allowed: 1000")]):
        with pytest.raises(DiffkitError) as caught:
            check_z_image_folder(changed_copy(path, tmp_path / str(i), file, change))
        assert expected in str(caught.value) and "\n" not in str(caught.value)
    assert json.loads((path / "model_index.json").read_text())["_class_name"] == "ZImagePipeline"
    for options, expected in [({"cfg_normalization": -1.0}, "cfg_normalization=-1.0 is not allowed"),
                              ({"cfg_truncation": float("nan")}, "cfg_truncation=nan is not allowed"),
                              ({"guidance_scale": 0.0, "negative_prompt": "ugly"}, "a negative prompt with guidance"),
                              ({"max_sequence_length": 1024}, "max_sequence_length=1024 is not allowed"),
                              ({"height": 256}, "height 256 is not allowed; give at most 128")]:
        with pytest.raises(DiffkitError) as caught:
            text_to_image(model, "hot dog", steps=1, **{"height": SIZE, "width": SIZE, **options})
        assert expected in str(caught.value), (options, str(caught.value))
    assert_sample_refusals(main, path, tmp_path, capsys, [
        (["--textual-inversion", str(tmp_path / "x.safetensors")], "--textual-inversion does not apply to a Z-Image"),
        (["--guidance-rescale", "0.5", "--guidance-scale", "2"], "--guidance-rescale does not apply to a Z-Image"),
        (["--clip-skip", "1"], "--clip-skip does not apply to a Z-Image folder"),
        (["--no-cfg-normalization"], "--no-cfg-normalization does not apply to a Z-Image folder"),
        (["--height", "18"], "--height 18 is not allowed; give a positive multiple of 4")])
    capsys.readouterr()
    assert main(["edit", "--checkpoint", str(path), "--images", str(tmp_path), "--prompt", "hot", "--ip-adapter",
                 str(tmp_path / "x.bin"), "--out", str(tmp_path / "never")]) == 2
    assert "--ip-adapter does not apply to a Z-Image folder" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


Z_IMAGE_LORA = dict(r=4, lora_alpha=8.0, target_modules=["to_q", "to_k", "to_v", "to_out.0", "w1", "w3",
                                                        "layers.0.adaLN_modulation.0"],
                    rank_pattern={"to_k": 2}, alpha_pattern={"to_v": 3.0})


def test_z_image_lora_is_load_lora_weights_and_fuse_lora(tiny_z_image, tmp_path, capsys):
    """A diffusers-format file (ZImagePipeline.save_lora_weights) at 0.3: load_lora_weights + fuse_lora's weights
    and z_0; ``diffkit sample --lora`` is the library; a kohya text-encoder key: one line."""
    from test_sd_lora import check_transformer_lora, fused_transformer_lora
    pipe, path, model = tiny_z_image
    lora, fused = fused_transformer_lora(diffusers.ZImagePipeline, path, tmp_path, Z_IMAGE_LORA, scale=0.3)
    ours = load_z_image(path, progress=False, lora=[(lora, 0.3)])
    z0, expected = _both(fused, ours, steps=2, negative_prompt=NEGATIVES)
    print("z-image lora", float((z0 - expected).abs().max()), relative_error(z0, expected))
    assert relative_error(z0, expected) < 1e-5  # measured: see docs/interop.md
    worst = check_transformer_lora(path, lora, 0.3, ours, model, fused, text_to_image, tmp_path, capsys,
                                   "lora_te_layers_0_self_attn_q_proj.lora_down.weight", "a Z-Image folder")
    print("z-image lora weights", worst)
    assert worst < 1e-6


def _converted_files(lora, root):
    """The diffusers file's tensors as a kohya file (``lora_unet_`` + the name with ``_``, ``lora_down`` /
    ``lora_up``, ``.alpha`` 1 (alpha / r < 1/2: the converter's split), the first block's ``to_out.0`` as a bare
    ``out``), a kohya fused ``qkv`` and a ``diffusion_model.`` file (``lora_A`` / ``lora_B``, ``.alpha`` 6)."""
    from safetensors.torch import load_file, save_file
    tensors = load_file(lora)
    modules = sorted({k[len("transformer."):-len(".lora_A.weight")] for k in tensors if k.endswith(".lora_A.weight")})
    kohya, comfy = {}, {}
    for module in modules:
        a, b = tensors[f"transformer.{module}.lora_A.weight"], tensors[f"transformer.{module}.lora_B.weight"]
        name = "lora_unet_" + module.replace("layers.0.attention.to_out.0", "layers.0.attention.out").replace(".", "_")
        kohya.update({f"{name}.lora_down.weight": a, f"{name}.lora_up.weight": b, f"{name}.alpha": torch.tensor(1.0)})
        comfy.update({f"diffusion_model.{module}.lora_A.weight": a, f"diffusion_model.{module}.lora_B.weight": b,
                      f"diffusion_model.{module}.alpha": torch.tensor(6.0)})
    assert "lora_unet_layers_0_attention_out.lora_down.weight" in kohya
    gen = torch.Generator().manual_seed(7)  # a fused qkv (sd-scripts on Z-Image's own modules): B's thirds
    save_file({"lora_unet_noise_refiner_0_attention_qkv.lora_down.weight": torch.randn(2, 32, generator=gen),
               "lora_unet_noise_refiner_0_attention_qkv.lora_up.weight": torch.randn(96, 2, generator=gen),
               "lora_unet_noise_refiner_0_attention_qkv.alpha": torch.tensor(3.0)}, root / "qkv.safetensors")
    save_file(kohya, root / "kohya.safetensors")
    save_file(comfy, root / "comfy.safetensors")
    return root / "kohya.safetensors", root / "qkv.safetensors", root / "comfy.safetensors"


def test_z_image_converted_lora_files_are_diffusers(tiny_z_image, tmp_path, capsys):
    """kohya (``lora_unet_``, ``.alpha``) and ``diffusion_model.`` files: the weights of ZImagePipeline's
    load_lora_weights (its converter) + fuse_lora; ``diffkit edit --lora`` is the library; keys the converter
    leaves over, or diffkit does not map: one line."""
    from safetensors.torch import save_file

    from diffkit.commands.edit import read_pngs
    from diffkit.images import save_images
    from test_sd_lora import fused_transformer_lora
    _, path, _ = tiny_z_image
    lora, _ = fused_transformer_lora(diffusers.ZImagePipeline, path, tmp_path, Z_IMAGE_LORA, scale=1.0)
    for file, scale in zip(_converted_files(lora, tmp_path), (0.7, 1.0, 1.3)):
        pipe = diffusers.ZImagePipeline.from_pretrained(path, local_files_only=True)
        pipe.load_lora_weights(str(file))
        pipe.fuse_lora(lora_scale=scale)
        pipe.unload_lora_weights()
        theirs = pipe.transformer.state_dict()
        ours = load_z_image(path, progress=False, lora=[(file, scale)])
        worst = max(float((v - theirs[k]).abs().max()) for k, v in ours.transformer.state_dict().items())
        print("z-image converted lora", file.name, worst)
        assert worst < 1e-6
    save_images(torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1, tmp_path / "in",
                prefix="in")
    assert main(["edit", "--checkpoint", str(path), "--images", str(tmp_path / "in"), "--prompt", "hot", "--steps",
                 "2", "--lora", f"{file}:{scale}", "--out", str(tmp_path / "edited"), "--no-progress"]) == 0
    pixels, _ = read_pngs(tmp_path / "in", "RGB")
    save_images(image_to_image(ours, pixels, "hot", steps=2, seed=0, output_range="-1,1"), tmp_path / "expected",
                prefix="edit")
    name = "edit_00000.png"
    assert (tmp_path / "edited" / name).read_bytes() == (tmp_path / "expected" / name).read_bytes()
    for i, (tensors, expected) in enumerate([
            ({"diffusion_model.layers.0.attention.to_q.lora_A.weight": torch.zeros(2, 32)}, "no lora_B matrix beside"),
            ({"lora_unet_layers_0_attention_to_q.lora_down.weight": torch.zeros(2, 32),
              "lora_unet_layers_0_attention_to_q.lora_up.weight": torch.zeros(32, 2),
              "lora_unet_layers_0_attention_to_q.lora_A.weight": torch.zeros(2, 32)}, "leaves it over and fails"),
            ({"diffusion_model.layers.0.attention.qkv.lora.down.weight": torch.zeros(2, 32)}, "loads nothing once"),
            ({"lora_unet_layers_0_attention_to_q.lokr_w1": torch.zeros(2, 2)},
             "a LoKr file without diffusion_model. or .alpha keys is loaded as it is"),
            ({"diffusion_model.layers.0.attention.to_q.lokr_w1": torch.zeros(4, 4),
              "diffusion_model.layers.0.attention.to_k.lora_A.weight": torch.zeros(2, 32)},
             "key 'diffusion_model.layers.0.attention.to_k.lora_A.weight' is not supported on a Z-Image folder (a LoKr "
             "file's keys end in"),
            ({"transformer.layers.0.attention.to_q.hada_w1_a": torch.zeros(32, 2)},
             "(a LyCORIS LoHa tensor: diffusers 0.42.1's ZImageLoraLoaderMixin converts LoRA and LoKr files, no LoHa)"),
            ({"transformer.layers.0.attention.to_q.dora_scale": torch.zeros(1, 32)}, "drops dora_scale keys")]):
        save_file(tensors, tmp_path / f"bad{i}.safetensors")
        with pytest.raises(DiffkitError) as caught:
            load_z_image(path, progress=False, lora=[tmp_path / f"bad{i}.safetensors"])
        assert expected in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


LOKR = {"layers.0.attention.to_q": 2, "layers.0.attention.to_out.0": None, "noise_refiner.0.feed_forward.w1": 2,
        "context_refiner.0.attention.to_v": 3, "all_x_embedder.2-1": 3}  # module: LoKr rank (None: W1, W2 full)


def _lokr_file(transformer, layout: str) -> dict:
    """A LoKr file in a ``layout`` ZImageLoraLoaderMixin converts: ``diffusion_model.`` (.alpha 3, W1 factorised
    too), ``bare`` diffusers names with .alpha 1, ``transformer.`` peft's keys (no alpha)."""
    from _lokr_helpers import lokr_file
    layers = dict(transformer.named_modules())
    prefix = {"diffusion_model.": "diffusion_model.", "bare": "", "transformer.": "transformer."}[layout]
    return lokr_file({prefix + m: (layers[m].out_features, layers[m].in_features, r) for m, r in LOKR.items()}, 6,
                     both=layout == "diffusion_model.", alpha={"diffusion_model.": 3.0, "bare": 1.0}.get(layout))


@pytest.mark.parametrize("layout", ["diffusion_model.", "bare", "transformer."])
def test_z_image_lokr_files_are_diffusers_conversions(tiny_z_image, tmp_path, layout):
    """LyCORIS LoKr files in the layouts ZImageLoraLoaderMixin converts: the weights of load_lora_weights +
    fuse_lora(lora_scale=0.7)."""
    from safetensors.torch import save_file
    from diffkit.interop.z_image_lora import read_z_image_loras
    from test_sd_lora import converted_lora_difference
    pipe, _, model = tiny_z_image
    file = tmp_path / "lokr.safetensors"
    save_file(_lokr_file(model.transformer, layout), file)
    worst, changes = converted_lora_difference(pipe, model, file, read_z_image_loras, "Z-Image")
    assert sum(change > 1e-3 for change in changes.values()) == len(LOKR)
    print("Z-Image LoKr", layout, worst)
    assert worst < 1e-6  # measured: see docs/interop.md


def test_z_image_lokr_file_samples_as_the_pipeline(tiny_z_image, tmp_path):
    """A diffusion_model. LoKr file at 0.6: z_0 of ZImagePipeline with the file loaded (peft's LoKr layers, unmerged,
    ``set_adapters`` weight 0.6) against ``load_z_image(lora=[(file, 0.6)])``, CFG against negative prompts."""
    import copy
    from safetensors.torch import save_file
    pipe, path, model = tiny_z_image
    file = tmp_path / "lokr.safetensors"
    save_file(_lokr_file(model.transformer, "diffusion_model."), file)
    theirs = type(pipe)(**{**pipe.components, "transformer": copy.deepcopy(pipe.transformer)})
    theirs.load_lora_weights(str(file), adapter_name="lokr")
    theirs.set_adapters(["lokr"], [0.6])
    z0, expected = _both(theirs, load_z_image(path, progress=False, lora=[(file, 0.6)]), steps=2,
                         negative_prompt=NEGATIVES)
    print("Z-Image LoKr z_0", relative_error(z0, expected))
    assert relative_error(z0, expected) < 1e-5  # measured: see docs/interop.md
