"""GroupNorm [+ SiLU] on the CPU (diffkit.models.group_norm) against float64 F.group_norm / F.silu."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import diffkit.models.cpu_kernels as cpu_kernels
import diffkit.models.group_norm as group_norm
from diffkit.models import UNet, UNetConfig
from diffkit.models.group_norm import GroupNorm, fused_group_norm_applies
from diffkit.models.layers import use_memory_format

needs_kernels = pytest.mark.skipif(cpu_kernels.cpu_kernels() is None,
                                   reason="CPU kernels not built here (no C++ toolchain or DIFFKIT_CPU_KERNELS=0)")


def _channels_last(x):
    return x.contiguous(memory_format=torch.channels_last)


def _norm(groups, channels, seed=0):
    norm = GroupNorm(groups, channels)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(channels, generator=g))
        norm.bias.copy_(torch.randn(channels, generator=g))
    return norm


def _relative(got, want):
    return ((got.double() - want).norm() / want.norm()).item()


def _check_against_float64(norm, x, y, got, yd, want, silu, layout):
    """y and the gradients (x, weight, bias) ``got`` of a kernel against float64 ``yd`` / ``want``:
    fp32 to float accuracy (x a + b with b ~ -mean a loses ~mean/std of float's 6e-8, as PyTorch's
    kernel does); bf16 output and input gradient within bf16's half ulp (2^-9, rounded once) and no
    further from float64 than PyTorch's own bf16 GroupNorm [+ SiLU]; the weight and bias gradients
    float32 to float accuracy; the input gradient in x's dtype and layout."""
    tolerance = 5e-6 if x.dtype == torch.float32 else 2 ** -9
    assert _relative(y, yd) < tolerance
    assert _relative(got[0], want[0]) < max(tolerance, 2e-5)
    assert got[0].dtype == x.dtype and got[0].is_contiguous(memory_format=layout)
    for g, r in zip(got[1:], want[1:]):
        assert g.dtype == torch.float32 and _relative(g, r) < 2e-5
    if x.dtype == torch.bfloat16:
        ref = F.group_norm(x.detach(), norm.num_groups, norm.weight, norm.bias, eps=1e-5)
        ref = F.silu(ref) if silu else ref
        assert _relative(y, yd) <= _relative(ref, yd) * 1.01


@needs_kernels
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n, c, groups, h, w", [
    (4, 32, 8, 12, 12),    # 4 channels per group, as the small networks' 32-channel levels
    (1, 64, 16, 9, 7),     # one image: its rows are split into several chunks
    (3, 96, 24, 5, 7),
    (2, 12, 3, 40, 40),    # 1600 rows: many 32-row float blocks summed in double
    (2, 8, 1, 6, 6),       # one group
])
def test_forward_and_gradients_equal_the_float64_formula(silu, dtype, n, c, groups, h, w):
    """Wu & He (2018) eq. 1-2 and the affine (eq. 4), then x * sigmoid(x): output and the gradients
    of x, weight and bias against float64 F.group_norm (+ F.silu) of the same values, on data with
    a large mean (the variance must not come from a cancelling E[x^2] - E[x]^2 in float: that would
    miss by ~1e-2). bf16 maps: output and input gradient rounded once to bf16 (within its half ulp,
    2^-9), the weight and bias gradients (fp32) to float accuracy."""
    torch.manual_seed(1)
    norm = _norm(groups, c)
    x = _channels_last((torch.randn(n, c, h, w) * 3 + 20).to(dtype)).requires_grad_()
    assert fused_group_norm_applies(norm, x)
    y = norm.forward_silu(x) if silu else norm(x)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    dy = torch.randn(y.shape).to(dtype)
    got = torch.autograd.grad(y, (x, norm.weight, norm.bias), dy)
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, norm.weight, norm.bias))
    yd = F.group_norm(xd, groups, wd, bd, eps=1e-5)
    yd = F.silu(yd) if silu else yd
    want = torch.autograd.grad(yd, (xd, wd, bd), dy.double())
    _check_against_float64(norm, x, y, got, yd, want, silu, torch.channels_last)


