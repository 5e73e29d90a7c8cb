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


# ----------------------------------------------------------------------------- batches
def test_iterable_of_batches_and_pooling(gen):
    model = TokenModel()
    x = torch.randn(7, 5, 4, generator=gen)
    y = torch.arange(7) % 2
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)
    acts = collect(model, loader, "blocks.0.mlp", tokens=True, device="cpu")
    torch.testing.assert_close(acts.x, model.blocks[0].mlp(x).reshape(35, 8))
    assert acts.labels.tolist() == y.repeat_interleave(5).tolist()
    assert acts.meta["position"][:7] == [0, 1, 2, 3, 4, 0, 1]
    assert acts.subset([6, 0]).meta["position"] == [1, 0]
    mean = collect(model, {"x": x}, "blocks.0.mlp", pool="mean", labels=y, device="cpu")
    torch.testing.assert_close(mean.x, model.blocks[0].mlp(x).mean(1))
    assert mean.meta["position"] == [-1] * 7 and mean.meta["pool"] == "mean"
    last = collect(model, [x[:4], x[4:]], "blocks.0.mlp", pool="last", device="cpu")
    torch.testing.assert_close(last.x, model.blocks[0].mlp(x)[:, -1])


def test_pool_and_batch_errors(gen):
    model = TokenModel()
    x = torch.randn(4, 5, 4, generator=gen)
    with pytest.raises(ValueError, match="choose one"):
        collect(model, x, "blocks.0.mlp", tokens=True, pool="mean")
    flat = nn.Sequential(OrderedDict(fc=nn.Linear(4, 3)))
    with pytest.raises(ValueError, match="needs \\(batch, positions, d\\)"):
        collect(flat, x[:, 0], "fc", pool="first", device="cpu")
    with pytest.raises(ValueError, match="iterable of batches carries its labels"):
        collect(model, [x], "blocks.0.mlp", labels=[0, 1, 2, 3], device="cpu")
    with pytest.raises(ValueError, match="labels must come with every batch"):
        collect(model, [(x, torch.zeros(4)), x], "blocks.0.mlp", device="cpu")
    with pytest.raises(ValueError, match="empty"):
        collect(model, [], "blocks.0.mlp", device="cpu")


# ----------------------------------------------------------------------------- transformers
@pytest.fixture(scope="module")
def bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    return transformers.BertModel(config).eval()


def _padded(lengths, gen, labels=False):
    """A tokenised batch: right-padded input_ids and its attention_mask."""
    width = max(lengths)
    ids = torch.randint(1, 100, (len(lengths), width), generator=gen)
    mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()
    batch = {"input_ids": ids * mask, "attention_mask": mask}
    if labels:
        batch["labels"] = torch.tensor(lengths) % 3
    return batch


def _hidden(model, batches, layer):
    """Hidden states after encoder layer ``layer`` of every unmasked token, in batch order."""
    rows = []
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        out = model(**inputs, output_hidden_states=True).hidden_states[layer + 1]
        rows.append(out[batch["attention_mask"].bool()])
    return torch.cat(rows).detach()


def test_bert_tokens_are_the_unmasked_hidden_states(bert, gen):
    batches = [_padded([7, 3, 5], gen, labels=True), _padded([2, 6], gen, labels=True)]
    acts = collect(bert, batches, "encoder.layer.0", tokens=True, device="cpu")
    assert len(acts) == 7 + 3 + 5 + 2 + 6
    torch.testing.assert_close(acts.x, _hidden(bert, batches, 0), rtol=1e-5, atol=1e-5)
    lengths = [7, 3, 5, 2, 6]
    assert acts.meta["input_index"] == [i for i, n in enumerate(lengths) for _ in range(n)]
    assert acts.meta["position"] == [p for n in lengths for p in range(n)]
    assert acts.labels.tolist() == [n % 3 for n in lengths for _ in range(n)]
    into_1 = collect(bert, batches, "encoder.layer.1", hook="input", tokens=True, device="cpu")
    torch.testing.assert_close(into_1.x, acts.x)
    whole = _padded(lengths, gen)  # one dict, cut into batches of 2
    one = collect(bert, whole, "encoder.layer.1", tokens=True, batch_size=2, device="cpu")
    torch.testing.assert_close(one.x, _hidden(bert, [whole], 1), rtol=1e-5, atol=1e-5)


def test_bert_pooling_honours_the_mask(bert, gen):
    batch = _padded([7, 3, 5], gen)
    full = bert(**batch, output_hidden_states=True).hidden_states[2].detach()
    m = batch["attention_mask"].float()
    kw = {"device": "cpu"}
    mean = collect(bert, [batch], "encoder.layer.1", pool="mean", **kw)
    want = (full * m[:, :, None]).sum(1) / m.sum(1, keepdim=True)
    torch.testing.assert_close(mean.x, want, rtol=1e-5, atol=1e-5)
    last = collect(bert, [batch], "encoder.layer.1", pool="last", **kw)
    torch.testing.assert_close(last.x, full[[0, 1, 2], [6, 2, 4]], rtol=1e-5, atol=1e-5)
    first = collect(bert, [batch], "encoder.layer.1", pool="first", **kw)
    torch.testing.assert_close(first.x, full[:, 0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="tokens=True or pool"):
        collect(bert, [batch], "encoder.layer.1", **kw)


def test_bert_rows_stream_into_a_store(bert, gen, tmp_path):
    batches = [_padded([7, 3, 5], gen, labels=True), _padded([2, 6], gen, labels=True)]
    acts = collect(bert, batches, "encoder.layer.0", tokens=True, device="cpu")
    store = collect(
        bert, batches, "encoder.layer.0", tokens=True, device="cpu", out=tmp_path / "acts",
        shard_rows=4,
    )  # fmt: skip
    assert store.shard_sizes == [4] * 5 + [3]
    back = store.to_activation_set()
    assert torch.equal(back.x, acts.x) and torch.equal(back.labels, acts.labels)
    assert back.meta["position"] == acts.meta["position"]
    assert back.meta["input_index"] == acts.meta["input_index"]
    assert store.meta["model"] == "BertModel" and store.meta["tokens"] is True
    half = collect(
        bert, batches, "encoder.layer.0", tokens=True, device="cpu", out=tmp_path / "half",
        storage_dtype="float16",
    )  # fmt: skip
    torch.testing.assert_close(half.to_activation_set().x, acts.x, rtol=2e-3, atol=2e-3)
