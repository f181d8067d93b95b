"""LoRA files on a ChronoEdit folder: what diffusers 0.42.1's ``ChronoEditPipeline.load_lora_weights``
(``WanLoraLoaderMixin``) loads into its ``ChronoEditTransformer3DModel``, fused as its ``fuse_lora``; a Wan folder's
(``WanPipeline``, :mod:`.wan`) and those of the other pipelines loading through ``WanLoraLoaderMixin`` (Wan
image-to-video, video-to-video, VACE, Lucy-Edit) or diffusers' copy of it, ``SkyReelsV2LoraLoaderMixin`` (SkyReels-V2),
the same way (:func:`read_wan_loras` naming its pipeline).

The loader adapts ``transformer`` only (its ``transformer_2`` does not exist on a ChronoEdit folder). Three layouts:

* diffusers / PEFT: ``transformer.<module>.lora_A.weight`` / ``.lora_B.weight`` (a DoRA ``.lora_magnitude_vector``
  too), as ``ChronoEditPipeline.save_lora_weights`` writes them; alpha / rank patterns from the file's
  ``lora_adapter_metadata`` (without it alpha = r);
* Wan's original module names under ``diffusion_model.`` (ComfyUI, kohya's / ai-toolkit's Wan files):
  ``blocks.i.self_attn.{q,k,v,o}`` / ``cross_attn.{q,k,v,o,k_img,v_img}`` / ``ffn.{0,2}``, ``time_projection.1``,
  ``head.head``, ``{text,time}_embedding.{0,2}``, ``img_emb.proj.{1,3}`` with ``.lora_A`` / ``.lora_B`` or
  ``.lora_down`` / ``.lora_up`` weights (and a block module's ``.alpha``);
* musubi-tuner's kohya names, ``lora_unet_blocks_i_<module>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``.

The last two are converted by diffusers' own functions, called here (not copied):
``lora_conversion_utils._convert_non_diffusers_wan_lora_to_diffusers`` (a file with any ``diffusion_model.`` key)
and ``_convert_musubi_wan_lora_to_diffusers`` (any ``lora_unet_`` key), as ``WanLoraLoaderMixin.lora_state_dict``
dispatches; they fold each module's alpha / r into A and B (then alpha = r). The result is read by
:func:`.sana_lora.read_transformer_lora` and fused by :mod:`.sd_lora`'s merger, W = W0 + s (alpha / r) B A (Hu et
al. 2021, eq. 3). A module's ``.diff_b`` becomes its ``lora_B.bias``, which the loader gives peft as ``lora_bias``:
peft's merge adds ``lora_B.bias * scaling`` (``fuse_lora(lora_scale=s)``: s alpha / r) to the layer's bias, and so
does the merger, the reader opting in (``lora_bias=True``; other families refuse the key). The loader's
image-to-video expansion (``_maybe_expand_t2v_lora_for_i2v``: a text-to-video file's blocks get zero LoRA matrices on
``attn2.add_k_proj`` / ``add_v_proj``, the CLIP image keys) adds B A = 0 to those weights: nothing to merge, so
diffkit adds nothing.

Refused in one line naming the file's key, before any weight of the folder is read: LyCORIS tensors
(:func:`.lycoris_flow.refuse_lycoris`); a diffusers-format file's ``dora_scale`` (diffusers drops it and merges the
rest as a plain LoRA); in a converted file, a key its converter does not map (``.diff`` weight differences, a norm's
``.diff_b``, ``dora_scale``, on which it fails, another module, another prefix), a ``.diff_b`` without its module's
LoRA matrices (dropped or left alone) and a file it fails on (a module missing a matrix or, musubi, its alpha:
diffusers raises); in a diffusers-format file, a key outside ``transformer.`` (``load_lora_adapter`` drops it) or not
a PEFT tensor (``.alpha``, ``lora_down``), a ``.lora_B.bias`` without its module's matrices, and LoRA biases with
DoRA magnitudes anywhere in the file (diffusers sets peft's ``use_dora`` and ``lora_bias`` for the whole file, which
``LoraConfig`` refuses). At the merge: a file with LoRA biases adapting a Linear without a bias (``lora_bias`` is the
whole file's, and peft's merge fails on such a layer; every Linear of a ChronoEdit transformer has a bias).
"""
from __future__ import annotations

import re

from ..errors import DiffkitError

PIPELINE = "ChronoEditPipeline"
_BLOCK = r"blocks\.\d+\.(?:self_attn\.[qkvo]|cross_attn\.(?:[qkvo]|k_img|v_img)|ffn\.[02])"
_TOP = r"(?:time_projection\.1|head\.head|(?:text|time)_embedding\.[02]|img_emb\.proj\.[13])"
_MATRIX = r"\.lora_(?:A|B|down|up)\.weight"
ORIGINAL = re.compile(rf"diffusion_model\.(?:{_BLOCK}(?:{_MATRIX}|\.alpha|\.diff_b)|{_TOP}(?:{_MATRIX}|\.diff_b))")
MUSUBI = re.compile(r"lora_unet_blocks_\d+_(?:self_attn_[qkvo]|cross_attn_(?:[qkvo]|k_img|v_img)|ffn_[02])"
                    r"\.(?:lora_down\.weight|lora_up\.weight|alpha)")
