"""diffkit's pixel-space U-Net <-> diffusers ``UNet2DModel``, and diffusers-format folders.

The two networks are the same DDPM/ADM architecture (Ho et al. 2020, App. B; Dhariwal & Nichol
2021, Sec. 3) with different parameter names. The structural map (checked block by block against
diffusers 0.42, and by equal outputs in tests/test_interop_diffusers.py):

    diffkit UNetConfig              diffusers UNet2DModel config
    channel * channel_mult          block_out_channels (channel_mult[0] must be 1: diffusers'
                                    conv_in and time projection have block_out_channels[0] channels)
    num_res_blocks                  layers_per_block
    attn (level indices)            AttnDownBlock2D / AttnUpBlock2D at those levels, DownBlock2D /
                                    UpBlock2D elsewhere (ResnetDownsampleBlock2D / ResnetUpsampleBlock2D
                                    and down/upsample_type="resnet" with resblock_updown)
    scale_shift_norm                resnet_time_scale_shift "scale_shift" / "default"
    layers.norm_groups(width)       norm_num_groups = attn_norm_num_groups: one count for every
                                    GroupNorm, so diffkit's per-width rule must give the same count
                                    for every width (true for channel >= 128 with widths divisible
                                    by 32, e.g. the seed U-Net; not for small widths: refused)
    num_heads / head_channels       attention_head_dim = width / num_heads (one head dimension for
                                    every attention block in diffusers) or head_channels
    num_classes                     num_class_embeds = num_classes + 1 (the last is diffkit's null class)
    learned_variance                out_channels = 2 * in_channels (eps, then v; variance_type learned_range)
    dropout, img_size, in_channels  dropout, sample_size, in_channels
    context_dim                     not expressible (UNet2DModel has no cross-attention): refused
    guidance_embedding_dim          not expressible (UNet2DModel has no time_cond_proj_dim; only
                                    UNet2DConditionModel has, a text model diffkit does not export): refused

Forward behaviour, identical: sinusoidal time embedding [cos, sin] with frequencies
10000^(-i/half) (diffusers flip_sin_to_cos=True, freq_shift=0), Linear-SiLU-Linear to
4*channel, SiLU before each block's projection; GroupNorm eps 1e-5; (scale, shift) order of
AdaGN; attention q, k, v from one projection split in that order, heads laid out as contiguous
channel groups, softmax scale 1/sqrt(head_dim), residual; stride-2 conv downsampling; nearest x2
+ conv upsampling; skip connections concatenated [h, skip] and popped last-in-first-out; output
GroupNorm-SiLU-conv.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from ..errors import DiffkitError, DiffkitWarning, WriteError, read_json_object
from ..models.layers import norm_groups
from ..models.unet import UNet, UNetConfig
from ..schedule import NoiseSchedule
from . import from_pretrained, require
from .schedulers import (FLOW_SCHEDULER, flow_scheduler_config, flow_shift_from_diffusers, learned_variance_of,
                         schedule_from_diffusers, scheduler_config)

_RES = {"norm1": "norm1", "conv1": "conv1", "emb_proj": "time_emb_proj", "norm2": "norm2",
        "conv2": "conv2", "skip": "conv_shortcut"}
_DIFFUSERS_VERSION = "0.42.0"


# ----------------------------------------------------------------------------- configs
def _group_widths(cfg: UNetConfig) -> set[int]:
    """Every channel count diffkit's U-Net normalises with GroupNorm."""
    widths = cfg.level_channels()
    seen = {cfg.channel}
    ch, skips = cfg.channel, [cfg.channel]
    for level, w in enumerate(widths):
        for _ in range(cfg.num_res_blocks):
            seen |= {ch, w}
            ch = w
            skips.append(ch)
        if level != len(widths) - 1:
            skips.append(ch)
    for level in reversed(range(len(widths))):
        for _ in range(cfg.num_res_blocks + 1):
            seen |= {ch + skips.pop(), widths[level]}
            ch = widths[level]
    return seen


