"""Bit-for-bit probe: every registered sampler, the variational bound and the schedule / posterior
functions on fixed analytic models and seeds, saved to a file, so that two checkouts (before and
after a change meant to leave every result bit unchanged) can be compared with ``torch.equal``.

    PYTHONPATH=/path/to/old OMP_NUM_THREADS=1 python benchmarks/bitwise_probe.py --save /tmp/old.pt
    PYTHONPATH=.            OMP_NUM_THREADS=1 python benchmarks/bitwise_probe.py --save /tmp/new.pt
    python benchmarks/bitwise_probe.py --compare /tmp/old.pt /tmp/new.pt

Covers: each sampler of ``diffkit.samplers.registry.REGISTRY`` (10 steps; the adaptive ones on their
own grid) in float32 and float64, epsilon and v prediction, seed 0, plus DDPM on the full 1000 steps
with each variance type (and the DDPM function on a bfloat16 state), DDIM's sigma-hat and thresholded DDIM; the
bound (:func:`diffkit.likelihood.variational_bound`)
with fixed and learned variance; the schedule maps at scalar / tensor / fractional times on a
linear, a cosine and a zero-terminal-SNR schedule; the posterior coefficients and reverse-step
variances of :mod:`diffkit.diffusion` (to clean data too); the training losses. A result that is an
error is compared by its message. About 30 s on one core.
"""
from __future__ import annotations

import argparse
import sys

import torch

from diffkit import Denoiser, NoiseSchedule, diffusion, sample
from diffkit.analytic import GaussianMixture
from diffkit.likelihood import variational_bound
from diffkit.losses import training_losses, vlb_term_bpd
from diffkit.samplers.ddpm import ddpm
from diffkit.samplers.registry import REGISTRY


def _v_net(eps_net, schedule):
    """The same analytic model answering in v: v = alpha eps - sigma x0 at the network's times."""
    def net(x, t, **cond):
        eps = eps_net(x, t, **cond)
        t64 = t.detach().cpu().double()
        a = schedule.alpha(t64).to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
        s = schedule.sigma(t64).to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
        return a * eps - s * (x - s * eps) / a
    return net


def _record(out: dict, key: str, fn) -> None:
    try:
        value = fn()
    except Exception as err:  # noqa: BLE001 - an error is a result too
        out[key] = f"{type(err).__name__}: {err}"
        return
    if isinstance(value, torch.Tensor):
        out[key] = value.detach().cpu().clone()
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            out[f"{key}[{i}]"] = v.detach().cpu().clone() if isinstance(v, torch.Tensor) else repr(v)
    else:
        out[key] = repr(value)


