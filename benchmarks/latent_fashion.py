"""Latent text-to-image on Fashion-MNIST (issue 9): a small Stable Diffusion on the CPU.

Not part of CI. Steps (each timed; budgets are flags):

1. Fashion-MNIST (``--data-dir``, default ../shared/data/fashion-mnist beside the repository),
   28x28 zero-padded to 32x32.
2. A KL autoencoder, f = 4 (channel_mult [1, 2, 2]: 32x32x1 -> 8x8x4), ``--ae-steps`` steps
   (:func:`diffkit.autoencoder_training.train_autoencoder`); reconstruction PSNR on test images.
3. The latent text-to-image model: a U-Net with cross-attention on the 8x8x4 latents and a small
   transformer text encoder trained jointly on captions made from the labels ("a photo of a
   sneaker", "an ankle boot, black and white", ...; the empty prompt with p_uncond = 0.1), for
   ``--minutes`` of training (the step count is set from a timed probe of the same trainer).
   The training images are encoded once (:func:`diffkit.latent.encode_dataset`).
4. An independent classifier trained on real Fashion-MNIST images
   (:func:`diffkit.metrics.evaluator.train_evaluator`), then for each class prompt "a photo of a
   <class>" ``--per-class`` samples at each guidance scale ``--scales`` (seed convention
   eps-bar = (1 + w) eps(z, c) - w eps(z, ""), PNDM by default); the fraction the classifier
   assigns to the prompted class, per class and overall.
5. benchmarks/out/latent_fashion.json, latent_fashion_grid.png (prompt x sample at the chosen
   scale: the scale whose worst class is best) and the checkpoints under out/latent_fashion/.

Examples:
    PYTHONPATH=. python benchmarks/latent_fashion.py --quick          # end to end in a few minutes
    PYTHONPATH=. python benchmarks/latent_fashion.py --threads 2      # the real run (defaults)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from laps import Laps  # noqa: E402

from diffkit.autoencoder_training import AutoencoderTrainConfig, train_autoencoder  # noqa: E402
from diffkit.config import TrainConfig  # noqa: E402
from diffkit.data import InMemoryImageDataset, load_dataset  # noqa: E402
from diffkit.guidance import ClassifierFreeGuidance  # noqa: E402
from diffkit.images import save_grid  # noqa: E402
from diffkit.latent import FrozenAutoencoder, encode_dataset  # noqa: E402
from diffkit.loading import load_denoiser  # noqa: E402
from diffkit.metrics.evaluator import evaluator_accuracy, train_evaluator  # noqa: E402
from diffkit.sampling import sample  # noqa: E402
from diffkit.training import Trainer  # noqa: E402

QUICK = {"ae_steps": 40, "minutes": 0.5, "train_images": 2000, "evaluator_images": 3000, "evaluator_epochs": 1,
         "per_class": 4, "scales": "0,3", "sample_steps": 10, "test_images": 500}


def endless_batches(trainer):
    """The trainer's batches, epoch after epoch (a small --train-images has fewer than the probe's 6
    batches in one epoch)."""
    epoch = 0
    while True:
        yield from trainer._epoch_batches(epoch)
        epoch += 1


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"))
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"))
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks the pipeline end to end, not quality")
    p.add_argument("--ae-steps", type=int, default=2000, help="autoencoder training steps (batch 32)")
    p.add_argument("--minutes", type=float, default=60.0, help="CPU budget of the latent text-to-image training")
    p.add_argument("--train-images", type=int, default=60000, help="training images used (first N)")
    p.add_argument("--evaluator-images", type=int, default=60000)
    p.add_argument("--evaluator-epochs", type=int, default=2)
    p.add_argument("--test-images", type=int, default=2000, help="test images for the PSNR and the evaluator")
    p.add_argument("--per-class", type=int, default=50, help="samples per class prompt and scale")
    p.add_argument("--scales", default="0,1,3,5", help="guidance scales w (seed convention)")
    p.add_argument("--sampler", default="pndm")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.quick:  # the quick settings, except where a flag was given explicitly
        given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in sys.argv[1:] if a.startswith("--")}
        for key, value in QUICK.items():
            if key not in given:
                setattr(args, key, value)
    return args


def subset(dataset, n):
    n = min(n, len(dataset))
    return InMemoryImageDataset(dataset.images[:n].clone(), dataset.labels[:n].clone(), dataset.num_classes,
                                dataset.class_names)


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = out / "latent_fashion"
    work.mkdir(parents=True, exist_ok=True)
    lap = Laps()

    # -- 1. data: 28x28 padded to 32x32 (resize 'auto' pads IDX digits-like sets)
    train = subset(load_dataset("fashion-mnist", args.data_dir, img_size=32, train=True), args.train_images)
    test = load_dataset("fashion-mnist", args.data_dir, img_size=32, train=False)
    test_images = test.images[:args.test_images].float() / 127.5 - 1
    test_labels = test.labels[:args.test_images]
    lap("data")

    # -- 2. autoencoder, f = 4
    ae_cfg = AutoencoderTrainConfig(dataset="fashion-mnist", data_dir=args.data_dir, img_size=32, batch_size=32,
                                    steps=args.ae_steps, lr=1e-3, channel=32, channel_mult=[1, 2, 2],
                                    num_res_blocks=1, latent_channels=4, regularizer="kl", kl_weight=1e-6,
                                    seed=args.seed, device="cpu", eval_images=0, scale_images=2000,
                                    out=str(work / "autoencoder.safetensors"), log_every=max(1, args.ae_steps // 10))
    ae_result = train_autoencoder(ae_cfg, dataset=train, progress=False)
    from diffkit.autoencoder_training import reconstruction_psnr
    psnr = reconstruction_psnr(ae_result.model, test_images)
    print(f"autoencoder: {ae_result.steps} steps, test PSNR {psnr:.2f} dB on {len(test_images)} images, "
          f"scale factor {ae_result.scale_factor:.4f}")
    lap("autoencoder")

    # -- 3. latent text-to-image model, trained for a time budget
    frozen = FrozenAutoencoder.from_file(work / "autoencoder.safetensors")
    latents = encode_dataset(frozen, train)  # once; both trainers below reuse it
    lap("encode")
    base = {"dataset": "fashion-mnist", "data_dir": args.data_dir, "img_size": 32,
            "autoencoder": str(work / "autoencoder.safetensors"), "text_conditioning": True, "context_dim": 64,
            "text_width": 64, "text_layers": 2, "text_heads": 2, "max_prompt_tokens": 16, "p_uncond": 0.1,
            "channel": 48, "channel_mult": [1, 2], "attn": [0, 1], "num_res_blocks": 1, "num_heads": 2,
            "dropout": 0.0, "batch_size": 64, "lr": 5e-4, "multiplier": 2.0, "warmup_fraction": 0.05,
            "grad_clip": 1.0, "ema_decay": 0.999, "ema_warmup": True, "scale_shift_norm": True,
            "save_every_epochs": 1000, "log_every": 50, "seed": args.seed, "device": "cpu", "keep_last": 1}
    probe = Trainer(TrainConfig.from_dict({**base, "max_steps": 10_000, "save_weight_dir": str(work / "probe")}),
                    dataset=latents, progress=False)
    batches = endless_batches(probe)
    probe.train_step(next(batches))  # warm-up (allocations)
    start = time.perf_counter()
    for _ in range(5):
        probe.train_step(next(batches))
    per_step = (time.perf_counter() - start) / 5
    steps = max(10, int(args.minutes * 60 / per_step))
    del probe
    print(f"probe: {per_step:.3f} s/step -> {steps} steps in {args.minutes} min", flush=True)
    cfg = TrainConfig.from_dict({**base, "max_steps": steps, "save_weight_dir": str(work / "ldm")})
    trainer = Trainer(cfg, dataset=latents, progress=False)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    result = trainer.run()
    print(f"latent model: {n_params / 1e6:.2f}M parameters (U-Net + text encoder), {result.steps} steps in "
          f"{result.seconds:.0f} s, final loss {result.final_loss:.4f}", flush=True)
    lap("latent_diffusion")

    # -- 4. independent classifier on real images, then prompted samples
    n_eval = min(args.evaluator_images, len(train) if args.quick else 60000)
    eval_train = train if n_eval <= len(train) else load_dataset("fashion-mnist", args.data_dir, img_size=32)
    evaluator = train_evaluator(eval_train.images[:n_eval].float() / 127.5 - 1, eval_train.labels[:n_eval], 10,
                                epochs=args.evaluator_epochs, batch_size=64, seed=args.seed + 7)
    evaluator.eval()
    with torch.no_grad():
        real_pred = torch.cat([evaluator(part).argmax(1) for part in test_images.split(500)])
    real_acc = evaluator_accuracy(evaluator, test_images, test_labels)
    real_per_class = {test.class_names[k]: round(float((real_pred[test_labels == k] == k).float().mean()), 4)
                      for k in range(10)}
    print(f"evaluator: test accuracy on real images {real_acc:.4f}; per class {real_per_class}")
    lap("evaluator")

    denoiser = load_denoiser(work / "ldm" / "latest.safetensors")  # from the checkpoint alone (EMA weights)
    captions = denoiser.model.captions
    prompts = [captions.prompt(k) for k in range(10)]
    labels = torch.arange(10).repeat_interleave(args.per_class)
    context = denoiser.prompt_encoder(prompts)[labels]
    null = denoiser.prompt_encoder([""])
    unet = denoiser.meta["unet"]
    shape = (len(labels), unet["in_channels"], unet["img_size"], unet["img_size"])  # latents, 4x8x8
    rows, images_by_scale = [], {}
    for w in [float(v) for v in args.scales.split(",")]:
        guided = ClassifierFreeGuidance(denoiser, w, null_context=null)
        guided.reset_nfe()
        t0 = time.perf_counter()
        z = sample(guided, shape, args.sampler, args.sample_steps, seed=args.seed, cond={"context": context},
                   progress=False)
        images = torch.cat([denoiser.decoder(part).clamp(-1, 1) for part in z.split(256)])
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            pred = torch.cat([evaluator(part).argmax(1) for part in images.split(500)])
        per_class = {prompts[k]: round(float((pred[labels == k] == k).float().mean()), 4) for k in range(10)}
        row = {"scale": w, "rate": round(float((pred == labels).float().mean()), 4),
               "worst_class_rate": min(per_class.values()), "per_class": per_class, "nfe": guided.nfe,
               "seconds": round(seconds, 1)}
        rows.append(row)
        images_by_scale[w] = images
        print(json.dumps(row), flush=True)
    lap("sampling")

    best = max(rows, key=lambda r: (r["worst_class_rate"], r["rate"]))
    pick = torch.cat([torch.nonzero(labels == k)[:8, 0] for k in range(10)])
    grid = save_grid(images_by_scale[best["scale"]][pick], out / "latent_fashion_grid.png", nrow=min(8, args.per_class),
                     scale=2)
    report = {
        "quick": args.quick, "args": vars(args), "timings_s": lap.timings,
        "autoencoder": {"steps": ae_result.steps, "test_psnr_db": round(psnr, 2), "test_images": len(test_images),
                        "scale_factor": ae_result.scale_factor, "latent_shape": list(shape[1:]),
                        "downsampling_factor": 4},
        "latent_model": {"parameters": n_params, "steps": result.steps, "seconds": round(result.seconds, 1),
                         "final_loss": round(result.final_loss, 4), "budget_minutes": args.minutes,
                         "train_images": len(train), "checkpoint": str(work / "ldm" / "latest.safetensors")},
        "evaluator": {"images": n_eval, "epochs": args.evaluator_epochs, "real_test_accuracy": round(real_acc, 4),
                      "real_per_class": real_per_class},
        "sampler": args.sampler, "sample_steps": args.sample_steps, "per_class": args.per_class,
        "results": rows, "chosen_scale": best["scale"], "chosen_worst_class_rate": best["worst_class_rate"],
        "target_met": best["worst_class_rate"] >= 0.9, "grid": str(grid), "prompts": prompts,
    }
    (out / "latent_fashion.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"chosen scale w={best['scale']}: overall {best['rate']:.3f}, worst class {best['worst_class_rate']:.3f} "
          f"(target >= 0.9: {'met' if report['target_met'] else 'NOT met'}); wrote {out / 'latent_fashion.json'} "
          f"and {grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
