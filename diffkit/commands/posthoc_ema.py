"""``diffkit posthoc-ema``: synthesise the EMA of any width sigma_rel from a run's post-hoc EMA snapshots
(Karras et al. 2024, EDM2, App. C.3) into a weights-only checkpoint that ``diffkit sample`` and ``eval`` load.

    diffkit train --out runs/x --set posthoc_ema=0.05,0.10 --set posthoc_ema_every=500
    diffkit posthoc-ema --run runs/x --sigma-rel 0.08 --out ema_0.08.safetensors
"""
from __future__ import annotations

import argparse
import sys

from ..errors import DiffkitError
from ._common import (check_output_file, missing_dirs, path_arg, positive_float, positive_int,
                      removed_if_empty_on_failure)


def sigma_rel_value(text: str) -> float:
    """A width sigma_rel in (0, 1/sqrt(12)) (:func:`diffkit.posthoc_ema.check_sigma_rel`)."""
    from ..posthoc_ema import check_sigma_rel
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    try:
        return check_sigma_rel(value, "--sigma-rel")
    except DiffkitError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def error_fraction(text: str) -> float:
    """A relative error in (0, 1]."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{value} is not a relative error in (0, 1]")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser("posthoc-ema", help="synthesise an EMA of any width from a run's post-hoc EMA snapshots",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=path_arg, required=True,
                   help="the run folder (diffkit train --out RUN, trained with --set posthoc_ema=...), its "
                        "checkpoint folder, or the snapshot folder")
    p.add_argument("--sigma-rel", type=sigma_rel_value, required=True,
                   help="the EMA width to synthesise: the relative standard deviation of its profile, "
                        "0 < sigma_rel < 0.2887 (EDM2 eq. 3; EDM2 tracks 0.05 and 0.10)")
    p.add_argument("--step", type=positive_int,
                   help="the training step of the EMA, one with a snapshot (default: the last snapshot's)")
    p.add_argument("--max-profile-error", type=error_fraction, default=0.1,
                   help="refuse a width whose EMA profile the snapshots reconstruct with a larger relative L2 error "
                        "(EDM2 App. C.3's least squares; default 0.1); the message gives the widths within it")
    p.add_argument("--out", type=path_arg, required=True, help="the checkpoint to write (.safetensors)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoint import save_checkpoint
    from ..posthoc_ema import find_snapshots, synthesize
    find_snapshots(args.run)  # a run without snapshots is refused before --out's folder is made
    new_dirs = missing_dirs(args.out)
    check_output_file(args.out, "--out", ".safetensors", writes="diffusion weights")
    with removed_if_empty_on_failure(new_dirs):
        tensors, meta = synthesize(args.run, args.sigma_rel, args.step, args.max_profile_error)
        out = save_checkpoint(args.out, tensors, meta)
    info = meta["synthesised_ema"]
    sys.stdout.write(f"wrote {out}: the EMA of sigma_rel={info['sigma_rel']} (gamma={info['gamma']:.3f}) at step "
                     f"{info['step']} from {len(info['snapshots'])} snapshots of sigma_rel "
                     f"{', '.join(map(str, info['tracked_sigma_rels']))}; profile error {info['profile_error']:.2%}\n")
    return 0
