"""GLIGEN (Li et al. 2023, "GLIGEN: Open-Set Grounded Text-to-Image Generation") for a diffusers
``StableDiffusionGLIGENPipeline`` folder, sampled with any diffkit sampler.

A GLIGEN folder is a Stable Diffusion folder whose UNet2DConditionModel has ``attention_type="gated"``: each
transformer block carries a gated self-attention layer (paper eq. 8, diffusers' ``GatedSelfAttentionDense``)
between its self- and cross-attention,

    v <- v + tanh(gamma) TS(SelfAttn([v, h^e]))        (TS: the visual tokens' part)
    v <- v + tanh(beta) FF(v)

over the visual tokens v and the grounding tokens h^e = MLP([f_text(phrase), Fourier(box)]) (paper eq. 5,
diffusers' ``GLIGENTextBoundingboxProjection``: the phrases' pooled CLIP text embeddings, the boxes' Fourier
features; padded to 30 objects, padding replaced by learned null features). The UNet builds h^e from
``cross_attention_kwargs={"gligen": {"boxes", "positive_embeddings", "masks"}}``; :class:`GroundedNet` passes it.

Classifier-free guidance: the null half gets masks 0 (every object the null token), as the pipeline's
``masks[:B] = 0``; the phrases and boxes are the same for every prompt. Scheduled sampling (paper Sec. 4,
``gligen_scheduled_sampling_beta``): step i of N is grounded iff i < int(N beta) (the pipeline's
``enable_fuser(False)`` from step int(beta N) on), the rule of :func:`.t2i_adapter.adapter_steps`; a call at time t
belongs to the grid step i with t_{i+1} < t <= t_i (:func:`.controlnet.steps_of`), so any fixed-step sampler
works. A call without grounding passes no ``gligen`` kwargs: the UNet skips the fusers, as ``enabled=False`` does.

Not supported: GLIGEN inpainting (``gligen_inpaint_image``, a 9-channel UNet whose pipeline redraws its noise from
torch's global generator each step) and ``StableDiffusionGLIGENTextImagePipeline`` (``attention_type=
"gated-text-image"``); both refused in one line.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..denoiser import Denoiser
from ..errors import DiffkitError, check_range, read_json_object
from .controlnet import steps_of
from .stable_diffusion import NULL_LABEL
from .t2i_adapter import adapter_steps

MAX_OBJECTS = 30  # the pipeline's max_objs: the UNet's grounding tokens
DEFAULT_BETA = 0.3  # gligen_scheduled_sampling_beta's default
GATED = "gated"
PIPELINE = "StableDiffusionGLIGENPipeline"


def unet_attention_type(directory: Union[str, Path]) -> Optional[str]:
    """The ``attention_type`` of a diffusers folder's ``unet/config.json`` (None where there is none)."""
    config = Path(directory) / "unet" / "config.json"
    if not config.is_file():
        return None
    try:
        return read_json_object(config, "unet config").get("attention_type")
    except DiffkitError:
        return None


def is_gligen_folder(directory: Union[str, Path]) -> bool:
    """True for a diffusers folder whose UNet has gated self-attention (``attention_type`` ``gated`` or
    ``gated-text-image``)."""
    return str(unet_attention_type(directory) or "").startswith(GATED)


def check_gligen_unet(config: dict, directory) -> None:
    """One line for the GLIGEN UNets diffkit does not sample: image grounding (``gated-text-image``,
    StableDiffusionGLIGENTextImagePipeline) and GLIGEN inpainting (in_channels != out_channels)."""
    kind = config.get("attention_type", "default")
    if kind not in ("default", GATED):
        raise DiffkitError(f"{directory} has a UNet with attention_type={kind!r} (StableDiffusionGLIGENTextImage"
                           f"Pipeline's image grounding); allowed: 'gated' (StableDiffusionGLIGENPipeline)")
    if kind == GATED and config.get("in_channels", 4) != config.get("out_channels", 4):
        raise DiffkitError(f"{directory} is a GLIGEN inpainting UNet (in_channels={config.get('in_channels')}, "
                           f"gligen_inpaint_image); allowed: a GLIGEN generation UNet (in_channels = out_channels)")


