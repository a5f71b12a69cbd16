"""Datasets: Busto's label format, readers/converters for real data, the torch Dataset, label samplers, packing,
statistics, and the synthetic renderer (``portrait_core.data.synth``). See docs/data-format.md.

Light at import: torch, PIL and bpy are imported by the submodules that need them.
"""

from .labels import LabelError, validate_labels

__all__ = ["LabelError", "validate_labels"]
