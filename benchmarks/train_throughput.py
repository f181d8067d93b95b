"""Training throughput and peak memory: diffkit's Trainer vs diffusers' training loop (issue 8).

One FULL training step on each side, on the same network shape (``speed_configs.py``), batch,
precision and device:

* diffkit: :meth:`diffkit.training.Trainer.train_step` itself (timesteps and noise drawn,
  q(x_t | x_0), the U-Net, L_simple = ||eps - eps_theta||^2 (DDPM eq. 14), backward, gradient
  clipping at 1.0, fused AdamW, the EMA update (decay 0.9999)).
* diffusers: the loop of ``examples/unconditional_image_generation/train_unconditional.py``:
  ``torch.randn`` noise, ``torch.randint`` timesteps, ``DDPMScheduler.add_noise``,
  ``UNet2DModel(...).sample``, ``F.mse_loss``, backward, ``clip_grad_norm_(1.0)``, AdamW
  (the example's betas 0.95/0.999, weight decay 1e-6), the cosine LR scheduler step,
  ``zero_grad`` and ``EMAModel.step`` (decay 0.9999, the example's warm-up).

Method. Every (configuration, variant) runs in its own fresh worker process; the parent
interleaves the workers round by round (each round: ``--steps`` steps of each variant in turn,
so load drift hits every variant alike); the first ``--warmup`` rounds are discarded
(``--concurrent-warmup`` runs them in all workers at once, so that compilations overlap). Reported:
median wall seconds per step, images/s, median process CPU seconds per step (less disturbed by
other processes on a shared machine), the ratio to diffusers' best layout (median of the
per-round ratios) and the peak memory.

Peak memory on the CPU is the worker's peak resident set size (``getrusage(RUSAGE_SELF)
.ru_maxrss``, a kernel high-water mark that sees every allocation, torch's included, unlike
tracemalloc) at the end of the run minus its value after the imports, before the network is
built: weights, gradients, AdamW moments, EMA copy, activations, and allocator caching,
measured identically on both sides. On CUDA it is ``torch.cuda.max_memory_allocated``.
On the CPU a second, exact figure ("step MiB"): the peak bytes of the tensor storages one more
(untimed) step creates, counted by :class:`diffkit.memory.LiveTensorBytes` (activations,
gradients, temporaries; the weights, moments and EMA that exist before the step are the same
on both sides). The resident-set figure also holds what glibc keeps after frees, which depends
on the order of allocations (docs/performance.md).

    python benchmarks/train_throughput.py [--threads 2] [--batch 32] [--rounds 5] [--steps 1]
        [--configs seed,cifar10,mnist] [--device cpu|cuda] [--compile] [--bf16] [--layouts] [--quick]
        [--variants a,b] [--concurrent-warmup]

CPU variants: ``diffkit`` (fp32; its U-Net computes channels_last; fused AdamW), ``diffusers``
(fp32, exactly as the example runs it: contiguous, default AdamW and EMAModel flags, i.e. the
per-parameter loops on the CPU), ``diffusers-cl`` (diffusers tuned: model and batch
channels_last, fused AdamW as diffkit's Trainer, ``EMAModel(foreach=True)``;
the reference of the ratio);
``--compile`` adds ``diffkit-compile`` and ``diffusers-cl-compile`` (torch.compile, inductor);
``--bf16`` adds ``diffkit-bf16`` (its Trainer lays the U-Net out channels_last where diffkit's
CPU kernels are built, contiguous without them: ``models.layers.preferred_memory_format``),
``diffusers-bf16`` (the example with ``--mixed_precision bf16``) and ``diffusers-cl-bf16`` (bf16
autocast). A diffkit variant's ratio is against the faster of diffusers' two layouts at the same
precision.
CUDA variants: fp32, bf16 autocast, and bf16 autocast + compile for each library; diffusers
tuned (fused AdamW, foreach EMA) in both layouts, ``diffusers-tuned`` (contiguous) and
``diffusers-cl`` (channels_last), the ratio against the faster (on the H200 the contiguous
layout was the faster for diffusers' sampling and for diffkit's training, BENCHMARKS.md; the
2026-12-04 GPU table predates ``diffusers-tuned``: its ``diffusers`` rows were ``diffusers-cl``).
``--layouts`` adds each diffkit variant in the other layout (``memory_format`` forced: contiguous
in fp32 on the CPU, channels_last elsewhere), ratio against the same diffusers.
Writes ``benchmarks/out/train_throughput_<device>_<threads>t.json``.
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

HERE = Path(__file__).resolve().parent

CPU_VARIANTS = {  # name: (library, options)
    "diffkit": ("diffkit", {}),
    "diffusers": ("diffusers", {}),
    "diffusers-cl": ("diffusers", {"channels_last": True, "tuned": True}),
}
CPU_COMPILE_VARIANTS = {
    "diffkit-compile": ("diffkit", {"compile": True}),
    "diffusers-cl-compile": ("diffusers", {"channels_last": True, "tuned": True, "compile": True}),
}
CPU_BF16_VARIANTS = {  # bf16 autocast on the CPU (AMX / AVX512-BF16 convolutions where the CPU has them)
    "diffkit-bf16": ("diffkit", {"bf16": True}),
    # the opt-in bf16 Winograd F(2x2, 3x3) convolutions (DIFFKIT_BF16_WINOGRAD=1; twice the bf16
    # convolution error, docs/performance.md)
    "diffkit-bf16-winograd": ("diffkit", {"bf16": True, "bf16_winograd": True}),
    "diffusers-bf16": ("diffusers", {"bf16": True}),
    "diffusers-cl-bf16": ("diffusers", {"channels_last": True, "tuned": True, "bf16": True}),
}
CUDA_VARIANTS = {  # diffusers tuned (fused AdamW, foreach EMA) in both layouts; the ratio is against the faster
    "diffkit": ("diffkit", {}),
    "diffusers-tuned": ("diffusers", {"tuned": True}),
    "diffusers-cl": ("diffusers", {"channels_last": True, "tuned": True}),
    "diffkit-bf16": ("diffkit", {"bf16": True}),
    "diffusers-tuned-bf16": ("diffusers", {"tuned": True, "bf16": True}),
    "diffusers-cl-bf16": ("diffusers", {"channels_last": True, "tuned": True, "bf16": True}),
    "diffkit-bf16-compile": ("diffkit", {"bf16": True, "compile": True}),
    "diffusers-tuned-bf16-compile": ("diffusers", {"tuned": True, "bf16": True, "compile": True}),
    "diffusers-cl-bf16-compile": ("diffusers", {"channels_last": True, "tuned": True, "bf16": True, "compile": True}),
}


LAYOUT_SUFFIXES = ("-contiguous", "-channels_last")


def with_other_layouts(variants: dict, device: str) -> dict:
    """``--layouts``: each diffkit variant also with the layout its Trainer does not pick (config
    ``memory_format``; channels_last <-> contiguous), e.g. ``diffkit-channels_last`` on CUDA."""
    import torch
    from diffkit.models.layers import preferred_memory_format

    out = dict(variants)
    for name, (lib, opts) in variants.items():
        if lib == "diffkit":
            auto = preferred_memory_format(device, "bf16" if opts.get("bf16") else "no")
            other = "contiguous" if auto is torch.channels_last else "channels_last"
            out[f"{name}-{other}"] = (lib, {**opts, "memory_format": other})
    return out


def reference_candidates(name: str, variants: dict) -> list:
    """The diffusers variants a diffkit variant is compared with (same precision and compile);
    the ratio is taken against the fastest of them, diffusers' best layout for that setting."""
    if not name.startswith("diffkit"):
        return []
    suffix = name[len("diffkit"):]
    for layout in LAYOUT_SUFFIXES:  # a forced layout (--layouts) is compared as its unforced variant
        suffix = suffix.removesuffix(layout)
    suffix = suffix.removesuffix("-winograd")  # a diffkit-only option: against the same diffusers
    return [c for c in (f"diffusers-cl{suffix}", f"diffusers-tuned{suffix}", f"diffusers{suffix}") if c in variants]


