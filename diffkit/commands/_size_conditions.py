"""``diffkit sample --original-size H,W [--target-size H,W] [--crops-coords-top-left TOP,LEFT]``: SD-XL's size and
crop conditions (Podell et al. 2023, "SDXL", Sec. 2.2, "micro-conditioning"), in pixels, as the HunyuanDiT and
CogView4 (and CogView3-Plus) pipelines take them under diffusers' names: ``HunyuanDiTPipeline`` (and its ControlNet
/ PAG variants) ``original_size`` (default 1024, 1024), ``target_size`` (default the drawn height, width) and
``crops_coords_top_left`` (default 0, 0) (:mod:`diffkit.interop.hunyuan_dit`); ``CogView4Pipeline`` /
``CogView4ControlPipeline`` / ``CogView3PlusPipeline`` ``original_size`` (default the drawn height, width) and
``crops_coords_top_left``, their target size always the drawn one (:mod:`diffkit.interop.cogview4`,
:mod:`diffkit.interop.cogview3plus`).

SD-XL and Kolors folders (``diffkit sample`` and ``diffkit edit``): the three and diffusers'
``negative_original_size`` / ``negative_target_size`` / ``negative_crops_coords_top_left`` (``--negative-...``), the
``micro_conditioning`` of :meth:`diffkit.interop.sd_xl.StableDiffusionXL.prompt_guidance` (defaults: the drawn or
edited size, (0, 0), that size; the null half's time ids the prompt's). Text to image (StableDiffusionXLPipeline,
KolorsPipeline and its img2img pipeline) takes the negatives as a pair; SD-XL img2img / inpainting either alone,
with the prompt's crop (:func:`edit_size_conditions`). An SD-XL refiner (``requires_aesthetics_score``) has no target
size: ``--aesthetic-score`` instead (:mod:`._refiner`); a ``--refiner`` half takes what applies to it
(:func:`refiner_size_conditions`). Checked from the folders' JSON before any weight is read: another checkpoint,
``--target-size`` on a CogView folder or a refiner, negatives where the pipeline has none, and a HunyuanDiT
transformer that ignores them (``use_style_cond_and_image_meta_size`` false, Hunyuan-DiT >= 1.2): one line."""
from __future__ import annotations

import argparse
from typing import Optional

from ..errors import DiffkitError

FLAGS = {"original_size": "--original-size", "target_size": "--target-size",
         "crops_coords_top_left": "--crops-coords-top-left", "negative_original_size": "--negative-original-size",
         "negative_target_size": "--negative-target-size",
         "negative_crops_coords_top_left": "--negative-crops-coords-top-left"}
_SD_XL = tuple(FLAGS)  # StableDiffusionXL(Img2Img|Inpaint)Pipeline, KolorsPipeline, KolorsImg2ImgPipeline
KINDS = {"HunyuanDiT": ("original_size", "target_size", "crops_coords_top_left"),  # the pipelines' arguments
         "CogView4": ("original_size", "crops_coords_top_left"),
         "CogView3Plus": ("original_size", "crops_coords_top_left"),
         "SD-XL": _SD_XL, "Kolors": _SD_XL,
         "SD-XL refiner": ("original_size", "crops_coords_top_left", "negative_original_size",
                           "negative_crops_coords_top_left")}
_NO_NEGATIVES = "has no negative size conditions"
WHY = {"HunyuanDiT": "HunyuanDiTPipeline " + _NO_NEGATIVES,
       "CogView4": "CogView4Pipeline's target size is the drawn one (give --height / --width); it " + _NO_NEGATIVES,
       "CogView3Plus": "CogView3PlusPipeline's target size is the drawn one (give --height / --width); it "
                       + _NO_NEGATIVES,
       "SD-XL refiner": "its UNet (requires_aesthetics_score) takes --aesthetic-score / --negative-aesthetic-score "
                        "instead of a target size"}


