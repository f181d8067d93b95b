"""``diffkit video --checkpoint WAN_I2V_FOLDER --image PNG --prompt TEXT``: Wan image-to-video folders
(``WanImageToVideoPipeline``) driven by :func:`diffkit.interop.wan_i2v.image_to_video` (its ``VIDEO_KINDS`` line);
``diffkit sample`` / ``diffkit edit`` on such a folder: one line naming ``diffkit video``
(:func:`.video.refuse_video_folder`)."""
from __future__ import annotations

from pathlib import Path

from ..interop.wan_i2v import WAN_I2V_FPS
from ._video_wan import WanKind


class WanI2VKind(WanKind):
    """``WanImageToVideoPipeline`` folders: the image is each video's first frame; 81 frames of 480 x 832, 50 steps
    of the folder's scheduler, CFG s = 5 by default; 16 fps (the pipeline's documented export); Wan text-to-video's
    flags and checks (:class:`._video_wan.WanKind`: ``--guidance-scale-2`` for Wan 2.2 A14B's low-noise expert) and
    ``--last-image`` (first-last-frame to video)."""

    label = "Wan image-to-video"
    pipelines = ("WanImageToVideoPipeline",)
    takes = WanKind.takes | {"images", "last_image"}
    needs_image, needs_prompt = True, True
    images_need_ti2v = False
    fps = WAN_I2V_FPS

    def check_folder(self, directory) -> None:
        from ..interop.wan_i2v import check_wan_i2v_folder
        check_wan_i2v_folder(directory)

    def check_request(self, args) -> None:
        super().check_request(args)
        check_last_image(args)

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.wan_i2v import load_wan_i2v
        return load_wan_i2v(directory, device, progress=progress, lora=lora)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.wan_i2v import image_to_video
        from .video import read_images
        last = options.pop("last_image", None)
        if last is not None:
            options["last_images"] = read_images([last])
        return image_to_video(model, images, prompts, seed=seed, progress=progress, **options)


KIND = WanI2VKind()


def check_last_image(args) -> None:
    """Before any weight is read: ``--last-image`` readable, at 5 frames or more, on a folder that takes it (Wan 2.2
    A14B, or a first-last-frame transformer: ``pos_embed_seq_len``; not Wan 2.2 TI2V-5B), which in turn needs it; one
    line."""
    from ..errors import DiffkitError, read_json_object
    from ..interop.sd_xl import _index as read_index
    from ..interop.wan import check_frames
    from .video import read_images
    config = read_json_object(Path(args.checkpoint) / "transformer" / "config.json", "transformer config")
    index = read_index(args.checkpoint)
    if args.last_image is not None and index.get("expand_timesteps"):
        raise DiffkitError(f"--last-image does not apply to {args.checkpoint}: a Wan 2.2 TI2V-5B folder "
                           f"(expand_timesteps) keeps the first frame alone")
    clip = index.get("boundary_ratio") is None and not index.get("expand_timesteps")
    if args.last_image is None and clip and config.get("pos_embed_seq_len"):
        raise DiffkitError(f"{args.checkpoint}'s transformer is a first-last-frame one (pos_embed_seq_len); give "
                           f"--last-image PNG")
    if args.last_image is None:
        return
    if clip and not config.get("pos_embed_seq_len"):
        raise DiffkitError(f"--last-image does not apply to {args.checkpoint}: its transformer takes one image's CLIP "
                           f"states; first-last-frame to video needs a Wan2.1-FLF2V or a Wan 2.2 A14B folder")
    if check_frames(args.num_frames) < 5:
        raise DiffkitError(f"--frames {args.num_frames} is not allowed with --last-image; give 4 k + 1 >= 5 frames")
    read_images([args.last_image])
