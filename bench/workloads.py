"""The texts every row runs on: a bulk corpus of mixed lengths, texts for batch-1 latency, short queries (sparse and
multi-vector encoders), query x 100 document lists (rerankers; multi-vector encoders' `rank`), the held-out texts of
the multi-vector MaxSim accuracy, and the Lee 50-document similarity set.

Default corpus: gensim's Lee background corpus (300 news articles) split into sentences. The files are read from
the installed gensim package's test data, found with importlib without importing gensim (which is slow and pulls
scipy). Without gensim the corpus is the text set shipped with quantizers (heldout + calibration) and there is no
Lee similarity figure. `--corpus FILE` reads one text per line instead.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

LEE_CORPUS = "lee_background.cor"
LEE_DOCUMENTS = "lee.cor"
LEE_SCORES = "similarities0-1.txt"
LEE_ENCODING = "latin-1"  # the Lee files are Latin-1 (a pound sign in lee.cor); gensim reads them the same way
# A sentence ends at . ! or ? followed by white space and a capital letter or an opening quote.
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
QUERY_WORDS = 12  # a query is the first words of a corpus text
RERANK_DOCUMENTS = 100
LEE_DEFAULT_TEXTS = 2000  # of its 2613 sentences: the corpus BASELINE.md was measured on (60,172 MiniLM tokens)


@dataclass(frozen=True)
class Workload:
    """What the rows of one run encode (all rows get the very same texts)."""

    corpus_name: str
    corpus: tuple[str, ...]  # bulk throughput: documents
    latency_texts: tuple[str, ...]  # batch-1 latency (bi-encoders); one text per call
    queries: tuple[str, ...]  # sparse and multi-vector encoders: encode_query, bulk and batch 1
    rerank: tuple[tuple[str, tuple[str, ...]], ...] = ()  # rerankers, multi-vector rank: (query, documents) per call
    heldout: tuple[str, ...] = ()  # multi-vector: MaxSim of the first quarter (queries) x the rest (documents)
    lee_documents: tuple[str, ...] = ()  # the 50 Lee documents (empty: no Lee figure)
    lee_scores: tuple[float, ...] = ()  # human scores of their 1225 pairs (upper triangle, row major)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """Every (query, document) pair of the rerank lists, in order."""
        return [(query, doc) for query, docs in self.rerank for doc in docs]

    def save(self, path: Path) -> Path:
        """Write the texts as JSON, the file a worker reads."""
        path.write_text(json.dumps(asdict(self), ensure_ascii=False), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Path) -> Workload:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        data["rerank"] = tuple((q, tuple(docs)) for q, docs in data["rerank"])
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def gensim_test_data() -> Path | None:
    """gensim's test_data folder when gensim is installed and holds the Lee files, else None (gensim is not imported)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"
    return folder if all((folder / name).is_file() for name in (LEE_CORPUS, LEE_DOCUMENTS, LEE_SCORES)) else None


def lee_sentences(data: Path) -> list[str]:
    """The Lee background corpus split into sentences, in file order."""
    lines = (data / LEE_CORPUS).read_bytes().decode(LEE_ENCODING).splitlines()
    return [s.strip() for line in lines for s in SENTENCE_END.split(line) if s.strip()]


def lee_documents(data: Path) -> list[str]:
    """The 50 documents that the Lee human similarity scores rate."""
    docs = [line.strip() for line in (data / LEE_DOCUMENTS).read_bytes().decode(LEE_ENCODING).splitlines() if line.strip()]
    if len(docs) != 50:
        raise ValueError(f"{data / LEE_DOCUMENTS} holds {len(docs)} documents, expected 50.")
    return docs


def lee_scores(data: Path) -> np.ndarray:
    """Human similarity of the 1225 document pairs: the upper triangle (without the diagonal) of the 50 x 50 matrix."""
    matrix = np.loadtxt(data / LEE_SCORES)
    if matrix.shape != (50, 50):
        raise ValueError(f"{data / LEE_SCORES} is {matrix.shape}, expected 50 x 50.")
    return matrix[np.triu_indices(50, 1)]


