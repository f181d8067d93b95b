"""One sampling process on all cores, or one single-thread process per core: which makes more samples?

For long tables (the S = 1000 column of the DDIM table) several cells can run at once, each in its
own process, and share one score ledger. This measures, for one checkpoint, the milliseconds per
sample and network call of DDIM under ``--mixed-precision``: one process with ``--cores`` threads,
then ``--cores`` single-thread processes at the same time (their combined rate), alternating
``--rounds`` times; prints the medians and their ratio and writes them, with every round, to
``benchmarks/out/sampling_threads.json`` (or ``--out``).

    python benchmarks/sampling_threads.py --checkpoint benchmarks/out/reference/mnist_simple.safetensors
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from diffkit.evaluation import generate_samples
    from diffkit.loading import load_denoiser
    denoiser = load_denoiser(args.checkpoint, device="cpu", mixed_precision=args.mixed_precision)
    generate_samples(denoiser, args.batch, sampler="ddim", steps=2, seed=0, batch_size=args.batch, device="cpu")
    start = time.perf_counter()
    generate_samples(denoiser, args.batch, sampler="ddim", steps=args.steps, seed=0, batch_size=args.batch,
                     device="cpu")
    print((time.perf_counter() - start) / (args.batch * args.steps) * 1e3)


def run(args, threads: int, processes: int) -> float:
    """Milliseconds per sample and call of all ``processes`` together."""
    command = [sys.executable, __file__, "--worker", "--threads", str(threads), "--checkpoint", args.checkpoint,
               "--batch", str(args.batch), "--steps", str(args.steps), "--mixed-precision", args.mixed_precision]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) for _ in range(processes)]
    rates = [1.0 / float(p.communicate()[0].split()[-1]) for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit("a worker failed")
    return 1.0 / sum(rates)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--mixed-precision", default="bf16")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON file (default benchmarks/out/sampling_threads.json)")
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    one, many = [], []
    for _ in range(args.rounds):
        one.append(run(args, args.cores, 1))
        many.append(run(args, 1, args.cores))
    a, b = statistics.median(one), statistics.median(many)
    print(f"1 process x {args.cores} threads: {a:.3f} ms per sample and call (median of {args.rounds})")
    print(f"{args.cores} processes x 1 thread: {b:.3f} ms per sample and call, together")
    print(f"throughput ratio (processes / threads): {a / b:.2f}x")
    out = Path(args.out or ROOT / "benchmarks" / "out" / "sampling_threads.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "checkpoint": args.checkpoint,
        "cores": args.cores, "batch": args.batch, "steps": args.steps, "mixed_precision": args.mixed_precision,
        "rounds": args.rounds, "machine": platform.processor() or platform.machine(),
        "loadavg_at_end": os.getloadavg(), "ms_per_sample_call_one_process": one,
        "ms_per_sample_call_processes": many, "median_one_process": a, "median_processes": b,
        "throughput_ratio": a / b}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
