"""LyCORIS LoHa / LoKr / LoCon-Tucker / (IA)^3 weight deltas and DoRA's weight decomposition, merged into a
layer's weight (the adapters of Stable Diffusion LoRA files that are not plain LoRA; :mod:`diffkit.interop.sd_lora`
reads them).

LoHa and LoKr (Yeh et al. 2023, "Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model
Evaluation", Sec. 3) replace LoRA's B A by a Hadamard or a Kronecker product of small factors:

    LoHa:  Delta W = (B1 A1) . (B2 A2)        (element-wise product; ``hada_w1_a`` = B1, ``hada_w1_b`` = A1, ...)
    LoKr:  Delta W = W1 (x) W2                (Kronecker product; W1 = ``lokr_w1`` or ``lokr_w1_a lokr_w1_b``,
                                               W2 = ``lokr_w2`` or ``lokr_w2_a lokr_w2_b``)

and the layer gets W = W0 + s (alpha / r) Delta W (s the file's scale, alpha its ``.alpha``, default r). Key
names and shapes are LyCORIS' (``lycoris/modules/loha.py``, ``lokr.py``), which peft's ``LoHaModel`` /
``LoKrModel`` parameters share: a linear layer's B1 is (out, r), A1 (r, in); a convolution's A1 is
(r, in kh kw); with ``hada_t1`` / ``hada_t2`` (LoKr: ``lokr_t2``; LyCORIS' ``use_tucker``, peft's
``use_effective_conv2d``) a convolution's factor is the Tucker product
``einsum("ijkl,ip,jr->prkl", t (r, r, kh, kw), w_a (r, out), w_b (r, in))``. LoKr's W1 is (a, c) and W2
(b, d[, kh, kw]) with out = a b, in = c d; a 2-D W2 of a convolution is (b, d kh kw), as in LyCORIS. The rank
r is LoHa's A1 rows; LoKr's is W2's ``lokr_w2_b`` rows, else W1's ``lokr_w1_b`` rows, and a LoKr with W1 and W2
both full matrices has no rank: its scale is 1 whatever its alpha (LyCORIS' ``LokrModule``: "use scale = 1",
as ComfyUI's and A1111's loaders). peft's LoKr layer scales every layout by its config's alpha / r instead, so
for that layout a peft LoKr equals the file with alpha = r.

LyCORIS' LoCon (LoRA on convolutions, Yeh et al. 2023, Sec. 3) is plain LoRA with a convolution's down
(r, in, kh, kw) and 1x1 up; with ``use_tucker`` (``use_cp``) on a kh x kw convolution it is three convolutions,
a 1x1 ``lora_down`` (r, in, 1, 1), the core ``lora_mid.weight`` (r', r, kh, kw) with the layer's stride and
padding and a 1x1 ``lora_up`` (out, r', 1, 1) (the Tucker-2 form of Kim et al. 2016, "Compression of Deep
Convolutional Neural Networks for Fast and Low Power Mobile Applications"), one convolution of weight

    Delta W[o, i, k, l] = sum_pq up[o, p] mid[p, q, k, l] down[q, i]      (LyCORIS' ``LoConModule.make_weight``)

scaled by alpha / r with r = ``lora_down``'s rows (LyCORIS' ``lora_dim``; ComfyUI's and A1111's rank).

(IA)^3 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning", Sec. 3.3) rescales a layer's activations by a learned vector l; LyCORIS' ``IA3Module`` stores l as
``weight`` ((n,) for a Linear, (1, n, 1, 1) for a convolution) and ``on_input`` (1: l scales the n input
channels, 0: the n output channels) and merges W = W0 (1 + s l) along that axis, i.e. Delta W = W0 l with scale
1 (no rank, no alpha; a bias is left as it is, as LyCORIS' merged forward). W0 is the base weight, before any
``--lora`` file merges (as A1111's networks compute each file's update from the stored original), so the result
does not depend on the files' order.

DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation", eq. 5) adds a magnitude vector m:

    W' = m (W0 + s Delta W) / || W0 + s Delta W ||_c

with the norm over each output channel's weights (the (in, kh, kw) entries of one output row), as peft
computes it (``DoraLinearLayer.get_weight_norm``, ``lora_magnitude_vector`` of shape (out,), a convolution's
(1, out, 1, 1)); the scale s multiplies Delta W only, as peft's ``scaling`` under diffusers'
``fuse_lora(lora_scale=s)``.
kohya / LyCORIS files store m as ``dora_scale``: (out, 1, ...) is that output-channel norm (LyCORIS'
``wd_on_out``), (1, in, ...) LyCORIS' default, a norm over each input channel's (out, kh, kw) entries; both as
LyCORIS' ``apply_weight_decompose`` with its eps (float32 eps added to the norm), a (1, n, 1, 1) convolution
magnitude with n = in read as LyCORIS and ComfyUI read it (input channels). Scale 0 leaves the weight as it is
(diffkit's rule for every file; peft at scaling 0 would still give m W0 / ||W0||_c).
"""
from __future__ import annotations

