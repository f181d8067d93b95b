"""IP-Adapter (Ye et al. 2023, "IP-Adapter: Text Compatible Image Prompt Adapter for Text-to-Image Diffusion
Models", arXiv:2308.06721) for a Stable Diffusion folder, sampled with any diffkit sampler.

An image prompt is encoded by a CLIP image encoder (``CLIPVisionModelWithProjection``) and projected to a few
tokens c_i of the UNet's cross-attention width (Sec. 3.2.1: a linear layer and a LayerNorm, N = 4 tokens; IP-Adapter
Plus: a Perceiver resampler over the encoder's penultimate hidden states, 16 tokens). Every cross-attention of
the UNet gets a second attention over those tokens, with its own keys and values (decoupled cross-attention,
eq. 5, with the weight lambda of Sec. 3.3):

    Z_new = Attention(Q, K, V) + lambda Attention(Q, K', V'),   K = c_t W_k, V = c_t W_v, K' = c_i W'_k, V' = c_i W'_v.

The adapter's files are diffusers' (``pipe.load_ip_adapter(folder, subfolder=..., weight_name=...)``): the
modules are built by diffusers' own converters (``UNet2DConditionModel._convert_ip_adapter_attn_to_diffusers``,
``_convert_ip_adapter_image_proj_to_diffusers``: ``IPAdapterAttnProcessor2_0``, ``ImageProjection`` /
``IPAdapterPlusImageProjection``); lambda is ``set_ip_adapter_scale``. The image embedding is the pipeline's
``encode_image``: basic, the encoder's ``image_embeds`` with zeros as the negative (classifier-free guidance's
null half); Plus, ``hidden_states[-2]`` with the same of an all-zero image as the negative.
:class:`IPAdaptedNet` puts the adapter's processors and projection into the UNet only for the length of its own
calls, so the loaded folder is left as it was (its plain denoiser stays plain). On a latent consistency model
(:mod:`.lcm`: an LCMScheduler folder, an LCM-LoRA, ``scheduler="lcm"``) it sits below the consistency function, as
``LatentConsistencyModelPipeline`` / ``StableDiffusionPipeline`` with ``load_ip_adapter`` feed the adapted UNet to
``LCMScheduler``: without a classifier-free pass (a w-input UNet, or s = 1) every row gets the positive embedding.

SD-XL folders (:mod:`.sd_xl`) take SD-XL adapters (h94's ``sdxl_models``: the projection's width is the SD-XL UNet's
cross_attention_dim, the image encoder whichever CLIPVisionModelWithProjection the file fits) exactly so, as
diffusers' ``StableDiffusionXLPipeline`` (and ``StableDiffusionXLControlNetPipeline``): ``image_embeds`` join the
``text_embeds`` / ``time_ids`` in the UNet's ``added_cond_kwargs`` (:class:`~.denoiser.DiffusersNet` merges them).
Refused in one line: IP-Adapter Full-Face, FaceID / FaceID-Plus (an InsightFace embedding, LoRA in the UNet), an
adapter of another model family (by shape).
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Union

import torch

from ..denoiser import Denoiser
from ..errors import DiffkitError
from . import from_pretrained, library_progress_bars, load_weights_pickle, require
from .stable_diffusion import NULL_LABEL

FLAG = "--ip-adapter"
KINDS = ("ip-adapter", "ip-adapter-plus")
_REFUSED = (("proj.3.weight", "IP-Adapter Full-Face"), ("perceiver_resampler.proj_in.weight", "IP-Adapter FaceID-Plus"),
            ("norm.weight", "IP-Adapter FaceID"))
_PLUS_KEYS = ("latents", "proj_in.weight", "proj_out.weight")


_XLABS = {"ip_adapter_proj_model": "image_proj", "double_blocks": "ip_adapter"}


def _xlabs_name(rest: str) -> str:
    return rest.replace("ip_adapter_double_stream_k_proj", "to_k_ip").replace(
        "ip_adapter_double_stream_v_proj", "to_v_ip").replace("processor.", "")


def _load(path: Path) -> dict:
    """{"image_proj": {...}, "ip_adapter": {...}} of a file: safetensors keys ``image_proj.*`` / ``ip_adapter.*``
    split as diffusers' ``load_ip_adapter``; any other suffix a weights-only pickle (diffusers' ``.bin``)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        state = {"image_proj": {}, "ip_adapter": {}}
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                for key in f.keys():
                    head, _, rest = key.partition(".")
                    if head in _XLABS:  # a FLUX IP-Adapter (XLabs), named as diffusers' FluxIPAdapterMixin does
                        head, rest = _XLABS[head], _xlabs_name(rest)
                    if head in state:
                        state[head][rest] = f.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as err:
            raise DiffkitError(f"{FLAG} {path} is not a safetensors file ({str(err).splitlines()[0][:80]})") from None
        return state
    return load_weights_pickle(path, FLAG)


