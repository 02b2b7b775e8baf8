"""The variant vocabulary: one name (key) per variant st-export and the zoo build, mapped to its quantizer config.

st-export's flags and a recipe's variant keys both expand to these keys; the name a variant gets in the manifest (the
config's `name`: "O3", "qint8_avx512_vnni", "openvino_qint8_weights") is an alias of its key.

    key                   backend   st-export flag (on that backend)   config
    O1 .. O4              onnx      --optimize O1 .. O4                Optimize(level)
    int8                  onnx      --quantize int8 [--isa]            DynamicInt8(isa)
    int8-static           onnx      --quantize int8-static             StaticInt8(calibration texts, method, isa)
    int8-weights          onnx      --quantize int8-weights            WeightOnly(bits=8)    (MatMulNBits)
    int4-weights          onnx      --quantize int4-weights            WeightOnly(bits=4)    (MatMulNBits)
    fp16                  onnx      --fp16                             Fp16()
    openvino              openvino  (--backend openvino itself)        OpenVino("fp32")
    openvino-bf16         openvino  --bf16 (implies the backend)       OpenVino("bf16")
    openvino-fp16         openvino  --fp16                             OpenVino("fp16")
    openvino-int8         openvino  --quantize int8 (or int8-weights)  OpenVinoInt8Weights()
    openvino-int4         openvino  --quantize int4-weights            OpenVinoInt4Weights()
    openvino-int8-static  openvino  --quantize int8-static             OpenVinoStaticInt8(calibration texts)

Importing this module imports no onnx: the zoo validates recipes with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from quantizers import configs
from quantizers.configs import CALIBRATION_METHODS, OPTIMIZATION_LEVELS, QuantizationConfig
from st_runtime.machine import ISAS

Backend = Literal["onnx", "openvino"]
BACKENDS: tuple[Backend, ...] = ("onnx", "openvino")


@dataclass(frozen=True)
class VariantOptions:
    """The settings a variant may take (each key says which it takes)."""

    isa: str | None = None  # int8 presets: None detects this CPU's
    method: str | None = None  # calibration method of int8-static (None: minmax)
    calibration_texts: tuple[str, ...] | None = None  # None: the set quantizers ships


@dataclass(frozen=True)
class VariantEntry:
    """One row of the table."""

    key: str
    backend: Backend
    flag: str | None  # the st-export flag value that asks for it on its backend (None: the backend itself)
    make: Callable[[VariantOptions], QuantizationConfig]
    takes: frozenset[str] = frozenset()  # the VariantOptions it uses: "isa", "method", "calibration_texts"
    named_by: tuple[str, ...] = ()  # the options its manifest name spells ("qint8_avx2": the ISA)
    also_flags: tuple[str, ...] = ()  # other flag values that ask for it (openvino-int8 is int8 weights already)

    def config(self, options: VariantOptions | None = None) -> QuantizationConfig:
        return self.make(options or VariantOptions())


def _optimize(level: str) -> VariantEntry:
    return VariantEntry(level, "onnx", level, lambda _: configs.Optimize(level))


# In st-export's order: the onnx variants, then the OpenVINO ones (the fp32 IR before those that reuse or convert it).
VARIANTS: dict[str, VariantEntry] = {entry.key: entry for entry in (
    *(_optimize(level) for level in OPTIMIZATION_LEVELS),
    VariantEntry("int8", "onnx", "int8", lambda o: configs.DynamicInt8(isa=o.isa), frozenset({"isa"}), named_by=("isa",)),
    VariantEntry("int8-static", "onnx", "int8-static",
                 lambda o: configs.StaticInt8(calibration_texts=o.calibration_texts, method=o.method or "minmax",
                                               isa=o.isa),
                 frozenset({"isa", "method", "calibration_texts"}), named_by=("method",)),
    VariantEntry("int8-weights", "onnx", "int8-weights", lambda _: configs.WeightOnly(bits=8)),
    VariantEntry("int4-weights", "onnx", "int4-weights", lambda _: configs.WeightOnly(bits=4)),
    VariantEntry("fp16", "onnx", "fp16", lambda _: configs.Fp16()),
    VariantEntry("openvino", "openvino", None, lambda _: configs.OpenVino("fp32")),
    VariantEntry("openvino-bf16", "openvino", "bf16", lambda _: configs.OpenVino("bf16")),
    VariantEntry("openvino-fp16", "openvino", "fp16", lambda _: configs.OpenVino("fp16")),
    VariantEntry("openvino-int8", "openvino", "int8", lambda _: configs.OpenVinoInt8Weights(), also_flags=("int8-weights",)),
    VariantEntry("openvino-int4", "openvino", "int4-weights", lambda _: configs.OpenVinoInt4Weights()),
    VariantEntry("openvino-int8-static", "openvino", "int8-static",
                 lambda o: configs.OpenVinoStaticInt8(calibration_texts=o.calibration_texts), frozenset({"calibration_texts"})),
)}
VARIANT_KEYS: tuple[str, ...] = tuple(VARIANTS)


def _aliases() -> dict[str, tuple[str, VariantOptions]]:
    """Manifest name -> (key, the options its name spells): every name each key's config can take."""
    aliases: dict[str, tuple[str, VariantOptions]] = {}
    for entry in VARIANTS.values():
        for isa in ISAS if "isa" in entry.named_by else (None,):
            for method in CALIBRATION_METHODS if "method" in entry.named_by else (None,):
                options = VariantOptions(isa=isa, method=method)
                aliases[entry.make(options).name] = (entry.key, options)
    return aliases


