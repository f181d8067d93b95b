"""``diffkit video --checkpoint SVD_FOLDER --image PNG``: Stable Video Diffusion folders
(``StableVideoDiffusionPipeline``; :mod:`diffkit.interop.svd`), image-to-video without a prompt. Its own flags
(``--motion-bucket-id``, ``--noise-aug-strength``, ``--min-guidance-scale`` / ``--max-guidance-scale``: the
"Stable Video Diffusion" group of ``diffkit video``); ``--fps`` both conditions the UNet (as fps - 1, the pipeline's
``fps``) and is the frame rate written (diffusers' docs export at the pipeline's fps, 7); ``--guidance-scale`` and
``--prompt`` are refused (the pipeline's guidance is per frame, from the min to the max scale; it takes no prompt)."""
from __future__ import annotations

from .video import VideoKind


class SVDKind(VideoKind):
    label = "Stable Video Diffusion"
    pipelines = ("StableVideoDiffusionPipeline",)
    takes = frozenset({"images", "num_frames", "height", "width", "steps", "sampler", "fps", "motion_bucket_id",
                       "noise_aug_strength", "min_guidance_scale", "max_guidance_scale"})
    needs_image, needs_prompt = True, False
    fps = 7.0  # the pipeline's fps argument (conditioned as fps - 1) and its docs' export_to_video(..., fps=7)

    def check_folder(self, directory) -> None:
        from ..interop.svd import check_svd_folder
        check_svd_folder(directory)

    def check_request(self, args) -> None:
        from ..errors import DiffkitError
        from ..interop.svd import MAX_GUIDANCE, MIN_GUIDANCE, SIZE_MULTIPLE, check_guidance
        if args.prompts:
            raise DiffkitError(f"--prompt does not apply to a {self.label} folder ({args.checkpoint}): it makes a "
                               f"video of --image alone")
        check_guidance(MIN_GUIDANCE if args.min_guidance_scale is None else args.min_guidance_scale,
                       MAX_GUIDANCE if args.max_guidance_scale is None else args.max_guidance_scale,
                       ("--min-guidance-scale", "--max-guidance-scale"))
        for flag, value in (("--height", args.height), ("--width", args.width)):
            if value is not None and value % SIZE_MULTIPLE:
                raise DiffkitError(f"{flag} {value} is not allowed for a {self.label} folder; give a multiple of "
                                   f"{SIZE_MULTIPLE} (StableVideoDiffusionPipeline's check_inputs)")

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.svd import load_svd
        return load_svd(directory, device, progress=progress)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.svd import image_to_video
        return image_to_video(model, images, seed=seed, progress=progress, **options)


KIND = SVDKind()
