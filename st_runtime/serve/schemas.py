"""Request bodies of st-serve's endpoints (pydantic), OpenAI's and TEI's field names; unknown fields are ignored."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StrictBool, StrictInt, StrictStr


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", dict: "an object", list: "an array",
             type(None): "null", str: "a string"}
    return names.get(type(value), type(value).__name__)


def _texts(value: Any) -> str | list[str]:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise ValueError(f"must be a string or an array of strings, got {_json_type(value)}")
    if not value:
        raise ValueError("must not be empty")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            hint = " (token arrays are not accepted; send text)" if isinstance(item, (int, list)) else ""
            raise ValueError(f"item {index} is {_json_type(item)}, not a string{hint}")
    return value


def _pairs(value: Any) -> list[str] | list[list[str]]:
    def pair(item: Any, where: str) -> list[str]:
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(t, str) for t in item)):
            raise ValueError(f"{where} must be a pair [text, text] of two strings, got {_json_type(item)}")
        return item

    if isinstance(value, list) and value and isinstance(value[0], str):
        return pair(value, "a single input")
    if not isinstance(value, list) or not value:
        raise ValueError("must be a pair [text, text] or a non-empty array of pairs")
    return [pair(item, f"item {index}") for index, item in enumerate(value)]


def _string_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f"must be an array of strings, got {_json_type(value)}")
    return _texts(value) if value else value  # type: ignore[return-value]


Texts = Annotated[str | list[str], PlainValidator(_texts)]
Pairs = Annotated[list[Any], PlainValidator(_pairs)]
StringList = Annotated[list[str], PlainValidator(_string_list)]
PositiveInt = Annotated[StrictInt, Field(gt=0)]


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class OpenAIEmbeddings(Body):
    """POST /v1/embeddings (OpenAI)."""

    input: Texts
    model: StrictStr
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: PositiveInt | None = None
    user: StrictStr | None = None


class Embed(Body):
    """POST /embed (TEI)."""

    inputs: Texts
    model: StrictStr | None = None
    normalize: StrictBool = True
    truncate: StrictBool | None = None
    prompt_name: StrictStr | None = None
    dimensions: PositiveInt | None = None


class EmbedSparse(Body):
    """POST /embed_sparse (TEI)."""

    inputs: Texts
    model: StrictStr | None = None
    truncate: StrictBool | None = None
    prompt_name: StrictStr | None = None


class Rerank(Body):
    """POST /rerank (TEI)."""

    query: StrictStr
    texts: StringList
    model: StrictStr | None = None
    return_text: StrictBool = False
    raw_scores: StrictBool = False
    truncate: StrictBool | None = None
    top_n: Annotated[StrictInt, Field(ge=0)] | None = None


class Predict(Body):
    """POST /predict (TEI): one [text, text] pair or an array of pairs, scored by a cross-encoder."""

    inputs: Pairs
    model: StrictStr | None = None
    raw_scores: StrictBool = False
    truncate: StrictBool | None = None


class Tokenize(Body):
    """POST /tokenize (TEI)."""

    inputs: Texts
    model: StrictStr | None = None
    add_special_tokens: StrictBool = True
    prompt_name: StrictStr | None = None
