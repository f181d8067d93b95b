"""IP-Adapter (Ye et al. 2023, arXiv:2308.06721) on a FLUX.1 folder (:mod:`.flux`), as diffusers 0.42's
``FluxPipeline.load_ip_adapter`` + ``set_ip_adapter_scale`` + ``ip_adapter_image`` / ``negative_ip_adapter_image``.

XLabs' flux-ip-adapter files (keys ``ip_adapter_proj_model.*``, ``double_blocks.<i>.processor.
ip_adapter_double_stream_{k,v}_proj.*``; read by :func:`.ip_adapter.read_ip_adapter` under diffusers'
``FluxIPAdapterMixin`` names) hold an ``ImageProjection`` (Sec. 3.2.1: the CLIP image embedding through a linear
layer and a LayerNorm, 4 tokens c_i of the T5 width; 16 tokens for a 65536-row projection) and, for each double
(MM-DiT) block, keys and values of those tokens. ``FluxIPAdapterAttnProcessor`` adds to the image stream of block i,
after its feed-forward, the decoupled cross-attention of eq. 5 with the weight lambda of Sec. 3.3:

    h <- h + lambda Attention(Q, c_i W'_k + b'_k, c_i W'_v + b'_v),   Q the block's normed image queries (no RoPE);

the single blocks are unchanged. The modules are built by diffusers' own converters
(``FluxTransformer2DModel._convert_ip_adapter_attn_to_diffusers`` / ``_convert_ip_adapter_image_proj_to_diffusers``)
and are in the transformer only during diffkit's calls (:class:`FlowIPAdaptedNet`). The image embeds are the
pipeline's ``encode_image``: ``CLIPVisionModelWithProjection(...).image_embeds`` of the image through
``CLIPImageProcessor(size=crop_size=image_size)`` (the processor ``load_ip_adapter`` makes; a FLUX folder has no
feature_extractor). True CFG (``true_cfg_scale`` > 1) feeds the negative pass the embeds of
``negative_ip_adapter_image``, by default the pipeline's all-black (width, height) image. IP-Adapter Plus and the
other kinds are refused (diffusers' FLUX loader converts only ``proj.weight`` projections).

Several adapters at once (:class:`FluxIPAdapters`, ``load_ip_adapter([...], weight_name=[...])`` +
``set_ip_adapter_scale([s_1, ...])`` + ``ip_adapter_image=[...]``): each double block's processor holds one pair of
keys / values per adapter and adds their terms in order, h <- h + sum_k lambda_k Attention(Q, c_k W'_k,k, c_k W'_v,k)
(eq. 5 summed over the adapters, as diffkit's SD adapters, :mod:`.ip_adapter_multi`); the K adapters' embeds travel
side by side, (B, K, D), and reach the transformer as the list of their (B, 1, D) columns.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Optional, Union

import torch

from ..errors import DiffkitError
from . import require
from .ip_adapter import (IPAdapter, check_encoder_width, converted, image_encoder_folder, load_image_encoder,
                         open_image, placed, read_ip_adapter, swapped_processors)
from .ip_adapter_multi import adapter_list


class FlowIPAdaptedNet(torch.nn.Module):
    """``net(x, t, ip_image_embeds=None, **cond)``: the :class:`~.flux.FluxNet` (or :class:`~.sd3.SD3Net`)
    ``inner`` with the transformer's ``joint_attention_kwargs={"ip_adapter_image_embeds": e}`` (FLUX: e (B, K, D)
    given as the list ``[e[:, :1], ..., e[:, K-1:]]``, one (B, 1, D) per adapter; SD3: e (B, N, D)), the
    adapters' processors and projection (the transformer's ``attribute``: FLUX's ``encoder_hid_proj``, SD3's
    ``image_proj``) in the transformer during the call only."""

    def __init__(self, inner, transformer, processors: dict, projection, attribute: str = "encoder_hid_proj",
                 as_list: bool = True):
        super().__init__()
        self.inner, self.projection, self.attribute, self.as_list = inner, projection, attribute, as_list
        self.processors = torch.nn.ModuleList(processors.values())
        self._transformer = [transformer]  # not a submodule: its parameters are the inner net's
        self._attentions = [transformer.get_submodule(name.rsplit(".", 1)[0]) for name in processors]

    @contextlib.contextmanager
    def installed(self):
        transformer = self._transformer[0]
        saved = transformer._modules.get(self.attribute)
        try:
            with swapped_processors(self._attentions, self.processors):
                setattr(transformer, self.attribute, self.projection)
                yield
        finally:
            transformer._modules.pop(self.attribute, None)
            if saved is not None:
                setattr(transformer, self.attribute, saved)

    def forward(self, x: torch.Tensor, t, ip_image_embeds: Optional[torch.Tensor] = None, **cond) -> torch.Tensor:
        if ip_image_embeds is None:
            return self.inner(x, t, **cond)
        embeds = list(ip_image_embeds.split(1, dim=1)) if self.as_list else ip_image_embeds  # (B, 1, D) each
        with self.installed():
            return self.inner(x, t, attention_kwargs={"ip_adapter_image_embeds": embeds}, **cond)


def _same(a, b) -> bool:
    """The cache keys of :meth:`FlowIPParts.parts` agree: the same objects, equal numbers, tuples of such."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(map(_same, a, b))
    return a is b or (type(a) in (int, float) and a == b)


