"""TS2Vec: the multivariate-time-series encoder that Context-FID uses in place of Inception.

Yue et al. 2022, "TS2Vec: Towards Universal Representation of Time Series" (AAAI), Sec. 3.2-3.4:

* input projection: a linear map of each timestamp's C values to ``hidden_dims`` (Sec. 3.2);
* timestamp masking: during training each timestamp's latent vector is zeroed with probability
  1/2 (a Bernoulli mask per series and timestamp; Sec. 3.2);
* a dilated-convolution encoder: ``depth + 1`` residual blocks, block i holding two GELU-then-conv
  layers of kernel 3 and dilation 2^i with "same" padding (Sec. 3.2), a 1x1 projection on the skip
  path where the width changes and on the last block, then dropout 0.1 on the output;
* random cropping: two overlapping windows [a1, b1] and [a2, b2] with 0 <= a1 <= a2 <= b1 <= b2 <= T
  of each series; only the overlap [a2, b1] is contrasted (Sec. 3.3, contextual consistency);
* the hierarchical contrastive loss (Sec. 3.4, Alg. 1): the dual loss of eq. (3), the temporal term eq. (1)
  plus the instance term eq. (2), at the full time resolution and again after each max-pooling of
  both views by 2 along time, averaged over the levels.

Details of the authors' code (github.com/zhihanyue/ts2vec) that the paper leaves open are
followed and named where they apply: each term averages both views as anchors, the two terms
weigh ``alpha = 0.5`` and ``1 - alpha``, training uses AdamW (lr 1e-3), batches of 8 and 200
iterations where the data hold at most 100,000 values (N C L), else 600, series that are all NaN are
dropped, and the encoder used afterwards is the running equal-weight average of the initial weights
and the training iterates (``torch.optim.swa_utils.AveragedModel``).

Series enter in diffkit's layout ``(N, C, L)`` (channels, then time), like a 1-D image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DiffkitError, check_range
from ..noise import fork_device_rng


@dataclass(frozen=True)
class TS2VecConfig:
    """Widths of a :class:`TS2VecEncoder` (the authors' defaults: 64 hidden, 320 out, depth 10)."""

    input_dims: int
    hidden_dims: int = 64
    output_dims: int = 320
    depth: int = 10
    kernel_size: int = 3
    mask_keep: float = 0.5   # probability that a timestamp is kept by the training mask
    dropout: float = 0.1


class _DilatedBlock(nn.Module):
    """x + conv2(gelu(conv1(gelu(x)))), both convs of dilation ``dilation`` and "same" length."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int, final: bool):
        super().__init__()
        span = (kernel_size - 1) * dilation + 1
        self.trim = 1 if span % 2 == 0 else 0  # an even span pads one step too many on the right
        self.conv1 = nn.Conv1d(in_channels, out_channels, kernel_size, padding=span // 2, dilation=dilation)
        self.conv2 = nn.Conv1d(out_channels, out_channels, kernel_size, padding=span // 2, dilation=dilation)
        self.skip = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels or final else None

    def _same(self, conv: nn.Conv1d, x: Tensor) -> Tensor:
        out = conv(x)
        return out[:, :, :-self.trim] if self.trim else out

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.skip is None else self.skip(x)
        return self._same(self.conv2, F.gelu(self._same(self.conv1, F.gelu(x)))) + residual


class TS2VecEncoder(nn.Module):
    """Timestamp-level representations ``(N, L, output_dims)`` of series ``(N, C, L)`` (TS2Vec Sec. 3.2).

    In training mode the timestamp mask and the dropout are applied; in eval mode neither."""

    def __init__(self, config: TS2VecConfig):
        super().__init__()
        check_range("input_dims", config.input_dims, 1, None, integer=True)
        check_range("depth", config.depth, 0, None, integer=True)
        for name in ("hidden_dims", "output_dims", "kernel_size"):
            check_range(name, getattr(config, name), 1, None, integer=True)
        check_range("dropout", config.dropout, 0.0, 1.0, high_inclusive=False)
        check_range("mask_keep", config.mask_keep, 0.0, 1.0, low_inclusive=False)
        self.config = config
        self.input_fc = nn.Linear(config.input_dims, config.hidden_dims)
        widths = [config.hidden_dims] * config.depth + [config.output_dims]
        self.blocks = nn.Sequential(*[
            _DilatedBlock(widths[i - 1] if i > 0 else config.hidden_dims, widths[i], config.kernel_size,
                          dilation=2 ** i, final=i == len(widths) - 1) for i in range(len(widths))])
        self.dropout = nn.Dropout(config.dropout)

    @property
    def receptive_field(self) -> int:
        """Timestamps one output sees: 1 + sum over blocks i of 2 (k - 1) 2^i."""
        k = self.config.kernel_size
        return 1 + sum(2 * (k - 1) * 2 ** i for i in range(self.config.depth + 1))

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> Tensor:
        """``x`` (N, C, L) -> (N, L, output_dims). ``mask`` (N, L) bool (True: kept) overrides the
        training mask; NaN timestamps (missing values) are always masked, as in the authors' code."""
        if x.ndim != 3 or x.shape[1] != self.config.input_dims:
            raise DiffkitError(f"series of shape {tuple(x.shape)} are not allowed; expected (batch, "
                               f"{self.config.input_dims}, length)")
        x = x.transpose(1, 2)                                  # (N, L, C): one vector per timestamp
        observed = ~torch.isnan(x).any(dim=-1)
        h = self.input_fc(torch.where(observed[..., None], x, torch.zeros_like(x)))
        if mask is not None and tuple(mask.shape) != tuple(h.shape[:2]):
            raise DiffkitError(f"mask of shape {tuple(mask.shape)} is not allowed; expected {tuple(h.shape[:2])} "
                               "(series, timestamps), True where kept")
        if mask is None:
            mask = (torch.rand(h.shape[:2], generator=generator) < self.config.mask_keep).to(h.device) \
                if self.training else torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        mask = mask & observed
        h = h * mask[..., None].to(h.dtype)                    # timestamp masking (Sec. 3.2)
        return self.dropout(self.blocks(h.transpose(1, 2))).transpose(1, 2)


# --------------------------------------------------------------------------- the loss
def _two_view_contrast(z1: Tensor, z2: Tensor) -> Tensor:
    """Within each of G groups of N items, the InfoNCE loss of each item of one view against its
    partner in the other view, with every other item of both views as negatives, averaged over
    both views as anchors. ``z1``, ``z2``: (G, N, C). N = 1 has no negatives: the loss is 0."""
    num = z1.shape[1]
    if num == 1:
        return z1.new_zeros(())
    z = torch.cat([z1, z2], dim=1)                           # (G, 2N, C)
    sim = z @ z.transpose(1, 2)                              # dot products r . r
    eye = torch.eye(2 * num, dtype=torch.bool, device=z.device)
    log_prob = torch.log_softmax(sim.masked_fill(eye, float("-inf")), dim=-1)
    idx = torch.arange(num, device=z.device)
    return -(log_prob[:, idx, num + idx].mean() + log_prob[:, num + idx, idx].mean()) / 2


def temporal_contrastive_loss(z1: Tensor, z2: Tensor) -> Tensor:
    """TS2Vec eq. (1), averaged over series and timestamps: the positive of r_{i,t} is r'_{i,t};
    the negatives are the other timestamps of the same series in both views. (N, T, C) inputs."""
    return _two_view_contrast(z1, z2)


def instance_contrastive_loss(z1: Tensor, z2: Tensor) -> Tensor:
    """TS2Vec eq. (2), averaged over series and timestamps: the positive of r_{i,t} is r'_{i,t};
    the negatives are the other series of the batch at timestamp t in both views."""
    return _two_view_contrast(z1.transpose(0, 1), z2.transpose(0, 1))


def hierarchical_contrastive_loss(z1: Tensor, z2: Tensor, alpha: float = 0.5, temporal_unit: int = 0) -> Tensor:
    """TS2Vec Alg. 1: the mean over levels d = 0, 1, ... of alpha L_inst + (1 - alpha) L_temp
    (eq. 3 with the authors' weights), level d + 1 max-pooling level d by 2 along time (a trailing odd
    timestamp is dropped) until one timestamp is left, where only L_inst applies. Levels below
    ``temporal_unit`` leave out L_temp. (N, T, C) inputs of the overlapping crop."""
    if z1.shape != z2.shape or z1.ndim != 3:
        raise DiffkitError(f"views of shapes {tuple(z1.shape)} and {tuple(z2.shape)} are not allowed; "
                           "expected two (batch, time, dims) tensors of one shape")
    loss, levels = z1.new_zeros(()), 0
    while z1.shape[1] > 1:
        loss = loss + alpha * instance_contrastive_loss(z1, z2)
        if levels >= temporal_unit:
            loss = loss + (1 - alpha) * temporal_contrastive_loss(z1, z2)
        levels += 1
        z1 = F.max_pool1d(z1.transpose(1, 2), kernel_size=2).transpose(1, 2)
        z2 = F.max_pool1d(z2.transpose(1, 2), kernel_size=2).transpose(1, 2)
    loss = loss + alpha * instance_contrastive_loss(z1, z2)
    return loss / (levels + 1)


# --------------------------------------------------------------------------- training
def random_crops(length: int, batch: int, rng: np.random.Generator, min_length: int = 2):
    """Two overlapping windows per series (TS2Vec Sec. 3.3, "contextual consistency"): overlap
    length l ~ U{min_length..T}, overlap [a2, b1) placed uniformly, view 1 = [a1, b1) with
    a1 ~ U{0..a2}, view 2 = [a2, b2) with b2 ~ U{b1..T}; both views of series n are shifted by one
    offset ~ U{-a1..T-b2} (authors' code). Returns (start1 (batch,), len1, start2 (batch,), len2, l):
    view 1 ends with the overlap, view 2 begins with it."""
    overlap = int(rng.integers(min_length, length + 1))
    a2 = int(rng.integers(0, length - overlap + 1))
    b1 = a2 + overlap
    a1 = int(rng.integers(0, a2 + 1))
    b2 = int(rng.integers(b1, length + 1))
    offset = rng.integers(-a1, length - b2 + 1, size=batch)
    return offset + a1, b1 - a1, offset + a2, b2 - a2, overlap


def _windows(x: Tensor, starts: np.ndarray, width: int) -> Tensor:
    """x[n, :, starts[n] : starts[n] + width] for each series n of (N, C, L)."""
    index = torch.as_tensor(starts, device=x.device)[:, None] + torch.arange(width, device=x.device)
    return torch.gather(x, 2, index[:, None, :].expand(-1, x.shape[1], -1))


def authors_iterations(num_values: int) -> int:
    """The authors' number of training iterations (``TS2Vec.fit``): 200 for at most 100,000 values
    (N C L of the training series), else 600."""
    return 200 if num_values <= 100_000 else 600


def train_ts2vec(series, iterations: Optional[int] = None, *, batch_size: int = 8, lr: float = 1e-3, seed: int = 0,
                 device="cpu", config: Optional[TS2VecConfig] = None, alpha: float = 0.5,
                 temporal_unit: int = 0) -> TS2VecEncoder:
    """Train a TS2Vec encoder on ``series`` (N, C, L) (the Context-FID recipe: on the real data)
    and return the averaged encoder in eval mode, frozen. Deterministic for a seed on one device.

    Each iteration takes the next ``batch_size`` series of a seeded shuffle, crops two overlapping
    views, masks and encodes them, and steps AdamW on :func:`hierarchical_contrastive_loss` of the
    overlap. ``iterations`` None: the authors' rule, 200 (of batches of 8) where the series hold at
    most 100,000 values (N C L), else 600. Series that are NaN throughout are dropped (the authors'
    code); other NaNs are missing timestamps, masked."""
    series = torch.as_tensor(series, dtype=torch.float32)
    if series.ndim != 3 or series.shape[0] < 2 or series.shape[2] < 2:
        raise DiffkitError(f"series of shape {tuple(series.shape)} are not allowed; expected (num_series >= 2, "
                           "channels, length >= 2)")
    num_values = series.numel()  # the authors' iteration rule counts the data as given
    series = series[~torch.isnan(series).flatten(1).all(dim=1)]
    if series.ndim != 3 or series.shape[0] < 2 or series.shape[2] < 2:
        raise DiffkitError(f"series of shape {tuple(series.shape)} (after dropping all-NaN series) are not "
                           "allowed; expected (num_series >= 2, channels, length >= 2)")
    if torch.isinf(series).any():
        raise DiffkitError("the series hold infinite values; give finite values (NaN marks a missing timestamp)")
    iterations = authors_iterations(num_values) if iterations is None else iterations
    check_range("iterations", iterations, 1, None, integer=True)
    check_range("temporal_unit", temporal_unit, 0, None, integer=True)
    if 2 ** (temporal_unit + 1) > series.shape[2]:
        raise DiffkitError(f"temporal_unit={temporal_unit} needs crops of at least 2^(temporal_unit + 1) = "
                           f"{2 ** (temporal_unit + 1)} timestamps; the series have {series.shape[2]}")
    check_range("batch_size", batch_size, 2, None, integer=True)
    check_range("lr", lr, 0.0, None, low_inclusive=False)
    config = config or TS2VecConfig(input_dims=series.shape[1])
    if config.input_dims != series.shape[1]:
        raise DiffkitError(f"config.input_dims={config.input_dims} does not match the series' "
                           f"{series.shape[1]} channels")
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    with fork_device_rng("cpu"):  # the caller's CPU random state is kept; the weights start on the CPU
        torch.default_generator.manual_seed(seed)
        net = TS2VecEncoder(config)
    net.to(device).train()
    averaged = torch.optim.swa_utils.AveragedModel(net)
    averaged.update_parameters(net)  # the initial weights are the average's first member (authors' code)
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr)
    order, cursor = rng.permutation(series.shape[0]), 0
    dev = torch.device(device)  # the dropout masks: seeded on the training device, the caller's state kept
    with fork_device_rng(dev):
        torch.default_generator.manual_seed(seed)
        if dev.type == "cuda":  # the device fork_device_rng restores
            with torch.cuda.device(dev):
                torch.cuda.manual_seed(seed)
        elif dev.type != "cpu":
            getattr(torch, dev.type).manual_seed(seed)
        for _ in range(iterations):
            if cursor + batch_size > len(order):
                order, cursor = rng.permutation(series.shape[0]), 0
            batch = series[order[cursor:cursor + batch_size]].to(device)
            cursor += batch_size
            start1, len1, start2, len2, overlap = random_crops(batch.shape[2], batch.shape[0], rng,
                                                               min_length=2 ** (temporal_unit + 1))
            out1 = net(_windows(batch, start1, len1), generator=generator)[:, -overlap:]
            out2 = net(_windows(batch, start2, len2), generator=generator)[:, :overlap]
            loss = hierarchical_contrastive_loss(out1, out2, alpha, temporal_unit)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            averaged.update_parameters(net)
    encoder = averaged.module
    encoder.requires_grad_(False)
    return encoder.eval()