# ------------------------------------------------------------------ worker side
def _peak_rss_bytes() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


class _Synthetic:
    """What Trainer needs of a data set when train_step is fed batches directly."""

    def __init__(self, n: int, channels: int, size: int):
        self.n, self.channels, self.size = n, channels, size

    def __len__(self):
        return self.n

    def __getitem__(self, i: int):
        """Uniform noise in [-1, 1] (the Trainer measures the data's scale from a few items)."""
        import torch
        generator = torch.Generator().manual_seed(int(i))
        return torch.rand(self.channels, self.size, self.size, generator=generator) * 2 - 1, 0


def _diffkit_step_fn(cfg: dict, opts: dict, batch: int, device: str, workdir: str):
    import torch
    from diffkit.config import TrainConfig
    from diffkit.models.winograd import set_bf16_winograd_enabled
    from diffkit.training import Trainer

    if opts.get("bf16_winograd"):
        set_bf16_winograd_enabled(True)

    train_cfg = TrainConfig(**{k: v for k, v in cfg.items()}, batch_size=batch, device=device, grad_clip=1.0,
                            ema_decay=0.9999, max_steps=10_000, save_weight_dir=workdir,
                            mixed_precision="bf16" if opts.get("bf16") else "no",
                            compile=bool(opts.get("compile")), memory_format=opts.get("memory_format", "auto"))
    trainer = Trainer(train_cfg, dataset=_Synthetic(100 * batch, cfg["in_channels"], cfg["img_size"]), progress=False,
                      log=lambda msg: None)
    trainer.model.train()
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, cfg["in_channels"], cfg["img_size"], cfg["img_size"], generator=generator) * 2 - 1
    labels = torch.zeros(batch, dtype=torch.long)

    def step():
        loss = trainer.train_step([(images, labels)])
        trainer.step += 1
        return loss

    return step, trainer.model


