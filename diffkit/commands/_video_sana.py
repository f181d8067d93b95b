"""``diffkit video --checkpoint SANA_VIDEO_FOLDER --prompt TEXT [--image PNG]``: SANA-Video as ``SanaVideoPipeline``
(:data:`KIND`; with ``--image`` its image-to-video, as ``SanaImageToVideoPipeline.from_pretrained`` of the folder)
and ``SanaImageToVideoPipeline`` folders (:data:`I2V_KIND`) (:mod:`diffkit.interop.sana_video`;
docs/interop/sana_video.md), driven by :mod:`.video` (their ``VIDEO_KINDS`` lines)."""
from __future__ import annotations

from ..interop.sana_video import SANA_VIDEO_FPS
from .video import VideoKind


class SanaVideoKind(VideoKind):
    """SANA-Video text-to-video (``--image``: image-to-video, the image each video's first frame): 81 frames of 480 x
    832, 50 steps of the folder's scheduler and CFG s = 6 against ``--negative-prompt`` (default "") by default,
    sizes multiples of 32; 16 fps (diffusers' examples)."""

    label = "SANA-Video"
    pipelines = ("SanaVideoPipeline",)
    takes = frozenset({"negative_prompt", "num_frames", "height", "width", "steps", "sampler", "guidance_scale",
                       "guidance_convention", "images"})
    fps = SANA_VIDEO_FPS

    def check_folder(self, directory) -> None:
        from ..interop.sana_video import check_sana_video_folder
        check_sana_video_folder(directory, self.pipelines)

    def check_request(self, args) -> None:
        """One line for frames other than 4 k + 1, sizes not multiples of 32 (``check_inputs``; of 2 f with a Wan
        2.2 VAE of factor f = 16) or a guidance scale that turns CFG off with a negative prompt."""
        from pathlib import Path

        from ..errors import DiffkitError, read_json_object
        from ..interop.auraflow import guided
        from ..interop.sana_video import SIZE_MULTIPLE, check_frames
        check_frames(args.num_frames)
        vae = read_json_object(Path(args.checkpoint) / "vae" / "config.json", "vae config")
        multiple = max(SIZE_MULTIPLE, 2 * int(vae.get("scale_factor_spatial", 8)))  # SanaVideo.size_multiple
        for flag in ("height", "width"):
            value = getattr(args, flag)
            if value is not None and value % multiple:
                raise DiffkitError(f"--{flag} {value} is not allowed for a {self.label} folder; give a multiple of "
                                   f"{multiple} ({self.pipelines[0]}'s check_inputs and patches)")
        if args.guidance_scale is not None:
            guided(args.guidance_scale, args.guidance_convention, args.negative_prompt)

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.sana_video import load_sana_video
        return load_sana_video(directory, device, progress=progress)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.sana_video import generate
        return generate(model, prompts, images, seed=seed, progress=progress, **options)


class SanaImageToVideoKind(SanaVideoKind):
    """A ``SanaImageToVideoPipeline`` folder: SANA-Video's image-to-video (``--image`` required), its defaults."""

    label = "SANA-Video image-to-video"
    pipelines = ("SanaImageToVideoPipeline",)
    needs_image = True


KIND = SanaVideoKind()
I2V_KIND = SanaImageToVideoKind()
