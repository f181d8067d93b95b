"""Evaluate a model or a folder of images: one call, one table of metrics (the arrow
"images -> metrics" of README's "Design", plus the test-set likelihood of a checkpoint).

Metric names (``METRICS``):

* ``fid``, ``is``, ``kid``, ``pr`` - on the standard FID InceptionV3 (Heusel et al. 2017;
  Salimans et al. 2016; Binkowski et al. 2018; Kynkaanniemi et al. 2019). They need the weights
  file (:func:`diffkit.metrics.find_inception_weights`); nothing is downloaded.
* ``fd-classifier``, ``classifier-score``, ``class-accuracy``, ``confidence`` - on a small
  domain classifier (:mod:`diffkit.metrics.evaluator`): Frechet distance of its 128-d features,
  its IS-like score, agreement with the conditioning labels (class-conditional models only) and
  the mean max-softmax confidence.
* ``nll`` - the full variational bound in bits/dim on test images (DDPM eq. 5, T network calls
  per batch); ``nll-strided`` - the same bound with the KL terms summed by the trapezoid rule on
  all t < ``dense_below`` and every ``stride``-th t above (:func:`strided_timesteps`).
* ``rate-distortion`` - DDPM Sec. 4.3 / Fig. 5 on the same images and strided t: the bits sent by
  t against the RMSE of the x_0 prediction from x_t ([0, 255] scale), per t
  (:func:`diffkit.progressive.rate_distortion`); its ``bpd`` is the strided bound. Asked together,
  the two are one pass of the strided bound (:func:`diffkit.likelihood.bound_in_batches`).
* ``context-fid``, ``correlational``, ``discriminative``, ``predictive`` - time-series checkpoints
  only, and only these and ``nll`` / ``nll-strided`` (the bound of the series) for them: Context-FID
  (Jeha et al. 2022) of the samples against the training series under a TS2Vec encoder trained on
  them, Diffusion-TS's correlational score and TimeGAN's discriminative and predictive scores
  (:mod:`diffkit.series_evaluation`).

Sample counts: fewer than ``MIN_EVAL_SAMPLES`` (2) images is refused; a Frechet distance from
no more samples than feature dimensions (128 for the classifier, 2048 for Inception) is
flagged ``rank_deficient`` and warned about, since its covariance is singular and the value
biased upwards.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .errors import DiffkitError, DiffkitRuntimeWarning, DiffkitWarning, check_choice, check_range
from .models.network import check_image_model, sample_shape
from .samplers.ddim import parse_eta
from .series_evaluation import SERIES_METRICS, check_metrics_fit

INCEPTION_METRICS = ("fid", "is", "kid", "pr")
EVALUATOR_METRICS = ("fd-classifier", "classifier-score", "class-accuracy", "confidence")
NLL_METRICS = ("nll", "nll-strided", "rate-distortion")  # need the model and the NLL images
NLL_SPLITS = ("test", "train")  # DDPM Table 1/2 report NLL "Test (Train)"
SAMPLE_METRICS = INCEPTION_METRICS + EVALUATOR_METRICS
METRICS = SAMPLE_METRICS + NLL_METRICS + SERIES_METRICS  # SERIES_METRICS: time-series checkpoints only
# the field of each metric's result that a one-number table shows
PRIMARY_FIELD = {"fid": "value", "is": "mean", "kid": "mean", "pr": "precision", "fd-classifier": "value",
                 "classifier-score": "mean", "class-accuracy": "value", "confidence": "value",
                 "nll": "bpd", "nll-strided": "bpd", "rate-distortion": "bpd", "context-fid": "value",
                 "correlational": "value", "discriminative": "value", "predictive": "value"}
LOWER_IS_BETTER = {"fid", "kid", "fd-classifier", "nll", "nll-strided", "context-fid", "correlational",
                   "discriminative", "predictive"}
MIN_EVAL_SAMPLES = 2  # the documented floor (a covariance needs two samples)
DIGITS_TRAIN_SIZE = 1200  # the embedded digits have no split: images 0..1199 train, 1200..1796 test
PR_NEIGHBOURS = 3


# ---------------------------------------------------------------------------- inputs
def steps_or_nfe(denoiser, sampler: str, steps: Optional[int], nfe: Optional[int], options: dict) -> int:
    """``steps`` checked against the schedule's T, or (``steps=None``) the step count that spends ``nfe``
    network evaluations per sample with ``options`` (:func:`diffkit.sampling.steps_for_nfe`); one of the two."""
    if (steps is None) == (nfe is None):
        raise DiffkitError(f"give steps or nfe, not {'both' if steps is not None else 'neither'}")
    if nfe is not None:
        from .sampling import steps_for_nfe
        return steps_for_nfe(denoiser, sampler, nfe, **options)
    return check_range("steps", steps, 1, denoiser.schedule.num_timesteps, integer=True)


def restart_options(info, restarts, options: dict) -> dict:
    """Add ``restarts`` (None: the sampler's default), the restart sampler's intervals (t_min, t_max, K, n)
    (Xu et al. 2023, Alg. 1), checked and as lists (as the JSON records them), to ``options`` and return
    them; a one-line error for a sampler (``info``) other than restart. ``info.with_options`` of the result
    has restart's NFE rule for those intervals."""
    if restarts is not None:
        from .samplers.restart import check_restarts
        from .sampling import check_options
        check_options(info, {"restarts": restarts})
        options["restarts"] = [list(r) for r in check_restarts(restarts)]
    return options


STOCHASTICITY_RANGES = {"gamma": (0.0, 1.0), "tau": (0.0, None)}  # a sampler-specific stochasticity: its range


def stochasticity_options(info, options: dict, **given) -> dict:
    """Add the stochasticity options of ``given`` that are not None (None: the sampler's default), checked, to
    ``options`` and return them: ``gamma``, the tcd sampler's in [0, 1] (Zheng et al. 2024;
    :mod:`diffkit.samplers.tcd`), ``tau``, the sa-solver sampler's >= 0 at every step (Xue et al. 2023, eq. 6;
    :mod:`diffkit.samplers.sa_solver`); a one-line error for a sampler (``info``) that does not take one. Given,
    each is in the settings and so in a sample cache's / score ledger's key (at its default value it is dropped
    there: :func:`diffkit.samplers.registry.canonical_settings`)."""
    for name, value in given.items():
        if value is not None:
            from .sampling import check_options
            check_options(info, {name: value})
            options[name] = check_range(name, value, *STOCHASTICITY_RANGES[name])
    return options


def check_scoring_files_used(names: Sequence[str], flag: str = "--metrics", *, inception_weights=None,
                             evaluator=None) -> None:
    """``--inception-weights`` / ``--evaluator`` with metrics (``names``, given as ``flag``) none of which uses
    that network (``INCEPTION_METRICS`` / ``EVALUATOR_METRICS``) is a one-line error, not silently ignored
    (``diffkit eval`` and ``experiment``)."""
    for option, path, users in (("--inception-weights", inception_weights, INCEPTION_METRICS),
                                ("--evaluator", evaluator, EVALUATOR_METRICS)):
        if path is not None and not set(names) & set(users):
            raise DiffkitError(f"{option} is used by the metrics {', '.join(users)}; {flag} {','.join(names)} has "
                               f"none of them (drop the flag or use one of them)")


def parse_metrics(metrics: str | Sequence[str]) -> list[str]:
    """``"fid,is"`` or a list -> validated names, in order, without repeats; one-line error otherwise."""
    names = [m.strip().lower() for m in (metrics.split(",") if isinstance(metrics, str) else metrics)]
    names = [m for m in names if m]
    if not names:
        raise DiffkitError(f"metrics={metrics!r} names no metric; choose from: {', '.join(METRICS)}")
    for name in names:
        check_choice("metric", name, METRICS)
    return list(dict.fromkeys(names))


def strided_timesteps(num_timesteps: int, dense_below: int = 20, stride: int = 10) -> list[int]:
    """All t < ``dense_below``, then every ``stride``-th t, always ending at T-1.

    The VLB terms fall by orders of magnitude over the first few t (most bits are decided at low
    noise), so dense small t and sparse large t keep the trapezoid-rule error small.
    """
    check_range("num_timesteps", num_timesteps, 1, None, integer=True)
    check_range("dense_below", dense_below, 0, None, integer=True)
    check_range("stride", stride, 1, None, integer=True)
    check_range("stride", stride, 1, None, integer=True)
    check_range("dense_below", dense_below, 1, None, integer=True)
    ts = list(range(min(dense_below, num_timesteps)))
    ts += list(range(ts[-1] + stride, num_timesteps, stride))
    if ts[-1] != num_timesteps - 1:
        ts.append(num_timesteps - 1)
    return ts


def reference_images(dataset: str, data_dir=None, *, train: bool = False, img_size: Optional[int] = None,
                     channels: Optional[int] = None, limit: Optional[int] = None):
    """(images (N, C, H, W) float in [-1, 1], labels (N,)) of a data set's train or test split.

    ``digits`` has no split of its own: diffkit uses its first ``DIGITS_TRAIN_SIZE`` images as the
    train part and the remaining 597 as the test part. ``limit`` keeps the first images.
    """
    from .data import load_dataset
    data = load_dataset(dataset, data_dir, img_size=img_size, train=train, channels=channels)
    images, labels = data.images, data.labels
    if dataset == "digits":
        part = slice(0, DIGITS_TRAIN_SIZE) if train else slice(DIGITS_TRAIN_SIZE, None)
        images, labels = images[part], labels[part]
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images.to(torch.float32) / 127.5 - 1.0, labels.clone()


def load_image_folder(folder) -> torch.Tensor:
    """All PNGs of ``folder`` as one tensor in [-1, 1]; mixed sizes give a one-line error."""
    from .metrics.features import _check_same_size, list_images, load_image_batch
    files = list_images(folder)
    _, mode = _check_same_size(files)
    return load_image_batch(files, mode)


# ---------------------------------------------------------------------------- sampling
def sample_labels(denoiser, num: int) -> Optional[torch.Tensor]:
    """Class labels 0, 1, ..., K-1, 0, ... for a class-conditional checkpoint; None otherwise."""
    num_classes = (getattr(denoiser, "meta", None) or {}).get("unet", {}).get("num_classes")
    return None if not num_classes else torch.arange(num) % num_classes


def image_shape(denoiser) -> tuple[int, int]:
    """(channels, side) of the images a loaded denoiser makes: the U-Net's own, or for a latent
    model the decoder's (the latent side times the autoencoder's downsampling factor)."""
    unet = denoiser.meta["unet"]
    check_image_model(unet, "scoring images")
    decoder = getattr(denoiser, "decoder", None)
    if decoder is None:
        return unet["in_channels"], unet["img_size"]
    config = decoder.model.config
    return config.in_channels, unet["img_size"] * config.downsampling_factor


def check_not_text_conditional(denoiser, what) -> None:
    """Evaluation samples unconditional and class-conditional models; a text-conditional one needs
    prompts, which ``diffkit sample --prompt`` takes (its images can then be scored as a folder)."""
    if getattr(denoiser, "prompt_encoder", None) is not None:
        raise DiffkitError(f"{what} is text-conditional; evaluation samples unconditional or class-conditional "
                           f"models (sample it with 'diffkit sample --prompt' and evaluate the images with --samples)")


def generate_samples(denoiser, num: int, *, sampler: str = "ddim", steps: int = 50, seed: int = 0,
                     batch_size: int = 256, labels: Optional[torch.Tensor] = None, device=None,
                     progress: bool = False, cache=None, return_nfe: bool = False, on_drawn=None, **options):
    """``num`` samples (CPU tensor in [-1, 1], clamped: images, or series (N, C, L)) with
    :func:`diffkit.sample`; a latent model's samples are decoded to images. ``denoiser``: one
    :func:`diffkit.loading.load_denoiser` returned, or wrappers around it (e.g. guidance).

    Sample i starts from the noise of seed ``seed + i`` whatever the batch size, so two samplers
    evaluated with the same seed start from the same x_T. ``cache``: a
    :class:`diffkit.sample_cache.SampleCache`; finished batches found there are reused and new
    ones are stored, so an interrupted run continues where it stopped with the same samples
    (a reused batch adds the network calls it cost to ``denoiser.nfe``). ``return_nfe``: return
    (samples, network evaluations per sample) (:func:`diffkit.drawing.nfe_per_sample` of the
    batches drawn and reused; attempts that ran out of memory not counted; None if unknown).
    ``on_drawn``: called with the :class:`diffkit.drawing.Drawn` record (the batch size an
    out-of-memory halving left, for the next run to start from).
    """
    from .drawing import draw_samples, nfe_per_sample
    check_range("num", num, 1, None, integer=True)
    loaded = denoiser  # a loaded denoiser, under any wrappers (guidance, thresholding): its meta, model, decoder
    while getattr(loaded, "meta", None) is None and getattr(loaded, "inner", None) is not None:
        loaded = loaded.inner
    meta = getattr(loaded, "meta", {}) or {}
    unet = meta.get("unet")
    if unet is None:
        raise DiffkitError("the denoiser has no .meta['unet']; load it with diffkit.loading.load_denoiser")
    shape = sample_shape(unet)  # (C, H, W), or (C, L) for a time-series model
    if cache is not None and loaded is not denoiser:
        from .sample_cache import denoiser_identity
        denoiser_identity(denoiser)  # a wrapper's own settings are not in the cache's key: refused in one line
    if device is None:
        device = next(loaded.model.parameters()).device
    settings = {"sampler": sampler, "steps": steps, **options}
    out, costs = [], []  # the images, and (samples, network calls) of each batch

    def batch_labels(start: int, n: int) -> Optional[torch.Tensor]:
        return None if labels is None else labels[start:start + n]

    def cached(start: int, n: int) -> bool:  # a batch finished before: its images, and the calls it cost
        stored = None if cache is None else cache.load(settings, start, n, seed, batch_labels(start, n))
        if stored is not None:
            images, nfe = stored
            out.append(images)
            costs.append((images.shape[0], nfe))
            if nfe is not None and hasattr(denoiser, "nfe"):
                denoiser.nfe += nfe  # the calls this batch cost when it was made
        return stored is not None

    def keep(batch) -> None:  # a batch drawn now: kept, and stored in the cache
        images = batch.images.float().cpu().clamp(-1, 1)
        out.append(images)
        costs.append((images.shape[0], batch.nfe))
        if cache is not None:
            count = images.shape[0]
            cache.save(settings, batch.start, count, seed, images, batch_labels(batch.start, count), batch.nfe)

    drawn = draw_samples(denoiser, num, shape, seed=seed, sampler=sampler, steps=steps,
                         cond=None if labels is None else {"y": labels}, batch_size=batch_size, device=device,
                         decode=getattr(loaded, "decoder", None), skip=cached, sink=keep, progress=progress,
                         **options)
    if on_drawn is not None:
        on_drawn(drawn)
    if not return_nfe:
        return torch.cat(out)
    unknown = any(nfe is None for _, nfe in costs)  # a batch cached without its count
    return torch.cat(out), None if unknown else nfe_per_sample(costs)


# ---------------------------------------------------------------------------- scoring
def check_sample_count(num: int, what: str = "samples", unit: str = "image(s)") -> None:
    """Refuse fewer than ``MIN_EVAL_SAMPLES`` images (``unit``: or series; the documented floor)."""
    if num < MIN_EVAL_SAMPLES:
        raise DiffkitError(f"{what}: {num} {unit} is too few; at least {MIN_EVAL_SAMPLES} are needed "
                           f"(and more than the feature dimension for a reliable Frechet distance)")


def check_labels_for(metrics: Sequence[str], labeled: bool) -> None:
    """``class-accuracy`` scores samples against the labels they were drawn for."""
    if "class-accuracy" in metrics and not labeled:
        raise DiffkitError("class-accuracy needs the class labels of the samples: use a class-conditional "
                           "checkpoint (unconditional models and images from --samples have none)")


def _check_image_shape(images: torch.Tensor, channels: int, size: int, what: str, hint: str) -> None:
    if images.ndim != 4 or tuple(images.shape[1:]) != (channels, size, size):
        raise DiffkitError(f"{what} takes {channels}x{size}x{size} images but got "
                           f"{'x'.join(map(str, images.shape[1:]))}; {hint}")


def _frechet(features, reference_stats, dim: int, what: str, unit: str = "images", reference_features=None) -> dict:
    """A Frechet distance's result fields; warns when either side has no more than ``dim`` examples
    (``unit``: what they are, "images" or "series"). With ``reference_features`` (the features behind
    ``reference_stats``) the distance comes from both feature arrays: exact low-rank algebra when
    either side has fewer than ``dim`` examples (:func:`diffkit.metrics.frechet.low_rank_frechet_distance`)."""
    from .metrics.frechet import (as_feature_array, checked_features, fit_gaussian,
                                  frechet_distance_of_checked_features, frechet_distance_of_stats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        feats = checked_features(features, what)
    deficient = features.shape[0] <= dim or reference_stats.num_samples <= dim
    if deficient:
        warnings.warn(f"{what}: {features.shape[0]} samples and {reference_stats.num_samples} reference "
                      f"{unit} for {dim}-d features give a rank-deficient covariance; the distance is "
                      f"biased upwards (use more than {dim} of each)", DiffkitRuntimeWarning, stacklevel=3)
    if reference_features is None:
        value = frechet_distance_of_stats(fit_gaussian(feats), reference_stats)
    else:
        value = frechet_distance_of_checked_features(feats, as_feature_array(reference_features, what))
    return {"value": value, "num_samples": int(features.shape[0]),
            "num_reference": int(reference_stats.num_samples), "feature_dim": dim, "rank_deficient": deficient}


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(shifted)
    return p / p.sum(axis=1, keepdims=True)


class SampleScorer:
    """Scores sets of generated images against one reference set.

    The reference features (and their mean and covariance) are computed once at construction, so
    a table of many sampler settings pays for them once. ``evaluator`` is an
    :class:`~diffkit.metrics.EvaluatorNet` (needed by the classifier metrics), ``inception`` a
    :class:`~diffkit.metrics.FIDInceptionV3` (needed by fid/is/kid/pr).
    """

    def __init__(self, metrics: Sequence[str], reference: Optional[torch.Tensor] = None, *, evaluator=None,
                 inception=None, batch_size: int = 250, device="cpu", kid_subset_size: int = 1000,
                 is_splits: int = 10):
        from .checkpoint import tensors_digest
        from .metrics import extract_features, feature_statistics
        self.metrics = [m for m in parse_metrics(metrics) if m in SAMPLE_METRICS]
        self.evaluator, self.inception = evaluator, inception
        self.batch_size, self.device = batch_size, device
        self.kid_subset_size, self.is_splits = kid_subset_size, is_splits
        needs_reference = {"fid", "kid", "pr", "fd-classifier"} & set(self.metrics)
        if any(m in INCEPTION_METRICS for m in self.metrics) and inception is None:
            raise DiffkitError("metrics fid/is/kid/pr need the Inception network; pass inception= "
                               "(diffkit.metrics.load_inception)")
        if any(m in EVALUATOR_METRICS for m in self.metrics) and evaluator is None:
            raise DiffkitError(f"metrics {', '.join(EVALUATOR_METRICS)} need an evaluator file; make one with "
                               "'diffkit train-evaluator' and pass --evaluator FILE")
        if needs_reference and reference is None:
            raise DiffkitError(f"metrics {', '.join(sorted(needs_reference))} need reference images (--ref DATASET)")
        self.reference_inception = self.reference_classifier = None
        self.num_reference = 0 if reference is None else int(reference.shape[0])
        # names the reference set in keys (diffkit.score_ledger) independently of feature rounding
        self.reference_digest = None if reference is None else tensors_digest({"reference": reference})
        if reference is not None and needs_reference:
            check_sample_count(reference.shape[0], "reference images")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                if evaluator is not None and "fd-classifier" in self.metrics:
                    self._check_evaluator_input(reference, "reference images")
                    feats = extract_features(evaluator.features, reference, batch_size, device, progress=False)
                    self.reference_classifier = feature_statistics(feats, "reference classifier features")
                if inception is not None and {"fid", "kid", "pr"} & set(self.metrics):
                    feats, _ = extract_features(inception, reference, batch_size, device, progress=False)
                    self.reference_inception = (feats, feature_statistics(feats, "reference Inception features"))

    def _check_evaluator_input(self, images: torch.Tensor, what: str) -> None:
        cfg = self.evaluator.config
        _check_image_shape(images, cfg.in_channels, cfg.image_size, "the evaluator",
                           f"train an evaluator at this size with 'diffkit train-evaluator --img-size "
                           f"{images.shape[-1]}' ({what})")

    def check_request(self, num: int, labeled: bool) -> None:
        """Refuse, before any sampling, a count or labelling these metrics cannot score: fewer than
        ``MIN_EVAL_SAMPLES`` images, ``pr`` with at most ``PR_NEIGHBOURS``, ``class-accuracy``
        without class labels."""
        check_sample_count(int(num))
        if "pr" in self.metrics and min(num, self.num_reference) <= PR_NEIGHBOURS:
            raise DiffkitError(f"pr needs more than {PR_NEIGHBOURS} samples and reference images; "
                               f"got {num} and {self.num_reference}")
        check_labels_for(self.metrics, labeled)

    def _inception_score(self, logits: np.ndarray, what: str) -> dict:
        """IS over ``is_splits`` splits of at least two samples each (a split of one sample scores
        exactly 1, whatever the image): fewer splits, with a warning, for fewer than 2 x is_splits."""
        from .metrics import inception_score
        n = int(logits.shape[0])
        splits = max(1, min(self.is_splits, n // 2))
        if splits < self.is_splits:
            warnings.warn(f"{what}: {n} samples give {splits} split(s) of >= 2 samples instead of "
                          f"{self.is_splits}; use at least {2 * self.is_splits} samples (the score is usually "
                          f"reported on 50,000)", DiffkitRuntimeWarning, stacklevel=3)
        score = inception_score(logits, splits=splits)
        return {"mean": score.mean, "std": score.std, "num_samples": n, "splits": splits}

    def score(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None) -> dict[str, dict]:
        """{metric: {field: value}} for a tensor of images (N, C, H, W) in [-1, 1]."""
        from .metrics import extract_features, kernel_inception_distance, precision_recall
        self.check_request(int(images.shape[0]), labels is not None)
        out: dict[str, dict] = {}
        n = int(images.shape[0])
        if self.evaluator is not None and set(EVALUATOR_METRICS) & set(self.metrics):
            self._check_evaluator_input(images, "samples")
            feats, logits = extract_features(self.evaluator.features_and_logits, images, self.batch_size,
                                             self.device, progress=False)
            probs = _softmax(logits)
            if "fd-classifier" in self.metrics:
                out["fd-classifier"] = _frechet(feats, self.reference_classifier, feats.shape[1],
                                                "fd-classifier")
            if "classifier-score" in self.metrics:
                out["classifier-score"] = self._inception_score(logits, "classifier-score")
            if "class-accuracy" in self.metrics:
                accuracy = float((logits.argmax(1) == np.asarray(labels)).mean())
                out["class-accuracy"] = {"value": accuracy, "num_samples": n}
            if "confidence" in self.metrics:
                out["confidence"] = {"value": float(probs.max(1).mean()), "num_samples": n}
        if self.inception is not None and set(INCEPTION_METRICS) & set(self.metrics):
            feats, logits = extract_features(self.inception, images, self.batch_size, self.device, progress=False)
            if "fid" in self.metrics:
                out["fid"] = _frechet(feats, self.reference_inception[1], feats.shape[1], "fid",
                                      reference_features=self.reference_inception[0])
            if "is" in self.metrics:
                out["is"] = self._inception_score(logits, "is")
            if "kid" in self.metrics:
                kid = kernel_inception_distance(feats, self.reference_inception[0],
                                                subset_size=self.kid_subset_size)
                out["kid"] = {"mean": kid.mean, "std": kid.std, "num_samples": n}
            if "pr" in self.metrics:
                pr = precision_recall(self.reference_inception[0], feats, k=PR_NEIGHBOURS)
                out["pr"] = {"precision": pr.precision, "recall": pr.recall, "num_samples": n}
        return {m: out[m] for m in self.metrics if m in out}


# ---------------------------------------------------------------------------- likelihood
def nll_bits_per_dim(denoiser, images: torch.Tensor, *, timesteps: Optional[Sequence[int]] = None,
                 batch_size: int = 100, seed: int = 0, progress: bool = False, cond: Optional[dict] = None) -> dict:
    """Mean VLB in bits/dim of ``images`` (in [-1, 1], 8-bit data), with its standard error.

    ``timesteps=None`` is the full bound (DDPM eq. 5; T network calls per batch); a strided list
    (see :func:`strided_timesteps`) is the faster estimate. Image i's noise comes from its own
    generator (seed ``seed + i``, :func:`diffkit.noise.generators_from_seed`), so the value does not
    depend on ``batch_size``. ``cond``: the network's conditioning, one entry per image (e.g. ``{"y":
    labels}``; None: unconditional, or the null class of a class-conditional model).
    """
    from .likelihood import bound_in_batches
    check_sample_count(int(images.shape[0]), "NLL images")
    start = time.perf_counter()
    parts = bound_in_batches(denoiser, images, timesteps=timesteps, seed=seed, batch_size=batch_size, progress=progress,
                             cond=cond)
    return {**bound_summary(parts), "seconds": time.perf_counter() - start}


def bound_summary(parts) -> dict:
    """bpd (the mean bound), its standard error, the images and the t evaluated of a bound computed
    in batches (:func:`diffkit.likelihood.bound_in_batches`)."""
    total = torch.cat([p.total for p in parts]).double()
    n = int(total.numel())
    return {"bpd": float(total.mean()), "sem": float(total.std() / math.sqrt(n)) if n > 1 else float("nan"),
            "num_images": n, "timesteps_evaluated": int(parts[0].timesteps.numel())}


# ---------------------------------------------------------------------------- output
def _format_value(value) -> str:
    if isinstance(value, (list, tuple)):  # a per-t table (rate-distortion): in the JSON, not the table
        return f"[{len(value)} values]"
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.4e}"
    return str(value)


def format_results(results: dict[str, dict]) -> str:
    """A plain-text table: one row per metric, its main value (mean +- interval of repeated runs), then the
    other fields."""
    rows = [("metric", "value", "details")]
    for name, fields in results.items():
        main = PRIMARY_FIELD.get(name, "value")
        shown = {main, "mean", "interval"} if "interval" in fields else {main}  # repeats: mean +- interval
        rest = ", ".join(f"{k}={_format_value(v)}" for k, v in fields.items() if k not in shown)
        value = _format_value(fields.get(main))
        rows.append((name, value + (f" +- {_format_value(fields['interval'])}" if "interval" in fields else ""), rest))
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]}".rstrip() for r in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def write_json(data: dict, path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON atomically (NaN written as null), making its folder if needed."""
    from .checkpoint import atomic_write_bytes

    def clean(obj):
        if isinstance(obj, float) and not math.isfinite(obj):
            return None
        if isinstance(obj, dict):
            return {str(k): clean(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        if isinstance(obj, (np.floating, np.integer)):
            return clean(obj.item())
        return obj
    return atomic_write_bytes(path, (json.dumps(clean(data), indent=2) + "\n").encode())


# ---------------------------------------------------------------------------- front door
def load_evaluator_for(path, device="cpu"):
    """:func:`diffkit.metrics.load_evaluator` with an error that says how to make the file."""
    from .metrics import load_evaluator
    if path is None:
        raise DiffkitError(f"metrics {', '.join(EVALUATOR_METRICS)} need an evaluator; make one with "
                           "'diffkit train-evaluator --dataset D --out evaluator.safetensors' and pass --evaluator")
    return load_evaluator(path, device=device)


def evaluate(metrics: str | Sequence[str], *, checkpoint=None, samples=None, ref: Optional[str] = None,
             data_dir=None, num: int = 1000, sampler: str = "ddim", steps: Optional[int] = None, eta=None,
             evaluator=None, inception_weights=None, ref_num: Optional[int] = None, nll_num: int = 256,
             nll_stride: int = 10, nll_dense_below: int = 20, batch_size: int = 250, seed: int = 0,
             device="cpu", use_ema: bool = True, thresholding: Optional[str] = None, save_samples=None,
             progress: bool = False, mixed_precision: str = "no", compile: str = "no", cache_dir=None,
             nll_split: str = "test", context_fid_iterations: Optional[int] = None,
             discriminative_iterations: int = 2000, predictive_iterations: int = 5000, repeats: int = 1,
             restarts=None, spacing: Optional[str] = None, final: Optional[str] = None,
             nfe: Optional[int] = None, lora=None, lora_any_base: bool = False,
             flow_shift: Optional[float] = None, freeu=None, gamma: Optional[float] = None,
             tau: Optional[float] = None) -> dict:
    """Evaluate a checkpoint (``checkpoint=``: sample ``num`` images) or a PNG folder (``samples=``).

    Returns ``{"metrics": {name: {field: value}}, "settings": {...}}``. The reference images
    are the test split of ``ref`` (default: the checkpoint's training data set) at the samples'
    size and channels; ``nll``/``nll-strided`` use the first ``nll_num`` images of its ``nll_split``
    (``test``, or ``train`` for DDPM Table 1/2's "Test (Train)" over-fitting check). Everything that
    can fail on user input (metric names, files, sizes) is checked before any sampling.
    ``cache_dir``: keep finished sample batches there and reuse them (:mod:`diffkit.sample_cache`).
    A time-series checkpoint takes only ``context-fid``, ``correlational``, ``discriminative``,
    ``predictive``, ``nll`` and ``nll-strided`` (:mod:`diffkit.series_evaluation`; the TS2Vec encoder trains
    ``context_fid_iterations`` iterations, None: the authors' rule, or comes from ``cache_dir``; the post-hoc GRUs train
    ``discriminative_iterations`` / ``predictive_iterations``, the authors' 2000 / 5000 by default); for a run
    on a series file ``data_dir`` is that file where it is now (it must have the SHA-256 training recorded);
    ``repeats`` > 1 (series metrics only): each metric that many times, seeds ``seed`` + i, mean +- 95% interval.
    ``restarts``: the intervals (t_min, t_max, K, n) of ``sampler="restart"`` (:func:`restart_options`); ``gamma``:
    the stochasticity of ``sampler="tcd"``, ``tau``: that of ``sampler="sa-solver"`` (:func:`stochasticity_options`),
    recorded in the settings and in a sample cache's key;
    ``spacing`` / ``final``: the time grid, as ``sampler="NAME@SPACING:FINAL"`` sets it. ``steps`` (default 50)
    or ``nfe``: the step count that spends that many network evaluations per sample
    (:func:`diffkit.sampling.steps_for_nfe`, the grid :func:`diffkit.sample` makes for ``nfe``), not both.
    ``lora``, ``lora_any_base``: LoRA adapter files merged into the checkpoint's weights
    (:func:`diffkit.loading.load_denoiser`; image models), recorded in the settings. ``flow_shift``: a
    flow-matching model's sampling shift (``diffkit.sample(..., flow_shift=...)``), recorded in the settings.
    ``freeu``: FreeU while sampling (:mod:`diffkit.models.freeu`: a FreeU or "B1,B2,S1,S2"; a diffkit U-Net), recorded
    in the settings and in a sample cache's key; the NLL metrics bound the network without it.
    """
    from .models.freeu import freeu_enabled, parse_freeu
    freeu = None if freeu is None else parse_freeu(freeu)
    names = parse_metrics(metrics)
    if steps is None and nfe is None:
        steps = 50
    check_range("repeats", repeats, 1, None, integer=True)
    if (checkpoint is None) == (samples is None):
        raise DiffkitError("give either a checkpoint (--checkpoint) or a folder of images (--samples), not both")
    if check_metrics_fit(names, checkpoint, samples):
        from .series_evaluation import evaluate_series
        refused = {"--ref": ref, "--evaluator": evaluator,
                   "--inception-weights": inception_weights, "--save-samples": save_samples, "--lora": lora,
                   "--freeu": freeu}
        return evaluate_series(names, checkpoint=checkpoint, num=num, sampler=sampler, steps=steps, eta=eta,
                               nll_num=nll_num, nll_split=nll_split, nll_stride=nll_stride,
                               nll_dense_below=nll_dense_below,
                               thresholding=thresholding, ref_num=ref_num, batch_size=batch_size, seed=seed,
                               device=device, use_ema=use_ema, mixed_precision=mixed_precision, compile=compile,
                               progress=progress, cache_dir=cache_dir, encoder_iterations=context_fid_iterations,
                               discriminative_iterations=discriminative_iterations,
                               predictive_iterations=predictive_iterations, data_dir=data_dir, refused=refused,
                               repeats=repeats, restarts=restarts, gamma=gamma, tau=tau, spacing=spacing, final=final,
                               nfe=nfe, flow_shift=flow_shift)
    if repeats != 1:
        raise DiffkitError(f"repeats {repeats} applies to the time-series metrics ({', '.join(SERIES_METRICS)}); "
                           f"image metrics are one run: leave it at 1")
    if samples is not None and set(names) & set(NLL_METRICS):
        raise DiffkitError("nll needs the model: use --checkpoint (images alone have no likelihood)")
    check_range("num", num, 1, None, integer=True)
    check_sample_count(num)
    if set(names) & set(NLL_METRICS):  # before any sampling or scoring
        check_range("nll_num", nll_num, MIN_EVAL_SAMPLES, None, integer=True)
        check_choice("nll_split", nll_split, NLL_SPLITS)
    if samples is not None:  # no folder, no PNGs, mixed sizes, unreadable: said before any weights load
        from .metrics.features import _check_same_size, list_images
        _check_same_size(list_images(samples))
    inception = net = denoiser = None
    if set(names) & set(INCEPTION_METRICS):
        from .metrics import load_inception
        inception = load_inception(inception_weights, device=device)
    if set(names) & set(EVALUATOR_METRICS):
        net = load_evaluator_for(evaluator, device)
    settings: dict = {"metrics": names, "seed": seed}
    images = labels = None
    if samples is not None:
        images = load_image_folder(samples)
        check_sample_count(images.shape[0], f"image folder {str(samples)!r}")
        channels, size = int(images.shape[1]), int(images.shape[-1])
        if images.shape[-1] != images.shape[-2]:
            raise DiffkitError(f"images in {str(samples)!r} are {images.shape[-1]}x{images.shape[-2]}; "
                               "only square images are allowed")
        if ref is None and {"fid", "kid", "pr", "fd-classifier"} & set(names):
            raise DiffkitError("--samples needs --ref DATASET (digits, mnist, fashion-mnist, cifar10, folder) "
                               "for the reference images")
        settings.update(samples=str(samples), num_samples=int(images.shape[0]))
    else:
        from .loading import load_denoiser
        from .sampling import check_eta, resolve_sampler
        info, spacing, final = resolve_sampler(sampler, spacing, final)
        sampler = info.name
        if set(names) & set(SAMPLE_METRICS):
            info.check_not_adaptive("eval")
        options = {} if thresholding is None else {"thresholding": thresholding}
        options.update({key: value for key, value in (("spacing", spacing), ("final", final)) if value})
        check_eta(sampler, eta)
        if eta is not None:
            options["eta"] = parse_eta(eta)
        info = info.with_options(restart_options(info, restarts, stochasticity_options(info, options, gamma=gamma,
                                                                                       tau=tau)))
        if flow_shift is not None:
            options["flow_shift"] = flow_shift
        denoiser = load_denoiser(checkpoint, use_ema=use_ema, device=device, mixed_precision=mixed_precision,
                                 compile=compile, lora=lora, lora_any_base=lora_any_base)
        steps = steps_or_nfe(denoiser, sampler, steps, nfe, options)
        cfg = denoiser.meta.get("config", {})
        channels, size = image_shape(denoiser)
        check_not_text_conditional(denoiser, checkpoint)
        if denoiser.decoder is not None and set(names) & set(NLL_METRICS):
            raise DiffkitError(f"nll bounds the likelihood of a pixel-space model's images; {checkpoint} is a latent "
                               f"model (its bound would be of the latents); use the sample metrics")
        if ref is None:
            ref, data_dir = cfg.get("dataset", "digits"), data_dir or cfg.get("data_dir")
        settings.update(checkpoint=str(checkpoint), mixed_precision=mixed_precision, compile=compile)
        if lora:
            from .lora_files import adapter_list
            settings["lora"] = [list(pair) for pair in adapter_list(lora)]
        if set(names) & set(SAMPLE_METRICS):  # NLL alone samples nothing: no sampler settings to record
            settings.update(sampler=sampler, steps=steps, nfe=info.nfe(steps, final), num_samples=num, **options)
            if freeu is not None:
                settings["freeu"] = freeu.as_list()  # [b1, b2, s1, s2]
    check_labels_for(names, denoiser is not None and sample_labels(denoiser, 1) is not None)  # before any loading
    if net is not None:
        _check_image_shape(torch.empty(1, channels, size, size), net.config.in_channels, net.config.image_size,
                           "the evaluator", f"train one at the samples' size with 'diffkit train-evaluator "
                           f"--img-size {size}'")
    reference = None
    only_train_nll = set(names) <= set(NLL_METRICS) and nll_split == "train"
    if ref is not None and not only_train_nll:
        reference, _ = reference_images(ref, data_dir, train=False, img_size=size, channels=channels, limit=ref_num)
        settings.update(reference=ref, reference_split="test", num_reference=int(reference.shape[0]),
                        data_dir=None if data_dir is None else str(data_dir))
    nll_images = None
    if set(names) & set(NLL_METRICS):  # loaded before any sampling: a missing train split fails first
        if nll_split == "test":
            nll_images = reference[:nll_num]
        else:
            nll_images, _ = reference_images(ref, data_dir, train=True, img_size=size, channels=channels,
                                             limit=nll_num)
        check_sample_count(int(nll_images.shape[0]), "NLL images")  # before any sampling or bound pass
        settings.update(nll_split=nll_split, nll_num_images=int(nll_images.shape[0]))
    # the other inputs that change the numbers: the weights set, the scoring networks' files, the batch
    from .latent import file_sha256
    settings["batch_size"] = batch_size
    if denoiser is not None:
        settings["ema"] = bool(use_ema)
    for name, path in (("evaluator", evaluator if net is not None else None),
                       ("inception_weights", inception_weights if inception is not None else None)):
        if path is not None and Path(path).is_file():
            settings[name] = {"file": str(path), "sha256": file_sha256(path)}
    if "evaluator" in settings:
        from .metrics import evaluator_provenance
        trained_on = evaluator_provenance(evaluator)
        if trained_on:
            settings["evaluator"]["trained_on"] = trained_on
        if trained_on.get("dataset") and ref is not None and trained_on["dataset"] != ref:
            warnings.warn(f"the evaluator was trained on {trained_on['dataset']} and the reference images are "
                          f"{ref}: its features and classes may not fit these images", DiffkitWarning)
    results: dict[str, dict] = {}
    sample_names = [m for m in names if m in SAMPLE_METRICS]
    if sample_names:
        scorer = SampleScorer(sample_names, reference, evaluator=net, inception=inception,
                              batch_size=batch_size, device=device)
        scorer.check_request(num if images is None else int(images.shape[0]),
                             images is None and sample_labels(denoiser, 1) is not None)
        if images is None:
            labels = sample_labels(denoiser, num)
            start = time.perf_counter()
            from .sample_cache import open_cache
            with freeu_enabled(denoiser, freeu):  # in the cache's key (sample_cache.denoiser_identity) too
                cache = open_cache(cache_dir, denoiser)
                images = generate_samples(denoiser, num, sampler=sampler, steps=steps, seed=seed,
                                          batch_size=batch_size, labels=labels, device=device, progress=progress,
                                          cache=cache, **options)
            if cache is not None:
                settings.update(cache_dir=str(cache_dir), cached_batches=cache.loaded)
            settings["sampling_seconds"] = time.perf_counter() - start
            if save_samples:
                from .images import save_images
                save_images(images, save_samples)
        results.update(scorer.score(images, labels))
    if set(names) & set(NLL_METRICS):
        results.update(bound_metrics(names, denoiser, nll_images, nll_stride=nll_stride,
                                     nll_dense_below=nll_dense_below, batch_size=batch_size, seed=seed,
                                     progress=progress))
        results = {m: results[m] for m in names if m in results}
    return {"metrics": results, "settings": settings}


def bound_metrics(names: Sequence[str], denoiser, data: torch.Tensor, *, nll_stride: int = 10,
                  nll_dense_below: int = 20, batch_size: int = 100, seed: int = 0, progress: bool = False,
                  cond: Optional[dict] = None) -> dict:
    """The ``NLL_METRICS`` among ``names`` of ``data`` in [-1, 1] (images, or a time-series model's series):
    ``nll`` (the full bound), ``nll-strided`` and ``rate-distortion`` (one pass of the strided bound serves
    both; :func:`strided_timesteps`). ``cond``: the network's conditioning of each of ``data`` (a series
    model's window labels, ``{"y": labels}``); images pass none."""
    results: dict[str, dict] = {}
    if "nll" in names:
        results["nll"] = nll_bits_per_dim(denoiser, data, batch_size=batch_size, seed=seed, progress=progress,
                                          cond=cond)
    if {"nll-strided", "rate-distortion"} & set(names):
        from .likelihood import bound_in_batches
        from .progressive import rate_distortion_of
        T = denoiser.schedule.num_timesteps
        ts = strided_timesteps(T, nll_dense_below, nll_stride)
        start = time.perf_counter()
        parts = bound_in_batches(denoiser, data, timesteps=ts, seed=seed, batch_size=batch_size, progress=progress,
                                 cond=cond)
        strided = dict(dense_below=nll_dense_below, stride=nll_stride, seconds=time.perf_counter() - start)
        if "nll-strided" in names:
            results["nll-strided"] = {**bound_summary(parts), **strided}
            if "nll" in results:
                results["nll-strided"]["minus_full"] = results["nll-strided"]["bpd"] - results["nll"]["bpd"]
        if "rate-distortion" in names:
            results["rate-distortion"] = {**rate_distortion_of(parts, T).as_dict(), "num_timesteps": T, **strided}
    return results
