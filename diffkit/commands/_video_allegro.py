"""``diffkit video --checkpoint ALLEGRO_FOLDER --prompt TEXT``: text-to-video as ``AllegroPipeline``
(:func:`diffkit.interop.allegro.text_to_video`; docs/interop/allegro.md)."""
from __future__ import annotations

from .video import VideoKind


class AllegroKind(VideoKind):
    """An Allegro folder: the prompt's video, 88 frames of 720 x 1280 by default (the transformer's sample size), 100
    steps of its scheduler (Euler-ancestral for the released folder), CFG s = 7.5 against ``--negative-prompt``
    (default ""); written at 15 fps (the pipeline's example exports at fps=15)."""

    label = "Allegro"
    pipelines = ("AllegroPipeline",)
    takes = frozenset({"negative_prompt", "num_frames", "height", "width", "steps", "sampler", "guidance_scale",
                       "guidance_convention"})
    fps = 15.0

    def check_folder(self, directory) -> None:
        from ..interop.allegro import check_allegro_folder
        check_allegro_folder(directory)

    def check_request(self, args) -> None:
        """One line, from the folder's JSON, for a frame count or size the pipeline rejects or the VAE's tiles do not
        cover, a guidance scale that turns CFG off with a negative prompt, or a folder scheduler no sampler computes
        (no --sampler)."""
        from ..interop.allegro import check_allegro_folder, folder_sampler, video_geometry
        from ..interop.auraflow import guided
        _, transformer, vae, sched = check_allegro_folder(args.checkpoint)
        video_geometry(transformer, vae, args.num_frames, args.height, args.width)
        if args.guidance_scale is not None:
            guided(args.guidance_scale, args.guidance_convention, args.negative_prompt)
        if args.sampler is None:
            folder_sampler(sched)

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.allegro import load_allegro
        return load_allegro(directory, device, progress=progress)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.allegro import text_to_video
        return text_to_video(model, prompts, seed=seed, progress=progress, **options)


KIND = AllegroKind()
