"""TimeGAN's post-hoc RNN metrics (Yoon et al. 2019, "Time-series Generative Adversarial Networks",
NeurIPS, Sec. 5 "Evaluation and Analysis"; used unchanged by Diffusion-TS, Yuan & Qiao 2024, Sec. 5.1):

* discriminative score - a GRU classifier is trained to tell real from generated series; the score
  is |test accuracy - 1/2| (0: indistinguishable, 1/2: always told apart). The authors' recipe
  (``metrics/discriminative_metrics.py``, ``discriminative_score_metrics``; Diffusion-TS
  ``Utils/discriminative_metric.py``): one GRU layer of ``hidden = int(C / 2)`` tanh units over the
  series, a linear map of its last state to one logit; 80 / 20 train / test split of each set
  (``utils.py``, ``train_test_divide``); 2000 Adam steps (lr 1e-3) on the sum of the two sigmoid
  cross-entropies, each a batch of 128 series of its set (a fresh random permutation's first 128,
  ``batch_generator``); the accuracy on the test parts, a series called real where sigmoid > 1/2. The
  authors pool the two parts (sklearn ``accuracy_score``), which rewards calling everything real when
  the real test part is the larger; here the balanced accuracy (acc_real + acc_generated) / 2, equal to
  theirs for equal sizes (all their runs), so sets of any two sizes are scored fairly.
* predictive score ("train on synthetic, test on real") - a GRU trained on the generated series
  predicts, at every step t < L, the last channel at t + 1 from the other channels up to t; the
  score is its mean absolute error on the real series. The authors' recipe
  (``metrics/predictive_metrics.py``, ``predictive_score_metrics``): one GRU layer of
  ``int(C / 2)`` tanh units, a linear map of each step's output then a sigmoid (targets in [0, 1],
  the authors' min-max scaling), 5000 Adam steps (lr 1e-3) of the mean absolute error on batches
  of 128 generated series, then the MAE over all real series and steps.

Here in PyTorch, series (N, C, L) as elsewhere in diffkit; every setting a parameter with the
authors' value as default. The hidden width is at least 1 (``int(C / 2)`` is 0 for one channel).
``torch.nn.GRU`` with its default initialisation stands in for the authors' ``tf.compat.v1.nn.rnn_cell.GRUCell``
(TF1's cell, also in Diffusion-TS): the same model family, not the same weights nor quite the same cell. That
cell applies the reset gate to the state before the recurrent product (PyTorch, like Keras's ``GRUCell`` with
``reset_after=True``: after it) and starts its gate biases at 1.0 (Glorot kernels; PyTorch: uniform
+-1/sqrt(hidden) for all). Diffusion-TS reports each score as the mean +- the 95% t-interval half-width of
5 runs (``Utils/metric_utils.py``, ``display_scores``: the standard error times t(0.975, 4)); a call here is one
run, seeded (split, batches, weights): deterministic on the CPU for a seed. The seed reaches only the CPU
generator (forked, so the caller's random state is kept on every device) and a numpy generator.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DiffkitError, check_range
from ..noise import fork_device_rng
from .series_pair import check_series_pair


class PosthocGRU(nn.Module):
    """One GRU layer (tanh) and a linear head: a logit per series from the last state
    (``per_step=False``, the discriminator) or a value per step (``per_step=True``, the predictor)."""

    def __init__(self, inputs: int, hidden: int, per_step: bool):
        super().__init__()
        self.gru = nn.GRU(inputs, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)
        self.per_step = per_step

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (B, L, inputs) -> (B,) or (B, L)."""
        outputs, last = self.gru(x)
        return self.head(outputs if self.per_step else last[-1]).squeeze(-1)


