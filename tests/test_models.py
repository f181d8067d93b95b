"""Tests of diffkit.models: the DDPM/ADM U-Net and the noisy-image classifier.

References: the closed-form sinusoidal embedding, a hand-derived parameter count of the seed
configuration, and diffusers' UNet2DModel (an independent implementation of the same network)
loaded with the same weights.
"""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from diffkit.errors import DiffkitError
from diffkit.models import UNet, UNetConfig, num_parameters, timestep_embedding
from diffkit.models.classifier import ClassifierConfig, EncoderClassifier
from diffkit.models.layers import AttentionBlock, GroupNorm, ResBlock, SpatialTransformer, norm_groups

SEED_MODEL_CONFIG = {  # seed 000, `modelConfig` (training keys irrelevant to the network omitted)
    "state": "train", "epoch": 200, "batch_size": 80, "T": 1000, "channel": 128,
    "channel_mult": [1, 2, 3, 4], "attn": [2], "num_res_blocks": 2, "dropout": 0.15, "img_size": 32,
}
NETWORK_KEYS = ("channel", "channel_mult", "attn", "num_res_blocks", "dropout", "img_size")
SEED_PARAMETERS = 82_958_979


def small_config(**overrides) -> UNetConfig:
    settings = dict(channel=32, channel_mult=[1, 2], attn=[1], num_res_blocks=1, dropout=0.0, img_size=16)
    settings.update(overrides)
    return UNetConfig(**settings)


def perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Add noise to every parameter so zero-initialised branches stop hiding inputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("settings, in_ch, size, out_ch", [
    (dict(in_channels=1, channel=16, channel_mult=[1, 2], attn=[1], img_size=16), 1, 16, 1),
    (dict(in_channels=3, channel=32, channel_mult=[1, 2, 2], attn=[1], img_size=32), 3, 32, 3),
    (dict(in_channels=3, channel=32, channel_mult=[1, 2], attn=[], img_size=16, learned_variance=True), 3, 16, 6),
    (dict(in_channels=4, out_channels=2, channel=32, channel_mult=[1, 1], attn=[0, 1], img_size=8,
          scale_shift_norm=True, resblock_updown=True, head_channels=16), 4, 8, 2),
])
def test_unet_output_shapes(settings, in_ch, size, out_ch):
    settings.setdefault("num_res_blocks", 1)
    model = UNet(UNetConfig(**settings))
    x = torch.randn(2, in_ch, size, size)
    out = model(x, torch.tensor([3.0, 700.5]))
    assert out.shape == (2, out_ch, size, size)
    assert model.config.output_channels == out_ch
    assert torch.isfinite(out).all()


def test_learned_variance_doubles_output_channels():
    assert UNet(small_config(learned_variance=True))(torch.randn(1, 3, 16, 16), 5.0).shape == (1, 6, 16, 16)
    assert UNet(small_config(learned_variance=False))(torch.randn(1, 3, 16, 16), 5.0).shape == (1, 3, 16, 16)


def test_class_conditional_null_class():
    torch.manual_seed(0)
    model = perturb(UNet(small_config(num_classes=10))).eval()
    assert model.class_embed.num_embeddings == 11  # 10 classes + the learned null class
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([10.0, 20.0])
    null = model(x, t)  # y=None -> null class
    explicit_null = model(x, t, y=torch.tensor([10, 10]))
    real = model(x, t, y=torch.tensor([3, 3]))
    torch.testing.assert_close(null, explicit_null)
    assert (null - real).abs().max() > 1e-3


