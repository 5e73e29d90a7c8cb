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


def test_bad_translate_starts_are_named():
    with pytest.raises(ConfigError, match="translate.starts"):
        config_from_dict({"name": "x", "translate": {"starts": ["clusters", "whitened"]}})
    with pytest.raises(ConfigError, match="translate.starts"):
        config_from_dict({"name": "x", "translate": {"starts": "clusters"}})
    cfg = config_from_dict({"name": "x", "translate": {"starts": ["gw", "clusters"]}})
    assert cfg.translate.starts == ("gw", "clusters")


# ----------------------------------------------------------------------------- checked values
def _write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("name: x\nseed: [1, 2]\n", "'seed': seed must be an int, got \\[1, 2\\]"),
        ("name: x\nseed: 1.7\n", "'seed': seed must be an int, got 1.7"),
        ("name: x\nseed: true\n", "'seed': seed must be an int"),
        ("name: x\nseed: -1\n", "'seed': seed must be between 0"),
        ("name: x\ntranslate: {n_refine: ten}\n", "'translate.n_refine': n_refine must be an int"),
        ("name: x\ntranslate: {n_refine: -1}\n", "'translate.n_refine': n_refine must be >= 0"),
        ("name: x\ntranslate: {n_gw_starts: -3}\n", "n_gw_starts must be >= 0"),
        ("name: x\ntranslate: {max_exact: 0}\n", "max_exact must be >= 2"),
        ("name: x\ntranslate: {max_crossing: .nan}\n", "max_crossing must be finite"),
        ("name: x\nautoencoder: {max_epochs: 0}\n", "section 'autoencoder': max_epochs must be"),
        ("name: x\nautoencoder: {device: bogus}\n", "section 'autoencoder': .*not a device"),
        ("name: x\ntree: {min_prominence: -1}\n", "section 'tree': min_prominence must be"),
        ("name: x\nmatch: {n_restarts: many}\n", "'match.n_restarts': n_restarts must be an int"),
        ("name: x\ncompare: {methods: [procrustez]}\n", "unknown method 'procrustez'"),
        ("name: x\ncompare: {methods: 3}\n", "'compare.methods' must be a list"),
        ("name: x\ncompare: {n_pairs: 2.5}\n", "'compare.n_pairs': n_pairs must be an int"),
        ("name: x\noutput_dir: 3\n", "'output_dir' must be a non-empty path"),
        ("name: null\n", "'name': the run name must be a string"),
        ("name: ../victim\n", "'name': .*path separator"),
        ("name: x\npair: [digits-mlp]\n", "unknown pair"),
        ("- a\n- b\n", "YAML mapping at the top level"),
        ("", "YAML mapping at the top level"),
    ],
)
def test_every_value_is_checked_at_load_naming_file_and_key(tmp_path, text, match):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as err:
        load_config(path)
    assert str(err.value).startswith(str(path))


def test_a_method_name_string_is_one_method(tmp_path):
    cfg = load_config(_write(tmp_path, "name: x\ncompare: {methods: procrustes}\n"))
    assert cfg.compare.methods == ("procrustes",)
    cfg = load_config(_write(tmp_path, "name: x\ncompare: {methods: [procrustes, lib]}\n"))
    assert cfg.compare.methods == ("procrustes", "lib")


def test_duplicate_keys_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="line 3: duplicate key 'seed' \\(first at line 2\\)"):
        load_config(_write(tmp_path, "name: x\nseed: 1\nseed: 2\n"))
    with pytest.raises(ConfigError, match="duplicate key 'n_refine'"):
        load_config(_write(tmp_path, "name: x\ntranslate: {n_refine: 1, n_refine: 2}\n"))


def test_alias_bomb_is_refused_quickly(tmp_path):
    """A 338-byte alias bomb once took 2 GB and 11 s before a traceback."""
    import time

    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    path = _write(tmp_path, "\n".join(lines) + "\nname: *a8\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="line 2: YAML aliases \\(\\*a0\\) are not allowed"):
        load_config(path)
    assert time.perf_counter() - start < 2.0


def test_oversized_deep_and_binary_configs_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="at most"):
        load_config(_write(tmp_path, "name: x\n#" + "x" * 1_100_000 + "\n"))
    with pytest.raises(ConfigError, match="nested too deeply|not valid YAML"):
        load_config(_write(tmp_path, "name: " + "[" * 5000 + "]" * 5000 + "\n"))
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)
    with pytest.raises(ConfigError, match="is not a file"):
        load_config(tmp_path)


def test_settings_built_in_code_are_checked_too():
    from dataclasses import replace

    cfg = config_from_dict({"name": "x"})
    with pytest.raises(ConfigError, match="'name'"):
        replace(cfg, name="..")
    from flowmatch.config import TranslateSettings

    with pytest.raises(ValueError, match="n_refine must be >= 0"):
        TranslateSettings(n_refine=-1)
