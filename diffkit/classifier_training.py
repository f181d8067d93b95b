"""Training the noisy-image classifier p_phi(y | x_t) for classifier guidance.

Dhariwal & Nichol 2021, Sec. 4.1: the classifier is trained on noisy samples x_t ~ q(x_t | x_0)
of the same forward process as the diffusion model (t uniform over 0..T-1, DDPM eq. 4), with
cross-entropy on the clean image's label. Its gradient grad_x log p_phi(y | x_t) is what
:mod:`diffkit.guidance` adds to the diffusion model.

A classifier checkpoint is a diffkit checkpoint (:mod:`diffkit.checkpoint`: safetensors, atomic,
checksummed) with tensors ``model.*`` and ``schedule.betas`` and metadata ``kind="classifier"``,
``classifier`` (the :class:`~diffkit.models.classifier.ClassifierConfig`), ``num_classes``,
``class_names``, ``dataset`` and the training settings.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .config import resolve_device
from .data import DATASET_IMG_SIZE, load_dataset
from .diffusion import q_sample
from .errors import DiffkitError, check_range, first_line
from .models.classifier import ClassifierConfig, EncoderClassifier
from .models.layers import to_device
from .schedule import NoiseSchedule

KIND = "classifier"


@dataclass
class ClassifierTrainConfig:
    """What :func:`train_classifier` trains and how.

    Data: ``dataset``, ``data_dir``, ``img_size`` (None: the set's native size), ``in_channels``
    (1 or 3 converts the images to grey or RGB, as the diffusion model's ``in_channels``; None:
    the set's own).
    Trunk (:class:`~diffkit.models.classifier.ClassifierConfig` names): ``channel``,
    ``channel_mult``, ``attn``, ``num_res_blocks``, ``dropout``, ``num_heads``, ``scale_shift_norm``
    (ADM's AdaGN, on by default: with plain additive embeddings, a GroupNorm of one channel per
    group, as at 32 channels, erases the timestep embedding).
    Optimisation: AdamW with ``lr`` and ``weight_decay`` (ADM's classifier used 3e-4 / 0.05),
    linear warm-up over the first 5% of ``steps`` then cosine decay, ``batch_size``, ``grad_clip``.
    """

    dataset: str = "digits"
    data_dir: Optional[str] = None
    img_size: Optional[int] = None
    in_channels: Optional[int] = None
    channel: int = 32
    channel_mult: Sequence[int] = field(default_factory=lambda: [1, 2, 2])
    attn: Sequence[int] = field(default_factory=lambda: [1])
    num_res_blocks: int = 1
    dropout: float = 0.0
    num_heads: int = 1
    scale_shift_norm: bool = True
    steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    log_every: int = 50

    def __post_init__(self):
        from .data import check_data_dir_applies, check_image_dataset
        check_image_dataset(self.dataset, "the noisy classifier")
        check_data_dir_applies(self.dataset, self.data_dir)
        check_range("steps", self.steps, 1, None, integer=True)
        check_range("batch_size", self.batch_size, 1, None, integer=True)
        check_range("lr", self.lr, 0.0, 1.0, low_inclusive=False)  # larger rates only diverge (to NaN)
        check_range("weight_decay", self.weight_decay, 0.0, None)
        check_range("log_every", self.log_every, 1, None, integer=True)
        # the trunk settings are checked now, before any data is read (the data set fixes only
        # img_size when it is None, in_channels and num_classes)
        if self.in_channels not in (None, 1, 3):
            raise DiffkitError(f"in_channels={self.in_channels!r} is not allowed; choose 1 (grey) or 3 (RGB)")
        levels = len(self.channel_mult) if isinstance(self.channel_mult, (list, tuple)) else 1
        self._trunk(self.img_size or DATASET_IMG_SIZE.get(self.dataset) or 2 ** max(levels - 1, 0), in_channels=1,
                    num_classes=2)

    def _trunk(self, img_size: int, in_channels: int, num_classes: int) -> ClassifierConfig:
        return ClassifierConfig(channel=self.channel, channel_mult=list(self.channel_mult), attn=list(self.attn),
                                num_res_blocks=self.num_res_blocks, dropout=self.dropout, img_size=img_size,
                                in_channels=in_channels, num_heads=self.num_heads,
                                scale_shift_norm=self.scale_shift_norm, num_classes=num_classes)

    def classifier_config(self, dataset) -> ClassifierConfig:
        return self._trunk(dataset.img_size, dataset.channels, dataset.num_classes)


def learning_rate(step: int, cfg: ClassifierTrainConfig) -> float:
    """Linear warm-up over the first 5% of the steps, then cosine decay to 0."""
    warmup = max(1, int(0.05 * cfg.steps))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def noisy_batch(schedule: NoiseSchedule, x0: torch.Tensor, generator: torch.Generator,
                t: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, t): t uniform over 0..T-1 (unless given) and x_t ~ q(x_t | x_0) (DDPM eq. 4)."""
    b = x0.shape[0]
    if t is None:
        t = torch.randint(0, schedule.num_timesteps, (b,), generator=generator).to(torch.float64)
    noise = torch.randn(x0.shape, generator=generator).to(device=x0.device, dtype=x0.dtype)
    return q_sample(schedule, x0, t, noise), t.to(device=x0.device, dtype=torch.float32)


def _images(dataset, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] and labels for ``index`` (fast path for in-memory uint8 sets)."""
    if hasattr(dataset, "images") and dataset.images.dtype == torch.uint8 and not getattr(dataset, "hflip", False):
        return dataset.images[index].to(torch.float32) / 127.5 - 1.0, dataset.labels[index]
    items = [dataset[int(i)] for i in index]
    return torch.stack([im for im, _ in items]), torch.tensor([lab for _, lab in items])


@dataclass
class ClassifierTrainResult:
    model: EncoderClassifier
    checkpoint: Optional[Path]
    final_loss: float
    final_accuracy: float
    seconds: float
    heldout_accuracy: dict = field(default_factory=dict)  # {t: accuracy on held-out images at t}


HELDOUT_IMAGES = 1000


def heldout_times(num_timesteps: int) -> list[int]:
    """The noise levels of the held-out report: t = 0, T/4, T/2, 3T/4 (ADM's classifier logs its
    validation accuracy by quarter of t)."""
    return sorted({0, num_timesteps // 4, num_timesteps // 2, 3 * num_timesteps // 4})


def train_classifier(cfg: ClassifierTrainConfig, schedule: NoiseSchedule, dataset=None, *,
                     out: Optional[str | Path] = None, progress: bool = True,
                     log: Callable[[str], None] = print, heldout=None) -> ClassifierTrainResult:
    """Train an :class:`EncoderClassifier` on noisy x_t of ``schedule`` with cross-entropy.

    Reported loss/accuracy are running averages (0.98 smoothing) over noisy training batches,
    so they mix all noise levels. With ``heldout`` (a data set of other images, e.g. the test
    split) the trained classifier's accuracy on its first ``HELDOUT_IMAGES`` images is measured at
    each of :func:`heldout_times` and recorded in the checkpoint (``heldout_accuracy``). Writes a
    checkpoint to ``out`` when given."""
    device = resolve_device(cfg.device)
    if dataset is None:
        dataset = load_dataset(cfg.dataset, cfg.data_dir, cfg.img_size, train=True, channels=cfg.in_channels)
    if len(dataset) < 1:
        raise DiffkitError("the data set is empty")
    if getattr(dataset, "num_classes", 0) < 2:
        raise DiffkitError(f"a classifier needs a labelled data set with >= 2 classes; "
                           f"{cfg.dataset} has {getattr(dataset, 'num_classes', 0)}")
    torch.manual_seed(cfg.seed)
    model = to_device(EncoderClassifier(cfg.classifier_config(dataset)), device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    model.train()
    start, smooth_loss, smooth_acc = time.perf_counter(), None, None
    order, pos = torch.randperm(len(dataset), generator=generator), 0
    bar = tqdm(range(cfg.steps), desc="classifier", disable=not progress, dynamic_ncols=True)
    for step in bar:
        if pos + cfg.batch_size > len(order):
            order, pos = torch.randperm(len(dataset), generator=generator), 0
        index = order[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        x0, labels = _images(dataset, index)
        x_t, t = noisy_batch(schedule, x0.to(device), generator)
        logits = model(x_t, t)
        loss = F.cross_entropy(logits, labels.to(device))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        loss_value, acc = torch.stack([loss.detach().float(), (logits.detach().argmax(1) == labels.to(logits.device))
                                       .float().mean()]).tolist()  # one host sync per step
        smooth_loss = loss_value if smooth_loss is None else 0.98 * smooth_loss + 0.02 * loss_value
        smooth_acc = acc if smooth_acc is None else 0.98 * smooth_acc + 0.02 * acc
        bar.set_postfix(loss=f"{smooth_loss:.3f}", acc=f"{smooth_acc:.3f}")
        if (step + 1) % cfg.log_every == 0 and not progress:
            log(f"step {step + 1}/{cfg.steps}: loss {smooth_loss:.4f}, noisy accuracy {smooth_acc:.3f}")
    bar.close()
    model.eval()
    heldout_accuracy = {}
    if heldout is not None and len(heldout):
        images, labels = _images(heldout, torch.arange(min(len(heldout), HELDOUT_IMAGES)))
        heldout_accuracy = {t: noisy_accuracy(model, schedule, images, labels, t, seed=cfg.seed)
                            for t in heldout_times(schedule.num_timesteps)}
    path = None
    if out is not None:
        meta = {"dataset": cfg.dataset, "img_size": dataset.img_size, "train": asdict(cfg), "step": cfg.steps,
                "class_names": list(getattr(dataset, "class_names", []) or []),
                "heldout_accuracy": {str(t): a for t, a in heldout_accuracy.items()}}
        path = save_classifier(out, model, schedule, meta)
    return ClassifierTrainResult(model, path, float(smooth_loss), float(smooth_acc), time.perf_counter() - start,
                                 heldout_accuracy)


def save_classifier(path: str | Path, model: EncoderClassifier, schedule: NoiseSchedule,
                    meta: Optional[dict] = None) -> Path:
    """Write the classifier, its schedule and config atomically (see the module docstring)."""
    config = asdict(model.config)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors["schedule.betas"] = schedule.betas
    metadata = {**(meta or {}), "kind": KIND, "classifier": config, "num_classes": model.config.num_classes}
    return ckpt.save_checkpoint(path, tensors, metadata)


def load_classifier(path: str | Path, device="cpu") -> tuple[EncoderClassifier, dict, NoiseSchedule]:
    """(classifier in eval mode, metadata, schedule it was trained with) from a checkpoint."""
    tensors, meta = ckpt.load_checkpoint(path)
    if meta.get("kind") != KIND or "classifier" not in meta:
        raise DiffkitError(f"{path} is not a classifier checkpoint; train one with 'diffkit train-classifier'")
    if "schedule.betas" not in tensors:
        raise DiffkitError(f"{path} holds no noise schedule (schedule.betas); train it again with "
                           f"'diffkit train-classifier'")
    try:
        model = EncoderClassifier(ClassifierConfig(**meta["classifier"]))
    except (TypeError, DiffkitError) as err:
        raise DiffkitError(f"{path} has a classifier config this diffkit does not know "
                           f"({first_line(err, 160)})") from None
    ckpt.load_state_dict_checked(model, ckpt.split_prefix(tensors, "model"), f"classifier checkpoint {path}")
    model.requires_grad_(False)
    return to_device(model, device).eval(), meta, NoiseSchedule(tensors["schedule.betas"])


@torch.no_grad()
def noisy_accuracy(model, schedule: NoiseSchedule, images: torch.Tensor, labels: torch.Tensor, t: int,
                   batch_size: int = 500, seed: int = 0) -> float:
    """Accuracy of ``model`` on q(x_t | x_0) of ``images`` at one time ``t`` (a diagnostic)."""
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        x0 = images[start:start + batch_size].to(device)
        x_t, tt = noisy_batch(schedule, x0, generator, torch.full((x0.shape[0],), float(t), dtype=torch.float64))
        correct += (model(x_t, tt).argmax(1).cpu() == labels[start:start + batch_size]).sum().item()
    return correct / images.shape[0]