def test_pooled_context_adds_a_linear_map_of_the_mean_context_to_the_embedding():
    torch.manual_seed(0)
    plain = perturb(UNet(small_config(context_dim=24)))
    pooled = UNet(small_config(context_dim=24, context_pooled=True))
    missing = pooled.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["context_embed.bias", "context_embed.weight"]
    x, context = torch.randn(2, 3, 16, 16), torch.randn(2, 7, 24)
    with torch.no_grad():
        pooled.context_embed.weight.zero_()
        pooled.context_embed.bias.zero_()
        assert torch.allclose(pooled(x, 50.0, context=context), plain(x, 50.0, context=context), atol=1e-6)
        # a bias b on the pooled path is the same as adding b to the time embedding's output
        bias = torch.randn(pooled.context_embed.bias.shape)
        pooled.context_embed.bias.copy_(bias)
        plain.time_embed.register_forward_hook(lambda module, inputs, out: out + bias)
        assert torch.allclose(pooled(x, 50.0, context=context), plain(x, 50.0, context=context), atol=1e-5)
        pooled.context_embed.weight.normal_()
        assert (pooled(x, 50.0, context=context) - pooled(x, 50.0, context=context.flip(0))).abs().max() > 1e-4


def test_pooled_context_needs_context_dim():
    with pytest.raises(DiffkitError, match="context_pooled"):
        small_config(context_pooled=True)


def test_cross_attention_context():
    model = UNet(small_config(context_dim=24, num_heads=2))
    blocks = [m for m in model.modules() if isinstance(m, SpatialTransformer)]
    assert len(blocks) == 1 + 2 + 1  # one per down res-block at level 1, two on the way up, one in the middle
    assert not any(isinstance(m, AttentionBlock) for m in model.modules())
    perturb(model).eval()
    x = torch.randn(2, 3, 16, 16)
    context = torch.randn(2, 7, 24)
    out = model(x, 50.0, context=context)
    assert out.shape == (2, 3, 16, 16)
    other = model(x, 50.0, context=torch.randn(2, 7, 24))
    assert (out - other).abs().max() > 1e-4  # the output reads the context
    assert model(x, 50.0).shape == (2, 3, 16, 16)  # no context: cross-attention skipped


def test_fractional_and_scalar_time():
    model = perturb(UNet(small_config())).eval()
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(model(x, 12.5), model(x, torch.full((3,), 12.5)))
    torch.testing.assert_close(model(x, torch.tensor(12.5)), model(x, torch.full((3,), 12.5)))
    assert (model(x, 12.5) - model(x, 12.0)).abs().max() > 1e-5


def test_channels_last_input_gives_same_values_and_layout():
    model = perturb(UNet(small_config())).eval()
    x = torch.randn(2, 3, 16, 16)
    out = model(x, 100.0)
    out_cl = model(x.contiguous(memory_format=torch.channels_last), 100.0)
    assert out.is_contiguous()
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, out_cl, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- seed configuration
def hand_count_seed_parameters() -> int:
    """Parameters of the seed U-Net, derived layer by layer from DDPM Appendix B."""
    emb = 4 * 128

    def conv3(cin, cout):
        return 9 * cin * cout + cout

    def norm(c):
        return 2 * c

    def res(cin, cout):
        return (norm(cin) + conv3(cin, cout) + emb * cout + cout + norm(cout) + conv3(cout, cout)
                + (cin * cout + cout if cin != cout else 0))

    def attn(c):
        return norm(c) + 3 * c * c + 3 * c + c * c + c

    total = 128 * emb + emb + emb * emb + emb  # time MLP
    total += conv3(3, 128)  # input conv
    # down: level 0 (32x32), 1 (16x16), 2 (8x8, attention), 3 (4x4)
    total += res(128, 128) * 2 + conv3(128, 128)
    total += res(128, 256) + res(256, 256) + conv3(256, 256)
    total += res(256, 384) + res(384, 384) + 2 * attn(384) + conv3(384, 384)
    total += res(384, 512) + res(512, 512)
    total += 2 * res(512, 512) + attn(512)  # middle
    # up: each level has 3 blocks reading the skips (channels 512,512,384 | 384,384,256 | ...)
    total += res(1024, 512) * 2 + res(512 + 384, 512) + conv3(512, 512)
    total += res(512 + 384, 384) + res(384 + 384, 384) + res(384 + 256, 384) + 3 * attn(384) + conv3(384, 384)
    total += res(384 + 256, 256) + res(256 + 256, 256) + res(256 + 128, 256) + conv3(256, 256)
    total += res(256 + 128, 128) + res(128 + 128, 128) * 2
    total += norm(128) + conv3(128, 3)  # output
    return total


