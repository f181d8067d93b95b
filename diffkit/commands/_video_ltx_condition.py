"""``diffkit video --checkpoint LTX_CONDITION_FOLDER --prompt TEXT [--condition FILE --condition-frame N ...]``: an
``LTXConditionPipeline`` folder (:func:`diffkit.interop.ltx_condition.condition_to_video`; ``KIND``). Each
``--condition`` (an image, or a video: an animation, a movie or a folder of frame PNGs) conditions every video at its
``--condition-frame`` with its ``--condition-strength``; ``--image-cond-noise-scale`` (the "LTX-Video conditions"
group of :func:`diffkit.commands.video.register`), and the LTX-Video group's flags; docs/interop/ltx_condition.md."""
from __future__ import annotations

from ._video_ltx import LTXKind

CONDITION_FLAGS = ("condition", "condition_frame", "condition_strength", "image_cond_noise_scale")


def add_ltx_condition_flags(parser) -> None:
    """The "LTX-Video conditions" argument group of ``diffkit video``."""
    from ._common import int_in, non_negative_float, path_arg, unit_float
    group = parser.add_argument_group("LTX-Video conditions")
    group.add_argument("--condition", action="append", type=path_arg, metavar="FILE",
                       help="LTXConditionPipeline folders: a condition of every video, an image (PNG ...) or a "
                            "video (animated PNG / WebP / GIF, a movie, a folder of frame PNGs); repeat for several")
    group.add_argument("--condition-frame", action="append", type=int_in(0, 1_000_000), metavar="N",
                       help="the frame index of each --condition, in their order (default 0: give it once per "
                            "--condition where there are several)")
    group.add_argument("--condition-strength", action="append", type=unit_float, metavar="S",
                       help="the strength in [0, 1] of each --condition, in their order, or once for all (default 1)")
    group.add_argument("--image-cond-noise-scale", type=non_negative_float, metavar="NU",
                       help="noise NU s^2 added to the strength-1 conditions' latents before each step (default 0.15)")


def read_conditions(args) -> list:
    """[(frames (T, 3, H, W) in [-1, 1], frame index, strength)] of ``--condition`` / ``--condition-frame`` /
    ``--condition-strength``; one line for counts that do not pair up, a frame outside the video, a bad file."""
    from ..errors import DiffkitError
    from ..interop.ltx import LTX_FRAMES
    from ..video import read_video
    files, frames = args.condition or [], args.condition_frame
    strengths = args.condition_strength or [1.0]
    if frames is not None and len(frames) != len(files):
        raise DiffkitError(f"--condition-frame is given {len(frames)} times for {len(files)} --condition; give it "
                           f"once per --condition, in their order")
    if frames is None and len(files) > 1:
        raise DiffkitError(f"{len(files)} --condition files need --condition-frame N once each (their frame indices)")
    if len(strengths) not in (1, len(files)) or (args.condition_strength and not files):
        raise DiffkitError(f"--condition-strength is given {len(strengths)} times for {len(files)} --condition; give "
                           f"it once (every condition) or once per --condition")
    if args.image_cond_noise_scale is not None and not files:
        raise DiffkitError("--image-cond-noise-scale applies with --condition FILE (it noises the conditions); drop it")
    total = LTX_FRAMES if args.num_frames is None else args.num_frames
    conditions = []
    for i, file in enumerate(files):
        index = 0 if frames is None else frames[i]
        if index >= total:
            raise DiffkitError(f"--condition-frame {index} is not allowed for {total}-frame videos; give 0 .. "
                               f"{total - 1}")
        try:
            video = read_video(file)
        except DiffkitError as err:
            raise DiffkitError(f"--condition {str(file)!r}: {err}") from None
        conditions.append((video, index, strengths[0] if len(strengths) == 1 else strengths[i]))
    return conditions


class LTXConditionKind(LTXKind):
    """``LTXConditionPipeline`` folders: text-to-video with optional image / video conditions at frame indices,
    161 frames of 512 x 704 by default, at 25 fps."""

    label = "LTX-Video condition"
    pipelines = ("LTXConditionPipeline",)
    takes = LTXKind.takes | set(CONDITION_FLAGS)

    def check_folder(self, directory) -> None:
        from ..interop.ltx_condition import check_condition_folder
        check_condition_folder(directory)

    def check_request(self, args) -> None:
        super().check_request(args)
        read_conditions(args)

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.ltx_condition import load_ltx_condition
        return load_ltx_condition(directory, device, progress=progress, lora=lora)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, condition=None,
                 condition_frame=None, condition_strength=None, **options):
        from argparse import Namespace

        from ..interop.ltx_condition import condition_to_video
        conditions = read_conditions(Namespace(condition=condition, condition_frame=condition_frame,
                                               condition_strength=condition_strength, num_frames=options.get(
                                                   "num_frames"), image_cond_noise_scale=None))
        return condition_to_video(model, prompts, conditions, seed=seed, progress=progress, **options)


KIND = LTXConditionKind()
