"""``diffkit sample --original-size H,W [--target-size H,W] [--crops-coords-top-left TOP,LEFT]``: SD-XL's size and
crop conditions (Podell et al. 2023, "SDXL", Sec. 2.2, "micro-conditioning"), in pixels, as the HunyuanDiT and
CogView4 (and CogView3-Plus) pipelines take them under diffusers' names: ``HunyuanDiTPipeline`` (and its ControlNet
/ PAG variants) ``original_size`` (default 1024, 1024), ``target_size`` (default the drawn height, width) and
``crops_coords_top_left`` (default 0, 0) (:mod:`diffkit.interop.hunyuan_dit`); ``CogView4Pipeline`` /
``CogView4ControlPipeline`` / ``CogView3PlusPipeline`` ``original_size`` (default the drawn height, width) and
``crops_coords_top_left``, their target size always the drawn one (:mod:`diffkit.interop.cogview4`,
:mod:`diffkit.interop.cogview3plus`). Checked from the folder's JSON before any weight is read: another checkpoint,
``--target-size`` on a CogView folder, and a HunyuanDiT transformer that ignores them
(``use_style_cond_and_image_meta_size`` false, Hunyuan-DiT >= 1.2): one line."""
from __future__ import annotations

import argparse
from typing import Optional

from ..errors import DiffkitError

FLAGS = {"original_size": "--original-size", "target_size": "--target-size",
         "crops_coords_top_left": "--crops-coords-top-left"}
KINDS = {"HunyuanDiT": ("original_size", "target_size", "crops_coords_top_left"),  # the pipelines' arguments
         "CogView4": ("original_size", "crops_coords_top_left"),
         "CogView3Plus": ("original_size", "crops_coords_top_left")}


def pixel_pair(text: str) -> tuple:
    """An argparse type: two integers >= 0 separated by a comma (``1024,768``: height, width or top, left)."""
    from ._common import int_list
    try:
        pair = int_list(text)
    except argparse.ArgumentTypeError:
        pair = None
    if pair is None or len(pair) != 2 or min(pair) < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not two integers >= 0 (pixels), e.g. 1024,768")
    return tuple(pair)


pixel_pair.__name__ = "pixel pair"


def add_size_condition_flags(group) -> None:
    """The flags, into ``group`` (``diffkit sample``'s guidance group)."""
    group.add_argument("--original-size", type=pixel_pair, metavar="H,W",
                       help="HunyuanDiT / CogView4 / CogView3-Plus folders: the original_size condition (SD-XL micro-"
                            "conditioning; default HunyuanDiT 1024,1024, CogView the drawn --height,--width)")
    group.add_argument("--target-size", type=pixel_pair, metavar="H,W",
                       help="HunyuanDiT folders: the target_size condition (default the drawn --height,--width)")
    group.add_argument("--crops-coords-top-left", type=pixel_pair, metavar="TOP,LEFT",
                       help="HunyuanDiT / CogView4 / CogView3-Plus folders: the crops_coords_top_left condition "
                            "(default 0,0)")


def size_condition_request(args, checkpoint) -> Optional[dict]:
    """The ``text_to_image`` options of the flags given (None without any), checked by
    :func:`check_size_conditions`."""
    given = {name: getattr(args, name, None) for name in FLAGS if getattr(args, name, None) is not None}
    if not given:
        return None
    check_size_conditions(given, checkpoint)
    return given


def check_size_conditions(given: dict, checkpoint, label: Optional[str] = None) -> None:
    """One line for size conditions ``given`` ({name: pair}) that ``checkpoint`` (its folder kind ``label`` where
    known) does not take (module docstring)."""
    if not given:
        return
    from pathlib import Path

    from ..errors import read_json_object
    from ..interop.pixart import masked_text_folder
    first = FLAGS[next(iter(given))]
    if label is None and checkpoint is not None:
        label = masked_text_folder(checkpoint)
    if label not in KINDS:
        what = "this run has no --checkpoint" if checkpoint is None else f"{checkpoint} is not one"
        raise DiffkitError(f"{first} applies to a HunyuanDiT, CogView4 or CogView3-Plus folder (their pipelines' "
                           f"SD-XL-style size conditions); {what}")
    other = [FLAGS[name] for name in given if name not in KINDS[label]]
    if other:
        raise DiffkitError(f"{other[0]} does not apply to a {label} folder ({checkpoint}): {label}Pipeline's "
                           f"target size is the drawn one (give --height / --width); it takes --original-size, "
                           f"--crops-coords-top-left")
    if label == "HunyuanDiT" and not read_json_object(Path(checkpoint) / "transformer" / "config.json",
                                                      "transformer config").get(
            "use_style_cond_and_image_meta_size", True):
        raise DiffkitError(f"{first} does not apply to {checkpoint}: its transformer has "
                           f"use_style_cond_and_image_meta_size=false (Hunyuan-DiT >= 1.2), which ignores the size "
                           f"conditions")
