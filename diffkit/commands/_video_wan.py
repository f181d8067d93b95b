"""``diffkit video --checkpoint WAN_FOLDER --prompt TEXT``: a ``WanPipeline`` folder's videos
(:func:`diffkit.interop.wan.text_to_video`), driven by :mod:`.video` (its ``VIDEO_KINDS`` line); ``diffkit sample`` /
``diffkit edit`` on such a folder: one line naming ``diffkit video`` (:func:`.video.refuse_video_folder`)."""
from __future__ import annotations

from pathlib import Path

from ..interop.wan import WAN_FPS
from .video import VideoKind, article


class WanKind(VideoKind):
    """Wan 2.1 / 2.2 A14B text-to-video: 81 frames of 480 x 832, 50 steps of the folder's scheduler and CFG s = 5 by
    default, 16 fps (the frame rate of diffusers' Wan example); ``--guidance-scale-2``: a Wan 2.2 A14B folder's
    low-noise expert's scale; ``--image`` on a Wan 2.2 TI2V-5B folder (``expand_timesteps``): its image-to-video, as
    ``WanImageToVideoPipeline.from_pretrained`` of the folder (:func:`diffkit.interop.wan_i2v.image_to_video`)."""

    label = "Wan"
    pipelines = ("WanPipeline",)
    takes = frozenset({"negative_prompt", "num_frames", "height", "width", "steps", "sampler", "guidance_scale",
                       "guidance_convention", "guidance_scale_2", "lora", "images"})
    fps = WAN_FPS
    images_need_ti2v = True  # --image only on a Wan 2.2 TI2V-5B folder (expand_timesteps)

    def check_folder(self, directory) -> None:
        from ..interop.wan import check_wan_folder
        check_wan_folder(directory)

    def check_request(self, args) -> None:
        from ..interop.auraflow import guided
        from ..interop.sd_xl import _index as read_index
        from ..interop.wan import SIZE_MULTIPLE, check_experts, check_frames
        from ..errors import DiffkitError, read_json_object
        check_frames(args.num_frames)
        vae = read_json_object(Path(args.checkpoint) / "vae" / "config.json", "vae config")
        multiple = max(SIZE_MULTIPLE, 2 * int(vae.get("scale_factor_spatial", 8)))  # Wan.size_multiple
        for flag in ("height", "width"):
            value = getattr(args, flag)
            if value is not None and value % multiple:
                raise DiffkitError(f"--{flag} {value} is not allowed for {article(self.label)} {self.label} folder; "
                                   f"give a multiple of {multiple} ({self.pipelines[0]}'s check_inputs and patches)")
        if args.guidance_scale is not None:
            guided(args.guidance_scale, args.guidance_convention, args.negative_prompt)
        if args.guidance_scale_2 is not None and not check_experts(args.checkpoint, read_index(args.checkpoint)):
            raise DiffkitError(f"--guidance-scale-2 applies to a Wan 2.2 A14B folder (transformer_2 with "
                               f"boundary_ratio); {args.checkpoint} has one transformer")
        if self.images_need_ti2v and args.images and not is_ti2v(args.checkpoint):
            raise DiffkitError(f"--image does not apply to a Wan folder ({args.checkpoint}) other than Wan 2.2 "
                               f"TI2V-5B's (expand_timesteps, one transformer); image-to-video takes a "
                               f"WanImageToVideoPipeline folder")

    def load(self, directory, device, progress: bool, lora=None):
        """:func:`~diffkit.interop.wan.load_wan`; a TI2V-5B folder's as an image-to-video folder too
        (:func:`~diffkit.interop.wan_i2v.load_wan_i2v`: the same parts, no image encoder)."""
        from ..interop.wan import load_wan
        from ..interop.wan_i2v import load_wan_i2v
        return (load_wan_i2v if is_ti2v(directory) else load_wan)(directory, device, progress=progress, lora=lora)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.wan import text_to_video
        from ..interop.wan_i2v import image_to_video
        if images is not None:  # a TI2V-5B folder's image-to-video
            return image_to_video(model, images, prompts, seed=seed, progress=progress, **options)
        return text_to_video(model, prompts, seed=seed, progress=progress, **options)


KIND = WanKind()


def is_ti2v(directory) -> bool:
    """A Wan 2.2 TI2V-5B folder: ``expand_timesteps`` with one transformer (no ``boundary_ratio``), from its
    ``model_index.json``."""
    from ..interop.sd_xl import _index as read_index
    index = read_index(directory) or {}
    return index.get("expand_timesteps") is True and index.get("boundary_ratio") is None