@torch.no_grad()
def ts2vec_embeddings(encoder: TS2VecEncoder, series, batch_size: int = 256) -> np.ndarray:
    """Series-level embeddings (N, output_dims): the encoder's output max-pooled over all
    timestamps (the instance-level representation of TS2Vec's classification protocol, Sec. 4.1;
    the Context-FID features), float64. Series must be finite: a NaN here is a failed generator,
    not a missing value, and would otherwise be scored."""
    series = torch.as_tensor(series, dtype=torch.float32)
    if series.ndim != 3 or series.shape[0] < 1 or series.shape[2] < 1:
        raise DiffkitError(f"series of shape {tuple(series.shape)} are not allowed; expected (num_series >= 1, "
                           "channels, length >= 1)")
    if not torch.isfinite(series).all():
        bad = int((~torch.isfinite(series)).flatten(1).any(dim=1).sum())
        raise DiffkitError(f"{bad} of {series.shape[0]} series hold NaN or infinite values; Context-FID needs "
                           "finite series")
    check_range("batch_size", batch_size, 1, None, integer=True)
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    try:
        parts = [encoder(series[i:i + batch_size].to(device)).amax(dim=1).double().cpu()
                 for i in range(0, series.shape[0], batch_size)]
    finally:
        encoder.train(was_training)
    return torch.cat(parts).numpy()
