"""Shared fixtures: small seeded data and the cached digits pair."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def digits_pair():
    from flowmatch.zoo import load_pair

    return load_pair("digits-mlp")


@pytest.fixture()
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)