def _diffusers_step_fn(cfg: dict, opts: dict, batch: int, device: str):
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from speed_configs import diffusers_unet

    dev = torch.device(device)
    model = diffusers_unet(cfg).to(dev).train()
    memory_format = torch.channels_last if opts.get("channels_last") else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    forward = torch.compile(model) if opts.get("compile") else model
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    tuned = bool(opts.get("tuned"))  # the fastest optimiser and EMA flags; else the example's defaults
    # diffkit's Trainer's choice: fused AdamW (its fresh moments share the weights' layout, which
    # torch's fused CPU kernel needs; see checkpoint.match_parameter_layout for resumed ones)
    fast = {"fused": True} if tuned else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8,
                                  **fast)
    lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=500, num_training_steps=10_000)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4,
                   foreach=tuned)
    generator = torch.Generator().manual_seed(0)
    clean = (torch.rand(batch, cfg["in_channels"], cfg["img_size"], cfg["img_size"], generator=generator) * 2 - 1)
    clean = clean.to(dev).contiguous(memory_format=memory_format)
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if opts.get("bf16") else None

    def step():
        noise = torch.randn(clean.shape, device=dev).contiguous(memory_format=memory_format)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), device=dev).long()
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        if autocast is None:
            out = forward(noisy, timesteps).sample
        else:
            with autocast():
                out = forward(noisy, timesteps).sample
        loss = F.mse_loss(out.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        ema.step(model.parameters())
        return loss.item()

    return step, model


def worker(spec: dict) -> None:
    """Build one variant, then answer ``run N`` (time N steps) and ``quit`` on stdin."""
    import tempfile
    import torch

    torch.set_num_threads(spec["threads"])
    # Every worker imports the same modules before the baseline (both libraries, and the parts
    # of torch that the optimiser step and clip_grad_norm_ import lazily), so that the peak
    # delta counts tensors and caches, not code.
    import diffusers.training_utils  # noqa: F401
    import diffkit.training  # noqa: F401
    import torch._dynamo  # noqa: F401
    import torch._inductor.config  # noqa: F401
    import torch.nn.parallel  # noqa: F401
    device = spec["device"]
    cuda = device.startswith("cuda")
    baseline = torch.cuda.memory_allocated() if cuda else _peak_rss_bytes()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as workdir:
        if spec["library"] == "diffkit":
            step, model = _diffkit_step_fn(spec["config"], spec["options"], spec["batch"], device, workdir)
        else:
            step, model = _diffusers_step_fn(spec["config"], spec["options"], spec["batch"], device)
        params = sum(p.numel() for p in model.parameters())
        print(json.dumps({"ready": True, "parameters": params}), flush=True)
        for line in sys.stdin:
            cmd = line.split()
            if cmd[0] == "quit":
                peak = (torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes()) - baseline
                tensor_peak = None
                if not cuda:  # one more (untimed) step, counting the tensor storages it creates
                    from diffkit.memory import LiveTensorBytes
                    tracker = LiveTensorBytes()
                    with tracker:
                        step()
                    tensor_peak = tracker.peak
                print(json.dumps({"peak_bytes": peak, "step_tensor_peak_bytes": tensor_peak}), flush=True)
                return
            wall, cpu, losses = [], [], []
            for _ in range(int(cmd[1])):
                if cuda:
                    torch.cuda.synchronize()
                start, start_cpu = time.perf_counter(), time.process_time()
                losses.append(step())
                if cuda:
                    torch.cuda.synchronize()
                wall.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
            print(json.dumps({"wall": wall, "cpu": cpu, "loss": losses}), flush=True)


# ------------------------------------------------------------------ parent side
class Worker:
    def __init__(self, spec: dict):
        env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
        env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), str(HERE), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = None  # the worker's first line (parameter count), read by ready()

    def ready(self) -> "Worker":
        """Wait for the worker's start-up line (workers start concurrently, see bench_config)."""
        if self.info is None:
            self.info = self.read()
        return self

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with status {self.proc.wait()}")
        return json.loads(line)

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def ask(self, command: str) -> dict:
        self.send(command)
        return self.read()

    def close(self) -> dict:
        out = self.ask("quit")
        self.proc.wait()
        return out


