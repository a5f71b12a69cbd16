"""Fit Busto's face and body models to a photo's 2-D landmarks (``prepare``'s model fit; see docs/photo.md).

Image formation (docs/CONVENTIONS.md): a 3DMM point ``p`` (face frame, metres) goes to the canonical/observed frame
with ``BodyModel.face_transform(betas, pose)`` (the face rides on the head bone G_15), then through the portrait
camera ``Camera.portrait(yaw, pitch)`` to normalised portrait coordinates ``uv`` (0..1). The photo is the portrait
under a 2-D similarity, ``q = centre + scale * R(roll) (uv - 0.5)`` with ``q`` the photo's continuous pixel
coordinates (pixel j spans [j, j + 1]); the aligned portrait is the photo resampled through that similarity.

Fitted by Adam in torch (two stages: rigid, then everything), maximum a posteriori:

* data: the 68 iBUG landmarks (squared error in units of the detected inter-ocular distance, outer eye corners);
  the two shoulders (SMPL joints 16/17 against the pose landmarks, weight 0.1) and their depth difference (the
  sign of the body's turn, weight 0.02);
* priors (in units of the synthetic renderer's standard deviations, weight ``PRIOR``): identity and expression
  coefficients N(0, 1), body shape N(0, 1), pose code N(0, POSE_STD) per joint and axis (nod, turn, tilt),
  camera yaw N(pi/2, 0.3) and pitch N(pi/2, 0.15), roll N(0, 0.1).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from portrait_core import conventions as C
from portrait_core.body.model import BodyModel
from portrait_core.data.synth.avatar import FRONTAL_PITCH_STD, FRONTAL_YAW_STD, POSE_STD
from portrait_core.face import FaceModel
from portrait_core.geometry.camera import Camera, orbit_cam2world
from portrait_core.geometry.rotations import axis_angle_to_matrix

#: prior weight relative to the landmark term (as a landmark noise of ~1.7 % of the inter-ocular distance)
PRIOR = 3e-4
SHOULDER_WEIGHT = 0.1
DEPTH_WEIGHT = 0.02
RIGID_ITERATIONS = 8
FULL_ITERATIONS = 25
YAW_STD, PITCH_STD, ROLL_STD = FRONTAL_YAW_STD, FRONTAL_PITCH_STD, 0.1
#: iBUG-68 outer eye corners (the inter-ocular distance)
OUTER_EYE_CORNERS = (36, 45)


@dataclass
class FitTargets:
    """What the fit sees, in photo pixels (continuous coordinates).

    ``landmarks`` [68, 2] iBUG-68; ``shoulders`` [2, 2] (subject's left, right) or None; ``shoulder_depth`` the
    pose model's depth of the left minus the right shoulder in pixels (positive: the left one is farther), or None.
    """

    landmarks: np.ndarray
    shoulders: np.ndarray | None = None
    shoulder_depth: float | None = None


@dataclass
class FitResult:
    """Fitted labels (Busto's conventions) plus the photo <-> portrait similarity and the fit's quality."""

    identity: np.ndarray  # [80]
    expression: np.ndarray  # [64]
    pose: np.ndarray  # [6, 3] axis-angle of joints 12..17 relative to the canonical pose
    body_shape: np.ndarray  # [10]
    yaw: float
    pitch: float
    scale: float  # photo pixels per portrait side
    centre: np.ndarray  # [2] photo point at the portrait's centre (continuous pixels)
    roll: float  # radians; the portrait's x axis in the photo is (cos roll, sin roll)
    landmarks_fitted: np.ndarray  # [68, 2] fitted 3DMM landmarks projected into the photo (pixels)
    shoulders_fitted: np.ndarray  # [2, 2] fitted SMPL shoulder joints in the photo (pixels)
    error_px: np.ndarray  # [68] per-landmark distance (pixels)
    inter_ocular: float  # detected outer-eye-corner distance (pixels)
    seconds: float
    steps: int  # Levenberg-Marquardt iterations done
    history: list[float] = field(default_factory=list)

    @property
    def error_iod(self) -> float:
        """Mean landmark distance divided by the detected inter-ocular distance."""
        return float(self.error_px.mean() / self.inter_ocular)

    def photo_to_uv(self, q: np.ndarray) -> np.ndarray:
        """Photo pixels [..., 2] -> normalised portrait coordinates [..., 2]."""
        c, s = math.cos(self.roll), math.sin(self.roll)
        R = np.array([[c, -s], [s, c]])
        return (np.asarray(q, np.float64) - self.centre) @ R / self.scale + 0.5

    def uv_to_photo(self, uv: np.ndarray) -> np.ndarray:
        """Normalised portrait coordinates [..., 2] -> photo pixels [..., 2]."""
        c, s = math.cos(self.roll), math.sin(self.roll)
        R = np.array([[c, -s], [s, c]])
        return (np.asarray(uv, np.float64) - 0.5) @ R.T * self.scale + self.centre

    def camera(self) -> Camera:
        return Camera.portrait(yaw=torch.tensor([self.yaw], dtype=torch.float64),
                               pitch=torch.tensor([self.pitch], dtype=torch.float64))


class BodyJoints:
    """The head transform and shoulder joints as a cheap differentiable function of (betas, pose).

    With the canonical pose's fixed rotations, the canonical joints are linear in the betas, so they are tabulated
    once (11 evaluations); each step then composes only the neck -> head and collar -> shoulder chains
    (``G_j = G_parent @ rotation about J_can_j by Q R(pose_j) Q^T``, Q the parent's canonical global rotation, as
    ``canonical_to_posed_transforms``). Equals ``BodyModel.face_transform`` and the posed shoulder joints (tested).
    """

    def __init__(self, body: BodyModel, dtype: torch.dtype = torch.float64):
        with torch.no_grad():
            betas = torch.cat([torch.zeros(1, 10), torch.eye(10)])
            _, _, _, _, T_adj, J_can = body._bones(betas, None)
            centre = body.face_centre(betas)  # [11, 3], linear in the betas
        self.J0 = J_can[0].to(dtype)  # [24, 3]
        self.Jd = (J_can[1:] - J_can[:1]).permute(1, 2, 0).to(dtype)  # [24, 3, 10]
        self.C0 = centre[0].to(dtype)
        self.Cd = (centre[1:] - centre[:1]).T.to(dtype)  # [3, 10]
        Q = T_adj[0, :, :3, :3].to(dtype)  # canonical global rotations [24, 3, 3]
        self.Qp = Q[[body.parents[j] for j in C.POSE_JOINTS]]  # [6, 3, 3]

    def __call__(self, betas: Tensor, pose: Tensor) -> tuple[Tensor, Tensor]:
        """(face transform [B, 4, 4], posed left/right shoulder joints [B, 2, 3]) for betas [B, 10], pose [B, 6, 3]."""
        J = self.J0 + torch.einsum("jkb,nb->njk", self.Jd, betas)  # [B, 24, 3]
        M = self.Qp @ axis_angle_to_matrix(pose) @ self.Qp.transpose(-1, -2)  # [B, 6, 3, 3]
        idx = {j: i for i, j in enumerate(C.POSE_JOINTS)}

        def local(j: int) -> tuple[Tensor, Tensor]:  # rotation about J_j: x -> M (x - J) + J
            R = M[:, idx[j]]
            return R, J[:, j] - (R @ J[:, j, :, None]).squeeze(-1)

        def compose(a, b):
            return a[0] @ b[0], (a[0] @ b[1][..., None]).squeeze(-1) + a[1]

        head = compose(local(C.NECK), local(C.HEAD))
        left = compose(local(C.LEFT_COLLAR), local(C.LEFT_SHOULDER))
        right = compose(local(C.RIGHT_COLLAR), local(C.RIGHT_SHOULDER))
        sh = torch.stack([(left[0] @ J[:, C.LEFT_SHOULDER, :, None]).squeeze(-1) + left[1],
                          (right[0] @ J[:, C.RIGHT_SHOULDER, :, None]).squeeze(-1) + right[1]], dim=1)
        centre = self.C0 + betas @ self.Cd.T  # canonical face centre [B, 3]; the face frame is unrotated
        R, t = head
        top = torch.cat([R, ((R @ centre[..., None]).squeeze(-1) + t)[..., None]], dim=-1)
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=R.dtype).expand(R.shape[0], 1, 4)
        return torch.cat([top, bottom], dim=1), sh


def _similarity_init(src: np.ndarray, dst: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Least-squares 2-D similarity dst ~ s R(theta) src + t (Umeyama): (s, theta, t)."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    sxx = (a * a).sum()
    cos_part = (a * b).sum()
    sin_part = (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum()
    theta = math.atan2(sin_part, cos_part)
    s = math.hypot(cos_part, sin_part) / max(sxx, 1e-12)
    R = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return s, theta, md - s * R @ ms


#: parameter blocks of the fit, in order: (name, size); angles in units of their prior's standard deviation
BLOCKS: tuple[tuple[str, int], ...] = (("log_scale", 1), ("centre", 2), ("roll", 1), ("yaw", 1), ("pitch", 1),
                                       ("pose", 18), ("betas", 10), ("identity", 80), ("expression", 64))
RIGID = ("log_scale", "centre", "roll", "yaw", "pitch", "pose", "betas")


def _levenberg_marquardt(residual_fn, x: Tensor, free: Tensor, iterations: int, history: list[float]) -> Tensor:
    """Minimise ``|residual_fn(x)|^2`` over the entries ``free`` (bool mask) of ``x`` (damped Gauss-Newton with an
    exact autograd Jacobian; the damping adapts: /3 after a step that lowers the cost, x5 and retry otherwise)."""
    from torch.autograd.functional import jacobian

    lam = 1e-3
    r = residual_fn(x)
    cost = float(r @ r)
    for _ in range(iterations):
        J = jacobian(residual_fn, x, vectorize=True)[:, free]
        A = J.T @ J
        g = J.T @ r
        diag = torch.diagonal(A).clamp_min(1e-9)
        for _retry in range(8):
            step = torch.linalg.solve(A + lam * torch.diag(diag), -g)
            x_new = x.clone()
            x_new[free] += step
            r_new = residual_fn(x_new)
            c_new = float(r_new @ r_new)
            if np.isfinite(c_new) and c_new < cost:
                x, r, lam = x_new, r_new, max(lam / 3, 1e-7)
                done = cost - c_new < 1e-7 * cost
                cost = c_new
                break
            lam *= 5
        else:
            done = True
        history.append(cost)
        if done:
            break
    return x


def fit_photo(targets: FitTargets, face: FaceModel, body: BodyModel, *, rigid_iterations: int = RIGID_ITERATIONS,
              full_iterations: int = FULL_ITERATIONS, prior: float = PRIOR) -> FitResult:
    """Fit identity, expression, pose, body shape, camera (yaw, pitch) and the photo similarity to ``targets``
    (Levenberg-Marquardt: first the rigid and body parameters, then everything)."""
    t0 = time.perf_counter()
    dt = torch.float64
    lm = torch.as_tensor(targets.landmarks, dtype=dt)
    iod = float(np.linalg.norm(targets.landmarks[OUTER_EYE_CORNERS[0]] - targets.landmarks[OUTER_EYE_CORNERS[1]]))
    if not iod > 0:
        raise ValueError("fit_photo: the detected eye corners coincide (inter-ocular distance 0)")
    joints = BodyJoints(body, dt)
    pose_std = torch.as_tensor(POSE_STD, dtype=dt).reshape(-1)
    rows = (face.landmark_indices[:, None] * 3 + torch.arange(3)).reshape(-1)
    lm_mean = face.mean_shape[face.landmark_indices].to(dt)  # [68, 3]
    lm_id, lm_ex = face.id_base[rows].to(dt), face.ex_base[rows].to(dt)  # [204, 80], [204, 64]
    focal = float(Camera.portrait().intrinsics[0, 0, 0])
    look_at = torch.tensor(C.PORTRAIT_LOOK_AT, dtype=dt)[None]
    radius = torch.tensor([C.PORTRAIT_RADIUS], dtype=dt)
    sizes = dict(BLOCKS)
    offsets, o = {}, 0
    for name, n in BLOCKS:
        offsets[name] = slice(o, o + n)
        o += n

    def unpack(x: Tensor) -> dict[str, Tensor]:
        return {name: x[sl] for name, sl in offsets.items()}

    def project(v: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """uv of the 68 landmarks [68, 2], uv [2, 2] and camera depth [2] of the shoulder joints."""
        T, sh = joints(v["betas"][None], v["pose"].reshape(1, 6, 3))
        pts = lm_mean + (lm_id @ v["identity"] + lm_ex @ v["expression"]).reshape(68, 3)
        world = pts @ T[0, :3, :3].T + T[0, :3, 3]
        yaw = C.FRONTAL_YAW + YAW_STD * v["yaw"]
        pitch = C.FRONTAL_PITCH + PITCH_STD * v["pitch"]
        c2w = orbit_cam2world(yaw, pitch, radius, look_at)[0]
        p_cam = (torch.cat([world, sh[0]]) - c2w[:3, 3]) @ c2w[:3, :3]
        uv = focal * p_cam[:, :2] / p_cam[:, 2:] + 0.5
        return uv[:68], uv[68:], p_cam[68:, 2]

    # initial similarity from the mean face seen by the frontal camera
    x = torch.zeros(o, dtype=dt)
    with torch.no_grad():
        uv0, _, _ = project(unpack(x))
    s0, th0, t0v = _similarity_init(uv0.numpy() - 0.5, targets.landmarks.astype(np.float64))
    x[offsets["roll"]] = th0 / ROLL_STD
    centre0 = torch.as_tensor(t0v, dtype=dt)
    shoulders = None if targets.shoulders is None else torch.as_tensor(targets.shoulders, dtype=dt)
    w_prior = math.sqrt(prior)

    def to_photo(v: dict[str, Tensor], uv: Tensor) -> Tensor:
        s = s0 * torch.exp(v["log_scale"])
        roll = ROLL_STD * v["roll"]
        c, sn = torch.cos(roll), torch.sin(roll)
        R = torch.stack([torch.cat([c, -sn]), torch.cat([sn, c])])
        return (uv - 0.5) @ R.T * s + centre0 + iod * v["centre"]

    def residuals(x: Tensor) -> Tensor:
        v = unpack(x)
        uv, uv_sh, z_sh = project(v)
        out = [((to_photo(v, uv) - lm) / iod).reshape(-1)]
        if shoulders is not None:
            out.append(math.sqrt(SHOULDER_WEIGHT) * ((to_photo(v, uv_sh) - shoulders) / iod).reshape(-1))
            if targets.shoulder_depth is not None:
                dz_px = (z_sh[0] - z_sh[1]) * s0 * torch.exp(v["log_scale"]) * focal / z_sh.mean()
                out.append(math.sqrt(DEPTH_WEIGHT) * ((dz_px - targets.shoulder_depth) / iod))
        out += [w_prior * v["identity"], w_prior * v["expression"], w_prior * v["betas"],
                w_prior * v["pose"] / pose_std, w_prior * v["yaw"], w_prior * v["pitch"], w_prior * v["roll"]]
        return torch.cat(out)

    history: list[float] = []
    rigid = torch.zeros(o, dtype=torch.bool)
    for name in RIGID:
        rigid[offsets[name]] = True
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: threads only add overhead
    try:
        x = _levenberg_marquardt(residuals, x, rigid, rigid_iterations, history)
        x = _levenberg_marquardt(residuals, x, torch.ones(o, dtype=torch.bool), full_iterations, history)
    finally:
        torch.set_num_threads(threads)

    with torch.no_grad():
        v = unpack(x)
        uv, uv_sh, _ = project(v)
        q = to_photo(v, uv).numpy()
        q_sh = to_photo(v, uv_sh).numpy()
    res = FitResult(
        identity=v["identity"].numpy().copy(), expression=v["expression"].numpy().copy(),
        pose=v["pose"].numpy().reshape(6, 3).copy(), body_shape=v["betas"].numpy().copy(),
        yaw=C.FRONTAL_YAW + YAW_STD * float(v["yaw"]), pitch=C.FRONTAL_PITCH + PITCH_STD * float(v["pitch"]),
        scale=s0 * math.exp(float(v["log_scale"])), centre=(centre0 + iod * v["centre"]).numpy().copy(),
        roll=ROLL_STD * float(v["roll"]), landmarks_fitted=q, shoulders_fitted=q_sh,
        error_px=np.linalg.norm(q - targets.landmarks, axis=1), inter_ocular=iod,
        seconds=time.perf_counter() - t0, steps=len(history), history=history)
    assert sizes["identity"] == 80
    return res


def posed_geometry(res: FitResult, face: FaceModel, body: BodyModel) -> dict[str, np.ndarray]:
    """World-space (canonical frame, metres) geometry of the fit: face vertices, body vertices, both meshes' faces,
    the 68 landmarks, the head transform G_15 and the canonical face centre."""
    with torch.no_grad():
        ident = torch.as_tensor(res.identity, dtype=torch.float32)[None]
        expr = torch.as_tensor(res.expression, dtype=torch.float32)[None]
        betas = torch.as_tensor(res.body_shape, dtype=torch.float32)[None]
        pose = torch.as_tensor(res.pose, dtype=torch.float32)[None]
        T = body.face_transform(betas, pose)[0].double()
        fv = face.vertices(ident, expr)[0].double()
        lm = face.landmarks(ident, expr)[0].double()
        state = body.posed(betas, pose)
        G, _ = body.bone_transforms(betas, pose)
        return {
            "face_vertices": (fv @ T[:3, :3].T + T[:3, 3]).numpy(),
            "face_faces": face.faces.numpy(),
            "landmarks": (lm @ T[:3, :3].T + T[:3, 3]).numpy(),
            "body_vertices": state.vertices[0].double().numpy(),
            "body_faces": body.faces.numpy(),
            "head_transform": G[0, C.HEAD].double().numpy(),
            "face_centre": body.face_centre(betas)[0].double().numpy(),
        }
