"""Where a diffkit training step's time goes, by kind of work (issue 8; docs/performance.md).

``torch.profiler`` of ``Trainer.train_step`` for a ``benchmarks/speed_configs.py`` network (batch
16, as ``benchmarks/train_throughput.py`` times it): self time per step of the convolutions
(oneDNN and Winograd), attention, the matrix products of the linear layers, GroupNorm [+ SiLU],
dropout, and the rest (its largest operators listed), with the step's median wall time measured
without the profiler. Profiling adds a few percent.

    PYTHONPATH=. python benchmarks/step_profile.py --config mnist [--bf16] [--steps 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from cpu_kernel_ab import training_step  # noqa: E402

KINDS = {  # operator names (as the profiler reports them) by kind of work
    "convolutions": ("aten::convolution_backward", "aten::mkldnn_convolution", "_WinogradConv3x3",
                     "_WinogradConv3x3Backward"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                  "aten::_scaled_dot_product_flash_attention_for_cpu_backward", "aten::_softmax",
                  "aten::_softmax_backward_data"),
    "linear layers": ("aten::mm", "aten::addmm"),
    "GroupNorm [+ SiLU]": ("_FusedGroupNorm", "_FusedGroupNormBackward", "aten::native_group_norm",
                           "aten::native_group_norm_backward", "aten::silu", "aten::silu_backward"),
    "dropout": ("_RecomputedMaskDropout", "_RecomputedMaskDropoutBackward", "aten::random_", "aten::ge"),
}
# autograd functions whose operators (Winograd's and attention's batched products) count as their kind
SCOPES = {"_WinogradConv3x3": "convolutions", "_WinogradConv3x3Backward": "convolutions",
          "_KeptProbabilitiesAttention": "attention", "_KeptProbabilitiesAttentionBackward": "attention"}


def _kind(event, kind_of_name: dict) -> str | None:
    """The kind of a profiler event: its own name's, or that of the autograd function it runs in."""
    parent = event
    while parent is not None:
        if parent.name in SCOPES:
            return SCOPES[parent.name]
        parent = parent.cpu_parent
    return kind_of_name.get(event.name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("seed", "cifar10", "mnist"), default="mnist")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    step = training_step(args.config, args.bf16)
    for _ in range(3):
        step()
    walls = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        walls.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages()
    kind_of_name = {name: kind for kind, names in KINDS.items() for name in names}
    per_kind = dict.fromkeys(KINDS, 0.0)
    rest: dict[str, float] = {}
    for event in prof.events():
        ms = event.self_cpu_time_total / 1e3 / args.steps
        kind = _kind(event, kind_of_name)
        if kind is None:
            rest[event.name] = rest.get(event.name, 0.0) + ms
        else:
            per_kind[kind] += ms
    print(f"{args.config} {'bf16' if args.bf16 else 'fp32'}, {args.threads} threads: "
          f"step {1e3 * statistics.median(walls):.1f} ms (median of {args.steps}, unprofiled); "
          f"profiled self time per step {sum(per_kind.values()) + sum(rest.values()):.1f} ms, "
          f"{sum(e.count for e in events) / args.steps:.0f} operator calls")
    for kind, ms in per_kind.items():
        print(f"  {kind:20s} {ms:8.1f} ms")
    rest = sorted(((ms, name) for name, ms in rest.items()), reverse=True)
    print(f"  {'rest':20s} {sum(ms for ms, _ in rest):8.1f} ms, largest: "
          + ", ".join(f"{name} {ms:.1f}" for ms, name in rest[:6]))


if __name__ == "__main__":
    main()
