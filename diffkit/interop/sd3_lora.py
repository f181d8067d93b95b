"""LoRA files on a Stable Diffusion 3 folder: the keys diffusers 0.42.1's ``StableDiffusion3Pipeline.load_lora_weights``
(``SD3LoraLoaderMixin``) loads, and no others.

That loader reads diffusers / PEFT keys only, as ``StableDiffusion3Pipeline.save_lora_weights`` and diffusers' SD3
DreamBooth-LoRA script write them: ``transformer.<module>`` (the MM-DiT, ``SD3Transformer2DModel.load_lora_adapter``)
and the two CLIP text encoders' ``text_encoder.<module>`` / ``text_encoder_2.<module>``, each with
``.lora_A.weight`` (A, (r, in)) and ``.lora_B.weight`` (B, (out, r)), optionally a DoRA ``.lora_magnitude_vector``;
alpha, rank and alpha patterns and ``use_rslora`` / ``use_dora`` from the file's ``lora_adapter_metadata`` (peft's
LoraConfig per component; without it alpha = r). They are fused as ``fuse_lora(lora_scale=s)`` (several files:
``set_adapters(names, weights)`` + ``fuse_lora``) by :mod:`.sd_lora`'s reader and merger,

    W = W0 + sum_i s_i (alpha_i / r_i) B_i A_i                  (Hu et al. 2021, eq. 3)

(DoRA: Liu et al. 2024, eq. 5, :mod:`.lycoris`).

Unlike SD / SD-XL's (kohya) and FLUX.1's (kohya / BFL / ComfyUI), SD3's ``lora_state_dict`` has no converter in
``lora_conversion_utils``: a kohya (``lora_unet_`` / ``lora_te1_`` / ``lora_te2_``), ComfyUI (``diffusion_model.``,
``text_encoders.``) or LyCORIS file loads nothing there (diffusers logs "No LoRA keys associated to
SD3Transformer2DModel found" and every weight stays as it was; ``dora_scale`` keys are dropped with a warning;
peft-named LoHa / LoKr keys fail its "Invalid LoRA checkpoint" check, every key must hold ``lora``). So
such a key, and any other key but the ones above, is refused in one line naming it, before any weight is read,
rather than merged where the reference merges nothing (:mod:`.sd_lora` alone would merge a kohya file's text-encoder
keys). ``unet.`` keys (an SD / SD-XL diffusers file) are left to :func:`.sd_lora.merge_sd_loras`' own line.
"""
from __future__ import annotations

from ..errors import DiffkitError

PREFIXES = ("transformer.", "text_encoder.", "text_encoder_2.")  # SD3LoraLoaderMixin._lora_loadable_modules
PARTS = (".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector")  # peft's LoRA / DoRA tensors


def check_sd3_keys(path, tensors: dict) -> None:
    """One-line error at the first key of ``tensors`` (a LoRA file's) that diffusers' SD3 loader does not load
    (module docstring); ``unet.`` keys pass (:func:`.sd_lora.merge_sd_loras` names the file an SD / SD-XL one)."""
    check_peft_keys(path, tensors, PREFIXES, "SD3", "an SD3 folder", "StableDiffusion3Pipeline", passing=("unet.",))


def check_peft_keys(path, tensors: dict, prefixes: tuple, kind: str, folder: str, pipeline: str,
                    passing: tuple = ()) -> None:
    """One-line error at the first key of ``tensors`` that is not a diffusers / PEFT LoRA tensor (:data:`PARTS`)
    under ``prefixes`` (or under ``passing``, left to a later check): what the ``kind`` loader (``folder``: "an SD3
    folder"), with no converter (SD3's, Sana's), loads."""
    key = next((k for k in sorted(tensors) if not (passing and k.startswith(passing))
                and not (k.startswith(prefixes) and k.endswith(PARTS))), None)
    if key is not None:
        raise DiffkitError(f"--lora {path}: key {key!r} is not supported on {folder} (diffusers 0.42.1's "
                           f"{kind} loader converts no kohya / ComfyUI / LyCORIS keys: it loads nothing from them); "
                           f"allowed: {' / '.join(prefixes)} keys ending in {' / '.join(PARTS)} (diffusers / PEFT, "
                           f"as {pipeline}.save_lora_weights writes them)")


def read_sd3_lora(path) -> dict:
    """:func:`.sd_lora.read_sd_lora` of an SD3 LoRA file, its keys checked first (:func:`check_sd3_keys`)."""
    from .lycoris_flow import refuse_lycoris
    from .sd_lora import parse_sd_lora, read_lora_tensors
    tensors, meta = read_lora_tensors(path)
    refuse_lycoris(path, tensors, "StableDiffusion3Pipeline.load_lora_weights")
    check_sd3_keys(path, tensors)
    return parse_sd_lora(path, tensors, meta)


def read_sd3_loras(adapters) -> list:
    """:func:`.sd_lora.read_sd_loras` of SD3 LoRA files (paths or (path, scale) pairs): each read and checked with
    :func:`read_sd3_lora`, before the folder loads."""
    from .sd_lora import read_sd_loras
    return read_sd_loras(adapters, read_sd3_lora)


__all__ = ["check_sd3_keys", "check_peft_keys", "read_sd3_lora", "read_sd3_loras", "PREFIXES", "PARTS"]
