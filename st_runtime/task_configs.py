"""The typed task contract of an exported folder: the task its graph serves (`Task`) and, per task, the kind-specific
facts the runtime reads (the manifest's `task_config`), each a frozen dataclass built and checked when the manifest is
read; a key that is unknown, missing or of the wrong type is a ManifestError naming it.

    task                      top-level task_config   a route's task_config (Router models)
    sentence-embedding        BiEncoderConfig         BiEncoderConfig
    text-ranking              CrossEncoderConfig      -
    sparse-embedding          SparseEncoderConfig     SparseGraphConfig
    multi-vector-embedding    MultiVectorConfig       -

The JSON form (`to_dict`) is the object st-export has always written, so every folder of format_version 1 reads as
before. Each config is also a read-only Mapping of its JSON form (`manifest.task_config["vocab_size"]`, equality with a
dict), for code written against the former dict; the runtime reads the typed attributes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass, fields
from functools import lru_cache
from string import Formatter
from typing import Any, ClassVar, Literal, get_args

from st_runtime.manifest_checks import (
    Check,
    bool_check,
    check_fields,
    dict_check,
    fail,
    int_check,
    list_check,
    str_check,
)

Task = Literal["sentence-embedding", "text-ranking", "sparse-embedding", "multi-vector-embedding"]
TASKS: tuple[str, ...] = get_args(Task)

# A task config: frozen; its equality is the Mapping's (equal JSON forms), so it also equals the dict it was read from.
_config = dataclass(frozen=True, eq=False)


class JsonRecord:
    """A frozen dataclass with a JSON object form: a key per field (lists as tuples); a field with default None is
    written only when set. `CHECKS` checks each key's JSON value, `NESTED` names keys that hold a nested record."""

    CHECKS: ClassVar[dict[str, Check]] = {}
    NESTED: ClassVar[dict[str, type[JsonRecord]]] = {}
    OWNER: ClassVar[str] = "this object"  # how messages name the object: "a text-ranking task_config"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, as st_runtime.json stores it."""
        return {f.name: _json(getattr(self, f.name)) for f in fields(self)
                if not (f.default is None and getattr(self, f.name) is None)}

    @classmethod
    def required_keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Any:
        """Build from the JSON form found at `where` ("task_config", "routing.routes['query'].task_config").

        Raises:
            ManifestError: `data` is not an object, or a key is unknown, missing or malformed; the message names it.
        """
        check_fields(data, where, cls.CHECKS, required=cls.required_keys(), closed=cls.OWNER)
        values = {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}
        for key, nested in cls.NESTED.items():
            if values.get(key) is not None:
                values[key] = nested.from_dict(data[key], f"{where}.{key}")
        return cls(**values)


def _json(value: Any) -> Any:
    if isinstance(value, JsonRecord):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_json(item) for item in value]
    return value


class TaskConfig(JsonRecord, Mapping[str, Any]):
    """Base of the per-task configs; a read-only Mapping of the JSON form."""

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@_config
class BiEncoderConfig(TaskConfig):
    """sentence-embedding: nothing beyond the graph (its outputs are the embeddings); the object is empty."""

    OWNER: ClassVar[str] = "a sentence-embedding task_config (which has no keys)"


PAIR_FIELDS = ("query", "document")  # the placeholders every pair template holds once, in this order
PROMPT_FIELD = "prompt"  # and the one a prompted template adds


def template_pieces(template: str) -> tuple[tuple[str, str | None], ...]:
    """(literal text, placeholder name or None) pieces of a pair template (`{query}`, `{document}`, `{prompt}`;
    `{{` and `}}` are literal braces). Nothing in it is evaluated: a placeholder is a bare name.

    Raises:
        ValueError: a placeholder with a format spec, conversion or attribute, or an unbalanced brace.
    """
    pieces = []
    for literal, name, spec, conversion in Formatter().parse(template):
        if name is not None and (spec or conversion or not name.isidentifier()):
            raise ValueError(f"placeholder {{{name}}} is not a bare name")
        pieces.append((literal, name))
    return tuple(pieces)


def template_check(names: tuple[str, ...], *, none: bool = False) -> Check:
    """A pair template holding each of `names` exactly once, in that order, and nothing else."""
    def check(value: Any) -> str | None:
        if value is None and none:
            return None
        want = f"a string with {', '.join('{' + n + '}' for n in names)} once each{' or null' if none else ''}"
        if not isinstance(value, str):
            return f"expected {want}"
        try:
            found = [name for _, name in template_pieces(value) if name is not None]
        except ValueError as exc:
            return f"expected {want} ({exc})"
        return None if sorted(found) == sorted(names) and [n for n in found if n in PAIR_FIELDS] == list(
            PAIR_FIELDS) else f"expected {want}"

    return check


