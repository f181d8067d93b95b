"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", EDM2, Sec. 3 and App. C): track power-function EMAs during training, store their snapshots,
and after training synthesise the EMA of any width by least squares over the snapshots.

A power-function EMA averages the weights of steps tau = 1..t with the profile p(tau) ∝ tau^gamma
(eq. 1). Its width is named by the relative standard deviation of that profile (eq. 3)::

    sigma_rel = (gamma + 1)^(1/2) (gamma + 2)^-1 (gamma + 3)^(-1/2)

and tracked step by step with ema_t = beta_t ema_{t-1} + (1 - beta_t) theta_t (eq. 2, Alg. 1)::

    beta_t = (1 - 1/t)^(gamma + 1),  t = 1, 2, ...  (beta_1 = 0: the first update copies theta_1)

which gives the weight of theta_i in ema_t exactly as (i^(gamma+1) - (i-1)^(gamma+1)) / t^(gamma+1),
the integral of the profile (gamma+1) tau^gamma / t^(gamma+1) over the step's interval [i-1, i].
The profiles of snapshots (t_i, gamma_i) span a space; the one of any (t, gamma) is approximated in it
by least squares in L2(0, inf) (App. C.3, Alg. 3): with the Gram matrix A_ij = <p_i, p_j> and
b_i = <p_i, p_r>, both in closed form, the coefficients x solve A x = b and the synthesised EMA is
sum_i x_i ema_i (x normalised to sum to 1, as the paper's reference code does, so a constant weight
is kept exactly).

The valid widths are 0 < sigma_rel < 1/sqrt(12) ~ 0.2887, i.e. gamma > 0 (the reference code's
bound); the tracked ones and the synthesised one alike. Time t counts EMA updates (optimiser steps
that were not skipped for a non-finite loss).
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from . import checkpoint as ckpt
from .errors import DiffkitError

SIGMA_REL_MAX = 1 / math.sqrt(12)  # sigma_rel at gamma = 0 (eq. 3); the widths allowed are below it
SNAPSHOT_KIND = "posthoc-ema snapshot"
SNAPSHOT_FOLDER = "posthoc"  # inside the run's checkpoint folder
_SNAPSHOT_NAME = re.compile(r"^snapshot_([0-9]+)\.safetensors$")


