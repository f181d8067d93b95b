"""Stable Diffusion LoRA files (diffkit.interop.sd_lora, ``diffkit sample --checkpoint SD_FOLDER --lora FILE[:S]``)
against diffusers' own ``load_lora_weights`` + ``fuse_lora`` on a tiny random folder: a LoRA built with peft on
the UNet and the text encoder, saved with ``StableDiffusionPipeline.save_lora_weights`` (diffusers / PEFT
format), and the same weights renamed by kohya's rule (sd-scripts ``networks/lora.py``: ``lora_unet_`` /
``lora_te_`` + the module name with ``.`` -> ``_``; ``lora_down`` = A, ``lora_up`` = B, ``.alpha``)."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffkit.cli import main
from diffkit.errors import DiffkitError

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")
from test_interop_diffusers import relative_error, tiny_sd_components, tiny_sd_pipeline  # noqa: E402

# UNet: attention projections, a 3x3 resnet convolution (conv LoRA) and the 1x1 proj_in; ranks / alphas differ
UNET_LORA = dict(r=4, lora_alpha=8.0, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "proj_in"],
                 rank_pattern={"to_k": 2}, alpha_pattern={"to_v": 3.0})
TEXT_LORA = dict(r=2, lora_alpha=1.0, target_modules=["q_proj", "v_proj", "fc1"])
PROMPTS = ["a photo of a cat", "hot"]
STEPS, GUIDANCE = 3, 5.0


def _add_lora(module, seed, **config):
    """peft's LoRA layers on ``module`` with random non-zero A and B (B is zero at init: a no-op otherwise);
    returns (the adapters' state dict as peft's get_peft_model_state_dict names it, the LoraConfig dict)."""
    config = peft.LoraConfig(init_lora_weights=False, **config)
    peft.inject_adapter_in_model(config, module)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    state = {k.replace(".default.", "."): v.clone() for k, v in module.state_dict().items() if ".lora_" in k}
    return state, config.to_dict()


def save_unet_text_lora(root, unet, text_encoder, seed: int, pipeline_class=None):
    """``root``/lora.safetensors: a diffusers-format LoRA file (:data:`UNET_LORA` on ``unet``, :data:`TEXT_LORA` on
    the CLIP ``text_encoder``, seeds ``seed`` / ``seed`` + 10) saved by ``pipeline_class.save_lora_weights`` (default
    StableDiffusionPipeline's), its text keys named as real files are (text_model.encoder...)."""
    unet_state, unet_config = _add_lora(unet, seed, **UNET_LORA)
    text_state, text_config = _add_lora(text_encoder, seed + 10, **TEXT_LORA)
    prefix = "" if hasattr(text_encoder, "text_model") else "text_model."
    (pipeline_class or diffusers.StableDiffusionPipeline).save_lora_weights(
        root, weight_name="lora.safetensors", unet_lora_layers=unet_state, unet_lora_adapter_metadata=unet_config,
        text_encoder_lora_layers={prefix + k: v for k, v in text_state.items()},
        text_encoder_lora_adapter_metadata=text_config)
    return root / "lora.safetensors"


def fused_transformer_lora(pipeline_class, folder, root, transformer_config: dict, text_encoder=None,
                           scale: float = 0.7, loaded=None):
    """(a diffusers-format LoRA file on ``folder``'s transformer and CLIP ``text_encoder`` (rank / alpha patterns of
    ``transformer_config``, :data:`TEXT_LORA`; None: the transformer only, Lumina2's and AuraFlow's), written by
    ``pipeline_class.save_lora_weights`` into ``root``; the folder's pipeline after its ``load_lora_weights`` +
    ``fuse_lora(lora_scale=scale)``): SD3's and FLUX's. ``loaded``: the folder's pipeline already loaded, whose
    components (a copy of its transformer) make the fused one instead of reading the folder again."""
    index = json.loads((folder / "model_index.json").read_text())
    transformer = getattr(diffusers, index["transformer"][1]).from_pretrained(folder / "transformer",
                                                                              local_files_only=True)
    state, config = _add_lora(transformer, 1, **transformer_config)
    text = {}
    if text_encoder is not None:
        import transformers
        clip = getattr(transformers, index[text_encoder][1]).from_pretrained(folder / text_encoder,
                                                                             local_files_only=True)
        text_state, text_config = _add_lora(clip, 11, **TEXT_LORA)
        prefix = "" if hasattr(clip, "text_model") else "text_model."
        text = {f"{text_encoder}_lora_layers": {prefix + k: v for k, v in text_state.items()},
                f"{text_encoder}_lora_adapter_metadata": text_config}
    pipeline_class.save_lora_weights(
        root, weight_name="lora.safetensors", transformer_lora_layers=state, transformer_lora_adapter_metadata=config,
        **text)
    if loaded is None:
        pipe = pipeline_class.from_pretrained(folder, local_files_only=True)
    else:
        import copy
        pipe = pipeline_class(**{**loaded.components, "transformer": copy.deepcopy(loaded.transformer)})
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(root / "lora.safetensors"))
    pipe.fuse_lora(lora_scale=scale, components=["transformer"] + ([text_encoder] if text_encoder else []))
    pipe.unload_lora_weights()  # the fused weights stay, the adapters go
    return root / "lora.safetensors", pipe


