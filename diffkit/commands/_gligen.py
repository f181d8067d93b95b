"""``diffkit sample --checkpoint GLIGEN_FOLDER --gligen-phrases P ... --gligen-boxes x0,y0,x1,y1 ...
[--gligen-images PNG ...] [--gligen-beta F]``: StableDiffusionGLIGENPipeline's (and StableDiffusionGLIGENTextImage
Pipeline's) ``gligen_phrases``, ``gligen_boxes``, ``gligen_images`` and ``gligen_scheduled_sampling_beta``
(:mod:`diffkit.interop.gligen`, Li et al. 2023): the flags, their checks before anything loads, and the
``text_to_image`` keyword they become."""
from __future__ import annotations

from pathlib import Path

from ..errors import DiffkitError
from ._common import path_arg

FLAGS = (("--gligen-phrases", "gligen_phrases"), ("--gligen-boxes", "gligen_boxes"),
         ("--gligen-images", "gligen_images"), ("--gligen-beta", "gligen_beta"))


def add_gligen_flags(parser) -> None:
    g = parser.add_argument_group("GLIGEN folders: grounded generation (StableDiffusionGLIGENPipeline; "
                                  "docs/interop.md)")
    g.add_argument("--gligen-phrases", nargs="+", metavar="TEXT",
                   help="the objects' phrases, one per --gligen-boxes box (the pipeline's gligen_phrases; at most 30)")
    g.add_argument("--gligen-boxes", nargs="+", metavar="X0,Y0,X1,Y1",
                   help="each object's box as fractions of the width and height in [0, 1], x0 < x1, y0 < y1 (the "
                        "pipeline's gligen_boxes), in the order of --gligen-phrases")
    g.add_argument("--gligen-images", nargs="+", type=path_arg, metavar="PNG",
                   help="text-image GLIGEN folders (StableDiffusionGLIGENTextImagePipeline): one image per box, its "
                        "content grounded there (gligen_images; with or without --gligen-phrases)")
    g.add_argument("--gligen-beta", type=float, metavar="F",
                   help="the fraction of the steps (the first, noisiest) that are grounded: step i of N iff i < "
                        "int(N F) (gligen_scheduled_sampling_beta; default 0.3, on a text-image folder 1, as its "
                        "pipeline never turns grounding off)")


def parse_box(text: str) -> list:
    """``"x0,y0,x1,y1"`` as 4 floats (checked further by :func:`~diffkit.interop.gligen.check_grounding`)."""
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise DiffkitError(f"--gligen-boxes {text!r} is not allowed; give x0,y0,x1,y1 (4 numbers in [0, 1])")
    return values


def gligen_options(args, checkpoint) -> dict:
    """``{"gligen": Grounding}`` for a GLIGEN folder ({} for any other checkpoint without the flags); one line for
    the flags on another checkpoint, a GLIGEN folder without phrases and boxes, bad boxes or phrases, a beta
    outside [0, 1], or an option StableDiffusionGLIGENPipeline does not have."""
    from ..interop.gligen import (PIPELINE, TEXT_IMAGE, Grounding, is_gligen_folder, refuse_with_gligen,
                                  unet_attention_type)
    from ..interop.lcm import is_lcm_folder
    given = {flag: getattr(args, key, None) for flag, key in FLAGS if getattr(args, key, None) is not None}
    gligen = checkpoint is not None and is_gligen_folder(checkpoint)
    if not gligen:
        if given:
            raise DiffkitError(f"{next(iter(given))} applies to a GLIGEN folder ({PIPELINE}: a UNet with "
                               f"attention_type='gated'); {checkpoint} is not one")
        return {}
    images = given.get("--gligen-images")
    if images is not None and unet_attention_type(checkpoint) != TEXT_IMAGE:
        raise DiffkitError(f"--gligen-images needs a text-image GLIGEN folder (a UNet with attention_type="
                           f"'{TEXT_IMAGE}'); {checkpoint} grounds phrases only")
    if ("--gligen-phrases" not in given and images is None) or "--gligen-boxes" not in given:
        raise DiffkitError(f"{checkpoint} is a GLIGEN folder ({PIPELINE}): give --gligen-phrases TEXT ... and "
                           f"--gligen-boxes X0,Y0,X1,Y1 ... (one box per phrase)")
    for image in images or []:
        if not Path(image).is_file():
            raise DiffkitError(f"--gligen-images {image} is not a file; give one image file per box")
    grounding = Grounding(given.get("--gligen-phrases"), [parse_box(box) for box in given["--gligen-boxes"]],
                          given.get("--gligen-beta"), images)
    refused = {flag: getattr(args, key, None) for flag, key in (
        ("--controlnet", "controlnets"), ("--t2i-adapter", "t2i_adapters"), ("--ip-adapter", "ip_adapter"),
        ("--pag-scale", "pag_scale"), ("--sag-scale", "sag_scale"), ("--panorama", "panorama"),
        ("--scheduler", "scheduler"), ("--refiner", "refiner"))}
    refuse_with_gligen(grounding, {**refused, "an LCMScheduler folder": is_lcm_folder(checkpoint)})
    return {"gligen": grounding}


__all__ = ["add_gligen_flags", "gligen_options", "parse_box"]
