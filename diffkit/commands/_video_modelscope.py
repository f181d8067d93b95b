"""``diffkit video --checkpoint MODELSCOPE_FOLDER --prompt TEXT``: text-to-video as ``TextToVideoSDPipeline``
(:func:`diffkit.interop.modelscope.text_to_video`; docs/interop/modelscope.md), and ``--video FILE [--strength S]`` on
a ``VideoToVideoSDPipeline`` folder (:func:`diffkit.interop.modelscope.video_to_video`, :data:`V2V_KIND`);
``--image PNG --prompt TEXT`` on an ``I2VGenXLPipeline`` folder (:func:`diffkit.interop.i2vgen_xl.image_to_video`,
:data:`I2V_KIND`; docs/interop/modelscope.md)."""
from __future__ import annotations

from .video import VideoKind


class ModelScopeKind(VideoKind):
    """A ``TextToVideoSDPipeline`` folder: 16 frames of 256 x 256 (the UNet's sample size x the VAE factor), 50 steps
    of the folder's scheduler, CFG s = 9 against ``--negative-prompt`` (default ""); 10 fps (the pipeline's docstring
    example writes ``export_to_video(video_frames)``, whose default fps is 10 in diffusers 0.42.1)."""

    label = "ModelScope"
    pipelines = ("TextToVideoSDPipeline",)
    takes = frozenset({"negative_prompt", "num_frames", "height", "width", "steps", "sampler", "guidance_scale",
                       "guidance_convention"})
    fps = 10.0

    def check_folder(self, directory) -> None:
        from ..interop.modelscope import check_modelscope_folder
        check_modelscope_folder(directory, self.pipelines)

    def check_request(self, args) -> None:
        """One line, from the folder's JSON, for a guidance scale that turns CFG off with a negative prompt, or a
        folder scheduler no sampler computes (no --sampler)."""
        from pathlib import Path

        from ..errors import read_json_object
        from ..interop.animatediff import folder_sampler
        from ..interop.auraflow import guided
        if args.guidance_scale is not None:
            guided(args.guidance_scale, args.guidance_convention, args.negative_prompt)
        if args.sampler is None:
            folder_sampler(read_json_object(Path(args.checkpoint) / "scheduler" / "scheduler_config.json",
                                            "scheduler config"))

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.modelscope import load_modelscope
        return load_modelscope(directory, device, progress=progress)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.modelscope import text_to_video
        return text_to_video(model, prompts, seed=seed, progress=progress, output_range="-1,1", **options)


class ModelScopeVideoKind(ModelScopeKind):
    """A ``VideoToVideoSDPipeline`` folder (zeroscope's upscaling pass): ``--video`` noised to ``--strength``
    (default 0.6), CFG s = 15; its frame count and size the output's (``--frames``, ``--height``, ``--width``
    refused: the pipeline does not resize)."""

    label = "ModelScope video-to-video"
    pipelines = ("VideoToVideoSDPipeline",)
    takes = ModelScopeKind.takes - {"num_frames", "height", "width"} | {"videos", "strength"}
    needs_video = True

    def check_request(self, args) -> None:
        """:class:`ModelScopeKind`'s, and a strength that keeps at least one of the steps."""
        from ..interop.modelscope import MODELSCOPE_STEPS, MODELSCOPE_STRENGTH
        from .video import check_strength
        super().check_request(args)
        check_strength(args, MODELSCOPE_STEPS, MODELSCOPE_STRENGTH)

    def check_videos(self, args, videos: list) -> None:
        """One frame count and one frame size, multiples of the VAE factor (the pipeline encodes them unresized)."""
        from pathlib import Path

        from ..errors import DiffkitError, read_json_object
        from .video import video_frames
        video_frames(videos)
        sizes = sorted({f"{v.shape[-1]}x{v.shape[-2]}" for v in videos})
        if len(sizes) > 1:
            raise DiffkitError(f"--video frames of the sizes {', '.join(sizes)} are not allowed; give videos of one "
                               f"size (the output's)")
        vae = read_json_object(Path(args.checkpoint) / "vae" / "config.json", "vae config")
        factor = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
        if videos[0].shape[-1] % factor or videos[0].shape[-2] % factor:
            raise DiffkitError(f"--video frames of {sizes[0]} are not allowed; give frames whose width and height are "
                               f"multiples of the VAE factor {factor} (the pipeline does not resize)")

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, videos=None, **options):
        from ..interop.modelscope import video_to_video
        return video_to_video(model, videos, prompts, seed=seed, progress=progress, output_range="-1,1", **options)


class I2VGenXLKind(ModelScopeKind):
    """An ``I2VGenXLPipeline`` folder: ``--image`` (the first frame) and ``--prompt``, 16 frames (at least 2) of 704 x
    1280, CFG s = 9; ``--fps`` (default 16, an integer) is both the frame rate written and the UNet's ``target_fps``
    (the pipeline's default 16)."""

    label = "I2VGen-XL"
    pipelines = ("I2VGenXLPipeline",)
    takes = ModelScopeKind.takes | {"images", "fps"}
    needs_image = True
    fps = 16.0

    def check_folder(self, directory) -> None:
        from ..interop.i2vgen_xl import check_i2vgen_xl_folder
        check_i2vgen_xl_folder(directory)

    def check_request(self, args) -> None:
        """:class:`ModelScopeKind`'s, at least 2 frames, an integer --fps."""
        from ..errors import DiffkitError
        super().check_request(args)
        if args.num_frames is not None and args.num_frames < 2:
            raise DiffkitError(f"--frames {args.num_frames} is not allowed for an I2VGen-XL folder; give at least 2 "
                               f"(the image latents' frame positions k / (F - 1))")
        if args.fps is not None and args.fps != int(args.fps):
            raise DiffkitError(f"--fps {args.fps:g} is not allowed for an I2VGen-XL folder; give an integer (the "
                               f"UNet's target_fps)")

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.i2vgen_xl import load_i2vgen_xl
        return load_i2vgen_xl(directory, device, progress=progress)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, fps=None, **options):
        from ..interop.i2vgen_xl import image_to_video
        return image_to_video(model, images, prompts, seed=seed, progress=progress, output_range="-1,1",
                              target_fps=None if fps is None else int(fps), **options)


KIND = ModelScopeKind()
V2V_KIND = ModelScopeVideoKind()
I2V_KIND = I2VGenXLKind()
