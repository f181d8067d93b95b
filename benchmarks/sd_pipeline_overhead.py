"""What diffkit's Stable Diffusion folder path costs around the network, against diffusers' own pipelines.

For each setting (model x sampler x steps x guidance scale x decode) diffkit's ``text_to_image`` and the diffusers
pipeline's ``__call__`` sample the same prompts from the same latents z_T, prompt encoding included, interleaved
(diffkit, diffusers, diffkit, ...; one untimed warm-up each), ``--repeats`` times:

* wall time per image batch (VAE decode excluded: ``return_latents=True`` / ``output_type="latent"``; the
  ``--decode-steps`` rows include it: images in [0, 1], ``output_type="pt"``);
* the time inside the UNet / transformer forward (a forward pre-hook and hook on the network module of each
  library, accumulating perf_counter time) and the per-step overhead (wall - network) / steps;
* the ratio diffusers / diffkit of the median wall times with a 95% interval from resampling the interleaved
  pairs (``--bootstrap`` replicates), and the max relative difference of the two outputs
  (max |a - b| / max |b|), so that the two sides did the same computation.

Models: the tiny random folders of the interop tests (``tiny_sd_pipeline``, ``tiny_sd_xl_pipeline``,
``tiny_sd3_pipeline``, imported from tests/), written with ``save_pretrained`` and read back by diffkit; and
``sd15-mid``: the tiny SD folder with a larger SD 1.x-shaped UNet (block_out_channels (64, 128), one layer per
block, 32 groups, 3.1M parameters) on 32 x 32 latents, where the network's cost is visible (about 0.6 s a forward
of batch 4 on one thread: to keep the default run near 5 minutes it runs DDIM at the smallest ``--steps`` only,
unless ``--mid-all``). Samplers: ``ddim`` (DDIMScheduler, eta
0, diffkit ``ddim`` on ``grid="scheduler"``), ``euler`` (EulerDiscreteScheduler, leading spacing; diffkit
``euler`` on ``grid_from_diffusers`` of it, made inside the timed call); SD3: ``flow-euler`` (the folder's
FlowMatchEulerDiscreteScheduler; diffkit's default). Guidance s = 1 is the pipelines' unguided path.

    OMP_NUM_THREADS=1 DIFFKIT_CPU_KERNELS=0 PYTHONPATH=. python benchmarks/sd_pipeline_overhead.py

Table to stdout, JSON to ``benchmarks/results/sd_pipeline_overhead_<date>.json`` (``--json``).
"""
from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the interop tests' tiny pipeline builders

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffkit.errors import DiffkitError, check_choice, check_range  # noqa: E402
from diffkit.evaluation import write_json  # noqa: E402

MODELS = ("sd15", "sdxl", "sd3", "sd15-mid")
SAMPLERS = {"sd15": ("ddim", "euler"), "sdxl": ("ddim", "euler"), "sd3": ("flow-euler",),
            "sd15-mid": ("ddim", "euler")}
PROMPTS = ["a photo of a cat", "hot"]
SD3_SEQUENCE = 12  # max_sequence_length of T5 on both sides (the SD3 tests')


def parse_list(name: str, text: str, kind=str, allowed=None, low=None) -> list:
    """``text`` split at commas into ``kind`` values (checked against ``allowed`` / at least ``low``); one-line
    DiffkitError naming ``--name`` and the bad value."""
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items and text != "":
        raise DiffkitError(f"--{name}={text!r} is not allowed; give a comma-separated list")
    values = []
    for item in items:
        try:
            value = kind(item)
        except ValueError:
            raise DiffkitError(f"--{name}={text!r} is not allowed: {item!r} is not {kind.__name__}") from None
        if allowed is not None:
            check_choice(f"--{name}", value, allowed)
        if low is not None and not value >= low:
            raise DiffkitError(f"--{name}={text!r} is not allowed: {item!r} is below {low}")
        values.append(value)
    return values


class NetworkTimer:
    """Accumulated wall time and call count of ``module``'s forward (a pre-hook starts the clock, a hook stops it)."""

    def __init__(self, module):
        self.total, self.calls, self._start = 0.0, 0, None
        self._handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _pre(self, module, args):
        self._start = time.perf_counter()

    def _post(self, module, args, output):
        self.total += time.perf_counter() - self._start
        self.calls += 1

    def reset(self):
        self.total, self.calls = 0.0, 0

    def remove(self):
        for handle in self._handles:
            handle.remove()