def ip_adapter_kind(state: dict, name="the IP-Adapter") -> str:
    """``ip-adapter`` (ImageProjection: ``image_proj.proj.weight``) or ``ip-adapter-plus`` (the resampler:
    ``latents``, ``proj_in``, ``proj_out``); the other kinds diffusers knows are refused in one line."""
    proj, attn = state.get("image_proj"), state.get("ip_adapter")
    if not isinstance(proj, dict) or not isinstance(attn, dict) or not proj or not attn:
        raise DiffkitError(f"{name} lacks image_proj or ip_adapter weights; allowed: an IP-Adapter file as diffusers' "
                           f"load_ip_adapter reads it (keys image_proj.* and ip_adapter.*)")
    if any("lora" in key for key in attn):
        raise DiffkitError(f"{name} holds LoRA weights (an IP-Adapter FaceID file); allowed: {', '.join(KINDS)}")
    if "proj.weight" in proj:  # diffusers' order of checks
        return "ip-adapter"
    for key, kind in _REFUSED:
        if key in proj:
            raise DiffkitError(f"{name} is an {kind} file (image_proj.{key}); allowed: {', '.join(KINDS)}")
    if all(key in proj for key in _PLUS_KEYS):
        return "ip-adapter-plus"
    raise DiffkitError(f"{name} has image_proj keys {sorted(proj)[:3]}... of no known IP-Adapter; allowed: "
                       f"{', '.join(KINDS)}")


def read_ip_adapter(path) -> dict:
    """The checked state dict of an IP-Adapter file (never a download)."""
    path = Path(path)
    if not path.is_file():
        raise DiffkitError(f"{FLAG} {path} {'is not a regular file' if path.exists() else 'does not exist'}")
    state = _load(path)
    if not isinstance(state, dict):
        raise DiffkitError(f"{FLAG} {path} holds a {type(state).__name__}; allowed: an IP-Adapter state dict")
    ip_adapter_kind(state, f"{FLAG} {path}")
    from ..lora_files import check_finite_tensors
    for part in ("image_proj", "ip_adapter"):
        check_finite_tensors(path, {f"{part}.{key}": value for key, value in state[part].items()}, FLAG)
    return state


def default_image_encoder(path) -> Path:
    """diffusers' default ``image_encoder_folder="image_encoder"``: the folder ``image_encoder`` beside the file
    (h94/IP-Adapter's ``models/image_encoder``)."""
    return Path(path).parent / "image_encoder"


def load_image_encoder(directory, device="cpu", dtype: torch.dtype = torch.float32, progress: bool = True):
    """A ``CLIPVisionModelWithProjection`` folder (``config.json`` + ``.safetensors``; local only)."""
    directory = image_encoder_folder(None, directory)
    transformers = require("transformers")
    with library_progress_bars(progress):
        model = from_pretrained(transformers.CLIPVisionModelWithProjection, directory, "--image-encoder",
                                local_files_only=True, torch_dtype=dtype, use_safetensors=True)
    return model.to(device).eval().requires_grad_(False)


def open_image(image):
    """A path opened with PIL (one line for a file that is not an image); a PIL image as it is."""
    from .controlnet import open_control_image
    if isinstance(image, (str, Path)):
        try:
            return open_control_image(image)
        except DiffkitError:
            raise DiffkitError(f"--ip-adapter-image {image}: cannot be read as an image; give a PNG or JPEG") from None
    if isinstance(image, torch.Tensor):
        raise DiffkitError("give the image prompt as a PIL image or a file (CLIPImageProcessor prepares it)")
    return image


@contextlib.contextmanager
def swapped_processors(attentions, processors):
    """The diffusers ``attentions`` with ``processors`` set for the block, then their own processors again."""
    saved = [attention.processor for attention in attentions]
    try:
        for attention, processor in zip(attentions, processors):
            attention.set_processor(processor)
        yield
    finally:
        for attention, processor in zip(attentions, saved):
            attention._modules.pop("processor", None)  # the adapter's (diffusers' set_processor logs its repr)
            attention.processor = processor


