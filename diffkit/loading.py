"""From a checkpoint file to a ready Denoiser (the arrow "checkpoint -> Denoiser" of the design).

A diffkit ``.safetensors`` checkpoint describes its own model. A legacy plain state dict (the
seed's ``ckpt_199.pt``: ``torch.save(model.state_dict(), ...)``) holds only tensors, so it needs
the training config (e.g. the seed's ``modelConfig``) to rebuild the U-Net and the schedule; it
is read with ``torch.load(weights_only=True)`` and never unpickles code.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .denoiser import Denoiser
from .errors import DiffkitError
from .models.layers import preferred_memory_format, use_memory_format
from .models.network import build_network
from .schedule import NoiseSchedule


def is_legacy_checkpoint(path: str | Path) -> bool:
    """True for a ``.pt``/``.pth``/``.ckpt``/``.bin`` plain state dict."""
    return Path(path).suffix in ckpt.LEGACY_SUFFIXES


def load_model(path: str | Path, use_ema: bool = True, device="cpu", config=None, lora=None,
               lora_any_base: bool = False):
    """(U-Net in eval mode, metadata, schedule) from a checkpoint; EMA weights by default.

    ``config`` (a :class:`~diffkit.config.TrainConfig`, a mapping such as the seed's
    ``modelConfig``, or a config file path) is needed for a legacy state dict and must not be
    given for a diffkit checkpoint, which carries its own. A text-conditional checkpoint gives a
    :class:`~diffkit.text.TextConditionedUNet` (U-Net + text encoder + tokenizer). ``lora``: adapter
    files (paths or (path, scale) pairs) merged into the weights (:mod:`diffkit.lora_files`)."""
    return _load(path, use_ema, device, config, lora, lora_any_base)[:3]


def chosen_weights(path, tensors: dict, meta: dict, use_ema: bool) -> dict:
    """The network weights of a checkpoint: the EMA ones where it has them (``use_ema``, the
    default) or the raw ones. A weights-only export of the EMA weights has no raw set: asking it
    for them (``use_ema=False``, ``--no-ema``) is a one-line error."""
    if not use_ema and (meta.get("exported_from") or {}).get("weights") == "ema":
        made_by = "diffkit posthoc-ema" if meta.get("synthesised_ema") else "diffkit convert"
        raise DiffkitError(f"{path} holds only the EMA weights (a {made_by} export); the raw weights "
                           f"(--no-ema) are in the training checkpoint it came from")
    weights = ckpt.split_prefix(tensors, "model")
    if use_ema:
        ema = ckpt.split_prefix(tensors, "ema")
        weights = {k: ema.get(k, v) for k, v in weights.items()}
    return weights


def load_weights(model, weights: dict, meta: dict, what: str) -> None:
    """Load a checkpoint's network ``weights`` into ``model`` built from its ``meta["unet"]``; a LoRA
    checkpoint's (``meta["lora"]``, diffkit.lora) adapters are added first, loaded, then merged into
    the base weights (W0 + (alpha / r) B A), so the network is a plain one that samples at the base
    network's cost."""
    lora = meta.get("lora")
    if lora:
        from .lora import add_lora, merge_lora
        if not isinstance(lora, dict) or not {"rank", "alpha", "targets"} <= set(lora):
            raise DiffkitError(f"{what} has a malformed LoRA description (lora={lora!r})")
        add_lora(model, lora["rank"], lora["alpha"], lora["targets"])
    ckpt.load_state_dict_checked(model, weights, what)
    if lora:  # add_lora froze the base; merged, every weight is trainable again, as any loaded network's
        merge_lora(model).requires_grad_(True)


def _network(meta: dict):
    """The untrained network a checkpoint's metadata describes (with its text encoder, if any)."""
    model = build_network(meta["unet"])
    if meta.get("text"):
        from .text import TextConditionedUNet
        model = TextConditionedUNet.from_meta(model, meta["text"])
    return model


