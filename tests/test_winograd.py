"""Winograd F(4x4, 3x3) and fp32 F(2x2, 3x3) convolutions (diffkit.models.winograd) against the paper's
transforms and F.conv2d."""
import warnings

import pytest
import torch
import torch.nn.functional as F

from diffkit.models import UNet, UNetConfig
from diffkit.models import winograd

# Lavin & Gray (2016), "Fast Algorithms for Convolutional Neural Networks", section 4.2.
BT = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                   [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float64)
G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64)
AT = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                  dtype=torch.float64)

needs_kernels = pytest.mark.skipif(
    not winograd.winograd_available(),
    reason="CPU kernels not built here (no C++ toolchain, DIFFKIT_CPU_KERNELS=0 or DIFFKIT_WINOGRAD=0)")


def test_the_papers_matrices_compute_a_4_output_correlation():
    """F(4, 3) in one dimension: A^T [(G g) . (B^T d)] = the correlation of d (6) with g (3)."""
    torch.manual_seed(0)
    d, g = torch.randn(6, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    direct = torch.stack([(d[i:i + 3] * g).sum() for i in range(4)])
    torch.testing.assert_close(AT @ ((G @ g) * (BT @ d)), direct, rtol=1e-12, atol=1e-12)


def _tiles(x):  # (N, C, H, W) -> (N, C, h, w, 6, 6): the overlapping 6x6 tiles, stride 4, zero padding 1
    return F.pad(x, (1, 1, 1, 1)).unfold(2, 6, 4).unfold(3, 6, 4)


@needs_kernels
def test_each_transform_kernel_is_its_matrix_formula():
    """B^T d B, A^T M A and A dY A^T per tile, against float64 einsums of the paper's matrices,
    on a chunk of tiles that starts inside the map (p0 > 0)."""
    ext = winograd._extension()
    torch.manual_seed(1)
    n, c, height, width = 2, 70, 8, 12  # 70 channels: a full and a partial 64-channel block
    tiles, p0, q = n * 2 * 3, 3, 7
    x = torch.randn(n, c, height, width)
    v = torch.empty(36, q, c)
    ext.input_transform(x.permute(0, 2, 3, 1).contiguous(), v, p0)
    want = torch.einsum("ak,nchwkl,bl->abnhwc", BT, _tiles(x.double()), BT).reshape(36, tiles, c)[:, p0:p0 + q]
    torch.testing.assert_close(v.double(), want, rtol=1e-5, atol=1e-5)

    m = torch.randn(36, q, c)
    y = torch.zeros(n, height, width, c)
    ext.output_transform(m, y, p0)
    per_tile = torch.einsum("ra,abpc,sb->prsc", AT, m.double().view(6, 6, q, c), AT)
    full = torch.zeros(tiles, 4, 4, c, dtype=torch.float64)
    full[p0:p0 + q] = per_tile
    want_y = full.view(n, 2, 3, 4, 4, c).permute(0, 1, 3, 2, 4, 5).reshape(n, height, width, c)
    torch.testing.assert_close(y.double(), want_y, rtol=1e-5, atol=1e-5)

    dy = torch.randn(n, height, width, c)
    dm = torch.empty(36, q, c)
    ext.output_gradient_transform(dy, dm, p0)
    dy_tiles = dy.double().view(n, 2, 4, 3, 4, c).permute(0, 1, 3, 2, 4, 5).reshape(tiles, 4, 4, c)
    want_dm = torch.einsum("ra,prsc,sb->abpc", AT, dy_tiles, AT).reshape(36, tiles, c)[:, p0:p0 + q]
    torch.testing.assert_close(dm.double(), want_dm, rtol=1e-5, atol=1e-5)


def _relative_error(got, want):
    return ((got.double() - want).norm() / want.norm()).item()


@needs_kernels
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_gradients_equal_conv2d(monkeypatch, channels_last, bias):
    """Against float64 F.conv2d, in several chunks of tiles (a small workspace), both layouts:
    fp32 Winograd is within 1e-5 relative (the direct fp32 convolution's own error is ~2e-7)."""
    monkeypatch.setattr(winograd, "_WORKSPACE_FLOATS", 36 * 160 * 5)  # 5 tiles per chunk
    monkeypatch.setattr(winograd, "_MIN_TILES", 1)  # 36 tiles: a small case, taken on purpose
    torch.manual_seed(2)
    conv = winograd.WinogradConv2d(160, 96, 3, padding=1, bias=bias)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    conv = conv.to(memory_format=layout)
    x = torch.randn(3, 160, 12, 16).contiguous(memory_format=layout).requires_grad_()
    assert winograd.winograd_applies(conv, x)
    y = conv(x)
    assert y.is_contiguous(memory_format=layout)
    params = [x, conv.weight] + ([conv.bias] if bias else [])
    exact = [p.detach().double().requires_grad_() for p in params]
    y_exact = F.conv2d(exact[0], exact[1], exact[2] if bias else None, padding=1)
    dy = torch.randn_like(y_exact)
    grads = torch.autograd.grad(y, params, dy.float())
    grads_exact = torch.autograd.grad(y_exact, exact, dy)
    assert _relative_error(y, y_exact) < 1e-5
    for got, want, p in zip(grads, grads_exact, params):
        assert got.shape == p.shape and got.is_contiguous(memory_format=layout) == p.is_contiguous(memory_format=layout)
        assert _relative_error(got, want) < 1e-5


@needs_kernels
@pytest.mark.parametrize("channels_last", [False, True])
def test_f2x2_forward_and_gradients_equal_conv2d(monkeypatch, channels_last):
    """fp32 F(2x2, 3x3) on 10x14 maps (sides F(4x4, 3x3) cannot tile), in several chunks of tiles, against
    float64 F.conv2d: within 2e-6 relative, closer than the direct fp32 convolution (its transforms hold only
    0, +-1 and +-1/2)."""
    monkeypatch.setattr(winograd, "_WORKSPACE_FLOATS", 16 * 194 * 11)  # 11 tiles per chunk
    monkeypatch.setattr(winograd, "_MIN_TILES", 1)
    torch.manual_seed(3)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    conv = winograd.WinogradConv2d(194, 192, 3, padding=1).to(memory_format=layout)
    x = torch.randn(2, 194, 10, 14).contiguous(memory_format=layout).requires_grad_()
    assert winograd.winograd_variant(conv, x) is winograd.F2_FP32
    y = conv(x)
    assert y.is_contiguous(memory_format=layout)
    params = [x, conv.weight, conv.bias]
    exact = [p.detach().double().requires_grad_() for p in params]
    y_exact = F.conv2d(*exact, padding=1)
    dy = torch.randn_like(y_exact)
    grads = torch.autograd.grad(y, params, dy.float())
    grads_exact = torch.autograd.grad(y_exact, exact, dy)
    assert _relative_error(y, y_exact) < 2e-6
    for got, want, p in zip(grads, grads_exact, params):
        assert got.shape == p.shape and got.is_contiguous(memory_format=layout) == p.is_contiguous(memory_format=layout)
        assert _relative_error(got, want) < 2e-6


@needs_kernels
def test_an_input_without_gradient_gets_none():
    conv = winograd.WinogradConv2d(128, 64, 3, padding=1)
    x = torch.randn(1, 128, 12, 12)
    conv(x).sum().backward()
    assert conv.weight.grad is not None and x.grad is None


@needs_kernels
def test_where_winograd_applies():
    conv = winograd.WinogradConv2d(128, 128, 3, padding=1)
    x = torch.randn(8, 128, 16, 16)  # 8 x 4 x 4 = 128 tiles
    assert winograd.winograd_applies(conv, x)
    assert winograd.winograd_applies(winograd.WinogradConv2d(64, 128, 3, padding=1), torch.randn(8, 64, 16, 16))
    assert winograd.winograd_applies(conv, torch.randn(32, 128, 8, 8))  # 8x8 maps in a batch of 32
    assert not winograd.winograd_applies(conv, x[:7])  # 112 tiles: the transformed weights do not pay
    with torch.no_grad():  # sampling: one weight transform per call, 64 tiles pay
        assert winograd.winograd_applies(conv, x[:4]) and not winograd.winograd_applies(conv, x[:3])
    assert not winograd.winograd_applies(conv, x.double())
    # sides not multiples of 4: F(2x2, 3x3) from 192 channels and the same pixel counts as F(4x4, 3x3)
    assert winograd.winograd_variant(conv, x) is winograd.F4
    wide = winograd.WinogradConv2d(192, 256, 3, padding=1)
    assert winograd.winograd_variant(wide, torch.randn(11, 192, 14, 14)) is winograd.F2_FP32  # 2156 >= 16 x 128
    assert winograd.winograd_variant(wide, torch.randn(10, 192, 14, 14)) is None  # 1960 pixels
    assert winograd.winograd_variant(conv, torch.randn(16, 128, 14, 14)) is None  # 128 channels
    assert winograd.winograd_variant(wide, torch.randn(64, 192, 6, 6)) is None  # sides below 8
    assert winograd.winograd_variant(wide, torch.randn(16, 192, 14, 15)) is None  # an odd side
    assert not winograd.winograd_applies(conv, torch.randn(128, 128, 4, 4))  # 4x4 maps
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not winograd.winograd_applies(conv, x)
    assert not winograd.winograd_applies(winograd.WinogradConv2d(128, 32, 3, padding=1), x)  # 32 outputs
    assert not winograd.winograd_applies(winograd.WinogradConv2d(32, 128, 3, padding=1), torch.randn(8, 32, 16, 16))
    assert not winograd.winograd_applies(winograd.WinogradConv2d(128, 128, 3, stride=2, padding=1), x)
    assert not winograd.winograd_applies(winograd.WinogradConv2d(128, 128, 1), x)
    winograd.set_winograd_enabled(False)
    try:
        assert not winograd.winograd_applies(conv, x)
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=0, atol=0)
    finally:
        winograd.set_winograd_enabled(True)


