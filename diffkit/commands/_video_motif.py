"""``diffkit video --checkpoint MOTIF_VIDEO_FOLDER --prompt TEXT``: Motif-Video as ``MotifVideoPipeline``
(:data:`KIND`) and, with ``--image``, ``MotifVideoImage2VideoPipeline`` folders (:data:`I2V_KIND`)
(:mod:`diffkit.interop.motif_video`; docs/interop/motif_video.md), driven by :mod:`.video` (their ``VIDEO_KINDS``
lines)."""
from __future__ import annotations

from ..interop.motif_video import MOTIF_FPS
from .video import VideoKind


class MotifVideoKind(VideoKind):
    """Motif-Video text-to-video: 121 frames of 736 x 1280, 50 flow Euler steps on the dynamically shifted grid and
    the folder's guider (CFG against ``--negative-prompt``, default "") by default, sizes multiples of 16; 24 fps
    (diffusers' example)."""

    label = "Motif-Video"
    pipelines = ("MotifVideoPipeline",)
    takes = frozenset({"negative_prompt", "num_frames", "height", "width", "steps", "sampler", "guidance_scale",
                       "guidance_convention"})
    fps = MOTIF_FPS

    def check_folder(self, directory) -> None:
        from ..interop.motif_video import check_motif_video_folder
        check_motif_video_folder(directory, self.pipelines[0])

    def check_request(self, args) -> None:
        """One line for frames other than 4 k + 1, sizes not multiples of the VAE factor times the patch (16), or a
        negative prompt where the guider (its scale replaced by ``--guidance-scale``) does not guide."""
        from pathlib import Path

        from ..errors import DiffkitError, read_json_object
        from ..interop.motif_video import check_frames, run_guider
        check_frames(args.num_frames)
        folder = Path(args.checkpoint)
        vae = read_json_object(folder / "vae" / "config.json", "vae config")
        transformer = read_json_object(folder / "transformer" / "config.json", "transformer config")
        multiple = int(vae.get("scale_factor_spatial", 8)) * int(transformer.get("patch_size", 2))
        for flag in ("height", "width"):
            value = getattr(args, flag)
            if value is not None and value % multiple:
                raise DiffkitError(f"--{flag} {value} is not allowed for a {self.label} folder; give a multiple of "
                                   f"{multiple} (the VAE's factor times the transformer's patches)")
        guider = read_json_object(folder / "guider" / "guider_config.json", "guider config")
        run_guider(guider, args.guidance_scale, args.guidance_convention, args.negative_prompt)

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.motif_video import load_motif_video
        return load_motif_video(directory, device, progress=progress)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.motif_video import generate
        return generate(model, prompts, images, seed=seed, progress=progress, **options)


class MotifImageToVideoKind(MotifVideoKind):
    """A ``MotifVideoImage2VideoPipeline`` folder: Motif-Video's image-to-video (``--image`` required, each video's
    first frame), its defaults."""

    label = "Motif-Video image-to-video"
    pipelines = ("MotifVideoImage2VideoPipeline",)
    takes = MotifVideoKind.takes | {"images"}
    needs_image = True


KIND = MotifVideoKind()
I2V_KIND = MotifImageToVideoKind()
