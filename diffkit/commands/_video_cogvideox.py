"""``diffkit video --checkpoint COGVIDEOX_FOLDER --prompt TEXT [--image PNG | --video FILE [--strength S]]
[--dynamic-cfg]``: a ``CogVideoXPipeline`` folder's videos (:func:`diffkit.interop.cogvideox.text_to_video`,
:data:`KIND`), a ``CogVideoXImageToVideoPipeline`` folder's (:func:`diffkit.interop.cogvideox.image_to_video`,
:data:`I2V_KIND`), a ``CogVideoXVideoToVideoPipeline`` folder's (:func:`diffkit.interop.cogvideox.video_to_video`,
:data:`V2V_KIND`) and a ``CogVideoXFunControlPipeline`` folder's (``--video``: the control video;
:func:`diffkit.interop.cogvideox.control_to_video`, :data:`FUN_KIND`), driven by :mod:`.video`."""
from __future__ import annotations

from .video import VideoKind


class CogVideoXKind(VideoKind):
    """CogVideoX text-to-video (``CogVideoXPipeline``): 49 frames of 480 x 720 by default, at 8 fps (the model card's
    ``export_to_video(video, fps=8)``)."""

    label = "CogVideoX"
    pipelines = ("CogVideoXPipeline",)
    takes = frozenset({"negative_prompt", "num_frames", "height", "width", "steps", "sampler", "guidance_scale",
                       "dynamic_cfg", "lora"})
    fps = 8.0

    def check_folder(self, directory) -> None:
        from ..interop.cogvideox import check_cogvideox_folder
        check_cogvideox_folder(directory)

    def check_request(self, args) -> None:
        """Frames (4 k + 1), sizes (multiples of 8 x the patch size) and the guidance flags, from the folder's
        JSON."""
        from ..errors import read_json_object
        from ..interop.auraflow import guided
        from pathlib import Path

        from ..guidance import pipeline_scale
        from ..interop.cogvideox import COGVIDEOX_GUIDANCE, check_size, latent_frames
        folder = Path(args.checkpoint)
        vae = read_json_object(folder / "vae" / "config.json", "vae config")
        transformer = read_json_object(folder / "transformer" / "config.json", "transformer config")
        if args.num_frames is not None:
            latent_frames(args.num_frames, int(vae.get("temporal_compression_ratio", 4)),
                          transformer.get("patch_size_t"))
        factor = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
        height = args.height or int(transformer.get("sample_height", 60)) * factor
        width = args.width or int(transformer.get("sample_width", 90)) * factor
        check_size(height, width, factor, transformer)
        if args.guidance_scale is not None:
            guided(pipeline_scale(args.guidance_scale, COGVIDEOX_GUIDANCE, args.guidance_convention), "diffusers",
                   args.negative_prompt)

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.cogvideox import load_cogvideox
        return load_cogvideox(directory, device, progress=progress, lora=lora)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.cogvideox import text_to_video
        return text_to_video(model, prompts, seed=seed, progress=progress, **options)


class CogVideoXImageKind(CogVideoXKind):
    """CogVideoX image-to-video (``CogVideoXImageToVideoPipeline``): ``--image`` is each video's first frame."""

    label = "CogVideoX image-to-video"
    pipelines = ("CogVideoXImageToVideoPipeline",)
    takes = CogVideoXKind.takes | {"images"}
    needs_image = True

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.cogvideox import image_to_video
        return image_to_video(model, images, prompts, seed=seed, progress=progress, **options)


class CogVideoXVideoKind(CogVideoXKind):
    """CogVideoX video-to-video (``CogVideoXVideoToVideoPipeline``): ``--video`` noised to ``--strength`` (default
    0.8), its frame count (4 k + 1) the output's (``--frames`` refused)."""

    label = "CogVideoX video-to-video"
    pipelines = ("CogVideoXVideoToVideoPipeline",)
    takes = CogVideoXKind.takes - {"num_frames"} | {"videos", "strength"}
    needs_video = True

    def check_request(self, args) -> None:
        """:class:`CogVideoXKind`'s, and a strength that keeps at least one of the steps."""
        from ..interop.cogvideox import COGVIDEOX_STEPS, COGVIDEOX_STRENGTH
        from .video import check_strength
        super().check_request(args)
        check_strength(args, COGVIDEOX_STEPS, COGVIDEOX_STRENGTH)

    def check_videos(self, args, videos: list) -> None:
        """One frame count, 4 k + 1 (and whole latent patches), before any weight is read."""
        from pathlib import Path

        from ..errors import DiffkitError, read_json_object
        from ..interop.cogvideox import latent_frames
        from .video import video_frames
        frames = video_frames(videos)
        folder = Path(args.checkpoint)
        vae = read_json_object(folder / "vae" / "config.json", "vae config")
        patch_t = read_json_object(folder / "transformer" / "config.json", "transformer config").get("patch_size_t")
        try:
            _, extra = latent_frames(frames, int(vae.get("temporal_compression_ratio", 4)), patch_t)
        except DiffkitError as err:
            raise DiffkitError(f"--video of {frames} frames: {err}") from None
        if extra:
            raise DiffkitError(f"--video of {frames} frames is not allowed; give a multiple of {patch_t} latent "
                               f"frames (the pipeline pads none)")

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, videos=None, **options):
        from ..interop.cogvideox import video_to_video
        return video_to_video(model, videos, prompts, seed=seed, progress=progress, **options)


class CogVideoXFunKind(CogVideoXVideoKind):
    """CogVideoX-Fun control (``CogVideoXFunControlPipeline``): ``--video`` is the control video (pose, depth, edges,
    ...), its frame count (4 k + 1) the output's; no ``--strength`` (nothing is noised from it)."""

    label = "CogVideoX-Fun control"
    pipelines = ("CogVideoXFunControlPipeline",)
    takes = CogVideoXVideoKind.takes - {"strength"}

    def check_request(self, args) -> None:
        """:class:`CogVideoXKind`'s (no strength: nothing is noised from the control video)."""
        CogVideoXKind.check_request(self, args)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, videos=None, **options):
        from ..interop.cogvideox import control_to_video
        return control_to_video(model, videos, prompts, seed=seed, progress=progress, **options)


KIND = CogVideoXKind()
I2V_KIND = CogVideoXImageKind()
V2V_KIND = CogVideoXVideoKind()
FUN_KIND = CogVideoXFunKind()
