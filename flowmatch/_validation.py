"""Former name of :mod:`flowmatch.validation`, kept while modules still import it; new code
imports :mod:`flowmatch.validation`."""

from flowmatch.validation import *  # noqa: F403
from flowmatch.validation import MAX_SEED, __all__  # noqa: F401
