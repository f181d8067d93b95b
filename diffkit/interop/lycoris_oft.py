"""LyCORIS OFT / BOFT rotations and full weight differences, merged into a layer's weight (kohya-named keys of
Stable Diffusion LoRA files; :mod:`diffkit.interop.lycoris` hands these parts here).

OFT (Qiu et al. 2023, "Controlling Text-to-Image Diffusion by Orthogonal Finetuning", eq. 2 and Sec. 3.3-3.4)
multiplies a layer's weight by a block-diagonal orthogonal matrix made by the Cayley transform of skew-symmetric
blocks. LyCORIS' ``DiagOFTModule`` (``lycoris/modules/diag_oft.py``) stores the k blocks B (b x b, k b = out) as
``oft_blocks`` (k, b, b) and makes

    Q = B - B^T,   R = (I + Q)(I - Q)^-1                         (per block; Cayley)

and, with a positive ``alpha`` c (COFT, Qiu et al. Sec. 3.4: LyCORIS' ``constraint``), first rescales
Q <- Q c' / (||Q|| + 1e-8) when ||Q|| + 1e-8 > c', where ||Q|| is the Frobenius norm over all blocks and
c' = c * out (LyCORIS' ``self.constraint = constraint * out_dim``; A1111's loader does the same; ComfyUI's compares
||Q|| with alpha itself). The merged weight rotates the output channels block by block:

    W'[block j] = R_s^T W[block j],   R_s = I + s (R - I)          (LyCORIS' einsum "k n m, k n ... -> k m ...")

with W's rows grouped in k consecutive blocks of b (a convolution's (out, in, kh, kw): each output channel's whole
filter moves). The multiplier s interpolates R towards I (LyCORIS' ``r * scale + (1 - scale) * I``), not Q.
``oft_diag`` (k, b, b) - the key of LyCORIS 2.0 dev files - holds R itself (A1111's ``network_oft``: no Cayley,
no constraint, ``alpha`` unused). A ``rescale`` (out, 1, ...) multiplies the result's output channels, at full
strength for any s != 0, as LyCORIS' ``make_weight``.

BOFT (Liu et al. 2024, "Parameter-Efficient Orthogonal Finetuning via Butterfly Factorization", eq. 4-6),
LyCORIS' ``ButterflyOFTModule`` (``lycoris/modules/boft.py``): ``oft_blocks`` (m, k, b, b) of 4 dimensions (early
ComfyUI: ``boft_blocks``), b even, k b = out, 2^(m-1) dividing k; each of the m stages i = 0 .. m-1 is the Cayley
R_i (same Q, same constraint over all m k blocks) applied as a block-diagonal matrix in a butterfly order: with
h = 2^i b / 2, the rows are cut into groups of 2h, each group's two halves are interleaved
(row order 0, h, 1, h + 1, ...), consecutive runs of b rows are multiplied by the stage's blocks (R_i[j] W, no
transpose, LyCORIS' einsum "b i j, b j ... -> b i ..."), and the order is undone:

    W' = rescale * P_{m-1}^T D_{m-1} P_{m-1} ... P_0^T D_0 P_0 W,   D_i = blockdiag(I + s (R_i[j] - I))

(the multiplier per stage, as LyCORIS). peft's ``BOFTModel`` builds the same butterfly up to the order of rows
within each block: its stage i is P_i D'_i P_i^T (``boft_P``: the two halves of each group concatenated, not
interleaved), and (LyCORIS' order) x (peft's) permutes rows within blocks only, so D'_i = (A_i P_i)^T D_i (A_i P_i)
is block-diagonal again (A_i: LyCORIS' order; tests/test_lycoris_oft.py maps one onto the other for m = 1 .. 3).

A full weight difference (LyCORIS' ``FullModule``, ``lycoris/modules/full.py``): ``diff`` of the layer's weight
shape and optionally ``diff_b`` of its bias's; W' = W + s diff, b' = b + s diff_b (no alpha).

Each rotation is computed from the base weight W0 (before any ``--lora`` file merges) and added as
Delta W = W'(W0) - W0, as A1111's ``calc_updown`` does and as diffkit merges (IA)^3, so the result does not
depend on the files' order; scale 0 leaves the layer as it is, bit for bit.
"""
from __future__ import annotations

