"""Attention masks the TorchScript tracer can follow.

transformers builds an attention mask by calling an index-based mask function (causal, sliding window, chunked,
bidirectional, a model's own overlay such as EmbeddingGemma's bidirectional window) over (batch, head, query, key)
indices. transformers 5 does that with `torch.vmap` whenever a model adds its own overlay (`or_mask_function` /
`and_mask_function`: Gemma3 with `use_bidirectional_attention`), transformers 4.57 always; the tracer cannot follow
vmap (`RuntimeError: unordered_map::at`). `broadcast_masks` swaps the vmap expansion for the broadcasting one that
transformers itself uses by default (`_non_vmap_expansion_sdpa`): the same mask function called once on index
tensors shaped to broadcast, which gives the same mask for every index-based function (what transformers requires
of them) and traces to plain ONNX comparisons.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable, Iterator

from torch import Tensor, nn

from exporters.errors import GraphExportError
from st_runtime.errors import DEBUG_ENV, StRuntimeError, one_line

# The vmap expansion of each transformers line: 5.x `_vmap_expansion_sdpa(fn)`, 4.57 `_vmap_for_bhqkv(fn, bh_indices)`.
VMAP_EXPANSIONS = ("_vmap_expansion_sdpa", "_vmap_for_bhqkv")


def broadcast_expansion(mask_function: Callable[..., Tensor], bh_indices: bool = True) -> Callable[..., Tensor]:
    """`mask_function` applied to every (batch, head, q, kv) index by broadcasting instead of vmap: returns the mask
    of shape (batch, heads, q, kv), or (q, kv) when `bh_indices` is False (as the vmap expansion does)."""

    def expanded(batch: Tensor | None, head: Tensor | None, q: Tensor, kv: Tensor) -> Tensor:
        if not bh_indices:
            return mask_function(batch, head, q[:, None], kv[None, :]).expand(q.shape[0], kv.shape[0])
        mask = mask_function(batch[:, None, None, None], head[None, :, None, None], q[None, None, :, None],
                             kv[None, None, None, :])
        return mask.expand(batch.shape[0], head.shape[0], q.shape[0], kv.shape[0])

    return expanded


@contextlib.contextmanager
def broadcast_masks() -> Iterator[None]:
    """While tracing, transformers builds every attention mask by broadcasting instead of vmap; restored after.

    A mask function that is not index-based (reads a Python value of an index) fails the trace, and st-export reports
    that in one line naming the module (`graph_failures`).
    """
    try:
        from transformers import masking_utils
    except ImportError:  # no transformers: no masks to build
        yield
        return
    originals = {name: getattr(masking_utils, name) for name in VMAP_EXPANSIONS if hasattr(masking_utils, name)}
    getitem = getattr(masking_utils, "TransformGetItemToIndex", None)
    for name in originals:
        setattr(masking_utils, name, broadcast_expansion)
    if getitem is not None:  # only vmap needs scalar-tensor indexing turned into index ops
        masking_utils.TransformGetItemToIndex = contextlib.nullcontext
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(masking_utils, name, original)
        if getitem is not None:
            masking_utils.TransformGetItemToIndex = getitem


def module_label(index: int | str, module: nn.Module) -> str:
    """"Module 0 (Transformer, Gemma3TextModel)": a module of the chain by its index, class and transformers model."""
    inner = getattr(module, "auto_model", None)
    return f"Module {index} ({type(module).__name__}{f', {type(inner).__name__}' if inner is not None else ''})"


def architecture(model: nn.Module) -> str:
    """The transformers architecture(s) of the chain, e.g. "Gemma3TextModel (model_type gemma3_text)", or the module
    classes when no module wraps a transformers model."""
    found = []
    for module in model.modules():
        config = getattr(getattr(module, "auto_model", None), "config", None)
        if config is not None:
            found.append(f"{type(module.auto_model).__name__} (model_type {getattr(config, 'model_type', '?')})")
    return ", ".join(dict.fromkeys(found)) or ", ".join(type(m).__name__ for m in model.children())


def chain(model: nn.Module) -> str:
    """"Module 0 (Transformer, Gemma3TextModel) -> Pooling -> Normalize": the model's modules in order."""
    modules = list(model.children())
    return " -> ".join([module_label(0, modules[0]), *(type(m).__name__ for m in modules[1:])]) if modules else "?"


def failing_module(exc: BaseException, model: nn.Module) -> str | None:
    """The label of the module of `model`'s chain whose code raised `exc` (or the exceptions it was raised from), by
    the `self` of the frames of their tracebacks; None when no frame is one of the chain's modules."""
    labels = {id(module): module_label(index, module) for index, module in enumerate(model.children())}
    for name, module in model.named_modules():  # a Router's route modules: labelled by their path
        if id(module) not in labels and type(module).__module__.startswith("sentence_transformers.") and name:
            labels[id(module)] = module_label(name, module)
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for frame, _ in traceback.walk_tb(exc.__traceback__):
            label = labels.get(id(frame.f_locals.get("self")))
            if label is not None:
                return label
        exc = exc.__cause__ or exc.__context__
    return None


NOT_YET = "This architecture does not export yet"
VARIANTS_FAILED = "Export without the variant flags for the fp32 folder, or leave out the variant that failed"


@contextlib.contextmanager
def graph_failures(model: nn.Module, what: str, advice: str = NOT_YET) -> Iterator[None]:
    """Turn an unforeseen exception while `what` (e.g. "tracing the graph") into one GraphExportError naming the
    module that raised it, the architecture and `advice` (what the user can do); the project's own errors, OSError
    (disk, permissions) and ImportError pass unchanged.

    Raises:
        GraphExportError: for any other Exception (MemoryError included).
    """
    try:
        yield
    except (StRuntimeError, OSError, ImportError):
        raise
    except Exception as exc:  # torch.onnx, onnx, transformers and onnxruntime raise many kinds; each is reported
        where = failing_module(exc, model)
        place = f" in {where}" if where else f" for the chain {chain(model)}"
        if isinstance(exc, MemoryError):
            raise GraphExportError(
                f"Out of memory while {what}{place}, architecture {architecture(model)}; nothing was written. Free "
                "memory, or export on a machine with more.") from exc
        raise GraphExportError(
            f"{what.capitalize()} failed{place}, architecture {architecture(model)}: {type(exc).__name__}: "
            f"{one_line(exc)[:300]}. Nothing was written. {advice}: please report it, with the traceback that "
            f"{DEBUG_ENV}=1 prints.") from exc