def _load(path, use_ema: bool, device, config, lora=None, lora_any_base: bool = False):
    """(model, metadata, schedule, latent decoder or None); ``lora``'s adapter files are merged on the
    CPU before the model moves to ``device`` (as a LoRA checkpoint's own adapters are)."""
    from .interop.dit_pipeline import is_dit_folder
    if is_dit_folder(path):  # a diffusers DiTPipeline folder (docs/interop.md): its one set of weights
        if config is not None or lora:
            raise DiffkitError(f"{path} is a diffusers DiT folder, which carries its own config and takes no diffkit "
                               f"adapters; drop {'--config' if config is not None else '--lora'}")
        from .interop.dit_pipeline import load_dit_folder
        return load_dit_folder(path, device)
    if is_legacy_checkpoint(path):
        if config is None:
            raise DiffkitError(f"{path} is a plain state dict with no model description; pass the config it was "
                               f"trained with (e.g. --config modelConfig.json with the seed's modelConfig keys)")
        if not lora:
            return (*load_legacy_model(path, config, device), None)
        model, meta, schedule = load_legacy_model(path, config, "cpu")
        from .lora_files import merge_adapters
        return merge_adapters(model, meta, lora, lora_any_base).to(device), meta, schedule, None
    if config is not None:
        raise DiffkitError(f"{path} is a diffkit checkpoint that carries its own config; drop --config "
                           f"(it is only for legacy .pt state dicts)")
    tensors, meta = ckpt.load_checkpoint(path)
    ckpt.check_not_other_kind(path, meta, "a diffusion model checkpoint (diffkit train, distill or convert)")
    if "unet" not in meta:
        raise DiffkitError(f"{path} has no model description; is it a diffkit training checkpoint?")
    model = _network(meta)
    weights = chosen_weights(path, tensors, meta, use_ema)
    load_weights(model, weights, meta, str(path))
    if lora:  # adapter files (diffkit.lora_files): W0 + sum_i s_i (alpha_i / r_i) B_i A_i
        from .lora_files import merge_adapters
        merge_adapters(model, meta, lora, lora_any_base)
    model.to(device).eval()
    decoder = None
    if meta.get("latent"):
        from .latent import FrozenAutoencoder
        decoder = FrozenAutoencoder.from_checkpoint(tensors, meta, device, str(path))
    return model, meta, NoiseSchedule(tensors["schedule.betas"]), decoder


def load_legacy_model(path: str | Path, config, device="cpu"):
    """(U-Net, metadata, schedule) from a plain state dict plus the config that describes it.

    ``in_channels`` left unset in the config is read off the first convolution's weight. Keys
    saved from ``DataParallel``/``DistributedDataParallel`` (``module.`` prefix) are accepted."""
    from .config import TrainConfig
    from .training import build_schedule
    if isinstance(config, TrainConfig):
        cfg = config
    elif isinstance(config, (str, Path)):
        cfg = TrainConfig.from_file(config)
    else:
        cfg = TrainConfig.from_dict(config)
    state = ckpt.load_legacy_checkpoint(path)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    unet = cfg.to_unet_kwargs()
    first = state.get("input_conv.weight")
    if cfg.in_channels is None and first is not None and first.ndim == 4:
        unet["in_channels"] = int(first.shape[1])
    model = build_network(unet)
    ckpt.load_state_dict_checked(model, state, str(path))
    model.to(device).eval()
    meta = {"config": cfg.to_dict(), "unet": unet, "prediction_type": cfg.prediction_type,
            "learned_variance": cfg.learned_variance}
    return model, meta, build_schedule(cfg)


def edm_sigma_data_of(meta: dict) -> float:
    """An EDM checkpoint's sigma_data (its training config's ``edm_sigma_data``; docs/edm.md); EDM's 0.5 where
    the config holds none (the Denoiser does not read it for other prediction types)."""
    from .config import EDM_SIGMA_DATA
    return float((meta.get("config") or {}).get("edm_sigma_data", EDM_SIGMA_DATA))


