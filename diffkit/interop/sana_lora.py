"""LoRA files on a Sana / Sana Sprint folder: the keys diffusers 0.42.1's ``SanaPipeline.load_lora_weights``
(``SanaLoraLoaderMixin``, also ``SanaSprintPipeline``'s) loads, fused as its ``fuse_lora``.

That loader adapts the transformer only (``_lora_loadable_modules = ["transformer"]``) and, as SD3's
(:mod:`.sd3_lora`), converts no kohya / ComfyUI / LyCORIS file: ``transformer.<module>.lora_A.weight`` /
``.lora_B.weight`` (optionally a DoRA ``.lora_magnitude_vector``) as ``SanaPipeline.save_lora_weights`` writes them,
alpha and rank patterns from the file's ``lora_adapter_metadata`` (without it alpha = r), merged by
:mod:`.sd_lora`'s merger, W = W0 + s (alpha / r) B A (Hu et al. 2021, eq. 3). Any other key (a Gemma
``text_encoder.`` one included: the loader has no text-encoder LoRA) is refused in one line before any weight is
read. PixArt's pipelines have no LoRA loader in diffusers: ``--lora`` stays refused there.
"""
from __future__ import annotations

from ..errors import DiffkitError

PREFIXES = ("transformer.",)  # SanaLoraLoaderMixin._lora_loadable_modules
BIAS = ".lora_B.bias"  # peft's lora_bias (LoraConfig(lora_bias=True)): read only where a caller opts in


def read_transformer_lora(path, kind: str = "Sana", folder: str = "a Sana folder",
                          pipeline: str = "SanaPipeline", convert=None, flux_check: bool = True,
                          lora_bias: bool = False) -> dict:
    """:func:`.sd_lora.parse_sd_lora` of a LoRA file of a folder whose diffusers loader adapts the transformer only
    (Sana's; Lumina2's and AuraFlow's, :func:`read_transformer_loras`), keys checked first. ``convert``: the
    loader's conversion of other key formats, ``convert(path, tensors)`` -> diffusers-format tensors (Lumina2's
    ``diffusion_model.`` files, :func:`.lumina2_lora.convert_lumina2_lora`); ``flux_check``:
    :func:`.sd_lora.read_lora_tensors`' (False for AuraFlow, whose blocks are named as FLUX's); ``lora_bias``: also
    ``transformer.<module>.lora_B.bias`` keys, PEFT's ``lora_bias`` (ChronoEdit's Wan loader), kept under the result's
    ``"bias"`` for :func:`.sd_lora.merge_sd_loras` (a module's bias without its LoRA matrices, or in a file with DoRA
    magnitudes, which peft refuses: one line)."""
    from .lycoris_flow import refuse_lycoris
    from .sd3_lora import check_peft_keys
    from .sd_lora import _PEFT_MAGNITUDE as MAGNITUDE, parse_sd_lora, read_lora_tensors
    tensors, meta = read_lora_tensors(path, flux_check)
    refuse_lycoris(path, tensors, f"{pipeline}.load_lora_weights")
    if convert is not None:
        tensors = convert(path, tensors)
    bias = {k: tensors.pop(k) for k in sorted(tensors) if lora_bias and k.startswith(PREFIXES)
            and k.endswith(BIAS)}
    check_peft_keys(path, tensors, PREFIXES, kind, folder, pipeline)
    read = parse_sd_lora(path, tensors, meta)
    if bias:
        read["bias"] = {"transformer": {k[len(PREFIXES[0]):-len(BIAS)]: v for k, v in bias.items()}}
        key = next((k for k in bias if k[len(PREFIXES[0]):-len(BIAS)] not in read["transformer"]), None)
        if key is not None:
            raise DiffkitError(f"--lora {path}: key {key!r} is a LoRA bias of a module with no lora_A / lora_B "
                               f"matrices; allowed: a .lora_B.bias with its module's .lora_A.weight and .lora_B.weight")
        dora = next((k for k in sorted(tensors) if k.endswith(MAGNITUDE)), None)
        if dora is not None:  # diffusers' get_peft_kwargs: use_dora and lora_bias for the whole file; peft refuses both
            raise DiffkitError(f"--lora {path}: key {next(iter(bias))!r} is a LoRA bias in a file with DoRA "
                               f"magnitudes ({dora!r}), which peft's LoraConfig refuses (lora_bias with use_dora); "
                               f"allowed: .lora_B.bias keys in a file without {MAGNITUDE} keys")
    return read


def read_sana_lora(path) -> dict:
    """:func:`.sd_lora.parse_sd_lora` of a Sana LoRA file, its keys checked first (module docstring)."""
    return read_transformer_lora(path)


def read_transformer_loras(adapters, kind: str = "Sana", folder: str = "a Sana folder",
                           pipeline: str = "SanaPipeline", convert=None, flux_check: bool = True,
                           lora_bias: bool = False) -> list:
    """:func:`.sd_lora.read_sd_loras` of transformer-only LoRA files (paths or (path, scale) pairs), each read and
    checked with :func:`read_transformer_lora` before the folder loads; :func:`.sd_lora.merge_sd_loras` fuses them
    (as the pipeline's ``load_lora_weights`` + ``fuse_lora``)."""
    from functools import partial
    from .sd_lora import read_sd_loras
    return read_sd_loras(adapters, partial(read_transformer_lora, kind=kind, folder=folder, pipeline=pipeline,
                                           convert=convert, flux_check=flux_check, lora_bias=lora_bias))


def read_sana_loras(adapters) -> list:
    """:func:`read_transformer_loras` of Sana LoRA files (module docstring)."""
    return read_transformer_loras(adapters)


__all__ = ["read_sana_lora", "read_sana_loras", "read_transformer_lora", "read_transformer_loras", "PREFIXES"]