import math

import torch

from ..errors import DiffkitError

ROTATION = ("oft_blocks", "boft_blocks", "oft_diag")  # LyCORIS OFT / BOFT (early ComfyUI name) / LyCORIS 2.0 dev
PARTS = ROTATION + ("rescale", "diff", "diff_b")


def owns(parts: dict) -> bool:
    """Whether ``parts`` (key tail -> tensor of one module) hold an OFT / BOFT rotation or a full difference."""
    return any(p in parts for p in PARTS)


def check_parts(parts: dict, what: str) -> None:
    """One-line error unless ``parts``' OFT / BOFT / full-difference keys make one whole adapter (shapes are checked
    against the layer by :func:`prepare`)."""
    rotation = [p for p in ROTATION if p in parts]
    if len(rotation) > 1:
        raise DiffkitError(f"{what} has both {rotation[0]} and {rotation[1]}; allowed: one of {', '.join(ROTATION)}")
    if rotation and "diff" in parts:
        raise DiffkitError(f"{what} has both {rotation[0]} and diff; allowed: one adapter kind per module")
    if "rescale" in parts and not rotation:
        raise DiffkitError(f"{what} has rescale but no oft_blocks; allowed: rescale with an OFT / BOFT rotation")
    if "diff_b" in parts and "diff" not in parts:
        raise DiffkitError(f"{what} has diff_b but no diff")


def bad_alpha(value: float, parts: dict):
    """None if ``value`` is an allowed ``.alpha`` for one module's ``parts``, else what is allowed: OFT / BOFT read
    alpha as a constraint (0: none), every other adapter as a positive scale."""
    rotation = any(p in parts for p in ROTATION)
    if (0 <= value if rotation else 0 < value) and value < math.inf:
        return None
    return "one number >= 0 (the OFT / BOFT constraint; 0: none)" if rotation else "one positive number"


def cayley(blocks: torch.Tensor, constraint: float = 0.0) -> torch.Tensor:
    """R = (I + Q)(I - Q)^-1 of Q = B - B^T for every b x b block of ``blocks`` (..., b, b), Q first rescaled to
    Frobenius norm ``constraint`` (over all blocks) where it is larger (COFT as LyCORIS; 0: no constraint). Q is
    skew-symmetric, so I - Q is invertible and R orthogonal (Qiu et al. 2023, eq. 2)."""
    q = blocks - blocks.transpose(-1, -2)
    if constraint > 0:
        norm = torch.linalg.vector_norm(q) + 1e-8
        if norm > constraint:
            q = q * (constraint / norm)
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    return torch.linalg.solve(eye - q, eye + q)  # (I - Q)^-1 (I + Q) = (I + Q)(I - Q)^-1: they commute


def _toward_identity(r: torch.Tensor, scale: float) -> torch.Tensor:
    """I + s (R - I) (LyCORIS' multiplier on an OFT rotation)."""
    return r if scale == 1 else r * scale + (1 - scale) * torch.eye(r.shape[-1], dtype=r.dtype, device=r.device)


