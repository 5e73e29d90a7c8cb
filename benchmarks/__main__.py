"""``python -m benchmarks NAME [options]``: the same as ``flowmatch bench NAME [options]``."""

import sys

from flowmatch.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
