"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018, "An Empirical Model
of Large-Batch Training", Sec. 2): G is the true gradient of the expected loss, Sigma the covariance
of one example's gradient. Improved DDPM (Nichol & Dhariwal 2021, Sec. 3.3) uses it to show
that L_vlb's gradients are much noisier than L_hybrid's, and that importance-sampled timesteps
(eq. 18) lower L_vlb's noise.

* :func:`estimate_noise_scale` - the unbiased two-batch-size estimator (McCandlish et al. App. A.1)
  for any loss closure: a mini-batch gradient G_B has E|G_B|^2 = |G|^2 + tr(Sigma) / B, so
      |G|^2    ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
      tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)
  are unbiased; both are averaged over many batches and B_simple is the ratio of the averages.
* :func:`per_example_noise_scale` - the direct value from per-example gradients (torch.func) of a
  small model, exact for the empirical distribution of the examples given: a cross-check only.
* :func:`diffusion_noise_scales` - B_simple of L_simple, L_hybrid, L_vlb with uniform timesteps and
  L_vlb with importance-sampled timesteps for a diffusion checkpoint (``diffkit experiment noise-scale``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .errors import DiffkitError, check_range


# ---------------------------------------------------------------------------- the estimator
@dataclass
class NoiseScale:
    """|G|^2, tr(Sigma) and B_simple = tr(Sigma) / |G|^2 with standard errors (``*_se``); ``b_simple``
    is None where |G|^2 is not above 0 (the noise swamps the mean gradient at this many batches);
    ``b_simple_lower`` = tr(Sigma) / (|G|^2 + 2 se) is its lower bound at 2 standard errors.
    ``loss``: the mean loss over all the examples (None where the norms came without losses)."""

    grad_sq: float
    grad_sq_se: float
    trace: float
    trace_se: float
    b_simple: Optional[float]
    b_simple_se: Optional[float]
    batches: int
    small_batch: int
    big_batch: int
    b_simple_lower: Optional[float] = None
    loss: Optional[float] = None
    loss_se: Optional[float] = None

    def as_dict(self) -> dict:
        return asdict(self)


def noise_scale_from_norms(small_sq: Sequence[float], big_sq: Sequence[float], small_batch: int,
                           big_batch: int, losses: Optional[Sequence[float]] = None) -> NoiseScale:
    """B_simple from per-batch squared gradient norms |G_small|^2 and |G_big|^2 (McCandlish et al.
    App. A.1). Each batch gives unbiased estimates of |G|^2 and tr(Sigma); their means over the
    batches have standard errors from the batch-to-batch spread (std / sqrt(n)), and B_simple's
    is the delta method's for a ratio of two correlated means:
    se(B)^2 = (var tr - 2 B cov(tr, |G|^2) + B^2 var |G|^2) / (n mean(|G|^2)^2).
    ``losses``: each big batch's mean loss, reported with its standard error."""
    small_sq, big_sq = np.asarray(small_sq, dtype=np.float64), np.asarray(big_sq, dtype=np.float64)
    n = small_sq.size
    if n < 2 or big_sq.size != n:
        raise DiffkitError(f"{n} batches give no standard error; need at least 2 (and one |G_big|^2 per batch)")
    b, big = float(small_batch), float(big_batch)
    grad_sq = (big * big_sq - b * small_sq) / (big - b)
    trace = (small_sq - big_sq) / (1.0 / b - 1.0 / big)
    g_mean, tr_mean = float(grad_sq.mean()), float(trace.mean())
    cov = np.cov(np.stack([trace, grad_sq]), ddof=1)
    b_simple = b_se = None
    if g_mean > 0:
        b_simple = tr_mean / g_mean
        var = cov[0, 0] - 2 * b_simple * cov[0, 1] + b_simple ** 2 * cov[1, 1]
        b_se = math.sqrt(max(var, 0.0) / n) / g_mean
    loss = loss_se = None
    if losses is not None:
        losses = np.asarray(losses, dtype=np.float64)
        loss, loss_se = float(losses.mean()), float(losses.std(ddof=1) / math.sqrt(losses.size))
    g_se = math.sqrt(cov[1, 1] / n)
    lower = tr_mean / (g_mean + 2 * g_se) if g_mean + 2 * g_se > 0 else None
    return NoiseScale(g_mean, g_se, tr_mean, math.sqrt(cov[0, 0] / n), b_simple, b_se, n, small_batch, big_batch,
                      lower, loss, loss_se)


def check_batch_sizes(batches: int, small_batch: int, big_batch: int, names: Optional[dict] = None) -> None:
    """One-line errors for bad settings; ``names`` maps the parameter names to the ones the user
    typed (the command's ``--big-batch``, ...), which the messages then use."""
    name = {"batches": "batches", "small_batch": "small_batch", "big_batch": "big_batch", **(names or {})}
    check_range(name["batches"], batches, 2, None, integer=True)
    check_range(name["small_batch"], small_batch, 1, None, integer=True)
    check_range(name["big_batch"], big_batch, 2, None, integer=True)
    if big_batch <= small_batch or big_batch % small_batch:
        raise DiffkitError(f"{name['big_batch']}={big_batch} is not allowed with {name['small_batch']}={small_batch}; "
                           f"the big batch must be a multiple of the small one, at least twice it (e.g. "
                           f"{2 * small_batch} or {8 * small_batch})")


def _trainable(params) -> list[torch.Tensor]:
    params = list(params.parameters() if isinstance(params, torch.nn.Module) else params)
    params = [p for p in params if p.requires_grad]
    if not params:
        raise DiffkitError("the model has no parameters that require gradients; nothing to measure")
    return params


def _squared_norm(tensors) -> float:
    """sum of squares of all entries, accumulated in float64 (one host sync)."""
    return float(torch.stack([t.double().pow(2).sum() for t in tensors]).sum())


def estimate_noise_scale(params, loss_fn: Callable[[int, torch.Generator], torch.Tensor], *, batches: int = 100,
                         small_batch: int = 8, big_batch: int = 64, seed: int = 0,
                         progress: Optional[Callable[[int], None]] = None) -> NoiseScale:
    """B_simple of ``loss_fn`` with respect to ``params`` (a module or its parameters).

    ``loss_fn(n, generator)`` returns the mean loss (a scalar) of n fresh examples drawn i.i.d. with
    ``generator`` (data, noise, timesteps): the examples' distribution defines G and Sigma. Each of
    ``batches`` big batches is ``big_batch / small_batch`` independent small batches; |G_small|^2 is
    their mean squared norm, G_big their mean. Gradients come from ``torch.autograd.grad``, and every
    parameter's ``.grad`` is restored afterwards, so the caller's gradient state is untouched.
    ``progress(i)`` is called after batch i."""
    check_batch_sizes(batches, small_batch, big_batch)
    params = _trainable(params)
    saved = [None if p.grad is None else p.grad.detach().clone() for p in params]
    generator = torch.Generator().manual_seed(seed)
    chunks = big_batch // small_batch
    small_sq, big_sq, losses = [], [], []
    try:
        for i in range(batches):
            total, small, mean_loss = None, 0.0, 0.0
            for _ in range(chunks):
                loss = loss_fn(small_batch, generator)
                if loss.ndim != 0:
                    raise DiffkitError(f"the loss closure returned shape {tuple(loss.shape)}; it must return the "
                                       f"batch's mean loss, a scalar")
                if not bool(torch.isfinite(loss.detach())):
                    raise DiffkitError(f"the loss is {float(loss.detach()):g} in batch {i}; B_simple needs finite "
                                       f"losses")
                mean_loss += float(loss.detach()) / chunks
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                grads = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]
                small += _squared_norm(grads) / chunks
                total = grads if total is None else torch._foreach_add(total, grads)
            small_sq.append(small)
            losses.append(mean_loss)
            big_sq.append(_squared_norm(total) / chunks ** 2)
            if progress is not None:
                progress(i)
    finally:
        for p, g in zip(params, saved):
            p.grad = g
    return noise_scale_from_norms(small_sq, big_sq, small_batch, big_batch, losses)


