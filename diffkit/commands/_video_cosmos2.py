"""``diffkit video --checkpoint COSMOS2_VIDEO2WORLD_FOLDER --image PNG --prompt TEXT``: Cosmos Predict2 Video2World
folders (``Cosmos2VideoToWorldPipeline``; :func:`diffkit.interop.cosmos2_video.image_to_video`;
docs/interop/cosmos2_video.md), the image as the conditioning first frame, or ``--video FILE`` instead: an input
video of K < ``--frames`` frames, its first (K - 1) / 4 + 1 latent frames conditioning (the pipeline's ``video``).
``--fps`` both goes to the transformer (the pipeline's ``fps``, its RoPE) and is the frame rate written (default 16,
as diffusers' docs export)."""
from __future__ import annotations

from .video import VideoKind


class Cosmos2VideoKind(VideoKind):
    """A Cosmos Predict2 Video2World folder: the video continuing ``--image`` by ``--prompt``, 93 frames of 704 x
    1280 by default, 35 steps, CFG g = 7 (diffkit's seed convention; diffusers' s = 8) against the pipeline's
    negative prompt; no safety checker (docs/interop/cosmos2.md)."""

    label = "Cosmos Predict2 Video2World"
    pipelines = ("Cosmos2VideoToWorldPipeline",)
    takes = frozenset({"images", "videos", "negative_prompt", "num_frames", "height", "width", "steps", "sampler",
                       "guidance_scale", "guidance_convention", "fps"})
    needs_image = True
    fps = 16.0  # the pipeline's fps and its docs' export_to_video(..., fps=16)

    def check_folder(self, directory) -> None:
        from ..interop.cosmos2_video import check_cosmos2_video_folder
        check_cosmos2_video_folder(directory)

    def check_request(self, args) -> None:
        from ..errors import DiffkitError
        from ..interop.cosmos2 import check_size
        from ..interop.cosmos2_video import COSMOS2_VIDEO_PIPELINE, VIDEO_SIZE, check_frames
        from ..interop.kandinsky3 import guidance_w
        check_frames(args.num_frames)
        if args.images and args.videos:
            raise DiffkitError("--image and --video are both given; a Cosmos Predict2 Video2World folder takes one "
                               "condition per video: give --image PNG (the first frame) or --video FILE (its first "
                               "frames)")
        check_size(VIDEO_SIZE[0] if args.height is None else args.height,
                   VIDEO_SIZE[1] if args.width is None else args.width, COSMOS2_VIDEO_PIPELINE)
        if args.steps == 1:
            raise DiffkitError(f"--steps 1 is not allowed for {COSMOS2_VIDEO_PIPELINE}'s loop; give 2 or more (with 1 "
                               f"its sigmas are [80, 80]: it decodes the noise)")
        if args.guidance_scale is not None:
            guidance_w(args.guidance_scale, args.guidance_convention, args.negative_prompt, "Cosmos Predict2")

    def check_videos(self, args, videos: list) -> None:
        """Input videos of fewer frames than ``--frames``, of one frame count where a batch holds several (the
        pipeline encodes a batch as one tensor)."""
        from ..errors import DiffkitError
        from ..interop.cosmos2_video import check_frames
        frames, counts = check_frames(args.num_frames), sorted({len(v) for v in videos})
        if counts[-1] >= frames:
            raise DiffkitError(f"--video of {counts[-1]} frames is not allowed for --frames {frames}; give fewer "
                               f"frames than the video (every latent frame would be a conditioning one)")
        if len(counts) > 1 and args.batch_size > 1:
            raise DiffkitError(f"--video files of {counts} frames are not allowed with --batch-size "
                               f"{args.batch_size}; give videos of one frame count, or --batch-size 1 (the "
                               f"pipeline encodes a batch as one tensor)")

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.cosmos2_video import load_cosmos2_video
        return load_cosmos2_video(directory, device, progress=progress)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, videos=None, **options):
        from ..interop.cosmos2_video import image_to_video
        return image_to_video(model, images if videos is None else videos, prompts, seed=seed, progress=progress,
                              **options)


KIND = Cosmos2VideoKind()
