"""``diffkit video --checkpoint FRAMEPACK_FOLDER --image PNG --prompt TEXT``: HunyuanVideo FramePack folders
(``HunyuanVideoFramepackPipeline``) driven by :func:`diffkit.interop.hunyuan_framepack.image_to_video` (its
``VIDEO_KINDS`` line): HunyuanVideo image-to-video's flags (``--guidance-scale`` the embedded guidance, default 6;
``--true-cfg-scale`` with ``--negative-prompt``; ``--frames`` sets the number of sections), ``--sampling-type``,
``--latent-window-size`` and ``--last-image`` (inverted_anti_drifting only); ``diffkit sample`` / ``diffkit edit``
on such a folder: one line naming ``diffkit video`` (:func:`.video.refuse_video_folder`)."""
from __future__ import annotations

from ._video_hunyuan import HunyuanVideoI2VKind


class FramepackKind(HunyuanVideoI2VKind):
    label = "HunyuanVideo FramePack"
    pipelines = ("HunyuanVideoFramepackPipeline",)
    takes = HunyuanVideoI2VKind.takes | {"last_image", "sampling_type", "latent_window_size"}
    fps = 30.0  # diffusers' HunyuanVideoFramepackPipeline example: export_to_video(output, "output.mp4", fps=30)

    def check_folder(self, directory) -> None:
        from ..interop.hunyuan_framepack import check_framepack_folder
        check_framepack_folder(directory)

    def check_request(self, args) -> None:
        """Size (multiples of 16), the embedded scale, true CFG's pair, the sampling type, the window and the last
        image (readable; inverted_anti_drifting only), from the JSON alone; any positive --frames (the sections)."""
        from pathlib import Path

        from ..errors import DiffkitError, read_json_object
        from ..interop.flux import check_true_cfg
        from ..interop.hunyuan_framepack import FRAMEPACK_PIPELINE, LATENT_WINDOW, check_framepack_request
        from ..interop.hunyuan_video import HUNYUAN_VIDEO_FRAMES, HUNYUAN_VIDEO_SIZE, check_size
        from .video import read_images
        check_framepack_request(args.sampling_type or "inverted_anti_drifting", args.latent_window_size or
                                LATENT_WINDOW, args.last_image is not None, args.num_frames or HUNYUAN_VIDEO_FRAMES)
        if args.height is not None or args.width is not None:
            check_size(args.height or HUNYUAN_VIDEO_SIZE[0], args.width or HUNYUAN_VIDEO_SIZE[1], FRAMEPACK_PIPELINE)
        transformer = read_json_object(Path(args.checkpoint) / "transformer" / "config.json", "transformer config")
        if args.guidance_scale is not None and not transformer.get("guidance_embeds", True):
            raise DiffkitError(f"--guidance-scale does not apply to {args.checkpoint}: its transformer has no "
                               f"guidance embedding (guidance_embeds false)")
        check_true_cfg(1.0 if args.true_cfg_scale is None else args.true_cfg_scale, args.negative_prompt)
        if args.last_image is not None:
            read_images([args.last_image])

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.hunyuan_framepack import load_hunyuan_framepack
        return load_hunyuan_framepack(directory, device, progress=progress)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.hunyuan_framepack import image_to_video
        from .video import read_images
        last = options.pop("last_image", None)
        if last is not None:
            options["last_image"] = read_images([last])
        return image_to_video(model, images, prompts, seed=seed, progress=progress, **options)


KIND = FramepackKind()
