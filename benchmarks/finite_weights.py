"""What refusing non-finite weights at load costs (``diffkit.interop.check_finite_model``, run by diffkit's
``from_pretrained`` on every UNet / transformer / VAE / text encoder / ControlNet / image encoder it reads).

Prints, best of 3: (1) for an SD 1.5-size ``UNet2DConditionModel`` (diffusers' default config, 872M parameters,
float32, random weights saved to a temporary folder, so read from the page cache) the time of diffkit's
``from_pretrained`` of it with the check and without it (``check_finite_model`` replaced by the identity), and of
the check alone, with ``torch.aminmax`` (what diffkit uses) and with ``torch.isfinite(t).all()``; (2) the same for
the tiny SD3 folder of the tests (``tests/test_interop_sd3.py``: ``load_sd3``).

    OMP_NUM_THREADS=1 DIFFKIT_CPU_KERNELS=0 PYTHONPATH=.:tests python benchmarks/finite_weights.py
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def best(call, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def isfinite_all(tensors: dict) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


def report(label: str, load, state: dict) -> None:
    import diffkit.interop as interop
    from diffkit.lora_files import first_non_finite
    n = sum(t.numel() for t in state.values() if t.is_floating_point())
    checked = best(load)
    check = interop.check_finite_model
    interop.check_finite_model = lambda model, directory, flag="--checkpoint": model
    try:
        unchecked = best(load)
    finally:
        interop.check_finite_model = check
    print(f"{label}: {n / 1e6:.1f}M parameters; load {unchecked:.3f} s unchecked, {checked:.3f} s checked; the "
          f"check alone with aminmax {best(lambda: first_non_finite(state)):.4f} s, with isfinite().all() "
          f"{best(lambda: isfinite_all(state)):.4f} s")


def main() -> None:
    import diffusers

    from diffkit.interop import from_pretrained
    from diffkit.interop.sd3 import load_sd3
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as root:
        from safetensors.torch import save_file
        with torch.device("meta"):
            meta = diffusers.UNet2DConditionModel()
        state = {k: torch.randn(v.shape) * 0.02 for k, v in meta.state_dict().items()}
        meta.save_config(Path(root) / "unet")
        save_file(state, Path(root) / "unet" / "diffusion_pytorch_model.safetensors")
        del meta
        report("SD 1.5-size UNet", lambda: from_pretrained(diffusers.UNet2DConditionModel, Path(root) / "unet",
                                                          local_files_only=True, use_safetensors=True,
                                                          low_cpu_mem_usage=False), state)
        del state
        from test_interop_sd3 import tiny_sd3_pipeline
        tiny_sd3_pipeline(Path(root), True).save_pretrained(Path(root) / "sd3")
        sd3 = load_sd3(Path(root) / "sd3", progress=False)
        tiny = {f"{part}.{k}": v for part in ("transformer", "vae", "text_encoder", "text_encoder_2",
                                               "text_encoder_3") for k, v in getattr(sd3, part).state_dict().items()}
        report("tiny SD3 folder (5 models)", lambda: load_sd3(Path(root) / "sd3", progress=False), tiny)


if __name__ == "__main__":
    main()
