"""The cost of a labelled series file's window bookkeeping (``diffkit.series_files``), on the CPU:

* ``window_labels`` of 800,000 rows (runs of 200 rows, 4 labels) at seq_length 256, against the (T, L)
  definition it replaced (``sliding_window_view`` of the labels, each window's rows compared with its first);
  the kept windows must agree;
* ``check_classes_trained``'s error of a file with 2 million classes 0..K-1 missing (one row each of the
  even labels up to 2e6: every other class never in the file, the rest in runs shorter than seq_length).

Prints the median of ``--repeats`` runs of each. Run:
``OMP_NUM_THREADS=1 DIFFKIT_CPU_KERNELS=0 PYTHONPATH=. .venv/bin/python benchmarks/series_label_cost.py``
"""
from __future__ import annotations

import argparse

import numpy as np

from diffkit.errors import DiffkitError
from diffkit.series_files import check_classes_trained, window_labels
from laps import median_seconds  # benchmarks/laps.py, beside this script


def by_definition(labels: np.ndarray, seq_length: int):
    """Window i kept iff rows i..i+L-1 all equal row i's label: the (T - L + 1, L) array of the windows."""
    rows = np.lib.stride_tricks.sliding_window_view(labels, seq_length)
    kept = (rows == rows[:, :1]).all(axis=1)
    return kept, rows[kept, 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    labels = np.repeat(np.random.default_rng(0).integers(0, 4, 4000), 200)  # 800k rows
    kept, classes = window_labels(labels, 256)
    want_kept, want_classes = by_definition(labels, 256)
    assert np.array_equal(kept, want_kept) and np.array_equal(classes, want_classes)
    print(f"window_labels, {len(labels)} rows, seq_length 256 ({int(kept.sum())} windows kept): "
          f"{median_seconds(lambda: window_labels(labels, 256), args.repeats):.4f} s; (T, L) definition "
          f"{median_seconds(lambda: by_definition(labels, 256), args.repeats):.3f} s")

    labels = np.concatenate([[0] * 4, np.arange(2, 2_000_000, 2)])
    _, classes = window_labels(labels, 3)
    message = []

    def check():
        try:
            check_classes_trained(labels, len(labels), classes, "state", 3)
        except DiffkitError as err:
            message[:] = [str(err)]
    seconds = median_seconds(check, args.repeats)
    print(f"check_classes_trained, {len(labels)} rows, K = {int(labels.max()) + 1}: {seconds:.3f} s")
    print(message[0])


if __name__ == "__main__":
    main()
