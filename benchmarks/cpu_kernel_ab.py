"""One of diffkit's CPU kernels on against off, in one process, interleaved (issue 8).

``--kernel dropout``: the recomputed-mask dropout (``diffkit.models.dropout``) against the
``random_``-word path it replaces when the kernels are missing; ``--kernel bf16-group-norm``: the
contiguous GroupNorm + SiLU kernel (``diffkit.models.group_norm``) against PyTorch's bf16 GroupNorm
then SiLU; ``--kernel bf16-winograd``: the opt-in bf16 Winograd F(2x2, 3x3) convolutions
(``diffkit.models.winograd``) against oneDNN's bf16 convolutions; ``--kernel attention``: attention
as matrix products with the probabilities kept (``diffkit.models.attention``) against PyTorch's
fused CPU kernel; ``--kernel adamw-layout``: ``diffkit.optim.FusedAdamW`` handing channels_last
weights to PyTorch's fused AdamW kernel as contiguous permutations against PyTorch's own call, which
copies each such gradient first (not a kernel of diffkit's extension; the step only);
``--kernel attention-fp32``: the same matrix-product attention let through in fp32 too (its rule,
``attention.uses_matmuls``, keeps fp32 on the fused kernel) against the fused kernel. Two measurements:

* ``--layer``: forward + backward of the layer alone on a batch-16 map (dropout p = 0.1,
  channels_last as diffkit's fp32 networks; the GroupNorm kernel on contiguous bf16 maps;
  attention over 14x14 tokens of 64 channels, one head, as the MNIST network's, fp32 or ``--bf16``);
* otherwise: a full ``Trainer.train_step`` of a ``benchmarks/speed_configs.py`` network (as
  ``benchmarks/train_throughput.py`` times it; laid out contiguous for ``bf16-group-norm``), the
  kernel switched per step, alternating.

Medians of ``--rounds``; ``--clock cpu`` times process CPU time instead of wall time (with
``--threads 1`` the steadier figure on a machine shared with other jobs). Writes ``benchmarks/out/cpu_kernel_ab.json``.

    PYTHONPATH=. python benchmarks/cpu_kernel_ab.py
        --kernel dropout|bf16-group-norm|bf16-winograd|attention|attention-fp32|adamw-layout --config mnist
        [--bf16] [--rounds 15]
    PYTHONPATH=. python benchmarks/cpu_kernel_ab.py --kernel dropout|attention|attention-fp32 --layer [--bf16]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import diffkit.models.attention as attention_module  # noqa: E402
import diffkit.models.dropout as dropout_module  # noqa: E402
import diffkit.models.group_norm as group_norm_module  # noqa: E402
import diffkit.models.winograd as winograd_module  # noqa: E402
import diffkit.optim as optim_module  # noqa: E402
from diffkit.models.cpu_kernels import cpu_kernels  # noqa: E402


@contextmanager
def kernel_off(kernel: str):
    """The kernel switched off: dropout without the extension, attention always through the fused
    kernel, AdamW's channels_last gradients copied as PyTorch does, or no contiguous GroupNorm map
    large enough for the kernel."""
    if kernel == "adamw-layout":
        saved = optim_module.pass_channels_last_as_contiguous
        optim_module.pass_channels_last_as_contiguous = lambda lists: None
        try:
            yield
        finally:
            optim_module.pass_channels_last_as_contiguous = saved
    elif kernel in ("attention", "attention-fp32"):
        saved = attention_module.uses_matmuls
        attention_module.uses_matmuls = lambda *args: False
        try:
            yield
        finally:
            attention_module.uses_matmuls = saved
    elif kernel == "dropout":
        saved, dropout_module.cpu_kernels = dropout_module.cpu_kernels, lambda: None
        try:
            yield
        finally:
            dropout_module.cpu_kernels = saved
    elif kernel == "bf16-winograd":
        winograd_module.set_bf16_winograd_enabled(False)
        try:
            yield
        finally:
            winograd_module.set_bf16_winograd_enabled(True)
    else:
        saved, group_norm_module._NCHW_MIN_PIXELS = group_norm_module._NCHW_MIN_PIXELS, 1 << 62
        try:
            yield
        finally:
            group_norm_module._NCHW_MIN_PIXELS = saved


def _matmuls_in_fp32_too(q, k, v) -> bool:
    """``attention.uses_matmuls`` with fp32 CPU tensors let through as well (``--kernel attention-fp32``)."""
    return (q.device.type == "cpu" and q.dtype == k.dtype == v.dtype and q.dtype in (torch.float32, torch.bfloat16)
            and q.shape[1] * k.shape[1] <= attention_module.CPU_MATMUL_ATTENTION_MAX)


def layer_step(kernel: str, bf16: bool = False):
    """Forward + backward of the layer alone on its largest benchmark shape."""
    if kernel in ("attention", "attention-fp32"):
        qkv = torch.randn(16, 196, 3 * 64, dtype=torch.bfloat16 if bf16 else torch.float32, requires_grad=True)
        upstream = torch.randn(16, 196, 64, dtype=qkv.dtype)
        return lambda: attention_module.attention(*qkv.chunk(3, dim=-1), 1).backward(upstream)
    if kernel == "dropout":
        x = torch.randn(16, 128, 32, 32).contiguous(memory_format=torch.channels_last).requires_grad_()
        upstream = torch.randn_like(x)
        return lambda: dropout_module.dropout(x, 0.1).backward(upstream)
    norm = group_norm_module.GroupNorm(32, 128)
    x = torch.randn(16, 128, 32, 32).bfloat16().requires_grad_()
    upstream = torch.randn_like(x)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = norm.forward_silu(x)
        y.backward(upstream)
    return step


def training_step(config: str, bf16: bool, memory_format: str = "auto"):
    import train_throughput
    from speed_configs import CONFIGS
    step, _ = train_throughput._diffkit_step_fn(CONFIGS[config], {"bf16": bf16, "memory_format": memory_format}, 16,
                                                "cpu", tempfile.mkdtemp())
    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", choices=("dropout", "bf16-group-norm", "bf16-winograd", "attention",
                                             "attention-fp32", "adamw-layout"), required=True)
    parser.add_argument("--layer", action="store_true", help="the layer alone instead of a training step")
    parser.add_argument("--config", choices=("seed", "cifar10", "mnist"), default="mnist")
    parser.add_argument("--bf16", action="store_true", help="training step under bf16 autocast")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--out", default="benchmarks/out/cpu_kernel_ab.json")
    args = parser.parse_args(argv)
    if cpu_kernels() is None and args.kernel not in ("attention", "attention-fp32", "adamw-layout"):
        raise SystemExit("diffkit's CPU kernels are not available here (no compiler, or DIFFKIT_CPU_KERNELS=0)")
    if args.kernel in ("bf16-group-norm", "bf16-winograd") and not args.layer and not args.bf16:
        raise SystemExit(f"--kernel {args.kernel} times bf16 training steps: add --bf16")
    if args.kernel == "adamw-layout" and args.layer:
        raise SystemExit("--kernel adamw-layout times training steps (no layer): drop --layer")
    if args.kernel == "bf16-winograd":
        if args.layer:
            raise SystemExit("--kernel bf16-winograd: per layer, see benchmarks/winograd_bf16_prototype.py")
        winograd_module.set_bf16_winograd_enabled(True)  # on; kernel_off turns it off per step
    if args.kernel == "attention-fp32":
        if args.bf16:
            raise SystemExit("--kernel attention-fp32 is the fp32 comparison: drop --bf16 (bf16: --kernel attention)")
        attention_module.uses_matmuls = _matmuls_in_fp32_too  # on; kernel_off restores the rule per step
    torch.set_num_threads(args.threads)
    # the contiguous GroupNorm kernel runs in contiguous bf16 networks (bf16 on the CPU defaults to
    # channels_last since the twentieth session)
    layout = "contiguous" if args.kernel == "bf16-group-norm" else "auto"
    step = layer_step(args.kernel, args.bf16) if args.layer else training_step(args.config, args.bf16, layout)
    for _ in range(3):
        step()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times = {"on": [], "off": []}
    for _ in range(args.rounds):
        for mode in ("on", "off"):
            if mode == "on":
                step()
                start = clock()
                step()
            else:
                with kernel_off(args.kernel):
                    step()
                    start = clock()
                    step()
            times[mode].append(clock() - start)
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    layer_bf16 = args.bf16 or args.kernel == "bf16-group-norm"  # its layer is timed on bf16 maps
    what = (f"layer fwd + bwd ({'bf16' if layer_bf16 else 'fp32'})" if args.layer
            else f"{args.config} training step ({'bf16' if args.bf16 else 'fp32'})")
    print(f"{args.kernel}, {what}, {args.threads} threads, {args.clock} time, median of {args.rounds}: "
          f"on {1e3 * on:.2f} ms, off {1e3 * off:.2f} ms, off / on {off / on:.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**vars(args), "bf16": args.bf16 or (args.layer and layer_bf16), "on_s": times["on"],
                               "off_s": times["off"], "ratio": off / on}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
