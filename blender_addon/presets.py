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
