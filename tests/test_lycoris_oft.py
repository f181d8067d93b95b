"""LyCORIS OFT / BOFT rotations and full weight differences (``.diff``) in Stable Diffusion LoRA files
(diffkit.interop.lycoris_oft through diffkit.interop.sd_lora): the Cayley transform and the merged weights against
an independent dense computation (LyCORIS' formulas written with explicit block-diagonal and permutation matrices),
against peft's OFT / BOFT layers where the parametrisations map onto each other, and kohya-named files on a tiny
SD folder, through ``load_stable_diffusion`` and ``diffkit sample --lora``."""
import pytest
import torch
from safetensors.torch import save_file

from diffkit.errors import DiffkitError
from diffkit.interop import lycoris_oft as lo


def _cayley(blocks, constraint=0.0):
    """LyCORIS' get_r written out: Q = B - B^T (rescaled to norm c where larger), (I + Q) inv(I - Q)."""
    q = blocks - blocks.transpose(-1, -2)
    norm = q.norm() + 1e-8
    if 0 < constraint < norm:
        q = q * constraint / norm
    eye = torch.eye(q.shape[-1])
    return (eye + q) @ torch.linalg.inv(eye - q)


def _dense_oft(weight, r, scale=1.0):
    """blockdiag(I + s (R - I))^T W: the rotation of W's output rows as one matrix."""
    eye = torch.eye(r.shape[-1])
    big = torch.block_diag(*(eye + scale * (r - eye)))
    return (big.T @ weight.reshape(weight.shape[0], -1)).reshape(weight.shape)