import torch

from ..errors import DiffkitError
from . import lycoris_oft

LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
MAGNITUDE = ("dora_scale", "lora_magnitude_vector")  # kohya / LyCORIS, diffusers / peft
LOCON_MID = "lora_mid.weight"  # LyCORIS LoCon's Tucker core (use_tucker / use_cp)
IA3 = ("weight", "on_input")  # LyCORIS (IA)^3: the vector l and the axis it scales
KOHYA_PARTS = LOHA + LOKR + MAGNITUDE[:1] + (LOCON_MID,) + IA3 + lycoris_oft.PARTS  # kohya keys besides LoRA's


def check_parts(parts: dict, lora: bool, what: str) -> None:
    """One-line error unless ``parts`` (key tail -> tensor of one module; ``lora``: it has a LoRA down or up
    matrix too) is one whole LoRA, LoHa or LoKr adapter, with or without a DoRA magnitude."""
    loha, lokr, ia3, oft = ([p for p in kind if p in parts] for kind in (LOHA, LOKR, IA3, lycoris_oft.PARTS))
    if LOCON_MID in parts and not lora:
        raise DiffkitError(f"{what} has {LOCON_MID} but no lora_down / lora_up matrices")
    kinds = [k for k, found in (("LoRA", lora), ("LoHa", loha), ("LoKr", lokr), ("(IA)^3", ia3),
                                ("OFT / full", oft)) if found]
    if len(kinds) > 1:
        raise DiffkitError(f"{what} has both {kinds[0]} and {kinds[1]} tensors; allowed: one adapter kind per module")
    if (ia3 or oft) and any(k in parts for k in MAGNITUDE):
        raise DiffkitError(f"{what} has an {'(IA)^3 vector' if ia3 else oft[0] + ' tensor'} and a DoRA magnitude; "
                           f"allowed: DoRA on LoRA, LoHa or LoKr")
    if oft:
        return lycoris_oft.check_parts(parts, what)
    if "on_input" in parts and (parts["on_input"].numel() != 1 or float(parts["on_input"]) not in (0.0, 1.0)):
        raise DiffkitError(f"{what}: on_input is {parts['on_input'].tolist()}; allowed: 0 (scale the output "
                           f"channels) or 1 (the input channels)")
    if ia3:
        needed = IA3
    elif loha:
        needed = LOHA[:4] + (LOHA[4:] if set(LOHA[4:]) & set(loha) else ())
    elif lokr:
        needed = ()
        for side, factors in (("1", LOKR[1:3]), ("2", LOKR[4:])):  # W1 / W2: the full matrix or its factors
            if f"lokr_w{side}" in parts and set(factors) & set(parts):
                raise DiffkitError(f"{what} has lokr_w{side} and its factors; allowed: lokr_w{side} or "
                                   f"lokr_w{side}_a / lokr_w{side}_b")
            needed += (f"lokr_w{side}",) if f"lokr_w{side}" in parts else factors[:2]
    else:
        needed = ()
    missing = [p for p in needed if p not in parts]
    if missing:
        partner = {a: b for x, y in zip(LOHA[::2] + LOKR[1::3] + IA3[:1], LOHA[1::2] + LOKR[2::3] + IA3[1:])
                   for a, b in ((x, y), (y, x))}
        have = partner[missing[0]] if partner.get(missing[0]) in parts else (loha + lokr + ia3)[0]
        raise DiffkitError(f"{what} has {have} but no {missing[0]}")
    if not kinds:
        raise DiffkitError(f"{what} has a DoRA magnitude but no LoRA, LoHa or LoKr matrices")


def _mm(parts: dict, a: str, b: str, what: str) -> torch.Tensor:
    """parts[a] @ parts[b] (2-D), a one-line error naming the keys when the shapes do not chain."""
    x, y = parts[a], parts[b]
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[0]:
        raise DiffkitError(f"{what}: {a} {tuple(x.shape)} and {b} {tuple(y.shape)} do not multiply; allowed: "
                           f"(m, r) and (r, n)")
    return x.float() @ y.float()


