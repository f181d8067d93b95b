"""The ControlNet flags of ``diffkit sample`` for a Stable Diffusion folder (:mod:`diffkit.interop.controlnet`):
``--controlnet DIR --control-image PNG`` (repeat both for Multi-ControlNet), ``--controlnet-scale``,
``--control-guidance-start`` / ``--control-guidance-end`` (one value for all, or one per ControlNet) and
``--guess-mode``: diffusers' StableDiffusionControlNetPipeline arguments of the same names (for an SD-XL folder,
StableDiffusionXLControlNetPipeline's; for an SD3 / FLUX.1 folder, StableDiffusion3ControlNetPipeline's /
FluxControlNetPipeline's, without guess mode: :mod:`diffkit.interop.sd3_controlnet`,
:mod:`~diffkit.interop.flux_controlnet`). A FLUX.1 Depth / Canny folder (FluxControlPipeline) takes ``--control-image``
without ``--controlnet``: its transformer's own (:meth:`ControlRequest.transformer_image`). An SD-XL
ControlNet-Union folder takes ``--control-mode`` per control image (:mod:`._controlnet_union`,
StableDiffusionXLControlNetUnionPipeline). A ControlNet-XS adapter folder (``ControlNetXSAdapter``, SD / SD-XL) is
fused with the UNet (:mod:`diffkit.interop.controlnet_xs`, StableDiffusion(XL)ControlNetXSPipeline), in
``diffkit sample`` only and alone (:func:`refuse_xs_flags`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import DiffkitError
from ._common import non_negative_float, path_arg
from ._controlnet_union import add_control_mode_flag, union_modes

CONTROL_FLAGS = ("--controlnet-scale", "--control-guidance-start", "--control-guidance-end", "--guess-mode")


def add_controlnet_flags(parser) -> None:
    g = parser.add_argument_group("ControlNet (Stable Diffusion, SD-XL, SD3, FLUX.1, Sana, HunyuanDiT, Z-Image and "
                                  "Qwen-Image folders; docs/interop.md)")
    g.add_argument("--controlnet", dest="controlnets", action="append", type=path_arg, metavar="DIR",
                   help="a diffusers ControlNet folder made for this model: ControlNetModel (SD-XL: also "
                        "ControlNetUnionModel, see --control-mode; SD / SD-XL: also one ControlNetXSAdapter, "
                        "ControlNet-XS, fused with the UNet), SD3ControlNetModel, FluxControlNetModel, "
                        "SanaControlNetModel (one), HunyuanDiT2DControlNetModel (one), ZImageControlNetModel "
                        "(one), QwenImageControlNetModel (one, on one or more --control-image); repeat for "
                        "Multi-ControlNet (their residuals add up)")
    g.add_argument("--control-image", dest="control_images", action="append", type=path_arg, metavar="PNG|DIR",
                   help="the control image of each --controlnet (RGB in [0, 1], as diffusers prepares it), or of "
                        "each --t2i-adapter, or alone a FLUX.1 Depth / Canny folder's (docs/interop.md) or an SD 2 "
                        "depth-to-image folder's depth map (grey PNG, any size; docs/editing.md), or a DeepFloyd "
                        "IF stage-II folder's stage-I images (diffkit edit); sample: "
                        "the output takes its size, rounded down to multiples of the VAE factor (SD3 / FLUX.1: it is "
                        "resized to the output's size, as their pipelines), and a folder of "
                        "PNGs gives one per --prompt in file-name order (each prompt's row); edit: it is resized "
                        "to the images' size, and a folder gives one per --images file (both in file-name order)")
    g.add_argument("--controlnet-scale", dest="controlnet_scales", action="append", type=non_negative_float,
                   metavar="S", help="controlnet_conditioning_scale: the residuals' weight (default 1, a Z-Image "
                                     "folder's 0.75; one, or one per --controlnet)")
    g.add_argument("--control-guidance-start", dest="control_starts", action="append", type=float, metavar="F",
                   help="the fraction of the steps before which the ControlNet is off (default 0)")
    g.add_argument("--control-guidance-end", dest="control_ends", action="append", type=float, metavar="F",
                   help="the fraction of the steps after which the ControlNet is off (default 1)")
    g.add_argument("--guess-mode", action="store_true",
                   help="residuals on the conditional half of classifier-free guidance only, scaled from 0.1 "
                        "(shallowest block) to 1 (middle block), as diffusers' guess_mode (SD / SD-XL "
                        "ControlNetModel only)")
    add_control_mode_flag(g)


def qwen_folders(checkpoint, folders: list, images: list) -> list:
    """A Qwen-Image folder's --controlnet folders, one per --control-image: its one ControlNet (a union) on each
    image, as QwenImageMultiControlNetModel([controlnet]); one line for a Qwen-Image-Edit folder (no ControlNet
    pipeline) or several different folders (the multi model takes one)."""
    from ..interop.qwen_image import EDIT_PIPELINES
    from ..interop.qwen_image_controlnet import check_qwen_control_use
    from ..interop.sd_xl import pipeline_class
    check_qwen_control_use(kind="Qwen-Image-Edit" if pipeline_class(checkpoint) in EDIT_PIPELINES else None)
    if len(set(map(str, folders))) > 1:
        raise DiffkitError(f"{len(set(map(str, folders)))} different --controlnet folders on a Qwen-Image folder; "
                           f"QwenImageMultiControlNetModel takes one ControlNet (a union): give --controlnet once "
                           f"and a --control-image per condition")
    return folders[:1] * max(len(images), 1)


XS_REFUSED = (("--guess-mode", "guess_mode"), ("--control-mode", "control_modes"), ("--ip-adapter", "ip_adapter"),
              ("--t2i-adapter", "t2i_adapters"), ("--pag-scale", "pag_scale"), ("--sag-scale", "sag_scale"),
              ("--panorama", "panorama"), ("--freeu", "freeu"), ("--refiner", "refiner"),
              ("--guidance-rescale", "guidance_rescale"), ("--apg-eta", "apg_eta"),
              ("--apg-norm-threshold", "apg_norm_threshold"), ("--apg-momentum", "apg_momentum"),
              ("--scheduler", "scheduler"))


def refuse_xs_flags(args, checkpoint, count: int, edited: Optional[int]) -> None:
    """One line for what a ControlNet-XS adapter folder does not go with, before anything loads: diffusers 0.42.1
    has only the text-to-image StableDiffusion(XL)ControlNetXSPipeline, with one adapter and none of
    :data:`XS_REFUSED` (the library's refusals: :mod:`diffkit.interop.controlnet_xs`)."""
    from ..interop.controlnet_xs import XS_PIPELINES
    from ..interop.lcm import is_lcm_folder
    given = [flag for flag, dest in XS_REFUSED if getattr(args, dest, None) not in (None, False, 0, [])]
    why = ("diffkit edit (img2img / inpainting)" if edited is not None else f"{count} --controlnet" if count > 1
           else given[0] if given else "an LCMScheduler folder" if is_lcm_folder(checkpoint) else None)
    if why is not None:
        raise DiffkitError(f"{why} with a ControlNet-XS adapter (ControlNetXSAdapter) is not supported: diffusers' "
                           f"{XS_PIPELINES} take one adapter, in diffkit sample, with none of "
                           f"{', '.join(flag for flag, _ in XS_REFUSED)}")


@dataclass
class ControlRequest:
    """The checked ControlNet flags; :meth:`load` gives the :class:`~diffkit.interop.controlnet.ControlNets` (a
    :class:`~diffkit.interop.controlnet_xs.ControlNetXS` for a ControlNet-XS adapter folder)."""

    folders: list
    images: list
    scales: list
    starts: list
    ends: list
    guess_mode: bool = False
    model_class: str = "ControlNetModel"  # the diffusers class of the folders (SD3ControlNetModel, FluxControlNetModel)
    modes: Optional[list] = None  # ControlNet-Unions' control mode indices, one per control image (._controlnet_union)

    @classmethod
    def from_args(cls, args, checkpoint, prompts: Optional[int] = None,
                  edited: Optional[int] = None) -> Optional["ControlRequest"]:
        """None without ``--controlnet``; one line for a flag without it, a checkpoint that is not a
        Stable Diffusion folder, counts that do not fit, a bad window, a missing folder or an image that
        cannot be read (all before any output). A --control-image folder gives one image per row (its PNGs in
        name order): ``prompts``, ``diffkit sample``'s count of --prompt, or ``edited``, ``diffkit edit``'s count
        of --images files; with neither a folder is refused."""
        from ..interop.controlnet import check_control_options, check_controlnet_folder, open_control_image
        from ..interop.flux import is_flux_folder
        from ..interop.flux_controlnet import check_flux_controlnet_folder
        from ..interop.sd3 import is_sd3_folder
        from ..interop.sd3_controlnet import check_sd3_controlnet_folder
        from ..interop.stable_diffusion import is_stable_diffusion_folder
        folders = list(getattr(args, "controlnets", None) or [])
        images = list(getattr(args, "control_images", None) or [])
        if not folders and getattr(args, "t2i_adapters", None):
            images = []  # the T2I-Adapters' (._t2i_adapter)
        given = [flag for flag, value in zip(CONTROL_FLAGS, (args.controlnet_scales, args.control_starts,
                                                              args.control_ends, args.guess_mode)) if value]
        if getattr(args, "control_modes", None):
            given.append("--control-mode")
        if not folders:
            if images and not given and (prompts, edited) != (None, None) and is_flux_folder(checkpoint):
                from ..interop.flux_channels import FLUX_CONTROL, folder_variant
                if folder_variant(checkpoint) == FLUX_CONTROL:  # FLUX.1 Depth / Canny: its transformer takes it
                    return cls.transformer_image(images, prompts, edited)
            if images and not given and prompts is not None and checkpoint is not None:
                from ..interop.kandinsky import is_kandinsky_folder
                if is_kandinsky_folder(checkpoint):  # a Kandinsky 2.2 ControlNet decoder's hint (._kandinsky)
                    from ..interop.kandinsky_controlnet import CONTROLNET_PIPELINE
                    from ._kandinsky import check_hint_flag
                    check_hint_flag(checkpoint, True)
                    return cls.transformer_image(images, prompts, None, CONTROLNET_PIPELINE)
                from ..interop.cogview4 import COGVIEW4_CONTROL_PIPELINE
                from ..interop.sd_xl import pipeline_class
                if pipeline_class(checkpoint) == COGVIEW4_CONTROL_PIPELINE:  # CogView4 Control: the same
                    return cls.transformer_image(images, prompts, None, COGVIEW4_CONTROL_PIPELINE)
            if images or given:
                raise DiffkitError(f"{'--control-image' if images else given[0]} needs --controlnet DIR"
                                  f"{' (or --t2i-adapter DIR)' if images and hasattr(args, 't2i_adapters') else ''}")
            return None
        from ..interop.hunyuan_dit import is_hunyuan_dit_folder
        from ..interop.hunyuan_dit_controlnet import HUNYUAN_CONTROLNET, check_hunyuan_controlnet_folder
        from ..interop.sana import sana_kind
        from ..interop.sana_controlnet import SANA_CONTROLNET, check_sana_controlnet_folder
        from ..interop.z_image import is_z_image_folder
        from ..interop.z_image_controlnet import Z_IMAGE_CONTROL_SCALE, Z_IMAGE_CONTROLNET, \
            check_z_image_controlnet_folder
        from ..interop.qwen_image import is_qwen_image_folder
        from ..interop.qwen_image_controlnet import QWEN_CONTROLNET, check_qwen_controlnet_folder
        kind = None if checkpoint is None else "SD3" if is_sd3_folder(checkpoint) else \
            "FLUX" if is_flux_folder(checkpoint) else \
            "Sana" if sana_kind(checkpoint) == "SanaPipeline" else \
            "HunyuanDiT" if is_hunyuan_dit_folder(checkpoint) else \
            "Z-Image" if is_z_image_folder(checkpoint) else \
            "Qwen-Image" if is_qwen_image_folder(checkpoint) else None  # a transformer folder's ControlNets
        if checkpoint is None or not (kind or is_stable_diffusion_folder(checkpoint)):
            raise DiffkitError(f"--controlnet applies to a Stable Diffusion folder (diffusers format; also SD3, "
                               f"FLUX.1, Sana, HunyuanDiT, Z-Image and Qwen-Image folders); {checkpoint} is not one")
        if kind == "Qwen-Image":  # one ControlNet on each control image (QwenImageMultiControlNetModel)
            folders = qwen_folders(checkpoint, folders, images)
        check = {"SD3": check_sd3_controlnet_folder, "FLUX": check_flux_controlnet_folder,
                 "Sana": check_sana_controlnet_folder, "HunyuanDiT": check_hunyuan_controlnet_folder,
                 "Z-Image": check_z_image_controlnet_folder,
                 "Qwen-Image": lambda folder: check_qwen_controlnet_folder(folder, edited is not None)}.get(
                     kind, check_controlnet_folder)  # (Qwen-Image's edits: inpainting ControlNets, ._qwen_image)
        classes = [(check(folder) or {}).get("_class_name") for folder in folders]  # another kind first: one line
        if "ControlNetXSAdapter" in classes:  # a ControlNet-XS adapter (diffkit.interop.controlnet_xs)
            refuse_xs_flags(args, checkpoint, len(folders), edited)
        modes = union_modes(args, checkpoint, kind, folders, images)  # ControlNet-Unions (._controlnet_union)
        if modes is None and len(images) != len(folders):
            raise DiffkitError(f"{len(images)} --control-image for {len(folders)} --controlnet; give one control "
                               f"image per ControlNet, in the same order")
        if kind and args.guess_mode:
            raise DiffkitError(f"--guess-mode applies to Stable Diffusion ControlNets; the {kind} ControlNet pipeline "
                               f"has no guess mode")
        rows = (prompts, "--prompt", "prompt") if prompts is not None else (edited, "--images file(s)", "image")
        images = [cls.per_row(image, *rows) for image in images]
        for image in images:
            for one in image if isinstance(image, list) else [image]:
                open_control_image(one)  # one line for a file that is not an image
        count, what = (len(folders), "--controlnet") if modes is None else (len(images), "--control-image")
        request = cls(folders, images, *(cls._values(flag, values, count, default, what) for flag, values, default in (
            ("--controlnet-scale", args.controlnet_scales, Z_IMAGE_CONTROL_SCALE if kind == "Z-Image" else 1.0),
            ("--control-guidance-start", args.control_starts, 0.0),
            ("--control-guidance-end", args.control_ends, 1.0))), bool(args.guess_mode),
                      {"SD3": "SD3ControlNetModel", "FLUX": "FluxControlNetModel", "Sana": SANA_CONTROLNET,
                       "HunyuanDiT": HUNYUAN_CONTROLNET, "Z-Image": Z_IMAGE_CONTROLNET,
                       "Qwen-Image": QWEN_CONTROLNET}.get(
                          kind, "ControlNetModel" if modes is None else "ControlNetUnionModel"), modes)
        if "ControlNetXSAdapter" in classes:
            request.model_class = "ControlNetXSAdapter"
        check_control_options(request.scales, request.starts, request.ends, count)
        return request

    @classmethod
    def transformer_image(cls, images: list, prompts: Optional[int], edited: Optional[int] = None,
                          model_class: str = "FluxControlPipeline") -> "ControlRequest":
        """A FLUX.1 Depth / Canny folder's ``--control-image`` (no ``--controlnet``: its transformer takes the
        image, :mod:`diffkit.interop.flux_channels`), a CogView4 Control folder's (``model_class``
        ``CogView4ControlPipeline``, :mod:`diffkit.interop.cogview4`) or a Kandinsky 2.2 ControlNet decoder's
        (``KandinskyV22ControlnetPipeline``, its UNet's hint, :mod:`diffkit.interop.kandinsky_controlnet`): one file,
        or a folder of one PNG per
        ``--prompt`` (``diffkit sample``) or per ``--images`` file (``edited``: ``diffkit edit``); ``folders``
        empty."""
        from ..interop.controlnet import open_control_image
        row = ("--prompt", "prompt") if edited is None else ("--images file", "image")
        if len(images) != 1:
            what = {"FluxControlPipeline": "FLUX.1 Depth / Canny", "KandinskyV22ControlnetPipeline":
                    "Kandinsky 2.2 ControlNet decoder"}.get(model_class, "CogView4 Control")
            raise DiffkitError(f"{len(images)} --control-image for a {what} folder; give one (a file, "
                               f"or a folder of one PNG per {row[0]})")
        image = cls.per_row(images[0], prompts if edited is None else edited, row[0] + "(s)" * (edited is not None),
                            row[1])
        for one in image if isinstance(image, list) else [image]:
            open_control_image(one)  # one line for a file that is not an image
        return cls([], [image], [], [], [], model_class=model_class)

    @staticmethod
    def per_row(image, count: Optional[int], what: str, row: str, flag: str = "--control-image"):
        """A ``flag`` (--control-image) file as it is; a folder: its PNGs (name order), one per row (``count`` of
        ``what``)."""
        from pathlib import Path

        from ..metrics.features import list_images
        if not Path(image).is_dir():
            return image
        if count is None:
            raise DiffkitError(f"--control-image {image} is a folder; give one control image file per --controlnet")
        files = [str(f) for f in list_images(image)]
        if len(files) != count:
            raise DiffkitError(f"{flag} {image} holds {len(files)} PNG(s) for {count} {what}; give one "
                               f"{flag[2:].replace('-', ' ')} per {row} (in file-name order), or a single file for all")
        return files

    @staticmethod
    def _values(flag: str, values, count: int, default: float, what: str = "--controlnet") -> list:
        values = list(values or [default])
        if len(values) == 1:
            return values * count
        if len(values) != count:
            raise DiffkitError(f"{flag} was given {len(values)} times for {count} {what}; give it once (all) or "
                               f"once per {'ControlNet' if what == '--controlnet' else 'control image'}")
        return values

    def load(self, device="cpu", dtype=None, progress: bool = True):
        """The :class:`~diffkit.interop.controlnet.ControlNets` of the folders, each folder loaded once."""
        import torch

        from ..interop.controlnet import load_model_folder
        from ..interop.controlnet_xs import xs_controlnets
        loaded = {}
        for folder in self.folders:
            if folder not in loaded:
                loaded[folder] = load_model_folder(self.model_class, folder, device, dtype or torch.float32, progress)
        models = [loaded[folder] for folder in self.folders]
        return xs_controlnets(models, self.images, self.scales, self.starts, self.ends, self.guess_mode, self.modes)

