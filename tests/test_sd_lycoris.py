"""LyCORIS LoHa / LoKr and DoRA adapters in Stable Diffusion LoRA files (diffkit.interop.lycoris through
diffkit.interop.sd_lora): the merged weights against peft's own LoHa / LoKr layers and its DoRA LoRA
(``LoraConfig(use_dora=True)``), merged by peft with the same scale, on Linear, 1x1 and 3x3 Conv2d layers; a
tiny SD UNet and text encoder file round trip against diffusers' ``load_lora_weights`` + ``fuse_lora``."""
import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from diffkit.errors import DiffkitError

peft = pytest.importorskip("peft")
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402

PARTS = ("hada_", "lokr_", "lora_A", "lora_B", "lora_magnitude_vector")


class Toy(torch.nn.Module):
    """A Linear, a 1x1 and a 3x3 Conv2d (out = 12 = 3 x 4, in = 16 / 8: LoKr factorises both)."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.lin, self.c1, self.c3 = torch.nn.Linear(16, 12), torch.nn.Conv2d(8, 12, 1), torch.nn.Conv2d(8, 12, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))


def _peft(config, seed=1):
    """A Toy with peft's adapters of ``config`` on all three layers, random non-zero; returns (toy, {module:
    {part: tensor}})."""
    toy = Toy()
    peft.inject_adapter_in_model(config, toy)
    gen = torch.Generator().manual_seed(seed)
    parts = {}
    with torch.no_grad():
        for name, p in toy.named_parameters():
            if any(k in name for k in PARTS):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + (1.0 if "magnitude" in name else 0.0))
                module, part = name.split(".")[0], name.split(".")[1]
                parts.setdefault(module, {})[part] = p.detach().clone()
    return toy, parts


def _peft_merged(toy, scale):
    """{module: weight} after peft scales each adapter by ``scale`` (diffusers' fuse_lora) and merges it."""
    out = {}
    for name, layer in toy.named_modules():
        if isinstance(layer, BaseTunerLayer):
            layer.scale_layer(scale)
            layer.merge()
            out[name] = layer.get_base_layer().weight.detach().clone()
    return out


def _ours(path, scale, component="text_encoder"):
    """{module: weight} of a plain Toy with the file merged at ``scale`` by diffkit's SD LoRA loader."""
    from diffkit.interop.sd_lora import merge_sd_loras, read_sd_loras
    toy = Toy()
    merge_sd_loras(SimpleNamespace(**{component: toy}), read_sd_loras([(path, scale)]))
    return {n: getattr(toy, n).weight.detach().clone() for n in ("lin", "c1", "c3")}


def _kohya_file(parts, path, alpha=None, rename=None):
    """``parts`` ({module: {peft part: tensor}}) as a kohya / LyCORIS file (lora_te_<module>.<part>)."""
    names = {"lora_A": "lora_down.weight", "lora_B": "lora_up.weight", "lora_magnitude_vector": "dora_scale"}
    tensors = {}
    for module, found in parts.items():
        for part, t in found.items():
            tensors[f"lora_te_{module}.{names.get(part, part)}"] = rename(part, t) if rename else t
        if alpha is not None:
            tensors[f"lora_te_{module}.alpha"] = torch.tensor(float(alpha))
    save_file(tensors, path)
    return path


def _max_diff(ours, theirs):
    return max((ours[k] - theirs[k]).abs().max().item() for k in theirs)


LOHA = [dict(r=2, alpha=3.0), dict(r=3, alpha=1.5, use_effective_conv2d=True)]  # t1 / t2 on the 3x3 conv
LOKR = [dict(r=1, alpha=3.0, decompose_both=True),  # w1_a w1_b, w2_a w2_b
        dict(r=1, alpha=3.0, use_effective_conv2d=True),  # w1, w2_a w2_b (t2 on the 3x3 conv)
        dict(r=8, alpha=8.0)]  # w1 and w2 full matrices: scale 1 (LyCORIS), peft alpha / r: alpha = r here


@pytest.mark.parametrize("kind,config", [("loha", c) for c in LOHA] + [("lokr", c) for c in LOKR])
@pytest.mark.parametrize("scale", [1.0, -0.7])
def test_loha_lokr_match_peft(tmp_path, kind, config, scale):
    make = peft.LoHaConfig if kind == "loha" else peft.LoKrConfig
    toy, parts = _peft(make(target_modules=["lin", "c1", "c3"], init_weights=False, **config))
    theirs = _peft_merged(toy, scale)
    full = config["r"] == 8  # a LoKr of full matrices ignores its alpha (LyCORIS): any alpha, same weights
    path = _kohya_file(parts, tmp_path / "f.safetensors", alpha=17.0 if full else config["alpha"])
    ours = _ours(path, scale)
    assert _max_diff(ours, theirs) < 1e-5, _max_diff(ours, theirs)
    assert all((ours[k] - Toy().state_dict()[f"{k}.weight"]).abs().max() > 0.05 for k in ours)
    assert set(parts["c3"]) >= ({"hada_t1", "hada_t2"} if kind == "loha" else {"lokr_t2"}) or \
        not config.get("use_effective_conv2d")


@pytest.mark.parametrize("scale", [1.0, 0.6])
def test_dora_matches_peft_in_both_file_formats(tmp_path, scale):
    """peft's DoRA LoRA merged at ``scale``: a diffusers-format file (lora_magnitude_vector, peft's shapes) and
    a kohya one (dora_scale: peft's shapes and LyCORIS' output-axis (out, 1, ...) shape)."""
    toy, parts = _peft(peft.LoraConfig(r=2, lora_alpha=5.0, use_dora=True, init_lora_weights=False,
                                       target_modules=["lin", "c1", "c3"]))
    theirs = _peft_merged(toy, scale)
    tensors = {f"text_encoder.{m}.{p}{'' if p == 'lora_magnitude_vector' else '.weight'}": t
               for m, found in parts.items() for p, t in found.items()}
    meta = {"lora_adapter_metadata": json.dumps({"text_encoder.lora_alpha": 5.0, "text_encoder.r": 2,
                                                 "text_encoder.use_dora": True})}
    save_file(tensors, tmp_path / "diffusers.safetensors", metadata=meta)
    peft_shape = _kohya_file(parts, tmp_path / "kohya.safetensors", alpha=5.0)
    out_axis = _kohya_file(parts, tmp_path / "kohya_out.safetensors", alpha=5.0, rename=lambda p, t: t.reshape(
        t.numel(), *[1] * (3 if t.ndim == 4 else 1)) if p == "lora_magnitude_vector" else t)
    for path, tol in ((tmp_path / "diffusers.safetensors", 1e-5), (peft_shape, 1e-5), (out_axis, 1e-5)):
        assert _max_diff(_ours(path, scale), theirs) < tol, (path.name, _max_diff(_ours(path, scale), theirs))


def test_lycoris_input_axis_dora_scale_is_the_closed_form(tmp_path):
    """LyCORIS' default dora_scale (1, in, ...): W' = m (W0 + s dW) / (||W0 + s dW|| over output channels and
    kernel, per input channel, + eps), on a LoHa (LyCORIS allows DoRA on LoHa / LoKr too)."""
    toy, parts = _peft(peft.LoHaConfig(r=2, alpha=3.0, target_modules=["lin", "c1", "c3"], init_weights=False))
    merged = _peft_merged(toy, 0.5)  # W0 + s dW
    gen = torch.Generator().manual_seed(5)
    for m, w in merged.items():
        parts[m]["dora_scale"] = torch.rand(w.shape[1], generator=gen).reshape(1, -1, *[1] * (w.ndim - 2)) + 0.5
    ours = _ours(_kohya_file(parts, tmp_path / "f.safetensors", alpha=3.0), 0.5)
    for m, w in merged.items():
        norm = w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1).reshape(1, -1, *[1] * (w.ndim - 2))
        expected = w * parts[m]["dora_scale"] / (norm + torch.finfo(torch.float32).eps)
        assert (ours[m] - expected).abs().max() < 1e-5


