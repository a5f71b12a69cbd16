"""The face-surface gap: the 3DMM's inner-face depth seen by a camera, and a render's depth compared with it."""

from __future__ import annotations

import pytest
import torch

from portrait_core import conventions as C
from portrait_core.body.model import BodyModel
from portrait_core.face.model import FaceModel
from portrait_core.geometry.camera import Camera
from portrait_core.metrics import face_surface as FS


@pytest.fixture(scope="module")
def models():
    return FaceModel.synthetic(), BodyModel.synthetic()


def test_splat_keeps_the_front_most_point_and_drops_what_is_outside():
    uv = torch.tensor([[[0.1, 0.1], [0.1, 0.1], [0.6, 0.9], [1.2, 0.5], [0.6, 0.1]]])
    z = torch.tensor([[2.0, 1.0, 3.0, 1.0, 1.5]])
    keep = torch.tensor([[True, True, True, True, False]])
    depth, covered = FS.splat_depth(uv, z, keep, 4)
    assert covered.sum() == 2  # (0, 0) and (row 3, col 2); the point outside and the dropped one land nowhere
    assert float(depth[0, 0, 0, 0]) == 1.0 and float(depth[0, 0, 3, 2]) == 3.0
    assert float(depth[0, 0, 0, 2]) == 0.0 and not bool(covered[0, 0, 0, 2])


def test_inner_face_is_between_jaw_and_brows(models):
    face, _ = models
    inner = FS.inner_face_vertices(face)
    mean = face.neutral_vertices(torch.zeros(1, 80))[0]
    nose_tip = face.landmark_indices[30]
    assert bool(inner[nose_tip])
    assert 0.3 < float(inner.float().mean()) < 0.95
    # the highest vertices (forehead) and the farthest to the sides (ears/temples) are outside
    assert not bool(inner[mean[:, 1].argmax()]) and not bool(inner[mean[:, 0].abs().argmax()])


def test_target_is_the_3dmm_depth_and_moves_with_the_camera(models):
    face, body = models
    b = 2
    identity = torch.randn(b, 80, generator=torch.Generator().manual_seed(0)) * 0.5
    expression, betas, pose = torch.zeros(b, 64), torch.zeros(b, 10), torch.zeros(b, *C.POSE_SHAPE)
    head = body.posed(betas, pose).bone_transforms[:, C.HEAD]
    centre = body.face_transform(betas)[:, :3, 3]
    cam = Camera.face(head, centre)
    depth, covered = FS.face_depth_target(face, body, cam, identity, expression, betas, pose, 32)
    assert covered[:, :, 12:20, 12:20].float().mean() > 0.9  # the middle of the face is covered
    v = FS.face_vertices_observed(face, body, identity, expression, betas, pose)
    _, z = cam.project_normalised(v)
    assert float(depth[covered].min()) >= float(z.min()) - 1e-6 and float(depth[covered].max()) <= float(z.max())
    # a render at exactly that depth has no gap; one 1 cm farther has a gap of +1 cm everywhere it is compared
    alpha = torch.ones_like(depth)
    gap, mask = FS.surface_gap(depth, alpha, depth, covered)
    assert bool(mask.any()) and float(gap[mask].abs().max()) == 0.0
    summary = FS.gap_summary(depth + 0.01 - depth, covered)
    assert summary["mean_mm"] == pytest.approx(10.0, abs=1e-4) and summary["pixels"] == int(covered.sum())
    # transparent pixels are not compared
    _, none = FS.surface_gap(depth, torch.zeros_like(depth), depth, covered)
    assert not bool(none.any())
    # the camera carried 5 cm back along its axis sees every depth 5 cm farther (same pixels, up to the 1/z scale)
    back = torch.eye(4).repeat(b, 1, 1)
    back[:, :3, 3] = -0.05 * cam.forward
    far = Camera(back @ cam.cam2world, cam.intrinsics, cam.near, cam.far)
    depth_far, covered_far = FS.face_depth_target(face, body, far, identity, expression, betas, pose, 32)
    both = covered & covered_far
    assert float(both.float().sum()) > 0.5 * float(covered.float().sum())
    assert float((depth_far - depth)[both].median()) == pytest.approx(0.05, abs=0.01)
