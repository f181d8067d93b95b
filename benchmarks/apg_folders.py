"""Adaptive projected guidance on diffusers folders: diffkit's (the paper's, on x_0) against diffusers 0.42.1's guider.

Sadat, Hilliges & Weber 2025 (arXiv:2410.02416), Alg. 1, apply the projection to the denoised prediction D = x0-hat
and return D_c + (s - 1) update. diffusers' ``AdaptiveProjectedGuidance`` applies the same steps to whatever its
pipeline hands it, the network's output (its modular pipelines pass ``noise_pred``: eps for SD 1.x / SD-XL, the
flow velocity u for SD3), and by default (``use_original_formulation=False``) returns pred_u + s update. On the
tiny random folders of the interop tests (``tiny_sd_pipeline``, ``tiny_sd_xl_pipeline``, ``tiny_sd3_pipeline``
without T5, imported from tests/), DDIM / flow Euler on diffkit's default grid, two prompts, w = 6 (s = 7),
APG eta = 0, r = 0.5, beta = -0.5, this prints per model:

* ``x0 vs guider``: max over every guided call of |diffkit's guided x_0 - the guider(use_original_formulation=True,
  guidance_scale=w) on the same call's (x0_c, x0_u)| (each pass its own network call of batch B; diffkit runs them
  as one call of 2B), with the largest |x_0| for scale, and the same for eps = (x_t - alpha x0) / sigma;
* the relative L2 difference of the final latents of diffkit's run and of the same run with the guidance replaced
  by the guider on the network's output, default formulation (diffusers' way), and with
  ``use_original_formulation=True`` on the output (the space alone); then APG against plain CFG for scale.

    OMP_NUM_THREADS=1 DIFFKIT_CPU_KERNELS=0 PYTHONPATH=. python benchmarks/apg_folders.py --steps 10
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the interop tests' tiny pipeline builders

W, APG = 6.0, {"apg_eta": 0.0, "apg_norm_threshold": 0.5, "apg_momentum": -0.5}
PROMPTS = ["a photo of a cat", "hot"]


def load(kind: str, root: Path):
    """(loaded folder, its text_to_image) of the tiny ``kind`` pipeline written to ``root``."""
    from diffkit.interop import sd3, stable_diffusion
    from test_interop_diffusers import tiny_sd_pipeline
    from test_interop_sd3 import tiny_sd3_pipeline
    from test_interop_sd_xl import tiny_sd_xl_pipeline
    build = {"sd": tiny_sd_pipeline, "xl": tiny_sd_xl_pipeline,
             "sd3": lambda r: tiny_sd3_pipeline(r, with_t5=False)}[kind]
    root.mkdir(parents=True)
    build(root).save_pretrained(root / "folder")
    if kind == "sd3":
        return sd3.load_sd3(root / "folder", progress=False), sd3.text_to_image
    return stable_diffusion.load_stable_diffusion(root / "folder", progress=False), stable_diffusion.text_to_image


def guider(original: bool):
    """diffusers' guider with the run's settings and a fresh momentum buffer (its prepare_inputs at step 0)."""
    from diffusers.guiders import AdaptiveProjectedGuidance
    from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer
    g = AdaptiveProjectedGuidance(guidance_scale=W if original else W + 1, eta=APG["apg_eta"],
                                  adaptive_projected_guidance_momentum=APG["apg_momentum"],
                                  adaptive_projected_guidance_rescale=APG["apg_norm_threshold"],
                                  use_original_formulation=original)
    g.momentum_buffer = MomentumBuffer(APG["apg_momentum"])
    return g


def run_with(mode: str, model, t2i, latents, steps: int, stats: dict):
    """Final latents of diffkit's APG run; ``mode``: ``check`` (diffkit's guidance, compared call by call with the
    guider on x_0), ``default`` / ``original`` (the guider on the network's output, diffusers' default formulation
    / use_original_formulation=True, in place of diffkit's guidance)."""
    from diffkit import diffusion
    from diffkit.denoiser import Prediction
    from diffkit.guidance import ClassifierFreeGuidance
    from test_interop_apg import _separate_passes
    ours, g = ClassifierFreeGuidance._guide, guider(mode != "default")
    flow = hasattr(model, "transformer")

    def guided(self, x, t, y, cond, perturbed=None):
        pred = ours(self, x, t, y, dict(cond), perturbed)
        c, n = _separate_passes(self, x, t, y, cond)
        t64 = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        alpha, sigma = (diffusion.expand(f(t64), x).to(x.dtype) for f in (self.schedule.alpha, self.schedule.sigma))
        if mode == "check":
            ref = g.forward(pred_cond=c.x0, pred_uncond=n.x0).pred
            stats["x0"] = max(stats.get("x0", 0.0), float((pred.x0 - ref).abs().max()))
            stats["eps"] = max(stats.get("eps", 0.0), float((pred.eps - (x - alpha * ref) / sigma).abs().max()))
            stats["scale"] = max(stats.get("scale", 0.0), float(ref.abs().max()))
            return pred
        if flow:  # u = eps - x0 on x_flow = x / (alpha + sigma), flow sigma = sigma / (alpha + sigma)
            u = g.forward(pred_cond=c.eps - c.x0, pred_uncond=n.eps - n.x0).pred
            x0 = (x - sigma * u) / (alpha + sigma)
        else:
            x0 = (x - sigma * g.forward(pred_cond=c.eps, pred_uncond=n.eps).pred) / alpha
        return Prediction(eps=(x - alpha * x0) / sigma, x0=x0)

    ClassifierFreeGuidance._guide = guided
    try:
        with torch.no_grad():
            return t2i(model, PROMPTS, steps=steps, guidance_scale=W, convention="seed", latents=latents,
                       return_latents=True, **APG)
    finally:
        ClassifierFreeGuidance._guide = ours


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    root, results = Path(tempfile.mkdtemp()), {}
    for kind in ("sd", "xl", "sd3"):
        model, t2i = load(kind, root / kind)
        latents = torch.randn(model.latent_shape(len(PROMPTS)), generator=torch.Generator().manual_seed(7))
        stats = {}
        runs = {mode: run_with(mode, model, t2i, latents, args.steps, stats) for mode in ("check", "default",
                                                                                           "original")}
        with torch.no_grad():
            runs["cfg"] = t2i(model, PROMPTS, steps=args.steps, guidance_scale=W, convention="seed", latents=latents,
                              return_latents=True)

        def rel(a, b):
            return float((runs[a] - runs[b]).norm() / runs[b].norm())
        results[kind] = {**stats, "default": rel("default", "check"), "original": rel("original", "check"),
                         "cfg": rel("check", "cfg")}
        r = results[kind]
        print(f"{kind:4s} x0 vs guider {r['x0']:.1e} (max |x0| {r['scale']:.1f}), eps {r['eps']:.1e}; final latents, "
              f"rel. L2: guider on the output, default {r['default']:.3f}, original formulation {r['original']:.3f}; "
              f"APG vs CFG {r['cfg']:.3f}")
    return results


if __name__ == "__main__":
    main()
