"""Lumina-Image 2.0 LoRA files in the original (non-diffusers) key format, mapped as diffusers 0.42.1 maps them.

``Lumina2LoraLoaderMixin.lora_state_dict`` converts a file with any ``diffusion_model.`` key
(``_convert_non_diffusers_lumina2_lora_to_diffusers``: the Lumina-Image 2.0 code's own module names) into
diffusers-format ``transformer.`` keys, which :mod:`.sana_lora` then reads and :mod:`.sd_lora` fuses as
``load_lora_weights`` + ``fuse_lora`` (W = W0 + s (alpha / r) B A, Hu et al. 2021, eq. 3; no alpha in such files:
alpha = r). For each block ``layers.i`` / ``noise_refiner.i`` / ``context_refiner.i`` (i = 0 .. n - 1, n the
distinct indices of that kind):

* ``attention.qkv`` -> ``attn.to_q`` / ``to_k`` / ``to_v``: the same down matrix A for all three, the up matrix B
  split by rows at diffusers' fixed sizes 2304 / 768 / 768 (Lumina-Image 2.0's 24 query heads and 8 key / value
  heads of 96; a B of another height is refused, where diffusers fails);
* ``attention.out`` -> ``attn.to_out.0``; ``feed_forward.w1`` / ``w2`` / ``w3`` -> ``feed_forward.linear_1`` / ``2`` /
  ``3``; ``adaLN_modulation.1`` -> ``norm1.linear`` (``layers`` and ``noise_refiner`` only).

Every one of those keys must be there and no other (diffusers raises otherwise): a one-line DiffkitError naming the
key. ``dora_scale`` keys, which diffusers drops with a warning (applying a different adapter), are refused too.
"""
from __future__ import annotations

import re

from ..errors import DiffkitError

PREFIX = "diffusion_model."
QKV_ROWS = (2304, 768, 768)  # diffusers' torch.split(lora_up, [2304, 768, 768])
# original module -> diffusers module(s), per block
MODULES = {"attention.out": "attn.to_out.0", "feed_forward.w1": "feed_forward.linear_1",
           "feed_forward.w2": "feed_forward.linear_2", "feed_forward.w3": "feed_forward.linear_3"}
BLOCKS = {"noise_refiner": True, "context_refiner": False, "layers": True}  # kind: has adaLN_modulation.1


def is_original_lumina2_lora(tensors: dict) -> bool:
    """True where ``Lumina2LoraLoaderMixin`` converts the file: any key starts with ``diffusion_model.``."""
    return any(key.startswith(PREFIX) for key in tensors)


def convert_lumina2_lora(path, tensors: dict) -> dict:
    """{diffusers ``transformer.`` key: tensor} of an original-format file's ``tensors`` (module docstring), or
    ``tensors`` unchanged where no key starts with ``diffusion_model.``."""
    if not is_original_lumina2_lora(tensors):
        return tensors
    dora = next((key for key in sorted(tensors) if "dora_scale" in key), None)
    if dora is not None:
        raise DiffkitError(f"--lora {path}: key {dora!r} is not allowed (Lumina2Pipeline drops DoRA scales and loads "
                           f"a plain LoRA); give a file without dora_scale keys")
    other = next((key for key in sorted(tensors) if not key.startswith(PREFIX)), None)
    if other is not None:  # diffusers strips 16 characters from every key, then fails on this one
        raise DiffkitError(f"--lora {path}: key {other!r} is not allowed beside {PREFIX!r} keys (Lumina2Pipeline "
                           f"converts the whole file); give one format per file")
    left = {key[len(PREFIX):]: value for key, value in tensors.items()}
    out = {}
    for kind, norm in BLOCKS.items():
        count = len({int(m.group(1)) for key in left for m in [re.search(kind + r"\.(\d+)\.", key)] if m})
        for i in range(count):
            block = f"{kind}.{i}."

            def take(name, part, block=block):
                key = f"{block}{name}.lora_{part}.weight"
                if key not in left:
                    raise DiffkitError(f"--lora {path}: key {PREFIX + key!r} is missing; Lumina2Pipeline converts "
                                       f"{PREFIX!r} files whose blocks each have attention.qkv, attention.out, "
                                       f"feed_forward.w1-w3 (and adaLN_modulation.1 but in context_refiner)")
                return left.pop(key)
            down, up = take("attention.qkv", "A"), take("attention.qkv", "B")
            if up.ndim != 2 or up.shape[0] != sum(QKV_ROWS):
                raise DiffkitError(f"--lora {path}: {PREFIX}{block}attention.qkv.lora_B.weight has shape "
                                   f"{tuple(up.shape)}; allowed: {sum(QKV_ROWS)} rows, which Lumina2Pipeline splits "
                                   f"as {' / '.join(map(str, QKV_ROWS))} (Lumina-Image 2.0's q / k / v)")
            for name, rows in zip(("to_q", "to_k", "to_v"), up.split(list(QKV_ROWS))):
                out[f"transformer.{block}attn.{name}.lora_A.weight"] = down
                out[f"transformer.{block}attn.{name}.lora_B.weight"] = rows
            for old, new in (*MODULES.items(), *((("adaLN_modulation.1", "norm1.linear"),) if norm else ())):
                for part in "AB":
                    out[f"transformer.{block}{new}.lora_{part}.weight"] = take(old, part)
    if left:
        raise DiffkitError(f"--lora {path}: key {PREFIX + sorted(left)[0]!r} is not one Lumina2Pipeline converts; "
                           f"allowed in {PREFIX!r} files: layers / noise_refiner / context_refiner blocks' "
                           f"attention.qkv, attention.out, feed_forward.w1-w3, adaLN_modulation.1 LoRA weights")
    return out


__all__ = ["convert_lumina2_lora", "is_original_lumina2_lora", "PREFIX", "QKV_ROWS"]
