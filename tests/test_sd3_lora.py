"""LoRA files on an SD3 folder (diffkit.interop.sd3_lora, .sd_lora): several diffusers / PEFT files (transformer, both
CLIP text encoders, rank / alpha patterns, rsLoRA, DoRA) against diffusers' StableDiffusion3Pipeline.load_lora_weights
+ set_adapters + fuse_lora on a tiny random folder (test_interop_sd3's), in the library and in ``diffkit sample`` /
``diffkit edit`` (img2img, --mask); kohya / ComfyUI / LyCORIS keys, which diffusers 0.42.1's SD3 loader does not
convert (it loads nothing from them), refused in one line."""
import copy
import re

import pytest
import torch
from safetensors.torch import save_file

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")
from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.sd3 import image_to_image, load_sd3, text_to_image  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd3 import PROMPTS, tiny_sd3_pipeline  # noqa: E402
from test_interop_sd3_edit import SD3_LORA, _images, _img2img  # noqa: E402
from test_sd_lora import TEXT_LORA, _add_lora  # noqa: E402

# the second file: other transformer layers (the context stream, the adaLN modulations, the embedders), rsLoRA
RS_LORA = dict(r=2, lora_alpha=3.0, use_rslora=True, target_modules=["to_k", "add_k_proj", "ff_context.net.0.proj",
                                                                     "norm1.linear", "context_embedder", "proj_out"])
DORA = dict(r=2, lora_alpha=5.0, use_dora=True, target_modules=["to_q", "add_v_proj", "ff.net.2"])
SCALES = (0.7, -0.4)
KW = dict(guidance_scale=4.0, max_sequence_length=12)


def _save(pipe, path, seed, transformer_config, texts):
    """A LoRA file written by StableDiffusion3Pipeline.save_lora_weights: peft adapters (random A, B, magnitudes) on
    copies of ``pipe``'s transformer and of the text encoders ``texts`` ({name: LoraConfig kwargs})."""
    layers = {}
    for i, (name, config) in enumerate((("transformer", transformer_config), *texts.items())):
        module = copy.deepcopy(getattr(pipe, name))
        state, meta = _add_lora(module, seed + i, **config)
        prefix = "text_model." if name != "transformer" and not hasattr(module, "text_model") else ""
        layers[f"{name}_lora_layers"] = {prefix + k.replace("lora_magnitude_vector.weight", "lora_magnitude_vector"): v
                                         for k, v in state.items()}
        layers[f"{name}_lora_adapter_metadata"] = meta
        layers[f"{name}_peft"] = module
    diffusers.StableDiffusion3Pipeline.save_lora_weights(path.parent, weight_name=path.name, **{
        k: v for k, v in layers.items() if not k.endswith("_peft")})
    return path, {k[:-5]: v for k, v in layers.items() if k.endswith("_peft")}


def peft_fused(module, scale):
    """The state dict of ``module`` (peft adapters injected) after peft's own merge at ``scale`` (scale_layer +
    merge: what fuse_lora(lora_scale) asks peft for), adapters dropped."""
    from peft.tuners.lora import LoraLayer
    module = copy.deepcopy(module)
    for layer in module.modules():
        if isinstance(layer, LoraLayer):
            layer.scale_layer(scale)
            layer.merge()
    return {k.replace(".base_layer", ""): v for k, v in module.state_dict().items() if ".lora_" not in k}


def _fused(folder, loras):
    """The folder's pipeline with ``loras`` [(file, scale)] loaded and fused as diffusers fuses them: one with
    fuse_lora(lora_scale), several with set_adapters(names, scales) + fuse_lora, on all three components."""
    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    for i, (path, _) in enumerate(loras):
        pipe.load_lora_weights(str(path), adapter_name=f"a{i}")
    components = ["transformer", "text_encoder", "text_encoder_2"]
    if len(loras) == 1:
        pipe.fuse_lora(components=components, lora_scale=loras[0][1])
    else:
        pipe.set_adapters([f"a{i}" for i in range(len(loras))], [s for _, s in loras])
        pipe.fuse_lora(components=components)
    pipe.unload_lora_weights()  # the fused weights stay
    return pipe


@pytest.fixture(scope="module")
def sd3_loras(tmp_path_factory):
    """(folder, base pipeline, file A: transformer with rank / alpha patterns + text_encoder, file B: rsLoRA on other
    transformer layers + text_encoder_2, file D: DoRA on the transformer and text_encoder)."""
    root = tmp_path_factory.mktemp("sd3_lora")
    tiny_sd3_pipeline(root).save_pretrained(root / "sd3")
    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(root / "sd3", local_files_only=True)
    a, _ = _save(pipe, root / "a.safetensors", 1, SD3_LORA, {"text_encoder": TEXT_LORA})
    b, _ = _save(pipe, root / "b.safetensors", 4, RS_LORA, {"text_encoder_2": {**TEXT_LORA, "use_rslora": True}})
    d, modules = _save(pipe, root / "d.safetensors", 7, DORA, {"text_encoder": {**TEXT_LORA, "use_dora": True}})
    return root / "sd3", pipe, a, b, (d, modules["text_encoder"])


