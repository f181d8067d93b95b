"""A user's own multivariate time series (``dataset = "series"``): one CSV or .npy file of T rows
(time steps) and F columns (features), turned into training windows as Diffusion-TS does.

Diffusion-TS (Yuan & Qiao 2024, ``Utils/Data_utils/real_datasets.py``, ``CustomDataset``) reads
the CSV (``read_data``), fits scikit-learn's ``MinMaxScaler`` per column, maps the scaled values
to [-1, 1] with 2 y - 1 (``normalize_to_neg_one_to_one``), cuts windows of ``window`` rows with
stride 1 (``__getsamples``) and unnormalises samples with (x + 1) / 2 then the scaler's inverse.
TimeGAN (Yoon et al. 2019, ``data_loading.py``) does the same min-max per feature and stride-1
windows. Two differences, both to keep the held-out part unseen: the min and max are fitted on the
training rows only (Diffusion-TS fits them on every row), and ``test_fraction`` holds out the last
rows of the file before windowing (Diffusion-TS's ``divide`` splits the windows, so the first test
windows share rows with the last training ones).

Windows are diffkit's ``(N, C, L)`` (channels = columns, then time): window i is rows i..i+L-1.
A constant training column (min == max) is kept: it scales by 1 instead of 0 (scikit-learn's
``MinMaxScaler`` rule), so it is -1 for the model, and :meth:`SeriesScaling.unnormalise` maps any
value of it to the constant (so it is the inverse of ``normalise`` except on such a column). Bad input
(missing file, a folder, another suffix, an empty file, a file that is not UTF-8 text or not a numpy
array, a non-numeric or non-finite value, a column whose range overflows, fewer rows than
``seq_length``) is a one-line :class:`~diffkit.errors.DiffkitError`.
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import io
import math
import re
import warnings
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .errors import DiffkitError, DiffkitWarning, check_range

SERIES_FILE_SUFFIXES = (".csv", ".npy")


@dataclass(frozen=True)
class SeriesScaling:
    """Per-column min-max scaling fitted on the training rows, composed with Diffusion-TS's map to [-1, 1]."""

    columns: tuple
    minimum: tuple
    maximum: tuple

    @classmethod
    def fit(cls, rows: np.ndarray, columns: Sequence[str]) -> "SeriesScaling":
        """Column minima and maxima of ``rows`` (T, F)."""
        return cls(tuple(columns), tuple(float(v) for v in rows.min(axis=0)),
                   tuple(float(v) for v in rows.max(axis=0)))

    def _arrays(self, dims: int, axis: int):
        shape = [1] * dims
        shape[axis] = len(self.columns)
        low, high = np.asarray(self.minimum).reshape(shape), np.asarray(self.maximum).reshape(shape)
        return low, high

    def normalise(self, values: np.ndarray, axis: int = -1) -> np.ndarray:
        """2 (x - min) / (max - min) - 1 per column (``axis`` indexes the columns); max == min scales by 1."""
        low, high = self._arrays(values.ndim, axis)
        span = np.where(high > low, high - low, 1.0)
        return (values - low) / span * 2.0 - 1.0

    def unnormalise(self, values, axis: int = 1):
        """(x + 1) / 2 (max - min) + min, in the original units: the inverse of :meth:`normalise` except on a
        constant column (max == min), where every value maps to the constant (a sample's value there is noise)."""
        low, high = self._arrays(values.ndim, axis)
        if isinstance(values, torch.Tensor):
            low, high = torch.as_tensor(low, dtype=values.dtype), torch.as_tensor(high, dtype=values.dtype)
        return (values + 1.0) * 0.5 * (high - low) + low

    def meta(self) -> dict:
        return {"columns": list(self.columns), "minimum": list(self.minimum), "maximum": list(self.maximum)}

    @classmethod
    def from_meta(cls, meta: dict) -> "SeriesScaling":
        return cls(tuple(meta["columns"]), tuple(meta["minimum"]), tuple(meta["maximum"]))


TRAINING_MISSING = "a training file needs every value (fill or remove such rows first)"