def _tucker(parts: dict, t: str, a: str, b: str, what: str) -> torch.Tensor:
    """The Tucker product einsum("ijkl,ip,jr->prkl", t, w_a, w_b) of (r, r, kh, kw), (r, out) and (r, in) factors:
    (out, in, kh, kw)."""
    core, wa, wb = parts[t], parts[a], parts[b]
    if core.ndim != 4 or wa.ndim != 2 or wb.ndim != 2 or (wa.shape[0], wb.shape[0]) != tuple(core.shape[:2]):
        raise DiffkitError(f"{what}: {t} {tuple(core.shape)}, {a} {tuple(wa.shape)} and {b} {tuple(wb.shape)} do not "
                           f"fit; allowed: (r, r, kh, kw), (r, out) and (r, in)")
    return torch.einsum("ijkl,ip,jr->prkl", core.float(), wa.float(), wb.float())


def _locon_tucker(parts: dict, shape: tuple, what: str) -> tuple[torch.Tensor, int]:
    """(Delta W, r) of a LyCORIS LoCon with its Tucker core (module doc): the 1x1 down (r, in, 1, 1), the core
    (r', r, kh, kw) with the layer's kernel and the 1x1 up (out, r', 1, 1) as one convolution."""
    down, mid, up = parts["lora_down"], parts[LOCON_MID], parts["lora_up"]
    rank, core = (down.shape[0], mid.shape[0]) if down.ndim == mid.ndim == 4 else (0, 0)
    if len(shape) != 4 or rank < 1 or up.ndim != 4 or (tuple(down.shape), tuple(mid.shape), tuple(up.shape)) != \
            ((rank, shape[1], 1, 1), (core, rank, *shape[2:]), (shape[0], core, 1, 1)):
        raise DiffkitError(f"{what} does not fit this network: down {tuple(down.shape)}, {LOCON_MID} "
                           f"{tuple(mid.shape)}, up {tuple(up.shape)} for a weight of shape {tuple(shape)}; allowed: "
                           f"a convolution's (r, in, 1, 1), (r', r, kh, kw) and (out, r', 1, 1)")
    factors = {"core": mid, "up": up.flatten(1).T, "down": down.flatten(1)}  # _tucker's (r', out) and (r, in)
    return _tucker(factors, "core", "up", "down", what), rank


def _ia3(parts: dict, base: torch.Tensor, what: str) -> torch.Tensor:
    """W0 l (module doc): ``base`` W0 scaled along its input (``on_input`` 1) or output axis by the vector l."""
    vector, axis = parts["weight"], int(parts["on_input"].item() != 0)
    n, ones = base.shape[axis], (1,) * (base.ndim - 2)
    layouts = [(n,)] + ([(1, n, *ones)] if ones else [])  # LyCORIS: a Linear's (n,), a convolution's (1, n, 1, 1)
    if tuple(vector.shape) not in layouts:
        raise DiffkitError(f"{what}: the (IA)^3 weight has shape {tuple(vector.shape)}; allowed: "
                           f"{' or '.join(map(str, layouts))} (on_input {axis}) for a weight of shape "
                           f"{tuple(base.shape)}")
    view = [1] * base.ndim
    view[axis] = n
    return base.float() * vector.float().reshape(view)


