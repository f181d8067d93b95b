"""``diffkit distill``: distil a diffusion checkpoint into a consistency model (one- and few-step
sampling; docs/consistency.md), then sample a grid with ``--sampler consistency``.

The student is the teacher's network, started from the teacher's (EMA) weights, trained with
consistency distillation (Song et al. 2023, Alg. 2; Luo et al. 2023, Alg. 1) by diffkit's training
loop: checkpoints, exact resume (``diffkit distill --resume CKPT`` or ``diffkit train --resume
CKPT``), Ctrl-C, EMA and mixed precision are those of ``diffkit train``. The run's config is the
teacher's, with objective='consistency-distillation', EMA warm-up on (ema_warmup; ``--set
ema_power=P`` takes the power warm-up instead), and samples drawn with the ``consistency`` sampler
in 4 steps; ``--set`` changes any field (e.g. ``consistency_skip``, ``consistency_distance``,
``lr``, ``consistency_guidance``).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DiffkitError
from ._common import path_arg, positive_int


def register(sub) -> None:
    p = sub.add_parser("distill", help="distil a diffusion checkpoint into a consistency model",
                       description=__doc__)
    p.add_argument("--teacher", type=path_arg,
                   help="the diffusion checkpoint to distil (a diffkit .safetensors file or run folder)")
    p.add_argument("--out", type=path_arg, help="run folder: checkpoints in OUT/checkpoints, samples in OUT/samples")
    p.add_argument("--steps", type=positive_int,
                   help="optimiser steps (default: the teacher config's max_steps, else its epochs)")
    p.add_argument("--batch-size", type=positive_int,
                   help="images per optimiser step and process (default: the teacher config's batch_size)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps (default: the teacher config's device)")
    p.add_argument("--resume", type=path_arg, help="a distillation checkpoint to continue exactly")
    from .train import add_run_flags
    add_run_flags(p, "distill", run, "--set consistency_skip=10 --set lr=5e-5")


# what a distillation run changes in the teacher's config (--set overrides any of them); the teacher's
# sample grid is dropped: None is the objective's (config.objective_sampling: consistency, 4 steps); a
# fine-tuned teacher's init_from and LoRA fields are its own run's (the student starts from its merged weights),
# and so is a teacher's post-hoc EMA (a distillation tracks power-function EMAs when --set posthoc_ema asks)
DISTILL_DEFAULTS = {"objective": "consistency-distillation", "sampler": None, "sample_steps": None,
                    "ema_warmup": True, "ema_power": None, "ema_inv_gamma": 1.0, "timestep_sampler": "uniform",
                    "min_snr_gamma": None, "p2_gamma": None, "p2_k": 1.0, "input_perturbation": 0.0,
                    "training_load_weight": None, "test_load_weight": None, "init_from": None, "lora_rank": 0,
                    "lora_alpha": None, "lora_targets": "attention", "posthoc_ema": None, "posthoc_ema_every": 1000}


def teacher_meta(path, role: str = "teacher", flag: str = "--teacher", verb: str = "distil from") -> dict:
    """The teacher checkpoint's metadata, its training config under ``"config"`` (one-line errors for
    anything else); ``role`` / ``flag`` / ``verb`` word them for another use of a diffusion checkpoint
    (diffkit train --init-from)."""
    from ..checkpoint import LEGACY_SUFFIXES, check_not_other_kind, load_checkpoint
    if Path(path).suffix in LEGACY_SUFFIXES:
        raise DiffkitError(f"{role} {path} is a plain state dict; {verb} a diffkit .safetensors checkpoint "
                           f"(convert it first: diffkit convert)")
    try:
        _, meta = load_checkpoint(path)
    except DiffkitError as err:
        raise DiffkitError(f"{flag}: {err}") from None
    check_not_other_kind(f"{role} {path}", meta, "a diffusion model checkpoint")
    if not isinstance(meta.get("config"), dict) or "unet" not in meta:
        raise DiffkitError(f"{role} {path} is not a diffkit diffusion checkpoint (no config / model description)")
    if meta.get("consistency"):
        raise DiffkitError(f"{role} {path} is a consistency model; {verb} a diffusion checkpoint")
    return meta


def config_from_args(args):
    from .train import config_from_args as train_config
    if args.resume:
        if args.teacher:
            raise DiffkitError("--resume continues a distillation with its own teacher; drop --teacher")
        train_args = _train_args(args)
        cfg = train_config(train_args)
        if cfg.objective == "diffusion":
            raise DiffkitError(f"{args.resume} is a diffusion run; continue it with diffkit train --resume, or distil "
                               f"it with diffkit distill --teacher {args.resume}")
        return cfg
    if not args.teacher:
        raise DiffkitError("diffkit distill needs --teacher CKPT (a diffkit diffusion checkpoint) or --resume CKPT")
    if not args.out:
        raise DiffkitError("diffkit distill needs --out DIR (the run folder of the consistency model)")
    flags = {"max_steps": args.steps, "batch_size": args.batch_size, "device": args.device}
    return distill_config(args.teacher, args.out, args.overrides or [],
                          **{k: v for k, v in flags.items() if v is not None})


def distill_config(teacher, out, overrides=(), **fields):
    """The TrainConfig of a distillation of ``teacher`` into the run folder ``out``: the teacher's
    config with :data:`DISTILL_DEFAULTS`, then ``fields`` and the ``key=value`` ``overrides``; an
    ``ema_power`` among them turns the default ``ema_warmup`` off (the two exclude each other)."""
    from ..config import TrainConfig, apply_overrides, parse_overrides
    from ..training import check_guided_teacher
    teacher = Path(teacher)
    meta = teacher_meta(teacher)  # a folder: its latest.safetensors (load_checkpoint's errors)
    data = dict(meta["config"])
    if data.get("prediction_type") == "flow_prediction":
        raise DiffkitError(f"teacher {teacher} is a flow-matching model (prediction_type='flow_prediction'); "
                           f"consistency distillation of flow-matching models is not supported (docs/flow_matching.md)")
    if data.get("prediction_type") == "edm":
        raise DiffkitError(f"teacher {teacher} is an EDM model (prediction_type='edm'); consistency distillation of "
                           f"EDM models is not supported (docs/edm.md)")
    teacher = teacher / "latest.safetensors" if teacher.is_dir() else teacher
    given = parse_overrides(overrides)
    data.update(DISTILL_DEFAULTS, teacher=str(teacher.resolve()), save_weight_dir=str(Path(out) / "checkpoints"),
                sampled_dir=str(Path(out) / "samples"))
    if {**fields, **given}.get("ema_power") is not None:  # it replaces distill's default (1 + n)/(10 + n) warm-up
        data["ema_warmup"] = False  # (an ema_warmup the caller gives still wins)
    data.update(fields)
    cfg = apply_overrides(TrainConfig.from_dict(data), given)
    check_guided_teacher(cfg, meta)  # before the run folder is made (the Trainer checks it again)
    return cfg


def _train_args(args):
    """The ``diffkit train`` arguments of a resumed distillation: train's own defaults (its parser),
    with the flags the two commands share taken from ``args``."""
    from ..cli import build_parser
    train = build_parser().parse_args(["train"])
    for name in ("resume", "out", "steps", "batch_size", "device", "overrides"):
        setattr(train, name, getattr(args, name))
    return train


def run(args) -> int:
    from .train import run_config
    return run_config(args, config_from_args(args))
