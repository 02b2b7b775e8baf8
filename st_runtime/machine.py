"""What CPU this machine has: its model, its feature flags and the int8 preset (ISA) they call for. Read from
/proc/cpuinfo (numpy's dispatch table elsewhere) only, so the quantizers, st-bench and the zoo all describe a CPU the
same way; and which versions of which packages are installed, read from their distribution metadata (nothing is
imported), so the manifest, st-bench and the zoo record versions the same way."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Iterable
from pathlib import Path

ISAS = ("arm64", "avx2", "avx512", "avx512_vnni")
CPUINFO = Path("/proc/cpuinfo")


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not only the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cpuinfo_lines() -> list[str]:
    """The lines of /proc/cpuinfo ([] where there is none: not Linux)."""
    if not CPUINFO.is_file():
        return []
    return CPUINFO.read_text(encoding="utf-8", errors="replace").splitlines()


def cpuinfo() -> dict[str, str]:
    """/proc/cpuinfo as {key: value}, the first processor's value of each key ({} where there is none)."""
    info: dict[str, str] = {}
    for line in cpuinfo_lines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what platform reports)."""
    for line in cpuinfo_lines():
        if line.lower().startswith(("model name", "hardware", "cpu model")) and ":" in line:
            return " ".join(line.split(":", 1)[1].split())
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> set[str]:
    """Lower-case CPU feature flags: /proc/cpuinfo on Linux, numpy's runtime dispatch table elsewhere."""
    for line in cpuinfo_lines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__
    return {name.lower() for name, present in __cpu_features__.items() if present}


def detect_isa(flags: set[str] | None = None, machine: str | None = None) -> str:
    """The best int8 preset for this machine (or for the given flags / machine name): arm64, avx2, avx512 or
    avx512_vnni."""
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


def package_versions(packages: Iterable[str], *, missing: bool = False) -> dict[str, str | None]:
    """Installed versions of `packages`, read from their metadata files (nothing is imported); a package that is not
    installed is left out, or given as None with `missing`."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            if missing:
                versions[name] = None
    return versions
