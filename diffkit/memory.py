"""Memory-aware batch sizes for sampling (issue 8): measure, then fit the batch to free memory.

:func:`auto_batch_size` runs one network evaluation (the caller's ``probe(n)``) for ``n = 1``
and ``n = 2`` samples and measures each run's peak memory above what was allocated before it.
Their difference is the memory one more sample costs, the rest a fixed cost; the batch is the
largest count whose predicted peak, plus the sampler's own state per sample, fits in a share of
the device's available memory (:data:`MEMORY_SHARE`), capped per device type
(:data:`MAX_AUTO_BATCH`) and by the number of samples wanted.

How the peak is measured (:func:`peak_bytes`): on CUDA by the caching allocator's own peak
statistic (``torch.cuda.max_memory_allocated``, which includes the kernels' workspaces); on
the CPU and MPS, which keep no such statistic, by :class:`LiveTensorBytes`, a
``TorchDispatchMode`` that adds the bytes of every tensor storage an operator creates and
subtracts them when the storage is freed; a kernel's scratch, which it cannot see, is bounded by
the operator's inputs (on this CPU the resident memory a batch of 256 really adds is 0.8-1.5x
the prediction, ``benchmarks/auto_batch.py``; hence the CPU's share of one half). A compiled
network is probed eagerly (``torch.compiler.set_stance("force_eager")``): its peak is at most the
eager one.

Available memory (:func:`available_bytes`): CUDA ``mem_get_info`` free memory plus what the
caching allocator holds unused; MPS the recommended working set less what the driver has
allocated; CPU ``MemAvailable`` of ``/proc/meminfo``, or the cgroup's limit less its usage when
that is smaller (containers). Where none of these exist the function returns ``None`` and
:func:`auto_batch_size` uses the cap.
"""
from __future__ import annotations

import contextlib
import os
import sys
import weakref
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from .errors import DiffkitError, check_range

MEMORY_SHARE = {"cpu": 0.5, "cuda": 0.8, "mps": 0.5}  # of the available memory a batch may use
MAX_AUTO_BATCH = {"cpu": 256, "cuda": 1024, "mps": 256}  # larger batches buy no throughput
DEFAULT_CAP = 256
SAMPLER_STATE_COPIES = 8  # x, noise, up to 4 stored model outputs, temporaries: per-sample state
_WORKSPACES: set = set()  # data pointers of kernels' persistent scratch buffers (see register_workspace)
_TRACKERS: list = []  # the LiveTensorBytes contexts now open


def register_workspace(tensor: torch.Tensor, replaces: Optional[torch.Tensor] = None) -> None:
    """Mark ``tensor`` as a kernel's persistent scratch buffer (allocated at a floor size, grown
    when a call needs more, reused by every call: Winograd's per-thread workspaces). What it holds
    is not seen as an operator's input by :class:`LiveTensorBytes`: the kernel reports the bytes
    each call needs (:func:`note_workspace_use`), which grow with the batch. (Counted as an input,
    the floor of a network that first takes such a path at 2 samples looked like the second
    sample's cost: 65 MiB for 2.) ``replaces``: the smaller buffer it grew from (its memory may
    go to other tensors now)."""
    if replaces is not None:
        _WORKSPACES.discard(replaces.untyped_storage().data_ptr())
    _WORKSPACES.add(tensor.untyped_storage().data_ptr())


def tracking() -> bool:
    """Whether a :class:`LiveTensorBytes` context is open (kernels skip the bookkeeping otherwise)."""
    return bool(_TRACKERS)


def note_workspace_use(key, nbytes: int) -> None:
    """A kernel's call uses ``nbytes`` of its workspace ``key``: the open trackers count the
    largest use of each workspace in their bound (what a buffer of exactly that size would cost)."""
    for tracker in _TRACKERS:
        tracker.workspace[key] = max(tracker.workspace.get(key, 0), int(nbytes))


# what a probe samples: one ddim step (one network evaluation, as every sampler's step makes)
PROBE_SAMPLING = {"sampler": "ddim", "steps": 1, "nfe": None, "spacing": None, "final": None, "progress": False}


