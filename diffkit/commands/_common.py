"""Flag helpers shared by the sub-commands (validation happens before any work starts)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import DiffkitError


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def check_writable_dir(path: str | Path, what: str = "output directory") -> Path:
    """Create ``path`` if needed and check it is writable, before any work starts."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DiffkitError(f"{what} {path} cannot be created: {err.strerror or err}") from None
    if not os.access(path, os.W_OK):
        raise DiffkitError(f"{what} {path} is not writable")
    return path


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
