"""``diffkit train``: train a U-Net (DDPM Algorithm 1), then sample a grid (time series: .npy + line plot).

``--resume CHECKPOINT`` alone continues a run exactly: the configuration is read from the
checkpoint (``--config``, flags and ``--set`` still override it), and without ``--out`` the run
goes on in the checkpoint's own folder, wherever the command is started. SIGINT or SIGTERM writes a
checkpoint, prints the command that resumes and exits with status 130 / 143; a second signal
exits at once (status 128 + signal) and leaves the last checkpoint intact.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from ..errors import DiffkitError
from ._common import (DATASET_NAMES, add_progress_flag, check_writable_dir, dataset_arg, missing_dirs, path_arg,
                      positive_int, remove_if_empty, removed_if_empty_on_failure, run_folder_lock)


def register(sub) -> None:
    p = sub.add_parser("train", help="train a diffusion model", description=__doc__)
    p.add_argument("--config", type=path_arg,
                   help="TOML/YAML/JSON file (the seed's modelConfig keys are accepted verbatim)")
    p.add_argument("--dataset", type=dataset_arg(DATASET_NAMES),
                   help="digits (embedded default), mnist, fashion-mnist, cifar10, folder; sines "
                        "(generated time series: a 1-D U-Net, docs/data_and_config.md), series (your "
                        "own time series: --data-dir FILE.csv or FILE.npy)")
    p.add_argument("--data-dir", type=path_arg,
                   help="folder with the data set files (dataset series: the .csv or .npy file)")
    p.add_argument("--out", type=path_arg, help="run folder: checkpoints in OUT/checkpoints, samples in OUT/samples")
    p.add_argument("--steps", type=positive_int,
                   help="optimiser steps (overrides epoch; default: the config's max_steps, else its epochs)")
    p.add_argument("--epochs", type=positive_int, help="epochs (the seed's 'epoch'; default: the config's, 200)")
    p.add_argument("--batch-size", type=positive_int,
                   help="images per optimiser step and process (default: the config's batch_size, 80)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps (default: the config's device, auto)")
    p.add_argument("--conditional", action="store_true", help="class-conditional (label dropout p_uncond)")
    p.add_argument("--resume", type=path_arg, help="checkpoint to resume from (the seed's training_load_weight); "
                                                   "its config is used unless --config is given")
    p.add_argument("--init-from", type=path_arg,
                   help="fine-tune: a new run (step 0, new optimiser) starting from this checkpoint's (EMA) weights; "
                        "its network keys come from the checkpoint, the training keys from the command line "
                        "(docs/fine_tuning.md; LoRA: --set lora_rank=4)")
    add_run_flags(p, "train", run, "--set lr=2e-4 --set channel_mult=[1,2,2]")


_OPTIONS: dict[str, list[str]] = {}  # each command's long options, for ranks_argv


def add_run_flags(p, command: str, func, set_example: str) -> None:
    """The flags a training run's command ends with (train, distill): --set, --no-sample, --nproc and
    the progress flag; then keeps the command's long option names for :func:`ranks_argv`."""
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help=f"any config field, e.g. {set_example}")
    p.add_argument("--no-sample", dest="sample", action="store_false", help="skip the sample grid at the end")
    p.add_argument("--nproc", type=positive_int, default=1,
                   help="processes for data-parallel training (re-runs itself under torchrun; "
                        "batch_size is per process; default 1)")
    add_progress_flag(p)
    p.set_defaults(func=func)
    _OPTIONS[command] = [o for action in p._actions for o in action.option_strings if o.startswith("--")]


def config_from_args(args):
    """TrainConfig from --config plus flags plus --set overrides, validated. Built from what was
    given, so a field none of them names takes its default for the others (the ``consistency``
    sampler for ``--set objective=consistency-training``: ``config.objective_sampling``)."""
    from ..config import TrainConfig, given_fields, parse_overrides, read_config_file
    init_from = getattr(args, "init_from", None)  # diffkit distill's arguments have none
    if init_from and args.resume:
        raise DiffkitError("--init-from starts a new run from a checkpoint's weights, --resume continues a run; "
                           "give one of them")
    if args.config:
        given = given_fields(read_config_file(args.config))
    elif args.resume:  # a checkpoint's config names every field
        given = given_fields(resumable_config(args.resume))
    else:
        given = {}
    cfg = TrainConfig.from_dict(given)
    flags = {"dataset": args.dataset, "data_dir": args.data_dir, "max_steps": args.steps,
             "epoch": args.epochs, "batch_size": args.batch_size, "device": args.device,
             "training_load_weight": args.resume or (cfg.seed_resume_checkpoint() if args.config else None)}
    if args.conditional:
        flags["conditional"] = True
    if args.out:
        flags["save_weight_dir"] = str(Path(args.out) / "checkpoints")
        flags["sampled_dir"] = str(Path(args.out) / "samples")
    elif args.resume:  # a resume continues in its checkpoint's folder (a --config's folders are for new runs)
        flags.update(resumed_run_folders(args.resume, cfg))
    if init_from:
        flags["init_from"] = init_from
    given.update({k: v for k, v in flags.items() if v is not None},
                 **parse_overrides(args.overrides or []))  # None without --set: no list a parser could share
    if given.get("init_from") and not args.resume:  # from --init-from, or a --config / --set init_from
        given = fine_tune_fields(given["init_from"], given)
    cfg = TrainConfig.from_dict(given)
    if args.resume:
        check_same_adapters(args.resume, cfg)
    return cfg