def mid_unet():
    """An SD 1.x-shaped UNet2DConditionModel of moderate size on 32 x 32 latents (the tiny SD's context width 32)."""
    import diffusers
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        block_out_channels=(64, 128), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)


def build(model: str, root: Path) -> dict:
    """{pipe, ours, net_theirs, net_ours, latents, size, t2i}: the diffusers pipeline (in memory), diffkit's load of
    its ``save_pretrained`` folder, their network modules, z_T and the image size."""
    root.mkdir(parents=True, exist_ok=True)
    if model == "sd3":
        from test_interop_sd3 import tiny_sd3_pipeline
        from diffkit.interop.sd3 import load_sd3, text_to_image
        pipe = tiny_sd3_pipeline(root)
        pipe.save_pretrained(root / "folder")
        ours = load_sd3(root / "folder", progress=False)
        networks = pipe.transformer, ours.transformer
    else:
        from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image
        if model == "sdxl":
            from test_interop_sd_xl import tiny_sd_xl_pipeline
            pipe = tiny_sd_xl_pipeline(root)
        else:
            from test_interop_diffusers import tiny_sd_pipeline
            pipe = tiny_sd_pipeline(root)
            if model == "sd15-mid":
                pipe.register_modules(unet=mid_unet())
        pipe.save_pretrained(root / "folder")
        ours = load_stable_diffusion(root / "folder", progress=False)
        networks = pipe.unet, ours.unet
    shape = ours.latent_shape(len(PROMPTS))
    size = shape[2] * ours.vae_scale_factor
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    return {"pipe": pipe, "ours": ours, "networks": networks, "latents": latents, "size": size, "t2i": text_to_image}


def runners(built: dict, model: str, sampler: str, steps: int, scale: float, decode: bool) -> tuple:
    """(diffkit, diffusers): argument-free calls sampling one image batch of the setting."""
    import diffusers
    pipe, ours, latents, size, t2i = built["pipe"], built["ours"], built["latents"], built["size"], built["t2i"]
    common = {"guidance_scale": scale, "height": size, "width": size}
    theirs_kw = {"num_inference_steps": steps, "output_type": "pt" if decode else "latent", **common}
    ours_kw = {"steps": steps, "return_latents": not decode, **common}
    if model == "sd3":
        theirs_kw["max_sequence_length"] = ours_kw["max_sequence_length"] = SD3_SEQUENCE
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    elif sampler == "ddim":
        scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
        theirs_kw["eta"] = 0.0
        ours_kw.update(sampler="ddim", grid="scheduler", eta=0.0)
    else:  # Euler, leading spacing: z_T = latents * init_noise_sigma / sqrt(sigma_max^2 + 1) = latents (SD-XL test)
        scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="leading")
        ours_kw["sampler"] = "euler"
    from diffkit.interop.schedulers import grid_from_diffusers

    def run_ours():
        kw = dict(ours_kw)
        if sampler == "euler":  # the grid of diffusers' Euler: made inside the timed call
            grid_scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                          timestep_spacing="leading")
            grid_scheduler.set_timesteps(steps)
            kw["grid"] = grid_from_diffusers(grid_scheduler)
        with torch.no_grad():
            return t2i(ours, PROMPTS, latents=latents.clone(), **kw)

    def run_theirs():
        pipe.scheduler = scheduler
        with torch.no_grad():
            return pipe(PROMPTS, latents=latents.clone(), **theirs_kw).images

    return run_ours, run_theirs


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def ratio_interval(ours: np.ndarray, theirs: np.ndarray, replicates: int, seed: int = 0) -> list:
    """95% interval of median(theirs) / median(ours) over resampled interleaved pairs."""
    if replicates < 1 or len(ours) < 2:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(ours), size=(replicates, len(ours)))
    ratios = np.median(theirs[picks], axis=1) / np.median(ours[picks], axis=1)
    return [float(v) for v in np.percentile(ratios, [2.5, 97.5])]


