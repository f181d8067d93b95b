"""Original-format Stable Diffusion 1.x / 2.x and SD-XL single files (``model.safetensors`` with the LDM / SGM keys
``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.*`` / ``conditioner.embedders.*`` of
Rombach et al. 2022's ``ldm`` and Stability's ``sgm`` repositories) as diffusers folders.

The key conversion is diffusers' own: ``PIPELINE.from_single_file(file, config=FOLDER, local_files_only=True)``
(``diffusers/loaders/single_file.py``) reads every component's config (and the tokenizers and scheduler) from the
local diffusers folder ``FOLDER`` of the same model family, so nothing is downloaded, and converts the file's
weights with ``single_file_utils.py``; ``save_pretrained`` writes the result. Before that, this module reads only the
file's header (its key names and shapes) and refuses in one line what would fail inside diffusers or convert into
a wrong model: a file that is not a single file of these families, a pickle (``.ckpt``), a ``--config`` folder of
another family or whose UNet has other shapes than the file's. SD3 / SD3.5 and FLUX.1 single files (transformer
only, or SD3's whole checkpoint) go through :mod:`diffkit.interop.single_file_dit`.

``diffkit convert --single-file FILE --config FOLDER --out NEW`` writes the folder once;
``diffkit sample`` / ``diffkit edit --checkpoint FILE --config FOLDER`` convert into a temporary folder that is
removed when the command ends (:func:`single_file_folder`). See docs/interop/single_file.md, "Single-file checkpoints".
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from ..errors import DiffkitError, first_line, read_json_object
from .single_file_dit import dit_family, load_dit_single_file

UNET = "model.diffusion_model."
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# the model_index.json classes a --config folder may be, per family of the file's UNet
FAMILIES = {"SD 1.x / 2.x": ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline",
                             "StableDiffusionInpaintPipeline"),
            "SD-XL": ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
                      "StableDiffusionXLInpaintPipeline")}


def _header(path: Path, flag: str = "--checkpoint") -> dict:
    """{key: shape} of a ``.safetensors`` file, read from its header only (no tensor is loaded)."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error kinds for a damaged file
        raise DiffkitError(f"{flag} {str(path)!r} is not a readable .safetensors file "
                           f"({first_line(err, 100)})") from None


def is_single_file(path) -> bool:
    """Whether ``path`` is a ``.safetensors`` file whose keys name an original-format (LDM / SGM) UNet or an SD3 /
    FLUX.1-like transformer (read from its header); never raises."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() in PICKLE_SUFFIXES:
        return False
    try:
        shapes = _header(path)
    except DiffkitError:
        return False
    try:
        return any(key.startswith(UNET) for key in shapes) or dit_family(shapes, path, "") is not None
    except DiffkitError:  # a Chroma / FLUX.2 file: single_file_family refuses it in one line
        return True


def single_file_family(path, flag: str = "--checkpoint") -> tuple:
    """("SD 1.x / 2.x", "SD-XL", "SD3" or "FLUX.1", {key: shape}) of a single file; one line naming ``flag`` for
    anything else."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise DiffkitError(f"{flag} {str(path)!r} is a pickle checkpoint ({path.suffix}): loading one can run "
                           f"code, so diffkit reads single files only as .safetensors; convert it once where you "
                           f"trust it (safetensors.torch.save_file of its state_dict)")
    shapes = _header(path, flag)
    family = dit_family(shapes, path, flag)
    if family is not None:
        return family, shapes
    if not any(key.startswith(UNET) for key in shapes):
        found = sorted({key.split(".")[0] + "." for key in shapes})
        raise DiffkitError(f"{flag} {str(path)!r} is not an SD 1.x / 2.x, SD-XL, SD3 or FLUX.1 single file: it has "
                           f"no {UNET}* UNet / transformer or double_blocks.* keys (its keys start with "
                           f"{', '.join(found[:6]) or 'nothing'})")
    return ("SD-XL" if UNET + "label_emb.0.0.weight" in shapes else "SD 1.x / 2.x"), shapes


