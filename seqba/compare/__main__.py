"""``python -m seqba.compare``: see :mod:`seqba.compare`."""
import sys

from seqba.compare.cli import main

if __name__ == "__main__":
    sys.exit(main())
