"""What a result was measured on: CPU model, cores, clock, ISA flags, package versions, and an estimate of the
CPU's peak arithmetic rate (clearly an estimate: see `peak_gflops`)."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from typing import Any

from st_runtime import machine
from st_runtime.machine import cpu_flags, cpuinfo, detect_isa

PACKAGES = ("st-runtime", "numpy", "onnxruntime", "tokenizers", "openvino", "onnx", "torch", "transformers",
            "sentence-transformers", "optimum", "optimum-onnx", "optimum-intel", "nncf", "fastembed")
# Flags that matter for inference kernels, reported in the result (the full list is long and machine noise).
RELEVANT_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
                  "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve", "bf16",
                  "i8mm")
FMA_UNITS = 2  # assumed vector FMA pipes per core (true for recent Xeon and Zen 5; Zen 4 runs AVX-512 at half rate)


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}


def cpu_info() -> dict[str, Any]:
    """CPU model, physical cores, clock (MHz, max when known, else the current reading) and relevant flags."""
    lscpu, proc = _lscpu(), cpuinfo()
    model = lscpu.get("Model name") or proc.get("model name") or platform.processor() or platform.machine()
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    physical = logical
    try:
        per_socket, sockets, per_core = (int(lscpu[k]) for k in ("Core(s) per socket", "Socket(s)", "Thread(s) per core"))
        physical = min(per_socket * sockets, max(1, logical // per_core))
    except (KeyError, ValueError):
        pass
    mhz, clock_source = None, None
    for key, source in (("CPU max MHz", "lscpu max MHz"), ("CPU MHz", "lscpu MHz")):
        if lscpu.get(key):
            mhz, clock_source = float(lscpu[key].replace(",", ".")), source
            break
    if mhz is None and proc.get("cpu MHz"):
        mhz, clock_source = float(proc["cpu MHz"]), "/proc/cpuinfo cpu MHz"
    if mhz is None and (match := re.search(r"@\s*([\d.]+)\s*GHz", model)):
        mhz, clock_source = float(match.group(1)) * 1000, "model name"
    flags = cpu_flags()
    return {"model": model, "machine": platform.machine(), "logical_cpus": logical, "physical_cores": physical,
            "mhz": mhz, "clock_source": clock_source, "isa": detect_isa(flags),
            "flags": sorted(f for f in RELEVANT_FLAGS if f in flags)}


def peak_gflops(cores: int, mhz: float | None, flags: set[str] | list[str]) -> dict[str, Any]:
    """An ESTIMATE of the peak GFLOP/s (1 multiply-add = 2 operations) of `cores` cores at `mhz`, per precision.

    fp32: vector lanes (16 with AVX-512, 8 with AVX2, 4 with NEON/SSE) x 2 (FMA) x FMA_UNITS pipes per cycle.
    int8: VNNI (or arm dot product) multiplies 4 int8 per 32-bit lane: 4x fp32; without it, about 2x fp32;
    AMX-INT8: 1024 multiply-adds per cycle per core. bf16: AVX-512 BF16 2x fp32; AMX-BF16 512 multiply-adds per cycle.
    Real kernels reach a fraction of this (memory bandwidth, turbo limits, shapes); use it to see headroom, not as a
    promise.
    """
    flags = set(flags)
    if mhz is None or cores < 1:
        return {"fp32": None, "int8": None, "bf16": None, "note": "clock speed unknown: no peak estimate"}
    ghz = mhz / 1000
    arm = platform.machine().lower() in ("arm64", "aarch64") or "asimd" in flags
    lanes = 16 if "avx512f" in flags else 8 if ({"avx2", "fma"} <= flags) else 4
    fp32 = cores * ghz * lanes * 2 * FMA_UNITS
    if "amx_int8" in flags:
        int8 = cores * ghz * 1024 * 2
    elif {"avx512_vnni", "avx_vnni", "asimddp"} & flags:
        int8 = fp32 * 4
    else:
        int8 = fp32 * (1 if arm else 2)
    bf16 = cores * ghz * 512 * 2 if "amx_bf16" in flags else fp32 * 2 if ({"avx512_bf16", "bf16"} & flags) else fp32
    return {"fp32": round(fp32, 1), "int8": round(int8, 1), "bf16": round(bf16, 1),
            "note": f"estimate: {cores} cores x {ghz:.2f} GHz x {lanes} fp32 lanes x 2 (FMA) x {FMA_UNITS} FMA pipes; "
                    "int8 x4 with VNNI/dot-product (AMX: 1024 MAC/cycle), bf16 x2 with AVX512-BF16 (AMX: 512 MAC/cycle)"}


def package_versions() -> dict[str, str]:
    """Python's version and the installed versions of the packages that matter (st_runtime.machine reads them)."""
    return {"python": platform.python_version()} | machine.package_versions(PACKAGES)
