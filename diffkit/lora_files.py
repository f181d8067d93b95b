"""LoRA adapter files: the adapters of a LoRA checkpoint alone, loaded onto a base model with a scale.

What diffusers does with ``pytorch_lora_weights.safetensors``, ``load_lora_weights``,
``set_adapters(names, adapter_weights)`` and ``fuse_lora(lora_scale=s)``, for diffkit's LoRA
(:mod:`diffkit.lora`, Hu et al. 2021, eq. 3). :func:`export_adapter` (``diffkit convert --checkpoint
LORA_CKPT --lora-only --out A.safetensors``) writes the A and B matrices sampling would use (the EMA
ones by default) with ``meta["lora"]`` (rank, alpha, targets) and ``meta["base"]``: the
``diffkit.checkpoint.tensors_digest`` of the weights the LoRA run started from (its ``meta["init_from"]``),
the base's path and step, and its network description (``meta["unet"]``).

:func:`merge_adapters` (``diffkit sample --checkpoint BASE --lora A.safetensors:0.8 --lora B.safetensors``,
``load_denoiser(BASE, lora=[...])``) folds adapters i = 1..n into the base weights,

    W = W0 + sum_i s_i (alpha_i / r_i) B_i A_i                  (Hu et al. 2021, eq. 3, scaled as diffusers)

where s_i is the adapter's scale (diffusers' ``adapter_weights`` / ``lora_scale``; 1 by default), so the
network samples at the base's cost. Each adapter is added with :func:`diffkit.lora.add_lora`, filled
from the file and merged with :func:`diffkit.lora.merge_lora` (the same arithmetic as a self-contained
LoRA checkpoint: at scale 1 the same weights, bit for bit); a scale of 0 leaves the base untouched.

A base other than the adapter's is refused: another network description (a key or shape the
adapter lacks) always, other weights (another digest) unless ``any_base`` (``--lora-any-base``) is
given. diffusers loads any base whose shapes match; here the default is the safe one, because an
adapter learnt on other weights is a correction to weights that are not there.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import torch

from . import checkpoint as ckpt
from .errors import DiffkitError, check_float32

KIND = "lora adapter"
_HOW = "diffkit convert --checkpoint LORA_CKPT --lora-only --out FILE writes one"


def export_adapter(path, out, use_ema: bool = True) -> Path:
    """Write the adapters of the LoRA checkpoint ``path`` (its EMA ones, or the raw ones with
    ``use_ema=False``) to ``out``: only the ``*.lora_A`` / ``*.lora_B`` tensors, with the adapters'
    and the base's description (module doc). A checkpoint without LoRA is a one-line error."""
    return ckpt.save_checkpoint(out, *adapter_of(path, use_ema))


def adapter_of(path, use_ema: bool = True) -> tuple[dict, dict]:
    """(tensors, metadata) of the adapter file of the LoRA checkpoint ``path`` (:func:`export_adapter`)."""
    from .loading import chosen_weights
    tensors, meta = ckpt.load_checkpoint(path)
    ckpt.check_not_other_kind(path, meta, "a LoRA checkpoint (diffkit train --init-from CKPT --set lora_rank=R)")
    if not meta.get("lora"):
        what = "merged LoRA weights (a diffkit convert export)" if meta.get("merged_lora") else "no LoRA adapters"
        raise DiffkitError(f"{path} has {what}; --lora-only takes a LoRA training checkpoint "
                           f"(diffkit train --init-from CKPT --set lora_rank=R)")
    init = meta.get("init_from") or {}
    if not isinstance(init.get("sha256"), str):
        raise DiffkitError(f"{path} does not record the base it was trained from (meta['init_from']); its adapters "
                           f"cannot be checked against a base")
    weights = chosen_weights(path, tensors, meta, use_ema)
    adapters = {k: v for k, v in weights.items() if k.endswith((".lora_A", ".lora_B"))}
    info = {"kind": KIND, "lora": meta["lora"],
            "base": {"sha256": init["sha256"], "path": init.get("path"), "step": init.get("step"),
                     "unet": meta["unet"]},
            "exported_from": {"step": meta.get("step"), "weights": "ema" if use_ema else "raw"}}
    return adapters, info