@needs_kernels
def test_a_unet_trains_the_same_with_and_without_winograd():
    """One U-Net whose 128-channel 16x16 residual convolutions take the Winograd path: output and
    every parameter gradient match the direct convolutions to fp32 accuracy."""
    torch.manual_seed(3)
    model = UNet(UNetConfig(channel=128, channel_mult=[1, 1], attn=[], num_res_blocks=1, dropout=0.0,
                            img_size=16, in_channels=3))
    with torch.no_grad():  # the zero-initialised output convolutions would hide every difference
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    model.to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    t = torch.linspace(10.0, 900.0, 8)
    assert any(winograd.winograd_applies(m, torch.empty(8, m.in_channels, 16, 16)) for m in model.modules()
               if isinstance(m, winograd.WinogradConv2d))
    results = {}
    for enabled in (True, False):
        winograd.set_winograd_enabled(enabled)
        try:
            model.zero_grad()
            out = model(x, t)
            (out.square().mean() + out.mean()).backward()
            results[enabled] = (out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None])
        finally:
            winograd.set_winograd_enabled(True)
    (out_w, grads_w), (out_d, grads_d) = results[True], results[False]
    assert _relative_error(out_w, out_d.double()) < 1e-5
    assert len(grads_w) == len(grads_d)
    for got, want in zip(grads_w, grads_d):
        if want.abs().max() > 0:
            assert _relative_error(got, want.double()) < 1e-4


