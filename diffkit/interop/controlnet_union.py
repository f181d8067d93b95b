"""ControlNet-Union (xinsir's ControlNet++ for SD-XL, e.g. ``controlnet-union-sdxl-1.0`` and its "ProMax"):
one ControlNet for several kinds of control image, diffusers' ``ControlNetUnionModel``, as
``StableDiffusionXLControlNetUnionPipeline`` runs it (its ``control_image`` / ``control_mode`` lists; in edits
``...Img2ImgPipeline`` and, with the 4-channel UNet, ``...InpaintPipeline``).

Each control image comes with its control type (the model card's ``control_mode``: :data:`UNION_MODES`). The
network embeds each image c_j with the ControlNet's conditioning embedding, adds the type's learned task
embedding to the image's mean feature, lets a small transformer mix those tokens with the latents' mean feature,
and adds every image's features (plus a per-image shift from the transformer) to the latents' first features;
the time embedding gets a sinusoidal embedding of the 0/1 vector of the types in use (diffusers'
``ControlNetUnionModel.forward``). Then it is an SD-XL ControlNet (:mod:`.controlnet`): residuals added to the
UNet's skip connections and middle block.

The conditioning scales and guidance windows are per control image, with diffusers' two regimes kept as they are:

* one control image (or several union ControlNets, one image each: ``MultiControlNetUnionModel``, whose
  residuals add up in order): the image's scale times its window's 0/1 multiplies the residuals, as a plain
  ControlNet's; scale 0, or a step outside the window, adds nothing (no call);
* one union ControlNet with N > 1 control images (:func:`joint_residuals`): the scales (times the windows' 0/1)
  weigh the images' features inside the network and the residuals are not scaled, so the ControlNet is called at
  every step and still adds residuals of the latents alone where every image is weighted 0 (diffusers' behaviour).

Guess mode is refused (:data:`NO_GUESS_MODE`): diffusers 0.42.1's union pipelines give the ControlNet the
conditional half of the batch but ``control_type`` rows for both halves, and fail.

FLUX.1's ControlNet-Union (InstantX's ``FLUX.1-dev-Controlnet-Union``, Shakker-Labs' ``...-Union-Pro``) is a
``FluxControlNetModel`` whose config sets ``num_mode``: its control mode's learned embedding is one more text token
before the prompt's (``controlnet_mode_embedder``; :mod:`.flux_controlnet`). The modes and counts are checked here
too (:data:`FLUX_UNION`: the model cards' names), but each control image is its own call, scaled as a plain
ControlNet's (``FluxMultiControlNetModel``, which takes one union ControlNet with N images as N ControlNets), and a
FLUX union mixes with plain FLUX ControlNets (their mode None, the pipeline's -1, which they ignore).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..errors import DiffkitError

UNION_MODES = {"openpose": 0, "depth": 1, "hed": 2, "pidi": 2, "scribble": 2, "ted": 2, "canny": 3, "lineart": 3,
               "anime_lineart": 3, "mlsd": 3, "normal": 4, "segment": 5, "tile": 6, "repaint": 7}
"""The control types of xinsir's ControlNet-Union SD-XL model card (6 in ``controlnet-union-sdxl-1.0``; ProMax's
``num_control_type`` 8 adds tile and repaint); an index is taken as it is."""

MODES_ALLOWED = ("openpose (0), depth (1), hed / pidi / scribble / ted (2), canny / lineart / anime_lineart / mlsd "
                 "(3), normal (4), segment (5), tile (6), repaint (7), or an index")

UNION_CLASS = "ControlNetUnionModel"

FLUX_UNION_MODES = {"canny": 0, "tile": 1, "depth": 2, "blur": 3, "pose": 4, "gray": 5, "lq": 6, "low_quality": 6}
"""The control modes of the FLUX.1 ControlNet-Union model cards (InstantX ``FLUX.1-dev-Controlnet-Union``,
Shakker-Labs ``FLUX.1-dev-ControlNet-Union-Pro``); an index below the folder's ``num_mode`` is taken as it is."""


@dataclass(frozen=True)
class UnionKind:
    """A family of ControlNet-Unions: its mode names, the allowed values in words, the config key of the mode
    count (and its default), the pipeline named in messages."""

    names: dict
    allowed: str
    count_key: str
    default_count: Optional[int]
    pipeline: str


SDXL_UNION = UnionKind(UNION_MODES, MODES_ALLOWED, "num_control_type", 6, "StableDiffusionXLControlNetUnionPipeline")
FLUX_UNION = UnionKind(FLUX_UNION_MODES, "canny (0), tile (1), depth (2), blur (3), pose (4), gray (5), lq / "
                                         "low_quality (6), or an index", "num_mode", None, "FluxControlNetPipeline")

