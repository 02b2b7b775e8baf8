"""Type and range checks of a manifest's JSON before any of it is used.

A malformed field (a string where a length belongs, a negative dimension, `files: null`, no variants) raises
`ManifestError` naming the field, instead of a TypeError, OverflowError or numpy broadcast error deep inside a call.
The checks accept every manifest st-export writes; unknown top-level keys are left to `Manifest.from_json`, and the
task_config of each kind is checked by its typed config (st_runtime/task_configs.py) with the checks defined here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from st_runtime.errors import ManifestError

MAX_INT = 2**31 - 1  # what the tokenizer, onnxruntime and numpy take as a length or dimension without overflowing
BACKENDS = ("onnxruntime", "openvino")
SIDES = ("left", "right")

Check = Callable[[Any], str | None]  # returns what is wrong (None: the value is fine)


def int_check(low: int, *, none: bool = False) -> Check:
    def check(value: Any) -> str | None:
        if value is None and none:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_INT:
            what = "a positive integer" if low == 1 else f"an integer >= {low}"
            return f"expected {what}{' or null' if none else ''} (at most {MAX_INT})"
        return None

    return check


def str_check(*, none: bool = False, empty: bool = True, choices: tuple[str, ...] = ()) -> Check:
    def check(value: Any) -> str | None:
        if value is None and none:
            return None
        if not isinstance(value, str) or (not empty and not value) or (choices and value not in choices):
            what = f"one of {list(choices)}" if choices else "a non-empty string" if not empty else "a string"
            return f"expected {what}{' or null' if none else ''}"
        return None

    return check


def dict_check(*, none: bool = False, values: Check | None = None, what: str = "strings") -> Check:
    def check(value: Any) -> str | None:
        if value is None and none:
            return None
        if not isinstance(value, dict) or (values is not None and not all(
                isinstance(k, str) and values(v) is None for k, v in value.items())):
            return f"expected an object{f' of {what}' if values is not None else ''}{' or null' if none else ''}"
        return None

    return check


def list_check(item: Check, what: str, *, none: bool = False) -> Check:
    def check(value: Any) -> str | None:
        if value is None and none:
            return None
        if not isinstance(value, list) or any(item(v) is not None for v in value):
            return f"expected a list of {what}{' or null' if none else ''}"
        return None

    return check


def bool_check() -> Check:
    def check(value: Any) -> str | None:
        return None if isinstance(value, bool) else "expected true or false"

    return check


TOKENIZER: dict[str, Check] = {
    "file": str_check(empty=False), "max_seq_length": int_check(1, none=True), "pad_token": str_check(),
    "pad_token_id": int_check(0), "padding_side": str_check(choices=SIDES), "truncation_side": str_check(choices=SIDES),
    "padding_sensitive": bool_check(),
}
VARIANT: dict[str, Check] = {
    "name": str_check(empty=False), "file": str_check(empty=False), "precision": str_check(),
    "isa": str_check(none=True), "accuracy": dict_check(none=True), "backend": str_check(choices=BACKENDS),
    "inference_precision": str_check(none=True), "report": dict_check(none=True),
}
ROUTE: dict[str, Check] = {
    "inputs": list_check(str_check(), "strings"), "outputs": list_check(str_check(), "strings"),
    "embedding_dimension": int_check(1, none=True), "modules": list_check(dict_check(), "objects"),
    "task_config": dict_check(),
}
TOP_LEVEL: dict[str, Check] = {
    **ROUTE, "task": str_check(empty=False), "similarity_fn_name": str_check(none=True),
    "prompts": dict_check(values=str_check()), "default_prompt_name": str_check(none=True),
    "files": dict_check(values=str_check()), "parity": dict_check(), "source": dict_check(), "versions": dict_check(),
    "max_positions": dict_check(values=int_check(1), what="positive integers"),
}


def fail(where: str, problem: str) -> ManifestError:
    """The error for field `where` ("task_config.num_labels") of st_runtime.json and what is wrong with it."""
    return ManifestError(f"st_runtime.json is missing or has malformed fields: {where} {problem}. Re-export the model.")


def check_fields(data: Any, where: str, checks: dict[str, Check], required: tuple[str, ...] = (),
                 closed: str | None = None) -> None:
    """Check the object `data` (field `where`, "" for the manifest itself) against `checks`.

    Args:
        required: keys that must be present.
        closed: None: keys without a check are left alone; else a key without a check is refused, and this names
            the object in the message ("a text-ranking task_config").

    Raises:
        ManifestError: naming the first key that is missing, unknown (closed) or malformed.
    """
    if not isinstance(data, dict):
        raise fail(where or "the manifest", f"is {type(data).__name__}, expected a JSON object")
    prefix = f"{where}." if where else ""
    if closed is not None:
        for key in data:
            if key not in checks:
                known = ", ".join(sorted(checks)) or "none"
                raise fail(f"{prefix}{key}", f"is not a key of {closed} (its keys: {known})")
    for key in required:
        if key not in data:
            raise fail(f"{prefix}{key}", "is missing")
    for key, check in checks.items():
        if key in data and (problem := check(data[key])) is not None:
            raise fail(f"{prefix}{key}", f"is {data[key]!r:.60}: {problem}")


def _check_graph(data: Any, where: str, checks: dict[str, Check], required: tuple[str, ...]) -> None:
    """The fields a route and the top level share: inputs, outputs, tokenizer, variants, dimension, task_config (an
    object here; its keys are checked by the task's typed config when the manifest is built)."""
    check_fields(data, where, checks, required=required)
    prefix = f"{where}." if where else ""
    check_fields(data["tokenizer"], f"{prefix}tokenizer", TOKENIZER)
    if not isinstance(data["variants"], list) or not data["variants"]:
        raise fail(f"{prefix}variants", f"is {data['variants']!r:.60}: expected a non-empty list")
    for index, variant in enumerate(data["variants"]):
        check_fields(variant, f"{prefix}variants[{index}]", VARIANT, required=("name", "file"))


def check_manifest_data(data: Any) -> None:
    """Check the types and ranges of a parsed manifest (including its routes) before it is used.

    Raises:
        ManifestError: the data is not an object, or a field is missing or malformed; the message names the field.
    """
    _check_graph(data, "", TOP_LEVEL, required=("task", "tokenizer", "variants"))
    routing = data.get("routing")
    if routing is None:
        return
    check_fields(routing, "routing", {"routes": dict_check(), "tasks": dict_check(values=str_check()), "primary": str_check(),
                                       "default_route": str_check(none=True), "other_tasks_route": str_check(none=True)},
                  required=("routes", "tasks", "primary", "default_route", "other_tasks_route"))
    for name, route in routing["routes"].items():
        _check_graph(route, f"routing.routes[{name!r}]", ROUTE, required=("tokenizer", "variants"))
    named = {*routing["tasks"].values(), routing["default_route"], routing["other_tasks_route"], routing["primary"]}
    unknown = sorted(named - {None} - set(routing["routes"]))
    if unknown:
        raise fail("routing", f"names routes {unknown} that routing.routes does not describe")
