"""Small networks shared by the interpretability-baseline tests."""

from __future__ import annotations

import torch
from torch import nn


def mlp(widths: list[int], act: type[nn.Module] = nn.ReLU, seed: int = 0) -> nn.Sequential:
    """Seeded float64 MLP with ``act`` between its linear layers (none after the last)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).double()