def measure(built: dict, model: str, sampler: str, steps: int, scale: float, decode: bool, repeats: int,
            replicates: int) -> dict:
    """One row: medians, per-step overheads, ratio and its interval, network calls and the outputs' difference."""
    run_ours, run_theirs = runners(built, model, sampler, steps, scale, decode)
    timers = [NetworkTimer(net) for net in built["networks"]]  # (diffusers', diffkit's)
    try:
        out_ours, out_theirs = run_ours(), run_theirs()  # warm-up, and the outputs compared
        wall = {"diffkit": [], "diffusers": []}
        net = {"diffkit": [], "diffusers": []}
        calls = {}
        for _ in range(repeats):
            for name, run, timer in (("diffkit", run_ours, timers[1]), ("diffusers", run_theirs, timers[0])):
                timer.reset()
                start = time.perf_counter()
                run()
                wall[name].append(time.perf_counter() - start)
                net[name].append(timer.total)
                calls[name] = timer.calls
    finally:
        for timer in timers:
            timer.remove()
    wall = {k: np.array(v) for k, v in wall.items()}
    net = {k: np.array(v) for k, v in net.items()}
    row = {"model": model, "sampler": sampler, "steps": steps, "guidance_scale": scale, "decode": decode,
           "repeats": repeats, "network_calls": calls, "max_relative_difference": relative_difference(out_ours,
                                                                                                     out_theirs)}
    for name in ("diffkit", "diffusers"):
        overhead = (wall[name] - net[name]) / steps
        row[name] = {"wall_median_ms": 1e3 * float(np.median(wall[name])),
                     "wall_iqr_ms": [1e3 * float(v) for v in np.percentile(wall[name], [25, 75])],
                     "network_median_ms": 1e3 * float(np.median(net[name])),
                     "overhead_per_step_median_ms": 1e3 * float(np.median(overhead)),
                     "outside_network_median_ms": 1e3 * float(np.median(wall[name] - net[name])),
                     "wall_s": wall[name].tolist(), "network_s": net[name].tolist()}
    row["ratio_diffusers_over_diffkit"] = float(np.median(wall["diffusers"]) / np.median(wall["diffkit"]))
    row["ratio_interval_95"] = ratio_interval(wall["diffkit"], wall["diffusers"], replicates)
    return row


def settings(models, steps_list, scales, decode_steps, mid_all: bool = False) -> list:
    """(model, sampler, steps, scale, decode) rows; ``sd15-mid``: DDIM at the fewest steps, no decode, unless
    ``mid_all``."""
    rows = []
    for model in models:
        cut = model == "sd15-mid" and not mid_all
        for sampler in SAMPLERS[model][:1] if cut else SAMPLERS[model]:
            for steps in [min(steps_list)] if cut else steps_list:
                for scale in scales:
                    rows.append((model, sampler, steps, scale, False))
                    if steps in decode_steps and scale == max(scales) and not cut:
                        rows.append((model, sampler, steps, scale, True))
    return rows


def row_text(row: dict) -> str:
    ours, theirs = row["diffkit"], row["diffusers"]
    low, high = row["ratio_interval_95"]
    calls = f"{row['network_calls']['diffkit']}/{row['network_calls']['diffusers']}"
    return (f"{row['model']:<9}{row['sampler']:<11}{row['steps']:>3} {row['guidance_scale']:>4g} "
            f"{'yes' if row['decode'] else 'no':<4}{ours['wall_median_ms']:>9.1f}{theirs['wall_median_ms']:>9.1f}"
            f"{row['ratio_diffusers_over_diffkit']:>7.2f} [{low:.2f}, {high:.2f}]"
            f"{ours['network_median_ms']:>9.1f}{theirs['network_median_ms']:>9.1f}"
            f"{ours['overhead_per_step_median_ms']:>8.2f}{theirs['overhead_per_step_median_ms']:>8.2f}"
            f"{calls:>7}{row['max_relative_difference']:>10.1e}")


def marginal_overheads(rows: list) -> list:
    """Per (model, sampler, s) without decode and two step counts N1 < N2: the outside-network time per added
    step, (outside(N2) - outside(N1)) / (N2 - N1) from the medians, so the per-batch costs (prompt encoding,
    set-up) cancel."""
    out = []
    for low in rows:
        for high in rows:
            same = all(low[k] == high[k] for k in ("model", "sampler", "guidance_scale", "decode"))
            if same and not low["decode"] and low["steps"] < high["steps"]:
                entry = {k: low[k] for k in ("model", "sampler", "guidance_scale")}
                entry["steps"] = [low["steps"], high["steps"]]
                for name in ("diffkit", "diffusers"):
                    added = high[name]["outside_network_median_ms"] - low[name]["outside_network_median_ms"]
                    entry[f"{name}_ms_per_step"] = added / (high["steps"] - low["steps"])
                    entry[f"{name}_per_batch_ms"] = (low[name]["outside_network_median_ms"]
                                                     - low["steps"] * entry[f"{name}_ms_per_step"])
                out.append(entry)
    return out


