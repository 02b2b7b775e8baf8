"""What every exported model shares: reading the folder, verifying it, the tokenizer, the session, and
length-sorted batching of inputs."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf, NoSuchFile

from st_runtime.errors import InvalidInputError, ManifestError, ModelFileError
from st_runtime.manifest import Manifest, load_manifest, verify_files
from st_runtime.providers import ProviderSpec, create_session
from st_runtime.tokenizer import Feeds, TextTokenizer

logger = logging.getLogger("st_runtime")

_TASK_CLASSES = {"sentence-embedding": "SentenceTransformer"}


class ExportedModel:
    """Base of the runtime model classes: one exported folder, one onnxruntime session.

    Args:
        model_name_or_path: folder written by `st-export`.
        providers: onnxruntime providers (default CPU only); names, aliases ("cuda") or (name, options).
        variant: variant name from the manifest ("fp32", "qint8_avx512_vnni", ...); default the fp32 graph.
        file_name: or the variant's file, e.g. "onnx/model_qint8_avx512_vnni.onnx".
        intra_op_num_threads: threads onnxruntime uses inside one run (default: all cores).
        fallback_to_cpu: log and use CPU when a requested provider is missing, instead of raising.
        verify: check the sha256 of the graph and tokenizer files against the manifest before loading.
    """

    task: ClassVar[str]

    def __init__(
        self,
        model_name_or_path: str | Path,
        *,
        providers: Sequence[ProviderSpec] | str | None = None,
        variant: str | None = None,
        file_name: str | None = None,
        intra_op_num_threads: int | None = None,
        fallback_to_cpu: bool = False,
        verify: bool = True,
    ) -> None:
        self.folder = Path(model_name_or_path)
        self.manifest: Manifest = load_manifest(self.folder)
        if self.manifest.task != self.task:
            owner = _TASK_CLASSES.get(self.manifest.task, "the class for that task")
            raise ManifestError(
                f"{str(self.folder)!r} holds a {self.manifest.task!r} model, not {self.task!r}; "
                f"load it with st_runtime.{owner}."
            )
        self.variant = self.manifest.variant(name=variant, file_name=file_name)
        files = [self.variant.file, self.manifest.tokenizer.file]
        files += [f for f in self.manifest.files if f.startswith(self.variant.file + "_data")]
        if verify:
            verify_files(self.folder, self.manifest, files)
        self.tokenizer = TextTokenizer(self.folder, self.manifest.tokenizer)
        try:
            self.session = create_session(
                str(self.folder / self.variant.file),
                providers,
                intra_op_num_threads=intra_op_num_threads,
                fallback_to_cpu=fallback_to_cpu,
            )
        except (Fail, InvalidGraph, InvalidProtobuf, NoSuchFile) as exc:
            raise ModelFileError(
                f"onnxruntime could not load {self.variant.file} from {str(self.folder)!r}: {exc}. "
                "The file is corrupt or was written by another tool; re-export the model."
            ) from exc
        # Inputs with a default (e.g. prompt_length) are overridable initializers, not plain inputs.
        self._input_names = tuple(
            i.name for i in (*self.session.get_inputs(), *self.session.get_overridable_initializers())
        )

    @property
    def max_seq_length(self) -> int:
        """Texts are truncated to this many tokens, special tokens included."""
        return self.manifest.max_seq_length

    def _run(self, feeds: Feeds, outputs: list[str]) -> list[np.ndarray]:
        """Run the graph on tokenized inputs, feeding only the inputs the graph declares."""
        return self.session.run(outputs, {name: feeds[name] for name in self._input_names if name in feeds})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.folder)!r}, variant={self.variant.name!r})"


def check_texts(inputs: Any, argument: str = "inputs") -> tuple[list[str], bool]:
    """Validate text input: a str, or a list/tuple/array of str.

    Returns:
        (texts, was_single_string)

    Raises:
        InvalidInputError: None, a non-iterable, or any item that is not a string.
    """
    if isinstance(inputs, str):
        return [inputs], True
    if inputs is None:
        raise InvalidInputError(f"{argument} is None; pass a string or a list of strings.")
    if isinstance(inputs, np.ndarray):
        inputs = inputs.tolist()
    if not isinstance(inputs, Sequence):
        raise InvalidInputError(f"{argument} must be a string or a list of strings, got {type(inputs).__name__}.")
    texts = list(inputs)
    for index, item in enumerate(texts):
        if not isinstance(item, str):
            raise InvalidInputError(
                f"{argument}[{index}] is {type(item).__name__} ({item!r:.40}), not a string; "
                "every item must be a str (convert numbers, drop None)."
            )
    return texts, False


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Yield index arrays of batches over items sorted longest first, so each batch pads little.

    Raises:
        ValueError: batch_size < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def progress(total: int, show: bool | None, desc: str = "Batches") -> Any:
    """A tqdm bar over batches, shown when asked or, by default, when the st_runtime logger is at INFO."""
    from tqdm.auto import tqdm

    if show is None:
        show = logger.getEffectiveLevel() <= logging.INFO
    return tqdm(total=total, desc=desc, disable=not show)
