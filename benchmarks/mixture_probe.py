"""What the 8-d RMS probes share (flip_anatomy.py, start_offset.py, rms_cell_spread.py): their
command line's checks, made before the reference ODE solution (about a minute) is computed, the
list of every deterministic sampler of both libraries, and the cached reference solution.

Every mistake is one line on stderr and exit status 2: a sampler spec that is not
``NAME[@SPACING][:FINAL]:NFE`` or cannot spend that NFE, a diffusers label that is not a
deterministic setting of ``samplers.diffusers_configs`` or cannot spend the NFE, a count below 1, and
a ``--cache`` file written for another mixture, noise seeds or ``--samples``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import samplers as bench
from diffkit.errors import DiffkitError
from diffkit.samplers import REGISTRY
from diffkit.sampling import sampler_grid


class Parser(argparse.ArgumentParser):
    """argparse whose own errors (a bad integer, a missing flag) are one line, as the scripts' checks."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return int(text)


def nfe_list(text: str) -> list:
    """``15,20`` -> [15, 20] (each an integer >= 1)."""
    try:
        return [positive_int(v) for v in text.split(",")]
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated NFEs, integers >= 1 ({err})") from None


def deterministic_diffusers() -> dict:
    """label -> (scheduler class name, kwargs) of the benchmark's deterministic diffusers settings."""
    return {label: (cls, kw) for label, cls, kw, det in bench.diffusers_configs() if det}


def check_diffkit_spec(den, spec: str) -> tuple:
    """``NAME[@SPACING][:FINAL]:NFE`` -> (name, nfe, spacing, final) when that sampler can spend the NFE
    on that grid; a DiffkitError naming the spec otherwise."""
    try:
        name, nfe, spacing, final = bench.parse_profile(spec)
        sampler_grid(den, REGISTRY[name], nfe=nfe, spacing=spacing, final=final)
    except (DiffkitError, ValueError) as err:
        raise DiffkitError(f"{spec!r}: {err}") from None
    return name, nfe, spacing, final


def check_diffusers_label(label: str, nfe: int, configs=None) -> int:
    """The num_inference_steps giving ``nfe`` model calls for a deterministic diffusers ``label``; a
    DiffkitError if the label is unknown or cannot spend exactly ``nfe``."""
    configs = deterministic_diffusers() if configs is None else configs
    if label not in configs:
        raise DiffkitError(f"{label!r} is not a deterministic setting of samplers.diffusers_configs; "
                           f"allowed: {', '.join(configs)}")
    steps = bench.diffusers_steps_for_nfe(*configs[label], nfe)
    if steps is None:
        raise DiffkitError(f"{label!r} cannot spend exactly {nfe} model calls")
    return steps


def all_deterministic_specs(den, nfe: int, configs=None) -> tuple:
    """([diffkit ``NAME:NFE``], [diffusers labels]) of every deterministic sampler of either library
    (registered defaults; not adaptive) that can spend exactly ``nfe`` model calls."""
    configs = deterministic_diffusers() if configs is None else configs
    mine = [f"{name}:{nfe}" for name, info in REGISTRY.items() if not info.stochastic and not info.adaptive]
    mine = [spec for spec in mine if _spends(den, spec)]
    theirs = [label for label, (cls, kw) in configs.items() if bench.diffusers_steps_for_nfe(cls, kw, nfe) is not None]
    return mine, theirs


def _spends(den, spec: str) -> bool:
    try:
        check_diffkit_spec(den, spec)
    except DiffkitError:
        return False
    return True


def reference(cache: Path | None, mixture_index: int, samples: int, eps_fn, schedule, x_T) -> torch.Tensor:
    """The accurate ODE endpoints of ``x_T`` (samplers.reference_ode), kept in ``cache`` with what they
    were computed for (mixture, noise seeds, samples per seed); a cache written for anything else is
    refused (DiffkitError) rather than silently used."""
    key = {"mixture": dict(bench.MIXTURES[mixture_index]), "noise_seeds": [int(s) for s in bench.NOISE_SEEDS],
           "samples": int(samples)}
    if cache is not None and cache.exists():
        try:
            stored = torch.load(cache)
        except Exception as err:
            raise DiffkitError(f"--cache {cache}: not a reference cache of these scripts ({err})") from None
        if not isinstance(stored, dict) or stored.get("key") != key:
            was = stored.get("key") if isinstance(stored, dict) else "no record (an older cache)"
            raise DiffkitError(f"--cache {cache} holds the reference of {was}, not of {key}; give another file "
                               "or delete it")
        return stored["ref"]
    ref = bench.reference_ode(eps_fn, schedule, x_T)
    if cache is not None:
        torch.save({"key": key, "ref": ref}, cache)
    return ref


def mixture_setup(index: int) -> tuple:
    """(config, schedule, mixture, eps*, diffkit Denoiser) of the benchmark's mixture ``index``."""
    from diffkit import Denoiser, NoiseSchedule
    from diffkit.analytic import GaussianMixture
    cfg = bench.MIXTURES[index]
    schedule = NoiseSchedule.linear()
    mixture = GaussianMixture.random(cfg["dim"], cfg["components"], seed=cfg["seed"])
    eps_fn = bench.MixtureEps(mixture)
    den = Denoiser(bench.diffkit_network(eps_fn, schedule), schedule, data_scale=mixture.data_scale())
    return cfg, schedule, mixture, eps_fn, den