def check_transformer_lora(path, lora, scale, ours, base, pipe, text_to_image, tmp_path, capsys, bad_key, message,
                           size: int = 16):
    """The worst abs difference of ``ours``' transformer (loaded with ``lora`` at ``scale``) from ``pipe``'s after
    ``load_lora_weights`` + ``fuse_lora`` (the LoRA changing ``base``'s by > 1e-2); ``diffkit sample --lora`` on
    ``path`` (``size`` x ``size`` pixels) is ``text_to_image`` of ``ours`` byte for byte; a file with ``bad_key`` is
    one line with ``message``."""
    from diffkit.images import save_grid
    theirs, base = pipe.transformer.state_dict(), base.transformer.state_dict()
    worst = max(float((v - theirs[k]).abs().max()) for k, v in ours.transformer.state_dict().items())
    assert max(float((v - base[k]).abs().max()) for k, v in ours.transformer.state_dict().items()) > 1e-2
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", "hot", "--num", "1", "--steps", "2", "--height",
                 str(size), "--width", str(size), "--lora", f"{lora}:{scale}", "--out", str(out), "--no-progress"]) == 0
    save_grid(text_to_image(ours, ["hot"], steps=2, seed=0, height=size, width=size, output_range="-1,1"),
              tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    save_file({bad_key: torch.zeros(2, 16)}, tmp_path / "bad.safetensors")
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(path), "--prompt", "hot", "--lora", str(tmp_path / "bad.safetensors"),
                 "--out", str(tmp_path / "never.png"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"key {bad_key!r} is not supported on {message}" in err[0], err
    assert not (tmp_path / "never.png").exists()
    return worst


def converted_lora_difference(pipe, model, file, read_loras, kind: str, scale: float = 0.7) -> tuple:
    """(worst abs difference, {parameter: max abs change}) of ``model``'s transformer with the LoRA ``file`` merged
    (``read_loras``: the family's reader, placed by :func:`diffkit.interop.qwen_image_lora.transformer_loras` for the
    ``kind`` transformer) from a copy of ``pipe``'s transformer after ``load_lora_weights`` +
    ``fuse_lora(lora_scale=scale)``: Qwen-Image's and FLUX.2's converted files (a projection diffusers fused for a
    FLUX.2 LoKr, ``to_qkv`` / ``to_added_qkv``, stands for its parts' rows)."""
    import copy
    import types
    from diffkit.interop.qwen_image_lora import transformer_loras
    from diffkit.interop.sd_lora import merge_sd_loras
    theirs = type(pipe)(**{**pipe.components, "transformer": copy.deepcopy(pipe.transformer)})
    theirs.load_lora_weights(str(file))
    theirs.fuse_lora(lora_scale=scale)
    theirs.unload_lora_weights()
    ours = types.SimpleNamespace(transformer=copy.deepcopy(model.transformer))
    merge_sd_loras(ours, transformer_loras(read_loras([(file, scale)]), ours.transformer, kind))
    theirs, base = theirs.transformer.state_dict(), model.transformer.state_dict()
    for key in [k for k in theirs if k.endswith((".to_qkv.weight", ".to_added_qkv.weight"))]:  # fused for a LoKr
        parts = ("to_q", "to_k", "to_v") if ".to_qkv." in key else ("add_q_proj", "add_k_proj", "add_v_proj")
        theirs.update({key.rsplit(".", 2)[0] + f".{p}.weight": rows for p, rows in zip(parts, theirs[key].chunk(3))})
    ours = ours.transformer.state_dict()
    return (max(float((v - theirs[k]).abs().max()) for k, v in ours.items()),
            {k: float((v - base[k]).abs().max()) for k, v in ours.items()})


def assert_lora_refused(load, folder, tmp_path, tensors: dict, expected: str) -> None:
    """``load(folder, lora=[file])`` of a file of ``tensors``: one line holding ``expected``."""
    import re
    save_file(tensors, tmp_path / "bad.safetensors")
    with pytest.raises(DiffkitError, match=re.escape(expected)) as info:
        load(folder, progress=False, lora=[tmp_path / "bad.safetensors"])
    assert "\n" not in str(info.value)


def assert_files_refused(read_loras, tmp_path, cases) -> None:
    """For each (tensors, expected regex) of ``cases``, ``read_loras([file])`` of a file of ``tensors``: one line
    matching ``expected`` (a family's LoRA reader, before any weight is read)."""
    for i, (tensors, expected) in enumerate(cases):
        save_file(tensors, tmp_path / f"refused{i}.safetensors")
        with pytest.raises(DiffkitError, match=expected) as caught:
            read_loras([tmp_path / f"refused{i}.safetensors"])
        assert "\n" not in str(caught.value)


def _kohya(diffusers_file, out, prefixes=None, rename=None):
    """The diffusers-format file renamed to kohya's keys (``prefixes``: component -> key prefix; ``rename``:
    (component, module) -> the module's name in the key), with each module's alpha as ``.alpha``."""
    from safetensors import safe_open
    with safe_open(diffusers_file, "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    prefixes = prefixes or {"unet": "lora_unet_", "text_encoder": "lora_te_"}
    tensors, renamed = load_file(diffusers_file), {}
    for key, value in tensors.items():
        component, _, rest = key.partition(".")
        module, part = rest.rsplit(".lora_", 1)
        name = prefixes[component] + (rename(component, module) if rename else module).replace(".", "_")
        renamed[f"{name}.lora_{'down' if part == 'A.weight' else 'up'}.weight"] = value
        patterns = meta.get(f"{component}.alpha_pattern") or {}
        alpha = next((v for k, v in patterns.items() if module.endswith("." + k)), meta[f"{component}.lora_alpha"])
        renamed[f"{name}.alpha"] = torch.tensor(float(alpha))
    save_file(renamed, out)
    return out


@pytest.fixture(scope="module")
def sd_lora(tmp_path_factory):
    """{"folder", "diffusers": LoRA file, "kohya": the same renamed, "second": another diffusers LoRA}."""
    root = tmp_path_factory.mktemp("sd_lora")
    pipe = tiny_sd_pipeline(root)
    unet, text_encoder = pipe.unet, pipe.text_encoder
    pipe.save_pretrained(root / "sd")  # the base, before any adapter
    out = {"folder": root / "sd"}
    for name, seed, text in (("diffusers", 1, True), ("second", 2, False)):
        if name == "second":  # a fresh copy of the networks for the second adapter
            unet, _, text_encoder, _ = tiny_sd_components(root)
        state, config = _add_lora(unet, seed, **UNET_LORA)
        layers = {"unet_lora_layers": state, "unet_lora_adapter_metadata": config}
        if text:  # named as real files are, text_model.encoder... (transformers 5's CLIPTextModel drops text_model)
            state, config = _add_lora(text_encoder, seed + 10, **TEXT_LORA)
            prefix = "" if hasattr(text_encoder, "text_model") else "text_model."
            layers.update(text_encoder_lora_layers={prefix + k: v for k, v in state.items()},
                          text_encoder_lora_adapter_metadata=config)
        diffusers.StableDiffusionPipeline.save_lora_weights(root / name, weight_name="lora.safetensors", **layers)
        out[name] = root / name / "lora.safetensors"
    out["kohya"] = _kohya(out["diffusers"], root / "kohya.safetensors")
    return out


def _latents():
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))


def fuse_loras(pipe, loras):
    """``loras`` [(file, scale)] loaded into the diffusers ``pipe`` and fused: one file with
    ``fuse_lora(lora_scale)``, several as ``set_adapters`` + ``fuse_lora`` (SD and SD-XL pipelines)."""
    names = []
    for i, (path, _) in enumerate(loras):
        pipe.load_lora_weights(str(path), adapter_name=f"a{i}")
        names.append(f"a{i}")
    if len(loras) == 1:
        pipe.fuse_lora(lora_scale=loras[0][1])
    elif loras:
        pipe.set_adapters(names, [s for _, s in loras])
        pipe.fuse_lora()


def _theirs(folder, loras):
    """diffusers' pipeline z_0 with ``loras`` [(file, scale)] loaded and fused (DDIM, the folder's config)."""
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    fuse_loras(pipe, loras)
    with torch.no_grad():
        return pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=_latents(), eta=0.0,
                    output_type="latent").images


