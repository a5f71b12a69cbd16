"""Rotations, cameras, rays and keyframe/label converters (pure functions on tensors)."""
