"""diffkit's C++ CPU kernels: built once per machine and torch version, loaded on first use.

One ``torch.utils.cpp_extension`` build of five sources: the Winograd tile transforms
(``_winograd_kernels.cpp`` for fp32, ``_winograd_2x2_kernels.cpp`` for fp32 and bf16, used by
:mod:`diffkit.models.winograd`), GroupNorm [+ SiLU] for
channels_last and contiguous fp32 / bf16 maps (``_group_norm_kernels.cpp``, used by
:mod:`diffkit.models.group_norm`), dropout with a recomputed mask (``_dropout_kernels.cpp``, used
by :mod:`diffkit.models.dropout`) and their bindings (``_cpu_kernels.cpp``). The build (about
30 s, cached under torch's extensions directory) starts the first time a layer that uses a
kernel runs on the CPU in fp32 or bf16, with a one-line note on stderr. The kernels are compiled
with OpenMP, so that ``at::parallel_for`` spreads their loops over torch's threads (without
``-fopenmp`` it silently runs them on one).
A build runs under an OS file lock on its folder (``fcntl.flock``: released by the system when the
holder dies, so a build killed half-way never blocks the next run; torch's own ``lock`` file, which
such a build leaves behind and on which every later load would wait for ever, is removed under it).
Without a C++ compiler or ninja the build fails once, with one warning, and every layer keeps
PyTorch's own operators. ``DIFFKIT_CPU_KERNELS=0`` never builds or uses them.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import sys
import threading
import warnings
from pathlib import Path

import torch

from ..errors import DiffkitWarning, first_line

__all__ = ["compiling", "cpu_autocast", "cpu_kernels", "environment_switch", "strictly_channels_last"]

_SOURCES = ("_cpu_kernels.cpp", "_winograd_kernels.cpp", "_winograd_2x2_kernels.cpp", "_group_norm_kernels.cpp",
            "_dropout_kernels.cpp")
_HEADERS = ("_bf16.h", "_winograd_tiles.h")
_OFF = ("0", "false", "off", "no")
_ON = ("", "1", "true", "on", "yes")


def environment_switch(variable: str, default: bool = True) -> bool:
    """Whether the on/off environment variable ``variable`` is on (unset: ``default``); an unknown
    value warns and keeps the default."""
    value = os.environ.get(variable)
    if value is None or value.strip() == "":
        return default
    value = value.strip().lower()
    if value in _OFF:
        return False
    if value in _ON:
        return True
    warnings.warn(f"{variable}={value!r} is not one of 0/1/false/true/off/on/no/yes; it stays "
                  f"{'on' if default else 'off'}", DiffkitWarning, stacklevel=3)
    return default


_state = {"enabled": environment_switch("DIFFKIT_CPU_KERNELS"), "extension": None, "tried": False}
_build_lock = threading.Lock()


def cpu_autocast() -> bool:
    """Whether CPU autocast is on (the Winograd kernels are fp32 only; the GroupNorm kernels take bf16)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def compiling() -> bool:
    """Whether torch.compile is tracing the caller (Dynamo cannot trace into the extension, nor
    the CPU dropout's in-place ``random_``)."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def strictly_channels_last(x: torch.Tensor) -> bool:
    """A 4-d tensor laid out channels_last and not also contiguous (the kernels' NHWC case)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _build_name_and_flags(capability: str | None = None) -> tuple[str, list[str]]:
    """The build's cache name and compiler flags. The vector flags follow the instruction set
    PyTorch itself uses on this CPU (or ``capability``, as ``torch.backends.cpu.get_cpu_capability``
    names it); the name carries it and the torch version, so a cache shared between machines or
    torch versions never loads a build made for another.
    """
    if capability is None:
        capability = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "DEFAULT"
    x86 = os.name != "nt" and platform.machine().lower() in ("x86_64", "amd64")
    flags = ["-mavx2", "-mfma"] if x86 and capability in ("AVX2", "AVX512") else []
    if x86 and capability == "AVX512":  # PyTorch's AVX512 level implies these four (its own kernels use them)
        # 512-bit vectors: the GroupNorm + SiLU kernel (a sigmoid per element) 1.1-1.5x faster than
        # with AVX2 on the AVX-512 development CPU (docs/performance.md)
        flags += ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mprefer-vector-width=512"]
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        flags.append("-fopenmp")  # torch's own libgomp is the one loaded, so the threads are torch's
    tag = "".join(c if c.isalnum() else "_" for c in f"{capability}_{torch.__version__}")
    return f"diffkit_cpu_kernels_{tag}".lower(), flags


def _announce_a_first_build(name: str) -> None:
    """One line on stderr when the kernels are not cached yet, so that the build is not a silent pause."""
    try:
        from torch.utils.cpp_extension import _get_build_directory
        if any(Path(_get_build_directory(name, False)).glob(f"{name}.*[sp][oy]*")):
            return
    except Exception:  # a private helper of torch: without it, say nothing
        return
    print("diffkit: building its CPU kernels (Winograd convolutions, GroupNorm, dropout) for this machine "
          "(once; about 30 s)", file=sys.stderr, flush=True)


WAIT_NOTE_AFTER_S = 5.0  # a wait for the build lock longer than this is announced (loading takes well under 1 s)


def _note_a_long_wait(folder: Path) -> None:
    if int(os.environ.get("RANK", "0") or 0) == 0:  # under --nproc N the ranks queue here: rank 0 speaks for all
        print(f"diffkit: waiting for another process that holds the CPU kernels' build lock in {folder} "
              f"(building or loading them)", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _build_folder_lock(name: str):
    """Hold an exclusive OS lock on the build folder of ``name``; under it, a torch ``lock`` file
    is stale (left by a killed build) and removed. Every load takes the lock (the ranks of
    ``--nproc N`` take it in turn), so a wait is announced only once it has lasted
    ``WAIT_NOTE_AFTER_S`` seconds (a build by another process), by rank 0 only."""
    try:
        import fcntl
        from torch.utils.cpp_extension import _get_build_directory
        folder = Path(_get_build_directory(name, False))
        handle = open(folder / "diffkit_build.flock", "a")
    except Exception:  # no fcntl (Windows), torch's private helper gone, a read-only cache: torch's lock alone
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            note = threading.Timer(WAIT_NOTE_AFTER_S, _note_a_long_wait, (folder,))
            note.daemon = True
            note.start()
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)
            finally:
                note.cancel()
        try:
            (folder / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build(name: str, flags: list[str]):
    """Compile (or load from torch's cache) the kernels as module ``name`` with ``flags``. torch
    rebuilds a cached module when a source or a flag changes, not a header: the headers' digest
    goes into the flags."""
    from torch.utils.cpp_extension import load
    here = Path(__file__).parent
    digest = hashlib.sha1(b"".join((here / header).read_bytes() for header in _HEADERS)).hexdigest()[:16]
    return load(name, [str(here / source) for source in _SOURCES],
                extra_cflags=["-O3", *flags, f"-DDIFFKIT_HEADERS_SHA1={digest}"], verbose=False)


def cpu_kernels():
    """The loaded extension module, or None when disabled or when it cannot be built here (one
    warning, the first time)."""
    if not _state["enabled"]:
        return None
    if _state["tried"]:
        return _state["extension"]
    with _build_lock:
        if _state["tried"]:
            return _state["extension"]
        try:
            venv_bin = str(Path(sys.executable).parent)
            if shutil.which("ninja") is None and (Path(venv_bin) / "ninja").exists():
                os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
            name, flags = _build_name_and_flags()
            with _build_folder_lock(name):
                _announce_a_first_build(name)
                _state["extension"] = build(name, flags)
        except Exception as error:  # no compiler, no ninja, no headers: PyTorch's operators stay
            warnings.warn(f"CPU kernels unavailable ({type(error).__name__}: "
                          f"{first_line(error)}); using PyTorch's convolutions, "
                          "GroupNorm and dropout", DiffkitWarning, stacklevel=3)
        _state["tried"] = True
    return _state["extension"]