def _worst(ours, pipe):
    """max |W_ours - W_diffusers| over the transformer's and both text encoders' weights."""
    worst = 0.0
    for name in ("transformer", "text_encoder", "text_encoder_2"):
        theirs = getattr(pipe, name).state_dict()
        worst = max(worst, max(float((v - theirs[k]).abs().max()) for k, v in getattr(ours, name).state_dict().items()))
    return worst


def _changed(ours, base, names):
    """min over the networks ``names`` of their largest weight change (the files change each one they adapt)."""
    return min(max(float((v - getattr(base, name).state_dict()[k]).abs().max())
                   for k, v in getattr(ours, name).state_dict().items()) for name in names)


def _latents():
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("files", ["ab", "d"])
def test_sd3_lora_files_match_load_lora_weights_set_adapters_and_fuse_lora(sd3_loras, files):
    """Two files at scales 0.7 and -0.4 (set_adapters + fuse_lora; rank / alpha patterns, rsLoRA's alpha / sqrt(r),
    the transformer and both CLIPs), and a DoRA file at 0.7: the merged weights and the sampled latents are the
    pipeline's. (DoRA on a CLIP: diffusers 0.42.1 with transformers 5 does not load the file's magnitudes, its load
    report lists them UNEXPECTED / MISSING; that encoder is compared with peft's own merge at the scale, in the
    pipeline for the latents.)"""
    folder, base, a, b, (d, dora_clip) = sd3_loras
    loras = [({"a": a, "b": b, "d": d}[f], s) for f, s in zip(files, SCALES)]
    pipe = _fused(folder, loras)
    if files == "d":
        pipe.text_encoder.load_state_dict(peft_fused(dora_clip, SCALES[0]))
    ours = load_sd3(folder, progress=False, lora=loras)
    worst = _worst(ours, pipe)
    changed = _changed(ours, base, ("transformer", "text_encoder") + (("text_encoder_2",) if files == "ab" else ()))
    print("sd3 lora", files, "weights", worst, "changed", changed)
    assert worst < 1e-6 and changed > 1e-2
    with torch.no_grad():
        theirs = pipe(PROMPTS, num_inference_steps=3, latents=_latents(), output_type="latent", **KW).images
    z0 = text_to_image(ours, PROMPTS, steps=3, latents=_latents(), return_latents=True, **KW)
    print("sd3 lora", files, "latents", float((z0 - theirs).abs().max()), relative_error(z0, theirs))
    assert relative_error(z0, theirs) < 1e-5


@pytest.fixture(scope="module")
def merged_ab(sd3_loras):
    """([(file A, 0.7), (file B, -0.4)], load_sd3 of the folder with both merged, the command line's flags)."""
    folder, _, a, b, _ = sd3_loras
    loras = list(zip((a, b), SCALES))
    flags = ["--checkpoint", str(folder), "--prompt", PROMPTS[0], "--lora", f"{a}:0.7", "--lora", f"{b}:-0.4",
             "--steps", "3", "--guidance-convention", "diffusers", "--guidance-scale", "4", "--seed", "5",
             "--no-progress", "--max-sequence-length", "12"]
    return loras, load_sd3(folder, progress=False, lora=loras), flags


def _edit(merged, flags, tmp_path, mask=None):
    """`diffkit edit` of two PNGs (with ``mask``: --mask) into tmp_path / "out", asserted byte for byte equal to
    image_to_image of ``merged``; returns the images read back in [-1, 1]."""
    import numpy as np
    from PIL import Image
    from diffkit.commands.edit import read_pngs
    from diffkit.images import save_images
    (tmp_path / "in").mkdir()
    for i, image in enumerate(_images()):
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "in" / f"{i}.png")
    images, _ = read_pngs(tmp_path / "in", "RGB")
    extra = []
    if mask is not None:
        Image.fromarray(np.uint8(mask[0, 0].numpy() * 255)).save(tmp_path / "mask.png")
        extra = ["--mask", str(tmp_path / "mask.png")]
    assert main(["edit", "--images", str(tmp_path / "in"), "--out", str(tmp_path / "out")] + extra + flags) == 0
    save_images(image_to_image(merged, images, PROMPTS[0], steps=3, seed=5, output_range="-1,1", mask=mask, **KW),
                tmp_path / "expected", prefix="edit")
    for i in range(2):
        assert (tmp_path / "out" / f"edit_0000{i}.png").read_bytes() == \
            (tmp_path / "expected" / f"edit_0000{i}.png").read_bytes(), i
    return images


