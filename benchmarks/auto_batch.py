"""How well ``--batch-size auto`` predicts memory (issue 8; ``diffkit.memory``).

For each network shape of ``speed_configs.py`` (random weights; the cost does not depend on them)
and precision: the batch :func:`diffkit.memory.auto_batch_size` chooses without a cap, the
per-sample and fixed cost it measured, and, for a batch of ``--check`` samples, the peak its
rule predicts against the peak measured while one ddim step actually runs: on CUDA the
allocator's ``max_memory_allocated``; on the CPU the growth of the process's resident set
(``ru_maxrss``, in a fresh worker process per row so that earlier rows do not hide it).

    python benchmarks/auto_batch.py [--device cpu|cuda] [--configs mnist,cifar10,seed] [--check 64] [--bf16]

Writes ``benchmarks/out/auto_batch_<device>.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def measure(config: str, device: str, precision: str, check: int) -> dict:
    import torch

    from diffkit import Denoiser
    from diffkit.memory import auto_batch_size, available_bytes, peak_bytes, probe_costs
    from diffkit.sampling import sample
    from diffkit.schedule import NoiseSchedule
    from speed_configs import CONFIGS, diffkit_unet

    cfg = CONFIGS[config]
    torch.manual_seed(0)
    net = diffkit_unet(cfg).to(device).eval()
    denoiser = Denoiser(net, NoiseSchedule.linear(1000), mixed_precision=precision)
    shape = (cfg["in_channels"], cfg["img_size"], cfg["img_size"])
    numel = math.prod(shape)

    def probe(n):
        return sample(denoiser, torch.randn(n, *shape, device=device), "ddim", 1, progress=False)

    probe(1)  # warm-up: lazy initialisation is not a per-sample cost
    fixed, per_sample = probe_costs(probe, device, numel)  # what auto_batch_size measures
    chosen = auto_batch_size(probe, device, limit=10**7, sample_numel=numel, cap=10**7)
    predicted = fixed + check * per_sample
    if device == "cuda":
        measured = peak_bytes(lambda: probe(check), device)
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        probe(check)
        measured = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"config": config, "device": device, "precision": precision,
            "available_MiB": available_bytes(device) / 2**20, "per_sample_MiB": per_sample / 2**20,
            "fixed_MiB": fixed / 2**20, "auto_batch_uncapped": chosen, "check_batch": check,
            "predicted_MiB": predicted / 2**20, "measured_MiB": measured / 2**20}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", default="mnist,cifar10,seed")
    parser.add_argument("--check", type=int, default=64, help="batch whose peak is predicted and measured")
    parser.add_argument("--bf16", action="store_true", help="also under bf16 autocast")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        import torch
        torch.set_num_threads(args.threads)
        config, precision = args.worker.split(":")
        print(json.dumps(measure(config, args.device, precision, args.check)))
        return 0
    rows = []
    precisions = ["no", "bf16"] if args.bf16 else ["no"]
    print("| config | precision | per sample MiB | fixed MiB | auto batch (no cap) | batch | predicted MiB | "
          "measured MiB | measured / predicted |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for config in args.configs.split(","):
        for precision in precisions:
            out = subprocess.run([sys.executable, __file__, "--worker", f"{config}:{precision}",
                                  "--device", args.device, "--check", str(args.check), "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"| {config} | {precision} | {row['per_sample_MiB']:.2f} | {row['fixed_MiB']:.1f} | "
                  f"{row['auto_batch_uncapped']} | {row['check_batch']} | {row['predicted_MiB']:.0f} | "
                  f"{row['measured_MiB']:.0f} | {row['measured_MiB'] / row['predicted_MiB']:.2f} |", flush=True)
    out_path = Path(args.out) if args.out else HERE / "out" / f"auto_batch_{args.device}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
