"""The T2I-Adapter flags of ``diffkit sample`` for a Stable Diffusion / SD-XL folder
(:mod:`diffkit.interop.t2i_adapter`, Mou et al. 2023): ``--t2i-adapter DIR[:SCALE] --control-image PNG`` (repeat
both for diffusers' MultiAdapter) and ``--adapter-conditioning-factor F``: StableDiffusion(XL)AdapterPipeline's
``adapter``, ``image``, ``adapter_conditioning_scale`` and ``adapter_conditioning_factor``. The control images are
those of ``--control-image`` (:mod:`._controlnet`), which go to the adapters when no ``--controlnet`` is given; a
folder of PNGs gives one per ``--prompt`` (file-name order), as with a ControlNet (the pipelines' ``image=[...]``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import DiffkitError, check_range
from ._common import lora_arg


def add_t2i_adapter_flags(parser) -> None:
    g = parser.add_argument_group("T2I-Adapter (Stable Diffusion / SD-XL folders; docs/interop.md)")
    g.add_argument("--t2i-adapter", dest="t2i_adapters", action="append", type=lora_arg, metavar="DIR[:SCALE]",
                   help="a diffusers T2IAdapter folder made for this model family, with --control-image PNG; SCALE "
                        "is adapter_conditioning_scale (default 1); repeat both for several (MultiAdapter: the "
                        "scaled features add up)")
    g.add_argument("--adapter-conditioning-factor", type=float, metavar="F",
                   help="with --t2i-adapter: the fraction of the steps (the first, noisiest) that get the adapter's "
                        "features, step i of N iff i < int(N F) (default 1: every step)")


@dataclass
class T2IAdapterRequest:
    """The checked T2I-Adapter flags; :meth:`load` gives the :class:`~diffkit.interop.t2i_adapter.T2IAdapters`."""

    folders: list
    scales: list
    images: list
    factor: float = 1.0

    @classmethod
    def from_args(cls, args, checkpoint, prompts: Optional[int] = None) -> Optional["T2IAdapterRequest"]:
        """None without ``--t2i-adapter``; one line (before any output) for --adapter-conditioning-factor without
        it, a checkpoint that is not a Stable Diffusion folder, an option it does not combine with (--controlnet,
        --ip-adapter, --pag-scale, --refiner, LCM / TCD sampling), counts that do not fit, a negative scale, a
        factor outside [0, 1], a missing folder or a control image that cannot be read. A --control-image folder
        gives one image per prompt (``prompts``: the count of --prompt; its PNGs in name order, as
        :meth:`~._controlnet.ControlRequest.from_args`); without ``prompts`` a folder is refused."""
        from ..interop.controlnet import open_control_image
        from ._controlnet import ControlRequest
        from ..interop.lcm import is_lcm_folder
        from ..interop.stable_diffusion import is_stable_diffusion_folder
        from ..interop.t2i_adapter import check_t2i_adapter_folder
        given = list(getattr(args, "t2i_adapters", None) or [])
        factor = getattr(args, "adapter_conditioning_factor", None)
        if not given:
            if factor is not None:
                raise DiffkitError("--adapter-conditioning-factor needs --t2i-adapter DIR[:SCALE]")
            return None
        if checkpoint is None or not is_stable_diffusion_folder(checkpoint):
            raise DiffkitError(f"--t2i-adapter applies to a Stable Diffusion folder (diffusers format); {checkpoint} "
                               f"is not one")
        for flag, value in (("--controlnet", getattr(args, "controlnets", None)),
                            ("--ip-adapter", getattr(args, "ip_adapter", None)),
                            ("--pag-scale", getattr(args, "pag_scale", None)),
                            ("--refiner", getattr(args, "refiner", None)),
                            (f"--scheduler {getattr(args, 'scheduler', None)}", getattr(args, "scheduler", None)),
                            ("an LCMScheduler folder", is_lcm_folder(checkpoint))):
            if value:
                raise DiffkitError(f"--t2i-adapter with {flag} is not supported; drop one of them")
        images = list(getattr(args, "control_images", None) or [])
        if len(images) != len(given):
            raise DiffkitError(f"{len(images)} --control-image for {len(given)} --t2i-adapter; give one control "
                               f"image per T2I-Adapter, in the same order")
        for folder, scale in given:
            check_t2i_adapter_folder(folder, checkpoint)  # and that it fits the folder's UNet
            if not scale >= 0:
                raise DiffkitError(f"--t2i-adapter scale {scale:g} is not allowed; give DIR:SCALE with SCALE >= 0")
        if prompts is None and any(Path(image).is_dir() for image in images):
            raise DiffkitError(f"--control-image {next(i for i in images if Path(i).is_dir())} is a folder; give one "
                               f"control image file per --t2i-adapter")
        images = [ControlRequest.per_row(image, prompts, "--prompt", "prompt") for image in images]
        for image in images:
            for one in image if isinstance(image, list) else [image]:
                open_control_image(one)  # one line for a file that is not an image
        factor = 1.0 if factor is None else check_range("--adapter-conditioning-factor", factor, 0.0, 1.0)
        return cls([folder for folder, _ in given], [scale for _, scale in given], images, float(factor))

    def load(self, device="cpu", dtype=None, progress: bool = True):
        import torch

        from ..interop.t2i_adapter import T2IAdapters, load_t2i_adapter
        models = [load_t2i_adapter(folder, device, dtype or torch.float32, progress) for folder in self.folders]
        return T2IAdapters(models, self.images, self.scales, self.factor)
