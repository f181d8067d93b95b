"""``diffkit video --checkpoint WAN_VACE_FOLDER --prompt TEXT [--video FILE [--mask FILE]] [--reference-image PNG]``:
Wan VACE folders (``WanVACEPipeline``) driven by :func:`diffkit.interop.wan_vace.vace_to_video` (its ``VIDEO_KINDS``
line); ``diffkit sample`` / ``diffkit edit`` on such a folder: one line naming ``diffkit video``
(:func:`.video.refuse_video_folder`)."""
from __future__ import annotations

import math
from pathlib import Path

from ..interop.wan_vace import WAN_VACE_FPS
from ._video_wan import WanKind


class WanVACEKind(WanKind):
    """``WanVACEPipeline`` folders: a prompt with an optional control video (``--video``, setting the output's frames
    and size), its mask (``--mask``), reference images (``--reference-image``) and ``--conditioning-scale``; without
    a video 81 frames of 480 x 832; 50 steps of the folder's scheduler, CFG s = 5 by default, 16 fps; Wan
    text-to-video's flags and checks (:class:`._video_wan.WanKind`: ``--guidance-scale-2`` for Wan 2.2's two
    experts, ``--lora``)."""

    label = "Wan VACE"
    pipelines = ("WanVACEPipeline",)
    takes = WanKind.takes - {"images"} | {"videos", "mask", "reference_image", "conditioning_scale"}
    fps = WAN_VACE_FPS

    def check_folder(self, directory) -> None:
        from ..interop.wan_vace import check_wan_vace_folder
        check_wan_vace_folder(directory)

    def check_request(self, args) -> None:
        from ..errors import DiffkitError
        super().check_request(args)
        if args.mask is not None and not args.videos:
            raise DiffkitError("--mask needs --video (it marks the control video's pixels to regenerate); give "
                               "--video FILE too")
        if args.conditioning_scale is not None and not math.isfinite(args.conditioning_scale):
            raise DiffkitError(f"--conditioning-scale {args.conditioning_scale} is not allowed; give a finite number")
        reference_images(args.reference_image)

    def check_videos(self, args, videos: list) -> None:
        from ..errors import DiffkitError
        from .video import video_frames
        frames, sizes = video_frames(videos), sorted({tuple(v.shape[2:]) for v in videos})
        if len(sizes) > 1:
            raise DiffkitError(f"--video files of sizes {[f'{w}x{h}' for h, w in sizes]} are not allowed; give videos "
                               f"of one size (the output's)")
        (height, width), multiple = sizes[0], 16
        if frames % 4 != 1:
            raise DiffkitError(f"--video files of {frames} frames are not allowed; give 4 k + 1 frames (the Wan VAE's "
                               f"causal frames)")
        if height % multiple or width % multiple:
            raise DiffkitError(f"--video frames of {width}x{height} are not allowed; give multiples of {multiple} "
                               f"(WanVACEPipeline's check_inputs)")
        for flag, given, have in (("--frames", args.num_frames, frames), ("--height", args.height, height),
                                  ("--width", args.width, width)):
            if given is not None and given != have:
                raise DiffkitError(f"{flag} {given} is not allowed with --video: the output has the control video's "
                                   f"{frames} frames of {width}x{height}; leave {flag} out")
        if args.mask is not None:
            mask = read_mask(args.mask)
            if mask.shape != videos[0].shape:
                raise DiffkitError(f"--mask of {len(mask)} frames of {mask.shape[3]}x{mask.shape[2]} does not fit "
                                   f"--video's {frames} frames of {width}x{height}; give a mask video of the control "
                                   f"video's frames and size")

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.wan_vace import load_wan_vace
        return load_wan_vace(directory, device, progress=progress, lora=lora)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, videos=None, **options):
        from ..interop.wan_vace import vace_to_video
        mask, references = options.pop("mask", None), options.pop("reference_image", None)
        return vace_to_video(model, prompts, videos=videos, mask=None if mask is None else read_mask(mask),
                             reference_images=reference_images(references), seed=seed, progress=progress, **options)


KIND = WanVACEKind()


def read_mask(file):
    """``--mask``'s frames (T, 3, H, W) in [-1, 1] (:func:`diffkit.video.read_video`); one line for a missing or
    unreadable file."""
    from ..errors import DiffkitError
    from ..video import read_video
    try:
        return read_video(file)
    except DiffkitError as err:
        raise DiffkitError(f"--mask {str(file)!r}: {err}") from None


def reference_images(files):
    """``--reference-image`` files as PIL images (None without any); one line for an unreadable one."""
    from ..interop.controlnet import open_control_image
    if not files:
        return None
    return [open_control_image(Path(file), flag="--reference-image") for file in files]
