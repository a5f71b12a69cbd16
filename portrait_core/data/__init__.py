"""Datasets: Busto's label format, readers/converters for real data, the torch Dataset, label samplers, packing,
statistics, and the synthetic renderer (``portrait_core.data.synth``). See docs/data-format.md.

Light at import: torch, PIL and bpy are imported by the submodules that need them (names below load lazily).
"""

from __future__ import annotations

import importlib

from .labels import LabelError, validate_labels

_LAZY = {
    "PortraitDataset": "portrait_core.data.dataset",
    "LabelSampler": "portrait_core.data.samplers",
    "open_source": "portrait_core.data.readers",
    "convert": "portrait_core.data.readers",
    "crop_face": "portrait_core.data.readers",
    "pack_dataset": "portrait_core.data.pack",
    "write_stats": "portrait_core.data.stats",
    "synthesize": "portrait_core.data.synth",
    "mirror_matrices": "portrait_core.data.mirror",
}

__all__ = ["LabelError", "validate_labels", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'portrait_core.data' has no attribute {name!r}")
