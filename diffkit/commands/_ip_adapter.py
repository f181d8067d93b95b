"""The IP-Adapter flags of ``diffkit sample`` for a Stable Diffusion folder (:mod:`diffkit.interop.ip_adapter`), a
FLUX.1 or Chroma folder (:mod:`diffkit.interop.flux_ip_adapter`) or an SD3 folder
(:mod:`diffkit.interop.sd3_ip_adapter`): ``--ip-adapter FILE[:SCALE] --ip-adapter-image PNG [--image-encoder DIR]``:
diffusers' ``load_ip_adapter`` (the file, its ``image_encoder`` folder), ``set_ip_adapter_scale(SCALE)`` and
``ip_adapter_image``; FLUX / Chroma only: ``--negative-ip-adapter-image PNG`` (``negative_ip_adapter_image``, FLUX.1
with ``--true-cfg-scale``). On an SD 1.x / 2.x /
SD-XL / FLUX.1 folder ``--ip-adapter`` repeats with one ``--ip-adapter-image`` each (``load_ip_adapter`` with lists,
``set_ip_adapter_scale([...])``; :mod:`diffkit.interop.ip_adapter_multi`, FLUX:
:class:`~diffkit.interop.flux_ip_adapter.FluxIPAdapters`, with none or one ``--negative-ip-adapter-image`` each); on
SD / SD-XL a folder of PNGs is one adapter's several image prompts."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import DiffkitError
from ._common import lora_arg, path_arg


def add_ip_adapter_flags(parser) -> None:
    g = parser.add_argument_group("IP-Adapter (Stable Diffusion, SD-XL, SD3, FLUX.1 and Chroma folders; "
                                  "docs/interop.md)")
    g.add_argument("--ip-adapter", type=lora_arg, action="append", metavar="FILE[:SCALE]",
                   help="an IP-Adapter file (.safetensors or diffusers' .bin; SD / SD-XL: ip-adapter or "
                        "ip-adapter-plus) made for this model family; SCALE is lambda of the image prompt's "
                        "attention (default 1; 0 = plain text-to-image); SD / SD-XL / FLUX.1: repeat for several "
                        "adapters, one --ip-adapter-image each")
    g.add_argument("--ip-adapter-image", type=path_arg, action="append", metavar="PNG|DIR",
                   help="the image prompt of each --ip-adapter (in the same order), for every sample; SD / SD-XL: a "
                        "folder of PNGs gives that adapter several image prompts (file-name order)")
    g.add_argument("--negative-ip-adapter-image", type=path_arg, action="append", metavar="PNG",
                   help="FLUX folders with --true-cfg-scale, Chroma folders (their CFG): the image prompt of the "
                        "negative pass (default the "
                        "pipeline's black image); several --ip-adapter: one each, in the same order")
    g.add_argument("--image-encoder", type=path_arg, metavar="DIR",
                   help="the CLIPVisionModelWithProjection folder of --ip-adapter (SD3: SiglipVisionModel with its "
                        "preprocessor_config.json; default: image_encoder beside the file, as diffusers' "
                        "load_ip_adapter)")


@dataclass
class IPAdapterRequest:
    """The checked IP-Adapter flags; :meth:`load` gives the :class:`~diffkit.interop.ip_adapter.IPAdapter`."""

    file: str
    scale: float
    image: str
    image_encoder: str
    state: dict = field(default=None, repr=False, compare=False)  # the file's, read once by from_args
    negative_image: Optional[str] = None  # FLUX's negative_ip_adapter_image
    family: str = "sd"  # the checkpoint's: "sd" (SD 1.x / 2.x / SD-XL), "flux" (XLabs files) or "sd3"
    more: list = field(default_factory=list)  # the further --ip-adapter's (file, scale, image, state, negative)

    @classmethod
    def from_args(cls, args, checkpoint) -> Optional["IPAdapterRequest"]:
        """None without ``--ip-adapter``; one line for a flag without it, a checkpoint that is not a Stable
        Diffusion folder (an LCMScheduler folder and ``--scheduler lcm`` are fine), no image, a file that is
        missing or of another kind, no image encoder folder or an image that cannot be read (all before any
        output)."""
        from ..interop.flux import is_flux_folder
        from ..interop.sd3 import is_sd3_folder
        from ..interop.ip_adapter import image_encoder_folder, open_image, read_ip_adapter
        from ..interop.stable_diffusion import is_stable_diffusion_folder
        given, negative = getattr(args, "ip_adapter", None), getattr(args, "negative_ip_adapter_image", None)
        given = [given] if isinstance(given, tuple) else list(given or [])  # (FILE, SCALE) per --ip-adapter
        images, negatives = ([value] if isinstance(value, (str, Path)) else list(value or [])
                             for value in (args.ip_adapter_image, negative))
        if not given:
            for flag, value in (("--ip-adapter-image", images), ("--image-encoder", args.image_encoder),
                                ("--negative-ip-adapter-image", negatives)):
                if value:
                    raise DiffkitError(f"{flag} needs --ip-adapter FILE[:SCALE]")
            return None
        from ..interop.chroma import is_chroma_folder  # Chroma: FLUX.1's XLabs adapters (ChromaPipeline's loader)
        family = None if checkpoint is None else "sd3" if is_sd3_folder(checkpoint) else \
            "flux" if is_flux_folder(checkpoint) or is_chroma_folder(checkpoint) else \
            "sd" if is_stable_diffusion_folder(checkpoint) else None
        if family is None:
            raise DiffkitError(f"--ip-adapter applies to a Stable Diffusion folder or an SD3 / FLUX.1 / Chroma folder "
                               f"(diffusers format); {checkpoint} is not one")
        if negatives and family != "flux":
            raise DiffkitError(f"--negative-ip-adapter-image applies to a FLUX.1 folder or a Chroma one (their "
                               f"pipelines' negative_ip_adapter_image); {checkpoint} is neither")
        if not images:
            raise DiffkitError("--ip-adapter needs --ip-adapter-image PNG (the image prompt)")
        if len(given) > 1 and family == "sd3":
            raise DiffkitError("several --ip-adapter apply to Stable Diffusion 1.x / 2.x, SD-XL and FLUX.1 folders "
                               "(load_ip_adapter with lists); diffusers' SD3 pipeline takes one")
        if len(images) != len(given):
            raise DiffkitError(f"{len(images)} --ip-adapter-image for {len(given)} --ip-adapter; give one image "
                               f"prompt (a PNG, or a folder of PNGs) per --ip-adapter, in the same order")
        if negatives and len(negatives) != len(given):
            raise DiffkitError(f"{len(negatives)} --negative-ip-adapter-image for {len(given)} --ip-adapter; give "
                               f"one per --ip-adapter, in the same order, or none (the pipeline's black image)")
        negatives = negatives or [None] * len(given)
        images = [image_prompts(image, family) for image in images]
        states = [read_ip_adapter(file) for file, _ in given]
        encoder = image_encoder_folder(given[0][0], args.image_encoder,
                                       "siglip_vision_model" if family == "sd3" else "clip_vision_model")
        for image in [*images, *negatives]:
            for one in image if isinstance(image, list) else [image]:
                if one is not None:
                    open_image(one)
        more = [(file, scale, image, state, negative) for (file, scale), image, state, negative
                in zip(given[1:], images[1:], states[1:], negatives[1:])]
        return cls(*given[0], images[0], str(encoder), states[0], negatives[0], family, more)

    def load(self, device="cpu", dtype=None, progress: bool = True):
        import torch

        from ..interop.ip_adapter import IPAdapter, load_image_encoder, load_ip_adapter
        if self.family == "sd3":
            from ..interop.sd3_ip_adapter import SD3IPAdapter, load_siglip_encoder
            encoder, processor = load_siglip_encoder(self.image_encoder, device, dtype or torch.float32, progress)
            return SD3IPAdapter(self.state, encoder, self.image, self.scale, feature_extractor=processor)
        if self.family == "flux":  # several: one image encoder (diffusers' load_ip_adapter with lists)
            from ..interop.flux_ip_adapter import FluxIPAdapter, FluxIPAdapters
            encoder = load_image_encoder(self.image_encoder, device, dtype or torch.float32, progress)
            adapters = [FluxIPAdapter(state, encoder, image, scale, negative_image=negative) for _, scale, image, state,
                        negative in [(self.file, self.scale, self.image, self.state, self.negative_image), *self.more]]
            return FluxIPAdapters(adapters) if self.more else adapters[0]
        if self.state is None:
            return load_ip_adapter(self.file, self.image, self.scale, self.image_encoder, device,
                                   dtype or torch.float32, progress)
        encoder = load_image_encoder(self.image_encoder, device, dtype or torch.float32, progress)
        if self.more:  # several adapters, one image encoder (diffusers' load_ip_adapter with lists)
            from ..interop.ip_adapter_multi import IPAdapters
            return IPAdapters([IPAdapter(self.state, encoder, self.image, self.scale),
                               *(IPAdapter(state, encoder, image, scale) for _, scale, image, state, _ in self.more)])
        return IPAdapter(self.state, encoder, self.image, self.scale)


def image_prompts(image, family: str):
    """An --ip-adapter-image file as it is; a folder: its PNGs in name order (one adapter's several image prompts,
    diffusers' ``ip_adapter_image=[[a, b]]``; SD / SD-XL folders only)."""
    from ..metrics.features import list_images
    if not Path(image).is_dir():
        return image
    if family != "sd":
        raise DiffkitError(f"--ip-adapter-image {image} is a folder; the {family.upper()} IP-Adapter takes one image "
                           f"prompt file")
    return [str(f) for f in list_images(image)]