def _ours(folder, loras):
    from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image
    sd = load_stable_diffusion(folder, progress=False, lora=loras)
    return text_to_image(sd, PROMPTS, sampler="ddim", steps=STEPS, grid="scheduler", guidance_scale=GUIDANCE,
                         latents=_latents(), eta=0.0, return_latents=True)


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_lora_file_matches_diffusers_load_lora_weights_and_fuse(sd_lora, fmt, scale):
    """Both files hold the same adapters: each equals diffusers' pipeline with the diffusers file
    loaded and fused (diffusers 0.42's own kohya converter drops a text encoder's q/k/v/out adapters
    under transformers 5 and per-module alphas that differ: see the test below for what it gets right)."""
    ours = _ours(sd_lora["folder"], [(sd_lora[fmt], scale)])
    theirs = _theirs(sd_lora["folder"], [(sd_lora["diffusers"], scale)])
    assert relative_error(ours, theirs) < 1e-5
    assert relative_error(ours, _theirs(sd_lora["folder"], [])) > 1e-2  # the LoRA matters


def test_kohya_file_matches_diffusers_own_kohya_converter(sd_lora, tmp_path):
    """A kohya UNet file with one alpha for every module, where diffusers' converter is sound: the
    same z_0 as diffusers loading that very file (not a renaming of ours)."""
    tensors = load_file(sd_lora["kohya"])
    unet = {k: (torch.tensor(6.0) if k.endswith(".alpha") else v) for k, v in tensors.items()
            if k.startswith("lora_unet_")}
    save_file(unet, tmp_path / "kohya_unet.safetensors")
    loras = [(tmp_path / "kohya_unet.safetensors", 0.8)]
    assert relative_error(_ours(sd_lora["folder"], loras), _theirs(sd_lora["folder"], loras)) < 1e-5


