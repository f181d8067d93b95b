"""``diffkit predict``: depth, surface normals or intrinsic images of PNGs by a Marigold folder (diffusers'
MarigoldDepthPipeline / MarigoldNormalsPipeline / MarigoldIntrinsicsPipeline; docs/interop/marigold.md).

    diffkit predict --checkpoint marigold-depth-v1-1 --image photo.png --out depth/
    diffkit predict --checkpoint marigold-normals-v1-1 --image photos/ --out normals/ --ensemble-size 5 --uncertainty

For each input ``NAME.png`` it writes, into ``--out``, the prediction as the pipeline's ``output_type="np"`` gives it
for that image (``NAME_depth.npy``: (H, W, 1) in [0, 1]; ``NAME_normals.npy``: (H, W, 3) unit normals;
``NAME_intrinsics.npy``: (T, H, W, 3), one map per target) and its picture as diffusers' ``visualize_depth`` /
``visualize_normals`` / ``visualize_intrinsics`` draw it (``NAME_depth.png``, ``NAME_normals.png``, one
``NAME_TARGET.png`` per target); with ``--uncertainty`` also ``NAME_TASK_uncertainty.npy`` and its picture
``NAME_TASK_uncertainty.png`` (intrinsics: ``NAME_TARGET_uncertainty.png`` per target;
``visualize_uncertainty``). Image i is predicted as ``pipe(image_i, generator=torch.Generator().manual_seed(seed +
i))``.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

from ._common import (add_progress_flag, int_in, missing_dirs, path_arg, positive_int, removed_if_empty_on_failure,
                      seed_int)

RESAMPLE = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")  # marigold_outputs.RESAMPLE_METHODS (no torch)


def color_map_arg(text: str) -> str:
    """A colour map name (checked against matplotlib's when the command runs); ``''`` is refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not a colour map; give a matplotlib name such as Spectral")
    return text


color_map_arg.__name__ = "colour map"


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help="depth, normals or intrinsic images of PNGs by a Marigold folder",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=path_arg, required=True, metavar="FOLDER",
                   help="a Marigold folder (diffusers format: MarigoldDepthPipeline, MarigoldNormalsPipeline or "
                        "MarigoldIntrinsicsPipeline)")
    p.add_argument("--image", type=path_arg, required=True, metavar="PNG|DIR", help="a PNG or a folder of PNGs")
    p.add_argument("--out", type=path_arg, required=True, metavar="DIR",
                   help="folder for NAME_TASK.npy and NAME_TASK.png per input NAME.png")
    p.add_argument("--steps", type=int_in(1, 1000),
                   help="denoising steps (the pipeline's num_inference_steps; default the folder's "
                        "default_denoising_steps)")
    p.add_argument("--ensemble-size", type=int_in(1, 1024), default=1, metavar="E",
                   help="predictions per image, ensembled (default 1; Marigold suggests 5-10)")
    p.add_argument("--processing-resolution", type=int_in(0, 65536), metavar="R",
                   help="the longer side the image is resized to first (a multiple of the VAE factor; 0: the "
                        "image's own size; default the folder's default_processing_resolution)")
    p.add_argument("--no-match-input-resolution", dest="match_input_resolution", action="store_false",
                   help="keep the prediction at the processing resolution (default: resized to the input's size)")
    p.add_argument("--resample-method-input", choices=RESAMPLE, default="bilinear",
                   help="the resize to the processing resolution (default bilinear)")
    p.add_argument("--resample-method-output", choices=RESAMPLE, default="bilinear",
                   help="the resize back to the input's size (default bilinear)")
    p.add_argument("--reduction", choices=("median", "mean", "closest"),
                   help="how an ensemble is reduced (depth / intrinsics: median (default) or mean; normals: closest "
                        "(default) or mean)")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write the ensemble's uncertainty (needs --ensemble-size > 1)")
    p.add_argument("--color-map", type=color_map_arg, metavar="NAME",
                   help="matplotlib colour map of the depth picture (default Spectral) or of intrinsics' stacked "
                        "sub-targets (default binary)")
    p.add_argument("--sampler", help="see 'diffkit samplers' (default: the folder's scheduler, ddim or consistency "
                                     "for an LCMScheduler, on its timesteps); NAME@SPACING:FINAL: on that grid")
    p.add_argument("--seed", type=seed_int, default=0, help="image i uses seed + i (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=1,
                   help="ensemble members denoised at once (the pipeline's batch_size; default 1)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, mps")
    add_progress_flag(p)
    p.set_defaults(func=run)


