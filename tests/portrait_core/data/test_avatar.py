"""Procedural avatars without Blender: long hair skinned to head and shoulders, labels' distributions, regions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from portrait_core import conventions as C
from portrait_core.data.synth.avatar import AvatarFactory, ViewParams, sample_camera_angles


@pytest.fixture(scope="module")
def factory():
    from portrait_core.body.model import BodyModel
    from portrait_core.face.model import EXPRESSION_NAMES, FaceModel

    return AvatarFactory(BodyModel.synthetic(), FaceModel.synthetic(), EXPRESSION_NAMES)


def _identity(factory, style, seed=0):
    rng = np.random.default_rng(seed)
    p = factory.sample_identity(rng)
    p.hair_style = style
    return factory.bake(p)


def test_long_hair_reaches_shoulders_and_follows_head_and_shoulders(factory):
    baked = _identity(factory, "long")
    canon = factory.body.canonical(torch.as_tensor(baked.params.betas, dtype=torch.float32)[None])
    J = canon.joints[0].numpy()
    hair = baked.hair_canon
    # the curtain reaches down to the shoulders (below the shoulder joints' height)
    assert hair[:, 1].min() < J[C.LEFT_SHOULDER, 1]
    w = baked.hair_weights
    top = hair[:, 1] > J[C.HEAD, 1] + 0.03
    low = hair[:, 1] < J[C.NECK, 1] - 0.03
    assert np.allclose(w[top, C.HEAD], 1.0)
    shoulder_joints = [C.NECK, C.LEFT_COLLAR, C.RIGHT_COLLAR, C.LEFT_SHOULDER, C.RIGHT_SHOULDER, 9]
    assert low.sum() > 20 and (w[low][:, shoulder_joints].sum(1) > 0.5).all()
    # turning the head moves the crown rigidly and bends the lower hair only partly
    zero = np.zeros((6, 3))
    turn = zero.copy()
    turn[3, 1] = 0.6  # head turn (about +Y)
    v0 = factory.pose(baked, ViewParams(pose=zero, expression=np.zeros(64), yaw=math.pi / 2, pitch=math.pi / 2))
    v1 = factory.pose(baked, ViewParams(pose=turn, expression=np.zeros(64), yaw=math.pi / 2, pitch=math.pi / 2))
    assert np.allclose(v0.hair, hair, atol=1e-5)  # canonical pose = canonical hair
    move = np.linalg.norm(v1.hair - v0.hair, axis=1)
    assert move[top].mean() > 0.02 and move[low].mean() < 0.5 * move[top].mean()
    # raising the left shoulder moves the hair resting on it
    shrug = zero.copy()
    shrug[1, 2] = 0.3  # left collar roll
    v2 = factory.pose(baked, ViewParams(pose=shrug, expression=np.zeros(64), yaw=math.pi / 2, pitch=math.pi / 2))
    left_low = low & (hair[:, 0] > 0.05)
    assert np.linalg.norm(v2.hair - v0.hair, axis=1)[left_low].max() > 0.005


def test_hair_stays_off_the_face_and_body(factory):
    from scipy.spatial import cKDTree

    for style in ("short", "bob", "long"):
        baked = _identity(factory, style, seed=3)
        d, _ = cKDTree(baked.face_canon_neutral).query(baked.hair_canon)
        assert (d > 0.002).mean() > 0.98, style
        # the face's centre region (eyes, nose, mouth) is not covered: no hair vertex in front of it
        c = baked.face_centre
        front = (baked.hair_canon[:, 2] > c[2]) & (np.abs(baked.hair_canon[:, 0] - c[0]) < 0.04) \
            & (np.abs(baked.hair_canon[:, 1] - c[1]) < 0.05)
        assert not front.any(), style


def test_camera_and_label_distributions():
    rng = np.random.default_rng(0)
    fr = np.array([sample_camera_angles(rng, "frontal") for _ in range(2000)])
    assert abs(fr[:, 0].mean() - math.pi / 2) < 0.03 and 0.25 < fr[:, 0].std() < 0.32
    assert abs(fr[:, 1].mean() - math.pi / 2) < 0.02 and 0.12 < fr[:, 1].std() < 0.16
    assert np.abs(fr[:, 0] - math.pi / 2).max() <= 2.5 * 0.3 + 1e-9
    full = np.array([sample_camera_angles(rng, "360") for _ in range(2000)])
    assert full[:, 0].min() < -3.0 and full[:, 0].max() > 3.0  # the whole circle, back views included
    with pytest.raises(ValueError):
        sample_camera_angles(rng, "sideways")


def test_face_regions_and_cloth(factory):
    baked = _identity(factory, "short", seed=5)
    reg = factory._face_regions()
    for key in ("lips", "brow", "sclera", "iris", "pupil"):
        assert reg[key].sum() > 10, key
    assert not (reg["lips"] & reg["sclera"]).any()
    p = baked.params
    assert np.allclose(baked.face_colours[reg["iris"] & ~reg["pupil"] & ~reg["lash"]], p.eye)
    # the shirt covers the chest, not the head
    cloth = baked.cloth_mask > 0.5
    v = baked.body_canon
    assert cloth[v[:, 1] < -0.15].mean() > 0.9 and not cloth[factory.head_vertex].any()