def per_example_noise_scale(model: torch.nn.Module, example_loss: Callable, *examples: torch.Tensor) -> dict:
    """B_simple from per-example gradients (``torch.func.vmap(grad(...))``), exact for the empirical
    distribution of ``examples`` (what batches drawn from them with replacement see): G = the mean
    per-example gradient, tr(Sigma) = the mean squared distance from it. ``example_loss(forward,
    *example)`` is one example's loss, ``forward(*inputs)`` the model on the given parameters
    (``example`` has no batch dimension). For small models: it holds every per-example gradient."""
    from torch.func import functional_call, grad, vmap
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise DiffkitError("the model has no parameters that require gradients; nothing to measure")
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def one(params, *example):
        return example_loss(lambda *inputs: functional_call(model, (params, buffers), inputs), *example)
    grads = vmap(grad(one), in_dims=(None,) + (0,) * len(examples))(params, *examples)
    n = examples[0].shape[0]
    flat = torch.cat([grads[name].reshape(n, -1) for name in names], dim=1).double()
    mean = flat.mean(dim=0)
    grad_sq = float(mean.pow(2).sum())
    trace = float((flat - mean).pow(2).sum(dim=1).mean())
    return {"grad_sq": grad_sq, "trace": trace, "b_simple": trace / grad_sq, "examples": n}


