"""Type and range checks of a manifest's JSON before any of it is used.

A malformed field (a string where a length belongs, a negative dimension, `files: null`, no variants) raises
`ManifestError` naming the field, instead of a TypeError, OverflowError or numpy broadcast error deep inside a call.
The checks accept every manifest st-export writes; unknown top-level keys are left to `Manifest.from_json`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from st_runtime.errors import ManifestError

MAX_INT = 2**31 - 1  # what the tokenizer, onnxruntime and numpy take as a length or dimension without overflowing
BACKENDS = ("onnxruntime", "openvino")
SIDES = ("left", "right")

Check = Callable[[Any], str | None]  # returns what is wrong (None: the value is fine)


def _int(low: int, *, none: bool = False) -> Check:
    def check(value: Any) -> str | None:
        if value is None and none:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_INT:
            what = "a positive integer" if low == 1 else f"an integer >= {low}"
            return f"expected {what}{' or null' if none else ''} (at most {MAX_INT})"
        return None

    return check


def _str(*, none: bool = False, empty: bool = True, choices: tuple[str, ...] = ()) -> Check:
    def check(value: Any) -> str | None:
        if value is None and none:
            return None
        if not isinstance(value, str) or (not empty and not value) or (choices and value not in choices):
            what = f"one of {list(choices)}" if choices else "a non-empty string" if not empty else "a string"
            return f"expected {what}{' or null' if none else ''}"
        return None

    return check


def _dict(*, none: bool = False, values: Check | None = None) -> Check:
    def check(value: Any) -> str | None:
        if value is None and none:
            return None
        if not isinstance(value, dict) or (values is not None and not all(
                isinstance(k, str) and values(v) is None for k, v in value.items())):
            return f"expected an object{' of strings' if values is not None else ''}{' or null' if none else ''}"
        return None

    return check


def _list(item: Check, what: str) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, list) or any(item(v) is not None for v in value):
            return f"expected a list of {what}"
        return None

    return check


TOKENIZER: dict[str, Check] = {
    "file": _str(empty=False), "max_seq_length": _int(1, none=True), "pad_token": _str(),
    "pad_token_id": _int(0), "padding_side": _str(choices=SIDES), "truncation_side": _str(choices=SIDES),
}
VARIANT: dict[str, Check] = {
    "name": _str(empty=False), "file": _str(empty=False), "precision": _str(), "isa": _str(none=True),
    "accuracy": _dict(none=True), "backend": _str(choices=BACKENDS), "inference_precision": _str(none=True),
}
TASK_CONFIG: dict[str, Check] = {  # the kind-specific facts the runtime reads
    "num_labels": _int(1), "vocab_size": _int(1), "max_active_dims": _int(1, none=True), "activation": _str(none=True),
}
ROUTE: dict[str, Check] = {
    "inputs": _list(_str(), "strings"), "outputs": _list(_str(), "strings"), "embedding_dimension": _int(1, none=True),
    "modules": _list(_dict(), "objects"), "task_config": _dict(),
}
TOP_LEVEL: dict[str, Check] = {
    **ROUTE, "task": _str(empty=False), "similarity_fn_name": _str(none=True), "prompts": _dict(values=_str()),
    "default_prompt_name": _str(none=True), "files": _dict(values=_str()), "parity": _dict(), "source": _dict(),
    "versions": _dict(),
}


def _fail(where: str, problem: str) -> ManifestError:
    return ManifestError(f"st_runtime.json is missing or has malformed fields: {where} {problem}. Re-export the model.")


def _check_fields(data: Any, where: str, checks: dict[str, Check], required: tuple[str, ...] = ()) -> None:
    if not isinstance(data, dict):
        raise _fail(where or "the manifest", f"is {type(data).__name__}, expected a JSON object")
    prefix = f"{where}." if where else ""
    for key in required:
        if key not in data:
            raise _fail(f"{prefix}{key}", "is missing")
    for key, check in checks.items():
        if key in data and (problem := check(data[key])) is not None:
            raise _fail(f"{prefix}{key}", f"is {data[key]!r:.60}: {problem}")


def _check_graph(data: Any, where: str, checks: dict[str, Check], required: tuple[str, ...]) -> None:
    """The fields a route and the top level share: inputs, outputs, tokenizer, variants, dimension, task_config."""
    _check_fields(data, where, checks, required=required)
    prefix = f"{where}." if where else ""
    _check_fields(data["tokenizer"], f"{prefix}tokenizer", TOKENIZER)
    if not isinstance(data["variants"], list) or not data["variants"]:
        raise _fail(f"{prefix}variants", f"is {data['variants']!r:.60}: expected a non-empty list")
    for index, variant in enumerate(data["variants"]):
        _check_fields(variant, f"{prefix}variants[{index}]", VARIANT, required=("name", "file"))
    _check_fields(data.get("task_config", {}), f"{prefix}task_config", TASK_CONFIG)


def check_manifest_data(data: Any) -> None:
    """Check the types and ranges of a parsed manifest (including its routes) before it is used.

    Raises:
        ManifestError: the data is not an object, or a field is missing or malformed; the message names the field.
    """
    _check_graph(data, "", TOP_LEVEL, required=("task", "tokenizer", "variants"))
    routing = data.get("routing")
    if routing is None:
        return
    _check_fields(routing, "routing", {"routes": _dict(), "tasks": _dict(values=_str()), "primary": _str(),
                                       "default_route": _str(none=True), "other_tasks_route": _str(none=True)},
                  required=("routes", "tasks", "primary", "default_route", "other_tasks_route"))
    for name, route in routing["routes"].items():
        _check_graph(route, f"routing.routes[{name!r}]", ROUTE, required=("tokenizer", "variants"))
    named = {*routing["tasks"].values(), routing["default_route"], routing["other_tasks_route"], routing["primary"]}
    unknown = sorted(named - {None} - set(routing["routes"]))
    if unknown:
        raise _fail("routing", f"names routes {unknown} that routing.routes does not describe")