@dataclass(frozen=True)
class PairTemplate(JsonRecord):
    """How an LLM reranker lays out a pair (its chat template, resolved by st-export into fixed text around the
    query and the document): the text the runtime tokenizes whole (no special tokens added), and the token ids
    sentence-transformers writes back over the end of a pair cut at max_seq_length (the template's tail)."""

    text: str  # with {query} and {document}
    prompted: str | None  # the layout when a prompt is given (sentence-transformers: a system message): + {prompt}
    suffix_ids: tuple[int, ...]  # restored over the last tokens of a pair that reached max_seq_length

    CHECKS: ClassVar[dict[str, Check]] = {
        "text": template_check(PAIR_FIELDS), "prompted": template_check((*PAIR_FIELDS, PROMPT_FIELD), none=True),
        "suffix_ids": list_check(int_check(0), "token ids"),
    }
    OWNER: ClassVar[str] = "pair_template"

    def render(self, query: str, document: str, prompt: str | None) -> str:
        """The text of one pair; a prompt (non-empty) goes where the template puts it.

        Raises:
            ValueError: a prompt, and the template has no place for one.
        """
        template = self.prompted if prompt else self.text
        if template is None:
            raise ValueError("this model's chat template has no fixed place for a prompt; call without one")
        values = {"query": query, "document": document, PROMPT_FIELD: prompt or ""}
        return "".join(literal + (values[name] if name else "") for literal, name in _pieces(template))


@lru_cache(maxsize=64)
def _pieces(template: str) -> tuple[tuple[str, str | None], ...]:
    return template_pieces(template)


@_config
class CrossEncoderConfig(TaskConfig):
    """text-ranking: the graph's `scores` output already has the model's activation applied. An LLM reranker (a
    causal LM scored by the logits of label tokens, sentence-transformers' LogitScore) also records those tokens and,
    when its pairs go through a chat template, the template; older folders have neither."""

    num_labels: int  # scores per pair: 1 for rerankers, more for pair classifiers (NLI)
    activation: str | None  # the activation's numpy name in st_runtime ("sigmoid", "identity", ...); None: none known
    activation_fn: str  # its dotted path, as sentence-transformers saves it
    label_token_ids: tuple[int, ...] | None = None  # LLM reranker: (true,) or (true, false); score = true - false
    pair_template: PairTemplate | None = None  # LLM reranker with a chat template (None: the tokenizer pairs texts)

    CHECKS: ClassVar[dict[str, Check]] = {
        "num_labels": int_check(1), "activation": str_check(none=True), "activation_fn": str_check(empty=False),
        "label_token_ids": list_check(int_check(0), "token ids", none=True), "pair_template": dict_check(none=True),
    }
    NESTED: ClassVar[dict[str, type[JsonRecord]]] = {"pair_template": PairTemplate}
    OWNER: ClassVar[str] = "a text-ranking task_config"


@dataclass(frozen=True)
class SpladePooling(JsonRecord):
    """SpladePooling's settings, as the SPLADE graph applies them (recorded in the task_config's top level)."""

    pooling_strategy: Literal["max", "sum"]
    activation_function: str  # "relu" or "log1p_relu"
    chunk_size: int | None  # tokens summed per chunk (None: all at once)

    CHECKS: ClassVar[dict[str, Check]] = {
        "pooling_strategy": str_check(choices=("max", "sum")), "activation_function": str_check(empty=False),
        "chunk_size": int_check(1, none=True),
    }
    OWNER: ClassVar[str] = "SpladePooling's settings"


