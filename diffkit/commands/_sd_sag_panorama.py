"""``diffkit sample --sag-scale S`` (self-attention guidance, as StableDiffusionSAGPipeline;
:mod:`diffkit.interop.sd_sag`) and ``--panorama [--view-batch-size N] [--circular-padding] [--view-window W]
[--view-stride S]`` (MultiDiffusion, as StableDiffusionPanoramaPipeline; :mod:`diffkit.interop.sd_panorama`) on a
Stable Diffusion 1.x / 2.x folder: the flags, their checks before anything loads, and the ``text_to_image``
keywords they become.
"""
from __future__ import annotations

from ..errors import DiffkitError, check_float32, check_range

FLAGS = (("--sag-scale", "sag_scale"), ("--panorama", "panorama"), ("--view-batch-size", "view_batch_size"),
         ("--circular-padding", "circular_padding"), ("--view-window", "view_window"),
         ("--view-stride", "view_stride"))


def add_sag_panorama_flags(parser) -> None:
    g = parser.add_argument_group("Stable Diffusion 1.x / 2.x folders: self-attention guidance and panoramas "
                                  "(docs/interop.md)")
    g.add_argument("--sag-scale", type=float, metavar="S",
                   help="self-attention guidance scale S >= 0 (Hong et al. 2023; diffusers' sag_scale, as "
                        "StableDiffusionSAGPipeline; its paper's 0.75); 0 = off; needs a sampler on integer "
                        "timesteps (ddim, pndm-skip-prk, plms, ddpm; dpm-solver++-2m, unipc, deis with @trailing)")
    g.add_argument("--panorama", action="store_true",
                   help="MultiDiffusion (Bar-Tal et al. 2023) as StableDiffusionPanoramaPipeline: the latent "
                        "denoised in windows whose predictions are averaged; default size 512 x 2048 "
                        "(--height / --width); deterministic samplers only")
    g.add_argument("--view-batch-size", type=int, metavar="N",
                   help="with --panorama: windows per UNet call (diffusers' view_batch_size, default 1)")
    g.add_argument("--circular-padding", action="store_true",
                   help="with --panorama: windows wrap around horizontally, a seamless 360-degree panorama "
                        "(diffusers' circular_padding)")
    g.add_argument("--view-window", type=int, metavar="W",
                   help="with --panorama: window size in latent pixels (default 64, the pipeline's)")
    g.add_argument("--view-stride", type=int, metavar="S",
                   help="with --panorama: window stride in latent pixels (default 8, the pipeline's)")


def sag_panorama_options(args, checkpoint) -> dict:
    """The given flags as ``text_to_image`` keywords ({} for none), refused in one line for a checkpoint other
    than a Stable Diffusion 1.x / 2.x folder, or a window option without --panorama."""
    given = {key: getattr(args, key, None) for _, key in FLAGS}
    given = {key: value for key, value in given.items() if value is not None and value is not False}
    if not given:
        return {}
    flag = next(flag for flag, key in FLAGS if key in given)
    from ..interop.sd_xl import is_sd_xl_folder
    from ..interop.stable_diffusion import is_stable_diffusion_folder
    if not is_stable_diffusion_folder(checkpoint) or is_sd_xl_folder(checkpoint):
        what = "StableDiffusionSAGPipeline" if flag == "--sag-scale" else "StableDiffusionPanoramaPipeline"
        raise DiffkitError(f"{flag} applies to a Stable Diffusion 1.x / 2.x folder (diffusers' {what}); "
                           f"{checkpoint} is not one")
    if not given.get("panorama"):
        for other, key in FLAGS[2:]:
            if key in given:
                raise DiffkitError(f"{other} needs --panorama")
    if given.get("sag_scale") is not None:
        check_float32("--sag-scale", check_range("--sag-scale", given["sag_scale"], 0.0, None))
    for other, key in (("--view-batch-size", "view_batch_size"), ("--view-window", "view_window"),
                       ("--view-stride", "view_stride")):
        if key in given and given[key] < 1:
            raise DiffkitError(f"{other} {given[key]} is not allowed; give a positive integer")
    return given


__all__ = ["add_sag_panorama_flags", "sag_panorama_options"]