def bench_config(name: str, cfg: dict, variants: dict, args) -> list[dict]:
    specs = {v: {"library": lib, "options": opts, "config": cfg, "batch": args.batch, "threads": args.threads,
                 "device": args.device} for v, (lib, opts) in variants.items()}
    workers = {v: Worker(spec) for v, spec in specs.items()}  # imports and set-up run concurrently
    wall = {v: [] for v in variants}
    cpu = {v: [] for v in variants}
    first = {}
    try:
        for w in workers.values():
            w.ready()
        for rnd in range(args.warmup + args.rounds):
            concurrent = rnd < args.warmup and args.concurrent_warmup  # discarded rounds; compiles overlap
            if concurrent:
                for w in workers.values():
                    w.send(f"run {args.steps}")
            for v, w in workers.items():
                out = w.read() if concurrent else w.ask(f"run {args.steps}")
                if rnd == 0:
                    first[v] = out["wall"][0]
                if rnd >= args.warmup:
                    wall[v].append(statistics.median(out["wall"]))
                    cpu[v].append(statistics.median(out["cpu"]))
            print(f"  {name} round {rnd + 1}/{args.warmup + args.rounds}: "
                  + ", ".join(f"{v} {wall[v][-1] if wall[v] else first[v]:.2f}s" for v in variants), flush=True)
        peaks, tensor_peaks = {}, {}
        for v, w in workers.items():
            closing = w.close()
            peaks[v], tensor_peaks[v] = closing["peak_bytes"], closing.get("step_tensor_peak_bytes")
    finally:
        for w in workers.values():
            if w.proc.poll() is None:
                w.proc.kill()
    rows = []
    for v in variants:
        cands = reference_candidates(v, variants)
        ref = min(cands, key=lambda c: statistics.median(wall[c])) if cands else None
        example = next((c for c in cands if "-cl" not in c and "-tuned" not in c), None)  # as the example ships
        row = {"config": name, "variant": v, "library": variants[v][0], "options": variants[v][1],
               "parameters": workers[v].info["parameters"], "median_s": statistics.median(wall[v]),
               "images_per_s": args.batch / statistics.median(wall[v]), "median_cpu_s": statistics.median(cpu[v]),
               "first_step_s": first[v], "peak_mib": peaks[v] / 2**20, "wall_s": wall[v], "cpu_s": cpu[v],
               "step_tensor_peak_mib": None if tensor_peaks[v] is None else tensor_peaks[v] / 2**20,
               "reference": ref}
        if ref is not None:
            row["speedup"] = statistics.median(a / b for a, b in zip(wall[ref], wall[v]))
            row["cpu_speedup"] = statistics.median(a / b for a, b in zip(cpu[ref], cpu[v]))
            row["peak_ratio"] = peaks[v] / peaks[ref]
            if tensor_peaks[v] is not None and tensor_peaks[ref]:
                row["step_tensor_peak_ratio"] = tensor_peaks[v] / tensor_peaks[ref]
            if example is not None and example != ref:  # against the example as shipped
                row["speedup_vs_example"] = statistics.median(a / b for a, b in zip(wall[example], wall[v]))
                row["cpu_speedup_vs_example"] = statistics.median(a / b for a, b in zip(cpu[example], cpu[v]))
        rows.append(row)
    return rows