def test_each_part_of_the_file_matters(sd_lora, tmp_path):
    """The text encoder's adapters and the UNet's each change z_0 (so a loader ignoring one fails the
    test above), and the files' own rank / alpha vary by module (rank_pattern, alpha_pattern)."""
    tensors = load_file(sd_lora["diffusers"])
    shapes = {k: v.shape[0] for k, v in tensors.items() if k.endswith("lora_A.weight")}
    assert {2, 4} <= set(shapes.values()) and any(k.startswith("text_encoder.") for k in shapes)
    assert any(v.ndim == 4 and v.shape[-1] == 3 for v in tensors.values())  # a conv LoRA
    base = _ours(sd_lora["folder"], [])
    for part in ("unet.", "text_encoder."):
        only = tmp_path / f"{part}safetensors"
        save_file({k: v for k, v in tensors.items() if k.startswith(part)}, only)
        assert relative_error(_ours(sd_lora["folder"], [(only, 1.0)]), base) > 1e-3, part


def test_rslora_metadata_scales_by_alpha_over_sqrt_r(sd_lora, tmp_path):
    """``use_rslora`` in the file's LoraConfig (Kalajdzievski 2023): peft scales by alpha / sqrt(r); so do we."""
    from safetensors import safe_open
    with safe_open(sd_lora["diffusers"], "pt") as f:
        header = f.metadata()
    config = json.loads(header["lora_adapter_metadata"])
    config.update({"unet.use_rslora": True, "text_encoder.use_rslora": True})
    save_file(load_file(sd_lora["diffusers"]), tmp_path / "rs.safetensors",
              metadata={**header, "lora_adapter_metadata": json.dumps(config)})
    loras = [(tmp_path / "rs.safetensors", 0.5)]
    ours = _ours(sd_lora["folder"], loras)
    assert relative_error(ours, _theirs(sd_lora["folder"], loras)) < 1e-5
    assert relative_error(ours, _ours(sd_lora["folder"], [(sd_lora["diffusers"], 0.5)])) > 1e-3