@needs_kernels
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n, c, groups, h, w", [
    (4, 32, 8, 12, 12),
    (2, 64, 16, 15, 9),    # 135 pixels: a plane is not a multiple of the 16 float lanes
    (3, 96, 24, 16, 10),
    (2, 12, 3, 40, 40),    # 1600-value planes: several 256-value float runs summed in double
    (2, 8, 1, 16, 8),      # one group
])
def test_the_contiguous_kernel_equals_the_float64_formula(monkeypatch, silu, dtype, n, c, groups, h, w):
    """The contiguous (N, C, H, W) kernel, fp32 and bf16 (the layout of diffkit's bf16 CPU
    networks), against float64 F.group_norm (+ F.silu) of the same values: fp32 as the
    channels_last kernel; bf16 output and input gradient rounded once to bf16 (relative error
    within bf16's half ulp, 2^-9, where PyTorch's bf16 GroupNorm then SiLU rounds twice), the weight
    and bias gradients (fp32) to float accuracy."""
    torch.manual_seed(2)
    norm = _norm(groups, c)
    x = (torch.randn(n, c, h, w) * 3 + 20).to(dtype).requires_grad_()
    assert group_norm.fused_group_norm_layout(norm, x) == torch.contiguous_format
    if not silu:  # plain GroupNorm keeps PyTorch's kernel; the kernel itself computes it too
        monkeypatch.setattr(group_norm, "fused_group_norm_layout", lambda *args: torch.contiguous_format)
    y = norm.forward_silu(x) if silu else norm(x)
    assert y.dtype == dtype and y.is_contiguous()
    dy = torch.randn(y.shape).to(dtype)
    got = torch.autograd.grad(y, (x, norm.weight, norm.bias), dy)
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, norm.weight, norm.bias))
    yd = F.group_norm(xd, groups, wd, bd, eps=1e-5)
    yd = F.silu(yd) if silu else yd
    want = torch.autograd.grad(yd, (xd, wd, bd), dy.double())
    _check_against_float64(norm, x, y, got, yd, want, silu, torch.contiguous_format)


@needs_kernels
def test_the_contiguous_kernel_gives_the_same_bits_at_any_thread_count():
    """One task per (image, group): the sums do not depend on how the tasks are shared out."""
    norm = _norm(8, 32)
    z = torch.randn(3, 32, 16, 16).bfloat16()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = norm.forward_silu(z)
        torch.set_num_threads(2)
        torch.testing.assert_close(norm.forward_silu(z), one, rtol=0, atol=0)
    finally:
        torch.set_num_threads(threads)


@needs_kernels
def test_the_fused_silu_saturates_without_overflow():
    """Pre-activations of +-100 (far outside the clamped exponent's range): SiLU is x for large x
    and 0 for very negative x, with finite gradients equal to the float64 ones."""
    norm = GroupNorm(1, 4)
    with torch.no_grad():
        norm.weight.fill_(100.0)
    x = _channels_last(torch.tensor([-1.0, 1.0]).repeat(2, 4, 2, 1)).requires_grad_()
    y = norm.forward_silu(x)
    dy = torch.ones_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    xd = x.detach().double().requires_grad_()
    yd = F.silu(F.group_norm(xd, 1, norm.weight.double(), norm.bias.double()))
    (dxd,) = torch.autograd.grad(yd, xd, dy.double())
    assert torch.isfinite(y).all() and torch.isfinite(dx).all()
    torch.testing.assert_close(y.double(), yd, rtol=1e-6, atol=1e-30)
    torch.testing.assert_close(dx.double(), dxd, rtol=1e-5, atol=1e-6)


@needs_kernels
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_values_whose_squares_overflow_float_still_normalise(layout):
    """|x| ~ 1e25: x^2 and dz * x overflow float32, so those sums are redone in double; the
    output and gradients still equal float64's (PyTorch's float kernel gives inf or nan here).
    A nan stays in its group (bf16 too, on the contiguous kernel)."""
    torch.manual_seed(5)
    norm = _norm(2, 8)
    x = (torch.randn(2, 8, 16, 8) * 1e25).contiguous(memory_format=layout).requires_grad_()
    assert group_norm.fused_group_norm_layout(norm, x) == layout
    y = norm.forward_silu(x)
    dy = torch.randn_like(y) * 1e16
    got = torch.autograd.grad(y, (x, norm.weight, norm.bias), dy)
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, norm.weight, norm.bias))
    yd = F.silu(F.group_norm(xd, 2, wd, bd))
    want = torch.autograd.grad(yd, (xd, wd, bd), dy.double())
    assert _relative(y, yd) < 5e-6
    for g, r in zip(got, want):
        assert torch.isfinite(g).all() and _relative(g, r) < 2e-5
    nan = x.detach().clone()
    nan[1, 5, 2, 2] = float("nan")  # group 1 of image 1: nan there, finite elsewhere
    out = norm(nan) if layout == torch.channels_last else norm.forward_silu(nan.bfloat16())
    assert out[1, 4:].isnan().all() and torch.isfinite(out[0]).all() and torch.isfinite(out[1, :4]).all()


