"""Deterministic synthetic 3DMM in the Deep3DFaceRecon/BFM09 ``BFM_model_front.mat`` layout.

The licensed Basel Face Model cannot ship with Busto, so this module builds a procedural stand-in with exactly the
same keys, shapes, 1-based indexing and units (see ``portrait_core.face.io`` and ``docs/face.md``):

* **Surface**: a height field over a masked (x, y) grid (superellipse outline), an ellipsoidal cap plus nose,
  brow ridges, eye sockets, cheekbones, lips and chin. Decimetres, Y up, the face looks toward +Z, the subject's
  left is +X, mirror-symmetric in X, re-centred so the vertex mean is 0. About 1.45 dm wide and 1.8 dm from chin
  to forehead top.
* **Landmarks**: the 68 iBUG points (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, lips 48-67), placed in
  (x, y) and snapped to vertices (index 0 is on the subject's right, i.e. -X, the image left).
* **Bases** (pre-multiplied by the standard deviation, coefficients ~ N(0, 1)): 80 smooth identity fields, 64
  expression fields whose first ones are named (``EXPRESSION_NAMES``), 80 albedo fields. The bases are closed
  under left/right mirroring: each component is mirror-symmetric or -antisymmetric, or (expression bumps) the
  mirror image of its neighbour, so mirroring maps coefficients by a signed permutation.

Nothing random is drawn from global state: every random choice uses a fixed-seed ``numpy.random.Generator``, so the
model is identical on every run. The dense bases (~20 MB) are built at first use (well under 2 s) and cached in
memory; ``build_synthetic_bfm`` returns fresh copies.
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np

__all__ = [
    "EXPRESSION_NAMES",
    "NUM_ID",
    "NUM_EXP",
    "NUM_TEX",
    "build_synthetic_bfm",
    "fingerprint",
]

NUM_ID = 80
NUM_EXP = 64
NUM_TEX = 80
_SEED = 20261121

#: Named directions of the *synthetic* expression basis (coefficient index). Positive = the named action.
#: They do not hold for the real BFM09 expression basis (its components are PCA modes).
EXPRESSION_NAMES: dict[str, int] = {
    "jaw_open": 0,
    "smile": 1,
    "brow_raise": 2,
    "blink": 3,
    "pucker": 4,
    "frown": 5,
    "brow_furrow": 6,
    "cheek_puff": 7,
}

# --- face layout (decimetres, before re-centring) ----------------------------------------------------------
_HALF_W = 0.725  # outline half-width
_Y_CENTRE = -0.05  # outline centre
_HALF_H = 0.91  # outline half-height: chin at -0.96, forehead top at 0.86
_OUTLINE_P = 2.4  # superellipse exponent of the outline
_NX, _NY = 97, 119  # grid columns (x) and rows (y); odd NX puts a column on the midline
_EYE_X, _EYE_Y = 0.32, 0.30  # eye centres (+-x)
_EYE_HALF_W = 0.14
_LID_UP, _LID_LO = 0.045, 0.040  # upper/lower eyelid offsets from the eye centre
_BROW_Y = 0.45
_MOUTH_HALF_W = 0.25
_NOSE_TIP_Y, _NOSE_BASE_Y = -0.12, -0.21
_JAW_PIVOT = (0.0, 0.05, -0.73)  # temporomandibular axis (x ignored), design frame
# head ellipsoids (cy, cz, rx, ry, rz) of the surface the features sit on, design frame (decimetres)
_CRANIUM = (-0.056, -0.879, 0.80, 1.17, 1.0)
_MIDFACE = (-0.156, -0.379, 0.70, 0.70, 0.52)
_JAW = (-0.706, -0.549, 0.58, 0.54, 0.64)
_FULLNESS = 0.10  # decimetres at the centre of the outline
_JAW_RATE = 0.05  # radians of jaw opening per unit coefficient


def _grid_axes() -> tuple[np.ndarray, np.ndarray]:
    xs = np.linspace(-_HALF_W - 0.01, _HALF_W + 0.01, _NX)
    ys = np.linspace(_Y_CENTRE - _HALF_H - 0.01, _Y_CENTRE + _HALF_H + 0.01, _NY)
    return xs, ys


def _mouth_y() -> float:
    """Mouth line, placed half-way between two grid rows so the lips own distinct vertex rows."""
    _, ys = _grid_axes()
    i = int(np.argmin(np.abs(ys + 0.465)))
    i = i if ys[i] < -0.465 else i - 1
    return float(0.5 * (ys[i] + ys[i + 1]))


def _outline_radius(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Superellipse 'radius' of the face outline: < 1 inside."""
    return (np.abs(x / _HALF_W) ** _OUTLINE_P + np.abs((y - _Y_CENTRE) / _HALF_H) ** _OUTLINE_P) ** (1 / _OUTLINE_P)