def probe(quick: bool = False) -> dict:
    out: dict = {}
    linear = NoiseSchedule.linear()
    cosine = NoiseSchedule.cosine()
    zts = NoiseSchedule.from_name("scaled_linear", 1000, zero_terminal_snr=True)
    mix = GaussianMixture.random(4, 2, seed=0)
    x_init = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))

    # ---- schedule maps
    scalar_times = [-1, -1.0, 0, 0.0, 0.5, 1, 7.25, 500, 998.5, 999, 999.0, 123.456789]
    for name, sch in (("linear", linear), ("cosine", cosine), ("zts", zts)):
        for fn in ("log_alpha", "alpha", "sigma", "alpha_bar", "log_snr", "karras_sigma"):
            for t in scalar_times:
                _record(out, f"{name}.{fn}({t!r})", lambda: getattr(sch, fn)(t))
            for t in (torch.tensor(3.0), torch.tensor(3.5, dtype=torch.float32), torch.tensor([998.25]),
                      torch.linspace(-1, 999, 77), torch.arange(1000), torch.tensor([[1.5, 2.0]])):
                _record(out, f"{name}.{fn}(tensor{tuple(t.shape)}{t.dtype}{float(t.flatten()[0])})",
                        lambda: getattr(sch, fn)(t))
            for bad in (-1.5, 1000, float("nan"), torch.tensor([0.0, 1e9])):
                _record(out, f"{name}.{fn}(bad {bad!r})", lambda: getattr(sch, fn)(bad))
        grid = torch.linspace(-1, 999, 41, dtype=torch.float64)
        _record(out, f"{name}.t_from_log_alpha", lambda: sch.t_from_log_alpha(sch.log_alpha(grid)))
        _record(out, f"{name}.t_from_log_snr", lambda: sch.t_from_log_snr(sch.log_snr(grid[1:])))

        # ---- posterior / reverse-step variances
        for t, s in ((torch.tensor(5.0, dtype=torch.float64), torch.tensor(4.0, dtype=torch.float64)),
                     (torch.tensor(0.0, dtype=torch.float64), torch.tensor(-1.0, dtype=torch.float64)),
                     (torch.tensor(40.0, dtype=torch.float64), torch.tensor(-1.0, dtype=torch.float64)),
                     (torch.tensor([3.0, 0.0, 999.0], dtype=torch.float64), None),
                     (torch.tensor(999.0, dtype=torch.float64), torch.tensor(950.0, dtype=torch.float64)),
                     (7, 2.5)):
            key = f"{name}.post({t!r},{s!r})"
            _record(out, key + ".coef", lambda: diffusion.posterior_coefficients(sch, t, s))
            _record(out, key + ".clipped", lambda: diffusion.clipped_log_variance(
                sch, t, diffusion.as_cpu_times(t) - 1 if s is None else s))
            for vt in diffusion.VARIANCE_TYPES:
                vv = torch.linspace(-1, 1, 6 * 4).reshape(6, 4)
                _record(out, f"{key}.mlv.{vt}", lambda: diffusion.model_log_variance(
                    sch, t, diffusion.as_cpu_times(t) - 1 if s is None else s, vt, vv, like=x_init))
                _record(out, f"{key}.pmv.{vt}", lambda: diffusion.p_mean_variance(
                    sch, x_init, x_init * 0.5, t, s, vt, vv))
            _record(out, key + ".qpmv", lambda: diffusion.posterior_mean_variance(sch, x_init * 0.3, x_init, t, s))

        # ---- vlb terms and training losses
        x0 = (torch.randint(0, 256, (6, 4), generator=torch.Generator().manual_seed(2)) / 127.5 - 1).float()
        tt = torch.tensor([0, 1, 2, 500, 998, 999])
        noise = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
        for vt in diffusion.VARIANCE_TYPES:
            _record(out, f"{name}.vlb_term.{vt}", lambda: vlb_term_bpd(sch, x0, x_init, tt, x0 * 0.9, vt,
                                                                         torch.zeros_like(x0)))
        net = mix.network(sch, learned_variance=True)
        for loss in ("simple", "hybrid", "vlb"):
            _record(out, f"{name}.loss.{loss}", lambda: tuple(
                v for v in vars(training_losses(net, sch, x0, tt, noise, loss_type=loss, learned_variance=True,
                                                prediction_type="v_prediction")).values()))

    # ---- samplers
    names = list(REGISTRY)
    for dtype in (torch.float32, torch.float64):
        for pred in ("epsilon", "v_prediction"):
            net = mix.network(linear)
            den = Denoiser(net if pred == "epsilon" else _v_net(net, linear), linear, prediction_type=pred)
            for name in names:
                steps = None if REGISTRY[name].adaptive else 10
                _record(out, f"sample.{name}.{dtype}.{pred}", lambda: sample(
                    den, x_init.to(dtype), sampler=name, steps=steps, seed=0, progress=False))
            _record(out, f"sample.ddim-eta.{dtype}.{pred}", lambda: sample(
                den, x_init.to(dtype), sampler="ddim", steps=20, seed=0, progress=False, eta=0.7))
            _record(out, f"sample.ddim-sigma-hat.{dtype}.{pred}", lambda: sample(
                den, x_init.to(dtype), sampler="ddim", steps=20, seed=0, progress=False, eta="sigma_hat"))
            _record(out, f"sample.ddim-thr.{dtype}.{pred}", lambda: sample(
                den, x_init.to(dtype), sampler="ddim", steps=20, seed=0, progress=False, thresholding="dynamic"))
            zden = Denoiser(mix.network(zts), zts)  # zero terminal SNR: ddpm starts at alpha_bar = 0
            for name in ("ddpm", "ddim", "unipc", "euler", "dpm-solver++-2m"):
                _record(out, f"sample.zts.{name}.{dtype}.{pred}", lambda: sample(
                    zden, x_init.to(dtype), sampler=name, steps=10, seed=0, progress=False))
    grid = torch.tensor([999.0, 900.0, 700.0, 500.0, 300.0, 100.0, 30.0, 5.0, 0.0, -1.0], dtype=torch.float64)
    for vt in diffusion.VARIANCE_TYPES:  # the sampler itself on a bfloat16 state (sample() keeps float32)
        den = Denoiser(mix.network(linear, learned_variance=True), linear, learned_variance=True)
        _record(out, f"ddpm-fn.{vt}.bf16", lambda: ddpm(den, x_init.to(torch.bfloat16), grid, variance_type=vt,
                                                        generator=torch.Generator().manual_seed(0)))
    for dtype in (torch.float32, torch.float64):
        den = Denoiser(mix.network(linear, learned_variance=True), linear, learned_variance=True)
        for vt in diffusion.VARIANCE_TYPES:
            steps = 100 if quick else 1000
            _record(out, f"sample.ddpm{steps}.{vt}.{dtype}", lambda: sample(
                den, x_init.to(dtype), sampler="ddpm", steps=steps, seed=0, progress=False, variance_type=vt))
            _record(out, f"sample.ddpm25.{vt}.{dtype}", lambda: sample(
                den, x_init.to(dtype), sampler="ddpm", steps=25, seed=0, progress=False, variance_type=vt))

    # ---- the variational bound
    x0 = (torch.randint(0, 256, (3, 4), generator=torch.Generator().manual_seed(4)) / 127.5 - 1).float()
    for lv in (False, True):
        den = Denoiser(mix.network(linear, learned_variance=lv), linear, learned_variance=lv)
        for ts in ([0, 1, 2, 5, 10, 50, 200, 999], None if not quick else list(range(0, 1000, 7))):
            _record(out, f"vlb.lv={lv}.ts={'all' if ts is None else len(ts)}", lambda: tuple(vars(variational_bound(
                den, x0, timesteps=ts, generator=torch.Generator().manual_seed(5))).values()))
    return out


