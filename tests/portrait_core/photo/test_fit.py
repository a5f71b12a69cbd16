"""``portrait_core.photo.fit``: the landmark fit, without mediapipe (landmarks made by the models themselves)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from portrait_core.body.model import BodyModel
from portrait_core.face import FaceModel
from portrait_core.geometry.camera import Camera
from portrait_core.photo.fit import BodyJoints, FitTargets, fit_photo


@pytest.fixture(scope="module")
def models():
    return FaceModel.synthetic(), BodyModel.synthetic()


def test_body_joints_match_the_body_model(models):
    _, body = models
    torch.manual_seed(0)
    betas, pose = torch.randn(3, 10), 0.3 * torch.randn(3, 6, 3)
    T, sh = BodyJoints(body)(betas.double(), pose.double())
    assert torch.allclose(T.float(), body.face_transform(betas, pose), atol=1e-5)
    assert torch.allclose(sh.float(), body.posed(betas, pose).joints[:, [16, 17]], atol=1e-5)


def _photo_landmarks(face, body, identity, expression, betas, pose, yaw, pitch, scale, centre):
    """Project the model's landmarks and shoulders into a 'photo' through a known camera and similarity."""
    with torch.no_grad():
        T = body.face_transform(betas[None], pose[None])[0]
        lm = face.landmarks(identity[None], expression[None])[0] @ T[:3, :3].T + T[:3, 3]
        sh = body.posed(betas[None], pose[None]).joints[0, [16, 17]]
        cam = Camera.portrait(yaw=torch.tensor([yaw]), pitch=torch.tensor([pitch]))
        uv, z = cam.project_normalised(torch.cat([lm, sh])[None])
    q = (uv[0].double().numpy() - 0.5) * scale + centre
    return q[:68], q[68:], z[0, 68:].double().numpy()


def test_fit_recovers_a_known_head(models):
    face, body = models
    g = torch.Generator().manual_seed(3)
    identity, expression = torch.randn(80, generator=g), 0.5 * torch.randn(64, generator=g)
    betas = 0.5 * torch.randn(10, generator=g)
    pose = torch.zeros(6, 3)
    pose[3] = torch.tensor([0.15, 0.3, 0.05])  # head: nod, turn, tilt
    lm, sh, z = _photo_landmarks(face, body, identity, expression, betas, pose, np.pi / 2 + 0.1, np.pi / 2 - 0.05,
                                 600.0, np.array([300.0, 280.0]))
    depth = (z[0] - z[1]) * 600 * float(Camera.portrait().intrinsics[0, 0, 0]) / z.mean()
    res = fit_photo(FitTargets(lm, sh, depth), face, body)
    assert res.error_iod < 0.01, res.error_iod
    # the head's orientation as the camera sees it is recovered (camera yaw and head turn trade off)
    assert abs((res.yaw - res.pose[3, 1] - res.pose[0, 1]) - (np.pi / 2 + 0.1 - 0.3)) < 0.08
    assert res.scale == pytest.approx(600.0, rel=0.05)
    assert np.abs(res.uv_to_photo(res.photo_to_uv(lm)) - lm).max() < 1e-9


def test_fit_without_shoulders_stays_near_the_priors(models):
    face, body = models
    lm, _, _ = _photo_landmarks(face, body, torch.zeros(80), torch.zeros(64), torch.zeros(10), torch.zeros(6, 3),
                                np.pi / 2, np.pi / 2, 500.0, np.array([250.0, 250.0]))
    res = fit_photo(FitTargets(lm), face, body)
    assert res.error_iod < 0.005
    assert np.abs(res.body_shape).max() < 0.5 and abs(res.roll) < 0.02