def check_same_adapters(path, cfg) -> None:
    """A resumed run keeps the LoRA adapters of its checkpoint (diffkit.lora): another ``lora_rank`` or
    ``lora_targets`` would not load, another ``lora_alpha`` would rescale the trained adapters (the
    network would jump at the resume, and its checkpoints would record a scale they were not trained
    with); a one-line error names the field, before the run starts."""
    from dataclasses import fields as dataclass_fields

    from ..checkpoint import peek_metadata
    from ..config import TrainConfig
    from ..lora import parse_targets
    file = Path(path) / "latest.safetensors" if Path(path).is_dir() else Path(path)
    stored = (peek_metadata(file) or {}).get("config") or {}
    defaults = {f.name: f.default for f in dataclass_fields(TrainConfig)}
    for key in ("lora_rank", "lora_alpha", "lora_targets"):
        old, new = stored.get(key, defaults[key]), getattr(cfg, key)
        if key == "lora_alpha":  # None is alpha = r: the same scale as alpha given as r
            rank = stored.get("lora_rank", defaults["lora_rank"])
            old, new = (rank if old is None else old), (rank if new is None else new)
        same = (set(parse_targets(new)) == set(parse_targets(old))) if key == "lora_targets" else new == old
        if not same:
            raise DiffkitError(f"{key}={new!r} is not allowed with --resume {path}: the run's adapters "
                               f"were trained with {key}={old!r}; drop it (a new run starts with --init-from)")


def fine_tune_fields(path, given: dict) -> dict:
    """The fields of a run fine-tuned from the checkpoint ``path`` (diffkit train --init-from): the
    network fields (:data:`~diffkit.config.NETWORK_FIELDS`) are the checkpoint's, the others those
    ``given`` on the command line; a given network field that differs from the checkpoint's is a
    one-line error naming it. ``init_from`` becomes the checkpoint file's absolute path."""
    from ..config import NETWORK_FIELDS, SERIES_DATASETS, TrainConfig
    from ..models.network import is_series_model
    from .distill import teacher_meta
    if given.get("training_load_weight"):  # e.g. a seed config's training_load_weight: a resume
        raise DiffkitError(f"--init-from starts a new run, and training_load_weight={given['training_load_weight']!r} "
                           f"resumes one; drop training_load_weight from the config, or resume without --init-from")
    meta = teacher_meta(path, role="--init-from", flag="--init-from", verb="fine-tune")
    source = TrainConfig.from_dict(meta["config"])
    network = {k: getattr(source, k) for k in NETWORK_FIELDS}
    if not source.autoencoder:  # what the data set gave, where the config left it None (a latent U-Net's
        network["in_channels"] = meta["unet"]["in_channels"]  # are the latents', the config's the images')
    if source.conditional:
        network["num_classes"] = meta["unet"].get("num_classes")
    for key in NETWORK_FIELDS:
        if key in given and given[key] != network[key]:
            raise DiffkitError(f"{key}={given[key]!r} is not allowed with --init-from {path}: {key} shapes the "
                               f"network, which comes from the checkpoint ({key}={network[key]!r}); drop it (to "
                               f"change the network, train a new one without --init-from)")
    fields = {k: v for k, v in given.items() if k not in NETWORK_FIELDS}
    if "loss" not in fields and source.learned_variance:  # a learned variance trains with the source's loss
        fields["loss"] = source.loss
    if "ema_warmup" not in fields and fields.get("ema_power") is None:  # the EMA warms up, d_n = (1 + n)/(10 + n)
        fields["ema_warmup"] = True  # capped at ema_decay, as diffusers' EMAModel in its fine-tuning scripts: a
        # fixed 0.9999 would keep a 2000-step fine-tuning's EMA (what diffkit sample takes) 82% at the source
    file = Path(path) / "latest.safetensors" if Path(path).is_dir() else Path(path)
    fields.update(network, init_from=str(file.resolve()))
    if (fields.get("dataset", "digits") in SERIES_DATASETS) != is_series_model(meta["unet"]):
        kind = "time series" if is_series_model(meta["unet"]) else "images"
        raise DiffkitError(f"dataset={fields.get('dataset', 'digits')!r} does not fit --init-from {path}, a model of "
                           f"{kind} (dataset={source.dataset!r}); give a data set of {kind} with --dataset")
    dataset = fields.get("dataset", "digits")
    if meta.get("text"):  # the captions' vocabulary, before the run folder (the Trainer checks it again)
        from ..data import CIFAR10_NAMES, default_data_dir, folder_classes
        from ..text import CaptionSet, check_same_vocabulary
        if dataset == "folder":  # the class-folder names, as the data loader reads them (no image is read)
            names = [name for name, _ in folder_classes(fields.get("data_dir") or default_data_dir(dataset))]
        else:
            names = CIFAR10_NAMES if dataset == "cifar10" else ()
        captions = CaptionSet.for_dataset(dataset, names)
        check_same_vocabulary(meta["text"]["tokenizer"]["words"], captions, dataset, f"--init-from {path}")
    return fields