def test_scale_zero_leaves_the_weights_bit_for_bit(tmp_path):
    for config in (peft.LoKrConfig(r=1, alpha=2.0, decompose_both=True, target_modules=["lin", "c3"]),
                   peft.LoraConfig(r=2, use_dora=True, init_lora_weights=False, target_modules=["lin", "c3"])):
        _, parts = _peft(config)
        ours = _ours(_kohya_file(parts, tmp_path / "f.safetensors"), 0.0)
        assert all(torch.equal(ours[k], Toy().state_dict()[f"{k}.weight"]) for k in ours)


def test_bad_lycoris_files_are_one_line_errors_and_change_nothing(tmp_path):
    from diffkit.interop.sd_lora import merge_sd_loras, read_sd_loras
    _, loha = _peft(peft.LoHaConfig(r=2, alpha=3.0, target_modules=["lin", "c3"], init_weights=False))
    _, lokr = _peft(peft.LoKrConfig(r=1, alpha=3.0, decompose_both=True, target_modules=["lin"]))
    _, dora = _peft(peft.LoraConfig(r=2, use_dora=True, init_lora_weights=False, target_modules=["lin"]))
    cases = {
        "partner": ({"lin": {k: v for k, v in loha["lin"].items() if k != "hada_w2_b"}},
                    "has hada_w2_a but no hada_w2_b"),
        "shape": ({"lin": {**loha["lin"], "hada_w2_b": torch.zeros(2, 15)}}, "(12, 16), hada_w2_a hada_w2_b (12, 15)"),
        "chain": ({"lin": {**loha["lin"], "hada_w1_b": torch.zeros(3, 16)}},
                  "hada_w1_a (12, 2) and hada_w1_b (3, 16) do not multiply"),
        "lokr_shape": ({"lin": {**lokr["lin"], "lokr_w2_b": torch.zeros(1, 5)}}, "does not fit this network"),
        "lokr_both": ({"lin": {**lokr["lin"], "lokr_w1": torch.zeros(3, 4)}}, "has lokr_w1 and its factors"),
        "mixed": ({"lin": {**loha["lin"], **lokr["lin"]}}, "has both LoHa and LoKr tensors"),
        "magnitude": ({"lin": {**dora["lin"], "lora_magnitude_vector": torch.ones(7)}},
                      "dora_scale has shape (7,); allowed: (12,) or (12, 1) or (1, 16)"),
        "magnitude_only": ({"lin": {"lora_magnitude_vector": torch.ones(12)}}, "has a DoRA magnitude but no LoRA"),
        "tucker": ({"c3": loha["c3"], "lin": {**loha["lin"], "hada_t1": torch.zeros(2, 2, 1, 1)}},
                   "has hada_t1 but no hada_t2"),
    }
    for name, (parts, needle) in cases.items():
        path = _kohya_file(parts, tmp_path / f"{name}.safetensors")
        toy = Toy()
        with pytest.raises(DiffkitError) as err:
            merge_sd_loras(SimpleNamespace(text_encoder=toy), read_sd_loras([path]))
        assert needle in str(err.value) and "\n" not in str(err.value), (name, str(err.value))
        assert all(torch.equal(v, Toy().state_dict()[k]) for k, v in toy.state_dict().items()), name