HEADER = (f"{'model':<9}{'sampler':<11}{'N':>3} {'s':>4} {'dec':<4}{'dk ms':>9}{'df ms':>9}{'df/dk':>7} {'[95%]':<12}"
          f"{'dk net':>9}{'df net':>9}{'dk o/st':>8}{'df o/st':>8}{'calls':>7}{'max rel':>10}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--samplers", default=None, help="restrict to these (ddim, euler, flow-euler)")
    parser.add_argument("--steps", default="4,20")
    parser.add_argument("--scales", default="5,1", help="guidance scales s (1: the unguided path)")
    parser.add_argument("--decode-steps", default="4", help="step counts also timed with the VAE decode ('' none)")
    parser.add_argument("--mid-all", action="store_true", help="sd15-mid at every sampler, --steps and decode row")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--json", default=None,
                        help="default benchmarks/results/sd_pipeline_overhead_<date>.json")
    args = parser.parse_args(argv)
    args.models = parse_list("models", args.models, allowed=MODELS)
    every = sorted({s for model in MODELS for s in SAMPLERS[model]})
    args.samplers = None if args.samplers is None else parse_list("samplers", args.samplers, allowed=every)
    args.steps = parse_list("steps", args.steps, int, low=1)
    args.scales = parse_list("scales", args.scales, float, low=1.0)
    args.decode_steps = parse_list("decode-steps", args.decode_steps, int, low=1)
    if not args.models or not args.steps or not args.scales:
        raise DiffkitError("--models, --steps and --scales each need at least one value")
    check_range("--repeats", args.repeats, 1, integer=True)
    check_range("--bootstrap", args.bootstrap, 0, integer=True)
    check_range("--threads", args.threads, 1, integer=True)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)  # every option checked before any model is built
    torch.set_num_threads(args.threads)
    date = datetime.date.today().isoformat()
    json_path = Path(args.json or ROOT / "benchmarks" / "results" / f"sd_pipeline_overhead_{date}.json")
    todo = [s for s in settings(args.models, args.steps, args.scales, args.decode_steps, args.mid_all)
            if args.samplers is None or s[1] in args.samplers]
    result = {"date": date, "command": "benchmarks/sd_pipeline_overhead.py " + " ".join(argv or sys.argv[1:]),
              "threads": args.threads, "torch": torch.__version__, "prompts": PROMPTS, "rows": []}
    import diffusers
    result["diffusers"] = diffusers.__version__
    print(f"threads {args.threads}, {args.repeats} interleaved repeats, medians; dk = diffkit, df = diffusers; "
          f"net: inside the network forward; o/st: (wall - net) / steps; max rel: max|dk - df| / max|df|")
    print(HEADER)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        built, current = None, None
        for model, sampler, steps, scale, decode in todo:
            if model != current:
                built, current = build(model, Path(tmp) / model), model
            row = measure(built, model, sampler, steps, scale, decode, args.repeats, args.bootstrap)
            result["rows"].append(row)
            print(row_text(row), flush=True)
    result["seconds"] = time.perf_counter() - started
    result["marginal_overhead"] = marginal_overheads(result["rows"])
    if result["marginal_overhead"]:
        print("outside the network: ms per added step / ms per batch (the rest), diffkit vs diffusers")
    for entry in result["marginal_overhead"]:
        print(f"{entry['model']:<9}{entry['sampler']:<11}s={entry['guidance_scale']:<4g} N={entry['steps']}: "
              f"{entry['diffkit_ms_per_step']:6.2f} / {entry['diffkit_per_batch_ms']:6.1f}  vs  "
              f"{entry['diffusers_ms_per_step']:6.2f} / {entry['diffusers_per_batch_ms']:6.1f}")
    write_json(result, json_path)
    print(f"{result['seconds']:.0f} s; wrote {json_path}")
    return result


if __name__ == "__main__":
    try:
        main()
    except DiffkitError as err:
        sys.exit(f"error: {err}")
