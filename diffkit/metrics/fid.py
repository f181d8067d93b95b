"""FID and Inception Score of image sets with the standard FID InceptionV3.

FID (Heusel et al. 2017, eq. 6) is the Frechet distance between Gaussians fitted to the 2048-d
pool3 features of the two sets; IS (Salimans et al. 2016) uses the 1008 logits of the same
forward pass. Reference sets may be given as images or as a precomputed statistics .npz.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .features import extract_features
from .frechet import (GaussianStats, checked_features, fit_gaussian, frechet_distance_of_checked_features,
                      frechet_distance_of_stats)
from .inception import FIDInceptionV3, load_inception
from .scores import MeanStd, inception_score


@dataclass
class InceptionMetrics:
    """FID against the reference (None without one), IS mean/std and the generated statistics."""

    fid: float | None
    inception_score: MeanStd
    stats: GaussianStats


def _reference(reference, model, batch_size, device, progress):
    """The reference's statistics (given, or from an .npz), or its checked (n, d) features
    (from images), which the FID then uses directly (exact low-rank path for few samples)."""
    if isinstance(reference, GaussianStats):
        return reference
    if isinstance(reference, (str, os.PathLike)) and str(reference).endswith(".npz"):
        return GaussianStats.load(reference)
    features, _ = extract_features(model, reference, batch_size, device, progress, "reference")
    return checked_features(features, "reference features")


def inception_metrics(generated, reference=None, *, model: FIDInceptionV3 | None = None,
                      weights=None, batch_size: int = 50, device="cpu", progress: bool = True,
                      is_splits: int = 10) -> InceptionMetrics:
    """FID of ``generated`` against ``reference`` and the IS of ``generated``, in one pass.

    ``generated``/``reference``: a tensor (N, C, H, W) in [-1, 1], an iterable of batches or a
    folder of PNGs; ``reference`` may also be a :class:`GaussianStats` or an ``.npz`` path
    (``mu``, ``sigma``, as written by pytorch-fid or :meth:`GaussianStats.save`).
    ``model`` or ``weights`` choose the network (see :func:`load_inception`).
    """
    if model is None:
        model = load_inception(weights, device=device)
    features, logits = extract_features(model, generated, batch_size, device, progress, "generated")
    features = checked_features(features, "generated features")
    stats = fit_gaussian(features)
    score = inception_score(logits, splits=min(is_splits, features.shape[0]))
    fid = None
    if reference is not None:
        ref = _reference(reference, model, batch_size, device, progress)
        fid = (frechet_distance_of_stats(stats, ref) if isinstance(ref, GaussianStats)
               else frechet_distance_of_checked_features(features, ref))
    return InceptionMetrics(fid, score, stats)


def fid(generated, reference, **kwargs) -> float:
    """FID of two image sets (or a set and reference statistics); see :func:`inception_metrics`."""
    return inception_metrics(generated, reference, **kwargs).fid

