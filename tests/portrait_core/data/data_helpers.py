"""Shared helpers for the data tests: landmark projection from labels, marker centroids, worker processes."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import torch

from portrait_core.data.synth.render import MARKER_COLOURS

LANDMARKS = (36, 45, 30, 48, 54, 8)  # outer eye corners, nose tip, mouth corners, chin


def landmarks_from_labels(rec: dict, body, face) -> np.ndarray:
    """Observed 3DMM landmarks [68, 3] (metres, canonical frame) from a label record's controls."""
    with torch.no_grad():
        betas = torch.tensor(rec["body_shape"], dtype=torch.float32)[None]
        pose = torch.tensor(rec["pose"], dtype=torch.float32)[None]
        lm = face.landmarks(torch.tensor(rec["identity"], dtype=torch.float32)[None],
                            torch.tensor(rec["expression"], dtype=torch.float32)[None])[0].double()
        T = body.face_transform(betas, pose)[0].double()
    return (lm @ T[:3, :3].T + T[:3, 3]).numpy()


def project(label25, points: np.ndarray, size: int) -> np.ndarray:
    """Pixel coordinates [N, 2] (x right, y down; pixel centres at integers) of world points."""
    from portrait_core.geometry.camera import Camera

    cam = Camera.from_label25(torch.tensor(np.asarray(label25), dtype=torch.float64))
    px, _ = cam.project(torch.tensor(points, dtype=torch.float64)[None], size, size)
    return px[0].numpy()


def marker_centroids(rgb: np.ndarray, count: int, tol: float = 60.0) -> np.ndarray:
    """Centroids [count, 2] (x, y; pixel centres at integers) of pixels matching each marker colour; NaN if absent."""
    out = np.full((count, 2), np.nan)
    img = rgb.astype(np.float64)
    ys, xs = np.mgrid[0:rgb.shape[0], 0:rgb.shape[1]]
    for k in range(count):
        target = np.asarray(MARKER_COLOURS[k], dtype=np.float64) * 255
        w = np.clip(1 - np.linalg.norm(img - target, axis=-1) / tol, 0, 1)
        if w.sum() > 0:
            out[k] = ((w * xs).sum() / w.sum(), (w * ys).sum() / w.sum())
    return out


def run_in_worker(cfg, calls: list[tuple[str, tuple]]) -> list:
    """Run ``render.<func>(*args)`` for each (func, args) in one fresh spawned process holding the synth worker
    state (keeps bpy out of the pytest process)."""
    from portrait_core.data.synth import render

    ctx = mp.get_context("spawn")
    with ctx.Pool(1, initializer=render._worker_init, initargs=(cfg, "/nonexistent", 2)) as pool:
        return [pool.apply(getattr(render, func), args) for func, args in calls]
