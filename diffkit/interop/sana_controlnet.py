"""Sana ControlNets (``SanaControlNetModel``) on a Sana folder (:mod:`.sana`), as diffusers 0.42.1's
``SanaControlNetPipeline``, sampled with any diffkit sampler.

A Sana ControlNet (ControlNet, Zhang et al. 2023, eq. 1-2, carried to the DiT as PixArt-δ, Chen et al. 2024, Sec. 3:
a copy of the first N transformer blocks, a zero-initialised linear layer on each block's output) reads the noisy
latents plus, through a zero-initialised ``input_block``, the patch-embedded control latents, with the prompt's
states and mask and the time; block j of its N outputs, times ``controlnet_conditioning_scale``, is added to the
hidden states after transformer block j + 1 (``SanaTransformer2DModel``'s ``controlnet_block_samples``).
:class:`SanaControlledNet` does this at every network call, so every diffkit sampler, the scheduler's own loop
and the classifier-free guidance batch see it:

* the control image (RGB; a path, PIL image or (1, 3, H, W) tensor in [0, 1]) is resized to the output size
  (Lanczos) and mapped to [-1, 1] (the pipeline's ``PixArtImageProcessor.preprocess``,
  :func:`.flow_controlnet.control_pixels`), then encoded by the folder's DC-AE, c = E(x) x scaling_factor
  (deterministic: :meth:`.sana.Sana.encode`), the same latents for both guidance halves; one image for every
  prompt, or one per prompt (``control_rows``).
* the ControlNet and the transformer get the same timestep (the scheduler's, floored on a DPM-Solver folder's own
  timesteps: :meth:`.sana.SanaNet.timesteps`); the pipeline passes neither ``timestep_scale``, so a transformer
  whose ``timestep_scale`` is not 1 is refused (the pipeline would call it off its training times).
* the conditioning scale (default 1.0); a scale of 0 adds nothing (the pipeline adds 0 times the residuals).

Refused in one line (:func:`check_sana_controlnets`): more than one ControlNet (the pipeline takes one
``SanaControlNetModel``), a control guidance window and guess mode (it has neither), a ControlNet that does not fit
the transformer (its latent channels, width, patch size, text widths), PAG with a ControlNet (no pipeline has both).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import DiffkitError
from .controlnet import ControlNets, model_folder_config

SANA_CONTROLNET = "SanaControlNetModel"


def check_sana_controlnet_folder(directory) -> None:
    """A folder with the ``config.json`` of a diffusers ``SanaControlNetModel`` (one line otherwise)."""
    model_folder_config(directory, "--controlnet", SANA_CONTROLNET, " (a Sana folder takes Sana ControlNets)")


def check_sana_control_options(count: int, starts, ends, guess_mode: bool, kind: str = "Sana",
                               pipeline: str = "SanaControlNetPipeline", model: str = SANA_CONTROLNET,
                               several: bool = False) -> None:
    """One ControlNet (``count``; ``several``: one or more), no window (``starts`` all 0, ``ends`` all 1), no guess
    mode: a one-line DiffkitError otherwise (before any weight is read, from the flags; again on the loaded
    ControlNets). ``kind``, ``pipeline``, ``model``: the folder kind, its ControlNet pipeline and model class
    (HunyuanDiT's, :mod:`.hunyuan_dit_controlnet`, whose pipeline takes several)."""
    if count != 1 and not (several and count > 1):
        raise DiffkitError(f"{count} --controlnet on a {kind} folder; {pipeline} takes one {model}")
    if any(float(s) != 0 for s in starts) or any(float(e) != 1 for e in ends) or guess_mode:
        raise DiffkitError(f"a control guidance window (--control-guidance-start / --control-guidance-end) or guess "
                           f"mode does not apply to a {kind} ControlNet ({pipeline} has none); give "
                           f"--controlnet, --control-image, --controlnet-scale")


def check_sana_controlnets(controlnets: ControlNets, transformer) -> None:
    """One ``SanaControlNetModel`` without a window or guess mode (:func:`check_sana_control_options`), fitting
    ``transformer`` (module docstring); a one-line DiffkitError naming what does not."""
    check_sana_control_options(len(controlnets.models), controlnets.start, controlnets.end, controlnets.guess_mode)
    model, config = controlnets.models[0], transformer.config
    if type(model).__name__ != SANA_CONTROLNET:
        raise DiffkitError(f"--controlnet is a {type(model).__name__}; allowed: a {SANA_CONTROLNET} for a Sana folder")
    theirs = model.config
    for key in ("in_channels", "patch_size", "caption_channels", "cross_attention_dim"):
        if theirs.get(key) != config.get(key):
            raise DiffkitError(f"--controlnet has {key}={theirs.get(key)!r} but this Sana folder's transformer "
                               f"{config.get(key)!r}; a ControlNet fits only the transformer it was made for")
    width, wanted = (int(c.num_attention_heads) * int(c.attention_head_dim) for c in (theirs, config))
    if width != wanted:
        raise DiffkitError(f"--controlnet has a width of {width} (num_attention_heads x attention_head_dim) but this "
                           f"Sana folder's transformer {wanted}")
    if float(config.get("timestep_scale", 1.0)) != 1.0:
        raise DiffkitError(f"this Sana folder's transformer has timestep_scale={config.timestep_scale!r}, which "
                           f"SanaControlNetPipeline does not apply; allowed with --controlnet: 1.0")


class SanaControlledNet(torch.nn.Module):
    """``net(x, t, context, mask, control)``: a :class:`.sana.SanaNet` with a ControlNet's scaled block residuals
    (module docstring). ``control``: (B, C, h, w) control latents of each row."""

    def __init__(self, net, controlnet, scale: float):
        super().__init__()
        self.net, self.controlnet, self.scale = net, controlnet, float(scale)

    @property
    def model(self):
        return self.net.model

    def forward(self, x, t, context=None, mask=None, control=None):
        if control is None:
            raise DiffkitError("a Sana ControlNet needs cond['control'] (sana_controlnet.controlnet_guidance)")
        from . import model_dtype
        if self.scale == 0:  # the pipeline adds 0 x the residuals
            return self.net(x, t, context, mask)
        dtype = model_dtype(self.controlnet)
        blocks = self.controlnet(x.to(dtype), encoder_hidden_states=context.to(dtype), encoder_attention_mask=mask,
                                 timestep=self.net.timesteps(x, t), controlnet_cond=control.to(dtype),
                                 conditioning_scale=self.scale, return_dict=False)[0]
        return self.net(x, t, context, mask, controls=blocks)


def controlnet_guidance(sana, controlnets: ControlNets, guide, shape: tuple, unguided=None,
                        control_rows=None) -> tuple:
    """(denoiser, cond) of ``guide(denoiser)`` (the prompts' guidance of a Sana folder over the unguided denoiser
    given) on the transformer with ``controlnets`` (checked: :func:`check_sana_controlnets`), ``cond["control"]``
    (and the guidance's null half's) the control latents (module docstring); ``shape``: the latents' (B, C, h, w);
    ``unguided``: the plain denoiser (default :attr:`~.sana.Sana.denoiser`); ``control_rows``: each sample's
    control image where there is one per prompt."""
    from ..denoiser import Denoiser
    from .flow_controlnet import control_pixels
    check_sana_controlnets(controlnets, sana.transformer)
    plain = unguided or sana.denoiser
    denoiser = Denoiser(SanaControlledNet(plain.net, controlnets.models[0], controlnets.scales[0]), plain.schedule,
                        "flow_prediction")
    denoiser.model = sana.transformer
    guided, cond = guide(denoiser)
    f, batch = sana.vae_scale_factor, shape[0]
    latents = sana.encode(control_pixels(sana, controlnets, shape[2] * f, shape[3] * f)[0])
    picked = controlnets.rows(batch, control_rows)
    cond["control"] = latents[picked] if picked is not None and latents.shape[0] > 1 else \
        latents[:1].expand(batch, *latents.shape[1:])
    if getattr(guided, "null_cond", None) is not None:
        guided.null_cond["control"] = cond["control"]
    return guided, cond


def check_no_pag(controlnets: Optional[ControlNets], pag_scale, kind: str = "Sana") -> None:
    """One line for PAG with a ``kind`` (Sana, HunyuanDiT) ControlNet (diffusers 0.42.1 has no pipeline with
    both)."""
    if controlnets is not None and pag_scale:
        raise DiffkitError(f"perturbed-attention guidance with a ControlNet is not supported on a {kind} folder "
                           f"({kind}PAGPipeline has no ControlNet, {kind}ControlNetPipeline no PAG); give one of them")


__all__ = ["SANA_CONTROLNET", "SanaControlledNet", "check_no_pag", "check_sana_control_options",
           "check_sana_controlnet_folder",
           "check_sana_controlnets", "controlnet_guidance"]
