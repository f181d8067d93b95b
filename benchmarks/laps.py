"""Timing for the benchmark scripts: ``laps = Laps(); ...; laps("data")`` prints and records
the seconds since the previous lap (``laps.timings`` is the {phase: seconds} dict for the JSON);
:func:`median_seconds` times a call several times."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def median_seconds(fn: Callable[[], object], repeats: int, warmup: bool = False) -> float:
    """The median wall time of ``repeats`` calls of ``fn`` (after one untimed call with ``warmup``)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Laps:
    def __init__(self):
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def __call__(self, name: str) -> float:
        now = time.perf_counter()
        self.timings[name] = round(now - self._clock, 1)
        self._clock = now
        print(f"[{name}] {self.timings[name]} s", flush=True)
        return self.timings[name]