def compare(a: dict, b: dict) -> int:
    bad = 0
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            print(f"MISSING in {'old' if key not in a else 'new'}: {key}")
            bad += 1
            continue
        u, v = a[key], b[key]
        if isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor):
            same = u.dtype == v.dtype and u.shape == v.shape and torch.equal(u, v) or (
                u.dtype == v.dtype and u.shape == v.shape and torch.equal(u.isnan(), v.isnan())
                and torch.equal(u.nan_to_num(), v.nan_to_num()))
        else:
            same = u == v
        if not same:
            bad += 1
            print(f"DIFFERS: {key}: {u if not isinstance(u, torch.Tensor) else u.flatten()[:4]} vs "
                  f"{v if not isinstance(v, torch.Tensor) else v.flatten()[:4]}")
    errors = sum(isinstance(v, str) and ":" in v and v.split(":")[0].endswith("Error") for v in a.values())
    print(f"{len(a)} results ({errors} of them errors), {bad} differ")
    return bad


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--save", metavar="FILE", help="run the probe and save its results")
    parser.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="compare two saved results bit for bit")
    parser.add_argument("--quick", action="store_true", help="DDPM 100 steps and a strided bound instead of all 1000")
    args = parser.parse_args(argv)
    if args.save:
        torch.save(probe(args.quick), args.save)
    if args.compare:
        return 1 if compare(torch.load(args.compare[0]), torch.load(args.compare[1])) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