# ---------------------------------------------------------------------------- diffusion objectives
OBJECTIVES = ("simple", "hybrid", "vlb", "vlb-importance")
OBJECTIVE_NAMES = {"simple": "L_simple", "hybrid": "L_hybrid", "vlb": "L_vlb (uniform t)",
                   "vlb-importance": "L_vlb (importance-sampled t)"}


def _training_options(denoiser) -> dict:
    meta = getattr(denoiser, "meta", None) or {}
    cfg = meta.get("config", {})
    return {"prediction_type": meta.get("prediction_type", "epsilon"),
            "learned_variance": bool(meta.get("learned_variance", False)),
            "fixed_variance": cfg.get("fixed_variance", "fixed_small"),
            "hybrid_lambda": cfg.get("hybrid_lambda", 0.001)}


def check_objectives(objectives: Optional[Sequence[str]], learned_variance: bool,
                     name: str = "objectives") -> list[str]:
    """The objectives to measure: all four by default (``hybrid`` only for a learned variance).
    ``name``: what the messages call the list (the command's ``--objectives``)."""
    if objectives is None:
        return [o for o in OBJECTIVES if learned_variance or o != "hybrid"]
    objectives = list(objectives)
    if not objectives:
        raise DiffkitError(f"{name} is empty; choose from: {', '.join(OBJECTIVES)}")
    for objective in objectives:
        if objective not in OBJECTIVES:
            raise DiffkitError(f"{name} has {objective!r}, which is not allowed; choose from: {', '.join(OBJECTIVES)}")
    if "hybrid" in objectives and not learned_variance:
        raise DiffkitError(f"{name} 'hybrid' needs a model with a learned variance (Improved DDPM Sec. 3.1); this "
                           f"checkpoint's variance is fixed: choose from simple, vlb, vlb-importance")
    return objectives