ALIASES: dict[str, tuple[str, VariantOptions]] = _aliases()


def canonical(name: str) -> str:
    """The key of variant `name`: a key itself, or a manifest name ("openvino_qint8_weights" -> "openvino-int8",
    "qint8_avx512_vnni" -> "int8").

    Raises:
        ValueError: no variant has this name; the message lists the keys.
    """
    if name in VARIANTS:
        return name
    if name in ALIASES:
        return ALIASES[name][0]
    raise ValueError(f"Unknown variant {name!r}; the variants are {', '.join(VARIANT_KEYS)} (or their manifest names, "
                     "e.g. qint8_avx512_vnni, openvino_qint8_weights).")


def variant_config(name: str, *, isa: str | None = None, method: str | None = None,
                   calibration_texts: tuple[str, ...] | None = None) -> QuantizationConfig:
    """The quantizer config of variant `name` (a key or a manifest name; a manifest name fixes the options it encodes,
    e.g. "qint8_avx2" the ISA).

    Raises:
        ValueError: an unknown name, or an option the variant does not take, or one that contradicts its name.
    """
    key = canonical(name)
    entry = VARIANTS[key]
    given = {"isa": isa, "method": method, "calibration_texts": calibration_texts}
    refused = sorted(option for option, value in given.items() if value is not None and option not in entry.takes)
    if refused:
        raise ValueError(f"Variant {key!r} takes no {' or '.join(refused)}.")
    implied = ALIASES[name][1] if name not in VARIANTS else VariantOptions()
    for option in ("isa", "method"):
        fixed, asked = getattr(implied, option), given[option]
        if fixed is not None and asked is not None and fixed != asked:
            raise ValueError(f"Variant {name!r} is built with {option} {fixed!r}, not {asked!r}.")
    return entry.config(VariantOptions(isa=isa or implied.isa, method=method or implied.method,
                                       calibration_texts=calibration_texts))


def expand_flags(backends: Iterable[str], flags: Iterable[str]) -> list[str]:
    """The keys st-export's flags ask for, in the table's order: every variant of the chosen `backends` whose flag
    value is among `flags` (an --optimize level, the --quantize values, "fp16", "bf16"), and each OpenVINO backend's
    fp32 IR."""
    backends, flags = set(backends), set(flags)
    return [entry.key for entry in VARIANTS.values()
            if entry.backend in backends and (entry.flag is None or entry.flag in flags or flags & set(entry.also_flags))]


def quantize_flag_values() -> list[str]:
    """The values st-export's --quantize takes: every flag value of the table but the --optimize levels and the
    precision flags (--fp16, --bf16), in the table's order."""
    skip = {*OPTIMIZATION_LEVELS, "fp16", "bf16"}
    values = [value for entry in VARIANTS.values() for value in (entry.flag, *entry.also_flags)
              if value is not None and value not in skip]
    return list(dict.fromkeys(values))