def check_no_run_in(folder, resumed=None) -> None:
    """A run must not write over another run's checkpoints: refuse a folder that already holds a
    ``latest.safetensors`` (and say how to continue that run instead), unless it is the folder of
    the checkpoint being resumed (``resumed``)."""
    latest = Path(folder) / "latest.safetensors"
    inside = Path(folder).parent / "latest.safetensors"  # --out RUN/checkpoints wrote RUN/checkpoints/checkpoints
    if not latest.is_file() and inside.is_file():
        raise DiffkitError(f"{inside.parent} is a run's checkpoint folder (it holds {inside.name}); a run goes in a "
                           f"folder of its own: give another --out (to continue that run: --resume "
                           f"{shlex.quote(str(inside))})")
    if not latest.is_file():
        return
    if resumed is not None:
        own = Path(resumed) if Path(resumed).is_dir() else Path(resumed).parent
        if own.resolve() == Path(folder).resolve():
            return
        raise DiffkitError(f"{folder} holds another run ({latest.name}); resuming {resumed} there would write over "
                           f"its checkpoints; give another --out, or drop --out to continue in {own}")
    raise DiffkitError(f"{folder} already holds a run ({latest.name}); continue it with --resume "
                       f"{shlex.quote(str(latest))}, or give another --out (or delete that folder)")


def resumed_run_folders(path, cfg) -> dict:
    """Where a resumed run without ``--out`` writes: in the folder of the checkpoint it resumes
    from, and its samples where they were relative to that folder. (The folders stored in the
    checkpoint may be relative to the directory the run was started from.)"""
    checkpoints = Path(path) if Path(path).is_dir() else Path(path).parent
    samples = os.path.normpath(checkpoints / os.path.relpath(cfg.sampled_dir, cfg.save_weight_dir))
    return {"save_weight_dir": str(checkpoints), "sampled_dir": samples}


def resumable_config(path) -> dict:
    """The training config stored in a diffkit checkpoint (checked to be a training checkpoint)."""
    from ..checkpoint import LEGACY_SUFFIXES, check_not_other_kind, load_checkpoint
    if Path(path).suffix in LEGACY_SUFFIXES:
        raise DiffkitError(f"cannot resume training from {path}: a plain state dict has no optimiser, EMA or step; "
                           f"resume from a .safetensors training checkpoint (sample from it with "
                           f"'diffkit sample --checkpoint {path} --config CONFIG')")
    _, meta = load_checkpoint(path)
    check_not_other_kind(path, meta, "a training checkpoint to resume")
    if "step" not in meta or not isinstance(meta.get("config"), dict):
        raise DiffkitError(f"{path} is not a training checkpoint (no step/config); it cannot be resumed")
    return meta["config"]


