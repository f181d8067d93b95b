"""IP-Adapter (Ye et al. 2023, arXiv:2308.06721) on an SD3 / SD3.5 folder (:mod:`.sd3`), as diffusers 0.42's
``StableDiffusion3Pipeline.load_ip_adapter`` + ``set_ip_adapter_scale`` + ``ip_adapter_image`` (InstantX's
SD3.5-Large-IP-Adapter format: ``image_proj.*`` / ``ip_adapter.<block>.*`` keys).

The image prompt is encoded by a ``SiglipVisionModel`` (its penultimate hidden states, the pipeline's
``encode_image``, through the ``SiglipImageProcessor`` saved in the encoder's folder) and resampled by
``IPAdapterTimeImageProjection``: a Perceiver resampler (IP-Adapter Plus) whose blocks are modulated by the embedding
of the flow time, so the image tokens c_i(t) change along the trajectory; each joint block's
``SD3IPAdapterJointAttnProcessor2_0`` adds to the image stream lambda times an attention of the block's queries over
the time-normed tokens c_i(t) (eq. 5's decoupled cross-attention, Sec. 3.3's weight lambda). diffusers' converters
(``SD3Transformer2DModel._convert_ip_adapter_attn_to_diffusers`` / ``_convert_ip_adapter_image_proj_to_diffusers``)
build the modules; :class:`~.flux_ip_adapter.FlowIPAdaptedNet` puts them (and the transformer's ``image_proj``) in
place only during diffkit's calls. Classifier-free guidance's null half gets zero embeds (``torch.zeros_like``, as
the pipeline); at scale <= 0 the adapter is off (the pipeline's ``is_ip_adapter_active``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch

from ..errors import DiffkitError
from . import from_pretrained, library_progress_bars, require
from .flux_ip_adapter import TransformerIPAdapter
from .ip_adapter import check_encoder_width, converted, image_encoder_folder, placed, read_ip_adapter


@dataclass
class SD3IPAdapter(TransformerIPAdapter):
    """An SD3 IP-Adapter, its ``SiglipVisionModel`` and ``SiglipImageProcessor`` (``feature_extractor``), the image
    prompt and lambda (``scale``; diffusers' processors start at 0.5 until ``set_ip_adapter_scale``).
    ``StableDiffusion3.prompt_guidance(ip_adapter=)`` / ``text_to_image(ip_adapter=)`` take it."""

    feature_extractor: object = None
    attribute = "image_proj"
    as_list = False

    def __post_init__(self):
        super().__post_init__()
        if "time_embedding.linear_1.weight" not in self.state["image_proj"]:
            raise DiffkitError(f"an SD3 folder takes an SD3 IP-Adapter (IPAdapterTimeImageProjection: image_proj."
                               f"time_embedding.*); this one is an SD 1.x / SD-XL {self.kind} file")

    @property
    def active(self) -> bool:
        return self.scale > 0

    def pixels(self, image) -> torch.Tensor:
        pixels = self.feature_extractor(image, return_tensors="pt").pixel_values
        param = next(self.image_encoder.parameters())
        return pixels.to(param.device, param.dtype)

    def image_embeds(self, height=None, width=None) -> tuple:
        """(positive, negative) (1, N, D): the encoder's ``hidden_states[-2]`` of the image, zeros."""
        with torch.no_grad():
            positive = self.image_encoder(self.pixels(self.image), output_hidden_states=True).hidden_states[-2]
        return positive, torch.zeros_like(positive)

    def modules(self, transformer) -> tuple:
        """({name: SD3IPAdapterJointAttnProcessor2_0} of every joint block, IPAdapterTimeImageProjection) built by
        diffusers from the file, with the scale set; one line for a file that does not fit."""
        names = list(transformer.attn_processors)
        keys = {k.split(".")[0] for k in self.state["ip_adapter"]}
        if keys != {str(i) for i in range(len(names))}:
            raise DiffkitError(f"the IP-Adapter has image keys/values for {len(keys)} blocks, this SD3 transformer "
                               f"has {len(names)}; an IP-Adapter fits only its own model")
        processors, projection = converted(transformer, self.state["ip_adapter"], self.state["image_proj"],
                                           "SD3 transformer")
        for processor in processors.values():
            processor.scale = self.scale
        check_encoder_width(self.image_encoder.config.hidden_size, projection.proj_in.in_features)
        return placed(processors, projection, transformer)

    def sd3_parts(self, sd3, denoiser=None) -> tuple:
        """(``denoiser`` (default sd3's; a dynamic-shift folder's of the image size) with the adapter around its
        net, positive, negative (1, N, D) embeds)."""
        return self.parts(sd3, sd3.denoiser if denoiser is None else denoiser, 0, 0)


def load_siglip_encoder(directory, device="cpu", dtype: torch.dtype = torch.float32, progress: bool = True) -> tuple:
    """(``SiglipVisionModel``, ``SiglipImageProcessor``) of a folder (local only), as SD3's ``load_ip_adapter``."""
    directory = image_encoder_folder(None, directory, "siglip_vision_model")
    transformers = require("transformers")
    with library_progress_bars(progress):
        model = from_pretrained(transformers.SiglipVisionModel, directory, "--image-encoder", local_files_only=True,
                                torch_dtype=dtype)
        try:
            processor = transformers.SiglipImageProcessor.from_pretrained(directory, local_files_only=True)
        except OSError:
            raise DiffkitError(f"--image-encoder {directory}: no preprocessor_config.json there; give the "
                               f"SiglipVisionModel folder with its SiglipImageProcessor") from None
    return model.to(device).eval().requires_grad_(False), processor


def load_sd3_ip_adapter(path, image, scale: float = 1.0, image_encoder: Union[None, str] = None, device="cpu",
                        dtype: torch.dtype = torch.float32, progress: bool = True) -> SD3IPAdapter:
    """An :class:`SD3IPAdapter` from a file and its SigLIP folder (default ``image_encoder`` beside the file, as
    SD3's ``load_ip_adapter``)."""
    state = read_ip_adapter(path)
    encoder, processor = load_siglip_encoder(image_encoder_folder(path, image_encoder, "siglip_vision_model"), device,
                                             dtype, progress)
    return SD3IPAdapter(state, encoder, image, scale, feature_extractor=processor)


__all__ = ["SD3IPAdapter", "load_sd3_ip_adapter", "load_siglip_encoder"]
