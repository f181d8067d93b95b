"""Context-FID: FID for time series, with a TS2Vec encoder in place of Inception.

Jeha et al. 2022 ("PSA-GAN", ICLR), Sec. 4: train a TS2Vec encoder (:mod:`.ts2vec`) on the real
series, embed real and generated series (the encoder output max-pooled over time, 320-d), and
report the Frechet distance between Gaussians fitted to the two embedding sets (FID's formula,
Heusel et al. 2017 eq. 6, :mod:`.frechet`). Diffusion-TS (Yuan & Qiao 2024) and the TimeGAN-style
benchmarks use it with the authors' TS2Vec defaults; ``Utils/context_fid.py`` there trains one
encoder per call on the real data and embeds the same number of real and generated series.

Context-FID values depend on the trained encoder: compare models only under one encoder (train it
once, pass it to :func:`context_fid`), or average over several seeds as the papers do.
"""
from __future__ import annotations

from typing import Optional

from .frechet import GaussianStats, feature_statistics, frechet_distance_of_stats
from .ts2vec import TS2VecConfig, TS2VecEncoder, train_ts2vec, ts2vec_embeddings


def context_fid_statistics(encoder: TS2VecEncoder, series, batch_size: int = 256) -> GaussianStats:
    """Mean and covariance of the TS2Vec embeddings of ``series`` (N, C, L)."""
    return feature_statistics(ts2vec_embeddings(encoder, series, batch_size), "TS2Vec embeddings")


def context_fid(encoder: TS2VecEncoder, real, generated, batch_size: int = 256) -> float:
    """Context-FID of ``generated`` against ``real`` (both (N, C, L)) under a trained encoder:
    the squared Frechet distance of the Gaussian fits of their embeddings (symmetric in the two sets)."""
    return frechet_distance_of_stats(context_fid_statistics(encoder, real, batch_size),
                                     context_fid_statistics(encoder, generated, batch_size))


def train_context_fid_encoder(real, iterations: Optional[int] = None, *, seed: int = 0, device="cpu",
                              config: Optional[TS2VecConfig] = None, **options) -> TS2VecEncoder:
    """The Context-FID encoder: TS2Vec trained on the real series (defaults of the authors' code:
    200 iterations of batches of 8 for at most 100,000 values N C L, else 600, AdamW lr 1e-3,
    64 hidden / 320 output dims, depth 10)."""
    return train_ts2vec(real, iterations, seed=seed, device=device, config=config, **options)