def test_without_a_compiler_it_warns_once_and_uses_conv2d(monkeypatch):
    """A failed build (no compiler, no ninja) turns the path off with one warning; convolutions
    still run (directly)."""
    import torch.utils.cpp_extension as cpp_extension
    from diffkit.models import cpu_kernels

    def no_toolchain(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(cpp_extension, "load", no_toolchain)
    monkeypatch.setattr(cpu_kernels, "_state", {"enabled": True, "extension": None, "tried": False})
    conv = winograd.WinogradConv2d(128, 128, 3, padding=1)
    x = torch.randn(8, 128, 16, 16)
    from diffkit.errors import DiffkitWarning
    with pytest.warns(DiffkitWarning, match="^CPU kernels unavailable"):  # the CLI prefixes 'diffkit CMD: warning:'
        assert not winograd.winograd_available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not winograd.winograd_applies(conv, x)
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=0, atol=0)


@needs_kernels
@pytest.mark.parametrize("x, w, match", [
    (torch.randn(1, 8, 14, 16), torch.randn(4, 8, 3, 3), "multiples of 4"),
    (torch.randn(1, 8, 16, 16), torch.randn(4, 6, 3, 3), r"\(Co, Ci, 3, 3\)"),
    (torch.randn(1, 8, 16, 16).double(), torch.randn(4, 8, 3, 3).double(), "float32 on the CPU"),
])
def test_winograd_conv3x3_rejects_what_it_cannot_compute(x, w, match):
    from diffkit.errors import DiffkitError
    with pytest.raises(DiffkitError, match=match) as error:
        winograd.winograd_conv3x3(x, w)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("value, enabled", [("0", False), ("off", False), ("False", False), ("1", True),
                                            ("yes", True), ("", True)])
