"""``diffkit edit`` on an InstructPix2Pix folder (an SD / SD-XL UNet with 8 input channels): ``--image-guidance-scale``
and the flags that do not apply to it (:mod:`diffkit.interop.sd_instruct_pix2pix`)."""
from __future__ import annotations

from ._common import non_negative_float


def add_image_guidance_flag(group) -> None:
    group.add_argument("--image-guidance-scale", type=non_negative_float, metavar="S",
                       help="InstructPix2Pix folders (an SD / SD-XL UNet with 8 input channels), with --prompt: the "
                            "image guidance scale s_I of Brooks et al. 2023 eq. 3 (diffusers' image_guidance_scale; "
                            "1 = none; default 1.5); the text scale s_T is --guidance-scale (docs/editing.md); OmniGen "
                            "folders: OmniGenPipeline's img_guidance_scale (default 1.6; docs/interop.md); DreamLite "
                            "folders: DreamLitePipeline's image_guidance_scale (default 1.5)")


def instruct_pix2pix_edit(args) -> bool:
    """True for ``--checkpoint`` an InstructPix2Pix folder, after its flags are checked (before anything loads): the
    flags that do not apply to it refused in one line; False for any other checkpoint, where
    ``--image-guidance-scale`` is refused."""
    from ..errors import DiffkitError
    from ..interop.sd_instruct_pix2pix import is_instruct_pix2pix_folder
    from ..interop.stable_diffusion import is_stable_diffusion_folder
    if not (is_stable_diffusion_folder(args.checkpoint) and is_instruct_pix2pix_folder(args.checkpoint)):
        from ..interop.dreamlite import is_dreamlite_folder
        from ..interop.omnigen import is_omnigen_folder
        if args.image_guidance_scale is not None and not is_omnigen_folder(args.checkpoint) \
                and not is_dreamlite_folder(args.checkpoint):  # (a DreamLite Mobile folder's: refused there)
            raise DiffkitError(f"--image-guidance-scale applies to an InstructPix2Pix folder (an SD / SD-XL UNet with "
                               f"8 input channels), an OmniGen or a DreamLite folder; {args.checkpoint} is none of "
                               f"them")
        return False
    refused = (("--mask", args.mask), ("--strength", args.strength), ("--posterior", args.posterior),
               ("--paste-known", args.paste_known or None), ("--series", args.series),
               ("--interpolate", args.interpolate), ("--scheduler", args.scheduler),
               ("--controlnet", args.controlnets), ("--ip-adapter", args.ip_adapter), ("--refiner", args.refiner),
               ("--denoising-start", args.denoising_start), ("--pag-scale", args.pag_scale),
               ("--apg-eta", args.apg_eta),
               ("--apg-norm-threshold", args.apg_norm_threshold), ("--apg-momentum", args.apg_momentum),
               ("--cfg-trunc-ratio", args.cfg_trunc_ratio), ("--cfg-normalization", args.cfg_norm_cap))
    for flag, value in refused:
        if value is not None:
            raise DiffkitError(f"{flag} does not apply to an InstructPix2Pix folder ({args.checkpoint}: a UNet with 8 "
                               f"input channels, which edits from pure noise with the image latents as its input, as "
                               f"diffusers' InstructPix2Pix pipelines); allowed: --prompt, --guidance-scale, "
                               f"--image-guidance-scale, --negative-prompt, the sampler flags")
    from ..interop.sd_xl import is_sd_xl_folder
    if args.guidance_rescale and not is_sd_xl_folder(args.checkpoint):
        raise DiffkitError(f"--guidance-rescale does not apply to an SD 1.x / 2.x InstructPix2Pix folder "
                           f"({args.checkpoint}; StableDiffusionInstructPix2PixPipeline has no guidance_rescale); "
                           f"allowed on an SD-XL one, as StableDiffusionXLInstructPix2PixPipeline's")
    return True
