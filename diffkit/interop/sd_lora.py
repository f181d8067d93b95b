"""Stable Diffusion LoRA files merged into a loaded folder's UNet and text encoder(s) (SD 1.x/2.x, SD-XL).

What diffusers does with ``pipe.load_lora_weights(file)`` and ``pipe.fuse_lora(lora_scale=s)`` (several
files: ``set_adapters(names, adapter_weights)`` then ``fuse_lora``): each adapted layer gets

    W = W0 + sum_i s_i (alpha_i / r_i) B_i A_i                  (Hu et al. 2021, eq. 3)

merged with diffkit's own adapter merge (:func:`diffkit.lora_files.merge_adapted`, :func:`diffkit.lora.adapt_layer`:
a linear layer's A is (r, in), B (out, r); a convolution's A is an r-channel convolution with the layer's
kernel, B a 1x1 convolution), so sampling costs what the base costs. Two formats, as real files come:

* diffusers / PEFT (``StableDiffusionPipeline.save_lora_weights``, SD-XL's
  ``StableDiffusionXLPipeline.save_lora_weights``, SD3's ``StableDiffusion3Pipeline.save_lora_weights``):
  ``unet.<module>.lora_A.weight`` (A), ``unet.<module>.lora_B.weight`` (B), ``text_encoder.<module>...``,
  SD-XL's ``text_encoder_2.<module>...``, SD3's ``transformer.<module>...`` (the MM-DiT, :mod:`.sd3`; an SD3 folder
  takes these keys only, :mod:`.sd3_lora`);
  alpha from the file's ``lora_adapter_metadata`` (peft's LoraConfig per component: ``lora_alpha``,
  ``alpha_pattern`` matched as peft does, ``use_rslora``: alpha / sqrt(r) instead of alpha / r); without
  metadata alpha = r (scale 1), as diffusers' ``get_peft_kwargs``.
* kohya (sd-scripts, civitai): ``lora_unet_<module>.lora_down.weight`` (A), ``.lora_up.weight`` (B),
  ``.alpha`` (default r), ``lora_te_<module>...`` (SD-XL: ``lora_te1_``) for the text encoder and
  ``lora_te2_<module>`` for SD-XL's second, where ``<module>`` is the module name with every ``.`` written
  ``_`` (sd-scripts' ``networks/lora.py``); the name is found by writing the network's own Linear / Conv2d
  names that way: diffusers' names (SD 1.x/2.x files, trained on diffusers-named UNets) or, for the UNet,
  the LDM / SGM names sd-scripts' SD-XL UNet has (``input_blocks_4_1_...``; :mod:`.ldm_names`). Conv LoRA
  (a 3x3 down, 1x1 up) included.
* LyCORIS LoHa / LoKr (kohya names: ``lora_unet_<module>.hada_w1_a`` ... ``.hada_t2``, ``.lokr_w1`` /
  ``.lokr_w1_a`` ... ``.lokr_t2``, ``.alpha``), LoCon's Tucker form (``.lora_down.weight`` 1x1,
  ``.lora_mid.weight``, ``.lora_up.weight``), (IA)^3 (``.weight``, ``.on_input``) and DoRA magnitudes
  (diffusers / PEFT ``unet.<module>.lora_magnitude_vector``, kohya / LyCORIS ``.dora_scale``, on LoRA, LoHa or
  LoKr): their weight change, scale and decomposition are :mod:`.lycoris`'s (LoHa / LoKr / LoCon: Yeh et al.
  2023, Sec. 3; (IA)^3: Liu et al. 2022, Sec. 3.3; DoRA: Liu et al. 2024, eq. 5), merged into W directly (every
  shape checked before the first merge).
* LyCORIS OFT / BOFT rotations (``.oft_blocks`` 3-D / 4-D, ``.oft_diag``, ``.rescale``; ``.alpha`` is their
  constraint, 0 allowed) and full differences (``.diff``, ``.diff_b``): :mod:`.lycoris_oft` (Qiu et al. 2023,
  eq. 2; Liu et al. 2024, eq. 4-6).

Anything else (GLoRA tensors, a LoRA bias, peft-format LoHa / LoKr keys) is a
one-line error naming the first such key; so is a module with a partner key missing
(``hada_w1_a`` without ``hada_w1_b``) or two adapter kinds, a key naming a module the network lacks,
``text_encoder_2`` / ``lora_te2_`` keys on a folder with one text encoder, a shape that does not fit, or an
alpha that is not a positive number (a kohya ``.alpha`` of 0: sd-scripts reads it as r, diffusers as 0).
Files are read and checked before anything is merged, and a failure leaves the networks as they were.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from ..errors import DiffkitError
from . import lycoris, lycoris_oft
from .ldm_names import ldm_names

COMPONENTS = {"unet": ("unet.", "lora_unet_"), "text_encoder": ("text_encoder.", "lora_te_"),  # diffusers, kohya
              "text_encoder_2": ("text_encoder_2.", "lora_te2_"),  # SD-XL's (and SD3's) second text encoder
              "transformer": ("transformer.", None)}  # SD3's MM-DiT (SD3LoraLoaderMixin: diffusers / PEFT keys only)
_ELSEWHERE = {  # a component the folder lacks: what the file is for
    "text_encoder_2": "SD-XL's second text encoder ({}... keys); this folder has one text encoder: use the file with "
                      "an SD-XL folder",
    "transformer": "an SD3 transformer ({}... keys); this folder has a UNet: use the file with an SD3 folder",
    "unet": "a UNet ({}... keys); this folder has a transformer (SD3), whose files have transformer. keys"}
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",  # te1: SD-XL files
                  "lora_te2_": "text_encoder_2"}
_PEFT = (".lora_A.weight", ".lora_B.weight")
_PEFT_MAGNITUDE = ".lora_magnitude_vector"  # a DoRA adapter's m (peft's get_peft_model_state_dict)
_KOHYA = ("lora_down.weight", "lora_up.weight", "alpha")


def _layers(module) -> dict:
    """name -> every nn.Linear / nn.Conv2d of ``module`` (what a LoRA file can adapt)."""
    return {n: m for n, m in module.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


def _read(path) -> tuple[dict, dict]:
    """(tensors, header metadata) of a safetensors LoRA file; one-line errors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..checkpoint import FORMAT, peek_header_metadata
    path = Path(path)
    if not path.is_file():
        raise DiffkitError(f"--lora {path} {'is not a regular file' if path.exists() else 'does not exist'}")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise DiffkitError(f"--lora {path} is not a safetensors LoRA file ({str(err).splitlines()[0][:80]})") from None
    meta = peek_header_metadata(path)
    if meta.get("format") == FORMAT:
        raise DiffkitError(f"--lora {path} is a diffkit file (an adapter of diffkit checkpoints); a Stable Diffusion "
                           f"folder takes diffusers or kohya LoRA files")
    if not tensors:
        raise DiffkitError(f"--lora {path} holds no tensors")
    from ..lora_files import check_finite_tensors
    return check_finite_tensors(path, tensors), meta


