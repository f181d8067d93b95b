"""A diffkit training step against diffusers' of the same shape, operator by operator (issue 8).

Builds both steps as ``benchmarks/train_throughput.py`` times them (diffkit's ``Trainer.train_step``;
diffusers' example loop, ``--diffusers-variant cl``: channels_last with fused AdamW and the foreach
EMA, or ``plain``: the example as it ships) in one process and reports, per step:

* the ATen operators each library dispatches (a ``TorchDispatchMode`` counter: forward, backward,
  clipping, optimiser, EMA; diffkit's C++ kernels are called directly and do not appear) and the
  bytes written by the copy-like ones (``copy_``, ``clone``, ``cat``, ``_to_copy``, ``add``);
* ``torch.profiler`` self time per operator and input shapes, the two libraries profiled
  alternately for ``--rounds`` rounds (the median per operator over the rounds), largest first.

``--batches 1,4,16`` instead times whole steps at those batch sizes (process CPU time, the minimum
of ``--rounds`` rounds of two steps, the libraries alternating) and extrapolates each library's
batch-independent cost per step from the two largest batches: the Python, dispatch, optimiser,
clipping and EMA work that a step pays however small its batch.

On a machine shared with other jobs, ``--threads 1`` keeps the numbers steadier (no thread waiting
on a descheduled partner at every parallel region). Writes ``benchmarks/out/step_compare_<config>.json``.

    PYTHONPATH=. python benchmarks/step_compare.py --config mnist [--threads 1] [--rounds 6] [--rows 40] [--warmup 3]
    PYTHONPATH=. python benchmarks/step_compare.py --config mnist --threads 1 --batches 1,4,16 --rounds 10
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import train_throughput  # noqa: E402
from speed_configs import CONFIGS  # noqa: E402

COPY_LIKE = ("copy_", "clone", "cat", "_to_copy", "add")


class _Counter(TorchDispatchMode):
    """ATen calls by operator name, and the bytes of the results of the copy-like ones."""

    def __init__(self):
        super().__init__()
        self.calls, self.bytes = collections.Counter(), collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        self.calls[name] += 1
        if name in COPY_LIKE and isinstance(out, torch.Tensor):
            self.bytes[name] += out.numel() * out.element_size()
        return out


def _self_times(step) -> dict[str, float]:
    """Self CPU ms per (operator, input shapes) of one profiled step."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    out = collections.Counter()
    for event in prof.key_averages(group_by_input_shape=True):
        shapes = [s for s in event.input_shapes if s] if event.input_shapes else []
        out[f"{event.key} {shapes}" if shapes else event.key] += event.self_cpu_time_total / 1e3
    return dict(out)


def _steps(cfg: dict, batch: int, tuned: bool) -> dict:
    return {"diffkit": train_throughput._diffkit_step_fn(cfg, {}, batch, "cpu", tempfile.mkdtemp())[0],
            "diffusers": train_throughput._diffusers_step_fn(cfg, {"channels_last": tuned, "tuned": tuned}, batch,
                                                             "cpu")[0]}


def batch_scaling(cfg: dict, batches: list[int], tuned: bool, rounds: int, warmup: int) -> dict:
    """Minimum CPU seconds per step at each batch size, per library, and the batch-independent part
    extrapolated from the two largest batches (a straight line through them)."""
    import time
    out = {"seconds": {"diffkit": {}, "diffusers": {}}, "fixed_s": {}}
    for batch in batches:
        steps = _steps(cfg, batch, tuned)
        for step in steps.values():
            for _ in range(warmup):
                step()
        best = dict.fromkeys(steps, float("inf"))
        for _ in range(rounds):
            for name, step in steps.items():
                start = time.process_time()
                step(), step()
                best[name] = min(best[name], (time.process_time() - start) / 2)
        for name, seconds in best.items():
            out["seconds"][name][batch] = seconds
        print(f"batch {batch}: " + ", ".join(f"{name} {1e3 * s:.1f} ms" for name, s in best.items()), flush=True)
    small, large = sorted(batches)[-2:]
    for name, seconds in out["seconds"].items():
        per_image = (seconds[large] - seconds[small]) / (large - small)
        out["fixed_s"][name] = seconds[small] - small * per_image
        print(f"{name}: {1e3 * per_image:.2f} ms per image, {1e3 * out['fixed_s'][name]:.1f} ms per step "
              f"independent of the batch (from batches {small} and {large})")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="mnist")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=3, help="steps of each library before anything is measured")
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--diffusers-variant", choices=("cl", "plain"), default="cl")
    parser.add_argument("--batches", default=None, help="comma list: time whole steps at these batch sizes instead")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = CONFIGS[args.config]
    tuned = args.diffusers_variant == "cl"
    out = Path(args.out or HERE / "out" / f"step_compare_{args.config}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.batches:
        batches = sorted({int(b) for b in args.batches.split(",")})
        if len(batches) < 2 or batches[0] < 1:
            raise SystemExit(f"--batches {args.batches}: give at least two positive batch sizes")
        out.write_text(json.dumps({"args": vars(args), **batch_scaling(cfg, batches, tuned, args.rounds,
                                                                        args.warmup)}, indent=1))
        print(f"wrote {out}")
        return
    steps = _steps(cfg, args.batch, tuned)
    result = {"args": vars(args), "calls": {}, "bytes": {}, "self_ms": {}}
    for name, step in steps.items():
        for _ in range(args.warmup):
            step()
        counter = _Counter()
        with counter:
            step()
        result["calls"][name], result["bytes"][name] = dict(counter.calls), dict(counter.bytes)
        print(f"{name}: {sum(counter.calls.values())} ATen calls per step; copy-like MiB written: "
              + ", ".join(f"{op} {counter.bytes[op] / 2**20:.1f} ({counter.calls[op]} calls)" for op in COPY_LIKE))
    rounds = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            rounds[name].append(_self_times(step))
    keys = set().union(*(times for runs in rounds.values() for times in runs))
    median = {name: {k: statistics.median(t.get(k, 0.0) for t in runs) for k in keys} for name, runs in rounds.items()}
    result["self_ms"] = median
    for name in steps:
        print(f"{name}: profiled self time per step {sum(median[name].values()):.1f} ms "
              f"(medians of {args.rounds} rounds, {args.threads} threads)")
    print(f"{'operator [input shapes]':100s} {'diffkit':>8s} {'diffusers':>9s}")
    for key in sorted(keys, key=lambda k: -max(median['diffkit'][k], median['diffusers'][k]))[:args.rows]:
        print(f"{key[:100]:100s} {median['diffkit'][key]:8.2f} {median['diffusers'][key]:9.2f}")
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
