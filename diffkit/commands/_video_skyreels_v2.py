"""``diffkit video --checkpoint SKYREELS_V2_FOLDER --prompt TEXT [--image PNG]``: SkyReels-V2 text-to-video
(``SkyReelsV2Pipeline``, :data:`KIND`) and image-to-video (``SkyReelsV2ImageToVideoPipeline``, :data:`I2V_KIND`)
folders (:mod:`diffkit.interop.skyreels_v2`), Wan's kinds with SkyReels-V2's defaults, and diffusion forcing
(``SkyReelsV2DiffusionForcingPipeline``, :data:`DF_KIND`: ``--ar-step``, ``--causal-block-size``;
:mod:`diffkit.interop.skyreels_v2_forcing`) (their ``VIDEO_KINDS`` lines)."""
from __future__ import annotations

from ..interop.skyreels_v2 import SKYREELS_V2_FPS
from ._video_wan import WanKind
from ._video_wan_i2v import WanI2VKind

WAN_ONLY = frozenset({"guidance_scale_2"})  # Wan 2.2 A14B's experts


class SkyReelsV2Kind(WanKind):
    """SkyReels-V2 text-to-video: 97 frames of 544 x 960, 50 steps of the folder's scheduler and CFG s = 6 by
    default, 24 fps (diffusers' SkyReels-V2 examples); Wan's checks (:class:`._video_wan.WanKind`)."""

    label = "SkyReels-V2"
    pipelines = ("SkyReelsV2Pipeline",)
    takes = WanKind.takes - WAN_ONLY - {"images"}  # Wan's --image is TI2V-5B's image-to-video
    fps = SKYREELS_V2_FPS

    def check_folder(self, directory) -> None:
        from ..interop.skyreels_v2 import check_skyreels_v2_folder
        check_skyreels_v2_folder(directory, self.pipelines)

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.skyreels_v2 import load_skyreels_v2
        return load_skyreels_v2(directory, device, progress=progress, lora=lora)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.skyreels_v2 import text_to_video
        return text_to_video(model, prompts, seed=seed, progress=progress, **options)


class SkyReelsV2I2VKind(WanI2VKind):
    """SkyReels-V2 image-to-video: the image is each video's first frame (``--last-image``: its last, on a
    first-last-frame transformer); 97 frames of 544 x 960, 50 steps, CFG s = 5 by default, 24 fps."""

    label = "SkyReels-V2 image-to-video"
    pipelines = ("SkyReelsV2ImageToVideoPipeline",)
    takes = WanI2VKind.takes - WAN_ONLY
    fps = SKYREELS_V2_FPS

    check_folder = SkyReelsV2Kind.check_folder
    load = SkyReelsV2Kind.load

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.skyreels_v2 import image_to_video
        from .video import read_images
        last = options.pop("last_image", None)
        if last is not None:
            options["last_images"] = read_images([last])
        return image_to_video(model, images, prompts, seed=seed, progress=progress, **options)


class SkyReelsV2ForcingKind(SkyReelsV2Kind):
    """SkyReels-V2 diffusion forcing, text to video: SkyReels-V2 text-to-video's defaults and checks, ``--ar-step``
    (default 0: synchronous), ``--causal-block-size`` (default the transformer's ``num_frame_per_block``), ``--fps``
    also the transformer's sample-info conditioning (16 or other; default 24); ``--base-num-frames`` with
    ``--overlap-history``: the long-video mode's windows (:mod:`diffkit.interop.skyreels_v2_forcing_long`)."""

    label = "SkyReels-V2 diffusion forcing"
    pipelines = ("SkyReelsV2DiffusionForcingPipeline",)
    takes = SkyReelsV2Kind.takes | {"ar_step", "causal_block_size", "fps", "base_num_frames", "overlap_history"}
    overlap_default = None  # --overlap-history without --base-num-frames: refused (the video-to-video kind's 17)

    def check_request(self, args) -> None:
        from pathlib import Path

        from ..errors import read_json_object
        from ..interop.skyreels_v2 import SKYREELS_V2_FRAMES
        from ..errors import DiffkitError
        from ..interop.skyreels_v2_forcing import check_forcing
        from ..interop.skyreels_v2_forcing_long import windows
        from ..interop.wan import check_frames
        super().check_request(args)
        folder = Path(args.checkpoint)
        config = read_json_object(folder / "transformer" / "config.json", "transformer config")
        vae = read_json_object(folder / "vae" / "config.json", "vae config")
        temporal, frames = int(vae.get("scale_factor_temporal", 4)), check_frames(args.num_frames, SKYREELS_V2_FRAMES)
        block = config.get("num_frame_per_block", 1) if args.causal_block_size is None else args.causal_block_size
        overlap = self.overlap_default if args.overlap_history is None else args.overlap_history
        if self.overlap_default is None and (args.base_num_frames is None) != (args.overlap_history is None):
            raise DiffkitError("--base-num-frames and --overlap-history go together (the long-video mode's window "
                               "and the frames each window starts from); give both or neither")
        sizes, prefixes = [(frames - 1) // temporal + 1], [self.prefix_frames(args, block)]
        if args.base_num_frames is not None and frames > check_frames(args.base_num_frames):
            sizes = windows(sizes[0], (args.base_num_frames - 1) // temporal + 1, (overlap - 1) // temporal + 1)
            prefixes += [((overlap - 1) // temporal + 1) // block * block] * (len(sizes) - 1)
        for size, prefix in zip(sizes, prefixes):
            check_forcing(size, block, args.ar_step or 0, args.sampler or "unipc", {}, prefix)

    def prefix_frames(self, args, block: int) -> int:
        """The clean first latent frames (none here; :mod:`._video_skyreels_v2_forcing_prefix`'s kinds)."""
        return 0

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.skyreels_v2_forcing import text_to_video
        return text_to_video(model, prompts, seed=seed, progress=progress, **options)


KIND = SkyReelsV2Kind()
I2V_KIND = SkyReelsV2I2VKind()
DF_KIND = SkyReelsV2ForcingKind()
