"""Perturbed-attention guidance on an SD3 folder's ``SD3Transformer2DModel``, as diffusers 0.42.1's
``StableDiffusion3PAGPipeline`` and ``StableDiffusion3PAGImg2ImgPipeline``.

PAG (Ahn et al. 2024, "Self-Rectifying Diffusion Sampling with Perturbed-Attention Guidance", arXiv:2403.17377)
guides away from u-hat, the velocity with the self-attention of chosen layers made the identity. In an MM-DiT block
the joint attention runs over [image tokens, text tokens]; the pipelines' ``PAGCFGJointAttnProcessor2_0`` (3 halves)
/ ``PAGJointAttnProcessor2_0`` (2 halves) give the perturbed samples the mask that lets each image token attend to
itself and to every text token only (the image-image block of the attention map the identity), the text tokens'
rows untouched. The combination is the SD / SD-XL one of :mod:`.sd_pag` (diffkit's
:class:`~diffkit.guidance.PerturbedAttentionGuidance` directly over the folder's
:class:`~diffkit.guidance.ClassifierFreeGuidance`, one transformer call of 3B rows), on the velocity:

    u = u_u + s (u_c - u_u) + S (u_c - u-hat_c)

(``_apply_perturbed_attention_guidance``; eps and x_0 are affine in u with the same coefficients for every pass, so
diffkit's eps / x_0 mix is this step; s <= 1 in the diffusers convention: 2 halves, u_c + S (u_c - u-hat_c), where
the pipeline turns classifier-free guidance off; s < 1 is applied as the formula says, as diffkit's SD3 guidance
without PAG). The adaptive scale S_t = max(S - A (1000 - t), 0) reads the pipeline's timestep t = sigma * 1000 (the
network's flow time), not diffkit's VP time. The processors are diffusers' own, installed on the chosen layers for
the perturbed call only (:class:`~.sd_pag.DiffusersSelfAttention`): they perturb the last third / half of the batch,
which is where diffkit puts it (diffkit's order cond, null, perturbed; the pipeline's null, cond, perturbed: each
row's attention is its own).

Layer names are diffusers' ``pag_applied_layers`` (default ``blocks.1``, the pipelines'): regular expressions
searched in the joint-attention module names ``transformer_blocks.N.attn`` (``PAGMixin._set_pag_attn_processor``'s
rule), so ``blocks.1`` also selects blocks 10..19 of a deep transformer, as in the pipeline; ``blocks\\.1\\.`` only
block 1. Refused in one line: a name selecting no layer, one selecting an SD3.5 dual-attention block's ``attn2``
(its image-only self-attention: the PAG joint processors fail on it in the pipeline), and what diffusers has no
SD3 PAG pipeline for: skip-layer guidance, ControlNets, an IP-Adapter and inpainting (``mask``). Adaptive projected
guidance (the folder's guidance with ``apg``) goes with it as on SD / SD-XL: the APG update on (x0_c, x0_u), then
PAG's term S (x0_c - x0-hat_c) added, neither projected nor averaged, in the same call of 3 halves (no pipeline has
APG; compared with diffusers' ``AdaptiveProjectedGuidance`` guider plus that term, as for SD 1.x).
"""
from __future__ import annotations

from typing import Optional

from ..errors import DiffkitError
from .sd_pag import DiffusersSelfAttention, check_layer_names

DEFAULT_LAYERS = ("blocks.1",)  # StableDiffusion3PAG(Img2Img)Pipeline(pag_applied_layers="blocks.1")
FORM = "diffusers' pag_applied_layers of an SD3 transformer: regular expressions searched in the joint-attention " \
       "module names transformer_blocks.N.attn, e.g. blocks.1 (the default), blocks\\.1\\., blocks\\.(0|2)\\."


def check_sd3_layer_names(layers) -> list:
    """The names (None: ``blocks.1``) checked for their form before a transformer is loaded (:func:`.sd_pag.
    check_layer_names`)."""
    return check_layer_names(layers, DEFAULT_LAYERS, FORM)