def check_diffusion_model(denoiser) -> None:
    """Refuse, in one line, a checkpoint whose training loss is not one of the diffusion objectives
    measured here: a consistency model (``meta["consistency"]``, diffkit.consistency), a flow-matching or EDM
    one (docs/flow_matching.md, docs/edm.md), a latent or a text-conditional one."""
    meta = getattr(denoiser, "meta", None) or {}
    if meta.get("consistency"):
        objective = meta["consistency"].get("objective")  # None: imported from a diffusers LCMScheduler folder
        trained = f" (objective={objective!r})" if objective else ""
        raise DiffkitError(f"this checkpoint is a consistency model{trained}; noise scales are "
                           f"measured for the diffusion objectives (L_simple, L_hybrid, L_vlb), not its consistency "
                           f"loss; measure a diffusion checkpoint (e.g. its teacher)")
    prediction_type = meta.get("prediction_type", "epsilon")
    if prediction_type in ("flow_prediction", "edm"):  # trained at continuous times with their own losses
        raise DiffkitError(f"this checkpoint is {'an EDM' if prediction_type == 'edm' else 'a flow-matching'} model "
                           f"(prediction_type={prediction_type!r}); noise scales are measured for the discrete-time "
                           f"diffusion objectives (L_simple, L_hybrid, L_vlb), not its loss")
    if getattr(denoiser, "decoder", None) is not None or getattr(denoiser, "prompt_encoder", None) is not None:
        raise DiffkitError("noise scales are measured for pixel-space unconditional or class-conditional models; "
                           "this checkpoint is a latent or text-conditional one")


def measured_loss_aware_sampler(net, schedule, images: torch.Tensor, options: dict, *, labels=None,
                                history: int = 10, batch_size: int = 256, generator: torch.Generator):
    """A :class:`~diffkit.timestep_sampling.LossAwareTimesteps` whose history is filled the way
    training fills it, from measured losses: ``history`` rounds of L_vlb at every t = 0..T-1 (each
    on a random image and fresh noise), so p_t is proportional to sqrt(E[L_t^2]) (Improved DDPM
    eq. 18) at the network's current weights."""
    from .losses import training_losses
    from .timestep_sampling import LossAwareTimesteps
    T = schedule.num_timesteps
    sampler = LossAwareTimesteps(T, history=history)
    device = next(net.parameters()).device
    with torch.no_grad():
        for _ in range(history):
            for start in range(0, T, batch_size):
                t = torch.arange(start, min(T, start + batch_size))
                x0, cond, noise = _draw(images, labels, t.numel(), generator, device)
                out = training_losses(net, schedule, x0, t, noise, loss_type="vlb", cond=cond, **options)
                if not bool(torch.isfinite(out.loss).all()):
                    raise DiffkitError("a measured L_vlb term is not finite; the importance weights need finite "
                                       "losses (is the checkpoint diverged?)")
                sampler.update(t, out.loss)
    return sampler


def _draw(images, labels, n, generator, device):
    index = torch.randint(images.shape[0], (n,), generator=generator)
    noise = torch.randn((n, *images.shape[1:]), generator=generator)
    cond = {} if labels is None else {"y": labels[index].to(device)}
    return images[index].to(device), cond, noise.to(device)


def diffusion_loss(denoiser, images: torch.Tensor, objective: str, *, labels=None, sampler=None) -> Callable:
    """The closure ``loss(n, generator)`` of one objective for :func:`estimate_noise_scale`: n images
    drawn with replacement from ``images`` (in [-1, 1]), t from ``sampler`` (uniform if None) with
    its importance weights 1 / (T p_t) (Improved DDPM eq. 18: E_{t~p}[L_t / p_t] = sum_t L_t), fresh
    noise, and the per-example loss of :func:`diffkit.losses.training_losses`."""
    from .losses import training_losses
    from .timestep_sampling import UniformTimesteps
    options = _training_options(denoiser)
    net, schedule = denoiser.model, denoiser.schedule
    loss_type = "vlb" if objective == "vlb-importance" else objective
    sampler = sampler or UniformTimesteps(schedule.num_timesteps)
    device = next(net.parameters()).device

    def loss(n: int, generator: torch.Generator) -> torch.Tensor:
        t, weights = sampler.sample(n, generator)
        x0, cond, noise = _draw(images, labels, n, generator, device)
        out = training_losses(net, schedule, x0, t, noise, loss_type=loss_type, cond=cond, **options)
        return (out.loss * weights.to(out.loss.device)).mean()
    return loss


