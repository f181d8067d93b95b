"""Finished batches of generated samples kept on disk, so that a long run resumes where it stopped.

A table cell at S = 1000 steps and 2000 samples costs two million network calls (hours on a CPU).
:class:`SampleCache` stores each finished batch of :func:`diffkit.evaluation.generate_samples` as
one safetensors file, written atomically; rerunning the same command loads those batches instead
of sampling them again. Because sample i always starts from the noise of seed ``seed + i``
(whatever the batch size), a resumed run gives exactly the samples of an uninterrupted one.

Batches are filed under a folder named by a digest of everything that decides the samples: the
network's (and a latent decoder's) weights (:func:`diffkit.checkpoint.tensors_digest`), the
denoiser's settings (schedule, prediction type, mixed precision, compile mode, FreeU if on), the device type,
and the sampler, its steps and options. The batch's first index, size and seed name the file (so
only a run with the same batch size reuses it), and its class labels are checked on load. A
batch file is a diffkit checkpoint (:mod:`diffkit.checkpoint`: sha256 over its tensors and
metadata), so a damaged one fails its checksum and is sampled again (batches cached before the
checksums, up to 5 December 2026, are read without one). The
digest does not cover diffkit's or PyTorch's own code: clear the folder after upgrading either if
exact reproducibility matters.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from .checkpoint import atomic_write_bytes, load_checkpoint, peek_metadata, save_checkpoint, tensors_digest
from .errors import DiffkitError, WriteError


def key_digest(obj) -> str:
    """A short sha256 of a JSON-able key (sorted keys; other objects by their str)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


# the checkpoint metadata that decides the network's outputs (not the training state or versions)
_OUTPUT_META = ("unet", "prediction_type", "learned_variance", "latent", "text")


def denoiser_identity(denoiser) -> dict:
    """What decides a denoiser's outputs: weights digest, metadata, precision, compile mode, device type.

    A wrapper that changes the outputs by settings of its own (guidance, thresholding, inpainting) is
    refused: the key would not hold them. A consistency model's wrapper adds its own settings (c_skip / c_out,
    source times, w range: also for a wrapper built by hand around a diffusion model)."""
    from .consistency import ConsistencyDenoiser
    from .denoiser import Wrapper
    from .models.freeu import freeu_of
    if isinstance(denoiser, Wrapper) and not isinstance(denoiser, ConsistencyDenoiser):
        raise DiffkitError(f"a sample cache is keyed by the loaded denoiser; a {type(denoiser).__name__} around it "
                           f"has settings the key does not hold: draw without a cache (cache_dir=None)")
    model = getattr(denoiser, "model", None) or denoiser.net
    device = next(model.parameters()).device.type
    schedule = denoiser.schedule
    decoder = getattr(denoiser, "decoder", None)
    return {
        "decoder": None if decoder is None else [tensors_digest(decoder.model.state_dict()), decoder.scale_factor],
        "weights": tensors_digest(model.state_dict()),
        "meta": {k: v for k, v in (getattr(denoiser, "meta", None) or {}).items() if k in _OUTPUT_META},
        "prediction_type": getattr(denoiser, "prediction_type", None),
        "schedule": tensors_digest({"alphas_cumprod": schedule.alphas_cumprod.double()}),
        "mixed_precision": getattr(denoiser, "mixed_precision", "no"),
        "compile": getattr(denoiser, "compiled", "no"),
        "device": device,
        # the logsnr_graded grid follows it; absent (not None) for denoisers without one, as before
        **({"data_scale": denoiser.data_scale} if getattr(denoiser, "data_scale", None) is not None else {}),
        **({"sigma_data": denoiser.sigma_data} if getattr(denoiser, "prediction_type", None) == "edm" else {}),
        # FreeU in the U-Net's decoder (diffkit.models.freeu): absent when off, as before
        **({"freeu": freeu.as_list()} if (freeu := freeu_of(denoiser)) is not None else {}),
        **({"consistency": {"sigma_data": denoiser.sigma_data, "timestep_scaling": denoiser.timestep_scaling,
                            "times": [float(t) for t in denoiser.consistency_times],
                            "guidance_range": denoiser.guidance_range}}
           if isinstance(denoiser, ConsistencyDenoiser) else {}),
    }


def open_cache(cache_dir, denoiser) -> Optional["SampleCache"]:
    """A :class:`SampleCache` in ``cache_dir`` for ``denoiser``, or None when ``cache_dir`` is None."""
    return None if cache_dir is None else SampleCache(cache_dir, denoiser)


class SampleCache:
    """A folder of finished sample batches (see the module doc)."""

    def __init__(self, root: str | Path, denoiser):
        self.root = Path(root)
        self.identity = denoiser_identity(denoiser)
        self.loaded = 0  # batches read back, for progress messages and tests
        self.saved = 0

    def _folder(self, settings: dict) -> Path:
        from .samplers.registry import canonical_settings
        key = {"denoiser": self.identity, "sampling": canonical_settings(settings)}
        folder = self.root / key_digest(key)
        manifest = folder / "key.json"
        if not manifest.exists():
            atomic_write_bytes(manifest, json.dumps(key, sort_keys=True, indent=1, default=str).encode())
        return folder

    @staticmethod
    def _name(start: int, count: int, seed: int) -> str:
        return f"samples-{start:07d}-{count:05d}-seed{seed}.safetensors"

    def load(self, settings: dict, start: int, count: int, seed: int,
             labels: Optional[torch.Tensor]) -> Optional[tuple[torch.Tensor, Optional[int]]]:
        """(images, network calls the batch cost) as stored, or None when the batch is not there
        (or is unreadable, or has other labels)."""
        path = self._folder(settings) / self._name(start, count, seed)
        if not path.exists():
            return None
        try:
            if peek_metadata(path) is not None:  # written with checksums: a damaged file is sampled again
                tensors, _ = load_checkpoint(path)
            else:  # a batch cached before the checksums (unverified) or a file that does not parse
                tensors = st_load(path.read_bytes())
        except (OSError, SafetensorError, DiffkitError):
            return None
        images = tensors.get("images")
        if images is None or images.shape[0] != count:
            return None
        if (labels is None) != ("labels" not in tensors) or (labels is not None and not torch.equal(
                tensors["labels"], labels.cpu())):
            return None
        self.loaded += 1
        return images, int(tensors["nfe"]) if "nfe" in tensors else None

    def save(self, settings: dict, start: int, count: int, seed: int, images: torch.Tensor,
             labels: Optional[torch.Tensor], nfe: Optional[int] = None) -> Path:
        """Write one finished batch atomically (a killed run leaves no partial file); ``nfe``: the
        network calls it cost (:attr:`Denoiser.nfe` counts batched calls)."""
        tensors = {"images": images.detach().float().cpu().contiguous()}
        if nfe is not None:
            tensors["nfe"] = torch.tensor(int(nfe))
        if labels is not None:
            tensors["labels"] = labels.detach().cpu().contiguous()
        path = self._folder(settings) / self._name(start, count, seed)
        try:
            save_checkpoint(path, tensors, {"kind": "samples"})  # atomic, with sha256 checksums
        except WriteError as err:
            raise WriteError(f"sample cache: {err}") from None
        self.saved += 1
        return path
