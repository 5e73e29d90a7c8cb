"""The record of where a result was measured: device, library versions, threads and seed.

Stored with every run (``metrics.json``), comparison report and benchmark result, so that a
number can be traced to the software and hardware that produced it.
"""

from __future__ import annotations

import platform
import sys
from typing import Any

import torch

__all__ = ["environment"]


def environment(seed: int | None = None, device: str | None = None) -> dict[str, Any]:
    """Device, library versions, torch threads and seed, as a JSON-serialisable dict.

    Parameters
    ----------
    seed : the seed of the measurement (recorded as given).
    device : the device used; default CUDA when available, else the CPU.
    """
    import gudhi
    import numpy
    import ot
    import scipy
    import sklearn

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return {
        "device": dev,
        "device_name": torch.cuda.get_device_name(0)
        if dev.startswith("cuda")
        else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "sklearn": sklearn.__version__,
        "gudhi": gudhi.__version__,
        "pot": ot.__version__,
        "seed": seed,
    }
