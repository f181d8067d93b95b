"""User-facing errors: one line that names the bad value and what is allowed.

Every mistake a user can make (a bad flag, config value, file or argument) raises
:class:`DiffkitError`. It subclasses :class:`ValueError`, so library callers can catch
either; the CLI prints its message on one line and exits with status 2 (no traceback).
What diffkit accepts but doubts warns with :class:`DiffkitWarning` (also one line on the CLI).
A progress notice of library code that must show every time it happens (the out-of-memory retry of
:class:`diffkit.memory.RetryingBatches`, once per halved batch) is no warning: it prints
``diffkit: warning: ...`` to stderr directly, not through :mod:`warnings`' filters.
"""
from __future__ import annotations

import numbers
from typing import Any, Iterable


class DiffkitError(ValueError):
    """A user error whose message is one line naming the value and what is allowed."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class WriteError(DiffkitError):
    """A file could not be written (disk full, no permission): the run's outcome, never a detail
    of one table cell."""


class DiffkitWarning(UserWarning):
    """A warning of diffkit's to its user (a value it accepts but doubts); the CLI prints it as one
    line ``diffkit COMMAND: warning: ...``. Other libraries' warnings keep Python's format."""


class DiffkitRuntimeWarning(DiffkitWarning, RuntimeWarning):
    """A :class:`DiffkitWarning` about a result's numbers (too few samples, non-finite pixels); also
    a RuntimeWarning, as it was."""


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise a one-line DiffkitError."""
    allowed = list(allowed)
    if value not in allowed:
        raise DiffkitError(f"{name}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")
    return value


def check_range(name: str, value: Any, low: float | None = None, high: float | None = None,
                *, integer: bool = False, low_inclusive: bool = True, high_inclusive: bool = True,
                finite: bool = True) -> Any:
    """Return ``value`` if it is a number in the given range, else raise a one-line DiffkitError.
    NaN is never allowed, +-inf only with ``finite=False`` (where inf means "no bound")."""
    kind = "an integer" if integer else ("a finite number" if finite else "a number")
    ok_type = isinstance(value, numbers.Integral) if integer else isinstance(value, numbers.Real)
    if isinstance(value, bool) or not ok_type:
        raise DiffkitError(f"{name}={value!r} must be {kind}")
    value = int(value) if integer else value  # numpy integers included
    if value != value or (finite and value in (float("inf"), float("-inf"))):
        raise DiffkitError(f"{name}={value!r} is not allowed; give {kind}")
    lo_ok = low is None or (value >= low if low_inclusive else value > low)
    hi_ok = high is None or (value <= high if high_inclusive else value < high)
    if not (lo_ok and hi_ok):
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        lb = "[" if low_inclusive and low is not None else "("
        hb = "]" if high_inclusive and high is not None else ")"
        raise DiffkitError(f"{name}={value!r} is out of range; allowed: {kind} in {lb}{lo}, {hi}{hb}")
    return value


FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max: the samplers' and networks' arithmetic


def check_float32(name: str, value: Any) -> Any:
    """``value`` (a number already checked finite) if float32 holds it, else a one-line DiffkitError: a guidance
    scale of 1e308 is finite in Python but overflowed torch's float32 tensors (a RuntimeError traceback)."""
    if abs(value) > FLOAT32_MAX:
        raise DiffkitError(f"{name}={value!r} is out of range; allowed: at most {FLOAT32_MAX:.4g} in size (the "
                           f"sampling runs in float32)")
    return value


def check_positive_int_list(name: str, value: Any) -> list[int]:
    """Return ``value`` as a list of ints if it is a non-empty sequence of positive integers
    (e.g. a U-Net's ``channel_mult``), else raise a one-line DiffkitError."""
    from collections.abc import Sequence
    if (isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0
            or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in value)):
        raise DiffkitError(f"{name}={value!r} is not allowed; use a non-empty list of positive integers")
    return [int(m) for m in value]


def read_json_object(path, what: str = "file") -> dict:
    """The JSON object (dict) in the file ``path``; a one-line DiffkitError if it cannot be read,
    is not JSON, or holds something other than an object."""
    import json
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError) as err:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise DiffkitError(f"{what} {str(path)!r} cannot be read as JSON: "
                           f"{getattr(err, 'strerror', None) or first_line(err)}") from None
    if not isinstance(value, dict):
        raise DiffkitError(f"{what} {str(path)!r} holds a JSON {type(value).__name__}; expected an object {{...}}")
    return value


def shorten(text: str, limit: int = 60) -> str:
    """``repr(text)``, cut to about ``limit`` characters with '...' (user text quoted in one-line messages)."""
    text = str(text)
    return repr(text) if len(text) <= limit else repr(text[:limit - 3] + "...")


def first_line(err: BaseException, limit: int = 120) -> str:
    """An exception's first line for a one-line message: its type name if it has no text, terminal
    colour codes removed, cut at a word boundary near ``limit`` characters."""
    import re
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(err)).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    if len(first) > limit:
        first = first[:limit].rsplit(" ", 1)[0] + " ..."
    return first
