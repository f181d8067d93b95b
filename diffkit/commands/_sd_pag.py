"""``diffkit edit --pag-scale S [--pag-layers L,...] [--pag-adaptive-scale A] [--pag-interval T_LO T_HI]``:
perturbed-attention guidance (Ahn et al. 2024) in img2img and inpainting of a Stable Diffusion / SD-XL folder, as
diffusers' StableDiffusion(XL)PAGImg2Img / PAGInpaintPipeline: :func:`diffkit.interop.sd_pag.pag_request`'s wrapper
over the folder's guided denoiser (the flags are ``diffkit sample``'s :class:`~diffkit.commands.sample.GuidanceRequest`
fields; ``--pag-interval``, diffkit's own as in ``diffkit sample``: the perturbed pass only at the scheduler's
timesteps T_LO <= t <= T_HI, :class:`~diffkit.guidance.PerturbedAttentionGuidance`'s interval, after Kynkaanniemi et
al. 2024's guidance interval)."""
from __future__ import annotations

PAG_FLAGS = ("--pag-scale", "--pag-layers", "--pag-adaptive-scale", "--pag-interval")


def add_edit_pag_flags(parser) -> None:
    parser.add_argument("--pag-scale", type=float, metavar="S",
                        help="Stable Diffusion / SD-XL / SD3 folders with --prompt: perturbed-attention guidance "
                             "scale S >= 0 (diffusers' pag_scale, as StableDiffusion(XL/3)PAGImg2ImgPipeline, SD / "
                             "SD-XL PAGInpaintPipeline); 0 = off")
    parser.add_argument("--pag-layers", metavar="L,...",
                        help="with --pag-scale: diffusers' pag_applied_layers, comma-separated regular expressions "
                             "searched in the self-attention module names (default mid; down_blocks.1, ...; SD3: "
                             "default blocks.1)")
    parser.add_argument("--pag-adaptive-scale", type=float, metavar="A",
                        help="with --pag-scale: diffusers' pag_adaptive_scale A >= 0, the scale at the scheduler's "
                             "timestep t is max(S - A (1000 - t), 0); 0 = constant S")
    parser.add_argument("--pag-interval", type=float, nargs=2, metavar=("T_LO", "T_HI"),
                        help="with --pag-scale: perturbed-attention guidance only at the timesteps T_LO <= t <= T_HI "
                             "(training timesteps, as diffkit sample's --pag-interval; not in diffusers)")


def check_edit_pag_flags(args) -> None:
    """The PAG flags, before anything loads: one line where ``--checkpoint`` is not a Stable Diffusion / SD-XL base
    folder (a diffkit checkpoint, an SD-XL refiner: not compared with a pipeline), with ``--denoising-start``, with
    ``--controlnet`` where diffusers has no ControlNet PAG pipeline (SD img2img, SD-XL inpainting), or for a layer name
    of the wrong form."""
    from ..errors import DiffkitError
    from ..interop.sd_pag import check_layer_names
    from ..interop.sd_xl import _index
    from ..interop.stable_diffusion import is_stable_diffusion_folder
    given = [flag for flag, value in zip(PAG_FLAGS, (args.pag_scale, args.pag_layers, args.pag_adaptive_scale,
                                                     args.pag_interval)) if value is not None]
    if not given:
        return
    if not is_stable_diffusion_folder(args.checkpoint) or (_index(args.checkpoint) or {}).get(
            "requires_aesthetics_score"):
        raise DiffkitError(f"{given[0]} in diffkit edit applies to a Stable Diffusion / SD-XL base folder (diffusers' "
                           f"PAG img2img / inpaint pipelines); {args.checkpoint} is not one")
    if args.denoising_start is not None:
        raise DiffkitError(f"{given[0]} does not go with --denoising-start (a refiner's hand-over); drop one of them")
    from ..interop.sd_xl import is_sd_xl_folder
    xl = is_sd_xl_folder(args.checkpoint)
    if args.controlnets and (args.mask is not None) == xl:  # diffusers' ControlNet PAG edits: SD inpaint, SD-XL img2img
        raise DiffkitError(f"{given[0]} with --controlnet is offered for {'img2img' if xl else 'inpainting (--mask)'} "
                           f"on this {'SD-XL' if xl else 'Stable Diffusion'} folder (diffusers has no ControlNet PAG "
                           f"{'inpaint' if xl else 'img2img'} pipeline to match); drop one of them")
    if args.pag_scale:
        check_layer_names(args.pag_layers)


def edit_pag(request, sd, controlnets=None):
    """The wrapper :func:`~diffkit.interop.sd_pag.pag_request` gives for ``request``'s PAG fields on the loaded
    folder ``sd`` (None without --pag-scale, or 0: the edit as before, bit for bit)."""
    if request is None or not request.pag_scale:
        return None
    from ..interop.sd_pag import pag_request
    return pag_request(sd, request.pag_scale, request.pag_layers, request.pag_adaptive_scale, request.pag_interval,
                       controlnets)
