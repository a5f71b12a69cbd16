"""One-click animation presets as keyframe tables (numpy only). Pose-code axes are SMPL axes: +X the subject's
left, +Y up, +Z forward; a positive rotation about +X tips the head forward (down), about +Y turns it toward the
subject's left, about +Z raises the subject's left side."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NECK, L_COLLAR, R_COLLAR, HEAD, L_SHOULDER, R_SHOULDER = range(6)


@dataclass
class Preset:
    """Keys at ``frames`` (multiples of the frames-per-key setting): a pose code per key [K, 6, 3] and/or named
    expression slider values per key."""

    label: str
    description: str
    frames: list[int]
    pose: np.ndarray | None = None
    sliders: dict[str, list[float]] = field(default_factory=dict)


def _pose(keys: list[dict[tuple[int, int], float]]) -> np.ndarray:
    p = np.zeros((len(keys), 6, 3))
    for k, entries in enumerate(keys):
        for (joint, axis), value in entries.items():
            p[k, joint, axis] = value
    return p


def build_preset(name: str, amplitude: float = 1.0) -> Preset:
    a = float(amplitude)
    if name == "NOD":
        keys = [{}, {(NECK, 0): 0.12 * a, (HEAD, 0): 0.22 * a}, {(NECK, 0): -0.05 * a, (HEAD, 0): -0.12 * a},
                {(NECK, 0): 0.08 * a, (HEAD, 0): 0.15 * a}, {}]
        return Preset("Nod", "Nod the head twice", [0, 1, 2, 3, 4], _pose(keys))
    if name == "TURN":
        keys = [{}, {(NECK, 1): 0.25 * a, (HEAD, 1): 0.35 * a}, {(NECK, 1): -0.25 * a, (HEAD, 1): -0.35 * a}, {}]
        return Preset("Turn", "Turn the head left, then right", [0, 1, 3, 4], _pose(keys))
    if name == "SHRUG":
        up = {(L_COLLAR, 2): 0.22 * a, (R_COLLAR, 2): -0.22 * a, (L_SHOULDER, 2): -0.1 * a,
              (R_SHOULDER, 2): 0.1 * a, (HEAD, 0): -0.05 * a}
        return Preset("Shrug", "Raise and drop the shoulders", [0, 1, 2, 3], _pose([{}, up, up, {}]))
    if name == "SMILE":
        return Preset("Smile", "Smile and relax", [0, 1, 2, 3], None,
                      {"smile": [0.0, 1.5 * a, 1.5 * a, 0.0], "jaw_open": [0.0, 0.3 * a, 0.3 * a, 0.0]})
    raise ValueError(f"unknown preset {name!r} (known: {', '.join(PRESET_NAMES)})")


PRESET_NAMES = ("NOD", "TURN", "SHRUG", "SMILE")


# --------------------------------------------------------------------------------------------- orbit camera
#: the front of the avatar in the Busto yaw convention (the generator's portrait camera sits at yaw π/2)
FRONT_YAW = np.pi / 2


def orbit_keys(frame_start: int, frame_end: int, start_yaw: float = FRONT_YAW) -> tuple[list[int], np.ndarray]:
    """The "orbit" camera preset: one full turn around the avatar over ``frame_start..frame_end`` (inclusive).

    Two linear keys of the camera yaw: ``start_yaw`` at ``frame_start`` and ``start_yaw + 2π`` one frame after
    ``frame_end``, so the ``n = frame_end - frame_start + 1`` rendered frames step ``2π / n`` each and the range
    loops without a repeated frame. Returns ``(frames, yaws)``."""
    if frame_end < frame_start + 1:
        raise ValueError(f"orbit: the frame range {frame_start}-{frame_end} needs at least two frames")
    return [int(frame_start), int(frame_end) + 1], np.array([start_yaw, start_yaw + 2 * np.pi])


def orbit_yaw(frame: float, frame_start: int, frame_end: int, start_yaw: float = FRONT_YAW) -> float:
    """The orbit preset's camera yaw at ``frame`` (linear between the keys of :func:`orbit_keys`)."""
    (f0, f1), (y0, y1) = orbit_keys(frame_start, frame_end, start_yaw)
    return float(y0 + (y1 - y0) * (frame - f0) / (f1 - f0))


def outside_frontal_range(yaw: float, limit: float = np.pi / 2) -> bool:
    """Whether a camera at ``yaw`` sees the avatar from further than ``limit`` off the front: views a frontal-mode
    model folds onto the front (its textures cover the front hemisphere only)."""
    off = (float(yaw) - FRONT_YAW + np.pi) % (2 * np.pi) - np.pi
    return abs(off) > limit + 1e-9