def parse_columns(text: str) -> list:
    """``"date, id"`` -> ["date", "id"] (the ``drop_columns`` field)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def check_series_file(path: Path) -> None:
    """One-line errors for a path that is not an existing, non-empty .csv / .npy file."""
    if path.is_dir():
        raise DiffkitError(f"series file {str(path)!r} is a folder, not a file; give a .csv or .npy file with "
                           f"--data-dir")
    if path.suffix.lower() not in SERIES_FILE_SUFFIXES:
        raise DiffkitError(f"series file {str(path)!r} has the suffix {path.suffix or '(none)'!r}; allowed: "
                           f"{', '.join(SERIES_FILE_SUFFIXES)} (CSV with a header row, or a numpy array (T, F))")
    if not path.exists():
        raise DiffkitError(f"series file {str(path)!r} does not exist (give it with --data-dir FILE)")
    if not path.is_file():
        raise DiffkitError(f"series file {str(path)!r} is not a file (give a .csv or .npy file with --data-dir)")
    if path.stat().st_size == 0:
        raise DiffkitError(f"series file {str(path)!r} is empty; it needs a header row and at least one row")


def read_csv_series(path: Path, drop_columns: Sequence[str] = (), allow_missing: bool = False,
                    missing_hint: str = TRAINING_MISSING, label_column: str = "") -> tuple:
    """(values float64 (T, F), column names) of a CSV with a header row; ``drop_columns`` are left out, and
    so is ``label_column`` (class labels, :func:`read_label_column`; an error when the header lacks it).
    A cell that is not a finite number is an error naming its column and line; so is text that is not UTF-8.
    ``allow_missing``: an empty cell or NaN is read as NaN (a missing value to impute); otherwise an empty
    or NaN cell is "a missing value" followed by ``missing_hint``."""
    reader = _csv_reader(path)
    try:
        return _parse_csv(path, reader, drop_columns, allow_missing, missing_hint, label_column)
    except csv.Error as err:
        raise DiffkitError(f"{path}, line {reader.line_num}: not a readable CSV line ({err})") from None


def _csv_reader(path: Path):
    """A ``csv.reader`` over the UTF-8 text of ``path`` (a leading BOM dropped); text that is not UTF-8 is a
    one-line error naming the line."""
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):  # stripped first so that an error's offset counts from the data's start
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise DiffkitError(f"{path}, line {line}: byte {data[err.start]:#04x} is not UTF-8 text; save the CSV as "
                           f"UTF-8") from None
    return csv.reader(io.StringIO(text, newline=""))


LABEL_RE = re.compile(r"[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?")  # "3", "3.", "3.0", "3e0", "3.0e+00": ASCII digits,
# no sign, underscore, inf or nan (Python's float() and int() take those, and int() full-width digits too)
MAX_LABEL = 2 ** 62  # far above any usable class count (each class needs a window); keeps int64 exact


def label_value(cell: str) -> int:
    """The class label written in ``cell`` (already stripped), or -1 when it is none: a decimal or exponent
    form (``LABEL_RE``: as ``np.savetxt`` writes 3 with its default fmt, ``3.000000000000000000e+00``) whose value
    is exactly an integer in 0..MAX_LABEL-1. The value is compared as a ``Decimal`` (exact, whatever the
    number of digits) before any ``int()``: a cell of 4301+ digits is beyond ``int()``'s digit limit, and only
    a value below MAX_LABEL (19 digits at most) is converted."""
    if not LABEL_RE.fullmatch(cell):
        return -1
    try:
        value = Decimal(cell)
    except InvalidOperation:  # an exponent beyond Decimal's range (20+ digits): refused, even for a zero mantissa
        return -1
    if not value < MAX_LABEL or value != value.to_integral_value():
        return -1
    return int(value)


def _check_label_file(path: Path, column: str) -> None:
    """``label_column`` names a CSV column: an .npy array has no column names."""
    if path.suffix.lower() != ".csv":
        raise DiffkitError(f"label_column={column!r} names a CSV column; {path} is an array without column names: "
                           f"save the series with its label column as a CSV")


def _missing_label_column(path: Path, column: str, header: Sequence[str]) -> DiffkitError:
    return DiffkitError(f"label_column={column!r} is not a column of {path}; its columns: {', '.join(header)}")


def read_label_column(path, column: str, first: int = 0, hint: str = "") -> np.ndarray:
    """The class labels (int64 (T,), one per data row) in column ``column`` (spaces around it ignored) of a
    CSV series file with a header row (``label_column``). A label is an integer >= 0 in decimal or exponent
    form (:func:`label_value`: "3", "3.", "3.0", "3e0", "3.000000000000000000e+00"; not "+3", "3_0", "3.5",
    "inf" or "nan"); a missing column, an empty
    cell or any other text is a one-line error naming the value, its line and what is allowed (then ``hint``).
    Blank lines are skipped as :func:`read_csv_series` skips them, so label i belongs to row i of its values.
    Training checks every row (``first`` = 0); ``diffkit edit --series`` passes the first row it reads: the
    rows before it are counted but not checked, their labels -1."""
    path, column = Path(path), column.strip()
    check_series_file(path)
    _check_label_file(path, column)
    reader = _csv_reader(path)
    try:
        header = [h.strip() for h in next(reader, None) or []]
        if column not in header:
            raise _missing_label_column(path, column, header)
        index, labels = header.index(column), []
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(labels) < first:
                labels.append(-1)
                continue
            cell = row[index].strip() if index < len(row) else ""
            value = label_value(cell)
            if value < 0:
                raise DiffkitError(f"{path}, line {reader.line_num}: label column {column!r} holds {cell!r}; a class "
                                   f"label must be an integer 0, 1, ..., K-1 (as 3, 3.0 or 3e0) on every row"
                                   f"{hint}")
            labels.append(value)
    except csv.Error as err:
        raise DiffkitError(f"{path}, line {reader.line_num}: not a readable CSV line ({err})") from None
    return np.asarray(labels, dtype=np.int64)


def window_labels(labels: np.ndarray, seq_length: int) -> tuple:
    """(kept, label) of the stride-1 windows of ``seq_length`` rows (:func:`sliding_windows`): window i is kept
    when rows i..i+L-1 share one label, which becomes its label; a window across a change of label belongs
    to no class and is left out. Rows i..i+L-1 share a label exactly when the run of equal labels that
    row i is in goes on to row i+L-1 or beyond: with ``run_end[i]`` the row after that run, window i is kept
    iff run_end[i] - i >= L (O(T) time and memory; no (T, L) array of the windows' rows)."""
    labels = np.asarray(labels)
    rows = len(labels)
    count = max(rows - seq_length + 1, 0)  # the windows' starts 0..T-L
    ends = np.append(np.flatnonzero(labels[1:] != labels[:-1]) + 1, rows)  # each run's end (exclusive)
    run_end = np.repeat(ends, np.diff(ends, prepend=0))  # row i -> the end of its run
    kept = run_end[:count] - np.arange(count) >= seq_length
    return kept, labels[:count][kept]


def _distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values of a 1-D integer array, sorted: np.unique's result by a sort and a mask (numpy
    2.4's np.unique hashes first, ~10x slower for a million labels)."""
    values = np.sort(values)
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if len(values) else values


def check_classes_trained(row_labels: np.ndarray, train_rows: int, window_classes: np.ndarray, column: str,
                          seq_length: int) -> None:
    """With K = the largest label of the file + 1, every class 0..K-1 must have a training window (one of
    ``window_classes``, the labels of the training windows), else a one-line error naming the classes without
    one (the first few, and their number) and why: never in the file, only in the held-out rows, or runs
    shorter than ``seq_length`` in the training rows. A class without a window would be an untrained
    embedding that ``--class`` samples from all the same (labels {0, 5} would make 6 classes, a date-like
    label 20240101 an embedding of 20 million rows)."""
    every, in_training = _distinct(row_labels), _distinct(row_labels[:train_rows])
    windowed = _distinct(window_classes)
    num_classes = int(every[-1]) + 1
    if len(windowed) == num_classes:
        return
    short = np.setdiff1d(in_training, windowed, assume_unique=True)  # each sorted, as its first argument is
    held_only = np.setdiff1d(every, in_training, assume_unique=True)
    never_count = num_classes - len(every)
    # the first few of 0..K-1 not in the file: among the first len(every) + 5 (at most len(every) of them are in it)
    never = np.setdiff1d(np.arange(min(num_classes, len(every) + 5)), every, assume_unique=True)[:5]

    def listed(values, count) -> str:  # values: sorted, at least the first 5 of the count
        shown = ", ".join(str(int(v)) for v in values[:5])
        return shown + (f", ... ({count} in all)" if count > 5 else "")
    reasons = [(values, count, why) for values, count, why in (
        (never, never_count, "never in the file"), (held_only, len(held_only), "only in the held-out rows"),
        (short, len(short), f"its runs in the training rows are shorter than seq_length={seq_length}"))
        if count]
    # the reasons' classes are disjoint and each sorted: the first 5 of all are among the first 5 of each
    missing = np.sort(np.concatenate([values[:5] for values, _, _ in reasons]))
    total = sum(count for _, count, _ in reasons)
    why = reasons[0][2] if len(reasons) == 1 else "; ".join(f"{listed(v, c)}: {w}" for v, c, w in reasons)
    raise DiffkitError(f"label_column {column!r}: class{'es' if total > 1 else ''} {listed(missing, total)} "
                       f"ha{'ve' if total > 1 else 's'} no training window ({why}); labels must be 0..K-1, each "
                       f"with at least one window of seq_length={seq_length} rows in the training split")


def _parse_csv(path: Path, reader, drop_columns: Sequence[str], allow_missing: bool = False,
               missing_hint: str = TRAINING_MISSING, label_column: str = "") -> tuple:
    """:func:`read_csv_series` on the rows of ``reader`` (a ``csv.reader``); blank lines are skipped (with
    ``allow_missing``, a row of empty cells of a file of several columns is a row of missing values: skipped,
    it would shift the imputed rows against the file's; a row of empty cells at the end is a row too, imputed;
    a one-column file's empty line cannot be told from a blank one: skipped, with a DiffkitWarning when data
    rows follow it, since the rows after it move up: write nan for a missing value there)."""
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise DiffkitError(f"series file {str(path)!r} has no header row; its first line must name the columns")
    header = [h.strip() for h in header]
    if len(header) == 1 and ";" in header[0]:
        raise DiffkitError(f"{path}: the header row is one column, {header[0]!r}; values separated by ';' are "
                           f"not read: save the file with commas between the values")
    for i, name in enumerate(header):
        if not name:
            raise DiffkitError(f"{path}: column {i + 1} has no name in the header row; name every column")
        if header.index(name) != i:
            raise DiffkitError(f"{path}: column {name!r} is named twice in the header row; give unique names")
    _warn_if_numbers(path, header)
    unknown = [name for name in drop_columns if name not in header]
    if unknown:
        raise DiffkitError(f"drop_columns names {unknown[0]!r}, which {path} does not have; its columns: "
                           f"{', '.join(header)}")
    if label_column and label_column not in header:
        raise _missing_label_column(path, label_column, header)
    keep = [i for i, name in enumerate(header) if name not in drop_columns and name != label_column]
    if not keep:
        labels = f" with label_column={label_column!r} (labels, not values)" if label_column else ""
        raise DiffkitError(f"drop_columns={','.join(drop_columns)!r}{labels} leaves no value column of {path}; "
                           f"keep at least one")
    rows, pending, inside = [], [], []  # blank lines of a one-column file since the last data row / between rows
    for row in reader:
        if not row or (all(not cell.strip() for cell in row) and not (allow_missing and len(header) > 1
                                                                       and len(row) == len(header))):
            if allow_missing and len(header) == 1 and rows:
                pending.append(reader.line_num)
            continue  # a blank line (e.g. at the end); to impute, a row of empty cells ",,," is a row, all missing
        inside += pending
        pending.clear()
        if len(row) != len(header):
            raise DiffkitError(f"{path}, line {reader.line_num}: {len(row)} values for the {len(header)} columns "
                               f"of the header row")
        values = []
        for i in keep:
            cell = row[i].strip()
            if cell == "":
                if not allow_missing:
                    raise DiffkitError(f"{path}, line {reader.line_num}: column {header[i]!r} has a missing value; "
                                       f"{missing_hint}")
                cell = "nan"
            try:
                value = float(cell)
            except ValueError:
                raise DiffkitError(f"{path}, line {reader.line_num}: column {header[i]!r} holds {cell!r}, not a "
                                   f"number; every column must be numeric (drop one such as a date with "
                                   f"--set drop_columns={header[i]})") from None
            if math.isnan(value) and not allow_missing:  # NaN marks a missing value, as an empty cell does
                raise DiffkitError(f"{path}, line {reader.line_num}: column {header[i]!r} has a missing value "
                                   f"({cell!r}); {missing_hint}")
            if not math.isfinite(value) and not (allow_missing and math.isnan(value)):
                raise DiffkitError(f"{path}, line {reader.line_num}: column {header[i]!r} holds {cell!r}; values "
                                   f"must be finite numbers (fill or remove such rows first)")
            values.append(value)
        rows.append(values)
    if not rows:
        raise DiffkitError(f"series file {str(path)!r} has a header row but no data rows")
    if inside:  # a one-column file's empty line between data rows: a missing value or a blank line?
        warnings.warn(f"{path}, line {inside[0]}: an empty line in a one-column file is read as a blank line and "
                      f"skipped ({len(inside)} between data rows), so the rows after it move up; to impute a missing "
                      f"value there, write nan", DiffkitWarning, stacklevel=2)
    return np.asarray(rows, dtype=np.float64), [header[i] for i in keep]


def _warn_if_numbers(path: Path, header: Sequence[str]) -> None:
    """A header row of numbers only is most likely the first data row of a file without a header,
    read as column names (so that row is lost to the data): a DiffkitWarning, not an error, since
    numbers may name columns. pandas' names of unnamed columns, 0, 1, ..., F-1, are not warned about."""
    def finite(cell: str) -> bool:
        try:
            return math.isfinite(float(cell))
        except ValueError:
            return False
    if not all(finite(cell) for cell in header) or header == [str(i) for i in range(len(header))]:
        return
    shown = ", ".join(header[:3]) + (", ..." if len(header) > 3 else "")
    warnings.warn(f"the header row of {path} is all numbers ({shown}): if the file has no header row, its first "
                  f"row was read as column names; add a header line", DiffkitWarning, stacklevel=2)


def read_npy_series(path: Path, allow_missing: bool = False, missing_hint: str = TRAINING_MISSING) -> tuple:
    """(values float64 (T, F), column names "0".."F-1") of a numeric .npy array (T, F) or (T,);
    ``allow_missing``: NaN is kept (a missing value to impute); otherwise NaN is "a missing value"
    followed by ``missing_hint``."""
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as err:  # a truncated or non-numpy file, or an object array
        raise DiffkitError(f"cannot read {path} as a numeric numpy array: {str(err).splitlines()[0]}") from None
    if not isinstance(array, np.ndarray):  # an .npz archive (np.load gives an NpzFile) renamed to .npy
        getattr(array, "close", lambda: None)()
        raise DiffkitError(f"{path} is a {type(array).__name__} (an .npz archive?), not one numpy array; save the "
                           f"series with np.save as one array (T, F)")
    if array.dtype.kind not in "fiu":
        raise DiffkitError(f"{path} holds {array.dtype} values; a series file needs numbers (float or int)")
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise DiffkitError(f"{path} has shape {array.shape}; a series array must be (T, F): T time steps of F "
                           f"features, both at least 1")
    array = array.astype(np.float64)
    bad = np.argwhere(~np.isfinite(array) & ~(allow_missing & np.isnan(array)))
    if len(bad):
        row, col = (int(v) for v in bad[0])
        if np.isnan(array[row, col]):
            raise DiffkitError(f"{path}: row {row}, column {col} has a missing value (nan; indices from 0); "
                               f"{missing_hint}")
        raise DiffkitError(f"{path}: row {row}, column {col} holds {array[row, col]} (indices from 0); values must "
                           f"be finite numbers (fill or remove such rows first)")
    return array, [str(i) for i in range(array.shape[1])]


def read_series_file(path, drop_columns: Sequence[str] = (), allow_missing: bool = False,
                     missing_hint: str = TRAINING_MISSING, label_column: str = "") -> tuple:
    """(values float64 (T, F), column names) of a .csv or .npy series file (checked; see the module doc);
    ``allow_missing``: empty cells and NaN are read as NaN (``diffkit edit --series``'s imputation); otherwise
    an empty or NaN cell is an error ending in ``missing_hint`` (default: a training file's).
    ``label_column``: a CSV column of class labels, left out of the values (:func:`read_label_column`)."""
    path = Path(path)
    check_series_file(path)
    if label_column:
        _check_label_file(path, label_column)
    if path.suffix.lower() == ".npy":
        if drop_columns:
            raise DiffkitError(f"drop_columns applies to CSV files (by header name); {path} is an array: keep only "
                               f"the wanted columns in it")
        return read_npy_series(path, allow_missing, missing_hint)
    return read_csv_series(path, drop_columns, allow_missing, missing_hint, label_column)


def split_rows(num_rows: int, test_fraction: float) -> int:
    """Training rows: the first T - floor(T * test_fraction); the last floor(T * test_fraction) are held out."""
    return num_rows - int(math.floor(num_rows * test_fraction + 1e-9))


def sliding_windows(values: np.ndarray, seq_length: int) -> np.ndarray:
    """Windows of ``seq_length`` rows with stride 1, (T - L + 1, F, L): window i is rows i..i+L-1, transposed."""
    return np.lib.stride_tricks.sliding_window_view(values, seq_length, axis=0)


def file_digest(path) -> str:
    """SHA-256 of the file's bytes (kept in the checkpoint to notice a changed file)."""
    from .checkpoint import hash_file
    return hash_file(path, hashlib.sha256())[0].hexdigest()


def load_file_series(path, *, seq_length: int, test_fraction: float = 0.0, drop_columns: str = "",
                     label_column: str = "", train: bool = True, channels=None):
    """The training (``train``) or held-out windows of a series file as a
    :class:`~diffkit.timeseries.SeriesDataset` in [-1, 1], with ``scaling`` (fitted on the training rows)
    and ``source`` (the file as given and as an absolute path, its SHA-256, rows) for the checkpoint.
    ``label_column``: that CSV column gives class labels (:func:`read_label_column`), not values; only the
    windows whose rows share one label are kept (:func:`window_labels`), and the data set's ``num_classes``
    K is the largest label in the file + 1 (the same for both splits); each class 0..K-1 must have a training
    window (:func:`check_classes_trained`), else one error names the classes without one and why."""
    from .timeseries import SeriesDataset
    check_range("seq_length", seq_length, 2, None, integer=True)
    check_range("test_fraction", test_fraction, 0.0, 1.0, high_inclusive=False)
    label_column = label_column.strip()
    values, columns = read_series_file(path, parse_columns(drop_columns), label_column=label_column)
    row_labels = read_label_column(path, label_column) if label_column else None
    if channels is not None and channels != len(columns):
        raise DiffkitError(f"in_channels={channels} but {path} has {len(columns)} columns ({', '.join(columns)}); "
                           f"leave in_channels unset for a series file")
    rows = values.shape[0]
    train_rows = split_rows(rows, test_fraction)
    for part, count in (("training", train_rows), ("held-out", rows - train_rows)):
        if (part == "training" or test_fraction > 0) and count < seq_length:
            held = f" (test_fraction={test_fraction:g} holds out the last {rows - train_rows})" if test_fraction else ""
            raise DiffkitError(f"{path} has {rows} rows{held}: {count} {part} rows, fewer than seq_length="
                               f"{seq_length}; give a longer file or a smaller seq_length")
    scaling = SeriesScaling.fit(values[:train_rows], columns)
    with np.errstate(over="ignore"):
        span = np.subtract(scaling.maximum, scaling.minimum)
    if not np.isfinite(span).all():
        i = int(np.argmin(np.isfinite(span)))
        raise DiffkitError(f"{path}: column {columns[i]!r} spans {scaling.minimum[i]:g} to {scaling.maximum[i]:g} "
                           f"on the training rows, a range beyond float64; rescale that column first")
    part = values[:train_rows] if train else values[train_rows:]
    if not train and not len(part):
        raise DiffkitError(f"{path}: test_fraction=0 holds out no rows; there is no test split")
    windows = sliding_windows(scaling.normalise(part), seq_length)
    labels = num_classes = None
    if row_labels is not None:
        for split in ("training",) if train else ("training", "held-out"):
            kept, labels = window_labels(row_labels[:train_rows] if split == "training" else row_labels[train_rows:],
                                         seq_length)
            if not kept.any():
                raise DiffkitError(f"{path}: no window of seq_length={seq_length} {split} rows has one label in "
                                   f"column {label_column!r} throughout; give a smaller seq_length or longer runs "
                                   f"of each label")
            if split == "training":  # the held-out split is checked against the classes training had
                check_classes_trained(row_labels, train_rows, labels, label_column, seq_length)
        windows = windows[kept]
        num_classes = int(row_labels.max()) + 1  # the file's labels decide, the same in both splits
        labels = torch.from_numpy(labels)
    dataset = SeriesDataset(torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)), "series",
                            labels=labels, num_classes=num_classes)
    dataset.scaling = scaling
    dataset.source = {"file": str(path), "resolved_file": str(Path(path).resolve()), "sha256": file_digest(path),
                      "rows": rows, "train_rows": train_rows}
    return dataset