class IPAdaptedNet(torch.nn.Module):
    """``net(x, t, y=None, context=None, **extra)``: ``inner`` (the SD UNet's net, or a ControlNet's around it)
    with ``added_cond_kwargs={"image_embeds": [e_1, ...]}``, one per adapter, e_k per row: ``negative[k]`` where the
    label ``y`` is :data:`NULL_LABEL` (classifier-free guidance's null half), else ``positive[k]`` (both (n, ...) for
    the adapter's n image prompts; one tensor: one adapter). The adapters' ``processors`` (name ->
    IPAdapterAttnProcessor2_0) and ``projection`` (a MultiIPAdapterImageProjection) are in ``unet`` only during the
    call (as diffusers' ``_load_ip_adapter_weights`` puts them), then it is restored.
    On SD-XL the ``extra`` keys ``text_embeds`` / ``time_ids`` pass on untouched (to the ControlNets too), and
    :class:`~.denoiser.DiffusersNet` joins them to ``image_embeds`` in the UNet's one ``added_cond_kwargs``."""

    def __init__(self, inner, unet, processors: dict, projection, positive, negative):
        super().__init__()
        self.inner, self.projection = inner, projection
        self.processors = torch.nn.ModuleList(processors.values())
        # not submodules (their parameters are the inner net's): the UNet and its cross-attentions, found once,
        # so each call swaps 16 processors (SD 1.x) instead of walking the whole UNet (BENCHMARKS.md)
        self._unet = [unet]
        self._attentions = [unet.get_submodule(name.rsplit(".", 1)[0]) for name in processors]
        self.positive, self.negative = ([e] if isinstance(e, torch.Tensor) else list(e) for e in (positive, negative))

    @contextlib.contextmanager
    def installed(self):
        unet = self._unet[0]
        hid, hid_type = unet.encoder_hid_proj, unet.config.encoder_hid_dim_type
        try:
            with swapped_processors(self._attentions, self.processors):
                unet.encoder_hid_proj = self.projection
                unet.config.encoder_hid_dim_type = "ip_image_proj"
                yield
        finally:
            unet.encoder_hid_proj = hid
            unet.config.encoder_hid_dim_type = hid_type

    def image_embeds(self, batch: int, y, device, index: int = 0) -> torch.Tensor:
        """(batch, n, ...) image embeddings of adapter ``index``: the negative on rows labelled :data:`NULL_LABEL`."""
        positive, negative = self.positive[index].to(device), self.negative[index].to(device)
        positive = positive[None].expand(batch, *positive.shape)
        if y is None:
            return positive
        null = (torch.as_tensor(y, device=device).reshape(-1).expand(batch) == NULL_LABEL)
        return torch.where(null.reshape(batch, *[1] * (positive.ndim - 1)), negative[None], positive)

    def forward(self, x: torch.Tensor, t, y=None, context=None, **extra) -> torch.Tensor:
        added = {**extra.pop("added_cond_kwargs", {}),
                 "image_embeds": [self.image_embeds(x.shape[0], y, x.device, k) for k in range(len(self.positive))]}
        with self.installed():
            return self.inner(x, t, y=y, context=context, added_cond_kwargs=added, **extra)


