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

``StableDiffusionGLIGENTextImagePipeline`` (``attention_type="gated-text-image"``): a box is grounded by a phrase,
an image or both (``images``; the image's CLIP embedding projected by the folder's ``image_project`` and rescaled to
norm 28.7, :class:`GLIGENImageEncoder`), 60 grounding tokens (text and image MLPs); its pipeline runs the null half
with every mask 0 (its "without grounding" call) and never turns the fusers off, so beta defaults to 1 there.

Not supported: GLIGEN inpainting (``gligen_inpaint_image``, a 9-channel UNet whose pipeline redraws its noise from
torch's global generator each step), refused in one line; the text-image pipeline's ``input_phrases_mask`` /
``input_images_mask`` (give None for a box's phrase or image instead).
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
GATED, TEXT_IMAGE = "gated", "gated-text-image"  # the UNets' attention_type
PIPELINE, TEXT_IMAGE_PIPELINE = "StableDiffusionGLIGENPipeline", "StableDiffusionGLIGENTextImagePipeline"
NORMALIZE_CONSTANT = 28.7  # gligen_normalize_constant: the norm of an image's projected CLIP embedding


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
    """One line for the GLIGEN UNets diffkit does not sample: GLIGEN inpainting (in_channels != out_channels) and
    attention types other than ``gated`` / ``gated-text-image``."""
    kind = config.get("attention_type", "default")
    if kind not in ("default", GATED, TEXT_IMAGE):
        raise DiffkitError(f"{directory} has a UNet with attention_type={kind!r}; allowed: 'default', 'gated' "
                           f"({PIPELINE}) or 'gated-text-image' ({TEXT_IMAGE_PIPELINE})")
    if kind != "default" and config.get("in_channels", 4) != config.get("out_channels", 4):
        raise DiffkitError(f"{directory} is a GLIGEN inpainting UNet (in_channels={config.get('in_channels')}, "
                           f"gligen_inpaint_image); allowed: a GLIGEN generation UNet (in_channels = out_channels)")


def check_grounding(phrases: Optional[Sequence[str]], boxes: Sequence, images: Optional[Sequence] = None) -> tuple:
    """(phrases, boxes, images) as lists: one phrase (a non-empty string) per box, at most :data:`MAX_OBJECTS`, each
    box 4 numbers x0, y0, x1, y1 in [0, 1] (fractions of the width and height) with x0 < x1 and y0 < y1. With
    ``images`` (one per box, the text-image pipeline's ``gligen_images``) a phrase or an image may be None, not
    both; ``phrases`` None: every box's image only."""
    boxes = list(boxes or [])
    images = None if images is None else list(images)
    if phrases is None and images is not None:
        phrases = [None] * len(images)
    phrases = [phrases] if isinstance(phrases, str) else list(phrases or [])
    optional = images is not None  # the text-image pipeline: a box with an image needs no phrase
    if not phrases or not all((p is None and optional) or (isinstance(p, str) and p.strip()) for p in phrases):
        raise DiffkitError(f"gligen phrases={phrases!r} are not allowed; give one non-empty phrase per box")
    if len(phrases) != len(boxes):
        raise DiffkitError(f"{len(phrases)} gligen phrases for {len(boxes)} boxes; give one phrase per box")
    if images is not None and len(images) != len(boxes):
        raise DiffkitError(f"{len(images)} gligen images for {len(boxes)} boxes; give one image (or None) per box")
    if images is not None and any(p is None and i is None for p, i in zip(phrases, images)):
        raise DiffkitError("a gligen box with neither a phrase nor an image is not allowed; give one of them")
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
    return phrases, checked, images


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
        if y is not None:  # the null half: every mask 0 (the text-image pipeline's "without grounding" kwargs)
            real = torch.as_tensor(y, device=x.device).reshape(-1).expand(batch) != NULL_LABEL
            for key in [k for k in gligen if k.endswith("masks")]:
                gligen[key] = gligen[key] * real.to(gligen[key].dtype)[:, None]
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
class GLIGENImageEncoder:
    """A text-image GLIGEN folder's image branch (StableDiffusionGLIGENTextImagePipeline's ``get_clip_feature``):
    the ``processor`` (CLIPProcessor), ``image_encoder`` (CLIPVisionModelWithProjection) and ``image_project``
    (CLIPImageProjection) of the folder; an image's feature is project(CLIP image embedding), rescaled to the norm
    ``normalize_constant`` (``gligen_normalize_constant``, 28.7: the phrases' pooled embeddings' typical norm)."""

    processor: object
    image_encoder: object
    image_project: object
    normalize_constant: float = NORMALIZE_CONSTANT

    def feature(self, image) -> torch.Tensor:
        """(D,) for one image (a path or a PIL image)."""
        from PIL import Image
        if not isinstance(image, Image.Image):
            try:
                image = Image.open(image)
            except (OSError, ValueError) as err:
                raise DiffkitError(f"gligen image {str(image)!r} could not be read: {err}") from None
        device, dtype = self.image_encoder.device, self.image_encoder.dtype
        pixels = self.processor(images=[image], return_tensors="pt")["pixel_values"].to(device, dtype)
        with torch.no_grad():
            feature = self.image_project(self.image_encoder(pixel_values=pixels).image_embeds).squeeze(0)
        return feature / feature.norm() * self.normalize_constant


def load_gligen_image_encoder(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                              progress: bool = True) -> GLIGENImageEncoder:
    """The image branch of a ``StableDiffusionGLIGENTextImagePipeline`` folder (its ``processor``, ``image_encoder``
    and ``image_project``; never a download or a pickle)."""
    from . import from_pretrained, library_progress_bars, require
    from .stable_diffusion import check_components
    diffusers, transformers = require("diffusers"), require("transformers")
    directory = Path(directory)
    index = read_json_object(directory / "model_index.json", "diffusers index")
    check_components(directory, index, ("processor", "image_encoder", "image_project"), TEXT_IMAGE_PIPELINE)
    common = {"local_files_only": True, "torch_dtype": dtype, "use_safetensors": True}
    with library_progress_bars(progress):
        processor = from_pretrained(transformers.CLIPProcessor, directory / "processor", local_files_only=True)
        encoder = from_pretrained(transformers.CLIPVisionModelWithProjection, directory / "image_encoder", **common)
        project = from_pretrained(diffusers.CLIPImageProjection, directory / "image_project", **common)
    for module in (encoder, project):
        module.to(device).eval().requires_grad_(False)
    return GLIGENImageEncoder(processor, encoder, project)


@dataclass
class Grounding:
    """A GLIGEN pipeline's grounding: ``phrases`` (``gligen_phrases``), ``boxes`` (``gligen_boxes``, each x0, y0,
    x1, y1 in [0, 1]) and ``beta`` (``gligen_scheduled_sampling_beta``, in [0, 1]: the grounded fraction of the
    steps, the first, noisiest; default 0.3 on a ``gated`` UNet, 1 on a ``gated-text-image`` one, whose pipeline
    computes int(beta N) but never turns its fusers off). A text-image folder also takes ``images``
    (``gligen_images``: one per box, a path, PIL image or None) with its ``image_encoder``
    (:func:`load_gligen_image_encoder`); there a box's phrase may be None."""

    phrases: Optional[Sequence[str]]
    boxes: Sequence
    beta: Optional[float] = None
    images: Optional[Sequence] = None
    image_encoder: Optional[GLIGENImageEncoder] = None

    def __post_init__(self):
        self.phrases, self.boxes, self.images = check_grounding(self.phrases, self.boxes, self.images)
        self.beta = None if self.beta is None else float(check_range("gligen beta", self.beta, 0.0, 1.0))

    def beta_for(self, sd) -> float:
        """``beta``, or the folder pipeline's behaviour: 0.3 (``gated``), 1 (``gated-text-image``)."""
        if self.beta is not None:
            return self.beta
        return 1.0 if _attention_type(sd) == TEXT_IMAGE else DEFAULT_BETA

    def needs_grid(self, sd) -> bool:
        """Whether :meth:`grounding` needs the sampler's grid (0 < beta < 1)."""
        return 0 < self.beta_for(sd) < 1

    def _pooled(self, sd, phrases: list) -> torch.Tensor:
        tokens = sd.tokenizer(phrases, padding=True, truncation=True, max_length=sd.tokenizer.model_max_length,
                              return_tensors="pt").to(sd.device)
        with torch.no_grad():
            return sd.text_encoder(**tokens).pooler_output

    def inputs(self, sd) -> dict:
        """The pipeline's ``cross_attention_kwargs["gligen"]`` for one row: the boxes padded to 30, the phrases'
        pooled CLIP text embeddings (tokenized together with padding to the longest, truncated to the tokenizer's
        length; the text-image pipeline tokenizes each alone), masks 1 for the given objects; on a text-image UNet
        also the images' features and each kind's masks (``phrases_masks``, ``image_masks``)."""
        dtype, n, dim = sd.text_encoder.dtype, len(self.boxes), sd.unet.config.cross_attention_dim
        boxes = torch.zeros(MAX_OBJECTS, 4, device=sd.device, dtype=dtype)
        boxes[:n] = torch.tensor(self.boxes)
        masks = torch.zeros(MAX_OBJECTS, device=sd.device, dtype=dtype)
        masks[:n] = 1
        if _attention_type(sd) == GATED:
            embeddings = torch.zeros(MAX_OBJECTS, dim, device=sd.device, dtype=dtype)
            embeddings[:n] = self._pooled(sd, self.phrases)
            return {"boxes": boxes[None], "positive_embeddings": embeddings[None], "masks": masks[None]}
        out = {"boxes": boxes, "masks": masks}  # get_cross_attention_kwargs_with_grounded
        for kind, values in (("phrases", self.phrases), ("image", self.images or [None] * n)):
            embeddings = torch.zeros(MAX_OBJECTS, dim, device=sd.device, dtype=dtype)
            kind_masks = torch.zeros(MAX_OBJECTS, device=sd.device, dtype=dtype)
            for i, value in enumerate(values):
                if value is not None:
                    embeddings[i] = (self._pooled(sd, [value])[0] if kind == "phrases"
                                     else self.image_encoder.feature(value))
                    kind_masks[i] = 1
            out[f"{kind}_embeddings"], out[f"{kind}_masks"] = embeddings, kind_masks
        return {key: value[None] for key, value in out.items()}

    def grounding(self, sd, grid: Optional[torch.Tensor] = None):
        """A copy of ``sd`` whose network denoiser grounds its UNet (:class:`GroundedNet`); ``grid``: the
        sampler's time grid, needed where 0 < beta < 1."""
        kind = _attention_type(sd)
        if kind not in (GATED, TEXT_IMAGE):
            raise DiffkitError(f"gligen grounding needs a GLIGEN UNet (attention_type='gated', {PIPELINE}, or "
                               f"'gated-text-image'); this folder's UNet has attention_type={kind!r}")
        if self.images is not None and kind != TEXT_IMAGE:
            raise DiffkitError(f"gligen images need a text-image GLIGEN folder ({TEXT_IMAGE_PIPELINE}, "
                               f"attention_type='gated-text-image'); this UNet grounds phrases only")
        if self.images is not None and self.image_encoder is None:
            raise DiffkitError("gligen images need the folder's image encoder (image_encoder=load_gligen_image_"
                               "encoder(folder))")
        beta, keep = self.beta_for(sd), None
        if 0 < beta < 1:
            if grid is None:
                raise DiffkitError("a gligen beta between 0 and 1 needs the sampler's time grid")
            keep = adapter_steps(len(grid) - 1, beta)
        elif beta == 0:
            return sd  # never grounded: the UNet without the fusers
        inner = sd.network_denoiser
        net = GroundedNet(inner.net, self.inputs(sd), grid, keep)
        denoiser = Denoiser(net, inner.schedule, inner.prediction_type, learned_variance=False)
        denoiser.model = sd.unet
        return replace(sd, _denoiser=denoiser)


def _attention_type(sd) -> str:
    return getattr(sd.unet.config, "attention_type", "default")


def refuse_with_gligen(gligen, options: dict) -> None:
    """One line where ``gligen`` is set and one of ``options`` (name: value) is too: diffusers 0.42.1's
    StableDiffusionGLIGENPipeline has no such option."""
    if gligen is None:
        return
    for name, value in options.items():
        if value is not None and value is not False and value != 0:
            raise DiffkitError(f"gligen grounding with {name} is not supported ({PIPELINE} has no such option); "
                               f"drop one of them")


__all__ = ["Grounding", "GroundedNet", "GLIGENImageEncoder", "load_gligen_image_encoder", "is_gligen_folder",
           "check_gligen_unet", "check_grounding", "refuse_with_gligen", "MAX_OBJECTS", "DEFAULT_BETA"]