def check_grounding(phrases: Sequence[str], boxes: Sequence) -> tuple:
    """(phrases, boxes) as lists: one phrase (a non-empty string) per box, at most :data:`MAX_OBJECTS`, each box
    4 numbers x0, y0, x1, y1 in [0, 1] (fractions of the width and height) with x0 < x1 and y0 < y1."""
    phrases = [phrases] if isinstance(phrases, str) else list(phrases or [])
    boxes = list(boxes or [])
    if not phrases or not all(isinstance(p, str) and p.strip() for p in phrases):
        raise DiffkitError(f"gligen phrases={phrases!r} are not allowed; give one non-empty phrase per box")
    if len(phrases) != len(boxes):
        raise DiffkitError(f"{len(phrases)} gligen phrases for {len(boxes)} boxes; give one phrase per box")
    if len(boxes) > MAX_OBJECTS:
        raise DiffkitError(f"{len(boxes)} gligen boxes are not allowed; at most {MAX_OBJECTS} (the UNet's grounding "
                           f"tokens)")
    checked = []
    for box in boxes:
        try:
            values = [float(v) for v in box]
        except (TypeError, ValueError):
            values = []
        if (len(values) != 4 or not all(0.0 <= v <= 1.0 for v in values) or not values[0] < values[2]
                or not values[1] < values[3]):
            raise DiffkitError(f"gligen box {box!r} is not allowed; give x0,y0,x1,y1 in [0, 1] with x0 < x1 and "
                               f"y0 < y1")
        checked.append(values)
    return phrases, checked


class GroundedNet(torch.nn.Module):
    """``net(x, t, y=None, context=None, **extra)``: the wrapped network (a :class:`~.denoiser.DiffusersNet` of a
    GLIGEN UNet) given ``cross_attention_kwargs={"gligen": ...}`` (``inputs``: boxes (1, 30, 4), positive_embeddings
    (1, 30, D), masks (1, 30)); rows labelled :data:`~.stable_diffusion.NULL_LABEL` (classifier-free guidance's
    null half) get masks 0.
    ``keep`` (per step of ``grid``): only the calls at kept steps are grounded (rows of other steps: the UNet
    without the fusers; one call per part)."""

    def __init__(self, net, inputs: dict, grid: Optional[torch.Tensor] = None, keep: Optional[torch.Tensor] = None):
        super().__init__()
        self.net, self.inputs, self.grid, self.keep = net, inputs, grid, keep

    def _grounding(self, x: torch.Tensor, y) -> dict:
        batch = x.shape[0]
        gligen = {key: value.to(x.device).expand(batch, *value.shape[1:]) for key, value in self.inputs.items()}
        if y is not None:
            real = torch.as_tensor(y, device=x.device).reshape(-1).expand(batch) != NULL_LABEL
            gligen["masks"] = gligen["masks"] * real.to(gligen["masks"].dtype)[:, None]
        return gligen

    def forward(self, x: torch.Tensor, t, y=None, context=None, **extra) -> torch.Tensor:
        kept = None
        if self.keep is not None:
            t_rows = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
            kept = self.keep.to(x.device)[steps_of(self.grid, t_rows)]
            if not kept.any():  # after beta N steps: the fusers off
                return self.net(x, t, y=y, context=context, **extra)
            if not kept.all():  # rows of two steps: the grounded ones and the others apart
                return self._split(x, t, y, context, extra, kept)
        gligen = {**extra.pop("cross_attention_kwargs", {}), "gligen": self._grounding(x, y)}
        return self.net(x, t, y=y, context=context, cross_attention_kwargs=gligen, **extra)

    def _split(self, x, t, y, context, extra: dict, kept: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        for rows in (kept.nonzero().squeeze(1), (~kept).nonzero().squeeze(1)):
            def pick(v):
                return v[rows] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == x.shape[0] else v
            part = GroundedNet(self.net, self.inputs) if bool(kept[rows[0]]) else self.net
            out[rows] = part(x[rows], pick(torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])),
                             y=pick(y), context=pick(context), **{k: pick(v) for k, v in extra.items()})
        return out


