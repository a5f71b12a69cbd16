"""Evaluation metrics: FID/KID (offline Inception TorchScript), sliced Wasserstein distance, multi-view
reprojection consistency, chamfer distance. Pure functions on tensors; deterministic given their seeds."""
