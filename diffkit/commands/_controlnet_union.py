"""``--control-mode NAME|INDEX`` of ``diffkit sample`` / ``diffkit edit``: the control type of each
``--control-image`` of an SD-XL ControlNet-Union folder (:mod:`diffkit.interop.controlnet_union`), diffusers'
``control_mode`` of StableDiffusionXLControlNetUnionPipeline / ...Img2ImgPipeline / ...InpaintPipeline. One union
ControlNet takes one or more control images, a mode each (``--controlnet-scale`` and the guidance window: one, or one
per image); several take one image and one mode each (``MultiControlNetUnionModel``)."""
from __future__ import annotations

from typing import Optional

from ..errors import DiffkitError


def add_control_mode_flag(group) -> None:
    group.add_argument("--control-mode", dest="control_modes", action="append", metavar="NAME|INDEX",
                       help="the control type of each --control-image of a ControlNet-Union (SD-XL "
                            "ControlNetUnionModel, e.g. xinsir's controlnet-union-sdxl-1.0): openpose, depth, hed "
                            "(pidi, scribble, ted), canny (lineart, anime_lineart, mlsd), normal, segment, tile, "
                            "repaint, or an index; once per --control-image, in the same order")


def union_modes(args, checkpoint, kind: Optional[str], folders: list, images: list) -> Optional[list]:
    """The mode indices of the --control-mode flags (one per --control-image) where the --controlnet folders are
    ControlNet-Unions; None for plain ControlNets. One line for --control-mode with other ControlNets (or an SD3 /
    FLUX.1 folder), union and plain folders mixed, a union on an SD 1.x / 2.x folder, a missing or unknown mode,
    counts that do not fit, an index past the folder's ``num_control_type``, and what the union pipelines lack:
    guess mode and perturbed-attention guidance."""
    from ..interop.controlnet import check_controlnet_folder
    from ..interop.controlnet_union import MODES_ALLOWED, NO_GUESS_MODE, UNION_CLASS, check_modes, control_mode_index
    from ..interop.sd_xl import is_sd_xl_folder
    modes = list(getattr(args, "control_modes", None) or [])
    if kind:
        if modes:
            raise DiffkitError(f"--control-mode applies to SD-XL ControlNet-Union folders; diffkit does not take "
                               f"control modes for {kind} ControlNets")
        return None
    configs = [check_controlnet_folder(folder) for folder in folders]
    union = [config["_class_name"] == UNION_CLASS for config in configs]
    if not any(union):
        if modes:
            raise DiffkitError(f"--control-mode applies to a ControlNet-Union folder (ControlNetUnionModel); "
                               f"--controlnet {folders[0]} holds a ControlNetModel")
        return None
    if not all(union):
        union_folder, plain_folder = folders[union.index(True)], folders[union.index(False)]
        raise DiffkitError(f"--controlnet {union_folder} is a ControlNet-Union but {plain_folder} a plain "
                           f"ControlNetModel; they do not mix (StableDiffusionXLControlNetUnionPipeline); give one "
                           f"kind")
    if not is_sd_xl_folder(checkpoint):
        raise DiffkitError(f"--controlnet {folders[0]} is a ControlNet-Union, which applies to SD-XL folders "
                           f"(StableDiffusionXLControlNetUnionPipeline); {checkpoint} is not one")
    if not modes:
        raise DiffkitError(f"--controlnet {folders[0]} is a ControlNet-Union: give --control-mode NAME|INDEX for each "
                           f"--control-image; allowed: {MODES_ALLOWED}")
    indices = [control_mode_index(mode) for mode in modes]
    check_modes(indices, len(images), configs, [f"--controlnet {folder}" for folder in folders])
    if getattr(args, "guess_mode", False) or any(config.get("global_pool_conditions") for config in configs):
        raise DiffkitError(NO_GUESS_MODE)
    if getattr(args, "pag_scale", None):
        raise DiffkitError("--pag-scale with a ControlNet-Union is not supported (diffusers has no union PAG "
                           "pipeline); drop one of them")
    return indices
