"""The IP-Adapter flags of ``diffkit sample`` for a Stable Diffusion folder (:mod:`diffkit.interop.ip_adapter`), a
FLUX.1 folder (:mod:`diffkit.interop.flux_ip_adapter`) or an SD3 folder (:mod:`diffkit.interop.sd3_ip_adapter`):
``--ip-adapter FILE[:SCALE] --ip-adapter-image PNG [--image-encoder DIR]``: diffusers' ``load_ip_adapter`` (the
file, its ``image_encoder`` folder), ``set_ip_adapter_scale(SCALE)`` and ``ip_adapter_image``; FLUX only:
``--negative-ip-adapter-image PNG`` (``negative_ip_adapter_image``, with ``--true-cfg-scale``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..errors import DiffkitError
from ._common import lora_arg, path_arg


def add_ip_adapter_flags(parser) -> None:
    g = parser.add_argument_group("IP-Adapter (Stable Diffusion, SD3 and FLUX.1 folders; docs/interop.md)")
    g.add_argument("--ip-adapter", type=lora_arg, metavar="FILE[:SCALE]",
                   help="an IP-Adapter file (ip-adapter or ip-adapter-plus, .safetensors or diffusers' .bin) made "
                        "for this model family; SCALE is lambda of the image prompt's attention (default 1; 0 = "
                        "plain text-to-image)")
    g.add_argument("--ip-adapter-image", type=path_arg, metavar="PNG",
                   help="the image prompt (with --ip-adapter), for every sample")
    g.add_argument("--negative-ip-adapter-image", type=path_arg, metavar="PNG",
                   help="FLUX folders with --true-cfg-scale: the image prompt of the negative pass (default the "
                        "pipeline's black image)")
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
        if given is None:
            for flag, value in (("--ip-adapter-image", args.ip_adapter_image), ("--image-encoder", args.image_encoder),
                                ("--negative-ip-adapter-image", negative)):
                if value is not None:
                    raise DiffkitError(f"{flag} needs --ip-adapter FILE[:SCALE]")
            return None
        family = None if checkpoint is None else "sd3" if is_sd3_folder(checkpoint) else \
            "flux" if is_flux_folder(checkpoint) else "sd" if is_stable_diffusion_folder(checkpoint) else None
        if family is None:
            raise DiffkitError(f"--ip-adapter applies to a Stable Diffusion folder or an SD3 / FLUX.1 folder "
                               f"(diffusers format); {checkpoint} is not one")
        if negative is not None and family != "flux":
            raise DiffkitError(f"--negative-ip-adapter-image applies to a FLUX.1 folder (FluxPipeline's "
                               f"negative_ip_adapter_image); {checkpoint} is not one")
        if args.ip_adapter_image is None:
            raise DiffkitError("--ip-adapter needs --ip-adapter-image PNG (the image prompt)")
        file, scale = given
        state = read_ip_adapter(file)
        encoder = image_encoder_folder(file, args.image_encoder,
                                       "siglip_vision_model" if family == "sd3" else "clip_vision_model")
        for image in (args.ip_adapter_image, negative):
            if image is not None:
                open_image(image)
        return cls(file, scale, args.ip_adapter_image, str(encoder), state, negative, family)

    def load(self, device="cpu", dtype=None, progress: bool = True):
        import torch

        from ..interop.ip_adapter import IPAdapter, load_image_encoder, load_ip_adapter
        if self.family == "sd3":
            from ..interop.sd3_ip_adapter import SD3IPAdapter, load_siglip_encoder
            encoder, processor = load_siglip_encoder(self.image_encoder, device, dtype or torch.float32, progress)
            return SD3IPAdapter(self.state, encoder, self.image, self.scale, feature_extractor=processor)
        if self.family == "flux":
            from ..interop.flux_ip_adapter import FluxIPAdapter
            encoder = load_image_encoder(self.image_encoder, device, dtype or torch.float32, progress)
            return FluxIPAdapter(self.state, encoder, self.image, self.scale, negative_image=self.negative_image)
        if self.state is None:
            return load_ip_adapter(self.file, self.image, self.scale, self.image_encoder, device,
                                   dtype or torch.float32, progress)
        encoder = load_image_encoder(self.image_encoder, device, dtype or torch.float32, progress)
        return IPAdapter(self.state, encoder, self.image, self.scale)
