"""``python -m diffkit`` runs the command line."""
import sys

try:
    from .cli import main
except KeyboardInterrupt:  # a Ctrl-C this early exits as one during the command: 130, one line
    sys.stderr.write("diffkit: interrupted\n")
    sys.exit(130)

sys.exit(main())
