"""``python -m hostkit`` (also what ``torchrun -m hostkit run ...`` starts)."""

import sys

from hostkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
