"""``diffkit convert``: a diffkit checkpoint <-> a diffusers-format folder (docs/interop.md).

    diffkit convert --checkpoint CKPT --to-diffusers DIR     # DDPMPipeline folder (unet/, scheduler/)
    diffkit convert --checkpoint DIT --to-diffusers DIR      # DiTPipeline folder (transformer/, scheduler/)
    diffkit convert --from-diffusers DIR --out CKPT          # UNet2DModel / DiT (+ scheduler) -> diffkit checkpoint
    diffkit convert --checkpoint CKPT --out WEIGHTS          # training checkpoint -> weights only (EMA)
    diffkit convert --checkpoint LORA_CKPT --lora-only --out ADAPTER   # a LoRA run's adapters alone
    diffkit convert --single-file MODEL.safetensors --config FOLDER --out DIR   # SD / SD-XL / SD3 / FLUX.1 single file
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import DiffkitError
from ._common import check_output_file, missing_dirs, path_arg, removed_if_empty_on_failure


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert between diffkit checkpoints and diffusers folders",
        description="Convert a diffkit pixel-space U-Net checkpoint to a diffusers DDPMPipeline folder "
                    "(UNet2DModel + DDPMScheduler config; LCMScheduler for a consistency model, "
                    "FlowMatchEulerDiscreteScheduler for a flow-matching model; a DiT checkpoint to a DiTPipeline "
                    "folder: DiTTransformer2DModel + DDIMScheduler), or a diffusers "
                    "UNet2DModel or pixel-space DiT folder back to a diffkit "
                    "checkpoint (both need the optional extra: pip install diffkit[diffusers]); or a training "
                    "checkpoint to a weights-only one (--checkpoint CKPT --out FILE: EMA weights, schedule and "
                    "model description, no optimiser state); or a LoRA checkpoint's adapters alone (--lora-only); or "
                    "an original-format Stable Diffusion 1.x / 2.x, SD-XL, SD3 / SD3.5 or FLUX.1 single file "
                    "(--single-file FILE --config FOLDER --out DIR: diffusers' from_single_file with a local config "
                    "folder, then save_pretrained).")
    parser.add_argument("--checkpoint", type=path_arg,
                        help="diffkit .safetensors checkpoint (or a run's checkpoint folder) to export")
    parser.add_argument("--to-diffusers", type=path_arg, metavar="DIR", help="write the diffusers folder here")
    parser.add_argument("--from-diffusers", type=path_arg,
                        metavar="DIR", help="a diffusers folder (model_index.json + unet/ + "
                                           "scheduler/, or a UNet2DModel folder; a DiTPipeline folder "
                                           "without a vae) to import")
    parser.add_argument("--out", type=path_arg,
                        metavar="CKPT", help="write the diffkit checkpoint here (.safetensors): imported "
                                             "from --from-diffusers, or the weights of --checkpoint")
    parser.add_argument("--no-ema", dest="ema", action="store_false", help="export the raw weights, not the EMA")
    parser.add_argument("--lora-only", action="store_true",
                        help="with --checkpoint LORA_CKPT --out FILE: write only the LoRA adapters (A, B; EMA unless "
                             "--no-ema) and their base's identity, for diffkit sample --checkpoint BASE --lora FILE")
    parser.add_argument("--clip-sample", action="store_true",
                        help="exported DDPMScheduler (a DiT's DDIMScheduler) clips x_0 to [-1, 1] (diffusers' default; "
                             "diffkit's is off)")
    parser.add_argument("--single-file", type=path_arg, metavar="FILE",
                        help="an original-format SD 1.x / 2.x, SD-XL or SD3 / SD3.5 .safetensors single file "
                             "(model.diffusion_model.*, first_stage_model.*, ...; SD3: also the transformer "
                             "alone, joint_blocks.*) or a FLUX.1 transformer "
                             "(double_blocks.*, ...) to write as a diffusers folder at --out DIR, with --config")
    parser.add_argument("--config", type=path_arg, metavar="FOLDER",
                        help="with --single-file: a local diffusers folder of the same model (its JSON files, "
                             "tokenizers and scheduler; weights not needed but those the file lacks: a FLUX.1 or SD3 "
                             "transformer file's VAE and text encoders, a whole SD3 file's missing text encoders): "
                             "the converted folder's configs")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"),
                        help="with --single-file: the written weights' dtype (diffusers' torch_dtype; default float32, "
                             "diffusers' default: a float16 file gives a folder twice its size)")
    parser.set_defaults(func=run)


def run(args) -> int:
    if args.single_file is not None or args.config is not None or args.dtype is not None:
        return _single_file(args)
    if args.clip_sample and args.to_diffusers is None:
        raise DiffkitError("--clip-sample sets the exported DDPMScheduler: it goes with --to-diffusers DIR")
    if not args.ema and args.from_diffusers is not None:
        raise DiffkitError("--no-ema chooses which weights of --checkpoint are exported; a diffusers import has one "
                           "set")
    if args.lora_only and (args.checkpoint is None or args.out is None or args.to_diffusers or args.from_diffusers):
        raise DiffkitError("--lora-only goes with --checkpoint LORA_CKPT --out FILE (not with --to-diffusers or "
                           "--from-diffusers)")
    if args.checkpoint is not None and args.out is not None and args.to_diffusers is None \
            and args.from_diffusers is None:
        return _weights_only(args)
    export = args.checkpoint is not None or args.to_diffusers is not None
    imp = args.from_diffusers is not None or args.out is not None
    if export == imp:
        raise DiffkitError("give one of --checkpoint CKPT --to-diffusers DIR, --from-diffusers DIR --out CKPT, "
                           "or --checkpoint CKPT --out FILE (weights only)")
    from ..interop import diffusers_unet
    if export:
        if not (args.checkpoint and args.to_diffusers):
            raise DiffkitError("--checkpoint and --to-diffusers go together")
        out = diffusers_unet.export_diffusers(args.checkpoint, args.to_diffusers, use_ema=args.ema,
                                              clip_sample=args.clip_sample)
        from ..interop.dit_pipeline import is_dit_folder
        load = (f"DiTPipeline.from_pretrained({str(out)!r}, vae=diffkit.interop.dit_pipeline.pixel_decoder())"
                if is_dit_folder(out) else f"DDPMPipeline.from_pretrained({str(out)!r})")
        sys.stdout.write(f"wrote diffusers folder {out} ({load})\n")
        return 0
    if not (args.from_diffusers and args.out):
        raise DiffkitError("--from-diffusers and --out go together")
    if not Path(args.from_diffusers).is_dir():
        raise DiffkitError(f"--from-diffusers {args.from_diffusers!r} is not a folder")
    with removed_if_empty_on_failure(missing_dirs(Path(args.out).parent)):  # a failed read leaves no folder
        check_output_file(args.out, "--out", ".safetensors", writes="diffusion weights")
        unet, schedule, prediction_type = diffusers_unet.import_diffusers(args.from_diffusers, out=args.out)
    sys.stdout.write(f"wrote diffkit checkpoint {args.out} ({unet.num_parameters():,} parameters, "
                     f"T={schedule.num_timesteps}, prediction_type={prediction_type})\n")
    return 0


def _single_file(args) -> int:
    others = [flag for flag, given in (("--checkpoint", args.checkpoint), ("--to-diffusers", args.to_diffusers),
                                        ("--from-diffusers", args.from_diffusers), ("--lora-only", args.lora_only),
                                        ("--clip-sample", args.clip_sample), ("--no-ema", not args.ema)) if given]
    if args.single_file is None or others:
        raise DiffkitError(f"--config FOLDER goes with --single-file FILE --out DIR only (given: "
                           f"{', '.join(others) or 'no --single-file'})")
    if args.config is None or args.out is None:  # (--dtype alone: "no --single-file" above)
        raise DiffkitError(f"--single-file {args.single_file!r} needs --config FOLDER (a local diffusers folder of "
                           f"the same model) and --out DIR")
    from ..interop.single_file import convert_single_file
    out = convert_single_file(args.single_file, args.config, args.out, dtype=args.dtype, flag="--single-file")
    sys.stdout.write(f"wrote diffusers folder {out} (diffkit sample --checkpoint {out}; "
                     f"its diffusers pipeline's from_pretrained)\n")
    return 0


def _weights_only(args) -> int:
    from ..checkpoint import save_checkpoint
    from ..loading import export_weights
    from ..lora_files import KIND, adapter_of
    if Path(args.out).resolve() == Path(args.checkpoint).resolve():
        raise DiffkitError(f"--out {args.out!r} is the checkpoint itself; write the weights to another file")
    if args.lora_only:
        adapters, info = adapter_of(args.checkpoint, use_ema=args.ema)  # read first: no LoRA, no folder made
        check_output_file(args.out, "--out", ".safetensors", writes=KIND)
        out = save_checkpoint(args.out, adapters, info)
        sys.stdout.write(f"wrote LoRA adapter file {out} ({out.stat().st_size / 2**10:.1f} KiB, "
                         f"{'EMA' if args.ema else 'raw'} adapters)\n")
        return 0
    with removed_if_empty_on_failure(missing_dirs(Path(args.out).parent)):  # a failed read leaves no folder
        check_output_file(args.out, "--out", ".safetensors", writes="diffusion weights")
        out = export_weights(args.checkpoint, args.out, use_ema=args.ema)
    size = out.stat().st_size / 2**20
    sys.stdout.write(f"wrote weights-only checkpoint {out} ({size:.1f} MiB, {'EMA' if args.ema else 'raw'} weights)\n")
    return 0