def test_the_environment_switch(monkeypatch, value, enabled):
    monkeypatch.setenv("DIFFKIT_WINOGRAD", value)
    assert winograd._enabled_by_environment() is enabled


def test_an_unknown_environment_value_warns_and_keeps_it_on(monkeypatch):
    monkeypatch.setenv("DIFFKIT_WINOGRAD", "maybe")
    with pytest.warns(UserWarning, match="'maybe' is not one of"):
        assert winograd._enabled_by_environment()


@needs_kernels
def test_training_through_winograd_resumes_bitwise(tmp_path, assert_same_training_state):
    """A network whose 16x16, 128-channel convolutions take the Winograd path (batch 8: 128
    tiles): stop at step 2 of 3, resume, and reach the weights, EMA and optimiser state of an
    uninterrupted run exactly."""
    from diffkit.config import TrainConfig
    from diffkit.data import InMemoryImageDataset
    from diffkit.training import Trainer

    def config(run, **over):
        return TrainConfig.from_dict({
            "dataset": "digits", "img_size": 16, "channel": 128, "channel_mult": [1], "attn": [],
            "num_res_blocks": 1, "dropout": 0.1, "batch_size": 8, "lr": 1e-3, "max_steps": 3, "ema_decay": 0.9,
            "device": "cpu", "deterministic": True, "save_weight_dir": str(tmp_path / run / "ckpt"),
            "sampled_dir": str(tmp_path / run / "samples"), **over})

    def data():
        g = torch.Generator().manual_seed(0)
        return InMemoryImageDataset((torch.rand(12, 1, 16, 16, generator=g) * 255).to(torch.uint8),
                                    torch.zeros(12, dtype=torch.long))

    calls = []
    original = winograd._WinogradConv3x3.forward
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(winograd._WinogradConv3x3, "forward",
                      staticmethod(lambda ctx, *a: calls.append(1) or original(ctx, *a)))
        Trainer(config("a"), data(), progress=False).run()
        Trainer(config("b"), data(), progress=False).run(stop_at=2)
        Trainer(config("b", training_load_weight=str(tmp_path / "b" / "ckpt" / "latest.safetensors")), data(),
                progress=False).run()
    assert calls, "the Winograd path was not taken"
    assert_same_training_state(tmp_path / "a" / "ckpt" / "latest.safetensors",
                               tmp_path / "b" / "ckpt" / "latest.safetensors", 3)
