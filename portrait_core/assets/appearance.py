"""The appearance code of Busto's default model: a deterministic 80-d ``noise`` latent built from a SynthPortrait
label record's ``extra`` description (plus the clothing colour measured in the render, which ``extra`` lacks).

The default model is fitted with supervision (``train/supervised.py``): the generator's ``noise`` input is not
random but this code, so an avatar's look can be chosen by description as well as sampled.

Layout (``APPEARANCE_LAYOUT``; every block is centred and scaled to roughly unit spread):

====== ============================ =========================================================
dims   block                        encoding
====== ============================ =========================================================
0-2    skin colour (sRGB, 0..1)     ``(rgb - 0.5) * 4``
3-5    hair colour (sRGB, 0..1)     ``(rgb - 0.5) * 4``
6-9    hair style                   one-hot over ``HAIR_STYLES`` times 2, minus 0.5
10-12  clothing pattern             one-hot over ``CLOTHING_PATTERNS`` times 2, minus 0.5
13-15  neckline                     one-hot over ``NECKLINES`` times 2, minus 0.5
16-18  clothing colour, mean        ``(rgb - 0.5) * 4`` (measured: mean of the clothed lower image strip)
19-21  clothing colour, spread      ``rgb_std * 8 - 1`` (measured: pattern contrast in the same strip)
22     fringe                       ``fringe * 8 - 0.5`` (radians the front hairline is lowered, 0..0.28)
23     hair volume                  ``(volume - 1.05) * 5`` (hair thickness scale, 0.7..1.4)
24-26  clothing primary colour      ``(rgb - 0.5) * 4`` (the cloth's base colour)
27-29  clothing secondary colour    ``(rgb - 0.5) * 4`` (the stripes' / checks' second colour)
30     pattern frequency            ``(cycles_per_metre - 15) / 4`` (8..22)
31     pattern axis                 +1 ``"y"`` (horizontal stripes), -1 ``"x"``
32     sleeves                      +1 with sleeves, -1 without
33-35  eye colour                   ``(rgb - 0.5) * 4``
36-79  zero padding                 0
====== ============================ =========================================================

Blocks 22-35 are the draws SynthPortrait records only since its labels carry them (``extra`` keys ``fringe``,
``hair_volume``, ``clothing_primary``, ``clothing_secondary``, ``pattern_frequency``, ``pattern_axis``,
``sleeves``, ``eye_colour``). Without them two people with the same labels differ in hair outline, pattern and
sleeves, which caps what any labels-conditioned model can score on unseen people (docs/training.md). A record
without a key leaves its block at 0 ("unknown": the mean for numbers, neither for the signs), so older label
files still give the codes they gave before.

Unknown categorical values raise ``ValueError`` naming the value and the vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["HAIR_STYLES", "CLOTHING_PATTERNS", "NECKLINES", "PATTERN_AXES", "OPTIONAL_BLOCKS", "APPEARANCE_DIM",
           "APPEARANCE_LAYOUT",
           "appearance_code", "describe_appearance", "clothing_colour_stats"]

HAIR_STYLES = ("buzz", "short", "bob", "long")
CLOTHING_PATTERNS = ("solid", "stripes", "checks")
NECKLINES = ("crew", "v", "scoop")
APPEARANCE_DIM = 80
#: name -> (start, stop) of each block in the code.
APPEARANCE_LAYOUT = {"skin": (0, 3), "hair_colour": (3, 6), "hair_style": (6, 10), "clothing": (10, 13),
                     "neckline": (13, 16), "clothing_colour": (16, 19), "clothing_spread": (19, 22),
                     "fringe": (22, 23), "hair_volume": (23, 24), "clothing_primary": (24, 27),
                     "clothing_secondary": (27, 30), "pattern_frequency": (30, 31), "pattern_axis": (31, 32),
                     "sleeves": (32, 33), "eye_colour": (33, 36)}
USED_DIMS = 36
#: The blocks a record may lack (older SynthPortrait labels): 0 in the code when absent.
OPTIONAL_BLOCKS = ("fringe", "hair_volume", "clothing_primary", "clothing_secondary", "pattern_frequency",
                   "pattern_axis", "sleeves", "eye_colour")
PATTERN_AXES = ("x", "y")
#: Fraction of the image height (bottom strip) where the clothing colour is measured.
CLOTHING_STRIP = 0.18


def _rgb(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"appearance_code: {name} must be 3 finite numbers (sRGB 0..1), got {value!r}")
    return np.clip(arr, 0.0, 1.0)


def _number(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= float(value) <= hi:
        raise ValueError(f"appearance_code: {name} must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def _one_hot(name: str, value: Any, vocabulary: Sequence[str]) -> np.ndarray:
    if value not in vocabulary:
        raise ValueError(f"appearance_code: unknown {name} {value!r}; expected one of {list(vocabulary)}")
    out = np.zeros(len(vocabulary))
    out[vocabulary.index(value)] = 1.0
    return out * 2.0 - 0.5


def appearance_code(extra: Mapping[str, Any], clothing_colour: Sequence[float] | None = None,
                    clothing_spread: Sequence[float] | None = None) -> np.ndarray:
    """[80] float32 code of one appearance.

    ``extra``: a SynthPortrait record's ``extra`` dict (``skin``, ``hair_colour`` rgb; ``hair_style``,
    ``clothing``, ``neckline`` names). ``clothing_colour`` / ``clothing_spread``: measured mean / std rgb of the
    clothing (:func:`clothing_colour_stats`); default mid grey with no pattern contrast.
    """
    for key in ("skin", "hair_colour", "hair_style", "clothing", "neckline"):
        if key not in extra:
            raise ValueError(f"appearance_code: extra has no {key!r} entry (keys: {sorted(extra)})")
    code = np.zeros(APPEARANCE_DIM)
    put = lambda name, v: code.__setitem__(slice(*APPEARANCE_LAYOUT[name]), v)  # noqa: E731
    put("skin", (_rgb("skin", extra["skin"]) - 0.5) * 4)
    put("hair_colour", (_rgb("hair_colour", extra["hair_colour"]) - 0.5) * 4)
    put("hair_style", _one_hot("hair_style", extra["hair_style"], HAIR_STYLES))
    put("clothing", _one_hot("clothing", extra["clothing"], CLOTHING_PATTERNS))
    put("neckline", _one_hot("neckline", extra["neckline"], NECKLINES))
    cc = np.full(3, 0.5) if clothing_colour is None else _rgb("clothing_colour", clothing_colour)
    cs = np.zeros(3) if clothing_spread is None else _rgb("clothing_spread", clothing_spread)
    put("clothing_colour", (cc - 0.5) * 4)
    put("clothing_spread", cs * 8 - 1)
    if "fringe" in extra:
        put("fringe", _number("fringe", extra["fringe"], 0.0, 0.5) * 8 - 0.5)
    if "hair_volume" in extra:
        put("hair_volume", (_number("hair_volume", extra["hair_volume"], 0.3, 2.0) - 1.05) * 5)
    for name in ("clothing_primary", "clothing_secondary", "eye_colour"):
        if name in extra:
            put(name, (_rgb(name, extra[name]) - 0.5) * 4)
    if "pattern_frequency" in extra:
        put("pattern_frequency", (_number("pattern_frequency", extra["pattern_frequency"], 1.0, 60.0) - 15) / 4)
    if "pattern_axis" in extra:
        if extra["pattern_axis"] not in PATTERN_AXES:
            raise ValueError(f"appearance_code: unknown pattern_axis {extra['pattern_axis']!r}; expected one of "
                             f"{list(PATTERN_AXES)}")
        put("pattern_axis", 1.0 if extra["pattern_axis"] == "y" else -1.0)
    if "sleeves" in extra:
        if not isinstance(extra["sleeves"], bool):
            raise ValueError(f"appearance_code: sleeves must be true or false, got {extra['sleeves']!r}")
        put("sleeves", 1.0 if extra["sleeves"] else -1.0)
    return code.astype(np.float32)


def describe_appearance(code: Sequence[float]) -> dict[str, Any]:
    """Inverse of :func:`appearance_code` (nearest category for the one-hot blocks)."""
    c = np.asarray(code, dtype=np.float64).reshape(-1)
    if c.shape != (APPEARANCE_DIM,):
        raise ValueError(f"describe_appearance: code must have {APPEARANCE_DIM} entries, got {c.shape}")
    get = lambda name: c[slice(*APPEARANCE_LAYOUT[name])]  # noqa: E731
    rgb = lambda name: np.clip(get(name) / 4 + 0.5, 0, 1).round(3).tolist()  # noqa: E731
    return {"skin": rgb("skin"), "hair_colour": rgb("hair_colour"),
            "hair_style": HAIR_STYLES[int(np.argmax(get("hair_style")))],
            "clothing": CLOTHING_PATTERNS[int(np.argmax(get("clothing")))],
            "neckline": NECKLINES[int(np.argmax(get("neckline")))],
            "clothing_colour": rgb("clothing_colour"),
            "clothing_spread": np.clip((get("clothing_spread") + 1) / 8, 0, 1).round(3).tolist(),
            **_describe_optional(get, rgb)}


def _describe_optional(get, rgb) -> dict[str, Any]:
    """The blocks of :data:`OPTIONAL_BLOCKS` that are set (non-zero) in a code, decoded."""
    out: dict[str, Any] = {}
    if not any(np.any(get(name) != 0) for name in OPTIONAL_BLOCKS):
        return out
    out["fringe"] = round(float(np.clip((get("fringe")[0] + 0.5) / 8, 0, 0.5)), 4)
    out["hair_volume"] = round(float(get("hair_volume")[0] / 5 + 1.05), 4)
    out["clothing_primary"], out["clothing_secondary"] = rgb("clothing_primary"), rgb("clothing_secondary")
    out["pattern_frequency"] = round(float(get("pattern_frequency")[0] * 4 + 15), 3)
    axis, sleeves = float(get("pattern_axis")[0]), float(get("sleeves")[0])
    out["pattern_axis"] = None if axis == 0 else ("y" if axis > 0 else "x")
    out["sleeves"] = None if sleeves == 0 else sleeves > 0
    out["eye_colour"] = rgb("eye_colour")
    return out


def clothing_colour_stats(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std sRGB (0..1) of the clothed region: the bottom ``CLOTHING_STRIP`` of the portrait inside the
    mask (alpha > 0.5). ``image`` [H, W, 3] uint8 or float 0..1, ``mask`` [H, W]. Grey/zero when nothing is there."""
    img = np.asarray(image, dtype=np.float64)
    if img.max() > 1.0 + 1e-6:
        img = img / 255.0
    m = np.asarray(mask, dtype=np.float64)
    if m.max() > 1.0 + 1e-6:
        m = m / 255.0
    h = img.shape[0]
    rows = slice(h - max(1, int(round(h * CLOTHING_STRIP))), h)
    sel = m[rows] > 0.5
    pixels = img[rows][sel]
    if pixels.shape[0] < 4:
        return np.full(3, 0.5), np.zeros(3)
    return pixels.mean(0), pixels.std(0)