def _npy_bytes(array) -> bytes:
    import numpy as np
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _checked(args, task: str) -> None:
    """One line for a flag the folder's task does not take, before anything is loaded."""
    from ..errors import DiffkitError
    from ..interop.marigold_outputs import REDUCTIONS
    if args.reduction is not None and args.reduction not in REDUCTIONS[task]:
        raise DiffkitError(f"--reduction {args.reduction} is not allowed for a Marigold {task} folder; choose one of: "
                           f"{', '.join(REDUCTIONS[task])}")
    if args.uncertainty and args.ensemble_size == 1:
        raise DiffkitError("--uncertainty needs --ensemble-size > 1 (the spread of the ensemble's members)")
    if args.color_map is not None:
        if task == "normals":
            raise DiffkitError("--color-map colours depth and intrinsics' stacked sub-targets; a normals picture is "
                               "(n + 1) / 2 as RGB: drop it")
        import matplotlib
        if args.color_map not in matplotlib.colormaps:
            raise DiffkitError(f"--color-map {args.color_map!r} is not allowed; choose one of matplotlib's, e.g. "
                               f"Spectral, binary, viridis, magma, turbo")


def _outputs(task: str, name: str, result, marigold, color_map) -> dict:
    """{file name: bytes} of one image's prediction (module doc)."""
    from ..images import png_bytes
    from ..interop.marigold_outputs import (depth_picture, intrinsics_pictures, normals_picture,
                                            uncertainty_picture)
    prediction, spread = result.numpy()
    files = {}
    if task == "intrinsics":
        files[f"{name}_intrinsics.npy"] = _npy_bytes(prediction)
        for target, picture in intrinsics_pictures(result.prediction, marigold.target_properties,
                                                   color_map or "binary").items():
            files[f"{name}_{target}.png"] = png_bytes(picture)
    else:
        files[f"{name}_{task}.npy"] = _npy_bytes(prediction[0])
        picture = depth_picture(result.prediction[0, 0], color_map or "Spectral") if task == "depth" \
            else normals_picture(result.prediction[0])
        files[f"{name}_{task}.png"] = png_bytes(picture)
    if spread is not None:
        files[f"{name}_{task}_uncertainty.npy"] = _npy_bytes(spread if task == "intrinsics" else spread[0])
        for i, one in enumerate(result.uncertainty):
            what = marigold.target_properties["target_names"][i] if task == "intrinsics" else task
            picture = uncertainty_picture(one)
            files[f"{name}_{what}_uncertainty.png"] = png_bytes(picture if picture.ndim == 3 else picture[..., None])
    return files


def run(args) -> int:
    from ..checkpoint import atomic_write_bytes
    from ..config import resolve_device
    from ..errors import DiffkitError
    from ..interop.marigold import load_marigold, marigold_task, predict
    from ..metrics.features import load_image_batch
    from .edit import image_files
    from ._common import check_writable_dir
    task = marigold_task(args.checkpoint)
    if task is None:
        raise DiffkitError(f"--checkpoint {args.checkpoint!r} is not a Marigold folder; allowed: a diffusers folder "
                           f"of MarigoldDepthPipeline, MarigoldNormalsPipeline or MarigoldIntrinsicsPipeline")
    _checked(args, task)
    out, source = Path(args.out), Path(args.image)
    if out.exists() and source.is_dir() and out.resolve() == source.resolve():
        raise DiffkitError(f"--out {args.out!r} is the --image folder; give another folder")
    files = image_files(source)  # one line when it does not exist
    device = resolve_device(args.device)
    marigold = load_marigold(args.checkpoint, device=device, progress=args.progress)
    ensembling = {} if args.reduction is None else {"reduction": args.reduction}
    new_dirs = missing_dirs(out)
    check_writable_dir(out)
    written = []
    with removed_if_empty_on_failure(new_dirs):
        for i, path in enumerate(files):
            image = load_image_batch([path], "RGB")
            result = predict(marigold, image, steps=args.steps, ensemble_size=args.ensemble_size,
                             processing_resolution=args.processing_resolution,
                             match_input_resolution=args.match_input_resolution,
                             resample_method_input=args.resample_method_input,
                             resample_method_output=args.resample_method_output, batch_size=args.batch_size,
                             ensembling=ensembling, seed=args.seed + i, sampler=args.sampler,
                             uncertainty=args.uncertainty, progress=args.progress)
            for name, data in _outputs(task, path.stem, result, marigold, args.color_map).items():
                written.append(atomic_write_bytes(out / name, data))
    steps = args.steps or marigold.settings.get("default_denoising_steps")
    print(f"wrote {len(written)} files for {len(files)} image(s) to {out} ({written[0].name} ...): Marigold {task}, "
          f"{args.sampler or marigold.default_sampler}, {steps} steps, ensemble of {args.ensemble_size}")
    return 0
