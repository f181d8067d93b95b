"""``diffkit video --checkpoint LTX_FOLDER --prompt TEXT``: an ``LTXPipeline`` folder's text-to-video
(:func:`diffkit.interop.ltx.text_to_video`; ``KIND``) and an ``LTXImageToVideoPipeline`` folder's image-to-video
(``--image PNG``, :func:`diffkit.interop.ltx.image_to_video`; ``IMAGE_KIND``), with ``--guidance-rescale``,
``--decode-timestep``, ``--decode-noise-scale`` (the "LTX-Video" group of :func:`diffkit.commands.video.register`)
and ``--lora``; docs/interop/ltx.md."""
from __future__ import annotations

from pathlib import Path

from .video import VideoKind

LTX_FLAGS = ("guidance_rescale", "decode_timestep", "decode_noise_scale")  # the LTX-Video group's dests


def add_ltx_flags(parser) -> None:
    """The "LTX-Video" argument group of ``diffkit video``."""
    from ._common import unit_float
    group = parser.add_argument_group("LTX-Video")
    group.add_argument("--guidance-rescale", type=unit_float, metavar="PHI",
                       help="LTX-Video folders: the pipeline's guidance_rescale phi in [0, 1] on the guided velocity "
                            "(default 0)")
    group.add_argument("--decode-timestep", type=unit_float, metavar="T",
                       help="LTX-Video folders with a timestep-conditioned VAE (0.9.1 on): the decoder's timestep "
                            "(default 0; Lightricks uses 0.05)")
    group.add_argument("--decode-noise-scale", type=unit_float, metavar="N",
                       help="LTX-Video folders with a timestep-conditioned VAE: the noise mixed into the latents "
                            "before decoding, in [0, 1] (default the decode timestep; Lightricks uses 0.025)")


class LTXKind(VideoKind):
    """``LTXPipeline`` folders: text-to-video, 161 frames of 512 x 704 by default, at 25 fps."""

    label = "LTX-Video"
    pipelines = ("LTXPipeline",)
    takes = frozenset({"negative_prompt", "num_frames", "height", "width", "steps", "sampler", "guidance_scale",
                       "lora", *LTX_FLAGS})
    fps = 25.0  # LTXPipeline's frame_rate (its RoPE's); diffusers' docstring example writes at 24

    def check_folder(self, directory) -> None:
        from ..interop.ltx import check_ltx_folder
        check_ltx_folder(directory)

    def check_request(self, args) -> None:
        from ..errors import DiffkitError, read_json_object
        from ..interop.auraflow import guided
        from ..interop.ltx import LTX_FRAMES, LTX_HEIGHT, LTX_WIDTH, check_video, vae_ratios
        vae = read_json_object(Path(args.checkpoint) / "vae" / "config.json", "vae config")
        check_video(LTX_FRAMES if args.num_frames is None else args.num_frames,
                    LTX_HEIGHT if args.height is None else args.height,
                    LTX_WIDTH if args.width is None else args.width, *vae_ratios(vae))
        if args.guidance_scale is not None:
            on = guided(args.guidance_scale, args.guidance_convention, args.negative_prompt)
            if not on and args.guidance_rescale:
                raise DiffkitError(f"--guidance-rescale {args.guidance_rescale:g} does not apply without CFG "
                                   f"(--guidance-scale {args.guidance_scale:g}, {args.guidance_convention} "
                                   f"convention); drop it")
        if (args.decode_timestep or args.decode_noise_scale) and not vae.get("timestep_conditioning", False):
            raise DiffkitError(f"--decode-timestep / --decode-noise-scale do not apply to {args.checkpoint}: its VAE "
                               f"has no timestep conditioning (timestep_conditioning false); drop them")

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.ltx import load_ltx
        return load_ltx(directory, device, progress=progress, lora=lora)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.ltx import text_to_video
        return text_to_video(model, prompts, seed=seed, progress=progress, **options)


class LTXImageKind(LTXKind):
    """``LTXImageToVideoPipeline`` folders: image-to-video, each ``--image`` the first frame (resized to --height x
    --width, default 512 x 704)."""

    label = "LTX-Video image-to-video"
    pipelines = ("LTXImageToVideoPipeline",)
    takes = LTXKind.takes | {"images"}
    needs_image = True

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.ltx import image_to_video
        return image_to_video(model, images, prompts, seed=seed, progress=progress, **options)


KIND = LTXKind()
IMAGE_KIND = LTXImageKind()