def _check_alpha(value, what: str) -> float:
    """A LoRA alpha read from a file: a positive finite number, else a one-line error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise DiffkitError(f"{what} is {value!r}; allowed: one positive number")
    return float(value)


def _peft_alphas(path, meta: dict, component: str):
    """alpha(module, rank) for ``component`` from diffusers' ``lora_adapter_metadata`` (peft LoraConfig)."""
    raw = meta.get("lora_adapter_metadata")
    try:
        config = json.loads(raw) if raw else {}
    except ValueError:
        raise DiffkitError(f"--lora {path} has corrupt lora_adapter_metadata") from None
    config = {k[len(component) + 1:]: v for k, v in config.items() if k.startswith(component + ".")} \
        if isinstance(config, dict) else {}
    alpha, patterns = config.get("lora_alpha"), config.get("alpha_pattern") or {}
    if not isinstance(patterns, dict):
        raise DiffkitError(f"--lora {path}: {component}.alpha_pattern is {patterns!r}; allowed: a dict")
    if alpha is not None:
        _check_alpha(alpha, f"--lora {path}: {component}.lora_alpha")
    for key, value in patterns.items():
        _check_alpha(value, f"--lora {path}: {component}.alpha_pattern[{key!r}]")
        try:
            re.compile(key)
        except re.error:
            raise DiffkitError(f"--lora {path}: {component}.alpha_pattern key {key!r} is not a regular "
                               f"expression") from None
    root = (lambda r: math.sqrt(r)) if config.get("use_rslora") else (lambda r: r)

    def alpha_of(module: str, rank: int) -> float:  # peft's get_pattern_key: a key matching the name's tail
        key = next((k for k in patterns if re.match(rf"(.*\.)?({k})$", module)), None)
        value = patterns[key] if key is not None else alpha if alpha is not None else rank
        return float(value) * rank / root(rank)  # diffkit scales by alpha / r: rsLoRA's alpha / sqrt(r)
    return alpha_of