@dataclass
class IPAdapter:
    """A read IP-Adapter file, its image encoder, the image prompt and the scale lambda (diffusers'
    ``set_ip_adapter_scale``; 0 leaves the UNet's output as it is, as diffusers' processor skips the image
    attention then). :meth:`adapting` puts it on a loaded :class:`~.stable_diffusion.StableDiffusion`."""

    state: dict
    image_encoder: object
    image: object  # a PIL image or a path, or a list of them (several image prompts: diffusers' [[a, b]])
    scale: float = 1.0
    _built: Optional[tuple] = field(default=None, init=False, repr=False)  # ((unet, scale, image), processors, ...)

    def __post_init__(self):
        self.kind = ip_adapter_kind(self.state)
        self._check()

    def _check(self):
        """The scale checked (a finite number, made a float) and the image opened; again at each :meth:`adapting`,
        so a ``scale`` or ``image`` set after loading is the one used."""
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not abs(self.scale) < 1e308:
            raise DiffkitError(f"IP-Adapter scale {self.scale!r} is not allowed; give a finite number")
        self.scale = float(self.scale)
        if not isinstance(self.image, (list, tuple)):
            self.image = open_image(self.image)
            return
        opened = [open_image(image) for image in self.image]
        if not opened:
            raise DiffkitError("an empty list of image prompts; give one image or more")
        if any(a is not b for a, b in zip(opened, self.image)):  # kept where already open (adapting's cache)
            self.image = opened

    def pixels(self, image) -> torch.Tensor:
        """(1, 3, S, S) pixel values of ``image`` through ``CLIPImageProcessor(size=crop_size=S)``, S the
        encoder's image_size, on its device and dtype."""
        transformers = require("transformers")
        size = self.image_encoder.config.image_size
        pixels = transformers.CLIPImageProcessor(size=size, crop_size=size)(image, return_tensors="pt").pixel_values
        param = next(self.image_encoder.parameters())
        return pixels.to(param.device, param.dtype)

    def embeddings(self) -> tuple:
        """(positive, negative) image embeddings as diffusers' ``encode_image`` makes them, (1, ...) each: the
        image through ``CLIPImageProcessor(size=crop_size=image_size)`` (the pipeline's when it has no
        feature_extractor; SD 1.x's own feature_extractor has the same settings at 224)."""
        encoder = self.image_encoder
        pixels = self.pixels(self.image)
        with torch.no_grad():
            if self.kind == "ip-adapter":
                positive = encoder(pixels).image_embeds
                return positive, torch.zeros_like(positive)
            return tuple(encoder(p, output_hidden_states=True).hidden_states[-2]
                         for p in (pixels, torch.zeros_like(pixels)))

    def modules(self, unet) -> tuple:
        """(IP processors of the cross-attentions, MultiIPAdapterImageProjection) built by diffusers from the
        file, on the UNet's device and dtype, with the scale set; one line for a file that does not fit."""
        return unet_modules([self], unet)

    def adapting(self, sd):
        """A copy of ``sd`` (Stable Diffusion or SD-XL) whose network denoiser is :class:`IPAdaptedNet` around its
        own (a ControlNet's too), so ``sd.guided``, ``sd.with_weight`` and every sampler see it. On a latent
        consistency model (an LCMScheduler folder or ``scheduler="lcm"``, :mod:`.lcm`) the consistency function
        wraps this denoiser (or its classifier-free guidance, an LCM-LoRA at s > 1), as
        LatentConsistencyModelPipeline / StableDiffusionPipeline feed the adapted UNet's output to LCMScheduler;
        an LCM UNet's guidance input w passes through, and rows without a label (no classifier-free pass) get the
        positive image embeds."""
        return adapted(sd, [self], self)


def unet_modules(adapters, unet) -> tuple:
    """(IP processors of the UNet's cross-attentions, MultiIPAdapterImageProjection) of one or more
    :class:`IPAdapter` built by diffusers from their files (``load_ip_adapter`` with lists: each processor a key /
    value pair and a scale per adapter, one projection per adapter), on the UNet's device and dtype; one line for a
    file that does not fit."""
    diffusers = require("diffusers")
    names = [n for n in unet.attn_processors if not n.endswith("attn1.processor")]
    expected = {str(2 * i + 1) for i in range(len(names))}
    for adapter in adapters:
        keys = {k.split(".")[0] for k in adapter.state["ip_adapter"]}
        if keys != expected:
            raise DiffkitError(f"the IP-Adapter has image keys/values for {len(keys)} cross-attention layers, this "
                               f"UNet has {len(names)}; an IP-Adapter fits only its own model family (SD 1.x, 2.x or "
                               f"SD-XL)")
    processors, projections = converted(unet, [a.state for a in adapters], [a.state["image_proj"] for a in adapters],
                                        "UNet", " family (SD 1.x, 2.x or SD-XL)")
    processors = {n: processors[n] for n in names}
    for processor in processors.values():
        processor.scale = [a.scale for a in adapters]
    projection = diffusers.models.embeddings.MultiIPAdapterImageProjection(projections)
    for adapter, layer in zip(adapters, projection.image_projection_layers):
        plain = adapter.kind == "ip-adapter"
        check_encoder_width(getattr(adapter.image_encoder.config, "projection_dim" if plain else "hidden_size"),
                            layer.image_embeds.in_features if plain else layer.proj_in.in_features)
    return placed(processors, projection, unet)


def adapted(sd, adapters, owner):
    """A copy of ``sd`` whose network denoiser is :class:`IPAdaptedNet` with ``adapters`` (one or more
    :class:`IPAdapter`) around its own; the modules and embeddings are built once per UNet, scales and images and
    kept on ``owner`` (diffkit sample: adapting per batch)."""
    for adapter in adapters:
        adapter._check()
    key = (sd.unet, [a.scale for a in adapters], [a.image for a in adapters])
    built = owner._built
    if built is None or not (built[0][0] is key[0] and built[0][1] == key[1]
                             and all(a is b for a, b in zip(built[0][2], key[2]))):
        embeds = [tuple(e.to(sd.unet.device, sd.unet.dtype) for e in a.embeddings()) for a in adapters]
        owner._built = built = (key, *unet_modules(adapters, sd.unet), embeds)
    _, processors, projection, embeds = built
    inner = sd.network_denoiser
    net = IPAdaptedNet(inner.net, sd.unet, processors, projection, [p for p, _ in embeds], [n for _, n in embeds])
    denoiser = Denoiser(net, inner.schedule, inner.prediction_type, learned_variance=False)
    denoiser.model = sd.unet
    return replace(sd, _denoiser=denoiser)


