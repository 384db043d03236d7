"""``python -m scfmkit``: the command line (see :mod:`scfmkit._cli`)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