def _config_unet(config: Path, path: Path, family: str, flag: str) -> tuple:
    """(model_index class, unet/config.json) of the ``--config`` folder, checked against the file's family."""
    index_file, unet_file = config / "model_index.json", config / "unet" / "config.json"
    if not config.is_dir() or not index_file.is_file() or not unet_file.is_file():
        raise DiffkitError(f"--config {str(config)!r} is not a diffusers folder with model_index.json and "
                           f"unet/config.json (the config folder of the file's model: its JSON files, tokenizers "
                           f"and scheduler; the weights are not needed)")
    kind = read_json_object(index_file, "diffusers index").get("_class_name")
    if kind not in FAMILIES[family]:
        other = next((name for name, classes in FAMILIES.items() if kind in classes), "another model family")
        raise DiffkitError(f"{flag} {str(path)!r} is an {family} single file but --config {str(config)!r} is a "
                           f"{kind or 'pipeline'} folder ({other}); allowed: {', '.join(FAMILIES[family])}")
    return kind, read_json_object(unet_file, "unet config")


def check_unet_shapes(shapes: dict, unet: dict, path: Path, config: Path, flag: str = "--checkpoint") -> None:
    """One line when the file's UNet does not have the shapes of the ``--config`` folder's UNet config: its input
    and first block's channels, the number of input blocks, the text context width and SD-XL's added-embedding
    input width (an SD 2.x file with an SD 1.5 config, say, differs in the context width, 1024 against 768)."""
    blocks = len(unet.get("down_block_types", ()))
    per_block = unet.get("layers_per_block", 2)
    per_block = per_block if isinstance(per_block, int) else sum(per_block) / max(blocks, 1)
    context = next((shape[1] for key, shape in sorted(shapes.items()) if key.endswith("attn2.to_k.weight")), None)
    conv_in = shapes.get(UNET + "input_blocks.0.0.weight", (None, None))
    inputs = {int(m.group(1)) for m in map(re.compile(re.escape(UNET) + r"input_blocks\.(\d+)\.").match, shapes) if m}
    cross = unet.get("cross_attention_dim")
    checks = [("in_channels", unet.get("in_channels"), conv_in[1]),
              ("block_out_channels[0]", (unet.get("block_out_channels") or [None])[0], conv_in[0]),
              ("input blocks", int(1 + blocks * per_block + blocks - 1), len(inputs)),
              ("cross_attention_dim", cross[0] if isinstance(cross, (list, tuple)) else cross, context)]
    if UNET + "label_emb.0.0.weight" in shapes:
        checks.append(("projection_class_embeddings_input_dim", unet.get("projection_class_embeddings_input_dim"),
                       shapes[UNET + "label_emb.0.0.weight"][1]))
    for name, theirs, ours in checks:
        if ours is not None and theirs != ours:
            raise DiffkitError(f"--config {str(config)!r} does not fit {flag} {str(path)!r}: its UNet's {name} "
                               f"is {theirs}, the file's is {ours}; give the config folder of the file's own model")


def load_single_file(path, config, progress: bool = False, dtype=None, flag: str = "--checkpoint"):
    """The diffusers pipeline of the single file ``path`` (:func:`single_file_family`), converted by diffusers'
    ``from_single_file(path, config=config, local_files_only=True)`` with the class of ``config``'s
    ``model_index.json``; ``dtype`` as diffusers' ``torch_dtype`` (None: the models' float32). No safety checker or
    feature extractor for SD 1.x / 2.x (diffkit uses neither; a config folder need not hold them)."""
    from . import _library_logs_held, library_progress_bars, require
    path, config = Path(path), Path(config)
    family, shapes = single_file_family(path, flag)
    if family not in FAMILIES:
        require("diffusers")
        require("transformers")
        try:
            with library_progress_bars(progress), _library_logs_held():
                return load_dit_single_file(path, config, family, shapes, dtype, flag)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
            if isinstance(err, DiffkitError):
                raise
            raise DiffkitError(f"diffusers could not convert {flag} {str(path)!r} with --config {str(config)!r}: "
                               f"{first_line(err, 160)}") from None
    kind, unet = _config_unet(config, path, family, flag)
    check_unet_shapes(shapes, unet, path, config, flag)
    diffusers = require("diffusers")
    require("transformers")
    extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    extra = extra if family == "SD 1.x / 2.x" else {}
    try:
        with library_progress_bars(progress), _library_logs_held():
            return getattr(diffusers, kind).from_single_file(str(path), config=str(config), local_files_only=True,
                                                             torch_dtype=dtype, **extra)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:  # a config that does not fit, a gap
        raise DiffkitError(f"diffusers could not convert {flag} {str(path)!r} with --config {str(config)!r}: "
                           f"{first_line(err, 160)}") from None