class FlowIPParts:
    """:meth:`parts` of a flow transformer's IP-Adapter (or adapters): from its ``_check()``, ``scale`` / ``image``
    / ``negative_image`` (tuples for several adapters), ``modules(transformer)``, ``image_embeds(height, width)``,
    ``attribute`` and ``as_list``, cached in ``_built``."""

    attribute = "encoder_hid_proj"  # where the transformer looks for the projection
    as_list = True  # the embeds as a list (one tensor per adapter)

    def parts(self, model, base, height: int, width: int) -> tuple:
        """(the denoiser ``base`` with :class:`FlowIPAdaptedNet` around its net, positive, negative embeds) for
        ``model``'s transformer; the modules built once per transformer and scale, the embeds once per image (and
        negative image) and size."""
        from ..denoiser import Denoiser
        self._check()
        key = (model.transformer, self.scale, self.image, getattr(self, "negative_image", None), height, width)
        same = [] if self._built is None else [_same(a, b) for a, b in zip(self._built[0], key)]
        if not all(same or [False]):
            modules = self._built[1] if all(same[:2] or [False]) else self.modules(model.transformer)
            embeds = tuple(e.to(model.device, model.dtype) for e in self.image_embeds(height, width))
            self._built = (key, modules, embeds)
        _, (processors, projection), (positive, negative) = self._built
        net = FlowIPAdaptedNet(base.net, model.transformer, processors, projection, self.attribute, self.as_list)
        denoiser = Denoiser(net, base.schedule, base.prediction_type)
        denoiser.model = model.transformer
        return denoiser, positive, negative


class FluxParts(FlowIPParts):
    """:meth:`flux_parts` of one FLUX IP-Adapter (:class:`FluxIPAdapter`) or several (:class:`FluxIPAdapters`)."""

    def flux_parts(self, flux, h: int, w: int) -> tuple:
        """(the flow denoiser of latents h x w with :class:`FlowIPAdaptedNet` around its net, positive, negative
        (1, K, D) embeds of the K adapters): :meth:`FlowIPParts.parts`."""
        f = flux.vae_scale_factor
        return self.parts(flux, flux.denoiser_for(h, w), h * f, w * f)


@dataclass
class TransformerIPAdapter(IPAdapter, FlowIPParts):
    """An :class:`~.ip_adapter.IPAdapter` of a flow transformer (FLUX, SD3): :meth:`parts` wraps a denoiser's net in
    :class:`FlowIPAdaptedNet`; subclasses give ``modules(transformer)`` and ``image_embeds(height, width)``."""


@dataclass
class FluxIPAdapter(TransformerIPAdapter, FluxParts):
    """An XLabs-format FLUX IP-Adapter, its image encoder, the image prompt, lambda (``scale``) and the negative
    image of true CFG (``negative_image``; None: the pipeline's black one). ``Flux.prompt_guidance(ip_adapter=)``
    / ``text_to_image(ip_adapter=)`` take it (:meth:`flux_parts`); several: :class:`FluxIPAdapters`."""

    negative_image: object = None

    def __post_init__(self):
        super().__post_init__()
        if self.kind != "ip-adapter":
            raise DiffkitError(f"a FLUX folder takes an ip-adapter file (image_proj.proj.weight, XLabs' format); this "
                               f"one is {self.kind} (diffusers' FLUX loader converts no other)")

    def _check(self):
        super()._check()
        if isinstance(self.image, (list, tuple)):
            raise DiffkitError("a FLUX IP-Adapter takes one image prompt (a PIL image or a file), not a list")
        if self.negative_image is not None:
            self.negative_image = open_image(self.negative_image)

    def modules(self, transformer) -> tuple:
        """:func:`flux_modules` of this adapter alone."""
        return flux_modules([self], transformer)

    def image_embeds(self, height: int, width: int) -> tuple:
        """(positive, negative) (1, 1, D) image embeds of the image prompt and of the negative image (default the
        pipeline's ``np.zeros((width, height, 3), uint8)`` for images height x width)."""
        import numpy as np
        negative = np.zeros((width, height, 3), dtype=np.uint8) if self.negative_image is None else self.negative_image
        with torch.no_grad():
            return tuple(self.image_encoder(self.pixels(image)).image_embeds[:, None]
                         for image in (self.image, negative))


