"""A CLIP model (Radford et al. 2021) from a local directory as a differentiable image-text
similarity, for CLIP guidance (:class:`diffkit.guidance.CLIPGuidance`, docs/guidance.md).

* :func:`clip_preprocess` - CLIPImageProcessor's steps in torch, differentiably: images in
  [-1, 1] are mapped to [0, 1], resized so the shorter edge is ``size`` (bicubic with
  antialiasing, PIL's kernel, as the processor resizes), centre-cropped to ``size`` x ``size``
  and normalised per channel, (x - mean) / std, with CLIP's constants (``CLIP_MEAN``,
  ``CLIP_STD``: OpenAI CLIP's, the processor's defaults) or a folder's own.
* :class:`LocalCLIP` - a ``transformers.CLIPModel`` with its tokenizer:
  ``image_embeddings(images)`` and ``text_embeddings(prompts)`` give unit-length embeddings, so
  their dot product is the cosine similarity that CLIP's logits scale by exp(logit_scale).
  ``clip(images, t=None)`` is the image embedding, the callable CLIP guidance takes (an ordinary
  CLIP ignores ``t``; a noise-aware one, GLIDE's, would use it).
* :func:`load_clip` - a folder written by ``CLIPModel.save_pretrained`` and the tokenizer's
  ``save_pretrained`` (``config.json`` of model_type ``clip``, safetensors weights,
  ``vocab.json`` + ``merges.txt``; the tokenizer may sit in ``tokenizer/``; an optional
  ``preprocessor_config.json`` gives the normalisation constants). Nothing is downloaded.
  Only ``image_mean`` and ``image_std`` (a list of 3, or one number for all channels) are read
  from ``preprocessor_config.json``: its ``size``, ``crop_size``, ``do_resize``,
  ``do_center_crop``, ``do_normalize``, ``rescale_factor`` and ``resample`` are ignored, the image
  size is the vision tower's ``vision_config.image_size``, and the steps are always resize
  (bicubic), centre crop, [-1, 1] -> [0, 1], normalise. That is what OpenAI's CLIPs' processors
  do (size = crop_size = image_size, rescale 1/255, normalise on); a folder whose processor
  differs is preprocessed as OpenAI's would be.
* :func:`write_random_clip` - a CLIP of *random* weights with a character-level tokenizer,
  written as such a folder: the stand-in of the tests and of benchmarks/clip_guidance_probe.py,
  which can show the mechanism of CLIP guidance but nothing about image quality.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .errors import DiffkitError, DiffkitWarning, first_line

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP; CLIPImageProcessor's image_mean
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)  # and image_std


def clip_preprocess(images: torch.Tensor, size: int, mean: Sequence[float] = CLIP_MEAN,
                    std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """CLIP's ``pixel_values`` of images in [-1, 1] (B, 3, H, W), differentiable in the images.

    As CLIPImageProcessor (resize the shorter edge to ``size``, centre crop ``size`` x ``size``,
    rescale to [0, 1], normalise): the resize is bicubic with antialiasing, whose kernel
    (a = -0.5) is PIL's bicubic, the processor's default resample. No clamping, so the gradient
    reaches values outside [-1, 1] too."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise DiffkitError(f"CLIP takes RGB images (batch, 3, height, width); got shape {tuple(images.shape)}")
    x = (images + 1) / 2  # [-1, 1] -> [0, 1], the processor's rescale of x / 255
    h, w = x.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)  # transformers' get_resize_output_image_size
    new_h, new_w = (size, new_long) if h <= w else (new_long, size)
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2  # transformers' center_crop
    x = x[..., top:top + size, left:left + size]
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    return (x - mean_t) / std_t


