"""Checkpoints: safetensors tensors + JSON metadata, written atomically, verified on load.

A checkpoint is one ``.safetensors`` file. Tensors: ``model.*`` (weights), ``ema.*`` (EMA
weights), ``optim.<param index>.<name>`` (optimiser state), ``schedule.betas``, ``rng.*``
(random-generator states) and any extra state. The header's metadata holds JSON: the training
config, step, epoch, position in the epoch, optimiser hyper-parameters, the library version, and
a sha256 over every tensor's bytes, which :func:`load_checkpoint` checks, so a corrupt or
truncated file is refused with a clear message.

Writing goes to a temporary file in the same folder, is fsynced and then renamed over the
target (``os.replace``, atomic on POSIX), so a kill at any moment leaves either the old or the
new file, never a partial one. Legacy ``.pt``/``.pth`` files load only through
``torch.load(weights_only=True)``: no pickle code runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import DiffkitError

FORMAT = "diffkit-checkpoint-1"


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of every tensor, in sorted key order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename, fsync dir."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise DiffkitError(f"cannot write to {path.parent}: {err.strerror or err}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise DiffkitError(f"could not write {path}: {err.strerror or err} (nothing was left behind)") from None
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Save tensors and JSON-serialisable metadata atomically (see module doc)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    from . import __version__
    meta = {"format": FORMAT, "diffkit_version": __version__, "sha256": tensors_digest(tensors),
            "metadata": json.dumps(metadata, sort_keys=True)}
    return atomic_write_bytes(path, st_save(tensors, metadata=meta))


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and verify a checkpoint: (tensors, metadata). Errors are one line."""
    path = Path(path)
    if path.is_dir():
        path = path / "latest.safetensors"
    if not path.exists():
        raise DiffkitError(f"checkpoint {path} does not exist")
    if path.suffix in (".pt", ".pth", ".ckpt"):
        return load_legacy_checkpoint(path), {}
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
        meta = header.get("__metadata__", {}) or {}
    except (SafetensorError, ValueError, OSError, json.JSONDecodeError) as err:
        raise DiffkitError(f"checkpoint {path} is corrupt or truncated ({str(err).splitlines()[0][:80]}); "
                           f"use an earlier checkpoint") from None
    if meta.get("format") != FORMAT:
        raise DiffkitError(f"{path} is not a diffkit checkpoint (format={meta.get('format')!r})")
    if meta.get("sha256") != tensors_digest(tensors):
        raise DiffkitError(f"checkpoint {path} fails its checksum (corrupt); use an earlier checkpoint")
    try:
        metadata = json.loads(meta.get("metadata", "{}"))
    except json.JSONDecodeError:
        raise DiffkitError(f"checkpoint {path} has corrupt metadata") from None
    return tensors, metadata


def load_legacy_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A plain PyTorch state dict (e.g. the seed's ``ckpt_199.pt``), loaded with
    ``torch.load(weights_only=True)``: a pickle that would run code is refused, never executed."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the unpickler refuses unsafe globals with UnpicklingError/RuntimeError
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise DiffkitError(f"refusing to load {path}: not a plain tensor state dict ({first})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DiffkitError(f"{path} does not hold a state dict of tensors")
    return dict(obj)


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


def latest_checkpoint(directory: str | os.PathLike) -> Optional[Path]:
    """``latest.safetensors`` in ``directory`` if present."""
    p = Path(directory) / "latest.safetensors"
    return p if p.exists() else None
