"""``diffkit eval --metrics context-fid,correlational,discriminative,predictive``: the time-series metrics
of a time-series checkpoint's samples.

* ``context-fid`` (Jeha et al. 2022, Sec. 4; :mod:`diffkit.metrics.context_fid`): a TS2Vec encoder is
  trained on the real series, and the Frechet distance between the Gaussian fits of the max-pooled
  embeddings of real and generated series is reported. The encoder's seed is the evaluation's
  ``seed``; with ``cache_dir`` the trained encoder is kept there (named by a digest of everything
  that decides it) and reused by the same command.
* ``correlational`` (Diffusion-TS, :mod:`diffkit.metrics.correlational`): the l1 distance of the lag-0
  cross-correlations of the two sets, / 10.
* ``discriminative`` and ``predictive`` (TimeGAN, :mod:`diffkit.metrics.posthoc_rnn`): a post-hoc GRU
  told to separate real from generated (|balanced accuracy - 1/2|), or trained on the generated series to
  predict the last channel one step ahead and scored by its MAE on the real ones; seeded by the
  evaluation's ``seed``, the authors' iterations (2000, 5000) unless given.

As Diffusion-TS (Yuan & Qiao 2024, ``Utils/context_fid.py`` and ``Experiments/metric_*.ipynb``) the
real series are the model's training series (the run's own data set, length and channels; the first
``ref_num`` of them, default as many as the samples), and both sets are scored on the [0, 1] scale
((x + 1) / 2, :func:`diffkit.timeseries.to_unit_range`). Each metric is one run, or ``repeats`` runs
seeded ``seed``, ``seed`` + 1, ... (:func:`repeated_runs`: the mean +- the 95% t-interval half-width, as
Diffusion-TS ``Utils/metric_utils.py`` ``display_scores`` over its 5 runs); the samples are drawn once and
only each metric's own randomness (encoder, GRUs) is redrawn, so correlational's runs are equal.
A run on a series file (``dataset = "series"``, :mod:`diffkit.series_files`) is scored against ``ref_num``
windows evenly spaced over its training windows, or over its held-out windows with ``test_fraction`` > 0
(scaled with the training rows' min and max; a warning when they leave [-1, 1]); the file must be the
one it was trained on (same SHA-256).
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

from .errors import DiffkitError, DiffkitRuntimeWarning, check_range

SERIES_METRICS = ("context-fid", "correlational", "discriminative", "predictive")
SERIES_BOUND_METRICS = ("nll", "nll-strided")  # of diffkit.evaluation.NLL_METRICS: a series model's own bound
ENCODER_KIND = "context-fid encoder"
# train_ts2vec's recipe (batch 8, AdamW lr 1e-3, alpha 0.5, crops, NaN rule, the averaged initial
# weights): a cached encoder is reused only under the recipe it was trained with; bump on a change
ENCODER_RECIPE = 2


def checkpoint_is_series(checkpoint) -> bool:
    """True when a diffkit checkpoint (file or run folder) holds a time-series model (header only)."""
    from .checkpoint import peek_metadata
    from .models.network import is_series_model
    path = Path(checkpoint) / "latest.safetensors" if Path(checkpoint).is_dir() else Path(checkpoint)
    meta = peek_metadata(path) if path.is_file() else None
    return bool(meta) and is_series_model(meta.get("unet") or {})


def check_metrics_fit(names: Sequence[str], checkpoint, samples) -> bool:
    """One-line errors for metrics that do not fit the source; True for a time-series checkpoint."""
    asked = [m for m in names if m in SERIES_METRICS]
    if checkpoint is None:
        if asked:
            raise DiffkitError(f"{asked[0]} scores the samples of a time-series checkpoint; use --checkpoint "
                               f"(a folder of PNGs holds images)")
        return False
    series = checkpoint_is_series(checkpoint)
    if series:
        other = [m for m in names if m not in SERIES_METRICS + SERIES_BOUND_METRICS]
        if other:
            raise DiffkitError(f"metric {other[0]!r} is for images; {checkpoint} is a time-series model: use "
                               f"--metrics {','.join(SERIES_METRICS + SERIES_BOUND_METRICS)}")
    elif asked:
        if not Path(checkpoint).exists():
            raise DiffkitError(f"checkpoint {checkpoint} does not exist")
        raise DiffkitError(f"metric {asked[0]!r} is for time series; {checkpoint} is an image model")
    return series


def context_fid_encoder(reference, *, iterations: int, seed: int, device, cache_dir=None, identity: dict):
    """(TS2Vec encoder trained on ``reference`` in [0, 1], whether it came from the cache)."""
    from . import checkpoint as ckpt
    from .metrics.ts2vec import TS2VecConfig, TS2VecEncoder, train_ts2vec
    from .sample_cache import key_digest
    config = TS2VecConfig(input_dims=int(reference.shape[1]))
    key = {**identity, "recipe": ENCODER_RECIPE, "iterations": iterations, "seed": seed,
           "ts2vec": dataclasses.asdict(config),
           "device": str(device).split(":")[0]}
    path = None if cache_dir is None else Path(cache_dir) / f"context_fid_encoder_{key_digest(key)}.safetensors"
    if path is not None and path.is_file():
        tensors, meta = ckpt.load_checkpoint(path)
        if meta.get("kind") == ENCODER_KIND and meta.get("key") == key:
            encoder = TS2VecEncoder(config)
            ckpt.load_state_dict_checked(encoder, tensors, str(path))
            return encoder.to(device).requires_grad_(False).eval(), True
    encoder = train_ts2vec(reference, iterations, seed=seed, device=device, config=config)
    if path is not None:
        ckpt.save_checkpoint(path, encoder.state_dict(), {"kind": ENCODER_KIND, "key": key})
    return encoder, False


def file_reference(cfg: dict, unet: dict, scaling: dict, data_dir=None, split=None):
    """(cache identity, reference windows, split, path, labels) of a run on a series file: its held-out windows
    when it was trained with ``test_fraction`` > 0, else its training windows (``split`` "test" / "train":
    those); the labels of a ``label_column`` run are left out of the values, decide which windows are kept
    (:func:`diffkit.series_files.load_file_series`) and are returned, one per window (else None); the file
    must be unchanged. The
    file is ``data_dir`` when given (the file moved since training), else the first of ``data_dir`` as given
    to training and the absolute path training resolved it to whose SHA-256 is the one training recorded (a
    relative name read from another folder may be another file)."""
    from .series_files import check_series_file, file_digest, load_file_series
    expected = scaling.get("sha256")
    given, resolved = cfg.get("data_dir"), scaling.get("resolved_file")
    if data_dir is not None:
        check_series_file(Path(data_dir))
        candidates = [str(data_dir)]
    else:  # one name per file: a relative name and its resolved path are often the same file
        candidates = [p for p in (given, resolved) if p and Path(p).is_file()]
        if len(candidates) == 2 and Path(candidates[0]).resolve() == Path(candidates[1]).resolve():
            candidates = candidates[:1]
    path = next((p for p in candidates if expected is None or file_digest(p) == expected), None)
    if candidates and path is None:  # hashed before parsing: a parse error must not hide this
        if data_dir is not None:
            raise DiffkitError(f"--data-dir {str(data_dir)!r} is not the file this run was trained on (its SHA-256 "
                               f"differs from the one in the checkpoint); give that file")
        others = f" (nor {candidates[1]})" if len(candidates) > 1 else ""
        raise DiffkitError(f"{candidates[0]}{others} is not the file this run was trained on (its SHA-256 differs); "
                           f"restore that file")
    if path is None:
        relative = f" (relative to the folder training ran in: {resolved})" if given and resolved and \
            not Path(given).is_absolute() else ""
        raise DiffkitError(f"the run's series file {given!r} is not there{relative}; the metrics need it (the "
                           f"reference windows): restore it")
    split = split or ("test" if cfg.get("test_fraction", 0.0) > 0 else "train")
    label_column = cfg.get("label_column", "")
    dataset = load_file_series(path, seq_length=unet["seq_length"], test_fraction=cfg.get("test_fraction", 0.0),
                               drop_columns=cfg.get("drop_columns", ""), label_column=label_column,
                               train=split == "train")
    digest = dataset.source["sha256"]
    data = {"dataset": "series", "sha256": digest, "split": split, "seq_length": unet["seq_length"],
            "channels": unet["in_channels"], "drop_columns": cfg.get("drop_columns", ""),
            "test_fraction": cfg.get("test_fraction", 0.0), "reference_windows": "evenly spaced",
            **({"label_column": label_column} if label_column else {})}
    return data, dataset.series, split, path, dataset.labels


def spread_indices(count: int, wanted: int):
    """``wanted`` of ``range(count)`` evenly spaced from the first to the last (round half up, so distinct)."""
    import numpy as np
    return np.floor(np.linspace(0, count - 1, wanted) + 0.5).astype(np.int64)


def repeated_runs(runs: Sequence[dict]) -> dict:
    """``runs`` (one metric's result per seed, each with its ``value``) -> ``{"value": mean, "mean", "interval",
    "runs"}``: ``interval`` is the 95% t-interval half-width t(0.975, n - 1) * std(ddof=1) / sqrt(n)
    (Diffusion-TS ``Utils/metric_utils.py`` ``display_scores``)."""
    import numpy as np
    from scipy import stats
    values = np.asarray([run["value"] for run in runs], dtype=np.float64)
    mean = float(values.mean())
    interval = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return {"value": mean, "mean": mean, "interval": interval, "runs": list(runs)}


def evaluate_series(names: Sequence[str], *, checkpoint, num: int, sampler: str, steps: int, eta=None,
                    thresholding: Optional[str] = None, ref_num: Optional[int] = None, batch_size: int = 250,
                    seed: int = 0, device="cpu", use_ema: bool = True, mixed_precision: str = "no",
                    compile: str = "no", progress: bool = False, cache_dir=None,
                    encoder_iterations: Optional[int] = None, discriminative_iterations: int = 2000,
                    predictive_iterations: int = 5000, data_dir=None, refused: Optional[dict] = None,
                    repeats: int = 1, nll_num: int = 256, nll_split: str = "test", nll_stride: int = 10,
                    nll_dense_below: int = 20, restarts=None, gamma=None, tau=None, spacing: Optional[str] = None,
                    final: Optional[str] = None, nfe: Optional[int] = None,
                    flow_shift: Optional[float] = None) -> dict:
    """The series metrics ``names`` of ``num`` samples of a time-series checkpoint (see the module doc);
    the result has :func:`diffkit.evaluation.evaluate`'s form. ``nll`` / ``nll-strided``: the model's
    variational bound in bits per value (DDPM eq. 5; :func:`bound_series` says which series), one run,
    nothing sampled when only they are asked. A class-conditional model (a file's ``label_column``) is sampled
    with the labels of ``num`` windows evenly spaced over the reference split (:func:`sample_labels_of`: the
    reference windows' own labels when ``num`` = ``ref_num``), so its classes keep the file's proportions,
    and its bound is conditioned on each window's own label; without known labels the classes 0, 1, ..., K-1
    are drawn in turn and the bound is the null class's. ``data_dir``: a run's series file where it
    is now (it must have the SHA-256 training recorded; refused for sines). ``refused``: image-only options given
    ({flag: value}). ``repeats`` > 1: each metric ``repeats`` times on the same samples, seeded ``seed`` + i
    (:func:`repeated_runs`). ``restarts`` (the restart sampler's intervals), ``spacing``, ``final``, ``nfe``,
    ``flow_shift``, ``gamma``, ``tau``: as :func:`diffkit.evaluation.evaluate` takes them.
    Everything that can fail on user input is checked before training or sampling."""
    from .evaluation import (MIN_EVAL_SAMPLES, NLL_SPLITS, _frechet, bound_metrics, check_sample_count,
                             generate_samples, restart_options, steps_or_nfe, stochasticity_options)
    from .errors import check_choice
    from .loading import load_denoiser
    from .metrics.context_fid import context_fid_statistics
    from .metrics.correlational import correlational_score
    from .metrics.posthoc_rnn import discriminative_score, predictive_score
    from .metrics.ts2vec import ts2vec_embeddings
    from .sample_cache import open_cache
    from .samplers.ddim import parse_eta
    from .sampling import check_eta, resolve_sampler
    from .timeseries import load_series_dataset, to_unit_range
    given = [flag for flag, value in (refused or {}).items() if value]
    if given:
        raise DiffkitError(f"{given[0]} applies to image models; {checkpoint} is a time-series model (its metrics "
                           f"use its own training series)")
    sample_names = [m for m in names if m in SERIES_METRICS]
    bound_names = [m for m in names if m in SERIES_BOUND_METRICS]
    check_sample_count(num, unit="series")
    check_range("repeats", repeats, 1, None, integer=True)
    if bound_names:
        check_range("nll_num", nll_num, MIN_EVAL_SAMPLES, None, integer=True)
        check_choice("nll_split", nll_split, NLL_SPLITS)
    if repeats > 1 and not sample_names:
        raise DiffkitError(f"repeats {repeats} applies to {', '.join(SERIES_METRICS)}; the bound "
                           f"({', '.join(bound_names)}) is one run: leave it at 1")
    if encoder_iterations is not None:
        check_range("encoder_iterations", encoder_iterations, 1, None, integer=True)
    check_range("discriminative_iterations", discriminative_iterations, 1, None, integer=True)
    check_range("predictive_iterations", predictive_iterations, 1, None, integer=True)
    info, spacing, final = resolve_sampler(sampler, spacing, final)
    info.check_not_adaptive("eval")
    check_eta(info.name, eta)
    options = {} if thresholding is None else {"thresholding": thresholding}
    options.update({key: value for key, value in (("spacing", spacing), ("final", final)) if value})
    if eta is not None:
        options["eta"] = parse_eta(eta)
    info = info.with_options(restart_options(info, restarts, stochasticity_options(info, options, gamma=gamma,
                                                                                   tau=tau)))
    if flow_shift is not None:
        options["flow_shift"] = flow_shift
    denoiser = load_denoiser(checkpoint, use_ema=use_ema, device=device, mixed_precision=mixed_precision,
                             compile=compile)
    if sample_names:  # the bound alone samples nothing: its steps do not matter
        steps = steps_or_nfe(denoiser, info.name, steps, nfe, options)
    cfg, unet = denoiser.meta.get("config") or {}, denoiser.meta["unet"]
    split = "train"
    if data_dir is not None and cfg.get("dataset") != "series":
        raise DiffkitError(f"--data-dir applies to image models and runs on a series file; {checkpoint} is a "
                           f"{cfg.get('dataset', 'sines')} model (its metrics use its own training series)")
    bound_data = bound_cond = None
    if bound_names:  # before any sampling: a missing split fails first
        bound_data, bound_labels = bound_series(cfg, unet, denoiser.meta, nll_split, nll_num, checkpoint, data_dir)
        check_sample_count(int(bound_data.shape[0]), "NLL series", unit="series")
        bound_cond = bound_condition(denoiser, bound_labels)
    if not sample_names:
        metrics = bound_metrics(bound_names, denoiser, bound_data, nll_stride=nll_stride,
                                nll_dense_below=nll_dense_below, batch_size=batch_size, seed=seed, progress=progress,
                                cond=bound_cond)
        settings = {"metrics": list(names), "seed": seed, "checkpoint": str(checkpoint), "batch_size": batch_size,
                    "ema": bool(use_ema), "mixed_precision": mixed_precision, "compile": compile,
                    "nll_split": nll_split, "nll_num_images": int(bound_data.shape[0]), "nll_unit": "series",
                    **bound_settings(bound_cond)}
        return {"metrics": {m: metrics[m] for m in names}, "settings": settings}
    if cfg.get("dataset") == "series":
        data, train, split, path, train_labels = file_reference(cfg, unet, denoiser.meta.get("series_scaling") or {},
                                                                data_dir)
        what = f"{'held-out' if split == 'test' else 'training'} windows of {path}"
    else:
        data = {"dataset": cfg.get("dataset", "sines"), "num_series": cfg.get("num_series", 10000),
                "seq_length": unet["seq_length"], "channels": unet["in_channels"]}
        train = load_series_dataset(data["dataset"], num_series=data["num_series"], seq_length=data["seq_length"],
                                    channels=data["channels"], train=True).series
        what, train_labels = "training series (num_series)", None
    wanted = ref_num or num
    if wanted > train.shape[0]:
        raise DiffkitError(f"{'--ref-num' if ref_num else '--num'} {wanted} asks for more reference series than the "
                           f"run's {train.shape[0]} {what}; give at most {train.shape[0]}"
                           f"{'' if ref_num else ' with --ref-num'}")
    # sines: independent draws, the first ones; a file's stride-1 windows: spread over the whole split
    # (its first N windows would cover only its first N + L - 1 rows)
    reference = train[spread_indices(train.shape[0], wanted)] if data["dataset"] == "series" else train[:wanted]
    if split == "test" and bool((reference.abs() > 1).any()):
        warnings.warn(f"the held-out windows of {path} reach {float(reference.min()):.3g}..{float(reference.max()):.3g}"
                      f" on the training rows' [-1, 1] scale while samples are clamped to [-1, 1]: the scores also "
                      f"measure the shift between the training and held-out periods", DiffkitRuntimeWarning)
    check_sample_count(int(reference.shape[0]), "reference series", unit="series")
    if "predictive" in names and data["channels"] < 2:
        raise DiffkitError(f"predictive predicts the last channel from the others; {checkpoint} makes series of "
                           f"{data['channels']} channel (at least 2 are needed)")
    encoders = {}  # run seed -> (encoder, cached, seconds)
    seeds = [seed + i for i in range(repeats)]
    if "context-fid" in names:
        if encoder_iterations is None:  # the authors' TS2Vec rule: 200 for <= 100,000 values, else 600
            from .metrics.ts2vec import authors_iterations
            encoder_iterations = authors_iterations(reference.numel())
        for run_seed in seeds:
            start = time.perf_counter()
            encoder, cached = context_fid_encoder(to_unit_range(reference), iterations=encoder_iterations,
                                                  seed=run_seed, device=device, cache_dir=cache_dir,
                                                  identity={**data, "num_reference": int(reference.shape[0])})
            encoders[run_seed] = encoder, cached, time.perf_counter() - start
    labels = sample_labels_of(denoiser, num, train_labels)
    start = time.perf_counter()
    samples = generate_samples(denoiser, num, sampler=info.name, steps=steps, seed=seed, batch_size=batch_size,
                               labels=labels, device=device, progress=progress,
                               cache=open_cache(cache_dir, denoiser), **options)
    sampling_seconds = time.perf_counter() - start
    real, generated = to_unit_range(reference), to_unit_range(samples)
    counts = {"num_samples": int(samples.shape[0]), "num_reference": int(reference.shape[0])}

    def score(name: str, run_seed: int) -> dict:
        start = time.perf_counter()
        if name == "context-fid":
            encoder, cached, encoder_seconds = encoders[run_seed]
            with warnings.catch_warnings():  # _frechet warns once about too few series for 320-d features
                warnings.simplefilter("ignore", RuntimeWarning)
                reference_stats = context_fid_statistics(encoder, real, batch_size)
            features = ts2vec_embeddings(encoder, generated, batch_size)
            result = _frechet(features, reference_stats, encoder.config.output_dims, "Context-FID", "series")
            result.update(encoder_iterations=encoder_iterations, encoder_seed=run_seed, encoder_cached=cached,
                          encoder_seconds=encoder_seconds)
        elif name == "correlational":
            result = {"value": correlational_score(real, generated), **counts}
        elif name == "discriminative":
            result = {"value": discriminative_score(real, generated, iterations=discriminative_iterations,
                                                    seed=run_seed, device=device),
                      **counts, "iterations": discriminative_iterations, "seed": run_seed}
        else:
            result = {"value": predictive_score(real, generated, iterations=predictive_iterations, seed=run_seed,
                                                device=device),
                      **counts, "iterations": predictive_iterations, "seed": run_seed}
        result["seconds"] = time.perf_counter() - start
        return result
    metrics = {name: score(name, seed) if repeats == 1 else repeated_runs([score(name, s) for s in seeds])
               for name in sample_names}
    if bound_names:
        metrics.update(bound_metrics(bound_names, denoiser, bound_data, nll_stride=nll_stride,
                                     nll_dense_below=nll_dense_below, batch_size=batch_size, seed=seed,
                                     progress=progress, cond=bound_cond))
        metrics = {m: metrics[m] for m in names}
    settings = {"metrics": list(names), "seed": seed, "checkpoint": str(checkpoint), "sampler": info.name,
                "steps": steps, "nfe": info.nfe(steps, final), "num_samples": num, **options,
                "reference": data["dataset"], "reference_split": split, "num_reference": int(reference.shape[0]),
                "batch_size": batch_size, "ema": bool(use_ema), "mixed_precision": mixed_precision,
                "compile": compile, "sampling_seconds": sampling_seconds,
                **({} if labels is None else {"sample_labels": "0..K-1 in turn" if train_labels is None else
                                              "the reference split's windows (evenly spaced)"}),
                **({"repeats": repeats} if repeats > 1 else {}),
                **({"nll_split": nll_split, "nll_num_images": int(bound_data.shape[0]), "nll_unit": "series",
                    **bound_settings(bound_cond)} if bound_names else {}),
                **({"cache_dir": str(cache_dir)} if cache_dir is not None else {})}
    return {"metrics": metrics, "settings": settings}


def sample_labels_of(denoiser, num: int, window_labels=None):
    """The class labels of ``num`` samples of a class-conditional series model (None for an unconditional
    one): with the labels of the reference split's windows known (``window_labels``), those of ``num``
    windows evenly spaced over it (:func:`spread_indices`; the reference windows' own when ``num`` is their
    number), so the samples' classes have the proportions of the windows they are scored against; otherwise
    0, 1, ..., K-1 in turn (:func:`diffkit.evaluation.sample_labels`)."""
    from .evaluation import sample_labels
    labels = sample_labels(denoiser, num)
    if labels is None or window_labels is None:
        return labels
    return window_labels[spread_indices(int(window_labels.shape[0]), num)].clone()


def bound_condition(denoiser, labels):
    """``cond`` of the bound of ``bound_series``' windows: ``{"y": labels}`` for a class-conditional model and
    windows with known labels (each window's bound given its own class), else None (the unconditional model,
    or the null class of a conditional one)."""
    from .evaluation import sample_labels
    return {"y": labels} if labels is not None and sample_labels(denoiser, 1) is not None else None


def bound_settings(cond) -> dict:
    """What the result's settings say about the bound's condition."""
    return {} if cond is None else {"nll_condition": "each window's own label"}


def bound_series(cfg: dict, unet: dict, meta: dict, split: str, limit: int, checkpoint, data_dir=None):
    """(series (N, C, L) in [-1, 1], their labels (N,) or None) whose bound ``nll`` / ``nll-strided`` report:
    ``split`` "test" is Sines' test draw (seed 2024, ``limit`` series) or a series file's held-out windows
    (``test_fraction`` > 0), "train" the run's first ``limit`` training series or its training windows; of a
    file's windows ``limit`` evenly spaced ones (:func:`spread_indices`), with their labels for a
    ``label_column`` run. The decoder term is DDPM's discretised Gaussian (Sec. 3.3, eq. 13): the probability
    of a bin of width 2/255 centred on each value as it is (the values are not rounded to a grid of 256
    levels), the bin of a value below -0.999 or above 0.999 open to -inf or +inf (held-out values, scaled with
    the training rows' min and max, can leave [-1, 1] and get such open bins); so the value compares models
    of the same data and scaling, and is not a continuous density."""
    from .timeseries import load_series_dataset
    if cfg.get("dataset") == "series":
        if split == "test" and not cfg.get("test_fraction", 0.0):
            raise DiffkitError(f"{checkpoint} was trained with test_fraction=0: its file holds out no rows for the "
                               f"bound; use --nll-split train (or train with test_fraction > 0)")
        _, windows, _, _, labels = file_reference(cfg, unet, meta.get("series_scaling") or {}, data_dir, split=split)
        index = spread_indices(windows.shape[0], min(limit, windows.shape[0]))
        return windows[index], None if labels is None else labels[index]
    count = limit if split == "test" else min(limit, cfg.get("num_series", 10000))
    return load_series_dataset(cfg.get("dataset", "sines"), num_series=count, seq_length=unet["seq_length"],
                               channels=unet["in_channels"], train=split == "train").series, None