# a tiny SD folder: LoHa / LoKr made with peft on its UNet and text encoder (kohya / LyCORIS names), DoRA LoRA
# saved by StableDiffusionPipeline.save_lora_weights (diffusers / PEFT) and loaded by diffusers itself
UNET_TARGETS = ["to_q", "to_v", "conv1", "proj_in", "conv_shortcut"]  # Linear, 3x3, 1x1 Conv2d
TEXT_TARGETS = ["q_proj", "fc1"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    pytest.importorskip("diffusers")
    from test_interop_diffusers import tiny_sd_pipeline
    root = tmp_path_factory.mktemp("sd_lycoris")
    tiny_sd_pipeline(root).save_pretrained(root / "sd")
    return root / "sd"


def _networks(folder):
    import diffusers
    import transformers
    return (diffusers.UNet2DConditionModel.from_pretrained(folder / "unet"),
            transformers.CLIPTextModel.from_pretrained(folder / "text_encoder"))


def _randomise(network, config, seed):
    """peft's adapters of ``config`` on ``network``, random (magnitudes near 1); {module: {part: tensor}}."""
    peft.inject_adapter_in_model(config, network)
    gen, parts = torch.Generator().manual_seed(seed), {}
    with torch.no_grad():
        for name, p in network.named_parameters():
            if any(k in name for k in PARTS):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if "magnitude" in name else 0.0))
                module, part = name.split(".default")[0].rsplit(".", 1)
                parts.setdefault(module, {})[part] = p.detach().clone()
    return parts


def _diff(sd, theirs, component):
    mods = dict(getattr(sd, component).named_modules())
    return max((mods[n].weight - w).abs().max().item() for n, w in theirs.items())


