"""``diffkit video --checkpoint EASYANIMATE_FOLDER --prompt TEXT``: text-to-video as ``EasyAnimatePipeline``
(:func:`diffkit.interop.easyanimate.text_to_video`; ``KIND``), and ``--checkpoint EASYANIMATE_INPAINT_FOLDER --image
PNG --prompt TEXT``: image-to-video as ``EasyAnimateInpaintPipeline`` with the image as the first frame
(:func:`diffkit.interop.easyanimate_inpaint.image_to_video`; ``I2V_KIND``); docs/interop/easyanimate.md. CFG
(``--guidance-scale``, default 5.0, in ``--guidance-convention``) against ``--negative-prompt`` (default "").
``diffkit sample`` / ``diffkit edit`` on such a folder: one line naming ``diffkit video``
(:func:`.video.refuse_video_folder`)."""
from __future__ import annotations

from .video import VideoKind


class EasyAnimateKind(VideoKind):
    """An EasyAnimate folder: the prompt's video, 49 frames of 512 x 512 by default, 50 steps of its scheduler;
    written at 8 fps (diffusers' EasyAnimatePipeline example: ``export_to_video(video, "output.mp4", fps=8)``)."""

    label = "EasyAnimate"
    pipelines = ("EasyAnimatePipeline",)
    takes = frozenset({"negative_prompt", "num_frames", "height", "width", "steps", "sampler", "guidance_scale",
                       "guidance_convention"})
    fps = 8.0

    def check_folder(self, directory) -> None:
        from ..interop.easyanimate import check_easyanimate_folder
        check_easyanimate_folder(directory, self.pipelines[0])

    def check_request(self, args) -> None:
        """Frames (1 + r k, r the VAE's temporal ratio 2^(levels - 2)), size (multiples of 16) and a negative prompt
        without guidance, from the JSON alone."""
        from pathlib import Path

        from ..errors import read_json_object
        from ..interop.auraflow import guided
        from ..interop.easyanimate import EASYANIMATE_GUIDANCE, EASYANIMATE_SIZE
        from ..interop.hunyuan_video import check_frames, check_size
        vae = read_json_object(Path(args.checkpoint) / "vae" / "config.json", "vae config")
        if args.num_frames is not None:
            check_frames(args.num_frames, 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 2))
        if args.height is not None or args.width is not None:
            check_size(args.height or EASYANIMATE_SIZE[0], args.width or EASYANIMATE_SIZE[1], self.pipelines[0])
        if args.guidance_scale is None:  # the pipeline's default, in its own convention
            guided(EASYANIMATE_GUIDANCE, "diffusers", args.negative_prompt)
        else:
            guided(args.guidance_scale, args.guidance_convention, args.negative_prompt)

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.easyanimate import load_easyanimate
        return load_easyanimate(directory, device, progress=progress)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.easyanimate import text_to_video
        return text_to_video(model, prompts, seed=seed, progress=progress, **options)


class EasyAnimateI2VKind(EasyAnimateKind):
    """An EasyAnimate inpainting folder: each ``--image`` the first frame (resized to --height x --width, default 512
    x 512) of its video, the rest as :class:`EasyAnimateKind`'s."""

    label = "EasyAnimate image-to-video"
    pipelines = ("EasyAnimateInpaintPipeline",)
    takes = EasyAnimateKind.takes | {"images"}
    needs_image = True

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.easyanimate_inpaint import load_easyanimate_inpaint
        return load_easyanimate_inpaint(directory, device, progress=progress)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.easyanimate_inpaint import image_to_video
        return image_to_video(model, images, prompts, seed=seed, progress=progress, **options)


KIND = EasyAnimateKind()
I2V_KIND = EasyAnimateI2VKind()
