"""``diffkit video --checkpoint KANDINSKY5_T2V_FOLDER --prompt TEXT``: text-to-video as ``Kandinsky5T2VPipeline``
(:func:`diffkit.interop.kandinsky5_video.text_to_video`): CFG (``--guidance-scale``, default 5.0, in
``--guidance-convention``) against ``--negative-prompt`` (default the pipeline's); ``--lora FILE[:SCALE]``: diffusers /
PEFT files fused as the pipeline's ``load_lora_weights`` + ``fuse_lora``. ``diffkit sample`` / ``diffkit edit`` on
such a folder: one line naming ``diffkit video`` (:func:`.video.refuse_video_folder`)."""
from __future__ import annotations

from .video import VideoKind


class Kandinsky5VideoKind(VideoKind):
    label = "Kandinsky 5 video"
    pipelines = ("Kandinsky5T2VPipeline",)
    takes = frozenset({"negative_prompt", "num_frames", "height", "width", "steps", "sampler", "guidance_scale",
                       "guidance_convention", "lora"})
    fps = 24.0  # diffusers' Kandinsky5T2VPipeline example: export_to_video(output, "output.mp4", fps=24, quality=9)

    def check_folder(self, directory) -> None:
        from ..interop.kandinsky5_video import check_kandinsky5_video_folder
        check_kandinsky5_video_folder(directory)

    def check_request(self, args) -> None:
        """Frames (4 k + 1), size (multiples of 16) and a negative prompt without guidance, from the JSON alone."""
        from pathlib import Path

        from ..errors import read_json_object
        from ..interop.auraflow import guided
        from ..interop.hunyuan_video import check_frames, check_size
        from ..interop.kandinsky5_video import KANDINSKY5_VIDEO_GUIDANCE, KANDINSKY5_VIDEO_SIZE
        vae = read_json_object(Path(args.checkpoint) / "vae" / "config.json", "vae config")
        if args.num_frames is not None:
            check_frames(args.num_frames, vae.get("temporal_compression_ratio", 4))
        if args.height is not None or args.width is not None:
            height, width = KANDINSKY5_VIDEO_SIZE
            check_size(args.height or height, args.width or width, self.pipelines[0])
        if args.guidance_scale is None:  # the pipeline's default, in its own convention
            guided(KANDINSKY5_VIDEO_GUIDANCE, "diffusers", args.negative_prompt)
        else:
            guided(args.guidance_scale, args.guidance_convention, args.negative_prompt)

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.kandinsky5_video import load_kandinsky5_video
        return load_kandinsky5_video(directory, device, progress=progress, lora=lora)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.kandinsky5_video import text_to_video
        return text_to_video(model, prompts, seed=seed, progress=progress, **options)


KIND = Kandinsky5VideoKind()