def test_seed_configuration_builds_with_pinned_parameter_count():
    config = UNetConfig(**{k: SEED_MODEL_CONFIG[k] for k in NETWORK_KEYS})
    model = UNet(config)
    assert hand_count_seed_parameters() == SEED_PARAMETERS
    assert model.num_parameters() == SEED_PARAMETERS == num_parameters(model)
    assert len([m for m in model.modules() if isinstance(m, AttentionBlock)]) == 2 + 3 + 1
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32), 999.0).shape == (1, 3, 32, 32)


# ----------------------------------------------------------------------------- time embedding
def test_timestep_embedding_closed_form():
    t = torch.tensor([0.0, 1.0, 2.5, 999.0])
    dim = 10
    emb = timestep_embedding(t, dim)
    half = dim // 2
    for row, time in enumerate(t.tolist()):
        for i in range(half):
            w = 10000.0 ** (-i / half)
            assert emb[row, i].item() == pytest.approx(math.cos(time * w), abs=1e-4)
            assert emb[row, half + i].item() == pytest.approx(math.sin(time * w), abs=1e-4)
    odd = timestep_embedding(t, 7)
    assert odd.shape == (4, 7) and torch.all(odd[:, -1] == 0)


def test_norm_groups_divide_channels_and_keep_four_per_group():
    for channels in (1, 3, 16, 24, 32, 48, 96, 128, 384, 100):
        groups = norm_groups(channels)
        assert channels % groups == 0 and groups <= 32
        assert channels // groups >= 4 or groups == 1
    assert norm_groups(384) == 32 and norm_groups(128) == 32 and norm_groups(48) == 12 and norm_groups(32) == 8


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_group_norm_of_channels_last_input_equals_the_formula_in_value_gradient_and_layout(dtype):
    # GroupNorm (Wu & He 2018, eq. 1-4) per sample and group of 4 channels, against the formula in
    # float64; the bf16 channels_last path (the channels_last kernel, or the contiguous one between
    # layout copies without the kernels) must keep the layout.
    torch.manual_seed(0)
    norm = GroupNorm(4, 16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = (torch.randn(3, 16, 5, 7) * 2 + 1).to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = norm(x)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    xd = x.detach().double().reshape(3, 4, -1)
    ref = ((xd - xd.mean(-1, keepdim=True))
           / (xd.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()).view(3, 16, 5, 7)
    ref = ref * norm.weight.double().view(1, -1, 1, 1) + norm.bias.double().view(1, -1, 1, 1)
    tol = {torch.bfloat16: 3e-2, torch.float16: 4e-3}.get(dtype, 1e-5)
    assert (y.double() - ref).abs().max() < tol
    grad = torch.randn(3, 16, 5, 7).contiguous(memory_format=torch.channels_last)
    y.backward(grad.to(dtype))
    xr = x.detach().double().requires_grad_()
    wr, br = (p.detach().double().requires_grad_() for p in (norm.weight, norm.bias))
    torch.nn.functional.group_norm(xr, 4, wr, br, 1e-5).backward(grad.double())
    assert x.grad.dtype == dtype and x.grad.is_contiguous(memory_format=torch.channels_last)
    assert (x.grad.double() - xr.grad).abs().max() < 20 * tol
    for got, want in ((norm.weight.grad, wr.grad), (norm.bias.grad, br.grad)):
        assert got.dtype == torch.float32
        assert (got.double() - want).abs().max() < 20 * tol * want.abs().max()


def test_time_and_class_reach_the_output_of_a_narrow_unet():
    """With one channel per GroupNorm group the per-channel embedding would be normalised away;
    the time and class must change the output of a 16-channel U-Net."""
    torch.manual_seed(0)
    net = UNet(UNetConfig(channel=16, channel_mult=[1, 2], attn=[], num_res_blocks=1, img_size=8,
                          in_channels=1, dropout=0.0, num_classes=3))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
        x = torch.randn(2, 1, 8, 8)
        a = net(x, torch.tensor([10.0, 10.0]), y=torch.tensor([0, 0]))
        b = net(x, torch.tensor([900.0, 900.0]), y=torch.tensor([0, 0]))
        c = net(x, torch.tensor([10.0, 10.0]), y=torch.tensor([2, 2]))
    assert (a - b).abs().max() > 1e-3 and (a - c).abs().max() > 1e-3


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("settings, fragment", [
    (dict(img_size=30), "img_size=30"),
    (dict(attn=[4]), "attn level 4"),
    (dict(attn=[-1]), "attn level -1"),
    (dict(channel=0), "channel=0"),
    (dict(channel_mult=[]), "channel_mult=[]"),
    (dict(channel_mult=[1, 0]), "channel_mult=[1, 0]"),
    (dict(dropout=1.0), "dropout=1.0"),
    (dict(dropout=-0.1), "dropout=-0.1"),
    (dict(num_res_blocks=0), "num_res_blocks=0"),
    (dict(num_heads=5), "num_heads=5"),
    (dict(head_channels=100), "head_channels=100"),
    (dict(num_classes=0), "num_classes=0"),
    (dict(context_dim=-3), "context_dim=-3"),
    (dict(in_channels=0), "in_channels=0"),
])
def test_bad_config_raises_one_line_error(settings, fragment):
    with pytest.raises(DiffkitError) as info:
        UNetConfig(**settings)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_bad_call_raises_one_line_error():
    model = UNet(small_config())
    with pytest.raises(DiffkitError, match="t has shape"):
        model(torch.randn(2, 3, 16, 16), torch.zeros(3))
    with pytest.raises(DiffkitError, match="x has shape"):
        model(torch.randn(2, 1, 16, 16), 0.0)
    with pytest.raises(DiffkitError, match="unconditional"):
        model(torch.randn(2, 3, 16, 16), 0.0, y=torch.tensor([0, 1]))
    with pytest.raises(DiffkitError, match="no cross-attention"):
        model(torch.randn(2, 3, 16, 16), 0.0, context=torch.randn(2, 3, 4))


# ----------------------------------------------------------------------------- training
def test_one_optimizer_step_reduces_loss_and_gradients_reach_the_input():
    torch.manual_seed(0)
    model = UNet(small_config(in_channels=1, img_size=8, num_classes=3))
    x = torch.randn(4, 1, 8, 8)
    t = torch.tensor([1.0, 10.0, 100.0, 900.0])
    y = torch.tensor([0, 1, 2, 0])
    target = torch.randn(4, 1, 8, 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = F.mse_loss(model(x, t, y), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[1] < losses[0] and losses[2] < losses[1]
    assert model.input_conv.weight.grad.abs().sum() > 0  # past the zero-initialised output conv
    assert model.class_embed.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- diffusers reference
def diffusers_to_diffkit(state: dict, model: UNet) -> dict:
    """Rename a diffusers UNet2DModel state dict to diffkit's UNet (q, k, v fused into qkv)."""
    per_level = model.config.num_res_blocks + 1
    rename = {"time_emb_proj": "emb_proj", "conv_shortcut": "skip", "group_norm": "norm", "to_out.0": "proj"}
    out, qkv = {}, {}
    for key, value in state.items():
        key = re.sub(r"^conv_in\.", "input_conv.", key)
        key = re.sub(r"^time_embedding\.", "time_embed.", key)
        key = re.sub(r"^class_embedding\.", "class_embed.", key)
        key = re.sub(r"^conv_norm_out\.", "out_norm.", key)
        key = re.sub(r"^conv_out\.", "out_conv.", key)
        key = re.sub(r"^mid_block\.resnets\.(\d)\.", lambda m: f"middle.{2 * int(m[1])}.", key)
        key = re.sub(r"^mid_block\.attentions\.0\.", "middle.1.", key)
        m = re.match(r"^(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)$", key)
        if m:
            path, level, kind, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
            if kind in ("downsamplers", "upsamplers"):
                index = level * per_level + per_level - 1
                position = 0 if kind == "downsamplers" else len(getattr(model, path)[index]) - 1
            else:
                index, position = level * per_level + j, 0 if kind == "resnets" else 1
            key = f"{path}.{index}.{position}.{rest}"
        for old, new in rename.items():
            key = key.replace(f".{old}.", f".{new}.")
        m = re.match(r"^(.*)\.to_([qkv])\.(weight|bias)$", key)
        if m:
            qkv.setdefault((m[1], m[3]), {})[m[2]] = value
            continue
        out[key] = value
    for (prefix, kind), parts in qkv.items():
        out[f"{prefix}.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


@pytest.mark.parametrize("scale_shift, num_classes", [(False, None), (True, 5)])
def test_matches_diffusers_unet2dmodel_with_same_weights(scale_shift, num_classes):
    diffusers = pytest.importorskip("diffusers")
    # >= 128 channels everywhere, so diffkit's GroupNorm rule also gives diffusers' 32 groups
    config = small_config(channel=128, channel_mult=[1, 1, 2], attn=[1], num_res_blocks=2,
                          scale_shift_norm=scale_shift, num_classes=num_classes)
    ours = UNet(config).eval()
    theirs = diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(128, 128, 256), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None,
        norm_num_groups=32, attn_norm_num_groups=32,
        resnet_time_scale_shift="scale_shift" if scale_shift else "default",
        num_class_embeds=None if num_classes is None else num_classes + 1).eval()
    assert num_parameters(theirs) == ours.num_parameters()
    perturb(theirs, seed=1, scale=0.1)
    ours.load_state_dict(diffusers_to_diffkit(theirs.state_dict(), ours), strict=True)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 3, 16, 16, generator=gen)
    t = torch.tensor([0.0, 17.25, 999.0])
    y = None if num_classes is None else torch.tensor([0, 4, 5])
    with torch.no_grad():
        expected = theirs(x, t, class_labels=y).sample
        actual = ours(x, t, y=y)
    assert expected.abs().max() > 1e-2  # a non-trivial comparison
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_seed_parameter_count_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.UNet2DModel(
        sample_size=32, block_out_channels=(128, 256, 384, 512), layers_per_block=2, attention_head_dim=None,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))
    assert num_parameters(theirs) == SEED_PARAMETERS


# ----------------------------------------------------------------------------- classifier
def small_classifier(**overrides) -> EncoderClassifier:
    settings = dict(channel=32, channel_mult=[1, 2, 2], attn=[2], num_res_blocks=1, dropout=0.0,
                    img_size=16, num_classes=7)
    settings.update(overrides)
    return EncoderClassifier(ClassifierConfig(**settings))


def test_classifier_shapes_and_shared_blocks():
    model = small_classifier()
    logits = model(torch.randn(5, 3, 16, 16), torch.linspace(0, 999, 5))
    assert logits.shape == (5, 7)
    assert any(isinstance(m, ResBlock) for m in model.modules())
    assert model.pool.positional.shape == (4 * 4 + 1, 64)  # attention pool at the lowest (4x4) level


def test_classifier_gradient_wrt_input_and_time_conditioning():
    model = perturb(small_classifier(in_channels=1, num_classes=3)).eval()
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    t = torch.tensor([5.0, 400.0])
    log_probs = torch.log_softmax(model(x, t), dim=-1)
    selected = log_probs[torch.arange(2), torch.tensor([0, 2])].sum()
    (grad,) = torch.autograd.grad(selected, x)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():
        assert (model(x, 5.0) - model(x, 600.0)).abs().max() > 1e-5


def test_classifier_bad_config():
    with pytest.raises(DiffkitError, match="num_classes=1"):
        ClassifierConfig(num_classes=1)
    with pytest.raises(DiffkitError, match="x has shape"):
        small_classifier()(torch.randn(1, 3, 8, 8), 0.0)


def test_channels_last_weights_save_contiguous_and_load_back(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model = perturb(UNet(small_config())).eval()
    assert model.input_conv.weight.is_contiguous(memory_format=torch.channels_last)
    state = model.state_dict()
    assert all(v.is_contiguous() for v in state.values())
    path = tmp_path / "unet.safetensors"
    safetensors_torch.save_file(state, str(path))
    fresh = UNet(small_config()).eval()
    fresh.load_state_dict(safetensors_torch.load_file(str(path)))
    assert fresh.input_conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(fresh(x, 3.0), model(x, 3.0))


@pytest.mark.parametrize("dtype,tokens,heads,keys", [
    (torch.bfloat16, 196, 1, None), (torch.bfloat16, 64, 4, None), (torch.bfloat16, 300, 2, None),
    (torch.bfloat16, 49, 1, 1), (torch.float32, 196, 1, None), (torch.float32, 64, 4, None)])
def test_attention_on_the_cpu_is_close_to_the_formula(dtype, tokens, heads, keys):
    # softmax(Q K^T / sqrt(d)) V (Vaswani et al. 2017, eq. 1) and its gradients in float64 against
    # diffkit's attention: matrix products with the probabilities kept (bf16, up to 256 x 256
    # scores per head), PyTorch's fused kernel otherwise. keys: one query (attention pooling's
    # mean token) on many keys.
    from diffkit.models.attention import attention, uses_matmuls
    torch.manual_seed(2)
    queries = keys or tokens
    q = torch.randn(2, queries, 64, dtype=torch.float64) * 2.0
    k, v = (torch.randn(2, tokens, 64, dtype=torch.float64) for _ in range(2))
    grad = torch.randn(2, queries, 64, dtype=torch.float64)
    ref_in = [x.clone().requires_grad_() for x in (q, k, v)]
    d = 64 // heads
    split = [x.reshape(2, x.shape[1], heads, d).transpose(1, 2) for x in ref_in]
    weights = (split[0] @ split[1].transpose(-1, -2) / math.sqrt(d)).softmax(-1)
    ref = (weights @ split[2]).transpose(1, 2).reshape(2, queries, 64)
    ref.backward(grad)
    got_in = [x.to(dtype).requires_grad_() for x in (q, k, v)]
    out = attention(*got_in, heads)
    assert out.dtype == dtype and out.shape == ref.shape
    out.backward(grad.to(dtype))
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-5
    assert (out.double() - ref).norm() / ref.norm() < tolerance
    for got, want in zip(got_in, ref_in):
        assert (got.grad.double() - want.grad).norm() / want.grad.norm() < tolerance
    matmuls = uses_matmuls(*got_in)
    assert matmuls == (queries * tokens <= 256 * 256 and dtype == torch.bfloat16)
    if not matmuls:
        fused = F.scaled_dot_product_attention(*[x.detach().reshape(2, x.shape[1], heads, d).transpose(1, 2)
                                                 for x in got_in])
        assert torch.equal(out.detach(), fused.transpose(1, 2).reshape(2, queries, 64))


def test_bf16_attention_takes_views_of_a_fused_projection_and_grads_only_where_asked():
    """One head: the q, k, v chunks of a bf16 qkv projection go in as strided views; the gradient
    reaches the projection's output through them, close to float32's; a frozen input gets none."""
    from diffkit.models.attention import attention
    torch.manual_seed(3)
    qkv = torch.randn(3, 49, 96)
    grad = torch.randn(3, 49, 32)
    grads = []
    for dtype in (torch.bfloat16, torch.float32):
        leaf = qkv.to(dtype).requires_grad_()
        attention(*leaf.chunk(3, dim=-1), 1).backward(grad.to(dtype))
        grads.append(leaf.grad.float())
    assert (grads[0] - grads[1]).norm() / grads[1].norm() < 2e-2
    q = torch.randn(3, 49, 32, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(3, 49, 32, dtype=torch.bfloat16)
    v = torch.randn(3, 49, 32, dtype=torch.bfloat16, requires_grad=True)
    attention(q, k, v, 1).float().sum().backward()
    assert k.grad is None and q.grad is not None and v.grad is not None


@pytest.mark.parametrize("device,precision,expected", [
    ("cpu", "no", torch.channels_last), ("cuda", "no", torch.contiguous_format),
    ("cuda:1", "bf16", torch.contiguous_format), ("mps", "no", torch.contiguous_format)])
def test_preferred_memory_format(device, precision, expected):
    from diffkit.models.layers import preferred_memory_format
    assert preferred_memory_format(device, precision) is expected
    assert preferred_memory_format(torch.device(device), precision) is expected


def test_bf16_on_the_cpu_is_channels_last_only_with_the_kernels(monkeypatch):
    """bf16 on the CPU: channels_last where the channels_last GroupNorm kernel takes bf16 maps,
    contiguous without the kernels (PyTorch's channels_last bf16 GroupNorm needs layout copies)."""
    from diffkit.models import layers
    monkeypatch.setattr(layers, "cpu_kernels", lambda: object())
    assert layers.preferred_memory_format("cpu", "bf16") is torch.channels_last
    monkeypatch.setattr(layers, "cpu_kernels", lambda: None)
    assert layers.preferred_memory_format("cpu", "bf16") is torch.contiguous_format
    assert layers.preferred_memory_format("cpu", "no") is torch.channels_last


def test_resolve_memory_format_names_a_layout_or_auto():
    from diffkit.models.layers import preferred_memory_format, resolve_memory_format
    assert resolve_memory_format("auto", "cpu", "bf16") is preferred_memory_format("cpu", "bf16")
    assert resolve_memory_format("auto", "cuda", "bf16") is torch.contiguous_format
    assert resolve_memory_format("contiguous", "cuda", "no") is torch.contiguous_format
    assert resolve_memory_format("channels_last", "cpu", "bf16") is torch.channels_last


@pytest.mark.parametrize("input_layout", [torch.contiguous_format, torch.channels_last])
def test_a_contiguous_network_computes_the_same_function(input_layout):
    """use_memory_format(contiguous) changes where the numbers live, not the function: fp32
    values agree with the channels_last network, bf16 autocast ones within bf16 round-off, and
    the output comes back in the caller's layout."""
    from diffkit.models.layers import use_memory_format
    reference = perturb(UNet(small_config(num_heads=2))).eval()
    model = UNet(small_config(num_heads=2)).eval()
    model.load_state_dict(reference.state_dict())
    use_memory_format(model, torch.contiguous_format)
    assert model.memory_format is torch.contiguous_format and model.input_conv.weight.is_contiguous()
    assert not model.input_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(v.is_contiguous() for v in reference.state_dict().values())
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=input_layout)
    with torch.no_grad():
        out = model(x, 100.0)
        torch.testing.assert_close(out, reference(x, 100.0), rtol=1e-4, atol=1e-5)
        with torch.autocast("cpu", torch.bfloat16):
            low, low_ref = model(x, 100.0), reference(x, 100.0)
    assert out.is_contiguous(memory_format=input_layout)
    # two bf16 computations that round differently (different GroupNorm + SiLU kernels and
    # convolution orders per layout): each within bf16 round-off of fp32, neither systematically
    # further from it (without the kernels the channels_last one rounds GroupNorm and SiLU twice)
    torch.testing.assert_close(low.float(), low_ref.float(), rtol=0.05, atol=0.03)
    assert (low.float() - out).abs().max() < 0.05 * out.abs().max()
    assert (low_ref.float() - out).abs().max() < 0.05 * out.abs().max()
    assert (low.float() - out).norm() < 1.25 * (low_ref.float() - out).norm()


def test_layout_functions_refuse_bad_values_in_one_line():
    from diffkit.models.layers import preferred_memory_format, resolve_memory_format, use_memory_format
    with pytest.raises(DiffkitError, match="mixed_precision='fp8' is not allowed"):
        preferred_memory_format("cpu", "fp8")
    with pytest.raises(DiffkitError, match="memory_format='nhwc' is not allowed; choose one of: auto, channels_last"):
        resolve_memory_format("nhwc", "cpu")
    with pytest.raises(DiffkitError, match="memory_format=torch.preserve_format is not allowed"):
        use_memory_format(UNet(small_config()), torch.preserve_format)


def test_class_labels_are_checked_in_one_line():
    """y out of range indexed past the embedding (IndexError), a wrong length or a float y gave
    raw RuntimeErrors; num_classes itself is the null label of classifier-free guidance."""
    import pytest

    from diffkit.errors import DiffkitError
    from diffkit.models import UNet, UNetConfig
    unet = UNet(UNetConfig(channel=8, channel_mult=[1, 2], attn=[], num_res_blocks=1, img_size=8, in_channels=1,
                           num_classes=3))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.0])
    for y, match in ((torch.tensor([0, 4]), "class label 4 is out of range; allowed: 0..2"),
                     (torch.tensor([0, -1]), "class label -1 is out of range"),
                     (torch.tensor([0]), r"shape \(1,\) are not allowed; give \(2,\)"),
                     (torch.tensor([0.0, 1.0]), "torch.float32 are not allowed")):
        with pytest.raises(DiffkitError, match=match):
            unet(x, t, y=y)
    assert unet(x, t, y=torch.tensor([0, 3])).shape == x.shape  # 3 = the null label


def _second_derivative(fn, x):
    (g,) = torch.autograd.grad(fn(x).square().sum(), x, create_graph=True)
    g.square().sum().backward()
    return x.grad


def test_second_derivatives_through_the_cpu_kernels_are_refused_not_wrong():
    """The autograd Functions whose backward keeps intermediate results without their graph
    (bf16 attention's probabilities, the layout-copy GroupNorm's mean and rstd, Winograd's cast
    input) would give wrong second derivatives: PyTorch refuses them in one line instead."""
    from diffkit.models import attention as attention_module, group_norm as group_norm_module
    from diffkit.models.cpu_kernels import cpu_kernels
    from diffkit.models.winograd import winograd_conv3x3

    torch.manual_seed(0)
    q = torch.randn(2, 16, 8, dtype=torch.bfloat16, requires_grad=True)
    assert attention_module.uses_matmuls(q, q, q)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        _second_derivative(lambda t: attention_module.attention(t, t, t, heads=2), q)

    norm = group_norm_module.GroupNorm(2, 8).to(torch.bfloat16)
    x = torch.randn(2, 8, 4, 4, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last).requires_grad_()
    assert group_norm_module.fused_group_norm_layout(norm, x, False) is None  # the layout-copy path
    with pytest.raises(RuntimeError, match="differentiate twice"):
        _second_derivative(norm, x)

    if cpu_kernels() is not None:
        w = torch.randn(4, 8, 3, 3)
        x = torch.randn(1, 8, 8, 8, requires_grad=True)
        with pytest.raises(RuntimeError, match="differentiate twice"):
            _second_derivative(lambda t: winograd_conv3x3(t, w), x)
