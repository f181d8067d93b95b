"""``diffkit eval``: metrics of a checkpoint's samples (or of a folder of PNGs) and its NLL on the test
set (``--nll-split train``: on the training set).

Prints a table and writes JSON. Metrics: fid, is, kid, pr (need the Inception weights file),
fd-classifier, classifier-score, class-accuracy, confidence (need an evaluator from
'diffkit train-evaluator'), nll (full variational bound, bits/dim), nll-strided (faster
estimate: every t below --nll-dense-below, then every --nll-stride-th t) and rate-distortion (DDPM
Sec. 4.3, Fig. 5: bits sent by each of those t against the RMSE of the x_0 prediction, on the
--nll-num images; its table goes into the JSON and its plot beside it, OUT_rate_distortion.png).
A time-series checkpoint (``diffkit train --dataset sines``) takes only context-fid, correlational,
discriminative and predictive, and nll / nll-strided (its bound in bits per value on --nll-num series of
--nll-split: Sines' test draw or a file's held-out windows), the first four of --num samples against as many
of its training series (--ref-num):
Context-FID under a TS2Vec encoder trained on them with --seed (--context-fid-iterations; kept in
--cache-dir and reused), Diffusion-TS's correlational score, TimeGAN's discriminative and predictive
scores (post-hoc GRUs seeded by --seed; --discriminative-iterations, --predictive-iterations). --repeats N
scores each N times on the same samples (seeds --seed, --seed + 1, ...): mean +- the 95% t-interval half-width.
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

from ._common import (IMAGE_DATASETS, add_flow_shift_flag, add_lora_flags, add_network_flags, add_progress_flag,
                      add_solver_flags, add_thresholding_flag, check_flow_shift, check_lora_flags, check_output_file,
                      check_writable_dir, dataset_arg, default_sampling, missing_dirs, path_arg, positive_int,
                      removed_if_empty_on_failure, seed_int, tolerance_options)
from ._common import add_freeu_flag, add_stochasticity_flags, check_freeu_checkpoint


def add_source_flags(p) -> None:
    """Flags shared by ``eval`` and ``experiment``: reference data, evaluator, Inception, device."""
    p.add_argument("--ref", type=dataset_arg(IMAGE_DATASETS),
                   help="reference data set (test split): digits, mnist, fashion-mnist, cifar10, "
                        "folder (default: the checkpoint's training data set)")
    p.add_argument("--data-dir", type=path_arg,
                   help="folder with the reference data set's files (eval of a run on a series "
                        "file: that file where it is now, same SHA-256)")
    p.add_argument("--ref-num", type=positive_int, help="use only the first N reference images")
    p.add_argument("--evaluator", type=path_arg,
                   help="evaluator .safetensors from 'diffkit train-evaluator' (classifier metrics)")
    p.add_argument("--inception-weights", type=path_arg, help="pt_inception-2015-12-05-6726825d.pth (fid/is/kid/pr); "
                                                              "default $DIFFKIT_INCEPTION_WEIGHTS or ~/.cache/diffkit/")
    p.add_argument("--batch-size", type=positive_int, default=250, help="images per forward pass (default 250)")
    p.add_argument("--seed", type=seed_int, default=0, help="sample i starts from the noise of seed + i (default 0)")
    add_network_flags(p)
    p.add_argument("--cache-dir", type=path_arg,
                   help="keep each finished batch of samples here; the same command run again "
                        "reuses them, so a stopped run continues where it stopped")
    add_progress_flag(p)


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint or a folder of images", description=__doc__)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=path_arg, help="a diffkit checkpoint (.safetensors)")
    source.add_argument("--samples", type=path_arg, help="a folder of same-sized PNGs made elsewhere")
    add_lora_flags(p)
    p.add_argument("--metrics", default="fd-classifier", help="comma-separated list (default fd-classifier); "
                   "fid, is, kid, pr, fd-classifier, classifier-score, class-accuracy, confidence, nll, nll-strided, "
                   "rate-distortion; context-fid, correlational, discriminative, predictive (time-series checkpoints)")
    p.add_argument("--num", type=positive_int, default=1000, help="samples to draw (default 1000)")
    p.add_argument("--sampler", help="see 'diffkit samplers' (default ddim; consistency for a consistency model); "
                   "NAME@SPACING:FINAL for another time grid, e.g. unipc:zero")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=positive_int, help="sampling steps (default 50; a consistency model's own, 4, "
                   "with the consistency sampler)")
    g.add_argument("--nfe", type=positive_int, help="network evaluations per sample to spend (picks the step count, "
                   "as diffkit sample --nfe)")
    p.add_argument("--eta", help="DDIM eta: a number >= 0 or sigma_hat")
    add_solver_flags(p, adaptive=False)  # --spacing, --final, --restarts (sample metrics refuse adaptive samplers)
    add_stochasticity_flags(p, ", recorded in the settings")  # --gamma (tcd), --tau (sa-solver)
    add_flow_shift_flag(p)
    add_thresholding_flag(p)
    add_freeu_flag(p)
    p.add_argument("--nll-num", type=positive_int, default=256, help="images for nll (default 256)")
    p.add_argument("--nll-split", choices=("test", "train"), default="test",
                   help="data split of the nll images (default test; train: DDPM Table 1/2's Test (Train) check "
                        "for over-fitting)")
    p.add_argument("--nll-stride", type=positive_int, default=10, help="nll-strided: every k-th t (default 10)")
    p.add_argument("--nll-dense-below", type=positive_int, default=20,
                   help="nll-strided: every t below this (default 20)")
    p.add_argument("--context-fid-iterations", type=positive_int, default=None,
                   help="context-fid: TS2Vec training iterations of batches of 8 (default: the authors' rule, "
                        "200 for at most 100,000 values of reference series, else 600)")
    p.add_argument("--discriminative-iterations", type=positive_int, default=2000,
                   help="discriminative: Adam steps of the post-hoc GRU classifier (default 2000, TimeGAN's)")
    p.add_argument("--predictive-iterations", type=positive_int, default=5000,
                   help="predictive: Adam steps of the post-hoc GRU predictor (default 5000, TimeGAN's)")
    p.add_argument("--repeats", type=positive_int, default=1,
                   help="time-series metrics: compute each N times on the same samples, seeds --seed, --seed + 1, "
                        "...; report mean +- the 95%% t-interval half-width and the runs (default 1)")
    p.add_argument("--save-samples", type=path_arg, help="also write the samples as PNGs into this folder")
    p.add_argument("--out", type=path_arg, default="eval.json", help="JSON file for the results (default eval.json)")
    add_source_flags(p)
    p.set_defaults(func=run)


def rate_distortion_plot_path(out):
    """The rate-distortion plot beside the JSON: ``eval.json`` -> ``eval_rate_distortion.png``."""
    out = Path(out)
    return out.with_name(out.stem + "_rate_distortion.png")


@contextlib.contextmanager
def printed_warnings():
    """Record the warnings of a command's work (RuntimeWarnings every time, not once per place) and
    print each distinct one when it ends, also when it fails, through ``warnings.formatwarning``: the
    command line's format, one line for diffkit's own, category, file and line for any other."""
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            yield caught
    finally:
        for w in {str(w.message): w for w in caught}.values():
            sys.stderr.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line))


def header_line(result: dict) -> str:
    """The line above the table: what was evaluated. The samples (sampler, steps) against the
    reference's test split; the images the NLL metrics bound ("no samples" when they are all)."""
    from ..evaluation import NLL_METRICS
    from ..series_evaluation import SERIES_METRICS
    settings, metrics = result["settings"], list(result["metrics"])
    parts = [f"{settings['num_samples']} samples" if "num_samples" in settings else "no samples"]
    if "sampler" in settings:
        parts[0] += f" ({settings['sampler']}, {settings['steps']} steps)"
    if "num_samples" in settings and "reference" in settings:
        kind = "series" if set(metrics) & set(SERIES_METRICS) else "images"
        parts[0] += (f" vs {settings['num_reference']} {settings['reference']} "
                     f"{settings.get('reference_split', 'test')} {kind}")
    nll = [m for m in metrics if m in NLL_METRICS]
    if nll:  # their images: the first --nll-num of the reference's split (its name is known with a test set)
        dataset = f"{settings['reference']} " if "reference" in settings else ""
        parts.append(f"{', '.join(nll)} on {settings['nll_num_images']} {dataset}{settings['nll_split']} "
                     f"{settings.get('nll_unit', 'images')}")
    return f"{settings.get('checkpoint') or settings.get('samples')}: " + "; ".join(parts)


