"""Procedural head-and-shoulder avatars for the synthetic dataset (numpy/torch only; no bpy).

An avatar = the SMPL-format body (``BodyModel``) + the 3DMM face (``FaceModel``, placed with
``BodyModel.face_transform``) + a hair mesh of one of several styles + per-vertex colours (skin tone, clothing with
a procedural pattern, eyes, brows, lips). Everything is built in the **canonical frame** (metres, SMPL axes, origin
at the identity's canonical neck joint J12) and posed by linear blend skinning with the body's canonical->posed bone
transforms; hair is skinned to the head and, where it reaches down, to the nearest body vertex's weights (neck,
collars, shoulders), so head turns deform long hair.

``AvatarFactory.sample_identity`` / ``sample_view`` draw the random parameters from a numpy Generator;
``bake`` does the per-identity work once; ``pose`` gives the per-view meshes, landmarks and cameras.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.spatial import cKDTree

from portrait_core import conventions as C

# --- appearance palettes (sRGB in [0, 1]) ---------------------------------------------------------------------
SKIN_TONES = np.array([
    (0.97, 0.84, 0.74), (0.94, 0.77, 0.65), (0.88, 0.69, 0.56), (0.80, 0.60, 0.45), (0.69, 0.49, 0.35),
    (0.56, 0.38, 0.26), (0.43, 0.28, 0.19), (0.32, 0.21, 0.15),
])
HAIR_COLOURS = np.array([
    (0.06, 0.05, 0.05), (0.16, 0.11, 0.08), (0.30, 0.19, 0.11), (0.45, 0.30, 0.17), (0.55, 0.25, 0.12),
    (0.80, 0.66, 0.42), (0.62, 0.60, 0.58), (0.90, 0.88, 0.84),
])
HAIR_COLOUR_P = np.array([0.24, 0.24, 0.17, 0.11, 0.06, 0.09, 0.06, 0.03])
EYE_COLOURS = np.array([(0.25, 0.15, 0.08), (0.35, 0.22, 0.1), (0.25, 0.42, 0.6), (0.3, 0.45, 0.3), (0.45, 0.47, 0.5)])
HAIR_STYLES = ("buzz", "short", "bob", "long")
HAIR_STYLE_P = (0.12, 0.33, 0.2, 0.35)
PATTERNS = ("solid", "stripes", "checks")
NECKLINES = ("crew", "v", "scoop")

#: pose sampling: per pose joint (12 neck, 13 L-collar, 14 R-collar, 15 head, 16 L-shoulder, 17 R-shoulder),
#: std of the axis-angle (x = nod, y = turn, z = tilt) in radians; draws are clipped at 2.5 std.
POSE_STD = np.array([
    (0.10, 0.18, 0.06),
    (0.03, 0.05, 0.06),
    (0.03, 0.05, 0.06),
    (0.14, 0.25, 0.08),
    (0.06, 0.08, 0.10),
    (0.06, 0.08, 0.10),
])
FRONTAL_YAW_STD = 0.3
FRONTAL_PITCH_STD = 0.15
CLIP_STD = 2.5


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _inside_polygon(p: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon for points [N, 2] and a closed polygon [K, 2] -> bool [N]."""
    x, y = p[:, 0:1], p[:, 1:2]
    a, b = poly, np.roll(poly, -1, axis=0)
    cond = (a[None, :, 1] > y) != (b[None, :, 1] > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = a[None, :, 0] + (y - a[None, :, 1]) * (b[None, :, 0] - a[None, :, 0]) / (b[None, :, 1] - a[None, :, 1])
    return (cond & (x < xi)).sum(1) % 2 == 1


def _polyline_distance(p: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Distance of points [N, 2] to an open polyline [K, 2] -> [N]."""
    a, b = line[:-1], line[1:]
    ab = b - a
    t = np.clip(((p[:, None, :] - a[None]) * ab[None]).sum(-1) / (ab * ab).sum(-1).clip(1e-12)[None], 0, 1)
    q = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(p[:, None, :] - q, axis=-1).min(1)


def _grid_faces(rows: int, cols: int, wrap: bool) -> np.ndarray:
    """Triangles of a rows x cols vertex grid (row-major), optionally wrapping the columns."""
    faces = []
    cmax = cols if wrap else cols - 1
    for i in range(rows - 1):
        for j in range(cmax):
            a, b = i * cols + j, i * cols + (j + 1) % cols
            c, d = (i + 1) * cols + (j + 1) % cols, (i + 1) * cols + j
            faces += [(a, b, c), (a, c, d)]
    return np.asarray(faces, dtype=np.int64)


def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals [V, 3] of a triangle mesh."""
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    idx = f.ravel()
    w = np.repeat(fn, 3, axis=0)
    n = np.stack([np.bincount(idx, weights=w[:, c], minlength=len(v)) for c in range(3)], axis=1)
    return n / np.linalg.norm(n, axis=1, keepdims=True).clip(1e-12)


@dataclass
class HairStyle:
    """Parametric hair: a cap over the skull (``n_s`` rings x ``n_phi`` azimuths) plus an optional curtain of
    ``n_t`` rows hanging from the cap boundary at azimuths |phi| >= ``curtain_phi`` (phi = 0 is the face)."""

    name: str
    hairline: tuple[float, float, float, float, float]  # boundary polar angle at |phi| = 0, .5, 1.3, 2.1, pi
    thickness: float  # metres at the crown
    curtain_phi: float = math.pi  # no curtain if pi
    curtain_drop: float = 0.0  # metres below the cap boundary (back); sides scale it down near the face
    flare: float = 0.0  # outward spread at the curtain's end, metres
    n_s: int = 14
    n_phi: int = 56
    n_t: int = 14

    @property
    def has_curtain(self) -> bool:
        return self.curtain_phi < math.pi

    def curtain_phis(self) -> np.ndarray:
        n = max(8, int(round(self.n_phi * (math.pi - self.curtain_phi) / math.pi)))
        left = np.linspace(self.curtain_phi, 2 * math.pi - self.curtain_phi, n)
        return left

    def faces(self) -> np.ndarray:
        cap = _grid_faces(self.n_s, self.n_phi, wrap=True)
        if not self.has_curtain:
            return cap
        n_c = len(self.curtain_phis())
        cur = _grid_faces(self.n_t, n_c, wrap=False) + self.n_s * self.n_phi
        return np.concatenate([cap, cur])

    @property
    def num_vertices(self) -> int:
        return self.n_s * self.n_phi + (self.n_t * len(self.curtain_phis()) if self.has_curtain else 0)


#: hairline = polar angle (from +Y about the head centre) of the cap's lower boundary at azimuths |phi| = 0 (the
#: face), 0.5, 1.3, 2.1, pi (the back); the brows of the synthetic head are at ~0.98 rad, the ears at ~1.2-1.4.
STYLES: dict[str, HairStyle] = {
    "buzz": HairStyle("buzz", (0.62, 0.75, 1.40, 1.75, 1.95), 0.004),
    "short": HairStyle("short", (0.60, 0.72, 1.40, 1.85, 2.05), 0.016),
    "bob": HairStyle("bob", (0.62, 0.74, 1.15, 1.40, 1.50), 0.018, curtain_phi=1.05, curtain_drop=0.10, flare=0.02),
    "long": HairStyle("long", (0.60, 0.72, 1.10, 1.35, 1.45), 0.016, curtain_phi=1.0, curtain_drop=0.30, flare=0.035),
}


@dataclass
class IdentityParams:
    """Per-identity random draws (labels + appearance). Colours are sRGB in [0, 1]."""

    betas: np.ndarray  # [10]
    identity: np.ndarray  # [80]
    skin: np.ndarray
    hair_style: str
    hair_colour: np.ndarray
    fringe: float  # lowers the front hairline (radians)
    volume: float  # scales hair thickness
    cloth: np.ndarray
    cloth2: np.ndarray
    pattern: str
    pattern_freq: float  # cycles per metre
    pattern_dir: np.ndarray  # unit 3-vector in canonical space
    neckline: str
    sleeves: bool
    eye: np.ndarray
    lip: np.ndarray

    def describe(self) -> dict:
        """JSON-safe summary for the label record's ``extra`` field: every per-identity draw that changes pixels
        and is not already a label (``betas``, ``identity``), so a renderer or a generator given these can
        reproduce the person (the lip colour is a function of the skin)."""
        rgb = lambda v: np.round(v, 3).tolist()  # noqa: E731
        return {"skin": rgb(self.skin), "hair_style": self.hair_style, "hair_colour": rgb(self.hair_colour),
                "clothing": self.pattern, "neckline": self.neckline,
                "fringe": round(float(self.fringe), 4), "hair_volume": round(float(self.volume), 4),
                "clothing_primary": rgb(self.cloth), "clothing_secondary": rgb(self.cloth2),
                "pattern_frequency": round(float(self.pattern_freq), 3),
                "pattern_axis": "y" if abs(float(self.pattern_dir[1])) > 0.5 else "x",
                "sleeves": bool(self.sleeves), "eye_colour": rgb(self.eye)}


@dataclass
class ViewParams:
    """Per-image draws: pose [6,3] axis-angle (canonical-relative), expression [64], portrait camera angles."""

    pose: np.ndarray
    expression: np.ndarray
    yaw: float
    pitch: float


@dataclass
class BakedIdentity:
    """Per-identity geometry and colours in the canonical frame (computed once, reused for every view)."""

    params: IdentityParams
    betas_t: torch.Tensor
    identity_t: torch.Tensor
    body_colours: np.ndarray
    body_canon: np.ndarray
    cloth_mask: np.ndarray
    body_hidden: np.ndarray  # [V] 1 where the 3DMM face covers the body's head (rendered transparent)
    face_colours: np.ndarray
    face_canon_neutral: np.ndarray
    hair_canon: np.ndarray
    hair_weights: np.ndarray  # [Vh, 24]
    hair_colours: np.ndarray
    face_centre: np.ndarray  # canonical face-frame origin [3]


@dataclass
class PosedAvatar:
    """One view: posed meshes (SMPL world = canonical frame), landmarks, transforms and cameras."""

    body: np.ndarray
    face: np.ndarray
    skirt: np.ndarray  # strip closing the face edge against the head
    hair: np.ndarray
    landmarks: np.ndarray  # [68, 3] observed
    head_transform: np.ndarray  # [4, 4] G_15 canonical -> posed
    face_transform: np.ndarray  # [4, 4] face frame -> observed
    camera: object  # portrait Camera (batch 1)
    face_camera: object  # face Camera (batch 1)
    extras: dict = field(default_factory=dict)


def sample_camera_angles(rng: np.random.Generator, yaw_mode: str) -> tuple[float, float]:
    """(yaw, pitch) radians: frontal = N(pi/2, 0.3) / N(pi/2, 0.15) clipped at 2.5 std; '360' = uniform yaw."""
    pitch = C.FRONTAL_PITCH + float(np.clip(rng.normal(0, FRONTAL_PITCH_STD), -CLIP_STD * FRONTAL_PITCH_STD,
                                            CLIP_STD * FRONTAL_PITCH_STD))
    if yaw_mode == "frontal":
        yaw = C.FRONTAL_YAW + float(np.clip(rng.normal(0, FRONTAL_YAW_STD), -CLIP_STD * FRONTAL_YAW_STD,
                                            CLIP_STD * FRONTAL_YAW_STD))
    elif yaw_mode == "360":
        yaw = float(rng.uniform(-math.pi, math.pi))
    else:
        raise ValueError(f"yaw_mode must be 'frontal' or '360', got {yaw_mode!r}")
    return yaw, pitch


def sample_pose(rng: np.random.Generator) -> np.ndarray:
    """[6, 3] axis-angle of joints 12..17 relative to canonical, N(0, POSE_STD) clipped at 2.5 std."""
    return np.clip(rng.normal(0, 1, (6, 3)), -CLIP_STD, CLIP_STD) * POSE_STD


def sample_expression(rng: np.random.Generator, names: dict[str, int] | None = None) -> np.ndarray:
    """[64] expression coefficients: small N(0, 0.3) background plus named actions when the basis has them."""
    e = rng.normal(0, 0.3, 64) * np.exp(-np.arange(64) / 24.0)
    if rng.random() < 0.15:
        return e * 0.2
    names = names or {}
    draws = {"jaw_open": abs(rng.normal(0, 0.8)), "smile": rng.normal(0.3, 1.0), "brow_raise": rng.normal(0, 0.8),
             "blink": 2.0 if rng.random() < 0.06 else abs(rng.normal(0, 0.25)), "pucker": rng.normal(0, 0.5),
             "frown": rng.normal(0, 0.5), "brow_furrow": rng.normal(0, 0.5), "cheek_puff": abs(rng.normal(0, 0.3))}
    for name, value in draws.items():
        if name in names:
            e[names[name]] = value
    return np.clip(e, -3, 3)


def sample_identity(rng: np.random.Generator) -> IdentityParams:
    """One person's random draws (the first draws of ``rng``; the renderer seeds it per identity)."""
    skin_i = rng.uniform(0, len(SKIN_TONES) - 1)
    lo = int(math.floor(skin_i))
    skin = SKIN_TONES[lo] + (SKIN_TONES[min(lo + 1, len(SKIN_TONES) - 1)] - SKIN_TONES[lo]) * (skin_i - lo)
    skin = np.clip(skin * rng.uniform(0.96, 1.04, 3), 0, 1)
    hair = HAIR_COLOURS[rng.choice(len(HAIR_COLOURS), p=HAIR_COLOUR_P)] * rng.uniform(0.85, 1.15)
    h = rng.uniform(0, 1)
    s = rng.choice([rng.uniform(0.0, 0.15), rng.uniform(0.3, 0.8)])
    v = rng.uniform(0.15, 0.95)
    cloth = _hsv_to_rgb(h, s, v)
    cloth2 = _hsv_to_rgb((h + rng.uniform(0.3, 0.7)) % 1 if rng.random() < 0.5 else h,
                         rng.uniform(0, 0.6), (v + 0.45) % 1.0)
    pattern = PATTERNS[rng.choice(3, p=[0.5, 0.3, 0.2])]
    direction = np.array([0.0, 1.0, 0.0]) if rng.random() < 0.7 else np.array([1.0, 0.0, 0.0])
    lip = np.clip(skin * np.array([0.85, 0.62, 0.62]) + np.array([0.08, 0.0, 0.02]), 0, 1)
    return IdentityParams(
        betas=np.clip(rng.normal(0, 1, C.BODY_SHAPE_DIM), -2.0, 2.0),
        identity=np.clip(rng.normal(0, 1, C.IDENTITY_DIM), -3.0, 3.0),
        skin=skin, hair_style=HAIR_STYLES[rng.choice(len(HAIR_STYLES), p=HAIR_STYLE_P)],
        hair_colour=np.clip(hair, 0, 1), fringe=float(rng.choice([0.0, rng.uniform(0.05, 0.28)])),
        volume=float(rng.uniform(0.7, 1.4)), cloth=cloth, cloth2=cloth2, pattern=pattern,
        pattern_freq=float(rng.uniform(8, 22)), pattern_dir=direction,
        neckline=NECKLINES[rng.integers(3)], sleeves=bool(rng.random() < 0.8),
        eye=EYE_COLOURS[rng.integers(len(EYE_COLOURS))], lip=lip,
    )


class AvatarFactory:
    """Builds, bakes and poses procedural avatars from a ``BodyModel`` and a ``FaceModel``."""

    def __init__(self, body, face, expression_names: dict[str, int] | None = None):
        self.body = body.eval()
        self.face = face.eval()
        self.expression_names = expression_names or {}
        self.body_faces = body.faces.cpu().numpy().astype(np.int64)
        self.face_faces = face.faces.cpu().numpy().astype(np.int64)
        self.lbs_weights = body.lbs_weights.detach().cpu().numpy().astype(np.float64)
        self.landmark_idx = face.landmark_indices.cpu().numpy().astype(np.int64)
        self.head_vertex = self.lbs_weights.argmax(1) == C.HEAD
        self.styles = STYLES
        self.hair_faces = {name: s.faces() for name, s in STYLES.items()}
        self.skirt_index, self.skirt_faces = _boundary_skirt(self.face_faces)

    # --- sampling --------------------------------------------------------------------------------------
    def sample_identity(self, rng: np.random.Generator) -> IdentityParams:
        return sample_identity(rng)

    def sample_view(self, rng: np.random.Generator, yaw_mode: str) -> ViewParams:
        yaw, pitch = sample_camera_angles(rng, yaw_mode)
        return ViewParams(pose=sample_pose(rng), expression=sample_expression(rng, self.expression_names),
                          yaw=yaw, pitch=pitch)

    # --- baking ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def bake(self, p: IdentityParams) -> BakedIdentity:
        betas = torch.as_tensor(p.betas, dtype=torch.float32)[None]
        ident = torch.as_tensor(p.identity, dtype=torch.float32)[None]
        canon = self.body.canonical(betas)
        v_body = canon.vertices[0].double().numpy()
        joints = canon.joints[0].double().numpy()
        T_face = self.body.face_transform(betas)[0].double().numpy()
        f_neutral = self.face.vertices(ident, torch.zeros(1, C.EXPRESSION_DIM))[0].double().numpy()
        f_canon = f_neutral @ T_face[:3, :3].T + T_face[:3, 3]
        v_body = self._tuck_behind_face(v_body, f_canon)
        hidden = self._under_face(v_body, f_canon)

        # head frame for the hair: centre of the body's head vertices, axes = canonical axes
        head_pts = v_body[self.head_vertex]
        centre = 0.5 * (head_pts.min(0) + head_pts.max(0))
        centre[0] = 0.0
        style = self.styles[p.hair_style]
        surf_pts = np.concatenate([v_body[self.head_vertex], f_canon[::3]])
        hair_canon = self._hair_geometry(style, p, centre, surf_pts, v_body, f_canon)
        hair_weights = self._hair_weights(hair_canon, v_body, joints)

        cloth_value = self._cloth_mask(v_body, joints, p)
        cloth = cloth_value > 0.5
        body_col = np.tile(p.skin, (len(v_body), 1))  # the garment colour comes from the material
        # scalp under the hair takes the hair colour (hides gaps between hair and head)
        d = v_body - centre
        r = np.linalg.norm(d, axis=1).clip(1e-9)
        theta = np.arccos(np.clip(d[:, 1] / r, -1, 1))
        phi = np.abs(np.arctan2(d[:, 0], d[:, 2]))
        scalp = self.head_vertex & (theta < self._hairline(style, p, phi) - 0.08) & (~cloth)
        body_col[scalp] = p.hair_colour * 0.8
        face_col = self._face_colours(p)
        hair_col = np.tile(p.hair_colour, (len(hair_canon), 1))
        return BakedIdentity(
            params=p, betas_t=betas, identity_t=ident, body_colours=body_col, body_canon=v_body,
            cloth_mask=cloth_value, body_hidden=hidden, face_colours=face_col, face_canon_neutral=f_canon,
            hair_canon=hair_canon, hair_weights=hair_weights, hair_colours=hair_col, face_centre=T_face[:3, 3],
        )

    def _tuck_behind_face(self, v_body: np.ndarray, f_canon: np.ndarray, gap: float = 0.005,
                          reach: float = 0.03) -> np.ndarray:
        """Sink the body's head under the 3DMM face (canonical frame).

        A head vertex within ``reach`` of the face that is less than ``gap`` behind the face surface (signed
        distance along the normal of its nearest face vertex) is moved back along that normal to ``gap`` behind it;
        the move fades out with the distance to the face so the head blends in around the face's edge.
        """
        normals = _vertex_normals(f_canon, self.face_faces)
        tree = cKDTree(f_canon)
        v = v_body.copy()
        cand = self.head_vertex | (v[:, 1] > f_canon[:, 1].min() - 0.02)
        for _ in range(2):
            dist, nn = tree.query(v[cand])
            n = normals[nn]
            sd = ((v[cand] - f_canon[nn]) * n).sum(1)
            move = np.clip(sd + gap, 0, None) * _smoothstep(reach, 0.5 * reach, dist)
            v[cand] -= move[:, None] * n
        return v

    def _under_face(self, v_body: np.ndarray, f_canon: np.ndarray, margin: float = 0.006) -> np.ndarray:
        """[V] 1.0 for body vertices behind the face's interior (xy within the face, >= ``margin`` from its edge)."""
        d, _ = cKDTree(f_canon[:, :2]).query(v_body[:, :2])
        d_edge, _ = cKDTree(f_canon[self.skirt_index, :2]).query(v_body[:, :2])
        front = v_body[:, 2] > f_canon[:, 2].min() - 0.03
        return ((d < 0.003) & (d_edge > margin) & front & self.head_vertex).astype(np.float64)

    @staticmethod
    def _hairline(style: HairStyle, p: IdentityParams, phi: np.ndarray) -> np.ndarray:
        knots = np.array([0.0, 0.5, 1.3, 2.1, math.pi])
        vals = np.array(style.hairline, dtype=np.float64)
        vals[:2] += p.fringe
        return np.interp(np.abs(phi), knots, vals)

    def _hair_geometry(self, style: HairStyle, p: IdentityParams, centre: np.ndarray, head_pts: np.ndarray,
                       v_body: np.ndarray, f_canon: np.ndarray) -> np.ndarray:
        """Canonical hair vertices: cap on the head surface (+ thickness), curtain hanging and kept off the body."""
        phis = np.linspace(0, 2 * math.pi, style.n_phi, endpoint=False)
        phis = np.where(phis > math.pi, phis - 2 * math.pi, phis)
        s = np.linspace(0.0, 1.0, style.n_s)
        theta_max = self._hairline(style, p, phis)
        theta = s[:, None] * theta_max[None, :]  # [n_s, n_phi]
        dirs = np.stack([np.sin(theta) * np.sin(phis), np.cos(theta), np.sin(theta) * np.cos(phis)], -1).reshape(-1, 3)
        surf = self._surface_radius(dirs, head_pts - centre)
        thick = style.thickness * p.volume * (0.25 + 0.75 * _smoothstep(1.0, 0.55, s))[:, None].repeat(style.n_phi, 1)
        cap = centre + dirs * (surf + thick.reshape(-1) + 0.002)[:, None]
        if not style.has_curtain:
            return cap
        # curtain: strands from the cap boundary at the curtain azimuths, falling down and flaring outward
        cphi = style.curtain_phis()
        cphi = np.where(cphi > math.pi, cphi - 2 * math.pi, cphi)
        th0 = self._hairline(style, p, cphi)
        d0 = np.stack([np.sin(th0) * np.sin(cphi), np.cos(th0), np.sin(th0) * np.cos(cphi)], -1)
        top = centre + d0 * (self._surface_radius(d0, head_pts - centre) + style.thickness * p.volume * 0.25 + 0.002)[:, None]
        side = np.clip((np.abs(cphi) - style.curtain_phi) / 0.8, 0, 1)  # 0 next to the face, 1 behind
        drop = style.curtain_drop * (0.55 + 0.45 * side) * (0.8 + 0.4 * (p.volume - 0.7) / 0.7)
        t = np.linspace(0, 1, style.n_t)[:, None]
        radial = np.stack([np.sin(cphi), np.zeros_like(cphi), np.cos(cphi)], -1)
        strands = top[None] - t[..., None] * drop[None, :, None] * np.array([0, 1.0, 0]) \
            + (t ** 1.5)[..., None] * style.flare * radial[None]
        pts = strands.reshape(-1, 3)
        pts = self._push_out(pts, np.concatenate([v_body, f_canon]),
                             np.concatenate([_vertex_normals(v_body, self.body_faces),
                                             _vertex_normals(f_canon, self.face_faces)]), gap=0.012)
        return np.concatenate([cap, pts])

    @staticmethod
    def _surface_radius(dirs: np.ndarray, pts: np.ndarray, cone_deg: float = 10.0) -> np.ndarray:
        """Largest projection of ``pts`` (relative to the centre) onto each unit direction among the points within
        ``cone_deg`` of it -> [D] (nearest point's projection when the cone is empty)."""
        r = np.linalg.norm(pts, axis=1).clip(1e-9)
        u = pts / r[:, None]
        chord = 2 * math.sin(math.radians(cone_deg) / 2)
        pairs = cKDTree(dirs).sparse_distance_matrix(cKDTree(u), chord, output_type="ndarray")
        out = np.zeros(len(dirs))
        proj = r[pairs["j"]] * (1 - 0.5 * pairs["v"] ** 2)  # r cos(angle), cos = 1 - chord^2 / 2
        np.maximum.at(out, pairs["i"], proj)
        miss = out <= 0
        if miss.any():
            _, nn = cKDTree(u).query(dirs[miss])
            out[miss] = r[nn]
        return out

    @staticmethod
    def _push_out(pts: np.ndarray, surf: np.ndarray, normals: np.ndarray, gap: float, iters: int = 3) -> np.ndarray:
        """Move points out of (or onto) a surface given by vertices and outward normals, to ``gap`` metres."""
        tree = cKDTree(surf)
        p = pts.copy()
        for _ in range(iters):
            _, idx = tree.query(p, k=4)
            q = surf[idx]  # [N, 4, 3]
            n = normals[idx].mean(1)
            n /= np.linalg.norm(n, axis=1, keepdims=True).clip(1e-9)
            depth = ((p - q.mean(1)) * n).sum(1)
            move = np.clip(gap - depth, 0, None)
            p += move[:, None] * n
        return p

    def _hair_weights(self, hair: np.ndarray, v_body: np.ndarray, joints: np.ndarray) -> np.ndarray:
        """[Vh, 24]: the head above the head joint, blending into the nearest body vertex's weights below."""
        _, nn = cKDTree(v_body).query(hair)
        y_head, y_neck = joints[C.HEAD, 1], joints[C.NECK, 1]
        alpha = _smoothstep(y_neck - 0.03, y_head + 0.01, hair[:, 1])
        w = (1 - alpha)[:, None] * self.lbs_weights[nn]
        w[:, C.HEAD] += alpha
        return w / w.sum(1, keepdims=True)

    def _cloth_mask(self, v: np.ndarray, joints: np.ndarray, p: IdentityParams, soft: float = 0.012) -> np.ndarray:
        """Shirt region of the canonical body: below a neckline (crew, V or scoop), optionally sleeveless.

        Returns a soft value per vertex, 0.5 + signed distance / (2 ``soft``) clipped to [0, 1] (> 0.5 = cloth), so
        the renderer can cut a smooth edge at the interpolated 0.5 level.
        """
        x, y, z = v[:, 0], v[:, 1], v[:, 2]
        y0 = joints[C.NECK, 1] - 0.035
        front = np.clip(z / 0.06, 0, 1)
        if p.neckline == "crew":
            line = y0 - 0.015 * front
        elif p.neckline == "v":
            line = y0 - front * 0.10 * np.clip(1 - np.abs(x) / 0.08, 0, 1) - 0.015 * front
        else:
            line = y0 - front * 0.06 * np.clip(1 - (x / 0.12) ** 2, 0, 1)
        line = line + 0.08 * _smoothstep(0.065, 0.10, np.abs(x))  # away from the neck the shirt covers the shoulders
        sd = line - y
        if not p.sleeves:
            sd = np.minimum(sd, joints[C.LEFT_SHOULDER, 0] + 0.02 - np.abs(x))
        value = np.clip(0.5 + sd / (2 * soft), 0.0, 1.0)
        value[self.head_vertex] = 0.0
        return value

    def _face_regions(self) -> dict[str, np.ndarray]:
        """Per-vertex feature regions of the face mesh, from the mean face's landmarks (x, y in the face frame).

        Landmarks are vertex indices, so regions found on the mean face stay on the same vertices for every
        identity; computed once per factory.
        """
        if getattr(self, "_regions", None) is not None:
            return self._regions
        with torch.no_grad():
            v = self.face.vertices(torch.zeros(1, C.IDENTITY_DIM), torch.zeros(1, C.EXPRESSION_DIM))[0].double().numpy()
        lm = v[self.landmark_idx]
        xy = v[:, :2]
        reg: dict[str, np.ndarray] = {}
        cheek = np.zeros(len(v))
        for cx in (-1, 1):
            c = np.array([cx * 0.045, -0.015])
            cheek += np.exp(-((xy - c) ** 2).sum(1) / (2 * 0.018 ** 2))
        reg["cheek"] = cheek
        reg["lips"] = _inside_polygon(xy, lm[48:60, :2])
        reg["seam"] = reg["lips"] & (_polyline_distance(xy, np.concatenate([lm[60:65, :2], lm[[64, 65, 66, 67, 60], :2]])) < 0.0012)
        reg["brow"] = (_polyline_distance(xy, lm[17:22, :2]) < 0.0035) | (_polyline_distance(xy, lm[22:27, :2]) < 0.0035)
        sclera = np.zeros(len(v), bool)
        iris = np.zeros(len(v), bool)
        pupil = np.zeros(len(v), bool)
        lash = np.zeros(len(v), bool)
        for a in (36, 42):
            poly = lm[a:a + 6, :2]
            inside = _inside_polygon(xy, poly)
            width = np.linalg.norm(poly[3] - poly[0])
            r = np.linalg.norm(xy - poly.mean(0), axis=1)
            sclera |= inside
            iris |= inside & (r < 0.21 * width)
            pupil |= inside & (r < 0.09 * width)
            lash |= _polyline_distance(xy, np.concatenate([poly, poly[:1]])) < 0.0011
        reg.update(sclera=sclera, iris=iris, pupil=pupil, lash=lash)
        self._regions = reg
        return reg

    def _face_colours(self, p: IdentityParams) -> np.ndarray:
        """Per-vertex sRGB colours of the face mesh: skin, cheeks, lips, brows, eyes (sclera, iris, pupil, lashes)."""
        reg = self._face_regions()
        g = 0.12 * reg["cheek"][:, None]
        col = np.tile(p.skin, (len(g), 1)) * (1 - g) + g * np.clip(p.skin * np.array([1.05, 0.78, 0.78]), 0, 1)
        col[reg["lips"]] = p.lip
        col[reg["seam"]] = p.lip * 0.35
        col[reg["brow"]] = np.clip(p.hair_colour * 0.8, 0, 1)
        col[reg["sclera"]] = np.array([0.93, 0.92, 0.9])
        col[reg["iris"]] = p.eye
        col[reg["pupil"]] = 0.03
        col[reg["lash"]] = np.array([0.08, 0.06, 0.05])
        return np.clip(col, 0, 1)

    # --- posing ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def pose(self, baked: BakedIdentity, view: ViewParams, yaw_mode: str | None = None,
             expression_zero: bool = False) -> PosedAvatar:
        from portrait_core.geometry.camera import Camera

        pose_t = torch.as_tensor(view.pose, dtype=torch.float32)[None]
        exp = torch.zeros(1, C.EXPRESSION_DIM) if expression_zero else torch.as_tensor(view.expression,
                                                                                       dtype=torch.float32)[None]
        state = self.body.posed(baked.betas_t, pose_t)
        G = state.bone_transforms[0].double().numpy()  # [24, 4, 4] canonical -> posed
        Tv = state.vertex_transforms[0].double().numpy()  # [V, 4, 4]
        body = np.einsum("vab,vb->va", Tv[:, :3, :3], baked.body_canon) + Tv[:, :3, 3]
        T_face = self.body.face_transform(baked.betas_t, pose_t)[0].double().numpy()
        fv = self.face.vertices(baked.identity_t, exp)[0].double().numpy()
        lm = fv[self.landmark_idx]
        face = fv @ T_face[:3, :3].T + T_face[:3, 3]
        rim = fv[self.skirt_index]
        back = rim * np.array([0.92, 0.95, 1.0]) - np.array([0.0, 0.0, 0.02])
        skirt = np.concatenate([rim, back]) @ T_face[:3, :3].T + T_face[:3, 3]
        lm = lm @ T_face[:3, :3].T + T_face[:3, 3]
        Wh = baked.hair_weights
        Th = np.einsum("vj,jab->vab", Wh, G)
        hair = np.einsum("vab,vb->va", Th[:, :3, :3], baked.hair_canon) + Th[:, :3, 3]
        G15 = torch.as_tensor(G[C.HEAD], dtype=torch.float64)
        cam = Camera.portrait(yaw=torch.tensor([view.yaw], dtype=torch.float64),
                              pitch=torch.tensor([view.pitch], dtype=torch.float64))
        face_cam = Camera.face(G15[None], torch.as_tensor(baked.face_centre, dtype=torch.float64)[None],
                               yaw=torch.tensor([view.yaw], dtype=torch.float64),
                               pitch=torch.tensor([view.pitch], dtype=torch.float64))
        return PosedAvatar(body=body, face=face, skirt=skirt, hair=hair, landmarks=lm,
                           head_transform=G[C.HEAD], face_transform=T_face, camera=cam, face_camera=face_cam)


def _boundary_skirt(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A strip along the open boundary of a triangle mesh: (boundary vertex ids [K], strip triangles [2E, 3]).

    Strip vertex k < K is boundary vertex k; vertex K + k is its copy pushed back (see ``AvatarFactory.pose``).
    It closes the gap between the 3DMM face's edge and the head behind it.
    """
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    uniq, counts = np.unique(e, axis=0, return_counts=True)
    edges = uniq[counts == 1]
    ids = np.unique(edges)
    local = {int(v): k for k, v in enumerate(ids)}
    K = len(ids)
    tris = []
    for a, b in edges:
        ia, ib = local[int(a)], local[int(b)]
        tris += [(ia, ib, K + ib), (ia, K + ib, K + ia)]
    return ids, np.asarray(tris, dtype=np.int64)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p_, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p_), (q, v, p_), (p_, v, t), (p_, q, v), (t, p_, v), (v, p_, q)][i])
