"""LyCORIS LoCon and (IA)^3 in Stable Diffusion LoRA files (diffkit.interop.lycoris through
diffkit.interop.sd_lora): a kohya / LyCORIS LoCon file on every convolution of a tiny SD UNet against diffusers'
``load_lora_weights`` + ``fuse_lora``; LoCon's Tucker core (``lora_mid.weight``, which diffusers 0.42 refuses)
and (IA)^3 (``weight`` + ``on_input``) against their closed forms and against the adapters' own forward passes
(LyCORIS' ``LoConModule`` / ``IA3Module``: the down / mid / up convolutions, the scaled input or output)."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from diffkit.errors import DiffkitError

diffusers = pytest.importorskip("diffusers")


class Net(torch.nn.Module):
    """A Linear, a 1x1 and a stride-2 padded 3x3 Conv2d (a downsampler's)."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.lin, self.c1 = torch.nn.Linear(16, 12), torch.nn.Conv2d(8, 12, 1)
        self.c3 = torch.nn.Conv2d(8, 12, 3, stride=2, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))


def _merged(tensors, path, scale):
    """A fresh Net after diffkit merges ``tensors`` (kohya text encoder keys), saved at ``path``, at ``scale``."""
    from diffkit.interop.sd_lora import merge_sd_loras, read_sd_loras
    save_file(tensors, path)
    net = Net()
    merge_sd_loras(SimpleNamespace(text_encoder=net), read_sd_loras([(path, scale)]))
    return net


def _tucker_locon(rank=3, seed=1):
    """{part: tensor} of a LoCon with a Tucker core on Net.c3: down (r, 8, 1, 1), mid (r, r, 3, 3), up (12, r, 1, 1)."""
    gen = torch.Generator().manual_seed(seed)
    return {"lora_down.weight": torch.randn(rank, 8, 1, 1, generator=gen),
            "lora_mid.weight": torch.randn(rank, rank, 3, 3, generator=gen),
            "lora_up.weight": torch.randn(12, rank, 1, 1, generator=gen) * 0.3}


