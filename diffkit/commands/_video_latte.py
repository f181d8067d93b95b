"""``diffkit video --checkpoint LATTE_FOLDER --prompt TEXT``: text-to-video as ``LattePipeline``
(:func:`diffkit.interop.latte.text_to_video`; docs/interop/latte.md)."""
from __future__ import annotations

from .video import VideoKind


class LatteKind(VideoKind):
    """A Latte folder: the prompt's video, 16 frames (the transformer's ``video_length``) of 512 x 512 by default, 50
    steps of its scheduler, CFG s = 7.5 against ``--negative-prompt`` (default ""), ``--no-temporal-attention``;
    written at 8 fps (the Latte-1 model card's example writes ``fps=8``; LattePipeline's docstring: "16 frames which
    at 8 frames per seconds")."""

    label = "Latte"
    pipelines = ("LattePipeline",)
    takes = frozenset({"negative_prompt", "num_frames", "height", "width", "steps", "sampler", "guidance_scale",
                       "guidance_convention", "no_temporal_attention"})
    fps = 8.0

    def check_folder(self, directory) -> None:
        from ..interop.latte import check_latte_folder
        check_latte_folder(directory)

    def check_request(self, args) -> None:
        """One line, from the folder's JSON, for a frame count other than the transformer's video_length or 1, a size
        that is not whole patches, a guidance scale that turns CFG off with a negative prompt, or a folder scheduler
        no sampler computes (no --sampler)."""
        import math
        from pathlib import Path

        from ..errors import DiffkitError, read_json_object
        from ..interop.auraflow import guided
        from ..interop.latte import LATTE_SIDE, check_frames
        from ..interop.pixart import folder_sampler
        folder = Path(args.checkpoint)
        config = read_json_object(folder / "transformer" / "config.json", "transformer config")
        vae = read_json_object(folder / "vae" / "config.json", "vae config")
        check_frames(int(config.get("video_length") or 16), args.num_frames)
        f = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
        multiple = math.lcm(8, f * int(config.get("patch_size") or 1))
        for flag, value in (("--height", args.height), ("--width", args.width)):
            value = LATTE_SIDE if value is None else value
            if value % multiple:
                raise DiffkitError(f"{flag} {value} is not allowed for {folder}; give a multiple of {multiple} (the "
                                   f"pipeline's 8, the VAE factor {f} x the patch size)")
        if args.guidance_scale is not None:
            guided(args.guidance_scale, args.guidance_convention, args.negative_prompt)
        if args.sampler is None:
            folder_sampler(read_json_object(folder / "scheduler" / "scheduler_config.json", "scheduler config"))

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.latte import load_latte
        return load_latte(directory, device, progress=progress)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.latte import text_to_video
        temporal = not options.pop("no_temporal_attention", False)
        return text_to_video(model, prompts, seed=seed, progress=progress, enable_temporal_attentions=temporal,
                             **options)


KIND = LatteKind()
