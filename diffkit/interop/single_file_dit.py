"""Original-format FLUX.1 and SD3 / SD3.5 single files (the MM-DiT families of Esser et al. 2024, "Scaling
Rectified Flow Transformers", and Black Forest Labs' FLUX.1) as diffusers folders, for
:mod:`diffkit.interop.single_file`.

* FLUX.1 files (``double_blocks.N.*``, ``single_blocks.N.*``, ``img_in``, ``txt_in``, ``time_in``, ``vector_in``,
  ``guidance_in``, ``final_layer``; bare as Black Forest Labs ships them or under ``model.diffusion_model.`` as
  ComfyUI saves them) hold the transformer only: diffusers'
  ``FluxTransformer2DModel.from_single_file(FILE, config=FOLDER, subfolder="transformer", local_files_only=True)``
  converts it with the transformer config of the local folder (dev, schnell, Fill, Depth, Canny, Kontext: their
  ``in_channels`` / ``guidance_embeds`` come from that config and are checked against the file), and the written
  folder is a copy of ``FOLDER`` with that transformer. An SD3 file without ``first_stage_model.*`` goes the same
  way with ``SD3Transformer2DModel``.
* SD3 / SD3.5 files with the VAE (``model.diffusion_model.joint_blocks.*``, ``first_stage_model.*``, optionally
  ``text_encoders.clip_l / clip_g / t5xxl.*``) are read whole by ``StableDiffusion3Pipeline.from_single_file(FILE,
  config=FOLDER, local_files_only=True)``, which takes a text encoder the file lacks from ``FOLDER`` (its weights
  must be there).

Only the file's header (key names and shapes) is read before diffusers runs: a config folder of another family,
a transformer of other shapes (named by key, with both shapes) or a folder without the weights the file lacks is
refused in one line.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from ..errors import DiffkitError, read_json_object

PREFIX = "model.diffusion_model."
# family: (marker key prefixes after PREFIX, the transformer class its --config folder must have)
FAMILIES = {"SD3": (("joint_blocks.",), "SD3Transformer2DModel"),
            "FLUX.1": (("double_blocks.", "single_blocks."), "FluxTransformer2DModel")}
NOT_DONE = {"Chroma": "distilled_guidance_layer.", "FLUX.2": "single_stream_modulation."}
FLUX_WIDTH = 3072  # diffusers 0.42.1's convert_flux_transformer_checkpoint_to_diffusers splits linear1 at 3072
VAE = "first_stage_model."
TEXT_ENCODERS = {"text_encoder": "text_encoders.clip_l.", "text_encoder_2": "text_encoders.clip_g.",
                 "text_encoder_3": "text_encoders.t5xxl."}


def dit_family(shapes: dict, path: Path, flag: str):
    """"SD3" / "FLUX.1" for a header of those transformers (keys bare or under ``model.diffusion_model.``), None for
    any other; one line for the FLUX-like files diffusers' FLUX.1 converter does not read (Chroma, FLUX.2)."""
    bare = {key.removeprefix(PREFIX) for key in shapes}
    for family, (markers, _) in FAMILIES.items():
        if any(key.startswith(markers) for key in bare):
            other = next((name for name, marker in NOT_DONE.items() if any(k.startswith(marker) for k in bare)), None)
            if other:
                raise DiffkitError(f"{flag} {str(path)!r} is a {other} single file: only SD 1.x / 2.x, SD-XL, SD3 "
                                   f"and FLUX.1 single files are converted; give a diffusers {other} folder")
            return family
    return None


def _transformer_config(config: Path, path: Path, family: str, flag: str) -> tuple:
    """(model_index.json, transformer/config.json) of ``--config``, its transformer of ``family``'s class."""
    index_file, transformer_file = config / "model_index.json", config / "transformer" / "config.json"
    want = FAMILIES[family][1]
    if not config.is_dir() or not index_file.is_file():
        raise DiffkitError(f"--config {str(config)!r} is not a diffusers folder with model_index.json (the folder of "
                           f"the file's model: its JSON files, tokenizers, scheduler and the weights the file lacks)")
    index = read_json_object(index_file, "diffusers index")
    found = read_json_object(transformer_file, "transformer config") if transformer_file.is_file() else {}
    if found.get("_class_name") != want:
        raise DiffkitError(f"{flag} {str(path)!r} is {'an' if family == 'SD3' else 'a'} {family} single file but "
                           f"--config {str(config)!r} is a {index.get('_class_name') or 'pipeline'} folder whose "
                           f"transformer is {found.get('_class_name') or 'missing'}; allowed: a folder whose "
                           f"transformer/config.json is a {want}")
    return index, found