def convert_single_file(path, config, out, progress: bool = False, dtype=None, flag: str = "--checkpoint") -> Path:
    """Write the diffusers folder ``out`` (new, or an empty folder) of the single file ``path``
    (:func:`load_single_file`, ``dtype`` a torch dtype or its name, then ``save_pretrained`` as safetensors); never
    half: it is written beside ``out`` under a hidden name and renamed when whole."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DiffkitError(f"--out {str(out)!r} exists and is not an empty folder; give a new or empty folder")
    if isinstance(dtype, str):
        import torch
        dtype = getattr(torch, dtype)
    pipe = load_single_file(path, config, progress=progress, dtype=dtype, flag=flag)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as err:
        raise DiffkitError(f"cannot write to {str(out.parent)!r}: {err.strerror or err}") from None
    try:
        pipe.save_pretrained(partial, safe_serialization=True)
        os.chmod(partial, 0o777 & ~_umask())
        os.rename(partial, out)  # onto an empty folder too (POSIX rename)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def single_file_folder(path, config, progress: bool = False):
    """A temporary diffusers folder of the single file ``path`` (:func:`convert_single_file`), removed when the
    block ends: what ``diffkit sample`` / ``edit --checkpoint FILE --config FOLDER`` read. It costs one conversion
    and one write of the weights per command; ``diffkit convert --single-file`` writes a folder to keep."""
    with tempfile.TemporaryDirectory(prefix="diffkit-single-file-") as root:
        yield convert_single_file(path, config, Path(root) / "model", progress=progress)


def single_file_args(args, progress: bool = True, own_config: bool = False):
    """``args`` of ``diffkit sample`` / ``edit`` as a context manager: when ``--checkpoint`` is a single file,
    ``--config`` must be its diffusers config folder, and inside the block ``args.checkpoint`` is the converted
    temporary folder and ``args.config`` None; any other ``--checkpoint`` passes unchanged. A pickle (``.ckpt``)
    with a ``--config`` folder is refused (:func:`single_file_family`); with a ``--config`` file it is diffkit's
    legacy state dict (``diffkit sample``). ``own_config``: ``--config`` has no other meaning (``diffkit edit``)."""
    checkpoint, config = getattr(args, "checkpoint", None), getattr(args, "config", None)
    folder_config = config is not None and Path(config).is_dir()
    pickle = checkpoint is not None and Path(checkpoint).suffix.lower() in PICKLE_SUFFIXES
    if checkpoint is not None and (is_single_file(checkpoint) or (pickle and (folder_config or own_config))):
        if not folder_config:
            family = single_file_family(checkpoint)[0]
            given = "no --config" if config is None else f"--config {config!r} is not a folder"
            article = "a" if family.startswith("FLUX") else "an"
            raise DiffkitError(f"--checkpoint {checkpoint!r} is {article} {family} single file and {given}: give "
                               f"--config FOLDER, a local diffusers folder of the same model (its JSON files and "
                               f"tokenizers)")
        return _converted(args, progress)
    if own_config and config is not None:
        raise DiffkitError(f"--config goes with --checkpoint MODEL.safetensors (an SD 1.x / 2.x, SD-XL, SD3 or "
                           f"FLUX.1 single file); {checkpoint!r} is not one")
    return contextlib.nullcontext(args)


@contextlib.contextmanager
def _converted(args, progress: bool):
    with single_file_folder(args.checkpoint, args.config, progress=progress) as folder:
        args.checkpoint, args.config = str(folder), None
        yield args


__all__ = ["check_unet_shapes", "convert_single_file", "is_single_file", "load_single_file", "single_file_args",
           "single_file_family", "single_file_folder"]
