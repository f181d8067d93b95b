"""Re-make the reference MNIST model and evaluator of the MNIST tables and check them bit for bit.

The tables of ``benchmarks/mnist_tables.sh REFERENCE=1`` are made for one fixed model and
evaluator, so that the committed score ledger (``benchmarks/results/mnist_tables.json``) can be
finished one cell at a time over many sessions. The weights are not kept in the repository; their
recipe and the digests of their tensors are (``benchmarks/reference/manifest.json``). This script
follows the recipe - 1665 steps of the L_simple ``MNIST_CONFIG`` of ``benchmarks/mnist_quality.py``
on 2 CPU threads, its EMA weights exported with ``diffkit convert``; the evaluator of ``diffkit
train-evaluator`` on the 60000 training images - into ``--out-dir`` (default
``benchmarks/out/reference``, about 18 minutes on 2 CPU cores; the training run's checkpoints go
beside it, to ``<out-dir>-run``, so the folder holds only the two files, 6 MB to carry to a GPU
machine) and compares the digests.

Training is deterministic on one CPU type and thread count (same seed, same data order, no
nondeterministic kernels), so a match is expected on the machines of this project; on other
hardware the weights differ in the last bits, the script says so (exit status 3), and a ledger run
with those files records its cells under their own identity instead of reusing the committed ones.

    python benchmarks/make_reference.py              # make what is missing, then check
    python benchmarks/make_reference.py --check      # only check existing files
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from diffkit.checkpoint import tensors_digest  # noqa: E402
from diffkit.cli import main as diffkit_main  # noqa: E402
from diffkit.config import TrainConfig  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.loading import export_weights, load_denoiser  # noqa: E402
from diffkit.metrics.evaluator import load_evaluator  # noqa: E402
from diffkit.sample_cache import denoiser_identity  # noqa: E402
from mnist_quality import MNIST_CONFIG, train_for_steps  # noqa: E402

MANIFEST = ROOT / "benchmarks" / "reference" / "manifest.json"


def make_model(manifest: dict, out: Path, data_dir: str) -> None:
    recipe = manifest["model"]["recipe"]
    torch.set_num_threads(recipe["threads"])
    run_dir = out.parent / f"{out.name}-run"  # beside, not inside: out/ stays small enough to carry
    cfg = TrainConfig.from_dict({**MNIST_CONFIG, "data_dir": data_dir, "loss": recipe["loss"],
                                 "learned_variance": False, "device": "cpu",
                                 "save_weight_dir": str(run_dir / "checkpoints"),
                                 "sampled_dir": str(run_dir / "samples")})
    training = train_for_steps(cfg, recipe["steps"])
    print(f"model: {training['steps']} steps in {training['seconds']:.0f} s, loss {training['final_loss']:.4f}")
    export_weights(training["checkpoint"], out / manifest["model"]["file"], use_ema=True)


def make_evaluator(manifest: dict, out: Path, data_dir: str) -> None:
    recipe = manifest["evaluator"]["recipe"]
    torch.set_num_threads(recipe["threads"])
    rc = diffkit_main(["train-evaluator", "--dataset", "mnist", "--data-dir", data_dir, "--img-size", "28",
                       "--epochs", str(recipe["epochs"]), "--device", "cpu",
                       "--out", str(out / manifest["evaluator"]["file"])])
    if rc:
        raise SystemExit(rc)


def digests(manifest: dict, out: Path) -> dict:
    model = load_denoiser(out / manifest["model"]["file"], device="cpu")
    evaluator = load_evaluator(out / manifest["evaluator"]["file"])
    return {"model": denoiser_identity(model)["weights"], "evaluator": tensors_digest(evaluator.state_dict())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "out" / "reference"))
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    p.add_argument("--check", action="store_true", help="only compare the digests of existing files")
    args = p.parse_args(argv)
    manifest = json.loads(MANIFEST.read_text())
    out = Path(args.out_dir)
    if not args.check:
        out.mkdir(parents=True, exist_ok=True)
    try:
        for part, make in (("model", make_model), ("evaluator", make_evaluator)):
            path = out / manifest[part]["file"]
            if path.exists():
                print(f"{part}: {path} exists")
            elif args.check:
                raise DiffkitError(f"{path} is missing; run without --check to make it")
            else:
                start = time.perf_counter()
                make(manifest, out, args.data_dir)
                print(f"{part}: made {path} in {time.perf_counter() - start:.0f} s")
        found = digests(manifest, out)
    except DiffkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    mismatched = [part for part in found if found[part] != manifest[part]["tensors_digest"]]
    for part, digest in found.items():
        state = ("matches" if part not in mismatched
                 else f"DIFFERS from the manifest's {manifest[part]['tensors_digest'][:16]}")
        print(f"{part}: tensors digest {digest[:16]} {state}")
    if mismatched:
        print(f"warning: {', '.join(mismatched)} not bit-identical to the reference (other hardware or "
              "software?); ledger cells will be recorded under these files' own identity", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
