"""The training loop (DDPM Algorithm 1) and nothing else: optimiser, warm-up, clipping, EMA,
mixed precision, atomic checkpoints, exact resume, signals, progress and logging.

The objective comes from :mod:`diffkit.losses`; the timestep distribution from
:mod:`diffkit.timestep_sampling`. The learning rate is a pure function of the step
(:func:`learning_rate`), so resuming needs no scheduler state.
"""
from __future__ import annotations

import copy
import csv
import gc
import io
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .checkpoint import checkpoint_step
from . import distributed
from .config import TrainConfig, check_ema_warmup, resolve_device
from .data import data_scale, load_dataset, make_loader
from .denoiser import autocast
from .errors import DiffkitError
from .losses import edm_losses, flow_matching_losses, training_losses
from .models.layers import resolve_memory_format, use_memory_format
from .models.network import build_network
from .models.unet import UNet, UNetConfig
from .optim import FusedAdamW
from .posthoc_ema import (SNAPSHOT_FOLDER, PowerEMA, check_resume as check_posthoc_resume, snapshot_path,
                          snapshot_steps, tracked_parameters)
from .schedule import NoiseSchedule
from .timestep_sampling import EDMSigmas, FlowTimes, make_timestep_sampler


# ---------------------------------------------------------------- pieces
def learning_rate(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """The seed's schedule (GradualWarmupScheduler + cosine), per optimiser step:

    warm-up over the first int(``warmup_fraction`` * total) steps (none in runs shorter than
    1 / warmup_fraction steps), linear from ``lr`` to ``lr * multiplier``; then (``warmup-cosine``)
    cosine decay from ``lr * multiplier`` towards 0, which it reaches at step ``total_steps`` (the
    last step run, total_steps - 1, has a small positive rate), or (``warmup-constant``) constant
    ``lr * multiplier``.
    """
    peak = cfg.lr * cfg.multiplier
    warmup = int(cfg.warmup_fraction * total_steps)
    if step < warmup:
        return cfg.lr * (1 + (cfg.multiplier - 1) * step / warmup)
    if cfg.lr_schedule == "warmup-constant":
        return peak
    progress = (step - warmup) / max(1, total_steps - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class EMA:
    """Exponential moving average of parameters (and a copy of buffers): ema = d ema + (1-d) w.

    The decay at update n (0, 1, ... ; ``updates``, saved in checkpoints as ``ema_updates``) is
    ``decay``, or with a warm-up min(decay, d_n):

    * ``warmup``: d_n = (1 + n)/(10 + n), so short runs are not dominated by the initialisation
      (diffusers' EMAModel without ``use_ema_warmup`` from its second update on; its first update,
      n = 0, copies the weights where this one keeps 0.1 of the initial ones, a difference below
      1e-7 after 20 updates);
    * ``power`` p (with ``inv_gamma`` g): d_n = 1 - (1 + n/g)^-p, diffusers' EMAModel with
      ``use_ema_warmup=True, inv_gamma=g, power=p`` (its ``get_decay``; d_0 = 0 copies the weights;
      p = 2/3 reaches 0.999 at about 31.6K updates, p = 3/4 at 10K).

    ``trainable_only`` (LoRA runs): average only the parameters that train (``requires_grad``), the
    adapters; a frozen weight's average is the weight itself, so :func:`diffkit.loading.chosen_weights`
    takes it from ``model.*`` and the checkpoint does not store it twice.
    """

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = False,
                 power: Optional[float] = None, inv_gamma: float = 1.0, trainable_only: bool = False):
        check_ema_warmup(warmup, power, inv_gamma)
        self.decay, self.warmup, self.power, self.inv_gamma, self.updates = decay, warmup, power, inv_gamma, 0
        self.trainable_only = trainable_only
        self.params = [p.detach().clone() for _, p in self._tracked(model)]

    def _tracked(self, model: torch.nn.Module) -> list:
        """(name, parameter) of the parameters averaged, in the model's order."""
        return tracked_parameters(model, self.trainable_only)

    def current_decay(self) -> float:
        n = self.updates
        if self.power is not None:
            return min(self.decay, 1.0 - (1.0 + n / self.inv_gamma) ** -self.power)
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = self.current_decay()
        torch._foreach_lerp_(self.params, [p.detach() for _, p in self._tracked(model)], 1.0 - d)
        self.updates += 1

    def state_tensors(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        names = [n for n, _ in self._tracked(model)]
        out = {f"ema.{n}": p for n, p in zip(names, self.params)}
        out.update({f"ema.{n}": b for n, b in model.named_buffers()})
        return out

    def load(self, model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        ema = ckpt.split_prefix(tensors, "ema")
        for (name, _), p in zip(self._tracked(model), self.params):
            p.copy_(ema[name])

    def copy_to(self, model: torch.nn.Module) -> None:
        with torch.no_grad():
            for (_, p), e in zip(self._tracked(model), self.params):
                p.copy_(e)


def build_model(cfg: TrainConfig, dataset=None) -> torch.nn.Module:
    """The U-Net that ``cfg`` describes (seed 000 key names; the 1-D U-Net for time series; a DiT for
    ``network = "dit"``); with
    ``text_conditioning``, the U-Net and a new text encoder as one :class:`~diffkit.text.TextConditionedUNet`, its
    vocabulary that of the data set's captions (:meth:`~diffkit.text.CaptionSet.for_dataset`)."""
    kwargs = cfg.to_unet_kwargs(dataset)
    classes = getattr(dataset, "num_classes", None)
    if kwargs.get("num_classes") and classes and classes > kwargs["num_classes"]:  # labels would index past it
        raise DiffkitError(f"num_classes={kwargs['num_classes']} is fewer than the {classes} classes of "
                           f"dataset={cfg.dataset!r}; use num_classes={classes} (or leave it unset)")
    if cfg.is_series or cfg.network == "dit":  # the 1-D U-Net (docs/data_and_config.md), a DiT (docs/models.md)
        return build_network(kwargs)
    unet = UNet(UNetConfig(**kwargs))
    if not cfg.text_conditioning:
        return unet
    from .text import CaptionSet, build_text_model
    captions = CaptionSet.for_dataset(cfg.dataset, getattr(dataset, "class_names", ()) or ())
    classes = getattr(dataset, "num_classes", None)
    if classes and classes != captions.num_classes:
        raise DiffkitError(f"the data set has {classes} classes but the captions of dataset={cfg.dataset!r} "
                           f"cover {captions.num_classes}")
    return build_text_model(unet, captions, width=cfg.text_width, layers=cfg.text_layers, heads=cfg.text_heads,
                            max_tokens=cfg.max_prompt_tokens)


def build_schedule(cfg: TrainConfig) -> NoiseSchedule:
    if cfg.schedule in ("linear", "sigmoid"):
        kwargs = {"beta_start": cfg.beta_1, "beta_end": cfg.beta_T}
    elif cfg.schedule == "flow":
        kwargs = {"shift": cfg.flow_shift}
    elif cfg.schedule == "edm":
        kwargs = {"sigma_min": cfg.edm_sigma_min, "sigma_max": cfg.edm_sigma_max}
    else:
        kwargs = {}
    return NoiseSchedule.from_name(cfg.schedule, cfg.T, zero_terminal_snr=cfg.zero_terminal_snr, **kwargs)


@dataclass
class TrainResult:
    checkpoint: Path
    steps: int
    final_loss: float
    seconds: float
    images_per_second: float


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by :meth:`Trainer.run` after a SIGINT/SIGTERM once the checkpoint is written.

    ``signum`` is the signal, ``checkpoint`` the ``latest.safetensors`` to resume from, ``step``
    the step it holds. A KeyboardInterrupt, so code that catches Ctrl-C still does."""

    def __init__(self, signum: int, checkpoint: Path, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint {checkpoint}")
        self.signum, self.checkpoint, self.step = signum, checkpoint, step


class _SignalGuard:
    """First SIGINT/SIGTERM: ask the loop to checkpoint and stop. Second: exit at once with
    status 128 + signal (the atomic writes guarantee no checkpoint is ever half-written; an
    interrupted write leaves only a hidden temp file, removed by the next save)."""

    def __init__(self):
        self.requested = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested is not None:
            sys.stderr.write("\ndiffkit: second signal, exiting now (last checkpoint is intact)\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.requested = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------- the loop
def rank_step_seed(seed: int, rank: int, step: int) -> int:
    """The global-RNG seed of rank ``rank`` > 0 at optimiser step ``step``, which its dropout masks
    come from. Rank 0 keeps the run's own stream (saved in checkpoints), so one process trains as
    it always did; the other ranks draw masks of their own (not copies of rank 0's), and since
    theirs are a function of the step, a resume on the same number of processes stays exact."""
    return ((seed * 1_000_003 + rank) * 1_000_000_007 + step) % 2**63


class _TrainLog:
    """``train_log.csv``, one row every ``log_every`` steps (rank 0 only; a no-op elsewhere).

    A resumed run keeps the rows up to its step, so rows that a killed run wrote after its last
    checkpoint do not appear twice; the kept rows are rewritten atomically. A write error (disk
    full) is a one-line DiffkitError."""

    header = ["step", "epoch", "loss", "lr", "images_per_second"]

    def __init__(self, path: Path, step: int, enabled: bool):
        self.path, self.file = path, None
        if not enabled:
            return
        rows = []
        if step > 0 and path.exists():
            with open(path, newline="") as f:
                rows = [r for r in list(csv.reader(f))[1:] if r and r[0].isdigit() and int(r[0]) <= step]
        text = io.StringIO(newline="")
        csv.writer(text).writerows([self.header, *rows])
        ckpt.atomic_write_bytes(path, text.getvalue().encode())
        try:
            self.file = open(path, "a", newline="")
        except OSError as err:
            raise self._error(err) from None
        self.writer = csv.writer(self.file)

    def _error(self, err: OSError) -> DiffkitError:
        return DiffkitError(f"could not write the training log {self.path}: {err.strerror or err}")

    def write(self, row: list) -> None:
        if self.file is None:
            return
        try:
            self.writer.writerow(row)
            self.file.flush()
        except OSError as err:
            self.close()
            raise self._error(err) from None

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:  # every row was flushed when written; nothing is lost here
                pass
            self.file = None


def check_same_global_batch(path, meta: dict, batch_size: int, world_size: int, grad_accum: int) -> None:
    """An exact resume needs the same global batch (per-process batch x processes) and the same
    gradient accumulation as the checkpoint's run: they fix which images and noise each step
    sees. The number of processes may change (torchrun): 1 x 8 resumes as 2 x 4 exactly."""
    saved = meta.get("global_batch")
    if saved is None:  # older checkpoints did not record it
        return
    saved_world = meta.get("world_size", 1)
    saved_accum = (meta.get("config") or {}).get("grad_accum", 1)
    now = batch_size * world_size
    if saved != now:
        advice = (f"use --batch-size {saved // world_size}" if saved % world_size == 0 else
                  f"{saved} images cannot be split evenly over {world_size} processes")
        raise DiffkitError(f"{path} was trained with a global batch of {saved} ({saved // saved_world} per process x "
                           f"{saved_world}); this run's is {now} ({batch_size} x {world_size}); an exact resume needs "
                           f"the same global batch: {advice}")
    if saved_accum != grad_accum:
        raise DiffkitError(f"{path} was trained with grad_accum={saved_accum}, this run has {grad_accum}; an exact "
                           f"resume needs the same value")


# Training settings a resume may change (docs/reliability.md): they weight the loss, perturb its inputs, or
# average the weights, so they change what the next steps optimise, not what the saved weights compute
# (the schedule, prediction type and network are refused: check_same_objective_and_size). The resumed run
# names each change in its log (resume_changes) and its checkpoints' config records the new value.
RESUME_MAY_CHANGE = ("dropout", "min_snr_gamma", "p2_gamma", "p2_k", "input_perturbation", "ema_decay", "ema_warmup",
                     "ema_power", "ema_inv_gamma", "posthoc_ema_every")


def resume_changes(meta: dict, cfg: TrainConfig) -> list[str]:
    """``"key was -> now"`` for each of ``RESUME_MAY_CHANGE`` that this run's ``cfg`` sets otherwise than the
    checkpoint's config (``meta``); a key the checkpoint predates counts as its default (as
    ``TrainConfig.from_dict`` reads that checkpoint)."""
    saved, defaults = meta.get("config") or {}, TrainConfig()
    changes = []
    for key in RESUME_MAY_CHANGE:
        was, now = saved.get(key, getattr(defaults, key)), getattr(cfg, key)
        if was != now:
            changes.append(f"{key} {was!r} -> {now!r}")
    return changes


def check_same_objective_and_size(path, tensors: dict, meta: dict, schedule: NoiseSchedule, cfg: TrainConfig,
                                 unet_kwargs: dict) -> None:
    """An exact resume needs the checkpoint's noise schedule (its betas: T, schedule, beta_1,
    beta_T, zero_terminal_snr), prediction type and image size; the weights' shapes do not depend
    on them, so without this check they would change silently."""
    saved_cfg = meta.get("config") or {}
    betas = tensors.get("schedule.betas")
    if betas is not None and (betas.shape != schedule.betas.shape or not torch.allclose(
            betas.double(), schedule.betas.double(), rtol=1e-6, atol=1e-12)):
        was = ", ".join(f"{k}={saved_cfg[k]}" for k in ("T", "schedule", "beta_1", "beta_T") if k in saved_cfg)
        now = ", ".join(f"{k}={getattr(cfg, k)}" for k in ("T", "schedule", "beta_1", "beta_T"))
        raise DiffkitError(f"{path} was trained with another noise schedule ({was or f'T={len(betas)}'}); this run "
                           f"has {now}; an exact resume needs the same schedule")
    saved_prediction = meta.get("prediction_type")
    if saved_prediction is not None and saved_prediction != cfg.prediction_type:
        raise DiffkitError(f"{path} was trained with prediction_type={saved_prediction}, this run has "
                           f"{cfg.prediction_type}; an exact resume needs the same value")
    saved_size = (meta.get("unet") or {}).get("img_size")
    if saved_size is not None and saved_size != unet_kwargs.get("img_size"):
        raise DiffkitError(f"{path} was trained at img_size={saved_size}, this run has img_size="
                           f"{unet_kwargs.get('img_size')}; an exact resume needs the same value")
    # settings that change what the same weights compute (num_heads, head_channels, scale_shift_norm,
    # ...): dropout is a training setting and may change
    saved_unet = meta.get("unet") or {}
    for key, field, default in (("low_res_size", "super_res_from", None), ("low_res_noise", "super_res_noise", 0)):
        was, now = saved_cfg.get(field, default), getattr(cfg, field)  # the input conv's width, the noise-level
        if saved_unet and (saved_unet.get(key, default) != unet_kwargs.get(key, default) or was != now):  # embedding, K
            raise DiffkitError(f"{path} was trained with {field}={was}, this run has {field}={now}; an exact resume "
                               f"needs the same value (drop the change, or start a new run)")
    for key in sorted(set(saved_unet) & set(unet_kwargs) - {"dropout"}):
        was, now = saved_unet[key], unet_kwargs[key]
        if ((list(was) if isinstance(was, (list, tuple)) else was)
                != (list(now) if isinstance(now, (list, tuple)) else now)):
            raise DiffkitError(f"{path} was trained with {key}={was!r}, this run has {key}={now!r}; an exact "
                               f"resume needs the same network (drop the change, or start a new run)")


def check_guided_teacher(cfg, meta: Optional[dict]) -> None:
    """A guided consistency distillation (``consistency_guidance`` or ``consistency_guidance_range``)
    extrapolates from the teacher's null class (CFG, Ho & Salimans 2022, eq. 6): a one-line error when the
    teacher's metadata ``meta`` says it never trained it (:func:`diffkit.guidance.check_null_trained`)."""
    if not (cfg.consistency_guidance or cfg.consistency_guidance_range):
        return
    from .guidance import check_null_trained
    try:
        check_null_trained(meta)
    except DiffkitError as err:
        setting = (f"consistency_guidance={cfg.consistency_guidance}" if cfg.consistency_guidance else
                   f"consistency_guidance_range={cfg.consistency_guidance_range}")
        raise DiffkitError(f"{setting} guides teacher={cfg.teacher!r}: {err} (or distil it unguided: "
                           f"consistency_guidance=0)") from None


class Trainer:
    """Trains a U-Net on a data set as ``cfg`` says; see :meth:`run`.

    A step whose loss or gradient norm is not finite is skipped (no update, no EMA update) and
    counted (``skipped_steps``); after ``max_nonfinite_steps`` such steps in a row the run stops
    with a one-line DiffkitError naming the step, without writing a checkpoint, so the last good
    one stays ``latest.safetensors``."""

    max_nonfinite_steps = 10

    def __init__(self, cfg: TrainConfig, dataset=None, *, progress: bool = True,
                 log: Callable[[str], None] = print):
        self.cfg = cfg
        self.log = log
        self.progress = progress
        self.dist, self.device = distributed.setup(resolve_device(cfg.device))
        if not self.dist.is_main:
            self.progress, self.log = False, (lambda msg: None)
        if cfg.deterministic:  # see docs/reliability.md: bitwise on the CPU, run-to-run on one GPU model
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
            torch.backends.cudnn.benchmark = False
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(cfg.seed)
        self.dataset = dataset if dataset is not None else load_dataset(**cfg.dataset_kwargs(train=True))
        if len(self.dataset) < 1:
            raise DiffkitError("the data set is empty")
        self.latent = None  # latent diffusion: the frozen autoencoder; the data set is encoded once here
        if cfg.autoencoder:
            from .latent import FrozenAutoencoder, encode_dataset
            self.latent = FrozenAutoencoder.from_file(cfg.autoencoder, self.device)
            self.dataset = encode_dataset(self.latent, self.dataset)
            factor = 2 ** (len(cfg.channel_mult) - 1)
            if cfg.network == "dit" and self.dataset.img_size % cfg.patch_size:
                raise DiffkitError(f"patch_size={cfg.patch_size} must divide the latent size {self.dataset.img_size} "
                                   f"(the {self.dataset.img_size}x{self.dataset.img_size} latents of "
                                   f"autoencoder={cfg.autoencoder}; network='dit' cuts them into patches)")
            if cfg.network != "dit" and self.dataset.img_size % factor:
                raise DiffkitError(f"the latents are {self.dataset.img_size}x{self.dataset.img_size}, not divisible "
                                   f"by {factor} = 2**(len(channel_mult)-1) for channel_mult={cfg.channel_mult!r}")
        self.data_scale = data_scale(self.dataset)  # recorded for samplers' logsnr_graded grid
        self.schedule = build_schedule(cfg)
        self.model = build_model(cfg, self.dataset).to(self.device)
        # diffkit train --init-from: {"path", "step", "sha256"} of the checkpoint whose weights start the run
        self.init_source = self._init_weights() if cfg.init_from and not cfg.training_load_weight else None
        if cfg.lora_rank:  # the base frozen, rank-r adapters trained (diffkit.lora; Hu et al. 2021, eq. 3)
            from .lora import add_lora
            add_lora(self.model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        # the layout the network computes in, fixed before the EMA copy and the optimiser's moments
        # take the weights' strides; auto: models.layers.preferred_memory_format
        use_memory_format(self.model, resolve_memory_format(cfg.memory_format, self.device, cfg.mixed_precision))
        self.teacher = self._load_teacher() if cfg.objective == "consistency-distillation" else None
        self.ema = EMA(self.model, cfg.ema_decay, cfg.ema_warmup, cfg.ema_power, cfg.ema_inv_gamma,
                       trainable_only=bool(cfg.lora_rank))
        # post-hoc EMA (EDM2 Sec. 3): power-function EMAs whose snapshots diffkit posthoc-ema combines; rank 0
        # alone keeps them (it alone writes checkpoints and snapshots)
        self.posthoc = (PowerEMA(self.model, cfg.posthoc_ema, trainable_only=bool(cfg.lora_rank))
                        if cfg.posthoc_ema and self.dist.is_main else None)
        # fused AdamW (one kernel for all parameters) on CPU and CUDA, channels_last weights handed
        # to the CPU kernel without its gradient copies (diffkit.optim); resumed optimiser state gets
        # the parameters' strides (checkpoint.match_parameter_layout), which the fused kernel needs
        trained = [p for p in self.model.parameters() if p.requires_grad]  # all but a LoRA run's frozen base
        if self.device.type in ("cuda", "cpu"):
            self.optimizer = FusedAdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
        if cfg.prediction_type == "flow_prediction":  # continuous flow times (docs/flow_matching.md)
            self.timesteps = FlowTimes(cfg.timestep_sampler, cfg.flow_shift, cfg.logit_mean, cfg.logit_std)
        elif cfg.prediction_type == "edm":  # EDM's continuous sigma (docs/edm.md)
            self.timesteps = EDMSigmas(cfg.edm_p_mean, cfg.edm_p_std)
        else:
            self.timesteps = make_timestep_sampler(cfg.timestep_sampler, cfg.T)
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)  # noise and timesteps
        self.global_batch = cfg.batch_size * self.dist.world_size  # per optimiser micro-step
        needed = self.global_batch * cfg.grad_accum
        if len(self.dataset) < needed:  # the loader drops incomplete batches: no step could ever run
            how = (f"batch_size {cfg.batch_size}"
                   + (f" x {self.dist.world_size} processes" if self.dist.world_size > 1 else "")
                   + (f" x grad_accum {cfg.grad_accum}" if cfg.grad_accum > 1 else ""))
            raise DiffkitError(f"the data set has {len(self.dataset)} {cfg.example_noun}, fewer than one optimiser "
                               f"step takes ({how} = {needed}); lower the batch size")
        self.steps_per_epoch = max(1, len(self.dataset) // self.global_batch // cfg.grad_accum)
        self.total_steps = cfg.max_steps or cfg.epoch * self.steps_per_epoch
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.skipped_steps = 0  # non-finite steps skipped in the whole run
        self.consecutive_skipped = 0
        self.stop_signal: Optional[int] = None  # the stop signal, agreed between ranks in each step
        self.out_dir = Path(cfg.save_weight_dir)
        self.forward = self.model
        if self.dist.enabled:
            self.forward = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            self.forward = torch.compile(self.forward)
        fp16_cuda = cfg.mixed_precision == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if fp16_cuda else None
        if cfg.mixed_precision == "fp16" and self.device.type != "cuda":
            raise DiffkitError("mixed_precision='fp16' needs a CUDA device; use 'bf16' on cpu/mps")
        self.student = None  # the consistency objectives: f_theta around the trained network
        self.target = self.target_model = None  # f_theta- and its network (None: theta- = stopgrad(theta))
        if cfg.objective != "diffusion":
            from .consistency import ConsistencyDenoiser
            from .consistency_curricula import Curriculum
            from .denoiser import Denoiser
            self.curriculum = Curriculum.from_config(cfg, self.schedule, self.total_steps)

            def consistency_function(net):
                return ConsistencyDenoiser(Denoiser(net, self.schedule, cfg.prediction_type, cfg.learned_variance),
                                           cfg.consistency_sigma_data, cfg.consistency_timestep_scaling,
                                           self.curriculum.at(0).grid, cfg.consistency_guidance_range,
                                           cfg.consistency_curriculum)
            self.student = consistency_function(self.forward)
            if self.curriculum.uses_target_network:  # CM's EMA target theta-, starting at theta (CM Alg. 2/3)
                self.target_model = copy.deepcopy(self.model).requires_grad_(False)
                self.target = consistency_function(torch.compile(self.target_model) if cfg.compile
                                                   else self.target_model)

    @property
    def consistency_grid(self) -> torch.Tensor:
        """The consistency grid of the current step (:mod:`diffkit.consistency_curricula`)."""
        return self.curriculum.at(self.step).grid

    @torch.no_grad()
    def update_target(self) -> None:
        """CM's target update after optimiser step k: theta- <- mu(k) theta- + (1 - mu(k)) theta
        (Alg. 2/3; mu(k) of the curriculum, a function of the step only); buffers are copied."""
        mu = self.curriculum.mu(self.step)
        torch._foreach_lerp_(list(self.target_model.parameters()),
                             [p.detach() for p in self.model.parameters()], 1.0 - mu)
        for b_target, b in zip(self.target_model.buffers(), self.model.buffers()):
            b_target.copy_(b)

    def _load_teacher(self):
        """The frozen teacher of consistency distillation (its EMA weights), checked to share the
        student's schedule and prediction type; a fresh run's student starts from its weights (CM
        Sec. 4; LCM Sec. 4.2). With ``consistency_guidance`` w the teacher is guided (LCM eq. 8); with
        ``consistency_guidance_range`` it is guided by each example's own w (``cond["w"]``, LCM Alg. 1),
        and the student's guidance-scale input (``time_embed.cond_proj``) keeps its zero start. A guided
        teacher must have trained its null class (p_uncond > 0: :func:`diffkit.guidance.check_null_trained`)."""
        from .loading import load_denoiser
        cfg = self.cfg
        if not Path(cfg.teacher).exists():
            raise DiffkitError(f"teacher={cfg.teacher!r} does not exist; give the teacher checkpoint's path "
                               f"(teacher=PATH;"
                               f" to resume a distillation: diffkit distill --resume CKPT --set teacher=PATH)")
        teacher = load_denoiser(cfg.teacher, device=self.device)
        from .models.network import check_image_model
        check_image_model(teacher.meta["unet"], "consistency distillation")
        if teacher.meta.get("consistency"):
            raise DiffkitError(f"teacher={cfg.teacher!r} is a consistency model; distil from a diffusion checkpoint")
        if teacher.schedule.betas.shape != self.schedule.betas.shape or not torch.allclose(
                teacher.schedule.betas.double(), self.schedule.betas.double(), rtol=1e-6, atol=1e-12):
            raise DiffkitError(f"teacher={cfg.teacher!r} was trained with another noise schedule than this run's "
                               f"(T={cfg.T}, schedule={cfg.schedule!r}); distil with the teacher's schedule")
        if teacher.prediction_type != cfg.prediction_type:
            raise DiffkitError(f"teacher={cfg.teacher!r} predicts {teacher.prediction_type}, this run has "
                               f"prediction_type={cfg.prediction_type!r}; the student starts from the teacher's "
                               f"weights: "
                               f"use its prediction type")
        check_guided_teacher(cfg, teacher.meta)
        teacher.model.requires_grad_(False)
        self.teacher_digest = ckpt.tensors_digest(teacher.model.state_dict())  # a resume checks it is the same
        if not cfg.training_load_weight:  # a resumed run loads its own weights
            weights = teacher.model.state_dict()
            if cfg.guidance_embedding_dim:  # the w input the teacher lacks starts at zero (the teacher's function)
                weights = {**{k: v for k, v in self.model.state_dict().items() if k.endswith("cond_proj.weight")},
                           **weights}
            ckpt.load_state_dict_checked(self.model, weights, f"teacher {cfg.teacher}")
        if cfg.consistency_guidance or cfg.consistency_guidance_range:
            from .guidance import ClassifierFreeGuidance
            teacher = ClassifierFreeGuidance(teacher, cfg.consistency_guidance,
                                             weight_input=cfg.consistency_guidance_range is not None)
        return teacher

    def _init_weights(self) -> dict:
        """Start the network from ``init_from`` (diffkit train --init-from): the weights sampling uses
        (the EMA ones, a LoRA checkpoint's adapters merged), as diffusers' fine-tuning scripts start
        from a pipeline's published weights; the EMA then starts from them too. Returns what the new
        checkpoints record of the source."""
        from .loading import is_legacy_checkpoint, load_model
        path = self.cfg.init_from
        if is_legacy_checkpoint(path):
            raise DiffkitError(f"init_from={path!r} is a plain state dict; --init-from takes a diffkit checkpoint "
                               f"(diffkit convert makes one)")
        source, meta, _ = load_model(path)
        if meta.get("consistency"):
            raise DiffkitError(f"init_from={path!r} is a consistency model; fine-tune a diffusion checkpoint")
        if meta.get("text") and getattr(self.model, "captions", None) is not None:  # the token embeddings' words
            from .text import check_same_vocabulary
            check_same_vocabulary(meta["text"]["tokenizer"]["words"], self.model.captions, self.cfg.dataset,
                                  f"init_from {path}")
        weights = source.state_dict()
        ckpt.load_state_dict_checked(self.model, weights, f"init_from {path}")
        return {"path": str(path), "step": ckpt.step_of(meta), "sha256": ckpt.tensors_digest(weights)}

    # ------------------------------------------------------------ state
    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update(self.ema.state_tensors(self.model))
        if self.posthoc is not None:
            tensors.update(self.posthoc.state_tensors(self.model))
        opt_tensors, opt_meta = ckpt.optimizer_to_tensors(self.optimizer)
        tensors.update(opt_tensors)
        tensors["schedule.betas"] = self.schedule.betas
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.generator"] = self.generator.get_state()
        if torch.cuda.is_available() and self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        if self.device.type == "mps":  # dropout on mps draws from the mps generator
            tensors["rng.mps"] = torch.mps.get_rng_state()
        for k, v in self.timesteps.state_dict().items():
            tensors[f"timesteps.{k}"] = v
        from . import __version__
        meta = {"config": self.cfg.to_dict(), "step": self.step, "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch, "total_steps": self.total_steps,
                "world_size": self.dist.world_size, "global_batch": self.global_batch,
                "dataset_size": len(self.dataset), "steps_per_epoch": self.steps_per_epoch,
                "data_scale": self.data_scale,
                # of the last step, for information
                "lr": learning_rate(max(self.step - 1, 0), self.total_steps, self.cfg),
                "diffkit_version": __version__, "torch_version": torch.__version__,
                "ema_updates": self.ema.updates, "optimizer": opt_meta, "skipped_steps": self.skipped_steps,
                "consecutive_skipped": self.consecutive_skipped,
                "unet": self.cfg.to_unet_kwargs(self.dataset), "prediction_type": self.cfg.prediction_type,
                "learned_variance": self.cfg.learned_variance,
                "class_names": list(getattr(self.dataset, "class_names", []) or [])}
        if getattr(self.dataset, "scaling", None) is not None:  # a series file: diffkit sample unnormalises with it
            meta["series_scaling"] = {**self.dataset.scaling.meta(), **(self.dataset.source or {})}
        if self.scaler is not None:  # fp16: the loss scale and its growth tracker
            meta["grad_scaler"] = {k: (v.item() if isinstance(v, torch.Tensor) else v)
                                   for k, v in self.scaler.state_dict().items()}
        if self.latent is not None:  # self-contained: the decoder travels with the model
            tensors.update(self.latent.state_tensors())
            meta["latent"] = self.latent.meta()
        if self.cfg.text_conditioning:
            meta["text"] = self.model.text_meta()
        if self.student is not None:  # loading.load_denoiser wraps such a checkpoint in f (diffkit.consistency)
            meta["consistency"] = self._consistency_meta()
        if self.target_model is not None:  # CM's EMA target network theta-: resumes need it
            tensors.update({f"target.{k}": v for k, v in self.target_model.state_dict().items()})
        if self.init_source is not None:  # the checkpoint this run was fine-tuned from
            meta["init_from"] = self.init_source
        if self.cfg.lora_rank:  # diffkit.loading adds the adapters before loading model.*, then merges them
            from .lora import lora_meta
            meta["lora"] = lora_meta(self.cfg.lora_rank, self.cfg.lora_alpha, self.cfg.lora_targets)
        if self.posthoc is not None:
            meta["posthoc_ema"] = self.posthoc.meta()
        return tensors, meta

    def save_posthoc_snapshot(self) -> Optional[Path]:
        """Write ``posthoc/snapshot_<step>.safetensors`` in the checkpoint folder (atomically; rank 0):
        the power-function EMAs (``posthoc.<k>.*``) with what a weights-only checkpoint needs besides
        the averaged weights (buffers, a LoRA run's frozen base, the schedule, the model description),
        for ``diffkit posthoc-ema`` (EDM2 App. C.3). None where post-hoc EMA is off or on rank > 0."""
        if self.posthoc is None:
            return None
        from .loading import without_resume_state
        from .posthoc_ema import SNAPSHOT_KIND
        tensors, meta = without_resume_state(*self.state_tensors())
        tracked = {f"model.{n}" for n, _ in tracked_parameters(self.model, self.posthoc.trainable_only)}
        tensors = {k: v for k, v in tensors.items() if k not in tracked}  # the averages replace them
        tensors.update(self.posthoc.state_tensors(self.model))
        meta.update(kind=SNAPSHOT_KIND, step=self.step, posthoc_ema=self.posthoc.meta())
        return ckpt.save_checkpoint(snapshot_path(self.out_dir, self.step), tensors, meta)

    def finish_distributed(self) -> None:
        """Leave the process group once training is over (every rank; nothing when one process): the trainer
        cannot train again.

        DistributedDataParallel (its reducer holds the gloo group) is released and collected here,
        while the interpreter is whole: the Trainer sits in a reference cycle, so it would otherwise
        be freed during interpreter shutdown, when a gloo thread that takes the GIL aborts the rank
        (exit 134 instead of 0 / 143). Then the group is destroyed."""
        if not self.dist.enabled:
            return
        self.forward = self.model
        self.student = None  # the consistency objectives' f_theta wraps the DDP module too; training is over
        gc.collect()
        distributed.cleanup(self.dist)

    def save(self) -> Path:
        """Write ckpt_<step>.safetensors and latest.safetensors atomically; keep the last K.

        Temp files left by a run killed mid-write are removed first; older checkpoints are
        deleted only after the new one has been read back and its checksum verified.
        Only rank 0 writes; every rank returns the path."""
        path = self.out_dir / f"ckpt_{self.step:08d}.safetensors"
        if not self.dist.is_main:
            return path
        tensors, meta = self.state_tensors()
        tensors = {k: v.detach().cpu() for k, v in tensors.items()}  # one copy off the device for both files
        bad = [k for k, v in tensors.items() if k.startswith(("model.", "ema.", "target."))
               and v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            latest = ckpt.latest_checkpoint(self.out_dir)
            kept = f"the last good checkpoint {latest} is kept" if latest else "no checkpoint was written"
            raise DiffkitError(f"non-finite model weights at step {self.step} ({bad[0]}); not saved; {kept}; "
                               f"lower lr or set grad_clip")
        ckpt.remove_stale_temp_files(self.out_dir)
        path = ckpt.save_checkpoint(path, tensors, meta)
        ckpt.save_checkpoint(self.out_dir / "latest.safetensors", tensors, meta)
        ckpt.load_checkpoint(path)  # verify before pruning: raises if what is on disk is not what was written
        # the last keep_last checkpoints up to this step (the one just written among them); those of
        # later steps belong to another run (a fresh run or an earlier resume in this folder) and stay
        earlier = [p for p in ckpt.step_checkpoints(self.out_dir) if checkpoint_step(p) <= self.step]
        for p in earlier[:-self.cfg.keep_last]:
            p.unlink(missing_ok=True)
        return path

    def load(self, path) -> None:
        """Resume exactly from a checkpoint written by :meth:`save`."""
        tensors, meta = ckpt.load_checkpoint(path)
        if "step" not in meta:
            raise DiffkitError(f"{path} is not a training checkpoint (no step); it cannot be resumed")
        if meta.get("dataset_size", len(self.dataset)) != len(self.dataset):
            raise DiffkitError(f"{path} was trained on a data set of {meta['dataset_size']} {self.cfg.example_noun} "
                               f"but this one has "
                               f"{len(self.dataset)}; resume with the same data set")
        saved, current = meta.get("series_scaling") or {}, getattr(self.dataset, "source", None) or {}
        if saved.get("sha256") and current.get("sha256") and saved["sha256"] != current["sha256"]:
            raise DiffkitError(f"{path} was trained on another version of {current['file']} (its SHA-256 differs); "
                               f"resume with the same file, or start a new run")
        check_same_global_batch(path, meta, self.cfg.batch_size, self.dist.world_size, self.cfg.grad_accum)
        check_same_objective_and_size(path, tensors, meta, self.schedule, self.cfg,
                                      self.cfg.to_unet_kwargs(self.dataset))
        saved_objective = (meta.get("config") or {}).get("objective", "diffusion")
        if saved_objective != self.cfg.objective:
            raise DiffkitError(f"{path} was trained with objective={saved_objective!r}, this run has "
                               f"{self.cfg.objective!r}; an exact resume needs the same objective (to distil a "
                               f"diffusion checkpoint: diffkit distill --teacher {path})")
        if self.student is not None:
            self._check_same_consistency(path, meta)
        saved_ae = (meta.get("latent") or {}).get("sha256")
        if self.latent is not None and saved_ae and saved_ae != self.latent.sha256:
            raise DiffkitError(f"{path} was trained on the latents of another autoencoder file than "
                               f"{self.cfg.autoencoder} (sha256 differs); resume with the same autoencoder")
        ckpt.load_state_dict_checked(self.model, ckpt.split_prefix(tensors, "model"), str(path))
        if self.target_model is not None:
            ckpt.load_state_dict_checked(self.target_model, ckpt.split_prefix(tensors, "target"), f"{path} (target)")
        self.ema.load(self.model, tensors)
        self.ema.updates = meta["ema_updates"]
        check_posthoc_resume(meta.get("posthoc_ema"), self.cfg.posthoc_ema, path)  # every rank: none waits on rank 0
        if self.posthoc is not None:
            self.posthoc.load(self.model, tensors, meta.get("posthoc_ema"), path)
        self.init_source = meta.get("init_from")
        ckpt.optimizer_from_tensors(self.optimizer, tensors, meta["optimizer"])
        if self.scaler is not None and meta.get("grad_scaler"):
            self.scaler.load_state_dict(meta["grad_scaler"])
        torch.set_rng_state(tensors["rng.torch"])
        self.generator.set_state(tensors["rng.generator"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        if "rng.mps" in tensors and self.device.type == "mps":
            torch.mps.set_rng_state(tensors["rng.mps"])
        ts_state = ckpt.split_prefix(tensors, "timesteps")
        if ts_state:
            self.timesteps.load_state_dict(ts_state)
        self.step, self.epoch, self.batch_in_epoch = meta["step"], meta["epoch"], meta["batch_in_epoch"]
        self.skipped_steps = meta.get("skipped_steps", 0)
        self.consecutive_skipped = meta.get("consecutive_skipped", 0)
        self.resume_changes = resume_changes(meta, self.cfg)

    # ------------------------------------------------------------ one step
    def _check_same_consistency(self, path, meta: dict) -> None:
        """A resumed consistency run keeps the function its weights stand for and what it learns
        from: the boundary parameterisation, grid (or curriculum, its s0 and s1) and target decay,
        distance and guidance, and the teacher's weights (by digest: a teacher path such as
        latest.safetensors may have moved on)."""
        saved, now = meta.get("consistency") or {}, self._consistency_meta()
        saved = {"curriculum": "fixed", "target_ema": 0.0, "s0": None, "s1": None, **saved}  # older checkpoints
        for key, field in (("curriculum", "consistency_curriculum"), ("target_ema", "consistency_target_ema"),
                           ("s0", "consistency_s0"), ("s1", "consistency_s1"),
                           ("sigma_data", "consistency_sigma_data"),
                           ("timestep_scaling", "consistency_timestep_scaling"),
                           ("grid", "consistency_skip"), ("distance", "consistency_distance"),
                           ("guidance", "consistency_guidance"), ("guidance_range", "consistency_guidance_range")):
            if key == "grid" and now["curriculum"] != "fixed":  # a function of the step: s0, s1 and K decide it
                continue
            if key in saved and saved[key] != now[key]:
                was, has = (saved[key], now[key]) if key != "grid" else (saved.get("skip"), now["skip"])
                if key == "grid" and was == has:  # the same skip name, another grid (written by another version)
                    was, has = f"a grid of {len(saved[key])} times", f"{len(now[key])}"
                why = ("the weights stand for that function" if key in ("sigma_data", "timestep_scaling", "grid")
                       else "it decides what the run learns from")
                raise DiffkitError(f"{path} was trained with {field}={was!r}, this run has {has!r}; an exact resume "
                                   f"needs the same {field} ({why})")
        saved_k = saved.get("total_steps", meta.get("total_steps"))  # (the run's own K, for earlier checkpoints)
        if now["curriculum"] != "fixed" and saved_k not in (None, now["total_steps"]):
            raise DiffkitError(f"{path} follows consistency_curriculum={now['curriculum']!r} over K={saved_k} steps, "
                               f"this run has K={now['total_steps']}; N(k) and mu(k) depend on K: resume with the "
                               f"same total steps (--steps {saved_k})")
        old, new = saved.get("teacher_sha256"), getattr(self, "teacher_digest", None)
        if old and new and old != new:
            raise DiffkitError(f"the teacher {self.cfg.teacher} is not the one {path} was distilled from (its weights "
                               f"changed since: sha256 differs); resume with that teacher: --set teacher=PATH")

    def _consistency_meta(self) -> dict:
        """The ``consistency`` entry of this run's checkpoint metadata."""
        return {"objective": self.cfg.objective, "teacher": self.cfg.teacher,
                "teacher_sha256": getattr(self, "teacher_digest", None),
                "sigma_data": self.cfg.consistency_sigma_data,
                "timestep_scaling": self.cfg.consistency_timestep_scaling,
                "skip": self.cfg.consistency_skip,
                # the grid of the last step trained (a curriculum's grid changes with the step)
                "grid": [int(t) for t in self.curriculum.at(max(self.step - 1, 0)).grid.tolist()],
                "distance": self.cfg.consistency_distance,
                "guidance": self.cfg.consistency_guidance,
                "guidance_range": self.cfg.consistency_guidance_range, **self.curriculum.meta()}

    def _micro_batch_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of this rank's shard of a global micro-batch. Timesteps, noise and label dropout
        are drawn for the whole global batch from the shared generator, then sharded, so every
        world size sees the same randomness."""
        cfg, info = self.cfg, self.dist
        b = images.shape[0]
        if self.student is not None:  # consistency: a pair (t_n, t_{n+1}) of the step's grid per sample
            plan = self.curriculum.at(self.step)
            t, weights = plan.draw(b, self.generator)
        else:
            t, weights = self.timesteps.sample(b, self.generator)
        noise = torch.randn(images.shape, generator=self.generator)
        if cfg.offset_noise > 0:  # offset noise (Guttenberg 2023): a per-channel constant shift
            noise = noise + cfg.offset_noise * torch.randn(b, images.shape[1], *([1] * (images.ndim - 2)),
                                                           generator=self.generator)
        xi = None
        if cfg.input_perturbation > 0:  # Ning et al. 2023, Alg. 1: x_t from eps + gamma xi, xi ~ N(0, I) fresh
            xi = torch.randn(images.shape, generator=self.generator)
        dropping = cfg.conditional or cfg.text_conditioning
        drop = torch.rand(b, generator=self.generator) < cfg.p_uncond if dropping else None
        tokens = None
        if cfg.text_conditioning:  # a random caption per sample, "" where dropped (one shared generator)
            tokens = self.model.caption_tokens(labels, torch.rand(b, generator=self.generator), drop)
        guidance_w = None
        if cfg.consistency_guidance_range:  # LCM Alg. 1: w ~ U[w_min, w_max] per example (seed convention)
            w_min, w_max = cfg.consistency_guidance_range
            guidance_w = w_min + (w_max - w_min) * torch.rand(b, generator=self.generator, dtype=torch.float64)
        augmentation = None
        if cfg.super_res_noise:  # conditioning augmentation: a level 0..K and the noise of each low-res image
            low = cfg.super_res_from
            augmentation = (torch.randint(0, cfg.super_res_noise + 1, (b,), generator=self.generator),
                            torch.randn(b, images.shape[1], low, low, generator=self.generator))
            augmentation = tuple(distributed.shard(v, info) for v in augmentation)
        images, labels, t, weights, noise = (distributed.shard(v, info) for v in (images, labels, t, weights, noise))
        x0 = images.to(self.device, non_blocking=True)
        noise = noise.to(self.device)
        input_noise = None
        if xi is not None:  # the target stays noise (with its offset, as diffusers' train_text_to_image.py)
            input_noise = noise + cfg.input_perturbation * distributed.shard(xi, info).to(self.device)
        cond = {}
        if cfg.conditional:
            y = labels.to(self.device).long()
            null = self.model.config.num_classes
            cond["y"] = torch.where(distributed.shard(drop, info).to(self.device), torch.full_like(y, null), y)
        if tokens is not None:
            cond["tokens"] = distributed.shard(tokens, info).to(self.device)
        if guidance_w is not None:  # to the guided teacher and the student alike
            cond["w"] = distributed.shard(guidance_w, info).float().to(self.device)
        if cfg.super_res_from is not None:  # the upscaler's input: x_0 area-downsampled (diffkit.super_res)
            from .super_res import downsample
            cond["low_res"] = downsample(x0, cfg.super_res_from)
            if augmentation is not None:
                from .super_res import augment
                levels, low_noise = augmentation
                cond["low_res"] = augment(cond["low_res"], levels, self.schedule, low_noise.to(self.device))
                cond["noise_level"] = levels.to(self.device)
        if self.student is not None:
            from .consistency import consistency_loss
            with autocast(cfg.mixed_precision, self.device.type):
                loss = consistency_loss(self.student, x0, noise, plan.grid[t + 1], plan.grid[t], teacher=self.teacher,
                                        target=self.target, distance_kind=cfg.consistency_distance, cond=cond)
            return (loss * weights.to(loss.device)).mean()
        if cfg.prediction_type == "flow_prediction":  # t: flow times s in [0, 1]
            with autocast(cfg.mixed_precision, self.device.type):
                out = flow_matching_losses(self.forward, x0, t, noise, cfg.T, cond=cond)
            return (out.loss * weights.to(out.loss.device)).mean()
        if cfg.prediction_type == "edm":  # t: EDM's sigma > 0
            with autocast(cfg.mixed_precision, self.device.type):
                out = edm_losses(self.forward, x0, t, noise, cfg.edm_sigma_data, cond=cond)
            return (out.loss * weights.to(out.loss.device)).mean()
        with autocast(cfg.mixed_precision, self.device.type):
            out = training_losses(self.forward, self.schedule, x0, t, noise, prediction_type=cfg.prediction_type,
                                  loss_type=cfg.loss, learned_variance=cfg.learned_variance,
                                  fixed_variance=cfg.fixed_variance, hybrid_lambda=cfg.hybrid_lambda,
                                  min_snr_gamma=cfg.min_snr_gamma, p2_gamma=cfg.p2_gamma, p2_k=cfg.p2_k,
                                  input_noise=input_noise, cond=cond)
        if cfg.timestep_sampler != "uniform":  # every rank keeps the same loss history
            all_t = distributed.all_gather_cat(t.to(self.device), info).cpu()
            all_loss = distributed.all_gather_cat(out.loss.detach().float(), info).cpu()
            if torch.isfinite(all_loss).all():  # a non-finite loss must not enter the history
                self.timesteps.update(all_t, all_loss)
        return (out.loss * weights.to(out.loss.device)).mean()

    def train_step(self, micro_batches) -> Optional[float]:
        """One optimiser step over ``grad_accum`` micro-batches; None if skipped (non-finite)."""
        if self.dist.rank > 0:  # its own dropout masks, a function of (seed, rank, step): see rank_step_seed
            torch.manual_seed(rank_step_seed(self.cfg.seed, self.dist.rank, self.step))
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, self.total_steps, self.cfg)
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for images, labels in micro_batches:
            loss = self._micro_batch_loss(images, labels) / len(micro_batches)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
            total = total + loss.detach().float()  # no host sync between micro-batches (float32: mps has no float64)
        total = float(total)
        if self.dist.enabled:  # the global batch's loss (not rank 0's shard), and one stop decision for all
            total, self.stop_signal = self._agree(total, self.stop_signal)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.tensor(0.0)
        finite = math.isfinite(total) and bool(torch.isfinite(grad_norm))  # one host sync, needed anyway
        # clip_grad_norm_ (Pascanu et al. 2013) scales by min(1, max / (norm + 1e-6)); the scaling
        # pass is skipped where that factor is 1 (7 ms of a seed-network step on the CPU)
        if finite and self.cfg.grad_clip and self.cfg.grad_clip < float(grad_norm) + 1e-6:
            torch.nn.utils.clip_grads_with_norm_(params, self.cfg.grad_clip, grad_norm)
        if not finite:
            if self.scaler is not None:  # fp16 overflow: the scaler skips the step and lowers its scale
                self.scaler.step(self.optimizer)
                self.scaler.update()
                return None
            self.skipped_steps += 1
            self.consecutive_skipped += 1
            self.optimizer.zero_grad(set_to_none=True)
            if self.consecutive_skipped >= self.max_nonfinite_steps:
                latest = ckpt.latest_checkpoint(self.out_dir)
                kept = f"the last good checkpoint {latest} is kept" if latest else "no checkpoint was written yet"
                raise DiffkitError(f"non-finite loss or gradient at step {self.step + 1}: {self.consecutive_skipped} "
                                   f"steps in a row were skipped ({self.skipped_steps} in all); training stopped; "
                                   f"{kept}; lower lr, set grad_clip or check the data")
            return None
        self.consecutive_skipped = 0
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.ema.update(self.model)
        if self.posthoc is not None:
            self.posthoc.update(self.model)
        if self.target_model is not None:
            self.update_target()
        return total

    def _agree(self, loss: float, signum: Optional[int]) -> tuple[float, Optional[int]]:
        """Every rank's (mean loss over the ranks, the largest stop signal any rank received): with
        these every rank skips the same non-finite steps and stops at the same step, whichever rank
        the signal reached (one all-gather of two numbers per step)."""
        mine = torch.tensor([[loss, float(signum or 0)]], dtype=torch.float64, device=self.device)
        every = distributed.all_gather_cat(mine, self.dist).cpu()
        return float(every[:, 0].mean()), (int(every[:, 1].max()) or None)

    # ------------------------------------------------------------ the run
    def _epoch_batches(self, epoch: int):
        loader = make_loader(self.dataset, self.global_batch, shuffle=True, seed=self.cfg.seed * 100003 + epoch,
                             num_workers=self.cfg.num_workers, drop_last=True, device=self.device)
        it = iter(loader)
        while True:
            group = []
            for _ in range(self.cfg.grad_accum):
                try:
                    group.append(next(it))
                except StopIteration:
                    return
            yield group

    def run(self, stop_at: Optional[int] = None) -> TrainResult:
        """Train to ``total_steps``; checkpoint every ``save_every_epochs`` epochs and at the end.

        ``stop_at`` ends the run early at that step (with a checkpoint), exactly as an
        interruption would: the schedule still spans ``total_steps``, so a resumed run continues
        as if never stopped."""
        cfg = self.cfg
        if cfg.training_load_weight:
            self.load(cfg.training_load_weight)
            if self.step >= self.total_steps:
                more = ("its consistency curriculum ends there (N(k), mu(k) depend on K): start a new run to train "
                        "longer" if cfg.consistency_curriculum != "fixed" else f"give more steps (--steps above "
                        f"{self.step})")
                raise DiffkitError(f"{cfg.training_load_weight} is at step {self.step}, and this run ends at step "
                                   f"{self.total_steps}: nothing to train; {more}")
            changed = "; changed: " + ", ".join(self.resume_changes) if self.resume_changes else ""
            self.log(f"resumed from {cfg.training_load_weight} at step {self.step}{changed}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        later = [p.name for p in ckpt.step_checkpoints(self.out_dir) if checkpoint_step(p) > self.step]
        if later:
            self.log(f"note: {self.out_dir} holds checkpoints past step {self.step} from another run "
                     f"({', '.join(later[:3])}{', ...' if len(later) > 3 else ''}); they are kept, and replaced "
                     f"if this run reaches the same step")
        later = [s for s in snapshot_steps(self.out_dir / SNAPSHOT_FOLDER) if s > self.step] if self.posthoc else []
        if later:  # diffkit posthoc-ema would combine them with this run's: they average another trajectory
            self.log(f"note: {self.out_dir / SNAPSHOT_FOLDER} holds post-hoc EMA snapshots past step {self.step} from "
                     f"before this resume (steps {', '.join(map(str, later[:3]))}{', ...' if len(later) > 3 else ''}); "
                     f"this run replaces those at its own snapshot steps; move the others out if this resume "
                     f"changed the training, else diffkit posthoc-ema combines them with this run's")
        log_path = self.out_dir / "train_log.csv"
        train_log = _TrainLog(log_path, self.step, self.dist.is_main)
        self.model.train()
        if self.target_model is not None:  # the student's dropout, drawing the student's masks (consistency_loss)
            self.target_model.train()
        start, images_seen, last_loss = time.perf_counter(), 0, float("nan")
        bar = tqdm(total=self.total_steps, initial=self.step, desc="training", disable=not self.progress,
                   dynamic_ncols=True)
        smoothed = None
        try:
            with _SignalGuard() as guard:
                while self.step < min(self.total_steps, stop_at or self.total_steps):
                    for i, group in enumerate(self._epoch_batches(self.epoch)):
                        if i < self.batch_in_epoch:
                            continue  # exact resume: skip what this epoch already consumed
                        self.stop_signal = guard.requested
                        loss = self.train_step(group)
                        # one process: a signal at any time; several: the signal the ranks agreed on in
                        # the step (a later one is agreed on in the next), so that all stop together
                        requested = self.stop_signal if self.dist.enabled else guard.requested
                        self.step += 1
                        self.batch_in_epoch = i + 1
                        images_seen += sum(len(b[0]) for b in group)
                        if loss is not None:
                            last_loss = loss
                            smoothed = loss if smoothed is None else 0.98 * smoothed + 0.02 * loss
                        rate = images_seen / max(1e-9, time.perf_counter() - start)
                        bar.update(1)
                        bar.set_postfix(loss=f"{smoothed:.4f}" if smoothed is not None else "nan",
                                        img_s=f"{rate:.0f}")
                        if self.posthoc is not None and (self.step % cfg.posthoc_ema_every == 0
                                                         or self.step == self.total_steps):
                            self.save_posthoc_snapshot()
                        if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                            train_log.write([self.step, self.epoch, f"{last_loss:.6f}",
                                             f"{self.optimizer.param_groups[0]['lr']:.3e}", f"{rate:.1f}"])
                        if requested is not None:
                            self.save()
                            # every rank waits for rank 0's checkpoint, as a finished run does: a rank that
                            # left at once could exit with gloo work in flight and abort (exit 134, not 143)
                            distributed.barrier(self.dist)
                            bar.close()
                            if self.step >= self.total_steps and self.dist.is_main:  # the run is complete
                                train_log.close()
                                plot_loss_curve(log_path, self.out_dir / "loss_curve.png")
                            raise TrainingInterrupted(requested, self.out_dir / "latest.safetensors", self.step)
                        if self.step >= min(self.total_steps, stop_at or self.total_steps):
                            break
                    else:  # the epoch ran to its end
                        self.epoch += 1
                        self.batch_in_epoch = 0
                        if (self.epoch % cfg.save_every_epochs == 0 and self.step < self.total_steps
                                and not self.consecutive_skipped):  # never replace a good checkpoint mid-NaN-streak
                            self.save()
        finally:
            bar.close()
            train_log.close()
        path = self.save()
        seconds = time.perf_counter() - start
        if self.dist.is_main:
            plot_loss_curve(log_path, self.out_dir / "loss_curve.png")
        distributed.barrier(self.dist)
        return TrainResult(checkpoint=path, steps=self.step, final_loss=last_loss, seconds=seconds,
                           images_per_second=images_seen / max(seconds, 1e-9))


def plot_loss_curve(csv_path: Path, png_path: Path) -> Optional[Path]:
    """A PNG of loss against step from the training log (matplotlib, headless)."""
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [int(r["step"]) for r in rows]
    losses = [float(r["loss"]) for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.plot(steps, losses)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if any(loss > 0 for loss in losses):  # a log axis needs a positive value (a distillation's first loss is 0)
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return ckpt.atomic_write_bytes(png_path, buf.getvalue())
