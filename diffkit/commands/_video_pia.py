"""``diffkit video --checkpoint PIA_FOLDER --image PNG --prompt TEXT [--motion-scale M] [--strength S]``: PIA
folders (``PIAPipeline``) driven by :func:`diffkit.interop.pia.image_to_video` (its ``VIDEO_KINDS`` line;
docs/interop/pia.md)."""
from __future__ import annotations

from ._video_animatediff import PAG_DESTS, AnimateDiffKind
from ._video_animatediff_controlnet import CONTROL_DESTS


class PIAKind(AnimateDiffKind):
    """A ``PIAPipeline`` folder: AnimateDiff's flags and checks (16 frames of 512 x 512, 50 steps of the folder's
    scheduler, CFG s = 7.5, ``--clip-skip``, ``--lora``) with ``--image`` (each video's first frame),
    ``--motion-scale`` (0..8, default 0) and ``--strength`` (default 1); 10 fps as the AnimateDiff kind."""

    label = "PIA"
    pipelines = ("PIAPipeline",)
    takes = AnimateDiffKind.takes - CONTROL_DESTS - PAG_DESTS | {"images", "motion_scale", "strength"}
    needs_image = True

    def check_folder(self, directory) -> None:
        from ..interop.pia import check_pia_folder
        check_pia_folder(directory)

    def check_request(self, args) -> None:
        """:class:`AnimateDiffKind`'s, a ``--motion-scale`` of PIA's table and a strength that keeps a step."""
        from ..errors import DiffkitError
        from ..interop.animatediff import ANIMATEDIFF_STEPS
        from ..interop.pia import PIA_STRENGTH, check_motion_scale
        from .video import check_strength
        if args.motion_scale is not None:
            try:
                check_motion_scale(args.motion_scale)
            except DiffkitError as err:
                raise DiffkitError(f"--motion-scale {args.motion_scale}: {err}") from None
        super().check_request(args)
        check_strength(args, ANIMATEDIFF_STEPS, PIA_STRENGTH)

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.pia import load_pia
        return load_pia(directory, device, progress=progress, lora=lora)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.pia import image_to_video
        options["motion_scale"] = options.pop("motion_scale", None) or 0
        return image_to_video(model, images, prompts, seed=seed, progress=progress, output_range="-1,1", **options)


def add_pia_flags(p) -> None:
    """``--motion-scale`` in its own group of ``diffkit video``."""
    group = p.add_argument_group("PIA")
    group.add_argument("--motion-scale", type=int, metavar="M",
                       help="PIA folders: the row of PIA's inter-frame affinity table, 0-2 small to large motion, "
                            "3-5 loops, 6-8 style transfer (default 0)")


KIND = PIAKind()
