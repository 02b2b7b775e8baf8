"""Recipe variant keys -> quantizers configurations: quantizers/variants.py's table, the one vocabulary st-export's
flags expand to as well."""

from __future__ import annotations

from collections.abc import Sequence

from models_zoo.errors import UnknownVariantError
from models_zoo.recipe import VariantSpec
from quantizers.configs import QuantizationConfig
from quantizers.variants import VARIANTS, VariantOptions, canonical


def quantizer_config(spec: VariantSpec, calibration_texts: tuple[str, ...] | None = None) -> QuantizationConfig:
    """The quantizers config that builds `spec`.

    Args:
        spec: a recipe variant.
        calibration_texts: texts for the static int8 variants (None: the set quantizers ships).

    Raises:
        ValueError: an unknown variant key.
    """
    options = VariantOptions(isa=spec.isa, method=spec.method, calibration_texts=calibration_texts)
    return VARIANTS[canonical(spec.variant)].config(options)


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
