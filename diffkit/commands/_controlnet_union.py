"""``--control-mode NAME|INDEX`` of ``diffkit sample`` / ``diffkit edit``: the control type of each
``--control-image`` of a ControlNet-Union folder (:mod:`diffkit.interop.controlnet_union`), diffusers'
``control_mode``: on an SD-XL folder a ``ControlNetUnionModel`` (StableDiffusionXLControlNetUnionPipeline /
...Img2ImgPipeline / ...InpaintPipeline), on a FLUX.1 folder a ``FluxControlNetModel`` with ``num_mode``
(FluxControlNetPipeline / FluxControlNetImg2ImgPipeline / FluxControlNetInpaintPipeline). One union ControlNet takes
one or more control images, a mode each (``--controlnet-scale`` and the guidance window: one, or one per image);
several take one image and one mode each (``MultiControlNetUnionModel`` / ``FluxMultiControlNetModel``; on FLUX a
plain ControlNet beside a union one takes ``none``)."""
from __future__ import annotations

from typing import Optional

from ..errors import DiffkitError


def add_control_mode_flag(group) -> None:
    group.add_argument("--control-mode", dest="control_modes", action="append", metavar="NAME|INDEX",
                       help="the control type of each --control-image of a ControlNet-Union: SD-XL "
                            "ControlNetUnionModel (e.g. xinsir's controlnet-union-sdxl-1.0): openpose, depth, hed "
                            "(pidi, scribble, ted), canny (lineart, anime_lineart, mlsd), normal, segment, tile, "
                            "repaint; FLUX.1 FluxControlNetModel with num_mode (InstantX / Shakker-Labs "
                            "FLUX.1-dev ControlNet-Union): canny, tile, depth, blur, pose, gray, lq (low_quality), "
                            "none for a plain FLUX ControlNet beside it; or an index; once per --control-image, in "
                            "the same order")


def union_modes(args, checkpoint, kind: Optional[str], folders: list, images: list) -> Optional[list]:
    """The mode indices of the --control-mode flags (one per --control-image) where the --controlnet folders are
    ControlNet-Unions (SD-XL, or FLUX: ``kind`` "FLUX"); None for plain ControlNets. One line for --control-mode
    with other ControlNets (or an SD3 folder), SD-XL union and plain folders mixed, an SD-XL union on an SD 1.x /
    2.x folder, a missing or unknown mode, counts that do not fit, an index past the folder's mode count
    (``num_control_type`` / ``num_mode``), and what the SD-XL union pipelines lack: guess mode and
    perturbed-attention guidance."""
    from ..interop.controlnet import check_controlnet_folder, model_folder_config
    from ..interop.controlnet_union import (FLUX_UNION, NO_GUESS_MODE, SDXL_UNION, check_modes, mode_or_none,
                                            union_kind)
    from ..interop.sd_xl import is_sd_xl_folder
    modes = list(getattr(args, "control_modes", None) or [])
    if kind not in (None, "FLUX"):
        if modes:
            raise DiffkitError(f"--control-mode applies to SD-XL and FLUX.1 ControlNet-Union folders; diffkit does not "
                               f"take control modes for {kind} ControlNets")
        return None
    flux = kind == "FLUX"
    configs = [model_folder_config(folder, "--controlnet", "FluxControlNetModel") if flux else
               check_controlnet_folder(folder) for folder in folders]
    union = [union_kind(config) is not None for config in configs]
    if not any(union):
        if modes:
            union_class, plain = ("a FluxControlNetModel with num_mode", "FluxControlNetModel without num_mode") \
                if flux else ("ControlNetUnionModel", "ControlNetModel")
            raise DiffkitError(f"--control-mode applies to a ControlNet-Union folder ({union_class}); --controlnet "
                               f"{folders[0]} holds a {plain}")
        return None
    family = FLUX_UNION if flux else SDXL_UNION
    if not flux and not all(union):
        union_folder, plain_folder = folders[union.index(True)], folders[union.index(False)]
        raise DiffkitError(f"--controlnet {union_folder} is a ControlNet-Union but {plain_folder} a plain "
                           f"ControlNetModel; they do not mix (StableDiffusionXLControlNetUnionPipeline); give one "
                           f"kind")
    if not flux and not is_sd_xl_folder(checkpoint):
        raise DiffkitError(f"--controlnet {folders[0]} is a ControlNet-Union, which applies to SD-XL folders "
                           f"(StableDiffusionXLControlNetUnionPipeline); {checkpoint} is not one")
    if not modes:
        raise DiffkitError(f"--controlnet {folders[union.index(True)]} is a ControlNet-Union: give --control-mode "
                           f"NAME|INDEX for each --control-image; allowed: {family.allowed}")
    indices = [mode_or_none(mode, family) for mode in modes]
    check_modes(indices, len(images), configs, [f"--controlnet {folder}" for folder in folders])
    if flux:
        return indices
    if getattr(args, "guess_mode", False) or any(config.get("global_pool_conditions") for config in configs):
        raise DiffkitError(NO_GUESS_MODE)
    if getattr(args, "pag_scale", None):
        raise DiffkitError("--pag-scale with a ControlNet-Union is not supported (diffusers has no union PAG "
                           "pipeline); drop one of them")
    return indices
