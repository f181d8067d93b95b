"""CLIP guidance's mechanism: does the guided samples' CLIP similarity to the prompt rise with the
scale s? (docs/guidance.md, "CLIP guidance"; BENCHMARKS.md.)

The CLIP has RANDOM weights (diffkit.clip.write_random_clip: ViT with 16x16 inputs, 4x4 patches,
width 32, one layer, character tokenizer), so this shows the mechanism only, never image quality
or image-text agreement. The diffusion model is tiny and exact: the eps* of a Gaussian mixture of
8x8 RGB images (diffkit.analytic.GaussianMixture.random(192, 4), read as (3, 8, 8); linear schedule,
T = 1000), so the unguided samples follow the data distribution exactly and the mixture's
log-density of the samples measures how far guidance pulls them off it. For each mode (``x0``:
cos(f(x0-hat(x_t)), g(c)) through the model, the default; ``x_t``: the same CLIP on x_t, GLIDE's
formula with an unnoised CLIP standing in for a noise-aware one) and scale, ``--num`` samples
from the same noise seeds, DDIM ``--steps`` steps (eta = 0); reported: the mean cosine similarity
to the prompt and to another prompt (both with the standard error of the mean) and the mean
log-density per dimension under the mixture.

    OMP_NUM_THREADS=1 DIFFKIT_CPU_KERNELS=0 PYTHONPATH=. python benchmarks/clip_guidance_probe.py
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import diffkit  # noqa: E402
from diffkit import Denoiser, NoiseSchedule  # noqa: E402
from diffkit.analytic import GaussianMixture  # noqa: E402
from diffkit.clip import load_clip, write_random_clip  # noqa: E402
from diffkit.evaluation import write_json  # noqa: E402
from diffkit.guidance import CLIP_INPUTS, CLIPGuidance  # noqa: E402

SHAPE = (3, 8, 8)


def scales(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or any(not (math.isfinite(v) and v >= 0) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: scales must be finite numbers >= 0")
    return values


def mean_sem(values: torch.Tensor) -> tuple[float, float]:
    return values.mean().item(), (values.std() / math.sqrt(values.numel())).item()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=scales, default=scales("0,10,30,100,300,1000"))
    parser.add_argument("--num", type=int, default=64, help="samples per setting (default 64)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    parser.add_argument("--prompt", default="a red square")
    parser.add_argument("--other-prompt", default="a blue circle", help="a control prompt, not guided towards")
    parser.add_argument("--clip-seed", type=int, default=0)
    parser.add_argument("--mixture-seed", type=int, default=0)
    parser.add_argument("--name", default="clip_guidance_probe")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    schedule = NoiseSchedule.linear(1000)
    mixture = GaussianMixture.random(math.prod(SHAPE), 4, seed=args.mixture_seed, spread=0.5, scale=0.3)
    den = Denoiser(mixture.network(schedule), schedule)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        write_random_clip(folder, image_size=16, patch_size=4, width=32, projection_dim=16, seed=args.clip_seed)
        clip = load_clip(folder, progress=False)
    text = clip.text_embeddings([args.prompt])[0]
    prompt_cos = (text @ clip.text_embeddings([args.other_prompt])[0]).item()
    for on in CLIP_INPUTS:
        for s in args.scales:
            tick = time.perf_counter()
            guided = CLIPGuidance(den, clip, text, s, on=on)
            x = diffkit.sample(guided, (args.num, *SHAPE), "ddim", steps=args.steps, seed=0, progress=False)
            seconds = time.perf_counter() - tick
            sims = clip.similarity(x.float(), [args.prompt, args.other_prompt])
            (sim, sim_sem), (other, other_sem) = mean_sem(sims[:, 0]), mean_sem(sims[:, 1])
            log_density = (mixture.log_prob(x.reshape(args.num, -1).double()) / x[0].numel()).mean().item()
            rows.append({"on": on, "scale": s, "similarity": sim, "similarity_sem": sim_sem,
                         "other_prompt_similarity": other, "other_prompt_similarity_sem": other_sem,
                         "log_density_per_dim": log_density, "finite": bool(torch.isfinite(x).all()),
                         "seconds": seconds})
            print(f"{on:>3} s={s:<6g} cos(prompt) {sim:+.4f} +- {sim_sem:.4f}   cos(other) {other:+.4f} +- "
                  f"{other_sem:.4f}   log p / dim {log_density:+.3f}   {seconds:.1f} s", flush=True)
    report = {
        "benchmark": args.name, "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/clip_guidance_probe.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {**vars(args), "out": os.path.relpath(Path(args.out).resolve(), ROOT)},
        "note": "random-weight CLIP: the mechanism of CLIP guidance, not image quality or text agreement",
        "cos_between_the_two_prompts": prompt_cos,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows,
    }
    path = write_json(report, Path(args.out) / f"{args.name}_{report['date']}.json")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
