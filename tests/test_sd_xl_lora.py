"""LoRA files and textual inversion on SD-XL folders (diffkit.interop.sd_lora, .sd_textual_inversion, .ldm_names)
against diffusers' own StableDiffusionXLPipeline: ``load_lora_weights`` + ``fuse_lora`` and two
``load_textual_inversion`` calls (clip_g into text_encoder_2 / tokenizer_2, clip_l into text_encoder / tokenizer),
on the tiny random SD-XL folder of test_interop_sd_xl (nothing downloaded)."""
import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffkit.cli import main
from diffkit.errors import DiffkitError

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd_xl import tiny_sd_xl_pipeline  # noqa: E402
from test_sd_lora import UNET_LORA, _add_lora, _kohya, fuse_loras  # noqa: E402

TE1_LORA = dict(r=2, lora_alpha=1.0, target_modules=["q_proj", "v_proj", "fc1"])
TE2_LORA = dict(r=3, lora_alpha=5.0, target_modules=["k_proj", "out_proj", "fc2"])
PROMPTS = ["a photo of a cat", "hot"]
STEPS, GUIDANCE = 2, 5.0
# The tiny UNet's blocks under sd-scripts' SD-XL (LDM / SGM) names, written out by hand from openaimodel.py's
# layout (layers_per_block 1: down 0 = resnet + downsampler, down 1 = resnet + attention; up blocks 2 layers)
SGM = {"down_blocks.0.resnets.0": "input_blocks.1.0", "down_blocks.0.downsamplers.0.conv": "input_blocks.2.0.op",
       "down_blocks.1.resnets.0": "input_blocks.3.0", "down_blocks.1.attentions.0": "input_blocks.3.1",
       "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
       "mid_block.resnets.1": "middle_block.2", "up_blocks.0.resnets.0": "output_blocks.0.0",
       "up_blocks.0.attentions.0": "output_blocks.0.1", "up_blocks.0.resnets.1": "output_blocks.1.0",
       "up_blocks.0.attentions.1": "output_blocks.1.1", "up_blocks.0.upsamplers.0.conv": "output_blocks.1.2.conv",
       "up_blocks.1.resnets.0": "output_blocks.2.0", "up_blocks.1.resnets.1": "output_blocks.3.0",
       "conv_in": "input_blocks.0.0", "conv_out": "out.2", "time_embedding.linear_1": "time_embed.0",
       "add_embedding.linear_1": "label_emb.0.0", "time_embedding.linear_2": "time_embed.2",
       "add_embedding.linear_2": "label_emb.0.2"}
RESNET = {"conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "conv2": "out_layers.3",
          "conv_shortcut": "skip_connection"}


def _sgm(module):
    """A diffusers UNet module name under its SGM name (the table above)."""
    for head in sorted(SGM, key=len, reverse=True):
        if module == head or module.startswith(head + "."):
            rest = module[len(head) + 1:]
            return SGM[head] + ("." + RESNET.get(rest, rest) if rest else "")
    raise KeyError(module)


def _kohya_xl(diffusers_file, out):
    """The diffusers-format file under sd-scripts' SD-XL keys: lora_unet_<SGM name>, lora_te1_, lora_te2_,
    each module's alpha as .alpha."""
    return _kohya(diffusers_file, out, {"unet": "lora_unet_", "text_encoder": "lora_te1_",
                                        "text_encoder_2": "lora_te2_"},
                  lambda component, module: _sgm(module) if component == "unet" else module)


