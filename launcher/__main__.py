"""`python -m launcher`: serve cloud + link + edge on loopback (what `make run` runs)."""

import sys

from launcher.stack import main

if __name__ == "__main__":
    sys.exit(main())
