"""``diffkit samplers``: the sampler registry as a table (name, order, calls per step, stochastic,
default grid, NFE rule)."""
from __future__ import annotations

import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("samplers", help="list the samplers and what they cost",
                                   description="List every registered sampler with its order, model calls "
                                               "per step, stochasticity, default time grid and NFE rule.")
    parser.add_argument("--names", action="store_true", help="print only the names, one per line")
    parser.set_defaults(func=run)


def table() -> str:
    """The registry as an aligned text table."""
    from ..samplers.registry import REGISTRY
    header = ("name", "order", "calls/step", "stochastic", "spacing", "final", "NFE(steps)", "description")
    rows = [header]
    for info in REGISTRY.values():
        rule = info.nfe_rule or (f"{info.calls_per_step}*steps" if info.calls_per_step > 1 else "steps")
        rows.append((info.name, str(info.order), "-" if info.adaptive else str(info.calls_per_step),
                     "yes" if info.stochastic else "no",
                     info.default_spacing, info.default_final, rule, info.description))
    widths = [max(len(r[k]) for r in rows) for k in range(len(header) - 1)]
    lines = []
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1])
        if r is header:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * len(header[-1]))
    return "\n".join(lines)


def run(args) -> int:
    from ..samplers.registry import REGISTRY
    sys.stdout.write(("\n".join(REGISTRY) if args.names else table()) + "\n")
    return 0
