"""diffkit.optim.FusedAdamW: PyTorch's fused AdamW without its gradient copies for channels_last
weights, the same update (AdamW, Loshchilov & Hutter 2019, Alg. 2) to the last bit."""
import copy

import torch
from torch.profiler import profile

from diffkit.checkpoint import match_parameter_layout
from diffkit.optim import FusedAdamW, pass_channels_last_as_contiguous


def _parameters(seed: int) -> list[torch.nn.Parameter]:
    """channels_last 3x3 weights, a channels_last 1x1 weight (also contiguous), a contiguous 3x3
    weight, a matrix and a bias, with gradients in their parameters' layouts."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [((8, 4, 3, 3), True), ((16, 8, 3, 3), True), ((8, 16, 1, 1), True), ((4, 4, 3, 3), False),
              ((12, 5), False), ((7,), False)]
    params = []
    for shape, channels_last in shapes:
        p = torch.randn(shape, generator=gen)
        params.append(torch.nn.Parameter(p.contiguous(memory_format=torch.channels_last) if channels_last else p))
    return params


def _set_gradients(params, step: int) -> None:
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.empty_like(p).copy_(torch.randn(p.shape, generator=gen))  # the parameter's strides


def _adamw_reference(p0: torch.Tensor, grads: list[torch.Tensor], lr, beta1, beta2, eps, wd) -> torch.Tensor:
    """AdamW in float64 (Loshchilov & Hutter 2019, Alg. 2; PyTorch's bias-corrected form)."""
    p, m, v = p0.double(), torch.zeros_like(p0, dtype=torch.float64), torch.zeros_like(p0, dtype=torch.float64)
    for t, g in enumerate(grads, start=1):
        g = g.double()
        p = p * (1 - lr * wd)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        step = lr / (1 - beta1 ** t)
        p = p - step * m / ((v / (1 - beta2 ** t)).sqrt() + eps)
    return p


def test_fused_adamw_equals_torch_fused_adamw_bitwise_and_the_formula():
    kwargs = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)
    mine, theirs = _parameters(0), _parameters(0)
    start = [p.detach().clone() for p in mine]
    opt_mine, opt_theirs = FusedAdamW(mine, **kwargs), torch.optim.AdamW(theirs, fused=True, **kwargs)
    history = []
    for step in range(4):
        _set_gradients(mine, step)
        _set_gradients(theirs, step)
        history.append([p.grad.clone() for p in mine])
        opt_mine.step()
        opt_theirs.step()
    for a, b in zip(mine, theirs):
        assert torch.equal(a, b) and a.stride() == b.stride()
    for i, (p, p0) in enumerate(zip(mine, start)):
        ref = _adamw_reference(p0, [grads[i] for grads in history], 1e-2, 0.9, 0.99, 1e-8, 0.05)
        assert (p.double() - ref).abs().max() < 1e-5
    for name in ("exp_avg", "exp_avg_sq"):
        for a, b in zip(mine, theirs):
            assert torch.equal(opt_mine.state[a][name], opt_theirs.state[b][name])
    # the state_dict is AdamW's: a plain AdamW resumes from it (the moments in the parameters'
    # strides, as a checkpoint resumes) and takes the same next step
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in mine]
    opt_resumed = torch.optim.AdamW(resumed, fused=True, **kwargs)
    opt_resumed.load_state_dict(copy.deepcopy(opt_mine.state_dict()))  # as from a file: no shared moments
    match_parameter_layout(opt_resumed)
    _set_gradients(mine, 9)
    _set_gradients(resumed, 9)
    opt_mine.step()
    opt_resumed.step()
    assert all(torch.equal(a, b) for a, b in zip(mine, resumed))


def test_fused_adamw_makes_no_gradient_copies_for_channels_last_weights():
    params = [torch.nn.Parameter(torch.randn(32, 16, 3, 3).contiguous(memory_format=torch.channels_last))
              for _ in range(3)]
    _set_gradients(params, 0)
    for optimizer, copies in ((torch.optim.AdamW(params, fused=True), 3), (FusedAdamW(params), 0)):
        optimizer.step()
        with profile() as prof:
            optimizer.step()
        assert sum(e.count for e in prof.key_averages() if e.key == "aten::clone") == copies


def test_only_parameters_whose_tensors_all_are_channels_last_are_permuted():
    cl = torch.randn(4, 5, 3, 3).contiguous(memory_format=torch.channels_last)
    plain = torch.randn(4, 5, 3, 3)
    step = torch.zeros(())
    params, grads, moments, steps = [cl, cl.clone(), plain], [cl.clone(), plain.clone(), plain.clone()], \
        [cl.clone(), cl.clone(), plain.clone()], [step, step, step]
    pass_channels_last_as_contiguous([params, grads, moments, [], steps])
    assert params[0].shape == grads[0].shape == moments[0].shape == (4, 3, 3, 5)  # permuted (O, kH, kW, I)
    assert params[0].is_contiguous() and params[0].data_ptr() == cl.data_ptr()
    assert params[1].shape == (4, 5, 3, 3) and params[1].stride() == cl.stride()  # a contiguous grad: kept
    assert grads[1].is_contiguous() and moments[1].stride() == cl.stride()
    assert all(t.shape == (4, 5, 3, 3) for t in (params[2], grads[2], moments[2])) and steps[0].dim() == 0
