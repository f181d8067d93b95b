"""``diffkit video --checkpoint WAN_V2V_FOLDER --video FILE --prompt TEXT [--strength S]``: Wan video-to-video
folders (``WanVideoToVideoPipeline``) driven by :func:`diffkit.interop.wan_v2v.video_to_video` (its ``VIDEO_KINDS``
line); ``diffkit sample`` / ``diffkit edit`` on such a folder: one line naming ``diffkit video``
(:func:`.video.refuse_video_folder`)."""
from __future__ import annotations

from ..interop.wan_v2v import WAN_V2V_FPS
from ._video_wan import WanKind


class WanVideoKind(WanKind):
    """``WanVideoToVideoPipeline`` folders: ``--video`` noised to ``--strength`` (default 0.8), its frame count (4 k +
    1) the output's (``--frames`` refused), each frame resized to 480 x 832 (or ``--height`` x ``--width``); Wan
    text-to-video's other flags and checks (:class:`._video_wan.WanKind`) but ``--guidance-scale-2`` (one
    transformer); 16 fps."""

    label = "Wan video-to-video"
    pipelines = ("WanVideoToVideoPipeline",)
    takes = WanKind.takes - {"num_frames", "guidance_scale_2", "images"} | {"videos", "strength"}
    needs_video = True
    fps = WAN_V2V_FPS

    def check_folder(self, directory) -> None:
        from ..interop.wan_v2v import check_wan_v2v_folder
        check_wan_v2v_folder(directory)

    def check_request(self, args) -> None:
        """:class:`._video_wan.WanKind`'s (sizes, guidance), and a strength that keeps at least one of the steps."""
        from ..interop.wan_v2v import WAN_V2V_STEPS, WAN_V2V_STRENGTH
        from .video import check_strength
        super().check_request(args)
        check_strength(args, WAN_V2V_STEPS, WAN_V2V_STRENGTH)

    def check_videos(self, args, videos: list) -> None:
        """One frame count, 4 k + 1, before any weight is read."""
        from ..interop.wan_v2v import check_video_frames
        from .video import video_frames
        check_video_frames(video_frames(videos))

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.wan_v2v import load_wan_v2v
        return load_wan_v2v(directory, device, progress=progress, lora=lora)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, videos=None, **options):
        from ..interop.wan_v2v import video_to_video
        return video_to_video(model, videos, prompts, seed=seed, progress=progress, **options)


KIND = WanVideoKind()
