"""Checkpoints: safetensors tensors + JSON metadata, written atomically, verified on load.

A checkpoint is one ``.safetensors`` file. Tensors: ``model.*`` (weights), ``ema.*`` (EMA
weights), ``optim.<param index>.<name>`` (optimiser state), ``schedule.betas``, ``rng.*``
(random-generator states) and any extra state. The header's metadata holds JSON: the training
config, step, epoch, position in the epoch, optimiser hyper-parameters, the library version, and
a sha256 over every tensor's bytes and one over the metadata's JSON text, which
:func:`load_checkpoint` checks, so a corrupt or truncated file (a flipped bit in a weight or in
the step, learning rate or config) is refused with a clear message. Files written before the
metadata checksum existed (diffkit of 5 December 2026 and earlier) have only the tensors' one,
and still load.

Writing goes to a temporary file in the same folder, is fsynced and then renamed over the
target (``os.replace``, atomic on POSIX), so a kill at any moment leaves either the old or the
new file, never a partial one. A process killed between the temp file's creation and the
rename leaves a hidden ``.<name>.<pid>-<host>.<random>.tmp`` file, which no loader ever reads:
the first write of a process into a folder deletes the leftovers there whose writer is gone
(:func:`remove_dead_writers_temp_files`: the process id is not alive on this host and PID namespace), and
:func:`remove_stale_temp_files` deletes all of them (the trainer calls it before each save,
holding the run folder's lock).
Legacy ``.pt``/``.pth`` files load only through ``torch.load(weights_only=True)``: no pickle
code runs.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import DiffkitError, WriteError, first_line

FORMAT = "diffkit-checkpoint-1"
LEGACY_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of every tensor, in sorted key order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def hash_file(path, *hashes):
    """Feed the bytes of the file ``path`` to each ``hashlib`` object, 1 MiB at a time; returns ``hashes``."""
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            for h in hashes:
                h.update(chunk)
    return hashes


def give_usual_mode(path, mode: int) -> None:
    """chmod ``path`` to ``mode`` less the process umask: what ``open``/``mkdir`` would have given it
    (``tempfile.mkstemp``/``mkdtemp`` make 0600/0700 files and folders)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


@functools.lru_cache(maxsize=None)
def _host_tag() -> str:
    """8 hex digits naming this boot of this host and its PID namespace in temp file names (a
    process id means nothing on another host, after a reboot, or in another container on this one;
    two machines may share a host name and the initial namespace, not a boot id)."""
    parts = [socket.gethostname()]
    for name, read in (("/proc/sys/kernel/random/boot_id", lambda p: Path(p).read_text().strip()),
                       ("/proc/self/ns/pid", os.readlink)):
        try:
            parts.append(read(name))
        except OSError:  # no /proc (macOS): the host name alone
            parts.append("")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


# .<target name>.<pid>-<host tag>.<mkstemp's 8 random characters>.tmp
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>[0-9]+)-(?P<host>[0-9a-f]{8})\.[a-z0-9_]{8}\.tmp$")
_swept_dirs: set = set()  # folders this process has already swept (once each)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):  # another user's process (or an odd number): keep
        return True
    return True


def remove_dead_writers_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete the hidden temp files of :func:`atomic_write_bytes` in ``directory`` whose writer is
    gone: written on this host by a process id that is no longer alive (a ``kill -9`` mid-write).
    A temp file of a live process, of another host or boot, or without a process id in its name
    stays. Not on Windows, where ``os.kill(pid, 0)`` would send a Ctrl-C instead of asking."""
    removed, host = [], _host_tag()
    if os.name == "nt":
        return removed
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if (match is None or match["host"] != host or int(match["pid"]) == os.getpid()
                or _pid_alive(int(match["pid"]))):
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write_with`)."""
    return atomic_write_with(path, lambda f: f.write(data))