def fallback_texts(names: tuple[str, ...] = ("heldout.txt", "calibration.txt")) -> list[str]:
    """The texts shipped with quantizers (held-out, then calibration), found without importing the package."""
    spec = importlib.util.find_spec("quantizers")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("Neither gensim (for the Lee corpus) nor the quantizers package data is installed; "
                                "pass --corpus FILE (one text per line) or pip install 'st-runtime[bench]'.")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return [line.strip() for name in names
            for line in (data / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def read_corpus(path: Path) -> list[str]:
    """Non-empty lines of a UTF-8 file, one text per line.

    Raises:
        FileNotFoundError, ValueError: the file is missing or empty.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Corpus file {str(path)!r} does not exist (expected one text per line).")
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"Corpus file {str(path)!r} holds no text.")
    return texts


def spread(texts: list[str], n: int) -> list[str]:
    """n texts taken evenly over the list (cycling when n > len(texts))."""
    if n <= len(texts):
        return [texts[int(i * len(texts) / n)] for i in range(n)]
    return [texts[i % len(texts)] for i in range(n)]


def build_workload(
    task: str,
    *,
    corpus_file: Path | None = None,
    max_texts: int | None = None,
    latency_n: int = 100,
    rerank_queries: int = 20,
) -> Workload:
    """The texts of one run.

    Args:
        task: the folder's task ("sentence-embedding", "text-ranking", "sparse-embedding",
            "multi-vector-embedding").
        corpus_file: one text per line instead of the default corpus.
        max_texts: use only the first N corpus texts (default: all; the first 2000 of the Lee corpus).
        latency_n: batch-1 calls per repeat (texts for bi-encoders, queries for sparse and multi-vector encoders).
        rerank_queries: most queries (each against 100 documents) for rerankers and the multi-vector `rank`; fewer
            when the corpus is small, so that the pairs are about as many as the corpus texts.

    Raises:
        ValueError: max_texts or latency_n below 1, or an empty corpus.
    """
    if max_texts is not None and max_texts < 1:
        raise ValueError(f"max_texts must be >= 1, got {max_texts}.")
    if latency_n < 1 or rerank_queries < 1:
        raise ValueError("latency_n and rerank_queries must be >= 1.")
    notes: list[str] = []
    data = gensim_test_data()
    if corpus_file is not None:
        corpus, name = read_corpus(corpus_file), Path(corpus_file).name
    elif data is not None:
        corpus, name = lee_sentences(data), "Lee background corpus (gensim), sentences"
        max_texts = max_texts or LEE_DEFAULT_TEXTS
    else:
        corpus, name = fallback_texts(), "quantizers heldout + calibration texts"
        notes.append("gensim is not installed: corpus is the quantizers text set and there is no Lee Spearman "
                     "(pip install gensim).")
    corpus = corpus[:max_texts] if max_texts else corpus
    if not corpus:
        raise ValueError("The corpus is empty.")
    queries = [" ".join(t.split()[:QUERY_WORDS]) for t in spread(corpus, latency_n)]
    rerank: list[tuple[str, tuple[str, ...]]] = []
    if task in ("text-ranking", "multi-vector-embedding"):
        count = min(rerank_queries, max(1, -(-len(corpus) // RERANK_DOCUMENTS)))
        for q, start in enumerate(range(0, count * RERANK_DOCUMENTS, RERANK_DOCUMENTS)):
            docs = tuple(corpus[(start + j) % len(corpus)] for j in range(RERANK_DOCUMENTS))
            rerank.append((queries[q % len(queries)], docs))
    lee_docs, scores = ((), ())
    if data is not None and task not in ("text-ranking", "multi-vector-embedding"):  # one vector per text only
        lee_docs, scores = tuple(lee_documents(data)), tuple(float(s) for s in lee_scores(data))
    # Multi-vector accuracy: the texts (and the split) that quantizers' MaxSim accuracy uses, so the figure means the
    # same as a variant's accuracy in the manifest.
    heldout = tuple(fallback_texts(("heldout.txt",))) if task == "multi-vector-embedding" else ()
    return Workload(corpus_name=name, corpus=tuple(corpus), latency_texts=tuple(spread(corpus, latency_n)),
                    queries=tuple(queries), rerank=tuple(rerank), heldout=heldout, lee_documents=lee_docs,
                    lee_scores=scores, notes=tuple(notes))


def token_counts(folder: Path, texts: list[str] | list[tuple[str, str]], batch_size: int = 256,
                 max_seq_length: int | None = None) -> np.ndarray:
    """Real (non-pad) tokens per text or pair, special tokens included, as the folder's tokenizer (and so every row:
    sentence-transformers truncates the same way) counts them after truncation at max_seq_length (or at
    `max_seq_length` when given: a multi-vector encoder's document_length)."""
    import dataclasses

    from st_runtime.manifest import load_manifest
    from st_runtime.tokenizer import TextTokenizer

    spec = load_manifest(folder).tokenizer
    if max_seq_length is not None:
        spec = dataclasses.replace(spec, max_seq_length=int(max_seq_length))
    tokenizer = TextTokenizer(folder, spec)
    counts = [tokenizer.encode(list(texts[i : i + batch_size]))["attention_mask"].sum(1)
              for i in range(0, len(texts), batch_size)]
    return np.concatenate(counts).astype(np.int64) if counts else np.zeros(0, np.int64)
