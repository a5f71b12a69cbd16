"""360-degree evaluation helpers: view groups by camera yaw, and the pose self-learning angular error."""

from __future__ import annotations

import math

import pytest
import torch

from portrait_core import conventions as C
from portrait_core.geometry.camera import Camera
from train.evaluate import camera_yaws, pose_angular_error, split_by_view


def test_split_by_view_groups_yaw_relative_to_the_body():
    rel = torch.tensor([0.0, 44.0, -44.0, 46.0, -90.0, 134.0, 136.0, 180.0, -170.0, 360.0 + 10.0])
    yaw = C.FRONTAL_YAW + torch.deg2rad(rel)
    views = split_by_view(yaw)
    assert views["front"].tolist() == [0, 1, 2, 9]  # 370 degrees wraps to 10
    assert views["side"].tolist() == [3, 4, 5]
    assert views["back"].tolist() == [6, 7, 8]
    turned = split_by_view(yaw, body_yaw=C.FRONTAL_YAW + math.pi)  # a body facing -Z: front and back swap
    assert turned["back"].tolist() == [0, 1, 2, 9] and turned["front"].tolist() == [6, 7, 8]
    assert all(v.numel() == 0 for v in split_by_view(torch.zeros(0)).values())


def test_camera_yaws_from_labels_round_trip():
    yaws = torch.tensor([C.FRONTAL_YAW, C.FRONTAL_YAW + math.pi, C.FRONTAL_YAW + 1.0])
    labels = Camera.portrait(yaws, torch.full((3,), C.FRONTAL_PITCH)).to_label25()
    got = camera_yaws(labels)
    views = split_by_view(got)
    assert views["front"].tolist() == [0] and views["back"].tolist() == [1] and views["side"].tolist() == [2]


def test_pose_angular_error():
    labels = torch.zeros(4, 6, 3)
    labels[:, 3, 0] = 0.3  # head pitched 0.3 rad
    assert pose_angular_error(labels, labels)["mean"] == pytest.approx(0.0, abs=1e-5)
    learned = labels.clone()
    learned[:, 3, 0] = 0.3 + math.radians(10)  # head off by 10 degrees about the same axis
    learned[:, 4, 2] = math.radians(20)  # left shoulder off by 20 degrees
    learned[:, 1, 1] = 1.0  # a collar error is not reported
    err = pose_angular_error(learned, labels)
    assert err["head"] == pytest.approx(10.0, abs=1e-4) and err["neck"] == pytest.approx(0.0, abs=1e-4)
    assert err["shoulders"] == pytest.approx(10.0, abs=1e-4)  # mean of 20 and 0
    assert err["mean"] == pytest.approx(30.0 / 4, abs=1e-4)
    with pytest.raises(ValueError, match="need two"):
        pose_angular_error(learned[:, :5], labels[:, :5])
