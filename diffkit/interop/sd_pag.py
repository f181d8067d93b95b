"""Perturbed-attention guidance on a Stable Diffusion / SD-XL folder's diffusers UNet2DConditionModel, as
diffusers 0.42.1's ``StableDiffusionPAGPipeline`` and ``StableDiffusionXLPAGPipeline``.

PAG (Ahn et al. 2024, "Self-Rectifying Diffusion Sampling with Perturbed-Attention Guidance", arXiv:2403.17377)
guides away from eps-hat, the network with the self-attention map of chosen layers replaced by the identity (each
such layer outputs out(V(h))). The combination is diffkit's :class:`~diffkit.guidance.PerturbedAttentionGuidance`
directly over the folder's :class:`~diffkit.guidance.ClassifierFreeGuidance`: one UNet call of 3 halves,

    eps = eps_u + s (eps_c - eps_u) + S (eps_c - eps-hat_c)

(diffusers' ``_apply_perturbed_attention_guidance``; 2 halves, eps_c + S (eps_c - eps-hat_c), where the folder is
sampled without classifier-free guidance, s = 1), guidance rescale after the PAG term against eps_c (the pipeline's
``rescale_noise_cfg(noise_pred, noise_pred_text)``) and diffusers' adaptive scale S_t = max(S - a (1000 - t), 0)
at the scheduler's timestep t (:func:`~diffkit.guidance.adaptive_pag_scale`).

The perturbation: this module is the network hook the wrapper calls (:class:`DiffusersSelfAttention`). While the
perturbed call runs, the chosen self-attention modules (diffusers ``Attention`` that is not cross-attention: the
``attn1`` of each transformer block) get diffusers' own processors, ``PAGCFGIdentitySelfAttnProcessor2_0`` for 3
halves (the first two attended, the last perturbed) or ``PAGIdentitySelfAttnProcessor2_0`` for 2, and their previous
processors back afterwards (cross-attention and every other module untouched, so an IP-Adapter's or LoRA's state is
kept). Installing the pipeline's processors, rather than re-implementing the identity path, keeps the perturbed pass
the pipeline's own code; both only need the perturbed samples to be the last half / third of the batch, which is
where diffkit puts them (diffkit's order is cond, null, perturbed; diffusers' null, cond, perturbed).

With ControlNets and an IP-Adapter (``StableDiffusion(XL)ControlNetPAGPipeline``, the PAG pipelines'
``ip_adapter_image``) and in img2img / inpainting (``StableDiffusion(XL)PAGImg2ImgPipeline`` /
``...PAGInpaintPipeline``: ``pag_request(sd, ...)(guided)`` handed to ``latent_img2img`` / ``latent_inpaint``,
``diffkit edit --pag-scale``) nothing more is needed: the pipelines give the perturbed third the conditional third's
inputs, which is what the guidance's per-sample repetition gives the ControlNet (not perturbed: the processors sit
in the UNet), the image embeddings (picked by label) and the 9-channel UNet's mask and masked-image latents.

Layer names are diffusers' ``pag_applied_layers`` (default ``mid``), matched as ``PAGMixin._set_pag_attn_processor``
does: each name is a regular expression searched (``re.search``) in the module names of the self-attention layers
(``down_blocks.1.attentions.0.transformer_blocks.0.attn1``, ``mid_block.attentions.0...``, ``up_blocks.0...``), so
``mid``, ``down_blocks.1``, ``up_blocks.1.attentions.1`` select a block, one of its attentions, ...; a name matching
no layer is refused, as the pipeline raises. The older names ``down.block_1`` / ``up.block_0.attentions_0`` of
diffusers' pipeline comments match nothing in 0.42.1 and are refused likewise; diffkit's own U-Net names
``down.L`` / ``up.L`` are refused in one line.
"""
from __future__ import annotations

import contextlib
import re
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, check_float32, check_range
from . import require

DEFAULT_LAYERS = ("mid",)  # StableDiffusionPAGPipeline / StableDiffusionXLPAGPipeline(pag_applied_layers="mid")
FORM = "diffusers' pag_applied_layers: regular expressions searched in the self-attention module names, e.g. mid, " \
       "down_blocks.1, up_blocks.1.attentions.1"