def run(args) -> int:
    from ..config import resolve_device
    from ..errors import DiffkitError
    from ..evaluation import (check_scoring_files_used, evaluate, format_results, parse_eta, parse_metrics,
                              write_json)
    from ..sampling import final_for, resolve_sampler
    check_lora_flags(args)
    names = parse_metrics(args.metrics)  # validate before loading anything
    check_scoring_files_used(names, inception_weights=args.inception_weights, evaluator=args.evaluator)
    if args.eta is not None:
        parse_eta(args.eta)
    if args.samples is not None:  # nothing is sampled: these were ignored
        for flag, value in (("--sampler", args.sampler), ("--steps", args.steps), ("--nfe", args.nfe),
                            ("--eta", args.eta), ("--restarts", args.restarts), ("--gamma", args.gamma),
                            ("--tau", args.tau), ("--spacing", args.spacing),
                            ("--final", args.final), ("--flow-shift", args.flow_shift),
                            ("--thresholding", args.thresholding),
                            ("--save-samples", args.save_samples), ("--cache-dir", args.cache_dir),
                            ("--lora", args.lora), ("--freeu", args.freeu)):
            if value is not None:
                raise DiffkitError(f"{flag} applies to sampling a --checkpoint; --samples {args.samples!r} are "
                                   f"scored as they are (drop {flag})")
    sampler, steps = default_sampling(args.checkpoint, args.sampler, args.steps, args.nfe, args.spacing)  # header
    info, spacing, final = resolve_sampler(sampler, args.spacing, args.final)
    info = info.with_options(tolerance_options(args, info))  # --restarts (its NFE rule), --gamma, --tau: each its own
    if args.nfe is not None:  # before loading (the grid's own check follows in evaluate)
        info.steps_for_nfe(args.nfe, final or final_for(info, spacing))
    if args.flow_shift is not None:
        check_flow_shift(args.checkpoint, info, args.flow_shift)
    check_freeu_checkpoint(args.checkpoint, args.freeu)
    device = str(resolve_device(args.device))
    # the folders made from here on (--out's too): removed again, if still empty, when a check or the run fails
    new_dirs = [d for folder in (Path(args.out).parent, args.save_samples, args.cache_dir) if folder
                for d in missing_dirs(folder)]
    with removed_if_empty_on_failure(new_dirs):
        check_output_file(args.out, "--out", ".json")
        rd_plot = rate_distortion_plot_path(args.out) if "rate-distortion" in names else None
        if rd_plot is not None:
            check_output_file(rd_plot, "rate-distortion plot", ".png")
        if args.save_samples:
            from ..images import check_image_folder
            check_writable_dir(args.save_samples, "sample directory")
            check_image_folder(args.save_samples, args.num)  # before sampling, not after
        if args.cache_dir is not None:
            check_writable_dir(args.cache_dir, "sample cache directory")
    with printed_warnings() as caught, removed_if_empty_on_failure(new_dirs):
        result = evaluate(args.metrics, checkpoint=args.checkpoint, samples=args.samples, ref=args.ref,
                          data_dir=args.data_dir, num=args.num, sampler=sampler,
                          steps=steps, nfe=args.nfe,
                          spacing=spacing, final=final, eta=args.eta, evaluator=args.evaluator,
                          inception_weights=args.inception_weights,
                          ref_num=args.ref_num, nll_num=args.nll_num, nll_stride=args.nll_stride,
                          nll_dense_below=args.nll_dense_below, nll_split=args.nll_split, batch_size=args.batch_size,
                          seed=args.seed,
                          device=device, use_ema=args.ema, thresholding=args.thresholding,
                          save_samples=args.save_samples, mixed_precision=args.mixed_precision, compile=args.compile,
                          progress=args.progress, cache_dir=args.cache_dir,
                          context_fid_iterations=args.context_fid_iterations,
                          discriminative_iterations=args.discriminative_iterations,
                          predictive_iterations=args.predictive_iterations, repeats=args.repeats,
                          restarts=args.restarts, gamma=args.gamma, tau=args.tau, lora=args.lora,
                          lora_any_base=args.lora_any_base,
                          flow_shift=args.flow_shift, freeu=args.freeu)
    result["warnings"] = list(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))  # as printed
    settings = result["settings"]
    source = settings.get("checkpoint") or settings.get("samples")
    print(header_line(result))
    print(format_results(result["metrics"]))
    if rd_plot is not None:
        from ..progressive import plot_rate_distortion
        rd = result["metrics"]["rate-distortion"]
        rd["plot"] = str(plot_rate_distortion(rd, rd_plot, rd["num_timesteps"], title=str(source)))
        print(f"wrote {rd['plot']}")
    path = write_json(result, args.out)
    print(f"wrote {path}")
    return 0