def _ti_vectors(seed, n, width):
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def xl_lora(tmp_path_factory):
    """{"folder", "diffusers": a LoRA of the UNet and both text encoders, "kohya": the same under sd-scripts'
    SD-XL keys, "second": another (UNet and text_encoder_2), "ti": {name: SD-XL embedding file}}."""
    root = tmp_path_factory.mktemp("xl_lora")
    pipe = tiny_sd_xl_pipeline(root)
    pipe.save_pretrained(root / "xl")
    out = {"folder": root / "xl", "ti": {}}
    base = {"unet": pipe.unet, "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2}
    for name, seed, parts in (("diffusers", 1, ("unet", "text_encoder", "text_encoder_2")),
                              ("second", 2, ("unet", "text_encoder_2"))):
        nets = {part: copy.deepcopy(net) for part, net in base.items()}  # peft adds its layers to a copy
        layers = {}
        for part, config in zip(("unet", "text_encoder", "text_encoder_2"), (UNET_LORA, TE1_LORA, TE2_LORA)):
            if part in parts:
                state, meta = _add_lora(nets[part], seed + len(layers), **config)
                prefix = "text_model." if part == "text_encoder" and not hasattr(nets[part], "text_model") else ""
                layers.update({f"{part}_lora_layers": {prefix + k: v for k, v in state.items()},
                               f"{part}_lora_adapter_metadata": meta})
        diffusers.StableDiffusionXLPipeline.save_lora_weights(root / name, weight_name="lora.safetensors", **layers)
        out[name] = root / name / "lora.safetensors"
    out["kohya"] = _kohya_xl(out["diffusers"], root / "kohya.safetensors")
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    out["base"] = load_stable_diffusion(out["folder"], progress=False)  # never changed by a test
    for name, n in (("single", 1), ("multi", 3)):
        save_file({"clip_l": _ti_vectors(n, n, 32), "clip_g": _ti_vectors(n + 5, n, 24)}, root / f"{name}.safetensors")
        out["ti"][name] = root / f"{name}.safetensors"
    return out


def _latents():
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))