def diffusion_noise_scales(denoiser, images: torch.Tensor, *, labels: Optional[torch.Tensor] = None,
                           objectives: Optional[Sequence[str]] = None, batches: int = 100, small_batch: int = 8,
                           big_batch: int = 64, history: int = 10, seed: int = 0,
                           progress: Optional[Callable[[str, int], None]] = None) -> dict:
    """B_simple of each diffusion objective for a loaded checkpoint (``denoiser.model``) on
    ``images`` (N, C, H, W) in [-1, 1] (and ``labels`` for a class-conditional model).

    Objectives: ``simple`` (L_simple), ``hybrid`` (L_hybrid, learned variance only), ``vlb``
    (L_vlb, uniform t) and ``vlb-importance`` (L_vlb with t ~ p_t and weights 1 / (T p_t), p_t
    from :func:`measured_loss_aware_sampler`). Each objective uses the same random stream (seed
    ``seed``): common random numbers for the data and noise. The network runs in training mode (its
    dropout on, as in training) under a forked RNG; its mode and ``.grad`` are restored.
    Returns ``{"objectives": {name: NoiseScale.as_dict()}, "settings": {...}, "timestep_probabilities": ...}``."""
    check_batch_sizes(batches, small_batch, big_batch)
    check_range("history", history, 1, None, integer=True)
    check_diffusion_model(denoiser)
    options = _training_options(denoiser)
    objectives = check_objectives(objectives, options["learned_variance"])
    net = denoiser.model
    channels, size = net.config.in_channels, net.config.img_size
    if images.ndim != 4 or tuple(images.shape[1:]) != (channels, size, size):
        raise DiffkitError(f"images of shape {tuple(images.shape[1:])} do not fit the network's "
                           f"{(channels, size, size)}; give a data set at img_size={size} with {channels} channel(s)")
    if getattr(net.config, "num_classes", None) and labels is None:
        raise DiffkitError("the checkpoint is class-conditional; give the images' labels")
    if not getattr(net.config, "num_classes", None):
        labels = None
    results, probabilities = {}, None
    was_training = net.training
    devices = [next(net.parameters()).device] if next(net.parameters()).is_cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        net.train()
        try:
            for name in objectives:
                sampler = None
                if name == "vlb-importance":
                    sampler = measured_loss_aware_sampler(net, denoiser.schedule, images, options, labels=labels,
                                                          history=history, batch_size=max(big_batch, 256),
                                                          generator=torch.Generator().manual_seed(seed + 1))
                    probabilities = sampler.probabilities().tolist()
                loss = diffusion_loss(denoiser, images, name, labels=labels, sampler=sampler)
                report = None if progress is None else (lambda i, name=name: progress(name, i))
                results[name] = estimate_noise_scale(net, loss, batches=batches, small_batch=small_batch,
                                                     big_batch=big_batch, seed=seed, progress=report).as_dict()
        finally:
            net.train(was_training)
    settings = {"batches": batches, "small_batch": small_batch, "big_batch": big_batch, "seed": seed,
                "history": history, "num_images": int(images.shape[0]), "parameters": sum(
                    p.numel() for p in net.parameters() if p.requires_grad), **options,
                "standard_errors": "batch-to-batch spread of the per-batch estimates; B_simple by the delta method"}
    return {"objectives": results, "settings": settings, "timestep_probabilities": probabilities}


def format_noise_table(results: dict) -> str:
    """One row per objective: |G|^2, tr(Sigma), B_simple, each as value +- standard error."""
    def pm(value, se):
        return "-" if value is None else f"{value:.4g} +- {se:.2g}"
    rows = [("objective", "|G|^2", "tr(Sigma)", "B_simple")]
    for name, r in results["objectives"].items():
        rows.append((OBJECTIVE_NAMES.get(name, name), pm(r["grad_sq"], r["grad_sq_se"]),
                     pm(r["trace"], r["trace_se"]), pm(r["b_simple"], r["b_simple_se"])))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(f"{cell:<{w}}" if i == 0 else f"{cell:>{w}}" for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
