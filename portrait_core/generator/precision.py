"""The precision of super-resolution in bakes: bfloat16 where the CPU computes it natively, float32 otherwise.

A bake runs the super-resolution network once per identity over every level texture; on CPUs with native bfloat16
(Intel AMX or AVX-512 BF16) its convolutions are about 3x faster in bfloat16 (oneDNN), and the network only adds a
residual to an upsampling of its input, so bfloat16 changes that residual by under 1 % rms (measured in
docs/generator.md). Training and every differentiable call stay float32.

``BUSTO_SR_PRECISION`` = ``auto`` (default: bfloat16 on such CPUs, float32 elsewhere, CUDA included), ``float32``
or ``bfloat16`` (forced).
"""

from __future__ import annotations

import functools
import os

import torch

__all__ = ["PRECISION_ENV", "native_bf16_cpu", "superres_bake_dtype"]

PRECISION_ENV = "BUSTO_SR_PRECISION"
_CHOICES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def native_bf16_cpu(cpuinfo: str) -> bool:
    """True when ``cpuinfo`` (the text of /proc/cpuinfo) lists native bfloat16 arithmetic (amx_bf16 or avx512_bf16)."""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"amx_bf16", "avx512_bf16"})


@functools.lru_cache(maxsize=1)
def _this_cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return native_bf16_cpu(f.read()) and torch.backends.mkldnn.is_available()
    except OSError:  # not Linux: keep float32
        return False


def superres_bake_dtype(device: torch.device | str, environ: dict | None = None) -> torch.dtype:
    """The dtype bakes on ``device`` run super-resolution in (see the module text); ValueError naming
    ``BUSTO_SR_PRECISION`` for a value other than auto, float32 or bfloat16."""
    value = (os.environ if environ is None else environ).get(PRECISION_ENV, "auto").strip().lower() or "auto"
    if value in _CHOICES:
        return _CHOICES[value]
    if value != "auto":
        raise ValueError(f"{PRECISION_ENV}={value!r}: expected auto, float32 or bfloat16")
    return torch.bfloat16 if torch.device(device).type == "cpu" and _this_cpu_has_native_bf16() else torch.float32