CPU_RANKS_PER_CORE = 4  # --nproc above this many gloo processes per core is refused as a mistake


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask where the OS has one (a container's or
    taskset's limit), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def run(args) -> int:
    return run_config(args, config_from_args(args))


def run_config(args, cfg) -> int:
    """Train as the validated ``cfg`` says (``args``: nproc, sample, progress; ``diffkit distill``
    comes here with its own config)."""
    from ..config import resolve_device
    from ..distributed import DISTRIBUTED_DEVICES
    if cfg.state == "eval":  # the seed's modelConfig runs its sampler when state is "eval"
        raise DiffkitError("the config has state='eval' (the seed's sampling mode); 'diffkit train' trains: set "
                           "state='train', or sample a trained run with 'diffkit sample --checkpoint CKPT'")
    device = resolve_device(cfg.device)
    if args.nproc > 1 and device.type not in DISTRIBUTED_DEVICES:
        raise DiffkitError(f"--nproc {args.nproc} needs device cpu (gloo) or cuda (nccl); {device.type} has no "
                           f"process-group backend: use --nproc 1 or --device cpu")
    if args.nproc > 1 and device.type == "cpu":  # oversubscribing works; --nproc 100000 ran out of memory
        cores = usable_cores()
        limit = CPU_RANKS_PER_CORE * cores
        if args.nproc > limit:
            raise DiffkitError(f"--nproc {args.nproc} starts {args.nproc} processes on the CPU; this process may "
                               f"run on {cores} core{'s' if cores != 1 else ''}, and at most {CPU_RANKS_PER_CORE} "
                               f"processes a core are allowed: use --nproc {limit} or fewer")
    if args.nproc > 1 and device.type == "cuda":  # one GPU per rank (cuda:LOCAL_RANK)
        import torch
        if args.nproc > torch.cuda.device_count():
            raise DiffkitError(f"--nproc {args.nproc} needs {args.nproc} GPUs (one per process); this machine has "
                               f"{torch.cuda.device_count()}; use --nproc {torch.cuda.device_count()} or --device cpu")
    if args.sample:
        from ..sampling import resolve_sampler
        resolve_sampler(cfg.sampler)  # a bad sampler (or its grid) fails now, not after training
    check_no_run_in(cfg.save_weight_dir, cfg.training_load_weight or None)
    new_dirs = missing_dirs(cfg.save_weight_dir) + (missing_dirs(cfg.sampled_dir) if args.sample else [])
    check_writable_dir(cfg.save_weight_dir, "checkpoint directory")  # creates it: after every other check
    if args.sample:
        check_writable_dir(cfg.sampled_dir, "sample directory")
    with run_folder_lock(cfg.save_weight_dir):
        check_no_run_in(cfg.save_weight_dir, cfg.training_load_weight or None)  # again: under the lock
        return _launch(args, cfg, new_dirs)


def _launch(args, cfg, new_dirs) -> int:
    if args.nproc > 1:
        if cfg.training_load_weight:  # the mistakes a resume can make, said once, before N processes start
            from ..checkpoint import load_checkpoint
            from ..training import check_same_global_batch
            check_same_global_batch(cfg.training_load_weight, load_checkpoint(cfg.training_load_weight)[1],
                                    cfg.batch_size, args.nproc, cfg.grad_accum)
        code = relaunch_with_torchrun(args.nproc)
        if code != 0:
            remove_if_empty(new_dirs)  # e.g. a mistake the ranks found while loading the data (kept if not empty)
        return code
    flags = [f for f, on in (("--no-sample", not args.sample), ("--no-progress", not args.progress)) if on]
    with removed_if_empty_on_failure(new_dirs):  # e.g. a mistake found while loading the data
        return train_and_sample(cfg, progress=args.progress, sample=args.sample, resume_flags=flags)


def resume_command(cfg, flags=()) -> str:
    """The exact shell command that continues a run from its ``latest.safetensors``."""
    latest = Path(cfg.save_weight_dir) / "latest.safetensors"
    prog = "diffkit" if Path(sys.argv[0]).name == "diffkit" else f"{shlex.quote(sys.executable)} -m diffkit"
    command = f"{prog} train --resume {shlex.quote(str(latest))}" + "".join(f" {f}" for f in flags)
    relative = [p for p in (cfg.save_weight_dir, cfg.sampled_dir, cfg.data_dir) if p and not os.path.isabs(p)]
    return f"cd {shlex.quote(os.getcwd())} && {command}" if relative else command


def train_and_sample(cfg, progress: bool = True, sample: bool = True, num_samples: int = 64,
                     resume_flags=(), scale: int = 1) -> int:
    """Train as ``cfg`` says, then (``sample``) write the sample grid; returns the exit status.

    A SIGINT/SIGTERM during training writes a checkpoint, prints the resume command on stderr
    and returns 128 + signal (130 / 143)."""
    import signal

    from ..training import Trainer, TrainingInterrupted
    trainer = Trainer(cfg, progress=progress)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    network, items = ("1-D U-Net", "series") if cfg.is_series else ("DiT" if cfg.network == "dit" else "U-Net",
                                                                     "images")
    if cfg.lora_rank:  # LoRA: only the adapters train
        n_lora = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        network += f" (LoRA rank {cfg.lora_rank}: {n_lora:,} trainable parameters)"
    if trainer.init_source:
        network += f" from {trainer.init_source['path']} (step {trainer.init_source['step']})"
    trainer.log(f"training {n_params / 1e6:.2f}M-parameter {network} on {cfg.dataset} ({len(trainer.dataset)} {items}, "
          f"{tuple(trainer.dataset[0][0].shape)}) for {trainer.total_steps} steps on {trainer.device}")
    try:
        result = trainer.run()
    except TrainingInterrupted as stop:
        trainer.finish_distributed()
        if not trainer.dist.is_main:
            return 128 + stop.signum
        sys.stdout.flush()
        name = signal.Signals(stop.signum).name
        if stop.step >= trainer.total_steps:  # the signal came with the last step: training is complete
            sys.stderr.write(f"diffkit train: {name} after the last step: trained all {stop.step} steps; checkpoint "
                             f"{stop.checkpoint}; the sample grid was skipped (diffkit sample --checkpoint "
                             f"{shlex.quote(str(stop.checkpoint))})\n")
        else:
            flags = [*resume_flags, *([f"--nproc {trainer.dist.world_size}"] if trainer.dist.enabled else [])]
            sys.stderr.write(f"diffkit train: stopped by {name} at step {stop.step} of {trainer.total_steps}; "
                             f"checkpoint {stop.checkpoint}; resume with: {resume_command(cfg, flags)}\n")
        sys.stderr.flush()
        return 128 + stop.signum
    trainer.finish_distributed()  # rank 0 samples alone
    if not trainer.dist.is_main:
        return 0
    trainer.log(f"trained {result.steps} steps in {result.seconds:.0f} s "
                f"({result.images_per_second:.0f} {trainer.cfg.example_noun}/s); "
          f"final loss {result.final_loss:.4f}; checkpoint {result.checkpoint}")
    if sample and cfg.super_res_from is not None:  # an upscaler: its grid upscales training images
        from .upscale import training_grid
        training_grid(trainer, Path(cfg.sampled_dir) / cfg.sampledImgName, progress=progress)
    elif sample:
        from ._common import default_sampling
        from .sample import sample_to_files
        latest = Path(cfg.save_weight_dir) / "latest.safetensors"
        # sample_steps as 'diffkit sample' takes it: a consistency model's at most one per source time of its grid
        _, steps = default_sampling(latest, cfg.sampler, None)
        sample_to_files(latest, sampler=cfg.sampler, steps=cfg.sample_steps if steps is None else steps,
                        num=num_samples, nrow=cfg.nrow,
                        out=Path(cfg.sampled_dir) / cfg.sampledImgName,
                        # a latent model's noise lives in its latent space: no noise grid
                        noise_out=(None if cfg.autoencoder or cfg.is_series  # time series: no noise grid
                                   else Path(cfg.sampled_dir) / cfg.sampledNoisyImgName),
                        device=str(trainer.device), progress=progress, scale=scale)
    return 0


def ranks_argv(argv: list[str]) -> list[str]:
    """The command line for the ranks: this one without ``--nproc N``, and with abbreviations that
    argparse took here (``--st`` for ``--steps``) written out, since torchrun's own parser, which
    reads the line first, would take them for its options (``--standalone``, ``--start-method``)."""
    options = _OPTIONS.get(argv[0] if argv else "", [])
    full_names = []
    for a in argv:
        name, eq, value = a.partition("=")
        if name.startswith("--") and name not in options:
            matches = [o for o in options if o.startswith(name)]
            a = matches[0] + eq + value if len(matches) == 1 else a
        full_names.append(a)
    cleaned, skip = [], False
    for a in full_names:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        cleaned.append(a)
    return cleaned


def relaunch_with_torchrun(nproc: int) -> int:
    """Run this same command under ``torchrun --standalone --nproc_per_node nproc`` (PyTorch's
    launcher, called in this process). A rank's exit status is returned as the command's (2 for a
    user mistake, whose one-line message rank 0 has printed), without the launcher's traceback."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run as torchrun
    cleaned = ranks_argv(sys.argv[1:])
    launcher = ["--standalone", f"--nproc_per_node={nproc}", "-m", "diffkit", *cleaned]
    print("running: torchrun", " ".join(launcher), flush=True)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the ranks speak for themselves
    try:
        torchrun(parse_args(launcher))
    except ChildFailedError as err:
        _, failure = err.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
    except SignalException as err:  # SIGINT/SIGTERM to the launcher: it passed the signal on to the ranks,
        return 128 + int(err.sigval)  # which checkpointed and said how to resume
    return 0


