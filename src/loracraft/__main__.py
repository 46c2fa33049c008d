"""`python -m loracraft ...`: the `loracraft` command (also what `accelerate launch -m loracraft` runs)."""

import sys

from loracraft.cli import main

if __name__ == "__main__":
    sys.exit(main())
