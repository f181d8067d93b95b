"""``diffkit video --checkpoint COSMOS2_5_FOLDER --prompt TEXT``: Cosmos Predict 2.5 folders
(``Cosmos2_5_PredictBasePipeline``; :func:`diffkit.interop.cosmos2_5.generate`; docs/interop/cosmos2_5.md):
text-to-world, ``--image PNG`` image-to-world (the first frame) or ``--video FILE`` video-to-world (its last 5
frames condition the first 2 latent frames)."""
from __future__ import annotations

from .video import VideoKind


class Cosmos25Kind(VideoKind):
    """A Cosmos Predict 2.5 folder: 93 frames of 704 x 1280 by default, 36 steps of its UniPC, CFG g = 7 (diffkit's
    seed convention; diffusers' s = 8) against the pipeline's negative prompt; no safety checker."""

    label = "Cosmos Predict 2.5"
    pipelines = ("Cosmos2_5_PredictBasePipeline",)
    takes = frozenset({"images", "videos", "negative_prompt", "num_frames", "height", "width", "steps", "sampler",
                       "guidance_scale", "guidance_convention"})
    fps = 16.0  # its docs' export_to_video(..., fps=16)

    def check_folder(self, directory) -> None:
        from ..interop.cosmos2_5 import check_cosmos2_5_folder
        check_cosmos2_5_folder(directory)

    def check_request(self, args) -> None:
        from ..errors import DiffkitError
        from ..interop.cosmos2 import check_size
        from ..interop.cosmos2_5 import COSMOS25_FRAMES, COSMOS25_PIPELINE, COSMOS25_SIZE
        from ..interop.kandinsky3 import guidance_w
        from ..interop.wan import check_frames
        frames = check_frames(COSMOS25_FRAMES if args.num_frames is None else args.num_frames)
        if args.images and args.videos:
            raise DiffkitError("--image and --video are both given; a Cosmos Predict 2.5 folder takes one condition: "
                               "--image PNG (image-to-world) or --video FILE (video-to-world)")
        needed = 9 if args.videos else 5 if args.images else 1  # latent frames to generate after the condition's
        if frames < needed:
            raise DiffkitError(f"--frames {frames} is not allowed with this condition; give at least {needed} (4 k + 1 "
                               f"frames with latent frames after the conditioning ones)")
        check_size(COSMOS25_SIZE[0] if args.height is None else args.height,
                   COSMOS25_SIZE[1] if args.width is None else args.width, COSMOS25_PIPELINE)
        if args.guidance_scale is not None:
            guidance_w(args.guidance_scale, args.guidance_convention, args.negative_prompt, "Cosmos Predict 2.5")

    def check_videos(self, args, videos: list) -> None:
        """Input videos of at least 5 frames (its last 5 condition 2 latent frames)."""
        from ..errors import DiffkitError
        short = min(len(v) for v in videos)
        if short < 5:
            raise DiffkitError(f"--video of {short} frames is not allowed; give at least 5 (its last 5 frames are the "
                               f"2 conditioning latent frames)")

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.cosmos2_5 import load_cosmos2_5
        return load_cosmos2_5(directory, device, progress=progress)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, videos=None, **options):
        from ..interop.cosmos2_5 import generate
        return generate(model, prompts, images=images, videos=videos, seed=seed, progress=progress, **options)


KIND = Cosmos25Kind()