def test_files_without_alphas_scale_each_module_by_one_as_diffusers(sd_lora, tmp_path):
    """A diffusers file without ``lora_adapter_metadata`` (as diffusers' training scripts wrote them before it
    existed) and a kohya file without ``.alpha`` keys: alpha = r for each module (diffusers' get_peft_kwargs;
    sd-scripts' create_network_from_weights), with ranks 4 and 2 in the same file."""
    save_file(load_file(sd_lora["diffusers"]), tmp_path / "plain.safetensors")  # no metadata
    save_file({k: v for k, v in load_file(sd_lora["kohya"]).items() if not k.endswith(".alpha")},
              tmp_path / "kohya.safetensors")
    theirs = _theirs(sd_lora["folder"], [(tmp_path / "plain.safetensors", 0.5)])
    for name in ("plain", "kohya"):
        assert relative_error(_ours(sd_lora["folder"], [(tmp_path / f"{name}.safetensors", 0.5)]), theirs) < 1e-5, name


# kohya key stems as sd-scripts' networks/lora.py writes them for an SD 1.x UNet and CLIP text encoder (written
# out, not derived), with the layer's (out, in, kernel; 0 = Linear) in the tiny folder: feed-forward, proj_out,
# cross-attention, time embedding, a stride-2 conv, 1x1 shortcut, up-sampler, conv_in / conv_out
KOHYA_UNET = {
    "lora_unet_conv_in": (32, 4, 3), "lora_unet_time_embedding_linear_1": (128, 32, 0),
    "lora_unet_down_blocks_0_attentions_0_proj_out": (32, 32, 1),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (32, 32, 0),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj": (256, 32, 0),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2": (32, 128, 0),
    "lora_unet_down_blocks_0_resnets_0_time_emb_proj": (32, 128, 0),
    "lora_unet_down_blocks_0_downsamplers_0_conv": (32, 32, 3),
    "lora_unet_down_blocks_1_resnets_0_conv2": (64, 64, 3),
    "lora_unet_down_blocks_1_resnets_0_conv_shortcut": (64, 32, 1),
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v": (64, 32, 0),
    "lora_unet_up_blocks_0_upsamplers_0_conv": (64, 64, 3),
    "lora_unet_up_blocks_1_attentions_1_transformer_blocks_0_attn1_to_out_0": (32, 32, 0),
    "lora_unet_conv_out": (4, 32, 3)}
KOHYA_TEXT = {  # kohya stem: (the diffusers / PEFT module name, out, in)
    "lora_te_text_model_encoder_layers_1_self_attn_k_proj": ("text_model.encoder.layers.1.self_attn.k_proj", 32, 32),
    "lora_te_text_model_encoder_layers_1_self_attn_out_proj":
        ("text_model.encoder.layers.1.self_attn.out_proj", 32, 32),
    "lora_te_text_model_encoder_layers_0_mlp_fc2": ("text_model.encoder.layers.0.mlp.fc2", 32, 37)}


def test_kohya_names_of_every_layer_kind(sd_lora, tmp_path):
    """One kohya file (UNet: rank 4, alpha 3; text encoder: rank 2, no .alpha) on the layers above equals
    diffusers with its UNet part loaded through diffusers' own kohya converter and its text encoder part
    as a diffusers file (the PEFT names above; diffusers' converter mishandles the text encoder, see above)."""
    gen = torch.Generator().manual_seed(3)
    unet, text, peft_text = {}, {}, {}
    for stem, (out, inp, k) in KOHYA_UNET.items():
        kernel = (k, k) if k else ()
        unet[f"{stem}.lora_down.weight"] = torch.randn(4, inp, *kernel, generator=gen) * 0.2
        unet[f"{stem}.lora_up.weight"] = torch.randn(out, 4, *((1, 1) if k else ()), generator=gen) * 0.2
        unet[f"{stem}.alpha"] = torch.tensor(3.0)
    for stem, (module, out, inp) in KOHYA_TEXT.items():
        text[f"{stem}.lora_down.weight"] = down = torch.randn(2, inp, generator=gen) * 0.5
        text[f"{stem}.lora_up.weight"] = up = torch.randn(out, 2, generator=gen) * 0.5
        peft_text.update({f"text_encoder.{module}.lora_A.weight": down, f"text_encoder.{module}.lora_B.weight": up})
    save_file({**unet, **text}, tmp_path / "kohya.safetensors")
    save_file(unet, tmp_path / "kohya_unet.safetensors")
    save_file(peft_text, tmp_path / "peft_text.safetensors")
    ours = _ours(sd_lora["folder"], [(tmp_path / "kohya.safetensors", 0.6)])
    theirs = _theirs(sd_lora["folder"], [(tmp_path / "kohya_unet.safetensors", 0.6),
                                         (tmp_path / "peft_text.safetensors", 0.6)])
    assert relative_error(ours, theirs) < 1e-5