def _expected(family: str, cfg: dict, bare: dict) -> dict:
    """{key: shape} the transformer config ``cfg`` gives the file's first keys (after ``model.diffusion_model.``)."""
    width = cfg.get("num_attention_heads", 0) * cfg.get("attention_head_dim", 0)
    patch = cfg.get("patch_size", 1)
    if family == "FLUX.1":
        out = cfg.get("out_channels") or cfg.get("in_channels")
        return {"img_in.weight": (width, cfg.get("in_channels")),
                "txt_in.weight": (width, cfg.get("joint_attention_dim")),
                "vector_in.in_layer.weight": (width, cfg.get("pooled_projection_dim")),
                "final_layer.linear.weight": (patch * patch * out, width)}
    out = {"x_embedder.proj.weight": (width, cfg.get("in_channels"), patch, patch),
           "context_embedder.weight": (cfg.get("caption_projection_dim"), cfg.get("joint_attention_dim")),
           "y_embedder.mlp.0.weight": (width, cfg.get("pooled_projection_dim"))}
    if "pos_embed" in bare:
        out["pos_embed"] = (1, (cfg.get("pos_embed_max_size") or 0) ** 2, width)
    return out


def _blocks(bare: dict, name: str, inner: str = "") -> list:
    pattern = re.compile(re.escape(name) + r"\.(\d+)\." + re.escape(inner))
    return sorted({int(m.group(1)) for m in map(pattern.match, bare) if m})


def check_transformer_shapes(family: str, shapes: dict, cfg: dict, path: Path, config: Path, flag: str) -> None:
    """One line when the file's transformer does not fit ``--config``'s transformer config: a first key's shape
    (named, with both shapes), the number of blocks, FLUX.1's guidance embedding, SD3.5's dual-attention blocks and
    q / k norms; FLUX.1 files of another width than diffusers' converter reads (3072) too."""
    bare = {key.removeprefix(PREFIX): shape for key, shape in shapes.items()}
    fit = f"--config {str(config)!r} does not fit {flag} {str(path)!r}"
    for key, want in _expected(family, cfg, bare).items():
        if tuple(bare.get(key, ())) != tuple(want):
            found = bare.get(key)
            raise DiffkitError(f"{fit}: the file's {key} is {'missing' if found is None else tuple(found)}, its "
                               f"transformer config gives {tuple(want)}; give the config folder of the file's model")
    if family == "FLUX.1":
        checks = [("num_layers (double_blocks)", cfg.get("num_layers"), len(_blocks(bare, "double_blocks"))),
                  ("num_single_layers (single_blocks)", cfg.get("num_single_layers"),
                   len(_blocks(bare, "single_blocks"))),
                  ("guidance_embeds (guidance_in)", bool(cfg.get("guidance_embeds")),
                   "guidance_in.in_layer.weight" in bare)]
    else:
        checks = [("num_layers (joint_blocks)", cfg.get("num_layers"), len(_blocks(bare, "joint_blocks"))),
                  ("dual_attention_layers (attn2)", list(cfg.get("dual_attention_layers") or ()),
                   _blocks(bare, "joint_blocks", "x_block.attn2.")),
                  ("qk_norm (ln_q)", cfg.get("qk_norm") is not None, any(".ln_q." in key for key in bare))]
    for name, theirs, ours in checks:
        if theirs != ours:
            raise DiffkitError(f"{fit}: its transformer's {name} is {theirs}, the file's is {ours}; give the config "
                               f"folder of the file's own model")
    width = bare["img_in.weight"][0] if family == "FLUX.1" else None
    if width is not None and width != FLUX_WIDTH:
        raise DiffkitError(f"{flag} {str(path)!r} is a FLUX.1 transformer of width {width}: diffusers 0.42.1's "
                           f"FLUX.1 single-file converter reads width {FLUX_WIDTH} only (FLUX.1 dev, schnell, Fill, "
                           f"Depth, Canny, Kontext)")


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def check_folder_weights(index: dict, in_file: set, config: Path, path: Path, flag: str) -> None:
    """One line when a model of ``--config`` (a subfolder with a config.json) that the file does not hold
    (``in_file``: component names) has no weights there."""
    for name, entry in index.items():
        folder = config / name
        if name.startswith("_") or name in in_file or not isinstance(entry, list) or entry[0] is None:
            continue
        if (folder / "config.json").is_file() and not _has_weights(folder):
            raise DiffkitError(f"--config {str(config)!r} has no weights for {name} and {flag} {str(path)!r} does not "
                               f"hold it: give the full diffusers folder of the model (only the transformer's "
                               f"weights{' and the VAE' if 'vae' in in_file else ''} may be left out)")