def read_sd_lora(path) -> dict:
    """The adapters of a Stable Diffusion LoRA file: {component: {name: [A, B, alpha or None]}} with
    ``name`` a module name (diffusers format) or its underscore form (kohya, resolved by
    :func:`merge_sd_loras`), and the per-module ``alpha_of(module, rank)`` of a diffusers file under
    ``"alpha_of"``; each adapter is [A, B, alpha or None, the key's prefix]. One-line error at the first key
    that is not a LoRA matrix (or alpha) of the UNet or a text encoder; a FLUX.1 file (its blocks' names): one
    line saying so."""
    return parse_sd_lora(path, *read_lora_tensors(path))


def read_lora_tensors(path, flux_check: bool = True) -> tuple[dict, dict]:
    """(tensors, header metadata) of a LoRA file for a Stable Diffusion / SD-XL / SD3 folder; a FLUX.1 file (its
    blocks' names): one line saying so (``flux_check=False``: not checked, AuraFlow's own block names)."""
    tensors, meta = _read(path)
    flux_key = next((k for k in tensors if flux_check and _FLUX_BLOCKS.search(k)), None)
    if flux_key is not None:
        raise DiffkitError(f"--lora {path} is a FLUX.1 LoRA (key {flux_key!r}: FLUX's double / single blocks); this "
                           f"Stable Diffusion / SD-XL / SD3 folder has no such blocks: give it with a FLUX.1 folder")
    return tensors, meta


_FLUX_BLOCKS = re.compile(r"(^|[._])(double_blocks|single_blocks|single_transformer_blocks)[._]")


def parse_sd_lora(path, tensors: dict, meta: dict) -> dict:
    """:func:`read_sd_lora` of a file's ``tensors`` and header ``meta`` already read (``path`` names it in errors)."""
    out = {c: {} for c in COMPONENTS}
    kohya = any(k.startswith(tuple(KOHYA_PREFIXES)) for k in tensors)
    for key in sorted(tensors):
        if kohya:
            prefix = next((p for p in KOHYA_PREFIXES if key.startswith(p)), None)
            component = KOHYA_PREFIXES.get(prefix)
            name, _, part = key.partition(".")
            slot = _KOHYA.index(part) if part in _KOHYA else part if part in lycoris.KOHYA_PARTS else None
            name = name[len(prefix):] if component else None
        else:
            component = next((c for c, (peft, _) in COMPONENTS.items() if key.startswith(peft)), None)
            prefix = COMPONENTS[component][0] if component else None
            part = next((s for s in _PEFT + (_PEFT_MAGNITUDE,) if key.endswith(s)), None)
            slot = _PEFT.index(part) if part in _PEFT else part and part[1:]  # lora_magnitude_vector: by name
            name = key[len(prefix):-len(part)] if component and part else None
        if component is None or slot is None or not name:
            raise DiffkitError(f"--lora {path}: key {key!r} is not supported; allowed: unet./transformer./"
                               f"text_encoder./text_encoder_2. keys ending in .lora_A.weight / .lora_B.weight / "
                               f".lora_magnitude_vector (diffusers) or lora_unet_/lora_te_/lora_te1_/lora_te2_ keys "
                               f"ending in .lora_down.weight / .lora_up.weight / .lora_mid.weight / .alpha / "
                               f".dora_scale / .hada_* / .lokr_* / .weight + .on_input / .oft_blocks / .oft_diag / "
                               f".rescale / .diff / .diff_b (kohya, LyCORIS)")
        entry = out[component].setdefault(name, [None, None, None, prefix, {}])
        if (entry[slot] if isinstance(slot, int) else entry[4].get(slot)) is not None:  # lora_te_ and lora_te1_
            raise DiffkitError(f"--lora {path}: keys {entry[3]}{name}.{part} and {key} adapt the same {component} "
                               f"module; allowed: one of lora_te_ / lora_te1_ per module")
        if isinstance(slot, int):
            entry[slot] = tensors[key]
        else:  # LoHa / LoKr factors, a DoRA magnitude
            entry[4][slot] = tensors[key]
    for component, adapters in out.items():
        for name, (down, up, alpha, prefix, parts) in adapters.items():
            if parts:
                lycoris.check_parts(parts, down is not None or up is not None, f"--lora {path}: {component} module "
                                    f"{name}")
            if (down is None or up is None) and (down is not None or up is not None or not parts):
                raise DiffkitError(f"--lora {path}: {component} module {name} has no "
                                   f"{'lora_A / lora_down' if down is None else 'lora_B / lora_up'} matrix")
            allowed = alpha is not None and lycoris_oft.bad_alpha(float(alpha) if alpha.numel() == 1 else -1, parts)
            if allowed:  # OFT / BOFT: a constraint, 0 allowed
                raise DiffkitError(f"--lora {path}: {prefix}{name}.alpha is {alpha.tolist()}; allowed: {allowed}")
    out["kohya"] = kohya
    out["alpha_of"] = {c: _peft_alphas(path, meta, c) for c in COMPONENTS}
    return out