class LiveTensorBytes(TorchDispatchMode):
    """Inside the context: ``live`` = bytes of the tensor storages created in it and still alive
    (on ``device`` if given), ``peak`` = their maximum. Storages that existed before (weights,
    inputs) are not counted; an operator's output that reuses an input's storage (a view, an
    in-place op) adds nothing.

    ``bound`` also covers the scratch a kernel allocates and frees inside one operator, which no
    dispatch mode sees (oneDNN's reorders of its inputs into a blocked layout, for one), assuming
    it is at most the operator's inputs: the maximum over operators of what is live after it plus
    its inputs created in the context, plus the largest total of inputs that existed before
    (weights). The split keeps the bound linear in the batch: the first part grows with it, the
    second does not."""

    def __init__(self, device: Optional[torch.device] = None):
        super().__init__()
        self.device = None if device is None else torch.device(device)
        self.live = 0
        self.peak = 0
        self._with_inputs = 0
        self._old_inputs = 0
        self._known = WeakIdKeyDictionary()
        self.workspace: dict = {}  # workspace key -> largest bytes a call used (note_workspace_use)

    def __enter__(self):
        _TRACKERS.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        _TRACKERS.remove(self)
        return super().__exit__(*exc)

    @property
    def bound(self) -> int:
        return self._with_inputs + self._old_inputs + sum(self.workspace.values())

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def _counts(self, t) -> bool:
        return isinstance(t, torch.Tensor) and (self.device is None or t.device.type == self.device.type)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {id(s): s for s in (t.untyped_storage() for t in tree_leaves((args, kwargs)) if self._counts(t))}
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not self._counts(t):
                continue
            storage = t.untyped_storage()
            if id(storage) in inputs or storage in self._known:
                continue
            nbytes = storage.nbytes()
            self._known[storage] = nbytes
            weakref.finalize(storage, self._free, nbytes)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        new = sum(s.nbytes() for s in inputs.values() if s in self._known)
        old = sum(s.nbytes() for s in inputs.values() if s not in self._known and s.data_ptr() not in _WORKSPACES)
        self._with_inputs = max(self._with_inputs, self.live + new)
        self._old_inputs = max(self._old_inputs, old)
        return out


def _eager():
    """Run torch.compile'd code eagerly inside (the tracker must see every operator)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def peak_bytes(fn: Callable[[], object], device) -> int:
    """Peak memory (bytes) that ``fn()`` allocates on ``device`` above what was allocated before:
    on CUDA the allocator's peak, elsewhere :class:`LiveTensorBytes`'s ``bound``."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with _eager():  # a compiled network would compile (and record CUDA graphs) for the probe's sizes
            result = fn()
        torch.cuda.synchronize(device)
        del result
        return max(0, torch.cuda.max_memory_allocated(device) - baseline)
    tracker = LiveTensorBytes(device)
    with _eager(), tracker:
        result = fn()
    del result
    return tracker.bound


def _read_int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cpu_available_bytes() -> Optional[int]:
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if available is None and hasattr(os, "sysconf"):
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            pass
    limit = _read_int(Path("/sys/fs/cgroup/memory.max"))  # cgroup v2; "max" = no limit
    usage = _read_int(Path("/sys/fs/cgroup/memory.current"))
    if limit is not None and usage is not None:
        headroom = max(0, limit - usage)
        available = headroom if available is None else min(available, headroom)
    return available