def check_scale(scale, what: str = "LoRA scale") -> float:
    """``scale`` as a float: a finite real number (negative allowed: it subtracts the adapter) that float32 holds
    (1e308 overflowed the merge's ``add_(delta, alpha=scale)`` in a traceback)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise DiffkitError(f"{what} {scale!r} is not allowed; give a finite number (1 = as trained, 0 = off)")
    return float(check_float32(what, scale))


def first_non_finite(tensors: dict):
    """The key of the first floating-point tensor of ``tensors`` holding NaN or +-inf, None if there is none. One
    ``torch.aminmax`` pass a tensor (NaN propagates to both, an infinity is the min or the max): about 20 GB/s on one
    CPU core, against 1.6 GB/s for ``torch.isfinite(t).all()``, which writes a bool tensor first (BENCHMARKS.md
    "Refusing non-finite weights at load"); a tensor shared under two names is read once."""
    seen = set()
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.numel() == 0 \
                or value.device.type == "meta":
            continue
        where = (value.data_ptr(), value.numel(), value.dtype)
        if where in seen:
            continue
        seen.add(where)
        low, high = torch.aminmax(value.detach())
        if not bool(torch.isfinite(low) & torch.isfinite(high)):
            return key
    return None


def non_finite_error(flag: str, path, key: str) -> DiffkitError:
    """The one line for tensor ``key`` of the file ``path`` (given as ``flag``) holding NaN or infinite values."""
    return DiffkitError(f"{flag} {path}: tensor {key!r} holds NaN or infinite values; the file is damaged "
                        f"(give a file of finite weights)")


def check_finite_tensors(path, tensors: dict, flag: str = "--lora") -> dict:
    """``tensors`` of the adapter file ``path`` (given as ``flag``) if every float tensor is finite; one line naming
    the first that is not (a damaged file merged NaN into the network, and the run drew black images after a
    warning)."""
    key = first_non_finite(tensors)
    if key is not None:
        raise non_finite_error(flag, path, key)
    return tensors


def read_adapter(path) -> tuple[dict, dict]:
    """(tensors, metadata) of an adapter file, checked; one-line errors for anything else."""
    tensors, meta = ckpt.load_checkpoint(path)
    check_finite_tensors(path, tensors)
    if meta.get("kind") != KIND:
        if meta.get("lora") and "unet" in meta:
            raise DiffkitError(f"--lora {path} is a LoRA checkpoint (base + adapters): give it as --checkpoint, or "
                               f"write its adapters with diffkit convert --checkpoint {path} --lora-only --out FILE")
        raise DiffkitError(f"--lora {path} is not a LoRA adapter file ({_HOW})")
    lora, base = meta.get("lora"), meta.get("base")
    if (not isinstance(lora, dict) or not {"rank", "alpha", "targets"} <= set(lora) or not isinstance(base, dict)
            or not isinstance(base.get("sha256"), str) or not isinstance(base.get("unet"), dict)):
        raise DiffkitError(f"--lora {path} has a malformed adapter description (lora={lora!r})")
    return tensors, meta


def _check_base(path, meta: dict, base_meta: dict, base_digest: str, any_base: bool) -> None:
    base = meta["base"]
    if base_meta.get("consistency"):
        raise DiffkitError(f"--lora {path}: LoRA adapters apply to diffusion models; this --checkpoint is a "
                           f"consistency model")
    ours = base_meta.get("unet") or {}
    diff = sorted(k for k in set(base["unet"]) | set(ours)  # dropout: training's, not the weights' shapes
                  if k != "dropout" and base["unet"].get(k) != ours.get(k))
    if diff:
        k = diff[0]
        raise DiffkitError(f"--lora {path} was trained on another network ({k}={base['unet'].get(k)!r}; this "
                           f"--checkpoint has {k}={ours.get(k)!r})")
    if not any_base and base["sha256"] != base_digest:
        raise DiffkitError(f"--lora {path} was trained on other base weights (sha256 {base['sha256'][:12]}, "
                           f"{base.get('path')} step {base.get('step')}; this --checkpoint's {base_digest[:12]} (step "
                           f"{ckpt.step_of(base_meta)}), its EMA weights unless --no-ema); --lora-any-base merges it "
                           f"anyway")


@torch.no_grad()
def merge_adapter(model, tensors: dict, lora: dict, scale: float = 1.0, what: str = "adapter"):
    """Fold one adapter into ``model`` in place: W += scale (alpha / r) B A on each adapted layer
    (:func:`diffkit.lora.add_lora`, then :func:`merge_adapted`). ``tensors``: the adapted
    network's ``*.lora_A`` / ``*.lora_B`` state-dict entries; a key or shape the network lacks is a
    one-line error (at scale 0 too), and the model is unchanged then. The global RNG state is left as
    it was (add_lora draws A before it is overwritten). Returns ``model``."""
    from .lora import add_lora
    return merge_adapted(model, lambda: add_lora(model, lora["rank"], lora["alpha"], lora["targets"]), tensors,
                         scale, what)


@torch.no_grad()
def merge_adapted(model, adapt, tensors: dict, scale: float = 1.0, what: str = "adapter"):
    """Fold adapters into ``model`` in place, W += scale (alpha / r) B A (Hu et al. 2021, eq. 3):
    ``adapt()`` puts unmerged adapters on the layers (:func:`diffkit.lora.add_lora`, or
    :func:`diffkit.lora.adapt_layer` per layer, each with its rank and alpha), ``tensors`` fills their
    ``<layer>.lora_A`` / ``<layer>.lora_B`` entries, and :func:`diffkit.lora.merge_lora` folds them in.
    A key or shape that does not fit is a one-line error (at scale 0 too) and the model is unchanged
    then; at scale 0 the weights are not touched (bit for bit). RNG state and ``requires_grad`` are
    left as they were. Returns ``model``."""
    from .lora import lora_layers, merge_lora
    scale = check_scale(scale, f"{what}: scale")
    if lora_layers(model):
        raise DiffkitError(f"{what}: this network has unmerged LoRA adapters (a LoRA run's); merge them first "
                           f"(diffkit.lora.merge_lora) or load its checkpoint, which merges them")
    params = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        with torch.random.fork_rng(devices=[]):
            adapt()  # their own one-line checks
        state = {k: v for k, v in model.state_dict().items() if k.endswith((".lora_A", ".lora_B"))}
        missing, extra = sorted(state.keys() - tensors.keys()), sorted(tensors.keys() - state.keys())
        if missing or extra:
            raise DiffkitError(f"{what} does not fit this network: "
                               + (f"it lacks {missing[0]}" if missing else f"this network has no {extra[0]}")
                               + f" ({len(missing)} missing, {len(extra)} unexpected keys)")
        for k, v in state.items():
            if tuple(tensors[k].shape) != tuple(v.shape):
                raise DiffkitError(f"{what} does not fit this network: {k} is {tuple(tensors[k].shape)}, the "
                                   f"network's {tuple(v.shape)}")
        if scale == 0.0:  # W0 + 0 * delta could turn a -0.0 weight into +0.0: the base as it is (checked)
            _drop_adapters(model)
            return model
        for k, v in state.items():
            v.copy_(tensors[k])
        for _, layer in lora_layers(model):
            layer.lora_scale = check_float32(f"{what}: scale x alpha / r", scale * layer.lora_scale)
        merge_lora(model)
    except BaseException:
        _drop_adapters(model)  # back to the base network (nothing was added to W yet)
        raise
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(params[n])
    return model


def merge_in_order(merges: list) -> None:
    """Run ``merges`` ([(layers, merge)]: the layers a ``merge()`` call changes) in order; if one fails,
    the weights the earlier ones changed are put back (a failing merge leaves its own layers as they
    were, :func:`merge_adapted`), so the networks end as they began."""
    layers = {id(layer): layer for changed, _ in merges[:-1] for layer in changed}
    saved = [(p, p.detach().clone()) for layer in layers.values()  # what a merge changes (a bias: a LyCORIS diff_b)
             for p in (layer.weight, getattr(layer, "bias", None)) if p is not None]
    try:
        for _, merge in merges:
            merge()
    except BaseException:
        with torch.no_grad():
            for weight, w0 in saved:
                weight.copy_(w0)
        raise


def _drop_adapters(model) -> None:
    """Take the unmerged adapters off ``model``'s layers (their plain class again, W untouched)."""
    from .lora import lora_layers
    for _, layer in lora_layers(model):
        del layer.lora_A, layer.lora_B, layer.lora_scale
        layer.__class__ = type(layer).lora_base


