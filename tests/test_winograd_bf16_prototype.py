"""The planar bf16 Winograd F(2x2, 3x3) prototype (``benchmarks/winograd_bf16_prototype.py``,
issue 8) computes the convolution and both of its gradients, and agrees with the package's
channels_last kernels: its figures in docs/performance.md are about a correct algorithm. Against
float64 references of Lavin & Gray (2016) eq. 8 and the direct
convolution; skipped where the CPU kernels cannot be built.

Slow (``pytest -m slow``): it compiles a second C++ extension, the benchmark's prototype (about a third of
a minute on the 2-core CI machine, more under load), for code outside the package. The package's own bf16
F(2x2, 3x3) kernels are checked in the default suite by tests/test_winograd_bf16.py (tile transforms against
Lavin & Gray eq. 8, the layer against float64 F.conv2d, a U-Net under bf16 autocast)."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from diffkit.models.cpu_kernels import cpu_kernels

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(cpu_kernels() is None, reason="no C++ toolchain for the CPU kernels")]


@pytest.fixture(scope="module")
def prototype():
    import winograd_bf16_prototype as proto
    ext = proto.build()
    return proto, ext, proto.Planar(ext)


def _relative(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


@pytest.mark.parametrize("channels,size", [(16, 6), (24, 8)])
def test_planar_convolution_and_gradients_match_float64(prototype, channels, size):
    proto, _, planar = prototype
    torch.manual_seed(0)
    x = torch.randn(3, channels, size, size, dtype=torch.float64)
    w = torch.randn(channels + 8, channels, 3, 3, dtype=torch.float64) / (3 * channels ** 0.5)
    bias = torch.randn(channels + 8, dtype=torch.float64)
    dy = torch.randn(3, channels + 8, size, size, dtype=torch.float64)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    exact = F.conv2d(xr, wr, bias, padding=1)
    exact.backward(dy)
    xb, dyb = x.bfloat16(), dy.bfloat16()
    y = planar.conv(xb, planar.weight(w), bias.float())
    dx = planar.conv(dyb, planar.weight(w.flip(2, 3).transpose(0, 1)))
    dw = planar.weight_grad(xb, dyb)
    direct = F.conv2d(xb, w.bfloat16(), bias.bfloat16(), padding=1)
    # bf16 tiles and products: about twice the direct bf16 convolution's error (2.9e-3), never more than 4x
    assert _relative(direct, exact) < 4e-3
    for got, want in ((y, exact), (dx, xr.grad), (dw, wr.grad)):
        assert _relative(got, want) < 1.2e-2
    assert y.dtype == dx.dtype == torch.bfloat16 and dw.dtype == torch.float32


def test_input_transform_is_bt_d_b_with_zero_padding(prototype):
    _, ext, _ = prototype
    bt = torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=torch.float64)
    x = torch.randn(2, 3, 4, 6).bfloat16()
    v = torch.empty(16, 3, 2 * 2 * 3, dtype=torch.bfloat16)
    ext.input_transform_2x2(x, v, 0)
    tiles = F.pad(x.double(), (1, 1, 1, 1)).unfold(2, 4, 2).unfold(3, 4, 2)  # (n, c, i, j, 4, 4)
    want = torch.einsum("ar,ncijrs,bs->abcnij", bt, tiles, bt).reshape(16, 3, 12)
    torch.testing.assert_close(v.double(), want.bfloat16().double(), rtol=0, atol=0)
    # the package's channels_last kernel: the same values, tiles-major
    vh = torch.empty(16, 12, 3, dtype=torch.bfloat16)
    cpu_kernels().input_transform_2x2(x.permute(0, 2, 3, 1).contiguous(), vh, 0)
    torch.testing.assert_close(vh.transpose(1, 2), v, rtol=0, atol=0)


def test_the_packages_channels_last_kernels_agree_with_the_planar_ones(prototype):
    _, ext, planar = prototype
    torch.manual_seed(1)
    n, c, size = 2, 8, 6
    tiles = n * (size // 2) ** 2
    m = torch.randn(16, c, tiles).bfloat16()
    y = torch.empty(n, c, size, size, dtype=torch.bfloat16)
    ext.output_transform_2x2(m, y, 0, None)
    yh = torch.empty(n, size, size, c, dtype=torch.bfloat16)
    cpu_kernels().output_transform_2x2(m.transpose(1, 2).contiguous(), yh, 0, None)
    torch.testing.assert_close(yh.permute(0, 3, 1, 2), y, rtol=0, atol=0)
    dy = torch.randn(n, c, size, size).bfloat16()
    dm = torch.empty(16, c, tiles, dtype=torch.bfloat16)
    ext.output_gradient_transform_2x2(dy, dm, 0)
    dmh = torch.empty(16, tiles, c, dtype=torch.bfloat16)
    cpu_kernels().output_gradient_transform_2x2(dy.permute(0, 2, 3, 1).contiguous(), dmh, 0)
    torch.testing.assert_close(dmh.transpose(1, 2), dm, rtol=0, atol=0)
    # both against A^T M A and A dY A^T per tile, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]] (float64, then bf16)
    at = torch.tensor([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=torch.float64)
    m_tiles = m.double().view(4, 4, c, n, size // 2, size // 2)
    want_y = torch.einsum("ra,abcnij,sb->ncirjs", at, m_tiles, at).reshape(n, c, size, size)
    torch.testing.assert_close(y.double(), want_y.bfloat16().double(), rtol=8e-3, atol=0)
    dy_tiles = dy.double().unfold(2, 2, 2).unfold(3, 2, 2)  # (n, c, i, j, 2, 2)
    want_dm = torch.einsum("ra,ncijrs,sb->abcnij", at, dy_tiles, at).reshape(16, c, tiles)
    torch.testing.assert_close(dm.double(), want_dm.bfloat16().double(), rtol=8e-3, atol=0)
