"""``diffkit video --checkpoint KANDINSKY5_T2V_FOLDER --prompt TEXT``: text-to-video as ``Kandinsky5T2VPipeline``
(:func:`diffkit.interop.kandinsky5_video.text_to_video`; ``KIND``), and ``--checkpoint KANDINSKY5_I2V_FOLDER --image
PNG --prompt TEXT``: image-to-video as ``Kandinsky5I2VPipeline`` (:func:`~diffkit.interop.kandinsky5_video.
image_to_video`; ``I2V_KIND``, frames 4 k + 1 >= 17): CFG (``--guidance-scale``, default 5.0, in
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
        check_kandinsky5_video_folder(directory, self.pipelines[0])

    def check_request(self, args) -> None:
        """Frames (4 k + 1), size (multiples of 16) and a negative prompt without guidance, from the JSON alone."""
        from pathlib import Path

        from ..errors import read_json_object
        from ..interop.auraflow import guided
        from ..interop.hunyuan_video import check_frames, check_size
        from ..interop.kandinsky5_video import KANDINSKY5_VIDEO_GUIDANCE, KANDINSKY5_VIDEO_SIZE, check_i2v_frames
        vae = read_json_object(Path(args.checkpoint) / "vae" / "config.json", "vae config")
        if args.num_frames is not None:  # image-to-video: at least 17 (normalize_first_frame)
            check = check_i2v_frames if self.needs_image else check_frames
            check(args.num_frames, vae.get("temporal_compression_ratio", 4))
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


class Kandinsky5I2VKind(Kandinsky5VideoKind):
    """``Kandinsky5I2VPipeline`` folders: image-to-video, each ``--image`` the first frame (resized to --height x
    --width, default 512 x 768), 121 frames by default, at 24 fps."""

    label = "Kandinsky 5 image-to-video"
    pipelines = ("Kandinsky5I2VPipeline",)
    takes = Kandinsky5VideoKind.takes | {"images"}
    needs_image = True
    fps = 24.0  # diffusers' Kandinsky5I2VPipeline example: export_to_video(output, "output.mp4", fps=24, quality=9)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.kandinsky5_video import image_to_video
        return image_to_video(model, images, prompts, seed=seed, progress=progress, **options)


KIND = Kandinsky5VideoKind()
I2V_KIND = Kandinsky5I2VKind()
