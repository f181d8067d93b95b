"""``diffkit video --checkpoint LUCY_EDIT_FOLDER --video FILE --prompt INSTRUCTION``: Lucy-Edit folders
(``LucyEditPipeline``) driven by :func:`diffkit.interop.lucy_edit.edit_video` (its ``VIDEO_KINDS`` line);
``diffkit sample`` / ``diffkit edit`` on such a folder: one line naming ``diffkit video``
(:func:`.video.refuse_video_folder`)."""
from __future__ import annotations

from ..interop.lucy_edit import LUCY_EDIT_FPS
from ._video_wan import WanKind


class LucyEditKind(WanKind):
    """``LucyEditPipeline`` folders: ``--video`` edited by the ``--prompt`` instruction, its frame count (4 k + 1) the
    output's (``--frames`` refused), each frame resized to 480 x 832 (or ``--height`` x ``--width``); Wan
    text-to-video's size and guidance checks (:class:`._video_wan.WanKind`; ``--guidance-scale-2`` on a two-expert
    folder, ``--lora``) but not its ``--image``; 24 fps (Lucy-Edit's documented export)."""

    label = "Lucy-Edit"
    pipelines = ("LucyEditPipeline",)
    takes = WanKind.takes - {"num_frames", "images"} | {"videos"}
    needs_video = True
    fps = LUCY_EDIT_FPS

    def check_folder(self, directory) -> None:
        from ..interop.lucy_edit import check_lucy_edit_folder
        check_lucy_edit_folder(directory)

    def check_videos(self, args, videos: list) -> None:
        """One frame count, 4 k + 1, before any weight is read."""
        from ..interop.wan_v2v import check_video_frames
        from .video import video_frames
        check_video_frames(video_frames(videos))

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.lucy_edit import load_lucy_edit
        return load_lucy_edit(directory, device, progress=progress, lora=lora)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, videos=None, **options):
        from ..interop.lucy_edit import edit_video
        return edit_video(model, videos, prompts, seed=seed, progress=progress, **options)


KIND = LucyEditKind()