NO_GUESS_MODE = ("guess mode (or global_pool_conditions) is not supported with a ControlNet-Union: diffusers' union "
                 "pipelines fail on it with classifier-free guidance (control_type keeps both halves' rows); drop "
                 "--guess-mode")


def union_kind(config, class_name: Optional[str] = None) -> Optional[UnionKind]:
    """The :class:`UnionKind` of a ControlNet's ``config`` (class ``class_name``, default the config's
    ``_class_name``): :data:`SDXL_UNION` for a ``ControlNetUnionModel``, :data:`FLUX_UNION` for a
    ``FluxControlNetModel`` with ``num_mode``; None for a plain ControlNet."""
    class_name = class_name or config.get("_class_name")
    if class_name == UNION_CLASS:
        return SDXL_UNION
    if class_name == "FluxControlNetModel" and config.get("num_mode") is not None:
        return FLUX_UNION
    return None


def is_union(model) -> bool:
    """Whether ``model`` is a ControlNet-Union (an SD-XL ``ControlNetUnionModel`` or a FLUX ``FluxControlNetModel``
    with ``num_mode``)."""
    return union_kind(model.config, type(model).__name__) is not None


def control_mode_index(value, flag: str = "--control-mode", kind: UnionKind = SDXL_UNION) -> int:
    """A control type's index: a name of ``kind``'s modes (``-`` and spaces as ``_``, any case) or an index >= 0."""
    if isinstance(value, bool):
        raise DiffkitError(f"{flag} {value!r} is not allowed; give {kind.allowed}")
    if isinstance(value, int):
        index = value
    else:
        text = "_".join(str(value).strip().lower().replace("-", " ").split())
        index = kind.names.get(text, int(text) if text.isdigit() else None)
        if index is None:
            raise DiffkitError(f"{flag} {value!r} is not a control type; allowed: {kind.allowed}")
    if index < 0:
        raise DiffkitError(f"{flag} {value!r} is not allowed; give {kind.allowed}")
    return index


def mode_or_none(value, kind: UnionKind, flag: str = "--control-mode") -> Optional[int]:
    """:func:`control_mode_index`, or None for None / ``none`` where ``kind`` is :data:`FLUX_UNION` (a plain FLUX
    ControlNet beside a union one: the pipeline's mode None)."""
    if kind is FLUX_UNION and (value is None or str(value).strip().lower() == "none"):
        return None
    return control_mode_index(value, flag, kind)


def check_mode_range(index: int, count: int, name: str, flag: str = "--control-mode",
                     kind: UnionKind = SDXL_UNION) -> None:
    """One line where ``index`` is not below the ControlNet's mode count ``count`` (``kind.count_key``)."""
    if index >= count:
        names = [n for n, i in kind.names.items() if i == index]
        raise DiffkitError(f"{flag} {index}{' (' + names[0] + ')' if names else ''} is not allowed for {name}: its "
                           f"{kind.count_key} is {count}; allowed: 0-{count - 1}")


def check_modes(modes: Sequence[Optional[int]], images: int, configs: Sequence, names: Sequence[str]) -> None:
    """One line where the mode indices do not fit: one per control image; several ControlNets (their ``configs``
    and ``names``) one image each; each union ControlNet's index below its mode count; a plain FLUX ControlNet
    (beside a union one) with mode None, a union one with a mode."""
    if len(modes) != images:
        raise DiffkitError(f"{len(modes)} --control-mode for {images} --control-image; give one control mode per "
                           f"control image, in the same order")
    if len(configs) > 1 and images != len(configs):
        raise DiffkitError(f"{images} --control-image for {len(configs)} ControlNet-Union --controlnet; with several,"
                           f" give one --control-image and --control-mode each (MultiControlNetUnionModel / "
                           f"FluxMultiControlNetModel)")
    for number, index in enumerate(modes):
        which = number if len(configs) > 1 else 0
        kind = union_kind(configs[which])
        if kind is None and index is not None:
            raise DiffkitError(f"--control-mode {index} is given for {names[which]}, which has no control modes (no "
                               f"num_mode: a single-mode ControlNet); give none (None) for it")
        if kind is not None and index is None:
            raise DiffkitError(f"{names[which]} is a ControlNet-Union: give it a control mode; allowed: "
                               f"{kind.allowed}")
        if kind is not None:
            check_mode_range(index, configs[which].get(kind.count_key, kind.default_count), names[which], kind=kind)


