"""Any diffusers U-Net as a diffkit :class:`~diffkit.denoiser.Denoiser` (README "Design": "a diffusers
UNet ... is just another Denoiser").

diffusers models are called ``model(sample, timestep, ...)``; diffkit's Denoiser calls
``net(x, t, **cond)`` with ``t`` a float32 (B,) tensor in training-timestep units, which is
diffusers' timestep unit too. The positional timestep embedding of diffusers
(``get_timestep_embedding``) casts the timesteps to float and multiplies by the frequencies, so
fractional times (DPM-Solver, Karras grids) are embedded by the same formula as integer ones.

``cond`` keys: ``y`` -> ``class_labels`` (UNet2DModel with ``num_class_embeds``), ``context`` ->
``encoder_hidden_states`` (UNet2DConditionModel, the text embedding of Stable Diffusion), ``w``
(a UNet2DConditionModel with ``time_cond_proj_dim``, LCM's guidance input, Luo et al. 2023
Sec. 4.2) -> ``timestep_cond`` = :func:`~diffkit.models.layers.guidance_scale_embedding` of w (seed
convention: diffusers' pipelines embed their guidance_scale - 1, which is w); ``text_embeds`` and
``time_ids`` (SD-XL's pooled prompt embedding and size conditions, :mod:`.sd_xl`), ``image_embeds`` (Kandinsky
2.2's CLIP image embedding, :mod:`.kandinsky`) and ``hint`` (its ControlNet decoder's depth image,
:mod:`.kandinsky_controlnet`) -> ``added_cond_kwargs``,
joined to one given as such (an IP-Adapter's ``image_embeds``, :mod:`.ip_adapter`); any other key is passed
through unchanged.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..denoiser import Denoiser
from ..errors import DiffkitError
from ..models.layers import guidance_scale_embedding
from ..schedule import NoiseSchedule
from . import model_dtype
from .schedulers import learned_variance_of, schedule_from_diffusers


# cond keys a diffusers UNet takes as added_cond_kwargs: SD-XL's, Kandinsky 2.2's image embedding (.kandinsky) and
# hint (addition_embed_type="image_hint", .kandinsky_controlnet)
ADDED_COND_KEYS = ("text_embeds", "time_ids", "image_embeds", "hint")


class DiffusersNet(torch.nn.Module):
    """``net(x, t, y=None, context=None, **extra)`` over a diffusers U-Net (its output ``.sample``).

    ``uses_labels``: pass ``y`` on as ``class_labels`` (default: the model has a class
    embedding); otherwise ``y`` is ignored, which lets a classifier-free guidance wrapper mark
    its conditional / null halves with labels while the condition itself is ``context``.
    ``guidance_dim``: the model's ``time_cond_proj_dim`` (0: none); such a model needs ``w``."""

    def __init__(self, model, uses_labels: Optional[bool] = None):
        super().__init__()
        self.model = model
        if uses_labels is None:
            uses_labels = getattr(model, "class_embedding", None) is not None
        self.uses_labels = bool(uses_labels)
        self.guidance_dim = int(getattr(model, "config", {}).get("time_cond_proj_dim") or 0)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None,
                context: Optional[torch.Tensor] = None, w=None, **extra) -> torch.Tensor:
        kwargs = dict(extra)
        added = {key: kwargs.pop(key) for key in ADDED_COND_KEYS if key in kwargs}
        if added:  # SD-XL's addition_embed_type="text_time" (.sd_xl), beside an IP-Adapter's image_embeds
            kwargs["added_cond_kwargs"] = {**kwargs.get("added_cond_kwargs", {}), **added}
        if context is not None or "image_embeds" in added:  # Kandinsky 2.2: tokens of image_embeds ("image_proj")
            kwargs["encoder_hidden_states"] = context
        if y is not None and self.uses_labels:
            kwargs["class_labels"] = y
        dtype = model_dtype(self.model, x.dtype)
        if w is not None or self.guidance_dim:
            kwargs["timestep_cond"] = self.guidance_condition(w, x.shape[0], x.device).to(dtype)
        out = self.model(x.to(dtype), t, return_dict=False, **kwargs)[0]
        return out.to(x.dtype)

    def guidance_condition(self, w, batch: int, device) -> torch.Tensor:
        """diffusers' ``timestep_cond`` for guidance weights ``w`` (a number or (batch,)): the
        embedding of w as float32, as ``LatentConsistencyModelPipeline`` embeds
        ``torch.tensor(guidance_scale - 1)`` (1000 w is then rounded in float32 like diffusers')."""
        if not self.guidance_dim:
            raise DiffkitError("w was given but this diffusers UNet has no guidance input (time_cond_proj_dim); "
                               "guide it with classifier-free guidance instead")
        if w is None:
            raise DiffkitError(f"this diffusers UNet takes the guidance weight w as input (time_cond_proj_dim="
                               f"{self.guidance_dim}); pass w (seed convention, diffusers' guidance_scale - 1)")
        try:
            w = torch.as_tensor(w, dtype=torch.float32, device=device)
        except (TypeError, ValueError, RuntimeError):
            raise DiffkitError(f"w={w!r} is not allowed; give guidance weights as a number or ({batch},)") from None
        if w.shape not in ((), (1,), (batch,)):
            raise DiffkitError(f"w of shape {tuple(w.shape)} is not allowed; give one guidance weight or ({batch},)")
        return guidance_scale_embedding(w.reshape(-1).expand(batch), self.guidance_dim)


def diffusers_denoiser(model, scheduler=None, *, schedule: Optional[NoiseSchedule] = None,
                       prediction_type: Optional[str] = None, learned_variance: Optional[bool] = None,
                       uses_labels: Optional[bool] = None) -> Denoiser:
    """A :class:`Denoiser` for a diffusers ``UNet2DModel`` / ``UNet2DConditionModel``.

    The schedule and prediction type come from ``scheduler`` (a diffusers scheduler or its config
    dict, see :func:`~diffkit.interop.schedulers.schedule_from_diffusers`) or are given directly.
    ``learned_variance`` defaults to ``out_channels == 2 * in_channels`` (Improved DDPM's
    [prediction, v] output, diffusers' ``variance_type="learned_range"``)."""
    if scheduler is not None:
        sched_schedule, sched_prediction = schedule_from_diffusers(scheduler)
        schedule = schedule or sched_schedule
        prediction_type = prediction_type or sched_prediction
        if learned_variance_of(scheduler) and learned_variance is None:  # 'learned' (the variance itself): refused
            learned_variance = True
    if schedule is None:
        raise DiffkitError("pass the diffusers scheduler (or its config) or schedule= so the denoiser "
                           "knows the noise schedule the model was trained with")
    config = getattr(model, "config", {})
    if learned_variance is None:
        learned_variance = config.get("out_channels") == 2 * config.get("in_channels", -1)
    d = Denoiser(DiffusersNet(model, uses_labels), schedule, prediction_type or "epsilon",
                 learned_variance=learned_variance)
    d.model = model
    return d


__all__ = ["DiffusersNet", "diffusers_denoiser"]
