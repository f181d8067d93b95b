"""Phase timing for the benchmark scripts: ``laps = Laps(); ...; laps("data")`` prints and records
the seconds since the previous lap; ``laps.timings`` is the {phase: seconds} dict for the JSON."""
from __future__ import annotations

import time


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