def union_entries(models: Sequence, images: Sequence, modes: Optional[Sequence]) -> tuple:
    """(the ControlNet of each control image, each image's mode index, joint) for ``ControlNets``: one union
    ControlNet takes N >= 1 images, called together (SD-XL: joint where N > 1; FLUX: one call per image, never
    joint); several take one image each (diffusers' ``MultiControlNetUnionModel`` / ``FluxMultiControlNetModel``,
    where plain FLUX ControlNets take mode None beside union ones). One line for SD-XL union and plain ControlNets
    mixed, modes without union ControlNets or union ones without modes, counts that do not fit and modes past
    the mode count."""
    kinds = [union_kind(m.config, type(m).__name__) for m in models]
    kind = next((k for k in kinds if k is not None), None)
    if kind is None:
        flux = all(type(m).__name__ == "FluxControlNetModel" for m in models)
        union_class = "a FluxControlNetModel with num_mode" if flux else "ControlNetUnionModel"
        raise DiffkitError(f"control modes apply to a ControlNet-Union ({union_class}); these ControlNets have none: "
                           f"drop the modes")
    if kind is SDXL_UNION and None in kinds:
        raise DiffkitError("ControlNet-Union and plain ControlNets do not mix (StableDiffusionXLControlNetUnionPipeline"
                           " takes ControlNetUnionModels only); give one kind")
    if modes is None:
        raise DiffkitError(f"a ControlNet-Union needs a control mode per control image (--control-mode); allowed: "
                           f"{kind.allowed}")
    modes = [mode_or_none(m, kind) for m in (modes if isinstance(modes, (list, tuple)) else [modes])]
    check_modes(modes, len(images), [{**m.config, "_class_name": type(m).__name__} for m in models],
                [f"--controlnet number {i + 1}" for i in range(len(models))])
    entries = list(models) if len(models) > 1 else [models[0]] * len(images)
    return entries, modes, kind is SDXL_UNION and len(models) == 1 and len(images) > 1


def union_inputs(model, modes: Sequence[int], batch: int, dtype) -> dict:
    """The keyword arguments a ``ControlNetUnionModel`` takes beside a ControlNet's: ``control_type`` (batch rows
    of the 0/1 vector of the types in use, the pipeline's scatter) and ``control_type_idx``."""
    control_type = torch.zeros(model.config.num_control_type).scatter_(0, torch.tensor(list(modes)), 1)
    device = next(model.parameters()).device
    return {"control_type": control_type.reshape(1, -1).to(device, dtype).repeat(batch, 1),
            "control_type_idx": list(modes)}


def joint_residuals(net, x: torch.Tensor, t: torch.Tensor, context, control_rows, added: dict, rows: torch.Tensor):
    """(down residuals, mid residual) of ``net``'s (a :class:`.controlnet.ControlledNet`) one union ControlNet
    with all its images at once, for the rows where ``rows`` (guess mode: the conditional half) is set: each
    image's scale times its window's 0/1 at the row's step, one call per pattern of windows (one at a time on a
    sampler's grid), rows outside ``rows`` zeros."""
    from . import model_dtype
    from .controlnet import _spread
    batch, model = x.shape[0], net.controlnets[0]
    kept = torch.stack([net._kept(index, t) for index in range(len(net.images))], 1)  # (B, N) 0/1
    dtype, total = model_dtype(model), None
    for pattern in torch.unique(kept[rows], dim=0):
        chosen = (rows & (kept == pattern).all(1)).nonzero().squeeze(1)
        every = len(chosen) == batch
        pick = (lambda v: v) if every else (lambda v: v[chosen])
        images = [net.control_image(index, x, dtype, control_rows, pick) for index in range(len(net.images))]
        scales = [scale * keep for scale, keep in zip(net.scales, pattern.tolist())]  # the pipeline's cond_scale
        more = {"added_cond_kwargs": {key: pick(value) for key, value in added.items()}} if added else {}
        down, mid = model(pick(x).to(dtype), pick(t), encoder_hidden_states=None if context is None else
                          pick(context).to(dtype), controlnet_cond=images, conditioning_scale=scales,
                          guess_mode=net.guess_mode, return_dict=False,
                          **union_inputs(model, net.modes, len(chosen), dtype), **more)
        if not every:
            down, mid = [_spread(d, batch, chosen) for d in down], _spread(mid, batch, chosen)
        total = (list(down), mid) if total is None else ([a + b for a, b in zip(total[0], down)], total[1] + mid)
    return total


__all__ = ["UNION_MODES", "FLUX_UNION_MODES", "UnionKind", "SDXL_UNION", "FLUX_UNION", "union_kind", "is_union",
           "control_mode_index", "mode_or_none", "check_modes", "union_entries", "union_inputs", "joint_residuals"]
