"""The ``diffkit`` command line: a thin front over the library.

Each sub-command lives in ``diffkit/commands/<name>.py`` and defines ``register(subparsers)``,
which adds its parser and sets ``func``. User mistakes (:class:`~diffkit.errors.DiffkitError`)
print one line ``diffkit: error: ...`` and exit with status 2, as does running out of memory
(a model or batch too large for the machine); nothing else is caught. diffkit's own warnings
(:class:`~diffkit.errors.DiffkitWarning`) print as one line ``diffkit COMMAND: warning: ...`` (no
source file and line), from the start (also those while the commands' modules are imported).
Progress notices of library code (the out-of-memory retry) print ``diffkit: warning: ...`` directly
(:mod:`diffkit.errors`).
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import warnings

from .errors import DiffkitError, DiffkitWarning, first_line

# Sub-command modules, in the order ``diffkit --help`` lists them.
COMMANDS = ["demo", "train", "distill", "sample", "edit", "video", "upscale", "predict", "samplers", "train_classifier",
            "train_autoencoder", "train_evaluator", "eval", "experiment", "convert", "posthoc_ema"]


# Options whose empty value is refused, and what to give instead (``demo --device ''`` picked a device,
# ``train-classifier --schedule ''`` trained with linear). Paths and data sets refuse '' in their
# argparse type (_common.path_arg, dataset_arg): ``--out ''`` trained into the config's default folder,
# ``--resume ''`` trained afresh, ``edit --images ''`` read the current folder.
EMPTY_REFUSED = {"--device": "not a device; choose auto, cpu, cuda, cuda:N or mps",
                 "--schedule": "not a schedule; choose linear, cosine, scaled_linear or sigmoid"}


class _Parser(argparse.ArgumentParser):
    """argparse that exits with status 2 and one line (no usage dump) on a bad flag; a negative number in exponent
    notation (``--guidance-scale -1e3``) is a value, as ``-1000`` is (argparse took it for a flag: "expected one
    argument")."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message):  # noqa: D401 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)

    def _get_value(self, action, arg_string):
        refused = [EMPTY_REFUSED[o] for o in action.option_strings if o in EMPTY_REFUSED]
        if arg_string == "" and refused:
            raise argparse.ArgumentError(action, f"'' is {refused[0]}")
        return super()._get_value(action, arg_string)


def _one_line_warnings(prog: str, default):
    """A ``warnings.formatwarning`` that writes diffkit's own warnings (:class:`DiffkitWarning`)
    as one line ``PROG: warning: ...``; any other warning, even one raised in diffkit's code (numpy's
    divide by zero), keeps ``default``'s format, its category, file and line."""
    def formatwarning(message, category, filename, lineno, line=None):
        if issubclass(category, DiffkitWarning):
            return f"{prog}: warning: {' '.join(str(message).split())}\n"
        return default(message, category, filename, lineno, line)
    return formatwarning


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="diffkit", description="Diffusion models: train, sample, guide, evaluate.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"diffkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    previous_format = warnings.formatwarning
    warnings.formatwarning = _one_line_warnings("diffkit", previous_format)  # before the imports' warnings
    try:
        return _run(argv, previous_format)
    finally:
        warnings.formatwarning = previous_format


def _run(argv, previous_format) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:  # a Ctrl-C while the commands' modules are imported
        sys.stderr.write("diffkit: interrupted\n")
        return 130
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    warnings.formatwarning = _one_line_warnings(f"diffkit {args.command}", previous_format)
    try:
        return int(args.func(args) or 0)
    except DiffkitError as err:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike: one line, from rank 0
            sys.stderr.write(f"diffkit {args.command}: error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("diffkit: interrupted\n")
        return 130
    except (MemoryError, RuntimeError) as err:  # a model or batch too large for this machine
        text = str(err)
        if not isinstance(err, MemoryError) and "out of memory" not in text and "can't allocate memory" not in text:
            raise
        if os.environ.get("RANK", "0") == "0":
            sys.stderr.write(f"diffkit {args.command}: error: out of memory ({first_line(err, 200)}); use a smaller "
                             f"model or batch size\n")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
