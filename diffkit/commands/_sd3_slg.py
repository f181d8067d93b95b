"""``diffkit sample --slg-layers 7,8,9 [--slg-scale S --slg-start F --slg-stop F]`` on an SD3 folder: the
skip-layer guidance of StableDiffusion3Pipeline (:mod:`diffkit.interop.sd3_slg`), checked before any weight is read
(the block count from the transformer's config.json)."""
from __future__ import annotations

from typing import Optional

from ..errors import DiffkitError

FLAGS = {"slg_layers": "--slg-layers", "slg_scale": "--slg-scale", "slg_start": "--slg-start",
         "slg_stop": "--slg-stop"}


def add_slg_flags(group) -> None:
    """The flags, into ``group`` (``diffkit sample``'s guidance group)."""
    from ..interop.sd3_slg import SLG_SCALE, SLG_START, SLG_STOP
    group.add_argument("--slg-layers", metavar="J,...",
                       help="SD3 folders: skip-layer guidance (StableDiffusion3Pipeline's skip_guidance_layers): "
                            "u_cfg + S (u_c - u_c with transformer blocks J skipped), comma-separated block indices "
                            "(e.g. 7,8,9 for SD3.5 Medium); needs --guidance-scale > 1 (diffusers convention)")
    group.add_argument("--slg-scale", type=float, metavar="S",
                       help=f"with --slg-layers: S >= 0 (default {SLG_SCALE}, skip_layer_guidance_scale)")
    group.add_argument("--slg-start", type=float, metavar="F",
                       help=f"with --slg-layers: guide at the steps i > N F of N (default {SLG_START})")
    group.add_argument("--slg-stop", type=float, metavar="F",
                       help=f"with --slg-layers: ... and i < N F (default {SLG_STOP}; start < stop)")


def slg_request(args, checkpoint) -> Optional[dict]:
    """The ``text_to_image`` options of the flags (``skip_guidance_layers`` and, where given, the scale / start /
    stop), None without them; a one-line DiffkitError for a checkpoint that is not an SD3 folder, a flag without
    ``--slg-layers``, layers that are not block indices of the folder's transformer, start >= stop."""
    from ..errors import read_json_object
    from ..interop.sd3 import is_sd3_folder
    from ..interop.sd3_slg import SLG_SCALE, SLG_START, SLG_STOP, check_slg
    given = {dest: getattr(args, dest, None) for dest in FLAGS if getattr(args, dest, None) is not None}
    if not given:
        return None
    first = FLAGS[next(iter(given))]
    if checkpoint is None or not is_sd3_folder(checkpoint):
        what = "this run has no --checkpoint" if checkpoint is None else f"{checkpoint} is not one"
        raise DiffkitError(f"{first} applies to an SD3 folder (StableDiffusion3Pipeline's skip-layer guidance); "
                           f"{what}")
    if "slg_layers" not in given:
        raise DiffkitError(f"{first} goes with --slg-layers J,... (the transformer blocks skip-layer guidance skips)")
    try:
        layers = [int(j) for j in given["slg_layers"].split(",")]
    except ValueError:
        raise DiffkitError(f"--slg-layers {given['slg_layers']!r} is not allowed; give comma-separated transformer "
                           f"block indices, e.g. 7,8,9") from None
    from pathlib import Path
    config = read_json_object(Path(checkpoint) / "transformer" / "config.json", "transformer config")
    scale, start, stop = (given.get(k, d) for k, d in (("slg_scale", SLG_SCALE), ("slg_start", SLG_START),
                                                        ("slg_stop", SLG_STOP)))
    check_slg(layers, scale, start, stop, int(config.get("num_layers", 18)))
    return {"skip_guidance_layers": layers, "skip_layer_guidance_scale": scale, "skip_layer_guidance_start": start,
            "skip_layer_guidance_stop": stop}


def check_slg_steps(slg: Optional[dict], steps: Optional[int], guidance_scale: float, convention: str) -> None:
    """Before loading: the window takes a step of the pipeline's ``steps`` (default 28) and guidance is on."""
    if not slg:
        return
    from ..guidance import guidance_weight
    from ..interop.sd3 import SD3_PIPELINE_STEPS
    from ..interop.sd3_slg import slg_steps
    if guidance_weight(guidance_scale, convention) <= 0:
        raise DiffkitError(f"--slg-layers needs classifier-free guidance on: --guidance-scale > 1 in the diffusers "
                           f"convention (here {guidance_scale:g}, {convention}), as StableDiffusion3Pipeline's")
    slg_steps(steps or SD3_PIPELINE_STEPS, slg["skip_layer_guidance_start"], slg["skip_layer_guidance_stop"])