@dataclass
class Grounding:
    """StableDiffusionGLIGENPipeline's grounding: ``phrases`` (``gligen_phrases``), ``boxes`` (``gligen_boxes``,
    each x0, y0, x1, y1 in [0, 1]) and ``beta`` (``gligen_scheduled_sampling_beta``, in [0, 1]: the grounded
    fraction of the steps, the first, noisiest)."""

    phrases: Sequence[str]
    boxes: Sequence
    beta: float = DEFAULT_BETA

    def __post_init__(self):
        self.phrases, self.boxes = check_grounding(self.phrases, self.boxes)
        self.beta = float(check_range("gligen beta", self.beta, 0.0, 1.0))

    def inputs(self, sd) -> dict:
        """The pipeline's ``cross_attention_kwargs["gligen"]`` for one row: the boxes padded to 30, the phrases'
        pooled CLIP text embeddings (tokenized with padding to the longest, truncated to the tokenizer's length),
        masks 1 for the given objects."""
        tokens = sd.tokenizer(self.phrases, padding=True, truncation=True, max_length=sd.tokenizer.model_max_length,
                              return_tensors="pt").to(sd.device)
        with torch.no_grad():
            pooled = sd.text_encoder(**tokens).pooler_output
        dtype, n = sd.text_encoder.dtype, len(self.boxes)
        boxes = torch.zeros(MAX_OBJECTS, 4, device=sd.device, dtype=dtype)
        boxes[:n] = torch.tensor(self.boxes)
        embeddings = torch.zeros(MAX_OBJECTS, sd.unet.config.cross_attention_dim, device=sd.device, dtype=dtype)
        embeddings[:n] = pooled
        masks = torch.zeros(MAX_OBJECTS, device=sd.device, dtype=dtype)
        masks[:n] = 1
        return {"boxes": boxes[None], "positive_embeddings": embeddings[None], "masks": masks[None]}

    def grounding(self, sd, grid: Optional[torch.Tensor] = None):
        """A copy of ``sd`` whose network denoiser grounds its UNet (:class:`GroundedNet`); ``grid``: the
        sampler's time grid, needed where 0 < beta < 1."""
        if getattr(sd.unet.config, "attention_type", "default") != GATED:
            raise DiffkitError(f"gligen grounding needs a GLIGEN UNet (attention_type='gated', "
                               f"{PIPELINE}); this folder's UNet has attention_type="
                               f"{getattr(sd.unet.config, 'attention_type', 'default')!r}")
        keep = None
        if 0 < self.beta < 1:
            if grid is None:
                raise DiffkitError("a gligen beta between 0 and 1 needs the sampler's time grid")
            keep = adapter_steps(len(grid) - 1, self.beta)
        elif self.beta == 0:
            return sd  # never grounded: the UNet without the fusers
        inner = sd.network_denoiser
        net = GroundedNet(inner.net, self.inputs(sd), grid, keep)
        denoiser = Denoiser(net, inner.schedule, inner.prediction_type, learned_variance=False)
        denoiser.model = sd.unet
        return replace(sd, _denoiser=denoiser)


def refuse_with_gligen(gligen, options: dict) -> None:
    """One line where ``gligen`` is set and one of ``options`` (name: value) is too: diffusers 0.42.1's
    StableDiffusionGLIGENPipeline has no such option."""
    if gligen is None:
        return
    for name, value in options.items():
        if value is not None and value is not False and value != 0:
            raise DiffkitError(f"gligen grounding with {name} is not supported ({PIPELINE} has no such option); "
                               f"drop one of them")


__all__ = ["Grounding", "GroundedNet", "is_gligen_folder", "check_gligen_unet", "check_grounding",
           "refuse_with_gligen", "MAX_OBJECTS", "DEFAULT_BETA"]