class TransformerInFolder:
    """A copy of the ``config`` folder with ``transformer`` in place of its own (``save_pretrained`` as a
    pipeline's: what :func:`diffkit.interop.single_file.convert_single_file` writes)."""

    def __init__(self, config: Path, transformer):
        self.config, self.transformer = Path(config), transformer

    def save_pretrained(self, out, safe_serialization: bool = True) -> None:
        shutil.copytree(self.config, out, dirs_exist_ok=True,
                        ignore=lambda folder, names: ["transformer"] if Path(folder) == self.config else [])
        self.transformer.save_pretrained(Path(out) / "transformer", safe_serialization=safe_serialization)


def _from_folder(index: dict, in_file: set, config: Path, dtype) -> dict:
    """{name: model} of ``--config``'s models that the file lacks, each by its class's ``from_pretrained``: diffusers
    0.42.1's ``from_single_file`` looks for a missing text encoder's weights under diffusers' file name
    (``diffusion_pytorch_model.safetensors``) only, not transformers' ``model.safetensors``, and passing the model
    is the way its own error message gives."""
    import importlib
    out = {}
    for name, entry in index.items():
        if name.startswith("_") or name in in_file or not isinstance(entry, list) or entry[0] is None \
                or not (config / name / "config.json").is_file():
            continue
        cls = getattr(importlib.import_module(entry[0]), entry[1])
        out[name] = cls.from_pretrained(str(config), subfolder=name, local_files_only=True, torch_dtype=dtype)
    return out


def load_dit_single_file(path: Path, config: Path, family: str, shapes: dict, dtype, flag: str):
    """What ``save_pretrained`` writes as the diffusers folder of an SD3 / FLUX.1 single file: the
    StableDiffusion3Pipeline of a file with a VAE, else :class:`TransformerInFolder` (module docstring)."""
    import diffusers
    index, cfg = _transformer_config(config, path, family, flag)
    check_transformer_shapes(family, shapes, cfg, path, config, flag)
    whole = family == "SD3" and any(key.startswith(VAE) for key in shapes)
    in_file = {"transformer"} | ({"vae"} | {name for name, prefix in TEXT_ENCODERS.items()
                                           if any(key.startswith(prefix) for key in shapes)} if whole else set())
    check_folder_weights(index, in_file, config, path, flag)
    if whole:
        kind = index.get("_class_name")
        kind = kind if kind in ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline",
                                "StableDiffusion3InpaintPipeline") else "StableDiffusion3Pipeline"
        return getattr(diffusers, kind).from_single_file(str(path), config=str(config), local_files_only=True,
                                                         torch_dtype=dtype, **_from_folder(index, in_file, config,
                                                                                           dtype))
    transformer = getattr(diffusers, FAMILIES[family][1]).from_single_file(
        str(path), config=str(config), subfolder="transformer", local_files_only=True, torch_dtype=dtype)
    return TransformerInFolder(config, transformer)


__all__ = ["FAMILIES", "TransformerInFolder", "check_folder_weights", "check_transformer_shapes", "dit_family",
           "load_dit_single_file"]
