"""``diffkit video --checkpoint HUNYUAN_VIDEO15_FOLDER --prompt TEXT``: text-to-video as ``HunyuanVideo15Pipeline``
(:func:`diffkit.interop.hunyuan_video15.text_to_video`; ``KIND``), and ``--checkpoint HUNYUAN_VIDEO15_I2V_FOLDER
--image PNG --prompt TEXT``: image-to-video as ``HunyuanVideo15ImageToVideoPipeline`` (:func:`~diffkit.interop.
hunyuan_video15.image_to_video`; ``I2V_KIND``, the frame size the image's bucket). ``--guidance-scale`` replaces the
folder guider's CFG scale (in ``--guidance-convention``) against ``--negative-prompt`` (default ""). ``diffkit
sample`` / ``diffkit edit`` on such a folder: one line naming ``diffkit video`` (:func:`.video.refuse_video_folder`)."""
from __future__ import annotations

from .video import VideoKind


class HunyuanVideo15Kind(VideoKind):
    label = "HunyuanVideo 1.5"
    pipelines = ("HunyuanVideo15Pipeline",)
    takes = frozenset({"negative_prompt", "num_frames", "height", "width", "steps", "sampler", "guidance_scale",
                       "guidance_convention"})
    fps = 15.0  # diffusers' HunyuanVideo15Pipeline example: export_to_video(output, "output.mp4", fps=15)

    def check_folder(self, directory) -> None:
        from ..interop.hunyuan_video15 import check_hunyuan_video15_folder
        check_hunyuan_video15_folder(directory, self.pipelines[0])

    def check_request(self, args) -> None:
        """Frames (4 k + 1), size (both, multiples of 16), the guidance scale and a negative prompt without
        guidance, from the JSON alone."""
        from pathlib import Path

        from ..errors import read_json_object
        from ..interop.hunyuan_video import check_frames, check_size
        from ..interop.hunyuan_video15 import check_negative_prompt, check_video_size, run_guider
        directory = Path(args.checkpoint)
        vae = read_json_object(directory / "vae" / "config.json", "vae config")
        if args.num_frames is not None:
            check_frames(args.num_frames, vae.get("temporal_compression_ratio", 4))
        if "height" in self.takes:
            check_video_size(args.height, args.width)
            if args.height is not None:
                check_size(args.height, args.width, self.pipelines[0])
        guider = read_json_object(directory / "guider" / "guider_config.json", "guider config")
        check_negative_prompt(run_guider(guider, args.guidance_scale, args.guidance_convention),
                              args.negative_prompt)

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.hunyuan_video15 import load_hunyuan_video15
        return load_hunyuan_video15(directory, device, progress=progress)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.hunyuan_video15 import text_to_video
        return text_to_video(model, prompts, seed=seed, progress=progress, **options)


class HunyuanVideo15I2VKind(HunyuanVideo15Kind):
    """``HunyuanVideo15ImageToVideoPipeline`` folders: each ``--image`` the first frame's condition, the frame size
    its ``target_size`` bucket (no --height / --width), 121 frames by default, at 24 fps."""

    label = "HunyuanVideo 1.5 image-to-video"
    pipelines = ("HunyuanVideo15ImageToVideoPipeline",)
    takes = HunyuanVideo15Kind.takes - {"height", "width"} | {"images"}
    needs_image = True
    fps = 24.0  # diffusers' HunyuanVideo15ImageToVideoPipeline example: export_to_video(..., fps=24)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.hunyuan_video15 import image_to_video
        return image_to_video(model, images, prompts, seed=seed, progress=progress, **options)


KIND = HunyuanVideo15Kind()
I2V_KIND = HunyuanVideo15I2VKind()