def unet2d_config(cfg: UNetConfig) -> dict[str, Any]:
    """diffusers ``UNet2DModel`` keyword arguments for the same network, or a one-line
    DiffkitError naming the setting diffusers cannot express."""
    if cfg.context_dim is not None:
        raise DiffkitError(f"context_dim={cfg.context_dim} (cross-attention) cannot be expressed by diffusers' "
                           f"UNet2DModel; only pixel-space U-Nets without context_dim can be exported")
    if cfg.guidance_embedding_dim:
        raise DiffkitError(f"guidance_embedding_dim={cfg.guidance_embedding_dim} (a w-conditioned consistency model's "
                           f"guidance-scale input) cannot be expressed by diffusers' UNet2DModel, which has no "
                           f"time_cond_proj_dim; distil with a fixed consistency_guidance to export")
    if cfg.channel_mult[0] != 1:
        raise DiffkitError(f"channel_mult[0]={cfg.channel_mult[0]} cannot be expressed by diffusers' UNet2DModel "
                           f"(its input convolution has block_out_channels[0] channels); allowed: channel_mult "
                           f"starting with 1")
    groups = {w: norm_groups(w) for w in sorted(_group_widths(cfg))}
    if len(set(groups.values())) != 1:
        detail = ", ".join(f"{w}->{g}" for w, g in list(groups.items())[:6])
        raise DiffkitError(f"channel={cfg.channel} with channel_mult={list(cfg.channel_mult)} uses different GroupNorm "
                           f"group counts ({detail}); diffusers' UNet2DModel has one norm_num_groups; use "
                           f"channel >= 128 with every width divisible by 32")
    widths = cfg.level_channels()
    attn_widths = cfg.attention_widths()
    if cfg.head_channels is not None:
        head_dim = cfg.head_channels
    elif cfg.num_heads == 1:
        head_dim = None  # diffusers: one head of the block's width, in every block
    else:
        dims = {w // cfg.num_heads for w in attn_widths}
        if len(dims) != 1:
            raise DiffkitError(f"num_heads={cfg.num_heads} gives head widths {sorted(dims)} at the attention levels; "
                               f"diffusers' UNet2DModel has one attention_head_dim; use num_heads=1 or head_channels")
        head_dim = dims.pop()
    n = len(widths)
    updown = cfg.resblock_updown
    plain_down, plain_up = (("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if updown
                            else ("DownBlock2D", "UpBlock2D"))
    return {
        "sample_size": cfg.img_size, "in_channels": cfg.in_channels, "out_channels": cfg.output_channels,
        "center_input_sample": False, "time_embedding_type": "positional", "freq_shift": 0,
        "flip_sin_to_cos": True,
        "down_block_types": [("AttnDownBlock2D" if i in cfg.attn else plain_down) for i in range(n)],
        "up_block_types": [("AttnUpBlock2D" if (n - 1 - i) in cfg.attn else plain_up) for i in range(n)],
        "block_out_channels": widths, "layers_per_block": cfg.num_res_blocks, "mid_block_scale_factor": 1,
        "downsample_padding": 1, "downsample_type": "resnet" if updown else "conv",
        "upsample_type": "resnet" if updown else "conv", "dropout": float(cfg.dropout), "act_fn": "silu",
        "attention_head_dim": head_dim, "norm_num_groups": next(iter(groups.values())),
        "attn_norm_num_groups": next(iter(groups.values())), "norm_eps": 1e-5,
        "resnet_time_scale_shift": "scale_shift" if cfg.scale_shift_norm else "default", "add_attention": True,
        "class_embed_type": None, "num_class_embeds": None if cfg.num_classes is None else cfg.num_classes + 1,
    }


def _expect(config: Mapping, key: str, allowed, default=None) -> None:
    value = config.get(key, default)
    if value not in allowed:
        raise DiffkitError(f"UNet2DModel {key}={value!r} has no diffkit equivalent; allowed: "
                           f"{', '.join(map(repr, allowed))}")


def unet_config_from_diffusers(config: Mapping, *, learned_variance: bool | None = None,
                               dropout: float | None = None) -> UNetConfig:
    """diffkit :class:`UNetConfig` for a diffusers ``UNet2DModel`` config (dict or FrozenDict), or a
    one-line DiffkitError naming the setting diffkit's U-Net cannot express.

    ``learned_variance``: the model outputs [prediction, v] (default: out_channels == 2*in_channels)."""
    _expect(config, "time_embedding_type", ["positional"], "positional")
    _expect(config, "flip_sin_to_cos", [True], True)
    _expect(config, "freq_shift", [0], 0)
    _expect(config, "center_input_sample", [False], False)
    _expect(config, "act_fn", ["silu"], "silu")
    _expect(config, "norm_eps", [1e-5], 1e-5)
    _expect(config, "mid_block_scale_factor", [1, 1.0], 1)
    _expect(config, "downsample_padding", [1], 1)
    _expect(config, "add_attention", [True], True)
    _expect(config, "mid_block_type", ["UNetMidBlock2D"], "UNetMidBlock2D")
    _expect(config, "class_embed_type", [None], None)
    _expect(config, "time_embedding_dim", [None], None)
    widths = list(config.get("block_out_channels", (224, 448, 672, 896)))
    channel = widths[0]
    if any(w % channel for w in widths):
        raise DiffkitError(f"UNet2DModel block_out_channels={widths} are not multiples of the first; diffkit's "
                           f"channel_mult needs integer multipliers")
    n = len(widths)
    down = list(config.get("down_block_types", ()))
    up = list(config.get("up_block_types", ()))
    updown = config.get("downsample_type", "conv") == "resnet"
    plain_down, plain_up = (("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if updown
                            else ("DownBlock2D", "UpBlock2D"))
    _expect(config, "upsample_type", ["resnet" if updown else "conv"], "conv")
    attn = [i for i, b in enumerate(down) if b == "AttnDownBlock2D"]
    want_down = [("AttnDownBlock2D" if i in attn else plain_down) for i in range(n)]
    want_up = [("AttnUpBlock2D" if (n - 1 - i) in attn else plain_up) for i in range(n)]
    if len(down) != n or down != want_down or up != want_up:
        raise DiffkitError(f"UNet2DModel blocks down={down} up={up} have no diffkit equivalent; allowed: {plain_down}/"
                           f"AttnDownBlock2D per level with the mirrored {plain_up}/AttnUpBlock2D")
    shift = config.get("resnet_time_scale_shift", "default")
    if shift not in ("default", "scale_shift"):
        raise DiffkitError(f"UNet2DModel resnet_time_scale_shift={shift!r} has no diffkit equivalent; allowed: "
                           f"'default', 'scale_shift'")
    head_dim = config.get("attention_head_dim", 8)
    num_classes = config.get("num_class_embeds")
    in_channels = int(config.get("in_channels", 3))
    out_channels = int(config.get("out_channels", 3))
    if learned_variance is None:
        learned_variance = out_channels == 2 * in_channels
    if learned_variance and out_channels % 2:
        raise DiffkitError(f"learned_variance needs an even out_channels; UNet2DModel has {out_channels}")
    sample_size = config.get("sample_size") or 32
    if isinstance(sample_size, (list, tuple)):
        if len(set(sample_size)) != 1:
            raise DiffkitError(f"UNet2DModel sample_size={list(sample_size)} is not square; diffkit's img_size is "
                               f"one number")
        sample_size = sample_size[0]
    base_out = out_channels // 2 if learned_variance else out_channels
    head_channels = None if head_dim is None else int(head_dim)
    if head_channels is not None and all(w == head_channels for w in
                                         [widths[a] for a in attn] + [widths[-1]]):
        head_channels = None  # one head per attention block, said the diffkit way
    cfg = UNetConfig(
        channel=channel, channel_mult=[w // channel for w in widths], attn=attn,
        num_res_blocks=int(config.get("layers_per_block", 2)),
        dropout=float(config.get("dropout", 0.0) if dropout is None else dropout), img_size=int(sample_size),
        in_channels=in_channels, scale_shift_norm=shift == "scale_shift", num_heads=1,
        head_channels=head_channels, resblock_updown=updown,
        out_channels=None if base_out == in_channels else base_out, learned_variance=bool(learned_variance),
        num_classes=None if num_classes is None else int(num_classes) - 1)
    groups = config.get("norm_num_groups", 32)
    attn_groups = config.get("attn_norm_num_groups")
    ours = {norm_groups(w) for w in _group_widths(cfg)}
    if ours != {groups} or attn_groups not in (None, groups):
        raise DiffkitError(f"UNet2DModel norm_num_groups={groups} (attn_norm_num_groups={attn_groups}) differs from "
                           f"diffkit's GroupNorm rule for these widths ({sorted(ours)}); not convertible")
    if attn_groups is None and shift != "default":
        raise DiffkitError(f"UNet2DModel with resnet_time_scale_shift={shift!r} and attn_norm_num_groups=None: its "
                           f"middle attention block has no GroupNorm (diffusers' UNetMidBlock2D), diffkit's has one; a "
                           f"model with attn_norm_num_groups={groups} converts")
    return cfg


# ----------------------------------------------------------------------------- names
def _module_pairs(cfg: UNetConfig) -> Iterator[tuple[str, str, str]]:
    """(diffkit module prefix, diffusers module prefix, kind) for every parameterised module;
    kind is 'plain' (same leaf names), 'res' (ResBlock) or 'attn' (AttentionBlock)."""
    yield "time_embed.linear_1", "time_embedding.linear_1", "plain"
    yield "time_embed.linear_2", "time_embedding.linear_2", "plain"
    if cfg.num_classes is not None:
        yield "class_embed", "class_embedding", "plain"
    yield "input_conv", "conv_in", "plain"
    n = len(cfg.channel_mult)
    k = 0
    for level in range(n):
        for j in range(cfg.num_res_blocks):
            yield f"down.{k}.0", f"down_blocks.{level}.resnets.{j}", "res"
            if level in cfg.attn:
                yield f"down.{k}.1", f"down_blocks.{level}.attentions.{j}", "attn"
            k += 1
        if level != n - 1:
            if cfg.resblock_updown:
                yield f"down.{k}.0", f"down_blocks.{level}.downsamplers.0", "res"
            else:
                yield f"down.{k}.0.conv", f"down_blocks.{level}.downsamplers.0.conv", "plain"
            k += 1
    yield "middle.0", "mid_block.resnets.0", "res"
    yield "middle.1", "mid_block.attentions.0", "attn"
    yield "middle.2", "mid_block.resnets.1", "res"
    k = 0
    for level in reversed(range(n)):
        block = n - 1 - level
        for i in range(cfg.num_res_blocks + 1):
            yield f"up.{k}.0", f"up_blocks.{block}.resnets.{i}", "res"
            pos = 1
            if level in cfg.attn:
                yield f"up.{k}.1", f"up_blocks.{block}.attentions.{i}", "attn"
                pos = 2
            if level > 0 and i == cfg.num_res_blocks:
                if cfg.resblock_updown:
                    yield f"up.{k}.{pos}", f"up_blocks.{block}.upsamplers.0", "res"
                else:
                    yield f"up.{k}.{pos}.conv", f"up_blocks.{block}.upsamplers.0.conv", "plain"
            k += 1
    yield "out_norm", "conv_norm_out", "plain"
    yield "out_conv", "conv_out", "plain"


def _rename(state: Mapping[str, torch.Tensor], out: dict, used: set, src: str, dst: str,
            leaves: Mapping[str, str], optional: tuple[str, ...] = (), bias_optional: bool = False) -> None:
    """Copy ``src.<leaf>.<weight|bias>`` to ``dst.<new leaf>.<weight|bias>``; the leaves in
    ``optional`` (a ResBlock's skip conv) may be absent, and so may a bias (an Embedding's)
    with ``bias_optional``."""
    for leaf, new in leaves.items():
        for p in ("weight", "bias"):
            key = ".".join(x for x in (src, leaf, p) if x)
            if key not in state:
                if leaf in optional or (p == "bias" and bias_optional):
                    continue
                raise DiffkitError(f"state dict has no {key!r}; it does not match the config")
            used.add(key)
            out[".".join(x for x in (dst, new, p) if x)] = state[key]


def _check_all_used(state: Mapping, used: set, what: str) -> None:
    extra = [k for k in state if k not in used]
    if extra:
        raise DiffkitError(f"{what} state dict has {len(extra)} keys the config does not describe "
                           f"(e.g. {extra[0]!r}); it does not match the config")


def _convert(cfg: UNetConfig, state: Mapping[str, torch.Tensor], to_diffusers: bool) -> dict[str, torch.Tensor]:
    out, used = {}, set()
    attn_leaves = {"norm": "group_norm", "proj": "to_out.0"}
    for ours, theirs, kind in _module_pairs(cfg):
        src, dst = (ours, theirs) if to_diffusers else (theirs, ours)
        if kind == "plain":
            _rename(state, out, used, src, dst, {"": ""}, bias_optional=True)
        elif kind == "res":
            leaves = _RES if to_diffusers else {v: k for k, v in _RES.items()}
            _rename(state, out, used, src, dst, leaves, optional=("skip", "conv_shortcut"))
        else:
            _rename(state, out, used, src, dst, attn_leaves if to_diffusers else {v: k for k, v in attn_leaves.items()})
            for p in ("weight", "bias"):
                if to_diffusers:  # one qkv projection, rows [q; k; v] (diffkit AttentionBlock)
                    key = f"{ours}.qkv.{p}"
                    if key not in state:
                        raise DiffkitError(f"state dict has no {key!r}; it does not match the config")
                    used.add(key)
                    for name, part in zip("qkv", state[key].chunk(3, dim=0)):
                        out[f"{theirs}.to_{name}.{p}"] = part
                else:
                    keys = [f"{theirs}.to_{name}.{p}" for name in "qkv"]
                    missing = [k for k in keys if k not in state]
                    if missing:
                        raise DiffkitError(f"state dict has no {missing[0]!r}; it does not match the config")
                    used.update(keys)
                    out[f"{ours}.qkv.{p}"] = torch.cat([state[k] for k in keys], dim=0)
    _check_all_used(state, used, "diffkit" if to_diffusers else "diffusers")
    return out


def state_dict_to_diffusers(cfg: UNetConfig, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffkit U-Net state dict -> diffusers UNet2DModel state dict (q/k/v split from qkv).
    Shapes are checked when the result is loaded (:func:`to_diffusers`)."""
    unet2d_config(cfg)  # refuses what diffusers cannot express
    return _convert(cfg, state, to_diffusers=True)


def state_dict_from_diffusers(cfg: UNetConfig, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers UNet2DModel state dict -> diffkit U-Net state dict (q/k/v concatenated to qkv)."""
    return _convert(cfg, state, to_diffusers=False)


def _load_checked(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    from ..checkpoint import load_state_dict_checked
    load_state_dict_checked(module, dict(state), what)


def to_diffusers(unet: UNet):
    """A diffusers ``UNet2DModel`` computing the same function as ``unet`` (weights copied)."""
    diffusers = require("diffusers")
    config = unet2d_config(unet.config)
    model = diffusers.UNet2DModel(**config)
    state = {k: v.detach().clone().contiguous()
             for k, v in state_dict_to_diffusers(unet.config, unet.state_dict()).items()}
    _load_checked(model, state, "converted diffkit U-Net")
    return model.to(next(unet.parameters()).device).train(unet.training)


def from_diffusers(model, *, learned_variance: bool | None = None) -> UNet:
    """A diffkit :class:`UNet` computing the same function as a diffusers ``UNet2DModel``."""
    cfg = unet_config_from_diffusers(model.config, learned_variance=learned_variance)
    unet = UNet(cfg)
    _load_checked(unet, state_dict_from_diffusers(cfg, model.state_dict()), "converted diffusers UNet2DModel")
    return unet.to(next(model.parameters()).device).train(model.training)


# ----------------------------------------------------------------------------- consistency models
def _lcm_grid(T: int, n: int) -> list[int]:
    """t_0 = 0 and LCMScheduler's training times t_m = m k - 1 (m = 1..n, k = T // n;
    :func:`diffkit.timesteps.lcm_original_times`)."""
    from ..timesteps import lcm_original_times
    return sorted({0, *(int(t) for t in lcm_original_times(T, n).tolist())})


def lcm_original_steps(grid, num_timesteps: int) -> int:
    """diffusers' ``LCMScheduler.original_inference_steps`` N for a consistency model's grid (the
    ``grid`` of its ``meta["consistency"]``, :func:`diffkit.consistency.distillation_grid`): LCM's
    training times are t_n = n k - 1, n = 1..N, with k = T // N; diffkit's grid is those times and
    the boundary t_0 = 0 (for k = 1, t_1 = 0 is the boundary itself). A grid not of that form (a
    skip k with T // (T // k) != k, e.g. k = 300 at T = 1000) is a one-line DiffkitError."""
    T = int(num_timesteps)
    times = [int(t) for t in grid]
    inner = sum(t > 0 for t in times)
    for n in (inner, inner + 1):
        if 1 <= n <= T and times == _lcm_grid(T, n):
            return n
    shown = ", ".join(map(str, times[:4])) + (", ..." if len(times) > 4 else "")
    raise DiffkitError(f"the consistency grid ({shown}; {len(times)} times, T={T}) is not diffusers' LCMScheduler's "
                       f"t_n = n k - 1 with k = T // original_inference_steps; LCMScheduler expresses grids from a "
                       f"consistency_skip k with T // (T // k) == k (e.g. the default T // 50)")


def lcm_scheduler_config(schedule: NoiseSchedule, prediction_type: str, consistency: Mapping, *,
                         learned_variance: bool = False, clip_sample: bool = False) -> dict:
    """diffusers ``LCMScheduler`` config for a consistency model (``consistency``: its checkpoint's
    ``meta["consistency"]``): the schedule's betas and prediction type (as :func:`scheduler_config`),
    ``timestep_scaling`` s, ``original_inference_steps`` from the grid (:func:`lcm_original_steps`).
    LCMScheduler's step is CM Alg. 1 with LCM eq. 9's c_skip, c_out at sigma_data = 0.5 (fixed in
    diffusers), on the network's own prediction: another sigma_data or a learned variance is a
    one-line DiffkitError."""
    sigma_data = consistency.get("sigma_data")
    if sigma_data != 0.5:
        raise DiffkitError(f"consistency sigma_data={sigma_data!r} cannot be expressed by diffusers' LCMScheduler (its "
                           f"c_skip, c_out use sigma_data=0.5); only consistency models with sigma_data=0.5 export")
    if consistency.get("curriculum", "fixed") != "fixed":
        raise DiffkitError(f"a consistency model trained with consistency_curriculum={consistency['curriculum']!r} "
                           f"samples from its EDM-spaced grid, which diffusers' LCMScheduler (evenly spaced "
                           f"original_inference_steps) cannot express; only 'fixed' grids export")
    if learned_variance:
        raise DiffkitError("a consistency model with learned_variance=True cannot be expressed by diffusers' "
                           "LCMScheduler (it reads the whole UNet output as the prediction); only fixed-variance "
                           "consistency models export")
    config = scheduler_config(schedule, prediction_type, kind="ddim", clip_sample=clip_sample)
    config.update({"_class_name": "LCMScheduler", "timestep_scaling": float(consistency["timestep_scaling"]),
                   "original_inference_steps": lcm_original_steps(consistency["grid"], schedule.num_timesteps),
                   "timestep_spacing": "leading", "thresholding": False})
    return config


def consistency_from_lcm(config: Mapping, num_timesteps: int) -> dict:
    """The ``meta["consistency"]`` entry of a model imported with a diffusers ``LCMScheduler``
    config: sigma_data 0.5, its timestep_scaling, the grid of its original_inference_steps
    (:func:`lcm_original_steps` inverted); the objective, teacher, distance and guidance it was
    trained with are not in the config: None."""
    from ..consistency import TIMESTEP_SCALING
    from ..timesteps import LCM_ORIGINAL_STEPS
    T = int(num_timesteps)
    n = config.get("original_inference_steps", LCM_ORIGINAL_STEPS)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= T:
        raise DiffkitError(f"LCMScheduler original_inference_steps={n!r} is not allowed; give an integer 1..{T} "
                           f"(num_train_timesteps)")
    return {"objective": None, "teacher": None, "sigma_data": 0.5,
            "timestep_scaling": float(config.get("timestep_scaling", TIMESTEP_SCALING)), "grid": _lcm_grid(T, n),
            "skip": None, "distance": None, "guidance": None}


def flow_shift_of(meta: Mapping) -> float:
    """A flow checkpoint's ``flow_shift``: its training config's (``meta["config"]``), or the one
    an import recorded (``meta["flow_shift"]``); 1.0 (no shift) when neither holds one."""
    shift = meta.get("flow_shift", (meta.get("config") or {}).get("flow_shift", 1.0))
    return float(shift)


# ----------------------------------------------------------------------------- folders
# what export_diffusers writes (a DDPMPipeline: unet/; a DiTPipeline: transformer/)
_EXPORT_ENTRIES = ("unet", "transformer", "scheduler", "model_index.json")


def check_export_folder(out: Path, entries=_EXPORT_ENTRIES) -> None:
    """A one-line DiffkitError unless ``out`` is new, empty, or an unfinished export (only ``entries``, no
    ``model_index.json``: a kill before its last file)."""
    unfinished = out.is_dir() and not (out / "model_index.json").exists() and any(out.iterdir()) and all(
        p.name in entries for p in out.iterdir())  # an export killed before its last file
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not unfinished:
        raise DiffkitError(f"--to-diffusers folder {str(out)!r} exists and is not empty; writing into it would mix "
                           f"this model with what it holds; give a new or empty folder")


def export_scheduler_config(checkpoint_path, meta: Mapping, schedule: NoiseSchedule, *, learned_variance: bool,
                            clip_sample: bool = False, kind: str = "ddpm") -> dict:
    """The scheduler config an export writes for a checkpoint: ``kind`` (:func:`~.schedulers.scheduler_config`)
    with its exact schedule and prediction type; an LCMScheduler for a consistency model
    (:func:`lcm_scheduler_config`), a FlowMatchEulerDiscreteScheduler for a flow-matching model
    (:func:`~.schedulers.flow_scheduler_config`); an EDM model is a one-line DiffkitError."""
    prediction_type = meta.get("prediction_type", "epsilon")
    if prediction_type == "edm":
        raise DiffkitError(f"{checkpoint_path} is an EDM model (prediction_type='edm'); its export to diffusers "
                           f"(EDMEulerScheduler) is not supported (docs/edm.md)")
    if prediction_type == "flow_prediction":  # u(x_s, s T): FlowMatchEulerDiscreteScheduler (docs/flow_matching.md)
        return flow_scheduler_config(schedule, flow_shift_of(meta))
    if meta.get("consistency"):  # f(x, t) = c_skip x + c_out x0_hat: diffusers' LCMScheduler (diffkit.consistency)
        return lcm_scheduler_config(schedule, prediction_type, meta["consistency"],
                                    learned_variance=learned_variance, clip_sample=clip_sample)
    return scheduler_config(schedule, prediction_type, kind=kind, learned_variance=learned_variance,
                            clip_sample=clip_sample)


def json_bytes(content) -> bytes:
    """A diffusers config file's bytes (indented, sorted keys, a final newline)."""
    return (json.dumps(content, indent=2, sort_keys=True) + "\n").encode()


def export_diffusers(checkpoint_path, out_dir, *, use_ema: bool = True, clip_sample: bool = False) -> Path:
    """Write a diffusers-format DDPMPipeline folder for a diffkit checkpoint:
    ``model_index.json``, ``unet/config.json`` + ``unet/diffusion_pytorch_model.safetensors``,
    ``scheduler/scheduler_config.json`` (DDPMScheduler with the checkpoint's exact schedule and
    prediction type; for a consistency model an LCMScheduler, :func:`lcm_scheduler_config`; for a
    flow-matching model a FlowMatchEulerDiscreteScheduler, :func:`~.schedulers.flow_scheduler_config`,
    whose timesteps sigma * T are the flow network's time input s * T).
    ``DDPMPipeline.from_pretrained(out_dir)`` loads it. EMA weights by default. A DiT checkpoint
    writes a DiTPipeline folder instead (:func:`diffkit.interop.dit_pipeline.dit_pipeline_files`)."""
    from safetensors.torch import save as st_save
    from ..loading import load_model
    from .dit_pipeline import dit_pipeline_files
    require("diffusers")  # before any work: a missing extra is a one-line error
    out = Path(out_dir)
    check_export_folder(out)
    model, meta, schedule = load_model(checkpoint_path, use_ema=use_ema)
    from ..models.network import check_image_model, is_dit
    if is_dit(meta["unet"]):
        write_folder(out, dit_pipeline_files(checkpoint_path, model, meta, schedule, clip_sample=clip_sample))
        return out
    check_image_model(meta["unet"], "--to-diffusers (a DDPMPipeline of a 2-D UNet)")
    if meta.get("latent"):
        raise DiffkitError(f"{checkpoint_path} is a latent diffusion model: a DDPMPipeline would sample its latents as "
                           f"images without the autoencoder; only pixel-space U-Nets can be exported to diffusers")
    cfg = model.config
    sched = export_scheduler_config(checkpoint_path, meta, schedule, learned_variance=cfg.learned_variance,
                                    clip_sample=clip_sample)
    unet_cfg = unet2d_config(cfg)
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict_to_diffusers(cfg, model.state_dict()).items()}
    files = {
        "unet/config.json": {"_class_name": "UNet2DModel", "_diffusers_version": _DIFFUSERS_VERSION, **unet_cfg},
        "scheduler/scheduler_config.json": {**sched, "_diffusers_version": _DIFFUSERS_VERSION},
        "model_index.json": {"_class_name": "DDPMPipeline", "_diffusers_version": _DIFFUSERS_VERSION,
                             "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", sched["_class_name"]]},
    }
    contents = [("unet/diffusion_pytorch_model.safetensors", st_save(state, metadata={"format": "pt"}))] + [
        (name, json_bytes(content)) for name, content in files.items()]
    write_folder(out, contents)
    return out


def write_folder(out: Path, contents, entries=_EXPORT_ENTRIES) -> None:
    """Write ``contents`` ((relative name, bytes) pairs, ``model_index.json`` last) as the folder ``out``,
    never half: an empty folder (".", a mount point) or an unfinished export is written in place, each file
    atomically, its old ``entries`` removed first, ``model_index.json`` (what marks it done) last; a new
    folder is written beside it under a hidden name and renamed (a kill half-way leaves only that hidden
    folder, which does not block a rerun)."""
    from ..checkpoint import atomic_write_bytes, give_usual_mode
    if out.exists():
        for name in entries:
            shutil.rmtree(out / name, ignore_errors=True)
        for name, data in contents:
            atomic_write_bytes(out / name, data)
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as err:
        raise WriteError(f"cannot write to {str(out.parent)!r}: {err.strerror or err}") from None
    give_usual_mode(partial, 0o777)  # mkdtemp makes it 0700
    try:
        for name, data in contents:
            atomic_write_bytes(partial / name, data)
        os.rename(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _read_folder(directory: Path):
    """(UNet2DModel, scheduler config dict) from a diffusers pipeline folder or a unet/ folder."""
    diffusers = require("diffusers")
    directory = Path(directory)
    index_file = directory / "model_index.json"
    if index_file.is_file():
        index = read_json_object(index_file, "model_index.json")
        others = sorted(k for k, v in index.items() if not k.startswith("_") and k not in ("unet", "scheduler")
                        and isinstance(v, list) and v and v[0] is not None)
        if others:  # LDMPipeline (unet + vqvae), Stable Diffusion (vae, text_encoder, ...)
            raise DiffkitError(f"{directory} is a {index.get('_class_name', 'pipeline')} with {', '.join(others)}: "
                               f"not a pixel-space U-Net pipeline; allowed: DDPMPipeline / DDIMPipeline folders "
                               f"(unet + scheduler); Stable Diffusion folders load with "
                               f"diffkit.interop.load_stable_diffusion")
    unet_dir = directory / "unet" if (directory / "unet").is_dir() else directory
    if not (unet_dir / "config.json").is_file():
        raise DiffkitError(f"{directory} is not a diffusers folder (no unet/config.json or config.json)")
    model_config = read_json_object(unet_dir / "config.json", "diffusers config")
    if model_config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        hint = "for Stable Diffusion folders use diffkit.interop.load_stable_diffusion"
        raise DiffkitError(f"{unet_dir} holds a {model_config.get('_class_name')}; allowed: UNet2DModel ({hint})")
    model = from_pretrained(diffusers.UNet2DModel, unet_dir, "--from-diffusers", local_files_only=True,
                            low_cpu_mem_usage=False, use_safetensors=True)  # never a pickle (.bin) from a folder
    # the pipeline's scheduler, or for a bare unet/ folder its sibling ../scheduler
    candidates = [directory / "scheduler" / "scheduler_config.json"]
    if unet_dir == directory:
        candidates.append(directory.parent / "scheduler" / "scheduler_config.json")
    sched_file = next((c for c in candidates if c.is_file()), None)
    if sched_file is None:
        where = "scheduler/ or ../scheduler/" if unet_dir == directory else "scheduler/"
        warnings.warn(f"{directory} has no scheduler config ({where}scheduler_config.json): assuming DDPM's linear "
                      f"schedule (1e-4..0.02, T=1000) and epsilon prediction; pass the scheduler if the model was "
                      f"trained otherwise", DiffkitWarning, stacklevel=3)
        return model, {}
    return model, read_json_object(sched_file, "scheduler config")


def import_diffusers(dir_or_model, scheduler=None, *, out: str | Path | None = None,
                     learned_variance: bool | None = None):
    """(UNet, NoiseSchedule, prediction_type) for a diffusers folder (DDPMPipeline layout or a
    UNet2DModel folder with a sibling scheduler) or a ``UNet2DModel`` object (then pass its
    ``scheduler`` or scheduler config; default DDPM linear 1e-4..0.02, epsilon).

    ``out``: also write a diffkit checkpoint there (``diffkit sample --checkpoint OUT`` loads it).
    The learned variance is read from the scheduler's ``variance_type`` (learned/learned_range) when
    not given."""
    from .dit_pipeline import import_dit_folder, is_dit_folder
    if isinstance(dir_or_model, (str, Path)) and is_dit_folder(dir_or_model):  # a DiTPipeline folder (.dit_pipeline)
        if scheduler is not None or learned_variance is not None:
            raise DiffkitError("a DiT folder carries its scheduler and its learned variance (out_channels); drop "
                               "scheduler= and learned_variance=")
        return import_dit_folder(dir_or_model, out)
    from .consistency_models import refuse_import
    refuse_import(dir_or_model)  # a ConsistencyModelPipeline folder: sampled in place only
    if isinstance(dir_or_model, (str, Path)):
        model, sched = _read_folder(Path(dir_or_model))
        if scheduler is not None:
            sched = scheduler
    else:
        model, sched = dir_or_model, scheduler if scheduler is not None else {}
    sched_cfg = dict(sched) if isinstance(sched, Mapping) else dict(getattr(sched, "config", {}))
    if not isinstance(sched, Mapping):  # a scheduler object's config does not hold its class name
        sched_cfg.setdefault("_class_name", type(sched).__name__)
    if learned_variance_of(sched_cfg) and learned_variance is None:
        learned_variance = True
    unet = from_diffusers(model, learned_variance=learned_variance).eval()
    schedule, prediction_type = schedule_from_diffusers(sched_cfg)
    consistency = flow_shift = None
    if prediction_type == "flow_prediction":
        if unet.config.learned_variance:
            raise DiffkitError(f"a {FLOW_SCHEDULER} folder whose UNet2DModel has a learned variance (out_channels = "
                               f"2 * in_channels) has no diffkit equivalent; the flow network predicts the velocity "
                               f"only")
        flow_shift = flow_shift_from_diffusers(sched_cfg)
    if sched_cfg.get("_class_name", type(sched).__name__) == "LCMScheduler":
        if unet.config.learned_variance:
            raise DiffkitError("an LCMScheduler folder whose UNet2DModel has a learned variance (out_channels = 2 * "
                               "in_channels) has no diffkit equivalent; LCMScheduler reads the whole output as the "
                               "prediction")
        consistency = consistency_from_lcm(sched_cfg, schedule.num_timesteps)
    if out is not None:
        write_checkpoint(out, unet, schedule, prediction_type, consistency=consistency, flow_shift=flow_shift)
    return unet, schedule, prediction_type


def write_checkpoint(path, unet: UNet, schedule: NoiseSchedule, prediction_type: str, *,
                     consistency: Mapping | None = None, flow_shift: float | None = None) -> Path:
    """A diffkit checkpoint (weights, schedule, model description; ``unet`` a UNet or a DiT) that
    :func:`diffkit.loading.load_model` and ``diffkit sample --checkpoint`` read. It holds no
    optimiser state (it cannot resume training). ``consistency``: the ``meta["consistency"]`` entry
    of a consistency model (:func:`diffkit.loading.load_denoiser` then wraps it in
    :class:`~diffkit.consistency.ConsistencyDenoiser`). ``flow_shift``: a flow-matching model's
    shift, recorded as ``meta["schedule"] = "flow"``, ``meta["flow_shift"]``."""
    from dataclasses import asdict
    from ..checkpoint import save_checkpoint
    from ..models.dit import DiT
    from .dit_pipeline import dit_description
    cfg = dit_description(unet) if isinstance(unet, DiT) else asdict(unet.config)
    tensors = {f"model.{k}": v for k, v in unet.state_dict().items()}
    tensors["schedule.betas"] = schedule.betas
    meta = {"unet": cfg, "prediction_type": prediction_type, "learned_variance": unet.config.learned_variance,
            "source": "diffusers", "class_names": []}
    if consistency is not None:
        meta["consistency"] = dict(consistency)
    if flow_shift is not None:
        meta.update(schedule="flow", flow_shift=float(flow_shift))
    return save_checkpoint(path, tensors, meta)


__all__ = ["unet2d_config", "unet_config_from_diffusers", "state_dict_to_diffusers", "state_dict_from_diffusers",
           "to_diffusers", "from_diffusers", "export_diffusers", "import_diffusers", "write_checkpoint",
           "lcm_scheduler_config", "lcm_original_steps", "consistency_from_lcm", "flow_shift_of"]
