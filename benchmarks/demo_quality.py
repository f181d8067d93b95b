"""Issue 3 acceptance: how good are the demo model's digits, measured by a digit classifier?

Trains the demo model (``diffkit demo``'s DEMO_CONFIG; or loads ``--checkpoint``), trains a
small classifier (:class:`diffkit.metrics.EvaluatorNet`) on the first 1200 embedded digits in
seconds, and reports against the 597 held-out digits (held out from the classifier; the demo
model itself trains on all 1797):

(a) the Frechet distance in the classifier's 128-d feature space (FD-classifier) of ``--num``
    samples, next to the same distance for real training digits (the floor) and for Gaussian
    noise clipped to [-1, 1] (the ceiling);
(b) the mean max-softmax confidence of the classifier on each set;
(c) the test-set NLL in bits/dim: the full variational bound and strided estimates, with the
    error of each estimate against the full bound on the same images.

Prints a table and writes benchmarks/out/demo_quality.json (``--out``); the demo run it trains
goes to ``demo_run/`` beside that file (an earlier one there is replaced). A benchmark, not a CI
test:

    python benchmarks/demo_quality.py                    # full demo training (1500 steps)
    python benchmarks/demo_quality.py --steps 300        # quick check
    python benchmarks/demo_quality.py --checkpoint runs/demo/checkpoints/latest.safetensors
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffkit.commands.demo import DEMO_CONFIG, demo_config, replace_earlier_demo_run  # noqa: E402
from diffkit.config import resolve_device  # noqa: E402
from diffkit.evaluation import (SampleScorer, generate_samples, nll_bits_per_dim, reference_images,  # noqa: E402
                                strided_timesteps, write_json)
from diffkit.loading import load_denoiser  # noqa: E402
from diffkit.metrics import evaluator_accuracy, train_evaluator  # noqa: E402
from diffkit.training import Trainer  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def quality_rows(denoiser, scorer, real, num, *, sampler, steps, seed, batch_size, device,
                 thresholding=None) -> dict:
    """FD-classifier and confidence of samples, real training images and clipped noise."""
    start = time.perf_counter()
    samples = generate_samples(denoiser, num, sampler=sampler, steps=steps, seed=seed, batch_size=batch_size,
                               device=device, thresholding=thresholding)
    sampling_seconds = time.perf_counter() - start
    noise = torch.randn(samples.shape, generator=torch.Generator().manual_seed(seed + 1)).clamp(-1, 1)
    rows = {}
    for name, images in (("samples", samples), ("real (train part)", real[:num]), ("noise", noise)):
        scores = scorer.score(images)
        rows[name] = {"fd_classifier": scores["fd-classifier"]["value"],
                      "confidence": scores["confidence"]["value"], "num_images": int(images.shape[0])}
    rows["samples"]["sampling_seconds"] = sampling_seconds
    return rows


def nll_rows(denoiser, images, strides, *, dense_below=20, seed=0, batch_size=250) -> dict:
    """Full VLB and strided estimates (all t < dense_below, then every k-th) on the same images."""
    T = denoiser.schedule.num_timesteps
    full = nll_bits_per_dim(denoiser, images, seed=seed, batch_size=batch_size)
    rows = {"full": full}
    for stride in strides:
        est = nll_bits_per_dim(denoiser, images, timesteps=strided_timesteps(T, dense_below, stride), seed=seed,
                               batch_size=batch_size)
        est["minus_full"] = est["bpd"] - full["bpd"]
        rows[f"dense<{dense_below}, every {stride}"] = est
    return rows


def print_tables(quality: dict, nll: dict, num_reference: int) -> None:
    print(f"\nFD in the classifier's feature space vs {num_reference} held-out digits "
          "(lower is better); mean max-softmax confidence")
    print(f"{'set':<20} {'n':>5} {'FD-classifier':>14} {'confidence':>11}")
    for name, row in quality.items():
        print(f"{name:<20} {row['num_images']:>5} {row['fd_classifier']:>14.3f} {row['confidence']:>11.3f}")
    if nll:
        print(f"\nNLL on {nll['full']['num_images']} held-out digits, bits/dim")
        print(f"{'bound':<24} {'t evaluated':>11} {'bits/dim':>9} {'+-sem':>7} {'minus full':>11} {'seconds':>8}")
        for name, row in nll.items():
            diff = f"{row['minus_full']:+.4f}" if "minus_full" in row else ""
            print(f"{name:<24} {row['timesteps_evaluated']:>11} {row['bpd']:>9.4f} {row['sem']:>7.4f} "
                  f"{diff:>11} {row['seconds']:>8.1f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="evaluate this checkpoint instead of training the demo model")
    p.add_argument("--steps", type=int, help=f"demo training steps (default {DEMO_CONFIG['max_steps']})")
    p.add_argument("--num", type=int, default=1000, help="samples (default 1000)")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--thresholding", choices=("clip", "dynamic"), help="clip the predicted x0 while sampling")
    p.add_argument("--classifier-epochs", type=int, default=10)
    p.add_argument("--nll-num", type=int, default=64, help="held-out images for the NLL (0 = skip)")
    p.add_argument("--nll-strides", default="5,10,20,50", help="strides of the estimates")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default=str(OUT / "demo_quality.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    report: dict = {"benchmark": "demo_quality", "device": str(device), "torch_threads": torch.get_num_threads()}
    checkpoint = args.checkpoint
    if checkpoint is None:
        cfg = demo_config(str(Path(args.out).parent / "demo_run"), args.steps, args.device)
        replace_earlier_demo_run(cfg.save_weight_dir)
        result = Trainer(cfg, progress=False).run()
        checkpoint = result.checkpoint
        report["training"] = {"steps": result.steps, "seconds": result.seconds, "final_loss": result.final_loss,
                              "config": "DEMO_CONFIG" + (f" with max_steps={args.steps}" if args.steps else "")}
        print(f"trained the demo model for {result.steps} steps in {result.seconds:.0f} s "
              f"(final loss {result.final_loss:.4f})")
    denoiser = load_denoiser(checkpoint, device=device)
    unet = denoiser.meta["unet"]
    size, channels = unet["img_size"], unet["in_channels"]
    train_images, train_labels = reference_images("digits", train=True, img_size=size, channels=channels)
    held_out, held_labels = reference_images("digits", train=False, img_size=size, channels=channels)
    start = time.perf_counter()
    net = train_evaluator(train_images, train_labels, 10, epochs=args.classifier_epochs, seed=0)
    report["classifier"] = {"train_images": len(train_images), "epochs": args.classifier_epochs,
                            "seconds": time.perf_counter() - start,
                            "held_out_accuracy": evaluator_accuracy(net, held_out, held_labels)}
    print(f"classifier: {report['classifier']['held_out_accuracy']:.3f} accuracy on {len(held_out)} held-out "
          f"digits after {report['classifier']['seconds']:.1f} s")
    scorer = SampleScorer(["fd-classifier", "confidence"], held_out, evaluator=net, device=device)
    report["checkpoint"] = str(checkpoint)
    report["sampling"] = {"sampler": args.sampler, "steps": args.sample_steps, "num": args.num,
                          "thresholding": args.thresholding}
    report["quality"] = quality_rows(denoiser, scorer, train_images, args.num, sampler=args.sampler,
                                     steps=args.sample_steps, seed=0, batch_size=250, device=device,
                                     thresholding=args.thresholding)
    report["nll"] = {}
    if args.nll_num > 0:
        strides = [int(s) for s in args.nll_strides.split(",") if s.strip()]
        report["nll"] = nll_rows(denoiser, held_out[:args.nll_num].to(device), strides)
    print_tables(report["quality"], report["nll"], len(held_out))
    path = write_json(report, args.out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
