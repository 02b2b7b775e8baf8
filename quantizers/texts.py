"""Text sets for calibration and accuracy: shipped with the package (never downloaded) or read from a file."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).parent / "data"


def read_texts(path: str | Path) -> tuple[str, ...]:
    """Non-empty lines of a UTF-8 text file, one text per line.

    Raises:
        FileNotFoundError / ValueError: the file is missing or holds no text.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Text file {str(path)!r} does not exist (expected one text per line).")
    texts = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if not texts:
        raise ValueError(f"Text file {str(path)!r} holds no text (expected one text per line).")
    return texts


def calibration_texts() -> tuple[str, ...]:
    """The default calibration set shipped with the package (400 varied texts)."""
    return read_texts(DATA / "calibration.txt")


def heldout_texts() -> tuple[str, ...]:
    """The held-out set used for every variant's accuracy report (200 texts, disjoint from calibration)."""
    return read_texts(DATA / "heldout.txt")