_DIFFKIT_NAME = re.compile(r"(down|up)\.\d+")  # diffkit's U-Net layer names (diffkit.models.unet), mid aside


def check_layer_names(layers: Union[None, str, Sequence[str]], default: Sequence[str] = DEFAULT_LAYERS,
                      form: str = FORM) -> list:
    """``layers`` (names, or one comma-separated string; None: ``default``, ``mid``) checked for their form before
    a UNet is loaded: non-empty regular expressions, none of diffkit's U-Net names; returns them, deduplicated.
    ``form``: the names the network takes, for the errors (an SD3 transformer's: :mod:`.sd3_pag`)."""
    if layers is None:
        return list(default)
    names = [str(name).strip() for name in (layers.split(",") if isinstance(layers, str) else layers)]
    if not names or not all(names):
        raise DiffkitError(f"pag layers {layers!r} are not allowed: give one or more names ({form})")
    for name in names:
        if form == FORM and _DIFFKIT_NAME.fullmatch(name):
            raise DiffkitError(f"pag layer {name!r} is a diffkit U-Net layer name; a Stable Diffusion folder's UNet "
                               f"takes {FORM}")
        try:
            re.compile(name)
        except re.error as err:
            raise DiffkitError(f"pag layer {name!r} is not a regular expression ({err}); give {form}") from None
    return list(dict.fromkeys(names))


def self_attention_modules(unet) -> list:
    """(name, module) of the UNet's self-attention layers, as the pipeline's ``is_self_attn``."""
    attention = require("diffusers").models.attention_processor.Attention
    return [(name, module) for name, module in unet.named_modules()
            if isinstance(module, attention) and not module.is_cross_attention]


def _fake_integral_match(layer: str, name: str) -> bool:
    """``PAGMixin``'s ``is_fake_integral_match``: both end in the same number (never for a UNet's ``attn1``)."""
    layer, name = layer.split(".")[-1], name.split(".")[-1]
    return layer.isnumeric() and name.isnumeric() and layer == name


def matched_modules(unet, layers: Sequence[str], form: str = FORM, what: str = "UNet") -> list:
    """The self-attention modules ``layers`` select (``PAGMixin._set_pag_attn_processor``'s rule), each once; a
    one-line error for a name that selects none, listing the ``what``'s (``unet``'s) attention blocks."""
    modules = self_attention_modules(unet)
    chosen = {}
    for layer in layers:
        found = [(name, module) for name, module in modules
                 if re.search(layer, name) is not None and not _fake_integral_match(layer, name)]
        if not found:
            blocks = list(dict.fromkeys(name.split(".transformer_blocks")[0] for name, _ in modules))
            raise DiffkitError(f"pag layer {layer!r} matches no self-attention layer of this {what}; it has "
                               f"{', '.join(blocks) or 'none'} ({form})")
        chosen.update((id(module), module) for _, module in found)
    return list(chosen.values())


