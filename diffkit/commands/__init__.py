"""CLI sub-commands, one module each (see :mod:`diffkit.cli`)."""
