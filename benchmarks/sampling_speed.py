"""Sampling speed: diffkit.sample vs diffusers' pipeline / scheduler loop, same network and NFE.

For one network shape (``speed_configs.py``; default the seed 000 U-Net) and a fixed number of
network evaluations, the wall time per sample of

* diffkit: ``diffkit.sample(Denoiser(unet, schedule), shape, sampler=..., steps|nfe=...)``;
* diffusers: ``DDIMPipeline(unet2d, DDIMScheduler)(batch_size, num_inference_steps, eta=0)`` for
  DDIM, and the standard ``DPMSolverMultistepScheduler`` loop (``set_timesteps``; for each
  timestep ``unet(x, t).sample`` then ``scheduler.step(...).prev_sample``) for DPM-Solver++(2M),
  each with its U-Net contiguous (as the pipeline runs it) and channels_last (``-cl``).
``--bf16`` adds the same runs with the network under bf16 autocast (``-bf16``; diffkit:
``Denoiser(mixed_precision="bf16")`` with the network in the layout ``load_denoiser`` gives it
at that precision, contiguous on the CPU), compared with diffusers at the same precision.
diffkit's fp32 network too has the layout ``load_denoiser`` gives it (channels_last on the CPU,
contiguous on CUDA; before 4 December 2026 it was channels_last on CUDA as well).
``--compile [MODE]`` adds ``diffkit-compile`` (``Denoiser.compile(MODE)``) and ``diffusers-cl-compile``
(``torch.compile(unet, mode=MODE)``, channels_last) at each precision; compilation happens in
the warm-up round (keep ``--warmup`` >= 1).

Same weights: the diffusers ``UNet2DModel`` is ``diffkit.interop.to_diffusers(unet)`` (the
weight converter), after diffkit's zero-initialised output layers are given random values so
the networks compute something non-trivial; the script checks that both give the same eps
on one batch and prints the largest difference. Where the converter refuses the shape (e.g.
the mnist network, whose GroupNorm group counts diffusers cannot express) both networks keep
their own random initialisation: the cost does not depend on the weights.

Variants run interleaved, round by round, in one process (first ``--warmup`` rounds discarded);
medians and the ratio (diffusers' best layout time / diffkit time; median of per-round ratios).

    python benchmarks/sampling_speed.py [--threads 2] [--batch 4] [--rounds 3] [--config seed]
        [--ddim-steps 50] [--dpm-nfe 20] [--bf16] [--compile [MODE]] [--quick]

Writes ``benchmarks/out/sampling_speed_<threads>t.json``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import diffkit  # noqa: E402
from diffkit.denoiser import COMPILE_MODES  # noqa: E402
from diffkit.models.layers import preferred_memory_format, use_memory_format  # noqa: E402
from diffkit.schedule import NoiseSchedule  # noqa: E402
from speed_configs import CONFIGS, diffkit_unet, diffusers_unet  # noqa: E402


def build_networks(cfg: dict, seed: int = 0):
    """(diffkit UNet, diffusers UNet2DModel, same_weights) in eval mode."""
    torch.manual_seed(seed)
    ours = diffkit_unet(cfg).eval()
    with torch.no_grad():  # non-zero output layers, so both networks compute a non-trivial eps
        for p in ours.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    try:
        from diffkit.errors import DiffkitError
        from diffkit.interop import to_diffusers
        theirs, same = to_diffusers(ours).eval(), True
    except (ImportError, AttributeError, DiffkitError) as exc:
        print(f"weight converter not used ({exc}); each network keeps its own random initialisation")
        theirs, same = diffusers_unet(cfg).eval(), False
    return ours, theirs, same


def diffusers_ddim(model, batch: int, steps: int, seed: int):
    from diffusers import DDIMPipeline, DDIMScheduler
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                              clip_sample=False)
    pipe = DDIMPipeline(unet=model, scheduler=scheduler)  # runs on the unet's device
    pipe.set_progress_bar_config(disable=True)
    return lambda: pipe(batch_size=batch, num_inference_steps=steps, eta=0.0, output_type="np",
                        generator=torch.Generator().manual_seed(seed)).images


def diffusers_dpm(model, batch: int, nfe: int, seed: int, shape):
    from diffusers import DPMSolverMultistepScheduler
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                            beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=2)

    @torch.no_grad()
    def run():
        scheduler.set_timesteps(nfe)
        device = next(model.parameters()).device
        x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(seed)).to(device)
        x = x * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            eps = model(scheduler.scale_model_input(x, t), t).sample
            x = scheduler.step(eps, t, x).prev_sample
        return x
    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--config", default="seed", choices=sorted(CONFIGS))
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--dpm-nfe", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="mnist, batch 2, DDIM 10 / DPM 10, 1 round")
    parser.add_argument("--bf16", action="store_true",
                        help="add bf16-autocast variants (diffkit: Denoiser(mixed_precision='bf16'))")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (timings synchronise the device)")
    parser.add_argument("--compile", nargs="?", const="default", default=None,
                        choices=[m for m in COMPILE_MODES if m != "no"],
                        help="add torch.compile variants of diffkit and channels_last diffusers")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.config, args.batch, args.ddim_steps, args.dpm_nfe, args.rounds = "mnist", 2, 10, 10, 1
    torch.set_num_threads(args.threads)
    cfg = CONFIGS[args.config]
    shape = (cfg["in_channels"], cfg["img_size"], cfg["img_size"])
    device = torch.device(args.device)
    ours, theirs, same = build_networks(cfg)
    theirs_cl = diffusers_unet(cfg).eval()
    theirs_cl.load_state_dict(theirs.state_dict())
    # each diffkit network in the layout diffkit.load_denoiser gives it on this device at its
    # precision (models.layers.preferred_memory_format: on the CPU channels_last, for bf16 where
    # diffkit's CPU kernels are built)
    ours = use_memory_format(ours.to(device), preferred_memory_format(device, "no"))
    theirs = theirs.to(device)
    theirs_cl = theirs_cl.to(device, memory_format=torch.channels_last)
    params = (sum(p.numel() for p in ours.parameters()), sum(p.numel() for p in theirs.parameters()))
    schedule = NoiseSchedule.from_name("linear", 1000, beta_start=1e-4, beta_end=0.02)
    denoiser = diffkit.Denoiser(ours, schedule, prediction_type="epsilon")
    ours_bf16 = use_memory_format(copy.deepcopy(ours), preferred_memory_format(device, "bf16"))
    denoiser_bf16 = diffkit.Denoiser(ours_bf16, schedule, prediction_type="epsilon", mixed_precision="bf16")
    check = None
    if same:
        with torch.no_grad():
            x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1)).to(device)
            t = torch.tensor([10.0, 900.0], device=device)
            check = (ours(x, t) - theirs(x, t.long()).sample).abs().max().item()
        print(f"same weights: max |eps_diffkit - eps_diffusers| = {check:.2e}")

    def diffkit_run(sampler, den=denoiser, **kw):
        def run():
            den.reset_nfe()
            out = diffkit.sample(den, (args.batch, *shape), sampler=sampler, seed=0, progress=False, device=device,
                                 **kw)
            return out, den.nfe
        return run

    def autocast_bf16(run):
        def wrapped():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return run()
        return wrapped

    runs = {  # (sampler label, variant) -> callable
        ("ddim", "diffkit"): diffkit_run("ddim", steps=args.ddim_steps, eta=0.0),
        ("ddim", "diffusers"): diffusers_ddim(theirs, args.batch, args.ddim_steps, 0),
        ("ddim", "diffusers-cl"): diffusers_ddim(theirs_cl, args.batch, args.ddim_steps, 0),
        ("dpm-solver++-2m", "diffkit"): diffkit_run("dpm-solver++-2m", nfe=args.dpm_nfe),
        ("dpm-solver++-2m", "diffusers"): diffusers_dpm(theirs, args.batch, args.dpm_nfe, 0, shape),
        ("dpm-solver++-2m", "diffusers-cl"): diffusers_dpm(theirs_cl, args.batch, args.dpm_nfe, 0, shape),
    }
    if args.bf16:
        for sampler, kw in (("ddim", {"steps": args.ddim_steps, "eta": 0.0}),
                            ("dpm-solver++-2m", {"nfe": args.dpm_nfe})):
            runs[(sampler, "diffkit-bf16")] = diffkit_run(sampler, den=denoiser_bf16, **kw)
            for variant in ("diffusers", "diffusers-cl"):
                runs[(sampler, f"{variant}-bf16")] = autocast_bf16(runs[(sampler, variant)])
    if args.compile:
        mode = None if args.compile == "default" else args.compile
        theirs_compiled = torch.compile(theirs_cl, mode=mode)
        for precision, den in (("", denoiser), ("-bf16", denoiser_bf16)) if args.bf16 else (("", denoiser),):
            den_c = diffkit.Denoiser(den.net, schedule, prediction_type="epsilon",
                                     mixed_precision=den.mixed_precision).compile(args.compile)
            runs[("ddim", f"diffkit{precision}-compile")] = diffkit_run("ddim", den=den_c, steps=args.ddim_steps,
                                                                       eta=0.0)
            runs[("dpm-solver++-2m", f"diffkit{precision}-compile")] = diffkit_run("dpm-solver++-2m", den=den_c,
                                                                                  nfe=args.dpm_nfe)
            ddim_c = diffusers_ddim(theirs_compiled, args.batch, args.ddim_steps, 0)
            dpm_c = diffusers_dpm(theirs_compiled, args.batch, args.dpm_nfe, 0, shape)
            if precision:
                ddim_c, dpm_c = autocast_bf16(ddim_c), autocast_bf16(dpm_c)
            runs[("ddim", f"diffusers-cl{precision}-compile")] = ddim_c
            runs[("dpm-solver++-2m", f"diffusers-cl{precision}-compile")] = dpm_c
    nfe = {"ddim": args.ddim_steps, "dpm-solver++-2m": args.dpm_nfe}
    with torch.no_grad():  # one forward of each network first (oneDNN primitive set-up)
        x = torch.randn(args.batch, *shape, device=device)
        for net in (ours, theirs, theirs_cl):
            net(x, torch.full((args.batch,), 500.0, device=device))
    times = {key: [] for key in runs}
    for rnd in range(args.warmup + args.rounds):
        for key, run in runs.items():
            start = time.perf_counter()
            out = run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            if key[1].startswith("diffkit") and out[1] != nfe[key[0]]:
                raise RuntimeError(f"diffkit {key[0]} used {out[1]} network evaluations, expected {nfe[key[0]]}")
            if rnd >= args.warmup:
                times[key].append(seconds)
            print(f"  round {rnd + 1}: {key[0]} {key[1]} {seconds:.2f}s", flush=True)
    rows = []
    for key in runs:
        sampler, variant = key
        row = {"sampler": sampler, "nfe": nfe[sampler], "variant": variant, "median_s": statistics.median(times[key]),
               "s_per_sample": statistics.median(times[key]) / args.batch, "times": times[key]}
        if variant.startswith("diffkit"):  # against diffusers at the same precision
            suffix = variant[len("diffkit"):]
            for ref in ("diffusers", "diffusers-cl"):
                if (sampler, ref + suffix) in times:
                    row[f"speedup_vs_{ref}"] = statistics.median(
                        a / b for a, b in zip(times[(sampler, ref + suffix)], times[key]))
        rows.append(row)
    print(f"\nsampling, config {args.config} ({params[0]:,} / {params[1]:,} parameters), batch {args.batch}, "
          f"{args.threads} threads, median of {args.rounds} after {args.warmup} warm-up; same weights: {same}")
    print(f"{'sampler':16s} {'NFE':>4s} {'variant':26s} {'run s':>8s} {'s/sample':>9s} {'vs diffusers':>13s} "
          f"{'vs diffusers-cl':>16s}")
    for r in rows:
        a = f"{r['speedup_vs_diffusers']:12.2f}x" if "speedup_vs_diffusers" in r else ""
        b = f"{r['speedup_vs_diffusers-cl']:15.2f}x" if "speedup_vs_diffusers-cl" in r else ""
        print(f"{r['sampler']:16s} {r['nfe']:4d} {r['variant']:26s} {r['median_s']:8.2f} {r['s_per_sample']:9.3f} "
              f"{a:>13s} {b:>16s}")
    out = Path(args.out or HERE / "out" / f"sampling_speed_{args.threads}t.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "config": args.config, "model": cfg,
        "parameters": params, "same_weights": same, "max_eps_difference": check, "batch": args.batch,
        "threads": args.threads, "device": str(device), "rounds": args.rounds, "warmup": args.warmup,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(), "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
