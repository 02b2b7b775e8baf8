"""bf16/fp16 sources export in fp32.

transformers 5 loads a checkpoint in the dtype its config names (Qwen3-Embedding: bfloat16, e5-mistral: float16), so
sentence-transformers runs it in that dtype. A graph traced in bf16 does not open on onnxruntime's CPU provider and
an fp16 one drifts from fp32; fp16/bf16 are variants (`--fp16`, `--bf16`), never the base graph. `SourcePrecision`
casts the loaded model to fp32 in place for tracing and the parity gate (the same weights, exactly: every bf16 and
fp16 value is an fp32 value), and back to each tensor's own dtype to measure the graph against sentence-transformers
as it runs the source, then for good (a model passed in memory is handed back as it came). One copy of the weights
is held at any time.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

import torch
from torch import nn

FP32 = "float32"
REDUCED = (torch.bfloat16, torch.float16)  # what is cast to fp32 (float64 tensors stay: they compute as loaded)


class SourcePrecision:
    """The dtypes a loaded model came in, and in-place casts between them and fp32."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        # (module, attribute, is_parameter) -> its dtype as loaded, for every bf16/fp16 tensor.
        self.reduced: dict[tuple[nn.Module, str, bool], torch.dtype] = {}
        sizes: Counter[torch.dtype] = Counter()
        seen: set[int] = set()
        for module in model.modules():
            for is_parameter, tensors in ((True, module._parameters), (False, module._buffers)):
                for name, tensor in tensors.items():
                    if tensor is None or not tensor.is_floating_point():
                        continue
                    if is_parameter and id(tensor) not in seen:
                        sizes[tensor.dtype] += tensor.numel()
                    seen.add(id(tensor))
                    if tensor.dtype in REDUCED:
                        self.reduced[(module, name, is_parameter)] = tensor.dtype
        names = {str(dtype).removeprefix("torch.") for dtype in self.reduced.values()}
        most = str(sizes.most_common(1)[0][0]).removeprefix("torch.") if sizes else FP32
        # The dtype most weights are in ("bfloat16"); a mostly-fp32 model with some reduced tensors names them too.
        self.dtype = most if most in names or not names else f"{most} with {'/'.join(sorted(names))}"

    @property
    def is_fp32(self) -> bool:
        """Whether the model has no bf16/fp16 tensor: nothing to cast, nothing more to measure."""
        return not self.reduced

    def _cast(self, to_fp32: bool) -> None:
        # A tensor shared by several modules (tied weights) is cast once: old tensor id -> (old, cast) for this pass.
        done: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for (module, name, is_parameter), dtype in self.reduced.items():
            tensors = module._parameters if is_parameter else module._buffers
            tensor = tensors[name]
            target = torch.float32 if to_fp32 else dtype
            if tensor.dtype == target or id(tensor) in done:
                if not is_parameter and id(tensor) in done:
                    tensors[name] = done[id(tensor)][1]
                continue
            if is_parameter:  # in place: optimizers, tied modules and hooks keep holding the same Parameter
                tensor.data = tensor.data.to(target)
                done[id(tensor)] = (tensor, tensor)
            else:
                done[id(tensor)] = (tensor, tensor.to(target))
                tensors[name] = done[id(tensor)][1]

    @contextlib.contextmanager
    def _cast_within(self, to_fp32: bool) -> Iterator[None]:
        """Cast one way inside the block and back after (also on error)."""
        self._cast(to_fp32=to_fp32)
        try:
            yield
        finally:
            self._cast(to_fp32=not to_fp32)

    def fp32(self) -> contextlib.AbstractContextManager[None]:
        """The model in fp32 inside the block, in its own dtypes again after (also on error)."""
        return self._cast_within(True)

    def original(self) -> contextlib.AbstractContextManager[None]:
        """Inside a `fp32()` block: the model in the dtypes it was loaded in, fp32 again after."""
        return self._cast_within(False)
