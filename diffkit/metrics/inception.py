"""The FID InceptionV3 network (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update
Rule ...", Sec. 3: FID on the 2048-d pool3 features), without torchvision.

This is the network of the TensorFlow graph ``inception-2015-12-05`` as ported to PyTorch by
pytorch-fid (mseitzer/pytorch-fid, weights ``pt_inception-2015-12-05-6726825d.pth``). Its layout
is torchvision's ``Inception3`` (Szegedy et al. 2016, "Rethinking the Inception Architecture",
Fig. 5-7 and Table 1) with a 1008-way ``fc`` head and no auxiliary classifier, and four
differences that make it match the TF graph:

* ``FIDInceptionA``, ``FIDInceptionC`` and ``FIDInceptionE_1`` average-pool their pool branch
  with ``count_include_pad=False`` (TF does not count the zero padding);
* ``FIDInceptionE_2`` (``Mixed_7c``) max-pools its pool branch instead of average-pooling.

Parameter names and shapes equal the standard weights file exactly; the list is recorded in
``inception_manifest.json`` next to this module (566 keys, 94 conv+BN units).

Weights are never downloaded implicitly: :func:`load_inception` reads them from an explicit
path, from ``$DIFFKIT_INCEPTION_WEIGHTS`` or from the cache directory ``~/.cache/diffkit/``;
:func:`download_inception_weights` fetches the public file on request (online users only).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import hash_file
from ..errors import DiffkitError, first_line
from ..images import as_float_images

WEIGHTS_FILE_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               + WEIGHTS_FILE_NAME)
WEIGHTS_HASH_PREFIX = "6726825d"
WEIGHTS_ENV_VAR = "DIFFKIT_INCEPTION_WEIGHTS"
MANIFEST_PATH = Path(__file__).with_name("inception_manifest.json")
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008


class InceptionOutput(NamedTuple):
    """Outputs of :class:`FIDInceptionV3`: pool3 ``features`` (B, 2048) and ``logits`` (B, 1008)."""

    features: Tensor
    logits: Tensor


class BasicConv2d(nn.Module):
    """Convolution without bias, then BatchNorm (eps=0.001, the TF value), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: Tensor) -> Tensor:
    """3x3 stride-1 average pool that, like TF's, ignores the zero padding."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """35x35 block (Szegedy et al. 2016, Fig. 5): 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        five = self.branch5x5_2(self.branch5x5_1(x))
        double = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([self.branch1x1(x), five, double, pool], dim=1)


class InceptionB(nn.Module):
    """Grid reduction 35x35 -> 17x17 (Szegedy et al. 2016, Fig. 10)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        double = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([self.branch3x3(x), double, pool], dim=1)


class FIDInceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (Szegedy et al. 2016, Fig. 6)."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        single = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = layer(double)
        pool = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([self.branch1x1(x), single, double, pool], dim=1)


class InceptionD(nn.Module):
    """Grid reduction 17x17 -> 8x8."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        three = self.branch3x3_2(self.branch3x3_1(x))
        seven = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3,
                      self.branch7x7x3_4):
            seven = layer(seven)
        pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([three, seven, pool], dim=1)


class _InceptionE(nn.Module):
    """8x8 block with expanded filter banks (Szegedy et al. 2016, Fig. 7).

    ``max_pool`` picks the pool branch: TF-style average pooling (``Mixed_7b``) or the 3x3
    max pooling that the TF graph uses in ``Mixed_7c``.
    """

    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        mid = self.branch3x3_1(x)
        three = torch.cat([self.branch3x3_2a(mid), self.branch3x3_2b(mid)], dim=1)
        mid = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        double = torch.cat([self.branch3x3dbl_3a(mid), self.branch3x3dbl_3b(mid)], dim=1)
        if self.max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), three, double, self.branch_pool(pooled)], dim=1)


class FIDInceptionE_1(_InceptionE):
    """``Mixed_7b``: average pool without the padded zeros, as in the TF graph."""

    def __init__(self, in_channels: int):
        super().__init__(in_channels, max_pool=False)


class FIDInceptionE_2(_InceptionE):
    """``Mixed_7c``: the TF graph max-pools here (a quirk of that graph, kept for FID parity)."""

    def __init__(self, in_channels: int):
        super().__init__(in_channels, max_pool=True)


class FIDInceptionV3(nn.Module):
    """The FID InceptionV3: images in [-1, 1] -> (pool3 features (B, 2048), logits (B, 1008)).

    Input: (B, 3, H, W) float images in [-1, 1] (diffkit's convention, which is also the range
    the TF graph expects) or uint8 images in [0, 255]; a single channel is repeated to three.
    Any H, W is resized to 299x299 bilinearly (``align_corners=False``), as pytorch-fid does.
    The logits are pool3 times the softmax weights without the ``fc`` bias, as the original
    Inception Score code computes them (Salimans et al. 2016, openai/improved-gan; also
    torch-fidelity's ``logits_unbiased``); ``unbiased_logits=False`` adds the bias.
    """

    def __init__(self, resize_input: bool = True, unbiased_logits: bool = True):
        super().__init__()
        self.resize_input = resize_input
        self.unbiased_logits = unbiased_logits
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE_1(1280)
        self.Mixed_7c = FIDInceptionE_2(2048)
        self.fc = nn.Linear(FEATURE_DIM, NUM_LOGITS)
        # He initialisation keeps activations of a randomly initialised copy at unit scale (the
        # default init shrinks them layer by layer into slow subnormal floats); loaded weights
        # replace it anyway.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")

    def preprocess(self, images: Tensor) -> Tensor:
        """Check the shape, repeat a grey channel to RGB and resize to 299x299."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise DiffkitError(f"Inception input shape {tuple(images.shape)} is not allowed; "
                               "expected (batch, 1 or 3, height, width) images in [-1, 1]")
        x = as_float_images(images, "Inception inputs")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.resize_input and tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                              align_corners=False)
        return x

    def pool3(self, x: Tensor) -> Tensor:
        """Pool3 features (B, 2048) of preprocessed 299x299 inputs."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)                       # 64 x 73 x 73
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)                       # 192 x 35 x 35
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
                      self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
                      self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)                                                   # ... 2048 x 8 x 8
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, images: Tensor) -> InceptionOutput:
        features = self.pool3(self.preprocess(images))
        bias = None if self.unbiased_logits else self.fc.bias
        return InceptionOutput(features, F.linear(features, self.fc.weight, bias))


