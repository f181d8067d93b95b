"""``diffkit edit --checkpoint DEPTH_FOLDER --images PNG|DIR --prompt TEXT [--control-image DEPTH.png|DIR]``: a
Stable Diffusion 2 depth-to-image folder (``StableDiffusionDepth2ImgPipeline``, :mod:`diffkit.interop.sd_depth`),
dispatched from :func:`diffkit.commands.edit.run`. ``--control-image`` is the depth map, as a FLUX.1 Depth folder's
(one PNG for every image, or a folder of one per ``--images`` file, in name order); without it the folder's own
depth estimator reads each image."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import DiffkitError

# diffkit edit's dests a depth-to-image folder does not take (StableDiffusionDepth2ImgPipeline has no such input)
REFUSED = {"mask": "--mask", "controlnets": "--controlnet", "ip_adapter": "--ip-adapter", "pag_scale": "--pag-scale",
           "refiner": "--refiner", "scheduler": "--scheduler", "height": "--height", "width": "--width",
           "freeu": "--freeu", "apg_eta": "--apg-eta", "apg_norm_threshold": "--apg-norm-threshold",
           "apg_momentum": "--apg-momentum", "interpolate": "--interpolate"}


@dataclass
class DepthRequest:
    """The depth maps of a depth-to-image edit: ``files`` (one, or one per image), or None: the folder's
    estimator."""

    files: Optional[list]

    @classmethod
    def from_args(cls, args, images_path) -> Optional["DepthRequest"]:
        """None unless ``--checkpoint`` is a depth-to-image folder; then the flags it does not take are one line
        each, and ``--control-image`` (taken from ``args``: no ControlNet reads it; a folder: one per file of
        ``images_path``) is read and checked, before any weight is loaded or any output made."""
        from ..interop.sd_depth import is_depth_folder, read_depth_png
        from ..interop.stable_diffusion import is_stable_diffusion_folder
        from ._controlnet import ControlRequest
        from .edit import image_files
        if not (is_stable_diffusion_folder(args.checkpoint) and is_depth_folder(args.checkpoint)):
            return None
        given = next((flag for dest, flag in REFUSED.items() if getattr(args, dest, None) not in (None, False)), None)
        if given:
            raise DiffkitError(f"{given} does not apply to a depth-to-image folder ({args.checkpoint}: "
                               f"StableDiffusionDepth2ImgPipeline); it takes --images, --prompt, --negative-prompt, "
                               f"--strength, --control-image (the depth map), --guidance-scale, --lora, "
                               f"--textual-inversion, --steps, --sampler and its grid options")
        images, args.control_images = list(args.control_images or []), None
        if not images:
            return cls(None)
        if len(images) != 1:
            raise DiffkitError(f"{len(images)} --control-image for a depth-to-image folder; give one (a depth PNG, "
                               f"or a folder of one per --images file)")
        files = ControlRequest.per_row(images[0], len(image_files(images_path)), "--images file(s)", "image")
        files = files if isinstance(files, list) else [files]
        for f in files:
            read_depth_png(f)  # one line for a file that is not a grey image
        return cls(files)

    def with_depth(self, cond_for, sd, folder, files: list, size: tuple, progress: bool, batch_size: int = 16):
        """``cond_for`` with ``cond['depth_map']`` of images start..start + n - 1 (their depth at the latent size,
        :func:`~diffkit.interop.sd_depth.edit_depth`; classifier-free guidance repeats it); ``sd`` loaded from
        ``folder``; the estimator runs ``batch_size`` images at a time."""
        from ..interop.sd_depth import edit_depth, load_depth_estimator
        estimator = None if self.files else load_depth_estimator(folder, sd.device, sd.dtype, progress)
        depth = edit_depth(sd, files, self.files, estimator, *size, batch_size=batch_size)
        return lambda start, n: {**cond_for(start, n), "depth_map": depth[start:start + n]}