def test_loha_unet_and_lokr_text_encoder_file_on_a_tiny_sd_folder(tiny_folder, tmp_path):
    """A kohya / LyCORIS file with a LoHa on the UNet (3x3 resnet convs with Tucker factors, 1x1 proj_in and
    conv_shortcut, attention Linears) and a LoKr on the text encoder, under sd-scripts' key names: the folder's
    networks after diffkit merges it equal peft's merge of the same adapters."""
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    unet, text = _networks(tiny_folder)
    loha = _randomise(unet, peft.LoHaConfig(r=2, alpha=3.0, target_modules=UNET_TARGETS, init_weights=False,
                                            use_effective_conv2d=True), 1)
    lokr = _randomise(text, peft.LoKrConfig(r=1, alpha=2.0, target_modules=TEXT_TARGETS, init_weights=False,
                                            decompose_both=True), 2)
    text_prefix = "lora_te_" + ("" if hasattr(text, "text_model") else "text_model_")
    tensors = {}
    for prefix, parts, alpha in (("lora_unet_", loha, 3.0), (text_prefix, lokr, 2.0)):
        for module, found in parts.items():
            stem = prefix + module.replace(".", "_")
            tensors.update({f"{stem}.{p}": t for p, t in found.items()}, **{f"{stem}.alpha": torch.tensor(alpha)})
    assert any(k.endswith("hada_t1") for k in tensors) and any(k.endswith("lokr_w1_a") for k in tensors)
    save_file(tensors, tmp_path / "lycoris.safetensors")
    sd = load_stable_diffusion(tiny_folder, progress=False, lora=[tmp_path / "lycoris.safetensors"])
    assert _diff(sd, _peft_merged(unet, 1.0), "unet") < 1e-5
    assert _diff(sd, _peft_merged(text, 1.0), "text_encoder") < 1e-5


def test_dora_file_equals_diffusers_load_lora_weights_and_fuse(tiny_folder, tmp_path, scale=0.5):
    """DoRA adapters (peft use_dora) on the UNet and text encoder, saved by save_lora_weights: diffkit's merged
    UNet equals diffusers' after load_lora_weights + fuse_lora(lora_scale=0.5) + unload_lora_weights, its text
    encoder peft's merge at that scale (diffusers 0.42 with transformers 5 does not load a text encoder's
    lora_magnitude_vector keys: its load report lists them as unexpected and m is re-initialised)."""
    import diffusers
    from peft.utils import get_peft_model_state_dict

    from diffkit.interop.stable_diffusion import load_stable_diffusion
    unet, text = _networks(tiny_folder)
    base, layers = {k: v.clone() for k, v in unet.state_dict().items()}, {}
    for network, name, targets, seed in ((unet, "unet", UNET_TARGETS, 3), (text, "text_encoder", TEXT_TARGETS, 4)):
        config = peft.LoraConfig(r=2, lora_alpha=3.0, use_dora=True, init_lora_weights=False, target_modules=targets)
        _randomise(network, config, seed)
        layers[f"{name}_lora_layers"] = get_peft_model_state_dict(network)
        layers[f"{name}_lora_adapter_metadata"] = config.to_dict()
    assert any("lora_magnitude_vector" in k for k in layers["unet_lora_layers"])
    diffusers.StableDiffusionPipeline.save_lora_weights(tmp_path, weight_name="dora.safetensors", **layers)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_folder, local_files_only=True, safety_checker=None)
    pipe.load_lora_weights(str(tmp_path / "dora.safetensors"))
    pipe.fuse_lora(lora_scale=scale)
    pipe.unload_lora_weights()
    sd = load_stable_diffusion(tiny_folder, progress=False, lora=[(tmp_path / "dora.safetensors", scale)])
    theirs, ours = pipe.unet.state_dict(), sd.unet.state_dict()
    assert theirs.keys() == ours.keys()
    assert max((ours[k] - theirs[k]).abs().max().item() for k in theirs) < 1e-5
    changed = sum(not torch.equal(v, ours[k]) for k, v in base.items())
    assert changed == len(layers["unet_lora_layers"]) // 3  # each adapted layer's weight (A, B, m per layer)
    assert _diff(sd, _peft_merged(text, scale), "text_encoder") < 1e-5