# ----------------------------------------------------------------------------- weights


def read_manifest() -> list[tuple[str, tuple[int, ...]]]:
    """The (name, shape) list of every key in the standard weights file, in file order."""
    with open(MANIFEST_PATH, encoding="utf-8") as handle:
        manifest = json.load(handle)
    return [(entry["name"], tuple(entry["shape"])) for entry in manifest["keys"]]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/diffkit`` (``~/.cache/diffkit`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "diffkit"


def find_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """Locate the weights: ``path``, else ``$DIFFKIT_INCEPTION_WEIGHTS``, else the cache dir.

    Raises a one-line :class:`DiffkitError` saying where it looked and how to supply the file.
    """
    if path is not None:
        if Path(path).is_file():
            return Path(path)
        raise DiffkitError(f"Inception weights file {str(path)!r} does not exist; pass the path "
                           f"of {WEIGHTS_FILE_NAME} (download it from {WEIGHTS_URL})")
    from_env = os.environ.get(WEIGHTS_ENV_VAR)
    if from_env:
        if Path(from_env).is_file():
            return Path(from_env)
        raise DiffkitError(f"${WEIGHTS_ENV_VAR}={from_env!r} is not a file; point it at "
                           f"{WEIGHTS_FILE_NAME} (download it from {WEIGHTS_URL})")
    cached = default_cache_dir() / WEIGHTS_FILE_NAME
    if cached.is_file():
        return cached
    raise DiffkitError(
        f"Inception weights not found (no path given, ${WEIGHTS_ENV_VAR} unset, no {cached}); "
        f"pass a path (weights=... / --inception-weights), set ${WEIGHTS_ENV_VAR}, or when "
        f"online run diffkit.metrics.download_inception_weights() to fetch {WEIGHTS_URL}")


def check_state_dict(state_dict: dict, expected: dict[str, tuple[int, ...]], what: str) -> None:
    """Strict key and shape check; a one-line DiffkitError names what is missing/extra/wrong."""
    if not isinstance(state_dict, dict) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise DiffkitError(f"{what} is not a state dict of tensors")
    missing = [k for k in expected if k not in state_dict]
    extra = [k for k in state_dict if k not in expected]
    wrong = [f"{k} {tuple(state_dict[k].shape)} != {expected[k]}" for k in expected
             if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", extra),
                         ("wrong shapes", wrong)):
        if items:
            shown = ", ".join(items[:4]) + (f", ... ({len(items)} in all)" if len(items) > 4 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise DiffkitError(f"{what} does not match the FID Inception layout ({'; '.join(problems)}); "
                           f"expected the {len(expected)} keys of {WEIGHTS_FILE_NAME}")


def load_inception(weights: str | os.PathLike | dict | None = None, device="cpu",
                   unbiased_logits: bool = True) -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` in eval mode with its weights loaded strictly.

    ``weights``: a path, an already loaded state dict, or None to search
    (:func:`find_inception_weights`). Files are read with ``torch.load(weights_only=True)``,
    which refuses to unpickle anything but tensors and plain containers.
    """
    if isinstance(weights, dict):
        state_dict, what = weights, "the given state dict"
    else:
        path = find_inception_weights(weights)
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # corrupt file, or not a plain tensor pickle
            raise DiffkitError(f"could not read Inception weights {str(path)!r}: "
                               f"{type(err).__name__}: {first_line(err)}") from err
        what = f"weights file {str(path)!r}"
    model = FIDInceptionV3(unbiased_logits=unbiased_logits)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_state_dict(state_dict, expected, what)
    model.load_state_dict(state_dict, strict=True)
    model.requires_grad_(False)
    return model.eval().to(device)


def download_inception_weights(destination: str | os.PathLike | None = None,
                               url: str = WEIGHTS_URL) -> Path:
    """Download the standard FID Inception weights (needs network; never called by tests).

    Saves to ``destination`` (default: the cache dir, where :func:`load_inception` finds it) and
    checks that the file's digest starts with ``6726825d``, the hash in the file's name (md5 or
    sha256 accepted: public sources do not say which digest the name carries).
    """
    target = Path(destination) if destination is not None else default_cache_dir() / WEIGHTS_FILE_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=target.parent, suffix=".part")
    os.close(handle)
    try:
        with urllib.request.urlopen(url) as response, open(tmp_name, "wb") as out:
            shutil.copyfileobj(response, out)
        digests = [h.hexdigest() for h in hash_file(tmp_name, hashlib.md5(), hashlib.sha256())]
        if not any(d.startswith(WEIGHTS_HASH_PREFIX) for d in digests):
            raise DiffkitError(f"downloaded file from {url} has md5 {digests[0]} / sha256 "
                               f"{digests[1][:16]}..., neither starts with {WEIGHTS_HASH_PREFIX}")
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    return target