def _smoothstep(e0: float, e1: float, t: np.ndarray) -> np.ndarray:
    s = np.clip((t - e0) / (e1 - e0), 0.0, 1.0)
    return s * s * (3 - 2 * s)


def _gauss(x, y, cx, cy, sx, sy):
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _mesh() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masked grid -> (x [N], y [N], faces [F,3] 0-based, counter-clockwise seen from +Z)."""
    xs, ys = _grid_axes()
    X, Y = np.meshgrid(xs, ys)  # [NY, NX], row i = y, column j = x
    inside = _outline_radius(X, Y) <= 1.0
    # cells with four inside corners give two triangles; diagonals are mirrored across x = 0 (symmetric mesh)
    c00, c01 = inside[:-1, :-1], inside[:-1, 1:]
    c10, c11 = inside[1:, :-1], inside[1:, 1:]
    cell = c00 & c01 & c10 & c11
    ci, cj = np.nonzero(cell)
    vid = -np.ones((_NY, _NX), dtype=np.int64)
    used = np.zeros_like(inside)
    for di in (0, 1):
        for dj in (0, 1):
            used[ci + di, cj + dj] = True
    vid[used] = np.arange(int(used.sum()))
    a, b = vid[ci, cj], vid[ci, cj + 1]
    c, d = vid[ci + 1, cj], vid[ci + 1, cj + 1]  # a=(i,j) b=(i,j+1) c=(i+1,j) d=(i+1,j+1); i up, j right
    left = (xs[cj] + xs[cj + 1]) < 0
    t1 = np.where(left[:, None], np.stack([a, b, d], 1), np.stack([a, b, c], 1))
    t2 = np.where(left[:, None], np.stack([a, d, c], 1), np.stack([b, d, c], 1))
    faces = np.stack([t1, t2], 1).reshape(-1, 3)
    return X[used], Y[used], faces


def _ellipsoid_front(x, y, cy, cz, rx, ry, rz):
    """Front (+Z) half of an axis-aligned ellipsoid as a height field, flattened where it would turn vertical."""
    q = 1 - (x / rx) ** 2 - ((y - cy) / ry) ** 2
    q = 0.5 * (q + np.sqrt(q * q + 0.05**2))  # smooth max(q, 0): no crease where the ellipsoid ends
    return cz + rz * np.sqrt(q + 0.02) / np.sqrt(1.02)


def _skull(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Smooth union (smooth max of depth) of a cranium and a jaw ellipsoid: the surface the features sit on.

    Design frame: decimetres relative to the face centroid's target position on a head, sized so that the face lies
    on a typical (and Busto's synthetic body's) head when placed at FACE_CENTRE.
    """
    def smax(a, b, k):
        h = np.clip(0.5 + 0.5 * (a - b) / k, 0.0, 1.0)
        return a * h + b * (1 - h) + k * h * (1 - h)

    z = smax(_ellipsoid_front(x, y, *_CRANIUM), _ellipsoid_front(x, y, *_MIDFACE), 0.35)
    return smax(z, _ellipsoid_front(x, y, *_JAW), 0.2)


