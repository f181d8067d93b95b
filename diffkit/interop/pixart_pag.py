"""Perturbed-attention guidance on a PixArt-Σ or Sana folder's transformer, as diffusers 0.42.1's
``PixArtSigmaPAGPipeline`` and ``SanaPAGPipeline``.

PAG (Ahn et al. 2024, "Self-Rectifying Diffusion Sampling with Perturbed-Attention Guidance", arXiv:2403.17377)
guides away from the prediction of the network whose chosen self-attention layers are the identity (each outputs
out(V(h))). Both pipelines combine it as the SD / SD3 ones (:mod:`.sd_pag`, :mod:`.sd3_pag`): diffkit's
:class:`~diffkit.guidance.PerturbedAttentionGuidance` directly over the folder's masked-text
:class:`~diffkit.guidance.ClassifierFreeGuidance` (:meth:`.pixart.PixArt.prompt_guidance`), one transformer call of
3B rows (the perturbed third with the prompts' states and mask),

    eps = eps_u + s (eps_c - eps_u) + S (eps_c - eps-hat_c)

on PixArt-Σ's noise (its learned-variance channels dropped, as without PAG) and on Sana's velocity (affine in eps and
x_0 with the same coefficients for every pass); s = 1 is 2 halves, eps_c + S (eps_c - eps-hat_c), as the pipelines
with classifier-free guidance off. The perturbation is diffusers' own processors installed on the chosen self-
attentions for the perturbed call only (:class:`~.sd_pag.DiffusersSelfAttention`): PixArt-Σ's
``PAGCFGIdentitySelfAttnProcessor2_0`` / ``PAGIdentitySelfAttnProcessor2_0``, Sana's linear-attention
``PAGCFGSanaLinearAttnProcessor2_0`` / ``PAGIdentitySanaLinearAttnProcessor2_0``. The adaptive scale S_t = max(S -
A (1000 - t), 0) reads the pipeline's timestep t, Sana's s T (floored on a DPM-Solver folder's own timesteps, as its
int64 timesteps); on PixArt-Σ it is refused (``PixArtSigmaPAGPipeline`` fails on it, comparing a batch of
timesteps with 0).

Layer names are diffusers' ``pag_applied_layers``, regular expressions searched in the self-attention module names
``transformer_blocks.N.attn1`` (``PAGMixin``'s rule; default PixArt-Σ ``blocks.1``, Sana ``transformer_blocks.0``,
the pipelines'). Refused in one line: PAG on a folder diffusers 0.42.1 has no PAG pipeline for (PixArt-α, Sana
Sprint, Lumina-Image 2.0, AuraFlow), a name selecting no layer.
"""
from __future__ import annotations

from typing import Optional

from ..errors import DiffkitError
from .sd_pag import DiffusersSelfAttention, check_layer_names

# pipeline of the folder: (its PAG pipeline, default pag_applied_layers, diffusers' PAG processors for 3 / 2 halves)
PAG_PIPELINES = {
    "PixArtSigmaPipeline": ("PixArtSigmaPAGPipeline", ("blocks.1",),
                            ("PAGCFGIdentitySelfAttnProcessor2_0", "PAGIdentitySelfAttnProcessor2_0")),
    "SanaPipeline": ("SanaPAGPipeline", ("transformer_blocks.0",),
                     ("PAGCFGSanaLinearAttnProcessor2_0", "PAGIdentitySanaLinearAttnProcessor2_0")),
}
FORM = "diffusers' pag_applied_layers: regular expressions searched in the self-attention module names " \
       "transformer_blocks.N.attn1, e.g. blocks.1, transformer_blocks.0, blocks\\.(0|2)\\."


def pag_pipeline(pipeline: str) -> tuple:
    """(PAG pipeline, default layers, processors) of a folder's ``pipeline`` class; one line where diffusers
    0.42.1 has no PAG pipeline for it."""
    if pipeline not in PAG_PIPELINES:
        raise DiffkitError(f"perturbed-attention guidance is not supported on a {pipeline} folder (diffusers 0.42.1 "
                           f"has no PAG pipeline for it); allowed: {', '.join(PAG_PIPELINES)} folders")
    return PAG_PIPELINES[pipeline]


def check_pixart_pag(pipeline: str, scale: Optional[float], layers=None,
                     adaptive_scale: Optional[float] = None) -> bool:
    """True where PAG is on (``scale`` > 0) for a folder of ``pipeline``, after the checks of the SD3 PAG options
    (:func:`.sd3_pag.check_sd3_pag`: finite scales >= 0, the options without a scale refused) and of the names'
    form, before any weight is read; False for None / 0."""
    from .sd3_pag import check_sd3_pag
    if not check_sd3_pag(scale, None if scale else layers, adaptive_scale):  # the names: this form's, below
        return False
    check_layer_names(layers, pag_pipeline(pipeline)[1], FORM)
    if adaptive_scale and pipeline == "PixArtSigmaPipeline":
        raise DiffkitError(f"pag_adaptive_scale={adaptive_scale!r} is not supported on a PixArtSigmaPipeline folder "
                           f"(PixArtSigmaPAGPipeline fails on it: its timestep is a batch); allowed: 0 or none")
    return True


def pixart_pag(pixart, guided, scale: Optional[float], layers=None, adaptive_scale: Optional[float] = None,
               whole_timesteps: bool = False):
    """``guided`` (the folder's guidance, :meth:`.pixart.PixArt.prompt_guidance`) with PAG over it (module
    docstring); itself for ``scale`` None or 0 (bit for bit). ``whole_timesteps``: the adaptive scale reads
    floor(s T), a Sana DPM-Solver folder's timesteps on its own grid."""
    if not check_pixart_pag(pixart.pipeline, scale, layers, adaptive_scale):
        return guided
    from .. import diffusion
    from ..guidance import PerturbedAttentionGuidance
    _, default, processors = pag_pipeline(pixart.pipeline)
    network = DiffusersSelfAttention(pixart.transformer)
    network.processors, network.default, network.form, network.what = processors, default, FORM, "transformer"
    schedule = guided.schedule

    def flow_timesteps(t64):  # Sana's t = sigma * 1000: the network's flow time s T (floored)
        times = diffusion.flow_time(schedule.alpha(t64), schedule.sigma(t64)) * schedule.num_timesteps
        return times.floor() if whole_timesteps else times
    return PerturbedAttentionGuidance(guided, scale, check_layer_names(layers, default, FORM), network=network,
                                      adaptive_scale=float(adaptive_scale or 0.0),
                                      adaptive_times=flow_timesteps if pixart.prediction_type == "flow_prediction"
                                      else None)


__all__ = ["PAG_PIPELINES", "check_pixart_pag", "pag_pipeline", "pixart_pag"]