def folder_kind(checkpoint) -> Optional[str]:
    """The :data:`KINDS` label of ``checkpoint`` from its JSON (None: a folder of another kind, or no folder)."""
    from ..interop.kolors import is_kolors_folder
    from ..interop.pixart import masked_text_folder
    from ..interop.sd_xl import _index, is_sd_xl_folder
    if checkpoint is None:
        return None
    label = masked_text_folder(checkpoint)
    if label is None and is_kolors_folder(checkpoint):
        return "Kolors"
    if label is None and is_sd_xl_folder(checkpoint):
        index = _index(checkpoint) or {}
        refiner = index.get("requires_aesthetics_score") or not (index.get("text_encoder") or [None])[0]
        return "SD-XL refiner" if refiner else "SD-XL"
    return label


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


def add_size_condition_flags(group, edit: bool = False) -> None:
    """The flags, into ``group`` (``diffkit sample``'s guidance group; ``edit``: ``diffkit edit``'s, SD-XL and Kolors
    folders only)."""
    where = "SD-XL / Kolors" if edit else "HunyuanDiT / CogView4 / CogView3-Plus / SD-XL / Kolors"
    group.add_argument("--original-size", type=pixel_pair, metavar="H,W",
                       help=f"{where} folders: the original_size condition (SD-XL micro-conditioning; default "
                            f"HunyuanDiT 1024,1024, the others the drawn or edited --height,--width)")
    group.add_argument("--target-size", type=pixel_pair, metavar="H,W",
                       help="HunyuanDiT / SD-XL / Kolors folders: the target_size condition (default the drawn "
                            "--height,--width)")
    group.add_argument("--crops-coords-top-left", type=pixel_pair, metavar="TOP,LEFT",
                       help=f"{where} folders: the crops_coords_top_left condition (default 0,0)")
    for name in ("original-size", "target-size", "crops-coords-top-left"):
        group.add_argument(f"--negative-{name}", type=pixel_pair, metavar="TOP,LEFT" if "crops" in name else "H,W",
                           help=f"SD-XL / Kolors folders: the null half's {name.replace('-', '_')} (diffusers' "
                                f"negative_{name.replace('-', '_')}; docs/interop.md)")


def size_condition_request(args, checkpoint) -> Optional[dict]:
    """The ``text_to_image`` options of the flags given (None without any), checked by
    :func:`check_size_conditions`; on an SD-XL / Kolors folder the negative sizes come as a pair (the text-to-image
    pipelines ignore one alone)."""
    given = _given(args)
    if not given:
        return None
    label = folder_kind(checkpoint)
    check_size_conditions(given, checkpoint, label)
    pair = [FLAGS[name] for name in ("negative_original_size", "negative_target_size") if name in given]
    if label in ("SD-XL", "Kolors") and len(pair) == 1:
        raise DiffkitError(f"{pair[0]} needs --negative-original-size and --negative-target-size together in "
                           f"diffkit sample ({label}'s text-to-image pipeline ignores one alone)")
    return given


def _given(args) -> dict:
    return {name: getattr(args, name, None) for name in FLAGS if getattr(args, name, None) is not None}