class DiffusersSelfAttention:
    """The network :class:`~diffkit.guidance.PerturbedAttentionGuidance` perturbs, for a diffusers UNet: its
    ``check_self_attention_layers`` and ``perturbed_self_attention`` (the diffkit U-Net's interface).
    ``processors``: diffusers' PAG processors (names in ``attention_processor``) for 3 halves and for 2;
    ``default``, ``form``, ``what``: the layer names and the network's name (an SD3 transformer's: :mod:`.sd3_pag`)."""

    processors = ("PAGCFGIdentitySelfAttnProcessor2_0", "PAGIdentitySelfAttnProcessor2_0")
    default, form, what = DEFAULT_LAYERS, FORM, "UNet"

    def __init__(self, unet):
        self.unet = unet
        self._matched = {}  # layer names -> modules: the UNet's walk once, not on every network call

    def _modules(self, layers: Sequence[str]) -> list:
        key = tuple(layers)
        if key not in self._matched:
            self._matched[key] = matched_modules(self.unet, key, self.form, self.what)
        return self._matched[key]

    def check_self_attention_layers(self, layers) -> list:
        """The names (:func:`check_layer_names`), each selecting at least one layer of this UNet."""
        names = check_layer_names(layers, self.default, self.form)
        self._modules(names)
        return names

    @contextlib.contextmanager
    def perturbed_self_attention(self, layers: Sequence[str], identity: torch.Tensor):
        """Within the context, the layers' identity attention for the samples marked in ``identity``, which must be
        the last half or third of the batch (the pipeline's processors split it so)."""
        processors = require("diffusers").models.attention_processor
        total, perturbed = identity.numel(), int(identity.sum())
        copies = total // max(perturbed, 1)
        if copies not in (2, 3) or copies * perturbed != total or not bool(identity[total - perturbed:].all()):
            raise DiffkitError("diffusers' PAG processors perturb the last half or third of the batch; this call "
                               "marks other samples")
        processor = getattr(processors, self.processors[0 if copies == 3 else 1])()
        saved = [(module, module.processor) for module in self._modules(layers)]
        try:
            for module, _ in saved:
                module.processor = processor
            yield
        finally:
            for module, previous in saved:
                module.processor = previous


def pag_request(sd, scale: Optional[float], layers=None, adaptive_scale: Optional[float] = None, interval=None,
                controlnet=None):
    """``text_to_image``'s PAG options checked before any work: None where ``scale`` is None or 0 (no PAG: the
    sampling is bit for bit as without), else a function wrapping the folder's guided denoiser. Refused in one line:
    the options without a scale, an LCM UNet with a guidance input, LCMScheduler / TCD sampling, ControlNet guess
    mode (diffusers' ControlNet PAG pipelines break on it, or have none). ControlNets and an IP-Adapter need nothing
    of their own: they see the batch of 3 (2) halves as the pipelines feed it, the perturbed half the conditional
    one's control image, prompt and image embedding (``_prepare_perturbed_attention_guidance``)."""
    if not scale:
        given = [(n, v) for n, v in (("pag_layers", layers), ("pag_adaptive_scale", adaptive_scale),
                                     ("pag_interval", interval)) if v is not None]
        if scale is None and given:
            raise DiffkitError(f"{given[0][0]}={given[0][1]!r} needs pag_scale (perturbed-attention guidance)")
        check_range("pag_scale", scale or 0.0, 0.0, None)
        return None
    scale = float(check_float32("pag_scale", check_range("pag_scale", scale, 0.0, None)))
    adaptive_scale = float(check_range("pag_adaptive_scale", adaptive_scale or 0.0, 0.0, None))
    names = check_layer_names(layers)
    if sd.guidance_embedding_dim:
        raise DiffkitError(f"perturbed-attention guidance is not supported on this LCM UNet with a guidance input "
                           f"(time_cond_proj_dim={sd.guidance_embedding_dim}); allowed: a UNet without one")
    if sd.consistency is not None or sd.scheduler_override:
        raise DiffkitError("perturbed-attention guidance is not supported with LCMScheduler / TCD sampling (an "
                           "LCMScheduler folder or scheduler='lcm' / 'tcd'); allowed: the folder's own scheduler")
    if controlnet is not None and controlnet.guess_mode:  # the pipelines' guess mode breaks on 3 halves
        raise DiffkitError("perturbed-attention guidance is not supported with ControlNet guess mode (or a "
                           "global_pool_conditions ControlNet); allowed: ControlNets without it")
    if controlnet is not None and getattr(controlnet, "modes", None) is not None:
        raise DiffkitError("perturbed-attention guidance is not supported with a ControlNet-Union (diffusers has no "
                           "union PAG pipeline); allowed: plain ControlNets")
    network = DiffusersSelfAttention(sd.unet)
    names = network.check_self_attention_layers(names)

    def perturbed(denoiser):
        from ..guidance import PerturbedAttentionGuidance
        return PerturbedAttentionGuidance(denoiser, scale, names, interval, network=network,
                                          adaptive_scale=adaptive_scale)
    return perturbed


__all__ = ["DiffusersSelfAttention", "check_layer_names", "matched_modules", "pag_request"]
