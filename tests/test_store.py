"""The on-disk activation store: writing, reading, batches, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flowmatch._io import ArtefactError
from flowmatch.store import MANIFEST, ActivationStore, StoreWriter
from flowmatch.validation import as_matrix


def _write(path, x, *, shard_rows=4, dtype="float32", labels=None, chunk=3, prov=False):
    with StoreWriter(path, shard_rows=shard_rows, dtype=dtype, meta={"layer": "fc1"}) as w:
        for s in range(0, len(x), chunk):
            y = None if labels is None else labels[s : s + chunk]
            ix = torch.arange(s, min(s + chunk, len(x))) if prov else None
            pos = -torch.ones(len(x[s : s + chunk]), dtype=torch.long) if prov else None
            w.append(x[s : s + chunk], y, ix, pos)
    return ActivationStore.open(path)


@pytest.fixture()
def data(gen):
    return torch.randn(23, 5, generator=gen), torch.arange(23) % 3


def test_round_trip_float32_is_exact(tmp_path, data):
    x, y = data
    store = _write(tmp_path / "s", x, labels=y, prov=True)
    assert (len(store), store.dim, store.dtype, store.shard_sizes) == (
        23,
        5,
        "float32",
        [4] * 5 + [3],
    )
    assert store.meta == {"layer": "fc1"}
    acts = store.to_activation_set()
    assert torch.equal(acts.x, x) and torch.equal(acts.labels, y)
    assert acts.meta["input_index"] == list(range(23)) and acts.meta["position"] == [-1] * 23
    assert torch.equal(store.shard(5), x[20:]) and torch.equal(store.shard_labels(1), y[4:8])
    ix, pos = store.shard_provenance(2)
    assert ix.tolist() == list(range(8, 12)) and pos.tolist() == [-1] * 4
    ids = [22, 0, 7, 7, 13]
    assert torch.equal(store.rows(ids), x[ids])
    assert torch.equal(as_matrix(store), x)


@pytest.mark.parametrize(("dtype", "tol"), [("float16", 1e-3), ("bfloat16", 8e-3)])
def test_round_trip_half_precision(tmp_path, data, dtype, tol):
    x, _ = data
    store = _write(tmp_path / "s", x, dtype=dtype)
    assert store.dtype == dtype and store.shard(0).dtype == torch.float32
    torch.testing.assert_close(store.to_activation_set().x, x, rtol=tol, atol=tol)
    assert store.manifest["has_labels"] is False and store.shard_labels(0) is None


@pytest.mark.parametrize(("n", "r", "sizes"), [(7, 1, [1] * 7), (3, 10, [3]), (8, 4, [4, 4])])
def test_shard_boundaries(tmp_path, gen, n, r, sizes):
    x = torch.randn(n, 2, generator=gen)
    store = _write(tmp_path / "s", x, shard_rows=r, chunk=5)
    assert store.shard_sizes == sizes
    assert torch.equal(torch.cat([s for _, s in store.iter_shards()]), x)
    assert [i for i, _ in store.iter_shards(rank=1, world_size=2)] == list(range(1, len(sizes), 2))


def test_writer_holds_less_than_one_shard(tmp_path, gen):
    with StoreWriter(tmp_path / "s", shard_rows=10) as w:
        for _ in range(40):
            w.append(torch.randn(3, 4, generator=gen))
            assert w.buffered_rows < 10
        w.append(torch.randn(35, 4, generator=gen))  # several shards in one call
        assert w.buffered_rows == 5
    assert ActivationStore.open(tmp_path / "s").shard_sizes == [10] * 15 + [5]


def _epoch(store, b, **kw):
    return list(store.iter_batches(b, **kw))


def test_batches_cover_every_row_once_and_are_deterministic(tmp_path, gen):
    x = torch.arange(23, dtype=torch.float32)[:, None].repeat(1, 3)
    store = _write(tmp_path / "s", x)
    batches = _epoch(store, 5, seed=1, epoch=2)
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    ids = torch.cat(batches)[:, 0].long()
    assert sorted(ids.tolist()) == list(range(23))
    assert all(torch.equal(a, b) for a, b in zip(batches, _epoch(store, 5, seed=1, epoch=2)))
    assert not torch.equal(ids, torch.cat(_epoch(store, 5, seed=1, epoch=3))[:, 0].long())
    assert len(_epoch(store, 5, seed=1, epoch=2, drop_last=True)) == 4
    plain = torch.cat(_epoch(store, 5, shuffle=False))
    assert torch.equal(plain, x)


@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_together_give_the_single_process_batches(tmp_path, gen, drop_last):
    x = torch.arange(23, dtype=torch.float32)[:, None]
    store = _write(tmp_path / "s", x)
    one = _epoch(store, 6, seed=3, epoch=1, drop_last=drop_last)
    parts = [
        _epoch(store, 6, seed=3, epoch=1, drop_last=drop_last, rank=r, world_size=2) for r in (0, 1)
    ]
    assert len(parts[0]) == len(parts[1]) == len(one)
    for whole, a, b in zip(one, *parts):
        assert torch.equal(torch.cat([a, b]), whole)
    with pytest.raises(ValueError, match="multiple of world_size"):
        _epoch(store, 5, world_size=2)


def test_start_batch_and_row_restriction(tmp_path):
    x = torch.arange(23, dtype=torch.float32)[:, None]
    store = _write(tmp_path / "s", x)
    full = _epoch(store, 4, seed=5)
    resumed = _epoch(store, 4, seed=5, start_batch=2)
    assert all(torch.equal(a, b) for a, b in zip(full[2:], resumed)) and len(resumed) == 4
    allowed = np.array([0, 2, 3, 9, 10, 11, 22])
    kept = torch.cat(_epoch(store, 2, seed=5, rows=allowed)).flatten().long()
    assert sorted(kept.tolist()) == allowed.tolist()
    in_full_order = [int(v) for v in torch.cat(full).flatten() if int(v) in set(allowed.tolist())]
    assert kept.tolist() == in_full_order  # the restriction keeps the epoch's order
    with pytest.raises(ValueError, match="sorted"):
        _epoch(store, 2, rows=[3, 1])


def test_subsample_is_seeded_and_sorted(tmp_path, data):
    x, y = data
    store = _write(tmp_path / "s", x, labels=y)
    a, b = store.subsample(10, seed=4), store.subsample(10, seed=4)
    assert torch.equal(a.x, b.x) and len(a) == 10
    rows = [int(np.flatnonzero((x == r).all(1).numpy())[0]) for r in a.x]
    assert rows == sorted(rows) and torch.equal(a.labels, y[rows])
    assert a.meta["subsample"] == {"n": 10, "of": 23, "seed": 4}
    assert a.meta["store"] == str(tmp_path / "s")
    assert not torch.equal(store.subsample(10, seed=5).x, a.x)
    assert torch.equal(store.subsample(100).x, x)


def test_missing_and_truncated_shards_are_named(tmp_path, data):
    x, _ = data
    _write(tmp_path / "s", x)
    shard = tmp_path / "s" / "shard-00002.safetensors"
    raw = shard.read_bytes()
    shard.write_bytes(raw[:-7])
    with pytest.raises(ArtefactError, match="shard-00002.safetensors.*truncated"):
        ActivationStore.open(tmp_path / "s")
    shard.write_bytes(raw[:5])
    with pytest.raises(ArtefactError, match="shard-00002.safetensors"):
        ActivationStore.open(tmp_path / "s")
    shard.unlink()
    with pytest.raises(ArtefactError, match="shard-00002.safetensors.*missing"):
        ActivationStore.open(tmp_path / "s")


def test_shard_that_disagrees_with_the_manifest(tmp_path, data):
    x, _ = data
    _write(tmp_path / "s", x)
    _write(tmp_path / "t", x, dtype="float16")
    (tmp_path / "s" / "shard-00001.safetensors").write_bytes(
        (tmp_path / "t" / "shard-00001.safetensors").read_bytes()
    )
    with pytest.raises(ArtefactError, match="shard-00001.safetensors: tensor 'x' is"):
        ActivationStore.open(tmp_path / "s")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, "format"),
        ({"version": 2}, "version 2"),
        ({"dim": "5"}, "'dim' must be int"),
        ({"n_rows": 24}, "n_rows"),
        ({"dtype": "int8"}, "dtype"),
        ({"shards": [{"file": "../x", "rows": 23}]}, "shard 0"),
        ({"has_labels": True}, "expected"),
    ],
)
def test_bad_manifest_is_named(tmp_path, data, change, message):
    x, _ = data
    _write(tmp_path / "s", x)
    path = tmp_path / "s" / MANIFEST
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, **change}))
    with pytest.raises(ArtefactError, match=message):
        ActivationStore.open(tmp_path / "s")
    path.write_text("{not json")
    with pytest.raises(ArtefactError, match="manifest.json is not valid JSON"):
        ActivationStore.open(tmp_path / "s")


def test_error_inside_with_leaves_nothing(tmp_path, gen):
    with pytest.raises(RuntimeError, match="stop"):
        with StoreWriter(tmp_path / "s", shard_rows=2) as w:
            w.append(torch.randn(7, 3, generator=gen))
            raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


def test_bad_appends_are_refused(tmp_path, gen):
    with StoreWriter(tmp_path / "s", shard_rows=4) as w:
        w.append(torch.randn(6, 3, generator=gen), labels=torch.zeros(6, dtype=torch.long))
        with pytest.raises(ValueError, match="4 features but the store .* has 3"):
            w.append(torch.randn(2, 4))
        bad = torch.randn(5, 3, generator=gen)
        bad[2, 1] = float("nan")
        with pytest.raises(ValueError, match="rows 2 and 2 of this chunk .*store rows 8..8"):
            w.append(bad, labels=torch.zeros(5, dtype=torch.long))
        with pytest.raises(ValueError, match="labels were given"):
            w.append(torch.randn(2, 3))
        with pytest.raises(ValueError, match="beyond float32"):
            w.append(torch.full((1, 3), 1e300, dtype=torch.float64), labels=torch.zeros(1))
    assert len(ActivationStore.open(tmp_path / "s")) == 6
    with pytest.raises(ValueError, match="no rows"):
        StoreWriter(tmp_path / "empty").close()
    assert not (tmp_path / "empty").exists()


def test_store_replaces_only_its_own_kind(tmp_path, gen):
    _write(tmp_path / "s", torch.randn(5, 2, generator=gen))
    store = _write(tmp_path / "s", torch.randn(9, 2, generator=gen))
    assert len(store) == 9
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="did not write"):
        StoreWriter(tmp_path / "mine")


def test_as_matrix_refuses_a_huge_store(tmp_path, gen, monkeypatch):
    store = _write(tmp_path / "s", torch.randn(10, 2, generator=gen))
    monkeypatch.setattr("flowmatch.validation.MAX_STORE_VALUES", 19)
    with pytest.raises(ValueError, match=r"subsample\(n\)"):
        as_matrix(store, "a")