def _resolve(path, read: dict, component: str, network) -> dict:
    """{module name: (layer, A, B, alpha, parts)} of ``component`` in ``network`` (``parts``: LoHa / LoKr /
    DoRA tensors, :mod:`.lycoris`; A and B None for LoHa / LoKr); a one-line error for a name the network has
    no Linear / Conv2d of."""
    layers = _layers(network)
    layers.update({fused: lycoris.Stacked([layers[m] for m in members])  # FLUX.2's fused qkv (.flux2_lora)
                   for fused, members in read.get("stacked", {}).get(component, {}).items()})
    names = {n: n for n in layers}
    if component == "text_encoder" and not hasattr(network, "text_model"):  # transformers 5 flattened CLIPTextModel:
        names.update({f"text_model.{n}": n for n in layers})  # files name its modules text_model.encoder...
    if component == "unet" and read["kohya"]:  # sd-scripts' SD-XL UNet: LDM / SGM names (input_blocks_4_1_...)
        names.update({ldm: n for n, ldm in ldm_names(network, layers).items()})
    if read["kohya"]:
        names = {k.replace(".", "_"): n for k, n in names.items()}
    out = {}
    for name, (down, up, alpha, prefix, parts) in read[component].items():
        if name not in names:
            tail = ".lora_down.weight" if read["kohya"] else _PEFT[0]
            key = f"{prefix}{name}{tail if down is not None else '.' + next(iter(parts))}"
            raise DiffkitError(f"--lora {path}: key {key!r} names no Linear or Conv2d layer of the {component}")
        module = names[name]
        if module in out:  # text_model.<name> and <name> both in the file: one layer, two adapters
            raise DiffkitError(f"--lora {path}: two {component} keys name the layer {module}; allowed: one")
        if down is None:  # LoHa / LoKr: alpha / r from its factors (.lycoris)
            out[module] = (layers[module], None, None, None if alpha is None else float(alpha), parts)
            continue
        rank = down.shape[0] if down.ndim else 0
        if rank < 1 or down.ndim not in (2, 4):
            raise DiffkitError(f"--lora {path}: {component} module {module} has a down matrix of shape "
                               f"{tuple(down.shape)}; allowed: (r, in) or (r, in, kh, kw)")
        if alpha is not None:  # a kohya .alpha
            alpha = float(alpha)
        else:  # kohya without .alpha: alpha = r (sd-scripts); diffusers: its metadata, else r
            alpha = float(rank) if read["kohya"] else read["alpha_of"][component](module, rank)
        out[module] = (layers[module], down, up, alpha, parts)
    return out