def print_table(rows: list[dict], args) -> None:
    print(f"\nfull training step, batch {args.batch}, {args.threads} threads, device {args.device}, "
          f"median of {args.rounds} rounds x {args.steps} step(s) after {args.warmup} warm-up round(s)")
    print(f"{'config':8s} {'variant':26s} {'params':>11s} {'wall s':>7s} {'img/s':>7s} {'cpu s':>7s} "
          f"{'speedup':>8s} {'cpu spd':>8s} {'peak MiB':>9s} {'mem ratio':>9s} {'step MiB':>9s} {'ratio':>6s} "
          f"{'vs example':>10s} {'(cpu)':>6s}  vs")
    for r in rows:
        speed = f"{r['speedup']:7.2f}x" if "speedup" in r else f"{'':8s}"
        cspeed = f"{r['cpu_speedup']:7.2f}x" if "cpu_speedup" in r else f"{'':8s}"
        mem = f"{r['peak_ratio']:9.2f}" if "peak_ratio" in r else f"{'':9s}"
        step_mem = (f"{r['step_tensor_peak_mib']:9.0f} " if r.get("step_tensor_peak_mib") is not None
                    else f"{'':10s}")
        step_mem += f"{r['step_tensor_peak_ratio']:6.2f}" if "step_tensor_peak_ratio" in r else f"{'':6s}"
        ex = (f"{r['speedup_vs_example']:9.2f}x {r['cpu_speedup_vs_example']:5.2f}x" if "speedup_vs_example" in r
              else f"{'':17s}")
        print(f"{r['config']:8s} {r['variant']:26s} {r['parameters']:11,d} {r['median_s']:7.3f} "
              f"{r['images_per_s']:7.2f} {r['median_cpu_s']:7.3f} {speed} {cspeed} {r['peak_mib']:9.0f} "
              f"{mem} {step_mem} {ex}"
              f"  {r['reference'] or ''}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1, help="steps per variant per round")
    parser.add_argument("--warmup", type=int, default=1, help="rounds discarded at the start")
    parser.add_argument("--concurrent-warmup", action="store_true",
                        help="run the warm-up rounds of all variants at once (overlaps torch.compile; "
                             "first_step_s then includes the contention)")
    parser.add_argument("--configs", default="seed,cifar10,mnist")
    parser.add_argument("--variants", default=None, help="comma list (default: all for the device)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="add torch.compile variants (CPU)")
    parser.add_argument("--bf16", action="store_true", help="add bf16-autocast variants (CPU)")
    parser.add_argument("--layouts", action="store_true",
                        help="add each diffkit variant in the layout its Trainer does not pick")
    parser.add_argument("--quick", action="store_true", help="mnist only, batch 8, 2 rounds")
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return worker(json.loads(args.worker))
    from speed_configs import CONFIGS

    if args.quick:
        args.configs, args.batch, args.rounds = "mnist", 8, 2
    if args.device.startswith("cuda"):
        variants = dict(CUDA_VARIANTS)
    else:
        variants = dict(CPU_VARIANTS)
        if args.compile:
            variants.update(CPU_COMPILE_VARIANTS)
        if args.bf16:
            variants.update(CPU_BF16_VARIANTS)
    if args.layouts:
        variants = with_other_layouts(variants, args.device)
    if args.variants:
        wanted = args.variants.split(",")
        unknown = [v for v in wanted if v not in variants]
        if unknown:
            parser.error(f"--variants: unknown {unknown[0]!r}; choose from {', '.join(variants)}")
        variants = {v: variants[v] for v in wanted}
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown {unknown[0]!r}; choose from {', '.join(CONFIGS)}")
    rows = []
    for name in names:
        rows += bench_config(name, CONFIGS[name], variants, args)
    print_table(rows, args)
    import torch
    out = Path(args.out or HERE / "out" / f"train_throughput_{args.device.split(':')[0]}_{args.threads}t.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "batch": args.batch, "threads": args.threads,
        "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup, "device": args.device,
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "loadavg_at_end": os.getloadavg(), "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
