"""The bad-row policy (`--on-bad-row`, `on_bad_row=`) in one place: what makes a row unusable, and what each policy
does with such a row. st-embed's shards and Ray's `Embedder` both judge every row with `BadRows.judge`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from st_runtime.embed.io import EmbedError, Row

BadRowPolicy = Literal["error", "skip", "empty"]
POLICIES: tuple[str, ...] = get_args(BadRowPolicy)
Verdict = Literal["keep", "skip", "empty"]
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def check_policy(policy: Any, option: str = "--on-bad-row") -> BadRowPolicy:
    """`policy` if it is one of POLICIES, else an EmbedError naming `option`."""
    if policy not in POLICIES:
        raise EmbedError(f"{option} must be {', '.join(POLICIES[:-1])} or {POLICIES[-1]}, got {policy!r}.")
    return policy


def setting(option: str, value: str) -> str:
    """How to write `option` set to `value`: "--on-bad-row skip" on a command line, "on_bad_row='skip'" in Python."""
    return f"{option} {value}" if option.startswith("--") else f"{option}={value!r}"


def subject(row: Row, id_column: bool, of: str = "") -> str:
    """"Row 3 (line 5, id 'b')": how a message names a row (its line where that differs from the row number);
    `of` follows the number (" of a batch")."""
    details = [f"line {row.line}"] if row.line is not None and row.line != row.number + 1 else []
    if id_column and row.problem is None and id_problem(row.id) is None:
        details.append(f"id {_short(row.id)}")
    return f"Row {row.number}{of}" + (f" ({', '.join(details)})" if details else "")


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def text_problem(text: Any) -> str | None:
    """Why `text` cannot be embedded (as the end of a sentence about the row), or None."""
    if not isinstance(text, str):
        return f"is {type(text).__name__} ({_short(text)}), not a string"
    if not text.strip():
        return "is empty"
    return _unicode_problem(text)


def id_problem(row_id: Any) -> str | None:
    """Why `row_id` cannot be written as an id (an int64 or a string), or None."""
    if isinstance(row_id, str):
        problem = _unicode_problem(row_id)
        return None if problem is None else f"has an id that {problem}"
    if isinstance(row_id, bool) or not isinstance(row_id, int):
        what = "no id" if row_id is None else f"an id of type {type(row_id).__name__} ({_short(row_id)})"
        return f"has {what}; ids must be integers (int64) or strings"
    if not INT64_MIN <= row_id <= INT64_MAX:
        return f"has the id {_short(row_id)}, outside the int64 range ids must be in (write it as a string)"
    return None


def _unicode_problem(text: str) -> str | None:
    """A lone surrogate: either bytes of the input that are not UTF-8 (read as U+DC80..U+DCFF, "surrogateescape"),
    or one the input spelled out (a JSON "\\ud800")."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = ord(text[exc.start])
        if 0xDC80 <= char <= 0xDCFF:
            return f"is not valid UTF-8 (byte 0x{char - 0xDC00:02x} at character {exc.start})"
        return f"is not valid Unicode (a lone surrogate U+{char:04X} at character {exc.start})"
    return None


@dataclass
class BadRows:
    """Applies a policy to rows and counts them. `option` is how the advice names the setting."""

    policy: BadRowPolicy
    id_column: bool = False  # whether ids come from the input (else they are row numbers and always usable)
    option: str = "--on-bad-row"  # or "on_bad_row" (the Python argument)
    count: int = 0  # bad rows seen
    left_out: int = 0  # of those, rows not written at all

    def __post_init__(self) -> None:
        check_policy(self.policy, self.option)

    def judge(self, row: Row, of: str = "") -> Verdict:
        """"keep" a good row; for a bad one "skip" (leave it out) or "empty" (write it with an empty embedding), or
        raise EmbedError under "error". A row without a usable id is left out under "empty" too: it has nothing to
        be written under.

        Raises:
            EmbedError: a bad row under the "error" policy, naming the row and the reruns that go past it.
        """
        bad_id = id_problem(row.id) if self.id_column and row.problem is None else None
        problem = row.problem or bad_id or text_problem(row.text)
        if problem is None:
            return "keep"
        self.count += 1
        no_id = bad_id is not None or (row.problem is not None and self.id_column)  # unparsed: its id is unknown
        if self.policy == "error":
            skip, empty = setting(self.option, "skip"), setting(self.option, "empty")
            advice = (f"pass {skip} or {empty} to leave it out" if no_id else
                      f"pass {skip} (leave it out) or {empty} (keep it with an empty embedding)")
            raise EmbedError(f"{subject(row, self.id_column, of)} {problem}; {advice}.")
        if self.policy == "skip" or no_id:
            self.left_out += 1
            return "skip"
        return "empty"
