"""``prepare``: photos -> a labelled Busto dataset (docs/photo.md), on matplotlib's public-domain sample portrait
and synthetic variations of it (EXIF-rotated, grayscale, two people, tiny, blank, huge, random bytes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mediapipe", reason="prepare needs the photo extra (pip install -e '.[photo]')")

from PIL import Image  # noqa: E402

from portrait_core.data.labels import validate_labels  # noqa: E402
from portrait_core.photo import PhotoError, prepare, prepare_photo  # noqa: E402
from portrait_core.photo.detect import MP_TO_IBUG68, face_mesh  # noqa: E402
from portrait_core.photo.prepare import load_photo  # noqa: E402

#: the iBUG-68 left/right mirror permutation
IBUG_MIRROR = np.array(
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65])


@pytest.fixture(scope="module")
def sample_path() -> Path:
    import matplotlib.cbook as cbook

    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


@pytest.fixture(scope="module")
def sample(sample_path) -> Image.Image:
    return Image.open(sample_path).convert("RGB")


@pytest.fixture(scope="module")
def prepared(sample_path):
    return prepare_photo(sample_path, resolution=128, face_resolution=64)


def _assert_no_leftovers(parent: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{out.name}.")], list(parent.iterdir())


def test_mapping_pairs_mirror_images(sample):
    """The 68-point table maps mirror pairs to mirror pairs: the landmarks of the flipped photo, flipped back and
    permuted, land on the original ones."""
    assert len(MP_TO_IBUG68) == 68 and len(set(MP_TO_IBUG68)) == 68
    assert sorted(IBUG_MIRROR.tolist()) == list(range(68))
    img = np.asarray(sample)
    a = face_mesh(img)[list(MP_TO_IBUG68), :2]
    b = face_mesh(img[:, ::-1])[list(MP_TO_IBUG68), :2]
    b[:, 0] = img.shape[1] - b[:, 0]
    iod = np.linalg.norm(a[36] - a[45])
    err = np.linalg.norm(b[IBUG_MIRROR] - a, axis=1) / iod
    assert err.mean() < 0.03, err.round(3)
    swapped = np.linalg.norm(b - a, axis=1) / iod  # without the permutation the sides would not match
    assert swapped[:17].mean() > 0.3


def test_prepare_photo_labels_and_landmark_error(prepared):
    r = prepared
    assert r.image.shape == (128, 128, 3) and r.photo.shape == (128, 128, 3) and r.matte.shape == (128, 128)
    assert r.face.shape == (64, 64, 3)
    for a in (r.image, r.photo, r.matte, r.face):
        assert a.dtype == np.float32 and 0.0 <= a.min() and a.max() <= 1.0
    # target: fitted 3DMM landmarks within 3 % of the inter-ocular distance of the detected ones (mean)
    assert r.landmark_error <= 0.03, r.landmark_error
    err = np.linalg.norm(r.landmarks_fitted - r.landmarks_detected, axis=1).mean()
    iod = np.linalg.norm(r.landmarks_detected[36] - r.landmarks_detected[45])
    assert err / iod == pytest.approx(r.landmark_error, rel=1e-6)
    assert r.record["extra"]["landmark_error_iod"] == pytest.approx(r.landmark_error, abs=1e-5)
    # the face sits in the portrait where the portrait camera puts a head: centred, upper half
    c = r.landmarks_detected.mean(0) / 128
    assert 0.35 < c[0] < 0.65 and 0.3 < c[1] < 0.65, c
    # the matte: the person is foreground, the top corners are background
    assert r.matte[64, 64] > 0.9 and r.matte[2, 2] < 0.1 and r.matte[2, 125] < 0.1
    # composited on white where the matte is background
    assert r.image[2, 2].min() > 0.9
    ang = r.record["camera_angles"]
    assert abs(ang["yaw"] - np.pi / 2) < 0.4 and abs(ang["pitch"] - np.pi / 2) < 0.4
    assert r.record["extra"]["faces_found"] == 1
    assert r.shoulders_detected is not None
    # the fitted shoulders are near the detected ones (in portrait pixels)
    assert np.linalg.norm(r.shoulders_fitted - r.shoulders_detected, axis=1).max() < 10


def test_face_camera_follows_the_fitted_head(prepared):
    """The fitted 3DMM landmarks project into the face crop through the face camera near where the crop shows
    them: the eye corners and mouth corners of the record's face camera fall inside the crop, face-sized."""
    from portrait_core.geometry.camera import Camera

    fc = Camera.from_label25(torch.as_tensor(prepared.face_camera))
    uv, _ = fc.project_normalised(torch.as_tensor(prepared.geometry["landmarks"]))
    uv = uv[0].numpy()
    assert (uv[[36, 45, 48, 54, 8]] > 0.05).all() and (uv[[36, 45, 48, 54, 8]] < 0.95).all()
    assert 0.25 < uv[45, 0] - uv[36, 0] < 0.6
    pc = Camera.from_label25(torch.as_tensor(prepared.camera))
    uvp, _ = pc.project_normalised(torch.as_tensor(prepared.geometry["landmarks"]))
    assert np.abs(uvp[0].numpy() * 128 - 0.5 - prepared.landmarks_fitted).max() < 1e-3