def _lora_biases(path, bias: dict, found: dict, component: str) -> list:
    """[(layer bias, lora_B.bias, alpha / r)] of a file's PEFT LoRA biases (``lora_bias``, :mod:`.sana_lora`'s
    ``lora_bias=True`` readers) on plain LoRA modules of ``found`` (:func:`_resolve`); one line for a module that is
    not one (a DoRA one), a bias of another length, or any module of the file on a layer without a bias: diffusers'
    ``get_peft_kwargs`` sets ``lora_bias`` for the whole file, and peft's merge then fails on such a layer
    (``fuse_lora``: "Impossible to merge LoRA with `lora_bias=True`"), whether the file gives it a bias or not."""
    bare = next((m for m, (layer, *_) in found.items() if bias and getattr(layer, "bias", None) is None), None)
    if bare is not None:
        raise DiffkitError(f"--lora {path}: the {component} module {bare} has no bias, in a file with LoRA biases "
                           f"({next(iter(bias))}.lora_B.bias): peft's fuse_lora cannot merge its lora_bias there; "
                           f"allowed: LoRA biases in a file whose every module is a Linear with a bias")
    out = []
    for module, delta in bias.items():
        layer, a, _, alpha, _ = found.get(module, (None,) * 5)
        if layer is None or tuple(delta.shape) != tuple(layer.bias.shape):
            why = ("is not a plain LoRA module (a DoRA one)" if layer is None
                   else f"has a bias of shape {tuple(layer.bias.shape)}, the file's {tuple(delta.shape)}")
            raise DiffkitError(f"--lora {path}: the {component} LoRA bias {module}.lora_B.bias cannot be merged: "
                               f"{module} {why}; allowed: a LoRA bias of a plain LoRA module's biased Linear")
        out.append((layer.bias, delta, alpha / a.shape[0]))
    return out


def read_sd_loras(adapters, reader=read_sd_lora) -> list:
    """[(path, scale, ``reader(path)``)] of ``adapters`` (paths or (path, scale) pairs, scale s_i as diffusers'
    ``lora_scale`` / ``adapter_weights``; ``reader``: :func:`read_sd_lora`, or SD3's
    :func:`.sd3_lora.read_sd3_lora`): every file read and checked, before a folder loads."""
    from ..lora_files import adapter_list
    return [(path, scale, reader(path)) for path, scale in adapter_list(adapters)]


def merge_sd_loras(sd, loras: list) -> None:
    """Merge LoRA files into ``sd``'s UNet and text encoder in place (module doc). ``loras``:
    :func:`read_sd_loras` of them (``load_stable_diffusion(..., lora=[...])`` does both); scale 0: the
    file changes nothing, bit for bit. Every file is matched to the networks before the first is merged;
    a failure leaves them as they were."""
    from ..lora import adapt_layer
    from ..lora_files import merge_adapted, merge_in_order
    merges = []
    for path, scale, read in loras:
        for component in COMPONENTS:
            network = getattr(sd, component, None)
            if network is None:  # text_encoder_2 of SD 1.x/2.x, the transformer of SD / SD-XL, the unet of SD3
                if read[component]:
                    raise DiffkitError(f"--lora {path} adapts " + _ELSEWHERE[component].format(
                        next(iter(read[component].values()))[3]))
                continue
            found = _resolve(path, read, component, network)
            other = {m: lycoris.prepare(layer, {**parts, **({"lora_down": a, "lora_up": b} if a is not None else {})},
                                        alpha, f"--lora {path}: {component} module {m}", read["kohya"])
                     for m, (layer, a, b, alpha, parts) in found.items() if parts}  # LoHa, LoKr, DoRA
            if other:
                merges.append(([m for n in other for m in getattr(found[n][0], "layers", (found[n][0],))],
                               lambda o=other, s=scale: [merge(s) for merge in o.values()]))
            found = {m: f for m, f in found.items() if not f[4]}
            biases = _lora_biases(path, read.get("bias", {}).get(component, {}), found, component)
            if not found:
                continue
            tensors = {f"{m}.{ab}": t for m, (_, a, b, _, _) in found.items()
                       for ab, t in (("lora_A", a), ("lora_B", b))}

            def adapt(found=found):
                for layer, a, _, alpha, _ in found.values():
                    adapt_layer(layer, a.shape[0], alpha)

            def fuse(n=network, a=adapt, t=tensors, s=scale, w=f"--lora {path} ({component})", biases=biases):
                merge_adapted(n, a, t, s, w)
                if s:  # peft's merge: bias += lora_B.bias * scaling, scaling = s alpha / r (fuse_lora's scale_layer)
                    with torch.no_grad():
                        for bias, delta, alpha_r in biases:
                            bias += delta.to(bias) * (s * alpha_r)

            merges.append(([layer for layer, *_ in found.values()], fuse))
    merge_in_order(merges)


__all__ = ["read_sd_lora", "read_lora_tensors", "parse_sd_lora", "read_sd_loras", "merge_sd_loras"]