def authors_hidden_dim(channels: int) -> int:
    """TimeGAN's ``int(dim / 2)``, at least 1."""
    return max(1, channels // 2)


def _seeded_net(inputs: int, hidden: Optional[int], channels: int, per_step: bool, seed: int, device):
    hidden = authors_hidden_dim(channels) if hidden is None else check_range("hidden_dim", hidden, 1, None,
                                                                             integer=True)
    with fork_device_rng("cpu"):  # only the CPU generator is seeded, and restored: the caller's state is kept
        torch.default_generator.manual_seed(seed)   # on every device (torch.manual_seed would seed all GPUs)
        net = PosthocGRU(inputs, hidden, per_step)
    return net.to(device).train()


def _check_recipe(iterations: int, batch_size: int, lr: float, seed: int) -> None:
    check_range("iterations", iterations, 1, None, integer=True)
    check_range("batch_size", batch_size, 1, None, integer=True)
    check_range("lr", lr, 0.0, None, low_inclusive=False)
    check_range("seed", seed, 0, None, integer=True)


def _fit(net: nn.Module, iterations: int, lr: float, batch_loss) -> nn.Module:
    """``iterations`` Adam steps (learning rate ``lr``) on ``batch_loss(net)``, a fresh batch's loss each call."""
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(iterations):
        loss = batch_loss(net)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return net


def discriminative_score(real, generated, *, iterations: int = 2000, batch_size: int = 128,
                         hidden_dim: Optional[int] = None, train_fraction: float = 0.8, lr: float = 1e-3,
                         seed: int = 0, device="cpu") -> float:
    """TimeGAN's discriminative score |accuracy - 1/2| of a post-hoc GRU classifier (module doc) of
    ``real`` against ``generated`` (both (N, C, L), one C and L, at least 2 series each); the accuracy
    balanced, (accuracy on the real test part + on the generated one) / 2."""
    metric = "discriminative score"
    real, generated = check_series_pair(real, generated, metric)
    _check_recipe(iterations, batch_size, lr, seed)
    check_range("train_fraction", train_fraction, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    rng = np.random.default_rng(seed)
    parts = []
    for what, series in (("real", real), ("generated", generated)):   # utils.py train_test_divide
        order = rng.permutation(series.shape[0])
        cut = int(series.shape[0] * train_fraction)
        if cut < 1 or cut >= series.shape[0]:
            raise DiffkitError(f"{metric}: train_fraction={train_fraction} of {series.shape[0]} {what} series "
                               f"leaves {cut} to train on and {series.shape[0] - cut} to test; give more series "
                               "or another fraction")
        series = series.transpose(1, 2).to(device, torch.float32)   # (N, L, C)
        parts.append((series[torch.as_tensor(order[:cut], device=series.device)],
                      series[torch.as_tensor(order[cut:], device=series.device)]))
    (real_train, real_test), (gen_train, gen_test) = parts

    def batch_loss(net):  # batch_generator: a fresh permutation's first batch_size series of each set
        real_batch = real_train[torch.as_tensor(rng.permutation(len(real_train))[:batch_size], device=device)]
        gen_batch = gen_train[torch.as_tensor(rng.permutation(len(gen_train))[:batch_size], device=device)]
        real_logits, gen_logits = net(torch.cat([real_batch, gen_batch])).split([len(real_batch), len(gen_batch)])
        return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                + F.binary_cross_entropy_with_logits(gen_logits, torch.zeros_like(gen_logits)))

    net = _fit(_seeded_net(real.shape[1], hidden_dim, real.shape[1], False, seed, device), iterations, lr,
               batch_loss)
    with torch.no_grad():
        real_right, gen_right = int((net(real_test) > 0).sum()), int((net(gen_test) <= 0).sum())
    n_real, n_gen = len(real_test), len(gen_test)
    # (real_right / n_real + gen_right / n_gen) / 2 over one integer division: for n_real = n_gen exactly the
    # authors' pooled (real_right + gen_right) / (n_real + n_gen)
    accuracy = (real_right * n_gen + gen_right * n_real) / (2 * n_real * n_gen)
    return abs(accuracy - 0.5)


def predictive_score(real, generated, *, iterations: int = 5000, batch_size: int = 128,
                     hidden_dim: Optional[int] = None, lr: float = 1e-3, seed: int = 0, device="cpu") -> float:
    """TimeGAN's predictive score (module doc): the MAE on ``real`` of a post-hoc GRU trained on
    ``generated`` to predict the last channel one step ahead from the other channels (both (N, C, L),
    one C >= 2 and L >= 2; series in [0, 1], as the predictor ends in a sigmoid)."""
    real, generated = check_series_pair(real, generated, "predictive score", min_series=1, min_channels=2,
                                        min_length=2)
    _check_recipe(iterations, batch_size, lr, seed)
    channels = real.shape[1]

    def split(series: Tensor):  # inputs: channels 0..C-2 at steps 0..L-2; targets: channel C-1 at 1..L-1
        series = series.transpose(1, 2).to(device, torch.float32)
        return series[:, :-1, :-1], series[:, 1:, -1]

    rng = np.random.default_rng(seed)
    gen_inputs, gen_targets = split(generated)

    def batch_loss(net):
        batch = torch.as_tensor(rng.permutation(len(gen_inputs))[:batch_size], device=gen_inputs.device)
        return (torch.sigmoid(net(gen_inputs[batch])) - gen_targets[batch]).abs().mean()

    net = _fit(_seeded_net(channels - 1, hidden_dim, channels, True, seed, device), iterations, lr, batch_loss)
    real_inputs, real_targets = split(real)
    with torch.no_grad():
        return float((torch.sigmoid(net(real_inputs)) - real_targets).abs().to("cpu", torch.float64).mean())