def test_sample_and_edit_commands_take_several_sd3_lora_files(sd3_loras, merged_ab, tmp_path, capsys):
    """`diffkit sample` / `diffkit edit` with --lora A:0.7 --lora B:-0.4 write what the library writes with both
    files merged (byte for byte), and the edit's PNGs are StableDiffusion3Img2ImgPipeline's with both fused (within
    one PNG level)."""
    import numpy as np
    from PIL import Image
    from diffkit.images import save_grid
    loras, merged, flags = merged_ab
    assert main(["sample", "--num", "2", "--nrow", "2", "--out", str(tmp_path / "grid.png")] + flags) == 0
    save_grid(text_to_image(merged, [PROMPTS[0]] * 2, steps=3, seed=5, output_range="-1,1", **KW),
              tmp_path / "expected.png", 2)
    assert (tmp_path / "grid.png").read_bytes() == (tmp_path / "expected.png").read_bytes()
    images = _edit(merged, flags, tmp_path)
    with torch.no_grad():
        theirs = _img2img(_fused(sd3_loras[0], loras))(
            [PROMPTS[0]] * 2, image=(images + 1) / 2, strength=0.6, num_inference_steps=3, output_type="np",
            generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], **KW).images
    written = np.stack([np.asarray(Image.open(tmp_path / "out" / f"edit_0000{i}.png"), np.float64) for i in range(2)])
    with capsys.disabled():
        print("sd3 lora img2img PNG levels", np.abs(written - (theirs * 255).round()).max())
    assert np.abs(written - (theirs * 255).round()).max() <= 1
    capsys.readouterr()


def test_edit_command_inpaints_with_several_sd3_lora_files(merged_ab, tmp_path, capsys):
    """`diffkit edit --mask` with both files: image_to_image(mask=) of the merged folder, byte for byte (that is
    StableDiffusion3InpaintPipeline's loop, T22, on weights that are the pipeline's fused ones, TQ1)."""
    loras, merged, flags = merged_ab
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 2:10] = 1
    _edit(merged, flags, tmp_path, mask)
    capsys.readouterr()


KOHYA = {  # keys diffusers 0.42.1's SD3 loader does not convert: it loads nothing from them
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": "kohya CLIP-L",
    "lora_te2_text_model_encoder_layers_0_self_attn_q_proj": "kohya CLIP-G",
    "lora_unet_joint_blocks_0_x_block_attn_qkv": "kohya MM-DiT",
    "diffusion_model.joint_blocks.0.x_block.attn.qkv": "ComfyUI",
    "transformer.transformer_blocks.0.attn.to_q": "LyCORIS (LoHa) under diffusers names"}


def test_keys_diffusers_does_not_load_on_sd3_are_one_line_errors_before_output(sd3_loras, tmp_path, capsys):
    """A kohya (lora_unet_ / lora_te1_ / lora_te2_), ComfyUI or LyCORIS key on an SD3 folder: one line naming it, exit
    status 2, nothing written (a kohya file of CLIP keys alone would merge through .sd_lora; diffusers loads nothing
    from it, which the test checks); an SD-XL diffusers file's unet. keys: .sd_lora's line."""
    from PIL import Image
    folder, base, *_ = sd3_loras
    (tmp_path / "in").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "in" / "0.png")
    gen = torch.Generator().manual_seed(0)
    cases = []
    for name, what in KOHYA.items():
        width = 32 if "x_block" in name else 16
        rank = 2
        kohya = not name.startswith("transformer.")
        parts = {".lora_down.weight": torch.randn(rank, width, generator=gen),
                 ".lora_up.weight": torch.randn(width * (3 if "qkv" in name else 1), rank, generator=gen),
                 ".alpha": torch.tensor(1.0)} if kohya else {
                 ".hada_w1_a": torch.randn(32, 2, generator=gen), ".hada_w1_b": torch.randn(2, 32, generator=gen)}
        path = tmp_path / f"{len(cases)}.safetensors"
        save_file({name + part: t for part, t in parts.items()}, path)
        cases.append((path, re.escape(f"key {name + min(parts)!r} " + ("is not supported on an SD3 folder" if kohya else
                                                                     "is a LyCORIS LoHa tensor; diffusers 0.42.1's "
                                                                     "StableDiffusion3Pipeline.load_lora_weights"))))
    te1 = cases[0][0]
    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(folder, local_files_only=True)
    pipe.load_lora_weights(str(te1))  # what the reference does with a kohya CLIP-L file: nothing
    pipe.fuse_lora(components=["transformer", "text_encoder", "text_encoder_2"])
    assert all(torch.equal(v, base.text_encoder.state_dict()[k]) for k, v in pipe.text_encoder.state_dict().items())
    save_file({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(2, 8),
               "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": torch.zeros(8, 2)}, tmp_path / "xl.st")
    cases.append((tmp_path / "xl.st", r"adapts a UNet \(unet\.\.\.\. keys\); this folder has a transformer \(SD3\)"))
    capsys.readouterr()  # diffusers' log lines
    for path, match in cases:
        with pytest.raises(DiffkitError, match=match):
            load_sd3(folder, progress=False, lora=[path])
        for command in ("sample", "edit"):
            extra = ["--images", str(tmp_path / "in")] if command == "edit" else []
            assert main([command, "--checkpoint", str(folder), "--prompt", "a cat", "--no-progress", "--lora",
                         str(path), "--out", str(tmp_path / "out" / "o.png")] + extra) == 2, (command, path)
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and re.search(match, err[0]), (command, err)
            assert not (tmp_path / "out").exists()