def converted(model, attn_state, image_proj, what: str, family: str = "") -> tuple:
    """(processors, projection) built by diffusers' own converters of ``model`` (a UNet or a flow transformer:
    ``_convert_ip_adapter_attn_to_diffusers(attn_state)``, ``_convert_ip_adapter_image_proj_to_diffusers``; a list
    ``image_proj``: a list of projections, one per adapter); one line for weights that do not fit it."""
    try:
        processors = model._convert_ip_adapter_attn_to_diffusers(attn_state, low_cpu_mem_usage=False)
        projection = ([model._convert_ip_adapter_image_proj_to_diffusers(p, low_cpu_mem_usage=False)
                       for p in image_proj] if isinstance(image_proj, list) else
                      model._convert_ip_adapter_image_proj_to_diffusers(image_proj, low_cpu_mem_usage=False))
    except (RuntimeError, KeyError, ValueError) as err:
        raise DiffkitError(f"the IP-Adapter does not fit this {what} ({str(err).splitlines()[0][:120]}); an "
                           f"IP-Adapter fits only its own model{family}") from None
    return processors, projection


def check_encoder_width(dim: int, wanted: int) -> None:
    """One line where the image encoder's output width ``dim`` is not the adapter's input width ``wanted``."""
    if dim != wanted:
        raise DiffkitError(f"the image encoder gives {dim}-wide embeddings but the IP-Adapter takes {wanted}; give "
                           f"the --image-encoder it was trained with")


def placed(processors: dict, projection, model) -> tuple:
    """(processors, projection) on ``model``'s device and dtype, in eval mode, frozen."""
    for module in (*processors.values(), projection):
        module.to(model.device, model.dtype).eval().requires_grad_(False)
    return processors, projection


def load_ip_adapter(path, image, scale: float = 1.0, image_encoder: Union[None, str, Path] = None, device="cpu",
                    dtype: torch.dtype = torch.float32, progress: bool = True) -> IPAdapter:
    """An :class:`IPAdapter` from a file (``.safetensors``, or diffusers' ``.bin``) and the image encoder folder
    (default :func:`default_image_encoder`), with the image prompt ``image`` and ``scale``."""
    state = read_ip_adapter(path)
    directory = image_encoder_folder(path, image_encoder)
    return IPAdapter(state, load_image_encoder(directory, device, dtype, progress), image, scale)


ENCODER_KINDS = {"clip_vision_model": "CLIPVisionModelWithProjection", "siglip_vision_model": "SiglipVisionModel"}


def image_encoder_folder(path, image_encoder: Optional[str], model_type: str = "clip_vision_model") -> Path:
    """The image encoder folder to read (``image_encoder``, or :func:`default_image_encoder` of the file ``path``),
    checked to hold a ``config.json`` whose ``model_type`` is ``model_type`` or its full model's (CLIP for SD /
    SD-XL / FLUX IP-Adapters, SigLIP for SD3's), so that another encoder is one line, not transformers'
    size-mismatch report."""
    directory = Path(default_image_encoder(path) if image_encoder is None else image_encoder)
    how = "" if image_encoder is not None else " (the default, beside the IP-Adapter file)"
    wanted = ENCODER_KINDS[model_type]
    if not (directory / "config.json").is_file():
        raise DiffkitError(f"--image-encoder {directory}: no config.json there{how}; give a "
                           f"{wanted} folder (config.json and model.safetensors)")
    try:
        found = json.loads((directory / "config.json").read_text()).get("model_type")
    except (ValueError, OSError, AttributeError):
        found = "an unreadable config.json"
    if found not in (model_type, model_type[:-len("_vision_model")]):  # a vision tower or the full model's folder
        raise DiffkitError(f"--image-encoder {directory}{how} holds {found!r}; allowed: a {wanted} folder "
                           f"(model_type {model_type!r}: this checkpoint's IP-Adapter takes that encoder)")
    return directory


__all__ = ["IPAdapter", "IPAdaptedNet", "swapped_processors", "load_ip_adapter", "read_ip_adapter",
           "ip_adapter_kind", "load_image_encoder", "default_image_encoder", "image_encoder_folder", "ENCODER_KINDS",
           "converted", "check_encoder_width", "placed", "unet_modules", "adapted"]