def atomic_write_with(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` atomically with ``write(f)`` (a binary file it may write piece by piece, so
    a large output need not be held in memory): temp file in the same folder, fsync, rename, fsync dir.

    On any failure (disk full, permission, an exception or signal mid-write) the temp file is
    removed and ``path`` keeps its previous content; an OSError becomes a one-line DiffkitError.
    The first write of a process into a folder first removes the temp files that killed writers
    left there (:func:`remove_dead_writers_temp_files`)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = os.path.abspath(path.parent)
        if folder not in _swept_dirs:
            _swept_dirs.add(folder)
            remove_dead_writers_temp_files(folder)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-{_host_tag()}.", suffix=".tmp",
                                   dir=path.parent)
    except (OSError, ValueError) as err:  # ValueError: NUL byte / unencodable character in the path
        raise WriteError(f"cannot write to {str(path.parent)!r}: {getattr(err, 'strerror', None) or err}") from None
    try:
        give_usual_mode(tmp, 0o666)  # mkstemp creates 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise WriteError(f"could not write {path}: {err.strerror or err} (nothing was left behind; "
                               f"the previous file, if any, is intact)") from None
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def remove_stale_temp_files(directory: str | os.PathLike, names: tuple[str, ...] = ("*.safetensors",)) -> list[Path]:
    """Delete the hidden temp files (``.<name>.*.tmp``) that :func:`atomic_write_bytes` leaves
    behind when a process is killed mid-write, for target names matching ``names``.

    Only call this when no other process writes into ``directory`` (one run per folder)."""
    removed = []
    for pattern in names:
        for tmp in Path(directory).glob(f".{pattern}.*.tmp"):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Save tensors and JSON-serialisable metadata atomically (see module doc)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    from . import __version__
    text = json.dumps(metadata, sort_keys=True)
    meta = {"format": FORMAT, "diffkit_version": __version__, "sha256": tensors_digest(tensors),
            "metadata": text, "metadata_sha256": hashlib.sha256(text.encode()).hexdigest()}
    return atomic_write_bytes(path, st_save(tensors, metadata=meta))


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and verify a checkpoint: (tensors, metadata). Errors are one line."""
    path = Path(path)
    try:
        if path.is_dir():
            if not (path / "latest.safetensors").exists():
                raise DiffkitError(_no_checkpoint_in(path))
            path = path / "latest.safetensors"
        if not path.is_file():
            raise DiffkitError(f"checkpoint {path} {'is not a regular file' if path.exists() else 'does not exist'}")
        if path.suffix in LEGACY_SUFFIXES:
            return load_legacy_checkpoint(path), {}
        data = path.read_bytes()
    except (OSError, ValueError) as err:  # ValueError: a NUL byte or unencodable character in the path
        if isinstance(err, DiffkitError):
            raise
        raise DiffkitError(f"cannot read checkpoint {str(path)!r}: {getattr(err, 'strerror', None) or err}") from None
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
        meta = header.get("__metadata__", {}) or {}
    except (SafetensorError, ValueError, OSError, json.JSONDecodeError) as err:
        if path.suffix != ".safetensors" and not _looks_like_safetensors(path):
            raise DiffkitError(f"checkpoint {path} is not a safetensors file ({first_line(err, 80)}); give a diffkit "
                               f"checkpoint (.safetensors) or a run's checkpoint folder") from None
        raise DiffkitError(f"checkpoint {path} is corrupt or truncated ({first_line(err, 80)}); "
                           f"use an earlier checkpoint") from None
    if meta.get("format") != FORMAT:
        if "diffkit_evaluator" in meta:  # was "(format=None)"
            raise DiffkitError(f"{path} is a diffkit evaluator (diffkit train-evaluator), not a model checkpoint; "
                               f"give it to --evaluator")
        raise DiffkitError(f"{path} is not a diffkit checkpoint (format={meta.get('format')!r})")
    if meta.get("sha256") != tensors_digest(tensors):
        raise DiffkitError(f"checkpoint {path} fails its checksum (corrupt); use an earlier checkpoint")
    text = meta.get("metadata", "{}")
    if "metadata_sha256" in meta and meta["metadata_sha256"] != hashlib.sha256(text.encode()).hexdigest():
        raise DiffkitError(f"checkpoint {path} fails the checksum of its metadata (corrupt); use an earlier checkpoint")
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError:
        raise DiffkitError(f"checkpoint {path} has corrupt metadata") from None
    return tensors, as_loaded(metadata)


def as_loaded(metadata):
    """Metadata as today's checks read it: a stored config with dataset 'digits' and a data_dir
    (runs before 6 December 2026 took ``--data-dir DIR`` without ``--dataset``, never read DIR and
    trained on the bundled digits) has its data_dir dropped, so resume, eval and the experiments
    do not refuse it as a new run's would be."""
    cfg = metadata.get("config") if isinstance(metadata, dict) else None
    if isinstance(cfg, dict) and cfg.get("dataset", "digits") == "digits" and cfg.get("data_dir") is not None:
        return {**metadata, "config": {**cfg, "data_dir": None}}
    return metadata


def checkpoint_step(path: Path) -> Optional[int]:
    """The step in a ``ckpt_<step>.safetensors`` name; None for any other name (``ckpt_best``)."""
    digits = path.name[len("ckpt_"):-len(".safetensors")]
    named = path.name.startswith("ckpt_") and path.name.endswith(".safetensors")
    return int(digits) if named and digits.isascii() and digits.isdigit() else None


def step_checkpoints(folder) -> list[Path]:
    """The ``ckpt_<step>.safetensors`` files in ``folder``, oldest step first (by step, not name: an
    unpadded or 9-digit step sorts wrongly by name; ``ckpt_best`` and other names are not steps)."""
    return sorted((p for p in Path(folder).glob("ckpt_*.safetensors") if checkpoint_step(p) is not None),
                  key=checkpoint_step)


def _no_checkpoint_in(folder: Path) -> str:
    """The one-line message for a folder without ``latest.safetensors``: what the folder is instead."""
    start = f"checkpoint folder {folder} has no latest.safetensors"
    if (folder / "checkpoints" / "latest.safetensors").is_file():
        return f"{start}; it is a run folder: give its checkpoint folder {folder / 'checkpoints'}"
    if (folder / "model_index.json").is_file():
        return (f"{start}; it is a diffusers folder, not a diffkit checkpoint (diffkit sample reads Stable Diffusion "
                f"/ SD-XL, SD3, FLUX.1 and DiTPipeline folders, diffkit edit the first three, diffkit eval DiTPipeline "
                f"ones; diffkit convert --from-diffusers converts a DDPMPipeline or a pixel-space DiTPipeline)")
    if any((folder / part).is_dir() for part in ("unet", "vae", "text_encoder", "scheduler")):
        return f"{start}; it has diffusers components but no model_index.json, which a diffusers folder needs"
    saved = step_checkpoints(folder)
    if saved:
        return f"{start}; its newest checkpoint is {saved[-1]}: give that file"
    others = sorted(folder.glob("ckpt_*.safetensors"))
    if others:
        return f"{start}; it holds {others[-1]}: give that file"
    return f"{start} or ckpt_*.safetensors; give a .safetensors checkpoint or a run's checkpoint folder"


def _looks_like_safetensors(path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length and then '{'."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000


def peek_header_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file's header ({} for anything else)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size)) if 0 < size < 100_000_000 else {}
        meta = header.get("__metadata__") or {}
    except (OSError, ValueError, AttributeError, RecursionError):  # RecursionError: a deeply nested JSON header
        return {}
    return meta if isinstance(meta, dict) else {}


def peek_metadata(path: str | os.PathLike) -> Optional[dict[str, Any]]:
    """The JSON metadata of a diffkit checkpoint read from its header alone (no tensors, no
    checksum), or None for anything else: a cheap look at what a file is before writing over it."""
    meta = peek_header_metadata(path)
    if meta.get("format") != FORMAT:
        return None
    try:
        value = json.loads(meta.get("metadata", "{}"))
    except ValueError:
        return None
    return as_loaded(value) if isinstance(value, dict) else None


def step_of(meta: dict):
    """The training step a checkpoint's weights are from: its ``step``, or a weights-only export's
    ``exported_from["step"]`` (None when neither is recorded)."""
    return meta.get("step", (meta.get("exported_from") or {}).get("step"))


def check_not_other_kind(path, meta: dict, wanted: str) -> None:
    """A one-line DiffkitError if ``meta`` is that of another kind of diffkit file (an autoencoder, a
    classifier: their ``kind``) where ``wanted`` (e.g. "a diffusion model checkpoint") was given; the
    callers' own messages ("no model description") did not say what the file is."""
    kind = meta.get("kind")
    if isinstance(kind, str):
        raise DiffkitError(f"{path} is a diffkit {kind} file, not {wanted}")


def file_kind(path: str | os.PathLike) -> Optional[str]:
    """What a diffkit file holds, from its header alone: ``training checkpoint``, ``classifier``,
    ``autoencoder``, ``samples``, ``diffusion weights`` (a weights-only or imported model),
    ``evaluator``; None for a missing file or anything else."""
    if not Path(path).is_file():
        return None
    meta = peek_metadata(path)
    if meta is None:
        return "evaluator" if "diffkit_evaluator" in peek_header_metadata(path) else None
    if "step" in meta and "unet" in meta and "ema_updates" in meta:  # what Trainer.save writes
        return "training checkpoint"
    if isinstance(meta.get("kind"), str):
        return meta["kind"]
    return "diffusion weights" if "unet" in meta else "diffkit file"


def load_legacy_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A plain PyTorch state dict (e.g. the seed's ``ckpt_199.pt``), loaded with
    ``torch.load(weights_only=True)``: a pickle that would run code is refused, never executed."""
    if _looks_like_safetensors(path):
        raise DiffkitError(f"{path} is a safetensors file, not a PyTorch pickle; give it the .safetensors suffix")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the unpickler refuses unsafe globals with UnpicklingError/RuntimeError
        raise DiffkitError(f"refusing to load {path}: not a plain tensor state dict ({first_line(err)})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DiffkitError(f"{path} does not hold a state dict of tensors")
    return dict(obj)


def load_state_dict_checked(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(state_dict)`` (strict) with a one-line DiffkitError naming the
    missing / unexpected keys and wrong shapes, instead of PyTorch's multi-line RuntimeError."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    extra = [k for k in state_dict if k not in expected]
    wrong = [f"{k} {tuple(state_dict[k].shape)} vs {expected[k]}" for k in expected
             if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", extra), ("wrong shapes", wrong)):
        if items:
            more = f", ... ({len(items)} in all)" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    if problems:
        raise DiffkitError(f"{what} does not match the model described by its config ({'; '.join(problems)})")
    module.load_state_dict(state_dict)


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix.``, with the prefix removed."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser's state as flat tensors ``optim.<index>.<name>`` plus JSON hyper-parameters."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Restore what :func:`optimizer_to_tensors` saved into ``optimizer``."""
    state: dict[int, dict] = {}
    for key, value in split_prefix(tensors, "optim").items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    match_parameter_layout(optimizer)


def match_parameter_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor (Adam's moments) its parameter's strides.

    A checkpoint stores tensors contiguous, while a channels_last model's conv weights are not;
    torch's fused AdamW kernel assumes the state and the parameter share a layout and updates
    wrongly when they differ, so a resumed run would silently diverge. Values are unchanged."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if (isinstance(value, torch.Tensor) and value.shape == param.shape
                        and value.stride() != param.stride()):
                    optimizer.state[param][name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def latest_checkpoint(directory: str | os.PathLike) -> Optional[Path]:
    """``latest.safetensors`` in ``directory`` if present."""
    p = Path(directory) / "latest.safetensors"
    return p if p.exists() else None