def rotate_oft(weight: torch.Tensor, r: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """W' = R_s^T W per block of W's output rows (module doc; ``r`` (k, b, b), k b = out)."""
    k, b, _ = r.shape
    return torch.einsum("knm,kn...->km...", _toward_identity(r, scale), weight.reshape(k, b, -1)).reshape(weight.shape)


def rotate_boft(weight: torch.Tensor, r: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """W' of the m butterfly stages ``r`` (m, k, b, b) applied to W's output rows (module doc)."""
    m, _, b, _ = r.shape
    x = weight.reshape(weight.shape[0], -1)
    cols = x.shape[1]
    for i in range(m):
        half = 2 ** i * b // 2
        x = x.reshape(-1, 2, half, cols).transpose(1, 2).reshape(-1, b, cols)  # interleave each group's halves
        x = torch.einsum("jpq,jq...->jp...", _toward_identity(r[i], scale), x)
        x = x.reshape(-1, half, 2, cols).transpose(1, 2).reshape(-1, cols)  # and back
    return x.reshape(weight.shape)


def _rotation_shape(parts: dict, shape: tuple, what: str) -> None:
    """One-line error unless the rotation (and ``rescale``) of ``parts`` fit a weight of ``shape``."""
    key = next(p for p in ROTATION if p in parts)
    dims, out = tuple(parts[key].shape), shape[0]
    oft, boft = "(k, b, b) with k b = out (OFT)", "(m, k, b, b) with k b = out, b even, 2^(m-1) dividing k (BOFT)"
    if len(dims) == 3 and key != "boft_blocks":
        fits = dims[1] == dims[2] and dims[0] * dims[1] == out
    elif len(dims) == 4 and key != "oft_diag":
        m, k, b, b2 = dims
        fits = m >= 1 and b == b2 and b % 2 == 0 and k * b == out and k % 2 ** (m - 1) == 0
    else:
        fits = False
    if not fits:
        allowed = {"oft_blocks": f"{oft} or {boft}", "boft_blocks": boft, "oft_diag": oft}[key]
        raise DiffkitError(f"{what}: {key} has shape {dims}; allowed: {allowed} for a weight of shape {tuple(shape)}")
    rescale = parts.get("rescale")
    if rescale is not None and tuple(rescale.shape) != (out, *[1] * (len(shape) - 1)):
        raise DiffkitError(f"{what}: rescale has shape {tuple(rescale.shape)}; allowed: "
                           f"{(out, *[1] * (len(shape) - 1))} for a weight of shape {tuple(shape)}")


def merged_weight(parts: dict, base: torch.Tensor, alpha: float | None, scale: float = 1.0) -> torch.Tensor:
    """W'(W0) of an OFT / BOFT rotation (float32; module doc) of the base weight ``base``; shapes checked before."""
    key = next(p for p in ROTATION if p in parts)
    blocks = parts[key].float()
    weight = base.float()
    if key == "oft_diag":  # R itself
        new = rotate_oft(weight, blocks, scale)
    else:
        r = cayley(blocks, (alpha or 0.0) * base.shape[0])
        new = rotate_boft(weight, r, scale) if r.ndim == 4 else rotate_oft(weight, r, scale)
    return new * parts["rescale"].float() if "rescale" in parts else new


def prepare(layer, parts: dict, alpha: float | None, what: str):
    """``merge(scale)`` folding one module's OFT / BOFT rotation or full difference (``parts``, alpha as read or
    None) into ``layer`` in place (module doc). Every shape is checked here, so a prepared merge does not fail."""
    shape = tuple(layer.weight.shape)
    if "diff" in parts:
        if alpha is not None:
            raise DiffkitError(f"{what} has a full weight difference (diff) and an alpha; allowed: no alpha")
        wanted = {"diff": ("weight", shape), "diff_b": ("bias", None if layer.bias is None else layer.bias.shape)}
        for key, (of, want) in wanted.items():
            if key in parts and tuple(parts[key].shape) != want:
                raise DiffkitError(f"{what}: {key} has shape {tuple(parts[key].shape)}; allowed: "
                                   f"{tuple(want) if want else 'none: the layer has no bias'} (the layer's {of})")
        base = None
    else:
        _rotation_shape(parts, shape, what)
        base = layer.weight.detach().clone()  # W0: before any file merges

    @torch.no_grad()
    def merge(scale: float) -> None:
        if scale == 0.0:  # the base as it is, bit for bit
            return
        weight = layer.weight  # on the network's device; the file's tensors are read on the CPU
        device = {k: v.to(weight.device) for k, v in parts.items()}
        if base is None:
            weight.copy_((weight.float() + device["diff"].float() * scale).to(weight.dtype))
            if "diff_b" in device:
                layer.bias.copy_((layer.bias.float() + device["diff_b"].float() * scale).to(layer.bias.dtype))
            return
        w0 = base.to(weight.device)
        delta = merged_weight(device, w0, alpha, scale) - w0.float()
        weight.copy_((weight.float() + delta).to(weight.dtype))
    return merge


__all__ = ["PARTS", "ROTATION", "bad_alpha", "cayley", "check_parts", "merged_weight", "owns", "prepare",
           "rotate_boft", "rotate_oft"]