@pytest.mark.parametrize("scale", [1.0, -0.6])
def test_tucker_locon_is_its_three_convolutions(tmp_path, scale):
    """W = W0 + s (alpha / r) einsum(mid, up, down) (LyCORIS' LoConModule.make_weight), and the merged layer's
    output equals LyCORIS' bypass forward: conv(x, W0) + s (alpha / r) up(mid(down(x))), the core with the
    layer's stride and padding."""
    parts, alpha = _tucker_locon(), 2.0
    net = _merged({**{f"lora_te_c3.{k}": v for k, v in parts.items()}, "lora_te_c3.alpha": torch.tensor(alpha)},
                  tmp_path / "f.safetensors", scale)
    base = Net().c3
    down, mid, up = parts["lora_down.weight"], parts["lora_mid.weight"], parts["lora_up.weight"]
    closed = base.weight + scale * alpha / 3 * torch.einsum("pqkl,op,qi->oikl", mid, up[:, :, 0, 0], down[:, :, 0, 0])
    assert (net.c3.weight - closed).abs().max() < 1e-6
    x = torch.randn(2, 8, 9, 9, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        bypass = base(x) + scale * alpha / 3 * F.conv2d(F.conv2d(F.conv2d(x, down), mid, stride=2, padding=1), up)
        assert ((net.c3(x) - bypass).abs().max() / bypass.abs().max()) < 1e-6
    assert (net.c3.weight - base.weight).abs().max() > 0.1
    assert all(torch.equal(getattr(net, n).weight, getattr(Net(), n).weight) for n in ("lin", "c1"))


@pytest.mark.parametrize("scale", [1.0, 0.4])
def test_ia3_scales_the_input_or_output_channels(tmp_path, scale):
    """(IA)^3 (Liu et al. 2022, Sec. 3.3; LyCORIS' IA3Module.make_weight): W = W0 (1 + s l) along the output
    axis (on_input 0) or the input axis (on_input 1), as the forward that scales the input by 1 + s l, or the
    layer's output before its bias; a Linear's l is (n,), a convolution's (1, n, 1, 1); the bias is left."""
    gen = torch.Generator().manual_seed(3)
    tensors = {"lora_te_lin.weight": torch.randn(16, generator=gen), "lora_te_lin.on_input": torch.tensor(1),
               "lora_te_c3.weight": torch.randn(1, 12, 1, 1, generator=gen), "lora_te_c3.on_input": torch.tensor(0),
               "lora_te_c1.weight": torch.randn(1, 8, 1, 1, generator=gen), "lora_te_c1.on_input": torch.tensor(1)}
    net, base = _merged(tensors, tmp_path / "f.safetensors", scale), Net()
    gain = {n: 1 + scale * tensors[f"lora_te_{n}.weight"].flatten() for n in ("lin", "c3", "c1")}
    x, xc = torch.randn(4, 16, generator=gen), torch.randn(2, 8, 7, 7, generator=gen)
    with torch.no_grad():
        expected = {"lin": base.lin(x * gain["lin"]), "c1": base.c1(xc * gain["c1"][:, None, None]),
                    "c3": (base.c3(xc) - base.c3.bias[:, None, None]) * gain["c3"][:, None, None] +
                    base.c3.bias[:, None, None]}
        ours = {"lin": net.lin(x), "c1": net.c1(xc), "c3": net.c3(xc)}
    for n in ours:
        assert (ours[n] - expected[n]).abs().max() / expected[n].abs().max() < 1e-6, n
        assert torch.equal(getattr(net, n).bias, getattr(base, n).bias)
    assert (net.c3.weight - base.c3.weight * gain["c3"][:, None, None, None]).abs().max() < 1e-6
    assert (net.lin.weight - base.lin.weight * gain["lin"]).abs().max() < 1e-6


def test_ia3_scales_the_base_weight_whatever_the_file_order(tmp_path):
    """With a LoRA file and an (IA)^3 file on one layer: W = W0 + s1 (alpha / r) B A + s2 W0 l, W0 the base weight
    (A1111's networks: each update from the stored original), in either --lora order."""
    from diffkit.interop.sd_lora import merge_sd_loras, read_sd_loras
    gen = torch.Generator().manual_seed(5)
    down, up = torch.randn(2, 16, generator=gen), torch.randn(12, 2, generator=gen)
    vector = torch.randn(12, generator=gen)
    lora, ia3 = tmp_path / "lora.safetensors", tmp_path / "ia3.safetensors"
    save_file({"lora_te_lin.lora_down.weight": down, "lora_te_lin.lora_up.weight": up}, lora)
    save_file({"lora_te_lin.weight": vector, "lora_te_lin.on_input": torch.tensor(0)}, ia3)
    base = Net().lin.weight.detach()
    expected = base + 0.5 * up @ down + 0.8 * base * vector[:, None]
    for files in ([(lora, 0.5), (ia3, 0.8)], [(ia3, 0.8), (lora, 0.5)]):
        net = Net()
        merge_sd_loras(SimpleNamespace(text_encoder=net), read_sd_loras(files))
        assert (net.lin.weight - expected).abs().max() < 1e-5


def test_scale_zero_leaves_the_weights_bit_for_bit(tmp_path):
    tensors = {**{f"lora_te_c3.{k}": v for k, v in _tucker_locon().items()},
               "lora_te_lin.weight": torch.ones(12), "lora_te_lin.on_input": torch.tensor(0)}
    net = _merged(tensors, tmp_path / "f.safetensors", 0.0)
    assert all(torch.equal(v, Net().state_dict()[k]) for k, v in net.state_dict().items())


def test_bad_locon_and_ia3_files_are_one_line_errors_and_change_nothing(tmp_path):
    tucker = {f"lora_te_c3.{k}": v for k, v in _tucker_locon().items()}
    ia3 = {"lora_te_lin.weight": torch.ones(12), "lora_te_lin.on_input": torch.tensor(0)}
    cases = {
        "mid_alone": ({"lora_te_c3.lora_mid.weight": torch.zeros(3, 3, 3, 3)},
                      "module c3 has lora_mid.weight but no lora_down / lora_up"),
        "mid_shape": ({**tucker, "lora_te_c3.lora_mid.weight": torch.zeros(3, 3, 1, 1)},
                      "mid.weight (3, 3, 1, 1), up (12, 3, 1, 1) for a weight of shape (12, 8, 3, 3); allowed"),
        "mid_linear": ({"lora_te_lin.lora_down.weight": torch.zeros(2, 16), "lora_te_lin.lora_up.weight":
                        torch.zeros(12, 2), "lora_te_lin.lora_mid.weight": torch.zeros(2, 2)},
                       "allowed: a convolution's (r, in, 1, 1)"),
        "ia3_partner": ({"lora_te_lin.weight": torch.ones(12)}, "module lin has weight but no on_input"),
        "ia3_flag": ({**ia3, "lora_te_lin.on_input": torch.tensor(2)}, "on_input is 2; allowed: 0"),
        "ia3_shape": ({**ia3, "lora_te_lin.on_input": torch.tensor(1)},
                      "(IA)^3 weight has shape (12,); allowed: (16,) (on_input 1)"),
        "ia3_alpha": ({**ia3, "lora_te_lin.alpha": torch.tensor(4.0)}, "has an (IA)^3 vector and an alpha"),
        "ia3_dora": ({**ia3, "lora_te_lin.dora_scale": torch.ones(12, 1)}, "(IA)^3 vector and a DoRA magnitude"),
        "ia3_lora": ({**ia3, "lora_te_lin.lora_down.weight": torch.zeros(2, 16),
                      "lora_te_lin.lora_up.weight": torch.zeros(12, 2)}, "has both LoRA and (IA)^3 tensors"),
    }
    for name, (tensors, needle) in cases.items():
        with pytest.raises(DiffkitError) as err:
            _merged({**tensors, "lora_te_c1.lora_down.weight": torch.ones(2, 8, 1, 1),  # a good module, not merged
                     "lora_te_c1.lora_up.weight": torch.ones(12, 2, 1, 1)}, tmp_path / f"{name}.safetensors", 1.0)
        assert needle in str(err.value) and "\n" not in str(err.value), (name, str(err.value))


def test_failed_merge_leaves_the_net_as_it_was(tmp_path):
    from diffkit.interop.sd_lora import merge_sd_loras, read_sd_loras
    save_file({"lora_te_lin.weight": torch.ones(12), "lora_te_lin.on_input": torch.tensor(1)}, tmp_path / "f.st")
    net = Net()
    with pytest.raises(DiffkitError):
        merge_sd_loras(SimpleNamespace(text_encoder=net), read_sd_loras([tmp_path / "f.st"]))
    assert all(torch.equal(v, Net().state_dict()[k]) for k, v in net.state_dict().items())


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from test_interop_diffusers import tiny_sd_pipeline
    root = tmp_path_factory.mktemp("sd_locon")
    tiny_sd_pipeline(root).save_pretrained(root / "sd")
    return root / "sd"


def test_locon_file_on_every_unet_convolution_matches_diffusers(tiny_folder, tmp_path, scale=0.7):
    """A kohya / LyCORIS LoCon file on every Conv2d of the tiny UNet (conv_in / conv_out, resnets' conv1 / conv2 /
    conv_shortcut, down- and upsamplers, proj_in / proj_out; rank 3, alpha 2) and its attention to_q: diffkit's
    merged UNet equals diffusers' after load_lora_weights + fuse_lora(lora_scale=0.7) + unload_lora_weights.
    The same file with a Tucker core on every 3x3 convolution (diffusers 0.42 refuses its lora_mid keys) equals
    the closed form."""
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_folder, local_files_only=True, safety_checker=None)
    base = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    gen, plain, tucker, closed = torch.Generator().manual_seed(5), {}, {}, {}
    for name, layer in pipe.unet.named_modules():
        if not (isinstance(layer, torch.nn.Conv2d) or name.endswith("attn1.to_q")):
            continue
        stem, shape = "lora_unet_" + name.replace(".", "_"), tuple(layer.weight.shape)
        kernel, ones = shape[2:], (1,) * (len(shape) - 2)
        plain[f"{stem}.lora_down.weight"] = torch.randn(3, shape[1], *kernel, generator=gen) * 0.3
        plain[f"{stem}.lora_up.weight"] = torch.randn(shape[0], 3, *ones, generator=gen) * 0.3
        plain[f"{stem}.alpha"] = tucker[f"{stem}.alpha"] = torch.tensor(2.0)
        if kernel == (3, 3):
            parts = {"down": torch.randn(3, shape[1], 1, 1, generator=gen) * 0.3,
                     "mid": torch.randn(3, 3, 3, 3, generator=gen) * 0.3, "up": plain[f"{stem}.lora_up.weight"]}
            tucker.update({f"{stem}.lora_{k}.weight": v for k, v in parts.items()})
            closed[f"{name}.weight"] = base[f"{name}.weight"] + 0.7 * 2 / 3 * torch.einsum(
                "pqkl,op,qi->oikl", parts["mid"], parts["up"].flatten(1), parts["down"].flatten(1))
        else:
            tucker.update({k: v for k, v in plain.items() if k.startswith(stem + ".lora_")})
    assert len(closed) >= 10  # conv_in / out, 2 x 2 resnets x (conv1, conv2) per block, samplers
    save_file(plain, tmp_path / "locon.safetensors")
    save_file(tucker, tmp_path / "tucker.safetensors")
    pipe.load_lora_weights(str(tmp_path / "locon.safetensors"))
    pipe.fuse_lora(lora_scale=scale)
    pipe.unload_lora_weights()
    theirs = pipe.unet.state_dict()
    ours = load_stable_diffusion(tiny_folder, progress=False, lora=[(tmp_path / "locon.safetensors", scale)])
    ours = ours.unet.state_dict()
    assert theirs.keys() == ours.keys()
    assert max((ours[k] - theirs[k]).abs().max().item() for k in theirs) < 1e-6
    assert sum(not torch.equal(v, ours[k]) for k, v in base.items()) == len(plain) // 3
    ours = load_stable_diffusion(tiny_folder, progress=False, lora=[(tmp_path / "tucker.safetensors", scale)])
    ours = ours.unet.state_dict()
    assert max((ours[k] - w).abs().max().item() for k, w in closed.items()) < 1e-6
    with pytest.raises(ValueError, match="lora_mid"):  # what diffusers 0.42 does with the Tucker file
        diffusers.StableDiffusionPipeline.lora_state_dict(str(tmp_path / "tucker.safetensors"))