def delta_weight(parts: dict, shape: tuple, what: str, base: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, int | None]:
    """(Delta W in the layer's weight ``shape``, float32, unscaled; the rank r, or None for a LoKr of two full
    matrices and for (IA)^3) of one module's LoRA (``lora_down`` / ``lora_up``, LoCon's ``lora_mid.weight``),
    LoHa, LoKr or (IA)^3 ``parts`` (module doc); (IA)^3's Delta W = W0 l needs the layer's weight ``base``."""
    if LOCON_MID in parts:
        delta, rank = _locon_tucker(parts, shape, what)
    elif "on_input" in parts:
        delta, rank = _ia3(parts, base, what), None
    elif "lora_down" in parts:
        down, up = parts["lora_down"], parts["lora_up"]
        rank = down.shape[0] if down.ndim else 0
        fits = (down.ndim == len(shape) and up.ndim == len(shape) and tuple(down.shape[1:]) == tuple(shape[1:])
                and tuple(up.shape) == (shape[0], rank, *[1] * (len(shape) - 2)))
        if rank < 1 or not fits:
            raise DiffkitError(f"{what} does not fit this network: down {tuple(down.shape)}, up {tuple(up.shape)} for "
                               f"a weight of shape {tuple(shape)}")
        delta, rank = up.reshape(shape[0], rank).float() @ down.reshape(rank, -1).float(), rank
    elif "hada_w1_a" in parts:
        if "hada_t1" in parts:
            delta = _tucker(parts, "hada_t1", "hada_w1_a", "hada_w1_b", what) * \
                _tucker(parts, "hada_t2", "hada_w2_a", "hada_w2_b", what)
        else:
            one, two = _mm(parts, "hada_w1_a", "hada_w1_b", what), _mm(parts, "hada_w2_a", "hada_w2_b", what)
            if one.shape != two.shape:
                raise DiffkitError(f"{what}: hada_w1_a hada_w1_b is {tuple(one.shape)}, hada_w2_a hada_w2_b "
                                   f"{tuple(two.shape)}; allowed: the same shape")
            delta = one * two
        rank = parts["hada_w1_b"].shape[0]
    else:
        w1 = parts["lokr_w1"].float() if "lokr_w1" in parts else _mm(parts, "lokr_w1_a", "lokr_w1_b", what)
        if "lokr_w2" in parts:
            w2 = parts["lokr_w2"].float()
        elif "lokr_t2" in parts:
            w2 = _tucker(parts, "lokr_t2", "lokr_w2_a", "lokr_w2_b", what)
        else:
            w2 = _mm(parts, "lokr_w2_a", "lokr_w2_b", what)
        if w1.ndim != 2 or w2.ndim not in (2, 4):
            raise DiffkitError(f"{what}: LoKr factors of shapes {tuple(w1.shape)} and {tuple(w2.shape)}; allowed: a "
                               f"2-D W1 and a 2-D or 4-D W2")
        delta = torch.kron(w1[:, :, None, None] if w2.ndim == 4 else w1, w2.contiguous())
        side = "lokr_w2_b" if "lokr_w2_b" in parts else "lokr_w1_b" if "lokr_w1_b" in parts else None
        rank = parts[side].shape[0] if side else None
    if delta.shape[0] != shape[0] or delta.numel() != torch.Size(shape).numel() or \
            (delta.ndim == 4 and tuple(delta.shape) != tuple(shape)):
        raise DiffkitError(f"{what} does not fit this network: its weight change is {tuple(delta.shape)}, the layer's "
                           f"weight {tuple(shape)}")
    return delta.reshape(shape), rank


def _magnitude_axis(magnitude: torch.Tensor, shape: tuple, key: str, what: str) -> tuple[torch.Tensor, int]:
    """(m as a broadcastable (out, 1, ...) or (1, in, ...) float tensor, the axis 0 / 1 it scales) of a DoRA
    magnitude of a weight of ``shape`` (module doc: peft's layouts, LyCORIS' two)."""
    out, inp, ones = shape[0], shape[1], (1,) * (len(shape) - 2)
    peft = (out,) if not ones else (1, out, *ones)
    if key == "lora_magnitude_vector":
        layouts = {peft: 0}
    else:  # kohya / LyCORIS dora_scale: (out, 1, ...), (1, in, ...); peft's layout too (diffusers loads it so)
        layouts = {(out,): 0, peft: 0, (out, 1, *ones): 0, (1, inp, *ones): 1}  # (1, n, 1, 1), n = in = out: in
    dims = tuple(magnitude.shape)
    if dims not in layouts:
        raise DiffkitError(f"{what}: {key} has shape {dims}; allowed: {' or '.join(map(str, layouts))} for a weight "
                           f"of shape {tuple(shape)}")
    axis = layouts[dims]
    return magnitude.float().reshape((out, 1, *ones) if axis == 0 else (1, inp, *ones)), axis


def decompose(weight: torch.Tensor, magnitude: torch.Tensor, axis: int, eps: float = 0.0,
              norm_of: torch.Tensor = None) -> torch.Tensor:
    """m W / ||W||_c (Liu et al. 2024, eq. 5): ``magnitude`` (broadcastable, axis 0: one per output channel,
    the norm over the rest; axis 1: one per input channel, the norm over output channels and kernel).
    ``norm_of``: the matrix whose column norms divide (default W itself)."""
    dims = tuple(d for d in range(weight.ndim) if d != axis)
    norm = torch.linalg.vector_norm(weight if norm_of is None else norm_of, dim=dims, keepdim=True)
    return weight * (magnitude / (norm + eps))