def test_scale_zero_is_no_lora_and_two_files_add(sd_lora):
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    base = load_stable_diffusion(sd_lora["folder"], progress=False)
    zero = load_stable_diffusion(sd_lora["folder"], progress=False,
                                 lora=[(sd_lora["diffusers"], 0.0), (sd_lora["kohya"], 0)])
    for part in ("unet", "text_encoder"):
        a, b = getattr(base, part).state_dict(), getattr(zero, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    loras = [(sd_lora["diffusers"], 0.7), (sd_lora["second"], -0.4)]
    assert relative_error(_ours(sd_lora["folder"], loras), _theirs(sd_lora["folder"], loras)) < 1e-5


def _sample(folder, out, *extra):
    return main(["sample", "--checkpoint", str(folder), "--prompt", "hot", "--num", "1", "--steps", "2",
                 "--out", str(out), "--no-progress", "--device", "cpu", *map(str, extra)])


def test_sample_command_merges_lora_files(sd_lora, tmp_path):
    """`diffkit sample --lora FILE:S` on a folder: the grid of text_to_image on the merged folder."""
    from diffkit.images import save_grid
    from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image
    loras = [(sd_lora["kohya"], 0.5), (sd_lora["second"], 1.0)]
    assert _sample(sd_lora["folder"], tmp_path / "s.png", "--lora", f"{loras[0][0]}:0.5", "--lora", loras[1][0]) == 0
    sd = load_stable_diffusion(sd_lora["folder"], progress=False, lora=loras)
    save_grid(text_to_image(sd, ["hot"], steps=2, seed=0, output_range="-1,1"), tmp_path / "expected.png", 8)
    assert (tmp_path / "s.png").read_bytes() == (tmp_path / "expected.png").read_bytes()


def test_bad_lora_files_are_one_line_errors_before_output(sd_lora, tmp_path, capsys):
    tensors = load_file(sd_lora["kohya"])
    down = next(k for k in tensors if k.startswith("lora_unet_") and k.endswith("to_q.lora_down.weight"))
    module = down[:-len(".lora_down.weight")]
    absent = module.replace("down_blocks_0", "down_blocks_7")  # a block the tiny UNet does not have
    bad = {"unknown": {**tensors, "lora_unet_x.a1.weight": torch.zeros(2, 2)},  # GLoRA
           "sdxl": {**tensors, **{f"lora_te2_text_model_x.lora_{p}.weight": torch.zeros(2, 2) for p in ("down", "up")}},
           "absent": {**tensors, **{f"{absent}.{part}": tensors[f"{module}.{part}"].clone()
                                    for part in ("lora_down.weight", "lora_up.weight", "alpha")}},
           "shape": {**tensors, down: torch.zeros(tensors[down].shape[0], 5)},
           "loha_partner": {**tensors, "lora_unet_conv_in.hada_w1_a": torch.zeros(32, 2)},  # tests/test_sd_lycoris.py
           "no_up": {k: v for k, v in tensors.items() if k != down.replace("lora_down", "lora_up")},
           "kohya_alpha_zero": {**tensors, f"{module}.alpha": torch.tensor(0.0)},  # sd-scripts: r, diffusers: 0
           "twice": {**tensors, **{k.replace("lora_te_text_model_", "lora_te_"): v.clone() for k, v in tensors.items()
                                   if k.startswith("lora_te_text_model_")}}}  # transformers 4 and 5 names
    for name, value in bad.items():
        save_file(value, tmp_path / f"{name}.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    for name, config in (("alpha_text", {"unet.lora_alpha": "abc"}), ("pattern", {"unet.alpha_pattern": {"to_q(": 2}}),
                         ("alpha_zero", {"text_encoder.lora_alpha": 0})):  # corrupt peft LoraConfig metadata
        save_file(load_file(sd_lora["diffusers"]), tmp_path / f"{name}.safetensors",
                  metadata={"lora_adapter_metadata": json.dumps(config)})
    for name, needle in (("missing", "does not exist"), ("junk", "is not a safetensors LoRA file"),
                         ("unknown", "key 'lora_unet_x.a1.weight' is not supported"),
                         ("sdxl", "adapts SD-XL's second text encoder (lora_te2_... keys); this folder has one"),
                         ("absent", "names no Linear or Conv2d layer of the unet"),
                         ("shape", "does not fit this network"), ("no_up", "has no lora_B / lora_up matrix"),
                         ("loha_partner", "unet module conv_in has hada_w1_a but no hada_w1_b"),
                         ("alpha_text", "unet.lora_alpha is 'abc'; allowed: one positive number"),
                         ("pattern", "unet.alpha_pattern key 'to_q(' is not a regular expression"),
                         ("alpha_zero", "text_encoder.lora_alpha is 0; allowed: one positive number"),
                         ("kohya_alpha_zero", ".alpha is 0.0; allowed: one positive number"),
                         ("twice", "two text_encoder keys name the layer encoder.layers.")):
        out = tmp_path / "o" / "s.png"
        code = _sample(sd_lora["folder"], out, "--lora", tmp_path / f"{name}.safetensors")
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0], (name, err)
        assert not (tmp_path / "o").exists(), name
    assert _sample(sd_lora["folder"], tmp_path / "o" / "s.png", "--lora", sd_lora["kohya"], "--lora-any-base") == 2
    assert "--lora-any-base applies to diffkit adapter files" in capsys.readouterr().err


def test_a_failed_merge_leaves_the_networks_as_they_were(sd_lora, tmp_path):
    """The first file merged, the second's UNet part merged, its text encoder part does not fit: every
    change is put back (the first file on the second's UNet layers, or on one other layer only)."""
    from diffkit.interop.sd_lora import merge_sd_loras, read_sd_loras
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    tensors = load_file(sd_lora["diffusers"])
    key = next(k for k in tensors if k.startswith("text_encoder.") and k.endswith("lora_B.weight"))
    save_file({**tensors, key: torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])},
              tmp_path / "bad.safetensors")
    kohya = load_file(sd_lora["kohya"])
    stem = next(k for k in kohya if k.endswith("attn1_to_q.alpha"))[:-len("alpha")]
    save_file({k: v for k, v in kohya.items() if k.startswith(stem)}, tmp_path / "one.safetensors")
    sd = load_stable_diffusion(sd_lora["folder"], progress=False)
    before = {p: {k: v.clone() for k, v in getattr(sd, p).state_dict().items()} for p in ("unet", "text_encoder")}
    for first in (sd_lora["kohya"], tmp_path / "one.safetensors"):
        with pytest.raises(DiffkitError, match="does not fit"):
            merge_sd_loras(sd, read_sd_loras([first, tmp_path / "bad.safetensors"]))
        for part, state in before.items():
            now = getattr(sd, part).state_dict()
            assert now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state), (first, part)