def _pipe(folder, loras=(), tis=()):
    """diffusers' SD-XL pipeline with ``loras`` [(file, scale)] loaded and fused and ``tis`` [(file, token)]
    loaded as diffusers documents SD-XL embeddings: clip_g with text_encoder_2, clip_l with text_encoder."""
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    fuse_loras(pipe, loras)
    for path, token in tis:
        state = load_file(path)
        pipe.load_textual_inversion(state["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                    tokenizer=pipe.tokenizer_2)
        pipe.load_textual_inversion(state["clip_l"], token=token, text_encoder=pipe.text_encoder,
                                    tokenizer=pipe.tokenizer)
    return pipe


def _theirs(folder, loras):
    with torch.no_grad():
        return _pipe(folder, loras)(PROMPTS, num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=_latents(),
                                    output_type="latent").images


def _ours(folder, loras, xl=None):
    from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image
    xl = xl or load_stable_diffusion(folder, progress=False, lora=loras)
    return text_to_image(xl, PROMPTS, sampler="ddim", steps=STEPS, grid="scheduler", guidance_scale=GUIDANCE,
                         latents=_latents(), return_latents=True)


def _fused(pipe, part):
    """The pipeline's ``part`` weights after fuse_lora, under the network's own names."""
    return {k.replace(".base_layer", ""): v for k, v in getattr(pipe, part).state_dict().items() if ".lora_" not in k}


def _assert_same_weights(xl, pipe):
    """Every tensor of the three networks within 1e-6 of the pipeline's (relative to its largest entry)."""
    for part in ("unet", "text_encoder", "text_encoder_2"):
        ours, theirs = getattr(xl, part).state_dict(), _fused(pipe, part)
        assert ours.keys() == theirs.keys(), part
        for key, value in ours.items():
            assert (value - theirs[key]).abs().max() <= 1e-6 * theirs[key].abs().max(), (part, key)


@pytest.mark.parametrize("fmt, scale", [("diffusers", 1.0), ("diffusers", 0.5), ("kohya", 0.8)])
def test_sd_xl_lora_matches_load_lora_weights_and_fuse(xl_lora, fmt, scale):
    """A LoRA of the UNet (attention, 3x3 resnet conv, proj_in; per-module ranks and alphas), text_encoder and
    text_encoder_2: diffusers' file, and the same under sd-scripts' SD-XL keys (SGM UNet names, lora_te1_ /
    lora_te2_, .alpha), each merged equals the pipeline with the diffusers file loaded and fused: every
    weight within 1e-6 (float32 rounding of W0 + s (alpha/r) B A), z_0 after 2 guided DDIM steps within 3e-5
    (that rounding carried through the random tiny nets at s = 5)."""
    from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image
    xl = load_stable_diffusion(xl_lora["folder"], progress=False, lora=[(xl_lora[fmt], scale)])
    pipe = _pipe(xl_lora["folder"], [(xl_lora["diffusers"], scale)])
    _assert_same_weights(xl, pipe)
    ours = text_to_image(xl, PROMPTS, sampler="ddim", steps=STEPS, grid="scheduler", guidance_scale=GUIDANCE,
                         latents=_latents(), return_latents=True)
    with torch.no_grad():
        theirs = pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=_latents(),
                      output_type="latent").images
    assert relative_error(ours, theirs) < 3e-5
    if fmt == "kohya":
        base = xl_lora["base"]
        for part, count in (("unet", 76), ("text_encoder", 6), ("text_encoder_2", 9)):  # every adapted layer
            a, b = getattr(xl, part).state_dict(), getattr(base, part).state_dict()
            assert sum(not torch.equal(a[k], b[k]) for k in a) == count, part


def test_kohya_sgm_unet_file_matches_diffusers_own_converter(xl_lora, tmp_path):
    """A kohya SD-XL UNet file on layers of every LDM / SGM kind (input / middle / output blocks, resnet convs,
    time projection, shortcut, down- and upsampler, attention, feed-forward, conv_in / conv_out, the time and
    added-condition MLPs (both layers each), proj_in / proj_out, ff.net.0.proj / ff.net.2), one alpha: the z_0 of
    diffusers loading that very file (its SGM converter)."""
    unet = diffusers.UNet2DConditionModel.from_pretrained(xl_lora["folder"] / "unet")
    modules = dict(unet.named_modules())
    gen, tensors = torch.Generator().manual_seed(4), {}
    for module in ("down_blocks.0.resnets.0.conv1", "down_blocks.0.downsamplers.0.conv",
                   "down_blocks.1.resnets.0.conv_shortcut", "down_blocks.1.attentions.0.proj_in",
                   "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
                   "mid_block.attentions.0.transformer_blocks.1.attn1.to_q", "mid_block.resnets.1.time_emb_proj",
                   "up_blocks.0.upsamplers.0.conv", "up_blocks.0.attentions.1.transformer_blocks.0.ff.net.2",
                   "up_blocks.1.resnets.1.conv2", "conv_in", "conv_out", "time_embedding.linear_2",
                   "add_embedding.linear_1", "add_embedding.linear_2", "up_blocks.0.attentions.0.proj_out",
                   "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj"):
        layer, stem = modules[module], "lora_unet_" + _sgm(module).replace(".", "_")
        conv = isinstance(layer, torch.nn.Conv2d)
        inp, out = (layer.in_channels, layer.out_channels) if conv else (layer.in_features, layer.out_features)
        tensors[f"{stem}.lora_down.weight"] = torch.randn(3, inp, *(layer.kernel_size if conv else ()), generator=gen)
        tensors[f"{stem}.lora_up.weight"] = torch.randn(out, 3, *((1, 1) if conv else ()), generator=gen) * 0.1
        tensors[f"{stem}.alpha"] = torch.tensor(2.0)
    save_file(tensors, tmp_path / "kohya_unet.safetensors")
    loras = [(tmp_path / "kohya_unet.safetensors", 0.7)]
    ours, theirs = _ours(xl_lora["folder"], loras), _theirs(xl_lora["folder"], loras)
    assert relative_error(ours, theirs) < 1e-5
    assert relative_error(ours, _ours(None, None, xl_lora["base"])) > 1e-2  # the LoRA matters


def test_ldm_names_cover_the_tiny_unet_as_written_by_hand(xl_lora):
    """ldm_names against the hand-written table (every adaptable layer outside the transformer blocks,
    whose names diffusers and SGM share below the block)."""
    from diffkit.interop.ldm_names import ldm_names
    from diffkit.interop.sd_lora import _layers
    unet = diffusers.UNet2DConditionModel.from_pretrained(xl_lora["folder"] / "unet")
    names = [n for n in _layers(unet) if n not in ("time_embedding.linear_2", "add_embedding.linear_2")]
    expected = {n: _sgm(n) for n in names}
    assert ldm_names(unet, names) == expected
    assert ldm_names(unet, ["time_embedding.linear_2", "add_embedding.linear_2"]) == {
        "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_2": "label_emb.0.2"}


def test_scale_zero_is_the_base_bit_for_bit(xl_lora):
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    zero = load_stable_diffusion(xl_lora["folder"], progress=False,
                                 lora=[(xl_lora["diffusers"], 0.0), (xl_lora["kohya"], 0)])
    for part in ("unet", "text_encoder", "text_encoder_2"):
        a, b = getattr(xl_lora["base"], part).state_dict(), getattr(zero, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part


def test_two_files_add_as_set_adapters_and_fuse(xl_lora):
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    loras = [(xl_lora["diffusers"], 0.7), (xl_lora["second"], -0.4)]  # the second: UNet and text_encoder_2 only
    _assert_same_weights(load_stable_diffusion(xl_lora["folder"], progress=False, lora=loras),
                         _pipe(xl_lora["folder"], loras))


@pytest.mark.parametrize("name", ["single", "multi"])
def test_sd_xl_textual_inversion_prompt_embeddings_match_the_pipeline(xl_lora, name):
    """Context and pooled embeddings equal the pipeline's encode_prompt after its two load_textual_inversion
    calls (a multi-vector token expanded for both tokenizers); a prompt without the token is encoded bit for
    bit as without the file."""
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    files = [(xl_lora["ti"][name], "<xl-tok>")]
    xl = load_stable_diffusion(xl_lora["folder"], progress=False, textual_inversion=files)
    pipe = _pipe(xl_lora["folder"], tis=files)
    prompts = ["a <xl-tok> photo", "hot"]
    context, pooled = xl.encode_prompts_xl(prompts)
    with torch.no_grad():
        theirs, _, theirs_pooled, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False)
    assert (context - theirs).abs().max() < 1e-6 and (pooled - theirs_pooled).abs().max() < 1e-6
    base = xl_lora["base"]
    assert not torch.allclose(context[0], base.encode_prompts_xl(prompts[:1])[0][0])  # the embedding matters
    for ours, plain in zip(xl.encode_prompts_xl(["hot"]), base.encode_prompts_xl(["hot"])):
        assert torch.equal(ours, plain)


def test_sample_command_with_lora_and_textual_inversion_on_sd_xl(xl_lora, tmp_path):
    """`diffkit sample --checkpoint SDXL --lora F:S --textual-inversion F:TOKEN` is the library call's grid."""
    from diffkit.images import save_grid
    from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(xl_lora["folder"]), "--prompt", "a <t> cat", "--num", "1",
                 "--steps", "2", "--seed", "3", "--lora", f"{xl_lora['kohya']}:0.6",
                 "--textual-inversion", f"{xl_lora['ti']['multi']}:<t>", "--out", str(out), "--no-progress"]) == 0
    xl = load_stable_diffusion(xl_lora["folder"], progress=False, lora=[(xl_lora["kohya"], 0.6)],
                               textual_inversion=[(xl_lora["ti"]["multi"], "<t>")])
    save_grid(text_to_image(xl, ["a <t> cat"], steps=2, seed=3, output_range="-1,1"), tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()


def test_wrong_files_for_sd_xl_are_one_line_errors_before_output(xl_lora, tmp_path, capsys):
    """An SD 1.x one-tensor embedding, clip_l / clip_g of other widths or vector counts, a LoRA key naming no
    layer of text_encoder_2: one line each, nothing written."""
    save_file({"<one>": torch.zeros(32)}, tmp_path / "sd1.safetensors")
    save_file({"clip_l": torch.zeros(1, 24), "clip_g": torch.zeros(1, 32)}, tmp_path / "swapped.safetensors")
    save_file({"clip_l": torch.zeros(2, 32), "clip_g": torch.zeros(1, 24)}, tmp_path / "counts.safetensors")
    save_file({f"lora_te2_text_model_x.lora_{p}.weight": torch.zeros(2, 2) for p in ("down", "up")},
              tmp_path / "te2.safetensors")
    for flag, value, needle in (
            ("--textual-inversion", f"{tmp_path / 'sd1.safetensors'}", "holds one embedding (a Stable Diffusion "
             "1.x/2.x file); an SD-XL folder needs a file with a clip_l and a clip_g tensor"),
            ("--textual-inversion", f"{tmp_path / 'swapped.safetensors'}:<s>", "the clip_l embedding of <s> has "
             "width 24; text_encoder's token embeddings have width 32"),
            ("--textual-inversion", f"{tmp_path / 'swapped.safetensors'}", "names no token; give"),
            ("--textual-inversion", f"{tmp_path / 'counts.safetensors'}:<s>", "clip_l holds 2 vectors and clip_g 1"),
            ("--lora", str(tmp_path / "te2.safetensors"), "'lora_te2_text_model_x.lora_down.weight' names no Linear "
             "or Conv2d layer of the text_encoder_2")):
        out = tmp_path / "o" / "s.png"
        code = main(["sample", "--checkpoint", str(xl_lora["folder"]), "--prompt", "hot", flag, value,
                     "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0], (value, err)
        assert not (tmp_path / "o").exists()
    from diffkit.interop.sd_textual_inversion import read_textual_inversion
    with pytest.raises(DiffkitError, match="a dict with 3 entries; allowed: .* or {'clip_l': tensor, 'clip_g'"):
        save_file({"clip_l": torch.zeros(1, 32), "clip_g": torch.zeros(1, 24), "x": torch.zeros(1)},
                  tmp_path / "three.safetensors")
        read_textual_inversion(tmp_path / "three.safetensors", "<t>")


def test_edit_command_with_lora_and_textual_inversion_on_sd_xl(xl_lora, tmp_path, capsys):
    """`diffkit edit --checkpoint SDXL --lora KOHYA:S --textual-inversion F:TOKEN` on PNGs: the images of
    StableDiffusionXLImg2ImgPipeline built from the pipeline with the diffusers file fused and both embeddings
    loaded (to the PNGs' 1/255); the LoRA and the multi-vector token both change them."""
    import numpy as np
    from PIL import Image
    from test_latent_editing import cli, write_pngs
    pngs, prompt = write_pngs(tmp_path / "in", 1, 16, "RGB"), "a <t> cat"
    base = ("--checkpoint", xl_lora["folder"], "--images", pngs, "--prompt", prompt, "--strength", 0.5, "--steps", 4,
            "--spacing", "leading", "--final", "zero", "--seed", 10)
    code, _, err = cli(capsys, *base, "--lora", f"{xl_lora['kohya']}:0.6", "--textual-inversion",
                       f"{xl_lora['ti']['multi']}:<t>", "--out", tmp_path / "out")
    assert code == 0, err
    pipe = _pipe(xl_lora["folder"], [(xl_lora["diffusers"], 0.6)], [(xl_lora["ti"]["multi"], "<t>")])
    scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, steps_offset=0, set_alpha_to_one=True)
    img2img = diffusers.StableDiffusionXLImg2ImgPipeline(**{**pipe.components, "scheduler": scheduler},
                                                         requires_aesthetics_score=False, add_watermarker=False)
    img2img.set_progress_bar_config(disable=True)
    image = torch.from_numpy(np.array(Image.open(pngs / "in_0.png"))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        theirs = img2img([prompt], image=image, strength=0.5, num_inference_steps=4, guidance_scale=5.0,
                         output_type="np", generator=[torch.Generator().manual_seed(10)]).images
    ours = np.asarray(Image.open(tmp_path / "out" / "edit_00000.png")).astype(int)
    assert np.abs(ours - np.round(theirs[0] * 255).astype(int)).max() <= 1
    code, _, err = cli(capsys, *base, "--out", tmp_path / "plain")
    assert code == 0, err
    assert np.abs(ours - np.asarray(Image.open(tmp_path / "plain" / "edit_00000.png")).astype(int)).max() > 8


def test_lora_te_and_lora_te1_keys_of_one_module_are_a_one_line_error(tmp_path):
    """lora_te_ and lora_te1_ both name text_encoder: one module under both prefixes is refused naming both
    keys (not one matrix silently taken from each)."""
    from diffkit.interop.sd_lora import read_sd_lora
    stem = "text_model_encoder_layers_0_mlp_fc1"
    pair = {"lora_down.weight": torch.zeros(2, 4), "lora_up.weight": torch.zeros(4, 2)}
    save_file({f"{prefix}{stem}.{part}": t.clone() for prefix in ("lora_te_", "lora_te1_") for part, t in pair.items()},
              tmp_path / "both.safetensors")
    with pytest.raises(DiffkitError, match=f"keys lora_te1_{stem}.lora_down.weight and lora_te_{stem}.lora_down.weight "
                                           f"adapt the same text_encoder module") as err:
        read_sd_lora(tmp_path / "both.safetensors")
    assert "\n" not in str(err.value)


def test_lycoris_and_dora_kohya_file_on_an_sd_xl_folder(xl_lora, tmp_path):
    """One kohya / LyCORIS file on the SD-XL folder: a LoHa on the UNet under sd-scripts' SGM names (3x3 resnet
    convs with Tucker cores, to_q, proj_in), a DoRA LoRA on text_encoder (lora_te1_, dora_scale) and a LoKr on
    text_encoder_2 (lora_te2_): the merged networks equal peft's merge of the same adapters (tests/test_sd_lycoris.py
    for each kind against peft on single layers)."""
    import transformers
    from test_sd_lycoris import _diff, _peft_merged, _randomise

    from diffkit.interop.stable_diffusion import load_stable_diffusion
    folder = xl_lora["folder"]
    nets = {"unet": diffusers.UNet2DConditionModel.from_pretrained(folder / "unet"),
            "text_encoder": transformers.CLIPTextModel.from_pretrained(folder / "text_encoder"),
            "text_encoder_2": transformers.CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2")}
    configs = {"unet": peft.LoHaConfig(r=2, alpha=3.0, target_modules=["to_q", "conv1", "proj_in"],
                                       init_weights=False, use_effective_conv2d=True),
               "text_encoder": peft.LoraConfig(r=2, lora_alpha=3.0, use_dora=True, init_lora_weights=False,
                                               target_modules=["q_proj", "fc1"]),
               "text_encoder_2": peft.LoKrConfig(r=1, alpha=2.0, target_modules=["k_proj", "fc2"], init_weights=False,
                                                 decompose_both=True)}
    prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
    names = {"lora_A": "lora_down.weight", "lora_B": "lora_up.weight", "lora_magnitude_vector": "dora_scale"}
    tensors = {}
    for seed, (part, config) in enumerate(configs.items()):
        for module, found in _randomise(nets[part], config, seed).items():
            stem = prefixes[part] + (_sgm(module) if part == "unet" else module).replace(".", "_")
            tensors.update({f"{stem}.{names.get(p, p)}": t for p, t in found.items()})
            tensors[f"{stem}.alpha"] = torch.tensor(float(getattr(config, "alpha", None) or config.lora_alpha))
    assert any(k.startswith("lora_unet_input_blocks_") and k.endswith("hada_t1") for k in tensors)
    save_file(tensors, tmp_path / "lycoris.safetensors")
    xl = load_stable_diffusion(folder, progress=False, lora=[(tmp_path / "lycoris.safetensors", 0.8)])
    for part, network in nets.items():
        assert _diff(xl, _peft_merged(network, 0.8), part) < 1e-5, part
