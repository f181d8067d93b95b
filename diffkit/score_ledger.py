"""Finished table cells kept in one small JSON file, so that a table can be assembled over many runs.

The sample cache (:mod:`diffkit.sample_cache`) resumes a stopped cell from its finished batches,
but it holds megabytes of images and lives beside one machine's run. A :class:`ScoreLedger` keeps
only each finished cell's scores: a few hundred bytes per cell, small enough to commit next to the
benchmark that made it. A later run of the same table - on another day or another machine - takes
the cells already in the ledger and computes only the missing ones, so a table whose S = 1000
column costs hours of CPU per cell can be finished one cell at a time.

A cell is found again only when everything that decides its value is the same: the denoiser
(:func:`diffkit.sample_cache.denoiser_identity`: weights, schedule, precision, compile mode, device
type), the scorer (:func:`scorer_identity`: metrics, evaluator / Inception weights, the digest of
the reference images and the metric options), the sampler settings, the sample count and the seed.
As for the sample cache, diffkit's and PyTorch's own code and the CPU model are not part of the key:
a cell recorded on one CPU and re-run on another agrees to the rounding of its kernels, not bit for
bit. Every entry stores the key it was made under in readable form, and the date.
"""
from __future__ import annotations

import contextlib
import datetime
import json
from pathlib import Path
from typing import Optional

from .checkpoint import tensors_digest
from .errors import DiffkitError
from .sample_cache import denoiser_identity, key_digest

LEDGER_FORMAT = "diffkit-score-ledger/1"


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on the hidden file ``.<name>.lock`` beside ``path`` (the ledger itself is
    replaced on every write, so it cannot hold the lock); no lock where ``fcntl`` is missing."""
    try:
        import fcntl
    except ImportError:  # Windows: one writer at a time is the user's to keep
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.parent / f".{path.name}.lock", "a")
    except OSError as err:
        raise DiffkitError(f"score ledger: cannot create the lock file beside {path} ({err})") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def scorer_identity(scorer) -> dict:
    """What decides a :class:`~diffkit.evaluation.SampleScorer`'s scores for given images."""
    def weights(net):
        return None if net is None else tensors_digest(net.state_dict())
    return {"metrics": list(scorer.metrics), "evaluator": weights(scorer.evaluator),
            "inception": weights(scorer.inception), "reference": getattr(scorer, "reference_digest", None),
            "num_reference": scorer.num_reference, "kid_subset_size": scorer.kid_subset_size,
            "is_splits": scorer.is_splits}


def open_ledger(path, denoiser, scorer) -> Optional["ScoreLedger"]:
    """A :class:`ScoreLedger` at ``path`` for this denoiser and scorer, or None when ``path`` is None."""
    return None if path is None else ScoreLedger(path, denoiser, scorer)


class ScoreLedger:
    """One JSON file of finished cells (see the module doc); written atomically after every cell."""

    def __init__(self, path: str | Path, denoiser, scorer):
        self.path = Path(path)
        self.identity = {"denoiser": denoiser_identity(denoiser), "scorer": scorer_identity(scorer)}
        self.identity_digest = key_digest(self.identity)
        self.reused = 0
        self.recorded = 0
        self.data = self._read()

    def _read(self) -> dict:
        if not self.path.exists():
            return {"format": LEDGER_FORMAT, "identities": {}, "cells": {}}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DiffkitError(f"score ledger {self.path} is not readable JSON ({err}); "
                               "move it away or give another --ledger path") from None
        if not isinstance(data, dict) or data.get("format") != LEDGER_FORMAT:
            raise DiffkitError(f"score ledger {self.path} is not a diffkit score ledger (format "
                               f"{data.get('format') if isinstance(data, dict) else None!r}, expected "
                               f"{LEDGER_FORMAT!r}); give another --ledger path")
        data.setdefault("identities", {})
        if not isinstance(data["identities"], dict) or not isinstance(data.get("cells", {}), dict):
            raise DiffkitError(f"score ledger {self.path} is damaged ('identities' and 'cells' must be objects); "
                               "move it away or give another --ledger path")
        for cell in data.get("cells", {}).values():
            self._check_scores(cell)
        # the keys are re-derived from what each cell stores, so they follow canonical_settings (a
        # cell stores its time grid written out, so a later change of a sampler's default grid
        # does not make it a cell of the new grid)
        try:
            data["cells"] = {self._key(c["sampling"], c["num"], c["seed"], c["identity"]): c
                             for c in data.get("cells", {}).values()}
        except (AttributeError, KeyError, TypeError) as err:
            raise DiffkitError(f"score ledger {self.path} has a damaged cell (no {err}); "
                               "mend or remove that cell, or give another --ledger path") from None
        return data

    def _check_scores(self, cell) -> None:
        """A cell's scores: {metric: {field: number or true/false}} (e.g. ``rank_deficient``); null
        (how JSON writes NaN) reads as NaN; a string or an object in a field is damage."""
        scores = cell.get("scores") if isinstance(cell, dict) else None
        ok = isinstance(scores, dict) and scores and all(isinstance(v, dict) for v in scores.values())
        if ok:
            for fields in scores.values():
                for name, value in fields.items():
                    if value is None:
                        fields[name] = float("nan")
                    elif not isinstance(value, (bool, int, float)):
                        ok = False
        if not ok:
            raise DiffkitError(f"score ledger {self.path} has a damaged cell (its scores are {scores!r:.60}); "
                               "mend or remove that cell, or give another --ledger path")

    def _key(self, settings: dict, num: int, seed: int, identity: Optional[str] = None) -> str:
        from .samplers.registry import canonical_settings
        return key_digest({"identity": identity or self.identity_digest, "sampling": canonical_settings(settings),
                           "num": num, "seed": seed})

    def get(self, settings: dict, num: int, seed: int) -> Optional[tuple[dict, Optional[int]]]:
        """(scores as :meth:`SampleScorer.score` returned them, network calls per sample) or None."""
        entry = self.data["cells"].get(self._key(settings, num, seed))
        if entry is None:
            return None
        self.reused += 1
        return entry["scores"], entry.get("nfe")

    def put(self, settings: dict, num: int, seed: int, scores: dict, nfe: Optional[int]) -> Path:
        """Add one finished cell and rewrite the file atomically (a killed run keeps the old file).

        The file is read again under a lock just before the write, so runs that fill one ledger at
        the same time (e.g. two cells in two processes) keep each other's cells."""
        from .evaluation import write_json
        from .samplers.registry import with_grid
        with _locked(self.path):
            self.data = self._read()
            self.data["identities"][self.identity_digest] = self.identity
            self.data["cells"][self._key(settings, num, seed)] = {
                "identity": self.identity_digest, "sampling": with_grid(settings), "num": num, "seed": seed, "nfe": nfe,
                "scores": scores, "recorded": datetime.date.today().isoformat()}
            try:
                write_json(self.data, self.path)
            except DiffkitError as err:
                raise DiffkitError(f"score ledger: {err}") from None
        self.recorded += 1
        return self.path