def test_edit_command_merges_lora_files_as_the_img2img_pipeline(sd_lora, tmp_path, capsys):
    """``diffkit edit --checkpoint SD --lora FILE:0.5``: StableDiffusionImg2ImgPipeline with the file loaded
    and fused at 0.5 (to the PNGs' 1/255), as tests/test_latent_editing.py compares without LoRA."""
    import numpy as np
    from PIL import Image
    from test_latent_editing import _generators, write_pngs
    pngs = write_pngs(tmp_path / "in", 2, 16, "RGB")
    assert main(["edit", "--no-progress", "--device", "cpu", "--checkpoint", str(sd_lora["folder"]), "--images",
                 str(pngs), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--strength", "0.5", "--steps", "4",
                 "--spacing", "leading", "--final", "zero", "--guidance-scale", "5", "--guidance-convention",
                 "diffusers", "--seed", "10", "--lora", f"{sd_lora['kohya']}:0.5", "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(sd_lora["folder"], local_files_only=True,
                                                                    safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, steps_offset=0, set_alpha_to_one=True)
    pipe.load_lora_weights(str(sd_lora["diffusers"]))
    pipe.fuse_lora(lora_scale=0.5)
    image = torch.stack([torch.from_numpy(np.array(Image.open(pngs / f"in_{i}.png"))).permute(2, 0, 1)
                         for i in range(2)]).float() / 255
    with torch.no_grad():
        theirs = pipe(PROMPTS, image=image, strength=0.5, num_inference_steps=4, guidance_scale=5.0, eta=0.0,
                      output_type="np", generator=_generators()).images
    ours = np.stack([np.asarray(Image.open(tmp_path / "out" / f"edit_{i:05d}.png")) for i in range(2)])
    assert np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1


# The tiny SD 1.x UNet's layers under their LDM names (openaimodel.py; layers_per_block 1, down 0 = resnet +
# attention + downsampler, down 1 = resnet; up 0 = two resnets then the upsampler at .1 (no attention), up 1 = two
# resnets + attentions), written out by hand: some SD 1.x kohya files (converted from LDM checkpoints) name these
LDM_SD1 = {"conv_in": "input_blocks_0_0", "down_blocks.0.resnets.0.conv1": "input_blocks_1_0_in_layers_2",
           "down_blocks.0.attentions.0.proj_in": "input_blocks_1_1_proj_in",
           "down_blocks.0.downsamplers.0.conv": "input_blocks_2_0_op",
           "down_blocks.1.resnets.0.conv_shortcut": "input_blocks_3_0_skip_connection",
           "mid_block.attentions.0.transformer_blocks.0.attn2.to_k": "middle_block_1_transformer_blocks_0_attn2_to_k",
           "mid_block.resnets.1.time_emb_proj": "middle_block_2_emb_layers_1",
           "up_blocks.0.upsamplers.0.conv": "output_blocks_1_1_conv",
           "up_blocks.1.resnets.0.conv2": "output_blocks_2_0_out_layers_3",
           "up_blocks.1.attentions.1.transformer_blocks.0.ff.net.0.proj":
               "output_blocks_3_1_transformer_blocks_0_ff_net_0_proj",
           "time_embedding.linear_1": "time_embed_0", "conv_out": "out_2"}


def test_kohya_ldm_names_on_an_sd1_folder(sd_lora, tmp_path):
    """A kohya UNet file under LDM names on an SD 1.x folder (an attention-less up block's upsampler at
    output_blocks.i.1.conv, which diffusers 0.42's converter maps to a missing up_blocks.1.1.conv and refuses)
    equals diffusers loading the same adapters under sd-scripts' SD 1.x (diffusers) names through its own kohya
    converter."""
    unet = diffusers.UNet2DConditionModel.from_pretrained(sd_lora["folder"] / "unet")
    modules, gen, ldm, named = dict(unet.named_modules()), torch.Generator().manual_seed(5), {}, {}
    for module, stem in LDM_SD1.items():
        layer = modules[module]
        conv = isinstance(layer, torch.nn.Conv2d)
        inp, out = (layer.in_channels, layer.out_channels) if conv else (layer.in_features, layer.out_features)
        pair = {"lora_down.weight": torch.randn(3, inp, *(layer.kernel_size if conv else ()), generator=gen),
                "lora_up.weight": torch.randn(out, 3, *((1, 1) if conv else ()), generator=gen) * 0.1,
                "alpha": torch.tensor(2.0)}
        for table, name in ((ldm, stem), (named, module.replace(".", "_"))):
            table.update({f"lora_unet_{name}.{part}": value for part, value in pair.items()})
    save_file(ldm, tmp_path / "ldm.safetensors")
    save_file(named, tmp_path / "named.safetensors")
    ours = _ours(sd_lora["folder"], [(tmp_path / "ldm.safetensors", 0.7)])
    assert relative_error(ours, _theirs(sd_lora["folder"], [(tmp_path / "named.safetensors", 0.7)])) < 1e-5
    assert relative_error(ours, _theirs(sd_lora["folder"], [])) > 1e-2  # the LoRA matters