class Stacked:
    """Linear ``layers`` seen as one whose weight stacks theirs by rows: diffusers' ``fuse_qkv_projections``
    (``to_qkv`` = [``to_q``; ``to_k``; ``to_v``]), which ``Flux2LoraLoaderMixin`` makes for a LoKr on the fused
    projection. A Kronecker product over the stack does not split into per-layer factors, so :func:`prepare` merges
    into the stacked weight and writes each layer's rows back (the fused layer's merge, row for row)."""

    def __init__(self, layers):
        self.layers = tuple(layers)
        first = self.layers[0].weight
        self.weight = torch.empty((sum(m.weight.shape[0] for m in self.layers), *first.shape[1:]), dtype=first.dtype,
                                  device="meta")  # its shape for prepare's checks; the layers' rows at merge time

    def wrap(self, merge):
        """``merge(scale)`` of the stacked weight, run on the layers' current rows and written back to them."""
        @torch.no_grad()
        def run(scale: float) -> None:
            shape, self.weight = self.weight, torch.cat([m.weight for m in self.layers])
            merge(scale)
            for layer, rows in zip(self.layers, self.weight.split([m.weight.shape[0] for m in self.layers])):
                layer.weight.copy_(rows)
            self.weight = shape
        return run


def prepare(layer, parts: dict, alpha: float | None, what: str, kohya: bool):
    """:func:`prepare_layer`, for a :class:`Stacked` ``layer`` too (its merge writes the stacked layers' rows)."""
    if isinstance(layer, Stacked):
        return layer.wrap(prepare_layer(layer, parts, alpha, what, kohya))
    return prepare_layer(layer, parts, alpha, what, kohya)


def prepare_layer(layer, parts: dict, alpha: float | None, what: str, kohya: bool):
    """``merge(scale)`` folding one module's adapter (``parts``: key tail -> tensor, LoRA ones as ``lora_down`` /
    ``lora_up``, alpha as read or None) into ``layer`` in place: W = W0 + s (alpha / r) Delta W, then DoRA's
    decomposition if the adapter has a magnitude. Every shape is checked here (on meta tensors, nothing
    computed), so a prepared merge does not fail on the file."""
    shape = tuple(layer.weight.shape)
    if isinstance(layer, torch.nn.Conv2d) and layer.groups != 1:
        raise DiffkitError(f"{what}: LyCORIS / DoRA adapters adapt convolutions with groups=1; this one has "
                           f"groups={layer.groups}")
    if lycoris_oft.owns(parts):  # OFT / BOFT / a full difference: a merged weight, not a scaled Delta W
        return lycoris_oft.prepare(layer, parts, alpha, what)
    if "on_input" in parts and alpha is not None:
        raise DiffkitError(f"{what} has an (IA)^3 vector and an alpha; allowed: no alpha ((IA)^3 has no rank)")
    meta = {k: v if k == "on_input" else v.to("meta") for k, v in parts.items()}  # on_input: read for its axis
    _, rank = delta_weight(meta, shape, what, layer.weight.to("meta"))
    key = next((k for k in MAGNITUDE if k in parts), None)
    magnitude, axis = _magnitude_axis(parts[key], shape, key, what) if key else (None, None)
    factor = 1.0 if rank is None else (rank if alpha is None else alpha) / rank
    base = layer.weight.detach().clone() if "on_input" in parts else None  # (IA)^3's W0: before any file merges
    # a diffusers / PEFT DoRA's norm: of W0 + s Delta W, W0 before any file merges (peft's merge, which takes the
    # earlier adapters out for it, ``_unmerged_base_weight``), applied to the weight as merged so far
    unmerged = layer.weight.detach().clone() if magnitude is not None and not kohya else None

    @torch.no_grad()
    def merge(scale: float) -> None:
        if scale == 0.0:  # the base as it is, bit for bit
            return
        weight = layer.weight  # on the network's device; the file's tensors are read on the CPU
        delta, _ = delta_weight({k: v.to(weight.device) for k, v in parts.items()}, shape, what,
                                weight if base is None else base)
        new = weight.float() + delta * (scale * factor)
        if magnitude is not None:
            norm_of = None if unmerged is None or torch.equal(unmerged, weight) else \
                unmerged.to(weight.device).float() + delta * (scale * factor)
            new = decompose(new, magnitude.to(weight.device), axis, torch.finfo(torch.float32).eps if kohya else 0.0,
                            norm_of)
        weight.copy_(new.to(weight.dtype))
    return merge


__all__ = ["IA3", "KOHYA_PARTS", "LOCON_MID", "MAGNITUDE", "Stacked", "check_parts", "delta_weight", "decompose",
           "prepare", "prepare_layer"]
