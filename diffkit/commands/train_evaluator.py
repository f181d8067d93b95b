"""``diffkit train-evaluator``: train the small domain classifier whose features give
FD-classifier (FID's construction on a network that knows digits or clothes), on a data set's
train split, and report its accuracy on the test split."""
from __future__ import annotations

import time
from pathlib import Path

from ._common import (check_output_file, dataset_arg, missing_dirs, path_arg, positive_int, removed_if_empty_on_failure,
                      seed_int)

EVALUATOR_DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")


def register(sub) -> None:
    p = sub.add_parser("train-evaluator", help="train the classifier used by the fd-classifier metric",
                       description=__doc__)
    p.add_argument("--dataset", type=dataset_arg(EVALUATOR_DATASETS),
                   default="digits", help="digits (default), mnist, fashion-mnist, cifar10")
    p.add_argument("--data-dir", type=path_arg, help="folder with the data set's files (not needed for digits)")
    p.add_argument("--out", type=path_arg,
                   default="evaluator.safetensors", help="output file (default evaluator.safetensors)")
    p.add_argument("--epochs", type=positive_int, default=3, help="passes over the training images (default 3)")
    p.add_argument("--img-size", type=positive_int, help="image side (default: the data set's own); "
                                                          "must equal the size of the images you evaluate")
    p.add_argument("--num-train", type=positive_int, help="use only the first N training images (at most the "
                   "split's: digits 1200, mnist / fashion-mnist 60000, cifar10 50000)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per step (default 64)")
    p.add_argument("--seed", type=seed_int, default=0, help="the random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, mps")
    p.set_defaults(func=run)


def run(args) -> int:
    with removed_if_empty_on_failure(missing_dirs(Path(args.out).parent)):  # a failed run leaves no empty folder
        return _run(args)


def _run(args) -> int:
    from ..config import resolve_device
    from ..data import check_data_dir_applies
    from ..errors import DiffkitError, check_choice
    from ..evaluation import reference_images
    from ..metrics import evaluator_accuracy, save_evaluator, train_evaluator
    check_choice("dataset", args.dataset, EVALUATOR_DATASETS)
    check_data_dir_applies(args.dataset, args.data_dir, EVALUATOR_DATASETS[1:])
    device = str(resolve_device(args.device))
    out = Path(args.out)
    check_output_file(out, "--out", ".safetensors", writes="evaluator")
    # the first N + 1 images at most (not the whole split in float32): fewer than N means N is beyond the split
    limit = None if args.num_train is None else args.num_train + 1
    images, labels = reference_images(args.dataset, args.data_dir, train=True, img_size=args.img_size, limit=limit)
    if args.num_train is not None:  # more than the split holds was silently all of it
        if args.num_train > len(images):
            raise DiffkitError(f"--num-train {args.num_train} is more than the {len(images)} training images of "
                               f"{args.dataset}; allowed: 1..{len(images)}")
        images, labels = images[:args.num_train], labels[:args.num_train]
    test_images, test_labels = reference_images(args.dataset, args.data_dir, train=False, img_size=args.img_size)
    start = time.perf_counter()
    net = train_evaluator(images, labels, num_classes=10, epochs=args.epochs, batch_size=args.batch_size,
                          seed=args.seed, device=device)
    seconds = time.perf_counter() - start
    accuracy = evaluator_accuracy(net, test_images, test_labels, device=device)
    save_evaluator(net.cpu(), out, provenance={"dataset": args.dataset, "img_size": int(images.shape[-1]),
                                               "train_images": len(images), "epochs": args.epochs,
                                               "test_accuracy": round(float(accuracy), 5)})
    print(f"trained on {len(images)} {args.dataset} images ({tuple(images.shape[1:])}) for {args.epochs} "
          f"epoch(s) in {seconds:.1f} s; test accuracy {accuracy:.4f} on {len(test_images)} images; wrote {out}")
    return 0
