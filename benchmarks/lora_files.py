"""LoRA adapter files (docs/fine_tuning.md): their size against the checkpoints, and the load time they add.

For two networks (the fine-tuning benchmark's 0.70M-parameter U-Net at 16x16 and the seed's CIFAR-10
U-Net, channel 128, channel_mult [1,2,2,2], attention at 16x16, 2 residual blocks, 32x32), trains a base 1
step on the bundled digits and a LoRA run (rank 4, attention; and attention + residual blocks) 1 step from
it (sizes do not depend on the steps), then reports: the base's weights-only export (``diffkit convert
--out``), the LoRA training checkpoint, the adapter file (``diffkit convert --lora-only``), and the median
wall time of ``load_denoiser`` over 5 loads of the base alone, the base with ``lora=[adapter]`` and the
self-contained LoRA checkpoint (one CPU thread). Writes benchmarks/results/lora_files_<date>.json.

    PYTHONPATH=. OMP_NUM_THREADS=1 DIFFKIT_CPU_KERNELS=0 python benchmarks/lora_files.py
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffkit.commands.train import fine_tune_fields  # noqa: E402
from diffkit.config import TrainConfig  # noqa: E402
from diffkit.loading import export_weights, load_denoiser  # noqa: E402
from diffkit.lora_files import export_adapter  # noqa: E402
from diffkit.training import Trainer  # noqa: E402

NETWORKS = {
    "fine-tuning benchmark (16x16)": {"img_size": 16, "channel": 32, "channel_mult": [1, 2], "attn": [1],
                                      "num_res_blocks": 1},
    "seed CIFAR-10 U-Net (32x32)": {"img_size": 32, "channel": 128, "channel_mult": [1, 2, 2, 2], "attn": [1],
                                    "num_res_blocks": 2},
}
TARGETS = ("attention", "attention,resblock")


def median_load_seconds(path, repeats: int = 5, **kw) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        load_denoiser(path, **kw)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, net in NETWORKS.items():
            common = {"dataset": "digits", "batch_size": 4, "max_steps": 1, "dropout": 0.0, "device": "cpu",
                      "num_heads": 1, "log_every": 1, **net}
            folder = tmp / name.split()[0]
            base = Trainer(TrainConfig.from_dict({**common, "save_weight_dir": str(folder / "base")}),
                           progress=False, log=lambda *_: None).run().checkpoint
            weights = export_weights(base, folder / "base_weights.safetensors")
            for targets in TARGETS:
                given = {**common, "lora_rank": 4, "lora_targets": targets,
                         "save_weight_dir": str(folder / targets.replace(",", "_"))}
                lora = Trainer(TrainConfig.from_dict(fine_tune_fields(base, given)), progress=False,
                               log=lambda *_: None).run().checkpoint
                adapter = export_adapter(lora, folder / f"{targets.replace(',', '_')}.safetensors")
                parameters = sum(p.numel() for p in load_denoiser(base).model.parameters())
                row = {"network": name, "parameters": parameters, "lora_rank": 4, "lora_targets": targets,
                       "base_weights_mib": weights.stat().st_size / 2**20,
                       "lora_checkpoint_mib": lora.stat().st_size / 2**20,
                       "adapter_kib": adapter.stat().st_size / 2**10,
                       "load_base_s": median_load_seconds(weights),
                       "load_base_plus_adapter_s": median_load_seconds(weights, lora=[adapter]),
                       "load_lora_checkpoint_s": median_load_seconds(lora)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"lora_files_{datetime.date.today().isoformat()}.json"
    path.write_text(json.dumps({"torch": torch.__version__, "threads": 1, "rows": rows}, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
