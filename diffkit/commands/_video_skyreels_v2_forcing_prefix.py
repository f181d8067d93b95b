"""``diffkit video --checkpoint SKYREELS_V2_DF_FOLDER --prompt TEXT --image PNG | --video FILE``: SkyReels-V2
diffusion forcing from clean first frames (``SkyReelsV2DiffusionForcingImageToVideoPipeline``, :data:`I2V_KIND`;
``SkyReelsV2DiffusionForcingVideoToVideoPipeline``, :data:`V2V_KIND`: ``--overlap-history``), driven by
:mod:`diffkit.interop.skyreels_v2_forcing_prefix` (their ``VIDEO_KINDS`` lines)."""
from __future__ import annotations

from ._video_skyreels_v2 import SkyReelsV2ForcingKind


class SkyReelsV2ForcingI2VKind(SkyReelsV2ForcingKind):
    """Diffusion forcing from ``--image`` (its first latent frame, clean): the forcing kind's flags, CFG s = 5."""

    label = "SkyReels-V2 diffusion forcing image-to-video"
    pipelines = ("SkyReelsV2DiffusionForcingImageToVideoPipeline",)
    takes = SkyReelsV2ForcingKind.takes | {"images"}
    needs_image = True
    images_need_ti2v = False

    def prefix_frames(self, args, block: int) -> int:
        return 1

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.skyreels_v2_forcing_prefix import image_to_video
        return image_to_video(model, images, prompts, seed=seed, progress=progress, **options)


class SkyReelsV2ForcingV2VKind(SkyReelsV2ForcingKind):
    """Diffusion forcing extending ``--video`` from its last ``--overlap-history`` frames (default 17): the input
    then the ``--frames`` window (its first frames the overlap's; with ``--base-num-frames`` fewer, the long-video
    mode's windows); the forcing kind's flags, CFG s = 6."""

    label = "SkyReels-V2 diffusion forcing video-to-video"
    pipelines = ("SkyReelsV2DiffusionForcingVideoToVideoPipeline",)
    takes = SkyReelsV2ForcingKind.takes | {"videos"}
    needs_video = True
    overlap_default = 17  # skyreels_v2_forcing_prefix.DF_V2V_OVERLAP

    def prefix_frames(self, args, block: int) -> int:
        from ..interop.skyreels_v2_forcing_prefix import DF_V2V_OVERLAP
        overlap = DF_V2V_OVERLAP if args.overlap_history is None else args.overlap_history
        return ((overlap - 1) // 4 + 1) // block * block

    def check_videos(self, args, videos: list) -> None:
        """The overlap within the videos' frames, holding a block and leaving frames to generate."""
        from pathlib import Path

        from ..errors import read_json_object
        from ..interop.skyreels_v2 import SKYREELS_V2_FRAMES
        from ..interop.skyreels_v2_forcing_prefix import DF_V2V_OVERLAP, check_overlap
        from .video import video_frames
        folder = Path(args.checkpoint)
        config = read_json_object(folder / "transformer" / "config.json", "transformer config")
        temporal = int(read_json_object(folder / "vae" / "config.json", "vae config").get("scale_factor_temporal", 4))
        block = config.get("num_frame_per_block", 1) if args.causal_block_size is None else args.causal_block_size
        frames = args.num_frames or SKYREELS_V2_FRAMES
        window = (min(frames, args.base_num_frames or frames) - 1) // temporal + 1
        check_overlap(DF_V2V_OVERLAP if args.overlap_history is None else args.overlap_history,
                      video_frames(videos), temporal, block, window)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, videos=None, **options):
        from ..interop.skyreels_v2_forcing_prefix import video_to_video
        return video_to_video(model, videos, prompts, seed=seed, progress=progress, **options)


I2V_KIND = SkyReelsV2ForcingI2VKind()
V2V_KIND = SkyReelsV2ForcingV2VKind()