def available_bytes(device) -> Optional[int]:
    """Memory a new batch can use on ``device`` (bytes), or ``None`` where it cannot be known."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "mps":
        return max(0, torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    if device.type == "cpu":
        return _cpu_available_bytes()
    return None


def auto_batch_size(probe: Callable[[int], object], device, *, limit: int, sample_numel: int,
                    available: Optional[int] = None, share: Optional[float] = None,
                    cap: Optional[int] = None) -> int:
    """The largest batch of at most ``limit`` samples whose sampling fits in memory.

    Args:
        probe: ``probe(n)`` runs one network evaluation on ``n`` samples, as sampling will
            (same network, conditioning, guidance and precision); it is called for n = 1 and 2.
        device: where sampling runs.
        limit: the number of samples wanted (the batch is never larger).
        sample_numel: elements of one sample (C*H*W); the sampler keeps
            :data:`SAMPLER_STATE_COPIES` float32 copies of it per sample besides the network.
        available / share / cap: override :func:`available_bytes`, :data:`MEMORY_SHARE` and
            :data:`MAX_AUTO_BATCH` (for tests and for users who know better).
    """
    device = torch.device(device)
    check_range("limit", limit, 1, None, integer=True)
    cap = cap if cap is not None else MAX_AUTO_BATCH.get(device.type, DEFAULT_CAP)
    check_range("cap", cap, 1, None, integer=True)
    share = share if share is not None else MEMORY_SHARE.get(device.type, 0.5)
    check_range("share", share, 0, 1, low_inclusive=False)
    ceiling = min(limit, cap)
    available = available if available is not None else available_bytes(device)
    if available is None or ceiling == 1:
        return ceiling
    fixed, per_sample = probe_costs(probe, device, sample_numel)
    budget = share * available - fixed
    if budget < per_sample:
        raise DiffkitError(f"not enough memory on {device} to sample even one image: about "
                           f"{(fixed + per_sample) / 2**20:.0f} MiB needed, {available / 2**20:.0f} MiB available")
    return max(1, min(ceiling, int(budget // per_sample)))


def probe_costs(probe: Callable[[int], object], device, sample_numel: int) -> tuple[int, int]:
    """(fixed, per-sample) bytes of ``probe(n)`` (one sampling step of n samples) on ``device``:
    the peaks at 1 and 2 samples, their difference per sample (plus the sampler's
    :data:`SAMPLER_STATE_COPIES` float32 copies of a sample), the rest fixed. A first call of 2,
    not measured, allocates what stays allocated (kernels' persistent workspaces,
    :func:`register_workspace`) outside the measurements."""
    probe(2)
    one = peak_bytes(lambda: probe(1), device)
    two = peak_bytes(lambda: probe(2), device)
    return max(one - (two - one), 0), max(two - one, 1) + SAMPLER_STATE_COPIES * 4 * int(sample_numel)


def is_out_of_memory(err: BaseException) -> bool:
    """An accelerator's out of memory: CUDA's ``torch.OutOfMemoryError``, or the plain
    RuntimeError of the mps allocator ("MPS backend out of memory")."""
    return isinstance(err, torch.OutOfMemoryError) or (isinstance(err, RuntimeError)
                                                       and str(err).startswith("MPS backend out of memory"))


class RetryingBatches:
    """``for start, *result in RetryingBatches(generate, num, batch_size)``: ``generate(start, n)``
    over ``num`` samples in batches of ``batch_size``.

    When a batch runs out of accelerator memory (:func:`is_out_of_memory`), the batch size is
    halved and the same samples are drawn again, with a warning; samples that depend only on
    their index (per-sample generators, ``seed + i``) come out the same. ``batch_size`` is the
    size in use: the one given, or what the halvings left. A CPU out of memory is not caught: the
    kernel may end the process before torch sees it."""

    def __init__(self, generate: Callable, num: int, batch_size: int):
        check_range("batch_size", batch_size, 1, None, integer=True)
        self.generate, self.num, self.batch_size = generate, num, batch_size

    def __iter__(self) -> Iterator[tuple]:
        start = 0
        while start < self.num:
            n = min(self.batch_size, self.num - start)
            try:
                result = self.generate(start, n)
            except RuntimeError as err:
                if not is_out_of_memory(err):
                    raise
                if n == 1:
                    raise DiffkitError("out of memory with a batch of one sample; free the device or use a smaller "
                                       "model or precision (--mixed-precision)") from None
                self.batch_size = max(1, n // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
                    torch.mps.empty_cache()
                print(f"diffkit: warning: out of memory with a batch of {n}; retrying with {self.batch_size}",
                      file=sys.stderr)
                continue
            yield (start, *result)
            start += n


batches_with_oom_retry = RetryingBatches  # the name its callers know


__all__ = ["LiveTensorBytes", "peak_bytes", "probe_costs", "available_bytes", "auto_batch_size",
           "batches_with_oom_retry", "RetryingBatches", "MEMORY_SHARE", "MAX_AUTO_BATCH", "PROBE_SAMPLING"]
