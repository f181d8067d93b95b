"""``diffkit video --checkpoint ANIMATEDIFF_FOLDER --prompt TEXT``: text-to-video as ``AnimateDiffPipeline``
(:func:`diffkit.interop.animatediff.text_to_video`; docs/interop/animatediff.md), as ``AnimateDiffSDXLPipeline``
(:data:`SDXL_KIND`; the same page), and ``--video FILE [--strength S]`` on an
``AnimateDiffVideoToVideoPipeline`` folder (:func:`diffkit.interop.animatediff.video_to_video`, :data:`V2V_KIND`).
``--controlnet DIR --control-video FILE`` on an ``AnimateDiffPipeline`` folder: as ``AnimateDiffControlNetPipeline``
(:mod:`._video_animatediff_controlnet`).
``diffkit sample`` / ``diffkit edit`` on such a folder: one line naming ``diffkit video``
(:func:`diffkit.interop.animatediff.refuse_animatediff_folder`)."""
from __future__ import annotations

from ._video_animatediff_controlnet import CONTROL_DESTS
from .video import VideoKind


class AnimateDiffKind(VideoKind):
    """An ``AnimateDiffPipeline`` folder: 16 frames of 512 x 512, 50 steps of the folder's scheduler, CFG s = 7.5
    against ``--negative-prompt`` (default ""), ``--clip-skip``, ``--lora`` (SD and motion LoRA files); 10 fps (the
    pipeline's docstring example writes its frames with ``export_to_gif(frames, "animation.gif")``, whose default fps
    is 10 in diffusers 0.42.1); ``--controlnet`` with ``--control-video``: ``AnimateDiffControlNetPipeline``
    (:mod:`._video_animatediff_controlnet`)."""

    label = "AnimateDiff"
    pipelines = ("AnimateDiffPipeline",)
    takes = frozenset({"negative_prompt", "num_frames", "height", "width", "steps", "sampler", "guidance_scale",
                       "guidance_convention", "clip_skip", "lora"}) | CONTROL_DESTS
    fps = 10.0

    def check_folder(self, directory) -> None:
        from ..interop.animatediff import check_animatediff_folder
        check_animatediff_folder(directory, self.pipelines)

    def check_request(self, args) -> None:
        """One line, from the folder's JSON, for a frame count past the motion modules' frame positions, a guidance
        scale that turns CFG off with a negative prompt, or a folder scheduler no sampler computes (no --sampler); with
        the ControlNet flags also theirs (:func:`._video_animatediff_controlnet.check_control_request`)."""
        from pathlib import Path

        from ..errors import DiffkitError, read_json_object
        from ..interop.animatediff import ANIMATEDIFF_FRAMES, folder_sampler
        from ..interop.auraflow import guided
        frames, flag = args.num_frames or ANIMATEDIFF_FRAMES, "--frames"
        if "controlnet" in self.takes and any(getattr(args, dest, None) for dest in CONTROL_DESTS):
            from ._video_animatediff_controlnet import check_control_request
            frames, flag = check_control_request(args)  # the control videos' frames (SparseCtrl: --frames)
        folder = Path(args.checkpoint)
        unet = read_json_object(folder / "unet" / "config.json", "unet config")
        adapter = folder / "motion_adapter" / "config.json"
        if "motion_max_seq_length" not in unet and adapter.is_file():  # a UNet2DConditionModel + motion_adapter/
            unet = read_json_object(adapter, "motion adapter config")
        most = int(unet.get("motion_max_seq_length", 32))
        if frames > most:
            raise DiffkitError(f"{flag} {frames}{'' if flag == '--frames' else ' frames'} is not allowed for "
                               f"{args.checkpoint}; give 1 to {most} (its motion modules' motion_max_seq_length)")
        if args.guidance_scale is not None:
            guided(args.guidance_scale, args.guidance_convention, args.negative_prompt)
        if args.sampler is None:
            folder_sampler(read_json_object(folder / "scheduler" / "scheduler_config.json",
                                            "scheduler config"))

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.animatediff import load_animatediff
        return load_animatediff(directory, device, progress=progress, lora=lora)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.animatediff import text_to_video
        control = {dest: options.pop(dest) for dest in CONTROL_DESTS if dest in options}
        if control:  # AnimateDiffControlNetPipeline, AnimateDiffSparseControlNetPipeline
            from ._video_animatediff_controlnet import controlled_video
            return controlled_video(model, prompts, control, seed=seed, progress=progress, output_range="-1,1",
                                    **options)
        return text_to_video(model, prompts, seed=seed, progress=progress, output_range="-1,1", **options)


class AnimateDiffSDXLKind(AnimateDiffKind):
    """An ``AnimateDiffSDXLPipeline`` folder: AnimateDiff's flags and checks on SD-XL (16 frames of 1024 x 1024, 50
    steps, CFG s = 5; :mod:`diffkit.interop.animatediff_sdxl`); 10 fps as the AnimateDiff kind (the pipeline's
    docstring example also exports with ``export_to_gif(frames, "animation.gif")``)."""

    label = "AnimateDiff SD-XL"
    pipelines = ("AnimateDiffSDXLPipeline",)
    takes = AnimateDiffKind.takes - CONTROL_DESTS  # (no SD-XL ControlNet pipeline for AnimateDiff in diffusers)

    def check_folder(self, directory) -> None:
        from ..interop.animatediff_sdxl import check_animatediff_sdxl_folder
        check_animatediff_sdxl_folder(directory)

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.animatediff_sdxl import load_animatediff_sdxl
        return load_animatediff_sdxl(directory, device, progress=progress, lora=lora)


class AnimateDiffVideoKind(AnimateDiffKind):
    """An ``AnimateDiffVideoToVideoPipeline`` folder: ``--video`` noised to ``--strength`` (default 0.8), its frame
    count the output's (``--frames`` refused)."""

    label = "AnimateDiff video-to-video"
    pipelines = ("AnimateDiffVideoToVideoPipeline",)
    takes = AnimateDiffKind.takes - {"num_frames"} - CONTROL_DESTS | {"videos", "strength"}
    needs_video = True

    def check_request(self, args) -> None:
        """:class:`AnimateDiffKind`'s, and a strength that keeps at least one of the steps."""
        from argparse import Namespace

        from ..interop.animatediff import ANIMATEDIFF_STEPS, ANIMATEDIFF_STRENGTH
        from .video import check_strength
        super().check_request(Namespace(**{**vars(args), "num_frames": 1}))  # the videos' frames: check_videos
        check_strength(args, ANIMATEDIFF_STEPS, ANIMATEDIFF_STRENGTH)

    def check_videos(self, args, videos: list) -> None:
        """One frame count, up to the motion modules' frame positions."""
        from argparse import Namespace

        from ..errors import DiffkitError
        from .video import video_frames
        frames = video_frames(videos)
        try:
            super().check_request(Namespace(**{**vars(args), "num_frames": frames}))
        except DiffkitError as err:
            raise DiffkitError(f"--video of {frames} frames: {err}") from None

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, videos=None, **options):
        from ..interop.animatediff import video_to_video
        return video_to_video(model, videos, prompts, seed=seed, progress=progress, output_range="-1,1", **options)


KIND = AnimateDiffKind()
SDXL_KIND = AnimateDiffSDXLKind()
V2V_KIND = AnimateDiffVideoKind()
