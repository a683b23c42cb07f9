"""``python -m seesr`` (also what ``accelerate launch -m seesr`` runs)."""

import sys

from seesr.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
