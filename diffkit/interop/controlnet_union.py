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
"""
from __future__ import annotations

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

NO_GUESS_MODE = ("guess mode (or global_pool_conditions) is not supported with a ControlNet-Union: diffusers' union "
                 "pipelines fail on it with classifier-free guidance (control_type keeps both halves' rows); drop "
                 "--guess-mode")


def is_union(model) -> bool:
    """Whether ``model`` is a diffusers ``ControlNetUnionModel``."""
    return type(model).__name__ == UNION_CLASS


def control_mode_index(value, flag: str = "--control-mode") -> int:
    """A control type's index: a name of :data:`UNION_MODES` (``-`` as ``_``, any case) or an index >= 0."""
    if isinstance(value, bool):
        raise DiffkitError(f"{flag} {value!r} is not allowed; give {MODES_ALLOWED}")
    if isinstance(value, int):
        index = value
    else:
        text = str(value).strip().lower().replace("-", "_")
        index = UNION_MODES.get(text, int(text) if text.isdigit() else None)
        if index is None:
            raise DiffkitError(f"{flag} {value!r} is not a control type; allowed: {MODES_ALLOWED}")
    if index < 0:
        raise DiffkitError(f"{flag} {value!r} is not allowed; give {MODES_ALLOWED}")
    return index


def check_mode_range(index: int, count: int, name: str, flag: str = "--control-mode") -> None:
    """One line where ``index`` is not below the ControlNet's ``num_control_type`` ``count``."""
    if index >= count:
        names = [n for n, i in UNION_MODES.items() if i == index]
        raise DiffkitError(f"{flag} {index}{' (' + names[0] + ')' if names else ''} is not allowed for {name}: its "
                           f"num_control_type is {count}; allowed: 0-{count - 1}")


def check_modes(modes: Sequence[int], images: int, configs: Sequence, names: Sequence[str]) -> None:
    """One line where the mode indices do not fit: one per control image; several union ControlNets (their
    ``configs`` and ``names``) one image each; each index below its ControlNet's ``num_control_type``."""
    if len(modes) != images:
        raise DiffkitError(f"{len(modes)} --control-mode for {images} --control-image; give one control mode per "
                           f"control image, in the same order")
    if len(configs) > 1 and images != len(configs):
        raise DiffkitError(f"{images} --control-image for {len(configs)} ControlNet-Union --controlnet; with several,"
                           f" give one --control-image and --control-mode each (MultiControlNetUnionModel)")
    for number, index in enumerate(modes):
        which = number if len(configs) > 1 else 0
        check_mode_range(index, configs[which].get("num_control_type", 6), names[which])


def union_entries(models: Sequence, images: Sequence, modes: Optional[Sequence]) -> tuple:
    """(the ControlNet of each control image, each image's mode index, joint) for ``ControlNets``: one union
    ControlNet takes N >= 1 images, called together (joint where N > 1); several take one image each (diffusers'
    ``MultiControlNetUnionModel``). One line for union and plain ControlNets mixed, modes without union
    ControlNets or union ones without modes, counts that do not fit and modes past ``num_control_type``."""
    union = [is_union(m) for m in models]
    if not any(union):
        raise DiffkitError("control modes apply to a ControlNet-Union (ControlNetUnionModel); these ControlNets are "
                           "plain ControlNetModels: drop the modes")
    if not all(union):
        raise DiffkitError("ControlNet-Union and plain ControlNets do not mix (StableDiffusionXLControlNetUnionPipeline"
                           " takes ControlNetUnionModels only); give one kind")
    if modes is None:
        raise DiffkitError(f"a ControlNet-Union needs a control mode per control image (--control-mode); allowed: "
                           f"{MODES_ALLOWED}")
    modes = [control_mode_index(m) for m in (modes if isinstance(modes, (list, tuple)) else [modes])]
    check_modes(modes, len(images), [m.config for m in models], [f"--controlnet number {i + 1}" for i in range(
        len(models))])
    entries = list(models) if len(models) > 1 else [models[0]] * len(images)
    return entries, modes, len(models) == 1 and len(images) > 1


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


__all__ = ["UNION_MODES", "is_union", "control_mode_index", "check_modes", "union_entries", "union_inputs",
           "joint_residuals"]
