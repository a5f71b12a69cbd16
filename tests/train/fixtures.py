"""A small Busto-format dataset for the training tests, drawn directly from the synthetic body and face models
(point splats, no Blender): images depend on the labels, so the face reconstruction net has signal to learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from portrait_core import conventions as C
from portrait_core.body.model import BodyModel
from portrait_core.data.labels import make_info, make_record, write_labels
from portrait_core.face.model import FaceModel
from portrait_core.geometry.camera import Camera


def _splat(points: torch.Tensor, colors: torch.Tensor, cam: Camera, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-first point splatting [N,3] -> (uint8 RGB [res,res,3], uint8 mask [res,res])."""
    pix, z = cam.project(points[None], res, res)
    pix, z = pix[0], z[0]
    order = torch.argsort(z, descending=True)  # far first, near overwrite
    x = pix[order, 0].round().long()
    y = pix[order, 1].round().long()
    ok = (x >= 0) & (x < res) & (y >= 0) & (y < res) & (z[order] > 0)
    img = torch.ones(res, res, 3)
    mask = torch.zeros(res, res)
    img[y[ok], x[ok]] = colors[order][ok]
    mask[y[ok], x[ok]] = 1.0
    return (img * 255).round().byte().numpy(), (mask * 255).round().byte().numpy()


def write_fixture_dataset(root: Path, count: int = 48, resolution: int = 32, face_resolution: int = 32,
                          seed: int = 0, yaw_range: float = 0.5) -> Path:
    root = Path(root)
    for sub in ("images", "masks", "faces"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    body, face = BodyModel.synthetic(), FaceModel.synthetic()
    n = count
    betas = torch.randn(n, 10, generator=g) * 0.5
    pose = torch.randn(n, 6, 3, generator=g) * 0.08
    expr = torch.randn(n, 64, generator=g) * 1.5
    ident = torch.randn(n, 80, generator=g)
    yaw = C.FRONTAL_YAW + (torch.rand(n, generator=g) * 2 - 1) * yaw_range
    pitch = C.FRONTAL_PITCH + (torch.rand(n, generator=g) * 2 - 1) * 0.1
    with torch.no_grad():
        cams = Camera.portrait(yaw, pitch)
        state = body.posed(betas, pose)
        T = body.face_transform(betas, pose)
        fv = face.vertices(ident, expr)
        fv_obs = fv @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]
        # the face camera looks at the head from the portrait camera's view, as SynthPortrait's does
        face_cams = Camera.face(state.bone_transforms[:, C.HEAD], body.face_transform(betas)[:, :3, 3], yaw=yaw,
                                pitch=pitch)
    lm = face.landmark_indices
    records = []
    for i in range(n):
        # colours: skin tone from identity, shading from the face-frame depth, dark landmarks, a shirt
        tone = 0.55 + 0.15 * torch.tanh(ident[i, :3])
        shade = 0.6 + 0.4 * torch.sigmoid(fv[i, :, 2:3] * 60)
        fcol = (tone[None] * shade).clamp(0, 1)
        fcol[lm] = torch.tensor([0.15, 0.05, 0.05])
        bv = state.vertices[i]
        shirt = torch.tensor([0.2 + 0.6 * (i % 3) / 2, 0.3, 0.7])
        bcol = torch.where((bv[:, 1] < -0.02)[:, None], shirt[None], tone[None] * 0.9)
        img, mask = _splat(torch.cat([bv, fv_obs[i]]), torch.cat([bcol, fcol]), cams[i], resolution)
        fimg, _ = _splat(fv_obs[i], fcol, face_cams[i], face_resolution)
        name = f"{i:05d}"
        Image.fromarray(img).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
        Image.fromarray(fimg).save(root / "faces" / f"{name}.png")
        records.append(make_record(
            name, image=f"images/{name}.png", mask=f"masks/{name}.png", face=f"faces/{name}.png",
            camera=cams[i].to_label25()[0].numpy(), face_camera=face_cams[i].to_label25()[0].numpy(),
            pose=pose[i].numpy(), expression=expr[i].numpy(), identity=ident[i].numpy(),
            body_shape=betas[i].numpy(),
            camera_angles={"pitch": float(pitch[i]), "yaw": float(yaw[i]), "radius": C.PORTRAIT_RADIUS}))
    info = make_info(resolution=resolution, face_resolution=face_resolution, yaw_mode="frontal",
                     generator="tests/train/fixtures.py", seed=seed, count=count, face_model="synthetic")
    write_labels(root, info, records)
    return root


if __name__ == "__main__":
    import sys

    write_fixture_dataset(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 48)
