import pytest
import torch

from flowmatch import zoo


def test_training_is_deterministic():
    spec = zoo.PAIRS["digits-mlp"][0]
    m1, info1 = zoo.train_model(spec, cache=False)
    m2, info2 = zoo.train_model(spec, cache=False)
    for (n1, p1), (_, p2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        torch.testing.assert_close(p1, p2, rtol=0, atol=0, msg=n1)
    assert info1 == info2
    x = zoo.load_dataset("digits").x_test
    a1 = zoo.collect(m1, x, "hidden", device="cpu").x
    a2 = zoo.collect(m2, x, "hidden", device="cpu").x
    torch.testing.assert_close(a1, a2, rtol=0, atol=0)


def test_digits_pair_accuracy_and_head(digits_pair):
    p = digits_pair
    assert p.info_a["test_accuracy"] >= 0.95 and p.info_b["test_accuracy"] >= 0.95
    acts = p.activations("b", "test")
    assert acts.dim == 96 and len(acts) == len(p.data.y_test)
    with torch.no_grad():
        torch.testing.assert_close(p.head_b(acts.x), p.model_b(p.data.x_test))


def test_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWMATCH_CACHE", str(tmp_path))
    spec = zoo.PAIRS["digits-mlp"][0]
    trained, info = zoo.train_model(spec)
    assert list((tmp_path / "zoo").glob("*.safetensors"))
    loaded, info2 = zoo.train_model(spec)
    assert info2 == info
    for p1, p2 in zip(trained.parameters(), loaded.parameters()):
        torch.testing.assert_close(p1, p2, rtol=0, atol=0)


def test_unknown_pair_is_an_error():
    with pytest.raises(KeyError, match="available"):
        zoo.load_pair("imagenet")
