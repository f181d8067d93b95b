"""``diffkit edit --series FILE``: forecast (``--horizon H``) or impute (empty / NaN cells) a
time-series checkpoint's data (docs/editing.md, "Series: forecast and impute"), with
:func:`diffkit.forecast` / :func:`diffkit.impute`.

The file is a .csv (header row) or .npy ``(rows, columns)`` like the training file: a CSV's columns
(after the checkpoint's ``drop_columns``) must be the model's, by name and in order; an .npy's count
must match and its columns are taken in the model's order. A model of a series file reads and writes
the file's own units (the checkpoint's ``series_scaling``; the output is mapped back as generated,
not clamped to the training range), a Sines model its own values. Forecasting: the rows are the
history (no missing value; the last ``seq_length - H`` are used), a horizon beyond ``seq_length - 1``
rolled window after window (``--chunk K`` new rows each, default ``seq_length // 4``; a horizon above
``seq_length / 4`` that fits one window measured better with ``--chunk seq_length//4`` too); imputation:
a file longer than ``seq_length`` is imputed window by window (starts ``--chunk K`` rows apart, default
``seq_length // 2``, each keeping its rows before start + (L + K) // 2); a file with
no missing value is written back unchanged, nothing sampled (:mod:`diffkit.forecasting`). Before
sampling a line gives the windows per sample and says when ``--chunk`` is unused (no horizon limit). ``--out`` (.csv or
.npy) gets ``--num`` samples: a CSV with a ``sample`` column then the model's columns (forecast: the H
new rows of each sample; impute: every row, the given values exactly as read), or an array (num,
rows, columns), written sample by sample into a temp file renamed at the end (:func:`write_samples`).
Sample i uses ``--seed`` + i, whatever ``--batch-size`` and ``--num``: ``--batch-size`` counts windows
per sampler call (default ``auto``, the memory-aware size; a batch out of memory is halved and redrawn);
an imputation draws all samples' windows in one :func:`diffkit.impute` (independent windows batched
together), a forecast batches its samples. Defaults: ``--sampler ddpm``, ``--reconstruction-weight 1``.
A class-conditional checkpoint takes ``--class K``, ``--guidance-scale W``, ``--guidance-rescale PHI``,
``--guidance-interval T_LO T_HI`` and ``--apg-eta/--apg-norm-threshold/--apg-momentum`` as ``diffkit sample``
does (:func:`series_guidance`); its ``label_column`` in the CSV is left out of the values and, without
``--class``, gives the classes (:func:`file_label`): a forecast's history rows must share one label; an
imputation's windows each take the label their rows share (:func:`diffkit.forecasting.window_classes`), a
window across a change of label the null class; without either the null class, refused when the checkpoint's
``p_uncond`` is 0 (a null class never trained), as are a drawn window across a change of label
(:func:`drawn_window_classes`) and ``--guidance-scale`` there.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..errors import DiffkitError

SERIES_OUT_SUFFIXES = (".csv", ".npy")
FORECAST_MISSING = "forecasting needs every history value (leave out --horizon to impute the missing cells)"


def check_series_flags(args) -> None:
    """Flags of the image edits refused with ``--series``, and the series flags' own checks (no checkpoint)."""
    for flag, value in (("--images", args.images), ("--mask", args.mask), ("--strength", args.strength),
                        ("--interpolate", args.interpolate), ("--method", args.method), ("--t", args.t),
                        ("--prompt", args.prompts), ("--posterior", args.posterior),
                        ("--paste-known", args.paste_known or None), ("--negative-prompt", args.negative_prompt),
                        ("--clip-skip", args.clip_skip), ("--prompt-2", args.prompts_2),
                        ("--negative-prompt-2", args.negative_prompt_2), ("--prompt-3", args.prompts_3),
                        ("--negative-prompt-3", args.negative_prompt_3),
                        ("--max-sequence-length", args.max_sequence_length),
                        ("--cfg-trunc-ratio", args.cfg_trunc_ratio), ("--cfg-normalization", args.cfg_norm_cap)):
        if value is not None:
            raise DiffkitError(f"{flag} applies to image edits; --series forecasts (--horizon) or imputes a series")
    out = Path(args.out)
    if out.suffix.lower() not in SERIES_OUT_SUFFIXES:
        raise DiffkitError(f"--out {args.out!r} must end in .csv or .npy (the forecast or imputed series)")
    path = Path(args.series)
    if path.suffix.lower() not in SERIES_OUT_SUFFIXES:
        raise DiffkitError(f"--series {args.series!r} has the suffix {path.suffix or '(none)'!r}; allowed: .csv "
                           f"(header row) or .npy (rows, columns)")
    if not path.is_file():
        raise DiffkitError(f"--series {args.series!r} does not exist or is not a file; give a .csv or .npy file")
    if out.resolve() == path.resolve():
        raise DiffkitError(f"--out {args.out!r} is the --series file; give another file")
    guidance_request(args).check(args.sampler or "ddpm")  # --guidance-rescale / --guidance-interval need a scale


