"""``python -m flowmatch …`` runs the ``flowmatch`` command, e.g. under ``torchrun``
(``torchrun --nproc_per_node=2 -m flowmatch fit acts/ --out ae.safetensors``)."""

import sys

from flowmatch.cli import main

sys.exit(main())