@_config
class SparseGraphConfig(TaskConfig):
    """sparse-embedding, one graph (a route's task_config): the width of its output, and for a SPLADE graph (MLM
    Transformer -> SpladePooling) the pooling settings, whose keys sit beside vocab_size in the JSON form; None: a
    SparseStaticEmbedding graph (no (batch, sequence, vocabulary) tensor inside)."""

    vocab_size: int
    splade: SpladePooling | None

    CHECKS: ClassVar[dict[str, Check]] = {"vocab_size": int_check(1), **SpladePooling.CHECKS}
    OWNER: ClassVar[str] = "a sparse-embedding route's task_config"

    def to_dict(self) -> dict[str, Any]:
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "splade"}
        return plain | (self.splade.to_dict() if self.splade is not None else {})

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Any:
        plain = tuple(f.name for f in fields(cls) if f.name != "splade")
        check_fields(data, where, cls.CHECKS, required=plain, closed=cls.OWNER)
        pooling = {key: data[key] for key in SpladePooling.CHECKS if key in data}
        splade = SpladePooling.from_dict(pooling, where) if pooling else None  # all three keys, or none
        return cls(**{key: data[key] for key in plain}, splade=splade)


@_config
class SparseEncoderConfig(SparseGraphConfig):
    """sparse-embedding, the model (the top-level task_config): its graph's facts (for a Router model, vocab_size
    only) and the model's max_active_dims."""

    max_active_dims: int | None  # keep this many largest weights per text by default (None: all)

    CHECKS: ClassVar[dict[str, Check]] = {**SparseGraphConfig.CHECKS, "max_active_dims": int_check(1, none=True)}
    OWNER: ClassVar[str] = "a sparse-embedding task_config"


@dataclass(frozen=True)
class QueryExpansion(JsonRecord):
    """ColBERT query expansion, resolved as sentence-transformers' Transformer applies it."""

    strategy: Literal["fixed", "min"]  # "fixed": pad queries to exactly `length`; "min": to at least `length`
    attend: bool  # the expansion positions are attended to
    length: int
    token_id: int | None  # the token the positions hold (None: they keep the pad id)

    CHECKS: ClassVar[dict[str, Check]] = {
        "strategy": str_check(choices=("fixed", "min")), "attend": bool_check(), "length": int_check(0),
        "token_id": int_check(0, none=True),
    }
    OWNER: ClassVar[str] = "query_expansion"


@_config
class MultiVectorConfig(TaskConfig):
    """multi-vector-embedding: how texts are tokenized per task and which token rows are scored, as
    sentence-transformers' Transformer and MultiVectorMask do it (the graph itself is the same for both tasks)."""

    query_length: int | None  # truncation length of queries (None: max_seq_length)
    document_length: int | None  # of documents
    query_expansion: QueryExpansion | None
    has_mask_module: bool  # a MultiVectorMask follows the Transformer
    skiplist_ids: tuple[int, ...]  # tokens the mask drops ...
    skiplist_tasks: tuple[str, ...]  # ... for these tasks ("document" stands for no task)
    keep_only_token_ids: tuple[int, ...] | None  # documents keep only these tokens (None: all)
    truncate_dim: int | None = None  # the dimension the model was saved with (None: the full one)

    CHECKS: ClassVar[dict[str, Check]] = {
        "query_length": int_check(1, none=True), "document_length": int_check(1, none=True),
        "query_expansion": dict_check(none=True), "has_mask_module": bool_check(),
        "skiplist_ids": list_check(int_check(0), "token ids"), "skiplist_tasks": list_check(str_check(), "strings"),
        "keep_only_token_ids": list_check(int_check(0), "token ids", none=True), "truncate_dim": int_check(1, none=True),
    }
    NESTED: ClassVar[dict[str, type[JsonRecord]]] = {"query_expansion": QueryExpansion}
    OWNER: ClassVar[str] = "a multi-vector-embedding task_config"


# task -> the class of its top-level task_config, and of a route's
MODEL_CONFIGS: dict[str, type[TaskConfig]] = {
    "sentence-embedding": BiEncoderConfig,
    "text-ranking": CrossEncoderConfig,
    "sparse-embedding": SparseEncoderConfig,
    "multi-vector-embedding": MultiVectorConfig,
}
ROUTE_CONFIGS: dict[str, type[TaskConfig]] = {**MODEL_CONFIGS, "sparse-embedding": SparseGraphConfig}


def config_class(task: Any, *, route: bool = False) -> type[TaskConfig]:
    """The class of the task_config of a `task` model (of one of its routes, with route=True).

    Raises:
        ManifestError: a task this st_runtime does not know.
    """
    classes = ROUTE_CONFIGS if route else MODEL_CONFIGS
    if not isinstance(task, str) or task not in classes:
        raise fail("task", f"is {task!r:.60}: this st_runtime knows the tasks {list(TASKS)} (upgrade st-runtime if a "
                           "newer st-export wrote the folder)")
    return classes[task]