def load_denoiser(path: str | Path, use_ema: bool = True, device="cpu", config=None,
                  mixed_precision: str = "no", compile: str = "no", lora=None,
                  lora_any_base: bool = False) -> Denoiser:
    """A :class:`Denoiser` for a checkpoint; ``.model``, ``.meta``, ``.prompt_encoder`` and
    ``.decoder`` are attached. A consistency model's checkpoint (``meta["consistency"]``, written by
    ``diffkit distill``) comes wrapped in its consistency function,
    :class:`~diffkit.consistency.ConsistencyDenoiser`, which answers the same attributes.

    ``prompt_encoder`` (text-conditional checkpoints, else None): prompts -> the context
    (B, max_tokens, context_dim) that the network takes as ``cond={"context": ...}``; encode
    the prompts (and the null prompt "") once per sampling call. ``decoder`` (latent
    checkpoints, else None): the frozen autoencoder, ``decoder(z)`` = D(z / scale_factor).
    ``config``: only for a legacy state dict (see :func:`load_model`). ``mixed_precision``: the
    network's autocast dtype, ``compile`` a ``torch.compile`` mode (:meth:`Denoiser.compile`).
    ``lora``: LoRA adapter files (``diffkit convert --lora-only``), paths or (path, scale) pairs, merged
    into the weights at load, W = W0 + sum_i s_i (alpha_i / r_i) B_i A_i (:mod:`diffkit.lora_files`;
    ``lora_any_base`` merges them onto other base weights of the same network)."""
    if not isinstance(path, (str, os.PathLike)):
        raise DiffkitError(f"path of type {type(path).__name__} is not allowed; give the checkpoint's path")
    if not isinstance(device, torch.device):
        from .config import resolve_device
        device = resolve_device(str(device))  # a one-line error for a device this machine lacks
    model, meta, schedule, decoder = _load(path, use_ema, device, config, lora, lora_any_base)
    # the layout the network computes fastest in at this precision (models.layers.preferred_memory_format)
    use_memory_format(model, preferred_memory_format(next(model.parameters()).device, mixed_precision))
    d = Denoiser(model, schedule, prediction_type=meta.get("prediction_type", "epsilon"),
                 learned_variance=meta.get("learned_variance", False), mixed_precision=mixed_precision,
                 data_scale=meta.get("data_scale"), sigma_data=edm_sigma_data_of(meta))
    d.compile(compile)
    d.model, d.meta, d.decoder = model, meta, decoder
    d.prompt_encoder = getattr(model, "encode_prompts", None)
    if meta.get("consistency"):  # a consistency model answers x0 = f(x, t) (diffkit.consistency)
        from .consistency import ConsistencyDenoiser
        entry = meta["consistency"]  # it samples from the source times of the grid it was distilled on
        return ConsistencyDenoiser(d, entry["sigma_data"], entry["timestep_scaling"], entry.get("grid") or None,
                                   entry.get("guidance_range"),  # a w-conditioned model's [w_min, w_max]
                                   curriculum=entry.get("curriculum", "fixed"))
    return d


# what a training checkpoint holds only for resuming (the optimiser, RNG and loss-aware timestep
# sampler state, the EMA copy once it has replaced the weights, a consistency run's EMA target network,
# the power-function EMAs of post-hoc EMA) and the metadata that goes with it
_RESUME_PREFIXES = ("ema.", "optim", "rng.", "timesteps.", "target.", "posthoc.")
_RESUME_META = ("step", "epoch", "batch_in_epoch", "total_steps", "dataset_size", "steps_per_epoch", "lr",
                "ema_updates", "optimizer", "skipped_steps", "consecutive_skipped", "posthoc_ema")


def without_resume_state(tensors: dict, meta: dict) -> tuple[dict, dict]:
    """A training checkpoint's (tensors, metadata) less what only resuming needs (optimiser, RNG,
    timestep-sampler and target-network state, the EMA copy, the step counters): the network's
    weights, the schedule, a latent model's autoencoder and the model description."""
    return ({k: v for k, v in tensors.items() if not k.startswith(_RESUME_PREFIXES)},
            {k: v for k, v in meta.items() if k not in _RESUME_META})


def export_weights(path: str | Path, out: str | Path, use_ema: bool = True) -> Path:
    """Write the weights-only checkpoint of a training checkpoint: the (EMA) network weights, the
    schedule and a latent model's autoencoder, with the model description; no optimiser or RNG
    state, so it is a quarter of the size and cannot resume training. A LoRA checkpoint's adapters are
    merged into the weights (the metadata keeps them as ``merged_lora``). :func:`load_denoiser`
    gives the same network from either file (the same :func:`diffkit.checkpoint.tensors_digest`)."""
    tensors, meta = ckpt.load_checkpoint(path)
    ckpt.check_not_other_kind(path, meta, "a diffusion model checkpoint (diffkit train, distill or convert)")
    if "unet" not in meta:
        raise DiffkitError(f"{path} has no model description; is it a diffkit training checkpoint?")
    weights = chosen_weights(path, tensors, meta, use_ema)
    if meta.get("lora"):  # written merged: a plain network's weights, W0 + (alpha / r) B A
        model = _network(meta)
        load_weights(model, weights, meta, str(path))
        weights = model.state_dict()
    kept, info = without_resume_state(tensors, meta)
    kept = {k: v for k, v in kept.items() if not k.startswith("model.")}
    kept.update({f"model.{k}": v for k, v in weights.items()})
    info.pop("lora", None)
    if meta.get("lora"):
        info["merged_lora"] = meta["lora"]
    if meta.get("exported_from"):  # an export of an export holds the same weights as it: keep its label
        info["exported_from"] = meta["exported_from"]
    else:
        has_ema = any(k.startswith("ema.") for k in tensors)
        info["exported_from"] = {"step": meta.get("step"), "weights": "ema" if use_ema and has_ema else "raw"}
    return ckpt.save_checkpoint(out, kept, info)