FORMATS = {"diffusion_model.": (ORIGINAL, "_convert_non_diffusers_wan_lora_to_diffusers"),
           "lora_unet_": (MUSUBI, "_convert_musubi_wan_lora_to_diffusers")}  # WanLoraLoaderMixin's dispatch order
ALLOWED = ("transformer.<module> keys ending in .lora_A.weight / .lora_B.weight / .lora_magnitude_vector (diffusers / "
           "PEFT), Wan's diffusion_model.blocks.i.{self_attn.q/k/v/o, cross_attn.q/k/v/o/k_img/v_img, ffn.0/2} "
           "(.lora_A / .lora_B / .lora_down / .lora_up weights, .alpha) and time_projection.1 / head.head / "
           "text_embedding / time_embedding / img_emb.proj weights (each module's .diff_b with its LoRA matrices), "
           "or musubi's lora_unet_blocks_i_<module> "
           ".lora_down.weight / .lora_up.weight / .alpha")


def wan_tensors(path, tensors: dict, pipeline: str = PIPELINE, folder: str = "a ChronoEdit folder") -> dict:
    """``tensors`` of a ChronoEdit (or another ``WanLoraLoaderMixin`` ``pipeline``'s: Wan's, :mod:`.wan`) LoRA file
    under the keys (and, converted, the values) ``WanLoraLoaderMixin.lora_state_dict`` returns: a ``diffusion_model.``
    or ``lora_unet_`` file through diffusers' own converter (module docstring), any other file unchanged (its keys
    checked); a key the loader would not load as the file says: one line naming ``folder``."""
    from functools import partial
    from .ideogram4_lora import check_transformer_keys, refuse_dora, refuse_key
    refuse = partial(refuse_key, folder=folder, allowed=ALLOWED)
    prefix = next((p for p in FORMATS if any(k.startswith(p) for k in tensors)), None)
    if prefix is None:  # a converted file's dora_scale: its converter fails on it (below), not dropped
        refuse_dora(path, tensors, pipeline, refuse)
        from .sana_lora import BIAS
        peft = {k: v for k, v in tensors.items() if not (k.startswith("transformer.") and k.endswith(BIAS))}
        check_transformer_keys(path, peft, f"{pipeline}'s loader adapts the transformer only, and converts "
                                     f"diffusion_model. and lora_unet_ files alone", refuse)
        return tensors
    pattern, name = FORMATS[prefix]
    for key in sorted(tensors):
        if not pattern.fullmatch(key):
            refuse(path, key, f"{pipeline}'s {name} does not map it as a LoRA matrix")
        elif key.endswith(".diff_b") and not any(key[:-7] + m in tensors for m in (".lora_A.weight",
                                                                                    ".lora_down.weight")):
            refuse(path, key, f"{pipeline}'s {name} drops or misplaces a .diff_b without its module's LoRA matrices")
    from diffusers.loaders import lora_conversion_utils
    try:
        return getattr(lora_conversion_utils, name)(dict(tensors))
    except (KeyError, ValueError, RuntimeError, NameError) as err:
        raise DiffkitError(f"--lora {path}: {pipeline}'s {name} fails on this file ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:120] if str(err) else 'a module lacks a tensor'}); allowed: "
                           f"each module with its down and up matrices, k_img with v_img, one alpha of one number "
                           f"each (musubi: every block's self_attn q/k/v/o, cross_attn q/k/v/o, ffn 0/2, each with "
                           f"its .alpha)") from None


def read_wan_loras(adapters, kind: str = "ChronoEdit", pipeline: str = PIPELINE) -> list:
    """:func:`.sana_lora.read_transformer_loras` of LoRA files (paths or (path, scale) pairs) of a ``pipeline``
    loading them through ``WanLoraLoaderMixin`` (a ``kind`` folder: ChronoEdit's, Wan's), each read, converted and
    checked with :func:`wan_tensors` before the folder loads; :func:`.sd_lora.merge_sd_loras` fuses them into the
    transformer (as the pipeline's ``load_lora_weights`` + ``fuse_lora``)."""
    from functools import partial
    from .sana_lora import read_transformer_loras
    folder = f"a {kind} folder"
    return read_transformer_loras(adapters, kind, folder, pipeline, partial(wan_tensors, pipeline=pipeline,
                                                                            folder=folder),
                                  flux_check=False, lora_bias=True)


def read_chronoedit_loras(adapters) -> list:
    """:func:`read_wan_loras` of ChronoEdit LoRA files."""
    return read_wan_loras(adapters)


__all__ = ["wan_tensors", "read_wan_loras", "read_chronoedit_loras", "ORIGINAL", "MUSUBI"]