def _features(output) -> torch.Tensor:
    """get_image_features / get_text_features: a tensor (transformers 4) or an output whose
    ``pooler_output`` holds the projected features (transformers 5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class LocalCLIP:
    """A frozen ``transformers.CLIPModel`` and its tokenizer (see :func:`load_clip`).

    Args:
        model: the CLIPModel (its parameters are frozen and it is put in eval mode).
        tokenizer: a CLIPTokenizer (or any tokenizer callable as transformers' are).
        mean, std: the normalisation constants (default CLIP's).
    """

    def __init__(self, model, tokenizer, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
        self.model = model.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.image_size = int(model.config.vision_config.image_size)
        self.max_length = int(model.config.text_config.max_position_embeddings)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """:func:`clip_preprocess` at this CLIP's image size and constants, in its dtype and device."""
        return clip_preprocess(images.to(device=self.device, dtype=self.dtype), self.image_size, self.mean, self.std)

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-length image embeddings (B, projection_dim) of images in [-1, 1], differentiable."""
        features = _features(self.model.get_image_features(pixel_values=self.preprocess(images)))
        return F.normalize(features, dim=-1)

    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit-length text embeddings (P, projection_dim), without gradients. A prompt longer than
        the CLIP's context (``max_length`` tokens, start and end included: 77 for OpenAI's CLIPs) is
        truncated, as CLIP was trained, with one warning per call naming the longest's length."""
        prompts = list(prompts)
        longest = max((len(ids) for ids in self.tokenizer(prompts, verbose=False).input_ids), default=0)
        if longest > self.max_length:
            warnings.warn(f"a prompt of {longest} tokens (start and end tokens included) is cut to the first "
                          f"{self.max_length}: this CLIP reads at most {self.max_length} tokens", DiffkitWarning,
                          stacklevel=2)
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                                return_tensors="pt")
        with torch.no_grad():
            features = _features(self.model.get_text_features(input_ids=tokens.input_ids.to(self.device),
                                                              attention_mask=tokens.attention_mask.to(self.device)))
        return F.normalize(features, dim=-1)

    def similarity(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Cosine similarities (B, P) of images in [-1, 1] and prompts (CLIP's logits / exp(logit_scale))."""
        with torch.no_grad():
            return self.image_embeddings(images) @ self.text_embeddings(prompts).T

    def __call__(self, images: torch.Tensor, t=None) -> torch.Tensor:
        """The image embedding, as CLIP guidance calls it (``t`` unused: this CLIP is not noise-aware)."""
        return self.image_embeddings(images)


def check_clip_folder(directory) -> tuple[Path, Path]:
    """(the folder, its tokenizer folder) after the checks that read no weights: the folder exists,
    its ``config.json`` is a whole CLIP's (model_type ``clip``), safetensors weights and the
    tokenizer's ``vocab.json`` + ``merges.txt`` are present. One-line errors otherwise; ``diffkit
    sample`` runs this with its flags, before the checkpoint is read or any output folder made."""
    root = Path(directory)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DiffkitError(f"CLIP model directory {str(root)!r} {what}")
    config_file = root / "config.json"
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    if model_type != "clip":
        found = "no config.json" if not config_file.is_file() else f"model_type {model_type!r}"
        raise DiffkitError(f"{str(root)!r} is not a CLIP model folder ({found}); CLIP guidance needs a whole CLIP "
                           f"(image and text towers: config.json with model_type 'clip', as CLIPModel.save_pretrained "
                           f"writes it)")
    if not any((root / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        raise DiffkitError(f"no safetensors weights in {str(root)!r}: model.safetensors (or a sharded "
                           f"model.safetensors.index.json), as CLIPModel.save_pretrained writes them, belongs beside "
                           f"config.json")
    tok_dir = root / "tokenizer" if (root / "tokenizer").is_dir() else root
    if not ((tok_dir / "vocab.json").is_file() and (tok_dir / "merges.txt").is_file()):
        # (transformers would make an empty tokenizer, and every prompt would be the same)
        raise DiffkitError(f"no CLIP tokenizer in {str(root)!r}: vocab.json and merges.txt (tokenizer.save_pretrained "
                           f"writes them) belong beside config.json or in tokenizer/")
    return root, tok_dir


def _normalisation(processor: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(image_mean, image_std) of a ``preprocessor_config.json``, CLIP's where it gives none; a
    single number is every channel's, as CLIPImageProcessor takes it. One-line errors otherwise."""
    try:
        spec = json.loads(processor.read_text())
    except (OSError, ValueError) as err:  # (UnicodeDecodeError is a ValueError)
        raise DiffkitError(f"cannot read {str(processor)!r}: {first_line(err, 120)}") from None
    if not isinstance(spec, dict):
        raise DiffkitError(f"{str(processor)!r} is not a JSON object (it holds a {type(spec).__name__}); a "
                           f"preprocessor_config.json maps names such as image_mean to values")
    values = {}
    for key, default in (("image_mean", CLIP_MEAN), ("image_std", CLIP_STD)):
        value = spec.get(key, default)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value] * 3
        if (not isinstance(value, (list, tuple)) or len(value) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           for v in value)):
            raise DiffkitError(f"{str(processor)!r} gives {key} {value!r}; CLIP guidance needs 3 values each (RGB) "
                               f"or one for all channels, finite numbers")
        values[key] = tuple(float(v) for v in value)
    if min(values["image_std"]) <= 0:
        raise DiffkitError(f"{str(processor)!r} gives image_std {list(values['image_std'])!r}; image_std must be > 0 "
                           f"(it divides)")
    return values["image_mean"], values["image_std"]


def load_clip(directory, device="cpu", progress: bool = True) -> LocalCLIP:
    """A :class:`LocalCLIP` from a local folder (see the module docstring); nothing is downloaded.
    One-line errors for a missing folder, a folder that is not a whole CLIP (e.g. a CLIPTextModel
    alone; :func:`check_clip_folder`), unreadable weights (e.g. a truncated ``model.safetensors``)
    or tokenizer, NaN / infinite weights (naming the file and tensor, as
    :func:`diffkit.interop.check_finite_model`) and a bad ``preprocessor_config.json``."""
    root, tok_dir = check_clip_folder(directory)
    from safetensors import SafetensorError

    from .interop import check_finite_model, library_progress_bars, require
    transformers = require("transformers")
    try:
        with library_progress_bars(progress, ("transformers",)):
            model = transformers.CLIPModel.from_pretrained(str(root), local_files_only=True, use_safetensors=True)
            tokenizer = transformers.CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError, SafetensorError) as err:
        raise DiffkitError(f"cannot load a CLIP model from {str(root)!r}: {type(err).__name__}: "
                           f"{first_line(err, 160)}") from None
    check_finite_model(model, root, "--clip-model")  # NaN / inf weights: one line naming the file and tensor
    if len(tokenizer) > model.config.text_config.vocab_size:
        raise DiffkitError(f"the tokenizer in {str(tok_dir)!r} has {len(tokenizer)} tokens but the CLIP's text tower "
                           f"{model.config.text_config.vocab_size}; they are not one model's")
    mean, std = CLIP_MEAN, CLIP_STD
    processor = root / "preprocessor_config.json"
    if processor.is_file():
        mean, std = _normalisation(processor)
    if model.config.vision_config.num_channels != 3:
        raise DiffkitError(f"the CLIP in {str(root)!r} takes {model.config.vision_config.num_channels}-channel "
                           f"images; CLIP guidance needs an RGB CLIP")
    return LocalCLIP(model.to(device), tokenizer, mean, std)


def write_random_clip(directory, *, image_size: int = 16, patch_size: int = 4, width: int = 32,
                      projection_dim: int = 16, layers: int = 1, seed: int = 0, max_tokens: int = 16) -> Path:
    """Write a CLIP of random weights (seeded) and a character-level CLIPTokenizer (letters,
    digits; no merges) into ``directory`` as :func:`load_clip` reads it. Random weights: for
    tests and mechanism probes only, never a measure of image-text agreement."""
    import transformers

    from .interop import library_progress_bars
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"),
                                           model_max_length=max_tokens)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=width, intermediate_size=2 * width,
                         num_hidden_layers=layers, num_attention_heads=2, max_position_embeddings=max_tokens,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                           num_attention_heads=2, image_size=image_size, patch_size=patch_size, num_channels=3),
        projection_dim=projection_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.CLIPModel(config)
    with library_progress_bars(False, ("transformers",)):
        model.save_pretrained(str(root))
        tokenizer.save_pretrained(str(root))
    return root


__all__ = ["CLIP_MEAN", "CLIP_STD", "LocalCLIP", "check_clip_folder", "clip_preprocess", "load_clip",
           "write_random_clip"]
