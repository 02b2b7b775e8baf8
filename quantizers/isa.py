"""Which int8 preset suits this CPU: arm64, avx2, avx512 or avx512_vnni."""

from __future__ import annotations

import platform
from pathlib import Path

ISAS = ("arm64", "avx2", "avx512", "avx512_vnni")


def cpu_flags() -> set[str]:
    """Lower-case CPU feature flags: /proc/cpuinfo on Linux, numpy's runtime dispatch table elsewhere."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__
    return {name.lower() for name, present in __cpu_features__.items() if present}


def detect_isa(flags: set[str] | None = None, machine: str | None = None) -> str:
    """The best int8 preset for this machine (or for the given flags / machine name)."""
    machine = (machine or platform.machine()).lower()
    if machine in ("arm64", "aarch64"):
        return "arm64"
    flags = cpu_flags() if flags is None else flags
    if "avx512f" in flags or "avx512_f" in flags:
        return "avx512_vnni" if ({"avx512_vnni", "avx512vnni"} & flags) else "avx512"
    return "avx2"


def has_bf16(flags: set[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively (AVX-512 BF16 or AMX), where a bf16 runtime precision pays off."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "avx512bf16", "amx_bf16"} & flags)
