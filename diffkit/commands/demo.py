"""``diffkit demo``: train a small U-Net on the embedded digits (no download), then sample a grid.

The whole run takes a few minutes on 2 CPU cores. The configuration is ``DEMO_CONFIG`` below:
scikit-learn's 1797 handwritten 8x8 digits upscaled to 16x16, a 3-level U-Net with attention at
8x8, DDPM's linear schedule, L_simple, AdamW with the seed's warm-up (x2 over the first 5% of the steps)
and cosine decay, EMA; then DDIM with 50 steps for the 64-image grid (drawn 4x larger).
"""
from __future__ import annotations

from pathlib import Path

from ._common import add_progress_flag, check_writable_dir, path_arg, positive_int, run_folder_lock

DEMO_CONFIG = {
    "dataset": "digits", "img_size": 16, "channel": 32, "channel_mult": [1, 2, 2], "attn": [1],
    "num_res_blocks": 1, "dropout": 0.0, "batch_size": 64, "lr": 1e-3, "multiplier": 2.0,
    "warmup_fraction": 0.05, "grad_clip": 1.0, "ema_decay": 0.999, "ema_warmup": True, "T": 1000,
    "beta_1": 1e-4, "beta_T": 0.02, "max_steps": 1500, "save_every_epochs": 10, "log_every": 25,
    "sample_steps": 50, "sampler": "ddim", "nrow": 8, "seed": 0, "device": "auto",
    "sampledImgName": "samples.png", "sampledNoisyImgName": "noise.png",
}


def register(sub) -> None:
    p = sub.add_parser("demo", help="train on the embedded digits, then sample a grid", description=__doc__)
    p.add_argument("--out", type=path_arg, default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--steps", type=positive_int, help=f"training steps (default {DEMO_CONFIG['max_steps']})")
    p.add_argument("--device", help="auto (default), cpu, cuda, mps")
    add_progress_flag(p)
    p.set_defaults(func=run)


def demo_config(out: str, steps=None, device=None):
    from ..config import TrainConfig
    data = dict(DEMO_CONFIG)
    data["save_weight_dir"] = str(Path(out) / "checkpoints")
    data["sampled_dir"] = str(Path(out) / "samples")
    if steps:
        data["max_steps"] = steps
    if device:
        data["device"] = device
    return TrainConfig.from_dict(data)


def replace_earlier_demo_run(folder, remove: bool = True) -> bool:
    """A demo run starts fresh: an earlier demo run in its checkpoint folder (recognised by the
    demo's data set and network in its ``latest.safetensors``) is removed, files the demo writes
    only; a folder holding any other run is refused, as ``diffkit train`` refuses it. With
    ``remove=False`` only the check is made. Returns whether there was an earlier demo run."""
    from ..checkpoint import peek_metadata
    from .train import check_no_run_in
    folder = Path(folder)
    latest = folder / "latest.safetensors"
    if not latest.is_file():
        return False
    saved = (peek_metadata(latest) or {}).get("config") or {}
    if any(saved.get(key) != DEMO_CONFIG[key] for key in ("dataset", "img_size", "channel", "channel_mult", "attn")):
        check_no_run_in(folder)  # not a demo run: refused with the --resume command
    if not remove:
        return True
    for path in [latest, folder / "train_log.csv", folder / "loss_curve.png", *folder.glob("ckpt_*.safetensors")]:
        path.unlink(missing_ok=True)
    return True


def run(args) -> int:
    from ..config import resolve_device
    from .train import train_and_sample
    cfg = demo_config(args.out, args.steps, args.device)
    resolve_device(cfg.device)  # every check before the earlier demo run is replaced
    replace_earlier_demo_run(cfg.save_weight_dir, remove=False)
    check_writable_dir(cfg.save_weight_dir, "checkpoint directory")
    check_writable_dir(cfg.sampled_dir, "sample directory")
    with run_folder_lock(cfg.save_weight_dir):  # a demo running into this folder now is left alone
        if replace_earlier_demo_run(cfg.save_weight_dir):
            print(f"replacing the earlier demo run in {args.out}", flush=True)
        code = train_and_sample(cfg, progress=args.progress, scale=4)  # 16x16 digits: show them 4x larger
    if code == 0:  # stopped by a signal: train_and_sample printed the resume command, and there is no grid
        print(f"demo done: look at {Path(cfg.sampled_dir) / cfg.sampledImgName}")
    return code