def test_prepare_writes_a_valid_dataset(tmp_path, sample_path):
    out = prepare([sample_path], tmp_path / "ds")
    assert validate_labels(out, check_images=True) == []
    doc = json.loads((out / "labels.json").read_text())
    assert doc["info"]["count"] == 1 and doc["info"]["generator"].startswith("busto-prepare")
    rec = doc["images"][0]
    assert rec["name"] == "grace_hopper" and rec["extra"]["landmark_error_iod"] <= 0.03
    for sub in ("images", "masks", "faces"):
        assert (out / sub / "grace_hopper.png").is_file()
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size[0] >= 3 * 256
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds.")]  # the temp folder was renamed
    # a second run never writes into an existing dataset
    with pytest.raises(PhotoError, match="already exists"):
        prepare([sample_path], out)


# --- bad input ---------------------------------------------------------------------------------------------------

def test_exif_rotated_photo_is_turned_upright(tmp_path, sample, prepared):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 8  # the stored pixels are turned; a viewer rotates them 90 degrees counter-clockwise
    sample.transpose(Image.Transpose.ROTATE_270).save(path, exif=exif, quality=95)
    img, notes = load_photo(path)
    assert img.shape[:2] == (sample.size[1], sample.size[0])
    r = prepare_photo(path)
    assert any("EXIF orientation 8" in n for n in r.notes)
    assert r.landmark_error <= 0.03
    assert np.abs(r.landmarks_detected - prepared.landmarks_detected).mean() < 2.0  # portrait pixels at 128


def test_grayscale_photo(tmp_path, sample):
    path = tmp_path / "gray.png"
    sample.convert("L").save(path)
    r = prepare_photo(path)
    assert "grayscale photo" in r.notes
    assert r.landmark_error <= 0.03
    assert np.allclose(r.photo[..., 0], r.photo[..., 1], atol=2 / 255)  # still gray, as RGB


def test_two_people_use_the_largest_face(tmp_path, sample, prepared):
    w, h = sample.size
    two = Image.new("RGB", (2 * w, h), (255, 255, 255))
    two.paste(sample, (0, 0))
    two.paste(sample.resize((int(w * 0.7), int(h * 0.7))), (w, 100))
    path = tmp_path / "two.jpg"
    two.save(path, quality=95)
    r = prepare_photo(path)
    assert "2 faces found, using the largest" in r.notes
    assert r.record["extra"]["faces_found"] == 2
    # the larger (left) person was used: its eyes lie where the single photo's do
    a = r.record["extra"]["alignment"]["centre_px"]
    assert a[0] < w
    assert np.abs(r.landmarks_detected - prepared.landmarks_detected).mean() < 3.0


def test_huge_photo_is_downscaled_first(tmp_path, sample):
    path = tmp_path / "huge.jpg"
    sample.resize((sample.size[0] * 5, sample.size[1] * 5), Image.Resampling.BILINEAR).save(path, quality=85)
    r = prepare_photo(path)
    assert any(n.startswith("downscaled from 2560x3000 to") for n in r.notes), r.notes
    assert r.landmark_error <= 0.03
    assert r.record["extra"]["photo_size"][1] == 2048


@pytest.mark.parametrize("kind, message", [
    ("tiny", "the face is too small"),
    ("blank", "no face found"),
    ("random", "not an image file"),
    ("empty", "not an image file"),
    ("truncated", "cannot decode the image"),
])
def test_bad_input_one_line_naming_the_file_nothing_written(tmp_path, sample, kind, message):
    src = tmp_path / "in"
    src.mkdir()
    if kind == "tiny":
        path = src / "tiny.png"
        sample.resize((sample.size[0] // 8, sample.size[1] // 8), Image.Resampling.LANCZOS).save(path)
    elif kind == "blank":
        path = src / "blank.png"
        Image.new("RGB", (400, 400), (128, 128, 128)).save(path)
    elif kind == "random":
        path = src / "random.jpg"
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "empty":
        path = src / "empty.png"
        path.write_bytes(b"")
    else:
        path = src / "truncated.jpg"
        sample.save(path, quality=90)
        path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(PhotoError) as e:
        prepare_photo(path)
    text = str(e.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text
    out = tmp_path / "ds"
    with pytest.raises(PhotoError, match=message):
        prepare([path], out)
    _assert_no_leftovers(tmp_path, out)


def test_skip_leaves_out_bad_photos(tmp_path, sample_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a photo")
    out = prepare([sample_path, bad], tmp_path / "ds", on_error="skip", contact_sheet=False)
    doc = json.loads((out / "labels.json").read_text())
    assert [r["name"] for r in doc["images"]] == ["grace_hopper"]
    assert len(doc["info"]["skipped"]) == 1 and "bad.jpg: not an image file" in doc["info"]["skipped"][0]


def test_folder_without_photos(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(PhotoError, match="no image files"):
        prepare([tmp_path], tmp_path / "ds")


def test_cli_bad_photo_is_one_error_line(tmp_path):
    bad = tmp_path / "random.jpg"
    bad.write_bytes(np.random.default_rng(1).bytes(3000))
    out = tmp_path / "ds"
    p = subprocess.run([sys.executable, "-m", "portrait_core.data", "prepare", str(bad), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: {bad}: not an image file (the format is not recognised)"]
    _assert_no_leftovers(tmp_path, out)
