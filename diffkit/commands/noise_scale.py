"""``diffkit experiment noise-scale``: the gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish
et al. 2018) of L_simple, L_hybrid, L_vlb with uniform timesteps and L_vlb with importance-sampled
timesteps (Improved DDPM Sec. 3.3, eq. 18) for a checkpoint, on its training data (or --dataset).

Each of --batches big batches (--big-batch examples, drawn with replacement) is split into small batches
(--small-batch); McCandlish et al.'s unbiased two-batch-size estimates of |G|^2 and tr(Sigma) are averaged
over the batches and B_simple is their ratio. Standard errors: the batch-to-batch spread, B_simple's by the
delta method. The importance weights come from measured L_vlb terms: --history rounds at every t, as the
loss-aware training sampler fills its history. Prints one row per objective and writes --out (JSON).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DiffkitError
from ._common import (IMAGE_DATASETS, check_output_file, dataset_arg, missing_dirs, path_arg, positive_int,
                      removed_if_empty_on_failure, seed_int)


def add_parser(tables) -> None:
    from ..gradient_noise import OBJECTIVES
    p = tables.add_parser("noise-scale", help="gradient noise scale B_simple of each diffusion objective",
                          description=__doc__)
    p.add_argument("--checkpoint", type=path_arg, required=True, help="a diffkit checkpoint (.safetensors)")
    p.add_argument("--dataset", type=dataset_arg(IMAGE_DATASETS),
                   help="digits, mnist, fashion-mnist, cifar10, folder (default: the checkpoint's "
                        "training data set)")
    p.add_argument("--data-dir", type=path_arg, help="folder with the data set's files (default: the checkpoint's)")
    p.add_argument("--split", choices=("train", "test"), default="train",
                   help="data split the examples are drawn from (default train, what the model was trained on)")
    p.add_argument("--objectives", default=None,
                   help=f"comma-separated, from {', '.join(OBJECTIVES)} (default all; hybrid needs a learned "
                        f"variance)")
    p.add_argument("--batches", type=positive_int, default=100, help="big batches averaged over (default 100)")
    p.add_argument("--small-batch", type=positive_int, default=8, help="small batch size (default 8)")
    p.add_argument("--big-batch", type=positive_int, default=64,
                   help="big batch size, a multiple of the small one (default 64)")
    p.add_argument("--history", type=positive_int, default=10,
                   help="measured L_vlb terms per t behind the importance weights (default 10, as in training)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the data, noise and timesteps (default 0)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, mps")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="the raw weights, not the EMA")
    p.add_argument("--out", type=path_arg,
                   default="noise_scale.json", help="JSON file for the results (default noise_scale.json)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress lines")
    p.set_defaults(func=run)


def run(args) -> int:
    with removed_if_empty_on_failure(missing_dirs(Path(args.out).parent)):
        return _run(args)


def _run(args) -> int:
    import time

    import torch

    from ..config import resolve_device
    from ..evaluation import reference_images, write_json
    from ..experiments import parse_list
    from ..gradient_noise import (check_batch_sizes, check_diffusion_model, check_objectives, diffusion_noise_scales,
                                  format_noise_table)
    from ..loading import load_denoiser
    from ..models.network import check_image_model
    # the messages name the flags typed (the Python API's name its parameters)
    check_batch_sizes(args.batches, args.small_batch, args.big_batch,
                      names={"batches": "--batches", "small_batch": "--small-batch", "big_batch": "--big-batch"})
    objectives = None if args.objectives is None else parse_list(args.objectives, "--objectives", str)
    if objectives is not None:  # names now; the variance once the checkpoint is read
        check_objectives(objectives, learned_variance=True, name="--objectives")
    check_output_file(args.out, "--out", ".json")
    device = resolve_device(args.device)
    denoiser = load_denoiser(args.checkpoint, use_ema=args.ema, device=device)
    check_diffusion_model(denoiser)
    objectives = check_objectives(objectives, bool(denoiser.meta.get("learned_variance", False)), name="--objectives")
    cfg = denoiser.meta.get("config", {})
    dataset = args.dataset or cfg.get("dataset", "digits")
    data_dir = args.data_dir or (cfg.get("data_dir") if args.dataset is None else None)
    unet = denoiser.meta["unet"]
    check_image_model(unet, "diffkit experiment noise-scale")
    from ..data import check_image_dataset
    check_image_dataset(dataset, "diffkit experiment noise-scale of an image model", verb="measures on")
    if args.split == "train":  # every training image (the digits included: training uses all 1797)
        from ..data import load_dataset
        data = load_dataset(dataset, data_dir, img_size=unet["img_size"], train=True, channels=unet["in_channels"])
        images, labels = data.images.to(torch.float32) / 127.5 - 1.0, data.labels
    else:
        images, labels = reference_images(dataset, data_dir, train=False, img_size=unet["img_size"],
                                          channels=unet["in_channels"])
    if images.shape[0] < 1:
        raise DiffkitError(f"the {args.split} split of {dataset!r} is empty")
    start = time.perf_counter()

    def progress(name, i):
        if args.progress and (i + 1) % max(1, args.batches // 4) == 0:
            print(f"  {name}: {i + 1}/{args.batches} batches ({time.perf_counter() - start:.0f} s)", flush=True)
    result = diffusion_noise_scales(denoiser, images, labels=labels, objectives=objectives, batches=args.batches,
                                    small_batch=args.small_batch, big_batch=args.big_batch, history=args.history,
                                    seed=args.seed, progress=progress)
    result["settings"].update(checkpoint=str(args.checkpoint), dataset=dataset, split=args.split, ema=args.ema,
                              device=str(device), seconds=time.perf_counter() - start)
    print(format_noise_table(result))
    if args.objectives is None and "hybrid" not in objectives:
        print("no L_hybrid row: the checkpoint's variance is fixed (L_hybrid trains a learned variance)")
    for name, r in result["objectives"].items():
        if r["b_simple"] is None:
            lower = r["b_simple_lower"]
            bound = "no bound" if lower is None else f"B_simple > {lower:.4g} at 2 standard errors"
            print(f"{name}: |G|^2 not resolved above 0 by {args.batches} batches of {args.big_batch} ({bound}); more "
                  f"--batches or a larger --big-batch resolve it")
    path = write_json(result, args.out)
    print(f"wrote {path} ({result['settings']['seconds']:.0f} s)")
    return 0
