"""``diffkit sample``: draw an image grid from a checkpoint with any sampler.

A time-series checkpoint (``dataset = "sines"``) writes its samples as OUT.npy (N, C, L) and a line
plot of the first 16 to OUT (.png) instead of a grid; one trained on a series file (``dataset =
"series"``) writes them in the file's original units (clamped to [-1, 1], then unnormalised with the
min and max of its training rows stored in the checkpoint). A class-conditional series checkpoint (a file's
``label_column``) takes ``--class`` and ``--guidance-scale`` as below and writes the labels to OUT_labels.npy.

Class-conditional checkpoints sample the classes of ``--class`` (default: every class, one row
per class). ``--guidance-scale W`` turns on classifier-free guidance in the seed's convention
eps-bar = (1 + W) eps(x, y) - W eps(x, null), so W = 0 is the plain conditional model
(``--guidance-convention diffusers`` reads the value as diffusers' s = 1 + W instead).
``--classifier CKPT --classifier-scale S`` adds classifier guidance (Dhariwal & Nichol 2021,
Algorithm 2, or Algorithm 1 with ``--classifier-algorithm 1`` and the ddpm sampler), also for
unconditional checkpoints. ``--clip-guidance TEXT --clip-model DIR --clip-scale S`` adds CLIP guidance
(GLIDE, Nichol et al. 2022): the gradient of the cosine similarity of a local CLIP's image embedding
of the predicted x_0 (``--clip-input x_t``: of x_t, for a noise-aware CLIP) and the prompt's text
embedding, for models of RGB images. ``--pag-scale S`` adds Perturbed-Attention Guidance (Ahn et al. 2024):
eps + S (eps - eps-hat), eps-hat the network with the identity as the self-attention map of ``--pag-layers``
(default ``mid``; ``down.L`` / ``up.L`` for a level L of the config's ``attn``; on a Stable Diffusion / SD-XL
/ SD3 / HunyuanDiT folder diffusers' ``pag_applied_layers`` names, as StableDiffusion(XL / 3)PAGPipeline and
HunyuanDiTPAGPipeline), also for unconditional
checkpoints; with ``--guidance-scale`` the three passes share one batched call; ``--pag-interval T_LO T_HI``
limits it to those times, ``--pag-adaptive-scale A`` decays it towards t = 0 (diffusers' ``pag_adaptive_scale``).
See docs/guidance.md.

Text-conditional checkpoints (docs/latent.md) sample ``--prompt TEXT`` (several ``--prompt``:
one row per prompt; default: each class's caption, e.g. "a photo of a sneaker"); with
``--guidance-scale W`` the empty prompt "" is the null condition. Words the model's vocabulary
lacks are encoded as ``<unk>`` with a warning. A w-conditioned consistency model (LCM, docs/consistency.md)
takes ``--guidance-scale W`` as its network input w: one call per step, no classifier-free pass
(default: the middle of the range it was distilled on; a W outside it warns). Latent checkpoints
sample latents and decode them with the autoencoder stored in the checkpoint. A diffusers Stable
Diffusion folder samples ``--prompt``; one with an LCMScheduler (a latent consistency model, e.g.
LCM_Dreamshaper_v7) defaults to the consistency sampler in 4 steps (docs/interop.md); ``--scheduler lcm`` samples
a plain folder (e.g. with an LCM-LoRA in ``--lora``; SD 1.x/2.x or SD-XL) as diffusers' ``LCMScheduler.from_config``
would, ``tcd`` as ``TCDScheduler`` (:mod:`diffkit.interop.sd_scheduler`; a TCDScheduler folder samples so by itself).
SD-XL (``--refiner``), SD3 and FLUX.1 folders sample as their text-to-image pipelines, with ControlNets (SD-XL and
FLUX.1 ControlNet-Union: ``--control-mode``), IP-Adapters, a FLUX.1 Depth / Canny folder with ``--control-image``,
FLUX.1 Redux with ``--redux`` (docs/interop.md); Chroma, Qwen-Image, Z-Image, Ovis-Image, ERNIE-Image, PixArt-α / Σ,
Sana (Sprint), Lumina-Image 2.0, Lumina-Next, AuraFlow, HunyuanDiT, HiDream-I1, CogView4, PRX, Kandinsky 5,
HunyuanImage 2.1, Ideogram 4 and DeepFloyd IF folders as their pipelines too (``._chroma``, ``._pixart``), FLUX.2
folders (``._flux2``, reference images: ``--reference-image``), Stable Cascade prior + decoder folders
(``._stable_cascade``), latent-diffusion (LDM) text-to-image and unconditional folders (``._ldm``), Stable Diffusion
image variation folders with ``--image PNG`` (``._sd_image_variation``), Stable unCLIP folders (``--noise-level``;
the img2img one's ``--image PNG``, ``._stable_unclip``); a FLUX.1 Fill
or Kontext, InstructPix2Pix or SD 2 depth-to-image folder edits: ``diffkit edit``; an x4 / x2 latent upscaler or
DeepFloyd IF stage-II folder upscales: ``diffkit upscale`` (an LDM super-resolution folder too).

Sample i depends only on ``--seed`` + i (per-sample generators), never on ``--batch-size``; the
same command gives the same PNG bytes run after run on the CPU. A legacy plain state dict
(``ckpt_199.pt``) needs ``--config`` with the config it was trained with (the seed's modelConfig);
``--config`` without ``--checkpoint`` samples the config's ``test_load_weight`` in its
``save_weight_dir``, the file the seed's ``state: "eval"`` mode loads.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import DiffkitError, DiffkitWarning, check_float32, check_range, shorten
from ..guidance import CLIP_INPUTS
from ._controlnet import ControlRequest, add_controlnet_flags
from ._ip_adapter import IPAdapterRequest, add_ip_adapter_flags
from ._flux_redux import ReduxRequest, add_redux_flags
from ._refiner import RefinerRequest, add_refiner_flags
from ._t2i_adapter import T2IAdapterRequest, add_t2i_adapter_flags
from ._common import (add_flow_shift_flag, add_lora_flags, add_network_flags, add_progress_flag, add_solver_flags,
                      add_textual_inversion_flag, add_thresholding_flag, batch_size_or_auto, check_flow_shift,
                      check_lora_flags, check_output_file, check_writable_dir, eta_value, int_in, missing_dirs,
                      non_negative_float, path_arg, positive_int, removed_if_empty_on_failure, seed_int,
                      tolerance_options)
from ._common import add_freeu_flag, add_stochasticity_flags, check_freeu_checkpoint, int_list
from ._sd_prompts import add_prompt_encoding_flags
from ._sd3_slg import add_slg_flags
from ._size_conditions import add_size_condition_flags


MAX_SAMPLES = 100_000  # per command; more samples: several runs with different --seed
GRID_LIMIT = 4096  # the grid PNGs show at most the first 4096 images (--individual writes all)


def register(sub) -> None:
    p = sub.add_parser("sample", help="sample images from a checkpoint", description=__doc__)
    p.add_argument("--checkpoint", type=path_arg,
                   help="a .safetensors checkpoint, a run's checkpoint folder or a diffusers folder (SD, SD-XL, "
                        "SD3, FLUX.1, Chroma, Bria 3.2, Qwen-Image, Z-Image, PixArt, Sana, DiT, OpenAI consistency "
                        "models, GLIGEN; docs/interop.md); default with "
                        "--config: its "
                        "test_load_weight in its save_weight_dir")
    p.add_argument("--config", type=path_arg,
                   help="the TOML/YAML/JSON training config (the seed's modelConfig): describes a "
                        "legacy .pt state dict's U-Net and schedule; without --checkpoint, its "
                        "test_load_weight (in save_weight_dir) is the checkpoint, as the seed's "
                        "state 'eval' loads it; with --checkpoint MODEL.safetensors, an original-format SD 1.x / 2.x, "
                        "SD-XL, SD3 or FLUX.1 single file: the local diffusers folder of its model (docs/interop.md, "
                        "single-file checkpoints)")
    s = p.add_argument_group("sampler and time grid (docs/samplers.md)")
    s.add_argument("--sampler", help="see 'diffkit samplers' (default ddim; consistency for a consistency model); "
                   "NAME@SPACING:FINAL "
                   "also sets the grid, e.g. unipc:zero")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--steps", type=positive_int, help="sampling steps (default 50; a consistency model's own, 4, "
                   "with the consistency sampler)")
    g.add_argument("--nfe", type=positive_int, help="network evaluations to spend (picks the step count)")
    g.add_argument("--timesteps", type=int_list, metavar="K,...",
                   help="consistency-model folders (ConsistencyModelPipeline): the pipeline's explicit timesteps, "
                        "decreasing indices into the scheduler's Karras sigmas, e.g. 22,0 (instead of --steps)")
    s.add_argument("--eta", type=eta_value, help="DDIM eta: a number >= 0 (0 = deterministic) or sigma_hat")
    add_stochasticity_flags(s)  # --gamma (tcd), --tau (sa-solver)
    add_solver_flags(s)
    add_flow_shift_flag(s)
    add_thresholding_flag(s)
    s.add_argument("--scheduler", choices=("lcm", "tcd"),
                   help="Stable Diffusion / SD-XL folders: sample as diffusers' pipe.scheduler = LCMScheduler (lcm) / "
                        "TCDScheduler (tcd) .from_config(pipe.scheduler.config), e.g. with an LCM-LoRA in --lora: "
                        "default sampler consistency (tcd), 4 steps, --guidance-scale 1 (docs/interop.md)")
    o = p.add_argument_group("output")
    o.add_argument("--num", type=int_in(1, MAX_SAMPLES), help="number of images (default 64; conditional models "
                   "with several classes: one row of --nrow images per class)")
    o.add_argument("--batch-size", type=batch_size_or_auto, default="auto",
                   help="images per forward pass, or auto (default): the largest batch whose measured peak memory "
                        "fits in the free memory (at most 256 on the CPU, 1024 on a GPU)")
    o.add_argument("--nrow", type=int_in(1, 1024), help="grid columns (default: the checkpoint's nrow)")
    o.add_argument("--out", type=path_arg, help="grid PNG (default: the checkpoint's sampled_dir/sampledImgName)")
    o.add_argument("--noise-out", type=path_arg,
                   help="grid PNG of the starting noise (default: beside --out, sampledNoisyImgName)")
    o.add_argument("--individual", type=path_arg, help="also write each image as a PNG into this folder")
    o.add_argument("--progressive", type=int_in(2, 1001), metavar="K",
                   help="also write OUT_progressive.png: per sample (row) the x0 prediction at K times from the "
                        "grid's first time to the final sample (DDPM Sec. 4.3, Fig. 6; docs/samplers.md)")
    o.add_argument("--seed", type=seed_int, default=0,
                   help="sample i uses seed + i (independent of batch size; default 0)")
    o.add_argument("--scale", type=int_in(1, 32), default=1,
                   help="upscale the grid PNG by this factor (1..32, default 1)")
    add_network_flags(p)
    add_lora_flags(p)
    add_textual_inversion_flag(p)
    p.add_argument("--height", type=positive_int, metavar="H",
                   help="diffusers folders (SD, SD-XL, Kolors, SD3, FLUX.1, FLUX.2, Chroma, Bria 3.2, Z-Image, "
                        "Qwen-Image, Ovis-Image, ERNIE-Image, PixArt, Sana, Lumina-Image 2.0, AuraFlow, HunyuanDiT, "
                        "PRX, HunyuanImage, Ideogram 4, Kandinsky 5: the nearest of its resolutions): the images' "
                        "height, the pipeline's height (default the folder's size; multiples of 8 for SD / SD-XL, "
                        "16 for SD3 and FLUX.1; --controlnet images are resized to it; not with --t2i-adapter)")
    p.add_argument("--width", type=positive_int, metavar="W", help="as --height, the images' width")
    g = p.add_argument_group("classes, prompts and guidance (docs/guidance.md, docs/latent.md)")
    g.add_argument("--prompt", dest="prompts", action="append", metavar="TEXT",
                   help="text-conditional checkpoints and diffusers folders: the prompt; repeat for one row per "
                        "prompt (default: every class's caption)")
    g.add_argument("--negative-prompt", metavar="TEXT",
                   help="Stable Diffusion / SD-XL / SD3 / Chroma / Z-Image / Ovis-Image / ERNIE-Image / PixArt / "
                        "Sana (not Sprint) folders: "
                        "the null condition of classifier-free guidance, for "
                        "every prompt (default: the empty prompt; SD-XL: zeros if its force_zeros_for_empty_prompt); "
                        "FLUX folders: with --true-cfg-scale; Qwen-Image folders: turns on their true CFG (no "
                        "default)")
    add_prompt_encoding_flags(g, true_cfg=True, lumina=True)  # --clip-skip, --prompt-2, --negative-prompt-2, ...
    g.add_argument("--class", dest="classes", type=int, nargs="+", metavar="ID",
                   help="class id(s) to sample (default for a conditional model: every class, one row each)")
    g.add_argument("--guidance-scale", type=float, metavar="W",
                   help="classifier-free guidance weight; seed convention (1+W) eps(x,y) - W eps(x,null): "
                        "0 = conditional model, larger = stronger; a w-conditioned consistency model takes W "
                        "as its input (one call per step; default: the middle of its trained range)")
    add_guidance_convention_flag(g)
    add_rescale_interval_flags(g)
    g.add_argument("--pag-scale", type=float, metavar="S",
                   help="perturbed-attention guidance scale s >= 0 of eps + s (eps - eps-hat), eps-hat with the "
                        "identity as the self-attention map of --pag-layers (Ahn et al. 2024); 0 = off")
    g.add_argument("--pag-layers", metavar="L,...",
                   help="with --pag-scale: the self-attention layers to perturb, comma-separated: mid (default), "
                        "down.L, up.L for a level L (an index into channel_mult) in the model's attn; on a Stable "
                        "Diffusion / SD-XL / SD3 folder diffusers' pag_applied_layers (regular expressions searched "
                        "in the module names: mid, down_blocks.1, up_blocks.1.attentions.1, ...; SD3 / HunyuanDiT: "
                        "blocks.1, the default there, ...; PixArt-Σ: blocks.1, Sana: transformer_blocks.0, their "
                        "defaults)")
    g.add_argument("--pag-interval", type=float, nargs=2, metavar=("T_LO", "T_HI"),
                   help="with --pag-scale: perturbed-attention guidance only for T_LO <= t <= T_HI (training "
                        "timesteps; as --guidance-interval)")
    g.add_argument("--pag-adaptive-scale", type=float, metavar="A",
                   help="with --pag-scale: diffusers' pag_adaptive_scale A >= 0, the scale at t is "
                        "max(S - A (1000 - 1000 t / T), 0) for a model of T training timesteps; 0 = constant S")
    add_slg_flags(g)  # --slg-layers, --slg-scale, --slg-start, --slg-stop (SD3 folders)
    from ._family_options import add_family_option_flags
    add_family_option_flags(g)  # --cfg-renorm-min (LongCat-Image), --bria-normalize, --guidance-schedule (Ideogram 4)
    add_size_condition_flags(g)  # --original-size, ... (HunyuanDiT, CogView, SD-XL, Kolors: ._size_conditions)
    g.add_argument("--classifier", type=path_arg, metavar="CKPT",
                   help="noisy-image classifier checkpoint ('diffkit train-classifier')")
    g.add_argument("--classifier-scale", type=non_negative_float, metavar="S",
                   help="classifier gradient scale (default 1)")
    g.add_argument("--classifier-algorithm", type=int, choices=[1, 2], default=2,
                   help="2: eps-hat, any sampler (default); 1: mean shift of the ddpm sampler")
    g.add_argument("--clip-guidance", metavar="TEXT",
                   help="CLIP guidance towards this prompt (RGB image models; needs --clip-model)")
    g.add_argument("--clip-model", type=path_arg, metavar="DIR",
                   help="a local CLIP folder (CLIPModel.save_pretrained + its tokenizer); nothing is downloaded")
    g.add_argument("--clip-scale", type=non_negative_float, metavar="S",
                   help="CLIP guidance scale s of eps - sqrt(1 - abar) s grad cos (required with --clip-guidance; "
                        "s = 100 is GLIDE's scale 1 with a trained CLIP)")
    g.add_argument("--clip-input", choices=list(CLIP_INPUTS), default="x0",
                   help="x0: an ordinary CLIP on the predicted x_0, gradient through the network (default); "
                        "x_t: a noise-aware CLIP on x_t (GLIDE)")
    add_controlnet_flags(p)
    add_ip_adapter_flags(p)
    add_redux_flags(p)
    from ._flux2 import add_reference_flags
    add_reference_flags(p)  # FLUX.2's --reference-image
    add_t2i_adapter_flags(p)
    add_refiner_flags(p)
    from ._stable_cascade import add_stable_cascade_flags
    add_stable_cascade_flags(p)  # --decoder of a Stable Cascade prior folder
    from ._kandinsky import add_prior_flags
    add_prior_flags(p)  # Kandinsky 2.2's --prior (._kandinsky)
    add_freeu_flag(p)
    from ._sd_sag_panorama import add_sag_panorama_flags
    add_sag_panorama_flags(p)
    from ._sd_latent_upscale import add_latent_upscaler_flags
    add_latent_upscaler_flags(p)
    from ._gligen import add_gligen_flags
    add_gligen_flags(p)  # --gligen-phrases, --gligen-boxes, --gligen-beta (GLIGEN folders)
    from ._sd_image_variation import add_image_variation_flags
    add_image_variation_flags(p)  # --image (Stable Diffusion image variation folders)
    from ._stable_unclip import add_stable_unclip_flags
    add_stable_unclip_flags(p)  # --noise-level (Stable unCLIP folders; --image: the img2img one's)
    add_progress_flag(p)
    p.set_defaults(func=run)


def add_guidance_convention_flag(group, needs: str = "") -> None:
    """``--guidance-convention seed|diffusers``, how ``--guidance-scale`` reads
    (:func:`diffkit.guidance.guidance_weight`), in ``diffkit sample`` and ``diffkit edit --series`` (checked by
    :meth:`GuidanceRequest.check`); ``needs`` as :func:`add_rescale_interval_flags` takes it."""
    group.add_argument("--guidance-convention", default="seed", choices=["seed", "diffusers"],
                       help=f"{needs}read --guidance-scale as the seed's W (default) or diffusers' s = 1 + W")


def add_rescale_interval_flags(group, needs: str = "") -> None:
    """``--guidance-rescale PHI``, ``--guidance-interval T_LO T_HI`` and adaptive projected guidance's
    ``--apg-eta E``, ``--apg-norm-threshold R``, ``--apg-momentum B``: the classifier-free guidance options of
    ``diffkit sample`` and ``diffkit edit --series`` (checked by :meth:`GuidanceRequest.check`); ``needs``
    starts their help (e.g. edit's "with --series and --guidance-scale: ")."""
    group.add_argument("--guidance-rescale", type=non_negative_float, default=0.0, metavar="PHI",
                       help=f"{needs}guidance rescale phi in [0, 1] (Lin et al. 2024, Sec. 3.4); 0 = off (default)")
    group.add_argument("--guidance-interval", type=float, nargs=2, metavar=("T_LO", "T_HI"),
                       help=f"{needs}guide only for T_LO <= t <= T_HI (training timesteps; Kynkaanniemi et al. 2024)")
    group.add_argument("--apg-eta", type=float, metavar="E",
                       help=f"{needs}adaptive projected guidance (Sadat et al. 2025) on x_0: weight in [0, 1] of "
                            f"the guidance update's part parallel to the conditional x_0 (1 = plain guidance)")
    group.add_argument("--apg-norm-threshold", type=float, metavar="R",
                       help=f"{needs}APG: cap each sample's guidance update at norm R > 0 (default: no cap)")
    group.add_argument("--apg-momentum", type=float, metavar="B",
                       help=f"{needs}APG: reverse momentum beta in (-1, 1) of the update's running average over "
                            f"the steps (the paper: -0.5; default 0)")


def run(args) -> int:
    from ..interop.single_file import single_file_args
    with single_file_args(args, progress=args.progress) as args:  # a single file: read as its converted folder
        return _run(args)


def _run(args) -> int:
    from ..config import resolve_device
    from ..sampling import check_eta, final_for, resolve_sampler
    from ._common import default_sampling
    config = output_config = None
    checkpoint = args.checkpoint
    check_lora_flags(args)
    if args.config:
        from ..config import TrainConfig
        config = TrainConfig.from_file(args.config)
    if checkpoint is None:
        if config is None:
            raise DiffkitError("give --checkpoint CKPT, or --config CFG whose test_load_weight names the checkpoint "
                               "in its save_weight_dir")
        from ..loading import is_legacy_checkpoint
        checkpoint = config.test_checkpoint()
        if not is_legacy_checkpoint(checkpoint):  # it carries its own model config: this one named the file
            output_config, config = config.to_dict(), None  # and says where the images go
    from ..interop.sd_scheduler import check_scheduler_override
    check_scheduler_override(checkpoint, args.scheduler)  # JSON only: before anything is loaded or written
    from ._consistency_models import check_timesteps_flag
    check_timesteps_flag(checkpoint, args.timesteps)  # JSON only
    sampler, args.steps = default_sampling(checkpoint, args.sampler, args.steps, args.nfe, args.spacing,
                                           args.scheduler)  # its header
    info, spacing, final = resolve_sampler(sampler, args.spacing, args.final)  # validate before loading
    options = tolerance_options(args, info)  # --rtol / --atol, --gamma, --tau, --restarts: each its sampler's
    if "restarts" in options:
        info = info.with_options(options)  # its NFE rule (none: heun's)
    if args.nfe is not None:
        info.steps_for_nfe(args.nfe, final or final_for(info, spacing))
    if args.steps is not None:
        info.check_fixed_steps(f"--steps {args.steps}")  # ode picks its own steps
    check_eta(info.name, args.eta)
    options.update({} if args.eta is None else {"eta": args.eta})
    options.update({} if args.thresholding is None else {"thresholding": args.thresholding})
    if args.flow_shift is not None:
        check_flow_shift(checkpoint, info, args.flow_shift)
        options["flow_shift"] = args.flow_shift
    guidance = GuidanceRequest.from_args(args, info.name, checkpoint)  # before any folder is made
    check_freeu_checkpoint(checkpoint, args.freeu)
    rows = 1 if getattr(args, "redux", None) else len(args.prompts or [""])  # FLUX.1 Redux: one conditioning
    t2i_adapter = T2IAdapterRequest.from_args(args, checkpoint, rows)  # its --control-image
    control = ControlRequest.from_args(args, checkpoint, rows)
    ip_adapter = IPAdapterRequest.from_args(args, checkpoint)
    redux = ReduxRequest.from_args(args, checkpoint)  # FLUX.1 Redux (._flux_redux)
    from ._flux2 import reference_request
    references = reference_request(args, checkpoint)  # FLUX.2's --reference-image (._flux2)
    refiner = RefinerRequest.from_args(args, checkpoint)
    from ._stable_cascade import CascadeRequest
    cascade = CascadeRequest.from_args(args, checkpoint)  # a Stable Cascade prior's --decoder (JSON only)
    from ._kandinsky import PriorRequest
    prior = PriorRequest.from_args(args, checkpoint)  # Kandinsky 2.2's --prior (._kandinsky)
    from ._image_size import check_image_size
    check_image_size(checkpoint, args.height, args.width, t2i_adapter is not None)
    size = {} if args.height is None and args.width is None else {"height": args.height, "width": args.width}
    from ._sd_sag_panorama import sag_panorama_options
    options.update(sag_panorama_options(args, checkpoint))  # --sag-scale, --panorama: SD folders (text_to_image's)
    from ._sd_latent_upscale import latent_upscaler_options
    options.update(latent_upscaler_options(args, checkpoint))  # --latent-upscaler: SD 1.x / 2.x folders
    from ._gligen import gligen_options
    options.update(gligen_options(args, checkpoint))  # --gligen-*: GLIGEN folders (text_to_image's gligen)
    from ._sd_image_variation import image_variation_options
    options.update(image_variation_options(args, checkpoint))  # --image: image variation folders
    from ._stable_unclip import stable_unclip_options
    options.update(stable_unclip_options(args, checkpoint))  # --noise-level, --image: Stable unCLIP folders
    if args.progressive and guidance.classifier_algorithm == 1:
        raise DiffkitError("--progressive needs --classifier-algorithm 2: algorithm 1's ddpm loop reports no steps")
    if args.thresholding and guidance.classifier_algorithm == 1:
        raise DiffkitError(f"--thresholding {args.thresholding} needs --classifier-algorithm 2: algorithm 1's ddpm "
                           f"loop takes no sampler options")
    device = resolve_device(args.device)
    outputs = [(flag, path) for flag, path in (("--out", args.out), ("--noise-out", args.noise_out)) if path]
    # folders this command makes: removed again (if still empty) when it fails, a later check included (--out's
    # folder stayed behind when --individual was a file)
    new_dirs = [d for _, path in outputs for d in missing_dirs(Path(path).parent)]
    new_dirs += missing_dirs(args.individual) if args.individual else []
    with removed_if_empty_on_failure(new_dirs):
        for flag, path in outputs:  # a .png (never overwrite a checkpoint with an image)
            if flag == "--out" and Path(path).suffix.lower() == ".npy":
                png = str(Path(path).with_suffix(".png"))
                raise DiffkitError(f"--out {path!r} must end in .png: an image model writes its grid there, a "
                                   f"time-series model its line plot and the series beside it as .npy (give --out "
                                   f"{png!r})")
            check_output_file(path, flag, ".png")
        if args.individual:
            from ..images import check_image_folder
            check_writable_dir(args.individual)
            if args.num is not None:  # (with the default count it is checked when the images are written)
                check_image_folder(args.individual, args.num)  # before sampling, not after
        sample_to_files(checkpoint, sampler=info.name, steps=args.steps, nfe=args.nfe, num=args.num,
                        nrow=args.nrow, out=args.out, noise_out=args.noise_out, individual=args.individual,
                        seed=args.seed, device=str(device), use_ema=args.ema, batch_size=args.batch_size,
                        output_config=output_config,
                        spacing=spacing, final=final, scale=args.scale, progress=args.progress, guidance=guidance,
                        config=config, mixed_precision=args.mixed_precision, compile=args.compile,
                        progressive=args.progressive, lora=args.lora, lora_any_base=args.lora_any_base,
                        textual_inversion=args.textual_inversion, control=control, ip_adapter=ip_adapter,
                        scheduler=args.scheduler, freeu=args.freeu, **({} if refiner is None else {"refiner": refiner}),
                        **({} if t2i_adapter is None else {"t2i_adapter": t2i_adapter}),
                        **({} if redux is None else {"redux": redux}),
                        **({} if cascade is None else {"stable_cascade": cascade}),
                        **({} if prior is None else {"prior": prior}),
                        **({} if references is None else {"reference_images": references}),
                        **({} if args.timesteps is None else {"timesteps": args.timesteps}), **size, **options)
    return 0


# an unconditional time-series model: --class / --guidance-scale need classes, which only a series file's
# label column gives (no --classifier for series)
SERIES_UNCONDITIONAL = ("a class-conditional checkpoint; this time-series model is unconditional (train one on a "
                        "series file with --conditional --set label_column=NAME)")


def not_for_stable_diffusion(flag: str) -> DiffkitError:
    """A flag of diffkit models given with a Stable Diffusion folder."""
    return DiffkitError(f"{flag} does not apply to a Stable Diffusion folder")


def image_only(flag: str) -> DiffkitError:
    """A flag of image models given with a time-series checkpoint."""
    return DiffkitError(f"{flag} applies to image models; this checkpoint is a time-series model (it writes the "
                        f"samples as .npy and a line plot)")


@dataclass
class GuidanceRequest:
    """What the user asked for: classes and guidance settings (validated against the model later)."""

    classes: Optional[list] = None
    guidance_scale: Optional[float] = None
    convention: str = "seed"
    rescale: float = 0.0
    interval: Optional[tuple] = None
    classifier: Optional[str] = None
    classifier_scale: Optional[float] = None
    classifier_algorithm: int = 2
    prompts: Optional[list] = None
    negative_prompt: Optional[str] = None
    clip_prompt: Optional[str] = None
    clip_model: Optional[str] = None
    clip_scale: Optional[float] = None
    clip_input: str = "x0"
    pag_scale: Optional[float] = None
    pag_layers: Optional[list] = None
    pag_interval: Optional[tuple] = None
    pag_adaptive_scale: Optional[float] = None
    pag_diffusers: bool = False  # --pag-layers in diffusers' syntax (a Stable Diffusion folder; .interop.sd_pag)
    apg_eta: Optional[float] = None
    apg_norm_threshold: Optional[float] = None
    apg_momentum: Optional[float] = None
    clip_skip: Optional[int] = None  # Stable Diffusion / SD-XL folders (._sd_prompts)
    prompts_2: Optional[list] = None
    negative_prompt_2: Optional[str] = None
    prompts_3: Optional[list] = None  # SD3 folders (._sd3)
    negative_prompt_3: Optional[str] = None
    max_sequence_length: Optional[int] = None
    image_guidance_scale: Optional[float] = None  # diffkit edit's --image-guidance-scale (OmniGen, DreamLite folders)
    true_cfg_scale: Optional[float] = None  # FLUX folders (._flux)
    cfg_trunc_ratio: Optional[float] = None  # Lumina-Image 2.0 folders (._pixart)
    cfg_normalization: Optional[bool] = None  # False: --no-cfg-normalization (Lumina-Image 2.0)
    cfg_norm_cap: Optional[float] = None  # --cfg-normalization K (Z-Image folders, ._z_image)
    scaling_watershed: Optional[float] = None  # Lumina-Next folders (._pixart)
    proportional_attn: Optional[bool] = None  # False: --no-proportional-attn (Lumina-Next)
    slg: Optional[dict] = None  # SD3 folders' skip-layer guidance (._sd3_slg): text_to_image's options
    sizes: Optional[dict] = None  # HunyuanDiT / CogView4 / SD-XL / Kolors folders' size conditions (._size_conditions)
    family_options: Optional[dict] = None  # a folder kind's own library options (._family_options): its keywords

    APG_FLAGS = ("--apg-eta", "--apg-norm-threshold", "--apg-momentum")

    def apg_options(self) -> dict:
        """The APG keyword arguments of :class:`~diffkit.guidance.ClassifierFreeGuidance` that were given."""
        names = ("apg_eta", "apg_norm_threshold", "apg_momentum")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def classifier_free_only(self) -> list:
        """(flag, value, default) of the options of classifier-free guidance proper (not a w input)."""
        return [("--guidance-rescale", self.rescale, 0.0), ("--guidance-interval", self.interval, None),
                *((flag, getattr(self, name), None) for flag, name in zip(self.APG_FLAGS, (
                    "apg_eta", "apg_norm_threshold", "apg_momentum")))]

    @classmethod
    def from_args(cls, args, sampler: str, checkpoint=None) -> "GuidanceRequest":
        """The request of ``diffkit sample``'s flags, checked for the sampler named ``sampler`` (and, from
        its header alone, for the kind of model ``checkpoint`` is: :meth:`check_model_kind`)."""
        req = cls(classes=args.classes, guidance_scale=args.guidance_scale, convention=args.guidance_convention,
                  rescale=args.guidance_rescale,
                  interval=tuple(args.guidance_interval) if args.guidance_interval else None,
                  classifier=args.classifier, classifier_scale=args.classifier_scale,
                  classifier_algorithm=args.classifier_algorithm, prompts=getattr(args, "prompts", None),
                  negative_prompt=getattr(args, "negative_prompt", None),
                  clip_prompt=args.clip_guidance, clip_model=args.clip_model, clip_scale=args.clip_scale,
                  clip_input=args.clip_input, pag_scale=getattr(args, "pag_scale", None),
                  pag_layers=None if getattr(args, "pag_layers", None) is None else args.pag_layers.split(","),
                  pag_interval=tuple(args.pag_interval) if getattr(args, "pag_interval", None) else None,
                  pag_adaptive_scale=getattr(args, "pag_adaptive_scale", None),
                  apg_eta=args.apg_eta, apg_norm_threshold=args.apg_norm_threshold,
                  apg_momentum=args.apg_momentum, clip_skip=getattr(args, "clip_skip", None),
                  prompts_2=getattr(args, "prompts_2", None),
                  negative_prompt_2=getattr(args, "negative_prompt_2", None),
                  prompts_3=getattr(args, "prompts_3", None),
                  negative_prompt_3=getattr(args, "negative_prompt_3", None),
                  max_sequence_length=getattr(args, "max_sequence_length", None),
                  true_cfg_scale=getattr(args, "true_cfg_scale", None),
                  cfg_trunc_ratio=getattr(args, "cfg_trunc_ratio", None),
                  cfg_normalization=getattr(args, "cfg_normalization", None),
                  cfg_norm_cap=getattr(args, "cfg_norm_cap", None),
                  scaling_watershed=getattr(args, "scaling_watershed", None),
                  proportional_attn=getattr(args, "proportional_attn", None))
        from ._sd3_slg import slg_request
        req.slg = slg_request(args, checkpoint)
        from ._size_conditions import size_condition_request
        req.sizes = size_condition_request(args, checkpoint)
        from ._family_options import family_options
        req.family_options = family_options(args, checkpoint)
        req.check_model_kind(checkpoint)
        from ._sd_prompts import check_prompt_encoding
        check_prompt_encoding(req, checkpoint)
        req.check(sampler)
        return req

    def check_model_kind(self, checkpoint) -> None:
        """--clip-guidance for a model that cannot take it, refused from what ``checkpoint`` says of itself
        without loading a weight (a Stable Diffusion folder's model_index.json, a diffkit file's header:
        a time-series, latent or not-RGB model), before the CLIP flags' own checks: a user is not asked for
        --clip-scale or a CLIP folder only to learn then that --clip-guidance does not apply. A legacy .pt
        has no header: it is checked once loaded (:meth:`clip_guided`). So is --guidance-scale for a model
        whose null condition never trained (:meth:`check_null_trained`), before any folder is made."""
        if checkpoint is None:
            return
        from ._common import peek_checkpoint
        from ..interop.stable_diffusion import is_stable_diffusion_folder
        if self.guidance_scale is not None:
            self.check_null_trained(peek_checkpoint(checkpoint))
            self.check_w_input((peek_checkpoint(checkpoint) or {}).get("unet"))
        if self.pag_scale is not None:
            self.check_pag_model(checkpoint)
        if self.clip_prompt is None:
            return
        if is_stable_diffusion_folder(checkpoint):
            raise not_for_stable_diffusion("--clip-guidance")
        meta = peek_checkpoint(checkpoint) or {}
        if isinstance(meta.get("unet"), dict):
            from ..models.network import is_series_model
            if is_series_model(meta["unet"]):
                raise image_only("--clip-guidance")
            self.check_clip_model(meta["unet"], latent=bool(meta.get("latent")))  # the loader's test for a decoder

    def check_pag_model(self, checkpoint) -> None:
        """--pag-scale for a model whose header says it cannot take it: a Stable Diffusion folder, a time-series
        model (no self-attention), or --pag-layers naming a layer the U-Net has no self-attention in (the
        names it has, listed). A legacy .pt (no header) is checked once loaded (:meth:`perturbed`)."""
        from ..interop.sd3 import is_sd3_folder
        from ..interop.stable_diffusion import is_stable_diffusion_folder
        from ._common import peek_checkpoint
        from ..interop.hunyuan_dit import PAG_FORM, PAG_LAYERS, is_hunyuan_dit_folder
        if is_hunyuan_dit_folder(checkpoint):  # HunyuanDiTPAGPipeline's names (.interop.hunyuan_dit), matched loaded
            from ..interop.sd_pag import check_layer_names
            check_layer_names(self.pag_layers, PAG_LAYERS, PAG_FORM)
            self.pag_diffusers = True
            return
        if is_stable_diffusion_folder(checkpoint) or is_sd3_folder(checkpoint):  # diffusers' names, matched loaded
            from ..interop.sd_pag import check_layer_names
            from ..interop.sd3_pag import check_sd3_layer_names
            (check_sd3_layer_names if is_sd3_folder(checkpoint) else check_layer_names)(self.pag_layers)
            self.pag_diffusers = True
            return
        from ..interop.pixart import masked_text_folder
        if masked_text_folder(checkpoint):  # PixArt-Σ / Sana: diffusers' names, checked there (._pixart.pag_options)
            self.pag_diffusers = True
            return
        unet = (peek_checkpoint(checkpoint) or {}).get("unet")
        if isinstance(unet, dict):
            from ..models.network import is_series_model
            if is_series_model(unet):
                raise DiffkitError("--pag-scale perturbs a U-Net's self-attention; this time-series model has none")
            if isinstance(unet.get("attn"), list) and isinstance(unet.get("channel_mult"), list):
                from ..models.unet import check_self_attention_layers
                check_self_attention_layers(self.pag_layers or ["mid"], unet["attn"], len(unet["channel_mult"]),
                                            "this checkpoint")

    def perturbed(self, denoiser):
        """``denoiser`` with the perturbed-attention guidance of --pag-scale (itself without it): directly over
        classifier-free guidance, so that the three passes share one call."""
        if not self.pag_scale:
            return denoiser
        from ..guidance import PerturbedAttentionGuidance
        return PerturbedAttentionGuidance(denoiser, self.pag_scale, self.pag_layers or ["mid"], self.pag_interval,
                                          adaptive_scale=self.pag_adaptive_scale or 0.0)

    def pag_label(self) -> str:
        """The summary line's words for --pag-scale ('' without it)."""
        if not self.pag_scale:
            return ""
        what = f", perturbed-attention guidance s={self.pag_scale:g} at {','.join(self.pag_layers or ['mid'])}"
        if self.pag_interval is not None:
            what += f" for {self.pag_interval[0]:g} <= t <= {self.pag_interval[1]:g}"
        if self.pag_adaptive_scale:
            what += f", adaptive a={self.pag_adaptive_scale:g}"
        return what

    def check_null_trained(self, meta) -> None:
        """--guidance-scale (classifier-free guidance) on a class- or text-conditional checkpoint whose
        metadata ``meta`` says it was trained with p_uncond = 0, so its null class (empty prompt) is untrained:
        a one-line error (:func:`diffkit.guidance.check_null_trained`). A w-conditioned model takes W as its
        input (no null pass) and a checkpoint without the key (older ones) is accepted."""
        from ..guidance import check_null_trained
        unet = (meta or {}).get("unet")
        if self.guidance_scale is None or not isinstance(unet, dict) or unet.get("guidance_embedding_dim"):
            return
        if unet.get("num_classes") is not None:
            check_null_trained(meta)
        elif (meta.get("config") or {}).get("text_conditioning"):
            check_null_trained(meta, "empty prompt")

    def check_w_input(self, unet) -> None:
        """A w-conditioned model (``guidance_embedding_dim`` in its U-Net config ``unet``) takes --guidance-scale
        as its input, one call per step: the options of classifier-free guidance proper are one-line errors."""
        if not isinstance(unet, dict) or not unet.get("guidance_embedding_dim") or self.guidance_scale is None:
            return
        for flag, value, default in self.classifier_free_only():
            if value != default:
                raise DiffkitError(f"{flag} is an option of classifier-free guidance; this w-conditioned model "
                                   f"takes --guidance-scale as its input w (one call per step)")

    def check(self, sampler: str) -> None:
        """Checks that need no checkpoint: flag combinations and ranges."""
        from ..guidance import check_apg, guidance_weight
        if self.prompts is not None:
            if self.classes:
                raise DiffkitError("--prompt and --class exclude each other: a checkpoint is text- or "
                                   "class-conditional")
            if self.classifier:
                raise DiffkitError("--prompt cannot be combined with --classifier; use --guidance-scale "
                                   "(classifier-free guidance with the empty prompt)")
        if self.guidance_scale is None:
            for flag, value, default in (*self.classifier_free_only(),
                                         ("--guidance-convention", self.convention, "seed")):
                if value != default:
                    raise DiffkitError(f"{flag} needs --guidance-scale")
        else:
            w = guidance_weight(self.guidance_scale, self.convention)
            check_range("--guidance-rescale", self.rescale, 0.0, 1.0)
            check_apg(**{name[len('apg_'):]: v for name, v in self.apg_options().items()}, names=self.APG_FLAGS)
            given = [f for f, v in zip(self.APG_FLAGS, (self.apg_eta, self.apg_norm_threshold, self.apg_momentum))
                     if v is not None]
            if given and w == 0:
                raise DiffkitError(f"{given[0]} shapes classifier-free guidance, which --guidance-scale "
                                   f"{self.guidance_scale:g} ({self.convention} convention) turns off; give a "
                                   f"scale that guides")
        if self.pag_scale is None:
            for flag, value in (("--pag-layers", self.pag_layers), ("--pag-interval", self.pag_interval),
                                ("--pag-adaptive-scale", self.pag_adaptive_scale)):
                if value is not None:
                    raise DiffkitError(f"{flag} needs --pag-scale S")
        else:
            check_float32("--pag-scale", check_range("--pag-scale", self.pag_scale, 0.0, None))
            if self.pag_adaptive_scale is not None:
                check_range("--pag-adaptive-scale", self.pag_adaptive_scale, 0.0, None)
            from ..guidance import _checked_interval
            _checked_interval(self.pag_interval, None, "--pag-interval")  # t_lo <= t_hi; [-1, T] once loaded
            if not self.pag_diffusers:
                from ..models.unet import check_self_attention_layers
                check_self_attention_layers(self.pag_layers or ["mid"], None, None)  # the names' form
        if self.classifier is None:
            if self.classifier_scale is not None:
                raise DiffkitError("--classifier-scale needs --classifier CKPT")
            if self.classifier_algorithm != 2:
                raise DiffkitError("--classifier-algorithm needs --classifier CKPT")
        elif self.classifier_algorithm == 1 and sampler != "ddpm":
            raise DiffkitError(f"--classifier-algorithm 1 (mean shift) needs --sampler ddpm, not {sampler!r}; "
                               f"algorithm 2 works with every sampler")
        if self.clip_prompt is None:
            for flag, value, default in (("--clip-model", self.clip_model, None),
                                         ("--clip-scale", self.clip_scale, None),
                                         ("--clip-input", self.clip_input, "x0")):
                if value != default:
                    raise DiffkitError(f"{flag} needs --clip-guidance TEXT")
        else:
            if not self.clip_prompt.strip():
                raise DiffkitError(f"--clip-guidance {shorten(self.clip_prompt)} is empty; give the prompt to guide "
                                   f"towards")
            if self.clip_model is None:
                raise DiffkitError("--clip-guidance needs --clip-model DIR (a local CLIP folder; nothing is "
                                   "downloaded)")
            if self.clip_scale is None:
                raise DiffkitError("--clip-guidance needs --clip-scale S (no default: the gradient of a cosine "
                                   "similarity is small, s = 1 barely moves a sample; s = 100 is GLIDE's scale 1 "
                                   "with a trained CLIP, whose exp(logit_scale) is 100)")
            check_range("--clip-scale", self.clip_scale, 0.0, None)
            from ..clip import check_clip_folder
            check_clip_folder(self.clip_model)  # the cheap checks, before any folder is made

    def clip_guided(self, denoiser, unet: dict, decoder, device="cpu", progress: bool = True):
        """``denoiser`` with the CLIP guidance asked for (itself when none): one-line errors for a
        latent checkpoint and for samples that are not RGB images, before the CLIP is loaded."""
        if self.clip_prompt is None:
            return denoiser
        self.check_clip_model(unet, latent=decoder is not None)
        from ..clip import load_clip
        from ..guidance import CLIPGuidance
        clip = load_clip(self.clip_model, device=device, progress=progress)
        text = clip.text_embeddings([self.clip_prompt])[0]
        return CLIPGuidance(denoiser, clip, text, self.clip_scale, on=self.clip_input)

    @staticmethod
    def check_clip_model(unet: dict, latent: bool) -> None:
        """--clip-guidance needs a pixel-space model (not ``latent``) of RGB images: a one-line error else."""
        if latent:
            raise DiffkitError("--clip-guidance applies to pixel-space checkpoints; this one is latent (its samples "
                               "are autoencoder latents, not images CLIP can see)")
        channels, size = unet.get("in_channels"), unet.get("img_size")
        if channels != 3:
            raise DiffkitError(f"--clip-guidance needs a model of RGB images (3 channels); this checkpoint makes "
                               f"{channels}-channel {size}x{size} images")

    def labels(self, num_classes: Optional[int], num: Optional[int], nrow: int, series: bool = False):
        """(labels or None, num, nrow): one class -> all images; several -> one row per class. ``series``: a
        time-series model (which takes no --classifier: the error says how to train one with classes)."""
        import torch
        if num_classes is None:
            if self.classes:
                how = SERIES_UNCONDITIONAL if series else "a class-conditional checkpoint or a --classifier"
                raise DiffkitError(f"--class needs {how}")
            return None, num or 64, nrow
        classes = self.classes if self.classes else list(range(num_classes))
        for c in classes:
            if not 0 <= c < num_classes:
                raise DiffkitError(f"--class {c} is out of range; allowed: 0..{num_classes - 1}")
        index, num, nrow = condition_rows(len(classes), num, nrow, "classes of --class" if self.classes
                                          else None)
        return torch.tensor(classes, dtype=torch.long)[index], num, nrow


def guided_denoiser(denoiser, request: GuidanceRequest, device="cpu"):
    """(denoiser with the requested guidance, model's number of classes, classifier or None).

    Errors (one line) for guidance on an unconditional checkpoint and for a classifier whose
    classes, image shape or noise schedule differ from the model's."""
    import torch

    from ..guidance import ClassifierFreeGuidance, ClassifierGuidance, GuidanceScaleInput
    meta = denoiser.meta
    model_classes = meta["unet"].get("num_classes")
    trained_range = getattr(denoiser, "guidance_range", None)
    if meta["unet"].get("guidance_embedding_dim") and request.guidance_scale is not None:
        request.check_w_input(meta["unet"])
        denoiser = GuidanceScaleInput(denoiser, request.guidance_scale, request.convention, trained_range)
    elif request.guidance_scale is not None:
        if model_classes is None:
            from ..models.network import is_series_model
            how = SERIES_UNCONDITIONAL if is_series_model(meta["unet"]) else (
                "a class-conditional checkpoint (trained with --conditional); this one is unconditional (use "
                "--classifier for classifier guidance)")
            raise DiffkitError(f"--guidance-scale needs {how}")
        request.check_null_trained(meta)  # after loading too: a legacy .pt has no header to peek at
        denoiser = ClassifierFreeGuidance(denoiser, request.guidance_scale, request.convention,
                                          request.rescale, request.interval, null_class=model_classes,
                                          **request.apg_options())
    denoiser = request.perturbed(denoiser)
    classifier = None
    num_classes = model_classes
    if request.classifier:
        from ..classifier_training import load_classifier
        classifier, cmeta, cschedule = load_classifier(request.classifier, device=device)
        ccfg = classifier.config
        known = model_classes or len(meta.get("class_names") or []) or None
        if known is not None and ccfg.num_classes != known:
            raise DiffkitError(f"classifier {request.classifier} has {ccfg.num_classes} classes but the model has "
                               f"{known}; train the classifier on the model's data set")
        unet = meta["unet"]
        if (ccfg.in_channels, ccfg.img_size) != (unet["in_channels"], unet["img_size"]):
            raise DiffkitError(f"classifier {request.classifier} takes {ccfg.in_channels}x{ccfg.img_size}x"
                               f"{ccfg.img_size} images but the model makes {unet['in_channels']}x"
                               f"{unet['img_size']}x{unet['img_size']}")
        betas = denoiser.schedule.betas
        if cschedule.betas.shape != betas.shape or not torch.allclose(cschedule.betas, betas.to(cschedule.betas.dtype)):
            raise DiffkitError(f"classifier {request.classifier} was trained with a different noise schedule "
                               f"(T={cschedule.num_timesteps}) than the model (T={denoiser.schedule.num_timesteps})")
        num_classes = ccfg.num_classes
        if request.classifier_algorithm == 2:
            denoiser = ClassifierGuidance(denoiser, classifier, 1.0 if request.classifier_scale is None
                                          else request.classifier_scale, conditional_model=model_classes is not None)
    return denoiser, num_classes, classifier


def run_sample_dir(checkpoint, cfg: dict) -> Path:
    """Where a run's samples go without --out: its config's ``sampled_dir``; for a training
    checkpoint (which lives in its ``save_weight_dir``) a relative one is taken relative to the
    checkpoint's folder as ``save_weight_dir`` was (the run may have been started elsewhere), not
    to the working directory."""
    from ..checkpoint import file_kind
    sampled, saved = cfg.get("sampled_dir", "."), cfg.get("save_weight_dir")
    if os.path.isabs(sampled) or not saved or os.path.isabs(saved) or file_kind(
            Path(checkpoint) / "latest.safetensors" if Path(checkpoint).is_dir()
            else checkpoint) != "training checkpoint":
        return Path(sampled)  # a legacy .pt with --config, a moved export: as the config says, from here
    folder = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    return Path(os.path.normpath(folder / os.path.relpath(sampled, saved)))


def sample_to_files(checkpoint, *, sampler="ddim", steps=None, nfe=None, num=None, nrow=None, out=None,
                    noise_out=None, individual=None, seed=0, device="cpu", use_ema=True, batch_size="auto",
                    spacing=None, final=None, scale=1, progress=True, guidance: Optional[GuidanceRequest] = None,
                    config=None, mixed_precision="no", compile="no", progressive=None, output_config=None,
                    lora=None, lora_any_base=False, textual_inversion=None, control: Optional[ControlRequest] = None,
                    ip_adapter: Optional[IPAdapterRequest] = None, scheduler=None, freeu=None, height=None, width=None,
                    **options):
    """Sample ``num`` images and write the grid, the noise grid and optionally single PNGs.

    Conditional checkpoints get class labels (see :meth:`GuidanceRequest.labels`) and the
    guidance of ``guidance``; a legacy state dict needs ``config`` (see module doc).
    ``batch_size="auto"`` fits the batch to free memory (:func:`diffkit.memory.auto_batch_size`,
    probed with one ddim step of the same network, guidance and decoder); a batch that runs out of
    GPU memory is retried at half the size (:func:`diffkit.memory.batches_with_oom_retry`).
    ``progressive=K``: also the grid of x0 predictions at K times (:mod:`diffkit.progressive`).
    ``output_config``: a seed config (dict) whose ``sampled_dir``, image names and ``nrow`` place the
    grids instead of the checkpoint's own (``sample --config`` naming a diffkit checkpoint). ``lora``,
    ``lora_any_base``: adapter files merged at load (:func:`diffkit.loading.load_denoiser`).
    ``textual_inversion``: a Stable Diffusion folder's embedding files, (path, token) pairs. ``control``: the
    ControlNets of a Stable Diffusion folder (:class:`~diffkit.commands._controlnet.ControlRequest`); ``ip_adapter``:
    its IP-Adapter (:class:`~diffkit.commands._ip_adapter.IPAdapterRequest`). ``scheduler``: its ``--scheduler``.
    ``freeu``: FreeU factors (:mod:`diffkit.models.freeu`: a FreeU or "B1,B2,S1,S2") while sampling. ``height`` /
    ``width``: a diffusers folder's image size (default the folder's; :mod:`._image_size`)."""
    import torch

    from ..drawing import draw_samples
    from ..images import save_grid, save_images
    from ..interop.stable_diffusion import is_stable_diffusion_folder
    from ..loading import load_denoiser
    from ..interop.sd_scheduler import check_scheduler_override
    check_scheduler_override(checkpoint, scheduler)
    from ._chronoedit import refuse_sample
    refuse_sample(checkpoint)  # a ChronoEditPipeline folder edits (diffkit edit, ._chronoedit)
    from .video import refuse_video_folder
    refuse_video_folder(checkpoint, "sample")  # a video folder (diffkit video, VIDEO_KINDS)
    from ._image_size import check_image_size
    check_image_size(checkpoint, height, width, options.get("t2i_adapter") is not None)
    size = {} if height is None and width is None else {"height": height, "width": width}
    from ..interop.flux import is_flux_folder
    from ..interop.pixart import masked_text_folder
    from ..interop.sd3 import is_sd3_folder
    from ..interop.stable_cascade import is_stable_cascade_folder
    cascade = options.pop("stable_cascade", None)
    if is_stable_cascade_folder(checkpoint) or cascade is not None:  # prior + decoder (._stable_cascade)
        from ._stable_cascade import CascadeRequest, sample_stable_cascade
        if not isinstance(cascade, CascadeRequest):
            raise DiffkitError(f"{checkpoint} is a Stable Cascade folder: give its prior folder as --checkpoint "
                               f"and its decoder folder as --decoder FOLDER")
        refused = {"--lora-any-base": lora_any_base, "--lora": lora, "--textual-inversion": textual_inversion,
                   "--controlnet": control, "--ip-adapter": ip_adapter, "--scheduler": scheduler, "--freeu": freeu,
                   "--progressive": progressive, "--noise-out": noise_out, "--config": config,
                   "--mixed-precision": mixed_precision != "no", "--compile": compile != "no"}
        return sample_stable_cascade(checkpoint, cascade, sampler=sampler, steps=steps, nfe=nfe, num=num, nrow=nrow,
                                     out=out, individual=individual, seed=seed, device=device,
                                     batch_size=batch_size, spacing=spacing, final=final, scale=scale,
                                     progress=progress, guidance=guidance, refused=refused, **size, **options)
    from ..interop.consistency_models import is_consistency_models_folder
    if is_consistency_models_folder(checkpoint):  # OpenAI's consistency models (._consistency_models)
        from ._consistency_models import sample_consistency_models
        refused = {"--lora-any-base": lora_any_base, "--lora": lora, "--textual-inversion": textual_inversion,
                   "--controlnet": control, "--ip-adapter": ip_adapter, "--scheduler": scheduler, "--freeu": freeu,
                   "--progressive": progressive, "--config": config, "--height": height, "--width": width,
                   "--mixed-precision": mixed_precision != "no", "--compile": compile != "no", "--no-ema": not use_ema}
        return sample_consistency_models(checkpoint, sampler=sampler, steps=steps, nfe=nfe, num=num, nrow=nrow,
                                         out=out, noise_out=noise_out, individual=individual, seed=seed,
                                         device=device, batch_size=batch_size, spacing=spacing, final=final,
                                         scale=scale, progress=progress, guidance=guidance, refused=refused,
                                         **options)
    from ._chroma import folder_family
    family = folder_family(checkpoint)  # Chroma, Qwen-Image, Z-Image, Bria, LongCat, Ovis, ERNIE: Chroma's code
    if family is not None and not family.samples:
        raise DiffkitError(f"{checkpoint} is a {family.kind} folder, which diffkit sample does not take (its pipeline "
                           f"edits an image); edit with diffkit edit --checkpoint {checkpoint} --images PNG|DIR "
                           f"--prompt TEXT")
    if masked_text_folder(checkpoint) or family:  # PixArt-α / Σ, Sana (._pixart), Chroma-like folders
        from ._chroma import sample_chroma
        from ._pixart import sample_pixart
        adapters = family is not None and family.adapters  # Chroma: FLUX.1's IP-Adapters, LoRA, T5 embeddings
        refused = {"--lora-any-base": lora_any_base,  # (--lora: Sana's and Chroma's; PixArt refuses it, ._pixart)
                   "--textual-inversion": None if adapters else textual_inversion,
                   "--lora": lora if family is not None and not family.lora else None,
                   # Sana's: ._pixart (PixArt's refusal there); Z-Image's and Qwen-Image's: ._chroma
                   "--controlnet": None if family is None or family.controlnet else control,
                   "--ip-adapter": None if adapters else ip_adapter, "--scheduler": scheduler,
                   "--freeu": freeu, "--progressive": progressive, "--noise-out": noise_out, "--config": config,
                   "--mixed-precision": mixed_precision != "no", "--compile": compile != "no"}
        return (sample_pixart if family is None else sample_chroma)(
            checkpoint, sampler=sampler, steps=steps, nfe=nfe, num=num, nrow=nrow, out=out, individual=individual,
            seed=seed, device=device, batch_size=batch_size, spacing=spacing, final=final, scale=scale,
            progress=progress, guidance=guidance, refused=refused, **size, **options,
            **({"lora": lora, "control": control} if family is None else {
                "family": family, "ip_adapter": ip_adapter, "lora": lora, "textual_inversion": textual_inversion,
                **({"control": control} if family.controlnet else {})}))
    from ..interop.flux2 import is_flux2_folder
    from ..interop.kandinsky import is_kandinsky_folder
    kandinsky = is_kandinsky_folder(checkpoint)
    if is_flux2_folder(checkpoint) or kandinsky:
        from ._flux2 import sample_flux2
        refused = {"--lora-any-base": lora_any_base, "--textual-inversion": textual_inversion,
                   **({"--lora": lora} if kandinsky else {}),
                   "--controlnet": None if kandinsky else control, "--ip-adapter": ip_adapter,
                   "--scheduler": scheduler, "--freeu": freeu,
                   "--progressive": progressive, "--noise-out": noise_out, "--config": config,
                   "--mixed-precision": mixed_precision != "no", "--compile": compile != "no"}
        draw = sample_flux2  # FLUX.2: Flux2Pipeline / Flux2KleinPipeline (._flux2)
        if is_kandinsky_folder(checkpoint):  # Kandinsky 2.2: the decoder with its --prior (._kandinsky)
            from ._kandinsky import missing_prior, sample_kandinsky
            if options.get("prior") is None:
                raise missing_prior(checkpoint)
            draw = sample_kandinsky  # the same arguments, and prior=
        return draw(checkpoint, sampler=sampler, steps=steps, nfe=nfe, num=num, nrow=nrow, out=out,
                    individual=individual, seed=seed, device=device, batch_size=batch_size, spacing=spacing,
                    final=final, scale=scale, progress=progress, guidance=guidance, refused=refused, **size,
                    **({"control": control} if kandinsky else {"lora": lora}), **options)
    if is_sd3_folder(checkpoint) or is_flux_folder(checkpoint):  # SD3 (._sd3), FLUX.1 (._flux)
        from ._flux import sample_flux
        from ._sd3 import sample_sd3
        refused = {"--lora-any-base": lora_any_base, "--scheduler": scheduler, "--freeu": freeu,
                   "--progressive": progressive, "--noise-out": noise_out, "--config": config,
                   "--mixed-precision": mixed_precision != "no", "--compile": compile != "no"}
        if not is_sd3_folder(checkpoint):  # FLUX.1 (a StableDiffusion3Pipeline index is SD3's, whatever it holds)
            return sample_flux(checkpoint, sampler=sampler, steps=steps, nfe=nfe, num=num, nrow=nrow, out=out,
                               individual=individual, seed=seed, device=device, batch_size=batch_size,
                               spacing=spacing, final=final, scale=scale, progress=progress, guidance=guidance,
                               refused=refused, lora=lora, textual_inversion=textual_inversion, control=control,
                               ip_adapter=ip_adapter, **size, **options)
        refused["--textual-inversion"] = textual_inversion  # SD3: StableDiffusion3Pipeline has no loader
        return sample_sd3(checkpoint, sampler=sampler, steps=steps, nfe=nfe, num=num, nrow=nrow, out=out,
                          individual=individual, seed=seed, device=device, batch_size=batch_size, spacing=spacing,
                          final=final, scale=scale, progress=progress, guidance=guidance, refused=refused, lora=lora,
                          control=control, ip_adapter=ip_adapter, **size, **options)
    from ..interop.ldm import ldm_kind
    if ldm_kind(checkpoint):  # LDMTextToImagePipeline, LDMPipeline (._ldm)
        from ._ldm import sample_ldm
        refused = {"--lora-any-base": lora_any_base, "--lora": lora, "--textual-inversion": textual_inversion,
                   "--controlnet": control, "--ip-adapter": ip_adapter, "--scheduler": scheduler, "--freeu": freeu,
                   "--progressive": progressive, "--noise-out": noise_out, "--config": config,
                   "--mixed-precision": mixed_precision != "no", "--compile": compile != "no"}
        return sample_ldm(checkpoint, sampler=sampler, steps=steps, nfe=nfe, num=num, nrow=nrow, out=out,
                          individual=individual, seed=seed, device=device, batch_size=batch_size, spacing=spacing,
                          final=final, scale=scale, progress=progress, guidance=guidance, refused=refused, **size,
                          **options)
    from ..interop.sd_image_variation import is_image_variation_folder
    from ..interop.stable_unclip import is_stable_unclip_folder
    if is_image_variation_folder(checkpoint) or is_stable_unclip_folder(checkpoint):
        # StableDiffusionImageVariationPipeline (._sd_image_variation), StableUnCLIP(Img2Img)Pipeline (._stable_unclip)
        from ._sd_image_variation import sample_image_variation
        from ._stable_unclip import sample_stable_unclip
        variation = is_image_variation_folder(checkpoint)  # unCLIP: --lora / --textual-inversion as SD's
        refused = {"--lora-any-base": lora_any_base, "--lora": lora if variation else None,
                   "--textual-inversion": textual_inversion if variation else None,
                   "--controlnet": control, "--ip-adapter": ip_adapter, "--scheduler": scheduler,
                   "--progressive": progressive, "--noise-out": noise_out, "--config": config,
                   "--mixed-precision": mixed_precision != "no", "--compile": compile != "no"}
        draw_folder = sample_image_variation if variation else sample_stable_unclip
        adapters = {} if variation else {"lora": lora, "textual_inversion": textual_inversion}
        return draw_folder(checkpoint, sampler=sampler, steps=steps, nfe=nfe, num=num, nrow=nrow, out=out,
                           individual=individual, seed=seed, device=device, batch_size=batch_size, spacing=spacing,
                           final=final, scale=scale, progress=progress, guidance=guidance, refused=refused,
                           freeu=freeu, **adapters, **size, **options)
    if is_stable_diffusion_folder(checkpoint):
        if lora_any_base:
            raise DiffkitError("--lora-any-base applies to diffkit adapter files; a Stable Diffusion LoRA file is "
                               "merged into any folder its keys and shapes fit: drop --lora-any-base")
        if progressive:
            raise DiffkitError("--progressive applies to diffkit checkpoints, not to a Stable Diffusion folder")
        if mixed_precision != "no":
            raise DiffkitError(f"--mixed-precision {mixed_precision} applies to diffkit checkpoints; a Stable "
                               "Diffusion folder runs in the dtype its weights are stored in")
        if compile != "no":
            raise DiffkitError(f"--compile {compile} applies to diffkit checkpoints, not to a Stable Diffusion folder")
        if noise_out:
            raise DiffkitError("--noise-out: a Stable Diffusion folder starts from noise in its latent space, which "
                               "has no image grid; drop --noise-out")
        return sample_stable_diffusion(checkpoint, sampler=sampler, steps=steps, nfe=nfe, num=num, nrow=nrow, out=out,
                                       individual=individual, seed=seed, device=device, batch_size=batch_size,
                                       spacing=spacing, final=final, scale=scale, progress=progress,
                                       guidance=guidance, lora=lora, textual_inversion=textual_inversion,
                                       control=control, ip_adapter=ip_adapter, scheduler=scheduler, freeu=freeu,
                                       **size, **options)
    if guidance is not None:
        from ._sd_prompts import check_prompt_encoding
        check_prompt_encoding(guidance, checkpoint)  # --clip-skip, --prompt-2: Stable Diffusion folders only
    if guidance is not None and guidance.negative_prompt is not None:
        raise DiffkitError(f"--negative-prompt applies to a Stable Diffusion folder (diffusers format); {checkpoint} "
                           f"is not one")
    if textual_inversion:
        raise DiffkitError(f"--textual-inversion applies to a Stable Diffusion folder (diffusers format); "
                           f"{checkpoint} is not one")
    if control is not None or ip_adapter is not None:
        raise DiffkitError(f"{'--controlnet' if control is not None else '--ip-adapter'} applies to a Stable "
                           f"Diffusion folder (diffusers format); {checkpoint} is not one")
    denoiser = load_denoiser(checkpoint, use_ema=use_ema, device=device, config=config,
                             mixed_precision=mixed_precision, compile=compile, lora=lora, lora_any_base=lora_any_base)
    meta = denoiser.meta
    cfg = meta.get("config", {})
    names = output_config or cfg  # where the grids go and how wide they are
    from ..models.network import is_series_model
    if is_series_model(meta["unet"]):
        folder = Path(names.get("sampled_dir", ".")) if output_config else run_sample_dir(checkpoint, cfg)
        out = Path(out) if out else folder / names.get("sampledImgName", "samples.png")
        return sample_series_to_files(denoiser, out, sampler=sampler, steps=steps, nfe=nfe, num=num, seed=seed,
                                      device=device, batch_size=batch_size, spacing=spacing, final=final,
                                      progress=progress, guidance=guidance, nrow=nrow or names.get("nrow", 8),
                                      refused={"--noise-out": noise_out, "--individual": individual,
                                               "--progressive": progressive, "--scale": scale != 1,
                                               "--prompt": guidance and guidance.prompts,
                                               "--classifier": guidance and guidance.classifier,
                                               "--clip-guidance": guidance and guidance.clip_prompt,
                                               "--freeu": freeu},
                                      **options)
    from ..models.network import check_image_model
    check_image_model(meta["unet"], "diffkit sample")
    nrow = nrow or names.get("nrow", 8)
    guidance = guidance or GuidanceRequest()
    conditional_model = meta["unet"].get("num_classes") is not None
    decoder, prompt_index = denoiser.decoder, None
    if denoiser.prompt_encoder is not None:
        denoiser, context, prompts, prompt_index, num, nrow = prompt_conditioning(denoiser, guidance, num, nrow, device)
        labels = None
    else:
        if guidance.prompts is not None:
            raise DiffkitError("--prompt needs a text-conditional checkpoint (trained with text_conditioning=true); "
                               "this one is not")
        denoiser, num_classes, classifier = guided_denoiser(denoiser, guidance, device)
        labels, num, nrow = guidance.labels(num_classes, num, nrow)
    denoiser = guidance.clip_guided(denoiser, meta["unet"], decoder, device, progress)
    if noise_out and decoder is not None:
        raise DiffkitError("--noise-out: a latent checkpoint starts from noise in its latent space, which has no "
                           "image grid; drop --noise-out")
    folder = Path(names.get("sampled_dir", ".")) if output_config else run_sample_dir(checkpoint, cfg)
    out = Path(out) if out else folder / names.get("sampledImgName", "samples.png")
    noise_out = Path(noise_out) if noise_out else out.parent / names.get("sampledNoisyImgName", "noise.png")
    check_grid_files(out, noise_out if decoder is None else None)
    if progressive:  # a callback of every sampling call keeps the frames (docs/samplers.md)
        from ..progressive import progressive_grid_path, recorder_for
        options["callback"] = recorder = recorder_for(
            denoiser, progressive, sampler, steps, nfe=nfe, spacing=spacing, final=final,
            max_rows=GRID_LIMIT // progressive, to_cpu=True, what="--progressive", **options)
        progressive_out = check_output_file(progressive_grid_path(out), "progressive grid", ".png")
        if decoder is None and progressive_out.resolve() == noise_out.resolve():
            raise DiffkitError(f"the progressive grid and the noise grid would both be {str(noise_out)!r}; give "
                               f"another --noise-out")
    unet = meta["unet"]
    shape = (unet["in_channels"], unet["img_size"], unet["img_size"])

    def prompt_rows(start: int, n: int) -> dict:  # the prompts' contexts, encoded once, one row per sample
        return {"context": context[prompt_index[start:start + n].to(context.device)]}

    cond = prompt_rows if prompt_index is not None else None if labels is None else {"y": labels}
    sample_fn = None
    if guidance.classifier and guidance.classifier_algorithm == 1:
        sample_fn = _algorithm_1(classifier, guidance, conditional_model)
    results, noise_parts = [], []

    def keep(batch):  # the images, the noise of the grid's images, and the batch's frames (--progressive)
        if batch.start < GRID_LIMIT:
            noise_parts.append(batch.noise[:GRID_LIMIT - batch.start].cpu())
        results.append(batch.images.cpu())
        if progressive:
            recorder.commit()

    from ..models.freeu import freeu_enabled, parse_freeu
    freeu = None if freeu is None else parse_freeu(freeu)
    with freeu_enabled(denoiser, freeu):  # FreeU in the U-Net's decoder while sampling (off: None)
        drawn = draw_samples(denoiser, num, shape, seed=seed, sampler=sampler, steps=steps, nfe=nfe,
                             spacing=spacing, final=final, cond=cond, batch_size=batch_size, device=device,
                             decode=decoder, sample_fn=sample_fn, sink=keep, progress=progress, **options)
    images = torch.cat(results)
    if decoder is None:
        save_grid(torch.cat(noise_parts).clamp(-1, 1), noise_out, nrow, scale)
    save_grid(images[:GRID_LIMIT], out, nrow, scale)
    if individual:
        save_images(images, individual)
    what = "" if labels is None else f", classes {sorted(set(labels.tolist()))}"
    if prompt_index is not None:  # the prompts that got an image
        what = f", prompts {[prompts[i] for i in sorted(set(prompt_index.tolist()))]}"
    if guidance.clip_prompt is not None:
        what += f", CLIP guidance {shorten(guidance.clip_prompt)} s={guidance.clip_scale:g}"
    what += guidance.pag_label()
    if freeu is not None:
        what += ", " + freeu.label()
    noise_note = " (a latent checkpoint: no noise grid)" if decoder is not None else f" and {noise_out}"
    calls, batches = drawn.calls, drawn.batches
    per_sample = f"{drawn.nfe:g} network evaluations per sample" + (f" ({calls} calls in {batches} batches)"
                                                                    if batches > 1 else "")
    print(f"wrote {out} ({num} samples, {sampler}, {per_sample}{what}){noise_note}")
    if progressive:
        from ..progressive import save_progressive_grid
        save_progressive_grid(recorder.frames(), progressive_out, scale, decoder)
        print(f"wrote {progressive_out} (x0 predictions at t = {', '.join(f'{t:g}' for t in recorder.times)})")
    return images


def sample_series_to_files(denoiser, out: Path, *, sampler="ddim", steps=None, nfe=None, num=None, seed=0,
                           device="cpu", batch_size="auto", spacing=None, final=None, progress=True, refused=None,
                           guidance: Optional[GuidanceRequest] = None, nrow=8, **options):
    """A time-series checkpoint (docs/data_and_config.md): sample ``num`` series (default 64) and write
    them, as sampled, to OUT.npy (float32 (N, C, L)) and a line plot of the first 16 to OUT (.png).
    A class-conditional checkpoint (``label_column``) takes ``--class`` and ``--guidance-scale`` as an
    image model does (:meth:`GuidanceRequest.labels`: one class for all, or ``nrow`` series per class in
    turn; classifier-free guidance); the labels are written to OUT_labels.npy.
    A checkpoint of a series file (``series_scaling`` in its metadata) writes them in the file's units:
    clamped to [-1, 1] as ``diffkit eval`` scores them, then :meth:`SeriesScaling.unnormalise`, so each
    column lies in the [min, max] of the training rows.
    ``refused``: the image-only flags given ({flag: value}), each a one-line error."""
    import io

    import numpy as np
    import torch

    from ..checkpoint import atomic_write_bytes
    from ..drawing import draw_samples
    from ..models.network import sample_shape
    from ..timeseries import plot_series
    given = [flag for flag, value in (refused or {}).items() if value]
    if given:
        raise image_only(given[0])
    out = check_output_file(out, "sample plot", ".png")
    array_out = check_output_file(out.with_suffix(".npy"), "sample array", ".npy")
    meta = denoiser.meta
    denoiser, num_classes, _ = guided_denoiser(denoiser, guidance or GuidanceRequest(), device)
    labels, num, _ = (guidance or GuidanceRequest()).labels(num_classes, num, nrow, series=True)
    labels_out = None if labels is None else check_output_file(out.with_name(out.stem + "_labels.npy"),
                                                                "sample labels", ".npy")
    results = []
    drawn = draw_samples(denoiser, num, sample_shape(meta["unet"]), seed=seed, sampler=sampler, steps=steps,
                         nfe=nfe, spacing=spacing, final=final, batch_size=batch_size, device=device,
                         cond=None if labels is None else {"y": labels},
                         sink=lambda batch: results.append(batch.images.float().cpu()), progress=progress, **options)
    series, units = torch.cat(results), ""
    scaling = meta.get("series_scaling")
    if scaling is not None:  # a series file: back to its own units (diffkit.series_files)
        from ..series_files import SeriesScaling
        series = SeriesScaling.from_meta(scaling).unnormalise(series.clamp(-1, 1).double()).float()
        units = f", in the units of {scaling.get('file', 'the series file')}: columns {', '.join(scaling['columns'])}"
    for path, array in ((array_out, series.numpy()), (labels_out, None if labels is None else labels.numpy())):
        if path is not None:
            buffer = io.BytesIO()
            np.save(buffer, array)
            atomic_write_bytes(path, buffer.getvalue())
    plot_series(series, out)
    what = "" if labels is None else f", classes {sorted(set(labels.tolist()))} in {labels_out}"
    print(f"wrote {array_out} ({num} series {tuple(series.shape[1:])}, {sampler}, {drawn.nfe:g} network "
          f"evaluations per sample{units}{what}) and {out}")
    return series


def check_grid_files(out: Path, noise_out: Optional[Path]) -> None:
    """Before any sampling: the grid (and noise grid) files are two different, writable files."""
    if noise_out is not None and out.resolve() == noise_out.resolve():
        raise DiffkitError(f"the sample grid and the noise grid would both be {str(out)!r}; give another --noise-out")
    for what, path in (("sample grid", out), ("noise grid", noise_out)):
        if path is not None:
            check_output_file(path, what, ".png")


def condition_rows(count: int, num: Optional[int], nrow: int, given: Optional[str] = None):
    """(index of each sample's condition, num, nrow) for ``count`` classes or prompts: one fills all
    ``num`` images (default 64); several get one row each, of ceil(num / count) images (default
    ``nrow``). Rows of that width leave the last conditions without an image when num is not more
    than (count - 1) rows: refused when the user listed them (``given``, the flag's name), else the
    summary line names the ones sampled."""
    import torch
    if count == 1:
        num = num or 64
        return torch.zeros(num, dtype=torch.long), num, nrow
    num = num or count * nrow
    per_row = -(-num // count)
    filled = -(-num // per_row)
    if given and filled < count:
        raise DiffkitError(f"--num {num} in rows of {per_row} gives images to {filled} of the {count} {given}; "
                           f"give --num {count * per_row} (a row of {per_row} each)")
    return torch.arange(count).repeat_interleave(per_row)[:num], num, per_row


def refuse_for_guidance_input(directory, lcm: bool, given: list) -> None:
    """One line, from ``directory``'s JSON before any weight is read, when ``given`` (flags of classifier-free
    guidance proper: --guidance-rescale, --negative-prompt, --apg-*, ...) meet an LCM folder (``lcm``) whose UNet
    takes the guidance weight w as its input (time_cond_proj_dim; else the loader refuses it)."""
    from ..interop.lcm import folder_guidance_input
    w_input = folder_guidance_input(directory) if lcm and given else 0
    if w_input:
        raise DiffkitError(f"{given[0]} is an option of classifier-free guidance; this LCM folder's UNet takes "
                           f"--guidance-scale as its input w (time_cond_proj_dim={w_input}; one call per step)")


def sample_stable_diffusion(directory, *, sampler=None, steps=None, nfe=None, num=None, nrow=None, out=None,
                            individual=None, seed=0, device="cpu", batch_size="auto", spacing=None, final=None,
                            scale=1, progress=True, guidance: Optional[GuidanceRequest] = None, lora=None,
                            textual_inversion=None, control: Optional[ControlRequest] = None,
                            ip_adapter: Optional[IPAdapterRequest] = None, scheduler=None, freeu=None,
                            refiner: Optional[RefinerRequest] = None, t2i_adapter: Optional[T2IAdapterRequest] = None,
                            height=None, width=None, **options):
    """``diffkit sample --checkpoint SD_FOLDER --prompt TEXT``: a diffusers-format Stable Diffusion
    folder on disk (docs/interop.md) sampled with a diffkit sampler; rows as :func:`condition_rows`, sample i
    from ``seed + i``; classifier-free guidance with the empty prompt as null (default w = 6.5,
    i.e. diffusers' s = 7.5). An LCMScheduler folder (a latent consistency model) whose UNet takes
    the guidance weight as input gets w as that input (default diffusers' LatentConsistencyModelPipeline
    s = 8.5, w = 7.5); without that input (LCM-LoRA) classifier-free guidance as above, default off.
    ``sampler`` / ``steps`` None: the folder's defaults (``ddim``; an LCM folder ``consistency`` in 4
    steps). ``lora``: Stable Diffusion LoRA files, (path, scale) pairs, merged into the UNet and text encoder
    as diffusers' ``load_lora_weights`` + ``fuse_lora`` (:mod:`diffkit.interop.sd_lora`). ``textual_inversion``:
    embedding files, (path, token or None) pairs, as diffusers' ``load_textual_inversion``
    (:mod:`diffkit.interop.sd_textual_inversion`). ``control``:
    ControlNets (StableDiffusionControlNetPipeline; the images take the control image's size). ``ip_adapter``: an
    IP-Adapter and its image prompt (:mod:`diffkit.interop.ip_adapter`). An SD-XL folder
    (:mod:`diffkit.interop.sd_xl`) is sampled the same way (default s = 5), and a Kolors folder (ChatGLM3's SD-XL,
    :mod:`diffkit.interop.kolors`) too, on its scheduler's timesteps without a grid option (default ``euler``, its
    EulerDiscreteScheduler's step; :mod:`._kolors`). ``guidance.negative_prompt``: the
    null condition of every prompt; ``guidance.clip_skip`` / ``prompts_2`` / ``negative_prompt_2``: text_to_image's
    ``clip_skip`` / ``prompt_2`` (one, or one per prompt) / ``negative_prompt_2``. ``scheduler``: ``"lcm"`` /
    ``"tcd"``, the folder sampled as with diffusers' ``LCMScheduler`` / ``TCDScheduler.from_config``
    (:mod:`diffkit.interop.sd_scheduler`). ``refiner``: an SD-XL refiner folder that takes over the base's latents
    at its cut (:mod:`diffkit.commands._refiner`; the prompt options are the base's). ``guidance.pag_scale`` /
    ``pag_layers`` / ``pag_adaptive_scale`` / ``pag_interval``: perturbed-attention guidance as
    StableDiffusion(XL)PAGPipeline, diffusers' layer names (:mod:`diffkit.interop.sd_pag`; not with ControlNet,
    IP-Adapter, a refiner or LCM / TCD sampling). ``t2i_adapter``: T2I-Adapters and their control images
    (:mod:`diffkit.interop.t2i_adapter`; the images take the control image's size). ``height`` / ``width``: the
    images' size (default the folder's: UNet sample_size x VAE factor), the pipeline's ``height`` / ``width``; the
    drawn latents set SD-XL's size conditions and the refiner's; ControlNets' images are resized to it as the
    ControlNet pipelines do (not with T2I-Adapters: :mod:`._image_size`). ``options["latent_upscaler"]``: a
    :class:`._sd_latent_upscale.LatentUpscalerRequest` that upscales each batch's latents 2x before decoding (its VAE).
    ``options["gligen"]``: a GLIGEN folder's :class:`~diffkit.interop.gligen.Grounding` (:mod:`._gligen`).
    Writes the grid (and single PNGs); latents have no noise grid."""
    from ..interop.lcm import is_lcm_folder
    from ._common import default_sampling
    from ..interop.stable_diffusion import load_stable_diffusion, text_to_image
    from ..models.freeu import parse_freeu
    from ._sd_prompts import check_prompt_encoding, prompt_options

    from ._image_size import check_image_size
    guidance = guidance or GuidanceRequest()
    check_prompt_encoding(guidance, directory)  # as from_args did (library callers too)
    check_image_size(directory, height, width, t2i_adapter is not None)
    from ..interop.sd_panorama import PANORAMA_SIZE
    extras = {key: options.pop(key) for key in ("sag_scale", "panorama", "view_batch_size", "circular_padding",
                                                "view_window", "view_stride") if key in options}
    upscaler = options.pop("latent_upscaler", None)  # a LatentUpscalerRequest (._sd_latent_upscale)
    gligen = options.pop("gligen", None)  # a GLIGEN folder's Grounding (._gligen)
    if extras and refiner is not None:
        raise DiffkitError(f"--{next(iter(extras)).replace('_', '-')} with --refiner is not supported (diffusers' SAG "
                           f"and panorama pipelines have no refiner hand-over); drop one of them")
    if extras.get("panorama"):  # StableDiffusionPanoramaPipeline's default size
        height, width = height or PANORAMA_SIZE[0], width or PANORAMA_SIZE[1]
    if not guidance.prompts:
        raise DiffkitError(f"{directory} is a Stable Diffusion folder: give --prompt TEXT (repeat for one row per "
                           f"prompt)")
    for flag, value in (("--class", guidance.classes), ("--classifier", guidance.classifier),
                        ("--guidance-interval", guidance.interval), ("--clip-guidance", guidance.clip_prompt),
                        ("--thresholding", options.get("thresholding"))):  # its latents are not in [-1, 1]
        if value is not None and value is not False:
            raise not_for_stable_diffusion(flag)
    if guidance.pag_scale:  # diffusers' names, their form before loading (matched once loaded: .interop.sd_pag)
        from ..interop.sd_pag import check_layer_names
        check_layer_names(guidance.pag_layers)
    from ..interop.kolors import is_kolors_folder
    if is_kolors_folder(directory):  # ChatGLM3's SD-XL: not the CLIP encoders' options or UNet add-ons (._kolors)
        from ._kolors import refuse_kolors_flags
        refuse_kolors_flags(directory, {"--textual-inversion": textual_inversion,
                                        "--controlnet": control, "--ip-adapter": ip_adapter, "--scheduler": scheduler,
                                        "--t2i-adapter": t2i_adapter})
    sampler, steps = default_sampling(directory, sampler, steps, nfe, spacing, scheduler)
    lcm = is_lcm_folder(directory) or scheduler == "lcm"
    refuse_for_guidance_input(directory, lcm, [flag for flag, value in (
        ("--guidance-rescale", guidance.rescale), ("--negative-prompt", guidance.negative_prompt is not None),
        ("--negative-prompt-2", guidance.negative_prompt_2 is not None),
        *zip(GuidanceRequest.APG_FLAGS, (guidance.apg_eta is not None, guidance.apg_norm_threshold is not None,
                                         guidance.apg_momentum is not None))) if value])
    sd = load_stable_diffusion(directory, device, progress=progress, lora=lora, textual_inversion=textual_inversion,
                               scheduler=scheduler)
    from ._kolors import own_scheduler_loop  # a Kolors folder: its scheduler's timesteps, unless a grid is given
    own_grid, options = own_scheduler_loop(sd, sampler, spacing, final, nfe, options)
    pag = dict(pag_scale=guidance.pag_scale, pag_layers=guidance.pag_layers, pag_interval=guidance.pag_interval,
               pag_adaptive_scale=guidance.pag_adaptive_scale)  # diffusers' layer names (.interop.sd_pag)
    from ..interop.sd_pag import pag_request
    pag_request(sd, guidance.pag_scale, guidance.pag_layers, guidance.pag_adaptive_scale, guidance.pag_interval,
                control)  # one line before the ControlNets load or anything is drawn
    for flag, value in (("--pag-scale", guidance.pag_scale or None), *zip(GuidanceRequest.APG_FLAGS, (
            guidance.apg_eta, guidance.apg_norm_threshold, guidance.apg_momentum))):
        if value is not None and refiner is not None:
            raise DiffkitError(f"{flag} with --refiner is not supported (the refiner's half would run without it); "
                               f"drop one of them")
    if gligen is not None and gligen.images is not None:  # a text-image GLIGEN folder's image branch (._gligen)
        from dataclasses import replace
        from ..interop.gligen import load_gligen_image_encoder
        gligen = replace(gligen, image_encoder=load_gligen_image_encoder(directory, device, sd.dtype, progress))
    controlnet = None if control is None else control.load(device, sd.dtype, progress)
    adapter = None if ip_adapter is None else ip_adapter.load(device, sd.dtype, progress)
    sizes = dict(micro_conditioning=guidance.sizes) if guidance.sizes else {}  # SD-XL / Kolors: ._size_conditions
    if sizes and refiner is not None:  # the refiner's half takes what applies to it (its img2img pipeline's)
        from dataclasses import replace
        from ._size_conditions import refiner_size_conditions
        refiner = replace(refiner, conditioning={**refiner_size_conditions(guidance.sizes, refiner.folder),
                                                 **refiner.conditioning})
    refined = None if refiner is None else refiner.load(device, progress)
    upscaling = None if upscaler is None else upscaler.load(device, progress)
    if refiner is not None:  # both halves get a step of the grid: one line before any sampling
        refiner.check_steps(sd, refined, sampler, steps or 50, {"spacing": spacing, "final": final, **options})
    size = (height, width) if controlnet is None else controlnet.size(sd.vae_scale_factor, height, width)
    adapters = None if t2i_adapter is None else t2i_adapter.load(device, sd.dtype, progress)
    size = size if adapters is None else adapters.size(sd.vae_scale_factor)
    prompts = list(guidance.prompts)
    index, num, nrow = condition_rows(len(prompts), num, nrow or 8, "prompts of --prompt")
    per_sample = [prompts[i] for i in index.tolist()]
    if guidance.guidance_scale is None:  # the pipeline's default: s = 7.5 (SD), 8.5 (LCM), 1 (LCM-LoRA)
        scale_w, convention = sd.default_guidance_scale, "diffusers"
    else:
        scale_w, convention = guidance.guidance_scale, guidance.convention

    controls = controlnet if adapters is None else adapters  # (they exclude each other: ._t2i_adapter)
    rows = None if controls is None or controls.per_prompt == 1 else index.tolist()  # each prompt's image

    per_prompt_2 = guidance.prompts_2 is not None and len(guidance.prompts_2) > 1  # --prompt-2 once per --prompt
    per_sample_2 = [guidance.prompts_2[i] for i in index.tolist()] if per_prompt_2 else None

    def prompted(_, noise, sampler, steps, *, cond, **how):  # text_to_image's guidance, from the drawn z_T
        # the base's part (._refiner); one step is the batch-size probe's (check_steps refuses it with --refiner)
        alone = refiner is None or steps == 1
        handover = {} if alone else {"denoising_end": refiner.handover}
        z = text_to_image(sd, cond["prompts"], sampler=sampler, steps=steps, guidance_scale=scale_w,
                          convention=convention, guidance_rescale=guidance.rescale, seed=None, latents=noise,
                          negative_prompt=guidance.negative_prompt,
                          return_latents=True, controlnet=controlnet, control_rows=cond.get("control_rows"),
                          ip_adapter=adapter, t2i_adapter=adapters, freeu=freeu, height=height, width=width,
                          **prompt_options(guidance, cond.get("prompts_2")),
                          **pag, **handover, **guidance.apg_options(), **own_grid, **extras, gligen=gligen, **sizes,
                          **how)
        if upscaling is not None and steps != 1:  # (one step: the batch-size probe's; the request refuses --steps 1)
            return upscaler.upscaled(upscaling, cond["prompts"], z, guidance.negative_prompt, how["generator"])
        if alone:
            return z
        guiding = dict(guidance_scale=scale_w, convention=convention, guidance_rescale=guidance.rescale,
                       negative_prompt=guidance.negative_prompt)
        return refiner.refined(refined, cond["prompts"], z, sampler, steps or 50, guiding, how)

    decode = sd.decode if refined is None else refined.decode
    decode = decode if upscaling is None else upscaling.decode  # its VAE: SD's, at 2x the size
    if extras.get("circular_padding"):  # the seam decoded as the inside (.interop.sd_panorama)
        from ..interop.sd_panorama import decode_circular
        decode = functools.partial(decode_circular, sd)
    images, out = draw_prompted_grid(
        sd.denoiser, num, sd.latent_shape(1, *size)[1:], prompted,
        lambda start, n: {"prompts": per_sample[start:start + n],
                          **({} if rows is None else {"control_rows": rows[start:start + n]}),
                          **({} if per_sample_2 is None else {"prompts_2": per_sample_2[start:start + n]})},
        decode, out, individual, nrow, scale,
        seed=seed, sampler=sampler, steps=steps, nfe=nfe, spacing=spacing, final=final, batch_size=batch_size,
        device=device, dtype=sd.dtype, progress=progress, **options)
    what = guidance.pag_label() + ("" if freeu is None else ", " + parse_freeu(freeu).label())
    what += "" if refiner is None else f", refiner {refiner.folder} from denoising_end {refiner.handover:g}"
    what += "" if upscaler is None else f", x2 latent upscaler {upscaler.folder} ({upscaler.steps} steps)"
    what += ", on the scheduler's timesteps" if own_grid else ""
    what += f", self-attention guidance s={extras['sag_scale']:g}" if extras.get("sag_scale") else ""
    what += f", MultiDiffusion panorama {height}x{width}" if extras.get("panorama") else ""
    what += "" if gligen is None else f", GLIGEN {len(gligen.boxes)} boxes, beta {gligen.beta_for(sd):g}"
    print(f"wrote {out} ({num} samples, {sampler}, Stable Diffusion folder {directory}, prompts {prompts}{what})")
    return images


def draw_prompted_grid(denoiser, num: int, shape, sample_fn, cond, decode, out, individual, nrow: int, scale: int,
                       **draw) -> tuple:
    """(images, grid path) of a prompted folder (Stable Diffusion, SD3): ``draw_samples`` with ``sample_fn`` (the
    folder's text to image from the drawn z_T) and ``cond`` (each batch's prompts: ``cond(start, n)``, or a dict of
    per-sample rows sliced to the batch), the grid saved to ``out`` (default samples.png) and, with ``individual``,
    every image."""
    import torch

    from ..drawing import draw_samples
    from ..images import save_grid, save_images
    if isinstance(cond, dict):
        rows = cond

        def cond(start: int, n: int) -> dict:
            return {key: row[start:start + n] for key, row in rows.items()}
    results = []
    draw_samples(denoiser, num, shape, cond=cond, decode=decode, sample_fn=sample_fn, separate_step_seeds=False,
                 sink=lambda batch: results.append(batch.images.cpu()), **draw)
    images = torch.cat(results)
    out = Path(out) if out else Path("samples.png")
    save_grid(images[:GRID_LIMIT], out, nrow, scale)
    if individual:
        save_images(images, individual)
    return images, out


def prompt_conditioning(denoiser, request: GuidanceRequest, num: Optional[int], nrow: int, device="cpu"):
    """(denoiser with classifier-free guidance if asked, contexts (P, L, D) of the P prompts,
    prompts, prompt index of each sample, num, nrow) for a text-conditional checkpoint.

    One prompt: every image; several: one row per prompt. Default prompts: each class's caption.
    The null condition of the guidance is the empty prompt's context. Unknown words: a warning."""
    import warnings

    from ..guidance import ClassifierFreeGuidance
    from .eval import printed_warnings
    if request.classes:
        raise DiffkitError("--class needs a class-conditional checkpoint; this one is text-conditional: use "
                           "--prompt TEXT")
    if request.classifier:
        raise DiffkitError("--classifier guidance is not available for a text-conditional checkpoint; use "
                           "--guidance-scale")
    model = denoiser.model
    captions = getattr(model, "captions", None)
    prompts = list(request.prompts) if request.prompts else (
        [captions.prompt(k) for k in range(captions.num_classes)] if captions is not None else [""])
    index, num, nrow = condition_rows(len(prompts), num, nrow, "prompts of --prompt" if request.prompts else None)
    context = denoiser.prompt_encoder(prompts, device)
    with printed_warnings():  # now, one line 'diffkit sample: warning: ...' per prompt
        for text in prompts:  # after the encoder's own checks (a prompt too long): one line for a mistake
            unknown = list(dict.fromkeys(model.tokenizer.unknown_words(text)))  # each word once
            if unknown:
                more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
                shown = ", ".join(repr(w) for w in unknown[:8]) + more
                warnings.warn(f"prompt {shorten(text)}: word(s) {shown} are not in the model's vocabulary and are "
                              f"encoded as <unk>", DiffkitWarning, stacklevel=2)
    if request.guidance_scale is not None:
        request.check_null_trained(denoiser.meta)
        null = denoiser.prompt_encoder([""], device)
        denoiser = ClassifierFreeGuidance(denoiser, request.guidance_scale, request.convention, request.rescale,
                                          request.interval, null_context=null, **request.apg_options())
    return request.perturbed(denoiser), context, prompts, index, num, nrow


def _algorithm_1(classifier, guidance: GuidanceRequest, conditional_model: bool):
    """A ``sample_fn`` for :func:`diffkit.drawing.draw_samples`: classifier guidance as the mean
    shift of the ddpm sampler (Dhariwal & Nichol 2021, Alg. 1). The labels ``cond["y"]`` go to the
    classifier, and to the network only if it is conditional; the sampler's options do not apply."""
    import torch

    from ..guidance import classifier_guided_ddpm
    from ..sampling import resolve_sampler, sampler_grid
    scale = 1.0 if guidance.classifier_scale is None else guidance.classifier_scale

    def sample_fn(denoiser, x, sampler, steps, *, nfe, spacing, final, generator, cond, progress, **_options):
        info, spacing, final = resolve_sampler(sampler, spacing, final)
        grid = sampler_grid(denoiser, info, steps, nfe, spacing, final)
        with torch.no_grad():
            return classifier_guided_ddpm(denoiser, classifier, x, grid, scale=scale, y=cond["y"],
                                          cond=cond if conditional_model else {}, generator=generator,
                                          progress=progress)
    return sample_fn