# ---------------------------------------------------------------- the profiles (closed forms)
def sigma_rel_from_gamma(gamma: float) -> float:
    """The relative standard deviation of the profile p(tau) ∝ tau^gamma on [0, t] (EDM2 eq. 3)."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def check_sigma_rel(sigma_rel: float, what: str = "sigma_rel") -> float:
    """``sigma_rel`` if it is a number in (0, 1/sqrt(12)) (gamma > 0); else a one-line error."""
    if not (isinstance(sigma_rel, (int, float)) and not isinstance(sigma_rel, bool)
            and 0 < sigma_rel < SIGMA_REL_MAX):
        raise DiffkitError(f"{what}={sigma_rel!r} is out of range; allowed: 0 < sigma_rel < {SIGMA_REL_MAX:.4f} "
                           f"(1/sqrt(12), the power-function EMA's widest profile, gamma = 0; EDM2 eq. 3)")
    return float(sigma_rel)


def gamma_from_sigma_rel(sigma_rel: float) -> float:
    """The exponent gamma > 0 of the profile of width ``sigma_rel`` (EDM2 Alg. 2): eq. 3 squared and
    multiplied out is the cubic gamma^3 + 7 gamma^2 + (16 - s^-2) gamma + (12 - s^-2) = 0, whose
    largest real root is gamma."""
    inv = check_sigma_rel(sigma_rel) ** -2
    roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


def power_beta(t: int, gamma: float) -> float:
    """The decay of update ``t`` = 1, 2, ... of the power-function EMA (EDM2 eq. 2): (1 - 1/t)^(gamma+1)."""
    if t < 1:
        raise ValueError(f"t={t}: the updates count from 1")
    return (1.0 - 1.0 / t) ** (gamma + 1.0)


def profile_inner_product(t_a, gamma_a, t_b, gamma_b):
    """<p_a, p_b> = int_0^inf p_a(tau) p_b(tau) dtau for p(tau) = (gamma+1) tau^gamma / t^(gamma+1) on
    [0, t] (EDM2 App. C.3, Alg. 3): with t_a <= t_b it is
    (gamma_a+1)(gamma_b+1) (t_a/t_b)^gamma_b / ((gamma_a+gamma_b+1) t_b), and symmetrically. Arrays broadcast."""
    t_a, gamma_a, t_b, gamma_b = (np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    ratio = np.where(t_a <= t_b, t_a / t_b, t_b / t_a)
    power = np.where(t_a <= t_b, gamma_b, gamma_a)
    return (gamma_a + 1) * (gamma_b + 1) * ratio ** power / ((gamma_a + gamma_b + 1) * np.maximum(t_a, t_b))


def solve_coefficients(ts: Sequence[float], gammas: Sequence[float], t_r: float,
                       gamma_r: float) -> tuple[np.ndarray, float]:
    """(x, error): the coefficients of the snapshots' profiles (t_i, gamma_i) whose sum best
    approximates the profile (t_r, gamma_r) in L2 (EDM2 App. C.3, Alg. 3: A x = b, solved by least
    squares, then x / sum(x)), and the relative L2 error ||sum_i x_i p_i - p_r|| / ||p_r|| of that
    approximation (0: exact)."""
    ts, gammas = np.asarray(ts, dtype=np.float64), np.asarray(gammas, dtype=np.float64)
    gram = profile_inner_product(ts[:, None], gammas[:, None], ts[None, :], gammas[None, :])
    b = profile_inner_product(ts, gammas, t_r, gamma_r)
    x = np.linalg.lstsq(gram, b, rcond=None)[0]
    x = x / x.sum()
    target = profile_inner_product(t_r, gamma_r, t_r, gamma_r)
    residual = max(float(x @ gram @ x - 2 * x @ b + target), 0.0)
    return x, math.sqrt(residual / float(target))


# ---------------------------------------------------------------- tracking during training
def tracked_parameters(model: torch.nn.Module, trainable_only: bool) -> list:
    """(name, parameter) of the parameters an EMA averages, in the model's order: all of them, or only
    those that train (``trainable_only``: a LoRA run's adapters)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad or not trainable_only]


class PowerEMA:
    """Power-function EMAs of the weights, one per ``sigma_rels`` entry (EDM2 Alg. 1 with eq. 2), all
    updated after every optimiser step. ``updates`` is t, saved in checkpoints; ``run_id`` names the
    run in its snapshots (their ``diffkit posthoc-ema`` refuses to mix two runs)."""

    def __init__(self, model: torch.nn.Module, sigma_rels: Sequence[float], trainable_only: bool = False,
                 run_id: Optional[str] = None):
        self.sigma_rels = [check_sigma_rel(s, "posthoc_ema") for s in sigma_rels]
        self.gammas = [gamma_from_sigma_rel(s) for s in self.sigma_rels]
        self.trainable_only = trainable_only
        self.run_id = run_id or os.urandom(8).hex()
        self.updates = 0
        self.profiles = [[p.detach().clone() for _, p in tracked_parameters(model, trainable_only)]
                         for _ in self.sigma_rels]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        t = self.updates + 1
        weights = [p.detach() for _, p in tracked_parameters(model, self.trainable_only)]
        for gamma, params in zip(self.gammas, self.profiles):
            torch._foreach_lerp_(params, weights, 1.0 - power_beta(t, gamma))
        self.updates = t

    def state_tensors(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """``posthoc.<k>.<name>``: profile k's average of each tracked parameter."""
        names = [n for n, _ in tracked_parameters(model, self.trainable_only)]
        return {f"posthoc.{k}.{n}": p for k, params in enumerate(self.profiles) for n, p in zip(names, params)}

    def meta(self) -> dict:
        return {"sigma_rels": self.sigma_rels, "gammas": self.gammas, "updates": self.updates,
                "run_id": self.run_id}

    def load(self, model: torch.nn.Module, tensors: dict[str, torch.Tensor], meta: Optional[dict], path) -> None:
        """Restore what :meth:`state_tensors` and :meth:`meta` saved (:func:`check_resume` first)."""
        check_resume(meta, self.sigma_rels, path)
        names = [n for n, _ in tracked_parameters(model, self.trainable_only)]
        for k, params in enumerate(self.profiles):
            for n, p in zip(names, params):
                p.copy_(tensors[f"posthoc.{k}.{n}"])
        self.updates, self.run_id = int(meta["updates"]), str(meta["run_id"])


def check_resume(saved: Optional[dict], sigma_rels: Optional[Sequence[float]], path) -> None:
    """A resume keeps the checkpoint's post-hoc EMA widths (``saved``: its ``posthoc_ema`` metadata, None
    where it had none): the power-function EMAs average from step 1, so they can neither start, stop nor
    change width midway; else a one-line error. Every rank checks (rank 0 alone tracks them)."""
    had = (saved or {}).get("sigma_rels")
    now = [float(s) for s in sigma_rels] if sigma_rels else None
    if had == now:
        return
    if not now:
        raise DiffkitError(f"{path} was trained with posthoc_ema={had}, this run has it off; an exact resume keeps "
                           f"the power-function EMAs going: drop the change")
    raise DiffkitError(f"{path} was trained with {f'posthoc_ema={had}' if had else 'post-hoc EMA off'}, this run has "
                       f"posthoc_ema={now}; the power-function EMAs average from step 1, so an exact resume needs "
                       f"the same posthoc_ema (or start a new run)")


def snapshot_path(checkpoint_dir, step: int) -> Path:
    return Path(checkpoint_dir) / SNAPSHOT_FOLDER / f"snapshot_{step:08d}.safetensors"


def snapshot_steps(folder) -> list[int]:
    """The steps of the ``snapshot_<step>.safetensors`` files in ``folder``, oldest first."""
    return sorted(int(m[1]) for p in Path(folder).glob("snapshot_*.safetensors") if (m := _SNAPSHOT_NAME.match(p.name)))


# ---------------------------------------------------------------- after training
def find_snapshots(run) -> tuple[Path, list[Path]]:
    """(folder, snapshot files oldest first) of ``run``: a run folder (``RUN/checkpoints/posthoc``), its
    checkpoint folder (``.../posthoc``) or the snapshot folder itself; a one-line error when it has none."""
    run = Path(run)
    if not run.is_dir():
        raise DiffkitError(f"--run {str(run)!r} {'is not a folder' if run.exists() else 'does not exist'}; give a "
                           f"run folder (diffkit train --out RUN)")
    for folder in (run / "checkpoints" / SNAPSHOT_FOLDER, run / SNAPSHOT_FOLDER, run):
        files = [p for p in folder.glob("snapshot_*.safetensors") if _SNAPSHOT_NAME.match(p.name)]
        if files:
            return folder, sorted(files, key=lambda p: int(_SNAPSHOT_NAME.match(p.name)[1]))
    raise DiffkitError(f"{run} holds no post-hoc EMA snapshots (snapshot_*.safetensors in {run}/checkpoints/"
                       f"{SNAPSHOT_FOLDER}); train with --set posthoc_ema=0.05,0.10 to write them")


def _snapshot_meta(path: Path) -> dict:
    meta = ckpt.peek_metadata(path)
    if not meta or meta.get("kind") != SNAPSHOT_KIND or not isinstance(meta.get("posthoc_ema"), dict):
        raise DiffkitError(f"{path} is not a diffkit post-hoc EMA snapshot")
    info = meta["posthoc_ema"]
    widths = info.get("sigma_rels"), info.get("gammas")
    if not (_count(meta.get("step")) and _count(info.get("updates"), 0) and all(isinstance(w, list) for w in widths)
            and len(widths[0]) == len(widths[1]) > 0):
        raise DiffkitError(f"{path} has malformed post-hoc EMA metadata (step, updates, sigma_rels, gammas); "
                           f"move it out of {path.parent}")
    return meta


def _count(value, least: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def reconstructible_range(ts, gammas, t_r: float, max_error: float) -> Optional[tuple[float, float]]:
    """(lowest, highest) sigma_rel, on a grid of 400 widths in (0, 1/sqrt(12)), whose profile at ``t_r``
    the snapshots (ts, gammas) reconstruct within a relative L2 error ``max_error``
    (:func:`solve_coefficients`); None if none."""
    grid = np.geomspace(1e-3, SIGMA_REL_MAX * (1 - 1e-9), 400)
    good = [s for s in grid if solve_coefficients(ts, gammas, t_r, gamma_from_sigma_rel(s))[1] <= max_error]
    return (float(good[0]), float(good[-1])) if good else None


def synthesize(run, sigma_rel: float, step: Optional[int] = None,
               max_error: float = 0.1) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a weights-only checkpoint whose weights are the EMA of width
    ``sigma_rel`` at ``step`` (default: the last snapshot's), synthesised from the snapshots of
    ``run`` up to that step (EDM2 App. C.3); the metadata's ``synthesised_ema`` records the width,
    the snapshots and their coefficients, and the profile's relative L2 error. The valid widths
    are those whose profile the snapshots reconstruct within ``max_error``. Errors are one line:
    no snapshots, a width out of range, a step without a snapshot, snapshots of two runs or networks."""
    check_sigma_rel(sigma_rel, "--sigma-rel")
    folder, files = find_snapshots(run)
    metas = [_snapshot_meta(p) for p in files]
    steps = [int(m["step"]) for m in metas]
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise DiffkitError(f"--step {step} has no snapshot in {folder}; steps with one: {_list(steps)}")
    last = steps.index(step)
    if metas[last]["posthoc_ema"]["updates"] < 1:
        raise DiffkitError(f"--step {step}'s snapshot was written before the first update (t=0: every step so far "
                           f"was skipped); it holds no average; give a later --step")
    # the snapshots up to that step, less any written before the first update: they hold no average (t = 0;
    # EDM2's reconstruct_phema drops them too)
    kept = [i for i in range(last + 1) if metas[i]["posthoc_ema"]["updates"] >= 1]
    files, metas = [files[i] for i in kept], [metas[i] for i in kept]
    for p, m in zip(files, metas):  # one run, one network
        for key, what in (("run_id", "another run"), ("sigma_rels", "other tracked widths")):
            if m["posthoc_ema"].get(key) != metas[-1]["posthoc_ema"].get(key):
                raise DiffkitError(f"{p} is a snapshot of {what} than {files[-1]} ({key} differs); "
                                   f"move the other run's snapshots out of {folder}")
        if m.get("unet") != metas[-1].get("unet"):
            raise DiffkitError(f"{p} holds another network than {files[-1]}; move it out of {folder}")
    ts, gammas = [], []  # one entry per (snapshot, tracked width), in the order the tensors are summed below
    for m in metas:
        ts += [m["posthoc_ema"]["updates"]] * len(m["posthoc_ema"]["gammas"])
        gammas += m["posthoc_ema"]["gammas"]
    t_r, gamma_r = metas[-1]["posthoc_ema"]["updates"], gamma_from_sigma_rel(sigma_rel)
    x, error = solve_coefficients(ts, gammas, t_r, gamma_r)
    if error > max_error:
        span = reconstructible_range(ts, gammas, t_r, max_error)
        within = f"sigma_rel {span[0]:.3f}..{span[1]:.3f}" if span else "no width"
        raise DiffkitError(f"--sigma-rel {sigma_rel} is out of the range these {len(files)} snapshots reconstruct: its "
                           f"profile's relative L2 error is {error:.1%} (> {max_error:.0%}); within {max_error:.0%}: "
                           f"{within} (snapshots more often, a smaller posthoc_ema_every, widen it; or raise "
                           f"--max-profile-error)")
    total: dict[str, torch.Tensor] = {}
    i = 0
    for p in files:
        tensors, _ = ckpt.load_checkpoint(p)
        for k in range(len(metas[0]["posthoc_ema"]["sigma_rels"])):
            for name, value in ckpt.split_prefix(tensors, f"posthoc.{k}").items():
                acc = total.setdefault(name, torch.zeros(value.shape, dtype=torch.float64))
                acc.add_(value.double(), alpha=float(x[i]))
            i += 1
    kept = {k: v for k, v in tensors.items() if not k.startswith("posthoc.")}  # the last snapshot's buffers, ...
    dtypes = {n: v.dtype for n, v in ckpt.split_prefix(tensors, "posthoc.0").items()}
    kept.update({f"model.{n}": v.to(dtypes[n]) for n, v in total.items()})
    meta = {k: v for k, v in metas[-1].items() if k not in ("kind", "posthoc_ema")}
    meta["synthesised_ema"] = {"sigma_rel": float(sigma_rel), "gamma": gamma_r, "step": step, "t": t_r,
                               "profile_error": error, "run_id": metas[-1]["posthoc_ema"]["run_id"],
                               "snapshots": [{"file": p.name, "step": m["step"], "t": m["posthoc_ema"]["updates"]}
                                             for p, m in zip(files, metas)],
                               "tracked_sigma_rels": metas[-1]["posthoc_ema"]["sigma_rels"],
                               "coefficients": [float(v) for v in x]}
    meta["exported_from"] = {"step": step, "weights": "ema"}
    return kept, meta


def _list(values: list) -> str:
    return ", ".join(map(str, values[:8])) + (", ..." if len(values) > 8 else "")
