"""Multi-head scaled dot-product attention, softmax(Q K^T / sqrt(d)) V (Vaswani et al. 2017, eq. 1).

On the GPU and for long sequences it is :func:`torch.nn.functional.scaled_dot_product_attention`
(flash / memory-efficient kernels that never hold the L_q x L_k scores). On the CPU in bf16, up to
``CPU_MATMUL_ATTENTION_MAX`` score entries per head (a 16x16 map attending to itself), it is
:class:`_KeptProbabilitiesAttention`: two batched matrix products around a softmax in the forward
pass, the probabilities kept for the backward pass, and four matrix products there, which is what the
U-Nets' attention at 7x7-16x16 maps costs least as in bf16 (docs/performance.md, "bf16 attention"):
PyTorch's fused CPU kernel recomputes the probabilities in its backward pass and runs its bf16
matrix products in blocks far below the matrix units' rate (1.7x slower in forward + backward at
14x14 tokens of 64 channels).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..errors import DiffkitError

# Largest L_q * L_k per head attended with matrix products on the CPU (a 16x16 map attending to
# itself: 128 KiB of bf16 probabilities per sample and head kept for the backward pass); larger
# maps keep the fused kernel, which never holds the scores.
CPU_MATMUL_ATTENTION_MAX = 256 * 256


class _KeptProbabilitiesAttention(torch.autograd.Function):
    """softmax(scale * Q K^T) V on (N, L, d) tensors with P = softmax(...) kept for the backward:
    dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(P * dP)), dQ = scale dS K, dK = scale dS^T Q.

    bf16: each product accumulates in float32 and rounds once (oneDNN); the softmax and its
    gradient compute in float32 and round once (PyTorch's CPU kernels), so the scores and the
    probabilities carry one bf16 rounding each."""

    @staticmethod
    def forward(ctx, q, k, v, scale: float):
        scores = torch.baddbmm(q.new_empty(q.shape[0], q.shape[1], k.shape[1]), q, k.transpose(1, 2),
                               beta=0.0, alpha=scale)
        probs = torch.softmax(scores, dim=-1)
        ctx.save_for_backward(q, k, v, probs)
        ctx.scale = scale
        return torch.bmm(probs, v)

    @staticmethod
    @once_differentiable  # P is kept without its graph: second derivatives would be wrong
    def backward(ctx, grad_out):
        q, k, v, probs = ctx.saved_tensors
        grad_q = grad_k = grad_v = None
        if ctx.needs_input_grad[2]:
            grad_v = torch.bmm(probs.transpose(1, 2), grad_out)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            grad_scores = torch._softmax_backward_data(torch.bmm(grad_out, v.transpose(1, 2)), probs, -1,
                                                       probs.dtype)
            if ctx.needs_input_grad[0]:
                grad_q = torch.baddbmm(torch.empty_like(q, memory_format=torch.contiguous_format), grad_scores, k,
                                       beta=0.0, alpha=ctx.scale)
            if ctx.needs_input_grad[1]:
                grad_k = torch.baddbmm(torch.empty_like(k, memory_format=torch.contiguous_format),
                                       grad_scores.transpose(1, 2), q, beta=0.0, alpha=ctx.scale)
        return grad_q, grad_k, grad_v, None


def uses_matmuls(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether :func:`attention` runs :class:`_KeptProbabilitiesAttention`: bf16 CPU tensors with at
    most ``CPU_MATMUL_ATTENTION_MAX`` scores per head. In fp32 the fused kernel stays: the matrix
    products win alone at one head (1.1-1.4x) but not inside a training step (MNIST: 2 of 210 ms,
    under the noise), and lose at 2-8 heads (0.36-0.96x, the heads' split copies and 16-64-channel
    products)."""
    return (q.device.type == "cpu" and q.dtype == k.dtype == v.dtype == torch.bfloat16
            and q.shape[1] * k.shape[1] <= CPU_MATMUL_ATTENTION_MAX)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention on (B, L_q, C) queries and (B, L_k, C) keys / values, C split into
    ``heads`` heads of C / heads channels, scale 1/sqrt(C / heads); returns (B, L_q, C)."""
    b, lq, c = q.shape
    d = c // heads
    if uses_matmuls(q, k, v):
        if heads == 1:  # (B, L, C) views of a fused qkv projection go in as they are
            return _KeptProbabilitiesAttention.apply(q, k, v, d ** -0.5)
        split = [x.reshape(b, x.shape[1], heads, d).transpose(1, 2).reshape(b * heads, x.shape[1], d)
                 for x in (q, k, v)]
        out = _KeptProbabilitiesAttention.apply(*split, d ** -0.5)
        return out.reshape(b, heads, lq, d).transpose(1, 2).reshape(b, lq, c)
    split = [x.reshape(b, x.shape[1], heads, d).transpose(1, 2) for x in (q, k, v)]
    return F.scaled_dot_product_attention(*split).transpose(1, 2).reshape(b, lq, c)


def identity_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, identity) -> torch.Tensor:
    """Self-attention with the map softmax(Q K^T / sqrt(d)) replaced by the identity for the samples
    ``identity`` selects, so that their output is V itself: the perturbed self-attention of
    Perturbed-Attention Guidance (Ahn et al. 2024, arXiv:2403.17377: the map A = I;
    diffusers' ``PAGIdentitySelfAttnProcessor``). ``identity``: True (every sample) or a (B,) bool tensor; the
    other samples get :func:`attention` unchanged, bit for bit (the attention of the whole batch is
    computed and the selected rows replaced, so no host sync picks the rows)."""
    if identity is True:
        return v
    if not isinstance(identity, torch.Tensor) or identity.dtype != torch.bool or identity.shape != q.shape[:1]:
        shape = tuple(identity.shape) if isinstance(identity, torch.Tensor) else type(identity).__name__
        raise DiffkitError(f"a perturbed-attention mask of shape {shape} for a batch of {q.shape[0]}; give True or a "
                           f"bool mask of shape ({q.shape[0]},), one per sample (a wrapper between the guidance and "
                           f"the network changed the batch)")
    return torch.where(identity[:, None, None], v, attention(q, k, v, heads))
