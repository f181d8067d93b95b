"""diffkit.models.dropout against the definition of inverted dropout (Srivastava et al. 2014)."""
import math

import pytest
import torch

import diffkit.models.dropout as dropout_module
from diffkit.errors import DiffkitError
from diffkit.models.cpu_kernels import cpu_kernels
from diffkit.models.dropout import dropout, keep_mask

needs_kernels = pytest.mark.skipif(cpu_kernels() is None, reason="CPU kernels not built here")


@pytest.fixture(params=["kernel", "torch"])
def mask_path(request, monkeypatch):
    """Each test on both CPU paths: the C++ kernel's recomputed mask, and PyTorch's random_ words
    (machines without a compiler, or DIFFKIT_CPU_KERNELS=0)."""
    if request.param == "kernel":
        if cpu_kernels() is None:
            pytest.skip("CPU kernels not built here")
    else:
        monkeypatch.setattr(dropout_module, "cpu_kernels", lambda: None)
    return request.param


@pytest.mark.parametrize("p", [0.1, 0.15, 0.5, 0.9])
def test_drop_rate_and_scale(p, mask_path):
    x = torch.ones(1 << 20)
    y = dropout(x, p, generator=torch.Generator().manual_seed(0))
    dropped = float((y == 0).double().mean())
    # binomial standard deviation of the dropped fraction, 5 sigma
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / x.numel())
    kept = y[y != 0]
    k = round(p * 65536)
    assert torch.all(kept == 65536 / (65536 - k))
    assert abs(65536 / (65536 - k) - 1 / (1 - p)) < 1e-4 / (1 - p)
    # unbiased: E[y] = x
    assert abs(float(y.double().mean()) - 1.0) < 5 * math.sqrt(p / (1 - p) / x.numel())


@needs_kernels
def test_the_kernels_mask_is_unbiased_uncorrelated_and_thread_independent():
    """The recomputed mask (16 bits per element from a mix of seed and index): every position
    modulo 2..64 (vector lanes, words) drops at p; neighbours, elements 64 apart and two seeds'
    masks are uncorrelated; the mask depends on the index only, not on the thread count."""
    x = torch.ones(1 << 20)
    drop = (dropout(x, 0.25, generator=torch.Generator().manual_seed(1)) == 0).double()
    for period in (2, 4, 16, 64):
        rates = drop.view(-1, period).mean(0)
        assert torch.all((rates - 0.25).abs() < 5 * math.sqrt(0.25 * 0.75 / (x.numel() / period)))
    centred = drop - 0.25
    for lag in (1, 64):
        corr = float((centred[lag:] * centred[:-lag]).mean() / (0.25 * 0.75))
        assert abs(corr) < 5 / math.sqrt(x.numel())
    other = (dropout(x, 0.25, generator=torch.Generator().manual_seed(2)) == 0).double() - 0.25
    assert abs(float((centred * other).mean() / (0.25 * 0.75))) < 5 / math.sqrt(x.numel())
    threads = torch.get_num_threads()  # the suite runs on one thread (conftest): this draws on four
    try:
        torch.set_num_threads(4)
        four = dropout(x, 0.25, generator=torch.Generator().manual_seed(1))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(four == 0, drop.bool())


@needs_kernels
def test_the_kernels_dropout_keeps_nothing_for_backward_and_has_higher_derivatives():
    """The backward pass recomputes the mask, so autograd holds no tensor of the forward pass;
    the gradient of the gradient is the same mask again (dropout is linear)."""
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = dropout(x, 0.3, generator=torch.Generator().manual_seed(5))
    assert saved == []
    upstream = torch.randn_like(y).requires_grad_()
    (gx,) = torch.autograd.grad(y, x, upstream, create_graph=True)
    (gg,) = torch.autograd.grad(gx.sum(), upstream)
    assert torch.equal(gg, (y != 0).float() * (65536 / (65536 - round(0.3 * 65536))))


def test_mask_bits_are_independent_of_position():
    """PyTorch path: the four 16-bit lanes of each random word drop at the same rate (no lane is biased)."""
    x = torch.ones(1 << 20)
    keep, _ = keep_mask(x, 0.25, torch.Generator().manual_seed(1))
    drop = 1 - keep
    rates = drop.view(-1, 4).double().mean(0)
    n = x.numel() / 4
    assert torch.all((rates - 0.25).abs() < 5 * math.sqrt(0.25 * 0.75 / n))
    # neighbouring elements are uncorrelated
    d = drop.double()
    corr = float(((d[1:] - 0.25) * (d[:-1] - 0.25)).mean() / (0.25 * 0.75))
    assert abs(corr) < 5 / math.sqrt(x.numel())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_values_layout_and_gradient(dtype, channels_last, mask_path):
    x = torch.randn(2, 8, 5, 6, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = dropout(x, 0.3, generator=torch.Generator().manual_seed(2))
    assert y.dtype == dtype and y.stride() == x.stride()
    kept = y != 0
    scale = 65536 / (65536 - round(0.3 * 65536))
    expected = torch.where(kept, x.detach() * scale, torch.zeros((), dtype=dtype))
    assert torch.equal(y.detach(), expected)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    assert torch.equal(x.grad, torch.where(kept, upstream * scale, torch.zeros((), dtype=dtype)))


def test_identity_when_not_training_or_p_zero():
    x = torch.randn(3, 4)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x


def test_reproducible_with_a_seed_and_from_the_global_generator(mask_path):
    x = torch.randn(4, 16, 8, 8)
    a = dropout(x, 0.2, generator=torch.Generator().manual_seed(3))
    b = dropout(x, 0.2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    torch.manual_seed(4)
    c = dropout(x, 0.2)
    torch.manual_seed(4)
    assert torch.equal(c, dropout(x, 0.2))


def test_non_dense_input_falls_back_and_bad_p_is_refused():
    x = torch.randn(8, 8)[:, ::2]  # strided view
    y = dropout(x, 0.5)
    assert y.shape == x.shape and set(torch.unique((y / x).round(decimals=4)).tolist()) <= {0.0, 2.0}
    with pytest.raises(DiffkitError, match=r"dropout=1.0 .*\[0.0, 1.0\)"):
        dropout(x, 1.0)


def test_traced_by_torch_compile_without_graph_breaks():
    """Under torch.compile dropout is F.dropout (Dynamo cannot trace the mask's in-place random_)."""
    explanation = torch._dynamo.explain(lambda x: dropout(x, 0.1) * 2.0)(torch.ones(2, 4, 8, 8))
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0)