class JointAttention(DiffusersSelfAttention):
    """:class:`~.sd_pag.DiffusersSelfAttention` for an ``SD3Transformer2DModel``: its joint attentions, perturbed by
    diffusers' PAG joint processors."""

    processors = ("PAGCFGJointAttnProcessor2_0", "PAGJointAttnProcessor2_0")
    default, form, what = DEFAULT_LAYERS, FORM, "SD3 transformer"

    def _modules(self, layers) -> list:
        modules = super()._modules(layers)
        dual = {id(block.attn2) for block in self.unet.transformer_blocks if block.attn2 is not None}
        if any(id(module) in dual for module in modules):
            raise DiffkitError(f"pag layers {','.join(layers)} select a dual-attention block's attn2 (SD3.5's "
                               f"image-only self-attention), on which diffusers' PAG joint processors fail; give "
                               f"names that select transformer_blocks.N.attn only, e.g. blocks\\.1\\.attn$")
        return modules


def _refused(skip_layers, controlnet, ip_adapter, mask) -> Optional[str]:
    """The first option given that diffusers' SD3 PAG pipelines do not take, in words; None."""
    for given, what in ((skip_layers is not None, "skip-layer guidance"), (controlnet is not None, "a ControlNet"),
                        (ip_adapter is not None, "an IP-Adapter"), (mask is not None, "inpainting (a mask)")):
        if given:
            return what
    return None


def check_sd3_pag(scale: Optional[float], layers=None, adaptive_scale: Optional[float] = None, *,
                  skip_layers=None, controlnet=None, ip_adapter=None, mask=None) -> bool:
    """True where PAG is on (``scale`` > 0), after its checks, before any work: scale and adaptive scale finite
    numbers >= 0, the names' form, none of the options diffusers' SD3 PAG pipelines lack (one line naming it and
    what PAG takes); False for None / 0 (the options alone: one line)."""
    from ..errors import check_float32, check_range
    if not scale:
        given = [(n, v) for n, v in (("pag_layers", layers), ("pag_adaptive_scale", adaptive_scale)) if v is not None]
        if scale is None and given:
            raise DiffkitError(f"{given[0][0]}={given[0][1]!r} needs pag_scale (perturbed-attention guidance)")
        check_range("pag_scale", scale or 0.0, 0.0, None)
        return False
    check_float32("pag_scale", check_range("pag_scale", scale, 0.0, None))
    check_range("pag_adaptive_scale", adaptive_scale or 0.0, 0.0, None)
    check_sd3_layer_names(layers)
    other = _refused(skip_layers, controlnet, ip_adapter, mask)
    if other is not None:
        raise DiffkitError(f"perturbed-attention guidance with {other} is not supported on an SD3 folder (diffusers "
                           f"0.42.1's StableDiffusion3PAGPipeline / PAGImg2ImgPipeline have none); allowed with it: "
                           f"the prompts, guidance scale, APG, LoRA, samplers, height / width, img2img")
    return True


def sd3_pag(sd3, guided, scale: Optional[float], layers=None, adaptive_scale: Optional[float] = None):
    """``guided`` (the folder's :class:`~diffkit.guidance.ClassifierFreeGuidance`, :meth:`~.sd3.StableDiffusion3.
    prompt_guidance`) with PAG over it (module docstring); itself for ``scale`` None or 0 (bit for bit)."""
    if not scale:
        return guided
    from .. import diffusion
    from ..guidance import PerturbedAttentionGuidance
    schedule = guided.schedule
    T = schedule.num_timesteps

    def pipeline_timesteps(t64):  # the pipeline's t = sigma * 1000: the network's flow time s T (Denoiser)
        return diffusion.flow_time(schedule.alpha(t64), schedule.sigma(t64)) * T

    return PerturbedAttentionGuidance(guided, scale, check_sd3_layer_names(layers), network=JointAttention(
        sd3.transformer), adaptive_scale=float(adaptive_scale or 0.0), adaptive_times=pipeline_timesteps)


__all__ = ["DEFAULT_LAYERS", "JointAttention", "check_sd3_layer_names", "check_sd3_pag", "sd3_pag"]