def _header(path: Path) -> list:
    """The header row of a CSV (stripped names), or [] when there is none to read."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        return [name.strip() for name in next(csv.reader(f), [])]


def read_window(path: Path, meta: dict, allow_missing: bool):
    """(values float64 (rows, F) in the file's units, column names, scaling or None) of ``--series``,
    its columns checked against the model's; the checkpoint's ``drop_columns`` and ``label_column`` are left
    out when the CSV has them (the labels are read by :func:`file_label`)."""
    from ..series_files import SeriesScaling, parse_columns, read_series_file
    scaling = meta.get("series_scaling")
    channels = meta["unet"]["in_channels"]
    drop = []
    if path.suffix.lower() == ".csv":
        dropped = parse_columns((meta.get("config") or {}).get("drop_columns") or "") + [label_column(meta)]
        header = _header(path)
        drop = [name for name in dropped if name and name in header]
    values, columns = read_series_file(path, drop, allow_missing=allow_missing, missing_hint=FORECAST_MISSING)
    if scaling is not None:
        expected = list(scaling["columns"])
        if path.suffix.lower() == ".npy":  # an array has no names: its columns are taken in the model's order
            if len(columns) != len(expected):
                raise DiffkitError(f"--series {str(path)!r} has {len(columns)} columns; the model was trained on "
                                   f"{len(expected)} ({', '.join(expected)}, in this order)")
            return values, expected, SeriesScaling.from_meta(scaling)
        if columns != expected:
            raise DiffkitError(f"--series {str(path)!r} has the columns {', '.join(columns)}; the model was trained on "
                               f"{', '.join(expected)} (in this order)")
        return values, columns, SeriesScaling.from_meta(scaling)
    if len(columns) != channels:
        raise DiffkitError(f"--series {str(path)!r} has {len(columns)} columns; the model's series have {channels}")
    return values, columns, None


def label_column(meta: dict) -> str:
    """The CSV column of class labels the checkpoint was trained with (its config's ``label_column``), or ""."""
    return (meta.get("config") or {}).get("label_column") or ""


def file_labels(path: Path, meta: dict, first: int, rows: int, what: str):
    """The labels (int64, one per row) of ``--series``' label column (the checkpoint's ``label_column``) in
    the rows ``first`` .. ``rows`` - 1 (those the forecast or imputation reads, from 0), or None when the file
    has no such column. Only those rows' labels are read (a forecast's earlier rows may hold any text, or
    none). A row without its label or a label outside the model's classes is a one-line error (give
    ``--class K`` instead)."""
    from ..series_files import read_label_column
    column = label_column(meta)
    if not column or path.suffix.lower() != ".csv" or column not in _header(path):
        return None
    labels = read_label_column(path, column, first, hint=f" that the {what} reads (or give --class K)")
    if len(labels) != rows:
        raise DiffkitError(f"--series {str(path)!r} has {rows} rows but {len(labels)} labels in column {column!r}; "
                           f"every row needs its label (or give --class K)")
    labels, classes = labels[first:], meta["unet"]["num_classes"]
    if labels.max() >= classes:
        raise DiffkitError(f"--series {str(path)!r}: label column {column!r} holds {labels[labels >= classes][0]}; "
                           f"the model's classes are 0..{classes - 1}")
    return labels


def file_label(path: Path, meta: dict, first: int, rows: int, what: str):
    """The labels of :func:`file_labels`: the one class they hold, as a training window takes the label its
    rows share (:func:`diffkit.series_files.window_labels`); the labels themselves (an array) when an
    imputation's rows hold several (:func:`run_series` gives each window its own,
    :func:`diffkit.forecasting.window_classes`); None without a label column. A forecast's history rows of
    different labels are a one-line error (give ``--class K`` or rows of one label)."""
    labels = file_labels(path, meta, first, rows, what)
    if labels is None:
        return None
    used = sorted(set(labels.tolist()))
    if len(used) == 1:
        return used[0]
    if what == "imputation":
        return labels
    raise DiffkitError(f"--series {str(path)!r}: label column {label_column(meta)!r} holds {', '.join(map(str, used))} "
                       f"in the rows {first}..{rows - 1} (from 0) that the {what} reads; give --class K (one class "
                       f"for every sample) or rows of one label")


def guidance_request(args, label=None):
    """``diffkit sample``'s :class:`~diffkit.commands.sample.GuidanceRequest` of ``--guidance-scale``,
    ``--guidance-convention``, ``--guidance-rescale``, ``--guidance-interval`` and the ``--apg-*`` flags (and the
    class ``label``, if one)."""
    from .sample import GuidanceRequest
    return GuidanceRequest(classes=None if label is None else [label], guidance_scale=args.guidance_scale,
                           convention=args.guidance_convention, rescale=args.guidance_rescale,
                           interval=tuple(args.guidance_interval) if args.guidance_interval else None,
                           apg_eta=args.apg_eta, apg_norm_threshold=args.apg_norm_threshold,
                           apg_momentum=args.apg_momentum)


def series_guidance(args, denoiser, path: Path, first: int, rows: int, what: str, sampler: str, device):
    """(denoiser, class or None, note) of ``--class K`` / ``--guidance-scale W`` [``--guidance-rescale PHI``,
    ``--guidance-interval T_LO T_HI``], through ``diffkit sample``'s
    :class:`~diffkit.commands.sample.GuidanceRequest` and :func:`~diffkit.commands.sample.guided_denoiser`
    (classifier-free guidance (1 + W) eps(x, y) - W eps(x, null), rescaled, in an interval). Without
    ``--class`` the class is the file's label (:func:`file_label`; an imputation's rows of several labels:
    the labels, an array, each window taking its own), else none: a conditional model's null class (its
    unconditional output). One-line errors: a flag on an unconditional model, ``--guidance-scale`` without a
    class, a class out of range."""
    from ..forecasting import null_class_trained
    from .sample import SERIES_UNCONDITIONAL, guided_denoiser
    classes = denoiser.meta["unet"].get("num_classes")
    if classes is None:
        for flag, value in (("--class", args.class_id), ("--guidance-scale", args.guidance_scale)):
            if value is not None:
                raise DiffkitError(f"{flag} needs {SERIES_UNCONDITIONAL}")
        return denoiser, None, ""
    label, source = args.class_id, "--class"
    if label is None:
        label = file_label(path, denoiser.meta, first, rows, what)
        source = f"label column {label_column(denoiser.meta)!r}"
    if label is None:
        if args.guidance_scale is not None:
            raise DiffkitError(f"--guidance-scale needs a class to guide towards: give --class K (0..{classes - 1})")
        if not null_class_trained(denoiser):  # the null label was never shown in training: its embedding is untrained
            raise DiffkitError(f"this class-conditional checkpoint was trained with p_uncond=0, so it has no null "
                               f"class: give --class K (0..{classes - 1}) or a label column "
                               f"{label_column(denoiser.meta)!r} in the file")
        return denoiser, None, "; the null class (unconditional; give --class K)"
    several = not isinstance(label, int)  # an imputation's rows of several labels: one class per window
    request = guidance_request(args, None if several else label)
    request.check(sampler)
    if not several:
        request.labels(classes, 1, 1)  # --class K out of range: a one-line error
    guided, _, _ = guided_denoiser(denoiser, request, device)
    guidance = "" if args.guidance_scale is None else f", guidance scale {args.guidance_scale:g}"
    guidance += " (diffusers' s = 1 + W)" if args.guidance_convention == "diffusers" else ""
    guidance += f", rescale {args.guidance_rescale:g}" if args.guidance_rescale else ""
    guidance += (f", interval {args.guidance_interval[0]:g}..{args.guidance_interval[1]:g}"
                 if args.guidance_interval else "")
    guidance += "".join(f", {flag.lstrip('-')} {value:g}" for flag, value in zip(
        ("--apg-eta", "--apg-norm-threshold", "--apg-momentum"), (args.apg_eta, args.apg_norm_threshold,
                                                                  args.apg_momentum)) if value is not None)
    if several:
        return guided, label, f"; each window the class of its rows ({source}{guidance})"
    return guided, label, f"; class {label} ({source}{guidance})"


def drawn_window_classes(denoiser, labels, missing, length: int, chunk: int, null: int):
    """(class of each drawn imputation window, in order) of a file whose row k has the label ``labels[k]`` and
    missing cells ``missing`` (bool (rows, F)): :func:`diffkit.forecasting.window_classes` of the windows that
    :func:`diffkit.forecasting.impute` draws (every sample has the file's holes: level >= 0), after
    :func:`diffkit.forecasting.check_null_windows` in the CLI's words (a p_uncond = 0 checkpoint and a drawn
    window across a change of label: a one-line error before anything is printed or written)."""
    import torch

    from ..forecasting import check_null_windows, impute_levels, impute_plan, window_classes
    classes = window_classes(labels, len(labels), length, chunk, null)[None]
    levels = impute_levels(torch.from_numpy(missing.T.copy())[None], length, chunk)
    check_null_windows(denoiser, classes, levels, labels, impute_plan(len(labels), length, chunk), length, cli=True)
    return classes[levels >= 0].tolist()


def _window_classes_note(classes: list, null: int) -> str:
    """The output note's count of the drawn imputation windows of each class (:func:`drawn_window_classes`),
    e.g. "; windows: class 0 x 3, class 1 x 2, the null class x 2 (across a change of label)"."""
    from collections import Counter
    classes = Counter(classes)
    counts = [f"class {c} x {classes[c]}" for c in sorted(set(classes) - {null})]
    if null in classes:
        counts.append(f"the null class x {classes[null]} (across a change of label)")
    return f"; windows: {', '.join(counts)}" if counts else ""


ALL_NULL = ("note: every window spans a change of label, so all take the null class and --guidance-scale has no "
            "effect")


def _list(starts) -> str:
    """Window starts as text: all of them, or the first three and the last."""
    if len(starts) <= 4:
        return ", ".join(map(str, starts))
    return f"{starts[0]}, {starts[1]}, {starts[2]}, ..., {starts[-1]}"


def _plan_note(rows: int, length: int, horizon, chunk) -> str:
    """The line printed before sampling: the windows each sample takes, and whether ``--chunk`` is used
    (a horizon of at most --chunk is one window; a file of at most seq_length rows is one window)."""
    from ..forecasting import forecast_windows, impute_windows
    if horizon is not None:
        count = len(forecast_windows(rows, length, horizon, chunk))
        what = f"forecasting {horizon} rows: {count} window(s) of {length} rows per sample"
        unused = chunk is not None and horizon <= chunk
        why = f"the horizon {horizon} is at most --chunk {chunk}: one window"
    else:
        count = len(impute_windows(rows, length, chunk or length // 2))
        what = f"imputing {rows} rows: at most {count} window(s) of {length} rows per sample"
        unused = chunk is not None and rows <= length
        why = f"the file's {rows} rows fit one window of {length}"
    return what + (f" (--chunk {chunk} is unused: {why})" if unused else "")


def write_samples(out: Path, num: int, sample_rows, columns) -> None:
    """Write ``num`` samples, ``sample_rows(i)`` (rows, F) float64 each, to ``out`` (.csv: a ``sample``
    column then ``columns``; .npy: (num, rows, F), the bytes of ``np.save``) one sample at a time, into a
    temp file in the same folder renamed over ``out`` at the end (:func:`diffkit.checkpoint.atomic_write_with`):
    no partial file on an error, and no more than one sample's text in memory."""
    import numpy as np

    from ..checkpoint import atomic_write_with

    def write(f) -> None:
        first = sample_rows(0)
        if out.suffix.lower() == ".npy":
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float64)), "fortran_order": False,
                      "shape": (num, *first.shape)}
            np.lib.format.write_array_header_1_0(f, header)
        else:
            f.write(("sample," + ",".join(columns) + "\n").encode("utf-8"))
        for i in range(num):
            one = first if i == 0 else sample_rows(i)
            if out.suffix.lower() == ".npy":
                f.write(np.ascontiguousarray(one, dtype=np.float64).tobytes())
                continue
            text = io.StringIO()
            writer = csv.writer(text, lineterminator="\n")
            for row in one:
                writer.writerow([i, *(repr(float(v)) for v in row)])
            f.write(text.getvalue().encode("utf-8"))
    atomic_write_with(out, write)


def run_series(args, denoiser, info, options, device) -> int:
    """``diffkit edit --series``: after :func:`check_series_flags` and loading the checkpoint."""
    import numpy as np
    import torch

    from ..forecasting import forecast, forecast_windows, impute, impute_windows, series_batch_size
    from ..memory import batches_with_oom_retry
    from ._common import check_output_file
    meta = denoiser.meta
    length = int(meta["unet"]["seq_length"])
    path, out = Path(args.series), Path(args.out)
    horizon, chunk = args.horizon, args.chunk
    if chunk is not None and not 1 <= chunk < length:
        raise DiffkitError(f"--chunk {chunk} is out of range; allowed: 1..{length - 1} (the new rows of each of the "
                           f"model's windows of {length} rows)")
    values, columns, scaling = read_window(path, meta, allow_missing=horizon is None)
    rows = values.shape[0]
    first = 0 if horizon is None else rows - forecast_windows(rows, length, horizon, chunk)[0][0]
    sampler = "ddpm" if args.sampler is None else args.sampler
    denoiser, label, class_note = series_guidance(args, denoiser, path, first, rows,
                                                  "imputation" if horizon is None else "forecast", sampler, device)
    row_labels = None if label is None or isinstance(label, int) else label
    all_null = False
    if row_labels is not None:  # the labels change along the file: each window its rows' class
        null = meta["unet"]["num_classes"]
        drawn_classes = drawn_window_classes(denoiser, row_labels, np.isnan(values), length, chunk or length // 2,
                                             null)
        class_note += _window_classes_note(drawn_classes, null)
        all_null = bool(drawn_classes) and set(drawn_classes) == {null} and args.guidance_scale is not None

    def cond(n: int):  # the class of every sample (or of each row), or none (the keyword is left out)
        if row_labels is not None:
            return {"labels": torch.from_numpy(row_labels)}
        return {} if label is None else {"cond": {"y": torch.full((n,), label, dtype=torch.long, device=device)}}
    check_output_file(out, "--out", out.suffix.lower())
    model_values = scaling.normalise(values) if scaling is not None else values  # NaN stays NaN
    if horizon is not None:  # a forecast's windows never take more than the last L - 1 rows as context
        model_values = model_values[-(length - 1):]
    window = torch.from_numpy(np.ascontiguousarray(model_values.T, dtype=np.float32))[None]  # (1, F, rows)
    del model_values
    weight = 1.0 if args.reconstruction_weight is None else args.reconstruction_weight
    num = args.num
    missing = np.isnan(values) if horizon is None else None
    nothing_missing = horizon is None and not missing.any()
    common = dict(sampler=sampler, steps=args.steps or 50, length=length, chunk=chunk, reconstruction_weight=weight,
                  jump_length=args.jump_length, jump_n_sample=args.jump_n_sample, progress=args.progress, **options)
    batch_size = args.batch_size or "auto"

    if not nothing_missing:  # the plan before sampling: a long horizon or file is that many windows per sample
        print(_plan_note(rows, length, horizon, chunk), flush=True)
    if all_null:  # guidance with the null class in both passes is the unguided model
        print(ALL_NULL, flush=True)
    if nothing_missing:
        drawn = None
    elif horizon is None:  # every (sample, window) pair in batches of windows, level by level (diffkit.impute)
        drawn = impute(denoiser, window.expand(num, -1, -1).to(device), seed=args.seed, batch_size=batch_size,
                       **common, **cond(num)).cpu()
    else:  # a forecast's windows follow each other: its samples are the batch
        if batch_size == "auto":
            batch_size = series_batch_size(denoiser, window.shape[1], length, num, device,
                                           dict(options, reconstruction_weight=weight, **cond(num)))

        def draw(start: int, n: int):
            batch = window.expand(n, -1, -1).to(device)
            return (forecast(denoiser, batch, horizon, seed=args.seed + start, **common, **cond(n)).cpu(),)
        # a batch out of memory is halved and redrawn (sample i depends only on --seed + i)
        drawn = torch.cat([part for _, part in batches_with_oom_retry(draw, num, batch_size)])

    def sample_rows(i: int):
        """Sample i as (rows, F) float64 in the file's units: mapped back as generated, not clamped (beyond
        the training range is extrapolation the model never saw); imputed: the given values exactly as read."""
        if drawn is None:
            return values
        one = drawn[i].double().T.numpy()
        if scaling is not None:
            one = scaling.unnormalise(one, axis=-1)
        return one if horizon is not None else np.where(missing, one, values)

    write_samples(out, num, sample_rows, columns)
    if nothing_missing:
        print(f"wrote {out}: {num} copy(ies) of the {rows} rows as read: --series {str(path)!r} has no missing value, "
              f"so nothing was sampled (give --horizon H to forecast)")
        return 0
    if horizon is not None:
        windows = forecast_windows(rows, length, horizon, chunk)
        what = f"forecast {horizon} rows after {rows}" + (f" (from the last {windows[0][0]} as history)"
                                                         if windows[0][0] < rows else "")
        if len(windows) > 1:
            what += (f", rolled in {len(windows)} windows of up to {max(k for _, k in windows)} new rows, each "
                     f"conditioned on up to {length - windows[0][1]} rows before it, given or generated "
                     f"(errors compound)")
    else:
        what = f"imputed {int(missing.sum())} missing values of {rows} rows"
        if rows > length:
            k = chunk or length // 2
            starts = impute_windows(rows, length, k)
            what += (f" in {len(starts)} windows of {length} rows starting at rows {_list(starts)}, each keeping its "
                     f"rows before start + {(length + k) // 2} (the last: all); a window no sample needs is skipped")
    units = "the file's units" if scaling is not None else "the model's units"
    guidance = f", reconstruction guidance w={weight:g}" if weight else ""
    print(f"wrote {out}: {num} sample(s), {what} ({', '.join(columns)}; {units}; {info.name}, {args.steps or 50} "
          f"steps{guidance}{class_note})")
    return 0
