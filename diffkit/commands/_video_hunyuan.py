"""``diffkit video --checkpoint HUNYUAN_VIDEO_FOLDER --prompt TEXT``: text-to-video as ``HunyuanVideoPipeline``
(:func:`diffkit.interop.hunyuan_video.text_to_video`). ``--guidance-scale`` is the transformer's embedded (distilled)
guidance (default 6.0; ``--guidance-convention`` does not change it: it is no CFG scale); ``--true-cfg-scale S`` with
``--negative-prompt``: the pipeline's true CFG (diffusers' convention); ``--lora FILE[:SCALE]``: diffusers / PEFT
files fused as the pipeline's ``load_lora_weights`` + ``fuse_lora``. ``diffkit sample`` / ``diffkit edit`` on such
a folder: one line naming ``diffkit video`` (:func:`.video.refuse_video_folder`)."""
from __future__ import annotations

from .video import VideoKind


class HunyuanVideoKind(VideoKind):
    label = "HunyuanVideo"
    pipelines = ("HunyuanVideoPipeline",)
    takes = frozenset({"negative_prompt", "num_frames", "height", "width", "steps", "sampler", "guidance_scale",
                       "guidance_convention", "true_cfg_scale", "lora"})
    fps = 15.0  # diffusers' HunyuanVideoPipeline example: export_to_video(output, "output.mp4", fps=15)

    def check_folder(self, directory) -> None:
        from ..interop.hunyuan_video import check_hunyuan_video_folder
        check_hunyuan_video_folder(directory)

    def check_request(self, args) -> None:
        """Frames (4 k + 1), size (multiples of 16), the embedded scale and true CFG's pair, from the JSON alone."""
        from pathlib import Path

        from ..errors import DiffkitError, read_json_object
        from ..interop.flux import check_true_cfg
        from ..interop.hunyuan_video import check_frames, check_size
        directory = Path(args.checkpoint)
        vae = read_json_object(directory / "vae" / "config.json", "vae config")
        if args.num_frames is not None:
            check_frames(args.num_frames, vae.get("temporal_compression_ratio", 4))
        if args.height is not None or args.width is not None:
            check_size(args.height or 720, args.width or 1280)
        transformer = read_json_object(directory / "transformer" / "config.json", "transformer config")
        if args.guidance_scale is not None and not transformer.get("guidance_embeds", True):
            raise DiffkitError(f"--guidance-scale does not apply to {directory}: its transformer has no guidance "
                               f"embedding (guidance_embeds false)")
        check_true_cfg(1.0 if args.true_cfg_scale is None else args.true_cfg_scale, args.negative_prompt)

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.hunyuan_video import load_hunyuan_video
        return load_hunyuan_video(directory, device, progress=progress, lora=lora)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.hunyuan_video import text_to_video
        return text_to_video(model, prompts, seed=seed, progress=progress, **options)


KIND = HunyuanVideoKind()


class HunyuanVideoI2VKind(HunyuanVideoKind):
    """``--checkpoint HUNYUAN_VIDEO_I2V_FOLDER --image PNG --prompt TEXT``: image-to-video as
    ``HunyuanVideoImageToVideoPipeline`` (:func:`diffkit.interop.hunyuan_video_i2v.image_to_video`; ``--guidance-scale``
    the embedded guidance, default 1.0; no ``--lora``)."""

    label = "HunyuanVideo image-to-video"
    pipelines = ("HunyuanVideoImageToVideoPipeline",)
    takes = (HunyuanVideoKind.takes - {"lora"}) | {"images"}
    needs_image = True
    fps = 15.0  # diffusers' HunyuanVideoImageToVideoPipeline example: export_to_video(output, "output.mp4", fps=15)

    def check_folder(self, directory) -> None:
        from ..interop.hunyuan_video_i2v import check_hunyuan_video_i2v_folder
        check_hunyuan_video_i2v_folder(directory)

    def check_request(self, args) -> None:
        """Text-to-video's checks, and frames >= 5 (a latent frame after the image's)."""
        from ..interop.hunyuan_video_i2v import check_i2v_frames
        super().check_request(args)
        if args.num_frames is not None:
            check_i2v_frames(args.num_frames)

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.hunyuan_video_i2v import load_hunyuan_video_i2v
        return load_hunyuan_video_i2v(directory, device, progress=progress)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.hunyuan_video_i2v import image_to_video
        return image_to_video(model, images, prompts, seed=seed, progress=progress, **options)


I2V_KIND = HunyuanVideoI2VKind()


class SkyreelsKind(HunyuanVideoI2VKind):
    """``--checkpoint SKYREELS_FOLDER --image PNG --prompt TEXT``: image-to-video as
    ``HunyuanSkyreelsImageToVideoPipeline`` (:func:`diffkit.interop.hunyuan_skyreels.image_to_video`;
    ``--negative-prompt`` alone: true CFG 6, the pipeline's default)."""

    label = "SkyReels image-to-video"
    pipelines = ("HunyuanSkyreelsImageToVideoPipeline",)

    def check_folder(self, directory) -> None:
        from ..interop.hunyuan_skyreels import check_hunyuan_skyreels_folder
        check_hunyuan_skyreels_folder(directory)

    def check_request(self, args) -> None:
        """Frames (4 k + 1), size (multiples of 16; default 544 x 960), the embedded scale and true CFG (default 6
        with a negative prompt), from the JSON alone."""
        from types import SimpleNamespace

        from ..interop.hunyuan_skyreels import SKYREELS_SIZE, SKYREELS_TRUE_CFG
        height, width = args.height, args.width
        if (height is None) != (width is None):
            height, width = height or SKYREELS_SIZE[0], width or SKYREELS_SIZE[1]
        scale = args.true_cfg_scale
        if scale is None and args.negative_prompt is not None:
            scale = SKYREELS_TRUE_CFG
        HunyuanVideoKind.check_request(self, SimpleNamespace(**{**vars(args), "height": height, "width": width,
                                                                 "true_cfg_scale": scale}))

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.hunyuan_skyreels import load_hunyuan_skyreels
        return load_hunyuan_skyreels(directory, device, progress=progress)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.hunyuan_skyreels import image_to_video
        return image_to_video(model, images, prompts, seed=seed, progress=progress, **options)


SKYREELS_KIND = SkyreelsKind()
