from pathlib import Path

import pytest

from flowmatch.config import ConfigError, config_from_dict, load_config

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path):
    cfg = load_config(path)
    assert cfg.name and cfg.pair


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match="'sede'"):
        config_from_dict({"name": "x", "sede": 1})
    with pytest.raises(ConfigError, match="'n_pair'.*section 'compare'"):
        config_from_dict({"name": "x", "compare": {"n_pair": 3}})
    with pytest.raises(ConfigError, match="'k_neighbours'.*section 'tree'"):
        config_from_dict({"name": "x", "tree": {"k_neighbours": 3}})
    with pytest.raises(ConfigError, match="unknown pair"):
        config_from_dict({"name": "x", "pair": "nope"})


def test_bad_translate_space_is_named():
    with pytest.raises(ConfigError, match="translate.space"):
        config_from_dict({"name": "x", "translate": {"space": "whitened"}})
    cfg = config_from_dict({"name": "x", "translate": {"space": "latent"}})
    assert cfg.translate.space == "latent"