def flux_modules(adapters, transformer) -> tuple:
    """({name: FluxIPAdapterAttnProcessor} of the double blocks, MultiIPAdapterImageProjection) of one or more
    :class:`FluxIPAdapter` (one pair of keys / values per adapter in each processor, one projection each, in order),
    built by diffusers from the files as ``load_ip_adapter([...])`` does, lambda_k set as ``set_ip_adapter_scale
    ([...])``; one line for a file that does not fit the transformer or the image encoder."""
    diffusers = require("diffusers")
    names = [n for n in transformer.attn_processors if not n.startswith("single_transformer_blocks")]
    for adapter in adapters:
        keys = {k.split(".")[0] for k in adapter.state["ip_adapter"]}
        if keys != {str(i) for i in range(len(names))}:
            raise DiffkitError(f"the IP-Adapter has image keys/values for {len(keys)} blocks, this FLUX transformer "
                               f"has {len(names)} double blocks; an IP-Adapter fits only its own model")
    processors, projections = converted(transformer, [a.state for a in adapters],
                                        [a.state["image_proj"] for a in adapters], "FLUX transformer")
    processors = {n: processors[n] for n in names}
    for processor in processors.values():
        processor.scale = [a.scale for a in adapters]
    for adapter, projection in zip(adapters, projections):
        width = projection.image_embeds.out_features // projection.num_image_text_embeds
        if width != transformer.config.joint_attention_dim:
            raise DiffkitError(f"the IP-Adapter's image tokens are {width} wide, this FLUX transformer's "
                               f"joint_attention_dim is {transformer.config.joint_attention_dim}")
        check_encoder_width(adapter.image_encoder.config.projection_dim, projection.image_embeds.in_features)
    return placed(processors, diffusers.models.embeddings.MultiIPAdapterImageProjection(projections), transformer)


@dataclass
class FluxIPAdapters(FluxParts):
    """Several :class:`FluxIPAdapter` at once on a FLUX.1 folder, as ``FluxPipeline.load_ip_adapter([...],
    weight_name=[...])`` + ``set_ip_adapter_scale([s_1, ...])`` + ``ip_adapter_image=[...]`` (+
    ``negative_ip_adapter_image=[...]`` with true CFG; an adapter without its own negative image gets the
    pipeline's black one). Every double block adds one image term per adapter, in order (eq. 5 summed over the
    adapters, each with its lambda_k, keys, values and projection); the adapters share only the transformer.
    ``Flux.prompt_guidance(ip_adapter=)`` / ``text_to_image`` / ``image_to_image`` take it as one adapter."""

    adapters: list
    _built: Optional[tuple] = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.adapters = adapter_list(self.adapters, FluxIPAdapter,
                                     lambda name: f"FluxIPAdapters takes FLUX IP-Adapters (FluxIPAdapter); a {name} is "
                                                  f"not allowed")

    @property
    def scale(self) -> tuple:
        return tuple(a.scale for a in self.adapters)

    @property
    def image(self) -> tuple:
        return tuple(a.image for a in self.adapters)

    @property
    def negative_image(self) -> Optional[tuple]:
        """Each adapter's negative image (None: black); None when none has one (no true CFG needed)."""
        negatives = tuple(a.negative_image for a in self.adapters)
        return None if all(n is None for n in negatives) else negatives

    def _check(self):
        for adapter in self.adapters:
            adapter._check()

    def modules(self, transformer) -> tuple:
        return flux_modules(self.adapters, transformer)

    def image_embeds(self, height: int, width: int) -> tuple:
        """(positive, negative) (1, K, D): the adapters' (1, 1, D) embeds side by side."""
        pairs = [a.image_embeds(height, width) for a in self.adapters]
        return tuple(torch.cat(half, dim=1) for half in zip(*pairs))


def load_flux_ip_adapter(path, image, scale: float = 1.0, image_encoder: Union[None, str] = None,
                         negative_image=None, device="cpu", dtype: torch.dtype = torch.float32,
                         progress: bool = True) -> FluxIPAdapter:
    """A :class:`FluxIPAdapter` from an XLabs-format file and a CLIPVisionModelWithProjection folder (default
    ``image_encoder`` beside the file; diffusers' FLUX ``load_ip_adapter`` names it by
    ``image_encoder_pretrained_model_name_or_path`` and loads it in float16 unless told otherwise)."""
    state = read_ip_adapter(path)
    encoder = load_image_encoder(image_encoder_folder(path, image_encoder), device, dtype, progress)
    return FluxIPAdapter(state, encoder, image, scale, negative_image=negative_image)


__all__ = ["FluxIPAdapter", "FluxIPAdapters", "flux_modules", "FlowIPParts", "FluxParts", "FlowIPAdaptedNet",
           "TransformerIPAdapter", "load_flux_ip_adapter"]
