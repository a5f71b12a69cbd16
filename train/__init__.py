"""Busto training: ``python -m train PRESET [key=value ...]`` (see docs/training.md)."""
