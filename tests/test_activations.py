from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from flowmatch.activations import ActivationSet, collect


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.hook_resid = nn.Identity()  # TransformerLens-style hook point

    def forward(self, x):
        return self.hook_resid(self.mlp(x))


class TokenModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block()])
        self.out = nn.Linear(8, 3)

    def forward(self, x):  # (batch, positions, 4)
        return self.out(self.blocks[0](x))


def test_hook_matches_manual_forward(gen):
    model = nn.Sequential(
        OrderedDict(fc1=nn.Linear(5, 7), act=nn.Tanh(), fc2=nn.Linear(7, 2))
    ).double()
    x = torch.randn(33, 5, generator=gen, dtype=torch.float64)
    acts = collect(model, x, "act", batch_size=10, device="cpu")
    torch.testing.assert_close(acts.x, torch.tanh(model.fc1(x)).float().detach())
    inp = collect(model, x, "fc2", hook="input", device="cpu")
    torch.testing.assert_close(inp.x, acts.x)
    assert acts.meta["input_index"] == list(range(33))


def test_nested_names_and_token_flattening(gen):
    model = TokenModel()
    x = torch.randn(6, 5, 4, generator=gen)
    per_row = collect(model, x, "blocks.0.hook_resid", device="cpu")
    assert per_row.x.shape == (6, 40)
    per_token = collect(model, x, "blocks.0.mlp", tokens=True, labels=np.arange(6), device="cpu")
    assert per_token.x.shape == (30, 8)
    torch.testing.assert_close(per_token.x, model.blocks[0].mlp(x).reshape(30, 8).detach())
    assert per_token.labels.tolist() == np.repeat(np.arange(6), 5).tolist()
    assert per_token.meta["input_index"][:6] == [0, 0, 0, 0, 0, 1]


def test_save_load_round_trip(tmp_path, gen):
    acts = ActivationSet(torch.randn(10, 3, generator=gen), torch.arange(10), {"layer": "x"})
    acts.save(tmp_path / "a.safetensors")
    back = ActivationSet.load(tmp_path / "a.safetensors")
    torch.testing.assert_close(back.x, acts.x)
    assert back.labels.tolist() == list(range(10))
    assert back.meta == {"layer": "x"}
    np.save(tmp_path / "a.npy", acts.x.numpy())
    torch.testing.assert_close(ActivationSet.load(tmp_path / "a.npy").x, acts.x)


def test_unknown_layer_lists_closest_names():
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(2, 2), relu1=nn.ReLU()))
    with pytest.raises(KeyError, match="closest: relu1"):
        collect(model, torch.zeros(2, 2), "relu")


def test_nan_activations_and_empty_inputs_are_errors():
    model = nn.Sequential(OrderedDict(log=LogLayer()))
    with pytest.raises(ValueError, match="NaN"):
        collect(model, -torch.ones(3, 2), "log", device="cpu")
    with pytest.raises(ValueError, match="empty"):
        collect(model, torch.zeros(0, 2), "log", device="cpu")


def test_activation_set_rejects_bad_shapes():
    with pytest.raises(ValueError, match="2-D"):
        ActivationSet(torch.zeros(3))
    with pytest.raises(ValueError, match="length mismatch"):
        ActivationSet(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))


class LogLayer(nn.Module):
    def forward(self, x):
        return torch.log(x)
