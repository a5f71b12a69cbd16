"""Readers and converters: Busto folder/zip, SHHQ-HS-style folders (two table layouts), 360PHQ dataset.json with
a separate mask zip; face crops cut from portraits; round trips back to Busto's format."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch
from data_helpers import landmarks_from_labels, project
from PIL import Image

from portrait_core import conventions as C
from portrait_core.data.labels import LabelError, validate_labels
from portrait_core.data.readers import PHQ360, SHHQFolder, convert, crop_face, detect_format, open_source
from portrait_core.geometry.rotations import (
    axis_angle_to_matrix,
    euler_zyx_to_matrix,
    matrix_to_axis_angle,
    matrix_to_euler_zyx,
)

pytestmark = pytest.mark.blender  # the shared fixture dataset is rendered with bpy

FIELDS = ("camera", "face_camera", "pose", "expression", "identity", "body_shape")


def _records(root):
    return json.loads((root / "labels.json").read_text())["images"]


def _make_shhq(root, dst, layout="tables"):
    recs = _records(root)
    (dst / "images").mkdir(parents=True)
    (dst / "faces").mkdir()
    for r in recs:
        shutil.copy(root / r["image"], dst / "images" / f"{r['name']}.png")
        shutil.copy(root / r["face"], dst / "faces" / f"{r['name']}.png")
    (dst / "names.txt").write_text("\n".join(r["name"] for r in recs) + "\n")
    cam = np.array([[r["camera_angles"]["pitch"], r["camera_angles"]["yaw"]] for r in recs])
    eul = matrix_to_euler_zyx(axis_angle_to_matrix(torch.tensor([r["pose"] for r in recs], dtype=torch.float64))).numpy()
    betas = np.array([r["body_shape"] for r in recs])
    ids = np.array([r["identity"] for r in recs])
    exp = np.array([r["expression"] for r in recs])
    if layout == "tables":
        for name, a in (("camera_pose", cam), ("joint_eulers", eul), ("betas", betas), ("id", ids), ("expression", exp)):
            np.save(dst / f"{name}.npy", a.astype(np.float32))
    else:  # the official release's sampler tables
        np.save(dst / "camera_pose_joint_sample.npy", np.concatenate([cam, eul.reshape(-1, 18)], 1))
        np.save(dst / "id_shape_sampler_body.npy", np.concatenate([ids, betas], 1))
        np.save(dst / "expression_body.npy", exp)
    return recs


@pytest.mark.parametrize("layout", ["tables", "sampler_tables"])
def test_shhq_round_trip(synth_dataset, tmp_path, layout):
    root, _ = synth_dataset
    recs = _make_shhq(root, tmp_path / "shhq", layout)
    assert detect_format(tmp_path / "shhq") == "shhq"
    src = SHHQFolder(tmp_path / "shhq")
    assert [r["name"] for r in src.records] == [r["name"] for r in recs]
    for a, b in zip(recs, src.records):
        for k in FIELDS:
            assert np.allclose(a[k], b[k], atol=2e-5), (k, np.abs(np.asarray(a[k]) - np.asarray(b[k])).max())
    out = convert(tmp_path / "shhq", tmp_path / "busto", face_resolution=32)
    assert validate_labels(out.parent, check_images=True) == []
    conv = _records(out.parent)
    assert np.allclose(conv[0]["camera"], recs[0]["camera"], atol=2e-5)


def test_shhq_problems_name_file_and_field(synth_dataset, tmp_path):
    root, _ = synth_dataset
    _make_shhq(root, tmp_path / "shhq")
    np.save(tmp_path / "shhq" / "betas.npy", np.zeros((8, 9), np.float32))
    (tmp_path / "shhq" / "images" / "000004.png").unlink()
    with pytest.raises(LabelError) as e:
        SHHQFolder(tmp_path / "shhq")
    assert "betas.npy: betas: expected shape [8, 10]" in str(e.value)
    np.save(tmp_path / "shhq" / "betas.npy", np.zeros((8, 10), np.float32))
    with pytest.raises(LabelError, match=r"names.txt: line 5: no image images/000004"):
        SHHQFolder(tmp_path / "shhq")
    src = SHHQFolder(tmp_path / "shhq", strict=False)
    assert len(src.records) == 7 and len(src.problems) == 1


def _make_phq(root, dst):
    """360PHQ layout from a Busto dataset: image zip with dataset.json, separate mask zip (same stems)."""
    recs = _records(root)
    adj = euler_zyx_to_matrix(torch.tensor(C.CANONICAL_ADJUST_EULER_ZYX[C.HEAD], dtype=torch.float64))
    labels = []
    dst.mkdir(parents=True)
    with zipfile.ZipFile(dst / "360PHQ-32.zip", "w") as zi, zipfile.ZipFile(dst / "360PHQ-32-mask.zip", "w") as zm:
        for r in recs:
            pose = np.asarray(r["pose"])
            head = matrix_to_axis_angle(axis_angle_to_matrix(torch.tensor(pose[3])) @ adj).numpy()
            labels.append([f"img/{r['name']}.png", list(r["camera"]) + list(pose[0]) + list(head)])
            zi.write(root / r["image"], f"img/{r['name']}.png")
            zm.write(root / r["mask"], f"img/{r['name']}.png")
        zi.writestr("dataset.json", json.dumps({"labels": labels}))
    return recs


def test_phq360_round_trip_with_mask_zip(synth_dataset, tmp_path):
    root, _ = synth_dataset
    recs = _make_phq(root, tmp_path / "phq")
    zpath = tmp_path / "phq" / "360PHQ-32.zip"
    assert detect_format(zpath) == "phq360"
    src = PHQ360(zpath, masks=tmp_path / "phq" / "360PHQ-32-mask.zip")
    assert len(src.records) == 8 and src.info["yaw_mode"] == "360"
    for a, b in zip(recs, src.records):
        assert np.allclose(a["camera"], b["camera"], atol=1e-6)
        pa, pb = np.asarray(a["pose"]), np.asarray(b["pose"])
        assert np.allclose(pa[[0, 3]], pb[[0, 3]], atol=1e-5)  # neck and head survive
        assert np.allclose(pb[[1, 2, 4, 5]], 0) and "expression" in b["unknown"]
        m = src.read_png(b["mask"], "L")
        assert np.array_equal(m, np.asarray(Image.open(root / a["mask"])))
    out = convert(zpath, tmp_path / "busto", mask_zip=str(tmp_path / "phq" / "360PHQ-32-mask.zip"), face_resolution=32)
    assert validate_labels(out.parent, check_images=True) == []
    # a malformed 31-float row is reported with file and field
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("dataset.json", json.dumps({"labels": [["img/x.png", [0.0] * 30]]}))
    with pytest.raises(LabelError, match=r"dataset.json: labels\[0\]\[1\]: expected 31 finite numbers"):
        PHQ360(zpath)


def _crop_error(rec, points, size=256, fsize=64):
    """Pixel distances between where crop_face moves a blob at each point's portrait projection and the point's
    face-camera projection."""
    dots = project(rec["camera"], points, size)
    want = project(rec["face_camera"], points, fsize)
    ys, xs = np.mgrid[0:size, 0:size]
    fy, fx = np.mgrid[0:fsize, 0:fsize]
    errs = []
    for (wx, wy), (x, y) in zip(want, dots):
        blob = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 1.5**2))  # pixel centres at integer coordinates
        img = np.repeat(np.round(255 * blob).astype(np.uint8)[..., None], 3, -1)
        crop = crop_face(img, rec["camera"], rec["face_camera"], fsize).astype(np.float64).sum(-1)
        win = crop * (np.hypot(fx - wx, fy - wy) < 5)
        assert win.sum() > 0, "blob not found near the face-camera projection"
        got = np.array([(win * fx).sum() / win.sum(), (win * fy).sum() / win.sum()])
        errs.append(np.linalg.norm(got - [wx, wy]))
    return np.array(errs)


def test_crop_face_matches_face_camera(synth_dataset):
    """crop_face is the homography of the plane through the face camera's orbit centre: exact for points on that
    plane; landmarks off the plane move by parallax (reported)."""
    from portrait_core.body.model import BodyModel
    from portrait_core.face.model import FaceModel

    root, _ = synth_dataset
    body, face = BodyModel.synthetic(), FaceModel.synthetic()
    on_plane, lms = [], []
    for rec in _records(root)[:4]:
        M = np.asarray(rec["face_camera"][:16]).reshape(4, 4)
        q = M[:3, 3] + C.FACE_RADIUS * M[:3, 2]
        pts = np.array([q + a * M[:3, 0] + b * M[:3, 1] for a in (-0.05, 0.0, 0.04) for b in (-0.04, 0.05)])
        on_plane.append(_crop_error(rec, pts))
        lms.append(_crop_error(rec, landmarks_from_labels(rec, body, face)[[36, 39, 42, 45, 30, 48, 54]]))
    on_plane, lms = np.concatenate(on_plane), np.concatenate(lms)
    print(f"crop_face at 64 px: on-plane points mean {on_plane.mean():.2f} px (max {on_plane.max():.2f}); "
          f"landmarks (parallax) mean {lms.mean():.2f} px (max {lms.max():.2f})")
    assert on_plane.mean() < 0.25 and on_plane.max() < 0.5
    assert lms.mean() < 3.0


def test_open_source_errors(tmp_path):
    with pytest.raises(LabelError, match="not found"):
        open_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LabelError, match="no labels.json"):
        open_source(tmp_path / "empty")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "labels.json").write_text("{not json")
    with pytest.raises(LabelError, match=r"labels.json: \(json\): not valid JSON at line 1"):
        open_source(tmp_path / "x")


def test_archives_load_in_dataloader_workers(synth_dataset, tmp_path):
    """Packed zips and 360PHQ zips (with their mask zip) work with multi-process DataLoaders."""
    from portrait_core.data.dataset import PortraitDataset
    from portrait_core.data.pack import pack_dataset

    root, _ = synth_dataset
    packed, _ = pack_dataset(root, tmp_path / "p.zip")
    _make_phq(root, tmp_path / "phq")
    for ds in (PortraitDataset(packed, mirror=True),
               PortraitDataset(tmp_path / "phq" / "360PHQ-32.zip", masks=str(tmp_path / "phq" / "360PHQ-32-mask.zip"),
                               face_resolution=16)):
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
        n = sum(len(b["image"]) for b in loader)
        assert n == len(ds)