def _height(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Depth z(x, y) of the neutral mean face (decimetres) and named feature fields used elsewhere."""
    ax = np.abs(x)
    # faces are fuller than the skull ellipsoids: a smooth swelling, zero (with zero slope) at the outline
    base = _skull(x, y) + _FULLNESS * (1 - np.clip(_outline_radius(x, y), 0, 1) ** 2) ** 2
    # nose: bridge ridge from between the eyes to the tip, rounded tip, alae, quick drop to the base
    ridge_profile = _smoothstep(0.34, _NOSE_TIP_Y, y) * (y > _NOSE_TIP_Y) + (y <= _NOSE_TIP_Y) * np.exp(
        -0.5 * ((y - _NOSE_TIP_Y) / 0.045) ** 2
    )
    ridge_w = 0.045 + 0.035 * _smoothstep(0.34, _NOSE_TIP_Y, y)
    nose = 0.22 * ridge_profile * np.exp(-0.5 * (x / ridge_w) ** 2) + 0.04 * _gauss(x, y, 0, 0.30, 0.09, 0.06)
    alae = 0.06 * (_gauss(x, y, 0.12, -0.15, 0.045, 0.04) + _gauss(x, y, -0.12, -0.15, 0.045, 0.04))
    # eyes: sockets with a rounded eyeball inside, brow ridges above
    socket = -0.075 * (_gauss(ax, y, _EYE_X, _EYE_Y + 0.01, 0.13, 0.085))
    eyeball = 0.035 * _gauss(ax, y, _EYE_X, _EYE_Y, 0.09, 0.05)
    brow_arc = _BROW_Y + 0.03 * np.exp(-0.5 * ((ax - 0.33) / 0.15) ** 2)
    brows = 0.035 * np.exp(-0.5 * ((y - brow_arc) / 0.045) ** 2) * _smoothstep(0.62, 0.45, ax)
    cheeks = 0.04 * _gauss(ax, y, 0.42, 0.05, 0.14, 0.12)
    # lips, philtrum groove, mouth line, chin
    my = _mouth_y()
    lip_w = np.exp(-0.5 * (x / 0.16) ** 4)
    upper_lip = 0.055 * lip_w * np.exp(-0.5 * ((y - (my + 0.04)) / 0.035) ** 2)
    lower_lip = 0.055 * lip_w * np.exp(-0.5 * ((y - (my - 0.045)) / 0.035) ** 2)
    mouth_line = -0.025 * np.exp(-0.5 * ((y - my) / 0.012) ** 2) * _smoothstep(_MOUTH_HALF_W + 0.02, 0.15, ax)
    philtrum = -0.01 * _gauss(x, y, 0, my + 0.15, 0.025, 0.05)
    chin = 0.07 * _gauss(x, y, 0, -0.80, 0.16, 0.10) - 0.03 * _gauss(x, y, 0, my - 0.17, 0.2, 0.04)
    z = base + nose + alae + socket + eyeball + brows + cheeks + upper_lip + lower_lip + mouth_line + philtrum + chin
    fields = {
        "lips": np.clip((upper_lip + lower_lip) / 0.025, 0, 1) * _smoothstep(_MOUTH_HALF_W + 0.03, _MOUTH_HALF_W - 0.03, ax),
        "brows": np.clip(brows / 0.03, 0, 1),
        "eyes": (((ax - _EYE_X) / _EYE_HALF_W) ** 2 + ((y - _EYE_Y) / _LID_UP) ** 2 <= 1.0).astype(np.float64),
        "nose": nose + alae,
        "base": base,
    }
    return z, fields


def _vertex_normals(v: np.ndarray, faces: np.ndarray) -> np.ndarray:
    fn = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return n / np.linalg.norm(n, axis=1, keepdims=True).clip(1e-12)


def _landmarks_xy() -> np.ndarray:
    """The 68 iBUG landmark positions in (x, y), decimetres, un-centred frame."""
    pts: list[tuple[float, float]] = []
    # jaw 0..16 along the lower outline, from the subject's right (-x) round the chin to the left (+x)
    t = np.linspace(np.pi - 0.22, 2 * np.pi + 0.22, 17)
    e = 2 / _OUTLINE_P
    cx, sy = np.cos(t), np.sin(t)
    for c, s in zip(cx, sy):
        pts.append((0.95 * _HALF_W * np.sign(c) * abs(c) ** e, _Y_CENTRE + 0.95 * _HALF_H * np.sign(s) * abs(s) ** e))
    # brows 17..21 (right brow, outer -> inner), 22..26 (left brow, inner -> outer)
    bx = np.linspace(0.55, 0.12, 5)
    for x in bx:
        pts.append((-x, _BROW_Y + 0.03 * np.exp(-0.5 * ((x - 0.33) / 0.15) ** 2)))
    for x in bx[::-1]:
        pts.append((x, _BROW_Y + 0.03 * np.exp(-0.5 * ((x - 0.33) / 0.15) ** 2)))
    # nose bridge 27..30 (top -> tip), base 31..35 (right -> left)
    for y in np.linspace(0.30, _NOSE_TIP_Y, 4):
        pts.append((0.0, y))
    for x, dy in zip((-0.12, -0.06, 0.0, 0.06, 0.12), (0.02, -0.01, -0.015, -0.01, 0.02)):
        pts.append((x, _NOSE_BASE_Y + dy))
    # eyes: 36..41 right eye (outer corner, upper x2, inner corner, lower x2), 42..47 left eye (inner first)
    ex0, ex1 = _EYE_X - _EYE_HALF_W, _EYE_X + _EYE_HALF_W
    for order in ("outer", "inner"):
        if order == "outer":  # right eye, image left: 36 outer (-x), 37 38 upper, 39 inner, 40 41 lower
            seq = [(-ex1, 0), (-_EYE_X - 0.05, _LID_UP), (-_EYE_X + 0.05, _LID_UP), (-ex0, 0),
                   (-_EYE_X + 0.05, -_LID_LO), (-_EYE_X - 0.05, -_LID_LO)]
        else:  # left eye: 42 inner, 43 44 upper, 45 outer, 46 47 lower
            seq = [(ex0, 0), (_EYE_X - 0.05, _LID_UP), (_EYE_X + 0.05, _LID_UP), (ex1, 0),
                   (_EYE_X + 0.05, -_LID_LO), (_EYE_X - 0.05, -_LID_LO)]
        for x, dy in seq:
            pts.append((x, _EYE_Y + dy))
    # lips: outer 48..59 from the right corner over the upper lip to the left corner and back under the lower lip
    my = _mouth_y()
    w = _MOUTH_HALF_W
    outer = [(-w, 0), (-0.16, 0.055), (-0.07, 0.075), (0, 0.065), (0.07, 0.075), (0.16, 0.055), (w, 0),
             (0.16, -0.07), (0.07, -0.09), (0, -0.095), (-0.07, -0.09), (-0.16, -0.07)]
    inner = [(-0.2, 0), (-0.08, 0.0078), (0, 0.0078), (0.08, 0.0078), (0.2, 0), (0.08, -0.0078), (0, -0.0078),
             (-0.08, -0.0078)]
    for x, dy in outer + inner:
        pts.append((x, my + dy))
    out = np.asarray(pts, dtype=np.float64)
    assert out.shape == (68, 2)
    return out


def _identity_basis(v: np.ndarray, n: np.ndarray, fields: dict, rng: np.random.Generator) -> np.ndarray:
    """[N, 3, 80] smooth identity directions, decimetres per unit coefficient (peaks ~5 mm down to ~0.2 mm)."""
    # n: smooth normals of the feature-free base surface (displacing along the detailed normals crumples the nose)
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    u = x / _HALF_W
    w = (y - _Y_CENTRE) / _HALF_H
    N = v.shape[0]
    out = np.zeros((N, 3, NUM_ID))
    zc = z - z.mean()
    # a few interpretable global modes first
    out[:, 0, 0] = 0.07 * x  # face width
    out[:, 1, 1] = 0.05 * (y - _Y_CENTRE)  # face length
    out[:, 2, 2] = 0.10 * zc  # depth / flatness
    out[:, 2, 3] = 0.20 * fields["nose"]  # nose size (depth only: the nose stays a height field, never folds)
    jaw = _smoothstep(-0.1, -0.7, y)
    out[:, 0, 4] = 0.06 * x * jaw  # jaw width
    out[:, :, 5] = (0.04 * _gauss(np.abs(x), y, 0.4, -0.15, 0.18, 0.2))[:, None] * n  # cheek fullness
    # then smooth cosine fields with random directions (mostly along the normal), amplitudes decaying
    freqs = [(a, b) for s in range(1, 12) for a in range(s + 1) for b in range(s + 1) if a + b == s]
    k = 6
    for a, b in freqs:
        if k >= NUM_ID:
            break
        phase_b = rng.uniform(0, np.pi)
        # even (cos) or odd (sin) in x, and a direction field that mirrors with the face: every component is
        # mirror-symmetric or -antisymmetric, so mirroring maps identity coefficients by a signed permutation
        fu = np.sin(0.5 * np.pi * a * u) if (a > 0 and k % 2) else np.cos(0.5 * np.pi * a * u)
        f = fu * np.cos(0.5 * np.pi * b * (w + 1) + phase_b * (b > 0))
        d = rng.normal(size=3) * 0.3
        d[0] = 0.0
        amp = 0.03 * np.exp(-(k - 6) / 12.0) + 0.002
        vec = n * 1.0 + d[None, :]
        vec = vec / np.linalg.norm(vec, axis=1, keepdims=True)
        out[:, :, k] = amp * f[:, None] * vec
        k += 1
    return out


def _expression_basis(v: np.ndarray, n: np.ndarray, n_smooth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[N, 3, 64] expression directions, decimetres per unit coefficient. The first ones are EXPRESSION_NAMES."""
    # n: normals of the face surface (lids, brows follow it); n_smooth: of the feature-free base (bumps, puffs)
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    ax = np.abs(x)
    sx = np.sign(x)
    N = v.shape[0]
    out = np.zeros((N, 3, NUM_EXP))
    my = _mouth_y()
    # all but the jaw fade out toward the outline (the jaw carries the whole lower face, outline included)
    inner = 1.0 - _smoothstep(0.85, 1.0, _outline_radius(x, y))

    # 0 jaw_open: linearised rotation of the lower face about the temporomandibular axis (+X), chin down and back
    width = 0.009 + 0.2 * (ax / _HALF_W) ** 2
    jaw_w = 1.0 / (1.0 + np.exp(-(my - y) / (0.25 * width)))
    ry, rz = y - _JAW_PIVOT[1], z - _JAW_PIVOT[2]
    out[:, 1, 0] = _JAW_RATE * (-rz) * jaw_w
    out[:, 2, 0] = _JAW_RATE * ry * jaw_w

    # 1 smile: mouth corners out, up and back; cheeks rise
    corner = _gauss(ax, y, _MOUTH_HALF_W, my, 0.10, 0.08)
    cheek = _gauss(ax, y, 0.35, my + 0.2, 0.12, 0.1)
    out[:, 0, 1] = 0.04 * sx * corner
    out[:, 1, 1] = 0.03 * corner + 0.015 * cheek
    out[:, 2, 1] = -0.012 * corner + 0.01 * cheek

    # 2 brow_raise: brows and lower forehead up, fading towards the hairline and the eyes
    band = np.exp(-0.5 * ((y - _BROW_Y) / 0.11) ** 2) * _smoothstep(0.75, 0.56, ax)
    band = band * (y > _EYE_Y + _LID_UP) + band * _smoothstep(_EYE_Y, _EYE_Y + _LID_UP, y) * (y <= _EYE_Y + _LID_UP)
    up = np.array([0.0, 1.0, 0.0])[None, :] - n[:, 1:2] * n  # 'up' along the surface (tangent)
    up = up / np.linalg.norm(up, axis=1, keepdims=True).clip(1e-9)
    out[:, :, 2] = (0.03 * band)[:, None] * up

    # 3 blink: the upper lid slides down over the eye onto the lower lid, which rises a little; the vertices follow
    # the neutral surface (z from the height field), and the lids meet exactly at +2.5 on the mean shape
    y_meet = _EYE_Y - 0.5 * _LID_LO
    d_up, d_lo = _EYE_Y + _LID_UP - y_meet, 0.5 * _LID_LO
    above = y >= y_meet
    g_up = np.clip((y - y_meet) / d_up, 0, 1) * (1 - _smoothstep(_EYE_Y + _LID_UP, _EYE_Y + _LID_UP + 0.09, y))
    g_lo = np.clip((y_meet - y) / d_lo, 0, 1) * (1 - _smoothstep(_EYE_Y - _LID_LO, _EYE_Y - _LID_LO - 0.06, y))
    y_t = np.where(above, y - d_up * g_up, y + d_lo * g_lo)
    eye_r = np.sqrt(((ax - _EYE_X) / (_EYE_HALF_W + 0.04)) ** 2 + ((y - _EYE_Y) / 0.14) ** 2)
    eye_w = np.exp(-(eye_r**6))
    z_t, _ = _height(x, y_t)
    out[:, 1, 3] = eye_w * (y_t - y) / 2.5
    out[:, 2, 3] = eye_w * (z_t - z) / 2.5

    # 4 pucker: lips forward and together
    lips = _gauss(x, y, 0, my, 0.22, 0.08)
    out[:, 0, 4] = -0.15 * x * lips
    out[:, 2, 4] = 0.035 * lips

    # 5 frown: mouth corners down and slightly out
    out[:, 0, 5] = 0.01 * sx * corner
    out[:, 1, 5] = -0.035 * corner

    # 6 brow_furrow: inner brows down and toward the midline
    inner_brow = _gauss(ax, y, 0.17, _BROW_Y, 0.1, 0.07)
    out[:, 0, 6] = -0.02 * sx * inner_brow
    out[:, 1, 6] = -0.02 * inner_brow
    out[:, 2, 6] = 0.008 * inner_brow

    # 7 cheek_puff: cheeks out along the normal
    puff = _gauss(ax, y, 0.38, my + 0.1, 0.12, 0.14)
    out[:, :, 7] = (0.04 * puff)[:, None] * n_smooth

    # 8..63 localised bumps: random centres inside the face, mostly along the normal, amplitudes decaying
    r = _outline_radius(x, y)
    # in mirror pairs (k, k+1): centre and direction of k+1 are the mirror images of those of k
    cand = np.nonzero((r < 0.85) & (x > 0.08))[0]
    mirror = np.array([-1.0, 1.0, 1.0])
    for k in range(len(EXPRESSION_NAMES), NUM_EXP, 2):
        c = v[cand[rng.integers(len(cand))]]
        sig = rng.uniform(0.06, 0.14)
        amp = 0.012 * (0.3 + 0.7 * np.exp(-(k - 8) / 20.0))
        d = rng.normal(size=3) * 0.4
        for j, (cj, dj) in enumerate(((c, d), (c * mirror, d * mirror))):
            if k + j >= NUM_EXP:
                break
            w = np.exp(-0.5 * np.sum((v[:, :2] - cj[None, :2]) ** 2, axis=1) / sig**2)
            vec = n_smooth + dj[None, :]
            vec = vec / np.linalg.norm(vec, axis=1, keepdims=True)
            out[:, :, k + j] = amp * w[:, None] * vec
    out[:, :, 1:] *= inner[:, None, None]
    return out


def _texture(v: np.ndarray, fields: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mean albedo [N, 3] (RGB 0-255) and texture basis [N, 3, 80] (RGB units per coefficient)."""
    x, y = v[:, 0], v[:, 1]
    skin = np.array([226.0, 178.0, 150.0])
    lips = np.array([182.0, 96.0, 96.0])
    brows = np.array([86.0, 62.0, 48.0])
    eyes = np.array([205.0, 200.0, 196.0])
    shade = 1.0 - 0.08 * _smoothstep(0.6, 1.0, _outline_radius(x, y))
    t = skin[None, :] * shade[:, None]
    for name, col in (("lips", lips), ("brows", brows), ("eyes", eyes)):
        a = fields[name][:, None]
        t = t * (1 - a) + col[None, :] * a
    iris = _gauss(np.abs(x), y, _EYE_X, _EYE_Y, 0.03, 0.03) * fields["eyes"]
    t = t * (1 - iris[:, None]) + np.array([70.0, 50.0, 40.0])[None, :] * iris[:, None]
    u = x / _HALF_W
    w = (y - _Y_CENTRE) / _HALF_H
    N = v.shape[0]
    base = np.zeros((N, 3, NUM_TEX))
    base[:, :, 0] = 18.0  # lightness
    base[:, :, 1] = np.array([12.0, -4.0, -6.0])  # redness
    base[:, :, 2] = np.array([6.0, 6.0, -10.0])  # yellowness
    k = 3
    for s in range(1, 20):
        for a in range(s + 1):
            if k >= NUM_TEX:
                break
            b = s - a
            fu = np.sin(0.5 * np.pi * a * u) if (a > 0 and k % 2) else np.cos(0.5 * np.pi * a * u)
            f = fu * np.cos(0.5 * np.pi * b * (w + 1))  # even or odd in x (mirror-closed)
            col = rng.normal(size=3)
            base[:, :, k] = (12.0 * np.exp(-(k - 3) / 25.0) + 2.0) * f[:, None] * (col / np.linalg.norm(col))[None, :]
            k += 1
    return t, base


def _point_buf(faces: np.ndarray, n_vertices: int) -> np.ndarray:
    """[N, 8] 0-based incident faces per vertex, padded with F (the dummy zero face)."""
    F = faces.shape[0]
    buf = np.full((n_vertices, 8), F, dtype=np.int64)
    vid = faces.reshape(-1)
    fid = np.repeat(np.arange(F), 3)
    order = np.argsort(vid, kind="stable")
    vid, fid = vid[order], fid[order]
    start = np.searchsorted(vid, np.arange(n_vertices))
    slot = np.arange(vid.size) - start[vid]
    if slot.max() >= 8:
        raise AssertionError("a synthetic vertex has more than 8 incident faces")
    buf[vid, slot] = fid
    return buf


def _build() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(_SEED)
    x, y, faces = _mesh()
    z, fields = _height(x, y)
    v = np.stack([x, y, z], axis=1)
    normals = _vertex_normals(v, faces)
    smooth_normals = _vertex_normals(np.stack([x, y, fields["base"]], axis=1), faces)
    N = v.shape[0]

    lm_xy = _landmarks_xy()
    d2 = ((lm_xy[:, None, :] - v[None, :, :2]) ** 2).sum(-1)
    keypoints = np.argmin(d2, axis=1)

    id_base = _identity_basis(v, smooth_normals, fields, rng)
    ex_base = _expression_basis(v, normals, smooth_normals, rng)
    meantex, tex_base = _texture(v, fields, rng)

    centre = v.mean(axis=0)
    v = v - centre  # BFM convention: the mean shape is centred (Deep3DFaceRecon re-centres anyway)

    r = _outline_radius(x, y)
    front = np.nonzero(r < 0.92)[0]
    in_front = np.zeros(N, dtype=bool)
    in_front[front] = True
    tri_mask2 = faces[in_front[faces].all(axis=1)]
    skin = 1.0 - np.clip(fields["lips"] + fields["brows"] + fields["eyes"], 0, 1)
    skin = (skin > 0.5).astype(np.float64)

    def interleave(b: np.ndarray) -> np.ndarray:  # [N, 3, K] -> [3N, K], rows x0 y0 z0 x1 ...
        return b.reshape(N * 3, -1)

    return {
        "meanshape": v.reshape(1, -1).astype(np.float32),
        "idBase": interleave(id_base).astype(np.float32),
        "exBase": interleave(ex_base).astype(np.float32),
        "meantex": meantex.reshape(1, -1).astype(np.float32),
        "texBase": interleave(tex_base).astype(np.float32),
        "tri": (faces + 1).astype(np.int32),
        "point_buf": (_point_buf(faces, N) + 1).astype(np.int32),  # padding F+1 after the shift
        "keypoints": (keypoints + 1).astype(np.int32).reshape(1, 68),
        "frontmask2_idx": (front + 1).astype(np.int32).reshape(-1, 1),
        "tri_mask2": (tri_mask2 + 1).astype(np.int32),
        "skinmask": skin.astype(np.float32).reshape(1, N),
    }


_CACHE: dict[str, np.ndarray] | None = None
_LOCK = threading.Lock()


def build_synthetic_bfm() -> dict[str, np.ndarray]:
    """The synthetic 3DMM as a ``BFM_model_front.mat``-layout dict (decimetres, 1-based indices; fresh copies).

    Keys and shapes: meanshape (1,3N), idBase (3N,80), exBase (3N,64), meantex (1,3N) RGB 0-255, texBase (3N,80),
    tri (F,3), point_buf (N,8) padded with F+1, keypoints (1,68), frontmask2_idx (K,1), tri_mask2 (F2,3),
    skinmask (1,N). Built once per process (< 2 s) and cached.
    """
    global _CACHE
    with _LOCK:
        if _CACHE is None:
            _CACHE = _build()
        return {k: v.copy() for k, v in _CACHE.items()}


def fingerprint(bfm: dict[str, np.ndarray]) -> str:
    """SHA-256 over the keys, shapes, dtypes and bytes of a BFM-layout dict (bitwise determinism check)."""
    h = hashlib.sha256()
    for k in sorted(bfm):
        a = np.ascontiguousarray(bfm[k])
        h.update(k.encode())
        h.update(str(a.shape).encode())
        h.update(a.dtype.str.encode())
        h.update(a.tobytes())
    return h.hexdigest()