def edit_size_conditions(args) -> dict:
    """``diffkit edit``'s flags ({} without any) on an SD-XL (base or refiner) or Kolors ``--checkpoint``, as the
    img2img / inpainting pipelines take them (:meth:`~diffkit.interop.sd_xl.StableDiffusionXL.prompt_guidance` with
    ``img2img``); one line for another folder and, on an SD-XL base folder, for --negative-crops-coords-top-left
    (StableDiffusionXLImg2ImgPipeline / InpaintPipeline ignore it there), and for negative sizes with an
    InstructPix2Pix folder or --controlnet with --mask (those pipelines take none)."""
    given = _given(args)
    if not given:
        return {}
    label = folder_kind(args.checkpoint)
    if label not in ("SD-XL", "SD-XL refiner", "Kolors"):
        raise DiffkitError(f"{FLAGS[next(iter(given))]} in diffkit edit applies to an SD-XL or Kolors folder (their "
                           f"img2img pipelines' size conditions); {args.checkpoint} is not one")
    check_size_conditions(given, args.checkpoint, label)
    negatives = [FLAGS[name] for name in given if name.startswith("negative_")]
    if label == "SD-XL" and "negative_crops_coords_top_left" in given:
        raise DiffkitError(f"--negative-crops-coords-top-left does not apply to {args.checkpoint} in diffkit edit: "
                           f"StableDiffusionXLImg2ImgPipeline / InpaintPipeline ignore it on a UNet without aesthetic "
                           f"scores (the null half takes --crops-coords-top-left)")
    from ..interop.sd_instruct_pix2pix import is_instruct_pix2pix_folder
    for why, applies in (("an InstructPix2Pix folder (StableDiffusionXLInstructPix2PixPipeline",
                          is_instruct_pix2pix_folder(args.checkpoint)),
                         ("--controlnet with --mask (StableDiffusionXLControlNet(Union)InpaintPipeline",
                          getattr(args, "controlnets", None) and args.mask is not None)):
        if negatives and applies:
            raise DiffkitError(f"{negatives[0]} does not apply to {why} takes no negative size conditions); "
                               f"--original-size, --target-size and --crops-coords-top-left do")
    return given


def refiner_size_conditions(given: Optional[dict], refiner) -> dict:
    """The size conditions ``given`` to the base that a ``--refiner`` folder's half takes too (as one passes the same
    ones to both pipelines of diffusers' hand-over): all of them on a base-style refiner (its img2img pipeline's
    rule: no --negative-crops-coords-top-left, one line), the target sizes dropped on one with aesthetic scores
    (its UNet has no target size; --aesthetic-score is its own)."""
    if not given:
        return {}
    if folder_kind(refiner) == "SD-XL refiner":
        return {key: value for key, value in given.items() if key in KINDS["SD-XL refiner"]}
    if "negative_crops_coords_top_left" in given:
        raise DiffkitError(f"--negative-crops-coords-top-left does not go with --refiner {refiner}: its img2img "
                           f"pipeline ignores it on a UNet without aesthetic scores")
    return dict(given)


def check_size_conditions(given: dict, checkpoint, label: Optional[str] = None) -> None:
    """One line for size conditions ``given`` ({name: pair}) that ``checkpoint`` (its folder kind ``label`` where
    known, :func:`folder_kind`) does not take (module docstring)."""
    if not given:
        return
    from pathlib import Path

    from ..errors import read_json_object
    first = FLAGS[next(iter(given))]
    if label is None and checkpoint is not None:
        label = folder_kind(checkpoint)
    if label not in KINDS:
        what = "this run has no --checkpoint" if checkpoint is None else f"{checkpoint} is not one"
        raise DiffkitError(f"{first} applies to a HunyuanDiT, CogView4, CogView3-Plus, SD-XL or Kolors folder (their "
                           f"pipelines' SD-XL size conditions); {what}")
    other = [FLAGS[name] for name in given if name not in KINDS[label]]
    if other:
        raise DiffkitError(f"{other[0]} does not apply to {'an' if label.startswith('SD') else 'a'} {label} folder "
                           f"({checkpoint}): {WHY[label]}; it takes "
                           f"{', '.join(FLAGS[name] for name in KINDS[label])}")
    if label == "HunyuanDiT" and not read_json_object(Path(checkpoint) / "transformer" / "config.json",
                                                      "transformer config").get(
            "use_style_cond_and_image_meta_size", True):
        raise DiffkitError(f"{first} does not apply to {checkpoint}: its transformer has "
                           f"use_style_cond_and_image_meta_size=false (Hunyuan-DiT >= 1.2), which ignores the size "
                           f"conditions")