def _dense_boft(weight, r, scale=1.0):
    """prod_i A_i^T blockdiag(I + s (R_i - I)) A_i W with A_i the butterfly order of stage i as a permutation matrix:
    new row p of a group of 2h rows is old row (p mod 2) h + p // 2 (the group's two halves interleaved)."""
    out, b = weight.shape[0], r.shape[-1]
    x, eye = weight.reshape(out, -1), torch.eye(b)
    for i, blocks in enumerate(r):
        h = 2 ** i * b // 2
        order = [p - p % (2 * h) + (p % 2) * h + (p % (2 * h)) // 2 for p in range(out)]
        a = torch.eye(out)[order]
        x = a.T @ torch.block_diag(*(eye + scale * (blocks - eye))) @ a @ x
    return x.reshape(weight.shape)


def test_cayley_is_orthogonal_the_identity_at_zero_and_constrained_as_lycoris():
    gen = torch.Generator().manual_seed(0)
    blocks = torch.randn(3, 4, 4, generator=gen)
    r = lo.cayley(blocks)
    assert (r.transpose(-1, -2) @ r - torch.eye(4)).abs().max() < 1e-5
    assert torch.allclose(torch.linalg.det(r), torch.ones(3), atol=1e-5)  # Cayley: a rotation (det +1)
    assert (r - _cayley(blocks)).abs().max() < 1e-5
    zero = lo.cayley(torch.zeros(3, 4, 4))
    sym = lo.cayley(blocks + blocks.transpose(-1, -2))  # Q = 0 as well
    assert torch.equal(zero, torch.eye(4).expand(3, 4, 4)) and torch.equal(sym, zero)
    weight = torch.randn(12, 5, 3, 3, generator=gen)
    assert torch.equal(lo.rotate_oft(weight, zero), weight)
    assert torch.equal(lo.rotate_boft(weight, lo.cayley(torch.zeros(2, 6, 2, 2))), weight)
    q_norm = (blocks - blocks.transpose(-1, -2)).norm().item()
    for c in (0.5, q_norm * 2):  # binding (Q rescaled to norm c), not binding (Q as it is)
        assert (lo.cayley(blocks, c) - _cayley(blocks, c)).abs().max() < 1e-5
    assert torch.equal(lo.cayley(blocks, q_norm * 2), r)
    small = lo.cayley(blocks, 0.5)
    q = torch.linalg.solve(small + torch.eye(4), small - torch.eye(4))  # the inverse Cayley: Q back
    assert abs(q.norm().item() - 0.5) < 1e-5
    # merged_weight: a file's alpha c is the constraint c * out (LyCORIS' constraint * out_dim)
    merged = lo.merged_weight({"oft_blocks": blocks}, weight, 0.5 / 12)
    assert (merged - _dense_oft(weight, _cayley(blocks, 0.5))).abs().max() < 1e-5


@pytest.mark.parametrize("shape", [(12, 5), (12, 6, 3, 3)])
def test_oft_merged_weight_is_the_dense_rotation_and_peft_oft(shape):
    """W' = blockdiag(R_s)^T W for a Linear and a 3x3 conv, scales 1, 0.6 and -0.5; peft's OFT (exact Cayley, no
    Neumann series) rotates a layer's input features with (I - Q)(I + Q)^-1 = R^T: on a Linear of weight W^T it
    gives (R^T W)^T, so its merge and forward are compared through the transpose (Linear only: peft rotates a conv's
    in kh kw inputs)."""
    peft = pytest.importorskip("peft")
    gen = torch.Generator().manual_seed(1)
    blocks, weight = torch.randn(3, 4, 4, generator=gen) * 0.4, torch.randn(shape, generator=gen)
    for scale in (1.0, 0.6, -0.5):
        ours = lo.merged_weight({"oft_blocks": blocks}, weight, None, scale)
        assert (ours - _dense_oft(weight, _cayley(blocks), scale)).abs().max() < 1e-5
    assert (ours - weight).abs().max() > 0.1
    if len(shape) == 4:
        return
    net = torch.nn.Sequential()
    net.add_module("lin", torch.nn.Linear(12, 5, bias=False))
    peft.inject_adapter_in_model(peft.OFTConfig(r=0, oft_block_size=4, use_cayley_neumann=False,
                                                target_modules=["lin"]), net)
    q, (rows, cols) = blocks - blocks.transpose(-1, -2), torch.triu_indices(4, 4, 1)
    with torch.no_grad():
        net.lin.oft_R["default"].weight.copy_(q[:, rows, cols])  # peft stores Q's upper triangle
        net.lin.base_layer.weight.copy_(weight.T)
    ours, x = lo.merged_weight({"oft_blocks": blocks}, weight, None), torch.randn(2, 12, generator=gen)
    assert (net(x) - x @ ours).abs().max() < 1e-5
    net.lin.merge()
    assert (net.lin.base_layer.weight.T - ours).abs().max() < 1e-5


class _BlockDiag:
    """peft's FastBlockDiag (a CUDA extension) in torch: (N, D, H, H) -> (N, D H, D H)."""

    @staticmethod
    def apply(x):
        return torch.stack([torch.block_diag(*stage) for stage in x])


@pytest.mark.parametrize("b, k, m", [(4, 4, 3), (2, 8, 2), (6, 2, 1)])
def test_boft_merged_weight_is_the_dense_butterfly_and_peft_boft(b, k, m, monkeypatch):
    """m butterfly stages: the dense product of permutation and block-diagonal matrices, scales 1 and 0.6; peft's
    BOFT (its CUDA block-diagonal swapped for torch.block_diag, so m > 1 runs on the CPU) on the transposed Linear,
    its parameters mapped from ours: stage i's blocks conjugated by the within-block permutation (A_i P_i) that takes
    LyCORIS' row order to peft's, then peft's inverse parametrisation S = (I - X)(I + X)^-1 (peft's Cayley is
    (I - S)(I + S)^-1 of S = (D - D^T) / 2)."""
    peft = pytest.importorskip("peft")
    import peft.tuners.boft.layer as boft_layer
    gen, out = torch.Generator().manual_seed(2), k * b
    blocks, weight = torch.randn(m, k, b, b, generator=gen) * 0.4, torch.randn(out, 3, generator=gen)
    for scale in (1.0, 0.6):
        ours = lo.merged_weight({"oft_blocks": blocks}, weight, None, scale)
        assert (ours - _dense_boft(weight, _cayley(blocks), scale)).abs().max() < 1e-5
    ours = lo.merged_weight({"oft_blocks": blocks}, weight, None)
    monkeypatch.setattr(boft_layer, "get_fbd_cuda", lambda: True)
    monkeypatch.setattr(boft_layer, "FastBlockDiag", _BlockDiag)
    net = torch.nn.Sequential()
    net.add_module("lin", torch.nn.Linear(out, 3, bias=False))
    peft.inject_adapter_in_model(peft.BOFTConfig(boft_block_size=b, boft_n_butterfly_factor=m,
                                                 target_modules=["lin"]), net)
    theirs, r = torch.zeros(m, k, b, b), _cayley(blocks)
    for i in range(m):
        h = 2 ** i * b // 2
        a = torch.eye(out)[[p - p % (2 * h) + (p % 2) * h + (p % (2 * h)) // 2 for p in range(out)]]
        ap = a @ net.lin.boft_P[i]
        stage = ap.T @ torch.block_diag(*r[i]) @ ap
        theirs[i] = torch.stack([stage[j * b:(j + 1) * b, j * b:(j + 1) * b] for j in range(k)])
        assert torch.equal(torch.block_diag(*theirs[i]), stage)  # block-diagonal again
    eye = torch.eye(b)
    with torch.no_grad():
        net.lin.boft_R["default"].copy_(torch.linalg.solve(eye + theirs, eye - theirs, left=False))
        net.lin.base_layer.weight.copy_(weight.T)
    net.lin.merge()
    assert (net.lin.base_layer.weight.T - ours).abs().max() < 1e-5


@pytest.fixture(scope="module")
def oft_folder(tmp_path_factory):
    """{"folder": a tiny SD folder, "base": it loaded, "file": a kohya-named file with an OFT (constrained, with
    rescale) on a UNet attention Linear, a 3-stage BOFT on a UNet 3x3 conv, an ``oft_diag`` R on a text-encoder
    Linear and a full difference (diff + diff_b) on another, "parts": {(component, module): parts, alpha}}."""
    pytest.importorskip("diffusers")
    from test_interop_diffusers import tiny_sd_pipeline

    from diffkit.interop.stable_diffusion import load_stable_diffusion
    root = tmp_path_factory.mktemp("sd_oft")
    tiny_sd_pipeline(root).save_pretrained(root / "sd")
    base = load_stable_diffusion(root / "sd", progress=False)
    text = {n for n, _ in base.text_encoder.named_modules()}
    q_proj = next(n for n in text if n.endswith("layers.0.self_attn.q_proj"))
    gen = torch.Generator().manual_seed(3)
    r = lo.cayley(torch.randn(2, 16, 16, generator=gen) * 0.2).contiguous()
    parts = {("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"):
             ({"oft_blocks": torch.randn(4, 8, 8, generator=gen) * 0.3,
               "rescale": 1 + 0.1 * torch.randn(32, 1, generator=gen)}, 0.05),  # 0.05 x 32 < ||Q||: binding
             ("unet", "down_blocks.0.resnets.0.conv1"): ({"oft_blocks": torch.randn(3, 8, 4, 4, generator=gen)}, 0.0),
             ("text_encoder", q_proj): ({"oft_diag": r}, None),
             ("text_encoder", q_proj.replace("q_proj", "k_proj")):
             ({"diff": torch.randn(32, 32, generator=gen) * 0.1, "diff_b": torch.randn(32, generator=gen)}, None)}
    tensors = {}
    for (component, module), (found, alpha) in parts.items():
        stem = {"unet": "lora_unet_", "text_encoder": "lora_te_"}[component] + module.replace(".", "_")
        tensors.update({f"{stem}.{k}": v for k, v in found.items()})
        if alpha is not None:
            tensors[f"{stem}.alpha"] = torch.tensor(alpha)
    save_file(tensors, root / "oft.safetensors")
    return {"folder": root / "sd", "base": base, "file": root / "oft.safetensors", "parts": parts, "root": root}


def _expected(layer, found, alpha, scale):
    """The layer's (weight, bias) after the file at ``scale``, from the dense formulas of this file."""
    weight, bias = layer.weight.detach(), layer.bias
    if "diff" in found:
        return weight + scale * found["diff"], bias.detach() + scale * found["diff_b"]
    if "oft_diag" in found:
        return _dense_oft(weight, found["oft_diag"], scale), bias
    blocks = found["oft_blocks"]
    r = _cayley(blocks, (alpha or 0.0) * weight.shape[0])
    new = _dense_boft(weight, r, scale) if blocks.ndim == 4 else _dense_oft(weight, r, scale)
    return new * found.get("rescale", 1.0), bias


def test_oft_boft_and_diff_file_on_a_tiny_sd_folder(oft_folder):
    """Each adapted layer of the folder after ``load_stable_diffusion(..., lora=[(file, 0.6)])`` is the dense
    formula of its adapter applied to the base weight; scale 0 is the base, bit for bit."""
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    sd = load_stable_diffusion(oft_folder["folder"], progress=False, lora=[(oft_folder["file"], 0.6)])
    base = oft_folder["base"]
    for (component, module), (found, alpha) in oft_folder["parts"].items():
        layer, old = (dict(getattr(net, component).named_modules())[module] for net in (sd, base))
        weight, bias = _expected(old, found, alpha, 0.6)
        assert (layer.weight - weight).abs().max() < 2e-6, module
        assert (layer.weight - old.weight).abs().max() > 1e-2, module
        if bias is not None:
            assert (layer.bias - bias).abs().max() < 1e-6, module
    zero = load_stable_diffusion(oft_folder["folder"], progress=False, lora=[(oft_folder["file"], 0.0)])
    for part in ("unet", "text_encoder"):
        a, b = getattr(base, part).state_dict(), getattr(zero, part).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), part


def _sample(folder, out, *extra):
    from diffkit.cli import main
    return main(["sample", "--checkpoint", str(folder), "--prompt", "hot", "--num", "1", "--steps", "2",
                 "--out", str(out), "--no-progress", "--device", "cpu", *map(str, extra)])


def test_sample_lora_with_oft_file_changes_the_image_and_scale_zero_is_no_lora(oft_folder, tmp_path):
    folder, file = oft_folder["folder"], oft_folder["file"]
    assert _sample(folder, tmp_path / "none.png") == 0
    assert _sample(folder, tmp_path / "zero.png", "--lora", f"{file}:0") == 0
    assert _sample(folder, tmp_path / "one.png", "--lora", file) == 0
    none = (tmp_path / "none.png").read_bytes()
    assert (tmp_path / "zero.png").read_bytes() == none and (tmp_path / "one.png").read_bytes() != none


def test_bad_oft_boft_and_diff_files_are_one_line_errors(oft_folder):
    from safetensors.torch import load_file

    from diffkit.interop.sd_lora import merge_sd_loras, read_sd_loras
    good, root, base = load_file(oft_folder["file"]), oft_folder["root"], oft_folder["base"]
    unet = {k: v.clone() for k, v in base.unet.state_dict().items()}
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    k = next(key[:-len(".diff")] for key in good if key.endswith(".diff"))
    cases = {
        "oft_shape": ({f"{q}.oft_blocks": torch.zeros(5, 8, 8)},
                      "oft_blocks has shape (5, 8, 8); allowed: (k, b, b) with k b = out (OFT) or (m, k, b, b)"),
        "boft_odd": ({f"{conv}.oft_blocks": torch.zeros(1, 8, 3, 3)}, "oft_blocks has shape (1, 8, 3, 3); allowed:"),
        "boft_stages": ({f"{conv}.oft_blocks": torch.zeros(3, 2, 16, 16)}, "2^(m-1) dividing k (BOFT) for a weight"),
        "rescale_shape": ({f"{q}.rescale": torch.ones(32)}, "rescale has shape (32,); allowed: (32, 1)"),
        "rescale_alone": ({f"{q}.oft_blocks": None}, "has rescale but no oft_blocks"),
        "alpha": ({f"{q}.alpha": torch.tensor(-1.0)}, "alpha is -1.0; allowed: one number >= 0 (the OFT / BOFT"),
        "two_rotations": ({f"{q}.oft_diag": torch.zeros(4, 8, 8)}, "has both oft_blocks and oft_diag"),
        "with_lora": ({f"{q}.lora_down.weight": torch.zeros(2, 32), f"{q}.lora_up.weight": torch.zeros(32, 2)},
                      "has both LoRA and OFT / full tensors"),
        "with_dora": ({f"{q}.dora_scale": torch.ones(32, 1)}, "has an oft_blocks tensor and a DoRA magnitude"),
        "diff_shape": ({f"{k}.diff": torch.zeros(32, 31)}, "diff has shape (32, 31); allowed: (32, 32)"),
        "diff_b_no_bias": ({f"{q}.oft_blocks": None, f"{q}.rescale": None, f"{q}.alpha": None,
                            f"{q}.diff": torch.zeros(32, 32), f"{q}.diff_b": torch.zeros(32)},
                           "diff_b has shape (32,); allowed: none: the layer has no bias"),
        "diff_alpha": ({f"{k}.alpha": torch.tensor(1.0)}, "has a full weight difference (diff) and an alpha"),
        "diff_b_alone": ({f"{k}.diff": None}, "has diff_b but no diff"),
        "glora": ({"lora_unet_conv_in.a1.weight": torch.zeros(2, 4)}, "key 'lora_unet_conv_in.a1.weight' is not "
                                                                      "supported"),
    }
    for name, (change, needle) in cases.items():
        tensors = {key: value for key, value in {**good, **change}.items() if value is not None}
        save_file(tensors, root / f"{name}.safetensors")
        with pytest.raises(DiffkitError) as err:  # read, matched and checked before anything merges
            merge_sd_loras(base, read_sd_loras([root / f"{name}.safetensors"]))
        assert needle in str(err.value) and "\n" not in str(err.value), (name, str(err.value))
    assert all(torch.equal(w, base.unet.state_dict()[k]) for k, w in unet.items())  # the networks as they were


def test_kohya_sd_xl_names_and_second_text_encoder(tmp_path):
    """An SD-XL file under sd-scripts' names (the UNet's SGM ``input_blocks_...`` names, ``lora_te1_`` /
    ``lora_te2_``): a 3-stage BOFT on a cross-attention Linear, an OFT on text_encoder_2 and a full difference on
    text_encoder, at scale -0.7, each the dense formula of the base weight (networks of a tiny SD-XL pipeline)."""
    pytest.importorskip("diffusers")
    from types import SimpleNamespace

    from test_interop_sd_xl import tiny_sd_xl_pipeline

    from diffkit.interop.ldm_names import ldm_names
    from diffkit.interop.sd_lora import merge_sd_loras, read_sd_loras
    pipe = tiny_sd_xl_pipeline(tmp_path)
    nets = {"unet": pipe.unet, "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2}
    to_k = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    te = {c: next(n for n, _ in nets[c].named_modules() if n.endswith(f"layers.0.{leaf}"))
          for c, leaf in (("text_encoder", "mlp.fc1"), ("text_encoder_2", "self_attn.q_proj"))}
    gen = torch.Generator().manual_seed(4)
    parts = {("unet", to_k): {"oft_blocks": torch.randn(3, 16, 4, 4, generator=gen) * 0.3},
             ("text_encoder", te["text_encoder"]): {"diff": torch.randn(37, 32, generator=gen) * 0.1},
             ("text_encoder_2", te["text_encoder_2"]): {"oft_blocks": torch.randn(3, 8, 8, generator=gen) * 0.3}}
    names = {"unet": ldm_names(pipe.unet, [to_k])[to_k], **te}
    prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
    tensors = {f"{prefixes[c]}{names[c].replace('.', '_')}.{k}": v for (c, _), found in parts.items()
               for k, v in found.items()}
    assert any(k.startswith("lora_unet_input_blocks_") for k in tensors)
    save_file(tensors, tmp_path / "xl.safetensors")
    layers = {key: dict(nets[key[0]].named_modules())[key[1]] for key in parts}
    base = {key: layer.weight.detach().clone() for key, layer in layers.items()}
    merge_sd_loras(SimpleNamespace(**nets), read_sd_loras([(tmp_path / "xl.safetensors", -0.7)]))
    for key, found in parts.items():
        w0, blocks = base[key], found.get("oft_blocks")
        expected = w0 - 0.7 * found["diff"] if blocks is None else \
            (_dense_boft if blocks.ndim == 4 else _dense_oft)(w0, _cayley(blocks), -0.7)
        assert (layers[key].weight - expected).abs().max() < 2e-6, key
        assert (layers[key].weight - w0).abs().max() > 1e-2, key
