"""``diffkit video --checkpoint MOCHI_FOLDER --prompt TEXT``: text-to-video as ``MochiPipeline``
(:func:`diffkit.interop.mochi.text_to_video`; docs/interop/mochi.md)."""
from __future__ import annotations

from .video import VideoKind


class MochiKind(VideoKind):
    """A Mochi 1 folder: the prompt's video, 19 frames of 480 x 848 by default, 64 steps of its linear-quadratic
    flow schedule, CFG s = 4.5; written at 30 fps (diffusers' Mochi docs export at fps=30); ``--lora`` files as
    ``Mochi1LoraLoaderMixin`` loads them, fused at load."""

    label = "Mochi"
    pipelines = ("MochiPipeline",)
    takes = frozenset({"negative_prompt", "num_frames", "height", "width", "steps", "sampler", "guidance_scale",
                       "guidance_convention", "lora"})
    fps = 30.0

    def check_folder(self, directory) -> None:
        from ..interop.mochi import check_mochi_folder
        check_mochi_folder(directory)

    def check_request(self, args) -> None:
        from ..interop.auraflow import guided
        from ..interop.mochi import MOCHI_SIZE, Mochi, check_frames, linear_quadratic_sigmas
        check_frames(args.num_frames)
        Mochi.check_size(MOCHI_SIZE[0] if args.height is None else args.height,
                         MOCHI_SIZE[1] if args.width is None else args.width)
        if args.steps is not None:
            linear_quadratic_sigmas(args.steps)
        if args.guidance_scale is not None:
            guided(args.guidance_scale, args.guidance_convention, args.negative_prompt)

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.mochi import load_mochi
        return load_mochi(directory, device, progress=progress, lora=lora)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.mochi import text_to_video
        return text_to_video(model, prompts, seed=seed, progress=progress, **options)


KIND = MochiKind()