@needs_kernels
def test_where_the_kernels_apply():
    layout = group_norm.fused_group_norm_layout
    norm = GroupNorm(8, 32)
    x = _channels_last(torch.randn(2, 32, 8, 8))
    assert layout(norm, x) == layout(norm, x, silu=False) == torch.channels_last
    x = _channels_last(torch.randn(2, 32, 16, 8))
    assert layout(norm, x.contiguous()) == torch.contiguous_format
    assert layout(norm, x.contiguous().bfloat16()) == torch.contiguous_format
    assert layout(norm, x.contiguous().bfloat16(), silu=False) is None  # plain: PyTorch's kernel
    assert layout(norm, torch.randn(2, 32, 11, 11)) is None  # under 128 pixels: PyTorch's kernel
    assert layout(norm, x.double()) is None
    assert layout(norm, x.bfloat16()) == layout(norm, x.bfloat16(), silu=False) == torch.channels_last
    assert layout(norm, x.bfloat16().to(memory_format=torch.contiguous_format)[:, :, :, :7]) is None  # strided
    assert layout(norm, x.contiguous().half()) is None
    assert layout(GroupNorm(8, 32, affine=False), x) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layout(norm, x) is None  # fp32 under autocast: PyTorch's kernel
        assert layout(norm, x.bfloat16()) == torch.channels_last
        assert layout(norm, x.contiguous().bfloat16()) == torch.contiguous_format
    assert fused_group_norm_applies(norm, x) and not fused_group_norm_applies(norm, x.double())


def test_other_paths_are_group_norm_then_silu_exactly():
    """Contiguous fp32 maps and a bf16 GroupNorm (bf16 parameters): forward_silu is
    F.silu(norm(x)) bit for bit."""
    norm = _norm(8, 32)
    x = torch.randn(2, 32, 6, 6)
    torch.testing.assert_close(norm.forward_silu(x), F.silu(F.group_norm(x, 8, norm.weight, norm.bias)),
                               rtol=0, atol=0)
    xb, nb = _channels_last(x).bfloat16(), norm.bfloat16()
    torch.testing.assert_close(nb.forward_silu(xb), F.silu(nb(xb)), rtol=0, atol=0)


@needs_kernels
def test_the_same_thread_count_gives_the_same_bits_and_others_agree():
    """The row chunks depend on the thread count: repeatable bit for bit at one count, within
    float rounding across counts."""
    norm = _norm(8, 32)
    x = _channels_last(torch.randn(1, 32, 20, 20))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = norm.forward_silu(x)
        torch.testing.assert_close(norm.forward_silu(x), one, rtol=0, atol=0)
        torch.set_num_threads(2)
        torch.testing.assert_close(norm.forward_silu(x), one, rtol=1e-6, atol=1e-6)
    finally:
        torch.set_num_threads(threads)


@needs_kernels
@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16-channels_last"])
def test_a_unet_computes_the_same_with_and_without_the_kernels(monkeypatch, precision):
    """A small U-Net (32/64 channels, the Quick start's kind of network) in the layout diffkit
    trains it in on the CPU: channels_last fp32, or contiguous under bf16 autocast
    (``mixed_precision = "bf16"``), or channels_last under bf16 autocast (``memory_format =
    "channels_last"``). Output and every parameter gradient with the fused GroupNorm + SiLU equal
    PyTorch's to fp32 accuracy, or to bf16 accuracy in bf16."""
    torch.manual_seed(4)
    bf16 = precision.startswith("bf16")
    size = 16 if bf16 else 8  # the contiguous kernel takes maps of >= 128 pixels
    model = UNet(UNetConfig(channel=32, channel_mult=[1, 2], attn=[1], num_res_blocks=1, dropout=0.0,
                            img_size=size, in_channels=1))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    layout = torch.contiguous_format if precision == "bf16" else torch.channels_last
    use_memory_format(model, layout)
    x = torch.randn(3, 1, size, size).contiguous(memory_format=layout)
    t = torch.tensor([5.0, 300.0, 900.0])
    calls = []
    original = group_norm._FusedGroupNorm.forward

    def counted(ctx, *args):
        calls.append(args[-1])
        return original(ctx, *args)

    results = {}
    for fused in (True, False):
        with monkeypatch.context() as patch:
            patch.setattr(group_norm._FusedGroupNorm, "forward", staticmethod(counted))
            if not fused:
                patch.setattr(group_norm, "cpu_kernels", lambda: None)
            model.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(x, t).float()
            (out.square().mean() + out.mean()).backward()
            results[fused] = (out.detach(), [p.grad.clone() for p in model.parameters()])
    assert calls and set(calls) == {layout}
    if layout == torch.channels_last:  # every norm, with or without SiLU
        assert len(calls) == len([m for m in model.modules() if isinstance(m, GroupNorm)])
    (out_f, grads_f), (out_t, grads_t) = results[True], results[False]
    assert _relative(out_f, out_t.double()) < (2e-2 if bf16 else 1e-5)
    for got, want in zip(grads_f, grads_t):
        if want.abs().max() > 0:
            assert _relative(got, want.double()) < (2e-2 if bf16 else 1e-4)


