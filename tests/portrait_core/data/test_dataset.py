"""PortraitDataset: items, resizing, mirroring (labels and pixels), bad-data reporting; packing; samplers."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from data_helpers import landmarks_from_labels, project

from portrait_core.data.dataset import PortraitDataset
from portrait_core.data.labels import LabelError
from portrait_core.data.mirror import IBUG68_MIRROR, mirror_camera25, mirror_matrices, mirror_pose

pytestmark = pytest.mark.blender  # the shared fixture dataset is rendered with bpy


def test_items_shapes_ranges_and_resize(synth_dataset):
    root, _ = synth_dataset
    ds = PortraitDataset(root, resolution=48, face_resolution=24)
    assert len(ds) == 8
    it = ds[3]
    shapes = {k: tuple(v.shape) for k, v in it.items()}
    assert shapes == {"image": (3, 48, 48), "mask": (1, 48, 48), "face": (3, 24, 24), "camera": (25,),
                      "face_camera": (25,), "pose": (6, 3), "expression": (64,), "identity": (80,),
                      "body_shape": (10,), "mirrored": (), "index": ()}
    assert it["image"].min() >= -1 and it["image"].max() <= 1 and it["image"].max() == 1  # white background
    assert 0 <= it["mask"].min() and it["mask"].max() <= 1
    rec = json.loads((root / "labels.json").read_text())["images"][3]
    assert torch.allclose(it["camera"], torch.tensor(rec["camera"]), atol=1e-6)
    assert torch.allclose(it["pose"], torch.tensor(rec["pose"]), atol=1e-6)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 48, 48)


def test_mirror_rules_are_involutions_and_agree_with_camera():
    from portrait_core.geometry.camera import Camera

    rng = np.random.default_rng(0)
    pose = rng.normal(0, 0.3, (5, 6, 3))
    assert np.allclose(mirror_pose(mirror_pose(pose)), pose)
    cam = Camera.portrait(yaw=torch.tensor([1.2, 2.0, -2.5]), pitch=torch.tensor([1.4, 1.6, 1.7]))
    lab = cam.to_label25().numpy()
    assert np.allclose(mirror_camera25(mirror_camera25(lab)), lab)
    assert np.allclose(mirror_camera25(lab), cam.mirror().to_label25().numpy(), atol=1e-12)
    # mirrored yaw: pi - yaw
    m = Camera.from_label25(torch.tensor(mirror_camera25(lab)))
    assert np.allclose(m.orbit_params((0, 0.129, 0))[1].numpy() % (2 * np.pi),
                       (np.pi - np.array([1.2, 2.0, -2.5])) % (2 * np.pi), atol=1e-6)


def test_expression_identity_mirror_matrices_mirror_the_face():
    from portrait_core.face.model import FaceModel

    face = FaceModel.synthetic()
    M = mirror_matrices(face)
    print(f"synthetic 3DMM mirror fit residual: expression {M['expression_residual']:.3f}, "
          f"identity {M['identity_residual']:.3f}")
    # the named (symmetric) expressions map to themselves
    assert np.allclose(np.diag(M["expression"])[:8], 1, atol=0.02)
    rng = np.random.default_rng(1)
    idc, exc = rng.normal(0, 1, 80), rng.normal(0, 0.5, 64)
    f = lambda i, e: face.landmarks(torch.tensor(i, dtype=torch.float32)[None],
                                    torch.tensor(e, dtype=torch.float32)[None])[0].double().numpy()
    lm, lm_m = f(idc, exc), f(M["identity"] @ idc, M["expression"] @ exc)
    expect = lm[IBUG68_MIRROR] * np.array([-1, 1, 1])
    err = np.linalg.norm(lm_m - expect, axis=1)
    naive = np.linalg.norm(f(idc, exc) - expect, axis=1)
    print(f"mirrored-face landmark error: {err.mean() * 1000:.2f} mm (unmirrored coefficients: "
          f"{naive.mean() * 1000:.2f} mm)")
    assert err.mean() < 0.5 * naive.mean() and err.mean() < 0.002


def test_mirrored_items_flip_pixels_and_labels(synth_dataset):
    from portrait_core.body.model import BodyModel
    from portrait_core.face.model import FaceModel

    root, _ = synth_dataset
    ds = PortraitDataset(root, mirror=True)
    assert len(ds) == 16
    a, b = ds[2], ds[2 + 8]
    assert b["mirrored"] == 1 and a["mirrored"] == 0
    assert torch.equal(b["image"], a["image"].flip(-1)) and torch.equal(b["face"], a["face"].flip(-1))
    # projected landmarks of the mirrored labels = flipped projections of the original (mirror partners)
    body, face = BodyModel.synthetic(), FaceModel.synthetic()
    rec = {k: a[k].double().numpy() for k in ("pose", "expression", "identity", "body_shape")}
    rec_m = {k: b[k].double().numpy() for k in ("pose", "expression", "identity", "body_shape")}
    p = project(a["camera"].double().numpy(), landmarks_from_labels(rec, body, face), 32)
    pm = project(b["camera"].double().numpy(), landmarks_from_labels(rec_m, body, face), 32)
    flipped = np.stack([31 - p[:, 0], p[:, 1]], 1)[IBUG68_MIRROR]
    err = np.linalg.norm(pm - flipped, axis=1)
    assert err.max() < 0.2, err.max()
    # mirroring twice is the identity on labels
    for k in ("camera", "face_camera"):
        assert np.allclose(mirror_camera25(b[k].numpy()), a[k].numpy(), atol=1e-6)
    assert np.allclose(mirror_pose(b["pose"].numpy()), a["pose"].numpy(), atol=1e-6)


def _broken_copy(root, dst):
    shutil.copytree(root, dst)
    doc = json.loads((dst / "labels.json").read_text())
    doc["images"][2]["camera"] = doc["images"][2]["camera"][:24]  # malformed label
    (dst / "labels.json").write_text(json.dumps(doc))
    data = (dst / "images" / "000005.png").read_bytes()
    (dst / "images" / "000005.png").write_bytes(data[: len(data) // 2])  # corrupt (truncated) image
    return dst


def test_bad_data_reported_with_file_and_field(synth_dataset, tmp_path):
    root, _ = synth_dataset
    bad = _broken_copy(root, tmp_path / "bad")
    with pytest.raises(LabelError) as e:
        PortraitDataset(bad)
    msg = str(e.value)
    assert "labels.json: images[2].camera: expected shape [25], got [24]" in msg
    assert "images/000005.png" in msg and "images[" in msg and ".image:" in msg
    assert len(e.value.problems) == 2
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = PortraitDataset(bad, on_error="skip")
    assert len(ds) == 6 and {r["name"] for r in ds.records}.isdisjoint({"000002", "000005"})
    text = " ".join(str(x.message) for x in w)
    assert "images[2].camera" in text and "000005.png" in text
    ds[0]  # the remaining items load


def test_pack_round_trip_and_size(synth_dataset, tmp_path):
    from portrait_core.data.pack import pack_dataset
    from portrait_core.data.readers import open_source

    root, _ = synth_dataset
    path, nbytes = pack_dataset(root, tmp_path / "ds.zip")
    print(f"packed 8 images at 32x32: {nbytes} bytes")
    src = open_source(path)
    ref = json.loads((root / "labels.json").read_text())
    assert src.kind == "busto-zip" and len(src.records) == 8
    for a, b in zip(ref["images"], src.records):
        for k in ("camera", "face_camera", "pose", "expression", "identity", "body_shape"):
            assert a[k] == b[k]
    ds, ds_ref = PortraitDataset(path), PortraitDataset(root)
    x, y = ds[1], ds_ref[1]
    assert torch.equal(x["mask"], y["mask"])  # masks are lossless
    assert (x["image"] - y["image"]).abs().mean() < 0.05  # WebP is close
    assert torch.equal(x["camera"], y["camera"])


def test_samplers_tables_mirror_fallback_and_npz(synth_dataset, tmp_path):
    from portrait_core.data.samplers import LabelSampler

    root, _ = synth_dataset
    ds = PortraitDataset(root, mirror=True)
    s = LabelSampler.from_dataset(ds, mirror=False)
    g = torch.Generator().manual_seed(0)
    out = s.sample(64, g)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "camera": (64, 25), "pose": (64, 6, 3), "identity": (64, 80), "body_shape": (64, 10), "expression": (64, 64)}
    # joint draws: every (camera, pose) pair and (identity, betas) pair is a dataset row
    cams, poses = ds.labels("camera"), ds.labels("pose")
    for c, p in zip(out["camera"].numpy(), out["pose"].numpy()):
        i = int(np.argmin(np.abs(cams - c).sum(1)))
        assert np.allclose(cams[i], c, atol=1e-6) and np.allclose(poses[i], p, atol=1e-6)
    ids, betas = ds.labels("identity"), ds.labels("body_shape")
    for a, b in zip(out["identity"].numpy(), out["body_shape"].numpy()):
        i = int(np.argmin(np.abs(ids - a).sum(1)))
        assert np.allclose(betas[i], b, atol=1e-6)
    # mirroring: about half the draws are mirror images of rows
    sm = LabelSampler.from_dataset(ds, mirror=True)
    outm = sm.sample(200, torch.Generator().manual_seed(1))
    mirrored = np.array([not np.isclose(np.abs(cams - c).sum(1).min(), 0, atol=1e-5) for c in outm["camera"].numpy()])
    assert 0.3 < mirrored.mean() < 0.7
    # npz round trip (float16 tables): same draws within half precision
    s.save(tmp_path / "sampler.npz")
    s2 = LabelSampler.load(tmp_path / "sampler.npz")
    a, b = s.sample(8, torch.Generator().manual_seed(3)), s2.sample(8, torch.Generator().manual_seed(3))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-2 if k in ("identity", "expression", "body_shape") else 1e-6)
    assert (tmp_path / "sampler.npz").stat().st_size < 40000
    # Gaussian fallback: frontal yaw centred on pi/2, 360 covers the circle
    from portrait_core.geometry.camera import Camera

    for mode, check in (("frontal", lambda y: abs(np.mean(y) - np.pi / 2) < 0.1 and np.std(y) < 0.4),
                        ("360", lambda y: np.std(y) > 1.4)):
        gs = LabelSampler.gaussian_fallback(mode).sample(500, torch.Generator().manual_seed(2))
        yaw = Camera.from_label25(gs["camera"].double()).orbit_params((0, 0.129, 0))[1].numpy()
        assert check(yaw), (mode, yaw.mean(), yaw.std())
    with pytest.raises(ValueError, match="meta"):
        np.savez(tmp_path / "bad.npz", camera_pose=np.zeros((2, 43)))
        LabelSampler.load(tmp_path / "bad.npz")


def test_cli_validate_stats_pack(synth_dataset, tmp_path, capsys):
    from portrait_core.data.__main__ import main

    root, _ = synth_dataset
    assert main(["validate", str(root), "--images"]) == 0
    bad = _broken_copy(root, tmp_path / "bad")
    assert main(["validate", str(bad), "--images"]) == 1
    out = capsys.readouterr().out
    assert "images[2].camera" in out and "000005.png" in out
    assert main(["stats", str(root), "--out", str(tmp_path / "stats")]) == 0
    from PIL import Image

    sheet = Image.open(tmp_path / "stats" / "contact_sheet.png")
    assert sheet.size[0] >= 8 * 64 and Image.open(tmp_path / "stats" / "histograms.png").size[0] > 600
    assert main(["pack", str(root), "--out", str(tmp_path / "p.zip")]) == 0
    assert main(["validate", str(tmp_path / "p.zip")]) == 0


def test_sampler_from_official_tables(synth_dataset):
    """The release's sampler tables ((pitch, yaw, ZYX Eulers), id+betas, expression) give Busto labels."""
    from portrait_core.data.samplers import LabelSampler
    from portrait_core.geometry.rotations import axis_angle_to_matrix, matrix_to_euler_zyx

    root, _ = synth_dataset
    recs = json.loads((root / "labels.json").read_text())["images"]
    pose = torch.tensor([r["pose"] for r in recs], dtype=torch.float64)
    cj = np.concatenate([[[r["camera_angles"]["pitch"], r["camera_angles"]["yaw"]] for r in recs],
                         matrix_to_euler_zyx(axis_angle_to_matrix(pose)).numpy().reshape(-1, 18)], 1)
    ids = np.array([r["identity"] + r["body_shape"] for r in recs])
    exp = np.array([r["expression"] for r in recs])
    s = LabelSampler.from_official_tables(cj, ids, exp)
    out = s.sample(16, torch.Generator().manual_seed(0))
    cams = np.array([r["camera"] for r in recs])
    for c, p in zip(out["camera"].numpy(), out["pose"].numpy()):
        i = int(np.argmin(np.abs(cams - c).sum(1)))
        assert np.allclose(cams[i], c, atol=1e-5) and np.allclose(recs[i]["pose"], p, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[N, 20\]"):
        LabelSampler.from_official_tables(cj[:, :19], ids, exp)
