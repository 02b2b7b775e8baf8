"""Recipe variant keys -> quantizers configurations (the same names as st-export's flags)."""

from __future__ import annotations

from collections.abc import Sequence

from models_zoo.errors import UnknownVariantError
from models_zoo.recipe import VariantSpec


def quantizer_config(spec: VariantSpec, calibration_texts: tuple[str, ...] | None = None):
    """The quantizers config that builds `spec` (imports quantizers, which needs the export extra).

    Args:
        spec: a recipe variant.
        calibration_texts: texts for the static int8 variants (None: the set quantizers ships).
    """
    from quantizers import DynamicInt8, Fp16, OpenVino, OpenVinoInt8Weights, OpenVinoStaticInt8, Optimize, StaticInt8

    key = spec.variant
    if key == "int8":
        return DynamicInt8(isa=spec.isa)
    if key == "int8-static":
        return StaticInt8(calibration_texts=calibration_texts, method=spec.method or "minmax", isa=spec.isa)
    if key in ("O1", "O2", "O3", "O4"):
        return Optimize(key)
    if key == "fp16":
        return Fp16()
    if key in ("openvino", "openvino-fp16", "openvino-bf16"):
        return OpenVino("fp32" if key == "openvino" else key.split("-")[1])
    if key == "openvino-int8":
        return OpenVinoInt8Weights()
    if key == "openvino-int8-static":
        return OpenVinoStaticInt8(calibration_texts=calibration_texts)
    raise ValueError(f"Unknown variant key {key!r}.")


def select(specs: Sequence[VariantSpec], keys: Sequence[str] | None, recipe_name: str) -> tuple[VariantSpec, ...]:
    """The recipe's variants named by `keys` (all of them when None), in the recipe's order.

    Raises:
        UnknownVariantError: a key the recipe does not build (the message lists those it does).
    """
    if keys is None:
        return tuple(specs)
    known = [s.variant for s in specs]
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise UnknownVariantError(f"Recipe {recipe_name} has no variant {', '.join(map(repr, unknown))}; it builds: "
                         f"{', '.join(known) or 'none'}.")
    return tuple(s for s in specs if s.variant in keys)