def test_switched_off_the_kernels_are_never_built(monkeypatch):
    """DIFFKIT_CPU_KERNELS=0: no build is attempted, no warning, PyTorch's GroupNorm runs."""
    import torch.utils.cpp_extension as cpp_extension

    def must_not_build(*args, **kwargs):
        raise AssertionError("built although switched off")

    monkeypatch.setattr(cpp_extension, "load", must_not_build)
    monkeypatch.setattr(cpu_kernels, "_state", {"enabled": False, "extension": None, "tried": False})
    norm = _norm(8, 32)
    x = _channels_last(torch.randn(2, 32, 6, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu_kernels.cpu_kernels() is None
        assert not fused_group_norm_applies(norm, x)
        torch.testing.assert_close(norm.forward_silu(x), F.silu(F.group_norm(x, 8, norm.weight, norm.bias)),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("value, enabled", [("0", False), ("off", False), ("1", True), ("", True)])
def test_the_environment_switch(monkeypatch, value, enabled):
    monkeypatch.setenv("DIFFKIT_CPU_KERNELS", value)
    assert cpu_kernels.environment_switch("DIFFKIT_CPU_KERNELS") is enabled


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_a_large_mean_does_not_cancel_the_variance(layout):
    """Float sums of x and x^2 gave the variance of a group whose mean is 3000 standard deviations
    (activations offset by 3000) wrong by O(1): such groups are summed again in double. The error
    left is float's resolution of x itself (6e-8 * 3000), as in PyTorch's own GroupNorm."""
    if cpu_kernels.cpu_kernels() is None:
        pytest.skip("the CPU kernels cannot be built here")
    norm = _norm(4, 16)
    x = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(1)) + 3000
    x = (_channels_last(x) if layout == "channels_last" else x).requires_grad_(True)
    assert fused_group_norm_applies(norm, x)
    y = norm.forward_silu(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    (y * g).sum().backward()
    x64 = x.detach().double().requires_grad_(True)
    y64 = F.silu(F.group_norm(x64, 4, norm.weight.double(), norm.bias.double()))
    (y64 * g.double()).sum().backward()
    assert (y.detach().double() - y64).abs().max() < 3e-3
    assert (x.grad.double() - x64.grad).abs().max() < 3e-3


def test_a_build_killed_half_way_does_not_block_the_next_load():
    """torch's build leaves a 'lock' file when it is killed (Ctrl-C during the first build), and
    every later load waited on it for ever; the OS lock around the build makes it stale and removed."""
    import subprocess
    import sys
    from pathlib import Path

    if cpu_kernels.cpu_kernels() is None:
        pytest.skip("the CPU kernels cannot be built here")
    from torch.utils.cpp_extension import _get_build_directory
    name, _ = cpu_kernels._build_name_and_flags()
    stale = Path(_get_build_directory(name, False)) / "lock"
    stale.touch()
    code = "from diffkit.models.cpu_kernels import cpu_kernels; assert cpu_kernels() is not None"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                          cwd=str(Path(cpu_kernels.__file__).parents[2]))
    assert done.returncode == 0, done.stderr
    assert not stale.exists()


@pytest.mark.parametrize("rank,held_s,speaks", [("0", 0.05, False), ("0", 0.6, True), ("1", 0.6, False)],
                         ids=["short-wait", "long-wait-rank0", "long-wait-rank1"])
def test_build_lock_wait_is_announced_only_when_long_and_by_rank_0(tmp_path, monkeypatch, capsys, rank, held_s,
                                                                    speaks):
    """Every load takes the build folder's lock, so the ranks of --nproc N queue on it for a moment
    each: that used to print 'waiting for another process that is building' on every rank that
    queued. Only a wait longer than WAIT_NOTE_AFTER_S (a real build elsewhere) is announced, by rank 0."""
    import fcntl
    import threading
    import time

    import torch.utils.cpp_extension as cpp_extension
    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose: str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "WAIT_NOTE_AFTER_S", 0.3, raising=False)
    monkeypatch.setenv("RANK", rank)
    other = open(tmp_path / "diffkit_build.flock", "a")  # another open file: flock conflicts as with a process
    fcntl.flock(other, fcntl.LOCK_EX)
    threading.Timer(held_s, lambda: fcntl.flock(other, fcntl.LOCK_UN)).start()
    start = time.monotonic()
    with cpu_kernels._build_folder_lock("name"):
        waited = time.monotonic() - start
    other.close()
    assert waited >= held_s * 0.9  # it did wait for the holder
    err = capsys.readouterr().err
    assert ("waiting for another process" in err) == speaks, err
    assert not speaks or ("holds the CPU kernels' build lock" in err and "(building or loading them)" in err)
    time.sleep(0.4)  # a cancelled note stays silent after the lock is taken
    assert "waiting" not in capsys.readouterr().err