def adapter_list(adapters) -> list[tuple[str, float]]:
    """``adapters`` (a list of paths or (path, scale) pairs) as [(path, scale)], scales checked."""
    if isinstance(adapters, (str, Path)) or not isinstance(adapters, (list, tuple)):
        raise DiffkitError(f"lora={adapters!r} is not allowed; give a list of adapter files or (file, scale) pairs")
    out = []
    for item in adapters:
        pair = (item, 1.0) if isinstance(item, (str, Path)) else item
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not isinstance(pair[0], (str, Path)):
            raise DiffkitError(f"lora entry {item!r} is not allowed; give a path or a (path, scale) pair")
        out.append((str(pair[0]), check_scale(pair[1], f"--lora {pair[0]}: scale")))
    return out


def merge_adapters(model, base_meta: dict, adapters: Iterable, any_base: bool = False):
    """Fold adapter files into ``model`` (the base network described by ``base_meta``), in order:
    W = W0 + sum_i s_i (alpha_i / r_i) B_i A_i. ``adapters``: paths or (path, scale) pairs. Each
    file is read and checked against the base (network description; weights digest unless
    ``any_base``) before the first is merged; if one does not fit (a key or shape), the weights the
    earlier ones changed are put back, so a failure leaves ``model`` as it was. Returns ``model``."""
    from .lora import target_layers
    read = []
    digest = None
    for path, scale in adapter_list(adapters):
        tensors, meta = read_adapter(path)
        if digest is None and not any_base:  # the base's weights, as the LoRA run's init_from recorded them
            digest = ckpt.tensors_digest(model.state_dict())
        _check_base(path, meta, base_meta, digest, any_base)
        read.append((path, tensors, meta["lora"], scale))
    merge_in_order([([layer for _, layer in target_layers(model, lora["targets"])],
                     lambda t=tensors, a=lora, s=scale, p=path: merge_adapter(model, t, a, s, f"--lora {p}"))
                    for path, tensors, lora, scale in read])
    return model


def apply_adapter_file(model, path, scale: float = 1.0, base_meta: dict | None = None, any_base: bool = False):
    """Merge the adapter file ``path`` into ``model`` at ``scale``. With ``base_meta`` (the base
    checkpoint's metadata) the base is checked as :func:`merge_adapters` does; without it only the
    keys and shapes are (a network built in Python has no checkpoint to compare)."""
    if base_meta is not None:
        return merge_adapters(model, base_meta, [(path, scale)], any_base)
    tensors, meta = read_adapter(path)
    return merge_adapter(model, tensors, meta["lora"], scale, f"--lora {path}")
