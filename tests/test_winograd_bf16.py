"""Winograd F(2x2, 3x3) for bf16 (diffkit.models.winograd, opt-in: DIFFKIT_BF16_WINOGRAD=1) against
Lavin & Gray (2016) eq. 8 tile by tile and float64 F.conv2d, and in a U-Net under bf16 autocast; its
transform kernels also in float32 (fp32 F(2x2, 3x3), whose convolutions tests/test_winograd.py checks)."""
import pytest
import torch
import torch.nn.functional as F

from diffkit.models import UNet, UNetConfig
from diffkit.models import winograd
from diffkit.models.layers import use_memory_format

# Lavin & Gray (2016), section 4.1: F(2, 3)
BT = torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=torch.float64)
G = torch.tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=torch.float64)
AT = torch.tensor([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=torch.float64)

needs_kernels = pytest.mark.skipif(winograd._extension() is None, reason="CPU kernels not built here")


@pytest.fixture
def bf16_winograd():
    saved = winograd._state["bf16"]
    winograd.set_bf16_winograd_enabled(True)
    yield
    winograd.set_bf16_winograd_enabled(saved)


def _cl(x):
    return x.contiguous(memory_format=torch.channels_last)


def _relative(got, want):
    return ((got.double() - want).norm() / want.norm()).item()


def test_the_papers_matrices_compute_a_2_output_correlation():
    torch.manual_seed(0)
    d, g = torch.randn(4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    direct = torch.stack([(d[i:i + 3] * g).sum() for i in range(2)])
    torch.testing.assert_close(AT @ ((G @ g) * (BT @ d)), direct, rtol=1e-12, atol=1e-12)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_each_transform_kernel_is_its_matrix_formula(dtype):
    """B^T d B, A^T M A (+ bias) and A dY A^T per tile, against float64 einsums rounded to the map's
    dtype once (bf16; float32, whose kernels serve fp32 F(2x2, 3x3)), on a chunk of tiles that starts
    inside the map (p0 > 0); 70 channels: a full and a partial 64-channel block."""
    ext = winograd._extension()
    torch.manual_seed(1)
    n, c, h, w = 2, 70, 6, 8
    # bf16: the input transform's sums are exact in float and rounded once; the others within bf16's rounding
    exact, rounded = ({"rtol": 0, "atol": 0}, {"rtol": 8e-3, "atol": 0}) if dtype == torch.bfloat16 else (
        {"rtol": 1e-6, "atol": 1e-6},) * 2
    x = torch.randn(n, h, w, c).to(dtype)
    tiles = n * (h // 2) * (w // 2)
    p0, q = 5, tiles - 7
    v = torch.empty(16, q, c, dtype=dtype)
    ext.input_transform_2x2(x, v, p0)
    d = F.pad(x.double().permute(0, 3, 1, 2), (1, 1, 1, 1)).unfold(2, 4, 2).unfold(3, 4, 2)  # (n, c, i, j, 4, 4)
    want_v = torch.einsum("ar,ncijrs,bs->abnijc", BT, d, BT).reshape(16, tiles, c)[:, p0:p0 + q]
    torch.testing.assert_close(v.double(), want_v.to(dtype).double(), **exact)
    m = torch.randn(16, tiles, c).to(dtype)
    bias = torch.randn(c)
    y = torch.zeros(n, h, w, c, dtype=dtype)
    ext.output_transform_2x2(m, y, 0, bias)
    mt = m.double().view(4, 4, n, h // 2, w // 2, c)
    want_y = torch.einsum("ra,abnijc,sb->nirjsc", AT, mt, AT).reshape(n, h, w, c) + bias.double()
    torch.testing.assert_close(y.double(), want_y.to(dtype).double(), **rounded)
    dy = torch.randn(n, h, w, c).to(dtype)
    dm = torch.empty(16, tiles, c, dtype=dtype)
    ext.output_gradient_transform_2x2(dy, dm, 0)
    dyt = dy.double().permute(0, 3, 1, 2).unfold(2, 2, 2).unfold(3, 2, 2)  # (n, c, i, j, 2, 2)
    want_dm = torch.einsum("ra,ncijrs,sb->abnijc", AT, dyt, AT).reshape(16, tiles, c)
    torch.testing.assert_close(dm.double(), want_dm.to(dtype).double(), **rounded)


@needs_kernels
def test_the_transform_kernels_refuse_other_dtypes():
    ext = winograd._extension()
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        ext.input_transform_2x2(torch.zeros(1, 4, 4, 8, dtype=torch.float64), torch.zeros(16, 4, 8), 0)
    with pytest.raises(RuntimeError, match="v must be a contiguous float32"):  # v of another dtype than x
        ext.input_transform_2x2(torch.zeros(1, 4, 4, 8), torch.zeros(16, 4, 8, dtype=torch.bfloat16), 0)


@needs_kernels
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_the_weight_transform_is_g_g_gt_and_its_flipped_transpose(layout):
    """U = G g G^T per (ci, co), rounded to bf16 once; ``flipped``: the transform of the flipped
    kernel with Ci and Co swapped (the input gradient's convolution)."""
    torch.manual_seed(5)
    w = torch.randn(6, 10, 3, 3).contiguous(memory_format=layout)
    for flipped, g in ((False, w), (True, w.flip(2, 3).transpose(0, 1))):
        want = torch.einsum("ak,oikl,bl->abio", G, g.double(), G).reshape(16, g.shape[1], g.shape[0])
        got = winograd._weight_transform(w, winograd.F2, flipped=flipped)
        assert got.dtype == torch.bfloat16 and got.shape == want.shape
        # float32 sums in another order than float64's may round to the neighbouring bf16 value
        assert ((got.double() - want).abs() <= 2 ** -8 * want.abs() + 1e-12).all()


@needs_kernels
@pytest.mark.parametrize("ci, co, size", [(128, 128, 8), (256, 128, 16), (128, 256, 10)])
def test_forward_and_gradients_under_autocast_equal_float64(bf16_winograd, ci, co, size):
    """An fp32 WinogradConv2d under bf16 autocast on channels_last maps: bf16 output, fp32 gradients
    of x, weight and bias; relative error about twice the direct bf16 convolution's (measured
    5.1-5.5e-3 against 2.9e-3; bounded here by 8e-3, and the direct one by 4e-3)."""
    torch.manual_seed(2)
    conv = winograd.WinogradConv2d(ci, co, 3, padding=1).to(memory_format=torch.channels_last)
    x = _cl(torch.randn(3, ci, size, size)).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert winograd.winograd_variant(conv, x) is winograd.F2
        y = conv(x)
        direct = conv._conv_forward(x, conv.weight, conv.bias)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    dy = _cl(torch.randn(y.shape).bfloat16())
    got = torch.autograd.grad(y, (x, conv.weight, conv.bias), dy)
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, conv.weight, conv.bias))
    yd = F.conv2d(xd, wd, bd, padding=1)
    want = torch.autograd.grad(yd, (xd, wd, bd), dy.double())
    assert _relative(direct, yd) < 4e-3
    assert _relative(y, yd) < 8e-3
    for g, r, t in zip(got, want, (x, conv.weight, conv.bias)):
        assert g.dtype == t.dtype and _relative(g, r) < 8e-3
    assert got[0].is_contiguous(memory_format=torch.channels_last)


@needs_kernels
def test_a_bf16_network_without_autocast_keeps_bf16(bf16_winograd):
    torch.manual_seed(3)
    conv = winograd.WinogradConv2d(128, 128, 3, padding=1).to(torch.bfloat16, memory_format=torch.channels_last)
    x = _cl(torch.randn(2, 128, 8, 8)).bfloat16().requires_grad_()
    assert winograd.winograd_variant(conv, x) is winograd.F2
    y = conv(x)
    gx, gw, gb = torch.autograd.grad(y.float().square().sum(), (x, conv.weight, conv.bias))
    assert y.dtype == gx.dtype == gw.dtype == gb.dtype == torch.bfloat16
    ref = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
    assert _relative(y, ref) < 8e-3


@needs_kernels
def test_where_the_bf16_path_applies(bf16_winograd):
    variant = winograd.winograd_variant
    conv = winograd.WinogradConv2d(128, 128, 3, padding=1)
    x = _cl(torch.randn(2, 128, 8, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert variant(conv, x) is variant(conv, x.bfloat16()) is winograd.F2
        assert variant(conv, x.contiguous()) is None  # contiguous maps: the transforms would need copies
        assert variant(conv, _cl(torch.randn(2, 128, 6, 6))) is None  # under 64 pixels
        assert variant(conv, _cl(torch.randn(2, 128, 9, 8))) is None  # odd side
        assert variant(winograd.WinogradConv2d(64, 128, 3, padding=1), _cl(torch.randn(2, 64, 8, 8))) is None
        assert variant(winograd.WinogradConv2d(128, 128, 3, padding=1, stride=2), x) is None
    with torch.autocast("cpu", dtype=torch.float16):
        assert variant(conv, x) is None
    assert variant(conv, x.bfloat16()) is None  # bf16 input, fp32 weights, no autocast: F.conv2d's error
    winograd.set_bf16_winograd_enabled(False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert variant(conv, x) is None


def test_the_bf16_path_is_off_unless_asked_for(monkeypatch):
    monkeypatch.delenv("DIFFKIT_BF16_WINOGRAD", raising=False)
    assert not winograd._bf16_enabled_by_environment()
    monkeypatch.setenv("DIFFKIT_BF16_WINOGRAD", "1")
    assert winograd._bf16_enabled_by_environment()
    monkeypatch.setenv("DIFFKIT_BF16_WINOGRAD", "maybe")
    with pytest.warns(UserWarning, match="it stays off"):
        assert not winograd._bf16_enabled_by_environment()


@needs_kernels
def test_a_unet_under_bf16_autocast_computes_the_same_with_and_without_it():
    """A U-Net with 128- and 256-channel levels, channels_last under bf16 autocast: output and every
    parameter gradient with the F(2x2, 3x3) path within bf16 accuracy of the direct convolutions'."""
    torch.manual_seed(4)
    model = UNet(UNetConfig(channel=128, channel_mult=[1, 2], attn=[], num_res_blocks=1, dropout=0.0,
                            img_size=16, in_channels=1))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    use_memory_format(model, torch.channels_last)
    x = _cl(torch.randn(2, 1, 16, 16))
    t = torch.tensor([10.0, 700.0])
    saved = winograd._state["bf16"]
    results, used = {}, []
    original = winograd._WinogradConv3x3.forward

    def counted(ctx, x, weight, bias, variant):
        used.append(variant)
        return original(ctx, x, weight, bias, variant)

    try:
        for on in (True, False):
            winograd.set_bf16_winograd_enabled(on)
            model.zero_grad()
            winograd._WinogradConv3x3.forward = staticmethod(counted)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x, t).float()
            out.square().mean().backward()
            results[on] = (out.detach(), [p.grad.clone() for p in model.parameters()])
    finally:
        winograd._WinogradConv3x3.forward = staticmethod(original)
        winograd.set_bf16_winograd_enabled(saved)
    assert used and set(used) == {winograd.F2}
    (out_on, grads_on), (out_off, grads_off) = results[True], results[False]
    assert _relative(out_on, out_off.double()) < 3e-2
    for got, want in zip(grads_on, grads_off):
        if want.abs().max() > 0:
            assert _relative(got, want.double()) < 5e-2
