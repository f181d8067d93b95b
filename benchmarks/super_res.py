"""Super-resolution 14 -> 28 on MNIST: PSNR of diffusion upscales against interpolation (docs/super_resolution.md).

Not part of CI. Steps:

1. A small upscaler (``super_res_from=14``, img_size 28; v-prediction) trained ``--steps`` steps on the MNIST
   training split (read from ``--data-dir``, default ../shared/data/mnist beside the repository) with
   :class:`diffkit.training.Trainer`.
2. The first ``--num`` held-out test images, area-downsampled to 14x14 (:func:`diffkit.super_res.downsample`,
   the training condition), upscaled back to 28x28 by: nearest, bilinear and bicubic interpolation
   (``F.interpolate``, half-pixel centres, clamped to [-1, 1]) and bicubic followed by 20 iterations of
   back-projection (Irani & Peleg 1991: x <- x + bicubic(low_res - downsample(x)), which makes the
   interpolation agree with the area downsampling); one diffusion sample per image
   (:func:`diffkit.super_res.upscale`, ``--sampler`` in ``--sample-steps``); and the mean of
   ``--mean-of`` samples (an estimate of the posterior mean E[x_0 | low_res], which is what minimises
   the squared error: one sample's expected squared error is twice the posterior mean's, about 3 dB of
   PSNR, so samples are sharp but lose PSNR by design).
3. PSNR per image on the [0, 1] pixel scale, 10 log10(1 / MSE), averaged over the images; and the
   consistency PSNR of each upscale's own area-downsampling against the 14x14 input (how well the
   output agrees with what it was given; interpolation by area-downsampling back is near exact for
   nearest, not for the others).

Writes benchmarks/out/super_res.{json,png}. Example (the run in BENCHMARKS.md):
    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/super_res.py --threads 1
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from laps import Laps  # noqa: E402

from diffkit.commands.upscale import comparison_grid  # noqa: E402
from diffkit.config import TrainConfig  # noqa: E402
from diffkit.data import load_dataset  # noqa: E402
from diffkit.images import save_grid  # noqa: E402
from diffkit.loading import load_denoiser  # noqa: E402
from diffkit.super_res import downsample, upscale  # noqa: E402
from diffkit.training import Trainer  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"))
    p.add_argument("--steps", type=int, default=800, help="training steps")
    p.add_argument("--prediction-type", default="v_prediction",
                   help="what the network predicts (an eps model of this size needs far more steps: "
                        "its x_0 = (x_t - sigma eps) / alpha amplifies eps errors at high t)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--channel", type=int, default=16)
    p.add_argument("--num", type=int, default=256, help="held-out test images")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--sample-steps", type=int, default=25)
    p.add_argument("--mean-of", type=int, default=4, help="samples averaged for the posterior-mean row")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoint", help="skip training: upscale with this upscaler (e.g. a previous run's "
                   "OUT/super_res_run/latest.safetensors)")
    return p.parse_args()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of [-1, 1] images on the [0, 1] scale: 10 log10(1 / MSE)."""
    mse = ((a.double() - b.double()) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp(min=1e-10))


def back_projection(low: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """Iterative back-projection (Irani & Peleg 1991): from bicubic, x <- x + bicubic(low - D x) with D
    the area downsampling, so that D x approaches low: interpolation that knows the downsampling."""
    def up(z):
        return F.interpolate(z, size=(28, 28), mode="bicubic", align_corners=False)
    x = up(low)
    for _ in range(iterations):
        x = x + up(low - downsample(x, 14))
    return x.clamp(-1, 1)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    laps = Laps()
    cfg = TrainConfig(dataset="mnist", data_dir=args.data_dir, img_size=28, super_res_from=14, channel=args.channel,
                      channel_mult=[1, 2, 2], attn=[], num_res_blocks=1, dropout=0.0, batch_size=args.batch_size,
                      max_steps=args.steps, lr=args.lr, multiplier=1.0,
                      prediction_type=args.prediction_type, ema_decay=0.999, ema_warmup=True,
                      device="cpu", save_weight_dir=str(out / "super_res_run"), log_every=100)
    if args.checkpoint:
        checkpoint, final_loss = args.checkpoint, None
    else:
        trainer = Trainer(cfg, progress=False)
        result = trainer.run()
        checkpoint, final_loss = result.checkpoint, result.final_loss
        laps("train")
    denoiser = load_denoiser(checkpoint)
    params = sum(p.numel() for p in denoiser.model.parameters())
    test = load_dataset("mnist", args.data_dir, img_size=28, train=False)
    originals = torch.stack([test[i][0] for i in range(args.num)]).float()
    low = downsample(originals, 14)
    rows = {name: F.interpolate(low, size=(28, 28), mode=name, **({} if name == "nearest" else
                                                                  {"align_corners": False})).clamp(-1, 1)
            for name in ("nearest", "bilinear", "bicubic")}
    rows["bicubic + back-projection"] = back_projection(low)
    draws = [torch.cat([upscale(denoiser, low[s:s + 64], args.sampler, args.sample_steps, seed=k * 100_000 + s)
                        for s in range(0, args.num, 64)]).clamp(-1, 1) for k in range(args.mean_of)]
    laps("upscale")
    rows["diffusion (1 sample)"] = draws[0]
    rows[f"diffusion (mean of {args.mean_of})"] = torch.stack(draws).mean(0)
    table = {name: {"psnr_db": round(float(psnr(x, originals).mean()), 2),
                    "consistency_psnr_db": round(float(psnr(downsample(x, 14), low).mean()), 2)}
             for name, x in rows.items()}
    for name, row in table.items():
        print(f"{name:28s} PSNR {row['psnr_db']:6.2f} dB   consistency {row['consistency_psnr_db']:6.2f} dB")
    save_grid(comparison_grid([rows["bicubic"][:8], draws[0][:8], originals[:8]], 8), out / "super_res.png", nrow=8,
              scale=4)
    report = {"command": " ".join(sys.argv), "steps": args.steps, "batch_size": args.batch_size,
              "parameters": params, "final_loss": final_loss, "held_out_images": args.num,
              "sampler": args.sampler, "sample_steps": args.sample_steps, "psnr": table, "seconds": laps.timings}
    (out / "super_res.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'super_res.json'} and {out / 'super_res.png'}")


if __name__ == "__main__":
    main()
